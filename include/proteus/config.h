/* Configuration of `proteus serve`: one JSON file and command-line flags that
 * override it, validated before anything starts.
 *
 * Order of precedence, lowest first: built-in defaults, the file named by
 * --config, the other flags (in command-line order), then the environment
 * (PROTEUS_API_KEY, only when nothing else set an API key) and derived values
 * (served model name), applied by pt_config_finalize.
 *
 *   pt_server_config c;
 *   pt_server_config_default(&c);
 *   int rc = pt_config_apply_flags(&c, argc, argv, &err); // loads --config first
 *   if (rc == PT_CONFIG_HELP) { pt_config_usage(stdout); ... exit 0 }
 *   if (rc == PT_OK) rc = pt_config_finalize(&c, &err);
 *   if (rc < 0) { fprintf(stderr, "proteus serve: %s\n", err.msg); ... exit 2 }
 *
 * The file groups keys in sections; every key, its type, default and range is
 * in README.md ("Configuration"). Unknown keys, duplicate keys, wrong types
 * and out-of-range values are errors whose message begins with the file path
 * (or the flag) and names the key path, e.g.
 *   "serve.json: unknown key 'engine.thread' (did you mean 'engine.threads'?)".
 * A call that fails leaves *c as it was. Nothing here exits or prints. */
#ifndef PROTEUS_CONFIG_H
#define PROTEUS_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "proteus/device.h"
#include "proteus/dtype.h"
#include "proteus/fabric.h"
#include "proteus/util.h"

/* pt_config_apply_flags saw -h/--help: the caller prints pt_config_usage. */
#define PT_CONFIG_HELP 1

/* Most TP degrees engine.allowed_tp may list (what a fabric accepts). */
#define PT_CONFIG_MAX_ALLOWED_TP 16

/* scheduler.policy (DESIGN.md section 7): the configured layout never
 * changes, or the scheduler merges and splits instances by itself. The
 * values are pt_sched_policy's (scheduler/scheduler.h), which the server
 * passes on; config does not depend on the scheduler. */
typedef enum { PT_POLICY_STATIC = 0, PT_POLICY_DYNAMIC = 1 } pt_policy_conf;

/* Most degrees scheduler.allowed_tp may list (what pt_sched_opts holds). */
#define PT_CONFIG_MAX_SCHED_TP 8

/* A list of small integers (engine.layout, engine.allowed_tp); n == 0 = not
 * set, the default is derived by pt_config_finalize. */
typedef struct {
    int n;
    int v[PT_FABRIC_MAX_DEVICES];
} pt_int_list;

/* One entry of engine.devices given as an object; -1 = the key was absent
 * and the default applies. */
typedef struct {
    pt_device_kind kind;
    int threads;         /* CPU worker threads; -1: engine.threads shared among the CPU devices */
    int ordinal;         /* CUDA ordinal; -1: the device's place among the CUDA devices listed */
    long long memory_mb; /* budget, MiB, 0 = no limit; -1: engine.device_memory_mb */
} pt_device_conf;

/* The devices and the instances over them, resolved by pt_config_finalize
 * from engine.devices, engine.layout, engine.allowed_tp, engine.tp,
 * engine.threads, engine.cuda_device and engine.device_memory_mb: what
 * pt_fabric_create and pt_engine_create_on take. */
typedef struct {
    pt_device_spec devices[PT_FABRIC_MAX_DEVICES];
    int n_devices;                          /* 0 until finalized */
    int tp[PT_FABRIC_MAX_DEVICES];          /* TP degree of each instance, in device order */
    int first[PT_FABRIC_MAX_DEVICES];       /* its first device */
    int n_instances;
    int allowed_tp[PT_CONFIG_MAX_ALLOWED_TP];
    int n_allowed;
    bool layout_given;                      /* engine.layout was set (a dynamic server starts from it) */
    int sched_tp[PT_CONFIG_MAX_SCHED_TP];   /* scheduler.allowed_tp resolved: ascending powers of two,
                                               each allowed and at most n_devices */
    int n_sched_tp;
} pt_layout_plan;

typedef struct {
    /* server */
    char *host;               /* listen address, "127.0.0.1" */
    int port;                 /* 8000, in [1, 65535] */
    char *api_key;            /* NULL = no authentication; else "Authorization: Bearer <key>" */
    bool auth_health_metrics; /* false: /health and /metrics answer without the key */
    /* model */
    char *model;              /* "default", a .gguf / .safetensors path, an HF directory, or "synthetic:<shape>" */
    char *served_model_name;  /* the id in /v1/models; NULL until finalize derives it from `model` */
    char *chat_template;      /* NULL = detected from the model; "chatml", "llama3", "llama2", "mistral" */
    size_t max_model_len;     /* tokens per sequence (prompt + output); 0 = the model's context length */
    /* engine */
    int threads;              /* worker threads over all ranks; default: the cores this process may use */
    int tp;                   /* TP degree of the instances when engine.layout is not set, 1 */
    char *devices;            /* "cpu", "cpu:N", "cuda", "cuda:N"; NULL when device_list is set */
    pt_device_conf device_list[PT_FABRIC_MAX_DEVICES]; /* engine.devices as a list of objects */
    int n_device_list;        /* 0: the string form applies */
    size_t device_memory_mb;  /* budget of each device of the string forms, MiB; 0 = no limit */
    pt_int_list layout;       /* TP degree of each instance in device order; unset = engine.tp repeated */
    pt_int_list allowed_tp;   /* TP degrees instances may have; unset = 1 and the layout's */
    int cuda_device;          /* CUDA device ordinal when devices is "cuda", 0 */
    bool cuda_graphs;         /* CUDA: replay decode steps as CUDA graphs, true */
    size_t page_size;         /* tokens per KV page, a power of two in [1, 256], 16 */
    pt_dtype kv_dtype;        /* PT_DTYPE_F32 or PT_DTYPE_F16 */
    size_t kv_memory_mb;      /* KV cache budget per rank, MiB; 0 (default) = CPU 1024, CUDA 90% of what is left */
    bool prefix_caching;      /* reuse cached KV pages of shared prompt prefixes, true */
    size_t select_budget;     /* query-aware page selection: decode attends to this many tokens' pages; 0 = off */
    size_t select_dense_layers; /* layers below this stay dense, 2 */
    /* scheduler */
    int max_running;          /* sequences decoded concurrently, 32 */
    size_t max_batch_tokens;  /* tokens per engine step (prefill + decode), 512 */
    size_t prefill_chunk;     /* prompt tokens of one sequence per step, 256; <= max_batch_tokens */
    int max_waiting;          /* queued requests beyond which new ones get 429, 256 */
    double request_timeout_s; /* whole-request deadline; 0 = none */
    double shutdown_grace_s;  /* on SIGTERM, time running requests get to finish, 30 */
    int policy;               /* pt_policy_conf: PT_POLICY_STATIC (default) or PT_POLICY_DYNAMIC */
    double slo_ttft_ms;       /* time to first token the scheduler aims for, ms; 0 = none */
    double slo_tpot_ms;       /* time per output token, ms; 0 = none */
    pt_int_list sched_allowed_tp; /* degrees the dynamic policy may form; unset = engine.allowed_tp
                                     (up to the device count) */
    double hysteresis_s;      /* a merged instance splits after nothing needed it this long, 30 */
    char *cost_file;          /* the cost model from this file (pt_cost_load); NULL = calibrate at start-up */
    char *save_cost;          /* NULL, or where to write the cost model in use at start-up (pt_cost_save) */
    double calibration_s;     /* seconds of timed steps per TP degree at start-up, 1; longer times more shapes */
    /* http */
    size_t max_body_bytes;    /* request body limit, 8 MiB (413 beyond) */
    size_t max_header_bytes;  /* request line + headers limit, 16 KiB (431 beyond) */
    double idle_timeout_s;    /* close a keep-alive connection idle this long; 0 = never, 60 */
    /* logging */
    pt_log_level log_level;   /* PT_LOG_INFO */

    char *config_path;        /* the file loaded last, or NULL: prefixes cross-key messages */
    pt_layout_plan plan;      /* derived by pt_config_finalize */
} pt_server_config;

/* Fills *c with the defaults above (allocates its strings). */
void pt_server_config_default(pt_server_config *c);
void pt_server_config_free(pt_server_config *c);
/* Deep copy into *dst (which is overwritten, not freed). */
void pt_server_config_copy(pt_server_config *dst, const pt_server_config *src);

/* Applies the JSON file at `path` over the current values of *c: keys absent
 * from the file keep their values. Fails (PT_ERR_IO, PT_ERR_FORMAT) on a
 * missing or unreadable file, an empty one, malformed JSON (byte offset, line
 * and column), a top level that is not an object, unknown or duplicate keys,
 * and bad values. */
int pt_config_load_file(pt_server_config *c, const char *path, pt_err *err);

/* Parses `proteus serve` flags. argv[0] is the sub-command name and is
 * skipped, as in main(). --config FILE (or --config=FILE) is loaded first
 * wherever it appears, then the other flags are applied in order, so
 * `serve --port 9000 --config f.json` takes the port from the flag. Flags
 * take "--flag VALUE" or "--flag=VALUE". Returns PT_CONFIG_HELP (and changes
 * nothing) when -h or --help is present, PT_OK, or a negative error whose
 * message names the flag. */
int pt_config_apply_flags(pt_server_config *c, int argc, char **argv, pt_err *err);

/* Last step: PROTEUS_API_KEY when no API key was set, the served model name
 * when none was set, the checks that involve several keys
 * (prefill_chunk <= max_batch_tokens, threads enough for the CPU devices,
 * scheduler.allowed_tp within engine.allowed_tp and the devices, a dynamic
 * server's layout within scheduler.allowed_tp) and
 * c->plan: the devices and instances, refused when the layout does not cover
 * the devices, names a TP degree that is not allowed, or places an instance
 * of TP d at a device index that is not a multiple of d; an allowed degree
 * must divide the number of devices. What needs the model (a degree above
 * its KV heads, a budget too small for a shard) is checked when the engines
 * are built. */
int pt_config_finalize(pt_server_config *c, pt_err *err);

/* The served name a model spec gets by default: "default" ->
 * "SmolLM2-135M-Instruct"; ".../SmolLM2-135M-Instruct.Q4_1.gguf" ->
 * "SmolLM2-135M-Instruct" (extension and quantization tag dropped); an HF
 * directory or its model*.safetensors -> the directory's name;
 * "synthetic:<shape>" -> itself. Returns a malloc'd string. */
char *pt_config_derive_served_name(const char *model);

/* The effective configuration as JSON, in the file's layout (malloc'd; free
 * with free). With redact, a set api_key is written as "<redacted>". */
char *pt_config_to_json(const pt_server_config *c, bool redact);

/* The --help text of `proteus serve`: every flag, its key and default. */
void pt_config_usage(FILE *f);

#endif
