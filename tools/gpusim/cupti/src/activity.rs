//! Activity collection: which kinds are on, the client's buffer callbacks, and the flush that
//! turns libcuda's [`SimRecord`]s into CUPTI records.
//!
//! Like CUPTI, a device op is delivered only once it has completed on the (simulated) device;
//! records still running stay pending for a later flush. Buffers are requested from the client,
//! filled with 8-byte aligned records, and handed back through the completion callback when
//! full. As in CUPTI, the periodic flush (the `cuptiActivityFlushPeriod` timer, or every 500 ms
//! when no period is set) and `cuptiActivityFlushAll(0)` hand over full buffers only: records
//! that do not fill one wait in the part-filled buffer until it fills or a forced flush
//! (`cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED)`, `cuptiFinalize`) completes it.
//! (On an H200, 72 kernels of a PyTorch job sat ~6 s in a part-filled buffer until a forced
//! flush.) A failed buffer request drops records and counts them
//! (`cuptiActivityGetNumDroppedRecords`).

use std::collections::HashMap;
use std::ffi::{c_char, c_void, CString};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use gpusim_core::abi;
use gpusim_core::clock::now_ns;
use gpusim_core::record::{RecordKind, SimRecord};

use crate::layout::{self, kind};

/// `CUpti_BuffersCallbackRequestFunc`.
pub type RequestFn = unsafe extern "C" fn(*mut *mut u8, *mut usize, *mut usize);
/// `CUpti_BuffersCallbackCompleteFunc`.
pub type CompleteFn = unsafe extern "C" fn(*mut c_void, u32, *mut u8, usize, usize);

/// Collection settings and progress.
pub struct State {
    /// Enabled `CUpti_ActivityKind`s.
    pub enabled: [bool; 64],
    /// Client buffer request callback.
    pub request: Option<RequestFn>,
    /// Client buffer completion callback.
    pub complete: Option<CompleteFn>,
    /// Periodic flush in ms (0 = gpusim's 500 ms default).
    pub flush_period_ms: u32,
    /// Records lost because the client gave no buffer.
    pub dropped: u64,
    /// Whether the flush thread runs.
    pub worker_started: bool,
}

impl Default for State {
    fn default() -> Self {
        Self {
            enabled: [false; 64],
            request: None,
            complete: None,
            flush_period_ms: 0,
            dropped: 0,
            worker_started: false,
        }
    }
}

/// Progress through libcuda's log; only the flushing thread touches it. One for the process's
/// unversioned (V1) client, one per `cuptiSubscribe_v2` subscriber ([`crate::subscribers`]).
#[derive(Default)]
pub(crate) struct Cursor {
    next: u64,
    pending: Vec<SimRecord>,
    next_marker_id: u32,
    /// The part-filled buffer a flush that was not forced left open: (buffer, size, used).
    open: Option<(usize, usize, usize)>,
}

impl Cursor {
    /// Collection starts now for this client: what libcuda logged before is never delivered.
    pub(crate) fn skip_to_now(&mut self) {
        let Some(count) = abi::lookup(abi::RECORD_COUNT) else { return };
        // SAFETY: the symbol has the signature in gpusim_core::abi.
        let count = unsafe { std::mem::transmute::<*mut c_void, abi::RecordCountFn>(count) };
        // SAFETY: a valid function pointer without arguments.
        self.next = self.next.max(unsafe { count() });
    }

    /// The records logged since the last call that are ready to deliver (device ops that have
    /// completed, everything else at once); None without libcuda.
    fn take_ready(&mut self) -> Option<Vec<SimRecord>> {
        let (Some(count), Some(read)) = (abi::lookup(abi::RECORD_COUNT), abi::lookup(abi::READ_RECORDS)) else {
            return None;
        };
        // SAFETY: the symbols have the signatures in gpusim_core::abi.
        let (count, read) = unsafe {
            (
                std::mem::transmute::<*mut c_void, abi::RecordCountFn>(count),
                std::mem::transmute::<*mut c_void, abi::ReadRecordsFn>(read),
            )
        };
        // SAFETY: valid function pointers; the buffer has room for `n` records.
        unsafe {
            let total = count();
            let n = total.saturating_sub(self.next);
            let mut fresh = vec![SimRecord::new(RecordKind::Api); n as usize];
            let got = read(self.next, fresh.as_mut_ptr(), n);
            fresh.truncate(got as usize);
            self.next += got;
            self.pending.extend(fresh);
        }
        let now = now_ns();
        let (ready, waiting): (Vec<SimRecord>, Vec<SimRecord>) =
            std::mem::take(&mut self.pending).into_iter().partition(|r| !is_device_op(r) || r.end_ns <= now);
        self.pending = waiting;
        Some(ready)
    }

    /// Delivers the ready records of the `enabled` kinds through a client's buffer callbacks:
    /// full buffers always, the last part-filled one only when `forced` (else it stays open
    /// for the next flush); returns the records dropped for want of a buffer, or None without
    /// libcuda.
    pub(crate) fn deliver(
        &mut self,
        enabled: &[bool; 64],
        request: &mut dyn FnMut() -> (*mut u8, usize),
        complete: &mut dyn FnMut(*mut u8, usize, usize),
        forced: bool,
    ) -> Option<u64> {
        let ready = self.take_ready()?;
        let (buffer, size, used) = self.open.take().unwrap_or((0, 0, 0));
        let mut writer = Writer { request, complete, buffer: buffer as *mut u8, size, used, dropped: 0 };
        let mut marker_id = self.next_marker_id;
        for rec in &ready {
            convert(rec, enabled, &mut marker_id, &mut |bytes| writer.push(bytes));
        }
        self.next_marker_id = marker_id;
        if forced {
            writer.finish();
        } else if !writer.buffer.is_null() {
            self.open = Some((writer.buffer as usize, writer.size, writer.used));
        }
        Some(writer.dropped)
    }
}

thread_local! {
    static IN_FLUSH: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Clears [`IN_FLUSH`] when a flush ends, also by panic.
struct ResetOnDrop;

impl Drop for ResetOnDrop {
    fn drop(&mut self) {
        IN_FLUSH.with(|f| f.set(false));
    }
}

/// Lock the settings.
pub fn state() -> MutexGuard<'static, State> {
    static STATE: OnceLock<Mutex<State>> = OnceLock::new();
    STATE.get_or_init(Mutex::default).lock().unwrap_or_else(|p| p.into_inner())
}

fn cursor() -> &'static Mutex<Cursor> {
    static CURSOR: OnceLock<Mutex<Cursor>> = OnceLock::new();
    CURSOR.get_or_init(Mutex::default)
}

/// Kernel names with a stable address for the records' `name` pointers (kept for the process
/// lifetime, as CUPTI's own string table is).
fn intern(name: &str) -> *const c_char {
    static NAMES: OnceLock<Mutex<HashMap<String, &'static CString>>> = OnceLock::new();
    let mut names = NAMES.get_or_init(Mutex::default).lock().unwrap_or_else(|p| p.into_inner());
    if let Some(existing) = names.get(name) {
        return existing.as_ptr();
    }
    let leaked: &'static CString = Box::leak(Box::new(CString::new(name).unwrap_or_default()));
    names.insert(name.to_string(), leaked);
    leaked.as_ptr()
}

/// Collection starts (or starts again) now: what libcuda logged before is never delivered, as
/// the real CUPTI records only activity that happens while a kind is enabled (an `attach`
/// mid-run must not receive the job's history).
pub fn skip_to_now() {
    cursor().lock().unwrap_or_else(|p| p.into_inner()).skip_to_now();
}

/// Start the periodic flush thread once.
pub fn ensure_worker() {
    let mut st = state();
    if st.worker_started {
        return;
    }
    st.worker_started = true;
    drop(st);
    let _ = std::thread::Builder::new().name("gpusim-cupti".into()).spawn(|| {
        let mut last = now_ns();
        loop {
            std::thread::sleep(Duration::from_millis(5));
            let period_ms = match state().flush_period_ms {
                0 => 500,
                ms => ms as u64,
            };
            if now_ns() - last >= period_ms * 1_000_000 {
                last = now_ns();
                let _ = std::panic::catch_unwind(|| flush(false));
            }
        }
    });
}

/// Fill client buffers, completing each when full and the last one at the end.
struct Writer<'a> {
    request: &'a mut dyn FnMut() -> (*mut u8, usize),
    complete: &'a mut dyn FnMut(*mut u8, usize, usize),
    buffer: *mut u8,
    size: usize,
    used: usize,
    dropped: u64,
}

impl Writer<'_> {
    fn push(&mut self, bytes: &[u8]) {
        let start = self.used.div_ceil(8) * 8;
        if self.buffer.is_null() || start + bytes.len() > self.size {
            self.finish();
            let (buffer, size) = (self.request)();
            if buffer.is_null() || size < bytes.len() {
                self.dropped += 1;
                return;
            }
            (self.buffer, self.size, self.used) = (buffer, size, 0);
        }
        let start = self.used.div_ceil(8) * 8;
        // SAFETY: the client's buffer has `size` bytes; start + len <= size was checked.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.buffer.add(start), bytes.len()) };
        self.used = start + bytes.len();
    }

    fn finish(&mut self) {
        if !self.buffer.is_null() {
            (self.complete)(self.buffer, self.size, self.used);
            self.buffer = std::ptr::null_mut();
        }
    }
}

fn as_bytes<T: Copy>(value: &T) -> &[u8] {
    // SAFETY: the layout structs are plain old data; reading their bytes is sound.
    unsafe { std::slice::from_raw_parts(value as *const T as *const u8, std::mem::size_of::<T>()) }
}

/// Convert one record into CUPTI records of the enabled kinds, appending to `out`.
/// `CUpti_ActivityThreadIdType` in force: 0 DEFAULT (`pthread_self()`, truncated), 1 SYSTEM
/// (the kernel's thread id), as set by `cuptiSetThreadIdType`.
pub static THREAD_ID_TYPE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// The `threadId` CUPTI writes for `rec` under the thread-id type in force.
fn thread_id_of(rec: &SimRecord) -> u32 {
    match THREAD_ID_TYPE.load(std::sync::atomic::Ordering::Relaxed) {
        1 => rec.thread_id,
        _ => rec.pthread_id,
    }
}

fn convert(rec: &SimRecord, enabled: &[bool; 64], marker_id: &mut u32, write: &mut dyn FnMut(&[u8])) {
    let pid = std::process::id();
    match rec.kind() {
        Some(RecordKind::Kernel | RecordKind::Collective) => {
            for k in [kind::KERNEL, kind::CONCURRENT_KERNEL] {
                if !enabled[k as usize] {
                    continue;
                }
                // SAFETY: all-zero is a valid ActivityKernel9 (integers and null pointers).
                let mut r: layout::ActivityKernel9 = unsafe { std::mem::zeroed() };
                r.kind = k;
                r.registers_per_thread = 128;
                (r.start, r.end, r.completed) = (rec.start_ns, rec.end_ns, rec.end_ns);
                (r.device_id, r.context_id, r.stream_id) = (rec.device_id, rec.context_id, rec.stream_id);
                r.grid = rec.grid.map(|v| v as i32);
                r.block = rec.block.map(|v| v as i32);
                r.dynamic_shared_memory = rec.shared_mem_bytes as i32;
                r.correlation_id = rec.correlation_id;
                r.grid_id = rec.correlation_id as i64;
                r.name = intern(rec.name());
                (r.queued, r.submitted) = (rec.enqueue_ns, rec.enqueue_ns);
                write(as_bytes(&r));
            }
        }
        Some(RecordKind::Memcpy) if enabled[kind::MEMCPY as usize] => {
            // SAFETY: all-zero is a valid ActivityMemcpy5.
            let mut r: layout::ActivityMemcpy5 = unsafe { std::mem::zeroed() };
            r.kind = kind::MEMCPY;
            r.copy_kind = rec.copy_kind as u8;
            // CUPTI_ACTIVITY_MEMORY_KIND_PAGEABLE = 1, DEVICE = 3
            (r.src_kind, r.dst_kind) = if rec.copy_kind == 1 { (1, 3) } else { (3, 1) };
            (r.bytes, r.start, r.end) = (rec.bytes, rec.start_ns, rec.end_ns);
            (r.device_id, r.context_id, r.stream_id) = (rec.device_id, rec.context_id, rec.stream_id);
            r.correlation_id = rec.correlation_id;
            write(as_bytes(&r));
        }
        Some(RecordKind::Memset) if enabled[kind::MEMSET as usize] => {
            // SAFETY: all-zero is a valid ActivityMemset4.
            let mut r: layout::ActivityMemset4 = unsafe { std::mem::zeroed() };
            r.kind = kind::MEMSET;
            (r.bytes, r.start, r.end) = (rec.bytes, rec.start_ns, rec.end_ns);
            (r.device_id, r.context_id, r.stream_id) = (rec.device_id, rec.context_id, rec.stream_id);
            r.correlation_id = rec.correlation_id;
            r.memory_kind = 3;
            write(as_bytes(&r));
        }
        Some(RecordKind::Api) if enabled[kind::DRIVER as usize] => {
            let r = layout::ActivityApi {
                kind: kind::DRIVER,
                cbid: rec.cbid,
                start: rec.start_ns,
                end: rec.end_ns,
                process_id: pid,
                thread_id: thread_id_of(rec),
                correlation_id: rec.correlation_id,
                return_value: 0,
            };
            write(as_bytes(&r));
        }
        Some(RecordKind::SyncWait) if enabled[kind::SYNCHRONIZATION as usize] => {
            let r = layout::ActivitySynchronization {
                kind: kind::SYNCHRONIZATION,
                sync_type: rec.copy_kind,
                start: rec.start_ns,
                end: rec.end_ns,
                correlation_id: rec.correlation_id,
                context_id: rec.context_id,
                stream_id: rec.stream_id,
                cuda_event_id: 0,
            };
            write(as_bytes(&r));
        }
        Some(RecordKind::Marker) if enabled[kind::MARKER as usize] => {
            *marker_id += 1;
            for (flags, timestamp, name) in [(2, rec.start_ns, intern(rec.name())), (4, rec.end_ns, std::ptr::null())] {
                let r = layout::ActivityMarker2 {
                    kind: kind::MARKER,
                    flags,
                    timestamp,
                    id: *marker_id,
                    object_kind: 2,
                    object_id: [pid, thread_id_of(rec), 0],
                    pad: 0,
                    name,
                    domain: std::ptr::null(),
                };
                write(as_bytes(&r));
            }
        }
        _ => {}
    }
}

fn is_device_op(rec: &SimRecord) -> bool {
    matches!(rec.kind(), Some(RecordKind::Kernel | RecordKind::Memcpy | RecordKind::Memset | RecordKind::Collective))
}

/// Deliver every completed record of an enabled kind to every client: the unversioned (V1)
/// one and each `cuptiSubscribe_v2` subscriber, as `cuptiActivityFlushAll` flushes the buffers
/// of all subscribers. Returns false when no libcuda or no callbacks are available.
pub fn flush(forced: bool) -> bool {
    let v1 = flush_v1(forced);
    crate::subscribers::flush_all(forced) || v1
}

/// [`flush`] of the unversioned (V1) client.
fn flush_v1(forced: bool) -> bool {
    let (enabled, request, complete) = {
        let st = state();
        (st.enabled, st.request, st.complete)
    };
    let (Some(request), Some(complete)) = (request, complete) else {
        return false;
    };
    if abi::lookup(abi::RECORD_COUNT).is_none() || abi::lookup(abi::READ_RECORDS).is_none() {
        return false;
    }
    // A flush from inside a completion callback (same thread) would deadlock; the running
    // flush covers it. Other threads wait, so a flush at exit sees everything.
    if IN_FLUSH.with(|f| f.get()) {
        return true;
    }
    let mut cur = cursor().lock().unwrap_or_else(|p| p.into_inner());
    IN_FLUSH.with(|f| f.set(true));
    let _reset = ResetOnDrop;
    let mut ask = || {
        let (mut buffer, mut size, mut max_records) = (std::ptr::null_mut(), 0usize, 0usize);
        // SAFETY: the client's callback with valid out-pointers.
        unsafe { request(&mut buffer, &mut size, &mut max_records) };
        (buffer, size)
    };
    // SAFETY: returning the client's own buffer with the bytes written.
    let mut done = |buffer, size, used| unsafe { complete(std::ptr::null_mut(), 0, buffer, size, used) };
    let dropped = cur.deliver(&enabled, &mut ask, &mut done, forced).unwrap_or(0);
    state().dropped += dropped;
    true
}

/// Walk a completed buffer: the record at `*record` (null = first) → the next one.
///
/// # Safety
/// `buffer` must hold `valid` bytes written by [`flush`].
pub unsafe fn next_record(buffer: *mut u8, valid: usize, current: *mut u8) -> Option<*mut u8> {
    let offset = if current.is_null() {
        0
    } else {
        // SAFETY: `current` points at a record inside `buffer` (caller contract).
        let kind = unsafe { *(current as *const u32) };
        let size = layout::record_size(kind)?;
        (current as usize - buffer as usize + size).div_ceil(8) * 8
    };
    if offset + 8 > valid {
        return None;
    }
    // SAFETY: offset < valid, inside the buffer.
    let at = unsafe { buffer.add(offset) };
    // SAFETY: a record header (kind) is readable at `at`.
    let kind = unsafe { *(at as *const u32) };
    let size = layout::record_size(kind)?;
    (offset + size <= valid).then_some(at)
}
