#!/usr/bin/env bash
# proteus simulate end to end: usage errors exit 2 with a message naming the
# flag, bad device spec files exit 1 naming the file and the key, a run on
# 200 rows of the Azure conversation trace (or, without ../shared, a generated
# trace of its format) writes a JSON report whose totals
# match the CSV rows (computed here, independently), a CSV and an SVG; the
# same command gives the same report; --sweep prints every static layout
# and dynamic.
set -u
BIN="${PROTEUS_BINARY_DIR:?}/proteus"
TRACE="${TEST_SIMULATE_TRACE:-${PROTEUS_SOURCE_DIR:?}/../shared/traces/azure2023_conv.csv}"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# Without the shared traces (a clone elsewhere), a trace of the same format:
# 300 rows, Poisson arrivals at 5 req/s, Azure-conversation-like lengths.
if [ ! -f "$TRACE" ]; then
    TRACE="$tmp/trace.csv" # not $tmp/a*: the determinism check renames $tmp/a to $tmp/b
    python3 - "$TRACE" <<'PY'
import random, sys
rng = random.Random(7)
t = 0.0
with open(sys.argv[1], "w") as f:
    f.write("TIMESTAMP,ContextTokens,GeneratedTokens\n")
    for _ in range(300):
        t += rng.expovariate(5.0)
        s = int(t)
        f.write("2023-11-16 18:%02d:%02d.%07d,%d,%d\n" % (s // 60, s % 60, int((t - s) * 1e7),
                min(14000, max(1, int(rng.lognormvariate(6.7, 0.9)))), max(1, int(rng.lognormvariate(4.8, 0.9)))))
PY
fi
pass=0 fail=0
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*" >&2; }

# expect CODE PATTERN ARGS...: exit code CODE and PATTERN in stderr.
expect() {
    local code=$1 pat=$2
    shift 2
    "$BIN" simulate "$@" >"$tmp/out" 2>"$tmp/err"
    local rc=$?
    if [ "$rc" -eq "$code" ] && grep -q -- "$pat" "$tmp/err"; then ok; else
        bad "simulate $* -> exit $rc (want $code), stderr: $(head -c 300 "$tmp/err") (want '$pat')"
    fi
}

RUN=(--cluster 4xH100 --model llama3-8b --trace "$TRACE" --num-requests 20)
expect 2 "--cluster SPEC is required" --model llama3-8b --trace "$TRACE"
expect 2 "--trace FILE is required" --cluster 4xH100 --model llama3-8b
expect 2 "--model MODEL" --cluster 4xH100 --trace "$TRACE"
expect 2 "--policy: expected static or dynamic" "${RUN[@]}" --policy elastic
expect 2 "unknown option '--frobnicate'" "${RUN[@]}" --frobnicate 3
expect 2 "unknown device 'B300'" --cluster 8xB300 --model llama3-8b --trace "$TRACE"
expect 2 "neither NxDEVICE" --cluster nonsense --model llama3-8b --trace "$TRACE"
expect 2 "neither a preset" --cluster 4xH100 --model gpt-9 --trace "$TRACE"
expect 2 "covers 3 devices" "${RUN[@]}" --layout 2,1
expect 2 "multiple of its degree" "${RUN[@]}" --layout 1,2,1
expect 2 "--slo: expected ttft:MS" "${RUN[@]}" --slo ttfb:100
expect 2 "--max-seqs" "${RUN[@]}" --max-seqs 0
expect 2 "more than the cluster's 4 devices" "${RUN[@]}" --allowed-tp 1,8
expect 2 "need a single run" "${RUN[@]}" --sweep --plot "$tmp/x.svg"
expect 1 "cannot read" "${RUN[@]}" --cost "$tmp/missing.json"

# Device spec files: the file and the key in the message, exit 1.
spec() { printf '%s' "$2" >"$tmp/$1.json"; }
spec unknown '{"devices": 4, "base": "H100", "hbm_gb": 80}'
expect 1 "$tmp/unknown.json: unknown key 'hbm_gb'" --cluster "$tmp/unknown.json" --model llama3-8b --trace "$TRACE"
spec nodev '{"base": "H100"}'
expect 1 "$tmp/nodev.json: devices: missing" --cluster "$tmp/nodev.json" --model llama3-8b --trace "$TRACE"
spec range '{"devices": 4, "base": "H100", "flop_eff": 3}'
expect 1 "$tmp/range.json: flop_eff: expected a number in" --cluster "$tmp/range.json" --model llama3-8b --trace "$TRACE"
spec nobw '{"devices": 2, "mem_gib": 80, "tflops": 300, "link_gbs": 100}'
expect 1 "$tmp/nobw.json: mem_bw_gbs: missing" --cluster "$tmp/nobw.json" --model llama3-8b --trace "$TRACE"
spec broken '{"devices": 4,'
expect 1 "$tmp/broken.json: not valid JSON" --cluster "$tmp/broken.json" --model llama3-8b --trace "$TRACE"
# A good spec file runs.
spec good '{"devices": 2, "name": "TestGPU", "mem_gib": 80, "mem_bw_gbs": 2000, "tflops": 300, "link_gbs": 200}'
"$BIN" simulate --cluster "$tmp/good.json" --model llama3-8b --trace "$TRACE" --num-requests 10 >"$tmp/good.out" 2>&1 \
    && grep -q "2 x TestGPU" "$tmp/good.out" && ok || bad "good spec file: $(tail -3 "$tmp/good.out")"

# A run with every output; the JSON's totals against the CSV rows.
args=(--cluster 4xH100 --model llama3-8b --trace "$TRACE" --num-requests 200 --max-input 4096 --speedup 4
      --policy dynamic --slo ttft:2000 tpot:80 --json "$tmp/a.json" --csv "$tmp/a.csv" --plot "$tmp/a.svg")
"$BIN" simulate "${args[@]}" >"$tmp/report.txt" 2>"$tmp/run.err"
rc=$?
[ "$rc" -eq 0 ] && ok || bad "run exit $rc: $(tail -5 "$tmp/run.err")"
grep -q "Successful requests:  *200" "$tmp/report.txt" && ok || bad "console report: $(head -5 "$tmp/report.txt")"
grep -q "Scheduler decisions" "$tmp/report.txt" && ok || bad "no simulation section"
head -c 5 "$tmp/a.svg" | grep -q "<svg" && grep -q "Layout" "$tmp/a.svg" && ok || bad "no SVG"
python3 - "$TRACE" "$tmp/a.json" "$tmp/a.csv" <<'EOF' && ok || bad "report check"
import csv, json, sys
trace, out, per_req = sys.argv[1:4]
rows = sorted(csv.DictReader(open(trace)), key=lambda r: r["TIMESTAMP"])[:200]
want_in = sum(max(1, min(4096, int(r["ContextTokens"]))) for r in rows)
want_out = sum(max(1, int(r["GeneratedTokens"])) for r in rows)
rep = json.load(open(out))
problems = []
def expect(key, want):
    if rep.get(key) != want:
        problems.append(f"{key}: {rep.get(key)!r}, want {want!r}")
expect("completed", 200)
expect("failed", 0)
expect("total_input_tokens", want_in)
expect("total_output_tokens", want_out)
expect("output_mismatches", 0)
expect("policy", "dynamic")
expect("devices", 4)
for k in ("mean_ttft_ms", "p99_tpot_ms", "p99_itl_ms", "request_goodput", "transformations", "layout_timeline",
          "scheduler_decisions", "wall_s"):
    if k not in rep:
        problems.append(f"missing {k}")
if rep.get("scheduler_decisions", {}).get("place:least_loaded", 0) + \
   rep.get("scheduler_decisions", {}).get("place:overflow", 0) + \
   rep.get("scheduler_decisions", {}).get("place:long_to_merged", 0) < 200:
    problems.append(f"placements: {rep.get('scheduler_decisions')}")
lines = list(csv.reader(open(per_req)))
if len(lines) != 201:
    problems.append(f"csv rows: {len(lines) - 1}")
if not (0 < rep["mean_ttft_ms"] < rep["mean_e2el_ms"]):
    problems.append("ttft/e2el out of order")
for p in problems:
    print("  " + p, file=sys.stderr)
sys.exit(1 if problems else 0)
EOF

# Determinism: the same command, the same report (but the wall time).
"$BIN" simulate "${args[@]/$tmp\/a/$tmp/b}" >/dev/null 2>&1
python3 - "$tmp/a.json" "$tmp/b.json" <<'EOF' && ok || bad "two runs differ"
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
for x in (a, b):
    x.pop("wall_s", None)
sys.exit(0 if a == b else 1)
EOF

# --sweep: every static layout of 4 devices for llama3-8b (4; 2,2; 2,1,1; 1,1,1,1) and dynamic.
"$BIN" simulate --cluster 4xH100 --model llama3-8b --trace "$TRACE" --num-requests 100 --sweep \
    --slo ttft:1000 tpot:50 --json "$tmp/sweep.json" >"$tmp/sweep.txt" 2>&1
rc=$?
[ "$rc" -eq 0 ] && ok || bad "sweep exit $rc: $(tail -3 "$tmp/sweep.txt")"
for row in "^4 " "^2,2 " "^2,1,1 " "^1,1,1,1 " "^dynamic " "dynamic / best static"; do
    grep -q "$row" "$tmp/sweep.txt" && ok || bad "sweep: no row '$row': $(cat "$tmp/sweep.txt")"
done
python3 -c "import json,sys; r=json.load(open(sys.argv[1]))['runs']; sys.exit(0 if len(r)==5 and all(x['completed']==100 for x in r) else 1)" \
    "$tmp/sweep.json" && ok || bad "sweep JSON"

# --save-cost writes a calibration file that --cost reads back to the same report.
"$BIN" simulate "${RUN[@]}" --save-cost "$tmp/cost.json" --json "$tmp/c1.json" >/dev/null 2>&1 \
    && "$BIN" simulate --cluster 4xH100 --cost "$tmp/cost.json" --trace "$TRACE" --num-requests 20 \
        --json "$tmp/c2.json" >/dev/null 2>&1 \
    && python3 -c "
import json,sys
a,b=(json.load(open(p)) for p in sys.argv[1:3])
sys.exit(0 if a['mean_ttft_ms']==b['mean_ttft_ms'] and a['mean_tpot_ms']==b['mean_tpot_ms'] else 1)" \
        "$tmp/c1.json" "$tmp/c2.json" && ok || bad "--save-cost / --cost round trip"

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
