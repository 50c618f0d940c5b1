//! Execution entry points: modules and functions, every kernel-launch variant, streams and
//! events. All launch variants share [`launch`] so that a uprobe on one symbol sees only the
//! calls made through that symbol.
//!
//! Module images: a real cubin is opaque; gpusim's "cubin" is text that defines the kernels,
//! `gpusim-module v1` then one `name duration_ns flops` line per kernel. The workload builds it
//! from the scenario, so the driver learns each kernel's cost the way the real one learns its
//! code: from the loaded module.

use std::ffi::{c_char, c_uint, c_void, CString};

use gpusim_core::abi::cbid;
use gpusim_core::clock::{now_ns, spin_for};
use gpusim_core::record::{RecordKind, SimRecord};

use crate::api_init::checked;
use crate::config;
use crate::device::{self, Function};
use crate::hook;
use crate::types::*;

/// Parse a gpusim module image into its kernels.
fn parse_module(text: &str) -> Option<Vec<Function>> {
    let mut lines = text.lines();
    if lines.next()?.trim() != "gpusim-module v1" {
        return None;
    }
    let mut functions = Vec::new();
    for line in lines.map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let mut fields = line.split_whitespace();
        let name = CString::new(fields.next()?).ok()?;
        let duration_ns = fields.next()?.parse().ok()?;
        let flops = fields.next().map_or(Some(0), |f| f.parse().ok())?;
        functions.push(Function { name, duration_ns, flops });
    }
    Some(functions)
}

/// `CUresult cuModuleLoadData(CUmodule *module, const void *image)`.
#[no_mangle]
pub extern "C" fn cuModuleLoadData(module: *mut Handle, image: *const c_void) -> CuResult {
    checked(|| {
        let start = now_ns();
        if module.is_null() || image.is_null() {
            return CUDA_ERROR_INVALID_VALUE;
        }
        // SAFETY: a module image given to gpusim is a NUL-terminated text.
        let text = unsafe { std::ffi::CStr::from_ptr(image as *const c_char) }.to_string_lossy();
        let Some(functions) = parse_module(&text) else {
            return 200; // CUDA_ERROR_INVALID_IMAGE
        };
        let mut dev = device::lock();
        let first = dev.functions.len();
        let indices = (first..first + functions.len()).collect();
        dev.functions.extend(functions);
        dev.modules.push(indices);
        // SAFETY: non-null out-pointer; module handles are 1-based indices.
        unsafe { *module = dev.modules.len() as Handle };
        let correlation_id = dev.next_correlation_id();
        dev.push_api("cuModuleLoadData", cbid::CU_MODULE_LOAD_DATA, start, correlation_id);
        CUDA_SUCCESS
    })
}

/// `CUresult cuModuleGetFunction(CUfunction *hfunc, CUmodule hmod, const char *name)`.
#[no_mangle]
pub extern "C" fn cuModuleGetFunction(hfunc: *mut Handle, hmod: Handle, name: *const c_char) -> CuResult {
    checked(|| {
        // SAFETY: the caller passes a NUL-terminated name or null.
        let Some(wanted) = (unsafe { gpusim_core::ffi::c_str(name) }) else {
            return CUDA_ERROR_INVALID_VALUE;
        };
        if hfunc.is_null() {
            return CUDA_ERROR_INVALID_VALUE;
        }
        let dev = device::lock();
        let Some(indices) = (hmod as usize).checked_sub(1).and_then(|i| dev.modules.get(i)) else {
            return CUDA_ERROR_INVALID_HANDLE;
        };
        let found = indices.iter().find(|&&i| dev.functions[i].name.to_bytes() == wanted.as_bytes());
        match found {
            Some(&index) => {
                // SAFETY: non-null out-pointer; function handles are 1-based indices.
                unsafe { *hfunc = (index + 1) as Handle };
                CUDA_SUCCESS
            }
            None => CUDA_ERROR_NOT_FOUND,
        }
    })
}

/// `CUresult cuFuncGetName(const char **name, CUfunction hfunc)`.
#[no_mangle]
pub extern "C" fn cuFuncGetName(name: *mut *const c_char, hfunc: Handle) -> CuResult {
    checked(|| {
        if name.is_null() {
            return CUDA_ERROR_INVALID_VALUE;
        }
        let dev = device::lock();
        match (hfunc as usize).checked_sub(1).and_then(|i| dev.functions.get(i)) {
            Some(function) => {
                // SAFETY: the CString lives as long as the process (functions are never removed).
                unsafe { *name = function.name.as_ptr() };
                CUDA_SUCCESS
            }
            None => CUDA_ERROR_INVALID_HANDLE,
        }
    })
}

/// Grid, block and shared-memory sizes of one launch.
struct Shape {
    grid: [u32; 3],
    block: [u32; 3],
    shared_mem_bytes: u32,
}

/// `cuLaunchKernel_params` (generated_cuda_meta.h); also the layout of `cuLaunchKernel_ptsz_params`
/// and, without `extra`, of `cuLaunchCooperativeKernel_params`. Passed to the callback API.
#[repr(C)]
struct LaunchKernelParams {
    f: Handle,
    grid: [c_uint; 3],
    block: [c_uint; 3],
    shared_mem_bytes: c_uint,
    h_stream: Handle,
    kernel_params: *mut *mut c_void,
    extra: *mut *mut c_void,
}

/// `cuLaunchKernelEx_params` (generated_cuda_meta.h).
#[repr(C)]
struct LaunchKernelExParams {
    config: *const CuLaunchConfig,
    f: Handle,
    kernel_params: *mut *mut c_void,
    extra: *mut *mut c_void,
}

/// The one launch path: allocate the correlation id, report the API enter to a CUPTI
/// subscriber, burn the configured host CPU, place the kernel on the stream's timeline, log the
/// API call (named `api`) and report the exit. `params` is the entry point's params struct.
#[inline(never)]
fn launch(api: (&str, u32), hfunc: Handle, shape: Shape, stream: Handle, params: *const c_void) -> CuResult {
    checked(|| {
        let start = now_ns();
        let (correlation_id, symbol) = {
            let mut dev = device::lock();
            let symbol = (hfunc as usize).checked_sub(1).and_then(|i| dev.functions.get(i)).map(|f| f.name.as_ptr());
            (dev.next_correlation_id(), symbol)
        };
        let Some(symbol) = symbol else {
            return CUDA_ERROR_INVALID_HANDLE;
        };
        let call = hook::Call { cbid: api.1, name: api.0, symbol, params, correlation_id };
        hook::enter(&call);
        spin_for(config::get().launch_cpu_ns);
        let mut dev = device::lock();
        let Some(function) = (hfunc as usize).checked_sub(1).and_then(|i| dev.functions.get(i)) else {
            return CUDA_ERROR_INVALID_HANDLE;
        };
        let mut rec = SimRecord::new(RecordKind::Kernel);
        rec.set_name(&function.name.to_string_lossy());
        rec.flops = function.flops;
        rec.grid = shape.grid;
        rec.block = shape.block;
        rec.shared_mem_bytes = shape.shared_mem_bytes;
        rec.correlation_id = correlation_id;
        let duration_ns = (function.duration_ns as f64 * config::get().slowdown).round() as u64;
        dev.enqueue(rec, stream_id(stream), duration_ns);
        dev.push_api(api.0, api.1, start, correlation_id);
        drop(dev);
        hook::exit(&call, CUDA_SUCCESS);
        CUDA_SUCCESS
    })
}

/// Launch through a classic-signature entry point, with its params struct for the hook.
#[allow(clippy::too_many_arguments)]
fn launch_classic(
    api: (&str, u32),
    f: Handle,
    grid: [c_uint; 3],
    block: [c_uint; 3],
    shared_mem_bytes: c_uint,
    stream: Handle,
    kernel_params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CuResult {
    let params = LaunchKernelParams { f, grid, block, shared_mem_bytes, h_stream: stream, kernel_params, extra };
    let shape = Shape { grid, block, shared_mem_bytes };
    launch(api, f, shape, stream, &params as *const LaunchKernelParams as *const c_void)
}

/// `CUresult cuLaunchKernel(CUfunction f, unsigned gridDimX..Z, unsigned blockDimX..Z,
/// unsigned sharedMemBytes, CUstream hStream, void **kernelParams, void **extra)`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub extern "C" fn cuLaunchKernel(
    f: Handle,
    grid_x: c_uint,
    grid_y: c_uint,
    grid_z: c_uint,
    block_x: c_uint,
    block_y: c_uint,
    block_z: c_uint,
    shared_mem_bytes: c_uint,
    stream: Handle,
    kernel_params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CuResult {
    let api = ("cuLaunchKernel", cbid::CU_LAUNCH_KERNEL);
    let (grid, block) = ([grid_x, grid_y, grid_z], [block_x, block_y, block_z]);
    launch_classic(api, f, grid, block, shared_mem_bytes, stream, kernel_params, extra)
}

/// `cuLaunchKernel_ptsz`: the per-thread-default-stream variant (same signature).
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub extern "C" fn cuLaunchKernel_ptsz(
    f: Handle,
    grid_x: c_uint,
    grid_y: c_uint,
    grid_z: c_uint,
    block_x: c_uint,
    block_y: c_uint,
    block_z: c_uint,
    shared_mem_bytes: c_uint,
    stream: Handle,
    kernel_params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CuResult {
    let api = ("cuLaunchKernel_ptsz", cbid::CU_LAUNCH_KERNEL_PTSZ);
    let (grid, block) = ([grid_x, grid_y, grid_z], [block_x, block_y, block_z]);
    launch_classic(api, f, grid, block, shared_mem_bytes, stream, kernel_params, extra)
}

/// `cuLaunchCooperativeKernel`: same signature as `cuLaunchKernel` minus `extra`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub extern "C" fn cuLaunchCooperativeKernel(
    f: Handle,
    grid_x: c_uint,
    grid_y: c_uint,
    grid_z: c_uint,
    block_x: c_uint,
    block_y: c_uint,
    block_z: c_uint,
    shared_mem_bytes: c_uint,
    stream: Handle,
    kernel_params: *mut *mut c_void,
) -> CuResult {
    let api = ("cuLaunchCooperativeKernel", cbid::CU_LAUNCH_COOPERATIVE_KERNEL);
    let (grid, block) = ([grid_x, grid_y, grid_z], [block_x, block_y, block_z]);
    launch_classic(api, f, grid, block, shared_mem_bytes, stream, kernel_params, std::ptr::null_mut())
}

fn launch_ex(
    api: (&str, u32),
    config: *const CuLaunchConfig,
    f: Handle,
    kernel_params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CuResult {
    if config.is_null() {
        return CUDA_ERROR_INVALID_VALUE;
    }
    // SAFETY: non-null pointer to a CUlaunchConfig from the caller.
    let c = unsafe { &*config };
    let shape = Shape {
        grid: [c.grid_dim_x, c.grid_dim_y, c.grid_dim_z],
        block: [c.block_dim_x, c.block_dim_y, c.block_dim_z],
        shared_mem_bytes: c.shared_mem_bytes,
    };
    let params = LaunchKernelExParams { config, f, kernel_params, extra };
    launch(api, f, shape, c.h_stream, &params as *const LaunchKernelExParams as *const c_void)
}

/// `CUresult cuLaunchKernelEx(const CUlaunchConfig *config, CUfunction f, void **kernelParams,
/// void **extra)`.
#[no_mangle]
pub extern "C" fn cuLaunchKernelEx(
    config: *const CuLaunchConfig,
    f: Handle,
    kernel_params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CuResult {
    launch_ex(("cuLaunchKernelEx", cbid::CU_LAUNCH_KERNEL_EX), config, f, kernel_params, extra)
}

/// `cuLaunchKernelEx_ptsz`.
#[no_mangle]
pub extern "C" fn cuLaunchKernelEx_ptsz(
    config: *const CuLaunchConfig,
    f: Handle,
    kernel_params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CuResult {
    launch_ex(("cuLaunchKernelEx_ptsz", cbid::CU_LAUNCH_KERNEL_EX_PTSZ), config, f, kernel_params, extra)
}

/// `CUresult cuGraphLaunch(CUgraphExec hGraphExec, CUstream hStream)`: any non-null executable
/// graph runs as one kernel of `GPUSIM_GRAPH_NS` (gpusim has no graph capture).
#[no_mangle]
pub extern "C" fn cuGraphLaunch(graph_exec: Handle, stream: Handle) -> CuResult {
    checked(|| {
        let start = now_ns();
        if graph_exec.is_null() {
            return CUDA_ERROR_INVALID_VALUE;
        }
        spin_for(config::get().launch_cpu_ns);
        let mut rec = SimRecord::new(RecordKind::Kernel);
        rec.set_name("gpusim_graph");
        let mut dev = device::lock();
        let correlation_id = dev.enqueue(rec, stream_id(stream), config::get().graph_ns);
        dev.push_api("cuGraphLaunch", cbid::CU_GRAPH_LAUNCH, start, correlation_id);
        CUDA_SUCCESS
    })
}

/// `CUresult cuStreamCreate(CUstream *phStream, unsigned int Flags)`.
#[no_mangle]
pub extern "C" fn cuStreamCreate(ph_stream: *mut Handle, _flags: c_uint) -> CuResult {
    checked(|| {
        if ph_stream.is_null() {
            return CUDA_ERROR_INVALID_VALUE;
        }
        let mut dev = device::lock();
        dev.last_stream_id += 1;
        let id = dev.last_stream_id;
        dev.stream_free_ns.insert(id, 0);
        // SAFETY: non-null out-pointer.
        unsafe { *ph_stream = (STREAM_HANDLE_BASE + id as usize) as Handle };
        CUDA_SUCCESS
    })
}

fn stream_destroy(stream: Handle) -> CuResult {
    checked(|| {
        if (stream as usize) <= STREAM_HANDLE_BASE {
            return CUDA_ERROR_INVALID_HANDLE;
        }
        // Pending work still completes (as in CUDA), so the stream's free time is kept.
        CUDA_SUCCESS
    })
}

/// `CUresult cuStreamDestroy(CUstream hStream)`.
#[no_mangle]
pub extern "C" fn cuStreamDestroy(stream: Handle) -> CuResult {
    stream_destroy(stream)
}

/// `cuStreamDestroy_v2`, what `cuStreamDestroy` compiles to.
#[no_mangle]
pub extern "C" fn cuStreamDestroy_v2(stream: Handle) -> CuResult {
    stream_destroy(stream)
}

fn stream_synchronize(stream: Handle, api: &str) -> CuResult {
    checked(|| {
        let id = stream_id(stream);
        let deadline = device::lock().stream_free_ns.get(&id).copied().unwrap_or(0);
        device::wait_until(deadline, 3, id, (api, cbid::CU_STREAM_SYNCHRONIZE));
        CUDA_SUCCESS
    })
}

/// `CUresult cuStreamSynchronize(CUstream hStream)`: really blocks until the stream drains.
#[no_mangle]
pub extern "C" fn cuStreamSynchronize(stream: Handle) -> CuResult {
    stream_synchronize(stream, "cuStreamSynchronize")
}

/// `cuStreamSynchronize_ptsz`.
#[no_mangle]
pub extern "C" fn cuStreamSynchronize_ptsz(stream: Handle) -> CuResult {
    stream_synchronize(stream, "cuStreamSynchronize_ptsz")
}

/// `CUresult cuStreamWaitEvent(CUstream hStream, CUevent hEvent, unsigned int Flags)`: later work
/// on the stream starts no earlier than the event completes.
#[no_mangle]
pub extern "C" fn cuStreamWaitEvent(stream: Handle, event: Handle, _flags: c_uint) -> CuResult {
    checked(|| {
        let start = now_ns();
        let mut dev = device::lock();
        let Some(recorded) = dev.events.get(&(event as usize)).copied() else {
            return CUDA_ERROR_INVALID_HANDLE;
        };
        let free = dev.stream_free_ns.entry(stream_id(stream)).or_insert(0);
        *free = (*free).max(recorded.unwrap_or(0));
        let correlation_id = dev.next_correlation_id();
        dev.push_api("cuStreamWaitEvent", cbid::CU_STREAM_WAIT_EVENT, start, correlation_id);
        CUDA_SUCCESS
    })
}

/// `CUresult cuEventCreate(CUevent *phEvent, unsigned int Flags)`.
#[no_mangle]
pub extern "C" fn cuEventCreate(ph_event: *mut Handle, _flags: c_uint) -> CuResult {
    checked(|| {
        if ph_event.is_null() {
            return CUDA_ERROR_INVALID_VALUE;
        }
        let mut dev = device::lock();
        dev.last_event += 1;
        let handle = 0xE0_0000 + dev.last_event;
        dev.events.insert(handle, None);
        // SAFETY: non-null out-pointer.
        unsafe { *ph_event = handle as Handle };
        CUDA_SUCCESS
    })
}

fn event_destroy(event: Handle) -> CuResult {
    checked(|| match device::lock().events.remove(&(event as usize)) {
        Some(_) => CUDA_SUCCESS,
        None => CUDA_ERROR_INVALID_HANDLE,
    })
}

/// `CUresult cuEventDestroy(CUevent hEvent)`.
#[no_mangle]
pub extern "C" fn cuEventDestroy(event: Handle) -> CuResult {
    event_destroy(event)
}

/// `cuEventDestroy_v2`, what `cuEventDestroy` compiles to.
#[no_mangle]
pub extern "C" fn cuEventDestroy_v2(event: Handle) -> CuResult {
    event_destroy(event)
}

/// `CUresult cuEventRecord(CUevent hEvent, CUstream hStream)`: the event completes when the
/// stream reaches it.
#[no_mangle]
pub extern "C" fn cuEventRecord(event: Handle, stream: Handle) -> CuResult {
    checked(|| {
        let start = now_ns();
        let mut dev = device::lock();
        let id = stream_id(stream);
        let at = dev.stream_free_ns.get(&id).copied().unwrap_or(0).max(start);
        match dev.events.get_mut(&(event as usize)) {
            Some(slot) => *slot = Some(at),
            None => return CUDA_ERROR_INVALID_HANDLE,
        }
        let correlation_id = dev.next_correlation_id();
        dev.push_api("cuEventRecord", cbid::CU_EVENT_RECORD, start, correlation_id);
        CUDA_SUCCESS
    })
}

/// `CUresult cuEventSynchronize(CUevent hEvent)`: really blocks until the event completes.
#[no_mangle]
pub extern "C" fn cuEventSynchronize(event: Handle) -> CuResult {
    checked(|| {
        let Some(recorded) = device::lock().events.get(&(event as usize)).copied() else {
            return CUDA_ERROR_INVALID_HANDLE;
        };
        let api = ("cuEventSynchronize", cbid::CU_EVENT_SYNCHRONIZE);
        device::wait_until(recorded.unwrap_or(0), 1, 0, api);
        CUDA_SUCCESS
    })
}

fn elapsed(ms: *mut f32, start: Handle, end: Handle) -> CuResult {
    checked(|| {
        if ms.is_null() {
            return CUDA_ERROR_INVALID_VALUE;
        }
        let dev = device::lock();
        let (Some(a), Some(b)) = (dev.events.get(&(start as usize)).copied(), dev.events.get(&(end as usize)).copied())
        else {
            return CUDA_ERROR_INVALID_HANDLE;
        };
        let (Some(a), Some(b)) = (a, b) else {
            return CUDA_ERROR_INVALID_HANDLE;
        };
        if a.max(b) > now_ns() {
            return CUDA_ERROR_NOT_READY;
        }
        // SAFETY: non-null out-pointer.
        unsafe { *ms = (b as f64 - a as f64) as f32 / 1e6 };
        CUDA_SUCCESS
    })
}

/// `CUresult cuEventElapsedTime(float *pMilliseconds, CUevent hStart, CUevent hEnd)`.
#[no_mangle]
pub extern "C" fn cuEventElapsedTime(ms: *mut f32, start: Handle, end: Handle) -> CuResult {
    elapsed(ms, start, end)
}

/// `cuEventElapsedTime_v2` (CUDA 12.8+).
#[no_mangle]
pub extern "C" fn cuEventElapsedTime_v2(ms: *mut f32, start: Handle, end: Handle) -> CuResult {
    elapsed(ms, start, end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_text_defines_kernels() {
        let fs = parse_module("gpusim-module v1\n# comment\ngemm 1500 3000000\nrelu 20\n").expect("valid module");
        assert_eq!(fs.len(), 2);
        assert_eq!((fs[0].duration_ns, fs[0].flops), (1500, 3_000_000));
        assert_eq!((fs[1].duration_ns, fs[1].flops), (20, 0));
        assert!(parse_module("\x7fELF").is_none());
    }
}
