#include "proteus/dtype.h"

#include <string.h>

typedef struct {
    const char *name;
    size_t block_size;
    size_t block_bytes;
} dtype_traits;

static const dtype_traits traits[PT_DTYPE_COUNT] = {
    [PT_DTYPE_F32] = {"F32", 1, 4},
    [PT_DTYPE_F16] = {"F16", 1, 2},
    [PT_DTYPE_Q4_0] = {"Q4_0", PT_QK, sizeof(pt_block_q4_0)},
    [PT_DTYPE_Q4_1] = {"Q4_1", PT_QK, sizeof(pt_block_q4_1)},
    [PT_DTYPE_Q8_0] = {"Q8_0", PT_QK, sizeof(pt_block_q8_0)},
    [PT_DTYPE_Q8_1] = {"Q8_1", PT_QK, sizeof(pt_block_q8_1)},
    [PT_DTYPE_Q4_K] = {"Q4_K", PT_QK_K, sizeof(pt_block_q4_k)},
    [PT_DTYPE_Q6_K] = {"Q6_K", PT_QK_K, sizeof(pt_block_q6_k)},
    [PT_DTYPE_Q8_K] = {"Q8_K", PT_QK_K, sizeof(pt_block_q8_k)},
    [PT_DTYPE_BF16] = {"BF16", 1, 2},
};

bool pt_dtype_valid(int type) {
    return type >= 0 && type < PT_DTYPE_COUNT && traits[type].name != NULL;
}
const char *pt_dtype_name(pt_dtype type) { return pt_dtype_valid(type) ? traits[type].name : "?"; }
size_t pt_dtype_block_size(pt_dtype type) { return pt_dtype_valid(type) ? traits[type].block_size : 0; }
size_t pt_dtype_block_bytes(pt_dtype type) { return pt_dtype_valid(type) ? traits[type].block_bytes : 0; }

bool pt_dtype_row_bytes(pt_dtype type, uint64_t n, uint64_t *out) {
    if (!pt_dtype_valid(type)) return false;
    uint64_t bs = traits[type].block_size;
    if (n % bs != 0) return false;
    return !__builtin_mul_overflow(n / bs, (uint64_t)traits[type].block_bytes, out);
}

float pt_f16_to_f32(pt_f16 h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ff;
    uint32_t bits;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else { /* subnormal: normalize */
            exp = 127 - 15 + 1;
            while (!(mant & 0x400)) {
                mant <<= 1;
                exp--;
            }
            mant &= 0x3ff;
            bits = sign | (exp << 23) | (mant << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (mant << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

pt_f16 pt_f32_to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000;
    uint32_t absx = x & 0x7fffffff;
    if (absx >= 0x7f800000u) /* inf or nan */
        return (pt_f16)(sign | 0x7c00 | (absx > 0x7f800000u ? 0x200 : 0));
    if (absx >= 0x477ff000u) /* rounds to >= 65520: overflow to inf */
        return (pt_f16)(sign | 0x7c00);
    if (absx < 0x38800000u) { /* below the smallest normal half: subnormal or zero */
        if (absx < 0x33000000u) return (pt_f16)sign;
        uint32_t e = absx >> 23;
        uint32_t mant = (absx & 0x7fffff) | 0x800000;
        /* value = mant * 2^(e-150) and the subnormal unit is 2^-24, so q = mant >> (126 - e). */
        uint32_t shift = 126 - e;
        uint32_t q = mant >> shift;
        uint32_t rem = mant & ((1u << shift) - 1);
        uint32_t half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1))) q++;
        return (pt_f16)(sign | q);
    }
    uint32_t r = absx - 0x38000000u; /* rebias exponent 127 -> 15 */
    uint32_t q = r >> 13;
    uint32_t rem = r & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (q & 1))) q++;
    return (pt_f16)(sign | q);
}

float pt_bf16_to_f32(pt_bf16 h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

pt_bf16 pt_f32_to_bf16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffff) > 0x7f800000u) return (pt_bf16)((x >> 16) | 0x40); /* quiet nan */
    x += 0x7fff + ((x >> 16) & 1);
    return (pt_bf16)(x >> 16);
}
