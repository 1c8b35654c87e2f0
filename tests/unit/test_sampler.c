/* Sampler: greedy and its ties, the sampled distribution against the softmax
 * (chi-square), each filter's surviving set on hand-made distributions and
 * against a full-sort reference on random logits, exact penalty amounts, seed
 * determinism (including fixed golden tokens), logit_bias, and logprobs.
 *
 * Chi-square bounds are the 0.1% critical values; the seed is fixed, so each
 * test is deterministic and a failure means the distribution really moved. */
#include <float.h>
#include <stdint.h>

#include "proteus/sampler.h"
#include "test.h"

/* Critical chi-square values at p = 0.001 for 1..7 degrees of freedom. */
static const double chi2_crit[8] = {0, 10.83, 13.82, 16.27, 18.47, 20.52, 22.46, 24.32};

static void logits_from_probs(float *l, const double *p, size_t n) {
    for (size_t i = 0; i < n; i++) l[i] = p[i] > 0 ? (float)log(p[i]) : -INFINITY;
}

/* Draws `draws` tokens and counts them; returns false if any draw failed. */
static bool sample_counts(pt_sampler_params *prm, const float *l, size_t V, int draws, int *counts) {
    pt_sampler s;
    pt_sample_work w;
    if (pt_sampler_init(&s, prm, V, NULL) || pt_sample_work_init(&w, V, NULL)) return false;
    memset(counts, 0, V * sizeof *counts);
    bool ok = true;
    for (int i = 0; i < draws; i++) {
        int32_t t = pt_sampler_sample(&s, l, &w);
        if (t < 0 || (size_t)t >= V) {
            ok = false;
            break;
        }
        counts[t]++;
    }
    pt_sample_work_free(&w);
    pt_sampler_free(&s);
    return ok;
}

/* Pearson chi-square of counts against expected probabilities (tokens with
 * expected 0 must have count 0, else returns a huge value). */
static double chi_square(const int *counts, const double *p, size_t n, int draws) {
    double x = 0;
    for (size_t i = 0; i < n; i++) {
        double e = p[i] * draws;
        if (e == 0) {
            if (counts[i]) return 1e30;
            continue;
        }
        x += (counts[i] - e) * (counts[i] - e) / e;
    }
    return x;
}

static void test_greedy_argmax_and_ties(void) {
    const float l[6] = {1.0f, 5.0f, 3.0f, 5.0f, -2.0f, 4.9f};
    pt_sampler_params prm;
    pt_sampler_params_default(&prm);
    pt_sampler s;
    pt_sample_work w;
    CHECK(pt_sampler_init(&s, &prm, 6, NULL) == PT_OK);
    CHECK(pt_sample_work_init(&w, 6, NULL) == PT_OK);
    CHECK_EQ_INT(pt_sampler_sample(&s, l, &w), 1); /* tie 1 vs 3: lower id */
    pt_sampler_free(&s);

    /* Bias is applied before the argmax. */
    pt_logit_bias b = {5, 0.2f};
    prm.logit_bias = &b;
    prm.n_logit_bias = 1;
    CHECK(pt_sampler_init(&s, &prm, 6, NULL) == PT_OK);
    CHECK_EQ_INT(pt_sampler_sample(&s, l, &w), 5);
    pt_sampler_free(&s);

    /* Penalties too: token 1 generated once, presence 0.5 -> 4.5 < 5 (token 3). */
    pt_sampler_params_default(&prm);
    prm.presence_penalty = 0.5f;
    CHECK(pt_sampler_init(&s, &prm, 6, NULL) == PT_OK);
    CHECK(pt_sampler_accept(&s, 1, NULL) == PT_OK);
    CHECK_EQ_INT(pt_sampler_sample(&s, l, &w), 3);
    pt_sampler_free(&s);

    /* NaN never wins; nothing finite is an error. */
    const float bad[3] = {NAN, -1.0f, -INFINITY};
    pt_sampler_params_default(&prm);
    CHECK(pt_sampler_init(&s, &prm, 3, NULL) == PT_OK);
    CHECK_EQ_INT(pt_sampler_sample(&s, bad, &w), 1);
    const float none[3] = {NAN, -INFINITY, -INFINITY};
    CHECK(pt_sampler_sample(&s, none, &w) < 0);
    prm.temperature = 1.0f;
    pt_sampler_free(&s);
    CHECK(pt_sampler_init(&s, &prm, 3, NULL) == PT_OK);
    CHECK(pt_sampler_sample(&s, none, &w) < 0);
    CHECK_EQ_INT(pt_sampler_sample(&s, bad, &w), 1);
    pt_sampler_free(&s);
    pt_sample_work_free(&w);
}

static void test_temperature_distribution(void) {
    enum { V = 5, DRAWS = 20000 };
    const double p[V] = {0.4, 0.25, 0.2, 0.1, 0.05};
    float l[V];
    logits_from_probs(l, p, V);
    int counts[V];
    pt_sampler_params prm;
    pt_sampler_params_default(&prm);
    prm.temperature = 1.0f;
    prm.seed = 1234;
    CHECK(sample_counts(&prm, l, V, DRAWS, counts));
    double x = chi_square(counts, p, V, DRAWS);
    CHECK_MSG(x < chi2_crit[V - 1], "T=1 chi2 %g", x);

    /* T = 2: p_i^(1/2), renormalized. T = 0.5: p_i^2. */
    const float temps[2] = {2.0f, 0.5f};
    for (int k = 0; k < 2; k++) {
        double q[V], z = 0;
        for (int i = 0; i < V; i++) z += q[i] = pow(p[i], 1.0 / temps[k]);
        for (int i = 0; i < V; i++) q[i] /= z;
        prm.temperature = temps[k];
        prm.seed = 99 + k;
        CHECK(sample_counts(&prm, l, V, DRAWS, counts));
        x = chi_square(counts, q, V, DRAWS);
        CHECK_MSG(x < chi2_crit[V - 1], "T=%g chi2 %g", temps[k], x);
        /* And it is not the T=1 distribution (the test can tell them apart). */
        CHECK_MSG(chi_square(counts, p, V, DRAWS) > 100, "T=%g looks like T=1", temps[k]);
    }
}

static void test_top_k(void) {
    enum { V = 64 };
    float l[V];
    pt_rng r;
    pt_rng_seed(&r, 7);
    for (int i = 0; i < V; i++) l[i] = 4.0f * pt_rng_uniform(&r);
    int greedy = 0;
    for (int i = 1; i < V; i++)
        if (l[i] > l[greedy]) greedy = i;
    int counts[V];
    pt_sampler_params prm;
    pt_sampler_params_default(&prm);
    prm.temperature = 1.5f;
    prm.top_k = 1;
    CHECK(sample_counts(&prm, l, V, 2000, counts));
    CHECK_EQ_INT(counts[greedy], 2000);

    /* top_k = 3 keeps exactly the three largest; each of them shows up. */
    int order[V];
    for (int i = 0; i < V; i++) order[i] = i;
    for (int i = 0; i < 3; i++)
        for (int j = i + 1; j < V; j++)
            if (l[order[j]] > l[order[i]]) {
                int t = order[i];
                order[i] = order[j];
                order[j] = t;
            }
    prm.top_k = 3;
    CHECK(sample_counts(&prm, l, V, 3000, counts));
    int outside = 3000;
    for (int i = 0; i < 3; i++) {
        CHECK(counts[order[i]] > 0);
        outside -= counts[order[i]];
    }
    CHECK_EQ_INT(outside, 0);
}

static void test_top_p_set(void) {
    enum { V = 5, DRAWS = 20000 };
    /* Shuffled so that rank order is not token order. */
    const double p[V] = {0.2, 0.05, 0.4, 0.1, 0.25};
    float l[V];
    logits_from_probs(l, p, V);
    int counts[V];
    pt_sampler_params prm;
    pt_sampler_params_default(&prm);
    prm.temperature = 1.0f;

    /* Ranks: 0.4 (2), 0.25 (4), 0.2 (0), 0.1 (3), 0.05 (1). top_p = 0.6: mass
     * before 0.25 is 0.4 < 0.6 -> kept; before 0.2 is 0.65 -> cut. */
    prm.top_p = 0.6f;
    CHECK(sample_counts(&prm, l, V, DRAWS, counts));
    double q1[V] = {0, 0, 0.4 / 0.65, 0, 0.25 / 0.65};
    double x = chi_square(counts, q1, V, DRAWS);
    CHECK_MSG(x < chi2_crit[1], "top_p 0.6 chi2 %g", x);

    /* top_p = 0.9: before 0.1 is 0.85 < 0.9 -> kept, before 0.05 is 0.95 -> cut. */
    prm.top_p = 0.9f;
    CHECK(sample_counts(&prm, l, V, DRAWS, counts));
    CHECK_EQ_INT(counts[1], 0);
    CHECK(counts[0] > 0 && counts[2] > 0 && counts[3] > 0 && counts[4] > 0);

    /* A tiny top_p still keeps the top token. */
    prm.top_p = 0.01f;
    CHECK(sample_counts(&prm, l, V, 500, counts));
    CHECK_EQ_INT(counts[2], 500);

    /* top-p works on the distribution top-k left: k = 3 gives {0.4, 0.25,
     * 0.2} / 0.85; with p = 0.7 the mass before 0.2 is 0.65/0.85 = 0.76 -> cut.
     * Without top-k it would be 0.65 < 0.7 -> kept. */
    prm.top_p = 0.7f;
    prm.top_k = 3;
    CHECK(sample_counts(&prm, l, V, DRAWS, counts));
    CHECK(counts[2] > 0 && counts[4] > 0);
    CHECK_EQ_INT(counts[0] + counts[1] + counts[3], 0);
    prm.top_k = 0;
    CHECK(sample_counts(&prm, l, V, DRAWS, counts));
    CHECK(counts[0] > 0 && counts[2] > 0 && counts[4] > 0);
    CHECK_EQ_INT(counts[1] + counts[3], 0);
}

static void test_min_p_set(void) {
    enum { V = 4, DRAWS = 20000 };
    const double p[V] = {0.12, 0.5, 0.08, 0.3};
    float l[V];
    logits_from_probs(l, p, V);
    int counts[V];
    pt_sampler_params prm;
    pt_sampler_params_default(&prm);
    prm.temperature = 1.0f;
    prm.min_p = 0.2f; /* threshold 0.1: drops 0.08 only */
    CHECK(sample_counts(&prm, l, V, DRAWS, counts));
    double q[V] = {0.12 / 0.92, 0.5 / 0.92, 0, 0.3 / 0.92};
    double x = chi_square(counts, q, V, DRAWS);
    CHECK_MSG(x < chi2_crit[2], "min_p 0.2 chi2 %g", x);
    prm.min_p = 0.5f; /* threshold 0.25: keeps 0.5 and 0.3 */
    CHECK(sample_counts(&prm, l, V, DRAWS, counts));
    CHECK(counts[1] > 0 && counts[3] > 0);
    CHECK_EQ_INT(counts[0] + counts[2], 0);
}

/* Reference filter: full sort, the three filters written out directly, then
 * the survivors in token order. */
static const float *ref_l;
static int ref_cmp(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    if (ref_l[x] != ref_l[y]) return ref_l[x] > ref_l[y] ? -1 : 1;
    return x < y ? -1 : 1;
}
static int id_cmp(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}
static size_t ref_filter(const pt_sampler_params *p, const float *l, size_t V, int32_t *out) {
    for (size_t i = 0; i < V; i++) out[i] = (int32_t)i;
    ref_l = l;
    qsort(out, V, sizeof *out, ref_cmp);
    size_t n = p->top_k > 0 && (size_t)p->top_k < V ? (size_t)p->top_k : V;
    double m = l[out[0]], z = 0;
    for (size_t j = 0; j < n; j++) z += exp(l[out[j]] - m);
    if (p->top_p < 1) {
        double cum = 0;
        size_t j = 0;
        while (j < n && (j == 0 || cum < p->top_p * z)) cum += exp(l[out[j++]] - m);
        n = j;
    }
    if (p->min_p > 0) {
        size_t j = 1;
        while (j < n && exp(l[out[j]] - m) >= p->min_p) j++;
        n = j;
    }
    qsort(out, n, sizeof *out, id_cmp);
    return n;
}

static void test_filter_matches_full_sort(void) {
    const size_t sizes[3] = {17, 1000, 50000};
    const struct {
        int k;
        float p, min_p;
    } cases[] = {{40, 1, 0},   {0, 0.9f, 0}, {0, 0.5f, 0},           {0, 1, 0.05f},         {50, 0.95f, 0.01f},
                 {1, 1, 0},    {0, 0.99f, 0}, {0, 0.99f, 0.001f},   {5000, 0.999f, 0},     {0, 1, 0}};
    pt_rng r;
    pt_rng_seed(&r, 42);
    int mismatches = 0;
    for (size_t si = 0; si < 3; si++) {
        size_t V = sizes[si];
        pt_sample_work w;
        CHECK(pt_sample_work_init(&w, V, NULL) == PT_OK);
        int32_t *ref = malloc(V * sizeof *ref);
        for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
            /* Fresh logits per case; some sorted ascending, the classic bad
             * input for a naive quickselect. */
            for (size_t i = 0; i < V; i++) w.logits[i] = 8.0f * pt_rng_uniform(&r) - 4.0f;
            if (c % 3 == 2)
                for (size_t i = 0; i < V; i++) w.logits[i] = (float)i / (float)V;
            w.logits[V / 2] = w.logits[V / 3]; /* a tie the order must settle by id */
            pt_sampler_params prm;
            pt_sampler_params_default(&prm);
            prm.temperature = 1.0f;
            prm.top_k = cases[c].k;
            prm.top_p = cases[c].p;
            prm.min_p = cases[c].min_p;
            size_t na = pt_sampler_filter(&prm, &w, V);
            size_t nb = ref_filter(&prm, w.logits, V, ref);
            if (na != nb || w.n_kept != na || memcmp(w.idx, ref, na * sizeof *ref) != 0) {
                mismatches++;
                fprintf(stderr, "V=%zu case %zu: kept %zu vs reference %zu\n", V, c, na, nb);
            }
        }
        free(ref);
        pt_sample_work_free(&w);
    }
    CHECK_EQ_INT(mismatches, 0);
}

static void test_penalties_exact(void) {
    enum { V = 8 };
    const float in[V] = {1.0f, 4.0f, -3.0f, 1.0f, 2.0f, -1.0f, 0.5f, 6.0f};
    float out[V];
    pt_sampler_params prm;
    pt_sampler_params_default(&prm);
    prm.repetition_penalty = 2.0f;
    prm.frequency_penalty = 0.5f;
    prm.presence_penalty = 0.25f;
    pt_logit_bias bias[2] = {{4, 1.0f}, {6, -100.0f}};
    prm.logit_bias = bias;
    prm.n_logit_bias = 2;
    pt_sampler s;
    CHECK(pt_sampler_init(&s, &prm, V, NULL) == PT_OK);
    const int32_t prompt[4] = {1, 2, 1, 4};
    CHECK(pt_sampler_record_prompt(&s, prompt, 4, NULL) == PT_OK);
    CHECK(pt_sampler_accept(&s, 3, NULL) == PT_OK);
    CHECK(pt_sampler_accept(&s, 3, NULL) == PT_OK);
    CHECK(pt_sampler_accept(&s, 5, NULL) == PT_OK);
    CHECK(pt_sampler_accept(&s, 4, NULL) == PT_OK);
    CHECK_EQ_INT(s.n_seen, 5); /* 1 2 4 3 5: distinct tokens only */
    pt_sampler_process(&s, in, out);
    CHECK(out[0] == 1.0f);                  /* untouched */
    CHECK(out[1] == 2.0f);                  /* prompt, positive: 4 / 2 */
    CHECK(out[2] == -6.0f);                 /* prompt, negative: -3 * 2 */
    CHECK(out[3] == 0.5f - 1.0f - 0.25f);   /* 1/2, then 2 * 0.5 and 0.25 */
    CHECK(out[4] == 1.5f - 0.5f - 0.25f);   /* (2 + 1 bias) / 2, once generated */
    CHECK(out[5] == -2.0f - 0.5f - 0.25f);  /* -1 * 2, once generated */
    CHECK(out[6] == 0.5f - 100.0f);         /* bias only */
    CHECK(out[7] == 6.0f);
    pt_sampler_free(&s);

    /* Temperature divides after the penalties; greedy skips it. */
    pt_sampler_params_default(&prm);
    prm.temperature = 0.5f;
    prm.presence_penalty = 1.0f;
    CHECK(pt_sampler_init(&s, &prm, V, NULL) == PT_OK);
    CHECK(pt_sampler_accept(&s, 7, NULL) == PT_OK);
    pt_sampler_process(&s, in, out);
    CHECK(out[7] == 10.0f && out[1] == 8.0f && out[2] == -6.0f);
    pt_sampler_free(&s);
}

/* Draws n tokens from a flat 16-token distribution. */
static void draw_sequence(uint64_t seed, int32_t *out, int n) {
    enum { V = 16 };
    float l[V];
    for (int i = 0; i < V; i++) l[i] = 0.1f * (float)(i % 5);
    pt_sampler_params prm;
    pt_sampler_params_default(&prm);
    prm.temperature = 0.8f;
    prm.top_k = 12;
    prm.seed = seed;
    pt_sampler s;
    pt_sample_work w;
    pt_sampler_init(&s, &prm, V, NULL);
    pt_sample_work_init(&w, V, NULL);
    for (int i = 0; i < n; i++) {
        out[i] = pt_sampler_sample(&s, l, &w);
        pt_sampler_accept(&s, out[i], NULL);
    }
    pt_sample_work_free(&w);
    pt_sampler_free(&s);
}

static void test_seed_determinism(void) {
    int32_t a[200], b[200], c[200];
    draw_sequence(2024, a, 200);
    draw_sequence(2024, b, 200);
    draw_sequence(2025, c, 200);
    CHECK(memcmp(a, b, sizeof a) == 0);
    int same = 0;
    for (int i = 0; i < 200; i++) same += a[i] == c[i];
    CHECK_MSG(same < 60, "seeds 2024 and 2025 agree on %d of 200 tokens", same);
    /* The seed means these tokens on every platform and build: a change here
     * changes what every seeded request returns. */
    const int32_t golden[16] = {9, 2, 4, 2, 13, 8, 2, 9, 3, 7, 7, 13, 13, 9, 2, 11};
    int diff = 0;
    for (int i = 0; i < 16; i++) diff += a[i] != golden[i];
    CHECK_EQ_INT(diff, 0);
    if (diff) {
        for (int i = 0; i < 16; i++) fprintf(stderr, "%d,", a[i]);
        fputc('\n', stderr);
    }
}

static void test_logit_bias_excludes(void) {
    enum { V = 6, DRAWS = 20000 };
    const float l[V] = {0, 0, 0, 0, 0, 0};
    pt_logit_bias b = {2, -100.0f};
    pt_sampler_params prm;
    pt_sampler_params_default(&prm);
    prm.temperature = 1.0f;
    prm.logit_bias = &b;
    prm.n_logit_bias = 1;
    int counts[V];
    CHECK(sample_counts(&prm, l, V, DRAWS, counts));
    CHECK_EQ_INT(counts[2], 0);
    for (int i = 0; i < V; i++)
        if (i != 2) CHECK(counts[i] > 3000);
    b.bias = 100.0f;
    CHECK(sample_counts(&prm, l, V, 1000, counts));
    CHECK_EQ_INT(counts[2], 1000);
}

static void test_logprobs_sum_and_order(void) {
    enum { V = 20 };
    float l[V];
    pt_rng r;
    pt_rng_seed(&r, 5);
    for (int i = 0; i < V; i++) l[i] = 10.0f * pt_rng_uniform(&r) - 5.0f;
    l[9] = l[4];
    pt_token_logprob top[PT_LOGPROBS_MAX];
    float chosen = 0;
    CHECK(pt_logprobs_compute(l, V, 3, V, &chosen, top) == PT_OK);
    double sum = 0;
    bool sorted = true, saw3 = false;
    int pos4 = -1, pos9 = -1;
    for (int j = 0; j < V; j++) {
        sum += exp(top[j].logprob);
        if (j > 0 && top[j].logprob > top[j - 1].logprob) sorted = false;
        if (top[j].token == 3) saw3 = top[j].logprob == chosen;
        if (top[j].token == 4) pos4 = j;
        if (top[j].token == 9) pos9 = j;
    }
    CHECK_NEAR(sum, 1.0, 1e-5);
    CHECK(sorted && saw3);
    CHECK(pos4 >= 0 && pos9 == pos4 + 1);
    /* Differences of logprobs are differences of raw logits. */
    CHECK_NEAR(top[0].logprob - top[1].logprob, l[top[0].token] - l[top[1].token], 1e-5);

    /* Large vocab: the chosen logprob over every token sums to 1; the top-5
     * are the 5 largest logits. Logprobs are of the raw logits: a sampler's
     * penalties do not change them. */
    enum { BIG = 5000 };
    float *big = malloc(BIG * sizeof *big);
    for (int i = 0; i < BIG; i++) big[i] = 6.0f * pt_rng_uniform(&r);
    big[123] = 9.0f;
    sum = 0;
    for (int t = 0; t < BIG; t++) {
        CHECK(pt_logprobs_compute(big, BIG, t, 0, &chosen, NULL) == PT_OK);
        sum += exp(chosen);
    }
    CHECK_NEAR(sum, 1.0, 1e-4);
    CHECK(pt_logprobs_compute(big, BIG, 0, 5, NULL, top) == PT_OK);
    CHECK_EQ_INT(top[0].token, 123);
    int above = 0;
    for (int i = 0; i < BIG; i++) above += big[i] > big[top[4].token];
    CHECK_EQ_INT(above, 4);
    CHECK(pt_logprobs_compute(big, BIG, 0, PT_LOGPROBS_MAX + 1, NULL, top) == PT_ERR_INVALID);
    CHECK(pt_logprobs_compute(big, BIG, BIG, 0, &chosen, NULL) == PT_ERR_INVALID);
    free(big);
}

static void test_invalid_params(void) {
    pt_sampler_params prm;
    pt_sampler s;
    pt_err err;
    pt_sampler_params_default(&prm);
    prm.top_p = 0.0f;
    CHECK(pt_sampler_init(&s, &prm, 10, &err) == PT_ERR_INVALID && strstr(err.msg, "top_p"));
    pt_sampler_params_default(&prm);
    prm.temperature = -1.0f;
    CHECK(pt_sampler_init(&s, &prm, 10, &err) == PT_ERR_INVALID && strstr(err.msg, "temperature"));
    pt_sampler_params_default(&prm);
    prm.repetition_penalty = 0.0f;
    CHECK(pt_sampler_init(&s, &prm, 10, &err) == PT_ERR_INVALID && strstr(err.msg, "repetition"));
    pt_logit_bias b = {10, 1.0f};
    pt_sampler_params_default(&prm);
    prm.logit_bias = &b;
    prm.n_logit_bias = 1;
    CHECK(pt_sampler_init(&s, &prm, 10, &err) == PT_ERR_INVALID && strstr(err.msg, "logit_bias"));
    pt_sampler_params_default(&prm);
    CHECK(pt_sampler_init(&s, &prm, 10, &err) == PT_OK);
    CHECK(pt_sampler_accept(&s, 10, &err) == PT_ERR_INVALID);
    const int32_t neg = -1;
    CHECK(pt_sampler_record_prompt(&s, &neg, 1, &err) == PT_ERR_INVALID);
    pt_sampler_free(&s);
}

TEST_MAIN(TEST(test_greedy_argmax_and_ties), TEST(test_temperature_distribution), TEST(test_top_k),
          TEST(test_top_p_set), TEST(test_min_p_set), TEST(test_filter_matches_full_sort),
          TEST(test_penalties_exact), TEST(test_seed_determinism), TEST(test_logit_bias_excludes),
          TEST(test_logprobs_sum_and_order), TEST(test_invalid_params))
