/* Replay: which trace rows are sent, when, with what prompt, and the run
 * that sends them through the client and fills one pt_bench_record each.
 *
 * Times in a plan are seconds from the first measured request's scheduled
 * send. Warmup requests come first in the plan, are sent one after another
 * before the clock starts, and are marked `warmup` in their records. */
#ifndef PROTEUS_BENCH_REPLAY_H
#define PROTEUS_BENCH_REPLAY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proteus/bench.h"
#include "proteus/util.h"

#define PT_PROMPT_BLOCK 512 /* tokens per hash_ids block (Mooncake's block size) */

typedef struct {
    /* time: as recorded divided by speedup, or a gamma process when rate > 0 */
    double speedup;          /* > 0; 1 = as recorded */
    double rate;             /* requests/s; <= 0 = use the trace's times */
    double burstiness;       /* gamma shape; 1 = Poisson */
    uint64_t seed;           /* rate sampling and prompts */
    /* window, in the trace's seconds */
    double start;            /* first row at or after this */
    double duration;         /* rows before start + duration; <= 0 = to the end */
    size_t num_requests;     /* measured requests; 0 = every row in the window */
    size_t warmup;           /* rows taken before the measured ones */
    /* lengths */
    double input_scale, output_scale;
    uint32_t max_input, max_output; /* 0 = no cap */
    uint32_t context_len;    /* input + output fitted under this; 0 = no fit */
} pt_replay_opts;

typedef struct {
    double t;                /* scheduled send */
    uint32_t input_len, output_len; /* after scaling and clipping */
    const uint32_t *hash_ids; /* borrowed from the trace */
    uint32_t n_hash;
    uint32_t line;           /* the trace row, for messages */
    bool warmup;
} pt_replay_req;

typedef struct {
    pt_replay_req *reqs;     /* (n) warmup first, then measured by t */
    size_t n, n_warmup;
} pt_replay_plan;

void pt_replay_opts_default(pt_replay_opts *o);
/* The window, lengths and schedule. The plan borrows the trace's hash_ids:
 * free the plan first. */
int pt_replay_plan_build(pt_replay_plan *p, const pt_trace *t, const pt_replay_opts *o, pt_err *err);
void pt_replay_plan_free(pt_replay_plan *p);

/* Scaling (rounded, at least 1), caps, then the context fit: the input is
 * cut first (to context - output, at least 1), then the output. */
void pt_replay_lengths(const pt_replay_opts *o, uint32_t in, uint32_t out, uint32_t *in_out, uint32_t *out_out);

/* Arrival times of a gamma renewal process starting at t[0] = 0: gaps have
 * shape `burstiness` and mean 1/rate (burstiness 1 = Poisson). */
void pt_replay_gamma_times(double *t, size_t n, double rate, double burstiness, uint64_t seed);

/* A prompt of exactly `len` token ids drawn from `pool`. Block b (of
 * PT_PROMPT_BLOCK tokens) comes from a PRNG seeded by (seed, hash_ids[b])
 * when b < n_hash, else by (seed, req_id, b): equal hash ids give equal
 * blocks, distinct requests without them share nothing. */
void pt_prompt_build(int32_t *out, uint32_t len, const int32_t *pool, size_t n_pool, uint64_t seed, uint32_t req_id,
                     const uint32_t *hash_ids, uint32_t n_hash);

typedef struct {
    const char *base_url, *api_key;
    const char *endpoint;    /* "/v1/completions" */
    const char *model;
    const int32_t *pool;     /* token ids prompts are drawn from; in text mode, indices into words */
    size_t n_pool;
    const char *const *words; /* text mode (servers that take no token ids): prompts are " w1 w2 ...",
                                 words the server tokenizes as one token each; NULL = token ids */
    uint64_t seed;
    double timeout_s;        /* per request; <= 0 = none */
    size_t max_concurrency;  /* 0 = unlimited */
    bool progress;           /* a progress line on stderr */
    bool handle_sigint;      /* Ctrl-C stops the run and keeps what was recorded */
} pt_replay_run_opts;

/* Sends the plan and fills recs[0 .. *n_recorded) (recs has plan->n slots,
 * zeroed by the caller). Requests not yet sent when the run was interrupted
 * have no record. Returns 0 when the run happened, even with failed
 * requests; negative when it could not start. */
int pt_replay_run(const pt_replay_plan *plan, const pt_replay_run_opts *o, pt_bench_record *recs, size_t *n_recorded,
                  bool *interrupted, pt_err *err);

#endif
