#!/usr/bin/env python3
"""Regenerates the golden logits in tests/golden/logits/ with Hugging Face
transformers as the independent reference for the engine.

Usage (needs torch, transformers (written with 5.x), gguf, and accelerate,
which transformers requires for loading GGUF files; CPU only):
    python3 tests/golden/gen_logits_goldens.py [--model PATH.gguf] [--out DIR]

    --model  default: $PROTEUS_DEFAULT_MODEL, else
             $HOME/.cache/proteus/models/SmolLM2-135M-Instruct.Q4_1.gguf
             (if absent, only the tiny-model goldens are written)
    --out    default: tests/golden/logits next to this script

What it writes:
    tiny-llama.bin, tiny-qwen2.bin  the models of tiny_models.py (run into a
        temporary directory, loaded with AutoModelForCausalLM in float32,
        eager attention): 3 token sequences of lengths 1, 17, 60 with ids from
        splitmix64; logits of every position, float32.
    smollm2-135m-q4_1.bin  SmolLM2-135M-Instruct Q4_1 GGUF, which transformers
        dequantizes to float32 (and whose Q/K rows it un-permutes), on 4 fixed
        prompts tokenized by the GGUF's own tokenizer; top-8 ids and logits at every
        position, full logits (float16) at 4 positions per prompt.
    index.json  what each file holds, the prompts, the reference top-1
        tokens, and the torch / transformers / gguf versions used.

The tiny models are rebuilt from tiny_models.py each run, so a change there
must be followed by running this script and committing the new goldens.

File format (all little-endian), read by tests/unit/test_golden_logits.c:
    char     magic[8]      "PTGOLD02"
    u32      vocab
    u32      n_seqs
    u32      row_dtype     0 = float32, 1 = float16 (IEEE half)
    u32      top_k         ids kept per position (8)
    char     model[64]     NUL-padded name
    n_seqs times:
      u32    n_tokens
      u32    n_rows
      i32    tokens[n_tokens]
      i32    top_ids[n_tokens][top_k]      best first: top_ids[t][0] is the argmax
      f32    top_logits[n_tokens][top_k]
      n_rows times:
        u32  pos
        row_dtype logits[vocab]
"""

import argparse
import importlib.metadata
import json
import os
import struct
import subprocess
import sys
import tempfile

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import tiny_models  # noqa: E402

MAGIC = b"PTGOLD02"
TOP_K = 8
ROW_F32, ROW_F16 = 0, 1

SMOLLM_PROMPTS = [
    ("plain-capitals",
     "The capital of France is Paris. The capital of Germany is Berlin. "
     "The capital of Italy is"),
    ("chatml",
     "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
     "Hugging Face<|im_end|>\n<|im_start|>user\nWhat is the boiling point of water "
     "at sea level, in degrees Celsius?<|im_end|>\n<|im_start|>assistant\n"),
    ("code",
     "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"
     "    if n < 2:\n        return n\n    return"),
    ("story",
     "Once upon a time, in a small village at the edge of a great forest, there "
     "lived an old woodcutter and his daughter. Every morning they walked together "
     "into the trees, and every evening they came home with"),
]


def tiny_sequences(vocab):
    """Token ids of the tiny-model sequences, lengths 1, 17 and 60. The llama3
    scaling changes the RoPE frequencies at every position, so these lengths
    exercise it without passing original_max_position_embeddings (64)."""
    rng = tiny_models.SplitMix64(0x601DE4)
    return [[rng.next() % vocab for _ in range(n)] for n in (1, 17, 60)]


def row_positions(n):
    return sorted({0, n // 3, (2 * n) // 3, n - 1})


@torch.no_grad()
def run_logits(model, ids):
    x = torch.tensor([ids], dtype=torch.long)
    out = model(input_ids=x, use_cache=False)
    return out.logits[0].float()  # [n, vocab]


def seq_record(ids, logits, positions):
    top = torch.topk(logits, TOP_K, dim=-1)
    return {
        "tokens": list(ids),
        "top_ids": [i for r in top.indices.tolist() for i in r],
        "top_logits": [v for r in top.values.tolist() for v in r],
        "top1": top.indices[:, 0].tolist(),
        "gap": (top.values[:, 0] - top.values[:, 1]).tolist(),
        "rows": [(p, logits[p]) for p in positions],
    }


def write_golden(path, model_name, vocab, row_dtype, seqs):
    name = model_name.encode()
    assert len(name) < 64
    with open(path, "wb") as f:
        f.write(MAGIC)
        f.write(struct.pack("<4I", vocab, len(seqs), row_dtype, TOP_K))
        f.write(name + b"\0" * (64 - len(name)))
        for s in seqs:
            n = len(s["tokens"])
            f.write(struct.pack("<2I", n, len(s["rows"])))
            f.write(struct.pack("<%di" % n, *s["tokens"]))
            f.write(struct.pack("<%di" % (n * TOP_K), *s["top_ids"]))
            f.write(struct.pack("<%df" % (n * TOP_K), *s["top_logits"]))
            for pos, row in s["rows"]:
                assert row.shape == (vocab,)
                f.write(struct.pack("<I", pos))
                np_dtype = "<f4" if row_dtype == ROW_F32 else "<f2"
                f.write(row.numpy().astype(np_dtype).tobytes())
    return os.path.getsize(path)


def load_checked(path, **kw):
    model, info = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager",
        output_loading_info=True, **kw)
    bad = {k: v for k, v in info.items() if v}
    if bad:
        raise SystemExit("%s: loading was not clean: %s" % (path, bad))
    model.eval()
    return model


def min_gap(seqs):
    return min(g for s in seqs for g in s["gap"])


def gen_tiny(out_dir, index):
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, os.path.join(HERE, "tiny_models.py"), tmp], check=True)
        for name in ("tiny-llama", "tiny-qwen2"):
            model = load_checked(os.path.join(tmp, name))
            vocab = model.config.vocab_size
            seqs = []
            for ids in tiny_sequences(vocab):
                logits = run_logits(model, ids)
                seqs.append(seq_record(ids, logits, range(len(ids))))
            fname = name + ".bin"
            size = write_golden(os.path.join(out_dir, fname), name, vocab, ROW_F32, seqs)
            index["files"][fname] = {
                "model": name,
                "source": "tests/golden/tiny_models.py",
                "rows": "float32, every position",
                "sequence_lengths": [len(s["tokens"]) for s in seqs],
                "min_top1_top2_gap": min_gap(seqs),
                "bytes": size,
            }
            print("%s: %d bytes, min top1-top2 gap %.4g" % (fname, size, min_gap(seqs)))


def gen_smollm(out_dir, index, gguf_path):
    d, f = os.path.split(os.path.abspath(gguf_path))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = load_checked(d, gguf_file=f)
    vocab = model.config.vocab_size
    seqs, prompts = [], []
    for label, text in SMOLLM_PROMPTS:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert 16 <= len(ids) <= 64, (label, len(ids))
        logits = run_logits(model, ids)
        s = seq_record(ids, logits, row_positions(len(ids)))
        seqs.append(s)
        prompts.append({
            "label": label,
            "text": text,
            "n_tokens": len(ids),
            "row_positions": [p for p, _ in s["rows"]],
            "next_token": tok.decode([s["top1"][-1]]),
            "greedy_top1_text": tok.decode(s["top1"]),
        })
        print("%-15s %2d tokens, next %r" % (label, len(ids), tok.decode([s["top1"][-1]])))
    fname = "smollm2-135m-q4_1.bin"
    size = write_golden(os.path.join(out_dir, fname), "SmolLM2-135M-Instruct.Q4_1", vocab,
                        ROW_F16, seqs)
    index["files"][fname] = {
        "model": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "source": "transformers GGUF loader (dequantized to float32), tokenizer from the GGUF",
        "rows": "float16, 4 positions per prompt",
        "prompts": prompts,
        "min_top1_top2_gap": min_gap(seqs),
        "bytes": size,
    }
    print("%s: %d bytes, min top1-top2 gap %.4g" % (fname, size, min_gap(seqs)))


def main():
    default_model = os.environ.get("PROTEUS_DEFAULT_MODEL") or os.path.join(
        os.path.expanduser("~"), ".cache/proteus/models/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=default_model)
    ap.add_argument("--out", default=os.path.join(HERE, "logits"))
    args = ap.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(2)
    os.makedirs(args.out, exist_ok=True)
    index = {
        "generator": "tests/golden/gen_logits_goldens.py",
        "format": "see the docstring of the generator",
        "versions": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "gguf": importlib.metadata.version("gguf"),
        },
        "files": {},
    }
    gen_tiny(args.out, index)
    if os.path.exists(args.model):
        gen_smollm(args.out, index, args.model)
    else:
        print("no %s: SmolLM2 golden not regenerated" % args.model)
        old = os.path.join(args.out, "index.json")
        if os.path.exists(old):
            with open(old) as fh:
                prev = json.load(fh)["files"]
            for k, v in prev.items():
                index["files"].setdefault(k, v)
    with open(os.path.join(args.out, "index.json"), "w") as fh:
        json.dump(index, fh, indent=2, ensure_ascii=False)
        fh.write("\n")


if __name__ == "__main__":
    main()
