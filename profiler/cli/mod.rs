//! The command line: the only module that knows clap. Each subcommand's arguments become a
//! plain config struct before anything else runs.

mod demo;
mod export;
mod info;
mod record;
mod report;

use std::path::PathBuf;
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
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Launch a command under the profiler and record it to a trace file.
    #[command(
        after_help = "EXAMPLES:\n    sudo ghostprof record -o run.gptrace -- torchrun --nproc-per-node 8 train.py\n    sudo ghostprof record --duration 30s -- python train.py"
    )]
    Record {
        /// Output trace file.
        #[arg(short, long, default_value = "ghostprof.gptrace")]
        output: PathBuf,
        /// Stop after this long (e.g. 30s, 5m); default: until the command exits.
        #[arg(long)]
        duration: Option<String>,
        /// Overwrite an existing output file.
        #[arg(long)]
        force: bool,
        /// No status line or summary; only errors, notes and the report.
        #[arg(long)]
        quiet: bool,
        /// Also look for libcuda / libnccl here before the command starts.
        #[arg(long = "lib-dir")]
        lib_dir: Vec<PathBuf>,
        /// The command to run, after `--`.
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Attach to a running job (its processes and threads) and record it.
    #[command(after_help = "EXAMPLES:\n    sudo ghostprof attach --pid 4242 --duration 60s -o live.gptrace")]
    Attach {
        /// Process id of the job (or of its launcher, e.g. torchrun).
        #[arg(long)]
        pid: u32,
        #[arg(long)]
        duration: Option<String>,
        #[arg(short, long, default_value = "ghostprof.gptrace")]
        output: PathBuf,
        #[arg(long)]
        force: bool,
        /// No status line or summary; only errors, notes and the report.
        #[arg(long)]
        quiet: bool,
    },
    /// Analyze trace files: busy vs useful (MFU) and the breakdown of the difference.
    #[command(
        after_help = "EXAMPLES:\n    ghostprof report run.gptrace\n    ghostprof report --json rank0.gptrace rank1.gptrace\n    ghostprof report --step-regex '^multi_tensor_apply' --bin 10ms run.gptrace\n    ghostprof report --flops-per-step 3.2e15 --gpu H100 --dtype bf16 run.gptrace"
    )]
    Report {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Without NVTX step ranges: a step starts at each kernel whose name matches this regex.
        #[arg(long = "step-regex", value_name = "RE")]
        step_regex: Option<String>,
        /// Width of the timeline bins (e.g. 1us, 500us, 10ms); default: the window in 200 bins.
        #[arg(long, value_name = "DURATION")]
        bin: Option<String>,
        /// Model FLOPs of one step (e.g. 6 x params x tokens): the FLOP source when the trace has no PM samples.
        #[arg(long = "flops-per-step", value_name = "F")]
        flops_per_step: Option<f64>,
        /// Peak FLOP/s of one device (overrides the built-in table).
        #[arg(long = "peak-flops", value_name = "F")]
        peak_flops: Option<f64>,
        /// GPU model for the built-in peak table (A100, H100 SXM, H100 PCIe, H200, B200, L4, L40S, MI300X).
        #[arg(long)]
        gpu: Option<String>,
        /// Data type for the built-in peak table: bf16, fp16, tf32 or fp8.
        #[arg(long, default_value = "bf16")]
        dtype: String,
        /// Also write a self-contained HTML report here.
        #[arg(long)]
        html: Option<PathBuf>,
    },
    /// Convert a trace to another format (Chrome trace JSON for Perfetto and HTA).
    #[command(
        after_help = "EXAMPLES:\n    ghostprof export --format chrome run.gptrace -o run.json\n    ghostprof export run.gptrace -o traces/        one file per rank, for HTA"
    )]
    Export {
        file: PathBuf,
        /// Output format (chrome: Chrome trace event JSON, as PyTorch's profiler writes).
        #[arg(long, default_value = "chrome")]
        format: String,
        /// Output file; a directory (existing, or ending in /) gets one file per process.
        #[arg(short, long)]
        output: PathBuf,
        /// Only this process.
        #[arg(long)]
        pid: Option<u32>,
    },
    /// Show a trace file's header, time span, record counts, drops and sizes.
    #[command(
        after_help = "EXAMPLES:\n    ghostprof info run.gptrace\n    ghostprof info --json run.gptrace | jq .records"
    )]
    Info {
        file: PathBuf,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        /// Also join eBPF launch records to CUPTI kernel records (reads every record).
        #[arg(long)]
        join: bool,
        /// Decompress and decode every chunk (checking every frame's checksum); one line per
        /// damaged chunk, exit status 1 if any.
        #[arg(long)]
        verify: bool,
    },
    /// Run a simulated multi-rank training job with a straggler under the profiler (no GPU needed).
    Demo {
        /// Where to put the trace and the HTML report.
        #[arg(long, default_value = "ghostprof-demo")]
        dir: PathBuf,
    },
}

/// Parses the command line, runs the subcommand and turns errors into a message and exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info { file, json, join, verify } => info::run(&info::InfoConfig { path: file, json, join, verify }),
        Command::Record { output, duration, force, quiet, lib_dir, cmd } => (|| {
            let duration = duration.as_deref().map(record::parse_duration).transpose()?;
            record::run(&record::RecordConfig { output, duration, force, quiet, command: cmd, library_dirs: lib_dir })
        })(),
        Command::Attach { pid, duration, output, force, quiet } => (|| {
            let duration = duration.as_deref().map(record::parse_duration).transpose()?;
            record::run_attach(&record::AttachCliConfig { pid, output, duration, force, quiet })
        })(),
        Command::Report { files, json, html, step_regex, bin, flops_per_step, peak_flops, gpu, dtype } => {
            report::run(&report::ReportConfig {
                files,
                json,
                html,
                step_regex,
                bin,
                flops_per_step,
                peak_flops,
                gpu,
                dtype,
            })
        }
        Command::Export { file, format, output, pid } => {
            export::run(&export::ExportConfig { file, format, output, pid })
        }
        Command::Demo { dir } => demo::run(&demo::DemoConfig { dir }),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ghostprof: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
