/* The CUDA backend's state, shared by its files: cuda_backend.c (lifetime,
 * KV pool, the step and its CUDA graphs) and cuda_weights.c (upload). */
#ifndef PROTEUS_CUDA_INTERNAL_H
#define PROTEUS_CUDA_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#include "backend/backend.h"
#include "backend/instance.h"
#include "kcuda.h"
#include "kcuda_attn.h"

typedef struct {
    uint16_t *qkv;      /* bf16, see cuda_weights.c for the layouts */
    float *qkv_bias;    /* or NULL */
    uint16_t *o;
    uint16_t *gate_up;
    uint16_t *down;
    float *attn_norm, *ffn_norm;
} cu_layer;

/* A captured decode step, replayed while its shape recurs. */
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
    int device;
    int n_sm;
    cudaStream_t stream;
    kcuda_blas *blas;
    void **allocs;        /* every cudaMalloc, freed on destroy */
    size_t n_allocs;

    /* Weights. */
    cu_layer *layers;
    uint16_t *tok_embd, *lm_head;
    float *out_norm, *inv_freq;

    /* KV pages: the layout of src/kv/kv_pool.h in f16. */
    uint16_t *kv_data;
    float *kv_minmax;
    uint32_t n_slots;
    int32_t *block_tables; /* (max_seqs, G, pages_per_seq) */

    /* Step buffers, sized for max_batch_tokens rows (logits: max_out rows). */
    float *x;          /* (Tm, d) residual stream */
    uint16_t *xn;      /* (Tm, d) bf16 normed input of a GEMM */
    float *qkv;        /* (Tm, G * (q_per_kv + 2) * hd) */
    uint16_t *att;     /* (Tm, n_heads * hd) bf16 attention output */
    float *gu;         /* (Tm, 2 * ff) */
    uint16_t *h;       /* (Tm, ff) bf16 SwiGLU output */
    uint16_t *fin;     /* (max_out, d) bf16 final norm */
    float *logits;     /* (max_out, V); copied into the engine's out_scratch,
                          which is page-locked for it (cudaHostRegister) */
    bool out_registered;
    kcuda_run *runs_tmp;  /* (max_batch_tokens) host scratch of stage_step */
    void *attn_ws;
    size_t attn_ws_bytes;
    float *page_scores;  /* (max_seqs, G, pages_per_seq) */
    int32_t *sel;        /* (max_seqs, G, pages_per_seq) */
    int32_t *n_sel;      /* (max_seqs, G) */

    /* Per-step inputs: one block, pinned on the host and mirrored on the
     * device with the same offsets, copied with one cudaMemcpyAsync. */
    uint8_t *stage_host, *stage_dev;
    size_t stage_bytes;
    size_t off_tok, off_pos, off_out, off_runs;

    cu_graph graphs[CU_MAX_GRAPHS];
    size_t n_graphs;
    uint64_t steps;
    bool graphs_broken;  /* a capture failed: run eagerly from then on */
} cuda_backend;

/* pt_err from a CUDA result; PT_OK on cudaSuccess. */
int cu_check(cudaError_t rc, const char *what, pt_err *err);
/* cudaMalloc recorded for destroy. */
int cu_alloc(cuda_backend *cb, void **p, size_t bytes, const char *what, pt_err *err);

int cu_weights_upload(cuda_backend *cb, const pt_weights *w, int n_threads, pt_err *err);

#endif
