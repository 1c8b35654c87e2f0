/* Prometheus rendering: cumulative buckets, +Inf equal to _count, _sum, and
 * the gauges from the batcher's stats. */
#include <stdlib.h>

#include "proteus/metrics.h"
#include "test.h"

static void test_histogram_render(void) {
    pt_metrics m;
    pt_metrics_init(&m);
    pt_histogram_observe(&m.ttft, 0.003);  /* in le=0.005 */
    pt_histogram_observe(&m.ttft, 0.005);  /* boundary: le is inclusive */
    pt_histogram_observe(&m.ttft, 1000.0); /* above every bound */
    m.prompt_tokens = 42;
    m.finished[PT_REASON_LENGTH] = 3;
    pt_batcher_stats s = {.running = 2, .waiting = 5, .n_ranks = 2, .device = {"cpu0", "cuda1"}};
    s.kv_pages_total[0] = 100, s.kv_pages_free[0] = 60;
    s.kv_pages_total[1] = 100, s.kv_pages_free[1] = 100;
    char *t = pt_metrics_render(&m, &s, "smol");
    CHECK(strstr(t, "proteus_time_to_first_token_seconds_bucket{model_name=\"smol\",le=\"0.001\"} 0\n"));
    CHECK(strstr(t, "proteus_time_to_first_token_seconds_bucket{model_name=\"smol\",le=\"0.005\"} 2\n"));
    CHECK(strstr(t, "proteus_time_to_first_token_seconds_bucket{model_name=\"smol\",le=\"80\"} 2\n"));
    CHECK(strstr(t, "proteus_time_to_first_token_seconds_bucket{model_name=\"smol\",le=\"+Inf\"} 3\n"));
    CHECK(strstr(t, "proteus_time_to_first_token_seconds_count{model_name=\"smol\"} 3\n"));
    CHECK(strstr(t, "proteus_time_to_first_token_seconds_sum{model_name=\"smol\"} 1000.008\n"));
    CHECK(strstr(t, "# TYPE proteus_inter_token_latency_seconds histogram\n"));
    CHECK(strstr(t, "proteus_num_requests_waiting{model_name=\"smol\"} 5\n"));
    CHECK(strstr(t, "proteus_kv_pages_used{model_name=\"smol\",device=\"cpu0\"} 40\n"));
    CHECK(strstr(t, "proteus_kv_pages_free{model_name=\"smol\",device=\"cuda1\"} 100\n"));
    CHECK(strstr(t, "proteus_prompt_tokens_total{model_name=\"smol\"} 42\n"));
    CHECK(strstr(t, "finished_reason=\"length\"} 3\n"));
    free(t);
}

TEST_MAIN(TEST(test_histogram_render))
