//! The terminal report: per device the headline (busy vs MFU), the eight categories, then
//! steps, top kernels, idle gaps and checkpoint I/O; across files the collectives, the ranks'
//! arrival skew and the straggler.

use std::fmt::Write;

use super::pct;
use crate::analyze::files::{cross_rank, straggler_activity, FileReport};
use crate::analyze::host::HostFigures;
use crate::analyze::{Category, DeviceAccount, DeviceDetail, Partition};
// Job text (kernel names, notes, paths) is escaped: it must not drive the reader's terminal.
use crate::trace::StallReason;
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

fn step_row(o: &mut String, i: usize, s: &Partition, a: &DeviceAccount) {
    let len = s.len_ns().max(1) as f64;
    let f = |n: &str| format!("{:>6.1}", s.categories.get(n) as f64 * 100.0 / len);
    let mfu = a.mfu().map_or("     -".to_string(), |_| f("compute.useful"));
    let _ = writeln!(
        o,
        "    {i:>6} {:>10.3} {:>6.1} {mfu} {} {} {} {} {} {} {} {}",
        ms(s.len_ns()),
        s.busy_ns as f64 * 100.0 / len,
        f("compute.useful"),
        f("compute.inefficient"),
        f("comm.transfer"),
        f("comm.wait"),
        f("other.busy"),
        f("idle.launch_bound"),
        f("idle.host_stall"),
        f("idle.other"),
    );
}

fn device_detail(o: &mut String, r: &FileReport, a: &DeviceAccount, d: &DeviceDetail) {
    let w = a.window_ns().max(1) as f64;
    if d.steps.is_empty() {
        let _ = writeln!(o, "  steps: none found (no NVTX step ranges, no --step-regex, no repeating kernel sequence)");
    } else {
        let mean = d.steps.iter().map(|s| s.len_ns()).sum::<u64>() / d.steps.len() as u64;
        let _ = writeln!(
            o,
            "  steps ({}): {} steps, mean {:.3} ms; % of each step:",
            crate::trace::StepSource::report_name(d.step_source),
            d.steps.len(),
            ms(mean)
        );
        let _ = writeln!(
            o,
            "    {:>6} {:>10} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6}",
            "step", "ms", "busy", "MFU", "useful", "ineff", "xfer", "wait", "other", "launch", "stall", "idle"
        );
        let n = d.steps.len();
        for (i, s) in d.steps.iter().enumerate() {
            if n > 2 * STEP_ROWS + 2 && i == STEP_ROWS {
                let _ = writeln!(o, "    {:>6}", format!("… {} more", n - 2 * STEP_ROWS));
            }
            if n <= 2 * STEP_ROWS + 2 || i < STEP_ROWS || i >= n - STEP_ROWS {
                step_row(o, i, s, a);
            }
        }
    }
    if !d.top_kernels.is_empty() {
        let _ = writeln!(o, "  top kernels:  count    total ms   mean µs  window  useful ms  name");
        for k in &d.top_kernels {
            let name = r.kernel_names.get(&k.name_id).map_or("?", String::as_str);
            let _ = writeln!(
                o,
                "    {:>11} {:>11.3} {:>9.1} {:>7} {:>10.3}  {}",
                k.count,
                ms(k.total_ns),
                k.total_ns as f64 / k.count.max(1) as f64 / 1e3,
                pct(k.total_ns as f64 / w),
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
                ms(g.end_ns - g.start_ns),
                ms(g.start_ns - a.window_start_ns),
                g.category,
                g.reason
            );
        }
    }
    let c = &d.checkpoint;
    let _ = writeln!(
        o,
        "  checkpoint I/O (file writes + fsync): {:.3} ms, {} of the window, {:.1} MiB written",
        ms(c.io_ns),
        pct(c.io_ns as f64 / w),
        c.bytes as f64 / (1u64 << 20) as f64
    );
    for n in &d.notes {
        let _ = writeln!(o, "  note: {}", esc(n));
    }
}

/// Threads listed per process in the host section.
const HOST_THREAD_ROWS: usize = 8;

/// Off-CPU time by reason, most first, only the reasons with time: `sleep 12.000 ms, futex …`.
fn off_cpu_reasons(h: &HostFigures) -> String {
    let mut v: Vec<(u64, &str)> =
        StallReason::ALL.iter().map(|r| (h.off_cpu_ns[*r as usize], r.name())).filter(|x| x.0 > 0).collect();
    v.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    v.iter().map(|(ns, name)| format!("{name} {:.3} ms", ms(*ns))).collect::<Vec<_>>().join(", ")
}

/// One line of host figures: on-CPU, off-CPU by reason, file I/O.
fn host_line(h: &HostFigures) -> String {
    let span = (h.end_ns - h.start_ns).max(1) as f64;
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    let reasons = off_cpu_reasons(h);
    format!(
        "on-CPU {:.3} ms ({}), off-CPU {:.3} ms{}; file I/O: read {:.1} MiB in {:.3} ms, wrote {:.1} MiB in {:.3} ms",
        ms(h.on_cpu_ns),
        pct(h.on_cpu_ns as f64 / span),
        ms(h.off_cpu_total_ns()),
        if reasons.is_empty() { String::new() } else { format!(" ({reasons})") },
        mib(h.file_read_bytes),
        ms(h.file_read_ns),
        mib(h.file_write_bytes),
        ms(h.file_write_ns),
    )
}

/// The host side of each process of a file, with or without devices (docs/metrics.md, "Host
/// figures").
fn host_section(o: &mut String, r: &FileReport) {
    for p in &r.host {
        let _ = writeln!(
            o,
            "host, pid {} ({} threads, {:.3} ms seen): {}",
            p.pid,
            p.threads.len(),
            ms(p.total.end_ns - p.total.start_ns),
            host_line(&p.total)
        );
        if p.threads.len() > 1 {
            for (tid, t) in p.threads.iter().take(HOST_THREAD_ROWS) {
                let _ = writeln!(o, "  thread {tid} ({:.3} ms seen): {}", ms(t.end_ns - t.start_ns), host_line(t));
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
    let mut o = String::new();
    for r in reports {
        let _ = writeln!(o, "{}", esc(&r.path));
        if r.accounts.is_empty() {
            let _ = writeln!(o, "  no device activity in this trace (was the CUPTI injection library loaded?)");
        }
        for (i, a) in r.accounts.iter().enumerate() {
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
            for name in Category::NAMES {
                let ns = a.categories.get(name);
                let _ = writeln!(o, "  {name:<20} {:>7}  {:>12.3} ms", pct(ns as f64 / w), ns as f64 / 1e6);
            }
            if let Some(d) = r.details.get(i) {
                device_detail(&mut o, r, a, d);
            }
        }
        host_section(&mut o, r);
        for warning in &r.warnings {
            let _ = writeln!(o, "  warning: {}", esc(warning));
        }
        for note in &r.recording_notes {
            let _ = writeln!(o, "  recording note: {}", esc(note));
        }
    }
    let cross = cross_rank(reports);
    if !cross.collectives.is_empty() {
        let _ = writeln!(
            o,
            "collectives (all ranks):    count     time ms  transfer ms    wait ms   busBw GB/s  algorithm"
        );
        for c in &cross.collectives {
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
    if cross.skew.iter().filter(|s| s.matched > 0).count() >= 2 {
        let _ = writeln!(o, "arrival skew at matched collectives:  mean µs    max µs  last to arrive");
        for s in cross.skew.iter().filter(|s| s.matched > 0) {
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
        match cross.straggler {
            Some(i) => {
                let s = &cross.skew[i];
                let _ = writeln!(
                    o,
                    "straggler: rank {} (pid {}, {}), {:.1} µs late on average; while the others waited: {}",
                    s.rank,
                    s.pid,
                    esc(&s.file),
                    s.mean_arrival_skew_ns / 1e3,
                    esc(&straggler_activity(reports, &cross).unwrap_or_else(|| "unknown".into()))
                );
            }
            None => {
                let _ = writeln!(o, "straggler: none (every rank arrived together)");
            }
        }
    }
    o
}
