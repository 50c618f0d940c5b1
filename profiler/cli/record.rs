//! `ghostprof record -- CMD` and `ghostprof attach --pid P`: a session under both collectors,
//! with a live status line, Ctrl-C handling and the report at the end.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;

use crate::analyze::analyze_file;
use crate::record::attach::{attach, AttachConfig};
use crate::record::progress::Progress;
use crate::record::session::{record_command_with_progress, LaunchConfig, SessionError, SessionSummary};
use crate::report::render_text;
use crate::units::escape_text;

/// `ghostprof record`'s arguments, used as its configuration (the library's
/// [`LaunchConfig`] is built from it).
#[derive(Args, Debug)]
pub struct RecordConfig {
    /// Output trace file.
    #[arg(short, long, default_value = "ghostprof.gptrace")]
    pub output: PathBuf,
    /// Stop after this long (e.g. 30s, 5m); default: until the command exits.
    #[arg(long)]
    pub duration: Option<String>,
    /// Overwrite an existing output file.
    #[arg(long)]
    pub force: bool,
    /// No status line or summary; only errors, notes and the report.
    #[arg(long)]
    pub quiet: bool,
    /// Also look for libcuda / libnccl here before the command starts.
    #[arg(long = "lib-dir")]
    pub lib_dir: Vec<PathBuf>,
    /// eBPF collectors only: no CUPTI injection library in the command (no device timeline).
    #[arg(long = "no-cupti")]
    pub no_cupti: bool,
    /// Keep the per-launch uprobes (`cuLaunchKernel` and its kin) placed throughout. By
    /// default they are removed while every process using the GPU has CUPTI reporting its
    /// launches (its launch records stand for them): each probe costs a launch a kernel trap,
    /// 3% of a launch-bound job's step (docs/performance.md).
    #[arg(long)]
    pub launches_always: bool,
    /// The command to run, after `--`.
    #[arg(last = true, required = true)]
    pub cmd: Vec<String>,
}

static STOP: AtomicBool = AtomicBool::new(false);
static SIGNALS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_signal(_: libc::c_int) {
    // The first signal asks for a clean stop (finalize the file); a second one leaves at once:
    // every chunk already written stays readable.
    if SIGNALS.fetch_add(1, Ordering::SeqCst) >= 1 {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(130) };
    }
    STOP.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() {
    // SAFETY: installing an async-signal-safe handler (atomics and _exit only).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut());
        libc::sigaction(libc::SIGTERM, &sa, std::ptr::null_mut());
    }
}

/// Fails with the capability message unless the process can load eBPF programs.
pub fn require_root() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "recording needs CAP_BPF and CAP_PERFMON (and CAP_SYS_ADMIN on older kernels) to load eBPF programs: run it as root, e.g. `sudo ghostprof ...`"
        );
    }
    crate::collect::preflight()?;
    Ok(())
}

/// The invoking user under sudo, to run the command as and to own the trace.
pub fn sudo_user() -> Option<(u32, u32)> {
    crate::outfile::sudo_owner()
}

/// Parses `30s`, `5m`, `1h`, `250ms` or plain seconds.
pub fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let s = s.trim();
    let (num, unit) = s.find(|c: char| !c.is_ascii_digit() && c != '.').map_or((s, ""), |i| s.split_at(i));
    let n: f64 = num.parse().with_context(|| format!("bad duration {s:?}: use e.g. 30s, 5m, 1h, 250ms"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1e3,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => bail!("bad duration {s:?}: use e.g. 30s, 5m, 1h, 250ms"),
    };
    if !secs.is_finite() || secs <= 0.0 {
        bail!("bad duration {s:?}: it must be positive");
    }
    // Beyond ~5.8e11 years a Duration overflows (from_secs_f64 would panic).
    Duration::try_from_secs_f64(secs).map_err(|_| anyhow::anyhow!("bad duration {s:?}: too long; use e.g. 30s, 5m, 1h"))
}

fn status_line(p: &Progress) -> String {
    format!(
        "recording {:>5.1}s | {:>9.0} events/s | {:>8} events | {:>6.1} MiB | {} drops | {} processes, {} with CUPTI",
        p.elapsed.as_secs_f64(),
        p.records_per_s,
        p.records_written,
        p.bytes_written as f64 / (1 << 20) as f64,
        p.drops,
        p.processes,
        p.cupti_rings
    )
}

/// Exit status after a Ctrl-C (or SIGTERM): 128 + SIGINT, as a shell reports an interrupted
/// command.
pub const INTERRUPTED: u8 = 130;

/// Refuses an output path that is a symlink (the writer also opens with O_NOFOLLOW; this says
/// so before anything starts, with or without --force).
fn refuse_symlink(output: &Path) -> anyhow::Result<()> {
    if let Ok(meta) = std::fs::symlink_metadata(output) {
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(output).map(|t| t.display().to_string()).unwrap_or_default();
            bail!(
                "{} is a symlink (to {target}): ghostprof never writes a trace through a symlink; give the real path",
                output.display()
            );
        }
    }
    Ok(())
}

/// The exit status of `record`: the command's own status when it ran to its end under the
/// recording, 130 after Ctrl-C, 0 when `--duration` ended the recording first.
fn exit_code(summary: &SessionSummary) -> ExitCode {
    if STOP.load(Ordering::SeqCst) {
        return ExitCode::from(INTERRUPTED);
    }
    match summary.exit_status {
        Some(status) => {
            use std::os::unix::process::ExitStatusExt;
            let code = status.code().or_else(|| status.signal().map(|s| 128 + s)).unwrap_or(1);
            ExitCode::from(code.clamp(0, 255) as u8)
        }
        None => ExitCode::SUCCESS,
    }
}

pub fn run(cfg: &RecordConfig) -> anyhow::Result<ExitCode> {
    // Said before anything else, as a bad argument.
    let duration = cfg.duration.as_deref().map(parse_duration).transpose()?;
    require_root()?;
    refuse_symlink(&cfg.output)?;
    crate::outfile::check_output(&cfg.output, cfg.force)?;
    install_signal_handlers();
    let mut launch = LaunchConfig::new(cfg.cmd.clone(), cfg.output.clone());
    launch.overwrite = cfg.force;
    launch.max_duration = duration;
    launch.run_as = sudo_user();
    launch.library_dirs = cfg.lib_dir.clone();
    if cfg.no_cupti {
        launch.inject_lib = None;
    }
    launch.launches_always = cfg.launches_always;
    let summary = with_status_line(cfg.quiet, |progress| record_command_with_progress(&launch, &STOP, progress));
    let summary = summary.map_err(|e| one_line(e, &format!("recording to {}", cfg.output.display())))?;
    print_summary(&summary, &cfg.output, cfg.quiet);
    super::out(&render_text(&[analyze_file(&cfg.output)?]))?;
    Ok(exit_code(&summary))
}

/// A session error as one line: its own message already holds its cause (no repeated source
/// chain), and file errors already name the file (no context in front of them).
fn one_line(e: SessionError, context: &str) -> anyhow::Error {
    match e {
        SessionError::Trace(_) | SessionError::WriteFailed { .. } => anyhow::anyhow!("{e}"),
        _ => anyhow::anyhow!("{context}: {e}"),
    }
}

/// Runs a session with a live status line on stderr (unless `quiet`).
fn with_status_line<T>(quiet: bool, session: impl FnOnce(&mut dyn FnMut(&Progress)) -> T) -> T {
    let bar = (!quiet).then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        bar
    });
    let result = session(&mut |p| {
        if let Some(bar) = &bar {
            bar.set_message(status_line(p));
            bar.tick();
        }
    });
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    result
}

fn print_summary(summary: &SessionSummary, output: &std::path::Path, quiet: bool) {
    if quiet {
        // No summary line, but what the user must know (CUPTI held by another profiler, PM
        // sampling off, …) is said even to scripts.
        for note in &summary.notes {
            super::say(&format!("ghostprof: note: {}", escape_text(note)));
        }
        return;
    }
    let drops: u64 = summary.pipeline.drops.iter().fold(0u64, |a, d| a.saturating_add(d.2));
    super::say(&format!(
        "ghostprof: wrote {} ({} events in {} chunks, {:.1} MiB, {} dropped); {}",
        escape_text(&output.display().to_string()),
        summary.write.records,
        summary.write.chunks,
        summary.write.compressed_bytes as f64 / (1 << 20) as f64,
        drops,
        match (summary.exit_status, STOP.load(Ordering::SeqCst)) {
            (Some(s), _) => format!("command exited: {s}"),
            (None, true) => format!("stopped by Ctrl-C; the job goes on (pid {})", summary.job_pid),
            (None, false) => format!("the job goes on (pid {})", summary.job_pid),
        }
    ));
    for note in &summary.notes {
        super::say(&format!("ghostprof: note: {}", escape_text(note)));
    }
}

/// `ghostprof attach`'s arguments, used as its configuration (the library's [`AttachConfig`]
/// is built from it).
#[derive(Args, Debug)]
pub struct AttachCliConfig {
    /// Process id of the job (or of its launcher, e.g. torchrun): it and every process under it.
    #[arg(long)]
    pub pid: u32,
    /// Stop after this long (e.g. 30s, 5m); default: until the job exits or Ctrl-C.
    #[arg(long)]
    pub duration: Option<String>,
    /// Output trace file.
    #[arg(short, long, default_value = "ghostprof.gptrace")]
    pub output: PathBuf,
    /// Overwrite an existing output file.
    #[arg(long)]
    pub force: bool,
    /// No status line or summary; only errors, notes and the report.
    #[arg(long)]
    pub quiet: bool,
    /// eBPF only (plus the rings of jobs started with CUDA_INJECTION64_PATH): never ptrace the
    /// job nor load anything into it. Without it, ghostprof loads its CUPTI library into every
    /// CUDA process of the tree (docs/permissions.md says exactly what that changes).
    #[arg(long)]
    pub no_inject: bool,
}

pub fn run_attach(cfg: &AttachCliConfig) -> anyhow::Result<ExitCode> {
    // Said before anything else, as a bad argument.
    let duration = cfg.duration.as_deref().map(parse_duration).transpose()?;
    require_root()?;
    refuse_symlink(&cfg.output)?;
    crate::outfile::check_output(&cfg.output, cfg.force)?;
    install_signal_handlers();
    let mut a = AttachConfig::new(cfg.pid, cfg.output.clone());
    a.overwrite = cfg.force;
    a.max_duration = duration;
    a.owner = sudo_user();
    if !cfg.no_inject {
        a.inject_library = crate::record::session::find_inject_lib();
    }
    if let Some(dir) = std::env::var_os("GHOSTPROF_RING_DIR") {
        a.ring_dir = PathBuf::from(dir);
    }
    let summary = with_status_line(cfg.quiet, |progress| attach(&a, &STOP, progress));
    let summary = summary.map_err(|e| one_line(e, &format!("attaching to process {}", cfg.pid)))?;
    print_summary(&summary, &cfg.output, cfg.quiet);
    super::out(&render_text(&[analyze_file(&cfg.output)?]))?;
    Ok(if STOP.load(Ordering::SeqCst) { ExitCode::from(INTERRUPTED) } else { ExitCode::SUCCESS })
}
