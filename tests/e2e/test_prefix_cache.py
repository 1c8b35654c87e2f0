#!/usr/bin/env python3
"""Prefix caching through the HTTP API: `proteus serve` (cache on by default).

usage: test_prefix_cache.py [PATH/TO/proteus]
  - the same 120-token prompt twice: the second finds 112 of its tokens
    cached (7 pages of 16: the last token is always computed), counted in
    proteus_prefix_cache_queries_total / _hits_total; its tokens and
    log-probabilities equal the first's and those of a server started with
    --prefix-caching=false (which counts no hits);
  - a prompt sharing 40 tokens finds 32 (2 full pages);
  - "cache_prompt": false neither looks up nor counts; a "cache_salt" sees
    only pages cached under the same salt;
  - bad values of both are 400 with the OpenAI error shape naming the field;
  - at the end, every KV page is free or cached (kv_pages_free == total in
    GET /v1/layout) and proteus_prefix_cache_pages > 0;
  - on two CPU devices, the cached pages follow the layout: after a merge
    [1,1] -> [2] (POST /v1/layout) and a split back, the prompt still finds
    its 112 tokens, with the same output.
Exits 77 when the default model or the openai package is missing; prints
"N passed, N failed" last.
"""
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serverlib  # noqa: E402
from serverlib import Runner, Server  # noqa: E402

BIN = serverlib.find_binary()
serverlib.skip_unless_ready(BIN, need_openai=True)
import openai  # noqa: E402

TEXT = ("A river remembers every stone it has passed, and the stones remember the river; between them they "
        "keep the only map of the valley that was ever drawn. ")
MAX = 12


def prompt_ids(srv, n, text=TEXT):
    st, body = srv.post_json("/tokenize", {"prompt": text * 10, "add_special_tokens": False})
    if st != 200 or len(body.get("tokens", [])) < n:
        raise serverlib.ServerError("/tokenize answered %s: %r" % (st, str(body)[:200]))
    return body["tokens"][:n]


def model_of(srv):
    return json.loads(srv.request("GET", "/v1/models")[2])["data"][0]["id"]


def complete(cl, srv, prompt, **extra):
    r = cl.completions.create(model=model_of(srv), prompt=prompt, max_tokens=MAX, temperature=0, logprobs=0,
                              extra_body=dict(ignore_eos=True, **extra))
    c = r.choices[0]
    return list(zip(c.logprobs.tokens, c.logprobs.token_logprobs))


def counts(srv):
    return (srv.metric("proteus_prefix_cache_queries_total") or 0, srv.metric("proteus_prefix_cache_hits_total") or 0)


def test_cache(t):
    with Server(BIN, ["--max-running", "4"], name="cached") as srv, \
            Server(BIN, ["--max-running", "4", "--prefix-caching=false"], name="uncached") as ref:
        cl = openai.OpenAI(base_url=srv.base_url + "/v1", api_key="x")
        rcl = openai.OpenAI(base_url=ref.base_url + "/v1", api_key="x")
        a = prompt_ids(srv, 120)
        want = complete(rcl, ref, a)
        t.eq("uncached server: two runs agree", complete(rcl, ref, a), want)
        t.eq("uncached server: no hits", counts(ref)[1], 0)

        t.eq("first run: same output as uncached", complete(cl, srv, a), want)
        t.eq("first run: 120 queried, 0 hit", counts(srv), (120, 0))
        t.eq("second run: same output", complete(cl, srv, a), want)
        t.eq("second run: 112 of 120 hit (7 pages, last token computed)", counts(srv), (240, 112))

        b = a[:40] + prompt_ids(srv, 60, "Entirely different words follow here, about cats and the moon. ")
        q0, h0 = counts(srv)
        t.eq("shared 40 tokens: same output as uncached", complete(cl, srv, b), complete(rcl, ref, b))
        t.eq("shared 40 tokens: 2 pages hit", counts(srv), (q0 + 100, h0 + 32))

        q0, h0 = counts(srv)
        t.eq("cache_prompt false: same output", complete(cl, srv, a, cache_prompt=False), want)
        t.eq("cache_prompt false: not looked up", counts(srv), (q0, h0))
        t.eq("cache_salt: same output", complete(cl, srv, a, cache_salt="tenant-a"), want)
        t.eq("cache_salt: the unsalted pages are not seen", counts(srv), (q0 + 120, h0))
        complete(cl, srv, a, cache_salt="tenant-a")
        t.eq("cache_salt: its own pages are", counts(srv), (q0 + 240, h0 + 112))

        for body, field in [({"cache_salt": 5}, "cache_salt"), ({"cache_salt": ""}, "cache_salt"),
                            ({"cache_salt": "x" * 257}, "cache_salt"), ({"cache_prompt": "yes"}, "cache_prompt")]:
            st, err = srv.post_json("/v1/completions", dict(model=model_of(srv), prompt="hi", max_tokens=1, **body))
            e = err.get("error", {}) if isinstance(err, dict) else {}
            t.check("bad %s: 400 naming it" % list(body.items())[0][0], st == 400 and e.get("param") == field,
                    (st, err))

        lay = json.loads(srv.request("GET", "/v1/layout")[2])
        inst = lay["instances"][0]
        t.eq("idle: every page free or cached", inst["kv_pages_free"], inst["kv_pages_total"])
        t.check("cached pages gauge", (srv.metric("proteus_prefix_cache_pages") or 0) > 0)


def relayout(srv, want):
    st, _, body = srv.request("POST", "/v1/layout", {"layout": want}, timeout=60)
    deadline = time.time() + 120
    while time.time() < deadline:
        lay = json.loads(srv.request("GET", "/v1/layout")[2])
        if not lay["transformation"]["in_progress"] and lay["layout"] == want:
            return True
        time.sleep(0.1)
    return False


def test_cache_across_layouts(t):
    with Server(BIN, ["--devices", "cpu:2", "--layout", "1,1", "--allowed-tp", "1,2", "--max-running", "4"],
                name="two-devices", threads="2") as srv:
        cl = openai.OpenAI(base_url=srv.base_url + "/v1", api_key="x")
        a = prompt_ids(srv, 120)
        want = complete(cl, srv, a)
        for lay in ([2], [1, 1]):
            t.check("layout %s" % lay, relayout(srv, lay))
            q0, h0 = counts(srv)
            t.eq("after %s: same output" % lay, complete(cl, srv, a), want)
            t.eq("after %s: 112 of 120 still cached" % lay, counts(srv), (q0 + 120, h0 + 112))


def main():
    t = Runner()
    t.run(test_cache)
    t.run(test_cache_across_layouts)
    return t.summary()


if __name__ == "__main__":
    sys.exit(main())
