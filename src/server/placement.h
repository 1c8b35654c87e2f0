/* What the server tells the scheduler, and what it does with the answers
 * (DESIGN.md section 7; scheduler/scheduler.h): pure functions, tested from
 * hand-made bookkeeping (tests/unit/test_serve_sched.c).
 *
 * The server keeps, for every request (every choice of a call) it placed on
 * an instance or holds, its prompt length, max_tokens, arrival, first token
 * and tokens so far (pt_place_req), and reads each instance's batcher
 * snapshot (pt_place_inst). pt_place_build turns them into the scheduler's
 * state value; pt_place_target_layout turns a merge or split the scheduler
 * chose into the layout POST /v1/layout would ask for. */
#ifndef PROTEUS_SERVER_PLACEMENT_H
#define PROTEUS_SERVER_PLACEMENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proteus/util.h"
#include "scheduler/scheduler.h"

/* One request (one choice) as the server tracks it. */
typedef struct {
    uint64_t id;          /* the scheduler's id: the server numbers choices in arrival order */
    int inst;             /* the instance it was placed on (index in device order); -1 = held */
    uint32_t prompt_len, max_tokens;
    uint32_t generated;   /* tokens it has produced */
    double arrival;       /* pt_now() when the call arrived */
    double first_token;   /* pt_now() of its first token; < 0 before */
} pt_place_req;

/* One instance as its batcher's last snapshot shows it. */
typedef struct {
    int first, tp;
    uint32_t max_seqs;      /* sequences it runs at once */
    uint64_t pages_total;   /* KV head pages over its ranks */
    uint64_t pages_free;
    uint32_t seq_capacity;  /* the most tokens one sequence can hold (pt_batcher_max_ctx) */
    uint32_t max_ctx;       /* the context limit (the model's or model.max_model_len) */
    uint32_t running;       /* sequences in its running set */
    uint32_t max_waiting;   /* queued requests its batcher accepts (0 = no limit) */
    bool transforming;      /* a source of the layout change in flight */
    uint32_t cached;        /* prompt tokens of the request being placed in its prefix cache */
} pt_place_inst;

/* The scheduler's state and the storage it points into. */
typedef struct {
    pt_sched_state st;
    pt_sched_instance inst[PT_SCHED_MAX_DEVICES];
    pt_sched_req *reqs;     /* (cap) every instance's running and queued, then the held */
    const pt_place_req **order; /* (cap) the requests in arrival order, while building */
    size_t cap;
} pt_place_state;

/* Builds ps->st from the server's bookkeeping, now = the caller's clock:
 *  - each instance's requests in arrival order (id order on ties): those
 *    that produced a token are running (prompt prefilled); then the oldest
 *    others until the batcher's running count is reached (prefill 0: the
 *    server does not see the chunks); the rest are queued;
 *  - held requests (inst -1) in st.held, except the one whose id is
 *    `offered` (a held request being placed again is not also held);
 *  - pages as the scheduler counts them, a page per page_size tokens on
 *    every KV head: when the pools hold less than one sequence of the full
 *    context, the rank with the fewest pages per head it holds bounds the
 *    instance (SmolLM2's 3 heads at TP2 are 1 + 2: its pages sum to twice a
 *    TP1 instance's, but a sequence fits in 1.5 times), so pages_total is
 *    what seq_capacity tokens take and pages_free is scaled alike.
 * A request whose instance index is out of range counts as held.
 * PT_ERR_NOMEM when out of memory (the storage grows with the requests). */
int pt_place_build(pt_place_state *ps, double now, int n_devices, const pt_place_inst *inst, int n_inst,
                   const pt_place_req *reqs, size_t n_reqs, uint32_t page_size, uint32_t n_kv_heads,
                   bool xform_in_flight, uint64_t offered);
void pt_place_free(pt_place_state *ps);

/* The scheduler's view of one request. */
pt_sched_req pt_place_sched_req(const pt_place_req *r);

/* The layout after the scheduler's merge or split x of the current layout
 * (each instance's degree, in device order): the instances on devices
 * [x->first_device, x->first_device + x->n_devices) replaced by
 * x->target_tp. PT_ERR_INVALID when the range does not cover whole
 * instances or the targets do not cover the range. */
int pt_place_target_layout(const int *cur, int n_cur, const pt_sched_xform *x, int *out, int *n_out, pt_err *err);

/* /metrics lines of the scheduler (README "Configuration"):
 * proteus_scheduler_decisions_total{decision,reason} for every reason,
 * proteus_scheduler_held_requests and proteus_scheduler_policy{policy}.
 * malloc'd; NULL when out of memory. */
char *pt_place_metrics(const pt_sched_stats *st, size_t n_held, bool dynamic);

#endif
