//! The private `gpusim_*` C symbols that libcuda exports so that libcupti, libnccl and the
//! workload share one simulated device (the real CUPTI and NCCL also reach the driver's state
//! through private entry points). Callers find them with `dlsym(RTLD_DEFAULT, name)`.
//! Also the CUPTI driver callback ids gpusim tags API records with (values from
//! `cupti_driver_cbid.h`, CUDA 12.9).

use crate::record::SimRecord;

/// `u64 gpusim_record_count(void)`: records appended so far.
pub const RECORD_COUNT: &str = "gpusim_record_count";
/// `u64 gpusim_read_records(u64 first, SimRecord *out, u64 capacity)`: copy records
/// `[first, first + n)` into `out` and return `n` (records are never removed).
pub const READ_RECORDS: &str = "gpusim_read_records";
/// `u64 gpusim_stream_ready_ns(CUstream)`: when an op enqueued on this stream now would start.
pub const STREAM_READY_NS: &str = "gpusim_stream_ready_ns";
/// `int gpusim_enqueue_device_op(CUstream, SimRecord *rec)`: append a device op whose times the
/// caller computed (collectives); the stream stays busy until `rec->end_ns`. Fills the
/// correlation id into `rec`.
pub const ENQUEUE_DEVICE_OP: &str = "gpusim_enqueue_device_op";
/// `void gpusim_push_host(const SimRecord *rec)`: append a host interval (stall, marker, other).
pub const PUSH_HOST: &str = "gpusim_push_host";

/// `void gpusim_set_api_hook(ApiHookFn hook)`: libcupti's way to see driver API calls as they
/// happen (enter and exit), for the CUPTI callback API. Null removes the hook.
pub const SET_API_HOOK: &str = "gpusim_set_api_hook";
/// `u64 gpusim_cupti_attached(u64 *out, u64 capacity)`: the spans during which CUPTI was
/// attached to the process (libcupti's hook installed, from CUPTI's first use to
/// `cuptiFinalize`), as (start_ns, end_ns, driver API calls) triples, `end_ns` 0 while still
/// attached; writes at most `capacity` triples and returns how many spans there were.
pub const CUPTI_ATTACHED: &str = "gpusim_cupti_attached";

/// Callback site of [`ApiHookFn`]: `CUPTI_API_ENTER`.
pub const SITE_ENTER: u32 = 0;
/// `CUPTI_API_EXIT`.
pub const SITE_EXIT: u32 = 1;

/// `void hook(u32 site, u32 cbid, const char *function_name, const char *symbol_name,
/// const void *function_params, void *return_value, u32 correlation_id)`: called by libcuda
/// without its lock held. `function_params` points at the real `<api>_params` struct of
/// `generated_cuda_meta.h` for the launch entry points and is null for the others.
pub type ApiHookFn = unsafe extern "C" fn(
    u32,
    u32,
    *const libc::c_char,
    *const libc::c_char,
    *const libc::c_void,
    *mut libc::c_void,
    u32,
);
/// `gpusim_set_api_hook`.
pub type SetApiHookFn = unsafe extern "C" fn(Option<ApiHookFn>);

/// `gpusim_record_count`.
pub type RecordCountFn = unsafe extern "C" fn() -> u64;
/// `gpusim_read_records`.
pub type ReadRecordsFn = unsafe extern "C" fn(u64, *mut SimRecord, u64) -> u64;
/// `gpusim_stream_ready_ns`.
pub type StreamReadyFn = unsafe extern "C" fn(*mut libc::c_void) -> u64;
/// `gpusim_enqueue_device_op`.
pub type EnqueueDeviceOpFn = unsafe extern "C" fn(*mut libc::c_void, *mut SimRecord) -> i32;
/// `gpusim_push_host`.
pub type PushHostFn = unsafe extern "C" fn(*const SimRecord);

/// Look up a libcuda symbol the way the real CUPTI and NCCL reach the driver: `dlopen` of
/// `libcuda.so.1` (already loaded in a CUDA process, so this only takes a reference) and `dlsym`.
/// `None` when no libcuda is found.
pub fn lookup(name: &str) -> Option<*mut libc::c_void> {
    let c_name = std::ffi::CString::new(name).ok()?;
    // SAFETY: plain dlopen/dlsym with valid C strings; the handle is deliberately never closed,
    // as the library must stay loaded while its function pointers are used.
    unsafe {
        let handle = libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL);
        let ptr = if handle.is_null() {
            libc::dlsym(libc::RTLD_DEFAULT, c_name.as_ptr())
        } else {
            libc::dlsym(handle, c_name.as_ptr())
        };
        (!ptr.is_null()).then_some(ptr)
    }
}

/// CUPTI driver API callback ids (`CUpti_driver_api_trace_cbid`).
pub mod cbid {
    /// cuInit
    pub const CU_INIT: u32 = 1;
    /// cuCtxSynchronize
    pub const CU_CTX_SYNCHRONIZE: u32 = 17;
    /// cuModuleLoadData
    pub const CU_MODULE_LOAD_DATA: u32 = 19;
    /// cuModuleGetFunction
    pub const CU_MODULE_GET_FUNCTION: u32 = 23;
    /// cuEventCreate
    pub const CU_EVENT_CREATE: u32 = 118;
    /// cuEventRecord
    pub const CU_EVENT_RECORD: u32 = 119;
    /// cuEventSynchronize
    pub const CU_EVENT_SYNCHRONIZE: u32 = 121;
    /// cuStreamCreate
    pub const CU_STREAM_CREATE: u32 = 124;
    /// cuStreamSynchronize
    pub const CU_STREAM_SYNCHRONIZE: u32 = 126;
    /// cuCtxCreate_v2
    pub const CU_CTX_CREATE_V2: u32 = 235;
    /// cuMemAlloc_v2
    pub const CU_MEM_ALLOC_V2: u32 = 243;
    /// cuMemFree_v2
    pub const CU_MEM_FREE_V2: u32 = 245;
    /// cuMemcpyHtoD_v2
    pub const CU_MEMCPY_HTOD_V2: u32 = 276;
    /// cuMemcpyHtoDAsync_v2
    pub const CU_MEMCPY_HTOD_ASYNC_V2: u32 = 277;
    /// cuMemcpyDtoH_v2
    pub const CU_MEMCPY_DTOH_V2: u32 = 278;
    /// cuMemcpyDtoHAsync_v2
    pub const CU_MEMCPY_DTOH_ASYNC_V2: u32 = 279;
    /// cuStreamWaitEvent
    pub const CU_STREAM_WAIT_EVENT: u32 = 295;
    /// cuLaunchKernel
    pub const CU_LAUNCH_KERNEL: u32 = 307;
    /// cuDevicePrimaryCtxRetain
    pub const CU_DEVICE_PRIMARY_CTX_RETAIN: u32 = 386;
    /// cuLaunchKernel_ptsz
    pub const CU_LAUNCH_KERNEL_PTSZ: u32 = 442;
    /// cuLaunchCooperativeKernel
    pub const CU_LAUNCH_COOPERATIVE_KERNEL: u32 = 477;
    /// cuGraphLaunch
    pub const CU_GRAPH_LAUNCH: u32 = 514;
    /// cuLaunchKernelEx
    pub const CU_LAUNCH_KERNEL_EX: u32 = 652;
    /// cuLaunchKernelEx_ptsz
    pub const CU_LAUNCH_KERNEL_EX_PTSZ: u32 = 653;

    /// Whether an API record with this cbid is a kernel launch entry point.
    pub fn is_launch(cbid: u32) -> bool {
        matches!(
            cbid,
            CU_LAUNCH_KERNEL
                | CU_LAUNCH_KERNEL_PTSZ
                | CU_LAUNCH_COOPERATIVE_KERNEL
                | CU_GRAPH_LAUNCH
                | CU_LAUNCH_KERNEL_EX
                | CU_LAUNCH_KERNEL_EX_PTSZ
        )
    }
}
