/* Arranges a model file's tensors into TP chunks (DESIGN.md section 3).
 *
 * Column-parallel matrices (Q, K, V, gate, up) are cut by output rows, which
 * are contiguous in the file: their chunks point into the mapping. Row-parallel
 * matrices (O, down) are cut by input columns; each chunk is copied into its
 * own contiguous buffer so that a rank's shard is a set of whole chunks. A
 * chunk boundary that falls inside a quantization block cannot be cut; such a
 * matrix is dequantized to F32 first (logged), which costs memory, not
 * correctness. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/kcpu_matmul.h"
#include "engine/engine_internal.h"

#define MLP_CHUNKS 4

static void *own(pt_weights *w, void *p) {
    w->owned = realloc(w->owned, (w->n_owned + 1) * sizeof(void *));
    if (!w->owned) abort();
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

static float *to_f32_vec(pt_weights *w, const pt_tensor *t) {
    uint64_t n = t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
    float *out = own(w, pt_xmalloc(n * sizeof(float)));
    kcpu_dequantize_row(t->type, out, t->data, n);
    return out;
}

/* Columns [c0, c0 + n) of every row, copied into a contiguous buffer. Falls
 * back to F32 when the cut is not on block boundaries. */
static pt_wmat wmat_cols(pt_weights *w, pt_wmat m, uint32_t c0, uint32_t n) {
    size_t bs = pt_dtype_block_size(m.type), bb = pt_dtype_block_bytes(m.type);
    pt_wmat out = {NULL, m.type, 0, m.rows, n};
    if (c0 % bs == 0 && n % bs == 0) {
        out.stride = n / bs * bb;
        uint8_t *buf = own(w, pt_aligned_alloc((size_t)m.rows * out.stride));
        if (!buf) abort();
        for (uint32_t r = 0; r < m.rows; r++)
            memcpy(buf + (size_t)r * out.stride,
                   (const uint8_t *)m.data + (size_t)r * m.stride + c0 / bs * bb, out.stride);
        out.data = buf;
        return out;
    }
    out.type = PT_DTYPE_F32;
    out.stride = (size_t)n * sizeof(float);
    float *buf = own(w, pt_aligned_alloc((size_t)m.rows * out.stride));
    float *row = pt_xmalloc((size_t)m.cols * sizeof(float));
    if (!buf) abort();
    for (uint32_t r = 0; r < m.rows; r++) {
        kcpu_dequantize_row(m.type, row, (const uint8_t *)m.data + (size_t)r * m.stride, m.cols);
        memcpy(buf + (size_t)r * n, row + c0, (size_t)n * sizeof(float));
    }
    free(row);
    out.data = buf;
    return out;
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
    w->inv_freq = own(w, pt_xmalloc(half * sizeof(float)));
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

int pt_weights_build(pt_weights *w, const pt_model_file *mf, pt_err *err) {
    memset(w, 0, sizeof(*w));
    w->cfg = mf->config;
    const pt_model_config *c = &w->cfg;
    if (c->n_kv_heads == 0 || c->n_kv_heads > PT_MAX_GROUPS || c->n_heads % c->n_kv_heads)
        return pt_err_set(err, PT_ERR_UNSUPPORTED, "%s: %u KV heads for %u heads not supported",
                          mf->path, c->n_kv_heads, c->n_heads);
    w->n_groups = c->n_kv_heads;
    w->q_per_kv = c->n_heads / c->n_kv_heads;
    w->n_mlp_chunks = c->d_ff % MLP_CHUNKS == 0 ? MLP_CHUNKS : 1;
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
    w->output_norm = to_f32_vec(w, t);

    w->layers = own(w, pt_xcalloc(c->n_layers, sizeof(pt_layer_weights)));
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
        L->attn_norm = to_f32_vec(w, tan);
        L->ffn_norm = to_f32_vec(w, tfn);
        if (c->qkv_bias) {
            const pt_tensor *bq, *bk, *bv;
            if (!(bq = need(mf, err, "blk.%d.attn_q.bias", l)) ||
                !(bk = need(mf, err, "blk.%d.attn_k.bias", l)) ||
                !(bv = need(mf, err, "blk.%d.attn_v.bias", l)))
                return PT_ERR_FORMAT;
            L->bq = to_f32_vec(w, bq);
            L->bk = to_f32_vec(w, bk);
            L->bv = to_f32_vec(w, bv);
        }
        pt_wmat q = wmat_of(tq), k = wmat_of(tk), v = wmat_of(tv), o = wmat_of(to);
        for (uint32_t g = 0; g < w->n_groups; g++) {
            L->q[g] = wmat_rows(q, g * qw, qw);
            L->k[g] = wmat_rows(k, g * hd, hd);
            L->v[g] = wmat_rows(v, g * hd, hd);
            L->o[g] = wmat_cols(w, o, g * qw, qw);
        }
        pt_wmat gm = wmat_of(tg), um = wmat_of(tu), dm = wmat_of(td);
        for (uint32_t m = 0; m < w->n_mlp_chunks; m++) {
            L->gate[m] = wmat_rows(gm, m * w->mlp_chunk, w->mlp_chunk);
            L->up[m] = wmat_rows(um, m * w->mlp_chunk, w->mlp_chunk);
            L->down[m] = wmat_cols(w, dm, m * w->mlp_chunk, w->mlp_chunk);
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
