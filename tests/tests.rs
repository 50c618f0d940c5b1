//! ghostprof's integration tests: one binary, one module per area. Root-tier tests are named
//! `root_*` and marked `#[ignore = "root tier: ..."]`; `tools/test` runs them when it is root.

mod util; // shared helpers: temp dirs, writing synthetic traces, byte-level comparisons

mod analyze; // root tier: the accounting of recorded gpusim runs against the ground truth
mod attach_cross_rank; // root tier: after an attach, the collectives table, skew and straggler against the truth
mod attach_inject; // root tier: `attach` injects the CUPTI library into jobs started without it (ptrace), refusals
mod bpf; // root tier: the eBPF build chain loads a real program and sees real off-CPU time
mod cli; // the ghostprof binary: `info` text and JSON, errors, record/attach/demo end to end (root)
mod clock_align; // many hosts: clocks aligned by the collectives' end times, offsets and drift recovered (root)
mod cost; // root tier: the injection library's own CPU cost in the job, against a known callback burn
mod cupti; // root tier: the CUPTI injection library and its ring against gpusim's libcupti
mod cupti_coexist; // root tier: beside another CUPTI client: eBPF only and a note before CUPTI 13.3, every kernel from 13.3
mod export; // `export --format chrome` (Kineto-shaped JSON, HTA agrees), `report --html` (Chromium draws it)
mod export_parquet; // `export --format parquet`: every table read back (parquet crate, pyarrow) equals `report --json`; output rules
mod gpusim; // the simulated CUDA / CUPTI / NCCL stack (tools/gpusim)
mod host; // root tier: CUDA and NCCL uprobes against gpusim count exactly what the ground truth says
mod jobs; // `report --jobs N`: byte-identical reports with any number of threads (chunks, files, damage)
mod nccl_profiler; // NCCL's algorithm/protocol via its profiler plugin API: wire decoding; gpusim runs (root)
mod pipeline; // collectors → queues → writer: backpressure counts every dropped record
mod pm_decode; // PM samples evaluated by ghostprof's decoder (as the job's user): same values, hostile output refused, root: recorded jobs
mod probe_filter; // root tier: the uprobes' bitmap of traced processes follows targets (add, fork, exit, remove)
mod report; // report detail: steps, bins, top kernels, gaps, checkpoint, collectives, straggler, flags
mod security_output; // the job is untrusted: escaped text, safe output files, non-trace inputs, the job's user under sudo
mod security_records; // issue 16: a hostile job's CUPTI ring records: bounded names/notes, owner pid, validated drop counters
mod security_ring; // the CUPTI rings against a hostile job: symlinks, owners, links, FIFOs, huge and shrunk rings, sweeps
mod session; // root tier: record's Ctrl-C, second Ctrl-C, full disk, symlinked output; attach's window against the truth
mod speed; // the analysis's fast paths: the lean decode gives the columns the analysis reads, exactly
mod trace_compat; // plain `zstd -d` and the seekable format's seek table; seeking by time
mod trace_damage; // truncation at every byte, bit flips, bad headers: errors name offsets, no panics
mod trace_digest; // chunk digests: the same report with and without, round trip, damage
mod trace_roundtrip; // every record kind and the string table round-trip exactly
mod watch; // ghostprof watch: strict exposition parser, refusals; root: sampled figures vs truth, live injection, triggers (straggler, comm.wait, MFU drop, socket peer), disk cap, 50 jobs, real Prometheus
