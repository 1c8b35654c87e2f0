/* dtype traits and the 16-bit float conversions, checked exhaustively against
 * the compiler's own _Float16 conversion where it exists. */
#include "proteus/dtype.h"
#include "test.h"

static void test_block_sizes(void) {
    uint64_t b = 0;
    CHECK(pt_dtype_row_bytes(PT_DTYPE_Q4_1, 64, &b) && b == 40);
    CHECK(pt_dtype_row_bytes(PT_DTYPE_Q6_K, 512, &b) && b == 420);
    CHECK(!pt_dtype_row_bytes(PT_DTYPE_Q4_0, 33, &b));
    CHECK(!pt_dtype_row_bytes(PT_DTYPE_F32, UINT64_MAX / 2, &b));
    CHECK(!pt_dtype_valid(5) && !pt_dtype_valid(-1) && !pt_dtype_valid(PT_DTYPE_COUNT));
}

static void test_f16_roundtrip_all(void) {
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = pt_f16_to_f32((pt_f16)h);
        if (f != f) continue; /* nan payloads need not round-trip */
        if (pt_f32_to_f16(f) != h) bad++;
#if defined(__FLT16_MAX__)
        _Float16 ref;
        uint16_t hh = (uint16_t)h;
        memcpy(&ref, &hh, 2);
        if ((float)ref != f) bad++;
#endif
    }
    CHECK_EQ_INT(bad, 0);
}

static void test_f16_rounding(void) {
#if defined(__FLT16_MAX__)
    int bad = 0;
    uint32_t x = 12345;
    for (int i = 0; i < 1000000; i++) {
        x = x * 1664525u + 1013904223u;
        float f;
        uint32_t bits = x;
        memcpy(&f, &bits, 4);
        if (f != f) continue;
        _Float16 ref = (_Float16)f;
        uint16_t rb;
        memcpy(&rb, &ref, 2);
        if (pt_f32_to_f16(f) != rb) bad++;
    }
    CHECK_EQ_INT(bad, 0);
#endif
}

static void test_bf16(void) {
    CHECK(pt_bf16_to_f32(pt_f32_to_bf16(1.0f)) == 1.0f);
    CHECK(pt_f32_to_bf16(1.00390625f) == 0x3f80); /* tie rounds to even */
    CHECK(pt_f32_to_bf16(1.01171875f) == 0x3f82);
}

TEST_MAIN(TEST(test_block_sizes), TEST(test_f16_roundtrip_all), TEST(test_f16_rounding), TEST(test_bf16))
