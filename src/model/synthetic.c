/* synthetic:<shape>[:<dtype>] models: the tensors of a named architecture
 * filled with deterministic random weights, for benchmarks and tests without
 * weight files.
 *
 * Weights have a standard deviation of about 0.02; norm weights are 1 plus
 * small noise, biases small. Quantized tensors are generated block by block
 * (random quants, a small random f16 scale) so that no float copy of a large
 * model is ever made. Every tensor lives in one anonymous mapping, 64-byte
 * aligned.
 * The random stream is seeded from the shape name, so a shape means the same
 * numbers on every machine. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "model/loader.h"
#include "proteus/threadpool.h"

typedef struct {
    const char *name;
    pt_arch arch;
    uint32_t n_layers, d_model, n_heads, n_kv_heads, d_ff, vocab, max_ctx;
    float rope_theta;
    float scale_factor, low_freq, high_freq;
    uint32_t orig_ctx;
    bool tied, qkv_bias;
} shape;

static const shape shapes[] = {
    {"smollm2-135m", PT_ARCH_LLAMA, 30, 576, 9, 3, 1536, 49152, 8192, 100000.0f, 0, 0, 0, 0, true, false},
    {"llama3-8b", PT_ARCH_LLAMA, 32, 4096, 32, 8, 14336, 128256, 131072, 500000.0f, 8.0f, 1.0f, 4.0f, 8192,
     false, false},
    {"tiny-llama", PT_ARCH_LLAMA, 2, 64, 4, 2, 128, 256, 2048, 10000.0f, 0, 0, 0, 0, false, false},
    {"tiny-qwen2", PT_ARCH_QWEN2, 2, 64, 4, 2, 128, 256, 2048, 10000.0f, 0, 0, 0, 0, false, true},
    /* Enough KV heads for TP 4 (layout tests). */
    {"tiny-gqa", PT_ARCH_LLAMA, 2, 128, 8, 4, 256, 256, 2048, 10000.0f, 0, 0, 0, 0, false, false},
};

static const struct {
    const char *name;
    pt_dtype type;
} dtypes[] = {
    {"f32", PT_DTYPE_F32}, {"f16", PT_DTYPE_F16}, {"bf16", PT_DTYPE_BF16},
    {"q4_0", PT_DTYPE_Q4_0}, {"q4_1", PT_DTYPE_Q4_1}, {"q8_0", PT_DTYPE_Q8_0},
};

typedef enum { FILL_WEIGHT, FILL_NORM, FILL_BIAS } fill_kind;

#define WEIGHT_STD 0.02f
#define UNIFORM_HALF_WIDTH 0.034641f /* uniform on [-a, a] has std a / sqrt(3) = 0.02 */


/* Block scales near `base`, jittered by +-25% so blocks differ; a table of
 * 64 precomputed f16 values keeps the float conversion out of the block loop,
 * which is what lets llama3-8b build in seconds. */
typedef struct {
    pt_f16 d[64];
    pt_f16 m[64]; /* -7.5 d: centres unsigned 4-bit quants on zero (Q4_1) */
} scale_table;

static void scale_table_init(scale_table *st, float base) {
    for (int i = 0; i < 64; i++) {
        st->d[i] = pt_f32_to_f16(base * (0.75f + 0.5f * (float)i / 63.0f));
        st->m[i] = pt_f32_to_f16(-7.5f * pt_f16_to_f32(st->d[i]));
    }
}

/* Bulk random bytes for quant blocks: the same splitmix64 step as pt_rng,
 * inlined here because it runs a billion times for the largest shapes. */
static inline uint64_t bulk_next(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static inline void fill16(uint64_t *state, uint8_t *p) {
    uint64_t v[2] = {bulk_next(state), bulk_next(state)};
    memcpy(p, v, 16);
}

/* Float tensors: element k is centre + (2u - 1) * half_width with u the top
 * 24 bits of splitmix64's output number k + 1 after state0. Each element is
 * computed from its index alone, so threads fill disjoint ranges and the
 * values do not depend on their number (llama3-8b:bf16 is 8 billion values). */
typedef struct {
    void *data;
    pt_dtype type;
    uint64_t n, state0;
    float centre, half_width;
} float_fill;

static void float_fill_range(void *arg, int tid, int nth) {
    const float_fill *f = arg;
    long lo, hi;
    pt_pool_split((long)f->n, tid, nth, &lo, &hi);
    for (uint64_t k = (uint64_t)lo; k < (uint64_t)hi; k++) {
        uint64_t state = f->state0 + k * 0x9E3779B97F4A7C15ull;
        float u = (float)(bulk_next(&state) >> 40) * (1.0f / 16777216.0f);
        float v = f->centre + (2.0f * u - 1.0f) * f->half_width;
        switch (f->type) {
        case PT_DTYPE_F32: ((float *)f->data)[k] = v; break;
        case PT_DTYPE_F16: ((pt_f16 *)f->data)[k] = pt_f32_to_f16(v); break;
        default: ((pt_bf16 *)f->data)[k] = pt_f32_to_bf16(v); break;
        }
    }
}

static void fill(pt_rng *r, pt_pool *pool, pt_tensor *t, void *data, fill_kind kind) {
    uint64_t n = t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
    switch (t->type) {
    case PT_DTYPE_F32:
    case PT_DTYPE_F16:
    case PT_DTYPE_BF16: {
        float_fill f = {data, t->type, n, pt_rng_next(r), kind == FILL_NORM ? 1.0f : 0.0f,
                        kind == FILL_WEIGHT ? UNIFORM_HALF_WIDTH : 0.01f};
        if (n >= (1u << 20))
            pt_pool_run(pool, float_fill_range, &f);
        else
            float_fill_range(&f, 0, 1);
        break;
    }
    /* Uniform 4-bit quants q - 8 have std 4.6; uniform int8 quants std 73.6. */
    case PT_DTYPE_Q4_0:
    case PT_DTYPE_Q4_1: {
        scale_table st;
        scale_table_init(&st, WEIGHT_STD / 4.6f);
        uint64_t state = pt_rng_next(r);
        for (uint64_t b = 0; b < n / PT_QK; b++) {
            unsigned k = (unsigned)(bulk_next(&state) & 63);
            if (t->type == PT_DTYPE_Q4_0) {
                pt_block_q4_0 *blk = (pt_block_q4_0 *)data + b;
                blk->d = st.d[k];
                fill16(&state, blk->qs);
            } else {
                pt_block_q4_1 *blk = (pt_block_q4_1 *)data + b;
                blk->d = st.d[k];
                blk->m = st.m[k];
                fill16(&state, blk->qs);
            }
        }
        break;
    }
    case PT_DTYPE_Q8_0: {
        scale_table st;
        scale_table_init(&st, WEIGHT_STD / 73.6f);
        uint64_t state = pt_rng_next(r);
        for (uint64_t b = 0; b < n / PT_QK; b++) {
            pt_block_q8_0 *blk = (pt_block_q8_0 *)data + b;
            blk->d = st.d[bulk_next(&state) & 63];
            fill16(&state, (uint8_t *)blk->qs);
            fill16(&state, (uint8_t *)blk->qs + 16);
        }
        break;
    }
    default:
        break; /* not offered by parse_spec */
    }
}

typedef struct {
    pt_tensor *t;
    size_t n;
} tensor_list;

static void add(tensor_list *l, pt_dtype type, uint64_t ne0, uint64_t ne1, const char *fmt, int layer) {
    char name[96];
    snprintf(name, sizeof name, fmt, layer);
    pt_tensor *t = &l->t[l->n++];
    t->name = pt_xstrdup(name);
    t->type = type;
    t->n_dims = ne1 > 1 ? 2 : 1;
    t->ne[0] = ne0;
    t->ne[1] = ne1;
    t->ne[2] = t->ne[3] = 1;
    pt_dtype_row_bytes(type, ne0, &t->nbytes); /* sizes of the fixed shapes cannot overflow */
    t->nbytes *= ne1;
}

int pt_synthetic_open(pt_model_file *mf, const char *spec, pt_err *err) {
    const shape *s = NULL;
    size_t name_len = strcspn(spec, ":");
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        if (strlen(shapes[i].name) == name_len && !strncmp(spec, shapes[i].name, name_len)) s = &shapes[i];
    if (!s)
        return pt_err_set(err, PT_ERR_INVALID,
                          "%s: unknown synthetic shape (smollm2-135m, llama3-8b, tiny-llama, tiny-qwen2, tiny-gqa)",
                          mf->path);
    pt_dtype wt = PT_DTYPE_Q4_0;
    if (spec[name_len] == ':') {
        const char *dn = spec + name_len + 1;
        bool found = false;
        for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++)
            if (!strcmp(dn, dtypes[i].name)) {
                wt = dtypes[i].type;
                found = true;
            }
        if (!found)
            return pt_err_set(err, PT_ERR_INVALID,
                              "%s: unknown synthetic dtype '%.32s' (f32, f16, bf16, q4_0, q4_1, q8_0)",
                              mf->path, dn);
    }

    pt_model_config *c = &mf->config;
    c->arch = s->arch;
    c->n_layers = s->n_layers;
    c->d_model = s->d_model;
    c->n_heads = s->n_heads;
    c->n_kv_heads = s->n_kv_heads;
    c->head_dim = s->d_model / s->n_heads;
    c->d_ff = s->d_ff;
    c->vocab_size = s->vocab;
    c->max_ctx = s->max_ctx;
    c->rms_eps = 1e-5f;
    c->rope_theta = s->rope_theta;
    c->rope_dim = c->head_dim;
    c->rope_style = PT_ROPE_NEOX;
    c->rope_scale_factor = s->scale_factor;
    c->rope_low_freq_factor = s->low_freq;
    c->rope_high_freq_factor = s->high_freq;
    c->rope_orig_ctx = s->orig_ctx;
    c->tied_embeddings = s->tied;
    c->qkv_bias = s->qkv_bias;

    uint64_t d = c->d_model, q = (uint64_t)c->n_heads * c->head_dim,
             kv = (uint64_t)c->n_kv_heads * c->head_dim, ff = c->d_ff;
    size_t per_layer = 9 + (s->qkv_bias ? 3 : 0);
    tensor_list l = {pt_xcalloc(3 + c->n_layers * per_layer, sizeof(pt_tensor)), 0};
    mf->tensors = l.t; /* owned by mf from here, so close() frees partial lists */
    add(&l, wt, d, c->vocab_size, "token_embd.weight", 0);
    for (uint32_t i = 0; i < c->n_layers; i++) {
        add(&l, PT_DTYPE_F32, d, 1, "blk.%d.attn_norm.weight", (int)i);
        add(&l, wt, d, q, "blk.%d.attn_q.weight", (int)i);
        add(&l, wt, d, kv, "blk.%d.attn_k.weight", (int)i);
        add(&l, wt, d, kv, "blk.%d.attn_v.weight", (int)i);
        if (s->qkv_bias) {
            add(&l, PT_DTYPE_F32, q, 1, "blk.%d.attn_q.bias", (int)i);
            add(&l, PT_DTYPE_F32, kv, 1, "blk.%d.attn_k.bias", (int)i);
            add(&l, PT_DTYPE_F32, kv, 1, "blk.%d.attn_v.bias", (int)i);
        }
        add(&l, wt, q, d, "blk.%d.attn_output.weight", (int)i);
        add(&l, PT_DTYPE_F32, d, 1, "blk.%d.ffn_norm.weight", (int)i);
        add(&l, wt, d, ff, "blk.%d.ffn_gate.weight", (int)i);
        add(&l, wt, d, ff, "blk.%d.ffn_up.weight", (int)i);
        add(&l, wt, ff, d, "blk.%d.ffn_down.weight", (int)i);
        mf->n_tensors = l.n;
    }
    add(&l, PT_DTYPE_F32, d, 1, "output_norm.weight", 0);
    if (!s->tied) add(&l, wt, d, c->vocab_size, "output.weight", 0);
    mf->n_tensors = l.n;

    uint64_t total = 0;
    for (size_t i = 0; i < l.n; i++) total += (l.t[i].nbytes + 63) & ~(uint64_t)63;
    /* An anonymous mapping (registered like a file mapping) rather than
     * malloc: huge pages cut the page faults of a multi-GB fill by 512x. */
    void *map = total && total <= SIZE_MAX
                    ? mmap(NULL, (size_t)total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
                    : MAP_FAILED;
    if (map == MAP_FAILED)
        return pt_err_set(err, PT_ERR_NOMEM, "%s: cannot allocate %llu bytes of weights", mf->path,
                          (unsigned long long)total);
#ifdef MADV_HUGEPAGE
    madvise(map, (size_t)total, MADV_HUGEPAGE);
#endif
    if (pt_model_add_mapping(mf, map, (size_t)total) != PT_OK) {
        munmap(map, (size_t)total);
        return pt_err_set(err, PT_ERR_NOMEM, "%s: out of memory", mf->path);
    }
    uint8_t *buf = map;

    uint64_t seed = 0xcbf29ce484222325ull; /* FNV-1a of the shape name */
    for (const char *p = s->name; *p; p++) seed = (seed ^ (uint8_t)*p) * 0x100000001b3ull;
    pt_rng rng;
    pt_rng_seed(&rng, seed);
    uint64_t off = 0;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    pt_pool *pool = pt_pool_create(ncpu > 1 ? (int)(ncpu < 64 ? ncpu : 64) : 1);
    if (!pool) /* the mapping and the tensor list belong to mf: its close frees them */
        return pt_err_set(err, PT_ERR_NOMEM, "%s: cannot start threads to fill the weights", mf->path);
    for (size_t i = 0; i < l.n; i++) {
        pt_tensor *t = &l.t[i];
        const char *nm = t->name;
        size_t nl = strlen(nm);
        fill_kind kind = strstr(nm, "norm") ? FILL_NORM
                         : (nl > 5 && !strcmp(nm + nl - 5, ".bias")) ? FILL_BIAS : FILL_WEIGHT;
        t->data = buf + off;
        fill(&rng, pool, t, buf + off, kind);
        off += (t->nbytes + 63) & ~(uint64_t)63;
    }
    pt_pool_free(pool);
    return PT_OK;
}
