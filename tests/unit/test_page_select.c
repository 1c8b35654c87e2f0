/* Query-aware page selection (kernels/cpu/page_select.c) against independent
 * definitions: the page score is an upper bound of q.k (exactly, in float,
 * against kcpu_dot_f32) and is tight for one-token pages; the selection keeps
 * sink and current page and the top-scoring middle pages of a sort, within
 * the budget; sparse attention over every page is the bits of dense
 * attention, and over a selection matches a double-precision softmax(qK)V of
 * the selected positions; a needle page is found with a small budget.
 * P = page size, hd = head dim, NQ = query heads per KV head. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/kcpu_ops.h"
#include "proteus/dtype.h"
#include "test.h"

enum { NQ = 4 };

static uint64_t st = 0x9E3779B97F4A7C15ull;
static float frand(void) { /* uniform in [-1, 1) */
    st ^= st << 13, st ^= st >> 7, st ^= st << 17;
    return (float)((st >> 40) * (1.0 / 8388608.0)) - 1.0f;
}

/* One KV head's pages for one layer, scattered over a slot array. */
typedef struct {
    size_t hd;
    uint32_t P, n_ctx, n_pages, n_slots;
    float *kv;       /* (slot, {K, V}, P, hd) */
    float *mm;       /* (slot, {min, max}, hd) */
    uint32_t *pages; /* (n_pages) slot ids, a random permutation */
} cache;

static size_t slot_stride(const cache *c) { return 2 * (size_t)c->P * c->hd; }
static const float *key(const cache *c, uint32_t p) {
    return c->kv + c->pages[p / c->P] * slot_stride(c) + (size_t)(p % c->P) * c->hd;
}
static const float *val(const cache *c, uint32_t p) { return key(c, p) + (size_t)c->P * c->hd; }

/* The boxes over each page's valid keys, as the pool keeps them. */
static void cache_boxes(cache *c) {
    for (uint32_t j = 0; j < c->n_pages; j++) {
        float *mn = c->mm + (size_t)c->pages[j] * 2 * c->hd, *mx = mn + c->hd;
        for (uint32_t p = j * c->P; p < c->n_ctx && p < (j + 1) * c->P; p++)
            for (size_t i = 0; i < c->hd; i++) {
                float k = key(c, p)[i];
                if (p == j * c->P || k < mn[i]) mn[i] = k;
                if (p == j * c->P || k > mx[i]) mx[i] = k;
            }
    }
}

static void cache_init(cache *c, size_t hd, uint32_t P, uint32_t n_ctx) {
    c->hd = hd, c->P = P, c->n_ctx = n_ctx;
    c->n_pages = (n_ctx + P - 1) / P;
    c->n_slots = c->n_pages + 3;
    c->kv = malloc(c->n_slots * slot_stride(c) * sizeof(float));
    c->mm = malloc(c->n_slots * 2 * hd * sizeof(float));
    uint32_t *perm = malloc(c->n_slots * sizeof(uint32_t));
    if (!c->kv || !c->mm || !perm) abort();
    for (size_t i = 0; i < c->n_slots * slot_stride(c); i++) c->kv[i] = frand();
    for (size_t i = 0; i < c->n_slots * 2 * hd; i++) c->mm[i] = NAN; /* unused slots must not be read */
    for (uint32_t i = 0; i < c->n_slots; i++) perm[i] = i;
    for (uint32_t i = c->n_slots - 1; i > 0; i--) {
        uint32_t j = (uint32_t)((frand() + 1.0f) * 0.5f * (float)(i + 1));
        if (j > i) j = i;
        uint32_t t = perm[i];
        perm[i] = perm[j], perm[j] = t;
    }
    c->pages = perm; /* the first n_pages entries */
    cache_boxes(c);
}

static void cache_free(cache *c) {
    free(c->kv);
    free(c->mm);
    free(c->pages);
}

/* softmax(scale * q.K) V over the listed positions, in double. */
static void attn_ref(double *out, const float *qh, const cache *c, const uint32_t *pos, size_t n, float scale) {
    double *s = malloc(n * sizeof(double)), mx = -INFINITY, z = 0;
    for (size_t t = 0; t < n; t++) {
        s[t] = 0;
        for (size_t i = 0; i < c->hd; i++) s[t] += (double)qh[i] * key(c, pos[t])[i];
        s[t] *= scale;
        mx = s[t] > mx ? s[t] : mx;
    }
    for (size_t t = 0; t < n; t++) z += (s[t] = exp(s[t] - mx));
    for (size_t i = 0; i < c->hd; i++) {
        out[i] = 0;
        for (size_t t = 0; t < n; t++) out[i] += s[t] / z * val(c, pos[t])[i];
    }
    free(s);
}

static void test_score_by_hand(void) {
    /* Head 0: max(-1, 2) + max(2, -6) = 4; head 1: max(-.5, 1) + max(-.5, 1.5) = 2.5. */
    float q[4] = {1, -2, 0.5f, 0.5f}, mn[2] = {-1, -1}, mx[2] = {2, 3};
    CHECK(kcpu_page_score(q, 2, 2, mn, mx) == 4.0f);
    CHECK(kcpu_page_score(q + 2, 1, 2, mn, mx) == 2.5f);
}

/* Bound on random pages: >= q.k for every key and head, in float exactly
 * (against kcpu_dot_f32) and in double up to 1e-4 relative; equal to the
 * best q.k, same bits, when the page holds one token. */
static void test_score_bound(void) {
    size_t hds[] = {64, 128, 13};
    for (int a = 0; a < 3; a++) {
        size_t hd = hds[a];
        for (uint32_t n_tok = 1; n_tok <= 16; n_tok += 15) {
            for (int rep = 0; rep < 50; rep++) {
                cache c;
                cache_init(&c, hd, 16, n_tok);
                float q[NQ * 128];
                for (size_t i = 0; i < NQ * hd; i++) q[i] = frand() * (rep % 2 ? 4.0f : 1.0f);
                const float *mn = c.mm + (size_t)c.pages[0] * 2 * hd;
                float sc = kcpu_page_score(q, NQ, hd, mn, mn + hd);
                float best_f = -INFINITY;
                double best_d = -INFINITY, mag = 0;
                for (uint32_t p = 0; p < n_tok; p++)
                    for (int h = 0; h < NQ; h++) {
                        float d = kcpu_dot_f32(q + h * hd, key(&c, p), hd);
                        CHECK_MSG(sc >= d, "hd %zu tok %u: %g < %g", hd, p, sc, d);
                        best_f = d > best_f ? d : best_f;
                        double dd = 0, m = 0;
                        for (size_t i = 0; i < hd; i++) {
                            double t = (double)q[h * hd + i] * key(&c, p)[i];
                            dd += t, m += fabs(t);
                        }
                        best_d = dd > best_d ? dd : best_d;
                        mag = m > mag ? m : mag;
                    }
                CHECK_MSG(sc >= best_d - 1e-4 * mag, "%g < %g", sc, best_d);
                if (n_tok == 1) {
                    CHECK(memcmp(&sc, &best_f, sizeof(float)) == 0);
                    CHECK_NEAR(sc, best_d, 1e-5 * mag);
                }
                cache_free(&c);
            }
        }
    }
}

static const float *sort_scores;
static int by_score_desc(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    if (sort_scores[x] != sort_scores[y]) return sort_scores[x] > sort_scores[y] ? -1 : 1;
    return (x > y) - (x < y);
}
static int by_index(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

/* The selection rules against a sort of the middle pages' scores. */
static void check_selection(const cache *c, const float *q, uint32_t budget, const uint32_t *sel, size_t n_sel) {
    uint32_t np = c->n_pages, P = c->P;
    if (c->n_ctx <= budget || np <= 2) {
        CHECK_EQ_INT(n_sel, np);
        for (uint32_t j = 0; j < n_sel && j < np; j++) CHECK_EQ_INT(sel[j], j);
        return;
    }
    uint32_t k = budget >= 2 * P ? (budget - 2 * P) / P : 0;
    if (k > np - 2) k = np - 2;
    CHECK_EQ_INT(n_sel, k + 2);
    if (n_sel != k + 2) return;
    CHECK_EQ_INT(sel[0], 0);
    CHECK_EQ_INT(sel[n_sel - 1], np - 1);
    if (budget >= 2 * P) CHECK(n_sel * P <= budget);
    for (size_t i = 1; i < n_sel; i++) CHECK(sel[i] > sel[i - 1]);
    float *score = malloc(np * sizeof(float));
    uint32_t *order = malloc(np * sizeof(uint32_t));
    for (uint32_t j = 1; j + 1 < np; j++) {
        const float *mn = c->mm + (size_t)c->pages[j] * 2 * c->hd;
        score[j] = kcpu_page_score(q, NQ, c->hd, mn, mn + c->hd);
        order[j - 1] = j;
    }
    sort_scores = score;
    qsort(order, np - 2, sizeof(uint32_t), by_score_desc);
    qsort(order, k, sizeof(uint32_t), by_index);
    for (uint32_t i = 0; i < k; i++) CHECK_MSG(sel[1 + i] == order[i], "middle %u: %u vs %u", i, sel[1 + i], order[i]);
    free(score);
    free(order);
}

/* hd 64 and 128, P 16, contexts 1..4096, budgets 64..2048: selection rules;
 * sparse attention over every page is dense attention's bits; over the
 * selection it matches the double reference on the selected positions. */
static void test_select_and_attend_sizes(void) {
    size_t hds[] = {64, 128};
    uint32_t ctxs[] = {1, 16, 17, 1000, 4096}, budgets[] = {64, 512, 2048};
    for (int a = 0; a < 2; a++)
        for (int b = 0; b < 5; b++) {
            size_t hd = hds[a];
            cache c;
            cache_init(&c, hd, 16, ctxs[b]);
            float q[NQ * 128], dense[NQ * 128], sparse[NQ * 128];
            for (size_t i = 0; i < NQ * hd; i++) q[i] = frand();
            float scale = 1.0f / sqrtf((float)hd);
            uint32_t *sel = malloc(c.n_pages * sizeof(uint32_t)), *pos = malloc(c.n_ctx * sizeof(uint32_t));
            float *scratch = malloc(c.n_pages * sizeof(float)), *scores = malloc(kcpu_attn_state_len(NQ, hd) * sizeof(float));
            double ref[128];

            for (uint32_t j = 0; j < c.n_pages; j++) sel[j] = j;
            kcpu_attn_paged(dense, q, NQ, hd, c.kv, PT_DTYPE_F32, slot_stride(&c), (size_t)c.P * hd, c.pages, c.P,
                            c.n_ctx, scale, scores);
            kcpu_attn_paged_sparse(sparse, q, NQ, hd, c.kv, PT_DTYPE_F32, slot_stride(&c), (size_t)c.P * hd, c.pages,
                                   c.P, c.n_ctx, sel, c.n_pages, scale, scores);
            CHECK_MSG(memcmp(dense, sparse, NQ * hd * sizeof(float)) == 0, "hd %zu ctx %u", hd, c.n_ctx);

            for (int u = 0; u < 3; u++) {
                size_t n_sel = kcpu_page_select(sel, q, NQ, hd, c.mm, c.pages, c.n_pages, c.P, c.n_ctx, budgets[u],
                                                scratch);
                check_selection(&c, q, budgets[u], sel, n_sel);
                size_t n_pos = 0;
                for (size_t s = 0; s < n_sel; s++)
                    for (uint32_t p = sel[s] * c.P; p < c.n_ctx && p < (sel[s] + 1) * c.P; p++) pos[n_pos++] = p;
                kcpu_attn_paged_sparse(sparse, q, NQ, hd, c.kv, PT_DTYPE_F32, slot_stride(&c), (size_t)c.P * hd,
                                       c.pages, c.P, c.n_ctx, sel, n_sel, scale, scores);
                for (int h = 0; h < NQ; h++) {
                    attn_ref(ref, q + h * hd, &c, pos, n_pos, scale);
                    for (size_t i = 0; i < hd; i++) CHECK_NEAR(sparse[h * hd + i], ref[i], 1e-5);
                }
            }
            free(sel), free(pos), free(scratch), free(scores);
            cache_free(&c);
        }
}

/* Equal scores go to the lower index; a budget below two pages still keeps
 * sink and current page. */
static void test_select_ties(void) {
    cache c;
    cache_init(&c, 8, 16, 16 * 9 + 5); /* 10 pages, the last holds 5 tokens */
    float q[NQ * 8];
    for (int i = 0; i < NQ * 8; i++) q[i] = frand();
    /* Middle boxes all alike except pages 3, 6 and 7: equal and higher. */
    for (uint32_t j = 1; j <= 8; j++) {
        float *mn = c.mm + (size_t)c.pages[j] * 16, w = (j == 3 || j == 6 || j == 7) ? 2.0f : 1.0f;
        for (int i = 0; i < 8; i++) mn[i] = -w, mn[8 + i] = w;
    }
    uint32_t sel[10];
    float scratch[10];
    size_t n = kcpu_page_select(sel, q, NQ, 8, c.mm, c.pages, 10, 16, c.n_ctx, 4 * 16, scratch);
    CHECK_EQ_INT(n, 4);
    uint32_t want2[] = {0, 3, 6, 9};
    CHECK(n == 4 && memcmp(sel, want2, sizeof(want2)) == 0);
    n = kcpu_page_select(sel, q, NQ, 8, c.mm, c.pages, 10, 16, c.n_ctx, 6 * 16 + 15, scratch);
    uint32_t want4[] = {0, 1, 3, 6, 7, 9};
    CHECK(n == 6 && memcmp(sel, want4, sizeof(want4)) == 0);
    n = kcpu_page_select(sel, q, NQ, 8, c.mm, c.pages, 10, 16, c.n_ctx, 20, scratch);
    CHECK(n == 2 && sel[0] == 0 && sel[1] == 9);
    n = kcpu_page_select(sel, q, NQ, 8, c.mm, c.pages, 10, 16, c.n_ctx, c.n_ctx, scratch);
    CHECK_EQ_INT(n, 10);
    cache_free(&c);
}

/* F16 pages: sparse over every page is dense attention's bits too. */
static void test_sparse_all_pages_f16(void) {
    enum { HD = 64, P = 16, CTX = 77, NP = 5 };
    uint16_t *kv = malloc((NP + 1) * 2 * P * HD * sizeof(uint16_t));
    for (size_t i = 0; i < (NP + 1) * 2 * P * HD; i++) kv[i] = pt_f32_to_f16(frand());
    uint32_t pages[NP] = {4, 0, 5, 2, 1}, sel[NP] = {0, 1, 2, 3, 4};
    float q[NQ * HD], dense[NQ * HD], sparse[NQ * HD], scores[NQ * (HD + 2)]; /* attention state */
    for (int i = 0; i < NQ * HD; i++) q[i] = frand();
    kcpu_attn_paged(dense, q, NQ, HD, kv, PT_DTYPE_F16, 2 * P * HD, P * HD, pages, P, CTX, 0.125f, scores);
    kcpu_attn_paged_sparse(sparse, q, NQ, HD, kv, PT_DTYPE_F16, 2 * P * HD, P * HD, pages, P, CTX, sel, NP, 0.125f,
                           scores);
    CHECK(memcmp(dense, sparse, sizeof(dense)) == 0);
    free(kv);
}

/* A page whose keys point along the group's queries dominates attention; a
 * 64-token budget over 1000 tokens finds it and stays within 1e-3 of dense. */
static void test_needle(void) {
    enum { HD = 128, P = 16, CTX = 1000, NEEDLE = 30 };
    cache c;
    cache_init(&c, HD, P, CTX);
    float base[HD], q[NQ * HD], dense[NQ * HD], sparse[NQ * HD], scores[NQ * (HD + 2)], scratch[63];
    for (int i = 0; i < HD; i++) base[i] = frand();
    for (int h = 0; h < NQ; h++)
        for (int i = 0; i < HD; i++) q[h * HD + i] = base[i] + 0.05f * frand();
    for (uint32_t p = 0; p < CTX; p++) {
        float *k = (float *)key(&c, p);
        for (int i = 0; i < HD; i++) k[i] = p / P == NEEDLE ? 4.0f * base[i] + 0.05f * frand() : 0.05f * frand();
    }
    cache_boxes(&c);
    float scale = 1.0f / sqrtf((float)HD);
    uint32_t sel[63];
    size_t n = kcpu_page_select(sel, q, NQ, HD, c.mm, c.pages, c.n_pages, P, CTX, 64, scratch);
    CHECK_EQ_INT(n, 4);
    int found = 0;
    for (size_t s = 0; s < n; s++) found |= sel[s] == NEEDLE;
    CHECK(found);
    kcpu_attn_paged(dense, q, NQ, HD, c.kv, PT_DTYPE_F32, slot_stride(&c), P * HD, c.pages, P, CTX, scale, scores);
    kcpu_attn_paged_sparse(sparse, q, NQ, HD, c.kv, PT_DTYPE_F32, slot_stride(&c), P * HD, c.pages, P, CTX, sel, n,
                           scale, scores);
    double err = 0;
    for (int i = 0; i < NQ * HD; i++) err = fmax(err, fabs((double)dense[i] - sparse[i]));
    CHECK_MSG(err <= 1e-3, "max |dense - sparse| = %g", err);
    cache_free(&c);
}

TEST_MAIN(TEST(test_score_by_hand), TEST(test_score_bound), TEST(test_select_and_attend_sizes),
          TEST(test_select_ties), TEST(test_sparse_all_pages_f16), TEST(test_needle))
