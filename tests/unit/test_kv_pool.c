/* The head-centric KV pool: allocation order and exhaustion, and the
 * per-page key bounding box that query-aware selection will read. */
#include "kv/kv_pool.h"
#include "test.h"

static void test_alloc_release(void) {
    pt_kv_pool kv;
    pt_err err;
    CHECK(pt_kv_pool_init(&kv, 2, 4, 16, 3, &err) == 0);
    CHECK_EQ_INT(pt_kv_page_alloc(&kv), 0);
    CHECK_EQ_INT(pt_kv_page_alloc(&kv), 1);
    CHECK_EQ_INT(pt_kv_page_alloc(&kv), 2);
    CHECK_EQ_INT(pt_kv_page_alloc(&kv), -1);
    pt_kv_page_release(&kv, 1);
    CHECK_EQ_INT(kv.n_free, 1);
    CHECK_EQ_INT(pt_kv_page_alloc(&kv), 1);
    pt_kv_pool_free(&kv);
    CHECK(pt_kv_pool_init(&kv, 1u << 20, 1u << 10, 1u << 10, UINT32_MAX, &err) != 0);
}

static void test_bounding_box(void) {
    pt_kv_pool kv;
    pt_err err;
    CHECK(pt_kv_pool_init(&kv, 2, 4, 16, 2, &err) == 0);
    float k0[4] = {1, -2, 3, 0}, k1[4] = {-1, 5, 2, 0}, v[4] = {9, 9, 9, 9};
    pt_kv_append(&kv, 1, 1, 0, k0, v);
    pt_kv_append(&kv, 1, 1, 1, k1, v);
    const float *mn = pt_kv_kmin(&kv, 1, 1), *mx = pt_kv_kmax(&kv, 1, 1);
    float emn[4] = {-1, -2, 2, 0}, emx[4] = {1, 5, 3, 0};
    CHECK(memcmp(mn, emn, sizeof(emn)) == 0);
    CHECK(memcmp(mx, emx, sizeof(emx)) == 0);
    CHECK(pt_kv_k(&kv, 1, 1)[4 + 1] == 5.0f);
    CHECK(pt_kv_v(&kv, 1, 1)[0] == 9.0f);
    /* Other layers and slots untouched; a fresh page restarts its box. */
    CHECK(pt_kv_kmax(&kv, 0, 1)[1] == 0.0f);
    pt_kv_append(&kv, 1, 1, 0, k1, v);
    CHECK(pt_kv_kmin(&kv, 1, 1)[0] == -1.0f && pt_kv_kmax(&kv, 1, 1)[0] == -1.0f);
    pt_kv_pool_free(&kv);
}

TEST_MAIN(TEST(test_alloc_release), TEST(test_bounding_box))
