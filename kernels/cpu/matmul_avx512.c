/* AVX-512 (F/BW/VL/DQ + VNNI) matmul kernels for the 32-element block types
 * Q4_0, Q4_1 and Q8_0; the other weight types fall back to the AVX2 file.
 *
 * The kernels work on 256-bit vectors through AVX-512VL: on Zen 4 a 512-bit
 * op runs as two 256-bit halves, so ymm loses no throughput, a 32-byte quant
 * block fits one register exactly, and EVEX encoding still gives 32 vector
 * registers, enough for a 4 rows x 4 tokens tile with 16 accumulators.
 *
 * vpdpbusd multiplies unsigned weight bytes by signed activation bytes and
 * adds groups of 4 into int32 lanes, starting from an accumulator we choose:
 *   Q4_1: p = dpbusd(0, q, a)                       q in 0..15
 *   Q4_0: p = dpbusd(-8 * sum4(a), q, a)            = sum4((q - 8) * a)
 *   Q8_0: p = dpbusd(-128 * sum4(a), w ^ 0x80, a)   = sum4(w * a)
 * where sum4(a) is per-lane and computed once per token, shared by all rows
 * of the tile. Then acc += p * (dw * da), and Q4_1 adds its m * s terms.
 * As in the AVX2 file, a pair's operations are the same in every tile shape. */
#include <immintrin.h>

#include "cpu/kcpu_internal.h"
#include "cpu/kcpu_matmul.h"

#define INLINE static inline __attribute__((always_inline))

INLINE float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* 64 bytes at p + o, masked to the first lim bytes past p (whole 16-bit
 * words): masked-off lanes read as zero and never fault. */
INLINE __m512i load_lim(const uint8_t *p, size_t o, size_t lim) {
    if (lim >= o + 64) return _mm512_loadu_si512((const void *)(p + o));
    __mmask32 k = lim <= o ? 0 : (__mmask32)((1ull << ((lim - o) / 2)) - 1);
    return _mm512_maskz_loadu_epi16(k, p + o);
}

/* The f16 fields at p + i * stride (words 0..7) and p + i * stride + 2
 * (words 8..15) for blocks i < n <= 8 (stride even, 16..60), lanes past n
 * zero: the scales of a group of blocks, read with wide loads that stay
 * inside the group's n * stride bytes and moved into place with 16-bit
 * permutes. Gathers are slow on Zen (and issue their misses one by one);
 * this is a few ordinary loads and shuffles. */
INLINE __m256i halves8(const uint8_t *p, const size_t stride, size_t n) {
    const uint16_t h = (uint16_t)(stride / 2); /* stride in 16-bit words */
    const size_t lim = n * stride;
    if (stride <= 20) {
        /* Blocks 0..3 from [p, p + 64), blocks 4..7 from [p + 4s, p + 4s + 64). */
        const uint16_t ix[32] = {0,  h,      2 * h,      3 * h,      32, 32 + h, 32 + 2 * h, 32 + 3 * h,
                                 1,  1 + h,  1 + 2 * h,  1 + 3 * h,  33, 33 + h, 33 + 2 * h, 33 + 3 * h};
        const __m512i idx = _mm512_loadu_si512((const void *)ix);
        return _mm512_castsi512_si256(
            _mm512_permutex2var_epi16(load_lim(p, 0, lim), idx, load_lim(p, 4 * stride, lim)));
    }
    /* Two blocks per 64-byte load: blocks 0..3 into words 0..3 / 8..11,
     * blocks 4..7 into words 4..7 / 12..15, then one blend. */
    const uint16_t ia[32] = {0, h, 32, 32 + h, 0, 0, 0, 0, 1, 1 + h, 33, 33 + h};
    const uint16_t ib[32] = {0, 0, 0, 0, 0, h, 32, 32 + h, 0, 0, 0, 0, 1, 1 + h, 33, 33 + h};
    const __m512i idxa = _mm512_loadu_si512((const void *)ia), idxb = _mm512_loadu_si512((const void *)ib);
    __m256i lo = _mm512_castsi512_si256(
        _mm512_permutex2var_epi16(load_lim(p, 0, lim), idxa, load_lim(p, 2 * stride, lim)));
    __m256i hi = _mm512_castsi512_si256(
        _mm512_permutex2var_epi16(load_lim(p, 4 * stride, lim), idxb, load_lim(p, 6 * stride, lim)));
    return _mm256_mask_blend_epi16(0xF0F0, lo, hi);
}

/* Y[0..NR) of one token from NP = (NR + 1) / 2 pair accumulators: each
 * 256-bit half reduced exactly as hsum8 does (lo128 + hi128, then lanes
 * 0 + 2 and 1 + 3, then those two), all halves in the same instructions. */
INLINE void store_rows(float *y, const __m512 *acc, const int NR) {
    const __m512 z = acc[0], w = NR > 2 ? acc[1] : acc[0];
    /* [z.l0 z.l2 w.l0 w.l2] + [z.l1 z.l3 w.l1 w.l3]: 128-bit lanes of rows 0..3. */
    __m512 s = _mm512_add_ps(_mm512_shuffle_f32x4(z, w, 0x88), _mm512_shuffle_f32x4(z, w, 0xDD));
    s = _mm512_add_ps(s, _mm512_permute_ps(s, 0xEE));
    s = _mm512_add_ps(s, _mm512_movehdup_ps(s));
    __m128 r = _mm512_castps512_ps128(
        _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), s));
    if (NR == 4) _mm_storeu_ps(y, r);
    else {
        float t[4];
        _mm_storeu_ps(t, r);
        for (int i = 0; i < NR; i++) y[i] = t[i];
    }
}

/* WT: 0 = Q4_0 x Q8_0, 1 = Q4_1 x Q8_1, 2 = Q8_0 x Q8_0.
 * Blocks go in groups of 8: the scales of a group are converted for all rows
 * and tokens at once into dw * da products, so the per-block work of a pair
 * is one dpbusd, one convert and one fma. Q4_1's minimum term m * s is added
 * for the whole group with one fma of the 8 m's by the 8 s's (into the same
 * accumulator: its lanes are only partial sums). Groups depend on K alone,
 * never on the tile, so each pair still sees one fixed sequence.
 *
 * Rows go in pairs through 512-bit registers: the low 256-bit half holds row
 * 2p's vector, the high half row 2p+1's, and every 256-bit half runs exactly
 * the operation sequence of a single ymm accumulator (per-lane dpbusd, cvt,
 * fma by that row's dw * da; Zen 5 executes zmm at full width). An odd last
 * row is paired with itself and its duplicate discarded. */
INLINE void tile_b32(const uint8_t *W, size_t ws, const uint8_t *X, size_t xs, size_t K,
                     float *Y, size_t ldy, size_t pf, const int WT, const int NR, const int NT) {
    const size_t wb = WT == 0 ? sizeof(pt_block_q4_0) : WT == 1 ? sizeof(pt_block_q4_1) : sizeof(pt_block_q8_0);
    const size_t xb = WT == 1 ? sizeof(pt_block_q8_1) : sizeof(pt_block_q8_0);
    const size_t wq = WT == 1 ? 4 : 2, xq = WT == 1 ? 4 : 2;
    const size_t nb = K / PT_QK;
    const int NP = (NR + 1) / 2;
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    const __m512i off = _mm512_set1_epi8(WT == 0 ? 8 : (char)0x80);
    /* Per 16-bit word: shift 0 in the low 128 bits of each half (low
     * nibbles, elements 0..15), 4 in the high 128 bits (elements 16..31). */
    const __m512i nsh = _mm512_setr_epi64(0, 0, 0x0004000400040004ll, 0x0004000400040004ll, 0, 0,
                                          0x0004000400040004ll, 0x0004000400040004ll);
    const __m512i hsel = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 8, 8, 8, 8, 8, 8, 8, 8);
    size_t ro[8];
    for (int p = 0; p < NP; p++) {
        ro[2 * p] = 2 * p * ws;
        ro[2 * p + 1] = (2 * p + 1 < NR ? 2 * p + 1 : 2 * p) * ws;
    }
    __m512 acc[4][4];
    for (int p = 0; p < NP; p++)
        for (int t = 0; t < NT; t++) acc[p][t] = _mm512_setzero_ps();
    for (size_t g = 0; g < nb; g += 8) {
        const size_t ng = nb - g < 8 ? nb - g : 8;
        for (int r = 0; r < NR; r++) {
            const uint8_t *pw = W + r * ws + g * wb + pf;
            for (size_t o = 0; o < 8 * wb; o += 64) _mm_prefetch((const char *)(pw + o), _MM_HINT_T0);
            _mm_prefetch((const char *)(pw + 8 * wb - 1), _MM_HINT_T0);
        }
        __m512 dw[4], mw[4], dd[4][4];
        for (int p = 0; p < NP; p++) {
            __m256i h0 = halves8(W + ro[2 * p] + g * wb, wb, ng);
            __m256i h1 = 2 * p + 1 < NR ? halves8(W + ro[2 * p + 1] + g * wb, wb, ng) : h0;
            if (WT == 1) {
                /* [d | m] of each row -> [d0 | d1] and [m0 | m1]. */
                __m512 f0 = _mm512_cvtph_ps(h0), f1 = _mm512_cvtph_ps(h1);
                dw[p] = _mm512_shuffle_f32x4(f0, f1, 0x44);
                mw[p] = _mm512_shuffle_f32x4(f0, f1, 0xEE);
            } else {
                dw[p] = _mm512_cvtph_ps(_mm256_set_m128i(_mm256_castsi256_si128(h1), _mm256_castsi256_si128(h0)));
            }
        }
        for (int t = 0; t < NT; t++) {
            __m256i hx = halves8(X + t * xs + g * xb, xb, ng);
            __m512 daz;
            if (WT == 1) {
                __m512 fx = _mm512_cvtph_ps(hx);
                daz = _mm512_shuffle_f32x4(fx, fx, 0x44);
                const __m512 saz = _mm512_shuffle_f32x4(fx, fx, 0xEE);
                for (int p = 0; p < NP; p++) acc[p][t] = _mm512_fmadd_ps(mw[p], saz, acc[p][t]);
            } else {
                daz = _mm512_cvtph_ps(_mm256_broadcastsi128_si256(_mm256_castsi256_si128(hx)));
            }
            for (int p = 0; p < NP; p++) dd[p][t] = _mm512_mul_ps(dw[p], daz);
        }
        for (size_t i = 0; i < ng; i++) {
            const size_t b = g + i;
            const __m512i sel = _mm512_add_epi32(hsel, _mm512_set1_epi32((int)i));
            __m512i q[4];
            for (int p = 0; p < NP; p++) {
                const uint8_t *w0 = W + ro[2 * p] + b * wb + wq, *w1 = W + ro[2 * p + 1] + b * wb + wq;
                if (WT == 2) {
                    __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)w0)),
                                                   _mm256_loadu_si256((const __m256i *)w1), 1);
                    q[p] = _mm512_xor_si512(v, off);
                } else {
                    __m512i v = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)w0));
                    v = _mm512_mask_broadcast_i32x4(v, 0xFF00, _mm_loadu_si128((const __m128i *)w1));
                    q[p] = _mm512_and_si512(_mm512_srlv_epi16(v, nsh), m4);
                }
            }
            for (int t = 0; t < NT; t++) {
                __m512i a = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(X + t * xs + b * xb + xq)));
                __m512i init = _mm512_setzero_si512();
                if (WT != 1)
                    init = _mm512_sub_epi32(_mm512_setzero_si512(),
                                            _mm512_dpbusd_epi32(_mm512_setzero_si512(), off, a));
                for (int p = 0; p < NP; p++) {
                    __m512i pr = _mm512_dpbusd_epi32(init, q[p], a);
                    acc[p][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(pr), _mm512_permutexvar_ps(sel, dd[p][t]),
                                                acc[p][t]);
                }
            }
        }
    }
    for (int t = 0; t < NT; t++) {
        __m512 a[4];
        for (int p = 0; p < NP; p++) a[p] = acc[p][t];
        store_rows(Y + t * ldy, a, NR < 4 ? NR : 4);
        if (NR > 4) store_rows(Y + t * ldy + 4, a + 2, NR - 4);
    }
}

/* One entry point per weight type WT: a single token over up to 8 rows (see
 * drive), else a 4x4 tile. */
#define TILE_B32_ENTRY(name, WT)                                                                   \
    static void name(const uint8_t *W, size_t ws, const uint8_t *X, size_t xs, size_t K, float *Y, \
                     size_t ldy, size_t pf, size_t nr, size_t nt) {                                \
        switch (nr) {                                                                              \
        case 5: tile_b32(W, ws, X, xs, K, Y, ldy, pf, WT, 5, 1); return;                           \
        case 6: tile_b32(W, ws, X, xs, K, Y, ldy, pf, WT, 6, 1); return;                           \
        case 7: tile_b32(W, ws, X, xs, K, Y, ldy, pf, WT, 7, 1); return;                           \
        case 8: tile_b32(W, ws, X, xs, K, Y, ldy, pf, WT, 8, 1); return;                           \
        }                                                                                          \
        KCPU_SWITCH_4x4(tile_b32, nr, nt, W, ws, X, xs, K, Y, ldy, pf, WT)                         \
    }
TILE_B32_ENTRY(tile_q4_0, 0)
TILE_B32_ENTRY(tile_q4_1, 1)
TILE_B32_ENTRY(tile_q8_0, 2)

/* Weight rows stream from DRAM (or L3) once per call: the first token tile
 * of each strip of rows prefetches the strip about KCPU_PF_BYTES ahead, the
 * same offsets it is reading now, so misses overlap instead of stalling the
 * loads one group at a time. Later token tiles of the strip find it in L1
 * and prefetch their own lines (offset 0: a no-op). Prefetches only move
 * data, so results do not depend on them.
 * Strips are 4 rows, or mr1 (8 for the 4-bit types) when there is a single
 * token (decode): more independent accumulators and one activation load for
 * 8 rows (Q8_0 runs out of registers there and keeps 4). A row's
 * operations are the same in every tile shape. */
typedef void (*tile_fn)(const uint8_t *, size_t, const uint8_t *, size_t, size_t, float *, size_t,
                        size_t, size_t, size_t);
static void drive(tile_fn tile, size_t mr1, const void *W, size_t ws, size_t n0, size_t n1,
                  const void *X, size_t xs, size_t T, size_t K, float *Y, size_t ldy) {
    const size_t mr = T == 1 ? mr1 : 4;
    const size_t pf = (KCPU_PF_BYTES + mr * ws - 1) / (mr * ws) * mr * ws;
    /* The tiles prefetch pf bytes ahead of themselves: start the first pf
     * bytes of the range now, all at once, instead of meeting them as misses. */
    const uint8_t *w0 = (const uint8_t *)W + n0 * ws;
    const size_t head = pf < (n1 - n0) * ws ? pf : (n1 - n0) * ws;
    for (size_t o = 0; o < head; o += 64) _mm_prefetch((const char *)(w0 + o), _MM_HINT_T0);
    for (size_t n = n0; n < n1; n += mr) {
        size_t nr = n1 - n < mr ? n1 - n : mr;
        const uint8_t *w = (const uint8_t *)W + n * ws;
        for (size_t t = 0; t < T; t += 4) {
            size_t nt = T - t < 4 ? T - t : 4;
            tile(w, ws, (const uint8_t *)X + t * xs, xs, K, Y + t * ldy + n, ldy,
                 t == 0 ? pf : 0, nr, nt);
        }
    }
}

bool kcpu_matmul_avx512(pt_dtype wtype, const void *W, size_t w_stride, size_t n0, size_t n1,
                        const void *X, size_t x_stride, size_t T, size_t K, float *Y,
                        size_t ldy) {
    switch (wtype) {
    case PT_DTYPE_Q4_0: drive(tile_q4_0, 8, W, w_stride, n0, n1, X, x_stride, T, K, Y, ldy); return true;
    case PT_DTYPE_Q4_1: drive(tile_q4_1, 8, W, w_stride, n0, n1, X, x_stride, T, K, Y, ldy); return true;
    case PT_DTYPE_Q8_0: drive(tile_q8_0, 4, W, w_stride, n0, n1, X, x_stride, T, K, Y, ldy); return true;
    default: return false;
    }
}

/* Q8_0 / Q8_1 activation quantization (atype), byte for byte the reference's
 * (quant_ref.c): the same absmax (NaN lanes ignored, as fmaxf does), the
 * same scalar d = amax / 127 and id = 1 / d, the same product x * id, then
 * roundf's ties-away-from-zero done exactly as trunc(y) stepped by one where
 * |y - trunc(y)| >= 0.5 (y - trunc(y) is exact), truncating conversion
 * (cvtt, as (int) compiles to) and the clamp to [-127, 127]. */
void kcpu_quantize_act_avx512(pt_dtype atype, void *dst, const float *x, size_t K) {
    const int S = atype == PT_DTYPE_Q8_1;
    const size_t bs = S ? sizeof(pt_block_q8_1) : sizeof(pt_block_q8_0), qo = S ? 4 : 2;
    const __m512i absm = _mm512_set1_epi32(0x7fffffff);
    const __m512 half = _mm512_set1_ps(0.5f), mhalf = _mm512_set1_ps(-0.5f), one = _mm512_set1_ps(1.0f);
    const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
    uint8_t *o = dst;
    for (size_t b = 0; b < K / PT_QK; b++, o += bs, x += PT_QK) {
        __m512 v0 = _mm512_loadu_ps(x), v1 = _mm512_loadu_ps(x + 16);
        __m512 a0 = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v0), absm));
        __m512 a1 = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v1), absm));
        /* vmaxps returns its second operand when either is NaN. */
        __m512 m = _mm512_max_ps(a1, _mm512_max_ps(a0, _mm512_setzero_ps()));
        float amax = _mm512_reduce_max_ps(m);
        float d = amax / 127.0f, id = d > 0.0f ? 1.0f / d : 0.0f;
        __m512i q[2];
        for (int h = 0; h < 2; h++) {
            __m512 y = _mm512_mul_ps(h ? v1 : v0, _mm512_set1_ps(id));
            __m512 t = _mm512_roundscale_ps(y, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
            __m512 f = _mm512_sub_ps(y, t);
            t = _mm512_mask_add_ps(t, _mm512_cmp_ps_mask(f, half, _CMP_GE_OQ), t, one);
            t = _mm512_mask_sub_ps(t, _mm512_cmp_ps_mask(f, mhalf, _CMP_LE_OQ), t, one);
            q[h] = _mm512_min_epi32(_mm512_max_epi32(_mm512_cvttps_epi32(t), lo), hi);
            _mm_storeu_si128((__m128i *)(o + qo + 16 * h), _mm512_cvtepi32_epi8(q[h]));
        }
        pt_f16 d16 = pt_f32_to_f16(d);
        memcpy(o, &d16, 2);
        if (S) {
            int sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q[0], q[1]));
            pt_f16 s16 = pt_f32_to_f16(pt_f16_to_f32(d16) * (float)sum);
            memcpy(o + 2, &s16, 2);
        }
    }
}
