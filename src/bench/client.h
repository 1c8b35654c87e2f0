/* HTTP/1.1 client for `proteus bench`, on libuv and llhttp.
 *
 * One client talks to one server (http://host:port[/prefix]); it opens as many
 * connections as there are calls in flight, sends one request per connection
 * at a time, and keeps a connection whose response allowed keep-alive on an
 * idle list for the next call. Responses are parsed as they arrive: a
 * `text/event-stream` body is split into SSE events and every event that
 * carries generated text gets a timestamp; any other body is collected
 * (bounded) for the caller.
 *
 * Times written into records are seconds on pt_now()'s clock minus the
 * client's epoch (pt_client_set_epoch). */
#ifndef PROTEUS_BENCH_CLIENT_H
#define PROTEUS_BENCH_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#include "proteus/bench.h"
#include "proteus/util.h"

typedef struct pt_client pt_client;
typedef struct pt_client_conn pt_client_conn;
typedef struct pt_client_call pt_client_call;

typedef void (*pt_client_done_cb)(pt_client_call *call);

/* One request and its outcome. The caller owns the struct and keeps it (and
 * `rec`) alive until `done` runs; the client copies method, path and body. */
struct pt_client_call {
    /* in */
    const char *method;       /* "GET" or "POST" */
    const char *path;         /* appended to the base URL's path prefix */
    const char *body;         /* NULL for none; sent as application/json */
    size_t body_len;
    double timeout_s;         /* whole request, from the send; <= 0 = none */
    pt_bench_record *rec;     /* filled: t_sent, t_first, t_end, token_times, output_tokens, ok, status, error */
    pt_client_done_cb done;
    void *data;               /* for the caller */
    /* out */
    char *resp_body;          /* non-SSE body, NUL-terminated, malloc'd (caller frees), or NULL */
    size_t resp_len;
    uint32_t usage_prompt;    /* usage.prompt_tokens when the server sent usage, else 0 */
    bool usage_seen;
    size_t n_chunks;          /* SSE events that carried generated text */
    /* private to the client */
    pt_client_conn *conn;
    bool retried;             /* already resent once after a stale keep-alive connection */
    bool saw_done;            /* data: [DONE] seen */
    bool got_bytes;           /* any response byte arrived */
    size_t cap_token_times;
    size_t resp_cap;
};

/* Parses base_url ("http://host[:port][/prefix]"; https is not supported)
 * and resolves the host once. api_key may be NULL. */
int pt_client_init(pt_client **out, uv_loop_t *loop, const char *base_url, const char *api_key, pt_err *err);
/* Closes idle connections; calls in flight must have finished or been
 * cancelled. The client's memory is freed once its last handle has closed,
 * so the loop must run afterwards. */
void pt_client_close(pt_client *c);
void pt_client_set_epoch(pt_client *c, double t0);

/* Starts a call: returns 0 and later runs call->done exactly once, or returns
 * a negative code (call->rec holds the reason) and never runs it. */
int pt_client_start(pt_client *c, pt_client_call *call);
/* Fails every call in flight with `reason` (status 0) and closes its
 * connection; each call's done runs before this returns. */
void pt_client_cancel_all(pt_client *c, const char *reason);
size_t pt_client_in_flight(const pt_client *c);
/* Connections opened so far (keep-alive reuse keeps this small). */
size_t pt_client_connections_opened(const pt_client *c);

/* Blocking helper for setup requests (GET /v1/models, POST /tokenize): runs
 * one call on a private loop. Returns 0 with *status and the malloc'd body,
 * or a negative code with err set when there was no HTTP response. */
int pt_client_fetch(const char *base_url, const char *api_key, const char *method, const char *path,
                    const char *body, double timeout_s, int *status, char **resp, size_t *resp_len, pt_err *err);

/* The message of an OpenAI-style error body ({"error": {"message": ...}},
 * {"message": ...} or {"detail": ...}), else NULL. malloc'd. */
char *pt_client_error_message(const char *body, size_t len);

#endif
