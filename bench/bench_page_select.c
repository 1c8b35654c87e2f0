/* Query-aware page selection on the CPU engine: what it costs in accuracy
 * and what it saves in time, against dense attention on the same inputs
 * (DESIGN.md section 5). Not a test: it prints measurements.
 *
 *   build/bench_page_select [-m MODEL] [--text FILE] [--prefix N] [--eval N]
 *                           [--budgets B1,B2,...] [-t THREADS] [--passkey N]
 *
 * 1. Long text (default: /usr/share/common-licenses/GPL-3 followed by the
 *    other license texts there, until prefix + eval tokens): the first
 *    `prefix` tokens are prefilled (dense, as always), then the next `eval`
 *    tokens are fed one decode step at a time (teacher forcing). For dense
 *    attention and each budget it reports perplexity over those tokens, the
 *    share of steps whose top-1 token equals dense's, and the mean decode
 *    step time.
 * 2. Passkey retrieval (--passkey N trials, default 10): a 5-digit key hidden
 *    at a random depth of ~prefix tokens of filler; the model is asked for it
 *    and greedy-decodes 8 tokens; success = the key's digits appear. Dense and
 *    each budget see the same prompts. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proteus/engine.h"
#include "proteus/tokenizer.h"
#include "proteus/util.h"

#define MAX_BUDGETS 8

static const char *DEFAULT_TEXTS[] = {"/usr/share/common-licenses/GPL-3", "/usr/share/common-licenses/GFDL-1.3",
                                      "/usr/share/common-licenses/LGPL-3", "/usr/share/common-licenses/Apache-2.0",
                                      "/usr/share/common-licenses/MPL-2.0", NULL};

static pt_engine *open_engine(pt_model_file *mf, int threads, uint32_t max_ctx, uint32_t budget) {
    pt_engine_opts o;
    pt_engine_opts_default(&o);
    o.n_threads = threads;
    o.max_ctx = max_ctx;
    o.max_seqs = 1;
    o.max_batch_tokens = 512;
    o.kv_dtype = PT_DTYPE_F16;
    o.select_budget = budget;
    pt_err err = {{0}};
    pt_engine *e = NULL;
    if (pt_engine_create(&e, mf, &o, &err) != 0) {
        fprintf(stderr, "bench_page_select: %s\n", err.msg);
        exit(1);
    }
    return e;
}

static void prefill(pt_engine *e, int seq, const int32_t *ids, size_t n, float *logits) {
    pt_err err = {{0}};
    for (size_t i = 0; i < n; i += 512) {
        uint32_t m = (uint32_t)(n - i < 512 ? n - i : 512);
        pt_batch_entry b = {seq, ids + i, m, i + m == n ? logits : NULL, false, false};
        if (pt_engine_step(e, &b, 1, &err) != 0) {
            fprintf(stderr, "bench_page_select: %s\n", err.msg);
            exit(1);
        }
    }
}

static int32_t argmax(const float *l, uint32_t V) {
    int32_t b = 0;
    for (uint32_t v = 1; v < V; v++)
        if (l[v] > l[b]) b = (int32_t)v;
    return b;
}

static double log_softmax_at(const float *l, uint32_t V, int32_t id) {
    float mx = l[0];
    for (uint32_t v = 1; v < V; v++) mx = l[v] > mx ? l[v] : mx;
    double s = 0;
    for (uint32_t v = 0; v < V; v++) s += exp((double)l[v] - mx);
    return (double)l[id] - mx - log(s);
}

typedef struct {
    double ppl, agree, ms_per_step;
} text_result;

/* Teacher-forced decode over ids[prefix, prefix + eval); top1 receives each
 * step's argmax (dense run) or is compared with it (budget runs). */
static text_result eval_text(pt_model_file *mf, int threads, uint32_t budget, const int32_t *ids, size_t prefix,
                             size_t eval, int32_t *top1, bool record) {
    uint32_t V = mf->config.vocab_size;
    pt_engine *e = open_engine(mf, threads, (uint32_t)(prefix + eval + 1), budget);
    float *logits = malloc((size_t)V * sizeof(float));
    int seq = pt_engine_seq_new(e);
    prefill(e, seq, ids, prefix, logits);
    double nll = 0, t = 0;
    size_t agree = 0;
    pt_err err = {{0}};
    for (size_t i = 0; i < eval; i++) {
        int32_t next = ids[prefix + i];
        nll -= log_softmax_at(logits, V, next);
        int32_t best = argmax(logits, V);
        if (record) top1[i] = best;
        agree += top1[i] == best;
        pt_batch_entry b = {seq, &next, 1, logits, false, false};
        double t0 = pt_now();
        if (pt_engine_step(e, &b, 1, &err) != 0) {
            fprintf(stderr, "bench_page_select: %s\n", err.msg);
            exit(1);
        }
        t += pt_now() - t0;
    }
    free(logits);
    pt_engine_free(e);
    return (text_result){exp(nll / (double)eval), (double)agree / (double)eval, 1e3 * t / (double)eval};
}

/* Filler sentences, the key at a given depth, then the question. */
static char *passkey_prompt(size_t n_filler, size_t depth, unsigned key) {
    static const char *intro = "There is an important pass key hidden inside a lot of irrelevant text. Find it and "
                               "memorize it. I will quiz you about the pass key.\n";
    static const char *filler = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back "
                                "again.\n";
    size_t cap = strlen(intro) + n_filler * strlen(filler) + 256;
    char *s = malloc(cap), *p = s;
    p += sprintf(p, "%s", intro);
    for (size_t i = 0; i < n_filler; i++) {
        if (i == depth) p += sprintf(p, "The pass key is %05u. Remember it. %05u is the pass key.\n", key, key);
        p += sprintf(p, "%s", filler);
    }
    sprintf(p, "What is the pass key? The pass key is");
    return s;
}

static bool passkey_trial(pt_model_file *mf, const pt_tokenizer *tok, int threads, uint32_t budget, const char *prompt,
                          unsigned key) {
    pt_err err = {{0}};
    int32_t *ids = NULL;
    size_t n = 0;
    if (pt_tokenizer_encode(tok, prompt, strlen(prompt), pt_tokenizer_add_bos(tok), false, &ids, &n, &err) != 0) {
        fprintf(stderr, "bench_page_select: %s\n", err.msg);
        exit(1);
    }
    uint32_t V = mf->config.vocab_size;
    pt_engine *e = open_engine(mf, threads, (uint32_t)n + 16, budget);
    float *logits = malloc((size_t)V * sizeof(float));
    int seq = pt_engine_seq_new(e);
    prefill(e, seq, ids, n, logits);
    int32_t out[8];
    for (int i = 0; i < 8; i++) {
        out[i] = argmax(logits, V);
        pt_batch_entry b = {seq, &out[i], 1, logits, false, false};
        if (pt_engine_step(e, &b, 1, &err) != 0) break;
    }
    char *text = NULL;
    size_t len = 0;
    pt_tokenizer_decode(tok, out, 8, true, &text, &len);
    char want[8];
    snprintf(want, sizeof(want), "%05u", key);
    bool ok = text && strstr(text, want) != NULL;
    free(text);
    free(logits);
    free(ids);
    pt_engine_free(e);
    return ok;
}

int main(int argc, char **argv) {
    const char *model = getenv("PROTEUS_DEFAULT_MODEL"), *text_path = NULL;
    size_t prefix = 2048, eval = 1024, n_budgets = 0;
    uint32_t budgets[MAX_BUDGETS];
    int threads = 2, passkeys = 10;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) {
            fprintf(stderr, "bench_page_select: %s needs a value (see the comment at the top of the source)\n", a);
            return 2;
        }
        i++;
        if (!strcmp(a, "-m")) model = v;
        else if (!strcmp(a, "--text")) text_path = v;
        else if (!strcmp(a, "--prefix")) prefix = strtoul(v, NULL, 10);
        else if (!strcmp(a, "--eval")) eval = strtoul(v, NULL, 10);
        else if (!strcmp(a, "-t")) threads = atoi(v);
        else if (!strcmp(a, "--passkey")) passkeys = atoi(v);
        else if (!strcmp(a, "--budgets")) {
            for (char *s = (char *)v; *s && n_budgets < MAX_BUDGETS;) {
                budgets[n_budgets++] = (uint32_t)strtoul(s, &s, 10);
                if (*s == ',') s++;
            }
        } else {
            fprintf(stderr, "bench_page_select: unknown option %s\n", a);
            return 2;
        }
    }
    if (!n_budgets) budgets[n_budgets++] = 256, budgets[n_budgets++] = 512, budgets[n_budgets++] = 1024;
    if (!model || threads < 1 || prefix < 1 || eval < 1) {
        fprintf(stderr, "bench_page_select: give -m MODEL (or set PROTEUS_DEFAULT_MODEL)\n");
        return 2;
    }
    pt_model_file mf;
    pt_tokenizer *tok = NULL;
    pt_err err = {{0}};
    if (pt_model_file_open(&mf, model, &err) != 0 || pt_tokenizer_load(&tok, &mf, &err) != 0) {
        fprintf(stderr, "bench_page_select: %s\n", err.msg);
        return 1;
    }

    /* The text: the given file, or the license texts one after another. */
    size_t cap = 0, len = 0;
    char *text = NULL;
    const char *one[2] = {text_path, NULL};
    for (const char **p = text_path ? one : DEFAULT_TEXTS; *p; p++) {
        size_t n = 0;
        char *t = pt_read_file(*p, &n);
        if (!t) continue;
        if (len + n + 2 > cap) text = realloc(text, cap = len + n + 2);
        memcpy(text + len, t, n);
        len += n;
        text[len++] = '\n';
        text[len] = 0;
        free(t);
    }
    int32_t *ids = NULL;
    size_t n_ids = 0;
    if (!text || pt_tokenizer_encode(tok, text, len, pt_tokenizer_add_bos(tok), false, &ids, &n_ids, &err) != 0) {
        fprintf(stderr, "bench_page_select: cannot read the text\n");
        return 1;
    }
    if (n_ids < prefix + eval) {
        fprintf(stderr, "bench_page_select: the text has %zu tokens, fewer than --prefix + --eval = %zu\n", n_ids,
                prefix + eval);
        return 1;
    }
    printf("model %s, %d threads, page 16, f16 KV, dense layers 2\n", model, threads);
    printf("text: %zu tokens; prefill %zu (dense), then %zu teacher-forced decode steps at contexts %zu..%zu\n\n", n_ids,
           prefix, eval, prefix, prefix + eval - 1);
    printf("%-8s %10s %8s %13s %13s %9s\n", "budget", "perplexity", "d ppl", "top-1 = dense", "ms / step", "speedup");
    int32_t *top1 = malloc(eval * sizeof(int32_t));
    text_result dense = eval_text(&mf, threads, 0, ids, prefix, eval, top1, true);
    printf("%-8s %10.4f %8s %13s %13.2f %9s\n", "dense", dense.ppl, "", "", dense.ms_per_step, "1.00");
    for (size_t b = 0; b < n_budgets; b++) {
        text_result r = eval_text(&mf, threads, budgets[b], ids, prefix, eval, top1, false);
        printf("%-8u %10.4f %+8.4f %12.1f%% %13.2f %9.2f\n", budgets[b], r.ppl, r.ppl - dense.ppl, 100 * r.agree,
               r.ms_per_step, dense.ms_per_step / r.ms_per_step);
        fflush(stdout);
    }
    free(top1);

    if (passkeys > 0) {
        /* ~prefix tokens of filler: each filler line is about 24 tokens. */
        size_t n_filler = prefix / 24;
        pt_rng rng;
        pt_rng_seed(&rng, 12345);
        int ok_dense = 0, ok[MAX_BUDGETS] = {0};
        for (int t = 0; t < passkeys; t++) {
            unsigned key = (unsigned)(pt_rng_next(&rng) % 100000);
            size_t depth = (size_t)(pt_rng_next(&rng) % n_filler);
            char *prompt = passkey_prompt(n_filler, depth, key);
            ok_dense += passkey_trial(&mf, tok, threads, 0, prompt, key);
            for (size_t b = 0; b < n_budgets; b++) ok[b] += passkey_trial(&mf, tok, threads, budgets[b], prompt, key);
            free(prompt);
        }
        printf("\npasskey retrieval, %d trials at ~%zu tokens, key at a random depth:\n", passkeys, prefix);
        printf("  dense %d/%d", ok_dense, passkeys);
        for (size_t b = 0; b < n_budgets; b++) printf(", budget %u: %d/%d", budgets[b], ok[b], passkeys);
        printf("\n");
    }
    free(ids);
    free(text);
    pt_tokenizer_free(tok);
    pt_model_file_close(&mf);
    return 0;
}
