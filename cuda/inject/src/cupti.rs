//! The CUPTI side: activity buffers in, ring records out.

use std::collections::HashMap;
use std::ffi::CStr;
use std::panic::catch_unwind;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use cs::CUpti_ActivityKind as K;
use cudarc::cupti::sys as cs;
use ghostprof_ring::Producer;

use ghostprof_ring::wire;

const BUFFER_BYTES: usize = 4 << 20;
const RING_BYTES: usize = 64 << 20;

struct State {
    ring: Producer,
    pm: Option<crate::pm::PmSession>,
    /// name pointer → (id, bytes): CUPTI reuses a kernel's name pointer, so the pointer finds
    /// the id, and the bytes confirm it was not reused for another name.
    names: HashMap<usize, (u32, Box<[u8]>)>,
    cupti_dropped: u64,
}

static STATE: OnceLock<Mutex<State>> = OnceLock::new();
static ACTIVE: AtomicBool = AtomicBool::new(false);
static LAST_CLOCK_NS: AtomicU64 = AtomicU64::new(0);

fn state() -> Option<std::sync::MutexGuard<'static, State>> {
    STATE.get().map(|m| m.lock().unwrap_or_else(|p| p.into_inner()))
}

fn status(msg: &str) {
    if let Some(mut s) = state() {
        s.ring.push(wire::STATUS, msg.as_bytes());
    }
}

pub fn start() -> Result<(), String> {
    let dir = std::env::var("GHOSTPROF_RING_DIR").unwrap_or_else(|_| "/dev/shm".into());
    let path = std::path::Path::new(&dir).join(format!("ghostprof-{}.ring", std::process::id()));
    let ring = Producer::create(&path, RING_BYTES).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    let _ = STATE.set(Mutex::new(State { ring, pm: None, names: HashMap::new(), cupti_dropped: 0 }));
    if let Err(tried) = crate::api::load() {
        status(&format!("libcupti was not found ({tried}): no device timeline, eBPF only"));
        return Err("libcupti not found".into());
    }
    if std::env::var("GHOSTPROF_ENABLE").as_deref() == Ok("1") {
        enable();
    }
    // SAFETY: registering a plain extern "C" function that catches its own panics.
    unsafe { libc::atexit(at_exit) };
    std::thread::Builder::new()
        .name("ghostprof-inject".into())
        .spawn(control_loop)
        .map_err(|e| format!("cannot start the control thread: {e}"))?;
    Ok(())
}

/// Follows the ring's control word: collect while a consumer wants it, sleep otherwise.
fn control_loop() {
    loop {
        let wanted = state().map(|s| s.ring.enabled()).unwrap_or(false)
            || std::env::var("GHOSTPROF_ENABLE").as_deref() == Ok("1");
        let _ = catch_unwind(|| {
            if wanted && !ACTIVE.load(Ordering::Acquire) {
                enable();
            } else if !wanted && ACTIVE.load(Ordering::Acquire) {
                disable();
            }
            if ACTIVE.load(Ordering::Acquire) {
                clock_pair();
                pm_collect(false);
            }
        });
        std::thread::sleep(Duration::from_millis(50));
    }
}

const KINDS: [K; 7] = [
    K::CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL,
    K::CUPTI_ACTIVITY_KIND_MEMCPY,
    K::CUPTI_ACTIVITY_KIND_MEMSET,
    K::CUPTI_ACTIVITY_KIND_SYNCHRONIZATION,
    K::CUPTI_ACTIVITY_KIND_DRIVER,
    K::CUPTI_ACTIVITY_KIND_RUNTIME,
    K::CUPTI_ACTIVITY_KIND_MARKER,
];

/// Our CUPTI subscriber handle while collecting (0 when none). CUPTI before 13.3 allows one
/// subscriber per process: holding one tells us nobody else (Kineto, Nsight) is using CUPTI, and
/// keeps a later profiler from silently taking the activity buffers from under us.
static SUBSCRIBER: AtomicU64 = AtomicU64::new(0);
/// `monotonic_ns` of the last refused subscription (0: none), to retry every few seconds.
static REFUSED_AT: AtomicU64 = AtomicU64::new(0);
const RETRY_NS: u64 = 2_000_000_000;

unsafe extern "C" fn no_callback(
    _userdata: *mut std::ffi::c_void,
    _domain: cs::CUpti_CallbackDomain,
    _cbid: cs::CUpti_CallbackId,
    _data: *const std::ffi::c_void,
) {
}

/// Takes CUPTI's subscriber slot. False (after one status message per refusal episode) when
/// another subscriber holds it; retried every [`RETRY_NS`].
fn subscribe() -> bool {
    if SUBSCRIBER.load(Ordering::Acquire) != 0 {
        return true;
    }
    let refused = REFUSED_AT.load(Ordering::Relaxed);
    if refused != 0 && monotonic_ns().saturating_sub(refused) < RETRY_NS {
        return false;
    }
    let mut handle: cs::CUpti_SubscriberHandle = std::ptr::null_mut();
    // SAFETY: valid out-pointer and a callback that does nothing.
    let rc = unsafe { crate::api::cuptiSubscribe(&mut handle, Some(no_callback), std::ptr::null_mut()) };
    match rc {
        cs::CUptiResult::CUPTI_SUCCESS => {
            SUBSCRIBER.store(handle as u64, Ordering::Release);
            if refused != 0 {
                status("CUPTI was released by the other subscriber: the device timeline starts now");
            }
            REFUSED_AT.store(0, Ordering::Relaxed);
            true
        }
        cs::CUptiResult::CUPTI_ERROR_MULTIPLE_SUBSCRIBERS_NOT_SUPPORTED => {
            if refused == 0 {
                status(
                    "CUPTI is held by another subscriber in this process (e.g. Kineto / torch.profiler, Nsight): \
                     no CUPTI device timeline while it does; continuing with eBPF only",
                );
            }
            REFUSED_AT.store(monotonic_ns().max(1), Ordering::Relaxed);
            false
        }
        other => {
            // Not a conflict (e.g. an older CUPTI without the callback API): go on without one.
            if refused == 0 {
                status(&format!("cuptiSubscribe failed ({other:?}); collecting activity without a subscriber"));
            }
            REFUSED_AT.store(0, Ordering::Relaxed);
            true
        }
    }
}

fn unsubscribe() {
    let handle = SUBSCRIBER.swap(0, Ordering::AcqRel);
    if handle != 0 {
        // SAFETY: the handle cuptiSubscribe gave us, released once.
        unsafe { crate::api::cuptiUnsubscribe(handle as cs::CUpti_SubscriberHandle) };
    }
}

fn enable() {
    if !subscribe() {
        return;
    }
    // SAFETY: CUPTI calls with valid callbacks; results are checked.
    unsafe {
        // Registered on every enable: another CUPTI user may have replaced them while we were
        // detached (we hold the subscriber slot while collecting, so not while we are attached).
        let rc = crate::api::cuptiActivityRegisterCallbacks(Some(buffer_requested), Some(buffer_completed));
        if rc != cs::CUptiResult::CUPTI_SUCCESS {
            status(&format!("cuptiActivityRegisterCallbacks failed ({rc:?}); continuing with eBPF only"));
            unsubscribe();
            REFUSED_AT.store(monotonic_ns().max(1), Ordering::Relaxed);
            return;
        }
        for kind in KINDS {
            let rc = crate::api::cuptiActivityEnable(kind);
            if rc != cs::CUptiResult::CUPTI_SUCCESS {
                status(&format!("cuptiActivityEnable({kind:?}) failed: {rc:?}"));
            }
        }
        crate::api::cuptiActivityFlushPeriod(100);
    }
    ACTIVE.store(true, Ordering::Release);
    clock_pair();
    pm_start();
}

/// PM sampling interval: `GHOSTPROF_PM_INTERVAL_NS` (0 switches it off), default 50 µs.
fn pm_interval_ns() -> u64 {
    std::env::var("GHOSTPROF_PM_INTERVAL_NS").ok().and_then(|v| v.parse().ok()).unwrap_or(50_000)
}

fn pm_start() {
    let interval = pm_interval_ns();
    if interval == 0 {
        return;
    }
    match crate::pm::start(interval) {
        Ok(session) => {
            if let Some(mut s) = state() {
                s.pm = Some(session);
            }
        }
        Err(e) => status(&format!("PM sampling is off: {e}")),
    }
}

/// Sends the PM samples gathered since the last call; `last` ends the session.
fn pm_collect(last: bool) {
    let Some(mut s) = state() else { return };
    let Some(mut pm) = s.pm.take() else { return };
    match pm.collect(last) {
        Ok(samples) => {
            for x in samples {
                let mut payload = [0u8; 32];
                payload[..8].copy_from_slice(&x.start_ns.to_le_bytes());
                payload[8..16].copy_from_slice(&x.end_ns.to_le_bytes());
                payload[16..24].copy_from_slice(&x.tensor_pct.to_le_bytes());
                payload[24..].copy_from_slice(&x.sm_active_pct.to_le_bytes());
                s.ring.push(wire::PM_SAMPLE, &payload);
            }
            if !last {
                s.pm = Some(pm);
            }
        }
        Err(e) => {
            let msg = format!("PM sampling stopped: {e}");
            s.ring.push(wire::STATUS, msg.as_bytes());
        }
    }
}

fn disable() {
    pm_collect(true);
    // SAFETY: plain CUPTI calls.
    unsafe {
        for kind in KINDS {
            crate::api::cuptiActivityDisable(kind);
        }
        crate::api::cuptiActivityFlushAll(1);
    }
    ACTIVE.store(false, Ordering::Release);
    unsubscribe();
}

extern "C" fn at_exit() {
    let _ = catch_unwind(|| {
        if ACTIVE.load(Ordering::Acquire) {
            // SAFETY: flushing completed buffers at process exit, as CUPTI's samples do.
            unsafe { crate::api::cuptiActivityFlushAll(1) };
            clock_pair();
            pm_collect(true);
        }
    });
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// One (cuptiGetTimestamp, CLOCK_MONOTONIC) pair, read between two monotonic readings so its
/// error bound is half their distance. At most every 50 ms.
fn clock_pair() {
    let before = monotonic_ns();
    let mut cupti = 0u64;
    // SAFETY: writes one u64.
    let rc = unsafe { crate::api::cuptiGetTimestamp(&mut cupti) };
    let after = monotonic_ns();
    if rc != cs::CUptiResult::CUPTI_SUCCESS {
        return;
    }
    LAST_CLOCK_NS.store(after, Ordering::Relaxed);
    let mid = before + (after - before) / 2;
    let mut payload = [0u8; 24];
    payload[..8].copy_from_slice(&cupti.to_le_bytes());
    payload[8..16].copy_from_slice(&mid.to_le_bytes());
    payload[16..].copy_from_slice(&((after - before) / 2).to_le_bytes());
    if let Some(mut s) = state() {
        s.ring.push(wire::CLOCK, &payload);
    }
}

unsafe extern "C" fn buffer_requested(buffer: *mut *mut u8, size: *mut usize, max_records: *mut usize) {
    let _ = catch_unwind(|| {
        let mut v = vec![0u8; BUFFER_BYTES + 8].into_boxed_slice();
        // CUPTI wants 8-byte alignment.
        let ptr = v.as_mut_ptr();
        let aligned = ptr.wrapping_add(ptr.align_offset(8));
        std::mem::forget(v);
        BUFFERS.lock().unwrap_or_else(|p| p.into_inner()).insert(aligned as usize, ptr as usize);
        // SAFETY: CUPTI passes valid out-pointers.
        unsafe {
            *buffer = aligned;
            *size = BUFFER_BYTES;
            *max_records = 0;
        }
    });
}

/// aligned buffer → allocation start, to free what CUPTI hands back.
static BUFFERS: Mutex<BTreeMapUsize> = Mutex::new(BTreeMapUsize::new());
type BTreeMapUsize = std::collections::BTreeMap<usize, usize>;

unsafe extern "C" fn buffer_completed(
    ctx: cudarc::driver::sys::CUcontext,
    stream: u32,
    buffer: *mut u8,
    _size: usize,
    valid: usize,
) {
    let _ = catch_unwind(|| {
        if buffer.is_null() {
            return;
        }
        if let Some(mut s) = state() {
            let mut record: *mut cs::CUpti_Activity = std::ptr::null_mut();
            // SAFETY: CUPTI iterates its own buffer; each record is valid until the next call.
            while unsafe { crate::api::cuptiActivityGetNextRecord(buffer, valid, &mut record) }
                == cs::CUptiResult::CUPTI_SUCCESS
            {
                // SAFETY: CUPTI returned a valid record pointer.
                unsafe { forward(&mut s, record as *const u8) };
            }
            let mut dropped = 0usize;
            // SAFETY: writes one usize.
            unsafe { crate::api::cuptiActivityGetNumDroppedRecords(ctx, stream, &mut dropped) };
            if dropped > 0 {
                s.cupti_dropped += dropped as u64;
                let total = s.cupti_dropped.to_le_bytes();
                s.ring.push(wire::CUPTI_DROPPED, &total);
            }
        }
        if let Some(start) = BUFFERS.lock().unwrap_or_else(|p| p.into_inner()).remove(&(buffer as usize)) {
            // SAFETY: `start` is the allocation made in buffer_requested, of this length.
            drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(start as *mut u8, BUFFER_BYTES + 8)) });
        }
    });
}

/// Copies one record into the ring, replacing its name pointer with an id.
///
/// # Safety
/// `rec` points to a CUPTI activity record of the kind its first u32 says.
unsafe fn forward(s: &mut State, rec: *const u8) {
    use std::mem::{offset_of, size_of};
    // SAFETY (whole fn): sizes come from the struct of each kind; CUPTI's records of that kind
    // are at least that long (layouts only grow).
    let kind = unsafe { std::ptr::read_unaligned(rec.cast::<u32>()) };
    let (size, name_at) = match kind {
        k if k == K::CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL as u32 || k == K::CUPTI_ACTIVITY_KIND_KERNEL as u32 => {
            (size_of::<cs::CUpti_ActivityKernel9>(), Some(offset_of!(cs::CUpti_ActivityKernel9, name)))
        }
        k if k == K::CUPTI_ACTIVITY_KIND_MEMCPY as u32 => (size_of::<cs::CUpti_ActivityMemcpy5>(), None),
        k if k == K::CUPTI_ACTIVITY_KIND_MEMSET as u32 => (size_of::<cs::CUpti_ActivityMemset4>(), None),
        k if k == K::CUPTI_ACTIVITY_KIND_DRIVER as u32 || k == K::CUPTI_ACTIVITY_KIND_RUNTIME as u32 => {
            (size_of::<cs::CUpti_ActivityAPI>(), None)
        }
        k if k == K::CUPTI_ACTIVITY_KIND_SYNCHRONIZATION as u32 => {
            (size_of::<cs::CUpti_ActivitySynchronization>(), None)
        }
        k if k == K::CUPTI_ACTIVITY_KIND_MARKER as u32 => {
            (size_of::<cs::CUpti_ActivityMarker2>(), Some(offset_of!(cs::CUpti_ActivityMarker2, name)))
        }
        _ => return,
    };
    let mut copy = [0u8; 512];
    let copy = &mut copy[..size.min(512)];
    // SAFETY: see above.
    unsafe { std::ptr::copy_nonoverlapping(rec, copy.as_mut_ptr(), copy.len()) };
    if let Some(at) = name_at {
        let ptr = usize::from_le_bytes(copy[at..at + 8].try_into().unwrap_or([0; 8]));
        let id = if ptr == 0 { 0 } else { unsafe { name_id(s, ptr) } };
        copy[at..at + 8].copy_from_slice(&(id as u64).to_le_bytes());
        if kind == K::CUPTI_ACTIVITY_KIND_MARKER as u32 {
            let domain = offset_of!(cs::CUpti_ActivityMarker2, domain);
            copy[domain..domain + 8].fill(0);
        }
    }
    s.ring.push(wire::ACTIVITY, copy);
}

/// The id of the NUL-terminated string at `ptr`, sending it through the ring on first sight.
///
/// # Safety
/// `ptr` is a valid C string (CUPTI's kernel and marker names are).
unsafe fn name_id(s: &mut State, ptr: usize) -> u32 {
    // SAFETY: per the contract.
    let bytes = unsafe { CStr::from_ptr(ptr as *const std::ffi::c_char) }.to_bytes();
    let bytes = &bytes[..bytes.len().min(4096)];
    if let Some((id, known)) = s.names.get(&ptr) {
        if **known == *bytes {
            return *id;
        }
    }
    let id = s.names.len() as u32 + 1;
    s.names.insert(ptr, (id, bytes.into()));
    let mut payload = Vec::with_capacity(4 + bytes.len());
    payload.extend_from_slice(&id.to_le_bytes());
    payload.extend_from_slice(bytes);
    s.ring.push(wire::NAME, &payload);
    id
}
