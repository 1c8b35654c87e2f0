/* The server's layout module (src/server/layout.h): where a request goes,
 * from hand-made instance states; the GET /v1/layout JSON; the log line. */
#include <stdlib.h>

#include <cjson/cJSON.h>

#include "server/layout.h"
#include "test.h"

static pt_route_candidate idle(uint64_t pages) {
    return (pt_route_candidate){.max_ctx = 128, .pages_total = pages, .pages_free = pages};
}

static void test_route_pages(void) {
    CHECK_EQ_INT(pt_route_pages(28, 16, 3), 6); /* two pages on each of 3 KV heads */
    CHECK_EQ_INT(pt_route_pages(32, 16, 3), 6);
    CHECK_EQ_INT(pt_route_pages(33, 16, 3), 9);
    CHECK_EQ_INT(pt_route_pages(1, 16, 8), 8);
    CHECK_EQ_INT(pt_route_pages(0, 16, 3), 0);
}

/* Equal idle instances take requests in turn: what was routed counts at
 * once, before the batchers' snapshots show it. */
static void test_route_spreads(void) {
    pt_route_candidate c[3] = {idle(96), idle(96), idle(96)};
    int want[] = {0, 1, 2, 0, 1, 2};
    for (int k = 0; k < 6; k++) {
        int i = pt_route_pick(c, 3, 24, 6);
        CHECK_MSG(i == want[k], "request %d went to %d, want %d", k, i, want[k]);
        if (i >= 0) c[i].pages_promised += 6;
    }
    /* A request finishing (its promise returned) makes its instance the freest. */
    c[1].pages_promised -= 6;
    CHECK_EQ_INT(pt_route_pick(c, 3, 24, 6), 1);
}

static void test_route_most_free(void) {
    /* The TP2 instance pools two ranks' pages: the most free. */
    pt_route_candidate c[3] = {idle(48), idle(48), idle(96)};
    CHECK_EQ_INT(pt_route_pick(c, 3, 24, 6), 2);
    /* The snapshot says fewer are free than the promises leave: it wins. */
    c[2].pages_free = 40;
    CHECK_EQ_INT(pt_route_pick(c, 3, 24, 6), 0);
    /* Promises beyond the pool count as none free, not as a wrap-around. */
    c[0].pages_promised = 500;
    c[1].pages_promised = 8;
    CHECK_EQ_INT(pt_route_pick(c, 3, 24, 6), 1); /* 0, 40, 40: a tie goes to the lower index ... */
    c[1].load = 1;
    CHECK_EQ_INT(pt_route_pick(c, 3, 24, 6), 2); /* ... unless its load is higher */
}

static void test_route_fits(void) {
    pt_route_candidate c[2] = {idle(96), idle(96)};
    c[0].max_ctx = 64;
    c[0].pages_promised = 0;
    c[1].pages_promised = 50;
    /* 100 tokens do not fit instance 0's context, however free it is. */
    CHECK_EQ_INT(pt_route_pick(c, 2, 100, 21), 1);
    CHECK_EQ_INT(pt_route_pick(c, 2, 64, 12), 0);
    CHECK_EQ_INT(pt_route_pick(c, 2, 129, 27), -1); /* no context holds it */
    /* A pool too small for the request at all comes last, even when freer. */
    pt_route_candidate d[2] = {idle(4), idle(100)};
    d[1].pages_free = 2;
    CHECK_EQ_INT(pt_route_pick(d, 2, 24, 6), 1);
    d[1].max_ctx = 16;
    CHECK_EQ_INT(pt_route_pick(d, 2, 24, 6), 0); /* the only context that holds it */
    /* Instances that refused (queue full) are passed over. */
    pt_route_candidate e[2] = {idle(96), idle(48)};
    e[0].refused = true;
    CHECK_EQ_INT(pt_route_pick(e, 2, 24, 6), 1);
    e[1].refused = true;
    CHECK_EQ_INT(pt_route_pick(e, 2, 24, 6), -1);
    CHECK_EQ_INT(pt_route_pick(e, 0, 24, 6), -1);
}

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
    char *text = pt_layout_json(&r);
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
    cJSON_Delete(root);
    free(text);

    /* A CUDA device shows its ordinal instead of threads. */
    r.devices[0].kind = PT_DEVICE_CUDA;
    r.devices[0].ordinal = 3;
    text = pt_layout_json(&r);
    root = cJSON_Parse(text);
    const cJSON *d0 = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(root, "devices"), 0);
    CHECK(!strcmp(str(d0, "kind"), "cuda") && num(d0, "ordinal") == 3);
    CHECK(cJSON_GetObjectItemCaseSensitive(d0, "threads") == NULL);
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

TEST_MAIN(TEST(test_route_pages), TEST(test_route_spreads), TEST(test_route_most_free), TEST(test_route_fits),
          TEST(test_layout_json), TEST(test_describe))
