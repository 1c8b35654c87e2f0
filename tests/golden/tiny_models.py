#!/usr/bin/env python3
"""Two tiny Hugging Face model directories with deterministic weights.

Usage:
    python3 tests/golden/tiny_models.py OUTDIR

writes
    OUTDIR/tiny-llama   LlamaForCausalLM, F32, one model.safetensors,
                        llama3 rope_scaling, untied LM head
    OUTDIR/tiny-qwen2   Qwen2ForCausalLM, BF16, two safetensors shards plus
                        model.safetensors.index.json, qkv bias, tied LM head

Standard library only: CI machines run this with a plain python3 (the C test
tests/unit/test_golden_logits.c calls it before loading the models). The
output is byte-for-byte identical on every run and every machine, because the
weights come from splitmix64 and are built so that every value is exactly
representable in the stored dtype (no platform-dependent float rounding).

The golden logits in tests/golden/logits/ were computed by Hugging Face
transformers from these exact bytes (tests/golden/gen_logits_goldens.py), so
any change to this file means regenerating them:
    python3 tests/golden/gen_logits_goldens.py
"""

import json
import os
import struct
import sys

MASK64 = (1 << 64) - 1


class SplitMix64:
    """splitmix64 (Steele, Lea, Flood 2014), the same generator as pt_rng."""

    def __init__(self, seed):
        self.state = seed & MASK64

    def next(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)


def tensor_seed(model_seed, name):
    """A seed per tensor from its name, so that adding or reordering tensors
    never changes the values of the others (FNV-1a over the name)."""
    h = 0xCBF29CE484222325
    for b in name.encode():
        h = ((h ^ b) * 0x100000001B3) & MASK64
    return h ^ model_seed


def gen_values(seed, n, scale, center, mant_bits):
    """n values uniform in center + scale * [-1, 1), with `mant_bits` random
    bits each. scale and center are powers of two (or 0 / 1), so every value is
    exact in float32 (mant_bits <= 23) or bfloat16 (mant_bits <= 7 with |x| <
    2 * scale; a center of 1 needs the fraction to fit too, hence the caller's
    choice of bits)."""
    rng = SplitMix64(seed)
    out = [0.0] * n
    denom = float(1 << (mant_bits - 1))
    half = 1 << (mant_bits - 1)
    for i in range(n):
        k = rng.next() >> (64 - mant_bits)  # 0 .. 2^bits - 1
        out[i] = center + scale * ((k - half) / denom)
    return out


F32, BF16 = "F32", "BF16"


def pack(values, dtype):
    if dtype == F32:
        return struct.pack("<%df" % len(values), *values)
    # BF16: the values were generated exact in bf16, so truncating the float32
    # bit pattern is exact; check it rather than trust it.
    raw = struct.pack("<%df" % len(values), *values)
    words = struct.unpack("<%dI" % len(values), raw)
    for w in words:
        if w & 0xFFFF:
            raise ValueError("value not exact in bfloat16")
    return struct.pack("<%dH" % len(values), *(w >> 16 for w in words))


def write_safetensors(path, tensors):
    """tensors: list of (name, dtype, shape, bytes). Layout: u64 LE header
    length, JSON header (padded with spaces to a multiple of 8), data."""
    header = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dtype, shape, data in tensors:
        header[name] = {"dtype": dtype, "shape": list(shape),
                        "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    hjson = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    hjson += b" " * ((8 - len(hjson) % 8) % 8)
    write_atomic(path, b"".join([struct.pack("<Q", len(hjson)), hjson] + [t[3] for t in tensors]))
    return offset


def write_atomic(path, data):
    """Several test programs may build the same directory at once while others
    already map its files: write a private file and rename it over the old one,
    so that a reader sees the old file or the new one, never a partial one."""
    tmp = "%s.tmp.%d" % (path, os.getpid())
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def write_json(path, obj):
    write_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def model_tensors(cfg, seed, dtype):
    """(name, dtype, shape, bytes) for every tensor of a llama/qwen2 model, in
    Hugging Face naming and [out_features, in_features] shapes."""
    h = cfg["hidden_size"]
    ff = cfg["intermediate_size"]
    nh = cfg["num_attention_heads"]
    nkv = cfg["num_key_value_heads"]
    hd = cfg["head_dim"]
    vocab = cfg["vocab_size"]
    bias = cfg.get("attention_bias", False) or cfg["model_type"] == "qwen2"
    bits = 24 if dtype == F32 else 8
    # Linear weights uniform in +-1/8 (std 0.072); Q and K in +-1/4 so that
    # attention scores are spread (std ~1) and RoPE positions matter; the
    # embedding and LM head in +-1/2 so that logits have std ~2 and the top-1
    # token is rarely a near tie; norm weights in 1 +- 1/8. bf16 keeps 8 significant bits, and 1 + x needs x's
    # bits below 2^-7 to vanish, hence fewer random bits for the norms.
    norm_bits = 24 if dtype == F32 else 5

    out = []

    def add(name, shape, scale, center=0.0, nbits=bits):
        n = 1
        for d in shape:
            n *= d
        vals = gen_values(tensor_seed(seed, name), n, scale, center, nbits)
        out.append((name, dtype, shape, pack(vals, dtype)))

    add("model.embed_tokens.weight", [vocab, h], 0.5)
    for l in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % l
        add(p + "input_layernorm.weight", [h], 0.125, 1.0, norm_bits)
        add(p + "self_attn.q_proj.weight", [nh * hd, h], 0.25)
        add(p + "self_attn.k_proj.weight", [nkv * hd, h], 0.25)
        add(p + "self_attn.v_proj.weight", [nkv * hd, h], 0.125)
        if bias:
            add(p + "self_attn.q_proj.bias", [nh * hd], 0.5)
            add(p + "self_attn.k_proj.bias", [nkv * hd], 0.5)
            add(p + "self_attn.v_proj.bias", [nkv * hd], 0.125)
        add(p + "self_attn.o_proj.weight", [h, nh * hd], 0.125)
        add(p + "post_attention_layernorm.weight", [h], 0.125, 1.0, norm_bits)
        add(p + "mlp.gate_proj.weight", [ff, h], 0.125)
        add(p + "mlp.up_proj.weight", [ff, h], 0.125)
        add(p + "mlp.down_proj.weight", [h, ff], 0.125)
    add("model.norm.weight", [h], 0.125, 1.0, norm_bits)
    if not cfg["tie_word_embeddings"]:
        add("lm_head.weight", [vocab, h], 0.5)
    return out


TINY_LLAMA = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 160,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "hidden_act": "silu",
    "max_position_embeddings": 256,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    # original_max_position_embeddings 64 with head_dim 16 puts one frequency
    # above the high-frequency wavelength (kept), two between the cut-offs
    # (smoothly interpolated) and five below (divided by factor).
    "rope_scaling": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    },
    "attention_bias": False,
    "attention_dropout": 0.0,
    "mlp_bias": False,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "initializer_range": 0.02,
    "pretraining_tp": 1,
    "use_cache": True,
    "torch_dtype": "float32",
}

TINY_QWEN2 = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "hidden_act": "silu",
    "max_position_embeddings": 256,
    "max_window_layers": 2,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "sliding_window": None,
    "use_sliding_window": False,
    "attention_dropout": 0.0,
    "tie_word_embeddings": True,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "initializer_range": 0.02,
    "use_cache": True,
    "torch_dtype": "bfloat16",
}


def write_tiny_llama(d):
    os.makedirs(d, exist_ok=True)
    tensors = model_tensors(TINY_LLAMA, 0x11A4A, F32)
    write_safetensors(os.path.join(d, "model.safetensors"), tensors)
    write_json(os.path.join(d, "config.json"), TINY_LLAMA)


def write_tiny_qwen2(d):
    os.makedirs(d, exist_ok=True)
    tensors = model_tensors(TINY_QWEN2, 0x0E2, BF16)
    # Shard 1: embeddings and layer 0; shard 2: the rest. The split falls
    # inside the model so that a loader must really follow the index.
    first = [t for t in tensors
             if t[0].startswith("model.embed_tokens.") or t[0].startswith("model.layers.0.")]
    second = [t for t in tensors if t not in first]
    shards = [("model-00001-of-00002.safetensors", first),
              ("model-00002-of-00002.safetensors", second)]
    weight_map = {}
    total = 0
    for fname, ts in shards:
        total += write_safetensors(os.path.join(d, fname), ts)
        for t in ts:
            weight_map[t[0]] = fname
    write_json(os.path.join(d, "model.safetensors.index.json"),
               {"metadata": {"total_size": total}, "weight_map": weight_map})
    write_json(os.path.join(d, "config.json"), TINY_QWEN2)


def main(argv):
    if len(argv) != 2:
        sys.stderr.write("usage: %s OUTDIR\n" % argv[0])
        return 2
    out = argv[1]
    write_tiny_llama(os.path.join(out, "tiny-llama"))
    write_tiny_qwen2(os.path.join(out, "tiny-qwen2"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
