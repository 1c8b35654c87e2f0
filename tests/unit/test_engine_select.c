/* Query-aware page selection wired into the CPU engine's decode (DESIGN.md
 * section 5): it changes nothing where it must not apply (context within the
 * budget, dense layers, prefill), and it does change decode logits where it
 * applies. The selection rule and the sparse attention themselves are checked
 * against hand-built cases in test_page_select. */
#include <stdlib.h>
#include <string.h>

#include "proteus/engine.h"
#include "test.h"

#define PROMPT 400
#define GEN 6

static pt_model_file mf;
static uint32_t V;

/* Logits after the prompt and after each of GEN greedy decode steps. The
 * greedy tokens are fed from `tokens` when given (so that two engines see the
 * same inputs), else chosen from the logits and written there. */
static void run(uint32_t budget, uint32_t dense_layers, float *out, int32_t *tokens, bool fixed_tokens) {
    pt_engine_opts o;
    pt_engine_opts_default(&o);
    o.max_ctx = 1024;
    o.max_seqs = 2;
    o.max_batch_tokens = 128;
    o.select_budget = budget;
    o.select_dense_layers = dense_layers;
    pt_err err = {{0}};
    pt_engine *e = NULL;
    CHECK_MSG(pt_engine_create(&e, &mf, &o, &err) == 0, "%s", err.msg);
    if (!e) return;
    int32_t prompt[PROMPT];
    for (uint32_t i = 0; i < PROMPT; i++) prompt[i] = (int32_t)((i * 2654435761u + 17) % V);
    int s = pt_engine_seq_new(e);
    for (uint32_t i = 0; i < PROMPT; i += 128) {
        uint32_t m = PROMPT - i < 128 ? PROMPT - i : 128;
        pt_batch_entry b = {s, prompt + i, m, i + m == PROMPT ? out : NULL, false, false};
        CHECK_MSG(pt_engine_step(e, &b, 1, &err) == 0, "%s", err.msg);
    }
    for (int g = 0; g < GEN; g++) {
        if (!fixed_tokens) {
            const float *l = out + (size_t)g * V;
            int32_t best = 0;
            for (uint32_t v = 1; v < V; v++)
                if (l[v] > l[best]) best = (int32_t)v;
            tokens[g] = best;
        }
        pt_batch_entry b = {s, &tokens[g], 1, out + (size_t)(g + 1) * V, false, false};
        CHECK_MSG(pt_engine_step(e, &b, 1, &err) == 0, "%s", err.msg);
    }
    pt_engine_free(e);
}

static float *dense, *got;
static int32_t tokens[GEN];

static size_t rows_differing(const float *a, const float *b, int first, int last) {
    size_t n = 0;
    for (int r = first; r <= last; r++) n += memcmp(a + (size_t)r * V, b + (size_t)r * V, V * sizeof(float)) != 0;
    return n;
}

static void test_budget_covering_context_is_dense(void) {
    run(1024, 0, got, tokens, true); /* contexts of 400..406 tokens fit the budget */
    CHECK_EQ_INT(rows_differing(dense, got, 0, GEN), 0);
}

static void test_dense_layers_are_dense(void) {
    run(64, 2, got, tokens, true); /* tiny-llama has 2 layers: all stay dense */
    CHECK_EQ_INT(rows_differing(dense, got, 0, GEN), 0);
}

static void test_selection_applies_at_decode_only(void) {
    run(64, 0, got, tokens, true);
    CHECK_EQ_INT(rows_differing(dense, got, 0, 0), 0);    /* the prompt's logits: prefill is dense */
    CHECK_EQ_INT(rows_differing(dense, got, 1, GEN), GEN); /* every decode step attends to 4 of 26 pages */
    for (size_t i = V; i < (size_t)(GEN + 1) * V; i++) CHECK(isfinite(got[i]));
}

static void test_budget_below_two_pages_is_rejected(void) {
    pt_engine_opts o;
    pt_engine_opts_default(&o);
    o.select_budget = 31; /* page_size 16 */
    pt_err err = {{0}};
    pt_engine *e = NULL;
    CHECK(pt_engine_create(&e, &mf, &o, &err) == PT_ERR_INVALID);
    CHECK_MSG(strstr(err.msg, "page_select_budget") != NULL, "%s", err.msg);
    pt_engine_free(e);
}

int main(void) {
    pt_err err = {{0}};
    if (pt_model_file_open(&mf, "synthetic:tiny-llama", &err) != 0) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    V = mf.config.vocab_size;
    dense = malloc((size_t)(GEN + 1) * V * sizeof(float));
    got = malloc((size_t)(GEN + 1) * V * sizeof(float));
    run(0, 2, dense, tokens, false);
    static const test_case tests[] = {
        {"budget_covering_context_is_dense", test_budget_covering_context_is_dense},
        {"dense_layers_are_dense", test_dense_layers_are_dense},
        {"selection_applies_at_decode_only", test_selection_applies_at_decode_only},
        {"budget_below_two_pages_is_rejected", test_budget_below_two_pages_is_rejected},
    };
    int rc = test_run_all(tests, sizeof(tests) / sizeof(tests[0]));
    free(dense);
    free(got);
    pt_model_file_close(&mf);
    return rc;
}
