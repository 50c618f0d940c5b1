//! The JSON document of a report (docs/report-schema.md, `ghostprof.report.v1`).

use serde_json::{json, Map, Value};

use crate::analyze::files::{cross_rank, straggler_activity, FileReport};
use crate::analyze::host::HostFigures;
use crate::analyze::{Categories, Category, DeviceAccount, DeviceDetail, Partition};
use crate::trace::StallReason;

fn fractions(c: &Categories, len: u64) -> Map<String, Value> {
    let w = len.max(1) as f64;
    Category::NAMES.iter().map(|n| (n.to_string(), json!(c.get(n) as f64 / w))).collect()
}

fn partition(p: &Partition, a: &DeviceAccount) -> Map<String, Value> {
    let len = p.len_ns().max(1) as f64;
    let mut m = Map::new();
    m.insert("start_ns".into(), json!(p.start_ns));
    m.insert("busy".into(), json!(p.busy_ns as f64 / len));
    m.insert("mfu".into(), json!(a.mfu().map(|_| p.categories.get("compute.useful") as f64 / len)));
    m.insert("categories".into(), Value::Object(fractions(&p.categories, p.len_ns())));
    m
}

fn step(i: usize, s: &Partition, a: &DeviceAccount) -> Value {
    let mut o = partition(s, a);
    o.insert("index".into(), json!(i));
    o.insert("end_ns".into(), json!(s.end_ns));
    Value::Object(o)
}

/// A device's detail fields; `partitions`: with its steps and bins (else the caller writes them).
fn detail_fields(r: &FileReport, a: &DeviceAccount, d: &DeviceDetail, partitions: bool) -> Map<String, Value> {
    let w = a.window_ns().max(1) as f64;
    let mut m = Map::new();
    m.insert("step_source".into(), json!(crate::trace::StepSource::report_name(d.step_source)));
    if partitions {
        m.insert("steps".into(), Value::Array(d.steps.iter().enumerate().map(|(i, s)| step(i, s, a)).collect()));
        let bins: Vec<Value> = d.bins.iter().map(|b| Value::Object(partition(b, a))).collect();
        m.insert("bins".into(), json!({ "width_ns": d.bin_ns, "items": bins }));
    }
    let kernels: Vec<Value> = d
        .top_kernels
        .iter()
        .map(|k| {
            json!({
                "name": r.kernel_names.get(&k.name_id).cloned().unwrap_or_default(),
                "count": k.count,
                "total_ns": k.total_ns,
                "mean_ns": k.total_ns as f64 / k.count.max(1) as f64,
                "share": k.total_ns as f64 / w,
                "useful_ns": k.useful_ns,
            })
        })
        .collect();
    m.insert("top_kernels".into(), Value::Array(kernels));
    let gaps: Vec<Value> = d
        .top_idle_gaps
        .iter()
        .map(|g| {
            json!({
                "start_ns": g.start_ns,
                "end_ns": g.end_ns,
                "duration_ns": g.end_ns - g.start_ns,
                "category": g.category,
                "reason": g.reason,
            })
        })
        .collect();
    m.insert("top_idle_gaps".into(), Value::Array(gaps));
    m.insert(
        "checkpoint".into(),
        json!({ "io_ns": d.checkpoint.io_ns, "fraction": d.checkpoint.io_ns as f64 / w, "bytes": d.checkpoint.bytes }),
    );
    m
}

/// One thread's or process's host figures (docs/report-schema.md, `hosts`).
fn host_fields(h: &HostFigures) -> Map<String, Value> {
    let off: Map<String, Value> =
        StallReason::ALL.iter().map(|r| (r.name().to_string(), json!(h.off_cpu_ns[*r as usize]))).collect();
    let mut m = Map::new();
    m.insert("start_ns".into(), json!(h.start_ns));
    m.insert("end_ns".into(), json!(h.end_ns));
    m.insert("on_cpu_ns".into(), json!(h.on_cpu_ns));
    m.insert("off_cpu_ns".into(), Value::Object(off));
    m.insert(
        "file_io".into(),
        json!({
            "read_bytes": h.file_read_bytes,
            "read_ns": h.file_read_ns,
            "write_bytes": h.file_write_bytes,
            "write_ns": h.file_write_ns,
        }),
    );
    m
}

/// The `hosts` array: every process of every file with its threads.
fn hosts(reports: &[FileReport]) -> Value {
    let processes = reports.iter().flat_map(|r| {
        r.host.iter().map(move |p| {
            let mut o = host_fields(&p.total);
            o.insert("file".into(), json!(r.path));
            o.insert("pid".into(), json!(p.pid));
            let threads: Vec<Value> = p
                .threads
                .iter()
                .map(|(tid, t)| {
                    let mut m = host_fields(t);
                    m.insert("tid".into(), json!(tid));
                    Value::Object(m)
                })
                .collect();
            o.insert("threads".into(), Value::Array(threads));
            Value::Object(o)
        })
    });
    Value::Array(processes.collect())
}

/// The JSON document (docs/report-schema.md).
pub fn render_json(reports: &[FileReport]) -> Value {
    document(reports, true)
}

/// [`render_json`] written to `out` as `serde_json::to_writer_pretty` would write it, byte for
/// byte, without building the per-step and per-bin objects all at once: a report of a long run
/// has hundreds of thousands of steps, and their JSON objects took ≈ 2 KiB each in memory (more
/// than the whole streaming analysis of the trace).
pub fn write_json(reports: &[FileReport], out: impl std::io::Write) -> serde_json::Result<()> {
    let mut doc = document(reports, false);
    let mut views: Vec<DeviceView> = Vec::new();
    let empty = &DeviceDetail::default();
    for r in reports {
        for (i, a) in r.accounts.iter().enumerate() {
            views.push(DeviceView { base: Map::new(), a, d: r.details.get(i).unwrap_or(empty) });
        }
    }
    if let Some(Value::Array(devices)) = doc.get_mut("devices") {
        for (v, d) in views.iter_mut().zip(devices.iter_mut()) {
            if let Value::Object(m) = d.take() {
                v.base = m;
            }
        }
    }
    let Value::Object(top) = doc else { return Ok(()) };
    serde_json::to_writer_pretty(out, &DocView { top, devices: views })
}

/// The document with the devices written by [`DeviceView`]s.
struct DocView<'a> {
    top: Map<String, Value>,
    devices: Vec<DeviceView<'a>>,
}

/// A device object: its fields, and its steps and bins made one at a time.
struct DeviceView<'a> {
    base: Map<String, Value>,
    a: &'a DeviceAccount,
    d: &'a DeviceDetail,
}

/// A list of partitions (steps or bins), each object made as it is written.
struct PartitionsView<'a> {
    parts: &'a [Partition],
    a: &'a DeviceAccount,
    steps: bool,
}

impl serde::Serialize for DocView<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        // Keys in the order a `Value` object writes them (sorted).
        let mut m = s.serialize_map(Some(self.top.len()))?;
        for (k, v) in &self.top {
            if k == "devices" {
                m.serialize_entry(k, &self.devices)?;
            } else {
                m.serialize_entry(k, v)?;
            }
        }
        m.end()
    }
}

impl serde::Serialize for DeviceView<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut keys: Vec<&str> = self.base.keys().map(String::as_str).chain(["bins", "steps"]).collect();
        keys.sort_unstable();
        let mut m = s.serialize_map(Some(keys.len()))?;
        for k in keys {
            match k {
                "steps" => m.serialize_entry(k, &PartitionsView { parts: &self.d.steps, a: self.a, steps: true })?,
                "bins" => {
                    let items = PartitionsView { parts: &self.d.bins, a: self.a, steps: false };
                    m.serialize_entry(k, &BinsView { items, width_ns: self.d.bin_ns })?
                }
                _ => m.serialize_entry(k, &self.base[k])?,
            }
        }
        m.end()
    }
}

/// `{"items": […], "width_ns": …}`.
struct BinsView<'a> {
    items: PartitionsView<'a>,
    width_ns: u64,
}

impl serde::Serialize for BinsView<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("items", &self.items)?;
        m.serialize_entry("width_ns", &self.width_ns)?;
        m.end()
    }
}

impl serde::Serialize for PartitionsView<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut q = s.serialize_seq(Some(self.parts.len()))?;
        for (i, p) in self.parts.iter().enumerate() {
            let v = if self.steps { step(i, p, self.a) } else { Value::Object(partition(p, self.a)) };
            q.serialize_element(&v)?;
        }
        q.end()
    }
}

/// The document; `partitions`: with each device's steps and bins (else without those fields).
fn document(reports: &[FileReport], partitions: bool) -> Value {
    let empty = &DeviceDetail::default();
    let devices: Vec<Value> = reports
        .iter()
        .flat_map(|r| {
            r.accounts.iter().enumerate().map(move |(i, a)| {
                let ns: Map<String, Value> =
                    Category::NAMES.iter().map(|n| (n.to_string(), json!(a.categories.get(n)))).collect();
                let mut o = json!({
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
                    "categories": fractions(&a.categories, a.window_ns()),
                    "categories_ns": ns,
                });
                if let Value::Object(m) = &mut o {
                    m.extend(detail_fields(r, a, r.details.get(i).unwrap_or(empty), partitions));
                }
                o
            })
        })
        .collect();
    let mut ranks: Vec<u32> = reports.iter().flat_map(|r| r.accounts.iter().map(|a| a.pid)).collect();
    ranks.sort_unstable();
    ranks.dedup();
    let cross = cross_rank(reports);
    let collectives: Vec<Value> = cross
        .collectives
        .iter()
        .map(|c| {
            json!({
                "op": c.op,
                "size_bucket": c.size_bucket,
                "count": c.count,
                "bytes": c.bytes,
                "time_ns": c.time_ns,
                "transfer_ns": c.transfer_ns,
                "wait_ns": c.wait_ns,
                "bus_bandwidth_gbps": c.bus_bandwidth_gbps,
                "algorithm": c.algorithm,
            })
        })
        .collect();
    let skew: Vec<Value> = cross
        .skew
        .iter()
        .map(|s| {
            json!({
                "rank": s.rank,
                "pid": s.pid,
                "file": s.file,
                "mean_arrival_skew_ns": s.mean_arrival_skew_ns,
                "max_arrival_skew_ns": s.max_arrival_skew_ns,
                "late_count": s.late_count,
            })
        })
        .collect();
    let mut warnings: Vec<String> = reports.iter().flat_map(|r| r.warnings.clone()).collect();
    for r in reports {
        for (a, d) in r.accounts.iter().zip(&r.details) {
            warnings.extend(d.notes.iter().map(|n| format!("{} pid {} GPU {}: {n}", r.path, a.pid, a.device)));
        }
    }
    json!({
        "schema": "ghostprof.report.v1",
        "devices": devices,
        "ranks": ranks,
        "collectives": collectives,
        "skew": skew,
        "straggler_rank": cross.straggler.map(|i| cross.skew[i].rank),
        "straggler_activity": straggler_activity(reports, &cross),
        "warnings": warnings,
        "damaged_chunks": reports
            .iter()
            .flat_map(|r| r.damaged_chunks.iter().map(move |d| json!({
                "file": r.path, "chunk": d.chunk, "offset": d.offset, "records_lost": d.records_lost, "error": d.error,
            })))
            .collect::<Vec<_>>(),
        "hosts": hosts(reports),
        "recording_notes": reports
            .iter()
            .flat_map(|r| r.recording_notes.iter().map(move |n| json!({"file": r.path, "note": n})))
            .collect::<Vec<_>>(),
    })
}
