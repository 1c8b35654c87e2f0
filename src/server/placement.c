/* The scheduler's state from the server's bookkeeping, and what the server
 * does with its decisions (placement.h). */
#include "server/placement.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

pt_sched_req pt_place_sched_req(const pt_place_req *r) {
    return (pt_sched_req){.id = r->id, .prompt_len = r->prompt_len, .max_tokens = r->max_tokens,
                          .prefilled = r->first_token >= 0 ? r->prompt_len : 0, .generated = r->generated,
                          .arrival = r->arrival, .first_token = r->first_token};
}

static int by_arrival(const void *a, const void *b) {
    const pt_place_req *x = *(const pt_place_req *const *)a, *y = *(const pt_place_req *const *)b;
    if (x->arrival != y->arrival) return x->arrival < y->arrival ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

/* Pages as a whole sequence can use them (placement.h). */
static void effective_pages(const pt_place_inst *in, uint32_t page_size, uint32_t n_kv_heads, uint64_t *total,
                            uint64_t *free_pages) {
    *total = in->pages_total;
    *free_pages = in->pages_free < in->pages_total ? in->pages_free : in->pages_total;
    if (in->seq_capacity >= in->max_ctx || page_size == 0 || in->pages_total == 0) return;
    uint64_t bound = (uint64_t)in->seq_capacity / page_size * n_kv_heads;
    if (bound >= in->pages_total) return;
    *free_pages = (uint64_t)((double)*free_pages * (double)bound / (double)in->pages_total);
    *total = bound;
}

int pt_place_build(pt_place_state *ps, double now, int n_devices, const pt_place_inst *inst, int n_inst,
                   const pt_place_req *reqs, size_t n_reqs, uint32_t page_size, uint32_t n_kv_heads,
                   bool xform_in_flight, uint64_t offered) {
    if (n_inst > PT_SCHED_MAX_DEVICES) n_inst = PT_SCHED_MAX_DEVICES;
    if (n_reqs > ps->cap) {
        size_t cap = n_reqs > 2 * ps->cap ? n_reqs : 2 * ps->cap;
        /* order first: ps->st points into reqs, which may move only when both grew */
        const pt_place_req **order = realloc(ps->order, cap * sizeof(*ps->order));
        if (!order) return PT_ERR_NOMEM;
        ps->order = order;
        pt_sched_req *grown = realloc(ps->reqs, cap * sizeof(*ps->reqs));
        if (!grown) return PT_ERR_NOMEM; /* order is larger than cap says: harmless */
        ps->reqs = grown;
        ps->cap = cap;
    }
    const pt_place_req **order = ps->order;
    for (size_t k = 0; k < n_reqs; k++) order[k] = &reqs[k];
    if (n_reqs) qsort(order, n_reqs, sizeof(*order), by_arrival); /* order is NULL before the first */

    size_t used = 0;
    for (int i = 0; i < n_inst; i++) {
        const pt_place_inst *in = &inst[i];
        pt_sched_instance *si = &ps->inst[i];
        *si = (pt_sched_instance){.first_device = in->first, .tp = in->tp, .max_seqs = in->max_seqs,
                                  .transforming = in->transforming, .max_queued = in->max_waiting,
                                  .cached = in->cached};
        effective_pages(in, page_size, n_kv_heads, &si->pages_total, &si->pages_free);
        /* Running: those that produced a token, then the oldest others up to
         * the batcher's count; the rest are queued. Both in arrival order. */
        size_t started = 0;
        for (size_t k = 0; k < n_reqs; k++) started += order[k]->inst == i && order[k]->first_token >= 0;
        size_t quota = in->running > started ? in->running - started : 0, q = quota;
        size_t first = used;
        for (size_t k = 0; k < n_reqs; k++) {
            const pt_place_req *r = order[k];
            if (r->inst != i) continue;
            bool running = r->first_token >= 0;
            if (!running && q > 0) running = true, q--;
            if (running) ps->reqs[used++] = pt_place_sched_req(r);
        }
        si->running = &ps->reqs[first];
        si->n_running = used - first;
        first = used;
        q = quota;
        for (size_t k = 0; k < n_reqs; k++) {
            const pt_place_req *r = order[k];
            if (r->inst != i || r->first_token >= 0) continue;
            if (q > 0) {
                q--;
                continue;
            }
            ps->reqs[used++] = pt_place_sched_req(r);
        }
        si->queued = &ps->reqs[first];
        si->n_queued = used - first;
    }
    size_t held_start = used;
    for (size_t k = 0; k < n_reqs; k++) {
        const pt_place_req *r = order[k];
        bool placed = r->inst >= 0 && r->inst < n_inst;
        if (placed || r->id == offered) continue;
        ps->reqs[used++] = pt_place_sched_req(r);
    }
    ps->st = (pt_sched_state){.now = now, .n_devices = n_devices, .inst = ps->inst, .n_inst = n_inst,
                              .held = &ps->reqs[held_start], .n_held = used - held_start,
                              .xform_in_flight = xform_in_flight};
    return PT_OK;
}

void pt_place_free(pt_place_state *ps) {
    free(ps->reqs);
    free(ps->order);
    ps->reqs = NULL;
    ps->order = NULL;
    ps->cap = 0;
}

int pt_place_target_layout(const int *cur, int n_cur, const pt_sched_xform *x, int *out, int *n_out, pt_err *err) {
    *n_out = 0;
    int lo = x->first_device, hi = x->first_device + x->n_devices;
    int sum = 0;
    for (int k = 0; k < x->n_targets; k++) sum += x->target_tp[k];
    if (x->n_devices < 1 || sum != x->n_devices)
        return pt_err_set(err, PT_ERR_INVALID, "the targets cover %d devices, the range %d", sum, x->n_devices);
    int dev = 0, n = 0;
    bool placed = false;
    for (int i = 0; i < n_cur; i++) {
        int a = dev, b = dev + cur[i];
        dev = b;
        if (b <= lo || a >= hi) {
            out[n++] = cur[i];
            continue;
        }
        if (a < lo || b > hi)
            return pt_err_set(err, PT_ERR_INVALID, "devices %d-%d cut the instance on devices %d-%d", lo, hi - 1, a,
                              b - 1);
        if (!placed) {
            for (int k = 0; k < x->n_targets; k++) out[n++] = x->target_tp[k];
            placed = true;
        }
    }
    if (!placed || hi > dev)
        return pt_err_set(err, PT_ERR_INVALID, "devices %d-%d are not in the layout of %d devices", lo, hi - 1, dev);
    *n_out = n;
    return PT_OK;
}

/* ---- metrics ---- */

char *pt_place_metrics(const pt_sched_stats *st, size_t n_held, bool dynamic) {
    pt_text t = {0};
    pt_text_printf(&t, "# HELP proteus_scheduler_decisions_total Scheduler decisions, by decision and reason.\n"
                   "# TYPE proteus_scheduler_decisions_total counter\n");
    for (int r = 0; r < PT_SCHED_N_REASONS; r++) {
        uint64_t v = st->by_reason[r];
        pt_text_printf(&t, "proteus_scheduler_decisions_total{decision=\"%s\",reason=\"%s\"} %llu\n",
                       pt_sched_reason_decision((pt_sched_reason)r), pt_sched_reason_name((pt_sched_reason)r),
                       (unsigned long long)v);
    }
    pt_text_printf(&t, "# HELP proteus_scheduler_held_requests Requests held for a layout that can serve them.\n"
                   "# TYPE proteus_scheduler_held_requests gauge\nproteus_scheduler_held_requests %zu\n", n_held);
    pt_text_printf(&t, "# HELP proteus_scheduler_policy The scheduler's policy (1 for the one in force).\n"
                   "# TYPE proteus_scheduler_policy gauge\n"
                   "proteus_scheduler_policy{policy=\"static\"} %d\nproteus_scheduler_policy{policy=\"dynamic\"} %d\n",
                   !dynamic, dynamic);
    return pt_text_take(&t);
}
