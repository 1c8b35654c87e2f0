/* The scheduler's policies (scheduler.h).
 *
 * Estimates, all from the cost model:
 *   TTFT of r on instance i = time r has waited
 *                           + the prefill work queued ahead of it on i (or, when
 *                             i lacks the pages, the time until enough of its
 *                             running requests finish, if that is longer)
 *                           + r's own prefill,
 *   each prefill step slowed by the decodes running beside it.
 *   TPOT of a running request = its decode time so far plus its remaining
 *   tokens at the instance's current step time, over its tokens.
 * They are estimates for ranking and for SLO checks, not promises. */
#include "scheduler/scheduler.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NOT_SEEN (-1.0)

/* What the estimates need of one instance, computed once per state. */
typedef struct {
    double dec, extra;       /* its decode step now; what that adds to a prefill step */
    double ahead;            /* prefill work queued or in progress there */
    uint64_t pages_ahead;    /* pages its queued requests will hold */
    double *finish;          /* (n) when each running request ends, ascending */
    uint64_t *freed;         /* (n) pages free once finish[0..k] ended, on top of pages_free */
    size_t n, cap;
} inst_view;

struct pt_scheduler {
    pt_sched_opts o;
    pt_cost_model m;
    pt_sched_stats stats;
    /* Hysteresis per instance, keyed by its first device: since when the
     * instance there (of degree over_tp) has had nothing that needs its degree. */
    double over_since[PT_SCHED_MAX_DEVICES];
    int over_tp[PT_SCHED_MAX_DEVICES];
    double last_xform_end;     /* NOT_SEEN before the first */
    /* The last declined transformation, so that a decline repeated at
     * every call is counted (and logged by the caller) once. */
    int declined_first, declined_n, declined_reason;
    uint32_t declined_helped, declined_hurt;
    inst_view view[PT_SCHED_MAX_DEVICES]; /* estimates' inputs per instance (views()) */
    uint64_t views_key;
    bool views_valid;
};

static const struct {
    const char *name, *decision;
} REASONS[PT_SCHED_N_REASONS] = {
    [PT_SCHED_R_LEAST_LOADED] = {"least_loaded", "place"},
    [PT_SCHED_R_LONG_TO_MERGED] = {"long_to_merged", "place"},
    [PT_SCHED_R_OVERFLOW] = {"overflow", "place"},
    [PT_SCHED_R_HOLD_FOR_MERGE] = {"hold_for_merge", "hold"},
    [PT_SCHED_R_REJECT_TOO_LONG] = {"too_long", "reject"},
    [PT_SCHED_R_REJECT_BUSY] = {"queues_full", "reject"},
    [PT_SCHED_R_MERGE_CANNOT_FIT] = {"cannot_fit", "merge"},
    [PT_SCHED_R_MERGE_SLO] = {"slo", "merge"},
    [PT_SCHED_R_SPLIT_IDLE] = {"not_needed", "split"},
    [PT_SCHED_R_NO_XFORM_PAUSE] = {"pause_breaks_more_slos", "no_transformation"},
    [PT_SCHED_R_NO_XFORM_BUSY] = {"transformation_in_flight", "no_transformation"},
    [PT_SCHED_R_PREEMPT_NEWEST] = {"newest", "preempt"},
    [PT_SCHED_R_PREEMPT_MOVABLE] = {"newest_movable", "preempt"},
};

const char *pt_sched_reason_name(pt_sched_reason r) {
    return r >= 0 && r < PT_SCHED_N_REASONS ? REASONS[r].name : "unknown";
}

const char *pt_sched_reason_decision(pt_sched_reason r) {
    return r >= 0 && r < PT_SCHED_N_REASONS ? REASONS[r].decision : "unknown";
}

int pt_sched_create(pt_scheduler **out, const pt_sched_opts *o, const pt_cost_model *m, pt_err *err) {
    *out = NULL;
    if (!o || !m) return pt_err_set(err, PT_ERR_INVALID, "scheduler: NULL options or cost model");
    if (o->slo.ttft_s < 0 || o->slo.tpot_s < 0 || !isfinite(o->slo.ttft_s) || !isfinite(o->slo.tpot_s))
        return pt_err_set(err, PT_ERR_INVALID, "scheduler: SLOs must be >= 0 (0 = not set)");
    if (o->hysteresis_s < 0 || !isfinite(o->hysteresis_s))
        return pt_err_set(err, PT_ERR_INVALID, "scheduler: hysteresis_s must be >= 0");
    if (o->n_allowed < 1 || o->n_allowed > 8)
        return pt_err_set(err, PT_ERR_INVALID, "scheduler: allowed_tp must list 1 to 8 degrees");
    int n_modelled = 0;
    for (int i = 0; i < o->n_allowed; i++) {
        int d = o->allowed_tp[i];
        if (d < 1 || d > PT_COST_MAX_TP || (d & (d - 1)) != 0 || (i > 0 && d <= o->allowed_tp[i - 1]))
            return pt_err_set(err, PT_ERR_INVALID,
                              "scheduler: allowed_tp must be ascending powers of two in [1, %d]; %d is not",
                              PT_COST_MAX_TP, d);
        n_modelled += m->tp[d].valid;
    }
    if (n_modelled == 0)
        return pt_err_set(err, PT_ERR_INVALID, "scheduler: the cost model has none of the allowed TP degrees "
                                               "(the model's weights fit none of them)");
    pt_scheduler *s = calloc(1, sizeof(*s));
    if (!s) return pt_err_set(err, PT_ERR_NOMEM, "scheduler: out of memory");
    s->o = *o;
    s->m = *m;
    s->last_xform_end = NOT_SEEN;
    s->declined_first = -1;
    for (int i = 0; i < PT_SCHED_MAX_DEVICES; i++) s->over_since[i] = NOT_SEEN;
    *out = s;
    return 0;
}

void pt_sched_free(pt_scheduler *s) {
    if (!s) return;
    for (int i = 0; i < PT_SCHED_MAX_DEVICES; i++) {
        free(s->view[i].finish);
        free(s->view[i].freed);
    }
    free(s);
}
const pt_sched_opts *pt_sched_get_opts(const pt_scheduler *s) { return &s->o; }
const pt_cost_model *pt_sched_get_cost(const pt_scheduler *s) { return &s->m; }
void pt_sched_get_stats(const pt_scheduler *s, pt_sched_stats *out) { *out = s->stats; }

static bool modelled(const pt_scheduler *s, int d) { return d >= 1 && d <= PT_COST_MAX_TP && s->m.tp[d].valid; }

int pt_sched_initial_layout(const pt_scheduler *s, int n_devices, int *tp_out) {
    for (int i = 0; i < s->o.n_allowed; i++) {
        int d = s->o.allowed_tp[i];
        if (!modelled(s, d) || d > n_devices || n_devices % d != 0 || pt_cost_instance_pages(&s->m, d) == 0)
            continue;
        for (int k = 0; k < n_devices / d; k++) tp_out[k] = d;
        return n_devices / d;
    }
    return 0;
}

static uint64_t req_tokens(const pt_sched_req *r) { return (uint64_t)r->prompt_len + r->max_tokens; }
static uint64_t req_pages(const pt_scheduler *s, const pt_sched_req *r) {
    return pt_cost_seq_pages(&s->m, req_tokens(r));
}

int pt_sched_need_tp(const pt_scheduler *s, const pt_sched_req *r) {
    if (s->m.max_ctx && req_tokens(r) > s->m.max_ctx) return 0;
    int fits = 0;
    for (int i = 0; i < s->o.n_allowed; i++) {
        int d = s->o.allowed_tp[i];
        if (!modelled(s, d) || req_pages(s, r) > pt_cost_instance_pages(&s->m, d)) continue;
        fits = d;
        if (s->o.slo.ttft_s <= 0 || pt_cost_prefill(&s->m, d, r->prompt_len, s->o.prefill_chunk) <= s->o.slo.ttft_s)
            return d;
    }
    return fits;
}

/* The degree r needs on st's devices. A degree wanted only for speed (its
 * TTFT) is capped at half the devices: the merge would otherwise take the
 * whole cluster into one queue, where every short request waits behind the
 * long prefills (the other half keeps serving them); a degree its pages
 * need is not capped. */
static int need_on(const pt_scheduler *s, const pt_sched_state *st, const pt_sched_req *r) {
    int d = pt_sched_need_tp(s, r), half = st->n_devices / 2;
    if (d <= half || d <= 1) return d;
    int capped = 0;
    for (int a = 0; a < s->o.n_allowed; a++) {
        int c = s->o.allowed_tp[a];
        if (c > half || !modelled(s, c) || req_pages(s, r) > pt_cost_instance_pages(&s->m, c)) continue;
        capped = c; /* the largest that holds it, up to half */
    }
    return capped ? capped : d;
}

/* ---- estimates ---- */

/* The step time of the decodes running on `in` now (0 when none decodes). */
static double decode_step(const pt_scheduler *s, const pt_sched_instance *in) {
    pt_step_shape sh = {0};
    for (size_t k = 0; k < in->n_running; k++) {
        const pt_sched_req *r = &in->running[k];
        if (r->prefilled >= r->prompt_len) pt_cost_shape_add(&sh, (uint64_t)r->prompt_len + r->generated, 1);
    }
    double t = pt_cost_step(&s->m, in->tp, &sh);
    return t > 0 ? t : 0.0;
}

/* Prefilling `tokens` more of a prompt of which `done` are computed, beside
 * decodes that add `extra_s` to each step. */
static double prefill_beside(const pt_scheduler *s, int tp, uint64_t done, uint64_t tokens, double extra_s) {
    if (tokens == 0) return 0.0;
    uint64_t chunk = s->o.prefill_chunk ? s->o.prefill_chunk : tokens;
    double t = 0.0;
    for (uint64_t k = 0; k < tokens; k += chunk) {
        pt_step_shape sh = {0};
        pt_cost_shape_add(&sh, done + k, tokens - k < chunk ? tokens - k : chunk);
        t += pt_cost_step(&s->m, tp, &sh) + extra_s;
    }
    return t;
}

/* What a step's decodes add to a prefill step on `in`. */
static double decode_extra(const pt_scheduler *s, const pt_sched_instance *in, double dec) {
    double extra = dec - s->m.tp[in->tp].fixed_s;
    return extra > 0 ? extra : 0.0;
}

typedef struct {
    double finish;
    uint64_t pages;
} ending;

static int cmp_ending(const void *a, const void *b) {
    double x = ((const ending *)a)->finish, y = ((const ending *)b)->finish;
    return (x > y) - (x < y);
}

static void view_build(const pt_scheduler *s, const pt_sched_instance *in, inst_view *v) {
    v->dec = decode_step(s, in);
    v->extra = decode_extra(s, in, v->dec);
    v->ahead = 0.0;
    v->pages_ahead = 0;
    for (size_t k = 0; k < in->n_running; k++) {
        const pt_sched_req *q = &in->running[k];
        if (q->prefilled < q->prompt_len)
            v->ahead += prefill_beside(s, in->tp, q->prefilled, q->prompt_len - q->prefilled, v->extra);
    }
    for (size_t k = 0; k < in->n_queued; k++) {
        const pt_sched_req *q = &in->queued[k];
        v->ahead += prefill_beside(s, in->tp, q->prefilled, q->prompt_len - q->prefilled, v->extra);
        v->pages_ahead += req_pages(s, q);
    }
    v->n = 0;
    if (in->n_running > v->cap) {
        size_t cap = in->n_running * 2;
        double *f = realloc(v->finish, cap * sizeof(*f));
        if (f) v->finish = f;
        uint64_t *p = f ? realloc(v->freed, cap * sizeof(*p)) : NULL;
        if (p) v->freed = p;
        if (!f || !p) return; /* no list: a wait for pages counts as endless */
        v->cap = cap;
    }
    ending *e = malloc((in->n_running ? in->n_running : 1) * sizeof(*e));
    if (!e) return;
    for (size_t k = 0; k < in->n_running; k++) {
        const pt_sched_req *r = &in->running[k];
        uint32_t left = r->max_tokens > r->generated ? r->max_tokens - r->generated : 0;
        e[k] = (ending){left * v->dec, pt_cost_seq_pages(&s->m, (uint64_t)r->prompt_len + r->generated)};
    }
    qsort(e, in->n_running, sizeof(*e), cmp_ending);
    uint64_t freed = 0;
    for (size_t k = 0; k < in->n_running; k++) {
        freed += e[k].pages;
        v->finish[k] = e[k].finish;
        v->freed[k] = freed;
    }
    v->n = in->n_running;
    free(e);
}

/* The views of st's instances. They are kept while the state looks the same
 * (same time, arrays, counts and free pages), so that offering many held
 * requests in a row costs one pass over the instances' requests. */
static const inst_view *views(pt_scheduler *s, const pt_sched_state *st) {
    uint64_t key = 1469598103934665603ull; /* FNV-1a over what identifies the state */
#define MIX(x) key = (key ^ (uint64_t)(x)) * 1099511628211ull
    uint64_t now_bits;
    memcpy(&now_bits, &st->now, sizeof(now_bits));
    MIX(now_bits);
    MIX(st->n_inst);
    MIX((uintptr_t)st->inst);
    for (int i = 0; i < st->n_inst; i++) {
        const pt_sched_instance *in = &st->inst[i];
        MIX(in->tp);
        MIX(in->first_device);
        MIX((uintptr_t)in->running);
        MIX(in->n_running);
        MIX((uintptr_t)in->queued);
        MIX(in->n_queued);
        MIX(in->pages_free);
        MIX(in->pages_total);
    }
#undef MIX
    if (!s->views_valid || key != s->views_key) {
        for (int i = 0; i < st->n_inst && i < PT_SCHED_MAX_DEVICES; i++) view_build(s, &st->inst[i], &s->view[i]);
        s->views_key = key;
        s->views_valid = true;
    }
    return s->view;
}

/* Seconds until `in` has `pages` free, as its running requests end in the
 * order of their remaining tokens; INFINITY when all of them ending is not
 * enough. */
static double wait_for_pages(const pt_sched_instance *in, const inst_view *v, uint64_t pages) {
    if (in->pages_free >= pages) return 0.0;
    if (in->pages_total < pages) return INFINITY;
    uint64_t deficit = pages - in->pages_free;
    for (size_t k = 0; k < v->n; k++)
        if (v->freed[k] >= deficit) return v->finish[k];
    return INFINITY;
}

/* Estimated TTFT of r (not yet on any instance) if placed on in now: its
 * prompt's cached prefix there is not computed again (prefix-aware routing:
 * of two instances equally loaded, the one holding more of the prompt). */
static double est_ttft(const pt_scheduler *s, const pt_sched_state *st, const pt_sched_instance *in,
                       const inst_view *v, const pt_sched_req *r) {
    double mem = wait_for_pages(in, v, v->pages_ahead + req_pages(s, r));
    uint32_t done = r->prefilled;
    if (in->cached > done) done = in->cached < r->prompt_len ? in->cached : r->prompt_len - 1;
    double own = prefill_beside(s, in->tp, done, r->prompt_len - done, v->extra);
    double waited = st->now > r->arrival ? st->now - r->arrival : 0.0;
    return waited + (mem > v->ahead ? mem : v->ahead) + own;
}

static bool holds(const pt_scheduler *s, const pt_sched_instance *in, const pt_sched_req *r) {
    return modelled(s, in->tp) && in->pages_total >= req_pages(s, r);
}

static bool accepts(const pt_sched_instance *in) { return !in->max_queued || in->n_queued < in->max_queued; }

/* Whether an instance holds r but every one that does has a full queue. */
static bool only_full_queues(const pt_scheduler *s, const pt_sched_state *st, const pt_sched_req *r) {
    bool held = false;
    for (int i = 0; i < st->n_inst; i++) {
        if (!holds(s, &st->inst[i], r)) continue;
        if (accepts(&st->inst[i])) return false;
        held = true;
    }
    return held;
}

static bool meets_ttft(const pt_scheduler *s, double ttft) { return s->o.slo.ttft_s <= 0 || ttft <= s->o.slo.ttft_s; }

static uint32_t load_of(const pt_sched_instance *in) { return (uint32_t)(in->n_running + in->n_queued); }

/* ---- (a) placement ---- */

static void place_done(pt_scheduler *s, const pt_sched_req *r, pt_sched_placement *out, pt_sched_place_kind kind,
                       int inst, pt_sched_reason reason) {
    out->kind = kind;
    out->instance = inst;
    out->reason = reason;
    if (kind != PT_SCHED_HOLD || !r->held_before) s->stats.by_reason[reason]++;
}

/* The best instance of degree `tp` for r (-1 when none holds it), and its estimate. */
static int best_of_degree(pt_scheduler *s, const pt_sched_state *st, const pt_sched_req *r, int tp, double *ttft) {
    const inst_view *v = views(s, st);
    int best = -1;
    for (int i = 0; i < st->n_inst; i++) {
        const pt_sched_instance *in = &st->inst[i];
        if ((tp > 0 && in->tp != tp) || !holds(s, in, r) || !accepts(in)) continue;
        double t = est_ttft(s, st, in, &v[i], r);
        if (best < 0 || t < *ttft || (t == *ttft && load_of(in) < load_of(&st->inst[best]))) {
            best = i;
            *ttft = t;
        }
    }
    return best;
}

/* Whether a merge to an instance of degree >= need, started now, would
 * still give r its TTFT (the merged instance is assumed idle). */
static bool merge_would_meet(const pt_scheduler *s, const pt_sched_state *st, const pt_sched_req *r, int need) {
    if (s->o.slo.ttft_s <= 0) return false;
    pt_xform_cost c;
    pt_cost_xform(&s->m, need, 1, need, 0, 0, &c);
    double waited = st->now > r->arrival ? st->now - r->arrival : 0.0;
    return waited + c.total_s + pt_cost_prefill(&s->m, need, r->prompt_len, s->o.prefill_chunk) <= s->o.slo.ttft_s;
}

static int smallest_degree(const pt_scheduler *s) {
    for (int a = 0; a < s->o.n_allowed; a++)
        if (modelled(s, s->o.allowed_tp[a])) return s->o.allowed_tp[a];
    return 0;
}

static bool mergeable_range(const pt_sched_state *st, int first, int d, int *lo, int *hi);

/* Whether some aligned range could be merged into a new instance of degree `need`. */
static bool can_merge_to(const pt_scheduler *s, const pt_sched_state *st, int need) {
    int lo, hi;
    if (!modelled(s, need)) return false;
    for (int first = 0; first + need <= st->n_devices; first += need)
        if (mergeable_range(st, first, need, &lo, &hi)) return true;
    return false;
}

/* Whether r needs degree `need` for its pages (no smaller allowed degree holds them). */
static bool need_by_pages(const pt_scheduler *s, const pt_sched_req *r, int need) {
    for (int a = 0; a < s->o.n_allowed; a++) {
        int d = s->o.allowed_tp[a];
        if (d < need && modelled(s, d) && req_pages(s, r) <= pt_cost_instance_pages(&s->m, d)) return false;
    }
    return need > smallest_degree(s);
}

static void describe(const pt_sched_state *st, int i, char *buf, size_t n) {
    if (i < 0) {
        snprintf(buf, n, "-");
        return;
    }
    const pt_sched_instance *in = &st->inst[i];
    int k = snprintf(buf, n, "instance %d [TP%d on devices %d-%d]", i, in->tp, in->first_device,
                     in->first_device + in->tp - 1);
    if (in->cached && k > 0 && (size_t)k < n) snprintf(buf + k, n - (size_t)k, " (%u prompt tokens cached)", in->cached);
}

static void reject_busy(pt_scheduler *s, const pt_sched_req *r, pt_sched_placement *out) {
    place_done(s, r, out, PT_SCHED_REJECT, -1, PT_SCHED_R_REJECT_BUSY);
    snprintf(out->text, sizeof(out->text), "reject request %llu for now: every instance that holds it has a full queue",
             (unsigned long long)r->id);
}

void pt_sched_place(pt_scheduler *s, const pt_sched_state *st, const pt_sched_req *r, pt_sched_placement *out) {
    *out = (pt_sched_placement){.instance = -1};
    if (st->n_inst > PT_SCHED_MAX_DEVICES) {
        out->kind = PT_SCHED_REJECT;
        out->reason = PT_SCHED_R_REJECT_TOO_LONG;
        snprintf(out->text, sizeof(out->text), "reject: %d instances, more than %d", st->n_inst, PT_SCHED_MAX_DEVICES);
        return;
    }
    char where[96];
    double slo = s->o.slo.ttft_s;

    if (s->o.policy == PT_SCHED_STATIC) {
        double t = 0;
        int i = best_of_degree(s, st, r, 0, &t);
        out->need_tp = i >= 0 ? st->inst[i].tp : 0;
        if (i < 0 && only_full_queues(s, st, r)) {
            reject_busy(s, r, out);
            return;
        }
        if (i < 0) {
            place_done(s, r, out, PT_SCHED_REJECT, -1, PT_SCHED_R_REJECT_TOO_LONG);
            snprintf(out->text, sizeof(out->text),
                     "reject request %llu: %u + %u tokens (%llu KV pages) fit no instance of this layout",
                     (unsigned long long)r->id, r->prompt_len, r->max_tokens, (unsigned long long)req_pages(s, r));
            return;
        }
        place_done(s, r, out, PT_SCHED_PLACE, i, PT_SCHED_R_LEAST_LOADED);
        describe(st, i, where, sizeof(where));
        snprintf(out->text, sizeof(out->text), "place request %llu (%u + %u tokens) on %s: lowest estimated TTFT %.3f s",
                 (unsigned long long)r->id, r->prompt_len, r->max_tokens, where, t);
        return;
    }

    int need = need_on(s, st, r);
    out->need_tp = need;
    if (need == 0 || need > st->n_devices) {
        place_done(s, r, out, PT_SCHED_REJECT, -1, PT_SCHED_R_REJECT_TOO_LONG);
        snprintf(out->text, sizeof(out->text),
                 "reject request %llu: %u + %u tokens fit no allowed degree on %d devices (max_ctx %u)",
                 (unsigned long long)r->id, r->prompt_len, r->max_tokens, st->n_devices, s->m.max_ctx);
        return;
    }
    /* Smallest degree first: long requests to the smallest merged instance
     * that serves them, short ones to the small instances, overflowing to a
     * bigger one only when the small ones would break the TTFT. */
    int best_any = -1, first_degree = 0;
    double best_any_t = INFINITY;
    for (int a = 0; a < s->o.n_allowed; a++) {
        int d = s->o.allowed_tp[a];
        if (d < need) continue;
        double t = 0;
        int i = best_of_degree(s, st, r, d, &t);
        if (i < 0) continue;
        if (!first_degree) first_degree = d;
        if (t < best_any_t) {
            best_any = i;
            best_any_t = t;
        }
        if (!meets_ttft(s, t)) continue;
        pt_sched_reason why = d > first_degree ? PT_SCHED_R_OVERFLOW
                              : need > smallest_degree(s) ? PT_SCHED_R_LONG_TO_MERGED
                                               : PT_SCHED_R_LEAST_LOADED;
        place_done(s, r, out, PT_SCHED_PLACE, i, why);
        describe(st, i, where, sizeof(where));
        snprintf(out->text, sizeof(out->text), "place request %llu (%u + %u tokens, needs TP%d) on %s: estimated TTFT %.3f s%s",
                 (unsigned long long)r->id, r->prompt_len, r->max_tokens, need, where, t,
                 why == PT_SCHED_R_OVERFLOW ? " (smaller instances would break its TTFT)" : "");
        return;
    }
    /* Nothing of its degree meets the TTFT. A merge makes a new instance of
     * that degree: worth waiting for when none of at least that degree holds
     * it, or when its pages need that degree and those that hold it are busy
     * (memory binds: 8xH100, Qwen2.5-32B, Mooncake 0.5x goodput 1.15 without
     * this, 1.40 with it). A request that needs the degree for speed alone
     * is batched onto the merged instance there is: a second merge for it
     * took the small instances the short requests need (8xH200, Mooncake
     * 0.6x: 1.61 with, 1.76 without). For a request of the smallest degree a
     * merge adds no capacity: its wait is queueing. */
    const char *why_hold = NULL;
    int home = best_any;
    double home_t = best_any_t;
    if (best_any < 0) {
        home = best_of_degree(s, st, r, 0, &home_t); /* a smaller instance that holds it */
        if (home < 0) why_hold = "no instance holds it";
        else if (merge_would_meet(s, st, r, need)) why_hold = "a merge meets its TTFT, no instance does";
    } else if (need_by_pages(s, r, need) && merge_would_meet(s, st, r, need) && can_merge_to(s, st, need)) {
        why_hold = "the instances that hold it are busy; a merge to its degree meets its TTFT";
    }
    if (home < 0 && only_full_queues(s, st, r)) {
        reject_busy(s, r, out);
        return;
    }
    if (why_hold) {
        place_done(s, r, out, PT_SCHED_HOLD, -1, PT_SCHED_R_HOLD_FOR_MERGE);
        snprintf(out->text, sizeof(out->text), "hold request %llu (%u + %u tokens, needs TP%d): %s",
                 (unsigned long long)r->id, r->prompt_len, r->max_tokens, need, why_hold);
        return;
    }
    place_done(s, r, out, PT_SCHED_PLACE, home, PT_SCHED_R_LEAST_LOADED);
    describe(st, home, where, sizeof(where));
    snprintf(out->text, sizeof(out->text),
             "place request %llu (%u + %u tokens, needs TP%d) on %s: estimated TTFT %.3f s misses the SLO %.3f s "
             "everywhere, a merge would not help",
             (unsigned long long)r->id, r->prompt_len, r->max_tokens, need, where, home_t, slo);
}

/* ---- (b) preemption ---- */

int pt_sched_victim(pt_scheduler *s, const pt_sched_state *st, int i, pt_sched_reason *reason) {
    if (i < 0 || i >= st->n_inst || st->inst[i].n_running == 0) return -1;
    const pt_sched_instance *in = &st->inst[i];
    int newest = -1, movable = -1;
    for (size_t k = 0; k < in->n_running; k++) {
        const pt_sched_req *r = &in->running[k];
        bool later_than = newest < 0 || r->arrival > in->running[newest].arrival ||
                          (r->arrival == in->running[newest].arrival && r->id > in->running[newest].id);
        if (later_than) newest = (int)k;
        if (s->o.policy == PT_SCHED_DYNAMIC && in->tp > 1) {
            int need = need_on(s, st, r);
            bool later_movable = movable < 0 || r->arrival > in->running[movable].arrival ||
                                 (r->arrival == in->running[movable].arrival && r->id > in->running[movable].id);
            if (need > 0 && need < in->tp && later_movable) movable = (int)k;
        }
    }
    /* On a merged instance the short requests give way first: they can be
     * served anywhere, the long ones only here. */
    pt_sched_reason why = movable >= 0 ? PT_SCHED_R_PREEMPT_MOVABLE : PT_SCHED_R_PREEMPT_NEWEST;
    s->stats.by_reason[why]++;
    if (reason) *reason = why;
    return movable >= 0 ? movable : newest;
}

/* ---- (c) transformations ---- */

/* Whether devices [first, first + d) hold only whole instances of degree
 * below d, none transforming; their index range into *lo, *hi. */
static bool mergeable_range(const pt_sched_state *st, int first, int d, int *lo, int *hi) {
    *lo = -1;
    *hi = -1;
    for (int i = 0; i < st->n_inst; i++) {
        const pt_sched_instance *in = &st->inst[i];
        int a = in->first_device, b = in->first_device + in->tp;
        if (b <= first || a >= first + d) continue;
        if (a < first || b > first + d || in->tp >= d || in->transforming) return false;
        if (*lo < 0) *lo = i;
        *hi = i;
    }
    return *lo >= 0;
}

/* What a transformation or a long request does to the requests already on
 * some instances: a pause, then the long request's prefill (prompt tokens,
 * 0 = none, arriving at `arrival`) on an instance of degree tp whose steps
 * also decode every running request at `dec` seconds a step. */
typedef struct {
    double pause_s;
    int tp;
    uint64_t prompt;
    double arrival;
    double dec;
} disruption;

/* The requests on instances [lo, hi] whose SLO the disruption breaks:
 * running ones by their TPOT (the long prefill's steps are their decode
 * steps while it lasts), prefilling and queued ones by their TTFT (the long
 * prefill delays those that came after it: prefill goes oldest first). */
static uint32_t hurt_by(pt_scheduler *s, const pt_sched_state *st, int lo, int hi, const disruption *d) {
    const inst_view *v = views(s, st);
    double extra = d->dec - s->m.tp[d->tp].fixed_s;
    double t_long = d->prompt ? prefill_beside(s, d->tp, 0, d->prompt, extra > 0 ? extra : 0.0) : 0.0;
    uint64_t chunk = s->o.prefill_chunk ? s->o.prefill_chunk : (d->prompt ? d->prompt : 1);
    uint64_t n_long = (d->prompt + chunk - 1) / chunk;
    uint32_t hurt = 0;
    for (int i = lo; i <= hi; i++) {
        const pt_sched_instance *in = &st->inst[i];
        for (size_t k = 0; k < in->n_running; k++) {
            const pt_sched_req *r = &in->running[k];
            if (r->first_token >= 0 && s->o.slo.tpot_s > 0 && r->max_tokens > 1) {
                uint32_t left = r->max_tokens > r->generated ? r->max_tokens - r->generated : 0;
                double so_far = st->now - r->first_token, per = (double)(r->max_tokens - 1);
                double before = (so_far + left * v[i].dec) / per;
                double during = left <= n_long ? (n_long ? left * t_long / (double)n_long : 0.0)
                                               : t_long + (double)(left - n_long) * d->dec;
                double after = (so_far + d->pause_s + during) / per;
                hurt += before <= s->o.slo.tpot_s && after > s->o.slo.tpot_s;
            } else if (r->first_token < 0 && s->o.slo.ttft_s > 0) {
                double ttft = st->now - r->arrival + prefill_beside(s, in->tp, r->prefilled,
                                                                    r->prompt_len - r->prefilled, 0.0);
                double delay = d->pause_s + (r->arrival > d->arrival ? t_long : 0.0);
                hurt += ttft <= s->o.slo.ttft_s && ttft + delay > s->o.slo.ttft_s;
            }
        }
        for (size_t k = 0; k < in->n_queued && s->o.slo.ttft_s > 0; k++) {
            const pt_sched_req *r = &in->queued[k];
            double ttft = est_ttft(s, st, in, &v[i], r);
            double delay = d->pause_s + (r->arrival > d->arrival ? t_long : 0.0);
            hurt += ttft <= s->o.slo.ttft_s && ttft + delay > s->o.slo.ttft_s;
        }
    }
    return hurt;
}

/* The decode step of every request running on [lo, hi], on one instance of degree tp. */
static double merged_decode_step(const pt_scheduler *s, const pt_sched_state *st, int lo, int hi, int tp) {
    pt_step_shape sh = {0};
    for (int i = lo; i <= hi; i++)
        for (size_t k = 0; k < st->inst[i].n_running; k++) {
            const pt_sched_req *r = &st->inst[i].running[k];
            if (r->prefilled >= r->prompt_len) pt_cost_shape_add(&sh, (uint64_t)r->prompt_len + r->generated, 1);
        }
    double t = pt_cost_step(&s->m, tp, &sh);
    return t > 0 ? t : 0.0;
}

/* Sequences and cached tokens on instances [lo, hi]. */
static void range_load(const pt_sched_state *st, int lo, int hi, uint32_t *seqs, uint64_t *kv_tokens, double *load) {
    *seqs = 0;
    *kv_tokens = 0;
    *load = 0;
    for (int i = lo; i <= hi; i++) {
        const pt_sched_instance *in = &st->inst[i];
        *seqs += (uint32_t)(in->n_running + in->n_queued);
        for (size_t k = 0; k < in->n_running; k++) *kv_tokens += (uint64_t)in->running[k].prefilled + in->running[k].generated;
        /* pages in use, as a share of the instance's pages, plus its queue */
        if (in->pages_total) *load += (double)(in->pages_total - in->pages_free) / (double)in->pages_total;
        *load += (double)in->n_queued;
    }
}

static void xform_fill(const pt_sched_state *st, pt_sched_xform *x, pt_sched_xform_kind kind, int first, int n,
                       int target_tp) {
    x->kind = kind;
    x->first_device = first;
    x->n_devices = n;
    x->n_targets = n / target_tp;
    for (int k = 0; k < x->n_targets; k++) x->target_tp[k] = target_tp;
    (void)st;
}

/* Counts and describes a decline once per distinct (range, reason, counts). */
static void decline(pt_scheduler *s, pt_sched_xform *x, pt_sched_reason why, int first, int n) {
    x->kind = PT_SCHED_XFORM_NONE;
    x->considered = true;
    x->reason = why;
    bool same = s->declined_first == first && s->declined_n == n && s->declined_reason == (int)why &&
                s->declined_helped == x->helped && s->declined_hurt == x->hurt;
    if (!same) s->stats.by_reason[why]++;
    s->declined_first = first;
    s->declined_n = n;
    s->declined_reason = (int)why;
    s->declined_helped = x->helped;
    s->declined_hurt = x->hurt;
}

/* The first held request that no instance serves, and the degree it needs. */
static const pt_sched_req *held_needing_merge(const pt_scheduler *s, const pt_sched_state *st, int *need,
                                              bool *cannot_fit) {
    for (size_t k = 0; k < st->n_held; k++) {
        const pt_sched_req *r = &st->held[k];
        int d = need_on(s, st, r);
        if (d == 0 || d > st->n_devices) continue;
        *cannot_fit = true;
        for (int i = 0; i < st->n_inst && *cannot_fit; i++)
            if (holds(s, &st->inst[i], r)) *cannot_fit = false;
        *need = d;
        return r;
    }
    return NULL;
}

static bool plan_merge(pt_scheduler *s, const pt_sched_state *st, pt_sched_xform *x) {
    int need = 0;
    bool cannot_fit = false;
    const pt_sched_req *r = held_needing_merge(s, st, &need, &cannot_fit);
    if (!r) return false;
    /* The least-loaded aligned range of the smallest degree >= need that
     * can be merged (instances inside it, all smaller). */
    int best_first = -1, best_d = 0, best_lo = 0, best_hi = 0;
    double best_load = INFINITY;
    for (int a = 0; a < s->o.n_allowed && best_first < 0; a++) {
        int d = s->o.allowed_tp[a];
        if (d < need || d > st->n_devices || !modelled(s, d)) continue;
        /* For speed alone a new instance of the needed degree; a larger one
         * only for a request that no instance's pages hold. */
        if (d > need && !cannot_fit) break;
        for (int first = 0; first + d <= st->n_devices; first += d) {
            int lo, hi;
            if (!mergeable_range(st, first, d, &lo, &hi)) continue;
            /* The target must hold what runs there now and the request. */
            uint64_t used = req_pages(s, r);
            for (int i = lo; i <= hi; i++) used += st->inst[i].pages_total - st->inst[i].pages_free;
            if (used > pt_cost_instance_pages(&s->m, d)) continue;
            uint32_t seqs;
            uint64_t kv;
            double load;
            range_load(st, lo, hi, &seqs, &kv, &load);
            if (load < best_load) {
                best_load = load;
                best_first = first;
                best_d = d;
                best_lo = lo;
                best_hi = hi;
            }
        }
    }
    if (best_first < 0) return false; /* every range is already merged or moving */
    if (st->xform_in_flight) {
        decline(s, x, PT_SCHED_R_NO_XFORM_BUSY, best_first, best_d);
        snprintf(x->text, sizeof(x->text), "merge wanted for request %llu (needs TP%d): a transformation is in flight",
                 (unsigned long long)r->id, need);
        return true;
    }
    uint32_t seqs;
    uint64_t kv;
    double load;
    range_load(st, best_lo, best_hi, &seqs, &kv, &load);
    int tp_from = st->inst[best_lo].tp;
    for (int i = best_lo; i <= best_hi; i++)
        if (st->inst[i].tp < tp_from) tp_from = st->inst[i].tp;
    pt_cost_xform(&s->m, best_d, tp_from, best_d, seqs, kv, &x->cost);
    /* It helps every held request it serves in time, or at all when nothing
     * else holds it. */
    x->helped = 0;
    for (size_t k = 0; k < st->n_held; k++) {
        const pt_sched_req *h = &st->held[k];
        int d = need_on(s, st, h);
        double t;
        bool homeless = best_of_degree(s, st, h, 0, &t) < 0;
        x->helped += d > 0 && d <= best_d && (homeless || merge_would_meet(s, st, h, d));
    }
    /* It breaks what its pause and the long prefill on the merged instance
     * break there; not merging, the request goes to the best instance that
     * holds it and its prefill breaks what it breaks there. */
    disruption merged = {x->cost.pause_s, best_d, r->prompt_len, r->arrival,
                         merged_decode_step(s, st, best_lo, best_hi, best_d)};
    x->hurt = hurt_by(s, st, best_lo, best_hi, &merged);
    double t_alt;
    int alt = best_of_degree(s, st, r, 0, &t_alt);
    uint32_t spared = 0;
    if (alt >= 0) {
        disruption there = {0.0, st->inst[alt].tp, r->prompt_len, r->arrival, views(s, st)[alt].dec};
        spared = hurt_by(s, st, alt, alt, &there);
    }
    char range[64];
    snprintf(range, sizeof(range), "devices %d-%d", best_first, best_first + best_d - 1);
    if (x->hurt > x->helped + spared) {
        decline(s, x, PT_SCHED_R_NO_XFORM_PAUSE, best_first, best_d);
        snprintf(x->text, sizeof(x->text),
                 "no merge of %s to TP%d: its pause (%.1f ms) and the long prefill break the SLO of %u requests; "
                 "it saves %u (%u held, %u where the request would go instead)",
                 range, best_d, x->cost.pause_s * 1e3, x->hurt, x->helped + spared, x->helped, spared);
        return true;
    }
    xform_fill(st, x, PT_SCHED_XFORM_MERGE, best_first, best_d, best_d);
    x->reason = cannot_fit ? PT_SCHED_R_MERGE_CANNOT_FIT : PT_SCHED_R_MERGE_SLO;
    s->stats.by_reason[x->reason]++;
    snprintf(x->text, sizeof(x->text),
             "merge %s to TP%d for request %llu (%u + %u tokens, needs TP%d): %s; saves %u (%u held), pause %.1f ms "
             "and the long prefill break %u, moves %.1f MiB",
             range, best_d, (unsigned long long)r->id, r->prompt_len, r->max_tokens, need,
             cannot_fit ? "no instance holds it" : "no instance of its degree meets its TTFT", x->helped + spared,
             x->helped, x->cost.pause_s * 1e3, x->hurt, (double)x->cost.bytes_moved / (1 << 20));
    return true;
}

/* The degree instance `in` needs: the largest need among its requests and
 * the held requests it could serve (at least the smallest allowed degree). */
static int needed_degree(const pt_scheduler *s, const pt_sched_state *st, const pt_sched_instance *in) {
    int m = s->o.allowed_tp[0];
    for (size_t k = 0; k < in->n_running; k++) {
        int d = need_on(s, st, &in->running[k]);
        if (d > m) m = d;
    }
    for (size_t k = 0; k < in->n_queued; k++) {
        int d = need_on(s, st, &in->queued[k]);
        if (d > m) m = d;
    }
    for (size_t k = 0; k < st->n_held; k++) {
        int d = need_on(s, st, &st->held[k]);
        if (d <= in->tp && d > m) m = d;
    }
    return m;
}

static bool plan_split(pt_scheduler *s, const pt_sched_state *st, pt_sched_xform *x) {
    for (int i = 0; i < st->n_inst; i++) {
        const pt_sched_instance *in = &st->inst[i];
        int f = in->first_device;
        if (f < 0 || f >= PT_SCHED_MAX_DEVICES) continue;
        int m = needed_degree(s, st, in);
        /* the smallest allowed, modelled degree >= m dividing the instance */
        int t = 0;
        for (int a = 0; a < s->o.n_allowed && !t; a++) {
            int d = s->o.allowed_tp[a];
            if (d >= m && d < in->tp && in->tp % d == 0 && modelled(s, d)) t = d;
        }
        if (!t || in->transforming) {
            s->over_since[f] = NOT_SEEN;
            continue;
        }
        if (s->over_tp[f] != in->tp || s->over_since[f] == NOT_SEEN) {
            s->over_tp[f] = in->tp;
            s->over_since[f] = st->now;
        }
        double quiet = st->now - s->over_since[f];
        double since_xform = s->last_xform_end == NOT_SEEN ? INFINITY : st->now - s->last_xform_end;
        if (quiet < s->o.hysteresis_s || since_xform < s->o.hysteresis_s) continue;
        /* The targets must hold what runs there now. */
        uint64_t used = in->pages_total - in->pages_free;
        uint64_t target_pages = (uint64_t)(in->tp / t) * pt_cost_instance_pages(&s->m, t);
        if (used > target_pages) continue;
        if (st->xform_in_flight) {
            decline(s, x, PT_SCHED_R_NO_XFORM_BUSY, f, in->tp);
            snprintf(x->text, sizeof(x->text), "split of TP%d on devices %d-%d wanted: a transformation is in flight",
                     in->tp, f, f + in->tp - 1);
            return true;
        }
        uint32_t seqs;
        uint64_t kv;
        double load;
        range_load(st, i, i, &seqs, &kv, &load);
        pt_cost_xform(&s->m, in->tp, in->tp, t, seqs, kv, &x->cost);
        /* More instances prefill in parallel: it helps the requests queued
         * anywhere that miss their TTFT now. */
        x->helped = 0;
        const inst_view *v = views(s, st);
        for (int j = 0; j < st->n_inst && s->o.slo.ttft_s > 0; j++)
            for (size_t k = 0; k < st->inst[j].n_queued; k++)
                x->helped += est_ttft(s, st, &st->inst[j], &v[j], &st->inst[j].queued[k]) > s->o.slo.ttft_s;
        disruption pause = {x->cost.pause_s, in->tp, 0, 0.0, views(s, st)[i].dec};
        x->hurt = hurt_by(s, st, i, i, &pause);
        if (x->hurt > x->helped) {
            decline(s, x, PT_SCHED_R_NO_XFORM_PAUSE, f, in->tp);
            snprintf(x->text, sizeof(x->text),
                     "no split of TP%d on devices %d-%d: its pause %.1f ms breaks the SLO of %u requests, it helps %u",
                     in->tp, f, f + in->tp - 1, x->cost.pause_s * 1e3, x->hurt, x->helped);
            return true;
        }
        xform_fill(st, x, PT_SCHED_XFORM_SPLIT, f, in->tp, t);
        x->reason = PT_SCHED_R_SPLIT_IDLE;
        s->stats.by_reason[x->reason]++;
        snprintf(x->text, sizeof(x->text),
                 "split TP%d on devices %d-%d into %d x TP%d: nothing needed more than TP%d for %.1f s; pause %.1f ms "
                 "breaks %u, moves %.1f MiB",
                 in->tp, f, f + in->tp - 1, in->tp / t, t, m, quiet, x->cost.pause_s * 1e3, x->hurt,
                 (double)x->cost.bytes_moved / (1 << 20));
        return true;
    }
    return false;
}

void pt_sched_plan(pt_scheduler *s, const pt_sched_state *st, pt_sched_xform *x) {
    *x = (pt_sched_xform){.kind = PT_SCHED_XFORM_NONE};
    if (s->o.policy != PT_SCHED_DYNAMIC || st->n_inst > PT_SCHED_MAX_DEVICES) return;
    if (plan_merge(s, st, x)) return;
    plan_split(s, st, x);
}

void pt_sched_xform_done(pt_scheduler *s, double now, bool committed) {
    (void)committed;
    s->last_xform_end = now;
    s->declined_first = -1;
    for (int i = 0; i < PT_SCHED_MAX_DEVICES; i++) s->over_since[i] = NOT_SEEN;
}
