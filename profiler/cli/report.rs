//! `ghostprof report`: the analysis of trace files, as text or JSON, and as an HTML page.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};

use crate::analyze::clock_align::ClockChoice;
use crate::analyze::{analyze_files, ReportOptions};
use crate::analyze::{peak, DetailOptions};
use crate::report::{html, render_text, write_json, ReportDoc};

/// The data types of the built-in peak table (`--dtype`).
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    Bf16,
    Fp16,
    Tf32,
    Fp8,
}

impl Dtype {
    /// The name [`peak::peak_flops`] takes (one of [`peak::DTYPES`]).
    pub fn name(self) -> &'static str {
        match self {
            Dtype::Bf16 => "bf16",
            Dtype::Fp16 => "fp16",
            Dtype::Tf32 => "tf32",
            Dtype::Fp8 => "fp8",
        }
    }
}

/// How several trace files are put on one timeline (`--clock`): each trace's CLOCK_REALTIME
/// pair (NTP across hosts), or the collectives' end times (the ranks of a collective finish
/// together). (No variant docs: clap would print them as a long help.)
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clock {
    Realtime,
    Collectives,
}

/// `ghostprof report`'s arguments, used as its configuration.
#[derive(Args, Debug)]
pub struct ReportConfig {
    /// Trace files (several: the ranks of one job).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Without NVTX step ranges: a step starts at each kernel whose name matches this regex.
    #[arg(long = "step-regex", value_name = "RE")]
    pub step_regex: Option<String>,
    /// Width of the timeline bins (e.g. 1us, 500us, 10ms); default: the window in 200 bins.
    #[arg(long, value_name = "DURATION")]
    pub bin: Option<String>,
    /// Model FLOPs of one step (e.g. 6 x params x tokens): the FLOP source when the trace has no PM samples.
    #[arg(long = "flops-per-step", value_name = "F")]
    pub flops_per_step: Option<f64>,
    /// Peak FLOP/s of one device (overrides the built-in table).
    #[arg(long = "peak-flops", value_name = "F")]
    pub peak_flops: Option<f64>,
    /// GPU model for the built-in peak table (A100, H100 SXM, H100 PCIe, H200, B200, L4, L40S, MI300X).
    #[arg(long)]
    pub gpu: Option<String>,
    /// Data type for the built-in peak table: bf16, fp16, tf32 or fp8.
    #[arg(long, value_enum, default_value = "bf16", ignore_case = true, hide_possible_values = true)]
    pub dtype: Dtype,
    /// Also write a self-contained HTML report here.
    #[arg(long)]
    pub html: Option<PathBuf>,
    /// Replace an existing HTML file.
    #[arg(long)]
    pub force: bool,
    /// Align several files' clocks by realtime or collectives (default: collectives across hosts, else realtime).
    #[arg(long, value_enum, ignore_case = true)]
    pub clock: Option<Clock>,
    /// Analysis threads, the same report with any number (default: one per core).
    #[arg(long, short = 'j', value_name = "N")]
    pub jobs: Option<usize>,
}

/// A bin width: a number with a unit (ns, us/µs, ms, s), at least 1 µs.
pub fn parse_bin(s: &str) -> anyhow::Result<u64> {
    let t = s.trim();
    let i = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
    let (num, unit) = t.split_at(i);
    let n: f64 = num.parse().with_context(|| format!("bad --bin {s:?}: use e.g. 1us, 500us, 10ms, 1s"))?;
    let scale = match unit.trim() {
        "ns" => 1.0,
        "us" | "µs" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        _ => bail!("bad --bin {s:?}: give a unit (ns, us, ms, s), e.g. 10ms"),
    };
    let ns = n * scale;
    if !ns.is_finite() || ns < 1e3 {
        bail!("--bin {s:?} is below 1 µs, the finest bin the report makes");
    }
    Ok(ns.round() as u64)
}

impl ReportConfig {
    fn options(&self) -> anyhow::Result<ReportOptions> {
        let step_regex = self
            .step_regex
            .as_deref()
            .map(|re| {
                regex::Regex::new(re).map_err(|e| {
                    let why = e.to_string();
                    let why = why.lines().last().unwrap_or("").trim_start_matches("error: ").to_string();
                    anyhow::anyhow!("--step-regex {re:?} is not a valid regular expression: {why}")
                })
            })
            .transpose()?;
        let bin_ns = self.bin.as_deref().map(parse_bin).transpose()?;
        let peak_flops = match (self.peak_flops, &self.gpu) {
            (Some(p), _) if p > 0.0 && p.is_finite() => Some(p),
            (Some(p), _) => bail!("--peak-flops {p} must be a positive FLOP/s figure, e.g. 989e12"),
            (None, Some(gpu)) => Some(peak::peak_flops(gpu, self.dtype.name()).with_context(|| {
                format!(
                    "no built-in peak for GPU {gpu:?} and dtype {:?}: give --peak-flops (known GPUs: {}; dtypes: {})",
                    self.dtype.name(),
                    peak::gpus().collect::<Vec<_>>().join(", "),
                    peak::DTYPES.join(", ")
                )
            })?),
            (None, None) => None,
        };
        if let Some(f) = self.flops_per_step {
            if !(f > 0.0 && f.is_finite()) {
                bail!("--flops-per-step {f} must be positive, e.g. 6*params*tokens = 3.2e15");
            }
            if peak_flops.is_none() {
                bail!("--flops-per-step needs the device's peak: --gpu NAME [--dtype bf16] or --peak-flops F");
            }
        }
        Ok(ReportOptions {
            detail: DetailOptions {
                step_regex,
                bin_ns,
                flops_per_step: self.flops_per_step,
                peak_flops,
                ..DetailOptions::default()
            },
            clock: match self.clock {
                None => ClockChoice::Auto,
                Some(Clock::Realtime) => ClockChoice::Realtime,
                Some(Clock::Collectives) => ClockChoice::Collectives,
            },
            jobs: match self.jobs {
                Some(0) => bail!("--jobs 0: give at least 1 thread (default: one per core)"),
                Some(n) => n.min(1024),
                None => 0,
            },
        })
    }
}

pub fn run(cfg: &ReportConfig) -> anyhow::Result<ExitCode> {
    let opts = cfg.options()?;
    // The HTML file is created first: a path it cannot be written to is said before the analysis.
    let html_out = match &cfg.html {
        Some(path) => Some(crate::outfile::create_output(path, cfg.force, crate::outfile::sudo_owner())?),
        None => None,
    };
    let reports = analyze_files(&cfg.files, &opts)?;
    if cfg.json {
        // Streamed: the per-step objects of a long run are not all held at once.
        let mut out = std::io::BufWriter::new(super::JsonSafe::new(std::io::stdout().lock()));
        write_json(&reports, &mut out)?;
        writeln!(out)?;
        out.flush()?;
    } else {
        super::out(&render_text(&reports))?;
    }
    if let Some((mut file, pending)) = html_out {
        file.write_all(html::render(&ReportDoc::from_reports(&reports)).as_bytes())
            .with_context(|| format!("writing {}", pending.path().display()))?;
        drop(file);
        let shown = crate::units::escape_text(&pending.path().display().to_string()).into_owned();
        pending.commit()?;
        super::say(&format!("ghostprof: HTML report written to {shown}"));
    }
    Ok(ExitCode::SUCCESS)
}
