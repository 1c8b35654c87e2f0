/* Element-wise and attention kernels of the forward pass, CPU.
 *
 * Every function computes each output row with a fixed operation order that
 * does not depend on how many rows are processed together (see the
 * determinism contract in kcpu_matmul.h). Reductions run over 8 interleaved
 * lanes, then a fixed pairwise tree: vectorizable without -ffast-math and the
 * same on every call. */
#ifndef PROTEUS_KCPU_OPS_H
#define PROTEUS_KCPU_OPS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* sum(a[i] * b[i]) in the fixed 8-lane order. */
float kcpu_dot_f32(const float *a, const float *b, size_t n);
/* out = x / rms(x) * w, with rms = sqrt(mean(x^2) + eps). */
void kcpu_rmsnorm(float *out, const float *x, const float *w, size_t n, float eps);

/* Rotates n_heads heads of head_dim floats at position pos. inv_freq has
 * rot_dim / 2 entries. neox = 0: channel pairs (2i, 2i+1); neox = 1: pairs
 * (i, i + rot_dim / 2). */
void kcpu_rope(float *x, size_t n_heads, size_t head_dim, size_t rot_dim, uint32_t pos,
               const float *inv_freq, int neox);

/* out[i] = silu(gate[i]) * up[i] */
void kcpu_swiglu(float *out, const float *gate, const float *up, size_t n);

/* In-place softmax; returns nothing. */
void kcpu_softmax(float *x, size_t n);

/* y[i] += x[i] */
void kcpu_add(float *y, const float *x, size_t n);

/* Attention of n_q query heads that share one KV head over head pages
 * (DESIGN.md section 4): position p lives in page pages[p / page_size] at row
 * p % page_size; the K rows of slot s start at element s * slot_stride of kv
 * and its V rows v_offset elements later. kv_type is PT_DTYPE_F32, F16 or
 * BF16. q and out are (n_q, hd) floats; state needs kcpu_attn_state_len
 * floats. The order of operations is fixed per query by absolute positions
 * (kernels/cpu/attn.c), with fma, the same bits on every ISA path: a query's
 * result does not depend on what else runs with it. */
size_t kcpu_attn_state_len(size_t n_q, size_t hd);

/* One query at position n_ctx - 1 over positions [0, n_ctx). */
void kcpu_attn_paged(float *out, const float *q, size_t n_q, size_t hd, const void *kv, int kv_type,
                     size_t slot_stride, size_t v_offset, const uint32_t *pages, uint32_t page_size, uint32_t n_ctx,
                     float scale, float *state);

/* n_tok queries of one sequence at positions pos0, pos0 + 1, ... (a prompt
 * chunk), each causally over its own positions: row t of out (stride
 * ld_out) is kcpu_attn_paged of row t of q (stride ld_q) with n_ctx =
 * pos0 + t + 1, the same bits. Pages are walked once for all rows, so each
 * is read from memory (and widened from F16 / BF16) once per run. scratch
 * needs kcpu_attn_run_scratch_len floats. */
size_t kcpu_attn_run_scratch_len(size_t n_tok, size_t n_q, size_t hd, uint32_t page_size);
void kcpu_attn_paged_run(float *out, size_t ld_out, const float *q, size_t ld_q, size_t n_tok, uint32_t pos0,
                         size_t n_q, size_t hd, const void *kv, int kv_type, size_t slot_stride, size_t v_offset,
                         const uint32_t *pages, uint32_t page_size, float scale, float *scratch);

/* Portable dot of F32 with F16 in kcpu_dot_f32's order (CUDA references). */
float kcpu_dot_f32_f16(const float *a, const uint16_t *b, size_t n);

/* Query-aware page selection (DESIGN.md section 5), in page_select.c: the
 * reference the CUDA kernels must match. A page index j names pages[j] of
 * one KV head's block table and holds positions [j * P, min((j+1) * P, n_ctx)).
 * Scores, selection and sparse attention assume finite q and keys. */

/* Upper bound of q.k over a page whose keys lie in the box [kmin, kmax]
 * (hd floats each): per query head sum_i max(q_i * kmin_i, q_i * kmax_i),
 * then the max over the n_q heads of q (n_q, hd). Summed in kcpu_dot_f32's
 * order, so in float it is >= kcpu_dot_f32(q_h, k) for every key k of the
 * box and every head h, exactly, and equal to it when kmin == kmax. */
float kcpu_page_score(const float *q, size_t n_q, size_t hd, const float *kmin, const float *kmax);

/* Chooses the pages one KV head attends to at decode. n_pages must be
 * ceil(n_ctx / page_size); minmax_base is one layer's key boxes,
 * (slot, {min, max}, hd) floats, indexed by pages[j]. Writes page indices
 * (into pages[], not slot ids) in increasing order to selected (room for
 * n_pages) and returns their count. scratch needs n_pages floats.
 *   n_ctx <= budget_tokens, or n_pages <= 2: every page.
 *   Otherwise page 0 (attention sink), page n_pages - 1 (current, possibly
 *   partial) and the k = min(n_pages - 2, max(budget_tokens - 2 P, 0) / P)
 *   highest-scoring middle pages (all full), ties to the lower index. Every
 *   page is charged P tokens, so count * P <= budget_tokens whenever
 *   budget_tokens >= 2 P; below that the count is exactly 2 (sink and
 *   current are never dropped). */
size_t kcpu_page_select(uint32_t *selected, const float *q, size_t n_q, size_t hd, const float *minmax_base,
                        const uint32_t *pages, uint32_t n_pages, uint32_t page_size, uint32_t n_ctx,
                        uint32_t budget_tokens, float *scratch);

/* kcpu_attn_paged over the pages selected[0 .. n_sel) only: all valid
 * positions of each (the last page up to n_ctx), taken in the order of
 * selected. Each page updates the query's state as in kcpu_attn_paged, so
 * with every page selected in increasing order the result is the same bits. */
void kcpu_attn_paged_sparse(float *out, const float *q, size_t n_q, size_t hd, const void *kv, int kv_type,
                            size_t slot_stride, size_t v_offset, const uint32_t *pages, uint32_t page_size,
                            uint32_t n_ctx, const uint32_t *selected, size_t n_sel, float scale, float *state);

#endif
