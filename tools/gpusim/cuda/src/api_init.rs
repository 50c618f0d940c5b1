//! Initialization, device and context entry points (`cuInit`, `cuDevice*`, `cuCtx*`,
//! `cuDevicePrimaryCtx*`, `cuGetError*`). One context per device; the "current" context is
//! per thread as in the real driver.

use std::cell::Cell;
use std::ffi::{c_char, c_uint};
use std::sync::atomic::{AtomicBool, Ordering};

use gpusim_core::abi::cbid;
use gpusim_core::clock::now_ns;
use gpusim_core::ffi::guard;

use crate::types::*;
use crate::{config, device, inject};

static INITIALIZED: AtomicBool = AtomicBool::new(false);

thread_local! {
    static CURRENT_CONTEXT: Cell<usize> = const { Cell::new(0) };
}

/// Context handles are `CONTEXT_HANDLE_BASE + device ordinal`.
const CONTEXT_HANDLE_BASE: usize = 0xC0_0000;

/// Whether `cuInit` has succeeded in this process.
pub fn initialized() -> bool {
    INITIALIZED.load(Ordering::SeqCst)
}

fn valid_device(dev: CuDevice) -> bool {
    dev >= 0 && dev < config::get().device_count
}

/// Run `body` if the driver is initialized, else `CUDA_ERROR_NOT_INITIALIZED` (as the real one).
pub fn checked(body: impl FnOnce() -> CuResult) -> CuResult {
    guard(CUDA_ERROR_UNKNOWN, || if initialized() { body() } else { CUDA_ERROR_NOT_INITIALIZED })
}

/// `CUresult cuInit(unsigned int Flags)`.
#[no_mangle]
pub extern "C" fn cuInit(_flags: c_uint) -> CuResult {
    guard(CUDA_ERROR_UNKNOWN, || {
        let start = now_ns();
        INITIALIZED.store(true, Ordering::SeqCst);
        // Outside the device lock: the injection library calls back into CUPTI and the driver.
        inject::run_once();
        let mut dev = device::lock();
        let correlation_id = dev.next_correlation_id();
        dev.push_api("cuInit", cbid::CU_INIT, start, correlation_id);
        CUDA_SUCCESS
    })
}

/// `CUresult cuDriverGetVersion(int *driverVersion)`: 12.9.
#[no_mangle]
pub extern "C" fn cuDriverGetVersion(version: *mut i32) -> CuResult {
    guard(CUDA_ERROR_UNKNOWN, || {
        if version.is_null() {
            return CUDA_ERROR_INVALID_VALUE;
        }
        // SAFETY: non-null out-pointer from the caller.
        unsafe { *version = 12090 };
        CUDA_SUCCESS
    })
}

/// `CUresult cuDeviceGet(CUdevice *device, int ordinal)`.
#[no_mangle]
pub extern "C" fn cuDeviceGet(out: *mut CuDevice, ordinal: i32) -> CuResult {
    checked(|| {
        if out.is_null() {
            return CUDA_ERROR_INVALID_VALUE;
        }
        if !valid_device(ordinal) {
            return CUDA_ERROR_INVALID_DEVICE;
        }
        // SAFETY: non-null out-pointer.
        unsafe { *out = ordinal };
        CUDA_SUCCESS
    })
}

/// `CUresult cuDeviceGetCount(int *count)`.
#[no_mangle]
pub extern "C" fn cuDeviceGetCount(count: *mut i32) -> CuResult {
    checked(|| {
        if count.is_null() {
            return CUDA_ERROR_INVALID_VALUE;
        }
        // SAFETY: non-null out-pointer.
        unsafe { *count = config::get().device_count };
        CUDA_SUCCESS
    })
}

/// `CUresult cuDeviceGetName(char *name, int len, CUdevice dev)`.
#[no_mangle]
pub extern "C" fn cuDeviceGetName(name: *mut c_char, len: i32, dev: CuDevice) -> CuResult {
    checked(|| {
        if name.is_null() || len <= 0 {
            return CUDA_ERROR_INVALID_VALUE;
        }
        if !valid_device(dev) {
            return CUDA_ERROR_INVALID_DEVICE;
        }
        let bytes = config::get().device_name.as_bytes();
        let n = bytes.len().min(len as usize - 1);
        // SAFETY: the caller provides `len` writable bytes; we write n + 1 <= len.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), name as *mut u8, n);
            *name.add(n) = 0;
        }
        CUDA_SUCCESS
    })
}

/// `CUresult cuDeviceGetAttribute(int *pi, CUdevice_attribute attrib, CUdevice dev)`: the
/// attributes frameworks query, with H100 SXM values; other valid attributes read 0.
#[no_mangle]
pub extern "C" fn cuDeviceGetAttribute(pi: *mut i32, attrib: i32, dev: CuDevice) -> CuResult {
    checked(|| {
        if pi.is_null() || !(1..200).contains(&attrib) {
            return CUDA_ERROR_INVALID_VALUE;
        }
        if !valid_device(dev) {
            return CUDA_ERROR_INVALID_DEVICE;
        }
        let value = match attrib {
            1 => 1024,       // MAX_THREADS_PER_BLOCK
            10 => 32,        // WARP_SIZE
            13 => 1_980_000, // CLOCK_RATE (kHz)
            16 => 132,       // MULTIPROCESSOR_COUNT
            36 => 2_619_000, // MEMORY_CLOCK_RATE (kHz)
            37 => 5120,      // GLOBAL_MEMORY_BUS_WIDTH
            75 => 9,         // COMPUTE_CAPABILITY_MAJOR
            76 => 0,         // COMPUTE_CAPABILITY_MINOR
            _ => 0,
        };
        // SAFETY: non-null out-pointer.
        unsafe { *pi = value };
        CUDA_SUCCESS
    })
}

fn total_mem(bytes: *mut usize, dev: CuDevice) -> CuResult {
    checked(|| {
        if bytes.is_null() {
            return CUDA_ERROR_INVALID_VALUE;
        }
        if !valid_device(dev) {
            return CUDA_ERROR_INVALID_DEVICE;
        }
        // SAFETY: non-null out-pointer.
        unsafe { *bytes = 80 << 30 };
        CUDA_SUCCESS
    })
}

/// `CUresult cuDeviceTotalMem(size_t *bytes, CUdevice dev)` (pre-3.2 name).
#[no_mangle]
pub extern "C" fn cuDeviceTotalMem(bytes: *mut usize, dev: CuDevice) -> CuResult {
    total_mem(bytes, dev)
}

/// `cuDeviceTotalMem_v2`, what `cuDeviceTotalMem` compiles to.
#[no_mangle]
pub extern "C" fn cuDeviceTotalMem_v2(bytes: *mut usize, dev: CuDevice) -> CuResult {
    total_mem(bytes, dev)
}

fn make_current(pctx: *mut Handle, dev: CuDevice, api: (&str, u32)) -> CuResult {
    checked(|| {
        let start = now_ns();
        if pctx.is_null() {
            return CUDA_ERROR_INVALID_VALUE;
        }
        if !valid_device(dev) {
            return CUDA_ERROR_INVALID_DEVICE;
        }
        let handle = CONTEXT_HANDLE_BASE + dev as usize;
        CURRENT_CONTEXT.with(|c| c.set(handle));
        // SAFETY: non-null out-pointer.
        unsafe { *pctx = handle as Handle };
        let mut state = device::lock();
        let correlation_id = state.next_correlation_id();
        state.push_api(api.0, api.1, start, correlation_id);
        CUDA_SUCCESS
    })
}

/// `CUresult cuCtxCreate(CUcontext *pctx, unsigned int flags, CUdevice dev)`.
#[no_mangle]
pub extern "C" fn cuCtxCreate(pctx: *mut Handle, _flags: c_uint, dev: CuDevice) -> CuResult {
    make_current(pctx, dev, ("cuCtxCreate", cbid::CU_CTX_CREATE_V2))
}

/// `cuCtxCreate_v2`, what `cuCtxCreate` compiles to.
#[no_mangle]
pub extern "C" fn cuCtxCreate_v2(pctx: *mut Handle, _flags: c_uint, dev: CuDevice) -> CuResult {
    make_current(pctx, dev, ("cuCtxCreate_v2", cbid::CU_CTX_CREATE_V2))
}

/// `CUresult cuDevicePrimaryCtxRetain(CUcontext *pctx, CUdevice dev)`.
#[no_mangle]
pub extern "C" fn cuDevicePrimaryCtxRetain(pctx: *mut Handle, dev: CuDevice) -> CuResult {
    make_current(pctx, dev, ("cuDevicePrimaryCtxRetain", cbid::CU_DEVICE_PRIMARY_CTX_RETAIN))
}

/// `CUresult cuDevicePrimaryCtxRelease(CUdevice dev)`.
#[no_mangle]
pub extern "C" fn cuDevicePrimaryCtxRelease(dev: CuDevice) -> CuResult {
    checked(|| if valid_device(dev) { CUDA_SUCCESS } else { CUDA_ERROR_INVALID_DEVICE })
}

/// `cuDevicePrimaryCtxRelease_v2`.
#[no_mangle]
pub extern "C" fn cuDevicePrimaryCtxRelease_v2(dev: CuDevice) -> CuResult {
    cuDevicePrimaryCtxRelease(dev)
}

fn destroy_ctx(ctx: Handle) -> CuResult {
    checked(|| {
        if (ctx as usize) < CONTEXT_HANDLE_BASE {
            return CUDA_ERROR_INVALID_HANDLE;
        }
        CURRENT_CONTEXT.with(|c| {
            if c.get() == ctx as usize {
                c.set(0)
            }
        });
        CUDA_SUCCESS
    })
}

/// `CUresult cuCtxDestroy(CUcontext ctx)`.
#[no_mangle]
pub extern "C" fn cuCtxDestroy(ctx: Handle) -> CuResult {
    destroy_ctx(ctx)
}

/// `cuCtxDestroy_v2`, what `cuCtxDestroy` compiles to.
#[no_mangle]
pub extern "C" fn cuCtxDestroy_v2(ctx: Handle) -> CuResult {
    destroy_ctx(ctx)
}

/// `CUresult cuCtxGetCurrent(CUcontext *pctx)`.
#[no_mangle]
pub extern "C" fn cuCtxGetCurrent(pctx: *mut Handle) -> CuResult {
    checked(|| {
        if pctx.is_null() {
            return CUDA_ERROR_INVALID_VALUE;
        }
        // SAFETY: non-null out-pointer.
        unsafe { *pctx = CURRENT_CONTEXT.with(|c| c.get()) as Handle };
        CUDA_SUCCESS
    })
}

/// `CUresult cuCtxSetCurrent(CUcontext ctx)`.
#[no_mangle]
pub extern "C" fn cuCtxSetCurrent(ctx: Handle) -> CuResult {
    checked(|| {
        let handle = ctx as usize;
        if handle != 0 && !valid_device(handle.wrapping_sub(CONTEXT_HANDLE_BASE) as i32) {
            return CUDA_ERROR_INVALID_HANDLE;
        }
        CURRENT_CONTEXT.with(|c| c.set(handle));
        CUDA_SUCCESS
    })
}

/// `CUresult cuCtxGetDevice(CUdevice *device)`.
#[no_mangle]
pub extern "C" fn cuCtxGetDevice(out: *mut CuDevice) -> CuResult {
    checked(|| {
        let handle = CURRENT_CONTEXT.with(|c| c.get());
        if out.is_null() {
            return CUDA_ERROR_INVALID_VALUE;
        }
        if handle == 0 {
            return 201; // CUDA_ERROR_INVALID_CONTEXT
        }
        // SAFETY: non-null out-pointer.
        unsafe { *out = (handle - CONTEXT_HANDLE_BASE) as CuDevice };
        CUDA_SUCCESS
    })
}

/// `CUresult cuCtxSynchronize(void)`: really blocks until every stream's work is done.
#[no_mangle]
pub extern "C" fn cuCtxSynchronize() -> CuResult {
    checked(|| {
        let deadline = device::lock().all_streams_free_ns();
        device::wait_until(deadline, 4, 0, ("cuCtxSynchronize", cbid::CU_CTX_SYNCHRONIZE));
        CUDA_SUCCESS
    })
}

fn error_text(error: CuResult) -> Option<(&'static std::ffi::CStr, &'static std::ffi::CStr)> {
    Some(match error {
        CUDA_SUCCESS => (c"CUDA_SUCCESS", c"no error"),
        CUDA_ERROR_INVALID_VALUE => (c"CUDA_ERROR_INVALID_VALUE", c"invalid argument"),
        CUDA_ERROR_NOT_INITIALIZED => (c"CUDA_ERROR_NOT_INITIALIZED", c"initialization error"),
        CUDA_ERROR_INVALID_DEVICE => (c"CUDA_ERROR_INVALID_DEVICE", c"invalid device ordinal"),
        201 => (c"CUDA_ERROR_INVALID_CONTEXT", c"invalid device context"),
        CUDA_ERROR_INVALID_HANDLE => (c"CUDA_ERROR_INVALID_HANDLE", c"invalid resource handle"),
        CUDA_ERROR_NOT_FOUND => (c"CUDA_ERROR_NOT_FOUND", c"named symbol not found"),
        CUDA_ERROR_NOT_READY => (c"CUDA_ERROR_NOT_READY", c"device not ready"),
        CUDA_ERROR_UNKNOWN => (c"CUDA_ERROR_UNKNOWN", c"unknown error"),
        _ => return None,
    })
}

/// `CUresult cuGetErrorString(CUresult error, const char **pStr)`.
#[no_mangle]
pub extern "C" fn cuGetErrorString(error: CuResult, p_str: *mut *const c_char) -> CuResult {
    guard(CUDA_ERROR_UNKNOWN, || {
        if p_str.is_null() {
            return CUDA_ERROR_INVALID_VALUE;
        }
        let Some((_, text)) = error_text(error) else {
            return CUDA_ERROR_INVALID_VALUE;
        };
        // SAFETY: non-null out-pointer; the string is 'static.
        unsafe { *p_str = text.as_ptr() };
        CUDA_SUCCESS
    })
}

/// `CUresult cuGetErrorName(CUresult error, const char **pStr)`.
#[no_mangle]
pub extern "C" fn cuGetErrorName(error: CuResult, p_str: *mut *const c_char) -> CuResult {
    guard(CUDA_ERROR_UNKNOWN, || {
        if p_str.is_null() {
            return CUDA_ERROR_INVALID_VALUE;
        }
        let Some((name, _)) = error_text(error) else {
            return CUDA_ERROR_INVALID_VALUE;
        };
        // SAFETY: non-null out-pointer; the string is 'static.
        unsafe { *p_str = name.as_ptr() };
        CUDA_SUCCESS
    })
}
