/* CPU matrix products over quantized and float weights.
 *
 * Conventions: W has N rows of K elements each (GGUF/HF [out, in] order: a row
 * is one output feature), stored as whole blocks of its dtype, rows w_stride
 * bytes apart. X holds T activation rows already converted with
 * kcpu_quantize_act for that weight type, rows x_stride bytes apart.
 * Y is float, Y[t * ldy + n] for output row n of token t.
 *
 * Determinism contract (DESIGN.md section 3): every Y element is computed with
 * one fixed sequence of operations that depends only on the weight row and the
 * activation row, never on T, on n0/n1, on tiling or on thread count. This is
 * what makes a request's tokens independent of its batch. The fast ISA path is
 * chosen once per process; the reference path is the definition and the fast
 * paths must agree with it within floating-point rounding. */
#ifndef PROTEUS_KCPU_MATMUL_H
#define PROTEUS_KCPU_MATMUL_H

#include <stddef.h>
#include "proteus/dtype.h"

typedef enum {
    KCPU_ISA_REF = 0,    /* portable C: the definition */
    KCPU_ISA_AVX2 = 1,   /* AVX2 + FMA + F16C */
    KCPU_ISA_AVX512 = 2, /* AVX-512 F/BW/VL (+VNNI where present) */
} kcpu_isa;

/* Best ISA this CPU supports (cached). PROTEUS_ISA=ref|avx2|avx512 in the
 * environment caps it, for tests and for comparing paths. */
kcpu_isa kcpu_isa_active(void);
const char *kcpu_isa_name(kcpu_isa isa);

/* Format activations take when multiplied with weights of type wtype:
 * Q4_0, Q8_0 -> Q8_0; Q4_1 -> Q8_1; Q4_K, Q6_K -> Q8_K; F32, F16, BF16 -> F32. */
pt_dtype kcpu_act_type(pt_dtype wtype);
/* Whether kcpu_matmul supports weights of this type. */
bool kcpu_weight_type_supported(pt_dtype wtype);

/* Convert one float activation row of K elements into kcpu_act_type(wtype).
 * K must be a multiple of that type's block size. */
void kcpu_quantize_act(pt_dtype wtype, void *dst, const float *x, size_t K);

/* Y[t][n] = dot(W[n], X[t]) for n in [n0, n1), t in [0, T). */
void kcpu_matmul(pt_dtype wtype, const void *W, size_t w_stride, size_t n0, size_t n1,
                 const void *X, size_t x_stride, size_t T, size_t K, float *Y, size_t ldy);
/* Same, forced onto one ISA (tests and benchmarks). */
void kcpu_matmul_isa(kcpu_isa isa, pt_dtype wtype, const void *W, size_t w_stride, size_t n0,
                     size_t n1, const void *X, size_t x_stride, size_t T, size_t K, float *Y,
                     size_t ldy);

/* Y[t][n] = dot(dequantize(W[n]), X[t]) with F32 activations X (rows
 * x_stride bytes apart): the arithmetic of a float reference implementation,
 * for checking against one (slower than kcpu_matmul). Same determinism
 * contract; the dot product is kcpu_dot_f32's. */
void kcpu_matmul_dequant(pt_dtype wtype, const void *W, size_t w_stride, size_t n0, size_t n1, const float *X,
                         size_t x_stride, size_t T, size_t K, float *Y, size_t ldy);

/* Dequantize one row of K elements of any supported weight type into floats. */
void kcpu_dequantize_row(pt_dtype type, float *dst, const void *src, size_t K);
/* Quantize one float row into a weight type (reference quality, used by
 * synthetic models and tests). Supports every weight type listed above. */
void kcpu_quantize_row(pt_dtype type, void *dst, const float *src, size_t K);

#endif
