/* A step of the CUDA backend on every rank of the instance, driven from the
 * calling thread.
 *
 * Per rank, on its own stream (T = the step's tokens):
 *   stage (tokens, positions, runs, logit rows: one H2D copy)
 *   embed; per layer:
 *     [TP > 1, layer > 0: fold the MLP partials of the previous layer into x]
 *     rmsnorm -> bf16, QKV GEMM over the rank's groups, bias + RoPE, KV
 *     append into the rank's pages, attention (decode runs: split-KV paged
 *     decode, with query-aware page selection past select_dense_layers;
 *     prefill runs: causal paged prefill), O;
 *     [TP > 1: all-gather of the O partials, fold into x]
 *     rmsnorm -> bf16, gate|up GEMM over the rank's chunks, SwiGLU -> bf16,
 *     down;
 *     [TP > 1: all-gather of the down partials]
 *   rank 0: [TP > 1: fold], final rmsnorm of the logit rows, LM head GEMM,
 *   D2H copy of the logits.
 *
 * Row-parallel products (O, down). At TP 1 the GEMM adds straight into the
 * residual stream (beta = 1), as this backend always did. At TP > 1 each
 * rank writes one partial sum per chunk it owns (a KV-head group for O, an
 * MLP chunk for down) into part_attn / part_mlp (chunk c at c * T * d), the
 * ranks all-gather them (pt_comm_all_gather_v on the instance's group, each
 * rank's buffer and stream), and every rank folds all of them left to right
 * in chunk order into its residual (kcuda_fold_partials: the CPU backend's
 * order, so that the residual stream is the same on every rank and the
 * sum is done as the CPU reference does it). The comm operations are
 * enqueued on the ranks' streams between the kernels before and after
 * them, so nothing waits on the host until the end of the step, where
 * pt_comm_wait bounds the wait and reports asynchronous NCCL errors.
 *
 * LM head: only rank 0 computes logits, over the whole vocabulary: its
 * residual stream is every rank's, so this needs no communication (the CPU
 * backend splits the vocabulary across ranks instead; each logit is one
 * whole dot product either way).
 *
 * Decode-only steps at TP 1 are captured as CUDA graphs keyed by their
 * shape and replayed: every pointer is fixed and the per-step inputs are
 * read from the staging block, so a replay is the same work as an eager
 * run. At TP > 1 steps always run eagerly: the comm layer does not support
 * capturing its operations (comm.h). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cuda/cuda_internal.h"

#define CK(rk, call, what)                               \
    do {                                                 \
        int rc_ = cu_check((rk), (call), (what), err);   \
        if (rc_) return rc_;                             \
    } while (0)

uint32_t cu_ctx_bucket(const pt_instance *e, uint32_t ctx) {
    uint32_t b = 256;
    while (b < ctx) b *= 2;
    return b < e->opts.max_ctx ? b : e->opts.max_ctx;
}

static size_t group_rows(const pt_instance *e) { return (size_t)(e->w.q_per_kv + 2) * e->w.cfg.head_dim; }

kcuda_attn_args cu_attn_args(const cu_rank *rk, const pt_instance *e, uint32_t layer, const kcuda_run *runs,
                             uint32_t n_runs, uint32_t max_ctx) {
    const pt_weights *w = &e->w;
    size_t hd = w->cfg.head_dim, gs = group_rows(e), P = e->opts.page_size;
    kcuda_attn_args a = {0};
    a.in = (kcuda_qkv){rk->qkv, rk->qkv + w->q_per_kv * hd, rk->qkv + (w->q_per_kv + 1) * hd, rk->ng * gs, gs};
    a.out_bf16 = rk->att;
    a.ld_out = (size_t)rk->ng * w->q_per_kv * hd;
    const pt_kv_pool *kv = rk->r->kv;
    uint16_t *kv_data = kv->data;
    float *kv_minmax = kv->minmax;
    a.kv = (kcuda_kv_layer){kv_data ? kv_data + (size_t)layer * kv->n_slots * 2 * P * hd : NULL,
                            kv_minmax ? kv_minmax + (size_t)layer * kv->n_slots * 2 * hd : NULL, kv->n_slots,
                            (uint32_t)P, (uint32_t)hd};
    a.bt = (kcuda_pages){rk->block_tables, e->pages_per_seq};
    a.runs = runs;
    a.n_runs = n_runs;
    a.n_kv_heads = rk->ng;
    a.q_per_kv = w->q_per_kv;
    a.head_dim = hd;
    a.scale = 1.0f / sqrtf((float)hd);
    a.max_ctx = max_ctx;
    return a;
}

/* ---- staging ---- */

typedef struct {
    uint32_t n_dec, n_pre;          /* runs of one token, runs of several */
    uint32_t dec_ctx, pre_ctx;      /* bucketed longest context of each kind */
    bool select;                    /* a decode context exceeds the selection budget */
} step_shape;

static kcuda_run *stage_runs(cuda_backend *cb) { return (kcuda_run *)(cb->stage_host + cb->off_runs); }

/* Fills the staging block from the engine's staged step: decode runs first,
 * then prefill runs, so that each kind is one contiguous device array. The
 * runs name sequence slots, which index every rank's block tables. */
static step_shape stage_step(cuda_backend *cb, const pt_instance *e) {
    step_shape sh = {0};
    int32_t *tok = (int32_t *)(cb->stage_host + cb->off_tok), *pos = (int32_t *)(cb->stage_host + cb->off_pos);
    int32_t *out = (int32_t *)(cb->stage_host + cb->off_out);
    for (uint32_t t = 0; t < e->T; t++) {
        tok[t] = e->tok[t];
        pos[t] = (int32_t)e->tok_pos[t];
    }
    for (uint32_t i = 0; i < e->n_out; i++) out[i] = (int32_t)e->out_row[i];
    kcuda_run *runs = stage_runs(cb);
    uint32_t n_runs = 0;
    for (uint32_t t = 0; t < e->T;) {
        uint32_t t1 = t + 1;
        while (t1 < e->T && e->tok_seq[t1] == e->tok_seq[t]) t1++;
        runs[n_runs++] = (kcuda_run){(int32_t)t, (int32_t)(t1 - t), (int32_t)e->tok_pos[t], e->tok_seq[t]};
        t = t1;
    }
    /* Stable partition: decode runs to the front. */
    kcuda_run *tmp = cb->runs_tmp;
    uint32_t k = 0;
    /* A decode: one token of a sequence that is not a prompt's (a prompt
     * chunk of one token stays dense, with the prefills). */
    for (uint32_t i = 0; i < n_runs; i++)
        if (runs[i].n_tokens == 1 && !e->tok_prompt[runs[i].row0]) tmp[k++] = runs[i];
    sh.n_dec = k;
    for (uint32_t i = 0; i < n_runs; i++)
        if (!(runs[i].n_tokens == 1 && !e->tok_prompt[runs[i].row0])) tmp[k++] = runs[i];
    sh.n_pre = n_runs - sh.n_dec;
    memcpy(runs, tmp, n_runs * sizeof(kcuda_run));
    for (uint32_t i = 0; i < n_runs; i++) {
        uint32_t ctx = (uint32_t)(runs[i].pos0 + runs[i].n_tokens);
        uint32_t *m = i < sh.n_dec ? &sh.dec_ctx : &sh.pre_ctx;
        if (ctx > *m) *m = ctx;
    }
    sh.select = e->opts.select_budget > 0 && sh.dec_ctx > e->opts.select_budget;
    if (sh.n_dec) sh.dec_ctx = cu_ctx_bucket(e, sh.dec_ctx);
    if (sh.n_pre) sh.pre_ctx = cu_ctx_bucket(e, sh.pre_ctx);
    return sh;
}

/* Mirrors the block-table entries each sequence of the step changed: every
 * rank those of the KV heads it holds (its row h is the instance's group
 * g0 + h). */
static int sync_block_tables(cuda_backend *cb, pt_instance *e, pt_err *err) {
    size_t P = e->pages_per_seq;
    for (uint32_t t = 0; t < e->T; t++) {
        if (t > 0 && e->tok_seq[t] == e->tok_seq[t - 1]) continue;
        pt_seq *s = &e->seqs[e->tok_seq[t]];
        if (s->dirty_from >= s->n_pages) continue;
        for (int i = 0; i < cb->tp; i++) {
            cu_rank *rk = &cb->ranks[i];
            CK(rk, cudaSetDevice(rk->ordinal), "set device");
            for (uint32_t h = 0; h < rk->ng; h++) {
                int32_t *dst = rk->block_tables + ((size_t)e->tok_seq[t] * rk->ng + h) * P + s->dirty_from;
                CK(rk, cudaMemcpyAsync(dst, s->pages[rk->r->g0 + h] + s->dirty_from,
                                       (size_t)(s->n_pages - s->dirty_from) * sizeof(int32_t), cudaMemcpyHostToDevice,
                                       rk->stream),
                   "block table upload");
            }
        }
        s->dirty_from = s->n_pages;
    }
    /* The copies read pageable host memory the engine may change in the next
     * step: they complete before the step's end synchronization. */
    return PT_OK;
}

/* Chooses the split counts of this step's decode attention on a rank and
 * grows its split-KV workspace to fit them; graphs captured with the old
 * buffer are dropped. Attention over selected pages reads at most the
 * budget (plus the partial current page), so it is split as a context of
 * that length. The split count depends on the device: it must be current. */
static int ensure_workspace(cuda_backend *cb, cu_rank *rk, pt_instance *e, const step_shape *sh, pt_err *err) {
    rk->splits = rk->splits_sel = 0;
    if (!sh->n_dec) return PT_OK;
    kcuda_attn_args a = cu_attn_args(rk, e, 0, NULL, sh->n_dec, sh->dec_ctx);
    rk->splits = kcuda_attn_decode_splits(&a);
    size_t need = kcuda_attn_decode_workspace(&a, rk->splits);
    if (e->opts.select_budget > 0) {
        uint32_t sel_ctx = e->opts.select_budget + e->opts.page_size;
        a.max_ctx = sel_ctx < sh->dec_ctx ? sel_ctx : sh->dec_ctx;
        rk->splits_sel = kcuda_attn_decode_splits(&a);
        size_t need_sel = kcuda_attn_decode_workspace(&a, rk->splits_sel);
        if (need_sel > need) need = need_sel;
    }
    if (need <= rk->attn_ws_bytes) return PT_OK;
    CK(rk, cudaStreamSynchronize(rk->stream), "stream sync");
    if (rk == &cb->ranks[0]) cu_graphs_clear(cb);
    if (rk->attn_ws) cu_free_one(rk, rk->attn_ws);
    rk->attn_ws = NULL;
    rk->attn_ws_bytes = 0;
    int rc = cu_alloc(rk, PT_MEM_SCRATCH, &rk->attn_ws, need, "attention workspace", err);
    if (rc) return rc;
    rk->attn_ws_bytes = need;
    return PT_OK;
}

/* ---- the phases of one rank; its device is current ---- */

/* Step inputs and embedding. */
static int ph_begin(cuda_backend *cb, cu_rank *rk, const pt_instance *e, pt_err *err) {
    const pt_model_config *c = &e->w.cfg;
    const int32_t *d_tok = (const int32_t *)(rk->stage_dev + cb->off_tok);
    CK(rk, cudaMemcpyAsync(rk->stage_dev, cb->stage_host, cb->stage_bytes, cudaMemcpyHostToDevice, rk->stream),
       "step inputs");
    CK(rk, kcuda_embed_bf16(rk->x, rk->tok_embd, d_tok, e->T, c->d_model, c->vocab_size, rk->stream), "embedding");
    return PT_OK;
}

/* x += the fold of n_chunks gathered partial sums (chunk c at c * T * d). */
static int fold(cu_rank *rk, const pt_instance *e, const float *part, uint32_t n_chunks, const char *what,
                pt_err *err) {
    size_t Td = (size_t)e->T * e->w.cfg.d_model;
    CK(rk, kcuda_fold_partials(rk->x, part, n_chunks, Td, Td, rk->stream), what);
    return PT_OK;
}

/* [Fold of the previous MLP partials,] rmsnorm, QKV, bias + RoPE, KV append,
 * attention, O. */
static int ph_attention(cuda_backend *cb, cu_rank *rk, const pt_instance *e, const step_shape *sh, uint32_t l,
                        pt_err *err) {
    const pt_weights *w = &e->w;
    const pt_model_config *c = &w->cfg;
    size_t d = c->d_model, hd = c->head_dim, T = e->T, qw = (size_t)w->q_per_kv * hd;
    size_t qkvw = rk->ng * group_rows(e), heads_w = rk->ng * qw;
    cudaStream_t st = rk->stream;
    const int32_t *d_pos = (const int32_t *)(rk->stage_dev + cb->off_pos);
    const kcuda_run *d_runs = (const kcuda_run *)(rk->stage_dev + cb->off_runs);
    kcuda_rope_style style = c->rope_style == PT_ROPE_NEOX ? KCUDA_ROPE_NEOX : KCUDA_ROPE_NORM;
    kcuda_pages bt = {rk->block_tables, e->pages_per_seq};
    const cu_layer *L = &rk->layers[l];
    int rc;

    if (cb->tp > 1 && l > 0 && (rc = fold(rk, e, rk->part_mlp, w->n_mlp_chunks, "MLP partial sums", err))) return rc;
    CK(rk, kcuda_rmsnorm_bf16(rk->xn, d, rk->x, d, NULL, L->attn_norm, T, d, c->rms_eps, st), "attention norm");
    CK(rk, kcuda_gemm(rk->blas, rk->qkv, qkvw, rk->xn, d, L->qkv, d, KCUDA_W_NK, KCUDA_GEMM_BF16, T, qkvw, d, 0.0f, st),
       "QKV GEMM");
    CK(rk, kcuda_qkv_bias_rope(rk->qkv, qkvw, L->qkv_bias, d_pos, rk->inv_freq, T, rk->ng, w->q_per_kv, hd,
                               c->rope_dim, style, st),
       "bias + RoPE");
    kcuda_attn_args all = cu_attn_args(rk, e, l, d_runs, sh->n_dec + sh->n_pre, 0);
    CK(rk, kcuda_kv_append(&all.kv, &all.in, &bt, d_runs, sh->n_dec + sh->n_pre, rk->ng, st), "KV append");
    if (sh->n_dec) {
        kcuda_attn_args a = cu_attn_args(rk, e, l, d_runs, sh->n_dec, sh->dec_ctx);
        if (sh->select && l >= e->opts.select_dense_layers) {
            kcuda_page_list pl = {rk->sel, rk->n_sel, e->pages_per_seq};
            CK(rk, kcuda_page_score(rk->page_scores, e->pages_per_seq, &a, st), "page scores");
            CK(rk, kcuda_page_topk(&pl, rk->page_scores, e->pages_per_seq, d_runs, sh->n_dec, rk->ng,
                                   e->opts.page_size, e->opts.select_budget, sh->dec_ctx, st),
               "page selection");
            CK(rk, kcuda_attn_decode(&a, &pl, rk->splits_sel, rk->attn_ws, rk->attn_ws_bytes, st),
               "sparse decode attention");
        } else {
            CK(rk, kcuda_attn_decode(&a, NULL, rk->splits, rk->attn_ws, rk->attn_ws_bytes, st), "decode attention");
        }
    }
    if (sh->n_pre) {
        kcuda_attn_args a = cu_attn_args(rk, e, l, d_runs + sh->n_dec, sh->n_pre, sh->pre_ctx);
        CK(rk, kcuda_attn_prefill(&a, st), "prefill attention");
    }
    if (cb->tp == 1) {
        CK(rk, kcuda_gemm(rk->blas, rk->x, d, rk->att, heads_w, L->o, d, KCUDA_W_KN, KCUDA_GEMM_BF16, T, d, heads_w,
                          1.0f, st),
           "O GEMM");
        return PT_OK;
    }
    /* Group g0 + h: its heads' columns of att times its rows of O. */
    for (uint32_t h = 0; h < rk->ng; h++)
        CK(rk, kcuda_gemm(rk->blas, rk->part_attn + (rk->r->g0 + h) * T * d, d, rk->att + h * qw, heads_w,
                          L->o + h * qw * d, d, KCUDA_W_KN, KCUDA_GEMM_BF16, T, d, qw, 0.0f, st),
           "O GEMM");
    return PT_OK;
}

/* [Fold of the O partials,] rmsnorm, gate|up, SwiGLU, down. */
static int ph_mlp(cuda_backend *cb, cu_rank *rk, const pt_instance *e, uint32_t l, pt_err *err) {
    const pt_weights *w = &e->w;
    const pt_model_config *c = &w->cfg;
    size_t d = c->d_model, T = e->T, mc = w->mlp_chunk, ffr = rk->nc * mc;
    cudaStream_t st = rk->stream;
    const cu_layer *L = &rk->layers[l];
    int rc;

    if (cb->tp > 1 && (rc = fold(rk, e, rk->part_attn, w->n_groups, "attention partial sums", err))) return rc;
    CK(rk, kcuda_rmsnorm_bf16(rk->xn, d, rk->x, d, NULL, L->ffn_norm, T, d, c->rms_eps, st), "MLP norm");
    CK(rk, kcuda_gemm(rk->blas, rk->gu, 2 * ffr, rk->xn, d, L->gate_up, d, KCUDA_W_NK, KCUDA_GEMM_BF16, T, 2 * ffr, d,
                      0.0f, st),
       "gate/up GEMM");
    CK(rk, kcuda_swiglu_chunked_bf16(rk->h, ffr, rk->gu, 2 * ffr, T, rk->nc, mc, st), "SwiGLU");
    if (cb->tp == 1) {
        CK(rk, kcuda_gemm(rk->blas, rk->x, d, rk->h, ffr, L->down, d, KCUDA_W_KN, KCUDA_GEMM_BF16, T, d, ffr, 1.0f, st),
           "down GEMM");
        return PT_OK;
    }
    /* Chunk c0 + m: its columns of h times its rows of down. */
    for (uint32_t m = 0; m < rk->nc; m++)
        CK(rk, kcuda_gemm(rk->blas, rk->part_mlp + (rk->r->c0 + m) * T * d, d, rk->h + m * mc, ffr, L->down + m * mc * d,
                          d, KCUDA_W_KN, KCUDA_GEMM_BF16, T, d, mc, 0.0f, st),
           "down GEMM");
    return PT_OK;
}

/* Rank 0: [fold of the last MLP partials,] final rmsnorm of the logit rows,
 * LM head, logits to the engine. */
static int ph_logits(cuda_backend *cb, cu_rank *rk, const pt_instance *e, pt_err *err) {
    const pt_model_config *c = &e->w.cfg;
    size_t d = c->d_model, V = c->vocab_size;
    const int32_t *d_out = (const int32_t *)(rk->stage_dev + cb->off_out);
    int rc;
    if (!e->n_out) return PT_OK;
    if (cb->tp > 1 && (rc = fold(rk, e, rk->part_mlp, e->w.n_mlp_chunks, "MLP partial sums", err))) return rc;
    CK(rk, kcuda_rmsnorm_bf16(rk->fin, d, rk->x, d, d_out, rk->out_norm, e->n_out, d, c->rms_eps, rk->stream),
       "final norm");
    CK(rk, kcuda_gemm(rk->blas, rk->logits, V, rk->fin, d, rk->lm_head, d, KCUDA_W_NK, KCUDA_GEMM_BF16, e->n_out, V, d,
                      0.0f, rk->stream),
       "LM head GEMM");
    CK(rk, cudaMemcpyAsync(e->out_scratch, rk->logits, (size_t)e->n_out * V * sizeof(float), cudaMemcpyDeviceToHost,
                           rk->stream),
       "logits download");
    return PT_OK;
}

/* ---- TP 1: one rank, one stream, capturable ---- */

/* Everything of a step after the block tables: the part a graph captures. */
static int run_step_one(cuda_backend *cb, pt_instance *e, const step_shape *sh, pt_err *err) {
    cu_rank *rk = &cb->ranks[0];
    int rc = ph_begin(cb, rk, e, err);
    for (uint32_t l = 0; l < e->w.cfg.n_layers && rc == PT_OK; l++) {
        rc = ph_attention(cb, rk, e, sh, l, err);
        if (rc == PT_OK) rc = ph_mlp(cb, rk, e, l, err);
    }
    if (rc == PT_OK) rc = ph_logits(cb, rk, e, err);
    return rc;
}

/* The graph of this step's shape; a new shape takes a free entry or the
 * least recently used one. */
static cu_graph *graph_for(cuda_backend *cb, const pt_instance *e, const step_shape *sh) {
    int splits = cb->ranks[0].splits;
    cu_graph *g = NULL;
    for (size_t i = 0; i < cb->n_graphs && !g; i++) {
        cu_graph *c = &cb->graphs[i];
        if (c->n_dec == sh->n_dec && c->n_out == e->n_out && c->bucket == sh->dec_ctx && c->splits == splits &&
            c->select == sh->select)
            g = c;
    }
    if (!g) {
        if (cb->n_graphs < CU_MAX_GRAPHS) {
            g = &cb->graphs[cb->n_graphs++];
        } else {
            g = &cb->graphs[0];
            for (size_t i = 1; i < CU_MAX_GRAPHS; i++)
                if (cb->graphs[i].last_used < g->last_used) g = &cb->graphs[i];
            if (g->exec) cudaGraphExecDestroy(g->exec);
        }
        *g = (cu_graph){sh->n_dec, e->n_out, sh->dec_ctx, splits, sh->select, 0, 0, NULL};
    }
    g->last_used = cb->steps;
    return g;
}

/* Captures the step into g, or returns non-zero (and leaves the stream out
 * of capture) when something in it cannot be captured. */
static int capture(cuda_backend *cb, pt_instance *e, const step_shape *sh, cu_graph *g, pt_err *err) {
    cu_rank *rk = &cb->ranks[0];
    cudaGraph_t graph = NULL;
    CK(rk, cudaStreamBeginCapture(rk->stream, cudaStreamCaptureModeThreadLocal), "graph capture begin");
    int rc = run_step_one(cb, e, sh, err);
    cudaError_t end = cudaStreamEndCapture(rk->stream, &graph);
    if (rc == PT_OK) rc = cu_check(rk, end, "graph capture", err);
    if (rc == PT_OK) rc = cu_check(rk, cudaGraphInstantiate(&g->exec, graph, 0), "graph instantiate", err);
    if (graph) cudaGraphDestroy(graph);
    return rc;
}

static int step_one(cuda_backend *cb, pt_instance *e, pt_err *err) {
    cu_rank *rk = &cb->ranks[0];
    CK(rk, cudaSetDevice(rk->ordinal), "set device");
    int rc = sync_block_tables(cb, e, err);
    if (rc) return rc;
    step_shape sh = stage_step(cb, e);
    if ((rc = ensure_workspace(cb, rk, e, &sh, err))) return rc;

    cb->steps++;
    bool graphable = e->opts.cuda_graphs && !cb->graphs_broken && sh.n_pre == 0 && sh.n_dec > 0;
    cu_graph *g = graphable ? graph_for(cb, e, &sh) : NULL;
    if (g && !g->exec && ++g->seen >= 2) {
        /* The first run of a shape is eager (it loads kernels and plans the
         * GEMMs); the second is captured, and replayed from then on. */
        pt_err cerr = {0};
        if (capture(cb, e, &sh, g, &cerr)) {
            pt_log(PT_LOG_WARN, "CUDA graph capture failed, running steps eagerly: %s", cerr.msg);
            cb->graphs_broken = true;
            g->exec = NULL;
            (void)cudaGetLastError();
        } else {
            cb->base.graphs_captured++;
        }
    }
    if (g && g->exec) {
        rc = cu_check(rk, cudaGraphLaunch(g->exec, rk->stream), "graph launch", err);
        cb->base.graphs_replayed++;
    } else {
        rc = run_step_one(cb, e, &sh, err);
    }
    pt_err serr;
    int rc2 = cu_check(rk, cudaStreamSynchronize(rk->stream), "step", rc ? &serr : err);
    return rc ? rc : rc2;
}

/* ---- TP > 1: every rank, partial sums through the comm group ---- */

/* Every rank computed the partial sums of its own chunks [k0, k1) into its
 * part buffer (n_chunks, T, d); after this (in stream order) every rank
 * holds all of them. Enqueued on the ranks' streams. */
static int gather_partials(cuda_backend *cb, pt_instance *e, bool mlp, pt_err *err) {
    size_t Td = (size_t)e->T * e->w.cfg.d_model;
    void *bufs[PT_COMM_MAX_RANKS], *streams[PT_COMM_MAX_RANKS];
    size_t offs[PT_COMM_MAX_RANKS], counts[PT_COMM_MAX_RANKS];
    for (int i = 0; i < cb->tp; i++) {
        const cu_rank *rk = &cb->ranks[i];
        uint32_t k0 = mlp ? rk->r->c0 : rk->r->g0, k1 = mlp ? rk->r->c1 : rk->r->g1;
        bufs[i] = mlp ? rk->part_mlp : rk->part_attn;
        offs[i] = k0 * Td;
        counts[i] = (k1 - k0) * Td;
        streams[i] = (void *)rk->stream;
    }
    return pt_comm_all_gather_v(e->group, bufs, offs, counts, PT_COMM_F32, streams, err);
}

static int enter(cu_rank *rk, pt_err *err) { return cu_check(rk, cudaSetDevice(rk->ordinal), "set device", err); }

/* Issues the whole step on every rank. Each collective is issued for all
 * ranks at once (one grouped NCCL call), after the work it depends on and
 * before the work that depends on it on every rank's stream; so when this
 * returns early with an error, no rank waits on a collective the others
 * never issued. */
static int run_step_tp(cuda_backend *cb, pt_instance *e, const step_shape *sh, pt_err *err) {
    int rc = PT_OK;
    for (int i = 0; i < cb->tp && rc == PT_OK; i++)
        if ((rc = enter(&cb->ranks[i], err)) == PT_OK) rc = ph_begin(cb, &cb->ranks[i], e, err);
    for (uint32_t l = 0; l < e->w.cfg.n_layers && rc == PT_OK; l++) {
        for (int i = 0; i < cb->tp && rc == PT_OK; i++)
            if ((rc = enter(&cb->ranks[i], err)) == PT_OK) rc = ph_attention(cb, &cb->ranks[i], e, sh, l, err);
        if (rc == PT_OK) rc = gather_partials(cb, e, false, err);
        for (int i = 0; i < cb->tp && rc == PT_OK; i++)
            if ((rc = enter(&cb->ranks[i], err)) == PT_OK) rc = ph_mlp(cb, &cb->ranks[i], e, l, err);
        if (rc == PT_OK) rc = gather_partials(cb, e, true, err);
    }
    if (rc == PT_OK && (rc = enter(&cb->ranks[0], err)) == PT_OK) rc = ph_logits(cb, &cb->ranks[0], e, err);
    return rc;
}

/* Waits for every rank's stream, bounded by the comm world's timeout and
 * watching NCCL's asynchronous errors. When that fails the comm layer has
 * aborted the world (its kernels exit early), and the streams are drained
 * so that nothing of this step still runs when the step returns. */
static int finish_tp(cuda_backend *cb, pt_instance *e, int rc, pt_err *err) {
    void *streams[PT_COMM_MAX_RANKS];
    for (int i = 0; i < cb->tp; i++) streams[i] = (void *)cb->ranks[i].stream;
    pt_err werr;
    int wrc = pt_comm_wait(e->group, streams, 0, rc ? &werr : err);
    if (wrc) {
        for (int i = 0; i < cb->tp; i++) {
            if (cudaSetDevice(cb->ranks[i].ordinal) == cudaSuccess) (void)cudaStreamSynchronize(cb->ranks[i].stream);
            (void)cudaGetLastError();
        }
    }
    return rc ? rc : wrc;
}

static int step_tp(cuda_backend *cb, pt_instance *e, pt_err *err) {
    int rc = sync_block_tables(cb, e, err);
    step_shape sh = stage_step(cb, e);
    for (int i = 0; i < cb->tp && rc == PT_OK; i++)
        if ((rc = enter(&cb->ranks[i], err)) == PT_OK) rc = ensure_workspace(cb, &cb->ranks[i], e, &sh, err);
    cb->steps++;
    if (rc == PT_OK) rc = run_step_tp(cb, e, &sh, err);
    return finish_tp(cb, e, rc, err);
}

int cu_step(pt_backend *b, pt_instance *e, pt_err *err) {
    cuda_backend *cb = (cuda_backend *)b;
    int caller = -1;
    if (cudaGetDevice(&caller) != cudaSuccess) {
        (void)cudaGetLastError();
        caller = -1;
    }
    int rc = cb->tp == 1 ? step_one(cb, e, err) : step_tp(cb, e, err);
    if (caller >= 0) (void)cudaSetDevice(caller);
    return rc;
}
