/* Paged attention on the CPU: the portable reference of one page update and
 * the drivers that walk a sequence's head pages with it (DESIGN.md section 4).
 *
 * A query (n_q heads sharing one KV head) keeps an online-softmax state: per
 * head the running maximum m, the running sum l and the unnormalized output
 * o. Keys are taken in blocks of 16 positions aligned to page starts; each
 * block updates the state (kcpu_attn_page_*). Because the blocks depend only
 * on absolute positions and each query's state is its own, the result of a
 * query is the same bits whether it runs alone (decode), in a block of a
 * prompt chunk, in any batch, or at any TP degree.
 *
 * The order of operations of one block, per head h, is the definition every
 * ISA path reproduces exactly (they are tested for equal bits):
 *   s_k = dot16(q_h, K_k) * scale     k < n; dot16 below
 *   mb = max s_k;  mn = max(m, mb);  c = exp16(m - mn)
 *   p_k = exp16(s_k - mn) for k < n, 0 for k >= n
 *   l = fma(l, c, tree16(p));  o_i = o_i * c, then o_i = fma(p_k, V_k[i], o_i)
 *   for k = 0 .. n-1 in order;  m = mn
 * dot16: 16 lane accumulators, lane j takes dimensions d = j (mod 16) in
 * increasing d with fma (dimensions past hd count as 0), then tree16.
 * tree16: l[j] += l[j+8] (j < 8), then += l[j+4] (j < 4), += l[j+2] (j < 2),
 * s = l[0] + l[1].  exp16: kcpu_attn_exp below.
 * The finished output is o_i / l. */
#include <math.h>
#include <string.h>

#include "kcpu_internal.h"
#include "kcpu_matmul.h"
#include "kcpu_ops.h"
#include "proteus/dtype.h"

float kcpu_attn_exp(float x) {
    if (!(x >= KCPU_EXP_MIN)) return 0.0f; /* also -inf: exp underflows to 0 below the normal range */
    /* n = round(x / ln 2) by the 1.5 * 2^23 trick: exact in round-to-nearest for |t| < 2^22. */
    float t = x * KCPU_LOG2E;
    float n = (t + KCPU_ROUND_MAGIC) - KCPU_ROUND_MAGIC;
    float r = fmaf(n, -KCPU_LN2_HI, x);
    r = fmaf(n, -KCPU_LN2_LO, r);
    float p = KCPU_EXP_C6;
    p = fmaf(p, r, KCPU_EXP_C5);
    p = fmaf(p, r, KCPU_EXP_C4);
    p = fmaf(p, r, KCPU_EXP_C3);
    p = fmaf(p, r, KCPU_EXP_C2);
    p = fmaf(p, r, 1.0f);
    p = fmaf(p, r, 1.0f);
    /* 2^n for n in [-126, 0]: built from the exponent bits. */
    uint32_t bits = (uint32_t)((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, 4);
    return p * scale;
}

static float tree16(float l[16]) {
    for (int j = 0; j < 8; j++) l[j] += l[j + 8];
    for (int j = 0; j < 4; j++) l[j] += l[j + 4];
    for (int j = 0; j < 2; j++) l[j] += l[j + 2];
    return l[0] + l[1];
}

static float kv_elem(const void *row, int kv_type, size_t i) {
    if (kv_type == PT_DTYPE_F16) return pt_f16_to_f32(((const uint16_t *)row)[i]);
    if (kv_type == PT_DTYPE_BF16) return pt_bf16_to_f32(((const uint16_t *)row)[i]);
    return ((const float *)row)[i];
}

static float dot16(const float *q, const void *k, int kv_type, size_t hd) {
    float l[16] = {0};
    size_t padded = (hd + 15) & ~(size_t)15;
    for (size_t d = 0; d < padded; d++) {
        float a = d < hd ? q[d] : 0.0f, b = d < hd ? kv_elem(k, kv_type, d) : 0.0f;
        l[d % 16] = fmaf(a, b, l[d % 16]);
    }
    return tree16(l);
}

void kcpu_attn_page_ref(float *st, const float *q, size_t n_q, size_t hd, const void *k, const void *v, int kv_type,
                        uint32_t n, float scale) {
    size_t es = kv_type == PT_DTYPE_F32 ? 4 : 2;
    for (uint32_t j0 = 0; j0 < n; j0 += 16) {
        uint32_t nb = n - j0 < 16 ? n - j0 : 16;
        const uint8_t *kb = (const uint8_t *)k + (size_t)j0 * hd * es, *vb = (const uint8_t *)v + (size_t)j0 * hd * es;
        for (size_t h = 0; h < n_q; h++) {
            float *m = st + h, *l = st + n_q + h, *o = st + 2 * n_q + h * hd;
            float s[16], p[16], mb = -INFINITY;
            for (uint32_t kk = 0; kk < nb; kk++) {
                s[kk] = dot16(q + h * hd, kb + (size_t)kk * hd * es, kv_type, hd) * scale;
                mb = s[kk] > mb ? s[kk] : mb;
            }
            float mn = *m > mb ? *m : mb;
            float c = kcpu_attn_exp(*m - mn);
            for (uint32_t kk = 0; kk < 16; kk++) p[kk] = kk < nb ? kcpu_attn_exp(s[kk] - mn) : 0.0f;
            float ps[16];
            memcpy(ps, p, sizeof(ps));
            *l = fmaf(*l, c, tree16(ps));
            for (size_t i = 0; i < hd; i++) {
                float oi = o[i] * c;
                for (uint32_t kk = 0; kk < nb; kk++) oi = fmaf(p[kk], kv_elem(vb + (size_t)kk * hd * es, kv_type, i), oi);
                o[i] = oi;
            }
            *m = mn;
        }
    }
}

void kcpu_widen_ref(float *dst, const void *src, int type, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = kv_elem(src, type, i);
}

/* ---- drivers ---- */

typedef void page_fn(float *st, const float *q, size_t n_q, size_t hd, const void *k, const void *v, int kv_type,
                     uint32_t n, float scale);

/* The fast paths keep a head's 16-float chunks in registers: head dims that
 * are multiples of 16 up to 256 (every model the engine loads); the
 * reference takes any other. */
static page_fn *pick(size_t hd) {
    if (hd % 16 || hd > KCPU_ATTN_MAX_HD) return kcpu_attn_page_ref;
    switch (kcpu_isa_active()) {
    case KCPU_ISA_AVX512: return kcpu_attn_page_avx512;
    case KCPU_ISA_AVX2: return kcpu_attn_page_avx2;
    default: return kcpu_attn_page_ref;
    }
}

static void widen(float *dst, const void *src, int type, size_t n) {
    switch (kcpu_isa_active()) {
    case KCPU_ISA_AVX512: kcpu_widen_avx512(dst, src, type, n); break;
    case KCPU_ISA_AVX2: kcpu_widen_avx2(dst, src, type, n); break;
    default: kcpu_widen_ref(dst, src, type, n); break;
    }
}

size_t kcpu_attn_state_len(size_t n_q, size_t hd) { return n_q * (hd + 2); }

static void state_init(float *st, size_t n_q, size_t hd) {
    for (size_t h = 0; h < n_q; h++) st[h] = -INFINITY;
    memset(st + n_q, 0, n_q * (hd + 1) * sizeof(float));
}

static void state_finish(float *out, const float *st, size_t n_q, size_t hd) {
    for (size_t h = 0; h < n_q; h++) {
        float l = st[n_q + h];
        const float *o = st + 2 * n_q + h * hd;
        for (size_t i = 0; i < hd; i++) out[h * hd + i] = o[i] / l;
    }
}

typedef struct {
    const uint8_t *kv;
    size_t es, slot_bytes, v_bytes, row_bytes;
} kv_view;

static kv_view view_of(const void *kv, int kv_type, size_t slot_stride, size_t v_offset, size_t hd) {
    size_t es = kv_type == PT_DTYPE_F32 ? 4 : 2;
    return (kv_view){kv, es, slot_stride * es, v_offset * es, hd * es};
}

/* The first n rows of the page in slot `slot`. */
static void update(page_fn *fn, float *st, const float *q, size_t n_q, size_t hd, const kv_view *w, int kv_type,
                   uint32_t slot, uint32_t n, float scale) {
    const uint8_t *k = w->kv + (size_t)slot * w->slot_bytes;
    fn(st, q, n_q, hd, k, k + w->v_bytes, kv_type, n, scale);
}

void kcpu_attn_paged(float *out, const float *q, size_t n_q, size_t hd, const void *kv, int kv_type,
                     size_t slot_stride, size_t v_offset, const uint32_t *pages, uint32_t page_size, uint32_t n_ctx,
                     float scale, float *state) {
    page_fn *fn = pick(hd);
    kv_view w = view_of(kv, kv_type, slot_stride, v_offset, hd);
    state_init(state, n_q, hd);
    for (uint32_t p0 = 0, j = 0; p0 < n_ctx; p0 += page_size, j++) {
        uint32_t n = n_ctx - p0 < page_size ? n_ctx - p0 : page_size;
        update(fn, state, q, n_q, hd, &w, kv_type, pages[j], n, scale);
    }
    state_finish(out, state, n_q, hd);
}

void kcpu_attn_paged_sparse(float *out, const float *q, size_t n_q, size_t hd, const void *kv, int kv_type,
                            size_t slot_stride, size_t v_offset, const uint32_t *pages, uint32_t page_size,
                            uint32_t n_ctx, const uint32_t *selected, size_t n_sel, float scale, float *state) {
    page_fn *fn = pick(hd);
    kv_view w = view_of(kv, kv_type, slot_stride, v_offset, hd);
    state_init(state, n_q, hd);
    for (size_t s = 0; s < n_sel; s++) {
        uint32_t p0 = selected[s] * page_size;
        uint32_t n = n_ctx - p0 < page_size ? n_ctx - p0 : page_size;
        update(fn, state, q, n_q, hd, &w, kv_type, pages[selected[s]], n, scale);
    }
    state_finish(out, state, n_q, hd);
}

size_t kcpu_attn_run_scratch_len(size_t n_tok, size_t n_q, size_t hd, uint32_t page_size) {
    return n_tok * kcpu_attn_state_len(n_q, hd) + 2 * (size_t)page_size * hd;
}

/* The first n K and V rows of a page as F32: exact, so the rows it gives
 * make the same bits as the F16 / BF16 rows would. */
static void widen_page(float *dst, const kv_view *w, int kv_type, uint32_t slot, uint32_t page_size, size_t hd,
                       uint32_t n) {
    const uint8_t *k = w->kv + (size_t)slot * w->slot_bytes;
    for (int half = 0; half < 2; half++) {
        const uint8_t *src = k + (half ? w->v_bytes : 0);
        widen(dst + (size_t)half * page_size * hd, src, kv_type, (size_t)n * hd);
    }
}

void kcpu_attn_paged_run(float *out, size_t ld_out, const float *q, size_t ld_q, size_t n_tok, uint32_t pos0,
                         size_t n_q, size_t hd, const void *kv, int kv_type, size_t slot_stride, size_t v_offset,
                         const uint32_t *pages, uint32_t page_size, float scale, float *scratch) {
    page_fn *fn = pick(hd);
    kv_view w = view_of(kv, kv_type, slot_stride, v_offset, hd);
    size_t sl = kcpu_attn_state_len(n_q, hd);
    float *state = scratch, *wide = scratch + n_tok * sl;
    /* Several rows read each page: widening F16 / BF16 pages once beats
     * converting every key for every row. */
    bool widen = kv_type != PT_DTYPE_F32 && n_tok > 1;
    for (size_t t = 0; t < n_tok; t++) state_init(state + t * sl, n_q, hd);
    /* Page-major: each page is read from memory once for the whole run, and
     * every row still sees its pages in increasing order. */
    uint32_t n_ctx_last = pos0 + (uint32_t)n_tok;
    for (uint32_t p0 = 0, j = 0; p0 < n_ctx_last; p0 += page_size, j++) {
        /* Rows before position p0 do not see this page. */
        size_t t0 = p0 > pos0 ? p0 - pos0 : 0;
        uint32_t n_page = n_ctx_last - p0 < page_size ? n_ctx_last - p0 : page_size;
        if (widen) widen_page(wide, &w, kv_type, pages[j], page_size, hd, n_page);
        for (size_t t = t0; t < n_tok; t++) {
            uint32_t n_ctx = pos0 + (uint32_t)t + 1;
            uint32_t n = n_ctx - p0 < page_size ? n_ctx - p0 : page_size;
            if (widen)
                fn(state + t * sl, q + t * ld_q, n_q, hd, wide, wide + (size_t)page_size * hd, PT_DTYPE_F32, n, scale);
            else
                update(fn, state + t * sl, q + t * ld_q, n_q, hd, &w, kv_type, pages[j], n, scale);
        }
    }
    for (size_t t = 0; t < n_tok; t++) state_finish(out + t * ld_out, state + t * sl, n_q, hd);
}
