/* Server metrics in the Prometheus text exposition format (version 0.0.4).
 * Updated and rendered on the server's loop thread only: no locks. */
#ifndef PROTEUS_METRICS_H
#define PROTEUS_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "proteus/batcher.h"
#include "proteus/device.h"
#include "proteus/fabric.h"

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

/* Kinds of transformation operation, in pt_xform_kind's order (xform/plan.h):
 * merge, split, reshape. */
enum { PT_METRICS_XFORM_KINDS = 3 };

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
    /* Layout changes (POST /v1/layout), counted per operation. */
    uint64_t xforms[PT_METRICS_XFORM_KINDS][2]; /* by kind and result: [k][0] ok, [k][1] failed */
    pt_histogram xform_pause;   /* sources parked -> targets running */
    pt_histogram xform_precopy; /* pre-copy start -> sources parked */
    uint64_t xform_kv_bytes;     /* KV bytes copied between devices (pre-copy and pause) */
    uint64_t xform_weight_bytes; /* weight shard bytes built for targets */
    bool xform_in_progress;
    /* Prefix-cache tokens counted by instances a transformation replaced
     * (the live ones' counts are in pt_instance_report). */
    uint64_t prefix_queries_retired, prefix_hits_retired;
} pt_metrics;

/* What the server reports of its devices and instances (GET /v1/layout and
 * /metrics): a snapshot the loop thread takes from the devices' atomic
 * counters and each batcher's stats, so that both views agree. */
typedef struct {
    char name[16];                     /* "cpu0", "cuda1" */
    pt_device_kind kind;
    int threads;                       /* CPU worker threads */
    int ordinal;                       /* CUDA ordinal; -1 on the CPU */
    uint64_t budget_bytes;             /* 0 = no limit */
    uint64_t used[PT_MEM_CLASS_COUNT]; /* bytes held, by pt_mem_class */
    int instance, rank;                /* what it serves; -1 when no instance uses it */
    uint64_t weight_shard, weight_replicated; /* its rank's weights: own chunks, replicated tensors */
    bool kv_known;                     /* the batcher's stats cover this rank (they hold 8 ranks) */
    uint64_t kv_pages_total, kv_pages_free;
} pt_device_report;

typedef struct {
    int first, tp;                     /* devices [first, first + tp) */
    uint32_t running, waiting;
    uint64_t kv_pages_total, kv_pages_free; /* over its ranks */
    uint64_t requests_total;           /* requests (choices) routed to it */
    uint64_t preemptions;
    uint64_t preemptions_movable;      /* of them, of a request a smaller instance could serve */
    uint64_t prefix_queries, prefix_hits; /* prompt tokens looked up in its prefix cache, and found */
    uint64_t prefix_pages;             /* cached pages (one head page per KV head each) */
    /* Its communication (pt_engine_comm_get_stats), when comm_known: steps
     * that failed on a comm error, moves to a new comm world, the last error. */
    bool comm_known;
    uint64_t comm_failures, comm_renewals;
    char comm_last_error[256];
} pt_instance_report;

typedef struct {
    pt_device_report devices[PT_FABRIC_MAX_DEVICES];
    int n_devices;
    pt_instance_report instances[PT_FABRIC_MAX_DEVICES];
    int n_instances;
    int allowed_tp[16];
    int n_allowed;
} pt_layout_report;

void pt_metrics_init(pt_metrics *m);
void pt_histogram_observe(pt_histogram *h, double v);

/* Renders everything plus the gauges of the layout (running and waiting in
 * all and per instance, KV pages and memory per device, each instance's TP
 * degree and first device) and the transformations as a malloc'd string;
 * NULL when out of memory. */
char *pt_metrics_render(const pt_metrics *m, const pt_layout_report *r, const char *model_name);

#endif
