/* The CPU backend: every rank's shard, KV pages and step buffers in its
 * device's accounted memory, and the driver of a step: the phases of the
 * forward pass run on every rank at once (one thread per rank, each driving
 * its device's workers), and between them the ranks exchange their partial
 * sums through the instance's comm group. */
#include <stdlib.h>
#include <string.h>

#include "backend/cpu/cpu_forward.h"
#include "cpu/kcpu_ops.h"
#include "backend/backend.h"
#include "backend/instance.h"

#define DEFAULT_KV_BUDGET (1ull << 30) /* bytes of KV per rank when its device has no budget */

typedef struct {
    pt_backend base;
    pt_instance *e;
} cpu_backend;

/* ---- running a phase on every rank ---- */

typedef struct {
    pt_instance *e;
    pt_cpu_phase fn;
    uint32_t layer;
} rank_job;

static void rank_main(void *arg, int tid, int nth) {
    rank_job *j = arg;
    j->fn(j->e, &j->e->ranks[tid], j->layer);
}

static void run_ranks(pt_instance *e, pt_cpu_phase fn, uint32_t layer) {
    if (e->tp == 1) {
        fn(e, &e->ranks[0], layer);
        return;
    }
    rank_job j = {e, fn, layer};
    pt_pool_run(e->rank_pool, rank_main, &j);
}

/* Every rank computed the partial sums of its own chunks [k0, k1) (KV-head
 * groups for O, MLP chunks for down) into part_attn or part_mlp
 * (n_chunks, T, d); after this, every rank holds all of them. */
static int gather_partials(pt_instance *e, bool mlp, pt_err *err) {
    if (e->tp == 1) return PT_OK;
    size_t Td = (size_t)e->T * e->w.cfg.d_model;
    void *bufs[PT_COMM_MAX_RANKS];
    size_t offs[PT_COMM_MAX_RANKS], counts[PT_COMM_MAX_RANKS];
    for (int i = 0; i < e->tp; i++) {
        const pt_rank *r = &e->ranks[i];
        uint32_t k0 = mlp ? r->c0 : r->g0, k1 = mlp ? r->c1 : r->g1;
        bufs[i] = mlp ? r->part_mlp : r->part_attn;
        offs[i] = k0 * Td;
        counts[i] = (k1 - k0) * Td;
    }
    return pt_comm_all_gather_v(e->group, bufs, offs, counts, PT_COMM_F32, NULL, err);
}

/* Ranks above 0 computed logits columns [v0, v1) of every row that wants
 * them; they go to rank 0's rows, which are the engine's out_scratch. */
static int gather_logits(pt_instance *e, pt_err *err) {
    if (e->tp == 1) return PT_OK;
    uint32_t V = e->w.cfg.vocab_size;
    size_t n = (size_t)(e->tp - 1) * e->n_out;
    pt_comm_transfer *t = malloc(n * sizeof(*t) + 1);
    if (!t) return pt_err_set(err, PT_ERR_NOMEM, "out of memory staging the logits transfer");
    size_t k = 0;
    for (int i = 1; i < e->tp; i++) {
        uint32_t v0 = pt_cpu_vocab_begin(e, i), v1 = pt_cpu_vocab_begin(e, i + 1);
        for (uint32_t row = 0; row < e->n_out; row++, k++) {
            size_t off = (size_t)row * V + v0;
            t[k] = (pt_comm_transfer){i, 0, e->ranks[i].logits + off, e->out_scratch + off, (v1 - v0) * sizeof(float)};
        }
    }
    int rc = pt_comm_send_recv(e->group, t, n, NULL, err);
    free(t);
    return rc;
}

static int cpu_step(pt_backend *b, pt_instance *e, pt_err *err) {
    int rc = PT_OK;
    for (uint32_t l = 0; l < e->w.cfg.n_layers && rc == PT_OK; l++) {
        run_ranks(e, pt_cpu_attention_block, l);
        rc = gather_partials(e, false, err);
        if (rc) break;
        run_ranks(e, pt_cpu_mlp_block, l);
        rc = gather_partials(e, true, err);
    }
    if (rc == PT_OK && e->n_out) {
        run_ranks(e, pt_cpu_logits, 0);
        rc = gather_logits(e, err);
    }
    return rc;
}

/* ---- lifetime ---- */

static void cpu_destroy(pt_backend *b) {
    pt_instance *e = ((cpu_backend *)b)->e;
    for (int i = 0; i < e->tp; i++) {
        pt_rank *r = &e->ranks[i];
        pt_device_release(r->dev, PT_MEM_SCRATCH, r->scratch, r->scratch_bytes);
        r->scratch = NULL;
        pt_shard_free(&r->shard);
    }
    pt_pool_free(e->rank_pool);
    e->rank_pool = NULL;
    free(b);
}

/* Lays the rank's step buffers out in one allocation (walked twice: once
 * to size it with base NULL, once to set the pointers). */
static size_t layout_scratch(pt_instance *e, pt_rank *r, uint8_t *base) {
    const pt_model_config *c = &e->w.cfg;
    const pt_engine_opts *o = &e->opts;
    size_t d = c->d_model, hd = c->head_dim, Tm = o->max_batch_tokens;
    size_t qld = (size_t)c->n_heads * hd, kld = (size_t)c->n_kv_heads * hd, ff = c->d_ff;
    size_t V = c->vocab_size;
    size_t off = 0;
#define CARVE(ptr, n_floats)                                          \
    do {                                                              \
        if (base) (ptr) = (void *)(base + off);                       \
        off += ((size_t)(n_floats) * sizeof(float) + 63) / 64 * 64; \
    } while (0)
    CARVE(r->x, Tm * d);
    CARVE(r->part_attn, (size_t)e->w.n_groups * Tm * d);
    CARVE(r->part_mlp, (size_t)e->w.n_mlp_chunks * Tm * d);
    if (r->rank > 0) CARVE(r->logits, (size_t)e->max_out * V);
    CARVE(r->final_act, (size_t)e->max_out * d);
    CARVE(r->xn, Tm * d);
    for (int a = 0; a < 3; a++) CARVE(r->act[a], Tm * d);
    CARVE(r->q, Tm * qld);
    CARVE(r->k, Tm * kld);
    CARVE(r->v, Tm * kld);
    CARVE(r->att, Tm * qld);
    CARVE(r->att_act, Tm * qld);
    CARVE(r->gate, Tm * ff);
    CARVE(r->up, Tm * ff);
    CARVE(r->h_act, Tm * ff);
    CARVE(r->thread_scratch, (size_t)pt_device_threads(r->dev) * e->scratch_len);
#undef CARVE
    if (base && r->rank == 0) r->logits = e->out_scratch;
    return off;
}

static int rank_init(pt_instance *e, pt_rank *r, pt_err *err) {
    const pt_model_config *c = &e->w.cfg;
    const pt_engine_opts *o = &e->opts;
    int rc = pt_shard_build(&r->shard, &e->w, r->shard_from, r->dev, r->g0, r->g1, r->c0, r->c1, err);
    if (rc) return rc;
    r->scratch_bytes = layout_scratch(e, r, NULL);
    if ((rc = pt_device_alloc(r->dev, PT_MEM_SCRATCH, r->scratch_bytes, &r->scratch, "step buffers", err)))
        return rc;
    layout_scratch(e, r, r->scratch);
    if (!r->kv) return PT_OK; /* a transformation's target: it takes the device's pool over */
    /* KV pages: as configured, or what the device has left, at most enough
     * for max_seqs full contexts of the heads this rank holds. */
    uint64_t kv_pages = o->kv_pages;
    if (!kv_pages) {
        uint64_t budget = o->kv_bytes;
        if (!budget) budget = pt_device_budget(r->dev) ? pt_device_available(r->dev) : DEFAULT_KV_BUDGET;
        kv_pages = pt_instance_kv_pages_for(e, r->g1 - r->g0, budget);
    }
    if (kv_pages < r->g1 - r->g0)
        return pt_err_set(err, PT_ERR_NOMEM,
                          "device %s: no room for KV pages after %llu bytes of weights and %llu of step buffers "
                          "(budget %llu bytes; one page of %u heads needs %llu)",
                          pt_device_name(r->dev), (unsigned long long)pt_device_used(r->dev, PT_MEM_WEIGHTS),
                          (unsigned long long)pt_device_used(r->dev, PT_MEM_SCRATCH),
                          (unsigned long long)pt_device_budget(r->dev), r->g1 - r->g0,
                          (unsigned long long)((r->g1 - r->g0) *
                                               pt_kv_page_bytes(c->n_layers, c->head_dim, o->page_size, o->kv_dtype)));
    /* Address space for every head of the model on this device, so that the
     * pool can grow when a transformation leaves this device more heads or
     * frees weights; only the enabled pages are charged. */
    uint64_t cap = pt_instance_kv_pages_for(e, e->w.n_groups, pt_device_budget(r->dev) ? pt_device_budget(r->dev)
                                                                                       : DEFAULT_KV_BUDGET);
    if (o->kv_pages || o->kv_bytes || cap < kv_pages) cap = kv_pages;
    return pt_kv_pool_init(r->kv, r->dev, c->n_layers, c->head_dim, o->page_size, (uint32_t)kv_pages, (uint32_t)cap,
                           o->kv_dtype, err);
}

int pt_backend_cpu_create(pt_backend **out, pt_instance *e, pt_err *err) {
    size_t d = e->w.cfg.d_model;
    /* Per-thread scratch: the softmax states of one attention run or a
     * folded row (d), and for page selection a score and an index per page. */
    size_t states = kcpu_attn_run_scratch_len(PT_CPU_ATTN_RUN, e->w.q_per_kv, e->w.cfg.head_dim, e->opts.page_size);
    e->scratch_len = (states > d ? states : d) + 2 * (size_t)e->pages_per_seq;

    cpu_backend *cb = calloc(1, sizeof(*cb));
    if (!cb) return pt_err_set(err, PT_ERR_NOMEM, "out of memory creating the CPU backend");
    cb->base.name = "cpu";
    cb->base.step = cpu_step;
    cb->base.destroy = cpu_destroy;
    cb->e = e;
    *out = &cb->base;
    for (int i = 0; i < e->tp; i++) {
        int rc = rank_init(e, &e->ranks[i], err);
        if (rc) return rc;
    }
    if (e->tp > 1 && (!(e->rank_pool = pt_pool_create(e->tp)) || pt_pool_size(e->rank_pool) != e->tp))
        return pt_err_set(err, PT_ERR_NOMEM, "cannot start %d rank threads", e->tp);
    return PT_OK;
}
