/* The CPU backend: every rank's KV pages in host memory, its scratch, and
 * its worker threads; a step runs forward.c on each rank (ranks as threads
 * at tp > 1, joined by a barrier). */
#include <stdlib.h>

#include "engine/engine_internal.h"

#define DEFAULT_KV_BUDGET (1ull << 30) /* bytes of KV per rank when kv_pages is 0 */

static void rank_main(void *arg, int tid, int nth) {
    pt_engine *e = arg;
    pt_forward_rank(e, &e->ranks[tid]);
}

static int cpu_step(pt_backend *b, pt_engine *e, pt_err *err) {
    if (e->tp == 1)
        pt_forward_rank(e, &e->ranks[0]);
    else
        pt_pool_run(e->rank_pool, rank_main, e);
    return PT_OK;
}

/* The backend's state lives in the engine (forward.c reads it there); this
 * frees the part the CPU backend allocated. */
typedef struct {
    pt_backend base;
    pt_engine *e;
} cpu_backend;

static void cpu_destroy(pt_backend *b) {
    pt_engine *e = ((cpu_backend *)b)->e;
    for (int i = 0; i < e->tp; i++) {
        pt_rank *r = &e->ranks[i];
        pt_pool_free(r->pool);
        free(r->xn);
        for (int a = 0; a < 3; a++) free(r->act[a]);
        free(r->q);
        free(r->k);
        free(r->v);
        free(r->att);
        free(r->att_act);
        free(r->gate);
        free(r->up);
        free(r->h_act);
        free(r->scores);
        if (e->x) free(e->x[i]);
    }
    free(e->x);
    free(e->part_attn);
    free(e->part_mlp);
    free(e->final_act);
    if (e->rank_pool) { /* created together with the barrier, last */
        pt_pool_free(e->rank_pool);
        pthread_barrier_destroy(&e->barrier);
    }
    free(b);
}

static void *alloc_or_null(size_t n, size_t size, bool *ok) {
    void *p = pt_aligned_alloc(n * size);
    if (!p) *ok = false;
    return p;
}

int pt_backend_cpu_create(pt_backend **out, pt_engine *e, pt_err *err) {
    const pt_model_config *c = &e->w.cfg;
    const pt_engine_opts *o = &e->opts;
    size_t d = c->d_model, hd = c->head_dim, Tm = o->max_batch_tokens;
    size_t qld = (size_t)c->n_heads * hd, kld = (size_t)c->n_kv_heads * hd, ff = c->d_ff;
    /* Per-thread scratch: attention scores (max_ctx), a folded row (d), and
     * for page selection a score and an index per page. */
    e->scratch_len = (o->max_ctx > d ? o->max_ctx : d) + 2 * (size_t)e->pages_per_seq;

    cpu_backend *cb = pt_xcalloc(1, sizeof(*cb));
    cb->base.name = "cpu";
    cb->base.step = cpu_step;
    cb->base.destroy = cpu_destroy;
    cb->e = e;
    *out = &cb->base;

    bool ok = true;
    e->x = pt_xcalloc((size_t)e->tp, sizeof(float *));
    for (int i = 0; i < e->tp; i++) {
        pt_rank *r = &e->ranks[i];
        r->pool = pt_pool_create(o->n_threads);
        uint64_t kv_pages = o->kv_pages ? o->kv_pages
                                        : pt_engine_kv_pages_for(e, r->g1 - r->g0, o->kv_bytes ? o->kv_bytes : DEFAULT_KV_BUDGET);
        if (kv_pages > UINT32_MAX - 1) kv_pages = UINT32_MAX - 1;
        int rc = pt_kv_pool_init(&r->kv, c->n_layers, c->head_dim, o->page_size, (uint32_t)kv_pages, o->kv_dtype, err);
        if (rc) return rc;
        r->xn = alloc_or_null(Tm * d, sizeof(float), &ok);
        for (int a = 0; a < 3; a++) r->act[a] = alloc_or_null(Tm * d, sizeof(float), &ok);
        r->q = alloc_or_null(Tm * qld, sizeof(float), &ok);
        r->k = alloc_or_null(Tm * kld, sizeof(float), &ok);
        r->v = alloc_or_null(Tm * kld, sizeof(float), &ok);
        r->att = alloc_or_null(Tm * qld, sizeof(float), &ok);
        r->att_act = alloc_or_null(Tm * qld, sizeof(float), &ok);
        r->gate = alloc_or_null(Tm * ff, sizeof(float), &ok);
        r->up = alloc_or_null(Tm * ff, sizeof(float), &ok);
        r->h_act = alloc_or_null(Tm * ff, sizeof(float), &ok);
        r->scores = alloc_or_null((size_t)o->n_threads * e->scratch_len, sizeof(float), &ok);
        e->x[i] = alloc_or_null(Tm * d, sizeof(float), &ok);
    }
    e->part_attn = alloc_or_null(e->w.n_groups * Tm * d, sizeof(float), &ok);
    e->part_mlp = alloc_or_null(e->w.n_mlp_chunks * Tm * d, sizeof(float), &ok);
    e->final_act = alloc_or_null(e->max_out * d, sizeof(float), &ok);
    if (!ok) return pt_err_set(err, PT_ERR_NOMEM, "out of memory allocating CPU engine buffers");
    if (e->tp > 1) {
        pthread_barrier_init(&e->barrier, NULL, (unsigned)e->tp);
        e->rank_pool = pt_pool_create(e->tp);
    }
    return PT_OK;
}
