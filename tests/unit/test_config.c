/* `proteus serve` configuration: defaults, a full file, file < flag < (env
 * only when unset), derived served names, cross-key checks, and a table of
 * bad files and flags, each with the words its message must contain. */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "proteus/config.h"
#include "test.h"

static char tmpdir[64];

/* Writes `text` (len bytes, or strlen when len is 0) to tmpdir/name; returns
 * the path in static storage that the next call reuses. */
static const char *write_file(const char *name, const char *text, size_t len) {
    static char path[128];
    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "wb");
    if (!f) {
        perror(path);
        exit(1);
    }
    fwrite(text, 1, len ? len : strlen(text), f);
    fclose(f);
    return path;
}

/* Splits "a b c" on spaces into argv (argv[0] = "serve"); static storage. */
static int split_args(const char *line, char **argv, int max) {
    static char buf[1024];
    snprintf(buf, sizeof(buf), "%s", line);
    int argc = 0;
    argv[argc++] = "serve";
    for (char *save, *t = strtok_r(buf, " ", &save); t && argc < max; t = strtok_r(NULL, " ", &save)) argv[argc++] = t;
    return argc;
}

static bool contains(const char *s, const char *sub) { return s && strstr(s, sub) != NULL; }

static void test_defaults(void) {
    pt_server_config c;
    pt_server_config_default(&c);
    CHECK(!strcmp(c.host, "127.0.0.1"));
    CHECK_EQ_INT(c.port, 8000);
    CHECK(c.api_key == NULL);
    CHECK(!c.auth_health_metrics);
    CHECK(!strcmp(c.model, "default"));
    CHECK(c.served_model_name == NULL);
    CHECK(c.chat_template == NULL);
    CHECK_EQ_INT(c.max_model_len, 0);
    CHECK(c.threads >= 1);
    CHECK(c.threads <= sysconf(_SC_NPROCESSORS_CONF)); /* the cores this process may use */
    CHECK_EQ_INT(c.tp, 1);
    CHECK(!strcmp(c.devices, "cpu"));
    CHECK_EQ_INT(c.n_device_list, 0);
    CHECK_EQ_INT(c.device_memory_mb, 0);
    CHECK_EQ_INT(c.layout.n, 0);     /* derived by finalize */
    CHECK_EQ_INT(c.allowed_tp.n, 0); /* derived by finalize */
    CHECK_EQ_INT(c.plan.n_devices, 0);
    CHECK_EQ_INT(c.page_size, 16);
    CHECK_EQ_INT(c.kv_dtype, PT_DTYPE_F16);
    CHECK_EQ_INT(c.kv_memory_mb, 0);
    CHECK_EQ_INT(c.max_running, 32);
    CHECK_EQ_INT(c.max_batch_tokens, 512);
    CHECK_EQ_INT(c.prefill_chunk, 256);
    CHECK_EQ_INT(c.max_waiting, 256);
    CHECK(c.request_timeout_s == 0);
    CHECK(c.shutdown_grace_s == 30);
    CHECK_EQ_INT(c.policy, PT_POLICY_STATIC);
    CHECK(c.slo_ttft_ms == 0 && c.slo_tpot_ms == 0);
    CHECK_EQ_INT(c.sched_allowed_tp.n, 0); /* derived by finalize */
    CHECK(c.hysteresis_s == 30);
    CHECK(c.calibration_s == 1);
    CHECK(c.cost_file == NULL && c.save_cost == NULL);
    CHECK_EQ_INT(c.max_body_bytes, 8 << 20);
    CHECK_EQ_INT(c.max_header_bytes, 16 << 10);
    CHECK(c.idle_timeout_s == 60);
    CHECK_EQ_INT(c.log_level, PT_LOG_INFO);
    CHECK(c.config_path == NULL);
    pt_server_config_free(&c);
}

/* Every key set to a value other than its default. */
static const char *FULL =
    "{\n"
    "  \"server\": {\"host\": \"0.0.0.0\", \"port\": 9123, \"api_key\": \"sk-file\", \"auth_health_metrics\": true},\n"
    "  \"model\": {\"path\": \"/models/Llama-3-8B-Instruct-Q4_K_M.gguf\", \"served_name\": \"llama\",\n"
    "            \"chat_template\": \"llama3\", \"max_model_len\": 4096},\n"
    "  \"engine\": {\"threads\": 6, \"tp\": 2, \"devices\": \"cpu\", \"page_size\": 32, \"kv_dtype\": \"f16\",\n"
    "             \"kv_memory_mb\": 2048, \"device_memory_mb\": 512, \"layout\": [2, 2], \"allowed_tp\": [1, 2, 4]},\n"
    "  \"scheduler\": {\"max_running\": 64, \"max_batch_tokens\": 1024, \"prefill_chunk\": 128, \"max_waiting\": 10,\n"
    "                \"request_timeout_s\": 120.5, \"shutdown_grace_s\": 5, \"policy\": \"dynamic\",\n"
    "                \"slo\": {\"ttft_ms\": 250, \"tpot_ms\": 40.5}, \"allowed_tp\": [1, 2], \"hysteresis_s\": 7.5,\n"
    "                \"cost_file\": \"/tmp/cost.json\", \"save_cost\": \"/tmp/saved.json\", \"calibration_s\": 20},\n"
    "  \"http\": {\"max_body_bytes\": 1048576, \"max_header_bytes\": 8192, \"idle_timeout_s\": 0},\n"
    "  \"log_level\": \"debug\"\n"
    "}\n";

static void check_full(const pt_server_config *c) {
    CHECK(!strcmp(c->host, "0.0.0.0"));
    CHECK_EQ_INT(c->port, 9123);
    CHECK(c->api_key && !strcmp(c->api_key, "sk-file"));
    CHECK(c->auth_health_metrics);
    CHECK(!strcmp(c->model, "/models/Llama-3-8B-Instruct-Q4_K_M.gguf"));
    CHECK(c->served_model_name && !strcmp(c->served_model_name, "llama"));
    CHECK(c->chat_template && !strcmp(c->chat_template, "llama3"));
    CHECK_EQ_INT(c->max_model_len, 4096);
    CHECK_EQ_INT(c->threads, 6);
    CHECK_EQ_INT(c->tp, 2);
    CHECK(!strcmp(c->devices, "cpu"));
    CHECK_EQ_INT(c->page_size, 32);
    CHECK_EQ_INT(c->kv_dtype, PT_DTYPE_F16);
    CHECK_EQ_INT(c->kv_memory_mb, 2048);
    CHECK_EQ_INT(c->device_memory_mb, 512);
    CHECK_EQ_INT(c->layout.n, 2);
    CHECK(c->layout.v[0] == 2 && c->layout.v[1] == 2);
    CHECK_EQ_INT(c->allowed_tp.n, 3);
    CHECK(c->allowed_tp.v[0] == 1 && c->allowed_tp.v[1] == 2 && c->allowed_tp.v[2] == 4);
    CHECK_EQ_INT(c->max_running, 64);
    CHECK_EQ_INT(c->max_batch_tokens, 1024);
    CHECK_EQ_INT(c->prefill_chunk, 128);
    CHECK_EQ_INT(c->max_waiting, 10);
    CHECK(c->request_timeout_s == 120.5);
    CHECK(c->shutdown_grace_s == 5);
    CHECK_EQ_INT(c->policy, PT_POLICY_DYNAMIC);
    CHECK(c->slo_ttft_ms == 250 && c->slo_tpot_ms == 40.5);
    CHECK(c->sched_allowed_tp.n == 2 && c->sched_allowed_tp.v[0] == 1 && c->sched_allowed_tp.v[1] == 2);
    CHECK(c->hysteresis_s == 7.5);
    CHECK(c->cost_file && !strcmp(c->cost_file, "/tmp/cost.json"));
    CHECK(c->save_cost && !strcmp(c->save_cost, "/tmp/saved.json"));
    CHECK(c->calibration_s == 20);
    CHECK_EQ_INT(c->max_body_bytes, 1048576);
    CHECK_EQ_INT(c->max_header_bytes, 8192);
    CHECK(c->idle_timeout_s == 0);
    CHECK_EQ_INT(c->log_level, PT_LOG_DEBUG);
}

static void test_full_file(void) {
    pt_server_config c;
    pt_err err = {{0}};
    pt_server_config_default(&c);
    const char *path = write_file("full.json", FULL, 0);
    int rc = pt_config_load_file(&c, path, &err);
    CHECK_MSG(rc == PT_OK, "%s", err.msg);
    check_full(&c);
    CHECK(c.config_path && !strcmp(c.config_path, path));
    CHECK(pt_config_finalize(&c, &err) == PT_OK);
    CHECK(!strcmp(c.served_model_name, "llama")); /* set in the file: not derived */
    /* "cpu" with layout [2, 2]: four CPU devices, 6 threads shared (1 each), 512 MiB each. */
    CHECK_EQ_INT(c.plan.n_devices, 4);
    CHECK_EQ_INT(c.plan.n_instances, 2);
    CHECK(c.plan.first[1] == 2 && c.plan.tp[1] == 2);
    CHECK(c.plan.devices[3].kind == PT_DEVICE_CPU && c.plan.devices[3].threads == 1);
    CHECK(c.plan.devices[3].budget_bytes == 512ull << 20);
    CHECK_EQ_INT(c.plan.n_allowed, 3);
    CHECK_EQ_INT(c.plan.n_sched_tp, 2); /* scheduler.allowed_tp [1, 2] */
    CHECK(c.plan.layout_given);
    pt_server_config_free(&c);
}

/* A file that sets a few keys leaves the others as they were. */
static void test_partial_file_keeps_rest(void) {
    pt_server_config c;
    pt_err err = {{0}};
    pt_server_config_default(&c);
    c.max_running = 7; /* as if set by an earlier layer */
    const char *path = write_file("partial.json", "{\"engine\": {\"page_size\": 64}, \"server\": {}}", 0);
    CHECK_MSG(pt_config_load_file(&c, path, &err) == PT_OK, "%s", err.msg);
    CHECK_EQ_INT(c.page_size, 64);
    CHECK_EQ_INT(c.max_running, 7);
    CHECK_EQ_INT(c.port, 8000);
    pt_server_config_free(&c);
}

/* Dumping the full configuration and loading the dump gives it back. */
static void test_dump_round_trip(void) {
    pt_server_config a, b;
    pt_err err = {{0}};
    pt_server_config_default(&a);
    CHECK(pt_config_load_file(&a, write_file("full.json", FULL, 0), &err) == PT_OK);
    char *json = pt_config_to_json(&a, false);
    pt_server_config_default(&b);
    CHECK_MSG(pt_config_load_file(&b, write_file("dump.json", json, 0), &err) == PT_OK, "%s", err.msg);
    check_full(&b);
    char *red = pt_config_to_json(&a, true);
    CHECK(!contains(red, "sk-file") && contains(red, "<redacted>"));
    free(json);
    free(red);
    pt_server_config_free(&a);
    pt_server_config_free(&b);
}

static void test_flags_over_file(void) {
    pt_server_config c;
    pt_err err = {{0}};
    write_file("prec.json", "{\"server\": {\"port\": 9001, \"host\": \"10.0.0.1\"}, \"engine\": {\"threads\": 3}}", 0);
    char line[256], *argv[32];
    /* The flag comes before --config and still wins. */
    snprintf(line, sizeof(line), "--port 9000 --config %s/prec.json -m synthetic:tiny-llama --kv-dtype=f16", tmpdir);
    int argc = split_args(line, argv, 32);
    pt_server_config_default(&c);
    int rc = pt_config_apply_flags(&c, argc, argv, &err);
    CHECK_MSG(rc == PT_OK, "%s", err.msg);
    CHECK_EQ_INT(c.port, 9000);                  /* flag */
    CHECK(!strcmp(c.host, "10.0.0.1"));          /* file */
    CHECK_EQ_INT(c.threads, 3);                  /* file */
    CHECK(!strcmp(c.model, "synthetic:tiny-llama")); /* flag */
    CHECK_EQ_INT(c.kv_dtype, PT_DTYPE_F16);      /* --flag=value */
    CHECK_EQ_INT(c.page_size, 16);               /* default */
    CHECK(pt_config_finalize(&c, &err) == PT_OK);
    CHECK(!strcmp(c.served_model_name, "synthetic:tiny-llama"));
    pt_server_config_free(&c);

    /* Repeated flags: the last one wins; a bare boolean flag means true. */
    argc = split_args("--port 1 --port 2 -t 2 --threads 5 --auth-health-metrics", argv, 32);
    pt_server_config_default(&c);
    CHECK_MSG(pt_config_apply_flags(&c, argc, argv, &err) == PT_OK, "%s", err.msg);
    CHECK_EQ_INT(c.port, 2);
    CHECK_EQ_INT(c.threads, 5);
    CHECK(c.auth_health_metrics);
    argc = split_args("--auth-health-metrics=false", argv, 32);
    CHECK(pt_config_apply_flags(&c, argc, argv, &err) == PT_OK);
    CHECK(!c.auth_health_metrics);
    pt_server_config_free(&c);
}

static void test_help(void) {
    pt_server_config c;
    pt_err err = {{0}};
    char *argv[8];
    int argc = split_args("--port 80a --help", argv, 8);
    pt_server_config_default(&c);
    CHECK_EQ_INT(pt_config_apply_flags(&c, argc, argv, &err), PT_CONFIG_HELP);
    CHECK_EQ_INT(c.port, 8000);
    pt_server_config_free(&c);

    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    pt_config_usage(f);
    fclose(f);
    static const char *flags[] = {"--config", "--host", "--port", "-m, --model", "--served-model-name",
                                  "--chat-template", "--api-key", "-t, --threads", "--tp", "--page-size",
                                  "--kv-dtype", "--kv-memory-mb", "--max-model-len", "--max-running",
                                  "--devices S", "--layout N,N,...", "--allowed-tp N,N,...", "--device-memory-mb",
                                  "--max-batch-tokens", "--max-waiting", "--log-level", "--policy S",
                                  "--slo-ttft-ms N", "--slo-tpot-ms N", "--scheduler-allowed-tp N,N,...",
                                  "--hysteresis N", "--cost-file S", "--save-cost S", "--calibration-s N",
                                  "--help"};
    for (size_t i = 0; i < sizeof(flags) / sizeof(flags[0]); i++)
        CHECK_MSG(contains(text, flags[i]), "usage lacks %s", flags[i]);
    CHECK(contains(text, "default 8000"));
    free(text);
}

static void test_env_api_key(void) {
    pt_server_config c;
    pt_err err = {{0}};
    char *argv[8];
    setenv("PROTEUS_API_KEY", "sk-env", 1);

    pt_server_config_default(&c); /* nothing set: the environment's */
    CHECK(pt_config_finalize(&c, &err) == PT_OK);
    CHECK(c.api_key && !strcmp(c.api_key, "sk-env"));
    pt_server_config_free(&c);

    pt_server_config_default(&c); /* the file's wins */
    CHECK(pt_config_load_file(&c, write_file("key.json", "{\"server\": {\"api_key\": \"sk-file\"}}", 0), &err) == 0);
    CHECK(pt_config_finalize(&c, &err) == PT_OK);
    CHECK(c.api_key && !strcmp(c.api_key, "sk-file"));
    pt_server_config_free(&c);

    pt_server_config_default(&c); /* the flag's wins */
    int argc = split_args("--api-key sk-flag", argv, 8);
    CHECK(pt_config_apply_flags(&c, argc, argv, &err) == PT_OK);
    CHECK(pt_config_finalize(&c, &err) == PT_OK);
    CHECK(c.api_key && !strcmp(c.api_key, "sk-flag"));
    pt_server_config_free(&c);

    setenv("PROTEUS_API_KEY", "", 1); /* empty: no authentication */
    pt_server_config_default(&c);
    CHECK(pt_config_finalize(&c, &err) == PT_OK);
    CHECK(c.api_key == NULL);
    pt_server_config_free(&c);
    unsetenv("PROTEUS_API_KEY");
    pt_server_config_default(&c);
    CHECK(pt_config_finalize(&c, &err) == PT_OK);
    CHECK(c.api_key == NULL);
    pt_server_config_free(&c);
}

static void test_served_name(void) {
    static const struct {
        const char *model, *name;
    } cases[] = {
        {"default", "SmolLM2-135M-Instruct"},
        {"/home/u/.cache/proteus/models/SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2-135M-Instruct"},
        {"Llama-3-8B-Instruct-Q4_K_M.gguf", "Llama-3-8B-Instruct"},
        {"qwen2-0.5b.IQ3_XXS.GGUF", "qwen2-0.5b"},
        {"phi-2.f16.gguf", "phi-2"},
        {"tinyllama-1.1b.gguf", "tinyllama-1.1b"}, /* no tag: "1b" is not one */
        {"/m/Qwen2.5-0.5B-Instruct/", "Qwen2.5-0.5B-Instruct"},
        {"/m/Qwen2.5-0.5B-Instruct/model.safetensors", "Qwen2.5-0.5B-Instruct"},
        {"/m/Llama/model-00001-of-00004.safetensors", "Llama"},
        {"/m/weights.safetensors", "weights"},
        {"synthetic:tiny-qwen2", "synthetic:tiny-qwen2"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *n = pt_config_derive_served_name(cases[i].model);
        CHECK_MSG(!strcmp(n, cases[i].name), "%s -> %s, want %s", cases[i].model, n, cases[i].name);
        free(n);
    }
}

static void test_finalize_cross_checks(void) {
    pt_server_config c;
    pt_err err = {{0}};
    char *argv[16];
    int argc = split_args("--prefill-chunk 1024 --max-batch-tokens 512", argv, 16);
    pt_server_config_default(&c);
    CHECK(pt_config_apply_flags(&c, argc, argv, &err) == PT_OK);
    CHECK(pt_config_finalize(&c, &err) < 0);
    CHECK_MSG(contains(err.msg, "'scheduler.prefill_chunk' (1024) must not exceed 'scheduler.max_batch_tokens' (512)"),
              "%s", err.msg);
    pt_server_config_free(&c);

    argc = split_args("--tp 4 --threads 2", argv, 16);
    pt_server_config_default(&c);
    CHECK(pt_config_apply_flags(&c, argc, argv, &err) == PT_OK);
    CHECK(pt_config_finalize(&c, &err) < 0);
    CHECK_MSG(contains(err.msg, "'engine.tp' (4) must not exceed 'engine.threads' (2)"), "%s", err.msg);
    pt_server_config_free(&c);
}

/* Loads `file` (a JSON body, or NULL) and applies `flags`, then finalizes. */
static int load_and_finalize(pt_server_config *c, const char *file, const char *flags, pt_err *err) {
    char line[512], *argv[32];
    if (file) snprintf(line, sizeof(line), "--config %s %s", write_file("layout.json", file, 0), flags);
    else snprintf(line, sizeof(line), "%s", flags);
    int rc = pt_config_apply_flags(c, split_args(line, argv, 32), argv, err);
    return rc ? rc : pt_config_finalize(c, err);
}

/* The plan in short: each device as c<threads> (CPU) or g<ordinal> (CUDA),
 * "@<MiB>" when it has a budget; then the instances' TP degrees and the
 * allowed degrees: "c1 c1 c2@64 | 1,1,2 | 1,2". */
static void plan_summary(const pt_layout_plan *p, char *out, size_t n) {
    size_t len = 0;
#define PUT(...) len += (size_t)snprintf(out + len, len < n ? n - len : 0, __VA_ARGS__)
    for (int i = 0; i < p->n_devices; i++) {
        const pt_device_spec *d = &p->devices[i];
        if (d->kind == PT_DEVICE_CPU) PUT("%sc%d", i ? " " : "", d->threads);
        else PUT("%sg%d", i ? " " : "", d->ordinal);
        if (d->budget_bytes) PUT("@%llu", (unsigned long long)(d->budget_bytes >> 20));
    }
    PUT(" |");
    for (int i = 0; i < p->n_instances; i++) PUT("%s%d", i ? "," : " ", p->tp[i]);
    PUT(" |");
    for (int i = 0; i < p->n_allowed; i++) PUT("%s%d", i ? "," : " ", p->allowed_tp[i]);
#undef PUT
}

/* Devices, layout and allowed degrees that finalize accepts, and the plan
 * each gives; also the instances' first devices. */
static void test_layout_plans(void) {
    static const struct {
        const char *file, *flags, *want;
    } OK[] = {
        {NULL, "-t 4", "c4 | 1 | 1"},
        {NULL, "-t 4 --tp 2", "c2 c2 | 2 | 1,2"}, /* the old --tp: one TP2 instance over two CPU devices */
        {NULL, "-t 4 --devices cpu:4", "c1 c1 c1 c1 | 1,1,1,1 | 1"},
        {NULL, "-t 8 --devices cpu:4 --tp 2", "c2 c2 c2 c2 | 2,2 | 1,2"},
        {NULL, "-t 4 --devices cpu:4 --layout 1,1,2", "c1 c1 c1 c1 | 1,1,2 | 1,2"},
        {NULL, "-t 4 --layout 2,1,1", "c1 c1 c1 c1 | 2,1,1 | 1,2"},
        {NULL, "-t 5 --devices cpu:2 --layout 2 --allowed-tp 2", "c2 c2 | 2 | 2"},
        {NULL, "-t 4 --devices cpu:4 --layout 4 --allowed-tp 1,2,4 --device-memory-mb 100",
         "c1@100 c1@100 c1@100 c1@100 | 4 | 1,2,4"},
        {NULL, "-t 4 --devices cpu:4 --allowed-tp 1,8", "c1 c1 c1 c1 | 1,1,1,1 | 1,8"}, /* 8 > 4 devices: unused */
        {NULL, "--devices cuda --cuda-device 3", "g3 | 1 | 1"},
        {NULL, "--devices cuda:2 --device-memory-mb 1000", "g0@1000 g1@1000 | 1,1 | 1"},
        {"{\"engine\": {\"threads\": 4, \"device_memory_mb\": 64, \"devices\": [{\"kind\": \"cpu\", \"threads\": 3, "
         "\"memory_mb\": 2048}, {\"kind\": \"cpu\"}]}}",
         "", "c3@2048 c2@64 | 1,1 | 1"},
        /* A listed device sets its own threads: one thread in all is no limit. */
        {"{\"engine\": {\"devices\": [{\"kind\": \"cpu\", \"threads\": 1}, {\"kind\": \"cpu\", \"threads\": 1}], "
         "\"layout\": [2]}}",
         "-t 1", "c1 c1 | 2 | 1,2"},
        {"{\"engine\": {\"devices\": [{\"kind\": \"cuda\", \"ordinal\": 2}, "
         "{\"kind\": \"cuda\", \"ordinal\": 0}]}}",
         "",
         "g2 g0 | 1,1 | 1"},
        {"{\"engine\": {\"devices\": [{\"kind\": \"cuda\"}, {\"kind\": \"cuda\"}]}}", "", "g0 g1 | 1,1 | 1"},
        /* The flag replaces the file's list. */
        {"{\"engine\": {\"devices\": [{\"kind\": \"cuda\"}]}}", "-t 2 --devices cpu:2", "c1 c1 | 1,1 | 1"},
        {"{\"engine\": {\"devices\": \"cpu:2\", \"layout\": null}}", "-t 4", "c2 c2 | 1,1 | 1"},
    };
    for (size_t i = 0; i < sizeof(OK) / sizeof(OK[0]); i++) {
        pt_server_config c;
        pt_err err = {{0}};
        pt_server_config_default(&c);
        int rc = load_and_finalize(&c, OK[i].file, OK[i].flags, &err);
        CHECK_MSG(rc == PT_OK, "case %zu (%s): %s", i, OK[i].flags, err.msg);
        char got[256];
        plan_summary(&c.plan, got, sizeof(got));
        CHECK_MSG(!strcmp(got, OK[i].want), "case %zu (%s): plan '%s', want '%s'", i, OK[i].flags, got, OK[i].want);
        int first = 0;
        for (int k = 0; k < c.plan.n_instances; k++) {
            CHECK_MSG(c.plan.first[k] == first, "case %zu: instance %d starts at %d, want %d", i, k, c.plan.first[k],
                      first);
            first += c.plan.tp[k];
        }
        pt_server_config_free(&c);
    }

    /* The list survives a dump and a reload with exactly the keys it set. */
    pt_server_config a, b;
    pt_err err = {{0}};
    pt_server_config_default(&a);
    CHECK(pt_config_load_file(&a, write_file("layout.json", OK[11].file, 0), &err) == PT_OK);
    char *json = pt_config_to_json(&a, false);
    CHECK_MSG(contains(json, "\"memory_mb\":\t2048") || contains(json, "\"memory_mb\": 2048"), "%s", json);
    pt_server_config_default(&b);
    CHECK_MSG(pt_config_load_file(&b, write_file("layout.json", json, 0), &err) == PT_OK, "%s", err.msg);
    CHECK_EQ_INT(b.n_device_list, 2);
    CHECK(b.devices == NULL);
    CHECK(b.device_list[0].threads == 3 && b.device_list[0].memory_mb == 2048 && b.device_list[0].ordinal == -1);
    CHECK(b.device_list[1].threads == -1 && b.device_list[1].memory_mb == -1);
    free(json);
    pt_server_config_free(&a);
    pt_server_config_free(&b);
}

/* scheduler.allowed_tp as finalize resolves it, with engine.allowed_tp
 * (derived: 1, the layout's degrees and the scheduler's). */
static void test_scheduler_plans(void) {
    static const struct {
        const char *flags;
        const char *allowed, *sched; /* "1,2" */
        bool layout_given;
    } OK[] = {
        {"-t 2 --devices cpu:2", "1", "1", false},
        {"-t 2 --devices cpu:2 --policy dynamic --scheduler-allowed-tp 1,2", "1,2", "1,2", false},
        {"-t 2 --devices cpu:2 --policy dynamic --scheduler-allowed-tp 2,1,2", "1,2", "1,2", false}, /* sorted, once */
        {"-t 4 --devices cpu:4 --allowed-tp 1,2,4", "1,2,4", "1,2,4", false},
        {"-t 4 --devices cpu:4 --allowed-tp 1,2,8", "1,2,8", "1,2", false}, /* 8 > 4 devices */
        {"-t 4 --devices cpu:4 --allowed-tp 1,2,4 --scheduler-allowed-tp 2,4 --policy dynamic --layout 2,2",
         "1,2,4", "2,4", true},
        {"-t 3 --devices cpu:3 --layout 3", "1,3", "1", true}, /* 3 is no power of two: placed on, never formed */
        {"-t 2 --devices cpu:2 --layout 2 --scheduler-allowed-tp 1", "1,2", "1", true}, /* static: not checked */
    };
    for (size_t i = 0; i < sizeof(OK) / sizeof(OK[0]); i++) {
        pt_server_config c;
        pt_err err = {{0}};
        pt_server_config_default(&c);
        int rc = load_and_finalize(&c, NULL, OK[i].flags, &err);
        CHECK_MSG(rc == PT_OK, "case %zu (%s): %s", i, OK[i].flags, err.msg);
        char a[64] = "", b[64] = "";
        size_t la = 0, lb = 0;
        for (int k = 0; k < c.plan.n_allowed; k++)
            la += (size_t)snprintf(a + la, sizeof(a) - la, "%s%d", k ? "," : "", c.plan.allowed_tp[k]);
        for (int k = 0; k < c.plan.n_sched_tp; k++)
            lb += (size_t)snprintf(b + lb, sizeof(b) - lb, "%s%d", k ? "," : "", c.plan.sched_tp[k]);
        CHECK_MSG(!strcmp(a, OK[i].allowed), "case %zu (%s): engine.allowed_tp %s, want %s", i, OK[i].flags, a,
                  OK[i].allowed);
        CHECK_MSG(!strcmp(b, OK[i].sched), "case %zu (%s): scheduler.allowed_tp %s, want %s", i, OK[i].flags, b,
                  OK[i].sched);
        CHECK_MSG(c.plan.layout_given == OK[i].layout_given, "case %zu", i);
        pt_server_config_free(&c);
    }
}

/* Layouts finalize refuses, each with the words its message must contain;
 * the plan stays unset. */
static void test_layout_refused(void) {
    static const struct {
        const char *file, *flags, *want;
    } BADL[] = {
        {NULL, "-t 4 --devices cpu:3 --layout 1,1",
         "'engine.layout' [1,1] covers 2 devices but 'engine.devices' has 3"},
        {NULL, "-t 2 --devices cpu:2 --layout 1", "'engine.layout' [1] covers 1 device but 'engine.devices' has 2"},
        {NULL, "-t 4 --layout 1,2",
         "'engine.layout'[1] = 2 would start at device 1, which is not a multiple of 2"},
        {NULL, "-t 4 --devices cpu:4 --layout 1,2,1", "'engine.layout'[1] = 2 would start at device 1"},
        {NULL, "-t 8 --devices cpu:8 --layout 2,4,2", "'engine.layout'[1] = 4 would start at device 2"},
        {NULL, "-t 4 --devices cpu:4 --layout 1,1,2 --allowed-tp 1",
         "'engine.layout'[2] = 2 is not in 'engine.allowed_tp' [1]"},
        {NULL, "-t 4 --devices cpu:4 --allowed-tp 1,3",
         "'engine.allowed_tp' [1,3]: TP 3 does not divide the 4 devices"},
        {NULL, "-t 4 --layout 2,1",
         "'engine.allowed_tp' [1,2] (by default 1, the layout's degrees and 'scheduler.allowed_tp'): TP 2 does not divide "
         "the 3 devices"},
        {NULL, "-t 4 --devices cpu:3 --tp 2", "'engine.devices' has 3 devices, which 'engine.tp' (2) does not divide"},
        {NULL, "--devices cuda --tp 2", "'engine.devices' has 1 device, which 'engine.tp' (2) does not divide"},
        {NULL, "-t 2 --devices cpu:4",
         "the 4 CPU devices of 'engine.devices' \"cpu:4\" need at least 4 threads, but 'engine.threads' is 2"},
        {NULL, "-t 2 --tp 4", "'engine.tp' (4) must not exceed 'engine.threads' (2)"},
        {NULL, "-t 64 --layout 64,1", "'engine.layout' [64,1] covers 65 devices, more than the 64 a server has"},
        {"{\"engine\": {\"devices\": [{\"kind\": \"cpu\"}, {\"kind\": \"cuda\"}]}}", "",
         "'engine.devices'[1] is \"cuda\" but 'engine.devices'[0] is \"cpu\": the devices of a server are of one kind"},
        {"{\"engine\": {\"devices\": [{\"kind\": \"cuda\", \"ordinal\": 1}, {\"kind\": \"cuda\"}]}}", "",
         "'engine.devices'[1] has CUDA ordinal 1, as 'engine.devices'[0] does"},
        {"{\"engine\": {\"devices\": [{\"kind\": \"cpu\"}, {\"kind\": \"cpu\"}], \"layout\": [1]}}", "",
         "'engine.layout' [1] covers 1 device but 'engine.devices' has 2"},
        /* the scheduler's degrees */
        {NULL, "-t 2 --devices cpu:2 --allowed-tp 1 --scheduler-allowed-tp 1,2",
         "'scheduler.allowed_tp'[1] = 2 is not in 'engine.allowed_tp' [1]"},
        {NULL, "-t 2 --devices cpu:2 --scheduler-allowed-tp 1,4",
         "'scheduler.allowed_tp'[1] = 4 needs 4 devices but the server has 2"},
        {NULL, "-t 4 --devices cpu:3 --allowed-tp 1,3 --scheduler-allowed-tp 3",
         "'scheduler.allowed_tp'[0] = 3 is not a power of two"},
        {NULL, "-t 4 --devices cpu:4 --policy dynamic --layout 2,2 --scheduler-allowed-tp 1",
         "'engine.layout'[0] = 2 is not in 'scheduler.allowed_tp' [1]: a dynamic server starts from a layout its "
         "policy may form"},
        {"{\"scheduler\": {\"policy\": \"dynamic\", \"allowed_tp\": [1, 2]}, \"engine\": {\"devices\": \"cpu:4\", "
         "\"allowed_tp\": [1, 4]}}",
         "-t 4", "'scheduler.allowed_tp'[1] = 2 is not in 'engine.allowed_tp' [1,4]"},
    };
    for (size_t i = 0; i < sizeof(BADL) / sizeof(BADL[0]); i++) {
        pt_server_config c;
        pt_err err = {{0}};
        pt_server_config_default(&c);
        int rc = load_and_finalize(&c, BADL[i].file, BADL[i].flags, &err);
        CHECK_MSG(rc < 0, "case %zu (%s) accepted", i, BADL[i].flags);
        CHECK_MSG(contains(err.msg, BADL[i].want), "case %zu: got '%s', want '%s'", i, err.msg, BADL[i].want);
        /* The file's path first when there is one (the CLI puts its own name first). */
        if (BADL[i].file)
            CHECK_MSG(c.config_path && !strncmp(err.msg, c.config_path, strlen(c.config_path)),
                      "case %zu: '%s' does not begin with the path", i, err.msg);
        else
            CHECK_MSG(!strncmp(err.msg, BADL[i].want, 4), "case %zu: '%s' has a prefix", i, err.msg);
        CHECK_EQ_INT(c.plan.n_devices, 0);
        pt_server_config_free(&c);
    }
}

/* Each bad input: a file body (NULL: only flags), extra flags, and the
 * substring the message must contain. File messages must also begin with
 * the file's path; the configuration must be left as it was. */
static const struct {
    const char *file;
    const char *flags;
    const char *want;
} BAD[] = {
    {"{\"engine\": {\"thread\": 4}}", NULL, "unknown key 'engine.thread' (did you mean 'engine.threads'?)"},
    {"{\"server\": {\"threads\": 4}}", NULL, "unknown key 'server.threads' (did you mean 'engine.threads'?)"},
    {"{\"bogus\": 1}", NULL, "unknown key 'bogus'"},
    {"{\"server\": {\"port\": \"80a\"}}", NULL, "'server.port' must be an integer in [1, 65535], got \"80a\""},
    {"{\"server\": {\"port\": 70000}}", NULL, "'server.port' must be an integer in [1, 65535], got 70000"},
    {"{\"server\": {\"port\": 80.5}}", NULL, "'server.port' must be an integer in [1, 65535], got 80.5"},
    {"{\"server\": {\"port\": 0}}", NULL, "'server.port' must be an integer in [1, 65535], got 0"},
    {"{\"engine\": {\"page_size\": 24}}", NULL, "'engine.page_size' must be a power of two in [1, 256], got 24"},
    {"{\"engine\": {\"page_size\": 512}}", NULL, "'engine.page_size' must be a power of two in [1, 256], got 512"},
    {"{\"engine\": {\"kv_dtype\": \"q8\"}}", NULL, "'engine.kv_dtype' must be one of \"f32\", \"f16\" or \"bf16\", got \"q8\""},
    {"{\"engine\": {\"devices\": \"gpu\"}}", NULL,
     "'engine.devices' must be \"cpu\", \"cuda\", \"cpu:N\" or \"cuda:N\" with N in [1, 64], or a list of device "
     "objects, got \"gpu\""},
    {"{\"engine\": {\"devices\": \"cpu:0\"}}", NULL, "'engine.devices' must be \"cpu\", \"cuda\", \"cpu:N\""},
    {"{\"engine\": {\"devices\": \"cpu:65\"}}", NULL, "got \"cpu:65\""},
    {"{\"engine\": {\"devices\": \"cuda:\"}}", NULL, "got \"cuda:\""},
    {"{\"engine\": {\"devices\": \"cpu:2x\"}}", NULL, "got \"cpu:2x\""},
    {"{\"engine\": {\"devices\": null}}", NULL, "'engine.devices' must be \"cpu\""},
    {"{\"engine\": {\"devices\": []}}", NULL, "'engine.devices' must list 1 to 64 devices, got 0"},
    {"{\"engine\": {\"devices\": [{\"kind\": \"cpu\"}, {\"kind\": \"cpu\", \"thread\": 1}]}}", NULL,
     "unknown key 'engine.devices[1].thread' (did you mean 'engine.devices[1].threads'?)"},
    {"{\"engine\": {\"devices\": [{\"kind\": \"cpu\", \"bogus\": 1}]}}", NULL, "unknown key 'engine.devices[0].bogus'"},
    {"{\"engine\": {\"devices\": [5]}}", NULL, "'engine.devices[0]' must be an object"},
    {"{\"engine\": {\"devices\": [{\"threads\": 1}]}}", NULL, "'engine.devices[0].kind' is missing"},
    {"{\"engine\": {\"devices\": [{\"kind\": \"tpu\"}]}}", NULL,
     "'engine.devices[0].kind' must be \"cpu\" or \"cuda\", got \"tpu\""},
    {"{\"engine\": {\"devices\": [{\"kind\": \"cpu\", \"threads\": 0}]}}", NULL,
     "'engine.devices[0].threads' must be an integer in [1, 1024], got 0"},
    {"{\"engine\": {\"devices\": [{\"kind\": \"cpu\", \"memory_mb\": -1}]}}", NULL,
     "'engine.devices[0].memory_mb' must be an integer in [0, 16777216], got -1"},
    {"{\"engine\": {\"devices\": [{\"kind\": \"cuda\", \"ordinal\": \"0\"}]}}", NULL,
     "'engine.devices[0].ordinal' must be an integer in [0, 1023], got \"0\""},
    {"{\"engine\": {\"devices\": [{\"kind\": \"cpu\", \"ordinal\": 1}]}}", NULL,
     "'engine.devices[0].ordinal' applies to CUDA devices only"},
    {"{\"engine\": {\"devices\": [{\"kind\": \"cuda\", \"threads\": 2}]}}", NULL,
     "'engine.devices[0].threads' applies to CPU devices only"},
    {"{\"engine\": {\"devices\": [{\"kind\": \"cpu\", \"kind\": \"cpu\"}]}}", NULL,
     "duplicate key 'engine.devices[0].kind'"},
    {"{\"engine\": {\"layout\": []}}", NULL,
     "'engine.layout' must be null or a list of 1 to 64 integers in [1, 64], got []"},
    {"{\"engine\": {\"layout\": \"1,2\"}}", NULL, "'engine.layout' must be null or a list of 1 to 64 integers"},
    {"{\"engine\": {\"layout\": [1, 0]}}", NULL, "'engine.layout'[1] must be an integer in [1, 64], got 0"},
    {"{\"engine\": {\"layout\": [1.5]}}", NULL, "'engine.layout'[0] must be an integer in [1, 64], got 1.5"},
    {"{\"engine\": {\"allowed_tp\": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]}}", NULL,
     "'engine.allowed_tp' must be null or a list of 1 to 16 integers in [1, 64]"},
    {"{\"engine\": {\"allowed_tp\": [65]}}", NULL, "'engine.allowed_tp'[0] must be an integer in [1, 64], got 65"},
    {"{\"engine\": {\"device_memory_mb\": -1}}", NULL, "'engine.device_memory_mb' must be an integer"},
    {"{\"engine\": {\"page_select_budget\": -1}}", NULL, "'engine.page_select_budget' must be an integer"},
    {"{\"engine\": {\"tp\": 0}}", NULL, "'engine.tp' must be an integer in [1, 64], got 0"},
    {"{\"model\": {\"chat_template\": \"vicuna\"}}", NULL,
     "'model.chat_template' must be one of \"chatml\", \"llama3\", \"llama2\", \"mistral\" or null, got \"vicuna\""},
    {"{\"model\": {\"path\": \"\"}}", NULL, "'model.path' must be a non-empty string, got \"\""},
    {"{\"model\": {\"path\": null}}", NULL, "'model.path' must be a non-empty string, got null"},
    {"{\"server\": {\"api_key\": 42}}", NULL, "'server.api_key' must be a non-empty string or null, got 42"},
    {"{\"server\": {\"auth_health_metrics\": \"yes\"}}", NULL, "'server.auth_health_metrics' must be true or false"},
    {"{\"scheduler\": {\"request_timeout_s\": -1}}", NULL, "'scheduler.request_timeout_s' must be a number in [0, 604800], got -1"},
    {"{\"scheduler\": {\"policy\": \"auto\"}}", NULL,
     "'scheduler.policy' must be one of \"static\" or \"dynamic\", got \"auto\""},
    {"{\"scheduler\": {\"slo\": 5}}", NULL, "'scheduler.slo' must be an object, got a number"},
    {"{\"scheduler\": {\"slo\": {\"ttft\": 5}}}", NULL,
     "unknown key 'scheduler.slo.ttft' (did you mean 'scheduler.slo.ttft_ms'?)"},
    {"{\"scheduler\": {\"slo\": {\"ttft_ms\": -1}}}", NULL,
     "'scheduler.slo.ttft_ms' must be a number in [0, 3.6e+06], got -1"},
    {"{\"scheduler\": {\"slo\": {\"tpot_ms\": \"fast\"}}}", NULL, "'scheduler.slo.tpot_ms' must be a number"},
    {"{\"scheduler\": {\"slo\": {\"ttft_ms\": 1, \"ttft_ms\": 2}}}", NULL, "duplicate key 'scheduler.slo.ttft_ms'"},
    {"{\"scheduler\": {\"slo_ttft_ms\": 5}}", NULL, "unknown key 'scheduler.slo_ttft_ms'"},
    {"{\"scheduler\": {\"allowed_tp\": []}}", NULL,
     "'scheduler.allowed_tp' must be null or a list of 1 to 8 integers in [1, 64], got []"},
    {"{\"scheduler\": {\"allowed_tp\": [1, 0]}}", NULL, "'scheduler.allowed_tp'[1] must be an integer in [1, 64], got 0"},
    {"{\"scheduler\": {\"hysteresis_s\": -1}}", NULL, "'scheduler.hysteresis_s' must be a number in [0, 86400], got -1"},
    {"{\"scheduler\": {\"calibration_s\": 0}}", NULL, "'scheduler.calibration_s' must be a number in [0.1, 3600], got 0"},
    {"{\"scheduler\": {\"cost_file\": \"\"}}", NULL, "'scheduler.cost_file' must be a non-empty string or null"},
    {"{\"scheduler\": {\"save_cost\": 1}}", NULL, "'scheduler.save_cost' must be a non-empty string or null, got 1"},
    {"{\"http\": {\"max_body_bytes\": 10}}", NULL, "'http.max_body_bytes' must be an integer in [1024, 1073741824], got 10"},
    {"{\"log_level\": \"verbose\"}", NULL, "'log_level' must be one of \"debug\", \"info\", \"warn\" or \"error\""},
    {"{\"server\": 5}", NULL, "'server' must be an object, got a number"},
    {"[1, 2]", NULL, "the top level must be a JSON object, got an array"},
    {"\"x\"", NULL, "the top level must be a JSON object, got a string"},
    {"{\"server\": {\"port\": 1, \"port\": 2}}", NULL, "duplicate key 'server.port'"},
    {"{\"log_level\": \"info\", \"log_level\": \"info\"}", NULL, "duplicate key 'log_level'"},
    {"{\"server\": {\"port\": 1}, \"server\": {}}", NULL, "duplicate key 'server'"},
    {"{\n  \"server\": {\"port\": }\n}\n", NULL, ":2:22: malformed JSON at byte 23, near 'rver\": {\"port\": }'"},
    {"{\"server\": {\"port\": 8000,}}", NULL, ":1:27: malformed JSON at byte 26, near ' {\"port\": 8000,}}'"},
    {"{\"server\": {\"port\": 8000}", NULL, ":1:26: malformed JSON at byte 25: unexpected end of file"},
    {"{\"a\": 1} trailing", NULL, ":1:10: malformed JSON at byte 9, near '{\"a\": 1} trailing'"},
    {"", NULL, "empty file (expected a JSON object)"},
    {" \n\t\n", NULL, "empty file (expected a JSON object)"},
    {"{\"Server\": {}}", NULL, "unknown key 'Server' (did you mean 'server'?)"}, /* keys are case-sensitive */
    /* flags */
    {NULL, "--port 80a", "--port: must be an integer in [1, 65535], got \"80a\""},
    {NULL, "--port=", "--port: must be an integer in [1, 65535], got \"\""},
    {NULL, "--port", "--port: missing value"},
    {NULL, "--page-size 3", "--page-size: must be a power of two in [1, 256], got \"3\""},
    {NULL, "-t 0", "-t: must be an integer in [1, 1024], got \"0\""},
    {NULL, "--threads 4x", "--threads: must be an integer in [1, 1024], got \"4x\""},
    {NULL, "--kv-dtype q8", "--kv-dtype: must be one of \"f32\", \"f16\" or \"bf16\", got \"q8\""},
    {NULL, "--prot 9000", "unknown option '--prot' (did you mean '--port'?)"},
    {NULL, "--devices tpu",
     "--devices: must be \"cpu\", \"cuda\", \"cpu:N\" or \"cuda:N\" with N in [1, 64], got \"tpu\""},
    {NULL, "--devices cpu:0", "--devices: must be \"cpu\""},
    {NULL, "--devices=cuda:x", "--devices: must be \"cpu\""},
    {NULL, "--layout 1,,2", "--layout: must be a comma-separated list of 1 to 64 integers in [1, 64], got \"1,,2\""},
    {NULL, "--layout 1,2,", "--layout: must be a comma-separated list"},
    {NULL, "--layout=", "--layout: must be a comma-separated list"},
    {NULL, "--layout 0", "--layout: must be a comma-separated list"},
    {NULL, "--layout -1", "--layout: must be a comma-separated list"},
    {NULL, "--layout 1;2", "--layout: must be a comma-separated list"},
    {NULL, "--allowed-tp 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17",
     "--allowed-tp: must be a comma-separated list of 1 to 16"},
    {NULL, "--device-memory-mb lots", "--device-memory-mb: must be an integer"},
    {NULL, "--cuda-graphs=maybe", "--cuda-graphs: must be true or false"},
    {NULL, "--api-key=", "--api-key: must be a non-empty string or null, got \"\""},
    {NULL, "--request-timeout nan", "--request-timeout: must be a number in [0, 604800], got \"nan\""},
    {NULL, "--auth-health-metrics=maybe", "--auth-health-metrics: must be true or false, got \"maybe\""},
    {NULL, "--policy fast", "--policy: must be one of \"static\" or \"dynamic\", got \"fast\""},
    {NULL, "--slo-ttft-ms 1e9", "--slo-ttft-ms: must be a number in [0, 3.6e+06], got \"1e9\""},
    {NULL, "--slo-tpot-ms=", "--slo-tpot-ms: must be a number"},
    {NULL, "--scheduler-allowed-tp 1,2,4,8,16,32,64,1,2", "--scheduler-allowed-tp: must be a comma-separated list of 1 to 8"},
    {NULL, "--hysteresis -2", "--hysteresis: must be a number in [0, 86400], got \"-2\""},
    {NULL, "--calibration-s 4000", "--calibration-s: must be a number in [0.1, 3600], got \"4000\""},
    {NULL, "--polcy dynamic", "unknown option '--polcy' (did you mean '--policy'?)"},
    {NULL, "serve.json", "unexpected argument 'serve.json'"},
    {NULL, "--config a.json --config b.json", "--config: given more than once"},
    {NULL, "--config /nonexistent/proteus.json", "/nonexistent/proteus.json: cannot open config file: No such file"},
    {NULL, "--config /tmp", "/tmp: not a regular file"},
    /* a bad file is reported even when a flag would override the key */
    {"{\"server\": {\"port\": -1}}", "--port 9000", "'server.port' must be an integer in [1, 65535], got -1"},
};

static void test_bad_inputs(void) {
    for (size_t i = 0; i < sizeof(BAD) / sizeof(BAD[0]); i++) {
        pt_server_config c;
        pt_err err = {{0}};
        pt_server_config_default(&c);
        char *before = pt_config_to_json(&c, false);
        int rc;
        const char *path = NULL;
        if (BAD[i].file) {
            path = write_file("config.json", BAD[i].file, 0);
            if (BAD[i].flags) {
                char line[512], *argv[16];
                snprintf(line, sizeof(line), "--config %s %s", path, BAD[i].flags);
                rc = pt_config_apply_flags(&c, split_args(line, argv, 16), argv, &err);
            } else {
                rc = pt_config_load_file(&c, path, &err);
            }
        } else {
            char *argv[16];
            rc = pt_config_apply_flags(&c, split_args(BAD[i].flags, argv, 16), argv, &err);
        }
        CHECK_MSG(rc < 0, "case %zu accepted", i);
        CHECK_MSG(contains(err.msg, BAD[i].want), "case %zu: got '%s', want '%s'", i, err.msg, BAD[i].want);
        if (path) CHECK_MSG(!strncmp(err.msg, path, strlen(path)), "case %zu: '%s' does not begin with the path", i,
                            err.msg);
        char *after = pt_config_to_json(&c, false);
        CHECK_MSG(!strcmp(before, after), "case %zu changed the configuration", i);
        free(before);
        free(after);
        pt_server_config_free(&c);
    }
}

/* Files that are not JSON text at all. */
static void test_bad_file_bytes(void) {
    pt_server_config c;
    pt_err err = {{0}};
    pt_server_config_default(&c);
    const char *path = write_file("nul.json", "{\"a\"\0: 1}", 9);
    CHECK(pt_config_load_file(&c, path, &err) == PT_ERR_FORMAT);
    CHECK_MSG(contains(err.msg, "NUL byte at byte 4"), "%s", err.msg);
    path = write_file("ctl.json", "{\"serv\x01" "er\": 1}", 0);
    CHECK(pt_config_load_file(&c, path, &err) == PT_ERR_FORMAT);
    CHECK_MSG(contains(err.msg, "unknown key 'serv?er'"), "%s", err.msg); /* control byte not echoed */
    CHECK(pt_config_load_file(&c, tmpdir, &err) == PT_ERR_IO);
    CHECK_MSG(contains(err.msg, "not a regular file"), "%s", err.msg);
    pt_server_config_free(&c);
}

/* README.md documents every key (the list here is written independently of
 * the table in config.c, and the dump must have exactly these keys). */
static void test_every_key_documented(void) {
    static const char *keys[] = {
        "server.host", "server.port", "server.api_key", "server.auth_health_metrics", "model.path",
        "model.served_name", "model.chat_template", "model.max_model_len", "engine.threads", "engine.tp",
        "engine.devices", "engine.device_memory_mb", "engine.layout", "engine.allowed_tp", "engine.cuda_device",
        "engine.cuda_graphs", "engine.page_size", "engine.kv_dtype",
        "engine.kv_memory_mb", "engine.prefix_caching", "engine.page_select_budget", "engine.page_select_dense_layers", "scheduler.max_running",
        "scheduler.max_batch_tokens", "scheduler.prefill_chunk", "scheduler.max_waiting",
        "scheduler.request_timeout_s", "scheduler.shutdown_grace_s", "scheduler.policy", "scheduler.slo.ttft_ms",
        "scheduler.slo.tpot_ms", "scheduler.allowed_tp", "scheduler.hysteresis_s", "scheduler.cost_file",
        "scheduler.save_cost", "scheduler.calibration_s", "http.max_body_bytes", "http.max_header_bytes",
        "http.idle_timeout_s", "log_level"};
    const size_t n = sizeof(keys) / sizeof(keys[0]);
    pt_server_config c;
    pt_server_config_default(&c);
    char *json = pt_config_to_json(&c, false);
    size_t leaves = 0;
    for (const char *p = json; (p = strstr(p, "\":")); p++) leaves++;
    CHECK_EQ_INT(leaves, n + 6); /* keys + the five section objects + scheduler.slo */
    for (size_t i = 0; i < n; i++) {
        const char *leaf = strrchr(keys[i], '.');
        char q[64];
        snprintf(q, sizeof(q), "\"%s\":", leaf ? leaf + 1 : keys[i]);
        CHECK_MSG(contains(json, q), "dump lacks %s", keys[i]);
    }
    free(json);
    pt_server_config_free(&c);

    const char *src = getenv("PROTEUS_SOURCE_DIR");
    char path[512];
    snprintf(path, sizeof(path), "%s/README.md", src ? src : ".");
    FILE *f = fopen(path, "rb");
    CHECK_MSG(f != NULL, "cannot open %s", path);
    if (!f) return;
    static char text[1 << 20];
    size_t len = fread(text, 1, sizeof(text) - 1, f);
    text[len] = '\0';
    fclose(f);
    const char *sec = strstr(text, "## Configuration (`proteus serve`)");
    CHECK_MSG(sec != NULL, "README.md has no configuration section");
    for (size_t i = 0; sec && i < n; i++) {
        char q[64];
        snprintf(q, sizeof(q), "`%s`", keys[i]);
        CHECK_MSG(contains(sec, q), "README.md does not document %s", keys[i]);
    }
}

static void setup(void) {
    const char *t = getenv("TMPDIR");
    snprintf(tmpdir, sizeof(tmpdir), "%s/pt_config_XXXXXX", t && strlen(t) < 40 ? t : "/tmp");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        exit(1);
    }
    unsetenv("PROTEUS_API_KEY");
}

static void teardown(void) {
    static const char *files[] = {"full.json", "partial.json", "dump.json", "prec.json", "key.json",
                                  "config.json", "nul.json", "ctl.json", "layout.json"};
    char path[128];
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        snprintf(path, sizeof(path), "%s/%s", tmpdir, files[i]);
        unlink(path);
    }
    CHECK_MSG(rmdir(tmpdir) == 0, "leftover files in %s", tmpdir);
}

TEST_MAIN(TEST(setup), TEST(test_defaults), TEST(test_full_file), TEST(test_partial_file_keeps_rest),
          TEST(test_dump_round_trip), TEST(test_flags_over_file), TEST(test_help), TEST(test_env_api_key),
          TEST(test_served_name), TEST(test_finalize_cross_checks), TEST(test_layout_plans), TEST(test_scheduler_plans), TEST(test_layout_refused),
          TEST(test_bad_inputs), TEST(test_bad_file_bytes),
          TEST(test_every_key_documented), TEST(teardown))
