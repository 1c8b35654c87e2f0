/* The cost model (cost_model.h): step times, pages, transformation costs,
 * the roofline that fills it from a device spec, and its calibration file. */
#include "scheduler/cost_model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

static const pt_cost_tp *degree(const pt_cost_model *m, int tp) {
    if (!m || tp < 1 || tp > PT_COST_MAX_TP || !m->tp[tp].valid) return NULL;
    return &m->tp[tp];
}

double pt_cost_step(const pt_cost_model *m, int tp, const pt_step_shape *s) {
    const pt_cost_tp *c = degree(m, tp);
    if (!c) return -1.0;
    if (s->tokens == 0) return 0.0;
    double mem = c->mem_s + c->mem_kv_s * (double)s->kv_tokens;
    double flop = c->flop_token_s * (double)s->tokens + c->flop_pair_s * (double)s->pairs;
    return (mem > flop ? mem : flop) + c->fixed_s + c->token_s * (double)s->tokens + c->seq_s * (double)s->n_seqs;
}

void pt_cost_shape_add(pt_step_shape *s, uint64_t ctx, uint64_t n) {
    if (n == 0) return;
    s->tokens += n;
    s->pairs += n * ctx + n * (n + 1) / 2;
    s->kv_tokens += ctx + n;
    s->n_seqs++;
}

double pt_cost_prefill(const pt_cost_model *m, int tp, uint64_t tokens, uint64_t chunk) {
    if (!degree(m, tp)) return -1.0;
    if (chunk == 0) chunk = tokens;
    double t = 0.0;
    for (uint64_t done = 0; done < tokens;) {
        uint64_t n = tokens - done < chunk ? tokens - done : chunk;
        pt_step_shape s = {0};
        pt_cost_shape_add(&s, done, n);
        t += pt_cost_step(m, tp, &s);
        done += n;
    }
    return t;
}

uint64_t pt_cost_seq_pages(const pt_cost_model *m, uint64_t tokens) {
    if (m->page_size == 0) return 0;
    return (tokens + m->page_size - 1) / m->page_size * m->n_kv_heads;
}

uint64_t pt_cost_instance_pages(const pt_cost_model *m, int tp) {
    if (tp < 1 || m->head_page_bytes == 0) return 0;
    uint64_t shard = (m->weight_bytes + (uint64_t)tp - 1) / (uint64_t)tp;
    if (m->device_bytes <= shard + m->reserve_bytes) return 0;
    uint64_t per_device = (m->device_bytes - shard - m->reserve_bytes) / m->head_page_bytes;
    uint64_t heads = m->n_kv_heads, d = (uint64_t)tp;
    if (heads == 0 || d > heads) return d * per_device;
    /* A sequence's page takes one head page per head on each rank, so the
     * rank with the most heads fills first: with 3 heads and 128 pages a
     * device, TP1 holds 3 x 42 = 126 head pages, TP2 (2 + 1 heads) 3 x 64. */
    uint64_t most = (heads + d - 1) / d;
    return heads * (per_device / most);
}

/* Per device, bytes move over its own link, in parallel with the others. */
void pt_cost_xform(const pt_cost_model *m, int n_devices, int tp_from, int tp_to, uint32_t n_seqs,
                   uint64_t kv_tokens, pt_xform_cost *out) {
    *out = (pt_xform_cost){0};
    if (n_devices < 1 || tp_from < 1 || tp_to < 1 || tp_from == tp_to) return;
    int lo = tp_from < tp_to ? tp_from : tp_to, hi = tp_from < tp_to ? tp_to : tp_from;
    /* A sequence's heads spread over `lo` devices on one side and `hi` on
     * the other; the heads whose device differs move: 1 - lo/hi of them. */
    double moving = 1.0 - (double)lo / (double)hi;
    double kv_token_bytes = m->page_size ? (double)m->head_page_bytes / m->page_size * m->n_kv_heads : 0.0;
    double kv = (double)kv_tokens * kv_token_bytes * moving;
    /* A merge keeps a subset of each device's weights; a split brings every
     * device the part of its new, larger shard that it lacks. */
    double weights = tp_to < tp_from ? (double)n_devices * (double)m->weight_bytes * (1.0 / tp_to - 1.0 / tp_from) : 0.0;
    /* The last page of each moving head is still being written: the pause copies it. */
    double pause = (double)n_seqs * m->n_kv_heads * moving * (double)m->head_page_bytes;
    out->bytes_moved = (uint64_t)(kv + weights);
    out->bytes_in_pause = (uint64_t)pause;
    out->pause_s = m->pause_fixed_s + pause / n_devices * m->xform_byte_s;
    out->total_s = m->xform_fixed_s + (kv + weights) / n_devices * m->xform_byte_s + out->pause_s;
}

int pt_cost_roofline(pt_cost_model *m, const pt_model_shape *sh, const pt_device_roofline *dev,
                     uint32_t page_size, const int *allowed, int n_allowed, pt_err *err) {
    if (!sh || !dev || page_size == 0 || sh->n_layers == 0 || sh->n_kv_heads == 0 || sh->head_dim == 0)
        return pt_err_set(err, PT_ERR_INVALID, "roofline: incomplete model shape or page size 0");
    if (dev->mem_bw <= 0 || dev->flops <= 0 || dev->mem_eff <= 0 || dev->flop_eff <= 0 || dev->mem_util <= 0 ||
        dev->mem_util > 1)
        return pt_err_set(err, PT_ERR_INVALID, "roofline: device %s: bandwidth, FLOP/s and efficiencies must be > 0",
                          dev->name ? dev->name : "?");
    *m = (pt_cost_model){0};
    m->page_size = page_size;
    m->n_kv_heads = sh->n_kv_heads;
    m->head_page_bytes = (uint64_t)page_size * sh->n_layers * sh->head_dim * 2u * sh->bytes_per_kv;
    m->weight_bytes = sh->n_params * sh->bytes_per_param;
    m->device_bytes = (uint64_t)((double)dev->mem_bytes * dev->mem_util);
    /* Activations and step buffers of a vLLM-sized step (8K tokens): a few
     * hidden- and FFN-wide buffers in f32, and the logits of 256 sequences. */
    m->reserve_bytes = (uint64_t)8192 * (4ull * sh->hidden + 2ull * sh->ffn) * 4 + 256ull * sh->vocab * 4;
    m->max_ctx = sh->max_ctx;
    double bw = dev->mem_bw * dev->mem_eff, fl = dev->flops * dev->flop_eff;
    double link = dev->link_bw > 0 ? dev->link_bw : dev->mem_bw;
    m->xform_byte_s = 1.0 / link;
    /* Building the targets (allocations, communicator groups) and a commit's
     * stop-switch-resume; measured on CPU by bench_transform, assumed on GPUs. */
    m->xform_fixed_s = 0.2;
    m->pause_fixed_s = 0.005;
    for (int i = 0; i < n_allowed; i++) {
        int d = allowed[i];
        if (d < 1 || d > PT_COST_MAX_TP || (uint32_t)d > sh->n_kv_heads)
            return pt_err_set(err, PT_ERR_INVALID, "roofline: TP degree %d is not in [1, %u] (the model's KV heads)", d,
                              sh->n_kv_heads);
        if (pt_cost_instance_pages(m, d) == 0) continue; /* the shard does not fit */
        pt_cost_tp *c = &m->tp[d];
        c->valid = true;
        c->mem_s = (double)m->weight_bytes / d / bw;
        c->mem_kv_s = (double)sh->n_layers * sh->n_kv_heads / d * sh->head_dim * 2.0 * sh->bytes_per_kv / bw;
        c->flop_token_s = 2.0 * (double)sh->n_params / d / fl;
        c->flop_pair_s = 4.0 * sh->n_heads / d * (double)sh->head_dim * sh->n_layers / fl;
        c->fixed_s = dev->step_overhead_s + (d > 1 ? 2.0 * sh->n_layers * dev->link_latency_s : 0.0);
        c->token_s = d > 1 ? 2.0 * sh->n_layers * sh->hidden * 2.0 * 2.0 * (d - 1) / d / link : 0.0;
    }
    return 0;
}

/* ---- the calibration file ---- */

#define COST_FIELD(name, optional) {#name, offsetof(pt_cost_tp, name), optional}
static const struct {
    const char *key;
    size_t off;
    bool optional; /* 0 when absent: files written before the field existed */
} TP_FIELDS[] = {COST_FIELD(mem_s, false),       COST_FIELD(mem_kv_s, false), COST_FIELD(flop_token_s, false),
                 COST_FIELD(flop_pair_s, false), COST_FIELD(fixed_s, false),  COST_FIELD(token_s, false),
                 COST_FIELD(seq_s, true)};

typedef enum { F_U32, F_U64, F_DBL } field_type;
#define MODEL_FIELD(name, t) {#name, offsetof(pt_cost_model, name), t}
static const struct {
    const char *key;
    size_t off;
    field_type type;
} MODEL_FIELDS[] = {
    MODEL_FIELD(page_size, F_U32),      MODEL_FIELD(n_kv_heads, F_U32),     MODEL_FIELD(head_page_bytes, F_U64),
    MODEL_FIELD(weight_bytes, F_U64),   MODEL_FIELD(device_bytes, F_U64),   MODEL_FIELD(reserve_bytes, F_U64),
    MODEL_FIELD(max_ctx, F_U32),        MODEL_FIELD(xform_fixed_s, F_DBL),  MODEL_FIELD(xform_byte_s, F_DBL),
    MODEL_FIELD(pause_fixed_s, F_DBL),
};
#define N_OF(a) (sizeof(a) / sizeof((a)[0]))

int pt_cost_save(const pt_cost_model *m, const char *path, pt_err *err) {
    cJSON *root = cJSON_CreateObject(), *tps = cJSON_CreateObject();
    if (!root || !tps) {
        cJSON_Delete(root);
        cJSON_Delete(tps);
        return pt_err_set(err, PT_ERR_NOMEM, "%s: out of memory", path);
    }
    for (size_t i = 0; i < N_OF(MODEL_FIELDS); i++) {
        const char *p = (const char *)m + MODEL_FIELDS[i].off;
        double v = MODEL_FIELDS[i].type == F_U32   ? *(const uint32_t *)p
                   : MODEL_FIELDS[i].type == F_U64 ? (double)*(const uint64_t *)p
                                                   : *(const double *)p;
        cJSON_AddNumberToObject(root, MODEL_FIELDS[i].key, v);
    }
    for (int d = 1; d <= PT_COST_MAX_TP; d++) {
        if (!m->tp[d].valid) continue;
        cJSON *o = cJSON_CreateObject();
        for (size_t i = 0; o && i < N_OF(TP_FIELDS); i++)
            cJSON_AddNumberToObject(o, TP_FIELDS[i].key, *(const double *)((const char *)&m->tp[d] + TP_FIELDS[i].off));
        char key[8];
        snprintf(key, sizeof(key), "%d", d);
        if (o) cJSON_AddItemToObject(tps, key, o);
    }
    cJSON_AddItemToObject(root, "tp", tps);
    char *text = cJSON_Print(root);
    cJSON_Delete(root);
    if (!text) return pt_err_set(err, PT_ERR_NOMEM, "%s: out of memory", path);
    FILE *f = fopen(path, "w");
    int rc = 0;
    if (!f || fputs(text, f) < 0 || fputc('\n', f) < 0) rc = pt_err_set(err, PT_ERR_IO, "%s: cannot write", path);
    if (f && fclose(f) != 0 && rc == 0) rc = pt_err_set(err, PT_ERR_IO, "%s: cannot write", path);
    free(text);
    return rc;
}

/* A non-negative number at key path `where` (for the message). */
static int number(const cJSON *j, const char *path, const char *where, double *out, pt_err *err) {
    if (!cJSON_IsNumber(j)) return pt_err_set(err, PT_ERR_FORMAT, "%s: '%s' must be a number", path, where);
    if (!(j->valuedouble >= 0) || !isfinite(j->valuedouble))
        return pt_err_set(err, PT_ERR_FORMAT, "%s: '%s' must be a finite number >= 0", path, where);
    *out = j->valuedouble;
    return 0;
}

static int load_degree(pt_cost_tp *c, const cJSON *o, const char *path, const char *d, pt_err *err) {
    char where[64];
    if (!cJSON_IsObject(o)) return pt_err_set(err, PT_ERR_FORMAT, "%s: 'tp.%s' must be an object", path, d);
    for (const cJSON *k = o->child; k; k = k->next) {
        size_t i = 0;
        while (i < N_OF(TP_FIELDS) && strcmp(TP_FIELDS[i].key, k->string) != 0) i++;
        if (i == N_OF(TP_FIELDS)) return pt_err_set(err, PT_ERR_FORMAT, "%s: unknown key 'tp.%s.%s'", path, d, k->string);
    }
    for (size_t i = 0; i < N_OF(TP_FIELDS); i++) {
        snprintf(where, sizeof(where), "tp.%s.%s", d, TP_FIELDS[i].key);
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, TP_FIELDS[i].key);
        if (!v && TP_FIELDS[i].optional) continue;
        if (!v) return pt_err_set(err, PT_ERR_FORMAT, "%s: missing key '%s'", path, where);
        if (number(v, path, where, (double *)((char *)c + TP_FIELDS[i].off), err) != 0) return -1;
    }
    c->valid = true;
    return 0;
}

static int load_json(pt_cost_model *m, const cJSON *root, const char *path, pt_err *err) {
    if (!cJSON_IsObject(root)) return pt_err_set(err, PT_ERR_FORMAT, "%s: not a JSON object", path);
    for (const cJSON *k = root->child; k; k = k->next) {
        bool known = !strcmp(k->string, "tp");
        for (size_t i = 0; !known && i < N_OF(MODEL_FIELDS); i++) known = !strcmp(MODEL_FIELDS[i].key, k->string);
        if (!known) return pt_err_set(err, PT_ERR_FORMAT, "%s: unknown key '%s'", path, k->string);
    }
    for (size_t i = 0; i < N_OF(MODEL_FIELDS); i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, MODEL_FIELDS[i].key);
        double x = 0;
        if (!v) return pt_err_set(err, PT_ERR_FORMAT, "%s: missing key '%s'", path, MODEL_FIELDS[i].key);
        if (number(v, path, MODEL_FIELDS[i].key, &x, err) != 0) return -1;
        char *p = (char *)m + MODEL_FIELDS[i].off;
        if (MODEL_FIELDS[i].type == F_DBL) {
            *(double *)p = x;
            continue;
        }
        double max = MODEL_FIELDS[i].type == F_U32 ? (double)UINT32_MAX : 9.0e18;
        if (x != floor(x) || x > max)
            return pt_err_set(err, PT_ERR_FORMAT, "%s: '%s' must be a whole number below %.0f", path,
                              MODEL_FIELDS[i].key, max);
        if (MODEL_FIELDS[i].type == F_U32) *(uint32_t *)p = (uint32_t)x;
        else *(uint64_t *)p = (uint64_t)x;
    }
    if (m->page_size == 0 || m->n_kv_heads == 0)
        return pt_err_set(err, PT_ERR_FORMAT, "%s: 'page_size' and 'n_kv_heads' must be > 0", path);
    const cJSON *tps = cJSON_GetObjectItemCaseSensitive(root, "tp");
    if (!cJSON_IsObject(tps)) return pt_err_set(err, PT_ERR_FORMAT, "%s: 'tp' must be an object of degrees", path);
    for (const cJSON *d = tps->child; d; d = d->next) {
        char *end;
        long v = strtol(d->string, &end, 10);
        if (*d->string == '\0' || *end != '\0' || v < 1 || v > PT_COST_MAX_TP)
            return pt_err_set(err, PT_ERR_FORMAT, "%s: 'tp.%s' is not a TP degree in [1, %d]", path, d->string,
                              PT_COST_MAX_TP);
        if (load_degree(&m->tp[v], d, path, d->string, err) != 0) return -1;
    }
    if (!tps->child) return pt_err_set(err, PT_ERR_FORMAT, "%s: 'tp' lists no degree", path);
    return 0;
}

int pt_cost_load(pt_cost_model *m, const char *path, pt_err *err) {
    size_t len;
    char *text = pt_read_file(path, &len);
    if (!text) return pt_err_set(err, PT_ERR_IO, "%s: cannot read", path);
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, false);
    int rc;
    if (!root) {
        rc = pt_err_set(err, PT_ERR_FORMAT, "%s: not valid JSON (near byte %zu)", path,
                        end ? (size_t)(end - text) : (size_t)0);
    } else {
        pt_cost_model tmp = {0};
        rc = load_json(&tmp, root, path, err);
        if (rc == 0) *m = tmp;
    }
    cJSON_Delete(root);
    free(text);
    return rc;
}
