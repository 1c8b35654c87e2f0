/* The head-centric KV pool: allocation order and exhaustion, and the
 * per-page key bounding box that query-aware selection will read. */
#include "kv/kv_pool.h"
#include "test.h"

static void test_alloc_release(void) {
    pt_kv_pool kv;
    pt_err err;
    CHECK(pt_kv_pool_init(&kv, NULL, 2, 4, 16, 3, 3, PT_DTYPE_F32, &err) == 0);
    CHECK_EQ_INT(pt_kv_page_alloc(&kv), 0);
    CHECK_EQ_INT(pt_kv_page_alloc(&kv), 1);
    CHECK_EQ_INT(pt_kv_page_alloc(&kv), 2);
    CHECK_EQ_INT(pt_kv_page_alloc(&kv), -1);
    pt_kv_page_release(&kv, 1);
    CHECK_EQ_INT(kv.n_free, 1);
    CHECK_EQ_INT(pt_kv_page_alloc(&kv), 1);
    pt_kv_pool_free(&kv);
    CHECK(pt_kv_pool_init(&kv, NULL, 1u << 20, 1u << 10, 1u << 10, UINT32_MAX, UINT32_MAX, PT_DTYPE_F32, &err) != 0);
}

static void test_bounding_box(void) {
    pt_kv_pool kv;
    pt_err err;
    CHECK(pt_kv_pool_init(&kv, NULL, 2, 4, 16, 2, 2, PT_DTYPE_F32, &err) == 0);
    float k0[4] = {1, -2, 3, 0}, k1[4] = {-1, 5, 2, 0}, v[4] = {9, 9, 9, 9};
    pt_kv_append(&kv, 1, 1, 0, k0, v);
    pt_kv_append(&kv, 1, 1, 1, k1, v);
    const float *mn = pt_kv_kmin(&kv, 1, 1), *mx = pt_kv_kmax(&kv, 1, 1);
    float emn[4] = {-1, -2, 2, 0}, emx[4] = {1, 5, 3, 0};
    CHECK(memcmp(mn, emn, sizeof(emn)) == 0);
    CHECK(memcmp(mx, emx, sizeof(emx)) == 0);
    CHECK(((const float *)pt_kv_k(&kv, 1, 1))[4 + 1] == 5.0f);
    CHECK(((const float *)pt_kv_v(&kv, 1, 1))[0] == 9.0f);
    /* Other layers and slots untouched; a fresh page restarts its box. */
    CHECK(pt_kv_kmax(&kv, 0, 1)[1] == 0.0f);
    pt_kv_append(&kv, 1, 1, 0, k1, v);
    CHECK(pt_kv_kmin(&kv, 1, 1)[0] == -1.0f && pt_kv_kmax(&kv, 1, 1)[0] == -1.0f);
    pt_kv_pool_free(&kv);
}

/* F16 pages: values stored rounded, and the bounding box holds the rounded
 * keys (the values attention reads), not the unrounded ones. */
static void test_f16_pages(void) {
    pt_kv_pool kv;
    pt_err err;
    CHECK(pt_kv_pool_init(&kv, NULL, 1, 2, 4, 1, 1, PT_DTYPE_F16, &err) == 0);
    CHECK_EQ_INT(kv.elem, 2);
    CHECK(pt_kv_page_bytes(1, 2, 4, PT_DTYPE_F16) < pt_kv_page_bytes(1, 2, 4, PT_DTYPE_F32));
    float k[2] = {1.0001f, -3.14159f}, v[2] = {0.5f, 65504.0f};
    pt_kv_append(&kv, 0, 0, 0, k, v);
    const pt_f16 *kd = pt_kv_k(&kv, 0, 0), *vd = pt_kv_v(&kv, 0, 0);
    CHECK(kd[0] == pt_f32_to_f16(k[0]) && kd[1] == pt_f32_to_f16(k[1]));
    CHECK(vd[1] == pt_f32_to_f16(65504.0f));
    CHECK(pt_kv_kmax(&kv, 0, 0)[1] == pt_f16_to_f32(kd[1]));
    CHECK(pt_kv_kmin(&kv, 0, 0)[0] == pt_f16_to_f32(kd[0]) && pt_kv_kmin(&kv, 0, 0)[0] != k[0]);
    pt_kv_pool_free(&kv);
    CHECK(pt_kv_pool_init(&kv, NULL, 1, 2, 4, 1, 1, PT_DTYPE_Q8_0, &err) == PT_ERR_UNSUPPORTED);
}

/* A pin keeps a released page from being reused until the pin goes. */
static void test_refcount(void) {
    pt_kv_pool kv;
    pt_err err;
    CHECK(pt_kv_pool_init(&kv, NULL, 1, 4, 16, 2, 2, PT_DTYPE_F32, &err) == 0);
    CHECK_EQ_INT(pt_kv_page_alloc(&kv), 0);
    pt_kv_page_ref(&kv, 0);
    pt_kv_page_release(&kv, 0);
    CHECK_EQ_INT(pt_kv_pool_free_pages(&kv), 1);
    CHECK_EQ_INT(pt_kv_page_alloc(&kv), 1);
    CHECK_EQ_INT(pt_kv_page_alloc(&kv), -1);
    pt_kv_page_release(&kv, 0);
    CHECK_EQ_INT(pt_kv_page_alloc(&kv), 0);
    pt_kv_pool_free(&kv);
}

/* On a device: only enabled pages are charged; grow stops at the budget,
 * shrink takes free pages only and returns their charge. */
static void test_grow_shrink(void) {
    pt_err err;
    uint64_t page = pt_kv_page_bytes(2, 4, 16, PT_DTYPE_F32);
    pt_device *d;
    pt_device_spec spec = {PT_DEVICE_CPU, 1, 0, 6 * page};
    CHECK(pt_device_create(&d, 0, &spec, &err) == 0);
    pt_kv_pool kv;
    CHECK(pt_kv_pool_init(&kv, d, 2, 4, 16, 2, 10, PT_DTYPE_F32, &err) == 0);
    CHECK_EQ_INT(pt_device_used(d, PT_MEM_KV), 2 * page);
    CHECK_EQ_INT(pt_kv_page_alloc(&kv), 0);
    CHECK_EQ_INT(pt_kv_page_alloc(&kv), 1);
    CHECK_EQ_INT(pt_kv_page_alloc(&kv), -1);
    CHECK_EQ_INT(pt_kv_pool_grow(&kv, 100), 4); /* the budget holds 6 */
    CHECK_EQ_INT(kv.n_enabled, 6);
    CHECK_EQ_INT(pt_device_used(d, PT_MEM_KV), 6 * page);
    CHECK(!pt_kv_pool_shrink(&kv, 5)); /* only 4 are free */
    CHECK(pt_kv_pool_shrink(&kv, 3));
    CHECK_EQ_INT(pt_device_used(d, PT_MEM_KV), 3 * page);
    CHECK_EQ_INT(pt_kv_pool_free_pages(&kv), 1);
    pt_kv_page_release(&kv, 0);
    pt_kv_page_release(&kv, 1);
    pt_kv_pool_free(&kv);
    CHECK_EQ_INT(pt_device_used(d, PT_MEM_KV), 0);
    pt_device_free(d);
}

TEST_MAIN(TEST(test_alloc_release), TEST(test_refcount), TEST(test_grow_shrink), TEST(test_bounding_box), TEST(test_f16_pages))
