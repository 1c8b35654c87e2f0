/* The server's side of the scheduler (src/server/placement.h,
 * src/server/calibrate.h): the scheduler's state built from hand-made
 * bookkeeping (running vs queued, held, pages as whole sequences use
 * them), the layout a merge or split asks for, the /metrics lines, the
 * least-squares fit of the calibration; and one round trip through the real
 * scheduler: a long request held, the merge it asks for, its placement on
 * the merged instance. No devices, threads or sockets. */
#include <stdlib.h>
#include <string.h>

#include "server/calibrate.h"
#include "server/placement.h"
#include "test.h"

static pt_place_inst idle_inst(int first, int tp, uint64_t pages) {
    return (pt_place_inst){.first = first, .tp = tp, .max_seqs = 8, .pages_total = pages, .pages_free = pages,
                           .seq_capacity = 4096, .max_ctx = 4096};
}

static pt_place_req req(uint64_t id, int inst, double arrival, double first_token) {
    return (pt_place_req){.id = id, .inst = inst, .prompt_len = 10 * (uint32_t)id, .max_tokens = 5,
                          .generated = first_token >= 0 ? 2 : 0, .arrival = arrival, .first_token = first_token};
}

/* Requests that produced a token run; then the oldest up to the batcher's
 * count; the rest queue. Held ones are listed apart, the offered one not. */
static void test_build_running_queued_held(void) {
    pt_place_inst in[2] = {idle_inst(0, 1, 48), idle_inst(1, 1, 48)};
    in[0].running = 2;
    in[0].pages_free = 30;
    in[1].transforming = true;
    pt_place_req r[] = {
        req(3, 0, 1.0, -1),  /* not started, older than 4: runs (batcher count 2 = 1 started + 1) */
        req(5, 0, 2.0, -1),  /* queued */
        req(4, 0, 1.5, -1),  /* queued (younger than 3) */
        req(2, 0, 3.0, 3.5), /* started: runs, though the latest arrival */
        req(6, -1, 0.5, -1), /* held */
        req(7, -1, 0.7, -1), /* held, being offered */
        req(8, 1, 4.0, -1),  /* instance 1: its batcher runs none yet: queued */
        req(9, 5, 4.5, -1),  /* no such instance: counts as held */
    };
    pt_place_state ps = {0};
    pt_place_build(&ps, 10.0, 2, in, 2, r, sizeof(r) / sizeof(r[0]), 16, 3, true, 7);
    const pt_sched_state *st = &ps.st;
    CHECK(st->now == 10.0 && st->n_devices == 2 && st->n_inst == 2 && st->xform_in_flight);
    const pt_sched_instance *i0 = &st->inst[0], *i1 = &st->inst[1];
    CHECK(i0->first_device == 0 && i0->tp == 1 && i0->max_seqs == 8);
    CHECK(i0->pages_total == 48 && i0->pages_free == 30);
    CHECK_EQ_INT(i0->n_running, 2);
    CHECK_EQ_INT(i0->n_queued, 2);
    if (i0->n_running == 2) {
        CHECK_EQ_INT(i0->running[0].id, 3); /* arrival order */
        CHECK_EQ_INT(i0->running[1].id, 2);
        CHECK_EQ_INT(i0->running[0].prefilled, 0);  /* the server does not see prefill chunks */
        CHECK_EQ_INT(i0->running[1].prefilled, 20); /* a token came: its prompt is done */
        CHECK_EQ_INT(i0->running[1].generated, 2);
        CHECK(i0->running[1].first_token == 3.5 && i0->running[0].first_token < 0);
    }
    if (i0->n_queued == 2) {
        CHECK_EQ_INT(i0->queued[0].id, 4);
        CHECK_EQ_INT(i0->queued[1].id, 5);
        CHECK_EQ_INT(i0->queued[1].prompt_len, 50);
        CHECK_EQ_INT(i0->queued[1].max_tokens, 5);
    }
    CHECK(i1->transforming && !i0->transforming);
    CHECK_EQ_INT(i1->n_running, 0);
    CHECK_EQ_INT(i1->n_queued, 1);
    CHECK_EQ_INT(st->n_held, 2);
    if (st->n_held == 2) {
        CHECK_EQ_INT(st->held[0].id, 6);
        CHECK_EQ_INT(st->held[1].id, 9);
    }

    /* More requests than before: the storage grows, nothing is lost. */
    pt_place_req many[300];
    for (int k = 0; k < 300; k++) many[k] = req((uint64_t)k + 1, k % 3 == 2 ? -1 : k % 2, (double)k, -1);
    in[0].running = in[1].running = 0;
    pt_place_build(&ps, 11.0, 2, in, 2, many, 300, 16, 3, false, 0);
    CHECK_EQ_INT(ps.st.inst[0].n_queued + ps.st.inst[1].n_queued + ps.st.n_held, 300);
    CHECK_EQ_INT(ps.st.n_held, 100);
    CHECK(!ps.st.xform_in_flight);
    pt_place_free(&ps);
}

/* SmolLM2's 3 KV heads at TP2 are 1 + 2: the pools sum to 32 pages, but
 * one sequence holds at most 128 tokens (8 pages of the 2-head rank), which
 * on 3 heads is 24 pages: what the scheduler is told. */
static void test_build_effective_pages(void) {
    pt_place_inst in = idle_inst(0, 2, 32);
    in.pages_free = 16;
    in.seq_capacity = 128;
    in.max_ctx = 8192;
    pt_place_state ps = {0};
    pt_place_build(&ps, 0, 2, &in, 1, NULL, 0, 16, 3, false, 0);
    CHECK_EQ_INT(ps.st.inst[0].pages_total, 24);
    CHECK_EQ_INT(ps.st.inst[0].pages_free, 12);
    /* Pools that hold a whole context: the sums as they are. */
    in.seq_capacity = in.max_ctx;
    pt_place_build(&ps, 0, 2, &in, 1, NULL, 0, 16, 3, false, 0);
    CHECK_EQ_INT(ps.st.inst[0].pages_total, 32);
    CHECK_EQ_INT(ps.st.inst[0].pages_free, 16);
    CHECK_EQ_INT(ps.st.n_held, 0);
    pt_place_free(&ps);
}

static pt_sched_xform xform(int first, int n, const int *targets, int n_targets) {
    pt_sched_xform x = {.kind = PT_SCHED_XFORM_MERGE, .first_device = first, .n_devices = n, .n_targets = n_targets};
    memcpy(x.target_tp, targets, (size_t)n_targets * sizeof(int));
    return x;
}

static bool layout_is(const int *got, int n, const int *want, int n_want) {
    return n == n_want && !memcmp(got, want, (size_t)n * sizeof(int));
}

static void test_target_layout(void) {
    int out[16], n;
    pt_err err;
    pt_sched_xform x = xform(0, 2, (int[]){2}, 1);
    CHECK_EQ_INT(pt_place_target_layout((int[]){1, 1, 2}, 3, &x, out, &n, &err), PT_OK);
    CHECK(layout_is(out, n, (int[]){2, 2}, 2));
    x = xform(2, 2, (int[]){1, 1}, 2);
    CHECK_EQ_INT(pt_place_target_layout((int[]){1, 1, 2}, 3, &x, out, &n, &err), PT_OK);
    CHECK(layout_is(out, n, (int[]){1, 1, 1, 1}, 4));
    x = xform(0, 4, (int[]){4}, 1);
    CHECK_EQ_INT(pt_place_target_layout((int[]){2, 1, 1}, 3, &x, out, &n, &err), PT_OK);
    CHECK(layout_is(out, n, (int[]){4}, 1));
    /* Refused: a range cutting an instance, targets not covering the range, a range past the devices. */
    x = xform(1, 2, (int[]){2}, 1);
    CHECK_EQ_INT(pt_place_target_layout((int[]){2, 2}, 2, &x, out, &n, &err), PT_ERR_INVALID);
    CHECK_MSG(strstr(err.msg, "cut the instance on devices 0-1") != NULL, "%s", err.msg);
    x = xform(0, 2, (int[]){1}, 1);
    CHECK_EQ_INT(pt_place_target_layout((int[]){1, 1}, 2, &x, out, &n, &err), PT_ERR_INVALID);
    x = xform(2, 2, (int[]){2}, 1);
    CHECK_EQ_INT(pt_place_target_layout((int[]){1, 1}, 2, &x, out, &n, &err), PT_ERR_INVALID);
    CHECK_EQ_INT(n, 0);
}

static void test_metrics(void) {
    pt_sched_stats st = {{0}};
    st.by_reason[PT_SCHED_R_HOLD_FOR_MERGE] = 2;
    st.by_reason[PT_SCHED_R_SPLIT_IDLE] = 1;
    st.by_reason[PT_SCHED_R_PREEMPT_NEWEST] = 3;
    char *t = pt_place_metrics(&st, 1, true);
    CHECK(strstr(t, "proteus_scheduler_decisions_total{decision=\"hold\",reason=\"hold_for_merge\"} 2\n") != NULL);
    CHECK(strstr(t, "proteus_scheduler_decisions_total{decision=\"split\",reason=\"not_needed\"} 1\n") != NULL);
    CHECK(strstr(t, "proteus_scheduler_decisions_total{decision=\"preempt\",reason=\"newest\"} 3\n") != NULL);
    CHECK(strstr(t, "proteus_scheduler_decisions_total{decision=\"place\",reason=\"least_loaded\"} 0\n") != NULL);
    CHECK(strstr(t, "proteus_scheduler_held_requests 1\n") != NULL);
    CHECK(strstr(t, "proteus_scheduler_policy{policy=\"dynamic\"} 1\n") != NULL);
    CHECK(strstr(t, "proteus_scheduler_policy{policy=\"static\"} 0\n") != NULL);
    size_t lines = 0;
    for (const char *p = t; (p = strstr(p, "proteus_scheduler_decisions_total{")); p++) lines++;
    CHECK_EQ_INT(lines, PT_SCHED_N_REASONS);
    free(t);
}

/* Points from known coefficients come back; noise that would make one
 * negative pins it at 0; too few or bad points are refused. */
static void test_calib_fit(void) {
    const double fixed = 0.004, tok = 0.0025, pair = 1e-8;
    pt_calib_point p[6];
    uint64_t shapes[6][2] = {{16, 136}, {128, 8256}, {1, 17}, {1, 129}, {4, 300}, {32, 5000}};
    for (int i = 0; i < 6; i++)
        p[i] = (pt_calib_point){.tokens = shapes[i][0], .pairs = shapes[i][1],
                                .seconds = fixed + tok * shapes[i][0] + pair * shapes[i][1]};
    pt_cost_tp c;
    double e = 1;
    pt_err err;
    CHECK_EQ_INT(pt_calib_fit(p, 6, &c, &e, &err), PT_OK);
    CHECK(c.valid);
    CHECK_NEAR(c.fixed_s, fixed, 1e-9);
    CHECK_NEAR(c.token_s, tok, 1e-10);
    CHECK_NEAR(c.flop_pair_s, pair, 1e-13);
    CHECK(c.mem_s == 0 && c.mem_kv_s == 0 && c.flop_token_s == 0);
    CHECK(e < 1e-6);
    /* Times shorter than the per-token cost alone explains: the fixed cost
     * would come out negative, so it is 0 and the rest refitted. */
    for (int i = 0; i < 6; i++) p[i].seconds = tok * shapes[i][0] * (i == 2 || i == 3 ? 0.5 : 1.0);
    CHECK_EQ_INT(pt_calib_fit(p, 6, &c, &e, &err), PT_OK);
    CHECK(c.fixed_s >= 0 && c.token_s >= 0 && c.flop_pair_s >= 0);
    CHECK(c.token_s > 0);
    CHECK_EQ_INT(pt_calib_fit(p, 2, &c, NULL, &err), PT_ERR_INVALID);
    p[1].seconds = 0;
    CHECK_EQ_INT(pt_calib_fit(p, 6, &c, NULL, &err), PT_ERR_INVALID);
    CHECK_MSG(strstr(err.msg, "step 1") != NULL, "%s", err.msg);
}

/* The shapes of the longer calibration, timed on a machine that follows
 * the roofline form exactly (small decodes on the memory side, the rest on
 * the compute side): the fit finds that form and its coefficients, and the
 * model then predicts every shape. With the seven shapes of the short
 * calibration only, the fit stays linear (the memory side 0). */
static void test_calib_fit_roofline(void) {
    const pt_cost_tp truth = {.valid = true, .fixed_s = 0.004, .token_s = 0.0015, .mem_s = 0.005,
                              .mem_kv_s = 11e-6, .flop_token_s = 0.0018, .flop_pair_s = 6e-6};
    pt_cost_model m = {0};
    m.tp[1] = truth;
    /* (sequences, context, tokens each): a prefill is one sequence after
     * context 0, a chunk one after a context, a decode n sequences of one. */
    static const uint32_t shapes[][3] = {
        {1, 0, 16},  {1, 16, 1},   {4, 10, 1},   {1, 16, 16},  {1, 0, 64},  {1, 64, 1},    {1, 64, 32},
        {1, 0, 128}, {1, 0, 256},  {1, 0, 512},  {32, 0, 16},  {2, 16, 1},  {8, 16, 1},    {16, 16, 1},
        {32, 16, 1}, {1, 512, 1},  {1, 515, 64}, {1, 579, 512}, {1, 1091, 1}, {1, 1094, 64}, {3, 685, 1}};
    const size_t n = sizeof(shapes) / sizeof(shapes[0]);
    pt_calib_point p[sizeof(shapes) / sizeof(shapes[0])];
    size_t n_mem = 0;
    for (size_t i = 0; i < n; i++) {
        pt_step_shape sh = {0};
        for (uint32_t k = 0; k < shapes[i][0]; k++) pt_cost_shape_add(&sh, shapes[i][1], shapes[i][2]);
        p[i] = (pt_calib_point){.tokens = sh.tokens, .pairs = sh.pairs, .seconds = pt_cost_step(&m, 1, &sh),
                                .kv_tokens = sh.kv_tokens, .n_seqs = sh.n_seqs};
        n_mem += truth.mem_s + truth.mem_kv_s * sh.kv_tokens > truth.flop_token_s * sh.tokens +
                                                                    truth.flop_pair_s * sh.pairs;
    }
    CHECK_MSG(n_mem >= 4 && n_mem <= n - 4, "both sides of the max have points: %zu on the memory side", n_mem);
    CHECK(n >= PT_CALIB_ROOFLINE_MIN);
    pt_cost_tp c;
    double e = 1;
    pt_err err;
    CHECK_EQ_INT(pt_calib_fit(p, n, &c, &e, &err), PT_OK);
    CHECK_MSG(e < 1e-6, "mean relative error %g", e);
    CHECK_NEAR(c.fixed_s, truth.fixed_s, 1e-7);
    CHECK_NEAR(c.token_s, truth.token_s, 1e-8);
    CHECK_NEAR(c.mem_s, truth.mem_s, 1e-7);
    CHECK_NEAR(c.mem_kv_s, truth.mem_kv_s, 1e-10);
    CHECK_NEAR(c.flop_token_s, truth.flop_token_s, 1e-8);
    CHECK_NEAR(c.flop_pair_s, truth.flop_pair_s, 1e-11);
    /* The linear form cannot follow these shapes: its best is well off. */
    CHECK_EQ_INT(pt_calib_fit(p, 7, &c, &e, &err), PT_OK);
    CHECK(c.mem_s == 0 && c.mem_kv_s == 0 && c.flop_token_s == 0);
    CHECK(c.fixed_s >= 0 && c.token_s >= 0 && c.flop_pair_s >= 0);
    /* Linear data with many shapes: the roofline form gains nothing and the
     * linear coefficients come back. */
    for (size_t i = 0; i < n; i++) p[i].seconds = 0.01 + 0.003 * (double)p[i].tokens + 7e-6 * (double)p[i].pairs;
    CHECK_EQ_INT(pt_calib_fit(p, n, &c, &e, &err), PT_OK);
    CHECK(e < 1e-6);
    CHECK_NEAR(c.fixed_s + c.mem_s, 0.01, 1e-7);
    CHECK_NEAR(c.token_s + c.flop_token_s, 0.003, 1e-8);
    CHECK_NEAR(c.flop_pair_s, 7e-6, 1e-11);
}

/* Pages an instance holds when the KV heads do not split evenly: the rank
 * with the most heads fills first (SmolLM2's 3 heads on two devices). */
static void test_uneven_heads_pages(void) {
    pt_cost_model m = {0};
    m.tp[1].valid = m.tp[2].valid = true;
    m.n_kv_heads = 3;
    m.head_page_bytes = 1;
    m.device_bytes = 16;
    CHECK_EQ_INT(pt_cost_instance_pages(&m, 1), 15); /* 3 x floor(16 / 3) */
    CHECK_EQ_INT(pt_cost_instance_pages(&m, 2), 24); /* the 2-head rank: 3 x 16 / 2 */
    m.n_kv_heads = 8;
    CHECK_EQ_INT(pt_cost_instance_pages(&m, 2), 32); /* heads divide evenly: every page used */
}

/* A cost model like pt_calibrate_memory makes for two CPU devices of 16
 * pages each (3 KV heads, 16 tokens a page): TP1 holds 15 head pages (80
 * tokens), TP2 24 (128 tokens: what its 2-head rank holds). */
static pt_cost_model two_device_model(void) {
    pt_cost_model m = {0};
    for (int d = 1; d <= 2; d++)
        m.tp[d] = (pt_cost_tp){.valid = true, .fixed_s = 0.01 / d, .token_s = 0.003 / d, .flop_pair_s = 1e-8 / d};
    m.page_size = 16;
    m.n_kv_heads = 3;
    m.head_page_bytes = 1000;
    m.weight_bytes = 0;
    m.reserve_bytes = 50000;
    m.device_bytes = 50000 + 16 * 1000;
    m.max_ctx = 8192;
    m.xform_fixed_s = 0.1;
    m.xform_byte_s = 1e-9;
    m.pause_fixed_s = 0.002;
    return m;
}

/* What serve.c does with the scheduler, step by step: a request longer
 * than a TP1 instance holds is held; the plan merges the two devices; the
 * layout asked for is [2]; on the merged instance it is placed. */
static void test_round_trip_with_scheduler(void) {
    pt_cost_model m = two_device_model();
    CHECK_EQ_INT(pt_cost_instance_pages(&m, 1), 15);
    CHECK_EQ_INT(pt_cost_instance_pages(&m, 2), 24);
    pt_sched_opts o = {.policy = PT_SCHED_DYNAMIC, .allowed_tp = {1, 2}, .n_allowed = 2, .hysteresis_s = 1,
                       .prefill_chunk = 256};
    pt_scheduler *s;
    pt_err err;
    CHECK_EQ_INT(pt_sched_create(&s, &o, &m, &err), PT_OK);
    int tp[2];
    CHECK_EQ_INT(pt_sched_initial_layout(s, 2, tp), 2);
    CHECK(tp[0] == 1 && tp[1] == 1);

    pt_place_inst in[2] = {idle_inst(0, 1, 16), idle_inst(1, 1, 16)};
    in[0].seq_capacity = in[1].seq_capacity = 80;
    in[0].max_ctx = in[1].max_ctx = 8192;
    pt_place_req longr = {.id = 1, .inst = -1, .prompt_len = 100, .max_tokens = 8, .arrival = 0, .first_token = -1};
    pt_place_state ps = {0};
    pt_place_build(&ps, 0.1, 2, in, 2, &longr, 1, 16, 3, false, longr.id);
    pt_sched_req r = pt_place_sched_req(&longr);
    pt_sched_placement pl;
    pt_sched_place(s, &ps.st, &r, &pl);
    CHECK_EQ_INT(pl.kind, PT_SCHED_HOLD);
    CHECK_EQ_INT(pl.need_tp, 2);

    /* Held: the plan merges devices 0-1. */
    pt_place_build(&ps, 0.2, 2, in, 2, &longr, 1, 16, 3, false, 0);
    CHECK_EQ_INT(ps.st.n_held, 1);
    pt_sched_xform x;
    pt_sched_plan(s, &ps.st, &x);
    CHECK_EQ_INT(x.kind, PT_SCHED_XFORM_MERGE);
    CHECK_EQ_INT(x.reason, PT_SCHED_R_MERGE_CANNOT_FIT);
    int want[4], n_want;
    CHECK_EQ_INT(pt_place_target_layout((int[]){1, 1}, 2, &x, want, &n_want, &err), PT_OK);
    CHECK(layout_is(want, n_want, (int[]){2}, 1));
    /* While it runs, the scheduler sees it in flight and starts nothing else. */
    pt_place_build(&ps, 0.3, 2, in, 2, &longr, 1, 16, 3, true, 0);
    pt_sched_plan(s, &ps.st, &x);
    CHECK_EQ_INT(x.kind, PT_SCHED_XFORM_NONE);

    /* Merged (the pools of both devices, a sequence bounded by the 2-head rank). */
    pt_sched_xform_done(s, 0.5, true);
    pt_place_inst merged = idle_inst(0, 2, 32);
    merged.seq_capacity = 128;
    merged.max_ctx = 8192;
    pt_place_build(&ps, 0.6, 2, &merged, 1, &longr, 1, 16, 3, false, longr.id);
    pt_sched_place(s, &ps.st, &r, &pl);
    CHECK_EQ_INT(pl.kind, PT_SCHED_PLACE);
    CHECK_EQ_INT(pl.instance, 0);
    /* One that even the merged instance cannot hold (130 tokens: 27 pages of
     * the 24) is refused at once, not held for a merge that cannot come. */
    pt_place_req too_long = {.id = 2, .inst = -1, .prompt_len = 122, .max_tokens = 8, .first_token = -1};
    pt_sched_req r2 = pt_place_sched_req(&too_long);
    pt_sched_place(s, &ps.st, &r2, &pl);
    CHECK_MSG(pl.kind == PT_SCHED_REJECT, "not refused: %s", pl.text);
    pt_place_free(&ps);
    pt_sched_free(s);
}

TEST_MAIN(TEST(test_build_running_queued_held), TEST(test_build_effective_pages), TEST(test_target_layout),
          TEST(test_metrics), TEST(test_calib_fit), TEST(test_calib_fit_roofline), TEST(test_uneven_heads_pages), TEST(test_round_trip_with_scheduler))
