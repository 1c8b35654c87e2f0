/* proteus simulate's event loop (src/sim/sim.h) against references computed
 * here, independently, from the cost model's own functions:
 *   - one request alone: TTFT, every token time and E2EL are the sums of
 *     pt_cost_step over its prefill chunks and decode steps;
 *   - many requests on one instance: every token time equals a plain
 *     step-by-step continuous-batching loop written in this file (FCFS,
 *     chunked prefill, preemption of the newest by recompute) -- the
 *     simulator's multi-step decode blocks must not change a single time;
 *   - conservation: every request completes with its tokens, no page or
 *     request is left anywhere;
 *   - static never transforms; dynamic merges for a request that only TP2
 *     holds, serves it, and splits back after hysteresis;
 *   - the same inputs give the same bits;
 *   - layouts, device specs and model shapes. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sim/cluster.h"
#include "sim/sim.h"
#include "test.h"

/* A cost model with both sides of the max live: 16 tokens a page, 2 KV
 * heads (a sequence holds 2 pages per 16 tokens); a TP1 instance holds
 * `pages1` pages, a TP2 instance 4 x pages1 (its devices keep half the
 * weights each, and the weights are 2 x pages1 pages' worth). */
static pt_cost_model toy_model(uint64_t pages1) {
    pt_cost_model m = {0};
    m.tp[1] = (pt_cost_tp){.valid = true, .mem_s = 0.010, .mem_kv_s = 2e-7, .flop_token_s = 1e-5,
                           .flop_pair_s = 1e-10, .fixed_s = 0.002, .token_s = 1e-6};
    m.tp[2] = (pt_cost_tp){.valid = true, .mem_s = 0.005, .mem_kv_s = 1e-7, .flop_token_s = 0.5e-5,
                           .flop_pair_s = 0.5e-10, .fixed_s = 0.003, .token_s = 2e-6};
    m.page_size = 16;
    m.n_kv_heads = 2;
    m.head_page_bytes = 1000;
    /* device = W + pages1 * h at TP1; at TP2 each device keeps W/2 more for KV */
    m.weight_bytes = 2 * pages1 * 1000;
    m.device_bytes = m.weight_bytes + pages1 * 1000;
    m.max_ctx = 1 << 20;
    m.xform_fixed_s = 0.05;
    m.xform_byte_s = 1e-9;
    m.pause_fixed_s = 0.005;
    return m;
}

static pt_sim_opts opts(pt_sched_policy policy, int n_allowed) {
    pt_sim_opts o;
    pt_sim_opts_default(&o);
    o.sched.policy = policy;
    o.sched.n_allowed = n_allowed;
    o.sched.allowed_tp[0] = 1;
    o.sched.allowed_tp[1] = 2;
    return o;
}

static pt_replay_req rq(double t, uint32_t in, uint32_t out) {
    return (pt_replay_req){.t = t, .input_len = in, .output_len = out};
}

/* ---- one request alone ---- */

static void test_single_request_exact(void) {
    pt_cost_model m = toy_model(100000);
    m.tp[1].flop_pair_s = 1e-6; /* decode steps compute-bound: the pairs of every step count */
    pt_sim_opts o = opts(PT_SCHED_STATIC, 1);
    o.max_batched_tokens = 8192;
    pt_replay_req r = rq(0, 20000, 600); /* 3 prefill chunks, 599 decode steps over several blocks */
    pt_sim_result res;
    pt_err err;
    CHECK(pt_sim_run(&res, &o, &m, 1, &r, 1, &err) == 0);
    const pt_bench_record *rec = &res.recs[0];
    CHECK(rec->ok);
    CHECK_EQ_INT(rec->output_tokens, 600);
    CHECK_EQ_INT(rec->n_token_times, 600);
    /* The reference: chunks of 8192 after ctx cached tokens, then one token per step. */
    double t = 0;
    for (uint64_t ctx = 0; ctx < 20000;) {
        uint64_t n = 20000 - ctx < 8192 ? 20000 - ctx : 8192;
        pt_step_shape sh = {0};
        pt_cost_shape_add(&sh, ctx, n);
        t += pt_cost_step(&m, 1, &sh);
        ctx += n;
    }
    CHECK_NEAR(rec->t_first - rec->t_sent, t, 1e-12);
    size_t bad = 0;
    if (rec->n_token_times == 600 && fabs(rec->token_times[0] - t) > 1e-12) bad++;
    for (uint32_t g = 1; g < 600; g++) {
        pt_step_shape sh = {0};
        pt_cost_shape_add(&sh, 20000 + g - 1, 1); /* computes the token emitted last */
        t += pt_cost_step(&m, 1, &sh);
        if (g < rec->n_token_times && fabs(rec->token_times[g] - t) > 1e-9) bad++;
    }
    CHECK_EQ_INT(bad, 0);
    CHECK_NEAR(rec->t_end - rec->t_sent, t, 1e-9);
    CHECK_EQ_INT(res.steps, 3 + 599);
    CHECK_EQ_INT(res.end_pages_used, 0);
    pt_sim_result_free(&res);
}

/* ---- the step-by-step reference ---- */

typedef struct {
    uint32_t prompt, max_tokens, ctx, gen;
    uint64_t pages;
    uint32_t n;      /* tokens this step */
    double arrival;
    double *times;   /* (max_tokens) */
    bool done;
} ref_req;

static uint64_t ref_pages(const pt_cost_model *m, uint64_t tokens) {
    return (tokens + m->page_size - 1) / m->page_size * m->n_kv_heads;
}

/* One instance of degree tp, the live batcher's loop written plainly:
 * admit queued requests FCFS while a slot is free and the free pages, less
 * what admitted prompts will still take, hold the prompt (+ its first
 * token) and a spare page per running sequence; then every decode gets one
 * token, then prefill chunks oldest first under the budget; a request that
 * cannot get its pages preempts the newest running one (recompute: its
 * prompt and the tokens it generated are computed again). */
typedef struct {
    const pt_cost_model *m;
    uint64_t total, used;
    ref_req *r;
    size_t *run, n_run;
    size_t *q, q_head, q_n; /* q[q_head ..] with room before the front */
} ref_inst;

static bool ref_decoding(const ref_req *x) { return x->gen > 0 && x->ctx + 1 == x->prompt + x->gen; }

/* Gives run[*i] k tokens; false when it was preempted itself. */
static bool ref_take(ref_inst *in, size_t *i, uint32_t k, uint32_t *budget, bool *preempted) {
    ref_req *x = &in->r[in->run[*i]];
    uint64_t need = ref_pages(in->m, x->ctx + k);
    while (need > x->pages + (in->total - in->used)) {
        size_t v = in->n_run - 1; /* the newest */
        ref_req *y = &in->r[in->run[v]];
        *budget += y->n;
        y->n = 0;
        in->used -= y->pages;
        y->pages = 0;
        y->ctx = 0;
        in->q[--in->q_head] = in->run[v];
        in->q_n++;
        in->n_run--;
        *preempted = true;
        if (v == *i) return false;
    }
    in->used += need - x->pages;
    x->pages = need;
    x->n = k;
    *budget -= k;
    return true;
}

static void ref_run(const pt_cost_model *m, int tp, uint32_t budget_max, uint32_t max_seqs, ref_req *r, size_t n) {
    ref_inst in = {.m = m, .total = pt_cost_instance_pages(m, tp), .r = r};
    in.run = calloc(n, sizeof(size_t));
    size_t *qbuf = calloc(4 * n + 4, sizeof(size_t));
    in.q = qbuf;
    in.q_head = 2 * n + 2; /* room for every preemption */
    size_t next = 0, done = 0;
    double t = 0;
    while (done < n) {
        while (next < n && r[next].arrival <= t) in.q[in.q_head + in.q_n++] = next++;
        if (in.n_run == 0 && in.q_n == 0) {
            t = r[next].arrival;
            continue;
        }
        uint64_t promised = 0;
        for (size_t j = 0; j < in.n_run; j++) {
            ref_req *x = &r[in.run[j]];
            if (!ref_decoding(x)) promised += ref_pages(m, x->prompt + x->gen + 1) - x->pages;
        }
        while (in.q_n > 0 && in.n_run < max_seqs) {
            size_t id = in.q[in.q_head];
            ref_req *x = &r[id];
            uint64_t need = ref_pages(m, x->prompt + x->gen + 1);
            if (in.n_run > 0 && need + promised + in.n_run * m->n_kv_heads > in.total - in.used) break;
            size_t pos = in.n_run; /* by arrival */
            while (pos > 0 && (r[in.run[pos - 1]].arrival > x->arrival ||
                               (r[in.run[pos - 1]].arrival == x->arrival && in.run[pos - 1] > id)))
                pos--;
            memmove(in.run + pos + 1, in.run + pos, (in.n_run - pos) * sizeof(size_t));
            in.run[pos] = id;
            in.n_run++;
            in.q_head++;
            in.q_n--;
            promised += need;
        }
        uint32_t budget = budget_max;
        bool preempted = false;
        for (size_t i = 0; i < in.n_run && budget > 0;) {
            if (!ref_decoding(&r[in.run[i]])) i++;
            else if (ref_take(&in, &i, 1, &budget, &preempted)) i++;
            else break; /* preempted itself: it was the newest, nothing after it */
        }
        for (size_t i = 0; i < in.n_run && budget > 0;) {
            ref_req *x = &r[in.run[i]];
            if (ref_decoding(x) || x->n) {
                i++;
                continue;
            }
            uint32_t owed = x->prompt + x->gen - x->ctx, k = owed < budget ? owed : budget;
            if (ref_take(&in, &i, k, &budget, &preempted)) i++;
            else break;
        }
        pt_step_shape sh = {0};
        for (size_t j = 0; j < in.n_run; j++)
            if (r[in.run[j]].n) pt_cost_shape_add(&sh, r[in.run[j]].ctx, r[in.run[j]].n);
        t += pt_cost_step(m, tp, &sh);
        for (size_t j = 0; j < in.n_run;) {
            ref_req *x = &r[in.run[j]];
            if (x->n) {
                x->ctx += x->n;
                x->n = 0;
                if (x->ctx == x->prompt + x->gen) x->times[x->gen++] = t;
                if (x->gen == x->max_tokens) {
                    in.used -= x->pages;
                    x->pages = 0;
                    x->done = true;
                    done++;
                    memmove(in.run + j, in.run + j + 1, (in.n_run - j - 1) * sizeof(size_t));
                    in.n_run--;
                    continue;
                }
            }
            j++;
        }
    }
    free(in.run);
    free(qbuf);
}

static uint64_t lcg(uint64_t *s) {
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return *s >> 33;
}

/* n requests with prompts 1..max_in and outputs 1..max_out, arrivals every 0..gap s. */
static pt_replay_req *workload(size_t n, uint64_t seed, uint32_t max_in, uint32_t max_out, double gap) {
    pt_replay_req *w = calloc(n, sizeof(*w));
    double t = 0;
    for (size_t i = 0; i < n; i++) {
        w[i] = rq(t, 1 + (uint32_t)(lcg(&seed) % max_in), 1 + (uint32_t)(lcg(&seed) % max_out));
        t += gap * (double)(lcg(&seed) % 1000) / 1000.0;
    }
    return w;
}

static void check_against_reference(uint64_t pages, uint32_t max_seqs, bool want_preemptions, double flop_pair_s) {
    pt_cost_model m = toy_model(pages);
    m.tp[1].flop_pair_s = flop_pair_s;
    pt_sim_opts o = opts(PT_SCHED_STATIC, 1);
    o.max_batched_tokens = 512;
    o.max_seqs = max_seqs;
    size_t n = 60;
    pt_replay_req *w = workload(n, 7, 900, 400, 0.08);
    pt_sim_result res;
    pt_err err;
    CHECK(pt_sim_run(&res, &o, &m, 1, w, n, &err) == 0);
    ref_req *r = calloc(n, sizeof(*r));
    for (size_t i = 0; i < n; i++) {
        r[i] = (ref_req){.prompt = w[i].input_len, .max_tokens = w[i].output_len, .arrival = w[i].t};
        r[i].times = calloc(w[i].output_len, sizeof(double));
    }
    ref_run(&m, 1, 512, max_seqs, r, n);
    size_t bad = 0, incomplete = 0;
    for (size_t i = 0; i < n; i++) {
        const pt_bench_record *rec = &res.recs[i];
        if (!rec->ok || rec->n_token_times != w[i].output_len || rec->output_tokens != w[i].output_len) {
            incomplete++;
            continue;
        }
        for (uint32_t g = 0; g < w[i].output_len; g++)
            if (fabs(rec->token_times[g] - r[i].times[g]) > 1e-9) {
                if (!bad) fprintf(stderr, "request %zu token %u: %.9f vs reference %.9f\n", i, g, rec->token_times[g], r[i].times[g]);
                bad++;
            }
        CHECK_NEAR(rec->t_end, r[i].times[w[i].output_len - 1], 1e-9);
    }
    CHECK_EQ_INT(incomplete, 0);
    CHECK_EQ_INT(bad, 0);
    CHECK_MSG(!want_preemptions || res.preemptions > 0, "the workload was meant to preempt");
    CHECK_EQ_INT(res.end_pages_used, 0);
    for (size_t i = 0; i < n; i++) free(r[i].times);
    free(r);
    free(w);
    pt_sim_result_free(&res);
}

static void test_matches_step_by_step_reference(void) {
    check_against_reference(1000000, 256, false, 1e-10); /* decode memory-bound */
    check_against_reference(1000000, 256, false, 5e-6);  /* decode compute-bound */
}

static void test_matches_reference_with_preemption(void) {
    /* 600 pages = 4800 tokens of 2-head sequences: a few long ones fill it */
    check_against_reference(600, 256, true, 1e-10);
}

static void test_matches_reference_max_seqs(void) { check_against_reference(1000000, 3, false, 1e-10); }

/* ---- conservation, static, dynamic, determinism ---- */

static void check_conserved(const pt_sim_result *res, const pt_replay_req *w, size_t n) {
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        const pt_bench_record *rec = &res->recs[i];
        bool ok = rec->ok && rec->output_tokens == w[i].output_len && rec->n_token_times == w[i].output_len &&
                  rec->t_first >= rec->t_sent && rec->t_end >= rec->t_first;
        for (size_t g = 1; ok && g < rec->n_token_times; g++) ok = rec->token_times[g] > rec->token_times[g - 1];
        if (!ok) {
            if (!bad) fprintf(stderr, "request %zu: ok %d, %u of %u tokens, %zu times\n", i, rec->ok,
                              rec->output_tokens, w[i].output_len, rec->n_token_times);
            bad++;
        }
    }
    CHECK_EQ_INT(bad, 0);
    CHECK_EQ_INT(res->end_pages_used, 0);
    CHECK_EQ_INT(res->end_requests_left, 0);
}

static void test_conservation_static_four_devices(void) {
    pt_cost_model m = toy_model(800);
    pt_sim_opts o = opts(PT_SCHED_STATIC, 2);
    o.max_batched_tokens = 1024;
    o.n_layout = 3;
    o.layout[0] = 2, o.layout[1] = 1, o.layout[2] = 1;
    size_t n = 400;
    pt_replay_req *w = workload(n, 11, 2000, 300, 0.01);
    pt_sim_result res;
    pt_err err;
    CHECK(pt_sim_run(&res, &o, &m, 4, w, n, &err) == 0);
    check_conserved(&res, w, n);
    CHECK(res.preemptions > 0);
    /* static never transforms */
    CHECK_EQ_INT(res.n_merge + res.n_split + res.n_other, 0);
    CHECK_EQ_INT(res.n_layouts, 1);
    free(w);
    pt_sim_result_free(&res);
}

/* TP1 holds 50 pages (400 tokens of a 2-head sequence), TP2 200 pages. */
static pt_replay_req *merge_workload(size_t *n) {
    static const pt_replay_req base[] = {
        {.t = 0.0, .input_len = 100, .output_len = 20}, {.t = 0.1, .input_len = 120, .output_len = 30},
        {.t = 0.2, .input_len = 800, .output_len = 100}, /* 900 tokens: 114 pages, only TP2 holds it */
        {.t = 0.3, .input_len = 50, .output_len = 10},  {.t = 1.0, .input_len = 60, .output_len = 40},
        {.t = 6.0, .input_len = 90, .output_len = 25},
    };
    *n = sizeof(base) / sizeof(base[0]);
    pt_replay_req *w = malloc(sizeof(base));
    memcpy(w, base, sizeof(base));
    return w;
}

static void test_static_rejects_what_no_instance_holds(void) {
    pt_cost_model m = toy_model(50);
    pt_sim_opts o = opts(PT_SCHED_STATIC, 2);
    size_t n;
    pt_replay_req *w = merge_workload(&n);
    pt_sim_result res;
    pt_err err;
    CHECK(pt_sim_run(&res, &o, &m, 2, w, n, &err) == 0);
    CHECK_EQ_INT(res.n_merge + res.n_split + res.n_other, 0);
    CHECK_EQ_INT(res.n_layouts, 1);
    CHECK_EQ_INT(res.layouts[0].n_inst, 2); /* the default: all TP1 */
    CHECK(!res.recs[2].ok);
    CHECK_EQ_INT(res.recs[2].status, 400);
    CHECK_EQ_INT(res.rejected, 1);
    for (size_t i = 0; i < n; i++)
        if (i != 2) CHECK(res.recs[i].ok);
    free(w);
    pt_sim_result_free(&res);
}

static void test_dynamic_merges_serves_and_splits_back(void) {
    pt_cost_model m = toy_model(50);
    CHECK_EQ_INT(pt_cost_instance_pages(&m, 1), 50);
    CHECK_EQ_INT(pt_cost_instance_pages(&m, 2), 200);
    pt_sim_opts o = opts(PT_SCHED_DYNAMIC, 2);
    o.sched.hysteresis_s = 1.0;
    size_t n;
    pt_replay_req *w = merge_workload(&n);
    pt_sim_result res;
    pt_err err;
    CHECK(pt_sim_run(&res, &o, &m, 2, w, n, &err) == 0);
    check_conserved(&res, w, n);
    CHECK_EQ_INT(res.n_merge, 1);
    CHECK_EQ_INT(res.n_split, 1);
    CHECK_EQ_INT(res.n_invalid_plans, 0);
    /* 1,1 -> (transforming) -> 2 -> (transforming) -> 1,1 */
    CHECK_EQ_INT(res.n_layouts, 5);
    if (res.n_layouts == 5) {
        CHECK_EQ_INT(res.layouts[0].n_inst, 2);
        CHECK(res.layouts[1].transforming[0] && res.layouts[1].transforming[1]);
        CHECK_EQ_INT(res.layouts[2].n_inst, 1);
        CHECK_EQ_INT(res.layouts[2].tp[0], 2);
        CHECK(res.layouts[3].transforming[0]);
        CHECK_EQ_INT(res.layouts[4].n_inst, 2);
        CHECK_EQ_INT(res.layouts[4].tp[0], 1);
        /* the long request starts after the merge commits, ends before the split starts */
        CHECK(res.recs[2].t_first > res.layouts[2].t);
        CHECK(res.recs[2].t_end <= res.layouts[3].t);
        /* the split waited for hysteresis after the merge and after the last need */
        CHECK(res.layouts[3].t - res.recs[2].t_end >= 1.0 - 1e-9);
    }
    CHECK(res.pause_max_s >= m.pause_fixed_s);
    CHECK(res.bytes_moved > 0);
    CHECK_EQ_INT(res.stats.by_reason[PT_SCHED_R_HOLD_FOR_MERGE] >= 1, 1);
    CHECK_EQ_INT(res.stats.by_reason[PT_SCHED_R_MERGE_CANNOT_FIT], 1);
    CHECK_EQ_INT(res.stats.by_reason[PT_SCHED_R_SPLIT_IDLE], 1);
    free(w);
    pt_sim_result_free(&res);
}

/* A long request placed on a split's source while the split copies goes back
 * to the scheduler at the commit (no TP1 target holds it), which merges
 * again and serves it: nothing fails. */
static void test_split_gives_back_what_no_target_holds(void) {
    pt_cost_model m = toy_model(50);
    m.xform_fixed_s = 3.0; /* a long pre-copy: time for a request to arrive during it */
    pt_sim_opts o = opts(PT_SCHED_DYNAMIC, 2);
    o.sched.hysteresis_s = 1.0;
    size_t n;
    pt_replay_req *w = merge_workload(&n);
    n--; /* without the late short one */
    pt_sim_result res;
    pt_err err;
    CHECK(pt_sim_run(&res, &o, &m, 2, w, n, &err) == 0);
    CHECK_EQ_INT(res.n_split, 1);
    double split_start = res.n_layouts == 5 ? res.layouts[3].t : -1;
    pt_sim_result_free(&res);
    CHECK(split_start > 0);
    /* the same, and a second long request 1 s into the split, still running
     * on the source when the split commits (600 decode steps) */
    pt_replay_req *w2 = calloc(n + 1, sizeof(*w2));
    memcpy(w2, w, n * sizeof(*w2));
    w2[n] = rq(split_start + 1.0, 700, 600);
    CHECK(pt_sim_run(&res, &o, &m, 2, w2, n + 1, &err) == 0);
    check_conserved(&res, w2, n + 1);
    CHECK_EQ_INT(res.xform_returned, 1);
    CHECK_EQ_INT(res.n_merge, 2);
    CHECK(res.preemptions >= 1); /* its KV was dropped: recomputed after the second merge */
    /* it started on the source, finished after the second merge committed */
    double first_merge = -1, split_commit = -1, second_merge = -1;
    for (size_t i = 1; i < res.n_layouts; i++) {
        const pt_sim_layout *l = &res.layouts[i];
        if (l->n_inst == 1 && first_merge < 0) first_merge = l->t;
        else if (l->n_inst == 2 && first_merge > 0 && split_commit < 0) split_commit = l->t;
        else if (l->n_inst == 1 && !l->transforming[0] && split_commit > 0 && second_merge < 0) second_merge = l->t;
    }
    CHECK(split_commit > 0 && second_merge > split_commit);
    CHECK(res.recs[n].t_first < split_commit);
    CHECK(res.recs[n].t_end > second_merge);
    free(w);
    free(w2);
    pt_sim_result_free(&res);
}

static bool same_results(const pt_sim_result *a, const pt_sim_result *b) {
    if (a->n != b->n || a->steps != b->steps || a->events != b->events || a->preemptions != b->preemptions ||
        a->n_merge != b->n_merge || a->n_split != b->n_split || a->n_layouts != b->n_layouts ||
        a->pause_sum_s != b->pause_sum_s || memcmp(&a->stats, &b->stats, sizeof(a->stats)) != 0)
        return false;
    for (size_t i = 0; i < a->n; i++) {
        const pt_bench_record *x = &a->recs[i], *y = &b->recs[i];
        if (x->ok != y->ok || x->t_first != y->t_first || x->t_end != y->t_end || x->n_token_times != y->n_token_times)
            return false;
        if (x->n_token_times && memcmp(x->token_times, y->token_times, x->n_token_times * sizeof(double)) != 0)
            return false;
    }
    return true;
}

static void test_deterministic(void) {
    pt_cost_model m = toy_model(200); /* TP1 holds 1600 tokens of a sequence, TP2 6400 */
    pt_sim_opts o = opts(PT_SCHED_DYNAMIC, 2);
    o.sched.hysteresis_s = 0.5;
    o.max_batched_tokens = 1024;
    size_t n = 300;
    pt_replay_req *w = workload(n, 3, 3000, 200, 0.02);
    pt_sim_result a, b;
    pt_err err;
    CHECK(pt_sim_run(&a, &o, &m, 4, w, n, &err) == 0);
    CHECK(pt_sim_run(&b, &o, &m, 4, w, n, &err) == 0);
    CHECK(same_results(&a, &b));
    /* and the workload did exercise the dynamic policy */
    CHECK(a.n_merge > 0 && a.n_split > 0);
    CHECK_EQ_INT(a.end_pages_used, 0);
    CHECK_EQ_INT(a.end_requests_left, 0);
    free(w);
    pt_sim_result_free(&a);
    pt_sim_result_free(&b);
}

/* Client-side options: max concurrency delays sends; warmups run first,
 * one at a time, and the measured clock starts after them. */
static void test_client_concurrency_and_warmup(void) {
    pt_cost_model m = toy_model(100000);
    pt_sim_opts o = opts(PT_SCHED_STATIC, 1);
    o.max_concurrency = 1;
    pt_replay_req w[4] = {rq(0, 100, 10), rq(0, 100, 10), rq(0, 100, 10), rq(0, 100, 10)};
    w[0].warmup = true;
    pt_sim_result res;
    pt_err err;
    CHECK(pt_sim_run(&res, &o, &m, 2, w, 4, &err) == 0);
    CHECK(res.recs[0].warmup && res.recs[0].ok);
    CHECK_NEAR(res.recs[1].t_sent, 0.0, 1e-12); /* measured time starts after the warmup */
    for (int i = 2; i < 4; i++) {
        CHECK_NEAR(res.recs[i].t_sent, res.recs[i - 1].t_end, 1e-12); /* one in flight at a time */
        CHECK_NEAR(res.recs[i].t_scheduled, 0.0, 1e-12);
    }
    pt_sim_result_free(&res);
}

/* ---- layouts ---- */

static void test_layouts(void) {
    pt_cost_model m = toy_model(1000);
    m.tp[4] = m.tp[2];
    m.tp[8] = m.tp[2];
    pt_sched_opts so = {.allowed_tp = {1, 2, 4, 8}, .n_allowed = 4};
    int *l = NULL;
    size_t n = 0;
    pt_sim_static_layouts(&m, &so, 8, &l, &n);
    CHECK_EQ_INT(n, 10); /* partitions of 8 into powers of two */
    if (n == 10) {
        CHECK_EQ_INT(l[0], 8);
        CHECK(l[9 * 8] == 1 && l[9 * 8 + 7] == 1);
    }
    free(l);
    /* without TP1 (weights too big for one device): 8; 4,4; 4,2,2; 2,2,2,2 */
    m.tp[1].valid = false;
    pt_sim_static_layouts(&m, &so, 8, &l, &n);
    CHECK_EQ_INT(n, 4);
    free(l);
    m.tp[1].valid = true;
    pt_err err;
    int ok_layout[] = {4, 2, 1, 1}, misaligned[] = {1, 2, 1}, short_layout[] = {2, 1}, bad_degree[] = {3, 1};
    CHECK(pt_sim_check_layout(&m, &so, 8, ok_layout, 4, &err) == 0);
    CHECK(pt_sim_check_layout(&m, &so, 4, misaligned, 3, &err) != 0);
    CHECK(strstr(err.msg, "multiple of its degree") != NULL);
    CHECK(pt_sim_check_layout(&m, &so, 4, short_layout, 2, &err) != 0);
    CHECK(strstr(err.msg, "covers 3 devices") != NULL);
    CHECK(pt_sim_check_layout(&m, &so, 4, bad_degree, 2, &err) != 0);
    int tp[8];
    CHECK_EQ_INT(pt_sim_default_layout(&m, &so, 8, tp), 8);
    m.tp[1].valid = false;
    CHECK_EQ_INT(pt_sim_default_layout(&m, &so, 8, tp), 4);
    CHECK_EQ_INT(tp[0], 2);
}

/* ---- devices and models ---- */

static void test_cluster_presets(void) {
    pt_sim_cluster c;
    pt_err err;
    CHECK(pt_sim_cluster_parse(&c, "8xH200", &err) == 0);
    CHECK_EQ_INT(c.n_devices, 8);
    CHECK(!strcmp(c.dev.name, "H200"));
    CHECK_NEAR(c.dev.mem_bw, 4.8e12, 1);
    CHECK(c.dev.mem_bytes > 140ull << 30 && c.dev.mem_bytes < 141ull << 30);
    CHECK(pt_sim_cluster_parse(&c, "4xh100", &err) == 0);
    CHECK_EQ_INT(c.n_devices, 4);
    CHECK_NEAR(c.dev.flops, 989.4e12, 1e6);
    CHECK(pt_sim_cluster_parse(&c, "2xA100", &err) == 0);
    CHECK(pt_sim_cluster_parse(&c, "8xB300", &err) == PT_ERR_INVALID);
    CHECK(strstr(err.msg, "unknown device 'B300'") != NULL);
    CHECK(pt_sim_cluster_parse(&c, "0xH100", &err) == PT_ERR_INVALID);
    CHECK(pt_sim_cluster_parse(&c, "65xH100", &err) == PT_ERR_INVALID);
    CHECK(pt_sim_cluster_parse(&c, "no-such-file.json", &err) == PT_ERR_INVALID);
}

static int write_spec(char *path, const char *text) {
    strcpy(path, "/tmp/proteus_test_sim_XXXXXX");
    int fd = mkstemp(path);
    if (fd < 0) return -1;
    ssize_t n = write(fd, text, strlen(text));
    close(fd);
    return n == (ssize_t)strlen(text) ? 0 : -1;
}

static void test_cluster_spec_file(void) {
    pt_sim_cluster c;
    pt_err err;
    char path[64];
    CHECK(write_spec(path, "{\"devices\": 4, \"name\": \"MI-X\", \"mem_gib\": 192, \"mem_bw_gbs\": 5300, "
                           "\"tflops\": 1300, \"link_gbs\": 400, \"mem_eff\": 0.7}") == 0);
    CHECK(pt_sim_cluster_parse(&c, path, &err) == 0);
    CHECK_EQ_INT(c.n_devices, 4);
    CHECK(!strcmp(c.dev.name, "MI-X"));
    CHECK_EQ_INT(c.dev.mem_bytes, 192ull << 30);
    CHECK_NEAR(c.dev.mem_bw, 5.3e12, 1);
    CHECK_NEAR(c.dev.mem_eff, 0.7, 1e-12);
    CHECK_NEAR(c.dev.flop_eff, 0.5, 1e-12); /* a default */
    unlink(path);
    /* a base preset with one key changed */
    CHECK(write_spec(path, "{\"devices\": 2, \"base\": \"H100\", \"mem_util\": 0.95}") == 0);
    CHECK(pt_sim_cluster_parse(&c, path, &err) == 0);
    CHECK_NEAR(c.dev.mem_bw, 3.35e12, 1);
    CHECK_NEAR(c.dev.mem_util, 0.95, 1e-12);
    unlink(path);
    static const struct {
        const char *text, *want;
    } BAD[] = {
        {"{\"devices\": 4, \"mem_gib\": 80, \"mem_bw_gbs\": 2000, \"tflops\": 300, \"link_gbs\": 300, \"hbm\": 1}",
         "unknown key 'hbm'"},
        {"{\"mem_gib\": 80, \"mem_bw_gbs\": 2000, \"tflops\": 300}", "devices: missing"},
        {"{\"devices\": 2.5, \"base\": \"H100\"}", "devices: expected a whole number"},
        {"{\"devices\": 2, \"mem_gib\": 80, \"mem_bw_gbs\": 2000, \"tflops\": 300}", "link_gbs: missing"},
        {"{\"devices\": 1, \"mem_gib\": 80, \"tflops\": 300}", "mem_bw_gbs: missing"},
        {"{\"devices\": 2, \"base\": \"H100\", \"mem_eff\": 1.5}", "mem_eff: expected a number in [1e-06, 1]"},
        {"{\"devices\": 2, \"base\": \"H100\", \"tflops\": \"fast\"}", "tflops: expected a number"},
        {"{\"devices\": 2, \"base\": \"B300\"}", "base: expected one of"},
        {"{\"devices\": 2,", "not valid JSON"},
        {"[1, 2]", "expected a JSON object"},
    };
    for (size_t i = 0; i < sizeof(BAD) / sizeof(BAD[0]); i++) {
        CHECK(write_spec(path, BAD[i].text) == 0);
        err.msg[0] = '\0';
        CHECK(pt_sim_cluster_parse(&c, path, &err) == PT_ERR_FORMAT);
        CHECK_MSG(strstr(err.msg, BAD[i].want) && strstr(err.msg, path), "spec %zu: '%s' lacks '%s'", i, err.msg,
                  BAD[i].want);
        unlink(path);
    }
    /* a device with no link is fine alone */
    CHECK(write_spec(path, "{\"devices\": 1, \"mem_gib\": 80, \"mem_bw_gbs\": 2000, \"tflops\": 300}") == 0);
    CHECK(pt_sim_cluster_parse(&c, path, &err) == 0);
    unlink(path);
}

static void test_model_shapes(void) {
    pt_sim_model m;
    pt_err err;
    /* parameter counts of the published checkpoints */
    static const struct {
        const char *name;
        uint64_t params;
        uint32_t layers, kv;
    } WANT[] = {{"qwen2.5-32b", 32763876352ull, 64, 8}, {"llama3-70b", 70553706496ull, 80, 8},
                {"llama3-8b", 8030261248ull, 32, 8}, {"smollm2-135m", 134515008ull, 30, 3}};
    for (size_t i = 0; i < 4; i++) {
        CHECK(pt_sim_model_resolve(&m, WANT[i].name, &err) == 0);
        CHECK_EQ_INT(m.shape.n_params, WANT[i].params);
        CHECK_EQ_INT(m.shape.n_layers, WANT[i].layers);
        CHECK_EQ_INT(m.shape.n_kv_heads, WANT[i].kv);
        CHECK_EQ_INT(m.shape.bytes_per_param, 2);
    }
    CHECK(pt_sim_model_resolve(&m, "qwen2.5-32b", &err) == 0);
    CHECK_EQ_INT(m.shape.max_ctx, 131072);
    CHECK(pt_sim_model_resolve(&m, "synthetic:llama3-8b:q4_0", &err) == 0);
    CHECK_EQ_INT(m.shape.hidden, 4096);
    CHECK(pt_sim_model_resolve(&m, "gpt-5", &err) == PT_ERR_INVALID);
    CHECK(strstr(err.msg, "neither a preset") != NULL);
    /* a Hugging Face config.json */
    char path[64];
    CHECK(write_spec(path, "{\"model_type\": \"qwen2\", \"hidden_size\": 5120, \"intermediate_size\": 27648, "
                           "\"num_hidden_layers\": 64, \"num_attention_heads\": 40, \"num_key_value_heads\": 8, "
                           "\"vocab_size\": 152064, \"max_position_embeddings\": 32768, "
                           "\"tie_word_embeddings\": false}") == 0);
    char json[80];
    snprintf(json, sizeof(json), "%s.json", path);
    CHECK(rename(path, json) == 0);
    CHECK(pt_sim_model_resolve(&m, json, &err) == 0);
    CHECK_EQ_INT(m.shape.n_params, 32763876352ull);
    CHECK_EQ_INT(m.shape.max_ctx, 32768);
    CHECK_EQ_INT(m.shape.head_dim, 128);
    unlink(json);
    CHECK(write_spec(path, "{\"model_type\": \"qwen2\"}") == 0);
    snprintf(json, sizeof(json), "%s.json", path);
    CHECK(rename(path, json) == 0);
    CHECK(pt_sim_model_resolve(&m, json, &err) != 0);
    CHECK(strstr(err.msg, "hidden_size") != NULL);
    unlink(json);
}

/* The roofline of a preset on a preset device: the numbers the README's
 * tables come from, checked against hand arithmetic. */
static void test_roofline_of_presets(void) {
    pt_sim_cluster c;
    pt_sim_model q;
    pt_err err;
    CHECK(pt_sim_cluster_parse(&c, "8xH200", &err) == 0);
    CHECK(pt_sim_model_resolve(&q, "qwen2.5-32b", &err) == 0);
    int allowed[] = {1, 2, 4, 8};
    pt_cost_model m;
    CHECK(pt_cost_roofline(&m, &q.shape, &c.dev, 16, allowed, 4, &err) == 0);
    /* a TP1 decode step of one short sequence reads the 65.5 GB of weights at 0.8 x 4.8 TB/s */
    pt_step_shape sh = {0};
    pt_cost_shape_add(&sh, 100, 1);
    double want = 32763876352.0 * 2 / (4.8e12 * 0.8) + 3e-3;
    CHECK_NEAR(pt_cost_step(&m, 1, &sh), want, 2e-4);
    CHECK(pt_cost_instance_pages(&m, 1) > 0);
    /* llama3-70b's 141 GB of weights do not fit one H200 */
    pt_sim_model l;
    CHECK(pt_sim_model_resolve(&l, "llama3-70b", &err) == 0);
    CHECK(pt_cost_roofline(&m, &l.shape, &c.dev, 16, allowed, 4, &err) == 0);
    CHECK(!m.tp[1].valid);
    CHECK(m.tp[2].valid);
}

TEST_MAIN(TEST(test_single_request_exact), TEST(test_matches_step_by_step_reference),
          TEST(test_matches_reference_with_preemption), TEST(test_matches_reference_max_seqs),
          TEST(test_conservation_static_four_devices), TEST(test_static_rejects_what_no_instance_holds),
          TEST(test_dynamic_merges_serves_and_splits_back), TEST(test_split_gives_back_what_no_target_holds),
          TEST(test_deterministic),
          TEST(test_client_concurrency_and_warmup), TEST(test_layouts), TEST(test_cluster_presets),
          TEST(test_cluster_spec_file), TEST(test_model_shapes), TEST(test_roofline_of_presets))
