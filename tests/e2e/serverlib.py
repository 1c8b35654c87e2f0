"""Helpers for the end-to-end tests of `proteus serve`.

Starts the server as a subprocess on a free port, waits for /health, captures
its stderr (the access log) to a file, stops it with SIGTERM (the exit code
must be 0), reads /metrics and the process's RSS. Plain Python 3, no pytest:
a tiny runner (Runner) counts checks and prints "N passed, N failed".
"""
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback

SKIP = 77


def default_model_path():
    p = os.environ.get("PROTEUS_DEFAULT_MODEL")
    if p:
        return p
    return os.path.expanduser("~/.cache/proteus/models/SmolLM2-135M-Instruct.Q4_1.gguf")


def find_binary(argv=None):
    """The proteus binary: argv[1], $PROTEUS_BIN, or build/proteus in the source tree."""
    argv = sys.argv if argv is None else argv
    if len(argv) > 1 and argv[1]:
        return os.path.abspath(argv[1])
    if os.environ.get("PROTEUS_BIN"):
        return os.environ["PROTEUS_BIN"]
    if os.environ.get("PROTEUS_BINARY_DIR"):
        return os.path.join(os.environ["PROTEUS_BINARY_DIR"], "proteus")
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.join(here, "..", "..", "build", "proteus")


def skip_unless_ready(binary, need_openai=False):
    """Exits 77 (skipped) when the model, the binary or the openai package is missing."""
    if need_openai:
        try:
            import openai  # noqa: F401
        except ImportError:
            print("SKIP: python package 'openai' is not installed (pip install openai)")
            sys.exit(SKIP)
    if not os.path.exists(default_model_path()):
        print("SKIP: default model not found at %s" % default_model_path())
        sys.exit(SKIP)
    if not os.access(binary, os.X_OK):
        print("SKIP: proteus binary not found at %s" % binary)
        sys.exit(SKIP)


def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def default_threads():
    return str(max(1, min(2, len(os.sched_getaffinity(0)))))


class ServerError(Exception):
    pass


class Server:
    """One `proteus serve` subprocess. Use as a context manager or call start()/stop()."""

    def __init__(self, binary, args=(), env=None, name="server", threads=None, start_timeout=180):
        self.binary = binary
        self.args = list(args)
        self.env = env
        self.name = name
        self.threads = threads or default_threads()
        self.start_timeout = start_timeout
        self.proc = None
        self.port = None
        self.tmpdir = tempfile.mkdtemp(prefix="proteus-e2e-")
        self.stderr_path = os.path.join(self.tmpdir, name + ".stderr")
        self.exit_code = None

    # -- lifetime --
    def start(self):
        last = ""
        for _attempt in range(5):
            self.port = free_port()
            cmd = [self.binary, "serve", "-m", "default", "--host", "127.0.0.1", "--port", str(self.port),
                   "-t", self.threads] + self.args
            env = dict(os.environ)
            env.pop("PROTEUS_API_KEY", None)
            if self.env:
                env.update(self.env)
            self._errf = open(self.stderr_path, "wb")
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._errf, stderr=self._errf,
                                         env=env)
            deadline = time.time() + self.start_timeout
            while time.time() < deadline:
                if self.proc.poll() is not None:
                    break
                try:
                    st, _, _ = self.request("GET", "/health", timeout=2)
                    if st == 200:
                        return self
                except (OSError, http.client.HTTPException):
                    pass
                time.sleep(0.1)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
                self._errf.close()
                raise ServerError("server did not answer /health in %ds; stderr:\n%s"
                                  % (self.start_timeout, self.stderr()[-3000:]))
            self._errf.close()
            last = self.stderr()
            if "in use" not in last.lower():
                break
        raise ServerError("server exited at start-up (code %s); stderr:\n%s" % (self.proc.returncode, last[-3000:]))

    def stop(self, timeout=90):
        """SIGTERM, wait; returns the exit code (None if it had to be killed)."""
        if self.proc is None:
            return self.exit_code
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.exit_code = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self.exit_code = None
        else:
            self.exit_code = self.proc.returncode
        self._errf.close()
        self.proc = None
        return self.exit_code

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False

    # -- observation --
    @property
    def base_url(self):
        return "http://127.0.0.1:%d" % self.port

    def stderr(self):
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def rss_kb(self):
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return None

    def request(self, method, path, body=None, headers=None, timeout=120):
        """(status, headers dict lower-cased, body bytes) over http.client."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            if isinstance(body, (dict, list)):
                body = json.dumps(body)
            if isinstance(body, str):
                body = body.encode()
            h = {"Content-Type": "application/json"} if body is not None else {}
            h.update(headers or {})
            conn.request(method, path, body=body, headers=h)
            r = conn.getresponse()
            data = r.read()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, data
        finally:
            conn.close()

    def post_json(self, path, obj, headers=None, timeout=120):
        st, h, data = self.request("POST", path, obj, headers, timeout)
        try:
            return st, json.loads(data)
        except ValueError:
            return st, data

    def metrics(self, headers=None):
        """{name: [(labels dict, value)]} of the Prometheus text on /metrics."""
        st, _, data = self.request("GET", "/metrics", headers=headers, timeout=30)
        if st != 200:
            raise ServerError("/metrics answered %d" % st)
        return parse_prometheus(data.decode())

    def metric(self, name, **labels):
        """The sum of the samples of `name` whose labels include `labels`."""
        total = 0.0
        found = False
        for lab, v in self.metrics().get(name, []):
            if all(lab.get(k) == val for k, val in labels.items()):
                total += v
                found = True
        return total if found else None

    def layout(self, headers=None):
        """GET /v1/layout as JSON (headers: the API key where the server has one)."""
        st, _, body = self.request("GET", "/v1/layout", headers=headers, timeout=30)
        if st != 200:
            raise ServerError("/v1/layout answered %d: %r" % (st, body[:200]))
        return json.loads(body)

    def wait_change(self, timeout=300, headers=None):
        """The layout once no change runs (the last one's result in it), or the last one seen."""
        deadline = time.time() + timeout
        lay = self.layout(headers)
        while lay["transformation"]["in_progress"] and time.time() < deadline:
            time.sleep(0.05)
            lay = self.layout(headers)
        return lay

    def wait_idle(self, timeout=120, headers=None):
        """The layout once no change runs, no instance runs or queues anything and every KV page is
        free, or the last one seen."""
        deadline = time.time() + timeout
        lay = self.layout(headers)
        while time.time() < deadline:
            if not lay["transformation"]["in_progress"] and all(
                    i["running"] == 0 and i["waiting"] == 0 and i["kv_pages_free"] == i["kv_pages_total"]
                    for i in lay["instances"]):
                break
            time.sleep(0.1)
            lay = self.layout(headers)
        return lay

    def wait_metric(self, name, value, timeout=30, **labels):
        deadline = time.time() + timeout
        v = None
        while time.time() < deadline:
            v = self.metric(name, **labels)
            if v == value:
                return v
            time.sleep(0.2)
        return v


def parse_prometheus(text):
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        labels = {}
        if "{" in name_labels:
            name, _, rest = name_labels.partition("{")
            rest = rest.rstrip("}")
            for part in _split_labels(rest):
                k, _, v = part.partition("=")
                labels[k.strip()] = v.strip().strip('"')
        else:
            name = name_labels
        try:
            val = float(value)
        except ValueError:
            continue
        out.setdefault(name, []).append((labels, val))
    return out


def _split_labels(s):
    parts, cur, q = [], "", False
    for ch in s:
        if ch == '"':
            q = not q
        if ch == "," and not q:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur:
        parts.append(cur)
    return parts


def generate_cli(binary, prompt, n, threads=None, timeout=300):
    """The text `proteus generate -m default -p PROMPT -n N` (greedy) prints on stdout."""
    r = subprocess.run([binary, "generate", "-m", "default", "-p", prompt, "-n", str(n), "-t",
                        threads or default_threads()], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=timeout)
    if r.returncode != 0:
        raise ServerError("proteus generate failed (%d): %s" % (r.returncode, r.stderr.decode()[-2000:]))
    out = r.stdout.decode("utf-8", "replace")
    return out[:-1] if out.endswith("\n") else out  # generate ends the text with one newline


class Runner:
    """A tiny test runner: named test functions, checks inside, a summary line."""

    def __init__(self):
        self.passed = 0
        self.failed = 0
        self.failures = []

    def check(self, name, cond, detail=""):
        if cond:
            self.passed += 1
            print("  ok   %s" % name, flush=True)
        else:
            self.failed += 1
            self.failures.append((name, detail))
            print("  FAIL %s %s" % (name, ("-- " + str(detail)) if detail != "" else ""), flush=True)
        return bool(cond)

    def eq(self, name, got, want):
        return self.check(name, got == want, "got %r, want %r" % (got, want))

    def run(self, fn, *args):
        print("== %s" % fn.__name__, flush=True)
        t0 = time.time()
        try:
            fn(self, *args)
        except Exception as e:  # a crash in a test is one failure
            self.failed += 1
            self.failures.append((fn.__name__, repr(e)))
            print("  FAIL %s raised %s" % (fn.__name__, e), flush=True)
            traceback.print_exc()
        print("   (%.1fs)" % (time.time() - t0), flush=True)

    def summary(self):
        if self.failures:
            print("failures:")
            for n, d in self.failures:
                print("  %s: %s" % (n, str(d)[:500]))
        print("%d passed, %d failed" % (self.passed, self.failed), flush=True)
        return 0 if self.failed == 0 else 1
