/* Generic HTTP/1.1 server on libuv + llhttp. It knows nothing about models:
 * it parses requests, hands each complete one to a handler, and writes the
 * handler's response (whole, or streamed with chunked transfer encoding).
 *
 * Threading: every function here is called from the loop thread only. Work
 * done elsewhere comes back to the loop (e.g. through uv_async) before it
 * responds.
 *
 * Request ownership. The handler receives a pt_http_request and owns it from
 * then on, even after the handler returns (asynchronous responses). The
 * application ends its ownership exactly once, with one of:
 *   - pt_http_respond(...)            (the whole response),
 *   - pt_http_stream_end(...)         (after pt_http_stream_begin),
 *   - pt_http_request_release(...)    (give up: after on_abort, or to drop a
 *                                      request; on a live connection without
 *                                      a complete response, the connection is
 *                                      closed, since nothing else is correct).
 * After that call the pointer is invalid. If the client goes away first, the
 * server calls on_abort (set with pt_http_request_set_callbacks) once, from
 * the loop and never from inside a pt_http_* call; the request then stays
 * valid until the application ends its ownership as above (respond/stream
 * calls on an aborted request write nothing and just end it).
 *
 * Behaviour: keep-alive (HTTP/1.1 by default, HTTP/1.0 with "Connection:
 * keep-alive"); pipelined requests are answered in order, the next one being
 * parsed only once the previous response is complete; header bytes, body
 * bytes, per-connection output and connection count are bounded; a request's
 * headers and body must arrive within header_timeout_ms (408, then close),
 * an idle keep-alive connection is closed after idle_timeout_ms. Errors the
 * server produces itself (400, 408, 413, 431, 503) use the OpenAI error
 * shape and close the connection. One access-log line per request goes to
 * pt_log: method, path (never the query or any header), status, bytes out,
 * latency, and the application's extra string. A client that half-closes
 * (EOF) while its request is in flight is treated as gone (on_abort). */
#ifndef PROTEUS_HTTP_H
#define PROTEUS_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "proteus/util.h"

typedef struct {
    size_t max_header_bytes;    /* request line + headers; over it: 431. Default 16 KiB */
    size_t max_body_bytes;      /* body (announced or chunked); over it: 413. Default 8 MiB */
    size_t max_out_buffer;      /* bytes queued per connection before a writer is told to
                                   pause (stream_write > 0). A stream that keeps writing past
                                   twice this is closed. Default 1 MiB */
    size_t max_connections;     /* open connections; more are answered 503 and closed. 1024 */
    uint64_t idle_timeout_ms;   /* keep-alive connection with no request; also how long a
                                   client may leave output over max_out_buffer unread
                                   before it is closed. Default 60 s */
    uint64_t header_timeout_ms; /* a request's headers and body must arrive within this,
                                   from its first byte (slowloris). Default 30 s */
} pt_http_limits;

/* The defaults listed above. */
pt_http_limits pt_http_limits_default(void);

typedef struct pt_http_server pt_http_server;
typedef struct pt_http_request pt_http_request;

/* Called on the loop thread once per complete request. See ownership above. */
typedef void (*pt_http_handler)(void *user, pt_http_request *req);

/* Binds host:port (an IPv4 or IPv6 literal, e.g. "127.0.0.1", "::", "0.0.0.0";
 * port 0 = ephemeral, see pt_http_server_port) and listens. lim may be NULL
 * (defaults); fields left 0 take their default. Returns 0, or a negative
 * PT_ERR_* with err set: nothing to close then (bind and listen errors are
 * found before any libuv handle exists; only if libuv then refused the socket
 * is a handle left closing, freed when the loop next runs). If SIGPIPE is at
 * its default (terminate), it is set to ignored: writes to a vanished client
 * must fail with EPIPE, not kill the process. */
int pt_http_server_start(pt_http_server **out, uv_loop_t *loop, const char *host, int port,
                         const pt_http_limits *lim, pt_http_handler handler, void *user,
                         pt_err *err);

/* The port actually bound. */
int pt_http_server_port(const pt_http_server *s);

/* Graceful stop: stops accepting, closes idle connections and ones with a
 * partial request, lets in-flight responses finish (sent with Connection:
 * close). on_closed(arg) runs once every handle is closed; the server is then
 * freed. The application must finish or release its in-flight requests for
 * this to happen (e.g. end its streams). Call once. */
void pt_http_server_close(pt_http_server *s, void (*on_closed)(void *arg), void *arg);

typedef struct {
    size_t connections_open;   /* now */
    uint64_t connections_total;
    uint64_t connections_rejected; /* over max_connections (503) */
    uint64_t requests_total;   /* handed to the handler */
    uint64_t requests_aborted; /* client gone before the response was complete */
    uint64_t errors_sent;      /* 400/408/413/431/503 sent by the server itself */
    size_t out_buffered_peak;  /* largest bytes queued on one connection, ever */
} pt_http_stats;

void pt_http_server_stats(const pt_http_server *s, pt_http_stats *st);

/* ---- The request (valid while owned, see above) ---- */

const char *pt_http_method(const pt_http_request *req); /* "GET", "POST", ... */
const char *pt_http_path(const pt_http_request *req);   /* without query; not decoded */
const char *pt_http_query(const pt_http_request *req);  /* after '?', "" if none */
/* First header with this name (case-insensitive), or NULL. Value without
 * surrounding whitespace. */
const char *pt_http_header(const pt_http_request *req, const char *name);
/* Body bytes (NUL-terminated for convenience, len excludes it); "" if none. */
const char *pt_http_body(const pt_http_request *req, size_t *len);

/* on_drain(ctx): the output buffer fell back under half of max_out_buffer
 * after stream_write returned > 0. on_abort(ctx): the connection was lost
 * before the response was complete (once, from the loop). Either may be NULL. */
void pt_http_request_set_callbacks(pt_http_request *req, void (*on_drain)(void *ctx),
                                   void (*on_abort)(void *ctx), void *ctx);

/* Appended to this request's access-log line (copied; e.g. "tokens_in=5"). */
void pt_http_request_set_log_extra(pt_http_request *req, const char *extra);

/* ---- Responses ---- */

/* Whole response with Content-Length. extra_headers: complete header lines,
 * each ending "\r\n" (e.g. "Retry-After: 1\r\n"), or NULL. Ends ownership. */
void pt_http_respond(pt_http_request *req, int status, const char *content_type,
                     const char *body, size_t len, const char *extra_headers);

/* OpenAI-shaped error {"error":{"message","type","param":null,"code":status}}.
 * type NULL: "invalid_request_error" for 4xx, "server_error" otherwise. Ends
 * ownership. */
void pt_http_respond_error(pt_http_request *req, int status, const char *type,
                           const char *message, const char *extra_headers);

/* Streaming: chunked transfer encoding for HTTP/1.1 clients, close-delimited
 * for HTTP/1.0. stream_write returns 0 when accepted, > 0 when accepted but
 * the connection's buffer is over max_out_buffer (stop producing until
 * on_drain), < 0 when the connection is gone (nothing written; on_abort will
 * come or has come). len 0 writes nothing. stream_end ends ownership. */
void pt_http_stream_begin(pt_http_request *req, int status, const char *content_type,
                          const char *extra_headers);
int pt_http_stream_write(pt_http_request *req, const char *data, size_t len);
void pt_http_stream_end(pt_http_request *req);

/* Ends ownership without (or without finishing) a response. */
void pt_http_request_release(pt_http_request *req);

/* Constant-time equality for secrets (API keys): the time depends only on
 * the lengths, never on where the contents differ. */
bool pt_http_const_time_eq(const char *a, size_t alen, const char *b, size_t blen);

#endif
