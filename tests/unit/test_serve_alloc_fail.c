/* Allocation-failure walk over the whole server: the allocations a request
 * makes, on every thread (HTTP loop, scheduler, batcher, engine), fail in
 * turn, and the server must answer cleanly and keep serving.
 *
 * This program runs pt_serve_run in a thread of its own process on
 * synthetic:tiny-llama (two TP1 instances, the chatml template, TP 1 and 2
 * allowed) and talks to it over TCP. It is linked with
 * --wrap=malloc,calloc,realloc,strdup (CMakeLists.txt, "allocation-failure
 * injection"): once armed, the Nth allocation made by any thread but the
 * client's fails -- only that one, or (the "from N on" walks) every one
 * from the Nth until the answer is in. Not injected: posix_memalign
 * (pt_aligned_alloc: weights and KV pools), mmap, and the allocations inside
 * libuv, pcre2 and cJSON; cJSON's are counted all the same, through the
 * hooks pt_json_nomem_begin installs.
 *
 * Each generation walk sends one request with N = 1, 2, ... until a run
 * reaches no Nth allocation (that last run must give the unarmed answer).
 * Every run must give either
 *   - the unarmed run's answer (the failure had a fallback), or
 *   - a clean error: HTTP 500 or 503 with a body in the OpenAI error shape,
 *     or, once a stream began, a stream that carries an error object and
 *     ends with [DONE];
 * never a dropped connection, a hang, a crash or an abort. After each run
 * the server must be idle with every KV page free, and answer the request
 * again exactly as before. Each request kind is walked twice with only the
 * Nth failing (which allocation is the Nth depends on how the threads
 * interleave) and once from N on. Then: GET /v1/layout and /metrics (a
 * whole answer or a clean error), a merge [1,1] -> [2] (POST answers 202
 * or a clean error; the change ends done or rolled back, never half-way;
 * the server then answers as before), and two clients with no memory at
 * all (the second is answered from the HTTP layer's sink). ASan's leak
 * check at exit covers the failure paths (the server is stopped with
 * SIGTERM and frees everything). /tokenize, /detokenize and /v1/models are
 * walked too (the unarmed body or a clean error). Not walked: requests the
 * scheduler holds (the static policy never holds one). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "proteus/config.h"
#include "proteus/serve.h"
#include "proteus/util.h"
#include "test.h"

/* ---------------------------------------------------------------------------
 * The injector: any thread but the client's. */

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t n);
char *__real_strdup(const char *s);

static _Atomic long fail_at;  /* 0: off; else the allocation (1-based, since arming) that fails */
static atomic_bool fail_after; /* every allocation from fail_at on fails, not only that one */
static _Atomic long n_allocs; /* allocations since arming */
static atomic_bool fired;     /* the armed allocation was reached (and failed) */
static _Thread_local bool exempt; /* the client thread: its allocations are the test's */

static bool fail_now(void) {
    if (exempt || !atomic_load(&fail_at)) return false;
    long n = atomic_fetch_add(&n_allocs, 1) + 1, at = atomic_load(&fail_at);
    if (n != at && !(atomic_load(&fail_after) && n > at)) return false;
    atomic_store(&fired, true);
    return true;
}

void *__wrap_malloc(size_t n) { return fail_now() ? NULL : __real_malloc(n); }
void *__wrap_calloc(size_t n, size_t size) { return fail_now() ? NULL : __real_calloc(n, size); }
void *__wrap_realloc(void *p, size_t n) { return fail_now() ? NULL : __real_realloc(p, n); }
char *__wrap_strdup(const char *s) { return fail_now() ? NULL : __real_strdup(s); }

static void arm(long n, bool after) {
    atomic_store(&n_allocs, 0);
    atomic_store(&fired, false);
    atomic_store(&fail_after, after);
    atomic_store(&fail_at, n);
}

static void disarm(void) { atomic_store(&fail_at, 0); }

/* ---------------------------------------------------------------------------
 * The server, in a thread. */

static int port;
static int serve_rc = -1;

static void *server_main(void *arg) {
    pt_server_config *cfg = arg;
    serve_rc = pt_serve_run(cfg);
    return NULL;
}

/* A free TCP port on the loopback (released before the server binds it). */
static int free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    int p = 0;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        p = ntohs(a.sin_port);
    if (fd >= 0) close(fd);
    return p;
}

/* ---------------------------------------------------------------------------
 * The client: HTTP/1.0 (no keep-alive, the body ends at the close). */

typedef struct {
    int status;   /* 0: no status line came back */
    char *body;   /* malloc'd, NUL-terminated */
    size_t len;
} reply;

static reply http(const char *method, const char *path, const char *body) {
    reply r = {0, NULL, 0};
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return r;
    struct timeval tv = {30, 0}; /* a hang fails the test instead of blocking it */
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        close(fd);
        return r;
    }
    char head[256];
    size_t blen = body ? strlen(body) : 0;
    int hn = snprintf(head, sizeof(head), "%s %s HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
                      method, path, blen);
    if (send(fd, head, (size_t)hn, MSG_NOSIGNAL) < 0 || (blen && send(fd, body, blen, MSG_NOSIGNAL) < 0)) {
        close(fd);
        return r;
    }
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (n + 1024 > cap) buf = realloc(buf, cap *= 2);
        ssize_t k = recv(fd, buf + n, cap - n - 1, 0);
        if (k <= 0) break;
        n += (size_t)k;
    }
    close(fd);
    buf[n] = 0;
    char *sep = strstr(buf, "\r\n\r\n");
    if (sscanf(buf, "HTTP/1.%*d %d", &r.status) != 1 || !sep) {
        r.status = 0;
        free(buf);
        return r;
    }
    r.len = n - (size_t)(sep + 4 - buf);
    r.body = malloc(r.len + 1);
    memcpy(r.body, sep + 4, r.len + 1);
    free(buf);
    return r;
}

/* An error object in the OpenAI shape: {"error": {"message", "type", ...}}. */
static bool openai_error(const cJSON *j) {
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "error");
    return cJSON_IsObject(e) && cJSON_IsString(cJSON_GetObjectItemCaseSensitive(e, "message")) &&
           cJSON_IsString(cJSON_GetObjectItemCaseSensitive(e, "type"));
}

/* What a response says, without its ids and times: the choices' texts and
 * finish reasons (streams: concatenated per index), usage, and logprob
 * tokens; or "error" for a clean error. out is "" when the response is
 * neither (dropped, malformed, an error in another shape). */
static void fingerprint_json(const cJSON *j, char *out, size_t cap, size_t *m) {
    const cJSON *choices = cJSON_GetObjectItemCaseSensitive(j, "choices");
    const cJSON *c;
    cJSON_ArrayForEach(c, choices) {
        const cJSON *idx = cJSON_GetObjectItemCaseSensitive(c, "index");
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(c, "text");
        const cJSON *msg = cJSON_GetObjectItemCaseSensitive(c, "message");
        const cJSON *delta = cJSON_GetObjectItemCaseSensitive(c, "delta");
        if (!text && msg) text = cJSON_GetObjectItemCaseSensitive(msg, "content");
        if (!text && delta) text = cJSON_GetObjectItemCaseSensitive(delta, "content");
        const cJSON *fin = cJSON_GetObjectItemCaseSensitive(c, "finish_reason");
        const cJSON *lp = cJSON_GetObjectItemCaseSensitive(c, "logprobs");
        char *lps = lp && !cJSON_IsNull(lp) ? cJSON_PrintUnformatted(lp) : NULL;
        *m += (size_t)snprintf(out + *m, cap - *m, "[%d|%s|%s|%s]", idx ? idx->valueint : -1,
                               cJSON_IsString(text) ? text->valuestring : "",
                               cJSON_IsString(fin) ? fin->valuestring : "", lps ? lps : "");
        free(lps);
        if (*m >= cap) *m = cap - 1;
    }
    const cJSON *u = cJSON_GetObjectItemCaseSensitive(j, "usage");
    if (cJSON_IsObject(u)) {
        char *us = cJSON_PrintUnformatted(u);
        *m += (size_t)snprintf(out + *m, cap - *m, "usage%s", us ? us : "");
        free(us);
        if (*m >= cap) *m = cap - 1;
    }
}

static void fingerprint(const reply *r, bool stream, char *out, size_t cap) {
    out[0] = 0;
    size_t m = 0;
    if (r->status == 500 || r->status == 503) {
        cJSON *j = r->body ? cJSON_Parse(r->body) : NULL;
        if (j && openai_error(j)) snprintf(out, cap, "error");
        cJSON_Delete(j);
        return;
    }
    if (r->status != 200 || !r->body) return;
    if (!stream) {
        cJSON *j = cJSON_Parse(r->body);
        if (j) fingerprint_json(j, out, cap, &m);
        cJSON_Delete(j);
        return;
    }
    /* SSE: every "data: " frame is JSON until [DONE], which must end it. */
    bool done = false, error = false;
    for (char *p = r->body; (p = strstr(p, "data: ")); p += 6) {
        if (done) return; /* something after [DONE] */
        char *end = strstr(p, "\n\n");
        if (!end) return;
        if (!strncmp(p + 6, "[DONE]", 6)) {
            done = true;
            continue;
        }
        *end = 0;
        cJSON *j = cJSON_Parse(p + 6);
        *end = '\n';
        if (!j) return;
        if (openai_error(j)) error = true;
        else fingerprint_json(j, out, cap, &m);
        cJSON_Delete(j);
    }
    if (!done) out[0] = 0;
    else if (error) snprintf(out, cap, "error");
}

/* ---------------------------------------------------------------------------
 * Between runs: the server idle, every page free. */

static bool idle_with_pages_free(char *why, size_t cap) {
    for (int tries = 0; tries < 500; tries++) {
        reply r = http("GET", "/v1/layout", NULL);
        cJSON *j = r.status == 200 ? cJSON_Parse(r.body) : NULL;
        const cJSON *insts = cJSON_GetObjectItemCaseSensitive(j, "instances");
        bool idle = cJSON_IsArray(insts) && cJSON_GetArraySize(insts) > 0;
        const cJSON *in;
        cJSON_ArrayForEach(in, insts) {
            const cJSON *run = cJSON_GetObjectItemCaseSensitive(in, "running");
            const cJSON *wait = cJSON_GetObjectItemCaseSensitive(in, "waiting");
            const cJSON *fr = cJSON_GetObjectItemCaseSensitive(in, "kv_pages_free");
            const cJSON *tot = cJSON_GetObjectItemCaseSensitive(in, "kv_pages_total");
            if (!run || !wait || !fr || !tot || run->valuedouble != 0 || wait->valuedouble != 0 ||
                fr->valuedouble != tot->valuedouble)
                idle = false;
        }
        snprintf(why, cap, "%d %.300s", r.status, r.body ? r.body : "(no body)");
        cJSON_Delete(j);
        free(r.body);
        if (idle) return true;
        usleep(10000);
    }
    return false;
}

/* ---------------------------------------------------------------------------
 * The walks. */

typedef struct {
    const char *name;
    const char *path;
    const char *body;
    bool stream;
} request_kind;

/* Greedy, so that a run that survives a failure must give the same answer;
 * cache_prompt off, so that idle means every page free. */
static const request_kind KINDS[] = {
    {"completions, n=2, logprobs", "/v1/completions",
     "{\"prompt\":[\"Once upon a time\",\"x y\"],\"max_tokens\":5,\"temperature\":0,\"n\":2,\"logprobs\":2,"
     "\"stop\":[\"zz\"],\"logit_bias\":{\"7\":-1},\"cache_prompt\":false,\"ignore_eos\":true}",
     false},
    {"chat, stream, usage, top_logprobs", "/v1/chat/completions",
     "{\"messages\":[{\"role\":\"system\",\"content\":\"Be brief.\"},{\"role\":\"user\",\"content\":\"Hi there\"}],"
     "\"max_tokens\":5,\"temperature\":0,\"stream\":true,\"stream_options\":{\"include_usage\":true},"
     "\"logprobs\":true,\"top_logprobs\":2,\"cache_prompt\":false,\"ignore_eos\":true}",
     true},
    {"chat, n=3", "/v1/chat/completions",
     "{\"messages\":[{\"role\":\"user\",\"content\":\"abc\"}],\"max_tokens\":3,\"temperature\":0,\"n\":3,"
     "\"stop\":\"q\",\"cache_prompt\":false,\"ignore_eos\":true}",
     false},
};

#define FP_CAP 65536

/* after: every allocation from the Nth on fails until the answer is in
 * (memory that stays short), not only the Nth. */
static void walk(const request_kind *k, bool after) {
    static char ref[FP_CAP], got[FP_CAP], why[512];
    reply r = http("POST", k->path, k->body);
    fingerprint(&r, k->stream, ref, sizeof(ref));
    free(r.body);
    CHECK_MSG(ref[0] && strcmp(ref, "error"), "%s: the unarmed request failed", k->name);
    if (!ref[0] || !strcmp(ref, "error")) return;
    long n;
    int errors = 0, same = 0, bad = 0;
    for (n = 1; n < 100000; n++) {
        arm(n, after);
        r = http("POST", k->path, k->body);
        disarm();
        bool hit = atomic_load(&fired);
        fingerprint(&r, k->stream, got, sizeof(got));
        if (!strcmp(got, "error") && hit) {
            errors++;
        } else if (got[0] && !strcmp(got, ref)) {
            same += hit;
        } else if (bad++ < 10) {
            CHECK_MSG(0, "%s: allocation %ld failed: HTTP %d, %s", k->name, n, r.status,
                      got[0] ? "a different answer" : r.status ? "not a clean error" : "no response");
            fprintf(stderr, "  body: %.400s\n", r.body ? r.body : "(none)");
        }
        free(r.body);
        if (!idle_with_pages_free(why, sizeof(why))) {
            CHECK_MSG(0, "%s: after allocation %ld failed, the server is not idle with its pages free: %s", k->name,
                      n, why);
            break;
        }
        r = http("POST", k->path, k->body);
        fingerprint(&r, k->stream, got, sizeof(got));
        free(r.body);
        if (strcmp(got, ref)) {
            CHECK_MSG(0, "%s: after allocation %ld failed, the same request is answered differently", k->name, n);
            break;
        }
        if (!hit) break;
    }
    printf("%-36s %-13s %5ld allocations: %d clean errors, %d recovered with the same answer, %d wrong\n", k->name,
           after ? "from N on" : "the Nth only", n - 1, errors, same, bad);
    CHECK_MSG(n > 20, "%s: only %ld allocations (is the wrap linked?)", k->name, n - 1);
}

/* ---------------------------------------------------------------------------
 * Routes that answer what the server is (not the same twice), and layout
 * changes. */

/* GET /v1/layout: the two instances' layout, or a clean error. */
static const char *layout_answer(const reply *r, char *out, size_t cap) {
    fingerprint(r, false, out, cap);
    if (!strcmp(out, "error")) return out;
    out[0] = 0;
    cJSON *j = r->status == 200 && r->body ? cJSON_Parse(r->body) : NULL;
    const cJSON *l = cJSON_GetObjectItemCaseSensitive(j, "layout");
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(j, "transformation");
    char *ls = cJSON_IsArray(l) && cJSON_IsObject(t) ? cJSON_PrintUnformatted(l) : NULL;
    if (ls) snprintf(out, cap, "%s%s", ls,
                     cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(t, "in_progress")) ? " moving" : "");
    free(ls);
    cJSON_Delete(j);
    return out;
}

/* GET /metrics: the whole page (its last family ends it), or a clean error. */
static const char *metrics_answer(const reply *r, char *out, size_t cap) {
    fingerprint(r, false, out, cap);
    if (!strcmp(out, "error")) return out;
    bool whole = r->status == 200 && r->body && strstr(r->body, "proteus_request_success_total") &&
                 strstr(r->body, "proteus_scheduler_policy{policy=\"dynamic\"}");
    snprintf(out, cap, "%s", whole ? "metrics" : "");
    return out;
}

/* /tokenize, /detokenize, /v1/models: the body as it is, or a clean error
 * (the models list's "created" is the second it is asked: left out). */
static const char *exact_answer(const reply *r, char *out, size_t cap) {
    fingerprint(r, false, out, cap);
    if (!strcmp(out, "error")) return out;
    snprintf(out, cap, "%d %s", r->status, r->body ? r->body : "");
    char *created = strstr(out, "\"created\":");
    if (created) memset(created, '_', strcspn(created, ",}"));
    return out;
}

typedef const char *(*answer_fn)(const reply *r, char *out, size_t cap);

/* A request whose answer `answer` reduces to `want` (NULL: the unarmed one). */
static void walk_route(const char *method, const char *path, const char *body, answer_fn answer, const char *want) {
    static char ref[FP_CAP], got[FP_CAP], why[512];
    if (!want) {
        reply r = http(method, path, body);
        want = answer(&r, ref, sizeof(ref));
        free(r.body);
        CHECK_MSG(r.status == 200, "%s %s: the unarmed request answered %d", method, path, r.status);
    }
    long n;
    int errors = 0, ok = 0, bad = 0;
    for (n = 1; n < 100000; n++) {
        arm(n, false);
        reply r = http(method, path, body);
        disarm();
        bool hit = atomic_load(&fired);
        answer(&r, got, sizeof(got));
        if (!strcmp(got, "error") && hit) errors++;
        else if (!strcmp(got, want)) ok += hit;
        else if (bad++ < 10) CHECK_MSG(0, "%s %s: allocation %ld failed: HTTP %d, %.300s", method, path, n, r.status,
                                       r.body ? r.body : "(none)");
        free(r.body);
        if (!hit) break;
    }
    CHECK(idle_with_pages_free(why, sizeof(why)));
    printf("%-4s %-31s %-13s %5ld allocations: %d clean errors, %d whole answers, %d wrong\n", method, path,
           "the Nth only", n - 1, errors, ok, bad);
    CHECK_MSG(n > 5, "%s %s: only %ld allocations", method, path, n - 1);
}

/* The layout, once no change runs ("" when it cannot be read). */
static void settled_layout(char *out, size_t cap) {
    for (int tries = 0; tries < 3000; tries++) {
        reply r = http("GET", "/v1/layout", NULL);
        layout_answer(&r, out, cap);
        free(r.body);
        if (out[0] && strcmp(out, "error") && !strstr(out, "moving")) return;
        usleep(10000);
    }
    out[0] = 0;
}

/* Until no layout change runs, asking /metrics (its page takes few
 * allocations, so that an armed walk hits mostly the change's own). */
static void wait_no_change(void) {
    for (int tries = 0; tries < 3000; tries++) {
        reply r = http("GET", "/metrics", NULL);
        bool running = r.status != 200 || !r.body || !strstr(r.body, "proteus_transformation_in_progress 0");
        free(r.body);
        if (!running) return;
        usleep(20000);
    }
}

static bool post_layout(const char *body) {
    reply r = http("POST", "/v1/layout", body);
    bool ok = r.status == 202;
    free(r.body);
    return ok;
}

/* A merge of [1,1] into [2] with the Nth allocation failing, until it
 * finishes (the worker's allocations, building the TP2 engine, moving the
 * pages, count too): POST answers 202 or a clean error; the layout ends
 * as [2] (done) or [1,1] (rolled back); either way the server is idle with
 * its pages free and answers the reference request the same (TP2 gives the
 * bits of TP1). Then [1,1] again, unarmed. */
static void walk_merge(const request_kind *k) {
    static char ref[FP_CAP], got[FP_CAP], lay[256], why[512];
    reply r = http("POST", k->path, k->body);
    fingerprint(&r, k->stream, ref, sizeof(ref));
    free(r.body);
    long n;
    int done = 0, rolled_back = 0, refused = 0, bad = 0;
    for (n = 1; n < 100000; n++) {
        arm(n, false);
        r = http("POST", "/v1/layout", "{\"layout\":[2]}");
        fingerprint(&r, false, got, sizeof(got));
        bool accepted = r.status == 202, error = !strcmp(got, "error");
        int post_status = r.status;
        free(r.body);
        wait_no_change();
        disarm();
        bool hit = atomic_load(&fired);
        settled_layout(lay, sizeof(lay));
        if (accepted && !strcmp(lay, "[2]")) done++;
        else if ((accepted || error) && !strcmp(lay, "[1,1]")) *(accepted ? &rolled_back : &refused) += 1;
        else if (bad++ < 10) CHECK_MSG(0, "merge: allocation %ld failed: POST answered %d (%s), layout then %s", n,
                                       post_status, error ? "a clean error" : "not a clean error",
                                       lay[0] ? lay : "(unreadable)");
        if (!idle_with_pages_free(why, sizeof(why))) {
            CHECK_MSG(0, "merge: after allocation %ld failed, not idle with its pages free: %s", n, why);
            break;
        }
        r = http("POST", k->path, k->body);
        fingerprint(&r, k->stream, got, sizeof(got));
        free(r.body);
        CHECK_MSG(!strcmp(got, ref), "merge: after allocation %ld failed (layout %s), the request is answered "
                  "differently", n, lay);
        if (!strcmp(lay, "[2]")) {
            CHECK_MSG(post_layout("{\"layout\":[1,1]}"), "merge: the split back was not accepted");
            settled_layout(lay, sizeof(lay));
            CHECK_MSG(!strcmp(lay, "[1,1]"), "merge: the split back left %s", lay);
        }
        if (!hit || bad) break;
    }
    printf("POST /v1/layout [1,1] -> [2]      %-13s %5ld allocations: %d done, %d rolled back, %d refused, %d wrong\n",
           "the Nth only", n - 1, done, rolled_back, refused, bad);
    CHECK_MSG(n > 20, "merge: only %ld allocations", n - 1);
}

/* With every allocation failing, two clients in a row: the first gets the
 * connection memory taken ahead (and no request memory: 503), the second
 * none at all and is answered from the sink (503). Then the server serves. */
static void test_accept_without_memory(void) {
    static char got[FP_CAP], why[512];
    for (int k = 0; k < 2; k++) {
        arm(1, true);
        reply r = http("GET", "/health", NULL);
        disarm();
        fingerprint(&r, false, got, sizeof(got));
        CHECK_MSG(r.status == 503 && !strcmp(got, "error"), "client %d with no memory: HTTP %d %.200s", k + 1,
                  r.status, r.body ? r.body : "(none)");
        free(r.body);
    }
    reply r = http("GET", "/health", NULL);
    CHECK_MSG(r.status == 200, "after clients with no memory: /health answers %d", r.status);
    free(r.body);
    CHECK(idle_with_pages_free(why, sizeof(why)));
}

static void test_walks(void) {
    for (size_t i = 0; i < sizeof(KINDS) / sizeof(KINDS[0]); i++) {
        walk(&KINDS[i], false);
        walk(&KINDS[i], false);
        walk(&KINDS[i], true);
    }
    walk_route("GET", "/v1/layout", NULL, layout_answer, "[1,1]");
    walk_route("GET", "/metrics", NULL, metrics_answer, "metrics");
    walk_route("GET", "/v1/models", NULL, exact_answer, NULL);
    walk_route("POST", "/tokenize", "{\"messages\":[{\"role\":\"user\",\"content\":\"Hi there\"}]}", exact_answer,
               NULL);
    walk_route("POST", "/tokenize", "{\"prompt\":\"Once upon a time\"}", exact_answer, NULL);
    walk_route("POST", "/detokenize", "{\"tokens\":[72,105,32,116,104,101,114,101]}", exact_answer, NULL);
    walk_merge(&KINDS[0]);
}

int main(void) {
    exempt = true; /* the test's own thread; the server's threads start from it but run unexempt */
    port = free_port();
    if (!port) TEST_SKIP("no loopback port");
    char port_s[16];
    snprintf(port_s, sizeof(port_s), "%d", port);
    char *argv[] = {"serve", "--model", "synthetic:tiny-llama", "--chat-template", "chatml", "--port", port_s,
                    "--devices", "cpu:2", "--layout", "1,1", "--allowed-tp", "1,2", "--log-level", "error", NULL};
    pt_server_config cfg;
    pt_server_config_default(&cfg);
    pt_err err = {{0}};
    int rc = pt_config_apply_flags(&cfg, (int)(sizeof(argv) / sizeof(argv[0])) - 1, argv, &err);
    if (rc == PT_OK) rc = pt_config_finalize(&cfg, &err);
    CHECK_MSG(rc == PT_OK, "config: %s", err.msg);
    if (rc != PT_OK) return 1;
    pt_log_set_level(cfg.log_level);
    pthread_t th;
    pthread_create(&th, NULL, server_main, &cfg);
    bool up = false;
    for (int i = 0; i < 600 && !up; i++) {
        reply r = http("GET", "/health", NULL);
        up = r.status == 200;
        free(r.body);
        if (!up) usleep(50000);
    }
    CHECK_MSG(up, "the server did not come up on port %d", port);
    if (up) {
        test_accept_without_memory();
        test_walks();
    }
    kill(getpid(), SIGTERM); /* libuv's handler takes it: a graceful stop */
    pthread_join(th, NULL);
    CHECK_MSG(serve_rc == 0, "pt_serve_run returned %d", serve_rc);
    pt_server_config_free(&cfg);
    printf("%d checks, %d failed\n", test_checks_, test_failures_);
    return test_failures_ ? 1 : 0;
}
