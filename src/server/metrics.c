#include "proteus/metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proteus/util.h"

static void hist_init(pt_histogram *h, const char *name, const char *help, const double *b, size_t n) {
    memset(h, 0, sizeof(*h));
    h->name = name;
    h->help = help;
    h->n_bounds = n;
    memcpy(h->bounds, b, n * sizeof(double));
}

void pt_metrics_init(pt_metrics *m) {
    /* Bucket edges as vLLM's, so dashboards built for it read these too. */
    static const double ttft[] = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5,
                                  0.75,  1.0,   2.5,  5.0,  7.5,  10.0, 20.0, 40.0, 80.0};
    static const double itl[] = {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5};
    static const double e2e[] = {0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
                                 120.0, 240.0};
    memset(m, 0, sizeof(*m));
    hist_init(&m->ttft, "proteus_time_to_first_token_seconds", "Time from request arrival to its first token.", ttft,
              sizeof(ttft) / sizeof(ttft[0]));
    hist_init(&m->itl, "proteus_inter_token_latency_seconds", "Time between consecutive tokens of a request.", itl,
              sizeof(itl) / sizeof(itl[0]));
    hist_init(&m->e2e, "proteus_e2e_request_latency_seconds", "Time from request arrival to its end.", e2e,
              sizeof(e2e) / sizeof(e2e[0]));
    hist_init(&m->queue, "proteus_request_queue_time_seconds", "Time a request waited before admission.", e2e,
              sizeof(e2e) / sizeof(e2e[0]));
    /* A pause is a few decode steps at most; pre-copy runs while serving. */
    static const double pause[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0};
    static const double precopy[] = {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0};
    hist_init(&m->xform_pause, "proteus_transformation_pause_seconds",
              "Time the instances of a transformation were paused (sources parked -> targets running).", pause,
              sizeof(pause) / sizeof(pause[0]));
    hist_init(&m->xform_precopy, "proteus_transformation_precopy_seconds",
              "Time a transformation pre-copied KV pages while its sources served.", precopy,
              sizeof(precopy) / sizeof(precopy[0]));
}

void pt_histogram_observe(pt_histogram *h, double v) {
    size_t i = 0;
    while (i < h->n_bounds && v > h->bounds[i]) i++;
    h->counts[i]++;
    h->sum += v;
    h->count++;
}

static void render_hist(pt_text *b, const pt_histogram *h, const char *model) {
    pt_text_printf(b, "# HELP %s %s\n# TYPE %s histogram\n", h->name, h->help, h->name);
    uint64_t cum = 0;
    for (size_t i = 0; i < h->n_bounds; i++) {
        cum += h->counts[i];
        pt_text_printf(b, "%s_bucket{model_name=\"%s\",le=\"%g\"} %llu\n", h->name, model, h->bounds[i],
                       (unsigned long long)cum);
    }
    cum += h->counts[h->n_bounds];
    pt_text_printf(b, "%s_bucket{model_name=\"%s\",le=\"+Inf\"} %llu\n", h->name, model, (unsigned long long)cum);
    pt_text_printf(b, "%s_sum{model_name=\"%s\"} %.9g\n", h->name, model, h->sum);
    pt_text_printf(b, "%s_count{model_name=\"%s\"} %llu\n", h->name, model, (unsigned long long)h->count);
}

/* Per device: KV pages (where the instance's stats cover the rank), memory
 * by class and the budget. */
static void render_devices(pt_text *b, const pt_layout_report *r, const char *model) {
    pt_text_printf(b, "# HELP proteus_kv_pages_used KV head pages in use per device.\n"
                   "# TYPE proteus_kv_pages_used gauge\n");
    for (int i = 0; i < r->n_devices; i++)
        if (r->devices[i].kv_known)
            pt_text_printf(b, "proteus_kv_pages_used{model_name=\"%s\",device=\"%s\"} %llu\n", model, r->devices[i].name,
                           (unsigned long long)(r->devices[i].kv_pages_total - r->devices[i].kv_pages_free));
    pt_text_printf(b, "# HELP proteus_kv_pages_free KV head pages free per device.\n"
                   "# TYPE proteus_kv_pages_free gauge\n");
    for (int i = 0; i < r->n_devices; i++)
        if (r->devices[i].kv_known)
            pt_text_printf(b, "proteus_kv_pages_free{model_name=\"%s\",device=\"%s\"} %llu\n", model, r->devices[i].name,
                           (unsigned long long)r->devices[i].kv_pages_free);
    pt_text_printf(b, "# HELP proteus_device_memory_bytes Device memory held, by class.\n"
                   "# TYPE proteus_device_memory_bytes gauge\n");
    for (int i = 0; i < r->n_devices; i++)
        for (int c = 0; c < PT_MEM_CLASS_COUNT; c++)
            pt_text_printf(b, "proteus_device_memory_bytes{device=\"%s\",class=\"%s\"} %llu\n", r->devices[i].name,
                           pt_mem_class_name((pt_mem_class)c), (unsigned long long)r->devices[i].used[c]);
    pt_text_printf(b, "# HELP proteus_device_memory_budget_bytes Device memory budget (0 = no limit).\n"
                   "# TYPE proteus_device_memory_budget_bytes gauge\n");
    for (int i = 0; i < r->n_devices; i++)
        pt_text_printf(b, "proteus_device_memory_budget_bytes{device=\"%s\"} %llu\n", r->devices[i].name,
                       (unsigned long long)r->devices[i].budget_bytes);
}

/* One gauge (or counter) per instance; `f` picks the value. */
typedef uint64_t (*instance_field)(const pt_instance_report *in);
static uint64_t f_running(const pt_instance_report *in) { return in->running; }
static uint64_t f_waiting(const pt_instance_report *in) { return in->waiting; }
static uint64_t f_pages_free(const pt_instance_report *in) { return in->kv_pages_free; }
static uint64_t f_requests(const pt_instance_report *in) { return in->requests_total; }
static uint64_t f_comm_failures(const pt_instance_report *in) { return in->comm_failures; }

/* Layout changes: operations by kind and result, their pauses and
 * pre-copies, bytes moved; and the layout itself, one sample per instance
 * named by its first device (stable across changes elsewhere). */
static void render_transformations(pt_text *b, const pt_metrics *m, const pt_layout_report *r, const char *model) {
    static const char *kinds[PT_METRICS_XFORM_KINDS] = {"merge", "split", "reshape"};
    pt_text_printf(b, "# HELP proteus_transformations_total Transformation operations, by kind and result.\n"
                   "# TYPE proteus_transformations_total counter\n");
    for (int k = 0; k < PT_METRICS_XFORM_KINDS; k++)
        for (int res = 0; res < 2; res++)
            pt_text_printf(b, "proteus_transformations_total{kind=\"%s\",result=\"%s\"} %llu\n", kinds[k],
                           res ? "failed" : "ok", (unsigned long long)m->xforms[k][res]);
    render_hist(b, &m->xform_pause, model);
    render_hist(b, &m->xform_precopy, model);
    pt_text_printf(b, "# HELP proteus_transformation_bytes_moved_total Bytes transformations moved: KV pages copied, "
                   "weight shards built.\n# TYPE proteus_transformation_bytes_moved_total counter\n"
                   "proteus_transformation_bytes_moved_total{what=\"kv\"} %llu\n"
                   "proteus_transformation_bytes_moved_total{what=\"weights\"} %llu\n",
                   (unsigned long long)m->xform_kv_bytes, (unsigned long long)m->xform_weight_bytes);
    pt_text_printf(b, "# HELP proteus_transformation_in_progress 1 while a layout change runs.\n"
                   "# TYPE proteus_transformation_in_progress gauge\nproteus_transformation_in_progress %d\n",
                   m->xform_in_progress ? 1 : 0);
    pt_text_printf(b, "# HELP proteus_layout_instance_tp The current layout: each instance's TP degree.\n"
                   "# TYPE proteus_layout_instance_tp gauge\n");
    for (int i = 0; i < r->n_instances; i++)
        pt_text_printf(b, "proteus_layout_instance_tp{instance=\"%d\",first_device=\"%d\"} %d\n", i,
                       r->instances[i].first, r->instances[i].tp);
}

static void render_instances(pt_text *b, const pt_layout_report *r) {
    /* The layout itself: each instance's TP degree, its devices in a label. */
    pt_text_printf(b, "# HELP proteus_instance_tp TP degree of each instance; devices lists its ranks' devices.\n"
                   "# TYPE proteus_instance_tp gauge\n");
    for (int i = 0; i < r->n_instances; i++) {
        const pt_instance_report *in = &r->instances[i];
        pt_text_printf(b, "proteus_instance_tp{instance=\"%d\",devices=\"", i);
        for (int k = 0; k < in->tp && in->first + k < r->n_devices; k++)
            pt_text_printf(b, "%s%s", k ? "," : "", r->devices[in->first + k].name);
        pt_text_printf(b, "\"} %d\n", in->tp);
    }
    static const struct {
        const char *name, *type, *help;
        instance_field f;
    } G[] = {
        {"proteus_instance_running", "gauge", "Requests prefilling or decoding per instance.", f_running},
        {"proteus_instance_waiting", "gauge", "Requests queued for admission per instance.", f_waiting},
        {"proteus_instance_kv_pages_free", "gauge", "KV head pages free over an instance's ranks.", f_pages_free},
        {"proteus_instance_requests_total", "counter", "Requests routed to each instance.", f_requests},
        {"proteus_instance_comm_failures_total", "counter",
         "Steps of each instance that failed on a communication error (their requests failed).", f_comm_failures},
    };
    for (size_t g = 0; g < sizeof(G) / sizeof(G[0]); g++) {
        pt_text_printf(b, "# HELP %s %s\n# TYPE %s %s\n", G[g].name, G[g].help, G[g].name, G[g].type);
        for (int i = 0; i < r->n_instances; i++)
            pt_text_printf(b, "%s{instance=\"%d\"} %llu\n", G[g].name, i, (unsigned long long)G[g].f(&r->instances[i]));
    }
}

/* One metric with a single sample labelled by the model. */
static void render_scalar(pt_text *b, const char *name, const char *type, const char *help, const char *model,
                          uint64_t v) {
    pt_text_printf(b, "# HELP %s %s\n# TYPE %s %s\n%s{model_name=\"%s\"} %llu\n", name, help, name, type, name, model,
                   (unsigned long long)v);
}

char *pt_metrics_render(const pt_metrics *m, const pt_layout_report *r, const char *model) {
    pt_text b = {0};
    render_hist(&b, &m->ttft, model);
    render_hist(&b, &m->itl, model);
    render_hist(&b, &m->e2e, model);
    render_hist(&b, &m->queue, model);
    uint64_t running = 0, waiting = 0, preemptions = 0;
    uint64_t queries = m->prefix_queries_retired, hits = m->prefix_hits_retired, cached = 0;
    for (int i = 0; i < r->n_instances; i++) {
        running += r->instances[i].running;
        waiting += r->instances[i].waiting;
        preemptions += r->instances[i].preemptions;
        queries += r->instances[i].prefix_queries;
        hits += r->instances[i].prefix_hits;
        cached += r->instances[i].prefix_pages;
    }
    render_scalar(&b, "proteus_num_requests_running", "gauge", "Requests prefilling or decoding.", model, running);
    render_scalar(&b, "proteus_num_requests_waiting", "gauge", "Requests queued for admission.", model, waiting);
    render_devices(&b, r, model);
    render_instances(&b, r);
    render_transformations(&b, m, r, model);
    render_scalar(&b, "proteus_prompt_tokens_total", "counter", "Prompt tokens processed.", model, m->prompt_tokens);
    render_scalar(&b, "proteus_generation_tokens_total", "counter", "Tokens generated.", model, m->generation_tokens);
    static const char *reasons[PT_REASON_COUNT] = {"stop", "length", "abort", "error"};
    pt_text_printf(&b, "# HELP proteus_request_success_total Finished requests by finish reason.\n"
                   "# TYPE proteus_request_success_total counter\n");
    for (int i = 0; i < PT_REASON_COUNT; i++)
        pt_text_printf(&b, "proteus_request_success_total{model_name=\"%s\",finished_reason=\"%s\"} %llu\n", model,
                       reasons[i], (unsigned long long)m->finished[i]);
    render_scalar(&b, "proteus_requests_rejected_total", "counter", "Requests refused because the queue was full.",
                  model, m->rejected_busy);
    render_scalar(&b, "proteus_preemptions_total", "counter", "Sequences preempted for lack of KV pages.",
                  model, preemptions);
    render_scalar(&b, "proteus_prefix_cache_queries_total", "counter", "Prompt tokens looked up in the prefix cache.",
                  model, queries);
    render_scalar(&b, "proteus_prefix_cache_hits_total", "counter",
                  "Prompt tokens found in the prefix cache (not computed).", model, hits);
    render_scalar(&b, "proteus_prefix_cache_pages", "gauge",
                  "Pages the prefix cache holds (each one head page per KV head).", model, cached);
    return pt_text_take(&b);
}
