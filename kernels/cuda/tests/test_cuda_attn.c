/* The paged attention kernels of kcuda_attn.h (KV append, decode dense and
 * sparse with split-KV, prefill) against the plain C references of
 * ref/kcuda_attn_ref.h, on fresh random pools whose slot ids are shuffled.
 * P = page size, hd = head dim, qpk = query heads per KV head.
 *
 * Tolerances:
 *   KV append: stored K/V f16 bits and the key min/max boxes bit-identical
 *     (both round to nearest even; the box sees the tokens in the same order).
 *   Attention f32 output: |got - want| <= 2e-6 + 1e-3 |want| per element
 *     (f32 dot products, exp2f and accumulation in a different order vs a
 *     double reference; the expected error is ~1e-7, and one token more or
 *     less at 33K context moves outputs by ~3e-5, well outside the bound).
 *   Attention bf16 output: within 1 ulp of bf16(round to nearest even) of
 *     the f32 output of the same call.
 *   Bit-identical by construction: sparse over every page vs dense, the same
 *     call twice, bf16-only vs bf16 of the f32 call, and prefill in two
 *     chunks vs one (with the pools after both equal too).
 * Output padding (ld_out > row width) must stay untouched.
 *
 * The host-only parts (f16 reference conversion, argument checks, split and
 * workspace sizes) run everywhere; the device cases need a GPU, and without
 * one the program prints "SKIP: no CUDA device" and exits 77.
 * PROTEUS_TEST_SEED overrides the seed. */
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "kcuda.h"
#include "kcuda_attn.h"
#include "ref/kcuda_attn_ref.h"
#include "kcuda_test.h"

_Static_assert(sizeof(kcuda_run) == sizeof(kcuda_ref_run), "kcuda_ref_run mirrors kcuda_run");

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))
#define ATOL 2e-6f
#define RTOL 1e-3f

static size_t ceil_div(size_t a, size_t b) { return (a + b - 1) / b; }

static void shuffle_i32(int32_t *v, size_t n)
{
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)(rng_next() % i);
        int32_t t = v[i - 1];
        v[i - 1] = v[j];
        v[j] = t;
    }
}

static int32_t *iota_i32(size_t n)
{
    if (n > ((size_t)1 << 30))
        abort(); /* test sizes are small; also tells the compiler so */
    int32_t *v = calloc(n + 1, sizeof *v);
    for (size_t i = 0; i < n; i++)
        v[i] = (int32_t)i;
    return v;
}

/* ---- host-only checks ---------------------------------------------------- */

static float f32_of_bits(uint32_t b)
{
    float f;
    memcpy(&f, &b, sizeof f);
    return f;
}

static void test_f16_ref(void)
{
    static const struct { float f; uint16_t h; } cases[] = {
        {1.0f, 0x3c00}, {-2.0f, 0xc000}, {0.1f, 0x2e66}, {65504.0f, 0x7bff},
        {65519.0f, 0x7bff}, {65520.0f, 0x7c00}, {1e6f, 0x7c00}, {-1e6f, 0xfc00},
        {0.0f, 0x0000}, {-0.0f, 0x8000},
        {5.9604644775390625e-08f, 0x0001},  /* 2^-24, smallest subnormal */
        {2.98023223876953125e-08f, 0x0000}, /* 2^-25: tie, to even (0) */
        {4.470348358154296875e-08f, 0x0001}, /* 1.5 * 2^-25 */
        {1.78813934326171875e-07f, 0x0003},  /* 3 * 2^-24 */
        {1.49011611938476562e-07f, 0x0002},  /* 2.5 units: tie, to even */
        {6.103515625e-05f, 0x0400},          /* 2^-14, smallest normal */
        {6.0975551605224609375e-05f, 0x03ff}, /* largest subnormal */
        {1.00048828125f, 0x3c00},            /* 1 + 2^-11: tie, to even */
        {1.00146484375f, 0x3c02},            /* 1 + 3 * 2^-11: tie, to even */
        {1.0009765625f, 0x3c01},
    };
    bool ok = true;
    for (size_t i = 0; i < COUNT(cases); i++) {
        uint16_t h = kcuda_ref_f32_to_f16(cases[i].f);
        if (h != cases[i].h) {
            printf("     f16(%.9g) = 0x%04x, want 0x%04x\n", cases[i].f, h, cases[i].h);
            ok = false;
        }
    }
    uint16_t nan = kcuda_ref_f32_to_f16(NAN);
    ok = ok && (nan & 0x7c00) == 0x7c00 && (nan & 0x03ff) != 0;
    /* Every non-NaN f16 survives the round trip; widening is exact. */
    for (uint32_t b = 0; b < 65536 && ok; b++) {
        uint16_t h = (uint16_t)b;
        if ((h & 0x7c00) == 0x7c00 && (h & 0x03ff))
            continue;
        if (kcuda_ref_f32_to_f16(kcuda_ref_f16_to_f32(h)) != h) {
            printf("     round trip of 0x%04x fails\n", h);
            ok = false;
        }
    }
    ok = ok && kcuda_ref_f16_to_f32(0x3555) == 0.333251953125f && kcuda_ref_f16_to_f32(0x0001) ==
                                                                          5.9604644775390625e-08f;
    report(ok, "reference f16 conversion: known values, ties to even, subnormals, round trips");

    ok = kcuda_ref_f32_to_bf16(1.0f) == 0x3f80 &&
         kcuda_ref_f32_to_bf16(f32_of_bits(0x3f808000u)) == 0x3f80 && /* tie, to even */
         kcuda_ref_f32_to_bf16(f32_of_bits(0x3f818000u)) == 0x3f82 && /* tie, to even */
         kcuda_ref_f32_to_bf16(f32_of_bits(0x3f808001u)) == 0x3f81 &&
         kcuda_ref_f32_to_bf16(-0.0f) == 0x8000;
    report(ok, "reference bf16 conversion: ties to even");
}

/* A decode/prefill argument set that passes every host-side check: the
 * Llama-3-8B shape, 8 runs, 4K context. The pointers are host dummies and
 * are never launched with. */
static uint16_t dummy_data[64] __attribute__((aligned(16)));
static float dummy_f[64] __attribute__((aligned(16)));
static int32_t dummy_i[64];
static kcuda_run dummy_runs[8];

static kcuda_attn_args good_args(void)
{
    kcuda_attn_args a;
    memset(&a, 0, sizeof a);
    a.in.q = dummy_f;
    a.in.k = dummy_f;
    a.in.v = dummy_f;
    a.in.ld = 6 * 128 * 8;
    a.in.group_stride = 6 * 128;
    a.out_f32 = dummy_f;
    a.ld_out = 32 * 128;
    a.kv.data = dummy_data;
    a.kv.minmax = dummy_f;
    a.kv.n_slots = 100000;
    a.kv.page_size = 16;
    a.kv.head_dim = 128;
    a.bt.block_tables = dummy_i;
    a.bt.bt_stride = 8192;
    a.runs = dummy_runs;
    a.n_runs = 8;
    a.n_kv_heads = 8;
    a.q_per_kv = 4;
    a.head_dim = 128;
    a.scale = 0.08838834764831845f;
    a.max_ctx = 4096;
    return a;
}

static void test_invalid_args(void)
{
    /* These return before touching the device, so they run without a GPU. */
    const cudaError_t inval = cudaErrorInvalidValue;
    kcuda_kv_layer kv = {dummy_data, dummy_f, 1000, 16, 128};
    kcuda_qkv src = {dummy_f, dummy_f, dummy_f, 768, 768};
    kcuda_pages bt = {dummy_i, 64};
    bool ok = kcuda_kv_append(NULL, NULL, NULL, NULL, 0, 8, 0) == cudaSuccess &&
              kcuda_kv_append(NULL, &src, &bt, dummy_runs, 1, 1, 0) == inval &&
              kcuda_kv_append(&kv, NULL, &bt, dummy_runs, 1, 1, 0) == inval &&
              kcuda_kv_append(&kv, &src, NULL, dummy_runs, 1, 1, 0) == inval &&
              kcuda_kv_append(&kv, &src, &bt, NULL, 1, 1, 0) == inval &&
              kcuda_kv_append(&kv, &src, &bt, dummy_runs, 1, 0, 0) == inval;
    kcuda_kv_layer bad = kv;
    bad.head_dim = 12;
    ok = ok && kcuda_kv_append(&bad, &src, &bt, dummy_runs, 1, 1, 0) == inval;
    bad.head_dim = 264;
    ok = ok && kcuda_kv_append(&bad, &src, &bt, dummy_runs, 1, 1, 0) == inval;
    bad = kv;
    bad.page_size = 0;
    ok = ok && kcuda_kv_append(&bad, &src, &bt, dummy_runs, 1, 1, 0) == inval;
    bad = kv;
    bad.data = dummy_data + 1; /* 2 bytes off: 16-byte stores impossible */
    ok = ok && kcuda_kv_append(&bad, &src, &bt, dummy_runs, 1, 1, 0) == inval;
    bad = kv;
    bad.minmax = dummy_f + 1;
    ok = ok && kcuda_kv_append(&bad, &src, &bt, dummy_runs, 1, 1, 0) == inval;
    kcuda_qkv bad_src = src;
    bad_src.v = NULL;
    ok = ok && kcuda_kv_append(&kv, &bad_src, &bt, dummy_runs, 1, 1, 0) == inval;
    report(ok, "kv_append rejects bad arguments, accepts zero runs");

    /* good_args passes the checks: its workspace for 3 splits is not 0. The
     * workspace and split queries look at the shape only, so a missing
     * pointer leaves them be. */
    const kcuda_attn_args g = good_args();
    ok = kcuda_attn_decode_workspace(&g, 3) > 0;
    kcuda_attn_args a;
#define DECODE_BAD(stmt, shape)                                                   \
    do {                                                                          \
        a = g;                                                                    \
        stmt;                                                                     \
        const size_t ws_ = kcuda_attn_decode_workspace(&a, 3);                    \
        if (kcuda_attn_decode(&a, NULL, 1, NULL, 0, 0) != inval ||                \
            kcuda_attn_prefill(&a, 0) != inval || (shape ? ws_ != 0 : ws_ == 0)) { \
            printf("     not rejected: %s\n", #stmt);                             \
            ok = false;                                                           \
        }                                                                         \
    } while (0)
    DECODE_BAD(a.in.q = NULL, false);
    DECODE_BAD(a.out_f32 = NULL, false);
    DECODE_BAD(a.kv.data = NULL, false);
    DECODE_BAD(a.kv.data = dummy_data + 4, false);
    DECODE_BAD(a.kv.n_slots = 0, false);
    DECODE_BAD(a.bt.block_tables = NULL, false);
    DECODE_BAD(a.runs = NULL, false);
    DECODE_BAD(a.kv.head_dim = 64, true);
    DECODE_BAD((a.head_dim = 100, a.kv.head_dim = 100), true);
    DECODE_BAD((a.head_dim = 264, a.kv.head_dim = 264), true);
    DECODE_BAD((a.head_dim = 0, a.kv.head_dim = 0), true);
    DECODE_BAD(a.kv.page_size = 0, true);
    DECODE_BAD(a.n_kv_heads = 0, true);
    DECODE_BAD(a.q_per_kv = 0, true);
    DECODE_BAD(a.ld_out = 32 * 128 - 1, true);
    DECODE_BAD(a.scale = NAN, true);
    DECODE_BAD(a.max_ctx = 0, true);
    DECODE_BAD(a.max_ctx = 8192 * 16 + 1, true); /* more pages than a block-table row */
    DECODE_BAD(a.bt.bt_stride = 0, true);
#undef DECODE_BAD
    ok = ok && kcuda_attn_decode(NULL, NULL, 1, NULL, 0, 0) == inval &&
         kcuda_attn_prefill(NULL, 0) == inval;
    a = g;
    a.n_runs = 0;
    ok = ok && kcuda_attn_decode(&a, NULL, 0, NULL, 0, 0) == cudaSuccess &&
         kcuda_attn_prefill(&a, 0) == cudaSuccess;
    /* Splits: out of range, or more than one without (enough) workspace. */
    a = g;
    const size_t ws3 = kcuda_attn_decode_workspace(&a, 3);
    ok = ok && kcuda_attn_decode(&a, NULL, -1, NULL, 0, 0) == inval &&
         kcuda_attn_decode(&a, NULL, 100000, NULL, 0, 0) == inval &&
         kcuda_attn_decode(&a, NULL, 3, NULL, 0, 0) == inval &&
         kcuda_attn_decode(&a, NULL, 3, dummy_f, ws3 - 1, 0) == inval &&
         kcuda_attn_decode(&a, NULL, 3, (char *)dummy_f + 4, ws3, 0) == inval;
    if (kcuda_attn_decode_splits(&a) > 1)
        ok = ok && kcuda_attn_decode(&a, NULL, 0, NULL, 0, 0) == inval;
    /* Sparse lists need their counts and a stride. */
    kcuda_page_list pl = {dummy_i, NULL, 64};
    ok = ok && kcuda_attn_decode(&a, &pl, 1, NULL, 0, 0) == inval;
    pl.n_sel = dummy_i;
    pl.sel_stride = 0;
    ok = ok && kcuda_attn_decode(&a, &pl, 1, NULL, 0, 0) == inval;
    report(ok, "attn_decode / attn_prefill reject bad arguments, accept zero runs");
}

static void test_splits_workspace(void)
{
    kcuda_attn_args a = good_args();
    bool ok = true;
    static const uint32_t ctxs[] = {1, 100, 4096, 32768, 131072};
    for (size_t i = 0; i < COUNT(ctxs); i++) {
        for (size_t n_runs = 1; n_runs <= 64; n_runs *= 8) {
            a.max_ctx = ctxs[i];
            a.n_runs = n_runs;
            const int ns = kcuda_attn_decode_splits(&a);
            const size_t pages = ceil_div(ctxs[i], 16);
            const size_t unit = n_runs * 8 * 4 * (128 + 2) * sizeof(float);
            /* at least one split, never more splits than 16-page ranges */
            bool this_ok = ns >= 1 && ns <= 256 && (size_t)ns <= ceil_div(pages, 16) &&
                           kcuda_attn_decode_workspace(&a, 0) == kcuda_attn_decode_workspace(&a, ns) &&
                           kcuda_attn_decode_workspace(&a, 1) == 0 &&
                           kcuda_attn_decode_workspace(&a, 3) == 3 * unit &&
                           kcuda_attn_decode_workspace(&a, 256) == 256 * unit &&
                           kcuda_attn_decode_workspace(&a, 257) == 0;
            if (!this_ok)
                printf("     max_ctx %u, %zu runs: %d splits\n", ctxs[i], n_runs, ns);
            ok = ok && this_ok;
        }
    }
    /* one sequence of 128K on 8 KV heads: 8 blocks without splitting, far
     * too few for any GPU */
    a.max_ctx = 131072;
    a.n_runs = 1;
    ok = ok && kcuda_attn_decode_splits(&a) > 1;
    a.max_ctx = 100;
    ok = ok && kcuda_attn_decode_splits(&a) == 1;
    ok = ok && kcuda_attn_decode_splits(NULL) == 1 && kcuda_attn_decode_workspace(NULL, 3) == 0;
    /* Sizing before any run is staged: the shape alone gives the same answers. */
    kcuda_attn_args shape;
    memset(&shape, 0, sizeof shape);
    a = good_args();
    shape.ld_out = a.ld_out;
    shape.kv.page_size = a.kv.page_size;
    shape.kv.head_dim = a.kv.head_dim;
    shape.bt.bt_stride = a.bt.bt_stride;
    shape.n_runs = a.n_runs;
    shape.n_kv_heads = a.n_kv_heads;
    shape.q_per_kv = a.q_per_kv;
    shape.head_dim = a.head_dim;
    shape.scale = a.scale;
    shape.max_ctx = a.max_ctx;
    ok = ok && kcuda_attn_decode_splits(&shape) == kcuda_attn_decode_splits(&a) &&
         kcuda_attn_decode_workspace(&shape, 0) == kcuda_attn_decode_workspace(&a, 0) &&
         kcuda_attn_decode_workspace(&shape, 5) == kcuda_attn_decode_workspace(&a, 5);
    report(ok, "decode splits in [1, pages / 16], workspace = runs x heads x splits x (hd + 2) floats");
}

/* ---- device helpers ------------------------------------------------------ */

/* cudaMemcpy from pageable memory may return before its DMA lands, and the
 * kernels run on a non-blocking stream that does not wait for it: uploads
 * are settled before each launch. */
static void settle(void) { CUDA_CHECK_FATAL(cudaDeviceSynchronize()); }

/* One layer of a KV pool, host mirror and device copy, with block tables of
 * n_rows sequence rows. Slot ids are a random permutation; block-table
 * entries past a row's pages, and every unwritten K/V element, hold f16 NaN
 * so that reading them poisons the result. */
typedef struct {
    size_t n_slots, P, hd, n_kv, n_rows, bt_stride;
    uint16_t *data;
    float *minmax;
    int32_t *bt;
    uint16_t *d_data;
    float *d_minmax;
    int32_t *d_bt;
} pool;

static size_t pool_data_elems(const pool *p) { return p->n_slots * 2 * p->P * p->hd; }
static size_t pool_mm_elems(const pool *p) { return p->n_slots * 2 * p->hd; }

static void pool_init(pool *p, size_t n_rows, size_t n_kv, size_t hd, size_t P,
                      const size_t *ctx_of_row)
{
    memset(p, 0, sizeof *p);
    p->P = P, p->hd = hd, p->n_kv = n_kv, p->n_rows = n_rows;
    size_t total = 0, max_pages = 0;
    for (size_t s = 0; s < n_rows; s++) {
        size_t np = ceil_div(ctx_of_row[s], P);
        total += np * n_kv;
        max_pages = np > max_pages ? np : max_pages;
    }
    p->n_slots = total + 9; /* spare slots, one of them the poison page */
    p->bt_stride = max_pages + 3;
    int32_t *perm = iota_i32(p->n_slots);
    shuffle_i32(perm, p->n_slots);
    const int32_t poison = perm[p->n_slots - 1];
    p->bt = malloc(n_rows * n_kv * p->bt_stride * sizeof *p->bt);
    size_t next = 0;
    for (size_t s = 0; s < n_rows; s++)
        for (size_t h = 0; h < n_kv; h++)
            for (size_t j = 0; j < p->bt_stride; j++)
                p->bt[(s * n_kv + h) * p->bt_stride + j] =
                    j < ceil_div(ctx_of_row[s], P) ? perm[next++] : poison;
    free(perm);

    p->data = malloc(pool_data_elems(p) * sizeof *p->data);
    for (size_t i = 0; i < pool_data_elems(p); i++)
        p->data[i] = 0x7e00; /* f16 NaN */
    p->minmax = malloc(pool_mm_elems(p) * sizeof *p->minmax);
    for (size_t i = 0; i < pool_mm_elems(p); i++) /* garbage that a fresh box must ignore */
        p->minmax[i] = rng_uniform(-1e4f, 1e4f);
    p->d_data = dev_upload(p->data, pool_data_elems(p) * sizeof *p->data);
    p->d_minmax = dev_upload(p->minmax, pool_mm_elems(p) * sizeof *p->minmax);
    p->d_bt = dev_upload(p->bt, n_rows * n_kv * p->bt_stride * sizeof *p->bt);
}

static void pool_free(pool *p)
{
    cudaFree(p->d_data), cudaFree(p->d_minmax), cudaFree(p->d_bt);
    free(p->data), free(p->minmax), free(p->bt);
}

static kcuda_kv_layer pool_layer(const pool *p)
{
    kcuda_kv_layer l = {p->d_data, p->d_minmax, (uint32_t)p->n_slots, (uint32_t)p->P,
                        (uint32_t)p->hd};
    return l;
}
static kcuda_ref_kv pool_ref(const pool *p)
{
    kcuda_ref_kv k = {p->data, p->minmax, (uint32_t)p->P, (uint32_t)p->hd};
    return k;
}

/* True when the device pool equals the host mirror bit for bit. */
static bool pool_matches(const pool *p)
{
    size_t nd = pool_data_elems(p), nm = pool_mm_elems(p);
    uint16_t *d = malloc(nd * sizeof *d);
    float *m = malloc(nm * sizeof *m);
    dev_download(d, p->d_data, nd * sizeof *d);
    dev_download(m, p->d_minmax, nm * sizeof *m);
    bool ok = true;
    for (size_t i = 0; i < nd && ok; i++) {
        if (d[i] != p->data[i]) {
            printf("     K/V element %zu (slot %zu): got 0x%04x want 0x%04x\n", i,
                   i / (2 * p->P * p->hd), d[i], p->data[i]);
            ok = false;
        }
    }
    for (size_t i = 0; i < nm && ok; i++) {
        if (memcmp(&m[i], &p->minmax[i], sizeof(float)) != 0) {
            printf("     min/max element %zu (slot %zu, %s): got %.9g want %.9g\n", i,
                   i / (2 * p->hd), (i / p->hd) % 2 ? "max" : "min", m[i], p->minmax[i]);
            ok = false;
        }
    }
    free(d), free(m);
    return ok;
}

/* Fused rows in the chunk layout: per KV group, qpk query heads, K, V; rows
 * ld = n_kv * (qpk + 2) * hd + 5 floats apart. Queries uniform in
 * [-qscale, qscale], keys and values in [-1, 1]; with `specials`, about 3% of
 * K/V values are zeros of either sign, f16 subnormals, or values that round
 * to the f16 maximum or overflow to infinity. */
typedef struct {
    float *h, *d;
    size_t rows, ld, gs;
    kcuda_qkv dev;
    kcuda_ref_qkv ref;
} qkv_buf;

static void qkv_init(qkv_buf *b, size_t rows, size_t n_kv, size_t qpk, size_t hd, float qscale,
                     bool specials)
{
    static const float sp[] = {0.0f, -0.0f, 3e-6f, -7e-8f, 6e-5f, 65504.0f, 70000.0f, -1e5f, 1e-8f, 65519.0f};
    b->rows = rows;
    b->gs = (qpk + 2) * hd;
    b->ld = n_kv * b->gs + 5;
    size_t n = rows * b->ld;
    b->h = malloc((n ? n : 1) * sizeof *b->h);
    for (size_t t = 0; t < rows; t++) {
        for (size_t i = 0; i < b->ld; i++) {
            size_t in_group = i % b->gs;
            float v;
            if (i >= n_kv * b->gs)
                v = NAN; /* the pad between rows is never read */
            else if (in_group < qpk * hd)
                v = rng_uniform(-qscale, qscale);
            else if (specials && rng_next() % 32 == 0)
                v = sp[rng_next() % COUNT(sp)];
            else
                v = rng_uniform(-1.0f, 1.0f);
            b->h[t * b->ld + i] = v;
        }
    }
    b->d = dev_upload(b->h, n * sizeof *b->h);
    kcuda_qkv dq = {b->d, b->d + qpk * hd, b->d + (qpk + 1) * hd, b->ld, b->gs};
    kcuda_ref_qkv rq = {b->h, b->h + qpk * hd, b->h + (qpk + 1) * hd, b->ld, b->gs};
    b->dev = dq;
    b->ref = rq;
}

static void qkv_free(qkv_buf *b)
{
    cudaFree(b->d);
    free(b->h);
}

/* Appends on the device and in the host mirror. */
static bool append_both(pool *p, const qkv_buf *b, const kcuda_run *runs, size_t n_runs)
{
    kcuda_kv_layer l = pool_layer(p);
    kcuda_pages bt = {p->d_bt, p->bt_stride};
    kcuda_run *d_runs = dev_upload(runs, n_runs * sizeof *runs);
    settle();
    bool ok = kcuda_kv_append(&l, &b->dev, &bt, d_runs, n_runs, p->n_kv, stream) == cudaSuccess;
    CUDA_CHECK_FATAL(cudaStreamSynchronize(stream));
    cudaFree(d_runs);
    kcuda_ref_kv rk = pool_ref(p);
    kcuda_ref_kv_append(&rk, &b->ref, p->bt, p->bt_stride, (const kcuda_ref_run *)runs, n_runs,
                        p->n_kv);
    return ok;
}

/* Appends the first ctx[r] - skip[r] positions of each row (history) in one
 * batched call of runs starting at position 0. */
static bool append_history(pool *p, const size_t *hist_of_row)
{
    size_t rows = 0, n_runs = 0;
    for (size_t s = 0; s < p->n_rows; s++)
        rows += hist_of_row[s], n_runs += hist_of_row[s] > 0;
    if (n_runs == 0)
        return true;
    qkv_buf b;
    qkv_init(&b, rows, p->n_kv, 0, p->hd, 0.0f, false);
    kcuda_run *runs = malloc(n_runs * sizeof *runs);
    size_t row = 0, k = 0;
    for (size_t s = 0; s < p->n_rows; s++) {
        if (hist_of_row[s] == 0)
            continue;
        kcuda_run r = {(int32_t)row, (int32_t)hist_of_row[s], 0, (int32_t)s};
        runs[k++] = r;
        row += hist_of_row[s];
    }
    bool ok = append_both(p, &b, runs, n_runs);
    free(runs);
    qkv_free(&b);
    return ok;
}

static void fill_f32(float *v, size_t n, float x)
{
    for (size_t i = 0; i < n; i++)
        v[i] = x;
}

/* Compares the first `width` columns of T rows (ld apart) within the
 * attention tolerance, checks that the columns past width still hold the
 * NaN sentinel, and that bf16 (if given) is within 1 ulp of bf16(got). */
static bool check_rows(const float *got, const uint16_t *got_bf16, const float *want, size_t T,
                       size_t width, size_t ld)
{
    float *g = malloc(T * width * sizeof *g), *w = malloc(T * width * sizeof *w);
    bool pad_ok = true, bf_ok = true;
    for (size_t t = 0; t < T; t++) {
        memcpy(g + t * width, got + t * ld, width * sizeof *g);
        memcpy(w + t * width, want + t * ld, width * sizeof *w);
        for (size_t i = width; i < ld; i++)
            pad_ok = pad_ok && isnan(got[t * ld + i]) && (!got_bf16 || got_bf16[t * ld + i] == 0x7fc0);
        for (size_t i = 0; got_bf16 && i < width && bf_ok; i++) {
            int d = (int)got_bf16[t * ld + i] - (int)kcuda_ref_f32_to_bf16(got[t * ld + i]);
            if (d < -1 || d > 1) {
                printf("     bf16 at row %zu col %zu: 0x%04x, bf16(f32 %.9g) = 0x%04x\n", t, i,
                       got_bf16[t * ld + i], got[t * ld + i], kcuda_ref_f32_to_bf16(got[t * ld + i]));
                bf_ok = false;
            }
        }
    }
    if (!pad_ok)
        printf("     output padding was written\n");
    bool ok = close_enough(g, w, T * width, RTOL, ATOL) && pad_ok && bf_ok;
    free(g), free(w);
    return ok;
}

static bool bits_equal_u16(const uint16_t *a, const uint16_t *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (a[i] != b[i]) {
            printf("     first difference at %zu: 0x%04x vs 0x%04x\n", i, a[i], b[i]);
            return false;
        }
    }
    return true;
}

/* ---- device cases -------------------------------------------------------- */

/* Three steps of appends to sequences of mixed lengths, with special
 * values; each step's runs start where the previous one stopped (mid-page
 * for most), in a batch whose rows and block-table rows are shuffled. */
static void test_append(size_t hd, size_t P, size_t n_kv)
{
    static const size_t steps[3][6] = {{1, 15, 16, 17, 300, 37}, {1, 5, 20, 1, 33, 64}, {1, 1, 1, 1, 1, 1}};
    const size_t n_seq = 6, n_rows = 8;
    size_t ctx_of_row[8] = {0};
    int32_t *seq_of = iota_i32(n_rows);
    shuffle_i32(seq_of, n_rows);
    for (size_t r = 0; r < n_seq; r++)
        ctx_of_row[seq_of[r]] = steps[0][r] + steps[1][r] + steps[2][r];
    pool p;
    pool_init(&p, n_rows, n_kv, hd, P, ctx_of_row);
    size_t pos[6] = {0};
    bool ok = true;
    for (size_t st = 0; st < 3; st++) {
        size_t T = 0;
        for (size_t r = 0; r < n_seq; r++)
            T += steps[st][r];
        qkv_buf b;
        qkv_init(&b, T, n_kv, 2, hd, 1.0f, true);
        int32_t *order = iota_i32(n_seq); /* rows of the step in shuffled run order */
        shuffle_i32(order, n_seq);
        kcuda_run runs[6];
        size_t row = 0;
        for (size_t k = 0; k < n_seq; k++) {
            size_t r = (size_t)order[k];
            kcuda_run run = {(int32_t)row, (int32_t)steps[st][r], (int32_t)pos[r], seq_of[r]};
            runs[r] = run;
            row += steps[st][r];
            pos[r] += steps[st][r];
        }
        ok = ok && append_both(&p, &b, runs, n_seq) && pool_matches(&p);
        free(order);
        qkv_free(&b);
    }
    char name[128];
    snprintf(name, sizeof name, "kv_append hd=%zu P=%zu kv_heads=%zu, 3 steps (bitwise)", hd, P, n_kv);
    report(ok, name);
    free(seq_of);
    pool_free(&p);
}

typedef struct {
    size_t hd, P, qpk, n_kv;
    size_t ctx[8], n_ctx; /* context length of each decode run, its own token included */
    float qscale;
} decode_cfg;

/* Builds the batch, appends history and the step's token, then runs decode
 * attention dense and sparse with n_splits 1, 3 and automatic. */
static void test_decode(const decode_cfg *c)
{
    const size_t n_runs = c->n_ctx, n_rows = n_runs + 2, hd = c->hd, P = c->P;
    const size_t heads = c->n_kv * c->qpk, width = heads * hd, ld_out = width + 8;
    char name[200], what[120];
    snprintf(what, sizeof what, "hd=%zu P=%zu qpk=%zu kv_heads=%zu ctx=%zu..%zu", hd, P, c->qpk,
             c->n_kv, c->ctx[0], c->ctx[n_runs - 1]);

    int32_t *seq_of = iota_i32(n_rows), *row_of = iota_i32(n_runs);
    shuffle_i32(seq_of, n_rows);
    shuffle_i32(row_of, n_runs);
    size_t ctx_of_row[16] = {0}, hist_of_row[16] = {0}, max_ctx = 0;
    for (size_t r = 0; r < n_runs; r++) {
        ctx_of_row[seq_of[r]] = c->ctx[r];
        hist_of_row[seq_of[r]] = c->ctx[r] - 1;
        max_ctx = c->ctx[r] > max_ctx ? c->ctx[r] : max_ctx;
    }
    pool p;
    pool_init(&p, n_rows, c->n_kv, hd, P, ctx_of_row);
    bool ok = append_history(&p, hist_of_row);

    /* the step: one token per run, appended first */
    qkv_buf b;
    qkv_init(&b, n_runs, c->n_kv, c->qpk, hd, c->qscale, false);
    kcuda_run *runs = malloc(n_runs * sizeof *runs);
    for (size_t r = 0; r < n_runs; r++) {
        kcuda_run run = {row_of[r], 1, (int32_t)c->ctx[r] - 1, seq_of[r]};
        runs[r] = run;
    }
    ok = ok && append_both(&p, &b, runs, n_runs) && pool_matches(&p);
    snprintf(name, sizeof name, "decode %s: history and step appended (bitwise)", what);
    report(ok, name);
    kcuda_run *d_runs = dev_upload(runs, n_runs * sizeof *runs);

    /* sparse lists: page 0, the last page, and each middle page with
     * probability 0.35; and the list of every page */
    const size_t sel_stride = p.bt_stride + 1, n_lists = n_runs * c->n_kv;
    int32_t *sel = malloc(n_lists * sel_stride * sizeof *sel), *n_sel = malloc(n_lists * sizeof *n_sel);
    int32_t *sel_all = malloc(n_lists * sel_stride * sizeof *sel), *n_all = malloc(n_lists * sizeof *n_all);
    for (size_t r = 0; r < n_runs; r++) {
        size_t np = ceil_div(c->ctx[r], P);
        for (size_t h = 0; h < c->n_kv; h++) {
            int32_t *l = sel + (r * c->n_kv + h) * sel_stride, *la = sel_all + (r * c->n_kv + h) * sel_stride;
            size_t n = 0;
            for (size_t j = 0; j < np; j++) {
                la[j] = (int32_t)j;
                if (j == 0 || j == np - 1 || rng_next() % 100 < 35)
                    l[n++] = (int32_t)j;
            }
            for (size_t j = np; j < sel_stride; j++) /* never read */
                la[j] = -1;
            for (size_t j = n; j < sel_stride; j++)
                l[j] = -1;
            n_sel[r * c->n_kv + h] = (int32_t)n;
            n_all[r * c->n_kv + h] = (int32_t)np;
        }
    }
    int32_t *d_sel = dev_upload(sel, n_lists * sel_stride * sizeof *sel);
    int32_t *d_nsel = dev_upload(n_sel, n_lists * sizeof *n_sel);
    int32_t *d_sel_all = dev_upload(sel_all, n_lists * sel_stride * sizeof *sel_all);
    int32_t *d_nall = dev_upload(n_all, n_lists * sizeof *n_all);

    const float scale = 1.0f / sqrtf((float)hd);
    const size_t n_out = n_runs * ld_out;
    float *want_dense = malloc(n_out * sizeof(float)), *want_sparse = malloc(n_out * sizeof(float));
    fill_f32(want_dense, n_out, NAN);
    fill_f32(want_sparse, n_out, NAN);
    kcuda_ref_kv rk = pool_ref(&p);
    const kcuda_ref_run *rruns = (const kcuda_ref_run *)runs;
    kcuda_ref_attn_decode(want_dense, ld_out, &b.ref, &rk, p.bt, p.bt_stride, rruns, n_runs, c->n_kv,
                          c->qpk, scale, NULL, NULL, 0);
    kcuda_ref_attn_decode(want_sparse, ld_out, &b.ref, &rk, p.bt, p.bt_stride, rruns, n_runs,
                          c->n_kv, c->qpk, scale, sel, n_sel, sel_stride);

    float *got = malloc(n_out * sizeof *got), *sentinel = malloc(n_out * sizeof *sentinel);
    uint16_t *got_bf = malloc(n_out * sizeof *got_bf), *sent_bf = malloc(n_out * sizeof *sent_bf);
    fill_f32(sentinel, n_out, NAN);
    for (size_t i = 0; i < n_out; i++)
        sent_bf[i] = 0x7fc0;
    float *d_out = dev_upload(NULL, n_out * sizeof(float));
    uint16_t *d_out_bf = dev_upload(NULL, n_out * sizeof(uint16_t));

    kcuda_attn_args a;
    memset(&a, 0, sizeof a);
    a.in = b.dev;
    a.out_f32 = d_out;
    a.out_bf16 = d_out_bf;
    a.ld_out = ld_out;
    a.kv = pool_layer(&p);
    a.bt.block_tables = p.d_bt;
    a.bt.bt_stride = p.bt_stride;
    a.runs = d_runs;
    a.n_runs = n_runs;
    a.n_kv_heads = c->n_kv;
    a.q_per_kv = c->qpk;
    a.head_dim = hd;
    a.scale = scale;
    a.max_ctx = (uint32_t)max_ctx;
    size_t ws_bytes = kcuda_attn_decode_workspace(&a, 3), ws_auto = kcuda_attn_decode_workspace(&a, 0);
    ws_bytes = ws_auto > ws_bytes ? ws_auto : ws_bytes;
    void *d_ws = dev_upload(NULL, ws_bytes);
    const int auto_splits = kcuda_attn_decode_splits(&a);

    kcuda_page_list sparse = {d_sel, d_nsel, sel_stride}, every = {d_sel_all, d_nall, sel_stride};
    static const int splits[] = {1, 3, 0};
    float *dense3 = malloc(n_out * sizeof *dense3), *dense_auto = malloc(n_out * sizeof *dense_auto);
    uint16_t *dense_auto_bf = malloc(n_out * sizeof *dense_auto_bf);
    for (int mode = 0; mode < 2; mode++) {
        for (size_t si = 0; si < COUNT(splits); si++) {
            CUDA_CHECK_FATAL(cudaMemcpy(d_out, sentinel, n_out * sizeof(float), cudaMemcpyHostToDevice));
            CUDA_CHECK_FATAL(cudaMemcpy(d_out_bf, sent_bf, n_out * sizeof(uint16_t), cudaMemcpyHostToDevice));
            settle();
            cudaError_t err = kcuda_attn_decode(&a, mode ? &sparse : NULL, splits[si], d_ws, ws_bytes, stream);
            dev_download(got, d_out, n_out * sizeof(float));
            dev_download(got_bf, d_out_bf, n_out * sizeof(uint16_t));
            ok = err == cudaSuccess && check_rows(got, got_bf, mode ? want_sparse : want_dense, n_runs, width, ld_out);
            snprintf(name, sizeof name, "decode %s %s n_splits=%d%s", what, mode ? "sparse" : "dense",
                     splits[si] ? splits[si] : auto_splits, splits[si] ? "" : " (auto)");
            report(ok, name);
            if (mode == 0 && splits[si] == 3)
                memcpy(dense3, got, n_out * sizeof *got);
            if (mode == 0 && splits[si] == 0) {
                memcpy(dense_auto, got, n_out * sizeof *got);
                memcpy(dense_auto_bf, got_bf, n_out * sizeof *got_bf);
            }
        }
    }

    /* every page listed, in order: the same work as dense, the same bits */
    settle();
    ok = kcuda_attn_decode(&a, &every, 3, d_ws, ws_bytes, stream) == cudaSuccess;
    dev_download(got, d_out, n_out * sizeof(float));
    ok = ok && bit_equal(got, dense3, n_out);
    snprintf(name, sizeof name, "decode %s sparse over every page == dense, n_splits=3 (bitwise)", what);
    report(ok, name);

    /* the same call twice; then bf16 alone */
    ok = kcuda_attn_decode(&a, NULL, 0, d_ws, ws_bytes, stream) == cudaSuccess;
    dev_download(got, d_out, n_out * sizeof(float));
    ok = ok && bit_equal(got, dense_auto, n_out);
    CUDA_CHECK_FATAL(cudaMemcpy(d_out_bf, sent_bf, n_out * sizeof(uint16_t), cudaMemcpyHostToDevice));
    a.out_f32 = NULL;
    settle();
    ok = ok && kcuda_attn_decode(&a, NULL, 0, d_ws, ws_bytes, stream) == cudaSuccess;
    a.out_f32 = d_out;
    dev_download(got_bf, d_out_bf, n_out * sizeof(uint16_t));
    ok = ok && bits_equal_u16(got_bf, dense_auto_bf, n_out);
    snprintf(name, sizeof name, "decode %s repeatable, bf16-only == bf16 of f32 call (bitwise)", what);
    report(ok, name);

    cudaFree(d_ws), cudaFree(d_out), cudaFree(d_out_bf), cudaFree(d_runs);
    cudaFree(d_sel), cudaFree(d_nsel), cudaFree(d_sel_all), cudaFree(d_nall);
    free(dense3), free(dense_auto), free(dense_auto_bf);
    free(got), free(got_bf), free(sentinel), free(sent_bf), free(want_dense), free(want_sparse);
    free(sel), free(n_sel), free(sel_all), free(n_all), free(runs), free(seq_of), free(row_of);
    qkv_free(&b);
    pool_free(&p);
}

typedef struct {
    size_t hd, P, qpk, n_kv;
    size_t prefix[6], n_new[6], n_seq;
} prefill_cfg;

static bool run_prefill(const pool *p, const qkv_buf *b, const kcuda_run *runs, size_t n_runs,
                        const prefill_cfg *c, float *d_out, uint16_t *d_out_bf, size_t ld_out,
                        uint32_t max_ctx)
{
    kcuda_run *d_runs = dev_upload(runs, n_runs * sizeof *runs);
    kcuda_attn_args a;
    memset(&a, 0, sizeof a);
    a.in = b->dev;
    a.out_f32 = d_out;
    a.out_bf16 = d_out_bf;
    a.ld_out = ld_out;
    a.kv = pool_layer(p);
    a.bt.block_tables = p->d_bt;
    a.bt.bt_stride = p->bt_stride;
    a.runs = d_runs;
    a.n_runs = n_runs;
    a.n_kv_heads = c->n_kv;
    a.q_per_kv = c->qpk;
    a.head_dim = c->hd;
    a.scale = 1.0f / sqrtf((float)c->hd);
    a.max_ctx = max_ctx;
    settle();
    bool ok = kcuda_attn_prefill(&a, stream) == cudaSuccess;
    CUDA_CHECK_FATAL(cudaStreamSynchronize(stream));
    cudaFree(d_runs);
    return ok;
}

/* Prefill of a batch with cached prefixes: one chunk against the reference,
 * then the same tokens in two chunks (append + prefill twice), which must
 * give the same pool and the same output bits. */
static void test_prefill(const prefill_cfg *c)
{
    const size_t n_runs = c->n_seq, n_rows = n_runs + 1, hd = c->hd, P = c->P;
    const size_t width = c->n_kv * c->qpk * hd, ld_out = width + 8;
    char name[200], what[120];
    snprintf(what, sizeof what, "hd=%zu P=%zu qpk=%zu kv_heads=%zu", hd, P, c->qpk, c->n_kv);

    int32_t *seq_of = iota_i32(n_rows), *order = iota_i32(n_runs);
    shuffle_i32(seq_of, n_rows);
    shuffle_i32(order, n_runs);
    size_t ctx_of_row[8] = {0}, hist_of_row[8] = {0}, T = 0, max_ctx = 0;
    for (size_t r = 0; r < n_runs; r++) {
        ctx_of_row[seq_of[r]] = c->prefix[r] + c->n_new[r];
        hist_of_row[seq_of[r]] = c->prefix[r];
        T += c->n_new[r];
        size_t cx = c->prefix[r] + c->n_new[r];
        max_ctx = cx > max_ctx ? cx : max_ctx;
    }
    pool p;
    pool_init(&p, n_rows, c->n_kv, hd, P, ctx_of_row);
    bool ok = append_history(&p, hist_of_row);
    /* the pool after the history, to start the chunked pass from */
    uint16_t *hist_data = malloc(pool_data_elems(&p) * sizeof *hist_data);
    float *hist_mm = malloc(pool_mm_elems(&p) * sizeof *hist_mm);
    memcpy(hist_data, p.data, pool_data_elems(&p) * sizeof *hist_data);
    memcpy(hist_mm, p.minmax, pool_mm_elems(&p) * sizeof *hist_mm);

    qkv_buf b;
    qkv_init(&b, T, c->n_kv, c->qpk, hd, 2.0f, false);
    kcuda_run runs[6], chunk1[6], chunk2[6];
    size_t row = 0, n2 = 0;
    for (size_t k = 0; k < n_runs; k++) {
        size_t r = (size_t)order[k];
        kcuda_run run = {(int32_t)row, (int32_t)c->n_new[r], (int32_t)c->prefix[r], seq_of[r]};
        runs[r] = run;
        row += c->n_new[r];
        /* two chunks: the first 2/5 (at least one token), then the rest */
        size_t c1 = c->n_new[r] * 2 / 5;
        c1 = c1 ? c1 : 1;
        kcuda_run r1 = {run.row0, (int32_t)c1, run.pos0, run.seq};
        chunk1[r] = r1;
        if (c1 < c->n_new[r]) {
            kcuda_run r2 = {run.row0 + (int32_t)c1, (int32_t)(c->n_new[r] - c1), run.pos0 + (int32_t)c1, run.seq};
            chunk2[n2++] = r2;
        }
    }
    ok = ok && append_both(&p, &b, runs, n_runs) && pool_matches(&p);
    snprintf(name, sizeof name, "prefill %s: prefix and step appended (bitwise)", what);
    report(ok, name);

    const size_t n_out = T * ld_out;
    float *want = malloc(n_out * sizeof *want), *got = malloc(n_out * sizeof *got);
    float *got2 = malloc(n_out * sizeof *got2);
    uint16_t *got_bf = malloc(n_out * sizeof *got_bf), *got2_bf = malloc(n_out * sizeof *got2_bf);
    fill_f32(want, n_out, NAN);
    kcuda_ref_kv rk = pool_ref(&p);
    kcuda_ref_attn_prefill(want, ld_out, &b.ref, &rk, p.bt, p.bt_stride, (const kcuda_ref_run *)runs,
                           n_runs, c->n_kv, c->qpk, 1.0f / sqrtf((float)hd));

    float *sentinel = malloc(n_out * sizeof *sentinel);
    uint16_t *sent_bf = malloc(n_out * sizeof *sent_bf);
    fill_f32(sentinel, n_out, NAN);
    for (size_t i = 0; i < n_out; i++)
        sent_bf[i] = 0x7fc0;
    float *d_out = dev_upload(sentinel, n_out * sizeof(float));
    uint16_t *d_out_bf = dev_upload(sent_bf, n_out * sizeof(uint16_t));
    ok = run_prefill(&p, &b, runs, n_runs, c, d_out, d_out_bf, ld_out, (uint32_t)max_ctx);
    dev_download(got, d_out, n_out * sizeof(float));
    dev_download(got_bf, d_out_bf, n_out * sizeof(uint16_t));
    ok = ok && check_rows(got, got_bf, want, T, width, ld_out);
    snprintf(name, sizeof name, "prefill %s, prefixes and new tokens mixed, one chunk", what);
    report(ok, name);

    /* two chunks from the history-only pool */
    pool p2 = p; /* same tables and device buffers; the host mirror restarts from the history */
    uint16_t *one_data = p.data;
    float *one_mm = p.minmax;
    p2.data = hist_data;
    p2.minmax = hist_mm;
    CUDA_CHECK_FATAL(cudaMemcpy(p2.d_data, hist_data, pool_data_elems(&p2) * sizeof *hist_data, cudaMemcpyHostToDevice));
    CUDA_CHECK_FATAL(cudaMemcpy(p2.d_minmax, hist_mm, pool_mm_elems(&p2) * sizeof *hist_mm, cudaMemcpyHostToDevice));
    CUDA_CHECK_FATAL(cudaMemcpy(d_out, sentinel, n_out * sizeof(float), cudaMemcpyHostToDevice));
    CUDA_CHECK_FATAL(cudaMemcpy(d_out_bf, sent_bf, n_out * sizeof(uint16_t), cudaMemcpyHostToDevice));
    ok = append_both(&p2, &b, chunk1, n_runs) &&
         run_prefill(&p2, &b, chunk1, n_runs, c, d_out, d_out_bf, ld_out, (uint32_t)max_ctx);
    if (n2)
        ok = ok && append_both(&p2, &b, chunk2, n2) &&
             run_prefill(&p2, &b, chunk2, n2, c, d_out, d_out_bf, ld_out, (uint32_t)max_ctx);
    /* the mirror after two chunks equals the one after one chunk, and so
     * must the device pool */
    ok = ok && bits_equal_u16(hist_data, one_data, pool_data_elems(&p2)) &&
         memcmp(hist_mm, one_mm, pool_mm_elems(&p2) * sizeof *hist_mm) == 0 && pool_matches(&p2);
    dev_download(got2, d_out, n_out * sizeof(float));
    dev_download(got2_bf, d_out_bf, n_out * sizeof(uint16_t));
    ok = ok && bit_equal(got2, got, n_out) && bits_equal_u16(got2_bf, got_bf, n_out);
    snprintf(name, sizeof name, "prefill %s, two chunks == one chunk (pool and output bitwise)", what);
    report(ok, name);

    cudaFree(d_out), cudaFree(d_out_bf);
    free(want), free(got), free(got2), free(got_bf), free(got2_bf), free(sentinel), free(sent_bf);
    free(hist_data), free(hist_mm), free(seq_of), free(order);
    qkv_free(&b);
    pool_free(&p);
}

int main(void)
{
    test_seed(0xa77e2025ull);

    test_f16_ref();
    test_invalid_args();
    test_splits_workspace();

    test_require_device();

    test_append(128, 16, 2);
    test_append(64, 32, 3);
    test_append(72, 8, 1);
    test_append(64, 24, 2);

    static const decode_cfg dcfg[] = {
        {128, 16, 4, 2, {1, 15, 16, 17, 300, 4100, 33000}, 7, 1.0f},
        {64, 32, 8, 2, {1, 15, 16, 17, 300, 4100, 33}, 7, 3.0f},
        {128, 32, 1, 2, {17, 300, 4100, 1, 64}, 5, 2.0f},
        {64, 24, 3, 3, {15, 300, 2049}, 3, 1.0f}, /* a page size that is not a power of two */
        {80, 8, 12, 1, {7, 300, 1000}, 3, 1.0f},
        {256, 64, 2, 1, {1, 65, 700}, 3, 1.0f},
    };
    for (size_t i = 0; i < COUNT(dcfg); i++)
        test_decode(&dcfg[i]);

    static const prefill_cfg pcfg[] = {
        {128, 16, 4, 2, {0, 0, 5, 16, 300, 47}, {1, 37, 64, 17, 130, 200}, 6},
        {64, 32, 8, 2, {0, 0, 5, 16, 300, 47}, {1, 37, 64, 17, 130, 200}, 6},
        {128, 32, 1, 2, {0, 0, 5, 16, 300, 47}, {1, 37, 64, 17, 130, 200}, 6},
        {80, 8, 12, 1, {0, 33}, {20, 70}, 2},
        {256, 64, 2, 1, {0, 100}, {65, 50}, 2},
        {64, 24, 3, 3, {0, 10, 50}, {40, 30, 100}, 3},
    };
    for (size_t i = 0; i < COUNT(pcfg); i++)
        test_prefill(&pcfg[i]);

    return test_finish();
}
