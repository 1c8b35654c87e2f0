/* Query-aware page selection kernels (kcuda_page_score, kcuda_page_topk)
 * against their C references (ref/kcuda_select_ref.c).
 *
 * Scores: the device must give the bits of kcuda_ref_page_score (the
 * operation order of kcpu_page_score), and be within
 *     |got - want| <= 1e-5 * max(|want|, sum_i |term_i|)
 * of the double-accumulated bound (term_i = max(q_i kmin_i, q_i kmax_i) of the
 * head that gives the max; float rounding of 16 sequential and 3 tree sums is
 * below 2e-6 of the terms' magnitude). Entries past each row's n_pages must
 * stay untouched.
 * Top-k: given the scores the device produced (downloaded), the C rule must
 * give the same page list and count exactly, and nothing past the count is
 * written. Cases: budgets below two pages, between pages, n_ctx <= budget,
 * n_pages <= 2, partial last pages, mixed lengths in one batch, shuffled slot
 * ids (and shared slots, which give equal scores), contexts up to 128K at
 * P = 16 (8192 pages), constructed ties (a few distinct values, +-0, +-inf).
 * The host-only parts (known answers of the reference, argument checks) run
 * everywhere; without a GPU the program prints "SKIP: no CUDA device" and
 * exits 77 (1 if a host-only check failed). PROTEUS_TEST_SEED overrides the
 * seed. */

/* dot_lanes below must round every product and sum, as kcpu_dot_f32 does. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "kcuda.h"
#include "kcuda_attn.h"
#include "ref/kcuda_select_ref.h"
#include "kcuda_test.h"

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* ---- host-only checks ---------------------------------------------------- */

static bool sel_equal(const int32_t *got, size_t n_got, const int32_t *want, size_t n_want)
{
    if (n_got != n_want) {
        printf("     count %zu, want %zu\n", n_got, n_want);
        return false;
    }
    for (size_t i = 0; i < n_want; i++) {
        if (got[i] != want[i]) {
            printf("     entry %zu: page %d, want %d\n", i, got[i], want[i]);
            return false;
        }
    }
    return true;
}

static void test_ref_select_known(void)
{
    /* 10 pages of 16 (n_ctx 160, last page full), budget 80: k = (80 - 32) / 16
     * = 3 middle pages. Middle scores by page 1..8: 5 1 5 3 7 5 0 -1. Page 5
     * (7) first, then the 5s in index order: 1, 3 (page 6 loses the tie). */
    const float s1[10] = {99, 5, 1, 5, 3, 7, 5, 0, -1, 99};
    const int32_t w1[] = {0, 1, 3, 5, 9};
    int32_t sel[16];
    size_t n = kcuda_ref_page_select(sel, s1, 160, 16, 80);
    bool ok = sel_equal(sel, n, w1, COUNT(w1));
    /* Budget 95 still gives k = 3 (pages are charged whole); 96 gives 4,
     * which takes page 6 too. Partial last page (n_ctx 150) changes nothing. */
    n = kcuda_ref_page_select(sel, s1, 150, 16, 95);
    ok = ok && sel_equal(sel, n, w1, COUNT(w1));
    const int32_t w2[] = {0, 1, 3, 5, 6, 9};
    n = kcuda_ref_page_select(sel, s1, 160, 16, 96);
    ok = ok && sel_equal(sel, n, w2, COUNT(w2));
    /* Below two pages of budget: sink and current only. */
    const int32_t w3[] = {0, 9};
    n = kcuda_ref_page_select(sel, s1, 160, 16, 31);
    ok = ok && sel_equal(sel, n, w3, COUNT(w3));
    n = kcuda_ref_page_select(sel, s1, 160, 16, 0);
    ok = ok && sel_equal(sel, n, w3, COUNT(w3));
    /* n_ctx <= budget: everything, whatever the scores. */
    const int32_t all10[] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
    n = kcuda_ref_page_select(sel, s1, 160, 16, 160);
    ok = ok && sel_equal(sel, n, all10, 10);
    /* Two pages: both, even with no budget. */
    n = kcuda_ref_page_select(sel, s1, 17, 16, 0);
    ok = ok && sel_equal(sel, n, all10, 2);
    /* -0 ties +0 (lower index wins); -inf and +inf order as floats. */
    const float s2[7] = {0, -0.0f, 0.0f, -INFINITY, INFINITY, -1, 0};
    const int32_t w4[] = {0, 1, 4, 6};
    n = kcuda_ref_page_select(sel, s2, 7 * 16, 16, 4 * 16);
    ok = ok && sel_equal(sel, n, w4, COUNT(w4));
    report(ok, "ref page_select known answers (ties, budgets, n_ctx <= budget, 2 pages)");
}

/* The 8-lane order of kcpu_dot_f32, for q . k. */
static float dot_lanes(const float *q, const float *k, size_t hd)
{
    float acc[8] = {0};
    for (size_t i = 0; i < hd; i++)
        acc[i % 8] += q[i] * k[i];
    return ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
}

static void test_ref_score(void)
{
    /* The float score bounds q.k (same order) for every key of the box and
     * every head, equals it for a one-key box, and is close to the double. */
    bool ok = true;
    double worst = 0.0;
    for (int t = 0; t < 200 && ok; t++) {
        const size_t hd = t % 2 ? 128 : 36, n_q = 1 + t % 5;
        float *q = rand_floats(n_q * hd, -1.0f, 1.0f), *a = rand_floats(hd, -2.0f, 2.0f);
        float *b = rand_floats(hd, -2.0f, 2.0f), *lo = malloc(hd * 4), *hi = malloc(hd * 4), *k = malloc(hd * 4);
        for (size_t i = 0; i < hd; i++) {
            lo[i] = fminf(a[i], b[i]);
            hi[i] = fmaxf(a[i], b[i]);
        }
        const float s = kcuda_ref_page_score(q, n_q, hd, lo, hi);
        for (int trial = 0; trial < 20; trial++) {
            for (size_t i = 0; i < hd; i++)
                k[i] = fminf(fmaxf(lo[i] + (hi[i] - lo[i]) * rng_uniform(0.0f, 1.0f), lo[i]), hi[i]);
            for (size_t h = 0; h < n_q; h++)
                ok = ok && dot_lanes(q + h * hd, k, hd) <= s;
        }
        float one = -INFINITY;
        for (size_t h = 0; h < n_q; h++)
            one = fmaxf(one, dot_lanes(q + h * hd, a, hd));
        ok = ok && kcuda_ref_page_score(q, n_q, hd, a, a) == one;
        double mag;
        const double d = kcuda_ref_page_score_f64(q, n_q, hd, lo, hi, &mag);
        const double err = fabs(s - d) / fmax(fabs(d), mag);
        worst = fmax(worst, err);
        ok = ok && err <= 1e-5;
        free(q), free(a), free(b), free(lo), free(hi), free(k);
    }
    if (!ok)
        printf("     bound violated or float/double gap %.3g\n", worst);
    report(ok, "ref page_score: bound of q.k over the box, exact for one key, ~ double");
}

static void test_invalid_args(void)
{
    /* These return before touching the device, so they run without a GPU. */
    float f = 0.0f;
    int32_t i32 = 0;
    kcuda_run run = {0, 1, 0, 0};
    kcuda_attn_args a;
    memset(&a, 0, sizeof a);
    a.in.q = &f;
    a.in.ld = 64;
    a.in.group_stride = 64;
    a.kv.minmax = &f;
    a.kv.n_slots = 1;
    a.kv.page_size = 16;
    a.kv.head_dim = 16;
    a.bt.block_tables = &i32;
    a.bt.bt_stride = 4;
    a.runs = &run;
    a.n_runs = 1;
    a.n_kv_heads = 1;
    a.q_per_kv = 2;
    a.head_dim = 16;
    a.max_ctx = 64;
    bool ok = kcuda_page_score(NULL, 4, &a, 0) == cudaErrorInvalidValue &&
              kcuda_page_score(&f, 4, NULL, 0) == cudaErrorInvalidValue &&
              kcuda_page_score(&f, 3, &a, 0) == cudaErrorInvalidValue; /* 4 pages need stride 4 */
    kcuda_attn_args b = a;
    b.kv.page_size = 0;
    ok = ok && kcuda_page_score(&f, 4, &b, 0) == cudaErrorInvalidValue;
    b = a;
    b.kv.head_dim = 8;
    ok = ok && kcuda_page_score(&f, 4, &b, 0) == cudaErrorInvalidValue;
    b = a;
    b.bt.bt_stride = 3;
    ok = ok && kcuda_page_score(&f, 4, &b, 0) == cudaErrorInvalidValue;
    b = a;
    b.in.q = NULL;
    ok = ok && kcuda_page_score(&f, 4, &b, 0) == cudaErrorInvalidValue;
    b = a;
    b.max_ctx = 0;
    ok = ok && kcuda_page_score(&f, 4, &b, 0) == cudaErrorInvalidValue;
    b = a;
    b.n_runs = 0;
    ok = ok && kcuda_page_score(NULL, 0, &b, 0) == cudaSuccess;

    const kcuda_page_list out = {&i32, &i32, 4}, no_sel = {NULL, &i32, 4}, narrow = {&i32, &i32, 3};
    ok = ok && kcuda_page_topk(&out, NULL, 4, &run, 1, 1, 16, 32, 64, 0) == cudaErrorInvalidValue &&
         kcuda_page_topk(NULL, &f, 4, &run, 1, 1, 16, 32, 64, 0) == cudaErrorInvalidValue &&
         kcuda_page_topk(&no_sel, &f, 4, &run, 1, 1, 16, 32, 64, 0) == cudaErrorInvalidValue &&
         kcuda_page_topk(&narrow, &f, 4, &run, 1, 1, 16, 32, 64, 0) == cudaErrorInvalidValue &&
         kcuda_page_topk(&out, &f, 3, &run, 1, 1, 16, 32, 64, 0) == cudaErrorInvalidValue &&
         kcuda_page_topk(&out, &f, 4, NULL, 1, 1, 16, 32, 64, 0) == cudaErrorInvalidValue &&
         kcuda_page_topk(&out, &f, 4, &run, 1, 1, 0, 32, 64, 0) == cudaErrorInvalidValue &&
         kcuda_page_topk(&out, &f, 4, &run, 1, 1, 16, 32, 0, 0) == cudaErrorInvalidValue &&
         kcuda_page_topk(NULL, NULL, 0, NULL, 0, 1, 16, 32, 64, 0) == cudaSuccess &&
         kcuda_page_topk(NULL, NULL, 0, NULL, 1, 0, 16, 32, 64, 0) == cudaSuccess;
    report(ok, "page_score / page_topk reject bad arguments and accept empty work");
}

/* ---- device helpers ------------------------------------------------------ */

#define SCORE_SENTINEL 12345.0f
#define SEL_SENTINEL (-7)

/* Random permutation of [0, n). */
static uint32_t *rand_perm(size_t n)
{
    uint32_t *p = malloc(n * sizeof *p);
    for (size_t i = 0; i < n; i++)
        p[i] = (uint32_t)i;
    for (size_t i = n; i > 1; i--) {
        size_t j = rng_next() % i;
        uint32_t t = p[i - 1];
        p[i - 1] = p[j];
        p[j] = t;
    }
    return p;
}

static uint32_t n_pages_of(uint32_t n_ctx, uint32_t P) { return (n_ctx + P - 1) / P; }

/* Runs kcuda_page_topk on device scores d_scores (rows of score_stride, as in
 * the host copy `scores`) for each budget and compares with the C rule. */
static bool check_topk(const float *scores, const float *d_scores, size_t score_stride, const kcuda_run *runs,
                       const kcuda_run *d_runs, size_t n_runs, size_t H, uint32_t P, uint32_t max_ctx,
                       const uint32_t *budgets, size_t n_budgets, const char *what)
{
    const uint32_t max_pages = n_pages_of(max_ctx, P);
    const size_t sel_stride = max_pages + 2, rows = n_runs * H;
    int32_t *sel = malloc(rows * sel_stride * sizeof *sel), *n_sel = malloc(rows * sizeof *n_sel);
    int32_t *want = malloc(sel_stride * sizeof *want);
    for (size_t i = 0; i < rows * sel_stride; i++)
        sel[i] = SEL_SENTINEL;
    int32_t *d_sel = dev_upload(sel, rows * sel_stride * 4), *d_n = dev_upload(NULL, rows * 4);
    const kcuda_page_list out = {d_sel, d_n, sel_stride};
    bool all_ok = true;
    char name[300];
    for (size_t b = 0; b < n_budgets; b++) {
        CUDA_CHECK_FATAL(cudaMemcpy(d_sel, sel, rows * sel_stride * 4, cudaMemcpyHostToDevice));
        CUDA_CHECK_FATAL(cudaDeviceSynchronize()); /* the stream does not order after the legacy one */
        bool ok = kcuda_page_topk(&out, d_scores, score_stride, d_runs, n_runs, H, P, budgets[b], max_ctx,
                                  stream) == cudaSuccess;
        int32_t *got = malloc(rows * sel_stride * sizeof *got);
        dev_download(got, d_sel, rows * sel_stride * 4);
        dev_download(n_sel, d_n, rows * 4);
        for (size_t r = 0; r < n_runs && ok; r++) {
            const int64_t n_ctx = (int64_t)runs[r].pos0 + 1;
            for (size_t h = 0; h < H && ok; h++) {
                const size_t row = r * H + h;
                size_t n_want = 0;
                if (n_ctx <= max_ctx)
                    n_want = kcuda_ref_page_select(want, scores + row * score_stride, (uint32_t)n_ctx, P, budgets[b]);
                if (!sel_equal(got + row * sel_stride, (size_t)n_sel[row], want, n_want)) {
                    printf("     run %zu (n_ctx %" PRId64 ") head %zu budget %u\n", r, n_ctx, h, budgets[b]);
                    ok = false;
                }
                for (size_t i = n_want; i < sel_stride && ok; i++) {
                    if (got[row * sel_stride + i] != SEL_SENTINEL) {
                        printf("     run %zu head %zu: entry %zu past the count was written\n", r, h, i);
                        ok = false;
                    }
                }
            }
        }
        snprintf(name, sizeof name, "page_topk %s budget=%u", what, budgets[b]);
        report(ok, name);
        all_ok = all_ok && ok;
        free(got);
    }
    cudaFree(d_sel), cudaFree(d_n);
    free(sel), free(n_sel), free(want);
    return all_ok;
}

/* ---- device cases -------------------------------------------------------- */

typedef struct {
    size_t H, G, hd;     /* KV heads, query heads per KV head, head_dim */
    uint32_t P;          /* page size */
    uint32_t ctx[16];    /* decode contexts of the batch (0 ends the list) */
} score_cfg;

static void test_score_topk(const score_cfg *cfg)
{
    const size_t H = cfg->H, G = cfg->G, hd = cfg->hd;
    const uint32_t P = cfg->P;
    size_t n_runs = 0;
    uint32_t max_ctx = 0;
    while (n_runs < COUNT(cfg->ctx) && cfg->ctx[n_runs]) {
        if (cfg->ctx[n_runs] > max_ctx)
            max_ctx = cfg->ctx[n_runs];
        n_runs++;
    }
    const uint32_t max_pages = n_pages_of(max_ctx, P);
    const size_t bt_stride = max_pages + 1, score_stride = max_pages + 3;
    const size_t n_seq = n_runs + 2;

    /* Runs: shuffled rows and sequence ids. */
    uint32_t *row_of = rand_perm(n_runs), *seq_of = rand_perm(n_seq);
    kcuda_run *runs = malloc(n_runs * sizeof *runs);
    size_t total_pages = 0;
    for (size_t r = 0; r < n_runs; r++) {
        runs[r] = (kcuda_run){(int32_t)row_of[r], 1, (int32_t)cfg->ctx[r] - 1, (int32_t)seq_of[r]};
        total_pages += n_pages_of(cfg->ctx[r], P) * H;
    }

    /* Slots: a random permutation, except that about one page in 16 reuses the
     * slot of the page before it (equal boxes give equal scores: ties). */
    const size_t n_slots = total_pages + 5;
    uint32_t *slot_perm = rand_perm(n_slots);
    int32_t *bt = malloc(n_seq * H * bt_stride * sizeof *bt);
    for (size_t i = 0; i < n_seq * H * bt_stride; i++)
        bt[i] = -1;
    size_t next = 0;
    for (size_t r = 0; r < n_runs; r++) {
        for (size_t h = 0; h < H; h++) {
            int32_t *row = bt + ((size_t)runs[r].seq * H + h) * bt_stride;
            for (uint32_t j = 0; j < n_pages_of(cfg->ctx[r], P); j++) {
                const bool share = j > 1 && rng_next() % 16 == 0;
                row[j] = share ? row[j - 1] : (int32_t)slot_perm[next];
                next++;
            }
        }
    }
    /* Boxes: random, a few of a single key (min == max). */
    float *minmax = malloc(n_slots * 2 * hd * sizeof *minmax);
    for (size_t s = 0; s < n_slots; s++) {
        float *mn = minmax + s * 2 * hd, *mx = mn + hd;
        const bool point = rng_next() % 8 == 0;
        for (size_t i = 0; i < hd; i++) {
            const float a = rng_uniform(-2.0f, 2.0f), b = point ? a : rng_uniform(-2.0f, 2.0f);
            mn[i] = fminf(a, b);
            mx[i] = fmaxf(a, b);
        }
    }
    /* Fused QKV rows in the chunk layout; K and V parts are NaN, so reading
     * them instead of q would show. */
    const size_t group_stride = (G + 2) * hd, ld = H * group_stride + 3;
    float *qkv = malloc(n_runs * ld * sizeof *qkv);
    for (size_t t = 0; t < n_runs; t++)
        for (size_t c = 0; c < ld; c++)
            qkv[t * ld + c] = (c < H * group_stride && c % group_stride < G * hd) ? rng_uniform(-1.0f, 1.0f) : NAN;

    float *scores = malloc(n_runs * H * score_stride * sizeof *scores);
    for (size_t i = 0; i < n_runs * H * score_stride; i++)
        scores[i] = SCORE_SENTINEL;
    float *d_minmax = dev_upload(minmax, n_slots * 2 * hd * 4), *d_qkv = dev_upload(qkv, n_runs * ld * 4);
    float *d_scores = dev_upload(scores, n_runs * H * score_stride * 4);
    int32_t *d_bt = dev_upload(bt, n_seq * H * bt_stride * 4);
    kcuda_run *d_runs = dev_upload(runs, n_runs * sizeof *runs);

    kcuda_attn_args a;
    memset(&a, 0, sizeof a);
    a.in = (kcuda_qkv){d_qkv, d_qkv + G * hd, d_qkv + (G + 1) * hd, ld, group_stride};
    a.kv = (kcuda_kv_layer){NULL, d_minmax, (uint32_t)n_slots, P, (uint32_t)hd};
    a.bt = (kcuda_pages){d_bt, bt_stride};
    a.runs = d_runs;
    a.n_runs = n_runs;
    a.n_kv_heads = H;
    a.q_per_kv = G;
    a.head_dim = hd;
    a.scale = 1.0f / sqrtf((float)hd);
    a.max_ctx = max_ctx;
    bool ok = kcuda_page_score(d_scores, score_stride, &a, stream) == cudaSuccess;
    dev_download(scores, d_scores, n_runs * H * score_stride * 4);

    size_t bad_bits = 0, bad_tol = 0, bad_tail = 0;
    double worst = 0.0;
    for (size_t r = 0; r < n_runs; r++) {
        const uint32_t np = n_pages_of(cfg->ctx[r], P);
        for (size_t h = 0; h < H; h++) {
            const float *q = qkv + (size_t)runs[r].row0 * ld + h * group_stride;
            const int32_t *row = bt + ((size_t)runs[r].seq * H + h) * bt_stride;
            const float *got = scores + (r * H + h) * score_stride;
            for (uint32_t j = 0; j < np; j++) {
                const float *mn = minmax + (size_t)row[j] * 2 * hd;
                const float want = kcuda_ref_page_score(q, G, hd, mn, mn + hd);
                double mag;
                const double wd = kcuda_ref_page_score_f64(q, G, hd, mn, mn + hd, &mag);
                const double err = fabs((double)got[j] - wd) / fmax(fabs(wd), mag);
                if (memcmp(&got[j], &want, 4) != 0 && bad_bits++ == 0)
                    printf("     run %zu head %zu page %u: got %.9g, want (bits) %.9g\n", r, h, j, got[j], want);
                if (!(err <= 1e-5) && bad_tol++ == 0)
                    printf("     run %zu head %zu page %u: got %.9g, double %.9g\n", r, h, j, got[j], wd);
                worst = err > worst ? err : worst;
            }
            for (size_t j = np; j < score_stride; j++)
                bad_tail += got[j] != SCORE_SENTINEL;
        }
    }
    if (bad_bits || bad_tol || bad_tail)
        printf("     %zu not bit-equal, %zu out of tolerance (worst %.3g), %zu written past n_pages\n", bad_bits,
               bad_tol, worst, bad_tail);
    char name[200];
    snprintf(name, sizeof name, "page_score H=%zu G=%zu hd=%zu P=%u max_ctx=%u: bits of the ref, rel err %.2g",
             H, G, hd, P, max_ctx, worst);
    report(ok && !bad_bits && !bad_tol && !bad_tail, name);

    /* Top-k from these scores. Budgets: none, below two pages, two pages,
     * between pages, a few pages, long-context budgets, one run's exact
     * n_ctx, and more than every context. */
    const uint32_t budgets[] = {0, P - 1, 2 * P - 1, 2 * P, 3 * P - 1, 3 * P, 5 * P + 3, 64 * P, 2048, 4096,
                                cfg->ctx[0], cfg->ctx[0] - 1, UINT32_MAX};
    snprintf(name, sizeof name, "H=%zu G=%zu P=%u max_ctx=%u", H, G, P, max_ctx);
    check_topk(scores, d_scores, score_stride, runs, d_runs, n_runs, H, P, max_ctx, budgets, COUNT(budgets), name);

    cudaFree(d_minmax), cudaFree(d_qkv), cudaFree(d_scores), cudaFree(d_bt), cudaFree(d_runs);
    free(row_of), free(seq_of), free(runs), free(slot_perm), free(bt), free(minmax), free(qkv), free(scores);
}

/* Top-k on constructed scores: few distinct values (heavy ties), signed
 * zeros, infinities, all equal, monotone rows; up to 20000 pages. One run
 * lies beyond max_ctx and must get an empty list. */
static void test_topk_constructed(void)
{
    const uint32_t P = 16, H = 3;
    const uint32_t ctx[] = {1, 16, 17, 32, 33, 49, 200, 1000, 16 * 8192, 16 * 8192 - 5, 16 * 20000, 16 * 20000 + 1, 5000};
    const size_t n_runs = COUNT(ctx);
    const uint32_t max_ctx = 16 * 20000 + 1;
    const uint32_t max_pages = n_pages_of(max_ctx, P);
    const size_t score_stride = max_pages + 1;
    kcuda_run *runs = malloc((n_runs + 1) * sizeof *runs);
    for (size_t r = 0; r < n_runs; r++)
        runs[r] = (kcuda_run){(int32_t)r, 1, (int32_t)ctx[r] - 1, (int32_t)r};
    runs[n_runs] = (kcuda_run){0, 1, (int32_t)max_ctx, 0}; /* n_ctx = max_ctx + 1 */
    const float few[] = {-1.0f, 0.0f, -0.0f, 1.0f, 2.0f, INFINITY, -INFINITY, 2.0f, 1.0f};
    const float zeros[] = {1.0f, 0.0f, -0.0f, 0.0f, -0.0f, -1.0f};
    float *scores = malloc((n_runs + 1) * H * score_stride * sizeof *scores);
    for (size_t r = 0; r <= n_runs; r++) {
        for (size_t h = 0; h < H; h++) {
            float *row = scores + (r * H + h) * score_stride;
            const int mode = (int)((r + h) % 6);
            for (size_t j = 0; j < score_stride; j++) {
                switch (mode) {
                case 0: row[j] = few[rng_next() % COUNT(few)]; break;
                case 5: row[j] = zeros[rng_next() % COUNT(zeros)]; break; /* the cut falls among the zeros */
                case 1: row[j] = 0.5f; break;
                case 2: row[j] = (float)j * 0.25f; break;
                case 3: row[j] = -(float)(j % 7); break;
                default: row[j] = rng_uniform(-3.0f, 3.0f); break;
                }
            }
        }
    }
    float *d_scores = dev_upload(scores, (n_runs + 1) * H * score_stride * 4);
    kcuda_run *d_runs = dev_upload(runs, (n_runs + 1) * sizeof *runs);
    const uint32_t budgets[] = {0, 2 * P, 3 * P, 10 * P, 100 * P + 7, 2048, 4096, 16 * 8191, 16 * 8192, 16 * 19999};
    check_topk(scores, d_scores, score_stride, runs, d_runs, n_runs + 1, H, P, max_ctx, budgets, COUNT(budgets),
               "constructed ties, up to 20000 pages");
    cudaFree(d_scores), cudaFree(d_runs);
    free(runs), free(scores);
}

int main(void)
{
    test_seed(0x5e1ec7ull);
    test_ref_select_known();
    test_ref_score();
    test_invalid_args();

    test_require_device();

    static const score_cfg cfgs[] = {
        /* Llama-3 8B-like: 8 KV heads, 4 query heads each. */
        {8, 4, 128, 16, {1000, 1, 2, 15, 16, 17, 32, 33, 48, 100, 2047, 2048, 2049, 5000}},
        /* head_dim not a multiple of 8 (the tail of kcpu_dot_f32), 7 heads, P 32. */
        {2, 7, 100, 32, {700, 31, 32, 33, 64, 65, 96, 3333}},
        /* 128K context at P = 16: 8192 pages. */
        {2, 4, 128, 16, {131072, 131071, 65537, 300, 47}},
        /* Page size 1 and one query head. */
        {1, 1, 64, 1, {50, 1, 2, 3, 4}},
    };
    for (size_t c = 0; c < COUNT(cfgs); c++)
        test_score_topk(&cfgs[c]);
    test_topk_constructed();

    return test_finish();
}
