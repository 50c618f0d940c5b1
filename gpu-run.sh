#!/bin/bash
# Session-local device script (not committed): overhead protocol + attach by injection to a plain job.
set -u
export GHOSTPROF_BIN=$PWD/target/gpubin GPU_CHECK_OUT=$OUT/gc
mkdir -p $GPU_CHECK_OUT
BIN=$GHOSTPROF_BIN; GP=$BIN/ghostprof
if [ -d "$BIN/lib" ] && ldd "$GP" | grep -q "not found"; then export LD_LIBRARY_PATH="$BIN/lib:${LD_LIBRARY_PATH:-}"; fi
nproc; lscpu | grep "Model name"
echo "== attach by injection to a plain PyTorch job"
GPU_CHECK_PARTS="1" tools/gpu-check 2>&1 | tail -8
O=$GPU_CHECK_OUT
timeout 120 python3 $O/train.py seconds 30 > $O/plain.log 2>&1 &
JOB=$!
for _ in $(seq 80); do grep -q "steps/s" $O/plain.log 2>/dev/null && break; sleep 0.5; done
sleep 4
timeout 90 $GP attach --pid $JOB --duration 10s --force -o $O/inj.gptrace > $O/attach.out 2>&1
echo "attach exit: $?"; tail -40 $O/attach.out
wait $JOB; echo "job exit: $?"
cat $O/plain.log
$GP info --json $O/inj.gptrace > $O/inj.info.json 2>&1; $GP report --json $O/inj.gptrace > $O/inj.report.json 2>$O/inj.report.err
python3 - $O/inj.info.json $O/inj.report.json <<'PY'
import json,sys
i=json.load(open(sys.argv[1])); r=json.load(open(sys.argv[2]))
print("records:", json.dumps(i.get("records")))
for d in r.get("devices",[]):
    st=d.get("steps") or {}
    print("device", d.get("pid"), d.get("device"), "busy", d.get("busy"), "mfu", d.get("mfu"), "flop_source", d.get("flop_source"), "step_source", d.get("step_source"), "steps", (st.get("count") if isinstance(st,dict) else len(st)))
print("profiler_cost", json.dumps(r.get("profiler_cost")))
print("notes", json.dumps(r.get("notes"))[:1500])
PY
echo "== overhead protocol"
GPU_CHECK_PARTS="7" GPU_CHECK_OVERHEAD_REPS=${REPS:-5} GPU_CHECK_OVERHEAD_STEPS=${STEPS:-60} timeout 420 tools/gpu-check 2>&1 | tail -60
