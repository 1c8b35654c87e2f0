/* proteus bench: the HTTP client against a fake server, the replay schedule
 * and the prompt builder.
 *
 * The fake server is plain blocking sockets: an accept thread and one thread
 * per connection, each serving requests one after another (keep-alive).
 * Routes:
 *   /stream    SSE, chunked: 3 text events 50 ms apart (one split across two
 *              writes), a usage chunk saying 7 tokens, [DONE]
 *   /nousage   the same events without the usage chunk
 *   /v1/completions  SSE: max_tokens events 5 ms apart and usage with
 *              completion_tokens = max_tokens, prompt_tokens = the prompt
 *              array's length (checks the replay's request bodies)
 *   /429       429 with an OpenAI error body
 *   /close     closes the connection without answering
 *   /slow      answers after 2 s
 * Every client test ends by closing the client and proving the loop closed
 * cleanly (uv_loop_close returns 0). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bench/client.h"
#include "bench/replay.h"
#include "test.h"

/* ---- fake server ---- */

#define MAX_CONN_THREADS 64

typedef struct {
    int listen_fd, port;
    pthread_t accept_thread;
    pthread_t conns[MAX_CONN_THREADS];
    atomic_int n_conns;
    atomic_int max_active, active; /* concurrent /v1/completions requests being answered */
} fake_server;

static fake_server srv;

static void send_all(int fd, const char *p, size_t n) {
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w <= 0) return;
        p += w;
        n -= (size_t)w;
    }
}

static void send_chunk(int fd, const char *data) {
    char head[32];
    snprintf(head, sizeof(head), "%zx\r\n", strlen(data));
    send_all(fd, head, strlen(head));
    send_all(fd, data, strlen(data));
    send_all(fd, "\r\n", 2);
}

static void sleep_ms(int ms) { usleep((useconds_t)ms * 1000); }

static const char SSE_HEAD[] = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";
static const char TEXT_EVENT[] = "data: {\"choices\":[{\"index\":0,\"text\":\"tok\"}]}\n\n";

static void route_stream(int fd, bool usage) {
    send_all(fd, SSE_HEAD, strlen(SSE_HEAD));
    send_chunk(fd, ": a comment line, ignored\n\n");
    for (int i = 0; i < 3; i++) {
        if (i) sleep_ms(50);
        if (i == 1) {
            /* One event split across two chunks and two TCP writes. */
            send_chunk(fd, "data: {\"choices\":[{\"index\":0,\"te");
            sleep_ms(5);
            send_chunk(fd, "xt\":\"tok\"}]}\r\n\r\n");
        } else {
            send_chunk(fd, TEXT_EVENT);
        }
    }
    /* An event with empty text carries no token and gets no timestamp. */
    send_chunk(fd, "data: {\"choices\":[{\"index\":0,\"text\":\"\",\"finish_reason\":\"length\"}]}\n\n");
    if (usage) send_chunk(fd, "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":7}}\n\ndata: [DONE]\n\n");
    else send_chunk(fd, "data: [DONE]\n\n");
    send_all(fd, "0\r\n\r\n", 5);
}

static void route_completions(int fd, const char *body, size_t len) {
    cJSON *root = cJSON_ParseWithLength(body, len);
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "max_tokens");
    const cJSON *pr = cJSON_GetObjectItemCaseSensitive(root, "prompt");
    const cJSON *ie = cJSON_GetObjectItemCaseSensitive(root, "ignore_eos");
    int n = cJSON_IsNumber(mt) ? mt->valueint : 0;
    int np = cJSON_IsArray(pr) ? cJSON_GetArraySize(pr) : -1;
    bool ignore_eos = cJSON_IsTrue(ie);
    cJSON_Delete(root);
    if (n <= 0 || np <= 0 || !ignore_eos) {
        const char *r = "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: 41\r\n\r\n"
                        "{\"error\":{\"message\":\"bad request body!\"}}";
        send_all(fd, r, strlen(r));
        return;
    }
    send_all(fd, SSE_HEAD, strlen(SSE_HEAD));
    for (int i = 0; i < n; i++) {
        sleep_ms(5);
        send_chunk(fd, TEXT_EVENT);
    }
    char u[160];
    snprintf(u, sizeof(u), "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":%d}}\n\ndata: [DONE]\n\n",
             np, n);
    send_chunk(fd, u);
    send_all(fd, "0\r\n\r\n", 5);
}

/* Reads one request; returns false when the peer closed. */
static bool read_request(int fd, char *buf, size_t cap, char *path, size_t path_cap, char **body, size_t *body_len) {
    size_t len = 0;
    char *end = NULL;
    while (!(end = memmem(buf, len, "\r\n\r\n", 4))) {
        if (len == cap) return false;
        ssize_t r = recv(fd, buf + len, cap - len, 0);
        if (r <= 0) return false;
        len += (size_t)r;
    }
    size_t head = (size_t)(end - buf) + 4;
    size_t cl = 0;
    char *h = strcasestr(buf, "content-length:");
    if (h && h < end) cl = strtoul(h + 15, NULL, 10);
    while (len < head + cl && len < cap) {
        ssize_t r = recv(fd, buf + len, cap - len, 0);
        if (r <= 0) return false;
        len += (size_t)r;
    }
    sscanf(buf, "%*s %255s", path);
    (void)path_cap;
    *body = buf + head;
    *body_len = cl;
    return true;
}

static void *conn_main(void *arg) {
    int fd = (int)(intptr_t)arg;
    size_t cap = 1 << 20;
    char *buf = malloc(cap);
    char path[256];
    char *body;
    size_t blen;
    while (read_request(fd, buf, cap, path, sizeof(path), &body, &blen)) {
        bool keep = true, counted = !strcmp(path, "/v1/completions");
        if (counted) {
            int a = atomic_fetch_add(&srv.active, 1) + 1;
            int m = atomic_load(&srv.max_active);
            while (a > m && !atomic_compare_exchange_weak(&srv.max_active, &m, a)) {
            }
        }
        if (!strcmp(path, "/stream")) {
            route_stream(fd, true);
        } else if (!strcmp(path, "/nousage")) {
            route_stream(fd, false);
        } else if (!strcmp(path, "/v1/completions")) {
            route_completions(fd, body, blen);
        } else if (!strcmp(path, "/429")) {
            const char *b = "{\"error\":{\"message\":\"rate limited: slow down\",\"type\":\"rate_limit\",\"code\":429}}";
            char r[512];
            snprintf(r, sizeof(r), "HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
                     strlen(b), b);
            send_all(fd, r, strlen(r));
        } else if (!strcmp(path, "/slow")) {
            sleep_ms(2000);
            keep = false;
        } else {
            keep = false; /* /close */
        }
        if (counted) atomic_fetch_sub(&srv.active, 1);
        if (!keep) break;
    }
    close(fd);
    free(buf);
    return NULL;
}

static void *accept_main(void *arg) {
    for (;;) {
        int fd = accept(srv.listen_fd, NULL, NULL);
        if (fd < 0) return NULL;
        int i = atomic_fetch_add(&srv.n_conns, 1);
        if (i >= MAX_CONN_THREADS || pthread_create(&srv.conns[i], NULL, conn_main, (void *)(intptr_t)fd) != 0) {
            close(fd);
            return NULL;
        }
    }
}

static void server_start(void) {
    memset(&srv, 0, sizeof(srv));
    srv.listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof(a);
    if (bind(srv.listen_fd, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(srv.listen_fd, 64) != 0 ||
        getsockname(srv.listen_fd, (struct sockaddr *)&a, &al) != 0)
        TEST_SKIP("cannot listen on 127.0.0.1");
    srv.port = ntohs(a.sin_port);
    pthread_create(&srv.accept_thread, NULL, accept_main, NULL);
}

static void server_stop(void) {
    shutdown(srv.listen_fd, SHUT_RDWR);
    close(srv.listen_fd);
    pthread_join(srv.accept_thread, NULL);
    int n = atomic_load(&srv.n_conns);
    for (int i = 0; i < n && i < MAX_CONN_THREADS; i++) pthread_join(srv.conns[i], NULL);
}

static char base_url[64];

/* ---- client fixture: a loop, a client, calls that count their ends ---- */

typedef struct {
    uv_loop_t loop;
    pt_client *cl;
    int done;
} fixture;

static void on_done(pt_client_call *c) { ((fixture *)c->data)->done++; }

static void fixture_init(fixture *f) {
    memset(f, 0, sizeof(*f));
    uv_loop_init(&f->loop);
    pt_err err;
    CHECK_EQ_INT(pt_client_init(&f->cl, &f->loop, base_url, "sk-test", &err), 0);
}

static void call_init(pt_client_call *c, pt_bench_record *rec, fixture *f, const char *path, double timeout) {
    memset(c, 0, sizeof(*c));
    memset(rec, 0, sizeof(*rec));
    c->method = "POST";
    c->path = path;
    c->body = "{}";
    c->body_len = 2;
    c->timeout_s = timeout;
    c->rec = rec;
    c->done = on_done;
    c->data = f;
}

/* Runs the loop until `want` calls have ended. */
static void run_until(fixture *f, int want) {
    while (f->done < want && uv_run(&f->loop, UV_RUN_ONCE)) {
    }
    CHECK_EQ_INT(f->done, want);
}

static void fixture_close(fixture *f) {
    pt_client_close(f->cl);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    CHECK_EQ_INT(uv_loop_close(&f->loop), 0);
}

static void rec_free(pt_bench_record *r) {
    free(r->token_times);
    free(r->error);
}

static void call_free(pt_client_call *c) {
    rec_free(c->rec);
    free(c->resp_body);
}

/* ---- client tests ---- */

static void test_sse_stream_timings_and_usage(void) {
    fixture f;
    fixture_init(&f);
    pt_client_call c;
    pt_bench_record rec;
    call_init(&c, &rec, &f, "/stream", 5);
    CHECK_EQ_INT(pt_client_start(f.cl, &c), 0);
    run_until(&f, 1);
    CHECK(rec.ok);
    CHECK_EQ_INT(rec.status, 200);
    CHECK(rec.error == NULL);
    CHECK_EQ_INT(rec.n_token_times, 3);
    CHECK_EQ_INT(c.n_chunks, 3);
    CHECK_EQ_INT(rec.output_tokens, 7); /* usage wins over the chunk count */
    CHECK_EQ_INT(c.usage_prompt, 5);
    CHECK(c.saw_done);
    if (rec.n_token_times == 3) {
        CHECK(rec.t_first == rec.token_times[0]);
        CHECK(rec.t_first >= rec.t_sent);
        /* The server sleeps 50 ms between events: a gap can only be longer.
         * The upper bound is loose; it catches events held back to the end. */
        for (int i = 1; i < 3; i++) {
            double gap = rec.token_times[i] - rec.token_times[i - 1];
            CHECK_MSG(gap >= 0.045 && gap < 1.0, "gap %d = %.4f s", i, gap);
        }
        CHECK(rec.t_end >= rec.token_times[2]);
    }
    call_free(&c);
    fixture_close(&f);
}

static void test_sse_without_usage_counts_chunks(void) {
    fixture f;
    fixture_init(&f);
    pt_client_call c;
    pt_bench_record rec;
    call_init(&c, &rec, &f, "/nousage", 5);
    CHECK_EQ_INT(pt_client_start(f.cl, &c), 0);
    run_until(&f, 1);
    CHECK(rec.ok);
    CHECK(!c.usage_seen);
    CHECK_EQ_INT(rec.output_tokens, 3);
    call_free(&c);
    fixture_close(&f);
}

static void test_http_error_status_and_message(void) {
    fixture f;
    fixture_init(&f);
    pt_client_call c;
    pt_bench_record rec;
    call_init(&c, &rec, &f, "/429", 5);
    CHECK_EQ_INT(pt_client_start(f.cl, &c), 0);
    run_until(&f, 1);
    CHECK(!rec.ok);
    CHECK_EQ_INT(rec.status, 429);
    CHECK_MSG(rec.error && strstr(rec.error, "rate limited: slow down"), "error '%s'", rec.error ? rec.error : "(null)");
    CHECK_EQ_INT(rec.n_token_times, 0);
    CHECK(rec.t_first < 0);
    call_free(&c);
    fixture_close(&f);
}

static void test_keep_alive_reuses_one_connection(void) {
    fixture f;
    fixture_init(&f);
    pt_client_call c;
    pt_bench_record rec;
    const char *paths[] = {"/nousage", "/429", "/stream"};
    for (int i = 0; i < 3; i++) {
        call_init(&c, &rec, &f, paths[i], 5);
        CHECK_EQ_INT(pt_client_start(f.cl, &c), 0);
        run_until(&f, 1);
        f.done = 0;
        CHECK_EQ_INT(rec.status, i == 1 ? 429 : 200);
        call_free(&c);
    }
    CHECK_EQ_INT(pt_client_connections_opened(f.cl), 1);
    fixture_close(&f);
}

static void test_concurrent_calls_use_parallel_connections(void) {
    fixture f;
    fixture_init(&f);
    enum { N = 4 };
    pt_client_call c[N];
    pt_bench_record rec[N];
    for (int i = 0; i < N; i++) {
        call_init(&c[i], &rec[i], &f, "/stream", 5);
        CHECK_EQ_INT(pt_client_start(f.cl, &c[i]), 0);
    }
    CHECK_EQ_INT(pt_client_in_flight(f.cl), N);
    run_until(&f, N);
    CHECK_EQ_INT(pt_client_connections_opened(f.cl), N);
    for (int i = 0; i < N; i++) {
        CHECK(rec[i].ok);
        CHECK_EQ_INT(rec[i].n_token_times, 3);
        call_free(&c[i]);
    }
    CHECK_EQ_INT(pt_client_in_flight(f.cl), 0);
    fixture_close(&f);
}

static void test_connection_closed_without_answer(void) {
    fixture f;
    fixture_init(&f);
    pt_client_call c;
    pt_bench_record rec;
    call_init(&c, &rec, &f, "/close", 5);
    CHECK_EQ_INT(pt_client_start(f.cl, &c), 0);
    run_until(&f, 1);
    CHECK(!rec.ok);
    CHECK_EQ_INT(rec.status, 0);
    CHECK(rec.error != NULL);
    call_free(&c);
    fixture_close(&f);
}

static void test_connection_refused(void) {
    /* A port that was just free: bind, read it, close. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof(a);
    bind(fd, (struct sockaddr *)&a, sizeof(a));
    getsockname(fd, (struct sockaddr *)&a, &al);
    close(fd);
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", ntohs(a.sin_port));
    fixture f;
    memset(&f, 0, sizeof(f));
    uv_loop_init(&f.loop);
    pt_err err;
    CHECK_EQ_INT(pt_client_init(&f.cl, &f.loop, url, NULL, &err), 0);
    pt_client_call c;
    pt_bench_record rec;
    call_init(&c, &rec, &f, "/stream", 5);
    CHECK_EQ_INT(pt_client_start(f.cl, &c), 0);
    run_until(&f, 1);
    CHECK(!rec.ok);
    CHECK_EQ_INT(rec.status, 0);
    CHECK_MSG(rec.error && strstr(rec.error, "connection refused"), "error '%s'", rec.error ? rec.error : "(null)");
    call_free(&c);
    fixture_close(&f);
}

static void test_timeout_fails_the_call(void) {
    fixture f;
    fixture_init(&f);
    pt_client_call c;
    pt_bench_record rec;
    call_init(&c, &rec, &f, "/slow", 0.2);
    CHECK_EQ_INT(pt_client_start(f.cl, &c), 0);
    run_until(&f, 1);
    CHECK(!rec.ok);
    CHECK_MSG(rec.error && strstr(rec.error, "timeout"), "error '%s'", rec.error ? rec.error : "(null)");
    CHECK_EQ_INT(rec.status, 0);
    CHECK_MSG(rec.t_end - rec.t_sent < 1.5, "timed out after %.3f s", rec.t_end - rec.t_sent);
    call_free(&c);
    fixture_close(&f);
}

static void cancel_from_timer(uv_timer_t *t) {
    pt_client_cancel_all(t->data, "interrupted");
    uv_close((uv_handle_t *)t, NULL);
}

static void test_cancel_all_marks_interrupted(void) {
    fixture f;
    fixture_init(&f);
    pt_client_call c;
    pt_bench_record rec;
    call_init(&c, &rec, &f, "/slow", 10);
    CHECK_EQ_INT(pt_client_start(f.cl, &c), 0);
    uv_timer_t t;
    uv_timer_init(&f.loop, &t);
    t.data = f.cl;
    uv_timer_start(&t, cancel_from_timer, 100, 0);
    run_until(&f, 1);
    CHECK(!rec.ok);
    CHECK_MSG(rec.error && !strcmp(rec.error, "interrupted"), "error '%s'", rec.error ? rec.error : "(null)");
    CHECK_EQ_INT(rec.status, 0);
    CHECK_EQ_INT(pt_client_in_flight(f.cl), 0);
    call_free(&c);
    fixture_close(&f);
}

static void test_base_url_parsing(void) {
    uv_loop_t loop;
    uv_loop_init(&loop);
    pt_client *cl;
    pt_err err;
    CHECK(pt_client_init(&cl, &loop, "https://example.com", NULL, &err) == PT_ERR_INVALID);
    CHECK(pt_client_init(&cl, &loop, "http://127.0.0.1:notaport", NULL, &err) == PT_ERR_INVALID);
    CHECK(pt_client_init(&cl, &loop, "http://127.0.0.1:8000", "bad\r\nkey", &err) == PT_ERR_INVALID);
    CHECK_EQ_INT(pt_client_init(&cl, &loop, "http://127.0.0.1:8000/prefix/", NULL, &err), 0);
    pt_client_close(cl);
    CHECK_EQ_INT(uv_loop_close(&loop), 0);
}

static void test_error_message_shapes(void) {
    char *m = pt_client_error_message("{\"error\":{\"message\":\"a\"}}", 25);
    CHECK(m && !strcmp(m, "a"));
    free(m);
    m = pt_client_error_message("{\"detail\":\"b\"}", 14);
    CHECK(m && !strcmp(m, "b"));
    free(m);
    CHECK(pt_client_error_message("not json", 8) == NULL);
}

/* ---- replay: schedule, lengths, prompts, a whole run ---- */

static void gap_stats(const double *t, size_t n, double *mean, double *var) {
    double s = 0, s2 = 0;
    for (size_t i = 1; i < n; i++) s += t[i] - t[i - 1];
    *mean = s / (double)(n - 1);
    for (size_t i = 1; i < n; i++) s2 += (t[i] - t[i - 1] - *mean) * (t[i] - t[i - 1] - *mean);
    *var = s2 / (double)(n - 2);
}

static void test_gamma_schedule_mean_and_shape(void) {
    enum { N = 20001 };
    double *t = malloc(N * sizeof(double)), *u = malloc(N * sizeof(double));
    const double rates[] = {5.0, 0.5}, shapes[] = {1.0, 0.5, 4.0};
    for (int ri = 0; ri < 2; ri++)
        for (int si = 0; si < 3; si++) {
            double rate = rates[ri], b = shapes[si];
            pt_replay_gamma_times(t, N, rate, b, 1234);
            CHECK(t[0] == 0);
            double mean, var;
            gap_stats(t, N, &mean, &var);
            /* Gamma(b, 1/(rate b)): mean 1/rate, variance 1/(rate^2 b). The
             * sample mean's sd is sqrt(var / n): allow 5 of them. */
            double sd_mean = sqrt(1.0 / (rate * rate * b) / (N - 1));
            CHECK_MSG(fabs(mean - 1.0 / rate) < 5 * sd_mean, "rate %g b %g: mean gap %g", rate, b, mean);
            CHECK_MSG(fabs(var * rate * rate * b - 1.0) < 0.1, "rate %g b %g: var %g", rate, b, var);
        }
    pt_replay_gamma_times(t, N, 2.0, 1.0, 99);
    pt_replay_gamma_times(u, N, 2.0, 1.0, 99);
    CHECK(memcmp(t, u, N * sizeof(double)) == 0);
    pt_replay_gamma_times(u, N, 2.0, 1.0, 100);
    CHECK(memcmp(t, u, N * sizeof(double)) != 0);
    free(t);
    free(u);
}

static void test_lengths_scale_cap_and_fit(void) {
    pt_replay_opts o;
    pt_replay_opts_default(&o);
    uint32_t in, out;
    pt_replay_lengths(&o, 0, 0, &in, &out);
    CHECK(in == 1 && out == 1);
    o.input_scale = 0.5;
    o.output_scale = 2;
    pt_replay_lengths(&o, 101, 10, &in, &out);
    CHECK_EQ_INT(in, 51); /* round(50.5) */
    CHECK_EQ_INT(out, 20);
    o.max_input = 40;
    o.max_output = 15;
    pt_replay_lengths(&o, 101, 10, &in, &out);
    CHECK(in == 40 && out == 15);
    pt_replay_opts_default(&o);
    o.context_len = 100;
    pt_replay_lengths(&o, 90, 30, &in, &out);
    CHECK(in == 70 && out == 30);
    pt_replay_lengths(&o, 90, 300, &in, &out);
    CHECK(in == 1 && out == 99);
    pt_replay_lengths(&o, 50, 50, &in, &out);
    CHECK(in == 50 && out == 50);
}

static void test_prompt_hash_ids_share_prefix(void) {
    int32_t pool[100];
    for (int i = 0; i < 100; i++) pool[i] = 1000 + i;
    enum { LA = 1300, LB = 1500, GUARD = 8 };
    int32_t *a = malloc((LA + GUARD) * sizeof(int32_t)), *b = malloc((LB + GUARD) * sizeof(int32_t));
    int32_t *c = malloc((LA + GUARD) * sizeof(int32_t));
    for (int i = 0; i < GUARD; i++) a[LA + i] = b[LB + i] = -7;
    const uint32_t ha[] = {11, 22, 33}, hb[] = {11, 22, 44};
    pt_prompt_build(a, LA, pool, 100, 5, 0, ha, 3);
    pt_prompt_build(b, LB, pool, 100, 5, 1, hb, 3);
    CHECK(memcmp(a, b, 2 * PT_PROMPT_BLOCK * sizeof(int32_t)) == 0);
    CHECK(memcmp(a + 1024, b + 1024, (LA - 1024) * sizeof(int32_t)) != 0);
    for (int i = 0; i < GUARD; i++) CHECK(a[LA + i] == -7 && b[LB + i] == -7); /* exact length */
    bool in_pool = true;
    for (int i = 0; i < LA; i++) in_pool &= a[i] >= 1000 && a[i] < 1100;
    CHECK(in_pool);
    /* The same request again: identical. Another seed: different. No hash
     * ids: requests differ from each other. */
    pt_prompt_build(c, LA, pool, 100, 5, 0, ha, 3);
    CHECK(memcmp(a, c, LA * sizeof(int32_t)) == 0);
    pt_prompt_build(c, LA, pool, 100, 6, 0, ha, 3);
    CHECK(memcmp(a, c, PT_PROMPT_BLOCK * sizeof(int32_t)) != 0);
    pt_prompt_build(a, LA, pool, 100, 5, 0, NULL, 0);
    pt_prompt_build(c, LA, pool, 100, 5, 1, NULL, 0);
    CHECK(memcmp(a, c, PT_PROMPT_BLOCK * sizeof(int32_t)) != 0);
    free(a);
    free(b);
    free(c);
}

static void make_trace(pt_trace *t, size_t n) {
    memset(t, 0, sizeof(*t));
    t->reqs = calloc(n, sizeof(pt_trace_req));
    t->n = n;
    for (size_t i = 0; i < n; i++) {
        t->reqs[i].t = (double)i * 0.5;
        t->reqs[i].input_len = 10 + (uint32_t)i;
        t->reqs[i].output_len = 1 + (uint32_t)(i % 4);
        t->reqs[i].line = (uint32_t)i + 2;
    }
}

static void test_plan_window_warmup_speedup(void) {
    pt_trace t;
    make_trace(&t, 20);
    pt_replay_opts o;
    pt_replay_opts_default(&o);
    o.start = 2.0;     /* rows 4.. */
    o.duration = 5.0;  /* .. before t = 7: rows 4..13 */
    o.warmup = 2;
    o.num_requests = 5;
    o.speedup = 2.0;
    pt_replay_plan p;
    pt_err err;
    CHECK_EQ_INT(pt_replay_plan_build(&p, &t, &o, &err), 0);
    CHECK_EQ_INT(p.n, 7);
    CHECK_EQ_INT(p.n_warmup, 2);
    CHECK(p.reqs[0].warmup && p.reqs[1].warmup && !p.reqs[2].warmup);
    CHECK_EQ_INT(p.reqs[0].input_len, 14);
    CHECK_EQ_INT(p.reqs[2].input_len, 16);
    for (int i = 2; i < 7; i++) CHECK_NEAR(p.reqs[i].t, (i - 2) * 0.25, 1e-12);
    pt_replay_plan_free(&p);
    o.num_requests = 0; /* the whole window: 10 rows, 2 of them warmup */
    CHECK_EQ_INT(pt_replay_plan_build(&p, &t, &o, &err), 0);
    CHECK_EQ_INT(p.n, 10);
    pt_replay_plan_free(&p);
    o.start = 100; /* empty window */
    CHECK(pt_replay_plan_build(&p, &t, &o, &err) != 0);
    free(t.reqs);
}

static void test_replay_run_against_fake_server(void) {
    pt_trace t;
    make_trace(&t, 8);
    pt_replay_opts o;
    pt_replay_opts_default(&o);
    o.rate = 200; /* all due almost at once: the concurrency cap decides */
    o.seed = 3;
    pt_replay_plan p;
    pt_err err;
    CHECK_EQ_INT(pt_replay_plan_build(&p, &t, &o, &err), 0);
    int32_t pool[32];
    for (int i = 0; i < 32; i++) pool[i] = 500 + i;
    pt_replay_run_opts ro = {.base_url = base_url, .endpoint = "/v1/completions", .model = "m\"odel", .pool = pool,
                             .n_pool = 32, .seed = 3, .timeout_s = 10, .max_concurrency = 2};
    pt_bench_record *recs = calloc(p.n, sizeof(*recs));
    size_t n_rec = 0;
    bool intr = true;
    atomic_store(&srv.max_active, 0);
    CHECK_EQ_INT(pt_replay_run(&p, &ro, recs, &n_rec, &intr, &err), 0);
    CHECK_EQ_INT(n_rec, 8);
    CHECK(!intr);
    for (size_t i = 0; i < n_rec; i++) {
        CHECK_MSG(recs[i].ok, "request %zu: %s", i, recs[i].error ? recs[i].error : "");
        CHECK_EQ_INT(recs[i].index, i);
        CHECK_EQ_INT(recs[i].input_tokens, 10 + i);
        CHECK_EQ_INT(recs[i].expected_output, 1 + i % 4);
        CHECK_EQ_INT(recs[i].output_tokens, recs[i].expected_output);
        CHECK_EQ_INT(recs[i].n_token_times, recs[i].expected_output);
        CHECK(recs[i].t_sent >= recs[i].t_scheduled - 0.001);
    }
    /* At most 2 in flight, seen from both ends. */
    CHECK_MSG(atomic_load(&srv.max_active) <= 2, "server saw %d at once", atomic_load(&srv.max_active));
    for (size_t i = 0; i < n_rec; i++) {
        int overlap = 0;
        for (size_t j = 0; j < n_rec; j++)
            if (recs[j].t_sent <= recs[i].t_sent && recs[j].t_end > recs[i].t_sent) overlap++;
        CHECK_MSG(overlap <= 2, "request %zu sent with %d in flight", i, overlap);
    }
    for (size_t i = 0; i < n_rec; i++) rec_free(&recs[i]);
    free(recs);
    pt_replay_plan_free(&p);
    free(t.reqs);
}

static void test_fetch_helper(void) {
    int status;
    char *body;
    size_t len;
    pt_err err;
    CHECK_EQ_INT(pt_client_fetch(base_url, NULL, "POST", "/429", "{}", 5, &status, &body, &len, &err), 0);
    CHECK_EQ_INT(status, 429);
    CHECK(body && strstr(body, "rate limited"));
    free(body);
    CHECK(pt_client_fetch(base_url, NULL, "POST", "/close", "{}", 5, &status, &body, &len, &err) != 0);
}

static void test_start(void) {
    server_start();
    snprintf(base_url, sizeof(base_url), "http://127.0.0.1:%d", srv.port);
}

static void test_stop(void) { server_stop(); }

TEST_MAIN(TEST(test_start), TEST(test_sse_stream_timings_and_usage), TEST(test_sse_without_usage_counts_chunks),
          TEST(test_http_error_status_and_message), TEST(test_keep_alive_reuses_one_connection),
          TEST(test_concurrent_calls_use_parallel_connections), TEST(test_connection_closed_without_answer),
          TEST(test_connection_refused), TEST(test_timeout_fails_the_call), TEST(test_cancel_all_marks_interrupted),
          TEST(test_base_url_parsing), TEST(test_error_message_shapes), TEST(test_fetch_helper),
          TEST(test_gamma_schedule_mean_and_shape), TEST(test_lengths_scale_cap_and_fit),
          TEST(test_prompt_hash_ids_share_prefix), TEST(test_plan_window_warmup_speedup),
          TEST(test_replay_run_against_fake_server), TEST(test_stop))
