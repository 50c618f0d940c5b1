//! The analysis's fast paths give what the plain ones give: the reader's lean decode
//! (`TraceReader::for_each_chunk_lean`, only the columns the analysis reads).

use ghostprof::trace::synth::Rng;
use ghostprof::trace::*;

use crate::util::*;

/// A kernel with only the fields a lean decode keeps.
fn lean_kernel(k: &KernelExec) -> KernelExec {
    KernelExec {
        start_ns: k.start_ns,
        end_ns: k.end_ns,
        device: k.device,
        name_id: k.name_id,
        pid: k.pid,
        ..Default::default()
    }
}

#[test]
fn lean_decode_keeps_the_analysis_columns() {
    let mut rng = Rng::new(7);
    let mut records = Vec::new();
    // 3 chunks of 100 records: kernels and API calls mixed; only the second chunk holds a
    // probed call.
    for chunk in 0..3 {
        for i in 0..100 {
            let mut r = random_record(if i % 2 == 0 { Kind::KernelExec } else { Kind::ApiCall }, &mut rng);
            if let Record::ApiCall(a) = &mut r {
                a.domain = if chunk == 1 && i == 51 { ApiDomain::Probe as u32 } else { ApiDomain::CudaDriver as u32 };
            }
            records.push(r);
        }
    }
    let dir = tmpdir();
    let path = dir.path().join("lean.gptrace");
    write_trace(&path, &records, &[], 100);
    let reader = TraceReader::open(&path).expect("open");
    let mut full = Vec::new();
    reader.for_each_chunk(|c| full.push(c.records.clone())).expect("full decode");
    let mut lean = Vec::new();
    reader.for_each_chunk_lean(&|_| true, |c| lean.push(c.records.clone())).expect("lean decode");
    assert_eq!(full.len(), 3);
    assert_eq!(lean.len(), 3);
    for (i, (f, l)) in full.iter().zip(&lean).enumerate() {
        assert_eq!(f.kernels.len(), 50);
        assert_eq!(f.api_calls.len(), 50);
        let want: Vec<KernelExec> = f.kernels.iter().map(lean_kernel).collect();
        assert_eq!(l.kernels, want, "chunk {i}");
        let probed = i == 1;
        let want: Vec<ApiCall> = f
            .api_calls
            .iter()
            .map(|a| ApiCall {
                call_id: a.call_id,
                domain: a.domain,
                start_ns: if probed { a.start_ns } else { 0 },
                end_ns: if probed { a.end_ns } else { 0 },
                pid: if probed { a.pid } else { 0 },
                tid: if probed { a.tid } else { 0 },
                ..Default::default()
            })
            .collect();
        assert_eq!(l.api_calls, want, "chunk {i}");
    }
}

#[test]
fn lean_decode_reads_every_kernel_of_a_training_trace() {
    let (records, names) = training_records(5_000);
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let dir = tmpdir();
    let path = dir.path().join("t.gptrace");
    write_trace(&path, &records, &names, 1_000);
    let reader = TraceReader::open(&path).expect("open");
    let mut n = 0usize;
    reader.for_each_chunk_lean(&|_| true, |c| n += c.records.kernels.len()).expect("lean decode");
    let mut m = 0usize;
    reader.for_each_chunk(|c| m += c.records.kernels.len()).expect("full decode");
    assert_eq!(n, m);
    assert!(n > 1_000);
}
