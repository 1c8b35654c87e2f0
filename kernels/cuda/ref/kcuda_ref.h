/* Plain C references for the CUDA kernels of kcuda.h: the definition of each
 * kernel's math. Same arguments as the kernels, on host memory, no stream.
 * Written for clarity, not speed. */
#ifndef PROTEUS_KCUDA_REF_H
#define PROTEUS_KCUDA_REF_H

#include <stddef.h>
#include <stdint.h>

/* The sum of squares is taken in double, so the reference is the more exact
 * side of any comparison; the scale is then applied in float. */
void kcuda_ref_rmsnorm(float *out, const float *x, const float *w, size_t T, size_t D, float eps);

/* neox: 0 = adjacent pairs (KCUDA_ROPE_NORM), 1 = rotate-half (KCUDA_ROPE_NEOX). */
void kcuda_ref_rope(float *x, const int32_t *pos, const float *inv_freq, size_t T, size_t H,
                    size_t head_dim, size_t token_stride, size_t n_rot, int neox);

void kcuda_ref_swiglu(float *out, const float *gate, const float *up, size_t T, size_t D,
                      size_t ld_out, size_t ld_gate, size_t ld_up);

void kcuda_ref_add(float *out, const float *a, const float *b, size_t n);

/* Out-of-range ids give rows of zeros, as on the device. */
void kcuda_ref_embed_f32(float *out, const float *table, const int32_t *ids, size_t T, size_t D,
                         size_t n_vocab);
void kcuda_ref_embed_bf16(float *out, const uint16_t *table, const int32_t *ids, size_t T,
                          size_t D, size_t n_vocab);

/* ---- bf16 / f16 conversions, shared by every reference ---- */

/* f32 -> bf16, round to nearest even. Infinities stay infinite, finite values
 * past the largest bf16 round to infinity, and a NaN gives a quiet NaN of the
 * same sign (the device gives the canonical NaN 0x7fff; compare NaNs as NaNs).
 * kcuda_ref_bf16_to_f32 is the exact way back. */
uint16_t kcuda_ref_f32_to_bf16(float f);
float kcuda_ref_bf16_to_f32(uint16_t h);
/* f32 -> IEEE binary16, round to nearest even, subnormals kept, overflow to
 * infinity; kcuda_ref_f16_to_f32 is the exact way back. */
uint16_t kcuda_ref_f32_to_f16(float f);
float kcuda_ref_f16_to_f32(uint16_t h);

/* kcuda_f32_to_bf16: out[i] = bf16(in[i]). */
void kcuda_ref_f32_to_bf16_n(uint16_t *out, const float *in, size_t n);

#endif
