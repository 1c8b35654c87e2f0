/* Token sampling: bias, penalties, temperature, top-k / top-p / min-p, one
 * seeded draw. See include/proteus/sampler.h for the contract.
 *
 * V = vocabulary size. "Rank" is a token's place in the order the filters use:
 * larger logit first, lower token id first among equal logits (a total order).
 * top-k and top-p each keep a rank prefix: top-k through a k-entry heap
 * (one comparison per token for most inputs), top-p by quickselect on
 * cumulative mass in expected O(V); min-p is a plain threshold on p / p_max.
 * Nothing sorts the vocabulary. The survivors are then walked in
 * token order with one uniform draw.
 *
 * Determinism rests on using only IEEE basic operations in a fixed order. GCC
 * in gnu11 mode would fuse a*b+c into an FMA on targets that have one, which
 * rounds differently, so contraction is switched off for this file. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "proteus/sampler.h"

#include <assert.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* vLLM treats temperatures below this as greedy. */
#define SAMPLER_GREEDY_EPS 1e-5f

/* exp(x) for x <= 0 from basic operations only, so that every platform gets
 * the same bits (libm exp differs in the last ulp between libraries). Range
 * reduction x = k ln2 + r with |r| <= ln2/2 (k rounded to nearest by the
 * 1.5 * 2^52 trick, which leaves k in the low mantissa bits), a degree-11
 * Taylor polynomial (truncation error about 2e-14 relative, far below what a
 * probability needs), then scaling by 2^k built from its bits. Results under
 * 2^-1000 are flushed to zero. */
static inline double det_exp(double x) {
    const double log2e = 1.4426950408889634;
    const double ln2_hi = 6.93147180369123816490e-01; /* k * ln2_hi is exact for |k| < 2^20 */
    const double ln2_lo = 1.90821492927058770002e-10;
    const double shifter = 0x1.8p52;
    if (!(x > -693.0)) return 0.0; /* also NaN */
    if (x > 0.0) x = 0.0;          /* callers pass l - max <= 0 */
    double kd = x * log2e + shifter;
    uint64_t kbits;
    memcpy(&kbits, &kd, sizeof kbits);
    kd -= shifter;
    double r = (x - kd * ln2_hi) - kd * ln2_lo;
    double p = 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    /* The low bits of kbits hold k (two's complement, k in [-1000, 0]). */
    uint64_t sbits = (kbits + 1023) << 52;
    double scale;
    memcpy(&scale, &sbits, sizeof scale);
    return p * scale;
}

/* NaN never wins and +inf would make l - max undefined: map them to -inf and
 * the largest float, which keeps every comparison meaningful. */
static inline float clean_logit(float x) {
    if (x != x) return -INFINITY;
    if (x == INFINITY) return FLT_MAX;
    return x;
}

static bool sampler_is_greedy(const pt_sampler_params *p) { return p->temperature < SAMPLER_GREEDY_EPS; }

void pt_sampler_params_default(pt_sampler_params *p) {
    memset(p, 0, sizeof *p);
    p->temperature = 0.0f;
    p->top_k = 0;
    p->top_p = 1.0f;
    p->min_p = 0.0f;
    p->repetition_penalty = 1.0f;
}

static int sampler_check_params(const pt_sampler_params *p, size_t vocab, pt_err *err) {
    if (vocab == 0 || vocab > (size_t)INT32_MAX) return pt_err_set(err, PT_ERR_INVALID, "sampler: vocab size %zu out of range", vocab);
    if (!(p->temperature >= 0.0f) || isinf(p->temperature))
        return pt_err_set(err, PT_ERR_INVALID, "sampler: temperature %g must be finite and >= 0", p->temperature);
    if (p->top_k < -1) return pt_err_set(err, PT_ERR_INVALID, "sampler: top_k %d must be -1, 0 or positive", p->top_k);
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f))
        return pt_err_set(err, PT_ERR_INVALID, "sampler: top_p %g must be in (0, 1]", p->top_p);
    if (!(p->min_p >= 0.0f && p->min_p <= 1.0f))
        return pt_err_set(err, PT_ERR_INVALID, "sampler: min_p %g must be in [0, 1]", p->min_p);
    if (!(p->repetition_penalty > 0.0f) || isinf(p->repetition_penalty))
        return pt_err_set(err, PT_ERR_INVALID, "sampler: repetition_penalty %g must be finite and > 0",
                          p->repetition_penalty);
    if (!isfinite(p->presence_penalty) || !isfinite(p->frequency_penalty))
        return pt_err_set(err, PT_ERR_INVALID, "sampler: presence/frequency penalties must be finite");
    if (p->n_logit_bias > 0 && !p->logit_bias) return pt_err_set(err, PT_ERR_INVALID, "sampler: logit_bias is NULL");
    for (size_t i = 0; i < p->n_logit_bias; i++) {
        const pt_logit_bias *b = &p->logit_bias[i];
        if (b->token < 0 || (size_t)b->token >= vocab)
            return pt_err_set(err, PT_ERR_INVALID, "sampler: logit_bias[%zu] token %d outside vocab of %zu", i, b->token,
                              vocab);
        if (!isfinite(b->bias)) return pt_err_set(err, PT_ERR_INVALID, "sampler: logit_bias[%zu] is not finite", i);
    }
    return PT_OK;
}

int pt_sampler_init(pt_sampler *s, const pt_sampler_params *params, size_t vocab_size, pt_err *err) {
    memset(s, 0, sizeof *s);
    int rc = sampler_check_params(params, vocab_size, err);
    if (rc) return rc;
    s->params = *params;
    s->vocab = vocab_size;
    /* gen_count and seen share one allocation: V * 5 bytes. */
    s->gen_count = malloc(vocab_size * (sizeof(uint32_t) + 1));
    if (!s->gen_count) return pt_err_set(err, PT_ERR_NOMEM, "sampler: no memory for %zu-token state", vocab_size);
    memset(s->gen_count, 0, vocab_size * (sizeof(uint32_t) + 1));
    s->seen = (uint8_t *)(s->gen_count + vocab_size);
    if (params->n_logit_bias > 0) {
        s->bias = malloc(params->n_logit_bias * sizeof *s->bias);
        if (!s->bias) {
            free(s->gen_count);
            memset(s, 0, sizeof *s);
            return pt_err_set(err, PT_ERR_NOMEM, "sampler: no memory for logit_bias");
        }
        memcpy(s->bias, params->logit_bias, params->n_logit_bias * sizeof *s->bias);
    }
    s->params.logit_bias = s->bias;
    pt_rng_seed(&s->rng, params->seed);
    return PT_OK;
}

void pt_sampler_free(pt_sampler *s) {
    free(s->gen_count);
    free(s->bias);
    free(s->seen_ids);
    memset(s, 0, sizeof *s);
}

static int sampler_mark_seen(pt_sampler *s, int32_t token, pt_err *err) {
    if (token < 0 || (size_t)token >= s->vocab)
        return pt_err_set(err, PT_ERR_INVALID, "sampler: token %d outside vocab of %zu", token, s->vocab);
    if (s->seen[token]) return PT_OK;
    if (s->n_seen == s->cap_seen) {
        size_t cap = s->cap_seen ? 2 * s->cap_seen : 64;
        int32_t *ids = realloc(s->seen_ids, cap * sizeof *ids);
        if (!ids) return pt_err_set(err, PT_ERR_NOMEM, "sampler: no memory for %zu seen tokens", cap);
        s->seen_ids = ids;
        s->cap_seen = cap;
    }
    s->seen_ids[s->n_seen++] = token;
    s->seen[token] = 1;
    return PT_OK;
}

int pt_sampler_record_prompt(pt_sampler *s, const int32_t *tokens, size_t n, pt_err *err) {
    for (size_t i = 0; i < n; i++) {
        int rc = sampler_mark_seen(s, tokens[i], err);
        if (rc) return rc;
    }
    return PT_OK;
}

int pt_sampler_accept(pt_sampler *s, int32_t token, pt_err *err) {
    int rc = sampler_mark_seen(s, token, err);
    if (rc) return rc;
    if (s->gen_count[token] < UINT32_MAX) s->gen_count[token]++;
    return PT_OK;
}

int pt_sample_work_init(pt_sample_work *w, size_t vocab_size, pt_err *err) {
    memset(w, 0, sizeof *w);
    w->logits = malloc(vocab_size * sizeof *w->logits);
    w->weight = malloc(vocab_size * sizeof *w->weight);
    w->idx = malloc(vocab_size * sizeof *w->idx);
    if (!w->logits || !w->weight || !w->idx) {
        pt_sample_work_free(w);
        return pt_err_set(err, PT_ERR_NOMEM, "sampler: no memory for %zu-token work buffers", vocab_size);
    }
    w->vocab = vocab_size;
    return PT_OK;
}

void pt_sample_work_free(pt_sample_work *w) {
    free(w->logits);
    free(w->weight);
    free(w->idx);
    memset(w, 0, sizeof *w);
}

void pt_sampler_process(const pt_sampler *s, const float *in, float *out) {
    const pt_sampler_params *p = &s->params;
    if (out != in) memcpy(out, in, s->vocab * sizeof *out);
    for (size_t i = 0; i < p->n_logit_bias; i++) out[p->logit_bias[i].token] += p->logit_bias[i].bias;
    const float rep = p->repetition_penalty;
    for (size_t i = 0; i < s->n_seen; i++) {
        int32_t t = s->seen_ids[i];
        float x = out[t];
        if (rep != 1.0f) x = x > 0.0f ? x / rep : x * rep;
        uint32_t c = s->gen_count[t];
        if (c > 0) {
            x -= p->frequency_penalty * (float)c;
            x -= p->presence_penalty;
        }
        out[t] = x;
    }
    if (!sampler_is_greedy(p) && p->temperature != 1.0f) {
        const float temp = p->temperature;
        for (size_t i = 0; i < s->vocab; i++) out[i] = clean_logit(out[i] / temp);
    } else {
        for (size_t i = 0; i < s->vocab; i++) out[i] = clean_logit(out[i]);
    }
}

/* Rank order: a comes before b. A total order, since ids are distinct. */
static inline bool rank_before(const float *l, int32_t a, int32_t b) { return l[a] > l[b] || (l[a] == l[b] && a < b); }

static inline void swap_idx(int32_t *idx, size_t a, size_t b) {
    int32_t t = idx[a];
    idx[a] = idx[b];
    idx[b] = t;
}

/* Lomuto partition of idx[lo..hi) (hi - lo >= 2) around the median of three
 * positions from a fixed LCG: tokens ranked before the pivot end up first.
 * Returns the pivot's position. The LCG makes the pivots, and so the whole
 * selection, a function of the input alone. */
static size_t rank_partition(int32_t *idx, size_t lo, size_t hi, const float *l, uint64_t *lcg) {
    size_t n = hi - lo, pos[3];
    for (int i = 0; i < 3; i++) {
        *lcg = *lcg * 6364136223846793005ull + 1442695040888963407ull;
        pos[i] = lo + (size_t)((*lcg >> 33) % n);
    }
    int32_t a = idx[pos[0]], b = idx[pos[1]], c = idx[pos[2]];
    size_t med = rank_before(l, a, b) ? (rank_before(l, b, c) ? pos[1] : rank_before(l, a, c) ? pos[2] : pos[0])
                                      : (rank_before(l, a, c) ? pos[0] : rank_before(l, b, c) ? pos[2] : pos[1]);
    swap_idx(idx, med, hi - 1);
    const int32_t pivot = idx[hi - 1];
    size_t store = lo;
    for (size_t i = lo; i < hi - 1; i++)
        if (rank_before(l, idx[i], pivot)) swap_idx(idx, i, store++);
    swap_idx(idx, store, hi - 1);
    return store;
}

/* The k best-ranked finite tokens of l[0..vocab) into idx[0..n), n = min(k,
 * finite count), as a heap with the worst of them at idx[0]. One comparison
 * per token for most inputs; O(V log k) at worst. */
static void heap_sift_worst(int32_t *h, size_t n, size_t i, const float *l) {
    for (;;) {
        size_t w = i, c1 = 2 * i + 1, c2 = 2 * i + 2;
        if (c1 < n && rank_before(l, h[w], h[c1])) w = c1;
        if (c2 < n && rank_before(l, h[w], h[c2])) w = c2;
        if (w == i) return;
        swap_idx(h, i, w);
        i = w;
    }
}

static size_t select_top_k(int32_t *idx, size_t k, const float *l, size_t vocab) {
    size_t n = 0;
    for (size_t i = 0; i < vocab; i++) {
        if (!(l[i] > -INFINITY)) continue;
        if (n < k) {
            /* Sift up: the new token moves above parents it ranks after. */
            size_t j = n++;
            idx[j] = (int32_t)i;
            while (j > 0 && rank_before(l, idx[(j - 1) / 2], idx[j])) {
                swap_idx(idx, j, (j - 1) / 2);
                j = (j - 1) / 2;
            }
        } else if (rank_before(l, (int32_t)i, idx[0])) {
            idx[0] = (int32_t)i;
            heap_sift_worst(idx, n, 0, l);
        }
    }
    return n;
}

/* Smallest K such that the K best-ranked of idx[0..n) carry mass >= target,
 * rearranging idx so that those K come first. Quickselect on mass: each round
 * keeps the side of the pivot where the boundary lies. Summation order differs
 * from a sorted walk only in rounding, and is itself fixed by the input. */
static size_t select_top_mass(int32_t *idx, size_t n, double target, const float *l, const double *e, uint64_t *lcg) {
    size_t lo = 0, hi = n;
    double before = 0.0; /* mass of idx[0..lo), all kept */
    while (hi - lo > 8) {
        size_t p = rank_partition(idx, lo, hi, l, lcg);
        double above = 0.0;
        for (size_t j = lo; j < p; j++) above += e[idx[j]];
        if (before + above >= target) {
            hi = p;
            continue;
        }
        before += above + e[idx[p]];
        if (before >= target) return p + 1;
        lo = p + 1;
    }
    /* A few left: put them in rank order and walk. */
    for (size_t j = lo + 1; j < hi; j++)
        for (size_t i = j; i > lo && rank_before(l, idx[i], idx[i - 1]); i--) swap_idx(idx, i, i - 1);
    for (size_t j = lo; j < hi; j++) {
        before += e[idx[j]];
        if (before >= target) return j + 1;
    }
    return hi; /* rounding left the range just short: it was judged enough */
}

size_t pt_sampler_filter(const pt_sampler_params *p, pt_sample_work *w, size_t vocab) {
    assert(w->vocab >= vocab);
    const float *l = w->logits;
    double *e = w->weight;
    int32_t *idx = w->idx;
    w->n_kept = 0;
    float mx = -INFINITY;
    for (size_t i = 0; i < vocab; i++)
        if (l[i] > mx) mx = l[i];
    if (mx == -INFINITY) return 0; /* NaN fails every comparison too */

    /* Candidates and their weights e = exp(l - max) = p / p_max. With top-k,
     * only the k survivors need an exp; `last` is the worst-ranked token of
     * the rank prefix kept so far (-1: no cut yet). */
    int32_t last = -1;
    size_t n;
    if (p->top_k > 0 && (size_t)p->top_k < vocab) {
        n = select_top_k(idx, (size_t)p->top_k, l, vocab);
        if (n == (size_t)p->top_k) last = idx[0];
        for (size_t j = 0; j < n; j++) e[idx[j]] = det_exp((double)l[idx[j]] - (double)mx);
    } else {
        n = 0;
        for (size_t i = 0; i < vocab; i++) {
            e[i] = det_exp((double)l[i] - (double)mx);
            if (e[i] > 0.0) idx[n++] = (int32_t)i;
        }
    }

    /* top-p over what top-k left (vLLM renormalizes in between). */
    if (p->top_p < 1.0f) {
        double z = 0.0;
        for (size_t j = 0; j < n; j++) z += e[idx[j]];
        uint64_t lcg = 0x853c49e6748fea9bull;
        size_t k = select_top_mass(idx, n, (double)p->top_p * z, l, e, &lcg);
        if (k < n) {
            n = k;
            last = idx[0];
            for (size_t j = 1; j < n; j++)
                if (rank_before(l, last, idx[j])) last = idx[j];
        }
    }

    /* Survivors in token order. Every token that passes the rank test has its
     * weight computed above. min-p needs no ranking: p >= min_p * p_max is
     * e >= min_p, and the top token (e = 1) always passes. */
    const double min_p = p->min_p;
    size_t kept = 0;
    for (size_t i = 0; i < vocab; i++) {
        if (!(l[i] > -INFINITY)) continue;
        if (last >= 0 && rank_before(l, last, (int32_t)i)) continue;
        if (!(e[i] > 0.0) || e[i] < min_p) continue;
        idx[kept++] = (int32_t)i;
    }
    w->n_kept = kept;
    return kept;
}

/* Uniform in (0, 1] with 53 bits: pt_rng_uniform's 24 bits would leave tokens
 * in the tail of a 150k vocabulary unreachable, and excluding 0 means a token
 * whose weight rounds to nothing can never be drawn. */
static double sampler_draw(pt_sampler *s) { return (double)((pt_rng_next(&s->rng) >> 11) + 1) * 0x1p-53; }

int32_t pt_sampler_sample(pt_sampler *s, const float *logits, pt_sample_work *w) {
    assert(w->vocab >= s->vocab);
    const size_t V = s->vocab;
    pt_sampler_process(s, logits, w->logits);
    w->n_kept = 0;

    if (sampler_is_greedy(&s->params)) {
        const float *l = w->logits;
        int32_t best = -1;
        float best_l = -INFINITY;
        for (size_t i = 0; i < V; i++)
            if (l[i] > best_l) best_l = l[i], best = (int32_t)i;
        return best >= 0 ? best : PT_ERR_INVALID;
    }

    const double u = sampler_draw(s);
    size_t n = pt_sampler_filter(&s->params, w, V);
    if (n == 0) return PT_ERR_INVALID;
    const double *e = w->weight;
    double z = 0.0;
    for (size_t j = 0; j < n; j++) z += e[w->idx[j]];
    const double target = u * z; /* <= z: the walk below always reaches it */
    double acc = 0.0;
    for (size_t j = 0; j < n; j++) {
        acc += e[w->idx[j]];
        if (target <= acc) return w->idx[j];
    }
    return w->idx[n - 1];
}

int pt_logprobs_compute(const float *logits, size_t vocab, int32_t token, size_t n_top, float *chosen,
                        pt_token_logprob *top) {
    if (vocab == 0 || n_top > PT_LOGPROBS_MAX || n_top > vocab || (n_top > 0 && !top)) return PT_ERR_INVALID;
    if (chosen && (token < 0 || (size_t)token >= vocab)) return PT_ERR_INVALID;
    float mx = -INFINITY;
    for (size_t i = 0; i < vocab; i++) {
        float x = clean_logit(logits[i]);
        if (x > mx) mx = x;
    }
    if (mx == -INFINITY) return PT_ERR_INVALID;
    double z = 0.0;
    for (size_t i = 0; i < vocab; i++) z += det_exp((double)clean_logit(logits[i]) - mx);
    /* z >= 1 (the max contributes exactly 1), so the log is finite. */
    const double lse = (double)mx + log(z);
    if (chosen) *chosen = (float)((double)clean_logit(logits[token]) - lse);

    /* Top-n by insertion into a sorted list of at most 20: tokens come in id
     * order, so an equal logit never displaces an earlier (lower) id. */
    size_t cnt = 0;
    for (size_t i = 0; i < vocab && n_top > 0; i++) {
        float x = clean_logit(logits[i]);
        if (cnt == n_top && !(x > top[cnt - 1].logprob)) continue;
        size_t pos = cnt < n_top ? cnt++ : n_top - 1;
        while (pos > 0 && x > top[pos - 1].logprob) {
            top[pos] = top[pos - 1];
            pos--;
        }
        top[pos].token = (int32_t)i;
        top[pos].logprob = x; /* a logit until the loop ends */
    }
    for (size_t j = 0; j < cnt; j++) top[j].logprob = (float)((double)top[j].logprob - lse);
    return PT_OK;
}
