/* The server's layout of instances over devices: how it is shown
 * (GET /v1/layout, the start-up log line) and where a request goes.
 *
 * Routing is a placeholder until the scheduler (DESIGN.md section 7) takes
 * placement over: a pure function of the instances' state, so that it is
 * tested from hand-made states and replaced in one place. */
#ifndef PROTEUS_SERVER_LAYOUT_H
#define PROTEUS_SERVER_LAYOUT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proteus/metrics.h"
#include "server/relayout.h"

/* What GET /v1/layout shows of layout changes (POST /v1/layout). */
typedef struct {
    const pt_relayout_progress *running; /* NULL when none runs */
    const pt_relayout_result *last;      /* NULL before the first one is over */
    uint64_t runs_ok, runs_failed;       /* runs over so far */
} pt_layout_xform_view;

/* {"devices": [...], "instances": [...], "allowed_tp": [...],
 * "transformation": {...}} (README.md, "Layouts" and "Changing the layout
 * of a running server"); no "transformation" when x is NULL. malloc'd. */
char *pt_layout_json(const pt_layout_report *r, const pt_layout_xform_view *x);

/* The body of POST /v1/layout, {"layout": [2, 1, 1]}: the degrees into
 * tp[0..*n) (room for PT_FABRIC_MAX_DEVICES). Fails with PT_ERR_INVALID and
 * a reason for the client: not JSON, not an object, an unknown key, no
 * "layout", not an array of integers, too long. Whether the layout fits
 * the server is pt_xform_plan_make's to say. */
int pt_layout_parse_request(const char *body, size_t len, int *tp, int *n, pt_err *err);

/* The 202 answer to an accepted POST: the run's id, from, to, plan and
 * operations, where to follow it. malloc'd. */
char *pt_layout_accepted_json(const pt_relayout_result *run);

/* "3 instances: [1] cpu0, [1] cpu1, [2] cpu2+cpu3". */
void pt_layout_describe(const pt_layout_report *r, char *buf, size_t n);

/* What routing knows of one instance. */
typedef struct {
    uint32_t max_ctx;        /* tokens one sequence may hold */
    uint64_t pages_total;    /* KV head pages over its ranks */
    uint64_t pages_free;     /* free after its last step (the batcher's snapshot) */
    uint64_t pages_promised; /* what the requests routed to it and not finished may need */
    uint32_t load;           /* requests running and waiting */
    bool refused;            /* it refused this request already (its queue is full) */
} pt_route_candidate;

/* The instance a request of `tokens` tokens (prompt + max_tokens) needing
 * `pages` KV head pages goes to, or -1 when none can take it: among those
 * whose context holds it (and that have not refused it), the one with the
 * most free pages, preferring those whose pool can hold it at all. Free
 * pages are min(pages_free, pages_total - pages_promised): the snapshot lags
 * behind requests routed a moment ago, the promise counts them at once.
 * Ties go to the lower load, then the lower index. */
int pt_route_pick(const pt_route_candidate *c, int n, uint64_t tokens, uint64_t pages);

/* KV head pages a sequence of `tokens` tokens holds: a page per page_size
 * tokens on each KV head. */
uint64_t pt_route_pages(uint64_t tokens, uint32_t page_size, uint32_t n_kv_heads);

#endif
