#!/usr/bin/env python3
"""Writes small synthetic traces in the Proteus JSONL format (see README.md:
Trace formats): Poisson arrivals and lognormal lengths, fixed seeds, so the
files are reproducible byte for byte.

    python3 traces/make_synthetic.py            # rewrites the traces below
"""
import json
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


if __name__ == "__main__":
    write("chat_small.jsonl", 64, 2.0, 5.0, 4.0, seed=1)           # ~150-token prompts, ~55-token answers
    write("shared_prefix_small.jsonl", 32, 1.0, 7.0, 3.5, seed=2, shared_prefix_blocks=2)
