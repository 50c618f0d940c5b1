//! The CUPTI side: activity buffers in, ring records out.

use rustc_hash::FxHashMap;
use std::ffi::CStr;
use std::mem::size_of;
use std::panic::catch_unwind;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use cs::CUpti_ActivityKind as K;
use cudarc::cupti::sys as cs;
use ghostprof_ring::Producer;

use ghostprof_ring::wire;

const BUFFER_BYTES: usize = 4 << 20;
use ghostprof_ring::RING_BYTES;

/// What the buffer thread and the control thread keep. The ring has its own lock, held only for
/// one push at a time, so a launching thread's callback never waits behind a whole activity
/// buffer or a PM decode.
struct State {
    pm: Option<crate::pm::PmSession>,
    /// name pointer → (id, bytes): CUPTI reuses a kernel's name pointer, so the pointer finds
    /// the id, and the bytes confirm it was not reused for another name.
    /// Fx-hashed (`rustc-hash`, one multiply per key), not SipHash: the map is only ever keyed
    /// by CUPTI's name pointers, looked up once per kernel record.
    names: FxHashMap<usize, (u32, Box<[u8]>)>,
    cupti_dropped: u64,
    /// The current buffer's record addresses (reused from buffer to buffer).
    records: Vec<usize>,
}

/// The ring: created by [`start`] for the process's life, or by [`attach`] for one attach
/// session (taken down again when that session's consumer detaches).
static RING: Mutex<Option<Producer>> = Mutex::new(None);
/// Where the ring file is, for its removal at exit or at the end of an attach session.
static RING_PATH: Mutex<Option<std::path::PathBuf>> = Mutex::new(None);
static STATE: Mutex<Option<State>> = Mutex::new(None);
static ACTIVE: AtomicBool = AtomicBool::new(false);
static LAST_CLOCK_NS: AtomicU64 = AtomicU64::new(0);

/// `GHOSTPROF_SELF_TIME=1` (`tools/bench cupti`): time ghostprof's own work in the target: the
/// forwarding of each activity buffer (thread CPU time, after CUPTI's own record walk);
/// reported in one status message at exit with the launch callbacks' samples, which are the
/// `cost` sampler's (`crate::cost`: one launch callback in 17 per thread, wall time, preempted
/// samples left out), not a second sampler.
static SELF_TIME: AtomicBool = AtomicBool::new(false);
static FORWARD_NS: AtomicU64 = AtomicU64::new(0);
static FORWARD_RECORDS: AtomicU64 = AtomicU64::new(0);

/// Runs `f` on the state (None before `start`).
fn with_state<R>(f: impl FnOnce(&mut State) -> R) -> Option<R> {
    STATE.lock().unwrap_or_else(|p| p.into_inner()).as_mut().map(f)
}

/// One record into the ring (dropped and counted by the ring when full).
fn push(kind: u16, payload: &[u8]) {
    if let Some(ring) = RING.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
        ring.push(kind, payload);
    }
}

/// One record from NCCL's profiler callbacks into the ring, only while collection is on
/// (`ghostprof record`, or an attached ghostprof); false when it was not sent. Reads no
/// environment (NCCL's threads may race the job's setenv).
pub(crate) fn push_if_collecting(kind: u16, payload: &[u8]) -> bool {
    let always = CONFIG.get().is_some_and(|c| c.always);
    let mut ring = RING.lock().unwrap_or_else(|p| p.into_inner());
    let Some(ring) = ring.as_mut() else { return false };
    (always || ring.enabled()) && ring.push(kind, payload)
}

/// One record into the ring whatever its control word says; false when the ring refused it
/// (full). For the session's final PM decode.
pub(crate) fn push_always(kind: u16, payload: &[u8]) -> bool {
    RING.lock().unwrap_or_else(|p| p.into_inner()).as_mut().is_some_and(|ring| ring.push(kind, payload))
}

fn status(msg: &str) {
    push(wire::STATUS, msg.as_bytes());
}

pub fn start() -> Result<(), String> {
    let dir = std::env::var("GHOSTPROF_RING_DIR").unwrap_or_else(|_| "/dev/shm".into());
    let path = std::path::Path::new(&dir).join(format!("ghostprof-{}.ring", std::process::id()));
    // This process's settings, read from its environment (an attach replaces them with its own).
    SESSION_PM_INTERVAL_NS.store(config().pm_interval_ns, Ordering::Release);
    SESSION_API_ACTIVITY.store(config().api_activity, Ordering::Release);
    // Recording from the start (`ghostprof record`): fault the ring in now, not push by push.
    let prefault = config().always;
    if !config().always {
        // Dormant rings of this user's processes that died without their exit handler (killed):
        // 64 MiB each in /dev/shm. Not under `record`, whose private directory may still hold
        // the complete ring of a process that exited before ghostprof opened it (ghostprof
        // removes that directory itself).
        ghostprof_ring::sweep_stale(std::path::Path::new(&dir));
    }
    let ring = Producer::create_with(&path, RING_BYTES, prefault)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    *RING.lock().unwrap_or_else(|p| p.into_inner()) = Some(ring);
    *RING_PATH.lock().unwrap_or_else(|p| p.into_inner()) = Some(path);
    // Registered before anything else can fail, so even a library without CUPTI removes its ring.
    // SAFETY: registering a plain extern "C" function that catches its own panics.
    unsafe { libc::atexit(at_exit) };
    SELF_TIME.store(std::env::var("GHOSTPROF_SELF_TIME").as_deref() == Ok("1"), Ordering::Relaxed);
    *STATE.lock().unwrap_or_else(|p| p.into_inner()) =
        Some(State { pm: None, names: FxHashMap::default(), cupti_dropped: 0, records: Vec::new() });
    if let Err(tried) = crate::api::load() {
        status(&format!("libcupti was not found ({tried}): no device timeline, eBPF only"));
        return Err("libcupti not found".into());
    }
    if config().always {
        enable();
    }
    std::thread::Builder::new()
        .name("ghostprof-inject".into())
        .spawn(control_loop)
        .map_err(|e| format!("cannot start the control thread: {e}"))?;
    Ok(())
}

/// Follows the ring's control word: collect while a consumer wants it, sleep otherwise.
fn control_loop() {
    let always = config().always;
    let mut tick = 0u64;
    loop {
        control_tick(always || ring_enabled(), tick);
        tick += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// True when the ring exists and its consumer has switched collection on.
fn ring_enabled() -> bool {
    RING.lock().unwrap_or_else(|p| p.into_inner()).as_ref().is_some_and(|r| r.enabled())
}

/// One 50 ms step of the control thread: CUPTI on or off as `wanted`, and while on, the clock
/// pair, PM sampling and the forced flush.
fn control_tick(wanted: bool, tick: u64) {
    let _ = catch_unwind(|| {
        if wanted && !ACTIVE.load(Ordering::Acquire) {
            enable();
        } else if !wanted && ACTIVE.load(Ordering::Acquire) {
            disable();
        }
        if wanted {
            WANTED.store(true, Ordering::Release);
        } else if WANTED.swap(false, Ordering::AcqRel) {
            // Collection just ended (CUPTI disabled and flushed above, or never on): every
            // record of the session is in the ring before this one, so ghostprof drains until
            // it sees it instead of guessing how long the flush takes.
            push(wire::SESSION_END, &monotonic_ns().to_le_bytes());
        }
        crate::cost::control_tick();
        if ACTIVE.load(Ordering::Acquire) {
            push(wire::COST, &crate::cost::payload());
            clock_pair();
            pm_start_pending();
            pm_collect(false);
            if tick % FORCED_FLUSH_TICKS == 0 {
                // CUPTI's flush period hands over full buffers only: on an H200, 72 kernels
                // of a PyTorch job sat ~6 s in a part-filled buffer. A forced flush each
                // second bounds how late a device record reaches the trace.
                // SAFETY: plain CUPTI call, allowed from any thread.
                unsafe { crate::api::cuptiActivityFlushAll(1) };
            }
        }
    });
}

/// Whether the last control tick collected (its consumer wanted it): a tick that finds the
/// word cleared after one that found it set ends the session with [`wire::SESSION_END`].
static WANTED: AtomicBool = AtomicBool::new(false);

/// Removes the ring file if it is still the one this library created (at exit: an attached
/// ghostprof keeps its own mapping).
fn remove_ring() {
    let path = RING_PATH.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if let (Some(ring), Some(path)) = (RING.lock().unwrap_or_else(|p| p.into_inner()).as_ref(), path) {
        ring.remove_if_ours(&path);
    }
}

/// An attach session (`ghostprof attach` injected this library, or found it injected) runs:
/// its thread is alive. A second attach is refused until it ends.
static SESSION: AtomicBool = AtomicBool::new(false);
/// How long an attach session waits for ghostprof to open its ring before it ends itself
/// (ghostprof was killed between the injection and the opening).
const CONSUMER_WAIT: Duration = Duration::from_secs(10);

/// Why [`attach`] did not start a session; the value is [`crate::ghostprof_attach`]'s return
/// code, which ghostprof's injector turns into its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachRefused {
    /// An attach session is still running in this process.
    Busy = -1,
    /// The argument was not the key=value text ghostprof passes.
    BadArgument = -2,
    /// The ring file could not be created.
    Ring = -3,
    /// No libcupti was found.
    NoCupti = -4,
    /// The session thread could not be started.
    Thread = -5,
}

/// What ghostprof passes to [`crate::ghostprof_attach`]: `key=value` lines. Read from the
/// argument, never from the environment (the job's threads may be in setenv right now).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachArgs {
    /// The directory of the ring, as this process sees it (absolute).
    pub ring_dir: std::path::PathBuf,
    /// Per-call API activity records instead of launch callbacks.
    pub api_activity: bool,
    /// PM sampling interval (0: off).
    pub pm_interval_ns: u64,
    /// Where libcupti is looked for (`cupti_path`, `cuda_home`: the job's environment as
    /// ghostprof read it; never `getenv` on the borrowed thread).
    pub search: crate::api::Search,
}

impl AttachArgs {
    /// Parses `ring_dir=/dev/shm\npm_interval_ns=50000\napi_activity=0` (unknown keys are
    /// ignored, so an older library takes a newer ghostprof's argument).
    pub fn parse(text: &str) -> Result<Self, AttachRefused> {
        let mut args = AttachArgs {
            ring_dir: "/dev/shm".into(),
            api_activity: false,
            pm_interval_ns: 50_000,
            search: Default::default(),
        };
        for line in text.lines() {
            let Some((key, value)) = line.split_once('=') else { continue };
            match key {
                "ring_dir" if value.starts_with('/') => args.ring_dir = value.into(),
                "ring_dir" => return Err(AttachRefused::BadArgument),
                "api_activity" => args.api_activity = value == "1",
                "pm_interval_ns" => args.pm_interval_ns = value.parse().map_err(|_| AttachRefused::BadArgument)?,
                "cupti_path" if !value.is_empty() => args.search.cupti_path = Some(value.into()),
                "cuda_home" if !value.is_empty() => args.search.cuda_home = Some(value.into()),
                _ => {}
            }
        }
        Ok(args)
    }
}

/// Starts an attach session in a running process (this library was just `dlopen`ed into it by
/// ghostprof, or is still mapped from an earlier session): creates the ring, and starts a
/// thread that collects while ghostprof has the ring open and then takes everything down
/// again. Runs on a thread ghostprof borrowed: it does no CUPTI work here (a CUDA lock may be
/// held by a thread in a synchronize), only the ring and the thread.
pub fn attach(args: &AttachArgs) -> Result<(), AttachRefused> {
    if SESSION.swap(true, Ordering::AcqRel) {
        return Err(AttachRefused::Busy);
    }
    let started = (|| {
        // `always` stays for the process's life (CONFIG is read lock-free from the callbacks);
        // the PM interval and the API activity choice are this session's (an attach with PM off
        // followed by one with PM on samples in the second: on an H200 the first attach's
        // settings held for every later one).
        let _ =
            CONFIG.set(Config { always: false, api_activity: args.api_activity, pm_interval_ns: args.pm_interval_ns });
        SESSION_PM_INTERVAL_NS.store(args.pm_interval_ns, Ordering::Release);
        SESSION_API_ACTIVITY.store(args.api_activity, Ordering::Release);
        let path = args.ring_dir.join(format!("ghostprof-{}.ring", std::process::id()));
        let ring = Producer::create_with(&path, RING_BYTES, false).map_err(|_| AttachRefused::Ring)?;
        *RING.lock().unwrap_or_else(|p| p.into_inner()) = Some(ring);
        *RING_PATH.lock().unwrap_or_else(|p| p.into_inner()) = Some(path);
        static AT_EXIT: std::sync::Once = std::sync::Once::new();
        // SAFETY: registering a plain extern "C" function that catches its own panics.
        AT_EXIT.call_once(|| unsafe {
            libc::atexit(at_exit);
        });
        // A fresh name table: the new consumer has seen none of the earlier session's names.
        *STATE.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(State { pm: None, names: FxHashMap::default(), cupti_dropped: 0, records: Vec::new() });
        static LOADED: AtomicBool = AtomicBool::new(false);
        if !LOADED.load(Ordering::Acquire) {
            crate::api::load_from(&args.search).map_err(|_| AttachRefused::NoCupti)?;
            LOADED.store(true, Ordering::Release);
        }
        std::thread::Builder::new()
            .name("ghostprof-attach".into())
            .spawn(session_loop)
            .map_err(|_| AttachRefused::Thread)?;
        Ok(())
    })();
    if started.is_err() {
        end_session();
    }
    started
}

/// The attach session's thread: waits for ghostprof to open the ring, collects while the
/// control word is set, and ends the session when it is cleared.
fn session_loop() {
    let began = std::time::Instant::now();
    while !ring_enabled() {
        if began.elapsed() >= CONSUMER_WAIT {
            end_session();
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut tick = 0u64;
    loop {
        let wanted = ring_enabled();
        // Off: disables, flushes and unsubscribes.
        control_tick(wanted, tick);
        if !wanted {
            break;
        }
        tick += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    end_session();
}

/// Takes an attach session down: CUPTI off (flushed into the ring first), the ring file removed
/// and unmapped. The library stays mapped, dormant, for the next attach.
fn end_session() {
    let _ = catch_unwind(|| {
        if ACTIVE.load(Ordering::Acquire) {
            disable();
        }
        remove_ring();
        *RING.lock().unwrap_or_else(|p| p.into_inner()) = None;
        *RING_PATH.lock().unwrap_or_else(|p| p.into_inner()) = None;
    });
    SESSION.store(false, Ordering::Release);
}

/// Control-loop ticks (50 ms) between forced CUPTI flushes.
const FORCED_FLUSH_TICKS: u64 = 20;

/// PM sampling's start, from the control thread only: inside `InitializeInjection` (the job's
/// first cuInit) CUPTI 13.0 refuses `cuptiProfilerInitialize` (CUPTI_ERROR_UNKNOWN, seen on an
/// H100), so a start waits for the control loop and is retried every 50 ms for 2 s before it
/// is reported as off.
const PM_PENDING: u32 = 0;
const PM_RUNNING: u32 = 1;
const PM_OFF: u32 = 2;
static PM_STATE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(PM_OFF);
static PM_ATTEMPTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
const PM_MAX_ATTEMPTS: u32 = 40;

fn pm_start_pending() {
    if PM_STATE.load(Ordering::Acquire) != PM_PENDING {
        return;
    }
    let interval = pm_interval_ns();
    if interval == 0 {
        PM_STATE.store(PM_OFF, Ordering::Release);
        return;
    }
    match crate::pm::start(interval) {
        Ok(session) => {
            with_state(|s| s.pm = Some(session));
            PM_STATE.store(PM_RUNNING, Ordering::Release);
        }
        Err(e) => {
            if PM_ATTEMPTS.fetch_add(1, Ordering::AcqRel) + 1 >= PM_MAX_ATTEMPTS {
                PM_STATE.store(PM_OFF, Ordering::Release);
                status(&format!("PM sampling is off: {e}"));
            }
        }
    }
}

/// Device activity, always collected.
const KINDS: [K; 5] = [
    K::CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL,
    K::CUPTI_ACTIVITY_KIND_MEMCPY,
    K::CUPTI_ACTIVITY_KIND_MEMSET,
    K::CUPTI_ACTIVITY_KIND_SYNCHRONIZATION,
    K::CUPTI_ACTIVITY_KIND_MARKER,
];

/// A record for every driver and runtime API call (`GHOSTPROF_API_ACTIVITY=1`, or when no
/// subscriber could be had for the launch callbacks). PyTorch makes ~20 runtime/driver calls
/// per kernel, so this costs far more than the launch callbacks.
const API_KINDS: [K; 2] = [K::CUPTI_ACTIVITY_KIND_DRIVER, K::CUPTI_ACTIVITY_KIND_RUNTIME];

/// Whether the API activity kinds are on (else launch callbacks give the correlation ids).
static API_ACTIVITY: AtomicBool = AtomicBool::new(false);

fn want_api_activity() -> bool {
    SESSION_API_ACTIVITY.load(Ordering::Acquire)
}

/// The PM sampling interval of the current session (0: off): the environment's ([`start`]),
/// or the current attach's (each attach its own, not the first one's).
static SESSION_PM_INTERVAL_NS: AtomicU64 = AtomicU64::new(0);
/// Whether the current session wants per-call API activity records (set as the interval).
static SESSION_API_ACTIVITY: AtomicBool = AtomicBool::new(false);

/// The environment, read once in [`start`] (from the thread that called cuInit): the control
/// thread never calls getenv, which can crash when it races the job's setenv (Python's
/// `os.environ[...] = ...`).
struct Config {
    always: bool,
    api_activity: bool,
    pm_interval_ns: u64,
}

static CONFIG: OnceLock<Config> = OnceLock::new();

fn config() -> &'static Config {
    CONFIG.get_or_init(|| {
        let always = std::env::var("GHOSTPROF_ENABLE").as_deref() == Ok("1");
        Config {
            always,
            api_activity: std::env::var("GHOSTPROF_API_ACTIVITY").as_deref() == Ok("1"),
            // `GHOSTPROF_PM_INTERVAL_NS` (0 switches PM sampling off); default 50 µs under
            // `record`, 1 ms in a dormant library (its sessions are `watch`'s sample windows
            // and `attach`es, which sample every 1 ms too: on an H200 a sample costs the job
            // ~45 µs of CPU, so 50 µs would take most of a core).
            pm_interval_ns: std::env::var("GHOSTPROF_PM_INTERVAL_NS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(if always { 50_000 } else { 1_000_000 }),
        }
    })
}

/// This process's id, read once (see [`launch_callback`]).
static PID: OnceLock<u32> = OnceLock::new();

thread_local! {
    static TID: u32 = {
        // SAFETY: gettid cannot fail.
        unsafe { libc::syscall(libc::SYS_gettid) as u32 }
    };
}

/// CUPTI callback of the launch entry points: at exit, one `CUpti_ActivityAPI`-shaped record
/// (the layout the collector already parses) with the call's correlation id, kernel thread id
/// and CUPTI timestamps of entry and exit.
unsafe extern "C" fn launch_callback(
    _userdata: *mut std::ffi::c_void,
    domain: cs::CUpti_CallbackDomain,
    cbid: cs::CUpti_CallbackId,
    data: *const std::ffi::c_void,
) {
    let cost = crate::cost::callback_enter();
    let _ = catch_unwind(|| {
        if data.is_null() {
            return;
        }
        // SAFETY: for the driver and runtime domains CUPTI passes a CUpti_CallbackData.
        let d = unsafe { &*(data as *const cs::CUpti_CallbackData) };
        if d.callbackSite == cs::CUpti_ApiCallbackSite::CUPTI_API_EXIT
            && FINALIZE.load(Ordering::Acquire) == FIN_PENDING
        {
            finalize_here();
            return;
        }
        if !ACTIVE.load(Ordering::Relaxed) {
            return;
        }
        let kind = match domain {
            cs::CUpti_CallbackDomain::CUPTI_CB_DOMAIN_DRIVER_API => K::CUPTI_ACTIVITY_KIND_DRIVER,
            cs::CUpti_CallbackDomain::CUPTI_CB_DOMAIN_RUNTIME_API => K::CUPTI_ACTIVITY_KIND_RUNTIME,
            _ => return,
        };
        // Only the exit is recorded: the join needs the call's end and its correlation id, and
        // a timestamp at entry too (~36 ns on the development VM) would be a third of the
        // callback's cost. The record's start is its end.
        if d.callbackSite == cs::CUpti_ApiCallbackSite::CUPTI_API_ENTER {
            return;
        }
        let mut now = 0u64;
        // SAFETY: writes one u64.
        unsafe { crate::api::cuptiGetTimestamp(&mut now) };
        let start = now;
        // SAFETY: the return value is a CUresult / cudaError_t (an int).
        let ret = if d.functionReturnValue.is_null() { 0 } else { unsafe { *(d.functionReturnValue as *const u32) } };
        let rec = cs::CUpti_ActivityAPI {
            kind,
            cbid,
            start,
            end: now,
            // Cached: std::process::id() is a getpid syscall on every call (glibc stopped
            // caching it), 300-450 ns on the 2-core test VM: most of the callback's cost.
            processId: *PID.get_or_init(std::process::id),
            threadId: TID.with(|t| *t),
            correlationId: d.correlationId,
            returnValue: ret,
        };
        // SAFETY: a plain-data struct viewed as its bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&rec as *const cs::CUpti_ActivityAPI).cast::<u8>(),
                size_of::<cs::CUpti_ActivityAPI>(),
            )
        };
        push(wire::ACTIVITY, bytes);
    });
    crate::cost::callback_exit(cost);
}

/// Turns the launch callbacks on (they need our subscriber).
fn enable_launch_callbacks() -> bool {
    let handle = SUBSCRIBER.load(Ordering::Acquire);
    if handle == 0 {
        return false;
    }
    let sub = handle as cs::CUpti_SubscriberHandle;
    let domains = [
        (cs::CUpti_CallbackDomain::CUPTI_CB_DOMAIN_DRIVER_API, &wire::LAUNCH_DRIVER_CBIDS),
        (cs::CUpti_CallbackDomain::CUPTI_CB_DOMAIN_RUNTIME_API, &wire::LAUNCH_RUNTIME_CBIDS),
    ];
    let mut on = 0;
    for (domain, cbids) in domains {
        for &cbid in cbids {
            // SAFETY: our live subscriber handle.
            if unsafe { crate::api::cuptiEnableCallback(1, sub, domain, cbid) } == cs::CUptiResult::CUPTI_SUCCESS {
                on += 1;
            }
        }
    }
    on > 0
}

/// Our CUPTI subscriber handle while collecting (0 when none). CUPTI before 13.3 allows one
/// subscriber per process: holding one tells us nobody else (Kineto, Nsight) is using CUPTI, and
/// keeps a later profiler from silently taking the activity buffers from under us. From 13.3
/// ([`crate::api::shares_subscribers`]) we subscribe with `cuptiSubscribe_v2` allowing others,
/// so a tool that does the same records alongside us, each with its own activity buffers.
static SUBSCRIBER: AtomicU64 = AtomicU64::new(0);
/// Whether [`SUBSCRIBER`] is a V2 subscription that shares CUPTI: the activity calls are then
/// the per-subscriber V2 ones (CUPTI refuses the unversioned ones beside them).
static SHARED: AtomicBool = AtomicBool::new(false);
/// `monotonic_ns` of the last refused subscription (0: none), to retry every few seconds.
static REFUSED_AT: AtomicU64 = AtomicU64::new(0);
const RETRY_NS: u64 = 2_000_000_000;

/// Takes CUPTI's subscriber slot, or a share of CUPTI where it allows that (13.3). False
/// (after one status message per refusal episode) when another subscriber holds it alone;
/// retried every [`RETRY_NS`].
fn subscribe() -> bool {
    if SUBSCRIBER.load(Ordering::Acquire) != 0 {
        return true;
    }
    let refused = REFUSED_AT.load(Ordering::Relaxed);
    if refused != 0 && monotonic_ns().saturating_sub(refused) < RETRY_NS {
        return false;
    }
    let mut handle: cs::CUpti_SubscriberHandle = std::ptr::null_mut();
    let shared = crate::api::shares_subscribers();
    // CUPTI writes the holder's name here when it refuses us ("CUPTI for <tool>").
    let mut holder = [0 as std::ffi::c_char; 64];
    let rc = if shared {
        let mut params = crate::api::SubscriberParams {
            struct_size: crate::api::SUBSCRIBER_PARAMS_SIZE,
            subscriber_name: c"ghostprof".as_ptr(),
            old_subscriber_name: holder.as_mut_ptr(),
            old_subscriber_size: holder.len(),
            allow_multiple_subscribers: 1,
            padding: [0; 7],
        };
        // SAFETY: valid out-pointer, params and name buffer that outlive the call.
        unsafe { crate::api::cuptiSubscribe_v2(&mut handle, Some(launch_callback), std::ptr::null_mut(), &mut params) }
    } else {
        // SAFETY: valid out-pointer and a callback that does nothing.
        unsafe { crate::api::cuptiSubscribe(&mut handle, Some(launch_callback), std::ptr::null_mut()) }
    };
    // The holder's name is the job's (untrusted) bytes: at most 63, NUL-ended by CUPTI (the
    // last byte stays 0 whatever it wrote), shown escaped by the collector.
    holder[holder.len() - 1] = 0;
    // SAFETY: the buffer ends with a NUL.
    let holder = unsafe { CStr::from_ptr(holder.as_ptr()) }.to_string_lossy().into_owned();
    match rc {
        cs::CUptiResult::CUPTI_SUCCESS => {
            SUBSCRIBER.store(handle as u64, Ordering::Release);
            SHARED.store(shared, Ordering::Release);
            if refused != 0 {
                status("CUPTI was released by the other subscriber: the device timeline starts now");
            }
            if shared && !holder.is_empty() && holder != "CUPTI for ghostprof" {
                status(&format!(
                    "CUPTI is shared with another subscriber in this process ({holder}; CUPTI 13.3 multiple \
                     subscribers): recording the device timeline alongside it"
                ));
            }
            REFUSED_AT.store(0, Ordering::Relaxed);
            true
        }
        cs::CUptiResult::CUPTI_ERROR_MULTIPLE_SUBSCRIBERS_NOT_SUPPORTED => {
            if refused == 0 {
                if shared {
                    let who =
                        if holder.is_empty() { "e.g. Kineto / torch.profiler, Nsight".to_string() } else { holder };
                    status(&format!(
                        "CUPTI is held by another subscriber in this process ({who}) that does not share it \
                         (CUPTI 13.3 shares it only among tools that all subscribe with cuptiSubscribe_v2 \
                         allowing it): no CUPTI device timeline while it does; continuing with eBPF only"
                    ));
                } else {
                    status(
                        "CUPTI is held by another subscriber in this process (e.g. Kineto / torch.profiler, Nsight): \
                         no CUPTI device timeline while it does; continuing with eBPF only",
                    );
                }
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
        // SAFETY: the handle cuptiSubscribe(_v2) gave us, released once.
        unsafe { crate::api::cuptiUnsubscribe(handle as cs::CUpti_SubscriberHandle) };
    }
    SHARED.store(false, Ordering::Release);
}

fn enable() {
    cancel_finalize();
    if !subscribe() {
        return;
    }
    // SAFETY: CUPTI calls with valid callbacks; results are checked.
    unsafe {
        // Registered on every enable: another CUPTI user may have replaced them while we were
        // detached (we hold the subscriber slot while collecting, so not while we are attached).
        let shared = SHARED.load(Ordering::Acquire);
        let sub = SUBSCRIBER.load(Ordering::Acquire) as cs::CUpti_SubscriberHandle;
        let rc = if shared {
            crate::api::cuptiActivityRegisterCallbacks_v2(sub, Some(buffer_requested_v2), Some(buffer_completed_v2))
        } else {
            crate::api::cuptiActivityRegisterCallbacks(Some(buffer_requested), Some(buffer_completed))
        };
        if rc != cs::CUptiResult::CUPTI_SUCCESS {
            status(&format!("cuptiActivityRegisterCallbacks failed ({rc:?}); continuing with eBPF only"));
            unsubscribe();
            REFUSED_AT.store(monotonic_ns().max(1), Ordering::Relaxed);
            return;
        }
        // Thread ids as the kernel numbers them (what the eBPF launch records carry), not
        // CUPTI's default pthread_self(): the launch ↔ kernel join depends on it.
        let system = cs::CUpti_ActivityThreadIdType::CUPTI_ACTIVITY_THREAD_ID_TYPE_SYSTEM;
        let rc = if shared {
            // Refused beside other subscribers: an attribute of ours there.
            let (mut value, mut size) = (system as u32, size_of::<u32>());
            crate::api::cuptiActivitySetAttribute_v2(
                sub,
                crate::api::ATTR_THREAD_ID_TYPE,
                &mut size,
                (&mut value as *mut u32).cast(),
            )
        } else {
            crate::api::cuptiSetThreadIdType(system)
        };
        if rc != cs::CUptiResult::CUPTI_SUCCESS {
            status(&format!("cuptiSetThreadIdType(SYSTEM) failed ({rc:?}): CUPTI thread ids will not match eBPF's"));
        }
        let api_activity = want_api_activity() || !enable_launch_callbacks();
        API_ACTIVITY.store(api_activity, Ordering::Release);
        let api_kinds: &[K] = if api_activity { &API_KINDS } else { &[] };
        for &kind in KINDS.iter().chain(api_kinds) {
            let rc = if shared {
                crate::api::cuptiActivityEnable_v2(sub, kind, std::ptr::null_mut())
            } else {
                crate::api::cuptiActivityEnable(kind)
            };
            if rc != cs::CUptiResult::CUPTI_SUCCESS {
                status(&format!("cuptiActivityEnable({kind:?}) failed: {rc:?}"));
            }
        }
        crate::api::cuptiActivityFlushPeriod(100);
    }
    crate::cost::reset();
    ACTIVE.store(true, Ordering::Release);
    clock_pair();
    PM_ATTEMPTS.store(0, Ordering::Release);
    PM_STATE.store(PM_PENDING, Ordering::Release);
}

/// PM sampling interval of the current session (0 switches it off).
fn pm_interval_ns() -> u64 {
    SESSION_PM_INTERVAL_NS.load(Ordering::Acquire)
}

/// Sends the PM samples gathered since the last call; `last` ends the session.
fn pm_collect(last: bool) {
    // One decode at a time: the exit handler's final decode waits for one the control thread
    // has in flight (it found no session and skipped, losing every sample since the last
    // periodic decode: half of a short job's samples under load).
    static DECODING: Mutex<()> = Mutex::new(());
    let _one = DECODING.lock().unwrap_or_else(|p| p.into_inner());
    // Taken out of the state, so the decode holds no state lock.
    let Some(mut pm) = with_state(|s| s.pm.take()).flatten() else { return };
    match pm.collect(last) {
        Ok(samples) => {
            for x in samples {
                let mut payload = [0u8; 32];
                payload[..8].copy_from_slice(&x.start_ns.to_le_bytes());
                payload[8..16].copy_from_slice(&x.end_ns.to_le_bytes());
                payload[16..24].copy_from_slice(&x.tensor_pct.to_le_bytes());
                payload[24..].copy_from_slice(&x.sm_active_pct.to_le_bytes());
                push(wire::PM_SAMPLE, &payload);
            }
            if !last {
                with_state(|s| s.pm = Some(pm));
            }
        }
        Err(e) => status(&format!("PM sampling stopped: {e}")),
    }
}

fn disable() {
    pm_collect(true);
    PM_STATE.store(PM_OFF, Ordering::Release);
    // SAFETY: plain CUPTI calls.
    unsafe {
        let api_kinds: &[K] = if API_ACTIVITY.load(Ordering::Acquire) { &API_KINDS } else { &[] };
        let sub = SUBSCRIBER.load(Ordering::Acquire) as cs::CUpti_SubscriberHandle;
        for &kind in KINDS.iter().chain(api_kinds) {
            if SHARED.load(Ordering::Acquire) {
                crate::api::cuptiActivityDisable_v2(sub, kind, std::ptr::null_mut());
            } else {
                crate::api::cuptiActivityDisable(kind);
            }
        }
        crate::api::cuptiActivityFlushAll(1);
    }
    // The cost since the last tick, before an attach session closes the ring.
    crate::cost::control_tick();
    push(wire::COST, &crate::cost::payload());
    ACTIVE.store(false, Ordering::Release);
    if SUBSCRIBER.load(Ordering::Acquire) != 0 && !SHARED.load(Ordering::Acquire) && enable_launch_callbacks() {
        // Detach CUPTI at the job's next launch exit (see FINALIZE); the subscriber stays
        // until then, as the callback it needs is ours.
        FINALIZE.store(FIN_PENDING, Ordering::Release);
    } else {
        // Sharing CUPTI (13.3): cuptiFinalize would take the other tools' sessions down too.
        unsubscribe();
    }
}

/// CUPTI's detach after a session (attach, or watch's sample window). Unsubscribed and with
/// every kind disabled, CUPTI still sits in each driver API call until `cuptiFinalize`: on an
/// H200 a PyTorch loop's steps went from 8 ms to 15-21 ms after a detach and never came back,
/// and a third attach crashed it. `cuptiFinalize` tears down state that callbacks running on
/// other threads use, so it is called where NVIDIA's CUPTI guide says to: inside an API exit
/// callback, here the first launch exit after the session (a job that launches nothing more
/// keeps CUPTI attached, idle, until it does). A new session before that cancels it.
const FIN_NONE: u32 = 0;
const FIN_PENDING: u32 = 1;
const FIN_RUNNING: u32 = 2;
static FINALIZE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(FIN_NONE);

/// In a launch exit callback, with a finalize pending: the one thread that wins it detaches
/// CUPTI; the subscriber handle dies with it.
fn finalize_here() {
    if FINALIZE.compare_exchange(FIN_PENDING, FIN_RUNNING, Ordering::AcqRel, Ordering::Acquire).is_err() {
        return;
    }
    // SAFETY: the exit callsite of a driver API, as CUPTI requires for cuptiFinalize; the
    // activity kinds were disabled and flushed when the session ended.
    let rc = unsafe { crate::api::cuptiFinalize() };
    SUBSCRIBER.store(0, Ordering::Release);
    SHARED.store(false, Ordering::Release);
    if rc != cs::CUptiResult::CUPTI_SUCCESS {
        status(&format!("cuptiFinalize failed ({rc:?}): CUPTI stays attached, idle"));
    }
    FINALIZE.store(FIN_NONE, Ordering::Release);
}

/// Before a session starts: a pending finalize is cancelled (CUPTI is still attached and our
/// subscriber valid), one in progress is waited for (then CUPTI attaches again).
fn cancel_finalize() {
    loop {
        match FINALIZE.compare_exchange(FIN_PENDING, FIN_NONE, Ordering::AcqRel, Ordering::Acquire) {
            Err(FIN_RUNNING) => std::thread::sleep(Duration::from_millis(1)),
            _ => return,
        }
    }
}

extern "C" fn at_exit() {
    let _ = catch_unwind(|| {
        if ACTIVE.load(Ordering::Acquire) {
            crate::cost::timed(true, || {
                // SAFETY: flushing completed buffers at process exit, as CUPTI's samples do.
                unsafe { crate::api::cuptiActivityFlushAll(1) };
                clock_pair();
                pm_collect(true);
            });
            push(wire::COST, &crate::cost::payload());
        }
        if SELF_TIME.load(Ordering::Relaxed) {
            // callback_sampled_ns is the samples' raw sum (each holds one clock read, which the
            // bench takes off with its own measure of it).
            let s = crate::cost::samples();
            status(&format!(
                "self-time: forward_ns={} records={} callback_sampled_ns={} callback_sampled={} callbacks={}",
                FORWARD_NS.load(Ordering::Relaxed),
                FORWARD_RECORDS.load(Ordering::Relaxed),
                s.raw_ns,
                s.sampled,
                s.callbacks
            ));
        }
        // A dormant ring would stay in /dev/shm (64 MiB) after the job: removed if the file at
        // its name is still the one created here (an attached ghostprof keeps its mapping).
        // Under `record` the file stays for ghostprof to read, if it has not opened it yet.
        if !config().always {
            remove_ring();
        }
    });
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
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
    push(wire::CLOCK, &payload);
}

unsafe extern "C" fn buffer_requested(buffer: *mut *mut u8, size: *mut usize, max_records: *mut usize) {
    let _ = catch_unwind(|| {
        // A buffer CUPTI handed back before, else a new one, uninitialized: CUPTI reads only
        // what it wrote. Zeroing 4 MiB (calloc + memset, then 1024 page faults) was the largest
        // item of the library in callgrind (16.8 M of 155 M instructions of a 30,000-launch loop).
        let pooled = POOL.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let (aligned, start) = pooled.unwrap_or_else(|| {
            let v = Box::<[u8]>::new_uninit_slice(BUFFER_BYTES + 8);
            let ptr = Box::into_raw(v).cast::<u8>();
            // CUPTI wants 8-byte alignment.
            (ptr.wrapping_add(ptr.align_offset(8)) as usize, ptr as usize)
        });
        BUFFERS.lock().unwrap_or_else(|p| p.into_inner()).insert(aligned, start);
        // SAFETY: CUPTI passes valid out-pointers.
        unsafe {
            *buffer = aligned as *mut u8;
            *size = BUFFER_BYTES;
            *max_records = 0;
        }
    });
}

/// aligned buffer → allocation start, to free what CUPTI hands back.
static BUFFERS: Mutex<BTreeMapUsize> = Mutex::new(BTreeMapUsize::new());
/// Buffers CUPTI handed back, (aligned, allocation start), for the next requests.
static POOL: Mutex<Vec<(usize, usize)>> = Mutex::new(Vec::new());
/// Buffers kept for reuse at most (16 MiB); more are freed.
const POOL_MAX: usize = 4;
type BTreeMapUsize = std::collections::BTreeMap<usize, usize>;

/// `CUpti_BuffersCallbackRequestFunc_v2` (shared CUPTI): as [`buffer_requested`].
unsafe extern "C" fn buffer_requested_v2(
    buffer: *mut *mut u8,
    size: *mut usize,
    max_records: *mut usize,
    _info: *mut std::ffi::c_void,
) {
    // SAFETY: CUPTI's out-pointers, as for the unversioned callback.
    unsafe { buffer_requested(buffer, size, max_records) }
}

/// `CUpti_BuffersCallbackCompleteFunc_v2` (shared CUPTI): our subscriber's buffer, walked and
/// counted with the V2 calls.
unsafe extern "C" fn buffer_completed_v2(buffer: *mut u8, _size: usize, valid: usize, _info: *mut std::ffi::c_void) {
    let sub = SUBSCRIBER.load(Ordering::Acquire) as cs::CUpti_SubscriberHandle;
    // SAFETY: CUPTI hands back our buffer with its valid size.
    crate::cost::timed(false, || unsafe { complete_buffer(buffer, valid, Some(sub), std::ptr::null_mut(), 0) });
}

unsafe extern "C" fn buffer_completed(
    ctx: cudarc::driver::sys::CUcontext,
    stream: u32,
    buffer: *mut u8,
    _size: usize,
    valid: usize,
) {
    // SAFETY: CUPTI hands back our buffer with its valid size.
    crate::cost::timed(false, || unsafe { complete_buffer(buffer, valid, None, ctx, stream) });
}

/// Forwards a completed buffer's records and frees it; `shared`: our V2 subscriber handle.
///
/// # Safety
/// `buffer` is one of ours that CUPTI filled with `valid` bytes.
unsafe fn complete_buffer(
    buffer: *mut u8,
    valid: usize,
    shared: Option<cs::CUpti_SubscriberHandle>,
    ctx: cudarc::driver::sys::CUcontext,
    stream: u32,
) {
    let _ = catch_unwind(|| {
        if buffer.is_null() {
            return;
        }
        let mut guard = STATE.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = guard.as_mut() {
            let mut record: *mut cs::CUpti_Activity = std::ptr::null_mut();
            let ring_lock = &RING;
            // CUPTI's walk of the buffer first, then ghostprof's forwarding (timed alone with
            // GHOSTPROF_SELF_TIME; thread CPU time, as this thread is preempted mid-buffer on a
            // busy machine). The record list is kept between buffers.
            let mut records = std::mem::take(&mut s.records);
            records.clear();
            // SAFETY: CUPTI iterates its own buffer; the records stay valid until it is freed.
            let next = |record: &mut *mut cs::CUpti_Activity| match shared {
                // SAFETY: CUPTI iterates its own buffer.
                Some(sub) => unsafe { crate::api::cuptiActivityGetNextRecord_v2(sub, buffer, valid, record) },
                None => unsafe { crate::api::cuptiActivityGetNextRecord(buffer, valid, record) },
            };
            while next(&mut record) == cs::CUptiResult::CUPTI_SUCCESS {
                records.push(record as usize);
            }
            let t0 = SELF_TIME.load(Ordering::Relaxed).then(thread_cpu_ns);
            // The ring's lock is taken once per RING_BATCH records: cheap for this thread, and a
            // launch callback waits at most one batch.
            const RING_BATCH: usize = 32;
            for batch in records.chunks(RING_BATCH) {
                let mut guard = ring_lock.lock().unwrap_or_else(|p| p.into_inner());
                let Some(ring) = guard.as_mut() else { break };
                for &r in batch {
                    // SAFETY: CUPTI returned these record pointers.
                    unsafe { forward(s, ring, r as *const u8) };
                }
            }
            if let Some(t0) = t0 {
                FORWARD_NS.fetch_add(thread_cpu_ns().saturating_sub(t0), Ordering::Relaxed);
                FORWARD_RECORDS.fetch_add(records.len() as u64, Ordering::Relaxed);
            }
            s.records = records;
            let mut dropped = 0usize;
            // SAFETY: writes one usize.
            unsafe {
                match shared {
                    Some(sub) => crate::api::cuptiActivityGetNumDroppedRecords_v2(sub, ctx, stream, &mut dropped),
                    None => crate::api::cuptiActivityGetNumDroppedRecords(ctx, stream, &mut dropped),
                }
            };
            if dropped > 0 {
                s.cupti_dropped += dropped as u64;
                push(wire::CUPTI_DROPPED, &s.cupti_dropped.to_le_bytes());
            }
        }
        drop(guard);
        if let Some(start) = BUFFERS.lock().unwrap_or_else(|p| p.into_inner()).remove(&(buffer as usize)) {
            let mut pool = POOL.lock().unwrap_or_else(|p| p.into_inner());
            if pool.len() < POOL_MAX {
                pool.push((buffer as usize, start));
            } else {
                drop(pool);
                // SAFETY: `start` is the allocation made in buffer_requested, of this length
                // (as MaybeUninit<u8>, which has u8's layout).
                drop(unsafe {
                    Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                        start as *mut std::mem::MaybeUninit<u8>,
                        BUFFER_BYTES + 8,
                    ))
                });
            }
        }
    });
}

/// Copies one record into the ring, replacing its name pointer with an id.
///
/// # Safety
/// `rec` points to a CUPTI activity record of the kind its first u32 says.
unsafe fn forward(s: &mut State, ring: &mut Producer, rec: *const u8) {
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
    // The name id first (it may push a NAME record), then the record straight into its ring
    // slot, its name pointer replaced by the id.
    let name = name_at.map(|at| {
        // SAFETY: `at + 8 <= size`: the name field lies inside the record.
        let ptr = unsafe { std::ptr::read_unaligned(rec.add(at).cast::<usize>()) };
        (at, if ptr == 0 { 0 } else { unsafe { name_id(s, ring, ptr) } })
    });
    ring.push_with(wire::ACTIVITY, size, |slot| {
        // SAFETY: see above; `slot` is exactly `size` bytes.
        unsafe { std::ptr::copy_nonoverlapping(rec, slot.as_mut_ptr(), size) };
        if let Some((at, id)) = name {
            slot[at..at + 8].copy_from_slice(&(id as u64).to_le_bytes());
            if kind == K::CUPTI_ACTIVITY_KIND_MARKER as u32 {
                let domain = offset_of!(cs::CUpti_ActivityMarker2, domain);
                slot[domain..domain + 8].fill(0);
            }
        }
    });
}

/// The id of the NUL-terminated string at `ptr`, sending it through the ring on first sight.
///
/// # Safety
/// `ptr` is a valid C string (CUPTI's kernel and marker names are).
unsafe fn name_id(s: &mut State, ring: &mut Producer, ptr: usize) -> u32 {
    if let Some((id, known)) = s.names.get(&ptr) {
        // A known pointer: confirm it still holds that name by its first bytes (up to 32, and
        // never past the string's NUL), not the whole name: CUPTI hands the same pointer for
        // every launch of a kernel, and a full compare was most of the cost of a kernel record.
        let n = known.len().min(32);
        // SAFETY: strncmp stops at the first NUL of either string (`known` has none in its first
        // `n` bytes); when the first `n` bytes are equal the string at `ptr` is at least `n`
        // long, so its byte `n` (its NUL or more name) is readable.
        let same = unsafe { libc::strncmp(ptr as *const libc::c_char, known.as_ptr().cast(), n) } == 0
            && (known.len() > 32 || unsafe { *(ptr as *const u8).add(n) } == 0);
        if same {
            return *id;
        }
    }
    // SAFETY: per the contract.
    let bytes = unsafe { CStr::from_ptr(ptr as *const std::ffi::c_char) }.to_bytes();
    let bytes = &bytes[..bytes.len().min(4096)];
    let id = s.names.len() as u32 + 1;
    s.names.insert(ptr, (id, bytes.into()));
    let mut payload = Vec::with_capacity(4 + bytes.len());
    payload.extend_from_slice(&id.to_le_bytes());
    payload.extend_from_slice(bytes);
    ring.push(wire::NAME, &payload);
    id
}
