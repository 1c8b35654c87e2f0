/* GEMMs through cuBLASLt: Y (T, N) f32 = beta * Y + X W^T, X (T, K) and W in
 * bf16 or f16, products and sums in f32.
 *
 * cuBLASLt is column-major; a row-major (R, C) matrix with rows ld apart is the
 * column-major (C, R) matrix with the same ld. So, in cuBLASLt's terms:
 *   Y row-major (T, N), ldy  -> D = C column-major (N, T), ld = ldy
 *   X row-major (T, K), ldx  -> B column-major (K, T), ld = ldx, op N
 *   W NK row-major (N, K)    -> A column-major (K, N), ld = ldw, op T
 *   W KN row-major (K, N)    -> A column-major (N, K), ld = ldw, op N
 * and D = op(A) B is (N, K) x (K, T): m = N, n = T, k = K.
 *
 * Each distinct problem (layout, type, T, N, K, the three ld's and the three
 * pointers' alignments) gets a plan: the matmul descriptor, the three matrix
 * layouts and the algorithm the heuristic picked, kept in a small LRU cache,
 * so a decode step that repeats last step's shapes goes straight to
 * cublasLtMatmul. That call allocates nothing and does not synchronize (the
 * workspace is allocated once, in kcuda_blas_create), so it can be captured in
 * a CUDA graph; the first call of a shape also runs the heuristic, a host-only
 * query, and is best made once before capturing. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cublasLt.h>

#include "check.h"
#include "kcuda.h"

/* 32 MiB is NVIDIA's recommended cuBLASLt workspace for Hopper. */
#define KCUDA_GEMM_WORKSPACE ((size_t)32 << 20)
/* Plans kept per handle: a model has about five GEMM shapes per distinct T
 * (every layer shares them), and a server sees up to a few dozen distinct T
 * (decode batch sizes, prefill chunks). A miss costs one heuristic query
 * (tens of microseconds); a hit, a scan of the plans' key hashes. */
#define KCUDA_GEMM_PLANS 256

/* Everything that selects a plan. All fields are uint64_t, so the struct has
 * no padding and compares with memcmp. */
typedef struct {
    uint64_t layout, type;         /* kcuda_w_layout, kcuda_gemm_type */
    uint64_t T, N, K;              /* problem size */
    uint64_t ldw, ldx, ldy;        /* row strides in elements */
    uint64_t align_w, align_x, align_y; /* pointer alignments in bytes, 1..256 */
} gemm_key;

typedef struct {
    gemm_key key;
    cublasLtMatmulDescOpaque_t desc;      /* compute f32, scale f32, transa per layout */
    cublasLtMatrixLayoutOpaque_t w_desc;  /* A */
    cublasLtMatrixLayoutOpaque_t x_desc;  /* B */
    cublasLtMatrixLayoutOpaque_t y_desc;  /* C and D (in place) */
    cublasLtMatmulAlgo_t algo;
} gemm_plan;

struct kcuda_blas {
    cublasLtHandle_t lt;
    void *workspace; /* KCUDA_GEMM_WORKSPACE bytes on `device` */
    int device;      /* the device current at creation */
    uint64_t clock;  /* counts calls, for the LRU */
    /* Per plan slot, kept apart from the plans so a lookup scans 2 KiB. */
    uint64_t hash[KCUDA_GEMM_PLANS];     /* of the slot's key */
    uint64_t last_use[KCUDA_GEMM_PLANS]; /* clock at last use; 0 = empty slot */
    gemm_plan plans[KCUDA_GEMM_PLANS];
};

static cudaError_t lt_error(cublasStatus_t st)
{
    switch (st) {
    case CUBLAS_STATUS_SUCCESS: return cudaSuccess;
    case CUBLAS_STATUS_NOT_INITIALIZED: return cudaErrorInitializationError;
    case CUBLAS_STATUS_ALLOC_FAILED: return cudaErrorMemoryAllocation;
    case CUBLAS_STATUS_INVALID_VALUE: return cudaErrorInvalidValue;
    case CUBLAS_STATUS_ARCH_MISMATCH: return cudaErrorNoKernelImageForDevice;
    case CUBLAS_STATUS_NOT_SUPPORTED: return cudaErrorNotSupported;
    case CUBLAS_STATUS_EXECUTION_FAILED: return cudaErrorLaunchFailure;
    default: return cudaErrorUnknown;
    }
}

/* Reports a failed cuBLASLt call with file:line and returns its status as a
 * cudaError_t from the enclosing function. */
#define LT_CHECK(call)                                                                 \
    do {                                                                               \
        cublasStatus_t lt_st_ = (call);                                                \
        if (lt_st_ != CUBLAS_STATUS_SUCCESS) {                                         \
            fprintf(stderr, "%s:%d: %s failed: %s\n", __FILE__, __LINE__, #call,       \
                    cublasLtGetStatusName(lt_st_));                                    \
            return lt_error(lt_st_);                                                   \
        }                                                                              \
    } while (0)

kcuda_blas *kcuda_blas_create(void)
{
    int device = 0;
    cudaError_t err = cudaGetDevice(&device);
    if (err != cudaSuccess) {
        KCUDA_REPORT(err, "cudaGetDevice");
        (void)cudaGetLastError();
        return NULL;
    }
    kcuda_blas *b = calloc(1, sizeof *b);
    if (!b) {
        fprintf(stderr, "%s:%d: kcuda_blas_create: out of host memory\n", __FILE__, __LINE__);
        return NULL;
    }
    b->device = device;
    err = cudaMalloc(&b->workspace, KCUDA_GEMM_WORKSPACE);
    if (err != cudaSuccess) {
        KCUDA_REPORT(err, "cudaMalloc(cuBLASLt workspace)");
        (void)cudaGetLastError();
        free(b);
        return NULL;
    }
    cublasStatus_t st = cublasLtCreate(&b->lt);
    if (st != CUBLAS_STATUS_SUCCESS) {
        fprintf(stderr, "%s:%d: cublasLtCreate failed: %s\n", __FILE__, __LINE__,
                cublasLtGetStatusName(st));
        cudaFree(b->workspace);
        free(b);
        return NULL;
    }
    return b;
}

size_t kcuda_blas_workspace_bytes(void)
{
    return KCUDA_GEMM_WORKSPACE;
}

void kcuda_blas_destroy(kcuda_blas *b)
{
    if (!b)
        return;
    /* The plans live inside b (Init'ed in place), so there is nothing to
     * destroy for them. cudaFree waits for work still using the workspace. */
    cublasLtDestroy(b->lt);
    cudaFree(b->workspace);
    free(b);
}

/* The largest power of two, up to 256 (cuBLASLt's default assumption), that
 * divides the address. */
static uint64_t ptr_align(const void *p)
{
    const uintptr_t a = (uintptr_t)p;
    uint64_t al = 256;
    while (al > 1 && (a & (al - 1)) != 0)
        al >>= 1;
    return al;
}

static cudaError_t plan_init(kcuda_blas *b, gemm_plan *p, const gemm_key *k)
{
    const cudaDataType in = k->type == KCUDA_GEMM_BF16 ? CUDA_R_16BF : CUDA_R_16F;
    const int32_t op_w = k->layout == KCUDA_W_NK ? CUBLAS_OP_T : CUBLAS_OP_N;
    const int32_t op_x = CUBLAS_OP_N;

    LT_CHECK(cublasLtMatmulDescInit(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    LT_CHECK(cublasLtMatmulDescSetAttribute(&p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_w,
                                            sizeof op_w));
    LT_CHECK(cublasLtMatmulDescSetAttribute(&p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_x,
                                            sizeof op_x));
    if (k->layout == KCUDA_W_NK)
        LT_CHECK(cublasLtMatrixLayoutInit(&p->w_desc, in, k->K, k->N, (int64_t)k->ldw));
    else
        LT_CHECK(cublasLtMatrixLayoutInit(&p->w_desc, in, k->N, k->K, (int64_t)k->ldw));
    LT_CHECK(cublasLtMatrixLayoutInit(&p->x_desc, in, k->K, k->T, (int64_t)k->ldx));
    LT_CHECK(cublasLtMatrixLayoutInit(&p->y_desc, CUDA_R_32F, k->N, k->T, (int64_t)k->ldy));

    /* The heuristic assumes 256-byte aligned pointers unless told otherwise;
     * sub-matrices (a TP chunk, a gathered row range) may be less aligned. */
    cublasLtMatmulPreferenceOpaque_t pref;
    const uint64_t ws = KCUDA_GEMM_WORKSPACE;
    const uint32_t al_w = (uint32_t)k->align_w, al_x = (uint32_t)k->align_x,
                   al_y = (uint32_t)k->align_y;
    LT_CHECK(cublasLtMatmulPreferenceInit(&pref));
    LT_CHECK(cublasLtMatmulPreferenceSetAttribute(&pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                  &ws, sizeof ws));
    LT_CHECK(cublasLtMatmulPreferenceSetAttribute(&pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                                  &al_w, sizeof al_w));
    LT_CHECK(cublasLtMatmulPreferenceSetAttribute(&pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                                  &al_x, sizeof al_x));
    LT_CHECK(cublasLtMatmulPreferenceSetAttribute(&pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                                                  &al_y, sizeof al_y));
    LT_CHECK(cublasLtMatmulPreferenceSetAttribute(&pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                                                  &al_y, sizeof al_y));

    cublasLtMatmulHeuristicResult_t res;
    int n_res = 0;
    memset(&res, 0, sizeof res);
    LT_CHECK(cublasLtMatmulAlgoGetHeuristic(b->lt, &p->desc, &p->w_desc, &p->x_desc, &p->y_desc,
                                            &p->y_desc, &pref, 1, &res, &n_res));
    if (n_res < 1 || res.state != CUBLAS_STATUS_SUCCESS) {
        fprintf(stderr,
                "%s:%d: cuBLASLt has no algorithm for %s %s T=%llu N=%llu K=%llu "
                "ldw=%llu ldx=%llu ldy=%llu alignments %llu/%llu/%llu\n",
                __FILE__, __LINE__, k->type == KCUDA_GEMM_BF16 ? "bf16" : "f16",
                k->layout == KCUDA_W_NK ? "NK" : "KN", (unsigned long long)k->T,
                (unsigned long long)k->N, (unsigned long long)k->K, (unsigned long long)k->ldw,
                (unsigned long long)k->ldx, (unsigned long long)k->ldy,
                (unsigned long long)k->align_w, (unsigned long long)k->align_x,
                (unsigned long long)k->align_y);
        return cudaErrorNotSupported;
    }
    p->algo = res.algo;
    return cudaSuccess;
}

static uint64_t key_hash(const gemm_key *k)
{
    const uint64_t f[] = {k->layout, k->type, k->T, k->N, k->K, k->ldw, k->ldx, k->ldy,
                          k->align_w, k->align_x, k->align_y};
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a over whole fields, then a final mix */
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
        h = (h ^ f[i]) * 0x100000001b3ull;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    return h ^ (h >> 33);
}

/* The plan for key, from the cache or made now in the least recently used
 * slot, and marked used. NULL with *err set when a new plan cannot be made. */
static gemm_plan *plan_get(kcuda_blas *b, const gemm_key *key, cudaError_t *err)
{
    const uint64_t h = key_hash(key);
    for (size_t i = 0; i < KCUDA_GEMM_PLANS; i++) {
        if (b->hash[i] == h && b->last_use[i] != 0 &&
            memcmp(&b->plans[i].key, key, sizeof *key) == 0) {
            b->last_use[i] = ++b->clock;
            return &b->plans[i];
        }
    }
    size_t victim = 0;
    for (size_t i = 1; i < KCUDA_GEMM_PLANS; i++)
        if (b->last_use[i] < b->last_use[victim])
            victim = i;
    /* Until plan_init succeeds the slot is empty: a failure leaves no
     * half-made plan behind. */
    b->last_use[victim] = 0;
    *err = plan_init(b, &b->plans[victim], key);
    if (*err != cudaSuccess)
        return NULL;
    b->plans[victim].key = *key;
    b->hash[victim] = h;
    b->last_use[victim] = ++b->clock;
    return &b->plans[victim];
}

cudaError_t kcuda_gemm(kcuda_blas *b, float *Y, size_t ldy, const void *X, size_t ldx, const void *W,
                       size_t ldw, kcuda_w_layout layout, kcuda_gemm_type type, size_t T, size_t N,
                       size_t K, float beta, cudaStream_t stream)
{
    if ((layout != KCUDA_W_NK && layout != KCUDA_W_KN) ||
        (type != KCUDA_GEMM_BF16 && type != KCUDA_GEMM_F16))
        return cudaErrorInvalidValue;
    if (T == 0 || N == 0 || K == 0)
        return cudaSuccess;
    if (!b || !Y || !X || !W)
        return cudaErrorInvalidValue;
    /* cuBLASLt wants ld >= rows of the column-major view even for a single
     * column, so these hold for T = 1 too. */
    if (ldy < N || ldx < K || ldw < (layout == KCUDA_W_NK ? K : N))
        return cudaErrorInvalidValue;
    if (T > INT32_MAX || N > INT32_MAX || K > INT32_MAX || ldy > INT32_MAX || ldx > INT32_MAX ||
        ldw > INT32_MAX)
        return cudaErrorInvalidValue;

    /* The workspace and the plans belong to one device. */
    int device = -1;
    CUDA_CHECK(cudaGetDevice(&device));
    if (device != b->device) {
        fprintf(stderr, "%s:%d: kcuda_gemm: handle made on device %d, called on device %d\n",
                __FILE__, __LINE__, b->device, device);
        return cudaErrorInvalidDevice;
    }

    const gemm_key key = {
        .layout = (uint64_t)layout, .type = (uint64_t)type,
        .T = T, .N = N, .K = K, .ldw = ldw, .ldx = ldx, .ldy = ldy,
        .align_w = ptr_align(W), .align_x = ptr_align(X), .align_y = ptr_align(Y),
    };
    cudaError_t err = cudaSuccess;
    gemm_plan *p = plan_get(b, &key, &err);
    if (!p)
        return err;

    /* Host pointer mode: alpha and beta are read during this call, so the
     * values are baked into a captured graph. */
    const float alpha = 1.0f;
    LT_CHECK(cublasLtMatmul(b->lt, &p->desc, &alpha, W, &p->w_desc, X, &p->x_desc, &beta, Y,
                            &p->y_desc, Y, &p->y_desc, &p->algo, b->workspace,
                            KCUDA_GEMM_WORKSPACE, stream));
    return cudaSuccess;
}
