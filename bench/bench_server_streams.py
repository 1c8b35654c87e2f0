#!/usr/bin/env python3
"""Serving speed with N concurrent streams: `proteus serve` against llama.cpp's
`llama-server -np 32` (continuous batching), one after the other in one run,
the same load sent to both by `proteus bench`.

For each prompt length L (--prompts) a fresh server of each engine is started
with room for 32 sequences of L + output tokens; then for each stream count N
(--streams) a trace of N x --waves requests, all arriving at once, each with
an L-token prompt and --output generated tokens (ignore_eos), is replayed with
--max-concurrency N: N requests in flight at all times until the trace ends.
Prompts are random token ids, different in every request (no shared prefix).
Reported per (L, N): output tokens/s over the run, mean TTFT and mean TPOT
(vLLM's definitions, from `proteus bench`), and the ratios Proteus / llama.cpp
(for TTFT and TPOT: llama.cpp / Proteus, so above 1 is Proteus faster).

    python3 bench/bench_server_streams.py --llama-server PATH [--proteus build/proteus]
        [-m MODEL] [--threads 2] [--streams 1,8,32] [--prompts 256,4096] [--output 64]
        [--waves 2] [--out DIR]

llama-server: built from the llama.cpp source that the llama-cpp-python sdist
vendors (bench/README.md, "Long-context speed on CPU" gives the cmake line).
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

DEFAULT_MODEL = os.path.join(os.path.expanduser("~"), ".cache", "proteus", "models",
                             "SmolLM2-135M-Instruct.Q4_1.gguf")
SLOTS = 32


def start(cmd, log_path, url):
    log = open(log_path, "w")
    srv = subprocess.Popen(cmd, stderr=log, stdout=log)
    for _ in range(1500):
        try:
            urllib.request.urlopen(url + "/health", timeout=1).read()
            return srv, log
        except OSError:
            if srv.poll() is not None:
                sys.exit(f"{cmd[0]} exited; see {log_path}")
            time.sleep(0.2)
    sys.exit(f"{cmd[0]} did not become healthy; see {log_path}")


def stop(srv, log):
    srv.send_signal(signal.SIGINT)
    try:
        srv.wait(timeout=30)
    except subprocess.TimeoutExpired:
        srv.kill()
        srv.wait()
    log.close()


def server_cmd(a, engine, L, port):
    ctx = L + a.output + 64
    if engine == "llama.cpp":
        return [a.llama_server, "-m", a.model, "--port", str(port), "-t", str(a.threads), "-tb", str(a.threads),
                "-np", str(SLOTS), "-c", str(SLOTS * ctx)]
    # KV room for every slot at full length: F16 pages, SmolLM2's 30 layers x 3 KV heads x 64 dims.
    kv_mb = SLOTS * ctx * 30 * 3 * 64 * 2 * 2 * 12 // 10 // (1 << 20) + 64
    return [a.proteus, "serve", "-m", a.model, "--port", str(port), "--threads", str(a.threads),
            "--max-running", str(SLOTS), "--max-model-len", str(ctx), "--kv-memory-mb", str(kv_mb)] + a.proteus_args.split()


def run_level(a, url, engine, L, n, out):
    trace = os.path.join(out, f"trace-{L}-{n}.jsonl")
    with open(trace, "w") as f:
        for _ in range(n * a.waves):
            f.write(json.dumps({"t": 0, "input": L, "output": a.output}) + "\n")
    js = os.path.join(out, f"bench-{engine}-{L}-{n}.json")
    cmd = [a.proteus, "bench", "--base-url", url, "--trace", trace, "--max-concurrency", str(n), "--warmup", "1",
           "--seed", str(L * 1000 + n), "--quiet", "--json", js]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.load(open(js))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--llama-server", required=True)
    p.add_argument("--proteus", default="build/proteus")
    p.add_argument("-m", "--model", default=DEFAULT_MODEL)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--streams", default="1,8,32")
    p.add_argument("--prompts", default="256,4096")
    p.add_argument("--output", type=int, default=64)
    p.add_argument("--waves", type=int, default=2, help="requests per stream")
    p.add_argument("--port", type=int, default=18533)
    p.add_argument("--engines", default="proteus,llama.cpp")
    p.add_argument("--proteus-args", default="", help="extra arguments of proteus serve, e.g. \"--prefill-chunk 128\"")
    p.add_argument("--out", default="/tmp/proteus-streams-bench")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    streams = [int(x) for x in a.streams.split(",")]
    prompts = [int(x) for x in a.prompts.split(",")]
    res = {}
    for L in prompts:
        for engine in a.engines.split(","):
            url = f"http://127.0.0.1:{a.port}"
            srv, log = start(server_cmd(a, engine, L, a.port), os.path.join(a.out, f"serve-{engine}-{L}.log"), url)
            try:
                for n in streams:
                    r = run_level(a, url, engine, L, n, a.out)
                    res[(engine, L, n)] = r
                    print(f"# {engine} prompt {L} streams {n}: {r['output_throughput']:.1f} out tok/s, "
                          f"TTFT {r['mean_ttft_ms']:.0f} ms, TPOT {r['mean_tpot_ms']:.1f} ms, "
                          f"{r['completed']} completed, {r['failed']} failed", flush=True)
            finally:
                stop(srv, log)
    print(f"\n{os.path.basename(a.model)}, {a.threads} threads, {a.output} output tokens, "
          f"{a.waves} requests per stream\n")
    print("| prompt | streams | llama.cpp tok/s | Proteus tok/s | ratio | llama.cpp TTFT ms | Proteus TTFT ms | ratio "
          "| llama.cpp TPOT ms | Proteus TPOT ms | ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for L in prompts:
        for n in streams:
            if ("llama.cpp", L, n) not in res or ("proteus", L, n) not in res:
                continue
            l, q = res[("llama.cpp", L, n)], res[("proteus", L, n)]
            print(f"| {L} | {n} | {l['output_throughput']:.1f} | {q['output_throughput']:.1f} | "
                  f"{q['output_throughput'] / l['output_throughput']:.2f} | {l['mean_ttft_ms']:.0f} | "
                  f"{q['mean_ttft_ms']:.0f} | {l['mean_ttft_ms'] / q['mean_ttft_ms']:.2f} | "
                  f"{l['mean_tpot_ms']:.1f} | {q['mean_tpot_ms']:.1f} | {l['mean_tpot_ms'] / q['mean_tpot_ms']:.2f} |")
    json.dump({f"{k[0]}@{k[1]}@{k[2]}": v for k, v in res.items()}, open(os.path.join(a.out, "result.json"), "w"),
              indent=1)


if __name__ == "__main__":
    main()
