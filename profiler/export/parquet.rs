//! `export --format parquet`: the analysis `report` makes ([`analyze_files`]) as Parquet tables,
//! one file per table in an output directory, for fleet analysis (Apache Spark, DuckDB,
//! pandas): `devices`, `steps`, `bins`, `kernels`, `collectives` and `host_stalls`
//! (docs/parquet-schema.md, every column with its type and unit).
//!
//! Every table starts with the same identity columns (job, host, host id, trace, pid, rank),
//! so the tables of many jobs and hosts can be unioned. The numbers are those of `report
//! --json` on the same traces: the same analysis, not a second one. The collective instances
//! are each rank's part of each collective with its arrival on the common clock (the clock
//! `report` matched them on), so a fleet engine can redo the cross-rank matching over traces
//! exported on different hosts.
//!
//! Integers are `Int64` (Spark has no unsigned types: it reads `UINT_64` as a decimal), so a
//! value above 2^63 − 1 (only a damaged or hostile trace has one) is written as 2^63 − 1.
//! Files are written through [`crate::outfile`] (temporary file, then rename; 0600; no
//! symlinks) with zstd pages.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ::parquet::arrow::ArrowWriter;
use ::parquet::basic::{Compression, ZstdLevel};
use ::parquet::file::metadata::KeyValue;
use ::parquet::file::properties::WriterProperties;
use anyhow::Context;
use arrow_array::builder::{BooleanBuilder, Float64Builder, Int64Builder, StringBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};

use crate::analyze::files::FileReport;
use crate::analyze::nccl_algo::algo_name;
use crate::analyze::{analyze_files, Category, Partition, ReportOptions};
use crate::outfile::{Owner, PendingOutput};
use crate::trace::{CollOp, StallReason, StepSource, TraceReader};

/// The `schema_version` key of every file's metadata. Raised when a column changes type or
/// meaning or goes away; a new column does not raise it.
pub const SCHEMA_VERSION: &str = "1";

/// Rows per record batch (and at most per row group's batch): bounds the memory of a table
/// of many steps or bins.
const BATCH_ROWS: usize = 65_536;

/// The longest job name `--job` takes (it is written into every row).
pub const MAX_JOB_LEN: usize = 256;

/// What [`export_parquet`] does beyond the defaults.
#[derive(Debug, Clone, Default)]
pub struct ParquetOptions {
    /// The job's identity in every row; None: derived from the traces' headers (see
    /// `default_job_id`).
    pub job: Option<String>,
    /// The analysis's options (the same as `report`'s: steps, bins).
    pub report: ReportOptions,
    /// Replace existing table files.
    pub force: bool,
    /// Who gets the files (under sudo: the invoking user).
    pub owner: Option<Owner>,
}

/// One table file written.
#[derive(Debug, Clone)]
pub struct TableFile {
    /// The table's name (`devices`, ...).
    pub table: &'static str,
    /// Where it was written.
    pub path: PathBuf,
    /// Its rows.
    pub rows: u64,
}

/// What [`export_parquet`] wrote.
#[derive(Debug, Clone)]
pub struct ParquetSummary {
    /// The job identity written in every row.
    pub job: String,
    /// One per table, in [`TABLES`] order.
    pub files: Vec<TableFile>,
    /// Records in the traces read (the input's events).
    pub records: u64,
    /// The analysis's warnings (damaged chunks, records left out, the devices' notes).
    pub warnings: Vec<String>,
}

/// A column's type in the files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    /// `Int64` (Parquet INT64).
    Int64,
    /// `Float64` (Parquet DOUBLE).
    Float64,
    /// `Utf8` (Parquet BYTE_ARRAY, STRING).
    Utf8,
    /// `Boolean`.
    Boolean,
}

impl ColumnType {
    /// The Arrow type.
    pub fn arrow(self) -> DataType {
        match self {
            ColumnType::Int64 => DataType::Int64,
            ColumnType::Float64 => DataType::Float64,
            ColumnType::Utf8 => DataType::Utf8,
            ColumnType::Boolean => DataType::Boolean,
        }
    }

    /// Its name in docs/parquet-schema.md.
    pub fn name(self) -> &'static str {
        match self {
            ColumnType::Int64 => "int64",
            ColumnType::Float64 => "double",
            ColumnType::Utf8 => "string",
            ColumnType::Boolean => "boolean",
        }
    }
}

/// One column of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Its name.
    pub name: String,
    /// Its type.
    pub ty: ColumnType,
    /// Whether it may be null.
    pub nullable: bool,
}

/// The tables, in the order they are written.
pub const TABLES: [&str; 6] = ["devices", "steps", "bins", "kernels", "collectives", "host_stalls"];

fn col(name: &str, ty: ColumnType, nullable: bool) -> Column {
    Column { name: name.to_string(), ty, nullable }
}

/// The identity columns every table starts with.
fn identity() -> Vec<Column> {
    use ColumnType::*;
    vec![
        col("job", Utf8, false),
        col("host", Utf8, true),
        col("host_id", Utf8, true),
        col("trace", Utf8, false),
        col("pid", Int64, false),
        col("rank", Int64, true),
    ]
}

/// `compute.useful` → `compute_useful_ns`.
fn category_column(c: Category) -> String {
    format!("{}_ns", c.name().replace('.', "_"))
}

/// A partition's columns (steps, bins) after `index_name`.
fn partition_columns(index_name: &str) -> Vec<Column> {
    use ColumnType::*;
    let mut v = vec![col("device", Int64, false), col(index_name, Int64, false)];
    v.extend([col("start_ns", Int64, false), col("end_ns", Int64, false), col("busy_ns", Int64, false)]);
    v.extend(Category::ALL.iter().map(|c| col(&category_column(*c), Int64, false)));
    v.extend([col("busy", Float64, false), col("mfu", Float64, true)]);
    v
}

/// The columns of table `name` (one of [`TABLES`]), identity first.
pub fn columns(name: &str) -> Vec<Column> {
    use ColumnType::*;
    let mut v = identity();
    match name {
        "devices" => {
            v.extend([
                col("device", Int64, false),
                col("window_start_ns", Int64, false),
                col("window_end_ns", Int64, false),
                col("window_ns", Int64, false),
                col("busy_ns", Int64, false),
            ]);
            v.extend(Category::ALL.iter().map(|c| col(&category_column(*c), Int64, false)));
            v.extend([
                col("busy", Float64, false),
                col("mfu", Float64, true),
                col("divergence", Float64, true),
                col("flop_source", Utf8, false),
                col("step_source", Utf8, false),
                col("steps", Int64, false),
                col("bin_width_ns", Int64, false),
                col("checkpoint_io_ns", Int64, false),
                col("checkpoint_bytes", Int64, false),
            ]);
        }
        "steps" => v.extend(partition_columns("step")),
        "bins" => v.extend(partition_columns("bin")),
        "kernels" => v.extend([
            col("device", Int64, false),
            col("position", Int64, false),
            col("name", Utf8, false),
            col("count", Int64, false),
            col("total_ns", Int64, false),
            col("useful_ns", Int64, false),
            col("mean_ns", Float64, false),
            col("share", Float64, false),
        ]),
        "collectives" => v.extend([
            col("comm", Int64, false),
            col("comm_rank", Int64, false),
            col("nranks", Int64, false),
            col("seq", Int64, false),
            col("op", Utf8, false),
            col("bytes", Int64, false),
            col("algorithm", Utf8, true),
            col("arrival_ns", Int64, false),
            col("kernel_start_ns", Int64, true),
            col("kernel_end_ns", Int64, true),
            col("arrival_common_ns", Int64, false),
            col("end_common_ns", Int64, true),
            col("arrival_realtime_ns", Int64, true),
            col("matched", Boolean, false),
            col("wait_ns", Int64, true),
        ]),
        "host_stalls" => {
            v.extend([col("tid", Int64, false), col("reason", Utf8, false), col("off_cpu_ns", Int64, false)])
        }
        _ => {}
    }
    v
}

/// One cell of a row.
#[derive(Debug, Clone, Copy)]
enum Value<'a> {
    I(Option<i64>),
    F(Option<f64>),
    S(Option<&'a str>),
    B(bool),
}

/// An unsigned figure as Int64, saturating (a damaged trace's times can be anything).
fn int(v: u64) -> Value<'static> {
    Value::I(Some(i64::try_from(v).unwrap_or(i64::MAX)))
}

fn int_opt(v: Option<u64>) -> Value<'static> {
    Value::I(v.map(|v| i64::try_from(v).unwrap_or(i64::MAX)))
}

/// A signed figure (a time on the common clock) as Int64, saturating.
fn int128(v: i128) -> Value<'static> {
    Value::I(Some(v.clamp(i64::MIN as i128, i64::MAX as i128) as i64))
}

enum Builder {
    I(Int64Builder),
    F(Float64Builder),
    S(StringBuilder),
    B(BooleanBuilder),
}

/// One table being written: rows gathered into record batches, batches into the file.
struct TableWriter {
    name: &'static str,
    schema: SchemaRef,
    builders: Vec<Builder>,
    in_batch: usize,
    rows: u64,
    writer: ArrowWriter<File>,
    pending: PendingOutput,
}

impl TableWriter {
    fn create(dir: &Path, name: &'static str, job: &str, opts: &ParquetOptions) -> anyhow::Result<Self> {
        let cols = columns(name);
        let schema: SchemaRef = Arc::new(Schema::new(
            cols.iter().map(|c| Field::new(c.name.clone(), c.ty.arrow(), c.nullable)).collect::<Vec<_>>(),
        ));
        let path = dir.join(format!("{name}.parquet"));
        let (file, pending) = crate::outfile::create_output(&path, opts.force, opts.owner)?;
        let meta = vec![
            KeyValue::new("schema_version".to_string(), SCHEMA_VERSION.to_string()),
            KeyValue::new("ghostprof.table".to_string(), name.to_string()),
            KeyValue::new("ghostprof.version".to_string(), env!("CARGO_PKG_VERSION").to_string()),
            KeyValue::new("ghostprof.job".to_string(), job.to_string()),
        ];
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
            .set_key_value_metadata(Some(meta))
            .build();
        let writer = ArrowWriter::try_new(file, schema.clone(), Some(props))
            .with_context(|| format!("{}: starting the Parquet file", path.display()))?;
        let builders = cols.iter().map(|c| new_builder(c.ty)).collect();
        Ok(TableWriter { name, schema, builders, in_batch: 0, rows: 0, writer, pending })
    }

    /// Appends one row (its cells in column order).
    fn push(&mut self, row: &[Value]) -> anyhow::Result<()> {
        anyhow::ensure!(
            row.len() == self.builders.len(),
            "internal error: a {} row of {} cells for {} columns",
            self.name,
            row.len(),
            self.builders.len()
        );
        for (i, (b, v)) in self.builders.iter_mut().zip(row).enumerate() {
            match (b, v) {
                (Builder::I(b), Value::I(v)) => b.append_option(*v),
                (Builder::F(b), Value::F(v)) => b.append_option(*v),
                (Builder::S(b), Value::S(v)) => b.append_option(*v),
                (Builder::B(b), Value::B(v)) => b.append_value(*v),
                _ => anyhow::bail!("internal error: {} column {} given a value of another type", self.name, i),
            }
        }
        self.in_batch += 1;
        self.rows += 1;
        if self.in_batch == BATCH_ROWS {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        if self.in_batch == 0 {
            return Ok(());
        }
        let arrays: Vec<ArrayRef> = self
            .builders
            .iter_mut()
            .map(|b| -> ArrayRef {
                match b {
                    Builder::I(b) => Arc::new(b.finish()),
                    Builder::F(b) => Arc::new(b.finish()),
                    Builder::S(b) => Arc::new(b.finish()),
                    Builder::B(b) => Arc::new(b.finish()),
                }
            })
            .collect();
        let batch = RecordBatch::try_new(self.schema.clone(), arrays)?;
        self.writer.write(&batch).with_context(|| format!("{}: writing", self.pending.path().display()))?;
        self.in_batch = 0;
        Ok(())
    }

    /// Writes what is left and the footer, and puts the file in place.
    fn finish(mut self) -> anyhow::Result<TableFile> {
        self.flush()?;
        let path = self.pending.path().to_path_buf();
        let file = self.writer.into_inner().with_context(|| format!("{}: writing the footer", path.display()))?;
        file.sync_all().with_context(|| format!("{}: syncing", path.display()))?;
        drop(file);
        self.pending.commit()?;
        Ok(TableFile { table: self.name, path, rows: self.rows })
    }
}

fn new_builder(ty: ColumnType) -> Builder {
    match ty {
        ColumnType::Int64 => Builder::I(Int64Builder::new()),
        ColumnType::Float64 => Builder::F(Float64Builder::new()),
        ColumnType::Utf8 => Builder::S(StringBuilder::new()),
        ColumnType::Boolean => Builder::B(BooleanBuilder::new()),
    }
}

/// What a trace's header says about where it was recorded.
#[derive(Debug, Clone, Default)]
struct TraceIdentity {
    host: Option<String>,
    host_id: Option<String>,
    created_unix_ns: u64,
    command: Vec<String>,
}

/// At most 256 bytes of a header string (the header is written by ghostprof, but a file is
/// input: a huge string is not copied into every row).
fn header_str(meta: &serde_json::Value, key: &str) -> Option<String> {
    let s = meta.get(key)?.as_str()?;
    (!s.is_empty() && s.len() <= 256).then(|| s.to_string())
}

fn identity_of(reader: &TraceReader) -> TraceIdentity {
    let meta = &reader.header().meta;
    TraceIdentity {
        host: header_str(meta, "hostname"),
        host_id: header_str(meta, "host_id"),
        created_unix_ns: meta.get("created_unix_ns").and_then(|v| v.as_u64()).unwrap_or(0),
        command: meta
            .get("command")
            .and_then(|v| v.as_array())
            .map(|a| a.iter().take(64).filter_map(|s| s.as_str().map(String::from)).collect())
            .unwrap_or_default(),
    }
}

/// The job identity when `--job` is not given: 16 hex digits of a hash (FNV-1a, stable across
/// builds) of each trace's host, creation time and command, in sorted order, so exporting the
/// same traces again gives the same job.
fn default_job_id(ids: &[TraceIdentity]) -> String {
    let mut keys: Vec<String> = ids
        .iter()
        .map(|i| {
            format!(
                "{}\u{0}{}\u{0}{}\u{0}{}",
                i.host_id.as_deref().unwrap_or(""),
                i.host.as_deref().unwrap_or(""),
                i.created_unix_ns,
                i.command.join("\u{1}")
            )
        })
        .collect();
    keys.sort();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in keys.join("\u{2}").bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// A job name given with `--job`: printable, at most [`MAX_JOB_LEN`] bytes.
pub fn check_job_name(job: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        !job.is_empty() && job.len() <= MAX_JOB_LEN && !job.chars().any(char::is_control),
        "--job {job:?}: give 1 to {MAX_JOB_LEN} bytes without control characters"
    );
    Ok(())
}

/// A process's rank: its first collective instance's NCCL rank (the rank `report`'s skew
/// names), None without collectives.
fn ranks_of(r: &FileReport) -> HashMap<u32, u32> {
    r.ranks.iter().filter_map(|input| input.instances.first().map(|i| (input.pid, i.rank))).collect()
}

/// Analyzes `traces` as `report` does (all of them together: the cross-rank matching spans
/// files) and writes the tables into `out_dir` (created, mode 0700, when missing).
pub fn export_parquet(traces: &[PathBuf], out_dir: &Path, opts: &ParquetOptions) -> anyhow::Result<ParquetSummary> {
    anyhow::ensure!(!traces.is_empty(), "no trace files given: export --format parquet OUT_DIR TRACE...");
    if let Some(job) = &opts.job {
        check_job_name(job)?;
    }
    let mut idents = Vec::new();
    let mut records = 0u64;
    for t in traces {
        let reader = TraceReader::open(t)?;
        records = records.saturating_add(reader.counts().iter().sum());
        idents.push(identity_of(&reader));
    }
    let job = opts.job.clone().unwrap_or_else(|| default_job_id(&idents));
    crate::outfile::create_output_dir(out_dir, opts.owner)?;
    // Said before the analysis: an existing table without --force.
    for t in TABLES {
        crate::outfile::check_output(&out_dir.join(format!("{t}.parquet")), opts.force)?;
    }
    let reports = analyze_files(traces, &opts.report)?;
    let mut writers = Vec::new();
    for t in TABLES {
        writers.push(TableWriter::create(out_dir, t, &job, opts)?);
    }
    let [devices, steps, bins, kernels, colls, stalls] = &mut writers[..] else {
        anyhow::bail!("internal error: {} table writers", TABLES.len());
    };
    // The one matching `report` uses (its waits, on each file's aligned clock): rank views go
    // file by file, process by process, as `analyze::files::cross_rank` builds them.
    let cross = crate::analyze::files::cross_rank(&reports);
    let mut view = 0usize;
    let mut warnings = Vec::new();
    for (f, r) in reports.iter().enumerate() {
        let id = &idents[f];
        let ranks = ranks_of(r);
        let ident = |pid: u32| -> [Value; 6] {
            [
                Value::S(Some(&job)),
                Value::S(id.host.as_deref()),
                Value::S(id.host_id.as_deref()),
                Value::S(Some(&r.path)),
                int(pid as u64),
                int_opt(ranks.get(&pid).map(|&x| x as u64)),
            ]
        };
        warnings.extend(r.warnings.iter().cloned());
        let no_detail = crate::analyze::DeviceDetail::default();
        for (i, a) in r.accounts.iter().enumerate() {
            let d = r.details.get(i).unwrap_or(&no_detail);
            warnings.extend(d.notes.iter().map(|n| format!("{} pid {} GPU {}: {n}", r.path, a.pid, a.device)));
            let mut row: Vec<Value> = ident(a.pid).to_vec();
            row.extend([
                int(a.device as u64),
                int(a.window_start_ns),
                int(a.window_end_ns),
                int(a.window_ns()),
                int(a.busy_ns),
            ]);
            row.extend(a.categories.ns.iter().map(|&n| int(n)));
            let flop_source = a.flop_source.name();
            let step_source = StepSource::report_name(d.step_source);
            row.extend([
                Value::F(Some(a.busy())),
                Value::F(a.mfu()),
                Value::F(a.divergence()),
                Value::S(Some(flop_source)),
                Value::S(Some(step_source)),
                int(d.steps.len() as u64),
                int(d.bin_ns),
                int(d.checkpoint.io_ns),
                int(d.checkpoint.bytes),
            ]);
            devices.push(&row)?;
            let mfu_known = a.mfu().is_some();
            for (table, parts) in [(&mut *steps, &d.steps), (&mut *bins, &d.bins)] {
                for (n, p) in parts.iter().enumerate() {
                    let mut row: Vec<Value> = ident(a.pid).to_vec();
                    row.extend([int(a.device as u64), int(n as u64)]);
                    row.extend(partition_cells(p, mfu_known));
                    table.push(&row)?;
                }
            }
            let w = a.window_ns().max(1) as f64;
            // every name (report shows the first 10)
            for (n, k) in d.kernels.iter().enumerate() {
                let name = r.kernel_names.get(&k.name_id).map(String::as_str).unwrap_or("");
                let mut row: Vec<Value> = ident(a.pid).to_vec();
                row.extend([
                    int(a.device as u64),
                    int(n as u64),
                    Value::S(Some(name)),
                    int(k.count),
                    int(k.total_ns),
                    int(k.useful_ns),
                    Value::F(Some(k.total_ns as f64 / k.count.max(1) as f64)),
                    Value::F(Some(k.total_ns as f64 / w)),
                ]);
                kernels.push(&row)?;
            }
        }
        for (p, input) in r.ranks.iter().enumerate() {
            for (i, inst) in input.instances.iter().enumerate() {
                let op = CollOp::name_of(inst.op);
                let algorithm = algo_name(inst.algo);
                let m = cross.instances.get(view + p).and_then(|v| v.get(i)).copied().unwrap_or_default();
                let clock = r.clock.map;
                let mut row: Vec<Value> = ident(input.pid).to_vec();
                row.extend([
                    int(inst.comm_index as u64),
                    int(inst.rank as u64),
                    int(inst.nranks as u64),
                    int(inst.seq),
                    Value::S(Some(&op)),
                    int(inst.size_bytes),
                    Value::S(algorithm.as_deref()),
                    int(inst.arrival_ns),
                    int_opt(inst.kernel.map(|k| k.0)),
                    int_opt(inst.kernel.map(|k| k.1)),
                    int128(clock.apply(inst.arrival_ns)),
                    match inst.kernel {
                        Some((_, ke)) => int128(clock.apply(ke)),
                        None => Value::I(None),
                    },
                    match r.realtime_offset_ns {
                        Some(o) => int128(inst.arrival_ns as i128 + o),
                        None => Value::I(None),
                    },
                    Value::B(m.matched),
                    int_opt(m.wait_ns),
                ]);
                colls.push(&row)?;
            }
        }
        view += r.ranks.len();
        for h in &r.host {
            for (tid, t) in &h.threads {
                for reason in StallReason::ALL {
                    let ns = t.off_cpu_ns.get(*reason as usize).copied().unwrap_or(0);
                    if ns == 0 {
                        continue;
                    }
                    let mut row: Vec<Value> = ident(h.pid).to_vec();
                    row.extend([int(*tid as u64), Value::S(Some(reason.name())), int(ns)]);
                    stalls.push(&row)?;
                }
            }
        }
    }
    let mut files = Vec::new();
    for w in writers {
        files.push(w.finish()?);
    }
    Ok(ParquetSummary { job, files, records, warnings })
}

/// A step's or bin's cells after its index.
fn partition_cells(p: &Partition, mfu_known: bool) -> Vec<Value<'static>> {
    let len = p.len_ns().max(1) as f64;
    let mut v = vec![int(p.start_ns), int(p.end_ns), int(p.busy_ns)];
    v.extend(p.categories.ns.iter().map(|&n| int(n)));
    v.push(Value::F(Some(p.busy_ns as f64 / len)));
    v.push(Value::F(mfu_known.then(|| p.categories[Category::ComputeUseful] as f64 / len)));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_has_the_identity_first_and_unique_names() {
        for t in TABLES {
            let cols = columns(t);
            assert_eq!(&cols[..6], &identity()[..], "{t}");
            assert!(cols.len() > 6, "{t}");
            let mut names: Vec<&str> = cols.iter().map(|c| c.name.as_str()).collect();
            names.sort_unstable();
            names.dedup();
            assert_eq!(names.len(), cols.len(), "{t}: a column name twice");
        }
        assert!(columns("nothing").len() == 6);
    }

    #[test]
    fn default_job_is_stable_and_order_free() {
        let a = TraceIdentity { host: Some("h1".into()), created_unix_ns: 5, ..Default::default() };
        let b = TraceIdentity { host: Some("h2".into()), created_unix_ns: 7, ..Default::default() };
        let ab = default_job_id(&[a.clone(), b.clone()]);
        assert_eq!(ab, default_job_id(&[b.clone(), a.clone()]));
        assert_ne!(ab, default_job_id(std::slice::from_ref(&a)));
        assert_eq!(ab.len(), 16);
        assert!(check_job_name("llama-70b/run 3").is_ok());
        assert!(check_job_name("").is_err() && check_job_name("a\nb").is_err());
        assert!(check_job_name(&"x".repeat(MAX_JOB_LEN + 1)).is_err());
    }

    #[test]
    fn integers_saturate() {
        assert!(matches!(int(u64::MAX), Value::I(Some(i64::MAX))));
        assert!(matches!(int128(-(1i128 << 100)), Value::I(Some(i64::MIN))));
        assert!(matches!(int_opt(None), Value::I(None)));
    }
}
