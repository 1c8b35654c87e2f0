/* pt_trace_load on an arbitrary trace file, in every format: detected from
 * the name and header line (as foo.csv and as foo.jsonl, strict and not),
 * then forced to Azure, Mooncake, BurstGPT and Proteus JSONL (the loader
 * takes a path, so the input goes to a temp file). An accepted trace must
 * be what bench.h says: at least one request, sorted by arrival time, times
 * finite and starting at 0, Mooncake hash ids present only with their count,
 * at most 100 warnings kept. */
#include <math.h>

#include "fuzz_common.h"
#include "proteus/bench.h"

static void check_one(const char *path, pt_trace_format format, bool strict) {
    pt_trace_opts o = {.format = format, .strict = strict};
    pt_trace t;
    pt_err err;
    err.msg[0] = 0;
    int rc = pt_trace_load(&t, path, &o, &err);
    if (rc != 0) {
        FUZZ_CHECK(err.msg[0], "error %d without a message", rc);
        FUZZ_CHECK(t.reqs == NULL && t.n == 0, "an error with requests");
        return;
    }
    FUZZ_CHECK(t.n >= 1 && t.reqs, "accepted with %zu requests", t.n);
    FUZZ_CHECK(t.format != PT_TRACE_AUTO && (format == PT_TRACE_AUTO || t.format == format), "format %d for %d",
               (int)t.format, (int)format);
    for (size_t i = 0; i < t.n; i++) {
        const pt_trace_req *r = &t.reqs[i];
        FUZZ_CHECK(isfinite(r->t) && r->t >= 0, "request %zu: t = %g", i, r->t);
        if (i) FUZZ_CHECK(r->t >= t.reqs[i - 1].t, "request %zu: not sorted", i);
        FUZZ_CHECK((r->hash_ids != NULL) == (r->n_hash > 0), "request %zu: %u hash ids", i, r->n_hash);
    }
    FUZZ_CHECK(t.reqs[0].t == 0, "the first request at %g, not 0", t.reqs[0].t);
    FUZZ_CHECK(t.n_warnings <= 100, "%zu warnings kept", t.n_warnings);
    pt_trace_free(&t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *csv = fuzz_write_file(data, size, "-trace.csv");
    const char *jsonl = fuzz_write_file(data, size, "-trace.jsonl");
    for (int strict = 0; strict < 2; strict++) {
        check_one(csv, PT_TRACE_AUTO, strict);
        check_one(jsonl, PT_TRACE_AUTO, strict);
    }
    for (pt_trace_format f = PT_TRACE_AZURE; f <= PT_TRACE_PROTEUS; f++) check_one(csv, f, false);
    return 0;
}
