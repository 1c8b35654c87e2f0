/* Element-wise kernels against plain double-precision definitions, and the
 * properties the engine relies on: dot products are the same bits for the
 * same inputs wherever they sit in memory; RoPE of both pair styles rotates
 * the right channels and preserves norms. */
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

/* Paged attention against a contiguous double-precision softmax(qK)V, with
 * pages scattered out of order in the slot array and a partial last page. */
static void test_attn_paged(void) {
    enum { HD = 16, P = 4, NQ = 3, SLOTS = 7 };
    uint32_t n_ctxs[] = {1, 4, 5, 13};
    uint32_t pages[4] = {5, 0, 3, 6};
    float *kv = calloc(SLOTS * 2 * P * HD, sizeof(float));
    for (size_t i = 0; i < SLOTS * 2 * P * HD; i++) kv[i] = frand();
    float q[NQ * HD], out[NQ * HD], sc[16];
    for (int i = 0; i < NQ * HD; i++) q[i] = frand();
    for (int c = 0; c < 4; c++) {
        uint32_t n = n_ctxs[c];
        kcpu_attn_paged(out, q, NQ, HD, kv, PT_DTYPE_F32, 2 * P * HD, P * HD, pages, P, n, 0.25f, sc);
        for (int h = 0; h < NQ; h++) {
            double s[16], mx = -1e30, z = 0;
            for (uint32_t p = 0; p < n; p++) {
                const float *k = kv + pages[p / P] * 2 * P * HD + (p % P) * HD;
                s[p] = 0;
                for (int d = 0; d < HD; d++) s[p] += (double)q[h * HD + d] * k[d];
                s[p] *= 0.25;
                mx = s[p] > mx ? s[p] : mx;
            }
            for (uint32_t p = 0; p < n; p++) z += (s[p] = exp(s[p] - mx));
            for (int d = 0; d < HD; d++) {
                double ref = 0;
                for (uint32_t p = 0; p < n; p++) ref += s[p] / z * kv[pages[p / P] * 2 * P * HD + P * HD + (p % P) * HD + d];
                CHECK_NEAR(out[h * HD + d], ref, 1e-5);
            }
        }
    }
    free(kv);
}

/* The F16C path reads F16 pages with exactly the portable path's operations:
 * same bits, at lengths with and without a tail. */
static void test_f16_paths_agree(void) {
    if (!kcpu_attn_avx2_available()) {
        printf("no AVX2+F16C: fast attention paths not checked\n");
        return;
    }
    size_t ns[] = {1, 7, 8, 64, 67, 128};
    for (size_t i = 0; i < 6; i++) {
        size_t n = ns[i];
        float a[128], y0[128], y1[128];
        uint16_t b[128];
        for (size_t k = 0; k < n; k++) a[k] = frand(), b[k] = pt_f32_to_f16(frand() * 3), y0[k] = y1[k] = frand();
        float d0 = kcpu_dot_f32_f16(a, b, n), d1 = kcpu_dot_f32_f16_avx2(a, b, n);
        CHECK_MSG(memcmp(&d0, &d1, 4) == 0, "n=%zu: %.9g vs %.9g", n, d0, d1);
        kcpu_axpy_f32_f16(y0, 0.37f, b, n);
        kcpu_axpy_f32_f16_avx2(y1, 0.37f, b, n);
        CHECK(memcmp(y0, y1, n * sizeof(float)) == 0);
        /* And the F16 dot equals the F32 dot of the converted values, on both F32 paths. */
        float bf[128];
        for (size_t k = 0; k < n; k++) bf[k] = pt_f16_to_f32(b[k]);
        float d2 = kcpu_dot_f32(a, bf, n), d3 = kcpu_dot_f32_avx2(a, bf, n);
        CHECK(memcmp(&d0, &d2, 4) == 0);
        CHECK(memcmp(&d2, &d3, 4) == 0);
        kcpu_axpy_f32(y0, -1.5f, bf, n);
        kcpu_axpy_f32_avx2(y1, -1.5f, bf, n);
        CHECK(memcmp(y0, y1, n * sizeof(float)) == 0);
    }
}

TEST_MAIN(TEST(test_dot_and_rmsnorm), TEST(test_rope_styles), TEST(test_swiglu_softmax), TEST(test_attn_paged),
          TEST(test_f16_paths_agree))
