/* Single-thread micro-benchmark of kcpu_matmul (not a test).
 *
 * Build against a configured build dir, e.g.
 *   gcc -O2 -I include -I kernels -I src bench/bench_matmul.c \
 *       /tmp/build-kern/libproteus_core.a -lm -o /tmp/bench_matmul
 *   /tmp/bench_matmul [isa]        (isa: ref, avx2, avx512; default: active)
 * Reports, per weight type and shape: T=1 as GB/s of weight bytes streamed,
 * T=512 as GFLOP/s (2*N*K*T flops); times are the best of repeated calls. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cpu/kcpu_matmul.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void run(kcpu_isa isa, pt_dtype wt, size_t K, size_t N, size_t T, double min_s) {
    uint64_t wrow, xrow;
    if (!pt_dtype_row_bytes(wt, K, &wrow) || !pt_dtype_row_bytes(kcpu_act_type(wt), K, &xrow)) {
        printf("%-6s %-5s K=%5zu: not a whole number of blocks, skipped\n", kcpu_isa_name(isa),
               pt_dtype_name(wt), K);
        return;
    }
    uint8_t *W = aligned_alloc(64, (N * wrow + 63) / 64 * 64);
    uint8_t *X = aligned_alloc(64, (T * xrow + 63) / 64 * 64);
    float *Y = malloc(T * N * sizeof(float)), *row = malloc(K * sizeof(float));
    srand(1);
    for (size_t n = 0; n < N; n++) {
        for (size_t k = 0; k < K; k++) row[k] = (float)rand() / RAND_MAX - 0.5f;
        kcpu_quantize_row(wt, W + n * wrow, row, K);
    }
    for (size_t t = 0; t < T; t++) {
        for (size_t k = 0; k < K; k++) row[k] = (float)rand() / RAND_MAX - 0.5f;
        kcpu_quantize_act(wt, X + t * xrow, row, K);
    }
    kcpu_matmul_isa(isa, wt, W, wrow, 0, N, X, xrow, T, K, Y, N); /* warm up */
    /* Best of many calls: the build machine is shared, and the minimum is the
     * closest to an unloaded core. */
    double t0 = now(), per = 1e30;
    do {
        double a = now();
        kcpu_matmul_isa(isa, wt, W, wrow, 0, N, X, xrow, T, K, Y, N);
        double e = now() - a;
        if (e < per) per = e;
    } while (now() - t0 < min_s);
    if (T == 1)
        printf("%-6s %-5s K=%5zu N=%6zu T=%3zu  %8.1f us  %7.2f GB/s weights\n", kcpu_isa_name(isa),
               pt_dtype_name(wt), K, N, T, per * 1e6, N * wrow / per * 1e-9);
    else
        printf("%-6s %-5s K=%5zu N=%6zu T=%3zu  %8.1f us  %7.2f GFLOP/s\n", kcpu_isa_name(isa),
               pt_dtype_name(wt), K, N, T, per * 1e6, 2.0 * N * K * T / per * 1e-9);
    free(W);
    free(X);
    free(Y);
    free(row);
}

int main(int argc, char **argv) {
    kcpu_isa isa = kcpu_isa_active();
    if (argc > 1) isa = !strcmp(argv[1], "ref") ? KCPU_ISA_REF : !strcmp(argv[1], "avx2") ? KCPU_ISA_AVX2 : KCPU_ISA_AVX512;
    const pt_dtype types[] = {PT_DTYPE_Q4_1, PT_DTYPE_Q8_0, PT_DTYPE_Q4_0, PT_DTYPE_Q4_K, PT_DTYPE_Q6_K,
                              PT_DTYPE_F16, PT_DTYPE_BF16, PT_DTYPE_F32};
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
        if (i >= 2 && argc > 2) break; /* "quick": only the hot types */
        run(isa, types[i], 576, 1536, 1, 0.3);
        run(isa, types[i], 1536, 576, 1, 0.3);
        run(isa, types[i], 576, 1536, 512, 0.5);
        run(isa, types[i], 1536, 576, 512, 0.5);
        if (pt_dtype_block_size(types[i]) == PT_QK_K) { /* 576 is not a multiple of 256 */
            run(isa, types[i], 512, 1536, 1, 0.3);
            run(isa, types[i], 512, 1536, 512, 0.5);
        }
    }
    run(isa, PT_DTYPE_Q8_0, 576, 49152, 1, 0.5); /* SmolLM2 LM head: from DRAM */
    run(isa, PT_DTYPE_Q4_1, 576, 2 * 49152, 1, 0.5); /* Q4_1 streamed from DRAM (35 MB) */
    run(isa, PT_DTYPE_Q4_1, 576, 49152, 16, 0.5);   /* small-T decode batch from DRAM */
    return 0;
}
