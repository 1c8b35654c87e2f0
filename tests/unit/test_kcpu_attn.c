/* Paged attention (kernels/cpu/attn*.c):
 *   - against softmax(q K^T * scale) V computed in double over the same
 *     (converted) keys and values, for F32, F16 and BF16 pages, head dims
 *     16, 40 (reference path only), 64 and 128, GQA 1:1, 3:1 and 4:1, page
 *     sizes shorter than, equal to and longer than a 16-key block, and
 *     lengths from 1 to 2,000 with a partial last page;
 *   - every ISA path the CPU has gives the reference's bits, page update by
 *     page update, including blocks whose keys underflow exp;
 *   - a prompt run gives each row the bits of that row attended alone, and
 *     the sparse walk over every page the bits of the dense one;
 *   - exp as attention computes it, against libm. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/kcpu_internal.h"
#include "cpu/kcpu_matmul.h"
#include "cpu/kcpu_ops.h"
#include "proteus/dtype.h"
#include "test.h"

static uint64_t rs = 0x9e3779b97f4a7c15ull;
static float frand(void) {
    rs ^= rs << 13, rs ^= rs >> 7, rs ^= rs << 17;
    return (float)((rs >> 40) * (1.0 / 8388608.0)) - 1.0f;
}

/* A pool of head pages in one element type, filled with values exactly
 * representable in that type; pages are handed out in a shuffled order. */
typedef struct {
    int type;
    size_t hd, es, slot_stride; /* elements */
    uint32_t P, n_slots;
    uint8_t *kv;
    uint32_t *pages;
} pool;

static void put(pool *p, size_t elem, float x) {
    if (p->type == PT_DTYPE_F16) {
        uint16_t h = pt_f32_to_f16(x);
        memcpy(p->kv + elem * 2, &h, 2);
    } else if (p->type == PT_DTYPE_BF16) {
        uint16_t h = pt_f32_to_bf16(x);
        memcpy(p->kv + elem * 2, &h, 2);
    } else {
        memcpy(p->kv + elem * 4, &x, 4);
    }
}

static double get(const pool *p, size_t elem) {
    uint16_t h;
    if (p->type == PT_DTYPE_F32) {
        float f;
        memcpy(&f, p->kv + elem * 4, 4);
        return f;
    }
    memcpy(&h, p->kv + elem * 2, 2);
    return p->type == PT_DTYPE_F16 ? pt_f16_to_f32(h) : pt_bf16_to_f32(h);
}

static void pool_init(pool *p, int type, size_t hd, uint32_t P, uint32_t n_ctx, float kscale) {
    p->type = type, p->hd = hd, p->P = P;
    p->es = type == PT_DTYPE_F32 ? 4 : 2;
    p->slot_stride = 2 * (size_t)P * hd;
    p->n_slots = (n_ctx + P - 1) / P + 3;
    p->kv = calloc((size_t)p->n_slots * p->slot_stride, p->es);
    p->pages = malloc(p->n_slots * sizeof(uint32_t));
    for (size_t i = 0; i < (size_t)p->n_slots * p->slot_stride; i++) {
        bool is_k = (i % p->slot_stride) < (size_t)P * hd;
        put(p, i, frand() * (is_k ? kscale : 1.0f));
    }
    /* Slots in a scattered order: page j lives in slot (j * 5 + 2) mod n. */
    for (uint32_t j = 0; j < p->n_slots; j++) p->pages[j] = (j * 5 + 2) % p->n_slots;
    if (p->n_slots % 5 == 0)
        for (uint32_t j = 0; j < p->n_slots; j++) p->pages[j] = p->n_slots - 1 - j;
}

static void pool_free(pool *p) {
    free(p->kv);
    free(p->pages);
}

static size_t k_elem(const pool *p, uint32_t pos, size_t d) {
    return (size_t)p->pages[pos / p->P] * p->slot_stride + (size_t)(pos % p->P) * p->hd + d;
}

/* softmax(q K^T * scale) V over positions [0, n_ctx), in double. */
static void attn_double(double *out, const float *q, size_t n_q, const pool *p, uint32_t n_ctx, double scale) {
    double *s = malloc(n_ctx * sizeof(double));
    for (size_t h = 0; h < n_q; h++) {
        double mx = -INFINITY, z = 0;
        for (uint32_t t = 0; t < n_ctx; t++) {
            double dot = 0;
            for (size_t d = 0; d < p->hd; d++) dot += (double)q[h * p->hd + d] * get(p, k_elem(p, t, d));
            s[t] = dot * scale;
            mx = s[t] > mx ? s[t] : mx;
        }
        for (uint32_t t = 0; t < n_ctx; t++) z += (s[t] = exp(s[t] - mx));
        for (size_t d = 0; d < p->hd; d++) {
            double acc = 0;
            for (uint32_t t = 0; t < n_ctx; t++) acc += s[t] * get(p, k_elem(p, t, d) + (size_t)p->P * p->hd);
            out[h * p->hd + d] = acc / z;
        }
    }
    free(s);
}

static void test_against_double(void) {
    const int types[] = {PT_DTYPE_F32, PT_DTYPE_F16, PT_DTYPE_BF16};
    const struct {
        size_t hd, n_q;
        uint32_t P;
    } shapes[] = {{64, 3, 16}, {64, 4, 32}, {128, 4, 16}, {128, 1, 8}, {16, 3, 4}, {40, 3, 16}, {64, 3, 24}};
    const uint32_t lens[] = {1, 5, 16, 17, 100, 2000};
    for (size_t ti = 0; ti < 3; ti++)
        for (size_t si = 0; si < sizeof(shapes) / sizeof(shapes[0]); si++)
            for (size_t li = 0; li < sizeof(lens) / sizeof(lens[0]); li++) {
                size_t hd = shapes[si].hd, n_q = shapes[si].n_q;
                uint32_t P = shapes[si].P, n = lens[li];
                pool p;
                pool_init(&p, types[ti], hd, P, n, 3.0f);
                float *q = malloc(n_q * hd * sizeof(float)), *out = malloc(n_q * hd * sizeof(float));
                float *state = malloc(kcpu_attn_state_len(n_q, hd) * sizeof(float));
                double *ref = malloc(n_q * hd * sizeof(double));
                for (size_t i = 0; i < n_q * hd; i++) q[i] = frand();
                float scale = 1.0f / sqrtf((float)hd);
                kcpu_attn_paged(out, q, n_q, hd, p.kv, p.type, p.slot_stride, (size_t)P * hd, p.pages, P, n, scale,
                                state);
                attn_double(ref, q, n_q, &p, n, scale);
                double worst = 0;
                for (size_t i = 0; i < n_q * hd; i++) {
                    double e = fabs(out[i] - ref[i]);
                    worst = e > worst ? e : worst;
                }
                CHECK_MSG(worst < 2e-6, "type %d hd %zu n_q %zu P %u n %u: error %.3g", types[ti], hd, n_q, P, n,
                          worst);
                free(q), free(out), free(state), free(ref);
                pool_free(&p);
            }
}

/* The fast paths the hardware has, each against the reference, update by
 * update on the same states. */
static void test_isa_paths_agree(void) {
    typedef void fn_t(float *, const float *, size_t, size_t, const void *, const void *, int, uint32_t, float);
    fn_t *paths[2] = {NULL, NULL};
    const char *names[2] = {"avx2", "avx512"};
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
        paths[0] = kcpu_attn_page_avx2;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512vnni"))
        paths[1] = kcpu_attn_page_avx512;
    const int types[] = {PT_DTYPE_F32, PT_DTYPE_F16, PT_DTYPE_BF16};
    const size_t hds[] = {16, 64, 128, 256, 48};
    const uint32_t Ps[] = {16, 32, 7};
    int checked = 0;
    for (int pi = 0; pi < 2; pi++) {
        if (!paths[pi]) {
            printf("no %s on this CPU: that path not checked\n", names[pi]);
            continue;
        }
        for (size_t ti = 0; ti < 3; ti++)
            for (size_t hi = 0; hi < 5; hi++)
                for (size_t pj = 0; pj < 3; pj++) {
                    size_t hd = hds[hi], n_q = 3 + hi % 2;
                    uint32_t P = Ps[pj], n_ctx = 9 * P + 5;
                    /* Keys scaled up so that some scores fall more than 87
                     * below the maximum: exp underflows to 0 there. */
                    pool p;
                    pool_init(&p, types[ti], hd, P, n_ctx, hi == 1 ? 40.0f : 2.0f);
                    size_t sl = kcpu_attn_state_len(n_q, hd);
                    float *q = malloc(n_q * hd * sizeof(float));
                    float *s0 = malloc(sl * sizeof(float)), *s1 = malloc(sl * sizeof(float));
                    for (size_t i = 0; i < n_q * hd; i++) q[i] = frand() * 4;
                    for (size_t h = 0; h < n_q; h++) s0[h] = s1[h] = -INFINITY;
                    memset(s0 + n_q, 0, (sl - n_q) * sizeof(float));
                    memset(s1 + n_q, 0, (sl - n_q) * sizeof(float));
                    float scale = 1.0f / sqrtf((float)hd);
                    for (uint32_t p0 = 0, j = 0; p0 < n_ctx; p0 += P, j++) {
                        uint32_t n = n_ctx - p0 < P ? n_ctx - p0 : P;
                        const uint8_t *k = p.kv + (size_t)p.pages[j] * p.slot_stride * p.es;
                        const uint8_t *v = k + (size_t)P * hd * p.es;
                        kcpu_attn_page_ref(s0, q, n_q, hd, k, v, p.type, n, scale);
                        if (hd % 16 == 0) paths[pi](s1, q, n_q, hd, k, v, p.type, n, scale);
                        else kcpu_attn_page_ref(s1, q, n_q, hd, k, v, p.type, n, scale);
                        CHECK_MSG(memcmp(s0, s1, sl * sizeof(float)) == 0, "%s type %d hd %zu P %u page %u",
                                  names[pi], p.type, hd, P, j);
                        checked++;
                    }
                    free(q), free(s0), free(s1);
                    pool_free(&p);
                }
    }
    printf("%d page updates compared bit for bit\n", checked);
}

/* Rows of a run against each row alone, and sparse over all pages against
 * dense, on whatever path the dispatcher picks. */
static void test_run_and_sparse_match_single(void) {
    const size_t hd = 64, n_q = 3;
    const uint32_t P = 16, pos0 = 37, n_tok = 29, n_ctx = pos0 + n_tok;
    pool p;
    pool_init(&p, PT_DTYPE_F16, hd, P, n_ctx, 3.0f);
    size_t qw = n_q * hd, ld = qw + 5;
    float *q = malloc(n_tok * ld * sizeof(float)), *out = malloc(n_tok * ld * sizeof(float));
    float *one = malloc(qw * sizeof(float)), *sp = malloc(qw * sizeof(float));
    float *state = malloc(kcpu_attn_run_scratch_len(n_tok, n_q, hd, P) * sizeof(float));
    for (size_t i = 0; i < n_tok * ld; i++) q[i] = frand();
    float scale = 0.125f;
    kcpu_attn_paged_run(out, ld, q, ld, n_tok, pos0, n_q, hd, p.kv, p.type, p.slot_stride, (size_t)P * hd, p.pages,
                        P, scale, state);
    uint32_t sel[16];
    for (uint32_t t = 0; t < n_tok; t++) {
        uint32_t n = pos0 + t + 1;
        kcpu_attn_paged(one, q + t * ld, n_q, hd, p.kv, p.type, p.slot_stride, (size_t)P * hd, p.pages, P, n, scale,
                        state);
        CHECK_MSG(memcmp(one, out + t * ld, qw * sizeof(float)) == 0, "row %u", t);
        uint32_t n_pages = (n + P - 1) / P;
        for (uint32_t j = 0; j < n_pages; j++) sel[j] = j;
        kcpu_attn_paged_sparse(sp, q + t * ld, n_q, hd, p.kv, p.type, p.slot_stride, (size_t)P * hd, p.pages, P, n,
                               sel, n_pages, scale, state);
        CHECK_MSG(memcmp(one, sp, qw * sizeof(float)) == 0, "sparse row %u", t);
    }
    free(q), free(out), free(one), free(sp), free(state);
    pool_free(&p);
}

static void test_exp(void) {
    CHECK(kcpu_attn_exp(0.0f) == 1.0f);
    CHECK(kcpu_attn_exp(-0.0f) == 1.0f);
    CHECK(kcpu_attn_exp(-INFINITY) == 0.0f);
    CHECK(kcpu_attn_exp(-100.0f) == 0.0f);
    double worst = 0;
    for (int i = 0; i <= 200000; i++) {
        float x = -87.0f * (float)i / 200000.0f;
        double ref = exp((double)x), e = fabs(kcpu_attn_exp(x) - ref) / ref;
        worst = e > worst ? e : worst;
    }
    CHECK_MSG(worst < 4e-7, "worst relative error %.3g", worst);
}

TEST_MAIN(TEST(test_against_double), TEST(test_isa_paths_agree), TEST(test_run_and_sparse_match_single),
          TEST(test_exp))
