/* A small GGUF writer for tests: byte-level primitives, so that tests can
 * write broken files on purpose, and a builder for a complete tiny llama
 * model (2 layers, d 64, 4/2 heads, ff 128, vocab 256). Header-only; each
 * test program includes it once. */
#ifndef PROTEUS_TESTS_GGUF_BUILD_H
#define PROTEUS_TESTS_GGUF_BUILD_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proteus/dtype.h"
#include "proteus/gguf.h"

typedef struct {
    uint8_t *p;
    size_t n, cap;
} gb_buf;

static inline void gb_put(gb_buf *b, const void *src, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 256;
        b->p = realloc(b->p, b->cap);
        if (!b->p) abort();
    }
    if (n) memcpy(b->p + b->n, src, n);
    b->n += n;
}
static inline void gb_u32(gb_buf *b, uint32_t v) { gb_put(b, &v, 4); }
static inline void gb_u64(gb_buf *b, uint64_t v) { gb_put(b, &v, 8); }
static inline void gb_str(gb_buf *b, const char *s) {
    gb_u64(b, strlen(s));
    gb_put(b, s, strlen(s));
}
static inline void gb_header(gb_buf *b, uint32_t version, uint64_t n_tensors, uint64_t n_kv) {
    gb_put(b, "GGUF", 4);
    gb_u32(b, version);
    gb_u64(b, n_tensors);
    gb_u64(b, n_kv);
}
static inline void gb_kv_u32(gb_buf *b, const char *key, uint32_t v) {
    gb_str(b, key);
    gb_u32(b, PT_GGUF_UINT32);
    gb_u32(b, v);
}
static inline void gb_kv_f32(gb_buf *b, const char *key, float v) {
    gb_str(b, key);
    gb_u32(b, PT_GGUF_FLOAT32);
    gb_put(b, &v, 4);
}
static inline void gb_kv_str(gb_buf *b, const char *key, const char *v) {
    gb_str(b, key);
    gb_u32(b, PT_GGUF_STRING);
    gb_str(b, v);
}
static inline void gb_tensor_info(gb_buf *b, const char *name, uint32_t n_dims, const uint64_t *ne,
                           uint32_t type, uint64_t offset) {
    gb_str(b, name);
    gb_u32(b, n_dims);
    for (uint32_t i = 0; i < n_dims; i++) gb_u64(b, ne[i]);
    gb_u32(b, type);
    gb_u64(b, offset);
}
static inline void gb_align(gb_buf *b, size_t a) {
    static const uint8_t zero[64];
    while (b->n % a) gb_put(b, zero, 1);
}

/* The tiny llama model as a GGUF v3 image: norms F32, matrices of type wt.
 * *data_offset receives the start of the tensor data section. */
#define GB_TINY_D 64
#define GB_TINY_FF 128
#define GB_TINY_VOCAB 256
#define GB_TINY_LAYERS 2
static inline void gb_build_tiny_llama(gb_buf *b, pt_dtype wt, size_t *data_offset) {
    struct {
        char name[48];
        uint32_t type, n_dims;
        uint64_t ne[2];
        uint64_t nbytes, offset;
    } t[64];
    size_t nt = 0;
    const uint64_t d = GB_TINY_D, q = 64, kv = 32, ff = GB_TINY_FF, v = GB_TINY_VOCAB;
#define GB_ADD(nm, ty, a, bb)                                         \
    do {                                                              \
        snprintf(t[nt].name, sizeof t[nt].name, "%s", nm);            \
        t[nt].type = ty;                                              \
        t[nt].n_dims = (bb) > 1 ? 2 : 1;                              \
        t[nt].ne[0] = a;                                              \
        t[nt].ne[1] = bb;                                             \
        nt++;                                                         \
    } while (0)
    GB_ADD("token_embd.weight", wt, d, v);
    for (int l = 0; l < GB_TINY_LAYERS; l++) {
        char nm[48];
#define GB_L(suffix, ty, a, bb) do { snprintf(nm, sizeof nm, "blk.%d." suffix, l); GB_ADD(nm, ty, a, bb); } while (0)
        GB_L("attn_norm.weight", PT_DTYPE_F32, d, 1);
        GB_L("attn_q.weight", wt, d, q);
        GB_L("attn_k.weight", wt, d, kv);
        GB_L("attn_v.weight", wt, d, kv);
        GB_L("attn_output.weight", wt, q, d);
        GB_L("ffn_norm.weight", PT_DTYPE_F32, d, 1);
        GB_L("ffn_gate.weight", wt, d, ff);
        GB_L("ffn_up.weight", wt, d, ff);
        GB_L("ffn_down.weight", wt, ff, d);
#undef GB_L
    }
    GB_ADD("output_norm.weight", PT_DTYPE_F32, d, 1);
    GB_ADD("output.weight", wt, d, v);
#undef GB_ADD
    uint64_t off = 0;
    for (size_t i = 0; i < nt; i++) {
        uint64_t row = 0;
        pt_dtype_row_bytes((pt_dtype)t[i].type, t[i].ne[0], &row);
        t[i].nbytes = row * t[i].ne[1];
        t[i].offset = off;
        off += (t[i].nbytes + 31) / 32 * 32;
    }

    b->n = 0;
    gb_header(b, 3, nt, 12);
    gb_kv_str(b, "general.architecture", "llama");
    gb_kv_u32(b, "general.alignment", 32);
    gb_kv_u32(b, "llama.block_count", GB_TINY_LAYERS);
    gb_kv_u32(b, "llama.embedding_length", GB_TINY_D);
    gb_kv_u32(b, "llama.feed_forward_length", GB_TINY_FF);
    gb_kv_u32(b, "llama.attention.head_count", 4);
    gb_kv_u32(b, "llama.attention.head_count_kv", 2);
    gb_kv_f32(b, "llama.attention.layer_norm_rms_epsilon", 1e-5f);
    gb_kv_f32(b, "llama.rope.freq_base", 10000.0f);
    gb_kv_u32(b, "llama.context_length", 512);
    gb_kv_str(b, "tokenizer.chat_template", "{{ messages }}");
    gb_str(b, "tokenizer.ggml.tokens");
    gb_u32(b, PT_GGUF_ARRAY);
    gb_u32(b, PT_GGUF_STRING);
    gb_u64(b, GB_TINY_VOCAB);
    for (int i = 0; i < GB_TINY_VOCAB; i++) {
        char s[8];
        snprintf(s, sizeof s, "t%d", i);
        gb_str(b, s);
    }
    for (size_t i = 0; i < nt; i++) gb_tensor_info(b, t[i].name, t[i].n_dims, t[i].ne, t[i].type, t[i].offset);
    gb_align(b, 32);
    *data_offset = b->n;
    /* Data: a fixed byte pattern; values do not matter to the loader. */
    size_t start = b->n;
    for (uint64_t i = 0; i < off; i++) {
        uint8_t x = (uint8_t)(i * 131 + 7);
        gb_put(b, &x, 1);
    }
    /* Norms as 1.0f so the file is also numerically sane. */
    for (size_t i = 0; i < nt; i++)
        if (t[i].type == PT_DTYPE_F32 && t[i].n_dims == 1)
            for (uint64_t j = 0; j < t[i].ne[0]; j++) {
                float one = 1.0f;
                memcpy(b->p + start + t[i].offset + j * 4, &one, 4);
            }
}

static inline int gb_write_file(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t w = fwrite(p, 1, n, f);
    return (fclose(f) == 0 && w == n) ? 0 : -1;
}

#endif
