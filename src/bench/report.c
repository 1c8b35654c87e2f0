/* Report: vLLM's serving metrics (`vllm bench serve`, benchmarks/serve.py,
 * calculate_metrics) computed from per-request records.
 *
 * Conventions: "measured" = !warmup; "completed" = ok && measured; "failed" =
 * !ok && measured. Samples are gathered in seconds and scaled to ms at the end,
 * as vLLM does. Every statistic of an empty sample list is 0 (vLLM's
 * `np.mean(xs or 0)`).
 *
 * Where this differs from vLLM, on purpose:
 *   - duration is first measured send to last measured end (failures
 *     included), not the wall time of the benchmark coroutine, so that it
 *     depends only on the records and excludes client setup and teardown;
 *   - a completed request that never received a token chunk (t_first < 0) has
 *     no TTFT or TPOT sample instead of vLLM's TTFT = 0, and fails a TTFT SLO. */
#include "proteus/bench.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

void pt_bench_records_free(pt_bench_record *r, size_t n) {
    if (!r) return;
    for (size_t i = 0; i < n; i++) {
        free(r[i].token_times);
        free(r[i].error);
    }
    free(r);
}

static bool is_completed(const pt_bench_record *r) { return r->ok && !r->warmup; }

size_t pt_bench_samples(const pt_bench_record *r, size_t n, pt_bench_metric m, double *out) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const pt_bench_record *q = &r[i];
        if (!is_completed(q)) continue;
        double e2el = q->t_end - q->t_sent;
        double ttft = q->t_first - q->t_sent;
        switch (m) {
        case PT_BENCH_TTFT:
            if (q->t_first < 0) break;
            if (out) out[k] = ttft;
            k++;
            break;
        case PT_BENCH_TPOT:
            /* The first token is excluded: it carries the prefill. */
            if (q->t_first < 0 || q->output_tokens <= 1) break;
            if (out) out[k] = (e2el - ttft) / (double)(q->output_tokens - 1);
            k++;
            break;
        case PT_BENCH_ITL:
            /* Every gap between chunks, the first chunk to the second included;
             * a chunk carrying several tokens is one gap, as in vLLM. */
            for (size_t j = 1; j < q->n_token_times; j++) {
                if (out) out[k] = q->token_times[j] - q->token_times[j - 1];
                k++;
            }
            break;
        case PT_BENCH_E2EL:
            if (out) out[k] = e2el;
            k++;
            break;
        }
    }
    return k;
}

int pt_bench_output_per_second(const pt_bench_record *r, size_t n, double *origin, double **counts,
                               size_t *n_buckets, pt_err *err) {
    if (!origin || !counts || !n_buckets || (n && !r))
        return pt_err_set(err, PT_ERR_INVALID, "pt_bench_output_per_second: NULL argument");
    *origin = 0;
    *counts = NULL;
    *n_buckets = 0;
    double lo = INFINITY, hi = -INFINITY;
    for (size_t i = 0; i < n; i++) {
        if (!is_completed(&r[i])) continue;
        if (r[i].t_sent < lo) lo = r[i].t_sent;
        if (r[i].t_end > hi) hi = r[i].t_end;
    }
    if (!(lo <= hi)) return PT_OK; /* nothing completed */
    /* A span beyond ~3 years is a broken clock, not a run; refuse it rather
     * than allocate for it. */
    double span = ceil(hi - lo);
    if (!(span >= 0 && span < 1e8))
        return pt_err_set(err, PT_ERR_INVALID, "bench records span %g s: clock values out of range", hi - lo);
    size_t nb = (size_t)span + 1;
    double *c = calloc(nb, sizeof(double));
    if (!c) return pt_err_set(err, PT_ERR_NOMEM, "out of memory for %zu throughput buckets", nb);
    for (size_t i = 0; i < n; i++) {
        const pt_bench_record *q = &r[i];
        if (!is_completed(q)) continue;
        /* vLLM rebuilds chunk times from TTFT and the ITLs, which are exactly
         * the recorded chunk arrivals; a request with no chunk list but a
         * first token contributes that one chunk. */
        const double *t = q->token_times;
        size_t nt = q->n_token_times;
        if (nt == 0 && q->t_first >= 0) {
            t = &q->t_first;
            nt = 1;
        }
        for (size_t j = 0; j < nt; j++) {
            double d = t[j] - lo;
            /* Python's int() truncates toward zero; so does the cast. */
            if (!(d > -1.0 && d < (double)nb)) continue;
            c[(size_t)(long long)d] += 1;
        }
    }
    *origin = lo;
    *counts = c;
    *n_buckets = nb;
    return PT_OK;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* numpy.percentile's default ("linear"), including numpy's two-sided lerp
 * so that results agree to the last bit where possible. xs sorted, n > 0. */
static double percentile_sorted(const double *xs, size_t n, double p) {
    double pos = p / 100.0 * (double)(n - 1);
    size_t lo = (size_t)floor(pos);
    if (lo >= n - 1) return xs[n - 1];
    double t = pos - (double)lo;
    double a = xs[lo], b = xs[lo + 1], d = b - a;
    return t >= 0.5 ? b - d * (1.0 - t) : a + d * t;
}

/* Fills *out in ms from samples in seconds; sorts xs in place. */
static void dist_compute(pt_dist *out, double *xs, size_t n) {
    memset(out, 0, sizeof(*out));
    if (n == 0) return;
    double sum = 0;
    for (size_t i = 0; i < n; i++) sum += xs[i];
    double mean = sum / (double)n;
    double ss = 0;
    for (size_t i = 0; i < n; i++) ss += (xs[i] - mean) * (xs[i] - mean);
    qsort(xs, n, sizeof(double), cmp_double);
    /* numpy.median averages the two middle values of an even count. */
    double median = n % 2 ? xs[n / 2] : (xs[n / 2 - 1] + xs[n / 2]) / 2.0;
    out->mean = mean * 1000.0;
    out->std = sqrt(ss / (double)n) * 1000.0; /* population std, numpy's ddof=0 */
    out->median = median * 1000.0;
    out->p90 = percentile_sorted(xs, n, 90) * 1000.0;
    out->p99 = percentile_sorted(xs, n, 99) * 1000.0;
}

static void metric_dist(pt_dist *out, const pt_bench_record *r, size_t n, pt_bench_metric m) {
    size_t k = pt_bench_samples(r, n, m, NULL);
    double *xs = pt_xmalloc(k * sizeof(double));
    pt_bench_samples(r, n, m, xs);
    dist_compute(out, xs, k);
    free(xs);
}

static void count_failure(pt_bench_report *rep, int status) {
    size_t i = 0;
    while (i < rep->n_failed_statuses && rep->failed_status[i] < status) i++;
    if (i < rep->n_failed_statuses && rep->failed_status[i] == status) {
        rep->failed_by_status[i]++;
        return;
    }
    if (rep->n_failed_statuses == sizeof(rep->failed_status) / sizeof(rep->failed_status[0])) {
        rep->failed_other_status++;
        return;
    }
    /* Insert, keeping the slots in ascending status order. */
    memmove(&rep->failed_status[i + 1], &rep->failed_status[i],
            (rep->n_failed_statuses - i) * sizeof(rep->failed_status[0]));
    memmove(&rep->failed_by_status[i + 1], &rep->failed_by_status[i],
            (rep->n_failed_statuses - i) * sizeof(rep->failed_by_status[0]));
    rep->failed_status[i] = status;
    rep->failed_by_status[i] = 1;
    rep->n_failed_statuses++;
}

/* vLLM's goodput test: a completed request is good when every set SLO holds
 * (metric <= SLO, compared in seconds); TPOT of a 1-token output counts as 0. */
static bool meets_slo(const pt_bench_record *q, const pt_goodput_slo *slo) {
    double ttft = q->t_first - q->t_sent, e2el = q->t_end - q->t_sent;
    if (slo->ttft_ms > 0 && (q->t_first < 0 || ttft > slo->ttft_ms / 1000.0)) return false;
    if (slo->tpot_ms > 0) {
        double tpot = 0;
        if (q->output_tokens > 1) {
            if (q->t_first < 0) return false;
            tpot = (e2el - ttft) / (double)(q->output_tokens - 1);
        }
        if (tpot > slo->tpot_ms / 1000.0) return false;
    }
    if (slo->e2el_ms > 0 && e2el > slo->e2el_ms / 1000.0) return false;
    return true;
}

/* Most requests in flight at once over half-open [t_sent, t_end): at equal
 * times an end is taken before a start, as in vLLM's sweep. */
static size_t peak_concurrency(const pt_bench_record *r, size_t n) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) k += is_completed(&r[i]);
    if (k == 0) return 0;
    double *starts = pt_xmalloc(k * sizeof(double)), *ends = pt_xmalloc(k * sizeof(double));
    for (size_t i = 0, j = 0; i < n; i++) {
        if (!is_completed(&r[i])) continue;
        starts[j] = r[i].t_sent;
        ends[j++] = r[i].t_end;
    }
    qsort(starts, k, sizeof(double), cmp_double);
    qsort(ends, k, sizeof(double), cmp_double);
    size_t cur = 0, peak = 0, e = 0;
    for (size_t s = 0; s < k; s++) {
        while (e < k && ends[e] <= starts[s]) {
            cur--;
            e++;
        }
        if (++cur > peak) peak = cur;
    }
    free(starts);
    free(ends);
    return peak;
}

void pt_bench_report_compute(pt_bench_report *rep, const pt_bench_record *r, size_t n, const pt_goodput_slo *slo) {
    memset(rep, 0, sizeof(*rep));
    rep->goodput = -1;
    if (!r) n = 0;
    double first_sent = INFINITY, last_end = -INFINITY;
    size_t good = 0;
    bool slo_set = slo && (slo->ttft_ms > 0 || slo->tpot_ms > 0 || slo->e2el_ms > 0);
    for (size_t i = 0; i < n; i++) {
        const pt_bench_record *q = &r[i];
        if (q->warmup) continue;
        if (q->t_sent < first_sent) first_sent = q->t_sent;
        if (q->t_end > last_end) last_end = q->t_end;
        if (!q->ok) {
            rep->failed++;
            count_failure(rep, q->status);
            continue;
        }
        rep->completed++;
        rep->total_input += q->input_tokens;
        rep->total_output += q->output_tokens;
        if (q->output_tokens != q->expected_output) rep->output_mismatches++;
        if (slo_set && meets_slo(q, slo)) good++;
    }
    rep->duration_s = last_end > first_sent ? last_end - first_sent : 0;
    if (rep->duration_s > 0) {
        double d = rep->duration_s;
        rep->request_throughput = (double)rep->completed / d;
        rep->output_throughput = (double)rep->total_output / d;
        rep->total_token_throughput = (double)(rep->total_input + rep->total_output) / d;
        if (slo_set) rep->goodput = (double)good / d;
    } else if (slo_set) {
        rep->goodput = 0;
    }

    double origin, *counts;
    size_t nb;
    if (pt_bench_output_per_second(r, n, &origin, &counts, &nb, NULL) == PT_OK) {
        for (size_t k = 0; k < nb; k++)
            if (counts[k] > rep->peak_output_throughput) rep->peak_output_throughput = counts[k];
        free(counts);
    }
    rep->peak_concurrency = peak_concurrency(r, n);

    metric_dist(&rep->ttft_ms, r, n, PT_BENCH_TTFT);
    metric_dist(&rep->tpot_ms, r, n, PT_BENCH_TPOT);
    metric_dist(&rep->itl_ms, r, n, PT_BENCH_ITL);
    metric_dist(&rep->e2el_ms, r, n, PT_BENCH_E2EL);
}

/* ---- console ---- */

/* Python's "{s:{c}^{n}}": centred, the odd fill character on the right. */
static void print_banner(FILE *f, const char *text, char fill) {
    int width = 50, len = (int)strlen(text);
    int pad = width > len ? width - len : 0, left = pad / 2;
    for (int i = 0; i < left; i++) fputc(fill, f);
    fputs(text, f);
    for (int i = 0; i < pad - left; i++) fputc(fill, f);
    fputc('\n', f);
}

/* vLLM's rows: "{:<40} {:<10}" and "{:<40} {:<10.2f}". */
static void row_u(FILE *f, const char *label, unsigned long long v) {
    char buf[32];
    snprintf(buf, sizeof(buf), "%llu", v);
    fprintf(f, "%-40s %-10s\n", label, buf);
}
static void row_f(FILE *f, const char *label, double v) { fprintf(f, "%-40s %-10.2f\n", label, v); }

static void print_dist(FILE *f, const char *header, const char *name, const pt_dist *d) {
    char label[64];
    print_banner(f, header, '-');
    snprintf(label, sizeof(label), "Mean %s (ms):", name);
    row_f(f, label, d->mean);
    snprintf(label, sizeof(label), "Median %s (ms):", name);
    row_f(f, label, d->median);
    snprintf(label, sizeof(label), "P90 %s (ms):", name);
    row_f(f, label, d->p90);
    snprintf(label, sizeof(label), "P99 %s (ms):", name);
    row_f(f, label, d->p99);
}

void pt_bench_report_print(FILE *f, const pt_bench_report *rep, const char *title) {
    /* The title is the banner's text, vLLM's by default. */
    char banner[128];
    snprintf(banner, sizeof(banner), " %s ", title && *title ? title : "Serving Benchmark Result");
    print_banner(f, banner, '=');
    row_u(f, "Successful requests:", rep->completed);
    row_u(f, "Failed requests:", rep->failed);
    for (size_t i = 0; i < rep->n_failed_statuses; i++) {
        char label[48];
        if (rep->failed_status[i] == 0)
            snprintf(label, sizeof(label), "  connection errors:");
        else
            snprintf(label, sizeof(label), "  HTTP %d:", rep->failed_status[i]);
        row_u(f, label, rep->failed_by_status[i]);
    }
    if (rep->failed_other_status) row_u(f, "  other statuses:", rep->failed_other_status);
    row_f(f, "Benchmark duration (s):", rep->duration_s);
    row_u(f, "Total input tokens:", rep->total_input);
    row_u(f, "Total generated tokens:", rep->total_output);
    row_u(f, "Output length mismatches:", rep->output_mismatches);
    row_f(f, "Request throughput (req/s):", rep->request_throughput);
    if (rep->goodput >= 0) row_f(f, "Request goodput (req/s):", rep->goodput);
    row_f(f, "Output token throughput (tok/s):", rep->output_throughput);
    row_f(f, "Peak output token throughput (tok/s):", rep->peak_output_throughput);
    row_u(f, "Peak concurrent requests:", rep->peak_concurrency);
    row_f(f, "Total Token throughput (tok/s):", rep->total_token_throughput);
    print_dist(f, "Time to First Token", "TTFT", &rep->ttft_ms);
    print_dist(f, "Time per Output Token (excl. 1st token)", "TPOT", &rep->tpot_ms);
    print_dist(f, "Inter-token Latency", "ITL", &rep->itl_ms);
    print_dist(f, "End-to-end Latency", "E2EL", &rep->e2el_ms);
    print_banner(f, "", '=');
}

/* ---- JSON ---- */

static void add_dist(cJSON *o, const char *name, const pt_dist *d) {
    char key[48];
    snprintf(key, sizeof(key), "mean_%s_ms", name);
    cJSON_AddNumberToObject(o, key, d->mean);
    snprintf(key, sizeof(key), "median_%s_ms", name);
    cJSON_AddNumberToObject(o, key, d->median);
    snprintf(key, sizeof(key), "std_%s_ms", name);
    cJSON_AddNumberToObject(o, key, d->std);
    snprintf(key, sizeof(key), "p90_%s_ms", name);
    cJSON_AddNumberToObject(o, key, d->p90);
    snprintf(key, sizeof(key), "p99_%s_ms", name);
    cJSON_AddNumberToObject(o, key, d->p99);
}

char *pt_bench_report_json(const pt_bench_report *rep, const char *extra_json_fields) {
    cJSON *extra = NULL;
    if (extra_json_fields && *extra_json_fields) {
        extra = cJSON_Parse(extra_json_fields);
        if (!cJSON_IsObject(extra)) {
            cJSON_Delete(extra);
            return NULL;
        }
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "duration", rep->duration_s);
    cJSON_AddNumberToObject(o, "completed", (double)rep->completed);
    cJSON_AddNumberToObject(o, "failed", (double)rep->failed);
    cJSON_AddNumberToObject(o, "total_input_tokens", (double)rep->total_input);
    cJSON_AddNumberToObject(o, "total_output_tokens", (double)rep->total_output);
    cJSON_AddNumberToObject(o, "request_throughput", rep->request_throughput);
    /* vLLM writes null when no SLO was given; so do we. */
    if (rep->goodput >= 0)
        cJSON_AddNumberToObject(o, "request_goodput", rep->goodput);
    else
        cJSON_AddNullToObject(o, "request_goodput");
    cJSON_AddNumberToObject(o, "output_throughput", rep->output_throughput);
    cJSON_AddNumberToObject(o, "total_token_throughput", rep->total_token_throughput);
    cJSON_AddNumberToObject(o, "max_output_tokens_per_s", rep->peak_output_throughput);
    cJSON_AddNumberToObject(o, "max_concurrent_requests", (double)rep->peak_concurrency);
    add_dist(o, "ttft", &rep->ttft_ms);
    add_dist(o, "tpot", &rep->tpot_ms);
    add_dist(o, "itl", &rep->itl_ms);
    add_dist(o, "e2el", &rep->e2el_ms);
    /* Proteus additions: failures by HTTP status ("0" = no response) and the
     * honesty check on output lengths. */
    cJSON *fs = cJSON_AddObjectToObject(o, "failed_by_status");
    for (size_t i = 0; i < rep->n_failed_statuses; i++) {
        char key[16];
        snprintf(key, sizeof(key), "%d", rep->failed_status[i]);
        cJSON_AddNumberToObject(fs, key, (double)rep->failed_by_status[i]);
    }
    if (rep->failed_other_status) cJSON_AddNumberToObject(fs, "other", (double)rep->failed_other_status);
    cJSON_AddNumberToObject(o, "output_mismatches", (double)rep->output_mismatches);
    /* Extra members (trace name, settings) never replace a measured value. */
    if (extra) {
        for (cJSON *it = extra->child; it; it = it->next)
            if (it->string && !cJSON_HasObjectItem(o, it->string))
                cJSON_AddItemToObject(o, it->string, cJSON_Duplicate(it, 1));
        cJSON_Delete(extra);
    }
    /* One line, so that results can be appended to a JSONL file. */
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

/* ---- CSV ---- */

/* RFC 4180: quote a field holding a comma, quote or line break, doubling quotes. */
static void csv_text(FILE *f, const char *s) {
    if (!s) return;
    if (!strpbrk(s, ",\"\r\n")) {
        fputs(s, f);
        return;
    }
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"') fputc('"', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

int pt_bench_write_csv(const char *path, const pt_bench_record *r, size_t n, pt_err *err) {
    if (!path || (n && !r)) return pt_err_set(err, PT_ERR_INVALID, "pt_bench_write_csv: NULL argument");
    FILE *f = fopen(path, "w");
    if (!f) return pt_err_set(err, PT_ERR_IO, "%s: %s", path, strerror(errno));
    /* Times in seconds on the run's clock; latencies in ms; empty = not defined. */
    fputs("index,warmup,scheduled_s,sent_s,first_s,end_s,ttft_ms,tpot_ms,e2el_ms,"
          "input_tokens,output_tokens,expected_output,ok,status,error\n", f);
    for (size_t i = 0; i < n; i++) {
        const pt_bench_record *q = &r[i];
        bool has_first = q->t_first >= 0;
        double ttft = q->t_first - q->t_sent, e2el = q->t_end - q->t_sent;
        fprintf(f, "%u,%d,%.6f,%.6f,", q->index, q->warmup ? 1 : 0, q->t_scheduled, q->t_sent);
        if (has_first) fprintf(f, "%.6f", q->t_first);
        fprintf(f, ",%.6f,", q->t_end);
        if (has_first) fprintf(f, "%.3f", ttft * 1000.0);
        fputc(',', f);
        if (has_first && q->ok && q->output_tokens > 1)
            fprintf(f, "%.3f", (e2el - ttft) / (double)(q->output_tokens - 1) * 1000.0);
        fprintf(f, ",%.3f,%u,%u,%u,%d,%d,", e2el * 1000.0, q->input_tokens, q->output_tokens, q->expected_output,
                q->ok ? 1 : 0, q->status);
        csv_text(f, q->error);
        fputc('\n', f);
    }
    bool bad = ferror(f) != 0;
    if (fclose(f) != 0) bad = true;
    if (bad) return pt_err_set(err, PT_ERR_IO, "%s: write failed: %s", path, strerror(errno));
    return PT_OK;
}
