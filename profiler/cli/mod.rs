//! The command line: the only module that knows clap. Each subcommand's arguments are one
//! `#[derive(Args)]` struct in its module, used directly as that subcommand's configuration;
//! the library's configurations (`LaunchConfig`, `AttachConfig`, `ChromeOptions`, ...) are
//! plain structs built from it, so nothing past this module imports clap.

mod demo;
mod export;
mod info;
mod record;
mod report;
mod watch;

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

const EXAMPLES: &str = "\
EXAMPLES:
    ghostprof demo                                 simulated multi-rank job, report and HTML (no GPU needed)
    sudo ghostprof record -o run.gptrace -- torchrun --nproc-per-node 8 train.py
    sudo ghostprof attach --pid 4242 --duration 60s -o live.gptrace
    ghostprof report run.gptrace                   where the busy-vs-useful gap went
    ghostprof info --json run.gptrace              header, counts, drops and sizes of a trace
    ghostprof export --format chrome run.gptrace -o run.json";

/// ghostprof: how far your GPUs' busy time diverges from useful time, and where it went.
#[derive(Parser, Debug)]
#[command(name = "ghostprof", version, about, after_help = EXAMPLES)]
pub struct Cli {
    /// The subcommand and its arguments.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands; each one's arguments are its module's config struct (`derive(Args)`).
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Launch a command under the profiler and record it to a trace file.
    #[command(
        after_help = "EXAMPLES:\n    sudo ghostprof record -o run.gptrace -- torchrun --nproc-per-node 8 train.py\n    sudo ghostprof record --duration 30s -- python train.py"
    )]
    Record(record::RecordConfig),
    /// Attach to a running job (its processes and threads) and record it.
    #[command(after_help = "EXAMPLES:\n    sudo ghostprof attach --pid 4242 --duration 60s -o live.gptrace")]
    Attach(record::AttachCliConfig),
    /// Analyze trace files: busy vs useful (MFU) and the breakdown of the difference.
    #[command(
        after_help = "EXAMPLES:\n    ghostprof report run.gptrace\n    ghostprof report --json rank0.gptrace rank1.gptrace\n    ghostprof report --step-regex '^multi_tensor_apply' --bin 10ms run.gptrace\n    ghostprof report --flops-per-step 3.2e15 --gpu H100 --dtype bf16 run.gptrace"
    )]
    Report(report::ReportConfig),
    /// Convert a trace to another format (Chrome trace JSON for Perfetto and HTA).
    #[command(
        after_help = "EXAMPLES:\n    ghostprof export --format chrome run.gptrace -o run.json\n    ghostprof export run.gptrace -o traces/        one file per rank, for HTA"
    )]
    Export(export::ExportConfig),
    /// Show a trace file's header, time span, record counts, drops and sizes.
    #[command(
        after_help = "EXAMPLES:\n    ghostprof info run.gptrace\n    ghostprof info --json run.gptrace | jq .records"
    )]
    Info(info::InfoConfig),
    /// Run a simulated multi-rank training job with a straggler under the profiler (no GPU needed).
    Demo(demo::DemoConfig),
    /// Always on: follow every CUDA process, sample the device timeline, keep a flight recorder, serve Prometheus metrics.
    #[command(
        after_help = "EXAMPLES:\n    sudo ghostprof watch --dir /var/lib/ghostprof/watch --max-disk 2GiB --comm-wait-above 20\n    sudo ghostprof watch trigger loss spike"
    )]
    Watch(Box<watch::WatchCliConfig>),
}

/// Exit status when stdout is a pipe whose reader left (`ghostprof info T | head -1`):
/// 128 + SIGPIPE, what a shell reports for `cat` in the same place; nothing is printed.
pub const BROKEN_PIPE: u8 = 141;

/// Prints report text to stdout, its control characters escaped (the last guard: fields of job
/// text are escaped where they are formatted). A reader that left is an error
/// ([`BROKEN_PIPE`]), not a panic.
pub(crate) fn out(text: &str) -> anyhow::Result<()> {
    let mut o = std::io::stdout().lock();
    o.write_all(crate::units::escape_lines(text).as_bytes())?;
    o.flush()?;
    Ok(())
}

/// Prints JSON to stdout with [`crate::units::escape_json`]: still the same JSON to a reader.
pub(crate) fn out_json(text: &str) -> anyhow::Result<()> {
    let mut o = std::io::stdout().lock();
    o.write_all(crate::units::escape_json(text).as_bytes())?;
    o.flush()?;
    Ok(())
}

/// A writer of streamed JSON that escapes as [`out_json`] does; a UTF-8 sequence cut between
/// two writes waits for its end.
pub(crate) struct JsonSafe<W: Write> {
    inner: W,
    tail: Vec<u8>,
}

impl<W: Write> JsonSafe<W> {
    pub(crate) fn new(inner: W) -> Self {
        JsonSafe { inner, tail: Vec::new() }
    }
}

impl<W: Write> Write for JsonSafe<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tail.extend_from_slice(buf);
        let (text, rest) = match std::str::from_utf8(&self.tail) {
            Ok(t) => (t, 0),
            // Incomplete at the end: keep those bytes for the next write.
            Err(e) if e.error_len().is_none() => {
                let n = e.valid_up_to();
                (std::str::from_utf8(&self.tail[..n]).unwrap_or_default(), self.tail.len() - n)
            }
            // Not UTF-8 (serde_json never writes that): passed through as it is.
            Err(_) => {
                self.inner.write_all(&self.tail)?;
                self.tail.clear();
                return Ok(buf.len());
            }
        };
        self.inner.write_all(crate::units::escape_json(text).as_bytes())?;
        let keep = self.tail.len() - rest;
        self.tail.drain(..keep);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Prints one line to stderr, escaped; a closed stderr is ignored (there is nowhere to say so).
pub(crate) fn say(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{}", crate::units::escape_lines(line));
}

/// True when the error is a write to a closed pipe.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            || c.downcast_ref::<serde_json::Error>()
                .is_some_and(|j| j.io_error_kind() == Some(std::io::ErrorKind::BrokenPipe))
    })
}

/// An error and its causes as one line: a cause whose words are already in the line (an I/O
/// error quoted by its context) is not repeated; the job's text in it is escaped.
pub fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    crate::units::escape_text(&line).into_owned()
}

/// Parses the command line, runs the subcommand and turns errors into a message and exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Info(cfg) => info::run(cfg),
        Command::Record(cfg) => record::run(cfg),
        Command::Attach(cfg) => record::run_attach(cfg),
        Command::Report(cfg) => report::run(cfg),
        Command::Export(cfg) => export::run(cfg),
        Command::Demo(cfg) => demo::run(cfg),
        Command::Watch(cfg) => watch::run(cfg),
    };
    match result {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::from(BROKEN_PIPE),
        Err(e) => {
            say(&format!("ghostprof: error: {}", error_line(&e)));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_error_line_does_not_repeat_its_cause() {
        let io = std::io::Error::new(std::io::ErrorKind::InvalidInput, "is a directory");
        let e = anyhow::Error::new(crate::trace::TraceError::io("/tmp/d", io));
        assert_eq!(super::error_line(&e), "/tmp/d: is a directory");
        let e = anyhow::anyhow!("inner \x1b[2J").context("outer");
        assert_eq!(super::error_line(&e), "outer: inner \\x1b[2J");
    }

    #[test]
    fn streamed_json_is_escaped_across_cut_writes() {
        use std::io::Write;
        let json = "{\"k\": \"µ\u{9b}x\u{202e}y\u{7f}\"}";
        let bytes = json.as_bytes();
        for cut in 0..bytes.len() {
            let mut out = Vec::new();
            let mut w = super::JsonSafe::new(&mut out);
            w.write_all(&bytes[..cut]).unwrap();
            w.write_all(&bytes[cut..]).unwrap();
            let text = String::from_utf8(out).unwrap();
            assert_eq!(text, r#"{"k": "µ\u009bx\u202ey\u007f"}"#, "cut at {cut}");
        }
    }
}
