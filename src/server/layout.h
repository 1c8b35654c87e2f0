/* The server's layout of instances over devices and how it is shown
 * (GET /v1/layout, the start-up log line, the body of POST /v1/layout).
 * Where requests go is the scheduler's (server/placement.h). */
#ifndef PROTEUS_SERVER_LAYOUT_H
#define PROTEUS_SERVER_LAYOUT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proteus/metrics.h"
#include "scheduler/scheduler.h"
#include "server/relayout.h"

/* What GET /v1/layout shows of layout changes (POST /v1/layout). */
typedef struct {
    const pt_relayout_progress *running; /* NULL when none runs */
    const pt_relayout_result *last;      /* NULL before the first one is over */
    uint64_t runs_ok, runs_failed;       /* runs over so far */
} pt_layout_xform_view;

/* What GET /v1/layout shows of the scheduler. */
typedef struct {
    bool dynamic;                 /* the policy */
    const int *allowed_tp;        /* (n_allowed) degrees the policy may form */
    int n_allowed;
    double ttft_ms, tpot_ms;      /* SLOs; 0 = none */
    double hysteresis_s;
    const char *cost_source;      /* "calibrated at start-up" or the file it came from */
    size_t held;                  /* requests held now */
    const pt_sched_stats *stats;  /* decisions so far, the batchers' preemptions included */
    const char *last_xform;       /* the last transformation decision, or "" */
} pt_layout_sched_view;

/* {"devices": [...], "instances": [...], "allowed_tp": [...],
 * "scheduler": {...}, "transformation": {...}} (README.md, "Layouts",
 * "Changing the layout of a running server" and "Choosing a layout and
 * tuning the scheduler"); no "transformation" when x is NULL, no
 * "scheduler" when sv is NULL. malloc'd; NULL when out of memory. */
char *pt_layout_json(const pt_layout_report *r, const pt_layout_xform_view *x, const pt_layout_sched_view *sv);

/* The body of POST /v1/layout, {"layout": [2, 1, 1]}: the degrees into
 * tp[0..*n) (room for PT_FABRIC_MAX_DEVICES). Fails with PT_ERR_INVALID and
 * a reason for the client: not JSON, not an object, an unknown key, no
 * "layout", not an array of integers, too long; PT_ERR_NOMEM when out of
 * memory. Whether the layout fits
 * the server is pt_xform_plan_make's to say. */
int pt_layout_parse_request(const char *body, size_t len, int *tp, int *n, pt_err *err);

/* The 202 answer to an accepted POST: the run's id, from, to, plan and
 * operations, where to follow it. malloc'd; NULL when out of memory. */
char *pt_layout_accepted_json(const pt_relayout_result *run);

/* "3 instances: [1] cpu0, [1] cpu1, [2] cpu2+cpu3". */
void pt_layout_describe(const pt_layout_report *r, char *buf, size_t n);

#endif
