/* Continuous batching over one engine instance (iteration-level scheduling).
 *
 * A batcher owns an engine and a thread. Requests are submitted from any
 * thread; each iteration the batcher admits waiting requests while sequence
 * slots allow, builds one step from every running decode (one token each)
 * plus prompt chunks under the per-step token budget (chunked prefill mixed
 * with decodes), runs it, samples, and reports each request's progress
 * through its callback. When KV pages run out it preempts the most recently
 * admitted request (frees its pages; it is recomputed from its prompt and the
 * tokens generated so far when it is admitted again), as vLLM does. With the
 * engine's prefix cache, an admitted request starts from the cached pages
 * its tokens begin with, and its full pages are published as they fill
 * (all of them with dense attention; with query-aware page selection only
 * its prefilled ones, whose keys and values a dense prefill would
 * reproduce bit for bit).
 *
 * Callbacks run on the batcher thread without any lock held: copy what is
 * needed and hand it off; never call back into the batcher from them except
 * pt_batcher_cancel. After the event with finish != PT_FINISH_NONE, no more
 * events come for that request. */
#ifndef PROTEUS_BATCHER_H
#define PROTEUS_BATCHER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proteus/engine.h"
#include "proteus/sampler.h"
#include "proteus/tokenizer.h"
#include "proteus/util.h"

typedef struct pt_batcher pt_batcher;

typedef struct {
    uint32_t max_running;      /* sequences decoding or prefilling at once (<= engine max_seqs) */
    uint32_t max_waiting;      /* queued requests before submit refuses (PT_ERR_BUSY) */
    uint32_t max_batch_tokens; /* tokens per step (<= engine max_batch_tokens) */
    uint32_t prefill_chunk;    /* prompt tokens one sequence may take from a step */
} pt_batcher_opts;

enum { PT_ERR_BUSY = -20 }; /* the waiting queue is full */

typedef enum {
    PT_FINISH_NONE = 0,
    PT_FINISH_STOP,      /* end-of-generation token or stop string */
    PT_FINISH_LENGTH,    /* max_tokens reached */
    PT_FINISH_CANCELLED, /* pt_batcher_cancel or shutdown */
    PT_FINISH_ERROR,     /* see error */
} pt_finish_reason;

typedef struct {
    uint64_t id;
    const char *text;   /* new text safe to send (stop strings and partial UTF-8 held back) */
    size_t text_len;
    int32_t token;      /* the token this event generated, or -1 */
    float logprob;      /* of token, when logprobs were asked for */
    const pt_token_logprob *top; /* n_top alternatives, most likely first */
    size_t n_top;
    pt_finish_reason finish;
    uint32_t prompt_tokens;
    uint32_t completion_tokens;
    double t_admitted;  /* pt_now() when the request left the queue (first event and later) */
    const char *error;  /* with PT_FINISH_ERROR */
} pt_gen_event;

typedef void (*pt_gen_cb)(void *user, const pt_gen_event *ev);

typedef struct {
    const int32_t *prompt;           /* copied by submit */
    size_t n_prompt;
    pt_sampler_params sampling;      /* logit_bias copied by submit */
    uint32_t max_tokens;             /* >= 1 */
    const char *const *stops;        /* copied by submit */
    size_t n_stops;
    bool include_stop;
    bool ignore_eos;
    int top_logprobs;                /* -1: no logprobs; else 0..PT_LOGPROBS_MAX alternatives */
    bool no_prefix_cache;            /* neither reuse cached pages nor leave its own (llama.cpp's cache_prompt: false) */
    const char *cache_salt;          /* NULL, or: shares cached pages only with requests of the same salt */
    pt_gen_cb cb;
    void *user;
} pt_gen_params;

/* Every rank of an instance as large as a fabric (PT_FABRIC_MAX_DEVICES). */
#define PT_BATCHER_MAX_RANKS 64

typedef struct {
    uint32_t running, waiting;
    uint64_t kv_pages_total[PT_BATCHER_MAX_RANKS], kv_pages_free[PT_BATCHER_MAX_RANKS]; /* per rank (device) */
    char device[PT_BATCHER_MAX_RANKS][16]; /* each rank's device: "cpu0", "cuda1" */
    int n_ranks;
    uint64_t preemptions;
    uint64_t preemptions_movable; /* of them, of a request a smaller instance could serve (pt_batcher_set_preempt_movable) */
    uint64_t steps;
    pt_engine_prefix_stats prefix; /* the engine's prefix cache */
} pt_batcher_stats;

/* The engine and tokenizer must outlive the batcher. */
int pt_batcher_create(pt_batcher **out, pt_engine *e, const pt_tokenizer *tok, const pt_batcher_opts *o, pt_err *err);
/* Stops the thread; requests still in flight end with PT_FINISH_CANCELLED. */
void pt_batcher_free(pt_batcher *b);

/* Queues a request; *id names it for pt_batcher_cancel. Fails with
 * PT_ERR_INVALID (bad parameters, prompt + max_tokens over the context: the
 * message says which) or PT_ERR_BUSY (queue full); then no callback runs. */
int pt_batcher_submit(pt_batcher *b, const pt_gen_params *p, uint64_t *id, pt_err *err);
/* Asynchronous: the request ends with PT_FINISH_CANCELLED and its pages are
 * freed at the next iteration. Unknown or finished ids are ignored. */
void pt_batcher_cancel(pt_batcher *b, uint64_t id);
/* Holds the batcher at a step boundary while paused: no request is admitted
 * and no step runs (submit and cancel still queue). The pause a TP
 * transformation needs; tests use it to queue requests that must overlap. */
void pt_batcher_pause(pt_batcher *b, bool paused);
void pt_batcher_cancel_all(pt_batcher *b);

void pt_batcher_get_stats(pt_batcher *b, pt_batcher_stats *s);
/* The longest request (prompt + max_tokens) it takes: the context length,
 * or what its KV pages hold for one sequence when that is less. */
uint32_t pt_batcher_max_ctx(const pt_batcher *b);
/* Which request gives way when pages run out: by default the most recently
 * admitted; with max_tokens > 0 (a merged instance under the dynamic
 * policy) the most recently admitted of those whose prompt + max_tokens is
 * at most max_tokens (what a smaller instance holds), when there is one
 * (scheduler.h, pt_sched_victim). Any thread. */
void pt_batcher_set_preempt_movable(pt_batcher *b, uint32_t max_tokens);

#endif
