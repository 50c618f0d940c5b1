//! The file is a standard zstd seekable file: plain `zstd -d` decompresses it, its seek table
//! lists every frame, and the chunk index finds records by time.

use std::process::Command;

use ghostprof::trace::*;

use crate::util::*;

#[test]
fn plain_zstd_decompresses_the_whole_file() {
    let dir = tmpdir();
    let path = dir.path().join("t.gptrace");
    let (records, names) = training_records(50_000);
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    write_trace(&path, &records, &names, 10_000);
    let out = Command::new("zstd")
        .args(["-d", "-c", "-q"])
        .arg(&path)
        .output()
        .expect("the zstd command line tool is needed (tools/test installs the `zstd` package)");
    assert!(out.status.success(), "zstd -d failed: {}", String::from_utf8_lossy(&out.stderr));
    let reader = TraceReader::open(&path).unwrap();
    // Header body + every chunk body + index body, in order.
    assert!(out.stdout.starts_with(b"GHSTPROF"));
    let chunk_bytes: u64 = reader.chunks().iter().map(|c| c.raw_len).sum();
    assert!(out.stdout.len() as u64 > chunk_bytes);
    let first = &reader.chunks()[0];
    let header_len = out.stdout.len() - out.stdout.windows(8).rposition(|w| w == b"GPINDEX1").unwrap();
    assert!(header_len > 0);
    let pos = out.stdout.windows(8).position(|w| w == b"GPCHUNK1").unwrap();
    assert_eq!(format::decode_chunk(&out.stdout[pos..pos + first.raw_len as usize]).unwrap().seq, 0);
}

#[test]
fn seek_table_lists_every_frame() {
    let dir = tmpdir();
    let path = dir.path().join("t.gptrace");
    let (records, _) = training_records(20_000);
    write_trace(&path, &records, &[], 4_000);
    let bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    assert_eq!(&bytes[n - 4..], &0x8F92_EAB1u32.to_le_bytes(), "seekable footer magic");
    let frames = u32::from_le_bytes(bytes[n - 9..n - 5].try_into().unwrap()) as usize;
    assert_eq!(bytes[n - 5] & 0x80, 0, "no checksums in the table");
    let reader = TraceReader::open(&path).unwrap();
    // header + chunks + index
    assert_eq!(frames, reader.chunks().len() + 2);
    let table_at = n - 9 - frames * 8;
    let mut offset = 0u64;
    for i in 0..frames {
        let e = &bytes[table_at + i * 8..table_at + i * 8 + 8];
        let c = u32::from_le_bytes(e[..4].try_into().unwrap()) as u64;
        if (1..frames - 1).contains(&i) {
            assert_eq!(reader.chunks()[i - 1].offset, offset);
            assert_eq!(reader.chunks()[i - 1].compressed_len, c);
        }
        offset += c;
    }
    assert_eq!(offset as usize, table_at - 8, "frames end where the seek table frame starts");
}

#[test]
fn chunks_are_found_by_time() {
    let dir = tmpdir();
    let path = dir.path().join("t.gptrace");
    let (records, _) = training_records(60_000);
    write_trace(&path, &records, &[], 5_000);
    let reader = TraceReader::open(&path).unwrap();
    let chunks = reader.chunks();
    assert!(chunks.len() >= 10);
    let mid = &chunks[chunks.len() / 2];
    let t = mid.min_ts + (mid.max_ts - mid.min_ts) / 2;
    let hits: Vec<usize> = reader.chunks_overlapping(t, t).collect();
    assert!(hits.contains(&(chunks.len() / 2)));
    // Every record at time t lies in a chunk the index returned.
    for (i, c) in chunks.iter().enumerate() {
        let batch = reader.read_chunk(i).unwrap().records;
        let covers = batch.iter().any(|r| r.time_ns() <= t && t <= ghostprof_end(&r));
        if covers {
            assert!(hits.contains(&i), "chunk {i} holds a record spanning {t} but was not returned");
        }
        assert!(c.min_ts <= c.max_ts);
    }
    assert_eq!(reader.chunks_overlapping(0, 1).count(), 0);
}

fn ghostprof_end(r: &Record) -> u64 {
    match r {
        Record::KernelExec(k) => k.end_ns,
        Record::ApiCall(a) => a.end_ns,
        Record::MemOp(m) => m.end_ns,
        Record::NcclColl(n) => n.end_ns,
        Record::HostStall(s) => s.end_ns,
        Record::StepMarker(s) => s.end_ns,
        other => other.time_ns(),
    }
}
