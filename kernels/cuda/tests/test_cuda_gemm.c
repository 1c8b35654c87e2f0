/* kcuda_gemm (cuBLASLt) against the C reference kcuda_ref_gemm, which sums in
 * double over the same bf16/f16 inputs. T = tokens (rows of X and Y), N =
 * outputs, K = inputs.
 *
 * Tolerance, per element of Y: |got - want| <= 1e-6 * sqrt(K) * S, with
 * S = sum_k |x[t][k] w[n][k]| + |beta * y0[t][n]| (computed by the
 * reference). An f32 sum of K terms in any order is off by at most about
 * K * 2^-24 * S; with random signs the error is nearer 2^-24 * S, and about
 * sqrt(K) * 2^-24 * S even if the tensor cores truncate instead of round; the
 * bound leaves a margin of ten over that, while one wrong or missing term
 * (|x w| ~ S / K) still fails it for K up to 4096.
 *
 * Cases: both weight layouts, bf16 and f16, T in {1, 7, 64, 300}, N x K in
 * {576 x 576, 1536 x 576, 576 x 1536 (SmolLM2), 4096 x 4096, 14336 x 4096,
 * 4096 x 14336 (Llama-3-8B), 129 x 70 (odd sizes, odd strides, pointers only
 * 2- or 4-byte aligned)}, beta 0 (Y filled with NaN, which must not leak in)
 * and 1, padded row strides (NaN in the padding of X and W, a sentinel in
 * Y's, which must come back untouched). Where the full reference would be
 * slow (T N K > 2^27) it checks rows 0 and T - 1 whole and a block of 64
 * columns in every row. Also: a repeated call (cached plan) gives the same
 * bits, a call captured in a CUDA graph gives the same bits as a direct one,
 * and more shapes than the plan cache holds all stay right.
 * Host-only parts (argument checks, the reference on a hand-worked case) run
 * everywhere; without a GPU the program then prints "SKIP: no CUDA device"
 * and exits 77. PROTEUS_TEST_SEED overrides the seed. */
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "kcuda.h"
#include "ref/kcuda_fused_ref.h"
#include "kcuda_test.h"

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))
#define Y_SENTINEL (-12345.0f)

static uint16_t to_half(float v, int f16)
{
    return f16 ? kcuda_ref_f32_to_f16(v) : kcuda_ref_f32_to_bf16(v);
}

/* ---- host-only checks ---------------------------------------------------- */

static void test_invalid_args(void)
{
    /* A handle that is never dereferenced: each call below is rejected by its
     * arguments first (a bug that got past them would read this zeroed
     * buffer, not a real handle, and fail). */
    static unsigned char fake_mem[64];
    kcuda_blas *fake = (kcuda_blas *)(void *)fake_mem;
    float y[64] = {0};
    uint16_t x[64] = {0}, w[256] = {0};
    const cudaError_t inval = cudaErrorInvalidValue;
    const kcuda_w_layout NK = KCUDA_W_NK, KN = KCUDA_W_KN;
    const kcuda_gemm_type BF = KCUDA_GEMM_BF16;
    bool ok =
        kcuda_gemm(fake, y, 16, x, 8, w, 8, (kcuda_w_layout)2, BF, 2, 16, 8, 0.0f, 0) == inval &&
        kcuda_gemm(fake, y, 16, x, 8, w, 8, NK, (kcuda_gemm_type)2, 2, 16, 8, 0.0f, 0) == inval &&
        kcuda_gemm(NULL, y, 16, x, 8, w, 8, NK, BF, 2, 16, 8, 0.0f, 0) == inval &&
        kcuda_gemm(fake, NULL, 16, x, 8, w, 8, NK, BF, 2, 16, 8, 0.0f, 0) == inval &&
        kcuda_gemm(fake, y, 16, NULL, 8, w, 8, NK, BF, 2, 16, 8, 0.0f, 0) == inval &&
        kcuda_gemm(fake, y, 16, x, 8, NULL, 8, NK, BF, 2, 16, 8, 0.0f, 0) == inval &&
        kcuda_gemm(fake, y, 15, x, 8, w, 8, NK, BF, 2, 16, 8, 0.0f, 0) == inval &&  /* ldy < N */
        kcuda_gemm(fake, y, 16, x, 7, w, 8, NK, BF, 2, 16, 8, 0.0f, 0) == inval &&  /* ldx < K */
        kcuda_gemm(fake, y, 16, x, 7, w, 8, NK, BF, 1, 16, 8, 0.0f, 0) == inval &&  /* ...T = 1 too */
        kcuda_gemm(fake, y, 16, x, 8, w, 7, NK, BF, 2, 16, 8, 0.0f, 0) == inval &&  /* ldw < K */
        kcuda_gemm(fake, y, 16, x, 8, w, 8, KN, BF, 2, 16, 8, 0.0f, 0) == inval &&  /* ldw < N */
        kcuda_gemm(NULL, NULL, 0, NULL, 0, NULL, 0, NK, BF, 0, 16, 8, 0.0f, 0) == cudaSuccess &&
        kcuda_gemm(NULL, NULL, 0, NULL, 0, NULL, 0, KN, BF, 2, 0, 8, 1.0f, 0) == cudaSuccess &&
        kcuda_gemm(NULL, NULL, 0, NULL, 0, NULL, 0, NK, BF, 2, 16, 0, 1.0f, 0) == cudaSuccess;
    kcuda_blas_destroy(NULL); /* a no-op */
    report(ok, "gemm rejects bad arguments and accepts empty work");
}

static void test_ref_small(void)
{
    /* Worked by hand: X = [1 2; 3 -4], W (N = 3, K = 2) = [1 0.5; 0 1; -1 1],
     * Y0 = [1 1 1; 0.5 0.5 0.5] with rows 4 apart (the 4th column a gap).
     * X W^T = [2 2 1; 1 -4 -7]; beta = 1 adds Y0. */
    const float xv[4] = {1, 2, 3, -4}, wnk[6] = {1, 0.5f, 0, 1, -1, 1};
    const float want[8] = {3, 3, 2, Y_SENTINEL, 1.5f, -3.5f, -6.5f, Y_SENTINEL};
    const float want_abs[8] = {3, 3, 4, 0, 5.5f, 4.5f, 7.5f, 0};
    bool ok = true;
    for (int f16 = 0; f16 <= 1; f16++) {
        for (int kn = 0; kn <= 1; kn++) {
            uint16_t X[4], W[6];
            for (int i = 0; i < 4; i++)
                X[i] = to_half(xv[i], f16);
            for (int n = 0; n < 3; n++) /* KN keeps W^T: (K = 2, N = 3), rows 3 apart */
                for (int k = 0; k < 2; k++)
                    W[kn ? k * 3 + n : n * 2 + k] = to_half(wnk[n * 2 + k], f16);
            float Y[8] = {1, 1, 1, Y_SENTINEL, 0.5f, 0.5f, 0.5f, Y_SENTINEL}, S[8] = {0};
            kcuda_ref_gemm(Y, 4, S, X, 2, W, kn ? 3 : 2, kn, f16, 2, 3, 2, 1.0f);
            ok = ok && memcmp(Y, want, sizeof Y) == 0 && memcmp(S, want_abs, sizeof S) == 0;
            /* beta = 0 does not read Y: NaN stays out. */
            float Z[8] = {NAN, NAN, NAN, Y_SENTINEL, NAN, NAN, NAN, Y_SENTINEL};
            kcuda_ref_gemm(Z, 4, NULL, X, 2, W, kn ? 3 : 2, kn, f16, 2, 3, 2, 0.0f);
            ok = ok && Z[0] == 2 && Z[1] == 2 && Z[2] == 1 && Z[4] == 1 && Z[5] == -4 &&
                 Z[6] == -7 && Z[3] == Y_SENTINEL;
        }
    }
    report(ok, "ref gemm: hand-worked 2x3x2, both layouts, bf16 and f16, beta 0 and 1");
}

/* ---- device helpers ------------------------------------------------------ */

/* A rows x cols matrix of values in [-1, 1] rounded to bf16/f16, rows ld apart,
 * after `off` leading elements; padding and the lead are NaN, so a kernel
 * that reads them poisons its output. */
static uint16_t *rand_matrix(size_t rows, size_t cols, size_t ld, size_t off, int f16)
{
    const size_t n = off + rows * ld;
    uint16_t *m = malloc(n * sizeof *m);
    const uint16_t nan = f16 ? 0x7e00u : 0x7fc0u;
    for (size_t i = 0; i < n; i++)
        m[i] = nan;
    for (size_t r = 0; r < rows; r++)
        for (size_t c = 0; c < cols; c++)
            m[off + r * ld + c] = to_half(rng_uniform(-1.0f, 1.0f), f16);
    return m;
}

/* Y before the call: off sentinels, then T rows of N values (NaN for beta = 0,
 * random otherwise) and ldy - N sentinels. */
static float *initial_y(size_t T, size_t N, size_t ldy, size_t off, float beta)
{
    const size_t n = off + T * ldy;
    float *y = malloc(n * sizeof *y);
    for (size_t i = 0; i < n; i++)
        y[i] = Y_SENTINEL;
    for (size_t t = 0; t < T; t++)
        for (size_t c = 0; c < N; c++)
            y[off + t * ldy + c] = beta == 0.0f ? NAN : rng_uniform(-1.0f, 1.0f);
    return y;
}

/* The sentinels of initial_y came back unchanged. */
static bool gaps_intact(const float *got, size_t T, size_t N, size_t ldy, size_t off)
{
    for (size_t i = 0; i < off + T * ldy; i++) {
        bool gap = i < off || (i - off) % ldy >= N;
        if (gap && got[i] != Y_SENTINEL) {
            printf("     gap element %zu changed to %.9g\n", i, got[i]);
            return false;
        }
    }
    return true;
}

typedef struct {
    const uint16_t *X, *W; /* host, at the matrix origin */
    size_t ldx, ldw, ldy, K;
    int kn, f16;
    float beta;
    const float *y0; /* Y before the call, at the matrix origin */
    float *want, *mag; /* scratch laid out like Y */
    double tol;        /* bound = tol * S */
    double worst;      /* largest |got - want| / S seen */
} ref_ctx;

/* Rows [t0, t1) x columns [n0, n1) of got against the reference. */
static bool check_block(ref_ctx *c, const float *got, size_t t0, size_t t1, size_t n0, size_t n1)
{
    for (size_t t = t0; t < t1; t++) /* the block's own y0, whatever earlier blocks wrote */
        memcpy(c->want + t * c->ldy + n0, c->y0 + t * c->ldy + n0, (n1 - n0) * sizeof(float));
    const uint16_t *Wb = c->kn ? c->W + n0 : c->W + n0 * c->ldw;
    kcuda_ref_gemm(c->want + t0 * c->ldy + n0, c->ldy, c->mag + t0 * c->ldy + n0,
                   c->X + t0 * c->ldx, c->ldx, Wb, c->ldw, c->kn, c->f16, t1 - t0, n1 - n0, c->K,
                   c->beta);
    size_t bad = 0, wt = 0, wn = 0;
    double worst_excess = -1.0;
    for (size_t t = t0; t < t1; t++) {
        for (size_t n = n0; n < n1; n++) {
            const size_t i = t * c->ldy + n;
            const double err = fabs((double)got[i] - c->want[i]), S = c->mag[i];
            if (S > 0.0 && err / S > c->worst)
                c->worst = err / S;
            if (!(err <= c->tol * S)) { /* NaN fails too */
                bad++;
                const double excess = isnan(err) ? INFINITY : err - c->tol * S;
                if (excess > worst_excess)
                    worst_excess = excess, wt = t, wn = n;
            }
        }
    }
    if (bad) {
        const size_t i = wt * c->ldy + wn;
        printf("     %zu of %zu out of tolerance; worst at t=%zu n=%zu: got %.9g want %.9g "
               "(S %.6g, bound %.3g)\n",
               bad, (t1 - t0) * (n1 - n0), wt, wn, got[i], c->want[i], c->mag[i],
               c->tol * c->mag[i]);
    }
    return bad == 0;
}

/* ---- device cases -------------------------------------------------------- */

static void test_gemm_shapes(kcuda_blas *b)
{
    static const struct { size_t N, K; } shapes[] = {
        {576, 576}, {1536, 576}, {576, 1536}, {4096, 4096}, {14336, 4096}, {4096, 14336}, {129, 70},
    };
    static const size_t Ts[] = {1, 7, 64, 300};
    char name[200];
    for (size_t s = 0; s < COUNT(shapes); s++) {
        const size_t N = shapes[s].N, K = shapes[s].K;
        const bool odd = N % 2 == 1;
        const size_t off = odd ? 1 : 0; /* 2-byte aligned X and W, 4-byte aligned Y */
        for (int kn = 0; kn <= 1; kn++) {
            for (int f16 = 0; f16 <= 1; f16++) {
                const size_t ldw = (kn ? N : K) + (odd ? 3 : ((s + kn) % 2 ? 24 : 0));
                uint16_t *W = rand_matrix(kn ? K : N, kn ? N : K, ldw, off, f16);
                uint16_t *dW = dev_upload(W, (off + (kn ? K : N) * ldw) * 2);
                for (size_t a = 0; a < COUNT(Ts); a++) {
                    const size_t T = Ts[a];
                    const float beta = (a + (size_t)kn + (size_t)f16) % 2 ? 1.0f : 0.0f;
                    const size_t ldx = K + (T == 7 ? 8 : 0) + (odd ? 1 : 0);
                    const size_t ldy = N + (T == 7 ? 4 : 0) + (odd ? 1 : 0);
                    const size_t ny = off + T * ldy;
                    uint16_t *X = rand_matrix(T, K, ldx, off, f16);
                    float *y0 = initial_y(T, N, ldy, off, beta);
                    uint16_t *dX = dev_upload(X, (off + T * ldx) * 2);
                    float *dY = dev_upload(y0, ny * 4);
                    float *got = malloc(ny * sizeof *got);

                    cudaError_t err = kcuda_gemm(b, dY + off, ldy, dX + off, ldx, dW + off, ldw,
                                                 kn ? KCUDA_W_KN : KCUDA_W_NK,
                                                 f16 ? KCUDA_GEMM_F16 : KCUDA_GEMM_BF16, T, N, K,
                                                 beta, stream);
                    dev_download(got, dY, ny * 4);
                    bool ok = err == cudaSuccess && gaps_intact(got, T, N, ldy, off);

                    ref_ctx c = {
                        .X = X + off, .W = W + off, .ldx = ldx, .ldw = ldw, .ldy = ldy, .K = K,
                        .kn = kn, .f16 = f16, .beta = beta, .y0 = y0 + off,
                        .want = malloc(T * ldy * sizeof(float)),
                        .mag = malloc(T * ldy * sizeof(float)),
                        .tol = 1e-6 * sqrt((double)K), .worst = 0.0,
                    };
                    const bool full = (double)T * N * K <= (double)(1u << 27);
                    if (ok && full) {
                        ok = check_block(&c, got + off, 0, T, 0, N);
                    } else if (ok) {
                        const size_t nb = 64, n0 = (size_t)(rng_next() % (N - nb + 1));
                        ok = check_block(&c, got + off, 0, 1, 0, N) &&
                             check_block(&c, got + off, T - 1, T, 0, N) &&
                             check_block(&c, got + off, 0, T, n0, n0 + nb);
                    }
                    snprintf(name, sizeof name,
                             "gemm %s %s T=%zu N=%zu K=%zu ldx=%zu ldw=%zu ldy=%zu beta=%g%s%s "
                             "(max err/S %.1e, bound %.1e)",
                             f16 ? "f16" : "bf16", kn ? "KN" : "NK", T, N, K, ldx, ldw, ldy,
                             (double)beta, off ? " unaligned" : "", full ? "" : " sampled",
                             c.worst, c.tol);
                    report(ok, name);

                    if (beta == 0.0f) {
                        /* Again, now from the cached plan: the same bits. */
                        float *again = malloc(ny * sizeof *again);
                        err = kcuda_gemm(b, dY + off, ldy, dX + off, ldx, dW + off, ldw,
                                         kn ? KCUDA_W_KN : KCUDA_W_NK,
                                         f16 ? KCUDA_GEMM_F16 : KCUDA_GEMM_BF16, T, N, K, beta,
                                         stream);
                        dev_download(again, dY, ny * 4);
                        ok = err == cudaSuccess && bit_equal(again, got, ny);
                        snprintf(name, sizeof name,
                                 "gemm %s %s T=%zu N=%zu K=%zu repeated call (bitwise)",
                                 f16 ? "f16" : "bf16", kn ? "KN" : "NK", T, N, K);
                        report(ok, name);
                        free(again);
                    }
                    cudaFree(dX), cudaFree(dY);
                    free(X), free(y0), free(got), free(c.want), free(c.mag);
                }
                cudaFree(dW);
                free(W);
            }
        }
    }
}

static void test_gemm_graph(kcuda_blas *b)
{
    /* SmolLM2's gate|up-sized product, beta = 1 (the residual form). */
    const size_t T = 7, N = 1536, K = 576, ny = T * N;
    uint16_t *W = rand_matrix(N, K, K, 0, 0), *X = rand_matrix(T, K, K, 0, 0);
    float *y0 = initial_y(T, N, N, 0, 1.0f);
    float *direct = malloc(ny * sizeof *direct), *graphed = malloc(ny * sizeof *graphed);
    uint16_t *dW = dev_upload(W, N * K * 2), *dX = dev_upload(X, T * K * 2);
    float *dY1 = dev_upload(y0, ny * 4), *dY2 = dev_upload(y0, ny * 4);

    bool ok = kcuda_gemm(b, dY1, N, dX, K, dW, K, KCUDA_W_NK, KCUDA_GEMM_BF16, T, N, K, 1.0f,
                         stream) == cudaSuccess;
    dev_download(direct, dY1, ny * 4);

    /* Capture the same call (its plan is cached now) in global mode, the
     * strictest: any forbidden call made by cuBLASLt would end the capture. */
    cudaGraph_t graph = NULL;
    cudaGraphExec_t exec = NULL;
    CUDA_CHECK_FATAL(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
    cudaError_t err = kcuda_gemm(b, dY2, N, dX, K, dW, K, KCUDA_W_NK, KCUDA_GEMM_BF16, T, N, K,
                                 1.0f, stream);
    cudaError_t end = cudaStreamEndCapture(stream, &graph);
    ok = ok && err == cudaSuccess && end == cudaSuccess;
    if (ok) {
        ok = cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess &&
             cudaGraphLaunch(exec, stream) == cudaSuccess;
    }
    if (!ok)
        printf("     capture: gemm %s, end %s\n", cudaGetErrorName(err), cudaGetErrorName(end));
    (void)cudaGetLastError();
    dev_download(graphed, dY2, ny * 4);
    ok = ok && bit_equal(graphed, direct, ny);
    report(ok, "gemm bf16 NK T=7 N=1536 K=576 captured in a CUDA graph == direct (bitwise)");

    if (exec)
        cudaGraphExecDestroy(exec);
    if (graph)
        cudaGraphDestroy(graph);
    cudaFree(dW), cudaFree(dX), cudaFree(dY1), cudaFree(dY2);
    free(W), free(X), free(y0), free(direct), free(graphed);
}

static void test_gemm_many_shapes(kcuda_blas *b)
{
    /* 300 distinct T, twice: more plans than the cache keeps (256), so later
     * calls evict and re-plan. Every result against the reference. */
    const size_t max_T = 300, N = 64, K = 64;
    uint16_t *W = rand_matrix(N, K, K, 0, 0), *X = rand_matrix(max_T, K, K, 0, 0);
    uint16_t *dW = dev_upload(W, N * K * 2), *dX = dev_upload(X, max_T * K * 2);
    float *dY = dev_upload(NULL, max_T * N * 4), *got = malloc(max_T * N * sizeof *got);
    float *y0 = calloc(max_T * N, sizeof *y0);
    ref_ctx c = {
        .X = X, .W = W, .ldx = K, .ldw = K, .ldy = N, .K = K, .kn = 0, .f16 = 0, .beta = 0.0f,
        .y0 = y0, .want = malloc(max_T * N * sizeof(float)), .mag = malloc(max_T * N * sizeof(float)),
        .tol = 1e-6 * sqrt((double)K), .worst = 0.0,
    };
    bool ok = true;
    for (int pass = 0; pass < 2 && ok; pass++) {
        for (size_t T = 1; T <= max_T && ok; T++) {
            ok = kcuda_gemm(b, dY, N, dX, K, dW, K, KCUDA_W_NK, KCUDA_GEMM_BF16, T, N, K, 0.0f,
                            stream) == cudaSuccess;
            dev_download(got, dY, T * N * 4);
            ok = ok && check_block(&c, got, 0, T, 0, N);
            if (!ok)
                printf("     pass %d T=%zu\n", pass, T);
        }
    }
    report(ok, "gemm bf16 NK N=64 K=64, T = 1..300 twice (plan cache eviction)");
    cudaFree(dW), cudaFree(dX), cudaFree(dY);
    free(W), free(X), free(got), free(y0), free(c.want), free(c.mag);
}

int main(void)
{
    test_seed(0x5eed6e77ull);

    test_invalid_args();
    test_ref_small();

    if (kcuda_device_count() == 0) {
        /* Without a device the handle cannot be made, and says so. */
        kcuda_blas *b = kcuda_blas_create();
        report(b == NULL, "blas_create without a device returns NULL");
        kcuda_blas_destroy(b);
    }
    test_require_device();
    kcuda_blas *b = kcuda_blas_create();
    report(b != NULL, "blas_create");
    if (b) {
        test_gemm_shapes(b);
        test_gemm_graph(b);
        test_gemm_many_shapes(b);
        kcuda_blas_destroy(b);
    }

    return test_finish();
}
