/* The scheduler's decisions (scheduler/scheduler.h) from hand-built states
 * and a hand-made cost model whose numbers the expected values follow from:
 *   TP1: 0.1 ms a token, 10 ms a step; its instance holds 1000 head pages
 *        (8000 tokens of a 2-KV-head model, 16 tokens a page);
 *   TP2: 0.05 ms a token, 12 ms a step; 6000 pages (48000 tokens);
 *   TP4: 0.025 ms a token, 14 ms a step; 16000 pages.
 * SLOs: TTFT 2 s, TPOT 60 ms. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "scheduler/scheduler.h"
#include "test.h"

static pt_cost_model toy_model(void) {
    pt_cost_model m = {0};
    double tok[] = {0, 1e-4, 0.5e-4, 0, 0.25e-4};
    double fixed[] = {0, 0.010, 0.012, 0, 0.014};
    for (int d = 1; d <= 4; d *= 2) m.tp[d] = (pt_cost_tp){.valid = true, .flop_token_s = tok[d], .fixed_s = fixed[d]};
    m.page_size = 16;
    m.n_kv_heads = 2;
    m.head_page_bytes = 1000;
    m.weight_bytes = 4000000;
    m.device_bytes = 5000000;
    m.max_ctx = 100000;
    m.xform_fixed_s = 0.1;
    m.xform_byte_s = 1e-9;
    m.pause_fixed_s = 0.005;
    return m;
}

static pt_scheduler *toy(pt_sched_policy policy, const pt_cost_model *m) {
    pt_sched_opts o = {.policy = policy, .slo = {2.0, 0.060}, .allowed_tp = {1, 2, 4}, .n_allowed = 3,
                       .hysteresis_s = 5.0, .prefill_chunk = 0};
    pt_scheduler *s;
    pt_err err;
    if (pt_sched_create(&s, &o, m, &err) != 0) return NULL;
    return s;
}

static pt_sched_req req(uint64_t id, uint32_t prompt, uint32_t max_tokens, double arrival) {
    return (pt_sched_req){.id = id, .prompt_len = prompt, .max_tokens = max_tokens, .arrival = arrival,
                          .first_token = -1.0};
}

/* A request decoding since first_token, `generated` tokens out. */
static pt_sched_req decoding(uint64_t id, uint32_t prompt, uint32_t max_tokens, uint32_t generated, double first) {
    pt_sched_req r = req(id, prompt, max_tokens, first - 0.1);
    r.prefilled = prompt;
    r.generated = generated;
    r.first_token = first;
    return r;
}

static pt_sched_instance inst(int first, int tp, uint64_t pages_total) {
    return (pt_sched_instance){.first_device = first, .tp = tp, .max_seqs = 64, .pages_total = pages_total,
                               .pages_free = pages_total};
}

/* ---- cost model ---- */

static void test_cost_step_and_pages(void) {
    pt_cost_model m = toy_model();
    m.tp[1].mem_s = 0.5;
    m.tp[1].mem_kv_s = 1e-3;
    m.tp[1].flop_pair_s = 1e-6;
    pt_step_shape sh = {0};
    pt_cost_shape_add(&sh, 100, 10); /* 10 tokens after 100: pairs 1000 + 55, 110 cached tokens read */
    CHECK_EQ_INT(sh.tokens, 10);
    CHECK_EQ_INT(sh.pairs, 1055);
    CHECK_EQ_INT(sh.kv_tokens, 110);
    /* memory side 0.5 + 0.11 beats compute 0.001 + 0.001055 */
    CHECK_NEAR(pt_cost_step(&m, 1, &sh), 0.61 + 0.010, 1e-12);
    CHECK(pt_cost_step(&m, 8, &sh) < 0); /* not modelled */
    pt_step_shape empty = {0};
    CHECK_NEAR(pt_cost_step(&m, 1, &empty), 0.0, 0);

    pt_cost_model t = toy_model();
    CHECK_NEAR(pt_cost_prefill(&t, 2, 30000, 0), 0.012 + 1.5, 1e-12);
    CHECK_NEAR(pt_cost_prefill(&t, 2, 30000, 8192), 4 * 0.012 + 1.5, 1e-9); /* four chunks */
    CHECK_EQ_INT(pt_cost_seq_pages(&t, 17), 4);                             /* 2 pages x 2 heads */
    CHECK_EQ_INT(pt_cost_instance_pages(&t, 1), 1000);
    CHECK_EQ_INT(pt_cost_instance_pages(&t, 2), 6000);
    CHECK_EQ_INT(pt_cost_instance_pages(&t, 4), 16000);
    t.device_bytes = 3000000; /* the whole model no longer fits one device */
    CHECK_EQ_INT(pt_cost_instance_pages(&t, 1), 0);
}

static void test_cost_xform(void) {
    pt_cost_model m = toy_model();
    pt_xform_cost c;
    /* merge 1+1 -> 2 with 1600 cached tokens: half of each sequence's heads
     * move (1600 tokens x 125 bytes a token of both heads / 2), no weights */
    pt_cost_xform(&m, 2, 1, 2, 3, 1600, &c);
    CHECK_EQ_INT(c.bytes_moved, 100000);
    CHECK_EQ_INT(c.bytes_in_pause, 3000); /* 3 sequences x 2 heads x 1/2 x 1000 */
    CHECK_NEAR(c.pause_s, 0.005 + 1500e-9, 1e-12);
    CHECK_NEAR(c.total_s, 0.1 + 50000e-9 + c.pause_s, 1e-12);
    /* split 2 -> 1+1: each device receives the half of the weights it lacks */
    pt_cost_xform(&m, 2, 2, 1, 0, 0, &c);
    CHECK_EQ_INT(c.bytes_moved, 4000000);
    pt_cost_xform(&m, 2, 2, 2, 0, 0, &c);
    CHECK_EQ_INT(c.bytes_moved, 0);
}

static void test_cost_roofline(void) {
    pt_model_shape qwen = {"qwen2.5-32b", 64, 5120, 40, 8, 128, 27648, 152064, 32763876352ull, 2, 2, 131072};
    pt_model_shape llama70 = {"llama3-70b", 80, 8192, 64, 8, 128, 28672, 128256, 70553706496ull, 2, 2, 131072};
    pt_device_roofline h200 = {"H200", 141000000000ull, 4.8e12, 989e12, 450e9, 10e-6, 0.8, 0.5, 0.004, 0.9};
    int allowed[] = {1, 2, 4, 8};
    pt_cost_model m;
    pt_err err;
    CHECK_EQ_INT(pt_cost_roofline(&m, &qwen, &h200, 16, allowed, 4, &err), 0);
    CHECK(m.tp[1].valid && m.tp[8].valid);
    CHECK_EQ_INT(m.head_page_bytes, 16 * 64 * 128 * 2 * 2);
    /* a decode step of one short sequence reads the weights: 65.5 GB / 3.84 TB/s */
    pt_step_shape one = {0};
    pt_cost_shape_add(&one, 100, 1);
    double t1 = pt_cost_step(&m, 1, &one), t2 = pt_cost_step(&m, 2, &one);
    CHECK_NEAR(t1, 65527752704.0 / 3.84e12 + 101 * 262144 / 3.84e12 + 0.004, 1e-9);
    CHECK(t2 < t1 && t2 > t1 / 2); /* half the weights, plus the all-reduces */
    /* prefill is compute-bound: 8192 tokens at TP1 take about 2 * 32.8e9 * 8192 / 494.5e12 s */
    CHECK(pt_cost_prefill(&m, 1, 8192, 0) > 1.0 && pt_cost_prefill(&m, 1, 8192, 0) < 1.3);
    CHECK(pt_cost_instance_pages(&m, 2) > 2 * pt_cost_instance_pages(&m, 1));
    CHECK_EQ_INT(pt_cost_roofline(&m, &llama70, &h200, 16, allowed, 4, &err), 0);
    CHECK(!m.tp[1].valid && m.tp[2].valid); /* 141 GB of weights fit no single H200 */
    int bad[] = {16};
    CHECK(pt_cost_roofline(&m, &qwen, &h200, 16, bad, 1, &err) != 0);
    CHECK(strstr(err.msg, "16") != NULL);
}

static void test_cost_file(void) {
    pt_cost_model m = toy_model(), back;
    m.tp[2].mem_kv_s = 1.25e-7;
    pt_err err;
    const char *path = "test_scheduler_cost.json";
    CHECK_EQ_INT(pt_cost_save(&m, path, &err), 0);
    memset(&back, 0xab, sizeof(back));
    memset(back.tp, 0, sizeof(back.tp));
    CHECK_EQ_INT(pt_cost_load(&back, path, &err), 0);
    CHECK(!memcmp(back.tp, m.tp, sizeof(m.tp)));
    CHECK_EQ_INT(back.head_page_bytes, 1000);
    CHECK_EQ_INT(back.max_ctx, 100000);
    CHECK_NEAR(back.pause_fixed_s, 0.005, 0);

    static const struct {
        const char *text, *names;
    } bad[] = {
        {"[1]", "not a JSON object"},
        {"{\"tp\": {}, \"page_size\": 16}", "missing key"},
        {"{\"page_sizes\": 16}", "'page_sizes'"},
        {"{", "not valid JSON"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        FILE *f = fopen(path, "w");
        fputs(bad[i].text, f);
        fclose(f);
        CHECK(pt_cost_load(&back, path, &err) != 0);
        CHECK_MSG(strstr(err.msg, bad[i].names) && strstr(err.msg, path), "%s", err.msg);
    }
    /* a negative coefficient, named by its key path */
    char *full = NULL;
    {
        CHECK_EQ_INT(pt_cost_save(&m, path, &err), 0);
        size_t len;
        full = pt_read_file(path, &len);
        char *p = strstr(full, "\"fixed_s\":");
        CHECK(p != NULL);
        if (p) {
            p += strlen("\"fixed_s\":");
            while (*p == ' ' || *p == '\t') p++;
            *p = '-';
        }
        FILE *f = fopen(path, "w");
        fputs(full, f);
        fclose(f);
        CHECK(pt_cost_load(&back, path, &err) != 0);
        CHECK_MSG(strstr(err.msg, "tp.1.fixed_s") != NULL, "%s", err.msg);
    }
    free(full);
    remove(path);
    CHECK(pt_cost_load(&back, "/nonexistent/cost.json", &err) != 0);
}

/* ---- policies ---- */

static void test_need_tp(void) {
    pt_cost_model m = toy_model();
    pt_scheduler *s = toy(PT_SCHED_DYNAMIC, &m);
    CHECK(s != NULL);
    pt_sched_req r = req(1, 1000, 100, 0);
    CHECK_EQ_INT(pt_sched_need_tp(s, &r), 1);
    r = req(2, 12000, 100, 0); /* 12100 tokens: 1514 pages > TP1's 1000 */
    CHECK_EQ_INT(pt_sched_need_tp(s, &r), 2);
    r = req(3, 45000, 1000, 0); /* fits TP2's pages, but its prefill there takes 2.26 s > 2 s */
    CHECK_EQ_INT(pt_sched_need_tp(s, &r), 4);
    r = req(4, 99000, 1001, 0); /* above max_ctx */
    CHECK_EQ_INT(pt_sched_need_tp(s, &r), 0);
    int tp[8];
    CHECK_EQ_INT(pt_sched_initial_layout(s, 4, tp), 4);
    CHECK_EQ_INT(tp[0], 1);
    pt_sched_free(s);

    /* a model whose weights fit no single device starts at TP2 */
    m.device_bytes = 3000000;
    s = toy(PT_SCHED_DYNAMIC, &m);
    CHECK_EQ_INT(pt_sched_initial_layout(s, 4, tp), 2);
    CHECK_EQ_INT(tp[0], 2);
    CHECK_EQ_INT(tp[1], 2);
    pt_sched_free(s);

    pt_sched_opts o = {.policy = PT_SCHED_DYNAMIC, .allowed_tp = {2, 1}, .n_allowed = 2};
    pt_err err;
    CHECK(pt_sched_create(&s, &o, &m, &err) != 0);
    CHECK(strstr(err.msg, "ascending") != NULL);
    o = (pt_sched_opts){.policy = PT_SCHED_DYNAMIC, .allowed_tp = {1}, .n_allowed = 1, .slo = {-1, 0}};
    CHECK(pt_sched_create(&s, &o, &m, &err) != 0);
}

static void test_place_short_and_hold_long(void) {
    pt_cost_model m = toy_model();
    pt_scheduler *s = toy(PT_SCHED_DYNAMIC, &m);
    pt_sched_instance in[2] = {inst(0, 1, 1000), inst(1, 1, 1000)};
    pt_sched_req busy[1] = {decoding(7, 500, 200, 10, 9.0)};
    in[0].running = busy;
    in[0].n_running = 1;
    in[0].pages_free = 1000 - 64;
    pt_sched_state st = {.now = 10.0, .n_devices = 2, .inst = in, .n_inst = 2};
    pt_sched_placement p;

    pt_sched_req shortr = req(1, 1000, 100, 10.0);
    pt_sched_place(s, &st, &shortr, &p);
    CHECK_EQ_INT(p.kind, PT_SCHED_PLACE);
    CHECK_EQ_INT(p.instance, 1); /* the idle one: a lower estimated TTFT */
    CHECK_EQ_INT(p.reason, PT_SCHED_R_LEAST_LOADED);
    CHECK_EQ_INT(p.need_tp, 1);

    pt_sched_req longr = req(2, 12000, 100, 10.0);
    pt_sched_place(s, &st, &longr, &p);
    CHECK_EQ_INT(p.kind, PT_SCHED_HOLD);
    CHECK_EQ_INT(p.reason, PT_SCHED_R_HOLD_FOR_MERGE);
    CHECK_EQ_INT(p.need_tp, 2);
    CHECK(strstr(p.text, "no instance holds it") != NULL);

    pt_sched_req huge = req(3, 99000, 5000, 10.0);
    pt_sched_place(s, &st, &huge, &p);
    CHECK_EQ_INT(p.kind, PT_SCHED_REJECT);
    CHECK_EQ_INT(p.reason, PT_SCHED_R_REJECT_TOO_LONG);

    pt_sched_stats stats;
    pt_sched_get_stats(s, &stats);
    CHECK_EQ_INT(stats.by_reason[PT_SCHED_R_LEAST_LOADED], 1);
    CHECK_EQ_INT(stats.by_reason[PT_SCHED_R_HOLD_FOR_MERGE], 1);
    CHECK_EQ_INT(stats.by_reason[PT_SCHED_R_REJECT_TOO_LONG], 1);
    CHECK(!strcmp(pt_sched_reason_decision(PT_SCHED_R_HOLD_FOR_MERGE), "hold"));
    CHECK(!strcmp(pt_sched_reason_name(PT_SCHED_R_MERGE_CANNOT_FIT), "cannot_fit"));
    pt_sched_free(s);
}

/* Long requests go to the merged instance; short ones to TP1, and to the
 * merged one only when the TP1s would break their TTFT. */
static void test_route_long_and_overflow(void) {
    pt_cost_model m = toy_model();
    pt_scheduler *s = toy(PT_SCHED_DYNAMIC, &m);
    pt_sched_instance in[3] = {inst(0, 2, 6000), inst(2, 1, 1000), inst(3, 1, 1000)};
    pt_sched_state st = {.now = 1.0, .n_devices = 4, .inst = in, .n_inst = 3};
    pt_sched_placement p;
    pt_sched_req longr = req(1, 12000, 100, 1.0);
    pt_sched_place(s, &st, &longr, &p);
    CHECK_EQ_INT(p.kind, PT_SCHED_PLACE);
    CHECK_EQ_INT(p.instance, 0);
    CHECK_EQ_INT(p.reason, PT_SCHED_R_LONG_TO_MERGED);

    pt_sched_req shortr = req(2, 2000, 10, 1.0);
    pt_sched_place(s, &st, &shortr, &p);
    CHECK_EQ_INT(p.instance, 1);
    CHECK_EQ_INT(p.reason, PT_SCHED_R_LEAST_LOADED);

    /* both TP1s have 3 s of prompts queued: the short one overflows to TP2 */
    pt_sched_req q[3] = {req(10, 7000, 10, 0.9), req(11, 7000, 10, 0.9), req(12, 7000, 10, 0.9)};
    for (int i = 1; i <= 2; i++) {
        in[i].queued = q;
        in[i].n_queued = 3;
    }
    pt_sched_place(s, &st, &shortr, &p);
    CHECK_EQ_INT(p.instance, 0);
    CHECK_EQ_INT(p.reason, PT_SCHED_R_OVERFLOW);
    pt_sched_free(s);
}

static void test_merge_when_long_cannot_fit(void) {
    pt_cost_model m = toy_model();
    pt_scheduler *s = toy(PT_SCHED_DYNAMIC, &m);
    pt_sched_instance in[4] = {inst(0, 1, 1000), inst(1, 1, 1000), inst(2, 1, 1000), inst(3, 1, 1000)};
    /* devices 0 and 1 are busy; 2 and 3 less so: the merge takes 2-3 */
    pt_sched_req r0[2] = {decoding(1, 3000, 100, 5, 1.0), decoding(2, 3000, 100, 5, 1.0)};
    pt_sched_req r2[1] = {decoding(3, 1000, 100, 5, 1.0)};
    in[0].running = r0;
    in[0].n_running = 2;
    in[0].pages_free = 1000 - 776;
    in[1].running = r0;
    in[1].n_running = 2;
    in[1].pages_free = 1000 - 776;
    in[2].running = r2;
    in[2].n_running = 1;
    in[2].pages_free = 1000 - 138;
    pt_sched_req held[1] = {req(9, 12000, 100, 1.5)};
    pt_sched_state st = {.now = 1.6, .n_devices = 4, .inst = in, .n_inst = 4, .held = held, .n_held = 1};
    pt_sched_xform x;
    pt_sched_plan(s, &st, &x);
    CHECK_EQ_INT(x.kind, PT_SCHED_XFORM_MERGE);
    CHECK_EQ_INT(x.reason, PT_SCHED_R_MERGE_CANNOT_FIT);
    CHECK_EQ_INT(x.first_device, 2);
    CHECK_EQ_INT(x.n_devices, 2);
    CHECK_EQ_INT(x.n_targets, 1);
    CHECK_EQ_INT(x.target_tp[0], 2);
    CHECK_EQ_INT(x.helped, 1);
    CHECK_EQ_INT(x.hurt, 0);
    CHECK(strstr(x.text, "merge devices 2-3 to TP2") != NULL);

    /* a transformation in flight: declined, counted once however often asked */
    st.xform_in_flight = true;
    pt_sched_plan(s, &st, &x);
    pt_sched_plan(s, &st, &x);
    CHECK_EQ_INT(x.kind, PT_SCHED_XFORM_NONE);
    CHECK_EQ_INT(x.reason, PT_SCHED_R_NO_XFORM_BUSY);
    pt_sched_stats stats;
    pt_sched_get_stats(s, &stats);
    CHECK_EQ_INT(stats.by_reason[PT_SCHED_R_MERGE_CANNOT_FIT], 1);
    CHECK_EQ_INT(stats.by_reason[PT_SCHED_R_NO_XFORM_BUSY], 1);

    /* the static policy never transforms */
    pt_scheduler *fixed = toy(PT_SCHED_STATIC, &m);
    st.xform_in_flight = false;
    pt_sched_plan(fixed, &st, &x);
    CHECK_EQ_INT(x.kind, PT_SCHED_XFORM_NONE);
    CHECK(!x.considered);
    pt_sched_free(fixed);
    pt_sched_free(s);
}

/* With KV pages fixed per device (weights not counted), a merge target holds
 * no more than its sources: a range is merged only when the target holds
 * what runs there and the held request. */
static void test_merge_only_where_target_holds(void) {
    pt_cost_model m = toy_model();
    m.weight_bytes = 0;
    m.device_bytes = 1000000; /* 1000 pages a device at any degree */
    pt_scheduler *s = toy(PT_SCHED_DYNAMIC, &m);
    pt_sched_instance in[4] = {inst(0, 1, 1000), inst(1, 1, 1000), inst(2, 1, 1000), inst(3, 1, 1000)};
    uint64_t used[4] = {900, 0, 100, 350}; /* held request: 1514 pages of the merged 2000 */
    for (int i = 0; i < 4; i++) in[i].pages_free = 1000 - used[i];
    pt_sched_req held[1] = {req(9, 12000, 100, 1.5)};
    pt_sched_state st = {.now = 1.6, .n_devices = 4, .inst = in, .n_inst = 4, .held = held, .n_held = 1};
    pt_sched_xform x;
    pt_sched_plan(s, &st, &x);
    CHECK_EQ_INT(x.kind, PT_SCHED_XFORM_MERGE);
    CHECK_EQ_INT(x.first_device, 2); /* 0-1 would need 2414 pages */
    in[3].pages_free = 1000 - 400;   /* now 2-3 would need 2014: all four go to TP4 (2914 of 4000) */
    pt_sched_plan(s, &st, &x);
    CHECK_EQ_INT(x.kind, PT_SCHED_XFORM_MERGE);
    CHECK_EQ_INT(x.first_device, 0);
    CHECK_EQ_INT(x.n_devices, 4);
    in[1].pages_free = 1000 - 1000;  /* 2500 used + 1514: more than TP4 holds */
    in[2].pages_free = 1000 - 200;
    pt_sched_plan(s, &st, &x);
    CHECK_EQ_INT(x.kind, PT_SCHED_XFORM_NONE);
    pt_sched_free(s);
}

/* A merge whose pause would break the TPOT of three running requests to
 * serve one held request is not started. */
static void test_no_merge_when_pause_breaks_more(void) {
    pt_cost_model m = toy_model();
    m.pause_fixed_s = 0.5;
    pt_scheduler *s = toy(PT_SCHED_DYNAMIC, &m);
    pt_sched_instance in[2] = {inst(0, 1, 1000), inst(1, 1, 1000)};
    /* 10 of 21 tokens 1 s after the first, 11 steps of 10.1-10.2 ms to go:
     * TPOT (1 + 0.11) / 20 = 56 ms; a 0.5 s pause adds 25 ms: above the 60 ms SLO */
    pt_sched_req a[2] = {decoding(1, 100, 21, 10, 9.0), decoding(2, 100, 21, 10, 9.0)};
    pt_sched_req b[1] = {decoding(3, 100, 21, 10, 9.0)};
    in[0].running = a;
    in[0].n_running = 2;
    in[1].running = b;
    in[1].n_running = 1;
    /* held: 100 prompt tokens, but 12000 to generate: only TP2's pages hold it */
    pt_sched_req held[1] = {req(9, 100, 12000, 9.9)};
    pt_sched_state st = {.now = 10.0, .n_devices = 2, .inst = in, .n_inst = 2, .held = held, .n_held = 1};
    pt_sched_xform x;
    pt_sched_plan(s, &st, &x);
    CHECK_EQ_INT(x.kind, PT_SCHED_XFORM_NONE);
    CHECK(x.considered);
    CHECK_EQ_INT(x.reason, PT_SCHED_R_NO_XFORM_PAUSE);
    CHECK_EQ_INT(x.hurt, 3);
    CHECK_EQ_INT(x.helped, 1);
    CHECK_MSG(strstr(x.text, "break the SLO of 3 requests") != NULL, "%s", x.text);

    /* with a short pause the same state merges */
    pt_cost_model quick = toy_model();
    pt_scheduler *s2 = toy(PT_SCHED_DYNAMIC, &quick);
    pt_sched_plan(s2, &st, &x);
    CHECK_EQ_INT(x.kind, PT_SCHED_XFORM_MERGE);
    CHECK_EQ_INT(x.hurt, 0);

    /* a long prompt (12000 tokens, one 0.6 s step at TP2) delays the three
     * decodes' next tokens as much as the long pause did: not merged now,
     * though the short pause breaks nothing */
    held[0] = req(9, 12000, 100, 9.9);
    pt_sched_plan(s2, &st, &x);
    CHECK_EQ_INT(x.kind, PT_SCHED_XFORM_NONE);
    CHECK_EQ_INT(x.hurt, 3);
    pt_sched_free(s2);
    pt_sched_free(s);
}

/* Not merging has a cost too: the request then prefills on a TP1 instance
 * and breaks what runs there. A merge breaking two decodes to save one held
 * request and the one decode it would have broken elsewhere goes ahead. */
static void test_merge_weighs_the_alternative(void) {
    pt_cost_model m = toy_model();
    m.device_bytes = 6500000; /* TP1 holds 2500 pages (20000 tokens) */
    pt_scheduler *s = toy(PT_SCHED_DYNAMIC, &m);
    pt_sched_instance in[4] = {inst(0, 1, 2500), inst(1, 1, 2500), inst(2, 1, 2500), inst(3, 1, 2500)};
    pt_sched_req one_a[1] = {decoding(1, 100, 21, 10, 9.0)}, one_b[1] = {decoding(2, 100, 21, 10, 9.0)};
    pt_sched_req two_a[2] = {decoding(3, 100, 21, 10, 9.0), decoding(4, 100, 21, 10, 9.0)};
    pt_sched_req two_b[2] = {decoding(5, 100, 21, 10, 9.0), decoding(6, 100, 21, 10, 9.0)};
    const pt_sched_req *runs[4] = {one_a, one_b, two_a, two_b};
    for (int i = 0; i < 4; i++) {
        in[i].running = runs[i];
        in[i].n_running = i < 2 ? 1 : 2;
        in[i].pages_free = 2500 - 16 * in[i].n_running;
    }
    /* 19960 tokens fit a TP1 instance, but its prefill there takes 2.005 s */
    pt_sched_req held[1] = {req(9, 19950, 10, 9.9)};
    CHECK_EQ_INT(pt_sched_need_tp(s, &held[0]), 2);
    pt_sched_state st = {.now = 10.0, .n_devices = 4, .inst = in, .n_inst = 4, .held = held, .n_held = 1};
    pt_sched_xform x;
    pt_sched_plan(s, &st, &x);
    CHECK_MSG(x.kind == PT_SCHED_XFORM_MERGE, "%s", x.text);
    CHECK_EQ_INT(x.reason, PT_SCHED_R_MERGE_SLO);
    CHECK_EQ_INT(x.first_device, 0);
    CHECK_EQ_INT(x.hurt, 2);
    CHECK_EQ_INT(x.helped, 1);
    CHECK(strstr(x.text, "saves 2 (1 held)") != NULL);
    pt_sched_free(s);
}

/* Long requests are batched onto the merged instance there is: one that
 * needs TP2 only for its TTFT waits on the busy TP2 rather than taking the
 * TP1s of the short requests into a second merge; one whose pages need TP2
 * is held for a second merge when the busy TP2 would break its TTFT. A
 * degree wanted only for TTFT is capped at half the devices. */
static void test_long_requests_batched_on_merged(void) {
    pt_cost_model m = toy_model();
    m.device_bytes = 6500000; /* TP1 2500 pages (20000 tokens), TP2 9000 */
    pt_scheduler *s = toy(PT_SCHED_DYNAMIC, &m);
    pt_sched_instance in[3] = {inst(0, 2, 9000), inst(2, 1, 2500), inst(3, 1, 2500)};
    pt_sched_req q[3] = {req(10, 7000, 10, 0.9), req(11, 7000, 10, 0.9), req(12, 7000, 10, 0.9)};
    in[0].queued = q; /* about 1.05 s of prompts ahead on the TP2 */
    in[0].n_queued = 3;
    pt_sched_state st = {.now = 1.0, .n_devices = 4, .inst = in, .n_inst = 3};
    pt_sched_placement p;
    pt_sched_req speed = req(1, 19950, 10, 1.0); /* fits TP1, prefills in 2.005 s there, 1.0 s on TP2 */
    pt_sched_place(s, &st, &speed, &p);
    CHECK_EQ_INT(p.need_tp, 2);
    CHECK_MSG(p.kind == PT_SCHED_PLACE && p.instance == 0, "%s", p.text);
    pt_sched_req pages = req(2, 25000, 10, 1.0); /* 3126 pages: only TP2 holds it */
    pt_sched_place(s, &st, &pages, &p);
    CHECK_MSG(p.kind == PT_SCHED_HOLD, "%s", p.text);
    CHECK(strstr(p.text, "busy") != NULL);

    /* 4 devices of TP1: a request that needs TP4 for its TTFT alone is
     * capped at TP2 (half the devices) */
    pt_sched_instance ones[4] = {inst(0, 1, 2500), inst(1, 1, 2500), inst(2, 1, 2500), inst(3, 1, 2500)};
    pt_sched_state st4 = {.now = 1.0, .n_devices = 4, .inst = ones, .n_inst = 4};
    pt_sched_req big = req(3, 45000, 1000, 1.0); /* TP2: 2.26 s > 2 s, TP4: 1.14 s */
    CHECK_EQ_INT(pt_sched_need_tp(s, &big), 4);
    pt_sched_place(s, &st4, &big, &p);
    CHECK_EQ_INT(p.need_tp, 2);
    pt_sched_free(s);
}

/* A TP2 instance splits once nothing needing TP2 has been there for the
 * hysteresis; not while a long request runs; not right after a merge. */
static void test_split_after_long_finish_with_hysteresis(void) {
    pt_cost_model m = toy_model();
    pt_scheduler *s = toy(PT_SCHED_DYNAMIC, &m);
    pt_sched_instance in[1] = {inst(0, 2, 6000)};
    pt_sched_req running[2] = {decoding(1, 12000, 4000, 10, 99.0), decoding(2, 1000, 4000, 10, 99.0)};
    in[0].running = running;
    in[0].n_running = 2;
    in[0].pages_free = 6000 - 2000;
    pt_sched_state st = {.now = 100.0, .n_devices = 2, .inst = in, .n_inst = 1};
    pt_sched_xform x;
    /* the long request runs: never a split */
    for (double t = 100.0; t < 200.0; t += 10.0) {
        st.now = t;
        pt_sched_plan(s, &st, &x);
        CHECK_EQ_INT(x.kind, PT_SCHED_XFORM_NONE);
    }
    /* it finished at 200: the clock starts at the first look without it */
    in[0].running = &running[1];
    in[0].n_running = 1;
    in[0].pages_free = 6000 - 150;
    st.now = 200.0;
    pt_sched_plan(s, &st, &x);
    CHECK_EQ_INT(x.kind, PT_SCHED_XFORM_NONE);
    st.now = 204.9;
    pt_sched_plan(s, &st, &x);
    CHECK_EQ_INT(x.kind, PT_SCHED_XFORM_NONE);
    st.now = 205.0;
    pt_sched_plan(s, &st, &x);
    CHECK_EQ_INT(x.kind, PT_SCHED_XFORM_SPLIT);
    CHECK_EQ_INT(x.reason, PT_SCHED_R_SPLIT_IDLE);
    CHECK_EQ_INT(x.first_device, 0);
    CHECK_EQ_INT(x.n_targets, 2);
    CHECK_EQ_INT(x.target_tp[0], 1);
    CHECK_EQ_INT(x.target_tp[1], 1);
    CHECK(x.cost.bytes_moved >= m.weight_bytes); /* each device gets the half it lacks */

    /* a held request that needs TP2 keeps it merged */
    pt_sched_req held[1] = {req(5, 12000, 10, 205.0)};
    st.held = held;
    st.n_held = 1;
    st.now = 300.0;
    pt_sched_plan(s, &st, &x);
    CHECK(x.kind != PT_SCHED_XFORM_SPLIT);
    st.held = NULL;
    st.n_held = 0;

    /* hysteresis after a transformation: a fresh merge is not split back
     * for 5 s even though nothing needs it (no thrash) */
    pt_sched_xform_done(s, 400.0, true);
    for (double t = 400.0; t < 404.95; t += 0.5) {
        st.now = t;
        pt_sched_plan(s, &st, &x);
        CHECK_MSG(x.kind == PT_SCHED_XFORM_NONE, "split at %.1f s, %.1f s after the merge", t, t - 400.0);
    }
    st.now = 405.0;
    pt_sched_plan(s, &st, &x);
    CHECK_EQ_INT(x.kind, PT_SCHED_XFORM_SPLIT);

    /* the targets must hold what runs there: 5000 pages in use > 2 x 1000 */
    pt_scheduler *s2 = toy(PT_SCHED_DYNAMIC, &m);
    in[0].pages_free = 1000;
    st.now = 1000.0;
    pt_sched_plan(s2, &st, &x);
    st.now = 2000.0;
    pt_sched_plan(s2, &st, &x);
    CHECK_EQ_INT(x.kind, PT_SCHED_XFORM_NONE);
    pt_sched_free(s2);
    pt_sched_free(s);
}

static void test_preemption_victim(void) {
    pt_cost_model m = toy_model();
    pt_sched_instance in[1] = {inst(0, 2, 6000)};
    /* the long request (needs TP2) arrived last; two short ones before it */
    pt_sched_req running[3] = {decoding(1, 1000, 100, 5, 1.0), decoding(2, 1000, 100, 5, 2.0),
                               decoding(3, 12000, 100, 5, 3.0)};
    in[0].running = running;
    in[0].n_running = 3;
    pt_sched_state st = {.now = 4.0, .n_devices = 2, .inst = in, .n_inst = 1};
    pt_sched_reason why;

    pt_scheduler *fixed = toy(PT_SCHED_STATIC, &m);
    CHECK_EQ_INT(pt_sched_victim(fixed, &st, 0, &why), 2); /* the newest */
    CHECK_EQ_INT(why, PT_SCHED_R_PREEMPT_NEWEST);
    pt_sched_free(fixed);

    pt_scheduler *dyn = toy(PT_SCHED_DYNAMIC, &m);
    CHECK_EQ_INT(pt_sched_victim(dyn, &st, 0, &why), 1); /* the newest short one */
    CHECK_EQ_INT(why, PT_SCHED_R_PREEMPT_MOVABLE);
    in[0].n_running = 0;
    CHECK_EQ_INT(pt_sched_victim(dyn, &st, 0, &why), -1);
    pt_sched_stats stats;
    pt_sched_get_stats(dyn, &stats);
    CHECK_EQ_INT(stats.by_reason[PT_SCHED_R_PREEMPT_MOVABLE], 1);
    pt_sched_free(dyn);
}

static void test_static_places_least_loaded(void) {
    pt_cost_model m = toy_model();
    pt_scheduler *s = toy(PT_SCHED_STATIC, &m);
    pt_sched_instance in[2] = {inst(0, 2, 6000), inst(2, 2, 6000)};
    pt_sched_req q[1] = {req(10, 20000, 10, 0.0)};
    in[0].queued = q;
    in[0].n_queued = 1;
    pt_sched_state st = {.now = 0.5, .n_devices = 4, .inst = in, .n_inst = 2};
    pt_sched_placement p;
    pt_sched_req r = req(1, 12000, 100, 0.5);
    pt_sched_place(s, &st, &r, &p);
    CHECK_EQ_INT(p.kind, PT_SCHED_PLACE);
    CHECK_EQ_INT(p.instance, 1);
    CHECK_EQ_INT(p.reason, PT_SCHED_R_LEAST_LOADED);
    r = req(2, 60000, 100, 0.5); /* 6013 pages: no TP2 instance holds it */
    pt_sched_place(s, &st, &r, &p);
    CHECK_EQ_INT(p.kind, PT_SCHED_REJECT);
    CHECK_EQ_INT(p.reason, PT_SCHED_R_REJECT_TOO_LONG);

    /* a full queue takes nothing: the other instance, then "queues full" */
    in[1].max_queued = 1;
    in[1].queued = q;
    in[1].n_queued = 1;
    in[0].n_queued = 0;
    r = req(3, 100, 10, 0.5);
    pt_sched_place(s, &st, &r, &p);
    CHECK_EQ_INT(p.instance, 0);
    in[0].max_queued = 2;
    in[0].queued = (pt_sched_req[2]){req(20, 10, 1, 0.1), req(21, 10, 1, 0.1)};
    in[0].n_queued = 2;
    pt_sched_place(s, &st, &r, &p);
    CHECK_EQ_INT(p.kind, PT_SCHED_REJECT);
    CHECK_EQ_INT(p.reason, PT_SCHED_R_REJECT_BUSY);
    CHECK(!strcmp(pt_sched_reason_name(p.reason), "queues_full"));
    pt_sched_free(s);
}

TEST_MAIN(TEST(test_cost_step_and_pages), TEST(test_cost_xform), TEST(test_cost_roofline), TEST(test_cost_file),
          TEST(test_need_tp), TEST(test_place_short_and_hold_long), TEST(test_route_long_and_overflow),
          TEST(test_merge_when_long_cannot_fit), TEST(test_merge_only_where_target_holds),
          TEST(test_no_merge_when_pause_breaks_more), TEST(test_merge_weighs_the_alternative),
          TEST(test_long_requests_batched_on_merged),
          TEST(test_split_after_long_finish_with_hysteresis), TEST(test_preemption_victim),
          TEST(test_static_places_least_loaded))
