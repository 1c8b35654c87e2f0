/* The state of an instance that a device backend computes on (DESIGN.md
 * section 2): its options, the model's chunk view, its ranks (each with its
 * device, shard, KV pool and step buffers), its sequences' block tables and
 * the step being run. The engine (src/engine) owns its lifetime and fills
 * the step; backends read it and never call back into the engine, so the
 * dependencies run one way: engine -> backend -> kernels.
 *
 * Conventions: T = tokens in the step, d = d_model, hd = head_dim,
 * G = KV-head groups, M = MLP chunks. A rank owns groups [g0, g1) and MLP
 * chunks [c0, c1). */
#ifndef PROTEUS_BACKEND_INSTANCE_H
#define PROTEUS_BACKEND_INSTANCE_H

#include <stdbool.h>
#include <stdint.h>

#include "comm/comm.h"
#include "kv/kv_pool.h"
#include "model/chunks.h"
#include "proteus/engine.h"
#include "proteus/threadpool.h"

/* Per-rank state: its device, its share of the model, its KV pool, its step
 * buffers. Everything it points at lives in its device's accounted memory. */
typedef struct {
    int rank;
    pt_device *dev;
    pt_pool *pool;    /* the device's workers */
    uint32_t g0, g1, c0, c1;
    pt_shard shard;
    const pt_layer_weights *shard_from; /* at creation: the layers its chunks are copied from (the sources'
                                           shards in a transformation); NULL: the model view */
    pt_kv_pool *kv;   /* its device's pool: a transformation hands it to the next instance there */
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
    float *thread_scratch; /* (nth, scratch_len): attention states, a folded row, page selection */
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

typedef struct pt_instance {
    pt_engine_opts opts;
    pt_weights w;         /* the model view the shards are copied from */
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
    const uint8_t *tok_prompt; /* (T) 1: a prompt token (attended densely even alone in its step) */
    uint32_t n_out;       /* rows that want logits */
    const uint32_t *out_row; /* (n_out) token row index */
    size_t scratch_len;   /* floats of per-thread scratch: max(attention run states, d_model) + 2 * pages_per_seq */
    /* Every backend: */
    float *out_scratch;   /* (max_out, vocab) logits, on rank 0's device (scratch) */
    size_t out_bytes;
    uint32_t max_out;     /* logit rows one step can return */
} pt_instance;

/* Head pages a rank holding n_groups KV heads gets from a budget of
 * budget_bytes: as many as fit, at most enough for max_seqs full contexts. */
static inline uint64_t pt_instance_kv_pages_for(const pt_instance *e, uint32_t n_groups, uint64_t budget_bytes) {
    const pt_model_config *c = &e->w.cfg;
    const pt_engine_opts *o = &e->opts;
    uint64_t want = (uint64_t)o->max_seqs * e->pages_per_seq * n_groups;
    uint64_t fit = budget_bytes / pt_kv_page_bytes(c->n_layers, c->head_dim, o->page_size, o->kv_dtype);
    uint64_t n = want < fit ? want : fit;
    return n > UINT32_MAX - 1 ? UINT32_MAX - 1 : n;
}

/* The rank that holds KV-head group g. */
static inline int pt_rank_of_group(const pt_instance *e, uint32_t g) {
    for (int i = 0; i < e->tp; i++)
        if (g >= e->ranks[i].g0 && g < e->ranks[i].g1) return i;
    return 0;
}

/* Whether row t of the staged step is a decode token (the only token of its
 * sequence in the step), and whether query-aware page selection applies to
 * it in `layer` (DESIGN.md section 5). */
static inline bool pt_step_is_decode(const pt_instance *e, uint32_t t) {
    return !e->tok_prompt[t] && (t == 0 || e->tok_seq[t - 1] != e->tok_seq[t]) &&
           (t + 1 == e->T || e->tok_seq[t + 1] != e->tok_seq[t]);
}
static inline bool pt_select_applies(const pt_instance *e, uint32_t layer, uint32_t t) {
    return e->opts.select_budget > 0 && layer >= e->opts.select_dense_layers &&
           e->tok_pos[t] + 1 > e->opts.select_budget && pt_step_is_decode(e, t);
}

#endif
