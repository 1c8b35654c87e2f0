/* Reference for kcuda_sample. See kcuda_sample_ref.h and kcuda_sample.h.
 *
 * The exp and weight must be the same bits as on the device: every float
 * operation is rounded on its own, so contraction into FMA is switched off
 * for this file (x86-64 evaluates float in float, FLT_EVAL_METHOD 0). */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "ref/kcuda_sample_ref.h"

#include <float.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

float kcuda_ref_sample_exp(float x)
{
    const float log2e = 1.44269504088896341f, shift = 12582912.0f; /* 1.5 * 2^23 */
    const float ln2_hi = 0.693359375f, ln2_lo = -2.12194440e-4f;
    float kf = x * log2e;
    kf = kf + shift;
    kf = kf - shift; /* x * log2e rounded to the nearest integer, exactly */
    const int k = (int)kf;
    float r = x - kf * ln2_hi;
    r = r - kf * ln2_lo;
    const float z = r * r;
    float y = 1.9875691500e-4f;
    y = y * r + 1.3981999507e-3f;
    y = y * r + 8.3334519073e-3f;
    y = y * r + 4.1665795894e-2f;
    y = y * r + 1.6666665459e-1f;
    y = y * r + 5.0000001201e-1f;
    y = y * z + r;
    y = y + 1.0f;
    const uint32_t sbits = (uint32_t)(127 + k) << 23;
    float scale;
    memcpy(&scale, &sbits, sizeof scale);
    return y * scale;
}

uint64_t kcuda_ref_sample_weight(float l, float m, float temperature, float *p)
{
    float x = (l - m) / temperature;
    if (!(x >= -28.0f)) {
        *p = 0.0f;
        return 0;
    }
    if (x > 0.0f) /* l <= m, so never; keeps exp in its range */
        x = 0.0f;
    *p = kcuda_ref_sample_exp(x);
    return (uint64_t)(*p * 0x1p40f);
}

static float clean_logit(float x)
{
    if (x != x)
        return -INFINITY;
    if (x == INFINITY)
        return FLT_MAX;
    return x;
}

static int float_desc(const void *pa, const void *pb)
{
    float a = *(const float *)pa, b = *(const float *)pb;
    return (a < b) - (a > b);
}

/* qsort context for ranking token ids by logit (qsort has no user argument). */
static const float *rank_logits;

static int id_by_logit_desc(const void *pa, const void *pb)
{
    int32_t a = *(const int32_t *)pa, b = *(const int32_t *)pb;
    float la = rank_logits[a], lb = rank_logits[b];
    if (la != lb)
        return la > lb ? -1 : 1;
    return (a > b) - (a < b);
}

/* Cleaned logits in c[], the argmax in *amax; false when none is finite
 * (or vocab is 0). */
static bool clean_row(float *c, const float *logits, size_t vocab, size_t *amax)
{
    size_t a = 0;
    float best = -INFINITY;
    for (size_t j = 0; j < vocab; j++) {
        c[j] = clean_logit(logits[j]);
        if (c[j] > best) {
            best = c[j];
            a = j;
        }
    }
    *amax = a;
    return best > -INFINITY;
}

/* Steps 3 to 7 on cleaned logits c with argmax a. */
static size_t keep_set(uint8_t *keep, uint64_t *w, const float *c, size_t vocab, size_t a, float temperature,
                       int32_t top_k, float top_p, float min_p)
{
    const float m = c[a];
    float *p = malloc(vocab * sizeof *p);
    for (size_t j = 0; j < vocab; j++) {
        w[j] = kcuda_ref_sample_weight(c[j], m, temperature, &p[j]);
        keep[j] = 1;
    }

    if (top_k > 0 && (size_t)top_k < vocab) {
        float *sorted = malloc(vocab * sizeof *sorted);
        memcpy(sorted, c, vocab * sizeof *sorted);
        qsort(sorted, vocab, sizeof *sorted, float_desc);
        const float lk = sorted[top_k - 1];
        for (size_t j = 0; j < vocab; j++)
            keep[j] = c[j] >= lk;
        free(sorted);
    }

    if (top_p < 1.0f) {
        int32_t *ids = malloc(vocab * sizeof *ids);
        size_t n = 0;
        uint64_t zk = 0;
        for (size_t j = 0; j < vocab; j++) {
            if (keep[j]) {
                ids[n++] = (int32_t)j;
                zk += w[j];
            }
        }
        const double t = (double)top_p * (double)zk;
        const uint64_t need = t < 1.0 ? 1 : (uint64_t)ceil(t);
        rank_logits = c;
        qsort(ids, n, sizeof *ids, id_by_logit_desc);
        /* Walk groups of equal logit from the top; the first group that brings
         * the mass to `need` sets lambda. */
        uint64_t cum = 0;
        float lambda = c[ids[0]];
        for (size_t i = 0; i < n;) {
            const float v = c[ids[i]];
            while (i < n && c[ids[i]] == v)
                cum += w[ids[i++]];
            if (cum >= need) {
                lambda = v;
                break;
            }
        }
        for (size_t j = 0; j < vocab; j++)
            if (c[j] < lambda)
                keep[j] = 0;
        free(ids);
    }

    if (min_p > 0.0f)
        for (size_t j = 0; j < vocab; j++)
            if (p[j] < min_p)
                keep[j] = 0;

    keep[a] = 1;
    size_t kept = 0;
    for (size_t j = 0; j < vocab; j++)
        kept += keep[j];
    free(p);
    return kept;
}

size_t kcuda_ref_sample_keep(uint8_t *keep, uint64_t *w, const float *logits, size_t vocab, float temperature,
                             int32_t top_k, float top_p, float min_p)
{
    float *c = malloc(vocab * sizeof *c);
    size_t a, kept = 0;
    if (clean_row(c, logits, vocab, &a))
        kept = keep_set(keep, w, c, vocab, a, temperature, top_k, top_p, min_p);
    else
        memset(keep, 0, vocab);
    free(c);
    return kept;
}

int32_t kcuda_ref_sample(const float *logits, size_t vocab, float temperature, int32_t top_k, float top_p,
                         float min_p, float uniform)
{
    float *c = malloc(vocab * sizeof *c);
    size_t a;
    const bool finite = clean_row(c, logits, vocab, &a);
    if (!finite || !(temperature > 0.0f)) {
        free(c);
        return finite ? (int32_t)a : -1;
    }
    uint8_t *keep = malloc(vocab);
    uint64_t *w = malloc(vocab * sizeof *w);
    keep_set(keep, w, c, vocab, a, temperature, top_k, top_p, min_p);

    uint64_t z = 0;
    for (size_t j = 0; j < vocab; j++)
        if (keep[j])
            z += w[j];
    float u = uniform;
    if (!(u >= 0.0f))
        u = 0.0f;
    if (u >= 1.0f)
        u = 0x1.fffffep-1f;
    const uint64_t target = (uint64_t)((double)u * (double)z);
    int32_t tok = (int32_t)a; /* unreachable fallback: target < z */
    uint64_t acc = 0;
    for (size_t j = 0; j < vocab; j++) {
        if (!keep[j])
            continue;
        acc += w[j];
        if (acc > target) {
            tok = (int32_t)j;
            break;
        }
    }
    free(keep);
    free(w);
    free(c);
    return tok;
}
