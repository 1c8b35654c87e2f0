/* Plain C references for the fused CUDA kernels and the GEMM. See
 * kcuda_fused_ref.h. */
#include "ref/kcuda_fused_ref.h"

#include <math.h>
#include <string.h>

#include "ref/kcuda_ref.h"

/* ---- fused elementwise ----------------------------------------------------- */

void kcuda_ref_rmsnorm_bf16(uint16_t *out, size_t ld_out, const float *x, size_t ld_x,
                            const int32_t *rows, const float *w, size_t T, size_t D, float eps)
{
    for (size_t t = 0; t < T; t++) {
        const float *xr = x + (rows ? (size_t)rows[t] : t) * ld_x;
        uint16_t *yr = out + t * ld_out;
        /* The math of kcuda_ref_rmsnorm, then one rounding. */
        double ss = 0.0;
        for (size_t i = 0; i < D; i++)
            ss += (double)xr[i] * xr[i];
        const float scale = 1.0f / sqrtf((float)(ss / (double)D) + eps);
        for (size_t i = 0; i < D; i++)
            yr[i] = kcuda_ref_f32_to_bf16(xr[i] * scale * w[i]);
    }
}

void kcuda_ref_qkv_bias_rope(float *qkv, size_t ld, const float *bias, const int32_t *pos,
                             const float *inv_freq, size_t T, size_t n_groups, size_t q_per_kv,
                             size_t head_dim, size_t n_rot, int neox)
{
    const size_t group_stride = (q_per_kv + 2) * head_dim, row = n_groups * group_stride;
    if (bias)
        for (size_t t = 0; t < T; t++)
            for (size_t i = 0; i < row; i++)
                qkv[t * ld + i] += bias[i];
    if (n_rot == 0)
        return;
    /* Within a group the query heads and the K head are q_per_kv + 1
     * contiguous heads: exactly what kcuda_ref_rope rotates. */
    for (size_t g = 0; g < n_groups; g++)
        kcuda_ref_rope(qkv + g * group_stride, pos, inv_freq, T, q_per_kv + 1, head_dim, ld, n_rot,
                       neox);
}

void kcuda_ref_swiglu_chunked_bf16(uint16_t *out, size_t ld_out, const float *gu, size_t ld_gu,
                                   size_t T, size_t n_chunks, size_t chunk)
{
    for (size_t t = 0; t < T; t++) {
        for (size_t m = 0; m < n_chunks; m++) {
            const float *gate = gu + t * ld_gu + 2 * m * chunk, *up = gate + chunk;
            for (size_t i = 0; i < chunk; i++) {
                const float g = gate[i];
                const float silu = g / (1.0f + expf(-g));
                out[t * ld_out + m * chunk + i] = kcuda_ref_f32_to_bf16(silu * up[i]);
            }
        }
    }
}

void kcuda_ref_fold_partials(float *x, const float *part, size_t n_chunks, size_t chunk_stride,
                             size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float acc = part[i];
        for (size_t c = 1; c < n_chunks; c++)
            acc += part[c * chunk_stride + i];
        x[i] += acc;
    }
}

/* ---- GEMM ------------------------------------------------------------------- */

/* Widening tables, built on first use (not thread-safe; tests are single
 * threaded). Every 16-bit pattern widens exactly. */
static float widen_tab[2][65536];
static int widen_ready[2];

static const float *widen_table(int f16)
{
    if (!widen_ready[f16]) {
        for (uint32_t h = 0; h < 65536; h++)
            widen_tab[f16][h] = f16 ? kcuda_ref_f16_to_f32((uint16_t)h)
                                    : kcuda_ref_bf16_to_f32((uint16_t)h);
        widen_ready[f16] = 1;
    }
    return widen_tab[f16];
}

void kcuda_ref_gemm(float *Y, size_t ldy, float *abs_sum, const uint16_t *X, size_t ldx,
                    const uint16_t *W, size_t ldw, int w_kn, int f16, size_t T, size_t N,
                    size_t K, float beta)
{
    const float *wide = widen_table(f16 ? 1 : 0);
    for (size_t t = 0; t < T; t++) {
        const uint16_t *xr = X + t * ldx;
        for (size_t n = 0; n < N; n++) {
            /* W[n][k] of the (N, K) matrix, wherever the layout keeps it. */
            const uint16_t *wn = w_kn ? W + n : W + n * ldw;
            const size_t wstep = w_kn ? ldw : 1;
            double acc = 0.0, mag = 0.0;
            for (size_t k = 0; k < K; k++) {
                const double p = (double)wide[xr[k]] * (double)wide[wn[k * wstep]];
                acc += p;
                mag += fabs(p);
            }
            float *y = &Y[t * ldy + n];
            if (beta != 0.0f) {
                const double c = (double)beta * (double)*y;
                acc += c;
                mag += fabs(c);
            }
            *y = (float)acc;
            if (abs_sum)
                abs_sum[t * ldy + n] = (float)mag;
        }
    }
}
