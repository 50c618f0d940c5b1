//! The terminal report: per device the headline (busy vs MFU), the eight categories, then
//! steps, top kernels, idle gaps and checkpoint I/O; across files the collectives, the ranks'
//! arrival skew and the straggler. Drawn from the report document ([`ReportDoc`]), with the
//! figures it keeps for this report only (per file, step nanoseconds, matched collectives).

use std::fmt::Write;

use super::model::{ClockAlignmentDoc, DeviceDoc, FileIoDoc, OffCpu, PartitionDoc, ProcessHostDoc, ReportDoc};
use super::pct;
use crate::analyze::files::FileReport;
use crate::analyze::Category;
// Job text (kernel names, notes, paths) is escaped: it must not drive the reader's terminal.
use crate::units::escape_text as esc;

/// Steps shown at each end of a long step table.
const STEP_ROWS: usize = 5;

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// Shortens a (C++) kernel name to `max` characters.
fn short(name: &str, max: usize) -> String {
    if name.chars().count() <= max {
        name.to_string()
    } else {
        format!("{}…", name.chars().take(max - 1).collect::<String>())
    }
}

fn step_row(o: &mut String, i: usize, s: &PartitionDoc, mfu_known: bool) {
    let len_ns = s.end_ns.unwrap_or(s.start_ns) - s.start_ns;
    let len = len_ns.max(1) as f64;
    let f = |c: usize| format!("{:>6.1}", s.categories_ns.0[c] as f64 * 100.0 / len);
    // Category::NAMES order: useful, inefficient, transfer, wait, other, launch-bound, stall, idle
    let mfu = if mfu_known { f(0) } else { "     -".to_string() };
    let _ = writeln!(
        o,
        "    {i:>6} {:>10.3} {:>6.1} {mfu} {} {} {} {} {} {} {} {}",
        ms(len_ns),
        s.busy_ns as f64 * 100.0 / len,
        f(0),
        f(1),
        f(2),
        f(3),
        f(4),
        f(5),
        f(6),
        f(7),
    );
}

fn device_detail(o: &mut String, d: &DeviceDoc) {
    if d.steps.is_empty() {
        let _ = writeln!(o, "  steps: none found (no NVTX step ranges, no --step-regex, no repeating kernel sequence)");
    } else {
        let n = d.steps.len();
        let mean = d.steps.iter().map(|s| s.end_ns.unwrap_or(s.start_ns) - s.start_ns).sum::<u64>() / n as u64;
        let _ = writeln!(o, "  steps ({}): {} steps, mean {:.3} ms; % of each step:", d.step_source, n, ms(mean));
        let _ = writeln!(
            o,
            "    {:>6} {:>10} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6}",
            "step", "ms", "busy", "MFU", "useful", "ineff", "xfer", "wait", "other", "launch", "stall", "idle"
        );
        for (i, s) in d.steps.iter().enumerate() {
            if n > 2 * STEP_ROWS + 2 && i == STEP_ROWS {
                let _ = writeln!(o, "    {:>6}", format!("… {} more", n - 2 * STEP_ROWS));
            }
            if n <= 2 * STEP_ROWS + 2 || i < STEP_ROWS || i >= n - STEP_ROWS {
                step_row(o, i, &s, d.mfu.is_some());
            }
        }
    }
    if !d.top_kernels.is_empty() {
        let _ = writeln!(o, "  top kernels:  count    total ms   mean µs  window  useful ms  name");
        for k in &d.top_kernels {
            let name = k.name.as_str();
            let _ = writeln!(
                o,
                "    {:>11} {:>11.3} {:>9.1} {:>7} {:>10.3}  {}",
                k.count,
                ms(k.total_ns),
                k.mean_ns / 1e3,
                pct(k.share),
                ms(k.useful_ns),
                short(&esc(name.strip_prefix("void ").unwrap_or(name)), 72)
            );
        }
    }
    if !d.top_idle_gaps.is_empty() {
        let _ = writeln!(o, "  longest idle gaps:");
        for g in &d.top_idle_gaps {
            let _ = writeln!(
                o,
                "    {:>10.3} ms at +{:.3} ms  {:<18} {}",
                ms(g.duration_ns),
                ms(g.start_ns - d.window_start_ns),
                g.category,
                g.reason
            );
        }
    }
    let c = d.checkpoint.clone().unwrap_or_default();
    let _ = writeln!(
        o,
        "  checkpoint I/O (file writes + fsync): {:.3} ms, {} of the window, {:.1} MiB written",
        ms(c.io_ns),
        pct(c.fraction),
        c.bytes as f64 / (1u64 << 20) as f64
    );
    for n in &d.notes {
        let _ = writeln!(o, "  note: {}", esc(n));
    }
}

/// Threads listed per process in the host section.
const HOST_THREAD_ROWS: usize = 8;

/// Off-CPU time by reason, most first, only the reasons with time: `sleep 12.000 ms, futex …`.
fn off_cpu_reasons(off: &OffCpu) -> String {
    let mut v: Vec<(u64, &str)> = off.by_name().map(|(name, ns)| (ns, name)).filter(|x| x.0 > 0).collect();
    v.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    v.iter().map(|(ns, name)| format!("{name} {:.3} ms", ms(*ns))).collect::<Vec<_>>().join(", ")
}

/// One line of host figures: on-CPU, off-CPU by reason, file I/O.
fn host_line(span: (u64, u64), on_cpu_ns: u64, off: &OffCpu, io: &FileIoDoc) -> String {
    let span = (span.1 - span.0).max(1) as f64;
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    let reasons = off_cpu_reasons(off);
    format!(
        "on-CPU {:.3} ms ({}), off-CPU {:.3} ms{}; file I/O: read {:.1} MiB in {:.3} ms, wrote {:.1} MiB in {:.3} ms",
        ms(on_cpu_ns),
        pct(on_cpu_ns as f64 / span),
        ms(off.0.iter().fold(0u64, |s, x| s.saturating_add(*x))),
        if reasons.is_empty() { String::new() } else { format!(" ({reasons})") },
        mib(io.read_bytes),
        ms(io.read_ns),
        mib(io.write_bytes),
        ms(io.write_ns),
    )
}

/// The host side of each process of a file, with or without devices (docs/metrics.md, "Host
/// figures").
fn host_section(o: &mut String, hosts: &[ProcessHostDoc]) {
    for p in hosts {
        let _ = writeln!(
            o,
            "host, pid {} ({} threads, {:.3} ms seen): {}",
            p.pid,
            p.threads.len(),
            ms(p.end_ns - p.start_ns),
            host_line((p.start_ns, p.end_ns), p.on_cpu_ns, &p.off_cpu_ns, &p.file_io)
        );
        if p.threads.len() > 1 {
            for t in p.threads.iter().take(HOST_THREAD_ROWS) {
                let _ = writeln!(
                    o,
                    "  thread {} ({:.3} ms seen): {}",
                    t.tid,
                    ms(t.end_ns - t.start_ns),
                    host_line((t.start_ns, t.end_ns), t.on_cpu_ns, &t.off_cpu_ns, &t.file_io)
                );
            }
            if p.threads.len() > HOST_THREAD_ROWS {
                let _ = writeln!(
                    o,
                    "  … {} more threads (report --json lists them all)",
                    p.threads.len() - HOST_THREAD_ROWS
                );
            }
        }
    }
}

/// The terminal summary.
pub fn render_text(reports: &[FileReport]) -> String {
    render_doc(&ReportDoc::from_reports(reports))
}

/// The terminal summary of a document made by [`ReportDoc::from_reports`].
/// Which alignment put the files on one timeline, and each file's fit.
fn clock_section(o: &mut String, a: &ClockAlignmentDoc) {
    match a.method.as_str() {
        "collectives" => {
            let _ = writeln!(
                o,
                "clocks aligned by the collectives' end times:   offset ms  drift ppm  residual µs  matched"
            );
            for f in &a.files {
                if f.reference {
                    let _ = writeln!(o, "  {} (reference)", esc(&f.file));
                } else {
                    let _ = writeln!(
                        o,
                        "  {} {:>+12.3} {:>+10.2} {:>12.2} {:>8}{}",
                        esc(&f.file),
                        f.offset_ns as f64 / 1e6,
                        f.drift_ppm,
                        f.residual_ns / 1e3,
                        f.matched,
                        if f.outliers > 0 { format!(" ({} outliers)", f.outliers) } else { String::new() }
                    );
                }
            }
        }
        "realtime" => {
            let _ = writeln!(o, "clocks aligned by CLOCK_REALTIME (one host, or NTP's error across hosts)");
        }
        _ => {
            let _ = writeln!(o, "clocks: each file's own CLOCK_MONOTONIC (not every file recorded CLOCK_REALTIME)");
        }
    }
}

pub fn render_doc(doc: &ReportDoc) -> String {
    let mut o = String::new();
    let (mut devices, mut hosts) = (&doc.devices[..], &doc.hosts[..]);
    for file in &doc.files {
        let (mine, rest) = devices.split_at(file.devices.min(devices.len()));
        devices = rest;
        let (my_hosts, rest) = hosts.split_at(file.hosts.min(hosts.len()));
        hosts = rest;
        let _ = writeln!(o, "{}", esc(&file.path));
        if mine.is_empty() {
            let _ = writeln!(o, "  no device activity in this trace (was the CUPTI injection library loaded?)");
        }
        for d in mine {
            let w = d.window_end_ns.saturating_sub(d.window_start_ns).max(1) as f64;
            match (d.mfu, d.divergence) {
                (Some(mfu), Some(div)) => {
                    let _ = writeln!(
                        o,
                        "GPU {} (pid {}) busy {} vs MFU {}: {:.1} points of divergence",
                        d.device,
                        d.pid,
                        pct(d.busy),
                        pct(mfu),
                        div * 100.0
                    );
                }
                _ => {
                    let _ = writeln!(
                        o,
                        "GPU {} (pid {}) busy {}; MFU needs a FLOP source (PM sampling, per-kernel FLOPs or --flops-per-step)",
                        d.device,
                        d.pid,
                        pct(d.busy)
                    );
                }
            }
            let _ = writeln!(o, "  window {:.3} ms, FLOP source: {}", w / 1e6, d.flop_source);
            for (i, name) in Category::NAMES.iter().enumerate() {
                let ns = d.categories_ns.0[i];
                let _ = writeln!(o, "  {name:<20} {:>7}  {:>12.3} ms", pct(ns as f64 / w), ns as f64 / 1e6);
            }
            device_detail(&mut o, d);
        }
        host_section(&mut o, my_hosts);
        for warning in &file.warnings {
            let _ = writeln!(o, "  warning: {}", esc(warning));
        }
        for note in &file.recording_notes {
            let _ = writeln!(o, "  recording note: {}", esc(note));
        }
        if let Some(line) = super::model::profiler_cost_line(&file.profiler_cost) {
            let _ = writeln!(o, "  {line}");
        }
    }
    if !doc.collectives.is_empty() {
        let _ = writeln!(
            o,
            "collectives (all ranks):    count     time ms  transfer ms    wait ms   busBw GB/s  algorithm"
        );
        for c in &doc.collectives {
            let _ = writeln!(
                o,
                "  {:<14} {:<12} {:>6} {:>11.3} {:>12.3} {:>10.3} {:>12.1}  {}",
                esc(&c.op),
                esc(&c.size_bucket),
                c.count,
                ms(c.time_ns),
                ms(c.transfer_ns),
                ms(c.wait_ns),
                c.bus_bandwidth_gbps,
                esc(c.algorithm.as_deref().unwrap_or("-"))
            );
        }
    }
    if let Some(a) = &doc.clock_alignment {
        clock_section(&mut o, a);
    }
    if doc.skew.iter().filter(|s| s.matched > 0).count() >= 2 {
        let _ = writeln!(o, "arrival skew at matched collectives:  mean µs    max µs  last to arrive");
        for s in doc.skew.iter().filter(|s| s.matched > 0) {
            let _ = writeln!(
                o,
                "  rank {:>3} (pid {:>7}) {:>18.1} {:>9.1} {:>6} of {}",
                s.rank,
                s.pid,
                s.mean_arrival_skew_ns / 1e3,
                s.max_arrival_skew_ns as f64 / 1e3,
                s.late_count,
                s.matched
            );
        }
        match doc.straggler.and_then(|i| doc.skew.get(i)) {
            Some(s) => {
                let _ = writeln!(
                    o,
                    "straggler: rank {} (pid {}, {}), {:.1} µs late on average; while the others waited: {}",
                    s.rank,
                    s.pid,
                    esc(&s.file),
                    s.mean_arrival_skew_ns / 1e3,
                    esc(doc.straggler_activity.as_deref().unwrap_or("unknown"))
                );
            }
            None => {
                let _ = writeln!(o, "straggler: none (every rank arrived together)");
            }
        }
    }
    o
}
