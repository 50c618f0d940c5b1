//! `ghostprof watch`: the always-on service's arguments, and `ghostprof watch trigger`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

use super::record::{parse_duration, require_root};
use crate::record::watch::{self, control, Scope, WatchConfig};

static STOP: AtomicBool = AtomicBool::new(false);
static SIGNALS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_signal(_: libc::c_int) {
    // The first signal stops cleanly (segments finalized, rings dormant); a second leaves at once.
    if SIGNALS.fetch_add(1, Ordering::SeqCst) >= 1 {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(130) };
    }
    STOP.store(true, Ordering::SeqCst);
}

/// `ghostprof watch`'s arguments.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct WatchCliConfig {
    /// `trigger`: ask the running watch for a trigger trace.
    #[command(subcommand)]
    pub action: Option<WatchAction>,
    /// Follow only this process and its descendants (default: every CUDA process of the host).
    #[arg(long, conflicts_with = "cgroup")]
    pub pid: Option<u32>,
    /// Follow only the processes of this cgroup and below (its path as in /proc/PID/cgroup).
    #[arg(long)]
    pub cgroup: Option<String>,
    /// Length of each sample window with the full device timeline (CUPTI and PM sampling on).
    #[arg(long, default_value = "2s")]
    pub sample: String,
    /// One sample window starts every this long; the host side (eBPF) is recorded throughout.
    #[arg(long, default_value = "60s")]
    pub period: String,
    /// The flight recorder's directory (created 0700): rotating trace segments and trigger traces.
    #[arg(long, default_value = "/var/lib/ghostprof/watch")]
    pub dir: PathBuf,
    /// Hard cap on the bytes the recorder's files hold (oldest deleted first): e.g. 2GiB, 500MiB.
    #[arg(long, default_value = "2GiB")]
    pub max_disk: String,
    /// Files older than this are deleted (e.g. 24h, 30m).
    #[arg(long, default_value = "24h")]
    pub max_age: String,
    /// The Prometheus endpoint (GET /metrics). Loopback by default; another address exposes it.
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub listen: SocketAddr,
    /// No Prometheus endpoint.
    #[arg(long)]
    pub no_listen: bool,
    /// The root-only Unix socket `ghostprof watch trigger` talks to (mode 0600).
    #[arg(long, default_value = control::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// No trigger socket (SIGUSR1 still triggers).
    #[arg(long)]
    pub no_socket: bool,
    /// A trigger's trace reaches back this far (whole segments).
    #[arg(long, default_value = "5m")]
    pub before: String,
    /// A trigger's trace runs this long after it, with the device timeline on.
    #[arg(long, default_value = "10s")]
    pub after: String,
    /// Trigger when a GPU spends more than this percentage of a sample window in comm.wait.
    #[arg(long, value_name = "PERCENT")]
    pub comm_wait_above: Option<f64>,
    /// Trigger when one rank arrives last at this many consecutive collectives of a window.
    #[arg(long, value_name = "K")]
    pub straggler_collectives: Option<u32>,
    /// Trigger when a GPU's MFU falls below this fraction (0-1) of its running median.
    #[arg(long, value_name = "FRACTION")]
    pub mfu_below: Option<f64>,
    /// An automatic trigger of one kind fires at most once in this long.
    #[arg(long, default_value = "10m")]
    pub cooldown: String,
    /// Stop after this long (default: until SIGINT or SIGTERM).
    #[arg(long)]
    pub duration: Option<String>,
    /// eBPF and the rings of jobs started with CUDA_INJECTION64_PATH only: never ptrace a job
    /// nor load anything into it. Without it, watch loads its CUPTI library into each followed
    /// CUDA process started without it, at each sample window (as `attach` does).
    #[arg(long)]
    pub no_inject: bool,
    /// Keep the per-launch probes (`cuLaunchKernel` and its kin) placed between sample windows
    /// too, so that the flight recorder's host segments hold every launch. By default they are
    /// placed only for the sample windows and triggers: each costs a launch a kernel trap
    /// (~0.6-0.8 µs), 3% of a launch-bound job's step (docs/performance.md).
    #[arg(long)]
    pub launches_always: bool,
    /// No log lines on stderr (triggers, pauses, notes); errors are still printed.
    #[arg(long)]
    pub quiet: bool,
}

/// `ghostprof watch`'s subcommands.
#[derive(Subcommand, Debug)]
pub enum WatchAction {
    /// Ask the running watch (as root) for a trace of the last minutes and the next seconds.
    Trigger {
        /// Why (kept in the trace's note): letters, digits, space, `.-_`.
        reason: Vec<String>,
        /// The running watch's control socket.
        #[arg(long, default_value = control::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
}

/// Parses `2GiB`, `500MiB`, `64KiB`, `1G`, `10M` or plain bytes.
pub fn parse_size(s: &str) -> anyhow::Result<u64> {
    let t = s.trim();
    let i = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
    let (num, unit) = t.split_at(i);
    let n: f64 = num.parse().with_context(|| format!("bad size {s:?}: use e.g. 2GiB, 500MiB, 1G"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" | "k" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "T" | "TiB" => 1 << 40,
        _ => bail!("bad size {s:?}: use e.g. 2GiB, 500MiB, 1G"),
    };
    let v = n * mult as f64;
    if !v.is_finite() || v < 1.0 || v > u64::MAX as f64 {
        bail!("bad size {s:?}: it must be positive");
    }
    Ok(v as u64)
}

/// Runs `ghostprof watch` (or its `trigger`).
pub fn run(cfg: &WatchCliConfig) -> anyhow::Result<ExitCode> {
    if let Some(WatchAction::Trigger { reason, socket }) = &cfg.action {
        let answer = control::send_trigger(socket, &reason.join(" "))?;
        if let Some(e) = answer.strip_prefix("error: ") {
            bail!("{e}");
        }
        super::say(&format!("ghostprof: {answer}"));
        return Ok(ExitCode::SUCCESS);
    }
    // Arguments first, as bad arguments.
    let mut w = WatchConfig::new(cfg.dir.clone());
    w.sample = parse_duration(&cfg.sample)?;
    w.period = parse_duration(&cfg.period)?;
    if w.sample > w.period {
        bail!(
            "--sample ({}) is longer than --period ({}): give a sample window shorter than the period",
            cfg.sample,
            cfg.period
        );
    }
    w.max_disk = parse_size(&cfg.max_disk)?;
    if w.max_disk < watch::recorder::MIN_MAX_DISK {
        bail!("--max-disk {} is below the 64KiB minimum", cfg.max_disk);
    }
    w.max_age = parse_duration(&cfg.max_age)?;
    w.triggers.before = parse_duration(&cfg.before)?;
    w.triggers.after = parse_duration(&cfg.after)?;
    w.triggers.cooldown = parse_duration(&cfg.cooldown)?;
    if let Some(p) = cfg.comm_wait_above {
        if !(0.0..=100.0).contains(&p) {
            bail!("--comm-wait-above {p}: give a percentage between 0 and 100");
        }
        w.triggers.comm_wait_above = Some(p / 100.0);
    }
    if let Some(f) = cfg.mfu_below {
        if !(0.0..=1.0).contains(&f) {
            bail!("--mfu-below {f}: give a fraction between 0 and 1 (0.7: below 70% of the median)");
        }
        w.triggers.mfu_below_median = Some(f);
    }
    if cfg.straggler_collectives == Some(0) {
        bail!("--straggler-collectives 0: give at least 1");
    }
    w.triggers.straggler_collectives = cfg.straggler_collectives;
    w.max_duration = cfg.duration.as_deref().map(parse_duration).transpose()?;
    w.scope = match (cfg.pid, &cfg.cgroup) {
        (Some(p), _) => {
            if p <= 1 {
                bail!("--pid {p}: its tree is the whole machine; leave --pid out to follow every CUDA process");
            }
            Scope::Tree(p)
        }
        (None, Some(cg)) => Scope::Cgroup(cg.clone()),
        (None, None) => Scope::All,
    };
    w.listen = (!cfg.no_listen).then_some(cfg.listen);
    w.socket = (!cfg.no_socket).then(|| cfg.socket.clone());
    if let Some(dir) = std::env::var_os("GHOSTPROF_RING_DIR") {
        w.ring_dir = PathBuf::from(dir);
    }
    w.launches_always = cfg.launches_always;
    if !cfg.no_inject {
        w.inject_library = crate::record::session::find_inject_lib();
    }
    require_root()?;
    // SAFETY: installing an async-signal-safe handler (atomics and _exit only).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut());
        libc::sigaction(libc::SIGTERM, &sa, std::ptr::null_mut());
    }
    let quiet = cfg.quiet;
    if !quiet {
        super::say(&format!(
            "ghostprof: watching {}; device timeline {} of every {}; segments in {} (at most {}){}",
            match &w.scope {
                Scope::All => "every CUDA process".to_string(),
                Scope::Tree(p) => format!("process {p} and its descendants"),
                Scope::Cgroup(c) => format!("cgroup {c}"),
            },
            cfg.sample,
            cfg.period,
            w.dir.display(),
            cfg.max_disk,
            w.listen.map(|a| format!("; metrics on http://{a}/metrics")).unwrap_or_default()
        ));
        if w.listen.is_some_and(|a| !a.ip().is_loopback()) {
            super::say("ghostprof: note: the metrics endpoint is reachable from other hosts (--listen is not a loopback address)");
        }
    }
    let mut log = |line: &str| {
        if !quiet {
            super::say(&format!("ghostprof: {line}"));
        }
    };
    if !cfg.no_inject && w.inject_library.is_none() {
        log("no libghostprof_inject.so next to ghostprof (set GHOSTPROF_INJECT_LIB): processes started without CUDA_INJECTION64_PATH are followed with eBPF only");
    }
    let summary = watch::watch(&w, &STOP, &mut log)?;
    if !quiet {
        super::say(&format!(
            "ghostprof: watch stopped: {} sample windows, {} processes followed, {} trigger traces, {} old files deleted",
            summary.windows,
            summary.followed,
            summary.triggers.len(),
            summary.deleted
        ));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_parse_and_bad_ones_are_refused() {
        assert_eq!(super::parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(super::parse_size("500MiB").unwrap(), 500 << 20);
        assert_eq!(super::parse_size("1.5K").unwrap(), 1536);
        assert_eq!(super::parse_size("4096").unwrap(), 4096);
        for bad in ["", "GiB", "-1G", "2XB", "0"] {
            assert!(super::parse_size(bad).is_err(), "{bad}");
        }
    }
}
