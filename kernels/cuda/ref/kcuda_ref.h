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

#endif
