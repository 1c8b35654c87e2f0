/* Engine internals shared by weights.c, engine.c and the device backends.
 *
 * Conventions: T = tokens in the step, d = d_model, hd = head_dim,
 * G = KV-head groups (= n_kv_heads; a group is one KV head and its
 * q_per_kv query heads), M = MLP chunks. A rank owns groups [g0, g1) and
 * MLP chunks [c0, c1). */
#ifndef PROTEUS_ENGINE_INTERNAL_H
#define PROTEUS_ENGINE_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "backend/backend.h"
#include "comm/comm.h"
#include "kv/kv_pool.h"
#include "proteus/engine.h"
#include "proteus/threadpool.h"

/* A weight matrix (or a chunk of one): rows of `cols` elements, `stride`
 * bytes apart. Column-parallel chunks point into the model file; row-parallel
 * chunks are repacked so that each chunk is contiguous. */
typedef struct {
    const void *data;
    pt_dtype type;
    size_t stride;
    uint32_t rows;
    uint32_t cols;
} pt_wmat;

#define PT_MAX_GROUPS 64
#define PT_MAX_MLP_CHUNKS 64

typedef struct {
    float *attn_norm;              /* (d) */
    float *ffn_norm;               /* (d) */
    pt_wmat q[PT_MAX_GROUPS];      /* (q_per_kv * hd, d) per group */
    pt_wmat k[PT_MAX_GROUPS];      /* (hd, d) */
    pt_wmat v[PT_MAX_GROUPS];      /* (hd, d) */
    float *bq, *bk, *bv;           /* (n_heads * hd), (n_kv * hd) x2, or NULL */
    pt_wmat o[PT_MAX_GROUPS];      /* (d, q_per_kv * hd): row-parallel chunk */
    pt_wmat gate[PT_MAX_MLP_CHUNKS]; /* (ff / M, d) */
    pt_wmat up[PT_MAX_MLP_CHUNKS];
    pt_wmat down[PT_MAX_MLP_CHUNKS]; /* (d, ff / M): row-parallel chunk */
} pt_layer_weights;

typedef struct {
    pt_model_config cfg;
    uint32_t n_groups;    /* G */
    uint32_t q_per_kv;
    uint32_t n_mlp_chunks; /* M */
    uint32_t mlp_chunk;    /* ff / M */
    pt_wmat tok_embd;      /* (vocab, d) */
    pt_wmat output;        /* (vocab, d); = tok_embd when tied */
    float *output_norm;    /* (d) */
    pt_layer_weights *layers;
    float *inv_freq;       /* (rope_dim / 2), Llama-3 scaling applied */
    void **owned;          /* buffers to free */
    size_t n_owned;
} pt_weights;

/* The model view: every chunk of every tensor, cut into n_mlp_chunks MLP
 * chunks (the finest any allowed TP degree needs). */
int pt_weights_build(pt_weights *w, const pt_model_file *mf, uint32_t n_mlp_chunks, pt_err *err);
void pt_weights_free(pt_weights *w);

/* One rank's weight chunks in its device's memory. */
typedef struct {
    pt_device *dev;
    pt_layer_weights *layers; /* (n_layers) the shard's chunks; others empty; replicated
                                 vectors point into the model view */
    void *mem;                /* one device allocation holding every chunk */
    size_t bytes;
    uint64_t replicated_bytes; /* charged to dev for the tensors every rank reads */
} pt_shard;

int pt_shard_build(pt_shard *s, const pt_weights *w, pt_device *dev, uint32_t g0, uint32_t g1, uint32_t c0,
                   uint32_t c1, pt_err *err);
void pt_shard_free(pt_shard *s);

/* Per-rank state: its device, its share of the model, its KV pool, its step
 * buffers. Everything it points at lives in its device's accounted memory. */
typedef struct {
    int rank;
    pt_device *dev;
    pt_pool *pool;    /* the device's workers */
    uint32_t g0, g1, c0, c1;
    pt_shard shard;
    pt_kv_pool kv;
    /* Scratch, sized for max_batch_tokens rows: one device allocation. */
    void *scratch;
    size_t scratch_bytes;
    float *x;         /* (T, d) residual stream; every rank's copy is identical */
    float *part_attn; /* (G, T, d) per-chunk partial sums of O: own chunks computed, others gathered */
    float *part_mlp;  /* (M, T, d) the same for down */
    float *logits;    /* (max_out, V) columns [v0, v1) of the LM head; rank 0's is e->out_scratch */
    uint8_t *final_act; /* (max_out, row bytes) quantized final norm */
    float *xn;        /* (T, d) normed input of the current sub-layer */
    uint8_t *act[3];  /* (T, row bytes) quantized activations, one per act type in use */
    pt_dtype act_type[3];
    float *q;         /* (T, n_heads * hd)  only the rank's groups are written */
    float *k;         /* (T, n_kv * hd) */
    float *v;         /* (T, n_kv * hd) */
    float *att;       /* (T, n_heads * hd) attention output */
    uint8_t *att_act; /* (T, G, row bytes of an O chunk) */
    float *gate;      /* (T, ff) */
    float *up;        /* (T, ff) */
    uint8_t *h_act;   /* (T, M, row bytes of a down chunk) */
    float *scores;    /* (nth, max_ctx) attention scores */
} pt_rank;

typedef struct {
    bool used;
    uint32_t len;
    uint32_t *pages[PT_MAX_GROUPS]; /* block table per KV head: slot ids in its rank's pool */
    uint32_t n_pages;               /* pages per KV head in use */
    uint32_t cap_pages;
    uint32_t dirty_from;            /* first block-table entry changed since a device
                                       backend last mirrored the table */
} pt_seq;

struct pt_engine {
    const pt_model_file *mf;
    pt_engine_opts opts;
    pt_weights w;         /* the model view the shards are copied from */
    pt_backend *backend;
    pt_fabric *fabric;
    pt_fabric *own_fabric; /* = fabric when pt_engine_create made it */
    int first;            /* fabric device of rank 0 */
    pt_comm_group *group; /* the ranks' comm group; NULL at tp == 1 */
    pt_rank *ranks;
    int tp;
    pt_seq *seqs;
    uint32_t pages_per_seq;     /* block-table capacity: ceil(max_ctx / page_size) */
    pt_pool *rank_pool;   /* CPU, tp > 1: one thread per rank, each drives its device's pool */
    /* The step being run. */
    uint32_t T;
    const int32_t *tok;   /* (T) */
    const int *tok_seq;   /* (T) */
    const uint32_t *tok_pos; /* (T) */
    uint32_t n_out;       /* rows that want logits */
    const uint32_t *out_row; /* (n_out) token row index */
    size_t scratch_len;   /* floats of per-thread scratch: max(max_ctx, d_model) + 2 * pages_per_seq */
    /* Every backend: */
    float *out_scratch;   /* (max_out, vocab) logits, on rank 0's device (scratch) */
    size_t out_bytes;
    uint32_t max_out;     /* logit rows one step can return */
    /* Step staging, sized max_batch_tokens. */
    int32_t *stage_tok;
    int *stage_seq;
    uint32_t *stage_pos;
    uint32_t *stage_out;
};

/* Head pages a rank holding n_groups KV heads gets from a budget of
 * budget_bytes: as many as fit, at most enough for max_seqs full contexts. */
uint64_t pt_engine_kv_pages_for(const pt_engine *e, uint32_t n_groups, uint64_t budget_bytes);

/* The rank that holds KV-head group g. */
static inline int pt_rank_of_group(const pt_engine *e, uint32_t g) {
    for (int i = 0; i < e->tp; i++)
        if (g >= e->ranks[i].g0 && g < e->ranks[i].g1) return i;
    return 0;
}

/* Whether row t of the staged step is a decode token (the only token of its
 * sequence in the step), and whether query-aware page selection applies to
 * it in `layer` (DESIGN.md section 5). */
static inline bool pt_step_is_decode(const pt_engine *e, uint32_t t) {
    return (t == 0 || e->tok_seq[t - 1] != e->tok_seq[t]) && (t + 1 == e->T || e->tok_seq[t + 1] != e->tok_seq[t]);
}
static inline bool pt_select_applies(const pt_engine *e, uint32_t layer, uint32_t t) {
    return e->opts.select_budget > 0 && layer >= e->opts.select_dense_layers &&
           e->tok_pos[t] + 1 > e->opts.select_budget && pt_step_is_decode(e, t);
}

#endif
