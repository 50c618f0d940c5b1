//! Root tier: the uprobes test a bitmap of traced processes (`target_bits` in
//! `ebpf/cuda.bpf.c`) instead of the `targets` map; the two must stay equal. Set by
//! `add_target` and for a traced process's children, cleared by `remove_target` and when a
//! process exits (a recycled pid must not be traced).

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use ghostprof::collect::host::HostCollector;

use crate::util::*;

#[test]
#[ignore = "root tier: needs root (CAP_BPF, CAP_PERFMON); tools/test runs it when root"]
fn root_probe_filter_follows_targets_through_fork_exit_and_removal() {
    assert!(is_root(), "run the root tier as root (tools/test does when it can)");
    let mut host = HostCollector::load(true).expect("load the cuda program");
    // A forks B (a background sleep) only after a line on stdin, so after it is traced.
    let mut a = Command::new("sh")
        .args(["-c", "read x; sleep 0.3 & echo $!; wait"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sh");
    let pa = a.id();
    assert!(!host.probes_trace(pa), "not traced before add_target");
    host.add_target(pa).unwrap();
    assert!(host.probes_trace(pa), "add_target sets the probes' bit");
    a.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let mut line = String::new();
    BufReader::new(a.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let pb: u32 = line.trim().parse().expect("the child's pid");
    assert!(host.targets().contains(&pb), "the fork tracepoint added the child to targets");
    assert!(host.probes_trace(pb), "and set its bit");
    assert!(a.wait().unwrap().success());
    // Both have exited (A waited for B), and the exit tracepoint runs before the parent hears.
    for p in [pa, pb] {
        assert!(!host.targets().contains(&p), "{p} left targets at exit");
        assert!(!host.probes_trace(p), "{p}'s bit is cleared at exit");
    }

    let mut c = Command::new("sleep").arg("10").spawn().expect("sleep");
    let pc = c.id();
    host.add_target(pc).unwrap();
    // Its neighbour in the same 64-bit word is not traced by it.
    assert!(host.probes_trace(pc) && !host.probes_trace(pc ^ 1));
    host.remove_target(pc);
    assert!(!host.probes_trace(pc), "remove_target clears the bit");
    assert!(!host.targets().contains(&pc), "and the targets entry");
    let _ = c.kill();
    let _ = c.wait();
}
