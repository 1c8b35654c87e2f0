/* proteus simulate: replay a request trace on a simulated cluster, driven by
 * the scheduler `proteus serve` uses and timed by its cost model, and report
 * what `proteus bench` would have measured (src/sim/sim.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "bench/replay.h"
#include "cli/cli.h"
#include "proteus/bench.h"
#include "sim/cluster.h"
#include "sim/sim.h"

/* Beyond this many output tokens in the plan, token times (8 bytes each)
 * are not kept unless asked: ITL is then not reported. */
#define TOKEN_TIMES_AUTO_MAX (64ull << 20)

static void usage(FILE *f) {
    fprintf(f,
            "usage: proteus simulate --cluster SPEC --model MODEL --trace FILE [options]\n"
            "Replays a request trace on a simulated GPU cluster with the scheduler of `proteus serve`\n"
            "and prints the report `proteus bench` would print, plus transformations and layout.\n"
            "\n"
            "cluster and model:\n"
            "  --cluster SPEC        NxDEVICE (devices: %s; e.g. 8xH200, 4xH100) or a JSON\n"
            "                        device spec file (README: Simulating a cluster)\n"
            "  --model MODEL         a shape preset (%s;\n"
            "                        bf16; the 32B/70B/8B presets serve 131072 tokens: Qwen2.5 with YaRN,\n"
            "                        Llama 3.1) or a model file (GGUF, Hugging Face directory, config.json)\n"
            "  --cost FILE           a calibration file (pt_cost_save format) instead of the roofline of\n"
            "                        --cluster and --model (then --model is optional)\n"
            "  --save-cost FILE      write the cost model used (the roofline's, to edit and pass to --cost)\n"
            "scheduling:\n"
            "  --policy P            static (default) or dynamic (merge and split at run time)\n"
            "  --layout D,D,...      static layout: TP degrees in device order, larger first (default: all\n"
            "                        of the smallest allowed degree that fits); dynamic: the starting one\n"
            "  --allowed-tp D,D,...  degrees the layout may use (default: powers of two up to the devices)\n"
            "  --slo KEY:MS...       SLOs for the scheduler and for goodput: ttft:MS tpot:MS (e2el:MS for\n"
            "                        goodput only), e.g. --slo ttft:2000 tpot:100\n"
            "  --hysteresis S        dynamic: split a merged instance after S seconds unneeded (default 30,\n"
            "                        as the server's scheduler.hysteresis_s)\n"
            "  --max-seqs N          running sequences per instance (default 256)\n"
            "  --max-batched-tokens N  tokens per step, prefill chunked to fit (default 8192)\n"
            "  --sweep               run every static layout the devices allow, then dynamic; one table\n"
            "trace (as proteus bench):\n"
            "  --trace FILE          Azure CSV, Mooncake JSONL, BurstGPT CSV or Proteus JSONL\n"
            "  --format F            auto|azure|mooncake|burstgpt|proteus (default auto)\n"
            "  --burstgpt-model NAME keep only BurstGPT rows of this model\n"
            "  --strict              a malformed row fails the load (default: skipped and counted)\n"
            "  --speedup X, --rate R, --burstiness B, --max-concurrency N\n"
            "  --start S, --duration S, --num-requests N, --warmup N\n"
            "  --input-scale F, --output-scale F, --max-input N, --max-output N\n"
            "  --clip-to-context     fit input + output under the model's context\n"
            "  --seed S              rate sampling (default 0)\n"
            "outputs (the report is always printed):\n"
            "  --json FILE           metrics (vLLM's key names) and the simulation's; with --sweep, every run\n"
            "  --csv FILE            one row per request\n"
            "  --plot FILE.svg       layout, waiting requests and output tokens/s over time\n"
            "  --no-itl              keep no token times (ITL not reported; for very long traces; automatic\n"
            "                        beyond %llu M output tokens)\n"
            "  --verbose             every transformation and failed request on stderr\n"
            "\n"
            "Exit: 0 the simulation ran, 1 it could not (bad spec, model or trace file), 2 usage error.\n",
            PT_SIM_DEVICE_PRESETS, PT_SIM_MODEL_PRESETS, (unsigned long long)(TOKEN_TIMES_AUTO_MAX >> 20));
}

typedef struct {
    const char *cluster, *model, *cost, *save_cost, *trace, *burstgpt_model;
    const char *json, *csv, *plot;
    pt_trace_format format;
    bool strict, clip_to_context, sweep, no_itl, verbose, allowed_given;
    pt_goodput_slo slo;
    pt_sim_opts so;
    pt_replay_opts ro;
} sim_args;

static const char *policy_name(pt_sched_policy p) { return p == PT_SCHED_DYNAMIC ? "dynamic" : "static"; }

/* "1,2,4" into out (at most cap), each in [lo, hi]. */
static bool parse_int_list(const char *flag, const char *s, int *out, int cap, int *n, long lo, long hi) {
    *n = 0;
    const char *p = s;
    while (*p) {
        char buf[32];
        size_t k = strcspn(p, ",");
        if (k == 0 || k >= sizeof(buf) || *n == cap) {
            fprintf(stderr, "proteus simulate: %s: expected up to %d numbers separated by commas, got '%s'\n", flag,
                    cap, s);
            return false;
        }
        memcpy(buf, p, k);
        buf[k] = '\0';
        long v;
        if (!cli_parse_long(flag, buf, lo, hi, &v)) return false;
        out[(*n)++] = (int)v;
        p += k;
        if (*p == ',') p++;
    }
    if (*n == 0) {
        fprintf(stderr, "proteus simulate: %s: empty list\n", flag);
        return false;
    }
    return true;
}

static bool parse_slo(const char *s, sim_args *a) {
    const char *colon = strchr(s, ':');
    double ms;
    if (colon && cli_parse_float("--slo", colon + 1, 1e-6, 1e12, &ms)) {
        size_t n = (size_t)(colon - s);
        if (n == 4 && !strncmp(s, "ttft", 4)) return a->slo.ttft_ms = ms, a->so.sched.slo.ttft_s = ms / 1e3, true;
        if (n == 4 && !strncmp(s, "tpot", 4)) return a->slo.tpot_ms = ms, a->so.sched.slo.tpot_s = ms / 1e3, true;
        if (n == 4 && !strncmp(s, "e2el", 4)) return a->slo.e2el_ms = ms, true;
    }
    fprintf(stderr, "proteus simulate: --slo: expected ttft:MS, tpot:MS or e2el:MS, got '%s'\n", s);
    return false;
}

/* Returns -1 to go on, else the exit code. */
static int parse_args(sim_args *a, int argc, char **argv) {
    memset(a, 0, sizeof(*a));
    pt_sim_opts_default(&a->so);
    pt_replay_opts_default(&a->ro);
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        long l = 0;
        if (!strcmp(f, "--help") || !strcmp(f, "-h")) {
            usage(stdout);
            return CLI_OK;
        }
        if (!strcmp(f, "--strict")) a->strict = true;
        else if (!strcmp(f, "--clip-to-context")) a->clip_to_context = true;
        else if (!strcmp(f, "--sweep")) a->sweep = true;
        else if (!strcmp(f, "--no-itl")) a->no_itl = true;
        else if (!strcmp(f, "--verbose")) a->verbose = true;
        else if (!strcmp(f, "--quiet")) { /* accepted for symmetry with bench: there is no progress line */
        } else if (!v || strncmp(f, "--", 2) != 0 || !strncmp(v, "--", 2)) {
            fprintf(stderr, "proteus simulate: unknown or incomplete option '%s'\n", f);
            usage(stderr);
            return CLI_USAGE;
        } else {
            i++;
            bool ok = true;
            if (!strcmp(f, "--cluster")) a->cluster = v;
            else if (!strcmp(f, "--model")) a->model = v;
            else if (!strcmp(f, "--cost")) a->cost = v;
            else if (!strcmp(f, "--save-cost")) a->save_cost = v;
            else if (!strcmp(f, "--trace")) a->trace = v;
            else if (!strcmp(f, "--burstgpt-model")) a->burstgpt_model = v;
            else if (!strcmp(f, "--json")) a->json = v;
            else if (!strcmp(f, "--csv")) a->csv = v;
            else if (!strcmp(f, "--plot")) a->plot = v;
            else if (!strcmp(f, "--policy")) {
                if (!strcmp(v, "static")) a->so.sched.policy = PT_SCHED_STATIC;
                else if (!strcmp(v, "dynamic")) a->so.sched.policy = PT_SCHED_DYNAMIC;
                else {
                    fprintf(stderr, "proteus simulate: --policy: expected static or dynamic, got '%s'\n", v);
                    ok = false;
                }
            } else if (!strcmp(f, "--layout")) {
                ok = parse_int_list(f, v, a->so.layout, PT_SCHED_MAX_DEVICES, &a->so.n_layout, 1, PT_COST_MAX_TP);
            } else if (!strcmp(f, "--allowed-tp")) {
                ok = parse_int_list(f, v, a->so.sched.allowed_tp, 8, &a->so.sched.n_allowed, 1, PT_COST_MAX_TP);
                a->allowed_given = true;
            } else if (!strcmp(f, "--slo")) {
                i--; /* vLLM's --goodput form: KEY:MS words until the next flag */
                while (ok && i + 1 < argc && strncmp(argv[i + 1], "--", 2) != 0) ok = parse_slo(argv[++i], a);
            } else if (!strcmp(f, "--hysteresis")) ok = cli_parse_float(f, v, 0, 1e9, &a->so.sched.hysteresis_s);
            else if (!strcmp(f, "--max-seqs")) ok = cli_parse_long(f, v, 1, 1 << 20, &l), a->so.max_seqs = (uint32_t)l;
            else if (!strcmp(f, "--max-batched-tokens"))
                ok = cli_parse_long(f, v, 1, 1 << 24, &l), a->so.max_batched_tokens = (uint32_t)l;
            else if (!strcmp(f, "--max-concurrency"))
                ok = cli_parse_long(f, v, 1, 1 << 20, &l), a->so.max_concurrency = (size_t)l;
            else if (!cli_parse_trace_flag("simulate", f, v, &a->ro, &a->format, &ok)) {
                fprintf(stderr, "proteus simulate: unknown option '%s'\n", f);
                usage(stderr);
                return CLI_USAGE;
            }
            if (!ok) return CLI_USAGE;
        }
    }
    const char *missing = !a->cluster ? "--cluster SPEC" : !a->trace ? "--trace FILE" : !a->model && !a->cost ? "--model MODEL (or --cost FILE)" : NULL;
    if (missing) {
        fprintf(stderr, "proteus simulate: %s is required\n", missing);
        usage(stderr);
        return CLI_USAGE;
    }
    if (a->sweep && (a->csv || a->plot || a->so.n_layout)) {
        fprintf(stderr, "proteus simulate: --sweep runs many layouts: --csv, --plot and --layout need a single run\n");
        return CLI_USAGE;
    }
    a->so.verbose = a->verbose;
    return -1;
}

static int write_file(const char *path, const char *text, pt_err *err) {
    FILE *f = fopen(path, "w");
    if (!f) return pt_err_set(err, PT_ERR_IO, "%s: cannot write", path);
    bool ok = fputs(text, f) >= 0 && fputc('\n', f) != EOF;
    if (fclose(f) != 0) ok = false;
    return ok ? 0 : pt_err_set(err, PT_ERR_IO, "%s: write failed", path);
}

static void layout_str(char *buf, size_t n, const int *tp, int k) {
    size_t o = 0;
    buf[0] = '\0';
    for (int i = 0; i < k && o + 8 < n; i++) o += (size_t)snprintf(buf + o, n - o, "%s%d", i ? "," : "", tp[i]);
}

static void degrees_str(char *buf, size_t n, const pt_sched_opts *so) {
    layout_str(buf, n, so->allowed_tp, so->n_allowed);
}

/* Share of the run each layout was in place (transformations apart), in
 * descending order: names[k] (room for PT_SCHED_MAX_DEVICES * 3 bytes),
 * share[k]; returns how many, the transforming share in *xf. */
typedef struct {
    char name[PT_SCHED_MAX_DEVICES * 3 + 1];
    double s;
} layout_share;

static int cmp_share(const void *a, const void *b) {
    double x = ((const layout_share *)a)->s, y = ((const layout_share *)b)->s;
    return (x < y) - (x > y);
}

static size_t layout_shares(const pt_sim_result *r, layout_share *out, size_t cap, double *xf) {
    size_t n = 0;
    double total = 0;
    *xf = 0;
    for (size_t i = 0; i < r->n_layouts; i++) {
        const pt_sim_layout *l = &r->layouts[i];
        double a = l->t < 0 ? 0 : l->t, b = i + 1 < r->n_layouts ? r->layouts[i + 1].t : r->t_end;
        double d = b > a ? b - a : 0;
        total += d;
        bool any = false;
        for (int k = 0; k < l->n_inst; k++) any |= l->transforming[k];
        if (any) {
            *xf += d;
            continue;
        }
        char name[sizeof(out->name)];
        layout_str(name, sizeof(name), l->tp, l->n_inst);
        size_t k = 0;
        while (k < n && strcmp(out[k].name, name) != 0) k++;
        if (k == n) {
            if (n == cap) continue;
            snprintf(out[n].name, sizeof(out[n].name), "%s", name);
            out[n++].s = 0;
        }
        out[k].s += d;
    }
    for (size_t k = 0; k < n && total > 0; k++) out[k].s /= total;
    if (total > 0) *xf /= total;
    qsort(out, n, sizeof(*out), cmp_share);
    return n;
}

/* The simulation's own members of the JSON report. */
static cJSON *sim_json(const sim_args *a, const pt_sim_result *r, const pt_sim_opts *so, const char *model_name,
                       const pt_sim_cluster *cl, const char *initial) {
    cJSON *x = cJSON_CreateObject();
    char buf[512];
    cJSON_AddStringToObject(x, "backend", "proteus-simulate");
    cJSON_AddStringToObject(x, "trace", a->trace);
    cJSON_AddNumberToObject(x, "num_prompts", (double)r->n);
    if (a->ro.rate > 0) {
        cJSON_AddNumberToObject(x, "request_rate", a->ro.rate);
        cJSON_AddNumberToObject(x, "burstiness", a->ro.burstiness);
    } else {
        cJSON_AddNumberToObject(x, "speedup", a->ro.speedup);
    }
    cJSON_AddStringToObject(x, "cluster", a->cluster);
    cJSON_AddNumberToObject(x, "devices", cl->n_devices);
    cJSON_AddStringToObject(x, "device", cl->name);
    cJSON_AddStringToObject(x, "model_id", model_name);
    cJSON_AddStringToObject(x, "policy", policy_name(so->sched.policy));
    cJSON_AddStringToObject(x, "initial_layout", initial);
    degrees_str(buf, sizeof(buf), &so->sched);
    cJSON_AddStringToObject(x, "allowed_tp", buf);
    cJSON_AddNumberToObject(x, "max_seqs", so->max_seqs);
    cJSON_AddNumberToObject(x, "max_batched_tokens", so->max_batched_tokens);
    cJSON_AddNumberToObject(x, "hysteresis_s", so->sched.hysteresis_s);
    cJSON *t = cJSON_AddObjectToObject(x, "transformations");
    cJSON_AddNumberToObject(t, "merge", (double)r->n_merge);
    cJSON_AddNumberToObject(t, "split", (double)r->n_split);
    cJSON_AddNumberToObject(t, "other", (double)r->n_other);
    uint64_t nx = r->n_merge + r->n_split + r->n_other;
    cJSON_AddNumberToObject(t, "mean_pause_ms", nx ? r->pause_sum_s / (double)nx * 1e3 : 0);
    cJSON_AddNumberToObject(t, "max_pause_ms", r->pause_max_s * 1e3);
    cJSON_AddNumberToObject(t, "bytes_moved", (double)r->bytes_moved);
    cJSON_AddNumberToObject(t, "invalid_plans", (double)r->n_invalid_plans);
    cJSON_AddNumberToObject(t, "returned_to_scheduler", (double)r->xform_returned);
    cJSON *lt = cJSON_AddArrayToObject(x, "layout_timeline");
    for (size_t i = 0; i < r->n_layouts; i++) {
        const pt_sim_layout *l = &r->layouts[i];
        cJSON *e = cJSON_CreateObject();
        cJSON_AddNumberToObject(e, "t", l->t);
        layout_str(buf, sizeof(buf), l->tp, l->n_inst);
        cJSON_AddStringToObject(e, "layout", buf);
        bool any = false;
        for (int k = 0; k < l->n_inst; k++) any |= l->transforming[k];
        cJSON_AddBoolToObject(e, "transforming", any);
        cJSON_AddItemToArray(lt, e);
    }
    layout_share sh[64];
    double xf;
    size_t nsh = layout_shares(r, sh, 64, &xf);
    cJSON *ts = cJSON_AddObjectToObject(x, "layout_time_share");
    for (size_t k = 0; k < nsh; k++) cJSON_AddNumberToObject(ts, sh[k].name, sh[k].s);
    cJSON_AddNumberToObject(ts, "transforming", xf);
    cJSON_AddNumberToObject(x, "held_requests", (double)r->held_requests);
    cJSON_AddNumberToObject(x, "mean_held_s", r->held_requests ? r->held_s / (double)r->held_requests : 0);
    cJSON *d = cJSON_AddObjectToObject(x, "scheduler_decisions");
    for (int k = 0; k < PT_SCHED_N_REASONS; k++) {
        snprintf(buf, sizeof(buf), "%s:%s", pt_sched_reason_decision((pt_sched_reason)k),
                 pt_sched_reason_name((pt_sched_reason)k));
        cJSON_AddNumberToObject(d, buf, (double)r->stats.by_reason[k]);
    }
    cJSON_AddNumberToObject(x, "preemptions", (double)r->preemptions);
    cJSON_AddNumberToObject(x, "rejected", (double)r->rejected);
    cJSON_AddNumberToObject(x, "unservable", (double)r->unservable);
    cJSON_AddNumberToObject(x, "unserved", (double)r->unserved);
    cJSON_AddBoolToObject(x, "token_times", so->token_times);
    cJSON_AddNumberToObject(x, "simulated_s", r->t_end);
    cJSON_AddNumberToObject(x, "wall_s", r->wall_s);
    cJSON_AddNumberToObject(x, "steps", (double)r->steps);
    cJSON_AddNumberToObject(x, "events", (double)r->events);
    return x;
}

static void print_sim(FILE *f, const pt_sim_result *r, const pt_sim_opts *so, const char *initial) {
    char buf[512];
    fputs("=============== Simulation ===============\n", f);
    fprintf(f, "%-40s%s\n", "Policy:", policy_name(so->sched.policy));
    fprintf(f, "%-40s%s\n", "Initial layout (TP per instance):", initial);
    const pt_sim_layout *last = &r->layouts[r->n_layouts - 1];
    layout_str(buf, sizeof(buf), last->tp, last->n_inst);
    fprintf(f, "%-40s%s\n", "Final layout:", buf);
    fprintf(f, "%-40s%llu merge, %llu split\n", "Transformations:", (unsigned long long)r->n_merge,
            (unsigned long long)r->n_split);
    uint64_t nx = r->n_merge + r->n_split + r->n_other;
    if (nx) {
        fprintf(f, "%-40s%.2f\n", "Mean pause (ms):", r->pause_sum_s / (double)nx * 1e3);
        fprintf(f, "%-40s%.2f\n", "Max pause (ms):", r->pause_max_s * 1e3);
        fprintf(f, "%-40s%.2f\n", "Moved (GiB):", (double)r->bytes_moved / (1ull << 30));
    }
    if (r->n_invalid_plans) fprintf(f, "%-40s%llu\n", "Plans not carried out:", (unsigned long long)r->n_invalid_plans);
    if (r->xform_returned)
        fprintf(f, "%-40s%llu\n", "Moved back to held (no target held it):", (unsigned long long)r->xform_returned);
    fprintf(f, "%-40s%llu\n", "Preemptions (recompute):", (unsigned long long)r->preemptions);
    fprintf(f, "%-40s%llu rejected, %llu over the pages, %llu never served\n", "Failed requests:",
            (unsigned long long)r->rejected, (unsigned long long)r->unservable, (unsigned long long)r->unserved);
    fprintf(f, "%-40s%llu requests, mean %.3f s held\n", "Held for a layout:", (unsigned long long)r->held_requests,
            r->held_requests ? r->held_s / (double)r->held_requests : 0.0);
    layout_share sh[64];
    double xf;
    size_t nsh = layout_shares(r, sh, 64, &xf);
    fputs("Time per layout:                        ", f);
    for (size_t k = 0; k < nsh && k < 6; k++) fprintf(f, "%s%s %.1f%%", k ? ", " : "", sh[k].name, 100 * sh[k].s);
    if (xf > 0) fprintf(f, "; transforming %.1f%%", 100 * xf);
    fputc('\n', f);
    fputs("Layout over time:\n", f);
    size_t shown = 0;
    for (size_t i = 0; i < r->n_layouts; i++) {
        const pt_sim_layout *l = &r->layouts[i];
        bool any = false;
        for (int k = 0; k < l->n_inst; k++) any |= l->transforming[k];
        if (shown == 12 && r->n_layouts > 14) {
            fprintf(f, "  ... %zu more changes (all in --json)\n", r->n_layouts - 13);
            i = r->n_layouts - 2;
            shown++;
            continue;
        }
        layout_str(buf, sizeof(buf), l->tp, l->n_inst);
        fprintf(f, "  %10.3f s  %s%s\n", l->t, buf, any ? "  (transforming)" : "");
        shown++;
    }
    fputs("Scheduler decisions:\n", f);
    for (int k = 0; k < PT_SCHED_N_REASONS; k++)
        if (r->stats.by_reason[k])
            fprintf(f, "  %-18s%-28s%llu\n", pt_sched_reason_decision((pt_sched_reason)k),
                    pt_sched_reason_name((pt_sched_reason)k), (unsigned long long)r->stats.by_reason[k]);
    if (!so->token_times)
        fprintf(f, "%-40s%s\n", "Token times:", "not kept (ITL and peak output throughput above are not measured)");
    fprintf(f, "%-40s%.1f s in %.3f s wall (%.0fx), %llu steps, %llu events\n", "Simulated:", r->t_end, r->wall_s,
            r->wall_s > 0 ? r->t_end / r->wall_s : 0.0, (unsigned long long)r->steps, (unsigned long long)r->events);
    fputs("==========================================\n", f);
}

int cmd_simulate(int argc, char **argv) {
    sim_args a;
    int prc = parse_args(&a, argc, argv);
    if (prc >= 0) return prc;
    pt_err err = {{0}};
    int rc = CLI_FAIL;

    pt_sim_cluster cl;
    int crc = pt_sim_cluster_parse(&cl, a.cluster, &err);
    if (crc != 0) { /* a bad NxDEVICE is a usage error, a bad file a failure */
        fprintf(stderr, "proteus simulate: %s\n", err.msg);
        return crc == PT_ERR_INVALID ? CLI_USAGE : CLI_FAIL;
    }
    pt_sim_model model;
    bool have_model = false;
    if (a.model) {
        int mrc = pt_sim_model_resolve(&model, a.model, &err);
        if (mrc != 0) {
            fprintf(stderr, "proteus simulate: %s\n", err.msg);
            return mrc == PT_ERR_INVALID ? CLI_USAGE : CLI_FAIL;
        }
        have_model = true;
    }
    /* The allowed degrees: by default powers of two up to the devices (and
     * the model's KV heads, which a degree must not exceed). */
    pt_cost_model cm;
    if (a.cost) {
        if (pt_cost_load(&cm, a.cost, &err) != 0) {
            fprintf(stderr, "proteus simulate: %s\n", err.msg);
            return CLI_FAIL;
        }
    }
    uint32_t kv_heads = a.cost ? cm.n_kv_heads : model.shape.n_kv_heads;
    if (!a.allowed_given) {
        a.so.sched.n_allowed = 0;
        for (int d = 1; d <= cl.n_devices && d <= (int)kv_heads && a.so.sched.n_allowed < 8; d *= 2)
            if (!a.cost || cm.tp[d].valid) a.so.sched.allowed_tp[a.so.sched.n_allowed++] = d;
    } else {
        for (int i = 0; i < a.so.sched.n_allowed; i++)
            if (a.so.sched.allowed_tp[i] > cl.n_devices) {
                fprintf(stderr, "proteus simulate: --allowed-tp: %d is more than the cluster's %d devices\n",
                        a.so.sched.allowed_tp[i], cl.n_devices);
                return CLI_USAGE;
            }
    }
    if (a.so.sched.n_allowed == 0) {
        fprintf(stderr, "proteus simulate: no TP degree to use (the cost file models none up to %d devices)\n",
                cl.n_devices);
        return CLI_FAIL;
    }
    if (!a.cost && pt_cost_roofline(&cm, &model.shape, &cl.dev, 16, a.so.sched.allowed_tp, a.so.sched.n_allowed,
                                     &err) != 0) {
        fprintf(stderr, "proteus simulate: %s\n", err.msg);
        return CLI_FAIL;
    }
    if (a.save_cost && pt_cost_save(&cm, a.save_cost, &err) != 0) {
        fprintf(stderr, "proteus simulate: %s\n", err.msg);
        return CLI_FAIL;
    }
    const char *model_name = have_model ? model.name : a.cost;

    pt_trace trace = {0};
    pt_trace_opts to = {.format = a.format, .strict = a.strict, .burstgpt_model = a.burstgpt_model};
    if (pt_trace_load(&trace, a.trace, &to, &err) != 0) {
        fprintf(stderr, "proteus simulate: %s\n", err.msg);
        return CLI_FAIL;
    }
    for (size_t i = 0; i < trace.n_warnings && i < 5; i++)
        fprintf(stderr, "proteus simulate: warning: %s\n", trace.warnings[i]);
    if (trace.n_skipped) fprintf(stderr, "proteus simulate: %zu malformed rows skipped\n", trace.n_skipped);
    if (a.clip_to_context) a.ro.context_len = cm.max_ctx;
    pt_replay_plan plan = {0};
    int *layouts = NULL;
    char *json = NULL;
    cJSON *sweep_json = NULL;
    pt_sim_result res = {0};
    if (pt_replay_plan_build(&plan, &trace, &a.ro, &err) != 0) {
        fprintf(stderr, "proteus simulate: %s\n", err.msg);
        goto out;
    }
    uint64_t total_out = 0;
    for (size_t i = 0; i < plan.n; i++) total_out += plan.reqs[i].output_len;
    a.so.token_times = !a.no_itl && total_out <= TOKEN_TIMES_AUTO_MAX;
    if (!a.no_itl && !a.so.token_times)
        fprintf(stderr, "proteus simulate: %llu output tokens: token times not kept (ITL not reported)\n",
                (unsigned long long)total_out);
    if (a.so.n_layout && pt_sim_check_layout(&cm, &a.so.sched, cl.n_devices, a.so.layout, a.so.n_layout, &err) != 0) {
        fprintf(stderr, "proteus simulate: --layout: %s\n", err.msg);
        rc = CLI_USAGE;
        goto out;
    }
    char degrees[64];
    degrees_str(degrees, sizeof(degrees), &a.so.sched);
    fprintf(stderr, "proteus simulate: %zu requests (+%zu warmup) from %s, %d x %s, model %s, ", plan.n - plan.n_warmup,
            plan.n_warmup, a.trace, cl.n_devices, cl.name, model_name);
    if (a.ro.rate > 0) fprintf(stderr, "%g req/s, burstiness %g\n", a.ro.rate, a.ro.burstiness);
    else fprintf(stderr, "trace times / %g\n", a.ro.speedup);

    if (!a.sweep) {
        if (pt_sim_run(&res, &a.so, &cm, cl.n_devices, plan.reqs, plan.n, &err) != 0) {
            fprintf(stderr, "proteus simulate: %s\n", err.msg);
            rc = err.msg[0] && strstr(err.msg, "scheduler:") ? CLI_USAGE : CLI_FAIL;
            goto out;
        }
        char initial[256];
        layout_str(initial, sizeof(initial), res.layouts[0].tp, res.layouts[0].n_inst);
        pt_bench_report rep;
        pt_bench_report_compute(&rep, res.recs, res.n, &a.slo);
        char title[320];
        snprintf(title, sizeof(title), "Simulated: %d x %s, %s, %s", cl.n_devices, cl.name, model_name,
                 policy_name(a.so.sched.policy));
        pt_bench_report_print(stdout, &rep, title);
        print_sim(stdout, &res, &a.so, initial);
        fflush(stdout);
        rc = CLI_OK;
        if (a.json) {
            cJSON *x = sim_json(&a, &res, &a.so, model_name, &cl, initial);
            char *extra = cJSON_PrintUnformatted(x);
            cJSON_Delete(x);
            json = extra ? pt_bench_report_json(&rep, extra) : NULL;
            free(extra);
            if (!json || write_file(a.json, json, &err) != 0) {
                fprintf(stderr, "proteus simulate: %s\n", json ? err.msg : "cannot build the JSON report");
                rc = CLI_FAIL;
            }
        }
        if (a.csv && pt_bench_write_csv(a.csv, res.recs, res.n, &err) != 0) {
            fprintf(stderr, "proteus simulate: %s\n", err.msg);
            rc = CLI_FAIL;
        }
        if (a.plot && pt_sim_write_svg(a.plot, &res, cl.n_devices, title, &err) != 0) {
            fprintf(stderr, "proteus simulate: %s\n", err.msg);
            rc = CLI_FAIL;
        }
        goto out;
    }

    /* --sweep: every static layout, then dynamic. */
    size_t n_layouts = 0;
    pt_sim_static_layouts(&cm, &a.so.sched, cl.n_devices, &layouts, &n_layouts);
    if (a.json) sweep_json = cJSON_CreateArray();
    printf("Simulated: %d x %s, %s, %s (%zu requests)%s%s\n", cl.n_devices, cl.name, model_name, a.trace,
           plan.n - plan.n_warmup, a.slo.ttft_ms > 0 || a.slo.tpot_ms > 0 ? ", goodput SLO" : "", "");
    if (a.slo.ttft_ms > 0) printf("  SLO TTFT %.0f ms", a.slo.ttft_ms);
    if (a.slo.tpot_ms > 0) printf("  SLO TPOT %.0f ms", a.slo.tpot_ms);
    if (a.slo.e2el_ms > 0) printf("  SLO E2EL %.0f ms", a.slo.e2el_ms);
    printf("\n%-18s %8s %9s %9s %9s %9s %9s %9s %9s %6s %6s %7s\n", "layout", "req/s", "out tok/s", "goodput",
           "TTFT ms", "p99 TTFT", "TPOT ms", "p99 TPOT", "preempt", "xform", "failed", "wall s");
    double best_static = -1;
    char best_name[64] = "";
    double dyn_goodput = -1;
    for (size_t k = 0; k <= n_layouts; k++) {
        pt_sim_opts so = a.so;
        char name[64];
        if (k < n_layouts) {
            so.sched.policy = PT_SCHED_STATIC;
            so.n_layout = 0;
            for (int i = 0; i < cl.n_devices && layouts[k * (size_t)cl.n_devices + i]; i++)
                so.layout[so.n_layout++] = layouts[k * (size_t)cl.n_devices + i];
            layout_str(name, sizeof(name), so.layout, so.n_layout);
        } else {
            so.sched.policy = PT_SCHED_DYNAMIC;
            so.n_layout = 0;
            snprintf(name, sizeof(name), "dynamic");
        }
        pt_sim_result_free(&res);
        if (pt_sim_run(&res, &so, &cm, cl.n_devices, plan.reqs, plan.n, &err) != 0) {
            fprintf(stderr, "proteus simulate: %s: %s\n", name, err.msg);
            goto out;
        }
        pt_bench_report rep;
        pt_bench_report_compute(&rep, res.recs, res.n, &a.slo);
        printf("%-18s %8.3f %9.1f %9.3f %9.1f %9.1f %9.2f %9.2f %9llu %6llu %6zu %7.2f\n", name, rep.request_throughput,
               rep.output_throughput, rep.goodput, rep.ttft_ms.mean, rep.ttft_ms.p99, rep.tpot_ms.mean, rep.tpot_ms.p99,
               (unsigned long long)res.preemptions, (unsigned long long)(res.n_merge + res.n_split + res.n_other),
               rep.failed, res.wall_s);
        fflush(stdout);
        if (k < n_layouts && rep.goodput > best_static) {
            best_static = rep.goodput;
            snprintf(best_name, sizeof(best_name), "%s", name);
        }
        if (k == n_layouts) dyn_goodput = rep.goodput;
        if (sweep_json) {
            char initial[256];
            layout_str(initial, sizeof(initial), res.layouts[0].tp, res.layouts[0].n_inst);
            cJSON *x = sim_json(&a, &res, &so, model_name, &cl, initial);
            char *extra = cJSON_PrintUnformatted(x);
            cJSON_Delete(x);
            char *one = extra ? pt_bench_report_json(&rep, extra) : NULL;
            free(extra);
            cJSON *item = one ? cJSON_Parse(one) : NULL;
            free(one);
            if (item) cJSON_AddItemToArray(sweep_json, item);
        }
    }
    if (best_static >= 0 && dyn_goodput >= 0)
        printf("dynamic / best static (%s) goodput: %.2fx\n", best_name,
               best_static > 0 ? dyn_goodput / best_static : 0.0);
    rc = CLI_OK;
    if (sweep_json) {
        cJSON *root = cJSON_CreateObject();
        cJSON_AddItemToObject(root, "runs", sweep_json);
        sweep_json = NULL;
        json = cJSON_Print(root);
        cJSON_Delete(root);
        if (!json || write_file(a.json, json, &err) != 0) {
            fprintf(stderr, "proteus simulate: %s\n", json ? err.msg : "cannot build the JSON report");
            rc = CLI_FAIL;
        }
    }
out:
    cJSON_Delete(sweep_json);
    free(json);
    free(layouts);
    pt_sim_result_free(&res);
    pt_replay_plan_free(&plan);
    pt_trace_free(&trace);
    return rc;
}
