/* The response side of `proteus bench`'s HTTP client (src/bench/client.c):
 * llhttp with the client's callbacks, the SSE splitter and the JSON of each
 * event or body, fed through the client's own read callback as a socket
 * would feed it. The file is included so that its static functions are
 * reachable; the library archive then never pulls in its own copy.
 *
 * Input: byte 0 sets the read size (1..256 bytes, so that lines and events
 * are split across reads as on a real socket), the rest is the server's
 * response. After it, end of stream. Checked: the done callback runs exactly
 * once, a failed call says why, a successful one has a 2xx status and one
 * token time per counted chunk (when the stream sent no usage). */
#include "../../src/bench/client.c"

#include "fuzz_common.h"

static uv_loop_t loop;
static pt_client *client;
static int done_calls;

static void on_done(pt_client_call *call) { done_calls++; }

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    fuzz_quiet();
    uv_loop_init(&loop);
    pt_err err;
    /* A numeric address: getaddrinfo resolves it without a lookup; nothing connects. */
    if (pt_client_init(&client, &loop, "http://127.0.0.1:9/v1", NULL, &err) != 0) {
        fprintf(stderr, "fuzz_bench_client: %s\n", err.msg);
        abort();
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    size_t step = (size_t)data[0] + 1;
    data++, size--;

    pt_bench_record rec = {.t_first = -1, .t_end = -1};
    pt_client_call call = {.method = "POST", .path = "/completions", .rec = &rec, .done = on_done};
    done_calls = 0;

    /* A connection as call_open and conn_send leave it, minus the socket. */
    pt_client_conn *k = calloc(1, sizeof(*k));
    k->cl = client;
    uv_tcp_init(&loop, &k->tcp);
    uv_timer_init(&loop, &k->timer);
    k->tcp.data = k->timer.data = k->connect.data = k;
    k->open_handles = 2;
    client->n_open++;
    client->n_opened++;
    k->call = &call;
    call.conn = k;
    list_push(&client->busy, k);
    client->n_busy++;
    llhttp_init(&k->parser, HTTP_RESPONSE, &client->settings);
    k->parser.data = k;

    while (size && !k->closing && k->call) {
        size_t n = size < step ? size : step;
        uv_buf_t buf;
        on_alloc((uv_handle_t *)&k->tcp, n, &buf);
        memcpy(buf.base, data, n);
        on_read((uv_stream_t *)&k->tcp, (ssize_t)n, &buf);
        data += n, size -= n;
    }
    if (!k->closing && k->call) on_read((uv_stream_t *)&k->tcp, UV_EOF, NULL);
    FUZZ_CHECK(done_calls == 1, "done ran %d times", done_calls);
    FUZZ_CHECK(rec.ok || rec.error, "a failed call without a reason");
    if (rec.ok) {
        FUZZ_CHECK(rec.status >= 200 && rec.status < 300, "ok with status %d", rec.status);
        FUZZ_CHECK(call.usage_seen || rec.output_tokens == call.n_chunks, "%u tokens for %zu chunks",
                   rec.output_tokens, call.n_chunks);
    }
    /* An idle (kept-alive) connection is closed as pt_client_close would; the loop frees it. */
    if (!k->closing) conn_close(k);
    while (client->n_open) uv_run(&loop, UV_RUN_NOWAIT);
    free(rec.error);
    free(rec.token_times);
    free(call.resp_body);
    return 0;
}
