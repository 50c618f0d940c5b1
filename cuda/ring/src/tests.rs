//! The ring's behaviour with numbers: order and content across threads, wraparound, overflow
//! counted and never blocking, and a consumer that survives any bytes a producer can leave.

use std::sync::atomic::Ordering;

use proptest::prelude::*;

use super::*;

fn ring(capacity: usize) -> (tempfile::TempDir, std::path::PathBuf, Producer) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ring");
    let p = Producer::create(&path, capacity).unwrap();
    (dir, path, p)
}

fn payload(seq: u64) -> Vec<u8> {
    // 8 to ~300 bytes, content derived from the sequence number.
    let len = 8 + (seq.wrapping_mul(2654435761) % 293) as usize;
    let mut v = seq.to_le_bytes().to_vec();
    v.extend((8..len).map(|i| (seq as u8).wrapping_add(i as u8)));
    v
}

#[test]
fn a_million_records_cross_threads_in_order_or_are_counted() {
    let (_dir, path, mut producer) = ring(1 << 16);
    let mut consumer = Consumer::open(&path).unwrap();
    assert!(producer.enabled(), "opening the consumer switches collection on");
    let total = 1_000_000u64;
    let writer = std::thread::spawn(move || {
        let mut pushed = 0u64;
        for seq in 0..total {
            if producer.push(7, &payload(seq)) {
                pushed += 1;
            }
        }
        (pushed, producer.dropped())
    });
    let mut got = Vec::new();
    let mut last: Option<u64> = None;
    let mut received = 0u64;
    loop {
        let done = writer.is_finished();
        got.clear();
        consumer.drain(&mut got).unwrap();
        for r in &got {
            let seq = u64::from_le_bytes(r.payload[..8].try_into().unwrap());
            assert_eq!(r.payload, payload(seq), "record {seq} intact");
            assert_eq!(r.kind, 7);
            assert!(last.is_none_or(|l| seq > l), "order kept: {seq} after {last:?}");
            last = Some(seq);
            received += 1;
        }
        if done && got.is_empty() {
            break;
        }
    }
    let (pushed, dropped) = writer.join().unwrap();
    assert_eq!(received, pushed);
    assert_eq!(pushed + dropped, total, "every record is delivered or counted");
    assert_eq!(consumer.dropped(), dropped);
    assert_eq!(consumer.corrupt_bytes, 0);
}

#[test]
fn a_full_ring_drops_and_counts_without_blocking() {
    let (_dir, path, mut producer) = ring(4096);
    let mut fitted = 0;
    for seq in 0..1000u64 {
        if producer.push(3, &[seq as u8; 56]) {
            fitted += 1;
        }
    }
    // 64-byte frames in 4096 bytes.
    assert_eq!(fitted, 64);
    assert_eq!(producer.dropped(), 1000 - 64);
    let mut consumer = Consumer::open(&path).unwrap();
    let mut out = Vec::new();
    assert_eq!(consumer.drain(&mut out).unwrap(), 64);
    assert!(out.iter().enumerate().all(|(i, r)| r.payload == vec![i as u8; 56]));
    // Space is free again.
    assert!(producer.push(3, &[1; 56]));
}

#[test]
fn records_that_reach_the_end_wrap_after_a_padding_frame() {
    let (_dir, path, mut producer) = ring(4096);
    let mut consumer = Consumer::open(&path).unwrap();
    let mut out = Vec::new();
    let mut expected = 0u64;
    for round in 0..500u64 {
        for k in 0..3 {
            let seq = round * 3 + k;
            assert!(producer.push(1, &payload(seq)), "fits after draining");
        }
        out.clear();
        consumer.drain(&mut out).unwrap();
        for r in &out {
            assert_eq!(r.payload, payload(expected));
            expected += 1;
        }
    }
    assert_eq!(expected, 1500);
    assert_eq!(producer.dropped(), 0);
}

#[test]
fn oversized_and_padding_kind_records_are_refused_by_the_producer() {
    let (_dir, _path, mut producer) = ring(1 << 20);
    assert!(!producer.push(1, &vec![0; MAX_RECORD_BYTES + 1]));
    assert!(!producer.push(KIND_PAD, &[0; 8]));
    assert_eq!(producer.dropped(), 2);
}

#[test]
fn foreign_files_are_not_rings() {
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short");
    std::fs::write(&short, b"hello").unwrap();
    let e = Consumer::open(&short).err().unwrap().to_string();
    assert!(e.contains("shorter than its header"), "{e}");
    let zeros = dir.path().join("zeros");
    std::fs::write(&zeros, vec![0u8; 8192]).unwrap();
    let e = Consumer::open(&zeros).err().unwrap().to_string();
    assert!(e.contains("magic"), "{e}");
    // A valid header whose capacity disagrees with the file size.
    let (_d, path, _p) = ring(4096);
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(4096 + 2048).unwrap();
    let e = Consumer::open(&path).err().unwrap().to_string();
    assert!(e.contains("data bytes"), "{e}");
}

#[test]
fn detaching_puts_the_producer_to_sleep() {
    let (_dir, path, producer) = ring(4096);
    assert!(!producer.enabled(), "dormant until a consumer opens the ring");
    let consumer = Consumer::open(&path).unwrap();
    assert!(producer.enabled());
    consumer.detach();
    assert!(!producer.enabled());
}

#[test]
fn a_torn_frame_is_reported_skipped_and_the_ring_goes_on() {
    let (_dir, path, mut producer) = ring(4096);
    let mut consumer = Consumer::open(&path).unwrap();
    assert!(producer.push(2, &[9; 16]));
    // A writer that died mid-record: head moved on, the frame length is garbage.
    {
        let file = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        let mut map = unsafe { memmap2::MmapMut::map_mut(&file).unwrap() };
        let h = unsafe { &*map.as_ptr().cast::<Header>() };
        let head = h.head.0.load(Ordering::Relaxed);
        map[DATA_OFFSET + head as usize..DATA_OFFSET + head as usize + 4].copy_from_slice(&12345u32.to_le_bytes());
        h.head.0.store(head + 64, Ordering::Release);
    }
    let mut out = Vec::new();
    let err = consumer.drain(&mut out).unwrap_err().to_string();
    assert!(err.contains("frame of 12345 bytes"), "{err}");
    assert_eq!(out.len(), 1, "the record before the tear is kept");
    assert_eq!(consumer.corrupt_bytes, 64);
    assert!(producer.push(2, &[8; 16]));
    out.clear();
    assert_eq!(consumer.drain(&mut out).unwrap(), 1);
    assert_eq!(out[0].payload, vec![8; 16]);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Whatever a hostile producer writes into the data region and the shared counters, the
    /// consumer returns (no hang), never panics, and never hands out a payload larger than the
    /// format allows.
    #[test]
    fn hostile_bytes_never_crash_or_hang_the_consumer(
        data in proptest::collection::vec(any::<u8>(), 4096),
        head in any::<u64>(),
        tail in any::<u64>(),
        valid_first in any::<bool>(),
    ) {
        let (_dir, path, mut producer) = ring(4096);
        if valid_first {
            producer.push(5, &[1; 40]);
        }
        {
            let file = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
            let mut map = unsafe { memmap2::MmapMut::map_mut(&file).unwrap() };
            let keep = if valid_first { 48 } else { 0 };
            map[DATA_OFFSET + keep..DATA_OFFSET + 4096].copy_from_slice(&data[keep..]);
            let h = unsafe { &*map.as_ptr().cast::<Header>() };
            h.head.0.store(head, Ordering::Release);
            h.tail.0.store(tail, Ordering::Release);
        }
        let mut consumer = Consumer::open(&path).unwrap();
        let mut out = Vec::new();
        for _ in 0..3 {
            let _ = consumer.drain(&mut out);
        }
        prop_assert!(out.iter().all(|r| r.payload.len() <= MAX_RECORD_BYTES && r.kind != KIND_PAD));
        prop_assert!(out.len() <= 4096 / 8);
    }
}

#[test]
fn nccl_coll_payload_round_trips_and_rejects_truncation() {
    use crate::wire::{NcclColl, NCCL_COLL_MAX, NCCL_COLL_STR_MAX};
    let long = [b'x'; 100];
    let rec = NcclColl {
        time_ns: 1_234_567_890,
        comm_hash: 0xdead_beef_0123_4567,
        seq: 41,
        count: 1 << 20,
        tid: 777,
        rank: 1,
        nranks: 2,
        n_channels: 4,
        n_warps: 16,
        api_version: 4,
        func: b"AllReduce",
        datatype: b"ncclBfloat16",
        algo: b"RING",
        proto: &long,
    };
    let mut buf = [0u8; NCCL_COLL_MAX];
    let n = rec.encode(&mut buf);
    assert_eq!(n, 48 + 10 + 13 + 5 + 1 + NCCL_COLL_STR_MAX);
    let back = NcclColl::decode(&buf[..n]).unwrap();
    assert_eq!(back, NcclColl { proto: &long[..NCCL_COLL_STR_MAX], ..rec });
    for cut in 0..n {
        assert_eq!(NcclColl::decode(&buf[..cut]), None, "cut at {cut}");
    }
    // A string length pointing past the end is rejected, never read out of bounds.
    let mut bad = buf;
    bad[48] = 255;
    assert_eq!(NcclColl::decode(&bad[..n]), None);
}
