/* CUDA kernels, callable from C11.
 *
 * Conventions: all tensors are device pointers to row-major fp32 unless a name
 * says otherwise; T = tokens (rows), D = width of a row. Every launcher takes
 * the stream it enqueues on and returns without synchronizing: cudaSuccess
 * when the launch was accepted, cudaErrorInvalidValue for bad arguments
 * (nothing is launched), or the launch error. Zero-sized work is a no-op that
 * returns cudaSuccess. Errors of the kernel's execution appear at the caller's
 * next synchronization.
 *
 * Each kernel's math is defined by the plain C function of the same name in
 * ref/kcuda_ref.h; tests/test_cuda_kernels.c holds them to it. Results match
 * the reference within float rounding (the reduction order and the device's
 * sin/cos/exp/rsqrt differ), and bit for bit where noted. Each row is computed
 * with a fixed sequence of operations that depends only on D, never on T, so a
 * row's result does not depend on the batch it is in (DESIGN.md section 3). */
#ifndef PROTEUS_KCUDA_H
#define PROTEUS_KCUDA_H

#include <stddef.h>
#include <stdint.h>
#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Number of usable CUDA devices; 0 when the runtime reports an error (no
 * driver, no device). Clears the error so later calls start clean. */
int kcuda_device_count(void);

/* out[t][i] = x[t][i] * (1 / sqrt(mean_i(x[t][i]^2) + eps)) * w[i].
 * x, out: (T, D); w: (D). out may equal x (in place). One block per row. */
cudaError_t kcuda_rmsnorm(float *out, const float *x, const float *w, size_t T, size_t D,
                          float eps, cudaStream_t stream);

/* How RoPE pairs the dimensions of a head (values equal GGML's rope modes). */
typedef enum {
    KCUDA_ROPE_NORM = 0, /* adjacent pairs (2i, 2i+1): GGUF Llama layout */
    KCUDA_ROPE_NEOX = 2, /* rotate-half pairs (i, i + n_rot/2): HF, Qwen2, GPT-NeoX */
} kcuda_rope_style;

/* Rotary embedding in place. x holds T tokens of H heads of head_dim floats,
 * heads contiguous within a token and tokens token_stride floats apart (so x
 * may be the Q or K part of a fused QKV row). The first n_rot dims of each head
 * rotate, pair i by angle pos[t] * inv_freq[i]; the rest are left alone.
 * pos: (T) int32 device array; inv_freq: (n_rot / 2) device array, built on the
 * host by kcuda_rope_inv_freq. n_rot must be even and <= head_dim. */
cudaError_t kcuda_rope(float *x, const int32_t *pos, const float *inv_freq, size_t T, size_t H,
                       size_t head_dim, size_t token_stride, size_t n_rot,
                       kcuda_rope_style style, cudaStream_t stream);

/* Llama-3 frequency scaling (rope_scaling with rope_type "llama3"). */
typedef struct {
    float factor;           /* long wavelengths: frequency divided by this */
    float low_freq_factor;  /* wavelengths above orig_ctx / low_freq_factor get the full factor */
    float high_freq_factor; /* wavelengths below orig_ctx / high_freq_factor are kept */
    float orig_ctx;         /* original_max_position_embeddings */
} kcuda_rope_llama3;

/* Host function: inv_freq[i] = theta^(-2i / n_rot) for i in [0, n_rot / 2),
 * computed in double and rounded once, then, when llama3 is not NULL, scaled
 * as Llama 3.1 does: frequencies whose wavelength 2*pi/f exceeds
 * orig_ctx / low_freq_factor are divided by factor, those below
 * orig_ctx / high_freq_factor are kept, and those in between blend the two
 * linearly in orig_ctx / wavelength. Returns 0, or -1 for bad arguments (n_rot
 * zero or odd, theta <= 0, or a scaling with factor <= 0, orig_ctx <= 0,
 * low_freq_factor <= 0 or high_freq_factor <= low_freq_factor). */
int kcuda_rope_inv_freq(float *inv_freq, size_t n_rot, float theta,
                        const kcuda_rope_llama3 *llama3);

/* out[t][i] = silu(gate[t][i]) * up[t][i], silu(g) = g / (1 + exp(-g)), for T rows
 * of D columns; row t of out, gate and up starts at t * ld_out, t * ld_gate,
 * t * ld_up floats (a fused gate|up matmul output is gate = y, up = y + D,
 * ld_gate = ld_up = 2 * D). out may equal gate or up when its layout matches. */
cudaError_t kcuda_swiglu(float *out, const float *gate, const float *up, size_t T, size_t D,
                         size_t ld_out, size_t ld_gate, size_t ld_up, cudaStream_t stream);

/* out[i] = a[i] + b[i] for n elements; bit-identical to the reference. out may
 * equal a or b (the residual stream: kcuda_add(x, x, y, n, s)). */
cudaError_t kcuda_add(float *out, const float *a, const float *b, size_t n, cudaStream_t stream);

/* Embedding gather: out[t][:] = table[ids[t]][:] as fp32, bit-identical to the
 * reference (bf16 -> fp32 is exact). table: (n_vocab, D); ids: (T) int32 device
 * array; out: (T, D). The device cannot report bad ids without a sync, so an id
 * outside [0, n_vocab) gives a row of zeros instead of an out-of-bounds read;
 * validating token ids is the caller's job. */
cudaError_t kcuda_embed_f32(float *out, const float *table, const int32_t *ids, size_t T,
                            size_t D, size_t n_vocab, cudaStream_t stream);
cudaError_t kcuda_embed_bf16(float *out, const uint16_t *table, const int32_t *ids, size_t T,
                             size_t D, size_t n_vocab, cudaStream_t stream);

/* ---- Fused forms the CUDA backend uses (DESIGN.md section 3 chunk layout) ---- */

/* RMSNorm to bf16 (round to nearest even), the input of a bf16 GEMM:
 * out[i][:] = bf16(rmsnorm(x[src][:]) * w) with src = rows ? rows[i] : i, for
 * i < T. x rows are ld_x floats apart, out rows ld_out elements apart
 * (ld_out >= D when T > 1; ld_x >= D when T > 1 or rows is set). rows is a
 * device array of T row indices of x; they are not checked (the device cannot
 * report them without a sync). out must not overlap x. The float math is that
 * of kcuda_rmsnorm, bit for bit; only the final rounding differs. */
cudaError_t kcuda_rmsnorm_bf16(uint16_t *out, size_t ld_out, const float *x, size_t ld_x,
                               const int32_t *rows, const float *w, size_t T, size_t D, float eps,
                               cudaStream_t stream);

/* Bias and RoPE on a fused QKV output in the chunk layout: row t holds, per
 * KV group g (n_groups of them, group_stride = (q_per_kv + 2) * head_dim
 * floats), q_per_kv query heads, then the K head, then the V head. Adds
 * bias (NULL = none; same layout as one row) to the whole row, then rotates
 * the query heads and the K head as kcuda_rope does, at position pos[t].
 * Rows are ld floats apart (ld >= n_groups * group_stride when T > 1). pos,
 * inv_freq and n_rot as for kcuda_rope; with n_rot = 0 only the bias is added
 * (and with no bias either, nothing is done). Bit-identical to a float add of
 * the bias followed by kcuda_rope on each group's q_per_kv + 1 heads. */
cudaError_t kcuda_qkv_bias_rope(float *qkv, size_t ld, const float *bias, const int32_t *pos,
                                const float *inv_freq, size_t T, size_t n_groups, size_t q_per_kv,
                                size_t head_dim, size_t n_rot, kcuda_rope_style style,
                                cudaStream_t stream);

/* SwiGLU over a fused gate|up output cut in n_chunks MLP chunks of `chunk`
 * columns: row t of gu holds, per chunk m, its gate columns then its up
 * columns. out[t][m * chunk + i] = bf16(silu(gate) * up), silu as in
 * kcuda_swiglu (the same floats, bit for bit, before rounding). gu rows are
 * ld_gu floats apart (>= 2 * n_chunks * chunk when T > 1), out rows ld_out
 * elements (>= n_chunks * chunk when T > 1). out must not overlap gu. */
cudaError_t kcuda_swiglu_chunked_bf16(uint16_t *out, size_t ld_out, const float *gu, size_t ld_gu,
                                      size_t T, size_t n_chunks, size_t chunk, cudaStream_t stream);

/* out[i] = bf16(in[i]) (round to nearest even; NaN stays NaN). */
cudaError_t kcuda_f32_to_bf16(uint16_t *out, const float *in, size_t n, cudaStream_t stream);

/* The row-parallel reduction of a tensor-parallel step (DESIGN.md section 3):
 * n_chunks partial sums, chunk c at part + c * chunk_stride floats, folded
 * left to right in chunk order and added to x:
 *   x[i] = x[i] + ((part_0[i] + part_1[i]) + part_2[i] + ...),  i < n,
 * every add rounded to float on its own, so the result is bit-identical to
 * the reference and to the CPU engine's fold of the same partials.
 * n_chunks >= 1; chunk_stride >= n when n_chunks > 1; x must not overlap
 * part. */
cudaError_t kcuda_fold_partials(float *x, const float *part, size_t n_chunks, size_t chunk_stride,
                                size_t n, cudaStream_t stream);

/* ---- GEMMs through cuBLASLt (kcuda_gemm.c) ---- */

typedef struct kcuda_blas kcuda_blas;

/* A cuBLASLt handle, its 32 MiB workspace and a cache of per-shape plans,
 * bound to the current device. NULL on failure (the reason is printed). Not
 * thread-safe, and its GEMMs share the workspace: issue them on one stream
 * (or on streams ordered with each other). */
kcuda_blas *kcuda_blas_create(void);
void kcuda_blas_destroy(kcuda_blas *b);
/* Device memory one handle holds (its workspace), for accounting. */
size_t kcuda_blas_workspace_bytes(void);

typedef enum { KCUDA_GEMM_BF16 = 0, KCUDA_GEMM_F16 = 1 } kcuda_gemm_type;

/* How a weight matrix of N outputs and K inputs is stored, row-major:
 *   KCUDA_W_NK: (N, K), rows ldw elements apart: column-parallel matrices
 *     (QKV, gate|up, LM head), whose TP chunks are row ranges;
 *   KCUDA_W_KN: (K, N), rows ldw elements apart: row-parallel matrices
 *     (O, down) stored transposed, so that their TP chunks (input ranges)
 *     are row ranges too. */
typedef enum { KCUDA_W_NK = 0, KCUDA_W_KN = 1 } kcuda_w_layout;

/* Y (T, N) f32, rows ldy floats apart: Y = beta * Y + X W^T, with X (T, K)
 * of `type`, rows ldx elements apart, W of `type` in `layout`. Products and
 * sums in f32 (CUBLAS_COMPUTE_32F). beta = 1 adds into Y: the residual
 * stream takes the O and down products this way; with beta = 0, Y is not
 * read. ldy >= N, ldx >= K and ldw >= K (NK) or N (KN), even for T = 1.
 * T, N or K zero is a no-op (Y is left as it is, whatever beta). Pointers
 * need only element alignment (plans are chosen per alignment). Must run with
 * the handle's device current (else cudaErrorInvalidDevice); cuBLASLt
 * failures are printed and returned as a cudaError_t. The first call of a
 * shape runs cuBLASLt's heuristic (host only) and caches the plan; later
 * calls only enqueue, allocate nothing and do not synchronize, so they can be
 * captured in a CUDA graph: make each shape's first call before capturing. */
cudaError_t kcuda_gemm(kcuda_blas *b, float *Y, size_t ldy, const void *X, size_t ldx, const void *W,
                       size_t ldw, kcuda_w_layout layout, kcuda_gemm_type type, size_t T, size_t N,
                       size_t K, float beta, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
