/* Weights on the GPUs in BF16, in the chunk layout of DESIGN.md section 3.
 *
 * Whatever the file holds (BF16, F16, F32, or a GGUF quantization) is
 * dequantized on the host to f32 and rounded once to bf16. Every TP chunk is
 * a contiguous range of rows of its matrix, so each matrix is assembled once
 * on the host and every rank receives the row range of its own chunks:
 *   qkv    (G * (q_per_kv + 2) * hd, d)  NK: per KV group g its q_per_kv query
 *          heads, its K head, its V head; a rank's groups are one row range
 *   o      (n_heads * hd, d)             KN: O transposed, so that a rank's
 *          input columns (its groups' heads) are one row range
 *   gate_up (2 * ff, d)                  NK: per MLP chunk m its gate rows
 *          then its up rows
 *   down   (ff, d)                       KN: down transposed, chunks are row ranges
 * With the fused outputs read in place by kcuda_qkv_bias_rope, kcuda_kv_append,
 * the attention kernels and kcuda_swiglu_chunked_bf16. At TP 1 the one rank's
 * range is the whole matrix.
 *
 * Replicated: token embeddings, norms and RoPE frequencies on every rank;
 * the LM head and the final norm only on rank 0, the only rank that computes
 * logits (cuda_step.c). */
#include <stdlib.h>
#include <string.h>

#include "backend/cuda/cuda_internal.h"
#include "cpu/kcpu_matmul.h"

/* A matrix being assembled on the host, then uploaded. */
typedef struct {
    uint16_t *host;
    size_t rows, cols;
} staging;

typedef struct {
    const pt_wmat *m; /* source (rows, cols) */
    staging *dst;
    size_t row0;      /* NK: first destination row; KN: first destination row of the transpose */
    int transpose;    /* 0: dst[row0 + r][c] = m[r][c]; 1: dst[row0 + c][r] = m[r][c] */
    float *rows_f32;  /* one row of row_len floats per thread */
    size_t row_len;
} convert_job;

static void convert_rows(void *arg, int tid, int nth) {
    const convert_job *j = arg;
    long lo, hi;
    pt_pool_split((long)j->m->rows, tid, nth, &lo, &hi);
    float *row = j->rows_f32 + (size_t)tid * j->row_len;
    for (long r = lo; r < hi; r++) {
        kcpu_dequantize_row(j->m->type, row, (const uint8_t *)j->m->data + (size_t)r * j->m->stride, j->m->cols);
        if (!j->transpose) {
            uint16_t *d = j->dst->host + (j->row0 + (size_t)r) * j->dst->cols;
            for (uint32_t c = 0; c < j->m->cols; c++) d[c] = pt_f32_to_bf16(row[c]);
        } else {
            for (uint32_t c = 0; c < j->m->cols; c++)
                j->dst->host[(j->row0 + c) * j->dst->cols + (size_t)r] = pt_f32_to_bf16(row[c]);
        }
    }
}

/* The host side of an upload: a pool to convert with and its row buffers. */
typedef struct {
    pt_pool *pool;
    float *rows_f32;
    size_t row_len;
} converter;

static void put(converter *cv, staging *dst, const pt_wmat *m, size_t row0, int transpose) {
    convert_job j = {m, dst, row0, transpose, cv->rows_f32, cv->row_len};
    pt_pool_run(cv->pool, convert_rows, &j);
}

static int stage_alloc(staging *s, size_t rows, size_t cols, pt_err *err) {
    free(s->host);
    s->rows = rows;
    s->cols = cols;
    s->host = malloc(rows * cols * sizeof(uint16_t) + 1);
    return s->host ? PT_OK : pt_err_set(err, PT_ERR_NOMEM, "out of host memory staging a %zux%zu weight", rows, cols);
}

/* Rows [row0, row0 + rows) of a staged matrix into a fresh buffer on the
 * rank. cudaMemcpy from pageable memory may return before the DMA lands;
 * creation synchronizes every device before the first step. */
static int upload_rows(cu_rank *rk, uint16_t **out, const staging *s, size_t row0, size_t rows, uint64_t *acct,
                       const char *what, pt_err *err) {
    size_t bytes = rows * s->cols * sizeof(uint16_t);
    int rc = cu_alloc(rk, PT_MEM_WEIGHTS, (void **)out, bytes, what, err);
    if (rc == PT_OK)
        rc = cu_check(rk, cudaMemcpy(*out, s->host + row0 * s->cols, bytes, cudaMemcpyHostToDevice), what, err);
    if (rc == PT_OK) *acct += bytes ? bytes : 1; /* what cu_alloc reserved */
    return rc;
}

static int upload_f32(cu_rank *rk, float **out, const float *src, size_t n, uint64_t *acct, const char *what,
                      pt_err *err) {
    int rc = cu_alloc(rk, PT_MEM_WEIGHTS, (void **)out, n * sizeof(float), what, err);
    if (rc == PT_OK) rc = cu_check(rk, cudaMemcpy(*out, src, n * sizeof(float), cudaMemcpyHostToDevice), what, err);
    if (rc == PT_OK) *acct += n ? n * sizeof(float) : 1; /* what cu_alloc reserved */
    return rc;
}

/* One layer's matrices, each staged once and cut into the ranks' ranges. */
static int upload_layer(cuda_backend *cb, converter *cv, staging *s, const pt_weights *w, uint32_t l, pt_err *err) {
    const pt_model_config *c = &w->cfg;
    size_t d = c->d_model, hd = c->head_dim, G = w->n_groups, qpk = w->q_per_kv;
    size_t qw = qpk * hd, gs = (qpk + 2) * hd, ff = c->d_ff, mc = w->mlp_chunk;
    const pt_layer_weights *L = &w->layers[l];
    int rc;

    if ((rc = stage_alloc(s, G * gs, d, err))) return rc;
    for (size_t g = 0; g < G; g++) {
        put(cv, s, &L->q[g], g * gs, 0);
        put(cv, s, &L->k[g], g * gs + qw, 0);
        put(cv, s, &L->v[g], g * gs + qw + hd, 0);
    }
    for (int i = 0; i < cb->tp; i++) {
        cu_rank *rk = &cb->ranks[i];
        if ((rc = upload_rows(rk, &rk->layers[l].qkv, s, rk->r->g0 * gs, rk->ng * gs, &rk->shard_bytes,
                              "qkv weights", err)))
            return rc;
    }
    if (L->bq) {
        float *b = malloc(G * gs * sizeof(float));
        if (!b) return pt_err_set(err, PT_ERR_NOMEM, "out of host memory staging the qkv bias");
        for (size_t g = 0; g < G; g++) {
            memcpy(b + g * gs, L->bq + g * qw, qw * sizeof(float));
            memcpy(b + g * gs + qw, L->bk + g * hd, hd * sizeof(float));
            memcpy(b + g * gs + qw + hd, L->bv + g * hd, hd * sizeof(float));
        }
        for (int i = 0; i < cb->tp && rc == PT_OK; i++) {
            cu_rank *rk = &cb->ranks[i];
            rc = upload_f32(rk, &rk->layers[l].qkv_bias, b + rk->r->g0 * gs, rk->ng * gs, &rk->shard_bytes,
                            "qkv bias", err);
        }
        free(b);
        if (rc) return rc;
    }

    if ((rc = stage_alloc(s, G * qw, d, err))) return rc;
    for (size_t g = 0; g < G; g++) put(cv, s, &L->o[g], g * qw, 1);
    for (int i = 0; i < cb->tp; i++) {
        cu_rank *rk = &cb->ranks[i];
        if ((rc = upload_rows(rk, &rk->layers[l].o, s, rk->r->g0 * qw, rk->ng * qw, &rk->shard_bytes,
                              "attention output weights", err)))
            return rc;
    }

    if ((rc = stage_alloc(s, 2 * ff, d, err))) return rc;
    for (size_t m = 0; m < w->n_mlp_chunks; m++) {
        put(cv, s, &L->gate[m], 2 * m * mc, 0);
        put(cv, s, &L->up[m], 2 * m * mc + mc, 0);
    }
    for (int i = 0; i < cb->tp; i++) {
        cu_rank *rk = &cb->ranks[i];
        if ((rc = upload_rows(rk, &rk->layers[l].gate_up, s, 2 * rk->r->c0 * mc, 2 * rk->nc * mc, &rk->shard_bytes,
                              "gate/up weights", err)))
            return rc;
    }

    if ((rc = stage_alloc(s, ff, d, err))) return rc;
    for (size_t m = 0; m < w->n_mlp_chunks; m++) put(cv, s, &L->down[m], m * mc, 1);
    for (int i = 0; i < cb->tp; i++) {
        cu_rank *rk = &cb->ranks[i];
        if ((rc = upload_rows(rk, &rk->layers[l].down, s, rk->r->c0 * mc, rk->nc * mc, &rk->shard_bytes,
                              "down weights", err)))
            return rc;
    }

    for (int i = 0; i < cb->tp; i++) {
        cu_rank *rk = &cb->ranks[i];
        cu_layer *D = &rk->layers[l];
        if ((rc = upload_f32(rk, &D->attn_norm, L->attn_norm, d, &rk->replicated_bytes, "attention norm", err)) ||
            (rc = upload_f32(rk, &D->ffn_norm, L->ffn_norm, d, &rk->replicated_bytes, "MLP norm", err)))
            return rc;
    }
    return PT_OK;
}

int cu_weights_upload(cuda_backend *cb, const pt_weights *w, int n_threads, pt_err *err) {
    const pt_model_config *c = &w->cfg;
    size_t d = c->d_model, qw = (size_t)w->q_per_kv * c->head_dim, mc = w->mlp_chunk;
    converter cv = {0};
    staging s = {0};
    int rc = PT_OK;

    for (int i = 0; i < cb->tp; i++)
        if (!(cb->ranks[i].layers = calloc(c->n_layers, sizeof(cu_layer))))
            return pt_err_set(err, PT_ERR_NOMEM, "out of host memory for the CUDA layer table");
    /* Source rows are d (QKV, gate, up, embeddings, LM head), qw (O) or mc
     * (down) wide. */
    cv.row_len = d > qw ? d : qw;
    if (mc > cv.row_len) cv.row_len = mc;
    if (!(cv.pool = pt_pool_create(n_threads)))
        return pt_err_set(err, PT_ERR_NOMEM, "cannot start %d threads to convert weights", n_threads);
    if (!(cv.rows_f32 = malloc((size_t)pt_pool_size(cv.pool) * cv.row_len * sizeof(float)))) {
        pt_pool_free(cv.pool);
        return pt_err_set(err, PT_ERR_NOMEM, "out of host memory converting weights");
    }

    for (uint32_t l = 0; l < c->n_layers && rc == PT_OK; l++) rc = upload_layer(cb, &cv, &s, w, l, err);
    if (rc == PT_OK && (rc = stage_alloc(&s, c->vocab_size, d, err)) == PT_OK) {
        put(&cv, &s, &w->tok_embd, 0, 0);
        for (int i = 0; i < cb->tp && rc == PT_OK; i++) {
            cu_rank *rk = &cb->ranks[i];
            rc = upload_rows(rk, &rk->tok_embd, &s, 0, c->vocab_size, &rk->replicated_bytes, "token embeddings", err);
        }
    }
    cu_rank *r0 = &cb->ranks[0];
    if (rc == PT_OK) {
        if (w->output.data == w->tok_embd.data) {
            r0->lm_head = r0->tok_embd; /* tied */
        } else if ((rc = stage_alloc(&s, c->vocab_size, d, err)) == PT_OK) {
            put(&cv, &s, &w->output, 0, 0);
            rc = upload_rows(r0, &r0->lm_head, &s, 0, c->vocab_size, &r0->replicated_bytes, "LM head", err);
        }
    }
    if (rc == PT_OK) rc = upload_f32(r0, &r0->out_norm, w->output_norm, d, &r0->replicated_bytes, "output norm", err);
    for (int i = 0; i < cb->tp && rc == PT_OK; i++) {
        cu_rank *rk = &cb->ranks[i];
        rc = upload_f32(rk, &rk->inv_freq, w->inv_freq, c->rope_dim / 2, &rk->replicated_bytes, "RoPE frequencies",
                        err);
    }
    free(s.host);
    free(cv.rows_f32);
    pt_pool_free(cv.pool);
    return rc;
}
