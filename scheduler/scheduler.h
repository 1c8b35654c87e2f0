/* The transformation-aware scheduler (DESIGN.md section 7): given the
 * devices, the current layout, each instance's running and queued requests
 * and free pages, and a cost model, it decides
 *   (a) where a new request goes (or that it waits for a merge, or that no
 *       layout can serve it),
 *   (b) which running request an instance preempts when it runs out of pages,
 *   (c) which transformation to start, if any.
 * Decisions are values (pt_sched_placement, pt_sched_xform) built from a
 * state value (pt_sched_state): no devices, threads, sockets or clocks; the
 * caller passes `now`. The same code drives `proteus serve` (src/server/)
 * and `proteus simulate` (src/sim/).
 *
 * Policies:
 *   static   the layout never changes; a request goes to the least-loaded
 *            instance that can hold it.
 *   dynamic  starts from the smallest degree (all TP1 where the model fits);
 *            merges the least-loaded aligned range when a request cannot fit
 *            or cannot meet its TTFT on any instance; routes long requests to
 *            merged instances and short ones to the smallest; splits an
 *            instance back when nothing running, queued or held needs its
 *            degree for hysteresis_s; never starts a transformation whose
 *            pause breaks the SLO of more requests than it helps.
 *
 * Every decision carries a reason (pt_sched_reason) and a line of text, and
 * is counted in pt_sched_stats (the server exports them in /metrics). */
#ifndef PROTEUS_SCHEDULER_H
#define PROTEUS_SCHEDULER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proteus/util.h"
#include "scheduler/cost_model.h"

#define PT_SCHED_MAX_DEVICES 64

typedef enum { PT_SCHED_STATIC = 0, PT_SCHED_DYNAMIC } pt_sched_policy;

typedef struct {
    double ttft_s, tpot_s;   /* <= 0 = not set */
} pt_sched_slo;

typedef struct {
    pt_sched_policy policy;
    pt_sched_slo slo;
    int allowed_tp[8];       /* degrees the policy may form, ascending; 1 need not be among them */
    int n_allowed;
    double hysteresis_s;     /* a merged instance splits only after nothing needed it for this long */
    uint32_t prefill_chunk;  /* tokens per prefill step the instances use (for TTFT estimates); 0 = whole prompt */
} pt_sched_opts;

/* One request as the scheduler sees it. */
typedef struct {
    uint64_t id;
    uint32_t prompt_len;     /* tokens */
    uint32_t max_tokens;     /* tokens it may generate */
    uint32_t prefilled;      /* prompt tokens computed so far */
    uint32_t generated;      /* tokens generated so far */
    double arrival;          /* seconds, the caller's clock */
    double first_token;      /* when its first token came; < 0 before */
    bool held_before;        /* offered again after a hold: holding it again is not counted */
} pt_sched_req;

/* One instance: a contiguous, aligned range of devices. */
typedef struct {
    int first_device, tp;
    uint32_t max_seqs;       /* sequences it runs at once */
    uint64_t pages_total;    /* KV head pages over its ranks */
    uint64_t pages_free;     /* free now (already net of what its running requests hold) */
    const pt_sched_req *running; /* (n_running) in a step now, arrival order */
    size_t n_running;
    const pt_sched_req *queued;  /* (n_queued) placed here, not started, arrival order */
    size_t n_queued;
    bool transforming;       /* a source or target of the transformation in flight */
    uint32_t max_queued;     /* queued requests it accepts; 0 = no limit */
    uint32_t cached;         /* pt_sched_place: prompt tokens of the request being placed that its
                                prefix cache holds (it would not compute them) */
} pt_sched_instance;

typedef struct {
    double now;
    int n_devices;
    const pt_sched_instance *inst; /* (n_inst) in device order, tiling the devices */
    int n_inst;
    const pt_sched_req *held;      /* (n_held) waiting for a layout that can serve them, arrival order */
    size_t n_held;
    bool xform_in_flight;
} pt_sched_state;

typedef enum {
    /* placement */
    PT_SCHED_R_LEAST_LOADED = 0, /* the instance of the smallest fitting degree with the lowest estimated TTFT */
    PT_SCHED_R_LONG_TO_MERGED,   /* a request that needs degree > 1 to a merged instance */
    PT_SCHED_R_OVERFLOW,         /* a short request to a bigger instance: the small ones would break its TTFT */
    PT_SCHED_R_HOLD_FOR_MERGE,   /* no instance can hold it or meet its TTFT; a merge can */
    PT_SCHED_R_REJECT_TOO_LONG,  /* prompt + max_tokens above max_ctx, or above what the largest degree holds */
    PT_SCHED_R_REJECT_BUSY,      /* the instances that hold it have full queues (the server answers 429) */
    /* transformations */
    PT_SCHED_R_MERGE_CANNOT_FIT, /* a held request fits no instance */
    PT_SCHED_R_MERGE_SLO,        /* a held or queued request would break its TTFT on every instance */
    PT_SCHED_R_SPLIT_IDLE,       /* nothing needed the degree for hysteresis_s */
    PT_SCHED_R_NO_XFORM_PAUSE,   /* a merge was wanted but its pause breaks more SLOs than it helps */
    PT_SCHED_R_NO_XFORM_BUSY,    /* wanted, but a transformation is in flight */
    /* preemption */
    PT_SCHED_R_PREEMPT_NEWEST,   /* the latest arrival (vLLM's recompute order) */
    PT_SCHED_R_PREEMPT_MOVABLE,  /* the latest arrival among those a smaller instance could serve */
    PT_SCHED_N_REASONS
} pt_sched_reason;

/* "least_loaded", "merge_cannot_fit", ... (metrics labels). */
const char *pt_sched_reason_name(pt_sched_reason r);
/* "place", "hold", "reject", "merge", "split", "no_transformation", "preempt". */
const char *pt_sched_reason_decision(pt_sched_reason r);

typedef enum { PT_SCHED_PLACE = 0, PT_SCHED_HOLD, PT_SCHED_REJECT } pt_sched_place_kind;

typedef struct {
    pt_sched_place_kind kind;
    int instance;            /* PLACE: index into state->inst */
    int need_tp;             /* the smallest degree that serves it (0 when none) */
    pt_sched_reason reason;
    char text[256];          /* one log line: what and why, with the numbers */
} pt_sched_placement;

typedef enum { PT_SCHED_XFORM_NONE = 0, PT_SCHED_XFORM_MERGE, PT_SCHED_XFORM_SPLIT } pt_sched_xform_kind;

typedef struct {
    pt_sched_xform_kind kind;      /* NONE: nothing to start (reason says why when one was considered) */
    int first_device, n_devices;   /* the range transformed */
    int target_tp[PT_SCHED_MAX_DEVICES]; /* its new layout, in device order */
    int n_targets;
    pt_xform_cost cost;            /* the cost model's estimate */
    uint32_t helped, hurt;         /* requests whose SLO it saves / its pause breaks */
    bool considered;               /* NONE after weighing one (reason set) */
    pt_sched_reason reason;
    char text[256];
} pt_sched_xform;

/* Counters of every decision made, by reason. */
typedef struct {
    uint64_t by_reason[PT_SCHED_N_REASONS];
} pt_sched_stats;

typedef struct pt_scheduler pt_scheduler;

/* Copies opts and the cost model. Fails naming the option that is wrong
 * (a degree the cost model does not model, a negative SLO). */
int pt_sched_create(pt_scheduler **out, const pt_sched_opts *opts, const pt_cost_model *m, pt_err *err);
void pt_sched_free(pt_scheduler *s);
const pt_sched_opts *pt_sched_get_opts(const pt_scheduler *s);
const pt_cost_model *pt_sched_get_cost(const pt_scheduler *s);

/* The layout a policy starts from on n_devices devices: all of the
 * smallest allowed degree whose weights fit (dynamic); for static, the
 * caller's configured layout is used and this is not called. Returns the
 * number of instances written to tp_out (room for n_devices), 0 when no
 * allowed degree fits the model. */
int pt_sched_initial_layout(const pt_scheduler *s, int n_devices, int *tp_out);

/* The smallest allowed degree that serves r alone: its tokens (prompt +
 * max_tokens) fit the pages of an instance of that degree, and (when a TTFT
 * SLO is set) its prefill alone meets it; when no degree meets the TTFT, the
 * largest that fits. 0 when none fits or it is above max_ctx. */
int pt_sched_need_tp(const pt_scheduler *s, const pt_sched_req *r);

/* (a) Where request r (not yet on any instance, and not in st->held: a held
 * request offered again is taken out of the list first) goes. Counted in
 * stats, except a repeated hold (r->held_before). */
void pt_sched_place(pt_scheduler *s, const pt_sched_state *st, const pt_sched_req *r, pt_sched_placement *out);

/* (b) Which of instance i's running requests to preempt when it runs out of
 * pages: an index into st->inst[i].running, or -1 when it runs none. */
int pt_sched_victim(pt_scheduler *s, const pt_sched_state *st, int i, pt_sched_reason *reason);

/* (c) Which transformation to start now, if any. Called at step boundaries
 * and arrivals; it remembers when each degree was last needed (hysteresis),
 * so it is not pure in s, only in st. Counted in stats when it decides or
 * declines (not when nothing was wanted). */
void pt_sched_plan(pt_scheduler *s, const pt_sched_state *st, pt_sched_xform *out);

/* The caller tells when a transformation it started is over (committed or
 * rolled back): the hysteresis clock restarts from it. */
void pt_sched_xform_done(pt_scheduler *s, double now, bool committed);

void pt_sched_get_stats(const pt_scheduler *s, pt_sched_stats *out);

#endif
