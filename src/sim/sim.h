/* `proteus simulate`: a discrete-event simulation of a cluster of devices
 * serving a request trace, driven by the scheduler the live server uses
 * (scheduler/scheduler.h) and timed by its cost model
 * (scheduler/cost_model.h).
 *
 * Each instance runs continuous batching as vLLM does: every step computes
 * one token of each running sequence and prefill chunks (FCFS, running
 * sequences first, then the queue) up to a token budget; KV head pages are
 * allocated as tokens are computed; an instance that cannot grow a running
 * sequence preempts the victim the scheduler names (recompute: its pages are
 * freed, it goes to the front of the queue and later recomputes its prompt
 * and the tokens it generated). A step's time is pt_cost_step of its shape.
 * A request's first token comes at the end of the step that completes its
 * prefill, then one per step; it ends after its trace output length.
 *
 * The output is one pt_bench_record per request, the records `proteus
 * bench` writes, so that the report is the same code and the same metrics.
 *
 * Times are seconds; the first measured request is scheduled at 0. */
#ifndef PROTEUS_SIM_H
#define PROTEUS_SIM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bench/replay.h"
#include "proteus/bench.h"
#include "proteus/util.h"
#include "scheduler/cost_model.h"
#include "scheduler/scheduler.h"

typedef struct {
    pt_sched_opts sched;        /* policy, SLO, allowed degrees, hysteresis (prefill_chunk is overwritten
                                   with max_batched_tokens) */
    int layout[PT_SCHED_MAX_DEVICES]; /* static: the degrees in device order; n_layout 0 = the default */
    int n_layout;
    uint32_t max_seqs;          /* running sequences per instance (vLLM max_num_seqs); 0 = 256 */
    uint32_t max_batched_tokens; /* tokens per step (vLLM max_num_batched_tokens); 0 = 8192 */
    size_t max_concurrency;     /* client side: measured requests in flight; 0 = unlimited */
    double plan_interval_s;     /* least simulated time between two pt_sched_plan calls; 0 = 0.02 */
    double tick_s;              /* pt_sched_plan at least this often while a split may be due; 0 = 1 */
    double drain_s;             /* after the last request, time left for the layout to settle; < 0 = none,
                                   0 = hysteresis + 60 s */
    bool token_times;           /* fill each record's token_times (ITL); else only t_first/t_end */
    bool verbose;               /* every transformation and rejection on stderr */
} pt_sim_opts;

void pt_sim_opts_default(pt_sim_opts *o);

/* One layout of instances over the devices, from time t on. */
typedef struct {
    double t;
    int n_inst;
    int tp[PT_SCHED_MAX_DEVICES];          /* in device order */
    bool transforming[PT_SCHED_MAX_DEVICES];
} pt_sim_layout;

typedef struct {
    double t;
    uint32_t waiting;           /* held + queued on every instance */
    uint32_t running;
} pt_sim_queue_sample;

typedef struct {
    pt_bench_record *recs;      /* (n) one per request of the input, in input order */
    size_t n;
    /* transformations */
    uint64_t n_merge, n_split, n_other; /* committed, by kind */
    uint64_t n_invalid_plans;   /* plans the simulator could not carry out (see stderr) */
    double pause_sum_s, pause_max_s; /* each transformation's pause: first source stopped to commit */
    uint64_t bytes_moved;
    /* requests */
    uint64_t preemptions, rejected;
    uint64_t unservable;        /* failed: more pages than its instance holds */
    uint64_t unserved;          /* failed: still held (or queued) when the run ended */
    uint64_t xform_returned;    /* requests a commit gave back to the scheduler: no target held them whole */
    uint64_t held_requests;     /* requests the scheduler held at least once */
    double held_s;              /* their time held, summed */
    pt_sched_stats stats;
    /* time lines (device order), changes only */
    pt_sim_layout *layouts;
    size_t n_layouts;
    pt_sim_queue_sample *queue; /* at most one sample per event time */
    size_t n_queue;
    /* left at the end (a correct run leaves nothing) */
    uint64_t end_pages_used;    /* KV pages still allocated on every instance */
    uint64_t end_requests_left; /* running, queued or held */
    /* the run itself */
    double t_end;               /* simulated time of the last event */
    uint64_t steps, events, sched_calls;
    double wall_s;
} pt_sim_result;

void pt_sim_result_free(pt_sim_result *r);

/* The default static layout: every device in instances of the smallest
 * allowed degree whose weights fit and that divides the devices. Returns
 * the number of instances, 0 when none fits. */
int pt_sim_default_layout(const pt_cost_model *m, const pt_sched_opts *so, int n_devices, int *tp_out);

/* Checks a layout: degrees allowed and modelled, whose weights fit, each
 * aligned to its degree, covering exactly n_devices. */
int pt_sim_check_layout(const pt_cost_model *m, const pt_sched_opts *so, int n_devices, const int *tp, int n, pt_err *err);

/* Every static layout the devices allow: aligned partitions into allowed
 * degrees whose weights fit, one per multiset of degrees (largest first).
 * *out is malloc'd: n_out layouts of n_devices ints each (0-terminated when
 * shorter). */
int pt_sim_static_layouts(const pt_cost_model *m, const pt_sched_opts *so, int n_devices, int **out, size_t *n_out);

/* Runs the simulation of reqs[0..n) (a replay plan's requests: warmup ones
 * first, run one after another before the measured schedule starts). */
int pt_sim_run(pt_sim_result *res, const pt_sim_opts *o, const pt_cost_model *m, int n_devices,
               const pt_replay_req *reqs, size_t n, pt_err *err);

/* SVG timeline: layout over the devices, waiting requests, output tokens/s. */
int pt_sim_write_svg(const char *path, const pt_sim_result *res, int n_devices, const char *title, pt_err *err);

#endif
