/* Prometheus rendering: cumulative buckets, +Inf equal to _count, _sum, and
 * the gauges of the layout: running and waiting summed over the instances
 * and per instance, KV pages and memory per device, the instances' TP; the
 * transformations by kind and result, their pauses and pre-copies, bytes
 * moved, and the layout gauge. */
#include <stdlib.h>

#include "proteus/metrics.h"
#include "test.h"

static pt_device_report device(const char *name, uint64_t total, uint64_t free_pages) {
    pt_device_report d = {.kind = PT_DEVICE_CPU, .threads = 1, .ordinal = -1, .kv_known = true,
                          .kv_pages_total = total, .kv_pages_free = free_pages};
    snprintf(d.name, sizeof(d.name), "%s", name);
    return d;
}

/* Two instances over three devices: [1] cpu0, [2] cpu1+cpu2. */
static void two_instances(pt_layout_report *r) {
    memset(r, 0, sizeof(*r));
    r->n_devices = 3;
    r->devices[0] = device("cpu0", 100, 60);
    r->devices[1] = device("cpu1", 100, 100);
    r->devices[2] = device("cpu2", 50, 45);
    r->devices[1].used[PT_MEM_WEIGHTS] = 1000;
    r->devices[1].used[PT_MEM_KV] = 2000;
    r->devices[1].used[PT_MEM_SCRATCH] = 30;
    r->devices[1].budget_bytes = 1 << 20;
    r->n_instances = 2;
    r->instances[0] = (pt_instance_report){.first = 0, .tp = 1, .running = 2, .waiting = 5, .kv_pages_total = 100,
                                           .kv_pages_free = 60, .requests_total = 7, .preemptions = 1};
    r->instances[1] = (pt_instance_report){.first = 1, .tp = 2, .running = 1, .waiting = 0, .kv_pages_total = 150,
                                           .kv_pages_free = 145, .requests_total = 3, .preemptions = 2};
}

static void test_histogram_render(void) {
    pt_metrics m;
    pt_metrics_init(&m);
    pt_histogram_observe(&m.ttft, 0.003);  /* in le=0.005 */
    pt_histogram_observe(&m.ttft, 0.005);  /* boundary: le is inclusive */
    pt_histogram_observe(&m.ttft, 1000.0); /* above every bound */
    m.prompt_tokens = 42;
    m.finished[PT_REASON_LENGTH] = 3;
    pt_layout_report r;
    two_instances(&r);
    char *t = pt_metrics_render(&m, &r, "smol");
    CHECK(strstr(t, "proteus_time_to_first_token_seconds_bucket{model_name=\"smol\",le=\"0.001\"} 0\n"));
    CHECK(strstr(t, "proteus_time_to_first_token_seconds_bucket{model_name=\"smol\",le=\"0.005\"} 2\n"));
    CHECK(strstr(t, "proteus_time_to_first_token_seconds_bucket{model_name=\"smol\",le=\"80\"} 2\n"));
    CHECK(strstr(t, "proteus_time_to_first_token_seconds_bucket{model_name=\"smol\",le=\"+Inf\"} 3\n"));
    CHECK(strstr(t, "proteus_time_to_first_token_seconds_count{model_name=\"smol\"} 3\n"));
    CHECK(strstr(t, "proteus_time_to_first_token_seconds_sum{model_name=\"smol\"} 1000.008\n"));
    CHECK(strstr(t, "# TYPE proteus_inter_token_latency_seconds histogram\n"));
    CHECK(strstr(t, "proteus_prompt_tokens_total{model_name=\"smol\"} 42\n"));
    CHECK(strstr(t, "finished_reason=\"length\"} 3\n"));
    free(t);
}

static void test_layout_gauges(void) {
    pt_metrics m;
    pt_metrics_init(&m);
    pt_layout_report r;
    two_instances(&r);
    r.devices[2].kv_known = false; /* a rank the batcher's stats do not cover: no KV sample */
    char *t = pt_metrics_render(&m, &r, "smol");
    /* Sums over the instances. */
    CHECK(strstr(t, "proteus_num_requests_running{model_name=\"smol\"} 3\n"));
    CHECK(strstr(t, "proteus_num_requests_waiting{model_name=\"smol\"} 5\n"));
    CHECK(strstr(t, "proteus_preemptions_total{model_name=\"smol\"} 3\n"));
    /* KV pages per device, every rank of every instance. */
    CHECK(strstr(t, "proteus_kv_pages_used{model_name=\"smol\",device=\"cpu0\"} 40\n"));
    CHECK(strstr(t, "proteus_kv_pages_free{model_name=\"smol\",device=\"cpu1\"} 100\n"));
    CHECK(!strstr(t, "device=\"cpu2\"} 45"));
    /* Memory per device and class, and the budget. */
    CHECK(strstr(t, "# TYPE proteus_device_memory_bytes gauge\n"));
    CHECK(strstr(t, "proteus_device_memory_bytes{device=\"cpu1\",class=\"weights\"} 1000\n"));
    CHECK(strstr(t, "proteus_device_memory_bytes{device=\"cpu1\",class=\"kv\"} 2000\n"));
    CHECK(strstr(t, "proteus_device_memory_bytes{device=\"cpu1\",class=\"scratch\"} 30\n"));
    CHECK(strstr(t, "proteus_device_memory_bytes{device=\"cpu2\",class=\"kv\"} 0\n"));
    CHECK(strstr(t, "proteus_device_memory_budget_bytes{device=\"cpu1\"} 1048576\n"));
    CHECK(strstr(t, "proteus_device_memory_budget_bytes{device=\"cpu0\"} 0\n"));
    /* Per instance. */
    CHECK(strstr(t, "proteus_instance_tp{instance=\"0\",devices=\"cpu0\"} 1\n"));
    CHECK(strstr(t, "proteus_instance_tp{instance=\"1\",devices=\"cpu1,cpu2\"} 2\n"));
    CHECK(strstr(t, "proteus_instance_running{instance=\"0\"} 2\n"));
    CHECK(strstr(t, "proteus_instance_running{instance=\"1\"} 1\n"));
    CHECK(strstr(t, "proteus_instance_waiting{instance=\"0\"} 5\n"));
    CHECK(strstr(t, "proteus_instance_kv_pages_free{instance=\"1\"} 145\n"));
    CHECK(strstr(t, "# TYPE proteus_instance_requests_total counter\n"));
    CHECK(strstr(t, "proteus_instance_requests_total{instance=\"0\"} 7\n"));
    CHECK(strstr(t, "proteus_instance_requests_total{instance=\"1\"} 3\n"));
    free(t);
}

static void test_transformations(void) {
    pt_metrics m;
    pt_metrics_init(&m);
    pt_layout_report r;
    two_instances(&r);
    char *t = pt_metrics_render(&m, &r, "smol");
    /* Before any: every kind and result at zero, nothing in progress. */
    CHECK(strstr(t, "# TYPE proteus_transformations_total counter\n"));
    CHECK(strstr(t, "proteus_transformations_total{kind=\"merge\",result=\"ok\"} 0\n"));
    CHECK(strstr(t, "proteus_transformations_total{kind=\"reshape\",result=\"failed\"} 0\n"));
    CHECK(strstr(t, "proteus_transformation_pause_seconds_count{model_name=\"smol\"} 0\n"));
    CHECK(strstr(t, "proteus_transformation_in_progress 0\n"));
    free(t);

    m.xforms[0][0] = 3; /* merges done */
    m.xforms[1][1] = 1; /* a split failed */
    pt_histogram_observe(&m.xform_pause, 0.004);
    pt_histogram_observe(&m.xform_pause, 0.03);
    pt_histogram_observe(&m.xform_precopy, 0.2);
    m.xform_kv_bytes = 123456;
    m.xform_weight_bytes = 7890123;
    m.xform_in_progress = true;
    t = pt_metrics_render(&m, &r, "smol");
    CHECK(strstr(t, "proteus_transformations_total{kind=\"merge\",result=\"ok\"} 3\n"));
    CHECK(strstr(t, "proteus_transformations_total{kind=\"merge\",result=\"failed\"} 0\n"));
    CHECK(strstr(t, "proteus_transformations_total{kind=\"split\",result=\"failed\"} 1\n"));
    CHECK(strstr(t, "proteus_transformations_total{kind=\"split\",result=\"ok\"} 0\n"));
    CHECK(strstr(t, "# TYPE proteus_transformation_pause_seconds histogram\n"));
    CHECK(strstr(t, "proteus_transformation_pause_seconds_bucket{model_name=\"smol\",le=\"0.0025\"} 0\n"));
    CHECK(strstr(t, "proteus_transformation_pause_seconds_bucket{model_name=\"smol\",le=\"0.005\"} 1\n"));
    CHECK(strstr(t, "proteus_transformation_pause_seconds_bucket{model_name=\"smol\",le=\"0.05\"} 2\n"));
    CHECK(strstr(t, "proteus_transformation_pause_seconds_count{model_name=\"smol\"} 2\n"));
    CHECK(strstr(t, "proteus_transformation_pause_seconds_sum{model_name=\"smol\"} 0.034\n"));
    CHECK(strstr(t, "proteus_transformation_precopy_seconds_bucket{model_name=\"smol\",le=\"0.25\"} 1\n"));
    CHECK(strstr(t, "proteus_transformation_precopy_seconds_count{model_name=\"smol\"} 1\n"));
    CHECK(strstr(t, "# TYPE proteus_transformation_bytes_moved_total counter\n"));
    CHECK(strstr(t, "proteus_transformation_bytes_moved_total{what=\"kv\"} 123456\n"));
    CHECK(strstr(t, "proteus_transformation_bytes_moved_total{what=\"weights\"} 7890123\n"));
    CHECK(strstr(t, "proteus_transformation_in_progress 1\n"));
    /* The layout: [1] on cpu0, [2] on cpu1+cpu2. */
    CHECK(strstr(t, "# TYPE proteus_layout_instance_tp gauge\n"));
    CHECK(strstr(t, "proteus_layout_instance_tp{instance=\"0\",first_device=\"0\"} 1\n"));
    CHECK(strstr(t, "proteus_layout_instance_tp{instance=\"1\",first_device=\"1\"} 2\n"));
    CHECK(!strstr(t, "proteus_layout_instance_tp{instance=\"2\""));
    free(t);
}

TEST_MAIN(TEST(test_histogram_render), TEST(test_layout_gauges), TEST(test_transformations))
