/* GPU sampling (kcuda_sample) against its C reference
 * (ref/kcuda_sample_ref.c), and the reference against independent forms.
 *
 * Exactness: the kernel and the reference build the same integer weights
 * from the same float operations and sum them exactly, so the device token
 * must EQUAL the reference token for every row, greedy or not; no epsilon
 * around cumulative boundaries is needed, and none is allowed.
 *
 * Host-only (run everywhere):
 *   - the exp of the definition within 3e-7 relative of libm's exp on
 *     [-28, 0], and exp(0) == 1 exactly;
 *   - argument checks (return before touching the device);
 *   - greedy known answers (planted ties, NaN, +-inf, all -inf -> -1);
 *   - the reference's keep set equals a brute-force O(V^2) reading of the
 *     definition (k-th largest by counting, lambda by trying every logit) on
 *     small random rows with heavy ties;
 *   - distribution: 200000 draws of the reference on a 10-token row per
 *     parameter set; tokens outside the filtered set never appear, and the
 *     chi-square of the counts against exp((l - m) / T) renormalized over the
 *     filtered set (double, libm) stays below df + 6 sqrt(2 df) + 6. A filter
 *     that drops or adds a token of probability >= 1% would exceed it by far.
 * Device (with a GPU): greedy rows with planted ties, random rows of
 * vocabularies 1 .. 256000 under many parameter sets (ties, special values,
 * clamped uniforms), and the distribution check on device draws. Without a
 * GPU the program prints "SKIP: no CUDA device" and exits 77 (1 if a
 * host-only check failed). PROTEUS_TEST_SEED overrides the seed. */
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "kcuda.h"
#include "kcuda_sample.h"
#include "ref/kcuda_sample_ref.h"
#include "kcuda_test.h"

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

static int32_t ref_row(const float *l, size_t V, const kcuda_sample_params *p)
{
    return kcuda_ref_sample(l, V, p->temperature, p->top_k, p->top_p, p->min_p, p->uniform);
}

/* ---- host-only checks ---------------------------------------------------- */

static void test_exp(void)
{
    double worst = 0.0;
    float worst_x = 0.0f;
    for (int i = 0; i <= 2800000; i++) {
        const float x = -28.0f * (float)i / 2800000.0f;
        const double want = exp((double)x), err = fabs(kcuda_ref_sample_exp(x) - want) / want;
        if (err > worst) {
            worst = err;
            worst_x = x;
        }
    }
    const bool ok = worst <= 3e-7 && kcuda_ref_sample_exp(0.0f) == 1.0f && kcuda_ref_sample_exp(-0.0f) == 1.0f;
    char name[160];
    snprintf(name, sizeof name, "sample exp on [-28, 0]: worst relative error %.3g (at %.7g), exp(0) == 1", worst,
             worst_x);
    report(ok, name);
}

static void test_invalid_args(void)
{
    /* These return before touching the device, so they run without a GPU. */
    float f = 0.0f;
    int32_t tok = 0;
    kcuda_sample_params p = {1.0f, 0, 1.0f, 0.0f, 0.5f};
    const bool ok = kcuda_sample(&tok, &f, 1, 1, 0, &p, 0) == cudaErrorInvalidValue &&
                    kcuda_sample(&tok, &f, 1, 1, KCUDA_SAMPLE_MAX_VOCAB + 1, &p, 0) == cudaErrorInvalidValue &&
                    kcuda_sample(NULL, &f, 1, 1, 1, &p, 0) == cudaErrorInvalidValue &&
                    kcuda_sample(&tok, NULL, 1, 1, 1, &p, 0) == cudaErrorInvalidValue &&
                    kcuda_sample(&tok, &f, 1, 1, 1, NULL, 0) == cudaErrorInvalidValue &&
                    kcuda_sample(&tok, &f, 7, 2, 8, &p, 0) == cudaErrorInvalidValue && /* ld < V */
                    kcuda_sample(NULL, NULL, 0, 0, 8, NULL, 0) == cudaSuccess &&
                    kcuda_sample(NULL, NULL, 0, 0, 0, NULL, 0) == cudaErrorInvalidValue;
    report(ok, "sample rejects bad arguments (vocab 0 or too large, NULL, ld < V) and accepts 0 rows");
}

static void test_ref_greedy(void)
{
    const kcuda_sample_params g = {0.0f, 0, 1.0f, 0.0f, 0.5f};
    const float a[] = {1.0f, 3.0f, -2.0f, 3.0f, 3.0f};                       /* tie at 1, 3, 4 */
    const float b[] = {NAN, -INFINITY, 0.5f, NAN, 0.5f};                     /* NaN never wins */
    const float c[] = {1.0f, INFINITY, 2.0f, INFINITY, FLT_MAX};              /* +inf -> FLT_MAX: tie */
    const float d[] = {-INFINITY, NAN, -INFINITY};                            /* nothing finite */
    const float e[] = {-0.0f, 0.0f, -1.0f};                                   /* -0 ties +0 */
    bool ok = ref_row(a, 5, &g) == 1 && ref_row(b, 5, &g) == 2 && ref_row(c, 5, &g) == 1 &&
              ref_row(d, 3, &g) == -1 && ref_row(e, 3, &g) == 0;
    /* Negative and NaN temperatures are greedy too; nothing finite is -1 when
     * sampling as well. */
    kcuda_sample_params s = g;
    s.temperature = -1.0f;
    ok = ok && ref_row(a, 5, &s) == 1;
    s.temperature = NAN;
    ok = ok && ref_row(a, 5, &s) == 1;
    s.temperature = 1.0f;
    ok = ok && ref_row(d, 3, &s) == -1;
    /* min_p above 1 keeps the argmax alone; top_p 0 keeps the largest logit's
     * tokens (ties together); u = 0 then draws the first of them. */
    s.uniform = 0.999f;
    s.min_p = 1.5f;
    ok = ok && ref_row(a, 5, &s) == 1;
    s.min_p = 0.0f;
    s.top_p = 0.0f;
    ok = ok && ref_row(a, 5, &s) == 4;
    s.uniform = 0.0f;
    ok = ok && ref_row(a, 5, &s) == 1;
    report(ok, "ref greedy and degenerate filters: known answers");
}

/* Known answers on exact cumulative boundaries. "equal" rows: every logit
 * 0.25, so every weight is 2^40 and token floor(u * n_kept) is drawn; the
 * filters keep ties together. "distinct" rows: logit_j = -j / 1000 and an
 * infinite temperature, so the weights are again all 2^40 but the filters
 * cut between tokens (top-p over what top-k left, at ceil(top_p * Z_K)). */
typedef struct {
    bool distinct;
    kcuda_sample_params p;
    int32_t want;
} known_case;

static const known_case known[] = {
    {false, {1.0f, 0, 1.0f, 0.0f, 0.0f}, 0},
    {false, {1.0f, 0, 1.0f, 0.0f, 0.25f}, 256},
    {false, {1.0f, 0, 1.0f, 0.0f, 0.5f}, 512},
    {false, {1.0f, 0, 1.0f, 0.0f, 0.75f}, 768},
    {false, {1.0f, 0, 1.0f, 0.0f, 1.0f / 1024}, 1},
    {false, {1.0f, 0, 1.0f, 0.0f, 1023.0f / 1024}, 1023},
    {false, {1.0f, 0, 1.0f, 0.0f, 0.5f + 1.0f / 2048}, 512},
    {false, {1.0f, 3, 1.0f, 0.0f, 0.5f}, 512},   /* the k-th logit ties with all */
    {false, {1.0f, 0, 0.25f, 0.0f, 0.5f}, 512},  /* top-p keeps ties together */
    {false, {1.0f, 0, 1.0f, 1.0f, 0.75f}, 768},  /* p == min_p is kept */
    {false, {1.0f, 0, 1.0f, 1.5f, 0.75f}, 0},    /* min_p > 1: the argmax alone */
    {true, {INFINITY, 0, 1.0f, 0.0f, 0.5f}, 512},
    {true, {INFINITY, 256, 1.0f, 0.0f, 0.5f}, 128},
    {true, {INFINITY, 0, 0.25f, 0.0f, 0.5f}, 128},   /* need = 256 * 2^40 exactly */
    {true, {INFINITY, 512, 0.5f, 0.0f, 0.5f}, 128},  /* top-p over the top-k mass */
    {true, {INFINITY, 512, 0.5f, 0.0f, 0.0f}, 0},
    {true, {INFINITY, 512, 0.5f, 0.0f, 0.999f}, 255},
    {true, {INFINITY, 1, 1.0f, 0.0f, 0.7f}, 0},
    {true, {INFINITY, 1023, 1.0f, 0.0f, 1023.0f / 1024}, 1022},
};
#define KNOWN_V 1024

static void known_row(float *l, size_t V, bool distinct)
{
    for (size_t j = 0; j < V; j++)
        l[j] = distinct ? -(float)j * 1e-3f : 0.25f;
}

static void test_ref_known(void)
{
    float *l = malloc(2 * KNOWN_V * sizeof *l);
    known_row(l, KNOWN_V, false);
    known_row(l + KNOWN_V, KNOWN_V, true);
    bool ok = true;
    for (size_t c = 0; c < COUNT(known); c++) {
        const int32_t got = ref_row(l + (known[c].distinct ? KNOWN_V : 0), KNOWN_V, &known[c].p);
        if (got != known[c].want) {
            printf("     case %zu: token %d, want %d\n", c, got, known[c].want);
            ok = false;
        }
    }
    report(ok, "ref known answers on exact cumulative boundaries (ties, top-k then top-p, min_p == p)");
    free(l);
}

/* Brute-force keep set, straight from the definition in kcuda_sample.h;
 * nothing is kept when no logit is finite. */
static void brute_keep(uint8_t *keep, const float *logits, size_t V, float T, int32_t k, float top_p, float min_p)
{
    bool finite = false;
    for (size_t j = 0; j < V; j++)
        finite = finite || (!isnan(logits[j]) && logits[j] > -INFINITY);
    if (!finite) {
        memset(keep, 0, V);
        return;
    }
    float *c = malloc(V * sizeof *c), *p = malloc(V * sizeof *p);
    uint64_t *w = malloc(V * sizeof *w);
    uint8_t *in_k = malloc(V);
    size_t a = 0;
    for (size_t j = 0; j < V; j++) {
        const float x = logits[j];
        c[j] = isnan(x) ? -INFINITY : (x == INFINITY ? FLT_MAX : x);
        if (c[j] > c[a])
            a = j;
    }
    for (size_t j = 0; j < V; j++)
        w[j] = kcuda_ref_sample_weight(c[j], c[a], T, &p[j]);
    for (size_t j = 0; j < V; j++) {
        size_t above = 0;
        for (size_t i = 0; i < V; i++)
            above += c[i] > c[j];
        in_k[j] = !(k > 0 && (size_t)k < V) || above < (size_t)k;
    }
    float lambda = -INFINITY;
    if (top_p < 1.0f) {
        uint64_t z = 0;
        for (size_t j = 0; j < V; j++)
            z += in_k[j] ? w[j] : 0;
        const double t = (double)top_p * (double)z;
        const uint64_t need = t < 1.0 ? 1 : (uint64_t)ceil(t);
        bool found = false;
        for (size_t j = 0; j < V; j++) {
            if (!in_k[j])
                continue;
            uint64_t mass = 0;
            for (size_t i = 0; i < V; i++)
                mass += (in_k[i] && c[i] >= c[j]) ? w[i] : 0;
            if (mass >= need && (!found || c[j] > lambda)) {
                lambda = c[j];
                found = true;
            }
        }
    }
    for (size_t j = 0; j < V; j++) {
        keep[j] = in_k[j] && c[j] >= lambda && !(min_p > 0.0f && p[j] < min_p);
        if (j == a)
            keep[j] = 1;
    }
    free(c), free(p), free(w), free(in_k);
}

static void test_ref_filters(void)
{
    bool ok = true;
    for (int t = 0; t < 400 && ok; t++) {
        const size_t V = 1 + rng_next() % 300;
        float *l = malloc(V * sizeof *l);
        const int mode = t % 4;
        for (size_t j = 0; j < V; j++) {
            float x = rng_uniform(-6.0f, 6.0f);
            if (mode == 1)
                x = roundf(x); /* heavy ties */
            if (mode == 2 && rng_next() % 10 == 0)
                x = (rng_next() % 3 == 0) ? NAN : ((rng_next() % 2) ? INFINITY : -INFINITY);
            if (mode == 3)
                x = roundf(x * 4.0f) * 0.25f;
            l[j] = x;
        }
        const float T = rng_uniform(0.2f, 2.5f);
        const int32_t k = (int32_t)(rng_next() % (V + 3)) - 1;
        const float top_p = t % 3 == 0 ? 1.0f : rng_uniform(0.0f, 1.0f);
        const float min_p = t % 5 < 2 ? 0.0f : rng_uniform(0.0f, 0.6f);
        uint8_t *got = malloc(V), *want = malloc(V);
        uint64_t *w = malloc(V * sizeof *w);
        const size_t n = kcuda_ref_sample_keep(got, w, l, V, T, k, top_p, min_p);
        brute_keep(want, l, V, T, k, top_p, min_p);
        size_t n_want = 0;
        for (size_t j = 0; j < V; j++)
            n_want += want[j];
        bool row_ok = n == n_want;
        for (size_t j = 0; j < V && row_ok; j++)
            row_ok = got[j] == want[j];
        if (!row_ok)
            printf("     V=%zu T=%g top_k=%d top_p=%g min_p=%g: keep sets differ (%zu vs %zu)\n", V, T, k, top_p,
                   min_p, n, n_want);
        ok = ok && row_ok;
        free(l), free(got), free(want), free(w);
    }
    report(ok, "ref keep set == brute-force definition (400 rows, ties, NaN/inf)");
}

/* Distribution check on a small vocabulary. */
static const float dist_logits[10] = {2.0f, 1.5f, 1.5f, 0.3f, -0.5f, 1.0f, -2.0f, 0.9f, 1.2f, -1.0f};
static const kcuda_sample_params dist_params[] = {
    {1.0f, 0, 1.0f, 0.0f, 0.0f},  /* no filter: all 10 */
    {0.7f, 5, 1.0f, 0.0f, 0.0f},  /* top-k 5: logits >= 1.0 */
    {1.0f, 2, 1.0f, 0.0f, 0.0f},  /* top-k 2 with the tie at 1.5: three tokens */
    {1.3f, 0, 0.6f, 0.3f, 0.0f},  /* top-p and min-p */
    {2.0f, 8, 0.9f, 0.05f, 0.0f}, /* all three */
};
#ifndef DIST_N /* draws per parameter set (a slow emulated target may build with fewer) */
#define DIST_N 200000
#endif

/* Expected probabilities (double, libm exp) over the brute-force keep set. */
static void dist_expected(double *prob, uint8_t *keep, const kcuda_sample_params *p)
{
    brute_keep(keep, dist_logits, 10, p->temperature, p->top_k, p->top_p, p->min_p);
    double z = 0.0;
    for (int j = 0; j < 10; j++) {
        prob[j] = keep[j] ? exp(((double)dist_logits[j] - 2.0) / p->temperature) : 0.0;
        z += prob[j];
    }
    for (int j = 0; j < 10; j++)
        prob[j] /= z;
}

static bool chi_square_ok(const size_t *count, size_t n, const kcuda_sample_params *p, double *chi2_out)
{
    double prob[10];
    uint8_t keep[10];
    dist_expected(prob, keep, p);
    double chi2 = 0.0;
    int kept = 0;
    bool ok = true;
    for (int j = 0; j < 10; j++) {
        if (!keep[j]) {
            if (count[j]) {
                printf("     token %d drawn %zu times but filtered out\n", j, count[j]);
                ok = false;
            }
            continue;
        }
        kept++;
        const double e = prob[j] * (double)n;
        chi2 += ((double)count[j] - e) * ((double)count[j] - e) / e;
    }
    const double df = kept - 1, bound = df + 6.0 * sqrt(2.0 * df) + 6.0;
    if (!(chi2 <= bound)) {
        printf("     chi-square %.2f over %d kept tokens (bound %.2f)\n", chi2, kept, bound);
        ok = false;
    }
    *chi2_out = chi2;
    return ok;
}

static void test_ref_distribution(void)
{
    char name[200];
    for (size_t c = 0; c < COUNT(dist_params); c++) {
        size_t count[10] = {0};
        kcuda_sample_params p = dist_params[c];
        bool ok = true;
        for (int i = 0; i < DIST_N && ok; i++) {
            p.uniform = rng_uniform(0.0f, 1.0f);
            const int32_t t = ref_row(dist_logits, 10, &p);
            ok = t >= 0 && t < 10;
            if (ok)
                count[t]++;
        }
        double chi2 = 0.0;
        ok = ok && chi_square_ok(count, DIST_N, &p, &chi2);
        snprintf(name, sizeof name, "ref distribution T=%g top_k=%d top_p=%g min_p=%g: chi-square %.2f",
                 p.temperature, p.top_k, p.top_p, p.min_p, chi2);
        report(ok, name);
    }
}

/* ---- device cases -------------------------------------------------------- */

/* Runs n rows (ld floats apart) on the device and compares with the reference. */
static bool run_rows(const float *logits, size_t ld, size_t n, size_t V, const kcuda_sample_params *params,
                     int32_t *got_out)
{
    float *d_l = dev_upload(logits, ((n - 1) * ld + V) * sizeof(float));
    kcuda_sample_params *d_p = dev_upload(params, n * sizeof *params);
    int32_t *d_t = dev_upload(NULL, n * sizeof(int32_t));
    int32_t *got = got_out ? got_out : malloc(n * sizeof *got);
    bool ok = kcuda_sample(d_t, d_l, ld, n, V, d_p, stream) == cudaSuccess;
    dev_download(got, d_t, n * sizeof(int32_t));
    size_t bad = 0;
    for (size_t i = 0; i < n && ok; i++) {
        const int32_t want = ref_row(logits + i * ld, V, &params[i]);
        if (got[i] != want && bad++ < 5)
            printf("     row %zu (V=%zu T=%g top_k=%d top_p=%g min_p=%g u=%.9g): token %d, want %d\n", i, V,
                   params[i].temperature, params[i].top_k, params[i].top_p, params[i].min_p, params[i].uniform,
                   got[i], want);
    }
    cudaFree(d_l), cudaFree(d_p), cudaFree(d_t);
    if (!got_out)
        free(got);
    return ok && bad == 0;
}

static void fill_row(float *l, size_t V, int mode)
{
    for (size_t j = 0; j < V; j++) {
        /* Roughly normal, sd about 3 (sum of four uniforms). */
        float x = rng_uniform(-3.0f, 3.0f) + rng_uniform(-3.0f, 3.0f) + rng_uniform(-3.0f, 3.0f) +
                  rng_uniform(-3.0f, 3.0f);
        switch (mode) {
        case 1: x = roundf(x * 2.0f) * 0.5f; break; /* many ties */
        case 2: /* special values */
            if (rng_next() % 50 == 0)
                x = (rng_next() % 3 == 0) ? NAN : ((rng_next() % 4 == 0) ? INFINITY : -INFINITY);
            break;
        case 3: x = 0.25f; break; /* all equal */
        default: break;
        }
        l[j] = x;
    }
    if (mode == 4) /* peaked: one token far above the rest */
        l[rng_next() % V] = 25.0f;
}

static void test_greedy(void)
{
    static const size_t Vs[] = {1, 7, 1000, 49152, 128256, 256000};
    char name[128];
    for (size_t v = 0; v < COUNT(Vs); v++) {
        const size_t V = Vs[v], ld = V + 5, n = 12;
        float *l = malloc(n * ld * sizeof *l);
        kcuda_sample_params *p = malloc(n * sizeof *p);
        for (size_t i = 0; i < n; i++) {
            float *row = l + i * ld;
            fill_row(row, V, (int)(i % 3));
            for (size_t j = V; j < ld; j++) /* padding that would win if read */
                row[j] = 1e30f;
            /* Plant the max at up to four places: the lowest must win. */
            const float top = i % 4 == 3 ? INFINITY : 40.0f;
            for (size_t t = 0; t < 1 + i % 4; t++)
                row[rng_next() % V] = top;
            if (i == n - 1) /* nothing finite */
                for (size_t j = 0; j < V; j++)
                    row[j] = j % 2 ? NAN : -INFINITY;
            p[i] = (kcuda_sample_params){i % 2 ? 0.0f : -1.0f, 40, 0.5f, 0.1f, rng_uniform(0.0f, 1.0f)};
        }
        const bool ok = run_rows(l, ld, n, V, p, NULL);
        snprintf(name, sizeof name, "sample greedy V=%zu (planted ties, NaN/inf, all -inf)", V);
        report(ok, name);
        free(l), free(p);
    }
}

static void test_random_rows(void)
{
    static const size_t Vs[] = {1, 2, 3, 1000, 49152, 128256, 256000};
    char name[128];
    for (size_t v = 0; v < COUNT(Vs); v++) {
        const size_t V = Vs[v], ld = V + 7;
        const int32_t iV = (int32_t)V;
        const kcuda_sample_params table[] = {
            {1.0f, 0, 1.0f, 0.0f, 0},        /* plain softmax */
            {0.7f, 50, 1.0f, 0.0f, 0},       /* top-k */
            {1.0f, 0, 0.9f, 0.0f, 0},        /* top-p */
            {0.8f, 0, 1.0f, 0.05f, 0},       /* min-p */
            {1.2f, 40, 0.95f, 0.02f, 0},     /* all three */
            {0.6f, 1000, 0.5f, 0.0f, 0},     /* top-k then top-p */
            {0.5f, 1, 1.0f, 0.0f, 0},        /* top-k 1 */
            {1.0f, iV - 1, 1.0f, 0.0f, 0},   /* top-k just active */
            {1.0f, iV, 0.5f, 0.0f, 0},       /* top-k off at V */
            {1.0f, -1, 0.0f, 0.0f, 0},       /* top-p 0: the largest logit's tokens */
            {1.0f, 0, 1.0f, 1.5f, 0},        /* min-p above 1: the argmax */
            {1e-3f, 0, 0.9f, 0.0f, 0},       /* tiny temperature */
            {100.0f, 0, 0.99f, 0.0f, 0},     /* flat */
            {INFINITY, 0, 0.5f, 0.0f, 0},    /* every weight 2^40 */
            {1.0f, 0, NAN, NAN, 0},          /* NaN filters are off */
            {0.0f, 40, 0.9f, 0.1f, 0},       /* greedy ignores filters */
            {1.5f, 7, 0.3f, 0.0f, 0},
            {0.9f, 0, 0.999f, 0.001f, 0},
            {50.0f, 100, 0.5f, 0.0f, 0},     /* flat: top-p must cut inside the top-k */
            {1.0f, 0, 1.0f, 1.0f, 0},        /* min_p 1: the tokens tied at the max */
        };
        const size_t n = 3 * COUNT(table);
        float *l = malloc(n * ld * sizeof *l);
        kcuda_sample_params *p = malloc(n * sizeof *p);
        for (size_t i = 0; i < n; i++) {
            float *row = l + i * ld;
            fill_row(row, V, (int)(i % 5));
            for (size_t j = V; j < ld; j++)
                row[j] = j % 2 ? NAN : 1e30f;
            p[i] = table[i % COUNT(table)];
            const int u = (int)(i / COUNT(table));
            /* Uniforms: random, then the edges (0, just below 1, and values
             * the kernel must clamp: 1, NaN, negative). */
            const float edge[] = {0.0f, 0x1.fffffep-1f, 1.0f, NAN, -0.5f, 2.0f};
            p[i].uniform = u == 0 ? rng_uniform(0.0f, 1.0f) : (u == 1 ? rng_uniform(0.0f, 1.0f) : edge[i % 6]);
        }
        const bool ok = run_rows(l, ld, n, V, p, NULL);
        snprintf(name, sizeof name, "sample V=%zu: %zu rows, parameter sets and uniforms, token == ref", V, n);
        report(ok, name);
        free(l), free(p);
    }
}

static void test_known(void)
{
    /* The cases of test_ref_known, and the equal row at V = 65536 (more
     * narrowing rounds), where u = a / 64 lands on boundaries too. */
    const size_t n = COUNT(known);
    float *l = malloc(n * KNOWN_V * sizeof *l);
    kcuda_sample_params *p = malloc(n * sizeof *p);
    int32_t *got = malloc(n * sizeof *got);
    for (size_t c = 0; c < n; c++) {
        known_row(l + c * KNOWN_V, KNOWN_V, known[c].distinct);
        p[c] = known[c].p;
    }
    bool ok = run_rows(l, KNOWN_V, n, KNOWN_V, p, got);
    for (size_t c = 0; c < n; c++) {
        if (got[c] != known[c].want) {
            printf("     case %zu: token %d, want %d\n", c, got[c], known[c].want);
            ok = false;
        }
    }
    report(ok, "sample known answers on exact cumulative boundaries V=1024");

    const size_t V = 65536, m = 64;
    float *big = malloc(m * V * sizeof *big);
    kcuda_sample_params *q = malloc(m * sizeof *q);
    int32_t *tok = malloc(m * sizeof *tok);
    for (size_t i = 0; i < m; i++) {
        known_row(big + i * V, V, i % 2 == 1);
        q[i] = (kcuda_sample_params){i % 2 ? INFINITY : 1.0f, 0, 1.0f, 0.0f, (float)i / 64.0f};
    }
    ok = run_rows(big, V, m, V, q, tok);
    for (size_t i = 0; i < m; i++)
        ok = ok && tok[i] == (int32_t)(i * 1024);
    report(ok, "sample known answers on exact cumulative boundaries V=65536");
    free(l), free(p), free(got), free(big), free(q), free(tok);
}

static void test_device_distribution(void)
{
    char name[200];
    const size_t n = DIST_N, ld = 10;
    float *l = malloc(n * ld * sizeof *l);
    kcuda_sample_params *p = malloc(n * sizeof *p);
    int32_t *got = malloc(n * sizeof *got);
    for (size_t i = 0; i < n; i++)
        memcpy(l + i * ld, dist_logits, sizeof dist_logits);
    for (size_t c = 0; c < COUNT(dist_params); c++) {
        for (size_t i = 0; i < n; i++) {
            p[i] = dist_params[c];
            p[i].uniform = rng_uniform(0.0f, 1.0f);
        }
        bool ok = run_rows(l, ld, n, 10, p, got);
        size_t count[10] = {0};
        for (size_t i = 0; i < n && ok; i++) {
            ok = got[i] >= 0 && got[i] < 10;
            if (ok)
                count[got[i]]++;
        }
        double chi2 = 0.0;
        ok = ok && chi_square_ok(count, n, &p[0], &chi2);
        snprintf(name, sizeof name, "sample distribution (device) T=%g top_k=%d top_p=%g min_p=%g: chi-square %.2f",
                 p[0].temperature, p[0].top_k, p[0].top_p, p[0].min_p, chi2);
        report(ok, name);
    }
    free(l), free(p), free(got);
}

int main(void)
{
    test_seed(0x5a3b1eull);
    test_exp();
    test_invalid_args();
    test_ref_greedy();
    test_ref_known();
    test_ref_filters();
    test_ref_distribution();

    test_require_device();
    test_greedy();
    test_random_rows();
    test_known();
    test_device_distribution();
    return test_finish();
}
