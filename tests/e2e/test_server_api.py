#!/usr/bin/env python3
"""End-to-end tests of `proteus serve` through the official openai client.

usage: test_server_api.py [PATH/TO/proteus]
Exits 77 when the default model or the openai package is missing; prints
"N passed, N failed" last; exit code 1 on any failure.
"""
import concurrent.futures
import os
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serverlib  # noqa: E402
from serverlib import Runner, Server  # noqa: E402

BIN = serverlib.find_binary()
serverlib.skip_unless_ready(BIN, need_openai=True)
import openai  # noqa: E402

PROMPT = "The capital of France is"
PARITY_PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village,",
    "def fibonacci(n):",
    "List three primary colors:",
]
PARITY_N = 20
SECRET = "sk-e2e-SECRET-7f3a91c2"


def client(srv, key="none"):
    return openai.OpenAI(base_url=srv.base_url + "/v1", api_key=key, max_retries=0, timeout=120)


def chat_msgs(text="Say hello in one short sentence."):
    return [{"role": "user", "content": text}]


# ---------------------------------------------------------------------------

def test_models(t, srv, cl):
    models = cl.models.list()
    ids = [m.id for m in models.data]
    t.eq("models: served name listed", ids, ["SmolLM2-135M-Instruct"])
    srv.model_name = ids[0] if ids else "SmolLM2-135M-Instruct"


def test_completions(t, srv, cl):
    r = cl.completions.create(model=srv.model_name, prompt=PROMPT, max_tokens=12, temperature=0)
    t.eq("completions: object", r.object, "text_completion")
    t.eq("completions: one choice", len(r.choices), 1)
    t.check("completions: text non-empty", len(r.choices[0].text) > 0, repr(r.choices[0].text))
    t.check("completions: finish_reason", r.choices[0].finish_reason in ("length", "stop"), r.choices[0].finish_reason)
    t.eq("completions: usage.total", r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens)
    if r.choices[0].finish_reason == "length":
        t.eq("completions: completion_tokens == max_tokens", r.usage.completion_tokens, 12)
    chunks = list(cl.completions.create(model=srv.model_name, prompt=PROMPT, max_tokens=12, temperature=0,
                                        stream=True))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    t.eq("completions stream: same text as non-streamed (greedy)", text, r.choices[0].text)
    fin = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    t.eq("completions stream: one finish_reason at the end", fin, [r.choices[0].finish_reason])
    t.check("completions stream: every chunk has the same id", len({c.id for c in chunks}) == 1)


def test_chat(t, srv, cl):
    r = cl.chat.completions.create(model=srv.model_name, messages=chat_msgs(), max_tokens=12, temperature=0)
    t.eq("chat: object", r.object, "chat.completion")
    t.eq("chat: role", r.choices[0].message.role, "assistant")
    t.check("chat: content non-empty", bool(r.choices[0].message.content), repr(r.choices[0].message.content))
    t.check("chat: usage counted", r.usage.prompt_tokens > 5 and r.usage.completion_tokens > 0, r.usage)
    chunks = list(cl.chat.completions.create(model=srv.model_name, messages=chat_msgs(), max_tokens=12,
                                             temperature=0, stream=True))
    t.eq("chat stream: object", {c.object for c in chunks}, {"chat.completion.chunk"})
    t.eq("chat stream: first delta has role", chunks[0].choices[0].delta.role, "assistant")
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    t.eq("chat stream: same text as non-streamed (greedy)", text, r.choices[0].message.content)
    t.eq("chat stream: finish_reason", chunks[-1].choices[0].finish_reason, r.choices[0].finish_reason)


def test_include_usage(t, srv, cl):
    for kind in ("chat", "completions"):
        if kind == "chat":
            ref = cl.chat.completions.create(model=srv.model_name, messages=chat_msgs(), max_tokens=10,
                                             temperature=0)
            chunks = list(cl.chat.completions.create(model=srv.model_name, messages=chat_msgs(), max_tokens=10,
                                                     temperature=0, stream=True,
                                                     stream_options={"include_usage": True}))
        else:
            ref = cl.completions.create(model=srv.model_name, prompt=PROMPT, max_tokens=10, temperature=0)
            chunks = list(cl.completions.create(model=srv.model_name, prompt=PROMPT, max_tokens=10, temperature=0,
                                                stream=True, stream_options={"include_usage": True}))
        last = chunks[-1]
        t.eq("%s include_usage: last chunk has empty choices" % kind, list(last.choices), [])
        t.check("%s include_usage: last chunk has usage" % kind, last.usage is not None)
        if last.usage is not None:
            got = (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens)
            want = (ref.usage.prompt_tokens, ref.usage.completion_tokens, ref.usage.total_tokens)
            t.eq("%s include_usage: counts match non-streamed" % kind, got, want)
        t.check("%s include_usage: other chunks have usage null" % kind,
                all(c.usage is None for c in chunks[:-1]))


def test_stop(t, srv, cl):
    full = cl.completions.create(model=srv.model_name, prompt=PROMPT, max_tokens=16, temperature=0,
                                 extra_body={"ignore_eos": True}).choices[0].text
    # A stop string from the middle of the greedy text: the output must end just before it.
    words = [w for w in full.split(" ") if len(w) >= 3]
    stop = words[len(words) // 2] if words else "."
    want = full[:full.index(stop)]
    for stream in (False, True):
        if stream:
            chunks = list(cl.completions.create(model=srv.model_name, prompt=PROMPT, max_tokens=16, temperature=0,
                                                stop=[stop], stream=True))
            text = "".join(c.choices[0].text for c in chunks if c.choices)
            fin = chunks[-1].choices[0].finish_reason
        else:
            r = cl.completions.create(model=srv.model_name, prompt=PROMPT, max_tokens=16, temperature=0,
                                      stop=[stop])
            text, fin = r.choices[0].text, r.choices[0].finish_reason
        tag = "stream" if stream else "plain"
        t.eq("stop (%s): text ends before %r" % (tag, stop), text, want)
        t.check("stop (%s): stop string not in text" % tag, stop not in text, text)
        t.eq("stop (%s): finish_reason" % tag, fin, "stop")
    r = cl.chat.completions.create(model=srv.model_name, messages=chat_msgs("Count from 1 to 10."), max_tokens=40,
                                   temperature=0, stop=["5"])
    t.check("stop (chat): '5' absent", "5" not in (r.choices[0].message.content or ""), r.choices[0].message.content)


def test_n(t, srv, cl):
    r = cl.completions.create(model=srv.model_name, prompt=PROMPT, max_tokens=8, temperature=0.8, n=3, seed=11)
    t.eq("n=3: three choices", len(r.choices), 3)
    t.eq("n=3: indexes 0..2", sorted(c.index for c in r.choices), [0, 1, 2])
    one = cl.completions.create(model=srv.model_name, prompt=PROMPT, max_tokens=8, temperature=0.8, seed=11)
    # OpenAI and vLLM count the prompt once, whatever n is.
    t.eq("n=3: usage.prompt_tokens counts the prompt once", r.usage.prompt_tokens, one.usage.prompt_tokens)
    r = cl.completions.create(model=srv.model_name, prompt=PROMPT, max_tokens=8, temperature=0.8, n=3,
                              extra_body={"ignore_eos": True})
    t.eq("n=3: usage.completion_tokens sums the choices", r.usage.completion_tokens, 3 * 8)
    chunks = list(cl.chat.completions.create(model=srv.model_name, messages=chat_msgs(), max_tokens=8,
                                             temperature=0.8, n=3, stream=True,
                                             stream_options={"include_usage": True}))
    idx = sorted({c.choices[0].index for c in chunks if c.choices})
    t.eq("n=3 chat stream: indexes 0..2", idx, [0, 1, 2])
    fins = [c.choices[0].index for c in chunks if c.choices and c.choices[0].finish_reason]
    t.eq("n=3 chat stream: one finish per choice", sorted(fins), [0, 1, 2])


def test_seed(t, srv, cl):
    def gen(seed):
        return cl.completions.create(model=srv.model_name, prompt="Tell me a story:", max_tokens=16,
                                     temperature=0.8, seed=seed).choices[0].text
    a, b = gen(1234), gen(1234)
    t.eq("seed: same seed, temperature 0.8 -> same text", a, b)
    texts = [gen(s) for s in (1, 2, 3)]
    t.check("seed: different seeds -> at least one differs", len(set(texts)) > 1, texts)
    c = cl.chat.completions.create(model=srv.model_name, messages=chat_msgs("Tell me a story."), max_tokens=12,
                                   temperature=0.8, seed=99).choices[0].message.content
    d = cl.chat.completions.create(model=srv.model_name, messages=chat_msgs("Tell me a story."), max_tokens=12,
                                   temperature=0.8, seed=99).choices[0].message.content
    t.eq("seed (chat): same seed -> same text", c, d)


def test_logprobs(t, srv, cl):
    r = cl.chat.completions.create(model=srv.model_name, messages=chat_msgs(), max_tokens=6, temperature=0,
                                   logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content if r.choices[0].logprobs else None
    t.check("logprobs: content present", content is not None and len(content) > 0)
    if not content:
        return
    t.eq("logprobs: one entry per token", len(content), r.usage.completion_tokens)
    t.check("logprobs: 3 alternatives each", all(len(e.top_logprobs) == 3 for e in content),
            [len(e.top_logprobs) for e in content])
    t.check("logprobs: alternatives sorted", all(
        all(e.top_logprobs[i].logprob >= e.top_logprobs[i + 1].logprob for i in range(len(e.top_logprobs) - 1))
        for e in content))
    t.check("logprobs: values <= 0", all(e.logprob <= 0 and all(a.logprob <= 0 for a in e.top_logprobs)
                                         for e in content))
    # Greedy: the chosen token is the most likely one.
    t.check("logprobs: greedy token is top-1", all(e.token == e.top_logprobs[0].token for e in content),
            [(e.token, e.top_logprobs[0].token) for e in content])
    t.eq("logprobs: tokens join to the text", "".join(e.token for e in content), r.choices[0].message.content)
    chunks = list(cl.chat.completions.create(model=srv.model_name, messages=chat_msgs(), max_tokens=6, temperature=0,
                                             logprobs=True, top_logprobs=3, stream=True))
    sl = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    t.eq("logprobs stream: same tokens as non-streamed", [e.token for e in sl], [e.token for e in content])


def run_stream(cl, model, prompt, max_tokens, extra):
    chunks = list(cl.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0.7,
                                        stream=True, stream_options={"include_usage": True}, extra_body=extra))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    fin = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    usage = chunks[-1].usage
    return text, fin, usage


def test_concurrent_streams(t, srv, cl):
    n_clients, max_tokens = 32, 16
    barrier = threading.Barrier(n_clients)

    def one(i):
        c = client(srv)
        barrier.wait(timeout=60)
        return run_stream(c, srv.model_name, "Client %d says:" % i, max_tokens, {"ignore_eos": True})

    with concurrent.futures.ThreadPoolExecutor(n_clients) as ex:
        futs = [ex.submit(one, i) for i in range(n_clients)]
        res, errs = [], []
        for f in futs:
            try:
                res.append(f.result(timeout=300))
            except Exception as e:  # noqa: BLE001
                errs.append(repr(e))
    t.eq("32 streams: all completed", (len(res), errs[:3]), (n_clients, []))
    t.check("32 streams: completion_tokens == %d each" % max_tokens,
            all(u is not None and u.completion_tokens == max_tokens for _, _, u in res),
            [u.completion_tokens if u else None for _, _, u in res])
    t.check("32 streams: finish_reason length each", all(f == ["length"] for _, f, _ in res), [f for _, f, _ in res])
    t.eq("32 streams: requests running back to 0", srv.wait_metric("proteus_num_requests_running", 0), 0)


def test_greedy_parity(t, srv, cl):
    want = {p: serverlib.generate_cli(BIN, p, PARITY_N) for p in PARITY_PROMPTS}
    for p in PARITY_PROMPTS:
        got = cl.completions.create(model=srv.model_name, prompt=p, max_tokens=PARITY_N, temperature=0)
        t.eq("parity alone: %r" % p, got.choices[0].text, want[p])

    # Under concurrency: the parity prompts (twice each, one streamed) among sampled noise.
    def parity(p, stream):
        c = client(srv)
        if stream:
            return "".join(ch.choices[0].text for ch in c.completions.create(
                model=srv.model_name, prompt=p, max_tokens=PARITY_N, temperature=0, stream=True) if ch.choices)
        return c.completions.create(model=srv.model_name, prompt=p, max_tokens=PARITY_N,
                                    temperature=0).choices[0].text

    def noise(i):
        c = client(srv)
        return c.completions.create(model=srv.model_name, prompt="Noise %d: a long time ago" % i * (1 + i % 3),
                                    max_tokens=8 + i % 17, temperature=1.0, extra_body={"ignore_eos": True})

    with concurrent.futures.ThreadPoolExecutor(16) as ex:
        futs = {}
        for i in range(8):
            ex.submit(noise, i)
        for p in PARITY_PROMPTS:
            for stream in (False, True):
                futs[(p, stream)] = ex.submit(parity, p, stream)
        for i in range(8, 12):
            ex.submit(noise, i)
        for (p, stream), f in futs.items():
            t.eq("parity concurrent (%s): %r" % ("stream" if stream else "plain", p), f.result(timeout=300), want[p])


def test_tokenize(t, srv, cl):
    text = "Hello, world! Ünïcödé and emoji \U0001F600 too."
    st, r = srv.post_json("/tokenize", {"prompt": text})
    t.eq("tokenize: 200", st, 200)
    if st != 200:
        return
    t.eq("tokenize: count == len(tokens)", r.get("count"), len(r.get("tokens", [])))
    st, d = srv.post_json("/detokenize", {"tokens": r["tokens"]})
    t.eq("detokenize: 200", st, 200)
    t.eq("tokenize/detokenize round-trip", d.get("prompt") if isinstance(d, dict) else d, text)
    comp = cl.completions.create(model=srv.model_name, prompt=text, max_tokens=1, temperature=0)
    t.eq("tokenize: count == completions usage.prompt_tokens", r["count"], comp.usage.prompt_tokens)


def test_auth(t):
    srv = Server(BIN, ["--api-key", SECRET], name="auth").start()
    try:
        body = {"prompt": "Hi", "max_tokens": 2}
        st, r = srv.post_json("/v1/completions", body)
        t.eq("auth: no key -> 401", st, 401)
        err = r.get("error", {}) if isinstance(r, dict) else {}
        t.check("auth: OpenAI error shape", isinstance(err, dict) and isinstance(err.get("message"), str) and
                "type" in err and "param" in err and "code" in err, r)
        t.eq("auth: error.type", err.get("type"), "authentication_error")
        cases = [
            ("wrong key", "/v1/completions", {"Authorization": "Bearer wrong-" + SECRET}),
            ("query string", "/v1/completions?api_key=" + SECRET, {}),
            ("X-Api-Key header", "/v1/completions", {"X-Api-Key": SECRET}),
            ("no Bearer", "/v1/completions", {"Authorization": SECRET}),
            ("key prefix", "/v1/completions", {"Authorization": "Bearer " + SECRET[:-1]}),
            ("key + suffix", "/v1/completions", {"Authorization": "Bearer " + SECRET + "x"}),
        ]
        for name, path, h in cases:
            st, _ = srv.post_json(path, body, headers=h)
            t.eq("auth: %s -> 401" % name, st, 401)
        st, _, _ = srv.request("GET", "/v1/models")
        t.eq("auth: GET /v1/models without key -> 401", st, 401)
        st, r = srv.post_json("/v1/completions", body, headers={"Authorization": "Bearer " + SECRET})
        t.eq("auth: right key -> 200", st, 200)
        st, _, _ = srv.request("GET", "/health")
        t.eq("auth: /health without key -> 200", st, 200)
        st, _, _ = srv.request("GET", "/metrics")
        t.eq("auth: /metrics without key -> 200", st, 200)
        # The official client: wrong key raises AuthenticationError, right key works.
        try:
            client(srv, "wrong").models.list()
            t.check("auth: openai client, wrong key raises AuthenticationError", False)
        except openai.AuthenticationError:
            t.check("auth: openai client, wrong key raises AuthenticationError", True)
        ids = [m.id for m in client(srv, SECRET).models.list().data]
        t.eq("auth: openai client, right key lists the model", len(ids), 1)
        r = client(srv, SECRET).chat.completions.create(model=ids[0], messages=chat_msgs(), max_tokens=3,
                                                        stream=True)
        t.check("auth: openai client, right key streams", len(list(r)) > 0)
    finally:
        code = srv.stop()
    t.eq("auth server: SIGTERM exit code 0", code, 0)
    log = srv.stderr()
    t.check("auth: access log was captured", "/v1/completions" in log, log[-500:])
    t.check("auth: access log never contains the key", SECRET not in log and SECRET[:-1] not in log,
            [ln for ln in log.splitlines() if SECRET[:10] in ln][:3])


def main():
    t = Runner()
    srv = Server(BIN, [], name="api").start()
    cl = client(srv)
    try:
        for fn in (test_models, test_completions, test_chat, test_include_usage, test_stop, test_n, test_seed,
                   test_logprobs, test_concurrent_streams, test_greedy_parity, test_tokenize):
            t.run(fn, srv, cl)
        t.eq("after: kv pages used 0", srv.wait_metric("proteus_kv_pages_used", 0), 0)
        t.check("after: server alive", srv.alive())
    finally:
        code = srv.stop()
    t.eq("api server: SIGTERM exit code 0", code, 0)
    t.run(test_auth)
    return t.summary()


if __name__ == "__main__":
    sys.exit(main())
