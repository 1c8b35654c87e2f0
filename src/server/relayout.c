/* A layout change of the running server, one operation after the other
 * (relayout.h). The worker thread owns the pt_live_xform of the operation
 * in progress; the loop thread sees it only while it commits, when the
 * worker waits for its answer. */
#include "server/relayout.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proteus/engine.h"

const char *pt_relayout_stage_name(pt_relayout_stage s) {
    static const char *names[] = {"idle", "build", "precopy", "commit", "finish", "done"};
    return s >= PT_RELAYOUT_IDLE && s <= PT_RELAYOUT_DONE ? names[s] : "?";
}

/* ---- worker thread ---- */

static void set_stage(pt_relayout *r, pt_relayout_stage st) {
    pthread_mutex_lock(&r->mu);
    pt_relayout_stage prev = r->stage;
    r->stage = st;
    int op = r->op, n_ops = r->cur->plan.n_ops;
    uint64_t id = r->cur->id;
    pthread_mutex_unlock(&r->mu);
    pt_log(PT_LOG_DEBUG, "transformation xf-%llu op %d/%d: %s -> %s", (unsigned long long)id, op + 1, n_ops,
           prev == st ? "start" : pt_relayout_stage_name(prev), pt_relayout_stage_name(st));
}

static bool aborting(pt_relayout *r) {
    pthread_mutex_lock(&r->mu);
    bool a = r->aborting;
    pthread_mutex_unlock(&r->mu);
    return a;
}

static uint64_t engine_pages(const pt_engine *e) {
    uint64_t sum = 0;
    for (int k = 0; k < pt_engine_tp(e); k++) {
        uint64_t total, free_pages;
        pt_engine_kv_pages(e, k, &total, &free_pages);
        sum += total;
    }
    return sum;
}

/* Asks the loop thread to commit x and waits for its answer. A loop that
 * no longer answers (shutting down) is a failed commit: the caller rolls
 * back. */
static int commit_on_loop(pt_relayout *r, pt_live_xform *x, pt_err *err) {
    pthread_mutex_lock(&r->mu);
    r->x = x;
    r->commit_wanted = true;
    r->commit_answered = false;
    if (r->loop_open) uv_async_send(&r->async);
    while (!r->commit_answered && r->loop_open) pthread_cond_wait(&r->cv, &r->mu);
    int rc;
    if (r->commit_answered) {
        rc = r->commit_rc;
        if (rc) pt_err_set(err, rc, "%s", r->commit_msg);
    } else {
        rc = pt_err_set(err, PT_ERR_INVALID, "the server is shutting down");
    }
    r->commit_wanted = r->commit_answered = false;
    r->x = NULL;
    pthread_mutex_unlock(&r->mu);
    return rc;
}

static void log_op(const pt_relayout_result *res, int k) {
    const pt_relayout_op *o = &res->ops[k];
    const pt_xform_stats *xs = &o->st.xf;
    if (!o->ok) {
        pt_log(PT_LOG_WARN, "transformation xf-%llu op %d/%d (%s): failed in %s, rolled back: %s",
               (unsigned long long)res->id, k + 1, res->plan.n_ops, o->what, pt_relayout_stage_name(o->failed_in),
               o->reason);
        return;
    }
    pt_log(PT_LOG_INFO,
           "transformation xf-%llu op %d/%d (%s): done: %u requests moved; KV %.2f MiB moved (%llu pages pre-copied in "
           "%d stages, %llu in the pause, %llu in place); weights %.2f MiB built, %.2f MiB freed; KV pages %llu -> %llu "
           "(%llu reserved); cached prefix pages %llu kept, %llu dropped; pre-copy %.3f s, pause %.2f ms",
           (unsigned long long)res->id, k + 1, res->plan.n_ops, o->what, o->st.requests_moved,
           xs->kv_bytes_moved / 1048576.0, (unsigned long long)xs->pages_precopied, xs->stages,
           (unsigned long long)xs->pages_at_commit, (unsigned long long)xs->pages_in_place,
           xs->weight_bytes_new / 1048576.0, xs->weight_bytes_freed / 1048576.0,
           (unsigned long long)o->kv_pages_before, (unsigned long long)o->kv_pages_after,
           (unsigned long long)xs->kv_pages_reserved, (unsigned long long)xs->cached_kept,
           (unsigned long long)xs->cached_dropped, o->st.precopy_s, o->st.pause_s * 1e3);
}

static bool op_failed(pt_relayout_op *o, pt_relayout_stage where, const char *why) {
    o->ok = false;
    o->failed_in = where;
    snprintf(o->reason, sizeof(o->reason), "%s", why);
    return false;
}

/* Pre-copy, then the commit on the loop thread; 0 when committed, else
 * *where names the stage that failed. */
static int precopy_and_commit(pt_relayout *r, pt_live_xform *x, pt_relayout_stage *where, pt_err *err) {
    set_stage(r, PT_RELAYOUT_PRECOPY);
    *where = PT_RELAYOUT_PRECOPY;
    if (aborting(r)) return pt_err_set(err, PT_ERR_INVALID, "the server is shutting down");
    int rc = pt_live_xform_precopy(x, err);
    if (rc) return rc;
    set_stage(r, PT_RELAYOUT_COMMIT);
    *where = PT_RELAYOUT_COMMIT;
    return commit_on_loop(r, x, err);
}

/* One operation through its stages; false when it failed (rolled back). */
static bool run_op(pt_relayout *r, int k) {
    pt_relayout_result *res = r->cur;
    const pt_xform_op *op = &res->plan.ops[k];
    pt_relayout_op *o = &res->ops[k];
    pt_live_instance src[PT_FABRIC_MAX_DEVICES];
    char src_msg[sizeof(r->src_msg)];
    pthread_mutex_lock(&r->mu);
    r->op = k;
    int src_rc = r->src_rc;
    memcpy(src, r->src, sizeof(src));
    memcpy(src_msg, r->src_msg, sizeof(src_msg));
    pthread_mutex_unlock(&r->mu);
    o->attempted = true;
    set_stage(r, PT_RELAYOUT_BUILD);
    if (aborting(r)) return op_failed(o, PT_RELAYOUT_BUILD, "the server is shutting down");
    if (src_rc) return op_failed(o, PT_RELAYOUT_BUILD, src_msg);
    for (int i = 0; i < op->n_src; i++) o->kv_pages_before += engine_pages(src[i].engine);

    pt_err err = {{0}};
    pt_live_xform *x = NULL;
    if (pt_live_xform_start(&x, src, op->n_src, op->dst, op->n_dst, r->tok, &r->bo, &err))
        return op_failed(o, PT_RELAYOUT_BUILD, err.msg); /* nothing was changed */
    if (r->inject != PT_XFORM_FAIL_NONE) pt_live_xform_fail_at(x, r->inject);
    pt_relayout_stage where;
    int rc = precopy_and_commit(r, x, &where, &err);

    pt_engine *targets[PT_FABRIC_MAX_DEVICES];
    for (int i = 0; i < op->n_dst && rc == 0; i++) targets[i] = pt_live_xform_target(x, i).engine;
    set_stage(r, PT_RELAYOUT_FINISH);
    pt_live_xform_free(x, &o->st); /* the sources after a commit, else the rollback; the final stats */
    if (rc) return op_failed(o, where, err.msg);
    /* The targets are the server's now; only a later operation of this
     * run (on this thread) or the shutdown after it could free them. */
    for (int i = 0; i < op->n_dst; i++) o->kv_pages_after += engine_pages(targets[i]);
    o->ok = true;
    return true;
}

static void *worker_main(void *arg) {
    pt_relayout *r = arg;
    pt_relayout_result *res = r->cur;
    res->ok = true;
    for (int k = 0; k < res->plan.n_ops; k++) {
        bool ok = run_op(r, k);
        log_op(res, k);
        if (!ok) {
            const pt_relayout_op *o = &res->ops[k];
            res->ok = false;
            snprintf(res->reason, sizeof(res->reason), "op %d (%s) failed in %s: %s", k + 1, o->what,
                     pt_relayout_stage_name(o->failed_in), o->reason);
            break;
        }
    }
    res->duration_s = pt_now() - res->t_start;
    pthread_mutex_lock(&r->mu);
    r->stage = PT_RELAYOUT_DONE;
    if (r->loop_open) uv_async_send(&r->async);
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

/* ---- loop thread ---- */

/* The commit the worker waits for; then, for the operation after it, its
 * sources in the layout this commit made. */
static void answer_commit(pt_relayout *r, pt_live_xform *x, int k, bool abort_now) {
    const pt_xform_plan *plan = &r->cur->plan;
    pt_err err = {{0}}, serr = {{0}};
    int rc = abort_now ? pt_err_set(&err, PT_ERR_INVALID, "the server is shutting down")
                       : pt_live_xform_commit(x, &err);
    int src_rc = 0;
    pt_live_instance next[PT_FABRIC_MAX_DEVICES] = {{0}};
    bool more = rc == 0 && k + 1 < plan->n_ops;
    if (rc == 0) r->host.install(r->host.user, &plan->ops[k], x);
    if (more) src_rc = r->host.sources(r->host.user, &plan->ops[k + 1], next, &serr);
    pthread_mutex_lock(&r->mu);
    r->commit_answered = true;
    r->commit_rc = rc;
    snprintf(r->commit_msg, sizeof(r->commit_msg), "%s", err.msg);
    if (more) {
        memcpy(r->src, next, sizeof(r->src));
        r->src_rc = src_rc;
        snprintf(r->src_msg, sizeof(r->src_msg), "%s", serr.msg);
    }
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

/* The worker is over: its result becomes the last one. */
static void collect(pt_relayout *r) {
    pthread_join(r->thread, NULL);
    pthread_mutex_lock(&r->mu);
    r->thread_live = false;
    pt_relayout_result *res = r->cur;
    r->cur = NULL;
    r->stage = PT_RELAYOUT_IDLE;
    pthread_mutex_unlock(&r->mu);
    free(r->last);
    r->last = res;
    if (r->host.done) r->host.done(r->host.user, res);
}

static void on_async(uv_async_t *h) {
    pt_relayout *r = h->data;
    pthread_mutex_lock(&r->mu);
    bool want = r->commit_wanted && !r->commit_answered;
    pt_live_xform *x = r->x;
    int k = r->op;
    bool abort_now = r->aborting;
    pthread_mutex_unlock(&r->mu);
    if (want) answer_commit(r, x, k, abort_now);
    pthread_mutex_lock(&r->mu);
    bool done = r->thread_live && r->stage == PT_RELAYOUT_DONE;
    pthread_mutex_unlock(&r->mu);
    if (done) collect(r);
}

int pt_relayout_init(pt_relayout *r, uv_loop_t *loop, const pt_relayout_host *host, const pt_tokenizer *tok,
                     const pt_batcher_opts *bo, pt_err *err) {
    memset(r, 0, sizeof(*r));
    if (pthread_mutex_init(&r->mu, NULL)) return pt_err_set(err, PT_ERR_NOMEM, "transformation: mutex init failed");
    if (pthread_cond_init(&r->cv, NULL)) {
        pthread_mutex_destroy(&r->mu);
        return pt_err_set(err, PT_ERR_NOMEM, "transformation: condition variable init failed");
    }
    int rc = uv_async_init(loop, &r->async, on_async);
    if (rc) {
        pthread_cond_destroy(&r->cv);
        pthread_mutex_destroy(&r->mu);
        return pt_err_set(err, PT_ERR_IO, "transformation: uv_async_init: %s", uv_strerror(rc));
    }
    r->async.data = r;
    r->async_open = r->loop_open = true;
    r->inited = true;
    r->host = *host;
    r->tok = tok;
    r->bo = *bo;
    return PT_OK;
}

static void layout_str(const int *tp, int n, char *buf, size_t cap) {
    size_t len = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < n && len < cap; i++) len += (size_t)snprintf(buf + len, cap - len, "%s%d", i ? "," : "", tp[i]);
    if (len < cap) snprintf(buf + len, cap - len, "]");
}

int pt_relayout_start(pt_relayout *r, const pt_xform_plan *plan, const int *from, int n_from, const int *to, int n_to,
                      uint64_t *id, pt_err *err) {
    pthread_mutex_lock(&r->mu);
    const pt_relayout_result *cur = r->cur;
    pt_relayout_stage stage = r->stage;
    bool closing = r->aborting || !r->loop_open;
    pthread_mutex_unlock(&r->mu);
    if (cur)
        return pt_err_set(err, PT_ERR_BUSY, "transformation xf-%llu (%s) is in progress (stage %s); retry once GET "
                          "/v1/layout shows it over", (unsigned long long)cur->id, cur->summary,
                          pt_relayout_stage_name(stage));
    if (closing) return pt_err_set(err, PT_ERR_INVALID, "the server is shutting down");
    if (plan->n_ops < 1) return pt_err_set(err, PT_ERR_INVALID, "the plan has no operation");

    pt_relayout_result *res = calloc(1, sizeof(*res));
    if (!res) return pt_err_set(err, PT_ERR_NOMEM, "out of memory for a transformation");
    pt_live_instance src[PT_FABRIC_MAX_DEVICES] = {{0}};
    int rc = r->host.sources(r->host.user, &plan->ops[0], src, err);
    if (rc) {
        free(res);
        return rc;
    }
    res->id = ++r->next_id;
    res->plan = *plan;
    memcpy(res->from, from, (size_t)n_from * sizeof(int));
    res->n_from = n_from;
    memcpy(res->to, to, (size_t)n_to * sizeof(int));
    res->n_to = n_to;
    pt_xform_plan_describe(plan, res->summary, sizeof(res->summary));
    for (int k = 0; k < plan->n_ops; k++) {
        res->ops[k].kind = plan->ops[k].kind;
        pt_xform_op_describe(&plan->ops[k], res->ops[k].what, sizeof(res->ops[k].what));
    }
    res->t_start = pt_now();

    pthread_mutex_lock(&r->mu);
    r->cur = res;
    r->stage = PT_RELAYOUT_BUILD;
    r->op = 0;
    memcpy(r->src, src, sizeof(r->src));
    r->src_rc = 0;
    r->commit_wanted = r->commit_answered = false;
    pthread_mutex_unlock(&r->mu);
    char a[256], b[256];
    layout_str(from, n_from, a, sizeof(a));
    layout_str(to, n_to, b, sizeof(b));
    pt_log(PT_LOG_INFO, "transformation xf-%llu: %s -> %s: %s", (unsigned long long)res->id, a, b, res->summary);
    if ((rc = pthread_create(&r->thread, NULL, worker_main, r)) != 0) {
        pthread_mutex_lock(&r->mu);
        r->cur = NULL;
        r->stage = PT_RELAYOUT_IDLE;
        pthread_mutex_unlock(&r->mu);
        free(res);
        return pt_err_set(err, PT_ERR_NOMEM, "transformation: cannot start its thread: %s", strerror(rc));
    }
    r->thread_live = true;
    *id = res->id;
    return PT_OK;
}

bool pt_relayout_progress_get(pt_relayout *r, pt_relayout_progress *p) {
    memset(p, 0, sizeof(*p));
    if (!r->inited) return false;
    pthread_mutex_lock(&r->mu);
    if (r->cur) {
        *p = (pt_relayout_progress){r->cur->id, r->stage, r->op, r->cur->plan.n_ops, pt_now() - r->cur->t_start,
                                    r->cur};
    }
    pthread_mutex_unlock(&r->mu);
    return p->run != NULL;
}

void pt_relayout_abort(pt_relayout *r) {
    if (!r->inited) return;
    pthread_mutex_lock(&r->mu);
    r->aborting = true;
    pthread_mutex_unlock(&r->mu);
}

/* No commit can come from the loop any more: a worker waiting for one gives
 * up and rolls back. */
static void loop_gone(pt_relayout *r) {
    pthread_mutex_lock(&r->mu);
    r->aborting = true;
    r->loop_open = false;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

void pt_relayout_close(pt_relayout *r) {
    if (!r->inited) return;
    loop_gone(r);
    if (r->async_open) uv_close((uv_handle_t *)&r->async, NULL);
    r->async_open = false;
}

void pt_relayout_free(pt_relayout *r) {
    if (!r->inited) return;
    loop_gone(r); /* the loop is over, its handles closed */
    if (r->thread_live) {
        pthread_join(r->thread, NULL);
        r->thread_live = false;
    }
    if (r->cur)
        pt_log(PT_LOG_WARN, "transformation xf-%llu ended with the server: %s", (unsigned long long)r->cur->id,
               r->cur->ok ? "every operation done" : r->cur->reason);
    free(r->cur);
    free(r->last);
    r->cur = r->last = NULL;
    pthread_cond_destroy(&r->cv);
    pthread_mutex_destroy(&r->mu);
    r->inited = false;
}
