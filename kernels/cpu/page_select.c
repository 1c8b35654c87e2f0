/* Query-aware page selection (DESIGN.md section 5), CPU reference: the page
 * score and the choice of pages within a token budget (attention over the
 * chosen pages is kcpu_attn_paged_sparse, in attn.c). These are the
 * definitions the CUDA kernels must match.
 *
 * P = page_size, hd = head_dim, n_q = query heads sharing one KV head. A page
 * index j names pages[j], the j-th entry of one KV head's block table; it
 * holds positions [j * P, min((j + 1) * P, n_ctx)). */

/* No FMA contraction: the score must keep the exact operations of
 * kcpu_dot_f32 (that is what makes it a bound in float, see below). */
#pragma GCC optimize("fp-contract=off")

#include "kcpu_ops.h"

#include "proteus/dtype.h"

#include <assert.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define LANES 8

/* Same lanes and tree as kcpu_dot_f32 in ops.c. */
static inline float lanes_sum(const float acc[LANES]) {
    float s0 = acc[0] + acc[4], s1 = acc[1] + acc[5], s2 = acc[2] + acc[6], s3 = acc[3] + acc[7];
    return (s0 + s2) + (s1 + s3);
}

/* Each term max(q*min, q*max) is, in exact arithmetic, at least q*k for any
 * k in [min, max]. Rounding to nearest is monotone, so the rounded products
 * and the rounded sums taken in the same order as kcpu_dot_f32 keep that
 * inequality: the score is >= kcpu_dot_f32(q, k) in float, with no slack,
 * for every key of the page, and equal to it when min == max (one token). */
float kcpu_page_score(const float *q, size_t n_q, size_t hd, const float *kmin, const float *kmax) {
    float best = -INFINITY;
    for (size_t h = 0; h < n_q; h++) {
        const float *qh = q + h * hd;
        float acc[LANES] = {0};
        size_t i = 0;
        for (; i + LANES <= hd; i += LANES)
            for (int l = 0; l < LANES; l++) {
                float a = qh[i + l] * kmin[i + l], b = qh[i + l] * kmax[i + l];
                acc[l] += a > b ? a : b;
            }
        for (int l = 0; i < hd; i++, l++) {
            float a = qh[i] * kmin[i], b = qh[i] * kmax[i];
            acc[l] += a > b ? a : b;
        }
        float s = lanes_sum(acc);
        best = s > best ? s : best;
    }
    return best;
}

/* Strict total order on candidate pages (for finite scores): higher score
 * first, then lower index. It makes the chosen set unique. */
static inline int page_better(const float *score, uint32_t a, uint32_t b) {
    return score[a] > score[b] || (score[a] == score[b] && a < b);
}

/* heap[0..n) is a heap whose root is the worst page kept so far. */
static void heap_sift_down(uint32_t *heap, size_t n, size_t i, const float *score) {
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, w = i;
        if (l < n && page_better(score, heap[w], heap[l])) w = l;
        if (r < n && page_better(score, heap[w], heap[r])) w = r;
        if (w == i) return;
        uint32_t t = heap[i];
        heap[i] = heap[w];
        heap[w] = t;
        i = w;
    }
}

static void heap_sift_up(uint32_t *heap, size_t i, const float *score) {
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!page_better(score, heap[p], heap[i])) return;
        uint32_t t = heap[i];
        heap[i] = heap[p];
        heap[p] = t;
        i = p;
    }
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

size_t kcpu_page_select(uint32_t *selected, const float *q, size_t n_q, size_t hd, const float *minmax_base,
                        const uint32_t *pages, uint32_t n_pages, uint32_t page_size, uint32_t n_ctx,
                        uint32_t budget_tokens, float *scratch) {
    assert(page_size > 0);
    assert(n_pages == (uint32_t)(((uint64_t)n_ctx + page_size - 1) / page_size));
    if (n_ctx <= budget_tokens || n_pages <= 2) {
        for (uint32_t j = 0; j < n_pages; j++) selected[j] = j;
        return n_pages;
    }
    /* The sink and the current page are charged a full page each, whatever
     * the current page holds, so the count never depends on its fill. */
    uint32_t n_mid = n_pages - 2;
    uint32_t k = budget_tokens >= 2 * (uint64_t)page_size ? (budget_tokens - 2 * page_size) / page_size : 0;
    if (k > n_mid) k = n_mid;

    /* Middle pages are all full: their boxes cover exactly P keys. */
    uint32_t *heap = selected + 1;
    size_t n_heap = 0;
    if (k > 0) {
        for (uint32_t j = 1; j <= n_mid; j++) {
            const float *mm = minmax_base + (size_t)pages[j] * 2 * hd;
            scratch[j] = kcpu_page_score(q, n_q, hd, mm, mm + hd);
            if (n_heap < k) {
                heap[n_heap] = j;
                heap_sift_up(heap, n_heap++, scratch);
            } else if (page_better(scratch, j, heap[0])) {
                heap[0] = j;
                heap_sift_down(heap, n_heap, 0, scratch);
            }
        }
        qsort(heap, n_heap, sizeof(uint32_t), cmp_u32);
    }
    selected[0] = 0;
    selected[1 + n_heap] = n_pages - 1;
    return n_heap + 2;
}
