/* Server metrics in the Prometheus text exposition format (version 0.0.4).
 * Updated and rendered on the server's loop thread only: no locks. */
#ifndef PROTEUS_METRICS_H
#define PROTEUS_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "proteus/batcher.h"

#define PT_HIST_MAX_BUCKETS 24

typedef struct {
    const char *name; /* e.g. "proteus_time_to_first_token_seconds" */
    const char *help;
    double bounds[PT_HIST_MAX_BUCKETS]; /* upper bounds, increasing; +Inf implied */
    size_t n_bounds;
    uint64_t counts[PT_HIST_MAX_BUCKETS + 1]; /* per bucket, not cumulative; last = above all bounds */
    double sum;
    uint64_t count;
} pt_histogram;

typedef enum { PT_REASON_STOP, PT_REASON_LENGTH, PT_REASON_ABORT, PT_REASON_ERROR, PT_REASON_COUNT } pt_finish_class;

typedef struct {
    pt_histogram ttft;    /* submit -> first token */
    pt_histogram itl;     /* between consecutive tokens of a request */
    pt_histogram e2e;     /* submit -> last event */
    pt_histogram queue;   /* submit -> admitted */
    uint64_t prompt_tokens;
    uint64_t generation_tokens;
    uint64_t finished[PT_REASON_COUNT];
    uint64_t rejected_busy; /* 429/503: queue full */
    uint64_t http_requests;
} pt_metrics;

void pt_metrics_init(pt_metrics *m);
void pt_histogram_observe(pt_histogram *h, double v);

/* Renders everything plus the batcher's gauges (running, waiting, KV pages
 * per device) as a malloc'd string. */
char *pt_metrics_render(const pt_metrics *m, const pt_batcher_stats *s, const char *model_name);

#endif
