/* A layout change of the running server (POST /v1/layout): the operations
 * of a plan (xform/plan.h) driven one after the other over the server's
 * instances by the live protocol (xform/live.h), each through the stages
 * below, logged on every transition:
 *
 *   BUILD    worker thread: pt_live_xform_start, the targets built beside
 *            the sources (which keep serving);
 *   PRECOPY  worker thread: pt_live_xform_precopy, full KV pages copied
 *            while the sources decode; it ends with them parked;
 *   COMMIT   loop thread (it owns the instances and routing, so no submit
 *            or cancel races with it): pt_live_xform_commit, then the host
 *            puts the targets in the sources' place and points every open
 *            request at the target that now holds it;
 *   FINISH   worker thread: pt_live_xform_free -- the sources freed after a
 *            commit, else the rollback (targets freed, sources resumed).
 *
 * A failure at any stage rolls that operation back and ends the run there:
 * the operations before it stay done (each left a valid layout), the ones
 * after it are not tried. A shutdown makes the run roll back at the next
 * stage boundary. The worker never touches the server's instances; the
 * loop thread hands it the sources of each operation. */
#ifndef PROTEUS_SERVER_RELAYOUT_H
#define PROTEUS_SERVER_RELAYOUT_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "proteus/batcher.h"
#include "xform/live.h"
#include "xform/plan.h"

typedef enum {
    PT_RELAYOUT_IDLE,
    PT_RELAYOUT_BUILD,
    PT_RELAYOUT_PRECOPY,
    PT_RELAYOUT_COMMIT,
    PT_RELAYOUT_FINISH,
    PT_RELAYOUT_DONE, /* the worker is over; the loop collects the result */
} pt_relayout_stage;

const char *pt_relayout_stage_name(pt_relayout_stage s); /* "idle", "build", ... */

/* One operation's outcome. */
typedef struct {
    pt_xform_kind kind;
    char what[192];              /* pt_xform_op_describe */
    bool attempted, ok;
    pt_relayout_stage failed_in; /* where it failed (ok == false) */
    char reason[512];
    pt_live_xform_stats st;      /* as pt_live_xform_free left them */
    uint64_t kv_pages_before, kv_pages_after; /* KV head pages over the region: sources before, targets after */
} pt_relayout_op;

typedef struct {
    uint64_t id;                 /* 1, 2, ... shown as "xf-1" */
    int from[PT_FABRIC_MAX_DEVICES], n_from;
    int to[PT_FABRIC_MAX_DEVICES], n_to;
    pt_xform_plan plan;
    char summary[1024];          /* pt_xform_plan_describe */
    pt_relayout_op ops[PT_FABRIC_MAX_DEVICES]; /* (plan.n_ops) */
    bool ok;                     /* every operation done */
    char reason[600];            /* the first failure: "op 2 (split ...) failed in precopy: ..." */
    double t_start, duration_s;  /* pt_now() at the POST, and until the worker was over */
} pt_relayout_result;

/* What the run needs from the server; called on the loop thread. */
typedef struct {
    void *user;
    /* The running instances the operation transforms (its devices, in
     * order), or an error when they are not the ones the plan expects. */
    int (*sources)(void *user, const pt_xform_op *op, pt_live_instance *src, pt_err *err);
    /* After a successful commit: targets in place of the sources, every
     * open request pointed at its new instance. */
    void (*install)(void *user, const pt_xform_op *op, const pt_live_xform *x);
    /* The run is over (ok or not); r->last holds it. */
    void (*done)(void *user, const pt_relayout_result *res);
} pt_relayout_host;

typedef struct {
    /* Set up once; read by both threads. */
    bool inited;
    pt_relayout_host host;
    const pt_tokenizer *tok;
    pt_batcher_opts bo;
    pt_xform_fail inject;        /* tests: injected into every operation */
    uv_async_t async;            /* worker -> loop: commit wanted, run over */
    uint64_t next_id;
    /* Loop thread only. */
    pt_relayout_result *last;    /* the last finished run, NULL before one */
    bool async_open;
    /* Shared, under mu. */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t thread;
    bool thread_live;            /* started and not joined */
    pt_relayout_result *cur;     /* the run in progress; its plan fixed, ops written by the worker */
    pt_relayout_stage stage;
    int op;                      /* the operation in progress */
    bool aborting;               /* shutdown: roll back at the next stage boundary */
    bool loop_open;              /* the loop still answers commits */
    bool commit_wanted, commit_answered;
    int commit_rc;
    char commit_msg[512];
    pt_live_xform *x;            /* the operation's, while it commits */
    pt_live_instance src[PT_FABRIC_MAX_DEVICES]; /* the next operation's sources (from the loop) */
    int src_rc;                  /* the loop could not name them: src_msg says why */
    char src_msg[512];
} pt_relayout;

int pt_relayout_init(pt_relayout *r, uv_loop_t *loop, const pt_relayout_host *host, const pt_tokenizer *tok,
                     const pt_batcher_opts *bo, pt_err *err);

/* Loop thread: starts the plan (from -> to) on a worker thread; *id names
 * it. PT_ERR_BUSY when a run is in progress (err names it). */
int pt_relayout_start(pt_relayout *r, const pt_xform_plan *plan, const int *from, int n_from, const int *to, int n_to,
                      uint64_t *id, pt_err *err);

/* Loop thread: what GET shows of the run in progress. False when none. */
typedef struct {
    uint64_t id;
    pt_relayout_stage stage;
    int op, n_ops;
    double elapsed_s;
    const pt_relayout_result *run; /* its plan, from, to and summary (fixed while it runs) */
} pt_relayout_progress;
bool pt_relayout_progress_get(pt_relayout *r, pt_relayout_progress *p);

/* Loop thread, shutdown begins: the run rolls back at its next stage
 * boundary and starts no other operation. */
void pt_relayout_abort(pt_relayout *r);
/* Loop thread, as the loop winds down: aborts and closes the async
 * handle; a commit asked for after this is refused. */
void pt_relayout_close(pt_relayout *r);
/* After the loop is over: joins the worker (it has rolled back) and frees
 * what the runs left. Safe on a zeroed struct. */
void pt_relayout_free(pt_relayout *r);

#endif
