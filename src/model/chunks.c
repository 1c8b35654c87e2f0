/* Arranges a model file's tensors into TP chunks (DESIGN.md section 3), and
 * copies a rank's chunks into its device (its shard).
 *
 * The model view (pt_weights) copies nothing it can point at: column-parallel
 * matrices (Q, K, V, gate, up) are cut by output rows, which are contiguous
 * in the file; row-parallel matrices (O, down) are cut by input columns, a
 * strided view of every row. A chunk boundary that falls inside a
 * quantization block cannot be cut; such a matrix is dequantized to F32
 * first (logged), which costs memory, not correctness.
 *
 * A shard (pt_shard) is one device allocation holding the rank's chunks,
 * each contiguous, walked by the per-layer pointer table. The replicated
 * tensors (embeddings, norms, biases, LM head) are not copied: every rank
 * reads them from the one read-only model view, and each rank's device is
 * charged their bytes, as a GPU holding its own copy would be. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/kcpu_matmul.h"
#include "model/chunks.h"

/* Records p to free with the view; NULL (and p freed) when out of memory. */
static void *own(pt_weights *w, void *p) {
    void **grown = p ? realloc(w->owned, (w->n_owned + 1) * sizeof(void *)) : NULL;
    if (!grown) {
        free(p);
        return NULL;
    }
    w->owned = grown;
    w->owned[w->n_owned++] = p;
    return p;
}

static const pt_tensor *need(const pt_model_file *mf, pt_err *err, const char *fmt, int layer) {
    char name[96];
    snprintf(name, sizeof(name), fmt, layer);
    const pt_tensor *t = pt_model_file_find(mf, name);
    if (!t) pt_err_set(err, PT_ERR_FORMAT, "%s: missing tensor '%s'", mf->path, name);
    return t;
}

static pt_wmat wmat_of(const pt_tensor *t) {
    uint64_t rb = 0;
    pt_dtype_row_bytes(t->type, t->ne[0], &rb);
    return (pt_wmat){t->data, t->type, (size_t)rb, (uint32_t)t->ne[1], (uint32_t)t->ne[0]};
}

/* Rows [r0, r0 + n) of a matrix, zero-copy. */
static pt_wmat wmat_rows(pt_wmat m, uint32_t r0, uint32_t n) {
    m.data = (const uint8_t *)m.data + (size_t)r0 * m.stride;
    m.rows = n;
    return m;
}

static float *to_f32_vec(pt_weights *w, const pt_tensor *t, pt_err *err) {
    uint64_t n = t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
    float *out = own(w, malloc(n * sizeof(float)));
    if (!out) {
        pt_err_set(err, PT_ERR_NOMEM, "out of memory converting tensor '%s'", t->name);
        return NULL;
    }
    kcpu_dequantize_row(t->type, out, t->data, n);
    return out;
}

/* Columns [c0, c0 + n) of every row: a strided view when the cut falls on
 * block boundaries, else an F32 copy. Returns false when out of memory. */
static bool wmat_cols(pt_weights *w, pt_wmat m, uint32_t c0, uint32_t n, pt_wmat *out) {
    size_t bs = pt_dtype_block_size(m.type), bb = pt_dtype_block_bytes(m.type);
    if (c0 % bs == 0 && n % bs == 0) {
        *out = m;
        out->data = (const uint8_t *)m.data + c0 / bs * bb;
        out->cols = n;
        return true;
    }
    *out = (pt_wmat){NULL, PT_DTYPE_F32, (size_t)n * sizeof(float), m.rows, n};
    float *buf = own(w, pt_aligned_alloc((size_t)m.rows * out->stride));
    float *row = malloc((size_t)m.cols * sizeof(float));
    if (!buf || !row) {
        free(row);
        return false;
    }
    for (uint32_t r = 0; r < m.rows; r++) {
        kcpu_dequantize_row(m.type, row, (const uint8_t *)m.data + (size_t)r * m.stride, m.cols);
        memcpy(buf + (size_t)r * n, row + c0, (size_t)n * sizeof(float));
    }
    free(row);
    out->data = buf;
    return true;
}

/* Llama-3 RoPE frequency scaling: long wavelengths are slowed by `factor`,
 * short ones kept, and the band between blended smoothly. Computed the way
 * the reference implementation does, in float. */
/* GGUF files of Llama 3.1+ carry the same scaling precomputed as the tensor
 * rope_freqs.weight: one divisor per frequency. */
static int build_inv_freq(pt_weights *w, const pt_model_file *mf, pt_err *err) {
    const pt_model_config *c = &w->cfg;
    uint32_t half = c->rope_dim / 2;
    const pt_tensor *rf = pt_model_file_find(mf, "rope_freqs.weight");
    if (rf && (rf->type != PT_DTYPE_F32 || rf->n_dims != 1 || rf->ne[0] != half))
        return pt_err_set(err, PT_ERR_FORMAT, "%s: tensor 'rope_freqs.weight' must be F32 [%u]", mf->path, half);
    w->inv_freq = own(w, malloc(half * sizeof(float)));
    if (!w->inv_freq) return pt_err_set(err, PT_ERR_NOMEM, "out of memory for RoPE frequencies");
    for (uint32_t i = 0; i < half; i++) {
        float f = (float)(1.0 / pow((double)c->rope_theta, (double)(2 * i) / (double)c->rope_dim));
        if (rf) {
            float div;
            memcpy(&div, (const uint8_t *)rf->data + (size_t)i * 4, 4);
            if (!(div > 0.0f))
                return pt_err_set(err, PT_ERR_FORMAT, "%s: rope_freqs.weight[%u] = %g is not positive", mf->path, i,
                                  div);
            f /= div;
        }
        if (c->rope_scale_factor > 0) {
            float lo_wl = (float)c->rope_orig_ctx / c->rope_low_freq_factor;
            float hi_wl = (float)c->rope_orig_ctx / c->rope_high_freq_factor;
            float wl = 2.0f * (float)M_PI / f;
            if (wl > lo_wl) {
                f = f / c->rope_scale_factor;
            } else if (wl >= hi_wl) {
                float smooth = ((float)c->rope_orig_ctx / wl - c->rope_low_freq_factor) /
                               (c->rope_high_freq_factor - c->rope_low_freq_factor);
                f = (1.0f - smooth) * f / c->rope_scale_factor + smooth * f;
            }
        }
        w->inv_freq[i] = f;
    }
    return PT_OK;
}

int pt_weights_build(pt_weights *w, const pt_model_file *mf, uint32_t n_mlp_chunks, pt_err *err) {
    memset(w, 0, sizeof(*w));
    w->cfg = mf->config;
    const pt_model_config *c = &w->cfg;
    if (c->n_kv_heads == 0 || c->n_kv_heads > PT_MAX_GROUPS || c->n_heads % c->n_kv_heads)
        return pt_err_set(err, PT_ERR_UNSUPPORTED, "%s: %u KV heads for %u heads not supported",
                          mf->path, c->n_kv_heads, c->n_heads);
    w->n_groups = c->n_kv_heads;
    w->q_per_kv = c->n_heads / c->n_kv_heads;
    if (n_mlp_chunks == 0 || n_mlp_chunks > PT_MAX_MLP_CHUNKS || c->d_ff % n_mlp_chunks)
        return pt_err_set(err, PT_ERR_UNSUPPORTED,
                          "%s: d_ff %u cannot be cut into %u MLP chunks (the allowed TP degrees need them; at most %d)",
                          mf->path, c->d_ff, n_mlp_chunks, PT_MAX_MLP_CHUNKS);
    w->n_mlp_chunks = n_mlp_chunks;
    w->mlp_chunk = c->d_ff / w->n_mlp_chunks;
    uint32_t hd = c->head_dim, qw = w->q_per_kv * hd;

    const pt_tensor *t;
    if (!(t = need(mf, err, "token_embd.weight", 0))) return PT_ERR_FORMAT;
    w->tok_embd = wmat_of(t);
    if (c->tied_embeddings) {
        w->output = w->tok_embd;
    } else {
        if (!(t = need(mf, err, "output.weight", 0))) return PT_ERR_FORMAT;
        w->output = wmat_of(t);
    }
    if (!(t = need(mf, err, "output_norm.weight", 0))) return PT_ERR_FORMAT;
    if (!(w->output_norm = to_f32_vec(w, t, err))) return PT_ERR_NOMEM;

    w->layers = own(w, calloc(c->n_layers, sizeof(pt_layer_weights)));
    if (!w->layers) return pt_err_set(err, PT_ERR_NOMEM, "out of memory for %u layers", c->n_layers);
    for (uint32_t l = 0; l < c->n_layers; l++) {
        pt_layer_weights *L = &w->layers[l];
        const pt_tensor *tq, *tk, *tv, *to, *tg, *tu, *td, *tan, *tfn;
        if (!(tq = need(mf, err, "blk.%d.attn_q.weight", l)) ||
            !(tk = need(mf, err, "blk.%d.attn_k.weight", l)) ||
            !(tv = need(mf, err, "blk.%d.attn_v.weight", l)) ||
            !(to = need(mf, err, "blk.%d.attn_output.weight", l)) ||
            !(tg = need(mf, err, "blk.%d.ffn_gate.weight", l)) ||
            !(tu = need(mf, err, "blk.%d.ffn_up.weight", l)) ||
            !(td = need(mf, err, "blk.%d.ffn_down.weight", l)) ||
            !(tan = need(mf, err, "blk.%d.attn_norm.weight", l)) ||
            !(tfn = need(mf, err, "blk.%d.ffn_norm.weight", l)))
            return PT_ERR_FORMAT;
        if (!(L->attn_norm = to_f32_vec(w, tan, err)) || !(L->ffn_norm = to_f32_vec(w, tfn, err)))
            return PT_ERR_NOMEM;
        if (c->qkv_bias) {
            const pt_tensor *bq, *bk, *bv;
            if (!(bq = need(mf, err, "blk.%d.attn_q.bias", l)) ||
                !(bk = need(mf, err, "blk.%d.attn_k.bias", l)) ||
                !(bv = need(mf, err, "blk.%d.attn_v.bias", l)))
                return PT_ERR_FORMAT;
            if (!(L->bq = to_f32_vec(w, bq, err)) || !(L->bk = to_f32_vec(w, bk, err)) ||
                !(L->bv = to_f32_vec(w, bv, err)))
                return PT_ERR_NOMEM;
        }
        pt_wmat q = wmat_of(tq), k = wmat_of(tk), v = wmat_of(tv), o = wmat_of(to);
        for (uint32_t g = 0; g < w->n_groups; g++) {
            L->q[g] = wmat_rows(q, g * qw, qw);
            L->k[g] = wmat_rows(k, g * hd, hd);
            L->v[g] = wmat_rows(v, g * hd, hd);
            if (!wmat_cols(w, o, g * qw, qw, &L->o[g]))
                return pt_err_set(err, PT_ERR_NOMEM, "out of memory converting layer %u's O chunks", l);
        }
        pt_wmat gm = wmat_of(tg), um = wmat_of(tu), dm = wmat_of(td);
        for (uint32_t m = 0; m < w->n_mlp_chunks; m++) {
            L->gate[m] = wmat_rows(gm, m * w->mlp_chunk, w->mlp_chunk);
            L->up[m] = wmat_rows(um, m * w->mlp_chunk, w->mlp_chunk);
            if (!wmat_cols(w, dm, m * w->mlp_chunk, w->mlp_chunk, &L->down[m]))
                return pt_err_set(err, PT_ERR_NOMEM, "out of memory converting layer %u's down chunks", l);
        }
        if (l == 0 && (L->o[0].type != o.type || L->down[0].type != dm.type))
            pt_log(PT_LOG_WARN, "%s: O/down chunks are not block-aligned for %s; kept as F32",
                   mf->path, pt_dtype_name(o.type));
    }
    return build_inv_freq(w, mf, err);
}

void pt_weights_free(pt_weights *w) {
    for (size_t i = 0; i < w->n_owned; i++) free(w->owned[i]);
    free(w->owned);
    memset(w, 0, sizeof(*w));
}

/* ---- shards ---- */

static size_t wmat_bytes(const pt_wmat *m) {
    uint64_t rb = 0;
    pt_dtype_row_bytes(m->type, m->cols, &rb);
    return (size_t)rb * m->rows;
}

/* Copies m into dst, rows packed (stride = row bytes), or with dst NULL only
 * sizes it; returns the bytes it takes, rounded so that every chunk starts
 * 64-byte aligned for the kernels. */
static size_t wmat_pack(pt_wmat *out, const pt_wmat *m, uint8_t *dst) {
    uint64_t rb = 0;
    pt_dtype_row_bytes(m->type, m->cols, &rb);
    if (dst) {
        for (uint32_t r = 0; r < m->rows; r++)
            memcpy(dst + (size_t)r * rb, (const uint8_t *)m->data + (size_t)r * m->stride, (size_t)rb);
        *out = (pt_wmat){dst, m->type, (size_t)rb, m->rows, m->cols};
    }
    return (size_t)(rb * m->rows + 63) / 64 * 64;
}

/* Lays the chunks of groups [g0, g1) and MLP chunks [c0, c1) of `from` out from base
 * into the tables `layers` (walked twice: with base NULL to size the shard,
 * then to fill it); returns the bytes. */
static size_t shard_walk(const pt_weights *w, const pt_layer_weights *from, pt_layer_weights *layers, uint8_t *base,
                         uint32_t g0, uint32_t g1, uint32_t c0, uint32_t c1) {
    size_t off = 0;
    for (uint32_t l = 0; l < w->cfg.n_layers; l++) {
        const pt_layer_weights *L = &from[l];
        pt_layer_weights *S = &layers[l];
        for (uint32_t g = g0; g < g1; g++) {
            off += wmat_pack(&S->q[g], &L->q[g], base ? base + off : NULL);
            off += wmat_pack(&S->k[g], &L->k[g], base ? base + off : NULL);
            off += wmat_pack(&S->v[g], &L->v[g], base ? base + off : NULL);
            off += wmat_pack(&S->o[g], &L->o[g], base ? base + off : NULL);
        }
        for (uint32_t m = c0; m < c1; m++) {
            off += wmat_pack(&S->gate[m], &L->gate[m], base ? base + off : NULL);
            off += wmat_pack(&S->up[m], &L->up[m], base ? base + off : NULL);
            off += wmat_pack(&S->down[m], &L->down[m], base ? base + off : NULL);
        }
    }
    return off;
}

static uint64_t replicated_bytes(const pt_weights *w);

uint64_t pt_shard_bytes(const pt_weights *w, uint32_t g0, uint32_t g1, uint32_t c0, uint32_t c1) {
    pt_layer_weights *layers = calloc(w->cfg.n_layers, sizeof(pt_layer_weights));
    if (!layers) return UINT64_MAX; /* out of memory sizing: as if it could not fit */
    uint64_t n = shard_walk(w, w->layers, layers, NULL, g0, g1, c0, c1) + replicated_bytes(w);
    free(layers);
    return n;
}

static uint64_t replicated_bytes(const pt_weights *w) {
    const pt_model_config *c = &w->cfg;
    uint64_t b = wmat_bytes(&w->tok_embd) + (c->tied_embeddings ? 0 : wmat_bytes(&w->output));
    uint64_t per_layer = 2 * (uint64_t)c->d_model * sizeof(float);
    if (c->qkv_bias) per_layer += (uint64_t)(c->n_heads + 2 * c->n_kv_heads) * c->head_dim * sizeof(float);
    return b + c->n_layers * per_layer + (uint64_t)c->d_model * sizeof(float) + c->rope_dim / 2 * sizeof(float);
}

int pt_shard_build(pt_shard *s, const pt_weights *w, const pt_layer_weights *chunks_from, pt_device *dev, uint32_t g0,
                   uint32_t g1, uint32_t c0, uint32_t c1, pt_err *err) {
    if (!chunks_from) chunks_from = w->layers;
    memset(s, 0, sizeof(*s));
    const pt_model_config *c = &w->cfg;
    uint64_t replicated = replicated_bytes(w);
    int rc = pt_device_reserve(dev, PT_MEM_WEIGHTS, replicated, "replicated weights", err);
    if (rc) return rc;
    s->dev = dev;
    s->replicated_bytes = replicated;
    s->layers = calloc(c->n_layers, sizeof(pt_layer_weights));
    if (!s->layers) {
        pt_shard_free(s);
        return pt_err_set(err, PT_ERR_NOMEM, "out of memory for a shard's tables");
    }
    size_t bytes = shard_walk(w, chunks_from, s->layers, NULL, g0, g1, c0, c1);
    if ((rc = pt_device_alloc(dev, PT_MEM_WEIGHTS, bytes, &s->mem, "weight shard", err))) {
        pt_shard_free(s);
        return rc;
    }
    s->bytes = bytes;
    shard_walk(w, chunks_from, s->layers, s->mem, g0, g1, c0, c1);
    /* Replicated vectors point into the model view; chunks outside the
     * shard stay empty. */
    for (uint32_t l = 0; l < c->n_layers; l++) {
        const pt_layer_weights *L = &w->layers[l];
        pt_layer_weights *S = &s->layers[l];
        S->attn_norm = L->attn_norm;
        S->ffn_norm = L->ffn_norm;
        S->bq = L->bq;
        S->bk = L->bk;
        S->bv = L->bv;
    }
    return PT_OK;
}

void pt_shard_free(pt_shard *s) {
    if (!s->dev) return;
    pt_device_release(s->dev, PT_MEM_WEIGHTS, s->mem, s->bytes);
    pt_device_unreserve(s->dev, PT_MEM_WEIGHTS, s->replicated_bytes);
    free(s->layers);
    memset(s, 0, sizeof(*s));
}
