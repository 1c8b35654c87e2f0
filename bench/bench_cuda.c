/* GPU benchmarks of the CUDA path, in one run: what fraction of the memory
 * bandwidth the decode-time kernels and the whole engine reach. Not a test:
 * it prints measurements (and checks the kernels' results against the CPU
 * references before it times them, so that a fast wrong kernel shows).
 *
 *   build/bench_cuda [--quick] [--skip-model] [--json FILE] [--device N]
 *
 * Sections (bench/README.md, "GPU benchmarks (bench_cuda)", says more):
 *   [1] device-to-device copy bandwidth: the roofline every other number is a
 *       fraction of;
 *   [2] dense decode attention over the paged f16 KV cache at 4K, 32K and
 *       128K contexts (Llama-3-8B attention shape), as GB/s of KV read;
 *   [3] query-aware attention at 32K with a 2048-token budget: time of page
 *       score + top-k + sparse decode against dense decode, and the accuracy
 *       cost on i.i.d. random and on structured (planted) inputs;
 *   [4] the whole engine on synthetic:llama3-8b:bf16: batch-1 decode step
 *       time against the time to read every weight once, graphs on and off,
 *       and batch-64 decode throughput.
 *
 * Conventions: B = sequences (one decode run each), G = KV heads, QPK = query
 * heads per KV head, H = G * QPK query heads, HD = head dim, P = page size,
 * S = KV slots (head pages). Times are medians of repetitions after warm-up:
 * GPU work between two cudaEvents on one stream, engine steps with
 * CLOCK_MONOTONIC around pt_engine_step (which synchronizes). GB = 1e9 bytes.
 * Clocks are not controlled (no locking): the GPU runs at whatever the driver
 * boosts it to.
 *
 * Exit status: 0 everything ran and every check passed, 1 a section failed
 * or a check did not pass, 2 the watchdog stopped a hung run, 77 no CUDA
 * device (skipped). */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <cuda_runtime_api.h>

#include "check.h"
#include "cpu/kcpu_ops.h"
#include "kcuda.h"
#include "kcuda_attn.h"
#include "proteus/dtype.h"
#include "proteus/engine.h"
#include "proteus/model_file.h"
#include "proteus/threadpool.h"
#include "proteus/util.h"

/* ---- Llama-3-8B attention shape (sections 2 and 3) ---- */

#define G 8                       /* KV heads */
#define QPK 4                     /* query heads per KV head */
#define H (G * QPK)               /* query heads */
#define HD 128                    /* head dim */
#define P 16                      /* tokens per page */
#define GS ((QPK + 2) * HD)       /* floats per KV group of a fused QKV row */
#define QKV_W (G * GS)            /* floats per fused QKV row */
#define SLOT_ELEMS (2 * P * HD)   /* f16 elements per head page: K rows then V rows */
#define KV_TOKENS_TOTAL (1u << 18) /* B * ctx: tokens per KV head over the batch; 1 GiB of K+V */

/* Every context runs with the batch that makes B * ctx = KV_TOKENS_TOTAL, so
 * each reads the same 1 GiB of K and V (20x the H100's 50 MB L2) and uses
 * the same S = 131072 head pages. */
typedef struct {
    uint32_t ctx, batch;
} attn_cfg;
static const attn_cfg ATTN_CFGS[] = {{4096, 64}, {32768, 8}, {131072, 2}};
#define N_ATTN_CFGS (sizeof(ATTN_CFGS) / sizeof(ATTN_CFGS[0]))

#define SEL_CTX 32768
#define SEL_BATCH 8
#define SEL_BUDGET 2048
#define N_PLANT 8          /* planted pages per (sequence, KV head), structured inputs */
#define PLANT_GAIN 16.0f   /* planted key = random key + PLANT_GAIN * unit(mean query of the group) */

/* ---- Whole model (section 4) ---- */

#define MODEL_SPEC "synthetic:llama3-8b:bf16"
#define MODEL_MAX_SEQS 64
#define MODEL_MAX_CTX 2048
#define MODEL_BATCH_TOKENS 512
#define MODEL_PROMPT 512
#define MODEL_BATCH 64

/* The whole run stops itself after this long (the runner allows 10 minutes). */
#define GLOBAL_LIMIT_S 560
/* Graphs-off engine (a second weight upload) only when this much time is left. */
#define GRAPHS_OFF_MIN_LEFT_S 150

/* Relative L2 error per head above which a GPU attention output is called
 * wrong against the CPU reference on the same f16 KV: both compute in f32
 * and differ only in summation order and exp (~1e-6). */
#define CHECK_TOL 1e-3

typedef struct {
    bool quick, skip_model;
    const char *json_path;
    int device;
} bench_opts;

typedef struct {
    bench_opts o;
    cudaStream_t st;
    cudaEvent_t ev[4];     /* start, end, two marks inside a timed region */
    uint8_t *flush;        /* written before each timed attention rep: evicts L2 */
    size_t flush_bytes;
    double copy_gbs;       /* section 1's result; 0 when unknown */
    pt_pool *pool;         /* host threads for the CPU references */
    int n_cpu;
    cJSON *json;
    int n_failed;          /* sections that failed or checks that did not pass */
    bool context_broken;   /* a sticky CUDA error: no more GPU work */
} bench;

static double g_t0;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double elapsed_s(void) { return now_s() - g_t0; }

/* ---- watchdog: a kernel that never finishes must not hang the run ---- */

static const char *volatile g_stage = "start";

static void on_alarm(int sig) {
    (void)sig;
    static const char a[] = "\nbench_cuda: TIMEOUT: the watchdog stopped the run during \"";
    static const char b[] = "\" (it did not finish within its time budget: a hung kernel or copy, or a very slow "
                            "machine). Sections printed above are complete; the JSON file holds them.\n";
    const char *s = g_stage;
    ssize_t rc = write(2, a, sizeof a - 1);
    rc = write(2, s, strlen(s));
    rc = write(2, b, sizeof b - 1);
    (void)rc;
    _exit(2);
}

/* Names what runs now and gives it budget_s seconds (less if the global
 * limit comes first). */
static void stage(const char *name, unsigned budget_s) {
    g_stage = name;
    double left = GLOBAL_LIMIT_S - elapsed_s();
    unsigned s = left < 1 ? 1 : (unsigned)left;
    alarm(budget_s < s ? budget_s : s);
}

/* ---- small helpers ---- */

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Median of v[0..n) (v is sorted in place). */
static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof(double), cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "bench_cuda: out of host memory (%zu bytes)\n", n);
        exit(1);
    }
    return p;
}

/* splitmix64: fast, seedable per item, so host fills can run in parallel and
 * still give the same numbers on every machine. */
static inline uint64_t mix64(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double unit_double(uint64_t *s) { return ((double)(mix64(s) >> 11) + 0.5) * (1.0 / 9007199254740992.0); }

static float gauss(uint64_t *s) {
    double u1 = unit_double(s), u2 = unit_double(s);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

/* 65536 N(0, 1) samples as f16 bits, indexed by 16 random bits: one table
 * lookup per generated KV element. */
static uint16_t g_gauss_f16[65536];
/* f16 bits -> f32, exact. */
static float g_f16_f32[65536];

static void tables_init(void) {
    uint64_t s = 0x5eed0f16ull;
    for (uint32_t i = 0; i < 65536; i++) {
        g_f16_f32[i] = pt_f16_to_f32((pt_f16)i);
        g_gauss_f16[i] = pt_f32_to_f16(gauss(&s));
    }
}

/* ---- JSON: rewritten after every section, so a later failure keeps the earlier results ---- */

static void json_write(bench *b) {
    if (!b->o.json_path) return;
    cJSON_ReplaceItemInObject(b->json, "elapsed_s", cJSON_CreateNumber(elapsed_s()));
    char *text = cJSON_Print(b->json);
    FILE *f = text ? fopen(b->o.json_path, "w") : NULL;
    if (!f || fputs(text, f) < 0 || fputc('\n', f) < 0) fprintf(stderr, "bench_cuda: cannot write %s\n", b->o.json_path);
    if (f) fclose(f);
    free(text);
}

static void json_error(bench *b, const char *section, const char *what) {
    cJSON *errs = cJSON_GetObjectItem(b->json, "errors");
    cJSON *e = cJSON_CreateObject();
    cJSON_AddStringToObject(e, "section", section);
    cJSON_AddStringToObject(e, "error", what);
    cJSON_AddItemToArray(errs, e);
}

/* ---- device memory owned by a section, freed together ---- */

typedef struct {
    void *p[32];
    int n;
} dev_list;

static cudaError_t dev_alloc(dev_list *l, void *pp, size_t bytes) {
    void **out = pp;
    *out = NULL;
    if (l->n == (int)(sizeof l->p / sizeof l->p[0])) return cudaErrorMemoryAllocation;
    CUDA_CHECK(cudaMalloc(out, bytes ? bytes : 1));
    l->p[l->n++] = *out;
    return cudaSuccess;
}

static void dev_free_all(dev_list *l) {
    for (int i = 0; i < l->n; i++) cudaFree(l->p[i]);
    l->n = 0;
}

static cudaError_t h2d(bench *b, void *dst, const void *src, size_t bytes) {
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, b->st));
    CUDA_CHECK(cudaStreamSynchronize(b->st));
    return cudaSuccess;
}

static cudaError_t d2h(bench *b, void *dst, const void *src, size_t bytes) {
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, b->st));
    CUDA_CHECK(cudaStreamSynchronize(b->st));
    return cudaSuccess;
}

/* ---- timing of GPU work ---- */

typedef cudaError_t (*gpu_op)(const void *ctx, cudaStream_t st);

typedef struct {
    double med_ms, min_ms, max_ms;
    double seg_ms[3]; /* medians of start..mark0, mark0..mark1, mark1..end when the op records two marks */
    int reps;
} timing;

/* Runs op `warm` times, then `reps` times between two events, each after an
 * L2 flush when flush is set (the flush is outside the timed region: a real
 * decode step finds the KV cache cold, the layer's GEMMs having just passed
 * through L2). An op that records b->ev[2] and b->ev[3] gets its three
 * segments timed too. */
static cudaError_t time_gpu(bench *b, gpu_op op, const void *ctx, bool flush, bool marks, int warm, int reps,
                            timing *t) {
    double *v = xmalloc((size_t)reps * sizeof(double)), *seg[3];
    for (int k = 0; k < 3; k++) seg[k] = xmalloc((size_t)reps * sizeof(double));
    cudaError_t rc = cudaSuccess;
    for (int i = 0; i < warm && rc == cudaSuccess; i++) rc = op(ctx, b->st);
    if (rc == cudaSuccess) rc = cudaStreamSynchronize(b->st);
    for (int i = 0; i < reps && rc == cudaSuccess; i++) {
        if (flush) rc = cudaMemsetAsync(b->flush, i & 0xff, b->flush_bytes, b->st);
        if (rc == cudaSuccess) rc = cudaEventRecord(b->ev[0], b->st);
        if (rc == cudaSuccess) rc = op(ctx, b->st);
        if (rc == cudaSuccess) rc = cudaEventRecord(b->ev[1], b->st);
        if (rc == cudaSuccess) rc = cudaEventSynchronize(b->ev[1]);
        float ms = 0, m0 = 0, m1 = 0, m2 = 0;
        if (rc == cudaSuccess) rc = cudaEventElapsedTime(&ms, b->ev[0], b->ev[1]);
        if (rc == cudaSuccess && marks) {
            rc = cudaEventElapsedTime(&m0, b->ev[0], b->ev[2]);
            if (rc == cudaSuccess) rc = cudaEventElapsedTime(&m1, b->ev[2], b->ev[3]);
            if (rc == cudaSuccess) rc = cudaEventElapsedTime(&m2, b->ev[3], b->ev[1]);
        }
        v[i] = ms;
        seg[0][i] = m0;
        seg[1][i] = m1;
        seg[2][i] = m2;
    }
    if (rc != cudaSuccess) {
        KCUDA_REPORT(rc, "timed GPU work");
    } else {
        memset(t, 0, sizeof *t);
        t->reps = reps;
        t->med_ms = median(v, reps);
        t->min_ms = v[0];
        t->max_ms = v[reps - 1];
        for (int k = 0; k < 3; k++) t->seg_ms[k] = marks ? median(seg[k], reps) : 0;
    }
    free(v);
    for (int k = 0; k < 3; k++) free(seg[k]);
    return rc;
}

/* ---- [0] the device ---- */

static cudaError_t describe_device(bench *b) {
    struct cudaDeviceProp p;
    CUDA_CHECK(cudaGetDeviceProperties(&p, b->o.device));
    int mem_khz = 0, sm_khz = 0, drv = 0, rt = 0;
    CUDA_CHECK(cudaDeviceGetAttribute(&mem_khz, cudaDevAttrMemoryClockRate, b->o.device));
    CUDA_CHECK(cudaDeviceGetAttribute(&sm_khz, cudaDevAttrClockRate, b->o.device));
    CUDA_CHECK(cudaDriverGetVersion(&drv));
    CUDA_CHECK(cudaRuntimeGetVersion(&rt));
    /* DDR: two transfers per memory clock. */
    double peak_gbs = 2.0 * mem_khz * 1e3 * (p.memoryBusWidth / 8.0) / 1e9;
    printf("GPU %d: %s, sm_%d%d, %d SMs, %.1f GiB, L2 %.0f MiB, ECC %s, PCI %04x:%02x:%02x\n", b->o.device, p.name,
           p.major, p.minor, p.multiProcessorCount, p.totalGlobalMem / 1073741824.0, p.l2CacheSize / 1048576.0,
           p.ECCEnabled ? "on" : "off", p.pciDomainID, p.pciBusID, p.pciDeviceID);
    printf("  memory %d MHz x %d-bit: %.0f GB/s theoretical peak; SM clock up to %d MHz\n", mem_khz / 1000,
           p.memoryBusWidth, peak_gbs, sm_khz / 1000);
    printf("  driver %d.%d, runtime %d.%d; clocks not controlled (no locking: whatever the driver boosts to)\n",
           drv / 1000, drv % 1000 / 10, rt / 1000, rt % 1000 / 10);
    cJSON *d = cJSON_AddObjectToObject(b->json, "device");
    cJSON_AddNumberToObject(d, "index", b->o.device);
    cJSON_AddStringToObject(d, "name", p.name);
    cJSON_AddNumberToObject(d, "sm", p.major * 10 + p.minor);
    cJSON_AddNumberToObject(d, "sm_count", p.multiProcessorCount);
    cJSON_AddNumberToObject(d, "memory_bytes", (double)p.totalGlobalMem);
    cJSON_AddNumberToObject(d, "l2_bytes", p.l2CacheSize);
    cJSON_AddNumberToObject(d, "memory_clock_mhz", mem_khz / 1000);
    cJSON_AddNumberToObject(d, "memory_bus_bits", p.memoryBusWidth);
    cJSON_AddNumberToObject(d, "theoretical_gbs", peak_gbs);
    cJSON_AddNumberToObject(d, "sm_clock_max_mhz", sm_khz / 1000);
    cJSON_AddBoolToObject(d, "ecc", p.ECCEnabled);
    cJSON_AddNumberToObject(d, "driver_version", drv);
    cJSON_AddNumberToObject(d, "runtime_version", rt);
    cJSON_AddStringToObject(d, "clocks", "not controlled");
    /* Four times the L2 is written before each timed attention rep. */
    b->flush_bytes = (size_t)(p.l2CacheSize > 0 ? p.l2CacheSize : 64 << 20) * 4;
    return cudaSuccess;
}

/* ---- [1] device-to-device copy ---- */

typedef struct {
    void *dst;
    const void *src;
    size_t bytes;
} copy_op;

static cudaError_t op_copy(const void *c, cudaStream_t st) {
    const copy_op *o = c;
    return cudaMemcpyAsync(o->dst, o->src, o->bytes, cudaMemcpyDeviceToDevice, st);
}

static cudaError_t bench_copy(bench *b) {
    dev_list mem = {0};
    size_t bytes = 2ull << 30, free_b = 0, total_b = 0;
    cudaError_t rc = cudaMemGetInfo(&free_b, &total_b);
    if (rc != cudaSuccess) return rc;
    while (2 * bytes + (512ull << 20) > free_b && bytes > (256ull << 20)) bytes /= 2;
    copy_op op = {NULL, NULL, bytes};
    void *src = NULL;
    timing t;
    if ((rc = dev_alloc(&mem, &src, bytes)) || (rc = dev_alloc(&mem, &op.dst, bytes))) goto out;
    op.src = src;
    if ((rc = cudaMemsetAsync(src, 0x3c, bytes, b->st))) goto out;
    int reps = b->o.quick ? 5 : 10;
    if ((rc = time_gpu(b, op_copy, &op, false, false, 3, reps, &t))) goto out;
    b->copy_gbs = 2.0 * bytes / (t.med_ms * 1e-3) / 1e9;
    printf("  cudaMemcpyAsync device to device, %.2f GiB; bytes = read + write = %.2f GB; median of %d after 3 "
           "warm-up\n",
           bytes / 1073741824.0, 2.0 * bytes / 1e9, reps);
    printf("  copy bandwidth %8.1f GB/s   (%.3f ms; min %.3f, max %.3f)\n", b->copy_gbs, t.med_ms, t.min_ms,
           t.max_ms);
    cJSON *j = cJSON_AddObjectToObject(b->json, "copy");
    cJSON_AddNumberToObject(j, "buffer_bytes", (double)bytes);
    cJSON_AddNumberToObject(j, "bytes_counted", 2.0 * bytes);
    cJSON_AddNumberToObject(j, "reps", reps);
    cJSON_AddNumberToObject(j, "median_ms", t.med_ms);
    cJSON_AddNumberToObject(j, "min_ms", t.min_ms);
    cJSON_AddNumberToObject(j, "max_ms", t.max_ms);
    cJSON_AddNumberToObject(j, "gbs", b->copy_gbs);
out:
    dev_free_all(&mem);
    return rc;
}

/* ---- [2], [3] the paged KV cache ---- */

/* One layer of the KV pool (kcuda_attn.h layout) on the host and the device,
 * and the per-context-configuration inputs. */
typedef struct {
    size_t n_slots;        /* S */
    uint16_t *h_data;      /* (S, {K, V}, P, HD) f16 */
    float *h_minmax;       /* (S, {min, max}, HD) of the keys as stored */
    uint16_t *d_data;
    float *d_minmax;
    /* The configuration in force (cfg_setup). */
    uint32_t ctx, batch, n_pages;
    int32_t *h_bt;         /* (B, G, n_pages) slot ids: a shuffled permutation of [0, S) */
    float *h_q;            /* (B, QKV_W) fused-QKV rows, query heads random, K/V parts zero */
    int32_t *d_bt;
    float *d_q;
    kcuda_run *d_runs;     /* (B) */
    float *d_out, *d_out2; /* (B, H * HD): dense, sparse */
    void *d_ws;            /* split-KV workspace */
    size_t ws_bytes;
    float *d_scores;       /* (B, G, n_pages) */
    int32_t *d_sel;        /* (B, G, n_pages) */
    int32_t *d_nsel;       /* (B, G) */
    dev_list mem;
} kv_bench;

typedef struct {
    kv_bench *kv;
    size_t s0, s1; /* slots to fill */
} fill_job;

/* Keys of one slot -> its min/max box (as kcuda_kv_append keeps it). */
static void slot_minmax(kv_bench *kv, size_t s) {
    const uint16_t *k = kv->h_data + s * SLOT_ELEMS;
    float *mn = kv->h_minmax + s * 2 * HD, *mx = mn + HD;
    for (int i = 0; i < HD; i++) mn[i] = mx[i] = g_f16_f32[k[i]];
    for (int t = 1; t < P; t++)
        for (int i = 0; i < HD; i++) {
            float x = g_f16_f32[k[t * HD + i]];
            mn[i] = x < mn[i] ? x : mn[i];
            mx[i] = x > mx[i] ? x : mx[i];
        }
}

static void fill_slots(void *ctx, int tid, int nth) {
    fill_job *j = ctx;
    long lo, hi;
    pt_pool_split((long)(j->s1 - j->s0), tid, nth, &lo, &hi);
    for (size_t s = j->s0 + (size_t)lo; s < j->s0 + (size_t)hi; s++) {
        uint64_t st = 0xc0ffee00ull ^ (s * 0x2545F4914F6CDD1Dull);
        uint16_t *d = j->kv->h_data + s * SLOT_ELEMS;
        for (size_t e = 0; e < SLOT_ELEMS; e += 4) {
            uint64_t r = mix64(&st);
            d[e] = g_gauss_f16[r & 0xffff];
            d[e + 1] = g_gauss_f16[(r >> 16) & 0xffff];
            d[e + 2] = g_gauss_f16[(r >> 32) & 0xffff];
            d[e + 3] = g_gauss_f16[r >> 48];
        }
        slot_minmax(j->kv, s);
    }
}

/* K and V: i.i.d. N(0, 1) rounded to f16, written straight into the pool
 * (host-generated, one upload) with the min/max boxes computed on the host
 * from the stored f16 values, the same boxes kcuda_kv_append would keep. */
static cudaError_t kv_init(bench *b, kv_bench *kv) {
    size_t S = (size_t)KV_TOKENS_TOTAL * G / P;
    kv->n_slots = S;
    kv->h_data = xmalloc(S * SLOT_ELEMS * sizeof(uint16_t));
    kv->h_minmax = xmalloc(S * 2 * HD * sizeof(float));
    double t = now_s();
    fill_job j = {kv, 0, S};
    pt_pool_run(b->pool, fill_slots, &j);
    size_t bt_n = S, q_n = (size_t)ATTN_CFGS[0].batch * QKV_W, out_n = (size_t)ATTN_CFGS[0].batch * H * HD;
    for (size_t i = 1; i < N_ATTN_CFGS; i++) {
        if ((size_t)ATTN_CFGS[i].batch * QKV_W > q_n) q_n = (size_t)ATTN_CFGS[i].batch * QKV_W;
        if ((size_t)ATTN_CFGS[i].batch * H * HD > out_n) out_n = (size_t)ATTN_CFGS[i].batch * H * HD;
    }
    kv->h_bt = xmalloc(bt_n * sizeof(int32_t));
    kv->h_q = xmalloc(q_n * sizeof(float));
    CUDA_CHECK(dev_alloc(&kv->mem, &kv->d_data, S * SLOT_ELEMS * sizeof(uint16_t)));
    CUDA_CHECK(dev_alloc(&kv->mem, &kv->d_minmax, S * 2 * HD * sizeof(float)));
    CUDA_CHECK(dev_alloc(&kv->mem, &kv->d_bt, bt_n * sizeof(int32_t)));
    CUDA_CHECK(dev_alloc(&kv->mem, &kv->d_q, q_n * sizeof(float)));
    CUDA_CHECK(dev_alloc(&kv->mem, &kv->d_runs, 64 * sizeof(kcuda_run)));
    CUDA_CHECK(dev_alloc(&kv->mem, &kv->d_out, out_n * sizeof(float)));
    CUDA_CHECK(dev_alloc(&kv->mem, &kv->d_out2, out_n * sizeof(float)));
    CUDA_CHECK(dev_alloc(&kv->mem, &kv->d_scores, bt_n * sizeof(float)));
    CUDA_CHECK(dev_alloc(&kv->mem, &kv->d_sel, bt_n * sizeof(int32_t)));
    CUDA_CHECK(dev_alloc(&kv->mem, &kv->d_nsel, 64 * G * sizeof(int32_t)));
    CUDA_CHECK(h2d(b, kv->d_data, kv->h_data, S * SLOT_ELEMS * sizeof(uint16_t)));
    CUDA_CHECK(h2d(b, kv->d_minmax, kv->h_minmax, S * 2 * HD * sizeof(float)));
    printf("  KV pool: %zu head pages (%.2f GiB of f16 K+V, N(0,1) values) filled on the host and uploaded in %.1f "
           "s\n",
           S, S * SLOT_ELEMS * 2 / 1073741824.0, now_s() - t);
    return cudaSuccess;
}

static void kv_free(kv_bench *kv) {
    dev_free_all(&kv->mem);
    free(kv->h_data);
    free(kv->h_minmax);
    free(kv->h_bt);
    free(kv->h_q);
    memset(kv, 0, sizeof *kv);
}

/* Block tables over a fresh random permutation of the slots (so pages of one
 * sequence are scattered as in a long-running server), random queries, one
 * decode run per sequence at position ctx - 1 (context = ctx tokens, every
 * page full). */
static cudaError_t cfg_setup(bench *b, kv_bench *kv, uint32_t ctx, uint32_t batch, uint64_t seed) {
    kv->ctx = ctx;
    kv->batch = batch;
    kv->n_pages = ctx / P;
    size_t n_bt = (size_t)batch * G * kv->n_pages;
    if (n_bt > kv->n_slots) {
        fprintf(stderr, "bench_cuda: %u x %u tokens do not fit in the pool\n", batch, ctx);
        return cudaErrorInvalidValue;
    }
    uint64_t s = seed;
    int32_t *perm = xmalloc(kv->n_slots * sizeof(int32_t));
    for (size_t i = 0; i < kv->n_slots; i++) perm[i] = (int32_t)i;
    for (size_t i = kv->n_slots - 1; i > 0; i--) {
        size_t k = (size_t)(mix64(&s) % (i + 1));
        int32_t x = perm[i];
        perm[i] = perm[k];
        perm[k] = x;
    }
    memcpy(kv->h_bt, perm, n_bt * sizeof(int32_t));
    free(perm);
    memset(kv->h_q, 0, (size_t)batch * QKV_W * sizeof(float));
    for (uint32_t r = 0; r < batch; r++)
        for (int g = 0; g < G; g++)
            for (int i = 0; i < QPK * HD; i++) kv->h_q[(size_t)r * QKV_W + g * GS + i] = gauss(&s);
    kcuda_run runs[64];
    for (uint32_t r = 0; r < batch; r++) runs[r] = (kcuda_run){(int32_t)r, 1, (int32_t)ctx - 1, (int32_t)r};
    CUDA_CHECK(h2d(b, kv->d_bt, kv->h_bt, n_bt * sizeof(int32_t)));
    CUDA_CHECK(h2d(b, kv->d_q, kv->h_q, (size_t)batch * QKV_W * sizeof(float)));
    CUDA_CHECK(h2d(b, kv->d_runs, runs, batch * sizeof(kcuda_run)));
    return cudaSuccess;
}

static kcuda_attn_args attn_args(const kv_bench *kv, float *out) {
    kcuda_attn_args a;
    memset(&a, 0, sizeof a);
    a.in = (kcuda_qkv){kv->d_q, kv->d_q + QPK * HD, kv->d_q + (QPK + 1) * HD, QKV_W, GS};
    a.out_f32 = out;
    a.out_bf16 = NULL;
    a.ld_out = (size_t)H * HD;
    a.kv = (kcuda_kv_layer){kv->d_data, kv->d_minmax, (uint32_t)kv->n_slots, P, HD};
    a.bt = (kcuda_pages){kv->d_bt, kv->n_pages};
    a.runs = kv->d_runs;
    a.n_runs = kv->batch;
    a.n_kv_heads = G;
    a.q_per_kv = QPK;
    a.head_dim = HD;
    a.scale = 1.0f / sqrtf((float)HD);
    a.max_ctx = kv->ctx;
    return a;
}

/* Grows the workspace to what n_splits needs for these arguments. */
static cudaError_t ensure_ws(kv_bench *kv, const kcuda_attn_args *a, int n_splits) {
    size_t need = kcuda_attn_decode_workspace(a, n_splits);
    if (need <= kv->ws_bytes && kv->d_ws) return cudaSuccess;
    for (int i = 0; i < kv->mem.n; i++)
        if (kv->mem.p[i] == kv->d_ws) {
            cudaFree(kv->d_ws);
            kv->mem.p[i] = kv->mem.p[--kv->mem.n];
            break;
        }
    kv->d_ws = NULL;
    kv->ws_bytes = 0;
    CUDA_CHECK(dev_alloc(&kv->mem, &kv->d_ws, need));
    kv->ws_bytes = need;
    return cudaSuccess;
}

typedef struct {
    const kcuda_attn_args *a;
    const kcuda_page_list *pl; /* NULL = dense */
    int splits;
    void *ws;
    size_t ws_bytes;
} decode_op;

static cudaError_t op_decode(const void *c, cudaStream_t st) {
    const decode_op *d = c;
    return kcuda_attn_decode(d->a, d->pl, d->splits, d->ws, d->ws_bytes, st);
}

/* The engine's sparse path: page scores, top-k under the budget, decode over
 * the chosen pages; marks ev[2] and ev[3] between the three. */
typedef struct {
    bench *b;
    const kcuda_attn_args *a;
    const kcuda_page_list *pl;
    float *scores;
    size_t stride;
    uint32_t budget;
    int splits;
    void *ws;
    size_t ws_bytes;
} sparse_op;

static cudaError_t op_sparse(const void *c, cudaStream_t st) {
    const sparse_op *o = c;
    const kcuda_attn_args *a = o->a;
    CUDA_CHECK(kcuda_page_score(o->scores, o->stride, a, st));
    CUDA_CHECK(cudaEventRecord(o->b->ev[2], st));
    CUDA_CHECK(kcuda_page_topk(o->pl, o->scores, o->stride, a->runs, a->n_runs, a->n_kv_heads, P, o->budget,
                               a->max_ctx, st));
    CUDA_CHECK(cudaEventRecord(o->b->ev[3], st));
    CUDA_CHECK(kcuda_attn_decode(a, o->pl, o->splits, o->ws, o->ws_bytes, st));
    return cudaSuccess;
}

/* CPU reference attention (kernels/cpu: kcpu_attn_paged, or
 * kcpu_attn_paged_sparse over given page lists) for a set of (sequence, KV
 * head) pairs, on the host pool's threads. */
typedef struct {
    const kv_bench *kv;
    const int32_t *rg;      /* r * G + g of each job */
    size_t n;
    const int32_t *sel;     /* host copy of the GPU's selection, (B, G, n_pages), or NULL = dense */
    const int32_t *n_sel;
    float *out;             /* (B, H * HD) */
} ref_job;

static void ref_run(void *ctx, int tid, int nth) {
    ref_job *j = ctx;
    const kv_bench *kv = j->kv;
    long lo, hi;
    pt_pool_split((long)j->n, tid, nth, &lo, &hi);
    if (lo == hi) return;
    float *scores = xmalloc(kcpu_attn_state_len(QPK, HD) * sizeof(float)); /* attention state */
    uint32_t *sel = xmalloc((size_t)kv->n_pages * sizeof(uint32_t));
    for (long k = lo; k < hi; k++) {
        int32_t rg = j->rg[k], r = rg / G, g = rg % G;
        const float *q = kv->h_q + (size_t)r * QKV_W + (size_t)g * GS;
        float *o = j->out + (size_t)r * H * HD + (size_t)g * QPK * HD;
        const uint32_t *pages = (const uint32_t *)(kv->h_bt + (size_t)rg * kv->n_pages);
        float scale = 1.0f / sqrtf((float)HD);
        if (!j->sel) {
            kcpu_attn_paged(o, q, QPK, HD, kv->h_data, PT_DTYPE_F16, SLOT_ELEMS, P * HD, pages, P, kv->ctx, scale,
                            scores);
        } else {
            size_t n = (size_t)j->n_sel[rg];
            for (size_t i = 0; i < n; i++) sel[i] = (uint32_t)j->sel[(size_t)rg * kv->n_pages + i];
            kcpu_attn_paged_sparse(o, q, QPK, HD, kv->h_data, PT_DTYPE_F16, SLOT_ELEMS, P * HD, pages, P, kv->ctx,
                                   sel, n, scale, scores);
        }
    }
    free(scores);
    free(sel);
}

/* Per-head agreement of x with ref over the heads of the listed (sequence,
 * KV head) pairs: relative L2 error ||x - ref|| / ||ref|| and cosine. */
typedef struct {
    double mean_rel, worst_rel, mean_cos, worst_cos;
} head_err;

static head_err compare_heads(const float *x, const float *ref, const int32_t *rg, size_t n) {
    head_err e = {0, 0, 0, 1};
    size_t count = 0;
    for (size_t k = 0; k < n; k++) {
        int32_t r = rg[k] / G, g = rg[k] % G;
        for (int j = 0; j < QPK; j++) {
            size_t off = (size_t)r * H * HD + ((size_t)g * QPK + j) * HD;
            double d2 = 0, r2 = 0, x2 = 0, xr = 0;
            for (int i = 0; i < HD; i++) {
                double a = x[off + i], c = ref[off + i];
                d2 += (a - c) * (a - c);
                r2 += c * c;
                x2 += a * a;
                xr += a * c;
            }
            double rel = r2 > 0 ? sqrt(d2 / r2) : sqrt(d2);
            double cs = x2 > 0 && r2 > 0 ? xr / sqrt(x2 * r2) : (d2 == 0 ? 1.0 : 0.0);
            if (!(rel == rel)) rel = INFINITY; /* NaN from the GPU counts as the worst */
            if (!(cs == cs)) cs = -1;
            e.mean_rel += rel;
            e.mean_cos += cs;
            e.worst_rel = rel > e.worst_rel ? rel : e.worst_rel;
            e.worst_cos = cs < e.worst_cos ? cs : e.worst_cos;
            count++;
        }
    }
    if (count) {
        e.mean_rel /= (double)count;
        e.mean_cos /= (double)count;
    }
    return e;
}

/* GPU dense decode against the CPU reference for the given pairs. */
static cudaError_t check_dense(bench *b, kv_bench *kv, const kcuda_attn_args *a, int splits, const int32_t *rg,
                               size_t n, head_err *err) {
    size_t out_n = (size_t)kv->batch * H * HD;
    float *gpu = xmalloc(out_n * sizeof(float)), *ref = xmalloc(out_n * sizeof(float));
    memset(ref, 0, out_n * sizeof(float));
    cudaError_t rc = cudaMemsetAsync(a->out_f32, 0xff, out_n * sizeof(float), b->st); /* NaN: unwritten shows */
    if (rc == cudaSuccess) rc = kcuda_attn_decode(a, NULL, splits, kv->d_ws, kv->ws_bytes, b->st);
    if (rc == cudaSuccess) rc = d2h(b, gpu, a->out_f32, out_n * sizeof(float));
    if (rc == cudaSuccess) {
        ref_job j = {kv, rg, n, NULL, NULL, ref};
        pt_pool_run(b->pool, ref_run, &j);
        *err = compare_heads(gpu, ref, rg, n);
    } else {
        KCUDA_REPORT(rc, "dense decode for the check");
    }
    free(gpu);
    free(ref);
    return rc;
}

/* ---- [2] dense decode attention ---- */

static cudaError_t bench_attention(bench *b, kv_bench *kv) {
    int warm = 3, reps = b->o.quick ? 5 : 20;
    cJSON *arr = cJSON_AddArrayToObject(b->json, "attention");
    printf("  bytes = every K and V element read once (B x ctx x G x 2 x HD x 2 B); q, output and block tables\n"
           "  add < 0.3%% and are not counted. L2 flushed before each rep. median of %d after %d warm-up.\n",
           reps, warm);
    printf("  %-7s %5s %9s %6s %10s %9s %8s  %s\n", "ctx", "batch", "KV read", "splits", "time", "GB/s", "of copy",
           "check vs CPU reference (rel L2 err, worst head)");
    for (size_t c = 0; c < N_ATTN_CFGS; c++) {
        uint32_t ctx = ATTN_CFGS[c].ctx, B = ATTN_CFGS[c].batch;
        CUDA_CHECK(cfg_setup(b, kv, ctx, B, 0xa77e0000ull + c));
        kcuda_attn_args a = attn_args(kv, kv->d_out);
        int splits = kcuda_attn_decode_splits(&a);
        CUDA_CHECK(ensure_ws(kv, &a, splits));
        /* First and last sequence, every KV head. */
        int32_t rg[2 * G];
        size_t n = 0;
        for (int g = 0; g < G; g++) rg[n++] = g;
        if (B > 1)
            for (int g = 0; g < G; g++) rg[n++] = (int32_t)(B - 1) * G + g;
        head_err e;
        CUDA_CHECK(check_dense(b, kv, &a, splits, rg, n, &e));
        bool ok = e.worst_rel <= CHECK_TOL;
        if (!ok) b->n_failed++;
        decode_op op = {&a, NULL, splits, kv->d_ws, kv->ws_bytes};
        timing t;
        CUDA_CHECK(time_gpu(b, op_decode, &op, true, false, warm, reps, &t));
        double bytes = (double)B * ctx * G * 2.0 * HD * 2.0;
        double gbs = bytes / (t.med_ms * 1e-3) / 1e9, frac = b->copy_gbs > 0 ? gbs / b->copy_gbs : 0;
        char fr[32] = "n/a";
        if (b->copy_gbs > 0) snprintf(fr, sizeof fr, "%.1f%%", 100 * frac);
        printf("  %-7u %5u %6.2f GB %6d %7.3f ms %9.1f %8s  %s (%.1e)\n", ctx, B, bytes / 1e9, splits, t.med_ms, gbs,
               fr, ok ? "ok" : "MISMATCH", e.worst_rel);
        fflush(stdout);
        cJSON *j = cJSON_CreateObject();
        cJSON_AddNumberToObject(j, "ctx", ctx);
        cJSON_AddNumberToObject(j, "batch", B);
        cJSON_AddNumberToObject(j, "kv_bytes", bytes);
        /* Not counted: q (query heads of each fused row), f32 output, block tables. */
        cJSON_AddNumberToObject(j, "uncounted_bytes", (double)B * H * HD * 4 * 2 + (double)B * G * kv->n_pages * 4);
        cJSON_AddNumberToObject(j, "splits", splits);
        cJSON_AddNumberToObject(j, "reps", reps);
        cJSON_AddNumberToObject(j, "median_ms", t.med_ms);
        cJSON_AddNumberToObject(j, "min_ms", t.min_ms);
        cJSON_AddNumberToObject(j, "max_ms", t.max_ms);
        cJSON_AddNumberToObject(j, "gbs", gbs);
        if (b->copy_gbs > 0) cJSON_AddNumberToObject(j, "fraction_of_copy", frac);
        cJSON_AddNumberToObject(j, "check_worst_rel_err", e.worst_rel);
        cJSON_AddBoolToObject(j, "check_ok", ok);
        cJSON_AddItemToArray(arr, j);
    }
    printf("  goal: >= 80%% of the copy bandwidth (a read-only stream can exceed a copy's read+write rate)\n");
    return cudaSuccess;
}

/* ---- [3] query-aware selection ---- */

/* Structured inputs: in every (sequence, KV head), N_PLANT middle pages
 * (never the first or last, which are always kept) chosen at random get keys
 * k = k_random + PLANT_GAIN * u, u the unit vector of the mean of the group's
 * QPK queries. With q, k ~ N(0, 1) per channel that raises q.k * scale by
 * about PLANT_GAIN * |mean q| / sqrt(HD) ~ 8 on average for each query head of
 * the group (more for some heads, less for others): like real attention, a
 * few pages hold most of the weight. planted receives the page indices,
 * (B, G, N_PLANT). */
static cudaError_t plant(bench *b, kv_bench *kv, int32_t *planted) {
    uint64_t s = 0x91a47ull;
    for (uint32_t r = 0; r < kv->batch; r++)
        for (int g = 0; g < G; g++) {
            const float *q = kv->h_q + (size_t)r * QKV_W + (size_t)g * GS;
            float u[HD];
            double n2 = 0;
            for (int i = 0; i < HD; i++) {
                float m = 0;
                for (int j = 0; j < QPK; j++) m += q[j * HD + i];
                u[i] = m / QPK;
                n2 += (double)u[i] * u[i];
            }
            for (int i = 0; i < HD; i++) u[i] = (float)(u[i] / sqrt(n2));
            int32_t *pl = planted + ((size_t)r * G + g) * N_PLANT;
            for (int k = 0; k < N_PLANT; k++) {
                int32_t j;
                bool dup;
                do {
                    j = 1 + (int32_t)(mix64(&s) % (kv->n_pages - 2));
                    dup = false;
                    for (int m = 0; m < k; m++) dup |= pl[m] == j;
                } while (dup);
                pl[k] = j;
                size_t slot = (size_t)kv->h_bt[((size_t)r * G + g) * kv->n_pages + j];
                uint16_t *key = kv->h_data + slot * SLOT_ELEMS;
                for (int t = 0; t < P; t++)
                    for (int i = 0; i < HD; i++)
                        key[t * HD + i] = pt_f32_to_f16(g_f16_f32[key[t * HD + i]] + PLANT_GAIN * u[i]);
                slot_minmax(kv, slot);
                CUDA_CHECK(cudaMemcpyAsync(kv->d_data + slot * SLOT_ELEMS, key, (size_t)P * HD * sizeof(uint16_t),
                                           cudaMemcpyHostToDevice, b->st));
                CUDA_CHECK(cudaMemcpyAsync(kv->d_minmax + slot * 2 * HD, kv->h_minmax + slot * 2 * HD,
                                           2 * HD * sizeof(float), cudaMemcpyHostToDevice, b->st));
            }
        }
    CUDA_CHECK(cudaStreamSynchronize(b->st));
    return cudaSuccess;
}

/* Dense attention weight on the planted pages, mean over all query heads
 * (host, from the same f16 keys); one (sequence, KV head) per job. */
typedef struct {
    const kv_bench *kv;
    const int32_t *planted;
    double *mass; /* (B, G): sum over the group's query heads */
} mass_job;

static void mass_run(void *ctx, int tid, int nth) {
    mass_job *j = ctx;
    const kv_bench *kv = j->kv;
    long lo, hi;
    pt_pool_split((long)kv->batch * G, tid, nth, &lo, &hi);
    if (lo == hi) return;
    float *logit = xmalloc((size_t)kv->ctx * sizeof(float));
    float scale = 1.0f / sqrtf((float)HD);
    for (long rg = lo; rg < hi; rg++) {
        size_t r = (size_t)rg / G, g = (size_t)rg % G;
        const int32_t *bt = kv->h_bt + (size_t)rg * kv->n_pages;
        const int32_t *pl = j->planted + (size_t)rg * N_PLANT;
        j->mass[rg] = 0;
        for (int h = 0; h < QPK; h++) {
            const float *q = kv->h_q + r * QKV_W + g * GS + (size_t)h * HD;
            float mx = -INFINITY;
            for (uint32_t p = 0; p < kv->ctx; p++) {
                const uint16_t *k = kv->h_data + (size_t)bt[p / P] * SLOT_ELEMS + (size_t)(p % P) * HD;
                logit[p] = kcpu_dot_f32_f16(q, k, HD) * scale;
                mx = logit[p] > mx ? logit[p] : mx;
            }
            double sum = 0, hit = 0;
            for (uint32_t p = 0; p < kv->ctx; p++) {
                double w = exp((double)logit[p] - mx);
                sum += w;
                for (int m = 0; m < N_PLANT; m++)
                    if ((int32_t)(p / P) == pl[m]) hit += w;
            }
            j->mass[rg] += hit / sum;
        }
    }
    free(logit);
}

static double planted_mass(bench *b, const kv_bench *kv, const int32_t *planted) {
    size_t rows = (size_t)kv->batch * G;
    double *mass = xmalloc(rows * sizeof(double)), total = 0;
    mass_job j = {kv, planted, mass};
    pt_pool_run(b->pool, mass_run, &j);
    for (size_t i = 0; i < rows; i++) total += mass[i];
    free(mass);
    return total / ((double)rows * QPK);
}

typedef struct {
    const char *name;
    timing dense, sparse, sparse_alt;
    int alt_splits;
    head_err acc;        /* sparse vs dense, GPU outputs */
    head_err check_dense, check_sparse;
    size_t sel_rows_equal, sel_rows;
    double score_max_rel;
    bool sel_valid;
    double planted_mass, planted_recall; /* structured only; < 0 otherwise */
} sel_result;

/* Checks the GPU's page scores and selection against kcpu_page_score and
 * kcpu_page_select (the rule the kernels implement). A selection row is
 * valid when its count is what the rule gives and its pages increase within
 * [0, n_pages); rows_equal counts rows identical to the CPU's choice (a
 * near-tie at the k-th score may legitimately differ by summation order). */
static void check_selection(const kv_bench *kv, const float *scores, const int32_t *sel, const int32_t *n_sel,
                            sel_result *res) {
    size_t rows = (size_t)kv->batch * G;
    uint32_t *cpu = xmalloc((size_t)kv->n_pages * sizeof(uint32_t));
    float *scratch = xmalloc((size_t)kv->n_pages * sizeof(float));
    res->sel_rows = rows;
    res->sel_rows_equal = 0;
    res->sel_valid = true;
    res->score_max_rel = 0;
    for (size_t rg = 0; rg < rows; rg++) {
        size_t r = rg / G, g = rg % G;
        const float *q = kv->h_q + r * QKV_W + g * GS;
        const uint32_t *pages = (const uint32_t *)(kv->h_bt + rg * kv->n_pages);
        for (uint32_t j = 0; j < kv->n_pages; j++) {
            const float *mm = kv->h_minmax + (size_t)pages[j] * 2 * HD;
            float want = kcpu_page_score(q, QPK, HD, mm, mm + HD), got = scores[rg * kv->n_pages + j];
            double rel = fabs((double)got - want) / (fabs((double)want) > 1 ? fabs((double)want) : 1.0);
            if (!(rel == rel)) rel = INFINITY;
            res->score_max_rel = rel > res->score_max_rel ? rel : res->score_max_rel;
        }
        size_t n = kcpu_page_select(cpu, q, QPK, HD, kv->h_minmax, pages, kv->n_pages, P, kv->ctx, SEL_BUDGET,
                                    scratch);
        const int32_t *s = sel + rg * kv->n_pages;
        bool valid = (size_t)n_sel[rg] == n, equal = valid;
        for (size_t i = 0; valid && i < n; i++) {
            if (s[i] < 0 || (uint32_t)s[i] >= kv->n_pages || (i > 0 && s[i] <= s[i - 1])) valid = false;
            if ((uint32_t)s[i] != cpu[i]) equal = false;
        }
        if (!valid) res->sel_valid = false;
        if (valid && equal) res->sel_rows_equal++;
    }
    free(cpu);
    free(scratch);
}

/* The split count the engine (src/backend/cuda) gives sparse decode. */
static int sel_split_count(const kcuda_attn_args *a) {
    kcuda_attn_args s = *a;
    uint32_t sel_ctx = SEL_BUDGET + P;
    s.max_ctx = sel_ctx < a->max_ctx ? sel_ctx : a->max_ctx;
    return kcuda_attn_decode_splits(&s);
}

static cudaError_t select_run(bench *b, kv_bench *kv, sel_result *res, const int32_t *planted) {
    int warm = 3, reps = b->o.quick ? 5 : 20;
    kcuda_attn_args a = attn_args(kv, kv->d_out), as = attn_args(kv, kv->d_out2);
    kcuda_page_list pl = {kv->d_sel, kv->d_nsel, kv->n_pages};
    int splits = kcuda_attn_decode_splits(&a);
    /* The engine splits attention over selected pages as a context of the
     * budget plus one (partial current) page, since that is all it reads
     * (sel_splits); the alternative timed is the dense context's count. */
    int sel_splits = sel_split_count(&as);
    res->alt_splits = splits;
    CUDA_CHECK(ensure_ws(kv, &a, splits));
    CUDA_CHECK(ensure_ws(kv, &a, sel_splits)); /* grows only when that needs more */

    /* One dense and one sparse run, then everything to the host for checks. */
    size_t out_n = (size_t)kv->batch * H * HD, rows = (size_t)kv->batch * G, nb = rows * kv->n_pages;
    float *dense = xmalloc(out_n * sizeof(float)), *sparse = xmalloc(out_n * sizeof(float));
    float *ref = xmalloc(out_n * sizeof(float)), *scores = xmalloc(nb * sizeof(float));
    int32_t *sel = xmalloc(nb * sizeof(int32_t)), *n_sel = xmalloc(rows * sizeof(int32_t));
    int32_t *rg = xmalloc(rows * sizeof(int32_t));
    for (size_t i = 0; i < rows; i++) rg[i] = (int32_t)i;
    sparse_op sop = {b, &as, &pl, kv->d_scores, kv->n_pages, SEL_BUDGET, sel_splits, kv->d_ws, kv->ws_bytes};
    decode_op dop = {&a, NULL, splits, kv->d_ws, kv->ws_bytes};
    cudaError_t rc = cudaMemsetAsync(kv->d_out, 0xff, out_n * sizeof(float), b->st);
    if (!rc) rc = cudaMemsetAsync(kv->d_out2, 0xff, out_n * sizeof(float), b->st);
    if (!rc) rc = cudaMemsetAsync(kv->d_nsel, 0, rows * sizeof(int32_t), b->st);
    if (!rc) rc = op_decode(&dop, b->st);
    if (!rc) rc = op_sparse(&sop, b->st);
    if (!rc) rc = d2h(b, dense, kv->d_out, out_n * sizeof(float));
    if (!rc) rc = d2h(b, sparse, kv->d_out2, out_n * sizeof(float));
    if (!rc) rc = d2h(b, scores, kv->d_scores, nb * sizeof(float));
    if (!rc) rc = d2h(b, sel, kv->d_sel, nb * sizeof(int32_t));
    if (!rc) rc = d2h(b, n_sel, kv->d_nsel, rows * sizeof(int32_t));
    if (rc) {
        KCUDA_REPORT(rc, "dense and sparse decode for the checks");
        goto out;
    }
    check_selection(kv, scores, sel, n_sel, res);
    ref_job jd = {kv, rg, rows, NULL, NULL, ref};
    pt_pool_run(b->pool, ref_run, &jd);
    res->check_dense = compare_heads(dense, ref, rg, rows);
    if (res->sel_valid) {
        ref_job js = {kv, rg, rows, sel, n_sel, ref};
        pt_pool_run(b->pool, ref_run, &js);
        res->check_sparse = compare_heads(sparse, ref, rg, rows);
    } else {
        res->check_sparse = (head_err){INFINITY, INFINITY, 0, 0};
    }
    res->acc = compare_heads(sparse, dense, rg, rows);
    res->planted_mass = res->planted_recall = -1;
    if (planted) {
        size_t hit = 0;
        for (size_t i = 0; i < rows && res->sel_valid; i++)
            for (int m = 0; m < N_PLANT; m++)
                for (int32_t k = 0; k < n_sel[i]; k++)
                    if (sel[i * kv->n_pages + k] == planted[i * N_PLANT + m]) hit++;
        res->planted_recall = res->sel_valid ? (double)hit / ((double)rows * N_PLANT) : 0;
        res->planted_mass = planted_mass(b, kv, planted);
    }

    if ((rc = time_gpu(b, op_decode, &dop, true, false, warm, reps, &res->dense))) goto out;
    if ((rc = time_gpu(b, op_sparse, &sop, true, true, warm, reps, &res->sparse))) goto out;
    memset(&res->sparse_alt, 0, sizeof res->sparse_alt);
    if (res->alt_splits != sel_splits) {
        sparse_op alt = sop;
        alt.splits = res->alt_splits;
        if ((rc = time_gpu(b, op_sparse, &alt, true, true, warm, reps, &res->sparse_alt))) goto out;
    }
out:
    free(dense);
    free(sparse);
    free(ref);
    free(scores);
    free(sel);
    free(n_sel);
    free(rg);
    return rc;
}

static void print_err(const char *what, head_err e) {
    printf("    %-44s rel L2 err mean %.2e worst %.2e; cosine mean %.6f worst %.6f\n", what, e.mean_rel, e.worst_rel,
           e.mean_cos, e.worst_cos);
}

static cJSON *json_err(head_err e) {
    cJSON *j = cJSON_CreateObject();
    cJSON_AddNumberToObject(j, "rel_l2_mean", e.mean_rel);
    cJSON_AddNumberToObject(j, "rel_l2_worst", isfinite(e.worst_rel) ? e.worst_rel : -1);
    cJSON_AddNumberToObject(j, "cosine_mean", e.mean_cos);
    cJSON_AddNumberToObject(j, "cosine_worst", e.worst_cos);
    return j;
}

static cJSON *json_timing(timing t) {
    cJSON *j = cJSON_CreateObject();
    cJSON_AddNumberToObject(j, "median_ms", t.med_ms);
    cJSON_AddNumberToObject(j, "min_ms", t.min_ms);
    cJSON_AddNumberToObject(j, "max_ms", t.max_ms);
    cJSON_AddNumberToObject(j, "reps", t.reps);
    return j;
}

static void report_selection(bench *b, const sel_result *r, int splits, int sel_splits, cJSON *arr) {
    bool checks_ok = r->sel_valid && r->check_dense.worst_rel <= CHECK_TOL && r->check_sparse.worst_rel <= CHECK_TOL;
    if (!checks_ok) b->n_failed++;
    double speedup = r->dense.med_ms / r->sparse.med_ms;
    printf("  inputs: %s\n", r->name);
    printf("    dense decode            %8.3f ms  (splits %d)\n", r->dense.med_ms, splits);
    printf("    score + top-k + sparse  %8.3f ms  = score %.3f + top-k %.3f + sparse decode %.3f (splits %d)\n",
           r->sparse.med_ms, r->sparse.seg_ms[0], r->sparse.seg_ms[1], r->sparse.seg_ms[2], sel_splits);
    if (r->sparse_alt.reps)
        printf("    same, sparse decode with the dense context's splits (%d): %.3f ms (sparse decode %.3f)\n",
               r->alt_splits, r->sparse_alt.med_ms, r->sparse_alt.seg_ms[2]);
    printf("    speedup %.2fx (goal >= 4x)\n", speedup);
    print_err("accuracy: sparse vs dense output, per head:", r->acc);
    if (r->planted_mass >= 0)
        printf("    dense attention weight on the planted pages %.1f%% (mean over heads); planted pages selected "
               "%.1f%%\n",
               100 * r->planted_mass, 100 * r->planted_recall);
    printf("    checks: selection %s, rows equal to the CPU rule %zu/%zu, page scores max rel diff %.1e;\n",
           r->sel_valid ? "valid" : "INVALID (counts or order wrong)", r->sel_rows_equal, r->sel_rows,
           r->score_max_rel);
    printf("            dense vs CPU worst rel err %.1e, sparse vs CPU (same pages) %.1e: %s\n",
           r->check_dense.worst_rel, r->check_sparse.worst_rel, checks_ok ? "ok" : "MISMATCH");
    fflush(stdout);
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "inputs", r->name);
    cJSON_AddItemToObject(j, "dense", json_timing(r->dense));
    cJSON *sp = json_timing(r->sparse);
    cJSON_AddNumberToObject(sp, "score_ms", r->sparse.seg_ms[0]);
    cJSON_AddNumberToObject(sp, "topk_ms", r->sparse.seg_ms[1]);
    cJSON_AddNumberToObject(sp, "sparse_decode_ms", r->sparse.seg_ms[2]);
    cJSON_AddNumberToObject(sp, "splits", sel_splits);
    cJSON_AddItemToObject(j, "score_topk_sparse", sp);
    cJSON_AddNumberToObject(j, "dense_splits", splits);
    if (r->sparse_alt.reps) {
        cJSON *alt = json_timing(r->sparse_alt);
        cJSON_AddNumberToObject(alt, "splits", r->alt_splits);
        cJSON_AddNumberToObject(alt, "sparse_decode_ms", r->sparse_alt.seg_ms[2]);
        cJSON_AddItemToObject(j, "score_topk_sparse_dense_splits", alt);
    }
    cJSON_AddNumberToObject(j, "speedup", speedup);
    cJSON_AddItemToObject(j, "accuracy_sparse_vs_dense", json_err(r->acc));
    if (r->planted_mass >= 0) {
        cJSON_AddNumberToObject(j, "dense_weight_on_planted", r->planted_mass);
        cJSON_AddNumberToObject(j, "planted_pages_selected", r->planted_recall);
    }
    cJSON_AddBoolToObject(j, "selection_valid", r->sel_valid);
    cJSON_AddNumberToObject(j, "selection_rows_equal_cpu", (double)r->sel_rows_equal);
    cJSON_AddNumberToObject(j, "selection_rows", (double)r->sel_rows);
    cJSON_AddNumberToObject(j, "score_max_rel_diff", r->score_max_rel);
    cJSON_AddItemToObject(j, "check_dense_vs_cpu", json_err(r->check_dense));
    cJSON_AddItemToObject(j, "check_sparse_vs_cpu", json_err(r->check_sparse));
    cJSON_AddBoolToObject(j, "checks_ok", checks_ok);
    cJSON_AddItemToArray(arr, j);
}

static cudaError_t bench_select(bench *b, kv_bench *kv) {
    stage("[3] selection setup", 60);
    CUDA_CHECK(cfg_setup(b, kv, SEL_CTX, SEL_BATCH, 0x5e1ec7ull));
    kcuda_attn_args a = attn_args(kv, kv->d_out);
    int splits = kcuda_attn_decode_splits(&a), sel_splits = sel_split_count(&a);
    uint32_t k = (SEL_BUDGET - 2 * P) / P;
    printf("  %u sequences x %u tokens, budget %u tokens: pages 0 and last + the %u best-scoring of %u middle pages\n"
           "  per KV head; times: median of %d after 3 warm-up, L2 flushed before each rep\n",
           SEL_BATCH, SEL_CTX, SEL_BUDGET, k, kv->n_pages - 2, b->o.quick ? 5 : 20);
    cJSON *sj = cJSON_AddObjectToObject(b->json, "selection");
    cJSON_AddNumberToObject(sj, "ctx", SEL_CTX);
    cJSON_AddNumberToObject(sj, "batch", SEL_BATCH);
    cJSON_AddNumberToObject(sj, "budget_tokens", SEL_BUDGET);
    cJSON_AddNumberToObject(sj, "planted_pages", N_PLANT);
    cJSON_AddNumberToObject(sj, "plant_gain", PLANT_GAIN);
    cJSON *arr = cJSON_AddArrayToObject(sj, "runs");

    sel_result r;
    memset(&r, 0, sizeof r);
    r.name = "iid (keys, values, queries i.i.d. N(0,1): flat attention, the worst case for selection)";
    stage("[3] selection, iid inputs", 150);
    CUDA_CHECK(select_run(b, kv, &r, NULL));
    report_selection(b, &r, splits, sel_splits, arr);
    json_write(b);

    int32_t *planted = xmalloc((size_t)kv->batch * G * N_PLANT * sizeof(int32_t));
    memset(&r, 0, sizeof r);
    r.name = "structured (8 random middle pages per KV head hold keys aligned with the group's mean query)";
    stage("[3] selection, structured inputs", 150);
    cudaError_t rc = plant(b, kv, planted);
    if (!rc) rc = select_run(b, kv, &r, planted);
    if (!rc) report_selection(b, &r, splits, sel_splits, arr);
    free(planted);
    return rc;
}

/* ---- [4] the whole model ---- */

typedef struct {
    double step_ms, min_ms, max_ms;
    int steps;
    double prefill_s;
    uint32_t ctx_end;
    bool logits_finite;
} decode_result;

/* n_seqs fresh sequences, each prefilled with a prompt_len-token random
 * prompt (one sequence per step), then warm + steps decode steps of one
 * token per sequence, logits of every sequence to the host each step. The
 * decode tokens are fixed pseudo-random ids (no sampling: choosing the next
 * token is not part of the step). Timed: each pt_engine_step. */
static int run_decode(pt_engine *e, uint32_t n_seqs, uint32_t prompt_len, int warm, int steps, decode_result *res,
                      pt_err *err) {
    const pt_model_config *c = pt_engine_config(e);
    uint32_t V = c->vocab_size;
    int *seqs = xmalloc(n_seqs * sizeof(int));
    int32_t *prompt = xmalloc(prompt_len * sizeof(int32_t)), *tok = xmalloc(n_seqs * sizeof(int32_t));
    float *logits = xmalloc((size_t)n_seqs * V * sizeof(float));
    pt_batch_entry *ent = xmalloc(n_seqs * sizeof(pt_batch_entry));
    double *t = xmalloc((size_t)steps * sizeof(double));
    uint64_t s = 0x70cc0ull + n_seqs;
    int rc = PT_OK;
    uint32_t made = 0;
    for (; made < n_seqs; made++)
        if ((seqs[made] = pt_engine_seq_new(e)) < 0) {
            rc = pt_err_set(err, PT_ERR_NOMEM, "no free sequence slot for sequence %u", made);
            goto out;
        }
    double t0 = now_s();
    for (uint32_t i = 0; i < n_seqs && rc == PT_OK; i++) {
        for (uint32_t k = 0; k < prompt_len; k++) prompt[k] = (int32_t)(mix64(&s) % V);
        for (uint32_t k = 0; k < prompt_len && rc == PT_OK; k += MODEL_BATCH_TOKENS) {
            uint32_t m = prompt_len - k < MODEL_BATCH_TOKENS ? prompt_len - k : MODEL_BATCH_TOKENS;
            pt_batch_entry pe = {seqs[i], prompt + k, m, NULL, false, false};
            rc = pt_engine_step(e, &pe, 1, err);
        }
    }
    res->prefill_s = now_s() - t0;
    for (int it = 0; it < warm + steps && rc == PT_OK; it++) {
        for (uint32_t i = 0; i < n_seqs; i++) {
            tok[i] = (int32_t)(mix64(&s) % V);
            ent[i] = (pt_batch_entry){seqs[i], &tok[i], 1, logits + (size_t)i * V, false, false};
        }
        double a = now_s();
        rc = pt_engine_step(e, ent, n_seqs, err);
        if (it >= warm) t[it - warm] = (now_s() - a) * 1e3;
    }
    if (rc == PT_OK) {
        res->steps = steps;
        res->step_ms = median(t, steps);
        res->min_ms = t[0];
        res->max_ms = t[steps - 1];
        res->ctx_end = pt_engine_seq_len(e, seqs[0]);
        res->logits_finite = true;
        for (size_t i = 0; i < (size_t)n_seqs * V; i++)
            if (!isfinite(logits[i])) {
                res->logits_finite = false;
                break;
            }
    }
out:
    for (uint32_t i = 0; i < made; i++) pt_engine_seq_free(e, seqs[i]);
    free(seqs);
    free(prompt);
    free(tok);
    free(logits);
    free(ent);
    free(t);
    return rc;
}

static int engine_open(pt_engine **e, const pt_model_file *mf, bench *b, bool graphs, double *secs, pt_err *err) {
    pt_engine_opts o;
    pt_engine_opts_default(&o);
    o.device = PT_DEVICE_CUDA;
    o.device_index = b->o.device;
    o.cuda_graphs = graphs;
    o.n_threads = b->n_cpu; /* host threads of the weight conversion at upload */
    o.kv_dtype = PT_DTYPE_F16;
    o.max_seqs = MODEL_MAX_SEQS;
    o.max_ctx = MODEL_MAX_CTX;
    o.max_batch_tokens = MODEL_BATCH_TOKENS;
    double t = now_s();
    int rc = pt_engine_create(e, mf, &o, err);
    *secs = now_s() - t;
    return rc;
}

static cJSON *json_decode(const decode_result *r, double roofline_ms, uint32_t n_seqs) {
    cJSON *j = cJSON_CreateObject();
    cJSON_AddNumberToObject(j, "sequences", n_seqs);
    cJSON_AddNumberToObject(j, "steps", r->steps);
    cJSON_AddNumberToObject(j, "step_median_ms", r->step_ms);
    cJSON_AddNumberToObject(j, "step_min_ms", r->min_ms);
    cJSON_AddNumberToObject(j, "step_max_ms", r->max_ms);
    cJSON_AddNumberToObject(j, "tokens_per_s", n_seqs / (r->step_ms * 1e-3));
    cJSON_AddNumberToObject(j, "context_at_end", r->ctx_end);
    cJSON_AddNumberToObject(j, "prefill_s", r->prefill_s);
    if (roofline_ms > 0) cJSON_AddNumberToObject(j, "fraction_of_roofline", roofline_ms / r->step_ms);
    cJSON_AddBoolToObject(j, "logits_finite", r->logits_finite);
    return j;
}

static int bench_model(bench *b) {
    pt_err err = {{0}};
    pt_model_file mf;
    memset(&mf, 0, sizeof mf);
    cJSON *mj = cJSON_AddObjectToObject(b->json, "model");
    cJSON_AddStringToObject(mj, "model", MODEL_SPEC);
    stage("[4] synthetic model generation", 300);
    double t = now_s();
    if (pt_model_file_open(&mf, MODEL_SPEC, &err)) {
        fprintf(stderr, "bench_cuda: %s\n", err.msg);
        json_error(b, "model", err.msg);
        return -1;
    }
    double gen_s = now_s() - t;
    const pt_model_config *c = &mf.config;
    uint64_t d = c->d_model, hd = c->head_dim, nh = c->n_heads, nkv = c->n_kv_heads, ff = c->d_ff, V = c->vocab_size;
    uint64_t layer_params = (nh + 2 * nkv) * hd * d + nh * hd * d + 2 * ff * d + ff * d;
    double weight_bytes = 2.0 * ((double)c->n_layers * layer_params + (double)V * d);
    double kv_per_token = (double)c->n_layers * nkv * 2 * hd * 2; /* f16 K and V, every layer */
    double roofline_ms = b->copy_gbs > 0 ? weight_bytes / (b->copy_gbs * 1e9) * 1e3 : 0;
    printf("  %s: %u layers, d %llu, %llu heads / %llu KV heads, ff %llu, vocab %llu\n", MODEL_SPEC, c->n_layers,
           (unsigned long long)d, (unsigned long long)nh, (unsigned long long)nkv, (unsigned long long)ff,
           (unsigned long long)V);
    printf("  setup: synthetic weights generated on the host in %.1f s\n", gen_s);
    printf("  weights read per step: %u x (qkv + o + gate_up + down) + LM head, bf16 = %.3f GB (embedding gather,\n"
           "  norms and KV reads not counted; KV is %.0f KB per token of context)",
           c->n_layers, weight_bytes / 1e9, kv_per_token / 1e3);
    if (roofline_ms > 0)
        printf("; roofline %.3f ms/step at the copy bandwidth\n", roofline_ms);
    else
        printf("; no roofline (copy bandwidth unknown)\n");
    cJSON_AddNumberToObject(mj, "synthetic_generation_s", gen_s);
    cJSON_AddNumberToObject(mj, "weight_bytes", weight_bytes);
    cJSON_AddNumberToObject(mj, "kv_bytes_per_token", kv_per_token);
    if (roofline_ms > 0) cJSON_AddNumberToObject(mj, "roofline_ms", roofline_ms);
    fflush(stdout);
    json_write(b);

    int rc = PT_OK;
    pt_engine *e = NULL;
    double create_s = 0;
    decode_result r1, r64, r1_eager;
    memset(&r1, 0, sizeof r1);
    memset(&r64, 0, sizeof r64);
    memset(&r1_eager, 0, sizeof r1_eager);
    int warm1 = 5, steps1 = b->o.quick ? 20 : 50, warm64 = 3, steps64 = b->o.quick ? 10 : 30;

    stage("[4] engine creation (weights to the GPU), CUDA graphs on", 240);
    if ((rc = engine_open(&e, &mf, b, true, &create_s, &err))) goto fail;
    printf("  setup: engine created (weights converted and uploaded, KV pool allocated) in %.1f s\n", create_s);
    cJSON_AddNumberToObject(mj, "engine_create_s", create_s);
    printf("  decode: logits of every sequence copied to the host each step (included); tokens are fixed random ids\n");
    printf("  %-34s %10s %10s %9s %12s\n", "", "step (med)", "min..max", "tok/s", "of roofline");

    stage("[4] batch-1 decode, graphs on", 120);
    if ((rc = run_decode(e, 1, MODEL_PROMPT, warm1, steps1, &r1, &err))) goto fail;
    printf("  %-34s %7.3f ms %4.2f..%-5.2f %9.1f %11.1f%%\n", "batch 1, ctx 512, CUDA graphs on", r1.step_ms,
           r1.min_ms, r1.max_ms, 1e3 / r1.step_ms, roofline_ms > 0 ? 100 * roofline_ms / r1.step_ms : 0);
    fflush(stdout);
    cJSON_AddItemToObject(mj, "batch1_graphs", json_decode(&r1, roofline_ms, 1));
    json_write(b);

    stage("[4] batch-64 prefill and decode, graphs on", 180);
    if ((rc = run_decode(e, MODEL_BATCH, MODEL_PROMPT, warm64, steps64, &r64, &err))) goto fail;
    double ctx_mid = MODEL_PROMPT + warm64 + steps64 / 2.0;
    double floor64_ms = b->copy_gbs > 0 ? (weight_bytes + MODEL_BATCH * ctx_mid * kv_per_token) / (b->copy_gbs * 1e9) * 1e3
                                        : 0;
    printf("  %-34s %7.3f ms %4.1f..%-5.1f %9.1f %11s\n", "batch 64, ctx 512, CUDA graphs on", r64.step_ms, r64.min_ms,
           r64.max_ms, MODEL_BATCH * 1e3 / r64.step_ms, "-");
    printf("    (weights + KV of 64 x ~%.0f tokens = %.2f GB per step: memory floor %.3f ms, reached %.1f%%)\n", ctx_mid,
           (weight_bytes + MODEL_BATCH * ctx_mid * kv_per_token) / 1e9, floor64_ms,
           floor64_ms > 0 ? 100 * floor64_ms / r64.step_ms : 0);
    printf("    prefill of 64 x %u tokens (one sequence per step): %.2f s, %.0f tok/s\n", MODEL_PROMPT, r64.prefill_s,
           MODEL_BATCH * MODEL_PROMPT / r64.prefill_s);
    fflush(stdout);
    cJSON *j64 = json_decode(&r64, 0, MODEL_BATCH);
    if (floor64_ms > 0) cJSON_AddNumberToObject(j64, "memory_floor_ms", floor64_ms);
    cJSON_AddNumberToObject(j64, "prefill_tokens_per_s", MODEL_BATCH * MODEL_PROMPT / r64.prefill_s);
    cJSON_AddItemToObject(mj, "batch64_graphs", j64);
    uint64_t captured = 0, replayed = 0;
    pt_engine_graph_stats(e, &captured, &replayed);
    printf("    CUDA graphs on this engine: %llu captured, %llu decode steps replayed%s\n",
           (unsigned long long)captured, (unsigned long long)replayed,
           replayed ? "" : " (capture failed: the 'graphs on' rows ran eagerly)");
    cJSON_AddNumberToObject(mj, "graphs_captured", (double)captured);
    cJSON_AddNumberToObject(mj, "graphs_replayed", (double)replayed);
    json_write(b);
    pt_engine_free(e);
    e = NULL;

    double left = GLOBAL_LIMIT_S - elapsed_s();
    if (left < GRAPHS_OFF_MIN_LEFT_S) {
        printf("  batch 1 with CUDA graphs off: skipped (%.0f s left of the %d s limit; it needs a second weight "
               "upload)\n",
               left, GLOBAL_LIMIT_S);
        cJSON_AddStringToObject(mj, "batch1_eager", "skipped: time limit");
    } else {
        stage("[4] engine creation, CUDA graphs off", 240);
        if ((rc = engine_open(&e, &mf, b, false, &create_s, &err))) goto fail;
        printf("  setup: second engine (graphs off) created in %.1f s\n", create_s);
        stage("[4] batch-1 decode, graphs off", 120);
        if ((rc = run_decode(e, 1, MODEL_PROMPT, warm1, steps1, &r1_eager, &err))) goto fail;
        printf("  %-34s %7.3f ms %4.2f..%-5.2f %9.1f %11.1f%%\n", "batch 1, ctx 512, CUDA graphs off",
               r1_eager.step_ms, r1_eager.min_ms, r1_eager.max_ms, 1e3 / r1_eager.step_ms,
               roofline_ms > 0 ? 100 * roofline_ms / r1_eager.step_ms : 0);
        cJSON_AddItemToObject(mj, "batch1_eager", json_decode(&r1_eager, roofline_ms, 1));
        pt_engine_free(e);
        e = NULL;
    }
    printf("  goal: batch-1 decode >= 85%% of the roofline\n");
    if (!r1.logits_finite || !r64.logits_finite || (r1_eager.steps && !r1_eager.logits_finite)) {
        printf("  CHECK FAILED: the logits contain NaN or Inf\n");
        b->n_failed++;
    }
    pt_model_file_close(&mf);
    return 0;
fail:
    fprintf(stderr, "bench_cuda: model section: %s\n", err.msg);
    printf("  FAILED: %s\n", err.msg);
    json_error(b, "model", err.msg);
    if (e) pt_engine_free(e);
    pt_model_file_close(&mf);
    return -1;
}

/* ---- driver ---- */

static void usage(FILE *f) {
    fprintf(f, "usage: bench_cuda [--quick] [--skip-model] [--json FILE] [--device N]\n"
               "  --quick       fewer repetitions (same sizes)\n"
               "  --skip-model  sections 1-3 only (no 8B model: saves the ~16 GB host generation and upload)\n"
               "  --json FILE   also write every number as JSON (rewritten after each section)\n"
               "  --device N    CUDA device ordinal (default 0)\n");
}

/* After a failed section: a sticky error (a kernel fault) leaves the context
 * unusable, and every later CUDA call would fail too. */
static void after_failure(bench *b, const char *section) {
    b->n_failed++;
    (void)cudaGetLastError();
    cudaError_t rc = cudaDeviceSynchronize();
    if (rc != cudaSuccess) {
        fprintf(stderr, "bench_cuda: the CUDA context is unusable after %s (%s: %s); later GPU sections are skipped\n",
                section, cudaGetErrorName(rc), cudaGetErrorString(rc));
        b->context_broken = true;
    }
    json_error(b, section, b->context_broken ? "failed; CUDA context unusable" : "failed (see stderr)");
    printf("  FAILED (see stderr)\n");
}

int main(int argc, char **argv) {
    g_t0 = now_s();
    bench b;
    memset(&b, 0, sizeof b);
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--quick")) {
            b.o.quick = true;
        } else if (!strcmp(argv[i], "--skip-model")) {
            b.o.skip_model = true;
        } else if (!strcmp(argv[i], "--json") && i + 1 < argc) {
            b.o.json_path = argv[++i];
        } else if (!strcmp(argv[i], "--device") && i + 1 < argc) {
            b.o.device = atoi(argv[++i]);
        } else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "bench_cuda: unknown argument '%s'\n", argv[i]);
            usage(stderr);
            return 1;
        }
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sigaction(SIGALRM, &sa, NULL);

    stage("device discovery", 60);
    int n_dev = 0;
    cudaError_t rc = cudaGetDeviceCount(&n_dev);
    if (rc != cudaSuccess || n_dev == 0) {
        if (rc != cudaSuccess)
            printf("SKIP: no CUDA device (cudaGetDeviceCount: %s: %s)\n", cudaGetErrorName(rc), cudaGetErrorString(rc));
        else
            printf("SKIP: no CUDA device (the runtime reports 0 devices)\n");
        return 77;
    }
    if (b.o.device < 0 || b.o.device >= n_dev) {
        fprintf(stderr, "bench_cuda: device %d does not exist (%d present)\n", b.o.device, n_dev);
        return 1;
    }
    printf("bench_cuda: Proteus GPU benchmarks%s\n", b.o.quick ? " (--quick: fewer repetitions)" : "");
    b.json = cJSON_CreateObject();
    cJSON_AddStringToObject(b.json, "bench", "bench_cuda");
    cJSON_AddBoolToObject(b.json, "quick", b.o.quick);
    cJSON_AddNumberToObject(b.json, "elapsed_s", 0);
    cJSON_AddArrayToObject(b.json, "errors");
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    b.n_cpu = ncpu < 1 ? 1 : ncpu > 64 ? 64 : (int)ncpu;
    b.pool = pt_pool_create(b.n_cpu);
    if (!b.pool) {
        fprintf(stderr, "bench_cuda: cannot start %d host threads\n", b.n_cpu);
        return 1;
    }
    tables_init();

    if ((rc = cudaSetDevice(b.o.device)) || (rc = cudaStreamCreateWithFlags(&b.st, cudaStreamNonBlocking))) {
        KCUDA_REPORT(rc, "CUDA initialization");
        return 1;
    }
    for (int i = 0; i < 4 && !rc; i++) rc = cudaEventCreate(&b.ev[i]);
    if (!rc) rc = describe_device(&b);
    if (!rc) rc = cudaMalloc((void **)&b.flush, b.flush_bytes);
    if (rc) {
        KCUDA_REPORT(rc, "CUDA initialization");
        return 1;
    }
    printf("  host: %d CPUs; setup so far %.1f s\n", b.n_cpu, elapsed_s());
    json_write(&b);

    printf("\n[1] device-to-device copy bandwidth (the roofline)\n");
    stage("[1] copy bandwidth", 60);
    if (bench_copy(&b)) after_failure(&b, "copy");
    json_write(&b);

    kv_bench kv;
    memset(&kv, 0, sizeof kv);
    if (!b.context_broken) {
        printf("\n[2] decode attention, dense: %d KV heads x %d queries per KV head, head dim %d, f16 KV, page %d,\n"
               "    pages at shuffled slots, one decode run per sequence (context = ctx tokens, all pages full)\n",
               G, QPK, HD, P);
        stage("[2] KV pool fill", 120);
        if (kv_init(&b, &kv)) {
            after_failure(&b, "attention");
        } else {
            stage("[2] dense decode attention", 200);
            if (bench_attention(&b, &kv)) after_failure(&b, "attention");
        }
        json_write(&b);
    }
    if (!b.context_broken && kv.d_data) {
        printf("\n[3] query-aware attention at %uK, budget %u tokens (same shape; score + top-k + sparse vs dense)\n",
               SEL_CTX / 1024, SEL_BUDGET);
        if (bench_select(&b, &kv)) after_failure(&b, "selection");
        json_write(&b);
    }
    kv_free(&kv);

    if (b.o.skip_model) {
        printf("\n[4] whole model: skipped (--skip-model)\n");
    } else if (!b.context_broken) {
        printf("\n[4] whole model on the CUDA engine (max_seqs %d, max_ctx %d, max_batch_tokens %d)\n",
               MODEL_MAX_SEQS, MODEL_MAX_CTX, MODEL_BATCH_TOKENS);
        cudaFree(b.flush); /* room for the engine */
        b.flush = NULL;
        if (bench_model(&b)) {
            b.n_failed++;
            (void)cudaGetLastError();
        }
        json_write(&b);
    }
    alarm(0);
    printf("\nbench_cuda: done in %.1f s; %s\n", elapsed_s(),
           b.n_failed ? "SOME SECTIONS OR CHECKS FAILED (see above)" : "all sections ran, all checks passed");
    if (b.o.json_path) printf("  JSON: %s\n", b.o.json_path);
    if (b.flush) cudaFree(b.flush);
    for (int i = 0; i < 4; i++) cudaEventDestroy(b.ev[i]);
    cudaStreamDestroy(b.st);
    pt_pool_free(b.pool);
    cJSON_Delete(b.json);
    return b.n_failed ? 1 : 0;
}
