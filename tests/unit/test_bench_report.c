/* Bench report: every metric of a small hand-built run against values worked
 * out by hand (arithmetic in the comments) or by numpy (command quoted), plus
 * the JSON, CSV and SVG writers.
 *
 * The run (times in seconds; "chunks" = token_times):
 *   W1 warmup ok      sent -1.0, chunks -0.9 -0.8, end -0.5, 1000 in / 100 out
 *   W2 warmup failed  status 500
 *   A  ok  sent 0.0, chunks 0.10 0.11 0.12 0.13,      end 0.135, in 10, out 4, expected 4
 *   B  ok  sent 0.5, chunks 0.70 0.72 0.74 0.76 0.78, end 1.10,  in 20, out 5, expected 5
 *   C  ok  sent 1.0, chunks 1.30 1.31 1.32,           end 1.33,  in 30, out 6, expected 8 (mismatch)
 *   D  failed 429, sent 1.5, end 1.52, in 40, error: rate limited, "slow down"
 *   E  ok  sent 1.6, chunks 2.0,                      end 2.05,  in 5,  out 1, expected 1
 *   F  failed 0 (no response), sent 1.7, end 1.75, in 7 */
#include "test.h"

#include <cjson/cJSON.h>
#include <unistd.h>

#include "proteus/bench.h"

#define TOL 1e-9

static pt_bench_record rec(uint32_t index, bool warmup, bool ok, int status, double sent, double end,
                           const double *chunks, size_t n_chunks, uint32_t in, uint32_t out, uint32_t expected,
                           const char *error) {
    pt_bench_record r = {0};
    r.index = index;
    r.warmup = warmup;
    r.ok = ok;
    r.status = status;
    r.t_scheduled = sent;
    r.t_sent = sent;
    r.t_end = end;
    r.t_first = n_chunks ? chunks[0] : -1;
    if (n_chunks) {
        r.token_times = malloc(n_chunks * sizeof(double));
        memcpy(r.token_times, chunks, n_chunks * sizeof(double));
    }
    r.n_token_times = n_chunks;
    r.input_tokens = in;
    r.output_tokens = out;
    r.expected_output = expected;
    r.error = error ? strdup(error) : NULL;
    return r;
}

enum { N_RUN = 8 };

static pt_bench_record *make_run(void) {
    static const double w1[] = {-0.9, -0.8}, a[] = {0.10, 0.11, 0.12, 0.13}, b[] = {0.70, 0.72, 0.74, 0.76, 0.78},
                        c[] = {1.30, 1.31, 1.32}, e[] = {2.0};
    pt_bench_record *r = calloc(N_RUN, sizeof(*r));
    r[0] = rec(0, true, true, 200, -1.0, -0.5, w1, 2, 1000, 100, 100, NULL);
    r[1] = rec(1, true, false, 500, -1.0, -0.9, NULL, 0, 1000, 0, 100, "HTTP 500");
    r[2] = rec(2, false, true, 200, 0.0, 0.135, a, 4, 10, 4, 4, NULL);
    r[3] = rec(3, false, true, 200, 0.5, 1.1, b, 5, 20, 5, 5, NULL);
    r[4] = rec(4, false, true, 200, 1.0, 1.33, c, 3, 30, 6, 8, NULL);
    r[5] = rec(5, false, false, 429, 1.5, 1.52, NULL, 0, 40, 0, 7, "rate limited, \"slow down\"");
    r[6] = rec(6, false, true, 200, 1.6, 2.05, e, 1, 5, 1, 1, NULL);
    r[7] = rec(7, false, false, 0, 1.7, 1.75, NULL, 0, 7, 0, 3, "connection refused");
    return r;
}

static void test_counts_and_throughput(void) {
    pt_bench_record *r = make_run();
    pt_bench_report rep;
    pt_bench_report_compute(&rep, r, N_RUN, NULL);
    CHECK_EQ_INT(rep.completed, 4); /* A B C E; W1 is warmup */
    CHECK_EQ_INT(rep.failed, 2);    /* D F; W2 is warmup */
    CHECK_EQ_INT(rep.n_failed_statuses, 2);
    CHECK_EQ_INT(rep.failed_status[0], 0); /* ascending */
    CHECK_EQ_INT(rep.failed_by_status[0], 1);
    CHECK_EQ_INT(rep.failed_status[1], 429);
    CHECK_EQ_INT(rep.failed_by_status[1], 1);
    CHECK_EQ_INT(rep.failed_other_status, 0);
    CHECK_EQ_INT(rep.output_mismatches, 1); /* C: 6 != 8; D and F are failures, not mismatches */
    /* first measured send 0.0 (A), last measured end 2.05 (E) */
    CHECK_NEAR(rep.duration_s, 2.05, TOL);
    CHECK_EQ_INT(rep.total_input, 65);  /* 10 + 20 + 30 + 5 */
    CHECK_EQ_INT(rep.total_output, 16); /* 4 + 5 + 6 + 1 */
    CHECK_NEAR(rep.request_throughput, 4 / 2.05, TOL);
    CHECK_NEAR(rep.output_throughput, 16 / 2.05, TOL);
    CHECK_NEAR(rep.total_token_throughput, 81 / 2.05, TOL);
    /* Buckets from 0.0 (earliest completed send): [0,1) holds A's 4 chunks
     * and B's 5 = 9; [1,2) C's 3; [2,3) E's 1 (2.0 - 0.0 = 2 exactly). */
    CHECK_NEAR(rep.peak_output_throughput, 9, TOL);
    /* B [0.5, 1.1) overlaps C [1.0, 1.33); nothing else overlaps. */
    CHECK_EQ_INT(rep.peak_concurrency, 2);
    CHECK(rep.goodput < 0); /* no SLO */
    pt_bench_records_free(r, N_RUN);
}

static void test_output_per_second(void) {
    pt_bench_record *r = make_run();
    double origin = -1, *c = NULL;
    size_t nb = 0;
    pt_err err = {{0}};
    CHECK_EQ_INT(pt_bench_output_per_second(r, N_RUN, &origin, &c, &nb, &err), PT_OK);
    CHECK_NEAR(origin, 0.0, TOL);
    CHECK_EQ_INT(nb, 4); /* ceil(2.05 - 0.0) + 1, as vLLM sizes it */
    static const double want[4] = {9, 3, 1, 0};
    for (size_t k = 0; k < nb && k < 4; k++) CHECK_NEAR(c[k], want[k], 0);
    free(c);
    /* Nothing completed: no buckets, not an error. */
    CHECK_EQ_INT(pt_bench_output_per_second(r, 2, &origin, &c, &nb, &err), PT_OK);
    CHECK(c == NULL && nb == 0);
    pt_bench_records_free(r, N_RUN);
}

static void test_latency_distributions(void) {
    pt_bench_record *r = make_run();
    pt_bench_report rep;
    pt_bench_report_compute(&rep, r, N_RUN, NULL);
    /* TTFT ms: A 100, B 200, C 300, E 400. mean 250, median (200+300)/2 = 250,
     * std sqrt((150^2+50^2+50^2+150^2)/4) = sqrt(12500), p90 at rank 0.9*3 =
     * 2.7: 300 + 0.7*100 = 370, p99 at 2.97: 397. */
    CHECK_NEAR(rep.ttft_ms.mean, 250, TOL);
    CHECK_NEAR(rep.ttft_ms.median, 250, TOL);
    CHECK_NEAR(rep.ttft_ms.std, sqrt(12500.0), TOL);
    CHECK_NEAR(rep.ttft_ms.p90, 370, TOL);
    CHECK_NEAR(rep.ttft_ms.p99, 397, TOL);
    /* TPOT ms = (E2EL - TTFT) / (out - 1): A (135-100)/3 = 35/3, B (600-200)/4
     * = 100, C (330-300)/5 = 6; E has 1 token and no TPOT. Sorted 6, 35/3, 100:
     * mean (6 + 35/3 + 100)/3 = 353/9, median 35/3, p90 at rank 1.8:
     * 35/3 + 0.8*(100 - 35/3) = 247/3, p99 at 1.98: 35/3 + 0.98*(265/3). */
    CHECK_NEAR(rep.tpot_ms.mean, 353.0 / 9, TOL);
    CHECK_NEAR(rep.tpot_ms.median, 35.0 / 3, TOL);
    CHECK_NEAR(rep.tpot_ms.p90, 247.0 / 3, TOL);
    CHECK_NEAR(rep.tpot_ms.p99, 35.0 / 3 + 0.98 * 265.0 / 3, TOL);
    /* python3 -c "import numpy as np; print(np.std([35/3, 100, 6]))" */
    CHECK_NEAR(rep.tpot_ms.std, 43.038598811465988, TOL);
    /* ITL ms: A 10 10 10, B 20 20 20 20, C 10 10 (E has one chunk): five 10s
     * and four 20s. mean 130/9, median (5th of 9) 10, p90 at rank 7.2 and p99
     * at 7.92 both between two 20s = 20; std: deviations -40/9 (x5), 50/9 (x4),
     * variance (5*1600 + 4*2500)/81/9 = 18000/729. */
    CHECK_NEAR(rep.itl_ms.mean, 130.0 / 9, TOL);
    CHECK_NEAR(rep.itl_ms.median, 10, TOL);
    CHECK_NEAR(rep.itl_ms.p90, 20, TOL);
    CHECK_NEAR(rep.itl_ms.p99, 20, TOL);
    CHECK_NEAR(rep.itl_ms.std, sqrt(18000.0 / 729), TOL);
    /* E2EL ms: 135, 600, 330, 450; sorted 135 330 450 600. mean 1515/4 =
     * 378.75, median 390, p90 at 2.7: 450 + 0.7*150 = 555, p99 at 2.97: 595.5,
     * std: python3 -c "import numpy as np; print(np.std([135,600,330,450]))" */
    CHECK_NEAR(rep.e2el_ms.mean, 378.75, TOL);
    CHECK_NEAR(rep.e2el_ms.median, 390, TOL);
    CHECK_NEAR(rep.e2el_ms.p90, 555, TOL);
    CHECK_NEAR(rep.e2el_ms.p99, 595.5, TOL);
    CHECK_NEAR(rep.e2el_ms.std, 170.16076956807643, TOL);
    pt_bench_records_free(r, N_RUN);
}

/* Requests sent at 0 whose TTFT in ms is each value of xs, so that the TTFT
 * distribution is numpy's statistics of xs. */
static void check_ttft_stats(const double *xs, size_t n, double median, double p90, double p99, double mean,
                             double std) {
    pt_bench_record *r = calloc(n, sizeof(*r));
    for (size_t i = 0; i < n; i++) {
        double t = xs[i] / 1000.0;
        r[i] = rec((uint32_t)i, false, true, 200, 0.0, t + 1.0, &t, 1, 1, 1, 1, NULL);
    }
    pt_bench_report rep;
    pt_bench_report_compute(&rep, r, n, NULL);
    CHECK_NEAR(rep.ttft_ms.median, median, TOL);
    CHECK_NEAR(rep.ttft_ms.p90, p90, TOL);
    CHECK_NEAR(rep.ttft_ms.p99, p99, TOL);
    CHECK_NEAR(rep.ttft_ms.mean, mean, TOL);
    CHECK_NEAR(rep.ttft_ms.std, std, TOL);
    pt_bench_records_free(r, n);
}

static void test_percentiles_match_numpy(void) {
    /* Expected values from
     *   python3 -c "import numpy as np; a=np.array(XS); print(np.median(a),
     *     np.percentile(a,90), np.percentile(a,99), a.mean(), a.std())"
     * with numpy 2.4.6 (default method="linear"). */
    static const double a[] = {3, 1, 4, 1, 5, 9, 2};
    check_ttft_stats(a, 7, 3, 6.6000000000000014, 8.759999999999998, 3.5714285714285716, 2.6108095546424379);
    static const double b[] = {7.5};
    check_ttft_stats(b, 1, 7.5, 7.5, 7.5, 7.5, 0);
    static const double c[] = {2, 10};
    check_ttft_stats(c, 2, 6, 9.1999999999999993, 9.9199999999999999, 6, 4);
    static const double d[] = {0.25, 8, 1.5, 1.5, 3, 64, 0.5, 12, 6, 5, 100};
    check_ttft_stats(d, 11, 5, 64, 96.400000000000006, 18.34090909090909, 31.157275658283748);
}

static void test_goodput(void) {
    pt_bench_record *r = make_run();
    pt_bench_report rep;
    /* TTFT <= 250 ms: A (100) and B (200) -> 2 / 2.05 s. */
    pt_goodput_slo s1 = {.ttft_ms = 250};
    pt_bench_report_compute(&rep, r, N_RUN, &s1);
    CHECK_NEAR(rep.goodput, 2 / 2.05, TOL);
    /* TTFT <= 500 and TPOT <= 50: B fails TPOT (100); E's single token counts
     * as TPOT 0 (vLLM) and passes -> A C E = 3. */
    pt_goodput_slo s2 = {.ttft_ms = 500, .tpot_ms = 50};
    pt_bench_report_compute(&rep, r, N_RUN, &s2);
    CHECK_NEAR(rep.goodput, 3 / 2.05, TOL);
    /* E2EL <= 400: A (135) and C (330) -> 2. */
    pt_goodput_slo s3 = {.e2el_ms = 400};
    pt_bench_report_compute(&rep, r, N_RUN, &s3);
    CHECK_NEAR(rep.goodput, 2 / 2.05, TOL);
    /* The bound is inclusive: A's TTFT is exactly 100 ms. */
    pt_goodput_slo s4 = {.ttft_ms = 100};
    pt_bench_report_compute(&rep, r, N_RUN, &s4);
    CHECK_NEAR(rep.goodput, 1 / 2.05, TOL);
    /* All three at once: ttft 350 (A B C), tpot 20 (A C E), e2el 500 (A C E) -> A C. */
    pt_goodput_slo s5 = {.ttft_ms = 350, .tpot_ms = 20, .e2el_ms = 500};
    pt_bench_report_compute(&rep, r, N_RUN, &s5);
    CHECK_NEAR(rep.goodput, 2 / 2.05, TOL);
    /* An SLO struct with nothing set is no SLO. */
    pt_goodput_slo s6 = {0};
    pt_bench_report_compute(&rep, r, N_RUN, &s6);
    CHECK(rep.goodput < 0);
    pt_bench_records_free(r, N_RUN);
}

static void test_empty_run_is_all_zero(void) {
    pt_bench_report rep;
    pt_goodput_slo s = {.ttft_ms = 1};
    pt_bench_report_compute(&rep, NULL, 0, &s);
    CHECK_EQ_INT(rep.completed, 0);
    CHECK_NEAR(rep.duration_s, 0, 0);
    CHECK_NEAR(rep.request_throughput, 0, 0);
    CHECK_NEAR(rep.goodput, 0, 0);
    CHECK_NEAR(rep.ttft_ms.mean, 0, 0);
    CHECK_NEAR(rep.e2el_ms.p99, 0, 0);
    CHECK_NEAR(rep.peak_output_throughput, 0, 0);
}

static void test_many_statuses_overflow(void) {
    /* Ten distinct failure statuses: eight slots, two counted as other. */
    pt_bench_record r[10];
    for (int i = 0; i < 10; i++) r[i] = (pt_bench_record){.index = i, .status = 500 + 9 - i, .t_sent = i, .t_end = i};
    pt_bench_report rep;
    pt_bench_report_compute(&rep, r, 10, NULL);
    CHECK_EQ_INT(rep.failed, 10);
    CHECK_EQ_INT(rep.n_failed_statuses, 8);
    CHECK_EQ_INT(rep.failed_other_status, 2);
    for (size_t i = 1; i < rep.n_failed_statuses; i++) CHECK(rep.failed_status[i - 1] < rep.failed_status[i]);
}

static double num(const cJSON *o, const char *key) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, key);
    CHECK_MSG(cJSON_IsNumber(it), "key %s", key);
    return cJSON_IsNumber(it) ? it->valuedouble : NAN;
}

static void test_json(void) {
    pt_bench_record *r = make_run();
    pt_bench_report rep;
    pt_goodput_slo s = {.ttft_ms = 250};
    pt_bench_report_compute(&rep, r, N_RUN, &s);
    char *js = pt_bench_report_json(&rep, "{\"trace\": \"azure_code\", \"rate\": 2.5, \"completed\": 999}");
    CHECK(js != NULL);
    cJSON *o = cJSON_Parse(js);
    CHECK(cJSON_IsObject(o));
    CHECK_NEAR(num(o, "completed"), 4, 0); /* the extra "completed" does not replace it */
    CHECK_NEAR(num(o, "failed"), 2, 0);
    CHECK_NEAR(num(o, "duration"), 2.05, TOL);
    CHECK_NEAR(num(o, "total_input_tokens"), 65, 0);
    CHECK_NEAR(num(o, "total_output_tokens"), 16, 0);
    CHECK_NEAR(num(o, "request_throughput"), 4 / 2.05, TOL);
    CHECK_NEAR(num(o, "request_goodput"), 2 / 2.05, TOL);
    CHECK_NEAR(num(o, "output_throughput"), 16 / 2.05, TOL);
    CHECK_NEAR(num(o, "total_token_throughput"), 81 / 2.05, TOL);
    CHECK_NEAR(num(o, "max_output_tokens_per_s"), 9, TOL);
    CHECK_NEAR(num(o, "max_concurrent_requests"), 2, 0);
    CHECK_NEAR(num(o, "mean_ttft_ms"), 250, TOL);
    CHECK_NEAR(num(o, "median_ttft_ms"), 250, TOL);
    CHECK_NEAR(num(o, "std_ttft_ms"), sqrt(12500.0), TOL);
    CHECK_NEAR(num(o, "p90_ttft_ms"), 370, TOL);
    CHECK_NEAR(num(o, "p99_ttft_ms"), 397, TOL);
    CHECK_NEAR(num(o, "mean_tpot_ms"), 353.0 / 9, TOL);
    CHECK_NEAR(num(o, "median_tpot_ms"), 35.0 / 3, TOL);
    CHECK_NEAR(num(o, "std_tpot_ms"), 43.038598811465988, TOL);
    CHECK_NEAR(num(o, "p90_tpot_ms"), 247.0 / 3, TOL);
    CHECK_NEAR(num(o, "p99_tpot_ms"), 35.0 / 3 + 0.98 * 265.0 / 3, TOL);
    CHECK_NEAR(num(o, "mean_itl_ms"), 130.0 / 9, TOL);
    CHECK_NEAR(num(o, "median_itl_ms"), 10, TOL);
    CHECK_NEAR(num(o, "std_itl_ms"), sqrt(18000.0 / 729), TOL);
    CHECK_NEAR(num(o, "p90_itl_ms"), 20, TOL);
    CHECK_NEAR(num(o, "p99_itl_ms"), 20, TOL);
    CHECK_NEAR(num(o, "mean_e2el_ms"), 378.75, TOL);
    CHECK_NEAR(num(o, "median_e2el_ms"), 390, TOL);
    CHECK_NEAR(num(o, "std_e2el_ms"), 170.16076956807643, TOL);
    CHECK_NEAR(num(o, "p90_e2el_ms"), 555, TOL);
    CHECK_NEAR(num(o, "p99_e2el_ms"), 595.5, TOL);
    CHECK_NEAR(num(o, "output_mismatches"), 1, 0);
    const cJSON *fs = cJSON_GetObjectItemCaseSensitive(o, "failed_by_status");
    CHECK(cJSON_IsObject(fs));
    CHECK_NEAR(num(fs, "429"), 1, 0);
    CHECK_NEAR(num(fs, "0"), 1, 0);
    const cJSON *trace = cJSON_GetObjectItemCaseSensitive(o, "trace");
    CHECK(cJSON_IsString(trace) && strcmp(trace->valuestring, "azure_code") == 0);
    CHECK_NEAR(num(o, "rate"), 2.5, 0);
    cJSON_Delete(o);
    free(js);

    /* Without an SLO request_goodput is null, as vLLM writes it. */
    pt_bench_report_compute(&rep, r, N_RUN, NULL);
    js = pt_bench_report_json(&rep, NULL);
    o = cJSON_Parse(js);
    CHECK(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(o, "request_goodput")));
    cJSON_Delete(o);
    free(js);
    /* Extra fields that are not a JSON object are refused. */
    CHECK(pt_bench_report_json(&rep, "[1, 2]") == NULL);
    CHECK(pt_bench_report_json(&rep, "{\"trace\": ") == NULL);
    pt_bench_records_free(r, N_RUN);
}

static void test_print_layout(void) {
    pt_bench_record *r = make_run();
    pt_bench_report rep;
    pt_bench_report_compute(&rep, r, N_RUN, NULL);
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    pt_bench_report_print(f, &rep, NULL);
    fclose(f);
    CHECK(strncmp(buf, "============ Serving Benchmark Result ============\n", 51) == 0);
    /* vLLM's "{:<40} {:<10}": label padded to 40, a space, the value padded to 10. */
    CHECK(strstr(buf, "\nSuccessful requests:                     4         \n") != NULL);
    CHECK(strstr(buf, "\nBenchmark duration (s):                  2.05      \n") != NULL);
    CHECK(strstr(buf, "\n  HTTP 429:                              1         \n") != NULL);
    CHECK(strstr(buf, "\nPeak output token throughput (tok/s):    9.00      \n") != NULL);
    CHECK(strstr(buf, "\n---------------Time to First Token----------------\n") != NULL);
    CHECK(strstr(buf, "\nP90 TTFT (ms):                           370.00    \n") != NULL);
    CHECK(strstr(buf, "\n-----Time per Output Token (excl. 1st token)------\n") != NULL);
    CHECK(strstr(buf, "\nOutput length mismatches:                1         \n") != NULL);
    CHECK(strstr(buf, "Request goodput") == NULL); /* no SLO, no row */
    size_t n_eq = 0;
    while (n_eq < len && buf[len - 2 - n_eq] == '=') n_eq++;
    CHECK_EQ_INT(n_eq, 50);
    free(buf);
    /* A title replaces the banner's text, centred the same way. */
    f = open_memstream(&buf, &len);
    pt_bench_report_print(f, &rep, "Serving Benchmark Result (interrupted)");
    fclose(f);
    CHECK(strncmp(buf, "===== Serving Benchmark Result (interrupted) =====\n", 51) == 0);
    free(buf);
    pt_bench_records_free(r, N_RUN);
}

static void test_csv(void) {
    pt_bench_record *r = make_run();
    char path[64];
    snprintf(path, sizeof(path), "/tmp/test_bench_report_%d.csv", (int)getpid());
    pt_err err = {{0}};
    CHECK_EQ_INT(pt_bench_write_csv(path, r, N_RUN, &err), PT_OK);
    size_t len = 0;
    char *s = pt_read_file(path, &len);
    CHECK(s != NULL);
    if (s) {
        size_t lines = 0;
        for (size_t i = 0; i < len; i++) lines += s[i] == '\n';
        CHECK_EQ_INT(lines, 1 + N_RUN); /* header + one row per record, warmups included */
        static const char header[] = "index,warmup,scheduled_s,sent_s,first_s,end_s,ttft_ms,tpot_ms,e2el_ms,"
                                     "input_tokens,output_tokens,expected_output,ok,status,error\n";
        CHECK(strncmp(s, header, strlen(header)) == 0);
        /* The comma and the quotes of D's error survive RFC 4180 quoting. */
        CHECK(strstr(s, ",0,429,\"rate limited, \"\"slow down\"\"\"\n") != NULL);
        /* A: ttft 100 ms, tpot 35/3 ms, e2el 135 ms. */
        CHECK(strstr(s, "\n2,0,0.000000,0.000000,0.100000,0.135000,100.000,11.667,135.000,10,4,4,1,200,\n") != NULL);
        /* D never saw a token: first, ttft and tpot are empty. */
        CHECK(strstr(s, "\n5,0,1.500000,1.500000,,1.520000,,,20.000,40,0,7,0,429,") != NULL);
        free(s);
    }
    unlink(path);
    CHECK(pt_bench_write_csv("/nonexistent-dir/x.csv", r, N_RUN, &err) == PT_ERR_IO);
    CHECK(strstr(err.msg, "/nonexistent-dir/x.csv") != NULL);
    pt_bench_records_free(r, N_RUN);
}

static void test_svg(void) {
    pt_bench_record *r = make_run();
    pt_bench_report rep;
    pt_bench_report_compute(&rep, r, N_RUN, NULL);
    char path[64];
    snprintf(path, sizeof(path), "/tmp/test_bench_report_%d.svg", (int)getpid());
    pt_err err = {{0}};
    CHECK_EQ_INT(pt_bench_write_svg(path, r, N_RUN, &rep, &err), PT_OK);
    size_t len = 0;
    char *s = pt_read_file(path, &len);
    CHECK(s != NULL);
    if (s) {
        CHECK(strncmp(s, "<svg", 4) == 0);
        CHECK(strstr(s, "TTFT") && strstr(s, "TPOT") && strstr(s, "E2EL"));
        CHECK(strstr(s, "<polyline") != NULL); /* the CDFs */
        CHECK(len > 7 && strcmp(s + len - 7, "</svg>\n") == 0);
        free(s);
    }
    if (getenv("PROTEUS_KEEP_SVG")) {
        /* For looking at it: PROTEUS_KEEP_SVG=1 keeps the file and names it. */
        printf("svg: %s\n", path);
    } else {
        unlink(path);
    }
    pt_bench_records_free(r, N_RUN);
}

TEST_MAIN(TEST(test_counts_and_throughput), TEST(test_output_per_second), TEST(test_latency_distributions),
          TEST(test_percentiles_match_numpy), TEST(test_goodput), TEST(test_empty_run_is_all_zero),
          TEST(test_many_statuses_overflow), TEST(test_json), TEST(test_print_layout), TEST(test_csv),
          TEST(test_svg))
