//! `export --format parquet` (docs/parquet-schema.md): every table read back with the parquet
//! crate equals `report --json` on the same traces (a synthetic 3-rank job, one file per rank
//! on its own clock, rank 2 the straggler); the cross-rank matching redone from the
//! `collectives` table gives report's skew, straggler and waits; pyarrow reads every table
//! (skipped, saying so, without it); the files are 0600, existing ones are refused without
//! `--force`, a symlinked output directory is refused; the schema in the files is the one the
//! doc lists.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use arrow_array::{Array, BooleanArray, Float64Array, Int64Array, StringArray};
use ghostprof::analyze::collectives::size_bucket;
use ghostprof::export::parquet::{columns, ColumnType, SCHEMA_VERSION, TABLES};
use ghostprof::trace::*;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::Value;

use crate::util::*;

const MS: u64 = 1_000_000;
const STEP: u64 = 10 * MS;
const STEPS: u64 = 10;
const PID: u32 = 100;
const RANKS: u32 = 3;
/// The common clock's (CLOCK_REALTIME's) start of the job.
const REAL0: u64 = 1_700_000_000_000_000_000;
/// Name ids, interned in this order.
const NAMES: [&str; 3] = ["gemm", "ncclDevKernel_AllReduce_Sum_bf16", "train_step"];
const GEMM: u32 = 1;
const NCCL: u32 = 2;
const STEP_NAME: u32 = 3;

/// Each rank's own CLOCK_MONOTONIC at the job's start: three hosts, three clocks.
fn base(rank: u32) -> u64 {
    [5_000_000_000, 912_345_678_901, 77_000_000_123][rank as usize]
}

/// How much later than rank 0 each rank's compute ends every step (rank 2 the straggler).
fn slow(rank: u32) -> u64 {
    [0, 300_000, MS][rank as usize]
}

/// Ten 10 ms steps of one rank: a launch, gemm 0–5 ms (+ its slowness), the all-reduce kernel
/// until 8 ms (its host call at 1 ms, sequence = step), a futex stall 8–9.5 ms, an NVTX step.
/// Rank 0 also writes a 64 MiB checkpoint in step 3 and calls one more all-reduce alone
/// (unmatched). A realtime clock pair puts every rank on one clock.
fn rank_records(rank: u32) -> Vec<Record> {
    let b = base(rank);
    let mut v: Vec<Record> = vec![ClockSync {
        monotonic_ns: b,
        other_ns: REAL0,
        uncertainty_ns: 100,
        domain: ClockDomain::Realtime as u32,
        ..Default::default()
    }
    .into()];
    let coll = |start: u64, seq: u64| -> Record {
        NcclColl {
            start_ns: start,
            end_ns: start + 10_000,
            comm: 0xabc0 + rank as u64,
            seq,
            count: 50_000_000,
            bytes: 100_000_000,
            pid: PID,
            tid: PID,
            rank,
            nranks: RANKS,
            op: CollOp::AllReduce as u32,
            dtype: NcclDtype::Bfloat16 as u32,
            phase: NcclPhase::Host as u32,
            device: u32::MAX,
            ..Default::default()
        }
        .into()
    };
    let kernel = |start: u64, end: u64, name_id: u32| -> Record {
        KernelExec { start_ns: start, end_ns: end, name_id, pid: PID, device: 0, ..Default::default() }.into()
    };
    for i in 0..STEPS {
        let s = b + i * STEP;
        v.push(KernelLaunch { time_ns: s, pid: PID, tid: PID, ..Default::default() }.into());
        v.push(kernel(s, s + 5 * MS + slow(rank), GEMM));
        v.push(kernel(s + 5 * MS + slow(rank), s + 8 * MS, NCCL));
        v.push(coll(s + MS, i));
        v.push(
            HostStall {
                start_ns: s + 8 * MS,
                end_ns: s + 9 * MS + MS / 2,
                pid: PID,
                tid: PID,
                reason: StallReason::Futex as u32,
                syscall: 202,
            }
            .into(),
        );
        v.push(
            StepMarker {
                start_ns: s,
                end_ns: s + STEP,
                step: i,
                pid: PID,
                name_id: STEP_NAME,
                source: StepSource::Nvtx as u32,
                device: 0,
            }
            .into(),
        );
        if rank == 0 && i == 3 {
            v.push(
                FileIo {
                    start_ns: s + 8 * MS,
                    end_ns: s + 9 * MS,
                    bytes: 64 << 20,
                    pid: PID,
                    tid: PID,
                    fd: 7,
                    syscall: 1,
                }
                .into(),
            );
        }
    }
    let end = b + STEPS * STEP;
    if rank == 0 {
        v.push(coll(end + MS, STEPS));
        v.push(kernel(end + 2 * MS, end + 3 * MS, NCCL));
    }
    v.push(KernelLaunch { time_ns: end + 4 * MS, pid: PID, tid: PID, ..Default::default() }.into());
    v.sort_by_key(|r| r.time_ns());
    v
}

/// Writes rank `rank`'s trace with a header naming its host.
fn write_rank(dir: &Path, rank: u32) -> PathBuf {
    let path = dir.join(format!("rank{rank}.gptrace"));
    let interner = Arc::new(Interner::new());
    for n in NAMES {
        interner.intern(n);
    }
    let mut extra = serde_json::Map::new();
    extra.insert("host_id".into(), format!("machine-{rank}").into());
    let info = TraceInfo { command: vec!["train.py".into()], extra, ..Default::default() };
    let options = WriterOptions { chunk_records: 17, ..Default::default() };
    let mut w = TraceWriter::create(&path, false, &info, interner, options).expect("creating the trace");
    w.append_all(rank_records(rank)).expect("appending");
    w.finish().expect("finishing");
    path
}

fn ghostprof() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ghostprof"))
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("running ghostprof");
    assert!(out.status.success(), "{:?}: {}", cmd, String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// One table read back: each column as cells, and the file's key-value metadata.
struct Table {
    rows: usize,
    cols: HashMap<String, Vec<Cell>>,
    meta: HashMap<String, String>,
    types: Vec<(String, arrow_schema::DataType, bool)>,
}

#[derive(Debug, Clone, PartialEq)]
enum Cell {
    I(Option<i64>),
    F(Option<f64>),
    S(Option<String>),
    B(Option<bool>),
}

impl Table {
    fn read(path: &Path) -> Table {
        let file = std::fs::File::open(path).unwrap();
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
        let meta = builder
            .metadata()
            .file_metadata()
            .key_value_metadata()
            .map(|kv| kv.iter().map(|k| (k.key.clone(), k.value.clone().unwrap_or_default())).collect())
            .unwrap_or_default();
        let types = builder
            .schema()
            .fields()
            .iter()
            .map(|f| (f.name().clone(), f.data_type().clone(), f.is_nullable()))
            .collect();
        let mut cols: HashMap<String, Vec<Cell>> = HashMap::new();
        let mut rows = 0;
        for batch in builder.build().unwrap() {
            let batch = batch.unwrap();
            rows += batch.num_rows();
            for (f, a) in batch.schema().fields().iter().zip(batch.columns()) {
                let out = cols.entry(f.name().clone()).or_default();
                let any = a.as_any();
                for i in 0..a.len() {
                    let null = a.is_null(i);
                    out.push(if let Some(x) = any.downcast_ref::<Int64Array>() {
                        Cell::I((!null).then(|| x.value(i)))
                    } else if let Some(x) = any.downcast_ref::<Float64Array>() {
                        Cell::F((!null).then(|| x.value(i)))
                    } else if let Some(x) = any.downcast_ref::<StringArray>() {
                        Cell::S((!null).then(|| x.value(i).to_string()))
                    } else if let Some(x) = any.downcast_ref::<BooleanArray>() {
                        Cell::B((!null).then(|| x.value(i)))
                    } else {
                        panic!("column {} of an unexpected type {:?}", f.name(), a.data_type())
                    });
                }
            }
        }
        Table { rows, cols, meta, types }
    }

    fn col(&self, name: &str) -> &[Cell] {
        self.cols.get(name).unwrap_or_else(|| panic!("no column {name}"))
    }

    fn i(&self, name: &str, row: usize) -> Option<i64> {
        match &self.col(name)[row] {
            Cell::I(v) => *v,
            c => panic!("{name}: {c:?}"),
        }
    }

    fn u(&self, name: &str, row: usize) -> u64 {
        self.i(name, row).unwrap_or_else(|| panic!("{name} null in row {row}")) as u64
    }

    fn f(&self, name: &str, row: usize) -> Option<f64> {
        match &self.col(name)[row] {
            Cell::F(v) => *v,
            c => panic!("{name}: {c:?}"),
        }
    }

    fn s(&self, name: &str, row: usize) -> Option<String> {
        match &self.col(name)[row] {
            Cell::S(v) => v.clone(),
            c => panic!("{name}: {c:?}"),
        }
    }

    fn b(&self, name: &str, row: usize) -> bool {
        match &self.col(name)[row] {
            Cell::B(v) => v.unwrap(),
            c => panic!("{name}: {c:?}"),
        }
    }
}

/// Floats equal to the last bits but one: the JSON side went through text (serde_json's
/// default parser can be one ulp off).
#[track_caller]
fn assert_f(a: Option<f64>, b: Option<f64>, what: &str) {
    match (a, b) {
        (Some(x), Some(y)) => assert!((x - y).abs() <= 1e-12 * x.abs().max(y.abs()).max(1e-300), "{what}: {x} vs {y}"),
        _ => assert_eq!(a, b, "{what}"),
    }
}

/// `compute.useful` → `compute_useful_ns`.
fn ns_column(category: &str) -> String {
    format!("{}_ns", category.replace('.', "_"))
}

/// The categories' names in report order.
fn categories() -> Vec<&'static str> {
    ghostprof::analyze::Category::NAMES.to_vec()
}

/// A step's or bin's row equals its JSON object (fractions from the nanoseconds, exactly).
fn assert_partition(t: &Table, row: usize, json: &Value, mfu_known: bool, what: &str) {
    let start = t.u("start_ns", row);
    let end = t.u("end_ns", row);
    assert_eq!(json["start_ns"].as_u64(), Some(start), "{what}");
    if let Some(e) = json["end_ns"].as_u64() {
        assert_eq!(e, end, "{what}");
    }
    let len = (end - start).max(1) as f64;
    let mut sum = 0;
    for c in categories() {
        let ns = t.u(&ns_column(c), row);
        sum += ns;
        assert_f(json["categories"][c].as_f64(), Some(ns as f64 / len), &format!("{what} {c}"));
    }
    assert_eq!(sum, end - start, "{what}: the categories sum to the partition");
    assert_f(json["busy"].as_f64(), t.f("busy", row), what);
    assert_eq!(t.f("busy", row), Some(t.u("busy_ns", row) as f64 / len), "{what}");
    assert_f(json["mfu"].as_f64(), t.f("mfu", row), what);
    assert_eq!(t.f("mfu", row).is_some(), mfu_known, "{what}");
}

/// The rows of `t` keyed by (trace, pid, device), in file order.
fn rows_by_device(t: &Table) -> BTreeMap<(String, i64, i64), Vec<usize>> {
    let mut m: BTreeMap<(String, i64, i64), Vec<usize>> = BTreeMap::new();
    for r in 0..t.rows {
        m.entry((t.s("trace", r).unwrap(), t.i("pid", r).unwrap(), t.i("device", r).unwrap())).or_default().push(r);
    }
    m
}

/// Per rank: (matched, mean skew, max skew, late count) redone from the `collectives` table
/// by report's rule, the straggler, and the wait each rank's lateness caused.
struct Redone {
    skew: BTreeMap<i64, (u64, f64, u64, u64)>,
    straggler: Option<i64>,
    caused_wait: BTreeMap<i64, u64>,
    waits: BTreeMap<usize, Option<u64>>,
}

fn redo_matching(c: &Table) -> Redone {
    let mut groups: BTreeMap<(i64, i64, i64), Vec<usize>> = BTreeMap::new();
    for r in 0..c.rows {
        groups.entry((c.i("comm", r).unwrap(), c.i("nranks", r).unwrap(), c.i("seq", r).unwrap())).or_default().push(r);
    }
    let mut skew: BTreeMap<i64, (u64, f64, u64, u64)> = BTreeMap::new();
    let mut caused_wait = BTreeMap::new();
    let mut waits = BTreeMap::new();
    for ((_, nranks, _), rows) in groups {
        let mut ranks: Vec<i64> = rows.iter().map(|&r| c.i("comm_rank", r).unwrap()).collect();
        ranks.sort_unstable();
        ranks.dedup();
        if nranks < 2 || rows.len() != nranks as usize || ranks.len() != rows.len() {
            for r in rows {
                waits.insert(r, None);
            }
            continue;
        }
        let at = |r: usize| c.i("arrival_common_ns", r).unwrap();
        let first = rows.iter().map(|&r| at(r)).min().unwrap();
        let last = rows.iter().map(|&r| at(r)).max().unwrap();
        let mut total_wait = 0;
        for &r in &rows {
            let len = c.i("kernel_end_ns", r).unwrap() - c.i("kernel_start_ns", r).unwrap();
            let w = ((last - at(r)) as u64).min(len as u64);
            total_wait += w;
            waits.insert(r, Some(w));
            let e = skew.entry(c.i("rank", r).unwrap()).or_default();
            let s = (at(r) - first) as u64;
            e.0 += 1;
            e.1 += s as f64;
            e.2 = e.2.max(s);
            if at(r) == last && last > first {
                e.3 += 1;
            }
        }
        // given to the rank that arrived last (split when several arrived at that instant)
        let late: Vec<usize> = rows.iter().copied().filter(|&r| at(r) == last && last > first).collect();
        for &r in &late {
            *caused_wait.entry(c.i("rank", r).unwrap()).or_insert(0) += total_wait / late.len() as u64;
        }
    }
    for e in skew.values_mut() {
        e.1 /= e.0 as f64;
    }
    let straggler = (skew.values().filter(|e| e.0 > 0).count() >= 2)
        .then(|| {
            skew.iter().filter(|(_, e)| e.0 > 0 && e.1 > 0.0).max_by(|a, b| a.1 .1.total_cmp(&b.1 .1)).map(|(r, _)| *r)
        })
        .flatten();
    Redone { skew, straggler, caused_wait, waits }
}

#[test]
fn parquet_tables_equal_report_json() {
    let dir = tmpdir();
    let traces: Vec<PathBuf> = (0..RANKS).map(|r| write_rank(dir.path(), r)).collect();
    let out = dir.path().join("tables");
    let stdout = run_ok(ghostprof().args(["export", "--format", "parquet", "--job", "job-7"]).arg(&out).args(&traces));
    assert!(stdout.contains("devices.parquet (3 rows)"), "{stdout}");
    let json: Value = serde_json::from_str(&run_ok(ghostprof().args(["report", "--json"]).args(&traces))).unwrap();
    let t: HashMap<&str, Table> = TABLES.iter().map(|n| (*n, Table::read(&out.join(format!("{n}.parquet"))))).collect();

    // Every table: the declared schema, the version key, the identity in every row.
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string();
    for (name, table) in &t {
        assert_eq!(table.meta.get("schema_version").map(String::as_str), Some(SCHEMA_VERSION), "{name}");
        assert_eq!(table.meta.get("ghostprof.table").map(String::as_str), Some(*name));
        let declared: Vec<(String, arrow_schema::DataType, bool)> =
            columns(name).into_iter().map(|c| (c.name, c.ty.arrow(), c.nullable)).collect();
        assert_eq!(table.types, declared, "{name}");
        assert!(table.rows > 0, "{name} is empty");
        for r in 0..table.rows {
            assert_eq!(table.s("job", r).as_deref(), Some("job-7"), "{name}");
            assert_eq!(table.s("host", r), Some(hostname.clone()), "{name}");
            let trace = table.s("trace", r).unwrap();
            let rank = traces.iter().position(|p| p.display().to_string() == trace).expect("a given trace");
            assert_eq!(table.s("host_id", r), Some(format!("machine-{rank}")), "{name}");
            assert_eq!(table.i("pid", r), Some(PID as i64), "{name}");
            assert_eq!(table.i("rank", r), Some(rank as i64), "{name}: the process's NCCL rank");
        }
    }

    // devices: one per (trace, pid, device), every figure of report's.
    let d = &t["devices"];
    let jd = json["devices"].as_array().unwrap();
    assert_eq!(d.rows, jd.len());
    assert_eq!(d.rows, RANKS as usize);
    let steps = rows_by_device(&t["steps"]);
    let bins = rows_by_device(&t["bins"]);
    let kernels = rows_by_device(&t["kernels"]);
    for (r, j) in jd.iter().enumerate() {
        let what = format!("device {r}");
        assert_eq!(d.s("trace", r).as_deref(), j["file"].as_str(), "{what}");
        assert_eq!(d.i("device", r), j["device"].as_i64());
        assert_eq!(d.u("window_start_ns", r), j["window_start_ns"].as_u64().unwrap());
        assert_eq!(d.u("window_end_ns", r), j["window_end_ns"].as_u64().unwrap());
        assert_eq!(d.u("window_ns", r), d.u("window_end_ns", r) - d.u("window_start_ns", r));
        assert_eq!(d.u("busy_ns", r), j["busy_ns"].as_u64().unwrap());
        for c in categories() {
            assert_eq!(d.u(&ns_column(c), r), j["categories_ns"][c].as_u64().unwrap(), "{what} {c}");
        }
        assert_f(d.f("busy", r), j["busy"].as_f64(), &what);
        assert_f(d.f("mfu", r), j["mfu"].as_f64(), &what);
        assert_f(d.f("divergence", r), j["divergence"].as_f64(), &what);
        assert_eq!(d.s("flop_source", r).as_deref(), j["flop_source"].as_str());
        assert_eq!(d.s("step_source", r).as_deref(), j["step_source"].as_str());
        assert_eq!(d.s("step_source", r).as_deref(), Some("nvtx"));
        assert_eq!(d.u("bin_width_ns", r), j["bins"]["width_ns"].as_u64().unwrap());
        assert_eq!(d.u("checkpoint_io_ns", r), j["checkpoint"]["io_ns"].as_u64().unwrap());
        assert_eq!(d.u("checkpoint_bytes", r), j["checkpoint"]["bytes"].as_u64().unwrap());
        let key = (d.s("trace", r).unwrap(), d.i("pid", r).unwrap(), d.i("device", r).unwrap());
        let mfu_known = j["mfu"].is_number();
        // steps and bins: every one, in order
        let js = j["steps"].as_array().unwrap();
        assert_eq!(js.len(), STEPS as usize);
        assert_eq!(d.u("steps", r), STEPS);
        assert_eq!(steps[&key].len(), js.len(), "{what}");
        for (n, (&row, jstep)) in steps[&key].iter().zip(js).enumerate() {
            assert_eq!(t["steps"].u("step", row), n as u64);
            assert_eq!(jstep["index"].as_u64(), Some(n as u64));
            assert_partition(&t["steps"], row, jstep, mfu_known, &format!("{what} step {n}"));
        }
        let jb = j["bins"]["items"].as_array().unwrap();
        assert_eq!(jb.len(), 200, "{what}: the default 200 bins");
        assert_eq!(bins[&key].len(), jb.len(), "{what}");
        for (n, (&row, jbin)) in bins[&key].iter().zip(jb).enumerate() {
            assert_eq!(t["bins"].u("bin", row), n as u64);
            assert_partition(&t["bins"], row, jbin, mfu_known, &format!("{what} bin {n}"));
        }
        // kernels: report's top kernels, in its order
        let jk = j["top_kernels"].as_array().unwrap();
        assert_eq!(kernels[&key].len(), jk.len(), "{what}");
        assert_eq!(jk.len(), 2);
        let k = &t["kernels"];
        for (n, (&row, jk)) in kernels[&key].iter().zip(jk).enumerate() {
            assert_eq!(k.u("position", row), n as u64);
            assert_eq!(k.s("name", row).as_deref(), jk["name"].as_str());
            assert_eq!(k.u("count", row), jk["count"].as_u64().unwrap());
            assert_eq!(k.u("total_ns", row), jk["total_ns"].as_u64().unwrap());
            assert_eq!(k.u("useful_ns", row), jk["useful_ns"].as_u64().unwrap());
            assert_f(k.f("mean_ns", row), jk["mean_ns"].as_f64(), &what);
            assert_f(k.f("share", row), jk["share"].as_f64(), &what);
        }
    }
    // The known answer behind it: rank 2 arrives 1 ms late, rank 1 0.3 ms; so rank 0 waits
    // 1 ms a step, rank 1 0.7 ms.
    let waits: Vec<u64> = (0..d.rows).map(|r| d.u("comm_wait_ns", r)).collect();
    assert_eq!(waits, vec![10 * MS, 7 * MS, 0]);

    // collectives: each rank's instances; summed per (op, size bucket) they are report's totals.
    let c = &t["collectives"];
    assert_eq!(c.rows, (RANKS as u64 * STEPS + 1) as usize, "every rank's instance, the lone one too");
    let mut totals: BTreeMap<(String, String), (u64, u64, u64, u64)> = BTreeMap::new();
    for r in 0..c.rows {
        let (Some(ks), Some(ke)) = (c.i("kernel_start_ns", r), c.i("kernel_end_ns", r)) else { continue };
        let e = totals.entry((c.s("op", r).unwrap(), size_bucket(c.u("bytes", r)))).or_default();
        e.0 += 1;
        e.1 += c.u("bytes", r);
        e.2 += (ke - ks) as u64;
        e.3 += c.i("wait_ns", r).unwrap_or(0) as u64;
        // The common clock is report's: these traces name three hosts, so each file's clock is
        // fitted to the collectives' ends against the first (report's `clock_alignment`), which
        // here is the known answer, rank 0's own clock, within a microsecond.
        let rank = c.u("rank", r) as u32;
        let on_common = |t: u64| -> i128 {
            let f = json["clock_alignment"]["files"]
                .as_array()
                .unwrap()
                .iter()
                .find(|f| f["file"].as_str() == c.s("trace", r).as_deref())
                .expect("the trace's alignment");
            let (off, ppm, anchor) =
                (f["offset_ns"].as_i64().unwrap(), f["drift_ppm"].as_f64().unwrap(), f["anchor_ns"].as_u64().unwrap());
            t as i128 + off as i128 + (ppm * 1e-6 * (t as f64 - anchor as f64)).round() as i128
        };
        assert_eq!(json["clock_alignment"]["method"], "collectives");
        assert_eq!(c.i("arrival_common_ns", r).unwrap() as i128, on_common(c.u("arrival_ns", r)));
        assert_eq!(c.i("end_common_ns", r).unwrap() as i128, on_common(ke as u64));
        let known = c.u("arrival_ns", r) as i128 - base(rank) as i128 + base(0) as i128;
        assert!(
            (c.i("arrival_common_ns", r).unwrap() as i128 - known).abs() < 1_000,
            "rank {rank}: off the known clock"
        );
        assert_eq!(c.i("arrival_realtime_ns", r), Some((c.u("arrival_ns", r) - base(rank) + REAL0) as i64));
    }
    let jc = json["collectives"].as_array().unwrap();
    assert_eq!(totals.len(), jc.len());
    for j in jc {
        let e = totals[&(j["op"].as_str().unwrap().to_string(), j["size_bucket"].as_str().unwrap().to_string())];
        assert_eq!(
            (e.0, e.1, e.2, e.3),
            (
                j["count"].as_u64().unwrap(),
                j["bytes"].as_u64().unwrap(),
                j["time_ns"].as_u64().unwrap(),
                j["wait_ns"].as_u64().unwrap()
            ),
            "{j}"
        );
    }
    // The matching redone from the table alone (what tools/fleet/ghost_compute.py does) gives
    // report's skew and straggler, and each instance's wait as exported.
    let redone = redo_matching(c);
    for (r, w) in &redone.waits {
        assert_eq!(c.i("wait_ns", *r).map(|w| w as u64), *w, "row {r}");
        assert_eq!(c.b("matched", *r), w.is_some(), "row {r}");
    }
    assert_eq!(redone.waits.values().filter(|w| w.is_none()).count(), 1, "rank 0's lone all-reduce");
    let js = json["skew"].as_array().unwrap();
    assert_eq!(js.len(), redone.skew.len());
    for j in js {
        let e = redone.skew[&j["rank"].as_i64().unwrap()];
        assert!(e.0 > 0);
        assert_f(Some(e.1), j["mean_arrival_skew_ns"].as_f64(), &j.to_string());
        assert_eq!(Some(e.2), j["max_arrival_skew_ns"].as_u64(), "{j}");
        assert_eq!(Some(e.3), j["late_count"].as_u64(), "{j}");
    }
    assert_eq!(redone.straggler, json["straggler_rank"].as_i64());
    assert_eq!(redone.straggler, Some(2));
    // All the waiting was for rank 2: (1 + 0.7) ms a step.
    assert_eq!(redone.caused_wait, BTreeMap::from([(2, 17 * MS)]));

    // host_stalls: every thread's off-CPU time by reason, as report's hosts.
    let h = &t["host_stalls"];
    let mut got: BTreeMap<(String, u64, String), u64> = BTreeMap::new();
    for r in 0..h.rows {
        assert!(h.u("off_cpu_ns", r) > 0, "zero rows are left out");
        got.insert((h.s("trace", r).unwrap(), h.u("tid", r), h.s("reason", r).unwrap()), h.u("off_cpu_ns", r));
    }
    let mut want = BTreeMap::new();
    for p in json["hosts"].as_array().unwrap() {
        for th in p["threads"].as_array().unwrap() {
            for (reason, ns) in th["off_cpu_ns"].as_object().unwrap() {
                if ns.as_u64().unwrap() > 0 {
                    want.insert(
                        (p["file"].as_str().unwrap().to_string(), th["tid"].as_u64().unwrap(), reason.clone()),
                        ns.as_u64().unwrap(),
                    );
                }
            }
        }
    }
    assert_eq!(got, want);
    assert_eq!(got.get(&(traces[1].display().to_string(), PID as u64, "futex".into())), Some(&(15 * MS)));
}

/// The doc lists every column of every table with its type, and nothing else.
#[test]
fn the_doc_lists_every_column_with_its_type() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/parquet-schema.md")).unwrap();
    let mut table = None;
    let mut listed: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for line in doc.lines() {
        if let Some(name) = line.strip_prefix("### `").and_then(|l| l.split('`').next()) {
            table = Some(name.to_string());
        } else if let (Some(t), Some(row)) = (&table, line.strip_prefix("| `")) {
            let mut cells = row.split('|').map(str::trim);
            let name = cells.next().unwrap().trim_end_matches('`').to_string();
            let ty = cells.next().unwrap().to_string();
            listed.entry(t.clone()).or_default().push((name, ty));
        }
    }
    let identity: Vec<(String, String)> = listed.get("identity").cloned().expect("an identity section");
    for t in TABLES {
        let mut want: Vec<(String, String)> = identity.clone();
        want.extend(listed.get(t).cloned().unwrap_or_else(|| panic!("no section for {t}")));
        let got: Vec<(String, String)> = columns(t)
            .into_iter()
            .map(|c| {
                let ty = c.ty.name().to_string() + if c.nullable { ", null" } else { "" };
                (c.name, ty)
            })
            .collect();
        assert_eq!(got, want, "table {t}: the doc and the files differ");
    }
    assert_eq!(listed.len(), TABLES.len() + 1, "a doc section for a table that is not written");
}

/// The Python that the pyarrow check runs: every table's rows, version key and a few sums.
const PYARROW_CHECK: &str = r#"
import json, sys
import pyarrow.parquet as pq
out = {}
for name in sys.argv[2:]:
    t = pq.read_table(f"{sys.argv[1]}/{name}.parquet")
    meta = pq.read_metadata(f"{sys.argv[1]}/{name}.parquet").metadata
    sums = {c: str(sum(v for v in t.column(c).to_pylist() if v is not None))
            for c in t.column_names if str(t.schema.field(c).type) == "int64"}
    out[name] = {"rows": t.num_rows, "version": meta[b"schema_version"].decode(),
                 "types": {f.name: str(f.type) for f in t.schema}, "sums": sums,
                 "jobs": sorted(set(t.column("job").to_pylist()))}
print(json.dumps(out))
"#;

#[test]
fn pyarrow_reads_every_table() {
    let python = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/hta-venv/bin/python"));
    let has_pyarrow = python.exists()
        && Command::new(&python).args(["-c", "import pyarrow"]).output().is_ok_and(|o| o.status.success());
    if !has_pyarrow {
        eprintln!("SKIPPED pyarrow_reads_every_table: no pyarrow in target/hta-venv (run tools/setup)");
        return;
    }
    let dir = tmpdir();
    let traces: Vec<PathBuf> = (0..RANKS).map(|r| write_rank(dir.path(), r)).collect();
    let out = dir.path().join("tables");
    run_ok(ghostprof().args(["export", "--format", "parquet", "-o"]).arg(&out).args(&traces));
    let py = Command::new(&python).args(["-c", PYARROW_CHECK]).arg(&out).args(TABLES).output().unwrap();
    assert!(py.status.success(), "{}", String::from_utf8_lossy(&py.stderr));
    let v: Value = serde_json::from_slice(&py.stdout).unwrap();
    for name in TABLES {
        let rust = Table::read(&out.join(format!("{name}.parquet")));
        let p = &v[name];
        assert_eq!(p["rows"].as_u64(), Some(rust.rows as u64), "{name}");
        assert_eq!(p["version"], SCHEMA_VERSION, "{name}");
        // one job, the default one: 16 hex digits
        let jobs = p["jobs"].as_array().unwrap();
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].as_str().unwrap().len(), 16, "{jobs:?}");
        for c in columns(name) {
            let want = match c.ty {
                ColumnType::Int64 => "int64",
                ColumnType::Float64 => "double",
                ColumnType::Utf8 => "string",
                ColumnType::Boolean => "bool",
            };
            assert_eq!(p["types"][&c.name], want, "{name}.{}", c.name);
            if c.ty == ColumnType::Int64 {
                let sum: i128 =
                    rust.col(&c.name).iter().map(|x| if let Cell::I(v) = x { v.unwrap_or(0) as i128 } else { 0 }).sum();
                assert_eq!(p["sums"][&c.name].as_str(), Some(sum.to_string().as_str()), "{name}.{}", c.name);
            }
        }
    }
    assert_eq!(v["devices"]["sums"]["comm_wait_ns"], (17 * MS).to_string());
}

#[test]
fn parquet_output_rules_and_errors() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = tmpdir();
    let trace = write_rank(dir.path(), 0);
    let out = dir.path().join("t");
    run_ok(ghostprof().args(["export", "--format", "parquet"]).arg(&out).arg(&trace));
    let devices = out.join("devices.parquet");
    for name in TABLES {
        let m = std::fs::metadata(out.join(format!("{name}.parquet"))).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o600, "{name}");
    }
    assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o700);
    let names = |d: &Path| -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        v.sort();
        v
    };
    assert_eq!(names(&out).len(), TABLES.len(), "no temporary file left: {:?}", names(&out));
    // An existing table without --force: refused before anything is written, one line.
    let inode = std::fs::metadata(&devices).unwrap().ino();
    let again = ghostprof().args(["export", "--format", "parquet"]).arg(&out).arg(&trace).output().unwrap();
    assert_eq!(again.status.code(), Some(1));
    let err = String::from_utf8_lossy(&again.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("--force"), "{err}");
    assert_eq!(std::fs::metadata(&devices).unwrap().ino(), inode);
    // With --force: new inodes; the same default job (a hash of the headers).
    let job0 = Table::read(&devices).s("job", 0);
    run_ok(ghostprof().args(["export", "--format", "parquet", "--force"]).arg(&out).arg(&trace));
    assert_ne!(std::fs::metadata(&devices).unwrap().ino(), inode);
    assert_eq!(Table::read(&devices).s("job", 0), job0);
    assert_eq!(names(&out).len(), TABLES.len());
    // A symlinked output directory is refused, nothing written through it.
    let victim = dir.path().join("victim");
    std::fs::create_dir(&victim).unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let run = ghostprof().args(["export", "--format", "parquet"]).arg(&link).arg(&trace).output().unwrap();
    assert_eq!(run.status.code(), Some(1), "{}", String::from_utf8_lossy(&run.stderr));
    assert!(names(&victim).is_empty());
    // Bad command lines: one line each, exit 1 (clap's usage errors exit 2).
    for (args, says) in [
        (vec!["--format", "parquet", "only-one-path"], "OUT_DIR and at least one trace"),
        (vec!["--format", "parquet", "--pid", "3", "o", "t"], "--pid"),
        (vec!["--format", "parquet", "--job", "a\nb", "o2", "t"], "--job"),
        (vec!["--job", "x", "-o", "o.json", "t"], "--format parquet"),
        (vec!["a", "b", "-o", "o.json"], "one trace file"),
    ] {
        let run = ghostprof().arg("export").args(&args).current_dir(dir.path()).output().unwrap();
        let err = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    // The bad --job was refused before any output directory was made.
    assert!(!dir.path().join("o2").exists());
}

/// The `kernels` table has every kernel name of a device, not only report's top 10: 13 names,
/// name i (1-based) run i times for i µs each (so i² µs in all, the order most time first);
/// the first 10 rows are report's `top_kernels`, the last 3 the names with the least time.
#[test]
fn the_kernels_table_has_every_kernel_name() {
    let dir = tmpdir();
    let names: Vec<String> = (1..=13).map(|i| format!("kernel_{i:02}")).collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut records: Vec<Record> = Vec::new();
    let mut t = 1_000u64;
    for i in 1..=13u32 {
        for _ in 0..i {
            records.push(
                KernelExec {
                    start_ns: t,
                    end_ns: t + i as u64 * 1_000,
                    name_id: i,
                    pid: PID,
                    device: 0,
                    ..Default::default()
                }
                .into(),
            );
            t += i as u64 * 1_000 + 500;
        }
    }
    let trace = dir.path().join("many.gptrace");
    write_trace(&trace, &records, &name_refs, 40);
    let out = dir.path().join("tables");
    run_ok(ghostprof().args(["export", "--format", "parquet"]).arg(&out).arg(&trace));
    let json: Value = serde_json::from_str(&run_ok(ghostprof().args(["report", "--json"]).arg(&trace))).unwrap();
    let top = json["devices"][0]["top_kernels"].as_array().unwrap();
    assert_eq!(top.len(), 10, "report lists 10");
    let k = Table::read(&out.join("kernels.parquet"));
    assert_eq!(k.rows, 13, "every name");
    for r in 0..k.rows {
        let i = 13 - r as u64; // most time first
        assert_eq!(k.u("position", r), r as u64);
        assert_eq!(k.s("name", r), Some(format!("kernel_{i:02}")));
        assert_eq!((k.u("count", r), k.u("total_ns", r)), (i, i * i * 1_000), "row {r}");
        assert_f(k.f("mean_ns", r), Some(i as f64 * 1_000.0), "mean");
        if let Some(j) = top.get(r) {
            assert_eq!(k.s("name", r).as_deref(), j["name"].as_str());
            assert_eq!(k.u("total_ns", r), j["total_ns"].as_u64().unwrap());
        }
    }
}
