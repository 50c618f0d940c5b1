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

/// Where the kernel has `uprobe_multi` links, a library's probes are one link per program (so
/// removing them waits for one grace period per link, not one per function, one after another:
/// 4.3 s for the 40 probes of libcuda and libnccl at the end of every `attach` before); without
/// them, one perf event per probe. Either way the same functions are probed, and removing and
/// placing the per-launch ones again changes only their links.
#[test]
#[ignore = "root tier: needs root (CAP_BPF, CAP_PERFMON); tools/test runs it when root"]
fn root_a_librarys_uprobes_are_one_link_per_program() {
    use ghostprof::collect::host::UprobeLinks;
    assert!(is_root(), "run the root tier as root (tools/test does when it can)");
    if UprobeLinks::detect() != UprobeLinks::Multi {
        eprintln!("SKIPPED: this kernel has no uprobe_multi links (6.6 or later): the per-function fallback only");
        return;
    }
    let libcuda = crate::gpusim::built().lib_dir.join("libcuda.so.1");
    let mut attached = Vec::new();
    for (links, kind) in [(UprobeLinks::Multi, "probe_multi"), (UprobeLinks::PerFunction, "perf")] {
        let mut host = HostCollector::load_with(false, links).expect("load the cuda program");
        let report = host.attach_library(&libcuda).expect("probe gpusim's libcuda");
        assert!(report.failed.is_empty(), "{links:?}: {:?}", report.failed);
        let per_launch =
            report.attached.iter().filter(|f| f.starts_with("cuLaunch") || f.starts_with("cuGraphLaunch")).count();
        let bracketed = report.attached.len() - per_launch;
        // gpusim's libcuda exports the three launch shapes and the bracketed calls.
        assert!(per_launch >= 3 && bracketed >= 3, "{links:?}: {:?}", report.attached);
        let held = host.uprobe_link_types();
        let want = if links == UprobeLinks::Multi { 3 + 2 } else { per_launch + 2 * bracketed };
        assert_eq!(held.len(), want, "{links:?}: links held ({held:?})");
        // `uprobe_multi` and `uretprobe_multi` (the return probes' link), or `perf`.
        assert!(held.iter().all(|k| k.ends_with(kind)), "{links:?}: every link a *{kind} ({held:?})");
        let (removed, failed) = host.set_launch_probes(false);
        assert!(failed.is_empty());
        let want_removed = if links == UprobeLinks::Multi { 3 } else { per_launch };
        assert_eq!(removed.len(), want_removed, "{links:?}: the per-launch links");
        ghostprof::collect::host::drop_links(removed);
        assert_eq!(host.uprobe_link_types().len(), want - want_removed);
        let (_, failed) = host.set_launch_probes(true);
        assert!(failed.is_empty());
        assert_eq!(host.uprobe_link_types(), held, "{links:?}: the per-launch probes placed again");
        attached.push(report.attached);
    }
    assert_eq!(attached[0], attached[1], "the same functions probed both ways");
    eprintln!("{} functions probed: 5 uprobe_multi links, or one perf event per probe", attached[0].len());
}
