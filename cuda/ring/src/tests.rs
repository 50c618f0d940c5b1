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

/// The header's `enabled` and `consumer_pid` words: a consumer that opened the ring set them.
fn opened_by_someone(path: &std::path::Path) -> bool {
    let bytes = std::fs::read(path).unwrap();
    let at = |off: usize| u32::from_ne_bytes(bytes[off..off + 4].try_into().unwrap());
    at(std::mem::offset_of!(Header, enabled)) != 0 || at(std::mem::offset_of!(Header, consumer_pid)) != 0
}

#[test]
fn a_symlink_named_like_a_ring_is_refused_and_its_target_untouched() {
    let (dir, victim, mut producer) = ring(4096);
    assert!(producer.push(4, &[7; 32]));
    let link = dir.path().join("ghostprof-1.ring");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let before = std::fs::read(&victim).unwrap();
    let e = Consumer::open(&link).err().expect("a symlink is refused").to_string();
    assert!(e.contains("refused: a symbolic link"), "{e}");
    assert_eq!(std::fs::read(&victim).unwrap(), before, "the victim's ring is not switched on");
    assert!(!opened_by_someone(&victim));
    assert!(!producer.enabled());
}

#[test]
fn a_ring_with_two_hard_links_is_refused() {
    let (dir, path, _producer) = ring(4096);
    let second = dir.path().join("ghostprof-2.ring");
    std::fs::hard_link(&path, &second).unwrap();
    let e = Consumer::open(&second).err().expect("two links").to_string();
    assert!(e.contains("refused: 2 hard links"), "{e}");
    assert!(!opened_by_someone(&path));
}

#[test]
fn a_fifo_named_like_a_ring_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("ghostprof-3.ring");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid C path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let t = std::time::Instant::now();
    let e = Consumer::open(&fifo).err().expect("a FIFO").to_string();
    assert!(t.elapsed() < std::time::Duration::from_secs(1), "took {:?}", t.elapsed());
    assert!(e.contains("refused: not a regular file"), "{e}");
}

#[test]
fn a_ring_owned_by_another_uid_than_its_process_is_refused() {
    let (_dir, path, _producer) = ring(4096);
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    let e = Consumer::open_owned(&path, Some(&[me.wrapping_add(1)])).err().expect("another owner").to_string();
    assert!(e.contains(&format!("refused: owned by uid {me}")), "{e}");
    assert!(!opened_by_someone(&path));
    assert!(Consumer::open_owned(&path, Some(&[me])).is_ok(), "its own process's ring is taken");
}

/// VmRSS of this process, in bytes.
fn rss() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap();
    kb * 1024
}

#[test]
fn a_ring_of_1_gib_is_refused_before_anything_is_mapped() {
    let (_dir, path, _producer) = ring(4096);
    // The same header, claiming 1 GiB of data, in a sparse file of the matching size.
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
    let capacity: u64 = 1 << 30;
    f.set_len(HEADER_BYTES as u64 + capacity).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&capacity.to_ne_bytes(), std::mem::offset_of!(Header, capacity) as u64).unwrap();
    // A producer that wrote "all of it": the consumer would copy 1 GiB out in one drain.
    f.write_all_at(&(capacity - 64).to_ne_bytes(), std::mem::offset_of!(Header, head) as u64).unwrap();
    let rss0 = rss();
    let mut out = Vec::new();
    let e = match Consumer::open(&path) {
        Ok(mut c) => {
            let _ = c.drain(&mut out);
            panic!("a 1 GiB ring was opened ({} records drained)", out.len());
        }
        Err(e) => e.to_string(),
    };
    assert!(e.contains(&format!("refused: {capacity} data bytes, more than the {MAX_CAPACITY}")), "{e}");
    assert_eq!(MAX_CAPACITY, 64 << 20);
    let grew = rss().saturating_sub(rss0);
    assert!(grew < 16 << 20, "RSS grew {grew} bytes");
}

#[test]
fn one_drain_takes_at_most_max_drain_bytes_and_leaves_the_rest() {
    let (_dir, path, mut producer) = ring(32 << 20);
    let mut consumer = Consumer::open(&path).unwrap();
    let record = vec![5u8; 4088]; // 4 KiB frames
    let mut pushed = 0u64;
    while pushed * 4096 < 20 << 20 {
        assert!(producer.push(6, &record));
        pushed += 1;
    }
    let mut out = Vec::new();
    let first = consumer.drain(&mut out).unwrap() as u64;
    assert_eq!(first * 4096, MAX_DRAIN_BYTES, "one drain: {first} records");
    let mut total = first;
    let mut calls = 1;
    loop {
        out.clear();
        let n = consumer.drain(&mut out).unwrap() as u64;
        if n == 0 {
            break;
        }
        assert!(n * 4096 <= MAX_DRAIN_BYTES);
        total += n;
        calls += 1;
    }
    assert_eq!(total, pushed, "nothing lost, only deferred");
    assert_eq!(calls, 3, "20 MiB in 8 MiB drains");
}

#[test]
fn a_ring_shrunk_under_the_consumer_is_reported_not_fatal() {
    for shrink_to in [4096u64, 0] {
        let (_dir, path, mut producer) = ring(1 << 20);
        let mut consumer = Consumer::open(&path).unwrap();
        for seq in 0..1000u64 {
            assert!(producer.push(2, &payload(seq)));
        }
        // The job truncates its ring after ghostprof mapped it.
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(shrink_to).unwrap();
        let mut out = vec![Popped { kind: 9, payload: vec![1] }];
        let e = consumer.drain(&mut out).expect_err("shrunk");
        assert!(matches!(e, ConsumerError::Shrunk), "{e}");
        assert_eq!(e.to_string(), "shrank its CUPTI ring: its device timeline ends here");
        assert_eq!(out.len(), 1, "the batch read from the shrunk ring is discarded, earlier records kept");
        assert!(consumer.shrunk());
        assert_eq!(consumer.drain(&mut out).unwrap(), 0, "nothing more from that ring");
        consumer.detach();
        assert_eq!(consumer.dropped(), 0);
        drop(consumer);
    }
    // Other rings go on after one was shrunk (its slot was released on drop).
    let (_dir, path, mut producer) = ring(4096);
    let mut consumer = Consumer::open(&path).unwrap();
    assert!(producer.push(3, &[1; 8]));
    let mut out = Vec::new();
    assert_eq!(consumer.drain(&mut out).unwrap(), 1);
}

#[test]
fn a_sigbus_outside_every_ring_still_ends_the_process() {
    // The handler is installed by the first consumer.
    let (_d, path, _p) = ring(4096);
    let _consumer = Consumer::open(&path).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.path().join("plain"))
        .unwrap();
    file.set_len(8192).unwrap();
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: a private test mapping of our own file; the child only makes syscalls and reads.
    let code = unsafe {
        let p = libc::mmap(std::ptr::null_mut(), 8192, libc::PROT_READ, libc::MAP_SHARED, fd, 0);
        assert_ne!(p, libc::MAP_FAILED);
        let child = libc::fork();
        if child == 0 {
            libc::ftruncate(fd, 0);
            let v = std::ptr::read_volatile(p.cast::<u8>().add(4096));
            libc::_exit(v as i32 + 1);
        }
        let mut status = 0;
        libc::waitpid(child, &mut status, 0);
        libc::munmap(p, 8192);
        status
    };
    assert!(libc::WIFSIGNALED(code) && libc::WTERMSIG(code) == libc::SIGBUS, "status {code:#x}");
}

#[test]
fn the_producer_never_writes_through_a_planted_temp_name() {
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    let path = dir.path().join("ghostprof-77.ring");
    // The old fixed temporary name (`ghostprof-77.tmp`), `<ring>.tmp`, and the ring's own name.
    for planted in ["ghostprof-77.tmp", "ghostprof-77.ring.tmp", "ghostprof-77.ring"] {
        std::os::unix::fs::symlink(&victim, dir.path().join(planted)).unwrap();
    }
    let mut producer = Producer::create(&path, 4096).unwrap();
    assert!(producer.push(1, &[1; 16]));
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious", "the victim is untouched");
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert!(meta.file_type().is_file(), "the planted symlink itself was replaced");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(Consumer::open(&path).is_ok());
    // No temporary file is left behind.
    let left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".tmp") && !n.starts_with("ghostprof-77.tmp") && n != "ghostprof-77.ring.tmp")
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(producer.remove_if_ours(&path));
    assert!(!path.exists());
}

#[test]
fn ring_file_names_give_their_pid() {
    assert_eq!(ring_file_pid("ghostprof-12.ring"), Some(12));
    assert_eq!(ring_file_pid("ghostprof-12.tmp"), Some(12));
    assert_eq!(ring_file_pid("ghostprof-12.ring.12-00ff.tmp"), Some(12));
    for bad in ["ghostprof-.ring", "ghostprof-1x.ring", "ghostprof-12.ring.bak", "other-1.ring", "ghostprof-12-3-4"] {
        assert_eq!(ring_file_pid(bad), None, "{bad}");
    }
}

#[test]
fn cost_payload_round_trips_and_rejects_truncation() {
    use crate::wire::{Cost, COST_BYTES};
    let c = Cost { callbacks: 25_200, callback_ns: 1 << 40, buffer_ns: 7, thread_ns: u64::MAX, process_cpu_ns: 3 };
    let p = c.encode();
    assert_eq!(Cost::decode(&p), Some(c));
    let mut longer = p.to_vec();
    longer.extend_from_slice(&[9; 8]);
    assert_eq!(Cost::decode(&longer), Some(c), "bytes past the known fields are room to grow");
    for cut in 0..COST_BYTES {
        assert_eq!(Cost::decode(&p[..cut]), None, "cut at {cut}");
    }
    assert_eq!(c.total_ns(), u64::MAX, "saturates");
}
