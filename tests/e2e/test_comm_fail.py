#!/usr/bin/env python3
"""Communication failures while serving: PROTEUS_COMM_FAIL (src/comm/comm.h).

usage: test_comm_fail.py [PATH/TO/proteus]
The model is synthetic:tiny-gqa (2 layers, 4 KV heads, random weights, a byte
tokenizer, chatml), so a TP2 step is 5 comm operations (an all-gather-v after
attention and after the MLP of each layer, and the logits' send/recv) and the
point of failure is known. Every request asks for logprobs: "the same output"
means the same text and bit-identical log-probabilities, which hold whatever
the instance's TP degree or batch.
  - reference: a server on four CPU devices, layout [2,1,1], no fault; it also
    writes the cost model the others load (so that no calibration step uses
    the comm world before the requests do);
  - a transient fault (PROTEUS_COMM_FAIL=23,once: the 23rd exchange of the
    fabric's comm world fails, once): the same workload; the requests of the
    failed TP2 step end with an OpenAI-shaped error (a 500, or an error event
    in a stream), every other request -- all those of the TP1 instances --
    gives the reference's output; the server stays up, the layout unchanged,
    every KV page free once idle; the TP2 instance then serves the workload
    again on a new comm world with the reference's output; /metrics counts
    the failed requests, the log names the fault and the recovery (and
    /v1/layout reports the instance's comm failures when the server fills
    them in);
  - a live merge on a server whose every comm world fails its first exchange
    (PROTEUS_COMM_FAIL=1): the transformation's own transfer fails, it rolls
    back, the layout stays [1,1], the requests it caught give the reference's
    output, the failure is reported and counted;
  - a live merge that goes through (PROTEUS_COMM_FAIL=12,once: only the
    fabric's world is armed), moving running requests onto the merged TP2
    instance, whose third step then fails: those requests fail cleanly, later
    ones are served with the reference's output on a new comm world.
Each server must exit 0 on SIGTERM. Exits 77 when the default model (the
other e2e tests' gate) or the openai package is missing; prints
"N passed, N failed" last.
"""
import concurrent.futures
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serverlib  # noqa: E402
from serverlib import Runner, Server  # noqa: E402

BIN = serverlib.find_binary()
serverlib.skip_unless_ready(BIN, need_openai=True)

KEY = "sk-e2e-comm-fail"
AUTH = {"Authorization": "Bearer " + KEY}
MODEL = "synthetic:tiny-gqa"
COMMON = ["-m", MODEL, "--chat-template", "chatml", "--max-model-len", "1024", "--max-running", "8",
          "--allowed-tp", "1,2", "--api-key", KEY]
FOUR = ["--devices", "cpu:4", "--layout", "2,1,1", "--threads", "4"] + COMMON
TWO = ["--devices", "cpu:2", "--layout", "1,1", "--threads", "2"] + COMMON
TMP = tempfile.mkdtemp(prefix="proteus-e2e-comm-")
COST = os.path.join(TMP, "cost.json")       # calibrated by the reference server
COST_EVEN = os.path.join(TMP, "even.json")  # the same, with TP2 steps priced as TP1's
TOPICS = ["Write a short story about a lighthouse keeper.", "Explain how a compiler works.",
          "List some facts about the planet Mars.", "def quicksort(items):", "Once upon a time,",
          "The three laws of thermodynamics are"]


def jobs(long=False):
    """12 requests of mixed kinds: completions and chat, streamed or not, greedy or seeded; or 4 long
    ones (ids 100-103), which a layout change catches running."""
    out = []
    for i in (range(100, 104) if long else range(12)):
        j = {"i": i, "prompt": TOPICS[i % len(TOPICS)] + " " * (i % 3),
             "max_tokens": 600 + 50 * (i % 4) if long else 24 + (i * 13) % 40, "stream": i % 3 == 1,
             "chat": i % 4 == 2}
        if i % 2:
            j.update(temperature=0.9, top_p=0.95, seed=500 + i)
        else:
            j.update(temperature=0.0)
        out.append(j)
    return out


def body_of(job):
    b = {"model": MODEL, "max_tokens": job["max_tokens"], "temperature": job["temperature"], "ignore_eos": True,
         "stream": job["stream"]}
    if "seed" in job:
        b.update(seed=job["seed"], top_p=job["top_p"])
    if job["chat"]:
        b.update(messages=[{"role": "user", "content": job["prompt"]}], logprobs=True)
    else:
        b.update(prompt=job["prompt"], logprobs=0)
    return b


def lps_of(choice, chat):
    lp = choice.get("logprobs")
    if not lp:
        return []
    if chat:
        return [(tuple(x["bytes"]), x["logprob"]) for x in lp.get("content") or []]
    return list(zip(lp.get("tokens", []), lp.get("token_logprobs", [])))


def run_job(srv, job):
    """("ok", text, finish, logprobs) or ("error", status, the error object, where)."""
    path = "/v1/chat/completions" if job["chat"] else "/v1/completions"
    st, h, data = srv.request("POST", path, body_of(job), headers=AUTH, timeout=120)
    if not job["stream"]:
        body = json.loads(data)
        if st != 200:
            return ("error", st, body.get("error"), "body")
        c = body["choices"][0]
        text = c["message"]["content"] if job["chat"] else c["text"]
        return ("ok", text, c["finish_reason"], lps_of(c, job["chat"]))
    if st != 200:
        return ("error", st, json.loads(data).get("error"), "body")
    text, finish, lps, frames = "", None, [], data.decode().split("\n\n")
    ended = frames[-2:] == ["data: [DONE]", ""]
    for f in frames:
        if not f.startswith("data: ") or f == "data: [DONE]":
            continue
        ev = json.loads(f[6:])
        if "error" in ev:
            return ("error", st, ev["error"], "stream" if ended else "stream without [DONE]")
        for c in ev.get("choices", []):
            text += (c.get("delta", {}).get("content") or "") if job["chat"] else (c.get("text") or "")
            finish = c.get("finish_reason") or finish
            lps += lps_of(c, job["chat"])
    return ("ok", text, finish, lps) if ended else ("error", st, None, "stream without [DONE]")


def run_all(srv, js, extra=()):
    """Every job (and the extra callables) at once: ({i: result}, [extra results])."""
    with concurrent.futures.ThreadPoolExecutor(len(js) + len(extra)) as ex:
        futs = {j["i"]: ex.submit(run_job, srv, j) for j in js}
        others = [ex.submit(f) for f in extra]
        out = {}
        for i, f in futs.items():
            try:
                out[i] = f.result()
            except Exception as e:  # a crash of a request is a finding, not of the test
                out[i] = ("error", None, None, repr(e))
        return out, [f.result() for f in others]


def layout(srv):
    return srv.layout(AUTH)


def requests_per_instance(srv):
    return [i["requests_total"] for i in layout(srv)["instances"]]


def clean_error(r):
    """A failed request's error is the OpenAI shape, a server error naming the comm failure."""
    e = r[2] or {}
    return (r[1] in (500, 503, 200) and isinstance(e.get("message"), str) and "comm" in e["message"]
            and e.get("type") == "server_error" and "param" in e and "code" in e
            and r[3] in ("body", "stream") and (r[3] == "stream") == (r[1] == 200))


def compare(t, name, got, ref, may_fail=()):
    """Requests outside may_fail equal the reference; those in it either equal it or failed cleanly."""
    wrong = {i: (got[i][:3] if got[i][0] == "error" else "output differs") for i in got
             if got[i] != ref[i] and not (i in may_fail and got[i][0] == "error" and clean_error(got[i]))}
    t.check("%s: every request gives the reference's output%s (%d)" % (
        name, " or a clean error" if may_fail else "", len(got)), not wrong, dict(list(wrong.items())[:4]))


def start(args, name, env=None):
    srv = Server(BIN, args, name=name, env=env).start()
    return srv


# ---------------------------------------------------------------------------

def test_reference(t, ref):
    srv = start(FOUR + ["--save-cost", COST], "reference")
    try:
        got, _ = run_all(srv, jobs() + jobs(long=True))
        ref.update(got)
        t.check("reference: every request answered", all(r[0] == "ok" for r in got.values()),
                [r for r in got.values() if r[0] != "ok"][:3])
        t.check("reference: the cost model written", os.path.exists(COST))
        # With TP2 steps priced as TP1's, the scheduler spreads concurrent requests over
        # all three instances (the tiny model's measured TP2 steps are slower: comm
        # dominates), so that the TP2 instance serves in every round.
        with open(COST) as f:
            cost = json.load(f)
        cost["tp"]["2"] = dict(cost["tp"]["1"])
        with open(COST_EVEN, "w") as f:
            json.dump(cost, f)
    finally:
        code = srv.stop()
    t.eq("reference: SIGTERM exit code 0", code, 0)


def test_transient_fault(t, ref):
    srv = start(FOUR + ["--cost-file", COST_EVEN], "transient", {"PROTEUS_COMM_FAIL": "23,once"})
    try:
        lay = layout(srv)
        t.eq("start: layout [2,1,1]", lay["layout"], [2, 1, 1])
        got, _ = run_all(srv, jobs())
        per_inst = requests_per_instance(srv)
        failed = sorted(i for i, r in got.items() if r[0] == "error")
        t.check("round 1: the TP2 instance served requests", per_inst[0] > 0, per_inst)
        t.check("round 1: some requests failed (those of the failed TP2 step), at most the TP2 instance's",
                1 <= len(failed) <= per_inst[0], (failed, per_inst))
        t.check("round 1: each failure is a clean OpenAI error (500, or an error event then [DONE] in a stream)",
                all(clean_error(got[i]) for i in failed), [got[i] for i in failed][:3])
        t.check("round 1: a failure says what failed", all("injected" in (got[i][2] or {}).get("message", "")
                                                            for i in failed), [got[i] for i in failed][:2])
        compare(t, "round 1", got, ref, may_fail=failed)
        t.check("round 1: every request of the TP1 instances succeeded",
                sum(1 for r in got.values() if r[0] == "ok") >= per_inst[1] + per_inst[2], (failed, per_inst))
        lay = srv.wait_idle(60, AUTH)
        t.check("after the fault: server up, layout unchanged, every KV page free",
                srv.alive() and lay["layout"] == [2, 1, 1] and all(
                    i["kv_pages_free"] == i["kv_pages_total"] > 0 for i in lay["instances"]), lay["instances"])
        st, _, _ = srv.request("GET", "/health", timeout=10)
        t.eq("after the fault: /health 200", st, 200)

        before = requests_per_instance(srv)
        got2, _ = run_all(srv, jobs())
        after = requests_per_instance(srv)
        compare(t, "round 2 (a new comm world)", got2, ref)
        t.check("round 2: the TP2 instance served again", after[0] > before[0], (before, after))

        t.eq("metrics: the failed requests counted as errors",
             srv.metric("proteus_request_success_total", finished_reason="error"), float(len(failed)))
        comm = layout(srv)["instances"][0].get("comm") or {}
        t.check("/v1/layout: the TP2 instance's comm failure and renewal",
                comm.get("failures") == 1 and comm.get("renewals") == 1 and "injected" in (comm.get("last_error") or ""),
                comm)
        t.check("/v1/layout: no comm object on TP1 instances",
                all("comm" not in i for i in layout(srv)["instances"][1:]))
        t.eq("metrics: the TP2 instance's comm failure counted, none elsewhere",
             [srv.metric("proteus_instance_comm_failures_total", instance=str(k)) for k in range(3)],
             [1.0, 0.0, 0.0])
        log = srv.stderr()
        t.check("log: armed, the failure, a new world, the instance going on",
                "PROTEUS_COMM_FAIL=23,once: operation 23 of this local world of 4 devices will fail" in log
                and "aborting the local world of 4 devices: comm: all-gather-v on group [0, 2)" in log
                and "injected fault" in log and "a new comm world of 4 devices replaces" in log
                and "instance on devices [0, 2): continues on a new comm world (renewal 1)" in log, log[-2000:])
        t.check("log: armed once only", log.count("will fail (testing") == 1, log[-2000:])
    finally:
        code = srv.stop()
    t.eq("transient fault: SIGTERM exit code 0", code, 0)


def post_layout(srv, want):
    st, _, body = srv.request("POST", "/v1/layout", {"layout": want}, headers=AUTH, timeout=30)
    return st, json.loads(body)


def merge_while_running(srv):
    """POSTs [2] once requests run; (the POST's status, whether requests were running)."""
    deadline = time.time() + 10
    running = False
    while time.time() < deadline and not running:
        running = any(i["running"] for i in layout(srv)["instances"])
    return post_layout(srv, [2])[0], running


def test_merge_fails(t, ref):
    srv = start(TWO + ["--cost-file", COST_EVEN], "merge-fails", {"PROTEUS_COMM_FAIL": "1"})
    try:
        js = jobs(long=True)
        got, posted = run_all(srv, js, [lambda: merge_while_running(srv)])
        compare(t, "merge that fails", got, ref)
        lay = srv.wait_idle(60, AUTH)
        last = lay["transformation"]["last"] or {}
        t.eq("merge: POST accepted while requests ran", posted, [(202, True)])
        t.check("merge: failed in its transfer, rolled back, layout [1,1]",
                lay["layout"] == [1, 1] and last.get("result") == "failed" and lay["transformation"]["failed"] == 1
                and "injected" in (last.get("reason") or "") and "send/recv" in (last.get("reason") or ""), last)
        t.check("merge: idle, every KV page free", all(i["kv_pages_free"] == i["kv_pages_total"] > 0
                                                       for i in lay["instances"]), lay["instances"])
        t.eq("merge: counted as a failed merge", srv.metric("proteus_transformations_total", kind="merge",
                                                            result="failed"), 1.0)
        t.eq("merge: no request failed", srv.metric("proteus_request_success_total", finished_reason="error"), 0.0)
        got2, _ = run_all(srv, js[:2])
        compare(t, "after the failed merge", got2, ref)
        log = srv.stderr()
        t.check("log: every world armed, the rollback logged",
                "PROTEUS_COMM_FAIL=1: operation 1 of this local world of 2 devices will fail" in log
                and "rolled back" in log, log[-2000:])
    finally:
        code = srv.stop()
    t.eq("merge that fails: SIGTERM exit code 0", code, 0)


def test_merged_instance_fails(t, ref):
    # The fabric's world is the only one armed: the merge's own transfers go through, and the
    # merged instance's 12th exchange (its third step) fails, under the requests the merge moved.
    srv = start(TWO + ["--cost-file", COST_EVEN], "merged-fails", {"PROTEUS_COMM_FAIL": "12,once"})
    try:
        got, posted = run_all(srv, jobs(long=True), [lambda: merge_while_running(srv)])
        lay = srv.wait_change(60, AUTH)
        last = lay["transformation"]["last"] or {}
        t.check("merge: went through while requests ran, moving them", posted == [(202, True)]
                and lay["layout"] == [2] and last.get("result") == "ok" and last.get("requests_moved", 0) > 0,
                (posted, last))
        failed = sorted(i for i, r in got.items() if r[0] == "error")
        t.check("merged instance: the requests of its failed step failed cleanly", failed and all(
            clean_error(got[i]) for i in failed), [got[i] for i in failed][:3])
        compare(t, "merged instance", got, ref, may_fail=failed)
        got2, _ = run_all(srv, jobs())
        compare(t, "merged instance, on a new comm world", got2, ref)
        lay = srv.wait_idle(60, AUTH)
        t.check("merged instance: up, layout [2], every KV page free", srv.alive() and lay["layout"] == [2] and all(
            i["kv_pages_free"] == i["kv_pages_total"] > 0 for i in lay["instances"]), lay["instances"])
        t.eq("metrics: the failed requests counted as errors",
             srv.metric("proteus_request_success_total", finished_reason="error"), float(len(failed)))
    finally:
        code = srv.stop()
    t.eq("merged instance fails: SIGTERM exit code 0", code, 0)


def main():
    t = Runner()
    ref = {}
    try:
        t.run(test_reference, ref)
        if len(ref) == len(jobs()) + len(jobs(long=True)) and all(r[0] == "ok" for r in ref.values()):
            t.run(test_transient_fault, ref)
            t.run(test_merge_fails, ref)
            t.run(test_merged_instance_fails, ref)
    finally:
        shutil.rmtree(TMP, ignore_errors=True)
    return t.summary()


if __name__ == "__main__":
    sys.exit(main())
