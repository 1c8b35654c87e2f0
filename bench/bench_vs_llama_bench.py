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

Usage:
    python3 bench/bench_vs_llama_bench.py --llama-bench PATH [--proteus LABEL=PATH ...]
        [-m MODEL] [--threads 1,2] [--pp 512] [--tg 128] [--rounds 3] [--out results.json]
"""

import argparse
import json
import os
import statistics
import subprocess

DEFAULT_MODEL = os.path.join(os.path.expanduser("~"), ".cache", "proteus", "models",
                             "SmolLM2-135M-Instruct.Q4_1.gguf")


def proteus_once(path, model, t, pp, tg):
    out = subprocess.run([path, "perf", "-m", model, "-t", str(t), "--pp", str(pp), "--tg", str(tg),
                          "--reps", "1"], check=True, capture_output=True, text=True).stdout
    d = json.loads(out.strip().splitlines()[-1])
    return d["pp_tok_s"], d["tg_tok_s"]


def llama_once(path, model, t, pp, tg):
    out = subprocess.run([path, "-m", model, "-t", str(t), "-p", str(pp), "-n", str(tg), "-r", "1",
                          "-o", "jsonl"], check=True, capture_output=True, text=True).stdout
    pp_ts = tg_ts = None
    for line in out.splitlines():
        d = json.loads(line)
        if d["n_prompt"] > 0:
            pp_ts = d["avg_ts"]
        else:
            tg_ts = d["avg_ts"]
    return pp_ts, tg_ts


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-bench", required=True)
    ap.add_argument("--proteus", action="append", default=[], help="LABEL=PATH, repeatable")
    ap.add_argument("-m", "--model", default=DEFAULT_MODEL)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--pp", type=int, default=512)
    ap.add_argument("--tg", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out")
    args = ap.parse_args()
    builds = [p.split("=", 1) for p in (args.proteus or ["proteus=build/proteus"])]
    threads = [int(x) for x in args.threads.split(",")]
    runs = {(label, t): [] for label, _ in builds + [("llama.cpp", None)] for t in threads}
    for _ in range(args.rounds):
        for t in threads:
            for label, path in builds:
                runs[(label, t)].append(proteus_once(path, args.model, t, args.pp, args.tg))
            runs[("llama.cpp", t)].append(llama_once(args.llama_bench, args.model, t, args.pp, args.tg))
    med = {k: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v)) for k, v in runs.items()}
    print(f"{os.path.basename(args.model)}, pp {args.pp}, tg {args.tg}, median of {args.rounds} interleaved rounds\n")
    print("| threads | engine | pp tok/s | tg tok/s | pp ratio | tg ratio |")
    print("|---|---|---|---|---|---|")
    for t in threads:
        lp, lt = med[("llama.cpp", t)]
        print(f"| {t} | llama.cpp | {lp:.1f} | {lt:.1f} | | |")
        for label, _ in builds:
            p, g = med[(label, t)]
            print(f"| {t} | {label} | {p:.1f} | {g:.1f} | {p / lp:.2f} | {g / lt:.2f} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "runs": {f"{k[0]}@{k[1]}": v for k, v in runs.items()}}, f, indent=1)


if __name__ == "__main__":
    main()
