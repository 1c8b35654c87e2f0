/* Helpers shared by the CUDA kernel tests: pass/fail counting, a portable
 * random generator, tolerance and bit comparisons, device buffers. Each test
 * program includes this once (the definitions are static). */
#ifndef PROTEUS_KCUDA_TEST_H
#define PROTEUS_KCUDA_TEST_H

#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

static int n_pass __attribute__((unused)), n_fail __attribute__((unused));

static inline void report(bool ok, const char *what)
{
    if (ok)
        n_pass++;
    else
        n_fail++;
    printf("%s %s\n", ok ? "ok  " : "FAIL", what);
}

/* splitmix64: small, and the same sequence on every platform. */
static uint64_t rng_state __attribute__((unused));
static inline uint64_t rng_next(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static inline float rng_uniform(float lo, float hi)
{
    return lo + (hi - lo) * (float)((rng_next() >> 40) * (1.0 / 16777216.0));
}
static inline float *rand_floats(size_t n, float lo, float hi)
{
    float *p = malloc(n * sizeof *p);
    for (size_t i = 0; i < n; i++)
        p[i] = rng_uniform(lo, hi);
    return p;
}

/* True when every element is within tolerance; on failure prints the worst one. */
static inline bool close_enough(const float *got, const float *want, size_t n, float rtol, float atol)
{
    size_t bad = 0, worst = 0;
    double worst_excess = -1.0;
    for (size_t i = 0; i < n; i++) {
        double err = fabs((double)got[i] - want[i]), bound = atol + rtol * fabs((double)want[i]);
        if (!(err <= bound)) { /* also catches NaN */
            bad++;
            if (isnan(err) || err - bound > worst_excess) {
                worst_excess = isnan(err) ? INFINITY : err - bound;
                worst = i;
            }
        }
    }
    if (bad)
        printf("     %zu of %zu out of tolerance; worst at %zu: got %.9g want %.9g\n", bad, n,
               worst, got[worst], want[worst]);
    return bad == 0;
}

static inline bool bit_equal(const float *got, const float *want, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (memcmp(&got[i], &want[i], sizeof(float)) != 0) {
            printf("     first difference at %zu: got %.9g want %.9g\n", i, got[i], want[i]);
            return false;
        }
    }
    return true;
}

static cudaStream_t stream __attribute__((unused));

static inline void *dev_upload(const void *host, size_t bytes)
{
    void *d = NULL;
    CUDA_CHECK_FATAL(cudaMalloc(&d, bytes ? bytes : 1));
    if (host && bytes)
        CUDA_CHECK_FATAL(cudaMemcpy(d, host, bytes, cudaMemcpyHostToDevice));
    /* A copy from pageable memory may still be in flight when cudaMemcpy
     * returns, and the tests' stream does not wait for the legacy stream. */
    CUDA_CHECK_FATAL(cudaDeviceSynchronize());
    return d;
}
static inline void dev_download(void *host, const void *d, size_t bytes)
{
    CUDA_CHECK_FATAL(cudaStreamSynchronize(stream));
    CUDA_CHECK_FATAL(cudaMemcpy(host, d, bytes, cudaMemcpyDeviceToHost));
}


/* After the host-only checks: without a device, reports them and exits 77
 * (skipped) or 1 (a host-only check failed); with one, prints it and creates
 * the tests' stream. */
static inline void test_require_device(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
        (void)cudaGetLastError();
        printf("%d passed, %d failed (host-only checks)\n", n_pass, n_fail);
        if (n_fail)
            exit(1);
        printf("SKIP: no CUDA device\n");
        exit(77);
    }
    struct cudaDeviceProp prop;
    CUDA_CHECK_FATAL(cudaGetDeviceProperties(&prop, 0));
    printf("device 0: %s (sm_%d%d, %d SMs)\n", prop.name, prop.major, prop.minor, prop.multiProcessorCount);
    CUDA_CHECK_FATAL(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
}

/* Destroys the stream, prints the totals; the exit status of main. */
static inline int test_finish(void)
{
    CUDA_CHECK_FATAL(cudaStreamDestroy(stream));
    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}

/* Seeds the generator from PROTEUS_TEST_SEED (or `dflt`) and prints it. */
static inline void test_seed(uint64_t dflt)
{
    const char *s = getenv("PROTEUS_TEST_SEED");
    rng_state = s ? strtoull(s, NULL, 0) : dflt;
    printf("seed 0x%" PRIx64 "\n", rng_state);
}

#endif
