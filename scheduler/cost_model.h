/* The cost model the scheduler decides with, and the simulator runs on:
 * how long a step takes on an instance of TP degree d, how many KV head
 * pages such an instance holds, and how long a transformation runs and
 * pauses its instances (DESIGN.md section 7).
 *
 * One formula serves the three sources of numbers (a roofline of a device
 * spec, a few timed steps at start-up, a calibration file):
 *
 *   step(d, shape) = max(mem_s + mem_kv_s * kv_tokens,
 *                        flop_token_s * tokens + flop_pair_s * pairs)
 *                    + fixed_s + token_s * tokens + seq_s * n_seqs
 *
 * A roofline fills both sides of the max (weights and KV read from memory
 * against the FLOPs of the step) and puts the all-reduce in fixed_s and
 * token_s; a calibrated CPU model is linear (its memory side zero), or of
 * the same roofline form when its longer calibration finds it fits better.
 * seq_s is what each sequence of a step adds beyond its tokens: its row of
 * logits (the LM head) and its sampling, which a decode pays for every
 * token and a prompt once (on a CPU with SmolLM2's 49K-token vocabulary, a
 * decode token costs about 20% more than a prompt token). The roofline
 * leaves it 0.
 * "pairs" are the (query, key) pairs attention visits: a sequence computing
 * n tokens after ctx cached ones visits n * ctx + n * (n + 1) / 2. Its
 * keys and values are read once per step (tiled attention), so kv_tokens
 * counts ctx + n for it.
 *
 * Pure data and arithmetic: no I/O except the calibration file's reader and
 * writer, which name the file and the key that is wrong. */
#ifndef PROTEUS_SCHEDULER_COST_MODEL_H
#define PROTEUS_SCHEDULER_COST_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proteus/util.h"

#define PT_COST_MAX_TP 64 /* degrees are indexes: tp[1], tp[2], tp[4], ... */

/* One step's work on one instance. */
typedef struct {
    uint64_t tokens;     /* tokens computed: prefill chunk tokens + one per decoding sequence */
    uint64_t pairs;      /* attention (query, key) pairs, see above */
    uint64_t kv_tokens;  /* cached tokens whose keys and values the step reads, see above */
    uint32_t n_seqs;     /* sequences in the step */
} pt_step_shape;

/* Coefficients of one TP degree (seconds). */
typedef struct {
    bool valid;          /* this degree was modelled */
    double mem_s;        /* reading this rank's weight shard once */
    double mem_kv_s;     /* reading one token's cached keys and values, this rank's heads */
    double flop_token_s; /* the matmul FLOPs of one token on this rank's shard */
    double flop_pair_s;  /* attention FLOPs of one pair on this rank's heads */
    double fixed_s;      /* per step: launches, sampling, all-reduce latency */
    double token_s;      /* per token: all-reduce bytes over the link (0 at TP1), CPU per-token overheads */
    double seq_s;        /* per sequence in the step: its logits row and sampling */
} pt_cost_tp;

typedef struct {
    pt_cost_tp tp[PT_COST_MAX_TP + 1];  /* indexed by degree */
    /* memory, to know what an instance of degree d holds */
    uint32_t page_size;      /* tokens per KV page */
    uint32_t n_kv_heads;     /* of the model */
    uint64_t head_page_bytes; /* one page of one KV head: page_size tokens, every layer, K and V */
    uint64_t weight_bytes;   /* the whole model's weights */
    uint64_t device_bytes;   /* what one device gives to weights, KV and step buffers */
    uint64_t reserve_bytes;  /* per device: step buffers and activations (not KV) */
    uint32_t max_ctx;        /* tokens one sequence may hold (prompt + output) */
    /* transformations: total = xform_fixed_s + bytes * xform_byte_s;
     * the pause moves only what the pre-copy could not */
    double xform_fixed_s;    /* planning, building the targets, synchronising */
    double xform_byte_s;     /* seconds per byte moved between devices */
    double pause_fixed_s;    /* the commit's fixed part: stop, switch tables, resume */
} pt_cost_model;

/* Seconds one step of `shape` takes on an instance of degree tp (0 for an
 * empty step; negative when tp is not modelled). */
double pt_cost_step(const pt_cost_model *m, int tp, const pt_step_shape *shape);

/* Adds to `shape` a sequence computing n tokens after ctx cached ones. */
void pt_cost_shape_add(pt_step_shape *shape, uint64_t ctx, uint64_t n);

/* Seconds to prefill a prompt of `tokens` tokens alone on degree tp, in
 * chunks of at most `chunk` tokens (0 = one step). Negative when tp is not
 * modelled. */
double pt_cost_prefill(const pt_cost_model *m, int tp, uint64_t tokens, uint64_t chunk);

/* KV head pages a sequence of `tokens` tokens holds (a page per page_size
 * tokens on every KV head). */
uint64_t pt_cost_seq_pages(const pt_cost_model *m, uint64_t tokens);

/* KV head pages an instance of degree tp holds over its devices: what each
 * device has left after its shard of the weights and its reserve, filled
 * as the rank with the most KV heads fills (heads that do not divide
 * evenly leave the others' spare pages unused); 0 when the weights do not
 * fit. */
uint64_t pt_cost_instance_pages(const pt_cost_model *m, int tp);

/* A transformation of the instances on `n_devices` devices from degree
 * tp_from to tp_to (merge when tp_to > tp_from), while `n_seqs` sequences
 * holding `kv_tokens` tokens in all run there: the bytes moved (KV heads
 * that change device, weight shards a device lacks), how long it runs, and
 * how long its instances pause (the last, partly written page of each
 * sequence's moving heads is copied in the pause). */
typedef struct {
    uint64_t bytes_moved, bytes_in_pause;
    double total_s, pause_s;
} pt_xform_cost;
void pt_cost_xform(const pt_cost_model *m, int n_devices, int tp_from, int tp_to, uint32_t n_seqs,
                   uint64_t kv_tokens, pt_xform_cost *out);

/* A model shape: what the roofline needs of a model. */
typedef struct {
    const char *name;
    uint32_t n_layers, hidden, n_heads, n_kv_heads, head_dim, ffn, vocab;
    uint64_t n_params;       /* every weight, embeddings included */
    uint32_t bytes_per_param; /* 2 = bf16 */
    uint32_t bytes_per_kv;   /* KV cache element: 2 = bf16 */
    uint32_t max_ctx;
} pt_model_shape;

/* A device spec: what the roofline needs of a device and its link. */
typedef struct {
    const char *name;
    uint64_t mem_bytes;      /* HBM (or RAM budget) */
    double mem_bw;           /* bytes/s */
    double flops;            /* dense bf16 FLOP/s */
    double link_bw;          /* bytes/s one direction to each peer (NVLink) */
    double link_latency_s;   /* one all-reduce's latency */
    double mem_eff, flop_eff; /* achievable fractions of mem_bw and flops */
    double step_overhead_s;  /* per step: launches, scheduling, sampling */
    double mem_util;         /* fraction of mem_bytes the server may use (vLLM's gpu_memory_utilization) */
} pt_device_roofline;

/* The roofline cost model of `shape` on `dev` for each degree in
 * allowed[0..n_allowed): per token, 2 * params / d FLOPs; per pair,
 * 4 * n_heads * head_dim * layers / d FLOPs; per cached token read, the
 * KV bytes of the rank's heads; two all-reduces of hidden * 2 bytes per token per layer on d > 1
 * (ring: 2 (d - 1) / d of it over the link); weights / d read per step. A
 * degree whose shard does not fit is left invalid. */
int pt_cost_roofline(pt_cost_model *m, const pt_model_shape *shape, const pt_device_roofline *dev,
                     uint32_t page_size, const int *allowed, int n_allowed, pt_err *err);

/* The calibration file (JSON; README "Cost model"): every field of the
 * model, the per-degree coefficients under "tp": {"1": {...}, "2": {...}}.
 * The reader rejects unknown keys, missing keys and negative values,
 * naming the file and the key path. */
int pt_cost_load(pt_cost_model *m, const char *path, pt_err *err);
int pt_cost_save(const pt_cost_model *m, const char *path, pt_err *err);

#endif
