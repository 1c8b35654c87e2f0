/* HTTP/1.1 server: libuv for the sockets, llhttp for parsing.
 *
 * A connection owns a TCP handle, one timer and a fixed input buffer. Bytes
 * read go into the buffer and are fed to llhttp; on_message_complete pauses
 * the parser, and the complete request is handed to the application. While a
 * request is in flight the connection keeps reading (so that a disconnect is
 * seen and reported as an abort) but does not parse: pipelined bytes wait in
 * the buffer, and reading stops when it is full. When the response is
 * complete the parser resumes from where it paused (deferred to a 0 ms timer
 * when the response was completed outside the parsing loop, so that the
 * application's next handler call never runs inside its own respond call).
 *
 * The one timer serves whichever deadline the connection's state needs:
 * idle (no request), header (request partly received), write stall (a
 * stream's client stopped reading), linger (closing), or a 0 ms "parse the
 * pipelined bytes" kick.
 *
 * Writes: uv_try_write first; what the kernel did not take is copied into one
 * uv_write request. out_buffered counts those queued bytes.
 *
 * Closing: errors and Connection: close responses end with uv_shutdown (sent
 * after the queued writes) and a short lingering read that discards input, so
 * that a client still sending does not receive a reset that would destroy
 * the response before it reads it. Memory is freed only in close callbacks. */
#include "proteus/http.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <llhttp.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

enum { CONN_IN_CAP = 16384 };      /* input buffer per connection */
enum { LINGER_MS = 1000 };         /* lingering read after our FIN */

typedef struct pt_http_conn pt_http_conn;

enum { RESP_NONE, RESP_STREAM, RESP_DONE };
enum { TIMER_NONE, TIMER_PROCESS, TIMER_IDLE, TIMER_HEADER, TIMER_STALL, TIMER_LINGER };

typedef struct {
    uint32_t name, val; /* offsets of NUL-terminated strings in hbuf */
} http_hdr;

struct pt_http_request {
    pt_http_conn *conn; /* NULL once detached: aborted (client gone) */
    /* Parsed request. */
    const char *method; /* static, from llhttp */
    char *url;          /* path '\0' query '\0' after headers_complete */
    size_t url_len, url_cap;
    const char *path, *query; /* into url */
    char *hbuf;               /* header names and values, NUL-terminated */
    size_t hlen, hcap;
    http_hdr *hdrs;
    size_t nhdrs, hdrs_cap;
    bool in_field, in_value;
    size_t head_bytes; /* request line + header bytes counted so far */
    char *body;
    size_t body_len, body_cap;
    uint8_t http_major, http_minor;
    bool keep_alive, is_head;
    double t_start;
    /* Response. */
    int resp; /* RESP_* */
    int status;
    bool chunked;
    size_t bytes_out;
    char *log_extra;
    void (*on_drain)(void *);
    void (*on_abort)(void *);
    void *ctx;
};

struct pt_http_conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_shutdown_t shutdown_req;
    pt_http_server *srv;
    pt_http_conn *prev, *next;
    llhttp_t parser;
    char *in; /* CONN_IN_CAP bytes; unparsed input is in[in_off, in_len) */
    size_t in_off, in_len;
    pt_http_request *cur;      /* being parsed */
    pt_http_request *ready;    /* complete, set by on_message_complete */
    pt_http_request *inflight; /* handed to the application */
    size_t out_buffered;       /* bytes queued in uv_write requests */
    int err_status;            /* set by a parser callback that rejects the request */
    const char *err_msg;
    int handles_open;
    int timer_mode;
    bool closing;   /* uv_close called */
    bool lingering; /* uv_shutdown called; reading and discarding */
    bool read_paused, processing, parser_paused, in_message, drain_wanted, rejected;
};

struct pt_http_server {
    uv_tcp_t tcp;
    uv_loop_t *loop;
    pt_http_limits lim;
    pt_http_handler handler;
    void *user;
    int port;
    pt_http_conn *conns; /* doubly linked, every connection until its close callback */
    size_t nconns, nactive; /* all / not rejected */
    bool closing, listener_closed;
    /* Out of memory at accept: a connection's memory is taken ahead (the
     * spare, refilled after each accept), so that a passing shortage does
     * not refuse a client; when there is none either, the client is
     * accepted into the sink, told 503 and closed, because a client left
     * unaccepted would stop libuv from accepting any other. */
    pt_http_conn *spare;     /* calloc'd with its input buffer; not a libuv handle yet */
    uv_tcp_t sink;
    uv_timer_t sink_timer;   /* bounds how long the sink waits for the client to close */
    int sink_handles;        /* of the two, those whose close callback has not run */
    char sink_drop[1024];    /* what the sink reads, dropped */
    bool sink_open;          /* a client is in the sink */
    bool accept_waiting;     /* a client waits for the sink (libuv paused accepting) */
    void (*on_closed)(void *);
    void *on_closed_arg;
    pt_http_stats stats;
};

typedef struct {
    uv_write_t w;
    pt_http_conn *c;
    size_t len;
    char data[];
} http_wreq;

static void conn_process(pt_http_conn *c);
static void conn_kick(pt_http_conn *c);
static void conn_close(pt_http_conn *c);
static void conn_shutdown(pt_http_conn *c);
static void conn_fail(pt_http_conn *c, int status, const char *msg);
static int conn_send(pt_http_conn *c, const uv_buf_t *bufs, unsigned nbufs);

pt_http_limits pt_http_limits_default(void) {
    return (pt_http_limits){
        .max_header_bytes = 16 * 1024,
        .max_body_bytes = 8 * 1024 * 1024,
        .max_out_buffer = 1024 * 1024,
        .max_connections = 1024,
        .idle_timeout_ms = 60 * 1000,
        .header_timeout_ms = 30 * 1000,
    };
}

bool pt_http_const_time_eq(const char *a, size_t alen, const char *b, size_t blen) {
    /* Walk all of a whatever b holds, so that the time depends on alen only. */
    unsigned diff = alen != blen;
    for (size_t i = 0; i < alen; i++) {
        unsigned char bc = i < blen ? (unsigned char)b[i] : 0;
        diff |= (unsigned char)a[i] ^ bc;
    }
    return diff == 0;
}

static const char *status_text(int status) {
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 422: return "Unprocessable Content";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return "Unknown";
    }
}

/* ---- Requests ---- */

/* NULL when out of memory. */
static pt_http_request *req_new(void) {
    pt_http_request *r = calloc(1, sizeof *r);
    if (r) r->t_start = pt_now();
    return r;
}

static void req_free(pt_http_request *r) {
    if (!r) return;
    free(r->url);
    free(r->hbuf);
    free(r->hdrs);
    free(r->body);
    free(r->log_extra);
    free(r);
}

/* Grow *buf to hold need bytes; false when malloc fails. */
static bool buf_reserve(char **buf, size_t *cap, size_t need) {
    if (need <= *cap) return true;
    size_t n = *cap ? *cap : 256;
    while (n < need) n *= 2;
    char *p = realloc(*buf, n);
    if (!p) return false;
    *buf = p;
    *cap = n;
    return true;
}

static void access_log(const pt_http_request *r, const char *note) {
    /* The path is client-controlled: printable ASCII only, bounded. Query and
     * headers are never logged (they may carry keys). */
    char path[201];
    size_t n = 0;
    const char *p = r->path ? r->path : "-";
    for (; p[n] && n < sizeof path - 1; n++) {
        unsigned char ch = (unsigned char)p[n];
        path[n] = (ch < 0x20 || ch >= 0x7f || ch == '"') ? '?' : (char)ch;
    }
    path[n] = 0;
    double ms = (pt_now() - r->t_start) * 1e3;
    pt_log(PT_LOG_INFO, "http %s %s %d %zuB %.1fms%s%s%s%s", r->method ? r->method : "-", path,
           r->status, r->bytes_out, ms, r->log_extra ? " " : "", r->log_extra ? r->log_extra : "",
           note ? " " : "", note ? note : "");
}

const char *pt_http_method(const pt_http_request *r) { return r->method ? r->method : ""; }
const char *pt_http_path(const pt_http_request *r) { return r->path ? r->path : ""; }
const char *pt_http_query(const pt_http_request *r) { return r->query ? r->query : ""; }

const char *pt_http_header(const pt_http_request *r, const char *name) {
    for (size_t i = 0; i < r->nhdrs; i++)
        if (strcasecmp(r->hbuf + r->hdrs[i].name, name) == 0) return r->hbuf + r->hdrs[i].val;
    return NULL;
}

const char *pt_http_body(const pt_http_request *r, size_t *len) {
    if (len) *len = r->body_len;
    return r->body ? r->body : "";
}

void pt_http_request_set_callbacks(pt_http_request *r, void (*on_drain)(void *),
                                   void (*on_abort)(void *), void *ctx) {
    r->on_drain = on_drain;
    r->on_abort = on_abort;
    r->ctx = ctx;
}

void pt_http_request_set_log_extra(pt_http_request *r, const char *extra) {
    free(r->log_extra);
    r->log_extra = extra ? strdup(extra) : NULL; /* out of memory: the access log goes without it */
}

/* ---- Parser callbacks ---- */

static pt_http_conn *conn_of(llhttp_t *p) { return p->data; }

static void conn_timer_start(pt_http_conn *c, int mode, uint64_t ms);

/* Counts request-line and header bytes against the limit; false = reject. */
static bool head_count(pt_http_conn *c, size_t n, int status) {
    pt_http_request *r = c->cur;
    r->head_bytes += n;
    if (r->head_bytes > c->srv->lim.max_header_bytes) {
        c->err_status = status;
        c->err_msg = status == 414 ? "request URI too long" : "request header fields too large";
        return false;
    }
    return true;
}

/* A parser callback out of memory: the request gets 503 and the connection closes. */
static int out_of_memory(pt_http_conn *c) {
    c->err_status = 503;
    c->err_msg = "out of memory";
    return -1;
}

static int on_message_begin(llhttp_t *p) {
    pt_http_conn *c = conn_of(p);
    req_free(c->cur);
    c->cur = req_new();
    if (!c->cur) return out_of_memory(c);
    c->in_message = true;
    conn_timer_start(c, TIMER_HEADER, c->srv->lim.header_timeout_ms);
    return 0;
}

static int on_method(llhttp_t *p, const char *at, size_t len) {
    return head_count(conn_of(p), len, 431) ? 0 : -1;
}

static int on_version(llhttp_t *p, const char *at, size_t len) {
    return head_count(conn_of(p), len, 431) ? 0 : -1;
}

static int on_method_complete(llhttp_t *p) {
    conn_of(p)->cur->method = llhttp_method_name((llhttp_method_t)llhttp_get_method(p));
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t len) {
    pt_http_conn *c = conn_of(p);
    pt_http_request *r = c->cur;
    if (!head_count(c, len, 414)) return -1;
    if (!buf_reserve(&r->url, &r->url_cap, r->url_len + len + 2)) return out_of_memory(c);
    memcpy(r->url + r->url_len, at, len);
    r->url_len += len;
    return 0;
}

static int hbuf_append(pt_http_conn *c, const char *at, size_t len) {
    pt_http_request *r = c->cur;
    if (!buf_reserve(&r->hbuf, &r->hcap, r->hlen + len + 1)) return out_of_memory(c);
    memcpy(r->hbuf + r->hlen, at, len);
    r->hlen += len;
    return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len) {
    pt_http_conn *c = conn_of(p);
    pt_http_request *r = c->cur;
    if (!head_count(c, len, 431)) return -1;
    if (!r->in_field) {
        if (r->nhdrs == r->hdrs_cap) {
            size_t n = r->hdrs_cap ? 2 * r->hdrs_cap : 16;
            http_hdr *h = realloc(r->hdrs, n * sizeof *h);
            if (!h) return out_of_memory(c);
            r->hdrs = h;
            r->hdrs_cap = n;
        }
        r->hdrs[r->nhdrs].name = (uint32_t)r->hlen;
        r->in_field = true;
    }
    return hbuf_append(c, at, len);
}

static int on_header_field_complete(llhttp_t *p) {
    pt_http_conn *c = conn_of(p);
    if (!c->cur->in_field) return -1; /* llhttp reports a name before its value; be defensive */
    c->cur->in_field = false;
    return hbuf_append(c, "", 1);
}

static int on_header_value(llhttp_t *p, const char *at, size_t len) {
    pt_http_conn *c = conn_of(p);
    pt_http_request *r = c->cur;
    if (!head_count(c, len, 431)) return -1;
    if (!r->in_value) {
        r->hdrs[r->nhdrs].val = (uint32_t)r->hlen;
        r->in_value = true;
    }
    return hbuf_append(c, at, len);
}

static int on_header_value_complete(llhttp_t *p) {
    pt_http_conn *c = conn_of(p);
    pt_http_request *r = c->cur;
    if (!head_count(c, 4, 431)) return -1; /* ": " and CRLF */
    if (!r->in_value) r->hdrs[r->nhdrs].val = (uint32_t)r->hlen; /* empty value */
    while (r->hlen > r->hdrs[r->nhdrs].val &&
           (r->hbuf[r->hlen - 1] == ' ' || r->hbuf[r->hlen - 1] == '\t'))
        r->hlen--;
    r->in_value = false;
    r->nhdrs++;
    return hbuf_append(c, "", 1);
}

/* Splits the request target into path and query. Absolute-form targets
 * ("http://host/p?q") keep only their path. */
static void url_split(pt_http_request *r) {
    if (!r->url) buf_reserve(&r->url, &r->url_cap, 2);
    if (!r->url) { /* out of memory for 256 bytes */
        r->path = r->query = "";
        return;
    }
    r->url[r->url_len] = 0;
    char *u = r->url;
    char *scheme = strstr(u, "://");
    if (u[0] != '/' && scheme) {
        char *slash = strchr(scheme + 3, '/');
        if (slash) {
            u = slash;
        } else {
            u = scheme + 3 + strlen(scheme + 3); /* "http://host" -> "" */
        }
    }
    char *hash = strchr(u, '#');
    if (hash) *hash = 0;
    char *q = strchr(u, '?');
    if (q) {
        *q = 0;
        r->query = q + 1;
    } else {
        r->query = "";
    }
    r->path = *u ? u : "/";
}

static int on_headers_complete(llhttp_t *p) {
    pt_http_conn *c = conn_of(p);
    pt_http_request *r = c->cur;
    const pt_http_limits *lim = &c->srv->lim;
    url_split(r);
    r->method = llhttp_method_name((llhttp_method_t)llhttp_get_method(p));
    r->http_major = llhttp_get_http_major(p);
    r->http_minor = llhttp_get_http_minor(p);
    r->keep_alive = llhttp_should_keep_alive(p);
    r->is_head = strcmp(r->method, "HEAD") == 0;
    bool has_len = p->flags & F_CONTENT_LENGTH;
    if (has_len && p->content_length > lim->max_body_bytes) {
        c->err_status = 413;
        c->err_msg = "request body too large";
        return -1;
    }
    if (has_len && p->content_length > 0) {
        size_t want = (size_t)p->content_length + 1;
        r->body = malloc(want);
        if (!r->body) return out_of_memory(c);
        r->body_cap = want;
    }
    /* A client that waits for "100 Continue" before sending its body gets it
     * now that the headers are accepted (too-large bodies got 413 above). */
    const char *expect = pt_http_header(r, "expect");
    bool has_body = (has_len && p->content_length > 0) || (p->flags & F_CHUNKED);
    if (expect && strcasecmp(expect, "100-continue") == 0 && has_body && r->http_major == 1 &&
        r->http_minor >= 1) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        uv_buf_t b = uv_buf_init((char *)cont, sizeof cont - 1);
        if (conn_send(c, &b, 1) < 0) return -1; /* after any response still queued */
    }
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len) {
    pt_http_conn *c = conn_of(p);
    pt_http_request *r = c->cur;
    if (r->body_len + len > c->srv->lim.max_body_bytes) {
        c->err_status = 413;
        c->err_msg = "request body too large";
        return -1;
    }
    if (!buf_reserve(&r->body, &r->body_cap, r->body_len + len + 1)) return out_of_memory(c);
    memcpy(r->body + r->body_len, at, len);
    r->body_len += len;
    r->body[r->body_len] = 0;
    return 0;
}

static int on_message_complete(llhttp_t *p) {
    pt_http_conn *c = conn_of(p);
    pt_http_request *r = c->cur;
    if (llhttp_get_upgrade(p)) r->keep_alive = false; /* no protocol switch here */
    c->ready = r;
    c->cur = NULL;
    c->in_message = false;
    return HPE_PAUSED; /* parse the next request only after this one is answered */
}

static const llhttp_settings_t parser_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_method = on_method,
    .on_method_complete = on_method_complete,
    .on_version = on_version,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_header_field_complete = on_header_field_complete,
    .on_header_value_complete = on_header_value_complete,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* ---- Writing ---- */

static void write_cb(uv_write_t *w, int status) {
    http_wreq *wr = (http_wreq *)w;
    pt_http_conn *c = wr->c;
    c->out_buffered -= wr->len;
    free(wr);
    if (c->closing) return;
    if (status < 0) {
        conn_close(c);
        return;
    }
    const pt_http_limits *lim = &c->srv->lim;
    if (c->drain_wanted && c->out_buffered <= lim->max_out_buffer / 2) {
        c->drain_wanted = false;
        if (c->timer_mode == TIMER_STALL) {
            uv_timer_stop(&c->timer);
            c->timer_mode = TIMER_NONE;
        }
        pt_http_request *r = c->inflight;
        if (r && r->on_drain) r->on_drain(r->ctx); /* may end r; c stays valid (close is deferred) */
    }
    if (!c->closing && !c->lingering && !c->inflight && c->in_off < c->in_len &&
        c->out_buffered <= lim->max_out_buffer)
        conn_kick(c);
}

/* Sends bufs (copied if the kernel does not take them now). 0, or -1 when
 * the connection is gone or failed (it is then closing). */
static int conn_send(pt_http_conn *c, const uv_buf_t *bufs, unsigned nbufs) {
    if (c->closing || c->lingering) return -1;
    size_t total = 0, done = 0;
    for (unsigned i = 0; i < nbufs; i++) total += bufs[i].len;
    if (total == 0) return 0;
    if (c->out_buffered == 0) {
        int n = uv_try_write((uv_stream_t *)&c->tcp, bufs, nbufs);
        if (n >= 0) {
            done = (size_t)n;
        } else if (n != UV_EAGAIN) {
            conn_close(c);
            return -1;
        }
    }
    if (done == total) return 0;
    size_t rem = total - done;
    http_wreq *wr = malloc(sizeof *wr + rem);
    if (!wr) {
        conn_close(c);
        return -1;
    }
    size_t skip = done, pos = 0;
    for (unsigned i = 0; i < nbufs; i++) {
        size_t len = bufs[i].len;
        if (skip >= len) {
            skip -= len;
            continue;
        }
        memcpy(wr->data + pos, bufs[i].base + skip, len - skip);
        pos += len - skip;
        skip = 0;
    }
    wr->c = c;
    wr->len = rem;
    uv_buf_t b = uv_buf_init(wr->data, (unsigned)rem);
    if (uv_write(&wr->w, (uv_stream_t *)&c->tcp, &b, 1, write_cb) < 0) {
        free(wr);
        conn_close(c);
        return -1;
    }
    c->out_buffered += rem;
    if (c->out_buffered > c->srv->stats.out_buffered_peak)
        c->srv->stats.out_buffered_peak = c->out_buffered;
    return 0;
}

/* Room on the stack for a response head: every head the server writes
 * fits, so that answering needs no allocation (a 500 "out of memory" too). */
enum { HEAD_STACK = 1024 };

/* Formats a status line plus headers into stack (HEAD_STACK bytes) when
 * they fit, else into memory the caller frees (the result != stack); NULL
 * when out of memory. */
static char *format_head(char *stack, int status, const char *content_type, const char *length_hdr,
                         bool keep_alive, const char *extra, size_t *len) {
    size_t cap = 160 + (content_type ? strlen(content_type) : 0) + strlen(length_hdr) +
                 (extra ? strlen(extra) : 0);
    char *h = cap <= HEAD_STACK ? stack : malloc(cap);
    if (!h) return NULL;
    int n = snprintf(h, cap, "HTTP/1.1 %d %s\r\n%s%s%s%sConnection: %s\r\n%s\r\n", status,
                     status_text(status), content_type ? "Content-Type: " : "",
                     content_type ? content_type : "", content_type ? "\r\n" : "", length_hdr,
                     keep_alive ? "keep-alive" : "close", extra ? extra : "");
    assert(n > 0 && (size_t)n < cap);
    *len = (size_t)n;
    return h;
}

static size_t json_escape(char *out, size_t cap, const char *s) {
    size_t n = 0;
    for (; *s && n + 7 < cap; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') {
            out[n++] = '\\';
            out[n++] = (char)ch;
        } else if (ch < 0x20) {
            n += (size_t)snprintf(out + n, cap - n, "\\u%04x", ch);
        } else {
            out[n++] = (char)ch;
        }
    }
    out[n] = 0;
    return n;
}

static size_t error_json(char *out, size_t cap, int status, const char *type, const char *msg) {
    char esc[512];
    json_escape(esc, sizeof esc, msg ? msg : status_text(status));
    if (!type) type = status < 500 ? "invalid_request_error" : "server_error";
    int n = snprintf(out, cap, "{\"error\":{\"message\":\"%s\",\"type\":\"%s\",\"param\":null,\"code\":%d}}",
                     esc, type, status);
    return n < 0 ? 0 : (size_t)n < cap ? (size_t)n : cap - 1;
}

/* ---- Connection life ---- */

static void timer_cb(uv_timer_t *t) {
    pt_http_conn *c = t->data;
    int mode = c->timer_mode;
    c->timer_mode = TIMER_NONE;
    switch (mode) {
    case TIMER_PROCESS: conn_process(c); break;
    case TIMER_IDLE: conn_close(c); break;
    case TIMER_HEADER: conn_fail(c, 408, "request not received in time"); break;
    case TIMER_STALL: conn_close(c); break; /* the client stopped reading its stream */
    case TIMER_LINGER: conn_close(c); break;
    default: break;
    }
}

static void conn_timer_start(pt_http_conn *c, int mode, uint64_t ms) {
    if (c->closing) return;
    c->timer_mode = mode;
    uv_timer_start(&c->timer, timer_cb, ms, 0);
}

static void conn_timer_stop(pt_http_conn *c) {
    c->timer_mode = TIMER_NONE;
    uv_timer_stop(&c->timer);
}

/* A connection's memory (zeroed, with its input buffer); NULL when out of memory. */
static pt_http_conn *conn_alloc(void) {
    pt_http_conn *c = calloc(1, sizeof *c);
    if (c && !(c->in = malloc(CONN_IN_CAP))) {
        free(c);
        c = NULL;
    }
    return c;
}

static void conn_free_memory(pt_http_conn *c) {
    if (!c) return;
    free(c->in);
    free(c);
}

static void server_maybe_finished(pt_http_server *s) {
    if (!s->closing || !s->listener_closed || s->nconns > 0 || s->sink_open) return;
    void (*cb)(void *) = s->on_closed;
    void *arg = s->on_closed_arg;
    conn_free_memory(s->spare);
    free(s);
    if (cb) cb(arg);
}

static void conn_closed_cb(uv_handle_t *h) {
    pt_http_conn *c = h->data;
    if (--c->handles_open > 0) return;
    pt_http_server *s = c->srv;
    pt_http_request *r = c->inflight;
    if (r) {
        /* The client is gone before the response was complete. */
        r->conn = NULL;
        access_log(r, "aborted");
        s->stats.requests_aborted++;
    }
    req_free(c->cur);
    req_free(c->ready);
    if (c->prev) c->prev->next = c->next;
    else s->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    s->nconns--;
    if (!c->rejected) s->nactive--;
    s->stats.connections_open = s->nconns;
    conn_free_memory(c);
    if (r && r->on_abort) r->on_abort(r->ctx); /* r stays valid until the app releases it */
    server_maybe_finished(s);
}

static void conn_close(pt_http_conn *c) {
    if (c->closing) return;
    c->closing = true;
    uv_close((uv_handle_t *)&c->tcp, conn_closed_cb);
    uv_close((uv_handle_t *)&c->timer, conn_closed_cb);
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    pt_http_conn *c = h->data;
    if (c->in_off > 0 && CONN_IN_CAP - c->in_len < 4096) {
        memmove(c->in, c->in + c->in_off, c->in_len - c->in_off);
        c->in_len -= c->in_off;
        c->in_off = 0;
    }
    *buf = uv_buf_init(c->in + c->in_len, (unsigned)(CONN_IN_CAP - c->in_len));
}

static void shutdown_cb(uv_shutdown_t *req, int status) {
    pt_http_conn *c = req->data;
    if (c->closing) return;
    if (status < 0) {
        conn_close(c);
        return;
    }
    conn_timer_start(c, TIMER_LINGER, LINGER_MS);
}

static void read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf);

/* Our side is done: FIN after the queued writes, then discard input until the
 * client closes or the linger timer fires. The queued writes get
 * idle_timeout_ms to drain. */
static void conn_shutdown(pt_http_conn *c) {
    if (c->closing || c->lingering) return;
    c->lingering = true;
    c->drain_wanted = false;
    c->in_off = c->in_len = 0;
    if (c->read_paused) {
        c->read_paused = false;
        uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb);
    }
    c->shutdown_req.data = c;
    if (uv_shutdown(&c->shutdown_req, (uv_stream_t *)&c->tcp, shutdown_cb) < 0) {
        conn_close(c);
        return;
    }
    conn_timer_start(c, TIMER_LINGER, c->srv->lim.idle_timeout_ms);
}

/* Answers a request the server rejects itself, then closes. */
static void conn_fail(pt_http_conn *c, int status, const char *msg) {
    if (c->closing || c->lingering) return;
    pt_http_server *s = c->srv;
    char body[768];
    size_t blen = error_json(body, sizeof body, status, NULL, msg);
    char length_hdr[64];
    snprintf(length_hdr, sizeof length_hdr, "Content-Length: %zu\r\n", blen);
    size_t hlen;
    char stack[HEAD_STACK];
    char *head = format_head(stack, status, "application/json", length_hdr, false, NULL, &hlen);
    pt_http_request none = {.t_start = pt_now()}; /* for the log line when no request began */
    pt_http_request *r = c->cur ? c->cur : &none;
    if (r->url && !r->path) url_split(r);
    r->status = status;
    r->bytes_out = hlen + blen;
    access_log(r, msg);
    s->stats.errors_sent++;
    uv_buf_t b[2] = {uv_buf_init(head, (unsigned)hlen), uv_buf_init(body, (unsigned)blen)};
    conn_send(c, b, 2);
    if (head != stack) free(head);
    conn_shutdown(c);
}

/* What a connection without a request in flight does next: parse what is
 * buffered (from the loop, never inside the application's call), or wait. */
static void conn_kick(pt_http_conn *c) {
    if (c->closing || c->lingering || c->inflight || c->processing) return;
    if (c->in_off < c->in_len) {
        if (c->out_buffered <= c->srv->lim.max_out_buffer)
            conn_timer_start(c, TIMER_PROCESS, 0);
        else if (c->timer_mode != TIMER_STALL) /* write_cb kicks again when the buffer
                                                  drains, unless the client never reads */
            conn_timer_start(c, TIMER_STALL, c->srv->lim.idle_timeout_ms);
    } else if (!c->in_message) {
        conn_timer_start(c, TIMER_IDLE, c->srv->lim.idle_timeout_ms);
    }
    if (c->read_paused) {
        c->read_paused = false;
        uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb);
    }
}

static void conn_dispatch(pt_http_conn *c, pt_http_request *r) {
    pt_http_server *s = c->srv;
    conn_timer_stop(c);
    r->conn = c;
    c->inflight = r;
    s->stats.requests_total++;
    s->handler(s->user, r); /* may end r before returning */
}

/* Parses buffered input until a request is in flight, the input runs out, or
 * the connection is closing. */
static void conn_process(pt_http_conn *c) {
    if (c->processing) return;
    c->processing = true;
    const pt_http_limits *lim = &c->srv->lim;
    while (!c->closing && !c->lingering && !c->inflight && c->in_off < c->in_len &&
           c->out_buffered <= lim->max_out_buffer) {
        const char *data = c->in + c->in_off;
        size_t len = c->in_len - c->in_off;
        if (c->parser_paused) {
            llhttp_resume(&c->parser);
            c->parser_paused = false;
        }
        llhttp_errno_t e = llhttp_execute(&c->parser, data, len);
        size_t used = len;
        if (e == HPE_PAUSED) {
            used = (size_t)(llhttp_get_error_pos(&c->parser) - data);
            c->parser_paused = true;
        } else if (e != HPE_OK) {
            /* Includes HPE_PAUSED_UPGRADE: on_message_complete already
             * paused for upgrade requests, so reaching it is an error. */
            c->in_off = c->in_len;
            int status = c->err_status ? c->err_status : 400;
            const char *msg = c->err_status ? c->err_msg : llhttp_get_error_reason(&c->parser);
            conn_fail(c, status, msg && *msg ? msg : "malformed request");
            break;
        }
        c->in_off += used;
        if (c->ready && !c->closing) { /* closing: freed in the close callback */
            pt_http_request *r = c->ready;
            c->ready = NULL;
            conn_dispatch(c, r);
        }
    }
    if (c->in_off == c->in_len) c->in_off = c->in_len = 0;
    c->processing = false;
    conn_kick(c);
}

static void read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf) {
    pt_http_conn *c = st->data;
    if (c->closing) return;
    if (nread == UV_ENOBUFS) { /* buffer full while a request is in flight */
        uv_read_stop(st);
        c->read_paused = true;
        return;
    }
    if (nread < 0) { /* EOF or error: the client is gone */
        conn_close(c);
        return;
    }
    if (nread == 0) return;
    c->in_len += (size_t)nread;
    if (c->lingering) {
        c->in_off = c->in_len = 0;
        return;
    }
    if (!c->inflight) {
        conn_process(c);
    } else if (c->in_len == CONN_IN_CAP && c->in_off == 0) {
        /* Pipelined bytes fill the buffer: stop reading until the response is
         * done (a disconnect is then seen only at the next read). */
        uv_read_stop(st);
        c->read_paused = true;
    }
}


/* A connection with its TCP handle and idle timer initialised (not yet
 * accepted), linked into the server's list; its memory is the spare when
 * there is one. NULL when out of memory. */
static pt_http_conn *conn_new(pt_http_server *s) {
    pt_http_conn *c = s->spare ? s->spare : conn_alloc();
    s->spare = NULL;
    if (!c) return NULL;
    c->srv = s;
    uv_tcp_init(s->loop, &c->tcp);
    uv_timer_init(s->loop, &c->timer);
    c->tcp.data = c;
    c->timer.data = c;
    c->handles_open = 2;
    c->next = s->conns;
    if (s->conns) s->conns->prev = c;
    s->conns = c;
    s->nconns++;
    return c;
}
/* What a client accepted into the sink reads: no request of its was read. */
#define SINK_BODY "{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\",\"param\":null,\"code\":503}}"
static const char SINK_RESPONSE[] = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                    "Content-Length: 83\r\nConnection: close\r\n\r\n" SINK_BODY;
_Static_assert(sizeof(SINK_BODY) - 1 == 83, "SINK_RESPONSE's Content-Length is its body's");

static void on_connection(uv_stream_t *ls, int status);

static void sink_closed_cb(uv_handle_t *h) {
    pt_http_server *s = h->data;
    if (--s->sink_handles > 0) return;
    s->sink_open = false;
    if (s->accept_waiting && !s->closing) {
        s->accept_waiting = false;
        on_connection((uv_stream_t *)&s->tcp, 0); /* the client libuv holds for us */
    }
    server_maybe_finished(s);
}

static void sink_close(pt_http_server *s) {
    if (!uv_is_closing((uv_handle_t *)&s->sink)) uv_close((uv_handle_t *)&s->sink, sink_closed_cb);
    if (!uv_is_closing((uv_handle_t *)&s->sink_timer)) uv_close((uv_handle_t *)&s->sink_timer, sink_closed_cb);
}

static void sink_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    pt_http_server *s = h->data;
    *buf = uv_buf_init(s->sink_drop, sizeof s->sink_drop);
}

static void sink_read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf) {
    if (nread < 0) sink_close(st->data); /* the client closed (or failed): done */
}

static void sink_timer_cb(uv_timer_t *t) { sink_close(t->data); }

/* No memory for a connection: the client is accepted into the sink, gets a
 * 503 if its socket takes it at once, and our side is shut down; what it
 * sends is read and dropped until it closes (closing with its request
 * unread would reset the connection before it reads the answer), for at
 * most LINGER_MS. While the sink is in use, the next client waits in libuv
 * (which stops accepting until uv_accept) and is taken when the sink is
 * free. */
static void accept_into_sink(pt_http_server *s) {
    if (s->sink_open) {
        s->accept_waiting = true;
        return;
    }
    s->stats.connections_rejected++;
    uv_tcp_init(s->loop, &s->sink);
    uv_timer_init(s->loop, &s->sink_timer);
    s->sink.data = s->sink_timer.data = s;
    s->sink_open = true;
    s->sink_handles = 2;
    pt_log(PT_LOG_ERROR, "http: out of memory accepting a connection: answered 503");
    uv_os_fd_t fd;
    if (uv_accept((uv_stream_t *)&s->tcp, (uv_stream_t *)&s->sink) != 0 ||
        uv_fileno((uv_handle_t *)&s->sink, &fd) != 0) {
        sink_close(s);
        return;
    }
    uv_buf_t b = uv_buf_init((char *)SINK_RESPONSE, sizeof(SINK_RESPONSE) - 1);
    uv_try_write((uv_stream_t *)&s->sink, &b, 1);
    shutdown(fd, SHUT_WR);
    uv_read_start((uv_stream_t *)&s->sink, sink_alloc_cb, sink_read_cb);
    uv_timer_start(&s->sink_timer, sink_timer_cb, LINGER_MS, 0);
}

static void on_connection(uv_stream_t *ls, int status) {
    pt_http_server *s = ls->data;
    if (status < 0) {
        pt_log(PT_LOG_WARN, "http: accept: %s", uv_strerror(status));
        return;
    }
    if (s->closing) return;
    pt_http_conn *c = conn_new(s);
    if (!c) {
        accept_into_sink(s);
        return;
    }
    if (!s->spare) s->spare = conn_alloc(); /* NULL: the next client allocates its own */
    s->stats.connections_open = s->nconns;
    s->stats.connections_total++;
    int rc = uv_accept(ls, (uv_stream_t *)&c->tcp);
    if (rc < 0) {
        pt_log(PT_LOG_WARN, "http: accept: %s", uv_strerror(rc));
        c->rejected = true;
        conn_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1); /* streamed tokens go out as they are written */
    llhttp_init(&c->parser, HTTP_REQUEST, &parser_settings);
    c->parser.data = c;
    uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb);
    if (s->nactive >= s->lim.max_connections) {
        c->rejected = true;
        s->stats.connections_rejected++;
        conn_fail(c, 503, "too many connections");
        return;
    }
    s->nactive++;
    conn_timer_start(c, TIMER_IDLE, s->lim.idle_timeout_ms);
}

/* ---- Responses ---- */

/* The application's ownership of r ends here. */
static void request_finish(pt_http_request *r) {
    pt_http_conn *c = r->conn;
    if (c) {
        bool complete = r->resp == RESP_DONE;
        access_log(r, complete ? NULL : "released without response");
        c->inflight = NULL;
        r->conn = NULL;
        c->drain_wanted = false;
        if (c->timer_mode == TIMER_STALL) conn_timer_stop(c);
        if (!complete) conn_close(c);
        else if (!r->keep_alive || c->srv->closing) conn_shutdown(c);
        else conn_kick(c); /* no-op inside conn_process, which goes on by itself */
    }
    req_free(r);
}

static bool status_has_body(int status) {
    return !(status < 200 || status == 204 || status == 304);
}

void pt_http_respond(pt_http_request *r, int status, const char *content_type, const char *body,
                     size_t len, const char *extra_headers) {
    assert(r->resp == RESP_NONE);
    pt_http_conn *c = r->conn;
    r->status = status;
    r->resp = RESP_DONE;
    if (c && !c->closing && !c->lingering) {
        bool has_body = status_has_body(status);
        char length_hdr[64] = "";
        if (has_body) snprintf(length_hdr, sizeof length_hdr, "Content-Length: %zu\r\n", len);
        bool keep = r->keep_alive && !c->srv->closing;
        r->keep_alive = keep;
        size_t hlen;
        char stack[HEAD_STACK];
        char *head = format_head(stack, status, has_body ? content_type : NULL, length_hdr, keep,
                                 extra_headers, &hlen);
        size_t blen = has_body && !r->is_head ? len : 0;
        if (!head) {
            conn_close(c); /* out of memory for headers that big: nothing can be sent */
        } else {
            uv_buf_t b[2] = {uv_buf_init(head, (unsigned)hlen), uv_buf_init((char *)body, (unsigned)blen)};
            conn_send(c, b, blen ? 2 : 1);
            r->bytes_out = hlen + blen;
            if (head != stack) free(head);
        }
    }
    request_finish(r);
}

void pt_http_respond_error(pt_http_request *r, int status, const char *type, const char *message,
                           const char *extra_headers) {
    char body[768];
    size_t n = error_json(body, sizeof body, status, type, message);
    pt_http_respond(r, status, "application/json", body, n, extra_headers);
}

void pt_http_stream_begin(pt_http_request *r, int status, const char *content_type,
                          const char *extra_headers) {
    assert(r->resp == RESP_NONE);
    pt_http_conn *c = r->conn;
    r->status = status;
    r->resp = RESP_STREAM;
    /* HTTP/1.0 has no chunked encoding: the end of the body is the close. */
    r->chunked = r->http_major == 1 && r->http_minor >= 1;
    if (!r->chunked) r->keep_alive = false;
    if (!c || c->closing || c->lingering) return;
    if (c->srv->closing) r->keep_alive = false;
    size_t hlen;
    char stack[HEAD_STACK];
    char *head = format_head(stack, status, content_type, r->chunked ? "Transfer-Encoding: chunked\r\n" : "",
                             r->keep_alive, extra_headers, &hlen);
    if (!head) {
        conn_close(c); /* the writes that follow see the connection gone */
        return;
    }
    uv_buf_t b = uv_buf_init(head, (unsigned)hlen);
    conn_send(c, &b, 1);
    r->bytes_out += hlen;
    if (head != stack) free(head);
}

int pt_http_stream_write(pt_http_request *r, const char *data, size_t len) {
    assert(r->resp == RESP_STREAM);
    pt_http_conn *c = r->conn;
    if (!c || c->closing || c->lingering) return -1;
    const pt_http_limits *lim = &c->srv->lim;
    if (c->out_buffered > 2 * lim->max_out_buffer) {
        /* The writer ignored backpressure: bound the memory, drop the client. */
        conn_close(c);
        return -1;
    }
    if (len > 0 && !r->is_head) {
        char size_line[24];
        int n = snprintf(size_line, sizeof size_line, "%zx\r\n", len);
        uv_buf_t b[3];
        unsigned nb = 0;
        if (r->chunked) b[nb++] = uv_buf_init(size_line, (unsigned)n);
        b[nb++] = uv_buf_init((char *)data, (unsigned)len);
        if (r->chunked) b[nb++] = uv_buf_init("\r\n", 2);
        if (conn_send(c, b, nb) < 0) return -1;
        r->bytes_out += len + (r->chunked ? (size_t)n + 2 : 0);
    }
    if (c->out_buffered > lim->max_out_buffer) {
        if (!c->drain_wanted) {
            c->drain_wanted = true;
            /* A client that never reads would hold the stream forever. */
            conn_timer_start(c, TIMER_STALL, lim->idle_timeout_ms);
        }
        return 1;
    }
    return 0;
}

void pt_http_stream_end(pt_http_request *r) {
    assert(r->resp == RESP_STREAM);
    pt_http_conn *c = r->conn;
    r->resp = RESP_DONE;
    if (c && !c->closing && !c->lingering && r->chunked && !r->is_head) {
        uv_buf_t b = uv_buf_init("0\r\n\r\n", 5);
        conn_send(c, &b, 1);
        r->bytes_out += 5;
    }
    request_finish(r);
}

void pt_http_request_release(pt_http_request *r) { request_finish(r); }

/* ---- Server ---- */

static void listener_closed_cb(uv_handle_t *h) {
    pt_http_server *s = h->data;
    s->listener_closed = true;
    server_maybe_finished(s);
}

static void limits_fill(pt_http_limits *out, const pt_http_limits *in) {
    pt_http_limits d = pt_http_limits_default();
    if (in) *out = *in;
    else *out = d;
    if (!out->max_header_bytes) out->max_header_bytes = d.max_header_bytes;
    if (!out->max_body_bytes) out->max_body_bytes = d.max_body_bytes;
    if (!out->max_out_buffer) out->max_out_buffer = d.max_out_buffer;
    if (!out->max_connections) out->max_connections = d.max_connections;
    if (!out->idle_timeout_ms) out->idle_timeout_ms = d.idle_timeout_ms;
    if (!out->header_timeout_ms) out->header_timeout_ms = d.header_timeout_ms;
}

int pt_http_server_start(pt_http_server **out, uv_loop_t *loop, const char *host, int port,
                         const pt_http_limits *lim, pt_http_handler handler, void *user,
                         pt_err *err) {
    if (!out || !loop || !host || !handler || port < 0 || port > 65535)
        return pt_err_set(err, PT_ERR_INVALID, "http: bad arguments to pt_http_server_start");
    *out = NULL;
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    socklen_t slen;
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)&ss) == 0) {
        slen = sizeof(struct sockaddr_in);
    } else if (uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss) == 0) {
        slen = sizeof(struct sockaddr_in6);
    } else {
        return pt_err_set(err, PT_ERR_INVALID, "http: host '%s' is not an IPv4 or IPv6 address",
                          host);
    }
    /* A write to a socket whose peer has gone raises SIGPIPE, whose default
     * action kills the process; libuv does not mask it. A server wants the
     * EPIPE error instead. A disposition the program chose is left alone. */
    struct sigaction sa;
    if (sigaction(SIGPIPE, NULL, &sa) == 0 && !(sa.sa_flags & SA_SIGINFO) &&
        sa.sa_handler == SIG_DFL)
        signal(SIGPIPE, SIG_IGN);

    /* Bind and listen with plain calls first, so that a failure leaves no
     * libuv handle behind that would need the loop to close it. */
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return pt_err_set(err, PT_ERR_IO, "http: socket: %s", strerror(errno));
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&ss, slen) < 0 || listen(fd, 511) < 0) {
        int e = errno;
        close(fd);
        return pt_err_set(err, PT_ERR_IO, "http: cannot listen on %s port %d: %s", host, port,
                          strerror(e));
    }
    struct sockaddr_storage bound;
    socklen_t blen = sizeof bound;
    getsockname(fd, (struct sockaddr *)&bound, &blen);
    int bound_port = bound.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&bound)->sin6_port)
                                                 : ntohs(((struct sockaddr_in *)&bound)->sin_port);

    pt_http_server *s = pt_xcalloc(1, sizeof *s);
    s->loop = loop;
    limits_fill(&s->lim, lim);
    s->handler = handler;
    s->user = user;
    s->port = bound_port;
    s->spare = conn_alloc(); /* NULL: the first client allocates its own */
    uv_tcp_init(loop, &s->tcp);
    s->tcp.data = s;
    int rc = uv_tcp_open(&s->tcp, fd);
    if (rc < 0) close(fd); /* not adopted by the handle */
    if (rc == 0) rc = uv_listen((uv_stream_t *)&s->tcp, 511, on_connection);
    if (rc < 0) {
        /* Handle initialised: it must go through uv_close; the server is then
         * freed in its close callback (closing with no on_closed). */
        s->closing = true;
        uv_close((uv_handle_t *)&s->tcp, listener_closed_cb);
        return pt_err_set(err, PT_ERR_IO, "http: listen on %s port %d: %s", host, port,
                          uv_strerror(rc));
    }
    pt_log(PT_LOG_INFO, "http: listening on %s port %d", host, bound_port);
    *out = s;
    return PT_OK;
}

int pt_http_server_port(const pt_http_server *s) { return s->port; }

void pt_http_server_stats(const pt_http_server *s, pt_http_stats *st) { *st = s->stats; }

void pt_http_server_close(pt_http_server *s, void (*on_closed)(void *), void *arg) {
    assert(!s->closing);
    s->closing = true;
    s->on_closed = on_closed;
    s->on_closed_arg = arg;
    uv_close((uv_handle_t *)&s->tcp, listener_closed_cb);
    /* Connections unlink themselves only in their close callbacks, so the
     * list stays walkable while closing them. */
    for (pt_http_conn *c = s->conns; c; c = c->next) {
        if (c->closing || c->lingering || c->inflight) continue; /* in flight: closes when done */
        if (c->out_buffered > 0) conn_shutdown(c); /* let a finished response drain */
        else conn_close(c);
    }
}
