/* The inference engine: a model's weights arranged in TP chunks, a
 * head-centric paged KV cache, and a step function that runs one batch of
 * token chunks from several sequences through the forward pass, on the CPU
 * or on a CUDA GPU (src/backend).
 *
 * One engine is one instance (DESIGN.md section 2): a group of devices of a
 * fabric (proteus/fabric.h), one rank per device. Each rank owns, in its
 * device's accounted memory, the weight chunks of its shard (a contiguous
 * range of KV-head groups and of MLP chunks), the KV pages of the heads it
 * holds, and its step buffers. Row-parallel products leave one partial sum
 * per chunk; the ranks exchange them through the fabric's comm group and
 * every rank folds them in chunk order, so results are bit-identical at any
 * TP degree with the same chunking (tp_chunks). */
#ifndef PROTEUS_ENGINE_H
#define PROTEUS_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proteus/device.h"
#include "proteus/fabric.h"
#include "proteus/model_file.h"
#include "proteus/util.h"

typedef struct pt_engine pt_engine;

typedef struct {
    /* pt_engine_create only (pt_engine_create_on takes its devices from the fabric): */
    pt_device_kind device; /* PT_DEVICE_CPU (default) or PT_DEVICE_CUDA */
    int device_index;     /* CUDA device ordinal (default 0) */
    bool cuda_graphs;     /* CUDA: replay decode-only steps as CUDA graphs (default on) */
    int n_threads;        /* worker threads per rank (>= 1) */
    int tp;               /* tensor-parallel degree (>= 1) */
    /* Both: */
    uint32_t tp_chunks;   /* MLP chunks per weight tensor; 0 = the fabric's (pt_fabric_tp_chunks),
                             for pt_engine_create 4, or lcm(4, tp) above TP 4 */
    uint32_t page_size;   /* tokens per KV head page (default 16) */
    pt_dtype kv_dtype;    /* PT_DTYPE_F32 (default), PT_DTYPE_F16 or PT_DTYPE_BF16 */
    uint64_t kv_pages;    /* head pages per rank; 0 = as many as kv_bytes holds, at most
                             enough for max_seqs full contexts */
    uint64_t kv_bytes;    /* KV budget per rank when kv_pages is 0; 0 = what the rank's device has
                             left after weights and scratch, or 1 GiB when it has no budget */
    uint32_t max_ctx;     /* context limit (0 = the model's) */
    bool ctx_beyond_model; /* max_ctx may exceed the model's trained context: for speed measurements
                              only (as llama-bench allows), outputs there are not what the model learned */
    uint32_t max_seqs;    /* concurrent sequences (default 64) */
    uint32_t max_batch_tokens; /* tokens per step (default 512) */
    bool exact_activations;    /* F32 activations with dequantized weights: the arithmetic of a
                                  float reference (tests); default off: int8 activations, fast */
    bool bf16_activations;     /* with exact_activations: every matmul input rounded to bf16, where
                                  the CUDA backend rounds them (the CPU reference it is tested against) */
    /* Query-aware page selection at decode (DESIGN.md section 5): in layers
     * >= select_dense_layers, a decoding sequence whose context exceeds
     * select_budget tokens attends only to the pages chosen within that
     * budget. 0 = off (dense attention everywhere). */
    uint32_t select_budget;
    uint32_t select_dense_layers; /* default 2 */
    /* Prefix caching (src/kv/prefix_cache.h): full pages stay cached after
     * their sequence ends and are shared by sequences that begin with the
     * same tokens (pt_engine_seq_prefix_reuse). Default off here; the
     * server's prefix_caching turns it on. */
    bool prefix_cache;
} pt_engine_opts;

void pt_engine_opts_default(pt_engine_opts *o);

/* Builds an instance over devices [first, first + tp) of a fabric (which,
 * like the model file, must outlive it). Fails, naming the device and the
 * numbers, when the group is not allowed, the TP degree exceeds the
 * model's KV heads or MLP chunks, or a device's budget cannot hold its
 * shard, its buffers and at least one page per KV head. */
int pt_engine_create_on(pt_engine **out, const pt_model_file *mf, pt_fabric *f, int first, int tp,
                        const pt_engine_opts *opts, pt_err *err);
/* A stand-alone instance on its own fabric: opts->tp CPU devices of
 * opts->n_threads threads without a budget, or opts->tp CUDA devices with
 * ordinals device_index, device_index + 1, ... */
int pt_engine_create(pt_engine **out, const pt_model_file *mf, const pt_engine_opts *opts, pt_err *err);
void pt_engine_free(pt_engine *e);

const pt_model_config *pt_engine_config(const pt_engine *e);
/* The options in force (defaults filled in, max_ctx resolved). */
const pt_engine_opts *pt_engine_get_opts(const pt_engine *e);
/* CUDA graphs the backend captured, and steps it ran by replaying one. */
void pt_engine_graph_stats(const pt_engine *e, uint64_t *captured, uint64_t *replayed);
/* The device rank `rank` runs on, as "cpu0" or "cuda1" (for logs and metrics). */
void pt_engine_device_name(const pt_engine *e, int rank, char *buf, size_t n);
int pt_engine_tp(const pt_engine *e);
pt_device *pt_engine_device(pt_engine *e, int rank);
/* Bytes of rank `rank`'s own weight chunks (its shard, without the
 * replicated tensors), and of the replicated ones it uses. */
void pt_engine_weight_bytes(const pt_engine *e, int rank, uint64_t *shard, uint64_t *replicated);
/* The most tokens one sequence can hold: the context limit, or less when
 * the KV pools are smaller (each rank holds a page per page_size tokens of
 * every head it owns). A request longer than this can never run. */
uint32_t pt_engine_seq_capacity(const pt_engine *e);
/* Head pages of rank `rank`'s KV pool: total and free. Free counts the
 * pages of cached prefixes no sequence uses, which an allocation reclaims. */
void pt_engine_kv_pages(const pt_engine *e, int rank, uint64_t *total, uint64_t *free_pages);

/* A sequence holds KV cache; ids are small non-negative integers. */
int pt_engine_seq_new(pt_engine *e);            /* < 0 when no slot is free */
void pt_engine_seq_free(pt_engine *e, int seq); /* returns its pages */
uint32_t pt_engine_seq_len(const pt_engine *e, int seq);

/* Prefix caching (opts.prefix_cache; both are no-ops without it). Reuse
 * starts caching for a new, empty sequence whose tokens will begin with
 * tokens[0, n): it takes the cached pages those tokens begin with (leaving
 * at least one token to compute), so that the sequence holds their tokens
 * already; returns how many (a multiple of the page size, 0 without the
 * cache). `salt` keeps requests apart that must not share (0: none;
 * pt_prefix_cache_salt). Publish, after a step, makes the sequence's full
 * pages among tokens[0, n) findable (n <= its length; tokens are what it
 * holds). A sequence never reused does not publish. */
uint32_t pt_engine_seq_prefix_reuse(pt_engine *e, int seq, const int32_t *tokens, uint32_t n, uint64_t salt);
/* How many of tokens[0, n) reuse would take now (nothing is taken). */
uint32_t pt_engine_seq_prefix_cached(const pt_engine *e, const int32_t *tokens, uint32_t n, uint64_t salt);
/* A request's cache_salt as the salt above (0 for NULL or ""). */
uint64_t pt_engine_prefix_salt(const char *cache_salt);
void pt_engine_seq_prefix_publish(pt_engine *e, int seq, const int32_t *tokens, uint32_t n);
/* Queried and hit tokens, cached and idle pages (zeros without the cache). */
typedef struct {
    uint64_t queries, hits;   /* tokens */
    uint64_t pages, idle_pages; /* cached pages, each one head page per KV head */
    uint64_t evictions;
} pt_engine_prefix_stats;
void pt_engine_prefix_get_stats(const pt_engine *e, pt_engine_prefix_stats *s);

/* Moving a running sequence between instances of one fabric (the primitive
 * of a TP transformation, DESIGN.md section 6). Both instances must be
 * paused at a step boundary (no step running) while these run.
 *
 * Detach takes the sequence out of its instance without copying anything:
 * its length and, for every KV head, the pages that hold it -- which device,
 * which slots -- become a value that owns those pages. Attach gives the
 * sequence a slot in another instance (same model and KV geometry, any TP
 * degree), allocates pages on the ranks there that hold each head, moves the
 * page contents through the fabric's comm world (whole head pages: K, V and
 * the key bounding boxes of every layer), and returns the source pages. On
 * failure nothing changes: the value still owns its pages, and may be
 * attached elsewhere or released back to its source. */
typedef struct pt_seq_state pt_seq_state;

int pt_engine_seq_detach(pt_engine *e, int seq, pt_seq_state **out, pt_err *err);
int pt_engine_seq_attach(pt_engine *e, pt_seq_state *st, int *seq, pt_err *err); /* st freed on success */
/* Gives the pages back to the source instance's pools and frees the value. */
void pt_seq_state_release(pt_seq_state *st);
uint32_t pt_seq_state_len(const pt_seq_state *st);

/* One entry of a step: append `n_tokens` tokens to sequence `seq` (positions
 * continue from its current length) and optionally receive logits. */
typedef struct {
    int seq;
    const int32_t *tokens;
    uint32_t n_tokens;
    float *logits;        /* NULL, or vocab floats for the last token, or
                             n_tokens * vocab floats when all_logits */
    bool all_logits;
    bool prompt;          /* a chunk of a prompt: attended densely, also when it is one token (a single
                             token otherwise counts as a decode, for query-aware page selection) */
} pt_batch_entry;

/* Runs one forward step over all entries together. Fails without changing any
 * sequence when pages or context run out (PT_ERR_NOMEM / PT_ERR_INVALID), or
 * when the exchange between the ranks of a TP instance fails (PT_ERR_COMM,
 * PT_ERR_COMM_TIMEOUT, PT_ERR_COMM_ABORTED of src/comm/comm.h): then the comm
 * world is aborted, and the next step first takes a group of a new world
 * from the fabric (comm.h: never a retry on the broken one) -- so a comm
 * failure fails the steps that were running, not the instance. The
 * sequences of a failed step may be stepped again or freed. */
int pt_engine_step(pt_engine *e, const pt_batch_entry *entries, size_t n_entries, pt_err *err);

/* What a TP instance's communication went through (zeros at TP 1). Safe to
 * read from any thread while steps run. */
typedef struct {
    uint64_t failures;  /* steps that failed on a comm error */
    uint64_t renewals;  /* times it moved to a new comm world after one */
    char last_error[512]; /* the last comm error's message; "" when none */
} pt_engine_comm_stats;
void pt_engine_comm_get_stats(const pt_engine *e, pt_engine_comm_stats *s);

/* Convenience for tests: a fresh sequence, prefill `tokens`, logits of every
 * position into logits[n * vocab], sequence freed. */
int pt_engine_eval_logits(pt_engine *e, const int32_t *tokens, uint32_t n, float *logits, pt_err *err);

#endif
