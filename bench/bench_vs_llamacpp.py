#!/usr/bin/env python3
"""Side-by-side CPU speed benchmark: Proteus vs llama.cpp (via llama-cpp-python).

For each thread count (default 1 and 2), measures, for the same GGUF model:
  * pp tok/s  -- prompt processing: 512 prompt tokens / wall time to evaluate
                 the whole prompt in ONE batch (n_batch = n_ubatch = 512),
                 starting from an empty KV cache.
  * tg tok/s  -- text generation: 128 / wall time of 128 single-token decode
                 steps that follow the prompt (greedy). Only the decode calls
                 are timed; the argmax that picks the next token is outside
                 the timed region, so sampling overhead differences between
                 the engines do not count.
Each engine: 1 warm-up run (discarded), then --reps timed runs, median reported.
Engines are run interleaved per thread count (llama.cpp then Proteus for t=1,
then for t=2, ...), in the same invocation.

Proteus is measured through its CLI:
    <proteus> perf -m MODEL -t T --pp 512 --tg 128 --reps N
which must print one JSON line such as
    {"pp_tokens":512,"pp_tok_s":1234.5,"tg_tokens":128,"tg_tok_s":210.3,
     "threads":2,"isa":"avx512"}

Nothing is pinned by default. The machine must be otherwise idle: other
processes competing for the cores make both engines slower by unequal amounts
(the load average is recorded before and after each measurement for that reason).

Usage:
    python3 bench/bench_vs_llamacpp.py [-m MODEL] [--threads 1,2]
        [--proteus build/proteus] [--reps 3] [--out results.json]
        [--skip-proteus | --skip-llamacpp]
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

DEFAULT_MODEL = os.path.join(os.path.expanduser("~"), ".cache", "proteus", "models",
                             "SmolLM2-135M-Instruct.Q4_1.gguf")

# Ordinary English prose used to build the prompt. It is tokenized and
# truncated to exactly --pp tokens (repeated if it is too short).
PROMPT_TEXT = (
    "The old harbor town woke slowly on winter mornings. Before the sun cleared "
    "the hills, the fishermen were already down at the docks, coiling ropes and "
    "checking the nets they had mended the night before. The bakery on the corner "
    "opened its shutters at six, and the smell of fresh bread drifted along the "
    "narrow streets, past the shuttered souvenir shops that would not open until "
    "spring. Children walked to school in pairs, their breath visible in the cold "
    "air, while their parents hurried to the bus stop with coffee in paper cups. "
    "At the library, an elderly woman named Margaret unlocked the heavy oak door "
    "exactly as she had done for thirty-one years. She liked the quiet of the first "
    "hour, when the only sound was the ticking of the wall clock and the hum of the "
    "radiator. She would sort the returned books, water the plants on the "
    "windowsill, and read the local newspaper from the first page to the last. "
    "The news was rarely exciting: a dispute about parking near the market, a "
    "report on the school play, a letter complaining about the seagulls. Still, she "
    "read every word, because she believed that a town was made of small stories "
    "and that somebody ought to pay attention to them. Later in the morning, "
    "students from the college came in to study, spreading their notes across the "
    "long tables and whispering about exams. A retired engineer arrived every day "
    "at ten to read magazines about sailing, although he had not been on a boat in "
    "many years. He told Margaret that he was planning one last voyage along the "
    "coast, and she never had the heart to ask when he intended to leave. In the "
    "afternoon the weather often changed. Clouds rolled in from the sea, the wind "
    "picked up, and the harbor filled with small boats returning early. The "
    "fishermen compared their catches and argued about the price of diesel, the "
    "new regulations, and whose grandfather had been the better sailor. By four "
    "o'clock the streetlights came on, and the shop windows glowed yellow against "
    "the grey sky. Margaret closed the library at five. She walked home along the "
    "sea wall, stopping for a moment, as she always did, to watch the lighthouse "
    "beam sweep across the water. Her cat was waiting on the doorstep, impatient "
    "for dinner. After she had fed him, she made a pot of tea, sat by the window, "
    "and wrote a few lines in the notebook where she kept track of the seasons: "
    "the first frost, the return of the swallows, the night the storm took the "
    "roof off the fish market. She had filled eleven notebooks so far. Nobody had "
    "ever asked to read them, but she imagined that one day someone might want to "
    "know what an ordinary year in an ordinary town had looked like, and she "
    "wanted the answer to be there, written carefully in her small, neat hand. "
    "The town council had recently announced a plan to modernize the waterfront, "
    "with a new promenade, a car park, and a hotel where the old warehouses stood. "
    "Opinions were divided. Some people welcomed the jobs and the visitors it "
    "would bring; others worried that the character of the place would be lost. "
    "Public meetings were held in the school hall, and they were better attended "
    "than anything in living memory. Margaret went to all of them and took notes."
)


# --------------------------------------------------------------------------
# machine info
# --------------------------------------------------------------------------

def loadavg():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


class OtherCpu:
    """Measures CPU time used by *other* processes while a measurement runs:
    busy time of the whole machine (/proc/stat) minus this process's and its
    children's CPU time (getrusage). Reported in cores (other CPU s / wall s);
    ~0 on an idle machine. Also reports hypervisor steal time the same way."""

    @staticmethod
    def _snap():
        import resource
        busy = steal = None
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:]]
            hz = os.sysconf("SC_CLK_TCK")
            # user nice system idle iowait irq softirq steal ...
            busy = (v[0] + v[1] + v[2] + v[5] + v[6]) / hz
            steal = (v[7] if len(v) > 7 else 0) / hz
        except (OSError, ValueError, IndexError):
            pass
        own = 0.0
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
            ru = resource.getrusage(who)
            own += ru.ru_utime + ru.ru_stime
        return time.perf_counter(), busy, steal, own

    def __enter__(self):
        self.a = self._snap()
        return self

    def __exit__(self, *exc):
        b = self._snap()
        wall = b[0] - self.a[0]
        self.result = {"wall_s": round(wall, 3), "other_cpu_cores": None, "steal_cores": None}
        if self.a[1] is not None and b[1] is not None and wall >= 0.5:  # jiffy resolution
            other = (b[1] - self.a[1]) - (b[3] - self.a[3])
            self.result["other_cpu_cores"] = round(max(other, 0.0) / wall, 3)
            self.result["steal_cores"] = round((b[2] - self.a[2]) / wall, 3)
        return False


def machine_info():
    info = {
        "cpu_model": None,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "physical_cores": None,
        "isa_flags": [],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "hostname": platform.node(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            txt = f.read()
        cores = set()
        phys = None
        for line in txt.splitlines():
            if ":" not in line:
                continue
            k, v = (s.strip() for s in line.split(":", 1))
            if k == "model name" and info["cpu_model"] is None:
                info["cpu_model"] = v
            elif k == "physical id":
                phys = v
            elif k == "core id":
                cores.add((phys, v))
            elif k == "flags" and not info["isa_flags"]:
                want = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
                        "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8")
                fl = set(v.split())
                info["isa_flags"] = [w for w in want if w in fl]
        if cores:
            info["physical_cores"] = len(cores)
    except OSError:
        pass
    return info


# --------------------------------------------------------------------------
# llama.cpp side
# --------------------------------------------------------------------------

def llamacpp_version():
    try:
        import llama_cpp
        return llama_cpp.__version__
    except Exception:
        return None


def llamacpp_system_info():
    try:
        import llama_cpp
        s = llama_cpp.llama_print_system_info()
        return s.decode() if isinstance(s, bytes) else str(s)
    except Exception:
        return None


def build_prompt_tokens(llm, n):
    text = PROMPT_TEXT
    toks = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
    while len(toks) < n:
        text = text + " " + PROMPT_TEXT
        toks = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
    return toks[:n]


def llamacpp_one_run(llm, np, llama_cpp, prompt, n_tg):
    """Returns (pp_seconds, tg_seconds, generated_tokens)."""
    ctx = llm._ctx.ctx
    n_vocab = llm.n_vocab()
    llm.reset()  # n_tokens = 0; eval() drops the KV cache beyond n_tokens
    t0 = time.perf_counter()
    llm.eval(prompt)  # one llama_decode of all 512 tokens (n_batch = 512)
    llama_cpp.llama_synchronize(ctx)
    pp_s = time.perf_counter() - t0

    tg_s = 0.0
    out = []
    for _ in range(n_tg):
        # greedy pick from the last logits row (not timed). llm.eval() only
        # requests logits for the last token of a batch, so index -1 is it.
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))
        tok = int(np.argmax(logits))
        out.append(tok)
        t0 = time.perf_counter()
        llm.eval([tok])
        llama_cpp.llama_synchronize(ctx)
        tg_s += time.perf_counter() - t0
    return pp_s, tg_s, out


def bench_llamacpp(model, threads, n_pp, n_tg, reps):
    import numpy as np
    import llama_cpp

    n_ctx = max(1024, n_pp + n_tg + 8)
    llm = llama_cpp.Llama(model_path=model, n_ctx=n_ctx, n_threads=threads,
                          n_threads_batch=threads, n_batch=n_pp, n_ubatch=n_pp,
                          verbose=False)
    prompt = build_prompt_tokens(llm, n_pp)
    assert len(prompt) == n_pp, len(prompt)

    load_before = loadavg()
    llamacpp_one_run(llm, np, llama_cpp, prompt, n_tg)  # warm-up, discarded
    pp_runs, tg_runs, outs = [], [], []
    with OtherCpu() as oc:
        for _ in range(reps):
            pp_s, tg_s, out = llamacpp_one_run(llm, np, llama_cpp, prompt, n_tg)
            pp_runs.append(n_pp / pp_s)
            tg_runs.append(n_tg / tg_s)
            outs.append(out)
    load_after = loadavg()
    deterministic = all(o == outs[0] for o in outs)
    sample = llm.detokenize(outs[0][:24]).decode("utf-8", "replace")
    del llm
    return {
        "engine": "llama.cpp",
        "threads": threads,
        "pp_tokens": n_pp,
        "tg_tokens": n_tg,
        "pp_tok_s": statistics.median(pp_runs),
        "tg_tok_s": statistics.median(tg_runs),
        "pp_tok_s_runs": [round(x, 2) for x in pp_runs],
        "tg_tok_s_runs": [round(x, 2) for x in tg_runs],
        "greedy_deterministic": deterministic,
        "greedy_sample": sample,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "interference": oc.result,
        "settings": {"n_ctx": n_ctx, "n_batch": n_pp, "n_ubatch": n_pp, "flash_attn": False,
                     "kv_cache_type": "f16 (default)", "use_mmap": True},
    }


# --------------------------------------------------------------------------
# Proteus side
# --------------------------------------------------------------------------

def resolve_proteus(path):
    """Returns an absolute path to an executable, or None."""
    if os.path.sep in path or os.path.exists(path):
        return os.path.abspath(path) if os.path.isfile(path) and os.access(path, os.X_OK) else None
    return shutil.which(path)


def bench_proteus(binary, model, threads, n_pp, n_tg, reps, timeout):
    cmd = [binary, "perf", "-m", model, "-t", str(threads), "--pp", str(n_pp),
           "--tg", str(n_tg), "--reps", str(reps)]
    load_before = loadavg()
    try:
        with OtherCpu() as oc:
            p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"engine": "proteus", "threads": threads, "error": f"timed out after {timeout}s",
                "cmd": " ".join(cmd)}
    except OSError as e:
        return {"engine": "proteus", "threads": threads, "error": f"could not run: {e}",
                "cmd": " ".join(cmd)}
    load_after = loadavg()
    res = None
    for line in reversed(p.stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                res = json.loads(line)
                break
            except json.JSONDecodeError:
                continue
    if p.returncode != 0 or res is None or "pp_tok_s" not in res or "tg_tok_s" not in res:
        tail = (p.stderr.strip().splitlines() or p.stdout.strip().splitlines() or [""])[-5:]
        return {"engine": "proteus", "threads": threads, "cmd": " ".join(cmd),
                "error": f"exit code {p.returncode}; no usable JSON line "
                         f"(need pp_tok_s and tg_tok_s); last output: " + " | ".join(tail)}
    out = {"engine": "proteus", "threads": threads,
           "pp_tokens": res.get("pp_tokens"), "tg_tokens": res.get("tg_tokens"),
           "pp_tok_s": float(res["pp_tok_s"]), "tg_tok_s": float(res["tg_tok_s"]),
           "isa": res.get("isa"), "raw": res, "cmd": " ".join(cmd),
           "loadavg_before": load_before, "loadavg_after": load_after,
           "interference": oc.result}
    if res.get("threads") not in (None, threads):
        out["warning"] = f"proteus reported threads={res.get('threads')}, asked for {threads}"
    if res.get("pp_tokens") not in (None, n_pp) or res.get("tg_tokens") not in (None, n_tg):
        out["warning"] = (out.get("warning", "") + f" proteus reported pp/tg tokens "
                          f"{res.get('pp_tokens')}/{res.get('tg_tokens')}, asked {n_pp}/{n_tg}").strip()
    return out


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------

def fmt(x):
    return f"{x:10.1f}" if isinstance(x, (int, float)) else f"{'n/a':>10}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", default=DEFAULT_MODEL, help="GGUF model (default: %(default)s)")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts (default: %(default)s)")
    ap.add_argument("--proteus", default="build/proteus", help="Proteus binary (default: %(default)s)")
    ap.add_argument("--pp", type=int, default=512, help="prompt tokens (default: %(default)s)")
    ap.add_argument("--tg", type=int, default=128, help="generated tokens (default: %(default)s)")
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions, median taken (default: %(default)s)")
    ap.add_argument("--out", help="write results as JSON to this file")
    ap.add_argument("--skip-proteus", action="store_true", help="measure llama.cpp only")
    ap.add_argument("--skip-llamacpp", action="store_true", help="measure Proteus only")
    ap.add_argument("--proteus-timeout", type=float, default=900, help="seconds per Proteus run")
    args = ap.parse_args()

    threads = [int(t) for t in args.threads.split(",") if t.strip()]
    if not os.path.isfile(args.model):
        sys.exit(f"error: model not found: {args.model}")

    proteus = None
    proteus_note = None
    if not args.skip_proteus:
        proteus = resolve_proteus(args.proteus)
        if proteus is None:
            proteus_note = (f"Proteus binary not found or not executable: {args.proteus!r}. "
                            f"Build it (cmake -B build && cmake --build build -j2) or pass "
                            f"--proteus PATH; continuing with llama.cpp only.")
            if args.skip_llamacpp:
                sys.exit("error: " + proteus_note.split(";")[0] + "; nothing to measure")
            print("WARNING: " + proteus_note, file=sys.stderr)

    if not args.skip_llamacpp:
        try:
            import llama_cpp  # noqa: F401
            import numpy  # noqa: F401
        except ImportError as e:
            sys.exit(f"error: llama-cpp-python is not importable ({e}); "
                     f"`pip install llama-cpp-python` or pass --skip-llamacpp")

    mach = machine_info()
    meta = {
        "model": os.path.abspath(args.model),
        "model_bytes": os.path.getsize(args.model),
        "pp_tokens": args.pp, "tg_tokens": args.tg, "reps": args.reps,
        "threads": threads,
        "machine": mach,
        "llama_cpp_python_version": None if args.skip_llamacpp else llamacpp_version(),
        "llama_cpp_system_info": None if args.skip_llamacpp else llamacpp_system_info(),
        "proteus_binary": proteus,
        "proteus_note": proteus_note,
        "pinning": "none",
        "loadavg_start": loadavg(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    print(f"# model: {meta['model']}")
    print(f"# cpu: {mach['cpu_model']}  logical={mach['logical_cpus']} usable={mach['usable_cpus']} "
          f"physical_cores={mach['physical_cores']}  isa: {' '.join(mach['isa_flags'])}")
    if meta["llama_cpp_python_version"]:
        print(f"# llama-cpp-python {meta['llama_cpp_python_version']}")
    print(f"# pp={args.pp} tg={args.tg} reps={args.reps} (median), 1 warm-up; loadavg {meta['loadavg_start']}")
    la = meta["loadavg_start"]
    if la and mach["usable_cpus"] and la[0] > 0.5:
        print(f"# WARNING: 1-min load average {la[0]} -- the machine is not idle; results will be noisy",
              file=sys.stderr)
    sys.stdout.flush()

    results = []
    for t in threads:
        if not args.skip_llamacpp:
            print(f"# running llama.cpp t={t} ...", file=sys.stderr, flush=True)
            results.append(bench_llamacpp(args.model, t, args.pp, args.tg, args.reps))
        if proteus:
            print(f"# running proteus t={t} ...", file=sys.stderr, flush=True)
            r = bench_proteus(proteus, os.path.abspath(args.model), t, args.pp, args.tg, args.reps, args.proteus_timeout)
            if "error" in r:
                print(f"WARNING: proteus t={t}: {r['error']}", file=sys.stderr)
            if "warning" in r:
                print(f"WARNING: proteus t={t}: {r['warning']}", file=sys.stderr)
            results.append(r)

    ratios = []
    for t in threads:
        l = next((r for r in results if r["engine"] == "llama.cpp" and r["threads"] == t and "error" not in r), None)
        p = next((r for r in results if r["engine"] == "proteus" and r["threads"] == t and "error" not in r), None)
        if l and p:
            ratios.append({"threads": t,
                           "pp_ratio": p["pp_tok_s"] / l["pp_tok_s"],
                           "tg_ratio": p["tg_tok_s"] / l["tg_tok_s"]})

    print()
    print(f"{'threads':>7} | {'engine':<9} | {'pp tok/s':>10} | {'tg tok/s':>10} | {'other cpu':>9}")
    print(f"{'-' * 7}-+-{'-' * 9}-+-{'-' * 10}-+-{'-' * 10}-+-{'-' * 9}")
    noisy = False
    for r in results:
        oc = (r.get("interference") or {}).get("other_cpu_cores")
        ocs = f"{oc:9.2f}" if isinstance(oc, (int, float)) else f"{'n/a':>9}"
        extra = ""
        if "error" in r:
            extra = "   (error: see above)"
        elif r.get("pp_tok_s_runs"):
            sp = [(max(v) - min(v)) / statistics.median(v) for v in (r["pp_tok_s_runs"], r["tg_tok_s_runs"])]
            extra = f"   spread pp {sp[0]:.0%} tg {sp[1]:.0%}"
        if isinstance(oc, (int, float)) and oc > 0.1:
            noisy = True
        print(f"{r['threads']:>7} | {r['engine']:<9} | {fmt(r.get('pp_tok_s'))} | {fmt(r.get('tg_tok_s'))} | {ocs}"
              + extra)
    if noisy:
        print("# WARNING: other processes used > 0.1 core during some measurement ('other cpu' column);"
              " those numbers are not trustworthy -- rerun on an idle machine")
    if ratios:
        print()
        print(f"{'threads':>7} | {'pp proteus/llama.cpp':>21} | {'tg proteus/llama.cpp':>21}")
        for q in ratios:
            print(f"{q['threads']:>7} | {q['pp_ratio']:>21.2f} | {q['tg_ratio']:>21.2f}")
    elif not args.skip_proteus and not args.skip_llamacpp:
        print("\n(no ratios: Proteus results unavailable)")
    isas = sorted({str(r["isa"]) for r in results if r.get("isa")})
    if isas:
        print(f"\n# proteus isa: {', '.join(isas)}")
    meta["loadavg_end"] = loadavg()
    print(f"\n# loadavg at end: {meta['loadavg_end']}")

    if args.out:
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "results": results, "ratios": ratios}, f, indent=2)
            f.write("\n")
        print(f"# wrote {args.out}")


if __name__ == "__main__":
    main()
