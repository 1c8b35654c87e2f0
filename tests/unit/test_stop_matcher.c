/* Stop matcher: stops split over many chunks, overlapping prefixes, several
 * stops, hold-back released at flush, UTF-8 (multi-byte stops and characters
 * split between chunks), and a randomized comparison against a plain
 * reference: the same output under any chunking, and never more held back
 * than the longest tail that could still start a stop string. */
#include <stdint.h>

#include "proteus/stop_matcher.h"
#include "test.h"

/* Output collected over a stream. */
typedef struct {
    char text[4096];
    size_t len;
    int stop;
    size_t max_held; /* largest (fed - sent) seen after any feed */
} sink;

static void sink_add(sink *k, const pt_stop_result *r) {
    if (r->len > 0) {
        memcpy(k->text + k->len, r->text, r->len);
        k->len += r->len;
    }
    k->stop = r->stop;
}

/* Feeds `text` in chunks of the given sizes (cycled), then flushes. */
static sink run_chunked(const char *const *stops, size_t n_stops, bool include_stop, const char *text,
                        const size_t *sizes, size_t n_sizes) {
    sink k;
    memset(&k, 0, sizeof k);
    k.stop = -1;
    pt_stop_matcher m;
    pt_stop_result r;
    if (pt_stop_matcher_init(&m, stops, n_stops, include_stop, NULL) != PT_OK) {
        k.stop = -99;
        return k;
    }
    size_t n = strlen(text), off = 0, ci = 0;
    while (off < n) {
        size_t c = sizes[ci++ % n_sizes];
        if (c > n - off) c = n - off;
        pt_stop_matcher_feed(&m, text + off, c, &r, NULL);
        sink_add(&k, &r);
        off += c;
        if (k.stop < 0 && off - k.len > k.max_held) k.max_held = off - k.len;
    }
    pt_stop_matcher_flush(&m, &r);
    sink_add(&k, &r);
    pt_stop_matcher_free(&m);
    return k;
}

static const size_t ONE[1] = {1};

static void test_stop_split_across_chunks(void) {
    const char *stops[1] = {"STOP"};
    const char *text = "hello STOP world";
    sink a = run_chunked(stops, 1, false, text, ONE, 1);
    CHECK_EQ_INT(a.stop, 0);
    CHECK(a.len == 6 && memcmp(a.text, "hello ", 6) == 0);
    const size_t odd[3] = {7, 2, 5};
    sink b = run_chunked(stops, 1, false, text, odd, 3);
    CHECK(b.stop == 0 && b.len == 6);
    /* include_stop sends the stop string too, nothing after it. */
    sink c = run_chunked(stops, 1, true, text, odd, 3);
    CHECK(c.stop == 0 && c.len == 10 && memcmp(c.text, "hello STOP", 10) == 0);

    /* Hold-back happens only while the tail could still be a stop. */
    pt_stop_matcher m;
    pt_stop_result r;
    CHECK(pt_stop_matcher_init(&m, stops, 1, false, NULL) == PT_OK);
    pt_stop_matcher_feed(&m, "abST", 4, &r, NULL);
    CHECK(r.len == 2 && memcmp(r.text, "ab", 2) == 0 && r.stop == -1);
    pt_stop_matcher_feed(&m, "Ox", 2, &r, NULL);
    CHECK(r.len == 4 && memcmp(r.text, "STOx", 4) == 0);
    pt_stop_matcher_feed(&m, "S", 1, &r, NULL);
    CHECK_EQ_INT(r.len, 0);
    pt_stop_matcher_feed(&m, "TOP and more", 12, &r, NULL);
    CHECK(r.len == 0 && r.stop == 0);
    /* After the stop, input is ignored and flush sends nothing. */
    pt_stop_matcher_feed(&m, "zzz", 3, &r, NULL);
    CHECK(r.len == 0 && r.stop == 0);
    pt_stop_matcher_flush(&m, &r);
    CHECK(r.len == 0 && r.stop == 0);
    pt_stop_matcher_free(&m);
}

static void test_overlapping_prefixes(void) {
    const char *stops[1] = {"aab"};
    sink a = run_chunked(stops, 1, false, "aaab", ONE, 1);
    CHECK(a.stop == 0 && a.len == 1 && a.text[0] == 'a');
    const size_t whole[1] = {100};
    sink b = run_chunked(stops, 1, false, "aaab", whole, 1);
    CHECK(b.stop == 0 && b.len == 1);
    const char *stops2[1] = {"abab"};
    sink c = run_chunked(stops2, 1, false, "xababab", ONE, 1);
    CHECK(c.stop == 0 && c.len == 1 && c.text[0] == 'x');
    sink d = run_chunked(stops2, 1, false, "abaabab!", ONE, 1);
    CHECK(d.stop == 0 && d.len == 3 && memcmp(d.text, "aba", 3) == 0);
}

static void test_multiple_stops(void) {
    const char *stops[3] = {"foo", "bar", "\n\n"};
    sink a = run_chunked(stops, 3, false, "xxbarfoo", ONE, 1);
    CHECK(a.stop == 1 && a.len == 2);
    sink b = run_chunked(stops, 3, false, "one\n\ntwo foo", ONE, 1);
    CHECK(b.stop == 2 && b.len == 3 && memcmp(b.text, "one", 3) == 0);
    /* The stop that ends first wins, whatever the list order or chunking:
     * "bc" ends before "abcd" does. */
    const char *nested[2] = {"abcd", "bc"};
    const size_t whole[1] = {100};
    sink c = run_chunked(nested, 2, false, "zabcd", whole, 1);
    CHECK(c.stop == 1 && c.len == 2 && memcmp(c.text, "za", 2) == 0);
    sink d = run_chunked(nested, 2, false, "zabcd", ONE, 1);
    CHECK(d.stop == 1 && d.len == 2);
    /* Ending at the same byte, the longer one wins (it starts earlier). */
    const char *suffixes[2] = {"cd", "bcd"};
    sink e = run_chunked(suffixes, 2, false, "abcd", whole, 1);
    CHECK(e.stop == 1 && e.len == 1);
}

static void test_flush_releases_hold(void) {
    const char *stops[2] = {"world", "xyz"};
    pt_stop_matcher m;
    pt_stop_result r;
    CHECK(pt_stop_matcher_init(&m, stops, 2, false, NULL) == PT_OK);
    pt_stop_matcher_feed(&m, "hello wor", 9, &r, NULL);
    CHECK(r.len == 6 && memcmp(r.text, "hello ", 6) == 0);
    pt_stop_matcher_flush(&m, &r);
    CHECK(r.len == 3 && memcmp(r.text, "wor", 3) == 0 && r.stop == -1);
    pt_stop_matcher_free(&m);

    /* Nothing that cannot start a stop is held, not even for one call. */
    CHECK(pt_stop_matcher_init(&m, stops, 2, false, NULL) == PT_OK);
    pt_stop_matcher_feed(&m, "abc", 3, &r, NULL);
    CHECK(r.len == 3 && memcmp(r.text, "abc", 3) == 0);
    pt_stop_matcher_feed(&m, "", 0, &r, NULL);
    CHECK_EQ_INT(r.len, 0);
    pt_stop_matcher_flush(&m, &r);
    CHECK_EQ_INT(r.len, 0);
    pt_stop_matcher_free(&m);

    /* Empty results still point somewhere (callers hand them to fwrite and
     * memcpy), also before the matcher has buffered anything. */
    CHECK(pt_stop_matcher_init(&m, stops, 2, false, NULL) == PT_OK);
    pt_stop_matcher_feed(&m, "", 0, &r, NULL);
    CHECK(r.text != NULL && r.len == 0);
    pt_stop_matcher_flush(&m, &r);
    CHECK(r.text != NULL && r.len == 0);
    pt_stop_matcher_free(&m);
    CHECK(pt_stop_matcher_init(&m, stops, 2, false, NULL) == PT_OK);
    pt_stop_matcher_flush(&m, &r);
    CHECK(r.text != NULL && r.len == 0);
    pt_stop_matcher_free(&m);

    /* No stops at all: a pass-through. */
    CHECK(pt_stop_matcher_init(&m, NULL, 0, false, NULL) == PT_OK);
    pt_stop_matcher_feed(&m, "plain", 5, &r, NULL);
    CHECK(r.len == 5 && r.stop == -1);
    pt_stop_matcher_free(&m);
}

static void test_utf8(void) {
    /* "你好。再见" with stop "。" (E3 80 82), fed byte by byte. */
    const char *stops[1] = {"\xE3\x80\x82"};
    const char *text = "\xE4\xBD\xA0\xE5\xA5\xBD\xE3\x80\x82\xE5\x86\x8D\xE8\xA7\x81";
    sink a = run_chunked(stops, 1, false, text, ONE, 1);
    CHECK(a.stop == 0 && a.len == 6 && memcmp(a.text, text, 6) == 0);

    /* A stop sharing a lead byte with the text: "再" (E5 86 8D) must not be
     * confused with "好" (E5 A5 BD). */
    const char *stops2[1] = {"\xE5\x86\x8D"};
    const size_t two[1] = {2};
    sink b = run_chunked(stops2, 1, false, text, two, 1);
    CHECK(b.stop == 0 && b.len == 9 && memcmp(b.text, text, 9) == 0);

    /* A character split between chunks is sent whole, never in pieces. */
    pt_stop_matcher m;
    pt_stop_result r;
    const char *none[1] = {"!"};
    CHECK(pt_stop_matcher_init(&m, none, 1, false, NULL) == PT_OK);
    pt_stop_matcher_feed(&m, "a\xE4", 2, &r, NULL);
    CHECK(r.len == 1 && r.text[0] == 'a');
    pt_stop_matcher_feed(&m, "\xBD", 1, &r, NULL);
    CHECK_EQ_INT(r.len, 0);
    pt_stop_matcher_feed(&m, "\xA0\xF0\x9F", 3, &r, NULL);
    CHECK(r.len == 3 && memcmp(r.text, "\xE4\xBD\xA0", 3) == 0);
    pt_stop_matcher_feed(&m, "\x98\x80", 2, &r, NULL);
    CHECK(r.len == 4 && memcmp(r.text, "\xF0\x9F\x98\x80", 4) == 0);
    /* Invalid bytes pass through rather than wait forever. */
    pt_stop_matcher_feed(&m, "\x80\xFF", 2, &r, NULL);
    CHECK_EQ_INT(r.len, 2);
    /* An incomplete tail at the end is released by flush. */
    pt_stop_matcher_feed(&m, "\xE4\xBD", 2, &r, NULL);
    CHECK_EQ_INT(r.len, 0);
    pt_stop_matcher_flush(&m, &r);
    CHECK(r.len == 2 && memcmp(r.text, "\xE4\xBD", 2) == 0);
    pt_stop_matcher_free(&m);

    /* A 4-byte emoji stop found across 1-byte chunks. */
    const char *emoji[1] = {"\xF0\x9F\x9B\x91"};
    sink c = run_chunked(emoji, 1, false, "ok \xF0\x9F\x9B\x91 then", ONE, 1);
    CHECK(c.stop == 0 && c.len == 3 && memcmp(c.text, "ok ", 3) == 0);
}

static void test_invalid_stops(void) {
    pt_stop_matcher m;
    pt_err err;
    const char *empty[2] = {"ok", ""};
    CHECK(pt_stop_matcher_init(&m, empty, 2, false, &err) == PT_ERR_INVALID && strstr(err.msg, "empty"));
    const char *many[PT_STOP_MAX_STRINGS + 1];
    for (int i = 0; i <= PT_STOP_MAX_STRINGS; i++) many[i] = "x";
    CHECK(pt_stop_matcher_init(&m, many, PT_STOP_MAX_STRINGS + 1, false, &err) == PT_ERR_INVALID);
    static char longs[PT_STOP_MAX_BYTES + 2];
    memset(longs, 'a', PT_STOP_MAX_BYTES + 1);
    const char *toolong[1] = {longs};
    CHECK(pt_stop_matcher_init(&m, toolong, 1, false, &err) == PT_ERR_INVALID);
}

/* Reference: the first end position where a stop occurs; at that end the
 * longest stop, then the lowest index. */
static int ref_match(const char *const *stops, size_t n_stops, const char *t, size_t n, size_t *start, size_t *end) {
    for (size_t e = 1; e <= n; e++) {
        int best = -1;
        size_t best_len = 0;
        for (size_t i = 0; i < n_stops; i++) {
            size_t L = strlen(stops[i]);
            if (L <= e && memcmp(t + e - L, stops[i], L) == 0 && L > best_len) best = (int)i, best_len = L;
        }
        if (best >= 0) {
            *start = e - best_len;
            *end = e;
            return best;
        }
    }
    return -1;
}

/* Longest proper prefix of any stop that is a suffix of t[0..n). */
static size_t ref_hold(const char *const *stops, size_t n_stops, const char *t, size_t n) {
    size_t best = 0;
    for (size_t i = 0; i < n_stops; i++) {
        size_t L = strlen(stops[i]);
        for (size_t h = L - 1; h > best; h--)
            if (h <= n && memcmp(t + n - h, stops[i], h) == 0) {
                best = h;
                break;
            }
    }
    return best;
}

static void test_random_against_reference(void) {
    pt_rng r;
    pt_rng_seed(&r, 77);
    int bad = 0, stopped = 0;
    for (int iter = 0; iter < 3000; iter++) {
        char stop_buf[4][8];
        const char *stops[4];
        size_t n_stops = 1 + pt_rng_next(&r) % 4;
        for (size_t i = 0; i < n_stops; i++) {
            size_t L = 1 + pt_rng_next(&r) % 6;
            for (size_t j = 0; j < L; j++) stop_buf[i][j] = (char)('a' + pt_rng_next(&r) % 3);
            stop_buf[i][L] = 0;
            stops[i] = stop_buf[i];
        }
        char text[64];
        size_t n = pt_rng_next(&r) % 60;
        for (size_t j = 0; j < n; j++) text[j] = (char)('a' + pt_rng_next(&r) % 3);
        text[n] = 0;
        size_t sizes[4];
        for (int j = 0; j < 4; j++) sizes[j] = 1 + pt_rng_next(&r) % 7;
        bool incl = pt_rng_next(&r) & 1;

        size_t start = 0, end = 0;
        int want = ref_match(stops, n_stops, text, n, &start, &end);
        size_t want_len = want < 0 ? n : incl ? end : start;
        sink k = run_chunked(stops, n_stops, incl, text, sizes, 4);
        bool ok = k.stop == want && k.len == want_len && memcmp(k.text, text, want_len) == 0;
        /* Minimal hold-back: feed byte by byte and compare after each byte. */
        if (want < 0) {
            pt_stop_matcher m;
            pt_stop_result res;
            pt_stop_matcher_init(&m, stops, n_stops, false, NULL);
            size_t sent = 0;
            for (size_t j = 0; j < n; j++) {
                pt_stop_matcher_feed(&m, text + j, 1, &res, NULL);
                sent += res.len;
                if (j + 1 - sent != ref_hold(stops, n_stops, text, j + 1)) ok = false;
            }
            pt_stop_matcher_free(&m);
        } else {
            stopped++;
        }
        if (!ok) {
            if (bad++ < 5) fprintf(stderr, "mismatch: text '%s' first stop '%s' (want %d got %d)\n", text, stops[0], want, k.stop);
        }
    }
    CHECK_EQ_INT(bad, 0);
    CHECK(stopped > 500 && stopped < 2900); /* both outcomes exercised */
}

TEST_MAIN(TEST(test_stop_split_across_chunks), TEST(test_overlapping_prefixes), TEST(test_multiple_stops),
          TEST(test_flush_releases_hold), TEST(test_utf8), TEST(test_invalid_stops),
          TEST(test_random_against_reference))
