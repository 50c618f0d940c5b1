//! One rank of the workload: a process that initializes CUDA and NCCL through the staged
//! libraries and runs the scenario's steps. Host-side waits it causes itself (data loader,
//! checkpoint I/O) are measured with the real clock and logged as host-stall records, so the
//! ground truth contains what really happened, scheduling noise included.

use std::ffi::{c_void, CString};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use gpusim_core::clock::{now_ns, spin_for};
use gpusim_core::record::{RecordKind, SimRecord};

use crate::driver::{check, Cuda, Nccl, UniqueId};
use crate::launch::Launchers;
use crate::scenario::{KernelSpec, Scenario};
use crate::truth::{self, RunInfo};

/// What a rank needs to know.
pub struct RankConfig {
    /// The scenario.
    pub scenario: Scenario,
    /// This rank.
    pub rank: u32,
    /// All ranks.
    pub ranks: u32,
    /// Steps to run.
    pub steps: u32,
    /// Run directory: NCCL id exchange, checkpoints, scratch input.
    pub run_dir: PathBuf,
    /// Where the ground truth goes.
    pub truth_path: PathBuf,
}

/// `ncclDataType_t` bf16 and `ncclRedOp_t` sum.
const NCCL_BF16: i32 = 9;
const NCCL_SUM: i32 = 0;

type Handle = *mut c_void;

struct Kernel {
    function: Handle,
    spec: KernelSpec,
}

/// Log a host interval of `kind` through libcuda.
fn push_host(cuda: &Cuda, kind: RecordKind, name: &str, start_ns: u64, end_ns: u64) {
    let mut rec = SimRecord::new(kind);
    rec.set_name(name);
    rec.start_ns = start_ns;
    rec.transfer_start_ns = start_ns;
    rec.enqueue_ns = start_ns;
    rec.end_ns = end_ns;
    // SAFETY: valid entry point and record.
    unsafe { (cuda.push_host)(&rec) };
}

/// Exchange the NCCL unique id through a file in the run directory (a FileStore): rank 0
/// creates it, the others wait for it.
fn unique_id(nccl: &Nccl, rank: u32, run_dir: &Path) -> Result<UniqueId, String> {
    let path = run_dir.join("nccl-unique-id");
    let mut id = UniqueId { internal: [0; 128] };
    if rank == 0 {
        // SAFETY: valid entry point and out-pointer.
        check("ncclGetUniqueId", unsafe { (nccl.get_unique_id)(&mut id) })?;
        let tmp = run_dir.join("nccl-unique-id.tmp");
        std::fs::write(&tmp, id.internal)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        return Ok(id);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(bytes) = std::fs::read(&path) {
            if bytes.len() == 128 {
                id.internal.copy_from_slice(&bytes);
                return Ok(id);
            }
        }
        if std::time::Instant::now() > deadline {
            return Err(format!("rank {rank}: rank 0 never wrote {}", path.display()));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Deterministic xorshift for the loader jitter.
fn next_random(state: &mut u64) -> f64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    (*state >> 11) as f64 / (1u64 << 53) as f64
}

/// Run the rank to completion and write its ground truth.
pub fn run(cfg: &RankConfig) -> Result<(), String> {
    let s = &cfg.scenario;
    let hold = std::env::var("GPUSIM_HOLD_CUPTI");
    if hold.as_deref() == Ok("1") {
        hold_cupti()?;
    }
    let shared = hold.as_deref() == Ok("shared");
    if shared {
        hold_cupti_shared()?;
    }
    let cuda = Cuda::load()?;
    // SAFETY (all unsafe blocks below): calls into the loaded libraries with pointers to live
    // locals, following the signatures of cuda.h / nccl.h.
    let mut ctx: Handle = std::ptr::null_mut();
    unsafe {
        check("cuInit", (cuda.init)(0))?;
        let mut device = 0;
        check("cuDeviceGet", (cuda.device_get)(&mut device, 0))?;
        check("cuDevicePrimaryCtxRetain", (cuda.primary_ctx_retain)(&mut ctx, device))?;
        check("cuCtxSetCurrent", (cuda.ctx_set_current)(ctx))?;
    }
    let image = CString::new(s.module_image()).map_err(|e| e.to_string())?;
    let mut module: Handle = std::ptr::null_mut();
    // SAFETY: see above.
    unsafe { check("cuModuleLoadData", (cuda.module_load_data)(&mut module, image.as_ptr() as *const c_void))? };
    // `GPUSIM_STARTUP_MS`: time between the context and the first launch, as a real job spends
    // loading its model and data (the default, 0, launches at once).
    if let Some(ms) = std::env::var("GPUSIM_STARTUP_MS").ok().and_then(|v| v.parse::<u64>().ok()) {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
    let resolve = |specs: &[KernelSpec]| -> Result<Vec<Kernel>, String> {
        specs
            .iter()
            .map(|spec| {
                let name = CString::new(spec.name.as_str()).map_err(|e| e.to_string())?;
                let mut function: Handle = std::ptr::null_mut();
                // SAFETY: see above.
                unsafe {
                    check(
                        &format!("cuModuleGetFunction({})", spec.name),
                        (cuda.module_get_function)(&mut function, module, name.as_ptr()),
                    )?
                };
                Ok(Kernel { function, spec: spec.clone() })
            })
            .collect()
    };
    let forward = resolve(&s.forward)?;
    let backward = resolve(&s.backward)?;
    let optimizer = resolve(&s.optimizer)?;
    let mut launchers = Launchers::resolve(&cuda, &s.launch_apis)?;
    let mut stream: Handle = std::ptr::null_mut();
    let mut input_ptr = 0u64;
    let mut grads_ptr = 0u64;
    // SAFETY: see above.
    unsafe {
        check("cuStreamCreate", (cuda.stream_create)(&mut stream, 0))?;
        check("cuMemAlloc", (cuda.mem_alloc)(&mut input_ptr, s.h2d_bytes.max(1) as usize))?;
        check("cuMemAlloc", (cuda.mem_alloc)(&mut grads_ptr, s.allreduce_bytes.max(1) as usize))?;
    }

    // `GPUSIM_PARK_MS` (park.rs): threads parked in blocking calls at a known time.
    let park_ms = crate::park::park_ms();
    let parked = match (park_ms, cfg.rank, forward.first()) {
        (Some(ms), 0, Some(k)) => Some(crate::park::start(ctx, k.function, k.spec.duration_us, ms)?),
        (Some(ms), _, _) => {
            std::thread::sleep(Duration::from_millis(ms));
            None
        }
        _ => None,
    };
    let mut nccl_comm: Option<(Nccl, Handle)> = None;
    let mut rendezvous = Ok(());
    if s.allreduce_bytes > 0 && cfg.ranks > 0 {
        let nccl = Nccl::load()?;
        let id = unique_id(&nccl, cfg.rank, &cfg.run_dir)?;
        let mut comm: Handle = std::ptr::null_mut();
        // SAFETY: see above.
        rendezvous = unsafe {
            check("ncclCommInitRank", (nccl.comm_init_rank)(&mut comm, cfg.ranks as i32, id, cfg.rank as i32))
        };
        rendezvous.clone()?;
        nccl_comm = Some((nccl, comm));
    }
    if let Some(p) = parked {
        println!("{}", p.finish(&rendezvous)?);
    }

    let input_file = prepare_input(cfg)?;
    let host_batch = vec![0u8; s.h2d_bytes as usize];
    let mut random_state = s.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (cfg.rank as u64 + 1);
    let mut checkpoint_bytes = 0u64;
    // Pinned-host-buffer analogue: allocated and touched before the window, as frameworks do,
    // so that a checkpoint's cost is the copy and the I/O, not page faults.
    let mut checkpoint_buffer = vec![1u8; s.checkpoint.as_ref().map_or(0, |c| c.bytes as usize)];
    let window_start_ns = now_ns();

    for step in 0..cfg.steps {
        let step_start = now_ns();
        // Data loader: a real blocking wait (and real reads), measured.
        let loader = &s.data_loader;
        if loader.sleep_ms > 0.0 || loader.read_bytes > 0 {
            let jitter = 1.0 + loader.jitter * (2.0 * next_random(&mut random_state) - 1.0);
            let t0 = now_ns();
            if loader.sleep_ms > 0.0 {
                std::thread::sleep(Duration::from_secs_f64(loader.sleep_ms * jitter / 1e3));
            }
            if let Some(path) = &input_file {
                read_input(path, loader.read_bytes)?;
            }
            push_host(&cuda, RecordKind::HostStall, "data_loader", t0, now_ns());
        }
        // SAFETY: see above.
        unsafe {
            if s.h2d_bytes > 0 {
                let rc =
                    (cuda.memcpy_htod_async)(input_ptr, host_batch.as_ptr() as *const c_void, host_batch.len(), stream);
                check("cuMemcpyHtoDAsync", rc)?;
            }
        }
        launch_all(s, &mut launchers, &forward, stream)?;
        launch_all(s, &mut launchers, &backward, stream)?;
        if let Some((nccl, comm)) = &nccl_comm {
            let count = (s.allreduce_bytes / 2) as usize; // bf16 elements
                                                          // SAFETY: see above.
            let rc = unsafe {
                (nccl.all_reduce)(
                    grads_ptr as *const c_void,
                    grads_ptr as *mut c_void,
                    count,
                    NCCL_BF16,
                    NCCL_SUM,
                    *comm,
                    stream,
                )
            };
            check("ncclAllReduce", rc)?;
        }
        launch_all(s, &mut launchers, &optimizer, stream)?;
        // loss.item(): the host waits for the step (a real block in libcuda).
        // SAFETY: see above.
        unsafe { check("cuStreamSynchronize", (cuda.stream_synchronize)(stream))? };
        if let Some(ckpt) = &s.checkpoint {
            if (step + 1) % ckpt.every_steps.max(1) == 0 {
                checkpoint_bytes += write_checkpoint(&cuda, cfg, grads_ptr, &mut checkpoint_buffer, step)?;
            }
        }
        if s.step_markers {
            push_host(&cuda, RecordKind::Marker, &format!("step {step}"), step_start, now_ns());
        }
    }
    // SAFETY: see above.
    unsafe { check("cuCtxSynchronize", (cuda.ctx_synchronize)())? };
    let window_end_ns = now_ns();
    let records = cuda.records();
    let info = RunInfo {
        scenario: s,
        rank: cfg.rank,
        ranks: cfg.ranks,
        steps: cfg.steps,
        window_start_ns,
        window_end_ns,
        checkpoint_bytes,
    };
    let truth = truth::build(&info, &records, cuda.cupti_attached());
    // Written from a thread that launches nothing: the truth file is not the job's work, and a
    // profiler's window rule (which ends a window at the launching threads' last file write)
    // must not see it.
    let path = cfg.truth_path.clone();
    std::thread::spawn(move || truth::write(&path, &truth))
        .join()
        .map_err(|_| "the thread writing the ground truth panicked".to_string())??;
    if let Some((nccl, comm)) = nccl_comm {
        // SAFETY: see above.
        unsafe { check("ncclCommDestroy", (nccl.comm_destroy)(comm))? };
    }
    if shared {
        held_report()?;
    }
    Ok(())
}

/// Launch every kernel of a phase, with the framework's on-CPU dispatch gap before each.
fn launch_all(s: &Scenario, launchers: &mut Launchers, kernels: &[Kernel], stream: Handle) -> Result<(), String> {
    for kernel in kernels {
        for _ in 0..kernel.spec.count {
            spin_for(s.host_gap_ns);
            launchers.launch(kernel.function, stream)?;
        }
    }
    Ok(())
}

/// Create the loader's scratch input file when the scenario reads one.
fn prepare_input(cfg: &RankConfig) -> Result<Option<PathBuf>, String> {
    let bytes = cfg.scenario.data_loader.read_bytes;
    if bytes == 0 {
        return Ok(None);
    }
    let path = cfg.run_dir.join(format!("input-rank{}.bin", cfg.rank));
    std::fs::write(&path, vec![7u8; bytes as usize])
        .map_err(|e| format!("cannot create loader input {}: {e}", path.display()))?;
    Ok(Some(path))
}

fn read_input(path: &Path, bytes: u64) -> Result<(), String> {
    let mut file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = bytes as usize;
    while left > 0 {
        let n = file.read(&mut buf[..left.min(1 << 20)]).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        left -= n;
    }
    Ok(())
}

/// Copy the weights to the host (synchronous DtoH) and write them with fsync; the file I/O is
/// a measured host stall. Returns the bytes written.
fn write_checkpoint(cuda: &Cuda, cfg: &RankConfig, src: u64, host: &mut [u8], step: u32) -> Result<u64, String> {
    // SAFETY: valid entry point; `host` has `bytes` bytes.
    unsafe { check("cuMemcpyDtoH", (cuda.memcpy_dtoh)(host.as_mut_ptr() as *mut c_void, src, host.len()))? };
    host.iter_mut().step_by(4096).for_each(|b| *b = step as u8);
    let t0 = now_ns();
    let path = cfg.run_dir.join(format!("checkpoint-rank{}.bin", cfg.rank));
    let mut file = std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    file.write_all(host).map_err(|e| format!("{}: {e}", path.display()))?;
    file.sync_all().map_err(|e| format!("fsync {}: {e}", path.display()))?;
    push_host(cuda, RecordKind::HostStall, "checkpoint_write", t0, now_ns());
    Ok(host.len() as u64)
}

unsafe extern "C" fn ignore_callback(_: *mut c_void, _: u32, _: u32, _: *const c_void) {}

/// `GPUSIM_HOLD_CUPTI=1`: take CUPTI's one subscriber slot before the first CUDA call and keep
/// it for the life of the process, as Kineto (torch.profiler) or Nsight does in a real job, so
/// that a profiler injected later finds CUPTI held.
fn hold_cupti() -> Result<(), String> {
    type Subscribe = unsafe extern "C" fn(
        *mut *mut c_void,
        unsafe extern "C" fn(*mut c_void, u32, u32, *const c_void),
        *mut c_void,
    ) -> i32;
    // SAFETY: dlopen/dlsym with valid C strings; the symbol has cuptiSubscribe's C signature.
    unsafe {
        let lib = libc::dlopen(c"libcupti.so.12".as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL);
        if lib.is_null() {
            return Err("GPUSIM_HOLD_CUPTI: cannot load libcupti.so.12 (is LD_LIBRARY_PATH the staged dir?)".into());
        }
        let f = libc::dlsym(lib, c"cuptiSubscribe".as_ptr());
        if f.is_null() {
            return Err("GPUSIM_HOLD_CUPTI: libcupti.so.12 has no cuptiSubscribe".into());
        }
        let subscribe = std::mem::transmute::<*mut c_void, Subscribe>(f);
        let mut handle: *mut c_void = std::ptr::null_mut();
        let rc = subscribe(&mut handle, ignore_callback, std::ptr::null_mut());
        if rc != 0 {
            return Err(format!("GPUSIM_HOLD_CUPTI: cuptiSubscribe returned {rc}"));
        }
    }
    Ok(())
}

/// Kernel records the `GPUSIM_HOLD_CUPTI=shared` subscriber received.
static HELD_KERNELS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// `dlsym` in gpusim's libcupti, loaded once.
fn cupti_symbol(name: &std::ffi::CStr) -> Result<*mut c_void, String> {
    // SAFETY: dlopen/dlsym with valid C strings.
    unsafe {
        let lib = libc::dlopen(c"libcupti.so.12".as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL);
        if lib.is_null() {
            return Err("GPUSIM_HOLD_CUPTI: cannot load libcupti.so.12 (is LD_LIBRARY_PATH the staged dir?)".into());
        }
        let f = libc::dlsym(lib, name.as_ptr());
        if f.is_null() {
            return Err(format!("GPUSIM_HOLD_CUPTI: libcupti.so.12 has no {}", name.to_string_lossy()));
        }
        Ok(f)
    }
}

unsafe extern "C" fn held_request(buffer: *mut *mut u8, size: *mut usize, max: *mut usize, _info: *mut c_void) {
    const BYTES: usize = 1 << 20;
    // SAFETY: CUPTI's out-pointers; the buffer (8-byte aligned) is freed in held_complete.
    unsafe {
        *buffer = std::alloc::alloc(std::alloc::Layout::from_size_align_unchecked(BYTES, 8));
        *size = BYTES;
        *max = 0;
    }
}

unsafe extern "C" fn held_complete(buffer: *mut u8, size: usize, valid: usize, _info: *mut c_void) {
    if buffer.is_null() {
        return;
    }
    // Only kernel records were enabled: CUpti_ActivityKernel9s (208 bytes, kind
    // CONCURRENT_KERNEL = 10) back to back.
    let mut at = 0usize;
    // SAFETY: inside the valid part of the buffer gpusim filled.
    while at + 208 <= valid && unsafe { *(buffer.add(at) as *const u32) } == 10 {
        HELD_KERNELS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        at += 208;
    }
    // SAFETY: allocated in held_request with this layout.
    unsafe { std::alloc::dealloc(buffer, std::alloc::Layout::from_size_align_unchecked(size, 8)) };
}

/// `CUpti_SubscriberParams` (cupti_callbacks.h, CUPTI 13.3).
#[repr(C)]
struct SubscriberParams {
    struct_size: usize,
    subscriber_name: *const std::ffi::c_char,
    old_subscriber_name: *mut std::ffi::c_char,
    old_subscriber_size: usize,
    allow_multiple_subscribers: u8,
    padding: [u8; 7],
}

/// `GPUSIM_HOLD_CUPTI=shared`: a CUPTI 13.3-aware tool (as a Kineto that uses the V2 API):
/// `cuptiSubscribe_v2` allowing other subscribers, before the first CUDA call, with its own
/// activity buffers and kernel records, counted and printed at the end on stderr
/// (`gpusim-train: CUPTI holder received N kernel records`).
fn hold_cupti_shared() -> Result<(), String> {
    type Subscribe = unsafe extern "C" fn(
        *mut *mut c_void,
        unsafe extern "C" fn(*mut c_void, u32, u32, *const c_void),
        *mut c_void,
        *mut SubscriberParams,
    ) -> i32;
    type Register = unsafe extern "C" fn(
        *mut c_void,
        unsafe extern "C" fn(*mut *mut u8, *mut usize, *mut usize, *mut c_void),
        unsafe extern "C" fn(*mut u8, usize, usize, *mut c_void),
    ) -> i32;
    type Enable = unsafe extern "C" fn(*mut c_void, u32, *mut c_void) -> i32;
    // SAFETY: the symbols have the C signatures of cupti_callbacks.h / cupti_activity.h (13.3).
    unsafe {
        let subscribe = std::mem::transmute::<*mut c_void, Subscribe>(cupti_symbol(c"cuptiSubscribe_v2")?);
        let register =
            std::mem::transmute::<*mut c_void, Register>(cupti_symbol(c"cuptiActivityRegisterCallbacks_v2")?);
        let enable = std::mem::transmute::<*mut c_void, Enable>(cupti_symbol(c"cuptiActivityEnable_v2")?);
        let mut params = SubscriberParams {
            struct_size: std::mem::size_of::<SubscriberParams>(),
            subscriber_name: c"gpusim-holder".as_ptr(),
            old_subscriber_name: std::ptr::null_mut(),
            old_subscriber_size: 0,
            allow_multiple_subscribers: 1,
            padding: [0; 7],
        };
        let mut handle: *mut c_void = std::ptr::null_mut();
        let rc = subscribe(&mut handle, ignore_callback, std::ptr::null_mut(), &mut params);
        if rc != 0 {
            return Err(format!("GPUSIM_HOLD_CUPTI=shared: cuptiSubscribe_v2 returned {rc}"));
        }
        let rc = register(handle, held_request, held_complete);
        if rc != 0 {
            return Err(format!("GPUSIM_HOLD_CUPTI=shared: cuptiActivityRegisterCallbacks_v2 returned {rc}"));
        }
        let rc = enable(handle, 10, std::ptr::null_mut());
        if rc != 0 {
            return Err(format!("GPUSIM_HOLD_CUPTI=shared: cuptiActivityEnable_v2 returned {rc}"));
        }
    }
    Ok(())
}

/// Flushes CUPTI and prints what the shared holder received.
fn held_report() -> Result<(), String> {
    type Flush = unsafe extern "C" fn(u32) -> i32;
    // SAFETY: cuptiActivityFlushAll's C signature.
    unsafe { std::mem::transmute::<*mut c_void, Flush>(cupti_symbol(c"cuptiActivityFlushAll")?)(1) };
    eprintln!(
        "gpusim-train: CUPTI holder received {} kernel records",
        HELD_KERNELS.load(std::sync::atomic::Ordering::Relaxed)
    );
    Ok(())
}
