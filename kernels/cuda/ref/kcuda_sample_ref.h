/* Plain C reference for kcuda_sample (kcuda_sample.h): the definition of the
 * GPU sampler, one row at a time, on host memory. Written for clarity (full
 * sorts), not speed. The parameters are those of kcuda_sample_params, passed
 * one by one so that this library needs no CUDA header. */
#ifndef PROTEUS_KCUDA_SAMPLE_REF_H
#define PROTEUS_KCUDA_SAMPLE_REF_H

#include <stddef.h>
#include <stdint.h>

/* exp(x) for x in [-28, 0] from basic float operations in a fixed order, each
 * rounded on its own (the kernel does the same operations):
 *   k  = (float)(int)((x * log2e + 1.5 * 2^23) - 1.5 * 2^23)   (round to nearest)
 *   r  = (x - k * 0.693359375) - k * -2.12194440e-4
 *   y  = 1.9875691500e-4; then y = y * r + c for c = 1.3981999507e-3,
 *        8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1
 *   exp = (((y * (r * r)) + r) + 1) * 2^k
 * (the Cephes expf polynomial). exp(0) = 1 exactly. */
float kcuda_ref_sample_exp(float x);

/* The integer weight W = floor(p * 2^40) of a cleaned logit l given the
 * cleaned max m and temperature T > 0, with p (0 when x < -28) in *p. */
uint64_t kcuda_ref_sample_weight(float l, float m, float temperature, float *p);

/* The token kcuda_sample gives for one row (see kcuda_sample.h for the
 * definition): -1 when no logit is finite. */
int32_t kcuda_ref_sample(const float *logits, size_t vocab, float temperature, int32_t top_k, float top_p,
                         float min_p, float uniform);

/* Steps 1 to 7 of the definition for temperature > 0: keep[j] = 1 for the
 * tokens left in K, w[j] = W_j for every token (0 where p < 2^-40). Returns
 * the number kept, 0 when no logit is finite. For tests of the filters. */
size_t kcuda_ref_sample_keep(uint8_t *keep, uint64_t *w, const float *logits, size_t vocab, float temperature,
                             int32_t top_k, float top_p, float min_p);

#endif
