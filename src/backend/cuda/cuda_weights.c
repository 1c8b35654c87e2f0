/* Weights on the GPU in BF16, in the chunk layout of DESIGN.md section 3.
 *
 * Whatever the file holds (BF16, F16, F32, or a GGUF quantization) is
 * dequantized on the host to f32 and rounded once to bf16. Every TP chunk is
 * a contiguous range of rows of its matrix:
 *   qkv    (G * (q_per_kv + 2) * hd, d)  NK: per KV group g its q_per_kv query
 *          heads, its K head, its V head; a rank's groups are one row range
 *   o      (n_heads * hd, d)             KN: O transposed, so that a rank's
 *          input columns (its groups' heads) are one row range
 *   gate_up (2 * ff, d)                  NK: per MLP chunk m its gate rows
 *          then its up rows
 *   down   (ff, d)                       KN: down transposed, chunks are row ranges
 * With the fused outputs read in place by kcuda_qkv_bias_rope, kcuda_kv_append,
 * the attention kernels and kcuda_swiglu_chunked_bf16. */
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
} convert_job;

static void convert_rows(void *arg, int tid, int nth) {
    const convert_job *j = arg;
    long lo, hi;
    pt_pool_split((long)j->m->rows, tid, nth, &lo, &hi);
    float *row = pt_xmalloc((size_t)j->m->cols * sizeof(float));
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
    free(row);
}

static void put(pt_pool *pool, staging *dst, const pt_wmat *m, size_t row0, int transpose) {
    convert_job j = {m, dst, row0, transpose};
    pt_pool_run(pool, convert_rows, &j);
}

/* Uploads a staged matrix into a fresh device buffer; frees the host copy. */
static int upload(cuda_backend *cb, uint16_t **out, staging *s, const char *what, pt_err *err) {
    size_t bytes = s->rows * s->cols * sizeof(uint16_t);
    int rc = cu_alloc(cb, (void **)out, bytes, what, err);
    if (rc == PT_OK) rc = cu_check(cudaMemcpy(*out, s->host, bytes, cudaMemcpyHostToDevice), what, err);
    free(s->host);
    s->host = NULL;
    return rc;
}

static int stage_alloc(staging *s, size_t rows, size_t cols, pt_err *err) {
    s->rows = rows;
    s->cols = cols;
    s->host = malloc(rows * cols * sizeof(uint16_t));
    return s->host ? PT_OK : pt_err_set(err, PT_ERR_NOMEM, "out of host memory staging a %zux%zu weight", rows, cols);
}

static int upload_f32(cuda_backend *cb, float **out, const float *src, size_t n, const char *what, pt_err *err) {
    int rc = cu_alloc(cb, (void **)out, n * sizeof(float), what, err);
    if (rc == PT_OK) rc = cu_check(cudaMemcpy(*out, src, n * sizeof(float), cudaMemcpyHostToDevice), what, err);
    return rc;
}

int cu_weights_upload(cuda_backend *cb, const pt_weights *w, int n_threads, pt_err *err) {
    const pt_model_config *c = &w->cfg;
    size_t d = c->d_model, hd = c->head_dim, G = w->n_groups, qpk = w->q_per_kv;
    size_t qw = qpk * hd, gs = (qpk + 2) * hd, ff = c->d_ff, mc = w->mlp_chunk;
    pt_pool *pool = pt_pool_create(n_threads);
    int rc = PT_OK;
    staging s = {0};

    cb->layers = pt_xcalloc(c->n_layers, sizeof(cu_layer));
    for (uint32_t l = 0; l < c->n_layers && rc == PT_OK; l++) {
        const pt_layer_weights *L = &w->layers[l];
        cu_layer *D = &cb->layers[l];
        if ((rc = stage_alloc(&s, G * gs, d, err))) break;
        for (size_t g = 0; g < G; g++) {
            put(pool, &s, &L->q[g], g * gs, 0);
            put(pool, &s, &L->k[g], g * gs + qw, 0);
            put(pool, &s, &L->v[g], g * gs + qw + hd, 0);
        }
        if ((rc = upload(cb, &D->qkv, &s, "qkv weights", err))) break;
        if (L->bq) {
            float *b = pt_xmalloc(G * gs * sizeof(float));
            for (size_t g = 0; g < G; g++) {
                memcpy(b + g * gs, L->bq + g * qw, qw * sizeof(float));
                memcpy(b + g * gs + qw, L->bk + g * hd, hd * sizeof(float));
                memcpy(b + g * gs + qw + hd, L->bv + g * hd, hd * sizeof(float));
            }
            rc = upload_f32(cb, &D->qkv_bias, b, G * gs, "qkv bias", err);
            free(b);
            if (rc) break;
        }
        if ((rc = stage_alloc(&s, G * qw, d, err))) break;
        for (size_t g = 0; g < G; g++) put(pool, &s, &L->o[g], g * qw, 1);
        if ((rc = upload(cb, &D->o, &s, "attention output weights", err))) break;
        if ((rc = stage_alloc(&s, 2 * ff, d, err))) break;
        for (size_t m = 0; m < w->n_mlp_chunks; m++) {
            put(pool, &s, &L->gate[m], 2 * m * mc, 0);
            put(pool, &s, &L->up[m], 2 * m * mc + mc, 0);
        }
        if ((rc = upload(cb, &D->gate_up, &s, "gate/up weights", err))) break;
        if ((rc = stage_alloc(&s, ff, d, err))) break;
        for (size_t m = 0; m < w->n_mlp_chunks; m++) put(pool, &s, &L->down[m], m * mc, 1);
        if ((rc = upload(cb, &D->down, &s, "down weights", err))) break;
        if ((rc = upload_f32(cb, &D->attn_norm, L->attn_norm, d, "attention norm", err))) break;
        if ((rc = upload_f32(cb, &D->ffn_norm, L->ffn_norm, d, "MLP norm", err))) break;
    }
    if (rc == PT_OK && (rc = stage_alloc(&s, c->vocab_size, d, err)) == PT_OK) {
        put(pool, &s, &w->tok_embd, 0, 0);
        rc = upload(cb, &cb->tok_embd, &s, "token embeddings", err);
    }
    if (rc == PT_OK) {
        if (w->output.data == w->tok_embd.data) {
            cb->lm_head = cb->tok_embd; /* tied */
        } else if ((rc = stage_alloc(&s, c->vocab_size, d, err)) == PT_OK) {
            put(pool, &s, &w->output, 0, 0);
            rc = upload(cb, &cb->lm_head, &s, "LM head", err);
        }
    }
    if (rc == PT_OK) rc = upload_f32(cb, &cb->out_norm, w->output_norm, d, "output norm", err);
    if (rc == PT_OK) rc = upload_f32(cb, &cb->inv_freq, w->inv_freq, c->rope_dim / 2, "RoPE frequencies", err);
    free(s.host);
    pt_pool_free(pool);
    return rc;
}
