//! The recording pipeline: records from several producers all reach the file; when a queue
//! overflows the collector is never blocked and every lost record is counted, per source, in
//! the trace itself.

use std::sync::Arc;
use std::time::Duration;

use ghostprof::pipeline::{Pipeline, PipelineOptions};
use ghostprof::trace::*;

use crate::util::*;

#[test]
fn records_from_several_producers_all_arrive() {
    let dir = tmpdir();
    let path = dir.path().join("p.gptrace");
    let pipeline = Pipeline::create(&path, false, &TraceInfo::default(), PipelineOptions::default()).unwrap();
    let per_thread = 200_000u64;
    std::thread::scope(|s| {
        for (i, source) in [Source::Ebpf, Source::Cupti, Source::Nvml].into_iter().enumerate() {
            let mut p = pipeline.producer(source);
            s.spawn(move || {
                for n in 0..per_thread {
                    p.push(HostStall { start_ns: n, end_ns: n + 1, pid: i as u32, ..Default::default() });
                    if n % 50_000 == 0 {
                        // Collectors drain on a timer; give the writer a moment like they do.
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            });
        }
    });
    let (summary, stats) = pipeline.finish().unwrap();
    let dropped: u64 = stats.drops.iter().map(|d| d.2).sum();
    let batch = TraceReader::open(&path).unwrap().read_all().unwrap();
    let stalls = &batch.stalls;
    assert_eq!(stalls.len() as u64 + dropped, 3 * per_thread, "every record is written or counted");
    assert_eq!(summary.records, (stalls.len() + batch.drops.len()) as u64);
    for pid in 0..3u32 {
        let mine: Vec<&HostStall> = stalls.iter().filter(|s| s.pid == pid).collect();
        // Per producer, order is preserved.
        assert!(mine.windows(2).all(|w| w[0].start_ns < w[1].start_ns), "producer {pid} out of order");
    }
}

#[test]
fn a_finished_trace_keeps_none_of_the_space_reserved_ahead() {
    // The writer keeps 8 MiB of disk reserved past the next chunk (fewer fallocate calls); a
    // finished file gives it back: its allocated blocks are its bytes, not 8 MiB more.
    use std::os::unix::fs::MetadataExt;
    let dir = tmpdir();
    let path = dir.path().join("r.gptrace");
    // Queues that hold every record (512 × 1024 > 400,000): a loaded machine's writer may fall
    // behind the tight loop, and what this test checks is the file, not the queue.
    let options = PipelineOptions { queue_batches: 512, ..Default::default() };
    let pipeline = Pipeline::create(&path, false, &TraceInfo::default(), options).unwrap();
    let mut p = pipeline.producer(Source::Ebpf);
    for n in 0..400_000u64 {
        p.push(HostStall { start_ns: n * 1000, end_ns: n * 1000 + 7 * (n % 13), pid: 1, ..Default::default() });
    }
    drop(p);
    let (summary, _) = pipeline.finish().unwrap();
    assert!(summary.chunks >= 3, "{} chunks", summary.chunks);
    let meta = std::fs::metadata(&path).unwrap();
    let allocated = meta.blocks() * 512;
    assert!(allocated <= meta.len() + (1 << 20), "{allocated} bytes allocated for a {}-byte file", meta.len());
    assert_eq!(TraceReader::open(&path).unwrap().read_all().unwrap().stalls.len(), 400_000);
}

#[test]
fn overflow_is_counted_per_source_and_written_to_the_trace() {
    let dir = tmpdir();
    let path = dir.path().join("overflow.gptrace");
    // One-record batches into a one-slot queue: a tight loop outruns any writer.
    let options = PipelineOptions { queue_batches: 1, batch_records: 1, ..Default::default() };
    let pipeline = Pipeline::create(&path, false, &TraceInfo::default(), options).unwrap();
    let mut fast = pipeline.producer(Source::Ebpf);
    let mut calm = pipeline.producer(Source::Nvml);
    let pushed = 1_000_000u64;
    let t = std::time::Instant::now();
    for n in 0..pushed {
        fast.push(DeviceSample {
            time_ns: n,
            value: 1.0,
            device: 0,
            metric: Metric::SmActive as u32,
            ..Default::default()
        });
    }
    // Pushing never blocks: a million pushes take far less than a blocked writer would.
    let push_time = t.elapsed();
    calm.push(DeviceSample {
        time_ns: 1,
        value: 2.0,
        device: 0,
        metric: Metric::GpuUtilPercent as u32,
        ..Default::default()
    });
    drop(fast);
    drop(calm);
    let (_, stats) = pipeline.finish().unwrap();
    let lost: u64 =
        stats.drops.iter().filter(|d| d.0 == Source::Ebpf && d.1 == DropCause::QueueFull).map(|d| d.2).sum();
    assert!(lost > 0, "a one-slot queue fed by a tight loop must overflow (pushes took {push_time:?})");
    assert!(stats.drops.iter().all(|d| d.0 == Source::Ebpf), "only the fast source dropped: {:?}", stats.drops);

    let reader = TraceReader::open(&path).unwrap();
    let batch = reader.read_all().unwrap();
    let written_fast = batch.samples.iter().filter(|s| s.metric == Metric::SmActive as u32).count() as u64;
    assert_eq!(written_fast + lost, pushed, "written + dropped = pushed");
    assert_eq!(batch.samples.iter().filter(|s| s.metric == Metric::GpuUtilPercent as u32).count(), 1);
    // The file says what it is missing.
    let drops = reader.drops().unwrap();
    assert_eq!(drops, vec![(Source::Ebpf as u32, DropCause::QueueFull as u32, lost)]);
}

#[test]
fn a_failed_writer_reports_its_error_and_keeps_what_it_wrote() {
    // /dev/full fails every write with ENOSPC, like a full disk.
    let dir = tmpdir();
    let path = dir.path().join("unused.gptrace");
    let file = std::fs::OpenOptions::new().write(true).open("/dev/full").expect("/dev/full");
    let err = TraceWriter::from_file(file, &path, &TraceInfo::default(), Arc::new(Interner::new()), Default::default())
        .err()
        .expect("writing the header to /dev/full fails");
    let msg = err.to_string();
    assert!(msg.contains("disk full"), "{msg}");
}
