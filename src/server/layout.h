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

/* {"devices": [...], "instances": [...], "allowed_tp": [...]} (README.md,
 * "Layouts"); malloc'd. */
char *pt_layout_json(const pt_layout_report *r);

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
