#!/usr/bin/env python3
"""Prompt processing and generation speed of one or more Proteus builds and of
llama.cpp's own `llama-bench`, interleaved in one run (a round runs every
engine once per thread count, so drift in the machine hits all of them), and
the ratios proteus / llama.cpp of the medians.

llama-bench comes from the llama.cpp source that the llama-cpp-python sdist
vendors:
    pip download --no-deps --no-binary :all: llama-cpp-python
    tar xzf llama_cpp_python-*.tar.gz && cd llama_cpp_python-*/vendor/llama.cpp
    cmake -B build -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DGGML_NATIVE=OFF \\
        -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON \\
        -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON
    cmake --build build -j --target llama-bench
(GGML_NATIVE=ON also enables AMX on CPUs that report it; on the VMs these
benchmarks ran on, AMX tiles are reported but not usable: SIGILL.)

Each test runs as llama-bench runs it: a prompt of P tokens in micro-batches
of 512 (-ub 512; Proteus: perf --ubatch 512), and generation of TG tokens
after D tokens of context (-d D; Proteus: perf --depth D), the context
evaluated untimed.

Usage:
    python3 bench/bench_vs_llama_bench.py --llama-bench PATH [--proteus LABEL=PATH ...]
        [-m MODEL] [--threads 1,2] [--pp 512,2048] [--depth 0,4096] [--tg 128] [--rounds 3]
        [--kv-dtype f16] [--out results.json]
"""

import argparse
import json
import os
import statistics
import subprocess

DEFAULT_MODEL = os.path.join(os.path.expanduser("~"), ".cache", "proteus", "models",
                             "SmolLM2-135M-Instruct.Q4_1.gguf")


UBATCH = 512


def proteus_once(path, model, t, test, tg, kv_dtype):
    kind, n = test
    cmd = [path, "perf", "-m", model, "-t", str(t), "--ubatch", str(UBATCH), "--reps", "1"]
    if kv_dtype:
        cmd += ["--kv-dtype", kv_dtype]
    cmd += ["--pp", str(n), "--tg", "0"] if kind == "pp" else ["--depth", str(n), "--pp", "1", "--tg", str(tg)]
    d = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
    return d["pp_tok_s"] if kind == "pp" else d["tg_tok_s"]


def llama_once(path, model, t, test, tg):
    kind, n = test
    cmd = [path, "-m", model, "-t", str(t), "-ub", str(UBATCH), "-r", "1", "-o", "jsonl"]
    cmd += ["-p", str(n), "-n", "0"] if kind == "pp" else ["-p", "0", "-n", str(tg), "-d", str(n)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["avg_ts"]


def name(test, tg):
    kind, n = test
    return f"prompt {n}" if kind == "pp" else f"generation {tg} at depth {n}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-bench", required=True)
    ap.add_argument("--proteus", action="append", default=[], help="LABEL=PATH, repeatable")
    ap.add_argument("-m", "--model", default=DEFAULT_MODEL)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--pp", default="512", help="prompt lengths, comma-separated (empty: none)")
    ap.add_argument("--depth", default="0", help="context depths of the generation tests (empty: none)")
    ap.add_argument("--tg", type=int, default=128)
    ap.add_argument("--kv-dtype", default=None, help="Proteus's KV type (default: its default)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out")
    args = ap.parse_args()
    builds = [p.split("=", 1) for p in (args.proteus or ["proteus=build/proteus"])]
    threads = [int(x) for x in args.threads.split(",")]
    tests = [("pp", int(x)) for x in args.pp.split(",") if x] + [("tg", int(x)) for x in args.depth.split(",") if x]
    engines = builds + [("llama.cpp", args.llama_bench)]
    runs = {(label, t, test): [] for label, _ in engines for t in threads for test in tests}
    for _ in range(args.rounds):
        for test in tests:
            for t in threads:
                for label, path in engines:
                    v = (llama_once(path, args.model, t, test, args.tg) if label == "llama.cpp"
                         else proteus_once(path, args.model, t, test, args.tg, args.kv_dtype))
                    runs[(label, t, test)].append(v)
                    print(f"# {label} t={t} {name(test, args.tg)}: {v:.1f} tok/s", flush=True)
    med = {k: statistics.median(v) for k, v in runs.items()}
    print(f"\n{os.path.basename(args.model)}, median of {args.rounds} interleaved rounds, tok/s\n")
    print("| test | threads | llama.cpp | " + " | ".join(f"{b} | ratio" for b, _ in builds) + " |")
    print("|---|---|---|" + "---|---|" * len(builds))
    for test in tests:
        for t in threads:
            ref = med[("llama.cpp", t, test)]
            cells = " | ".join(f"{med[(b, t, test)]:.1f} | {med[(b, t, test)] / ref:.2f}" for b, _ in builds)
            print(f"| {name(test, args.tg)} | {t} | {ref:.1f} | {cells} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "runs": {f"{k[0]}@{k[1]}@{k[2][0]}{k[2][1]}": v for k, v in runs.items()}},
                      f, indent=1)


if __name__ == "__main__":
    main()
