#!/usr/bin/env python3
"""Many instances in one server: `proteus serve --devices cpu:4 --layout 1,1,2`.

usage: test_layout.py [PATH/TO/proteus]
Checks that GET /v1/layout shows the devices and the three instances, that
requests are spread over the instances (requests_total in the layout and in
/metrics), that greedy outputs for one prompt are identical whichever
instance (TP1 or TP2) served them, that cancelling reaches the instance a
request went to, that POST /v1/layout refuses a TP degree not allowed, and that layouts the
configuration or the model refuse stop the server with exit code 2 and a
message naming 'engine.layout'. Exits 77 when the default model or the
openai package is missing; prints "N passed, N failed" last.
"""
import concurrent.futures
import json
import os
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serverlib  # noqa: E402
from serverlib import Runner, Server  # noqa: E402

BIN = serverlib.find_binary()
serverlib.skip_unless_ready(BIN, need_openai=True)
import openai  # noqa: E402

KEY = "sk-e2e-layout"
AUTH = {"Authorization": "Bearer " + KEY}
# Small contexts keep every instance's KV pool at max_running full contexts:
# 4 x 128 tokens x 3 KV heads = 96 head pages each, TP1 or TP2 alike, so
# that equal idle instances take requests in turn.
LAYOUT_ARGS = ["--devices", "cpu:4", "--layout", "1,1,2", "--threads", "4", "--max-model-len", "128",
               "--max-running", "4", "--api-key", KEY]
PROMPTS = ["The capital of France is", "def fibonacci(n):"]
MAX_TOKENS = 8


def layout(srv):
    return srv.layout(AUTH)


def served_per_instance(srv):
    return [i["requests_total"] for i in layout(srv)["instances"]]


# ---------------------------------------------------------------------------

def test_layout_view(t, srv, cl):
    lay = layout(srv)
    devs = lay.get("devices", [])
    t.eq("layout: four devices", [d["name"] for d in devs], ["cpu0", "cpu1", "cpu2", "cpu3"])
    t.check("layout: cpu devices of one thread each, no budget",
            all(d["kind"] == "cpu" and d["threads"] == 1 and d["budget_bytes"] == 0 for d in devs), devs)
    t.check("layout: every device holds weights, KV pages and scratch",
            all(all(d["used_bytes"][c] > 0 for c in ("weights", "kv", "scratch")) for d in devs),
            [d["used_bytes"] for d in devs])
    insts = lay.get("instances", [])
    t.eq("layout: instances' TP", [i["tp"] for i in insts], [1, 1, 2])
    t.eq("layout: instances' devices", [i["devices"] for i in insts], [["cpu0"], ["cpu1"], ["cpu2", "cpu3"]])
    t.eq("layout: ids", [i["id"] for i in insts], [0, 1, 2])
    t.eq("layout: weight bytes per rank", [len(i["weight_bytes"]) for i in insts], [1, 1, 2])
    w2 = insts[2]["weight_bytes"] if len(insts) == 3 else []
    t.check("layout: a TP2 rank's shard is smaller than a TP1 shard",
            len(w2) == 2 and all(0 < w["shard"] < insts[0]["weight_bytes"][0]["shard"] for w in w2), insts)
    t.check("layout: idle, every page free",
            all(i["running"] == 0 and i["waiting"] == 0 and i["kv_pages_free"] == i["kv_pages_total"] > 0
                for i in insts), insts)
    t.eq("layout: no requests yet", [i["requests_total"] for i in insts], [0, 0, 0])
    t.eq("layout: allowed TP", lay.get("allowed_tp"), [1, 2])
    st, _, _ = srv.request("GET", "/v1/layout", timeout=30)
    t.eq("layout: needs the API key like /v1/models", st, 401)
    # Layout changes are tests/e2e/test_transform.py's; here only a refusal, which changes nothing.
    st, _, body = srv.request("POST", "/v1/layout", {"layout": [4]}, headers=AUTH, timeout=30)
    err = json.loads(body).get("error", {}) if body.startswith(b"{") else {}
    t.eq("layout: POST of a TP not allowed answers 400", st, 400)
    t.check("layout: POST says why, in the OpenAI error shape",
            "TP 4 is not allowed" in err.get("message", "") and err.get("type") and "code" in err, body[:300])
    st, h, _ = srv.request("DELETE", "/v1/layout", headers=AUTH, timeout=30)
    t.eq("layout: DELETE answers 405", (st, h.get("allow")), (405, "GET, POST"))


def test_n_choices_spread(t, srv, cl):
    """The choices of one request are routed one after the other: one per idle instance.

    Without the prefix cache: with it, an instance that has already prefilled
    the first choice's prompt may rightly take another (prefix-aware routing),
    depending on how far its engine got before the next choice is placed."""
    before = served_per_instance(srv)
    r = cl.completions.create(model=srv.model_name, prompt=PROMPTS[0], max_tokens=MAX_TOKENS, temperature=0, n=3,
                              extra_body={"cache_prompt": False})
    texts = [c.text for c in sorted(r.choices, key=lambda c: c.index)]
    after = served_per_instance(srv)
    t.eq("n=3: one choice per instance", [a - b for a, b in zip(after, before)], [1, 1, 1])
    t.check("n=3: greedy choices identical on TP1, TP1 and TP2", len(set(texts)) == 1 and texts[0], texts)
    srv.reference = texts[0] if texts else None


def test_concurrent_identical(t, srv, cl):
    """Concurrent greedy requests land on several instances and give the same text for the same prompt."""
    srv.wait_idle(60, AUTH)
    before = served_per_instance(srv)
    jobs = [PROMPTS[k % 2] for k in range(6)]

    def one(prompt):
        r = cl.completions.create(model=srv.model_name, prompt=prompt, max_tokens=MAX_TOKENS, temperature=0)
        return prompt, r.choices[0].text

    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as ex:
        results = list(ex.map(one, jobs))
    after = served_per_instance(srv)
    delta = [a - b for a, b in zip(after, before)]
    t.eq("concurrent: all six routed", sum(delta), 6)
    t.check("concurrent: more than one instance served", sum(1 for d in delta if d > 0) > 1, delta)
    for p in PROMPTS:
        texts = [txt for q, txt in results if q == p]
        t.check("concurrent: one text for %r" % p, len(set(texts)) == 1 and texts[0], texts)
    t.eq("concurrent: same text as the n=3 request", [txt for q, txt in results if q == PROMPTS[0]][0],
         getattr(srv, "reference", None))
    # The chat route takes the same path; streamed, on whichever instance.
    chunks = list(cl.chat.completions.create(model=srv.model_name, max_tokens=MAX_TOKENS, temperature=0, stream=True,
                                             messages=[{"role": "user", "content": "Say hello."}]))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    t.check("concurrent: a streamed chat completes", len(text) > 0 and chunks[-1].choices[0].finish_reason, text)


def test_metrics(t, srv, cl):
    lay = srv.wait_idle(60, AUTH)
    m = srv.metrics()

    def val(name, **labels):
        return [v for lab, v in m.get(name, []) if all(lab.get(k) == x for k, x in labels.items())]

    t.eq("metrics: requests per instance match the layout",
         [val("proteus_instance_requests_total", instance=str(i)) for i in range(3)],
         [[float(i["requests_total"])] for i in lay["instances"]])
    t.eq("metrics: instance TP", [val("proteus_instance_tp", instance=str(i)) for i in range(3)],
         [[1.0], [1.0], [2.0]])
    t.eq("metrics: TP2 instance's devices", [lab.get("devices") for lab, _ in m.get("proteus_instance_tp", [])],
         ["cpu0", "cpu1", "cpu2,cpu3"])
    t.eq("metrics: weights bytes of cpu3 as in the layout",
         val("proteus_device_memory_bytes", device="cpu3", **{"class": "weights"}),
         [float(lay["devices"][3]["used_bytes"]["weights"])])
    t.eq("metrics: a budget gauge per device", len(m.get("proteus_device_memory_budget_bytes", [])), 4)
    t.eq("metrics: KV pages free on every device", sorted(lab["device"] for lab, _ in m.get("proteus_kv_pages_free", [])),
         ["cpu0", "cpu1", "cpu2", "cpu3"])
    t.eq("metrics: instance pages free as in the layout",
         [val("proteus_instance_kv_pages_free", instance=str(i)) for i in range(3)],
         [[float(i["kv_pages_free"])] for i in lay["instances"]])
    t.eq("metrics: nothing running", (val("proteus_num_requests_running"), val("proteus_instance_running")),
         ([0.0], [0.0, 0.0, 0.0]))


def test_cancel_reaches_instance(t, srv, cl):
    """A client that goes away cancels each choice on the instance it went to (ids are per instance)."""
    srv.wait_idle(60, AUTH)
    aborted = srv.metric("proteus_request_success_total", finished_reason="abort") or 0
    length = srv.metric("proteus_request_success_total", finished_reason="length") or 0
    body = json.dumps({"model": srv.model_name, "prompt": PROMPTS[1], "max_tokens": 100, "temperature": 0, "n": 3,
                       "stream": True, "ignore_eos": True})
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=60)
    s.sendall(("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               "Authorization: Bearer %s\r\nContent-Length: %d\r\n\r\n%s" % (KEY, len(body), body)).encode())
    got = b""
    while got.count(b"data: ") < 4:  # every choice has started
        d = s.recv(65536)
        if not d:
            break
        got += d
    s.close()
    t.check("cancel: streaming started", b"200 OK" in got, got[:200])
    deadline = time.time() + 60
    while time.time() < deadline and (srv.metric("proteus_request_success_total", finished_reason="abort") or 0) < aborted + 3:
        time.sleep(0.2)
    t.eq("cancel: three choices aborted",
         (srv.metric("proteus_request_success_total", finished_reason="abort") or 0) - aborted, 3)
    t.eq("cancel: none ran to its length",
         (srv.metric("proteus_request_success_total", finished_reason="length") or 0) - length, 0)
    lay = srv.wait_idle(60, AUTH)
    t.check("cancel: every instance idle with its pages back",
            all(i["running"] == 0 and i["kv_pages_free"] == i["kv_pages_total"] for i in lay["instances"]),
            lay["instances"])


def refused(t, name, args, want):
    """proteus serve with a layout that must be refused: exit code 2, the message names it."""
    cmd = [BIN, "serve", "-m", "default", "--host", "127.0.0.1", "--port", str(serverlib.free_port())] + args
    try:
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=300)
    except subprocess.TimeoutExpired:
        t.check("%s: exits" % name, False, "still running after 300 s")
        return
    err = r.stderr.decode("utf-8", "replace")
    t.eq("%s: exit code 2" % name, r.returncode, 2)
    t.check("%s: message names %r" % (name, want), want in err, err[-600:])


def test_refused(t):
    refused(t, "layout not covering the devices", ["--devices", "cpu:2", "--layout", "1", "-t", "2"],
            "'engine.layout' [1] covers 1 device but 'engine.devices' has 2")
    refused(t, "misaligned TP2", ["--devices", "cpu:3", "--layout", "1,2", "-t", "3"],
            "'engine.layout'[1] = 2 would start at device 1")
    refused(t, "TP above the model's KV heads", ["--devices", "cpu:4", "--layout", "4", "-t", "4"],
            "engine.layout[0] (devices [0, 4)): TP 4 exceeds the model's 3 KV heads")
    refused(t, "budget below the shard", ["--devices", "cpu:2", "-t", "2", "--device-memory-mb", "16"],
            "engine.layout[0] (devices [0, 1)): device cpu0")


def main():
    t = Runner()
    t.run(test_refused)
    srv = Server(BIN, LAYOUT_ARGS, name="layout").start()
    cl = openai.OpenAI(base_url=srv.base_url + "/v1", api_key=KEY, max_retries=0, timeout=300)
    srv.model_name = "SmolLM2-135M-Instruct"
    try:
        log = srv.stderr()
        t.check("start-up log describes the layout", "3 instances: [1] cpu0, [1] cpu1, [2] cpu2+cpu3" in log,
                log[-800:])
        for fn in (test_layout_view, test_n_choices_spread, test_concurrent_identical, test_metrics,
                   test_cancel_reaches_instance):
            t.run(fn, srv, cl)
        t.check("after: server alive", srv.alive())
    finally:
        code = srv.stop()
    t.eq("layout server: SIGTERM exit code 0", code, 0)
    return t.summary()


if __name__ == "__main__":
    sys.exit(main())
