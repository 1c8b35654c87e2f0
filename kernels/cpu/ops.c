/* No FMA contraction: kcpu_dot_f32's order is a contract (the page
 * selection bound relies on it), and a build with -march=native must not
 * change it. */
#pragma GCC optimize("fp-contract=off")

#include "kcpu_ops.h"

#include "kcpu_matmul.h"
#include "proteus/dtype.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define LANES 8

static inline float lanes_sum(const float acc[LANES]) {
    /* Fixed pairwise tree: (0+4)+(2+6) + (1+5)+(3+7). */
    float s0 = acc[0] + acc[4], s1 = acc[1] + acc[5], s2 = acc[2] + acc[6], s3 = acc[3] + acc[7];
    return (s0 + s2) + (s1 + s3);
}

float kcpu_dot_f32(const float *a, const float *b, size_t n) {
    float acc[LANES] = {0};
    size_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int l = 0; l < LANES; l++) acc[l] += a[i + l] * b[i + l];
    for (int l = 0; i < n; i++, l++) acc[l] += a[i] * b[i];
    return lanes_sum(acc);
}

void kcpu_add(float *y, const float *x, size_t n) {
    for (size_t i = 0; i < n; i++) y[i] += x[i];
}

void kcpu_rmsnorm(float *out, const float *x, const float *w, size_t n, float eps) {
    float ss = kcpu_dot_f32(x, x, n);
    float scale = 1.0f / sqrtf(ss / (float)n + eps);
    for (size_t i = 0; i < n; i++) out[i] = x[i] * scale * w[i];
}

void kcpu_rope(float *x, size_t n_heads, size_t head_dim, size_t rot_dim, uint32_t pos,
               const float *inv_freq, int neox) {
    size_t half = rot_dim / 2;
    for (size_t i = 0; i < half; i++) {
        /* Angles in double: position * frequency loses precision in float
         * at long contexts, and this is off the hot path. */
        double ang = (double)pos * (double)inv_freq[i];
        float c = (float)cos(ang), s = (float)sin(ang);
        for (size_t h = 0; h < n_heads; h++) {
            float *v = x + h * head_dim;
            size_t i0 = neox ? i : 2 * i;
            size_t i1 = neox ? i + half : 2 * i + 1;
            float a = v[i0], b = v[i1];
            v[i0] = a * c - b * s;
            v[i1] = a * s + b * c;
        }
    }
}

void kcpu_swiglu(float *out, const float *gate, const float *up, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

void kcpu_softmax(float *x, size_t n) {
    float mx = -INFINITY;
    for (size_t i = 0; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    float sum = 0.0f;
    for (size_t i = 0; i < n; i++) {
        x[i] = expf(x[i] - mx);
        sum += x[i];
    }
    float inv = 1.0f / sum;
    for (size_t i = 0; i < n; i++) x[i] *= inv;
}

float kcpu_dot_f32_f16(const float *a, const uint16_t *b, size_t n) {
    float acc[LANES] = {0};
    size_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int l = 0; l < LANES; l++) acc[l] += a[i + l] * pt_f16_to_f32(b[i + l]);
    for (int l = 0; i < n; i++, l++) acc[l] += a[i] * pt_f16_to_f32(b[i]);
    return lanes_sum(acc);
}

void kcpu_matmul_dequant(pt_dtype wtype, const void *W, size_t w_stride, size_t n0, size_t n1, const float *X,
                         size_t x_stride, size_t T, size_t K, float *Y, size_t ldy) {
    /* One row of K floats (at most a few hundred KiB for the widest models): on the stack, so that this
     * kernel cannot fail. */
    float row[K];
    for (size_t n = n0; n < n1; n++) {
        kcpu_dequantize_row(wtype, row, (const uint8_t *)W + n * w_stride, K);
        for (size_t t = 0; t < T; t++)
            Y[t * ldy + n] = kcpu_dot_f32(row, (const float *)((const uint8_t *)X + t * x_stride), K);
    }
}
