/* HTTP/1.1 client for `proteus bench` (see client.h).
 *
 * A connection (pt_client_conn) owns two handles, the TCP stream and a
 * timeout timer, and is freed when both have closed. It is on exactly one of
 * the client's lists while open: `busy` (a call in flight) or `idle`
 * (keep-alive, reading so that a close by the server is noticed). A
 * connection that fails for any reason is closed, never reused.
 *
 * A server may close an idle keep-alive connection at the moment we reuse it;
 * the request then dies before any response byte. Such a call is resent once
 * on a fresh connection, as browsers and HTTP libraries do, so that the
 * benchmark does not count the race as a server failure. */
#define _GNU_SOURCE /* strcasestr */
#include "bench/client.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <llhttp.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define CLIENT_READ_BUF 65536
#define CLIENT_MAX_BODY (16u << 20)  /* non-SSE response bodies */
#define CLIENT_MAX_EVENT (4u << 20)  /* one SSE line or event */

struct pt_client_conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_connect_t connect;
    uv_write_t write;
    llhttp_t parser;
    pt_client *cl;
    pt_client_call *call;          /* in flight, or NULL when idle */
    pt_client_conn *prev, *next;   /* in cl->busy or cl->idle */
    pt_client_conn **list;         /* which list, or NULL */
    int open_handles;              /* handles not yet through their close callback */
    bool closing, reused, msg_complete, keep_alive, is_sse, value_is_ct, stream_failed;
    char field[32];                /* current header name (truncated) */
    size_t field_len;
    char ct[128];                  /* Content-Type value (truncated) */
    size_t ct_len;
    char *wbuf;                    /* request bytes, freed in the write callback */
    char fail[256];                /* first failure found inside a parser callback */
    char *line, *data;             /* SSE: the partial line, the current event's data */
    size_t line_len, line_cap, data_len, data_cap;
    bool has_data;
    char rbuf[CLIENT_READ_BUF];
};

struct pt_client {
    uv_loop_t *loop;
    struct sockaddr_storage addr;
    char host_header[300];
    char prefix[512];              /* base URL path without the trailing '/' */
    char *api_key;
    double t0;
    llhttp_settings_t settings;
    pt_client_conn *busy, *idle;
    size_t n_busy, n_open, n_opened;
    bool closing;                  /* pt_client_close ran: free with the last connection */
};

/* ---- small helpers ---- */

static double client_time(const pt_client *cl) { return pt_now() - cl->t0; }

static void list_push(pt_client_conn **list, pt_client_conn *k) {
    k->prev = NULL;
    k->next = *list;
    if (*list) (*list)->prev = k;
    *list = k;
    k->list = list;
}

static void list_remove(pt_client_conn *k) {
    if (!k->list) return;
    if (k->prev) k->prev->next = k->next;
    else *k->list = k->next;
    if (k->next) k->next->prev = k->prev;
    k->prev = k->next = NULL;
    k->list = NULL;
}

static bool buf_append(char **buf, size_t *len, size_t *cap, const char *src, size_t n, size_t max) {
    if (*len + n + 1 > max) return false;
    if (*len + n + 1 > *cap) {
        size_t nc = *cap ? *cap : 256;
        while (nc < *len + n + 1) nc *= 2;
        char *p = realloc(*buf, nc);
        if (!p) return false;
        *buf = p;
        *cap = nc;
    }
    memcpy(*buf + *len, src, n);
    *len += n;
    (*buf)[*len] = '\0';
    return true;
}

static void rec_set_error(pt_bench_record *rec, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void rec_set_error(pt_bench_record *rec, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    free(rec->error);
    rec->error = pt_xstrdup(msg);
}

char *pt_client_error_message(const char *body, size_t len) {
    if (!body || !len) return NULL;
    cJSON *root = cJSON_ParseWithLength(body, len);
    if (!root) return NULL;
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(root, "error");
    const cJSON *m = NULL;
    if (cJSON_IsObject(e)) m = cJSON_GetObjectItemCaseSensitive(e, "message");
    else if (cJSON_IsString(e)) m = e;
    if (!cJSON_IsString(m)) m = cJSON_GetObjectItemCaseSensitive(root, "message");
    if (!cJSON_IsString(m)) m = cJSON_GetObjectItemCaseSensitive(root, "detail");
    char *out = cJSON_IsString(m) && m->valuestring ? pt_xstrdup(m->valuestring) : NULL;
    cJSON_Delete(root);
    return out;
}

/* ---- connection lifetime ---- */

static void conn_free(pt_client_conn *k) {
    pt_client *cl = k->cl;
    free(k->line);
    free(k->data);
    free(k);
    cl->n_open--;
    if (cl->closing && cl->n_open == 0) {
        free(cl->api_key);
        free(cl);
    }
}

static void conn_handle_closed(uv_handle_t *h) {
    pt_client_conn *k = h->data;
    if (--k->open_handles == 0) conn_free(k);
}

static void conn_close(pt_client_conn *k) {
    if (k->closing) return;
    k->closing = true;
    list_remove(k);
    uv_close((uv_handle_t *)&k->timer, conn_handle_closed);
    uv_close((uv_handle_t *)&k->tcp, conn_handle_closed);
}

/* Detaches the call from its connection and runs its done callback. The
 * connection goes back to the idle list when `reuse`, else it is closed. */
static void call_complete(pt_client_conn *k, bool reuse) {
    pt_client *cl = k->cl;
    pt_client_call *call = k->call;
    k->call = NULL;
    call->conn = NULL;
    cl->n_busy--;
    uv_timer_stop(&k->timer);
    list_remove(k);
    /* A response can beat the end of its own request's write (an early 413):
     * such a connection is not reused, so one write is pending at a time. */
    if (reuse && !cl->closing && !k->wbuf) list_push(&cl->idle, k);
    else conn_close(k);
    call->done(call);
}

static void call_fail(pt_client_conn *k, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void call_fail(pt_client_conn *k, const char *fmt, ...) {
    pt_bench_record *rec = k->call->rec;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    free(rec->error);
    rec->error = pt_xstrdup(msg);
    rec->ok = false;
    rec->t_end = client_time(k->cl);
    call_complete(k, false);
}

/* ---- SSE ---- */

static int sse_token_time(pt_client_conn *k, double t) {
    pt_client_call *call = k->call;
    pt_bench_record *rec = call->rec;
    if (rec->n_token_times == call->cap_token_times) {
        size_t nc = call->cap_token_times ? call->cap_token_times * 2 : 64;
        double *p = realloc(rec->token_times, nc * sizeof(double));
        if (!p) return PT_ERR_NOMEM;
        rec->token_times = p;
        call->cap_token_times = nc;
    }
    rec->token_times[rec->n_token_times++] = t;
    if (rec->t_first < 0) rec->t_first = t;
    return 0;
}

static bool nonempty_string(const cJSON *v) { return cJSON_IsString(v) && v->valuestring && v->valuestring[0]; }

/* A token count from the server's usage: a number in [0, UINT32_MAX] (a
 * larger or NaN value would make the conversion undefined). */
static bool usage_count(const cJSON *v, uint32_t *out) {
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= 0 && v->valuedouble <= UINT32_MAX)) return false;
    *out = (uint32_t)v->valuedouble;
    return true;
}

/* One complete event: "[DONE]", an error object, or a completion chunk. */
static int sse_dispatch(pt_client_conn *k) {
    pt_client_call *call = k->call;
    bool has = k->has_data;
    k->has_data = false;
    size_t len = k->data_len;
    k->data_len = 0;
    if (!has || call->saw_done) return 0;
    double t = client_time(k->cl);
    if (len == 6 && !memcmp(k->data, "[DONE]", 6)) {
        call->saw_done = true;
        return 0;
    }
    cJSON *root = cJSON_ParseWithLength(k->data, len);
    if (!root) {
        snprintf(k->fail, sizeof(k->fail), "malformed SSE event: %.60s", k->data);
        return PT_ERR_FORMAT;
    }
    int rc = 0;
    const cJSON *err = cJSON_GetObjectItemCaseSensitive(root, "error");
    if (err && !cJSON_IsNull(err)) {
        const cJSON *m = cJSON_IsObject(err) ? cJSON_GetObjectItemCaseSensitive(err, "message") : err;
        snprintf(k->fail, sizeof(k->fail), "error in stream: %s",
                 cJSON_IsString(m) && m->valuestring ? m->valuestring : "(no message)");
        cJSON_Delete(root);
        return PT_ERR_FORMAT;
    }
    const cJSON *c0 = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(root, "choices"), 0);
    if (c0) {
        const cJSON *delta = cJSON_GetObjectItemCaseSensitive(c0, "delta");
        if (nonempty_string(cJSON_GetObjectItemCaseSensitive(c0, "text")) ||
            (delta && nonempty_string(cJSON_GetObjectItemCaseSensitive(delta, "content")))) {
            call->n_chunks++;
            rc = sse_token_time(k, t);
        }
    }
    const cJSON *usage = cJSON_GetObjectItemCaseSensitive(root, "usage");
    if (cJSON_IsObject(usage)) {
        const cJSON *ct = cJSON_GetObjectItemCaseSensitive(usage, "completion_tokens");
        const cJSON *pt = cJSON_GetObjectItemCaseSensitive(usage, "prompt_tokens");
        if (usage_count(ct, &call->rec->output_tokens)) call->usage_seen = true;
        usage_count(pt, &call->usage_prompt);
    }
    cJSON_Delete(root);
    if (rc) snprintf(k->fail, sizeof(k->fail), "out of memory for token times");
    return rc;
}

/* One line without its terminator: fields other than data are ignored. */
static int sse_line(pt_client_conn *k, char *s, size_t n) {
    if (n && s[n - 1] == '\r') n--;
    if (n == 0) return sse_dispatch(k);
    if (n < 5 || memcmp(s, "data:", 5) != 0) return 0;
    s += 5;
    n -= 5;
    if (n && *s == ' ') s++, n--;
    if ((k->has_data && !buf_append(&k->data, &k->data_len, &k->data_cap, "\n", 1, CLIENT_MAX_EVENT)) ||
        !buf_append(&k->data, &k->data_len, &k->data_cap, s, n, CLIENT_MAX_EVENT)) {
        snprintf(k->fail, sizeof(k->fail), "SSE event larger than %u bytes", CLIENT_MAX_EVENT);
        return PT_ERR_FORMAT;
    }
    k->has_data = true;
    return 0;
}

static int sse_feed(pt_client_conn *k, const char *p, size_t n) {
    while (n) {
        const char *nl = memchr(p, '\n', n);
        size_t seg = nl ? (size_t)(nl - p) : n;
        if (!buf_append(&k->line, &k->line_len, &k->line_cap, p, seg, CLIENT_MAX_EVENT)) {
            snprintf(k->fail, sizeof(k->fail), "SSE line longer than %u bytes", CLIENT_MAX_EVENT);
            return PT_ERR_FORMAT;
        }
        if (!nl) break;
        size_t len = k->line_len;
        k->line_len = 0;
        int rc = sse_line(k, k->line, len);
        if (rc) return rc;
        p += seg + 1;
        n -= seg + 1;
    }
    return 0;
}

/* ---- llhttp callbacks (parser->data is the connection) ---- */

static int on_message_begin(llhttp_t *p) {
    pt_client_conn *k = p->data;
    k->field_len = k->ct_len = 0;
    k->value_is_ct = k->is_sse = false;
    return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t n) {
    pt_client_conn *k = p->data;
    size_t room = sizeof(k->field) - 1 - k->field_len;
    if (n > room) n = room;
    memcpy(k->field + k->field_len, at, n);
    k->field_len += n;
    k->field[k->field_len] = '\0';
    return 0;
}

static int on_header_field_complete(llhttp_t *p) {
    pt_client_conn *k = p->data;
    k->value_is_ct = !strcasecmp(k->field, "content-type");
    if (k->value_is_ct) k->ct_len = 0;
    return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t n) {
    pt_client_conn *k = p->data;
    if (!k->value_is_ct) return 0;
    size_t room = sizeof(k->ct) - 1 - k->ct_len;
    if (n > room) n = room;
    memcpy(k->ct + k->ct_len, at, n);
    k->ct_len += n;
    k->ct[k->ct_len] = '\0';
    return 0;
}

static int on_header_value_complete(llhttp_t *p) {
    pt_client_conn *k = p->data;
    k->field_len = 0;
    k->field[0] = '\0';
    k->value_is_ct = false;
    return 0;
}

static int on_headers_complete(llhttp_t *p) {
    pt_client_conn *k = p->data;
    int status = p->status_code;
    k->call->rec->status = status;
    k->ct[k->ct_len] = '\0';
    k->is_sse = status >= 200 && status < 300 && strcasestr(k->ct, "text/event-stream") != NULL;
    k->line_len = k->data_len = 0;
    k->has_data = false;
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t n) {
    pt_client_conn *k = p->data;
    pt_client_call *call = k->call;
    if (k->is_sse) {
        /* A failing event ends the stream's usefulness but not the parse:
         * the first failure is kept and the rest of the body is skipped. */
        if (!k->stream_failed && sse_feed(k, at, n) != 0) k->stream_failed = true;
        return 0;
    }
    if (!buf_append(&call->resp_body, &call->resp_len, &call->resp_cap, at, n, CLIENT_MAX_BODY)) {
        snprintf(k->fail, sizeof(k->fail), "response body larger than %u bytes", CLIENT_MAX_BODY);
        return -1;
    }
    return 0;
}

static int on_message_complete(llhttp_t *p) {
    pt_client_conn *k = p->data;
    k->msg_complete = true;
    k->keep_alive = llhttp_should_keep_alive(p);
    return HPE_PAUSED; /* one response per request: stop here */
}

/* The whole response is in: decide success and record what it says. */
static void response_complete(pt_client_conn *k) {
    pt_client_call *call = k->call;
    pt_bench_record *rec = call->rec;
    int status = rec->status;
    rec->t_end = client_time(k->cl);
    if (k->is_sse) {
        if (!k->stream_failed && k->has_data && sse_dispatch(k) != 0) k->stream_failed = true;
        if (k->stream_failed) {
            call_fail(k, "%s", k->fail);
            return;
        }
        if (!call->usage_seen) rec->output_tokens = (uint32_t)call->n_chunks;
        rec->ok = true;
    } else if (status >= 200 && status < 300) {
        /* A non-streamed answer (a server that ignored "stream"): its whole
         * text arrives at once, so it has one token time, at the end. */
        cJSON *root = call->resp_body ? cJSON_ParseWithLength(call->resp_body, call->resp_len) : NULL;
        const cJSON *usage = cJSON_GetObjectItemCaseSensitive(root, "usage");
        const cJSON *ct = cJSON_GetObjectItemCaseSensitive(usage, "completion_tokens");
        if (usage_count(ct, &rec->output_tokens)) {
            call->usage_seen = true;
            if (rec->output_tokens > 0 && sse_token_time(k, rec->t_end) != 0) {
                cJSON_Delete(root);
                call_fail(k, "out of memory for token times");
                return;
            }
        }
        cJSON_Delete(root);
        rec->ok = true;
    } else {
        char *msg = pt_client_error_message(call->resp_body, call->resp_len);
        if (msg) rec_set_error(rec, "HTTP %d: %s", status, msg);
        else if (call->resp_len) rec_set_error(rec, "HTTP %d: %.200s", status, call->resp_body);
        /* Not llhttp_status_name: it aborts on a code outside its table, and
         * a server may send any three digits. */
        else rec_set_error(rec, "HTTP %d with an empty body", status);
        free(msg);
        rec->ok = false;
    }
    call_complete(k, k->keep_alive);
}

/* ---- sending ---- */

static int call_open(pt_client *cl, pt_client_call *call);

/* The connection died before a response: resend once if it was a reused
 * keep-alive connection that the server had already given up, else fail. */
static void conn_lost(pt_client_conn *k, const char *what, int uverr) {
    pt_client_call *call = k->call;
    if (k->reused && !call->got_bytes && !call->retried) {
        pt_client *cl = k->cl;
        k->call = NULL;
        call->conn = NULL;
        cl->n_busy--;
        conn_close(k);
        call->retried = true;
        if (call_open(cl, call) != 0) call->done(call);
        return;
    }
    call->rec->status = 0; /* no complete response: a connection failure, whatever the headers said */
    if (call->got_bytes && call->rec->n_token_times)
        call_fail(k, "%s: %s after %zu chunks", what, uv_strerror(uverr), call->rec->n_token_times);
    else call_fail(k, "%s: %s", what, uv_strerror(uverr));
}

static void on_timeout(uv_timer_t *t) {
    pt_client_conn *k = t->data;
    if (!k->call) return;
    k->call->rec->status = 0;
    call_fail(k, "timeout after %g s", k->call->timeout_s);
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
    pt_client_conn *k = h->data;
    *buf = uv_buf_init(k->rbuf, sizeof(k->rbuf));
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
    pt_client_conn *k = s->data;
    if (nread == 0 || k->closing) return;
    if (!k->call) {
        /* Idle: the server closed it (or sent bytes nobody asked for). */
        conn_close(k);
        return;
    }
    if (nread < 0) {
        if (nread == UV_EOF && k->call->got_bytes) {
            /* A body delimited by the close ends here. */
            llhttp_finish(&k->parser);
            if (k->msg_complete) {
                k->keep_alive = false;
                response_complete(k);
                return;
            }
            k->call->rec->status = 0;
            call_fail(k, "connection closed before the response ended");
            return;
        }
        conn_lost(k, "read", (int)nread);
        return;
    }
    k->call->got_bytes = true;
    llhttp_errno_t e = llhttp_execute(&k->parser, buf->base, (size_t)nread);
    if (k->msg_complete) {
        response_complete(k);
    } else if (e != HPE_OK) {
        if (k->fail[0]) call_fail(k, "%s", k->fail);
        else call_fail(k, "bad HTTP response: %s (%s)", llhttp_errno_name(e), llhttp_get_error_reason(&k->parser));
    }
}

static void on_write(uv_write_t *w, int status) {
    pt_client_conn *k = w->data;
    free(k->wbuf);
    k->wbuf = NULL;
    if (status < 0 && status != UV_ECANCELED && k->call && !k->closing) conn_lost(k, "write", status);
}

static void conn_send(pt_client_conn *k) {
    pt_client *cl = k->cl;
    pt_client_call *call = k->call;
    char head[2048];
    int n = snprintf(head, sizeof(head),
                     "%s %s%s HTTP/1.1\r\nHost: %s\r\nUser-Agent: proteus-bench\r\nAccept: */*\r\n"
                     "%s%s%s"
                     "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
                     call->method, cl->prefix, call->path, cl->host_header, cl->api_key ? "Authorization: Bearer " : "",
                     cl->api_key ? cl->api_key : "", cl->api_key ? "\r\n" : "", call->body ? call->body_len : 0);
    if (n < 0 || (size_t)n >= sizeof(head)) {
        call_fail(k, "request head too long");
        return;
    }
    size_t blen = call->body ? call->body_len : 0;
    k->wbuf = malloc((size_t)n + blen);
    if (!k->wbuf) {
        call_fail(k, "out of memory for a %zu-byte request", blen);
        return;
    }
    memcpy(k->wbuf, head, (size_t)n);
    if (blen) memcpy(k->wbuf + n, call->body, blen);
    llhttp_init(&k->parser, HTTP_RESPONSE, &cl->settings);
    k->parser.data = k;
    k->msg_complete = k->stream_failed = false;
    k->fail[0] = '\0';
    uv_buf_t b = uv_buf_init(k->wbuf, (unsigned)(n + blen));
    k->write.data = k;
    int rc = uv_write(&k->write, (uv_stream_t *)&k->tcp, &b, 1, on_write);
    if (rc < 0) {
        free(k->wbuf);
        k->wbuf = NULL;
        conn_lost(k, "write", rc);
    }
}

static void on_connect(uv_connect_t *req, int status) {
    pt_client_conn *k = req->data;
    if (k->closing || !k->call) return; /* closed while connecting; the call already finished */
    if (status < 0) {
        call_fail(k, "connect: %s", uv_strerror(status));
        return;
    }
    int rc = uv_read_start((uv_stream_t *)&k->tcp, on_alloc, on_read);
    if (rc < 0) {
        call_fail(k, "read: %s", uv_strerror(rc));
        return;
    }
    conn_send(k);
}

static void arm_timeout(pt_client_conn *k) {
    pt_client_call *call = k->call;
    if (call->timeout_s <= 0) return;
    double left = call->rec->t_sent + call->timeout_s - client_time(k->cl);
    uint64_t ms = left > 0 ? (uint64_t)(left * 1000.0 + 0.5) : 0;
    uv_timer_start(&k->timer, on_timeout, ms, 0);
}

/* Opens a new connection for the call. On failure the record says why and
 * nothing is pending. */
static int call_open(pt_client *cl, pt_client_call *call) {
    pt_client_conn *k = calloc(1, sizeof(*k));
    if (!k) {
        rec_set_error(call->rec, "out of memory for a connection");
        call->rec->t_end = client_time(cl);
        return PT_ERR_NOMEM;
    }
    k->cl = cl;
    int rc = uv_tcp_init(cl->loop, &k->tcp);
    if (rc < 0) {
        free(k);
        rec_set_error(call->rec, "socket: %s", uv_strerror(rc));
        call->rec->t_end = client_time(cl);
        return PT_ERR_IO;
    }
    uv_timer_init(cl->loop, &k->timer);
    k->tcp.data = k->timer.data = k->connect.data = k;
    k->open_handles = 2;
    cl->n_open++;
    cl->n_opened++;
    uv_tcp_nodelay(&k->tcp, 1);
    rc = uv_tcp_connect(&k->connect, &k->tcp, (const struct sockaddr *)&cl->addr, on_connect);
    if (rc < 0) {
        conn_close(k);
        rec_set_error(call->rec, "connect: %s", uv_strerror(rc));
        call->rec->t_end = client_time(cl);
        return PT_ERR_IO;
    }
    k->call = call;
    call->conn = k;
    list_push(&cl->busy, k);
    cl->n_busy++;
    arm_timeout(k);
    return 0;
}

int pt_client_start(pt_client *cl, pt_client_call *call) {
    if (!cl || !call || !call->rec || !call->done || !call->method || !call->path) return PT_ERR_INVALID;
    pt_bench_record *rec = call->rec;
    free(rec->error);
    free(rec->token_times);
    rec->error = NULL;
    rec->token_times = NULL;
    rec->n_token_times = 0;
    rec->t_sent = client_time(cl);
    rec->t_first = -1;
    rec->t_end = -1;
    rec->output_tokens = 0;
    rec->ok = false;
    rec->status = 0;
    free(call->resp_body);
    call->resp_body = NULL;
    call->resp_len = call->resp_cap = 0;
    call->usage_prompt = 0;
    call->usage_seen = call->retried = call->saw_done = call->got_bytes = false;
    call->n_chunks = call->cap_token_times = 0;
    call->conn = NULL;
    if (cl->closing) {
        rec_set_error(rec, "client closed");
        return PT_ERR_INVALID;
    }
    pt_client_conn *k = cl->idle;
    if (!k) return call_open(cl, call);
    list_remove(k);
    k->reused = true;
    k->call = call;
    call->conn = k;
    list_push(&cl->busy, k);
    cl->n_busy++;
    arm_timeout(k);
    conn_send(k);
    return 0;
}

void pt_client_cancel_all(pt_client *cl, const char *reason) {
    while (cl->busy) {
        cl->busy->call->rec->status = 0;
        call_fail(cl->busy, "%s", reason);
    }
}

size_t pt_client_in_flight(const pt_client *cl) { return cl->n_busy; }
size_t pt_client_connections_opened(const pt_client *cl) { return cl->n_opened; }
void pt_client_set_epoch(pt_client *cl, double t0) { cl->t0 = t0; }

/* ---- setup ---- */

int pt_client_init(pt_client **out, uv_loop_t *loop, const char *base_url, const char *api_key, pt_err *err) {
    *out = NULL;
    if (!base_url || strncmp(base_url, "http://", 7) != 0)
        return pt_err_set(err, PT_ERR_INVALID, "base URL '%s': only http://host[:port][/path] is supported",
                          base_url ? base_url : "");
    const char *h = base_url + 7, *end = h + strcspn(h, "/");
    char host[256], port[16] = "80";
    const char *colon;
    if (*h == '[') { /* [v6]:port */
        const char *rb = memchr(h, ']', (size_t)(end - h));
        if (!rb || rb - h - 1 >= (long)sizeof(host)) return pt_err_set(err, PT_ERR_INVALID, "base URL '%s': bad host", base_url);
        memcpy(host, h + 1, (size_t)(rb - h - 1));
        host[rb - h - 1] = '\0';
        colon = rb[1] == ':' ? rb + 1 : NULL;
    } else {
        colon = memchr(h, ':', (size_t)(end - h));
        size_t hl = (size_t)((colon ? colon : end) - h);
        if (hl == 0 || hl >= sizeof(host)) return pt_err_set(err, PT_ERR_INVALID, "base URL '%s': bad host", base_url);
        memcpy(host, h, hl);
        host[hl] = '\0';
    }
    if (colon) {
        size_t pl = (size_t)(end - colon - 1);
        if (pl == 0 || pl >= sizeof(port) || strspn(colon + 1, "0123456789") < pl)
            return pt_err_set(err, PT_ERR_INVALID, "base URL '%s': bad port", base_url);
        memcpy(port, colon + 1, pl);
        port[pl] = '\0';
    }
    size_t plen = strlen(end);
    while (plen && end[plen - 1] == '/') plen--;
    pt_client *cl = pt_xcalloc(1, sizeof(*cl));
    if (plen >= sizeof(cl->prefix)) {
        free(cl);
        return pt_err_set(err, PT_ERR_INVALID, "base URL '%s': path too long", base_url);
    }
    memcpy(cl->prefix, end, plen);
    cl->prefix[plen] = '\0';
    snprintf(cl->host_header, sizeof(cl->host_header), "%.*s", (int)(end - h), h);

    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0 || !res) {
        free(cl);
        return pt_err_set(err, PT_ERR_IO, "%s: cannot resolve host: %s", base_url, gai_strerror(rc));
    }
    memcpy(&cl->addr, res->ai_addr, res->ai_addrlen);
    freeaddrinfo(res);

    if (api_key && strpbrk(api_key, "\r\n")) {
        free(cl);
        return pt_err_set(err, PT_ERR_INVALID, "API key contains a line break");
    }
    cl->api_key = api_key ? pt_xstrdup(api_key) : NULL;
    cl->loop = loop;
    cl->t0 = pt_now();
    llhttp_settings_init(&cl->settings);
    cl->settings.on_message_begin = on_message_begin;
    cl->settings.on_header_field = on_header_field;
    cl->settings.on_header_field_complete = on_header_field_complete;
    cl->settings.on_header_value = on_header_value;
    cl->settings.on_header_value_complete = on_header_value_complete;
    cl->settings.on_headers_complete = on_headers_complete;
    cl->settings.on_body = on_body;
    cl->settings.on_message_complete = on_message_complete;
    *out = cl;
    return 0;
}

void pt_client_close(pt_client *cl) {
    if (!cl || cl->closing) return;
    cl->closing = true;
    while (cl->idle) conn_close(cl->idle);
    if (cl->n_open == 0) {
        free(cl->api_key);
        free(cl);
    }
}

static void fetch_done(pt_client_call *call) { *(bool *)call->data = true; }

int pt_client_fetch(const char *base_url, const char *api_key, const char *method, const char *path,
                    const char *body, double timeout_s, int *status, char **resp, size_t *resp_len, pt_err *err) {
    *status = 0;
    *resp = NULL;
    *resp_len = 0;
    uv_loop_t loop;
    if (uv_loop_init(&loop) != 0) return pt_err_set(err, PT_ERR_IO, "cannot create an event loop");
    pt_client *cl;
    int rc = pt_client_init(&cl, &loop, base_url, api_key, err);
    if (rc) {
        uv_loop_close(&loop);
        return rc;
    }
    pt_bench_record rec = {0};
    bool done = false;
    pt_client_call call = {.method = method, .path = path, .body = body, .body_len = body ? strlen(body) : 0,
                           .timeout_s = timeout_s, .rec = &rec, .done = fetch_done, .data = &done};
    rc = pt_client_start(cl, &call);
    /* Step the loop until the call ends: a kept-alive connection would keep
     * UV_RUN_DEFAULT running after it. */
    while (rc == 0 && !done && uv_run(&loop, UV_RUN_ONCE)) {
    }
    if (rc == 0 && !done) rc = PT_ERR_IO; /* cannot happen: the call holds the loop open */
    pt_client_close(cl);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    if (rc == 0 && rec.status == 0) rc = PT_ERR_IO;
    if (rc) {
        pt_err_set(err, rc, "%s %s%s: %s", method, base_url, path, rec.error ? rec.error : "failed");
        free(call.resp_body);
    } else {
        *status = rec.status;
        *resp = call.resp_body;
        *resp_len = call.resp_len;
    }
    free(rec.error);
    free(rec.token_times);
    return rc;
}
