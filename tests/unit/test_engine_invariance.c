/* Deterministic numerics (DESIGN.md section 3): a sequence's logits are the
 * same bits whatever else shares its batch, however its prompt is chunked,
 * however many threads run it, and at any TP degree. Checked on synthetic
 * models (always) and the default model (when present). */
#include <stdlib.h>

#include "proteus/engine.h"
#include "test.h"

static const char *models[] = {"synthetic:tiny-llama", "synthetic:tiny-qwen2:q8_0", "synthetic:tiny-llama:q4_1",
                               NULL /* default model, filled in main */};
static const char *model_path;

static void make_prompt(int32_t *t, uint32_t n, uint32_t vocab, uint32_t seed) {
    for (uint32_t i = 0; i < n; i++) t[i] = (int32_t)((seed * 2654435761u + i * 40503u) % vocab);
}

static pt_dtype kv_dtype = PT_DTYPE_F32;

static pt_engine *open_engine(pt_model_file *mf, int tp, int threads) {
    pt_engine_opts o;
    pt_engine_opts_default(&o);
    o.kv_dtype = kv_dtype;
    o.tp = tp;
    o.n_threads = threads;
    o.max_ctx = 256;
    o.max_seqs = 8;
    o.max_batch_tokens = 64;
    pt_err err = {{0}};
    pt_engine *e = NULL;
    int rc = pt_engine_create(&e, mf, &o, &err);
    CHECK_MSG(rc == 0, "%s", err.msg);
    return e;
}

/* Prefill `n` prompt tokens in chunks of `chunk`, then `gen` greedy steps;
 * returns the logits after the prompt and after each step in out. */
static void run_alone(pt_engine *e, const int32_t *prompt, uint32_t n, uint32_t chunk, int gen, float *out) {
    uint32_t V = pt_engine_config(e)->vocab_size;
    pt_err err = {{0}};
    int s = pt_engine_seq_new(e);
    for (uint32_t i = 0; i < n; i += chunk) {
        uint32_t m = n - i < chunk ? n - i : chunk;
        pt_batch_entry b = {s, prompt + i, m, i + m == n ? out : NULL, false, false};
        CHECK_MSG(pt_engine_step(e, &b, 1, &err) == 0, "%s", err.msg);
    }
    for (int g = 0; g < gen; g++) {
        const float *l = out + (size_t)g * V;
        int32_t best = 0;
        for (uint32_t v = 1; v < V; v++)
            if (l[v] > l[best]) best = (int32_t)v;
        pt_batch_entry b = {s, &best, 1, out + (size_t)(g + 1) * V, false, false};
        CHECK_MSG(pt_engine_step(e, &b, 1, &err) == 0, "%s", err.msg);
    }
    pt_engine_seq_free(e, s);
}

static void check_model(const char *path) {
    pt_model_file mf;
    pt_err err = {{0}};
    if (pt_model_file_open(&mf, path, &err) != 0) {
        CHECK_MSG(0, "%s", err.msg);
        return;
    }
    uint32_t V = mf.config.vocab_size;
    enum { N = 37, GEN = 5 };
    int32_t prompt[N], other[N];
    make_prompt(prompt, N, V, 1);
    make_prompt(other, N, V, 2);
    size_t sz = (size_t)(GEN + 1) * V;
    float *ref = calloc(sz, sizeof(float)), *got = calloc(sz, sizeof(float));
    float *junk = calloc(sz, sizeof(float));

    pt_engine *e = open_engine(&mf, 1, 1);
    if (!e) goto done;
    run_alone(e, prompt, N, N, GEN, ref);

    /* Chunked prefill: 1, 5 and 16 tokens per step. */
    uint32_t chunks[] = {1, 5, 16};
    for (int c = 0; c < 3; c++) {
        run_alone(e, prompt, N, chunks[c], GEN, got);
        CHECK_MSG(memcmp(ref, got, sz * sizeof(float)) == 0, "%s: chunk %u differs", path, chunks[c]);
    }

    /* Batched with two other sequences: one mid-prefill, one decoding. */
    {
        int a = pt_engine_seq_new(e), b = pt_engine_seq_new(e), c = pt_engine_seq_new(e);
        pt_batch_entry pre = {c, other, 20, NULL, false, false};
        CHECK(pt_engine_step(e, &pre, 1, &err) == 0);
        pt_batch_entry step1[3] = {{b, other, 9, junk, false, false}, {a, prompt, N, got, false, false}, {c, other + 20, 3, junk, false, false}};
        CHECK_MSG(pt_engine_step(e, step1, 3, &err) == 0, "%s", err.msg);
        for (int g = 0; g < GEN; g++) {
            const float *l = got + (size_t)g * V;
            int32_t best = 0;
            for (uint32_t v = 1; v < V; v++)
                if (l[v] > l[best]) best = (int32_t)v;
            int32_t tb = other[g], tc = other[g + 5];
            pt_batch_entry st[3] = {{c, &tc, 1, junk, false, false}, {a, &best, 1, got + (size_t)(g + 1) * V, false, false},
                                    {b, &tb, 1, junk, false, false}};
            CHECK_MSG(pt_engine_step(e, st, 3, &err) == 0, "%s", err.msg);
        }
        CHECK_MSG(memcmp(ref, got, sz * sizeof(float)) == 0, "%s: batched run differs", path);
        pt_engine_seq_free(e, a);
        pt_engine_seq_free(e, b);
        pt_engine_seq_free(e, c);
    }
    pt_engine_free(e);

    /* Threads and TP degrees. */
    int configs[][2] = {{1, 2}, {2, 1}, {2, 2}, {3, 1}};
    for (int i = 0; i < 4; i++) {
        if ((uint32_t)configs[i][0] > mf.config.n_kv_heads) continue;
        e = open_engine(&mf, configs[i][0], configs[i][1]);
        if (!e) continue;
        run_alone(e, prompt, N, 16, GEN, got);
        CHECK_MSG(memcmp(ref, got, sz * sizeof(float)) == 0, "%s: tp=%d threads=%d differs", path, configs[i][0],
                  configs[i][1]);
        pt_engine_free(e);
    }
done:
    free(ref);
    free(got);
    free(junk);
    pt_model_file_close(&mf);
}

static void test_synthetic_models(void) {
    for (int i = 0; models[i]; i++) check_model(models[i]);
}

/* The same properties with an F16 KV cache. */
static void test_f16_kv_cache(void) {
    kv_dtype = PT_DTYPE_F16;
    check_model(models[0]);
    kv_dtype = PT_DTYPE_F32;
}

static void test_default_model(void) {
    if (model_path) check_model(model_path);
}

int main(void) {
    const char *p = getenv("PROTEUS_DEFAULT_MODEL");
    static char buf[1024];
    if (!p && getenv("HOME")) {
        snprintf(buf, sizeof(buf), "%s/.cache/proteus/models/SmolLM2-135M-Instruct.Q4_1.gguf", getenv("HOME"));
        p = buf;
    }
    FILE *f = p ? fopen(p, "rb") : NULL;
    if (f) {
        fclose(f);
        model_path = p;
    } else {
        fprintf(stderr, "default model absent: only synthetic models checked\n");
    }
    static const test_case tests[] = {TEST(test_synthetic_models), TEST(test_f16_kv_cache), TEST(test_default_model)};
    return test_run_all(tests, 3);
}
