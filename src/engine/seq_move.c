/* Detach and attach of a running sequence (engine.h): the page moves a TP
 * transformation is made of. A head page is, in every layer, one contiguous
 * K+V block of its slot and one block of key bounds, so moving a page is
 * 2 * n_layers whole-buffer transfers between two devices of the fabric. */
#include <stdlib.h>
#include <string.h>

#include "device/fabric_internal.h"
#include "engine/engine_internal.h"

struct pt_seq_state {
    pt_engine *src;     /* the instance whose pools own the pages until attach */
    uint32_t len;       /* tokens in the KV cache */
    uint32_t n_pages;   /* pages per KV head */
    uint32_t n_groups;
    uint32_t *slots;    /* (n_groups, n_pages) slot ids in the pool of the source rank holding the head */
};

uint32_t pt_seq_state_len(const pt_seq_state *st) { return st->len; }

int pt_engine_seq_detach(pt_engine *e, int seq, pt_seq_state **out, pt_err *err) {
    *out = NULL;
    if (seq < 0 || (uint32_t)seq >= e->in.opts.max_seqs || !e->in.seqs[seq].used)
        return pt_err_set(err, PT_ERR_INVALID, "detach: no such sequence %d", seq);
    pt_seq *s = &e->in.seqs[seq];
    pt_seq_state *st = calloc(1, sizeof(*st));
    uint32_t *slots = malloc((size_t)e->in.w.n_groups * (s->n_pages ? s->n_pages : 1) * sizeof(uint32_t));
    if (!st || !slots) {
        free(st);
        free(slots);
        return pt_err_set(err, PT_ERR_NOMEM, "detach: out of memory");
    }
    *st = (pt_seq_state){e, s->len, s->n_pages, e->in.w.n_groups, slots};
    for (uint32_t g = 0; g < e->in.w.n_groups; g++)
        memcpy(slots + (size_t)g * s->n_pages, s->pages[g], s->n_pages * sizeof(uint32_t));
    /* The slot is free again; its pages now belong to the value (the
     * prefix cache keeps its own references to the ones it holds). */
    if (e->prefix) pt_prefix_cache_detach(e->prefix, seq);
    s->used = false;
    s->len = s->n_pages = s->dirty_from = 0;
    *out = st;
    return PT_OK;
}

void pt_seq_state_release(pt_seq_state *st) {
    if (!st) return;
    for (uint32_t g = 0; g < st->n_groups; g++) {
        pt_kv_pool *kv = st->src->in.ranks[pt_rank_of_group(&st->src->in, g)].kv;
        for (uint32_t p = 0; p < st->n_pages; p++) pt_kv_page_release(kv, st->slots[(size_t)g * st->n_pages + p]);
    }
    free(st->slots);
    free(st);
}

static bool same_geometry(const pt_engine *a, const pt_engine *b) {
    const pt_kv_pool *ka = a->in.ranks[0].kv, *kb = b->in.ranks[0].kv;
    return a->fabric == b->fabric && a->in.w.n_groups == b->in.w.n_groups && ka->n_layers == kb->n_layers &&
           ka->head_dim == kb->head_dim && ka->page_size == kb->page_size && ka->dtype == kb->dtype &&
           a->backend->name == b->backend->name;
}

int pt_engine_seq_attach(pt_engine *e, pt_seq_state *st, int *seq_out, pt_err *err) {
    *seq_out = -1;
    pt_engine *src = st->src;
    if (!same_geometry(src, e))
        return pt_err_set(err, PT_ERR_INVALID,
                          "attach: the instances differ in fabric, model, KV geometry or backend");
    if (strcmp(e->backend->name, "cpu") != 0)
        return pt_err_set(err, PT_ERR_UNSUPPORTED, "attach: moving pages of the %s backend is not supported yet",
                          e->backend->name);
    if (st->len > e->in.opts.max_ctx || st->n_pages > e->in.pages_per_seq)
        return pt_err_set(err, PT_ERR_INVALID, "attach: %u tokens exceed the instance's context of %u", st->len,
                          e->in.opts.max_ctx);
    int seq = pt_engine_seq_new(e);
    if (seq < 0) return pt_err_set(err, PT_ERR_NOMEM, "attach: no free sequence slot");
    pt_seq *s = &e->in.seqs[seq];
    int rc;
    /* Pages first, all or nothing: `got` pages allocated, head by head. */
    size_t got = 0, want = (size_t)st->n_groups * st->n_pages;
    for (uint32_t h = 0; h < st->n_groups; h++)
        for (uint32_t q = 0; q < st->n_pages; q++, got++) {
            int64_t slot = pt_kv_page_alloc(e->in.ranks[pt_rank_of_group(&e->in, h)].kv);
            if (slot < 0) goto undo;
            s->pages[h][q] = (uint32_t)slot;
        }
    size_t per_page = 2 * (size_t)src->in.ranks[0].kv->n_layers;
    pt_comm_transfer *t = malloc((want * per_page + 1) * sizeof(*t));
    if (!t) goto undo;
    size_t n = 0;
    for (uint32_t h = 0; h < st->n_groups; h++) {
        int rs = pt_rank_of_group(&src->in, h), rd = pt_rank_of_group(&e->in, h);
        for (uint32_t q = 0; q < st->n_pages; q++)
            n += pt_page_transfers(t + n, src->in.ranks[rs].kv, src->first + rs, st->slots[(size_t)h * st->n_pages + q],
                                e->in.ranks[rd].kv, e->first + rd, s->pages[h][q]);
    }
    /* The whole world's group, held for the copy (a new world when the last one was aborted). */
    pt_comm_group *g;
    rc = pt_fabric_group_get(e->fabric, 0, pt_fabric_size(e->fabric), &g, err);
    if (!rc) rc = pt_comm_send_recv(g, t, n, NULL, err);
    pt_fabric_group_put(e->fabric, g);
    free(t);
    if (rc) goto undo_rc;
    s->len = st->len;
    s->n_pages = st->n_pages;
    s->dirty_from = 0;
    pt_seq_state_release(st); /* the source pages are free again */
    *seq_out = seq;
    return PT_OK;

undo:
    rc = pt_err_set(err, PT_ERR_NOMEM, "attach: out of KV pages (or memory) for %u pages of %u heads", st->n_pages,
                    st->n_groups);
undo_rc:
    for (size_t k = 0; k < got; k++) {
        uint32_t h = (uint32_t)(k / st->n_pages), q = (uint32_t)(k % st->n_pages);
        pt_kv_page_release(e->in.ranks[pt_rank_of_group(&e->in, h)].kv, s->pages[h][q]);
    }
    s->used = false;
    return rc;
}
