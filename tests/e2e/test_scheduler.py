#!/usr/bin/env python3
"""The scheduler drives the live server: `proteus serve --policy dynamic`.

usage: test_scheduler.py [PATH/TO/proteus]
A dynamic server on two CPU devices (TP 1 and 2 allowed, layout [1,1]) whose
KV pools are small (--kv-memory-mb 4: 16 head pages a device, a TP1 instance
holds 80 tokens of SmolLM2's 3 KV heads, a TP2 instance 128):
  - a request of 200 + 8 tokens fits no degree: 400, code "too_long";
  - short requests run; a long one (100-token prompt, streamed) arrives: the
    scheduler holds it, merges the two devices (log and /metrics: a hold, a
    merge for "cannot_fit", a transformation that moved the running short
    requests), places it on the TP2 instance; every request completes;
  - after --hysteresis (2 s) with nothing needing TP2, a split back to [1,1]
    (log and /metrics), and every KV page free;
  - --save-cost wrote the calibrated cost model, which a static server then
    loads with --cost-file instead of calibrating;
  - with every transformation failing (PROTEUS_XFORM_FAIL), the long request
    stays held until --request-timeout (504), the scheduler waits after each
    failed merge, and a request held at shutdown gets a 503.
Every request's tokens and log-probabilities equal those of the same request
on a static server started as one TP2 instance (greedy: the engine is
bit-identical across TP degrees and layout changes). Exits 77 when the
default model or the openai package is missing; prints "N passed, N failed"
last.
"""
import concurrent.futures
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serverlib  # noqa: E402
from serverlib import Runner, Server  # noqa: E402

BIN = serverlib.find_binary()
serverlib.skip_unless_ready(BIN, need_openai=True)
import openai  # noqa: E402

COST_FILE = os.path.join(tempfile.mkdtemp(prefix="proteus-e2e-sched-"), "cost.json")
# The page counts above are of F32 pages.
COMMON = ["--devices", "cpu:2", "--threads", "2", "--kv-memory-mb", "4", "--kv-dtype", "f32", "--max-running", "4"]
DYNAMIC = COMMON + ["--policy", "dynamic", "--scheduler-allowed-tp", "1,2", "--hysteresis", "2",
                    "--log-level", "debug", "--save-cost", COST_FILE]
STATIC_TP2 = COMMON + ["--layout", "2", "--cost-file", COST_FILE]

TEXT = ("The lighthouse keeper climbed the stairs every evening to light the lamp, and the ships that passed "
        "in the night never knew his name. ")
# Two short requests, one on each TP1 instance, still running when the merge
# commits (on a quiet machine; the test does not depend on it): each holds 3
# pages of each head, so that after the merge the device holding 2 of the 3
# heads has room for them (with four, it would not: the merge would fail in
# its commit and roll back).
SHORT_PROMPTS = ["Name three prime numbers.", "def add(a, b):"]
SHORT_MAX = 40
LONG_LEN, LONG_MAX = 100, 16   # 116 tokens: more than a TP1 instance holds (80), less than TP2 (128)
TOO_LONG_LEN = 200             # 208 tokens: more than any degree holds


def prompt_ids(srv, n):
    """n token ids of TEXT repeated, from the server's own tokenizer."""
    st, body = srv.post_json("/tokenize", {"prompt": TEXT * 8, "add_special_tokens": False})
    if st != 200 or len(body.get("tokens", [])) < n:
        raise serverlib.ServerError("/tokenize answered %s: %r" % (st, str(body)[:200]))
    return body["tokens"][:n]


def complete(cl, srv, prompt, max_tokens, stream=False):
    """(text, [(token, logprob)], finish_reason) of a greedy completion, fixed length."""
    kw = dict(model=srv.model_name, prompt=prompt, max_tokens=max_tokens, temperature=0, logprobs=0,
              extra_body={"ignore_eos": True})
    if not stream:
        r = cl.completions.create(**kw)
        c = r.choices[0]
        return c.text, list(zip(c.logprobs.tokens, c.logprobs.token_logprobs)), c.finish_reason
    text, lps, finish = "", [], None
    for ch in cl.completions.create(stream=True, **kw):
        if ch.choices:
            text += ch.choices[0].text or ""
            finish = ch.choices[0].finish_reason or finish
            if ch.choices[0].logprobs:
                lps += list(zip(ch.choices[0].logprobs.tokens, ch.choices[0].logprobs.token_logprobs))
    return text, lps, finish


def layout(srv):
    return srv.layout()


def client(srv):
    srv.model_name = layout_model(srv)
    return openai.OpenAI(base_url=srv.base_url + "/v1", api_key="none", max_retries=0, timeout=300)


def layout_model(srv):
    st, _, body = srv.request("GET", "/v1/models", timeout=30)
    return json.loads(body)["data"][0]["id"]


def wait_layout(srv, want, timeout):
    deadline = time.time() + timeout
    lay = layout(srv)
    while time.time() < deadline:
        idle = all(i["running"] == 0 and i["waiting"] == 0 and i["kv_pages_free"] == i["kv_pages_total"]
                   for i in lay["instances"])
        if lay["layout"] == want and idle and not lay["transformation"]["in_progress"]:
            break
        time.sleep(0.2)
        lay = layout(srv)
    return lay


def decisions(srv, decision, reason=None):
    labels = {"decision": decision}
    if reason:
        labels["reason"] = reason
    return srv.metric("proteus_scheduler_decisions_total", **labels) or 0


RESULTS = {}


def test_dynamic(t):
    with Server(BIN, DYNAMIC, name="dynamic") as srv:
        cl = client(srv)
        lay = layout(srv)
        t.eq("start: layout [1,1]", lay["layout"], [1, 1])
        sc = lay.get("scheduler", {})
        t.eq("start: policy dynamic over TP 1, 2", (sc.get("policy"), sc.get("allowed_tp")), ("dynamic", [1, 2]))
        t.eq("start: cost model calibrated", sc.get("cost_model"), "calibrated at start-up")
        log = srv.stderr()
        t.check("start: calibration logged for TP 1 and 2",
                "cost model: TP 1 calibrated" in log and "cost model: TP 2 calibrated" in log, log[-1500:])
        t.check("start: --save-cost wrote the model", "cost model: written to " + COST_FILE in log)
        try:
            with open(COST_FILE) as f:
                cost = json.load(f)
        except (OSError, ValueError) as e:
            cost = {"error": str(e)}
        t.eq("cost file: degrees 1 and 2", sorted(cost.get("tp", {})), ["1", "2"])
        t.check("cost file: pages of a device", cost.get("device_bytes", 0) > cost.get("reserve_bytes", 0) > 0, cost)

        # Fits no degree: refused by the scheduler, with its reason.
        too_long = prompt_ids(srv, TOO_LONG_LEN)
        try:
            cl.completions.create(model=srv.model_name, prompt=too_long, max_tokens=8, temperature=0)
            t.check("too long: refused", False, "accepted")
        except openai.BadRequestError as e:
            err = e.body if isinstance(e.body, dict) else {}
            t.eq("too long: 400 with code too_long", (e.status_code, err.get("code")), (400, "too_long"))
            t.check("too long: the message says why", "fit no allowed degree" in err.get("message", ""), err)
        t.eq("too long: counted", decisions(srv, "reject", "too_long"), 1)

        # Short requests run on the TP1 instances; the long one needs TP2.
        long_ids = prompt_ids(srv, LONG_LEN)
        with concurrent.futures.ThreadPoolExecutor(len(SHORT_PROMPTS) + 1) as pool:
            shorts = [pool.submit(complete, cl, srv, p, SHORT_MAX) for p in SHORT_PROMPTS]
            time.sleep(0.2)
            t0 = time.time()
            longf = pool.submit(complete, cl, srv, long_ids, LONG_MAX, True)
            RESULTS["dyn_short"] = [f.result() for f in shorts]
            RESULTS["dyn_long"] = longf.result()
            long_s = time.time() - t0
        print("   long request: %.2f s (held, merge, prefill, %d tokens)" % (long_s, LONG_MAX))
        t.eq("long: completed, all its tokens", (RESULTS["dyn_long"][2], len(RESULTS["dyn_long"][1])),
             ("length", LONG_MAX))
        t.check("shorts: completed", all(r[2] == "length" and len(r[1]) == SHORT_MAX for r in RESULTS["dyn_short"]),
                [r[2] for r in RESULTS["dyn_short"]])
        log = srv.stderr()
        t.check("log: held for a merge", "[hold/hold_for_merge]" in log)
        t.check("log: the scheduler's merge started", "to TP2 for request" in log and "[merge/cannot_fit]: started as xf-1"
                in log, log[-3000:])
        t.check("log: the merge done", "now 1 instance: [2] cpu0+cpu1" in log)
        moved = [line for line in log.splitlines() if "(merge [1,1] -> [2] on devices 0-1): done:" in line]
        print("   " + (moved[0].split("done: ", 1)[1][:120] if moved else "no merge done"))
        t.check("log: placed on the merged instance", "[place/long_to_merged]" in log)
        # A held request is offered again after each change; held again, it is not counted again.
        t.eq("metrics: one hold", decisions(srv, "hold", "hold_for_merge"), 1)
        t.eq("metrics: one merge for cannot_fit", decisions(srv, "merge", "cannot_fit"), 1)
        t.eq("metrics: placed long to merged", decisions(srv, "place", "long_to_merged"), 1)
        t.eq("metrics: the merge went through", srv.metric("proteus_transformations_total", kind="merge", result="ok"), 1)
        t.eq("metrics: nothing held now", srv.metric("proteus_scheduler_held_requests"), 0)
        t.eq("metrics: policy", srv.metric("proteus_scheduler_policy", policy="dynamic"), 1)

        # Nothing needs TP2 any more: after the hysteresis, a split back.
        lay = wait_layout(srv, [1, 1], 30)
        t.eq("split: back to [1,1]", lay["layout"], [1, 1])
        t.eq("split: counted", decisions(srv, "split", "not_needed"), 1)
        t.eq("split: went through", srv.metric("proteus_transformations_total", kind="split", result="ok"), 1)
        t.check("split: logged", "[split/not_needed]: started as xf-2" in srv.stderr(), srv.stderr()[-2000:])
        t.check("split: every page free",
                all(i["kv_pages_free"] == i["kv_pages_total"] for i in lay["instances"]), lay["instances"])
        sc = lay["scheduler"]
        t.eq("layout view: decisions", (sc["decisions"]["merge"]["cannot_fit"], sc["decisions"]["split"]["not_needed"],
                                        sc["decisions"]["hold"]["hold_for_merge"], sc["held"]), (1, 1, 1, 0))
        t.check("layout view: the last transformation decision", "split TP2" in (sc["last_transformation_decision"] or ""),
                sc)
        # A short request after the split: on a TP1 instance again.
        before = [i["requests_total"] for i in lay["instances"]]
        RESULTS["dyn_after"] = complete(cl, srv, SHORT_PROMPTS[0], SHORT_MAX)
        after = [i["requests_total"] for i in layout(srv)["instances"]]
        t.eq("after the split: a short request on one TP1 instance", sum(after) - sum(before), 1)
    t.eq("dynamic: exit code 0 after SIGTERM", srv.exit_code, 0)


def test_static_reference(t):
    """The same requests on a static TP2 server: the reference tokens."""
    if not os.path.exists(COST_FILE):
        t.check("reference: the cost file exists", False, COST_FILE)
        return
    with Server(BIN, STATIC_TP2, name="static") as srv:
        cl = client(srv)
        lay = layout(srv)
        t.eq("static: layout [2], policy static", (lay["layout"], lay["scheduler"]["policy"]), ([2], "static"))
        t.eq("static: cost model from the file", lay["scheduler"]["cost_model"], COST_FILE)
        log = srv.stderr()
        t.check("static: loaded, not calibrated", "cost model: from " + COST_FILE in log and "calibrated from" not in log)
        long_ref = complete(cl, srv, prompt_ids(srv, LONG_LEN), LONG_MAX, True)
        short_ref = [complete(cl, srv, p, SHORT_MAX) for p in SHORT_PROMPTS]
        t.eq("static: no transformation", srv.metric("proteus_transformations_total"), 0)
    t.eq("static: exit code 0", srv.exit_code, 0)
    if "dyn_long" not in RESULTS:
        return
    t.check("long: the tokens and logprobs of a static TP2 server", RESULTS["dyn_long"][1] == long_ref[1],
            "%r vs %r" % (RESULTS["dyn_long"][0], long_ref[0]))
    t.eq("long: the same text", RESULTS["dyn_long"][0], long_ref[0])
    for i, (got, want) in enumerate(zip(RESULTS["dyn_short"], short_ref)):
        t.check("short %d: the tokens and logprobs of a static TP2 server" % i, got[1] == want[1],
                "%r vs %r" % (got[0], want[0]))
    t.check("after the split: the same tokens", RESULTS["dyn_after"][1] == short_ref[0][1])


def test_held_timeout_and_shutdown(t):
    """Every merge fails (PROTEUS_XFORM_FAIL): the long request stays held
    until its timeout (504), the scheduler backs off after each failure, and
    a request still held at shutdown gets a 503."""
    args = [a for a in DYNAMIC if a not in ("--save-cost", COST_FILE)] + ["--request-timeout", "3"]
    with Server(BIN, args, env={"PROTEUS_XFORM_FAIL": "precopy_alloc"}, name="failing") as srv:
        cl = client(srv)
        long_ids = prompt_ids(srv, LONG_LEN)
        t0 = time.time()
        try:
            cl.completions.create(model=srv.model_name, prompt=long_ids, max_tokens=LONG_MAX, temperature=0)
            t.check("held: timed out", False, "completed")
        except openai.APIStatusError as e:
            t.eq("held: 504 after the request timeout", e.status_code, 504)
            t.check("held: the message says it was held", "held" in str(e.body), e.body)
        waited = time.time() - t0
        t.check("held: about the 3 s timeout", 2.5 <= waited <= 8, waited)
        t.eq("held: none held now", srv.metric("proteus_scheduler_held_requests"), 0)
        failed = srv.metric("proteus_transformations_total", kind="merge", result="failed") or 0
        t.check("held: the merges failed and were rolled back", failed >= 1, failed)
        t.check("held: at most one merge a second after a failure", failed <= 3, failed)
        log = srv.stderr()
        t.check("held: the back-off logged", "scheduler: its transformation xf-1 failed; no other for 1 s" in log,
                log[-2000:])
        t.eq("held: the layout stays [1,1]", layout(srv)["layout"], [1, 1])
        # Held when the server stops: refused with a 503.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            f = pool.submit(lambda: cl.completions.create(model=srv.model_name, prompt=long_ids, max_tokens=LONG_MAX,
                                                          temperature=0, stream=True))
            srv.wait_metric("proteus_scheduler_held_requests", 1, timeout=30)
            srv.proc.send_signal(__import__("signal").SIGTERM)
            try:
                f.result(timeout=60)
                t.check("shutdown: held request refused", False, "accepted")
            except openai.APIStatusError as e:
                t.eq("shutdown: held request gets 503", e.status_code, 503)
        try:
            srv.proc.wait(60)  # before stop(): a second SIGTERM while it closes would kill it
        except Exception:  # noqa: BLE001 -- stop() kills it and the exit code says so
            pass
    t.eq("failing: exit code 0", srv.exit_code, 0)


def main():
    t = Runner()
    t.run(test_dynamic)
    t.run(test_static_reference)
    t.run(test_held_timeout_and_shutdown)
    return t.summary()


if __name__ == "__main__":
    sys.exit(main())
