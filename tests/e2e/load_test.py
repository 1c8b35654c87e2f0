#!/usr/bin/env python3
"""Load test of `proteus serve` (run by hand; not a ctest).

usage: load_test.py [PATH/TO/proteus] [--clients 64] [--duration 60] [--max-running 16] [--max-waiting 32]
                    [--threads N] [--devices cpu:2 --layout 1,1 --allowed-tp 1,2
                    --relayout "2;1,1" --relayout-every 5]

N client threads send, back to back, a mix of streamed and non-streamed
/v1/completions and /v1/chat/completions with max_tokens 8..32 (ignore_eos,
so each asks for exactly max_tokens). Counts: ok, 429 (queue full), any other
failure (must be 0; a streamed answer must end with [DONE] and carry the
right number of tokens). RSS of the server is sampled every 5 s, along with
`uptime`'s load average. At the end: a /metrics snapshot (pages used must
be 0, nothing running) and SIGTERM (exit code 0). Exit code 1 on any failure.

With --relayout, an operator thread asks for the next layout of the list
(POST /v1/layout) every --relayout-every seconds, cycling, while the clients
run: the live TP transformations must lose no request. It counts the
transformations asked, accepted, refused as busy (409), and their results
from GET /v1/layout.
"""
import argparse
import collections
import http.client
import json
import os
import random
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serverlib  # noqa: E402

PROMPTS = [
    "The capital of France is",
    "Write a haiku about the sea.",
    "Explain what a hash table is in one paragraph.",
    "Once upon a time, in a small village,",
    "List five fruits:",
    "def quicksort(xs):",
]


class Stats:
    def __init__(self):
        self.mu = threading.Lock()
        self.c = collections.Counter()
        self.errors = collections.Counter()
        self.lat = []
        self.tokens = 0

    def add(self, key, lat=None, tokens=0, err=None):
        with self.mu:
            self.c[key] += 1
            if lat is not None:
                self.lat.append(lat)
            self.tokens += tokens
            if err:
                self.errors[err[:160]] += 1


def one_request(port, rng, stats):
    chat = rng.random() < 0.5
    stream = rng.random() < 0.5
    max_tokens = rng.randint(8, 32)
    prompt = rng.choice(PROMPTS)
    body = {"max_tokens": max_tokens, "temperature": rng.choice([0, 0.7, 1.0]), "ignore_eos": True,
            "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    if chat:
        body["messages"] = [{"role": "user", "content": prompt}]
        path = "/v1/chat/completions"
    else:
        body["prompt"] = prompt
        path = "/v1/completions"
    t0 = time.time()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        r = conn.getresponse()
        data = r.read()
        if r.status == 429:
            ra = r.getheader("Retry-After")
            stats.add("429", err=None if ra else "429 without Retry-After")
            if not ra:
                stats.add("fail", err="429 without Retry-After")
            return 429
        if r.status != 200:
            stats.add("fail", err="status %d: %s" % (r.status, data[:100]))
            return r.status
        if stream:
            lines = [ln for ln in data.decode().split("\n") if ln.startswith("data: ")]
            if not lines or lines[-1] != "data: [DONE]":
                stats.add("fail", err="stream did not end with [DONE]")
                return -1
            usage = json.loads(lines[-2][6:]).get("usage") if len(lines) >= 2 else None
            got = usage and usage.get("completion_tokens")
        else:
            got = json.loads(data)["usage"]["completion_tokens"]
        if got != max_tokens:
            stats.add("fail", err="completion_tokens %s != max_tokens %d" % (got, max_tokens))
            return -1
        stats.add("ok_stream" if stream else "ok_plain", lat=time.time() - t0, tokens=max_tokens)
        return 200
    except Exception as e:  # noqa: BLE001
        stats.add("fail", err="exception %r" % e)
        return -1
    finally:
        conn.close()


def client_loop(i, port, stop_at, stats):
    rng = random.Random(i)
    while time.time() < stop_at:
        st = one_request(port, rng, stats)
        if st == 429:
            time.sleep(rng.uniform(0.05, 0.3))  # a polite client backs off a little


def relayout_loop(port, layouts, every, stop_at, out):
    """Asks for the next layout every `every` seconds; records what came back."""
    i = 0
    while time.time() + every < stop_at:
        time.sleep(every)
        body = json.dumps({"layout": layouts[i % len(layouts)]})
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            c.request("POST", "/v1/layout", body, {"Content-Type": "application/json"})
            r = c.getresponse()
            text = r.read().decode("utf-8", "replace")
            c.close()
        except OSError as e:
            out["post_errors"].append(str(e))
            continue
        if r.status in (200, 202):
            out["accepted"] += 1
            i += 1
        elif r.status == 409:
            out["busy"] += 1
        else:
            out["post_errors"].append("%d %s" % (r.status, text[:200]))


def layout_state(port):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("GET", "/v1/layout")
    r = c.getresponse()
    doc = json.loads(r.read())
    c.close()
    return doc


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100.0 * len(xs)))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary", nargs="?", default=None)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--duration", type=float, default=60)
    ap.add_argument("--max-running", type=int, default=16)
    ap.add_argument("--max-waiting", type=int, default=32)
    ap.add_argument("--threads", default=None)
    ap.add_argument("--devices", default=None, help="e.g. cpu:2 (CPU virtual devices)")
    ap.add_argument("--layout", default=None, help="start-up layout, e.g. 1,1")
    ap.add_argument("--allowed-tp", default=None, help="e.g. 1,2")
    ap.add_argument("--relayout", default=None, help="layouts to cycle through, e.g. \"2;1,1\"")
    ap.add_argument("--relayout-every", type=float, default=5.0)
    a = ap.parse_args()
    binary = serverlib.find_binary([sys.argv[0], a.binary] if a.binary else [sys.argv[0]])
    serverlib.skip_unless_ready(binary)

    args = ["--max-running", str(a.max_running), "--max-waiting", str(a.max_waiting)]
    if a.devices:
        args += ["--devices", a.devices]
    if a.layout:
        args += ["--layout", a.layout]
    if a.allowed_tp:
        args += ["--allowed-tp", a.allowed_tp]
    srv = serverlib.Server(binary, args, name="load", threads=a.threads).start()
    print("server pid %d port %d, %d clients for %.0f s, max-running %d, max-waiting %d"
          % (srv.proc.pid, srv.port, a.clients, a.duration, a.max_running, a.max_waiting), flush=True)
    stats = Stats()
    rss = [(0.0, srv.rss_kb(), loadavg())]
    t0 = time.time()
    stop_at = t0 + a.duration
    threads = [threading.Thread(target=client_loop, args=(i, srv.port, stop_at, stats), daemon=True)
               for i in range(a.clients)]
    relayout = {"accepted": 0, "busy": 0, "post_errors": []}
    if a.relayout:
        layouts = [[int(t) for t in l.split(",")] for l in a.relayout.split(";")]
        threads.append(threading.Thread(target=relayout_loop,
                                         args=(srv.port, layouts, a.relayout_every, stop_at, relayout), daemon=True))
    for th in threads:
        th.start()
    while time.time() < stop_at:
        time.sleep(min(5.0, max(0.0, stop_at - time.time())))
        m = srv.metrics()
        run = m.get("proteus_num_requests_running", [({}, -1)])[0][1]
        wait = m.get("proteus_num_requests_waiting", [({}, -1)])[0][1]
        rss.append((time.time() - t0, srv.rss_kb(), loadavg()))
        with stats.mu:
            c = dict(stats.c)
        print("t=%5.1fs rss=%7d kB load=%s running=%g waiting=%g %s"
              % (rss[-1][0], rss[-1][1], rss[-1][2], run, wait, c), flush=True)
    for th in threads:
        th.join(timeout=120)
    elapsed = time.time() - t0
    time.sleep(1)
    m = srv.metrics()
    final_layout = layout_state(srv.port) if a.relayout else None
    rss.append((time.time() - t0, srv.rss_kb(), loadavg()))
    code = srv.stop()

    ok = stats.c["ok_stream"] + stats.c["ok_plain"]
    values = [r[1] for r in rss]
    warm = values[2] if len(values) > 2 else values[-1]  # after ~10 s
    print()
    print("== results (%.1f s)" % elapsed)
    print("requests ok:         %d (%d streamed, %d plain), %.1f req/s, %.1f completion tok/s"
          % (ok, stats.c["ok_stream"], stats.c["ok_plain"], ok / elapsed, stats.tokens / elapsed))
    print("429 (queue full):    %d" % stats.c["429"])
    print("other failures:      %d %s" % (stats.c["fail"], dict(stats.errors) if stats.errors else ""))
    print("latency ok (s):      p50 %.2f  p90 %.2f  p99 %.2f  max %.2f"
          % (pct(stats.lat, 50), pct(stats.lat, 90), pct(stats.lat, 99), max(stats.lat or [float("nan")])))
    print("RSS kB:              first %d, after warm-up %d, last %d, max %d (last/warm-up %.3f)"
          % (values[0], warm, values[-1], max(values), values[-1] / float(warm)))
    print("load average:        %s" % ", ".join("%.0fs: %s" % (t, l) for t, _, l in rss))
    print("/metrics at the end:")
    keep = ("proteus_kv_pages_used", "proteus_kv_pages_free", "proteus_num_requests_running",
            "proteus_num_requests_waiting", "proteus_requests_rejected_total", "proteus_request_success_total",
            "proteus_generation_tokens_total", "proteus_prompt_tokens_total", "proteus_preemptions_total")
    for name in keep:
        for lab, v in m.get(name, []):
            extra = ",".join("%s=%s" % kv for kv in lab.items() if kv[0] != "model_name")
            print("  %s{%s} %g" % (name, extra, v))
    xform_bad = False
    if a.relayout:
        results = {}
        for lab, v in m.get("proteus_transformations_total", []):
            results["%s/%s" % (lab.get("kind"), lab.get("result"))] = v
        print("layout changes:      %d accepted, %d refused as busy (409), POST errors %s"
              % (relayout["accepted"], relayout["busy"], relayout["post_errors"] or "none"))
        print("transformations:     %s" % (results or "none counted"))
        print("layout at the end:   %s" % [i.get("tp") for i in final_layout.get("instances", [])])
        xform_bad = bool(relayout["post_errors"]) or relayout["accepted"] == 0
    pages = [v for _, v in m.get("proteus_kv_pages_used", [])]
    running = m.get("proteus_num_requests_running", [({}, -1)])[0][1]
    print("SIGTERM exit code:   %s" % code)
    bad = stats.c["fail"] != 0 or not pages or any(pages) or running != 0 or code != 0 or ok == 0 or xform_bad
    print("RESULT: %s" % ("FAIL" if bad else "PASS"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
