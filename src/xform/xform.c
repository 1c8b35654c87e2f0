/* A live TP transformation of engine instances: see xform.h.
 *
 * Every device of the range has one KV pool, used by the source rank on it
 * until the commit and by the target rank on it after. A head page whose
 * head stays on its device never moves; one whose head changes device is
 * copied once, by pre-copy while it is full and pinned, or in the pause.
 * Transfers go through a comm world of the transformation's own, so that a
 * failed transfer aborts only the transformation, never the instances that
 * keep serving: a local one on CPU devices; on GPUs an NCCL one, on streams
 * of its own, so that pre-copy overlaps the decode steps on theirs.
 * (The GPU path is compile-checked only: no GPU has run it yet.) */
#include "xform/xform.h"

#include <stdlib.h>
#include <string.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "backend/backend.h"
#include "device/fabric_internal.h"
#include "engine/engine_internal.h"

/* A head page recorded by a snapshot: copied from src_slot (pinned) on
 * device sd to dst_slot (owned by the record) on device dd. */
typedef struct {
    int src, seq;
    uint32_t head, idx;
    uint32_t src_slot, dst_slot;
    int sd, dd;      /* fabric device indices */
    bool copied;
    bool stale;      /* its sequence ended or changed: dropped at commit */
    bool taken;      /* the commit gave dst_slot to a target's block table */
} page_rec;

/* What the pre-copy knows of one source sequence. */
typedef struct {
    int dst;        /* target, once given; -1 before */
    uint32_t upto;  /* pages [0, upto) of every moving head are recorded */
    uint32_t *rec;  /* (n_groups * pages_per_seq) record index + 1 of (head, page); 0: none */
} seq_track;

struct pt_xform {
    pt_fabric *f;
    int first, n_dev;               /* the device range */
    int n_src, n_dst;
    pt_engine *src[PT_FABRIC_MAX_DEVICES];
    pt_engine *dst[PT_FABRIC_MAX_DEVICES];
    pt_kv_pool *pool[PT_FABRIC_MAX_DEVICES]; /* per device of the range */
    uint32_t shrunk[PT_FABRIC_MAX_DEVICES];  /* pages retired to make room for the targets */
    pt_comm_world *world;           /* transfers only */
    bool cuda;
    int ordinals[PT_FABRIC_MAX_DEVICES];     /* CUDA: per fabric device */
    void *streams[PT_FABRIC_MAX_DEVICES];    /* CUDA: the transfers' streams, per fabric device */
    seq_track *track[PT_FABRIC_MAX_DEVICES]; /* per source: (max_seqs) */
    page_rec *recs;
    size_t n_recs, cap_recs, n_copied;
    uint32_t stage_new;             /* pages the snapshots of the stage under way recorded */
    uint32_t last_new;              /* the same of the last stage copied */
    uint64_t dst_pages[PT_FABRIC_MAX_DEVICES]; /* pages given to each target, for balance */
    uint32_t dst_seqs[PT_FABRIC_MAX_DEVICES];  /* sequences given to each target (at most its max_seqs) */
    pt_xform_fail fail;
    pt_xform_state state;
    pt_xform_stats st;
};

const char *pt_xform_state_name(pt_xform_state s) {
    static const char *const names[] = {"planned", "precopy", "committed", "failed"};
    return (unsigned)s < sizeof names / sizeof names[0] ? names[s] : "?";
}

pt_xform_state pt_xform_get_state(const pt_xform *x) { return x->state; }

static void set_state(pt_xform *x, pt_xform_state s, const char *why) {
    pt_log(PT_LOG_DEBUG, "transformation %p: %s -> %s%s%s", (void *)x, pt_xform_state_name(x->state),
           pt_xform_state_name(s), why ? ": " : "", why ? why : "");
    x->state = s;
}

/* A failed stage: the error stands, and only the rollback is left. */
static int fail(pt_xform *x, int rc, const pt_err *err) {
    set_state(x, PT_XFORM_FAILED, err ? err->msg : NULL);
    return rc;
}

/* Whether a stage may run now; else an error naming the state. */
static int check_state(const pt_xform *x, const char *stage, pt_err *err) {
    if (x->state == PT_XFORM_PLANNED || x->state == PT_XFORM_PRECOPY) return PT_OK;
    return pt_err_set(err, PT_ERR_INVALID, "%s: the transformation is %s%s", stage, pt_xform_state_name(x->state),
                      x->state == PT_XFORM_FAILED ? " (only the rollback is left)" : "");
}

/* ---- geometry ---- */

static int dev_of_head(const pt_engine *e, uint32_t h) { return e->first + pt_rank_of_group(&e->in, h); }
static pt_kv_pool *pool_at(pt_xform *x, int dev) { return x->pool[dev - x->first]; }
static uint32_t full_pages(const pt_engine *e, const pt_seq *s) { return s->len / e->in.opts.page_size; }
static uint32_t n_groups(const pt_xform *x) { return x->src[0]->in.w.n_groups; }

static int transfer(pt_xform *x, pt_comm_transfer *t, size_t n, pt_xform_fail injected, pt_err *err) {
    if (injected != PT_XFORM_FAIL_NONE && x->fail == injected) {
        x->fail = PT_XFORM_FAIL_NONE;
        pt_comm_world_fail_after(x->world, 0);
    }
    pt_comm_group *g = pt_comm_group_find(x->world, 0, pt_comm_world_size(x->world));
    int rc = pt_comm_send_recv(g, t, n, x->cuda ? x->streams : NULL, err);
    if (!rc && x->cuda) rc = pt_comm_wait(g, x->streams, 0, err);
    return rc;
}

/* ---- plan ---- */

static int check_sources(pt_engine *const *src, int n_src, pt_err *err) {
    for (int i = 0; i < n_src; i++) {
        const pt_engine *e = src[i], *a = src[0];
        if (e->fabric != a->fabric || e->mf != a->mf)
            return pt_err_set(err, PT_ERR_INVALID, "source %d is on another fabric or model", i);
        if (strcmp(e->backend->name, a->backend->name) != 0)
            return pt_err_set(err, PT_ERR_INVALID, "source %d runs on another backend (%s, not %s)", i,
                              e->backend->name, a->backend->name);
        if (i > 0 && e->first != src[i - 1]->first + src[i - 1]->in.tp)
            return pt_err_set(err, PT_ERR_INVALID, "source %d does not follow source %d on the devices", i, i - 1);
        const pt_engine_opts *o = &e->in.opts, *p = &a->in.opts;
        if (o->page_size != p->page_size || o->kv_dtype != p->kv_dtype || o->max_ctx != p->max_ctx ||
            o->tp_chunks != p->tp_chunks)
            return pt_err_set(err, PT_ERR_INVALID, "source %d differs in KV geometry, context or chunking", i);
    }
    return PT_OK;
}

static int check_targets(pt_xform *x, const pt_xform_group *dst, int n_dst, pt_err *err) {
    int at = x->first;
    bool same = n_dst == x->n_src;
    for (int i = 0; i < n_dst; i++) {
        if (dst[i].first != at)
            return pt_err_set(err, PT_ERR_INVALID, "target %d starts at device %d, not %d: the targets must tile "
                              "the sources' devices [%d, %d)", i, dst[i].first, at, x->first, x->first + x->n_dev);
        if (!pt_fabric_group_ok(x->f, dst[i].first, dst[i].tp))
            return pt_err_set(err, PT_ERR_INVALID, "target %d (TP %d on devices [%d, %d)) is not allowed by the fabric",
                              i, dst[i].tp, dst[i].first, dst[i].first + dst[i].tp);
        if ((uint32_t)dst[i].tp > n_groups(x) || (uint32_t)dst[i].tp > x->src[0]->in.w.n_mlp_chunks)
            return pt_err_set(err, PT_ERR_INVALID, "target %d: TP %d exceeds the model's %u KV heads", i, dst[i].tp,
                              n_groups(x));
        same = same && x->src[i]->first == dst[i].first && x->src[i]->in.tp == dst[i].tp;
        at += dst[i].tp;
    }
    if (at != x->first + x->n_dev)
        return pt_err_set(err, PT_ERR_INVALID, "the targets cover devices [%d, %d), the sources [%d, %d)", x->first, at,
                          x->first, x->first + x->n_dev);
    if (same) return pt_err_set(err, PT_ERR_INVALID, "the targets are the sources: nothing to transform");
    return PT_OK;
}

/* Bytes a target rank will charge device d: its shard, its step buffers
 * (as large as a source rank's, whose sizes do not depend on the TP
 * degree) and, on a target's first rank, its logits. */
static uint64_t target_rank_bytes(const pt_engine *src_on_d, const pt_rank *like, uint32_t g0, uint32_t g1,
                                  uint32_t c0, uint32_t c1) {
    return pt_shard_bytes(&src_on_d->in.w, g0, g1, c0, c1) + like->scratch_bytes + src_on_d->in.out_bytes;
}

/* Makes room on every device for the targets' ranks: free KV pages are
 * retired where the budget is short, or the plan is refused. */
static int reserve_room(pt_xform *x, const pt_xform_group *dst, int n_dst, pt_err *err) {
    /* GPU pools cannot give pages back (their memory is one allocation):
     * a target that does not fit fails to build, with the device named. */
    if (x->cuda) return PT_OK;
    const pt_weights *w = &x->src[0]->in.w;
    for (int k = 0; k < n_dst; k++)
        for (int r = 0; r < dst[k].tp; r++) {
            int d = dst[k].first + r;
            pt_device *dev = pt_fabric_device(x->f, d);
            pt_engine *s = NULL;
            for (int i = 0; i < x->n_src; i++)
                if (d >= x->src[i]->first && d < x->src[i]->first + x->src[i]->in.tp) s = x->src[i];
            const pt_rank *like = &s->in.ranks[d - s->first];
            int tp = dst[k].tp;
            uint64_t need = target_rank_bytes(s, like, w->n_groups * r / tp, w->n_groups * (r + 1) / tp,
                                              w->n_mlp_chunks * r / tp, w->n_mlp_chunks * (r + 1) / tp);
            uint64_t avail = pt_device_available(dev);
            if (avail >= need) continue;
            pt_kv_pool *kv = pool_at(x, d);
            uint64_t pages = (need - avail + kv->page_bytes - 1) / kv->page_bytes;
            /* Cached prefixes no request uses give their pages up first. */
            if (pages <= UINT32_MAX && pt_kv_pool_free_pages(kv) < pages) pt_engine_prefix_drop_idle(s);
            if (pages > UINT32_MAX || !pt_kv_pool_shrink(kv, (uint32_t)pages))
                return pt_err_set(err, PT_ERR_NOMEM,
                                  "device %s: the target instance needs %.1f MiB for weights and step buffers; %.1f "
                                  "MiB are free and its KV pool has %u free pages (%.1f MiB) of the %llu needed",
                                  pt_device_name(dev), need / 1048576.0, avail / 1048576.0, pt_kv_pool_free_pages(kv),
                                  (double)pt_kv_pool_free_pages(kv) * kv->page_bytes / 1048576.0,
                                  (unsigned long long)pages);
            x->shrunk[d - x->first] += (uint32_t)pages;
            x->st.kv_pages_reserved += pages;
        }
    return PT_OK;
}

/* The source rank that holds KV-head group g (mlp false) or MLP chunk g
 * (mlp true), preferring one on device d. */
static const pt_rank *holder(const pt_xform *x, uint32_t g, bool mlp, int d) {
    const pt_rank *any = NULL;
    for (int i = 0; i < x->n_src; i++)
        for (int r = 0; r < x->src[i]->in.tp; r++) {
            const pt_rank *k = &x->src[i]->in.ranks[r];
            if (mlp ? g >= k->c0 && g < k->c1 : g >= k->g0 && g < k->g1) {
                if (x->src[i]->first + r == d) return k;
                if (!any) any = k;
            }
        }
    return any;
}

static uint64_t wmat_size(const pt_wmat *m) {
    uint64_t rb = 0;
    pt_dtype_row_bytes(m->type, m->cols, &rb);
    return rb * m->rows;
}

/* The layers a target rank on device d copies its chunks from: each chunk
 * from a source rank holding it, on d when one does (a local copy), else
 * from a peer device (counted in weight_bytes_from_peers). */
static pt_layer_weights *peer_layers(pt_xform *x, int d, uint32_t g0, uint32_t g1, uint32_t c0, uint32_t c1) {
    const pt_weights *w = &x->src[0]->in.w;
    pt_layer_weights *t = malloc(w->cfg.n_layers * sizeof(*t));
    if (!t) return NULL;
    for (uint32_t l = 0; l < w->cfg.n_layers; l++) {
        memset(&t[l], 0, sizeof(t[l])); /* only the chunks are read (pt_shard_build) */
        for (uint32_t g = g0; g < g1; g++) {
            const pt_rank *h = holder(x, g, false, d);
            const pt_layer_weights *s = &h->shard.layers[l];
            t[l].q[g] = s->q[g];
            t[l].k[g] = s->k[g];
            t[l].v[g] = s->v[g];
            t[l].o[g] = s->o[g];
            if (h->dev != pt_fabric_device(x->f, d))
                x->st.weight_bytes_from_peers += wmat_size(&s->q[g]) + wmat_size(&s->k[g]) + wmat_size(&s->v[g]) +
                                                 wmat_size(&s->o[g]);
        }
        for (uint32_t m = c0; m < c1; m++) {
            const pt_rank *h = holder(x, m, true, d);
            const pt_layer_weights *s = &h->shard.layers[l];
            t[l].gate[m] = s->gate[m];
            t[l].up[m] = s->up[m];
            t[l].down[m] = s->down[m];
            if (h->dev != pt_fabric_device(x->f, d))
                x->st.weight_bytes_from_peers +=
                    wmat_size(&s->gate[m]) + wmat_size(&s->up[m]) + wmat_size(&s->down[m]);
        }
    }
    return t;
}

static int build_targets(pt_xform *x, const pt_xform_group *dst, int n_dst, pt_xform_weights from, pt_err *err) {
    pt_engine_opts o = x->src[0]->in.opts;
    const pt_weights *w = &x->src[0]->in.w;
    /* GPU shards are uploaded in their own layout: from the model file. */
    bool peers = from == PT_XFORM_WEIGHTS_FROM_PEERS && !x->cuda;
    for (int k = 0; k < n_dst; k++) {
        pt_layer_weights *tables[PT_FABRIC_MAX_DEVICES] = {NULL};
        int rc = PT_OK, tp = dst[k].tp;
        for (int r = 0; peers && r < tp && !rc; r++)
            if (!(tables[r] = peer_layers(x, dst[k].first + r, w->n_groups * r / tp, w->n_groups * (r + 1) / tp,
                                          w->n_mlp_chunks * r / tp, w->n_mlp_chunks * (r + 1) / tp)))
                rc = pt_err_set(err, PT_ERR_NOMEM, "out of memory planning the weights' moves");
        if (!rc)
            rc = pt_engine_create_ranks(&x->dst[k], x->src[0]->mf, x->f, dst[k].first, tp, &o, false,
                                        peers ? (const pt_layer_weights *const *)tables : NULL, err);
        for (int r = 0; r < tp; r++) free(tables[r]);
        if (rc) return rc;
        x->n_dst = k + 1;
        pt_engine *t = x->dst[k];
        for (int r = 0; r < t->in.tp; r++) {
            t->in.ranks[r].kv = pool_at(x, t->first + r);
            x->st.weight_bytes_new += t->in.ranks[r].shard.bytes + t->in.ranks[r].shard.replicated_bytes;
        }
    }
    return PT_OK;
}

static int create_world(pt_xform *x, pt_err *err) {
    int ids[PT_FABRIC_MAX_DEVICES];
    for (int i = 0; i < x->f->n; i++) ids[i] = x->cuda ? x->ordinals[i] : i;
    pt_comm_config cc = {ids, x->f->n, x->f->allowed, x->f->n_allowed, 0};
    if (!x->cuda) return pt_comm_world_create_local(&x->world, &cc, err);
    int rc = pt_comm_world_create_nccl(&x->world, &cc, err);
    return rc ? rc : pt_backend_cuda_streams_create(x->ordinals, x->f->n, x->streams, err);
}

int pt_xform_create(pt_xform **out, pt_engine *const *src, int n_src, const pt_xform_group *dst, int n_dst,
                    pt_err *err) {
    return pt_xform_create_from(out, src, n_src, dst, n_dst, PT_XFORM_WEIGHTS_DEFAULT, err);
}

int pt_xform_create_from(pt_xform **out, pt_engine *const *src, int n_src, const pt_xform_group *dst, int n_dst,
                         pt_xform_weights from, pt_err *err) {
    *out = NULL;
    if (n_src < 1 || n_dst < 1 || n_src > PT_FABRIC_MAX_DEVICES || n_dst > PT_FABRIC_MAX_DEVICES)
        return pt_err_set(err, PT_ERR_INVALID, "a transformation needs 1 to %d sources and targets",
                          PT_FABRIC_MAX_DEVICES);
    int rc = check_sources(src, n_src, err);
    if (rc) return rc;
    double t0 = pt_now();
    pt_xform *x = calloc(1, sizeof(*x));
    if (!x) return pt_err_set(err, PT_ERR_NOMEM, "out of memory planning a transformation");
    x->f = src[0]->fabric;
    x->first = src[0]->first;
    x->cuda = strcmp(src[0]->backend->name, "cuda") == 0;
    for (int i = 0; i < x->f->n; i++) x->ordinals[i] = pt_device_ordinal(pt_fabric_device(x->f, i));
    x->n_src = n_src;
    for (int i = 0; i < n_src; i++) {
        x->src[i] = src[i];
        for (int r = 0; r < src[i]->in.tp; r++) x->pool[src[i]->first + r - x->first] = src[i]->in.ranks[r].kv;
        x->n_dev += src[i]->in.tp;
        x->track[i] = calloc(src[i]->in.opts.max_seqs, sizeof(seq_track));
        if (!x->track[i]) {
            pt_xform_free(x, NULL);
            return pt_err_set(err, PT_ERR_NOMEM, "out of memory planning a transformation");
        }
        for (uint32_t s = 0; s < src[i]->in.opts.max_seqs; s++) x->track[i][s].dst = -1;
    }
    x->st.n_src = n_src;
    x->st.n_dst = n_dst;
    if ((rc = check_targets(x, dst, n_dst, err)) || (rc = reserve_room(x, dst, n_dst, err)) ||
        (rc = create_world(x, err)) || (rc = build_targets(x, dst, n_dst, from, err))) {
        pt_xform_free(x, NULL);
        return rc;
    }
    x->st.build_s = pt_now() - t0;
    *out = x;
    return PT_OK;
}

/* ---- pre-copy ---- */

/* The target a sequence goes to: a merge's one target, or for a split the
 * target holding the fewest pages so far. */
static int give_target(pt_xform *x, seq_track *t, uint32_t len) {
    if (t->dst >= 0) return t->dst;
    int best = -1;
    for (int k = 0; k < x->n_dst; k++)
        if (x->dst_seqs[k] < x->dst[k]->in.opts.max_seqs && (best < 0 || x->dst_pages[k] < x->dst_pages[best]))
            best = k;
    if (best < 0) best = 0; /* more sequences than the targets hold: the commit refuses */
    t->dst = best;
    x->dst_pages[best] += (len + x->src[0]->in.opts.page_size - 1) / x->src[0]->in.opts.page_size;
    x->dst_seqs[best]++;
    return best;
}

/* Drops the records of a sequence that ended or changed since they were
 * made: their pins and destination pages go back at the commit or free. */
static void forget_seq(pt_xform *x, seq_track *t, const pt_engine *e) {
    if (!t->rec) return;
    size_t n = (size_t)n_groups(x) * e->in.pages_per_seq;
    for (size_t i = 0; i < n; i++)
        if (t->rec[i]) x->recs[t->rec[i] - 1].stale = true;
    memset(t->rec, 0, n * sizeof(uint32_t));
    t->upto = 0;
}

/* Whether the records of a tracked sequence still describe it: the slot it
 * had at its first recorded page is still there (a pinned slot is never
 * reused, so another request in the same sequence id cannot hold it). */
static bool track_valid(const pt_xform *x, const seq_track *t, const pt_seq *s, const pt_engine *e) {
    size_t P = e->in.pages_per_seq;
    for (uint32_t h = 0; h < n_groups(x); h++)
        if (t->rec[h * P]) {
            const page_rec *r = &x->recs[t->rec[h * P] - 1];
            return s->used && s->n_pages > 0 && s->pages[h][0] == r->src_slot;
        }
    return true;
}

static int add_rec(pt_xform *x, const page_rec *r) {
    if (x->n_recs == x->cap_recs) {
        size_t cap = x->cap_recs ? x->cap_recs * 2 : 256;
        page_rec *grown = realloc(x->recs, cap * sizeof(*grown));
        if (!grown) return PT_ERR_NOMEM;
        x->recs = grown;
        x->cap_recs = cap;
    }
    x->recs[x->n_recs++] = *r;
    return PT_OK;
}

static int snapshot_source(pt_xform *x, int src, uint32_t *new_pages, pt_err *err) {
    pt_engine *e = x->src[src];
    size_t P = e->in.pages_per_seq;
    for (uint32_t q = 0; q < e->in.opts.max_seqs; q++) {
        pt_seq *s = &e->in.seqs[q];
        seq_track *t = &x->track[src][q];
        if (t->rec && !track_valid(x, t, s, e)) {
            forget_seq(x, t, e);
            t->dst = -1;
        }
        if (!s->used) continue;
        pt_engine *d = x->dst[give_target(x, t, s->len)];
        uint32_t full = full_pages(e, s);
        if (full <= t->upto) continue;
        if (!t->rec && !(t->rec = calloc((size_t)n_groups(x) * P, sizeof(uint32_t))))
            return pt_err_set(err, PT_ERR_NOMEM, "snapshot: out of memory");
        for (uint32_t h = 0; h < n_groups(x); h++) {
            int sd = dev_of_head(e, h), dd = dev_of_head(d, h);
            if (sd == dd) continue;
            for (uint32_t p = t->upto; p < full; p++) {
                int64_t slot = -1;
                if (x->fail == PT_XFORM_FAIL_PRECOPY_ALLOC) x->fail = PT_XFORM_FAIL_NONE;
                else slot = pt_kv_page_alloc(pool_at(x, dd));
                if (slot < 0)
                    return pt_err_set(err, PT_ERR_NOMEM, "pre-copy: device %s has no free KV page for head %u",
                                      pt_device_name(pt_fabric_device(x->f, dd)), h);
                page_rec r = {src, (int)q, h, p, s->pages[h][p], (uint32_t)slot, sd, dd, false, false, false};
                if (add_rec(x, &r)) {
                    pt_kv_page_release(pool_at(x, dd), (uint32_t)slot);
                    return pt_err_set(err, PT_ERR_NOMEM, "snapshot: out of memory");
                }
                pt_kv_page_ref(pool_at(x, sd), r.src_slot); /* the pin */
                t->rec[h * P + p] = (uint32_t)x->n_recs;
                (*new_pages)++;
            }
        }
        t->upto = full;
    }
    if (x->fail == PT_XFORM_FAIL_PRECOPY_ALLOC) { /* armed, and no page needed one: fail as the next would */
        x->fail = PT_XFORM_FAIL_NONE;
        return pt_err_set(err, PT_ERR_NOMEM, "pre-copy: no free KV page (injected)");
    }
    x->stage_new += *new_pages;
    return PT_OK;
}

int pt_xform_snapshot(pt_xform *x, int src, uint32_t *new_pages, pt_err *err) {
    *new_pages = 0;
    int rc = check_state(x, "snapshot", err);
    if (rc) return rc;
    if (src < 0 || src >= x->n_src) return fail(x, pt_err_set(err, PT_ERR_INVALID, "snapshot: no source %d", src), err);
    if ((rc = snapshot_source(x, src, new_pages, err))) return fail(x, rc, err);
    if (x->state == PT_XFORM_PLANNED) set_state(x, PT_XFORM_PRECOPY, NULL);
    return PT_OK;
}

static int copy_recorded(pt_xform *x, pt_err *err) {
    double t0 = pt_now();
    size_t per_page = 2 * (size_t)x->pool[0]->n_layers, n = 0;
    pt_comm_transfer *t = malloc(((x->n_recs - x->n_copied) * per_page + 1) * sizeof(*t));
    if (!t) return pt_err_set(err, PT_ERR_NOMEM, "pre-copy: out of memory");
    uint64_t pages = 0;
    for (size_t i = x->n_copied; i < x->n_recs; i++) {
        page_rec *r = &x->recs[i];
        if (r->stale) continue;
        n += pt_page_transfers(t + n, pool_at(x, r->sd), r->sd, r->src_slot, pool_at(x, r->dd), r->dd, r->dst_slot);
        pages++;
    }
    int rc = transfer(x, t, n, PT_XFORM_FAIL_PRECOPY_COMM, err);
    free(t);
    if (rc) return rc;
    for (size_t i = x->n_copied; i < x->n_recs; i++) x->recs[i].copied = true;
    x->n_copied = x->n_recs;
    x->st.pages_precopied += pages;
    x->st.kv_bytes_moved += pages * x->pool[0]->page_bytes;
    x->st.stages++;
    x->st.precopy_s += pt_now() - t0;
    x->last_new = x->stage_new;
    x->stage_new = 0;
    return PT_OK;
}

int pt_xform_copy(pt_xform *x, pt_err *err) {
    int rc = check_state(x, "pre-copy", err);
    if (rc) return rc;
    return (rc = copy_recorded(x, err)) ? fail(x, rc, err) : PT_OK;
}

bool pt_xform_precopy_done(const pt_xform *x) {
    return x->st.stages >= PT_XFORM_MAX_STAGES || (x->st.stages > 0 && x->last_new < PT_XFORM_STOP_PAGES);
}

/* ---- commit ---- */

/* A page the commit allocated, released again if the commit fails. */
typedef struct {
    pt_kv_pool *kv;
    uint32_t slot;
} taken_page;

static int cmp_longest_first(const void *a, const void *b) {
    const pt_xform_move *x = a, *y = b;
    return (x->dst_seq < y->dst_seq) - (x->dst_seq > y->dst_seq); /* dst_seq holds the length while sorting */
}

/* Gives every move a target: its pre-copy target, or (the others, longest
 * first) the target with the fewest pages. */
static void assign_targets(pt_xform *x, pt_xform_move *moves, size_t n) {
    pt_xform_move *fresh = malloc((n + 1) * sizeof(*fresh));
    size_t n_fresh = 0;
    for (size_t i = 0; i < n; i++) {
        seq_track *t = &x->track[moves[i].src][moves[i].seq];
        moves[i].dst = t->dst;
        if (t->dst < 0 && fresh) {
            fresh[n_fresh] = moves[i];
            fresh[n_fresh++].dst_seq = (int)x->src[moves[i].src]->in.seqs[moves[i].seq].len;
        }
    }
    if (fresh) {
        qsort(fresh, n_fresh, sizeof(*fresh), cmp_longest_first);
        for (size_t i = 0; i < n_fresh; i++)
            give_target(x, &x->track[fresh[i].src][fresh[i].seq], (uint32_t)fresh[i].dst_seq);
        free(fresh);
    }
    for (size_t i = 0; i < n; i++) {
        seq_track *t = &x->track[moves[i].src][moves[i].seq];
        moves[i].dst = give_target(x, t, x->src[moves[i].src]->in.seqs[moves[i].seq].len);
        moves[i].dst_seq = -1;
    }
}

static int check_moves(const pt_xform *x, const pt_xform_move *moves, size_t n, pt_err *err) {
    size_t live = 0;
    for (int i = 0; i < x->n_src; i++)
        for (uint32_t q = 0; q < x->src[i]->in.opts.max_seqs; q++) live += x->src[i]->in.seqs[q].used;
    if (n != live) return pt_err_set(err, PT_ERR_INVALID, "commit: %zu moves for %zu live sequences", n, live);
    for (size_t i = 0; i < n; i++) {
        if (moves[i].src < 0 || moves[i].src >= x->n_src || moves[i].seq < 0 ||
            (uint32_t)moves[i].seq >= x->src[moves[i].src]->in.opts.max_seqs ||
            !x->src[moves[i].src]->in.seqs[moves[i].seq].used)
            return pt_err_set(err, PT_ERR_INVALID, "commit: move %zu names no live sequence", i);
        for (size_t j = 0; j < i; j++)
            if (moves[j].src == moves[i].src && moves[j].seq == moves[i].seq)
                return pt_err_set(err, PT_ERR_INVALID, "commit: sequence %d of source %d moves twice", moves[i].seq,
                                  moves[i].src);
    }
    return PT_OK;
}

/* The pre-copied page for (head, page) of a move, if it still holds what
 * the source's block table holds. */
static page_rec *precopied(pt_xform *x, const pt_xform_move *m, const pt_seq *s, uint32_t h, uint32_t p) {
    seq_track *t = &x->track[m->src][m->seq];
    if (!t->rec) return NULL;
    uint32_t i = t->rec[h * x->src[m->src]->in.pages_per_seq + p];
    if (!i) return NULL;
    page_rec *r = &x->recs[i - 1];
    return r->copied && !r->stale && r->src_slot == s->pages[h][p] ? r : NULL;
}

/* Fills target sequence `ds` with the pages of source sequence `s`: in
 * place, pre-copied, or newly allocated with a transfer queued. */
static int fill_target_seq(pt_xform *x, const pt_xform_move *m, const pt_seq *s, pt_seq *ds, pt_comm_transfer *t,
                           size_t *n_t, taken_page *taken, size_t *n_taken, pt_err *err) {
    const pt_engine *e = x->src[m->src], *d = x->dst[m->dst];
    for (uint32_t h = 0; h < n_groups(x); h++) {
        int sd = dev_of_head(e, h), dd = dev_of_head(d, h);
        for (uint32_t p = 0; p < s->n_pages; p++) {
            page_rec *r;
            if (sd == dd) {
                ds->pages[h][p] = s->pages[h][p];
                continue;
            }
            if ((r = precopied(x, m, s, h, p))) {
                ds->pages[h][p] = r->dst_slot;
                continue;
            }
            int64_t slot = -1;
            if (x->fail == PT_XFORM_FAIL_COMMIT_ALLOC) x->fail = PT_XFORM_FAIL_NONE;
            else slot = pt_kv_page_alloc(pool_at(x, dd));
            if (slot < 0)
                return pt_err_set(err, PT_ERR_NOMEM, "commit: device %s has no free KV page for head %u",
                                  pt_device_name(pt_fabric_device(x->f, dd)), h);
            taken[(*n_taken)++] = (taken_page){pool_at(x, dd), (uint32_t)slot};
            ds->pages[h][p] = (uint32_t)slot;
            *n_t += pt_page_transfers(t + *n_t, pool_at(x, sd), sd, s->pages[h][p], pool_at(x, dd), dd, (uint32_t)slot);
        }
    }
    ds->len = s->len;
    ds->n_pages = s->n_pages;
    ds->dirty_from = 0;
    return PT_OK;
}

/* The source sequence's pages now belong to the target: moved heads give
 * their source pages back, heads in place hand theirs over as they are. */
static void release_source_seq(pt_xform *x, const pt_xform_move *m, pt_seq *s) {
    const pt_engine *e = x->src[m->src], *d = x->dst[m->dst];
    for (uint32_t h = 0; h < n_groups(x); h++) {
        int sd = dev_of_head(e, h), dd = dev_of_head(d, h);
        for (uint32_t p = 0; p < s->n_pages; p++) {
            page_rec *r;
            if (sd == dd) continue;
            if ((r = precopied(x, m, s, h, p))) r->taken = true;
            else x->st.pages_at_commit++;
            pt_kv_page_release(pool_at(x, sd), s->pages[h][p]);
        }
        if (sd == dd) x->st.pages_in_place += s->n_pages;
    }
    s->used = false;
    s->len = s->n_pages = s->dirty_from = 0;
}

/* Unpins every recorded source page; frees the destination pages that no
 * block table took. */
static void release_recs(pt_xform *x) {
    for (size_t i = 0; i < x->n_recs; i++) {
        page_rec *r = &x->recs[i];
        pt_kv_page_release(pool_at(x, r->sd), r->src_slot);
        if (!r->taken) {
            pt_kv_page_release(pool_at(x, r->dd), r->dst_slot);
            if (r->copied) x->st.pages_wasted++;
        }
    }
    x->n_recs = x->n_copied = 0;
}

/* Whether every target device has free pages for the heads that the
 * moves copy to it in the pause (pre-copied pages are already there). */
static bool room_for_moves(pt_xform *x, const pt_xform_move *moves, size_t n) {
    uint64_t need[PT_FABRIC_MAX_DEVICES] = {0};
    for (size_t i = 0; i < n; i++) {
        const pt_engine *e = x->src[moves[i].src], *d = x->dst[moves[i].dst];
        const pt_seq *s = &e->in.seqs[moves[i].seq];
        for (uint32_t h = 0; h < n_groups(x); h++) {
            int sd = dev_of_head(e, h), dd = dev_of_head(d, h);
            for (uint32_t p = 0; sd != dd && p < s->n_pages; p++) need[dd - x->first] += !precopied(x, &moves[i], s, h, p);
        }
    }
    for (int d = 0; d < x->n_dev; d++)
        if (need[d] > pt_kv_pool_free_pages(x->pool[d])) return false;
    return true;
}

/* Source s's cached prefix pages go to the targets' caches (DESIGN.md
 * section 6: nothing recomputed): a merge keeps every source's cache, a
 * split divides a cache by chain, each chain to one target. A head that
 * stays on its device keeps its page; one that changes device is copied
 * (in the pause: cached pages are not pre-copied). Best effort: a chain
 * whose page finds no room on a target device, or a failed copy, is left
 * behind and freed with the source's cache. Then the source's cache ends. */
static void move_cache(pt_xform *x, int s) {
    pt_engine *e = x->src[s];
    size_t n = e->prefix ? pt_prefix_cache_export(e->prefix, NULL, 0) : 0;
    uint32_t G = n_groups(x);
    pt_prefix_entry *ent = n ? malloc(n * sizeof(*ent)) : NULL;
    int32_t *dst = n ? malloc(n * sizeof(*dst)) : NULL;  /* each entry's target; -1: left behind */
    int32_t *idx = n ? malloc(n * sizeof(*idx)) : NULL;  /* its index in the target's cache */
    uint32_t *slots = n ? malloc(n * G * sizeof(*slots)) : NULL; /* (n, G) on the target's devices */
    pt_comm_transfer *t = n ? malloc(n * G * 2 * (size_t)x->pool[0]->n_layers * sizeof(*t)) : NULL;
    taken_page *taken = n ? malloc(n * G * sizeof(*taken)) : NULL;
    size_t n_t = 0, n_taken = 0;
    if (n && ent && dst && idx && slots && t && taken && pt_prefix_cache_export(e->prefix, ent, n) == n) {
        uint64_t pages[PT_FABRIC_MAX_DEVICES] = {0};
        for (size_t i = 0; i < n; i++) {
            /* A chain stays together; a first page goes where the fewest cached pages went. */
            int k = -1;
            if (ent[i].parent >= 0) k = dst[ent[i].parent];
            else
                for (int j = 0; j < x->n_dst; j++)
                    if (x->dst[j]->prefix && (k < 0 || pages[j] < pages[k])) k = j;
            dst[i] = k;
            if (k < 0) continue;
            const pt_engine *d = x->dst[k];
            size_t first_taken = n_taken, first_t = n_t;
            for (uint32_t g = 0; g < G; g++) {
                int sd = dev_of_head(e, g), dd = dev_of_head(d, g);
                int64_t slot = sd == dd ? (int64_t)ent[i].slots[g] : pt_kv_page_alloc(pool_at(x, dd));
                if (slot < 0) { /* no room: this page and what follows it stay behind */
                    for (size_t q = first_taken; q < n_taken; q++) pt_kv_page_release(taken[q].kv, taken[q].slot);
                    n_taken = first_taken;
                    n_t = first_t;
                    dst[i] = -1;
                    break;
                }
                slots[i * G + g] = (uint32_t)slot;
                if (sd == dd) continue;
                taken[n_taken++] = (taken_page){pool_at(x, dd), (uint32_t)slot};
                n_t += pt_page_transfers(t + n_t, pool_at(x, sd), sd, ent[i].slots[g], pool_at(x, dd), dd,
                                         (uint32_t)slot);
            }
            if (dst[i] >= 0) pages[k]++;
        }
        pt_err err = {{0}};
        if (n_t && transfer(x, t, n_t, PT_XFORM_FAIL_NONE, &err) != PT_OK) {
            pt_log(PT_LOG_INFO, "transformation: cached prefix pages not copied (%s): freed instead", err.msg);
            for (size_t i = 0; i < n; i++) dst[i] = -1;
        }
        /* The targets adopt them, parents first. An adoption takes its own
         * reference on every slot: the copies' allocation references go
         * back below, the kept slots' source references with the source's
         * cache. */
        for (size_t i = 0; i < n; i++) {
            int32_t parent = ent[i].parent >= 0 ? idx[ent[i].parent] : -1;
            idx[i] = -1;
            if (dst[i] >= 0 && (ent[i].parent < 0 || parent >= 0)) {
                pt_engine *d = x->dst[dst[i]];
                pt_kv_pool *pools[PT_MAX_GROUPS];
                pt_engine_group_pools(d, pools);
                idx[i] = pt_prefix_cache_adopt(d->prefix, pools, parent, ent[i].salt, ent[i].tokens, slots + i * G);
            }
            if (idx[i] >= 0) x->st.cached_kept++;
            else x->st.cached_dropped++;
        }
    }
    for (size_t q = 0; q < n_taken; q++) pt_kv_page_release(taken[q].kv, taken[q].slot);
    free(ent);
    free(dst);
    free(idx);
    free(slots);
    free(t);
    free(taken);
    pt_engine_prefix_clear(e);
}

static int commit_moves(pt_xform *x, pt_xform_move *moves, size_t n, pt_err *err) {
    int rc = check_moves(x, moves, n, err);
    if (rc) return rc;
    double t0 = pt_now();
    /* Sequences whose records no longer describe them (they ended and the
     * id was reused since the last snapshot) start over. */
    for (int i = 0; i < x->n_src; i++)
        for (uint32_t q = 0; q < x->src[i]->in.opts.max_seqs; q++) {
            seq_track *t = &x->track[i][q];
            if (t->rec && !track_valid(x, t, &x->src[i]->in.seqs[q], x->src[i])) forget_seq(x, t, x->src[i]);
        }
    /* The sources' last steps have written their pages (a GPU's queue may
     * still hold them). */
    if (x->cuda && (rc = pt_backend_cuda_sync(x->ordinals + x->first, x->n_dev, err))) return rc;
    assign_targets(x, moves, n);
    /* The running requests come first: when a target device lacks free
     * pages for their moving heads, the sources' cached pages that no
     * request uses give theirs up (the rest move with their caches below). */
    if (!room_for_moves(x, moves, n))
        for (int s = 0; s < x->n_src; s++) pt_engine_prefix_drop_idle(x->src[s]);
    size_t max_pages = 0;
    for (size_t i = 0; i < n; i++) max_pages += x->src[moves[i].src]->in.seqs[moves[i].seq].n_pages;
    max_pages *= n_groups(x);
    size_t per_page = 2 * (size_t)x->pool[0]->n_layers, n_t = 0, n_taken = 0;
    pt_comm_transfer *t = malloc((max_pages * per_page + 1) * sizeof(*t));
    taken_page *taken = malloc((max_pages + 1) * sizeof(*taken));
    if (!t || !taken) {
        free(t);
        free(taken);
        return pt_err_set(err, PT_ERR_NOMEM, "commit: out of memory");
    }
    size_t i = 0;
    for (; i < n; i++) {
        pt_xform_move *m = &moves[i];
        pt_engine *d = x->dst[m->dst];
        if ((m->dst_seq = pt_engine_seq_new(d)) < 0) {
            rc = pt_err_set(err, PT_ERR_NOMEM, "commit: target %d has no free sequence slot", m->dst);
            break;
        }
        if ((rc = fill_target_seq(x, m, &x->src[m->src]->in.seqs[m->seq], &d->in.seqs[m->dst_seq], t, &n_t, taken,
                                  &n_taken, err))) {
            i++; /* its slot is taken: undone below */
            break;
        }
    }
    if (!rc && x->fail == PT_XFORM_FAIL_COMMIT_ALLOC) { /* armed, and no page needed one */
        x->fail = PT_XFORM_FAIL_NONE;
        rc = pt_err_set(err, PT_ERR_NOMEM, "commit: no free KV page (injected)");
    }
    if (!rc) rc = transfer(x, t, n_t, PT_XFORM_FAIL_COMMIT_COMM, err);
    free(t);
    if (rc) {
        /* Nothing changed on the sources: give back what the commit took. */
        for (size_t k = 0; k < n_taken; k++) pt_kv_page_release(taken[k].kv, taken[k].slot);
        for (size_t k = 0; k < i; k++) {
            pt_seq *ds = &x->dst[moves[k].dst]->in.seqs[moves[k].dst_seq];
            ds->used = false;
            ds->len = ds->n_pages = ds->dirty_from = 0;
            moves[k].dst_seq = -1;
        }
        free(taken);
        return rc;
    }
    free(taken);
    for (size_t k = 0; k < n; k++) release_source_seq(x, &moves[k], &x->src[moves[k].src]->in.seqs[moves[k].seq]);
    x->st.kv_bytes_moved += x->st.pages_at_commit * x->pool[0]->page_bytes;
    x->st.seqs_moved = (uint32_t)n;
    release_recs(x);
    for (int s = 0; s < x->n_src; s++) move_cache(x, s);
    /* The pools now serve the targets. */
    for (int s = 0; s < x->n_src; s++)
        for (int r = 0; r < x->src[s]->in.tp; r++) x->src[s]->in.ranks[r].kv = NULL;
    x->st.commit_s = pt_now() - t0;
    return PT_OK;
}

int pt_xform_commit(pt_xform *x, pt_xform_move *moves, size_t n, pt_err *err) {
    int rc = check_state(x, "commit", err);
    if (rc) return rc;
    if ((rc = commit_moves(x, moves, n, err))) return fail(x, rc, err);
    set_state(x, PT_XFORM_COMMITTED, NULL);
    return PT_OK;
}


pt_engine *pt_xform_target(const pt_xform *x, int i) { return i >= 0 && i < x->n_dst ? x->dst[i] : NULL; }

const pt_xform_stats *pt_xform_get_stats(const pt_xform *x) { return &x->st; }

void pt_xform_fail_at(pt_xform *x, pt_xform_fail where) { x->fail = where; }

/* ---- finish ---- */

void pt_xform_free(pt_xform *x, pt_xform_stats *final) {
    if (!x) return;
    for (int s = 0; s < x->n_src; s++) {
        if (x->track[s])
            for (uint32_t q = 0; q < x->src[s]->in.opts.max_seqs; q++) free(x->track[s][q].rec);
        free(x->track[s]);
    }
    if (x->state == PT_XFORM_COMMITTED) {
        for (int s = 0; s < x->n_src; s++) {
            for (int r = 0; r < x->src[s]->in.tp; r++)
                x->st.weight_bytes_freed += x->src[s]->in.ranks[r].shard.bytes + x->src[s]->in.ranks[r].shard.replicated_bytes;
            pt_engine_free(x->src[s]);
        }
#ifdef __GLIBC__
        /* The sources' buffers below glibc's mmap threshold went back to its
         * heap: give what is free back to the system, or a server that
         * changes layouts all day grows by fragments. */
        malloc_trim(0);
#endif
        /* The memory the sources' weights and buffers leave becomes KV pages. */
        for (int d = 0; d < x->n_dev; d++) x->st.kv_pages_gained += pt_kv_pool_grow(x->pool[d], UINT32_MAX);
    } else {
        pt_log(PT_LOG_DEBUG, "transformation %p: %s, rolled back", (void *)x, pt_xform_state_name(x->state));
        release_recs(x);
        for (int k = 0; k < x->n_dst; k++) {
            for (int r = 0; r < x->dst[k]->in.tp; r++) x->dst[k]->in.ranks[r].kv = NULL; /* the sources' */
            pt_engine_free(x->dst[k]);
        }
        for (int d = 0; d < x->n_dev; d++)
            if (x->shrunk[d]) pt_kv_pool_grow(x->pool[d], x->shrunk[d]);
    }
    if (final) *final = x->st;
    if (x->cuda) pt_backend_cuda_streams_free(x->ordinals, x->f->n, x->streams);
    pt_comm_world_destroy(x->world);
    free(x->recs);
    free(x);
}
