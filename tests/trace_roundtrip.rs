//! Every record kind, with random field values and extremes, written through the columnar
//! codec and zstd and read back bit for bit; strings travel with every chunk that needs them.

use ghostprof::trace::synth::Rng;
use ghostprof::trace::*;

use crate::util::*;

#[test]
fn every_kind_round_trips_bit_for_bit() {
    let dir = tmpdir();
    let path = dir.path().join("all.gptrace");
    let mut rng = Rng::new(0x5eed);
    let mut records = Vec::new();
    for kind in Kind::ALL {
        // Random bytes exercise every prediction with wrapping deltas and huge values.
        for _ in 0..700 {
            records.push(random_record(*kind, &mut rng));
        }
        // Extremes: all-zero and all-ones rows next to each other.
        let zero = random_record(*kind, &mut Rng::new(1));
        records.push(zero);
    }
    // Shuffle kinds together as collectors would interleave them.
    for i in (1..records.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        records.swap(i, j);
    }
    let summary = write_trace(&path, &records, &[], 1000);
    assert_eq!(summary.records, records.len() as u64);
    assert!(summary.chunks >= 8, "expected several chunks, got {}", summary.chunks);

    let reader = TraceReader::open(&path).expect("open");
    assert!(reader.is_finalized());
    assert!(reader.warnings().is_empty(), "{:?}", reader.warnings());
    let got = reader.read_all().expect("read");
    // Within a kind, order is preserved across chunks; chunks group by kind.
    let mut per_chunk_expected = Vec::new();
    for chunk in records.chunks(1000) {
        per_chunk_expected.extend(grouped_bytes(chunk));
    }
    let mut got_per_chunk = Vec::new();
    reader.for_each_chunk(|c| got_per_chunk.extend(batch_bytes(&c.records))).unwrap();
    assert_eq!(got_per_chunk.len(), records.len());
    assert!(got_per_chunk == per_chunk_expected, "decoded records differ from those written");
    for kind in Kind::ALL {
        assert_eq!(got.count(*kind), 701, "{kind:?}");
    }
}

#[test]
fn extreme_values_survive_every_encoding() {
    let dir = tmpdir();
    let path = dir.path().join("extremes.gptrace");
    let mut records = Vec::new();
    for kind in Kind::ALL {
        for pattern in [0x00u8, 0xff, 0x80, 0x7f] {
            // Every byte set to the pattern.
            let mut b = RecordBatch::default();
            b.push_raw(*kind, &vec![pattern; kind.record_size()]).unwrap();
            let r = b.iter().next().unwrap();
            records.push(r);
        }
    }
    write_trace(&path, &records, &[], 1 << 20);
    let got = TraceReader::open(&path).unwrap().read_all().unwrap();
    assert!(batch_bytes(&got) == grouped_bytes(&records));
}

#[test]
fn strings_travel_with_every_chunk_that_refers_to_them() {
    let dir = tmpdir();
    let path = dir.path().join("names.gptrace");
    let (records, names) = training_records(40_000);
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    write_trace(&path, &records, &names, 5_000);
    let reader = TraceReader::open(&path).unwrap();
    assert!(reader.chunks().len() >= 8);
    for i in 0..reader.chunks().len() {
        let c = reader.read_chunk(i).unwrap();
        let table: std::collections::HashMap<u32, &str> = c.strings.iter().map(|(i, s)| (*i, s.as_str())).collect();
        let mut refs = 0;
        c.records.for_each_string_ref(&mut |id| {
            if id != 0 {
                refs += 1;
                let name = table.get(&id).unwrap_or_else(|| panic!("chunk {i} lacks string {id}"));
                assert_eq!(*name, names[id as usize - 1]);
            }
        });
        assert!(refs > 0, "chunk {i} has no named records");
        // Each string once per chunk.
        assert!(c.strings.len() <= names.len());
    }
}

#[test]
fn synthetic_training_stream_round_trips_and_compresses() {
    let dir = tmpdir();
    let path = dir.path().join("train.gptrace");
    let (records, names) = training_records(300_000);
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let summary = write_trace(&path, &records, &names, 64 * 1024);
    let got = TraceReader::open(&path).unwrap().read_all().unwrap();
    let mut expected = RecordBatch::default();
    records.iter().for_each(|r| expected.push(*r));
    assert_eq!(got, expected);
    let per_event = summary.compressed_bytes as f64 / records.len() as f64;
    // The format's purpose: a training step costs a few bytes per event (bench: ~4.2).
    assert!(per_event < 8.0, "{per_event:.2} bytes/event");
}
