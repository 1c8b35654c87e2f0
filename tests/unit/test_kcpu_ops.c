/* Element-wise kernels against plain double-precision definitions, and the
 * properties the engine relies on: dot products are the same bits for the
 * same inputs wherever they sit in memory; RoPE of both pair styles rotates
 * the right channels and preserves norms. Attention: test_kcpu_attn.c. */
#include <math.h>
#include <stdlib.h>

#include "cpu/kcpu_ops.h"
#include "proteus/dtype.h"
#include "test.h"

static uint64_t st = 88172645463325252ull;
static float frand(void) {
    st ^= st << 13, st ^= st >> 7, st ^= st << 17;
    return (float)((st >> 40) * (1.0 / 8388608.0)) - 1.0f;
}

static void test_dot_and_rmsnorm(void) {
    size_t sizes[] = {1, 7, 8, 64, 576, 4097};
    for (size_t i = 0; i < 6; i++) {
        size_t n = sizes[i];
        float *a = malloc(n * 4), *b = malloc(n * 4 + 4), *w = malloc(n * 4), *o = malloc(n * 4);
        double ref = 0, ss = 0, mag = 0;
        for (size_t k = 0; k < n; k++) {
            a[k] = frand(), b[k + 1] = frand(), w[k] = 1 + frand() * 0.1f;
            ref += (double)a[k] * b[k + 1], ss += (double)a[k] * a[k], mag += fabs((double)a[k] * b[k + 1]);
        }
        float d = kcpu_dot_f32(a, b + 1, n);
        CHECK_NEAR(d, ref, 1e-6 * mag + 1e-7);
        /* Same inputs at another address: same bits. */
        float *c = malloc(n * 4);
        memcpy(c, b + 1, n * 4);
        float d2 = kcpu_dot_f32(a, c, n);
        CHECK(memcmp(&d, &d2, 4) == 0);
        kcpu_rmsnorm(o, a, w, n, 1e-5f);
        double inv = 1.0 / sqrt(ss / (double)n + 1e-5);
        for (size_t k = 0; k < n; k++) CHECK_NEAR(o[k], a[k] * inv * w[k], 1e-5 * fabs(a[k] * inv * w[k]) + 1e-6);
        free(a), free(b), free(w), free(o), free(c);
    }
}

static void test_rope_styles(void) {
    enum { H = 3, D = 8 };
    float inv[D / 2], x[H * D], y[H * D];
    for (int i = 0; i < D / 2; i++) inv[i] = powf(10000.0f, -2.0f * i / D);
    for (int neox = 0; neox <= 1; neox++) {
        for (int k = 0; k < H * D; k++) x[k] = y[k] = frand();
        uint32_t pos = 37;
        kcpu_rope(y, H, D, D, pos, inv, neox);
        for (int h = 0; h < H; h++)
            for (int i = 0; i < D / 2; i++) {
                int i0 = neox ? i : 2 * i, i1 = neox ? i + D / 2 : 2 * i + 1;
                double ang = (double)pos * inv[i], a = x[h * D + i0], b = x[h * D + i1];
                CHECK_NEAR(y[h * D + i0], a * cos(ang) - b * sin(ang), 1e-5);
                CHECK_NEAR(y[h * D + i1], a * sin(ang) + b * cos(ang), 1e-5);
            }
        /* Position 0 is the identity. */
        memcpy(y, x, sizeof(x));
        kcpu_rope(y, H, D, D, 0, inv, neox);
        CHECK(memcmp(x, y, sizeof(x)) == 0);
    }
}

static void test_swiglu_softmax(void) {
    float g[5] = {-3, -0.5f, 0, 0.5f, 3}, u[5] = {1, 2, 3, 4, 5}, o[5];
    kcpu_swiglu(o, g, u, 5);
    for (int i = 0; i < 5; i++) CHECK_NEAR(o[i], g[i] / (1 + exp(-g[i])) * u[i], 1e-6);
    float s[4] = {1000, 1001, 999, -INFINITY};
    kcpu_softmax(s, 4);
    double e0 = exp(-1.0), e2 = exp(-2.0), z = e0 + 1 + e2;
    CHECK_NEAR(s[0], e0 / z, 1e-6);
    CHECK_NEAR(s[1], 1 / z, 1e-6);
    CHECK_NEAR(s[2], e2 / z, 1e-6);
    CHECK(s[3] == 0.0f);
}

TEST_MAIN(TEST(test_dot_and_rmsnorm), TEST(test_rope_styles), TEST(test_swiglu_softmax))
