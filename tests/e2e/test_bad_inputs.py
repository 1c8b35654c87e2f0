#!/usr/bin/env python3
"""Bad inputs against `proteus serve`, over raw sockets (not the openai client).

usage: test_bad_inputs.py [PATH/TO/proteus]
Every case has an expected status and, where the answer is JSON, error.type
and error.param. Afterwards the server must still answer /health and a normal
completion, hold no KV pages, run no requests, and exit 0 on SIGTERM.
Prints a table (case | expected | got | result), then "N passed, N failed".
Exits 77 when the default model (or the openai package, for parity with the
API test) is missing.
"""
import concurrent.futures
import json
import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serverlib  # noqa: E402
from serverlib import Runner, Server  # noqa: E402

BIN = serverlib.find_binary()
serverlib.skip_unless_ready(BIN, need_openai=True)

MAX_BODY = 65536
MAX_MODEL_LEN = 512
ANY = object()  # "don't care" for error.param


# ---------------------------------------------------------------------------
# Raw HTTP over a socket.

class Conn:
    def __init__(self, port, timeout=60):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def send(self, data):
        self.s.sendall(data)

    def _fill(self):
        d = self.s.recv(65536)
        if not d:
            raise EOFError("connection closed")
        self.buf += d

    def read_until(self, marker):
        while marker not in self.buf:
            self._fill()
        i = self.buf.index(marker) + len(marker)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def read_n(self, n):
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_to_close(self):
        try:
            while True:
                self._fill()
        except (EOFError, ConnectionResetError):
            pass
        out, self.buf = self.buf, b""
        return out

    def response(self, head_only=False):
        """(status, headers dict lower-cased, body bytes) of the next response."""
        head = self.read_until(b"\r\n\r\n").decode("latin-1")
        lines = head.split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for ln in lines[1:]:
            if ":" in ln:
                k, v = ln.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        if head_only:
            return status, headers, b""
        if "content-length" in headers:
            body = self.read_n(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(self.read_until(b"\r\n").strip().split(b";")[0], 16)
                body += self.read_n(size)
                self.read_until(b"\r\n")
                if size == 0:
                    break
        else:
            body = self.read_to_close()
        return status, headers, body

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass


def raw(port, data, timeout=60):
    c = Conn(port, timeout)
    try:
        c.send(data)
        return c.response()
    finally:
        c.close()


def post(path, body, extra=b"", ctype=b"application/json"):
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    elif isinstance(body, str):
        body = body.encode()
    return (b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: " + ctype +
            b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n" + extra + b"\r\n" + body)


def err_of(body):
    try:
        j = json.loads(body)
    except ValueError:
        return None
    return j.get("error") if isinstance(j, dict) else None


# ---------------------------------------------------------------------------

class Table:
    def __init__(self, t):
        self.t = t
        self.rows = []

    def add(self, case, expected, got, ok):
        self.rows.append((case, expected, got, "ok" if ok else "FAIL"))
        self.t.check(case, ok, "expected %s, got %s" % (expected, got))

    def print(self):
        w = [max(len(str(r[i])) for r in self.rows + [("case", "expected", "got", "result")]) for i in range(4)]
        w = [min(x, 60) for x in w]
        fmt = "| %-{}s | %-{}s | %-{}s | %-{}s |".format(*w)
        print()
        print(fmt % ("case", "expected", "got", "result"))
        print("|" + "|".join("-" * (x + 2) for x in w) + "|")
        for r in self.rows:
            print(fmt % tuple(str(x)[:60] for x in r))
        print()


def describe(status, err):
    if err is None:
        return str(status)
    return "%d %s param=%s" % (status, err.get("type"), err.get("param"))


def expect(tab, port, case, data, status, etype=ANY, param=ANY, check=None):
    """One request; compares status and (for JSON errors) error.type and error.param."""
    try:
        st, h, body = raw(port, data)
    except Exception as e:  # noqa: BLE001
        tab.add(case, status, "no response: %r" % e, False)
        return None
    err = err_of(body) if st >= 400 else None
    exp = str(status) if etype is ANY else "%d %s param=%s" % (status, etype, "*" if param is ANY else param)
    ok = st == status
    if st >= 400 and etype is not ANY:
        ok = ok and err is not None and err.get("type") == etype and (param is ANY or err.get("param") == param)
    if ok and check is not None:
        extra = check(st, h, body, err)
        if extra:
            ok = False
            exp += " (" + extra + ")"
    tab.add(case, exp, describe(st, err), ok)
    return st, h, body, err


def comp(**kw):
    d = {"prompt": "Hello", "max_tokens": 4}
    d.update(kw)
    return d


def chat(**kw):
    d = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    d.update(kw)
    return d


IRE = "invalid_request_error"
C, CH = "/v1/completions", "/v1/chat/completions"


def json_cases(tab, port):
    E = lambda case, path, body, status, etype=IRE, param=ANY, **k: expect(tab, port, case, post(path, body),  # noqa
                                                                           status, etype, param, **k)
    E("malformed JSON (truncated object)", C, '{"prompt": "hi",', 400)
    E("malformed JSON (trailing garbage)", C, '{"prompt": "hi"} x', 400)
    E("empty body", C, "", 400)
    E("top level is an array", C, "[1, 2]", 400)
    E("wrong type: prompt 5", C, comp(prompt=5), 400, param="prompt")
    E("wrong type: max_tokens \"10\"", C, comp(max_tokens="10"), 400, param="max_tokens")
    E("wrong type: temperature \"hot\"", C, comp(temperature="hot"), 400, param="temperature")
    E("wrong type: stream \"yes\"", C, comp(stream="yes"), 400, param="stream")
    E("wrong type: messages is a string", CH, {"messages": "hi"}, 400, param="messages")
    E("wrong type: message content 7", CH, {"messages": [{"role": "user", "content": 7}]}, 400, param=ANY)
    E("bad role 'wizard'", CH, {"messages": [{"role": "wizard", "content": "x"}]}, 400, param=ANY)
    E("temperature 3", C, comp(temperature=3), 400, param="temperature")
    E("temperature -0.5", C, comp(temperature=-0.5), 400, param="temperature")
    E("top_p 0", C, comp(top_p=0), 400, param="top_p")
    E("top_p 1.5", C, comp(top_p=1.5), 400, param="top_p")
    E("n 0", C, comp(n=0), 400, param="n")
    E("n 1000", C, comp(n=1000), 400, param="n")
    E("max_tokens 0", C, comp(max_tokens=0), 400, param="max_tokens")
    E("max_tokens -1", C, comp(max_tokens=-1), 400, param="max_tokens")
    E("max_tokens 10^9 (over the context)", C, comp(max_tokens=10 ** 9), 400, param="max_tokens")
    E("max_tokens 2.5", C, comp(max_tokens=2.5), 400, param="max_tokens")
    E("presence_penalty 5", C, comp(presence_penalty=5), 400, param="presence_penalty")
    E("frequency_penalty -3", CH, chat(frequency_penalty=-3), 400, param="frequency_penalty")
    E("empty messages []", CH, {"messages": []}, 400, param="messages")
    E("missing messages", CH, {"max_tokens": 3}, 400, param="messages")
    E("missing prompt", C, {"max_tokens": 3}, 400, param="prompt")
    E("empty prompt \"\"", C, comp(prompt=""), 400, param="prompt")
    E("huge number: temperature 1e400", C, '{"prompt": "hi", "temperature": 1e400}', 400, param=ANY)
    E("huge number: max_tokens 1e400", C, '{"prompt": "hi", "max_tokens": 1e400}', 400, param=ANY)
    E("huge integer: seed 2^70", C, '{"prompt": "hi", "max_tokens": 2, "seed": 1180591620717411303424}', 400,
      param="seed")
    E("seed 1.5", C, comp(seed=1.5), 400, param="seed")
    expect(tab, port, "invalid UTF-8 in a string (\\xff)", post(C, b'{"prompt": "ab\xff\xfecd", "max_tokens": 2}'),
           400, IRE, ANY)
    expect(tab, port, "lone surrogate escape \\ud800", post(C, b'{"prompt": "a\\ud800b", "max_tokens": 2}'),
           400, IRE, ANY)
    E("NUL escape \\u0000 in prompt", C, '{"prompt": "a\\u0000b", "max_tokens": 2}', 400, param=ANY)
    E("unknown field 'foo' (named)", C, comp(foo=1), 400, param="foo",
      check=lambda st, h, b, e: None if e and "foo" in e.get("message", "") else "message names 'foo'")
    E("unknown field 'prompt' in chat", CH, chat(prompt="x"), 400, param="prompt")
    E("unsupported field tools", CH, chat(tools=[{"type": "function", "function": {"name": "f"}}]), 400,
      param="tools")
    E("unsupported field response_format", CH, chat(response_format={"type": "json_object"}), 400,
      param="response_format")
    E("stop \"\" (empty)", C, comp(stop=""), 400, param="stop")
    E("stop 17 strings", C, comp(stop=["s%d" % i for i in range(17)]), 400, param="stop")
    E("logit_bias key not a token", C, comp(logit_bias={"abc": 1}), 400, param=ANY)
    E("logit_bias value 500", C, comp(logit_bias={"42": 500}), 400, param=ANY)
    E("stream_options without stream", C, comp(stream_options={"include_usage": True}), 400,
      param="stream_options")
    E("top_logprobs without logprobs", CH, chat(top_logprobs=2), 400, param="top_logprobs")
    E("logprobs 100 (completions)", C, comp(logprobs=100), 400, param="logprobs")
    E("prompt token id out of vocabulary", C, comp(prompt=[1, 2, 10 ** 7]), 400, param=ANY)
    long_prompt = "hello " * (MAX_MODEL_LEN - 20)
    E("prompt + max_tokens over the context", C, comp(prompt=long_prompt, max_tokens=200), 400, param="max_tokens")
    E("prompt alone over the context", C, comp(prompt="hello " * (MAX_MODEL_LEN + 50), max_tokens=1), 400,
      param=ANY)
    E("unknown model", C, comp(model="gpt-4o"), 404, etype="not_found_error", param="model")
    E("deeply nested JSON (60000 '[')", C, '{"prompt": ' + "[" * 60000 + "}", 400)
    E("/tokenize wrong type", "/tokenize", {"prompt": 5}, 400, param="prompt")
    E("/detokenize token -1", "/detokenize", {"tokens": [-1]}, 400, param=ANY)


def http_cases(tab, port):
    X = lambda case, data, status, **k: expect(tab, port, case, data, status, **k)  # noqa: E731
    X("404 unknown route", b"GET /v1/nothing HTTP/1.1\r\nHost: x\r\n\r\n", 404)
    X("405 GET on /v1/completions", b"GET /v1/completions HTTP/1.1\r\nHost: x\r\n\r\n", 405,
      check=lambda st, h, b, e: None if h.get("allow") == "POST" else "Allow: POST")
    X("405 POST on /health", post("/health", "{}"), 405)
    X("413 oversize body (%d > max-body-bytes %d)" % (2 * MAX_BODY, MAX_BODY),
      post(C, comp(prompt="x" * (2 * MAX_BODY))), 413)
    X("413 Content-Length 10^12, no body sent",
      b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000\r\n\r\n", 413)
    X("431 oversize headers (20 KB)",
      b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", 431)
    X("431 many headers (2000 x 'X-N: v')",
      b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(2000)) + b"\r\n", 431)
    X("400 garbage request line", b"HELLO\r\n\r\n", 400)
    X("conflicting Content-Length headers",
      b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n{}{}{}{}", 400)
    X("non-UTF-8 path /\\xff\\xfe", b"GET /\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n", 404)
    X("path with %00", b"GET /health%00 HTTP/1.1\r\nHost: x\r\n\r\n", 404)
    body = json.dumps(comp(max_tokens=2)).encode()
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    X("chunked request body (valid)", b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
      b"Content-Type: application/json\r\n\r\n" + chunked, 200)

    # HTTP/1.0: answered, then closed; a streamed answer ends with the close.
    c = Conn(port)
    c.send(b"GET /health HTTP/1.0\r\n\r\n")
    st, h, _ = c.response()
    closed = c.read_to_close() == b""
    c.close()
    tab.add("HTTP/1.0 GET /health", "200, connection closed", "%d, %s" % (st, "closed" if closed else "open"),
            st == 200 and closed)
    c = Conn(port)
    b = json.dumps(comp(max_tokens=3, stream=True)).encode()
    c.send(b"POST /v1/completions HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
           % (len(b), b))
    st, h, data = c.response()
    c.close()
    tab.add("HTTP/1.0 streamed completion", "200, ends with [DONE], no chunked",
            "%d, %s" % (st, "[DONE]" if data.rstrip().endswith(b"data: [DONE]") else repr(data[-40:])),
            st == 200 and data.rstrip().endswith(b"data: [DONE]") and "transfer-encoding" not in h)

    # Pipelined: three requests in one write, three answers in order.
    c = Conn(port)
    c.send(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" + post(C, comp(max_tokens=2)) +
           b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
    got = []
    try:
        for _ in range(3):
            st, h, data = c.response()
            got.append((st, data[:30]))
    except Exception as e:  # noqa: BLE001
        got.append(repr(e))
    c.close()
    ok = len(got) == 3 and all(isinstance(g, tuple) and g[0] == 200 for g in got) and got[0][1] == b"{}" and \
        got[2][1].startswith(b'{"object":"list"')
    tab.add("pipelined: /health, completion, /v1/models", "200, 200, 200 in order",
            ", ".join(str(g[0]) if isinstance(g, tuple) else g for g in got), ok)

    # Slow request: headers dribbled over ~3 s (the header timeout is 30 s): still answered.
    c = Conn(port)
    req = post(C, comp(max_tokens=2))
    t0 = time.time()
    for i in range(0, len(req), 8):
        c.send(req[i:i + 8])
        time.sleep(3.0 / (len(req) / 8))
    st, h, data = c.response()
    c.close()
    tab.add("slow request (dribbled over %.0f s)" % (time.time() - t0), "200", str(st), st == 200)

    # Truncated: Content-Length larger than what is sent, then close.
    for n in range(3):
        c = Conn(port)
        c.send(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"prompt\": ")
        time.sleep(0.1)
        c.close()
    c = Conn(port)
    c.send(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Len")
    c.close()
    st, _, _ = raw(port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    tab.add("truncated requests, then close (x4)", "server alive (/health 200)", str(st), st == 200)


def disconnect_case(tab, srv):
    before = srv.metric("proteus_request_success_total", finished_reason="abort") or 0
    c = Conn(srv.port)
    c.send(post(C, comp(prompt="Tell me a very long story.", max_tokens=400, stream=True, ignore_eos=True)))
    st, h, _ = c.response(head_only=True)
    n = 0
    while n < 2:
        c.read_until(b"data: ")
        n += 1
    running = srv.metric("proteus_num_requests_running")
    c.s.shutdown(socket.SHUT_RDWR)
    c.close()
    t0 = time.time()
    r = srv.wait_metric("proteus_num_requests_running", 0, timeout=10)
    dt = time.time() - t0
    after = srv.metric("proteus_request_success_total", finished_reason="abort") or 0
    tab.add("client disconnects after 2 SSE chunks", "running 1 -> 0 within 10 s, abort counted",
            "running %g -> %g in %.1fs, aborts +%g" % (running or 0, r, dt, after - before),
            st == 200 and running == 1 and r == 0 and after - before == 1)


def queue_full_case(tab, t):
    srv = Server(BIN, ["--max-running", "1", "--max-waiting", "1"], name="queue").start()
    try:
        def one(i):
            return raw(srv.port, post(C, comp(prompt="Flood %d" % i, max_tokens=24, ignore_eos=True)))
        with concurrent.futures.ThreadPoolExecutor(12) as ex:
            res = list(ex.map(one, range(12)))
        st = [r[0] for r in res]
        n429 = [r for r in res if r[0] == 429]
        others = [s for s in st if s not in (200, 429)]
        retry_ok = all(r[1].get("retry-after", "").isdigit() for r in n429)
        types_ok = all((err_of(r[2]) or {}).get("type") == "rate_limit_error" for r in n429)
        tab.add("429 queue full (12 at once, max-running 1, max-waiting 1)",
                "1 or 2 x 200 (running + waiting), rest 429 with Retry-After",
                "%d x 200, %d x 429, other %s, Retry-After %s, type %s" % (
                    st.count(200), len(n429), others, n429[0][1].get("retry-after") if n429 else None,
                    (err_of(n429[0][2]) or {}).get("type") if n429 else None),
                # Whether the second request finds the first already admitted (and
                # so may wait) is a race; never more than running + waiting fit.
                len(n429) >= 1 and 1 <= st.count(200) <= 2 and not others and retry_ok and types_ok)
        after_checks(t, srv, "queue server")
    finally:
        code = srv.stop()
    t.eq("queue server: SIGTERM exit code 0", code, 0)


def after_checks(t, srv, tag):
    st, _, _ = srv.request("GET", "/health")
    t.eq("%s after: /health 200" % tag, st, 200)
    st, r = srv.post_json(C, comp(prompt="The capital of France is", max_tokens=4, temperature=0))
    t.check("%s after: normal completion 200" % tag, st == 200 and r["usage"]["completion_tokens"] >= 1,
            (st, r))
    running = srv.wait_metric("proteus_num_requests_running", 0, timeout=15)
    t.eq("%s after: proteus_num_requests_running 0" % tag, running, 0)
    deadline = time.time() + 15
    while True:
        pages = srv.metrics().get("proteus_kv_pages_used", [])
        if (pages and all(v == 0 for _, v in pages)) or time.time() > deadline:
            break
        time.sleep(0.2)
    t.check("%s after: proteus_kv_pages_used 0 on every device" % tag, pages and all(v == 0 for _, v in pages),
            pages)
    t.check("%s after: server alive" % tag, srv.alive())


def main():
    t = Runner()
    tab = Table(t)
    srv = Server(BIN, ["--max-body-bytes", str(MAX_BODY), "--max-model-len", str(MAX_MODEL_LEN)],
                 name="bad").start()
    try:
        t.run(lambda t_: json_cases(tab, srv.port))
        t.run(lambda t_: http_cases(tab, srv.port))
        t.run(lambda t_: disconnect_case(tab, srv))
        t.check("server survived the bad inputs", srv.alive())
        after_checks(t, srv, "main server")
    finally:
        code = srv.stop()
    t.eq("main server: SIGTERM exit code 0", code, 0)
    t.run(lambda t_: queue_full_case(tab, t))
    tab.print()
    return t.summary()


if __name__ == "__main__":
    sys.exit(main())
