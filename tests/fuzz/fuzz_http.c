/* The HTTP server's request path (src/server/http.c) up to validation:
 * arbitrary bytes arrive on a connection as a socket would deliver them,
 * llhttp parses them with the server's callbacks and limits, and each
 * complete request goes to a handler that routes as `proteus serve` does
 * (serve.c handle_request: 404, 405, then pt_oai_parse of the body) and
 * answers. The file is included so that the connection code, which has no
 * entry point without a listening socket, is reachable; the library archive
 * then never pulls in its own copy. The connection's socket is one end of a
 * socketpair, so every response really goes out through uv_try_write.
 *
 * Built twice: FUZZ_HTTP_ROUTE names the route whose bodies the seed
 * corpus holds (chat or completions); both routes are served by both.
 *
 * Input: byte 0 sets the read size (1..128 bytes, or the whole input at
 * once when >= 128), the rest is what the client sends, then end of stream.
 * Checked: each request handed over has a method, a non-empty path, a
 * NUL-terminated body within the limit; every response written starts
 * with a status line whose code is one the server or the routes may send. */
#include "../../src/server/http.c"

#include <fcntl.h>

#include "fuzz_oai.h"

#ifndef FUZZ_HTTP_ROUTE
#define FUZZ_HTTP_ROUTE "/v1/chat/completions"
#endif

static uv_loop_t loop;
static pt_http_server *server;

static void handle_request(void *user, pt_http_request *req) {
    const char *m = pt_http_method(req), *path = pt_http_path(req);
    size_t blen;
    const char *body = pt_http_body(req, &blen);
    FUZZ_CHECK(m[0], "a request without a method");
    /* Not necessarily '/'-first: llhttp takes "*" and other origin-less targets as
     * they are, and the routes answer 404 to them. */
    FUZZ_CHECK(path[0], "an empty path");
    FUZZ_CHECK(blen <= server->lim.max_body_bytes && body[blen] == 0, "body of %zu bytes", blen);
    (void)pt_http_header(req, "authorization");
    (void)pt_http_query(req);
    bool chat = !strcmp(path, "/v1/chat/completions"), completion = !strcmp(path, "/v1/completions");
    if (!chat && !completion) {
        pt_http_respond_error(req, 404, "not_found_error", "no such route", NULL);
        return;
    }
    if (strcmp(m, "POST") != 0) {
        pt_http_respond_error(req, 405, NULL, "method not allowed for this route", "Allow: POST\r\n");
        return;
    }
    int status = fuzz_oai_check(chat ? PT_OAI_CHAT : PT_OAI_COMPLETION, body, blen);
    if (status == 200) pt_http_respond(req, 200, "application/json", "{}", 2, NULL);
    else pt_http_respond_error(req, status, NULL, "invalid request", NULL);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    fuzz_quiet();
    signal(SIGPIPE, SIG_IGN); /* as pt_http_server_start does */
    uv_loop_init(&loop);
    /* A server as pt_http_server_start leaves it, minus the listening socket. */
    server = pt_xcalloc(1, sizeof *server);
    server->loop = &loop;
    limits_fill(&server->lim, NULL);
    server->lim.max_body_bytes = 64 << 10; /* small enough that the fuzzer can cross it */
    server->handler = handle_request;
    return 0;
}

/* Every status line in what the server wrote must carry a status it may send. */
static void check_output(const char *out, size_t len) {
    static const char line[] = "HTTP/1.1 ";
    if (len == 0) return;
    FUZZ_CHECK(len >= sizeof line + 2 && !memcmp(out, line, sizeof line - 1), "output starts '%.*s'", (int)(len < 20 ? len : 20), out);
    int status = atoi(out + sizeof line - 1);
    static const int allowed[] = {100, 200, 400, 404, 405, 413, 414, 431};
    bool ok = false;
    for (size_t i = 0; i < sizeof allowed / sizeof allowed[0]; i++) ok |= status == allowed[i];
    FUZZ_CHECK(ok, "status %d", status);
}

/* Reads what the server wrote so far: up to cap bytes kept in buf, the rest
 * discarded (the socket buffer must not fill). Returns the bytes kept. */
static size_t drain(int fd, char *buf, size_t cap) {
    static char discard[4096];
    size_t kept = 0;
    for (;;) {
        bool keep = kept < cap;
        ssize_t got = read(fd, keep ? buf + kept : discard, keep ? cap - kept : sizeof discard);
        if (got <= 0) return kept;
        if (keep) kept += (size_t)got;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    size_t step = data[0] < 128 ? (size_t)data[0] + 1 : CONN_IN_CAP;
    data++, size--;
    int fds[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0) abort();
    fcntl(fds[1], F_SETFL, O_NONBLOCK);

    /* A connection as on_connection leaves it, on one end of the pair. */
    pt_http_server *s = server;
    pt_http_conn *c = conn_new(s);
    if (!c || uv_tcp_open(&c->tcp, fds[0]) != 0) abort();
    llhttp_init(&c->parser, HTTP_REQUEST, &parser_settings);
    c->parser.data = c;
    s->nactive++;
    conn_timer_start(c, TIMER_IDLE, s->lim.idle_timeout_ms);

    static char out[4096];
    size_t out_len = 0;
    while (size && !c->closing && !c->lingering) {
        uv_buf_t buf;
        alloc_cb((uv_handle_t *)&c->tcp, 65536, &buf);
        size_t n = size < step ? size : step;
        if (n > buf.len) n = buf.len;
        if (n) {
            memcpy(buf.base, data, n);
            read_cb((uv_stream_t *)&c->tcp, (ssize_t)n, &buf);
            data += n, size -= n;
        }
        uv_run(&loop, UV_RUN_NOWAIT); /* the 0 ms "parse the pipelined bytes" timer */
        out_len += drain(fds[1], out + out_len, sizeof out - out_len);
    }
    /* The client goes away: end of stream, as read_cb sees it. */
    if (!c->closing) {
        uv_buf_t none = uv_buf_init(NULL, 0);
        read_cb((uv_stream_t *)&c->tcp, UV_EOF, &none);
    }
    while (s->nconns) uv_run(&loop, UV_RUN_NOWAIT);
    out_len += drain(fds[1], out + out_len, sizeof out - out_len);
    close(fds[1]);
    check_output(out, out_len);
    return 0;
}
