/* HTTP server tests. Each test starts a server on 127.0.0.1, port 0, in a
 * libuv loop on its own thread, drives it with plain blocking sockets (2 s
 * receive timeouts, so a bug fails a check instead of hanging), then stops it
 * through a uv_async and proves the loop closed cleanly: on_closed ran once,
 * uv_run returned 0 and uv_loop_close returned 0. The application side
 * counts the requests it owns (`live`), which must be back to 0 at the end.
 *
 * Routes: /echo (body back, request fields in X-* headers), /async?ms=N
 * (responds from a timer), /stream?n=N&ms=D&size=S (N chunks, one per D ms,
 * or as fast as backpressure allows when D = 0). */
#define _GNU_SOURCE /* memmem */
#include <pthread.h>
#include <stdatomic.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <unistd.h>

#include "proteus/http.h"
#include "test.h"

/* ---- Server fixture ---- */

typedef struct {
    pt_http_limits lim;
    uv_loop_t loop;
    uv_async_t stop_async;
    pt_http_server *srv;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int port; /* 0 until listening, -1 on failure */
    int run_rc, loop_close_rc;
    pt_http_stats final_stats;
    atomic_int closed_calls;
    atomic_int live;         /* requests the application owns */
    atomic_int aborts;       /* on_abort calls */
    atomic_int backpressure; /* stream_write returned > 0 */
    atomic_int drains;       /* on_drain calls */
    atomic_int async_started;
    atomic_long stream_bytes; /* body bytes accepted by stream_write */
} fixture;

static long query_int(const char *q, const char *key, long dflt) {
    size_t klen = strlen(key);
    for (const char *p = q; p && *p;) {
        if (strncmp(p, key, klen) == 0 && p[klen] == '=') return strtol(p + klen + 1, NULL, 10);
        p = strchr(p, '&');
        if (p) p++;
    }
    return dflt;
}

static void app_end(fixture *f) { atomic_fetch_sub(&f->live, 1); }

/* /async: respond from a timer. The state is freed in the timer's close
 * callback. */
typedef struct {
    fixture *f;
    pt_http_request *req;
    uv_timer_t timer;
} async_op;

static void async_closed(uv_handle_t *h) { free(h->data); }

static void async_fire(uv_timer_t *t) {
    async_op *op = t->data;
    pt_http_respond(op->req, 200, "text/plain", "async done", 10, NULL);
    app_end(op->f);
    uv_close((uv_handle_t *)&op->timer, async_closed);
}

static void async_abort(void *ctx) {
    async_op *op = ctx;
    atomic_fetch_add(&op->f->aborts, 1);
    pt_http_request_release(op->req);
    app_end(op->f);
    uv_close((uv_handle_t *)&op->timer, async_closed);
}

/* /stream */
typedef struct {
    fixture *f;
    pt_http_request *req;
    uv_timer_t timer;
    long i, n, ms, size;
    char *chunk;
    bool ended;
} stream_op;

static void stream_closed(uv_handle_t *h) {
    stream_op *op = h->data;
    free(op->chunk);
    free(op);
}

static void stream_finish(stream_op *op, bool aborted) {
    if (op->ended) return;
    op->ended = true;
    if (aborted) pt_http_request_release(op->req);
    else pt_http_stream_end(op->req);
    app_end(op->f);
    uv_close((uv_handle_t *)&op->timer, stream_closed);
}

static void stream_tick(uv_timer_t *t) {
    stream_op *op = t->data;
    do {
        if (op->i == op->n) {
            stream_finish(op, false);
            return;
        }
        const char *data = op->chunk;
        size_t len = (size_t)op->size;
        char small[32];
        if (!op->chunk) {
            len = (size_t)snprintf(small, sizeof small, "chunk%ld\n", op->i);
            data = small;
        }
        int rc = pt_http_stream_write(op->req, data, len);
        if (rc < 0) { /* gone: on_abort follows */
            uv_timer_stop(&op->timer);
            return;
        }
        op->i++;
        atomic_fetch_add(&op->f->stream_bytes, (long)len);
        if (rc > 0) {
            atomic_fetch_add(&op->f->backpressure, 1);
            uv_timer_stop(&op->timer); /* wait for on_drain */
            return;
        }
    } while (op->ms == 0);
}

static void stream_drain(void *ctx) {
    stream_op *op = ctx;
    atomic_fetch_add(&op->f->drains, 1);
    if (!op->ended) uv_timer_start(&op->timer, stream_tick, 0, (uint64_t)op->ms);
}

static void stream_abort(void *ctx) {
    stream_op *op = ctx;
    atomic_fetch_add(&op->f->aborts, 1);
    uv_timer_stop(&op->timer);
    stream_finish(op, true);
}

static void handler(void *user, pt_http_request *req) {
    fixture *f = user;
    atomic_fetch_add(&f->live, 1);
    const char *path = pt_http_path(req);
    if (strcmp(path, "/echo") == 0) {
        size_t len;
        const char *body = pt_http_body(req, &len);
        const char *auth = pt_http_header(req, "AUTHORIZATION");
        char extra[512];
        snprintf(extra, sizeof extra, "X-Method: %s\r\nX-Path: %s\r\nX-Query: %s\r\nX-Auth: %s\r\n",
                 pt_http_method(req), path, pt_http_query(req), auth ? auth : "(none)");
        pt_http_request_set_log_extra(req, "route=echo");
        pt_http_respond(req, 200, "text/plain", body, len, extra);
        app_end(f);
    } else if (strcmp(path, "/async") == 0) {
        async_op *op = calloc(1, sizeof *op);
        op->f = f;
        op->req = req;
        uv_timer_init(&f->loop, &op->timer);
        op->timer.data = op;
        pt_http_request_set_callbacks(req, NULL, async_abort, op);
        uv_timer_start(&op->timer, async_fire, (uint64_t)query_int(pt_http_query(req), "ms", 10), 0);
        atomic_fetch_add(&f->async_started, 1);
    } else if (strcmp(path, "/stream") == 0) {
        stream_op *op = calloc(1, sizeof *op);
        op->f = f;
        op->req = req;
        const char *q = pt_http_query(req);
        op->n = query_int(q, "n", 5);
        op->ms = query_int(q, "ms", 10);
        op->size = query_int(q, "size", 0);
        if (op->size > 0) {
            op->chunk = malloc((size_t)op->size);
            memset(op->chunk, 'x', (size_t)op->size);
        }
        uv_timer_init(&f->loop, &op->timer);
        op->timer.data = op;
        pt_http_request_set_callbacks(req, stream_drain, stream_abort, op);
        pt_http_stream_begin(req, 200, "text/event-stream", "Cache-Control: no-cache\r\n");
        uv_timer_start(&op->timer, stream_tick, (uint64_t)op->ms, (uint64_t)op->ms);
    } else if (strcmp(path, "/drop") == 0) {
        pt_http_request_release(req); /* no response: the connection closes */
        app_end(f);
    } else {
        pt_http_respond_error(req, 404, NULL, "no such route", NULL);
        app_end(f);
    }
}

static void on_closed(void *arg) {
    fixture *f = arg;
    atomic_fetch_add(&f->closed_calls, 1);
}

static void stop_cb(uv_async_t *a) {
    fixture *f = a->data;
    pt_http_server_stats(f->srv, &f->final_stats);
    pt_http_server_close(f->srv, on_closed, f);
    uv_close((uv_handle_t *)&f->stop_async, NULL);
}

static void *server_thread(void *arg) {
    fixture *f = arg;
    uv_loop_init(&f->loop);
    uv_async_init(&f->loop, &f->stop_async, stop_cb);
    f->stop_async.data = f;
    pt_err err;
    int rc = pt_http_server_start(&f->srv, &f->loop, "127.0.0.1", 0, &f->lim, handler, f, &err);
    pthread_mutex_lock(&f->mu);
    f->port = rc == 0 ? pt_http_server_port(f->srv) : -1;
    pthread_cond_signal(&f->cv);
    pthread_mutex_unlock(&f->mu);
    if (rc != 0) {
        fprintf(stderr, "server start: %s\n", err.msg);
        uv_close((uv_handle_t *)&f->stop_async, NULL);
    }
    f->run_rc = uv_run(&f->loop, UV_RUN_DEFAULT);
    f->loop_close_rc = uv_loop_close(&f->loop);
    return NULL;
}

static fixture *fixture_start(const pt_http_limits *lim) {
    fixture *f = calloc(1, sizeof *f);
    f->lim = lim ? *lim : pt_http_limits_default();
    pthread_mutex_init(&f->mu, NULL);
    pthread_cond_init(&f->cv, NULL);
    pthread_create(&f->thread, NULL, server_thread, f);
    pthread_mutex_lock(&f->mu);
    while (f->port == 0) pthread_cond_wait(&f->cv, &f->mu);
    pthread_mutex_unlock(&f->mu);
    CHECK(f->port > 0);
    return f;
}

/* Waits for the loop thread (stopped by stop_async) and proves the loop
 * closed cleanly; f->final_stats then holds the stats taken at the stop. */
static void fixture_join(fixture *f) {
    pthread_join(f->thread, NULL);
    CHECK_EQ_INT(atomic_load(&f->closed_calls), 1);
    CHECK_EQ_INT(f->run_rc, 0);
    CHECK_EQ_INT(f->loop_close_rc, 0);
    CHECK_EQ_INT(atomic_load(&f->live), 0);
    pthread_mutex_destroy(&f->mu);
    pthread_cond_destroy(&f->cv);
}

static void fixture_stop(fixture *f) {
    uv_async_send(&f->stop_async);
    fixture_join(f);
    free(f);
}

static void sleep_ms(int ms) { usleep((useconds_t)ms * 1000); }

/* Polls until *v >= want or about 2 s have passed. */
static bool wait_for(atomic_int *v, int want) {
    for (int i = 0; i < 400; i++) {
        if (atomic_load(v) >= want) return true;
        sleep_ms(5);
    }
    return atomic_load(v) >= want;
}

/* ---- Blocking test client ---- */

typedef struct {
    int fd;
    char *buf;
    size_t len, cap;
} client;

static void client_open(client *c, int port, int rcvbuf) {
    memset(c, 0, sizeof *c);
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    if (rcvbuf) setsockopt(c->fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    struct timeval tv = {.tv_sec = 2};
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    int rc = connect(c->fd, (struct sockaddr *)&a, sizeof a);
    CHECK_EQ_INT(rc, 0);
    c->cap = 1 << 16;
    c->buf = malloc(c->cap);
}

static void client_close(client *c) {
    close(c->fd);
    free(c->buf);
}

static void client_send(client *c, const char *s) {
    size_t len = strlen(s), off = 0;
    while (off < len) {
        ssize_t n = send(c->fd, s + off, len - off, MSG_NOSIGNAL);
        if (n <= 0) break;
        off += (size_t)n;
    }
    CHECK_EQ_INT(off, len);
}

/* Reads more bytes into the buffer: > 0 read, 0 EOF, < 0 timeout/error. */
static ssize_t client_fill(client *c) {
    if (c->cap - c->len < 4096) {
        c->cap *= 2;
        c->buf = realloc(c->buf, c->cap);
    }
    return recv(c->fd, c->buf + c->len, c->cap - c->len, 0);
}

static void client_consume(client *c, size_t n) {
    memmove(c->buf, c->buf + n, c->len - n);
    c->len -= n;
}

/* True when the server closed the connection (EOF with nothing more). */
static bool client_eof(client *c) {
    if (c->len) return false;
    ssize_t n = client_fill(c);
    if (n > 0) c->len += (size_t)n;
    return n == 0;
}

typedef struct {
    int status;
    char head[4096];
    char *body;
    size_t body_len;
} response;

static const char *resp_header(const response *r, const char *name, char *out, size_t cap) {
    size_t nlen = strlen(name);
    for (const char *p = strstr(r->head, "\r\n"); p; p = strstr(p + 2, "\r\n")) {
        if (strncasecmp(p + 2, name, nlen) == 0 && p[2 + nlen] == ':') {
            const char *v = p + 3 + nlen;
            while (*v == ' ') v++;
            const char *e = strstr(v, "\r\n");
            size_t n = e ? (size_t)(e - v) : strlen(v);
            if (n >= cap) n = cap - 1;
            memcpy(out, v, n);
            out[n] = 0;
            return out;
        }
    }
    return NULL;
}

/* Makes sure at least n bytes are buffered; false on EOF or timeout. */
static bool client_need(client *c, size_t n) {
    while (c->len < n) {
        ssize_t got = client_fill(c);
        if (got <= 0) return false;
        c->len += (size_t)got;
    }
    return true;
}

static bool client_line(client *c, size_t *line_len) {
    for (;;) {
        char *e = c->len ? memmem(c->buf, c->len, "\r\n", 2) : NULL;
        if (e) {
            *line_len = (size_t)(e - c->buf);
            return true;
        }
        ssize_t got = client_fill(c);
        if (got <= 0) return false;
        c->len += (size_t)got;
    }
}

/* Reads one response (status line, headers, body by Content-Length, chunked
 * or close). Returns false on timeout or a malformed response. */
static bool read_response(client *c, response *r) {
    memset(r, 0, sizeof *r);
    char *end;
    while (!(end = c->len ? memmem(c->buf, c->len, "\r\n\r\n", 4) : NULL)) {
        ssize_t got = client_fill(c);
        if (got <= 0) return false;
        c->len += (size_t)got;
    }
    size_t hlen = (size_t)(end - c->buf) + 4;
    if (hlen >= sizeof r->head) return false;
    memcpy(r->head, c->buf, hlen);
    r->head[hlen] = 0;
    client_consume(c, hlen);
    if (sscanf(r->head, "HTTP/1.%*d %d", &r->status) != 1) return false;
    if (r->status < 200) return true;
    char v[64];
    r->body = malloc(1);
    if (resp_header(r, "content-length", v, sizeof v)) {
        size_t n = strtoul(v, NULL, 10);
        if (!client_need(c, n)) return false;
        r->body = realloc(r->body, n + 1);
        memcpy(r->body, c->buf, n);
        r->body_len = n;
        client_consume(c, n);
    } else if (resp_header(r, "transfer-encoding", v, sizeof v)) {
        for (;;) {
            size_t ll;
            if (!client_line(c, &ll)) return false;
            size_t n = strtoul(c->buf, NULL, 16);
            client_consume(c, ll + 2);
            if (!client_need(c, n + 2)) return false;
            r->body = realloc(r->body, r->body_len + n + 1);
            memcpy(r->body + r->body_len, c->buf, n);
            r->body_len += n;
            client_consume(c, n + 2);
            if (n == 0) break;
        }
    } else { /* close-delimited */
        for (;;) {
            ssize_t got = client_fill(c);
            if (got < 0) return false;
            if (got == 0) break;
            c->len += (size_t)got;
        }
        r->body = realloc(r->body, c->len + 1);
        memcpy(r->body, c->buf, c->len);
        r->body_len = c->len;
        c->len = 0;
    }
    r->body[r->body_len] = 0;
    return true;
}

static void response_free(response *r) {
    free(r->body);
    r->body = NULL;
}

static bool header_is(const response *r, const char *name, const char *want) {
    char v[256];
    return resp_header(r, name, v, sizeof v) && strcmp(v, want) == 0;
}

/* ---- Tests ---- */

static void test_const_time_eq(void) {
    CHECK(pt_http_const_time_eq("sk-abc", 6, "sk-abc", 6));
    CHECK(!pt_http_const_time_eq("sk-abc", 6, "sk-abd", 6));
    CHECK(!pt_http_const_time_eq("sk-ab", 5, "sk-abc", 6));
    CHECK(!pt_http_const_time_eq("sk-abcd", 7, "sk-abc", 6));
    CHECK(!pt_http_const_time_eq("", 0, "x", 1));
    CHECK(pt_http_const_time_eq("", 0, "", 0));
    CHECK(!pt_http_const_time_eq("a\0b", 3, "a\0c", 3));
}

static void test_get_and_post(void) {
    fixture *f = fixture_start(NULL);
    client c;
    response r;
    client_open(&c, f->port, 0);
    client_send(&c, "GET /echo?x=1&y=2 HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer sk-1  \r\n\r\n");
    CHECK(read_response(&c, &r));
    CHECK_EQ_INT(r.status, 200);
    CHECK(header_is(&r, "x-method", "GET"));
    CHECK(header_is(&r, "x-path", "/echo"));
    CHECK(header_is(&r, "x-query", "x=1&y=2"));
    CHECK(header_is(&r, "x-auth", "Bearer sk-1"));
    CHECK(header_is(&r, "content-length", "0"));
    CHECK(header_is(&r, "connection", "keep-alive"));
    response_free(&r);

    client_send(&c, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\nhello world");
    CHECK(read_response(&c, &r));
    CHECK_EQ_INT(r.status, 200);
    CHECK(header_is(&r, "x-method", "POST"));
    CHECK_EQ_INT(r.body_len, 11);
    CHECK(strcmp(r.body, "hello world") == 0);
    response_free(&r);

    client_send(&c, "GET /nope HTTP/1.1\r\nHost: t\r\n\r\n");
    CHECK(read_response(&c, &r));
    CHECK_EQ_INT(r.status, 404);
    CHECK(strcmp(r.body, "{\"error\":{\"message\":\"no such route\",\"type\":\"invalid_request_error\","
                         "\"param\":null,\"code\":404}}") == 0);
    response_free(&r);
    client_close(&c);
    fixture_stop(f);
}

static void test_keep_alive_and_http10(void) {
    fixture *f = fixture_start(NULL);
    client c;
    response r;
    /* Two requests on one HTTP/1.1 connection, the second closing it. */
    client_open(&c, f->port, 0);
    client_send(&c, "GET /echo HTTP/1.1\r\nHost: t\r\n\r\n");
    CHECK(read_response(&c, &r));
    CHECK_EQ_INT(r.status, 200);
    response_free(&r);
    client_send(&c, "GET /echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    CHECK(read_response(&c, &r));
    CHECK_EQ_INT(r.status, 200);
    CHECK(header_is(&r, "connection", "close"));
    response_free(&r);
    CHECK(client_eof(&c));
    client_close(&c);

    /* HTTP/1.0: closes unless asked to keep alive. */
    client_open(&c, f->port, 0);
    client_send(&c, "GET /echo HTTP/1.0\r\n\r\n");
    CHECK(read_response(&c, &r));
    CHECK(header_is(&r, "connection", "close"));
    response_free(&r);
    CHECK(client_eof(&c));
    client_close(&c);

    client_open(&c, f->port, 0);
    client_send(&c, "GET /echo HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    CHECK(read_response(&c, &r));
    CHECK(header_is(&r, "connection", "keep-alive"));
    response_free(&r);
    client_send(&c, "GET /echo?again HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    CHECK(read_response(&c, &r));
    CHECK(header_is(&r, "x-query", "again"));
    response_free(&r);
    client_close(&c);
    fixture_stop(f);
}

static void test_pipelined_in_order(void) {
    fixture *f = fixture_start(NULL);
    client c;
    response r;
    client_open(&c, f->port, 0);
    /* The first response is asynchronous and slower than the second would
     * be: order proves the second is parsed only after the first is done. */
    client_send(&c, "GET /async?ms=50 HTTP/1.1\r\nHost: t\r\n\r\n"
                    "POST /echo?second HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc"
                    "GET /echo?third HTTP/1.1\r\nHost: t\r\n\r\n");
    CHECK(read_response(&c, &r));
    CHECK_EQ_INT(r.status, 200);
    CHECK(strcmp(r.body, "async done") == 0);
    response_free(&r);
    CHECK(read_response(&c, &r));
    CHECK(header_is(&r, "x-query", "second"));
    CHECK(strcmp(r.body, "abc") == 0);
    response_free(&r);
    CHECK(read_response(&c, &r));
    CHECK(header_is(&r, "x-query", "third"));
    response_free(&r);
    /* A request that arrives while another is in flight waits its turn. */
    client_send(&c, "GET /async?ms=40 HTTP/1.1\r\nHost: t\r\n\r\n");
    sleep_ms(10);
    client_send(&c, "GET /echo?later HTTP/1.1\r\nHost: t\r\n\r\n");
    CHECK(read_response(&c, &r));
    CHECK(strcmp(r.body, "async done") == 0);
    response_free(&r);
    CHECK(read_response(&c, &r));
    CHECK(header_is(&r, "x-query", "later"));
    response_free(&r);
    client_close(&c);
    fixture_stop(f);
}

static void test_release_without_response_closes(void) {
    fixture *f = fixture_start(NULL);
    client c;
    client_open(&c, f->port, 0);
    client_send(&c, "GET /drop HTTP/1.1\r\nHost: t\r\n\r\n");
    CHECK(client_eof(&c));
    client_close(&c);
    fixture_stop(f);
}

/* The access log names method, path and status, and never a header value
 * or the query (both may carry keys). */
static void test_access_log_has_no_secrets(void) {
    char tmpl[] = "/tmp/test_http_log_XXXXXX";
    int logfd = mkstemp(tmpl);
    CHECK(logfd >= 0);
    fflush(stderr);
    int saved = dup(2);
    dup2(logfd, 2);
    fixture *f = fixture_start(NULL);
    client c;
    response r;
    client_open(&c, f->port, 0);
    client_send(&c, "POST /echo?api_key=sk-query-secret HTTP/1.1\r\nHost: t\r\n"
                    "Authorization: Bearer sk-header-secret\r\nContent-Length: 2\r\n\r\nhi");
    CHECK(read_response(&c, &r) && r.status == 200);
    response_free(&r);
    client_close(&c);
    fixture_stop(f); /* every log line is written once the loop thread is joined */
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    char log[4096] = {0};
    ssize_t n = pread(logfd, log, sizeof log - 1, 0);
    close(logfd);
    unlink(tmpl);
    CHECK(n > 0);
    CHECK_MSG(strstr(log, "POST /echo 200 ") != NULL, "log: %s", log);
    CHECK(strstr(log, "route=echo") != NULL);
    CHECK(strstr(log, "sk-header-secret") == NULL);
    CHECK(strstr(log, "sk-query-secret") == NULL);
}

static void test_oversize_header_431(void) {
    pt_http_limits lim = pt_http_limits_default();
    lim.max_header_bytes = 1024;
    fixture *f = fixture_start(&lim);
    client c;
    response r;
    client_open(&c, f->port, 0);
    char req[4096];
    char big[2001];
    memset(big, 'a', 2000);
    big[2000] = 0;
    snprintf(req, sizeof req, "GET /echo HTTP/1.1\r\nHost: t\r\nX-Big: %s\r\n\r\n", big);
    client_send(&c, req);
    CHECK(read_response(&c, &r));
    CHECK_EQ_INT(r.status, 431);
    CHECK(strstr(r.body, "\"type\":\"invalid_request_error\",\"param\":null,\"code\":431}}") != NULL);
    CHECK(header_is(&r, "content-type", "application/json"));
    response_free(&r);
    CHECK(client_eof(&c));
    client_close(&c);
    /* Just under the limit is fine. */
    client_open(&c, f->port, 0);
    big[900] = 0;
    snprintf(req, sizeof req, "GET /echo HTTP/1.1\r\nHost: t\r\nX-Big: %s\r\n\r\n", big);
    client_send(&c, req);
    CHECK(read_response(&c, &r));
    CHECK_EQ_INT(r.status, 200);
    response_free(&r);
    client_close(&c);
    fixture_stop(f);
}

static void test_oversize_body_413(void) {
    pt_http_limits lim = pt_http_limits_default();
    lim.max_body_bytes = 1024;
    fixture *f = fixture_start(&lim);
    client c;
    response r;
    /* Announced too large: answered before any body byte is sent. */
    client_open(&c, f->port, 0);
    client_send(&c, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n");
    CHECK(read_response(&c, &r));
    CHECK_EQ_INT(r.status, 413);
    CHECK(strstr(r.body, "\"code\":413") != NULL);
    response_free(&r);
    CHECK(client_eof(&c));
    client_close(&c);
    /* Chunked, growing past the limit. */
    client_open(&c, f->port, 0);
    char req[4096];
    char big[1501];
    memset(big, 'b', 1500);
    big[1500] = 0;
    snprintf(req, sizeof req,
             "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5dc\r\n%s\r\n0\r\n\r\n", big);
    client_send(&c, req);
    CHECK(read_response(&c, &r));
    CHECK_EQ_INT(r.status, 413);
    response_free(&r);
    client_close(&c);
    CHECK_EQ_INT(atomic_load(&f->live), 0); /* the handler never saw either */
    fixture_stop(f);
}

static void test_malformed_400(void) {
    fixture *f = fixture_start(NULL);
    static const char *bad[] = {
        "BLAH\r\n\r\n",
        "GET / HTTP/1.1\r\nHost t\r\n\r\n",
        "GET / HTTP/9.9\r\n\r\n",
        "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\nxx",
        "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        /* Both framings at once: the classic request-smuggling shape. */
        "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        "0\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        client c;
        response r;
        client_open(&c, f->port, 0);
        client_send(&c, bad[i]);
        CHECK_MSG(read_response(&c, &r), "request %zu", i);
        CHECK_MSG(r.status == 400, "request %zu: status %d", i, r.status);
        CHECK(r.body && strstr(r.body, "\"code\":400") != NULL);
        response_free(&r);
        CHECK(client_eof(&c));
        client_close(&c);
    }
    CHECK_EQ_INT(atomic_load(&f->live), 0);
    fixture_stop(f);
}

static void test_chunked_request_body(void) {
    fixture *f = fixture_start(NULL);
    client c;
    response r;
    client_open(&c, f->port, 0);
    client_send(&c, "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                    "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
    CHECK(read_response(&c, &r));
    CHECK_EQ_INT(r.status, 200);
    CHECK(strcmp(r.body, "hello world") == 0);
    response_free(&r);
    client_close(&c);
    fixture_stop(f);
}

static void test_expect_100_continue(void) {
    fixture *f = fixture_start(NULL);
    client c;
    response r;
    client_open(&c, f->port, 0);
    client_send(&c, "POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n");
    CHECK(read_response(&c, &r));
    CHECK_EQ_INT(r.status, 100);
    client_send(&c, "body");
    CHECK(read_response(&c, &r));
    CHECK_EQ_INT(r.status, 200);
    CHECK(strcmp(r.body, "body") == 0);
    response_free(&r);
    client_close(&c);
    fixture_stop(f);
}

static void test_stream_chunked(void) {
    fixture *f = fixture_start(NULL);
    client c;
    response r;
    client_open(&c, f->port, 0);
    client_send(&c, "GET /stream?n=5&ms=5 HTTP/1.1\r\nHost: t\r\n\r\n");
    CHECK(read_response(&c, &r));
    CHECK_EQ_INT(r.status, 200);
    CHECK(header_is(&r, "transfer-encoding", "chunked"));
    CHECK(header_is(&r, "content-type", "text/event-stream"));
    CHECK(header_is(&r, "cache-control", "no-cache"));
    CHECK(strcmp(r.body, "chunk0\nchunk1\nchunk2\nchunk3\nchunk4\n") == 0);
    response_free(&r);
    /* The connection is reusable after the stream. */
    client_send(&c, "GET /echo?after HTTP/1.1\r\nHost: t\r\n\r\n");
    CHECK(read_response(&c, &r));
    CHECK(header_is(&r, "x-query", "after"));
    response_free(&r);
    client_close(&c);
    /* HTTP/1.0: close-delimited. */
    client_open(&c, f->port, 0);
    client_send(&c, "GET /stream?n=3&ms=1 HTTP/1.0\r\n\r\n");
    CHECK(read_response(&c, &r));
    CHECK(header_is(&r, "connection", "close"));
    CHECK(strcmp(r.body, "chunk0\nchunk1\nchunk2\n") == 0);
    response_free(&r);
    client_close(&c);
    fixture_stop(f);
}

static void test_disconnect_mid_stream_aborts_once(void) {
    fixture *f = fixture_start(NULL);
    client c;
    client_open(&c, f->port, 0);
    client_send(&c, "GET /stream?n=100000&ms=2 HTTP/1.1\r\nHost: t\r\n\r\n");
    CHECK(client_need(&c, 1));
    CHECK(memmem(c.buf, c.len, "HTTP/1.1 200", 12) != NULL);
    client_close(&c);
    CHECK(wait_for(&f->aborts, 1));
    sleep_ms(20); /* a second on_abort would arrive here */
    CHECK_EQ_INT(atomic_load(&f->aborts), 1);
    fixture_stop(f);
}

static void test_slow_reader_backpressure(void) {
    pt_http_limits lim = pt_http_limits_default();
    lim.max_out_buffer = 256 * 1024;
    fixture *f = fixture_start(&lim);
    client c;
    /* A small receive buffer keeps the kernel from absorbing the stream. */
    client_open(&c, f->port, 16 * 1024);
    const long chunk = 16384, n = 640; /* 10 MiB */
    char req[128];
    snprintf(req, sizeof req, "GET /stream?n=%ld&ms=0&size=%ld HTTP/1.1\r\nHost: t\r\n\r\n", n, chunk);
    client_send(&c, req);
    CHECK(wait_for(&f->backpressure, 1));
    sleep_ms(100);
    long written = atomic_load(&f->stream_bytes);
    CHECK_MSG(written < n * chunk, "wrote %ld of %ld bytes to a client that reads nothing", written,
              n * chunk);
    /* Reading lets the buffer drain (on_drain) and the stream go on. */
    long got = 0;
    while (got < 4 * 1024 * 1024) {
        char buf[65536];
        ssize_t k = recv(c.fd, buf, sizeof buf, 0);
        if (k <= 0) break;
        got += k;
    }
    CHECK(got >= 4 * 1024 * 1024);
    CHECK(atomic_load(&f->drains) >= 1);
    client_close(&c);
    CHECK(wait_for(&f->aborts, 1));
    uv_async_send(&f->stop_async);
    fixture_join(f);
    /* The writer stops when told: at most one chunk (and its framing) past
     * the limit was ever queued. */
    size_t peak = f->final_stats.out_buffered_peak;
    CHECK_MSG(peak <= lim.max_out_buffer + (size_t)chunk + 16, "peak %zu", peak);
    CHECK(peak > lim.max_out_buffer / 2);
    CHECK_EQ_INT(f->final_stats.requests_aborted, 1);
    CHECK_EQ_INT(atomic_load(&f->aborts), 1);
    free(f);
}

/* A client that stops reading a stream for idle_timeout_ms is dropped: the
 * application gets on_abort without the client ever closing. */
static void test_stalled_reader_dropped(void) {
    pt_http_limits lim = pt_http_limits_default();
    lim.max_out_buffer = 64 * 1024;
    lim.idle_timeout_ms = 150;
    fixture *f = fixture_start(&lim);
    client c;
    client_open(&c, f->port, 16 * 1024);
    client_send(&c, "GET /stream?n=640&ms=0&size=16384 HTTP/1.1\r\nHost: t\r\n\r\n");
    CHECK(wait_for(&f->backpressure, 1));
    CHECK(wait_for(&f->aborts, 1)); /* within the 2 s wait; the client is still open */
    client_close(&c);
    uv_async_send(&f->stop_async);
    fixture_join(f);
    CHECK_EQ_INT(f->final_stats.requests_aborted, 1);
    free(f);
}

static void test_header_and_idle_timeouts(void) {
    pt_http_limits lim = pt_http_limits_default();
    lim.header_timeout_ms = 150;
    lim.idle_timeout_ms = 150;
    fixture *f = fixture_start(&lim);
    client c;
    response r;
    /* Half a request: 408, then close. */
    client_open(&c, f->port, 0);
    client_send(&c, "GET /echo HTTP/1.1\r\nHost: t\r\n");
    CHECK(read_response(&c, &r));
    CHECK_EQ_INT(r.status, 408);
    CHECK(strstr(r.body, "\"code\":408") != NULL);
    response_free(&r);
    CHECK(client_eof(&c));
    client_close(&c);
    /* Trickling bytes does not extend the deadline. */
    client_open(&c, f->port, 0);
    client_send(&c, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n");
    for (int i = 0; i < 4; i++) {
        sleep_ms(50);
        send(c.fd, "x", 1, MSG_NOSIGNAL);
    }
    CHECK(read_response(&c, &r));
    CHECK_EQ_INT(r.status, 408);
    response_free(&r);
    client_close(&c);
    /* Idle keep-alive connection: closed without a response. */
    client_open(&c, f->port, 0);
    client_send(&c, "GET /echo HTTP/1.1\r\nHost: t\r\n\r\n");
    CHECK(read_response(&c, &r));
    CHECK_EQ_INT(r.status, 200);
    response_free(&r);
    CHECK(client_eof(&c));
    client_close(&c);
    fixture_stop(f);
}

static void test_max_connections_503(void) {
    pt_http_limits lim = pt_http_limits_default();
    lim.max_connections = 2;
    fixture *f = fixture_start(&lim);
    client a, b, c;
    response r;
    client_open(&a, f->port, 0);
    client_open(&b, f->port, 0);
    client_send(&a, "GET /echo HTTP/1.1\r\nHost: t\r\n\r\n");
    client_send(&b, "GET /echo HTTP/1.1\r\nHost: t\r\n\r\n");
    CHECK(read_response(&a, &r) && r.status == 200);
    response_free(&r);
    CHECK(read_response(&b, &r) && r.status == 200);
    response_free(&r);
    client_open(&c, f->port, 0);
    CHECK(read_response(&c, &r));
    CHECK_EQ_INT(r.status, 503);
    CHECK(strstr(r.body, "\"type\":\"server_error\"") != NULL);
    response_free(&r);
    CHECK(client_eof(&c));
    client_close(&c);
    /* A slot freed is a slot usable again. */
    client_close(&a);
    bool served = false;
    for (int i = 0; i < 50 && !served; i++) {
        sleep_ms(10);
        client_open(&c, f->port, 0);
        client_send(&c, "GET /echo HTTP/1.1\r\nHost: t\r\n\r\n");
        served = read_response(&c, &r) && r.status == 200;
        response_free(&r);
        client_close(&c);
    }
    CHECK(served);
    client_close(&b);
    fixture_stop(f);
}

static void test_graceful_close(void) {
    fixture *f = fixture_start(NULL);
    client busy, idle;
    response r;
    client_open(&idle, f->port, 0);
    client_send(&idle, "GET /echo HTTP/1.1\r\nHost: t\r\n\r\n");
    CHECK(read_response(&idle, &r) && r.status == 200);
    response_free(&r);
    client_open(&busy, f->port, 0);
    client_send(&busy, "GET /async?ms=150 HTTP/1.1\r\nHost: t\r\n\r\n");
    CHECK(wait_for(&f->async_started, 1));
    uv_async_send(&f->stop_async); /* close while the response is in flight */
    CHECK(client_eof(&idle));       /* idle connections close at once */
    CHECK(read_response(&busy, &r)); /* the in-flight one finishes */
    CHECK_EQ_INT(r.status, 200);
    CHECK(strcmp(r.body, "async done") == 0);
    CHECK(header_is(&r, "connection", "close"));
    response_free(&r);
    CHECK(client_eof(&busy));
    client_close(&busy);
    client_close(&idle);
    fixture_join(f);
    CHECK_EQ_INT(f->final_stats.requests_total, 2);
    free(f);
}

static void test_bind_error_reported(void) {
    uv_loop_t loop;
    uv_loop_init(&loop);
    pt_http_server *s = NULL;
    pt_err err = {{0}};
    int rc = pt_http_server_start(&s, &loop, "not-an-ip", 0, NULL, handler, NULL, &err);
    CHECK_EQ_INT(rc, PT_ERR_INVALID);
    CHECK(s == NULL);
    CHECK(strstr(err.msg, "not-an-ip") != NULL);
    /* IPv6 literal works where the host has IPv6 loopback. */
    rc = pt_http_server_start(&s, &loop, "::1", 0, NULL, handler, NULL, &err);
    if (rc == 0) {
        CHECK(pt_http_server_port(s) > 0);
        pt_http_server_close(s, NULL, NULL);
    }
    CHECK_EQ_INT(uv_run(&loop, UV_RUN_DEFAULT), 0);
    CHECK_EQ_INT(uv_loop_close(&loop), 0);
}

TEST_MAIN(TEST(test_const_time_eq), TEST(test_get_and_post), TEST(test_keep_alive_and_http10),
          TEST(test_pipelined_in_order),
          TEST(test_release_without_response_closes), TEST(test_access_log_has_no_secrets), TEST(test_oversize_header_431), TEST(test_oversize_body_413),
          TEST(test_malformed_400), TEST(test_chunked_request_body), TEST(test_expect_100_continue),
          TEST(test_stream_chunked), TEST(test_disconnect_mid_stream_aborts_once),
          TEST(test_slow_reader_backpressure), TEST(test_stalled_reader_dropped),
          TEST(test_header_and_idle_timeouts), TEST(test_max_connections_503),
          TEST(test_graceful_close), TEST(test_bind_error_reported))
