//! Kernel launches through the driver entry points a scenario names (`launch_apis`), found with
//! `cuGetProcAddress_v2` as the CUDA runtime finds them: `_ptsz` variants are requested by base
//! name with the per-thread-default-stream flag. Launches rotate over the named entry points,
//! so a run exercises every probe site.

use std::ffi::{c_void, CString};

use crate::driver::{check, Cuda};

type Handle = *mut c_void;
type ClassicFn =
    unsafe extern "C" fn(Handle, u32, u32, u32, u32, u32, u32, u32, Handle, *mut *mut c_void, *mut *mut c_void) -> i32;
type CooperativeFn = unsafe extern "C" fn(Handle, u32, u32, u32, u32, u32, u32, u32, Handle, *mut *mut c_void) -> i32;
type ExFn = unsafe extern "C" fn(*const LaunchConfig, Handle, *mut *mut c_void, *mut *mut c_void) -> i32;

/// `CUlaunchConfig` (cuda.h).
#[repr(C)]
struct LaunchConfig {
    grid: [u32; 3],
    block: [u32; 3],
    shared_mem_bytes: u32,
    stream: Handle,
    attrs: *mut c_void,
    num_attrs: u32,
}

/// `CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM`.
const PER_THREAD_DEFAULT_STREAM: u64 = 1 << 1;

enum Entry {
    Classic(ClassicFn),
    Cooperative(CooperativeFn),
    Ex(ExFn),
}

/// The resolved entry points and the rotation position.
pub struct Launchers {
    entries: Vec<(String, Entry)>,
    next: usize,
}

/// Entry points a scenario may name: (name, base symbol to request, flags, kind).
const KNOWN: [(&str, &str, u64, u8); 5] = [
    ("cuLaunchKernel", "cuLaunchKernel", 0, 0),
    ("cuLaunchKernel_ptsz", "cuLaunchKernel", PER_THREAD_DEFAULT_STREAM, 0),
    ("cuLaunchCooperativeKernel", "cuLaunchCooperativeKernel", 0, 1),
    ("cuLaunchKernelEx", "cuLaunchKernelEx", 0, 2),
    ("cuLaunchKernelEx_ptsz", "cuLaunchKernelEx", PER_THREAD_DEFAULT_STREAM, 2),
];

impl Launchers {
    /// Resolve `names` (empty = `cuLaunchKernel`).
    pub fn resolve(cuda: &Cuda, names: &[String]) -> Result<Self, String> {
        let default = ["cuLaunchKernel".to_string()];
        let names = if names.is_empty() { &default[..] } else { names };
        let mut entries = Vec::new();
        for name in names {
            let Some(&(_, base, flags, kind)) = KNOWN.iter().find(|k| k.0 == name) else {
                let known: Vec<&str> = KNOWN.iter().map(|k| k.0).collect();
                return Err(format!("launch_apis: unknown entry point {name:?} (known: {})", known.join(", ")));
            };
            let symbol = CString::new(base).map_err(|e| e.to_string())?;
            let mut pfn: *mut c_void = std::ptr::null_mut();
            let mut status = 0i32;
            // SAFETY: cuGetProcAddress_v2 with valid out-pointers; the returned pointer is the
            // named entry point with the signature of cuda.h.
            let entry = unsafe {
                check(
                    &format!("cuGetProcAddress({base}, flags {flags})"),
                    (cuda.get_proc_address)(symbol.as_ptr(), &mut pfn, 12090, flags, &mut status),
                )?;
                match kind {
                    0 => Entry::Classic(std::mem::transmute::<*mut c_void, ClassicFn>(pfn)),
                    1 => Entry::Cooperative(std::mem::transmute::<*mut c_void, CooperativeFn>(pfn)),
                    _ => Entry::Ex(std::mem::transmute::<*mut c_void, ExFn>(pfn)),
                }
            };
            entries.push((name.clone(), entry));
        }
        Ok(Self { entries, next: 0 })
    }

    /// Launch `function` on `stream` through the next entry point of the rotation.
    pub fn launch(&mut self, function: Handle, stream: Handle) -> Result<(), String> {
        let (name, entry) = &self.entries[self.next % self.entries.len()];
        self.next += 1;
        let (grid, block) = ([132, 1, 1], [256, 1, 1]);
        let null = std::ptr::null_mut();
        // SAFETY: entry points resolved by the driver; null kernelParams/extra are allowed for
        // kernels without parameters.
        let rc = unsafe {
            match entry {
                Entry::Classic(f) => {
                    f(function, grid[0], grid[1], grid[2], block[0], block[1], block[2], 0, stream, null, null)
                }
                Entry::Cooperative(f) => {
                    f(function, grid[0], grid[1], grid[2], block[0], block[1], block[2], 0, stream, null)
                }
                Entry::Ex(f) => {
                    let config = LaunchConfig {
                        grid,
                        block,
                        shared_mem_bytes: 0,
                        stream,
                        attrs: null as *mut c_void,
                        num_attrs: 0,
                    };
                    f(&config, function, null, null)
                }
            }
        };
        check(name, rc)
    }
}
