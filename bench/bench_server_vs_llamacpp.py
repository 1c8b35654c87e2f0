#!/usr/bin/env python3
"""Server benchmark: Proteus `serve` vs llama-cpp-python's OpenAI server.

Measures aggregate generation throughput -- output tokens / wall seconds of the
whole run -- with 1, 8 and 32 concurrent streaming clients, for both servers in
one invocation:

  1. start `proteus serve -m MODEL -t T --max-running MAXC`, warm it up, run
     each concurrency level, stop it;
  2. start `python3 -m llama_cpp.server --model MODEL --n_threads T
     --n_threads_batch T --n_ctx C --interrupt_requests False`, warm it up,
     run the same levels, stop it.
  (repeated for each thread count in --threads)

Every client sends one POST /v1/completions with stream=true, temperature 0,
max_tokens 64 and the same ~64-token prompt, made distinct per client by a
"Request #i" tag, i unique over the whole run (at the start by default, see
--tag-at). Generation is forced
to the full max_tokens:
  * Proteus:   "ignore_eos": true (and stream_options.include_usage, so the
               token count comes from the server's usage chunk);
  * llama.cpp: llama-cpp-python's server has no ignore_eos (Proteus rejects
               unknown fields; llama-cpp-python ignores them) but honours
               "min_tokens" (a Python logits processor that masks EOS); it is
               sent unless --no-llama-min-tokens. Its stream carries no usage,
               so tokens = max_tokens when finish_reason == "length", else the
               number of chunks that carried text.

Per level: total output tokens, wall seconds (first request sent -> last
stream closed), tokens/s, mean TTFT (request sent -> first chunk carrying
text), plus the CPU seconds used by the server process and by this client
during the level. The ratio proteus/llama.cpp of tokens/s is printed per level.

The client is a single thread running asyncio over raw sockets (hand-written
HTTP/1.1, "Connection: close", chunked decoding, SSE "data:" lines): no thread
per client, no HTTP library. It still runs on the same cores as the server;
its CPU use is reported per level so it can be judged.

Usage:
    python3 bench/bench_server_vs_llamacpp.py [--threads 2] [--concurrency 1,8,32]
        [-m MODEL] [--proteus build/proteus] [--reps 1] [--out results.json]
        [--engines proteus,llama.cpp]
"""

import argparse
import asyncio
import json
import os
import platform
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

DEFAULT_MODEL = os.path.join(os.path.expanduser("~"), ".cache", "proteus", "models",
                             "SmolLM2-135M-Instruct.Q4_1.gguf")

# ~60 tokens of prose (SmolLM2 tokenizer) that the model continues as prose; with
# the per-client tag the prompt is ~64 tokens (the exact count, from Proteus's
# usage chunk, is recorded in the results).
PROMPT_BODY = (
    "The old harbor town woke slowly on winter mornings. Before the sun cleared "
    "the hills, the fishermen were already down at the docks, coiling ropes and "
    "checking the nets they had mended the night before. The bakery on the corner "
    "opened its shutters at six, and the smell of fresh bread"
)

CLK_TCK = os.sysconf("SC_CLK_TCK")


def make_prompt(i, tag_at):
    tag = "Request #%d." % i
    return (tag + " " + PROMPT_BODY) if tag_at == "start" else (PROMPT_BODY + " " + tag)


def proc_cpu_s(pid):
    """utime+stime of a process and its threads, seconds (Linux /proc)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except OSError:
        return float("nan")


def self_cpu_s():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


# ---------------------------------------------------------------- client ----

async def stream_completion(port, body):
    """POST /v1/completions with a streaming body; returns a per-request record."""
    rec = {"ok": False, "ttft_s": None, "text_chunks": 0, "usage": None,
           "finish_reason": None, "error": None, "text": ""}
    payload = json.dumps(body).encode()
    req = (b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
           b"Content-Type: application/json\r\nAccept: text/event-stream\r\n"
           b"Connection: close\r\nContent-Length: %d\r\n\r\n" % (port, len(payload))) + payload
    t0 = time.perf_counter()
    rec["t_send"] = t0
    writer = None
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(req)
        await writer.drain()
        status = await reader.readline()
        code = int(status.split()[1])
        chunked = False
        while True:
            h = await reader.readline()
            if h in (b"\r\n", b"\n", b""):
                break
            k, _, v = h.decode("latin-1").partition(":")
            if k.strip().lower() == "transfer-encoding" and "chunked" in v.lower():
                chunked = True
        if code != 200:
            rest = await reader.read()
            rec["error"] = "HTTP %d: %s" % (code, rest[:300].decode("utf-8", "replace"))
            return rec

        async def pieces():
            if chunked:
                while True:
                    line = await reader.readline()
                    if not line:
                        return
                    n = int(line.split(b";")[0].strip() or b"0", 16)
                    if n == 0:
                        return
                    data = await reader.readexactly(n)
                    await reader.readline()  # CRLF after the chunk
                    yield data
            else:
                while True:
                    data = await reader.read(65536)
                    if not data:
                        return
                    yield data

        buf = b""
        done = False
        texts = []
        async for data in pieces():
            buf += data
            while True:
                nl = buf.find(b"\n")
                if nl < 0:
                    break
                line, buf = buf[:nl].rstrip(b"\r"), buf[nl + 1:]
                if not line.startswith(b"data:"):
                    continue  # blank separator, ": ping" comment, event:, id:
                d = line[5:].strip()
                if d == b"[DONE]":
                    done = True
                    continue
                ev = json.loads(d)
                if "error" in ev:
                    rec["error"] = str(ev["error"])[:300]
                    continue
                if ev.get("usage"):
                    rec["usage"] = ev["usage"]
                for ch in ev.get("choices") or ():
                    t = ch.get("text")
                    if t:
                        if rec["ttft_s"] is None:
                            rec["ttft_s"] = time.perf_counter() - t0
                        rec["text_chunks"] += 1
                        texts.append(t)
                    if ch.get("finish_reason"):
                        rec["finish_reason"] = ch["finish_reason"]
        rec["text"] = "".join(texts)
        if not done and rec["error"] is None:
            rec["error"] = "stream ended without [DONE]"
        elif rec["finish_reason"] is None and rec["error"] is None:
            # llama-cpp-python with --interrupt_requests True ends a stream this way
            # (a [DONE] without a finish_reason) when another request arrives.
            rec["error"] = "stream cut off: [DONE] without a finish_reason"
        rec["ok"] = rec["error"] is None
    except Exception as e:  # noqa: BLE001 - recorded, reported
        rec["error"] = "%s: %s" % (type(e).__name__, e)
    finally:
        rec["t_end"] = time.perf_counter()
        if writer is not None:
            writer.close()
    return rec


def output_tokens(rec, max_tokens):
    """Completion tokens of one request: usage if streamed, else inferred."""
    if rec["usage"] and "completion_tokens" in rec["usage"]:
        return int(rec["usage"]["completion_tokens"])
    if rec["finish_reason"] == "length":
        return max_tokens  # finish_reason "length" means exactly max_tokens were generated
    return rec["text_chunks"]


def request_body(engine, i, args, max_tokens):
    body = {"model": args.served_name if engine == "proteus" else args.model,
            "prompt": make_prompt(i, args.tag_at), "max_tokens": max_tokens,
            "temperature": 0, "stream": True}
    if engine == "proteus":
        body["ignore_eos"] = True
        body["stream_options"] = {"include_usage": True}
    elif args.llama_min_tokens:
        body["min_tokens"] = max_tokens
    return body


_next_tag = [0]


def next_tags(n):
    """Tags never reused within a run (levels and reps included): llama-cpp-python
    would otherwise reuse the KV cache of an identical earlier prompt."""
    first = _next_tag[0]
    _next_tag[0] += n
    return range(first, first + n)


async def run_level_async(engine, port, n, args):
    bodies = [request_body(engine, i, args, args.max_tokens) for i in next_tags(n)]
    t0 = time.perf_counter()
    recs = await asyncio.gather(*(stream_completion(port, b) for b in bodies))
    t1 = time.perf_counter()
    return t0, t1, recs


def run_level(engine, port, server_pid, n, args):
    cpu_srv0, cpu_cli0 = proc_cpu_s(server_pid), self_cpu_s()
    t0, t1, recs = asyncio.run(run_level_async(engine, port, n, args))
    cpu_srv1, cpu_cli1 = proc_cpu_s(server_pid), self_cpu_s()
    toks = [output_tokens(r, args.max_tokens) for r in recs]
    ttfts = [r["ttft_s"] for r in recs if r["ttft_s"] is not None]
    errors = [r["error"] for r in recs if r["error"]]
    finish = {}
    for r in recs:
        finish[str(r["finish_reason"])] = finish.get(str(r["finish_reason"]), 0) + 1
    ptoks = [r["usage"]["prompt_tokens"] for r in recs if r["usage"] and "prompt_tokens" in r["usage"]]
    wall = t1 - t0
    total = sum(toks)
    # per-request decode rate after the first token
    dec = [(output_tokens(r, args.max_tokens) - 1) / (r["t_end"] - r["t_send"] - r["ttft_s"])
           for r in recs if r["ttft_s"] is not None and output_tokens(r, args.max_tokens) > 1
           and r["t_end"] - r["t_send"] - r["ttft_s"] > 0]
    return {
        "concurrency": n,
        "requests_ok": sum(1 for r in recs if r["ok"]),
        "errors": errors[:5],
        "n_errors": len(errors),
        "finish_reasons": finish,
        "output_tokens": total,
        "text_chunks": sum(r["text_chunks"] for r in recs),
        "prompt_tokens_each": (min(ptoks), max(ptoks)) if ptoks else None,
        "wall_s": wall,
        "tok_s": total / wall if wall > 0 else float("nan"),
        "ttft_mean_s": statistics.mean(ttfts) if ttfts else None,
        "ttft_median_s": statistics.median(ttfts) if ttfts else None,
        "ttft_max_s": max(ttfts) if ttfts else None,
        "per_request_decode_tok_s_mean": statistics.mean(dec) if dec else None,
        "server_cpu_s": cpu_srv1 - cpu_srv0,
        "client_cpu_s": cpu_cli1 - cpu_cli0,
        "loadavg_after": os.getloadavg(),
        "sample_text": recs[0]["text"][:200] if recs else "",
    }


# --------------------------------------------------------------- servers ----

def wait_ready(port, path, proc, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("server exited with code %s during start-up" % proc.returncode)
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=2) as r:
                if r.status == 200:
                    return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.25)
    raise RuntimeError("server not ready on port %d after %ds" % (port, timeout))


def stop_server(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_server(engine, threads, args, log):
    port = free_port()
    if engine == "proteus":
        cmd = [args.proteus, "serve", "-m", args.model, "--port", str(port),
               "-t", str(threads), "--max-running", str(args.max_running),
               "--served-model-name", args.served_name, "--log-level", "warn"]
        ready = "/health"
    else:
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", args.model,
               "--n_threads", str(threads), "--n_threads_batch", str(threads),
               "--n_ctx", str(args.llama_n_ctx), "--port", str(port), "--host", "127.0.0.1",
               "--interrupt_requests", str(args.llama_interrupt), "--verbose", "False"]
        ready = "/v1/models"
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_ready(port, ready, proc, args.start_timeout)
    except Exception:
        stop_server(proc)
        raise
    return proc, port, cmd


def bench_engine(engine, threads, args):
    os.makedirs(args.log_dir, exist_ok=True)
    log_path = os.path.join(args.log_dir, "%s-t%d.log" % (engine.replace(".", ""), threads))
    with open(log_path, "w") as log:
        load_before = os.getloadavg()
        proc, port, cmd = start_server(engine, threads, args, log)
        try:
            # warm-up: two full-length requests, untimed
            for i in range(2):
                w = asyncio.run(stream_completion(port, request_body(engine, 10_000 + i, args, args.max_tokens)))
                if w["error"]:
                    raise RuntimeError("%s warm-up failed: %s (log: %s)" % (engine, w["error"], log_path))
            levels = []
            for n in args.concurrency:
                reps = [run_level(engine, port, proc.pid, n, args) for _ in range(args.reps)]
                best = sorted(reps, key=lambda r: r["tok_s"])[len(reps) // 2]  # median by tok/s
                best = dict(best, reps_tok_s=[r["tok_s"] for r in reps])
                levels.append(best)
                print("  %-9s t=%d c=%-3d %6d tok %7.2f s %8.1f tok/s  ttft %.3f s  srv-cpu %.1f s  cli-cpu %.2f s%s"
                      % (engine, threads, n, best["output_tokens"], best["wall_s"], best["tok_s"],
                         best["ttft_mean_s"] or float("nan"), best["server_cpu_s"], best["client_cpu_s"],
                         ("  ERRORS %d: %s" % (best["n_errors"], best["errors"][:1])) if best["n_errors"] else ""),
                      file=sys.stderr, flush=True)
        finally:
            stop_server(proc)
    return {"engine": engine, "threads": threads, "cmd": cmd, "log": log_path,
            "loadavg_before": load_before, "levels": levels}


# ------------------------------------------------------------------ main ----

def parse_list(s):
    return [int(x) for x in s.split(",") if x.strip()]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", default=DEFAULT_MODEL, help="GGUF file served by both servers")
    ap.add_argument("--proteus", default=None,
                    help="proteus binary (default: build/proteus next to bench/, or $PROTEUS_BIN)")
    ap.add_argument("--threads", default="2", help="comma list of thread counts, e.g. 1,2 (default 2)")
    ap.add_argument("--concurrency", default="1,8,32", help="comma list of client counts (default 1,8,32)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=1, help="runs per level; the median by tok/s is reported")
    ap.add_argument("--engines", default="proteus,llama.cpp")
    ap.add_argument("--max-running", type=int, default=None,
                    help="proteus --max-running (default: the largest concurrency level)")
    ap.add_argument("--llama-n-ctx", type=int, default=None,
                    help="llama.cpp --n_ctx (default: largest level x (prompt + max_tokens + 32), "
                         "rounded up to 256, at least 2048)")
    ap.add_argument("--llama-interrupt", action="store_true",
                    help="leave llama-cpp-python's --interrupt_requests at its default True (a new "
                         "request then cuts off the one streaming; only to demonstrate it)")
    ap.add_argument("--no-llama-min-tokens", dest="llama_min_tokens", action="store_false",
                    help="do not send min_tokens to llama.cpp (it may then stop early at EOS)")
    ap.add_argument("--tag-at", choices=("start", "end"), default="start",
                    help="where the per-client tag goes; 'end' leaves a ~60-token shared prefix that "
                         "llama-cpp-python reuses from the previous request's KV cache (Proteus has no "
                         "prefix cache)")
    ap.add_argument("--served-name", default="bench-model")
    ap.add_argument("--start-timeout", type=int, default=180)
    ap.add_argument("--log-dir", default="/tmp", help="server logs go here")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()

    args.threads = parse_list(args.threads)
    args.concurrency = parse_list(args.concurrency)
    args.engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    for e in args.engines:
        if e not in ("proteus", "llama.cpp"):
            ap.error("unknown engine %r" % e)
    args.model = os.path.expanduser(args.model)
    if not os.path.exists(args.model):
        ap.error("model not found: %s" % args.model)
    if args.proteus is None:
        args.proteus = os.environ.get("PROTEUS_BIN") or os.path.join(
            os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "build", "proteus")
    if "proteus" in args.engines and not os.access(args.proteus, os.X_OK):
        ap.error("proteus binary not found: %s (build it, or pass --proteus)" % args.proteus)
    maxc = max(args.concurrency)
    if args.max_running is None:
        args.max_running = maxc
    if args.llama_n_ctx is None:
        need = maxc * (72 + args.max_tokens + 32)
        args.llama_n_ctx = max(2048, (need + 255) // 256 * 256)
    args.llama_interrupt = bool(args.llama_interrupt)

    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "host": platform.node(), "cpu": platform.processor() or platform.machine(),
        "ncpu": os.cpu_count(), "python": sys.version.split()[0],
        "model": args.model, "max_tokens": args.max_tokens, "concurrency": args.concurrency,
        "threads": args.threads, "reps": args.reps, "tag_at": args.tag_at,
        "llama_n_ctx": args.llama_n_ctx, "llama_min_tokens": args.llama_min_tokens,
        "llama_interrupt_requests": args.llama_interrupt, "proteus_max_running": args.max_running,
        "loadavg_start": os.getloadavg(), "proteus_bin": args.proteus,
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    meta["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import llama_cpp
        meta["llama_cpp_python"] = llama_cpp.__version__
    except Exception:  # noqa: BLE001
        meta["llama_cpp_python"] = None
    try:
        meta["repo_head"] = subprocess.run(
            ["git", "-C", os.path.dirname(os.path.abspath(__file__)), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True).stdout.strip()
    except OSError:
        meta["repo_head"] = None
    print("load average at start: %.2f %.2f %.2f" % meta["loadavg_start"], file=sys.stderr)

    runs = []
    for t in args.threads:
        for e in args.engines:
            runs.append(bench_engine(e, t, args))
    meta["loadavg_end"] = os.getloadavg()

    # table
    print()
    print("| threads | clients | engine | out tokens | wall s | tok/s | mean TTFT s | srv CPU s | client CPU s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        for L in r["levels"]:
            print("| %d | %d | %s | %d | %.2f | %.1f | %s | %.1f | %.2f |" % (
                r["threads"], L["concurrency"], r["engine"], L["output_tokens"], L["wall_s"], L["tok_s"],
                "%.3f" % L["ttft_mean_s"] if L["ttft_mean_s"] is not None else "-",
                L["server_cpu_s"], L["client_cpu_s"]))
    ratios = []
    by = {(r["engine"], r["threads"], L["concurrency"]): L for r in runs for L in r["levels"]}
    for t in args.threads:
        for n in args.concurrency:
            p, l = by.get(("proteus", t, n)), by.get(("llama.cpp", t, n))
            if p and l and l["tok_s"] > 0:
                ratios.append({"threads": t, "concurrency": n, "tok_s_ratio": p["tok_s"] / l["tok_s"],
                               "ttft_ratio": (p["ttft_mean_s"] / l["ttft_mean_s"])
                               if p["ttft_mean_s"] and l["ttft_mean_s"] else None})
    if ratios:
        print()
        print("| threads | clients | tok/s proteus/llama.cpp | mean TTFT proteus/llama.cpp |")
        print("|---|---|---|---|")
        for q in ratios:
            print("| %d | %d | %.2f | %s |" % (q["threads"], q["concurrency"], q["tok_s_ratio"],
                                              "%.2f" % q["ttft_ratio"] if q["ttft_ratio"] else "-"))
    bad = [(r["engine"], L["concurrency"], L["n_errors"]) for r in runs for L in r["levels"] if L["n_errors"]]
    if bad:
        print("\nWARNING: failed requests (engine, clients, count): %s" % bad)
    print("\nload average: start %.2f %.2f %.2f, end %.2f %.2f %.2f" % (meta["loadavg_start"] + meta["loadavg_end"]))

    if args.out:
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "runs": runs, "ratios": ratios}, f, indent=2)
        print("wrote %s" % args.out)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
