//! `sort [--events N] [--rounds R] [--dir D] [FILE…]`: the sweep's stable sort for slices made of
//! a few sorted runs (`analyze::sweep`'s `sort_runs`) against the library's stable
//! `sort_by_key` and `sort_unstable_by_key`, on the device operations of a synthetic training
//! trace of N events (default 10 M) and of each FILE.
//!
//! The inputs are what the sweep sorts: per chunk and (process, device), the 32-byte ops of its
//! kernels in record order followed by its copies (a few sorted runs, collectives slightly out
//! of place), sorted by start; then their ends in that order (nearly sorted), sorted. Each
//! method sorts fresh copies of every slice; the figure is the median of R rounds (default 5) of
//! the CPU time of all the sorts of one input set. All three orders are checked to agree on the
//! keys (the stable ones on the whole ops).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Result};
use ghostprof::analyze::sort_runs;
use ghostprof::trace::synth::TrainingStream;
use ghostprof::trace::{Interner, TraceInfo, TraceReader, TraceWriter, WriterOptions};

use crate::{flag, thread_cpu_s};

/// The sweep's op layout (32 bytes), so the sorts move as many bytes as there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct OpLike {
    start: u64,
    end: u64,
    x: u64,
    name: u32,
    class: u8,
    named: bool,
}

const _: () = assert!(std::mem::size_of::<OpLike>() == 32);

/// The slices of one trace: per chunk and (process, device), its ops in record order.
fn slices_of(path: &Path) -> Result<Vec<Vec<OpLike>>> {
    let reader = TraceReader::open(path)?;
    let mut out = Vec::new();
    reader.for_each_chunk(|c| {
        let r = &c.records;
        let mut by_dev: Vec<((u32, u32), Vec<OpLike>)> = Vec::new();
        let at = |key: (u32, u32), by_dev: &mut Vec<((u32, u32), Vec<OpLike>)>| match by_dev
            .iter()
            .position(|(k, _)| *k == key)
        {
            Some(i) => i,
            None => {
                by_dev.push((key, Vec::new()));
                by_dev.len() - 1
            }
        };
        for k in &r.kernels {
            let i = at((k.pid, k.device), &mut by_dev);
            by_dev[i].1.push(OpLike { start: k.start_ns, end: k.end_ns, x: 0, name: k.name_id, class: 0, named: true });
        }
        for m in &r.memops {
            let i = at((m.pid, m.device), &mut by_dev);
            by_dev[i].1.push(OpLike { start: m.start_ns, end: m.end_ns, x: 0, name: 0, class: 2, named: false });
        }
        out.extend(by_dev.into_iter().map(|(_, v)| v).filter(|v| v.len() > 1));
    })?;
    Ok(out)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Method {
    Runs,
    Stable,
    Unstable,
}

/// CPU seconds to sort every slice by start, then its ends, with `m`; returns the sorted copies.
fn sort_all(slices: &[Vec<OpLike>], m: Method) -> (f64, Vec<Vec<OpLike>>, Vec<Vec<u64>>) {
    let mut ops: Vec<Vec<OpLike>> = slices.to_vec();
    let mut ends: Vec<Vec<u64>> = Vec::with_capacity(slices.len());
    let mut buf_ops: Vec<OpLike> = Vec::new();
    let mut buf_ends: Vec<u64> = Vec::new();
    let t0 = thread_cpu_s();
    for v in ops.iter_mut() {
        match m {
            Method::Runs => sort_runs(v, &mut buf_ops, |o| o.start),
            Method::Stable => v.sort_by_key(|o| o.start),
            Method::Unstable => v.sort_unstable_by_key(|o| o.start),
        }
        let mut e: Vec<u64> = v.iter().map(|o| o.end).collect();
        match m {
            Method::Runs => sort_runs(&mut e, &mut buf_ends, |&x| x),
            Method::Stable => e.sort(),
            Method::Unstable => e.sort_unstable(),
        }
        ends.push(e);
    }
    (thread_cpu_s() - t0, ops, ends)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Times the three methods on one input set (rounds interleaved, so drift hits all alike).
fn bench_set(label: &str, slices: &[Vec<OpLike>], rounds: usize) -> Result<serde_json::Value> {
    let ops: usize = slices.iter().map(Vec::len).sum();
    let methods = [Method::Runs, Method::Stable, Method::Unstable];
    let mut samples: [Vec<f64>; 3] = Default::default();
    let (_, want_ops, want_ends) = sort_all(slices, Method::Stable);
    for _ in 0..rounds {
        for (i, m) in methods.iter().enumerate() {
            let (s, got_ops, got_ends) = sort_all(slices, *m);
            samples[i].push(s);
            let same = if *m == Method::Unstable {
                got_ops.iter().zip(&want_ops).all(|(a, b)| a.iter().map(|o| o.start).eq(b.iter().map(|o| o.start)))
            } else {
                got_ops == want_ops
            };
            if !same || got_ends != want_ends {
                bail!("{label}: {m:?} sorted differently from sort_by_key");
            }
        }
    }
    let ns = |s: f64| (s * 1e9 / ops.max(1) as f64 * 100.0).round() / 100.0;
    let med: Vec<f64> = samples.iter().map(|s| median(s.clone())).collect();
    println!(
        "{label}: {} slices, {ops} ops; median of {rounds} (ns per op, start + end sorts): sort_runs {:.2}, sort_by_key {:.2}, sort_unstable_by_key {:.2}",
        slices.len(),
        ns(med[0]),
        ns(med[1]),
        ns(med[2]),
    );
    Ok(serde_json::json!({
        "input": label,
        "slices": slices.len(),
        "ops": ops,
        "median_ns_per_op": {"sort_runs": ns(med[0]), "sort_by_key": ns(med[1]), "sort_unstable_by_key": ns(med[2])},
        "samples_s": {"sort_runs": samples[0], "sort_by_key": samples[1], "sort_unstable_by_key": samples[2]},
    }))
}

pub(crate) fn bench_sort(args: &[String]) -> Result<()> {
    let events: u64 = flag(args, "--events").map(|s| s.parse()).transpose()?.unwrap_or(10_000_000);
    let rounds: usize = flag(args, "--rounds").map(|s| s.parse()).transpose()?.unwrap_or(5);
    let dir = PathBuf::from(flag(args, "--dir").unwrap_or_else(|| std::env::temp_dir().to_string_lossy().into_owned()));
    let mut files: Vec<PathBuf> = Vec::new();
    let mut i = 0;
    while i < args.len() {
        if args[i].starts_with("--") {
            i += 2;
            continue;
        }
        files.push(PathBuf::from(&args[i]));
        i += 1;
    }
    let machine = crate::probe::machine();
    println!("cpu: {}", machine["cpu"].as_str().unwrap_or("?"));
    let mut sets = Vec::new();
    if events > 0 {
        let path = dir.join(format!("bench-sort-{}.gptrace", std::process::id()));
        let interner = Arc::new(Interner::new());
        let stream = TrainingStream::new(42, &interner).with_collective_kernels(&interner).take(events as usize);
        let info = TraceInfo { command: vec!["tools/bench".into(), "sort".into()], ..Default::default() };
        let mut w = TraceWriter::create(&path, true, &info, interner.clone(), WriterOptions::default())?;
        w.append_all(stream)?;
        w.finish()?;
        let slices = slices_of(&path);
        let _ = std::fs::remove_file(&path);
        sets.push(bench_set(&format!("synthetic {events} events"), &slices?, rounds)?);
    }
    for f in &files {
        let slices = slices_of(f)?;
        sets.push(bench_set(
            &f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            &slices,
            rounds,
        )?);
    }
    println!("{}", serde_json::json!({"bench": "sort", "rounds": rounds, "machine": machine, "sets": sets}));
    Ok(())
}
