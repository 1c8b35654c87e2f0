#!/usr/bin/env python3
"""Live layout changes: POST /v1/layout while requests run.

usage: test_transform.py [PATH/TO/proteus]
The model is synthetic:tiny-gqa (4 KV heads, random weights, a byte
tokenizer, chatml): fast enough for the sanitizer build, and every request
asks for logprobs, so "the same output" means the same tokens with
bit-identical log-probabilities. PROTEUS_TRANSFORM_MODEL=default runs it on
SmolLM2 instead (minutes longer).
One server on four CPU virtual devices, layout [1,1,1,1], TP 1 and 2 allowed:
  - the refusals: 401 without the key, 400 for a bad body, a layout that does
    not cover the devices, a TP not allowed, a misaligned instance, the
    current layout; 409 while another change runs;
  - a reference: a mixed workload (greedy and seeded sampling, completions
    and chat, streamed or not, prompts and outputs of different lengths)
    run with no change;
  - the same workload again, plus streams the client abandons, while a
    thread keeps asking for other layouts ([2,2], [1,1,1,1], [2,1,1],
    [1,1,2], ...): every request gives the reference's tokens, none fails,
    every abandoned stream is cancelled where its request went, every
    change goes through and some moved running requests; /metrics counts
    them; once idle every KV page is free.
Then, for each injected failure point (PROTEUS_XFORM_FAIL), a server on two
devices whose change fails there: it rolls back, the layout stays, the
requests it caught give the reference's tokens, the failure is counted.
Exits 77 when the default model or the openai package is missing; prints
"N passed, N failed" last.
"""
import concurrent.futures
import json
import os
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serverlib  # noqa: E402
from serverlib import Runner, Server  # noqa: E402

BIN = serverlib.find_binary()
serverlib.skip_unless_ready(BIN, need_openai=True)
import openai  # noqa: E402

KEY = "sk-e2e-transform"
AUTH = {"Authorization": "Bearer " + KEY}
MODEL = os.environ.get("PROTEUS_TRANSFORM_MODEL", "synthetic:tiny-gqa")
SYNTHETIC = MODEL.startswith("synthetic:")
COMMON = (["-m", MODEL, "--max-model-len", "2048" if SYNTHETIC else "512", "--max-running", "8", "--allowed-tp", "1,2", "--api-key", KEY]
          + (["--chat-template", "chatml"] if SYNTHETIC else []))
FOUR = ["--devices", "cpu:4", "--layout", "1,1,1,1", "--threads", "4"] + COMMON
TWO = ["--devices", "cpu:2", "--layout", "1,1", "--threads", "2"] + COMMON
# The layouts the changing thread cycles through on four devices: merges,
# splits, and runs of two operations of different kinds.
CYCLE = [[2, 2], [1, 1, 1, 1], [2, 1, 1], [1, 1, 2], [2, 2], [2, 1, 1], [1, 1, 1, 1]]

SENTENCE = "The quick brown fox jumps over the lazy dog while the river runs to the sea. "
TOPICS = ["Write a short story about a lighthouse keeper.", "Explain how a compiler works.",
          "List some facts about the planet Mars.", "def quicksort(items):", "Once upon a time, in a small village,",
          "The three laws of thermodynamics are"]


def jobs():
    """32 requests of mixed kinds and lengths, each a dict the runner turns into one API call."""
    out = []
    for i in range(32):
        prompt = SENTENCE * (i % 4) + TOPICS[i % len(TOPICS)]  # up to ~270 bytes (tokens with a byte tokenizer)
        max_tokens = 20 + (i * 37) % 180 if SYNTHETIC else 6 + (i * 7) % 27
        job = {"i": i, "prompt": prompt, "max_tokens": max_tokens, "stream": i % 4 in (1, 2),
               "chat": i % 5 == 3, "ignore_eos": i % 3 == 0}
        if i % 2:
            job.update(temperature=0.9, top_p=0.95, seed=1000 + i)  # seeded sampling
        else:
            job.update(temperature=0.0)
        out.append(job)
    return out


def run_job(cl, model, job):
    """(text, finish_reason, completion tokens, [(token, logprob)]) of one request through the openai client."""
    kw = {"model": model, "max_tokens": job["max_tokens"], "temperature": job["temperature"],
          "extra_body": {"ignore_eos": job["ignore_eos"]}}
    if "seed" in job:
        kw.update(seed=job["seed"], top_p=job["top_p"])
    if job["stream"]:
        kw["stream_options"] = {"include_usage": True}
    if job["chat"]:
        kw.update(messages=[{"role": "user", "content": job["prompt"]}], logprobs=True)
        if not job["stream"]:
            r = cl.chat.completions.create(**kw)
            c = r.choices[0]
            return (c.message.content, c.finish_reason, r.usage.completion_tokens,
                    [(tuple(lp.bytes), lp.logprob) for lp in c.logprobs.content])
        text, finish, used, lps = "", None, None, []
        for ch in cl.chat.completions.create(stream=True, **kw):
            if ch.choices:
                text += ch.choices[0].delta.content or ""
                finish = ch.choices[0].finish_reason or finish
                if ch.choices[0].logprobs and ch.choices[0].logprobs.content:
                    lps += [(tuple(lp.bytes), lp.logprob) for lp in ch.choices[0].logprobs.content]
            if ch.usage:
                used = ch.usage.completion_tokens
        return text, finish, used, lps
    kw.update(prompt=job["prompt"], logprobs=0)
    if not job["stream"]:
        r = cl.completions.create(**kw)
        c = r.choices[0]
        return c.text, c.finish_reason, r.usage.completion_tokens, list(zip(c.logprobs.tokens,
                                                                            c.logprobs.token_logprobs))
    text, finish, used, lps = "", None, None, []
    for ch in cl.completions.create(stream=True, **kw):
        if ch.choices:
            text += ch.choices[0].text or ""
            finish = ch.choices[0].finish_reason or finish
            if ch.choices[0].logprobs:
                lps += list(zip(ch.choices[0].logprobs.tokens, ch.choices[0].logprobs.token_logprobs))
        if ch.usage:
            used = ch.usage.completion_tokens
    return text, finish, used, lps


def warm_up(cl, model):
    """One request of each kind, one at a time: the openai client builds its response types on first use,
    and building them from many threads at once can fail."""
    for job in jobs()[:4]:
        run_job(cl, model, dict(job, chat=False, max_tokens=2))
        run_job(cl, model, dict(job, chat=True, max_tokens=2))


def run_all(cl, model, js, extra=()):
    """Runs every job and the extra callables at once: ({i: result or ('error', repr)}, [extra results])."""
    results = {}
    with concurrent.futures.ThreadPoolExecutor(len(js) + len(extra)) as ex:
        futs = {ex.submit(run_job, cl, model, j): j["i"] for j in js}
        others = [ex.submit(f) for f in extra]
        for f, i in futs.items():
            try:
                results[i] = f.result()
            except Exception as e:  # a failed request is a finding, not a crash of the test
                results[i] = ("error", repr(e))
        return results, [f.result() for f in others]


def abandoned_stream(srv, k):
    """A streamed completion whose client goes away once it has a few frames and a layout change has gone
    through since (so that its cancel has to find the request where the change put it); whether it got them."""
    body = json.dumps({"model": srv.model_name, "prompt": TOPICS[k % len(TOPICS)] + " " + SENTENCE * 2,
                       "max_tokens": 1500 if SYNTHETIC else 300, "ignore_eos": True, "stream": True,
                       "temperature": 0})
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=120)
    s.sendall(("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               "Authorization: Bearer %s\r\nContent-Length: %d\r\n\r\n%s" % (KEY, len(body), body)).encode())
    got = b""
    while got.count(b"data: ") < 3 + k:
        d = s.recv(65536)
        if not d:
            break
        got += d
    changes = layout(srv)["transformation"]["completed"]
    deadline = time.time() + 5
    while time.time() < deadline and layout(srv)["transformation"]["completed"] == changes:
        time.sleep(0.005)
    s.close()
    return got.count(b"data: ") >= 3 + k


def served_model(srv):
    st, _, body = srv.request("GET", "/v1/models", headers=AUTH, timeout=30)
    return json.loads(body)["data"][0]["id"]


def pipelined_posts(srv, bodies):
    """POSTs /v1/layout bodies in one write on one connection (the server answers them in order, the
    second before the loop can commit the first): [(status, headers, body dict)]."""
    raw = b""
    for b in bodies:
        data = json.dumps(b).encode()
        raw += (b"POST /v1/layout HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAuthorization: Bearer "
                + KEY.encode() + b"\r\nContent-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=60)
    s.sendall(raw)
    f = s.makefile("rb")
    out = []
    for _ in bodies:
        status = int(f.readline().split()[1])
        headers = {}
        while True:
            line = f.readline().decode().strip()
            if not line:
                break
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        out.append((status, headers, json.loads(f.read(int(headers["content-length"])))))
    s.close()
    return out


def layout(srv):
    return srv.layout(AUTH)


def post_layout(srv, want, headers=AUTH):
    st, h, body = srv.request("POST", "/v1/layout", {"layout": want} if isinstance(want, list) else want,
                              headers=headers, timeout=30)
    try:
        return st, h, json.loads(body)
    except ValueError:
        return st, h, body


def error_of(body):
    return body.get("error", {}) if isinstance(body, dict) else {}


# ---------------------------------------------------------------------------

def test_refusals(t, srv):
    lay = layout(srv)
    t.eq("start: layout [1,1,1,1]", lay["layout"], [1, 1, 1, 1])
    t.check("start: no transformation yet", lay["transformation"] == {"in_progress": False, "current": None,
                                                                      "last": None, "completed": 0, "failed": 0},
            lay.get("transformation"))
    st, _, _ = post_layout(srv, [2, 2], headers={})
    t.eq("POST without the key: 401", st, 401)
    st, _, _ = post_layout(srv, [2, 2], headers={"Authorization": "Bearer wrong"})
    t.eq("POST with a wrong key: 401", st, 401)
    st, _, _ = srv.request("GET", "/v1/layout", timeout=30)
    t.eq("GET without the key: 401", st, 401)
    bad = [("not JSON", b"{layout: [2,2]", "not valid JSON"),
           ("not an object", [2, 2], "must be a JSON object"),
           ("no layout", {"tp": [2, 2]}, "unknown key 'tp'"),
           ("layout not a list", {"layout": "2,2"}, "must be an array"),
           ("a degree not an integer", {"layout": [2, 1.5, 0.5]}, "'layout'[1] = 1.5 is not an integer"),
           ("not covering the devices", {"layout": [1, 1]}, "covers 2 devices but the server has 4"),
           ("too many devices", {"layout": [2, 2, 1]}, "covers 5 devices but the server has 4"),
           ("TP not allowed", {"layout": [4]}, "TP 4 is not allowed (engine.allowed_tp: [1,2])"),
           ("misaligned", {"layout": [1, 2, 1]}, "layout[1] = 2 would start at device 1, which is not a multiple of 2"),
           ("zero", {"layout": [0, 2, 2]}, "layout[0] = 0 is not a TP degree"),
           ("the current layout", {"layout": [1, 1, 1, 1]}, "the layout is already [1,1,1,1]")]
    for name, body, want in bad:
        if isinstance(body, (bytes, list)):
            st, _, raw = srv.request("POST", "/v1/layout", body, headers=AUTH, timeout=30)
            resp = json.loads(raw) if raw.startswith(b"{") else {}
        else:
            st, _, resp = post_layout(srv, body)
        err = error_of(resp)
        t.eq("400 %s" % name, st, 400)
        t.check("400 %s: says %r, OpenAI shape" % (name, want),
                want in err.get("message", "") and err.get("type") == "invalid_request_error"
                and err.get("code") == "invalid_layout", resp)
    t.eq("refusals changed nothing", (layout(srv)["layout"], layout(srv)["transformation"]["last"]),
         ([1, 1, 1, 1], None))

    # 409: a second change while the first runs; sent on one connection with the first, it is answered
    # before the loop thread can commit the first.
    (st, h, body), (st2, h2, body2) = pipelined_posts(srv, [{"layout": [2, 2]}, {"layout": [1, 1, 1, 1]}])
    t.eq("POST [2,2]: 202", st, 202)
    t.check("202 body: id, from, to, plan", isinstance(body, dict) and body.get("id") == "xf-1"
            and body.get("from") == [1, 1, 1, 1] and body.get("to") == [2, 2]
            and body.get("plan") == "merge [1,1] -> [2] on devices 0-1; merge [1,1] -> [2] on devices 2-3"
            and [o["kind"] for o in body.get("operations", [])] == ["merge", "merge"], body)
    t.eq("202 Location", h.get("location"), "/v1/layout")
    cur = layout(srv)["transformation"]
    t.eq("POST while one runs: 409", st2, 409)
    t.check("409 names the change in progress", "xf-1" in error_of(body2).get("message", "")
            and error_of(body2).get("code") == "transformation_in_progress" and h2.get("retry-after") == "1", body2)
    t.check("GET while it runs: in progress, its plan and stage",
            not cur["in_progress"] or (cur["current"]["id"] == "xf-1" and cur["current"]["to"] == [2, 2]
                                       and cur["current"]["stage"] in ("build", "precopy", "commit", "finish", "done")),
            cur)
    lay = srv.wait_change(300, AUTH)
    last = lay["transformation"]["last"]
    t.eq("idle merge: layout [2,2]", lay["layout"], [2, 2])
    t.check("idle merge: result ok, two merges, weights built, nothing moved",
            last["result"] == "ok" and last["reason"] is None and last["kind"] == "merge"
            and [o["result"] for o in last["operations"]] == ["ok", "ok"] and last["bytes_moved"]["weights"] > 0
            and last["requests_moved"] == 0 and last["bytes_moved"]["kv"] == 0, last)
    t.eq("idle merge: instances", [(i["tp"], i["devices"]) for i in lay["instances"]],
         [(2, ["cpu0", "cpu1"]), (2, ["cpu2", "cpu3"])])
    st, _, _ = post_layout(srv, [1, 1, 1, 1])
    t.eq("split back: 202", st, 202)
    lay = srv.wait_change(300, AUTH)
    t.check("split back: [1,1,1,1], ok, two splits", lay["layout"] == [1, 1, 1, 1]
            and lay["transformation"]["last"]["kind"] == "split" and lay["transformation"]["last"]["result"] == "ok"
            and lay["transformation"]["completed"] == 2, lay["transformation"])


def first_difference(got, ref):
    """Where two results part: the first token whose (token, logprob) differs, or the finish and length."""
    for k, (a, b) in enumerate(zip(got[3], ref[3])):
        if a != b:
            return "token %d of %d: got %r, reference %r" % (k, len(ref[3]), a, b)
    return "got %r, reference %r" % (got[1:3], ref[1:3])


def compare(t, name, got, ref):
    errors = {i: r for i, r in got.items() if r and r[0] == "error"}
    t.check("%s: no request failed" % name, not errors, errors)
    diff = {i: first_difference(got[i], ref[i]) for i in ref if i in got and got[i] != ref[i] and got[i][0] != "error"}
    t.check("%s: every request's tokens, logprobs, finish and length equal the reference (%d)" % (name, len(ref)),
            not diff, dict(list(diff.items())[:4]))


def test_changes_under_load(t, srv, cl, ref):
    aborted = srv.metric("proteus_request_success_total", finished_reason="abort") or 0
    lengths = srv.metric("proteus_request_success_total", finished_reason="length") or 0
    done = threading.Event()
    runs = []  # the last result after each change

    def changer():
        k = 0
        while not done.is_set():
            st, _, body = post_layout(srv, CYCLE[k % len(CYCLE)])
            if st == 202:
                runs.append(srv.wait_change(300, AUTH)["transformation"]["last"])
                done.wait(0.02)  # let the requests advance between changes
            elif st != 400:  # 400: the layout is already that one (the cycle wrapped)
                runs.append({"result": "POST answered %d" % st, "body": body})
            k += 1

    n_abandoned = 6
    abandon = [lambda k=k: abandoned_stream(srv, k) for k in range(n_abandoned)]
    th = threading.Thread(target=changer)
    th.start()
    try:
        got, streamed = run_all(cl, srv.model_name, jobs(), abandon)
    finally:
        done.set()
        th.join(300)
    compare(t, "under changes", got, ref)
    t.check("abandoned streams: each got its frames before going away", all(streamed), streamed)
    ok = [r for r in runs if r.get("result") == "ok"]
    t.check("changes: at least three went through, none failed", len(ok) >= 3 and len(ok) == len(runs),
            [(r.get("id"), r.get("result"), r.get("reason")) for r in runs])
    moved = sum(r.get("requests_moved", 0) for r in ok)
    t.check("changes: running requests were moved, with their KV pages",
            moved > 0 and sum(r["bytes_moved"]["kv"] for r in ok) > 0, [(r["id"], r["requests_moved"]) for r in ok])
    kinds = {o["kind"] for r in ok for o in r["operations"]}
    t.check("changes: merges and splits", {"merge", "split"} <= kinds, kinds)
    print("   %d changes, %d requests moved, pauses %s ms" % (len(ok), moved,
                                                            [round(r["pause_s"] * 1e3, 2) for r in ok]), flush=True)
    # Every abandoned stream ends: cancelled where its request had been moved, or (its client being
    # slower than the model) run to its length before the client went away.
    lay = srv.wait_idle(120, AUTH)
    cancelled = (srv.metric("proteus_request_success_total", finished_reason="abort") or 0) - aborted
    ran_out = ((srv.metric("proteus_request_success_total", finished_reason="length") or 0) - lengths
               - sum(1 for r in ref.values() if r[1] == "length"))
    t.check("abandoned streams: each cancelled or run out, most cancelled",
            cancelled + ran_out == n_abandoned and cancelled >= n_abandoned // 2, (cancelled, ran_out))
    print("   abandoned streams: %d cancelled, %d ran out" % (cancelled, ran_out), flush=True)
    t.check("idle after changes: every KV page free, nothing running",
            all(i["running"] == 0 and i["waiting"] == 0 and i["kv_pages_free"] == i["kv_pages_total"] > 0
                for i in lay["instances"]), lay["instances"])
    t.eq("layout and /v1/layout agree on the instances' TP", [i["tp"] for i in lay["instances"]], lay["layout"])
    # /metrics counts what GET /v1/layout reported.
    m = srv.metrics()
    n_ops = sum(len(r["operations"]) for r in ok) + 4  # the 2 + 2 of test_refusals
    oks = sum(v for lab, v in m.get("proteus_transformations_total", []) if lab.get("result") == "ok")
    fails = sum(v for lab, v in m.get("proteus_transformations_total", []) if lab.get("result") == "failed")
    t.eq("metrics: operations ok, none failed", (oks, fails), (float(n_ops), 0.0))
    t.eq("metrics: a pause per operation", srv.metric("proteus_transformation_pause_seconds_count"), float(n_ops))
    t.eq("metrics: a pre-copy per operation", srv.metric("proteus_transformation_precopy_seconds_count"),
         float(n_ops))
    t.check("metrics: KV and weight bytes moved", (srv.metric("proteus_transformation_bytes_moved_total", what="kv")
                                                   or 0) >= sum(r["bytes_moved"]["kv"] for r in ok) > 0
            and (srv.metric("proteus_transformation_bytes_moved_total", what="weights") or 0) > 0)
    gauge = sorted((int(lab["first_device"]), v) for lab, v in m.get("proteus_layout_instance_tp", []))
    t.eq("metrics: layout gauge", [int(v) for _, v in gauge], lay["layout"])
    t.eq("metrics: no change in progress", srv.metric("proteus_transformation_in_progress"), 0.0)
    log = srv.stderr()
    t.check("log: each change with its plan, bytes moved, stages and pause",
            "transformation xf-1: [1,1,1,1] -> [2,2]: merge [1,1] -> [2] on devices 0-1" in log
            and "KV pages" in log and "pre-copied in" in log and "pause" in log, log[-1500:])


def test_injected_failure(t, point, ref):
    """A change that fails at `point`: rolled back, the layout unchanged, requests unharmed, counted."""
    srv = Server(BIN, TWO, name="fail-" + point, env={"PROTEUS_XFORM_FAIL": point}).start()
    srv.model_name = served_model(srv)
    cl = openai.OpenAI(base_url=srv.base_url + "/v1", api_key=KEY, max_retries=0, timeout=300)
    try:
        js = [j for j in jobs() if j["max_tokens"] >= 16][:8]
        posted = []

        def change_when_running():
            deadline = time.time() + 60
            while time.time() < deadline and not any(i["running"] for i in layout(srv)["instances"]):
                time.sleep(0.02)
            posted.append(post_layout(srv, [2])[0])

        got, _ = run_all(cl, srv.model_name, js, [change_when_running])
        compare(t, "%s" % point, got, {j["i"]: ref[j["i"]] for j in js})
        lay = srv.wait_idle(120, AUTH)
        last = lay["transformation"]["last"] or {}
        stage = point.split("_")[0]
        t.eq("%s: POST accepted" % point, posted, [202])
        t.check("%s: failed in %s and rolled back, layout unchanged" % (point, stage),
                lay["layout"] == [1, 1] and last.get("result") == "failed"
                and last["operations"][0].get("failed_in") == stage and "injected" in last.get("reason", "")
                and lay["transformation"]["failed"] == 1, last)
        t.check("%s: idle, every KV page free" % point,
                all(i["kv_pages_free"] == i["kv_pages_total"] > 0 for i in lay["instances"]), lay["instances"])
        t.eq("%s: counted as a failed merge" % point,
             srv.metric("proteus_transformations_total", kind="merge", result="failed"), 1.0)
        t.check("%s: logged with its stage and reason" % point,
                ("failed in %s, rolled back" % stage) in srv.stderr(), srv.stderr()[-1500:])
        # The server still changes its layout once the fault is gone? The
        # injection is for every change: a second one fails the same way.
        st, _, _ = post_layout(srv, [2])
        lay = srv.wait_change(300, AUTH)
        t.check("%s: a second change fails the same way, the server serves on" % point,
                st == 202 and lay["layout"] == [1, 1] and lay["transformation"]["failed"] == 2
                and run_job(cl, srv.model_name, js[0]) == ref[js[0]["i"]], lay["transformation"]["last"])
    finally:
        code = srv.stop()
    t.eq("%s: SIGTERM exit code 0" % point, code, 0)


def test_shutdown_during_change(t):
    """SIGTERM while a change runs: it is abandoned or finished, the server exits 0."""
    srv = Server(BIN, TWO, name="shutdown").start()
    st, _, _ = post_layout(srv, [2])
    code = srv.stop()
    t.eq("shutdown during a change: POST accepted", st, 202)
    t.eq("shutdown during a change: exit code 0", code, 0)


def main():
    t = Runner()
    srv = Server(BIN, FOUR, name="transform").start()
    srv.model_name = served_model(srv)
    cl = openai.OpenAI(base_url=srv.base_url + "/v1", api_key=KEY, max_retries=0, timeout=300)
    ref = {}
    try:
        warm_up(cl, srv.model_name)
        t.run(test_refusals, srv)
        t0 = time.time()
        ref.update(run_all(cl, srv.model_name, jobs())[0])
        print("   reference workload: %.1f s" % (time.time() - t0), flush=True)
        t.check("reference: every request answered", all(r[0] != "error" for r in ref.values()),
                [r for r in ref.values() if r[0] == "error"][:3])
        t.run(test_changes_under_load, srv, cl, ref)
        t.check("after: server alive", srv.alive())
    finally:
        code = srv.stop()
    t.eq("transform server: SIGTERM exit code 0", code, 0)
    for point in ("precopy_comm", "commit_comm"):
        t.run(test_injected_failure, point, ref)
    t.run(test_shutdown_during_change)
    return t.summary()


if __name__ == "__main__":
    sys.exit(main())
