/* Every CUDA kernel of kcuda.h against its C reference (ref/kcuda_ref.c) on
 * fresh random inputs at several sizes. T = tokens (rows), D = row width.
 *
 * Tolerances, |got - want| <= atol + rtol * |want| per element:
 *   rmsnorm  rtol 1e-5, atol 1e-7  (float tree sum and rsqrtf vs a double sum)
 *   rope     rtol 1e-5, atol 1e-6  (device sincosf vs libm; inputs in [-1, 1])
 *   swiglu   rtol 1e-5, atol 1e-7  (device expf vs libm)
 *   add, embed (f32 and bf16): bit-identical.
 * The host-only parts (RoPE frequency table, argument checks) run everywhere;
 * the device cases need a GPU, and without one the program prints
 * "SKIP: no CUDA device" and exits 77. PROTEUS_TEST_SEED overrides the seed. */
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "kcuda.h"
#include "ref/kcuda_ref.h"
#include "kcuda_test.h"

/* ---- host-only checks ---------------------------------------------------- */

static void test_rope_inv_freq(void)
{
    /* Llama 3.1 8B: theta 500000, head_dim 128, rope_scaling factor 8, low 1,
     * high 4, original context 8192. Expected values computed independently
     * (Python, double) from the Llama 3.1 reference formula; indices cover the
     * kept band (0, 20), the blended band (29, 32, 34) and the scaled band (60). */
    static const struct { size_t i; double plain, scaled; } want[] = {
        {0, 1.0, 1.0},
        {20, 1.656044008e-02, 1.656044008e-02},
        {29, 2.616099253e-03, 2.166570764e-03},
        {32, 1.414213562e-03, 5.248461610e-04},
        {34, 9.384738704e-04, 1.785078128e-04},
        {60, 4.541670481e-06, 5.677088101e-07},
    };
    const kcuda_rope_llama3 l3 = {8.0f, 1.0f, 4.0f, 8192.0f};
    float plain[64], scaled[64];
    bool ok = kcuda_rope_inv_freq(plain, 128, 500000.0f, NULL) == 0 &&
              kcuda_rope_inv_freq(scaled, 128, 500000.0f, &l3) == 0;
    for (size_t k = 0; ok && k < sizeof want / sizeof want[0]; k++) {
        size_t i = want[k].i;
        if (fabs(plain[i] - want[k].plain) > 1e-6 * want[k].plain ||
            fabs(scaled[i] - want[k].scaled) > 1e-6 * want[k].scaled) {
            printf("     inv_freq[%zu]: plain %.9g (want %.9g), scaled %.9g (want %.9g)\n", i,
                   plain[i], want[k].plain, scaled[i], want[k].scaled);
            ok = false;
        }
    }
    report(ok, "rope_inv_freq llama3.1 theta=500000 n_rot=128");

    float tmp[4];
    ok = kcuda_rope_inv_freq(tmp, 3, 10000.0f, NULL) == -1 &&
         kcuda_rope_inv_freq(tmp, 0, 10000.0f, NULL) == -1 &&
         kcuda_rope_inv_freq(tmp, 8, 0.0f, NULL) == -1;
    kcuda_rope_llama3 bad = l3;
    bad.high_freq_factor = bad.low_freq_factor;
    ok = ok && kcuda_rope_inv_freq(tmp, 8, 10000.0f, &bad) == -1;
    report(ok, "rope_inv_freq rejects odd/zero n_rot, theta 0, high <= low factor");
}

static void test_invalid_args(void)
{
    /* These return before touching the device, so they run without a GPU. */
    float dummy;
    int32_t pos = 0;
    bool ok = kcuda_rope(&dummy, &pos, &dummy, 1, 1, 8, 8, 3, KCUDA_ROPE_NORM, 0) ==
                  cudaErrorInvalidValue &&
              kcuda_rope(&dummy, &pos, &dummy, 1, 1, 8, 8, 10, KCUDA_ROPE_NEOX, 0) ==
                  cudaErrorInvalidValue &&
              kcuda_rope(&dummy, &pos, &dummy, 1, 1, 8, 8, 8, (kcuda_rope_style)1, 0) ==
                  cudaErrorInvalidValue &&
              kcuda_rope(&dummy, &pos, &dummy, 2, 2, 8, 8, 8, KCUDA_ROPE_NORM, 0) ==
                  cudaErrorInvalidValue &&
              kcuda_rmsnorm(NULL, &dummy, &dummy, 1, 8, 1e-5f, 0) == cudaErrorInvalidValue &&
              kcuda_swiglu(&dummy, &dummy, &dummy, 2, 8, 4, 8, 8, 0) == cudaErrorInvalidValue &&
              kcuda_add(NULL, &dummy, &dummy, 4, 0) == cudaErrorInvalidValue &&
              kcuda_embed_f32(&dummy, NULL, &pos, 1, 4, 4, 0) == cudaErrorInvalidValue &&
              kcuda_rmsnorm(NULL, NULL, NULL, 0, 8, 1e-5f, 0) == cudaSuccess &&
              kcuda_add(NULL, NULL, NULL, 0, 0) == cudaSuccess;
    report(ok, "launchers reject bad arguments and accept empty work");
}

/* ---- device helpers ------------------------------------------------------ */

static const size_t Ts[] = {1, 7, 64};
static const size_t Ds[] = {64, 576, 4096, 5120};
#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* ---- device cases -------------------------------------------------------- */

static void test_rmsnorm(void)
{
    char name[128];
    for (size_t a = 0; a < COUNT(Ts); a++) {
        for (size_t b = 0; b < COUNT(Ds); b++) {
            size_t T = Ts[a], D = Ds[b], n = T * D;
            float eps = b % 2 ? 1e-6f : 1e-5f;
            float *x = rand_floats(n, -2.0f, 2.0f), *w = rand_floats(D, -1.5f, 1.5f);
            float *want = malloc(n * sizeof *want), *got = malloc(n * sizeof *got);
            kcuda_ref_rmsnorm(want, x, w, T, D, eps);
            float *dx = dev_upload(x, n * 4), *dw = dev_upload(w, D * 4), *dy = dev_upload(NULL, n * 4);

            bool ok = kcuda_rmsnorm(dy, dx, dw, T, D, eps, stream) == cudaSuccess;
            dev_download(got, dy, n * 4);
            ok = ok && close_enough(got, want, n, 1e-5f, 1e-7f);
            snprintf(name, sizeof name, "rmsnorm T=%zu D=%zu", T, D);
            report(ok, name);

            if (T == 64) {
                /* A row's result must not depend on its batch: row 5 alone
                 * gives the same bits as row 5 of the batch. */
                float *row = malloc(D * sizeof *row);
                ok = kcuda_rmsnorm(dy, dx + 5 * D, dw, 1, D, eps, stream) == cudaSuccess;
                dev_download(row, dy, D * 4);
                ok = ok && bit_equal(row, got + 5 * D, D);
                snprintf(name, sizeof name, "rmsnorm D=%zu row alone == row in batch (bitwise)", D);
                report(ok, name);
                free(row);

                /* In place. */
                ok = kcuda_rmsnorm(dx, dx, dw, T, D, eps, stream) == cudaSuccess;
                dev_download(got, dx, n * 4);
                ok = ok && close_enough(got, want, n, 1e-5f, 1e-7f);
                snprintf(name, sizeof name, "rmsnorm in place T=%zu D=%zu", T, D);
                report(ok, name);
            }
            cudaFree(dx), cudaFree(dw), cudaFree(dy);
            free(x), free(w), free(want), free(got);
        }
    }
}

static void test_rope(void)
{
    /* Head shapes: SmolLM2-135M q (9 x 64), Llama-3 8B q (32 x 128) with the
     * Llama-3 table, Qwen2-style k (2 x 128), and a partial rotation. */
    static const struct { size_t H, head_dim, n_rot, extra; float theta; bool llama3; } cfg[] = {
        {9, 64, 64, 0, 100000.0f, false},
        {32, 128, 128, 2048, 500000.0f, true}, /* token stride leaves room for K, V */
        {2, 128, 128, 0, 1000000.0f, false},
        {4, 96, 64, 96, 10000.0f, false},
    };
    const kcuda_rope_llama3 l3 = {8.0f, 1.0f, 4.0f, 8192.0f};
    char name[160];
    for (size_t c = 0; c < COUNT(cfg); c++) {
        for (int neox = 0; neox <= 1; neox++) {
            for (size_t a = 0; a < COUNT(Ts); a++) {
                size_t T = Ts[a], H = cfg[c].H, hd = cfg[c].head_dim, n_rot = cfg[c].n_rot;
                size_t stride = H * hd + cfg[c].extra, n = T * stride;
                float inv_freq[64];
                kcuda_rope_inv_freq(inv_freq, n_rot, cfg[c].theta, cfg[c].llama3 ? &l3 : NULL);
                int32_t *pos = malloc(T * sizeof *pos);
                for (size_t t = 0; t < T; t++) /* position 0 first, then up to 128k */
                    pos[t] = t == 0 ? 0 : (int32_t)(rng_next() % 131072);
                float *x = rand_floats(n, -1.0f, 1.0f), *got = malloc(n * sizeof *got);
                float *want = malloc(n * sizeof *want);
                memcpy(want, x, n * sizeof *want);
                kcuda_ref_rope(want, pos, inv_freq, T, H, hd, stride, n_rot, neox);

                float *dx = dev_upload(x, n * 4), *df = dev_upload(inv_freq, n_rot / 2 * 4);
                int32_t *dp = dev_upload(pos, T * 4);
                bool ok = kcuda_rope(dx, dp, df, T, H, hd, stride, n_rot,
                                     neox ? KCUDA_ROPE_NEOX : KCUDA_ROPE_NORM, stream) ==
                          cudaSuccess;
                dev_download(got, dx, n * 4);
                /* Compares the whole buffer, so the untouched dims and the gap
                 * between tokens must come back unchanged too. */
                ok = ok && close_enough(got, want, n, 1e-5f, 1e-6f);
                snprintf(name, sizeof name, "rope %s T=%zu H=%zu head_dim=%zu n_rot=%zu%s",
                         neox ? "neox" : "norm", T, H, hd, n_rot, cfg[c].llama3 ? " llama3" : "");
                report(ok, name);
                cudaFree(dx), cudaFree(df), cudaFree(dp);
                free(pos), free(x), free(got), free(want);
            }
        }
    }
}

static void test_swiglu(void)
{
    char name[128];
    for (size_t a = 0; a < COUNT(Ts); a++) {
        for (size_t b = 0; b < COUNT(Ds); b++) {
            /* Odd sizes use the fused gate|up layout (row stride 2 * D). */
            size_t T = Ts[a], D = Ds[b];
            bool fused = (a + b) % 2 == 1;
            size_t ld_in = fused ? 2 * D : D, n_in = T * ld_in, n = T * D;
            float *g = rand_floats(n_in, -8.0f, 8.0f);
            float *u = fused ? g + D : rand_floats(n_in, -3.0f, 3.0f);
            float *want = malloc(n * sizeof *want), *got = malloc(n * sizeof *got);
            kcuda_ref_swiglu(want, g, u, T, D, D, ld_in, ld_in);

            float *dg = dev_upload(g, n_in * 4), *du = fused ? dg + D : dev_upload(u, n_in * 4);
            float *dy = dev_upload(NULL, n * 4);
            bool ok = kcuda_swiglu(dy, dg, du, T, D, D, ld_in, ld_in, stream) == cudaSuccess;
            dev_download(got, dy, n * 4);
            ok = ok && close_enough(got, want, n, 1e-5f, 1e-7f);
            snprintf(name, sizeof name, "swiglu T=%zu D=%zu%s", T, D, fused ? " fused" : "");
            report(ok, name);
            cudaFree(dg), cudaFree(dy);
            if (!fused)
                cudaFree(du), free(u);
            free(g), free(want), free(got);
        }
    }
}

static void test_add(void)
{
    char name[128];
    for (size_t a = 0; a < COUNT(Ts); a++) {
        for (size_t b = 0; b < COUNT(Ds); b++) {
            size_t n = Ts[a] * Ds[b];
            float *x = rand_floats(n, -10.0f, 10.0f), *y = rand_floats(n, -1.0f, 1.0f);
            float *want = malloc(n * sizeof *want), *got = malloc(n * sizeof *got);
            kcuda_ref_add(want, x, y, n);
            float *dx = dev_upload(x, n * 4), *dy = dev_upload(y, n * 4);
            /* In place, as the residual stream uses it. */
            bool ok = kcuda_add(dx, dx, dy, n, stream) == cudaSuccess;
            dev_download(got, dx, n * 4);
            ok = ok && bit_equal(got, want, n);
            snprintf(name, sizeof name, "add in place n=%zu (bitwise)", n);
            report(ok, name);
            cudaFree(dx), cudaFree(dy);
            free(x), free(y), free(want), free(got);
        }
    }
}

static void test_embed(void)
{
    const size_t n_vocab = 1000;
    char name[128];
    for (int bf16 = 0; bf16 <= 1; bf16++) {
        for (size_t a = 0; a < COUNT(Ts); a++) {
            for (size_t b = 0; b < COUNT(Ds); b++) {
                size_t T = Ts[a], D = Ds[b], n = T * D, nt = n_vocab * D;
                int32_t *ids = malloc(T * sizeof *ids);
                for (size_t t = 0; t < T; t++)
                    ids[t] = (int32_t)(rng_next() % n_vocab);
                ids[0] = (int32_t)n_vocab - 1; /* the last row */
                if (T > 2) { /* out of range: rows of zeros */
                    ids[1] = -1;
                    ids[2] = (int32_t)n_vocab;
                }
                float *want = malloc(n * sizeof *want), *got = malloc(n * sizeof *got);
                void *table, *dtab;
                if (bf16) {
                    /* Any 16-bit pattern, NaNs and infinities included: the
                     * widening must be exact for all of them. */
                    uint16_t *tb = malloc(nt * sizeof *tb);
                    for (size_t i = 0; i < nt; i++)
                        tb[i] = (uint16_t)rng_next();
                    kcuda_ref_embed_bf16(want, tb, ids, T, D, n_vocab);
                    table = tb, dtab = dev_upload(tb, nt * 2);
                } else {
                    float *tf = rand_floats(nt, -1.0f, 1.0f);
                    kcuda_ref_embed_f32(want, tf, ids, T, D, n_vocab);
                    table = tf, dtab = dev_upload(tf, nt * 4);
                }
                int32_t *dids = dev_upload(ids, T * 4);
                float *dy = dev_upload(NULL, n * 4);
                cudaError_t err = bf16 ? kcuda_embed_bf16(dy, dtab, dids, T, D, n_vocab, stream)
                                       : kcuda_embed_f32(dy, dtab, dids, T, D, n_vocab, stream);
                dev_download(got, dy, n * 4);
                bool ok = err == cudaSuccess && bit_equal(got, want, n);
                snprintf(name, sizeof name, "embed %s T=%zu D=%zu (bitwise)", bf16 ? "bf16" : "f32",
                         T, D);
                report(ok, name);
                cudaFree(dtab), cudaFree(dids), cudaFree(dy);
                free(table), free(ids), free(want), free(got);
            }
        }
    }
}

int main(void)
{
    test_seed(0x5eed2024ull);

    test_rope_inv_freq();
    test_invalid_args();

    test_require_device();

    test_rmsnorm();
    test_rope();
    test_swiglu();
    test_add();
    test_embed();

    return test_finish();
}
