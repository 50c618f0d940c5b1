"""Fleet analysis of ghostprof's Parquet tables on Apache Spark (docs/fleet.md).

    spark-submit --master spark://HOST:7077 tools/fleet/ghost_compute.py [--clock realtime] --out result.json DIR...

Each DIR is the output of `ghostprof export --format parquet DIR TRACE...` (a job, or a host's
share of one); their tables are read together (a union: every row carries its job, host, trace,
pid and rank). Per job and rank (process) it computes:

- the eight categories' shares of the window (from `devices`: summed nanoseconds over the
  process's devices ÷ summed windows);
- the arrival skew over the matched collectives, redone from `collectives` by `ghostprof
  report`'s rule (profiler/analyze/collectives.rs): the instances with the same (job, comm,
  nranks, seq) are one collective when there are exactly `nranks` of them with distinct
  `comm_rank`s and nranks >= 2; a rank's skew is its arrival (`arrival_common_ns`) minus the
  earliest; mean, max, and `late_count` (collectives where it arrived last and later than
  another rank);
- the straggler per job: the rank with the largest mean skew, when at least two ranks have
  matched collectives and that mean is above 0 (ties: the last in (rank, trace, pid) order,
  as report);
- comm.wait attributed to the late rank: each matched collective's waits (each instance's
  min(last arrival - own arrival, kernel length)) summed and given to the rank that arrived
  last (split evenly when several arrived at the same last instant);
  `comm_wait_ns` is the rank's own waiting in those collectives.

Writes one JSON document (`--out`, else stdout): {"schema": "ghostprof.fleet.v1", "jobs":
{JOB: {"straggler_rank": R or null, "ranks": [...]}}}.
"""

import argparse
import json
import sys

from pyspark.sql import SparkSession, Window
from pyspark.sql import functions as F

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
IDENTITY = ["job", "host", "trace", "pid", "rank"]


def ns_column(category):
    return category.replace(".", "_") + "_ns"


def shares(devices):
    """Per process: window and category nanoseconds summed over its devices, and shares."""
    sums = [F.sum(ns_column(c)).alias(ns_column(c)) for c in CATEGORIES]
    return devices.groupBy(*IDENTITY).agg(F.sum("window_ns").alias("window_ns"), *sums)


def matched_instances(colls, clock):
    """The instances of matched collectives with their skew, wait and lateness, arrivals on
    `clock`'s column (`arrival_common_ns`, or `arrival_realtime_ns`: instances without one are
    left out)."""
    key = ["job", "comm", "nranks", "seq"]
    if clock == "realtime":
        colls = colls.where(F.col("arrival_realtime_ns").isNotNull()).withColumn(
            "arrival_common_ns", F.col("arrival_realtime_ns")
        )
    groups = (
        colls.groupBy(*key)
        .agg(
            F.count(F.lit(1)).alias("members"),
            F.countDistinct("comm_rank").alias("distinct_ranks"),
            F.min("arrival_common_ns").alias("first_ns"),
            F.max("arrival_common_ns").alias("last_ns"),
        )
        .where((F.col("nranks") >= 2) & (F.col("members") == F.col("nranks")) & (F.col("distinct_ranks") == F.col("members")))
    )
    inst = colls.join(groups, key)
    late = (F.col("arrival_common_ns") == F.col("last_ns")) & (F.col("last_ns") > F.col("first_ns"))
    wait = F.when(
        F.col("kernel_start_ns").isNotNull(),
        F.least(F.col("last_ns") - F.col("arrival_common_ns"), F.col("kernel_end_ns") - F.col("kernel_start_ns")),
    )
    return inst.select(
        *IDENTITY,
        *key,
        (F.col("arrival_common_ns") - F.col("first_ns")).alias("skew_ns"),
        wait.alias("wait_ns"),
        late.alias("late"),
    )


def per_rank(inst):
    """Per process: skew figures, own wait, and the wait its lateness caused the others."""
    key = ["job", "comm", "nranks", "seq"]
    per_coll = inst.groupBy(*key).agg(
        F.sum(F.coalesce(F.col("wait_ns"), F.lit(0))).alias("coll_wait_ns"),
        F.sum(F.col("late").cast("long")).alias("late_ranks"),
    )
    caused = (
        inst.where(F.col("late"))
        .join(per_coll, key)
        .groupBy(*IDENTITY)
        .agg(F.sum(F.col("coll_wait_ns") / F.col("late_ranks")).alias("wait_caused_ns"))
    )
    skew = inst.groupBy(*IDENTITY).agg(
        F.count(F.lit(1)).alias("matched"),
        F.avg("skew_ns").alias("mean_arrival_skew_ns"),
        F.max("skew_ns").alias("max_arrival_skew_ns"),
        F.sum(F.col("late").cast("long")).alias("late_count"),
        F.sum(F.coalesce(F.col("wait_ns"), F.lit(0))).alias("comm_wait_ns"),
    )
    return skew.join(caused, IDENTITY, "left").fillna({"wait_caused_ns": 0.0})


def stragglers(ranks):
    """Per job: the straggler's rank, by report's rule."""
    with_match = ranks.where(F.col("matched") > 0)
    counts = with_match.groupBy("job").agg(F.count(F.lit(1)).alias("matched_ranks"))
    order = Window.partitionBy("job").orderBy(
        F.col("mean_arrival_skew_ns").desc(), F.col("rank").desc(), F.col("trace").desc(), F.col("pid").desc()
    )
    best = (
        with_match.where(F.col("mean_arrival_skew_ns") > 0)
        .withColumn("n", F.row_number().over(order))
        .where(F.col("n") == 1)
        .join(counts, "job")
        .where(F.col("matched_ranks") >= 2)
    )
    return {r["job"]: r["rank"] for r in best.select("job", "rank").collect()}


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dirs", nargs="+", help="directories written by ghostprof export --format parquet")
    p.add_argument("--out", help="write the JSON here (default: stdout)")
    p.add_argument(
        "--clock",
        choices=["common", "realtime"],
        default="common",
        help="arrivals on the clock report matched them on (common: exports of whole jobs) or on "
        "each trace's CLOCK_REALTIME (realtime: one job exported in parts)",
    )
    args = p.parse_args(argv)
    spark = SparkSession.builder.appName("ghostprof-fleet").getOrCreate()
    try:
        devices = spark.read.parquet(*[f"{d}/devices.parquet" for d in args.dirs])
        colls = spark.read.parquet(*[f"{d}/collectives.parquet" for d in args.dirs])
        for df, table in ((devices, "devices"), (colls, "collectives")):
            # The columns this script reads are those of schema_version 1 (docs/parquet-schema.md).
            missing = [c for c in IDENTITY if c not in df.columns]
            if missing:
                sys.exit(f"ghost_compute: {table} lacks {missing}: not a ghostprof Parquet export")
        share = shares(devices)
        ranks = per_rank(matched_instances(colls, args.clock))
        straggler = stragglers(ranks)
        rows = share.join(ranks, IDENTITY, "full_outer").collect()
        jobs = {}
        for r in sorted(rows, key=lambda r: (r["job"], r["rank"] if r["rank"] is not None else -1, r["trace"], r["pid"])):
            window = r["window_ns"] or 0
            entry = {
                "host": r["host"],
                "trace": r["trace"],
                "pid": r["pid"],
                "rank": r["rank"],
                "window_ns": window,
                "shares": {c: (r[ns_column(c)] or 0) / max(window, 1) for c in CATEGORIES},
                "matched": r["matched"] or 0,
                "mean_arrival_skew_ns": float(r["mean_arrival_skew_ns"] or 0.0),
                "max_arrival_skew_ns": r["max_arrival_skew_ns"] or 0,
                "late_count": r["late_count"] or 0,
                "comm_wait_ns": r["comm_wait_ns"] or 0,
                "wait_caused_ns": float(r["wait_caused_ns"] or 0.0),
            }
            jobs.setdefault(r["job"], {"straggler_rank": straggler.get(r["job"]), "ranks": []})["ranks"].append(entry)
        doc = {
            "schema": "ghostprof.fleet.v1",
            "master": spark.sparkContext.master,
            "clock": args.clock,
            "jobs": jobs,
        }
    finally:
        spark.stop()
    text = json.dumps(doc, indent=1, sort_keys=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    main(sys.argv[1:])
