//! The HTML report: one self-contained file (inline CSS, inline SVG drawn here, no scripts, no
//! external resources) drawn from the report document ([`ReportDoc`], docs/report-schema.md):
//! the analysis's, or one read from JSON, where a section whose data the document lacks (an
//! empty list, no checkpoint figures) says so in one line. Every string of the document
//! (kernel names, paths, reasons) is escaped: it is untrusted.

use std::fmt::Write;

use super::model::{DeviceDoc, FileIoDoc, OffCpu, PartitionDoc, PerCategory, ReportDoc};

use crate::analyze::Category;

/// Fill colours of the eight categories, in [`Category::NAMES`] order.
const COLORS: [&str; 8] = ["#2e7d32", "#a5d6a7", "#1565c0", "#90caf9", "#8d8d8d", "#ef6c00", "#c62828", "#f48fb1"];

const BUSY_COLOR: &str = "#37474f";
const MFU_COLOR: &str = "#2e7d32";

/// Escapes text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c if crate::units::is_unsafe(c) && c != '\n' && c != '\t' => o.push('\u{fffd}'),
            c => o.push(c),
        }
    }
    o
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

fn ms(ns: f64) -> String {
    if ns >= 1e9 {
        format!("{:.2} s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.1} µs", ns / 1e3)
    }
}

/// A figure the JSON would write as `null` (not finite) draws as 0.
fn fin(x: f64) -> f64 {
    if x.is_finite() {
        x
    } else {
        0.0
    }
}

/// A fraction of the window, clamped to [0, 1].
fn cat_fraction(cats: &PerCategory<f64>, i: usize) -> f64 {
    fin(cats.0[i]).clamp(0.0, 1.0)
}

fn absent(o: &mut String, what: &str) {
    let _ = writeln!(o, r#"<p class="absent">{}</p>"#, esc(what));
}

const CSS: &str = "
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:24px auto;max-width:1000px;color:#212121;background:#fff}
h1{font-size:24px;margin:0 0 4px}h2{font-size:19px;margin:28px 0 8px;border-bottom:2px solid #eceff1;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px;color:#37474f}
.headline{font-size:18px;background:#eceff1;border-left:6px solid #37474f;padding:10px 14px;margin:10px 0}
.big{font-weight:700}.absent{color:#757575;font-style:italic;margin:4px 0}
table{border-collapse:collapse;font-size:13px;margin:6px 0;width:100%}
th,td{border-bottom:1px solid #e0e0e0;padding:3px 8px;text-align:right;vertical-align:top}
th{background:#f5f5f5}td.l,th.l{text-align:left}td.name{text-align:left;font-family:ui-monospace,monospace;word-break:break-all;max-width:520px}
.sw{display:inline-block;width:11px;height:11px;margin-right:5px;vertical-align:-1px;border-radius:2px}
.legend span{margin-right:14px;font-size:12px;white-space:nowrap}
svg{display:block;margin:4px 0}svg text{font-size:11px;fill:#455a64}
.warn{color:#b71c1c}.meta{color:#607d8b;font-size:12px}
";

fn legend(o: &mut String) {
    o.push_str(r#"<div class="legend">"#);
    for (i, n) in Category::NAMES.iter().enumerate() {
        let _ = write!(o, r#"<span><i class="sw" style="background:{}"></i>{n}</span>"#, COLORS[i]);
    }
    o.push_str("</div>\n");
}

/// A horizontal bar split by the categories' fractions.
fn category_bar(o: &mut String, cats: &PerCategory<f64>, width: f64) {
    let _ = write!(o, r#"<svg width="{width}" height="26" role="img" aria-label="categories">"#);
    let mut x = 0.0;
    for (i, color) in COLORS.iter().enumerate() {
        let w = cat_fraction(cats, i) * width;
        if w > 0.0 {
            let _ = write!(
                o,
                r#"<rect x="{x:.2}" y="2" width="{w:.2}" height="22" fill="{color}"><title>{} {}</title></rect>"#,
                Category::NAMES[i],
                pct(cat_fraction(cats, i))
            );
        }
        x += w;
    }
    o.push_str("</svg>\n");
}

const W: f64 = 940.0;
const H: f64 = 200.0;
const PAD_L: f64 = 44.0;
const PAD_B: f64 = 22.0;

fn axes(o: &mut String, x_label: &str) {
    let (pw, ph) = (W - PAD_L - 8.0, H - PAD_B - 8.0);
    for k in 0..=4 {
        let y = 8.0 + ph * (1.0 - k as f64 / 4.0);
        let _ = write!(
            o,
            r##"<line x1="{PAD_L}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e0e0e0"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}%</text>"##,
            PAD_L + pw,
            PAD_L - 4.0,
            y + 4.0,
            k * 25
        );
    }
    let _ = write!(
        o,
        r##"<line x1="{PAD_L}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#90a4ae"/><text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
        8.0 + ph,
        PAD_L + pw,
        8.0 + ph,
        PAD_L + pw / 2.0,
        H - 4.0,
        esc(x_label)
    );
}

/// Busy and MFU per bin as two lines (MFU only where known).
fn busy_mfu_chart(o: &mut String, items: &[PartitionDoc], window_ns: f64) {
    let (pw, ph) = (W - PAD_L - 8.0, H - PAD_B - 8.0);
    let n = items.len().max(1) as f64;
    let x = |i: usize| PAD_L + pw * (i as f64 + 0.5) / n;
    let y = |v: f64| 8.0 + ph * (1.0 - v.clamp(0.0, 1.0));
    let _ = write!(o, r#"<svg width="{W}" height="{H}" role="img" aria-label="busy and MFU over time">"#);
    axes(o, &format!("time ({} per point, {} in all)", ms(window_ns / n), ms(window_ns)));
    let busy: Vec<String> = items
        .iter()
        .enumerate()
        .filter(|(_, b)| b.busy.is_finite())
        .map(|(i, b)| format!("{:.1},{:.1}", x(i), y(b.busy)))
        .collect();
    let _ = write!(
        o,
        r#"<polyline fill="none" stroke="{BUSY_COLOR}" stroke-width="2" points="{}"><title>busy</title></polyline>"#,
        busy.join(" ")
    );
    // MFU: one polyline per run of known values.
    let mut run: Vec<String> = Vec::new();
    let mut runs = Vec::new();
    for (i, b) in items.iter().enumerate() {
        match b.mfu.filter(|v| v.is_finite()) {
            Some(v) => run.push(format!("{:.1},{:.1}", x(i), y(v))),
            None if !run.is_empty() => runs.push(std::mem::take(&mut run)),
            None => {}
        }
    }
    if !run.is_empty() {
        runs.push(run);
    }
    for r in &runs {
        let _ = write!(
            o,
            r#"<polyline fill="none" stroke="{MFU_COLOR}" stroke-width="2" points="{}"><title>MFU</title></polyline>"#,
            r.join(" ")
        );
    }
    o.push_str("</svg>\n");
    let _ = writeln!(
        o,
        r#"<div class="legend"><span><i class="sw" style="background:{BUSY_COLOR}"></i>busy</span><span><i class="sw" style="background:{MFU_COLOR}"></i>MFU{}</span></div>"#,
        if runs.is_empty() { " (unknown: no FLOP source)" } else { "" }
    );
}

/// Stacked bars of the categories, one bar per item (bins or steps).
fn stacked_chart(
    o: &mut String,
    items: &[PartitionDoc],
    x_label: &str,
    label: &dyn Fn(usize, &PartitionDoc) -> String,
) {
    let (pw, ph) = (W - PAD_L - 8.0, H - PAD_B - 8.0);
    let n = items.len().max(1) as f64;
    let bw = pw / n;
    let gap = if bw > 6.0 { 1.0 } else { 0.0 };
    let _ = write!(o, r#"<svg width="{W}" height="{H}" role="img" aria-label="categories over {}">"#, esc(x_label));
    axes(o, x_label);
    for (i, it) in items.iter().enumerate() {
        let cats = &it.categories;
        let mut top = 8.0 + ph;
        let x0 = PAD_L + bw * i as f64;
        let tip = esc(&label(i, it));
        for (c, color) in COLORS.iter().enumerate() {
            let h = cat_fraction(cats, c) * ph;
            if h <= 0.0 {
                continue;
            }
            top -= h;
            let _ = write!(
                o,
                r#"<rect x="{x0:.2}" y="{top:.2}" width="{:.2}" height="{h:.2}" fill="{color}"><title>{tip}: {} {}</title></rect>"#,
                (bw - gap).max(0.5),
                Category::NAMES[c],
                pct(cat_fraction(cats, c))
            );
        }
    }
    o.push_str("</svg>\n");
}

fn device_section(o: &mut String, d: &DeviceDoc) {
    let window = d.window_end_ns.saturating_sub(d.window_start_ns);
    let _ = writeln!(
        o,
        r#"<h2>GPU {} &middot; pid {}</h2><p class="meta">{} &middot; window {} &middot; FLOP source: {}</p>"#,
        d.device,
        d.pid,
        esc(&d.file),
        ms(window as f64),
        esc(&d.flop_source)
    );
    let busy = fin(d.busy);
    match (d.mfu.filter(|x| x.is_finite()), d.divergence.filter(|x| x.is_finite())) {
        (Some(mfu), Some(div)) => {
            let _ = writeln!(
                o,
                r#"<div class="headline">busy <span class="big">{}</span> vs MFU <span class="big">{}</span>: <span class="big">{:.1} points</span> of divergence</div>"#,
                pct(busy),
                pct(mfu),
                div * 100.0
            );
        }
        _ => {
            let _ = writeln!(
                o,
                r#"<div class="headline">busy <span class="big">{}</span>; MFU unknown (needs a FLOP source: PM sampling, per-kernel FLOPs or --flops-per-step)</div>"#,
                pct(busy)
            );
        }
    }
    // Where the window went.
    let cats = &d.categories;
    category_bar(o, cats, W);
    legend(o);
    o.push_str(r#"<table><tr><th class="l">category</th><th>share of window</th><th>time</th></tr>"#);
    for (i, n) in Category::NAMES.iter().enumerate() {
        let _ = write!(
            o,
            r#"<tr><td class="l"><i class="sw" style="background:{}"></i>{n}</td><td>{}</td><td>{}</td></tr>"#,
            COLORS[i],
            pct(cat_fraction(cats, i)),
            ms(d.categories_ns.0[i] as f64)
        );
    }
    o.push_str("</table>\n");

    // Made one device at a time: the document's bins are made as they are read.
    let items: Vec<PartitionDoc> = d.bins.items.iter().collect();
    o.push_str("<h3>Busy vs MFU over time</h3>\n");
    if items.is_empty() {
        absent(o, "No time bins in this report (bins absent).");
    } else {
        busy_mfu_chart(o, &items, window as f64);
    }
    o.push_str("<h3>Where the time went, over time</h3>\n");
    if items.is_empty() {
        absent(o, "No time bins in this report (bins absent).");
    } else {
        let t0 = d.window_start_ns;
        let label = move |_: usize, b: &PartitionDoc| format!("at {}", ms(b.start_ns.saturating_sub(t0) as f64));
        stacked_chart(o, &items, &format!("time ({} bins)", ms(d.bins.width_ns as f64)), &label);
        legend(o);
    }
    drop(items);

    o.push_str("<h3>Steps</h3>\n");
    if d.steps.is_empty() {
        let source = if d.step_source.is_empty() { "absent" } else { &d.step_source };
        absent(o, &format!("No steps in this report (step source: {source})."));
    } else {
        let steps: Vec<PartitionDoc> = d.steps.iter().collect();
        let _ = writeln!(o, r#"<p class="meta">{} steps (found by: {})</p>"#, steps.len(), esc(&d.step_source));
        let label = |i: usize, st: &PartitionDoc| {
            let dur = st.end_ns.unwrap_or(0).saturating_sub(st.start_ns);
            format!("step {} ({}, busy {})", st.index.unwrap_or(i as u64), ms(dur as f64), pct(fin(st.busy)))
        };
        stacked_chart(o, &steps, "step", &label);
        legend(o);
    }

    o.push_str("<h3>Top kernels</h3>\n");
    if d.top_kernels.is_empty() {
        absent(o, "No kernel table in this report (top_kernels absent).");
    } else {
        o.push_str(r#"<table><tr><th class="l">kernel</th><th>count</th><th>total</th><th>mean</th><th>share of window</th><th>useful</th></tr>"#);
        for k in &d.top_kernels {
            let _ = write!(
                o,
                r#"<tr><td class="name">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
                esc(&k.name),
                k.count,
                ms(k.total_ns as f64),
                ms(fin(k.mean_ns)),
                pct(fin(k.share)),
                ms(k.useful_ns as f64)
            );
        }
        o.push_str("</table>\n");
    }

    o.push_str("<h3>Longest idle gaps</h3>\n");
    if d.top_idle_gaps.is_empty() {
        absent(o, "No idle-gap list in this report (top_idle_gaps absent).");
    } else {
        let t0 = d.window_start_ns;
        o.push_str(
            r#"<table><tr><th>at</th><th>duration</th><th class="l">category</th><th class="l">host was</th></tr>"#,
        );
        for g in &d.top_idle_gaps {
            let _ = write!(
                o,
                r#"<tr><td>{}</td><td>{}</td><td class="l">{}</td><td class="l">{}</td></tr>"#,
                ms(g.start_ns.saturating_sub(t0) as f64),
                ms(g.duration_ns as f64),
                esc(&g.category),
                esc(&g.reason)
            );
        }
        o.push_str("</table>\n");
    }

    match &d.checkpoint {
        Some(c) => {
            let _ = writeln!(
                o,
                r#"<p>Checkpoint I/O: {} ({} of the window), {} written.</p>"#,
                ms(c.io_ns as f64),
                pct(fin(c.fraction)),
                crate::units::human_bytes(c.bytes)
            );
        }
        None => absent(o, "No checkpoint figures in this report (checkpoint absent)."),
    }
}

fn collectives_section(o: &mut String, report: &ReportDoc) {
    o.push_str("<h2>Collectives</h2>\n");
    if report.collectives.is_empty() {
        absent(o, "No collectives in this report (collectives absent).");
        return;
    }
    o.push_str(r#"<table><tr><th class="l">op</th><th class="l">size</th><th>count</th><th>bytes</th><th>time</th><th>transfer</th><th>wait</th><th>bus bandwidth</th><th class="l">algorithm</th></tr>"#);
    for c in &report.collectives {
        let _ = write!(
            o,
            r#"<tr><td class="l">{}</td><td class="l">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1} GB/s</td><td class="l">{}</td></tr>"#,
            esc(&c.op),
            esc(&c.size_bucket),
            c.count,
            crate::units::human_bytes(c.bytes),
            ms(c.time_ns as f64),
            ms(c.transfer_ns as f64),
            ms(c.wait_ns as f64),
            fin(c.bus_bandwidth_gbps),
            esc(c.algorithm.as_deref().unwrap_or(""))
        );
    }
    o.push_str("</table>\n");
}

fn skew_section(o: &mut String, report: &ReportDoc) {
    o.push_str("<h2>Ranks: arrival skew at collectives</h2>\n");
    let straggler = report.straggler_rank;
    match straggler {
        Some(r) => {
            let activity = report.straggler_activity.as_deref().unwrap_or("");
            let _ = writeln!(
                o,
                r#"<div class="headline">Straggler: <span class="big">rank {r}</span>{}</div>"#,
                if activity.is_empty() {
                    String::new()
                } else {
                    format!(" &mdash; at its late arrivals: {}", esc(activity))
                }
            );
        }
        None => absent(o, "No straggler: no rank arrives late consistently."),
    }
    let ranks = &report.skew;
    if ranks.is_empty() {
        absent(o, "No per-rank skew in this report (skew absent).");
        return;
    }
    let max = ranks.iter().map(|r| r.mean_arrival_skew_ns).filter(|x| x.is_finite()).fold(0.0, f64::max).max(1.0);
    let row = 24.0;
    let h = row * ranks.len() as f64 + 24.0;
    let label_w = 150.0;
    let bar_w = W - label_w - 160.0;
    let _ = write!(o, r#"<svg width="{W}" height="{h}" role="img" aria-label="mean arrival skew per rank">"#);
    for (i, r) in ranks.iter().enumerate() {
        let y = 4.0 + row * i as f64;
        let v = fin(r.mean_arrival_skew_ns).max(0.0);
        let is_straggler = straggler == Some(r.rank);
        let color = if is_straggler { "#c62828" } else { "#546e7a" };
        let _ = write!(
            o,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">rank {} (pid {})</text><rect x="{label_w}" y="{y:.1}" width="{:.2}" height="{:.1}" fill="{color}"><title>mean {} / max {}, late {} times</title></rect><text x="{:.1}" y="{:.1}">{} mean, {} max</text>"#,
            label_w - 6.0,
            y + 15.0,
            r.rank,
            r.pid,
            (v / max * bar_w).max(1.0),
            row - 6.0,
            ms(v),
            ms(r.max_arrival_skew_ns as f64),
            r.late_count,
            label_w + (v / max * bar_w).max(1.0) + 6.0,
            y + 15.0,
            ms(v),
            ms(r.max_arrival_skew_ns as f64)
        );
    }
    let _ = write!(
        o,
        r#"<text x="{label_w}" y="{:.1}">mean arrival skew (own arrival &minus; first arrival) per rank</text>"#,
        h - 4.0
    );
    o.push_str("</svg>\n");
}

/// One row of the host table: a process total or one of its threads.
fn host_row(o: &mut String, pid: u32, who: &str, span: (u64, u64), on_cpu_ns: u64, off: &OffCpu, io: &FileIoDoc) {
    let mut reasons: Vec<(f64, &str)> = off.by_name().map(|(k, v)| (v as f64, k)).filter(|x| x.0 > 0.0).collect();
    reasons.sort_by(|a, b| b.0.total_cmp(&a.0));
    let off: f64 = reasons.iter().map(|x| x.0).sum();
    let reasons: Vec<String> = reasons.iter().take(3).map(|(v, k)| format!("{} {}", esc(k), ms(*v))).collect();
    let mib = |v: u64| v as f64 / (1u64 << 20) as f64;
    let _ = write!(
        o,
        r#"<tr><td class="l">{pid}</td><td class="l">{}</td><td>{}</td><td>{}</td><td>{}</td><td class="l">{}</td><td>{:.1}</td><td>{:.1}</td></tr>"#,
        esc(who),
        ms(span.1 as f64 - span.0 as f64),
        ms(on_cpu_ns as f64),
        ms(off),
        reasons.join(", "),
        mib(io.read_bytes),
        mib(io.write_bytes),
    );
}

/// The host side of every process (`hosts`), with or without devices: a CPU-only process has
/// only this.
fn host_section(o: &mut String, report: &ReportDoc) {
    if report.hosts.is_empty() {
        return;
    }
    o.push_str("<h2>Host</h2><table><tr><th class=\"l\">pid</th><th class=\"l\">thread</th><th>seen</th><th>on-CPU</th><th>off-CPU</th><th class=\"l\">off-CPU reasons</th><th>read MiB</th><th>wrote MiB</th></tr>");
    for p in &report.hosts {
        host_row(o, p.pid, "all", (p.start_ns, p.end_ns), p.on_cpu_ns, &p.off_cpu_ns, &p.file_io);
        for t in p.threads.iter().take(8) {
            host_row(o, p.pid, &t.tid.to_string(), (t.start_ns, t.end_ns), t.on_cpu_ns, &t.off_cpu_ns, &t.file_io);
        }
    }
    o.push_str("</table>\n");
}

/// The whole page for a report document ([`ReportDoc::from_reports`], or one read from JSON).
pub fn render(report: &ReportDoc) -> String {
    let mut o = String::with_capacity(64 << 10);
    let devices = &report.devices;
    let files: Vec<&str> = {
        let mut v: Vec<&str> = devices.iter().map(|d| d.file.as_str()).collect();
        v.dedup();
        v
    };
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>ghostprof report: {}</title><style>{CSS}</style></head><body>\n",
        esc(&files.join(", "))
    );
    let _ = writeln!(
        o,
        r#"<h1>ghostprof report</h1><p class="meta">{} &middot; {} device(s) &middot; schema {}</p>"#,
        esc(&files.join(", ")),
        devices.len(),
        esc(&report.schema)
    );
    if devices.is_empty() {
        absent(&mut o, "No device activity in these traces (was the CUPTI injection library loaded?).");
    } else {
        // The headlines of every device first, then each device in detail.
        o.push_str(r#"<table><tr><th class="l">GPU</th><th class="l">pid</th><th>busy</th><th>MFU</th><th>divergence</th><th class="l">where the window went</th></tr>"#);
        for d in devices {
            let mfu = d.mfu.filter(|x| x.is_finite()).map(pct).unwrap_or_else(|| "unknown".into());
            let div = d
                .divergence
                .filter(|x| x.is_finite())
                .map(|x| format!("{:.1} points", x * 100.0))
                .unwrap_or_else(|| "&ndash;".into());
            let _ = write!(
                o,
                r#"<tr><td class="l">{}</td><td class="l">{}</td><td>{}</td><td>{mfu}</td><td>{div}</td><td class="l">"#,
                d.device,
                d.pid,
                pct(fin(d.busy))
            );
            category_bar(&mut o, &d.categories, 360.0);
            o.push_str("</td></tr>");
        }
        o.push_str("</table>\n");
        legend(&mut o);
        for d in devices {
            device_section(&mut o, d);
        }
    }
    collectives_section(&mut o, report);
    skew_section(&mut o, report);
    host_section(&mut o, report);
    if !report.profiler_cost.is_empty() {
        o.push_str("<h2>Profiler cost</h2><ul>");
        for f in &report.files {
            if let Some(line) = super::model::profiler_cost_line(&f.profiler_cost) {
                let _ = write!(o, "<li>{}: {}</li>", esc(&f.path), esc(&line));
            }
        }
        o.push_str("</ul>\n");
    }
    if !report.recording_notes.is_empty() {
        o.push_str("<h2>Recording notes</h2><ul>");
        for n in &report.recording_notes {
            let _ = write!(o, r#"<li class="warn">{}: {}</li>"#, esc(&n.file), esc(&n.note));
        }
        o.push_str("</ul>\n");
    }
    if !report.warnings.is_empty() {
        o.push_str("<h2>Warnings</h2><ul>");
        for w in &report.warnings {
            let _ = write!(o, r#"<li class="warn">{}</li>"#, esc(w));
        }
        o.push_str("</ul>\n");
    }
    o.push_str("<p class=\"meta\">Written by ghostprof. Categories: docs/report-schema.md.</p>\n</body></html>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(esc("<a href=\"x\">&'</a>"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;");
        assert_eq!(esc("a\u{0}b\u{1b}[2J\u{9b}\u{202e}"), "a\u{fffd}b\u{fffd}[2J\u{fffd}\u{fffd}");
    }

    #[test]
    fn a_report_without_the_new_fields_says_what_is_absent() {
        let v = serde_json::json!({"schema": "ghostprof.report.v1", "devices": [{"file": "<x>.gptrace", "pid": 1, "device": 0,
            "window_start_ns": 0, "window_end_ns": 1000, "busy": 0.5, "busy_ns": 500, "mfu": null, "divergence": null,
            "flop_source": "none", "categories": {"compute.inefficient": 0.5, "idle.other": 0.5},
            "categories_ns": {"compute.inefficient": 500, "idle.other": 500}}], "ranks": [1], "warnings": ["w<b>"]});
        let doc: ReportDoc = serde_json::from_value(v).unwrap();
        let html = render(&doc);
        for line in ["bins absent", "top_kernels absent", "collectives absent", "skew absent", "No steps"] {
            assert!(html.contains(line), "{line}");
        }
        assert!(html.contains("&lt;x&gt;.gptrace") && !html.contains("<x>"));
        assert!(html.contains("w&lt;b&gt;"));
        assert!(!html.contains("<script") && !html.contains("http"), "self-contained, no scripts");
    }
}
