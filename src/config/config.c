/* `proteus serve` configuration: defaults, the JSON file, flags.
 *
 * One table (KEYS) describes every setting once: its path in the file, its
 * flag, its C field, type and range. The file loader, the flag parser, the
 * JSON dump and the --help text all walk that table, so a key cannot be
 * accepted in one place and forgotten in another. Values are checked by the
 * same code whether they come from the file or a flag; only the prefix of the
 * message differs ("serve.json: 'server.port' ..." vs "--port: ..."). */
#define _GNU_SOURCE
#include "proteus/config.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "proteus/chat_template.h"

/* What "default" resolves to (src/cli/common.c DEFAULT_MODEL_FILE without its
 * quantization tag and extension). */
#define DEFAULT_SERVED_NAME "SmolLM2-135M-Instruct"
/* A config file is a few hundred bytes; anything this large is a mistake. */
#define CONFIG_MAX_BYTES (1u << 20)
/* Longest string value accepted (paths, keys, names). */
#define STR_MAX 4096

/* KT_INTLIST: a pt_int_list (JSON array or null; flag "1,1,2"). KT_DEVICES:
 * engine.devices, a string (char *) or, in the file, a list of objects
 * (device_list). */
typedef enum { KT_STR, KT_INT, KT_SIZE, KT_NUM, KT_BOOL, KT_ENUM, KT_INTLIST, KT_DEVICES } key_type;

enum {
    KF_NULLABLE = 1 << 0, /* string that may be JSON null (= unset) */
    KF_POW2 = 1 << 1,     /* integer that must be a power of two */
};

typedef struct {
    const char *name;
    int value;
} enum_name;

typedef struct {
    const char *path;   /* "section.key", or "key" at the top level */
    const char *flag;   /* "--port" */
    const char *sflag;  /* short form ("-m") or NULL */
    key_type type;
    size_t off;         /* offsetof(pt_server_config, field) */
    double lo, hi;      /* range of KT_INT, KT_SIZE, KT_NUM */
    unsigned flags;     /* KF_* */
    const enum_name *names; /* KT_ENUM values, NULL-terminated; KT_STR: allowed values or NULL */
    const char *dflt;   /* default as documented, where the value alone would mislead */
    const char *help;
    int max_items;      /* KT_INTLIST: longest list */
} cfg_key;

static const enum_name KV_DTYPES[] = {
    {"f32", PT_DTYPE_F32}, {"f16", PT_DTYPE_F16}, {"bf16", PT_DTYPE_BF16}, {NULL, 0}};
static const enum_name LOG_LEVELS[] = {
    {"debug", PT_LOG_DEBUG}, {"info", PT_LOG_INFO}, {"warn", PT_LOG_WARN}, {"error", PT_LOG_ERROR}, {NULL, 0}};
static const enum_name POLICIES[] = {{"static", PT_POLICY_STATIC}, {"dynamic", PT_POLICY_DYNAMIC}, {NULL, 0}};
static const enum_name CHAT_TEMPLATES[] = {
    {"chatml", PT_CHAT_CHATML}, {"llama3", PT_CHAT_LLAMA3}, {"llama2", PT_CHAT_LLAMA2}, {"mistral", PT_CHAT_MISTRAL},
    {NULL, 0}};

#define OFF(field) offsetof(pt_server_config, field)

static const cfg_key KEYS[] = {
    {"server.host", "--host", NULL, KT_STR, OFF(host), 0, 0, 0, NULL, NULL, "address to listen on", 0},
    {"server.port", "--port", NULL, KT_INT, OFF(port), 1, 65535, 0, NULL, NULL, "TCP port", 0},
    {"server.api_key", "--api-key", NULL, KT_STR, OFF(api_key), 0, 0, KF_NULLABLE, NULL, "null (env PROTEUS_API_KEY)",
     "require \"Authorization: Bearer KEY\" (a flag shows in ps: prefer the file or env)", 0},
    {"server.auth_health_metrics", "--auth-health-metrics", NULL, KT_BOOL, OFF(auth_health_metrics), 0, 0, 0, NULL,
     NULL, "/health and /metrics also need the API key", 0},
    {"model.path", "--model", "-m", KT_STR, OFF(model), 0, 0, 0, NULL, "\"default\" (SmolLM2-135M-Instruct)",
     "\"default\", a .gguf or .safetensors file, an HF directory, or synthetic:<shape>", 0},
    {"model.served_name", "--served-model-name", NULL, KT_STR, OFF(served_model_name), 0, 0, KF_NULLABLE, NULL,
     "null (from the model's file name)", "model id in /v1/models and requests", 0},
    {"model.chat_template", "--chat-template", NULL, KT_STR, OFF(chat_template), 0, 0, KF_NULLABLE, CHAT_TEMPLATES,
     "null (detected from the model)", "chatml, llama3, llama2 or mistral", 0},
    {"model.max_model_len", "--max-model-len", NULL, KT_SIZE, OFF(max_model_len), 0, 1 << 24, 0, NULL,
     "0 (the model's)", "tokens per sequence, prompt + output", 0},
    {"engine.threads", "--threads", "-t", KT_INT, OFF(threads), 1, 1024, 0, NULL, "all cores",
     "worker threads, shared among the CPU devices (string forms of --devices)", 0},
    {"engine.tp", "--tp", NULL, KT_INT, OFF(tp), 1, 64, 0, NULL, NULL,
     "tensor-parallel degree of the instances when engine.layout is not set", 0},
    {"engine.devices", "--devices", NULL, KT_DEVICES, OFF(devices), 1, PT_FABRIC_MAX_DEVICES, 0, NULL,
     "\"cpu\" (as many as the layout needs)",
     "cpu, cpu:N, cuda or cuda:N (in the file also a list of device objects)", 0},
    {"engine.device_memory_mb", "--device-memory-mb", NULL, KT_SIZE, OFF(device_memory_mb), 0, 1 << 24, 0, NULL,
     "0 (no limit)", "memory budget of each device (weights, KV, scratch), MiB", 0},
    {"engine.layout", "--layout", NULL, KT_INTLIST, OFF(layout), 1, PT_FABRIC_MAX_DEVICES, 0, NULL,
     "engine.tp repeated over the devices", "TP degree of each instance in device order, e.g. 1,1,2",
     PT_FABRIC_MAX_DEVICES},
    {"engine.allowed_tp", "--allowed-tp", NULL, KT_INTLIST, OFF(allowed_tp), 1, PT_FABRIC_MAX_DEVICES, 0, NULL,
     "1 and the layout's degrees", "TP degrees instances may have, e.g. 1,2,4", PT_CONFIG_MAX_ALLOWED_TP},
    {"engine.cuda_device", "--cuda-device", NULL, KT_INT, OFF(cuda_device), 0, 1023, 0, NULL, NULL,
     "CUDA device ordinal", 0},
    {"engine.cuda_graphs", "--cuda-graphs", NULL, KT_BOOL, OFF(cuda_graphs), 0, 0, 0, NULL, NULL,
     "replay decode steps as CUDA graphs", 0},
    {"engine.page_size", "--page-size", NULL, KT_SIZE, OFF(page_size), 1, 256, KF_POW2, NULL, NULL,
     "tokens per KV page", 0},
    {"engine.kv_dtype", "--kv-dtype", NULL, KT_ENUM, OFF(kv_dtype), 0, 0, 0, KV_DTYPES, NULL, "KV cache element type",
     0},
    {"engine.kv_memory_mb", "--kv-memory-mb", NULL, KT_SIZE, OFF(kv_memory_mb), 0, 1 << 24, 0, NULL, "0 (automatic)",
     "KV cache budget per rank, MiB; 0 = what the device budget leaves (none: CPU 1024, CUDA 90%)", 0},
    {"engine.prefix_caching", "--prefix-caching", NULL, KT_BOOL, OFF(prefix_caching), 0, 0, 0, NULL, NULL,
     "keep full KV pages of finished prompts and reuse them for requests that begin the same way", 0},
    {"engine.page_select_budget", "--page-select-budget", NULL, KT_SIZE, OFF(select_budget), 0, 1 << 24, 0, NULL,
     "0 (off)", "query-aware page selection: tokens a decode step attends to", 0},
    {"engine.page_select_dense_layers", "--page-select-dense-layers", NULL, KT_SIZE, OFF(select_dense_layers), 0,
     1 << 16, 0, NULL, NULL, "first layers that always attend densely", 0},
    {"scheduler.max_running", "--max-running", NULL, KT_INT, OFF(max_running), 1, 4096, 0, NULL, NULL,
     "sequences decoded concurrently", 0},
    {"scheduler.max_batch_tokens", "--max-batch-tokens", NULL, KT_SIZE, OFF(max_batch_tokens), 1, 1 << 20, 0, NULL,
     NULL, "tokens per engine step", 0},
    {"scheduler.prefill_chunk", "--prefill-chunk", NULL, KT_SIZE, OFF(prefill_chunk), 1, 1 << 20, 0, NULL, NULL,
     "prompt tokens of one sequence per step", 0},
    {"scheduler.max_waiting", "--max-waiting", NULL, KT_INT, OFF(max_waiting), 0, 1000000, 0, NULL, NULL,
     "queued requests before 429", 0},
    {"scheduler.request_timeout_s", "--request-timeout", NULL, KT_NUM, OFF(request_timeout_s), 0, 604800, 0, NULL,
     "0 (none)", "seconds a request may take in all", 0},
    {"scheduler.shutdown_grace_s", "--shutdown-grace", NULL, KT_NUM, OFF(shutdown_grace_s), 0, 3600, 0, NULL, NULL,
     "seconds running requests get to finish on SIGTERM", 0},
    {"scheduler.policy", "--policy", NULL, KT_ENUM, OFF(policy), 0, 0, 0, POLICIES, NULL,
     "static (the layout never changes) or dynamic (the scheduler merges and splits)", 0},
    {"scheduler.slo.ttft_ms", "--slo-ttft-ms", NULL, KT_NUM, OFF(slo_ttft_ms), 0, 3600000, 0, NULL, "0 (none)",
     "time to first token the scheduler aims for, ms", 0},
    {"scheduler.slo.tpot_ms", "--slo-tpot-ms", NULL, KT_NUM, OFF(slo_tpot_ms), 0, 3600000, 0, NULL, "0 (none)",
     "time per output token the scheduler aims for, ms", 0},
    {"scheduler.allowed_tp", "--scheduler-allowed-tp", NULL, KT_INTLIST, OFF(sched_allowed_tp), 1,
     PT_FABRIC_MAX_DEVICES, 0, NULL, "engine.allowed_tp (up to the device count)",
     "TP degrees the dynamic policy may form, e.g. 1,2", PT_CONFIG_MAX_SCHED_TP},
    {"scheduler.hysteresis_s", "--hysteresis", NULL, KT_NUM, OFF(hysteresis_s), 0, 86400, 0, NULL, NULL,
     "seconds nothing may need a merged instance before it splits back", 0},
    {"scheduler.cost_file", "--cost-file", NULL, KT_STR, OFF(cost_file), 0, 0, KF_NULLABLE, NULL,
     "null (calibrate at start-up)", "the scheduler's cost model from this file (proteus serve --save-cost)", 0},
    {"scheduler.save_cost", "--save-cost", NULL, KT_STR, OFF(save_cost), 0, 0, KF_NULLABLE, NULL, "null",
     "write the cost model in use to this file at start-up (for proteus simulate --cost)", 0},
    {"scheduler.calibration_s", "--calibration-s", NULL, KT_NUM, OFF(calibration_s), 0.1, 3600, 0, NULL, NULL,
     "seconds of timed steps per TP degree when calibrating at start-up; above 1, more shapes", 0},
    {"http.max_body_bytes", "--max-body-bytes", NULL, KT_SIZE, OFF(max_body_bytes), 1024, 1 << 30, 0, NULL, NULL,
     "request body limit", 0},
    {"http.max_header_bytes", "--max-header-bytes", NULL, KT_SIZE, OFF(max_header_bytes), 1024, 1 << 20, 0, NULL,
     NULL, "request line + headers limit", 0},
    {"http.idle_timeout_s", "--idle-timeout", NULL, KT_NUM, OFF(idle_timeout_s), 0, 86400, 0, NULL, NULL,
     "close idle keep-alive connections after this; 0 = never", 0},
    {"log_level", "--log-level", NULL, KT_ENUM, OFF(log_level), 0, 0, 0, LOG_LEVELS, NULL, "debug, info, warn, error",
     0},
};
#define N_KEYS (sizeof(KEYS) / sizeof(KEYS[0]))

static const char *const SECTIONS[] = {"server", "model", "engine", "scheduler", "http"};
#define N_SECTIONS (sizeof(SECTIONS) / sizeof(SECTIONS[0]))

/* Field access: every string field is char *, every KT_INT and KT_ENUM field
 * int-sized (the enums have no negative values), KT_SIZE size_t. */
static char **f_str(pt_server_config *c, const cfg_key *k) { return (char **)((char *)c + k->off); }
static int *f_int(pt_server_config *c, const cfg_key *k) { return (int *)((char *)c + k->off); }
static size_t *f_size(pt_server_config *c, const cfg_key *k) { return (size_t *)((char *)c + k->off); }
static double *f_num(pt_server_config *c, const cfg_key *k) { return (double *)((char *)c + k->off); }
static bool *f_bool(pt_server_config *c, const cfg_key *k) { return (bool *)((char *)c + k->off); }
static pt_int_list *f_list(pt_server_config *c, const cfg_key *k) { return (pt_int_list *)((char *)c + k->off); }
/* Keys whose field is a malloc'd string (or NULL). */
static bool owns_string(const cfg_key *k) { return k->type == KT_STR || k->type == KT_DEVICES; }
_Static_assert(sizeof(pt_dtype) == sizeof(int) && sizeof(pt_log_level) == sizeof(int), "enum fields are int-sized");

static int default_threads(void) {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0) return CPU_COUNT(&set);
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)(n < 1024 ? n : 1024) : 1;
}

void pt_server_config_default(pt_server_config *c) {
    memset(c, 0, sizeof(*c));
    c->host = pt_xstrdup("127.0.0.1");
    c->port = 8000;
    c->model = pt_xstrdup("default");
    c->threads = default_threads();
    c->tp = 1;
    c->devices = pt_xstrdup("cpu");
    c->page_size = 16;
    c->kv_dtype = PT_DTYPE_F16;
    c->kv_memory_mb = 0;
    c->cuda_graphs = true;
    c->prefix_caching = true;
    c->select_dense_layers = 2;
    c->max_running = 32;
    c->max_batch_tokens = 512;
    c->prefill_chunk = 256;
    c->max_waiting = 256;
    c->request_timeout_s = 0;
    c->shutdown_grace_s = 30;
    c->policy = PT_POLICY_STATIC;
    c->hysteresis_s = 30;
    c->calibration_s = 1;
    c->max_body_bytes = 8u << 20;
    c->max_header_bytes = 16u << 10;
    c->idle_timeout_s = 60;
    c->log_level = PT_LOG_INFO;
}

void pt_server_config_free(pt_server_config *c) {
    if (!c) return;
    for (size_t i = 0; i < N_KEYS; i++)
        if (owns_string(&KEYS[i])) free(*f_str(c, &KEYS[i]));
    free(c->config_path);
    memset(c, 0, sizeof(*c));
}

void pt_server_config_copy(pt_server_config *dst, const pt_server_config *src) {
    *dst = *src;
    for (size_t i = 0; i < N_KEYS; i++) {
        if (!owns_string(&KEYS[i])) continue;
        char **s = f_str(dst, &KEYS[i]);
        if (*s) *s = pt_xstrdup(*s);
    }
    if (dst->config_path) dst->config_path = pt_xstrdup(dst->config_path);
}

/* ---- describing and checking values ------------------------------------ */

/* "\"a\", \"b\" or \"c\"", or with or_null "\"a\", \"b\", \"c\" or null". */
static void fmt_names(char *out, size_t n, const enum_name *names, bool or_null) {
    size_t len = 0;
    out[0] = '\0';
    for (size_t i = 0; names[i].name; i++) {
        const char *sep = i == 0 ? "" : names[i + 1].name || or_null ? ", " : " or ";
        int w = snprintf(out + len, n - len, "%s\"%s\"", sep, names[i].name);
        if (w < 0 || (size_t)w >= n - len) return;
        len += (size_t)w;
    }
    if (or_null) snprintf(out + len, n - len, " or null");
}

/* What a key accepts, as the tail of "'key' must ..."; in_file: as the
 * file spells it (a flag takes lists as "1,2" and no device objects). */
static void describe(const cfg_key *k, bool in_file, char *out, size_t n) {
    char list[160];
    switch (k->type) {
    case KT_INTLIST:
        snprintf(out, n, "must be %s of 1 to %d integers in [%.0f, %.0f]",
                 in_file ? "null or a list" : "a comma-separated list", k->max_items, k->lo, k->hi);
        break;
    case KT_DEVICES:
        snprintf(out, n, "must be \"cpu\", \"cuda\", \"cpu:N\" or \"cuda:N\" with N in [1, %d]%s",
                 PT_FABRIC_MAX_DEVICES, in_file ? ", or a list of device objects" : "");
        break;
    case KT_INT:
    case KT_SIZE:
        snprintf(out, n, "must be %s in [%.0f, %.0f]", k->flags & KF_POW2 ? "a power of two" : "an integer", k->lo,
                 k->hi);
        break;
    case KT_NUM: snprintf(out, n, "must be a number in [%g, %g]", k->lo, k->hi); break;
    case KT_BOOL: snprintf(out, n, "must be true or false"); break;
    case KT_ENUM:
        fmt_names(list, sizeof(list), k->names, false);
        snprintf(out, n, "must be one of %s", list);
        break;
    case KT_STR:
        if (k->names) {
            fmt_names(list, sizeof(list), k->names, k->flags & KF_NULLABLE);
            snprintf(out, n, "must be one of %s", list);
        } else {
            snprintf(out, n, "must be a non-empty string%s", k->flags & KF_NULLABLE ? " or null" : "");
        }
        break;
    }
}

static bool is_pow2(long long v) { return v > 0 && (v & (v - 1)) == 0; }

/* Range and shape checks shared by file and flags; stores on success. */
static bool store_integer(pt_server_config *c, const cfg_key *k, double v) {
    if (!isfinite(v) || v != floor(v) || v < k->lo || v > k->hi) return false;
    if ((k->flags & KF_POW2) && !is_pow2((long long)v)) return false;
    if (k->type == KT_INT) *f_int(c, k) = (int)v;
    else *f_size(c, k) = (size_t)v;
    return true;
}

static bool store_number(pt_server_config *c, const cfg_key *k, double v) {
    if (!isfinite(v) || v < k->lo || v > k->hi) return false;
    *f_num(c, k) = v;
    return true;
}

static bool store_enum(pt_server_config *c, const cfg_key *k, const char *s) {
    for (size_t i = 0; k->names[i].name; i++) {
        if (!strcmp(s, k->names[i].name)) {
            *f_int(c, k) = k->names[i].value;
            return true;
        }
    }
    return false;
}

/* s == NULL stores null (only for KF_NULLABLE keys). */
static bool store_string(pt_server_config *c, const cfg_key *k, const char *s) {
    if (!s) {
        if (!(k->flags & KF_NULLABLE)) return false;
    } else {
        size_t len = strlen(s);
        if (len == 0 || len > STR_MAX) return false;
        if (k->names) {
            bool found = false;
            for (size_t i = 0; k->names[i].name && !found; i++) found = !strcmp(s, k->names[i].name);
            if (!found) return false;
        }
    }
    char **f = f_str(c, k);
    free(*f);
    *f = s ? pt_xstrdup(s) : NULL;
    return true;
}

/* "cpu", "cuda", "cpu:N", "cuda:N" (N in [1, PT_FABRIC_MAX_DEVICES]): the
 * kind and the count; count 0 ("cpu") = as many as the layout needs. */
static bool parse_devices_string(const char *s, pt_device_kind *kind, int *count) {
    size_t kl;
    if (!strncmp(s, "cpu", 3)) *kind = PT_DEVICE_CPU, kl = 3;
    else if (!strncmp(s, "cuda", 4)) *kind = PT_DEVICE_CUDA, kl = 4;
    else return false;
    if (s[kl] == '\0') {
        *count = *kind == PT_DEVICE_CPU ? 0 : 1;
        return true;
    }
    if (s[kl] != ':' || !isdigit((unsigned char)s[kl + 1])) return false;
    char *end;
    errno = 0;
    long v = strtol(s + kl + 1, &end, 10);
    if (*end || errno || v < 1 || v > PT_FABRIC_MAX_DEVICES) return false;
    *count = (int)v;
    return true;
}

/* The string form of engine.devices; it replaces a list the file gave. */
static bool store_devices_string(pt_server_config *c, const char *s) {
    pt_device_kind kind;
    int count;
    if (!parse_devices_string(s, &kind, &count)) return false;
    free(c->devices);
    c->devices = pt_xstrdup(s);
    c->n_device_list = 0;
    return true;
}

/* "1,1,2" (spaces around the numbers allowed) into a list. */
static bool store_list_flag(pt_server_config *c, const cfg_key *k, const char *s) {
    pt_int_list l = {0};
    const char *p = s;
    for (;;) {
        while (*p == ' ') p++;
        if (!isdigit((unsigned char)*p) || l.n == k->max_items) return false;
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (errno || v < k->lo || v > k->hi) return false;
        l.v[l.n++] = (int)v;
        p = end;
        while (*p == ' ') p++;
        if (*p == '\0') break;
        if (*p++ != ',') return false;
    }
    *f_list(c, k) = l;
    return true;
}

/* "[1,1,2]": compact, as the flag is written ("...]" when cut short). */
static void fmt_list(char *out, size_t n, const int *v, int count) {
    size_t len = (size_t)snprintf(out, n, "[");
    for (int i = 0; i < count && len < n; i++) len += (size_t)snprintf(out + len, n - len, "%s%d", i ? "," : "", v[i]);
    if (len + 2 <= n) snprintf(out + len, n - len, "]");
    else if (n >= 5) memcpy(out + n - 5, "...]", 5);
}

/* A user-supplied name or value, made safe to print: non-printable bytes as
 * '?', truncated with "..." after max bytes. */
static void printable(char *out, size_t n, const char *s, size_t max) {
    size_t j = 0, i = 0;
    for (; s[i] && j + 4 < n && i < max; i++) out[j++] = isprint((unsigned char)s[i]) ? s[i] : '?';
    if (s[i] && j + 4 <= n) {
        memcpy(out + j, "...", 3);
        j += 3;
    }
    out[j] = '\0';
}

/* ---- suggestions for unknown names ------------------------------------- */

static size_t edit_distance(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    if (la > 63 || lb > 63) return SIZE_MAX;
    size_t row[64];
    for (size_t j = 0; j <= lb; j++) row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j];
            size_t best = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < best) best = up + 1;
            if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}

/* The known key path closest to `path`: same last component in another
 * section first, else within edit distance 2. NULL if nothing is close. */
static const char *suggest_key(const char *path) {
    const char *leaf = strrchr(path, '.');
    leaf = leaf ? leaf + 1 : path;
    for (size_t i = 0; i < N_KEYS; i++) {
        const char *kl = strrchr(KEYS[i].path, '.');
        if (!strcmp(kl ? kl + 1 : KEYS[i].path, leaf)) return KEYS[i].path;
    }
    /* A key the name begins ("scheduler.slo.ttft" -> "scheduler.slo.ttft_ms"). */
    for (size_t i = 0; i < N_KEYS; i++)
        if (!strncmp(KEYS[i].path, path, strlen(path)) && KEYS[i].path[strlen(path)] == '_') return KEYS[i].path;
    const char *best = NULL;
    size_t best_d = 3;
    for (size_t i = 0; i < N_KEYS + N_SECTIONS; i++) {
        const char *cand = i < N_KEYS ? KEYS[i].path : SECTIONS[i - N_KEYS];
        size_t d = edit_distance(path, cand);
        if (d < best_d) best_d = d, best = cand;
    }
    return best;
}

static const char *suggest_flag(const char *flag) {
    const char *best = NULL;
    size_t best_d = 3;
    for (size_t i = 0; i <= N_KEYS; i++) {
        const char *cand = i < N_KEYS ? KEYS[i].flag : "--config";
        size_t d = edit_distance(flag, cand);
        if (d < best_d) best_d = d, best = cand;
    }
    return best;
}

/* ---- the file ----------------------------------------------------------- */

/* Reads the whole file into a NUL-terminated buffer. */
static int read_file(const char *path, char **out, size_t *out_len, pt_err *err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return pt_err_set(err, PT_ERR_IO, "%s: cannot open config file: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return pt_err_set(err, PT_ERR_IO, "%s: cannot stat config file: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return pt_err_set(err, PT_ERR_IO, "%s: not a regular file%s", path, S_ISDIR(st.st_mode) ? " (a directory)" : "");
    }
    if ((uint64_t)st.st_size > CONFIG_MAX_BYTES) {
        close(fd);
        return pt_err_set(err, PT_ERR_FORMAT, "%s: %lld bytes is too large for a config file (limit %u)", path,
                          (long long)st.st_size, CONFIG_MAX_BYTES);
    }
    size_t cap = (size_t)st.st_size + 1, len = 0;
    char *buf = pt_xmalloc(cap);
    for (;;) {
        ssize_t r = read(fd, buf + len, cap - 1 - len);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            int e = errno;
            close(fd);
            free(buf);
            return pt_err_set(err, PT_ERR_IO, "%s: read failed: %s", path, strerror(e));
        }
        if (r == 0 || len + (size_t)r == cap - 1) {
            len += (size_t)r;
            break;
        }
        len += (size_t)r;
    }
    close(fd);
    buf[len] = '\0';
    *out = buf;
    *out_len = len;
    return PT_OK;
}

/* A JSON value as the user wrote it, printable and short. */
static void json_got(char *out, size_t n, const cJSON *item) {
    char *text = cJSON_PrintUnformatted(item);
    printable(out, n, text ? text : "?", 60);
    free(text);
}

static int json_value_error(const char *file, const cfg_key *k, const cJSON *item, pt_err *err) {
    char why[256], got[80];
    describe(k, true, why, sizeof(why));
    json_got(got, sizeof(got), item);
    return pt_err_set(err, PT_ERR_FORMAT, "%s: '%s' %s, got %s", file, k->path, why, got);
}

static bool json_integer_in(const cJSON *v, double lo, double hi) {
    return cJSON_IsNumber(v) && isfinite(v->valuedouble) && v->valuedouble == floor(v->valuedouble) &&
           v->valuedouble >= lo && v->valuedouble <= hi;
}

/* null (= the derived default) or a non-empty array of integers in range;
 * a bad element is named by its index. */
static int apply_json_list(pt_server_config *c, const char *file, const cfg_key *k, const cJSON *item, pt_err *err) {
    pt_int_list l = {0};
    if (!cJSON_IsNull(item)) {
        int n = cJSON_IsArray(item) ? cJSON_GetArraySize(item) : 0;
        if (n < 1 || n > k->max_items) return json_value_error(file, k, item, err);
        for (const cJSON *e = item->child; e; e = e->next) {
            if (!json_integer_in(e, k->lo, k->hi)) {
                char got[80];
                json_got(got, sizeof(got), e);
                return pt_err_set(err, PT_ERR_FORMAT, "%s: '%s'[%d] must be an integer in [%.0f, %.0f], got %s", file,
                                  k->path, l.n, k->lo, k->hi, got);
            }
            l.v[l.n++] = (int)e->valuedouble;
        }
    }
    *f_list(c, k) = l;
    return PT_OK;
}

static const char *const DEVICE_KEYS[] = {"kind", "threads", "ordinal", "memory_mb"};
#define N_DEVICE_KEYS (sizeof(DEVICE_KEYS) / sizeof(DEVICE_KEYS[0]))

static int device_member_error(const char *file, const char *at, const cJSON *m, const char *why, pt_err *err) {
    char got[80];
    json_got(got, sizeof(got), m);
    return pt_err_set(err, PT_ERR_FORMAT, "%s: '%s.%s' must be %s, got %s", file, at, m->string, why, got);
}

static int check_duplicate(const char *file, const char *section, const cJSON *obj, const cJSON *item, pt_err *err);
static void key_path(char *out, size_t n, const char *section, const char *name);
static const char *json_kind(const cJSON *v);

/* One member of a device object into *d. */
static int apply_device_member(const char *file, const char *at, const cJSON *m, pt_device_conf *d, pt_err *err) {
    const char *name = m->string;
    if (!strcmp(name, "kind")) {
        bool cpu = cJSON_IsString(m) && !strcmp(m->valuestring, "cpu");
        bool cuda = cJSON_IsString(m) && !strcmp(m->valuestring, "cuda");
        if (!cpu && !cuda) return device_member_error(file, at, m, "\"cpu\" or \"cuda\"", err);
        d->kind = cpu ? PT_DEVICE_CPU : PT_DEVICE_CUDA;
    } else if (!strcmp(name, "threads")) {
        if (!json_integer_in(m, 1, 1024)) return device_member_error(file, at, m, "an integer in [1, 1024]", err);
        d->threads = (int)m->valuedouble;
    } else if (!strcmp(name, "ordinal")) {
        if (!json_integer_in(m, 0, 1023)) return device_member_error(file, at, m, "an integer in [0, 1023]", err);
        d->ordinal = (int)m->valuedouble;
    } else if (!strcmp(name, "memory_mb")) {
        if (!json_integer_in(m, 0, 1 << 24))
            return device_member_error(file, at, m, "an integer in [0, 16777216]", err);
        d->memory_mb = (long long)m->valuedouble;
    } else {
        char path[160];
        key_path(path, sizeof(path), at, name);
        for (size_t j = 0; j < N_DEVICE_KEYS; j++)
            if (edit_distance(name, DEVICE_KEYS[j]) <= 2)
                return pt_err_set(err, PT_ERR_FORMAT, "%s: unknown key '%s' (did you mean '%s.%s'?)", file, path, at,
                                  DEVICE_KEYS[j]);
        return pt_err_set(err, PT_ERR_FORMAT, "%s: unknown key '%s' (a device has kind, threads, ordinal, memory_mb)",
                          file, path);
    }
    return PT_OK;
}

/* {"kind": "cpu", "threads": 1, "memory_mb": 2048} or {"kind": "cuda", "ordinal": 0}. */
static int parse_device_object(const char *file, int i, const cJSON *o, pt_device_conf *d, pt_err *err) {
    char at[48];
    snprintf(at, sizeof(at), "engine.devices[%d]", i);
    if (!cJSON_IsObject(o))
        return pt_err_set(err, PT_ERR_FORMAT,
                          "%s: '%s' must be an object such as {\"kind\": \"cpu\", \"threads\": 1}, got %s", file, at,
                          json_kind(o));
    *d = (pt_device_conf){PT_DEVICE_CPU, -1, -1, -1};
    bool have_kind = false;
    for (const cJSON *m = o->child; m; m = m->next) {
        int rc = check_duplicate(file, at, o, m, err);
        if (!rc) rc = apply_device_member(file, at, m, d, err);
        if (rc) return rc;
        have_kind |= !strcmp(m->string, "kind");
    }
    if (!have_kind) return pt_err_set(err, PT_ERR_FORMAT, "%s: '%s.kind' is missing: \"cpu\" or \"cuda\"", file, at);
    if (d->kind == PT_DEVICE_CPU && d->ordinal >= 0)
        return pt_err_set(err, PT_ERR_FORMAT, "%s: '%s.ordinal' applies to CUDA devices only (this one is \"cpu\")",
                          file, at);
    if (d->kind == PT_DEVICE_CUDA && d->threads >= 0)
        return pt_err_set(err, PT_ERR_FORMAT, "%s: '%s.threads' applies to CPU devices only (this one is \"cuda\")",
                          file, at);
    return PT_OK;
}

/* engine.devices: a string form, or a non-empty list of device objects. */
static int apply_json_devices(pt_server_config *c, const char *file, const cfg_key *k, const cJSON *item,
                              pt_err *err) {
    if (cJSON_IsString(item))
        return store_devices_string(c, item->valuestring) ? PT_OK : json_value_error(file, k, item, err);
    if (!cJSON_IsArray(item)) return json_value_error(file, k, item, err);
    int n = cJSON_GetArraySize(item);
    if (n < 1 || n > PT_FABRIC_MAX_DEVICES)
        return pt_err_set(err, PT_ERR_FORMAT, "%s: '%s' must list 1 to %d devices, got %d", file, k->path,
                          PT_FABRIC_MAX_DEVICES, n);
    pt_device_conf list[PT_FABRIC_MAX_DEVICES];
    int i = 0;
    for (const cJSON *o = item->child; o; o = o->next, i++) {
        int rc = parse_device_object(file, i, o, &list[i], err);
        if (rc) return rc;
    }
    memcpy(c->device_list, list, (size_t)n * sizeof(list[0]));
    c->n_device_list = n;
    free(c->devices);
    c->devices = NULL;
    return PT_OK;
}

static int apply_json_value(pt_server_config *c, const char *file, const cfg_key *k, const cJSON *item,
                            pt_err *err) {
    bool ok = false;
    switch (k->type) {
    case KT_INTLIST: return apply_json_list(c, file, k, item, err);
    case KT_DEVICES: return apply_json_devices(c, file, k, item, err);
    case KT_INT:
    case KT_SIZE: ok = cJSON_IsNumber(item) && store_integer(c, k, item->valuedouble); break;
    case KT_NUM: ok = cJSON_IsNumber(item) && store_number(c, k, item->valuedouble); break;
    case KT_BOOL:
        ok = cJSON_IsBool(item);
        if (ok) *f_bool(c, k) = cJSON_IsTrue(item);
        break;
    case KT_ENUM: ok = cJSON_IsString(item) && store_enum(c, k, item->valuestring); break;
    case KT_STR:
        if (cJSON_IsNull(item)) ok = store_string(c, k, NULL);
        else ok = cJSON_IsString(item) && store_string(c, k, item->valuestring);
        break;
    }
    return ok ? PT_OK : json_value_error(file, k, item, err);
}

/* The key whose path is `section.name` (section NULL: a top-level key). */
static const cfg_key *find_key(const char *section, const char *name) {
    size_t sl = section ? strlen(section) : 0;
    for (size_t i = 0; i < N_KEYS; i++) {
        const char *p = KEYS[i].path;
        if (section) {
            if (strncmp(p, section, sl) != 0 || p[sl] != '.' || strcmp(p + sl + 1, name) != 0) continue;
        } else if (strcmp(p, name) != 0) {
            continue;
        }
        return &KEYS[i];
    }
    return NULL;
}

/* Whether `section.name` is an object holding keys: a section ("server")
 * or a group inside one ("scheduler.slo"). */
static bool is_group(const char *section, const char *name) {
    size_t sl = section ? strlen(section) : 0, nl = strlen(name);
    for (size_t i = 0; i < N_KEYS; i++) {
        const char *p = KEYS[i].path;
        if (section && (strncmp(p, section, sl) != 0 || p[sl] != '.')) continue;
        const char *rest = section ? p + sl + 1 : p;
        if (!strncmp(rest, name, nl) && rest[nl] == '.') return true;
    }
    return false;
}

/* "section.name" (or "name"), printable, for messages. */
static void key_path(char *out, size_t n, const char *section, const char *name) {
    char safe[80];
    printable(safe, sizeof(safe), name, 64);
    if (section) snprintf(out, n, "%s.%s", section, safe);
    else snprintf(out, n, "%s", safe);
}

static int unknown_key(const char *file, const char *section, const char *name, pt_err *err) {
    char path[160];
    key_path(path, sizeof(path), section, name);
    const char *hint = suggest_key(path);
    if (hint)
        return pt_err_set(err, PT_ERR_FORMAT, "%s: unknown key '%s' (did you mean '%s'?)", file, path, hint);
    return pt_err_set(err, PT_ERR_FORMAT, "%s: unknown key '%s'", file, path);
}

/* cJSON keeps every member of an object, duplicates included, in order; a
 * later duplicate would silently lose to the first on lookup, so reject. */
static int check_duplicate(const char *file, const char *section, const cJSON *obj, const cJSON *item, pt_err *err) {
    for (const cJSON *p = obj->child; p != item; p = p->next) {
        if (!strcmp(p->string, item->string)) {
            char path[160];
            key_path(path, sizeof(path), section, item->string);
            return pt_err_set(err, PT_ERR_FORMAT, "%s: duplicate key '%s'", file, path);
        }
    }
    return PT_OK;
}

static const char *json_kind(const cJSON *v) {
    if (cJSON_IsArray(v)) return "an array";
    if (cJSON_IsString(v)) return "a string";
    if (cJSON_IsNumber(v)) return "a number";
    if (cJSON_IsBool(v)) return "a boolean";
    if (cJSON_IsNull(v)) return "null";
    return "an object";
}

/* The members of one object: keys, or groups of keys (sections, and
 * objects inside them such as scheduler.slo) walked in turn. `section` is
 * the object's path, NULL at the top level. */
static int apply_object(pt_server_config *c, const char *file, const char *section, const cJSON *obj, pt_err *err) {
    for (const cJSON *item = obj->child; item; item = item->next) {
        int rc = check_duplicate(file, section, obj, item, err);
        if (rc) return rc;
        const cfg_key *k = find_key(section, item->string);
        if (k) {
            if ((rc = apply_json_value(c, file, k, item, err))) return rc;
            continue;
        }
        if (!is_group(section, item->string)) return unknown_key(file, section, item->string, err);
        char path[160];
        key_path(path, sizeof(path), section, item->string);
        if (!cJSON_IsObject(item))
            return pt_err_set(err, PT_ERR_FORMAT, "%s: '%s' must be an object, got %s", file, path, json_kind(item));
        if ((rc = apply_object(c, file, path, item, err))) return rc;
    }
    return PT_OK;
}

static int apply_json(pt_server_config *c, const char *file, const cJSON *root, pt_err *err) {
    if (!cJSON_IsObject(root))
        return pt_err_set(err, PT_ERR_FORMAT, "%s: the top level must be a JSON object, got %s", file,
                          json_kind(root));
    return apply_object(c, file, NULL, root, err);
}

static int malformed(const char *file, const char *buf, size_t len, const char *at, pt_err *err) {
    size_t off = at && at >= buf && at <= buf + len ? (size_t)(at - buf) : len;
    size_t line = 1, col = 1;
    for (size_t i = 0; i < off; i++) {
        if (buf[i] == '\n') line++, col = 1;
        else col++;
    }
    /* cJSON's error position is approximate (after a trailing comma it
     * points one past the bracket), so show the bytes on either side. */
    size_t from = off, to = off;
    while (from > 0 && off - from < 16 && buf[from - 1] != '\n') from--;
    while (to < len && to - off < 16 && buf[to] != '\n') to++;
    char near[40], safe[48];
    snprintf(near, sizeof(near), "%.*s", (int)(to - from), buf + from);
    printable(safe, sizeof(safe), near, 32);
    if (off >= len)
        return pt_err_set(err, PT_ERR_FORMAT, "%s:%zu:%zu: malformed JSON at byte %zu: unexpected end of file, after '%s'",
                          file, line, col, off, safe);
    return pt_err_set(err, PT_ERR_FORMAT, "%s:%zu:%zu: malformed JSON at byte %zu, near '%s'", file, line, col, off,
                      safe);
}

int pt_config_load_file(pt_server_config *c, const char *path, pt_err *err) {
    if (!c || !path || !*path) return pt_err_set(err, PT_ERR_INVALID, "config: no file name given");
    char *buf = NULL;
    size_t len = 0;
    int rc = read_file(path, &buf, &len, err);
    if (rc) return rc;
    const char *nul = memchr(buf, '\0', len);
    if (nul) {
        rc = pt_err_set(err, PT_ERR_FORMAT, "%s: NUL byte at byte %zu: not a JSON text file", path,
                        (size_t)(nul - buf));
        free(buf);
        return rc;
    }
    size_t i = 0;
    while (i < len && (buf[i] == ' ' || buf[i] == '\t' || buf[i] == '\n' || buf[i] == '\r')) i++;
    if (i == len) {
        free(buf);
        return pt_err_set(err, PT_ERR_FORMAT, "%s: empty file (expected a JSON object)", path);
    }
    /* The length given to cJSON counts the terminating NUL: with
     * require_null_terminated it checks that the byte after the value is it. */
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(buf, len + 1, &end, 1);
    if (!root) {
        rc = malformed(path, buf, len, end, err);
        free(buf);
        return rc;
    }
    pt_server_config tmp;
    pt_server_config_copy(&tmp, c);
    rc = apply_json(&tmp, path, root, err);
    cJSON_Delete(root);
    free(buf);
    if (rc) {
        pt_server_config_free(&tmp);
        return rc;
    }
    free(tmp.config_path);
    tmp.config_path = pt_xstrdup(path);
    pt_server_config_free(c);
    *c = tmp;
    return PT_OK;
}

/* ---- flags -------------------------------------------------------------- */

static bool parse_ll(const char *s, double *out) {
    if (!*s || isspace((unsigned char)*s)) return false;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (*end || errno) return false;
    *out = (double)v;
    return true;
}

static bool parse_double(const char *s, double *out) {
    if (!*s || isspace((unsigned char)*s)) return false;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (*end || errno || !isfinite(v)) return false;
    *out = v;
    return true;
}

static int apply_flag_value(pt_server_config *c, const cfg_key *k, const char *flag, const char *v, pt_err *err) {
    bool ok = false;
    double d;
    switch (k->type) {
    case KT_INT:
    case KT_SIZE: ok = parse_ll(v, &d) && store_integer(c, k, d); break;
    case KT_NUM: ok = parse_double(v, &d) && store_number(c, k, d); break;
    case KT_BOOL:
        if ((ok = !strcmp(v, "true") || !strcmp(v, "1"))) *f_bool(c, k) = true;
        else if ((ok = !strcmp(v, "false") || !strcmp(v, "0"))) *f_bool(c, k) = false;
        break;
    case KT_ENUM: ok = store_enum(c, k, v); break;
    case KT_STR: ok = store_string(c, k, v); break;
    case KT_INTLIST: ok = store_list_flag(c, k, v); break;
    case KT_DEVICES: ok = store_devices_string(c, v); break;
    }
    if (ok) return PT_OK;
    char why[256], got[80];
    describe(k, false, why, sizeof(why));
    printable(got, sizeof(got), v, 60);
    return pt_err_set(err, PT_ERR_INVALID, "%s: %s, got \"%s\"", flag, why, got);
}

typedef struct {
    const cfg_key *key;
    const char *flag; /* as spelled on the command line, for messages */
    const char *value;
} flag_use;

int pt_config_apply_flags(pt_server_config *c, int argc, char **argv, pt_err *err) {
    if (!c || argc < 0 || (argc > 0 && !argv)) return pt_err_set(err, PT_ERR_INVALID, "config: bad arguments");
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) return PT_CONFIG_HELP;

    /* Pass 1: recognise every flag before anything is applied, so that a typo
     * anywhere is reported before the file is even read. */
    flag_use *uses = pt_xcalloc((size_t)(argc > 0 ? argc : 1), sizeof(*uses));
    size_t n_uses = 0;
    const char *config = NULL;
    char name[64];
    int rc = PT_OK;
    for (int i = 1; i < argc && rc == PT_OK; i++) {
        const char *a = argv[i];
        char safe[80];
        printable(safe, sizeof(safe), a, 64);
        if (a[0] != '-' || a[1] == '\0') {
            rc = pt_err_set(err, PT_ERR_INVALID, "unexpected argument '%s' (options take the form --name VALUE)", safe);
            break;
        }
        const char *eq = strchr(a, '=');
        size_t nl = eq ? (size_t)(eq - a) : strlen(a);
        if (nl >= sizeof(name)) nl = sizeof(name) - 1;
        memcpy(name, a, nl);
        name[nl] = '\0';
        const cfg_key *k = NULL;
        const char *spelled = NULL;
        bool is_config = !strcmp(name, "--config");
        if (is_config) spelled = "--config";
        for (size_t j = 0; j < N_KEYS && !spelled; j++) {
            if (!strcmp(name, KEYS[j].flag)) k = &KEYS[j], spelled = KEYS[j].flag;
            else if (KEYS[j].sflag && !strcmp(name, KEYS[j].sflag)) k = &KEYS[j], spelled = KEYS[j].sflag;
        }
        if (!spelled) {
            printable(safe, sizeof(safe), name, 64);
            const char *hint = suggest_flag(name);
            if (hint) rc = pt_err_set(err, PT_ERR_INVALID, "unknown option '%s' (did you mean '%s'?)", safe, hint);
            else rc = pt_err_set(err, PT_ERR_INVALID, "unknown option '%s'", safe);
            break;
        }
        const char *v;
        if (eq) v = eq + 1;
        else if (k && k->type == KT_BOOL) v = "true"; /* a bare boolean flag turns it on */
        else if (i + 1 < argc) v = argv[++i];
        else {
            rc = pt_err_set(err, PT_ERR_INVALID, "%s: missing value", spelled);
            break;
        }
        if (is_config) {
            if (config) {
                rc = pt_err_set(err, PT_ERR_INVALID, "--config: given more than once");
                break;
            }
            if (!*v) {
                rc = pt_err_set(err, PT_ERR_INVALID, "--config: empty file name");
                break;
            }
            config = v;
        } else {
            uses[n_uses++] = (flag_use){k, spelled, v};
        }
    }

    /* Pass 2: the file, then the flags in order, on a copy. */
    pt_server_config tmp;
    pt_server_config_copy(&tmp, c);
    if (rc == PT_OK && config) rc = pt_config_load_file(&tmp, config, err);
    for (size_t i = 0; i < n_uses && rc == PT_OK; i++)
        rc = apply_flag_value(&tmp, uses[i].key, uses[i].flag, uses[i].value, err);
    free(uses);
    if (rc) {
        pt_server_config_free(&tmp);
        return rc;
    }
    pt_server_config_free(c);
    *c = tmp;
    return PT_OK;
}

/* ---- finalize ----------------------------------------------------------- */

static bool ends_with_ci(const char *s, size_t len, const char *suffix) {
    size_t n = strlen(suffix);
    return len >= n && strncasecmp(s + len - n, suffix, n) == 0;
}

/* "Q4_1", "q8_0", "Q4_K_M", "IQ3_XXS", "F16", "BF16": the tags GGUF files
 * carry after the model name. */
static bool is_quant_tag(const char *t, size_t n) {
    if (n == 0 || n > 10) return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)t[i]) && t[i] != '_') return false;
    char u[12];
    for (size_t i = 0; i < n; i++) u[i] = (char)toupper((unsigned char)t[i]);
    u[n] = '\0';
    if (u[0] == 'Q' && n >= 2 && isdigit((unsigned char)u[1])) return true;
    if (u[0] == 'I' && u[1] == 'Q' && n >= 3 && isdigit((unsigned char)u[2])) return true;
    return !strcmp(u, "F16") || !strcmp(u, "F32") || !strcmp(u, "BF16") || !strcmp(u, "FP16");
}

/* The last path component of s[0..len), without trailing slashes. */
static const char *base_name(const char *s, size_t *len) {
    size_t n = *len;
    while (n > 1 && s[n - 1] == '/') n--;
    const char *b = s + n;
    while (b > s && b[-1] != '/') b--;
    *len = (size_t)(s + n - b);
    return b;
}

char *pt_config_derive_served_name(const char *model) {
    if (!model || !*model || !strcmp(model, "default")) return pt_xstrdup(DEFAULT_SERVED_NAME);
    if (!strncmp(model, "synthetic:", 10)) return pt_xstrdup(model);
    size_t len = strlen(model);
    const char *b = base_name(model, &len);
    if (ends_with_ci(b, len, ".gguf")) {
        len -= 5;
        for (size_t i = len; i > 0; i--) {
            if (b[i - 1] == '.' || b[i - 1] == '-') {
                if (is_quant_tag(b + i, len - i)) len = i - 1;
                break;
            }
        }
    } else if (ends_with_ci(b, len, ".safetensors")) {
        /* model.safetensors or model-00001-of-00002.safetensors: the
         * directory names the model. */
        len -= 12;
        if (len >= 5 && !strncmp(b, "model", 5) && b > model) {
            size_t dl = (size_t)(b - model);
            const char *d = base_name(model, &dl);
            if (dl > 0 && !(dl == 1 && (*d == '/' || *d == '.'))) b = d, len = dl;
        }
    }
    if (len == 0 || (len == 1 && *b == '/')) return pt_xstrdup(model);
    char *name = pt_xmalloc(len + 1);
    memcpy(name, b, len);
    name[len] = '\0';
    return name;
}

/* ---- devices and layout ------------------------------------------------- */

/* The instances: engine.layout, or engine.tp repeated over the devices;
 * `count` devices named by engine.devices (0: as many as the layout needs).
 * Sets p->n_devices. */
static int plan_instances(const pt_server_config *c, const char *src, int count, pt_layout_plan *p, pt_err *err) {
    if (c->layout.n == 0) {
        int n = count ? count : c->tp;
        if (n % c->tp)
            return pt_err_set(err, PT_ERR_INVALID,
                              "%s'engine.devices' has %d device%s, which 'engine.tp' (%d) does not divide: set "
                              "'engine.layout' (--devices, --tp, --layout)",
                              src, n, n == 1 ? "" : "s", c->tp);
        p->n_instances = n / c->tp;
        for (int i = 0; i < p->n_instances; i++) p->tp[i] = c->tp;
    } else {
        p->n_instances = c->layout.n;
        memcpy(p->tp, c->layout.v, (size_t)c->layout.n * sizeof(int));
    }
    int sum = 0;
    for (int i = 0; i < p->n_instances; i++) {
        p->first[i] = sum;
        sum += p->tp[i];
    }
    char lay[320];
    fmt_list(lay, sizeof(lay), p->tp, p->n_instances);
    if (sum > PT_FABRIC_MAX_DEVICES)
        return pt_err_set(err, PT_ERR_INVALID, "%s'engine.layout' %s covers %d devices, more than the %d a server has",
                          src, lay, sum, PT_FABRIC_MAX_DEVICES);
    if (count && sum != count)
        return pt_err_set(err, PT_ERR_INVALID, "%s'engine.layout' %s covers %d device%s but 'engine.devices' has %d "
                          "(--layout, --devices)", src, lay, sum, sum == 1 ? "" : "s", count);
    p->n_devices = sum;
    /* An instance is one group of the comm world: the groups of degree d
     * tile the devices from index 0, so the instance must start on one. */
    for (int i = 0; i < p->n_instances; i++)
        if (p->first[i] % p->tp[i])
            return pt_err_set(err, PT_ERR_INVALID,
                              "%s'engine.layout'[%d] = %d would start at device %d, which is not a multiple of %d: an "
                              "instance of TP %d must start at an aligned device index (--layout %s)",
                              src, i, p->tp[i], p->first[i], p->tp[i], p->tp[i], lay);
    return PT_OK;
}

static bool list_has(const int *v, int n, int x) {
    for (int i = 0; i < n; i++)
        if (v[i] == x) return true;
    return false;
}

/* engine.allowed_tp, or 1 and the layout's degrees (ascending). Every
 * degree of the layout must be allowed, and every allowed degree up to the
 * device count must divide it: the comm world builds the groups of each
 * allowed degree over all the devices, to regroup them later. */
static int plan_allowed(const pt_server_config *c, const char *src, pt_layout_plan *p, pt_err *err) {
    bool derived = c->allowed_tp.n == 0;
    p->n_allowed = 0;
    if (!derived) {
        p->n_allowed = c->allowed_tp.n;
        memcpy(p->allowed_tp, c->allowed_tp.v, (size_t)p->n_allowed * sizeof(int));
    } else {
        p->allowed_tp[p->n_allowed++] = 1;
        /* The layout's degrees, then those the dynamic policy may form. */
        int n_cand = p->n_instances + c->sched_allowed_tp.n;
        for (int i = 0; i < n_cand; i++) {
            int d = i < p->n_instances ? p->tp[i] : c->sched_allowed_tp.v[i - p->n_instances];
            if (list_has(p->allowed_tp, p->n_allowed, d)) continue;
            if (p->n_allowed == PT_CONFIG_MAX_ALLOWED_TP)
                return pt_err_set(err, PT_ERR_INVALID, "%s'engine.layout' and 'scheduler.allowed_tp' use more than %d "
                                  "TP degrees", src, PT_CONFIG_MAX_ALLOWED_TP - 1);
            int j = p->n_allowed++;
            for (; j > 0 && p->allowed_tp[j - 1] > d; j--) p->allowed_tp[j] = p->allowed_tp[j - 1];
            p->allowed_tp[j] = d;
        }
    }
    char al[160];
    fmt_list(al, sizeof(al), p->allowed_tp, p->n_allowed);
    for (int i = 0; i < p->n_instances; i++)
        if (!list_has(p->allowed_tp, p->n_allowed, p->tp[i]))
            return pt_err_set(err, PT_ERR_INVALID,
                              "%s'engine.layout'[%d] = %d is not in 'engine.allowed_tp' %s (--layout, --allowed-tp)",
                              src, i, p->tp[i], al);
    for (int i = 0; i < p->n_allowed; i++) {
        int d = p->allowed_tp[i];
        if (d <= p->n_devices && p->n_devices % d)
            return pt_err_set(err, PT_ERR_INVALID,
                              "%s'engine.allowed_tp' %s%s: TP %d does not divide the %d devices: the instances of "
                              "each allowed degree must tile the devices (--allowed-tp, --layout, --devices)",
                              src, al, derived ? " (by default 1, the layout's degrees and 'scheduler.allowed_tp')" : "",
                              d, p->n_devices);
    }
    return PT_OK;
}

/* One pt_device_spec per device: the string forms share engine.threads
 * among their CPU devices and give each engine.device_memory_mb; a listed
 * device takes what its object sets, the same defaults otherwise. */
static int plan_devices(const pt_server_config *c, const char *src, pt_device_kind kind, pt_layout_plan *p,
                        pt_err *err) {
    int n = p->n_devices;
    uint64_t budget = (uint64_t)c->device_memory_mb << 20;
    int threads = c->threads / n > 0 ? c->threads / n : 1;
    if (c->n_device_list == 0) {
        bool one_gpu = c->devices && !strcmp(c->devices, "cuda");
        for (int i = 0; i < n; i++)
            p->devices[i] = (pt_device_spec){kind, kind == PT_DEVICE_CPU ? threads : 1,
                                             kind == PT_DEVICE_CUDA ? (one_gpu ? c->cuda_device : i) : 0, budget};
        return PT_OK;
    }
    int n_cuda = 0;
    for (int i = 0; i < n; i++) {
        const pt_device_conf *d = &c->device_list[i];
        if (d->kind != c->device_list[0].kind)
            return pt_err_set(err, PT_ERR_INVALID,
                              "%s'engine.devices'[%d] is \"%s\" but 'engine.devices'[0] is \"%s\": the devices of a "
                              "server are of one kind",
                              src, i, d->kind == PT_DEVICE_CUDA ? "cuda" : "cpu",
                              kind == PT_DEVICE_CUDA ? "cuda" : "cpu");
        pt_device_spec *sp = &p->devices[i];
        sp->kind = d->kind;
        sp->threads = d->kind == PT_DEVICE_CUDA ? 1 : d->threads >= 0 ? d->threads : threads;
        sp->ordinal = d->kind == PT_DEVICE_CPU ? 0 : d->ordinal >= 0 ? d->ordinal : n_cuda;
        sp->budget_bytes = d->memory_mb >= 0 ? (uint64_t)d->memory_mb << 20 : budget;
        n_cuda += d->kind == PT_DEVICE_CUDA;
        for (int j = 0; j < i && d->kind == PT_DEVICE_CUDA; j++)
            if (p->devices[j].ordinal == sp->ordinal)
                return pt_err_set(err, PT_ERR_INVALID,
                                  "%s'engine.devices'[%d] has CUDA ordinal %d, as 'engine.devices'[%d] does: one "
                                  "device per GPU",
                                  src, i, sp->ordinal, j);
    }
    return PT_OK;
}

/* The string forms split engine.threads among their CPU devices: each
 * needs one of its own (a listed device sets its threads itself). */
static int check_threads(const pt_server_config *c, const char *src, const pt_layout_plan *p, pt_err *err) {
    if (c->n_device_list || p->devices[0].kind != PT_DEVICE_CPU || p->n_devices <= c->threads) return PT_OK;
    if (c->layout.n == 0 && c->tp == p->n_devices)
        return pt_err_set(err, PT_ERR_INVALID,
                          "%s'engine.tp' (%d) must not exceed 'engine.threads' (%d): each rank needs a thread "
                          "(--tp, --threads)",
                          src, c->tp, c->threads);
    return pt_err_set(err, PT_ERR_INVALID,
                      "%sthe %d CPU devices of 'engine.devices' \"%s\" need at least %d threads, but "
                      "'engine.threads' is %d: each device needs a thread of its own (--threads, --devices, --layout)",
                      src, p->n_devices, c->devices, p->n_devices, c->threads);
}

/* scheduler.allowed_tp resolved into p->sched_tp: the listed degrees (each
 * a power of two, allowed by engine.allowed_tp and at most the device
 * count), or the powers of two of engine.allowed_tp up to the device count. A dynamic server's own layout
 * must be one the policy may form. */
static int plan_scheduler(const pt_server_config *c, const char *src, pt_layout_plan *p, pt_err *err) {
    char al[160], sl[160];
    fmt_list(al, sizeof(al), p->allowed_tp, p->n_allowed);
    fmt_list(sl, sizeof(sl), c->sched_allowed_tp.v, c->sched_allowed_tp.n);
    p->n_sched_tp = 0;
    bool listed = c->sched_allowed_tp.n > 0;
    int n = listed ? c->sched_allowed_tp.n : p->n_allowed;
    for (int i = 0; i < n; i++) {
        int d = listed ? c->sched_allowed_tp.v[i] : p->allowed_tp[i];
        if (!is_pow2(d)) {
            if (!listed) continue; /* instances may have it (an operator's POST), the scheduler never forms it */
            return pt_err_set(err, PT_ERR_INVALID,
                              "%s'scheduler.allowed_tp'[%d] = %d is not a power of two: the scheduler forms TP 1, 2, "
                              "4, ... (--scheduler-allowed-tp)",
                              src, i, d);
        }
        if (listed && !list_has(p->allowed_tp, p->n_allowed, d))
            return pt_err_set(err, PT_ERR_INVALID,
                              "%s'scheduler.allowed_tp'[%d] = %d is not in 'engine.allowed_tp' %s: the scheduler forms "
                              "only the groups the devices are prepared for (--scheduler-allowed-tp, --allowed-tp)",
                              src, i, d, al);
        if (d > p->n_devices) {
            if (!listed) continue; /* the fabric drops it too */
            return pt_err_set(err, PT_ERR_INVALID,
                              "%s'scheduler.allowed_tp'[%d] = %d needs %d devices but the server has %d "
                              "(--scheduler-allowed-tp, --devices)",
                              src, i, d, d, p->n_devices);
        }
        if (list_has(p->sched_tp, p->n_sched_tp, d)) continue;
        if (p->n_sched_tp == PT_CONFIG_MAX_SCHED_TP)
            return pt_err_set(err, PT_ERR_INVALID, "%s'engine.allowed_tp' %s has more than %d degrees up to the %d "
                              "devices: set 'scheduler.allowed_tp' (--scheduler-allowed-tp)",
                              src, al, PT_CONFIG_MAX_SCHED_TP, p->n_devices);
        int j = p->n_sched_tp++;
        for (; j > 0 && p->sched_tp[j - 1] > d; j--) p->sched_tp[j] = p->sched_tp[j - 1];
        p->sched_tp[j] = d;
    }
    if (c->policy != PT_POLICY_DYNAMIC || !p->layout_given) return PT_OK;
    fmt_list(sl, sizeof(sl), p->sched_tp, p->n_sched_tp);
    for (int i = 0; i < p->n_instances; i++)
        if (!list_has(p->sched_tp, p->n_sched_tp, p->tp[i]))
            return pt_err_set(err, PT_ERR_INVALID,
                              "%s'engine.layout'[%d] = %d is not in 'scheduler.allowed_tp' %s: a dynamic server starts "
                              "from a layout its policy may form (--layout, --scheduler-allowed-tp)",
                              src, i, p->tp[i], sl);
    return PT_OK;
}

static int plan_layout(const pt_server_config *c, const char *src, pt_layout_plan *out, pt_err *err) {
    pt_layout_plan p;
    memset(&p, 0, sizeof(p));
    pt_device_kind kind;
    int count;
    if (c->n_device_list) {
        kind = c->device_list[0].kind;
        count = c->n_device_list;
    } else if (!c->devices || !parse_devices_string(c->devices, &kind, &count)) {
        return pt_err_set(err, PT_ERR_INVALID, "%s'engine.devices' is not set", src); /* set directly, not parsed */
    }
    int rc = plan_instances(c, src, count, &p, err);
    if (!rc) rc = plan_allowed(c, src, &p, err);
    if (!rc) rc = plan_devices(c, src, kind, &p, err);
    if (!rc) rc = check_threads(c, src, &p, err);
    p.layout_given = c->layout.n > 0;
    if (!rc) rc = plan_scheduler(c, src, &p, err);
    if (!rc) *out = p;
    return rc;
}

int pt_config_finalize(pt_server_config *c, pt_err *err) {
    /* Cross-key messages begin with the file when there is one ("serve.json: "); the CLI puts its own name first. */
    char src[STR_MAX + 3] = "";
    if (c->config_path) snprintf(src, sizeof(src), "%s: ", c->config_path);
    if (c->prefill_chunk > c->max_batch_tokens)
        return pt_err_set(err, PT_ERR_INVALID,
                          "%s'scheduler.prefill_chunk' (%zu) must not exceed 'scheduler.max_batch_tokens' (%zu) "
                          "(--prefill-chunk, --max-batch-tokens)",
                          src, c->prefill_chunk, c->max_batch_tokens);
    int rc = plan_layout(c, src, &c->plan, err);
    if (rc) return rc;
    if (!c->api_key) {
        const char *env = getenv("PROTEUS_API_KEY");
        if (env && *env) c->api_key = pt_xstrdup(env);
    }
    if (!c->served_model_name) c->served_model_name = pt_config_derive_served_name(c->model);
    return PT_OK;
}

/* ---- dump and usage ----------------------------------------------------- */

static const char *enum_value_name(const cfg_key *k, int v) {
    for (size_t i = 0; k->names[i].name; i++)
        if (k->names[i].value == v) return k->names[i].name;
    return "?";
}

static cJSON *list_json(const pt_int_list *l) {
    if (l->n == 0) return cJSON_CreateNull();
    return cJSON_CreateIntArray(l->v, l->n);
}

/* engine.devices as it was given: the string, or the objects with the keys
 * that were set. */
static cJSON *devices_json(const pt_server_config *c) {
    if (c->n_device_list == 0) return cJSON_CreateString(c->devices ? c->devices : "cpu");
    cJSON *arr = cJSON_CreateArray();
    for (int i = 0; i < c->n_device_list; i++) {
        const pt_device_conf *d = &c->device_list[i];
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "kind", d->kind == PT_DEVICE_CUDA ? "cuda" : "cpu");
        if (d->threads >= 0) cJSON_AddNumberToObject(o, "threads", d->threads);
        if (d->ordinal >= 0) cJSON_AddNumberToObject(o, "ordinal", d->ordinal);
        if (d->memory_mb >= 0) cJSON_AddNumberToObject(o, "memory_mb", (double)d->memory_mb);
        cJSON_AddItemToArray(arr, o);
    }
    return arr;
}

char *pt_config_to_json(const pt_server_config *c, bool redact) {
    pt_server_config *cc = (pt_server_config *)c; /* read only: f_* take non-const */
    cJSON *root = cJSON_CreateObject();
    for (size_t s = 0; s < N_SECTIONS; s++) cJSON_AddItemToObject(root, SECTIONS[s], cJSON_CreateObject());
    for (size_t i = 0; i < N_KEYS; i++) {
        const cfg_key *k = &KEYS[i];
        /* "a.b.c": c in object b (made on first use) in section a. */
        cJSON *obj = root;
        const char *leaf = k->path;
        for (const char *dot; (dot = strchr(leaf, '.')) != NULL; leaf = dot + 1) {
            char group[32];
            snprintf(group, sizeof(group), "%.*s", (int)(dot - leaf), leaf);
            cJSON *next = cJSON_GetObjectItemCaseSensitive(obj, group);
            if (!next) next = cJSON_AddObjectToObject(obj, group);
            obj = next;
        }
        cJSON *v = NULL;
        switch (k->type) {
        case KT_INT: v = cJSON_CreateNumber(*f_int(cc, k)); break;
        case KT_SIZE: v = cJSON_CreateNumber((double)*f_size(cc, k)); break;
        case KT_NUM: v = cJSON_CreateNumber(*f_num(cc, k)); break;
        case KT_BOOL: v = cJSON_CreateBool(*f_bool(cc, k)); break;
        case KT_ENUM: v = cJSON_CreateString(enum_value_name(k, *f_int(cc, k))); break;
        case KT_INTLIST: v = list_json(f_list(cc, k)); break;
        case KT_DEVICES: v = devices_json(c); break;
        case KT_STR: {
            const char *s = *f_str(cc, k);
            if (s && redact && k->off == OFF(api_key)) s = "<redacted>";
            v = s ? cJSON_CreateString(s) : cJSON_CreateNull();
            break;
        }
        }
        cJSON_AddItemToObject(obj, leaf, v);
    }
    char *out = cJSON_Print(root);
    cJSON_Delete(root);
    return out;
}

static void fmt_default(const pt_server_config *d, const cfg_key *k, char *out, size_t n) {
    pt_server_config *dd = (pt_server_config *)d;
    if (k->dflt) {
        snprintf(out, n, "%s", k->dflt);
        return;
    }
    switch (k->type) {
    case KT_INT: snprintf(out, n, "%d", *f_int(dd, k)); break;
    case KT_SIZE: snprintf(out, n, "%zu", *f_size(dd, k)); break;
    case KT_NUM: snprintf(out, n, "%g", *f_num(dd, k)); break;
    case KT_BOOL: snprintf(out, n, "%s", *f_bool(dd, k) ? "true" : "false"); break;
    case KT_ENUM: snprintf(out, n, "%s", enum_value_name(k, *f_int(dd, k))); break;
    case KT_STR:
    case KT_DEVICES: snprintf(out, n, "%s", *f_str(dd, k) ? *f_str(dd, k) : "null"); break;
    case KT_INTLIST: snprintf(out, n, "null"); break;
    }
}

void pt_config_usage(FILE *f) {
    pt_server_config d;
    pt_server_config_default(&d);
    fputs("usage: proteus serve [--config FILE] [options]\n"
          "\n"
          "Settings come from defaults, then the JSON file given by --config, then the\n"
          "options below (an option wins over the file wherever it appears). Each option\n"
          "sets the file key shown after it. Options take \"--name VALUE\" or \"--name=VALUE\";\n"
          "a bare --auth-health-metrics means true.\n"
          "\n"
          "  --config FILE                JSON configuration file (see README.md, Configuration)\n",
          f);
    for (size_t i = 0; i < N_KEYS; i++) {
        const cfg_key *k = &KEYS[i];
        char flag[48], def[64];
        const char *meta = k->type == KT_BOOL                                               ? ""
                           : k->type == KT_INTLIST                                          ? " N,N,..."
                           : k->type == KT_STR || k->type == KT_ENUM || k->type == KT_DEVICES ? " S"
                                                                                              : " N";
        if (k->sflag) snprintf(flag, sizeof(flag), "%s, %s%s", k->sflag, k->flag, meta);
        else snprintf(flag, sizeof(flag), "%s%s", k->flag, meta);
        fmt_default(&d, k, def, sizeof(def));
        fprintf(f, "  %-28s %s\n  %-28s [%s; default %s]\n", flag, k->help, "", k->path, def);
    }
    fputs("  -h, --help                   this text\n"
          "\n"
          "environment: PROTEUS_API_KEY is the API key when neither the file nor --api-key sets one.\n"
          "exit codes: 0 ok, 1 start-up failure (model, port), 2 usage or configuration error\n",
          f);
    pt_server_config_free(&d);
}
