//! The HTML report: one self-contained file (inline CSS, inline SVG drawn here, no scripts, no
//! external resources) rendered from the report JSON (docs/report-schema.md). Every section
//! reads its fields defensively: a section whose data the JSON lacks says so in one line.
//! Every string from the JSON (kernel names, paths, reasons) is escaped: it is untrusted.

use std::fmt::Write;

use serde_json::Value;

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

fn bytes(v: &Value) -> String {
    match f(v) {
        Some(n) if n >= 0.0 => crate::units::human_bytes(n as u64),
        _ => esc(&s(v)),
    }
}

fn f(v: &Value) -> Option<f64> {
    v.as_f64().filter(|x| x.is_finite())
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn cat_fraction(cats: &Value, i: usize) -> f64 {
    f(&cats[Category::NAMES[i]]).unwrap_or(0.0).clamp(0.0, 1.0)
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
fn category_bar(o: &mut String, cats: &Value, width: f64) {
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
fn busy_mfu_chart(o: &mut String, items: &[Value], window_ns: f64) {
    let (pw, ph) = (W - PAD_L - 8.0, H - PAD_B - 8.0);
    let n = items.len().max(1) as f64;
    let x = |i: usize| PAD_L + pw * (i as f64 + 0.5) / n;
    let y = |v: f64| 8.0 + ph * (1.0 - v.clamp(0.0, 1.0));
    let _ = write!(o, r#"<svg width="{W}" height="{H}" role="img" aria-label="busy and MFU over time">"#);
    axes(o, &format!("time ({} per point, {} in all)", ms(window_ns / n), ms(window_ns)));
    let busy: Vec<String> = items
        .iter()
        .enumerate()
        .filter_map(|(i, b)| f(&b["busy"]).map(|v| format!("{:.1},{:.1}", x(i), y(v))))
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
        match f(&b["mfu"]) {
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
fn stacked_chart(o: &mut String, items: &[Value], x_label: &str, label: &dyn Fn(usize, &Value) -> String) {
    let (pw, ph) = (W - PAD_L - 8.0, H - PAD_B - 8.0);
    let n = items.len().max(1) as f64;
    let bw = pw / n;
    let gap = if bw > 6.0 { 1.0 } else { 0.0 };
    let _ = write!(o, r#"<svg width="{W}" height="{H}" role="img" aria-label="categories over {}">"#, esc(x_label));
    axes(o, x_label);
    for (i, it) in items.iter().enumerate() {
        let cats = &it["categories"];
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

fn device_section(o: &mut String, d: &Value) {
    let window = d["window_end_ns"].as_u64().unwrap_or(0).saturating_sub(d["window_start_ns"].as_u64().unwrap_or(0));
    let _ = writeln!(
        o,
        r#"<h2>GPU {} &middot; pid {}</h2><p class="meta">{} &middot; window {} &middot; FLOP source: {}</p>"#,
        esc(&s(&d["device"])),
        esc(&s(&d["pid"])),
        esc(&s(&d["file"])),
        ms(window as f64),
        esc(&s(&d["flop_source"]))
    );
    let busy = f(&d["busy"]).unwrap_or(0.0);
    match (f(&d["mfu"]), f(&d["divergence"])) {
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
    let cats = &d["categories"];
    if cats.is_object() {
        category_bar(o, cats, W);
        legend(o);
        o.push_str(r#"<table><tr><th class="l">category</th><th>share of window</th><th>time</th></tr>"#);
        for (i, n) in Category::NAMES.iter().enumerate() {
            let t = f(&d["categories_ns"][n]).map(ms).unwrap_or_default();
            let _ = write!(
                o,
                r#"<tr><td class="l"><i class="sw" style="background:{}"></i>{n}</td><td>{}</td><td>{t}</td></tr>"#,
                COLORS[i],
                pct(cat_fraction(cats, i))
            );
        }
        o.push_str("</table>\n");
    } else {
        absent(o, "No category breakdown in this report.");
    }

    let items = d["bins"]["items"].as_array().filter(|v| !v.is_empty());
    o.push_str("<h3>Busy vs MFU over time</h3>\n");
    match items {
        Some(items) => busy_mfu_chart(o, items, window as f64),
        None => absent(o, "No time bins in this report (bins absent)."),
    }
    o.push_str("<h3>Where the time went, over time</h3>\n");
    match items {
        Some(items) => {
            let width = d["bins"]["width_ns"].as_u64().unwrap_or(0);
            let t0 = d["window_start_ns"].as_u64().unwrap_or(0);
            let label = move |_: usize, b: &Value| {
                format!("at {}", ms(b["start_ns"].as_u64().unwrap_or(t0).saturating_sub(t0) as f64))
            };
            stacked_chart(o, items, &format!("time ({} bins)", ms(width as f64)), &label);
            legend(o);
        }
        None => absent(o, "No time bins in this report (bins absent)."),
    }

    o.push_str("<h3>Steps</h3>\n");
    match d["steps"].as_array().filter(|v| !v.is_empty()) {
        Some(steps) => {
            let _ =
                writeln!(o, r#"<p class="meta">{} steps (found by: {})</p>"#, steps.len(), esc(&s(&d["step_source"])));
            let label = |i: usize, st: &Value| {
                let dur = st["end_ns"].as_u64().unwrap_or(0).saturating_sub(st["start_ns"].as_u64().unwrap_or(0));
                format!(
                    "step {} ({}, busy {})",
                    st["index"].as_u64().unwrap_or(i as u64),
                    ms(dur as f64),
                    pct(f(&st["busy"]).unwrap_or(0.0))
                )
            };
            stacked_chart(o, steps, "step", &label);
            legend(o);
        }
        None => {
            let source = if d["step_source"].is_string() { s(&d["step_source"]) } else { "absent".into() };
            absent(o, &format!("No steps in this report (step source: {source})."));
        }
    }

    o.push_str("<h3>Top kernels</h3>\n");
    match d["top_kernels"].as_array().filter(|v| !v.is_empty()) {
        Some(ks) => {
            o.push_str(r#"<table><tr><th class="l">kernel</th><th>count</th><th>total</th><th>mean</th><th>share of window</th><th>useful</th></tr>"#);
            for k in ks {
                let _ = write!(
                    o,
                    r#"<tr><td class="name">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
                    esc(&s(&k["name"])),
                    esc(&s(&k["count"])),
                    ms(f(&k["total_ns"]).unwrap_or(0.0)),
                    ms(f(&k["mean_ns"]).unwrap_or(0.0)),
                    pct(f(&k["share"]).unwrap_or(0.0)),
                    ms(f(&k["useful_ns"]).unwrap_or(0.0))
                );
            }
            o.push_str("</table>\n");
        }
        None => absent(o, "No kernel table in this report (top_kernels absent)."),
    }

    o.push_str("<h3>Longest idle gaps</h3>\n");
    match d["top_idle_gaps"].as_array().filter(|v| !v.is_empty()) {
        Some(gaps) => {
            let t0 = d["window_start_ns"].as_u64().unwrap_or(0);
            o.push_str(
                r#"<table><tr><th>at</th><th>duration</th><th class="l">category</th><th class="l">host was</th></tr>"#,
            );
            for g in gaps {
                let _ = write!(
                    o,
                    r#"<tr><td>{}</td><td>{}</td><td class="l">{}</td><td class="l">{}</td></tr>"#,
                    ms(g["start_ns"].as_u64().unwrap_or(t0).saturating_sub(t0) as f64),
                    ms(f(&g["duration_ns"]).unwrap_or(0.0)),
                    esc(&s(&g["category"])),
                    esc(&s(&g["reason"]))
                );
            }
            o.push_str("</table>\n");
        }
        None => absent(o, "No idle-gap list in this report (top_idle_gaps absent)."),
    }

    match d.get("checkpoint").filter(|c| c.is_object()) {
        Some(c) => {
            let _ = writeln!(
                o,
                r#"<p>Checkpoint I/O: {} ({} of the window), {} written.</p>"#,
                ms(f(&c["io_ns"]).unwrap_or(0.0)),
                pct(f(&c["fraction"]).unwrap_or(0.0)),
                bytes(&c["bytes"])
            );
        }
        None => absent(o, "No checkpoint figures in this report (checkpoint absent)."),
    }
}

fn collectives_section(o: &mut String, report: &Value) {
    o.push_str("<h2>Collectives</h2>\n");
    let Some(cs) = report["collectives"].as_array().filter(|v| !v.is_empty()) else {
        absent(o, "No collectives in this report (collectives absent).");
        return;
    };
    o.push_str(r#"<table><tr><th class="l">op</th><th class="l">size</th><th>count</th><th>bytes</th><th>time</th><th>transfer</th><th>wait</th><th>bus bandwidth</th><th class="l">algorithm</th></tr>"#);
    for c in cs {
        let _ = write!(
            o,
            r#"<tr><td class="l">{}</td><td class="l">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1} GB/s</td><td class="l">{}</td></tr>"#,
            esc(&s(&c["op"])),
            esc(&s(&c["size_bucket"])),
            esc(&s(&c["count"])),
            bytes(&c["bytes"]),
            ms(f(&c["time_ns"]).unwrap_or(0.0)),
            ms(f(&c["transfer_ns"]).unwrap_or(0.0)),
            ms(f(&c["wait_ns"]).unwrap_or(0.0)),
            f(&c["bus_bandwidth_gbps"]).unwrap_or(0.0),
            esc(&s(&c["algorithm"]))
        );
    }
    o.push_str("</table>\n");
}

fn skew_section(o: &mut String, report: &Value) {
    o.push_str("<h2>Ranks: arrival skew at collectives</h2>\n");
    let straggler = report["straggler_rank"].as_u64();
    match straggler {
        Some(r) => {
            let activity = s(&report["straggler_activity"]);
            let _ = writeln!(
                o,
                r#"<div class="headline">Straggler: <span class="big">rank {r}</span>{}</div>"#,
                if activity.is_empty() {
                    String::new()
                } else {
                    format!(" &mdash; at its late arrivals: {}", esc(&activity))
                }
            );
        }
        None if report.get("straggler_rank").is_some() => absent(o, "No straggler: no rank arrives late consistently."),
        None => {}
    }
    let Some(ranks) = report["skew"].as_array().filter(|v| !v.is_empty()) else {
        absent(o, "No per-rank skew in this report (skew absent).");
        return;
    };
    let max = ranks.iter().filter_map(|r| f(&r["mean_arrival_skew_ns"])).fold(0.0, f64::max).max(1.0);
    let row = 24.0;
    let h = row * ranks.len() as f64 + 24.0;
    let label_w = 150.0;
    let bar_w = W - label_w - 160.0;
    let _ = write!(o, r#"<svg width="{W}" height="{h}" role="img" aria-label="mean arrival skew per rank">"#);
    for (i, r) in ranks.iter().enumerate() {
        let y = 4.0 + row * i as f64;
        let v = f(&r["mean_arrival_skew_ns"]).unwrap_or(0.0).max(0.0);
        let is_straggler = straggler.is_some() && r["rank"].as_u64() == straggler;
        let color = if is_straggler { "#c62828" } else { "#546e7a" };
        let _ = write!(
            o,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">rank {} (pid {})</text><rect x="{label_w}" y="{y:.1}" width="{:.2}" height="{:.1}" fill="{color}"><title>mean {} / max {}, late {} times</title></rect><text x="{:.1}" y="{:.1}">{} mean, {} max</text>"#,
            label_w - 6.0,
            y + 15.0,
            esc(&s(&r["rank"])),
            esc(&s(&r["pid"])),
            (v / max * bar_w).max(1.0),
            row - 6.0,
            ms(v),
            ms(f(&r["max_arrival_skew_ns"]).unwrap_or(0.0)),
            esc(&s(&r["late_count"])),
            label_w + (v / max * bar_w).max(1.0) + 6.0,
            y + 15.0,
            ms(v),
            ms(f(&r["max_arrival_skew_ns"]).unwrap_or(0.0))
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
fn host_row(o: &mut String, pid: &str, who: &str, h: &Value) {
    let n = |v: &Value| f(v).unwrap_or(0.0);
    let mut reasons: Vec<(f64, String)> = h["off_cpu_ns"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (n(v), k.clone())).filter(|x| x.0 > 0.0).collect())
        .unwrap_or_default();
    reasons.sort_by(|a, b| b.0.total_cmp(&a.0));
    let off: f64 = reasons.iter().map(|x| x.0).sum();
    let reasons: Vec<String> = reasons.iter().take(3).map(|(v, k)| format!("{} {}", esc(k), ms(*v))).collect();
    let mib = |v: &Value| n(v) / (1u64 << 20) as f64;
    let _ = write!(
        o,
        r#"<tr><td class="l">{}</td><td class="l">{}</td><td>{}</td><td>{}</td><td>{}</td><td class="l">{}</td><td>{:.1}</td><td>{:.1}</td></tr>"#,
        esc(pid),
        esc(who),
        ms(n(&h["end_ns"]) - n(&h["start_ns"])),
        ms(n(&h["on_cpu_ns"])),
        ms(off),
        reasons.join(", "),
        mib(&h["file_io"]["read_bytes"]),
        mib(&h["file_io"]["write_bytes"]),
    );
}

/// The host side of every process (`hosts`), with or without devices: a CPU-only process has
/// only this.
fn host_section(o: &mut String, report: &Value) {
    let Some(hosts) = report["hosts"].as_array().filter(|v| !v.is_empty()) else { return };
    o.push_str("<h2>Host</h2><table><tr><th class=\"l\">pid</th><th class=\"l\">thread</th><th>seen</th><th>on-CPU</th><th>off-CPU</th><th class=\"l\">off-CPU reasons</th><th>read MiB</th><th>wrote MiB</th></tr>");
    for p in hosts {
        let pid = s(&p["pid"]);
        host_row(o, &pid, "all", p);
        for t in p["threads"].as_array().map(|v| &v[..]).unwrap_or_default().iter().take(8) {
            host_row(o, &pid, &s(&t["tid"]), t);
        }
    }
    o.push_str("</table>\n");
}

/// The whole page for a report JSON document (`render_json`'s output).
pub fn render(report: &Value) -> String {
    let mut o = String::with_capacity(64 << 10);
    let devices = report["devices"].as_array().cloned().unwrap_or_default();
    let files: Vec<String> = {
        let mut v: Vec<String> = devices.iter().map(|d| s(&d["file"])).collect();
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
        esc(&s(&report["schema"]))
    );
    if devices.is_empty() {
        absent(&mut o, "No device activity in these traces (was the CUPTI injection library loaded?).");
    } else {
        // The headlines of every device first, then each device in detail.
        o.push_str(r#"<table><tr><th class="l">GPU</th><th class="l">pid</th><th>busy</th><th>MFU</th><th>divergence</th><th class="l">where the window went</th></tr>"#);
        for d in &devices {
            let mfu = f(&d["mfu"]).map(pct).unwrap_or_else(|| "unknown".into());
            let div =
                f(&d["divergence"]).map(|x| format!("{:.1} points", x * 100.0)).unwrap_or_else(|| "&ndash;".into());
            let _ = write!(
                o,
                r#"<tr><td class="l">{}</td><td class="l">{}</td><td>{}</td><td>{mfu}</td><td>{div}</td><td class="l">"#,
                esc(&s(&d["device"])),
                esc(&s(&d["pid"])),
                pct(f(&d["busy"]).unwrap_or(0.0))
            );
            category_bar(&mut o, &d["categories"], 360.0);
            o.push_str("</td></tr>");
        }
        o.push_str("</table>\n");
        legend(&mut o);
        for d in &devices {
            device_section(&mut o, d);
        }
    }
    collectives_section(&mut o, report);
    skew_section(&mut o, report);
    host_section(&mut o, report);
    if let Some(ns) = report["recording_notes"].as_array().filter(|v| !v.is_empty()) {
        o.push_str("<h2>Recording notes</h2><ul>");
        for n in ns {
            let _ = write!(o, r#"<li class="warn">{}: {}</li>"#, esc(&s(&n["file"])), esc(&s(&n["note"])));
        }
        o.push_str("</ul>\n");
    }
    if let Some(ws) = report["warnings"].as_array().filter(|v| !v.is_empty()) {
        o.push_str("<h2>Warnings</h2><ul>");
        for w in ws {
            let _ = write!(o, r#"<li class="warn">{}</li>"#, esc(&s(w)));
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
        let html = render(&v);
        for line in ["bins absent", "top_kernels absent", "collectives absent", "skew absent", "No steps"] {
            assert!(html.contains(line), "{line}");
        }
        assert!(html.contains("&lt;x&gt;.gptrace") && !html.contains("<x>"));
        assert!(html.contains("w&lt;b&gt;"));
        assert!(!html.contains("<script") && !html.contains("http"), "self-contained, no scripts");
    }
}
