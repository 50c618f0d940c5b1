"""Checks tools/fleet/ghost_compute.py's result against `ghostprof report --json` on the same
traces (the Spark tier, tools/test-spark):

    python3 check_report.py FLEET.json JOB REPORT.json [JOB REPORT.json ...]

For each job: every process's category shares equal the report's devices' (summed over the
process's devices) within 1e-9; every rank's matched count, mean and max arrival skew and late
count equal the report's `skew`; the straggler is the report's `straggler_rank`; the waits of the
matched collectives (each rank's own, and those given to the late ranks) both sum to the
report's `collectives[].wait_ns`. Prints one line per job with its figures; exits 1 with one line
per difference.
"""

import json
import sys

CATEGORIES = [
    "compute.useful",
    "compute.inefficient",
    "comm.transfer",
    "comm.wait",
    "other.busy",
    "idle.launch_bound",
    "idle.host_stall",
    "idle.other",
]


def check_job(job, fleet, report, errors):
    def fail(msg):
        errors.append(f"job {job}: {msg}")

    if job not in fleet["jobs"]:
        fail(f"not in the Spark result (jobs: {sorted(fleet['jobs'])})")
        return
    got = fleet["jobs"][job]
    by_proc = {(r["trace"], r["pid"]): r for r in got["ranks"]}
    # shares: the report's devices summed per process
    procs = {}
    for d in report["devices"]:
        p = procs.setdefault((d["file"], d["pid"]), {"window": 0, "ns": dict.fromkeys(CATEGORIES, 0)})
        p["window"] += d["window_end_ns"] - d["window_start_ns"]
        for c in CATEGORIES:
            p["ns"][c] += d["categories_ns"][c]
    for key, p in procs.items():
        r = by_proc.get(key)
        if r is None:
            fail(f"process {key} of the report is missing")
            continue
        if r["window_ns"] != p["window"]:
            fail(f"{key}: window {r['window_ns']} ns, report {p['window']} ns")
        for c in CATEGORIES:
            want = p["ns"][c] / max(p["window"], 1)
            if abs(r["shares"][c] - want) > 1e-9:
                fail(f"{key}: {c} share {r['shares'][c]!r}, report {want!r}")
    # skew per rank
    for s in report["skew"]:
        r = by_proc.get((s["file"], s["pid"]))
        if r is None:
            fail(f"rank {s['rank']} (pid {s['pid']}) of the report's skew is missing")
            continue
        if r["rank"] != s["rank"]:
            fail(f"pid {s['pid']}: rank {r['rank']}, report {s['rank']}")
        if r["max_arrival_skew_ns"] != s["max_arrival_skew_ns"] or r["late_count"] != s["late_count"]:
            fail(
                f"rank {s['rank']}: max skew {r['max_arrival_skew_ns']} late {r['late_count']}, "
                f"report {s['max_arrival_skew_ns']} late {s['late_count']}"
            )
        mean, want = r["mean_arrival_skew_ns"], s["mean_arrival_skew_ns"]
        if abs(mean - want) > 1e-9 * max(abs(want), 1.0):
            fail(f"rank {s['rank']}: mean skew {mean!r} ns, report {want!r} ns")
    if got["straggler_rank"] != report["straggler_rank"]:
        fail(f"straggler rank {got['straggler_rank']}, report {report['straggler_rank']}")
    total_wait = sum(c["wait_ns"] for c in report["collectives"])
    own = sum(r["comm_wait_ns"] for r in got["ranks"])
    caused = sum(r["wait_caused_ns"] for r in got["ranks"])
    if own != total_wait:
        fail(f"the ranks' own waits sum to {own} ns, report's collectives wait {total_wait} ns")
    # (a collective's wait split between ranks that arrived at the same instant is a fraction)
    if abs(caused - total_wait) > 1e-6 * max(total_wait, 1):
        fail(f"the waits given to late ranks sum to {caused} ns, report's collectives wait {total_wait} ns")
    caused_by = {r["rank"]: r["wait_caused_ns"] for r in got["ranks"] if r["rank"] is not None}
    print(
        f"job {job}: {len(got['ranks'])} processes, straggler rank {got['straggler_rank']} (report "
        f"{report['straggler_rank']}), comm.wait {total_wait / 1e6:.3f} ms caused by rank: "
        + ", ".join(f"{k}: {v / 1e6:.3f} ms" for k, v in sorted(caused_by.items()))
    )


def main(argv):
    if len(argv) < 3 or len(argv) % 2 == 0:
        sys.exit("usage: check_report.py FLEET.json JOB REPORT.json [JOB REPORT.json ...]")
    with open(argv[0]) as f:
        fleet = json.load(f)
    if not fleet.get("master", "").startswith("spark://"):
        sys.exit(f"check_report: the result was computed on {fleet.get('master')!r}, not a standalone cluster")
    errors = []
    for job, path in zip(argv[1::2], argv[2::2]):
        with open(path) as f:
            check_job(job, fleet, json.load(f), errors)
    extra = set(fleet["jobs"]) - set(argv[1::2])
    if extra:
        errors.append(f"jobs in the Spark result that were not exported: {sorted(extra)}")
    for e in errors:
        print("check_report: " + e, file=sys.stderr)
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main(sys.argv[1:])
