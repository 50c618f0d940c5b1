//! NCCL's algorithm and protocol per collective, from the `nccl_algo` records that NCCL's
//! profiler plugin API gives the injection library (docs/trace-format.md, kind 17).
//!
//! Join to the NCCL host calls (`nccl`, phase host): per process and operation, both come in
//! call order (a call's profiler event starts inside the call, or at `ncclGroupEnd` for a
//! grouped one, after the calls of the group, in their order), so the k-th host call of an
//! operation is the k-th `nccl_algo` record of that operation after their first common one; a
//! pair counts only if the element counts agree, which also keeps a stray or missing record
//! from shifting the rest: on a mismatch the walk realigns on the next equal count.

use std::collections::HashMap;

use crate::trace::{NcclPhase, RecordBatch};

/// NCCL's algorithm names, in the order of NCCL's `NCCL_ALGO_*` ids.
const ALGORITHMS: [&str; 7] = ["TREE", "RING", "COLLNET_DIRECT", "COLLNET_CHAIN", "NVLS", "NVLS_TREE", "PAT"];
/// NCCL's protocol names, in the order of NCCL's `NCCL_PROTO_*` ids.
const PROTOCOLS: [&str; 3] = ["LL", "LL128", "SIMPLE"];

/// An algorithm and protocol in one byte: 0 unknown, else 1 + algorithm × 4 + protocol (an
/// unknown name of either is its table's length: "other").
pub type AlgoCode = u8;

/// The [`AlgoCode`] of NCCL's algorithm and protocol names (any case).
pub fn algo_code(algo: &str, proto: &str) -> AlgoCode {
    let a = ALGORITHMS.iter().position(|x| x.eq_ignore_ascii_case(algo)).unwrap_or(ALGORITHMS.len());
    let p = PROTOCOLS.iter().position(|x| x.eq_ignore_ascii_case(proto)).unwrap_or(PROTOCOLS.len());
    (1 + a * 4 + p) as AlgoCode
}

/// "RING/SIMPLE"; None for 0.
pub fn algo_name(code: AlgoCode) -> Option<String> {
    let c = code.checked_sub(1)? as usize;
    let a = ALGORITHMS.get(c / 4).copied().unwrap_or("other");
    let p = PROTOCOLS.get(c % 4).copied().unwrap_or("other");
    Some(format!("{a}/{p}"))
}

/// A profiler event: time, element count, algorithm.
type Event = (u64, u64, AlgoCode);

/// (pid, host call start) → the algorithm and protocol NCCL used for that call.
pub fn algorithms(batch: &RecordBatch, names: &HashMap<u32, String>) -> HashMap<(u32, u64), AlgoCode> {
    let mut out = HashMap::new();
    if batch.nccl_algos.is_empty() {
        return out;
    }
    // (pid, op) → host calls (start, count) in call order
    let mut calls: HashMap<(u32, u32), Vec<(u64, u64)>> = HashMap::new();
    for c in batch.nccl.iter().filter(|c| c.phase == NcclPhase::Host as u32) {
        calls.entry((c.pid, c.op)).or_default().push((c.start_ns, c.count));
    }
    // (pid, op) → profiler events in call order
    let mut events: HashMap<(u32, u32), Vec<Event>> = HashMap::new();
    let name = |id: u32| names.get(&id).map_or("", String::as_str);
    for a in &batch.nccl_algos {
        let code = algo_code(name(a.algo_id), name(a.proto_id));
        events.entry((a.pid, a.op)).or_default().push((a.time_ns, a.count, code));
    }
    for (key, mut cs) in calls {
        let Some(es) = events.get_mut(&key) else { continue };
        cs.sort_unstable();
        es.sort_unstable_by_key(|e| e.0);
        // The first event at or after the first call (events before it: calls the probes
        // did not see, e.g. before an attach).
        let mut j = es.partition_point(|e| e.0 < cs[0].0);
        for &(start, count) in &cs {
            // Realign on the next event with this call's count (a missing event or call).
            let Some(k) = es[j..].iter().take(8).position(|e| e.1 == count) else { continue };
            out.insert((key.0, start), es[j + k].2);
            j += k + 1;
            if j >= es.len() {
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_every_name() {
        for a in ALGORITHMS {
            for p in PROTOCOLS {
                assert_eq!(algo_name(algo_code(a, p)).unwrap(), format!("{a}/{p}"));
            }
        }
        assert_eq!(algo_name(algo_code("ring", "simple")).unwrap(), "RING/SIMPLE");
        assert_eq!(algo_name(algo_code("NEW_ALGO", "LL")).unwrap(), "other/LL");
        assert_eq!(algo_name(0), None);
    }

    #[test]
    fn host_calls_join_their_events_in_call_order_with_equal_counts() {
        use crate::trace::{CollOp, NcclAlgo, NcclColl};
        let mut b = RecordBatch::default();
        let names: HashMap<u32, String> =
            [(1, "RING"), (2, "SIMPLE"), (3, "TREE"), (4, "LL")].iter().map(|(i, s)| (*i, s.to_string())).collect();
        let ar = CollOp::AllReduce as u32;
        let call = |pid: u32, start: u64, count: u64, op: u32| NcclColl {
            start_ns: start,
            end_ns: start + 100,
            count,
            pid,
            op,
            phase: NcclPhase::Host as u32,
            ..Default::default()
        };
        let event = |pid: u32, time: u64, count: u64, op: u32, algo: u32, proto: u32| NcclAlgo {
            time_ns: time,
            count,
            pid,
            op,
            algo_id: algo,
            proto_id: proto,
            ..Default::default()
        };
        // pid 7: four all-reduces; the third has no event (dropped); an event from before the
        // first call (an attach) is skipped. pid 8: one all-gather, another op.
        for (i, count) in [10u64, 20, 30, 40].into_iter().enumerate() {
            b.nccl.push(call(7, 1000 * (i as u64 + 1), count, ar));
        }
        b.nccl_algos.push(event(7, 500, 99, ar, 3, 4));
        b.nccl_algos.push(event(7, 1010, 10, ar, 1, 2));
        b.nccl_algos.push(event(7, 2010, 20, ar, 3, 4));
        b.nccl_algos.push(event(7, 4010, 40, ar, 1, 2));
        b.nccl.push(call(8, 1000, 5, CollOp::AllGather as u32));
        b.nccl_algos.push(event(8, 1500, 5, CollOp::AllGather as u32, 1, 4));
        b.nccl_algos.push(event(8, 1600, 5, ar, 3, 2));
        let got = algorithms(&b, &names);
        let name = |pid: u32, start: u64| got.get(&(pid, start)).and_then(|c| algo_name(*c));
        assert_eq!(name(7, 1000).as_deref(), Some("RING/SIMPLE"));
        assert_eq!(name(7, 2000).as_deref(), Some("TREE/LL"));
        assert_eq!(name(7, 3000), None, "its event is missing");
        assert_eq!(name(7, 4000).as_deref(), Some("RING/SIMPLE"), "realigned on the count");
        assert_eq!(name(8, 1000).as_deref(), Some("RING/LL"));
        assert_eq!(got.len(), 4);
    }
}
