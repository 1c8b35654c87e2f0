/* Token sampling for one request, with the knobs of vLLM and the OpenAI API.
 *
 * V = vocabulary size. Per generated token the caller runs
 *
 *     tok = pt_sampler_sample(&s, logits, &work);    // logits: (V) raw model output
 *     pt_logprobs_compute(logits, V, tok, n, &lp, top);  // only if the request asked
 *     pt_sampler_accept(&s, tok);
 *
 * The order of operations is vLLM's: logit_bias, then penalties (repetition
 * over prompt + generated tokens, then frequency and presence over generated
 * tokens only), then temperature, then the top-k, top-p and min-p filters, then
 * one draw from the softmax of what is left. Temperature 0 (below 1e-5, as in
 * vLLM) is greedy: the argmax after bias and penalties, lowest index on ties,
 * with every filter ignored. ignore_eos, min_tokens and max_tokens belong to
 * the caller.
 *
 * Determinism: a seed and a logits vector give the same token on every
 * platform with IEEE-754 binary32/64 arithmetic. The sampler uses its own exp
 * (basic operations only, no FMA contraction) instead of libm's, orders ties by
 * token id, and draws with the splitmix64 pt_rng.
 *
 * Cost per token: O(V) for greedy; with filters, top-k keeps a k-entry heap
 * (O(V) for most inputs, O(V log k) at worst, and only k exps), top-p is a
 * quickselect on cumulative mass (expected O(V)), min-p a threshold: nothing
 * sorts the vocabulary. Penalties cost O(distinct tokens seen), not O(V). */
#ifndef PROTEUS_SAMPLER_H
#define PROTEUS_SAMPLER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proteus/util.h"

typedef struct {
    int32_t token;
    float bias; /* added to the logit; OpenAI clamps to [-100, 100], the server validates */
} pt_logit_bias;

typedef struct {
    float temperature;        /* 0 = greedy; >= 0 */
    int32_t top_k;            /* 0 or -1 = off; else keep the k most likely */
    float top_p;              /* 1 = off; in (0, 1] */
    float min_p;              /* 0 = off; in [0, 1]: drop p < min_p * p_max */
    float presence_penalty;   /* subtracted once from every generated token */
    float frequency_penalty;  /* subtracted once per occurrence in the output */
    float repetition_penalty; /* 1 = off; > 0: positive logits divided, negative multiplied */
    uint64_t seed;            /* always used: a request without one gets a random seed from the caller */
    const pt_logit_bias *logit_bias; /* (n_logit_bias); copied by init */
    size_t n_logit_bias;
} pt_sampler_params;

/* Greedy, every filter and penalty off, no bias, seed 0. */
void pt_sampler_params_default(pt_sampler_params *p);

typedef struct {
    pt_sampler_params params; /* params.logit_bias points at bias below */
    pt_logit_bias *bias;      /* (n_logit_bias) owned copy */
    size_t vocab;             /* V */
    uint32_t *gen_count;      /* (V) how often each token was generated */
    uint8_t *seen;            /* (V) 1 when the token is in the prompt or was generated */
    int32_t *seen_ids;        /* (n_seen) the tokens with seen set, first-seen order */
    size_t n_seen, cap_seen;
    pt_rng rng;
} pt_sampler;

/* Validates params (message names the bad field) and allocates the per-request
 * state. On failure nothing needs freeing. */
int pt_sampler_init(pt_sampler *s, const pt_sampler_params *params, size_t vocab_size, pt_err *err);
void pt_sampler_free(pt_sampler *s);

/* Prompt tokens count for the repetition penalty only. May be called more than
 * once (chunked prefill). PT_ERR_INVALID for a token outside [0, V). */
int pt_sampler_record_prompt(pt_sampler *s, const int32_t *tokens, size_t n, pt_err *err);
/* A generated token: counts for all three penalties. */
int pt_sampler_accept(pt_sampler *s, int32_t token, pt_err *err);

/* Scratch that pt_sampler_sample writes; one per thread that samples, shared
 * by all the requests it serves one after another (about 16 bytes per token). */
typedef struct {
    float *logits;  /* (V) the logits the filters saw: bias, penalties and
                       temperature applied */
    double *weight; /* (V) exp(logit - max logit) = p / p_max, for every token
                       that survived top-k (all tokens when top-k is off) */
    int32_t *idx;   /* (V) after a filtered sample: idx[0..n_kept) are the
                       tokens that could be drawn, in token order */
    size_t n_kept;
    size_t vocab;
} pt_sample_work;

int pt_sample_work_init(pt_sample_work *w, size_t vocab_size, pt_err *err);
void pt_sample_work_free(pt_sample_work *w);

/* Applies bias, penalties and temperature (not the filters) to in[V], writing
 * out[V]; in == out is allowed. Temperature is skipped when greedy. */
void pt_sampler_process(const pt_sampler *s, const float *in, float *out);

/* Runs the top-k, top-p and min-p filters over w->logits[0..vocab) (already
 * processed): fills w->weight, writes the surviving tokens to w->idx[0..n) in
 * token order, sets w->n_kept and returns n; 0 only when every logit is -inf
 * or NaN. Exposed so a test can check it against a full sort. */
size_t pt_sampler_filter(const pt_sampler_params *p, pt_sample_work *w, size_t vocab);

/* Picks the next token from raw logits[V], which are not modified. Returns the
 * token id, or PT_ERR_INVALID when no token has a finite logit (NaN counts
 * as -inf). Advances the RNG by exactly one draw unless greedy. */
int32_t pt_sampler_sample(pt_sampler *s, const float *logits, pt_sample_work *w);

/* Log-probabilities for the OpenAI `logprobs` / vLLM `logprobs` fields.
 *
 * As vLLM does by default, these are the log_softmax of the RAW logits, before
 * bias, penalties, temperature and filtering: the model's own distribution, so
 * a token a filter removed still has its true, finite logprob. To report the
 * processed distribution instead, pass work->logits after a sample.
 *
 * Writes the chosen token's logprob to *chosen (may be NULL) and the n_top
 * (<= PT_LOGPROBS_MAX, <= V) most likely tokens to top[0..n_top), sorted by
 * logprob descending, ties by lower id. NaN logits count as -inf. Returns
 * PT_ERR_INVALID for a bad token or n_top, or when no logit is finite. */
#define PT_LOGPROBS_MAX 20
typedef struct {
    int32_t token;
    float logprob;
} pt_token_logprob;

int pt_logprobs_compute(const float *logits, size_t vocab, int32_t token, size_t n_top, float *chosen,
                        pt_token_logprob *top);

#endif
