/* A model's tensors arranged in TP chunks, and one rank's shard of them
 * (DESIGN.md section 3; src/model/chunks.c).
 *
 * Conventions: d = d_model, hd = head_dim, G = KV-head groups (= n_kv_heads;
 * a group is one KV head and its q_per_kv query heads), M = MLP chunks. */
#ifndef PROTEUS_MODEL_CHUNKS_H
#define PROTEUS_MODEL_CHUNKS_H

#include <stdbool.h>
#include <stdint.h>

#include "proteus/device.h"
#include "proteus/model_file.h"

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

/* The chunks of groups [g0, g1) and MLP chunks [c0, c1), copied from
 * chunks_from (n_layers tables: another shard's chunks; NULL: the model
 * view w); replicated tensors always from w. */
int pt_shard_build(pt_shard *s, const pt_weights *w, const pt_layer_weights *chunks_from, pt_device *dev, uint32_t g0,
                   uint32_t g1, uint32_t c0, uint32_t c1, pt_err *err);
void pt_shard_free(pt_shard *s);
/* What pt_shard_build charges its device: the chunks and the replicated tensors. */
uint64_t pt_shard_bytes(const pt_weights *w, uint32_t g0, uint32_t g1, uint32_t c0, uint32_t c1);

#endif
