//! Reports: the terminal summary and the JSON document (schema: docs/report-schema.md) of the
//! accounting of one or more trace files.

pub mod chrome;
pub mod html;

use std::collections::HashMap;
use std::path::Path;

use serde_json::{json, Value};

use crate::analyze::{account, AccountOptions, DeviceAccount, CATEGORY_NAMES};
use crate::trace::{RecordBatch, TraceError, TraceReader};

/// The accounts of one trace file.
pub struct FileReport {
    pub path: String,
    pub accounts: Vec<DeviceAccount>,
    pub warnings: Vec<String>,
}

/// A whole trace in memory: records, string table (id → string), the reader's warnings.
pub type Loaded = (RecordBatch, HashMap<u32, String>, Vec<String>);

/// Every record of `path` and its string table, and the reader's warnings.
pub fn load(path: &Path) -> Result<Loaded, TraceError> {
    let reader = TraceReader::open(path)?;
    let mut names = HashMap::new();
    let mut batch = RecordBatch::default();
    reader.for_each_chunk(|c| {
        names.extend(c.strings.iter().cloned());
        batch.append(c.records.clone());
    })?;
    Ok((batch, names, reader.warnings().to_vec()))
}

/// Reads `path` and accounts every device of every process over its own active window (first
/// to last device operation or launch of that process).
pub fn analyze_file(path: &Path) -> Result<FileReport, TraceError> {
    let (batch, names, warnings) = load(path)?;
    let mut opts = AccountOptions::default();
    let mut windows: HashMap<u32, (u64, u64)> = HashMap::new();
    let spans = batch
        .kernels
        .iter()
        .map(|k| (k.pid, k.start_ns, k.end_ns))
        .chain(batch.memops.iter().map(|m| (m.pid, m.start_ns, m.end_ns)))
        .chain(batch.launches.iter().map(|l| (l.pid, l.time_ns, l.time_ns)));
    for (pid, s, e) in spans {
        let w = windows.entry(pid).or_insert((s, e));
        w.0 = w.0.min(s);
        w.1 = w.1.max(e);
    }
    opts.windows = windows;
    let accounts = account(&batch, &names, &opts);
    Ok(FileReport { path: path.display().to_string(), accounts, warnings })
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

/// The terminal summary.
pub fn render_text(reports: &[FileReport]) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    for r in reports {
        let _ = writeln!(o, "{}", r.path);
        if r.accounts.is_empty() {
            let _ = writeln!(o, "  no device activity in this trace (was the CUPTI injection library loaded?)");
        }
        for a in &r.accounts {
            let w = a.window_ns().max(1) as f64;
            match (a.mfu(), a.divergence()) {
                (Some(mfu), Some(div)) => {
                    let _ = writeln!(
                        o,
                        "GPU {} (pid {}) busy {} vs MFU {}: {:.1} points of divergence",
                        a.device,
                        a.pid,
                        pct(a.busy()),
                        pct(mfu),
                        div * 100.0
                    );
                }
                _ => {
                    let _ = writeln!(
                        o,
                        "GPU {} (pid {}) busy {}; MFU needs a FLOP source (PM sampling, per-kernel FLOPs or --flops-per-step)",
                        a.device,
                        a.pid,
                        pct(a.busy())
                    );
                }
            }
            let _ = writeln!(o, "  window {:.3} ms, FLOP source: {}", w / 1e6, a.flop_source.name());
            for name in CATEGORY_NAMES {
                let ns = a.categories.get(name);
                let _ = writeln!(o, "  {name:<20} {:>7}  {:>12.3} ms", pct(ns as f64 / w), ns as f64 / 1e6);
            }
        }
        for warning in &r.warnings {
            let _ = writeln!(o, "  warning: {warning}");
        }
    }
    o
}

/// The JSON document (docs/report-schema.md).
pub fn render_json(reports: &[FileReport]) -> Value {
    let devices: Vec<Value> = reports
        .iter()
        .flat_map(|r| {
            r.accounts.iter().map(move |a| {
                let w = a.window_ns().max(1) as f64;
                let fractions: serde_json::Map<String, Value> =
                    CATEGORY_NAMES.iter().map(|n| (n.to_string(), json!(a.categories.get(n) as f64 / w))).collect();
                let ns: serde_json::Map<String, Value> =
                    CATEGORY_NAMES.iter().map(|n| (n.to_string(), json!(a.categories.get(n)))).collect();
                json!({
                    "file": r.path,
                    "pid": a.pid,
                    "device": a.device,
                    "window_start_ns": a.window_start_ns,
                    "window_end_ns": a.window_end_ns,
                    "busy": a.busy(),
                    "busy_ns": a.busy_ns,
                    "mfu": a.mfu(),
                    "divergence": a.divergence(),
                    "flop_source": a.flop_source.name(),
                    "categories": fractions,
                    "categories_ns": ns,
                })
            })
        })
        .collect();
    let mut ranks: Vec<u32> = reports.iter().flat_map(|r| r.accounts.iter().map(|a| a.pid)).collect();
    ranks.sort_unstable();
    ranks.dedup();
    json!({
        "schema": "ghostprof.report.v1",
        "devices": devices,
        "ranks": ranks,
        "warnings": reports.iter().flat_map(|r| r.warnings.clone()).collect::<Vec<_>>(),
    })
}
