/* Plain C references for the CUDA kernels. See kcuda_ref.h. */
#include "ref/kcuda_ref.h"

#include <math.h>
#include <string.h>

void kcuda_ref_rmsnorm(float *out, const float *x, const float *w, size_t T, size_t D, float eps)
{
    for (size_t t = 0; t < T; t++) {
        const float *xr = x + t * D;
        float *yr = out + t * D;
        double ss = 0.0;
        for (size_t i = 0; i < D; i++)
            ss += (double)xr[i] * xr[i];
        const float scale = 1.0f / sqrtf((float)(ss / (double)D) + eps);
        for (size_t i = 0; i < D; i++)
            yr[i] = xr[i] * scale * w[i];
    }
}

void kcuda_ref_rope(float *x, const int32_t *pos, const float *inv_freq, size_t T, size_t H,
                    size_t head_dim, size_t token_stride, size_t n_rot, int neox)
{
    const size_t half = n_rot / 2;
    for (size_t t = 0; t < T; t++) {
        for (size_t h = 0; h < H; h++) {
            float *xh = x + t * token_stride + h * head_dim;
            for (size_t p = 0; p < half; p++) {
                const double angle = (double)pos[t] * (double)inv_freq[p];
                const float c = (float)cos(angle), s = (float)sin(angle);
                const size_t i0 = neox ? p : 2 * p, i1 = neox ? p + half : 2 * p + 1;
                const float a = xh[i0], b = xh[i1];
                xh[i0] = a * c - b * s;
                xh[i1] = a * s + b * c;
            }
        }
    }
}

void kcuda_ref_swiglu(float *out, const float *gate, const float *up, size_t T, size_t D,
                      size_t ld_out, size_t ld_gate, size_t ld_up)
{
    for (size_t t = 0; t < T; t++) {
        for (size_t i = 0; i < D; i++) {
            const float g = gate[t * ld_gate + i];
            const float silu = g / (1.0f + expf(-g));
            out[t * ld_out + i] = silu * up[t * ld_up + i];
        }
    }
}

void kcuda_ref_add(float *out, const float *a, const float *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        out[i] = a[i] + b[i];
}

void kcuda_ref_embed_f32(float *out, const float *table, const int32_t *ids, size_t T, size_t D,
                         size_t n_vocab)
{
    for (size_t t = 0; t < T; t++) {
        if (ids[t] < 0 || (size_t)ids[t] >= n_vocab)
            memset(out + t * D, 0, D * sizeof(float));
        else
            memcpy(out + t * D, table + (size_t)ids[t] * D, D * sizeof(float));
    }
}

void kcuda_ref_embed_bf16(float *out, const uint16_t *table, const int32_t *ids, size_t T,
                          size_t D, size_t n_vocab)
{
    for (size_t t = 0; t < T; t++) {
        for (size_t i = 0; i < D; i++) {
            float v = 0.0f;
            if (ids[t] >= 0 && (size_t)ids[t] < n_vocab) {
                /* bf16 is the upper 16 bits of an fp32. */
                uint32_t bits = (uint32_t)table[(size_t)ids[t] * D + i] << 16;
                memcpy(&v, &bits, sizeof v);
            }
            out[t * D + i] = v;
        }
    }
}

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

uint16_t kcuda_ref_f32_to_bf16(float f)
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

float kcuda_ref_bf16_to_f32(uint16_t h)
{
    return f32_from_bits((uint32_t)h << 16);
}

uint16_t kcuda_ref_f32_to_f16(float f)
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

float kcuda_ref_f16_to_f32(uint16_t h)
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

void kcuda_ref_f32_to_bf16_n(uint16_t *out, const float *in, size_t n)
{
    for (size_t i = 0; i < n; i++)
        out[i] = kcuda_ref_f32_to_bf16(in[i]);
}
