/* Trace readers (src/bench/trace.c): the real traces in ../shared/traces/
 * (exact first rows, counts, and the sums and maxima from their README, checks
 * skipped when the folder is absent), and the small fixtures in
 * tests/data/traces/: malformed rows with exact line numbers, strict mode,
 * 2024-style mixed timestamps, calendar arithmetic against timegm, BurstGPT
 * filters, Proteus and Mooncake JSONL, AUTO detection, and files the test
 * writes itself (CRLF, empty, header only, warning cap, max_rows, 20k rows). */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "proteus/bench.h"
#include "test.h"

static char src_dir[1024];
static char tmpdir[64];

static const char *fixture(const char *name) {
    static char path[2][1200];
    static int k;
    k ^= 1;
    snprintf(path[k], sizeof(path[k]), "%s/tests/data/traces/%s", src_dir, name);
    return path[k];
}

static const char *shared_trace(const char *name) {
    static char path[1200];
    snprintf(path, sizeof(path), "%s/../shared/traces/%s", src_dir, name);
    return access(path, R_OK) == 0 ? path : NULL;
}

/* Writes text to tmpdir/name; returns the path (static storage, reused). */
static const char *write_tmp(const char *name, const char *text) {
    static char path[128];
    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "wb");
    if (!f) {
        perror(path);
        exit(1);
    }
    fputs(text, f);
    fclose(f);
    return path;
}

static bool contains(const char *s, const char *sub) { return s && strstr(s, sub) != NULL; }

/* Loads path with the given format (and no other option); fails the test on error. */
static int load(pt_trace *t, const char *path, pt_trace_format format, pt_err *err) {
    pt_trace_opts o = {.format = format};
    int rc = pt_trace_load(t, path, &o, err);
    CHECK_MSG(rc == PT_OK, "%s: %s", path, err->msg);
    return rc;
}

/* Seconds between two UTC times, by the C library (an independent reference). */
static double utc_seconds(int y, int mo, int d, int h, int mi, int s) {
    struct tm tm = {.tm_year = y - 1900, .tm_mon = mo - 1, .tm_mday = d, .tm_hour = h, .tm_min = mi, .tm_sec = s};
    return (double)timegm(&tm);
}

/* ---- real traces ---- */

static void test_azure2023_code(void) {
    const char *p = shared_trace("azure2023_code.csv");
    if (!p) {
        fprintf(stderr, "  (../shared/traces/azure2023_code.csv absent: skipped)\n");
        return;
    }
    pt_trace t;
    pt_err err = {{0}};
    if (load(&t, p, PT_TRACE_AUTO, &err) != PT_OK) return;
    CHECK_EQ_INT(t.format, PT_TRACE_AZURE);
    /* 8,820 lines: the header and 8,819 rows (the last line has no newline, so
     * `wc -l` says 8819); the trace's README counts 8,819 rows too. */
    CHECK_EQ_INT(t.n, 8819);
    CHECK_EQ_INT(t.n_skipped, 0);
    CHECK_EQ_INT(t.n_filtered, 0);
    /* 2023-11-16 18:17:03.9799600,4808,10 / 04.0319600,3180,8 / 04.0781490,110,27 */
    CHECK_EQ_INT(t.reqs[0].input_len, 4808);
    CHECK_EQ_INT(t.reqs[0].output_len, 10);
    CHECK_EQ_INT(t.reqs[1].input_len, 3180);
    CHECK_EQ_INT(t.reqs[1].output_len, 8);
    CHECK_EQ_INT(t.reqs[2].input_len, 110);
    CHECK_EQ_INT(t.reqs[2].output_len, 27);
    CHECK_NEAR(t.reqs[0].t, 0.0, 1e-9);
    CHECK_NEAR(t.reqs[1].t, 4.0319600 - 3.9799600, 1e-6);
    CHECK_NEAR(t.reqs[2].t, 4.0781490 - 3.9799600, 1e-6);
    CHECK_EQ_INT(t.reqs[0].line, 2);
    CHECK_EQ_INT(t.reqs[2].line, 4);
    CHECK(t.reqs[0].hash_ids == NULL && t.reqs[0].n_hash == 0);
    /* Last row 2023-11-16 19:14:19.9280160,549,173: 57 min 15.948056 s later. */
    CHECK_EQ_INT(t.reqs[t.n - 1].input_len, 549);
    CHECK_EQ_INT(t.reqs[t.n - 1].output_len, 173);
    CHECK_NEAR(t.reqs[t.n - 1].t, 57 * 60 + 19.9280160 - 3.9799600, 1e-6);
    /* Sums and maxima measured with Python's csv module. */
    uint64_t sum_in = 0, sum_out = 0;
    uint32_t max_in = 0, max_out = 0;
    bool sorted = true;
    for (size_t i = 0; i < t.n; i++) {
        sum_in += t.reqs[i].input_len;
        sum_out += t.reqs[i].output_len;
        if (t.reqs[i].input_len > max_in) max_in = t.reqs[i].input_len;
        if (t.reqs[i].output_len > max_out) max_out = t.reqs[i].output_len;
        if (i && t.reqs[i].t < t.reqs[i - 1].t) sorted = false;
    }
    CHECK_EQ_INT(sum_in, 18059974);
    CHECK_EQ_INT(sum_out, 245896);
    CHECK_EQ_INT(max_in, 7437);
    CHECK_EQ_INT(max_out, 1899);
    CHECK(sorted);
    pt_trace_free(&t);
    CHECK(t.reqs == NULL && t.n == 0);
}

static void test_azure2023_conv(void) {
    const char *p = shared_trace("azure2023_conv.csv");
    if (!p) return;
    pt_trace t;
    pt_err err = {{0}};
    double t0 = pt_now();
    if (load(&t, p, PT_TRACE_AZURE, &err) != PT_OK) return;
    fprintf(stderr, "  azure2023_conv.csv: %zu rows in %.1f ms (not asserted)\n", t.n, (pt_now() - t0) * 1e3);
    CHECK_EQ_INT(t.n, 19366);
    CHECK_EQ_INT(t.n_skipped, 0);
    uint64_t sum_in = 0, sum_out = 0;
    for (size_t i = 0; i < t.n; i++) sum_in += t.reqs[i].input_len, sum_out += t.reqs[i].output_len;
    CHECK_EQ_INT(sum_in, 22361870);
    CHECK_EQ_INT(sum_out, 4088665);
    /* 18:15:46.6805900 to 19:14:08.4025270 */
    CHECK_NEAR(t.reqs[t.n - 1].t, (19 * 3600 + 14 * 60 + 8.4025270) - (18 * 3600 + 15 * 60 + 46.6805900), 1e-6);
    pt_trace_free(&t);
}

static void test_mooncake_real(void) {
    const char *p = shared_trace("mooncake_conversation.jsonl");
    if (!p) return;
    pt_trace t;
    pt_err err = {{0}};
    if (load(&t, p, PT_TRACE_AUTO, &err) != PT_OK) return;
    CHECK_EQ_INT(t.format, PT_TRACE_MOONCAKE);
    CHECK_EQ_INT(t.n, 12031);
    CHECK_EQ_INT(t.n_skipped, 0);
    /* {"timestamp": 0, "input_length": 6758, "output_length": 500, "hash_ids": [0, ..., 13]} */
    CHECK_EQ_INT(t.reqs[0].input_len, 6758);
    CHECK_EQ_INT(t.reqs[0].output_len, 500);
    CHECK_EQ_INT(t.reqs[0].n_hash, 14);
    bool ids = t.reqs[0].hash_ids != NULL;
    for (uint32_t i = 0; ids && i < t.reqs[0].n_hash; i++) ids = t.reqs[0].hash_ids[i] == i;
    CHECK(ids);
    /* Row 2 shares block 0 with row 1 and then continues at 14. */
    CHECK(t.reqs[1].n_hash == 15 && t.reqs[1].hash_ids[0] == 0 && t.reqs[1].hash_ids[1] == 14);
    uint64_t sum_in = 0, n_ids = 0;
    for (size_t i = 0; i < t.n; i++) sum_in += t.reqs[i].input_len, n_ids += t.reqs[i].n_hash;
    CHECK_NEAR((double)sum_in / (double)t.n, 12035.06, 0.01); /* README: average input 12,035 */
    CHECK_EQ_INT(n_ids, 288500);
    CHECK_NEAR(t.reqs[t.n - 1].t, 3536.999, 1e-9);            /* last timestamp 3536999 ms */
    pt_trace_free(&t);

    if ((p = shared_trace("mooncake_synthetic.jsonl")) && load(&t, p, PT_TRACE_MOONCAKE, &err) == PT_OK) {
        CHECK_EQ_INT(t.n, 3993);
        CHECK_EQ_INT(t.n_skipped, 0);
        pt_trace_free(&t);
    }
}

/* ---- fixtures ---- */

static void test_malformed_rows(void) {
    const char *p = fixture("azure_malformed.csv");
    pt_trace t;
    pt_err err = {{0}};
    if (load(&t, p, PT_TRACE_AUTO, &err) != PT_OK) return;
    CHECK_EQ_INT(t.format, PT_TRACE_AZURE);
    CHECK_EQ_INT(t.n, 2);
    CHECK_EQ_INT(t.n_skipped, 10);
    CHECK_EQ_INT(t.n_warnings, 10);
    static const struct {
        int line;
        const char *reason;
    } want[] = {
        {3, "expected 3 columns, got 2"},
        {4, "ContextTokens: not a number: \"abc\""},
        {5, "ContextTokens: negative (-5)"},
        {7, "ContextTokens: 20000000 tokens is more than 10^7"},
        {8, "TIMESTAMP: bad timestamp \"2023-11-16 25:17:06\""},
        {9, "ContextTokens: 0 tokens"},
        {10, "GeneratedTokens: 0 tokens"},
        {12, "expected 3 columns, got 4"},
        {13, "TIMESTAMP: bad timestamp \"2023-02-29 00:00:00\""}, /* 2023 is no leap year */
        {14, "ContextTokens: not an integer (12.5)"},
    };
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]) && i < t.n_warnings; i++) {
        char expect[1400];
        snprintf(expect, sizeof(expect), "%s:%d: %s", p, want[i].line, want[i].reason);
        CHECK_MSG(!strcmp(t.warnings[i], expect), "warning %zu: \"%s\", want \"%s\"", i, t.warnings[i], expect);
    }
    CHECK(t.reqs[0].input_len == 4808 && t.reqs[0].output_len == 10 && t.reqs[0].line == 2);
    /* Line 11 has blanks and a tab around its fields. */
    CHECK(t.reqs[1].input_len == 200 && t.reqs[1].output_len == 3 && t.reqs[1].line == 11);
    CHECK_NEAR(t.reqs[1].t, 9.5 - 3.97996, 1e-9);
    pt_trace_free(&t);

    /* Strict: the first malformed row fails the load, naming its line. */
    pt_trace_opts o = {.strict = true};
    int rc = pt_trace_load(&t, p, &o, &err);
    CHECK_EQ_INT(rc, PT_ERR_FORMAT);
    char expect[1400];
    snprintf(expect, sizeof(expect), "%s:3: expected 3 columns, got 2", p);
    CHECK_MSG(!strcmp(err.msg, expect), "\"%s\"", err.msg);
    CHECK(t.reqs == NULL && t.n == 0 && t.warnings == NULL);
    pt_trace_free(&t); /* a failed load leaves nothing to free; freeing again is harmless */
}

static void test_azure2024_mixed_timestamps(void) {
    pt_trace t;
    pt_err err = {{0}};
    if (load(&t, fixture("azure2024_mixed.csv"), PT_TRACE_AZURE, &err) != PT_OK) return;
    CHECK_EQ_INT(t.n, 10);
    CHECK_EQ_INT(t.n_skipped, 0);
    /* Sorted by time; the two rows at 00:00:01 (300 on line 4, 900 on line 10)
     * keep file order. */
    static const struct {
        double t;
        uint32_t input;
    } want[] = {{0, 100}, {0.123456789, 1000}, {0.5, 200}, {0.75, 700}, {1, 300},
                {1, 900}, {1.25, 400},         {2.125, 500}, {3, 600},  {4.000001, 800}};
    for (size_t i = 0; i < 10 && i < t.n; i++) {
        CHECK_MSG(t.reqs[i].input_len == want[i].input, "row %zu: input %u, want %u", i, t.reqs[i].input_len,
                  want[i].input);
        CHECK_NEAR(t.reqs[i].t, want[i].t, 1e-9);
        CHECK_EQ_INT(t.reqs[i].output_len, want[i].input / 10);
    }
    CHECK_EQ_INT(t.reqs[4].line, 4);
    CHECK_EQ_INT(t.reqs[5].line, 10);
    pt_trace_free(&t);
}

static void test_calendar_against_timegm(void) {
    pt_trace t;
    pt_err err = {{0}};
    if (load(&t, fixture("azure_calendar.csv"), PT_TRACE_AUTO, &err) != PT_OK) return;
    static const int when[8][6] = {
        {2023, 12, 31, 23, 59, 59}, {2024, 1, 1, 0, 0, 0}, {2024, 2, 28, 23, 59, 59}, {2024, 2, 29, 12, 0, 0},
        {2024, 3, 1, 0, 0, 0},      {2100, 2, 28, 0, 0, 0}, {2100, 3, 1, 0, 0, 0},     {2000, 2, 29, 0, 0, 0},
    };
    CHECK_EQ_INT(t.n, 8);
    /* The 2000 row is the earliest; input_len is the row's index + 1. */
    double t0 = utc_seconds(2000, 2, 29, 0, 0, 0);
    for (size_t i = 0; i < t.n; i++) {
        uint32_t k = t.reqs[i].input_len - 1;
        if (k >= 8) {
            CHECK(k < 8);
            continue;
        }
        const int *w = when[k];
        CHECK_NEAR(t.reqs[i].t, utc_seconds(w[0], w[1], w[2], w[3], w[4], w[5]) - t0, 1e-6);
    }
    CHECK_EQ_INT(t.reqs[0].input_len, 8);
    pt_trace_free(&t);
}

static void test_burstgpt(void) {
    const char *p = fixture("burstgpt.csv");
    pt_trace t;
    pt_err err = {{0}};
    if (load(&t, p, PT_TRACE_AUTO, &err) != PT_OK) return;
    CHECK_EQ_INT(t.format, PT_TRACE_BURSTGPT);
    CHECK_EQ_INT(t.n, 3);          /* lines 2, 4, 8 */
    CHECK_EQ_INT(t.n_filtered, 2); /* lines 3 and 5: Response tokens 0 = failed */
    CHECK_EQ_INT(t.n_skipped, 2);  /* lines 6 and 7 */
    CHECK(t.n_warnings == 2 && contains(t.warnings[0], ":6: Request tokens: not a number") &&
          contains(t.warnings[1], ":7: Response tokens: negative"));
    CHECK(t.n == 3 && t.reqs[0].input_len == 472 && t.reqs[1].input_len == 417 && t.reqs[2].input_len == 20);
    CHECK(t.n == 3 && t.reqs[0].line == 2 && t.reqs[1].line == 4 && t.reqs[2].line == 8);
    CHECK_NEAR(t.reqs[1].t, 113.0, 1e-9);
    CHECK_NEAR(t.reqs[2].t, 195.25, 1e-9);
    pt_trace_free(&t);

    pt_trace_opts o = {.burstgpt_model = "GPT-4"};
    CHECK_EQ_INT(pt_trace_load(&t, p, &o, &err), PT_OK);
    CHECK_EQ_INT(t.n, 1);
    CHECK_EQ_INT(t.n_filtered, 4); /* two failed, two ChatGPT */
    CHECK(t.n == 1 && t.reqs[0].input_len == 417 && t.reqs[0].output_len == 217 && t.reqs[0].t == 0.0);
    pt_trace_free(&t);

    o.burstgpt_model = "Claude";
    CHECK_EQ_INT(pt_trace_load(&t, p, &o, &err), PT_ERR_FORMAT);
    CHECK_MSG(contains(err.msg, "no requests") && contains(err.msg, "Claude"), "%s", err.msg);

    /* Naming the wrong CSV format: the header says why. */
    o = (pt_trace_opts){.format = PT_TRACE_AZURE};
    CHECK_EQ_INT(pt_trace_load(&t, p, &o, &err), PT_ERR_FORMAT);
    CHECK_MSG(contains(err.msg, ":1: expected a header line TIMESTAMP,ContextTokens,GeneratedTokens"), "%s", err.msg);
}

static void test_proteus_jsonl(void) {
    const char *p = fixture("proteus.jsonl");
    pt_trace t;
    pt_err err = {{0}};
    if (load(&t, p, PT_TRACE_AUTO, &err) != PT_OK) return;
    CHECK_EQ_INT(t.format, PT_TRACE_PROTEUS);
    CHECK_EQ_INT(t.n, 4); /* lines 1, 2, 4, 11 */
    CHECK_EQ_INT(t.n_skipped, 7);
    static const char *want[] = {
        ":5: input: 0 tokens",
        ":6: missing \"output\"",
        ":7: t: negative (-1)",
        ":8: \"prefix\"[1]: not a block id",
        ":9: input: not an integer (10.5)",
        ":10: invalid JSON",
        ":12: invalid JSON",
    };
    for (size_t i = 0; i < 7 && i < t.n_warnings; i++)
        CHECK_MSG(contains(t.warnings[i], want[i]), "warning %zu: \"%s\", want \"%s\"", i, t.warnings[i], want[i]);
    if (t.n == 4) {
        CHECK(t.reqs[0].line == 2 && t.reqs[0].input_len == 1024 && t.reqs[0].output_len == 32);
        CHECK(t.reqs[0].n_hash == 2 && t.reqs[0].hash_ids[0] == 7 && t.reqs[0].hash_ids[1] == 8);
        CHECK(t.reqs[1].line == 1 && t.reqs[1].hash_ids == NULL && t.reqs[1].n_hash == 0);
        CHECK_NEAR(t.reqs[1].t, 0.5, 1e-9);
        CHECK(t.reqs[2].line == 4 && t.reqs[2].hash_ids == NULL); /* "prefix": [] */
        CHECK_NEAR(t.reqs[2].t, 1.25, 1e-9);
        CHECK(t.reqs[3].line == 11 && t.reqs[3].input_len == 3 && t.reqs[3].output_len == 4);
        CHECK_NEAR(t.reqs[3].t, 6.0, 1e-9);
    }
    pt_trace_free(&t);
}

static void test_mooncake_fixture(void) {
    pt_trace t;
    pt_err err = {{0}};
    if (load(&t, fixture("mooncake_small.jsonl"), PT_TRACE_AUTO, &err) != PT_OK) return;
    CHECK_EQ_INT(t.format, PT_TRACE_MOONCAKE);
    CHECK_EQ_INT(t.n, 3);
    CHECK(t.n_warnings == 1 && contains(t.warnings[0], ":4: \"hash_ids\": not an array"));
    /* Times relative to the earliest (1000 ms), rows sorted: lines 1, 3, 2. */
    CHECK(t.n == 3 && t.reqs[0].line == 1 && t.reqs[1].line == 3 && t.reqs[2].line == 2);
    CHECK_NEAR(t.reqs[1].t, 0.25, 1e-12);
    CHECK_NEAR(t.reqs[2].t, 0.5, 1e-12);
    CHECK(t.reqs[2].n_hash == 2 && t.reqs[2].hash_ids[0] == 0 && t.reqs[2].hash_ids[1] == 2);
    CHECK(t.reqs[1].hash_ids == NULL);
    pt_trace_free(&t);
}

static void test_auto_detection(void) {
    pt_trace t;
    pt_err err = {{0}};
    /* No extension: decided by the content. */
    const char *p = write_tmp("noext_json", "{\"t\": 1, \"input\": 5, \"output\": 6}\n");
    if (load(&t, p, PT_TRACE_AUTO, &err) == PT_OK) {
        CHECK_EQ_INT(t.format, PT_TRACE_PROTEUS);
        pt_trace_free(&t);
    }
    p = write_tmp("noext_csv", "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n1,GPT-4,5,6,11,x\n");
    if (load(&t, p, PT_TRACE_AUTO, &err) == PT_OK) {
        CHECK_EQ_INT(t.format, PT_TRACE_BURSTGPT);
        pt_trace_free(&t);
    }
    /* .jsonl without either key set, and .csv with an unknown header. */
    p = write_tmp("other.jsonl", "{\"time\": 1, \"prompt\": 5}\n");
    CHECK_EQ_INT(pt_trace_load(&t, p, NULL, &err), PT_ERR_FORMAT);
    CHECK_MSG(contains(err.msg, "other.jsonl:1: cannot tell the trace format"), "%s", err.msg);
    p = write_tmp("other.csv", "time,prompt,completion\n1,2,3\n");
    CHECK_EQ_INT(pt_trace_load(&t, p, NULL, &err), PT_ERR_FORMAT);
    CHECK_MSG(contains(err.msg, "other.csv:1: expected a header line") && contains(err.msg, "time,prompt,completion"),
              "%s", err.msg);
    /* A CSV without a header: its first row is not one. */
    p = write_tmp("noheader.csv", "2023-11-16 18:17:03.9799600,4808,10\n");
    CHECK_EQ_INT(pt_trace_load(&t, p, NULL, &err), PT_ERR_FORMAT);
    CHECK_MSG(contains(err.msg, "noheader.csv:1: expected a header line"), "%s", err.msg);
}

static void test_crlf_bom_and_quotes(void) {
    pt_trace t;
    pt_err err = {{0}};
    const char *p = write_tmp("crlf.csv",
                              "\xEF\xBB\xBF"
                              "TIMESTAMP,ContextTokens,GeneratedTokens\r\n"
                              "2024-01-01 00:00:00.5,10,1\r\n"
                              "\r\n"
                              "\"2024-01-01 00:00:02\",\"20\",2\r\n");
    if (load(&t, p, PT_TRACE_AUTO, &err) != PT_OK) return;
    CHECK_EQ_INT(t.n, 2);
    CHECK_EQ_INT(t.n_skipped, 0);
    CHECK(t.n == 2 && t.reqs[1].input_len == 20 && t.reqs[1].line == 4);
    CHECK_NEAR(t.reqs[1].t, 1.5, 1e-9);
    pt_trace_free(&t);
}

static void test_empty_missing_and_header_only(void) {
    pt_trace t;
    pt_err err = {{0}};
    CHECK_EQ_INT(pt_trace_load(&t, write_tmp("empty.csv", ""), NULL, &err), PT_ERR_FORMAT);
    CHECK_MSG(contains(err.msg, "empty.csv: no requests"), "%s", err.msg);
    CHECK_EQ_INT(pt_trace_load(&t, write_tmp("hdr.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n"), NULL, &err),
                 PT_ERR_FORMAT);
    CHECK_MSG(contains(err.msg, "hdr.csv: no requests"), "%s", err.msg);
    CHECK_EQ_INT(pt_trace_load(&t, write_tmp("blank.jsonl", "\n  \n"), NULL, &err), PT_ERR_FORMAT);
    CHECK_MSG(contains(err.msg, "no requests"), "%s", err.msg);
    /* Every row malformed: "no requests" says why. */
    CHECK_EQ_INT(pt_trace_load(&t, write_tmp("allbad.jsonl", "{\"t\": 0, \"input\": 0, \"output\": 1}\n"), NULL, &err),
                 PT_ERR_FORMAT);
    CHECK_MSG(contains(err.msg, "no requests; 1 malformed rows skipped, the first at line 1: input: 0 tokens"), "%s",
              err.msg);

    char missing[128];
    snprintf(missing, sizeof(missing), "%s/does-not-exist.csv", tmpdir);
    CHECK_EQ_INT(pt_trace_load(&t, missing, NULL, &err), PT_ERR_IO);
    CHECK_MSG(contains(err.msg, missing), "%s", err.msg);
    CHECK_EQ_INT(pt_trace_load(&t, tmpdir, NULL, &err), PT_ERR_IO);
    CHECK_EQ_INT(pt_trace_load(NULL, missing, NULL, &err), PT_ERR_INVALID);
}

/* 150 malformed rows: 100 warnings kept, all 150 counted; then max_rows. */
static void test_warning_cap_and_max_rows(void) {
    char path[128];
    snprintf(path, sizeof(path), "%s/many.jsonl", tmpdir);
    FILE *f = fopen(path, "w");
    if (!f) return;
    for (int i = 0; i < 300; i++) fprintf(f, "{\"t\": %d, \"input\": %d, \"output\": 1}\n", i, i % 2 ? 7 : -1);
    fclose(f);
    pt_trace t;
    pt_err err = {{0}};
    if (load(&t, path, PT_TRACE_AUTO, &err) != PT_OK) return;
    CHECK_EQ_INT(t.n, 150);
    CHECK_EQ_INT(t.n_skipped, 150);
    CHECK_EQ_INT(t.n_warnings, 100);
    CHECK(contains(t.warnings[99], "many.jsonl:199: input: negative"));
    CHECK_NEAR(t.reqs[t.n - 1].t, 298.0, 1e-9); /* rows 1, 3, ..., 299 relative to 1 */
    pt_trace_free(&t);

    pt_trace_opts o = {.max_rows = 10};
    CHECK_EQ_INT(pt_trace_load(&t, path, &o, &err), PT_OK);
    CHECK_EQ_INT(t.n, 10);
    CHECK_EQ_INT(t.reqs[9].line, 20);
    CHECK_EQ_INT(t.n_skipped, 10);
    pt_trace_free(&t);
}

/* 20,000 rows in reverse time order: all loaded, sorted ascending. Load time
 * is printed, not asserted. */
static void test_large_reversed(void) {
    char path[128];
    snprintf(path, sizeof(path), "%s/large.csv", tmpdir);
    FILE *f = fopen(path, "w");
    if (!f) return;
    fputs("TIMESTAMP,ContextTokens,GeneratedTokens\n", f);
    const int n = 20000;
    for (int i = n - 1; i >= 0; i--)
        fprintf(f, "2024-05-%02d %02d:%02d:%02d.%07d,%d,%d\n", 10 + i / 86400, i / 3600 % 24, i / 60 % 60, i % 60,
                i * 13 % 10000000, i + 1, 1 + i % 100);
    fclose(f);
    pt_trace t;
    pt_err err = {{0}};
    double t0 = pt_now();
    if (load(&t, path, PT_TRACE_AUTO, &err) != PT_OK) return;
    fprintf(stderr, "  20000 rows in %.1f ms (not asserted)\n", (pt_now() - t0) * 1e3);
    CHECK_EQ_INT(t.n, (size_t)n);
    bool ok = true;
    for (int i = 0; i < n && ok; i++) {
        double want = i + (i * 13 % 10000000) * 1e-7;
        ok = t.reqs[i].input_len == (uint32_t)(i + 1) && fabs(t.reqs[i].t - want) < 1e-9 &&
             t.reqs[i].line == (uint32_t)(n - i + 1);
        if (!ok) fprintf(stderr, "  row %d: t %.9f input %u line %u\n", i, t.reqs[i].t, t.reqs[i].input_len, t.reqs[i].line);
    }
    CHECK(ok);
    pt_trace_free(&t);
}

static void setup(void) {
    /* ctest sets PROTEUS_SOURCE_DIR; run by hand, the root is where this file was compiled from. */
    const char *s = getenv("PROTEUS_SOURCE_DIR");
    snprintf(src_dir, sizeof(src_dir), "%s", s ? s : __FILE__);
    char *tail = s ? NULL : strstr(src_dir, "/tests/unit/test_trace.c");
    if (tail) *tail = '\0';
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/proteus_trace_XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        exit(1);
    }
    if (!shared_trace("README.md")) fprintf(stderr, "  ../shared/traces absent: real-trace checks skipped\n");
}

static void cleanup(void) {
    static const char *names[] = {"noext_json", "noext_csv", "other.jsonl", "other.csv",    "noheader.csv",
                                  "crlf.csv",   "empty.csv", "hdr.csv",     "blank.jsonl",  "allbad.jsonl",
                                  "many.jsonl", "large.csv"};
    char path[128];
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        snprintf(path, sizeof(path), "%s/%s", tmpdir, names[i]);
        unlink(path);
    }
    rmdir(tmpdir);
}

TEST_MAIN(TEST(setup), TEST(test_azure2023_code), TEST(test_azure2023_conv), TEST(test_mooncake_real),
          TEST(test_malformed_rows), TEST(test_azure2024_mixed_timestamps), TEST(test_calendar_against_timegm),
          TEST(test_burstgpt), TEST(test_proteus_jsonl), TEST(test_mooncake_fixture), TEST(test_auto_detection),
          TEST(test_crlf_bom_and_quotes), TEST(test_empty_missing_and_header_only),
          TEST(test_warning_cap_and_max_rows), TEST(test_large_reversed), TEST(cleanup))
