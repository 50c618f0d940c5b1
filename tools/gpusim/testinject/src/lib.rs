//! A minimal `CUDA_INJECTION64_PATH` library for gpusim's tests.
//!
//! `InitializeInjection` counts its calls (`gpusim_testinject_calls` reports the count), so a
//! test can check that gpusim's `cuInit` calls it exactly once per process. With
//! `GPUSIM_TESTINJECT_OUT=<file>` it also acts as a tiny CUPTI collector: it loads
//! `libcupti.so.12` (else `libcupti.so.13`) by soname, enables kernel, memcpy, driver-API, synchronization and marker
//! records, flushes at exit and writes per-kind counts. It reads the records by the byte offsets
//! of the real `cupti_activity.h`, independently of gpusim's own layout structs. It also runs
//! PM sampling (1 ms samples of tensor-pipe and graphics-busy percentages) and reports the
//! tensor-active and busy time they add up to; see [`pm`].
//!
//! With `GPUSIM_TESTINJECT_BARE=1` it is instead the cheapest CUPTI client that collects what
//! ghostprof's library collects by default (the baseline of `tools/bench cupti`): the same
//! activity kinds (concurrent kernel, memcpy, memset, synchronization, marker; no API activity),
//! a subscriber with the cuLaunchKernel callback reading the correlation id at exit, and buffers
//! walked with `cuptiActivityGetNextRecord` and thrown away. What ghostprof costs on top of it is
//! ghostprof's own cost per record.

mod pm;

use std::ffi::c_void;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

static CALLS: AtomicU32 = AtomicU32::new(0);

/// Counters of the records seen.
#[derive(Default)]
struct Seen {
    kernels: u64,
    kernel_ns: u64,
    kernels_without_name: u64,
    memcpys: u64,
    launch_api_calls: u64,
    api_calls: u64,
    syncs: u64,
    marker_starts: u64,
    marker_ends: u64,
    bad_intervals: u64,
    /// Σ correlation ids of cuLaunchKernel API records.
    launch_api_correlation_sum: u64,
    /// cuLaunchKernel callbacks at enter / exit.
    callback_enters: u64,
    callback_exits: u64,
    /// Σ correlation ids at enter.
    callback_correlation_sum: u64,
    /// Enter callbacks whose symbolName, params (f, gridDimX = 132) or exit value were wrong.
    callback_bad: u64,
}

fn seen() -> &'static Mutex<Seen> {
    static SEEN: OnceLock<Mutex<Seen>> = OnceLock::new();
    SEEN.get_or_init(Mutex::default)
}

static BUFFERS: AtomicU64 = AtomicU64::new(0);

type GetNextRecord = unsafe extern "C" fn(*mut u8, usize, *mut *mut u8) -> i32;
static NEXT_RECORD: OnceLock<usize> = OnceLock::new();
static FLUSH_ALL: OnceLock<usize> = OnceLock::new();

const BUFFER_BYTES: usize = 1 << 20;

unsafe extern "C" fn buffer_requested(buffer: *mut *mut u8, size: *mut usize, max_records: *mut usize) {
    // u64 words: CUPTI wants 8-byte aligned buffers.
    let words: &'static mut [u64] = Box::leak(vec![0u64; BUFFER_BYTES / 8].into_boxed_slice());
    // SAFETY: the out-pointers come from CUPTI.
    unsafe {
        *buffer = words.as_mut_ptr() as *mut u8;
        *size = BUFFER_BYTES;
        *max_records = 0;
    }
}

fn read<T: Copy>(record: *const u8, offset: usize) -> T {
    // SAFETY: offsets within the record of the kind just checked.
    unsafe { std::ptr::read_unaligned(record.add(offset) as *const T) }
}

unsafe extern "C" fn buffer_completed(ctx: *mut c_void, stream: u32, buffer: *mut u8, size: usize, valid: usize) {
    // Never unwind into CUPTI.
    // SAFETY: forwarding CUPTI's arguments unchanged.
    let _ = std::panic::catch_unwind(|| unsafe { count_records(ctx, stream, buffer, size, valid) });
}

/// Count the records of one completed buffer and free it.
///
/// # Safety
/// `buffer` must come from [`buffer_requested`] with `valid` bytes written by CUPTI.
unsafe fn count_records(_ctx: *mut c_void, _stream: u32, buffer: *mut u8, _size: usize, valid: usize) {
    BUFFERS.fetch_add(1, Ordering::SeqCst);
    let Some(&next) = NEXT_RECORD.get() else { return };
    // SAFETY: resolved from libcupti with this signature.
    let next: GetNextRecord = unsafe { std::mem::transmute::<usize, GetNextRecord>(next) };
    if bare() {
        let mut record: *mut u8 = std::ptr::null_mut();
        let mut n = 0u64;
        // SAFETY: walking the buffer CUPTI handed back.
        while unsafe { next(buffer, valid, &mut record) } == 0 {
            n += 1;
        }
        std::hint::black_box(n);
        // SAFETY: allocated in buffer_requested as a boxed slice of BUFFER_BYTES / 8 words.
        drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(buffer as *mut u64, BUFFER_BYTES / 8)) });
        return;
    }
    let mut s = seen().lock().unwrap_or_else(|p| p.into_inner());
    let mut record: *mut u8 = std::ptr::null_mut();
    // SAFETY: walking the buffer CUPTI handed back.
    while unsafe { next(buffer, valid, &mut record) } == 0 {
        let kind: u32 = read(record, 0);
        match kind {
            10 => {
                // CUpti_ActivityKernel9: start @16, end @24, name @104
                let (start, end): (u64, u64) = (read(record, 16), read(record, 24));
                let name: usize = read(record, 104);
                s.kernels += 1;
                s.kernel_ns += end.saturating_sub(start);
                s.bad_intervals += u64::from(end <= start);
                s.kernels_without_name += u64::from(name == 0);
            }
            1 => s.memcpys += 1,
            4 => {
                // CUpti_ActivityAPI: cbid @4; 307 = cuLaunchKernel
                let cbid: u32 = read(record, 4);
                s.api_calls += 1;
                if cbid == 307 {
                    s.launch_api_calls += 1;
                    // CUpti_ActivityAPI: correlationId @32
                    s.launch_api_correlation_sum += read::<u32>(record, 32) as u64;
                }
            }
            38 => s.syncs += 1,
            12 => {
                // CUpti_ActivityMarker2: flags @4 (2 start, 4 end)
                let flags: u32 = read(record, 4);
                s.marker_starts += u64::from(flags == 2);
                s.marker_ends += u64::from(flags == 4);
            }
            _ => {}
        }
    }
    // SAFETY: allocated in buffer_requested as a boxed slice of BUFFER_BYTES / 8 words.
    drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(buffer as *mut u64, BUFFER_BYTES / 8)) });
}

extern "C" fn at_exit() {
    if let Some(&flush) = FLUSH_ALL.get() {
        // SAFETY: resolved from libcupti as `CUptiResult cuptiActivityFlushAll(uint32_t)`.
        let flush: unsafe extern "C" fn(u32) -> i32 = unsafe { std::mem::transmute::<usize, _>(flush) };
        // SAFETY: plain call.
        unsafe { flush(1) };
    }
    let Some(path) = std::env::var_os("GPUSIM_TESTINJECT_OUT") else { return };
    let pm = pm::finish();
    let s = seen().lock().unwrap_or_else(|p| p.into_inner());
    let text = format!(
        "{{\"pm_samples\":{},\"pm_tensor_active_ns\":{},\"pm_busy_ns\":{},\"kernels\":{},\"kernel_ns\":{},\"kernels_without_name\":{},\"memcpys\":{},\"launch_api_calls\":{},\"api_calls\":{},\"syncs\":{},\"marker_starts\":{},\"marker_ends\":{},\"bad_intervals\":{},\"buffers\":{},\"launch_api_correlation_sum\":{},\"callback_enters\":{},\"callback_exits\":{},\"callback_correlation_sum\":{},\"callback_bad\":{}}}\n",
        pm.samples, pm.tensor_active_ns, pm.busy_ns, s.kernels, s.kernel_ns, s.kernels_without_name, s.memcpys, s.launch_api_calls, s.api_calls,
        s.syncs, s.marker_starts, s.marker_ends, s.bad_intervals, BUFFERS.load(Ordering::SeqCst),
        s.launch_api_correlation_sum, s.callback_enters, s.callback_exits, s.callback_correlation_sum, s.callback_bad
    );
    let _ = std::fs::write(path, text);
}

fn start_cupti() -> Option<()> {
    // SAFETY: dlopen/dlsym of CUPTI entry points with the signatures of the real headers.
    unsafe {
        // CUDA 12's soname, else CUDA 13's (the real GPU tier's wheels ship libcupti.so.13).
        let lib = [c"libcupti.so.12", c"libcupti.so.13"]
            .iter()
            .map(|n| libc::dlopen(n.as_ptr(), libc::RTLD_NOW))
            .find(|l| !l.is_null())
            .unwrap_or(std::ptr::null_mut());
        if lib.is_null() {
            eprintln!("gpusim-testinject: cannot load libcupti.so.12 or libcupti.so.13");
            return None;
        }
        let sym = |name: &std::ffi::CStr| {
            let p = libc::dlsym(lib, name.as_ptr());
            (!p.is_null()).then_some(p as usize)
        };
        let register: unsafe extern "C" fn(usize, usize) -> i32 =
            std::mem::transmute::<usize, _>(sym(c"cuptiActivityRegisterCallbacks")?);
        let enable: unsafe extern "C" fn(u32) -> i32 = std::mem::transmute::<usize, _>(sym(c"cuptiActivityEnable")?);
        let _ = NEXT_RECORD.set(sym(c"cuptiActivityGetNextRecord")?);
        let _ = FLUSH_ALL.set(sym(c"cuptiActivityFlushAll")?);
        if register(buffer_requested as *const () as usize, buffer_completed as *const () as usize) != 0 {
            return None;
        }
        // Bare: ghostprof's default kinds (memset, 2, instead of DRIVER API activity, 4).
        let kinds: &[u32] = if bare() { &[10, 1, 2, 38, 12] } else { &[10, 1, 4, 38, 12] };
        for &kind in kinds {
            if enable(kind) != 0 {
                eprintln!("gpusim-testinject: cuptiActivityEnable({kind}) failed");
            }
        }
        if !bare() {
            pm::start(lib);
        }
        subscribe(lib);
        libc::atexit(at_exit);
    }
    Some(())
}

/// `CUpti_CallbackFunc` for cuLaunchKernel (cbid 307): reads `CUpti_CallbackData` by the real
/// header's offsets (site @0, functionParams @16, returnValue @24, symbolName @32,
/// correlationId @64) and `cuLaunchKernel_params` (f @0, gridDimX @8).
unsafe extern "C" fn on_callback(_userdata: *mut c_void, domain: u32, cbid: u32, data: *const c_void) {
    let _ = std::panic::catch_unwind(|| {
        if domain != 1 || cbid != 307 || data.is_null() {
            return;
        }
        let data = data as *const u8;
        if bare() {
            // The least a launch-correlating client does: the correlation id at exit.
            std::hint::black_box(read::<u32>(data, 64));
            return;
        }
        let site: u32 = read(data, 0);
        let params: usize = read(data, 16);
        let mut s = seen().lock().unwrap_or_else(|p| p.into_inner());
        if site == 0 {
            s.callback_enters += 1;
            s.callback_correlation_sum += read::<u32>(data, 64) as u64;
            let symbol: usize = read(data, 32);
            let ok = symbol != 0
                && params != 0
                && read::<usize>(params as *const u8, 0) != 0
                && read::<u32>(params as *const u8, 8) == 132;
            s.callback_bad += u64::from(!ok);
        } else {
            s.callback_exits += 1;
            let ret: usize = read(data, 24);
            s.callback_bad += u64::from(ret == 0 || read::<i32>(ret as *const u8, 0) != 0);
        }
    });
}

/// Subscribe to the driver domain's cuLaunchKernel callback.
fn subscribe(lib: *mut c_void) -> Option<()> {
    // SAFETY: CUPTI entry points with the signatures of cupti_callbacks.h.
    unsafe {
        let sub = libc::dlsym(lib, c"cuptiSubscribe".as_ptr());
        let enable = libc::dlsym(lib, c"cuptiEnableCallback".as_ptr());
        if sub.is_null() || enable.is_null() {
            return None;
        }
        let sub: unsafe extern "C" fn(*mut *mut c_void, usize, *mut c_void) -> i32 = std::mem::transmute(sub);
        let enable: unsafe extern "C" fn(u32, *mut c_void, u32, u32) -> i32 = std::mem::transmute(enable);
        let mut handle = std::ptr::null_mut();
        if sub(&mut handle, on_callback as *const () as usize, std::ptr::null_mut()) != 0 {
            eprintln!("gpusim-testinject: cuptiSubscribe failed");
            return None;
        }
        if enable(1, handle, 1, 307) != 0 {
            eprintln!("gpusim-testinject: cuptiEnableCallback failed");
        }
    }
    Some(())
}

/// `GPUSIM_TESTINJECT_BARE=1`: the bare client (module docs).
fn bare() -> bool {
    static BARE: OnceLock<bool> = OnceLock::new();
    *BARE.get_or_init(|| std::env::var("GPUSIM_TESTINJECT_BARE").as_deref() == Ok("1"))
}

/// `int InitializeInjection(void)`: the entry point the CUDA driver calls; 1 means success.
#[no_mangle]
pub extern "C" fn InitializeInjection() -> i32 {
    std::panic::catch_unwind(|| {
        CALLS.fetch_add(1, Ordering::SeqCst);
        if std::env::var_os("GPUSIM_TESTINJECT_OUT").is_some() || bare() {
            start_cupti();
        }
        1
    })
    .unwrap_or(0)
}

/// How many times `InitializeInjection` ran in this process.
#[no_mangle]
pub extern "C" fn gpusim_testinject_calls() -> u32 {
    CALLS.load(Ordering::SeqCst)
}
