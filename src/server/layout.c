/* Layout JSON and its log line (layout.h). */
#include "server/layout.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "proteus/openai_api.h"
#include "proteus/util.h"

/* Adds item to an object (under key) or to an array (key NULL); when it
 * cannot (out of memory: `to` or a key copy missing), item is freed, and
 * print_json answers NULL as pt_json_nomem() tells. */
static void attach(cJSON *to, const char *key, cJSON *item) {
    if (!(key ? cJSON_AddItemToObject(to, key, item) : cJSON_AddItemToArray(to, item))) cJSON_Delete(item);
}

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
        attach(devs, NULL, cJSON_CreateString(d->name));
        cJSON *w = cJSON_CreateObject();
        cJSON_AddNumberToObject(w, "shard", (double)d->weight_shard);
        cJSON_AddNumberToObject(w, "replicated", (double)d->weight_replicated);
        attach(weights, NULL, w);
    }
    cJSON_AddNumberToObject(o, "running", in->running);
    cJSON_AddNumberToObject(o, "waiting", in->waiting);
    cJSON_AddNumberToObject(o, "requests_total", (double)in->requests_total);
    cJSON_AddNumberToObject(o, "kv_pages_total", (double)in->kv_pages_total);
    cJSON_AddNumberToObject(o, "kv_pages_free", (double)in->kv_pages_free);
    attach(o, "weight_bytes", weights);
    if (in->comm_known && in->tp > 1) {
        /* What its ranks' exchanges went through: a failed step fails its
         * requests, and the instance goes on over a new comm world. */
        cJSON *c = cJSON_AddObjectToObject(o, "comm");
        cJSON_AddNumberToObject(c, "failures", (double)in->comm_failures);
        cJSON_AddNumberToObject(c, "renewals", (double)in->comm_renewals);
        if (in->comm_last_error[0]) cJSON_AddStringToObject(c, "last_error", in->comm_last_error);
        else cJSON_AddNullToObject(c, "last_error");
    }
    return o;
}

/* ---- transformations ---- */

static void add_id(cJSON *o, uint64_t id) {
    char buf[32];
    snprintf(buf, sizeof(buf), "xf-%llu", (unsigned long long)id);
    cJSON_AddStringToObject(o, "id", buf);
}

/* id, from, to, plan, and each operation's kind, devices and description. */
static void add_run_plan(cJSON *o, const pt_relayout_result *run) {
    add_id(o, run->id);
    attach(o, "from", cJSON_CreateIntArray(run->from, run->n_from));
    attach(o, "to", cJSON_CreateIntArray(run->to, run->n_to));
    cJSON_AddStringToObject(o, "plan", run->summary);
}

static cJSON *op_plan_json(const pt_relayout_result *run, int k) {
    const pt_xform_op *op = &run->plan.ops[k];
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "kind", pt_xform_kind_name(op->kind));
    cJSON_AddStringToObject(o, "what", run->ops[k].what);
    int devs[2] = {op->first_device, op->first_device + op->n_devices - 1};
    attach(o, "devices", cJSON_CreateIntArray(devs, 2));
    attach(o, "from", cJSON_CreateIntArray(op->src_tp, op->n_src));
    int to[PT_FABRIC_MAX_DEVICES];
    for (int t = 0; t < op->n_dst; t++) to[t] = op->dst[t].tp;
    attach(o, "to", cJSON_CreateIntArray(to, op->n_dst));
    return o;
}

/* What an operation (or, summed, a run) moved and how long it paused. */
typedef struct {
    uint64_t kv_bytes, weight_bytes, pages_reserved, pages_gained;
    int stages;
    uint32_t requests_moved;
    double precopy_s, pause_s;
} op_totals;

static op_totals totals_of(const pt_relayout_op *o) {
    return (op_totals){o->st.xf.kv_bytes_moved, o->st.xf.weight_bytes_new, o->st.xf.kv_pages_reserved,
                       o->st.xf.kv_pages_gained, o->st.xf.stages, o->st.requests_moved, o->st.precopy_s, o->st.pause_s};
}

static void add_totals(cJSON *o, const op_totals *t) {
    cJSON *b = cJSON_AddObjectToObject(o, "bytes_moved");
    cJSON_AddNumberToObject(b, "kv", (double)t->kv_bytes);
    cJSON_AddNumberToObject(b, "weights", (double)t->weight_bytes);
    cJSON_AddNumberToObject(o, "stages", t->stages);
    cJSON_AddNumberToObject(o, "precopy_s", t->precopy_s);
    cJSON_AddNumberToObject(o, "pause_s", t->pause_s);
    cJSON_AddNumberToObject(o, "requests_moved", t->requests_moved);
    cJSON_AddNumberToObject(o, "kv_pages_reserved", (double)t->pages_reserved);
    cJSON_AddNumberToObject(o, "kv_pages_gained", (double)t->pages_gained);
}

static cJSON *op_result_json(const pt_relayout_result *run, int k) {
    const pt_relayout_op *op = &run->ops[k];
    cJSON *o = op_plan_json(run, k);
    cJSON_AddStringToObject(o, "result", !op->attempted ? "not tried" : op->ok ? "ok" : "failed");
    if (op->attempted && !op->ok) {
        cJSON_AddStringToObject(o, "failed_in", pt_relayout_stage_name(op->failed_in));
        cJSON_AddStringToObject(o, "reason", op->reason);
    }
    if (!op->attempted) return o;
    op_totals t = totals_of(op);
    add_totals(o, &t);
    cJSON_AddNumberToObject(o, "pages_precopied", (double)op->st.xf.pages_precopied);
    cJSON_AddNumberToObject(o, "pages_at_commit", (double)op->st.xf.pages_at_commit);
    cJSON_AddNumberToObject(o, "pages_in_place", (double)op->st.xf.pages_in_place);
    cJSON_AddNumberToObject(o, "kv_pages_before", (double)op->kv_pages_before);
    if (op->ok) cJSON_AddNumberToObject(o, "kv_pages_after", (double)op->kv_pages_after);
    return o;
}

/* "merge", "split", "reshape", or "mixed" when the operations differ. */
static const char *run_kind(const pt_relayout_result *run) {
    for (int k = 1; k < run->plan.n_ops; k++)
        if (run->plan.ops[k].kind != run->plan.ops[0].kind) return "mixed";
    return pt_xform_kind_name(run->plan.ops[0].kind);
}

static cJSON *last_json(const pt_relayout_result *run) {
    cJSON *o = cJSON_CreateObject();
    add_run_plan(o, run);
    cJSON_AddStringToObject(o, "kind", run_kind(run));
    cJSON_AddStringToObject(o, "result", run->ok ? "ok" : "failed");
    if (run->ok) cJSON_AddNullToObject(o, "reason");
    else cJSON_AddStringToObject(o, "reason", run->reason);
    cJSON_AddNumberToObject(o, "duration_s", run->duration_s);
    op_totals sum = {0};
    for (int k = 0; k < run->plan.n_ops; k++) {
        if (!run->ops[k].attempted) continue;
        op_totals t = totals_of(&run->ops[k]);
        sum.kv_bytes += t.kv_bytes;
        sum.weight_bytes += t.weight_bytes;
        sum.pages_reserved += t.pages_reserved;
        sum.pages_gained += t.pages_gained;
        sum.stages += t.stages;
        sum.requests_moved += t.requests_moved;
        sum.precopy_s += t.precopy_s;
        sum.pause_s += t.pause_s;
    }
    add_totals(o, &sum);
    cJSON *ops = cJSON_AddArrayToObject(o, "operations");
    for (int k = 0; k < run->plan.n_ops; k++) attach(ops, NULL, op_result_json(run, k));
    return o;
}

static cJSON *running_json(const pt_relayout_progress *p) {
    cJSON *o = cJSON_CreateObject();
    add_run_plan(o, p->run);
    cJSON_AddStringToObject(o, "stage", pt_relayout_stage_name(p->stage));
    cJSON_AddNumberToObject(o, "op", p->op + 1);
    cJSON_AddNumberToObject(o, "ops", p->n_ops);
    cJSON_AddNumberToObject(o, "elapsed_s", p->elapsed_s);
    cJSON *ops = cJSON_AddArrayToObject(o, "operations");
    for (int k = 0; k < p->n_ops; k++) attach(ops, NULL, op_plan_json(p->run, k));
    return o;
}

static cJSON *xform_json(const pt_layout_xform_view *x) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddBoolToObject(o, "in_progress", x->running != NULL);
    if (x->running) attach(o, "current", running_json(x->running));
    else cJSON_AddNullToObject(o, "current");
    if (x->last) attach(o, "last", last_json(x->last));
    else cJSON_AddNullToObject(o, "last");
    cJSON_AddNumberToObject(o, "completed", (double)x->runs_ok);
    cJSON_AddNumberToObject(o, "failed", (double)x->runs_failed);
    return o;
}

/* The text of root, built since pt_json_nomem_begin(); NULL when an
 * allocation failed on the way (a member may be missing): the caller
 * answers 500. */
static char *print_json(cJSON *root) {
    char *out = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (out && pt_json_nomem()) {
        free(out);
        out = NULL;
    }
    return out;
}

static cJSON *sched_json(const pt_layout_sched_view *sv) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "policy", sv->dynamic ? "dynamic" : "static");
    attach(o, "allowed_tp", cJSON_CreateIntArray(sv->allowed_tp, sv->n_allowed));
    cJSON *slo = cJSON_AddObjectToObject(o, "slo");
    if (sv->ttft_ms > 0) cJSON_AddNumberToObject(slo, "ttft_ms", sv->ttft_ms);
    else cJSON_AddNullToObject(slo, "ttft_ms");
    if (sv->tpot_ms > 0) cJSON_AddNumberToObject(slo, "tpot_ms", sv->tpot_ms);
    else cJSON_AddNullToObject(slo, "tpot_ms");
    cJSON_AddNumberToObject(o, "hysteresis_s", sv->hysteresis_s);
    cJSON_AddStringToObject(o, "cost_model", sv->cost_source ? sv->cost_source : "");
    cJSON_AddNumberToObject(o, "held", (double)sv->held);
    /* {"place": {"least_loaded": 3, ...}, "merge": {...}, ...}: every reason, zeros too. */
    cJSON *dec = cJSON_AddObjectToObject(o, "decisions");
    for (int r = 0; r < PT_SCHED_N_REASONS; r++) {
        const char *d = pt_sched_reason_decision((pt_sched_reason)r);
        cJSON *g = cJSON_GetObjectItemCaseSensitive(dec, d);
        if (!g) g = cJSON_AddObjectToObject(dec, d);
        uint64_t v = sv->stats ? sv->stats->by_reason[r] : 0;
        cJSON_AddNumberToObject(g, pt_sched_reason_name((pt_sched_reason)r), (double)v);
    }
    if (sv->last_xform && *sv->last_xform) cJSON_AddStringToObject(o, "last_transformation_decision", sv->last_xform);
    else cJSON_AddNullToObject(o, "last_transformation_decision");
    return o;
}

char *pt_layout_json(const pt_layout_report *r, const pt_layout_xform_view *x, const pt_layout_sched_view *sv) {
    pt_json_nomem_begin();
    cJSON *root = cJSON_CreateObject();
    cJSON *devs = cJSON_AddArrayToObject(root, "devices");
    for (int i = 0; i < r->n_devices; i++) attach(devs, NULL, device_json(&r->devices[i]));
    cJSON *insts = cJSON_AddArrayToObject(root, "instances");
    for (int i = 0; i < r->n_instances; i++) attach(insts, NULL, instance_json(r, i));
    int layout[PT_FABRIC_MAX_DEVICES];
    for (int i = 0; i < r->n_instances; i++) layout[i] = r->instances[i].tp;
    attach(root, "layout", cJSON_CreateIntArray(layout, r->n_instances));
    attach(root, "allowed_tp", cJSON_CreateIntArray(r->allowed_tp, r->n_allowed));
    if (sv) attach(root, "scheduler", sched_json(sv));
    if (x) attach(root, "transformation", xform_json(x));
    return print_json(root);
}

char *pt_layout_accepted_json(const pt_relayout_result *run) {
    pt_json_nomem_begin();
    cJSON *root = cJSON_CreateObject();
    add_run_plan(root, run);
    cJSON_AddStringToObject(root, "status", "accepted");
    cJSON *ops = cJSON_AddArrayToObject(root, "operations");
    for (int k = 0; k < run->plan.n_ops; k++) attach(ops, NULL, op_plan_json(run, k));
    cJSON_AddStringToObject(root, "progress", "/v1/layout");
    return print_json(root);
}

/* An entry of "layout": an integer that fits an int (the plan judges it). */
static int parse_degree(const cJSON *v, int i, int *out, pt_err *err) {
    if (!cJSON_IsNumber(v))
        return pt_err_set(err, PT_ERR_INVALID, "'layout'[%d] must be an integer TP degree", i);
    double d = v->valuedouble;
    if (d < -1e6 || d > 1e6 || d != (double)(long long)d)
        return pt_err_set(err, PT_ERR_INVALID, "'layout'[%d] = %g is not an integer TP degree", i, d);
    *out = (int)d;
    return PT_OK;
}

static int parse_layout_array(const cJSON *arr, int *tp, int *n, pt_err *err) {
    if (!cJSON_IsArray(arr))
        return pt_err_set(err, PT_ERR_INVALID, "'layout' must be an array of TP degrees in device order, e.g. [2, 1, 1]");
    int count = cJSON_GetArraySize(arr);
    if (count > PT_FABRIC_MAX_DEVICES)
        return pt_err_set(err, PT_ERR_INVALID, "'layout' has %d instances; a server has at most %d devices", count,
                          PT_FABRIC_MAX_DEVICES);
    int i = 0;
    for (const cJSON *v = arr->child; v; v = v->next, i++) {
        int rc = parse_degree(v, i, &tp[i], err);
        if (rc) return rc;
    }
    *n = count;
    return PT_OK;
}

int pt_layout_parse_request(const char *body, size_t len, int *tp, int *n, pt_err *err) {
    *n = 0;
    if (!body || len == 0) return pt_err_set(err, PT_ERR_INVALID, "the body is empty: send {\"layout\": [2, 1, 1]}");
    pt_json_nomem_begin();
    cJSON *root = cJSON_ParseWithLength(body, len);
    if (!root && pt_json_nomem()) return pt_err_set(err, PT_ERR_NOMEM, "out of memory");
    if (!root) return pt_err_set(err, PT_ERR_INVALID, "the body is not valid JSON");
    int rc = PT_OK;
    const cJSON *layout = NULL;
    if (!cJSON_IsObject(root)) {
        rc = pt_err_set(err, PT_ERR_INVALID, "the body must be a JSON object: {\"layout\": [2, 1, 1]}");
    } else {
        for (const cJSON *k = root->child; k && rc == PT_OK; k = k->next) {
            if (!strcmp(k->string, "layout") && layout) rc = pt_err_set(err, PT_ERR_INVALID, "'layout' is given twice");
            else if (!strcmp(k->string, "layout")) layout = k;
            else rc = pt_err_set(err, PT_ERR_INVALID, "unknown key '%.64s': the body has only 'layout'", k->string);
        }
        if (rc == PT_OK && !layout) rc = pt_err_set(err, PT_ERR_INVALID, "missing 'layout': send {\"layout\": [2, 1, 1]}");
    }
    if (rc == PT_OK) rc = parse_layout_array(layout, tp, n, err);
    cJSON_Delete(root);
    return rc;
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
