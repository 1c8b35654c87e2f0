/* Layout JSON, its log line, and the routing placeholder (layout.h). */
#include "server/layout.h"

#include <stdio.h>
#include <stdlib.h>

#include <cjson/cJSON.h>

#include "proteus/util.h"

static cJSON *device_json(const pt_device_report *d) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "name", d->name);
    cJSON_AddStringToObject(o, "kind", d->kind == PT_DEVICE_CUDA ? "cuda" : "cpu");
    if (d->kind == PT_DEVICE_CUDA) cJSON_AddNumberToObject(o, "ordinal", d->ordinal);
    else cJSON_AddNumberToObject(o, "threads", d->threads);
    cJSON_AddNumberToObject(o, "budget_bytes", (double)d->budget_bytes);
    cJSON *used = cJSON_AddObjectToObject(o, "used_bytes");
    for (int c = 0; c < PT_MEM_CLASS_COUNT; c++)
        cJSON_AddNumberToObject(used, pt_mem_class_name((pt_mem_class)c), (double)d->used[c]);
    return o;
}

static cJSON *instance_json(const pt_layout_report *r, int id) {
    const pt_instance_report *in = &r->instances[id];
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "id", id);
    cJSON_AddNumberToObject(o, "tp", in->tp);
    cJSON *devs = cJSON_AddArrayToObject(o, "devices");
    cJSON *weights = cJSON_CreateArray();
    for (int k = 0; k < in->tp && in->first + k < r->n_devices; k++) {
        const pt_device_report *d = &r->devices[in->first + k];
        cJSON_AddItemToArray(devs, cJSON_CreateString(d->name));
        cJSON *w = cJSON_CreateObject();
        cJSON_AddNumberToObject(w, "shard", (double)d->weight_shard);
        cJSON_AddNumberToObject(w, "replicated", (double)d->weight_replicated);
        cJSON_AddItemToArray(weights, w);
    }
    cJSON_AddNumberToObject(o, "running", in->running);
    cJSON_AddNumberToObject(o, "waiting", in->waiting);
    cJSON_AddNumberToObject(o, "requests_total", (double)in->requests_total);
    cJSON_AddNumberToObject(o, "kv_pages_total", (double)in->kv_pages_total);
    cJSON_AddNumberToObject(o, "kv_pages_free", (double)in->kv_pages_free);
    cJSON_AddItemToObject(o, "weight_bytes", weights);
    return o;
}

char *pt_layout_json(const pt_layout_report *r) {
    cJSON *root = cJSON_CreateObject();
    cJSON *devs = cJSON_AddArrayToObject(root, "devices");
    for (int i = 0; i < r->n_devices; i++) cJSON_AddItemToArray(devs, device_json(&r->devices[i]));
    cJSON *insts = cJSON_AddArrayToObject(root, "instances");
    for (int i = 0; i < r->n_instances; i++) cJSON_AddItemToArray(insts, instance_json(r, i));
    cJSON_AddItemToObject(root, "allowed_tp", cJSON_CreateIntArray(r->allowed_tp, r->n_allowed));
    char *out = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!out) out = pt_xstrdup("{}"); /* cJSON ran out of memory */
    return out;
}

void pt_layout_describe(const pt_layout_report *r, char *buf, size_t n) {
    size_t len = (size_t)snprintf(buf, n, "%d instance%s:", r->n_instances, r->n_instances == 1 ? "" : "s");
    for (int i = 0; i < r->n_instances && len < n; i++) {
        const pt_instance_report *in = &r->instances[i];
        len += (size_t)snprintf(buf + len, n - len, "%s [%d] ", i ? "," : "", in->tp);
        for (int k = 0; k < in->tp && in->first + k < r->n_devices && len < n; k++)
            len += (size_t)snprintf(buf + len, n - len, "%s%s", k ? "+" : "", r->devices[in->first + k].name);
    }
}

uint64_t pt_route_pages(uint64_t tokens, uint32_t page_size, uint32_t n_kv_heads) {
    if (page_size == 0) return 0;
    return (tokens + page_size - 1) / page_size * n_kv_heads;
}

static uint64_t free_estimate(const pt_route_candidate *c) {
    uint64_t unpromised = c->pages_total > c->pages_promised ? c->pages_total - c->pages_promised : 0;
    return c->pages_free < unpromised ? c->pages_free : unpromised;
}

/* Whether a is a better home than b (both can take the request). */
static bool better(const pt_route_candidate *a, const pt_route_candidate *b, uint64_t pages) {
    bool a_holds = a->pages_total >= pages, b_holds = b->pages_total >= pages;
    if (a_holds != b_holds) return a_holds;
    uint64_t fa = free_estimate(a), fb = free_estimate(b);
    if (fa != fb) return fa > fb;
    return a->load < b->load;
}

int pt_route_pick(const pt_route_candidate *c, int n, uint64_t tokens, uint64_t pages) {
    int best = -1;
    for (int i = 0; i < n; i++) {
        if (c[i].refused || tokens > c[i].max_ctx) continue;
        if (best < 0 || better(&c[i], &c[best], pages)) best = i;
    }
    return best;
}
