#!/usr/bin/env python3
"""Prefix caching, measured: one trace window replayed by `proteus bench`
against `proteus serve` with --prefix-caching=false and then =true (same
model, same settings, one run each, back to back), side by side:

  requests/s, output tokens/s, mean and p99 TTFT, prompt tokens, prompt
  tokens the server computed (prompt - hits), the hit rate it measured
  (proteus_prefix_cache_hits_total / proteus_prefix_cache_queries_total),
  and the hit rate the trace's hash_ids allow.

The bound: `proteus bench` builds each 512-token block of a prompt from its
hash id (src/bench/replay.c), so two prompts share their tokens up to the
first block whose hash ids differ (Mooncake's ids are chained: an equal id
means an equal prefix). A request can take a page of 16 tokens (the page
size) when an earlier request's prompt held that whole page: the bound
counts, for every request in arrival order, its leading pages that some
earlier prompt covered (never its last token, which is always computed:
at most (n - 1) // 16 pages), as an unbounded cache that never evicts would
serve them. A live server may get less: a request that starts while the
one it shares with is still prefilling finds only the pages already full
(Mooncake sends several requests at the same millisecond).

With --llama-server PATH, the same window against llama.cpp's server too
(`-np 4 -t THREADS`, its prompt cache on: cache_prompt is its default, and
its host-memory cache keeps prompts of finished requests); its hits are its
llamacpp:prompt_tokens_cached_total, its computed tokens
llamacpp:prompt_tokens_total.

    python3 bench/bench_prefix_cache.py [--trace ../shared/traces/mooncake_conversation.jsonl]
        [--num-requests 80] [--input-scale 0.1] [--output-scale 0.1] [--speedup 1] [--out DIR]
        [--llama-server PATH/llama-server]
"""

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

DEFAULT_MODEL = os.path.join(os.path.expanduser("~"), ".cache", "proteus", "models",
                             "SmolLM2-135M-Instruct.Q4_1.gguf")
BLOCK = 512  # tokens per hash id (PT_PROMPT_BLOCK)


def trace_hash_ids(path, n):
    """The hash_ids of the first n rows (the window bench replays from t=0)."""
    rows = []
    with open(path) as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line).get("hash_ids") or [])
            if len(rows) == n:
                break
    return rows


def bound_hits(hash_ids, lengths, page):
    """Tokens an unbounded cache could serve, per request (see above)."""
    seen, hits = set(), []
    for i, (ids, n) in enumerate(zip(hash_ids, lengths)):
        full = n // page  # pages this prompt fills
        usable = (n - 1) // page  # pages it may take (one token left)
        keys = []
        for p in range(full):
            b = p * page // BLOCK
            # Past the hash ids the block is the request's own (random).
            keys.append(tuple(ids[:b + 1]) + (p % (BLOCK // page),) if b < len(ids) else ("own", i, p))
        k = 0
        while k < usable and keys[k] in seen:
            k += 1
        hits.append(k * page)
        seen.update(keys)
    return hits


def metric(text, name):
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def run_one(a, cache, out):
    port = a.port
    log = open(os.path.join(out, f"serve-{cache}.log"), "w")
    if cache == "llama.cpp":
        cmd = [a.llama_server, "-m", a.model, "--port", str(port), "-t", str(a.threads), "-np", "4", "-c",
               str(4 * 8192), "--metrics"]
    else:
        cmd = [a.proteus, "serve", "-m", a.model, "--port", str(port), "--threads", str(a.threads),
               f"--prefix-caching={cache}", "--kv-memory-mb", str(a.kv_memory_mb), "--max-running", str(a.max_running)]
    srv = subprocess.Popen(cmd, stderr=log, stdout=log)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                urllib.request.urlopen(url + "/health", timeout=1).read()
                break
            except OSError:
                if srv.poll() is not None:
                    sys.exit(f"proteus serve exited; see {log.name}")
                time.sleep(0.2)
        js, cs = os.path.join(out, f"bench-{cache}.json"), os.path.join(out, f"bench-{cache}.csv")
        cmd = [a.proteus, "bench", "--base-url", url, "--trace", a.trace, "--num-requests", str(a.num_requests),
               "--input-scale", str(a.input_scale), "--output-scale", str(a.output_scale), "--speedup",
               str(a.speedup), "--quiet", "--json", js, "--csv", cs]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        metrics = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
    finally:
        srv.send_signal(signal.SIGINT)
        srv.wait()
        log.close()
    rep = json.load(open(js))
    with open(cs) as f:
        lengths = [int(r["input_tokens"]) for r in csv.DictReader(f)]
    return rep, lengths, metrics


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--proteus", default="build/proteus")
    p.add_argument("-m", "--model", default=DEFAULT_MODEL)
    p.add_argument("--trace", default="../shared/traces/mooncake_conversation.jsonl")
    p.add_argument("--num-requests", type=int, default=80)
    p.add_argument("--input-scale", type=float, default=0.1)
    p.add_argument("--output-scale", type=float, default=0.1)
    p.add_argument("--speedup", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--kv-memory-mb", type=int, default=1024)
    p.add_argument("--max-running", type=int, default=32)
    p.add_argument("--page-size", type=int, default=16)
    p.add_argument("--port", type=int, default=18433)
    p.add_argument("--out", default="/tmp/proteus-prefix-bench")
    p.add_argument("--llama-server", help="also run llama.cpp's server (a binary built from the vendored source)")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    rows = {}
    modes = ("false", "true") + (("llama.cpp",) if a.llama_server else ())
    for cache in modes:
        rows[cache] = run_one(a, cache, a.out)
    lengths = rows["true"][1]
    bound = bound_hits(trace_hash_ids(a.trace, len(lengths)), lengths, a.page_size)
    prompt = sum(lengths)
    print(f"{len(lengths)} requests of {a.trace} (input x {a.input_scale}, output x {a.output_scale}, "
          f"speedup {a.speedup}); hit rate the hash_ids allow: {sum(bound) / prompt * 100:.1f}%")
    print(f"{'cache':9s} {'req/s':>7s} {'out tok/s':>9s} {'TTFT ms':>8s} {'p99 TTFT':>9s} {'prompt':>8s} "
          f"{'computed':>8s} {'hit rate':>8s}")
    result = {"bound_hit_rate": sum(bound) / prompt, "runs": {}}
    for cache in modes:
        rep, _, m = rows[cache]
        if cache == "llama.cpp":
            hits = metric(m, "llamacpp:prompt_tokens_cached_total")
            queries = hits + metric(m, "llamacpp:prompt_tokens_total")
        else:
            hits = metric(m, "proteus_prefix_cache_hits_total")
            queries = metric(m, "proteus_prefix_cache_queries_total")
        computed = prompt - hits
        rate = hits / queries if queries else 0.0
        name = {"true": "on", "false": "off"}.get(cache, cache)
        print(f"{name:9s} {rep['request_throughput']:7.3f} "
              f"{rep['output_throughput']:9.1f} {rep['mean_ttft_ms']:8.1f} {rep['p99_ttft_ms']:9.1f} {prompt:8d} "
              f"{computed:8.0f} {rate * 100:7.1f}%")
        result["runs"][cache] = {"report": rep, "hits": hits, "queries": queries, "computed": computed}
    json.dump(result, open(os.path.join(a.out, "result.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
