/* CPU matmul kernels: quantization round trips, the reference against a
 * double-precision dot of dequantized operands, every fast ISA present
 * against the reference, and bitwise invariance of each ISA's results under
 * batch size, row ranges and tiling.
 *
 * Tolerances (scale = sum |w_i| * |x_i| over the dequantized operands, in double):
 *   reference vs double dot:  2e-6 * scale, plus for Q4_1 the f16 rounding of
 *                             each Q8_1 block sum s (2^-11 * |m| * |s| per block)
 *   fast ISA vs reference:    1e-6 * scale (observed <= 6e-8)
 *   ISA vs itself across T, n0/n1 and tiles: bitwise equal. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "cpu/kcpu_matmul.h"
#include "test.h"

static const pt_dtype wtypes[] = {PT_DTYPE_F32,  PT_DTYPE_F16,  PT_DTYPE_BF16, PT_DTYPE_Q4_0,
                                  PT_DTYPE_Q4_1, PT_DTYPE_Q8_0, PT_DTYPE_Q4_K, PT_DTYPE_Q6_K};
#define N_WTYPES (sizeof(wtypes) / sizeof(wtypes[0]))
static const size_t Ks[] = {256, 512, 1536, 4096};
/* Widths the engine uses for 32-element block types (SmolLM2: a KV group's
 * O chunk is 192, d_model 576, an MLP chunk 384): block counts that are not
 * multiples of the fast paths' groups of 8. */
static const size_t Ks_b32[] = {32, 64, 192, 384, 576, 1000 / 32 * 32};

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static float frand(void) { /* uniform in [-1, 1) */
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((rng_state >> 40) * (1.0 / 8388608.0)) - 1.0f;
}

/* Random row with a per-row magnitude and an occasional outlier, so scales
 * vary between blocks and rows. */
static void rand_row(float *x, size_t K) {
    float mag = 0.05f + 2.0f * (frand() + 1.0f);
    for (size_t i = 0; i < K; i++) x[i] = mag * frand();
    x[(size_t)((frand() + 1.0f) * 0.5f * (float)(K - 1))] *= 4.0f;
}

static size_t row_bytes(pt_dtype t, size_t K) {
    uint64_t b = 0;
    pt_dtype_row_bytes(t, K, &b);
    return (size_t)b;
}

static bool isa_present(kcpu_isa isa) {
    __builtin_cpu_init();
    if (isa == KCPU_ISA_REF) return true;
    bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                __builtin_cpu_supports("f16c");
    if (isa == KCPU_ISA_AVX2) return avx2;
    return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vnni");
}

/* Problem with quantized weights and activations, and dequantized copies. */
typedef struct {
    pt_dtype wt;
    size_t N, T, K;
    size_t ws, xs;     /* row strides in bytes, padded to unaligned values */
    uint8_t *W, *X;    /* (N, ws), (T, xs) */
    float *Wd, *Xd;    /* (N, K), (T, K) dequantized */
} problem;

static void problem_init(problem *p, pt_dtype wt, size_t N, size_t T, size_t K) {
    p->wt = wt;
    p->N = N;
    p->T = T;
    p->K = K;
    p->ws = row_bytes(wt, K) + 6;
    p->xs = row_bytes(kcpu_act_type(wt), K) + 4;
    p->W = calloc(N, p->ws);
    p->X = calloc(T, p->xs);
    p->Wd = malloc(N * K * sizeof(float));
    p->Xd = malloc(T * K * sizeof(float));
    float *tmp = malloc(K * sizeof(float));
    for (size_t n = 0; n < N; n++) {
        rand_row(tmp, K);
        kcpu_quantize_row(wt, p->W + n * p->ws, tmp, K);
        kcpu_dequantize_row(wt, p->Wd + n * K, p->W + n * p->ws, K);
    }
    for (size_t t = 0; t < T; t++) {
        rand_row(tmp, K);
        kcpu_quantize_act(wt, p->X + t * p->xs, tmp, K);
        kcpu_dequantize_row(kcpu_act_type(wt), p->Xd + t * K, p->X + t * p->xs, K);
    }
    free(tmp);
}

static void problem_free(problem *p) {
    free(p->W);
    free(p->X);
    free(p->Wd);
    free(p->Xd);
}

static double scale_of(const problem *p, size_t n, size_t t) {
    double s = 0.0;
    for (size_t k = 0; k < p->K; k++) s += fabs((double)p->Wd[n * p->K + k] * p->Xd[t * p->K + k]);
    return s;
}

static void matmul(const problem *p, kcpu_isa isa, size_t n0, size_t n1, size_t t0, size_t T,
                   float *Y, size_t ldy) {
    kcpu_matmul_isa(isa, p->wt, p->W, p->ws, n0, n1, p->X + t0 * p->xs, p->xs, T, p->K,
                    Y + t0 * ldy, ldy);
}

/* dequantize(quantize(x)) against x, per element, relative to the block's
 * largest magnitude (or, for the float types, to the element itself). */
static void test_quantize_roundtrip(void) {
    for (size_t i = 0; i < N_WTYPES; i++) {
        pt_dtype wt = wtypes[i];
        for (size_t ki = 0; ki < sizeof(Ks) / sizeof(Ks[0]); ki++) {
            size_t K = Ks[ki], bs = pt_dtype_block_size(wt);
            float *x = malloc(K * sizeof(float)), *y = malloc(K * sizeof(float));
            uint8_t *q = malloc(row_bytes(wt, K));
            double worst = 0.0;
            for (int rep = 0; rep < 4; rep++) {
                rand_row(x, K);
                kcpu_quantize_row(wt, q, x, K);
                kcpu_dequantize_row(wt, y, q, K);
                for (size_t b0 = 0; b0 < K; b0 += bs) {
                    float amax = 0.0f, lo = x[b0], hi = x[b0];
                    for (size_t j = b0; j < b0 + bs; j++) {
                        amax = fmaxf(amax, fabsf(x[j]));
                        lo = fminf(lo, x[j]);
                        hi = fmaxf(hi, x[j]);
                    }
                    for (size_t j = b0; j < b0 + bs; j++) {
                        double err = fabs((double)y[j] - x[j]), tol;
                        switch (wt) {
                        case PT_DTYPE_F32: tol = 0.0; break;
                        case PT_DTYPE_F16: tol = fmax(fabs(x[j]) * 0x1p-11, 0x1p-25); break; /* subnormal halves: absolute 2^-25 */
                        case PT_DTYPE_BF16: tol = fabs(x[j]) * 0x1p-8; break;
                        case PT_DTYPE_Q8_0: tol = amax * (0.5 / 127 + 1e-3); break;
                        case PT_DTYPE_Q4_0: tol = amax * (1.0 / 8 + 1e-2); break;
                        case PT_DTYPE_Q4_1: tol = (hi - lo) * (0.5 / 15 + 2e-3) + amax * 1e-3; break;
                        case PT_DTYPE_Q4_K: tol = amax * 0.1; break;
                        case PT_DTYPE_Q6_K: tol = amax * 0.025; break;
                        default: tol = 0.0; break;
                        }
                        if (amax > 0 && err / amax > worst) worst = err / amax;
                        CHECK_MSG(err <= tol, "%s K=%zu i=%zu x=%g y=%g tol=%g", pt_dtype_name(wt), K,
                                  j, x[j], y[j], tol);
                        if (err > tol) goto next;
                    }
                }
            }
        next:
            if (K == 4096) printf("roundtrip %-5s worst |err|/block amax %.4f\n", pt_dtype_name(wt), worst);
            free(x);
            free(y);
            free(q);
        }
    }
}

/* Activation quantization depends only on its row: same input, same bytes,
 * whatever buffer and whatever neighbours. */
static void test_quantize_act_deterministic(void) {
    for (size_t i = 0; i < N_WTYPES; i++) {
        pt_dtype wt = wtypes[i];
        size_t K = 512, rb = row_bytes(kcpu_act_type(wt), K);
        float *x = malloc(2 * K * sizeof(float));
        uint8_t *a = malloc(rb), *b = malloc(2 * rb + 1);
        rand_row(x, 2 * K);
        kcpu_quantize_act(wt, a, x, K);
        kcpu_quantize_act(wt, b + 1, x, K);
        kcpu_quantize_act(wt, b + 1 + rb, x + K, K);
        CHECK_MSG(memcmp(a, b + 1, rb) == 0, "%s", pt_dtype_name(wt));
        free(x);
        free(a);
        free(b);
    }
}

/* kcpu_quantize_act (whatever fast path it takes) writes exactly the bytes
 * of the reference quantizers (kcpu_quantize_row), including exact rounding
 * ties (a block whose absmax is 127 has d = 1, so x.5 values are ties),
 * all-zero blocks, tiny scales, and non-finite inputs. */
static void test_quantize_act_matches_reference(void) {
    const pt_dtype wts[] = {PT_DTYPE_Q4_0, PT_DTYPE_Q4_1, PT_DTYPE_Q8_0};
    const size_t K = 32 * 40;
    float *x = malloc(K * sizeof(float));
    for (int rep = 0; rep < 50; rep++) {
        rand_row(x, K);
        for (size_t b = 0; b < K / 32; b++) {
            float *v = x + 32 * b;
            switch ((b + (size_t)rep) % 8) {
            case 0: /* ties */
                for (int i = 0; i < 32; i++) v[i] = (float)((int)(frand() * 120.0f)) + 0.5f;
                v[(size_t)rep % 32] = rep & 1 ? -127.0f : 127.0f;
                break;
            case 1: memset(v, 0, 32 * sizeof(float)); break;
            case 2:
                for (int i = 0; i < 32; i++) v[i] *= 1e-40f;
                break;
            case 3:
                for (int i = 0; i < 32; i++) v[i] *= 1e30f;
                break;
            case 4: v[(size_t)rep % 32] = rep & 1 ? -0.0f : 0.0f; v[5] = -v[5]; break;
            default: break;
            }
        }
        if (rep == 7) x[3] = NAN;
        if (rep == 8) x[40] = INFINITY;
        if (rep == 9) x[70] = -INFINITY;
        for (size_t i = 0; i < sizeof wts / sizeof wts[0]; i++) {
            pt_dtype at = kcpu_act_type(wts[i]);
            size_t rb = row_bytes(at, K);
            uint8_t *a = malloc(rb + 1), *r = malloc(rb);
            kcpu_quantize_act(wts[i], a + 1, x, K);
            kcpu_quantize_row(at, r, x, K);
            CHECK_MSG(memcmp(a + 1, r, rb) == 0, "%s rep %d", pt_dtype_name(at), rep);
            free(a);
            free(r);
        }
    }
    free(x);
}

/* The reference matmul against a double dot of the dequantized operands. */
static void test_reference_vs_double(void) {
    const size_t Ns[] = {1, 7, 67}, Ts[] = {1, 3, 17};
    for (size_t i = 0; i < N_WTYPES; i++) {
        for (size_t ki = 0; ki < sizeof(Ks) / sizeof(Ks[0]); ki++) {
            size_t N = Ns[ki % 3], T = Ts[(ki + i) % 3], K = Ks[ki];
            problem p;
            problem_init(&p, wtypes[i], N, T, K);
            float *Y = malloc(T * N * sizeof(float));
            matmul(&p, KCPU_ISA_REF, 0, N, 0, T, Y, N);
            for (size_t t = 0; t < T; t++) {
                for (size_t n = 0; n < N; n++) {
                    double dot = 0.0;
                    for (size_t k = 0; k < K; k++) dot += (double)p.Wd[n * K + k] * p.Xd[t * K + k];
                    double tol = 2e-6 * scale_of(&p, n, t);
                    if (p.wt == PT_DTYPE_Q4_1) {
                        for (size_t b = 0; b < K / PT_QK; b++) {
                            pt_block_q4_1 wb;
                            pt_block_q8_1 xb;
                            memcpy(&wb, p.W + n * p.ws + b * sizeof wb, sizeof wb);
                            memcpy(&xb, p.X + t * p.xs + b * sizeof xb, sizeof xb);
                            tol += 0x1p-11 * fabs(pt_f16_to_f32(wb.m) * pt_f16_to_f32(xb.s));
                        }
                    }
                    CHECK_MSG(fabs(Y[t * N + n] - dot) <= tol, "%s K=%zu n=%zu t=%zu: %.9g vs %.9g (tol %g)",
                              pt_dtype_name(p.wt), K, n, t, Y[t * N + n], dot, tol);
                }
            }
            free(Y);
            problem_free(&p);
        }
    }
}

static void check_isa_case(kcpu_isa isa, pt_dtype wt, size_t N, size_t T, size_t K, bool report) {
    problem p;
    problem_init(&p, wt, N, T, K);
    float *Yr = malloc(T * N * sizeof(float)), *Yf = malloc(T * N * sizeof(float));
    matmul(&p, KCPU_ISA_REF, 0, N, 0, T, Yr, N);
    matmul(&p, isa, 0, N, 0, T, Yf, N);
    double worst = 0.0;
    for (size_t t = 0; t < T; t++)
        for (size_t n = 0; n < N; n++) {
            double s = scale_of(&p, n, t), e = fabs((double)Yf[t * N + n] - Yr[t * N + n]);
            if (s > 0 && e / s > worst) worst = e / s;
            CHECK_MSG(e <= 1e-6 * s, "%s %s K=%zu N=%zu T=%zu n=%zu t=%zu: %.9g vs ref %.9g", kcpu_isa_name(isa),
                      pt_dtype_name(p.wt), K, N, T, n, t, Yf[t * N + n], Yr[t * N + n]);
        }
    if (report)
        printf("%-6s %-5s worst |y - ref| / scale %.2e\n", kcpu_isa_name(isa), pt_dtype_name(p.wt), worst);
    free(Yr);
    free(Yf);
    problem_free(&p);
}

/* Each fast ISA this CPU has against the reference. */
static void test_isa_vs_reference(void) {
    const size_t Ns[] = {1, 5, 67}, Ts[] = {1, 3, 17};
    for (int isa = KCPU_ISA_AVX2; isa <= KCPU_ISA_AVX512; isa++) {
        if (!isa_present((kcpu_isa)isa)) {
            printf("isa %s not present: skipped\n", kcpu_isa_name((kcpu_isa)isa));
            continue;
        }
        for (size_t i = 0; i < N_WTYPES; i++) {
            for (size_t ki = 0; ki < sizeof(Ks) / sizeof(Ks[0]); ki++)
                for (size_t ti = 0; ti < 3; ti++)
                    check_isa_case((kcpu_isa)isa, wtypes[i], Ns[(ki + ti) % 3], Ts[ti], Ks[ki],
                                   Ks[ki] == 4096 && ti == 2);
            if (pt_dtype_block_size(wtypes[i]) > PT_QK) continue;
            for (size_t ki = 0; ki < sizeof(Ks_b32) / sizeof(Ks_b32[0]); ki++)
                for (size_t ti = 0; ti < 3; ti++)
                    check_isa_case((kcpu_isa)isa, wtypes[i], Ns[(ki + ti) % 3], Ts[ti], Ks_b32[ki], false);
        }
    }
}

/* Each ISA agrees bitwise with itself whatever the batch size, the row range
 * and the token chunking; float types also with K not a multiple of 8. */
static void test_bitwise_invariance(void) {
    for (int isa = KCPU_ISA_REF; isa <= KCPU_ISA_AVX512; isa++) {
        if (!isa_present((kcpu_isa)isa)) continue;
        for (size_t i = 0; i < 3 * N_WTYPES; i++) {
            pt_dtype wt = wtypes[i % N_WTYPES];
            /* 32-element block types also at widths with a short last group
             * of 8 blocks (576: 2 blocks, 192: 6 blocks). */
            size_t bs = pt_dtype_block_size(wt), K = bs == 1 ? 301 : 512, N = 67, T = 13, ldy = N + 3;
            if (i >= N_WTYPES) {
                if (bs != 32) continue;
                K = i < 2 * N_WTYPES ? 576 : 192;
            }
            problem p;
            problem_init(&p, wt, N, T, K);
            float *Yfull = malloc(T * ldy * sizeof(float)), *Yone = malloc(T * ldy * sizeof(float));
            float *Ysplit = malloc(T * ldy * sizeof(float));
            memset(Yfull, 0, T * ldy * sizeof(float));
            memset(Yone, 0, T * ldy * sizeof(float));
            memset(Ysplit, 0, T * ldy * sizeof(float));
            matmul(&p, (kcpu_isa)isa, 0, N, 0, T, Yfull, ldy);
            /* One token at a time, one row at a time for the first few. */
            for (size_t t = 0; t < T; t++) {
                for (size_t n = 0; n < 5; n++) matmul(&p, (kcpu_isa)isa, n, n + 1, t, 1, Yone, ldy);
                matmul(&p, (kcpu_isa)isa, 5, N, t, 1, Yone, ldy);
            }
            /* Odd row splits crossed with odd token chunks. */
            const size_t cuts[] = {0, 3, 10, 11, 38, 67}, tcuts[] = {0, 2, 7, 8, 13};
            for (size_t a = 0; a + 1 < sizeof(cuts) / sizeof(cuts[0]); a++)
                for (size_t b = 0; b + 1 < sizeof(tcuts) / sizeof(tcuts[0]); b++)
                    matmul(&p, (kcpu_isa)isa, cuts[a], cuts[a + 1], tcuts[b], tcuts[b + 1] - tcuts[b],
                           Ysplit, ldy);
            bool same1 = true, same2 = true;
            for (size_t t = 0; t < T; t++)
                for (size_t n = 0; n < N; n++) {
                    if (memcmp(&Yfull[t * ldy + n], &Yone[t * ldy + n], 4)) same1 = false;
                    if (memcmp(&Yfull[t * ldy + n], &Ysplit[t * ldy + n], 4)) same2 = false;
                }
            CHECK_MSG(same1, "%s %s: T=13 differs from T=1", kcpu_isa_name((kcpu_isa)isa), pt_dtype_name(wt));
            CHECK_MSG(same2, "%s %s: split ranges differ", kcpu_isa_name((kcpu_isa)isa), pt_dtype_name(wt));
            /* Columns outside [n0, n1) are never written. */
            CHECK(Yfull[N] == 0.0f && Yfull[N + 2] == 0.0f);
            free(Yfull);
            free(Yone);
            free(Ysplit);
            problem_free(&p);
        }
    }
}

/* Float weights with K not a multiple of the vector width, against the reference. */
static void test_float_odd_k(void) {
    const size_t oddK[] = {1, 7, 37, 301};
    for (int isa = KCPU_ISA_AVX2; isa <= KCPU_ISA_AVX512; isa++) {
        if (!isa_present((kcpu_isa)isa)) continue;
        for (size_t i = 0; i < 3; i++)
            for (size_t ki = 0; ki < 4; ki++) {
                problem p;
                problem_init(&p, wtypes[i], 9, 3, oddK[ki]);
                float Yr[27], Yf[27];
                matmul(&p, KCPU_ISA_REF, 0, 9, 0, 3, Yr, 9);
                matmul(&p, (kcpu_isa)isa, 0, 9, 0, 3, Yf, 9);
                for (size_t j = 0; j < 27; j++)
                    CHECK_MSG(fabs((double)Yf[j] - Yr[j]) <= 1e-6 * scale_of(&p, j % 9, j / 9) + 1e-30,
                              "%s K=%zu", pt_dtype_name(p.wt), oddK[ki]);
                problem_free(&p);
            }
    }
}

static void test_isa_names(void) {
    printf("active isa: %s\n", kcpu_isa_name(kcpu_isa_active()));
    CHECK(strcmp(kcpu_isa_name(KCPU_ISA_AVX512), "avx512") == 0);
    CHECK(kcpu_act_type(PT_DTYPE_Q4_1) == PT_DTYPE_Q8_1);
    CHECK(kcpu_act_type(PT_DTYPE_Q6_K) == PT_DTYPE_Q8_K);
    CHECK(kcpu_act_type(PT_DTYPE_BF16) == PT_DTYPE_F32);
    CHECK(kcpu_weight_type_supported(PT_DTYPE_Q4_K));
    CHECK(!kcpu_weight_type_supported(PT_DTYPE_Q8_1));
}

TEST_MAIN(TEST(test_isa_names), TEST(test_quantize_roundtrip), TEST(test_quantize_act_deterministic),
          TEST(test_quantize_act_matches_reference),
          TEST(test_reference_vs_double), TEST(test_isa_vs_reference), TEST(test_bitwise_invariance),
          TEST(test_float_odd_k))
