/* Device presets, JSON device specs, and model shapes (cluster.h).
 *
 * Device numbers are the vendors' public specs (SXM parts): HBM capacity as
 * nvidia-smi reports it, HBM bandwidth, dense BF16 tensor FLOP/s, NVLink
 * bandwidth per direction. The efficiencies are the simulator's own
 * assumptions, documented in the README:
 *   mem_eff 0.8          fraction of HBM bandwidth a decode step achieves
 *   flop_eff 0.5         fraction of peak a prefill step achieves (MFU)
 *   step_overhead 3 ms   per step: scheduling, input preparation, sampling
 *   link_latency 8 us    one all-reduce of a decode step's hidden vector
 *   mem_util 0.9         vLLM's default gpu_memory_utilization */
#include "sim/cluster.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "model/loader.h"
#include "proteus/model_file.h"
#include "scheduler/scheduler.h"

#define GIB (1024.0 * 1024.0 * 1024.0)
#define MIB (1024.0 * 1024.0)

const char *const PT_SIM_DEVICE_PRESETS = "H100, H200, A100";
const char *const PT_SIM_MODEL_PRESETS = "qwen2.5-32b, llama3-70b, llama3-8b, smollm2-135m";

static const struct {
    const char *name;
    double mem_mib, bw_gbs, tflops, link_gbs;
} DEVICES[] = {
    {"H100", 81559, 3350, 989.4, 450},  /* H100 SXM5 80GB: HBM3, NVLink 4 900 GB/s both ways */
    {"H200", 143771, 4800, 989.4, 450}, /* H200 SXM 141GB: HBM3e, same compute and NVLink as H100 */
    {"A100", 81920, 2039, 312, 300},    /* A100 SXM4 80GB: HBM2e, NVLink 3 600 GB/s both ways */
};

static void device_defaults(pt_device_roofline *d) {
    d->link_latency_s = 8e-6;
    d->mem_eff = 0.8;
    d->flop_eff = 0.5;
    d->step_overhead_s = 3e-3;
    d->mem_util = 0.9;
}

int pt_sim_device_preset(pt_device_roofline *d, const char *name) {
    for (size_t i = 0; i < sizeof(DEVICES) / sizeof(DEVICES[0]); i++) {
        if (strcasecmp(name, DEVICES[i].name) != 0) continue;
        memset(d, 0, sizeof(*d));
        d->name = DEVICES[i].name;
        d->mem_bytes = (uint64_t)(DEVICES[i].mem_mib * MIB);
        d->mem_bw = DEVICES[i].bw_gbs * 1e9;
        d->flops = DEVICES[i].tflops * 1e12;
        d->link_bw = DEVICES[i].link_gbs * 1e9;
        device_defaults(d);
        return 0;
    }
    return PT_ERR_INVALID;
}

/* ---- JSON device spec ---- */

typedef struct {
    const char *key;
    double lo, hi, scale; /* accepted range in the file's unit; scale to SI */
    size_t off;           /* into pt_device_roofline */
    bool is_u64;
} spec_key;

#define DEV_OFF(f) offsetof(pt_device_roofline, f)
static const spec_key SPEC_KEYS[] = {
    {"mem_gib", 0.001, 1e6, GIB, DEV_OFF(mem_bytes), true},
    {"mem_bw_gbs", 0.001, 1e6, 1e9, DEV_OFF(mem_bw), false},
    {"tflops", 1e-6, 1e6, 1e12, DEV_OFF(flops), false},
    {"link_gbs", 1e-6, 1e6, 1e9, DEV_OFF(link_bw), false},
    {"link_latency_us", 0, 1e6, 1e-6, DEV_OFF(link_latency_s), false},
    {"mem_eff", 1e-6, 1, 1, DEV_OFF(mem_eff), false},
    {"flop_eff", 1e-6, 1, 1, DEV_OFF(flop_eff), false},
    {"step_overhead_ms", 0, 1e6, 1e-3, DEV_OFF(step_overhead_s), false},
    {"mem_util", 1e-6, 1, 1, DEV_OFF(mem_util), false},
};
#define N_SPEC_KEYS (sizeof(SPEC_KEYS) / sizeof(SPEC_KEYS[0]))

static int parse_spec_json(pt_sim_cluster *c, const char *path, pt_err *err) {
    size_t len;
    char *text = pt_read_file(path, &len);
    if (!text) return pt_err_set(err, PT_ERR_IO, "%s: cannot read the device spec (%s)", path, strerror(errno));
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, false);
    int rc = 0;
    bool seen[N_SPEC_KEYS] = {false};
    if (!root) {
        rc = pt_err_set(err, PT_ERR_FORMAT, "%s: not valid JSON (near byte %zu)", path,
                        end ? (size_t)(end - text) : (size_t)0);
        goto out;
    }
    if (!cJSON_IsObject(root)) {
        rc = pt_err_set(err, PT_ERR_FORMAT, "%s: expected a JSON object of device keys", path);
        goto out;
    }
    memset(c, 0, sizeof(*c));
    snprintf(c->name, sizeof(c->name), "custom");
    device_defaults(&c->dev);
    /* "base" first: the preset fills every key the file does not give. */
    const cJSON *base = cJSON_GetObjectItemCaseSensitive(root, "base");
    if (base) {
        if (!cJSON_IsString(base) || pt_sim_device_preset(&c->dev, base->valuestring) != 0) {
            rc = pt_err_set(err, PT_ERR_FORMAT, "%s: base: expected one of %s", path, PT_SIM_DEVICE_PRESETS);
            goto out;
        }
        snprintf(c->name, sizeof(c->name), "%s", base->valuestring);
        for (size_t k = 0; k < N_SPEC_KEYS; k++) seen[k] = true;
    }
    bool have_devices = false;
    for (const cJSON *j = root->child; j; j = j->next) {
        if (!strcmp(j->string, "base")) continue;
        if (!strcmp(j->string, "devices")) {
            double v = j->valuedouble;
            if (!cJSON_IsNumber(j) || v != floor(v) || v < 1 || v > PT_SCHED_MAX_DEVICES) {
                rc = pt_err_set(err, PT_ERR_FORMAT, "%s: devices: expected a whole number in [1, %d]", path,
                                PT_SCHED_MAX_DEVICES);
                goto out;
            }
            c->n_devices = (int)v;
            have_devices = true;
            continue;
        }
        if (!strcmp(j->string, "name")) {
            if (!cJSON_IsString(j) || !j->valuestring[0] || strlen(j->valuestring) >= sizeof(c->name)) {
                rc = pt_err_set(err, PT_ERR_FORMAT, "%s: name: expected a non-empty string of at most %zu bytes", path,
                                sizeof(c->name) - 1);
                goto out;
            }
            snprintf(c->name, sizeof(c->name), "%s", j->valuestring);
            continue;
        }
        size_t k = 0;
        while (k < N_SPEC_KEYS && strcmp(SPEC_KEYS[k].key, j->string) != 0) k++;
        if (k == N_SPEC_KEYS) {
            rc = pt_err_set(err, PT_ERR_FORMAT,
                            "%s: unknown key '%.64s' (devices, name, base, mem_gib, mem_bw_gbs, tflops, link_gbs, "
                            "link_latency_us, mem_eff, flop_eff, step_overhead_ms, mem_util)",
                            path, j->string);
            goto out;
        }
        const spec_key *sk = &SPEC_KEYS[k];
        if (!cJSON_IsNumber(j) || !isfinite(j->valuedouble) || j->valuedouble < sk->lo || j->valuedouble > sk->hi) {
            rc = pt_err_set(err, PT_ERR_FORMAT, "%s: %s: expected a number in [%g, %g]", path, sk->key, sk->lo, sk->hi);
            goto out;
        }
        double v = j->valuedouble * sk->scale;
        if (sk->is_u64) *(uint64_t *)((char *)&c->dev + sk->off) = (uint64_t)v;
        else *(double *)((char *)&c->dev + sk->off) = v;
        seen[k] = true;
    }
    if (!have_devices) {
        rc = pt_err_set(err, PT_ERR_FORMAT, "%s: devices: missing (the number of devices)", path);
        goto out;
    }
    /* Without a base, the device's own numbers are required; the link only
     * where there is more than one device. */
    static const char *const REQUIRED[] = {"mem_gib", "mem_bw_gbs", "tflops", "link_gbs"};
    for (size_t r = 0; r < sizeof(REQUIRED) / sizeof(REQUIRED[0]); r++) {
        size_t k = 0;
        while (strcmp(SPEC_KEYS[k].key, REQUIRED[r]) != 0) k++;
        if (seen[k] || (!strcmp(REQUIRED[r], "link_gbs") && c->n_devices == 1)) continue;
        rc = pt_err_set(err, PT_ERR_FORMAT, "%s: %s: missing (or give \"base\": one of %s)", path, REQUIRED[r],
                        PT_SIM_DEVICE_PRESETS);
        goto out;
    }
    c->dev.name = c->name;
out:
    cJSON_Delete(root);
    free(text);
    return rc;
}

int pt_sim_cluster_parse(pt_sim_cluster *c, const char *spec, pt_err *err) {
    memset(c, 0, sizeof(*c));
    /* NxNAME: digits, 'x', a preset; anything else is a file. */
    const char *p = spec;
    while (isdigit((unsigned char)*p)) p++;
    if (p > spec && (*p == 'x' || *p == 'X')) {
        struct stat st;
        if (stat(spec, &st) != 0) {
            char *end;
            errno = 0;
            long n = strtol(spec, &end, 10);
            if (errno || n < 1 || n > PT_SCHED_MAX_DEVICES)
                return pt_err_set(err, PT_ERR_INVALID, "--cluster %s: the device count must be in [1, %d]", spec,
                                  PT_SCHED_MAX_DEVICES);
            if (pt_sim_device_preset(&c->dev, p + 1) != 0)
                return pt_err_set(err, PT_ERR_INVALID, "--cluster %s: unknown device '%s' (presets: %s, or a JSON spec file)",
                                  spec, p + 1, PT_SIM_DEVICE_PRESETS);
            c->n_devices = (int)n;
            snprintf(c->name, sizeof(c->name), "%s", c->dev.name);
            c->dev.name = c->name;
            return 0;
        }
    }
    struct stat st;
    if (stat(spec, &st) != 0)
        return pt_err_set(err, PT_ERR_INVALID,
                          "--cluster %s: neither NxDEVICE (devices: %s, e.g. 8xH200) nor a readable JSON spec file", spec,
                          PT_SIM_DEVICE_PRESETS);
    return parse_spec_json(c, spec, err);
}

/* ---- model shapes ---- */

uint64_t pt_sim_shape_params(uint32_t n_layers, uint32_t hidden, uint32_t n_heads, uint32_t n_kv_heads,
                             uint32_t head_dim, uint32_t ffn, uint32_t vocab, int tied, int qkv_bias) {
    uint64_t h = hidden, q = (uint64_t)n_heads * head_dim, kv = (uint64_t)n_kv_heads * head_dim;
    uint64_t layer = h * q + 2 * h * kv + q * h /* q, k, v, o */ + 3 * h * ffn /* gate, up, down */ + 2 * h /* norms */;
    if (qkv_bias) layer += q + 2 * kv;
    uint64_t embed = (uint64_t)vocab * h;
    return embed + (tied ? 0 : embed) + (uint64_t)n_layers * layer + h /* final norm */;
}

typedef struct {
    const char *name;
    uint32_t n_layers, hidden, n_heads, n_kv_heads, head_dim, ffn, vocab, max_ctx;
    int tied, qkv_bias;
} model_preset;

/* The published config.json numbers. max_ctx: Qwen2.5 with YaRN (factor 4
 * over 32K, as its model card describes for long texts) and Llama 3.1 serve
 * 131072 tokens; SmolLM2 8192. */
static const model_preset MODELS[] = {
    {"qwen2.5-32b", 64, 5120, 40, 8, 128, 27648, 152064, 131072, 0, 1},
    {"llama3-70b", 80, 8192, 64, 8, 128, 28672, 128256, 131072, 0, 0},
    {"llama3-8b", 32, 4096, 32, 8, 128, 14336, 128256, 131072, 0, 0},
    {"smollm2-135m", 30, 576, 9, 3, 64, 1536, 49152, 8192, 1, 0},
};

static void shape_fill(pt_sim_model *m, const char *name, const pt_model_config *c, uint64_t n_params) {
    snprintf(m->name, sizeof(m->name), "%s", name);
    pt_model_shape *s = &m->shape;
    memset(s, 0, sizeof(*s));
    s->name = m->name;
    s->n_layers = c->n_layers;
    s->hidden = c->d_model;
    s->n_heads = c->n_heads;
    s->n_kv_heads = c->n_kv_heads;
    s->head_dim = c->head_dim;
    s->ffn = c->d_ff;
    s->vocab = c->vocab_size;
    s->max_ctx = c->max_ctx;
    s->n_params = n_params ? n_params
                           : pt_sim_shape_params(c->n_layers, c->d_model, c->n_heads, c->n_kv_heads, c->head_dim,
                                                 c->d_ff, c->vocab_size, c->tied_embeddings, c->qkv_bias);
    s->bytes_per_param = 2; /* bf16 on the simulated devices */
    s->bytes_per_kv = 2;
}

static bool has_suffix(const char *s, const char *suf) {
    size_t n = strlen(s), k = strlen(suf);
    return n >= k && !strcasecmp(s + n - k, suf);
}

/* config.json of a Hugging Face model. */
static int from_config_json(pt_sim_model *m, const char *path, pt_err *err) {
    size_t len;
    char *text = pt_read_file(path, &len);
    if (!text) return pt_err_set(err, PT_ERR_IO, "%s: cannot read (%s)", path, strerror(errno));
    pt_model_config c;
    int rc = pt_hf_config_parse(&c, path, text, len, err);
    free(text);
    if (rc == 0) rc = pt_model_config_check(&c, path, err);
    if (rc == 0) {
        c.qkv_bias = c.arch == PT_ARCH_QWEN2;
        shape_fill(m, path, &c, 0);
    }
    return rc;
}

int pt_sim_model_resolve(pt_sim_model *m, const char *spec, pt_err *err) {
    memset(m, 0, sizeof(*m));
    const char *name = !strncmp(spec, "synthetic:", 10) ? spec + 10 : spec;
    for (size_t i = 0; i < sizeof(MODELS) / sizeof(MODELS[0]); i++) {
        const model_preset *p = &MODELS[i];
        size_t n = strlen(p->name);
        /* "synthetic:llama3-8b:q4_0" names the same shape. */
        if (strncasecmp(name, p->name, n) != 0 || (name[n] != '\0' && name[n] != ':')) continue;
        pt_model_config c = {.n_layers = p->n_layers, .d_model = p->hidden, .n_heads = p->n_heads,
                             .n_kv_heads = p->n_kv_heads, .head_dim = p->head_dim, .d_ff = p->ffn,
                             .vocab_size = p->vocab, .max_ctx = p->max_ctx, .tied_embeddings = p->tied,
                             .qkv_bias = p->qkv_bias};
        shape_fill(m, p->name, &c, 0);
        return 0;
    }
    if (name != spec)
        return pt_err_set(err, PT_ERR_INVALID, "--model %s: unknown synthetic shape (presets: %s)", spec,
                          PT_SIM_MODEL_PRESETS);
    struct stat st;
    if (stat(spec, &st) != 0)
        return pt_err_set(err, PT_ERR_INVALID,
                          "--model %s: neither a preset (%s) nor a model file (GGUF, Hugging Face directory, config.json)",
                          spec, PT_SIM_MODEL_PRESETS);
    if (S_ISREG(st.st_mode) && has_suffix(spec, ".json")) return from_config_json(m, spec, err);
    if (S_ISDIR(st.st_mode)) {
        /* A directory's config.json is all the shape needs: no weights are read. */
        char cfg[4096];
        if (snprintf(cfg, sizeof(cfg), "%s/config.json", spec) >= (int)sizeof(cfg))
            return pt_err_set(err, PT_ERR_INVALID, "--model: path too long");
        if (stat(cfg, &st) != 0) return pt_err_set(err, PT_ERR_IO, "%s: no config.json in the directory", spec);
        return from_config_json(m, cfg, err);
    }
    /* A GGUF file: its metadata gives the config, its tensors the parameter count. */
    pt_model_file mf;
    int rc = pt_model_file_open(&mf, spec, err);
    if (rc) return rc;
    uint64_t params = 0;
    for (size_t i = 0; i < mf.n_tensors; i++) {
        const pt_tensor *t = &mf.tensors[i];
        uint64_t e = 1;
        for (uint32_t d = 0; d < t->n_dims && d < 4; d++) e *= t->ne[d];
        params += e;
    }
    shape_fill(m, spec, &mf.config, params);
    pt_model_file_close(&mf);
    return 0;
}
