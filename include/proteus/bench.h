/* `proteus bench`: trace replay against any OpenAI-compatible server.
 *
 * Three parts with one job each:
 *   trace  (src/bench/trace*.c)   read published traces into pt_trace
 *   replay (src/bench/replay.c, client.c) send them with timing, stream,
 *                                  and record one pt_bench_record per request
 *   report (src/bench/report.c, plot_svg.c) compute vLLM's metrics from records
 * Times are seconds on one monotonic clock (pt_now), relative to the run's
 * start (the first request's scheduled send time is 0). */
#ifndef PROTEUS_BENCH_H
#define PROTEUS_BENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "proteus/util.h"

/* ---- traces ---- */

typedef struct {
    double t;              /* arrival, seconds from the trace's first request */
    uint32_t input_len;    /* prompt tokens */
    uint32_t output_len;   /* tokens to generate */
    uint32_t *hash_ids;    /* Mooncake: one id per 512-token prompt block; equal ids = shared prefix. NULL if none */
    uint32_t n_hash;
    uint32_t line;         /* 1-based line in the file, for messages */
} pt_trace_req;

typedef enum {
    PT_TRACE_AUTO = 0,     /* from the extension and the header line */
    PT_TRACE_AZURE,        /* TIMESTAMP,ContextTokens,GeneratedTokens (2023 and 2024) */
    PT_TRACE_MOONCAKE,     /* JSONL: timestamp (ms), input_length, output_length, hash_ids */
    PT_TRACE_BURSTGPT,     /* Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type */
    PT_TRACE_PROTEUS,      /* JSONL: {"t": seconds, "input": n, "output": n[, "prefix": [ids]]} (README) */
} pt_trace_format;

typedef struct {
    pt_trace_format format;
    bool strict;              /* a malformed row fails the load (else it is skipped and reported) */
    const char *burstgpt_model; /* keep only rows of this Model (NULL = all) */
    size_t max_rows;          /* stop after this many accepted rows (0 = all) */
} pt_trace_opts;

typedef struct {
    pt_trace_req *reqs;       /* sorted by t */
    size_t n;
    pt_trace_format format;   /* as detected */
    size_t n_skipped;         /* malformed rows skipped (non-strict) */
    size_t n_filtered;        /* rows dropped by a filter (BurstGPT model, failed requests) */
    char **warnings;          /* one line each: "file:LINE: reason"; at most 100 kept */
    size_t n_warnings;
} pt_trace;

int pt_trace_load(pt_trace *t, const char *path, const pt_trace_opts *o, pt_err *err);
void pt_trace_free(pt_trace *t);

/* ---- per-request records ---- */

typedef struct {
    uint32_t index;           /* in the replayed window */
    bool warmup;              /* sent before measuring; excluded from the report */
    double t_scheduled;       /* when the schedule said to send it */
    double t_sent;            /* when it was actually sent (max-concurrency can delay it) */
    double t_first;           /* first chunk with generated text (< 0 if none) */
    double t_end;             /* last byte of the response, or the failure */
    double *token_times;      /* (n_token_times) arrival of each chunk that carried tokens */
    size_t n_token_times;
    uint32_t input_tokens;    /* prompt tokens sent */
    uint32_t output_tokens;   /* from the response's usage (or counted chunks when usage is absent) */
    uint32_t expected_output; /* the trace's output length after scaling */
    bool ok;                  /* 2xx and a complete response */
    int status;               /* HTTP status, 0 when no response (connection failure) */
    char *error;              /* failure reason (status line, error JSON message, or errno text), or NULL */
} pt_bench_record;

/* Frees each record's token_times and error, then the array r itself. */
void pt_bench_records_free(pt_bench_record *r, size_t n);

/* ---- report ---- */

typedef struct {
    double ttft_ms, tpot_ms, e2el_ms; /* SLOs for goodput; <= 0 = not set */
} pt_goodput_slo;

typedef struct {
    double mean, median, p90, p99, std;
} pt_dist;

typedef struct {
    size_t completed, failed;
    size_t failed_by_status[8];  /* counts for up to 8 distinct statuses */
    int failed_status[8];
    size_t n_failed_statuses;    /* slots used, ascending status order */
    size_t failed_other_status;  /* failures whose status found no free slot */
    size_t output_mismatches;    /* ok requests whose output_tokens != expected_output */
    double duration_s;           /* first send to last end, measured requests (ok or not) */
    uint64_t total_input, total_output;
    double request_throughput, output_throughput, total_token_throughput, peak_output_throughput;
    double goodput;              /* requests/s meeting every set SLO; < 0 when no SLO set */
    size_t peak_concurrency;     /* most completed requests in flight at once, [t_sent, t_end) */
    pt_dist ttft_ms, tpot_ms, itl_ms, e2el_ms;
} pt_bench_report;

/* vLLM's definitions (benchmarks/serve.py): TTFT = first token - send; TPOT =
 * (E2EL - TTFT) / (output - 1) for output > 1; ITL = every gap between token
 * chunks; percentiles by linear interpolation (numpy's default). */
void pt_bench_report_compute(pt_bench_report *rep, const pt_bench_record *r, size_t n, const pt_goodput_slo *slo);
void pt_bench_report_print(FILE *f, const pt_bench_report *rep, const char *title);
/* JSON with vLLM's key names (completed, duration, mean_ttft_ms, p99_itl_ms, ...). malloc'd. */
char *pt_bench_report_json(const pt_bench_report *rep, const char *extra_json_fields);
int pt_bench_write_csv(const char *path, const pt_bench_record *r, size_t n, pt_err *err);
/* SVG: latency CDFs (TTFT, TPOT, E2EL) and output throughput over time. */
int pt_bench_write_svg(const char *path, const pt_bench_record *r, size_t n, const pt_bench_report *rep, pt_err *err);

/* The samples behind the report, shared by the report and the plot so that
 * both use one definition. Measured completed requests only; seconds. */
typedef enum { PT_BENCH_TTFT, PT_BENCH_TPOT, PT_BENCH_ITL, PT_BENCH_E2EL } pt_bench_metric;
/* Writes the samples of metric m into out (NULL = only count them) in record
 * order; returns how many there are. */
size_t pt_bench_samples(const pt_bench_record *r, size_t n, pt_bench_metric m, double *out);
/* Token chunks per 1-second bucket, vLLM's way: bucket k counts the chunks of
 * completed requests arriving in [origin + k, origin + k + 1), origin = the
 * earliest send of a completed request, ceil(last end - origin) + 1 buckets.
 * *counts is malloc'd (free it); NULL and 0 buckets when nothing completed. */
int pt_bench_output_per_second(const pt_bench_record *r, size_t n, double *origin, double **counts,
                               size_t *n_buckets, pt_err *err);

#endif
