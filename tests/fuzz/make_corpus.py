#!/usr/bin/env python3
"""Regenerates the seed corpora under tests/fuzz/corpus/ (committed; run by
hand after changing a unit test's bad-input table or the samples here).

Seeds are small: the bad and good bodies of tests/unit/test_openai_api.c
(every JSON-object literal in it, through the C preprocessor so that its
macros expand), the config literals of tests/unit/test_config.c, the
sample traces of tests/data/traces, and hand-made model files, tokenizer
files, HTTP requests and server responses. Usage: make_corpus.py [SOURCE_DIR]
"""
import hashlib
import json
import os
import re
import struct
import subprocess
import sys

SRC = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(SRC, "tests", "fuzz", "corpus")


def put(target, data, name=None):
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    name = name or "seed-" + hashlib.sha1(data).hexdigest()[:12]
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def c_literals(path):
    """Every run of adjacent C string literals in the preprocessed file, as bytes."""
    text = subprocess.run(["cc", "-E", "-P", "-I" + os.path.join(SRC, "include"), "-I" + os.path.join(SRC, "tests"),
                           "-I" + os.path.join(SRC, "src"), path], check=True, capture_output=True, text=True,
                          errors="surrogateescape").stdout
    lit = r'"(?:[^"\\\n]|\\.)*"'
    for m in re.finditer(r"(?:%s\s*)+" % lit, text):
        parts = re.findall(lit, m.group(0))
        yield b"".join(unescape(p[1:-1]) for p in parts)


def unescape(s):
    out = bytearray()
    i = 0
    simple = {"n": 10, "t": 9, "r": 13, "0": 0, "\\": 92, '"': 34, "'": 39, "a": 7, "b": 8, "f": 12, "v": 11, "?": 63}
    while i < len(s):
        c = s[i]
        if c != "\\":
            out += c.encode("utf-8", "surrogateescape")
            i += 1
            continue
        e = s[i + 1]
        if e == "x":
            m = re.match(r"[0-9a-fA-F]+", s[i + 2:])
            out.append(int(m.group(0), 16) & 0xFF)
            i += 2 + len(m.group(0))
        elif e in "01234567":
            m = re.match(r"[0-7]{1,3}", s[i + 1:])
            out.append(int(m.group(0), 8) & 0xFF)
            i += 1 + len(m.group(0))
        elif e in "uU":
            n = 4 if e == "u" else 8
            out += chr(int(s[i + 2:i + 2 + n], 16)).encode()
            i += 2 + n
        else:
            out.append(simple.get(e, ord(e)))
            i += 2
    return bytes(out)


def http_request(path, body, extra=""):
    b = body if isinstance(body, bytes) else body.encode()
    head = "POST %s HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n%sContent-Length: %d\r\n\r\n" % (
        path, extra, len(b))
    return head.encode() + b


def gguf_string(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def gguf_image():
    """A tiny GGUF v3: a few metadata kinds (string, u32, f32, string array) and two F32 tensors."""
    kvs = [("general.architecture", 8, gguf_string("llama")),
           ("llama.block_count", 4, struct.pack("<I", 1)),
           ("llama.rope.freq_base", 6, struct.pack("<f", 10000.0)),
           ("tokenizer.ggml.model", 8, gguf_string("gpt2")),
           ("tokenizer.ggml.tokens", 9, struct.pack("<IQ", 8, 4) + b"".join(gguf_string(t) for t in ["a", "b", "ab", "<s>"])),
           ("tokenizer.ggml.merges", 9, struct.pack("<IQ", 8, 1) + gguf_string("a b")),
           ("tokenizer.ggml.bos_token_id", 4, struct.pack("<I", 3))]
    tensors = [("token_embd.weight", [4, 4], 0), ("output_norm.weight", [4], 64)]
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs))
    for k, t, v in kvs:
        out += gguf_string(k) + struct.pack("<I", t) + v
    for name, ne, off in tensors:
        out += gguf_string(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", n) for n in ne)
        out += struct.pack("<IQ", 0, off)
    out += b"\0" * (-len(out) % 32)
    return out + struct.pack("<20f", *range(20))


def safetensors_image(meta=True):
    header = {"a.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
              "b.bias": {"dtype": "BF16", "shape": [3], "data_offsets": [16, 22]},
              "c": {"dtype": "F16", "shape": [1, 1, 1, 2], "data_offsets": [22, 26]}}
    if meta:
        header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + bytes(range(26))


def main():
    # OpenAI bodies: chat ones have "messages", completions ones "prompt".
    bodies = set(c_literals(os.path.join(SRC, "tests", "unit", "test_openai_api.c")))
    bodies |= {b"", b"{", b"[1,2]", b"null"}
    for b in sorted(bodies):
        if len(b) > 4096:
            continue
        is_json = b.startswith(b"{") or b in (b"", b"[1,2]", b"null")
        if not is_json:
            continue
        if b"messages" in b or not b"prompt" in b:
            put("oai_chat", b)
            put("http_chat", b"\x7f" + http_request("/v1/chat/completions", b))
        if b"prompt" in b or not b"messages" in b:
            put("oai_completions", b)
            put("http_completions", b"\x7f" + http_request("/v1/completions", b))
    chat = b'{"model":"tiny","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"hi"}],"stream":true,"max_tokens":8}'
    comp = b'{"model":"tiny","prompt":["a",[1,2,3]],"max_tokens":4,"n":2,"logprobs":2,"stop":["\\n"]}'
    for target, path, body in (("http_chat", "/v1/chat/completions", chat), ("http_completions", "/v1/completions", comp)):
        req = http_request(path, body)
        put(target, b"\x00" + req, "split-1-byte")
        put(target, b"\x07" + req + req, "pipelined")
        put(target, b"\x7f" + http_request(path, body, "Expect: 100-continue\r\n"), "expect-continue")
        put(target, b"\x7f" + ("POST %s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n" % (path, len(body))).encode()
            + body + b"\r\n0\r\n\r\n", "chunked")
        put(target, b"\x7f" + ("GET %s?x=1#f HTTP/1.0\r\n\r\n" % path).encode(), "get-405")
        put(target, b"\x7f" + b"GET http://h/nope HTTP/1.1\r\nHost: h\r\n\r\n", "absolute-404")
        put(target, b"\x7f" + ("POST %s HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n" % path).encode(), "too-large-413")
        put(target, b"\x7f" + b"BREW / HTTP/1.1\r\n\r\n", "bad-method-400")

    # Config files: every object literal of test_config.c.
    for lit in set(c_literals(os.path.join(SRC, "tests", "unit", "test_config.c"))):
        if lit.lstrip().startswith(b"{") and len(lit) < 4096:
            put("config", lit)
    put("config", b"", "empty")
    put("config", b"[]", "not-object")

    # Traces: the unit tests' samples, plus each format's header alone.
    tdir = os.path.join(SRC, "tests", "data", "traces")
    for f in sorted(os.listdir(tdir)):
        with open(os.path.join(tdir, f), "rb") as fh:
            put("trace", fh.read(), f)
    put("trace", b"TIMESTAMP,ContextTokens,GeneratedTokens\r\n2024-01-01 00:00:00.5,10,1\r\n\r\n\"2024-01-01 00:00:02\",\"20\",2\r\n", "crlf.csv")
    put("trace", b'{"timestamp": 0, "input_length": 600, "output_length": 5, "hash_ids": [1, 2]}\n', "mooncake-one.jsonl")

    # Model files.
    g = gguf_image()
    put("gguf", g, "tiny.gguf")
    put("gguf", g[:40], "truncated.gguf")
    put("gguf", b"GGUF" + struct.pack("<IQQ", 2, 0, 0), "empty-v2.gguf")
    put("safetensors", safetensors_image(), "tiny.safetensors")
    put("safetensors", safetensors_image(False)[:30], "truncated.safetensors")
    put("safetensors", struct.pack("<Q", 2) + b"{}", "empty.safetensors")

    # tokenizer.json: small BPE (byte-level) and SentencePiece-style BPE with byte fallback.
    bl = {"version": "1.0", "added_tokens": [{"id": 5, "content": "<|endoftext|>", "special": True},
                                             {"id": 6, "content": "<|im_start|>", "special": True}],
          "normalizer": None, "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True},
          "decoder": {"type": "ByteLevel"},
          "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2, "\u0120": 3, "\u0120a": 4,
                                             "<|endoftext|>": 5, "<|im_start|>": 6},
                    "merges": ["a b", "\u0120 a"]}}
    put("tokenizer_json", json.dumps(bl), "byte-level.json")
    spm = {"version": "1.0", "added_tokens": [{"id": 1, "content": "<s>", "special": True}, {"id": 2, "content": "</s>", "special": True}],
           "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u2581"},
                                                              {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]},
           "pre_tokenizer": None,
           "decoder": {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
                                                        {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
           "model": {"type": "BPE", "byte_fallback": True, "unk_token": "<unk>",
                     "vocab": dict([("<unk>", 0), ("<s>", 1), ("</s>", 2)] + [("<0x%02X>" % i, 3 + i) for i in range(256)]
                                   + [("\u2581", 259), ("h", 260), ("i", 261), ("\u2581h", 262), ("\u2581hi", 263)]),
                     "merges": ["\u2581 h", "\u2581h i"]}}
    put("tokenizer_json", json.dumps(spm), "spm-byte-fallback.json")

    # Tokenizer: byte 0 picks tokenizer and flags (see fuzz_tokenizer.c).
    texts = [b"Hello, world!", "caf\u00e9 \U0001F600 \u4f60\u597d".encode(), b"\x80a\xffb\xe4\xbd x\xf0\x9f\x98 \xc0\xaf",
             b"<|im_start|>user\nhi<|im_end|>", b"<s>[INST] x [/INST]</s>", b"  \t\n\n  123456789 don't"]
    for sel in range(4):
        for i, t in enumerate(texts):
            put("tokenizer", bytes([sel | (0x30 if i % 2 else 0)]) + t)

    # Bench client: byte 0 sets the read size (see fuzz_bench_client.c).
    sse = (b'data: {"choices":[{"index":0,"text":"He"}]}\n\n'
           b'data: {"choices":[{"index":0,"delta":{"content":"llo"}}]}\r\n\r\n'
           b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n'
           b'data: [DONE]\n\n')
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in [sse[:20], sse[20:]]) + b"0\r\n\r\n"
    put("bench_client", b"\x05HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked, "sse-chunked")
    put("bench_client", b"\xffHTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n" + sse, "sse-close-delimited")
    put("bench_client", b"\x03HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: 49\r\n\r\n"
        b'data: {"error":{"message":"boom"}}\n\ndata: x\n\n', "sse-error-event")
    body = b'{"choices":[{"text":"hi"}],"usage":{"completion_tokens":5,"prompt_tokens":1}}'
    put("bench_client", b"\xffHTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body), "json-200")
    err = b'{"error":{"message":"bad","type":"invalid_request_error","param":null,"code":400}}'
    put("bench_client", b"\xffHTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(err), err), "json-400")
    put("bench_client", b"\xffHTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n", "empty-503")
    put("bench_client", b"\xffHTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\ndata: {\"choi", "cut-short")


if __name__ == "__main__":
    main()
