#!/usr/bin/env python3
"""Writes small synthetic traces in the Proteus JSONL format (see README.md:
Trace formats): Poisson arrivals and lognormal lengths, fixed seeds, so the
files are reproducible byte for byte.

    python3 traces/make_synthetic.py            # rewrites the traces below
"""
import json
import math
import os
import random

HERE = os.path.dirname(os.path.abspath(__file__))


def write(name, n, rate, in_mu, out_mu, seed, shared_prefix_blocks=0):
    rng = random.Random(seed)
    t = 0.0
    with open(os.path.join(HERE, name), "w") as f:
        for i in range(n):
            t += rng.expovariate(rate)
            row = {"t": round(t, 6),
                   "input": max(1, int(rng.lognormvariate(in_mu, 0.6))),
                   "output": max(1, int(rng.lognormvariate(out_mu, 0.5)))}
            if shared_prefix_blocks:
                # The first blocks are shared by every request (a common system prompt).
                row["prefix"] = list(range(shared_prefix_blocks)) + [1000 + i]
                row["input"] = max(row["input"], 512 * shared_prefix_blocks + 1)
            f.write(json.dumps(row) + "\n")


def write_mixed(name, phases, short_in, short_out, bursts, long_in, long_out, seed):
    """Short requests (Poisson at `rate` over each (start, end, rate) of
    phases, lognormal lengths around short_in/short_out tokens) and bursts
    of long ones: for each (t, n) in bursts, n requests within a second of
    t, prompts uniform in long_in and outputs in long_out. A KV budget that
    holds the short ones on one device and the long ones only on two makes
    a dynamic server merge for each burst and split back after it
    (bench/validate_sim.sh, windows demo and phased)."""
    rng = random.Random(seed)
    rows = []
    for start, end, rate in phases:
        t = start
        while True:
            t += rng.expovariate(rate)
            if t >= end:
                break
            rows.append({"t": round(t, 3),
                         "input": max(8, int(rng.lognormvariate(math.log(short_in), 0.5))),
                         "output": max(4, int(rng.lognormvariate(math.log(short_out), 0.4)))})
    for at, n in bursts:
        for _ in range(n):
            rows.append({"t": round(at + rng.uniform(0, 1), 3),
                         "input": rng.randint(*long_in), "output": rng.randint(*long_out)})
    rows.sort(key=lambda r: r["t"])
    with open(os.path.join(HERE, name), "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    write("chat_small.jsonl", 64, 2.0, 5.0, 4.0, seed=1)           # ~150-token prompts, ~55-token answers
    write("shared_prefix_small.jsonl", 32, 1.0, 7.0, 3.5, seed=2, shared_prefix_blocks=2)
    # ~1 short req/s for 90 s (prompts ~80 tokens, outputs ~40) and three
    # bursts of two requests of 700-900 tokens (prompts 680-860)
    write_mixed("mixed_long_small.jsonl", [(0, 90, 1.0)], 80, 40, [(15, 2), (45, 2), (75, 2)], (680, 860), (20, 40),
                seed=3)
    # Two busy phases of short requests (3.6 req/s, more than one TP2
    # instance serves on two CPU devices, less than two TP1 instances) around
    # a quiet one (0.3 req/s) that brings six long requests, one at a time
    write_mixed("phased_long_small.jsonl", [(0, 20, 3.6), (20, 60, 0.3), (60, 80, 3.6)], 80, 40,
                [(22, 1), (28, 1), (34, 1), (40, 1), (46, 1), (52, 1)], (680, 860), (20, 40), seed=5)
