/* The forward pass of one rank over one step's tokens, top to bottom as the
 * math: embed; per layer rmsnorm, QKV, bias, RoPE, KV append, attention, O
 * (row-parallel partials), fold + residual, rmsnorm, gate/up, SwiGLU, down
 * (row-parallel partials), fold + residual; final rmsnorm, LM head.
 *
 * Row-parallel products leave one partial sum per chunk; after the driver
 * has gathered every rank's chunks (cpu_backend.c), each rank folds them
 * left to right in chunk order, so the sum is the same bits at any TP
 * degree (DESIGN.md section 3). Each parallel phase is one pt_pool_run on
 * the rank's device whose items never depend on the batch's composition.
 * A rank reads only its own buffers, its shard and the replicated tensors. */
#include <math.h>
#include <string.h>

#include "cpu/kcpu_matmul.h"
#include "cpu/kcpu_ops.h"
#include "backend/cpu/cpu_forward.h"

typedef struct {
    pt_instance *e;
    pt_rank *r;
    uint32_t layer;
} phase_ctx;

/* Activations are quantized to the weights' partner format (int8 blocks:
 * fast, as llama.cpp does), or kept in F32 with exact_activations (weights are
 * then dequantized: the arithmetic of a float reference, at a cost in speed). */
static pt_dtype act_type_of(const pt_instance *e, pt_dtype wtype) {
    return e->opts.exact_activations ? PT_DTYPE_F32 : kcpu_act_type(wtype);
}

static size_t act_row_bytes(const pt_instance *e, pt_dtype wtype, size_t K) {
    uint64_t rb = 0;
    pt_dtype_row_bytes(act_type_of(e, wtype), K, &rb);
    return (size_t)rb;
}

static void quantize_act(const pt_instance *e, pt_dtype wtype, void *dst, const float *x, size_t K) {
    if (!e->opts.exact_activations) {
        kcpu_quantize_act(wtype, dst, x, K);
    } else if (e->opts.bf16_activations) {
        float *d = dst;
        for (size_t i = 0; i < K; i++) d[i] = pt_bf16_to_f32(pt_f32_to_bf16(x[i]));
    } else {
        memcpy(dst, x, K * sizeof(float));
    }
}

/* ---- matmul jobs: several matrices split by rows across threads ---- */

typedef struct {
    const pt_wmat *m;
    const uint8_t *X;
    size_t x_stride;
    float *Y;
    size_t ldy;
} mm_job;

typedef struct {
    mm_job jobs[3 * PT_MAX_GROUPS + 2 * PT_MAX_MLP_CHUNKS];
    int n;
    bool exact; /* F32 activations: quantized weights go through kcpu_matmul_dequant */
    uint32_t T;
    uint64_t total_rows;
} mm_list;

static void mm_add(mm_list *l, const pt_wmat *m, const uint8_t *X, size_t x_stride, float *Y, size_t ldy) {
    l->jobs[l->n++] = (mm_job){m, X, x_stride, Y, ldy};
    l->total_rows += m->rows;
}

static void mm_phase(void *arg, int tid, int nth) {
    mm_list *l = arg;
    long lo, hi;
    pt_pool_split((long)l->total_rows, tid, nth, &lo, &hi);
    long base = 0;
    for (int j = 0; j < l->n && lo < hi; j++) {
        const mm_job *jb = &l->jobs[j];
        long end = base + jb->m->rows;
        if (lo < end) {
            long r1 = hi < end ? hi : end;
            if (l->exact)
                kcpu_matmul_dequant(jb->m->type, jb->m->data, jb->m->stride, (size_t)(lo - base), (size_t)(r1 - base),
                                    (const float *)jb->X, jb->x_stride, l->T, jb->m->cols, jb->Y, jb->ldy);
            else
                kcpu_matmul(jb->m->type, jb->m->data, jb->m->stride, (size_t)(lo - base), (size_t)(r1 - base),
                            jb->X, jb->x_stride, l->T, jb->m->cols, jb->Y, jb->ldy);
            lo = r1;
        }
        base = end;
    }
}

/* ---- activation slots: one quantized copy of xn per weight type in use ---- */

static int act_slot(const pt_instance *e, pt_rank *r, pt_dtype wtype) {
    pt_dtype at = act_type_of(e, wtype);
    for (int i = 0; i < 3; i++) {
        if (r->act_type[i] == at) return i;
        if (r->act_type[i] == PT_DTYPE_COUNT) {
            r->act_type[i] = at;
            return i;
        }
    }
    return -1; /* three slots cover every combination the models use */
}

/* ---- phase: fold partials into the residual, rmsnorm, quantize ---- */

typedef struct {
    pt_instance *e;
    pt_rank *r;
    const float *part;   /* (n_chunks, T, d) or NULL */
    uint32_t n_chunks;
    const float *norm_w;
    pt_dtype wtypes[3];  /* weight types whose activations are needed */
    int n_wtypes;
} norm_ctx;

static void fold_into(float *x, const float *part, uint32_t n_chunks, size_t T, size_t t, size_t d,
                      float *acc) {
    memcpy(acc, part + t * d, d * sizeof(float));
    for (uint32_t c = 1; c < n_chunks; c++) kcpu_add(acc, part + ((size_t)c * T + t) * d, d);
    kcpu_add(x, acc, d);
}

static void norm_phase(void *arg, int tid, int nth) {
    norm_ctx *c = arg;
    pt_instance *e = c->e;
    pt_rank *r = c->r;
    size_t d = e->w.cfg.d_model, T = e->T;
    float *x = r->x;
    long lo, hi;
    pt_pool_split((long)T, tid, nth, &lo, &hi);
    float *acc = r->thread_scratch + (size_t)tid * e->scratch_len; /* scratch_len >= d */
    for (long t = lo; t < hi; t++) {
        if (c->part) fold_into(x + t * d, c->part, c->n_chunks, T, (size_t)t, d, acc);
        float *xn = r->xn + t * d;
        kcpu_rmsnorm(xn, x + t * d, c->norm_w, d, e->w.cfg.rms_eps);
        for (int i = 0; i < c->n_wtypes; i++) {
            int s = act_slot(e, r, c->wtypes[i]);
            size_t rb = act_row_bytes(e, c->wtypes[i], d);
            quantize_act(e, c->wtypes[i], r->act[s] + t * rb, xn, d);
        }
    }
}

static void run_norm(pt_instance *e, pt_rank *r, const float *part, uint32_t n_chunks, const float *norm_w,
                     const pt_dtype *wtypes, int n_wtypes) {
    norm_ctx c = {e, r, part, n_chunks, norm_w, {0}, n_wtypes};
    for (int i = 0; i < n_wtypes; i++) {
        c.wtypes[i] = wtypes[i];
        act_slot(e, r, wtypes[i]); /* assign slots before threads look them up */
    }
    pt_pool_run(r->pool, norm_phase, &c);
}

static const uint8_t *act_of(const pt_instance *e, pt_rank *r, pt_dtype wtype) { return r->act[act_slot(e, r, wtype)]; }

/* ---- phase: embedding ---- */

static void embed_phase(void *arg, int tid, int nth) {
    phase_ctx *c = arg;
    pt_instance *e = c->e;
    const pt_wmat *te = &e->w.tok_embd;
    size_t d = e->w.cfg.d_model;
    long lo, hi;
    pt_pool_split((long)e->T, tid, nth, &lo, &hi);
    for (long t = lo; t < hi; t++)
        kcpu_dequantize_row(te->type, c->r->x + t * d,
                            (const uint8_t *)te->data + (size_t)e->tok[t] * te->stride, d);
}

/* ---- phase: bias and RoPE per (token, group) ---- */

static void rope_phase(void *arg, int tid, int nth) {
    phase_ctx *c = arg;
    pt_instance *e = c->e;
    pt_rank *r = c->r;
    const pt_weights *w = &e->w;
    const pt_layer_weights *L = &r->shard.layers[c->layer];
    size_t hd = w->cfg.head_dim, qw = (size_t)w->q_per_kv * hd;
    size_t qld = (size_t)w->cfg.n_heads * hd, kld = (size_t)w->cfg.n_kv_heads * hd;
    uint32_t ng = r->g1 - r->g0;
    long lo, hi;
    pt_pool_split((long)e->T * ng, tid, nth, &lo, &hi);
    for (long it = lo; it < hi; it++) {
        size_t t = (size_t)it / ng, g = r->g0 + (size_t)it % ng;
        float *q = r->q + t * qld + g * qw, *k = r->k + t * kld + g * hd, *v = r->v + t * kld + g * hd;
        if (L->bq) {
            kcpu_add(q, L->bq + g * qw, qw);
            kcpu_add(k, L->bk + g * hd, hd);
            kcpu_add(v, L->bv + g * hd, hd);
        }
        int neox = w->cfg.rope_style == PT_ROPE_NEOX;
        kcpu_rope(q, w->q_per_kv, hd, w->cfg.rope_dim, e->tok_pos[t], w->inv_freq, neox);
        kcpu_rope(k, 1, hd, w->cfg.rope_dim, e->tok_pos[t], w->inv_freq, neox);
    }
}

/* ---- phase: KV append per (sequence run, group) ----
 * Tokens of one sequence are appended by one thread, in order, because they
 * share pages and their bounding boxes. */

static void append_phase(void *arg, int tid, int nth) {
    phase_ctx *c = arg;
    pt_instance *e = c->e;
    pt_rank *r = c->r;
    size_t hd = e->w.cfg.head_dim, kld = (size_t)e->w.cfg.n_kv_heads * hd;
    uint32_t P = e->opts.page_size;
    for (uint32_t g = r->g0 + tid; g < r->g1; g += nth) {
        for (size_t t = 0; t < e->T; t++) {
            const pt_seq *s = &e->seqs[e->tok_seq[t]];
            uint32_t pos = e->tok_pos[t];
            pt_kv_append(r->kv, c->layer, s->pages[g][pos / P], pos % P, r->k + t * kld + g * hd,
                         r->v + t * kld + g * hd);
        }
    }
}

/* ---- phase: attention per (run, group), then quantize for O ----
 * A run is up to PT_CPU_ATTN_RUN batch rows of one sequence at consecutive
 * positions, attended densely (a prompt chunk, or one decode row); a row
 * under page selection is a run of its own. Items go to threads round-robin,
 * so the long runs at the end of a causal chunk are spread over threads. A
 * row's result never depends on its run (kcpu_attn_paged_run). */

static size_t attn_run_end(const pt_instance *e, uint32_t layer, size_t t0) {
    size_t t1 = t0 + 1;
    if (pt_select_applies(e, layer, (uint32_t)t0)) return t1;
    while (t1 < e->T && t1 - t0 < PT_CPU_ATTN_RUN && e->tok_seq[t1] == e->tok_seq[t0] &&
           e->tok_pos[t1] == e->tok_pos[t1 - 1] + 1 && !pt_select_applies(e, layer, (uint32_t)t1))
        t1++;
    return t1;
}

static void attend(const phase_ctx *c, float *scratch, size_t t0, size_t t1, size_t g) {
    pt_instance *e = c->e;
    pt_rank *r = c->r;
    const pt_weights *w = &e->w;
    const pt_kv_pool *kv = r->kv;
    size_t hd = w->cfg.head_dim, qw = (size_t)w->q_per_kv * hd, qld = (size_t)w->cfg.n_heads * hd;
    uint32_t P = e->opts.page_size;
    float scale = 1.0f / sqrtf((float)hd);
    const pt_seq *s = &e->seqs[e->tok_seq[t0]];
    float *out = r->att + t0 * qld + g * qw;
    const float *q = r->q + t0 * qld + g * qw;
    const void *kbase = pt_kv_k(kv, c->layer, 0);
    if (pt_select_applies(e, c->layer, (uint32_t)t0)) {
        /* Page selection scratch sits after the states (see cpu_backend.c). */
        float *page_scores = scratch + (e->scratch_len - 2 * (size_t)e->pages_per_seq);
        uint32_t *selected = (uint32_t *)(page_scores + e->pages_per_seq);
        uint32_t n_ctx = e->tok_pos[t0] + 1, n_pages = (n_ctx + P - 1) / P;
        size_t n_sel = kcpu_page_select(selected, q, w->q_per_kv, hd, pt_kv_kmin(kv, c->layer, 0), s->pages[g],
                                        n_pages, P, n_ctx, e->opts.select_budget, page_scores);
        kcpu_attn_paged_sparse(out, q, w->q_per_kv, hd, kbase, kv->dtype, pt_kv_slot_stride(kv), pt_kv_v_offset(kv),
                               s->pages[g], P, n_ctx, selected, n_sel, scale, scratch);
    } else {
        kcpu_attn_paged_run(out, qld, q, qld, t1 - t0, e->tok_pos[t0], w->q_per_kv, hd, kbase, kv->dtype,
                            pt_kv_slot_stride(kv), pt_kv_v_offset(kv), s->pages[g], P, scale, scratch);
    }
    const pt_layer_weights *L = &r->shard.layers[c->layer];
    size_t rb = act_row_bytes(e, L->o[g].type, qw);
    for (size_t t = t0; t < t1; t++)
        quantize_act(e, L->o[g].type, r->att_act + (t * w->n_groups + g) * rb, r->att + t * qld + g * qw, qw);
}

static void attn_phase(void *arg, int tid, int nth) {
    phase_ctx *c = arg;
    pt_instance *e = c->e;
    pt_rank *r = c->r;
    float *scratch = r->thread_scratch + (size_t)tid * e->scratch_len;
    long item = 0;
    for (size_t t0 = 0; t0 < e->T;) {
        size_t t1 = attn_run_end(e, c->layer, t0);
        for (uint32_t g = r->g0; g < r->g1; g++, item++)
            if (item % nth == tid) attend(c, scratch, t0, t1, g);
        t0 = t1;
    }
}

/* ---- phase: SwiGLU per (token, chunk), then quantize for down ---- */

static void swiglu_phase(void *arg, int tid, int nth) {
    phase_ctx *c = arg;
    pt_instance *e = c->e;
    pt_rank *r = c->r;
    const pt_weights *w = &e->w;
    const pt_layer_weights *L = &r->shard.layers[c->layer];
    size_t ff = w->cfg.d_ff, mc = w->mlp_chunk;
    uint32_t nc = r->c1 - r->c0;
    long lo, hi;
    pt_pool_split((long)e->T * nc, tid, nth, &lo, &hi);
    for (long it = lo; it < hi; it++) {
        size_t t = (size_t)it / nc, m = r->c0 + (size_t)it % nc;
        float *gt = r->gate + t * ff + m * mc;
        kcpu_swiglu(gt, gt, r->up + t * ff + m * mc, mc);
        size_t rb = act_row_bytes(e, L->down[m].type, mc);
        quantize_act(e, L->down[m].type, r->h_act + (t * w->n_mlp_chunks + m) * rb, gt, mc);
    }
}

/* ---- phase: final norm of the rows that want logits ---- */

static void final_phase(void *arg, int tid, int nth) {
    phase_ctx *c = arg;
    pt_instance *e = c->e;
    pt_rank *r = c->r;
    const pt_weights *w = &e->w;
    size_t d = w->cfg.d_model, T = e->T;
    float *x = r->x;
    float *acc = r->thread_scratch + (size_t)tid * e->scratch_len;
    size_t rb = act_row_bytes(e, w->output.type, d);
    long lo, hi;
    pt_pool_split((long)e->n_out, tid, nth, &lo, &hi);
    for (long i = lo; i < hi; i++) {
        size_t t = e->out_row[i];
        fold_into(x + t * d, r->part_mlp, w->n_mlp_chunks, T, t, d, acc);
        float *xn = r->xn + t * d;
        kcpu_rmsnorm(xn, x + t * d, w->output_norm, d, w->cfg.rms_eps);
        quantize_act(e, w->output.type, r->final_act + (size_t)i * rb, xn, d);
    }
}

uint32_t pt_cpu_vocab_begin(const pt_instance *e, int i) {
    return (uint32_t)((uint64_t)e->w.cfg.vocab_size * (uint32_t)i / (uint32_t)e->tp);
}

void pt_cpu_attention_block(pt_instance *e, pt_rank *r, uint32_t l) {
    const pt_weights *w = &e->w;
    const pt_model_config *cfg = &w->cfg;
    size_t d = cfg->d_model, hd = cfg->head_dim, T = e->T;
    size_t qw = (size_t)w->q_per_kv * hd;
    const pt_layer_weights *L = &r->shard.layers[l];
    phase_ctx pc = {e, r, l};
    if (l == 0) pt_pool_run(r->pool, embed_phase, &pc);
    for (int i = 0; i < 3; i++) r->act_type[i] = PT_DTYPE_COUNT;
    pt_dtype qkv_types[3] = {L->q[r->g0].type, L->k[r->g0].type, L->v[r->g0].type};
    run_norm(e, r, l ? r->part_mlp : NULL, w->n_mlp_chunks, L->attn_norm, qkv_types, 3);
    mm_list ml = {.T = (uint32_t)T, .exact = e->opts.exact_activations};
    for (uint32_t g = r->g0; g < r->g1; g++) {
        mm_add(&ml, &L->q[g], act_of(e, r, L->q[g].type), act_row_bytes(e, L->q[g].type, d), r->q + g * qw,
               (size_t)cfg->n_heads * hd);
        mm_add(&ml, &L->k[g], act_of(e, r, L->k[g].type), act_row_bytes(e, L->k[g].type, d), r->k + g * hd,
               (size_t)cfg->n_kv_heads * hd);
        mm_add(&ml, &L->v[g], act_of(e, r, L->v[g].type), act_row_bytes(e, L->v[g].type, d), r->v + g * hd,
               (size_t)cfg->n_kv_heads * hd);
    }
    pt_pool_run(r->pool, mm_phase, &ml);
    pt_pool_run(r->pool, rope_phase, &pc);
    pt_pool_run(r->pool, append_phase, &pc);
    pt_pool_run(r->pool, attn_phase, &pc);
    ml = (mm_list){.T = (uint32_t)T, .exact = e->opts.exact_activations};
    for (uint32_t g = r->g0; g < r->g1; g++) {
        size_t rb = act_row_bytes(e, L->o[g].type, qw);
        mm_add(&ml, &L->o[g], r->att_act + g * rb, rb * w->n_groups, r->part_attn + (size_t)g * T * d, d);
    }
    pt_pool_run(r->pool, mm_phase, &ml);
}

void pt_cpu_mlp_block(pt_instance *e, pt_rank *r, uint32_t l) {
    const pt_weights *w = &e->w;
    const pt_model_config *cfg = &w->cfg;
    size_t d = cfg->d_model, T = e->T, mc = w->mlp_chunk;
    const pt_layer_weights *L = &r->shard.layers[l];
    phase_ctx pc = {e, r, l};
    for (int i = 0; i < 3; i++) r->act_type[i] = PT_DTYPE_COUNT;
    pt_dtype gu_types[2] = {L->gate[r->c0].type, L->up[r->c0].type};
    run_norm(e, r, r->part_attn, w->n_groups, L->ffn_norm, gu_types, 2);
    mm_list ml = {.T = (uint32_t)T, .exact = e->opts.exact_activations};
    for (uint32_t m = r->c0; m < r->c1; m++) {
        mm_add(&ml, &L->gate[m], act_of(e, r, L->gate[m].type), act_row_bytes(e, L->gate[m].type, d),
               r->gate + m * mc, cfg->d_ff);
        mm_add(&ml, &L->up[m], act_of(e, r, L->up[m].type), act_row_bytes(e, L->up[m].type, d), r->up + m * mc,
               cfg->d_ff);
    }
    pt_pool_run(r->pool, mm_phase, &ml);
    pt_pool_run(r->pool, swiglu_phase, &pc);
    ml = (mm_list){.T = (uint32_t)T, .exact = e->opts.exact_activations};
    for (uint32_t m = r->c0; m < r->c1; m++) {
        size_t rb = act_row_bytes(e, L->down[m].type, mc);
        mm_add(&ml, &L->down[m], r->h_act + m * rb, rb * w->n_mlp_chunks, r->part_mlp + (size_t)m * T * d, d);
    }
    pt_pool_run(r->pool, mm_phase, &ml);
}

/* The vocabulary is split across ranks; each logit is one whole dot
 * product, so the split changes no bits. */
void pt_cpu_logits(pt_instance *e, pt_rank *r, uint32_t unused) {
    const pt_weights *w = &e->w;
    phase_ctx pc = {e, r, 0};
    pt_pool_run(r->pool, final_phase, &pc);
    uint32_t V = w->cfg.vocab_size, v0 = pt_cpu_vocab_begin(e, r->rank), v1 = pt_cpu_vocab_begin(e, r->rank + 1);
    pt_wmat head = w->output;
    head.data = (const uint8_t *)head.data + (size_t)v0 * head.stride;
    head.rows = v1 - v0;
    mm_list ml = {.T = e->n_out, .exact = e->opts.exact_activations};
    mm_add(&ml, &head, r->final_act, act_row_bytes(e, head.type, w->cfg.d_model), r->logits + v0, V);
    pt_pool_run(r->pool, mm_phase, &ml);
}
