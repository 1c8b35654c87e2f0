/* A live transformation of running batchers: see live.h. */
#include "xform/live.h"

#include <stdlib.h>
#include <string.h>

#include "engine/batcher_internal.h"

/* A request handed over, and the target that holds it now. */
typedef struct {
    uint64_t id;
    int dst;
} placed;

struct pt_live_xform {
    pt_live_instance src[PT_FABRIC_MAX_DEVICES];
    pt_live_instance dst[PT_FABRIC_MAX_DEVICES];
    int n_src, n_dst;
    pt_xform *xf;
    bool parked, committed;
    double t_precopy_start, t_first_park, t_precopy_end;
    placed *where;
    size_t n_where, cap_where;
    pt_xform_move *moves; /* (the commit's) */
    size_t n_moves;
    int cur_src;          /* the source being handed over */
    pt_live_xform_stats st;
};

int pt_live_xform_start(pt_live_xform **out, const pt_live_instance *src, int n_src, const pt_xform_group *dst,
                        int n_dst, const pt_tokenizer *tok, const pt_batcher_opts *bo, pt_err *err) {
    *out = NULL;
    if (n_src < 1 || n_src > PT_FABRIC_MAX_DEVICES)
        return pt_err_set(err, PT_ERR_INVALID, "a transformation needs 1 to %d sources", PT_FABRIC_MAX_DEVICES);
    pt_live_xform *x = calloc(1, sizeof(*x));
    if (!x) return pt_err_set(err, PT_ERR_NOMEM, "out of memory starting a transformation");
    x->n_src = n_src;
    pt_engine *engines[PT_FABRIC_MAX_DEVICES];
    for (int i = 0; i < n_src; i++) {
        x->src[i] = src[i];
        engines[i] = src[i].engine;
    }
    int rc = pt_xform_create(&x->xf, engines, n_src, dst, n_dst, err);
    if (rc) {
        free(x);
        return rc;
    }
    /* The targets' batchers, parked until the commit hands them requests. */
    for (int k = 0; k < n_dst; k++) {
        x->dst[k].engine = pt_xform_target(x->xf, k);
        if ((rc = pt_batcher_create(&x->dst[k].batcher, x->dst[k].engine, tok, bo, err))) {
            pt_live_xform_free(x, NULL);
            return rc;
        }
        x->n_dst = k + 1;
        pt_batcher_park(x->dst[k].batcher);
    }
    *out = x;
    return PT_OK;
}

/* ---- pre-copy ---- */

typedef struct {
    pt_xform *xf;
    int src;
    uint32_t new_pages;
} snapshot_job;

static int snapshot_at_boundary(void *arg, pt_err *err) {
    snapshot_job *j = arg;
    return pt_xform_snapshot(j->xf, j->src, &j->new_pages, err);
}

static void park_sources(pt_live_xform *x) {
    /* All asked at once: each stops at the end of its own step. */
    for (int i = 0; i < x->n_src; i++) pt_batcher_pause(x->src[i].batcher, true);
    for (int i = 0; i < x->n_src; i++) {
        double t = pt_batcher_park(x->src[i].batcher);
        if (i == 0 || t < x->t_first_park) x->t_first_park = t;
    }
    x->parked = true;
}

int pt_live_xform_precopy(pt_live_xform *x, pt_err *err) {
    int rc = PT_OK;
    x->t_precopy_start = pt_now();
    while (!rc && !pt_xform_precopy_done(x->xf)) {
        for (int i = 0; i < x->n_src && !rc; i++) {
            snapshot_job j = {x->xf, i, 0};
            rc = pt_batcher_at_boundary(x->src[i].batcher, snapshot_at_boundary, &j, err);
        }
        if (!rc) rc = pt_xform_copy(x->xf, err);
    }
    if (rc) return rc;
    park_sources(x);
    x->t_precopy_end = pt_now();
    return PT_OK;
}

/* ---- commit ---- */

/* Preempts the newest running requests of the sources until the targets
 * can run all of the rest (a merge can bring more requests than one
 * instance runs at once); they are recomputed when admitted again. */
static void fit_running(pt_live_xform *x) {
    uint32_t cap = 0, running = 0;
    for (int k = 0; k < x->n_dst; k++) cap += pt_batcher_capacity(x->dst[k].batcher);
    for (int i = 0; i < x->n_src; i++) running += pt_batcher_n_running(x->src[i].batcher);
    for (int i = x->n_src - 1; i >= 0 && running > cap; i--) {
        uint32_t mine = pt_batcher_n_running(x->src[i].batcher), drop = running - cap < mine ? running - cap : mine;
        pt_batcher_preempt(x->src[i].batcher, drop);
        running -= drop;
    }
}

static int gather_moves(pt_live_xform *x, pt_err *err) {
    size_t n = 0;
    for (int i = 0; i < x->n_src; i++) n += pt_batcher_n_running(x->src[i].batcher);
    x->moves = malloc((n + 1) * sizeof(*x->moves));
    int *seqs = malloc((n + 1) * sizeof(int));
    if (!x->moves || !seqs) {
        free(seqs);
        return pt_err_set(err, PT_ERR_NOMEM, "commit: out of memory");
    }
    x->n_moves = 0;
    for (int i = 0; i < x->n_src; i++) {
        uint32_t m = pt_batcher_running_seqs(x->src[i].batcher, seqs, (uint32_t)(n - x->n_moves));
        for (uint32_t k = 0; k < m; k++) x->moves[x->n_moves++] = (pt_xform_move){i, seqs[k], -1, -1};
    }
    free(seqs);
    return PT_OK;
}

static void route_seq(void *arg, int seq, int *dst, int *dst_seq) {
    pt_live_xform *x = arg;
    *dst = 0;
    *dst_seq = -1;
    for (size_t i = 0; i < x->n_moves; i++)
        if (x->moves[i].src == x->cur_src && x->moves[i].seq == seq) {
            *dst = x->moves[i].dst;
            *dst_seq = x->moves[i].dst_seq;
            return;
        }
}

/* Room for every request of the sources, before anything moves: the hand
 * over cannot fail half-way. */
static int reserve_where(pt_live_xform *x, pt_err *err) {
    size_t n = 0;
    for (int i = 0; i < x->n_src; i++) n += pt_batcher_n_requests(x->src[i].batcher);
    if (!(x->where = malloc((n + 1) * sizeof(*x->where))))
        return pt_err_set(err, PT_ERR_NOMEM, "commit: out of memory");
    x->cap_where = n;
    return PT_OK;
}

static void note_moved(void *arg, uint64_t id, int dst) {
    pt_live_xform *x = arg;
    if (x->n_where < x->cap_where) x->where[x->n_where++] = (placed){id, dst};
    x->st.requests_moved++;
}

static int cmp_placed(const void *a, const void *b) {
    uint64_t x = ((const placed *)a)->id, y = ((const placed *)b)->id;
    return (x > y) - (x < y);
}

int pt_live_xform_commit(pt_live_xform *x, pt_err *err) {
    if (!x->parked) return pt_err_set(err, PT_ERR_INVALID, "commit: the sources are not parked (run the pre-copy)");
    fit_running(x);
    int rc = gather_moves(x, err);
    if (!rc) rc = reserve_where(x, err);
    if (!rc) rc = pt_xform_commit(x->xf, x->moves, x->n_moves, err);
    if (rc) return rc;
    x->committed = true;
    pt_batcher *targets[PT_FABRIC_MAX_DEVICES];
    for (int k = 0; k < x->n_dst; k++) targets[k] = x->dst[k].batcher;
    for (int i = 0; i < x->n_src; i++) {
        x->cur_src = i;
        pt_batcher_hand_over(x->src[i].batcher, targets, x->n_dst, route_seq, note_moved, x);
    }
    if (x->n_where) qsort(x->where, x->n_where, sizeof(*x->where), cmp_placed);
    for (int k = 0; k < x->n_dst; k++) pt_batcher_unpark(x->dst[k].batcher);
    x->st.pause_s = pt_now() - x->t_first_park;
    return PT_OK;
}

pt_live_instance pt_live_xform_target(const pt_live_xform *x, int i) {
    return i >= 0 && i < x->n_dst && x->committed ? x->dst[i] : (pt_live_instance){NULL, NULL};
}

int pt_live_xform_where(const pt_live_xform *x, uint64_t id) {
    placed key = {id, 0};
    const placed *p = x->where ? bsearch(&key, x->where, x->n_where, sizeof(key), cmp_placed) : NULL;
    return p ? p->dst : -1;
}

void pt_live_xform_free(pt_live_xform *x, pt_live_xform_stats *final) {
    if (!x) return;
    if (x->committed) {
        /* The sources are empty: stop their threads before their engines go. */
        for (int i = 0; i < x->n_src; i++) pt_batcher_free(x->src[i].batcher);
        pt_xform_free(x->xf, &x->st.xf);
        for (int k = 0; k < x->n_dst; k++) pt_batcher_refresh_capacity(x->dst[k].batcher);
    } else {
        for (int k = 0; k < x->n_dst; k++) pt_batcher_free(x->dst[k].batcher);
        pt_xform_free(x->xf, &x->st.xf);
        for (int i = 0; i < x->n_src; i++) pt_batcher_unpark(x->src[i].batcher);
        if (x->parked) x->st.pause_s = pt_now() - x->t_first_park; /* they stood until now */
    }
    if (final) {
        *final = x->st;
        final->precopy_s = x->t_precopy_end ? x->t_precopy_end - x->t_precopy_start : 0;
    }
    free(x->where);
    free(x->moves);
    free(x);
}

void pt_live_xform_fail_at(pt_live_xform *x, pt_xform_fail where) { pt_xform_fail_at(x->xf, where); }
