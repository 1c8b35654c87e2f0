/* References for query-aware page selection. See kcuda_select_ref.h. */

/* The float score must keep the separate roundings of kcpu_page_score. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "ref/kcuda_select_ref.h"

#include <math.h>
#include <stdlib.h>

float kcuda_ref_page_score(const float *q, size_t n_q, size_t hd, const float *kmin, const float *kmax)
{
    float best = -INFINITY;
    for (size_t h = 0; h < n_q; h++) {
        const float *qh = q + h * hd;
        float acc[8] = {0};
        for (size_t i = 0; i < hd; i++) {
            float a = qh[i] * kmin[i], b = qh[i] * kmax[i];
            acc[i % 8] += a > b ? a : b;
        }
        float s = ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
        if (s > best)
            best = s;
    }
    return best;
}

double kcuda_ref_page_score_f64(const float *q, size_t n_q, size_t hd, const float *kmin,
                                const float *kmax, double *mag)
{
    double best = -INFINITY, best_mag = 0.0;
    for (size_t h = 0; h < n_q; h++) {
        const float *qh = q + h * hd;
        double s = 0.0, m = 0.0;
        for (size_t i = 0; i < hd; i++) {
            double a = (double)qh[i] * kmin[i], b = (double)qh[i] * kmax[i];
            double t = a > b ? a : b;
            s += t;
            m += fabs(t);
        }
        if (s > best) {
            best = s;
            best_mag = m;
        }
    }
    if (mag)
        *mag = best_mag;
    return best;
}

/* qsort context: the scores being ranked (qsort has no user argument). */
static const float *rank_scores;

static int rank_cmp(const void *pa, const void *pb)
{
    int32_t a = *(const int32_t *)pa, b = *(const int32_t *)pb;
    float sa = rank_scores[a], sb = rank_scores[b];
    if (sa > sb)
        return -1;
    if (sa < sb)
        return 1;
    return (a > b) - (a < b);
}

static int index_cmp(const void *pa, const void *pb)
{
    int32_t a = *(const int32_t *)pa, b = *(const int32_t *)pb;
    return (a > b) - (a < b);
}

size_t kcuda_ref_page_select(int32_t *sel, const float *scores, uint32_t n_ctx, uint32_t page_size,
                             uint32_t budget_tokens)
{
    const uint32_t n_pages = (uint32_t)(((uint64_t)n_ctx + page_size - 1) / page_size);
    if (n_ctx <= budget_tokens || n_pages <= 2) {
        for (uint32_t j = 0; j < n_pages; j++)
            sel[j] = (int32_t)j;
        return n_pages;
    }
    const uint32_t n_mid = n_pages - 2;
    uint64_t k = budget_tokens >= 2 * (uint64_t)page_size ? (budget_tokens - 2 * (uint64_t)page_size) / page_size : 0;
    if (k > n_mid)
        k = n_mid;

    /* Rank the middle pages in sel[1 ..], keep the first k, put them back in
     * page order. */
    for (uint32_t m = 0; m < n_mid; m++)
        sel[1 + m] = (int32_t)(1 + m);
    rank_scores = scores;
    qsort(sel + 1, n_mid, sizeof *sel, rank_cmp);
    qsort(sel + 1, (size_t)k, sizeof *sel, index_cmp);
    sel[0] = 0;
    sel[1 + k] = (int32_t)(n_pages - 1);
    return (size_t)k + 2;
}
