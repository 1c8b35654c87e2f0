/* CUDA kernels over the head-centric paged KV cache (DESIGN.md sections 4
 * and 5): KV append with the per-page key bounding box, decode attention
 * (dense or over selected pages, split-KV for long contexts), prefill
 * attention (causal, with a prefix already in the cache), and query-aware
 * page selection (page scores, top-k under a token budget).
 *
 * Layout on the device is that of src/kv/kv_pool.h with F16 elements, so a
 * head page moves between CPU and GPU pools byte for byte:
 *   data    (layer, slot, {K, V}, page_size, head_dim)  f16 bits (uint16_t)
 *   minmax  (layer, slot, {min, max}, head_dim)         f32, of the keys as
 *                                                        stored (after f16)
 * A kcuda_kv_layer is one layer's part of both arrays.
 *
 * A step's tokens are rows t = 0..T-1. They come in runs: the n_tokens rows
 * starting at row0 belong to one sequence and have positions pos0, pos0 + 1,
 * ...; after the step the sequence holds pos0 + n_tokens tokens. Block tables
 * stay on the device across steps, one row per (sequence slot, KV head):
 *   block_tables[(seq * n_kv_heads + h) * bt_stride + j] = slot id of page j
 * and page j holds positions [j * P, (j + 1) * P).
 *
 * Query, key and value rows are read through kcuda_qkv, so that the fused
 * QKV output of the chunk layout (per KV group: its q_per_kv query heads,
 * then its K head, then its V head) is used in place:
 *   query head j of group g of row t: q + t * ld + g * group_stride + j * head_dim
 *   key / value of KV head g of row t: k (v) + t * ld + g * group_stride
 * Attention output rows are (T, n_kv_heads * q_per_kv * head_dim), head
 * g * q_per_kv + j at column (g * q_per_kv + j) * head_dim, written as f32
 * and/or bf16 (whichever pointer is not NULL; bf16 feeds the O GEMM).
 *
 * Each launcher enqueues on `stream`, returns cudaErrorInvalidValue for bad
 * host-side arguments (nothing launched), the launch error otherwise, and
 * does no synchronization. Device-side arrays (runs, block tables, selected
 * pages) are trusted: the engine validates what it stages. */
#ifndef PROTEUS_KCUDA_ATTN_H
#define PROTEUS_KCUDA_ATTN_H

#include <stddef.h>
#include <stdint.h>
#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    uint16_t *data;   /* this layer's (slot, {K, V}, page_size, head_dim) f16 */
    float *minmax;    /* this layer's (slot, {min, max}, head_dim) */
    uint32_t n_slots;
    uint32_t page_size;
    uint32_t head_dim;
} kcuda_kv_layer;

typedef struct {
    int32_t row0;     /* first row of the step */
    int32_t n_tokens; /* >= 1 */
    int32_t pos0;     /* tokens of the sequence already in the cache */
    int32_t seq;      /* row of the block tables */
} kcuda_run;

typedef struct {
    const float *q, *k, *v; /* row 0 of each part */
    size_t ld;              /* floats between rows */
    size_t group_stride;    /* floats between KV groups */
} kcuda_qkv;

typedef struct {
    const int32_t *block_tables;
    size_t bt_stride;       /* entries per block-table row (max pages per sequence) */
} kcuda_pages;

/* Writes K and V of every run's tokens into their pages (f32 -> f16, round
 * to nearest even) and updates each touched page's per-channel key min/max:
 * a token at offset 0 of a page starts a fresh box, later tokens widen it.
 * One block per (run, KV head) walks the run's tokens in order, so a page
 * written by several tokens of one step ends with the box over all of them.
 * Pages must be reserved by the caller. head_dim must be a multiple of 8 up
 * to 256 and kv->data, kv->minmax 16-byte aligned (K/V and boxes move 16
 * bytes at a time); the result is bit-identical to pt_kv_append. */
cudaError_t kcuda_kv_append(const kcuda_kv_layer *kv, const kcuda_qkv *src, const kcuda_pages *bt,
                            const kcuda_run *runs, size_t n_runs, size_t n_kv_heads,
                            cudaStream_t stream);

typedef struct {
    kcuda_qkv in;            /* only q is read */
    float *out_f32;          /* (T, n_heads * head_dim) or NULL */
    uint16_t *out_bf16;      /* same, bf16 bits, or NULL */
    size_t ld_out;           /* elements between output rows */
    kcuda_kv_layer kv;
    kcuda_pages bt;
    const kcuda_run *runs;   /* device array */
    size_t n_runs;
    size_t n_kv_heads, q_per_kv, head_dim;
    float scale;             /* usually 1 / sqrt(head_dim) */
    uint32_t max_ctx;        /* host-side bound on pos0 + n_tokens over the runs */
} kcuda_attn_args;

/* Decode attention: every run has n_tokens == 1 and attends to positions
 * [0, pos0]. GQA: one block handles all q_per_kv heads of a KV head, so each
 * K/V row is read once per group. Long contexts are cut into n_splits
 * contiguous page ranges handled by separate blocks, whose partial results
 * (max, sum, unnormalized output) a second kernel merges; n_splits = 0
 * chooses from max_ctx and the device's SM count.
 *
 * With sel != NULL only the listed pages are attended (query-aware
 * selection): for run r and KV head h, sel[(r * n_kv_heads + h) * sel_stride
 * + i], i < n_sel[r * n_kv_heads + h], are page indices (into the block
 * table row, increasing); the last page of the context is partial, all
 * others hold page_size tokens. A (run, KV head) with an empty list gets
 * zeros.
 *
 * Shapes (decode and prefill): head_dim a multiple of 8 up to 256, any
 * page_size up to 4096, any q_per_kv (blocks take 8 query heads at most, so
 * groups above 8 read K/V once per 8 heads), kv.data 16-byte aligned.
 * n_splits is an upper bound per run: each split covers at least 256
 * tokens' worth of pages (a run with fewer pages uses fewer splits), at
 * most 256 splits. */
typedef struct {
    const int32_t *sel;      /* NULL = dense */
    const int32_t *n_sel;
    size_t sel_stride;
} kcuda_page_list;

/* Workspace bytes kcuda_attn_decode needs for n_splits splits (0 = as it
 * would choose for these arguments): n_runs * n_kv_heads * q_per_kv *
 * n_splits * (head_dim + 2) floats, and 0 for one split (the blocks then
 * write the output directly). The workspace is 16-byte aligned. This and
 * kcuda_attn_decode_splits look at the shape fields only (pointers may be
 * NULL), so they can size the workspace before any run is staged; invalid
 * shapes give 0 bytes and 1 split. */
size_t kcuda_attn_decode_workspace(const kcuda_attn_args *a, int n_splits);
/* The split count kcuda_attn_decode uses for n_splits = 0. */
int kcuda_attn_decode_splits(const kcuda_attn_args *a);
cudaError_t kcuda_attn_decode(const kcuda_attn_args *a, const kcuda_page_list *pages, int n_splits,
                              void *workspace, size_t workspace_bytes, cudaStream_t stream);

/* Prefill attention: run r's token i (position p = pos0 + i) attends to
 * positions [0, p], all read from the pages (so its own K/V must have been
 * appended first). Causal within the run, the cached prefix in full. Tiles
 * of query rows share each K/V page load. */
cudaError_t kcuda_attn_prefill(const kcuda_attn_args *a, cudaStream_t stream);

/* Query-aware page selection, decode runs only (n_tokens == 1, context
 * n_ctx = pos0 + 1, n_pages = ceil(n_ctx / P)).
 *
 * Scores: scores[(r * n_kv_heads + h) * score_stride + j] for j < n_pages,
 * the bound of kcpu_page_score (kernels/cpu/kcpu_ops.h): per query head of
 * the group sum_i max(q_i * kmin_i, q_i * kmax_i), max over the heads. */
cudaError_t kcuda_page_score(float *scores, size_t score_stride, const kcuda_attn_args *a,
                             cudaStream_t stream);

/* Selection from scores, the rule of kcpu_page_select: n_ctx <= budget_tokens
 * or n_pages <= 2 gives every page; otherwise page 0, page n_pages - 1 and
 * the k = min(n_pages - 2, max(budget_tokens - 2P, 0) / P) highest-scoring
 * middle pages, ties to the lower index; written in increasing order to
 * out->sel (out->sel_stride >= the largest n_pages) with the count in
 * out->n_sel. */
cudaError_t kcuda_page_topk(const kcuda_page_list *out, const float *scores, size_t score_stride,
                            const kcuda_run *runs, size_t n_runs, size_t n_kv_heads, uint32_t page_size,
                            uint32_t budget_tokens, uint32_t max_ctx, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
