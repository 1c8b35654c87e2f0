/* Token sampling on the GPU for a batch of logit rows: greedy, or one draw
 * after the top-k, top-p and min-p filters, with the random number supplied
 * by the host so that a seed reproduces the run.
 *
 * V = vocabulary size. Row i of logits is (V) f32 starting at i * ld floats;
 * params[i] and tokens[i] belong to it. The math is defined below and, op by
 * op, by the plain C reference kcuda_ref_sample (ref/kcuda_sample_ref.h); the
 * kernel gives the same token, exactly, for every input: probabilities are
 * made of basic IEEE float operations in a fixed order and turned into
 * integer weights, so every sum is exact and no result depends on the order
 * of a reduction.
 *
 * Definition, per row:
 *   1. Logits are cleaned: NaN -> -inf, +inf -> FLT_MAX. With no finite logit
 *      left the token is -1 (in greedy mode too).
 *   2. a = the argmax (lowest index among equal largest logits), m = l_a.
 *      temperature not > 0 (0, negative or NaN): the token is a.
 *   3. x_j = (l_j - m) / temperature in float (one rounded subtraction, one
 *      rounded division); p_j = kcuda exp(x_j) (kcuda_ref_sample_exp: a
 *      fixed sequence of float operations, within a few ulp of exp) for
 *      x_j >= -28, else 0; the weight W_j = floor(p_j * 2^40) as an integer.
 *      p_a = 1 and W_a = 2^40 exactly. Tokens with W_j = 0 (p < 2^-40) can
 *      never be drawn.
 *   4. top_k in [1, V - 1]: K = tokens whose logit >= the k-th largest logit
 *      (counted with multiplicity, so ties at the k-th are all kept);
 *      otherwise (<= 0 or >= V) K = every token.
 *   5. top_p < 1: with Z_K = sum of W over K and
 *      need = max(1, ceil(double(top_p) * double(Z_K))), lambda is the largest
 *      logit of a token of K for which the tokens of K with logit >= lambda
 *      weigh >= need; tokens below lambda leave K. This is the smallest set of
 *      most likely tokens holding top_p of K's mass, tokens of equal logit
 *      kept together (the order of the CPU sampler and vLLM: top-p renormalized
 *      over what top-k left). top_p >= 1 or NaN: off.
 *   6. min_p > 0: tokens with p_j < min_p (that is p < min_p * p_max) leave
 *      K; min_p <= 0 or NaN: off.
 *   7. The argmax a always stays in K.
 *   8. Draw: Z = sum of W over K (>= 2^40); u = uniform clamped to [0, 1)
 *      (NaN or negative -> 0, >= 1 -> the largest float below 1);
 *      target = trunc(double(u) * double(Z)) (< Z); the token is the lowest
 *      index j of K whose running sum of W over K up to and including j is
 *      > target. Token j is drawn with probability W_j / Z, to within one
 *      part in 2^24 (the resolution of u).
 * The CPU sampler (include/proteus/sampler.h) applies the filters in the
 * same order, but in double precision, cutting ties by token id (its top-k
 * keeps exactly k) and treating temperatures below 1e-5 as greedy; the
 * engine passes temperature 0 for greedy rows. The two agree in distribution
 * except on tied logits, not draw for draw. Bias and penalties are the
 * caller's, applied to the logits before this call. */
#ifndef PROTEUS_KCUDA_SAMPLE_H
#define PROTEUS_KCUDA_SAMPLE_H

#include <stddef.h>
#include <stdint.h>
#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    float temperature; /* not > 0: greedy (filters and uniform ignored) */
    int32_t top_k;     /* <= 0 or >= V: off */
    float top_p;       /* >= 1: off */
    float min_p;       /* <= 0: off */
    float uniform;     /* in [0, 1) from the host's seeded generator */
} kcuda_sample_params;

#ifdef __cplusplus
static_assert(sizeof(kcuda_sample_params) == 20, "kcuda_sample_params is uploaded as is");
#else
_Static_assert(sizeof(kcuda_sample_params) == 20, "kcuda_sample_params is uploaded as is");
#endif

/* Largest vocabulary: V * 2^40 must stay below 2^63 for the exact sums. */
#define KCUDA_SAMPLE_MAX_VOCAB ((size_t)1 << 22)

/* tokens[i] for i < n_rows, from logits rows ld floats apart (ld >= V when
 * n_rows > 1) and params[i]; all three are device arrays. One block per row;
 * no workspace. cudaErrorInvalidValue, with nothing launched, for V == 0 or
 * V > KCUDA_SAMPLE_MAX_VOCAB, NULL pointers or ld < V; n_rows == 0 is a no-op. */
cudaError_t kcuda_sample(int32_t *tokens, const float *logits, size_t ld, size_t n_rows, size_t vocab,
                         const kcuda_sample_params *params, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
