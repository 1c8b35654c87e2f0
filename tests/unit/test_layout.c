/* The server's layout module (src/server/layout.h): the GET /v1/layout JSON
 * with the scheduler, the transformation in progress and the last one; the
 * POST /v1/layout body; the log line. (Where a request goes is the
 * scheduler's: tests/unit/test_serve_sched.c.) */
#include <stdlib.h>

#include <cjson/cJSON.h>

#include "server/layout.h"
#include "test.h"

static pt_layout_report two_instances(void) {
    pt_layout_report r;
    memset(&r, 0, sizeof(r));
    r.n_devices = 3;
    for (int i = 0; i < 3; i++) {
        pt_device_report *d = &r.devices[i];
        snprintf(d->name, sizeof(d->name), "cpu%d", i);
        d->kind = PT_DEVICE_CPU;
        d->threads = 2;
        d->ordinal = -1;
        d->weight_shard = 1000u * (i + 1);
        d->weight_replicated = 77;
    }
    r.devices[2].budget_bytes = 1 << 30;
    r.devices[2].used[PT_MEM_WEIGHTS] = 5;
    r.devices[2].used[PT_MEM_KV] = 6;
    r.devices[2].used[PT_MEM_SCRATCH] = 7;
    r.n_instances = 2;
    r.instances[0] = (pt_instance_report){.first = 0, .tp = 1, .running = 1, .waiting = 2, .kv_pages_total = 48,
                                          .kv_pages_free = 42, .requests_total = 9};
    r.instances[1] = (pt_instance_report){.first = 1, .tp = 2, .kv_pages_total = 48, .kv_pages_free = 48};
    r.n_allowed = 2;
    r.allowed_tp[0] = 1;
    r.allowed_tp[1] = 2;
    return r;
}

static double num(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(v) ? v->valuedouble : -1;
}

static const char *str(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : "";
}

static void test_layout_json(void) {
    pt_layout_report r = two_instances();
    char *text = pt_layout_json(&r, NULL, NULL);
    cJSON *root = cJSON_Parse(text);
    CHECK_MSG(root != NULL, "not JSON: %s", text);
    const cJSON *devs = cJSON_GetObjectItemCaseSensitive(root, "devices");
    CHECK_EQ_INT(cJSON_GetArraySize(devs), 3);
    const cJSON *d2 = cJSON_GetArrayItem(devs, 2);
    CHECK(!strcmp(str(d2, "name"), "cpu2"));
    CHECK(!strcmp(str(d2, "kind"), "cpu"));
    CHECK(num(d2, "threads") == 2);
    CHECK(num(d2, "budget_bytes") == 1 << 30);
    const cJSON *used = cJSON_GetObjectItemCaseSensitive(d2, "used_bytes");
    CHECK(num(used, "weights") == 5 && num(used, "kv") == 6 && num(used, "scratch") == 7);
    const cJSON *insts = cJSON_GetObjectItemCaseSensitive(root, "instances");
    CHECK_EQ_INT(cJSON_GetArraySize(insts), 2);
    const cJSON *i0 = cJSON_GetArrayItem(insts, 0), *i1 = cJSON_GetArrayItem(insts, 1);
    CHECK(num(i0, "id") == 0 && num(i0, "tp") == 1 && num(i0, "running") == 1 && num(i0, "waiting") == 2);
    CHECK(num(i0, "kv_pages_total") == 48 && num(i0, "kv_pages_free") == 42 && num(i0, "requests_total") == 9);
    CHECK(num(i1, "id") == 1 && num(i1, "tp") == 2);
    const cJSON *i1d = cJSON_GetObjectItemCaseSensitive(i1, "devices");
    CHECK_EQ_INT(cJSON_GetArraySize(i1d), 2);
    CHECK(!strcmp(cJSON_GetArrayItem(i1d, 0)->valuestring, "cpu1"));
    CHECK(!strcmp(cJSON_GetArrayItem(i1d, 1)->valuestring, "cpu2"));
    const cJSON *w = cJSON_GetObjectItemCaseSensitive(i1, "weight_bytes");
    CHECK_EQ_INT(cJSON_GetArraySize(w), 2);
    CHECK(num(cJSON_GetArrayItem(w, 1), "shard") == 3000 && num(cJSON_GetArrayItem(w, 1), "replicated") == 77);
    const cJSON *allowed = cJSON_GetObjectItemCaseSensitive(root, "allowed_tp");
    CHECK(cJSON_GetArraySize(allowed) == 2 && cJSON_GetArrayItem(allowed, 1)->valueint == 2);
    const cJSON *lay = cJSON_GetObjectItemCaseSensitive(root, "layout");
    CHECK(cJSON_GetArraySize(lay) == 2 && cJSON_GetArrayItem(lay, 0)->valueint == 1 &&
          cJSON_GetArrayItem(lay, 1)->valueint == 2);
    CHECK(cJSON_GetObjectItemCaseSensitive(root, "transformation") == NULL); /* no view given */
    CHECK(cJSON_GetObjectItemCaseSensitive(root, "scheduler") == NULL);
    CHECK(cJSON_GetObjectItemCaseSensitive(i1, "comm") == NULL); /* not known */
    cJSON_Delete(root);
    free(text);

    /* A TP instance's comm failures, when known; never at TP 1. */
    r.instances[1].comm_known = r.instances[0].comm_known = true;
    r.instances[1].comm_failures = 3;
    r.instances[1].comm_renewals = 2;
    snprintf(r.instances[1].comm_last_error, sizeof(r.instances[1].comm_last_error), "comm: all-gather-v failed");
    text = pt_layout_json(&r, NULL, NULL);
    root = cJSON_Parse(text);
    insts = cJSON_GetObjectItemCaseSensitive(root, "instances");
    const cJSON *c1 = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(insts, 1), "comm");
    CHECK(num(c1, "failures") == 3 && num(c1, "renewals") == 2 &&
          !strcmp(str(c1, "last_error"), "comm: all-gather-v failed"));
    CHECK(cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(insts, 0), "comm") == NULL);
    r.instances[1].comm_failures = 0;
    r.instances[1].comm_last_error[0] = 0;
    cJSON_Delete(root);
    free(text);
    text = pt_layout_json(&r, NULL, NULL);
    root = cJSON_Parse(text);
    c1 = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(root, "instances"), 1),
                                          "comm");
    CHECK(num(c1, "failures") == 0 && cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(c1, "last_error")));
    r.instances[1].comm_known = r.instances[0].comm_known = false;
    cJSON_Delete(root);
    free(text);

    /* A CUDA device shows its ordinal instead of threads. */
    r.devices[0].kind = PT_DEVICE_CUDA;
    r.devices[0].ordinal = 3;
    text = pt_layout_json(&r, NULL, NULL);
    root = cJSON_Parse(text);
    const cJSON *d0 = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(root, "devices"), 0);
    CHECK(!strcmp(str(d0, "kind"), "cuda") && num(d0, "ordinal") == 3);
    CHECK(cJSON_GetObjectItemCaseSensitive(d0, "threads") == NULL);
    cJSON_Delete(root);
    free(text);
}


/* A finished run of two operations: a merge that went through and a split
 * that failed in its pre-copy. */
static pt_relayout_result *two_op_run(void) {
    pt_relayout_result *run = calloc(1, sizeof(*run));
    pt_xform_plan_input in = {(int[]){1, 1, 2}, 3, (int[]){2, 1, 1}, 3, 4, (int[]){1, 2}, 2, 0};
    pt_err err;
    CHECK_EQ_INT(pt_xform_plan_make(&run->plan, &in, &err), PT_OK);
    run->id = 7;
    memcpy(run->from, in.cur, 3 * sizeof(int));
    memcpy(run->to, in.want, 3 * sizeof(int));
    run->n_from = run->n_to = 3;
    pt_xform_plan_describe(&run->plan, run->summary, sizeof(run->summary));
    for (int k = 0; k < 2; k++) {
        run->ops[k].kind = run->plan.ops[k].kind;
        pt_xform_op_describe(&run->plan.ops[k], run->ops[k].what, sizeof(run->ops[k].what));
        run->ops[k].attempted = true;
    }
    pt_relayout_op *m = &run->ops[0];
    m->ok = true;
    m->st = (pt_live_xform_stats){.pause_s = 0.004, .precopy_s = 0.25, .requests_moved = 5};
    m->st.xf = (pt_xform_stats){.weight_bytes_new = 3000, .kv_bytes_moved = 4096, .kv_pages_reserved = 2,
                                .kv_pages_gained = 40, .stages = 2, .pages_precopied = 6, .pages_at_commit = 2,
                                .pages_in_place = 3};
    m->kv_pages_before = 96;
    m->kv_pages_after = 134;
    pt_relayout_op *sp = &run->ops[1];
    sp->failed_in = PT_RELAYOUT_PRECOPY;
    snprintf(sp->reason, sizeof(sp->reason), "injected comm fault");
    sp->st.xf = (pt_xform_stats){.weight_bytes_new = 500, .kv_bytes_moved = 1024, .stages = 1};
    sp->st.precopy_s = 0.5;
    run->ok = false;
    snprintf(run->reason, sizeof(run->reason), "op 2 (%s) failed in precopy: injected comm fault", sp->what);
    run->duration_s = 1.5;
    return run;
}

static const cJSON *item(const cJSON *o, const char *k) { return cJSON_GetObjectItemCaseSensitive(o, k); }

static bool int_array_is(const cJSON *a, const int *want, int n) {
    if (cJSON_GetArraySize(a) != n) return false;
    for (int i = 0; i < n; i++)
        if (cJSON_GetArrayItem(a, i)->valueint != want[i]) return false;
    return true;
}

static void test_layout_json_last_transformation(void) {
    pt_layout_report r = two_instances();
    pt_relayout_result *run = two_op_run();
    pt_layout_xform_view x = {NULL, run, 3, 1};
    char *text = pt_layout_json(&r, &x, NULL);
    cJSON *root = cJSON_Parse(text);
    const cJSON *t = item(root, "transformation");
    CHECK_MSG(cJSON_IsObject(t), "%s", text);
    CHECK(cJSON_IsFalse(item(t, "in_progress")));
    CHECK(cJSON_IsNull(item(t, "current")));
    CHECK(num(t, "completed") == 3 && num(t, "failed") == 1);
    const cJSON *last = item(t, "last");
    CHECK(!strcmp(str(last, "id"), "xf-7"));
    CHECK(int_array_is(item(last, "from"), (int[]){1, 1, 2}, 3));
    CHECK(int_array_is(item(last, "to"), (int[]){2, 1, 1}, 3));
    CHECK(!strcmp(str(last, "kind"), "mixed"));
    CHECK(!strcmp(str(last, "result"), "failed"));
    CHECK(strstr(str(last, "reason"), "failed in precopy: injected comm fault") != NULL);
    CHECK(!strcmp(str(last, "plan"), "merge [1,1] -> [2] on devices 0-1; split [2] -> [1,1] on devices 2-3"));
    CHECK(num(last, "duration_s") == 1.5);
    /* Totals over the operations tried. */
    CHECK(num(item(last, "bytes_moved"), "kv") == 5120 && num(item(last, "bytes_moved"), "weights") == 3500);
    CHECK(num(last, "stages") == 3 && num(last, "requests_moved") == 5);
    CHECK_NEAR(num(last, "precopy_s"), 0.75, 1e-12);
    CHECK_NEAR(num(last, "pause_s"), 0.004, 1e-12);
    CHECK(num(last, "kv_pages_gained") == 40 && num(last, "kv_pages_reserved") == 2);
    const cJSON *ops = item(last, "operations");
    CHECK_EQ_INT(cJSON_GetArraySize(ops), 2);
    const cJSON *o0 = cJSON_GetArrayItem(ops, 0), *o1 = cJSON_GetArrayItem(ops, 1);
    CHECK(!strcmp(str(o0, "kind"), "merge") && !strcmp(str(o0, "result"), "ok"));
    CHECK(!strcmp(str(o0, "what"), "merge [1,1] -> [2] on devices 0-1"));
    CHECK(int_array_is(item(o0, "devices"), (int[]){0, 1}, 2));
    CHECK(int_array_is(item(o0, "from"), (int[]){1, 1}, 2) && int_array_is(item(o0, "to"), (int[]){2}, 1));
    CHECK(item(o0, "reason") == NULL && item(o0, "failed_in") == NULL);
    CHECK(num(o0, "pages_precopied") == 6 && num(o0, "pages_at_commit") == 2 && num(o0, "pages_in_place") == 3);
    CHECK(num(o0, "kv_pages_before") == 96 && num(o0, "kv_pages_after") == 134);
    CHECK(!strcmp(str(o1, "kind"), "split") && !strcmp(str(o1, "result"), "failed"));
    CHECK(!strcmp(str(o1, "failed_in"), "precopy") && !strcmp(str(o1, "reason"), "injected comm fault"));
    CHECK(item(o1, "kv_pages_after") == NULL);
    cJSON_Delete(root);
    free(text);

    /* One operation that went through: its kind, result ok, reason null; an
     * operation never tried says so and carries no numbers. */
    run->ok = true;
    run->ops[1].attempted = false;
    run->plan.ops[1].kind = PT_XFORM_MERGE;
    text = pt_layout_json(&r, &x, NULL);
    root = cJSON_Parse(text);
    last = item(item(root, "transformation"), "last");
    CHECK(!strcmp(str(last, "kind"), "merge") && !strcmp(str(last, "result"), "ok"));
    CHECK(cJSON_IsNull(item(last, "reason")));
    CHECK(num(item(last, "bytes_moved"), "kv") == 4096);
    o1 = cJSON_GetArrayItem(item(last, "operations"), 1);
    CHECK(!strcmp(str(o1, "result"), "not tried") && item(o1, "bytes_moved") == NULL);
    cJSON_Delete(root);
    free(text);
    free(run);
}

static void test_layout_json_in_progress(void) {
    pt_layout_report r = two_instances();
    pt_relayout_result *run = two_op_run();
    pt_relayout_progress p = {7, PT_RELAYOUT_PRECOPY, 1, 2, 0.5, run};
    pt_layout_xform_view x = {&p, NULL, 0, 0};
    char *text = pt_layout_json(&r, &x, NULL);
    cJSON *root = cJSON_Parse(text);
    const cJSON *t = item(root, "transformation");
    CHECK(cJSON_IsTrue(item(t, "in_progress")));
    CHECK(cJSON_IsNull(item(t, "last")));
    const cJSON *cur = item(t, "current");
    CHECK(!strcmp(str(cur, "id"), "xf-7") && !strcmp(str(cur, "stage"), "precopy"));
    CHECK(num(cur, "op") == 2 && num(cur, "ops") == 2 && num(cur, "elapsed_s") == 0.5);
    CHECK(int_array_is(item(cur, "to"), (int[]){2, 1, 1}, 3));
    CHECK_EQ_INT(cJSON_GetArraySize(item(cur, "operations")), 2);
    cJSON_Delete(root);
    free(text);

    /* The 202 body: the id, the plan, where to follow it. */
    text = pt_layout_accepted_json(run);
    root = cJSON_Parse(text);
    CHECK(!strcmp(str(root, "id"), "xf-7") && !strcmp(str(root, "status"), "accepted"));
    CHECK(!strcmp(str(root, "progress"), "/v1/layout"));
    CHECK(int_array_is(item(root, "from"), (int[]){1, 1, 2}, 3));
    const cJSON *o1 = cJSON_GetArrayItem(item(root, "operations"), 1);
    CHECK(!strcmp(str(o1, "kind"), "split") && int_array_is(item(o1, "devices"), (int[]){2, 3}, 2));
    cJSON_Delete(root);
    free(text);
    free(run);
}

/* A body that parses gives the degrees; one that does not, a reason holding `want`. */
static void parse_ok(const char *body, const int *want, int n_want) {
    int tp[PT_FABRIC_MAX_DEVICES], n = -1;
    pt_err err = {{0}};
    int rc = pt_layout_parse_request(body, strlen(body), tp, &n, &err);
    CHECK_MSG(rc == PT_OK, "%s: %s", body, err.msg);
    CHECK_MSG(n == n_want && !memcmp(tp, want, (size_t)n_want * sizeof(int)), "%s: %d degrees", body, n);
}

static void parse_bad(const char *body, const char *want) {
    int tp[PT_FABRIC_MAX_DEVICES], n = -1;
    pt_err err = {{0}};
    int rc = pt_layout_parse_request(body, body ? strlen(body) : 0, tp, &n, &err);
    CHECK_EQ_INT(rc, PT_ERR_INVALID);
    CHECK_MSG(strstr(err.msg, want) != NULL, "%s: reason '%s' lacks '%s'", body ? body : "(null)", err.msg, want);
}

static void test_parse_request(void) {
    parse_ok("{\"layout\": [2, 1, 1]}", (int[]){2, 1, 1}, 3);
    parse_ok(" {\"layout\":[4]} ", (int[]){4}, 1);
    parse_ok("{\"layout\": [2.0, 0, -1]}", (int[]){2, 0, -1}, 3); /* the plan judges the values */
    parse_ok("{\"layout\": []}", (int[]){0}, 0);
    parse_bad(NULL, "the body is empty");
    parse_bad("", "the body is empty");
    parse_bad("{\"layout\": [2, 1", "not valid JSON");
    parse_bad("[2, 1, 1]", "must be a JSON object");
    parse_bad("{}", "missing 'layout'");
    parse_bad("{\"layout\": [2], \"wait\": true}", "unknown key 'wait'");
    parse_bad("{\"layout\": [2], \"layout\": [1, 1]}", "'layout' is given twice");
    parse_bad("{\"layout\": \"2,1,1\"}", "'layout' must be an array");
    parse_bad("{\"layout\": [2, \"1\"]}", "'layout'[1] must be an integer");
    parse_bad("{\"layout\": [1.5, 1]}", "'layout'[0] = 1.5 is not an integer");
    parse_bad("{\"layout\": [1e300]}", "is not an integer");
    parse_bad("{\"layout\": [null]}", "'layout'[0] must be an integer");
    char big[1024];
    size_t len = (size_t)snprintf(big, sizeof(big), "{\"layout\": [1");
    for (int i = 1; i < PT_FABRIC_MAX_DEVICES + 1; i++) len += (size_t)snprintf(big + len, sizeof(big) - len, ",1");
    snprintf(big + len, sizeof(big) - len, "]}");
    parse_bad(big, "'layout' has 65 instances; a server has at most 64 devices");
}

/* The scheduler's part: policy, degrees, SLOs (null when unset), every
 * decision by reason with the batcher's preemptions under "newest". */
static void test_layout_json_scheduler(void) {
    pt_layout_report r = two_instances();
    pt_sched_stats st = {{0}};
    st.by_reason[PT_SCHED_R_LONG_TO_MERGED] = 3;
    st.by_reason[PT_SCHED_R_MERGE_CANNOT_FIT] = 1;
    st.by_reason[PT_SCHED_R_PREEMPT_NEWEST] = 7;
    int allowed[] = {1, 2};
    pt_layout_sched_view sv = {true, allowed, 2, 500, 0, 2.5, "calibrated at start-up", 4, &st,
                               "merge devices 0-1 to TP2"};
    char *text = pt_layout_json(&r, NULL, &sv);
    cJSON *root = cJSON_Parse(text);
    CHECK_MSG(root != NULL, "not JSON: %s", text);
    const cJSON *sc = item(root, "scheduler");
    CHECK(!strcmp(str(sc, "policy"), "dynamic"));
    CHECK(int_array_is(item(sc, "allowed_tp"), allowed, 2));
    CHECK(num(item(sc, "slo"), "ttft_ms") == 500);
    CHECK(cJSON_IsNull(item(item(sc, "slo"), "tpot_ms")));
    CHECK(num(sc, "hysteresis_s") == 2.5 && num(sc, "held") == 4);
    CHECK(!strcmp(str(sc, "cost_model"), "calibrated at start-up"));
    CHECK(!strcmp(str(sc, "last_transformation_decision"), "merge devices 0-1 to TP2"));
    const cJSON *dec = item(sc, "decisions");
    CHECK(num(item(dec, "place"), "long_to_merged") == 3);
    CHECK(num(item(dec, "place"), "least_loaded") == 0);
    CHECK(num(item(dec, "merge"), "cannot_fit") == 1);
    CHECK(num(item(dec, "preempt"), "newest") == 7);
    CHECK(item(dec, "split") != NULL && item(dec, "no_transformation") != NULL && item(dec, "hold") != NULL);
    cJSON_Delete(root);
    free(text);

    sv.dynamic = false;
    sv.last_xform = "";
    text = pt_layout_json(&r, NULL, &sv);
    root = cJSON_Parse(text);
    CHECK(!strcmp(str(item(root, "scheduler"), "policy"), "static"));
    CHECK(cJSON_IsNull(item(item(root, "scheduler"), "last_transformation_decision")));
    cJSON_Delete(root);
    free(text);
}

static void test_describe(void) {
    pt_layout_report r = two_instances();
    char buf[128];
    pt_layout_describe(&r, buf, sizeof(buf));
    CHECK_MSG(!strcmp(buf, "2 instances: [1] cpu0, [2] cpu1+cpu2"), "%s", buf);
    r.n_instances = 1;
    pt_layout_describe(&r, buf, sizeof(buf));
    CHECK_MSG(!strcmp(buf, "1 instance: [1] cpu0"), "%s", buf);
    char tiny[12];
    r.n_instances = 2;
    pt_layout_describe(&r, tiny, sizeof(tiny)); /* cut short, still terminated */
    CHECK_MSG(strlen(tiny) == sizeof(tiny) - 1, "%s", tiny);
}

TEST_MAIN(TEST(test_layout_json), TEST(test_layout_json_scheduler), TEST(test_layout_json_last_transformation), TEST(test_layout_json_in_progress),
          TEST(test_parse_request), TEST(test_describe))
