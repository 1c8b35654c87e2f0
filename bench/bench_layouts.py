#!/usr/bin/env python3
"""The trade-off Proteus rests on, measured: the same CPU virtual devices as
several TP1 instances or as one TP-N instance, with the same trace window,
side by side in one run.

For each layout (default "1,1" and "2" over `cpu:2`):
  1. start `proteus serve --devices cpu:N --threads N --layout L
     --device-memory-mb M` (one thread per device, so N devices use N cores);
  2. find the longest prompt the layout can serve: a binary search over the
     prompt length with max_tokens 1 (a prompt that no instance's KV pages
     can hold fails with "the KV cache cannot hold this request");
  3. replay the trace window with `proteus bench` (the same window, the same
     seed, the same clipping for every layout) and read its JSON;
  4. stop the server.
Then one table: throughput, TTFT, TPOT, E2E latency and the longest prompt.

Usage:
    python3 bench/bench_layouts.py [--devices cpu:2] [--layouts 1,1:2] [-m MODEL]
        [--trace ../shared/traces/azure2023_conv.csv] [--num-requests 24]
        [--max-input 1024] [--max-output 64] [--speedup 1] [--memory-mb 256]
        [--out results.json]
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DEFAULT_MODEL = os.path.join(os.path.expanduser("~"), ".cache", "proteus", "models",
                             "SmolLM2-135M-Instruct.Q4_1.gguf")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(port, path, body=None, timeout=600):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def start(args, layout, port, log):
    n_devices = int(args.devices.split(":")[1])
    cmd = [args.proteus, "serve", "-m", args.model, "--port", str(port), "--devices", args.devices,
           "--threads", str(n_devices), "--layout", layout, "--device-memory-mb", str(args.memory_mb),
           "--max-model-len", str(args.max_model_len)]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"proteus serve exited with {proc.returncode}: see {log.name}")
        try:
            if http(port, "/health", timeout=2)[0] == 200:
                return proc
        except OSError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("proteus serve did not become ready")


def longest_prompt(port, hi):
    """Largest prompt length (tokens) that completes with max_tokens 1."""
    def ok(n):
        code, body = http(port, "/v1/completions",
                          {"prompt": [[17] * n], "max_tokens": 1, "temperature": 0})
        return code == 200 and body.get("choices", [{}])[0].get("finish_reason") != "error"
    lo = 16
    if not ok(lo):
        return 0
    while lo < hi:  # invariant: ok(lo); the answer is in [lo, hi]
        mid = (lo + hi + 1) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def run_bench(args, port, out_json):
    cmd = [args.proteus, "bench", "--trace", args.trace, "--base-url", f"http://127.0.0.1:{port}",
           "--num-requests", str(args.num_requests), "--max-input", str(args.max_input),
           "--max-output", str(args.max_output), "--speedup", str(args.speedup), "--seed", "1",
           "--json", out_json]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    with open(out_json) as f:
        return json.load(f)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", default=DEFAULT_MODEL)
    ap.add_argument("--proteus", default=os.path.join(REPO, "build", "proteus"))
    ap.add_argument("--devices", default="cpu:2")
    ap.add_argument("--layouts", default="1,1:2", help="layouts separated by ':'")
    ap.add_argument("--trace", default=os.path.join(REPO, "..", "shared", "traces", "azure2023_conv.csv"))
    ap.add_argument("--num-requests", type=int, default=24)
    ap.add_argument("--max-input", type=int, default=1024)
    ap.add_argument("--max-output", type=int, default=64)
    ap.add_argument("--speedup", type=float, default=1.0)
    ap.add_argument("--memory-mb", type=int, default=256, help="budget of each device")
    ap.add_argument("--max-model-len", type=int, default=8192)
    ap.add_argument("--longest", choices=["probe", "models"], default="probe",
                    help="probe: binary search with real requests; models: the server's max_model_len "
                         "(GET /v1/models, which follows what the KV pages hold) minus the one generated token")
    ap.add_argument("--out")
    args = ap.parse_args()

    results = []
    tmp = tempfile.mkdtemp(prefix="bench_layouts_")
    for layout in args.layouts.split(":"):
        port = free_port()
        with open(os.path.join(tmp, f"serve_{layout}.log"), "w") as log:
            proc = start(args, layout, port, log)
            try:
                _, lay = http(port, "/v1/layout")
                if args.longest == "probe":
                    longest = longest_prompt(port, args.max_model_len - 1)
                else:
                    longest = http(port, "/v1/models")[1]["data"][0]["max_model_len"] - 1
                rep = run_bench(args, port, os.path.join(tmp, f"bench_{layout}.json"))
            finally:
                proc.terminate()
                proc.wait(timeout=60)
        results.append({"layout": layout, "longest_prompt": longest, "bench": rep, "v1_layout": lay})
        print(f"layout [{layout}] done: longest prompt {longest}", file=sys.stderr)

    keys = [("output_throughput", "out tok/s", 1), ("request_throughput", "req/s", 1),
            ("mean_ttft_ms", "TTFT mean ms", 1), ("p99_ttft_ms", "TTFT p99 ms", 1),
            ("mean_tpot_ms", "TPOT mean ms", 1), ("mean_e2el_ms", "E2E mean ms", 1)]
    print(f"\n{args.devices}, {args.memory_mb} MiB per device, {os.path.basename(args.model)}, "
          f"{args.num_requests} requests of {os.path.basename(args.trace)} "
          f"(input <= {args.max_input}, output <= {args.max_output}, speedup {args.speedup})\n")
    print("| layout | " + " | ".join(k[1] for k in keys) + " | longest prompt |")
    print("|---" * (len(keys) + 2) + "|")
    for r in results:
        vals = " | ".join(f"{r['bench'].get(k[0], float('nan')):.2f}" for k in keys)
        print(f"| [{r['layout']}] | {vals} | {r['longest_prompt']} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
