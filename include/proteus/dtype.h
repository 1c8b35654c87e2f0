/* Element types of tensors, and the block layouts of the quantized ones.
 *
 * The numeric values equal GGML's type ids, so a GGUF tensor's type field maps
 * onto pt_dtype without a table. Quantized types store K elements of a row as
 * K / block_size blocks; a row never splits a block. */
#ifndef PROTEUS_DTYPE_H
#define PROTEUS_DTYPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
    PT_DTYPE_F32 = 0,
    PT_DTYPE_F16 = 1,
    PT_DTYPE_Q4_0 = 2,
    PT_DTYPE_Q4_1 = 3,
    PT_DTYPE_Q8_0 = 8,
    PT_DTYPE_Q8_1 = 9,  /* activations only: the partner of Q4_0, Q4_1 */
    PT_DTYPE_Q4_K = 12,
    PT_DTYPE_Q6_K = 14,
    PT_DTYPE_Q8_K = 15, /* activations only: the partner of Q4_K, Q6_K */
    PT_DTYPE_BF16 = 30,
    PT_DTYPE_COUNT = 31, /* one past the largest id; not every id below is valid */
} pt_dtype;

#define PT_QK 32   /* elements per block of Q4_0, Q4_1, Q8_0, Q8_1 */
#define PT_QK_K 256 /* elements per super-block of Q4_K, Q6_K, Q8_K */

typedef uint16_t pt_f16;  /* IEEE half, bit pattern */
typedef uint16_t pt_bf16; /* bfloat16, bit pattern */

typedef struct {
    pt_f16 d;             /* scale */
    uint8_t qs[PT_QK / 2]; /* nibbles: element i in low nibble of qs[i], i+16 in high */
} pt_block_q4_0;

typedef struct {
    pt_f16 d;             /* scale */
    pt_f16 m;             /* minimum: x = d * q + m */
    uint8_t qs[PT_QK / 2];
} pt_block_q4_1;

typedef struct {
    pt_f16 d;
    int8_t qs[PT_QK];
} pt_block_q8_0;

typedef struct {
    pt_f16 d;  /* scale */
    pt_f16 s;  /* d * sum(qs), so that a Q4_1 minimum folds in without a second pass */
    int8_t qs[PT_QK];
} pt_block_q8_1;

typedef struct {
    pt_f16 d;                 /* super-block scale for the 6-bit sub-block scales */
    pt_f16 dmin;              /* super-block scale for the 6-bit sub-block minimums */
    uint8_t scales[12];       /* 8 scales and 8 minimums, 6 bits each, packed */
    uint8_t qs[PT_QK_K / 2];  /* 4-bit quants */
} pt_block_q4_k;

typedef struct {
    uint8_t ql[PT_QK_K / 2];     /* low 4 bits of the quants */
    uint8_t qh[PT_QK_K / 4];     /* high 2 bits */
    int8_t scales[PT_QK_K / 16]; /* 8-bit sub-block scales */
    pt_f16 d;                    /* super-block scale */
} pt_block_q6_k;

typedef struct {
    float d;                       /* scale */
    int8_t qs[PT_QK_K];
    int16_t bsums[PT_QK_K / 16];   /* sums of groups of 16 quants */
} pt_block_q8_k;

_Static_assert(sizeof(pt_block_q4_0) == 18, "Q4_0 block layout");
_Static_assert(sizeof(pt_block_q4_1) == 20, "Q4_1 block layout");
_Static_assert(sizeof(pt_block_q8_0) == 34, "Q8_0 block layout");
_Static_assert(sizeof(pt_block_q8_1) == 36, "Q8_1 block layout");
_Static_assert(sizeof(pt_block_q4_k) == 144, "Q4_K block layout");
_Static_assert(sizeof(pt_block_q6_k) == 210, "Q6_K block layout");
_Static_assert(sizeof(pt_block_q8_k) == 292, "Q8_K block layout");

/* True for the ids above except PT_DTYPE_COUNT. */
bool pt_dtype_valid(int type);
/* Name as GGUF tools print it ("Q4_1"), or "?" for an invalid id. */
const char *pt_dtype_name(pt_dtype type);
/* Elements per block (1 for F32, F16, BF16). */
size_t pt_dtype_block_size(pt_dtype type);
/* Bytes per block (element size for F32, F16, BF16). */
size_t pt_dtype_block_bytes(pt_dtype type);
/* Bytes of a row of n elements. Fails (returns false) when n is not a whole
 * number of blocks or the size overflows. */
bool pt_dtype_row_bytes(pt_dtype type, uint64_t n, uint64_t *out);

/* Conversions between float and the 16-bit float formats (round to nearest even). */
float pt_f16_to_f32(pt_f16 h);
pt_f16 pt_f32_to_f16(float f);
float pt_bf16_to_f32(pt_bf16 h);
pt_bf16 pt_f32_to_bf16(float f);

#endif
