/* The CUDA backend's state, shared by its files: cuda_backend.c (lifetime,
 * device memory, KV pages), cuda_step.c (a step on every rank, its CUDA
 * graphs) and cuda_weights.c (upload of each rank's shard).
 *
 * One GPU per rank: rank i of the instance runs on the ordinal of its
 * device (pt_device_ordinal(e->ranks[i].dev)) with its own stream, cuBLASLt
 * handle, weight shard, KV pages and step buffers. Every device allocation
 * is accounted on the rank's pt_device by class (weights, kv, scratch).
 *
 * Conventions: d = d_model, hd = head_dim, G = KV-head groups of the model,
 * M = MLP chunks, mc = columns per MLP chunk, gs = (q_per_kv + 2) * hd
 * (one group's rows of the fused QKV), qw = q_per_kv * hd; a rank holds
 * ng = g1 - g0 groups and nc = c1 - c0 MLP chunks; Tm = max_batch_tokens. */
#ifndef PROTEUS_CUDA_INTERNAL_H
#define PROTEUS_CUDA_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#include "backend/backend.h"
#include "backend/instance.h"
#include "kcuda.h"
#include "kcuda_attn.h"

/* One rank's weights of one layer: only its chunks (cuda_weights.c has the
 * layouts). */
typedef struct {
    uint16_t *qkv;      /* (ng * gs, d) bf16 */
    float *qkv_bias;    /* (ng * gs) or NULL */
    uint16_t *o;        /* (ng * qw, d) bf16: O transposed, the rank's input rows */
    uint16_t *gate_up;  /* (2 * nc * mc, d) bf16 */
    uint16_t *down;     /* (nc * mc, d) bf16: down transposed */
    float *attn_norm, *ffn_norm; /* (d) replicated */
} cu_layer;

/* A device allocation and what it was accounted as. */
typedef struct {
    void *p;
    size_t bytes;
    pt_mem_class cls;
} cu_block;

typedef struct {
    pt_rank *r;           /* the instance's rank: device, groups, chunks, KV pool accounting */
    int ordinal;          /* CUDA device of the rank */
    uint32_t ng, nc;      /* groups [g0, g1) and MLP chunks [c0, c1) it holds */
    cudaStream_t stream;  /* every kernel, copy and collective of the rank */
    kcuda_blas *blas;
    bool blas_accounted;  /* its workspace is reserved on the device */
    cu_block *allocs;     /* every cudaMalloc of the rank, freed (and unreserved) on destroy */
    size_t n_allocs, cap_allocs;

    /* Weights. */
    cu_layer *layers;     /* (n_layers) */
    uint16_t *tok_embd;   /* (V, d) replicated */
    uint16_t *lm_head;    /* (V, d) rank 0 only (= tok_embd when tied) */
    float *out_norm;      /* (d) rank 0 only */
    float *inv_freq;      /* (rope_dim / 2) */
    uint64_t shard_bytes, replicated_bytes;

    /* KV pages of the rank's heads: in its device's pool (r->kv: data and
     * minmax in GPU memory, the layout of src/kv/kv_pool.h in f16). */
    int32_t *block_tables; /* (max_seqs, ng, pages_per_seq): rows of the rank's heads */

    /* Step buffers, sized for Tm rows (logits: max_out rows). */
    float *x;          /* (Tm, d) residual stream; identical on every rank */
    uint16_t *xn;      /* (Tm, d) bf16 normed input of a GEMM */
    float *qkv;        /* (Tm, ng * gs) */
    uint16_t *att;     /* (Tm, ng * qw) bf16 attention output */
    float *gu;         /* (Tm, 2 * nc * mc) */
    uint16_t *h;       /* (Tm, nc * mc) bf16 SwiGLU output */
    float *part_attn;  /* TP > 1: (G, T, d) per-group partial sums of O, own computed, others gathered */
    float *part_mlp;   /* TP > 1: (M, T, d) the same for down */
    uint16_t *fin;     /* rank 0: (max_out, d) bf16 final norm */
    float *logits;     /* rank 0: (max_out, V); copied into the engine's out_scratch,
                          which is page-locked for it (cudaHostRegister) */
    void *attn_ws;     /* split-KV workspace */
    size_t attn_ws_bytes;
    float *page_scores; /* (max_seqs, ng, pages_per_seq) */
    int32_t *sel;       /* (max_seqs, ng, pages_per_seq) */
    int32_t *n_sel;     /* (max_seqs, ng) */
    uint8_t *stage_dev; /* the step's inputs (see cuda_backend.stage_host) */

    /* This step's split-KV counts (dense decode, decode over selected pages). */
    int splits, splits_sel;
} cu_rank;

/* A captured decode step, replayed while its shape recurs (TP 1 only). */
typedef struct {
    uint32_t n_dec, n_out, bucket;
    int splits;
    bool select;            /* page selection kernels in the step */
    unsigned seen;          /* times the shape ran; captured on the second */
    uint64_t last_used;     /* step counter, for eviction */
    cudaGraphExec_t exec;   /* NULL until captured */
} cu_graph;

#define CU_MAX_GRAPHS 64

typedef struct {
    pt_backend base;
    pt_instance *e;
    int tp;
    cu_rank *ranks;       /* (tp) */

    bool out_registered;  /* e->out_scratch page-locked */
    kcuda_run *runs_tmp;  /* (Tm) host scratch of stage_step */

    /* Per-step inputs: one block, pinned on the host (portable: every rank
     * copies from it) and mirrored on each rank's device with the same
     * offsets, copied with one cudaMemcpyAsync per rank. */
    uint8_t *stage_host;
    size_t stage_bytes;
    size_t off_tok, off_pos, off_out, off_runs;

    cu_graph graphs[CU_MAX_GRAPHS];
    size_t n_graphs;
    uint64_t steps;
    bool graphs_broken;  /* a capture failed: run eagerly from then on */
} cuda_backend;

/* pt_err from a CUDA result, naming the rank's device (rk may be NULL);
 * PT_OK on cudaSuccess. */
int cu_check(const cu_rank *rk, cudaError_t rc, const char *what, pt_err *err);
/* cudaMalloc on the rank's device (made current), reserved on its pt_device
 * as class cls first, recorded for destroy. */
int cu_alloc(cu_rank *rk, pt_mem_class cls, void **p, size_t bytes, const char *what, pt_err *err);
/* Frees one allocation of the rank and gives its bytes back to the device. */
void cu_free_one(cu_rank *rk, void *p);

/* Uploads every rank's shard and the replicated tensors (cuda_weights.c). */
int cu_weights_upload(cuda_backend *cb, const pt_weights *w, int n_threads, pt_err *err);

/* The step (cuda_step.c). */
int cu_step(pt_backend *b, pt_instance *e, pt_err *err);
/* The attention arguments of a rank for `layer`; the shape fields alone
 * (runs NULL) size the split-KV workspace. */
kcuda_attn_args cu_attn_args(const cu_rank *rk, const pt_instance *e, uint32_t layer, const kcuda_run *runs,
                             uint32_t n_runs, uint32_t max_ctx);
/* Contexts rounded up to a power of two (at least 256, at most max_ctx). */
uint32_t cu_ctx_bucket(const pt_instance *e, uint32_t ctx);
void cu_graphs_clear(cuda_backend *cb);

#endif
