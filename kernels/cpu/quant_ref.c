/* Reference quantization, dequantization and dot products: the definition of
 * every CPU weight format and of the matmul numerics.
 *
 * Layouts are GGML's (as written to GGUF files); dequantization reproduces
 * gguf-py's float32 arithmetic operation for operation, e.g. Q4_K is
 * (d * sc) * q - (dmin * m). Block b of a row covers elements
 * [b * block_size, (b + 1) * block_size).
 *
 * Dot products: integer sums inside a block are exact; each block's term is
 * formed in float from the scales; the terms are summed in double and the
 * total rounded to float once. Fast paths accumulate in float lanes instead,
 * so they agree with this within float rounding, not bitwise. */
#include <math.h>

#include "cpu/kcpu_internal.h"
#include "cpu/kcpu_matmul.h"

static inline float f16(const void *p) { return pt_f16_to_f32(kcpu_load_u16(p)); }

static float absmax(const float *x, size_t n) {
    float m = 0.0f;
    for (size_t i = 0; i < n; i++) m = fmaxf(m, fabsf(x[i]));
    return m;
}

/* Nearest integer, ties away from zero, clamped to [lo, hi]. */
static inline int qround(float v, int lo, int hi) {
    int q = (int)roundf(v);
    return q < lo ? lo : q > hi ? hi : q;
}

/* Q4_K: 8 six-bit scales and 8 six-bit minimums in 12 bytes (GGML's
 * get_scale_min_k4): sub-blocks 0..3 in the low 6 bits of bytes 0..3 (scale)
 * and 4..7 (min); sub-blocks 4..7 keep their low 4 bits in bytes 8..11 (scale
 * low nibble, min high nibble) and their top 2 bits in the top bits of bytes
 * 0..3 (scale) and 4..7 (min). */
static inline void q4k_scale_min(const uint8_t *s, int j, uint8_t *sc, uint8_t *m) {
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (uint8_t)((s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4));
        *m = (uint8_t)((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
    }
}

/* Q6_K: quant i of a super-block as 0..63, GGML layout: two halves of 128;
 * in half h, element l + 32 * k (l < 32, k < 4) takes its low 4 bits from
 * ql[64h + l + 32 * (k & 1)] (low nibble for k < 2, high for k >= 2) and its
 * top 2 bits from bits 2k..2k+1 of qh[32h + l]. */
static inline int q6k_quant(const pt_block_q6_k *b, int i) {
    int h = i / 128, r = i % 128, k = r / 32, l = r % 32;
    uint8_t lo = b->ql[64 * h + l + 32 * (k & 1)];
    lo = k < 2 ? (lo & 0xF) : (lo >> 4);
    int hi = (b->qh[32 * h + l] >> (2 * k)) & 3;
    return lo | (hi << 4);
}

/* ---------------------------------------------------------------- dequantize */

void kcpu_dequantize_row(pt_dtype type, float *dst, const void *src, size_t K) {
    const uint8_t *p = src;
    switch (type) {
    case PT_DTYPE_F32:
        memcpy(dst, src, K * sizeof(float));
        break;
    case PT_DTYPE_F16:
        for (size_t i = 0; i < K; i++) dst[i] = f16(p + 2 * i);
        break;
    case PT_DTYPE_BF16:
        for (size_t i = 0; i < K; i++) dst[i] = pt_bf16_to_f32(kcpu_load_u16(p + 2 * i));
        break;
    case PT_DTYPE_Q4_0:
        for (size_t b = 0; b < K / PT_QK; b++, p += sizeof(pt_block_q4_0)) {
            float d = f16(p);
            const uint8_t *qs = p + 2;
            for (int i = 0; i < 16; i++) {
                dst[b * 32 + i] = d * (float)((qs[i] & 0xF) - 8);
                dst[b * 32 + i + 16] = d * (float)((qs[i] >> 4) - 8);
            }
        }
        break;
    case PT_DTYPE_Q4_1:
        for (size_t b = 0; b < K / PT_QK; b++, p += sizeof(pt_block_q4_1)) {
            float d = f16(p), m = f16(p + 2);
            const uint8_t *qs = p + 4;
            for (int i = 0; i < 16; i++) {
                dst[b * 32 + i] = d * (float)(qs[i] & 0xF) + m;
                dst[b * 32 + i + 16] = d * (float)(qs[i] >> 4) + m;
            }
        }
        break;
    case PT_DTYPE_Q8_0:
        for (size_t b = 0; b < K / PT_QK; b++, p += sizeof(pt_block_q8_0)) {
            float d = f16(p);
            const int8_t *qs = (const int8_t *)(p + 2);
            for (int i = 0; i < 32; i++) dst[b * 32 + i] = d * (float)qs[i];
        }
        break;
    case PT_DTYPE_Q8_1:
        for (size_t b = 0; b < K / PT_QK; b++, p += sizeof(pt_block_q8_1)) {
            float d = f16(p);
            const int8_t *qs = (const int8_t *)(p + 4);
            for (int i = 0; i < 32; i++) dst[b * 32 + i] = d * (float)qs[i];
        }
        break;
    case PT_DTYPE_Q8_K:
        for (size_t b = 0; b < K / PT_QK_K; b++, p += sizeof(pt_block_q8_k)) {
            float d = kcpu_load_f32(p);
            const int8_t *qs = (const int8_t *)(p + 4);
            for (int i = 0; i < 256; i++) dst[b * 256 + i] = d * (float)qs[i];
        }
        break;
    case PT_DTYPE_Q4_K:
        for (size_t b = 0; b < K / PT_QK_K; b++, p += sizeof(pt_block_q4_k)) {
            pt_block_q4_k blk;
            memcpy(&blk, p, sizeof blk);
            float d = pt_f16_to_f32(blk.d), dmin = pt_f16_to_f32(blk.dmin);
            for (int j = 0; j < 8; j++) {
                uint8_t sc, m;
                q4k_scale_min(blk.scales, j, &sc, &m);
                float d1 = d * (float)sc, m1 = dmin * (float)m;
                const uint8_t *qs = blk.qs + 32 * (j / 2);
                for (int l = 0; l < 32; l++) {
                    int q = (j & 1) ? (qs[l] >> 4) : (qs[l] & 0xF);
                    dst[b * 256 + 32 * j + l] = d1 * (float)q - m1;
                }
            }
        }
        break;
    case PT_DTYPE_Q6_K:
        for (size_t b = 0; b < K / PT_QK_K; b++, p += sizeof(pt_block_q6_k)) {
            pt_block_q6_k blk;
            memcpy(&blk, p, sizeof blk);
            float d = pt_f16_to_f32(blk.d);
            for (int i = 0; i < 256; i++)
                dst[b * 256 + i] = (d * (float)blk.scales[i / 16]) * (float)(q6k_quant(&blk, i) - 32);
        }
        break;
    default:
        break;
    }
}

/* ------------------------------------------------------------------ quantize */

void kcpu_ref_quantize_q8_0(pt_block_q8_0 *dst, const float *x, size_t K) {
    for (size_t b = 0; b < K / PT_QK; b++) {
        const float *v = x + b * PT_QK;
        float d = absmax(v, PT_QK) / 127.0f, id = d > 0.0f ? 1.0f / d : 0.0f;
        pt_block_q8_0 blk;
        blk.d = pt_f32_to_f16(d);
        for (int i = 0; i < PT_QK; i++) blk.qs[i] = (int8_t)qround(v[i] * id, -127, 127);
        memcpy(&dst[b], &blk, sizeof blk);
    }
}

void kcpu_ref_quantize_q8_1(pt_block_q8_1 *dst, const float *x, size_t K) {
    for (size_t b = 0; b < K / PT_QK; b++) {
        const float *v = x + b * PT_QK;
        float d = absmax(v, PT_QK) / 127.0f, id = d > 0.0f ? 1.0f / d : 0.0f;
        pt_block_q8_1 blk;
        int sum = 0;
        blk.d = pt_f32_to_f16(d);
        for (int i = 0; i < PT_QK; i++) {
            blk.qs[i] = (int8_t)qround(v[i] * id, -127, 127);
            sum += blk.qs[i];
        }
        /* s uses the stored (rounded) d so that d * sum(qs) is what the
         * dequantized block really sums to, up to the f16 rounding of s. */
        blk.s = pt_f32_to_f16(pt_f16_to_f32(blk.d) * (float)sum);
        memcpy(&dst[b], &blk, sizeof blk);
    }
}

void kcpu_ref_quantize_q8_k(pt_block_q8_k *dst, const float *x, size_t K) {
    for (size_t b = 0; b < K / PT_QK_K; b++) {
        const float *v = x + b * PT_QK_K;
        float d = absmax(v, PT_QK_K) / 127.0f, id = d > 0.0f ? 1.0f / d : 0.0f;
        pt_block_q8_k blk;
        blk.d = d;
        for (int i = 0; i < PT_QK_K; i++) blk.qs[i] = (int8_t)qround(v[i] * id, -127, 127);
        for (int g = 0; g < PT_QK_K / 16; g++) {
            int s = 0;
            for (int i = 0; i < 16; i++) s += blk.qs[16 * g + i];
            blk.bsums[g] = (int16_t)s;
        }
        memcpy(&dst[b], &blk, sizeof blk);
    }
}

static void quantize_q4_k_block(pt_block_q4_k *out, const float *x) {
    float scale[8], mn[8], maxs = 0.0f, maxm = 0.0f;
    for (int j = 0; j < 8; j++) {
        float lo = x[32 * j], hi = x[32 * j];
        for (int l = 1; l < 32; l++) {
            lo = fminf(lo, x[32 * j + l]);
            hi = fmaxf(hi, x[32 * j + l]);
        }
        if (lo > 0.0f) lo = 0.0f; /* the format subtracts a non-negative minimum */
        scale[j] = (hi - lo) / 15.0f;
        mn[j] = -lo;
        maxs = fmaxf(maxs, scale[j]);
        maxm = fmaxf(maxm, mn[j]);
    }
    float d = maxs / 63.0f, dmin = maxm / 63.0f;
    out->d = pt_f32_to_f16(d);
    out->dmin = pt_f32_to_f16(dmin);
    float dq = pt_f16_to_f32(out->d), dmq = pt_f16_to_f32(out->dmin);
    uint8_t sc[8], m[8];
    for (int j = 0; j < 8; j++) {
        sc[j] = (uint8_t)(dq > 0.0f ? qround(scale[j] / dq, 0, 63) : 0);
        m[j] = (uint8_t)(dmq > 0.0f ? qround(mn[j] / dmq, 0, 63) : 0);
    }
    memset(out->scales, 0, sizeof out->scales);
    for (int j = 0; j < 8; j++) {
        if (j < 4) {
            out->scales[j] |= sc[j];
            out->scales[j + 4] |= m[j];
        } else {
            out->scales[j + 4] = (uint8_t)((sc[j] & 0xF) | ((m[j] & 0xF) << 4));
            out->scales[j - 4] |= (uint8_t)((sc[j] >> 4) << 6);
            out->scales[j] |= (uint8_t)((m[j] >> 4) << 6);
        }
    }
    memset(out->qs, 0, sizeof out->qs);
    for (int j = 0; j < 8; j++) {
        float d1 = dq * (float)sc[j], m1 = dmq * (float)m[j];
        for (int l = 0; l < 32; l++) {
            int q = d1 > 0.0f ? qround((x[32 * j + l] + m1) / d1, 0, 15) : 0;
            out->qs[32 * (j / 2) + l] |= (uint8_t)((j & 1) ? q << 4 : q);
        }
    }
}

static void quantize_q6_k_block(pt_block_q6_k *out, const float *x) {
    float scale[16], maxs = 0.0f;
    for (int g = 0; g < 16; g++) {
        scale[g] = absmax(x + 16 * g, 16) / 31.0f;
        maxs = fmaxf(maxs, scale[g]);
    }
    float d = maxs / 127.0f;
    out->d = pt_f32_to_f16(d);
    float dq = pt_f16_to_f32(out->d);
    for (int g = 0; g < 16; g++) out->scales[g] = (int8_t)(dq > 0.0f ? qround(scale[g] / dq, -127, 127) : 0);
    memset(out->ql, 0, sizeof out->ql);
    memset(out->qh, 0, sizeof out->qh);
    for (int i = 0; i < 256; i++) {
        float d1 = dq * (float)out->scales[i / 16];
        int q = (d1 != 0.0f ? qround(x[i] / d1, -32, 31) : 0) + 32;
        int h = i / 128, r = i % 128, k = r / 32, l = r % 32;
        out->ql[64 * h + l + 32 * (k & 1)] |= (uint8_t)(k < 2 ? (q & 0xF) : (q & 0xF) << 4);
        out->qh[32 * h + l] |= (uint8_t)((q >> 4) << (2 * k));
    }
}

void kcpu_quantize_row(pt_dtype type, void *dst, const float *src, size_t K) {
    uint8_t *p = dst;
    switch (type) {
    case PT_DTYPE_F32:
        memcpy(dst, src, K * sizeof(float));
        break;
    case PT_DTYPE_F16:
        for (size_t i = 0; i < K; i++) {
            pt_f16 h = pt_f32_to_f16(src[i]);
            memcpy(p + 2 * i, &h, 2);
        }
        break;
    case PT_DTYPE_BF16:
        for (size_t i = 0; i < K; i++) {
            pt_bf16 h = pt_f32_to_bf16(src[i]);
            memcpy(p + 2 * i, &h, 2);
        }
        break;
    case PT_DTYPE_Q4_0:
        for (size_t b = 0; b < K / PT_QK; b++) {
            const float *v = src + b * PT_QK;
            float amax = 0.0f, max = 0.0f;
            for (int i = 0; i < PT_QK; i++)
                if (fabsf(v[i]) > amax) {
                    amax = fabsf(v[i]);
                    max = v[i];
                }
            /* The signed extreme maps to -8, using the full 16 levels. */
            float d = max / -8.0f;
            pt_block_q4_0 blk;
            blk.d = pt_f32_to_f16(d);
            float dq = pt_f16_to_f32(blk.d), id = dq != 0.0f ? 1.0f / dq : 0.0f;
            for (int i = 0; i < 16; i++) {
                int q0 = qround(v[i] * id, -8, 7) + 8, q1 = qround(v[i + 16] * id, -8, 7) + 8;
                blk.qs[i] = (uint8_t)(q0 | (q1 << 4));
            }
            memcpy(p + b * sizeof blk, &blk, sizeof blk);
        }
        break;
    case PT_DTYPE_Q4_1:
        for (size_t b = 0; b < K / PT_QK; b++) {
            const float *v = src + b * PT_QK;
            float lo = v[0], hi = v[0];
            for (int i = 1; i < PT_QK; i++) {
                lo = fminf(lo, v[i]);
                hi = fmaxf(hi, v[i]);
            }
            pt_block_q4_1 blk;
            blk.d = pt_f32_to_f16((hi - lo) / 15.0f);
            blk.m = pt_f32_to_f16(lo);
            float dq = pt_f16_to_f32(blk.d), mq = pt_f16_to_f32(blk.m);
            float id = dq != 0.0f ? 1.0f / dq : 0.0f;
            for (int i = 0; i < 16; i++) {
                int q0 = qround((v[i] - mq) * id, 0, 15), q1 = qround((v[i + 16] - mq) * id, 0, 15);
                blk.qs[i] = (uint8_t)(q0 | (q1 << 4));
            }
            memcpy(p + b * sizeof blk, &blk, sizeof blk);
        }
        break;
    case PT_DTYPE_Q8_0:
        kcpu_ref_quantize_q8_0(dst, src, K);
        break;
    case PT_DTYPE_Q8_1:
        kcpu_ref_quantize_q8_1(dst, src, K);
        break;
    case PT_DTYPE_Q8_K:
        kcpu_ref_quantize_q8_k(dst, src, K);
        break;
    case PT_DTYPE_Q4_K:
        for (size_t b = 0; b < K / PT_QK_K; b++) {
            pt_block_q4_k blk;
            quantize_q4_k_block(&blk, src + b * PT_QK_K);
            memcpy(p + b * sizeof blk, &blk, sizeof blk);
        }
        break;
    case PT_DTYPE_Q6_K:
        for (size_t b = 0; b < K / PT_QK_K; b++) {
            pt_block_q6_k blk;
            quantize_q6_k_block(&blk, src + b * PT_QK_K);
            memcpy(p + b * sizeof blk, &blk, sizeof blk);
        }
        break;
    default:
        break;
    }
}

/* ------------------------------------------------------------ reference dots */

float kcpu_ref_dot(pt_dtype wtype, const void *wv, const void *xv, size_t K) {
    const uint8_t *w = wv, *x = xv;
    const float *xf = xv;
    double acc = 0.0;
    switch (wtype) {
    case PT_DTYPE_F32:
        for (size_t i = 0; i < K; i++) acc += (double)(kcpu_load_f32(w + 4 * i) * xf[i]);
        break;
    case PT_DTYPE_F16:
        for (size_t i = 0; i < K; i++) acc += (double)(f16(w + 2 * i) * xf[i]);
        break;
    case PT_DTYPE_BF16:
        for (size_t i = 0; i < K; i++)
            acc += (double)(pt_bf16_to_f32(kcpu_load_u16(w + 2 * i)) * xf[i]);
        break;
    case PT_DTYPE_Q4_0:
    case PT_DTYPE_Q4_1:
    case PT_DTYPE_Q8_0: {
        size_t wb = pt_dtype_block_bytes(wtype);
        size_t xb = wtype == PT_DTYPE_Q4_1 ? sizeof(pt_block_q8_1) : sizeof(pt_block_q8_0);
        size_t xqs = wtype == PT_DTYPE_Q4_1 ? 4 : 2;
        for (size_t b = 0; b < K / PT_QK; b++, w += wb, x += xb) {
            const int8_t *a = (const int8_t *)(x + xqs);
            int isum = 0;
            float term;
            if (wtype == PT_DTYPE_Q8_0) {
                const int8_t *q = (const int8_t *)(w + 2);
                for (int i = 0; i < 32; i++) isum += q[i] * a[i];
                term = (f16(w) * f16(x)) * (float)isum;
            } else if (wtype == PT_DTYPE_Q4_0) {
                const uint8_t *q = w + 2;
                for (int i = 0; i < 16; i++)
                    isum += ((q[i] & 0xF) - 8) * a[i] + ((q[i] >> 4) - 8) * a[i + 16];
                term = (f16(w) * f16(x)) * (float)isum;
            } else {
                const uint8_t *q = w + 4;
                for (int i = 0; i < 16; i++) isum += (q[i] & 0xF) * a[i] + (q[i] >> 4) * a[i + 16];
                term = (f16(w) * f16(x)) * (float)isum + f16(w + 2) * f16(x + 2);
            }
            acc += (double)term;
        }
        break;
    }
    case PT_DTYPE_Q4_K:
        for (size_t b = 0; b < K / PT_QK_K; b++, w += sizeof(pt_block_q4_k), x += sizeof(pt_block_q8_k)) {
            pt_block_q4_k wb;
            pt_block_q8_k xb;
            memcpy(&wb, w, sizeof wb);
            memcpy(&xb, x, sizeof xb);
            int sumi = 0, summ = 0;
            for (int j = 0; j < 8; j++) {
                uint8_t sc, m;
                q4k_scale_min(wb.scales, j, &sc, &m);
                const uint8_t *qs = wb.qs + 32 * (j / 2);
                int s = 0;
                for (int l = 0; l < 32; l++)
                    s += ((j & 1) ? (qs[l] >> 4) : (qs[l] & 0xF)) * xb.qs[32 * j + l];
                sumi += sc * s;
                summ += m * (xb.bsums[2 * j] + xb.bsums[2 * j + 1]);
            }
            float term = (pt_f16_to_f32(wb.d) * xb.d) * (float)sumi -
                         (pt_f16_to_f32(wb.dmin) * xb.d) * (float)summ;
            acc += (double)term;
        }
        break;
    case PT_DTYPE_Q6_K:
        for (size_t b = 0; b < K / PT_QK_K; b++, w += sizeof(pt_block_q6_k), x += sizeof(pt_block_q8_k)) {
            pt_block_q6_k wb;
            pt_block_q8_k xb;
            memcpy(&wb, w, sizeof wb);
            memcpy(&xb, x, sizeof xb);
            int sumi = 0;
            for (int g = 0; g < 16; g++) {
                int s = 0;
                for (int l = 0; l < 16; l++) s += (q6k_quant(&wb, 16 * g + l) - 32) * xb.qs[16 * g + l];
                sumi += wb.scales[g] * s;
            }
            acc += (double)((pt_f16_to_f32(wb.d) * xb.d) * (float)sumi);
        }
        break;
    default:
        break;
    }
    return (float)acc;
}
