/* proteus bench: replay a request trace against an OpenAI-compatible server
 * and report vLLM's serving metrics.
 *
 * Setup asks the server two things before the clock starts: GET /v1/models
 * (the model name and its max_model_len) and POST /tokenize on a fixed
 * paragraph (a pool of ordinary token ids). Prompts are then token-id arrays
 * of exactly the trace's input length, so no tokenizer runs on this side and
 * the server cannot re-tokenize them into a different length. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "bench/client.h"
#include "bench/replay.h"
#include "cli/cli.h"
#include "proteus/bench.h"

#define SETUP_TIMEOUT_S 30.0
#define POOL_SKIP 4 /* the paragraph's first tokens can be sentence-start forms; leave them out */

static const char POOL_TEXT[] =
    "The town library opened early on Saturday, and a small group of readers waited by the door with coffee "
    "and folded newspapers. Inside, the staff had moved the long tables near the windows so that the morning "
    "light fell across the maps and old photographs that a local historian had lent for the week. Children "
    "found the corner with picture books about rivers, trains and animals of the forest, while their parents "
    "asked about the evening classes on gardening, cooking and simple repairs around the house. Later in the "
    "day a musician played quiet songs on the steps outside, people stopped to listen on their way to the "
    "market, and the librarian said that it was the busiest weekend they had seen since the building reopened "
    "after the winter storms damaged part of the roof.";

static void usage(FILE *f) {
    fputs("usage: proteus bench --trace FILE [options]\n"
          "Replays a request trace against an OpenAI-compatible server and reports serving metrics.\n"
          "\n"
          "server:\n"
          "  --base-url URL        server (default http://127.0.0.1:8000)\n"
          "  --endpoint PATH       completions endpoint (default /v1/completions)\n"
          "  --model NAME          model to request (default: the first id from GET /v1/models)\n"
          "  --api-key KEY         sent as Authorization: Bearer KEY\n"
          "  --timeout SECONDS     per request (default 600; 0 = none)\n"
          "trace:\n"
          "  --trace FILE          Azure CSV, Mooncake JSONL, BurstGPT CSV or Proteus JSONL\n"
          "  --format F            auto|azure|mooncake|burstgpt|proteus (default auto)\n"
          "  --burstgpt-model NAME keep only BurstGPT rows of this model\n"
          "  --strict              a malformed row fails the load (default: skipped and counted)\n"
          "time (default: as recorded):\n"
          "  --speedup X           divide the trace's gaps by X\n"
          "  --rate R              ignore the trace's times: R requests/s, gamma inter-arrivals\n"
          "  --burstiness B        gamma shape for --rate (default 1 = Poisson)\n"
          "  --max-concurrency N   at most N requests in flight; the rest wait for a slot\n"
          "window:\n"
          "  --start SECONDS       skip the trace's rows before this time\n"
          "  --duration SECONDS    only rows before start + duration\n"
          "  --num-requests N      at most N measured requests\n"
          "  --warmup N            send the window's first N rows first, one at a time, unreported\n"
          "lengths:\n"
          "  --input-scale F, --output-scale F   multiply the trace's lengths (rounded, at least 1)\n"
          "  --max-input N, --max-output N       cap them\n"
          "  --clip-to-context     fit input + output under the server's max_model_len\n"
          "  --seed S              prompts and rate sampling (default 0)\n"
          "outputs (the report is always printed):\n"
          "  --json FILE           metrics as JSON (vLLM's key names)\n"
          "  --csv FILE            one row per request\n"
          "  --plot FILE.svg       latency CDFs and throughput over time\n"
          "  --goodput KEY:MS...   SLOs for goodput, e.g. --goodput ttft:500 tpot:50 e2el:5000\n"
          "  --prompt-mode ids|text  token-id prompts (default) or text of one-token words, for\n"
          "                        servers that take no token ids (the llama.cpp Python server)\n"
          "  --quiet               no progress line\n"
          "\n"
          "Exit: 0 the run happened (failed requests are in the report), 1 it could not run, 2 usage error.\n",
          f);
}

typedef struct {
    const char *base_url, *endpoint, *model, *api_key, *trace, *burstgpt_model;
    const char *json, *csv, *plot;
    pt_trace_format format;
    bool strict, clip_to_context, quiet;
    double timeout_s;
    pt_goodput_slo slo;
    bool text_prompts;
    long max_concurrency;
    pt_replay_opts ro;
} bench_args;

/* One "ttft:MS", "tpot:MS" or "e2el:MS" of --goodput. */
static bool parse_slo(const char *s, pt_goodput_slo *slo) {
    const char *colon = strchr(s, ':');
    double ms;
    if (colon && cli_parse_float("--goodput", colon + 1, 1e-9, 1e12, &ms)) {
        size_t n = (size_t)(colon - s);
        if (n == 4 && !strncmp(s, "ttft", 4)) return slo->ttft_ms = ms, true;
        if (n == 4 && !strncmp(s, "tpot", 4)) return slo->tpot_ms = ms, true;
        if (n == 4 && !strncmp(s, "e2el", 4)) return slo->e2el_ms = ms, true;
    }
    fprintf(stderr, "proteus bench: --goodput: expected ttft:MS, tpot:MS or e2el:MS, got '%s'\n", s);
    return false;
}

/* Returns -1 to go on, else the exit code. */
static int parse_args(bench_args *a, int argc, char **argv) {
    memset(a, 0, sizeof(*a));
    a->base_url = "http://127.0.0.1:8000";
    a->endpoint = "/v1/completions";
    a->timeout_s = 600;
    pt_replay_opts_default(&a->ro);
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(f, "--help") || !strcmp(f, "-h")) {
            usage(stdout);
            return CLI_OK;
        } else if (!strcmp(f, "--strict")) {
            a->strict = true;
            continue;
        } else if (!strcmp(f, "--clip-to-context")) {
            a->clip_to_context = true;
            continue;
        } else if (!strcmp(f, "--quiet")) {
            a->quiet = true;
            continue;
        }
        if (!v || strncmp(f, "--", 2) != 0) {
            fprintf(stderr, "proteus bench: unknown or incomplete option '%s'\n", f);
            usage(stderr);
            return CLI_USAGE;
        }
        i++;
        bool ok = true;
        if (!strcmp(f, "--base-url")) a->base_url = v;
        else if (!strcmp(f, "--endpoint")) a->endpoint = v;
        else if (!strcmp(f, "--model")) a->model = v;
        else if (!strcmp(f, "--api-key")) a->api_key = v;
        else if (!strcmp(f, "--trace")) a->trace = v;
        else if (!strcmp(f, "--burstgpt-model")) a->burstgpt_model = v;
        else if (!strcmp(f, "--json")) a->json = v;
        else if (!strcmp(f, "--csv")) a->csv = v;
        else if (!strcmp(f, "--plot")) a->plot = v;
        else if (!strcmp(f, "--prompt-mode")) {
            a->text_prompts = !strcmp(v, "text");
            if (!a->text_prompts && strcmp(v, "ids") != 0) {
                fprintf(stderr, "proteus bench: --prompt-mode: expected ids or text, got '%s'\n", v);
                ok = false;
            }
        }
        else if (!strcmp(f, "--goodput")) {
            /* vLLM's form: one flag, then KEY:MS words until the next flag. */
            i--;
            while (ok && i + 1 < argc && strncmp(argv[i + 1], "--", 2) != 0) ok = parse_slo(argv[++i], &a->slo);
        }
        else if (!strcmp(f, "--timeout")) ok = cli_parse_float(f, v, 0, 1e6, &a->timeout_s);
        else if (!strcmp(f, "--max-concurrency")) ok = cli_parse_long(f, v, 1, 1 << 20, &a->max_concurrency);
        else if (!cli_parse_trace_flag("bench", f, v, &a->ro, &a->format, &ok)) {
            fprintf(stderr, "proteus bench: unknown option '%s'\n", f);
            usage(stderr);
            return CLI_USAGE;
        }
        if (!ok) return CLI_USAGE;
    }
    if (!a->trace) {
        fprintf(stderr, "proteus bench: --trace FILE is required\n");
        usage(stderr);
        return CLI_USAGE;
    }
    if (strstr(a->endpoint, "chat")) {
        fprintf(stderr, "proteus bench: --endpoint: only completions endpoints are supported (prompts are token ids)\n");
        return CLI_USAGE;
    }
    if (a->endpoint[0] != '/') {
        fprintf(stderr, "proteus bench: --endpoint must start with '/', got '%s'\n", a->endpoint);
        return CLI_USAGE;
    }
    return -1;
}

/* GET /v1/models: the model to request (the first unless named) and its
 * max_model_len (0 when the server does not say). */
static int query_models(const bench_args *a, char **model, uint32_t *max_len, pt_err *err) {
    int status;
    char *body;
    size_t len;
    int rc = pt_client_fetch(a->base_url, a->api_key, "GET", "/v1/models", NULL, SETUP_TIMEOUT_S, &status, &body, &len, err);
    if (rc) return rc;
    *model = NULL;
    *max_len = 0;
    cJSON *root = status == 200 && body ? cJSON_ParseWithLength(body, len) : NULL;
    const cJSON *data = cJSON_GetObjectItemCaseSensitive(root, "data"), *m;
    const cJSON *pick = NULL;
    cJSON_ArrayForEach(m, data) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(m, "id");
        if (!cJSON_IsString(id)) continue;
        if (!pick && !a->model) pick = m;
        if (a->model && !strcmp(id->valuestring, a->model)) pick = m;
    }
    if (pick) {
        const cJSON *ml = cJSON_GetObjectItemCaseSensitive(pick, "max_model_len");
        if (cJSON_IsNumber(ml) && ml->valuedouble > 0 && ml->valuedouble < 4e9) *max_len = (uint32_t)ml->valuedouble;
        *model = pt_xstrdup(a->model ? a->model : cJSON_GetObjectItemCaseSensitive(pick, "id")->valuestring);
    } else if (a->model) {
        *model = pt_xstrdup(a->model); /* a server may serve a model it does not list */
    } else {
        rc = pt_err_set(err, PT_ERR_FORMAT, "GET %s/v1/models: HTTP %d, no model id in the answer (use --model)",
                        a->base_url, status);
    }
    cJSON_Delete(root);
    free(body);
    return rc;
}

/* POST /tokenize on POOL_TEXT: the ids prompts are drawn from. */
/* Text mode: candidate words; the ones the server tokenizes (with a leading
 * space) as exactly one token make up the prompts. */
static const char *const TEXT_WORDS[] = {
    "the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "was", "with", "be", "by", "on", "not", "he",
    "this", "are", "or", "his", "from", "at", "which", "but", "have", "an", "had", "they", "you", "were", "their",
    "one", "all", "we", "can", "her", "has", "there", "been", "if", "more", "when", "will", "would", "who", "so",
    "no", "time", "people", "year", "way", "day", "man", "thing", "world", "life", "hand", "part", "child", "eye",
    "place", "work", "week", "case", "point", "number", "group", "problem", "fact", "water", "house", "city",
    "river", "light", "music", "paper", "market", "table", "garden", "window", "story", "history"};

/* POST path with body; on success the "tokens" array of the answer. */
static int fetch_tokens(const bench_args *a, const char *path, const char *rb, cJSON **root, const cJSON **toks,
                        int *status, pt_err *err) {
    char *body;
    size_t len;
    int rc = pt_client_fetch(a->base_url, a->api_key, "POST", path, rb, SETUP_TIMEOUT_S, status, &body, &len, err);
    if (rc) return rc;
    *root = cJSON_ParseWithLength(body ? body : "", len);
    *toks = cJSON_GetObjectItemCaseSensitive(*root, "tokens");
    if (*status != 200 || !cJSON_IsArray(*toks) || (size_t)cJSON_GetArraySize(*toks) < POOL_SKIP + 16) {
        char *msg = pt_client_error_message(body, len);
        rc = pt_err_set(err, PT_ERR_FORMAT, "POST %s%s: HTTP %d%s%s: no usable token list (prompts are built from it)",
                        a->base_url, path, *status, msg ? ": " : "", msg ? msg : "");
        free(msg);
        cJSON_Delete(*root);
        *root = NULL;
    }
    free(body);
    return rc;
}

/* The token-id pool prompts are built from: the server's own tokenization
 * of ordinary text. vLLM, SGLang and Proteus answer POST /tokenize
 * {"prompt"}; llama.cpp's server POST /tokenize {"content"}; the llama.cpp
 * Python server POST /extras/tokenize. */
static int query_pool(const bench_args *a, const char *model, int32_t **pool, size_t *n_pool, pt_err *err);

/* The words of TEXT_WORDS that the server counts as one token each (" w").
 * pool gets their indices; words[] points into TEXT_WORDS. */
static int query_words(const bench_args *a, const char *model, int32_t **pool, size_t *n_pool, pt_err *err) {
    size_t n = sizeof(TEXT_WORDS) / sizeof(TEXT_WORDS[0]);
    *pool = pt_xmalloc(n * sizeof(int32_t));
    *n_pool = 0;
    const char *path = "/tokenize";
    for (size_t i = 0; i < n; i++) {
        char text[64];
        snprintf(text, sizeof(text), " %s", TEXT_WORDS[i]);
        cJSON *req = cJSON_CreateObject();
        bool extras = !strcmp(path, "/extras/tokenize");
        if (!extras) cJSON_AddStringToObject(req, "model", model);
        cJSON_AddStringToObject(req, extras ? "input" : "prompt", text);
        cJSON_AddBoolToObject(req, extras ? "add_special" : "add_special_tokens", false);
        char *rb = cJSON_PrintUnformatted(req);
        cJSON_Delete(req);
        int status = 0;
        char *body = NULL;
        size_t len = 0;
        int rc = pt_client_fetch(a->base_url, a->api_key, "POST", path, rb, SETUP_TIMEOUT_S, &status, &body, &len, err);
        free(rb);
        if (rc == 0 && status == 404 && !extras) { /* the llama.cpp Python server's route */
            free(body);
            path = "/extras/tokenize";
            i--;
            continue;
        }
        cJSON *root = rc == 0 ? cJSON_ParseWithLength(body ? body : "", len) : NULL;
        const cJSON *toks = cJSON_GetObjectItemCaseSensitive(root, "tokens");
        if (status == 200 && cJSON_GetArraySize(toks) == 1) (*pool)[(*n_pool)++] = (int32_t)i;
        cJSON_Delete(root);
        free(body);
        if (rc) {
            free(*pool);
            *pool = NULL;
            return rc;
        }
    }
    if (*n_pool < 16) {
        free(*pool);
        *pool = NULL;
        return pt_err_set(err, PT_ERR_FORMAT,
                          "--prompt-mode text: only %zu of %zu words are single tokens for this server's tokenizer",
                          *n_pool, n);
    }
    return PT_OK;
}

static int query_pool(const bench_args *a, const char *model, int32_t **pool, size_t *n_pool, pt_err *err) {
    /* The request each kind of server takes, tried in turn; the first's error is the one reported. */
    static const struct {
        const char *path, *text_key, *special_key;
        bool model;
    } FORMS[] = {{"/tokenize", "prompt", "add_special_tokens", true},
                 {"/tokenize", "content", "add_special", false},
                 {"/extras/tokenize", "input", "add_special", false}};
    cJSON *root = NULL;
    const cJSON *toks = NULL;
    pt_err first = {{0}};
    int rc = PT_OK;
    for (size_t f = 0; f < sizeof(FORMS) / sizeof(FORMS[0]); f++) {
        cJSON *req = cJSON_CreateObject();
        if (FORMS[f].model) cJSON_AddStringToObject(req, "model", model);
        cJSON_AddStringToObject(req, FORMS[f].text_key, POOL_TEXT);
        cJSON_AddBoolToObject(req, FORMS[f].special_key, false);
        char *rb = cJSON_PrintUnformatted(req);
        cJSON_Delete(req);
        int status = 0;
        rc = fetch_tokens(a, FORMS[f].path, rb, &root, &toks, &status, f ? err : &first);
        free(rb);
        if (rc == PT_OK) break;
    }
    if (rc) {
        *err = first;
        return rc;
    }
    size_t n = (size_t)cJSON_GetArraySize(toks);
    *pool = pt_xmalloc((n - POOL_SKIP) * sizeof(int32_t));
    *n_pool = 0;
    const cJSON *t;
    size_t i = 0;
    cJSON_ArrayForEach(t, toks) {
        if (i++ < POOL_SKIP) continue;
        if (!cJSON_IsNumber(t) || t->valuedouble < 0 || t->valuedouble > INT32_MAX) continue;
        (*pool)[(*n_pool)++] = (int32_t)t->valuedouble;
    }
    cJSON_Delete(root);
    return PT_OK;
}

static int write_file(const char *path, const char *text, pt_err *err) {
    FILE *f = fopen(path, "w");
    if (!f) return pt_err_set(err, PT_ERR_IO, "%s: cannot write", path);
    bool ok = fputs(text, f) >= 0 && fputc('\n', f) != EOF;
    if (fclose(f) != 0) ok = false;
    return ok ? 0 : pt_err_set(err, PT_ERR_IO, "%s: write failed", path);
}

static const char *format_name(pt_trace_format f) {
    switch (f) {
    case PT_TRACE_AZURE: return "azure";
    case PT_TRACE_MOONCAKE: return "mooncake";
    case PT_TRACE_BURSTGPT: return "burstgpt";
    case PT_TRACE_PROTEUS: return "proteus";
    default: return "auto";
    }
}

int cmd_bench(int argc, char **argv) {
    bench_args a;
    int prc = parse_args(&a, argc, argv);
    if (prc >= 0) return prc;

    pt_err err = {{0}};
    pt_trace trace = {0};
    pt_trace_opts to = {.format = a.format, .strict = a.strict, .burstgpt_model = a.burstgpt_model};
    if (pt_trace_load(&trace, a.trace, &to, &err) != 0) {
        fprintf(stderr, "proteus bench: %s\n", err.msg);
        return CLI_FAIL;
    }
    for (size_t i = 0; i < trace.n_warnings && i < 5; i++) fprintf(stderr, "proteus bench: warning: %s\n", trace.warnings[i]);
    if (trace.n_skipped) fprintf(stderr, "proteus bench: %zu malformed rows skipped\n", trace.n_skipped);

    int rc = CLI_FAIL;
    char *model = NULL, *json = NULL;
    int32_t *pool = NULL;
    size_t n_pool = 0, n_rec = 0;
    uint32_t max_len = 0;
    pt_replay_plan plan = {0};
    pt_bench_record *recs = NULL;
    bool interrupted = false;

    if (query_models(&a, &model, &max_len, &err) != 0) {
        fprintf(stderr, "proteus bench: server not usable: %s\n", err.msg);
        goto out;
    }
    if (a.clip_to_context) {
        if (!max_len) {
            fprintf(stderr, "proteus bench: --clip-to-context: the server's /v1/models gives no max_model_len for '%s'\n", model);
            goto out;
        }
        a.ro.context_len = max_len;
    }
    if (pt_replay_plan_build(&plan, &trace, &a.ro, &err) != 0) {
        fprintf(stderr, "proteus bench: %s\n", err.msg);
        goto out;
    }
    if ((a.text_prompts ? query_words(&a, model, &pool, &n_pool, &err) : query_pool(&a, model, &pool, &n_pool, &err)) != 0) {
        fprintf(stderr, "proteus bench: %s\n", err.msg);
        goto out;
    }
    fprintf(stderr, "proteus bench: %zu requests (+%zu warmup) from %s (%s), model %s at %s, ", plan.n - plan.n_warmup,
            plan.n_warmup, a.trace, format_name(trace.format), model, a.base_url);
    if (a.ro.rate > 0) fprintf(stderr, "%g req/s, burstiness %g\n", a.ro.rate, a.ro.burstiness);
    else fprintf(stderr, "trace times / %g\n", a.ro.speedup);

    recs = pt_xcalloc(plan.n, sizeof(*recs));
    pt_replay_run_opts ro = {.base_url = a.base_url, .api_key = a.api_key, .endpoint = a.endpoint, .model = model,
                             .pool = pool, .n_pool = n_pool, .words = a.text_prompts ? TEXT_WORDS : NULL, .seed = a.ro.seed, .timeout_s = a.timeout_s,
                             .max_concurrency = (size_t)a.max_concurrency, .progress = !a.quiet, .handle_sigint = true};
    if (pt_replay_run(&plan, &ro, recs, &n_rec, &interrupted, &err) != 0) {
        fprintf(stderr, "proteus bench: %s\n", err.msg);
        goto out;
    }

    pt_bench_report rep;
    pt_bench_report_compute(&rep, recs, n_rec, &a.slo);
    pt_bench_report_print(stdout, &rep, interrupted ? "Serving Benchmark Result (interrupted)" : "Serving Benchmark Result");
    fflush(stdout);
    /* The first failures say more than a count: show a few. */
    size_t shown = 0;
    for (size_t i = 0; i < n_rec && shown < 3; i++)
        if (!recs[i].ok && !recs[i].warmup && recs[i].error)
            fprintf(stderr, "proteus bench: request %zu failed: %s\n", i, recs[i].error), shown++;

    rc = CLI_OK;
    if (a.json) {
        cJSON *x = cJSON_CreateObject();
        cJSON_AddStringToObject(x, "backend", "openai");
        cJSON_AddStringToObject(x, "base_url", a.base_url);
        cJSON_AddStringToObject(x, "endpoint", a.endpoint);
        cJSON_AddStringToObject(x, "model_id", model);
        cJSON_AddStringToObject(x, "trace", a.trace);
        cJSON_AddStringToObject(x, "trace_format", format_name(trace.format));
        cJSON_AddNumberToObject(x, "num_prompts", (double)(plan.n - plan.n_warmup));
        cJSON_AddNumberToObject(x, "num_warmups", (double)plan.n_warmup);
        if (a.ro.rate > 0) {
            cJSON_AddNumberToObject(x, "request_rate", a.ro.rate);
            cJSON_AddNumberToObject(x, "burstiness", a.ro.burstiness);
        } else {
            cJSON_AddNumberToObject(x, "speedup", a.ro.speedup);
        }
        if (a.max_concurrency) cJSON_AddNumberToObject(x, "max_concurrency", (double)a.max_concurrency);
        cJSON_AddNumberToObject(x, "seed", (double)a.ro.seed);
        cJSON_AddBoolToObject(x, "interrupted", interrupted);
        char *extra = cJSON_PrintUnformatted(x);
        cJSON_Delete(x);
        json = pt_bench_report_json(&rep, extra);
        free(extra);
        if (!json || write_file(a.json, json, &err) != 0) {
            fprintf(stderr, "proteus bench: %s\n", json ? err.msg : "cannot build the JSON report");
            rc = CLI_FAIL;
        }
    }
    if (a.csv && pt_bench_write_csv(a.csv, recs, n_rec, &err) != 0) {
        fprintf(stderr, "proteus bench: %s\n", err.msg);
        rc = CLI_FAIL;
    }
    if (a.plot && pt_bench_write_svg(a.plot, recs, n_rec, &rep, &err) != 0) {
        fprintf(stderr, "proteus bench: %s\n", err.msg);
        rc = CLI_FAIL;
    }
out:
    free(json);
    if (recs) pt_bench_records_free(recs, plan.n);
    pt_replay_plan_free(&plan);
    free(pool);
    free(model);
    pt_trace_free(&trace);
    return rc;
}
