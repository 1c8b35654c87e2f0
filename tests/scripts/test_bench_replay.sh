#!/usr/bin/env bash
# proteus bench end to end: replay 12 rows of the Azure conversation trace
# against `proteus serve` and check the JSON report against totals computed
# here, independently, from the same CSV rows with the same clipping.
set -u
BIN="${PROTEUS_BINARY_DIR:?}/proteus"
MODEL="${PROTEUS_DEFAULT_MODEL:-$HOME/.cache/proteus/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
TRACE="${PROTEUS_SOURCE_DIR:?}/../shared/traces/azure2023_conv.csv"
[ -f "$MODEL" ] || { echo "SKIP: default model absent ($MODEL)"; exit 77; }
[ -f "$TRACE" ] || { echo "SKIP: trace absent ($TRACE)"; exit 77; }

tmp=$(mktemp -d)
srv_pid=
cleanup() {
    [ -n "$srv_pid" ] && kill -TERM "$srv_pid" 2>/dev/null && wait "$srv_pid" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT
pass=0 fail=0
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*" >&2; }

# A port that was free a moment ago.
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$BIN" serve -m "$MODEL" --port "$PORT" --max-running 8 >"$tmp/serve.log" 2>&1 &
srv_pid=$!
up=0
for _ in $(seq 1 150); do
    if curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; then up=1; break; fi
    kill -0 "$srv_pid" 2>/dev/null || break
    sleep 0.2
done
[ "$up" = 1 ] || { echo "FAIL: server did not come up: $(tail -5 "$tmp/serve.log")" >&2; exit 1; }

# Usage errors exit 2; an unreachable server exits 1.
"$BIN" bench --trace "$TRACE" --rate nope >/dev/null 2>&1; [ $? -eq 2 ] && ok || bad "bad --rate did not exit 2"
"$BIN" bench >/dev/null 2>&1; [ $? -eq 2 ] && ok || bad "missing --trace did not exit 2"
"$BIN" bench --trace "$TRACE" --base-url "http://127.0.0.1:1" --num-requests 1 >/dev/null 2>"$tmp/unreach"
[ $? -eq 1 ] && grep -q "refused" "$tmp/unreach" && ok || bad "unreachable server: $(cat "$tmp/unreach")"

timeout 400 "$BIN" bench --base-url "http://127.0.0.1:$PORT" --trace "$TRACE" --num-requests 12 --max-input 128 \
    --max-output 16 --speedup 20 --json "$tmp/out.json" --csv "$tmp/out.csv" --plot "$tmp/out.svg" \
    --goodput ttft:600000 e2el:600000 --quiet >"$tmp/report.txt" 2>"$tmp/bench.err"
rc=$?
[ "$rc" -eq 0 ] && ok || bad "bench exit $rc: $(tail -5 "$tmp/bench.err")"
grep -q "Successful requests" "$tmp/report.txt" && ok || bad "no console report"

python3 - "$TRACE" "$tmp/out.json" "$tmp/out.csv" <<'EOF' && ok || bad "report check"
import csv, json, sys
trace, out, per_req = sys.argv[1:4]
with open(trace) as f:
    rows = list(csv.DictReader(f))
rows.sort(key=lambda r: r["TIMESTAMP"])  # the loader orders by arrival (stable)
rows = rows[:12]
clip = lambda n, cap: max(1, min(cap, int(n)))
want_in = sum(clip(r["ContextTokens"], 128) for r in rows)
want_out = sum(clip(r["GeneratedTokens"], 16) for r in rows)
rep = json.load(open(out))
problems = []
def expect(key, want):
    if rep.get(key) != want:
        problems.append(f"{key} = {rep.get(key)}, want {want}")
expect("completed", 12)
expect("failed", 0)
expect("total_input_tokens", want_in)
expect("total_output_tokens", want_out)
# SLOs of ten minutes hold for every request: goodput is the request throughput.
if rep.get("request_goodput") is None or abs(rep["request_goodput"] - rep["request_throughput"]) > 1e-9:
    problems.append(f"request_goodput = {rep.get('request_goodput')}, want {rep.get('request_throughput')}")
mism = rep.get("output_mismatches")
if mism != 0:
    problems.append(f"output mismatches = {mism}")
with open(per_req) as f:
    n_rows = sum(1 for _ in csv.DictReader(f))
if n_rows != 12:
    problems.append(f"{n_rows} rows in the CSV, want 12")
for p in problems:
    print("report:", p, file=sys.stderr)
sys.exit(1 if problems else 0)
EOF

head -c 4 "$tmp/out.svg" | grep -q "<svg" && ok || bad "no SVG plot written"

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
