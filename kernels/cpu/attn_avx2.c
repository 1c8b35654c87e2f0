/* Attention's dot products and axpys over F32 and F16 KV pages with AVX2
 * (F16C for F16): the same products and sums, in the same lanes and order, as
 * the portable kcpu_dot_f32 / kcpu_axpy_f32 and their F16 forms (separate
 * multiply and add, never fused), so every path gives the same bits. */
/* Contraction into FMA would round differently from the portable path. */
#pragma GCC optimize("fp-contract=off")

#include <immintrin.h>
#include <string.h>

#include "kcpu_ops.h"
#include "proteus/dtype.h"

bool kcpu_attn_avx2_available(void) {
    static int cached = -1;
    if (cached < 0) {
        __builtin_cpu_init();
        cached = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
    }
    return cached;
}

float kcpu_dot_f32_f16_avx2(const float *a, const uint16_t *b, size_t n) {
    __m256 acc = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 bv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(b + i)));
        acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_loadu_ps(a + i), bv));
    }
    float l[8];
    _mm256_storeu_ps(l, acc);
    for (int k = 0; i < n; i++, k++) {
        float prod = a[i] * _cvtsh_ss(b[i]);
        l[k] += prod;
    }
    /* The fixed tree of kcpu_dot_f32: (0+4)+(2+6) + (1+5)+(3+7). */
    float s0 = l[0] + l[4], s1 = l[1] + l[5], s2 = l[2] + l[6], s3 = l[3] + l[7];
    return (s0 + s2) + (s1 + s3);
}

void kcpu_axpy_f32_f16_avx2(float *y, float a, const uint16_t *x, size_t n) {
    __m256 av = _mm256_set1_ps(a);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 xv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i)));
        _mm256_storeu_ps(y + i, _mm256_add_ps(_mm256_loadu_ps(y + i), _mm256_mul_ps(av, xv)));
    }
    for (; i < n; i++) {
        float prod = a * _cvtsh_ss(x[i]);
        y[i] += prod;
    }
}

/* The fixed tree of kcpu_dot_f32 over the 8 lanes plus a scalar tail. */
static float finish_lanes(__m256 acc, const float *a, const float *b, size_t i, size_t n) {
    float l[8];
    _mm256_storeu_ps(l, acc);
    for (int k = 0; i < n; i++, k++) {
        float prod = a[i] * b[i];
        l[k] += prod;
    }
    float s0 = l[0] + l[4], s1 = l[1] + l[5], s2 = l[2] + l[6], s3 = l[3] + l[7];
    return (s0 + s2) + (s1 + s3);
}

float kcpu_dot_f32_avx2(const float *a, const float *b, size_t n) {
    __m256 acc = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 8 <= n; i += 8) acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i)));
    return finish_lanes(acc, a, b, i, n);
}

void kcpu_axpy_f32_avx2(float *y, float a, const float *x, size_t n) {
    __m256 av = _mm256_set1_ps(a);
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_add_ps(_mm256_loadu_ps(y + i), _mm256_mul_ps(av, _mm256_loadu_ps(x + i))));
    for (; i < n; i++) {
        float prod = a * x[i];
        y[i] += prod;
    }
}
