/* The event loop of `proteus simulate` (sim.h).
 *
 * Conventions: "ctx" is the number of a request's tokens whose KV is
 * computed (held in pages), "gen" the tokens it has emitted. A request is
 * owed ctx == prompt + gen: a fresh one computes its prompt, a decoding one
 * the token it emitted last, a recomputed one its prompt and every token it
 * emitted; each time ctx catches up, the step emits a token (gen++).
 *
 * An instance is idle or runs a *block* of K steps starting at t0: bt[j] is
 * the end of step j and bp[j] the pages it holds during step j. K > 1 only
 * when every running sequence decodes and nothing else can change the
 * batch before the block ends (no admission possible, nobody finishes
 * before step K-1, the pages last): those steps differ only by one token of
 * context per sequence, so they are timed in one pass without touching the
 * requests. An event that concerns the instance (a request placed on it, a
 * pause) cuts the block at the step in progress. Token times are exact
 * either way.
 *
 * One round of the loop at time `now`: blocks that end commit (tokens,
 * finished requests), the transformation advances, the client sends what is
 * due (placements), held requests are offered again and the scheduler plans
 * (both at most once per plan_interval_s unless a transformation committed),
 * idle instances start their next block. Every choice is made in a fixed
 * order (device order, arrival order), so a run is deterministic. */
#include "sim/sim.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BLOCK_MAX 256 /* steps timed in one pass; bounds the work an interrupted block wastes */

enum { RS_PENDING = 0, RS_HELD, RS_QUEUED, RS_RUNNING, RS_DONE };

typedef struct {
    uint32_t prompt, max_tokens;
    uint32_t ctx, gen;       /* see the top of the file */
    uint32_t sched_n;        /* tokens of this request in step 0 of its instance's block (0 = none) */
    uint64_t pages;          /* KV head pages allocated */
    int inst;                /* instance index while queued or running */
    uint8_t state;
    bool warmup, was_held;
    double held_since;       /* when it was last held */
} sreq;

typedef struct {
    pt_sched_req *buf;       /* (cap) entries [head, head + n) are the queue, front first */
    size_t head, n, cap;
} rqueue;

typedef struct {
    int first, tp;
    uint64_t pages_total, pages_used;
    uint32_t *run;           /* (n_run) running request ids, arrival order */
    size_t n_run, cap_run;
    rqueue q;
    /* the block in flight */
    bool busy;
    size_t K;
    double bt[BLOCK_MAX];    /* end of step j */
    uint64_t bp[BLOCK_MAX];  /* pages held during step j */
    /* transformation */
    bool transforming, stopping;
    /* the scheduler's view of the running requests */
    pt_sched_req *view;
    size_t cap_view;
    bool view_dirty;
    double view_t;
} sinst;

enum { XF_NONE = 0, XF_PRECOPY, XF_STOPPING, XF_PAUSE };

typedef struct {
    const pt_sim_opts *o;
    const pt_cost_model *m;
    pt_scheduler *sch;
    int n_devices, min_tp;
    const pt_replay_req *in;
    size_t n;
    sreq *reqs;
    pt_sim_result *res;
    double now;
    /* instances, device order */
    sinst inst[PT_SCHED_MAX_DEVICES];
    int n_inst;
    int initial[PT_SCHED_MAX_DEVICES], n_initial;
    /* held requests, arrival order */
    pt_sched_req *held;
    size_t n_held, cap_held;
    /* the state handed to the scheduler */
    pt_sched_instance st_inst[PT_SCHED_MAX_DEVICES];
    pt_sched_state st;
    /* client */
    size_t n_warm, next;     /* warmups are reqs[0 .. n_warm); next = next request to send */
    bool warm_busy;
    double warm_ready, offset; /* when the next warmup may go; when the measured schedule starts */
    size_t in_flight, n_terminal;
    double last_terminal;
    /* transformation in flight */
    int xf_phase;
    pt_sched_xform xf;
    int xf_lo, xf_hi;        /* source instances [lo, hi) */
    double xf_precopy_end, xf_first_stop, xf_commit;
    /* scheduler calls */
    bool dirty;              /* something changed since the last plan */
    bool force_plan;
    double last_plan;
    double last_change;      /* last time anything changed, for the stall guard */
    uint32_t q_waiting, q_running;
    size_t cap_queue;
} sim;

static void *xrealloc(void *p, size_t n, size_t size) {
    size_t bytes = n * size;
    void *q = realloc(p, bytes ? bytes : 1);
    if (!q) {
        fprintf(stderr, "proteus simulate: out of memory\n");
        abort();
    }
    return q;
}

/* ---- options and layouts ---- */

void pt_sim_opts_default(pt_sim_opts *o) {
    memset(o, 0, sizeof(*o));
    o->sched.policy = PT_SCHED_STATIC;
    static const int ALLOWED[] = {1, 2, 4, 8};
    for (int i = 0; i < 4; i++) o->sched.allowed_tp[i] = ALLOWED[i];
    o->sched.n_allowed = 4;
    o->sched.hysteresis_s = 30; /* the server's default (scheduler.hysteresis_s) */
    o->max_seqs = 256;
    o->max_batched_tokens = 8192;
    o->plan_interval_s = 0.02;
    o->tick_s = 1;
    o->token_times = true;
}

static bool degree_ok(const pt_cost_model *m, const pt_sched_opts *so, int tp) {
    bool allowed = false;
    for (int i = 0; i < so->n_allowed; i++) allowed |= so->allowed_tp[i] == tp;
    return allowed && tp >= 1 && tp <= PT_COST_MAX_TP && m->tp[tp].valid && pt_cost_instance_pages(m, tp) > 0;
}

int pt_sim_check_layout(const pt_cost_model *m, const pt_sched_opts *so, int n_devices, const int *tp, int n,
                        pt_err *err) {
    int dev = 0;
    for (int i = 0; i < n; i++) {
        if (!degree_ok(m, so, tp[i]))
            return pt_err_set(err, PT_ERR_INVALID,
                              "layout entry %d (TP%d): not an allowed degree whose weights fit a device group", i + 1,
                              tp[i]);
        if (dev % tp[i] != 0)
            return pt_err_set(err, PT_ERR_INVALID,
                              "layout entry %d (TP%d) starts at device %d: an instance must start at a multiple of its "
                              "degree (put larger degrees first)",
                              i + 1, tp[i], dev);
        dev += tp[i];
        if (dev > n_devices) break;
    }
    if (dev != n_devices)
        return pt_err_set(err, PT_ERR_INVALID, "layout covers %d devices, the cluster has %d", dev, n_devices);
    return 0;
}

int pt_sim_default_layout(const pt_cost_model *m, const pt_sched_opts *so, int n_devices, int *tp_out) {
    for (int i = 0; i < so->n_allowed; i++) {
        int d = so->allowed_tp[i];
        if (!degree_ok(m, so, d) || n_devices % d != 0) continue;
        for (int k = 0; k < n_devices / d; k++) tp_out[k] = d;
        return n_devices / d;
    }
    return 0;
}

typedef struct {
    int *buf;
    size_t n, cap;
} layout_list;

static void enumerate(const pt_cost_model *m, const pt_sched_opts *so, int n_devices, int *cur, int depth, int used,
                      int max_deg, layout_list *out) {
    if (used == n_devices) {
        if (pt_sim_check_layout(m, so, n_devices, cur, depth, NULL) != 0) return;
        if (out->n == out->cap) {
            out->cap = out->cap ? out->cap * 2 : 16;
            out->buf = xrealloc(out->buf, out->cap * (size_t)n_devices, sizeof(int));
        }
        int *dst = out->buf + out->n++ * (size_t)n_devices;
        memset(dst, 0, (size_t)n_devices * sizeof(int));
        memcpy(dst, cur, (size_t)depth * sizeof(int));
        return;
    }
    /* Degrees in non-increasing order: one layout per multiset, and every
     * instance aligned when the degrees are powers of two. */
    for (int i = so->n_allowed - 1; i >= 0; i--) {
        int d = so->allowed_tp[i];
        if (d > max_deg || used + d > n_devices || !degree_ok(m, so, d)) continue;
        cur[depth] = d;
        enumerate(m, so, n_devices, cur, depth + 1, used + d, d, out);
    }
}

int pt_sim_static_layouts(const pt_cost_model *m, const pt_sched_opts *so, int n_devices, int **out, size_t *n_out) {
    int cur[PT_SCHED_MAX_DEVICES];
    layout_list l = {0};
    if (n_devices >= 1 && n_devices <= PT_SCHED_MAX_DEVICES) enumerate(m, so, n_devices, cur, 0, 0, n_devices, &l);
    *out = l.buf;
    *n_out = l.n;
    return 0;
}

/* ---- small containers ---- */

/* Room for one entry before the front: the entries are moved to the middle
 * of the buffer (grown first when over half full). */
static void q_reserve_front(rqueue *q) {
    if (q->head > 0) return;
    if (q->n * 2 >= q->cap) {
        size_t cap = q->cap * 2 + 16;
        pt_sched_req *nb = xrealloc(NULL, cap, sizeof(*nb));
        size_t head = (cap - q->n) / 2;
        if (q->n) memcpy(nb + head, q->buf + q->head, q->n * sizeof(*nb));
        free(q->buf);
        q->buf = nb;
        q->cap = cap;
        q->head = head;
        return;
    }
    size_t head = (q->cap - q->n) / 2;
    memmove(q->buf + head, q->buf, q->n * sizeof(*q->buf));
    q->head = head;
}

static void q_push_back(rqueue *q, const pt_sched_req *r) {
    if (q->head + q->n == q->cap) {
        if (q->head > q->cap / 2) { /* mostly popped: slide down */
            memmove(q->buf, q->buf + q->head, q->n * sizeof(*q->buf));
            q->head = 0;
        } else {
            q->cap = q->cap ? q->cap * 2 : 16;
            q->buf = xrealloc(q->buf, q->cap, sizeof(*q->buf));
        }
    }
    q->buf[q->head + q->n++] = *r;
}

static void q_push_front(rqueue *q, const pt_sched_req *r) {
    q_reserve_front(q);
    q->buf[--q->head] = *r;
    q->n++;
}

static void q_pop_front(rqueue *q) {
    q->head++;
    if (--q->n == 0) q->head = 0;
}

static void q_free(rqueue *q) {
    free(q->buf);
    memset(q, 0, sizeof(*q));
}

/* ---- requests ---- */

static pt_sched_req req_view(const sim *s, uint32_t id, uint32_t ctx, uint32_t gen) {
    const sreq *r = &s->reqs[id];
    const pt_bench_record *rec = &s->res->recs[id];
    return (pt_sched_req){.id = id, .prompt_len = r->prompt, .max_tokens = r->max_tokens,
                          .prefilled = ctx < r->prompt ? ctx : r->prompt, .generated = gen,
                          .arrival = rec->t_sent, .first_token = gen > 0 ? rec->t_first : -1.0};
}

static void changed(sim *s) {
    s->dirty = true;
    s->last_change = s->now;
}

/* The client learns that request id is over (done or failed). */
static void client_done(sim *s, uint32_t id) {
    s->n_terminal++;
    s->last_terminal = s->now;
    if (s->reqs[id].warmup) {
        s->warm_busy = false;
        s->warm_ready = s->now;
        if (id + 1 == s->n_warm) s->offset = s->now;
    } else {
        s->in_flight--;
    }
}

static void fail_req(sim *s, uint32_t id, int status, const char *msg) {
    sreq *r = &s->reqs[id];
    pt_bench_record *rec = &s->res->recs[id];
    r->state = RS_DONE;
    r->inst = -1;
    rec->ok = false;
    rec->status = status;
    rec->t_end = s->now;
    rec->output_tokens = r->gen;
    free(rec->error);
    rec->error = pt_xstrdup(msg);
    if (s->o->verbose) fprintf(stderr, "proteus simulate: t=%.3f request %u failed: %s\n", s->now, id, msg);
    client_done(s, id);
    changed(s);
}

static void emit(sim *s, uint32_t id, double t) {
    sreq *r = &s->reqs[id];
    pt_bench_record *rec = &s->res->recs[id];
    if (r->gen == 0) rec->t_first = t;
    if (s->o->token_times) {
        if (!rec->token_times) rec->token_times = xrealloc(NULL, r->max_tokens, sizeof(double));
        rec->token_times[rec->n_token_times++] = t;
    }
    r->gen++;
}

/* ---- instances ---- */

static uint64_t seq_pages(const sim *s, uint64_t tokens) { return pt_cost_seq_pages(s->m, tokens); }

static void inst_init(sim *s, sinst *in, int first, int tp) {
    memset(in, 0, sizeof(*in));
    in->first = first;
    in->tp = tp;
    in->pages_total = pt_cost_instance_pages(s->m, tp);
    in->view_dirty = true;
}

static void inst_free(sinst *in) {
    free(in->run);
    free(in->view);
    q_free(&in->q);
}

/* Inserts id into the running list, keeping arrival order (ties by id). */
static void run_insert(sim *s, sinst *in, uint32_t id) {
    if (in->n_run == in->cap_run) {
        in->cap_run = in->cap_run ? in->cap_run * 2 : 16;
        in->run = xrealloc(in->run, in->cap_run, sizeof(uint32_t));
    }
    double a = s->res->recs[id].t_sent;
    size_t pos = in->n_run;
    while (pos > 0) {
        uint32_t p = in->run[pos - 1];
        double b = s->res->recs[p].t_sent;
        if (b < a || (b == a && p < id)) break;
        pos--;
    }
    memmove(in->run + pos + 1, in->run + pos, (in->n_run - pos) * sizeof(uint32_t));
    in->run[pos] = id;
    in->n_run++;
    in->view_dirty = true;
}

static void run_remove_at(sinst *in, size_t pos) {
    memmove(in->run + pos, in->run + pos + 1, (in->n_run - pos - 1) * sizeof(uint32_t));
    in->n_run--;
    in->view_dirty = true;
}

/* Steps of the block in flight that are over at time t (at most K - 1: the
 * block itself is committed by the loop). */
static size_t block_done(const sinst *in, double t) {
    size_t lo = 0, hi = in->K - 1; /* first j with bt[j] > t, capped at K - 1 */
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (in->bt[mid] <= t) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

/* The scheduler's view of instance i's running requests at s->now. */
static void view_build(sim *s, int i) {
    sinst *in = &s->inst[i];
    size_t k = in->busy && in->K > 1 ? block_done(in, s->now) : 0;
    if (!in->view_dirty && !(in->busy && in->K > 1 && in->view_t != s->now)) return;
    if (in->cap_view < in->n_run) {
        in->cap_view = in->n_run + 16;
        in->view = xrealloc(in->view, in->cap_view, sizeof(pt_sched_req));
    }
    for (size_t j = 0; j < in->n_run; j++) {
        const sreq *r = &s->reqs[in->run[j]];
        /* In a block every running request decodes: k steps emitted k tokens. */
        in->view[j] = req_view(s, in->run[j], r->ctx + (uint32_t)k, r->gen + (uint32_t)k);
    }
    in->view_dirty = false;
    in->view_t = s->now;
}

static const pt_sched_state *state_get(sim *s) {
    for (int i = 0; i < s->n_inst; i++) {
        sinst *in = &s->inst[i];
        view_build(s, i);
        uint64_t used = in->busy ? in->bp[in->K > 1 ? block_done(in, s->now) : 0] : in->pages_used;
        s->st_inst[i] = (pt_sched_instance){.first_device = in->first, .tp = in->tp, .max_seqs = s->o->max_seqs,
                                            .pages_total = in->pages_total,
                                            .pages_free = in->pages_total > used ? in->pages_total - used : 0,
                                            .running = in->view, .n_running = in->n_run,
                                            .queued = in->q.buf ? in->q.buf + in->q.head : NULL, .n_queued = in->q.n,
                                            .transforming = in->transforming};
    }
    s->st = (pt_sched_state){.now = s->now, .n_devices = s->n_devices, .inst = s->st_inst, .n_inst = s->n_inst,
                             .held = s->held, .n_held = s->n_held, .xform_in_flight = s->xf_phase != XF_NONE};
    s->res->sched_calls++;
    return &s->st;
}

/* Cuts instance i's block at the step in progress at `now`. */
static void inst_interrupt(sim *s, sinst *in) {
    if (!in->busy || in->K <= 1) return;
    size_t j = 0;
    while (j + 1 < in->K && in->bt[j] < s->now) j++;
    in->K = j + 1;
}

static void preempt(sim *s, int i, size_t pos) {
    sinst *in = &s->inst[i];
    uint32_t id = in->run[pos];
    sreq *r = &s->reqs[id];
    run_remove_at(in, pos);
    in->pages_used -= r->pages;
    r->pages = 0;
    r->ctx = 0;
    r->sched_n = 0;
    r->state = RS_QUEUED;
    pt_sched_req v = req_view(s, id, 0, r->gen);
    q_push_front(&in->q, &v);
    s->res->preemptions++;
    changed(s);
}

/* Fails the running request at idx that needs more pages than its instance
 * holds. */
static void fail_unservable(sim *s, int i, size_t idx, uint64_t need) {
    sinst *in = &s->inst[i];
    uint32_t id = in->run[idx];
    sreq *r = &s->reqs[id];
    char msg[160];
    snprintf(msg, sizeof(msg), "KV pages exhausted: the request needs %llu pages, its TP%d instance holds %llu",
             (unsigned long long)need, in->tp, (unsigned long long)in->pages_total);
    in->pages_used -= r->pages;
    r->pages = 0;
    r->sched_n = 0;
    run_remove_at(in, idx);
    s->res->unservable++;
    fail_req(s, id, 507, msg);
}

/* Gives the running request at *idx n tokens in the step being built,
 * preempting the victims the scheduler names until its pages fit. Returns
 * true when it was scheduled; false when it was preempted itself or failed
 * (removed from the running list: *idx then names the next one). *budget
 * gets back the tokens of a victim already in the step. */
static bool schedule_one(sim *s, int i, size_t *idx, uint32_t n, uint64_t *budget, bool *preempted) {
    sinst *in = &s->inst[i];
    uint32_t id = in->run[*idx];
    sreq *r = &s->reqs[id];
    uint64_t need = seq_pages(s, (uint64_t)r->ctx + n);
    if (need > in->pages_total) {
        fail_unservable(s, i, *idx, need);
        return false;
    }
    while (need > r->pages + (in->pages_total - in->pages_used)) {
        pt_sched_reason why;
        int v = pt_sched_victim(s->sch, state_get(s), i, &why);
        if (v < 0 || (size_t)v >= in->n_run) v = (int)in->n_run - 1; /* the newest */
        uint32_t vid = in->run[v];
        *budget += s->reqs[vid].sched_n;
        preempt(s, i, (size_t)v);
        *preempted = true;
        if (vid == id) return false;
        if ((size_t)v < *idx) (*idx)--;
    }
    in->pages_used += need - r->pages;
    r->pages = need;
    r->sched_n = n;
    *budget -= n;
    return true;
}

static bool decoding(const sreq *r) { return r->gen > 0 && r->ctx + 1 == r->prompt + r->gen; }

/* Plans and starts instance i's next block at s->now, or leaves it idle.
 * As the live batcher (src/engine/batcher.c) does: admit queued requests
 * FCFS while a sequence slot is free and the pages can hold the prompt with
 * one spare page per running sequence; then every decode gets its token,
 * then prefill chunks in arrival order under the token budget. The pages
 * admitted prompts will still take count as taken (the live batcher's check
 * does not subtract them). */
static void inst_start(sim *s, int i) {
    sinst *in = &s->inst[i];
    if (in->busy || in->stopping) return;
    const pt_cost_model *m = s->m;
    bool preempted = false, admitted = false, all_decode = true;

    /* Admission. */
    uint64_t promised = 0;
    for (size_t j = 0; j < in->n_run; j++) {
        const sreq *r = &s->reqs[in->run[j]];
        uint64_t full = seq_pages(s, (uint64_t)r->prompt + r->gen + 1);
        if (!decoding(r) && full > r->pages) promised += full - r->pages;
    }
    while (in->q.n > 0 && in->n_run < s->o->max_seqs) {
        uint32_t id = (uint32_t)in->q.buf[in->q.head].id;
        sreq *r = &s->reqs[id];
        uint64_t need = seq_pages(s, (uint64_t)r->prompt + r->gen + 1); /* ctx is 0 in the queue */
        if (need > in->pages_total) {
            char msg[160];
            snprintf(msg, sizeof(msg), "KV pages exhausted: the prompt needs %llu pages, its TP%d instance holds %llu",
                     (unsigned long long)need, in->tp, (unsigned long long)in->pages_total);
            q_pop_front(&in->q);
            s->res->unservable++;
            fail_req(s, id, 507, msg);
            continue;
        }
        uint64_t free_pages = in->pages_total - in->pages_used;
        if (in->n_run > 0 && need + promised + in->n_run * (uint64_t)m->n_kv_heads > free_pages) break;
        q_pop_front(&in->q);
        r->state = RS_RUNNING;
        run_insert(s, in, id);
        promised += need;
        admitted = true;
    }

    /* Decodes first, one token each. */
    uint64_t budget = s->o->max_batched_tokens;
    size_t idx = 0;
    while (idx < in->n_run) {
        if (!decoding(&s->reqs[in->run[idx]])) {
            all_decode = false;
            idx++;
            continue;
        }
        if (budget == 0) {
            all_decode = false;
            break;
        }
        if (schedule_one(s, i, &idx, 1, &budget, &preempted)) idx++;
    }
    /* Then prefill chunks, oldest first. */
    idx = 0;
    while (idx < in->n_run && budget > 0) {
        sreq *r = &s->reqs[in->run[idx]];
        if (decoding(r) || r->sched_n) {
            idx++;
            continue;
        }
        uint64_t owed = (uint64_t)r->prompt + r->gen - r->ctx;
        uint32_t n = (uint32_t)(owed < budget ? owed : budget);
        if (schedule_one(s, i, &idx, n, &budget, &preempted)) idx++;
    }
    if (preempted || admitted) changed(s);

    /* The shape of step 0. */
    pt_step_shape sh = {0};
    for (size_t j = 0; j < in->n_run; j++) {
        const sreq *r = &s->reqs[in->run[j]];
        if (r->sched_n) pt_cost_shape_add(&sh, r->ctx, r->sched_n);
        else all_decode = false;
    }
    if (sh.n_seqs == 0) return; /* idle */
    double dt = pt_cost_step(m, in->tp, &sh);
    in->busy = true;
    in->K = 1;
    in->bt[0] = s->now + (dt > 0 ? dt : 0);
    in->bp[0] = in->pages_used;
    in->view_dirty = true;
    if (!all_decode || admitted || preempted) return;

    /* Decode only, and the queue cannot be admitted (max_seqs, or pages,
     * which only shrink while nobody finishes): extend to a block. */
    size_t kmax = BLOCK_MAX;
    uint32_t P = m->page_size;
    uint64_t *res_count = P <= 4096 ? calloc(P, sizeof(uint64_t)) : NULL;
    for (size_t j = 0; j < in->n_run; j++) {
        const sreq *r = &s->reqs[in->run[j]];
        size_t left = r->max_tokens - r->gen; /* tokens left, step 0's included */
        if (left < kmax) kmax = left;
        if (res_count) res_count[r->ctx % P]++;
    }
    if (!res_count) kmax = 1;
    /* Per step each sequence has one more cached token: the shape's change
     * for one sequence, from the cost model's own definition. */
    pt_step_shape s0 = {0}, s1 = {0};
    pt_cost_shape_add(&s0, 0, 1);
    pt_cost_shape_add(&s1, 1, 1);
    uint64_t n_seq = in->n_run, dpairs = (s1.pairs - s0.pairs) * n_seq, dkv = (s1.kv_tokens - s0.kv_tokens) * n_seq;
    uint64_t free_pages = in->pages_total - in->pages_used, used = in->pages_used;
    size_t j = 1;
    for (; j < kmax; j++) {
        /* Step j computes token ctx + j of each sequence: a new page for those at a page boundary. */
        uint64_t newp = res_count[(P - j % P) % P] * m->n_kv_heads;
        if (newp > free_pages) break;
        free_pages -= newp;
        used += newp;
        sh.pairs += dpairs;
        sh.kv_tokens += dkv;
        dt = pt_cost_step(m, in->tp, &sh);
        in->bt[j] = in->bt[j - 1] + (dt > 0 ? dt : 0);
        in->bp[j] = used;
    }
    in->K = j;
    free(res_count);
}

/* Instance i's block ends at s->now: tokens, finished requests. */
static void inst_commit(sim *s, int i) {
    sinst *in = &s->inst[i];
    size_t K = in->K;
    s->res->steps += K;
    in->busy = false;
    in->view_dirty = true;
    size_t idx = 0;
    while (idx < in->n_run) {
        uint32_t id = in->run[idx];
        sreq *r = &s->reqs[id];
        if (r->sched_n == 0) {
            idx++;
            continue;
        }
        r->ctx += r->sched_n;
        r->sched_n = 0;
        if (r->ctx == r->prompt + r->gen) emit(s, id, in->bt[0]);
        for (size_t j = 1; j < K; j++) {
            r->ctx++;
            emit(s, id, in->bt[j]);
        }
        if (K > 1) {
            uint64_t p = seq_pages(s, r->ctx);
            in->pages_used += p - r->pages;
            r->pages = p;
        }
        if (r->gen >= r->max_tokens) {
            pt_bench_record *rec = &s->res->recs[id];
            in->pages_used -= r->pages;
            r->pages = 0;
            r->state = RS_DONE;
            r->inst = -1;
            rec->ok = true;
            rec->status = 200;
            rec->t_end = s->now;
            rec->output_tokens = r->gen;
            run_remove_at(in, idx);
            client_done(s, id);
            changed(s);
            continue;
        }
        idx++;
    }
    if (in->stopping && s->xf_first_stop > s->now) s->xf_first_stop = s->now;
}

/* ---- held requests ---- */

static void held_insert(sim *s, size_t pos, const pt_sched_req *r) {
    if (s->n_held == s->cap_held) {
        s->cap_held = s->cap_held ? s->cap_held * 2 : 16;
        s->held = xrealloc(s->held, s->cap_held, sizeof(*s->held));
    }
    memmove(s->held + pos + 1, s->held + pos, (s->n_held - pos) * sizeof(*s->held));
    s->held[pos] = *r;
    s->n_held++;
}

static void held_remove(sim *s, size_t pos) {
    memmove(s->held + pos, s->held + pos + 1, (s->n_held - pos - 1) * sizeof(*s->held));
    s->n_held--;
}

/* Offers request id (on no instance, not held) to the scheduler. Returns
 * true when it was held. */
static bool place(sim *s, uint32_t id) {
    sreq *r = &s->reqs[id];
    pt_sched_req v = req_view(s, id, 0, r->gen);
    v.held_before = r->state == RS_HELD; /* offered again: holding it again is not a new decision */
    pt_sched_placement p;
    memset(&p, 0, sizeof(p));
    pt_sched_place(s->sch, state_get(s), &v, &p);
    if (p.kind != PT_SCHED_HOLD && r->state == RS_HELD) s->res->held_s += s->now - r->held_since;
    if (p.kind == PT_SCHED_PLACE && p.instance >= 0 && p.instance < s->n_inst) {
        changed(s);
        sinst *in = &s->inst[p.instance];
        r->state = RS_QUEUED;
        r->inst = p.instance;
        v.held_before = false;
        q_push_back(&in->q, &v);
        inst_interrupt(s, in);
        return false;
    }
    if (p.kind == PT_SCHED_HOLD) {
        if (r->state != RS_HELD) {
            r->held_since = s->now;
            if (!r->was_held) s->res->held_requests++;
            r->was_held = true;
        }
        r->state = RS_HELD;
        r->inst = -1;
        return true;
    }

    char msg[300];
    if (p.kind == PT_SCHED_PLACE)
        snprintf(msg, sizeof(msg), "the scheduler placed it on instance %d of %d", p.instance, s->n_inst);
    else
        snprintf(msg, sizeof(msg), "rejected: %s", p.text[0] ? p.text : pt_sched_reason_name(p.reason));
    s->res->rejected++;
    fail_req(s, id, 400, msg);
    return false;
}

static void held_reoffer(sim *s) {
    size_t idx = 0;
    while (idx < s->n_held) {
        pt_sched_req r = s->held[idx];
        held_remove(s, idx);
        if (place(s, (uint32_t)r.id)) held_insert(s, idx++, &r);
    }
}

/* ---- client ---- */

static double sched_time(const sim *s, size_t i) { return s->in[i].t + s->offset; }

static double client_next(const sim *s) {
    if (s->next >= s->n) return INFINITY;
    if (s->next < s->n_warm) return s->warm_busy ? INFINITY : s->warm_ready;
    if (s->n_warm && s->n_terminal < s->n_warm) return INFINITY; /* the last warmup is still running */
    if (s->o->max_concurrency && s->in_flight >= s->o->max_concurrency) return INFINITY;
    double t = sched_time(s, s->next);
    return t > s->now ? t : s->now;
}

static void client_send_due(sim *s) {
    while (client_next(s) <= s->now) {
        uint32_t id = (uint32_t)s->next++;
        sreq *r = &s->reqs[id];
        pt_bench_record *rec = &s->res->recs[id];
        rec->t_scheduled = r->warmup ? s->now : sched_time(s, id);
        rec->t_sent = s->now;
        if (r->warmup) s->warm_busy = true;
        else s->in_flight++;
        r->state = RS_PENDING;
        changed(s);
        if (place(s, id)) {
            pt_sched_req v = req_view(s, id, 0, 0);
            held_insert(s, s->n_held, &v);
        }
    }
}

/* ---- transformations ---- */

static void layout_sample(sim *s) {
    pt_sim_result *res = s->res;
    if (res->n_layouts && res->layouts[res->n_layouts - 1].t == s->now) res->n_layouts--;
    res->layouts = xrealloc(res->layouts, res->n_layouts + 1, sizeof(pt_sim_layout));
    pt_sim_layout *l = &res->layouts[res->n_layouts++];
    memset(l, 0, sizeof(*l));
    l->t = s->now;
    l->n_inst = s->n_inst;
    for (int i = 0; i < s->n_inst; i++) {
        l->tp[i] = s->inst[i].tp;
        l->transforming[i] = s->inst[i].transforming;
    }
}

static bool xform_start(sim *s, const pt_sched_xform *x) {
    const char *why = NULL;
    int lo = 0;
    while (lo < s->n_inst && s->inst[lo].first < x->first_device) lo++;
    int hi = lo, end = x->first_device + x->n_devices;
    while (hi < s->n_inst && s->inst[hi].first < end) hi++;
    int sum = 0;
    if (lo == s->n_inst || s->inst[lo].first != x->first_device || x->n_devices < 1 || end > s->n_devices ||
        (hi < s->n_inst && s->inst[hi].first != end) || (hi == s->n_inst && end != s->n_devices))
        why = "its device range does not cover whole instances";
    for (int t = 0; !why && t < x->n_targets; t++) {
        int d = x->target_tp[t];
        if (d < 1 || d > PT_COST_MAX_TP || !s->m->tp[d].valid || pt_cost_instance_pages(s->m, d) == 0)
            why = "a target degree is not modelled or its weights do not fit";
        else if ((x->first_device + sum) % d != 0)
            why = "a target is not aligned to its degree";
        sum += d;
    }
    if (!why && (x->n_targets < 1 || sum != x->n_devices)) why = "its targets do not cover the range";
    if (why) {
        s->res->n_invalid_plans++;
        fprintf(stderr, "proteus simulate: t=%.3f: ignored a %s plan on devices [%d, %d): %s\n", s->now,
                x->kind == PT_SCHED_XFORM_MERGE ? "merge" : "split", x->first_device, end, why);
        pt_sched_xform_done(s->sch, s->now, false);
        return false;
    }
    s->xf = *x;
    s->xf_lo = lo;
    s->xf_hi = hi;
    s->xf_phase = XF_PRECOPY;
    double pre = x->cost.total_s - x->cost.pause_s;
    s->xf_precopy_end = s->now + (pre > 0 ? pre : 0);
    for (int i = lo; i < hi; i++) {
        s->inst[i].transforming = true;
        s->inst[i].view_dirty = true;
    }
    if (s->o->verbose) fprintf(stderr, "proteus simulate: t=%.3f start: %s\n", s->now, x->text);
    layout_sample(s);
    changed(s);
    return true;
}

typedef struct {
    uint32_t id;
    double key;
    uint64_t tie;
} sort_item;

static int cmp_item(const void *a, const void *b) {
    const sort_item *x = a, *y = b;
    if (x->key != y->key) return x->key < y->key ? -1 : 1;
    return (x->tie > y->tie) - (x->tie < y->tie);
}

/* Sources [xf_lo, xf_hi) are paused; the targets replace them. */
static void xform_commit(sim *s) {
    int lo = s->xf_lo, hi = s->xf_hi, nt = s->xf.n_targets;
    /* Everything the sources hold. */
    size_t n_run = 0, n_q = 0;
    for (int i = lo; i < hi; i++) {
        n_run += s->inst[i].n_run;
        n_q += s->inst[i].q.n;
    }
    sort_item *run = xrealloc(NULL, n_run + 1, sizeof(*run));
    sort_item *queued = xrealloc(NULL, n_q + 1, sizeof(*queued));
    pt_sched_req *qviews = xrealloc(NULL, n_q + 1, sizeof(*qviews));
    size_t kr = 0, kq = 0;
    for (int i = lo; i < hi; i++) {
        sinst *in = &s->inst[i];
        for (size_t j = 0; j < in->n_run; j++) {
            uint32_t id = in->run[j];
            const sreq *r = &s->reqs[id];
            /* One target: arrival order (the newest are preempted past max_seqs);
             * several: longest first, each to the least-filled target. */
            run[kr++] = nt == 1 ? (sort_item){id, s->res->recs[id].t_sent, id} : (sort_item){id, -(double)r->ctx, id};
        }
        for (size_t j = 0; j < in->q.n; j++) {
            qviews[kq] = in->q.buf[in->q.head + j];
            queued[kq] = (sort_item){(uint32_t)kq, qviews[kq].arrival, kq};
            kq++;
        }
    }
    qsort(run, n_run, sizeof(*run), cmp_item);
    qsort(queued, n_q, sizeof(*queued), cmp_item); /* stable by the tie: merged FCFS by arrival */

    sinst *tg = xrealloc(NULL, (size_t)nt, sizeof(sinst));
    int dev = s->xf.first_device;
    for (int t = 0; t < nt; t++) {
        inst_init(s, &tg[t], dev, s->xf.target_tp[t]);
        tg[t].transforming = false;
        dev += s->xf.target_tp[t];
    }
    /* A request goes only to a target that holds it whole (prompt +
     * max_tokens, as the scheduler counts); one that no target holds (placed
     * on a source while the split was under way) goes back to the
     * scheduler, held. Running requests keep their KV (moved, not
     * recomputed) where a target has room now, else they wait at the front
     * of a target's queue (recomputed). */
    uint32_t *bumped = xrealloc(NULL, n_run + 1, sizeof(uint32_t));
    uint32_t *returned = xrealloc(NULL, n_run + n_q + 1, sizeof(uint32_t));
    size_t n_bumped = 0, n_returned = 0, n_moved = 0;
    for (size_t j = 0; j < n_run; j++) {
        uint32_t id = run[j].id;
        sreq *r = &s->reqs[id];
        uint64_t p = seq_pages(s, r->ctx), whole = seq_pages(s, (uint64_t)r->prompt + r->max_tokens);
        int best = -1, least = -1;
        for (int t = 0; t < nt; t++) {
            if (tg[t].pages_total < whole) continue;
            if (least < 0 || tg[t].pages_used < tg[least].pages_used) least = t;
            if (tg[t].n_run >= s->o->max_seqs || tg[t].pages_total - tg[t].pages_used < p) continue;
            if (best < 0 || tg[t].pages_used < tg[best].pages_used) best = t;
        }
        if (best >= 0) {
            r->pages = p;
            r->inst = best; /* renumbered below */
            tg[best].pages_used += p;
            run_insert(s, &tg[best], id);
            n_moved++;
            continue;
        }
        r->pages = 0;
        r->ctx = 0;
        s->res->preemptions++;
        if (least >= 0) {
            r->inst = least;
            r->state = RS_QUEUED;
            bumped[n_bumped++] = id;
        } else {
            returned[n_returned++] = id;
        }
    }
    /* Queued ones: to the target with the least work (pages in use and owed). */
    uint64_t load[PT_SCHED_MAX_DEVICES];
    for (int t = 0; t < nt; t++) load[t] = tg[t].pages_used;
    for (size_t j = 0; j < n_bumped; j++) load[s->reqs[bumped[j]].inst] += seq_pages(s, s->reqs[bumped[j]].prompt);
    for (size_t j = n_bumped; j-- > 0;) { /* front of the queue, in their order */
        const sreq *r = &s->reqs[bumped[j]];
        pt_sched_req v = req_view(s, bumped[j], 0, r->gen);
        q_push_front(&tg[r->inst].q, &v);
    }
    for (size_t j = 0; j < n_q; j++) {
        const pt_sched_req *v = &qviews[queued[j].id];
        uint64_t whole = seq_pages(s, (uint64_t)v->prompt_len + v->max_tokens);
        int best = -1;
        for (int t = 0; t < nt; t++)
            if (tg[t].pages_total >= whole && (best < 0 || load[t] < load[best])) best = t;
        if (best < 0) {
            returned[n_returned++] = (uint32_t)v->id;
            continue;
        }
        load[best] += seq_pages(s, v->prompt_len + v->generated);
        s->reqs[v->id].inst = best;
        q_push_back(&tg[best].q, v);
    }
    /* Back to the scheduler, in arrival order among the held. */
    for (size_t j = 0; j < n_returned; j++) {
        uint32_t id = returned[j];
        sreq *r = &s->reqs[id];
        r->state = RS_HELD;
        r->inst = -1;
        r->held_since = s->now;
        if (!r->was_held) s->res->held_requests++;
        r->was_held = true;
        pt_sched_req v = req_view(s, id, 0, r->gen);
        size_t pos = s->n_held;
        while (pos > 0 && (s->held[pos - 1].arrival > v.arrival ||
                           (s->held[pos - 1].arrival == v.arrival && s->held[pos - 1].id > v.id)))
            pos--;
        held_insert(s, pos, &v);
        s->res->xform_returned++;
    }
    free(run);
    free(queued);
    free(qviews);
    free(bumped);
    free(returned);

    /* The targets replace the sources in the instance array. */
    for (int i = lo; i < hi; i++) inst_free(&s->inst[i]);
    int ns = hi - lo, shift = nt - ns;
    memmove(&s->inst[hi + shift], &s->inst[hi], (size_t)(s->n_inst - hi) * sizeof(sinst));
    memcpy(&s->inst[lo], tg, (size_t)nt * sizeof(sinst));
    free(tg);
    s->n_inst += shift;
    for (int i = 0; i < s->n_inst; i++) {
        sinst *in = &s->inst[i];
        in->view_dirty = true;
        for (size_t j = 0; j < in->n_run; j++) s->reqs[in->run[j]].inst = i;
        for (size_t j = 0; j < in->q.n; j++) s->reqs[in->q.buf[in->q.head + j].id].inst = i;
    }

    double pause = s->now - s->xf_first_stop;
    pt_sim_result *res = s->res;
    if (s->xf.kind == PT_SCHED_XFORM_MERGE) res->n_merge++;
    else if (s->xf.kind == PT_SCHED_XFORM_SPLIT) res->n_split++;
    else res->n_other++;
    res->pause_sum_s += pause;
    if (pause > res->pause_max_s) res->pause_max_s = pause;
    res->bytes_moved += s->xf.cost.bytes_moved;
    s->xf_phase = XF_NONE;
    pt_sched_xform_done(s->sch, s->now, true);
    if (s->o->verbose)
        fprintf(stderr, "proteus simulate: t=%.3f commit (pause %.1f ms, %zu running moved, %zu requeued, %zu back to the "
                "scheduler)\n", s->now, pause * 1e3, n_moved, n_bumped, n_returned);
    layout_sample(s);
    s->force_plan = true;
    changed(s);
}

static void xform_advance(sim *s) {
    if (s->xf_phase == XF_PRECOPY && s->now >= s->xf_precopy_end) {
        s->xf_phase = XF_STOPPING;
        s->xf_first_stop = INFINITY;
        for (int i = s->xf_lo; i < s->xf_hi; i++) {
            sinst *in = &s->inst[i];
            in->stopping = true;
            if (in->busy) inst_interrupt(s, in);
            else if (s->xf_first_stop > s->now) s->xf_first_stop = s->now;
        }
    }
    if (s->xf_phase == XF_STOPPING) {
        bool all = true;
        for (int i = s->xf_lo; i < s->xf_hi; i++) all &= !s->inst[i].busy;
        if (all) {
            s->xf_phase = XF_PAUSE;
            s->xf_commit = s->now + (s->xf.cost.pause_s > 0 ? s->xf.cost.pause_s : 0);
        }
    }
    if (s->xf_phase == XF_PAUSE && s->now >= s->xf_commit) xform_commit(s);
}

/* ---- the loop ---- */

static bool layout_is_initial(const sim *s) {
    if (s->n_inst != s->n_initial) return false;
    for (int i = 0; i < s->n_inst; i++)
        if (s->inst[i].tp != s->initial[i]) return false;
    return true;
}

static bool merged_present(const sim *s) {
    for (int i = 0; i < s->n_inst; i++)
        if (s->inst[i].tp > s->min_tp) return true;
    return false;
}

/* Drain: after the last request, the layout may still settle (a split after
 * hysteresis); the run goes on until it is back to the initial one or the
 * drain time is over. */
static double drain_end(const sim *s) {
    if (s->o->drain_s < 0 || s->o->sched.policy != PT_SCHED_DYNAMIC) return -INFINITY;
    double d = s->o->drain_s > 0 ? s->o->drain_s : s->o->sched.hysteresis_s + 60;
    return s->last_terminal + d;
}

static double plan_due(const sim *s) {
    double gap = s->o->plan_interval_s > 0 ? s->o->plan_interval_s : 0.02;
    double tick = s->o->tick_s > 0 ? s->o->tick_s : 1;
    if (s->force_plan) return s->now;
    if (s->dirty) return s->last_plan + gap;
    /* Without events the scheduler must still see time pass: a merged
     * instance splits after hysteresis, a held request may need a merge. */
    if (s->o->sched.policy == PT_SCHED_DYNAMIC && (merged_present(s) || s->n_held)) return s->last_plan + tick;
    return INFINITY;
}

static void queue_sample(sim *s) {
    uint32_t waiting = (uint32_t)s->n_held, running = 0;
    for (int i = 0; i < s->n_inst; i++) {
        waiting += (uint32_t)s->inst[i].q.n;
        running += (uint32_t)s->inst[i].n_run;
    }
    if (s->res->n_queue && waiting == s->q_waiting && running == s->q_running) return;
    s->q_waiting = waiting;
    s->q_running = running;
    pt_sim_result *res = s->res;
    if (res->n_queue && res->queue[res->n_queue - 1].t == s->now) res->n_queue--;
    if (res->n_queue == s->cap_queue) {
        s->cap_queue = s->cap_queue ? s->cap_queue * 2 : 256;
        res->queue = xrealloc(res->queue, s->cap_queue, sizeof(*res->queue));
    }
    res->queue[res->n_queue++] = (pt_sim_queue_sample){s->now, waiting, running};
}

void pt_sim_result_free(pt_sim_result *r) {
    if (!r) return;
    pt_bench_records_free(r->recs, r->n);
    free(r->layouts);
    free(r->queue);
    memset(r, 0, sizeof(*r));
}

int pt_sim_run(pt_sim_result *res, const pt_sim_opts *o_in, const pt_cost_model *m, int n_devices,
               const pt_replay_req *reqs, size_t n, pt_err *err) {
    memset(res, 0, sizeof(*res));
    double wall0 = pt_now();
    if (n_devices < 1 || n_devices > PT_SCHED_MAX_DEVICES)
        return pt_err_set(err, PT_ERR_INVALID, "the cluster has %d devices (1 to %d)", n_devices, PT_SCHED_MAX_DEVICES);
    pt_sim_opts o = *o_in;
    if (!o.max_seqs) o.max_seqs = 256;
    if (!o.max_batched_tokens) o.max_batched_tokens = 8192;
    o.sched.prefill_chunk = o.max_batched_tokens;

    sim *s = calloc(1, sizeof(*s));
    if (!s) return pt_err_set(err, PT_ERR_NOMEM, "out of memory");
    s->o = &o;
    s->m = m;
    s->n_devices = n_devices;
    s->in = reqs;
    s->n = n;
    s->res = res;
    int rc = pt_sched_create(&s->sch, &o.sched, m, err);
    if (rc) {
        free(s);
        return rc;
    }
    /* The starting layout. */
    int tp[PT_SCHED_MAX_DEVICES];
    int n_inst = 0;
    if (o.n_layout > 0) {
        memcpy(tp, o.layout, (size_t)o.n_layout * sizeof(int));
        n_inst = o.n_layout;
    } else if (o.sched.policy == PT_SCHED_DYNAMIC) {
        n_inst = pt_sched_initial_layout(s->sch, n_devices, tp);
    } else {
        n_inst = pt_sim_default_layout(m, &o.sched, n_devices, tp);
    }
    if (n_inst <= 0) rc = pt_err_set(err, PT_ERR_INVALID, "no allowed TP degree fits the model on these devices");
    else rc = pt_sim_check_layout(m, &o.sched, n_devices, tp, n_inst, err);
    if (rc) {
        pt_sched_free(s->sch);
        free(s);
        return rc;
    }
    s->min_tp = INT32_MAX;
    for (int i = 0, dev = 0; i < n_inst; dev += tp[i], i++) {
        inst_init(s, &s->inst[i], dev, tp[i]);
        s->initial[i] = tp[i];
        if (tp[i] < s->min_tp) s->min_tp = tp[i];
    }
    s->n_inst = s->n_initial = n_inst;

    res->n = n;
    res->recs = calloc(n ? n : 1, sizeof(pt_bench_record));
    s->reqs = calloc(n ? n : 1, sizeof(sreq));
    if (!res->recs || !s->reqs) {
        free(s->reqs);
        pt_sched_free(s->sch);
        free(s);
        free(res->recs);
        res->recs = NULL;
        return pt_err_set(err, PT_ERR_NOMEM, "out of memory for %zu requests", n);
    }
    for (size_t i = 0; i < n; i++) {
        sreq *r = &s->reqs[i];
        r->prompt = reqs[i].input_len ? reqs[i].input_len : 1;
        r->max_tokens = reqs[i].output_len ? reqs[i].output_len : 1;
        r->inst = -1;
        r->warmup = reqs[i].warmup;
        if (r->warmup) s->n_warm = i + 1;
        pt_bench_record *rec = &res->recs[i];
        rec->index = (uint32_t)i;
        rec->warmup = r->warmup;
        rec->t_first = -1;
        rec->input_tokens = r->prompt;
        rec->expected_output = reqs[i].output_len;
    }
    s->last_plan = -INFINITY;
    layout_sample(s);

    for (;;) {
        /* The next event. */
        double t = client_next(s);
        for (int i = 0; i < s->n_inst; i++)
            if (s->inst[i].busy && s->inst[i].bt[s->inst[i].K - 1] < t) t = s->inst[i].bt[s->inst[i].K - 1];
        if (s->xf_phase == XF_PRECOPY && s->xf_precopy_end < t) t = s->xf_precopy_end;
        if (s->xf_phase == XF_PAUSE && s->xf_commit < t) t = s->xf_commit;
        bool all_done = s->n_terminal == s->n;
        double pd = plan_due(s);
        if (all_done && s->xf_phase == XF_NONE && (layout_is_initial(s) || s->now >= drain_end(s))) break;
        /* A held request that no layout ever serves: stop ticking for it
         * after a long quiet time and fail it. */
        bool quiet = t == INFINITY && s->xf_phase == XF_NONE;
        if (quiet && !all_done && s->now - s->last_change > 3600 + 2 * o.sched.hysteresis_s) break;
        if (pd < t) t = pd < s->now ? s->now : pd;
        if (t == INFINITY) break;
        s->now = t;
        res->events++;

        for (int i = 0; i < s->n_inst; i++)
            if (s->inst[i].busy && s->inst[i].bt[s->inst[i].K - 1] <= s->now) inst_commit(s, i);
        xform_advance(s);
        client_send_due(s);
        if (s->now >= plan_due(s)) {
            if (s->n_held) held_reoffer(s);
            pt_sched_xform x;
            memset(&x, 0, sizeof(x));
            pt_sched_plan(s->sch, state_get(s), &x);
            s->last_plan = s->now;
            s->dirty = false;
            s->force_plan = false;
            if (x.kind != PT_SCHED_XFORM_NONE) {
                if (s->xf_phase != XF_NONE) {
                    s->res->n_invalid_plans++;
                    fprintf(stderr, "proteus simulate: t=%.3f: ignored a plan while a transformation is in flight\n",
                            s->now);
                } else {
                    xform_start(s, &x);
                }
            }
            xform_advance(s); /* a transformation with no pre-copy stops its sources now */
        }
        for (int i = 0; i < s->n_inst; i++) inst_start(s, i);
        if (s->xf_phase == XF_STOPPING) xform_advance(s);
        queue_sample(s);
    }
    /* Whatever is left was never served: held for a layout that never came
     * (or the run stopped waiting for it). */
    for (size_t i = 0; i < n; i++) {
        sreq *r = &s->reqs[i];
        if (r->state == RS_DONE) continue;
        pt_bench_record *rec = &res->recs[i];
        if (i >= s->next) rec->t_sent = rec->t_scheduled = sched_time(s, i);
        rec->ok = false;
        rec->status = 503;
        rec->t_end = s->now;
        rec->output_tokens = r->gen;
        rec->error = pt_xstrdup(r->state == RS_HELD ? "held: no layout served it" : "never served");
        res->unserved++;
    }
    pt_sched_get_stats(s->sch, &res->stats);
    res->t_end = s->now;
    /* Measured time starts when the measured schedule does. */
    if (s->offset != 0) {
        double off = s->offset;
        for (size_t i = 0; i < n; i++) {
            pt_bench_record *rec = &res->recs[i];
            rec->t_scheduled -= off;
            rec->t_sent -= off;
            if (rec->t_first >= 0) rec->t_first -= off; /* a warmup's may turn negative: it is not reported */
            rec->t_end -= off;
            for (size_t j = 0; j < rec->n_token_times; j++) rec->token_times[j] -= off;
        }
        for (size_t i = 0; i < res->n_layouts; i++) res->layouts[i].t -= off;
        for (size_t i = 0; i < res->n_queue; i++) res->queue[i].t -= off;
        res->t_end -= off;
    }
    for (int i = 0; i < s->n_inst; i++) {
        res->end_pages_used += s->inst[i].pages_used;
        res->end_requests_left += s->inst[i].n_run + s->inst[i].q.n;
        inst_free(&s->inst[i]);
    }
    res->end_requests_left += s->n_held;
    free(s->held);
    free(s->reqs);
    pt_sched_free(s->sch);
    free(s);
    res->wall_s = pt_now() - wall0;
    return 0;
}
