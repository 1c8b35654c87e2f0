/* proteus perf: prompt processing and generation speed on one model, as the
 * side-by-side benchmark in bench/ reads it. With --depth N a sequence first
 * holds N tokens of context (evaluated untimed, as llama-bench -d does);
 * then prompt processing evaluates --pp tokens in steps of --ubatch tokens
 * (logits of the last only), and generation runs --tg single-token steps,
 * each feeding back the argmax. Prints one JSON line. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cpu/kcpu_matmul.h"
#include "proteus/engine.h"

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void usage(FILE *f) {
    fputs("usage: proteus perf [-m MODEL] [-t THREADS] [--tp N] [--device D] [--pp N] [--tg N] [--depth N]\n"
          "                    [--ubatch N] [--kv-dtype T] [--reps N]\n"
          "  -m MODEL     GGUF file, Hugging Face directory or synthetic:<shape> (default: the default model)\n"
          "  -t THREADS   threads per rank (default: all cores)\n"
          "  --tp N       tensor-parallel ranks (default 1)\n"
          "  --device D   cpu | cuda | cuda:N (default cpu)\n"
          "  --pp N       prompt tokens evaluated in one step (default 512)\n"
          "  --tg N       generated tokens, one step each (default 128)\n"
          "  --depth N    tokens of context already in the sequence when timing starts (default 0)\n"
          "  --ubatch N   prompt tokens per step, as llama-bench -ub (default: the whole prompt in one step)\n"
          "  --kv-dtype T KV cache element type: f32, f16 or bf16 (default: the engine's)\n"
          "  --reps N     repetitions; the median is reported (default 3)\n",
          f);
}

int cmd_perf(int argc, char **argv) {
    const char *model = NULL;
    long threads = cli_default_threads(), tp = 1, pp = 512, tg = 128, depth = 0, ubatch = 0, reps = 3;
    const char *kv_dtype = NULL;
    int device = PT_DEVICE_CPU, device_index = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return CLI_OK;
        } else if (!strcmp(a, "-m") && v) {
            model = v, i++;
        } else if (!strcmp(a, "-t") && v) {
            if (!cli_parse_long(a, v, 1, 1024, &threads)) return CLI_USAGE;
            i++;
        } else if (!strcmp(a, "--tp") && v) {
            if (!cli_parse_long(a, v, 1, 64, &tp)) return CLI_USAGE;
            i++;
        } else if (!strcmp(a, "--device") && v) {
            if (!cli_parse_device(a, v, &device, &device_index)) return CLI_USAGE;
            i++;
        } else if (!strcmp(a, "--pp") && v) {
            if (!cli_parse_long(a, v, 1, 1 << 16, &pp)) return CLI_USAGE;
            i++;
        } else if (!strcmp(a, "--tg") && v) {
            if (!cli_parse_long(a, v, 0, 1 << 16, &tg)) return CLI_USAGE;
            i++;
        } else if (!strcmp(a, "--depth") && v) {
            if (!cli_parse_long(a, v, 0, 1 << 20, &depth)) return CLI_USAGE;
            i++;
        } else if (!strcmp(a, "--ubatch") && v) {
            if (!cli_parse_long(a, v, 1, 1 << 16, &ubatch)) return CLI_USAGE;
            i++;
        } else if (!strcmp(a, "--kv-dtype") && v) {
            kv_dtype = v, i++;
        } else if (!strcmp(a, "--reps") && v) {
            if (!cli_parse_long(a, v, 1, 1000, &reps)) return CLI_USAGE;
            i++;
        } else {
            fprintf(stderr, "proteus perf: unknown or incomplete option '%s'\n", a);
            usage(stderr);
            return CLI_USAGE;
        }
    }
    const char *path = cli_model_path(model);
    pt_model_file mf;
    pt_err err = {{0}};
    if (pt_model_file_open(&mf, path, &err) != 0) {
        fprintf(stderr, "proteus: %s\n", err.msg);
        return CLI_FAIL;
    }
    pt_engine_opts o;
    pt_engine_opts_default(&o);
    o.n_threads = (int)threads;
    o.tp = (int)tp;
    o.device = (pt_device_kind)device;
    o.device_index = device_index;
    o.max_seqs = 1;
    if (kv_dtype && !strcmp(kv_dtype, "f32")) o.kv_dtype = PT_DTYPE_F32;
    else if (kv_dtype && !strcmp(kv_dtype, "f16")) o.kv_dtype = PT_DTYPE_F16;
    else if (kv_dtype && !strcmp(kv_dtype, "bf16")) o.kv_dtype = PT_DTYPE_BF16;
    else if (kv_dtype) {
        fprintf(stderr, "proteus perf: --kv-dtype must be f32, f16 or bf16, not '%s'\n", kv_dtype);
        pt_model_file_close(&mf);
        return CLI_USAGE;
    }
    if (!ubatch) ubatch = pp;
    o.max_batch_tokens = (uint32_t)ubatch;
    o.max_ctx = (uint32_t)(depth + pp + tg + 1);
    if (mf.config.max_ctx && o.max_ctx > mf.config.max_ctx) {
        /* llama-bench measures past the trained context too; the speed is what is asked for here. */
        fprintf(stderr, "proteus perf: %u tokens of context exceed the model's %u: timed anyway, outputs are "
                        "meaningless there\n", o.max_ctx, mf.config.max_ctx);
        o.ctx_beyond_model = true;
    }
    pt_engine *e = NULL;
    if (pt_engine_create(&e, &mf, &o, &err) != 0) {
        fprintf(stderr, "proteus: %s\n", err.msg);
        pt_model_file_close(&mf);
        return CLI_FAIL;
    }
    uint32_t V = mf.config.vocab_size;
    long n_tok = depth + pp; /* context, then the timed prompt */
    int32_t *prompt = malloc((size_t)n_tok * sizeof(int32_t));
    float *logits = malloc((size_t)V * sizeof(float));
    double *pp_s = calloc((size_t)reps, sizeof(double)), *tg_s = calloc((size_t)reps, sizeof(double));
    pt_rng rng;
    pt_rng_seed(&rng, 42);
    for (long i = 0; i < n_tok; i++) prompt[i] = (int32_t)(pt_rng_next(&rng) % V);
    int rc = CLI_OK;
    /* One warm-up round (page faults of the mapping, thread start-up), then reps. */
    for (long r = -1; r < reps && rc == CLI_OK; r++) {
        int s = pt_engine_seq_new(e);
        /* Context steps (untimed), then the timed prompt's steps. */
        double t0 = pt_now();
        for (long at = 0; at < n_tok && rc == CLI_OK;) {
            long stop = at < depth ? depth : n_tok;
            long end = at + ubatch < stop ? at + ubatch : stop;
            pt_batch_entry c = {s, prompt + at, (uint32_t)(end - at), end == n_tok ? logits : NULL, false, true};
            if (pt_engine_step(e, &c, 1, &err) != 0) rc = CLI_FAIL;
            at = end;
            if (at == depth) t0 = pt_now();
        }
        double t1 = pt_now();
        for (long g = 0; g < tg && rc == CLI_OK; g++) {
            int32_t best = 0;
            for (uint32_t v = 1; v < V; v++)
                if (logits[v] > logits[best]) best = (int32_t)v;
            pt_batch_entry d = {s, &best, 1, logits, false, false};
            if (pt_engine_step(e, &d, 1, &err) != 0) rc = CLI_FAIL;
        }
        double t2 = pt_now();
        pt_engine_seq_free(e, s);
        if (r >= 0) {
            pp_s[r] = t1 - t0;
            tg_s[r] = t2 - t1;
        }
    }
    if (rc != CLI_OK) {
        fprintf(stderr, "proteus: %s\n", err.msg);
    } else {
        qsort(pp_s, (size_t)reps, sizeof(double), cmp_double);
        qsort(tg_s, (size_t)reps, sizeof(double), cmp_double);
        double pps = pp_s[reps / 2], tgs = tg_s[reps / 2];
        printf("{\"model\":\"%s\",\"threads\":%ld,\"tp\":%ld,\"isa\":\"%s\",\"kv_dtype\":\"%s\",\"depth\":%ld,"
               "\"pp_tokens\":%ld,\"pp_tok_s\":%.2f,\"tg_tokens\":%ld,\"tg_tok_s\":%.2f}\n",
               path, threads, tp, kcpu_isa_name(kcpu_isa_active()), pt_dtype_name(o.kv_dtype), depth, pp, pp / pps,
               tg, tg ? tg / tgs : 0.0);
    }
    free(prompt);
    free(logits);
    free(pp_s);
    free(tg_s);
    pt_engine_free(e);
    pt_model_file_close(&mf);
    return rc;
}
