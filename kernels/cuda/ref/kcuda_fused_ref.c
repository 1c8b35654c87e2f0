/* Plain C references for the fused CUDA kernels and the GEMM. See
 * kcuda_fused_ref.h. */
#include "ref/kcuda_fused_ref.h"

#include <math.h>
#include <string.h>

#include "ref/kcuda_ref.h"

/* ---- bf16 / f16 conversions ---------------------------------------------------- */

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float f32_from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

uint16_t kcuda_ref_bf16_round(float f)
{
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x0040u); /* NaN: keep it a (quiet) NaN */
    /* Adding 0x7fff plus the lowest kept bit rounds half to even; a carry out
     * of the mantissa bumps the exponent, up to infinity. Cannot wrap: the
     * largest non-NaN pattern, 0xff800000, has room. */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float kcuda_ref_bf16_widen(uint16_t h)
{
    return f32_from_bits((uint32_t)h << 16);
}

uint16_t kcuda_ref_f16_round(float f)
{
    const uint32_t u = f32_bits(f);
    const uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    const uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u)
        return (uint16_t)(sign | 0x7e00u); /* NaN */
    if (a >= 0x477ff000u)      /* >= 65520, halfway past the largest f16: infinity */
        return (uint16_t)(sign | 0x7c00u);
    if (a < 0x38800000u) { /* below 2^-14: an f16 subnormal (or zero), in units of 2^-24 */
        const uint32_t e = a >> 23;
        if (e < 102) /* below 2^-25, half the smallest subnormal (ties to zero, which is even) */
            return sign;
        const uint32_t m = (a & 0x7fffffu) | 0x800000u; /* value = m * 2^(e - 150) */
        const uint32_t shift = 126 - e;                 /* 14 .. 24 */
        uint32_t r = m >> shift;
        const uint32_t rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1u)))
            r++; /* may carry into the smallest normal, 0x0400, which is right */
        return (uint16_t)(sign | r);
    }
    /* Normal: rebias the exponent (127 -> 15) and round the 13 dropped bits. */
    uint32_t r = (a >> 13) - (112u << 10);
    const uint32_t rem = a & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (r & 1u)))
        r++;
    return (uint16_t)(sign | r);
}

float kcuda_ref_f16_widen(uint16_t h)
{
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0) { /* zero or subnormal: m * 2^-24, exact in float */
        const float v = ldexpf((float)m, -24);
        return sign ? -v : v;
    }
    if (e == 31)
        return f32_from_bits(sign | 0x7f800000u | (m << 13));
    return f32_from_bits(sign | ((e + 112u) << 23) | (m << 13));
}

void kcuda_ref_bf16_round_n(uint16_t *out, const float *in, size_t n)
{
    for (size_t i = 0; i < n; i++)
        out[i] = kcuda_ref_bf16_round(in[i]);
}

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
            yr[i] = kcuda_ref_bf16_round(xr[i] * scale * w[i]);
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
                out[t * ld_out + m * chunk + i] = kcuda_ref_bf16_round(silu * up[i]);
            }
        }
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
            widen_tab[f16][h] = f16 ? kcuda_ref_f16_widen((uint16_t)h)
                                    : kcuda_ref_bf16_widen((uint16_t)h);
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
