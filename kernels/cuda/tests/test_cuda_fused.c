/* The fused CUDA kernels of kcuda.h (RMSNorm to bf16, QKV bias + RoPE, chunked
 * SwiGLU to bf16, f32 -> bf16, the fold of row-parallel partials) against
 * their C references (ref/kcuda_fused_ref.c) and against the unfused kernels
 * whose float math they promise to keep. T = tokens (rows), D = row width.
 *
 * Tolerances:
 *   bf16 outputs: within 1 bf16 ulp of the reference's rounding (the float
 *     before rounding differs from the reference by a few float ulp, which
 *     can move a value across a rounding boundary), and bit-identical to the
 *     host's round-to-nearest-even of the unfused kernel's floats
 *     (kcuda_rmsnorm, kcuda_swiglu), whose math they share operation for
 *     operation;
 *   f32_to_bf16: bit-identical to the reference (NaN only has to stay NaN);
 *   qkv_bias_rope: rtol 1e-5, atol 2e-6 against the reference (device sincosf
 *     vs libm; values within [-1.5, 1.5]), and bit-identical to a host bias
 *     add followed by kcuda_rope on each group's query and K heads;
 *   fold_partials: bit-identical to the reference (the order of the adds is
 *     the point).
 * Every output buffer has gaps (rows longer than the data, untouched columns)
 * filled with a sentinel that must come back unchanged.
 * Host-only parts (reference conversions, argument checks) run everywhere;
 * without a GPU the program then prints "SKIP: no CUDA device" and exits 77.
 * PROTEUS_TEST_SEED overrides the seed. */
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "kcuda.h"
#include "ref/kcuda_fused_ref.h"
#include "ref/kcuda_ref.h"
#include "kcuda_test.h"

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))
/* Fills the gaps of bf16 outputs: a finite bf16 (about -1.6e38) no kernel here makes. */
#define BF16_SENTINEL 0xfeedu

static float f32_from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static bool bf16_is_nan(uint16_t h)
{
    return (h & 0x7fffu) > 0x7f80u;
}

/* Position of a bf16 on the number line, so that neighbours differ by 1
 * (+0 and -0 share 0). */
static int32_t bf16_order(uint16_t h)
{
    return (h & 0x8000u) ? -(int32_t)(h & 0x7fffu) : (int32_t)h;
}

/* Every element of got within max_ulp bf16 ulps of want (NaN only matches NaN).
 * Buffers of n elements, compared whole (gaps included). */
static bool bf16_close(const uint16_t *got, const uint16_t *want, size_t n, int32_t max_ulp)
{
    size_t bad = 0, worst = 0;
    int32_t worst_d = -1;
    for (size_t i = 0; i < n; i++) {
        bool ok;
        int32_t d = 0;
        if (bf16_is_nan(got[i]) || bf16_is_nan(want[i])) {
            ok = bf16_is_nan(got[i]) && bf16_is_nan(want[i]);
            d = INT32_MAX;
        } else {
            d = bf16_order(got[i]) - bf16_order(want[i]);
            d = d < 0 ? -d : d;
            ok = d <= max_ulp;
        }
        if (!ok) {
            bad++;
            if (d > worst_d)
                worst_d = d, worst = i;
        }
    }
    if (bad)
        printf("     %zu of %zu more than %d ulp apart; worst at %zu: got 0x%04x (%.6g) want "
               "0x%04x (%.6g)\n",
               bad, n, max_ulp, worst, got[worst], kcuda_ref_bf16_to_f32(got[worst]),
               want[worst], kcuda_ref_bf16_to_f32(want[worst]));
    return bad == 0;
}

static bool u16_equal(const uint16_t *got, const uint16_t *want, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (got[i] != want[i]) {
            printf("     first difference at %zu: got 0x%04x want 0x%04x\n", i, got[i], want[i]);
            return false;
        }
    }
    return true;
}

static uint16_t *u16_filled(size_t n, uint16_t v)
{
    uint16_t *p = malloc(n * sizeof *p);
    for (size_t i = 0; i < n; i++)
        p[i] = v;
    return p;
}

/* ---- host-only checks ---------------------------------------------------- */

static void test_ref_conversions(void)
{
    /* bf16: ties go to the even neighbour, carries reach infinity, NaN stays. */
    static const struct { uint32_t f; uint16_t h; } bf[] = {
        {0x3f800000u, 0x3f80u}, /* 1 */
        {0x3f808000u, 0x3f80u}, /* 1 + half an ulp: tie, 0x3f80 is even */
        {0x3f818000u, 0x3f82u}, /* tie, rounds up to even */
        {0x3f808001u, 0x3f81u}, /* just past the tie */
        {0x3f80ffffu, 0x3f81u},
        {0xbf80c000u, 0xbf81u}, /* negative, above the tie */
        {0x7f7fffffu, 0x7f80u}, /* FLT_MAX rounds to infinity */
        {0x7f7f7fffu, 0x7f7fu}, /* just below the tie with infinity */
        {0xff800000u, 0xff80u}, /* -inf */
        {0x00000001u, 0x0000u}, /* smallest denormal */
        {0x00008000u, 0x0000u}, /* denormal tie, to even */
        {0x00018000u, 0x0002u},
        {0x80000000u, 0x8000u}, /* -0 */
    };
    bool ok = true;
    for (size_t i = 0; i < COUNT(bf); i++) {
        uint16_t h = kcuda_ref_f32_to_bf16(f32_from_bits(bf[i].f));
        if (h != bf[i].h) {
            printf("     bf16(0x%08x) = 0x%04x, want 0x%04x\n", bf[i].f, h, bf[i].h);
            ok = false;
        }
    }
    ok = ok && bf16_is_nan(kcuda_ref_f32_to_bf16(NAN)) &&
         bf16_is_nan(kcuda_ref_f32_to_bf16(f32_from_bits(0x7f800001u))); /* payload in low bits */
    for (uint32_t h = 0; ok && h < 65536; h++) /* every bf16 widens and narrows back to itself */
        if (!bf16_is_nan((uint16_t)h) &&
            kcuda_ref_f32_to_bf16(kcuda_ref_bf16_to_f32((uint16_t)h)) != h) {
            printf("     bf16 0x%04x does not round-trip\n", h);
            ok = false;
        }
    report(ok, "ref bf16 rounding: nearest even, overflow to inf, NaN, round trip");

    static const struct { float f; uint16_t h; } hf[] = {
        {1.0f, 0x3c00u},
        {-2.0f, 0xc000u},
        {0.1f, 0x2e66u},
        {1.0f + 0x1p-11f, 0x3c00u},    /* half an ulp above 1: tie, to even */
        {1.0f + 0x1.8p-10f, 0x3c02u},  /* 1.5 ulp: tie, to even */
        {65504.0f, 0x7bffu},           /* the largest f16 */
        {65519.0f, 0x7bffu},
        {65520.0f, 0x7c00u},           /* tie with the next binade: infinity */
        {-INFINITY, 0xfc00u},
        {0x1p-14f, 0x0400u},           /* the smallest normal */
        {0x1.ff8p-15f, 0x03ffu},       /* the largest subnormal, 1023 * 2^-24 */
        {0x1.ffcp-15f, 0x0400u},       /* 1023.5 * 2^-24: tie, up into the normals */
        {0x1p-24f, 0x0001u},           /* the smallest subnormal */
        {0x1.8p-24f, 0x0002u},         /* 1.5 units: tie, to even */
        {0x1.8p-25f, 0x0001u},         /* 0.75 units */
        {0x1p-25f, 0x0000u},           /* 0.5 units: tie, to zero */
    };
    ok = true;
    for (size_t i = 0; i < COUNT(hf); i++) {
        uint16_t h = kcuda_ref_f32_to_f16(hf[i].f);
        if (h != hf[i].h) {
            printf("     f16(%.9g) = 0x%04x, want 0x%04x\n", hf[i].f, h, hf[i].h);
            ok = false;
        }
    }
    ok = ok && (kcuda_ref_f32_to_f16(NAN) & 0x7fffu) > 0x7c00u &&
         kcuda_ref_f16_to_f32(0x0001u) == 0x1p-24f && kcuda_ref_f16_to_f32(0xfbffu) == -65504.0f;
    for (uint32_t h = 0; ok && h < 65536; h++) {
        bool nan = (h & 0x7fffu) > 0x7c00u;
        if (!nan && kcuda_ref_f32_to_f16(kcuda_ref_f16_to_f32((uint16_t)h)) != h) {
            printf("     f16 0x%04x does not round-trip\n", h);
            ok = false;
        }
    }
    report(ok, "ref f16 rounding: nearest even, subnormals, overflow, round trip");
}

static void test_invalid_args(void)
{
    /* These return before touching the device, so they run without a GPU. */
    float f[8] = {0};
    uint16_t h[8] = {0};
    int32_t i32[2] = {0, 0};
    const cudaError_t inval = cudaErrorInvalidValue;
    bool ok =
        /* rmsnorm_bf16: NULLs, short strides (with a gather, even for one row), eps < 0 */
        kcuda_rmsnorm_bf16(NULL, 8, f, 8, NULL, f, 1, 8, 1e-5f, 0) == inval &&
        kcuda_rmsnorm_bf16(h, 8, f, 8, NULL, NULL, 1, 8, 1e-5f, 0) == inval &&
        kcuda_rmsnorm_bf16(h, 4, f, 8, NULL, f, 2, 8, 1e-5f, 0) == inval &&
        kcuda_rmsnorm_bf16(h, 8, f, 4, NULL, f, 2, 8, 1e-5f, 0) == inval &&
        kcuda_rmsnorm_bf16(h, 8, f, 4, i32, f, 1, 8, 1e-5f, 0) == inval &&
        kcuda_rmsnorm_bf16(h, 8, f, 8, NULL, f, 1, 8, -1.0f, 0) == inval &&
        kcuda_rmsnorm_bf16(NULL, 0, NULL, 0, NULL, NULL, 0, 8, 1e-5f, 0) == cudaSuccess &&
        /* qkv_bias_rope: style, odd n_rot, n_rot > head_dim, short ld, NULLs */
        kcuda_qkv_bias_rope(f, 64, NULL, i32, f, 1, 1, 2, 16, 16, (kcuda_rope_style)1, 0) == inval &&
        kcuda_qkv_bias_rope(f, 64, NULL, i32, f, 1, 1, 2, 16, 15, KCUDA_ROPE_NORM, 0) == inval &&
        kcuda_qkv_bias_rope(f, 64, NULL, i32, f, 1, 1, 2, 16, 18, KCUDA_ROPE_NEOX, 0) == inval &&
        kcuda_qkv_bias_rope(f, 63, NULL, i32, f, 2, 1, 2, 16, 16, KCUDA_ROPE_NORM, 0) == inval &&
        kcuda_qkv_bias_rope(NULL, 64, NULL, i32, f, 1, 1, 2, 16, 16, KCUDA_ROPE_NORM, 0) == inval &&
        kcuda_qkv_bias_rope(f, 64, NULL, NULL, f, 1, 1, 2, 16, 16, KCUDA_ROPE_NORM, 0) == inval &&
        kcuda_qkv_bias_rope(f, 64, NULL, i32, NULL, 1, 1, 2, 16, 16, KCUDA_ROPE_NORM, 0) == inval &&
        kcuda_qkv_bias_rope(NULL, 0, NULL, NULL, NULL, 0, 1, 2, 16, 16, KCUDA_ROPE_NORM, 0) ==
            cudaSuccess &&
        /* no bias and nothing to rotate: no work */
        kcuda_qkv_bias_rope(NULL, 0, NULL, NULL, NULL, 4, 1, 2, 16, 0, KCUDA_ROPE_NORM, 0) ==
            cudaSuccess &&
        /* swiglu_chunked_bf16: NULLs, short strides */
        kcuda_swiglu_chunked_bf16(NULL, 8, f, 16, 1, 2, 4, 0) == inval &&
        kcuda_swiglu_chunked_bf16(h, 8, NULL, 16, 1, 2, 4, 0) == inval &&
        kcuda_swiglu_chunked_bf16(h, 8, f, 15, 2, 2, 4, 0) == inval &&
        kcuda_swiglu_chunked_bf16(h, 7, f, 16, 2, 2, 4, 0) == inval &&
        kcuda_swiglu_chunked_bf16(NULL, 0, NULL, 0, 3, 0, 4, 0) == cudaSuccess &&
        /* f32_to_bf16 */
        kcuda_f32_to_bf16(NULL, f, 8, 0) == inval && kcuda_f32_to_bf16(h, NULL, 8, 0) == inval &&
        kcuda_f32_to_bf16(NULL, NULL, 0, 0) == cudaSuccess &&
        /* fold_partials: NULLs, no chunks, chunks that overlap */
        kcuda_fold_partials(NULL, f, 1, 8, 8, 0) == inval &&
        kcuda_fold_partials(f, NULL, 1, 8, 8, 0) == inval &&
        kcuda_fold_partials(f, f, 0, 8, 8, 0) == inval &&
        kcuda_fold_partials(f, f, 2, 4, 8, 0) == inval &&
        kcuda_fold_partials(NULL, NULL, 0, 0, 0, 0) == cudaSuccess;
    report(ok, "fused launchers reject bad arguments and accept empty work");
}

/* ---- device cases -------------------------------------------------------- */

static const size_t Ts[] = {1, 7, 64};

static void test_f32_to_bf16(void)
{
    /* Any 32-bit pattern (denormals, infinities, NaNs), odd length, and the
     * rounding edge cases up front. */
    const size_t n = ((size_t)1 << 20) + 13;
    static const uint32_t edge[] = {0x3f808000u, 0x3f818000u, 0x3f808001u, 0x7f7fffffu,
                                    0x7f7f7fffu, 0xff800000u, 0x7f800000u, 0x00000001u,
                                    0x00008000u, 0x00018000u, 0x80000000u, 0x7fc00000u,
                                    0xffffffffu, 0x7f800001u};
    float *in = malloc(n * sizeof *in);
    for (size_t i = 0; i < n; i++)
        in[i] = f32_from_bits(i < COUNT(edge) ? edge[i] : (uint32_t)rng_next());
    uint16_t *want = malloc(n * sizeof *want), *got = malloc(n * sizeof *got);
    kcuda_ref_f32_to_bf16_n(want, in, n);

    float *din = dev_upload(in, n * 4);
    uint16_t *dout = dev_upload(NULL, n * 2);
    bool ok = kcuda_f32_to_bf16(dout, din, n, stream) == cudaSuccess;
    dev_download(got, dout, n * 2);
    /* NaN only has to stay NaN (the device returns the canonical one). */
    for (size_t i = 0; ok && i < n; i++) {
        if (bf16_is_nan(want[i]) ? !bf16_is_nan(got[i]) : got[i] != want[i]) {
            uint32_t bits;
            memcpy(&bits, &in[i], sizeof bits);
            printf("     at %zu: bf16(0x%08x) got 0x%04x want 0x%04x\n", i, bits, got[i],
                   want[i]);
            ok = false;
        }
    }
    report(ok, "f32_to_bf16 n=1048589 random bit patterns (bitwise, NaN as NaN)");
    cudaFree(din), cudaFree(dout);
    free(in), free(want), free(got);
}

static void test_rmsnorm_bf16(void)
{
    static const size_t Ds[] = {64, 576, 4096, 5120};
    char name[160];
    for (size_t a = 0; a < COUNT(Ts); a++) {
        for (size_t b = 0; b < COUNT(Ds); b++) {
            const size_t T = Ts[a], D = Ds[b];
            const float eps = b % 2 ? 1e-6f : 1e-5f;
            /* x has more rows than the output and a longer stride. T = 1 and 64
             * gather rows (the last first, one repeated); T = 7 reads rows 0..6. */
            const bool gather = T != 7;
            const size_t xrows = T + 9, ld_x = D + 16 * (b + 1), ld_out = D + 8 * ((a + b) % 3);
            float *x = rand_floats(xrows * ld_x, -2.0f, 2.0f), *w = rand_floats(D, -1.5f, 1.5f);
            int32_t *rows = malloc(T * sizeof *rows);
            for (size_t t = 0; t < T; t++)
                rows[t] = (int32_t)(t == 0 ? xrows - 1 : rng_next() % xrows);
            if (T > 2)
                rows[2] = rows[1];
            const size_t n_out = (T - 1) * ld_out + D; /* the last row ends at D */
            uint16_t *want = u16_filled(n_out, BF16_SENTINEL), *got = malloc(n_out * 2);
            kcuda_ref_rmsnorm_bf16(want, ld_out, x, ld_x, gather ? rows : NULL, w, T, D, eps);

            float *dx = dev_upload(x, xrows * ld_x * 4), *dw = dev_upload(w, D * 4);
            int32_t *drows = dev_upload(rows, T * 4);
            uint16_t *fill = u16_filled(n_out, BF16_SENTINEL); /* what the kernel must overwrite */
            uint16_t *dy = dev_upload(fill, n_out * 2);
            free(fill);
            bool ok = kcuda_rmsnorm_bf16(dy, ld_out, dx, ld_x, gather ? drows : NULL, dw, T, D, eps,
                                         stream) == cudaSuccess;
            dev_download(got, dy, n_out * 2);
            ok = ok && bf16_close(got, want, n_out, 1);
            snprintf(name, sizeof name, "rmsnorm_bf16 T=%zu D=%zu ld_x=%zu ld_out=%zu%s (1 ulp)", T,
                     D, ld_x, ld_out, gather ? " gather" : "");
            report(ok, name);

            /* Same floats as kcuda_rmsnorm on the gathered rows, rounded on the host. */
            float *xg = malloc(T * D * sizeof *xg), *yf = malloc(T * D * sizeof *yf);
            for (size_t t = 0; t < T; t++)
                memcpy(xg + t * D, x + (gather ? (size_t)rows[t] : t) * ld_x, D * 4);
            float *dxg = dev_upload(xg, T * D * 4), *dyf = dev_upload(NULL, T * D * 4);
            ok = kcuda_rmsnorm(dyf, dxg, dw, T, D, eps, stream) == cudaSuccess;
            dev_download(yf, dyf, T * D * 4);
            for (size_t t = 0; ok && t < T; t++) {
                uint16_t *r = malloc(D * 2);
                kcuda_ref_f32_to_bf16_n(r, yf + t * D, D);
                ok = u16_equal(got + t * ld_out, r, D);
                free(r);
            }
            snprintf(name, sizeof name, "rmsnorm_bf16 T=%zu D=%zu == bf16(kcuda_rmsnorm) (bitwise)",
                     T, D);
            report(ok, name);

            cudaFree(dx), cudaFree(dw), cudaFree(drows), cudaFree(dy), cudaFree(dxg), cudaFree(dyf);
            free(x), free(w), free(rows), free(want), free(got), free(xg), free(yf);
        }
    }
}

static void test_qkv_bias_rope(void)
{
    /* SmolLM2-135M (3 groups of 3 q heads, no bias), Llama-3-8B (8 groups of
     * 4, llama3 frequencies, padded rows), Qwen2-0.5B (2 groups of 7, bias),
     * a partial rotation with bias, and bias alone (n_rot 0). */
    static const struct {
        size_t n_groups, q_per_kv, head_dim, n_rot, pad;
        float theta;
        bool llama3, bias;
    } cfg[] = {
        {3, 3, 64, 64, 0, 100000.0f, false, false},
        {8, 4, 128, 128, 64, 500000.0f, true, false},
        {2, 7, 64, 64, 0, 1000000.0f, false, true},
        {2, 2, 96, 64, 32, 10000.0f, false, true},
        {1, 4, 32, 0, 8, 10000.0f, false, true},
    };
    const kcuda_rope_llama3 l3 = {8.0f, 1.0f, 4.0f, 8192.0f};
    char name[200];
    for (size_t c = 0; c < COUNT(cfg); c++) {
        for (int neox = 0; neox <= 1; neox++) {
            for (size_t a = 0; a < COUNT(Ts); a++) {
                const size_t T = Ts[a], G = cfg[c].n_groups, Q = cfg[c].q_per_kv;
                const size_t hd = cfg[c].head_dim, n_rot = cfg[c].n_rot;
                const size_t group_stride = (Q + 2) * hd, row = G * group_stride;
                const size_t ld = row + cfg[c].pad, n = T * ld;
                const kcuda_rope_style style = neox ? KCUDA_ROPE_NEOX : KCUDA_ROPE_NORM;
                float inv_freq[64] = {0};
                if (n_rot)
                    kcuda_rope_inv_freq(inv_freq, n_rot, cfg[c].theta, cfg[c].llama3 ? &l3 : NULL);
                int32_t *pos = malloc(T * sizeof *pos);
                for (size_t t = 0; t < T; t++) /* position 0 first, then up to 128k */
                    pos[t] = t == 0 ? 0 : (int32_t)(rng_next() % 131072);
                float *x = rand_floats(n, -1.0f, 1.0f);
                float *bias = cfg[c].bias ? rand_floats(row, -0.5f, 0.5f) : NULL;
                float *want = malloc(n * sizeof *want), *got = malloc(n * sizeof *got);
                memcpy(want, x, n * sizeof *want);
                kcuda_ref_qkv_bias_rope(want, ld, bias, pos, inv_freq, T, G, Q, hd, n_rot, neox);

                float *dx = dev_upload(x, n * 4), *df = dev_upload(inv_freq, sizeof inv_freq);
                float *db = bias ? dev_upload(bias, row * 4) : NULL;
                int32_t *dp = dev_upload(pos, T * 4);
                bool ok = kcuda_qkv_bias_rope(dx, ld, db, dp, df, T, G, Q, hd, n_rot, style,
                                              stream) == cudaSuccess;
                dev_download(got, dx, n * 4);
                /* The whole buffer: V heads, unrotated dims and row padding too. */
                ok = ok && close_enough(got, want, n, 1e-5f, 2e-6f);
                snprintf(name, sizeof name,
                         "qkv_bias_rope %s T=%zu groups=%zu q_per_kv=%zu head_dim=%zu n_rot=%zu "
                         "ld=%zu%s%s",
                         neox ? "neox" : "norm", T, G, Q, hd, n_rot, ld,
                         cfg[c].llama3 ? " llama3" : "", bias ? " bias" : "");
                report(ok, name);

                /* Bitwise: bias added on the host (the same IEEE float add),
                 * then kcuda_rope on each group's q_per_kv + 1 heads. */
                float *xb = malloc(n * sizeof *xb), *unf = malloc(n * sizeof *unf);
                memcpy(xb, x, n * sizeof *xb);
                if (bias)
                    for (size_t t = 0; t < T; t++)
                        for (size_t i = 0; i < row; i++)
                            xb[t * ld + i] += bias[i];
                float *dxb = dev_upload(xb, n * 4);
                ok = true;
                for (size_t g = 0; g < G; g++)
                    ok = ok && kcuda_rope(dxb + g * group_stride, dp, df, T, Q + 1, hd, ld, n_rot,
                                          style, stream) == cudaSuccess;
                dev_download(unf, dxb, n * 4);
                ok = ok && bit_equal(got, unf, n);
                snprintf(name, sizeof name,
                         "qkv_bias_rope %s T=%zu groups=%zu q_per_kv=%zu == bias + kcuda_rope "
                         "(bitwise)",
                         neox ? "neox" : "norm", T, G, Q);
                report(ok, name);

                cudaFree(dx), cudaFree(df), cudaFree(dp), cudaFree(dxb);
                if (db)
                    cudaFree(db);
                free(pos), free(x), free(bias), free(want), free(got), free(xb), free(unf);
            }
        }
    }
}

static void test_swiglu_chunked_bf16(void)
{
    /* SmolLM2-135M's 1536 MLP columns whole and in 8 chunks, Llama-3-8B's
     * 14336 in 8 chunks (TP8) and in 56, and an odd chunk size. */
    static const struct { size_t n_chunks, chunk; } cfg[] = {
        {1, 1536}, {8, 192}, {8, 1792}, {56, 256}, {3, 100},
    };
    char name[160];
    for (size_t c = 0; c < COUNT(cfg); c++) {
        for (size_t a = 0; a < COUNT(Ts); a++) {
            const size_t T = Ts[a], M = cfg[c].n_chunks, C = cfg[c].chunk, D = M * C;
            const size_t ld_gu = 2 * D + ((a + c) % 2 ? 24 : 0), ld_out = D + (c % 2 ? 0 : 40);
            /* gate in [-8, 8] covers silu's curved part and both tails. */
            float *gu = malloc(T * ld_gu * sizeof *gu);
            for (size_t t = 0; t < T; t++)
                for (size_t j = 0; j < ld_gu; j++)
                    gu[t * ld_gu + j] = (j % (2 * C)) < C || j >= 2 * D ? rng_uniform(-8.0f, 8.0f)
                                                                        : rng_uniform(-3.0f, 3.0f);
            const size_t n_out = (T - 1) * ld_out + D;
            uint16_t *want = u16_filled(n_out, BF16_SENTINEL), *got = malloc(n_out * 2);
            kcuda_ref_swiglu_chunked_bf16(want, ld_out, gu, ld_gu, T, M, C);

            float *dgu = dev_upload(gu, T * ld_gu * 4);
            uint16_t *fill = u16_filled(n_out, BF16_SENTINEL);
            uint16_t *dy = dev_upload(fill, n_out * 2);
            free(fill);
            bool ok = kcuda_swiglu_chunked_bf16(dy, ld_out, dgu, ld_gu, T, M, C, stream) ==
                      cudaSuccess;
            dev_download(got, dy, n_out * 2);
            ok = ok && bf16_close(got, want, n_out, 1);
            snprintf(name, sizeof name,
                     "swiglu_chunked_bf16 T=%zu chunks=%zu x %zu ld_gu=%zu ld_out=%zu (1 ulp)", T, M,
                     C, ld_gu, ld_out);
            report(ok, name);

            /* kcuda_swiglu on each chunk gives the same floats; rounded on the host. */
            float *yf = malloc(T * D * sizeof *yf);
            float *dyf = dev_upload(NULL, T * D * 4);
            ok = true;
            for (size_t m = 0; m < M; m++)
                ok = ok && kcuda_swiglu(dyf + m * C, dgu + 2 * m * C, dgu + 2 * m * C + C, T, C, D,
                                        ld_gu, ld_gu, stream) == cudaSuccess;
            dev_download(yf, dyf, T * D * 4);
            uint16_t *r = malloc(D * 2);
            for (size_t t = 0; ok && t < T; t++) {
                kcuda_ref_f32_to_bf16_n(r, yf + t * D, D);
                ok = u16_equal(got + t * ld_out, r, D);
            }
            snprintf(name, sizeof name,
                     "swiglu_chunked_bf16 T=%zu chunks=%zu x %zu == bf16(kcuda_swiglu) (bitwise)",
                     T, M, C);
            report(ok, name);

            cudaFree(dgu), cudaFree(dy), cudaFree(dyf);
            free(gu), free(want), free(got), free(yf), free(r);
        }
    }
}

static void test_fold_partials(void)
{
    /* The TP chunk counts: one chunk (a rank's own), SmolLM2's 3 KV heads,
     * 4 MLP chunks, Llama-3-8B's 8 KV heads; partials of mixed magnitude so
     * that the order of the adds shows in the bits. */
    static const size_t chunks[] = {1, 3, 4, 8};
    static const size_t Ds[] = {64, 576, 4096};
    char name[128];
    for (size_t c = 0; c < COUNT(chunks); c++) {
        for (size_t a = 0; a < COUNT(Ts); a++) {
            for (size_t b = 0; b < COUNT(Ds); b++) {
                const size_t M = chunks[c], n = Ts[a] * Ds[b], stride = n + (c % 2 ? 32 : 0);
                float *x = rand_floats(n, -4.0f, 4.0f), *part = malloc(M * stride * sizeof *part);
                for (size_t i = 0; i < M * stride; i++)
                    part[i] = rng_uniform(-1.0f, 1.0f) * (i % 3 == 0 ? 1000.0f : 1.0f);
                float *want = malloc(n * sizeof *want), *got = malloc(n * sizeof *got);
                memcpy(want, x, n * sizeof *want);
                kcuda_ref_fold_partials(want, part, M, stride, n);
                float *dx = dev_upload(x, n * 4), *dp = dev_upload(part, M * stride * 4);
                bool ok = kcuda_fold_partials(dx, dp, M, stride, n, stream) == cudaSuccess;
                dev_download(got, dx, n * 4);
                ok = ok && memcmp(got, want, n * sizeof *got) == 0;
                snprintf(name, sizeof name, "fold_partials chunks=%zu n=%zu stride=%zu (bitwise)", M, n,
                         stride);
                report(ok, name);
                cudaFree(dx), cudaFree(dp);
                free(x), free(part), free(want), free(got);
            }
        }
    }
}

int main(void)
{
    test_seed(0x5eedf05eull);

    test_ref_conversions();
    test_invalid_args();

    test_require_device();

    test_f32_to_bf16();
    test_rmsnorm_bf16();
    test_qkv_bias_rope();
    test_swiglu_chunked_bf16();
    test_fold_partials();

    return test_finish();
}
