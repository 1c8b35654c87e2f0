/* Plain C references for the query-aware page selection kernels of
 * kcuda_attn.h (kcuda_page_score, kcuda_page_topk), on host memory. They
 * restate the rule of kernels/cpu/page_select.c (kcpu_page_score,
 * kcpu_page_select) without depending on the CPU kernel library.
 *
 * P = page_size, hd = head_dim, n_q = query heads sharing one KV head. Page j
 * of a context of n_ctx tokens holds positions [j * P, min((j + 1) * P, n_ctx)),
 * n_pages = ceil(n_ctx / P). */
#ifndef PROTEUS_KCUDA_SELECT_REF_H
#define PROTEUS_KCUDA_SELECT_REF_H

#include <stddef.h>
#include <stdint.h>

/* The page score in float, with the exact operations and order of
 * kcpu_page_score: per query head, lane l = i % 8 accumulates
 * max(q_i * kmin_i, q_i * kmax_i) over i in increasing order (products and sums
 * rounded separately, no FMA), the eight lanes are combined as
 * ((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7)), and the result is the max
 * over the n_q heads. kcuda_page_score gives these bits exactly. q is (n_q, hd). */
float kcuda_ref_page_score(const float *q, size_t n_q, size_t hd, const float *kmin, const float *kmax);

/* The same bound accumulated in double, each head's terms summed in index
 * order: the more exact side of a tolerance comparison. *mag, when not NULL,
 * receives sum_i |term_i| of the head that gave the max, the scale of the
 * float rounding error. */
double kcuda_ref_page_score_f64(const float *q, size_t n_q, size_t hd, const float *kmin,
                                const float *kmax, double *mag);

/* The selection rule of kcpu_page_select, applied to given scores (scores[j]
 * for page j < n_pages; only the middle pages 1 .. n_pages - 2 are read):
 *   n_ctx <= budget_tokens or n_pages <= 2: every page;
 *   otherwise page 0, page n_pages - 1 and the
 *   k = min(n_pages - 2, max(budget_tokens - 2 P, 0) / P) middle pages that
 *   come first in the order "higher score first, lower index first among
 *   equal scores" (floats compared as floats: -0 == +0; scores are finite or
 *   infinite, never NaN).
 * Writes the page indices in increasing order to sel (room for n_pages) and
 * returns their count. By a full sort, for clarity. */
size_t kcuda_ref_page_select(int32_t *sel, const float *scores, uint32_t n_ctx, uint32_t page_size,
                             uint32_t budget_tokens);

#endif
