//! Damaged files: a cut at any byte keeps every whole chunk before it (with a warning), bit
//! flips never panic and errors name the byte, and hostile headers are refused clearly.

use std::io::Write;

use ghostprof::trace::synth::Rng;
use ghostprof::trace::*;
use proptest::prelude::*;

use crate::util::*;

/// A finalized trace of a few small chunks, its bytes, and its chunk table.
fn small_trace(dir: &std::path::Path) -> (Vec<u8>, Vec<ChunkMeta>, Vec<Record>) {
    let path = dir.join("small.gptrace");
    let (records, names) = training_records(3_000);
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    write_trace(&path, &records, &names, 600);
    let chunks = TraceReader::open(&path).unwrap().chunks().to_vec();
    (std::fs::read(&path).unwrap(), chunks, records)
}

#[test]
fn a_cut_at_any_byte_reads_back_every_whole_chunk_before_it() {
    let dir = tmpdir();
    let (bytes, chunks, records) = small_trace(dir.path());
    assert_eq!(chunks.len(), 5);
    let header_end = chunks[0].offset as usize;
    let cut_path = dir.path().join("cut.gptrace");
    for cut in 0..bytes.len() {
        std::fs::write(&cut_path, &bytes[..cut]).unwrap();
        let opened = TraceReader::open(&cut_path);
        if cut < header_end {
            let err = opened.err().unwrap_or_else(|| panic!("cut at {cut} inside the header must fail"));
            let msg = err.to_string();
            assert!(msg.contains("empty") || msg.contains("header"), "cut {cut}: {msg}");
            continue;
        }
        let reader = opened.unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        let whole = chunks.iter().filter(|c| (c.offset + c.compressed_len) as usize <= cut).count();
        assert_eq!(reader.chunks().len(), whole, "cut at {cut}");
        if cut < bytes.len() {
            assert!(!reader.warnings().is_empty(), "cut at {cut} must warn");
        }
        let got = reader.read_all().unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        let expected: usize = records.chunks(600).take(whole).map(|c| c.len()).sum();
        assert_eq!(got.len(), expected, "cut at {cut}");
    }
}

#[test]
fn truncation_inside_a_chunk_warns_with_the_offset() {
    let dir = tmpdir();
    let (bytes, chunks, _) = small_trace(dir.path());
    let cut_at = chunks[3].offset as usize + 10;
    let path = dir.path().join("cut.gptrace");
    std::fs::write(&path, &bytes[..cut_at]).unwrap();
    let reader = TraceReader::open(&path).unwrap();
    assert_eq!(reader.chunks().len(), 3);
    let w = reader.warnings().join("\n");
    assert!(w.contains(&format!("byte {}", chunks[3].offset)), "{w}");
    assert!(w.contains("3 whole chunks"), "{w}");
}

#[test]
fn a_corrupt_chunk_is_an_error_naming_its_offset() {
    let dir = tmpdir();
    let (mut bytes, chunks, _) = small_trace(dir.path());
    // Flip a byte in the middle of chunk 2's compressed data: the frame checksum catches it.
    let at = (chunks[2].offset + chunks[2].compressed_len / 2) as usize;
    bytes[at] ^= 0x55;
    let path = dir.path().join("flip.gptrace");
    std::fs::write(&path, &bytes).unwrap();
    let reader = TraceReader::open(&path).unwrap();
    assert!(reader.read_chunk(0).is_ok() && reader.read_chunk(1).is_ok());
    let err = reader.read_chunk(2).unwrap_err().to_string();
    assert!(err.contains(&format!("byte {}", chunks[2].offset)), "{err}");
}

#[test]
fn empty_and_foreign_files_are_refused_clearly() {
    let dir = tmpdir();
    let empty = dir.path().join("empty.gptrace");
    std::fs::File::create(&empty).unwrap();
    let e = TraceReader::open(&empty).err().unwrap().to_string();
    assert!(e.contains("empty file"), "{e}");

    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "these are not the bytes you are looking for\n").unwrap();
    let e = TraceReader::open(&text).err().unwrap().to_string();
    assert!(e.contains("not a ghostprof trace"), "{e}");

    // A valid zstd file that is not a trace.
    let other = dir.path().join("other.zst");
    std::fs::write(&other, zstd::bulk::compress(b"hello world, not a trace at all", 1).unwrap()).unwrap();
    let e = TraceReader::open(&other).err().unwrap().to_string();
    assert!(e.contains("not a ghostprof trace") && e.contains("GHSTPROF"), "{e}");

    let missing = dir.path().join("missing.gptrace");
    let e = TraceReader::open(&missing).err().unwrap().to_string();
    assert!(e.contains("No such file"), "{e}");
}

#[test]
fn a_newer_major_version_is_refused_with_both_versions() {
    let dir = tmpdir();
    let path = dir.path().join("v9.gptrace");
    let mut body = Vec::new();
    body.extend_from_slice(b"GHSTPROF");
    body.extend_from_slice(&9u16.to_le_bytes());
    body.extend_from_slice(&3u16.to_le_bytes());
    body.extend_from_slice(&2u32.to_le_bytes());
    body.extend_from_slice(b"{}");
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(&zstd::bulk::compress(&body, 1).unwrap()).unwrap();
    drop(f);
    match TraceReader::open(&path) {
        Err(TraceError::Version { found_major: 9, found_minor: 3, supported_major: 1, .. }) => {}
        other => panic!("expected a version error, got {:?}", other.err()),
    }
    let msg = TraceReader::open(&path).err().unwrap().to_string();
    assert!(msg.contains("version 9.3") && msg.contains("reads version 1"), "{msg}");
}

#[test]
fn decoding_hostile_chunk_bodies_never_panics_or_overallocates() {
    // A section claiming 2^32-1 rows in a few bytes must be refused before allocating.
    let mut body = Vec::new();
    body.extend_from_slice(b"GPCHUNK1");
    body.extend_from_slice(&0u32.to_le_bytes());
    body.extend_from_slice(&1u32.to_le_bytes());
    body.extend_from_slice(&[0u8; 16]);
    body.extend_from_slice(&(Kind::KernelExec as u16).to_le_bytes());
    body.extend_from_slice(&(Kind::KernelExec.columns().len() as u16).to_le_bytes());
    body.extend_from_slice(&u32::MAX.to_le_bytes());
    body.extend_from_slice(&8u32.to_le_bytes());
    body.extend_from_slice(&[0u8; 8]);
    let err = format::decode_chunk(&body).unwrap_err();
    assert!(err.what.contains("claims"), "{}", err.what);
    assert_eq!(err.offset, 32);
    // Random bodies behind a valid magic.
    let mut rng = Rng::new(77);
    for _ in 0..20_000 {
        let n = rng.below(200) as usize;
        let mut b = b"GPCHUNK1".to_vec();
        b.extend((0..n).map(|_| rng.next_u64() as u8));
        let _ = format::decode_chunk(&b);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn random_bit_flips_never_panic(flips in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..8), 1..4)) {
        let dir = tmpdir();
        let (mut bytes, _, _) = small_trace(dir.path());
        for (at, bit) in &flips {
            let i = at.index(bytes.len());
            bytes[i] ^= 1 << bit;
        }
        let path = dir.path().join("flipped.gptrace");
        std::fs::write(&path, &bytes).unwrap();
        match TraceReader::open(&path) {
            Ok(r) => {
                for i in 0..r.chunks().len() {
                    if let Err(e) = r.read_chunk(i) {
                        prop_assert!(e.to_string().contains("byte"), "error without an offset: {}", e);
                    }
                }
                let _ = r.drops();
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }
}

fn ghostprof() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_ghostprof"))
}

/// `ghostprof ARGS...`: (exit code, stdout, stderr).
fn run(args: &[&std::ffi::OsStr]) -> (Option<i32>, String, String) {
    let out = ghostprof().args(args).output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn info_json(path: &std::path::Path) -> serde_json::Value {
    let (code, out, err) = run(&["info".as_ref(), "--json".as_ref(), path.as_os_str()]);
    assert_eq!(code, Some(0), "{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn report_json(path: &std::path::Path) -> (serde_json::Value, String) {
    let (code, out, err) = run(&["report".as_ref(), "--json".as_ref(), path.as_os_str()]);
    assert_eq!(code, Some(0), "{err}");
    (serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}")), err)
}

/// What a crash on ext4/XFS leaves (the size grew, the data blocks are zeros), and junk: every
/// whole chunk before them reads back, and the skipped bytes are counted in `info`, warned about
/// in `report` and `export`. (It was "corrupt at byte N", with nothing read.)
#[test]
fn zeros_or_junk_after_the_last_whole_chunk_keep_every_chunk_before_them() {
    let dir = tmpdir();
    let (bytes, chunks, records) = small_trace(dir.path());
    assert_eq!(chunks.len(), 5);
    let four = chunks[4].offset as usize;
    let mut rng = Rng::new(9);
    let junk: Vec<u8> = (0..64 << 10).map(|_| rng.next_u64() as u8).collect();
    let cases: [(&str, Vec<u8>, usize, u64, &str); 3] = [
        ("crash", [&bytes[..four], &[0u8; 64 << 10][..]].concat(), 4, four as u64, "all zeros"),
        ("junk", [&bytes[..four], &junk[..]].concat(), 4, four as u64, "not whole chunks"),
        ("finalized+zeros", [&bytes[..], &[0u8; 64 << 10][..]].concat(), 5, bytes.len() as u64, "all zeros"),
    ];
    for (name, file, whole, from, what) in cases {
        let path = dir.path().join(format!("{name}.gptrace"));
        std::fs::write(&path, &file).unwrap();
        let reader = TraceReader::open(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(reader.chunks().len(), whole, "{name}");
        assert_eq!(reader.skipped_bytes(), Some((from, 65_536)), "{name}");
        let got = batch_bytes(&reader.read_all().unwrap());
        assert_eq!(got, grouped_bytes(&records[..whole * 600]), "{name}: the whole chunks read back exactly");
        // A finalized file keeps its index (and drop counters) although junk follows it.
        assert_eq!(reader.is_finalized(), whole == 5, "{name}");
        let info = info_json(&path);
        assert_eq!(info["chunks"].as_u64(), Some(whole as u64), "{name}: {info}");
        assert_eq!(info["total_records"].as_u64(), Some(whole as u64 * 600), "{name}: {info}");
        assert_eq!(info["skipped_bytes"].as_u64(), Some(65_536), "{name}: {info}");
        assert_eq!(info["skipped_from"].as_u64(), Some(from), "{name}: {info}");
        let (_, text, _) = run(&["info".as_ref(), path.as_os_str()]);
        assert!(text.contains(&format!("skipped     65,536 bytes from byte {from}")), "{name}: {text}");
        let (report, _) = report_json(&path);
        let w = report["warnings"].to_string();
        let expected = format!("skipped the last 65536 bytes of the file, from byte {from}: {what}");
        assert!(w.contains(&expected) && w.contains(&format!("read {whole} whole chunks")), "{name}: {w}");
        let out = dir.path().join(format!("{name}.json"));
        let (code, _, err) = run(&["export".as_ref(), path.as_os_str(), "-o".as_ref(), out.as_os_str()]);
        assert_eq!(code, Some(0), "{name}: {err}");
        assert!(err.contains("warning") && err.contains(&expected), "{name}: {err}");
    }
}

/// One flipped byte in the middle of chunk 2 of 5 of a finished file: `report` and `export`
/// skip that chunk (naming it, and the 600 records it held) and report the others exactly as a
/// file without it; `info --verify` finds it, one line, exit status 1. (It failed them whole.)
#[test]
fn a_damaged_chunk_is_skipped_and_named_by_report_export_and_info_verify() {
    let dir = tmpdir();
    let (mut bytes, chunks, records) = small_trace(dir.path());
    let at = (chunks[2].offset + chunks[2].compressed_len / 2) as usize;
    bytes[at] ^= 0x55;
    let path = dir.path().join("flip.gptrace");
    std::fs::write(&path, &bytes).unwrap();
    let off = chunks[2].offset;

    let reader = TraceReader::open(&path).unwrap();
    assert_eq!(reader.read_all().unwrap().len(), 2_400, "the four other chunks read back");
    let damaged = reader.damaged_chunks();
    assert_eq!(damaged.len(), 1);
    assert_eq!((damaged[0].chunk, damaged[0].offset, damaged[0].records_lost), (2, off, 600));

    // info alone reads the index (no checksums): all 3,000 records listed, exit 0.
    assert_eq!(info_json(&path)["total_records"].as_u64(), Some(3_000));
    let (code, text, err) = run(&["info".as_ref(), "--verify".as_ref(), path.as_os_str()]);
    assert_eq!(code, Some(1), "{err}");
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("damaged")).collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert!(lines[0].starts_with(&format!("damaged     chunk 2 at byte {off}: 600 records lost (")), "{text}");
    let error: Vec<&str> = err.lines().filter(|l| l.starts_with("ghostprof: error:")).collect();
    assert_eq!(error.len(), 1, "{err}");
    assert!(error[0].contains("1 of 5 chunks are damaged (600 records)"), "{err}");
    let (code, out, _) = run(&["info".as_ref(), "--verify".as_ref(), "--json".as_ref(), path.as_os_str()]);
    assert_eq!(code, Some(1));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["damaged_chunks"][0]["chunk"].as_u64(), Some(2), "{v}");
    assert_eq!(v["damaged_chunks"][0]["records_lost"].as_u64(), Some(600), "{v}");
    assert_eq!(v["verified"], serde_json::json!(true));
    // the undamaged original verifies
    let clean = dir.path().join("small.gptrace");
    let (code, text, err) = run(&["info".as_ref(), "--verify".as_ref(), clean.as_os_str()]);
    assert_eq!(code, Some(0), "{err}");
    assert!(text.contains("verified    every chunk"), "{text}");

    // report: runs, says so in JSON and warnings, and equals the report of the file without chunk 2.
    let (report, _) = report_json(&path);
    let d = &report["damaged_chunks"];
    assert_eq!(d.as_array().map(Vec::len), Some(1), "{d}");
    assert_eq!(d[0]["chunk"].as_u64(), Some(2));
    assert_eq!(d[0]["offset"].as_u64(), Some(off));
    assert_eq!(d[0]["records_lost"].as_u64(), Some(600));
    let w = report["warnings"].to_string();
    assert!(w.contains(&format!("chunk 2 (byte {off}) is damaged")) && w.contains("600 records lost"), "{w}");
    let without = dir.path().join("without.gptrace");
    let (_, names) = training_records(3_000);
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let kept: Vec<Record> = records[..1_200].iter().chain(&records[1_800..]).copied().collect();
    write_trace(&without, &kept, &names, 600);
    let (reference, _) = report_json(&without);
    assert!(report["devices"].as_array().is_some_and(|d| !d.is_empty()), "{report}");
    let strip = |v: &serde_json::Value| {
        let mut v = v["devices"].clone();
        for d in v.as_array_mut().unwrap() {
            d.as_object_mut().unwrap().remove("file");
        }
        v
    };
    assert_eq!(strip(&report), strip(&reference), "the report is that of the file without chunk 2");

    let out = dir.path().join("flip.json");
    let (code, _, err) = run(&["export".as_ref(), path.as_os_str(), "-o".as_ref(), out.as_os_str()]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains(&format!("warning: chunk 2 (byte {off}) is damaged")), "{err}");
}

/// One mutation of a trace file, as the fuzz test applies it.
#[derive(Debug, Clone)]
enum Mutation {
    /// flip bit `1` of the byte at (index into the file)
    Flip(prop::sample::Index, u8),
    /// cut the file at (index)
    Truncate(prop::sample::Index),
    /// append that many zeros
    Zeros(usize),
    /// append that many junk bytes (seeded)
    Junk(usize, u64),
    /// swap chunks a and b (indexes into the chunk table)
    Swap(prop::sample::Index, prop::sample::Index),
    /// insert a second copy of chunk a after it
    Duplicate(prop::sample::Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<prop::sample::Index>(), 0u8..8).prop_map(|(i, b)| Mutation::Flip(i, b)),
        any::<prop::sample::Index>().prop_map(Mutation::Truncate),
        (1usize..70_000).prop_map(Mutation::Zeros),
        (1usize..70_000, any::<u64>()).prop_map(|(n, s)| Mutation::Junk(n, s)),
        (any::<prop::sample::Index>(), any::<prop::sample::Index>()).prop_map(|(a, b)| Mutation::Swap(a, b)),
        any::<prop::sample::Index>().prop_map(Mutation::Duplicate),
    ]
}

/// Applies `m` to `bytes`; returns the first file offset whose byte may differ from the
/// original (every original chunk ending at or before it is intact and in place).
fn mutate(bytes: &mut Vec<u8>, chunks: &[ChunkMeta], m: &Mutation) -> usize {
    let frame = |c: &ChunkMeta| c.offset as usize..(c.offset + c.compressed_len) as usize;
    match m {
        Mutation::Flip(i, bit) => {
            let at = i.index(bytes.len());
            bytes[at] ^= 1 << bit;
            at
        }
        Mutation::Truncate(i) => {
            let at = i.index(bytes.len());
            bytes.truncate(at);
            at
        }
        Mutation::Zeros(n) => {
            let at = bytes.len();
            bytes.resize(at + n, 0);
            at
        }
        Mutation::Junk(n, seed) => {
            let at = bytes.len();
            let mut rng = Rng::new(*seed);
            bytes.extend((0..*n).map(|_| rng.next_u64() as u8));
            at
        }
        Mutation::Swap(a, b) => {
            let (a, b) = (a.index(chunks.len()), b.index(chunks.len()));
            let (a, b) = (a.min(b), a.max(b));
            if a == b {
                return bytes.len();
            }
            let (fa, fb) = (frame(&chunks[a]), frame(&chunks[b]));
            if fb.end > bytes.len() {
                return bytes.len(); // cut before: nothing to swap
            }
            let swapped = [&bytes[fb.clone()], &bytes[fa.end..fb.start], &bytes[fa.clone()]].concat();
            bytes.splice(fa.start..fb.end, swapped);
            fa.start
        }
        Mutation::Duplicate(a) => {
            let f = frame(&chunks[a.index(chunks.len())]);
            if f.end > bytes.len() {
                return bytes.len();
            }
            let copy = bytes[f.clone()].to_vec();
            bytes.splice(f.end..f.end, copy);
            f.end
        }
    }
}

/// The small trace, written once for all cases.
/// The file's bytes, its chunk table, and each chunk's records as comparable bytes.
type Original = (Vec<u8>, Vec<ChunkMeta>, Vec<Vec<Vec<u8>>>);

fn fuzz_original() -> &'static Original {
    static ORIGINAL: std::sync::OnceLock<Original> = std::sync::OnceLock::new();
    ORIGINAL.get_or_init(|| {
        let dir = tmpdir();
        let (bytes, chunks, records) = small_trace(dir.path());
        let per_chunk = records.chunks(600).map(grouped_bytes).collect();
        (bytes, chunks, per_chunk)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// The trace reader on arbitrary damage: never panics; every whole chunk before the first
    /// damaged byte reads back exactly; any chunk it does read is the original one of that
    /// number; errors and warnings are one line each.
    #[test]
    fn the_reader_survives_any_damage_and_keeps_what_came_before_it(
        mutations in proptest::collection::vec(mutation(), 1..3)
    ) {
        let (original, chunks, per_chunk) = fuzz_original();
        let mut bytes = original.clone();
        let mut first_damage = usize::MAX;
        for m in &mutations {
            first_damage = first_damage.min(mutate(&mut bytes, chunks, m));
        }
        let dir = tmpdir();
        let path = dir.path().join("fuzzed.gptrace");
        std::fs::write(&path, &bytes).unwrap();
        let header_end = chunks[0].offset as usize;
        let reader = match TraceReader::open(&path) {
            Ok(r) => r,
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(!msg.contains('\n'), "one line: {}", msg);
                prop_assert!(first_damage < header_end, "only a damaged header stops reading: {}", msg);
                return Ok(());
            }
        };
        let mut read: Vec<(usize, u32)> = Vec::new();
        let mut wrong = None;
        // (lean: some kernel and API fields are left 0; the records are compared whole below)
        reader.for_each_chunk_lean_at(&|_| true, |i, c| read.push((i, c.seq))).unwrap();
        for &(i, seq) in &read {
            let full = reader.read_chunk(i).unwrap();
            prop_assert_eq!(full.seq, seq);
            if per_chunk.get(seq as usize) != Some(&batch_bytes(&full.records)) {
                wrong = Some(seq);
            }
        }
        prop_assert!(wrong.is_none(), "chunk {:?} read back different records", wrong);
        for (k, c) in chunks.iter().enumerate() {
            if (c.offset + c.compressed_len) as usize <= first_damage && first_damage >= header_end {
                prop_assert!(read.iter().any(|r| r.1 as usize == k), "whole chunk {} before the damage at {} was not read", k, first_damage);
            }
        }
        for w in reader.warnings() {
            prop_assert!(!w.contains('\n'), "one line: {}", w);
        }
        let summary = summary::summarize(&reader);
        prop_assert!(summary.is_ok(), "info fails: {:?}", summary.err().map(|e| e.to_string()));
    }
}

/// A crafted file with 20,000 distinct session notes: the reader keeps the first 1,024 and sums
/// up the rest in one line (it kept all, with a linear search per note: quadratic in the notes).
#[test]
fn a_trace_with_thousands_of_notes_lists_a_bounded_number() {
    let dir = tmpdir();
    let path = dir.path().join("notes.gptrace");
    let texts: Vec<String> = (0..20_000).map(|i| format!("note number {i}")).collect();
    let names: Vec<&str> = texts.iter().map(String::as_str).collect();
    let records: Vec<Record> =
        (0..20_000u32).map(|i| SessionNote { time_ns: 1_000 + i as u64, pid: 7, text_id: i + 1 }.into()).collect();
    write_trace(&path, &records, &names, 4_096);
    let notes = TraceReader::open(&path).unwrap().notes().unwrap();
    assert_eq!(notes.len(), 1_025, "1,024 notes and one line for the rest");
    assert_eq!(notes[0], "note number 0");
    assert_eq!(notes[1_023], "note number 1023");
    assert_eq!(notes[1_024], "18976 further distinct notes in this trace are not shown");
}
