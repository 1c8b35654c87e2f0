#!/usr/bin/env bash
# The simulator against the live server on this machine (issue 13, item 4).
# Each trace window is replayed by `proteus bench` against `proteus serve`
# on two CPU virtual devices, and by `proteus simulate` with the cost model
# that server used, for each policy/layout; prints both reports' request
# throughput, goodput, mean TTFT and mean TPOT side by side with the
# relative error (bench/README.md, "Simulator vs the live server (CPU)").
#
#   bench/validate_sim.sh [OUT_DIR]          (default /tmp/proteus-validate)
#
# The cost model: every live server calibrates itself at start-up with the
# longer calibration (CALIB_S seconds of timed steps per TP degree; each
# shape's time against the fitted model is in its log) and saves it with
# its own memory side (its KV pools); that file is what the simulation of
# the run uses. Calibrating next to the run, not once for all, matters: the
# speed of this virtual machine drifts by up to 10-15% over an hour (the
# same 512-token prefill took 2.18-2.75 s), more than the model's own error.
# CALIBRATE=once calibrates one server first and has every server load that
# file (--cost-file) instead.
#
# Two CPU devices on two cores leave nothing spare: a TP2 step needs both
# cores at each of its 61 barriers, so any other process running during a
# live run slows it in a way no cost model predicts (a neighbour's build
# doubled TP2's TPOT). Each live run waits for a quiet machine first and
# reports the CPU time spent by processes other than the server and the
# bench client from the server's start to the run's end ("other", in % of
# the two cores); a run above 2% is marked '!' and is not a valid
# comparison (rerun it). The speed of a 128-token TP1 prefill is timed
# (proteus perf) before the server starts and after it stops: "drift" is
# how much slower the machine was at the end (negative: faster), a bound
# on what a calibration at the start can know about the run.
#
# Windows (WINDOWS, default "light heavy phased"), each with its trace, trace
# arguments, KV budget per device, runs, SLO (TTFT and TPOT ms: the
# scheduler's and goodput's) and hysteresis:
#   light  Azure conversation, 40 requests at 0.1x speed, lengths x 0.25: a
#          light load (throughput is the arrival rate)
#   heavy  the same trace, 60 requests at 1x: saturated (throughput is the
#          servers' capacity, TTFT is mostly queueing)
#   demo   traces/mixed_long_small.jsonl (traces/README.md) with 32 MiB of KV
#          per device: the short requests fit a TP1 instance, the long ones
#          of the three bursts (700-900 tokens) only TP2 (a TP1 instance
#          holds 672 tokens, a TP2 one 1024); dynamic splits back after 5 s
#   phased traces/phased_long_small.jsonl with the same KV budget: busy phases
#          of short requests (more than a TP2 instance serves, less than
#          two TP1 ones) around a quiet phase with six long requests, SLO
#          TTFT 4 s (a long prompt's prefill on TP2 is about 2.7 s);
#          dynamic splits back after 2 s
# Override one with e.g. ARGS_heavy="--num-requests 60 --speedup 1 ...".
# REPEAT=N runs each live run N times (the live runs' own spread).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${PROTEUS_BIN:-build/proteus}
OUT=${1:-/tmp/proteus-validate}
WINDOWS=${WINDOWS:-"light heavy phased"}
CALIB_S=${CALIB_S:-30}
CALIBRATE=${CALIBRATE:-each}
REPEAT=${REPEAT:-1}
PORT=${PORT:-18431}
QUIET_WAIT=${QUIET_WAIT:-1}
AZURE=../shared/traces/azure2023_conv.csv

TRACE_light=${TRACE_light:-$AZURE}
ARGS_light=${ARGS_light:-"--num-requests 40 --speedup 0.1 --input-scale 0.25 --output-scale 0.25"}
KV_light=${KV_light:-256}
RUNS_light=${RUNS_light:-"static:1,1 static:2 dynamic:1,1"}
SLO_light=${SLO_light:-"5000 300"}
HYST_light=${HYST_light:-30}

TRACE_heavy=${TRACE_heavy:-$AZURE}
ARGS_heavy=${ARGS_heavy:-"--num-requests 60 --speedup 1 --input-scale 0.25 --output-scale 0.25"}
KV_heavy=${KV_heavy:-256}
RUNS_heavy=${RUNS_heavy:-"static:1,1 static:2 dynamic:1,1"}
SLO_heavy=${SLO_heavy:-"5000 300"}
HYST_heavy=${HYST_heavy:-30}

TRACE_demo=${TRACE_demo:-traces/mixed_long_small.jsonl}
ARGS_demo=${ARGS_demo:-""}
KV_demo=${KV_demo:-32}
RUNS_demo=${RUNS_demo:-"static:1,1 static:2 dynamic:1,1"}
SLO_demo=${SLO_demo:-"5000 300"}
HYST_demo=${HYST_demo:-5}

TRACE_phased=${TRACE_phased:-traces/phased_long_small.jsonl}
ARGS_phased=${ARGS_phased:-""}
KV_phased=${KV_phased:-32}
RUNS_phased=${RUNS_phased:-"static:1,1 static:2 dynamic:1,1"}
SLO_phased=${SLO_phased:-"4000 300"}
HYST_phased=${HYST_phased:-2}

# One step = one sequence's whole chunk: the simulator batches prefill by a
# per-step token budget only, so the server's per-sequence chunk is set to it.
# The simulator does not model prefix caching: the servers run without it.
# The windows' KV sizes (KV_*) were chosen for F32 pages, so the servers keep them.
BATCH="--max-batch-tokens 512 --prefill-chunk 512 --max-running 32 --prefix-caching=false --kv-dtype f32"
mkdir -p "$OUT"

SERVER=
serve() { # log policy layout kv_mb extra...
    local log=$1 policy=$2 layout=$3 kv=$4
    shift 4
    "$BIN" serve --devices cpu:2 --threads 2 --allowed-tp 1,2 --scheduler-allowed-tp 1,2 --layout "$layout" \
        --policy "$policy" --kv-memory-mb "$kv" $BATCH --port "$PORT" "$@" 2>"$log" &
    SERVER=$!
    for _ in $(seq 1 1500); do
        curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && return 0
        kill -0 "$SERVER" 2>/dev/null || { cat "$log" >&2; return 1; }
        sleep 0.2
    done
    echo "server did not start" >&2
    return 1
}
stop() {
    if [ -n "$SERVER" ]; then
        kill -INT "$SERVER" 2>/dev/null || true
        wait "$SERVER" 2>/dev/null || true
        SERVER=
    fi
}
trap stop EXIT

busy_ticks() { awk '/^cpu /{print $2 + $3 + $4 + $7 + $8}' /proc/stat; }
proc_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# Until the two cores have been less than 5% busy for 3 s (at most 10 min).
wait_quiet() {
    [ "$QUIET_WAIT" = 1 ] || return 0
    local a b
    for _ in $(seq 1 200); do
        a=$(busy_ticks)
        sleep 3
        b=$(busy_ticks)
        [ $((b - a)) -le $((3 * 2 * $(getconf CLK_TCK) / 20)) ] && return 0
    done
    echo "validate_sim: the machine did not become quiet; going on" >&2
}
# The machine's speed: ms of a 128-token prefill on one thread (median of 3).
probe() {
    "$BIN" perf -t 1 --pp 128 --tg 0 --reps 3 2>/dev/null |
        python3 -c "import json,sys; print(f\"{128 / json.load(sys.stdin)['pp_tok_s'] * 1e3:.1f}\")"
}
# Whether the server's layout is $1 (a dynamic one splits back after the run).
layout_is() {
    curl -s "http://127.0.0.1:$PORT/v1/layout" | python3 -c \
        "import json,sys; sys.exit(json.load(sys.stdin)['layout'] != [int(x) for x in sys.argv[1].split(',')])" \
        "$1" 2>/dev/null
}

if [ "$CALIBRATE" = once ]; then
    COST=$OUT/cost.json
    if [ ! -f "$COST" ]; then
        wait_quiet
        serve "$OUT/calibrate.log" static 1,1 256 --calibration-s "$CALIB_S" --save-cost "$COST"
        stop
    fi
    grep "cost model: TP . calibrated" "$OUT/calibrate.log" | sed 's/^proteus info: //' || true
fi

# One row per run: live, then simulated with the error relative to live.
ROW=$OUT/row.py
cat >"$ROW" <<'EOF'
import json, sys
w, run, lf, sf, mf, other, p0, p1 = sys.argv[1:]
L, S = json.load(open(lf)), json.load(open(sf))
xl = sum(float(l.split()[-1]) for l in open(mf)
         if l.startswith("proteus_transformations_total{") and 'result="ok"' in l)
t = S.get("transformations", {})
xs = t.get("merge", 0) + t.get("split", 0)
keys = [("request_throughput", 8, 3), ("request_goodput", 8, 3), ("mean_ttft_ms", 9, 1), ("mean_tpot_ms", 8, 1)]
err = lambda l, s: f"{(s - l) / l * 100:+.1f}%" if l else "-"
fail = lambda d: f" ({d['failed']} failed)" if d.get("failed") else ""
mark = "!" if float(other) > 2 else ""
drift = f"{(float(p1) / float(p0) - 1) * 100:+.1f}%"
print(f"{w:<6s} {run:<12s} live " + " ".join(f"{L[k]:{n}.{p}f} {'':7s}" for k, n, p in keys)
      + f" {xl:5.0f} {other + '%' + mark:>6s} {drift:>6s}{fail(L)}")
print(f"{'':<6s} {'':<12s} sim  " + " ".join(f"{S[k]:{n}.{p}f} {err(L[k], S[k]):>7s}" for k, n, p in keys)
      + f" {xs:5d}{fail(S)}")
EOF
# CPU time of other processes over a run, in % of the two cores.
OTHER=$OUT/other.py
cat >"$OTHER" <<'EOF'
import sys
b0, b1, srv = map(int, sys.argv[1:4]); t0, t1 = map(float, sys.argv[4:6]); hz = int(sys.argv[7])
client = sum(map(float, open(sys.argv[6]).read().split()[-2:]))
print(f"{max((b1 - b0 - srv) / hz - client, 0) / (2 * (t1 - t0)) * 100:.1f}")
EOF

printf '%-6s %-12s %-4s %8s %7s %8s %7s %9s %7s %8s %7s %5s %6s %6s\n' window run "" "req/s" err "good/s" err \
    "TTFT ms" err "TPOT ms" err xform other drift
for w in $WINDOWS; do
    eval "trace=\$TRACE_$w args=\$ARGS_$w kv=\$KV_$w runs=\$RUNS_$w slo=\$SLO_$w hyst=\$HYST_$w"
    set -- $slo
    ttft=$1 tpot=$2
    for run in $runs; do
        for rep in $(seq 1 "$REPEAT"); do
            policy=${run%%:*}
            layout=${run#*:}
            tag="$w-$policy-$layout"
            [ "$REPEAT" -gt 1 ] && tag="$tag-$rep"
            if [ "$CALIBRATE" = once ]; then
                cost_args=(--cost-file "$COST")
            else
                cost_args=(--calibration-s "$CALIB_S")
            fi
            wait_quiet
            p0=$(probe)
            b0=$(busy_ticks)
            t0=$(date +%s.%N)
            serve "$OUT/serve-$tag.log" "$policy" "$layout" "$kv" "${cost_args[@]}" --save-cost "$OUT/cost-$tag.json" \
                --slo-ttft-ms "$ttft" --slo-tpot-ms "$tpot" --hysteresis "$hyst"
            /usr/bin/time -f "%U %S" -o "$OUT/client-$tag.time" "$BIN" bench --base-url "http://127.0.0.1:$PORT" \
                --trace "$trace" $args --quiet --goodput "ttft:$ttft" "tpot:$tpot" --json "$OUT/live-$tag.json" \
                --csv "$OUT/live-$tag.csv" >"$OUT/live-$tag.txt" 2>/dev/null
            t1=$(date +%s.%N)
            b1=$(busy_ticks)
            s1=$(proc_ticks "$SERVER")
            if [ "$policy" = dynamic ]; then
                for _ in $(seq 1 $((${hyst%.*} * 5 + 150))); do
                    layout_is "$layout" && break
                    sleep 0.2
                done
            fi
            curl -s "http://127.0.0.1:$PORT/metrics" >"$OUT/metrics-$tag.txt"
            stop
            p1=$(probe)
            other=$(python3 "$OTHER" "$b0" "$b1" "$s1" "$t0" "$t1" "$OUT/client-$tag.time" "$(getconf CLK_TCK)")
            "$BIN" simulate --cluster 2xH100 --cost "$OUT/cost-$tag.json" --trace "$trace" $args --policy "$policy" \
                --layout "$layout" --allowed-tp 1,2 --max-seqs 32 --max-batched-tokens 512 --hysteresis "$hyst" \
                --slo "ttft:$ttft" "tpot:$tpot" --json "$OUT/sim-$tag.json" --csv "$OUT/sim-$tag.csv" \
                >"$OUT/sim-$tag.txt" 2>&1
            python3 "$ROW" "$w" "$policy:$layout" "$OUT/live-$tag.json" "$OUT/sim-$tag.json" \
                "$OUT/metrics-$tag.txt" "$other" "$p0" "$p1"
        done
    done
done
