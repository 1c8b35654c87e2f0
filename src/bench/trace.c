/* Trace readers for `proteus bench`: published request traces into pt_trace.
 *
 * Formats (pt_trace_format). Every one is read line by line, so a trace of any
 * length costs memory for its accepted rows only.
 *
 *   AZURE     CSV, header `TIMESTAMP,ContextTokens,GeneratedTokens` (Azure LLM
 *             inference traces 2023 and 2024). TIMESTAMP is a UTC date-time
 *             `YYYY-MM-DD HH:MM:SS[.fraction]`, optionally followed by `Z`, `UTC`
 *             or an offset `+HH:MM` (the 2024 traces mix all of these, with 0 to
 *             7 fraction digits). It is converted with our own calendar
 *             arithmetic (days from civil), so neither the locale nor TZ matters.
 *   MOONCAKE  JSONL, `{"timestamp": ms, "input_length": n, "output_length": n,
 *             "hash_ids": [ids]}`; hash_ids is optional.
 *   BURSTGPT  CSV, header `Timestamp,Model,Request tokens,Response tokens,
 *             Total tokens,Log Type`; Timestamp in seconds. A row with Response
 *             tokens 0 is a failed request: it is dropped and counted in
 *             n_filtered, like rows of a Model other than opts.burstgpt_model.
 *   PROTEUS   our own JSONL, one request per line:
 *                 {"t": 0.0, "input": 1024, "output": 32, "prefix": [7, 8]}
 *                 {"t": 0.5, "input": 512, "output": 64}
 *             t: arrival in seconds (a number >= 0); input, output: token counts
 *             (integers 1..10^7); prefix (optional): one id per 512-token prompt
 *             block, integers 0..2^32-1, with Mooncake's meaning: two requests
 *             whose prompts start with the same ids share that prompt prefix.
 *             Other keys are ignored.
 *   AUTO      .jsonl/.json/.ndjson: the first line's keys (input_length ->
 *             MOONCAKE, input -> PROTEUS); .csv: the header line; any other name:
 *             JSON when the first line starts with '{', else the header.
 *
 * Rules common to all formats:
 *   - Blank lines are skipped; CR before LF, a UTF-8 BOM and blanks around CSV
 *     fields are tolerated; CSV header names match case-insensitively, in any
 *     order, and a CSV field may be double-quoted.
 *   - Times become seconds relative to the earliest accepted row; rows are then
 *     sorted by time, ties kept in file order (so reqs[0].t == 0).
 *   - A malformed row (wrong column count, non-numeric, negative, zero input,
 *     zero output outside BurstGPT, more than 10^7 tokens, a bad timestamp,
 *     invalid JSON, a missing key) is skipped and reported as "FILE:LINE: reason"
 *     in warnings (the first 100 kept; n_skipped counts all), or, with
 *     opts.strict, fails the load with that message.
 *   - A load that accepts no row fails with "no requests".
 *
 * Memory: reqs is one allocation that also holds every row's hash_ids array
 * (after the n requests), so pt_trace_free frees reqs, not each hash_ids. */
#define _GNU_SOURCE /* getline, strcasecmp */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "proteus/bench.h"

#define TRACE_MAX_TOKENS 10000000.0   /* more tokens than any model's context: a corrupt row */
#define TRACE_MAX_WARNINGS 100
#define TRACE_MAX_LINE (16u << 20)    /* bytes; a Mooncake row of 10^7 tokens needs ~200 KiB */
#define TRACE_MAX_COLS 16
#define TRACE_MAX_SECONDS 1e9         /* ~31 years; keeps every time in int64 nanoseconds */
#define TRACE_MIN_YEAR 1970
#define TRACE_MAX_YEAR 2199           /* so that any two times differ by < 2^63 ns */

/* One accepted row while loading; times stay integral until the end so that a
 * 7-digit Azure fraction survives the subtraction of a 1.7e9-second epoch. */
typedef struct {
    int64_t ns;          /* arrival, nanoseconds on the file's own clock */
    uint32_t input_len;
    uint32_t output_len;
    uint32_t line;
    uint32_t n_hash;
    size_t hash_off;     /* first id in trace_loader.hash */
} trace_row;

/* Which header names carry which field in a CSV format. */
typedef struct {
    const char *time, *input, *output, *model; /* model NULL: none */
} csv_schema;

static const csv_schema schema_azure = {"TIMESTAMP", "ContextTokens", "GeneratedTokens", NULL};
static const csv_schema schema_burstgpt = {"Timestamp", "Request tokens", "Response tokens", "Model"};

typedef struct {
    const char *path;
    const pt_trace_opts *o;
    pt_trace *t;
    pt_err *err;
    pt_trace_format format;  /* AUTO until the first non-blank line decides */
    trace_row *rows;         /* (n_rows) in file order */
    size_t n_rows, cap_rows;
    uint32_t *hash;          /* (n_hash) every row's block ids, back to back */
    size_t n_hash, cap_hash;
    bool have_header;
    int n_cols;              /* CSV: columns in the header */
    int col_time, col_input, col_output, col_model;
    uint32_t line;           /* 1-based number of the line being read */
    char reason[256];        /* why the current row is malformed */
    uint32_t first_bad_line; /* for the "no requests" message */
    char first_bad[256];
} trace_loader;

enum { ROW_OK, ROW_FILTERED, ROW_BAD, ROW_NOMEM };

__attribute__((format(printf, 2, 3)))
static int row_bad(trace_loader *L, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(L->reason, sizeof(L->reason), fmt, ap);
    va_end(ap);
    return ROW_BAD;
}

/* Grows *p (elements of size sz) to hold at least need; false when out of memory. */
static bool grow(void **p, size_t *cap, size_t need, size_t sz) {
    if (need <= *cap) return true;
    size_t c = *cap ? *cap : 256;
    while (c < need) {
        if (c > SIZE_MAX / 2) return false;
        c *= 2;
    }
    uint64_t bytes;
    if (!pt_mul_size(c, sz, &bytes) || bytes > SIZE_MAX) return false;
    void *q = realloc(*p, (size_t)bytes);
    if (!q) return false;
    *p = q;
    *cap = c;
    return true;
}

/* ---- numbers ---- */

/* Token counts: an integral number in 1..10^7 (0 allowed when zero_ok). */
static int check_tokens(trace_loader *L, const char *name, double v, bool zero_ok, uint32_t *out) {
    if (!isfinite(v)) return row_bad(L, "%s: not a number", name);
    if (v < 0) return row_bad(L, "%s: negative (%.0f)", name, v);
    if (v != floor(v)) return row_bad(L, "%s: not an integer (%g)", name, v);
    if (v > TRACE_MAX_TOKENS) return row_bad(L, "%s: %.0f tokens is more than 10^7", name, v);
    if (v == 0 && !zero_ok) return row_bad(L, "%s: 0 tokens", name);
    *out = (uint32_t)v;
    return ROW_OK;
}

/* A time in units of ns_per_unit nanoseconds: finite, >= 0, at most ~31 years. */
static int check_time(trace_loader *L, const char *name, double v, double ns_per_unit, int64_t *ns) {
    if (!isfinite(v)) return row_bad(L, "%s: not a number", name);
    if (v < 0) return row_bad(L, "%s: negative (%g)", name, v);
    if (v * ns_per_unit > TRACE_MAX_SECONDS * 1e9) return row_bad(L, "%s: %g is more than 10^9 seconds", name, v);
    *ns = llround(v * ns_per_unit);
    return ROW_OK;
}

/* A CSV number: optional sign, digits, optional fraction and exponent; nothing
 * else (no hex, inf or nan, which strtod alone would take). */
static bool parse_csv_number(const char *s, double *v) {
    const char *p = s;
    if (*p == '+' || *p == '-') p++;
    if (!((*p >= '0' && *p <= '9') || (*p == '.' && p[1] >= '0' && p[1] <= '9'))) return false;
    for (const char *q = p; *q; q++)
        if (!((*q >= '0' && *q <= '9') || *q == '.' || *q == 'e' || *q == 'E' || *q == '+' || *q == '-')) return false;
    char *end;
    errno = 0;
    *v = strtod(s, &end);
    return end != s && *end == '\0';
}

static int csv_tokens(trace_loader *L, const char *name, const char *s, bool zero_ok, uint32_t *out) {
    double v;
    if (!parse_csv_number(s, &v)) return row_bad(L, "%s: not a number: \"%.40s\"", name, s);
    return check_tokens(L, name, v, zero_ok, out);
}

/* ---- calendar ---- */

/* Days from 1970-01-01 to y-m-d in the proleptic Gregorian calendar. Years are
 * counted from March so that the leap day ends a year: a 400-year era has
 * 146097 days and the day of the year follows from the month by (153*m+2)/5. */
static int64_t days_from_civil(int64_t y, int m, int d) {
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;                               /* 0..399 */
    int64_t mp = m > 2 ? m - 3 : m + 9;                        /* March = 0 */
    int64_t doy = (153 * mp + 2) / 5 + d - 1;                  /* 0..365 */
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;       /* 0..146096 */
    return era * 146097 + doe - 719468;                        /* 719468 = days 0000-03-01 .. 1970-01-01 */
}

static int days_in_month(int y, int m) {
    static const int dm[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    return m == 2 && leap ? 29 : dm[m - 1];
}

/* Reads min..max decimal digits at *p into *v and advances. */
static bool take_digits(const char **p, int min, int max, int *v) {
    int n = 0, x = 0;
    while (n < max && (*p)[n] >= '0' && (*p)[n] <= '9') x = x * 10 + ((*p)[n++] - '0');
    if (n < min) return false;
    *p += n;
    *v = x;
    return true;
}

static bool take_char(const char **p, char c) {
    if (**p != c) return false;
    (*p)++;
    return true;
}

/* "YYYY-MM-DD[ T]HH:MM:SS[.fraction][ ][Z|UTC|GMT][+HH[:MM]|-HH[:MM]]" to
 * nanoseconds since 1970-01-01 UTC. Fraction digits past the ninth are ignored. */
static bool parse_datetime(const char *s, int64_t *ns) {
    const char *p = s;
    int Y, M, D, h, m, sec;
    if (!take_digits(&p, 4, 4, &Y) || !take_char(&p, '-') || !take_digits(&p, 1, 2, &M) ||
        !take_char(&p, '-') || !take_digits(&p, 1, 2, &D))
        return false;
    if (*p == 'T' || *p == 't') {
        p++;
    } else {
        if (*p != ' ') return false;
        while (*p == ' ') p++;
    }
    if (!take_digits(&p, 1, 2, &h) || !take_char(&p, ':') || !take_digits(&p, 2, 2, &m) ||
        !take_char(&p, ':') || !take_digits(&p, 2, 2, &sec))
        return false;
    int64_t frac = 0;
    if (*p == '.') {
        p++;
        if (*p < '0' || *p > '9') return false;
        int64_t scale = 100000000;
        for (; *p >= '0' && *p <= '9'; p++, scale /= 10) frac += (*p - '0') * scale;
    }
    while (*p == ' ') p++;
    int offset_s = 0;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (!strncasecmp(p, "UTC", 3) || !strncasecmp(p, "GMT", 3)) {
        p += 3;
    }
    if (*p == '+' || *p == '-') {
        int sign = *p++ == '-' ? -1 : 1, oh, om = 0;
        if (!take_digits(&p, 2, 2, &oh) || oh > 23) return false;
        if (*p == ':') {
            p++;
            if (!take_digits(&p, 2, 2, &om)) return false;
        } else if (*p >= '0' && *p <= '9') {
            if (!take_digits(&p, 2, 2, &om)) return false;
        }
        if (om > 59) return false;
        offset_s = sign * (oh * 3600 + om * 60);
    }
    while (*p == ' ') p++;
    if (*p) return false;
    if (Y < TRACE_MIN_YEAR || Y > TRACE_MAX_YEAR || M < 1 || M > 12 || D < 1 || D > days_in_month(Y, M) ||
        h > 23 || m > 59 || sec > 60)
        return false;
    int64_t secs = days_from_civil(Y, M, D) * 86400 + h * 3600 + m * 60 + sec - offset_s;
    *ns = secs * 1000000000 + frac;
    return true;
}

/* ---- CSV ---- */

static bool is_blank(char c) { return c == ' ' || c == '\t'; }

/* Splits s in place at commas into fields (the first max are stored), trimming
 * blanks around each; a field in double quotes may hold commas, and "" in it
 * stands for one quote. Returns the number of fields, or -1 for a broken quote. */
static int csv_split(char *s, char **fields, int max) {
    int n = 0;
    char *p = s;
    for (;;) {
        while (is_blank(*p)) p++;
        char *start = p, *end;
        if (*p == '"') {
            char *w = ++start;
            for (p++;; p++) {
                if (*p == '\0') return -1;
                if (*p == '"') {
                    if (p[1] != '"') break;
                    p++;
                }
                *w++ = *p;
            }
            p++;
            while (is_blank(*p)) p++;
            if (*p != ',' && *p != '\0') return -1;
            end = w;
        } else {
            while (*p != ',' && *p != '\0') p++;
            end = p;
            while (end > start && is_blank(end[-1])) end--;
        }
        char sep = *p;
        *end = '\0';
        if (n < max) fields[n] = start;
        n++;
        if (sep == '\0') return n;
        p++;
    }
}

static int csv_find(char **fields, int n, const char *name) {
    for (int i = 0; i < n; i++)
        if (!strcasecmp(fields[i], name)) return i;
    return -1;
}

/* Maps the header's columns for schema; false when one is missing. */
static bool csv_map(trace_loader *L, char **fields, int n, const csv_schema *sc) {
    int ct = csv_find(fields, n, sc->time), ci = csv_find(fields, n, sc->input);
    int co = csv_find(fields, n, sc->output), cm = sc->model ? csv_find(fields, n, sc->model) : -1;
    if (ct < 0 || ci < 0 || co < 0 || (sc->model && cm < 0)) return false;
    L->n_cols = n;
    L->col_time = ct;
    L->col_input = ci;
    L->col_output = co;
    L->col_model = cm;
    return true;
}

/* The first non-blank line of a CSV trace: must name the format's columns.
 * With format AUTO, the header decides between Azure and BurstGPT. */
static int csv_header(trace_loader *L, char *s) {
    char copy[512];
    snprintf(copy, sizeof(copy), "%s", s);
    char *fields[TRACE_MAX_COLS];
    int n = csv_split(s, fields, TRACE_MAX_COLS);
    if (n > TRACE_MAX_COLS) n = -1;
    bool ok = false;
    if (n > 0 && (L->format == PT_TRACE_AZURE || L->format == PT_TRACE_AUTO) && csv_map(L, fields, n, &schema_azure)) {
        L->format = PT_TRACE_AZURE;
        ok = true;
    } else if (n > 0 && (L->format == PT_TRACE_BURSTGPT || L->format == PT_TRACE_AUTO) &&
               csv_map(L, fields, n, &schema_burstgpt)) {
        L->format = PT_TRACE_BURSTGPT;
        ok = true;
    }
    if (ok) {
        L->have_header = true;
        return PT_OK;
    }
    const char *want = L->format == PT_TRACE_AZURE      ? "TIMESTAMP,ContextTokens,GeneratedTokens"
                       : L->format == PT_TRACE_BURSTGPT ? "Timestamp,Model,Request tokens,Response tokens,..."
                                                        : "TIMESTAMP,ContextTokens,GeneratedTokens (Azure) or "
                                                          "Timestamp,Model,Request tokens,Response tokens,... (BurstGPT)";
    return pt_err_set(L->err, PT_ERR_FORMAT, "%s:%u: expected a header line %s, got \"%.100s\"", L->path, L->line,
                      want, copy);
}

static int csv_row(trace_loader *L, char *s) {
    char *f[TRACE_MAX_COLS];
    int n = csv_split(s, f, TRACE_MAX_COLS);
    if (n < 0) return row_bad(L, "unterminated quoted field");
    if (n != L->n_cols) return row_bad(L, "expected %d columns, got %d", L->n_cols, n);
    bool burst = L->format == PT_TRACE_BURSTGPT;
    const csv_schema *sc = burst ? &schema_burstgpt : &schema_azure;
    trace_row r = {.line = L->line};
    const char *ts = f[L->col_time];
    if (burst) {
        double v;
        if (!parse_csv_number(ts, &v)) return row_bad(L, "%s: not a number: \"%.40s\"", sc->time, ts);
        if (check_time(L, sc->time, v, 1e9, &r.ns) != ROW_OK) return ROW_BAD;
    } else if (!parse_datetime(ts, &r.ns)) {
        return row_bad(L, "%s: bad timestamp \"%.40s\"", sc->time, ts);
    }
    if (csv_tokens(L, sc->input, f[L->col_input], false, &r.input_len) != ROW_OK) return ROW_BAD;
    if (csv_tokens(L, sc->output, f[L->col_output], burst, &r.output_len) != ROW_OK) return ROW_BAD;
    if (burst) {
        if (r.output_len == 0) return ROW_FILTERED; /* BurstGPT's mark of a failed request */
        if (L->o->burstgpt_model && strcasecmp(f[L->col_model], L->o->burstgpt_model) != 0) return ROW_FILTERED;
    }
    if (!grow((void **)&L->rows, &L->cap_rows, L->n_rows + 1, sizeof(trace_row))) return ROW_NOMEM;
    L->rows[L->n_rows++] = r;
    return ROW_OK;
}

/* ---- JSON lines ---- */

static int json_ids(trace_loader *L, const char *name, const cJSON *a, trace_row *r) {
    if (!cJSON_IsArray(a)) return row_bad(L, "\"%s\": not an array", name);
    r->hash_off = L->n_hash;
    int i = 0;
    for (const cJSON *e = a->child; e; e = e->next, i++) {
        double v = e->valuedouble;
        if (!cJSON_IsNumber(e) || !(v >= 0 && v <= UINT32_MAX) || v != floor(v)) {
            L->n_hash = r->hash_off;
            return row_bad(L, "\"%s\"[%d]: not a block id (an integer 0..4294967295)", name, i);
        }
        if (!grow((void **)&L->hash, &L->cap_hash, L->n_hash + 1, sizeof(uint32_t))) return ROW_NOMEM;
        L->hash[L->n_hash++] = (uint32_t)v;
    }
    r->n_hash = (uint32_t)i;
    return ROW_OK;
}

static int json_number(trace_loader *L, const cJSON *j, const char *key, double *v) {
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(j, key);
    if (!x) return row_bad(L, "missing \"%s\"", key);
    if (!cJSON_IsNumber(x)) return row_bad(L, "\"%s\": not a number", key);
    *v = x->valuedouble;
    return ROW_OK;
}

static int json_row_fields(trace_loader *L, const cJSON *j, trace_row *r) {
    bool mc = L->format == PT_TRACE_MOONCAKE;
    const char *kt = mc ? "timestamp" : "t", *ki = mc ? "input_length" : "input";
    const char *ko = mc ? "output_length" : "output", *kh = mc ? "hash_ids" : "prefix";
    if (!cJSON_IsObject(j)) return row_bad(L, "not a JSON object");
    double t = 0, in = 0, out = 0;
    if (json_number(L, j, kt, &t) != ROW_OK || check_time(L, kt, t, mc ? 1e6 : 1e9, &r->ns) != ROW_OK)
        return ROW_BAD;
    if (json_number(L, j, ki, &in) != ROW_OK || check_tokens(L, ki, in, false, &r->input_len) != ROW_OK)
        return ROW_BAD;
    if (json_number(L, j, ko, &out) != ROW_OK || check_tokens(L, ko, out, false, &r->output_len) != ROW_OK)
        return ROW_BAD;
    const cJSON *h = cJSON_GetObjectItemCaseSensitive(j, kh);
    if (h && !cJSON_IsNull(h)) return json_ids(L, kh, h, r);
    return ROW_OK;
}

static int json_row(trace_loader *L, const char *s) {
    cJSON *j = cJSON_ParseWithOpts(s, NULL, true);
    if (!j) return row_bad(L, "invalid JSON");
    trace_row r = {.line = L->line};
    int rc = json_row_fields(L, j, &r);
    cJSON_Delete(j);
    if (rc != ROW_OK) return rc;
    if (!grow((void **)&L->rows, &L->cap_rows, L->n_rows + 1, sizeof(trace_row))) return ROW_NOMEM;
    L->rows[L->n_rows++] = r;
    return ROW_OK;
}

/* ---- detection ---- */

static bool has_ext(const char *path, const char *ext) {
    const char *slash = strrchr(path, '/'), *dot = strrchr(path, '.');
    return dot && (!slash || dot > slash) && !strcasecmp(dot, ext);
}

/* Format AUTO: decides from the name and the first non-blank line s. CSV
 * formats are decided later by csv_header. */
static int trace_detect(trace_loader *L, const char *s) {
    bool json;
    if (has_ext(L->path, ".jsonl") || has_ext(L->path, ".json") || has_ext(L->path, ".ndjson"))
        json = true;
    else if (has_ext(L->path, ".csv"))
        json = false;
    else
        json = *s == '{';
    if (!json) return PT_OK;
    cJSON *j = cJSON_ParseWithOpts(s, NULL, true);
    if (cJSON_IsObject(j) && cJSON_GetObjectItemCaseSensitive(j, "input_length"))
        L->format = PT_TRACE_MOONCAKE;
    else if (cJSON_IsObject(j) && cJSON_GetObjectItemCaseSensitive(j, "input"))
        L->format = PT_TRACE_PROTEUS;
    bool object = cJSON_IsObject(j);
    cJSON_Delete(j);
    if (L->format != PT_TRACE_AUTO) return PT_OK;
    return pt_err_set(L->err, PT_ERR_FORMAT,
                      "%s:%u: cannot tell the trace format: %s (expected one JSON object per line with "
                      "\"input_length\" (Mooncake) or \"input\" (Proteus))",
                      L->path, L->line, object ? "the first line has neither key" : "the first line is not a JSON object");
}

/* ---- loading ---- */

/* A malformed row: counted and kept as a warning, or the end of a strict load. */
static int trace_report(trace_loader *L) {
    pt_trace *t = L->t;
    t->n_skipped++;
    if (!L->first_bad_line) {
        L->first_bad_line = L->line;
        snprintf(L->first_bad, sizeof(L->first_bad), "%s", L->reason);
    }
    if (L->o->strict) return pt_err_set(L->err, PT_ERR_FORMAT, "%s:%u: %s", L->path, L->line, L->reason);
    if (t->n_warnings >= TRACE_MAX_WARNINGS) return PT_OK;
    if (!t->warnings && !(t->warnings = calloc(TRACE_MAX_WARNINGS, sizeof(char *))))
        return pt_err_set(L->err, PT_ERR_NOMEM, "%s: out of memory", L->path);
    int len = snprintf(NULL, 0, "%s:%u: %s", L->path, L->line, L->reason);
    char *w = len >= 0 ? malloc((size_t)len + 1) : NULL;
    if (!w) return pt_err_set(L->err, PT_ERR_NOMEM, "%s: out of memory", L->path);
    snprintf(w, (size_t)len + 1, "%s:%u: %s", L->path, L->line, L->reason);
    t->warnings[t->n_warnings++] = w;
    return PT_OK;
}

static int row_cmp(const void *a, const void *b) {
    const trace_row *x = a, *y = b;
    if (x->ns != y->ns) return x->ns < y->ns ? -1 : 1;
    return (x->line > y->line) - (x->line < y->line); /* file order among equal times: a stable sort */
}

/* Sorts the rows and moves them into t->reqs, one block with the hash ids. */
static int trace_finish(trace_loader *L) {
    size_t n = L->n_rows;
    bool sorted = true;
    for (size_t i = 1; i < n && sorted; i++) sorted = L->rows[i - 1].ns <= L->rows[i].ns;
    if (!sorted) qsort(L->rows, n, sizeof(trace_row), row_cmp);
    uint64_t req_bytes, hash_bytes, total;
    if (!pt_mul_size(n, sizeof(pt_trace_req), &req_bytes) || !pt_mul_size(L->n_hash, sizeof(uint32_t), &hash_bytes) ||
        !pt_add_size(req_bytes, hash_bytes, &total) || total > SIZE_MAX)
        return pt_err_set(L->err, PT_ERR_NOMEM, "%s: trace too large", L->path);
    pt_trace_req *reqs = malloc((size_t)total);
    if (!reqs) return pt_err_set(L->err, PT_ERR_NOMEM, "%s: out of memory for %zu requests", L->path, n);
    uint32_t *pool = (uint32_t *)(reqs + n);
    if (L->n_hash) memcpy(pool, L->hash, (size_t)hash_bytes);
    int64_t t0 = L->rows[0].ns;
    for (size_t i = 0; i < n; i++) {
        const trace_row *r = &L->rows[i];
        reqs[i] = (pt_trace_req){
            .t = (double)(r->ns - t0) / 1e9,
            .input_len = r->input_len,
            .output_len = r->output_len,
            .hash_ids = r->n_hash ? pool + r->hash_off : NULL,
            .n_hash = r->n_hash,
            .line = r->line,
        };
    }
    L->t->reqs = reqs;
    L->t->n = n;
    return PT_OK;
}

static int trace_no_requests(trace_loader *L) {
    char skipped[400] = "", filtered[200] = "";
    if (L->t->n_skipped)
        snprintf(skipped, sizeof(skipped), "; %zu malformed rows skipped, the first at line %u: %s", L->t->n_skipped,
                 L->first_bad_line, L->first_bad);
    if (L->t->n_filtered)
        snprintf(filtered, sizeof(filtered), "; %zu rows filtered out (failed requests%s%s%s)", L->t->n_filtered,
                 L->o->burstgpt_model ? " or Model other than \"" : "",
                 L->o->burstgpt_model ? L->o->burstgpt_model : "", L->o->burstgpt_model ? "\"" : "");
    return pt_err_set(L->err, PT_ERR_FORMAT, "%s: no requests%s%s", L->path, skipped, filtered);
}

/* Reads every line of f; PT_OK or a negative code with err set. */
static int trace_read(trace_loader *L, FILE *f) {
    char *buf = NULL;
    size_t cap = 0;
    ssize_t len;
    int rc = PT_OK;
    while (rc == PT_OK && (len = getline(&buf, &cap, f)) >= 0) {
        if (L->line == UINT32_MAX) {
            rc = pt_err_set(L->err, PT_ERR_FORMAT, "%s: more than %u lines", L->path, UINT32_MAX - 1);
            break;
        }
        L->line++;
        char *s = buf;
        if (L->line == 1 && len >= 3 && !memcmp(s, "\xEF\xBB\xBF", 3)) s += 3;
        char *end = buf + len;
        while (end > s && (end[-1] == '\n' || end[-1] == '\r' || is_blank(end[-1]))) end--;
        *end = '\0';
        while (is_blank(*s)) s++;
        if (*s == '\0') continue;
        if ((size_t)len > TRACE_MAX_LINE) {
            row_bad(L, "line longer than %u bytes", TRACE_MAX_LINE);
            if (L->format == PT_TRACE_AUTO || !L->have_header) {
                rc = pt_err_set(L->err, PT_ERR_FORMAT, "%s:%u: %s", L->path, L->line, L->reason);
                break;
            }
            rc = trace_report(L);
            continue;
        }
        if (L->format == PT_TRACE_AUTO && (rc = trace_detect(L, s)) != PT_OK) break;
        bool csv = L->format != PT_TRACE_MOONCAKE && L->format != PT_TRACE_PROTEUS;
        if (csv && !L->have_header) {
            rc = csv_header(L, s);
            continue;
        }
        int r = csv ? csv_row(L, s) : json_row(L, s);
        if (r == ROW_FILTERED) {
            L->t->n_filtered++;
        } else if (r == ROW_BAD) {
            rc = trace_report(L);
        } else if (r == ROW_NOMEM) {
            rc = pt_err_set(L->err, PT_ERR_NOMEM, "%s:%u: out of memory", L->path, L->line);
        } else if (L->o->max_rows && L->n_rows >= L->o->max_rows) {
            break;
        }
    }
    if (rc == PT_OK && ferror(f)) rc = pt_err_set(L->err, PT_ERR_IO, "%s: read error: %s", L->path, strerror(errno));
    free(buf);
    return rc;
}

int pt_trace_load(pt_trace *t, const char *path, const pt_trace_opts *o, pt_err *err) {
    if (!t || !path) return pt_err_set(err, PT_ERR_INVALID, "pt_trace_load: NULL trace or path");
    memset(t, 0, sizeof(*t));
    static const pt_trace_opts defaults = {0};
    if (!o) o = &defaults;
    if (o->format < PT_TRACE_AUTO || o->format > PT_TRACE_PROTEUS)
        return pt_err_set(err, PT_ERR_INVALID, "pt_trace_load: unknown format %d", (int)o->format);
    FILE *f = fopen(path, "r");
    if (!f) return pt_err_set(err, PT_ERR_IO, "%s: cannot open trace: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) == 0 && S_ISDIR(st.st_mode)) {
        fclose(f);
        return pt_err_set(err, PT_ERR_IO, "%s: cannot read trace: a directory", path);
    }
    trace_loader L = {.path = path, .o = o, .t = t, .err = err, .format = o->format};
    int rc = trace_read(&L, f);
    fclose(f);
    if (rc == PT_OK && L.n_rows == 0) rc = trace_no_requests(&L);
    if (rc == PT_OK) rc = trace_finish(&L);
    free(L.rows);
    free(L.hash);
    if (rc != PT_OK) {
        pt_trace_free(t);
        return rc;
    }
    t->format = L.format;
    return PT_OK;
}

void pt_trace_free(pt_trace *t) {
    if (!t) return;
    free(t->reqs); /* also holds every hash_ids array */
    for (size_t i = 0; i < t->n_warnings; i++) free(t->warnings[i]);
    free(t->warnings);
    memset(t, 0, sizeof(*t));
}
