//! Memory entry points. Device memory is not backed (pointers are fake addresses); copies and
//! memsets take `bytes / GPUSIM_MEMCPY_BYTES_PER_S` on the timeline, and the synchronous forms
//! really block the caller until the copy is done, as the legacy default stream does.

use std::ffi::c_void;

use gpusim_core::abi::cbid;
use gpusim_core::clock::{now_ns, sleep_until};
use gpusim_core::record::{RecordKind, SimRecord, COPY_DTOH, COPY_HTOD};

use crate::api_init::checked;
use crate::types::*;
use crate::{config, device, hook};

/// Fixed cost of any copy on top of the bandwidth term (DMA setup).
const COPY_SETUP_NS: u64 = 2_000;

fn copy_duration_ns(bytes: usize) -> u64 {
    COPY_SETUP_NS + (bytes as f64 / config::get().memcpy_bytes_per_s * 1e9) as u64
}

fn mem_alloc(dptr: *mut CuDevicePtr, bytes: usize) -> CuResult {
    checked(|| {
        if dptr.is_null() || bytes == 0 {
            return CUDA_ERROR_INVALID_VALUE;
        }
        let mut dev = device::lock();
        let ptr = dev.next_device_ptr;
        // 512-byte alignment, as cudaMalloc guarantees at least 256.
        dev.next_device_ptr += (bytes as u64).div_ceil(512) * 512;
        dev.allocations.insert(ptr, bytes);
        // SAFETY: non-null out-pointer.
        unsafe { *dptr = ptr };
        CUDA_SUCCESS
    })
}

/// `CUresult cuMemAlloc(CUdeviceptr *dptr, size_t bytesize)`.
#[no_mangle]
pub extern "C" fn cuMemAlloc(dptr: *mut CuDevicePtr, bytes: usize) -> CuResult {
    mem_alloc(dptr, bytes)
}

/// `cuMemAlloc_v2`, what `cuMemAlloc` compiles to.
#[no_mangle]
pub extern "C" fn cuMemAlloc_v2(dptr: *mut CuDevicePtr, bytes: usize) -> CuResult {
    mem_alloc(dptr, bytes)
}

fn mem_free(dptr: CuDevicePtr) -> CuResult {
    checked(|| match device::lock().allocations.remove(&dptr) {
        Some(_) => CUDA_SUCCESS,
        None => CUDA_ERROR_INVALID_VALUE,
    })
}

/// `CUresult cuMemFree(CUdeviceptr dptr)`.
#[no_mangle]
pub extern "C" fn cuMemFree(dptr: CuDevicePtr) -> CuResult {
    mem_free(dptr)
}

/// `cuMemFree_v2`, what `cuMemFree` compiles to.
#[no_mangle]
pub extern "C" fn cuMemFree_v2(dptr: CuDevicePtr) -> CuResult {
    mem_free(dptr)
}

/// Enqueue a copy (or memset when `kind` is Memset) and, when `blocking`, wait for it.
fn copy(api: (&str, u32), kind: RecordKind, copy_kind: u32, bytes: usize, stream: Option<Handle>) -> CuResult {
    checked(|| {
        let start = now_ns();
        let correlation_id = device::lock().next_correlation_id();
        let call =
            hook::Call { cbid: api.1, name: api.0, symbol: std::ptr::null(), params: std::ptr::null(), correlation_id };
        hook::enter(&call);
        let mut rec = SimRecord::new(kind);
        rec.set_name(api.0);
        rec.copy_kind = copy_kind;
        rec.bytes = bytes as u64;
        rec.correlation_id = correlation_id;
        let mut dev = device::lock();
        let end_ns = match stream {
            Some(handle) => {
                dev.enqueue(rec, stream_id(handle), copy_duration_ns(bytes));
                0
            }
            None => {
                // Synchronous copies wait for all prior work (legacy default stream).
                let after = dev.all_streams_free_ns();
                let free = dev.stream_free_ns.entry(0).or_insert(0);
                *free = (*free).max(after);
                dev.enqueue(rec, 0, copy_duration_ns(bytes));
                dev.stream_free_ns.get(&0).copied().unwrap_or(0)
            }
        };
        drop(dev);
        // Synchronous forms really block until the copy is done (end_ns is 0 for async ones).
        sleep_until(end_ns);
        device::lock().push_api(api.0, api.1, start, correlation_id);
        hook::exit(&call, CUDA_SUCCESS);
        CUDA_SUCCESS
    })
}

/// `CUresult cuMemcpyHtoD(CUdeviceptr dstDevice, const void *srcHost, size_t ByteCount)`.
#[no_mangle]
pub extern "C" fn cuMemcpyHtoD(_dst: CuDevicePtr, _src: *const c_void, bytes: usize) -> CuResult {
    copy(("cuMemcpyHtoD", cbid::CU_MEMCPY_HTOD_V2), RecordKind::Memcpy, COPY_HTOD, bytes, None)
}

/// `cuMemcpyHtoD_v2`, what `cuMemcpyHtoD` compiles to.
#[no_mangle]
pub extern "C" fn cuMemcpyHtoD_v2(_dst: CuDevicePtr, _src: *const c_void, bytes: usize) -> CuResult {
    copy(("cuMemcpyHtoD_v2", cbid::CU_MEMCPY_HTOD_V2), RecordKind::Memcpy, COPY_HTOD, bytes, None)
}

/// `CUresult cuMemcpyDtoH(void *dstHost, CUdeviceptr srcDevice, size_t ByteCount)`.
#[no_mangle]
pub extern "C" fn cuMemcpyDtoH(_dst: *mut c_void, _src: CuDevicePtr, bytes: usize) -> CuResult {
    copy(("cuMemcpyDtoH", cbid::CU_MEMCPY_DTOH_V2), RecordKind::Memcpy, COPY_DTOH, bytes, None)
}

/// `cuMemcpyDtoH_v2`, what `cuMemcpyDtoH` compiles to.
#[no_mangle]
pub extern "C" fn cuMemcpyDtoH_v2(_dst: *mut c_void, _src: CuDevicePtr, bytes: usize) -> CuResult {
    copy(("cuMemcpyDtoH_v2", cbid::CU_MEMCPY_DTOH_V2), RecordKind::Memcpy, COPY_DTOH, bytes, None)
}

/// `CUresult cuMemcpyHtoDAsync(CUdeviceptr, const void *, size_t, CUstream)`.
#[no_mangle]
pub extern "C" fn cuMemcpyHtoDAsync(_dst: CuDevicePtr, _src: *const c_void, bytes: usize, stream: Handle) -> CuResult {
    let api = ("cuMemcpyHtoDAsync", cbid::CU_MEMCPY_HTOD_ASYNC_V2);
    copy(api, RecordKind::Memcpy, COPY_HTOD, bytes, Some(stream))
}

/// `cuMemcpyHtoDAsync_v2`, what `cuMemcpyHtoDAsync` compiles to.
#[no_mangle]
pub extern "C" fn cuMemcpyHtoDAsync_v2(
    _dst: CuDevicePtr,
    _src: *const c_void,
    bytes: usize,
    stream: Handle,
) -> CuResult {
    let api = ("cuMemcpyHtoDAsync_v2", cbid::CU_MEMCPY_HTOD_ASYNC_V2);
    copy(api, RecordKind::Memcpy, COPY_HTOD, bytes, Some(stream))
}

/// `CUresult cuMemcpyDtoHAsync(void *, CUdeviceptr, size_t, CUstream)`.
#[no_mangle]
pub extern "C" fn cuMemcpyDtoHAsync(_dst: *mut c_void, _src: CuDevicePtr, bytes: usize, stream: Handle) -> CuResult {
    let api = ("cuMemcpyDtoHAsync", cbid::CU_MEMCPY_DTOH_ASYNC_V2);
    copy(api, RecordKind::Memcpy, COPY_DTOH, bytes, Some(stream))
}

/// `cuMemcpyDtoHAsync_v2`, what `cuMemcpyDtoHAsync` compiles to.
#[no_mangle]
pub extern "C" fn cuMemcpyDtoHAsync_v2(_dst: *mut c_void, _src: CuDevicePtr, bytes: usize, stream: Handle) -> CuResult {
    let api = ("cuMemcpyDtoHAsync_v2", cbid::CU_MEMCPY_DTOH_ASYNC_V2);
    copy(api, RecordKind::Memcpy, COPY_DTOH, bytes, Some(stream))
}

/// `CUresult cuMemsetD8Async(CUdeviceptr dstDevice, unsigned char uc, size_t N, CUstream)`.
#[no_mangle]
pub extern "C" fn cuMemsetD8Async(_dst: CuDevicePtr, _value: u8, n: usize, stream: Handle) -> CuResult {
    // cbid 0: gpusim does not tag memset API records (no collector consumer yet).
    copy(("cuMemsetD8Async", 0), RecordKind::Memset, 0, n, Some(stream))
}
