//! The CUDA driver and NCCL as a real job sees them: `dlopen("libcuda.so.1")` and
//! `dlopen("libnccl.so.2")` by soname, resolved through LD_LIBRARY_PATH (set by the launcher to
//! the staged library directory), then `dlsym` of each entry point. A uprobe on the staged
//! library file therefore sees every call.

use std::ffi::{c_char, c_void, CString};

use gpusim_core::record::SimRecord;

type Handle = *mut c_void;

/// Resolve `name` in `lib` or explain what is missing.
fn sym(lib: Handle, lib_name: &str, name: &str) -> Result<*mut c_void, String> {
    let c_name = CString::new(name).map_err(|e| e.to_string())?;
    // SAFETY: valid handle and C string.
    let ptr = unsafe { libc::dlsym(lib, c_name.as_ptr()) };
    if ptr.is_null() {
        Err(format!("{lib_name} has no symbol {name}: is it gpusim's library?"))
    } else {
        Ok(ptr)
    }
}

fn open(name: &str) -> Result<Handle, String> {
    let c_name = CString::new(name).map_err(|e| e.to_string())?;
    // SAFETY: dlopen with a valid C string. RTLD_GLOBAL so that libnccl and an injected CUPTI
    // find libcuda's private gpusim_* symbols, as in a real process.
    let handle = unsafe { libc::dlopen(c_name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if handle.is_null() {
        // SAFETY: dlerror returns a static, NUL-terminated message or null.
        let why = unsafe { gpusim_core::ffi::c_str(libc::dlerror()) }.unwrap_or_default();
        Err(format!(
            "cannot load {name} ({why}): run through `gpusim-train` (which stages the libraries) or set LD_LIBRARY_PATH to a dir made by `gpusim-train stage`"
        ))
    } else {
        Ok(handle)
    }
}

macro_rules! api_table {
    ($table:ident, $lib:literal, { $($field:ident : $name:literal => fn($($arg:ty),*) -> $ret:ty;)* }) => {
        /// Entry points resolved from the library.
        pub struct $table {
            $(
                #[doc = $name]
                pub $field: unsafe extern "C" fn($($arg),*) -> $ret,
            )*
        }

        impl $table {
            /// Load the library by soname and resolve every entry point.
            pub fn load() -> Result<Self, String> {
                let lib = open($lib)?;
                Ok(Self {
                    $(
                        // SAFETY: the symbol has the C signature declared in the table (from the
                        // real header).
                        $field: unsafe {
                            std::mem::transmute::<*mut c_void, unsafe extern "C" fn($($arg),*) -> $ret>(
                                sym(lib, $lib, $name)?,
                            )
                        },
                    )*
                })
            }
        }
    };
}

api_table!(Cuda, "libcuda.so.1", {
    init: "cuInit" => fn(u32) -> i32;
    device_get: "cuDeviceGet" => fn(*mut i32, i32) -> i32;
    primary_ctx_retain: "cuDevicePrimaryCtxRetain" => fn(*mut Handle, i32) -> i32;
    ctx_set_current: "cuCtxSetCurrent" => fn(Handle) -> i32;
    ctx_synchronize: "cuCtxSynchronize" => fn() -> i32;
    module_load_data: "cuModuleLoadData" => fn(*mut Handle, *const c_void) -> i32;
    module_get_function: "cuModuleGetFunction" => fn(*mut Handle, Handle, *const c_char) -> i32;
    stream_create: "cuStreamCreate" => fn(*mut Handle, u32) -> i32;
    stream_synchronize: "cuStreamSynchronize" => fn(Handle) -> i32;
    get_proc_address: "cuGetProcAddress_v2" => fn(*const c_char, *mut *mut c_void, i32, u64, *mut i32) -> i32;
    mem_alloc: "cuMemAlloc_v2" => fn(*mut u64, usize) -> i32;
    memcpy_htod_async: "cuMemcpyHtoDAsync_v2" => fn(u64, *const c_void, usize, Handle) -> i32;
    memcpy_dtoh: "cuMemcpyDtoH_v2" => fn(*mut c_void, u64, usize) -> i32;
    record_count: "gpusim_record_count" => fn() -> u64;
    read_records: "gpusim_read_records" => fn(u64, *mut SimRecord, u64) -> u64;
    push_host: "gpusim_push_host" => fn(*const SimRecord) -> ();
    cupti_attached: "gpusim_cupti_attached" => fn(*mut u64, u64) -> u64;
});

/// `ncclUniqueId`: `struct { char internal[128]; }`, passed by value to `ncclCommInitRank`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct UniqueId {
    /// Opaque bytes (gpusim: the shm segment name).
    pub internal: [u8; 128],
}

api_table!(Nccl, "libnccl.so.2", {
    get_unique_id: "ncclGetUniqueId" => fn(*mut UniqueId) -> i32;
    comm_init_rank: "ncclCommInitRank" => fn(*mut Handle, i32, UniqueId, i32) -> i32;
    all_reduce: "ncclAllReduce" => fn(*const c_void, *mut c_void, usize, i32, i32, Handle, Handle) -> i32;
    comm_destroy: "ncclCommDestroy" => fn(Handle) -> i32;
});

/// Turn a CUDA/NCCL status into an error naming the call.
pub fn check(what: &str, rc: i32) -> Result<(), String> {
    if rc == 0 {
        Ok(())
    } else {
        Err(format!("{what} failed with status {rc}"))
    }
}

impl Cuda {
    /// The spans CUPTI was attached to this process so far (libcuda's record of its hook).
    pub fn cupti_attached(&self) -> Vec<crate::truth::CuptiAttached> {
        // SAFETY: valid entry point; the buffer holds `cap` triples.
        unsafe {
            let n = (self.cupti_attached)(std::ptr::null_mut(), 0);
            let cap = n.min(4096);
            let mut out = vec![0u64; 3 * cap as usize];
            let n = (self.cupti_attached)(out.as_mut_ptr(), cap).min(cap);
            out.chunks_exact(3)
                .take(n as usize)
                .map(|t| crate::truth::CuptiAttached {
                    start_ns: t[0],
                    end_ns: (t[1] != 0).then_some(t[1]),
                    api_calls: t[2],
                })
                .collect()
        }
    }

    /// Every record the simulated device logged so far.
    pub fn records(&self) -> Vec<SimRecord> {
        // SAFETY: valid entry points; the buffer has room for `count` records.
        unsafe {
            let count = (self.record_count)();
            let mut out = vec![SimRecord::new(gpusim_core::record::RecordKind::Api); count as usize];
            let n = (self.read_records)(0, out.as_mut_ptr(), count);
            out.truncate(n as usize);
            out
        }
    }
}
