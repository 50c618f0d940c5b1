//! C types and result codes of `cuda.h` that the entry points use.

use std::ffi::c_void;

/// `CUresult`.
pub type CuResult = i32;
/// `CUDA_SUCCESS`
pub const CUDA_SUCCESS: CuResult = 0;
/// `CUDA_ERROR_INVALID_VALUE`
pub const CUDA_ERROR_INVALID_VALUE: CuResult = 1;
/// `CUDA_ERROR_NOT_INITIALIZED`
pub const CUDA_ERROR_NOT_INITIALIZED: CuResult = 3;
/// `CUDA_ERROR_INVALID_DEVICE`
pub const CUDA_ERROR_INVALID_DEVICE: CuResult = 101;
/// `CUDA_ERROR_INVALID_HANDLE`
pub const CUDA_ERROR_INVALID_HANDLE: CuResult = 400;
/// `CUDA_ERROR_NOT_FOUND`
pub const CUDA_ERROR_NOT_FOUND: CuResult = 500;
/// `CUDA_ERROR_NOT_READY`
pub const CUDA_ERROR_NOT_READY: CuResult = 600;
/// `CUDA_ERROR_UNKNOWN` (also what a caught panic returns)
pub const CUDA_ERROR_UNKNOWN: CuResult = 999;

/// `CUdevice`.
pub type CuDevice = i32;
/// Opaque handles (`CUcontext`, `CUstream`, `CUevent`, `CUmodule`, `CUfunction`, `CUgraphExec`).
pub type Handle = *mut c_void;
/// `CUdeviceptr` (64-bit).
pub type CuDevicePtr = u64;

/// `CU_STREAM_LEGACY` and `CU_STREAM_PER_THREAD` special handles map to the NULL stream here.
pub fn stream_id(handle: Handle) -> u32 {
    match handle as usize {
        0..=2 => 0,
        id => (id - STREAM_HANDLE_BASE) as u32,
    }
}

/// Stream handles are `STREAM_HANDLE_BASE + id` so that they never collide with the special
/// values 0, 1 and 2.
pub const STREAM_HANDLE_BASE: usize = 0x5_0000;

/// `CUlaunchConfig` (cuda.h, CUDA 12.x).
#[repr(C)]
pub struct CuLaunchConfig {
    /// grid x
    pub grid_dim_x: u32,
    /// grid y
    pub grid_dim_y: u32,
    /// grid z
    pub grid_dim_z: u32,
    /// block x
    pub block_dim_x: u32,
    /// block y
    pub block_dim_y: u32,
    /// block z
    pub block_dim_z: u32,
    /// dynamic shared memory
    pub shared_mem_bytes: u32,
    /// stream
    pub h_stream: Handle,
    /// attributes (ignored)
    pub attrs: *mut c_void,
    /// number of attributes
    pub num_attrs: u32,
}
