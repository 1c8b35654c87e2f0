/* The CUDA backend: one GPU, TP 1 (TP > 1 over NCCL comes with the
 * transformation work). Weights in BF16 (cuda_weights.c), KV head pages in
 * f16 with the layout of src/kv/kv_pool.h, activations in f32 with bf16
 * copies as GEMM inputs, GEMMs through cuBLASLt, everything else through the
 * kernels of kernels/cuda.
 *
 * A step, on one stream:
 *   stage (tokens, positions, runs, logit rows: one H2D copy)
 *   embed; per layer: rmsnorm -> bf16, QKV GEMM, bias + RoPE, KV append,
 *   attention (decode runs: split-KV paged decode, with query-aware page
 *   selection past select_dense_layers; prefill runs: causal paged prefill),
 *   O GEMM added into the residual, rmsnorm -> bf16, gate|up GEMM, SwiGLU ->
 *   bf16, down GEMM added into the residual; final rmsnorm of the logit rows,
 *   LM head GEMM, D2H copy of the logits.
 * Decode-only steps are captured as CUDA graphs keyed by their shape and
 * replayed: every pointer is fixed and the per-step inputs are read from the
 * staging block, so a replay is the same work as an eager run. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cuda/cuda_internal.h"

int cu_check(cudaError_t rc, const char *what, pt_err *err) {
    if (rc == cudaSuccess) return PT_OK;
    (void)cudaGetLastError(); /* clear a sticky launch error for the next call */
    return pt_err_set(err, rc == cudaErrorMemoryAllocation ? PT_ERR_NOMEM : PT_ERR_IO, "CUDA: %s: %s (%s)", what,
                      cudaGetErrorString(rc), cudaGetErrorName(rc));
}

int cu_alloc(cuda_backend *cb, void **p, size_t bytes, const char *what, pt_err *err) {
    *p = NULL;
    int rc = cu_check(cudaMalloc(p, bytes ? bytes : 1), what, err);
    if (rc) return rc;
    cb->allocs = realloc(cb->allocs, (cb->n_allocs + 1) * sizeof(void *));
    if (!cb->allocs) abort();
    cb->allocs[cb->n_allocs++] = *p;
    return PT_OK;
}

static void cu_free_one(cuda_backend *cb, void *p) {
    for (size_t i = 0; i < cb->n_allocs; i++)
        if (cb->allocs[i] == p) {
            cudaFree(p);
            cb->allocs[i] = cb->allocs[--cb->n_allocs];
            return;
        }
}

static void graphs_clear(cuda_backend *cb) {
    for (size_t i = 0; i < cb->n_graphs; i++)
        if (cb->graphs[i].exec) cudaGraphExecDestroy(cb->graphs[i].exec);
    cb->n_graphs = 0;
}

static void cuda_destroy(pt_backend *b) {
    cuda_backend *cb = (cuda_backend *)b;
    cudaSetDevice(cb->device);
    if (cb->stream) cudaStreamSynchronize(cb->stream);
    graphs_clear(cb);
    if (cb->blas) kcuda_blas_destroy(cb->blas);
    for (size_t i = 0; i < cb->n_allocs; i++) cudaFree(cb->allocs[i]);
    free(cb->allocs);
    if (cb->out_registered) cudaHostUnregister(cb->e->out_scratch);
    free(cb->runs_tmp);
    if (cb->stage_host) cudaFreeHost(cb->stage_host);
    if (cb->stream) cudaStreamDestroy(cb->stream);
    free(cb->layers);
    free(cb);
}

/* ---- sizes ---- */

static size_t qkv_width(const pt_instance *e) { return (size_t)e->w.n_groups * (e->w.q_per_kv + 2) * e->w.cfg.head_dim; }

static size_t align_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

/* Contexts are rounded up to a power of two (at least 256, at most
 * max_ctx) before they choose split counts and kernel shapes, so that a
 * captured graph serves a range of lengths. */
static uint32_t ctx_bucket(const pt_instance *e, uint32_t ctx) {
    uint32_t b = 256;
    while (b < ctx) b *= 2;
    return b < e->opts.max_ctx ? b : e->opts.max_ctx;
}

/* ---- the step ---- */

typedef struct {
    uint32_t n_dec, n_pre;          /* runs of one token, runs of several */
    uint32_t dec_ctx, pre_ctx;      /* bucketed longest context of each kind */
    bool select;                    /* a decode context exceeds the selection budget */
    int splits;                     /* split-KV count of dense decode attention */
    int splits_sel;                 /* and of attention over selected pages */
} step_shape;

static kcuda_run *stage_runs(cuda_backend *cb) { return (kcuda_run *)(cb->stage_host + cb->off_runs); }

/* Fills the staging block from the engine's staged step: decode runs first,
 * then prefill runs, so that each kind is one contiguous device array. */
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
    for (uint32_t i = 0; i < n_runs; i++)
        if (runs[i].n_tokens == 1) tmp[k++] = runs[i];
    sh.n_dec = k;
    for (uint32_t i = 0; i < n_runs; i++)
        if (runs[i].n_tokens != 1) tmp[k++] = runs[i];
    sh.n_pre = n_runs - sh.n_dec;
    memcpy(runs, tmp, n_runs * sizeof(kcuda_run));
    for (uint32_t i = 0; i < n_runs; i++) {
        uint32_t ctx = (uint32_t)(runs[i].pos0 + runs[i].n_tokens);
        uint32_t *m = i < sh.n_dec ? &sh.dec_ctx : &sh.pre_ctx;
        if (ctx > *m) *m = ctx;
    }
    sh.select = e->opts.select_budget > 0 && sh.dec_ctx > e->opts.select_budget;
    if (sh.n_dec) sh.dec_ctx = ctx_bucket(e, sh.dec_ctx);
    if (sh.n_pre) sh.pre_ctx = ctx_bucket(e, sh.pre_ctx);
    return sh;
}

/* Mirrors the block-table entries each sequence of the step changed. */
static int sync_block_tables(cuda_backend *cb, pt_instance *e, pt_err *err) {
    size_t G = e->w.n_groups, P = e->pages_per_seq;
    for (uint32_t t = 0; t < e->T; t++) {
        if (t > 0 && e->tok_seq[t] == e->tok_seq[t - 1]) continue;
        pt_seq *s = &e->seqs[e->tok_seq[t]];
        if (s->dirty_from >= s->n_pages) continue;
        for (size_t g = 0; g < G; g++) {
            int32_t *dst = cb->block_tables + ((size_t)e->tok_seq[t] * G + g) * P + s->dirty_from;
            int rc = cu_check(cudaMemcpyAsync(dst, s->pages[g] + s->dirty_from,
                                              (size_t)(s->n_pages - s->dirty_from) * sizeof(int32_t),
                                              cudaMemcpyHostToDevice, cb->stream),
                              "block table upload", err);
            if (rc) return rc;
        }
        s->dirty_from = s->n_pages;
    }
    /* The copies read pageable host memory the engine may change in the next
     * step: they complete before the step's end synchronization. */
    return PT_OK;
}

static kcuda_attn_args attn_args(cuda_backend *cb, const pt_instance *e, uint32_t layer, const kcuda_run *runs,
                                 uint32_t n_runs, uint32_t max_ctx) {
    const pt_weights *w = &e->w;
    size_t hd = w->cfg.head_dim, gs = (w->q_per_kv + 2) * hd, P = e->opts.page_size;
    kcuda_attn_args a = {0};
    a.in = (kcuda_qkv){cb->qkv, cb->qkv + w->q_per_kv * hd, cb->qkv + (w->q_per_kv + 1) * hd, qkv_width(e), gs};
    a.out_bf16 = cb->att;
    a.ld_out = (size_t)w->cfg.n_heads * hd;
    a.kv = (kcuda_kv_layer){cb->kv_data + (size_t)layer * cb->n_slots * 2 * P * hd,
                            cb->kv_minmax + (size_t)layer * cb->n_slots * 2 * hd, cb->n_slots, (uint32_t)P,
                            (uint32_t)hd};
    a.bt = (kcuda_pages){cb->block_tables, e->pages_per_seq};
    a.runs = runs;
    a.n_runs = n_runs;
    a.n_kv_heads = w->n_groups;
    a.q_per_kv = w->q_per_kv;
    a.head_dim = hd;
    a.scale = 1.0f / sqrtf((float)hd);
    a.max_ctx = max_ctx;
    return a;
}

#define CK(call, what)                                        \
    do {                                                      \
        int rc_ = cu_check((call), (what), err);              \
        if (rc_) return rc_;                                  \
    } while (0)

/* Everything of a step after the block tables: the part a graph captures. */
static int run_step(cuda_backend *cb, pt_instance *e, const step_shape *sh, pt_err *err) {
    const pt_weights *w = &e->w;
    const pt_model_config *c = &w->cfg;
    size_t d = c->d_model, hd = c->head_dim, ff = c->d_ff, V = c->vocab_size, T = e->T;
    size_t qkvw = qkv_width(e), heads_w = (size_t)c->n_heads * hd;
    cudaStream_t st = cb->stream;
    const int32_t *d_tok = (const int32_t *)(cb->stage_dev + cb->off_tok);
    const int32_t *d_pos = (const int32_t *)(cb->stage_dev + cb->off_pos);
    const int32_t *d_out = (const int32_t *)(cb->stage_dev + cb->off_out);
    const kcuda_run *d_runs = (const kcuda_run *)(cb->stage_dev + cb->off_runs);
    kcuda_rope_style style = c->rope_style == PT_ROPE_NEOX ? KCUDA_ROPE_NEOX : KCUDA_ROPE_NORM;
    kcuda_pages bt = {cb->block_tables, e->pages_per_seq};

    CK(cudaMemcpyAsync(cb->stage_dev, cb->stage_host, cb->stage_bytes, cudaMemcpyHostToDevice, st), "step inputs");
    CK(kcuda_embed_bf16(cb->x, cb->tok_embd, d_tok, T, d, V, st), "embedding");
    for (uint32_t l = 0; l < c->n_layers; l++) {
        const cu_layer *L = &cb->layers[l];
        CK(kcuda_rmsnorm_bf16(cb->xn, d, cb->x, d, NULL, L->attn_norm, T, d, c->rms_eps, st), "attention norm");
        CK(kcuda_gemm(cb->blas, cb->qkv, qkvw, cb->xn, d, L->qkv, d, KCUDA_W_NK, KCUDA_GEMM_BF16, T, qkvw, d, 0.0f, st),
           "QKV GEMM");
        CK(kcuda_qkv_bias_rope(cb->qkv, qkvw, L->qkv_bias, d_pos, cb->inv_freq, T, w->n_groups, w->q_per_kv, hd,
                               c->rope_dim, style, st),
           "bias + RoPE");
        kcuda_attn_args all = attn_args(cb, e, l, d_runs, sh->n_dec + sh->n_pre, 0);
        CK(kcuda_kv_append(&all.kv, &all.in, &bt, d_runs, sh->n_dec + sh->n_pre, w->n_groups, st), "KV append");
        if (sh->n_dec) {
            kcuda_attn_args a = attn_args(cb, e, l, d_runs, sh->n_dec, sh->dec_ctx);
            if (sh->select && l >= e->opts.select_dense_layers) {
                kcuda_page_list pl = {cb->sel, cb->n_sel, e->pages_per_seq};
                CK(kcuda_page_score(cb->page_scores, e->pages_per_seq, &a, st), "page scores");
                CK(kcuda_page_topk(&pl, cb->page_scores, e->pages_per_seq, d_runs, sh->n_dec, w->n_groups,
                                   e->opts.page_size, e->opts.select_budget, sh->dec_ctx, st),
                   "page selection");
                CK(kcuda_attn_decode(&a, &pl, sh->splits_sel, cb->attn_ws, cb->attn_ws_bytes, st),
                   "sparse decode attention");
            } else {
                CK(kcuda_attn_decode(&a, NULL, sh->splits, cb->attn_ws, cb->attn_ws_bytes, st), "decode attention");
            }
        }
        if (sh->n_pre) {
            kcuda_attn_args a = attn_args(cb, e, l, d_runs + sh->n_dec, sh->n_pre, sh->pre_ctx);
            CK(kcuda_attn_prefill(&a, st), "prefill attention");
        }
        CK(kcuda_gemm(cb->blas, cb->x, d, cb->att, heads_w, L->o, d, KCUDA_W_KN, KCUDA_GEMM_BF16, T, d, heads_w, 1.0f,
                      st),
           "O GEMM");
        CK(kcuda_rmsnorm_bf16(cb->xn, d, cb->x, d, NULL, L->ffn_norm, T, d, c->rms_eps, st), "MLP norm");
        CK(kcuda_gemm(cb->blas, cb->gu, 2 * ff, cb->xn, d, L->gate_up, d, KCUDA_W_NK, KCUDA_GEMM_BF16, T, 2 * ff, d,
                      0.0f, st),
           "gate/up GEMM");
        CK(kcuda_swiglu_chunked_bf16(cb->h, ff, cb->gu, 2 * ff, T, w->n_mlp_chunks, w->mlp_chunk, st), "SwiGLU");
        CK(kcuda_gemm(cb->blas, cb->x, d, cb->h, ff, L->down, d, KCUDA_W_KN, KCUDA_GEMM_BF16, T, d, ff, 1.0f, st),
           "down GEMM");
    }
    if (e->n_out) {
        CK(kcuda_rmsnorm_bf16(cb->fin, d, cb->x, d, d_out, cb->out_norm, e->n_out, d, c->rms_eps, st), "final norm");
        CK(kcuda_gemm(cb->blas, cb->logits, V, cb->fin, d, cb->lm_head, d, KCUDA_W_NK, KCUDA_GEMM_BF16, e->n_out, V, d,
                      0.0f, st),
           "LM head GEMM");
        CK(cudaMemcpyAsync(e->out_scratch, cb->logits, (size_t)e->n_out * V * sizeof(float), cudaMemcpyDeviceToHost,
                           st),
           "logits download");
    }
    return PT_OK;
}

/* Chooses the split counts of this step's decode attention and grows the
 * split-KV workspace to fit them; graphs captured with the old buffer are
 * dropped. Attention over selected pages reads at most the budget (plus the
 * partial current page), so it is split as a context of that length. */
static int ensure_workspace(cuda_backend *cb, pt_instance *e, step_shape *sh, pt_err *err) {
    if (!sh->n_dec) return PT_OK;
    kcuda_attn_args a = attn_args(cb, e, 0, NULL, sh->n_dec, sh->dec_ctx);
    sh->splits = kcuda_attn_decode_splits(&a);
    size_t need = kcuda_attn_decode_workspace(&a, sh->splits);
    if (e->opts.select_budget > 0) {
        uint32_t sel_ctx = e->opts.select_budget + e->opts.page_size;
        a.max_ctx = sel_ctx < sh->dec_ctx ? sel_ctx : sh->dec_ctx;
        sh->splits_sel = kcuda_attn_decode_splits(&a);
        size_t need_sel = kcuda_attn_decode_workspace(&a, sh->splits_sel);
        if (need_sel > need) need = need_sel;
    }
    if (need <= cb->attn_ws_bytes) return PT_OK;
    CK(cudaStreamSynchronize(cb->stream), "stream sync");
    graphs_clear(cb);
    if (cb->attn_ws) cu_free_one(cb, cb->attn_ws);
    cb->attn_ws_bytes = 0;
    int rc = cu_alloc(cb, &cb->attn_ws, need, "attention workspace", err);
    if (rc) return rc;
    cb->attn_ws_bytes = need;
    return PT_OK;
}

/* The graph of this step's shape; a new shape takes a free entry or the
 * least recently used one. */
static cu_graph *graph_for(cuda_backend *cb, const pt_instance *e, const step_shape *sh) {
    cu_graph *g = NULL;
    for (size_t i = 0; i < cb->n_graphs && !g; i++) {
        cu_graph *c = &cb->graphs[i];
        if (c->n_dec == sh->n_dec && c->n_out == e->n_out && c->bucket == sh->dec_ctx && c->splits == sh->splits &&
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
        *g = (cu_graph){sh->n_dec, e->n_out, sh->dec_ctx, sh->splits, sh->select, 0, 0, NULL};
    }
    g->last_used = cb->steps;
    return g;
}

/* Captures the step into g, or returns non-zero (and leaves the stream out
 * of capture) when something in it cannot be captured. */
static int capture(cuda_backend *cb, pt_instance *e, const step_shape *sh, cu_graph *g, pt_err *err) {
    cudaGraph_t graph = NULL;
    CK(cudaStreamBeginCapture(cb->stream, cudaStreamCaptureModeThreadLocal), "graph capture begin");
    int rc = run_step(cb, e, sh, err);
    cudaError_t end = cudaStreamEndCapture(cb->stream, &graph);
    if (rc == PT_OK) rc = cu_check(end, "graph capture", err);
    if (rc == PT_OK) rc = cu_check(cudaGraphInstantiate(&g->exec, graph, 0), "graph instantiate", err);
    if (graph) cudaGraphDestroy(graph);
    return rc;
}

static int cuda_step(pt_backend *b, pt_instance *e, pt_err *err) {
    cuda_backend *cb = (cuda_backend *)b;
    CK(cudaSetDevice(cb->device), "set device");
    int rc = sync_block_tables(cb, e, err);
    if (rc) return rc;
    step_shape sh = stage_step(cb, e);
    if ((rc = ensure_workspace(cb, e, &sh, err))) return rc;

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
        rc = cu_check(cudaGraphLaunch(g->exec, cb->stream), "graph launch", err);
        cb->base.graphs_replayed++;
    } else {
        rc = run_step(cb, e, &sh, err);
    }
    int rc2 = cu_check(cudaStreamSynchronize(cb->stream), "step", err);
    return rc ? rc : rc2;
}

/* ---- creation ---- */

/* The split-KV workspace for the largest need of any decode batch size at
 * any context, so that serving never reallocates it (which would drop the
 * captured graphs). */
static int preallocate_workspace(cuda_backend *cb, pt_instance *e, pt_err *err) {
    size_t need = 0;
    for (uint32_t n = 1; n <= e->opts.max_seqs; n++) {
        for (uint32_t ctx = 256;; ctx *= 2) {
            step_shape sh = {.n_dec = n, .dec_ctx = ctx_bucket(e, ctx)};
            kcuda_attn_args a = attn_args(cb, e, 0, NULL, n, sh.dec_ctx);
            size_t w = kcuda_attn_decode_workspace(&a, kcuda_attn_decode_splits(&a));
            if (w > need) need = w;
            if (ctx >= e->opts.max_ctx) break;
        }
    }
    if (!need) return PT_OK;
    int rc = cu_alloc(cb, &cb->attn_ws, need, "attention workspace", err);
    if (rc == PT_OK) cb->attn_ws_bytes = need;
    return rc;
}

static int alloc_buffers(cuda_backend *cb, pt_instance *e, pt_err *err) {
    const pt_model_config *c = &e->w.cfg;
    const pt_engine_opts *o = &e->opts;
    size_t d = c->d_model, hd = c->head_dim, ff = c->d_ff, V = c->vocab_size;
    size_t Tm = o->max_batch_tokens, G = e->w.n_groups, S = o->max_seqs, P = e->pages_per_seq;
    struct {
        void **p;
        size_t bytes;
        const char *what;
    } bufs[] = {
        {(void **)&cb->x, Tm * d * 4, "residual stream"},
        {(void **)&cb->xn, Tm * d * 2, "normed activations"},
        {(void **)&cb->qkv, Tm * qkv_width(e) * 4, "QKV activations"},
        {(void **)&cb->att, Tm * c->n_heads * hd * 2, "attention output"},
        {(void **)&cb->gu, Tm * 2 * ff * 4, "gate/up activations"},
        {(void **)&cb->h, Tm * ff * 2, "SwiGLU output"},
        {(void **)&cb->fin, (size_t)e->max_out * d * 2, "final norm"},
        {(void **)&cb->logits, (size_t)e->max_out * V * 4, "logits"},
        {(void **)&cb->block_tables, S * G * P * 4, "block tables"},
        {(void **)&cb->page_scores, S * G * P * 4, "page scores"},
        {(void **)&cb->sel, S * G * P * 4, "selected pages"},
        {(void **)&cb->n_sel, S * G * 4, "selected page counts"},
    };
    for (size_t i = 0; i < sizeof(bufs) / sizeof(bufs[0]); i++) {
        int rc = cu_alloc(cb, bufs[i].p, bufs[i].bytes, bufs[i].what, err);
        if (rc) return rc;
    }
    cb->off_tok = 0;
    cb->off_pos = align_up(cb->off_tok + Tm * 4, 16);
    cb->off_out = align_up(cb->off_pos + Tm * 4, 16);
    cb->off_runs = align_up(cb->off_out + (size_t)e->max_out * 4, 16);
    cb->stage_bytes = align_up(cb->off_runs + Tm * sizeof(kcuda_run), 16); /* at most one run per token */
    CK(cudaMallocHost((void **)&cb->stage_host, cb->stage_bytes), "pinned staging");
    memset(cb->stage_host, 0, cb->stage_bytes);
    int rc = cu_alloc(cb, (void **)&cb->stage_dev, cb->stage_bytes, "staging", err);
    if (rc) return rc;
    /* Logits go straight into the engine's buffer, page-locked so that the
     * copy is asynchronous (and capturable). */
    CK(cudaHostRegister(e->out_scratch, (size_t)e->max_out * V * 4, cudaHostRegisterDefault), "pinning the logits");
    cb->out_registered = true;
    cb->runs_tmp = pt_xmalloc(Tm * sizeof(kcuda_run));
    return preallocate_workspace(cb, e, err);
}

/* KV pages: the configured count, or what kv_bytes allows, or by default
 * 90% of the memory left after weights and buffers (less 1 GiB for cuBLAS,
 * graphs and the CUDA context), capped at max_seqs full contexts. */
static int alloc_kv(cuda_backend *cb, pt_instance *e, pt_err *err) {
    const pt_model_config *c = &e->w.cfg;
    pt_engine_opts *o = &e->opts;
    uint64_t pages = o->kv_pages;
    if (!pages) {
        uint64_t budget = o->kv_bytes;
        if (!budget) {
            size_t free_b = 0, total_b = 0;
            CK(cudaMemGetInfo(&free_b, &total_b), "memory info");
            uint64_t reserve = 1ull << 30;
            budget = free_b > reserve ? (uint64_t)((free_b - reserve) * 0.9) : 0;
        }
        pages = pt_instance_kv_pages_for(e, e->w.n_groups, budget);
    }
    if (pages > UINT32_MAX - 1) pages = UINT32_MAX - 1;
    if (pages == 0) return pt_err_set(err, PT_ERR_NOMEM, "CUDA device %d has no memory left for KV pages", cb->device);
    cb->n_slots = (uint32_t)pages;
    size_t per_layer_elems = (size_t)pages * 2 * o->page_size * c->head_dim;
    int rc = cu_alloc(cb, (void **)&cb->kv_data, (size_t)c->n_layers * per_layer_elems * 2, "KV pages", err);
    if (rc == PT_OK)
        rc = cu_alloc(cb, (void **)&cb->kv_minmax, (size_t)c->n_layers * pages * 2 * c->head_dim * 4, "KV key bounds", err);
    if (rc == PT_OK)
        rc = pt_kv_pool_init_accounting(&e->ranks[0].kv, c->n_layers, c->head_dim, o->page_size, cb->n_slots,
                                        PT_DTYPE_F16, err);
    return rc;
}

int pt_backend_cuda_create(pt_backend **out, pt_instance *e, pt_err *err) {
    *out = NULL;
    pt_engine_opts *o = &e->opts;
    int n_dev = kcuda_device_count();
    if (n_dev == 0) return pt_err_set(err, PT_ERR_UNSUPPORTED, "no CUDA device is available (devices: cuda)");
    if (o->device_index < 0 || o->device_index >= n_dev)
        return pt_err_set(err, PT_ERR_INVALID, "CUDA device %d does not exist (%d present)", o->device_index, n_dev);
    if (e->w.cfg.rope_dim > e->w.cfg.head_dim || e->w.cfg.rope_dim % 2)
        return pt_err_set(err, PT_ERR_UNSUPPORTED, "RoPE over %u of %u channels is not supported on CUDA",
                          e->w.cfg.rope_dim, e->w.cfg.head_dim);
    /* What the attention kernels take (kcuda_attn.h): checked here so that a
     * model they cannot run fails at load with its reason, not at its first step. */
    if (e->w.cfg.head_dim % 8 || e->w.cfg.head_dim > 256)
        return pt_err_set(err, PT_ERR_UNSUPPORTED, "head_dim %u is not supported on CUDA (a multiple of 8, at most 256)",
                          e->w.cfg.head_dim);
    /* KV pages on the GPU are f16 whatever kv_dtype says: the pool's
     * accounting (page bytes, /metrics) follows. */
    o->kv_dtype = PT_DTYPE_F16;

    cuda_backend *cb = pt_xcalloc(1, sizeof(*cb));
    cb->base.name = "cuda";
    cb->base.step = cuda_step;
    cb->base.destroy = cuda_destroy;
    cb->e = e;
    cb->device = o->device_index;
    *out = &cb->base;

    int caller_device = 0;
    CK(cudaGetDevice(&caller_device), "current device");
    CK(cudaSetDevice(cb->device), "set device");
    CK(cudaDeviceGetAttribute(&cb->n_sm, cudaDevAttrMultiProcessorCount, cb->device), "device attributes");
    CK(cudaStreamCreateWithFlags(&cb->stream, cudaStreamNonBlocking), "stream");
    cb->blas = kcuda_blas_create();
    if (!cb->blas) return pt_err_set(err, PT_ERR_IO, "CUDA: cannot create the cuBLASLt handle on device %d", cb->device);
    int rc = cu_weights_upload(cb, &e->w, o->n_threads > 1 ? o->n_threads : 1, err);
    if (rc == PT_OK) rc = alloc_buffers(cb, e, err);
    if (rc == PT_OK) rc = alloc_kv(cb, e, err);
    if (rc == PT_OK) {
        struct cudaDeviceProp prop;
        if (cudaGetDeviceProperties(&prop, cb->device) == cudaSuccess)
            pt_log(PT_LOG_INFO, "CUDA device %d: %s, %d SMs; %u KV pages of %u tokens", cb->device, prop.name,
                   cb->n_sm, cb->n_slots, o->page_size);
    }
    cudaSetDevice(caller_device); /* steps set the device on their own thread */
    return rc;
}
