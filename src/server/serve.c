/* The server: routes, authentication, generation calls and their events.
 *
 * The server holds one fabric of devices and one or more instances over it
 * (engine.layout), each an engine with its own batcher (its batching loop
 * and thread). A generation call (one HTTP request) fans out into n_choices
 * batcher requests (prompts x n); the scheduler (scheduler/scheduler.h)
 * places each choice: on an instance (the choice remembers it, so that a
 * cancel reaches the right batcher), held until the layout can serve it
 * (re-offered when a transformation ends or a request finishes), or
 * rejected. Under the dynamic policy the scheduler is also asked, on a
 * timer and after arrivals and finishes, whether to merge or split; its
 * answer starts a layout change through the same machinery as POST
 * /v1/layout (server/placement.h builds its state from the choices). The batcher threads report events through
 * on_batch_event, which copies them into one queue; the loop thread drains it
 * in on_async and writes SSE chunks or, at the end, one JSON body. A call
 * lives until every choice has sent its final event AND the HTTP side is done
 * (answered, or released after the client went away).
 *
 * POST /v1/layout changes the layout while requests run (server/relayout.h):
 * a worker thread builds and pre-copies, and the commit comes back to the
 * loop thread, which puts the targets in s->inst in place of the sources and
 * points every open choice at the instance now holding its request. */
#define _GNU_SOURCE
#include "proteus/serve.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>

#include "proteus/batcher.h"
#include "proteus/chat_template.h"
#include "proteus/engine.h"
#include "proteus/fabric.h"
#include "proteus/http.h"
#include "proteus/metrics.h"
#include "proteus/model_file.h"
#include "proteus/openai_api.h"
#include "proteus/tokenizer.h"
#include "scheduler/scheduler.h"
#include "server/calibrate.h"
#include "server/layout.h"
#include "server/placement.h"
#include "server/relayout.h"
#include "xform/plan.h"

_Static_assert(PT_XFORM_RESHAPE + 1 == PT_METRICS_XFORM_KINDS, "metrics count every transformation kind");

typedef struct serve serve;
typedef struct call call;
typedef struct event event;

typedef struct {
    call *c;
    uint32_t index;
    int inst;             /* the instance holding it (a transformation moves it); -1 once it finished there */
    uint64_t batch_id;
    bool submitted, done;
    /* What the scheduler knows of it (server/placement.h). */
    uint64_t sched_id;    /* arrival order */
    uint32_t n_prompt, max_tokens, generated;
    double t_first;       /* pt_now() of its first token; < 0 before */
    bool held;            /* waiting for a layout that can serve it; `pending` holds its request */
    pt_gen_params *pending;
    pt_oai_finish finish;
    uint32_t prompt_tokens, completion_tokens;
    char *text;           /* non-streaming: accumulated text */
    size_t text_len, text_cap;
    pt_oai_token_lp *lps; /* non-streaming logprobs, one per token */
    pt_oai_lp_entry *lp_top;
    size_t n_lps, cap_lps;
    bool sent_role;
    size_t text_sent;     /* streaming: bytes of text sent so far (completions' text_offset) */
    double t_last;
    /* Out of memory on the batcher thread: the final event's memory is
     * taken ahead, so that the end of a choice always gets through; an
     * event that could not be copied sets `lost`, and the choice then ends
     * with an error instead of with text that misses a piece. */
    event *last;
    atomic_bool lost;
} choice;

struct call {
    serve *s;
    pt_http_request *req; /* NULL once the HTTP side is finished */
    pt_oai_kind kind;
    bool stream, include_usage, logprobs;
    int top_logprobs;
    char id[PT_OAI_ID_MAX];
    int64_t created;
    char *model;
    choice *choices;
    uint32_t n_choices, n_done;
    uint32_t n_per_prompt; /* the request's n: choices i*n .. i*n+n-1 share prompt i */
    bool failed;          /* an error was reported to the client */
    bool timed_out;       /* request_timeout_s passed */
    uint32_t n_held;      /* choices the scheduler holds */
    bool stream_begun;    /* streaming: the SSE headers were sent (once no choice is held) */
    double t_submit;
    uint64_t tokens_in, tokens_out;
    call *prev, *next;    /* serve's list of live calls */
};

/* One batcher event copied for the loop thread. */
struct event {
    event *next;
    choice *ch;
    char *text;
    size_t text_len;
    int32_t token;
    float logprob;
    pt_token_logprob top[PT_LOGPROBS_MAX];
    size_t n_top;
    pt_finish_reason finish;
    uint32_t prompt_tokens, completion_tokens;
    double t_admitted;
    char *error;
    const char *why;      /* a fixed message, when error is NULL (out of memory) */
};

/* One instance: an engine over devices [first, first + tp) of the fabric,
 * and its batching loop. */
typedef struct {
    pt_engine *engine;
    pt_batcher *batcher;
    int first, tp;
    uint64_t requests_total; /* choices placed here */
} instance;

struct serve {
    const pt_server_config *cfg;
    uv_loop_t loop;
    uv_async_t async;
    uv_signal_t sigint, sigterm;
    uv_timer_t grace;
    uv_timer_t sweep;     /* request timeouts, once a second */
    pt_http_server *http;
    pt_model_file mf;
    pt_tokenizer *tok;
    pt_fabric *fabric;
    instance *inst;       /* (n_inst) in device order; room for PT_FABRIC_MAX_DEVICES */
    int n_inst;
    pt_batcher_opts bo;   /* every instance's batcher, the targets of a transformation too */
    pt_relayout relayout; /* layout changes (POST /v1/layout) */
    uint64_t relayouts_ok, relayouts_failed;
    pt_chat_template ct;
    bool have_ct;
    pt_metrics metrics;
    const char *model_name;
    uint32_t max_ctx;     /* the longest context an instance of the moment takes */
    uint32_t ctx_limit;   /* the longest request accepted: max_ctx (static), the model's context (dynamic) */
    uint32_t page_size, n_kv_heads; /* to count the KV pages a request needs */
    /* The scheduler (scheduler/scheduler.h) and what the server does for it. */
    pt_layout_plan plan;  /* the devices and the starting layout (dynamic: the scheduler's, unless configured) */
    pt_cost_model cost;
    char cost_source[160]; /* "calibrated at start-up" or the file */
    pt_scheduler *sched;
    bool dynamic;
    uv_timer_t plan_timer; /* dynamic: asks pt_sched_plan every PLAN_INTERVAL_MS */
    pt_place_state place; /* the state handed to the scheduler, rebuilt for each question */
    pt_place_req *place_reqs; /* (place_cap) the open choices, while building it */
    size_t place_cap;
    uint64_t next_sched_id;
    size_t n_held;        /* choices held, over all calls */
    uint64_t sched_xform_id; /* the layout change the scheduler started (xf-N), 0 when none runs */
    double retry_after;   /* after the scheduler's change failed: no other before this pt_now() */
    double retry_wait;    /* the wait after the next failure: doubles from 1 s to 30 s, reset by a success */
    char last_xform_text[256]; /* the last transformation decision, for GET /v1/layout */
    pthread_mutex_t mu;
    event *ev_head, *ev_tail;
    call *calls;
    bool shutting_down;
    pt_rng rng;
    char *piece;
    size_t piece_cap;
};

/* ---- helpers ---- */

/* The answer when a JSON body could not be built (the builders return NULL
 * when out of memory): a 500 in the OpenAI shape that needs no allocation. */
#define NOMEM_JSON_TEXT \
    "{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\",\"param\":null,\"code\":500}}"
static const char NOMEM_JSON[] = NOMEM_JSON_TEXT;
/* The same as one SSE event, when a stream's next event cannot be built. */
static const char NOMEM_SSE[] = "data: " NOMEM_JSON_TEXT "\n\n";
static const char NOMEM[] = "out of memory";

static void send_json_extra(pt_http_request *req, int status, char *body, const char *extra_headers) {
    if (!body) {
        pt_http_respond(req, 500, "application/json", NOMEM_JSON, sizeof(NOMEM_JSON) - 1, NULL);
        return;
    }
    pt_http_respond(req, status, "application/json", body, strlen(body), extra_headers);
    free(body);
}

/* A body that could not be built: the 500 above. */
static void send_nomem(pt_http_request *req) { send_json_extra(req, 500, NULL, NULL); }

/* Out of memory for the error's JSON: the HTTP layer's own, built on the
 * stack, keeps the status and headers (a 429 its Retry-After). */
static void send_oai_error_extra(pt_http_request *req, const pt_oai_error *e, const char *extra_headers) {
    char *json = pt_oai_error_json(e);
    if (json) send_json_extra(req, e->status, json, extra_headers);
    else pt_http_respond_error(req, e->status, e->type, e->message, extra_headers);
}

static void send_error(pt_http_request *req, int status, const char *type, const char *code, const char *param,
                       const char *msg, const char *extra_headers) {
    pt_oai_error e;
    pt_oai_error_set(&e, status, type, code, param, "%s", msg);
    send_oai_error_extra(req, &e, extra_headers);
}

static void send_oai_error(pt_http_request *req, const pt_oai_error *e) { send_oai_error_extra(req, e, NULL); }

static void send_json(pt_http_request *req, int status, char *body) {
    send_json_extra(req, status, body, NULL);
}

static bool authorized(serve *s, pt_http_request *req) {
    const char *key = s->cfg->api_key;
    if (!key) return true;
    const char *h = pt_http_header(req, "authorization");
    static const char bearer[] = "Bearer ";
    if (!h || strncasecmp(h, bearer, sizeof(bearer) - 1) != 0) return false;
    h += sizeof(bearer) - 1;
    return pt_http_const_time_eq(h, strlen(h), key, strlen(key));
}

static pt_oai_finish oai_finish(pt_finish_reason f) {
    return f == PT_FINISH_LENGTH ? PT_OAI_FINISH_LENGTH : PT_OAI_FINISH_STOP;
}

static pt_oai_limits limits_of(serve *s) {
    pt_oai_limits lim = {&s->model_name, 1, s->ctx_limit, pt_engine_config(s->inst[0].engine)->vocab_size};
    return lim;
}

static void params_free(pt_gen_params *c);

/* A held choice keeps its request until the scheduler places it: a deep
 * copy (the parsed request it pointed into is freed when the HTTP handler
 * returns). NULL when out of memory. */
static pt_gen_params *params_copy(const pt_gen_params *p) {
    pt_gen_params *c = calloc(1, sizeof(*c));
    if (!c) return NULL;
    *c = *p;
    c->stops = NULL;
    c->n_stops = 0;
    c->sampling.logit_bias = NULL;
    c->cache_salt = NULL;
    int32_t *prompt = malloc((p->n_prompt ? p->n_prompt : 1) * sizeof(int32_t));
    c->prompt = prompt;
    bool ok = prompt != NULL;
    if (ok) memcpy(prompt, p->prompt, p->n_prompt * sizeof(int32_t));
    if (ok && p->cache_salt) ok = (c->cache_salt = strdup(p->cache_salt)) != NULL;
    if (ok && p->n_stops) {
        char **stops = calloc(p->n_stops, sizeof(char *));
        c->stops = (const char *const *)stops;
        ok = stops != NULL;
        for (size_t i = 0; ok && i < p->n_stops; i++, c->n_stops++) ok = (stops[i] = strdup(p->stops[i])) != NULL;
    }
    if (ok && p->sampling.n_logit_bias) {
        pt_logit_bias *b = malloc(p->sampling.n_logit_bias * sizeof(*b));
        c->sampling.logit_bias = b;
        ok = b != NULL;
        if (ok) memcpy(b, p->sampling.logit_bias, p->sampling.n_logit_bias * sizeof(*b));
    }
    if (!ok) {
        params_free(c);
        return NULL;
    }
    return c;
}

static void params_free(pt_gen_params *c) {
    if (!c) return;
    free((void *)c->prompt);
    for (size_t i = 0; i < c->n_stops; i++) free((void *)c->stops[i]);
    free((void *)c->stops);
    free((void *)c->sampling.logit_bias);
    free((void *)c->cache_salt);
    free(c);
}

/* A held choice given up (client gone, call failed, shutdown): it counts as done. */
static void unhold(serve *s, choice *ch) {
    if (!ch->held) return;
    ch->held = false;
    params_free(ch->pending);
    ch->pending = NULL;
    ch->done = true;
    ch->c->n_done++;
    ch->c->n_held--;
    s->n_held--;
}

/* ---- call lifetime ---- */

/* What a call holds; its choices are no longer held. */
static void call_free_memory(call *c) {
    for (uint32_t i = 0; i < c->n_choices; i++) {
        choice *ch = &c->choices[i];
        params_free(ch->pending);
        free(ch->text);
        for (size_t k = 0; k < ch->n_lps; k++) free((char *)ch->lps[k].chosen.text);
        for (size_t k = 0; k < ch->n_lps * (size_t)c->top_logprobs; k++) free((char *)ch->lp_top[k].text);
        free(ch->lps);
        free(ch->lp_top);
        free(ch->last);
    }
    free(c->choices);
    free(c->model);
    free(c);
}

static void call_free(call *c) {
    serve *s = c->s;
    if (c->prev) c->prev->next = c->next;
    else s->calls = c->next;
    if (c->next) c->next->prev = c->prev;
    for (uint32_t i = 0; i < c->n_choices; i++) s->n_held -= c->choices[i].held;
    call_free_memory(c);
}

/* Frees the call once nothing refers to it any more. */
static void call_maybe_free(call *c) {
    if (!c->req && c->n_done == c->n_choices) call_free(c);
}

/* Cancels every submitted choice (each reports PT_FINISH_CANCELLED) and
 * gives up the held ones. */
static void call_cancel_all(call *c) {
    for (uint32_t i = 0; i < c->n_choices; i++) {
        choice *ch = &c->choices[i];
        if (ch->submitted && !ch->done && ch->inst >= 0) pt_batcher_cancel(c->s->inst[ch->inst].batcher, ch->batch_id);
        unhold(c->s, ch);
    }
}

static void cancel_everything(serve *s) {
    for (int i = 0; i < s->n_inst; i++) pt_batcher_cancel_all(s->inst[i].batcher);
}

/* The client went away: stop generating, give the request back. */
static void on_abort(void *ctx) {
    call *c = ctx;
    call_cancel_all(c);
    if (c->req) {
        pt_http_request_release(c->req);
        c->req = NULL;
    }
    call_maybe_free(c);
}

static void set_log_extra(call *c) {
    char extra[96];
    snprintf(extra, sizeof(extra), "tokens_in=%llu tokens_out=%llu", (unsigned long long)c->tokens_in,
             (unsigned long long)c->tokens_out);
    pt_http_request_set_log_extra(c->req, extra);
}

/* ---- events: batcher thread -> loop thread ---- */

static void on_batch_event(void *user, const pt_gen_event *ev) {
    choice *ch = user;
    serve *s = ch->c->s;
    bool final = ev->finish != PT_FINISH_NONE;
    event *e = final ? ch->last : atomic_load(&ch->lost) ? NULL : calloc(1, sizeof(*e));
    if (final) ch->last = NULL; /* the loop thread frees it with the others */
    if (!e) {
        atomic_store(&ch->lost, true);
        return;
    }
    e->ch = ch;
    if (ev->text_len && (e->text = malloc(ev->text_len))) {
        memcpy(e->text, ev->text, ev->text_len);
        e->text_len = ev->text_len;
    } else if (ev->text_len) {
        atomic_store(&ch->lost, true);
        if (!final) {
            free(e);
            return;
        }
    }
    e->token = ev->token;
    e->logprob = ev->logprob;
    e->n_top = ev->n_top;
    if (ev->n_top) memcpy(e->top, ev->top, ev->n_top * sizeof(pt_token_logprob));
    e->finish = ev->finish;
    e->prompt_tokens = ev->prompt_tokens;
    e->completion_tokens = ev->completion_tokens;
    e->t_admitted = ev->t_admitted;
    if (ev->error) e->error = strdup(ev->error); /* NULL: handle_event says "generation failed" */
    if (final && atomic_load(&ch->lost) && (e->finish == PT_FINISH_STOP || e->finish == PT_FINISH_LENGTH)) {
        e->finish = PT_FINISH_ERROR;
        e->why = "out of memory: part of the generated text was lost";
    }
    pthread_mutex_lock(&s->mu);
    if (s->ev_tail) s->ev_tail->next = e;
    else s->ev_head = e;
    s->ev_tail = e;
    pthread_mutex_unlock(&s->mu);
    uv_async_send(&s->async);
}

static void lp_free(pt_oai_token_lp *lp) {
    free((char *)lp->chosen.text);
    for (size_t k = 0; k < lp->n_top; k++) free((char *)lp->top[k].text);
}

/* The token's logprob with top_n alternatives (placeholders past those
 * the batcher gave); false when out of memory (nothing is left to free). */
static bool fill_lp(serve *s, const event *e, int top_n, pt_oai_token_lp *lp, pt_oai_lp_entry *top) {
    size_t len;
    char *t = pt_tokenizer_piece_dup(s->tok, e->token, &len);
    *lp = (pt_oai_token_lp){.chosen = {t, len, e->logprob}, .top = top, .n_top = 0};
    size_t n = e->n_top < (size_t)top_n ? e->n_top : (size_t)top_n;
    bool ok = t != NULL;
    for (size_t k = 0; ok && k < (size_t)top_n; k++, lp->n_top++) {
        if (k < n) top[k] = (pt_oai_lp_entry){pt_tokenizer_piece_dup(s->tok, e->top[k].token, &len), len,
                                              e->top[k].logprob};
        else top[k] = (pt_oai_lp_entry){strdup(""), 0, -9999.0f};
        ok = top[k].text != NULL;
    }
    if (!ok) lp_free(lp);
    return ok;
}

/* One SSE event from json (a builder's result, NULL when it ran out of
 * memory); false when out of memory (nothing was written): the caller
 * fails the call. */
static bool stream_write(call *c, char *json) {
    size_t len;
    char *frame = json ? pt_oai_sse_frame(json, &len) : NULL;
    free(json);
    if (c->req && frame) pt_http_stream_write(c->req, frame, len);
    free(frame);
    return frame != NULL;
}

/* Tells the client once that the call failed (a plain error, or an error
 * event once the stream began) and cancels its choices; the call stays
 * (call_fail also ends it). */
static void call_report_error(call *c, int status, const char *type, const char *code, const char *msg) {
    if (c->req && !c->failed) {
        if (c->stream_begun) {
            pt_oai_error e;
            pt_oai_error_set(&e, status, type, code, NULL, "%s", msg);
            if (!stream_write(c, pt_oai_error_json(&e))) pt_http_stream_write(c->req, NOMEM_SSE, sizeof(NOMEM_SSE) - 1);
        } else {
            send_error(c->req, status, type, code, NULL, msg, NULL);
            c->req = NULL;
        }
    }
    c->failed = true;
    call_cancel_all(c);
}

/* Streaming: the SSE headers go out once no choice is held (a held request
 * can still be refused with a plain error) or with the first event. */
static void call_begin_stream(call *c) {
    if (!c->stream || c->stream_begun || !c->req || c->failed) return;
    pt_http_stream_begin(c->req, 200, "text/event-stream", "Cache-Control: no-cache\r\n");
    c->stream_begun = true;
}

/* All choices done: the usage chunk, [DONE], or the whole JSON body. */
static void call_complete(call *c) {
    pt_oai_usage u = {0, 0};
    for (uint32_t i = 0; i < c->n_choices; i++) u.completion_tokens += c->choices[i].completion_tokens;
    /* Each prompt counts once, whatever n is (as OpenAI and vLLM count). */
    uint32_t n_per_prompt = c->n_per_prompt ? c->n_per_prompt : 1;
    for (uint32_t i = 0; i < c->n_choices; i += n_per_prompt) u.prompt_tokens += c->choices[i].prompt_tokens;
    pt_oai_meta meta = {c->id, c->created, c->model};
    if (!c->req) return;
    set_log_extra(c);
    if (c->stream) {
        call_begin_stream(c);
        if (c->include_usage && !c->failed && !stream_write(c, pt_oai_usage_chunk_json(&meta, c->kind, &u)))
            call_report_error(c, 500, "server_error", NULL, NOMEM);
        pt_http_stream_write(c->req, PT_OAI_SSE_DONE, strlen(PT_OAI_SSE_DONE));
        pt_http_stream_end(c->req);
        c->req = NULL;
        return;
    }
    if (c->failed) return;
    pt_oai_choice *oc = calloc(c->n_choices, sizeof(*oc));
    if (!oc) {
        send_nomem(c->req);
        c->req = NULL;
        return;
    }
    for (uint32_t i = 0; i < c->n_choices; i++) {
        choice *ch = &c->choices[i];
        oc[i] = (pt_oai_choice){.index = i, .text = ch->text ? ch->text : "", .len = ch->text_len,
                                .finish = ch->finish, .has_logprobs = c->logprobs, .lp = ch->lps, .n_lp = ch->n_lps};
    }
    char *body = c->kind == PT_OAI_CHAT ? pt_oai_chat_completion_json(&meta, oc, c->n_choices, &u)
                                        : pt_oai_text_completion_json(&meta, oc, c->n_choices, &u);
    free(oc);
    send_json(c->req, 200, body);
    c->req = NULL;
}

/* Non-streaming: the event's text added to the choice's; false when out of memory. */
static bool append_text(choice *ch, const event *e) {
    if (!e->text_len) return true;
    if (ch->text_len + e->text_len + 1 > ch->text_cap) {
        size_t cap = (ch->text_len + e->text_len + 1) * 2;
        char *grown = realloc(ch->text, cap);
        if (!grown) return false;
        ch->text = grown;
        ch->text_cap = cap;
    }
    memcpy(ch->text + ch->text_len, e->text, e->text_len);
    ch->text_len += e->text_len;
    ch->text[ch->text_len] = 0;
    return true;
}

/* Non-streaming: the event's logprobs added to the choice's; false when out of memory. */
static bool append_lp(serve *s, choice *ch, const event *e) {
    size_t top_n = (size_t)ch->c->top_logprobs;
    if (ch->n_lps == ch->cap_lps) {
        size_t cap = ch->cap_lps ? ch->cap_lps * 2 : 16;
        pt_oai_token_lp *lps = realloc(ch->lps, cap * sizeof(*lps));
        if (!lps) return false;
        ch->lps = lps;
        pt_oai_lp_entry *top = realloc(ch->lp_top, cap * (top_n + 1) * sizeof(*top));
        if (!top) return false;
        ch->lp_top = top;
        ch->cap_lps = cap;
        /* lp_top moved: re-point every entry's top list. */
        for (size_t k = 0; k < ch->n_lps; k++) ch->lps[k].top = ch->lp_top + k * top_n;
    }
    if (!fill_lp(s, e, (int)top_n, &ch->lps[ch->n_lps], ch->lp_top + ch->n_lps * top_n)) return false;
    ch->n_lps++;
    return true;
}

static void handle_event(serve *s, event *e) {
    choice *ch = e->ch;
    call *c = ch->c;
    double now = pt_now();
    bool final = e->finish != PT_FINISH_NONE;
    if (e->token >= 0) {
        ch->generated++;
        if (ch->t_first < 0) ch->t_first = now;
        if (ch->t_last == 0) pt_histogram_observe(&s->metrics.ttft, now - c->t_submit);
        else pt_histogram_observe(&s->metrics.itl, now - ch->t_last);
        ch->t_last = now;
        s->metrics.generation_tokens++;
        c->tokens_out++;
    }
    if (final) {
        ch->done = true;
        c->n_done++;
        ch->finish = oai_finish(e->finish);
        ch->prompt_tokens = e->prompt_tokens;
        ch->completion_tokens = e->completion_tokens;
        pt_histogram_observe(&s->metrics.e2e, now - c->t_submit);
        if (e->t_admitted > 0) pt_histogram_observe(&s->metrics.queue, e->t_admitted - c->t_submit);
        pt_finish_class fc = e->finish == PT_FINISH_STOP     ? PT_REASON_STOP
                             : e->finish == PT_FINISH_LENGTH ? PT_REASON_LENGTH
                             : e->finish == PT_FINISH_ERROR  ? PT_REASON_ERROR
                                                             : PT_REASON_ABORT;
        s->metrics.finished[fc]++;
    }
    if (c->req && !c->failed && (e->finish == PT_FINISH_ERROR || e->finish == PT_FINISH_CANCELLED)) {
        /* The engine could not finish it (or the server is stopping): tell the client once. */
        const char *msg = e->finish == PT_FINISH_ERROR ? (e->error ? e->error : e->why ? e->why : "generation failed")
                          : c->timed_out ? "the request exceeded the server's request timeout"
                                         : "the request was cancelled: the server is shutting down";
        int status = e->finish == PT_FINISH_ERROR || c->stream_begun ? 500 : c->timed_out ? 504 : 503;
        call_report_error(c, status, "server_error", NULL, msg);
    } else if (c->req && !c->failed) {
        pt_oai_token_lp lp;
        pt_oai_lp_entry top[PT_LOGPROBS_MAX];
        bool has_lp = c->logprobs && e->token >= 0;
        bool oom = false;
        if (c->stream) {
            call_begin_stream(c);
            bool lp_ok = has_lp && fill_lp(s, e, c->top_logprobs, &lp, top);
            if (has_lp && !lp_ok) {
                oom = true;
            } else if (e->text_len || final || has_lp || !ch->sent_role) {
                pt_oai_choice oc = {.index = ch->index, .text = e->text ? e->text : "", .len = e->text_len,
                                    .role = c->kind == PT_OAI_CHAT && !ch->sent_role,
                                    .finish = final ? oai_finish(e->finish) : PT_OAI_FINISH_NONE,
                                    .has_logprobs = has_lp, .lp = has_lp ? &lp : NULL, .n_lp = has_lp ? 1 : 0,
                                    .text_offset_base = ch->text_sent};
                ch->sent_role = true;
                ch->text_sent += e->text_len;
                pt_oai_meta meta = {c->id, c->created, c->model};
                oom = !stream_write(c, pt_oai_chunk_json(&meta, c->kind, &oc, c->include_usage));
            }
            if (lp_ok) lp_free(&lp);
        } else {
            oom = !append_text(ch, e) || (has_lp && !append_lp(s, ch, e));
        }
        if (oom) call_report_error(c, 500, "server_error", NULL, NOMEM);
    }
    if (final && c->n_done == c->n_choices) call_complete(c);
    call_maybe_free(c);
}

static void sched_after_change(serve *s);

static void on_async(uv_async_t *h) {
    serve *s = h->data;
    pthread_mutex_lock(&s->mu);
    event *e = s->ev_head;
    s->ev_head = s->ev_tail = NULL;
    pthread_mutex_unlock(&s->mu);
    bool finished = false;
    while (e) {
        event *next = e->next;
        finished |= e->finish != PT_FINISH_NONE;
        handle_event(s, e);
        free(e->text);
        free(e->error);
        free(e);
        e = next;
    }
    /* Pages came free: a held request may fit now, a merged instance may be idle. */
    if (finished) sched_after_change(s);
}

/* ---- generation requests ---- */

/* ---- the scheduler: placement ---- */

/* pt_sched_place refused the request (the placement's text says why). */
enum { ERR_REJECTED = -41 };

/* How often a dynamic server asks the scheduler whether to merge or split
 * (besides after arrivals it holds and after requests finish). */
#define PLAN_INTERVAL_MS 100

static pt_place_req place_req_of(const choice *ch) {
    return (pt_place_req){ch->sched_id, ch->held ? -1 : ch->inst, ch->n_prompt, ch->max_tokens,
                          ch->generated, ch->c->t_submit, ch->t_first};
}

/* Whether the layout change in flight transforms instance `in`. */
static bool xform_touches(const pt_relayout_progress *p, const instance *in) {
    for (int k = 0; k < p->run->plan.n_ops; k++) {
        const pt_xform_op *op = &p->run->plan.ops[k];
        if (in->first < op->first_device + op->n_devices && op->first_device < in->first + in->tp) return true;
    }
    return false;
}

/* The scheduler's state (server/placement.h) from every instance's batcher
 * snapshot and every open choice; `offered` is the choice being placed
 * (not also listed as held), `p` its request (for what each instance's
 * prefix cache holds of its prompt; NULL when none is placed). Valid until
 * the next call; NULL when out of memory. */
static const pt_sched_state *sched_state(serve *s, uint64_t offered, const pt_gen_params *p) {
    pt_relayout_progress prog;
    bool busy = pt_relayout_progress_get(&s->relayout, &prog);
    pt_place_inst in[PT_FABRIC_MAX_DEVICES];
    for (int i = 0; i < s->n_inst; i++) {
        pt_batcher_stats st;
        pt_batcher_get_stats(s->inst[i].batcher, &st);
        pt_place_inst *pi = &in[i];
        *pi = (pt_place_inst){.first = s->inst[i].first, .tp = s->inst[i].tp, .max_seqs = s->bo.max_running,
                              .seq_capacity = pt_batcher_max_ctx(s->inst[i].batcher),
                              .max_ctx = pt_engine_get_opts(s->inst[i].engine)->max_ctx, .running = st.running,
                              .max_waiting = s->bo.max_waiting,
                              .transforming = busy && xform_touches(&prog, &s->inst[i])};
        if (p && !p->no_prefix_cache)
            pi->cached = pt_engine_seq_prefix_cached(s->inst[i].engine, p->prompt, (uint32_t)p->n_prompt,
                                                      pt_engine_prefix_salt(p->cache_salt));
        for (int r = 0; r < st.n_ranks && r < PT_BATCHER_MAX_RANKS; r++) {
            pi->pages_total += st.kv_pages_total[r];
            pi->pages_free += st.kv_pages_free[r];
        }
    }
    size_t n = 0;
    for (call *c = s->calls; c; c = c->next)
        for (uint32_t i = 0; i < c->n_choices; i++) {
            const choice *ch = &c->choices[i];
            if (!ch->held && !(ch->submitted && !ch->done && ch->inst >= 0)) continue;
            if (n == s->place_cap) {
                size_t cap = s->place_cap ? 2 * s->place_cap : 64;
                pt_place_req *grown = realloc(s->place_reqs, cap * sizeof(*grown));
                if (!grown) return NULL;
                s->place_reqs = grown;
                s->place_cap = cap;
            }
            s->place_reqs[n++] = place_req_of(ch);
        }
    if (pt_place_build(&s->place, pt_now(), pt_fabric_size(s->fabric), in, s->n_inst, s->place_reqs, n, s->page_size,
                       s->n_kv_heads, busy, offered))
        return NULL;
    return &s->place.st;
}

static void log_placement(const pt_sched_placement *pl) {
    pt_log(PT_LOG_DEBUG, "scheduler: %s [%s/%s]", pl->text, pt_sched_reason_decision(pl->reason),
           pt_sched_reason_name(pl->reason));
}

static int submit_to(serve *s, choice *ch, int i, const pt_gen_params *p, pt_err *err) {
    int rc = pt_batcher_submit(s->inst[i].batcher, p, &ch->batch_id, err);
    if (rc) return rc;
    ch->submitted = true;
    ch->inst = i;
    s->inst[i].requests_total++;
    return PT_OK;
}

/* Asks the scheduler where one choice goes and acts on it: submitted to an
 * instance, held (its request copied), or refused: ERR_REJECTED (err says
 * why, *why names the reason) or the batcher's refusal (PT_ERR_BUSY when
 * the instance's queue is full). */
static int place_choice(serve *s, choice *ch, const pt_gen_params *p, pt_sched_reason *why, pt_err *err) {
    const pt_sched_state *st = sched_state(s, ch->sched_id, p);
    if (!st) return pt_err_set(err, PT_ERR_NOMEM, NOMEM);
    pt_place_req me = place_req_of(ch);
    pt_sched_req r = pt_place_sched_req(&me);
    pt_sched_placement pl;
    pt_sched_place(s->sched, st, &r, &pl);
    log_placement(&pl);
    *why = pl.reason;
    switch (pl.kind) {
    case PT_SCHED_PLACE:
        if (pl.instance < 0 || pl.instance >= s->n_inst)
            return pt_err_set(err, PT_ERR_INVALID, "the scheduler placed the request on instance %d of %d",
                              pl.instance, s->n_inst);
        return submit_to(s, ch, pl.instance, p, err);
    case PT_SCHED_HOLD:
        if (!(ch->pending = params_copy(p))) return pt_err_set(err, PT_ERR_NOMEM, NOMEM);
        ch->held = true;
        ch->c->n_held++;
        s->n_held++;
        return PT_OK;
    case PT_SCHED_REJECT:
    default:
        if (pl.reason == PT_SCHED_R_REJECT_BUSY)
            return pt_err_set(err, PT_ERR_BUSY, "every instance that could serve this request has a full queue");
        pt_err_set(err, ERR_REJECTED, "the scheduler cannot serve this request (%s): %s",
                   pt_sched_reason_name(pl.reason), pl.text);
        return ERR_REJECTED;
    }
}

/* Ends a call with an error now: the client gets it (a plain error, or an
 * error chunk once the stream began), its choices are cancelled or given
 * up. The call may be freed. */
static void call_fail(call *c, int status, const char *type, const char *code, const char *msg) {
    call_report_error(c, status, type, code, msg);
    if (c->n_done == c->n_choices) call_complete(c);
    call_maybe_free(c);
}

/* A held choice offered to the scheduler again. */
static void offer_held(serve *s, choice *ch) {
    call *c = ch->c;
    const pt_sched_state *st = sched_state(s, ch->sched_id, ch->pending);
    if (!st) return; /* out of memory: offered again at the next change */
    pt_place_req me = place_req_of(ch);
    pt_sched_req r = pt_place_sched_req(&me);
    r.held_before = true; /* held again: one decision, counted once */
    pt_sched_placement pl;
    pt_sched_place(s->sched, st, &r, &pl);
    if (pl.kind == PT_SCHED_HOLD || (pl.kind == PT_SCHED_REJECT && pl.reason == PT_SCHED_R_REJECT_BUSY)) {
        pt_log(PT_LOG_DEBUG, "scheduler: request %llu stays held", (unsigned long long)ch->sched_id);
        return;
    }
    log_placement(&pl);
    char msg[512];
    if (pl.kind == PT_SCHED_REJECT || pl.instance < 0 || pl.instance >= s->n_inst) {
        snprintf(msg, sizeof(msg), "the scheduler cannot serve this request (%s): %s", pt_sched_reason_name(pl.reason),
                 pl.text);
        call_fail(c, 400, "invalid_request_error", pt_sched_reason_name(pl.reason), msg);
        return;
    }
    pt_err err = {{0}};
    int rc = submit_to(s, ch, pl.instance, ch->pending, &err);
    if (rc == PT_ERR_BUSY) {
        pt_log(PT_LOG_DEBUG, "scheduler: request %llu stays held: %s", (unsigned long long)ch->sched_id, err.msg);
        return; /* offered again at the next change */
    }
    if (rc) {
        if (rc == PT_ERR_NOMEM) call_fail(c, 500, "server_error", NULL, err.msg);
        else call_fail(c, 400, "invalid_request_error", NULL, err.msg);
        return;
    }
    ch->held = false;
    params_free(ch->pending);
    ch->pending = NULL;
    c->n_held--;
    s->n_held--;
    if (c->n_held == 0) call_begin_stream(c);
}

/* The held choice with the lowest scheduler id above `after` (arrival order). */
static choice *next_held(serve *s, uint64_t after) {
    choice *best = NULL;
    for (call *c = s->calls; c; c = c->next) {
        if (!c->n_held) continue;
        for (uint32_t i = 0; i < c->n_choices; i++) {
            choice *ch = &c->choices[i];
            if (ch->held && ch->sched_id > after && (!best || ch->sched_id < best->sched_id)) best = ch;
        }
    }
    return best;
}

/* Offers every held choice again, oldest first. A call that fails on the
 * way may be freed: the next one is looked up afresh each time. */
static void reoffer_held(serve *s) {
    uint64_t after = 0;
    choice *ch;
    while (s->n_held && !s->shutting_down && (ch = next_held(s, after))) {
        after = ch->sched_id;
        offer_held(s, ch);
    }
}

/* Fails every call with a held choice (shutdown, timeouts). */
static void fail_held(serve *s, bool only_timed_out, int status, const char *msg) {
    double now = pt_now();
    for (call *c = s->calls, *next; c; c = next) {
        next = c->next;
        if (!c->n_held || (only_timed_out && now - c->t_submit < s->cfg->request_timeout_s)) continue;
        c->timed_out |= only_timed_out;
        call_fail(c, status, "server_error", NULL, msg);
    }
}

/* ---- the scheduler: transformations ---- */

static void current_layout(const serve *s, int *tp);

/* Starts the merge or split the scheduler chose, as POST /v1/layout would. */
static void start_sched_xform(serve *s, const pt_sched_xform *x) {
    int cur[PT_FABRIC_MAX_DEVICES], want[PT_FABRIC_MAX_DEVICES], n_want = 0;
    current_layout(s, cur);
    pt_err err = {{0}};
    pt_xform_plan *plan = malloc(sizeof(*plan));
    uint64_t id = 0;
    int rc = plan ? pt_place_target_layout(cur, s->n_inst, x, want, &n_want, &err)
                  : pt_err_set(&err, PT_ERR_NOMEM, NOMEM);
    if (rc == PT_OK) {
        pt_xform_plan_input in = {cur, s->n_inst, want, n_want, pt_fabric_size(s->fabric), s->plan.allowed_tp,
                                  s->plan.n_allowed, (int)s->n_kv_heads};
        rc = pt_xform_plan_make(plan, &in, &err);
    }
    if (rc == PT_OK) rc = pt_relayout_start(&s->relayout, plan, cur, s->n_inst, want, n_want, &id, &err);
    free(plan);
    const char *decision = pt_sched_reason_decision(x->reason), *reason = pt_sched_reason_name(x->reason);
    snprintf(s->last_xform_text, sizeof(s->last_xform_text), "%s", x->text);
    if (rc) {
        pt_log(PT_LOG_WARN, "scheduler: %s [%s/%s]: not started: %s", x->text, decision, reason, err.msg);
        pt_sched_xform_done(s->sched, pt_now(), false);
        return;
    }
    s->sched_xform_id = id;
    pt_log(PT_LOG_INFO, "scheduler: %s [%s/%s]: started as xf-%llu", x->text, decision, reason,
           (unsigned long long)id);
}

/* Asks the scheduler whether to merge or split now (dynamic policy). */
static void sched_plan(serve *s) {
    if (!s->dynamic || s->shutting_down || !s->http || pt_now() < s->retry_after) return;
    const pt_sched_state *st = sched_state(s, 0, NULL);
    if (!st) return; /* out of memory: asked again at the next timer or change */
    pt_sched_stats before, after;
    pt_sched_get_stats(s->sched, &before);
    pt_sched_xform x;
    pt_sched_plan(s->sched, st, &x);
    if (x.kind != PT_SCHED_XFORM_NONE) {
        start_sched_xform(s, &x);
        return;
    }
    if (!x.considered) return;
    /* A decline the scheduler counted (it counts a repeated one once) is
     * logged at info, its repetitions at debug. */
    pt_sched_get_stats(s->sched, &after);
    bool counted = after.by_reason[x.reason] != before.by_reason[x.reason];
    pt_log(counted ? PT_LOG_INFO : PT_LOG_DEBUG, "scheduler: %s [%s/%s]", x.text, pt_sched_reason_decision(x.reason),
           pt_sched_reason_name(x.reason));
    if (counted) snprintf(s->last_xform_text, sizeof(s->last_xform_text), "%s", x.text);
}

static void on_plan_timer(uv_timer_t *t) { sched_plan(t->data); }

/* Something changed (a request finished, a layout change ended): held
 * requests are offered again, and the scheduler asked about the layout. */
static void sched_after_change(serve *s) {
    reoffer_held(s);
    sched_plan(s);
}

static int tokenize_text(serve *s, const char *text, bool add_bos, int32_t **ids, size_t *n, pt_oai_error *oe) {
    pt_err err;
    /* Special-token strings become special tokens, as Hugging Face's tokenizer does by default. */
    int rc = pt_tokenizer_encode(s->tok, text, strlen(text), add_bos, true, ids, n, &err);
    if (rc == PT_ERR_NOMEM) return pt_oai_error_set(oe, 500, "server_error", NULL, NULL, NOMEM);
    if (rc) return pt_oai_error_set(oe, 400, "invalid_request_error", NULL, "prompt", "%s", err.msg);
    return 0;
}

/* A generation call with its choices (each with its final event's memory),
 * not yet in the server's list; NULL when out of memory. */
static call *call_new(serve *s, const char *model, uint32_t n_choices) {
    call *c = calloc(1, sizeof(*c));
    if (!c) return NULL;
    c->s = s;
    c->n_choices = n_choices;
    bool ok = (c->model = strdup(model)) && (c->choices = calloc(n_choices, sizeof(choice)));
    for (uint32_t i = 0; ok && i < n_choices; i++) ok = (c->choices[i].last = calloc(1, sizeof(event))) != NULL;
    if (!ok) {
        if (!c->choices) c->n_choices = 0;
        call_free_memory(c);
        return NULL;
    }
    return c;
}

static void handle_generate(serve *s, pt_http_request *req, pt_oai_kind kind) {
    size_t blen;
    const char *body = pt_http_body(req, &blen);
    pt_oai_limits lim = limits_of(s);
    pt_oai_request r;
    pt_oai_error oe;
    if (pt_oai_parse(&r, kind, body, blen, &lim, &oe) != 0) {
        send_oai_error(req, &oe);
        return;
    }
    /* Prompts as token ids: one per completion prompt, or the rendered chat. */
    size_t n_prompts = kind == PT_OAI_CHAT ? 1 : r.n_prompts;
    int32_t **ids = calloc(n_prompts, sizeof(int32_t *));
    size_t *lens = calloc(n_prompts, sizeof(size_t));
    int rc = 0;
    if (!ids || !lens) {
        n_prompts = 0; /* nothing to free in ids */
        rc = pt_oai_error_set(&oe, 500, "server_error", NULL, NULL, NOMEM);
    } else if (kind == PT_OAI_CHAT) {
        char *text = NULL;
        if (!s->have_ct) {
            rc = pt_oai_error_set(&oe, 400, "invalid_request_error", NULL, "messages",
                                  "this model has no chat template; use /v1/completions or start the server "
                                  "with --chat-template");
        } else if ((rc = pt_oai_render_chat(&r, &s->ct, &text, &oe)) == 0) {
            rc = tokenize_text(s, text, false, &ids[0], &lens[0], &oe);
        }
        free(text);
    } else {
        for (size_t i = 0; i < n_prompts && rc == 0; i++) {
            if (r.prompts[i].text) {
                rc = tokenize_text(s, r.prompts[i].text, pt_tokenizer_add_bos(s->tok), &ids[i], &lens[i], &oe);
            } else if (!(ids[i] = malloc((r.prompts[i].n_tokens ? r.prompts[i].n_tokens : 1) * sizeof(int32_t)))) {
                rc = pt_oai_error_set(&oe, 500, "server_error", NULL, NULL, NOMEM);
            } else {
                memcpy(ids[i], r.prompts[i].tokens, r.prompts[i].n_tokens * sizeof(int32_t));
                lens[i] = r.prompts[i].n_tokens;
            }
        }
    }
    for (size_t i = 0; i < n_prompts && rc == 0; i++) {
        if (lens[i] == 0) {
            rc = pt_oai_error_set(&oe, 400, "invalid_request_error", NULL, kind == PT_OAI_CHAT ? "messages" : "prompt",
                                  "the prompt is empty after tokenization");
        } else if (lens[i] >= s->ctx_limit ||
                   (r.max_tokens > 0 && lens[i] + (uint64_t)r.max_tokens > s->ctx_limit)) {
            rc = pt_oai_error_set(&oe, 400, "invalid_request_error", NULL, "max_tokens",
                                  "This model's maximum context length is %u tokens. However, you requested %llu "
                                  "tokens (%zu in the messages, %lld in the completion). Please reduce the length of "
                                  "the messages or completion.",
                                  s->ctx_limit, (unsigned long long)(lens[i] + (r.max_tokens > 0 ? r.max_tokens : 0)),
                                  lens[i], (long long)(r.max_tokens > 0 ? r.max_tokens : 0));
        }
    }
    if (rc != 0) {
        send_oai_error(req, &oe);
        goto out;
    }

    call *c = call_new(s, r.model ? r.model : s->model_name, (uint32_t)(n_prompts * (size_t)r.n));
    if (!c) {
        send_nomem(req);
        goto out;
    }
    c->req = req;
    c->kind = kind;
    c->stream = r.stream;
    c->include_usage = r.include_usage;
    c->logprobs = r.logprobs;
    c->top_logprobs = r.logprobs ? r.top_logprobs : 0;
    c->created = (int64_t)time(NULL);
    c->t_submit = pt_now();
    pt_oai_make_id(c->id, kind, pt_rng_next(&s->rng), pt_rng_next(&s->rng));
    c->n_per_prompt = (uint32_t)r.n;
    c->next = s->calls;
    if (s->calls) s->calls->prev = c;
    s->calls = c;
    pt_http_request_set_callbacks(req, NULL, on_abort, c);

    uint64_t seed = r.has_seed ? r.sampling.seed : pt_rng_next(&s->rng);
    int busy = 0;
    pt_err err = {{0}};
    pt_sched_reason why = PT_SCHED_R_LEAST_LOADED;
    for (uint32_t i = 0; i < c->n_choices; i++) {
        choice *ch = &c->choices[i];
        size_t pi = i / (uint32_t)r.n;
        ch->c = c;
        ch->index = i;
        ch->inst = -1;
        ch->sched_id = ++s->next_sched_id;
        ch->t_first = -1;
        pt_gen_params p = {0};
        p.prompt = ids[pi];
        p.n_prompt = lens[pi];
        p.sampling = r.sampling;
        /* Choices of one prompt draw from different streams of the same seed. */
        p.sampling.seed = seed + i;
        /* Without max_tokens: up to what the largest instance of the moment holds. */
        uint32_t room = s->max_ctx > lens[pi] ? s->max_ctx : s->ctx_limit;
        p.max_tokens = (uint32_t)(r.max_tokens > 0 ? (uint64_t)r.max_tokens : room - lens[pi]);
        p.stops = (const char *const *)r.stop;
        p.n_stops = r.n_stop;
        p.include_stop = r.include_stop;
        p.ignore_eos = r.ignore_eos;
        p.no_prefix_cache = r.no_cache_prompt;
        p.cache_salt = r.cache_salt;
        p.top_logprobs = r.logprobs ? r.top_logprobs : -1;
        p.cb = on_batch_event;
        p.user = ch;
        ch->n_prompt = (uint32_t)lens[pi];
        ch->max_tokens = p.max_tokens;
        int src = place_choice(s, ch, &p, &why, &err);
        if (src != 0) {
            busy = src;
            break;
        }
        c->tokens_in += lens[pi];
        if (i % (uint32_t)r.n == 0) s->metrics.prompt_tokens += lens[pi];
    }
    if (busy) {
        /* Take back what was queued or held; the call frees itself when those report. */
        for (uint32_t i = 0; i < c->n_choices; i++) {
            choice *ch = &c->choices[i];
            if (!ch->submitted && !ch->held) {
                ch->done = true;
                c->n_done++;
            }
        }
        call_cancel_all(c);
        c->failed = true;
        if (busy == PT_ERR_BUSY) {
            s->metrics.rejected_busy++;
            send_error(req, 429, "rate_limit_error", NULL, NULL, err.msg, "Retry-After: 1\r\n");
        } else if (busy == ERR_REJECTED) {
            send_error(req, 400, "invalid_request_error", pt_sched_reason_name(why), NULL, err.msg, NULL);
        } else if (busy == PT_ERR_NOMEM) {
            send_error(req, 500, "server_error", NULL, NULL, err.msg, NULL);
        } else {
            send_error(req, 400, "invalid_request_error", NULL, NULL, err.msg, NULL);
        }
        c->req = NULL;
        call_maybe_free(c);
        goto out;
    }
    /* A held choice may be refused later with a plain error: the stream begins once none is. */
    if (c->n_held == 0) call_begin_stream(c);
    else sched_plan(s); /* a merge may serve it */
out:
    for (size_t i = 0; i < n_prompts; i++) free(ids[i]);
    free(ids);
    free(lens);
    pt_oai_request_free(&r);
}

/* ---- other routes ---- */

static void handle_tokenize(serve *s, pt_http_request *req) {
    size_t blen;
    const char *body = pt_http_body(req, &blen);
    pt_oai_limits lim = limits_of(s);
    pt_oai_tokenize_request r;
    pt_oai_error oe;
    if (pt_oai_parse_tokenize(&r, body, blen, &lim, &oe) != 0) {
        send_oai_error(req, &oe);
        return;
    }
    char *text = NULL;
    int rc = 0;
    bool add_bos = r.add_special_tokens && pt_tokenizer_add_bos(s->tok);
    if (r.messages) {
        if (!s->have_ct)
            rc = pt_oai_error_set(&oe, 400, "invalid_request_error", NULL, "messages", "this model has no chat template");
        else
            rc = pt_oai_render_messages(r.messages, r.n_messages, r.add_generation_prompt, &s->ct, &text, &oe);
        add_bos = false; /* the template writes its own */
    } else if (!(text = strdup(r.prompt ? r.prompt : ""))) {
        rc = pt_oai_error_set(&oe, 500, "server_error", NULL, NULL, NOMEM);
    }
    int32_t *ids = NULL;
    size_t n = 0;
    if (rc == 0) rc = tokenize_text(s, text, add_bos, &ids, &n, &oe);
    if (rc == 0) send_json(req, 200, pt_oai_tokenize_json(ids, n, s->ctx_limit));
    else send_oai_error(req, &oe);
    free(ids);
    free(text);
    pt_oai_tokenize_request_free(&r);
}

static void handle_detokenize(serve *s, pt_http_request *req) {
    size_t blen;
    const char *body = pt_http_body(req, &blen);
    pt_oai_limits lim = limits_of(s);
    pt_oai_detokenize_request r;
    pt_oai_error oe;
    if (pt_oai_parse_detokenize(&r, body, blen, &lim, &oe) != 0) {
        send_oai_error(req, &oe);
        return;
    }
    char *text = NULL;
    size_t len = 0;
    if (pt_tokenizer_decode(s->tok, r.tokens, r.n_tokens, false, &text, &len) != 0) {
        send_error(req, 500, "server_error", NULL, NULL, "decoding failed", NULL);
    } else {
        send_json(req, 200, pt_oai_detokenize_json(text, len));
    }
    free(text);
    pt_oai_detokenize_request_free(&r);
}

/* ---- layout ---- */

/* The snapshot behind GET /v1/layout and /metrics: the devices' own
 * counters (atomic) and each batcher's stats (taken under its lock). */
static void layout_report(serve *s, pt_layout_report *r) {
    memset(r, 0, sizeof(*r));
    r->n_devices = pt_fabric_size(s->fabric);
    for (int i = 0; i < r->n_devices; i++) {
        pt_device *d = pt_fabric_device(s->fabric, i);
        pt_device_report *dr = &r->devices[i];
        snprintf(dr->name, sizeof(dr->name), "%s", pt_device_name(d));
        dr->kind = pt_device_kind_of(d);
        dr->threads = pt_device_threads(d);
        dr->ordinal = pt_device_ordinal(d);
        dr->budget_bytes = pt_device_budget(d);
        for (int c = 0; c < PT_MEM_CLASS_COUNT; c++) dr->used[c] = pt_device_used(d, (pt_mem_class)c);
        dr->instance = dr->rank = -1;
    }
    r->n_instances = s->n_inst;
    for (int i = 0; i < s->n_inst; i++) {
        const instance *in = &s->inst[i];
        pt_instance_report *ir = &r->instances[i];
        pt_batcher_stats st;
        pt_batcher_get_stats(in->batcher, &st);
        *ir = (pt_instance_report){.first = in->first, .tp = in->tp, .running = st.running, .waiting = st.waiting,
                                   .requests_total = in->requests_total, .preemptions = st.preemptions,
                                   .preemptions_movable = st.preemptions_movable,
                                   .prefix_queries = st.prefix.queries, .prefix_hits = st.prefix.hits,
                                   .prefix_pages = st.prefix.pages};
        pt_engine_comm_stats cs;
        pt_engine_comm_get_stats(in->engine, &cs);
        ir->comm_known = true;
        ir->comm_failures = cs.failures;
        ir->comm_renewals = cs.renewals;
        snprintf(ir->comm_last_error, sizeof(ir->comm_last_error), "%.*s", (int)sizeof(ir->comm_last_error) - 1,
                 cs.last_error);
        for (int k = 0; k < in->tp; k++) {
            pt_device_report *dr = &r->devices[in->first + k];
            dr->instance = i;
            dr->rank = k;
            pt_engine_weight_bytes(in->engine, k, &dr->weight_shard, &dr->weight_replicated);
            if (k >= st.n_ranks || k >= PT_BATCHER_MAX_RANKS) continue;
            dr->kv_known = true;
            dr->kv_pages_total = st.kv_pages_total[k];
            dr->kv_pages_free = st.kv_pages_free[k];
            ir->kv_pages_total += dr->kv_pages_total;
            ir->kv_pages_free += dr->kv_pages_free;
        }
    }
    r->n_allowed = s->plan.n_allowed;
    memcpy(r->allowed_tp, s->plan.allowed_tp, (size_t)r->n_allowed * sizeof(int));
}

/* The scheduler's decisions with the batchers' preemptions, which follow
 * its victim rule on the batchers' threads (pt_batcher_set_preempt_movable). */
static void sched_stats(serve *s, const pt_layout_report *r, pt_sched_stats *st) {
    pt_sched_get_stats(s->sched, st);
    for (int i = 0; i < r->n_instances; i++) {
        st->by_reason[PT_SCHED_R_PREEMPT_MOVABLE] += r->instances[i].preemptions_movable;
        st->by_reason[PT_SCHED_R_PREEMPT_NEWEST] += r->instances[i].preemptions - r->instances[i].preemptions_movable;
    }
}

static void handle_metrics(serve *s, pt_http_request *req) {
    pt_layout_report *r = malloc(sizeof(*r));
    char *t = NULL, *sm = NULL, *all = NULL;
    if (r) {
        layout_report(s, r);
        pt_relayout_progress p;
        s->metrics.xform_in_progress = pt_relayout_progress_get(&s->relayout, &p);
        t = pt_metrics_render(&s->metrics, r, s->model_name);
        pt_sched_stats st;
        sched_stats(s, r, &st);
        sm = pt_place_metrics(&st, s->n_held, s->dynamic);
    }
    size_t lt = t ? strlen(t) : 0, ls = sm ? strlen(sm) : 0;
    if (t && sm && (all = malloc(lt + ls + 1))) {
        memcpy(all, t, lt);
        memcpy(all + lt, sm, ls + 1);
        pt_http_respond(req, 200, "text/plain; version=0.0.4", all, lt + ls, NULL);
    } else {
        send_nomem(req);
    }
    free(all);
    free(sm);
    free(t);
    free(r);
}

/* ---- layout changes (server/relayout.h): the host side, loop thread ---- */

static void current_layout(const serve *s, int *tp) {
    for (int i = 0; i < s->n_inst; i++) tp[i] = s->inst[i].tp;
}

/* The index of the instance starting on `device`, or -1. */
static int instance_at(const serve *s, int device) {
    for (int i = 0; i < s->n_inst; i++)
        if (s->inst[i].first == device) return i;
    return -1;
}

static int relayout_sources(void *user, const pt_xform_op *op, pt_live_instance *src, pt_err *err) {
    serve *s = user;
    int a = instance_at(s, op->first_device);
    if (a < 0 || a + op->n_src > s->n_inst)
        return pt_err_set(err, PT_ERR_INVALID, "no instance starts on device %d any more", op->first_device);
    for (int k = 0; k < op->n_src; k++) {
        if (s->inst[a + k].tp != op->src_tp[k])
            return pt_err_set(err, PT_ERR_INVALID, "the instance on device %d has TP %d, the plan expected %d",
                              s->inst[a + k].first, s->inst[a + k].tp, op->src_tp[k]);
        src[k] = (pt_live_instance){s->inst[a + k].engine, s->inst[a + k].batcher};
    }
    return PT_OK;
}

/* Choice indices after instances [a, a + n_src) became [a, a + n_dst): the
 * moved ones where the transformation put their request, the later ones
 * shifted. A request that had finished at the source (its last event still
 * queued for on_async) belongs to no instance any more. */
static void remap_choices(serve *s, int a, int n_src, int n_dst, const pt_live_xform *x) {
    for (call *c = s->calls; c; c = c->next) {
        for (uint32_t i = 0; i < c->n_choices; i++) {
            choice *ch = &c->choices[i];
            if (!ch->submitted || ch->done || ch->inst < a) continue;
            if (ch->inst >= a + n_src) {
                ch->inst += n_dst - n_src;
                continue;
            }
            int t = pt_live_xform_where(x, ch->batch_id);
            ch->inst = t >= 0 && t < n_dst ? a + t : -1;
        }
    }
}

/* The scheduler's preemption rule on an instance's batcher (scheduler.h,
 * pt_sched_victim): under the dynamic policy a merged instance preempts
 * first the requests that an instance of the next smaller degree holds
 * (they can run elsewhere, the long ones only here). */
static void set_preempt_rule(serve *s, const instance *in) {
    uint32_t tokens = 0;
    const pt_sched_opts *o = pt_sched_get_opts(s->sched);
    const pt_cost_model *m = pt_sched_get_cost(s->sched);
    for (int a = 0; s->dynamic && a < o->n_allowed && o->allowed_tp[a] < in->tp; a++) {
        uint64_t pages = pt_cost_instance_pages(m, o->allowed_tp[a]);
        if (m->tp[o->allowed_tp[a]].valid && pages && m->n_kv_heads)
            tokens = (uint32_t)(pages / m->n_kv_heads * m->page_size);
    }
    pt_batcher_set_preempt_movable(in->batcher, tokens);
}

/* The longest request any instance takes (what requests are checked against). */
static void refresh_max_ctx(serve *s) {
    s->max_ctx = 0;
    for (int i = 0; i < s->n_inst; i++) {
        uint32_t ctx = pt_batcher_max_ctx(s->inst[i].batcher);
        if (ctx > s->max_ctx) s->max_ctx = ctx;
    }
    /* A static layout accepts what its instances hold; a dynamic one what
     * the model's context holds (the scheduler merges, or refuses). */
    if (!s->dynamic || s->n_inst == 0) s->ctx_limit = s->max_ctx;
    else s->ctx_limit = pt_engine_get_opts(s->inst[0].engine)->max_ctx;
}

static void relayout_install(void *user, const pt_xform_op *op, const pt_live_xform *x) {
    serve *s = user;
    int a = instance_at(s, op->first_device); /* relayout_sources found it a moment ago */
    int after = s->n_inst - a - op->n_src;
    for (int k = 0; k < op->n_src; k++) { /* their counters live on in the totals */
        pt_engine_prefix_stats ps;
        pt_engine_prefix_get_stats(s->inst[a + k].engine, &ps);
        s->metrics.prefix_queries_retired += ps.queries;
        s->metrics.prefix_hits_retired += ps.hits;
    }
    memmove(&s->inst[a + op->n_dst], &s->inst[a + op->n_src], (size_t)after * sizeof(instance));
    for (int t = 0; t < op->n_dst; t++) {
        pt_live_instance li = pt_live_xform_target(x, t);
        s->inst[a + t] = (instance){.engine = li.engine, .batcher = li.batcher, .first = op->dst[t].first,
                                    .tp = op->dst[t].tp};
        set_preempt_rule(s, &s->inst[a + t]);
    }
    s->n_inst += op->n_dst - op->n_src;
    remap_choices(s, a, op->n_src, op->n_dst, x);
    refresh_max_ctx(s); /* a merge holds longer requests, a split shorter ones */
}

/* Counts each operation tried, by kind and result; the pause where there
 * was one (a commit, or a failed one), the pre-copy where it began. */
static void relayout_done(void *user, const pt_relayout_result *res) {
    serve *s = user;
    pt_metrics *m = &s->metrics;
    uint64_t kv = 0, weights = 0;
    double pause = 0;
    for (int k = 0; k < res->plan.n_ops; k++) {
        const pt_relayout_op *o = &res->ops[k];
        if (!o->attempted) continue;
        m->xforms[o->kind][o->ok ? 0 : 1]++;
        if (o->ok || o->failed_in >= PT_RELAYOUT_PRECOPY) pt_histogram_observe(&m->xform_precopy, o->st.precopy_s);
        if (o->ok || o->failed_in == PT_RELAYOUT_COMMIT) pt_histogram_observe(&m->xform_pause, o->st.pause_s);
        kv += o->st.xf.kv_bytes_moved;
        weights += o->st.xf.weight_bytes_new;
        pause += o->st.pause_s;
    }
    m->xform_kv_bytes += kv;
    m->xform_weight_bytes += weights;
    refresh_max_ctx(s); /* the targets' pools grew when the sources were freed */
    if (res->ok) s->relayouts_ok++;
    else s->relayouts_failed++;
    pt_layout_report *r = malloc(sizeof(*r));
    char layout[512] = "(out of memory describing the layout)";
    if (r) {
        layout_report(s, r);
        pt_layout_describe(r, layout, sizeof(layout));
        free(r);
    }
    if (res->ok)
        pt_log(PT_LOG_INFO, "transformation xf-%llu done in %.3f s: %d operation%s, KV %.2f MiB and weights %.2f MiB "
               "moved, paused %.2f ms; now %s", (unsigned long long)res->id, res->duration_s, res->plan.n_ops,
               res->plan.n_ops == 1 ? "" : "s", kv / 1048576.0, weights / 1048576.0, pause * 1e3, layout);
    else
        pt_log(PT_LOG_WARN, "transformation xf-%llu failed after %.3f s: %s; now %s", (unsigned long long)res->id,
               res->duration_s, res->reason, layout);
    /* The scheduler's own change is over: its hysteresis clock restarts. */
    if (s->sched_xform_id && res->id == s->sched_xform_id) {
        pt_sched_xform_done(s->sched, pt_now(), res->ok);
        s->sched_xform_id = 0;
        /* A change that failed (rolled back) is not retried at once: what
         * made it fail (pages short on a device, a fault) may still hold. */
        s->retry_wait = res->ok ? 0 : s->retry_wait > 0 ? (s->retry_wait * 2 < 30 ? s->retry_wait * 2 : 30) : 1;
        s->retry_after = res->ok ? 0 : pt_now() + s->retry_wait;
        if (!res->ok)
            pt_log(PT_LOG_WARN, "scheduler: its transformation xf-%llu failed; no other for %.0f s",
                   (unsigned long long)res->id, s->retry_wait);
    }
    sched_after_change(s);
}

/* ---- layout routes ---- */

static void handle_layout_get(serve *s, pt_http_request *req) {
    pt_layout_report *r = malloc(sizeof(*r));
    if (!r) {
        send_nomem(req);
        return;
    }
    layout_report(s, r);
    pt_relayout_progress p;
    bool running = pt_relayout_progress_get(&s->relayout, &p);
    pt_layout_xform_view x = {running ? &p : NULL, s->relayout.last, s->relayouts_ok, s->relayouts_failed};
    const pt_sched_opts *o = pt_sched_get_opts(s->sched);
    pt_sched_stats st;
    sched_stats(s, r, &st);
    pt_layout_sched_view sv = {s->dynamic, o->allowed_tp, o->n_allowed, s->cfg->slo_ttft_ms, s->cfg->slo_tpot_ms,
                               o->hysteresis_s, s->cost_source, s->n_held, &st, s->last_xform_text};
    send_json(req, 200, pt_layout_json(r, &x, &sv));
    free(r);
}

/* POST {"layout": [...]}: 400 for a body or layout the server cannot take,
 * 409 while another change runs, else 202 with the plan; the change runs
 * on, GET /v1/layout follows it. */
static void handle_layout_post(serve *s, pt_http_request *req) {
    size_t blen;
    const char *body = pt_http_body(req, &blen);
    int want[PT_FABRIC_MAX_DEVICES], n_want, cur[PT_FABRIC_MAX_DEVICES];
    pt_err err = {{0}};
    int prc = pt_layout_parse_request(body, blen, want, &n_want, &err);
    if (prc == PT_ERR_NOMEM) {
        send_error(req, 500, "server_error", NULL, NULL, err.msg, NULL);
        return;
    }
    if (prc) {
        send_error(req, 400, "invalid_request_error", "invalid_layout", "layout", err.msg, NULL);
        return;
    }
    pt_relayout_progress p;
    if (pt_relayout_progress_get(&s->relayout, &p)) {
        char msg[1400];
        snprintf(msg, sizeof(msg), "transformation xf-%llu (%s) is in progress (stage %s); retry once GET /v1/layout "
                 "shows it over", (unsigned long long)p.id, p.run->summary, pt_relayout_stage_name(p.stage));
        send_error(req, 409, "invalid_request_error", "transformation_in_progress", NULL, msg, "Retry-After: 1\r\n");
        return;
    }
    current_layout(s, cur);
    pt_xform_plan *plan = malloc(sizeof(*plan));
    if (!plan) {
        send_nomem(req);
        return;
    }
    pt_xform_plan_input in = {cur, s->n_inst, want, n_want, pt_fabric_size(s->fabric), s->plan.allowed_tp,
                              s->plan.n_allowed, (int)s->n_kv_heads};
    uint64_t id;
    int rc = pt_xform_plan_make(plan, &in, &err);
    if (rc) {
        send_error(req, 400, "invalid_request_error", "invalid_layout", "layout", err.msg, NULL);
    } else if ((rc = pt_relayout_start(&s->relayout, plan, cur, s->n_inst, want, n_want, &id, &err)) != 0) {
        if (rc == PT_ERR_BUSY)
            send_error(req, 409, "invalid_request_error", "transformation_in_progress", NULL, err.msg,
                       "Retry-After: 1\r\n");
        else
            send_error(req, 500, "server_error", NULL, NULL, err.msg, NULL);
    } else {
        pt_relayout_progress_get(&s->relayout, &p);
        /* Out of memory for the plan's description: still 202 with the id, the change runs (GET /v1/layout). */
        char brief[96];
        char *json = pt_layout_accepted_json(p.run);
        if (!json) snprintf(brief, sizeof(brief), "{\"id\":\"xf-%llu\",\"status\":\"accepted\"}",
                            (unsigned long long)p.run->id);
        pt_http_respond(req, 202, "application/json", json ? json : brief, strlen(json ? json : brief),
                        "Location: /v1/layout\r\n");
        free(json);
    }
    free(plan);
}

static void handle_layout(serve *s, pt_http_request *req, bool get, bool post) {
    if (post && s->shutting_down) {
        send_error(req, 503, "server_error", NULL, NULL, "the server is shutting down", "Retry-After: 5\r\n");
    } else if (post) {
        handle_layout_post(s, req);
    } else if (get) {
        handle_layout_get(s, req);
    } else {
        send_error(req, 405, "invalid_request_error", NULL, NULL, "method not allowed for this route",
                   "Allow: GET, POST\r\n");
    }
}

static void handle_request(void *user, pt_http_request *req) {
    serve *s = user;
    const char *m = pt_http_method(req), *path = pt_http_path(req);
    bool get = !strcmp(m, "GET"), post = !strcmp(m, "POST");
    bool open_route = !strcmp(path, "/health") || !strcmp(path, "/metrics");
    if ((!open_route || s->cfg->auth_health_metrics) && !authorized(s, req)) {
        send_error(req, 401, "authentication_error", "invalid_api_key", NULL,
                   "missing or invalid API key: send 'Authorization: Bearer <key>'", "WWW-Authenticate: Bearer\r\n");
        return;
    }
    s->metrics.http_requests++;
    if (!strcmp(path, "/v1/layout")) {
        handle_layout(s, req, get, post);
        return;
    }
    struct {
        const char *path;
        bool post;
    } routes[] = {{"/health", false},  {"/metrics", false},  {"/v1/models", false},   {"/v1/chat/completions", true},
                  {"/v1/completions", true}, {"/tokenize", true}, {"/detokenize", true}};
    for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++) {
        if (strcmp(path, routes[i].path) != 0) continue;
        if (routes[i].post ? !post : !get) {
            char allow[64];
            snprintf(allow, sizeof(allow), "Allow: %s\r\n", routes[i].post ? "POST" : "GET");
            send_error(req, 405, "invalid_request_error", NULL, NULL, "method not allowed for this route", allow);
            return;
        }
        if (s->shutting_down && routes[i].post) {
            send_error(req, 503, "server_error", NULL, NULL, "the server is shutting down", "Retry-After: 5\r\n");
            return;
        }
        switch (i) {
        case 0:
            pt_http_respond(req, 200, "application/json", "{}", 2, NULL);
            return;
        case 1:
            handle_metrics(s, req);
            return;
        case 2:
            send_json(req, 200, pt_oai_models_json(&s->model_name, 1, (int64_t)time(NULL), s->ctx_limit));
            return;
        case 3:
            handle_generate(s, req, PT_OAI_CHAT);
            return;
        case 4:
            handle_generate(s, req, PT_OAI_COMPLETION);
            return;
        case 5:
            handle_tokenize(s, req);
            return;
        case 6:
            handle_detokenize(s, req);
            return;
        }
    }
    send_error(req, 404, "not_found_error", NULL, NULL, "no such route", NULL);
}

/* ---- start-up and shutdown ---- */

static void on_http_closed(void *arg) {
    serve *s = arg;
    s->http = NULL;
    pt_relayout_close(&s->relayout);
    uv_close((uv_handle_t *)&s->async, NULL);
    uv_close((uv_handle_t *)&s->sigint, NULL);
    uv_close((uv_handle_t *)&s->sigterm, NULL);
    uv_close((uv_handle_t *)&s->grace, NULL);
    uv_close((uv_handle_t *)&s->sweep, NULL);
    uv_close((uv_handle_t *)&s->plan_timer, NULL);
}

/* Cancels calls older than request_timeout_s; their cancelled events then
 * report the timeout to the client. */
static void on_sweep(uv_timer_t *t) {
    serve *s = t->data;
    double now = pt_now();
    /* Held ones first: no event will come to report their end. */
    fail_held(s, true, 504, "the request exceeded the server's request timeout while held for a layout that can "
                            "serve it");
    for (call *c = s->calls; c; c = c->next) {
        if (c->timed_out || c->n_done == c->n_choices || now - c->t_submit < s->cfg->request_timeout_s) continue;
        c->timed_out = true;
        call_cancel_all(c);
    }
}

static void on_grace_expired(uv_timer_t *t) {
    serve *s = t->data;
    pt_log(PT_LOG_WARN, "shutdown grace period over: cancelling the requests still running");
    cancel_everything(s);
}

static void on_signal(uv_signal_t *h, int signum) {
    serve *s = h->data;
    if (s->shutting_down) {
        pt_log(PT_LOG_WARN, "second signal: cancelling everything now");
        cancel_everything(s);
        return;
    }
    s->shutting_down = true;
    pt_relayout_abort(&s->relayout); /* a layout change rolls back at its next stage */
    uv_timer_stop(&s->plan_timer);
    fail_held(s, false, 503, "the server is shutting down");
    pt_log(PT_LOG_INFO, "signal %d: no new connections; finishing running requests (up to %.0f s)", signum,
           s->cfg->shutdown_grace_s);
    uint64_t grace_ms = (uint64_t)(s->cfg->shutdown_grace_s * 1000);
    uv_timer_start(&s->grace, on_grace_expired, grace_ms, 0);
    pt_http_server_close(s->http, on_http_closed, s);
}

/* Puts a printf-formed prefix before the message already in err. */
static int err_prefixed(pt_err *err, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int err_prefixed(pt_err *err, int code, const char *fmt, ...) {
    char prefix[192], msg[sizeof(err->msg)];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof(prefix), fmt, ap);
    va_end(ap);
    snprintf(msg, sizeof(msg), "%s", err->msg);
    return pt_err_set(err, code, "%s%s", prefix, msg);
}

/* What every instance's engine shares; its devices come from the fabric. */
static void engine_opts(const pt_server_config *cfg, pt_engine_opts *eo) {
    pt_engine_opts_default(eo);
    eo->page_size = (uint32_t)cfg->page_size;
    eo->kv_dtype = cfg->kv_dtype;
    eo->max_ctx = (uint32_t)cfg->max_model_len;
    eo->max_seqs = (uint32_t)cfg->max_running;
    eo->max_batch_tokens = (uint32_t)cfg->max_batch_tokens;
    eo->kv_bytes = (uint64_t)cfg->kv_memory_mb << 20;
    eo->cuda_graphs = cfg->cuda_graphs;
    eo->select_budget = (uint32_t)cfg->select_budget;
    eo->select_dense_layers = (uint32_t)cfg->select_dense_layers;
    eo->prefix_cache = cfg->prefix_caching;
}

static void fmt_degrees(char *buf, size_t n, const int *v, int count) {
    size_t len = 0;
    buf[0] = '\0';
    for (int i = 0; i < count && len < n; i++) len += (size_t)snprintf(buf + len, n - len, "%s%d", i ? "," : "", v[i]);
}

/* The fabric of the configured devices. */
static int open_fabric(serve *s, const pt_layout_plan *p, pt_err *err) {
    if (p->n_devices == 0) return pt_err_set(err, PT_ERR_INVALID, "no devices: the configuration was not finalized");
    char allowed[96];
    fmt_degrees(allowed, sizeof(allowed), p->allowed_tp, p->n_allowed);
    if (pt_fabric_create(&s->fabric, p->devices, p->n_devices, p->allowed_tp, p->n_allowed, err))
        return err_prefixed(err, PT_SERVE_ERR_LAYOUT, "engine.devices (%d %s device%s, engine.allowed_tp [%s]): ",
                            p->n_devices, p->devices[0].kind == PT_DEVICE_CUDA ? "cuda" : "cpu",
                            p->n_devices == 1 ? "" : "s", allowed);
    return PT_OK;
}

/* One engine per instance of the plan. What the devices or the model
 * refuse (a TP degree above the model's KV heads, a budget too small for a
 * shard) is a configuration error: PT_SERVE_ERR_LAYOUT, the message naming
 * the key and the instance's devices. */
static int open_instances(serve *s, const pt_layout_plan *p, pt_err *err) {
    char allowed[96];
    fmt_degrees(allowed, sizeof(allowed), p->allowed_tp, p->n_allowed);
    /* Room for a layout of TP1 instances on every device: a split grows the list in place. */
    s->inst = pt_xcalloc(PT_FABRIC_MAX_DEVICES, sizeof(instance));
    s->n_inst = p->n_instances;
    pt_engine_opts eo;
    engine_opts(s->cfg, &eo);
    for (int i = 0; i < s->n_inst; i++) {
        instance *in = &s->inst[i];
        in->first = p->first[i];
        in->tp = p->tp[i];
        if (!pt_fabric_group_ok(s->fabric, in->first, in->tp))
            return pt_err_set(err, PT_SERVE_ERR_LAYOUT,
                              "engine.layout[%d] (devices [%d, %d)): the fabric does not allow an instance of TP %d "
                              "there (allowed TP [%s], aligned to the degree)",
                              i, in->first, in->first + in->tp, in->tp, allowed);
        if (pt_engine_create_on(&in->engine, &s->mf, s->fabric, in->first, in->tp, &eo, err))
            return err_prefixed(err, PT_SERVE_ERR_LAYOUT, "engine.layout[%d] (devices [%d, %d)): ", i, in->first,
                                in->first + in->tp);
    }
    return PT_OK;
}

/* The cost model: from scheduler.cost_file, or timed on the fabric for
 * every degree an instance may have (engine.allowed_tp up to the device
 * count: an operator's POST /v1/layout may form any of them). Before the
 * instances exist, so that the calibration instances fit where they will. */
static int open_cost(serve *s, pt_err *err) {
    const pt_server_config *cfg = s->cfg;
    if (cfg->cost_file) {
        int rc = pt_cost_load(&s->cost, cfg->cost_file, err);
        if (rc) return err_prefixed(err, PT_SERVE_ERR_LAYOUT, "scheduler.cost_file: ");
        snprintf(s->cost_source, sizeof(s->cost_source), "%s", cfg->cost_file);
        pt_log(PT_LOG_INFO, "cost model: from %s", cfg->cost_file);
        return PT_OK;
    }
    int degrees[PT_CONFIG_MAX_ALLOWED_TP], n = 0;
    for (int i = 0; i < s->plan.n_allowed; i++)
        if (s->plan.allowed_tp[i] <= s->plan.n_devices) degrees[n++] = s->plan.allowed_tp[i];
    pt_engine_opts eo;
    engine_opts(cfg, &eo);
    pt_calib_report *rep = pt_xcalloc(1, sizeof(*rep));
    pt_calib_opts co = {.budget_s = cfg->calibration_s};
    int rc = pt_calibrate(&s->cost, &s->mf, s->fabric, &eo, degrees, n, &co, rep, err);
    if (rc == PT_OK) pt_calibrate_log(rep, &s->cost);
    free(rep);
    snprintf(s->cost_source, sizeof(s->cost_source), "calibrated at start-up");
    return rc;
}

/* The scheduler's options from the configuration. The scheduler forms
 * powers of two only: a static server's other degrees (an operator's
 * [3, 3]) are placed on but never formed by it. */
static void sched_opts(const serve *s, pt_sched_opts *o) {
    const pt_server_config *cfg = s->cfg;
    *o = (pt_sched_opts){.policy = s->dynamic ? PT_SCHED_DYNAMIC : PT_SCHED_STATIC,
                         .slo = {cfg->slo_ttft_ms / 1e3, cfg->slo_tpot_ms / 1e3},
                         .hysteresis_s = cfg->hysteresis_s,
                         .prefill_chunk = (uint32_t)cfg->prefill_chunk};
    const int *v = s->dynamic ? s->plan.sched_tp : s->plan.allowed_tp;
    int n = s->dynamic ? s->plan.n_sched_tp : s->plan.n_allowed;
    for (int i = 0; i < n && o->n_allowed < 8; i++) {
        int d = v[i];
        if (d >= 1 && d <= s->plan.n_devices && (d & (d - 1)) == 0) o->allowed_tp[o->n_allowed++] = d;
    }
    if (o->n_allowed == 0) o->allowed_tp[o->n_allowed++] = 1;
}

/* A dynamic server without engine.layout starts from the scheduler's
 * layout (all of the smallest allowed degree that fits). */
static int choose_layout(serve *s, pt_err *err) {
    if (!s->dynamic || s->plan.layout_given) return PT_OK;
    pt_sched_opts o;
    sched_opts(s, &o);
    pt_scheduler *tmp = NULL;
    int rc = pt_sched_create(&tmp, &o, &s->cost, err);
    if (rc) return err_prefixed(err, PT_SERVE_ERR_LAYOUT, "scheduler: ");
    int tp[PT_FABRIC_MAX_DEVICES];
    int n = pt_sched_initial_layout(tmp, s->plan.n_devices, tp);
    pt_sched_free(tmp);
    if (n == 0)
        return pt_err_set(err, PT_SERVE_ERR_LAYOUT, "scheduler: no degree of 'scheduler.allowed_tp' fits the model on "
                          "these devices");
    s->plan.n_instances = n;
    for (int i = 0, first = 0; i < n; first += tp[i], i++) {
        s->plan.tp[i] = tp[i];
        s->plan.first[i] = first;
    }
    return PT_OK;
}

/* The scheduler over the built instances: the cost model's memory side from
 * them, written to scheduler.save_cost when asked. */
static int open_scheduler(serve *s, pt_err *err) {
    pt_engine *engines[PT_FABRIC_MAX_DEVICES];
    for (int i = 0; i < s->n_inst; i++) engines[i] = s->inst[i].engine;
    pt_calibrate_memory(&s->cost, engines, s->n_inst);
    pt_log(PT_LOG_INFO, "cost model: %llu KV head pages of %.1f KiB per device, %u-token context",
           (unsigned long long)((s->cost.device_bytes - s->cost.reserve_bytes) / s->cost.head_page_bytes),
           s->cost.head_page_bytes / 1024.0, s->cost.max_ctx);
    if (s->cfg->save_cost) {
        int rc = pt_cost_save(&s->cost, s->cfg->save_cost, err);
        if (rc) return err_prefixed(err, rc, "scheduler.save_cost: ");
        pt_log(PT_LOG_INFO, "cost model: written to %s (proteus simulate --cost %s)", s->cfg->save_cost,
               s->cfg->save_cost);
    }
    pt_sched_opts o;
    sched_opts(s, &o);
    int rc = pt_sched_create(&s->sched, &o, &s->cost, err);
    if (rc) return err_prefixed(err, PT_SERVE_ERR_LAYOUT, "scheduler: ");
    char deg[64];
    fmt_degrees(deg, sizeof(deg), o.allowed_tp, o.n_allowed);
    if (s->dynamic)
        pt_log(PT_LOG_INFO, "scheduler: dynamic over TP [%s]; SLO TTFT %s%.0f ms, TPOT %s%.0f ms; hysteresis %.1f s",
               deg, s->cfg->slo_ttft_ms > 0 ? "" : "none ", s->cfg->slo_ttft_ms, s->cfg->slo_tpot_ms > 0 ? "" : "none ",
               s->cfg->slo_tpot_ms, o.hysteresis_s);
    else
        pt_log(PT_LOG_INFO, "scheduler: static (the layout changes only through POST /v1/layout)");
    return PT_OK;
}

/* One batching loop per instance; the limits a request is checked against. */
static int open_batchers(serve *s, const pt_server_config *cfg, pt_err *err) {
    s->bo = (pt_batcher_opts){(uint32_t)cfg->max_running, (uint32_t)cfg->max_waiting, (uint32_t)cfg->max_batch_tokens,
                              (uint32_t)cfg->prefill_chunk};
    for (int i = 0; i < s->n_inst; i++) {
        int rc = pt_batcher_create(&s->inst[i].batcher, s->inst[i].engine, s->tok, &s->bo, err);
        if (rc) return rc;
        set_preempt_rule(s, &s->inst[i]);
        uint32_t ctx = pt_batcher_max_ctx(s->inst[i].batcher);
        if (ctx > s->max_ctx) s->max_ctx = ctx;
    }
    s->page_size = pt_engine_get_opts(s->inst[0].engine)->page_size;
    s->n_kv_heads = pt_engine_config(s->inst[0].engine)->n_kv_heads;
    return PT_OK;
}

/* Tests: PROTEUS_XFORM_FAIL=precopy_comm|precopy_alloc|commit_alloc|commit_comm
 * makes every transformation operation fail there (pt_live_xform_fail_at),
 * so that the end-to-end tests see the rollback a real fault would cause. */
static pt_xform_fail injected_failure(void) {
    const char *v = getenv("PROTEUS_XFORM_FAIL");
    static const struct {
        const char *name;
        pt_xform_fail f;
    } names[] = {{"precopy_comm", PT_XFORM_FAIL_PRECOPY_COMM},
                 {"precopy_alloc", PT_XFORM_FAIL_PRECOPY_ALLOC},
                 {"commit_alloc", PT_XFORM_FAIL_COMMIT_ALLOC},
                 {"commit_comm", PT_XFORM_FAIL_COMMIT_COMM}};
    for (size_t i = 0; v && i < sizeof(names) / sizeof(names[0]); i++)
        if (!strcmp(v, names[i].name)) {
            pt_log(PT_LOG_WARN, "PROTEUS_XFORM_FAIL=%s: every transformation will fail there (testing)", v);
            return names[i].f;
        }
    if (v && *v) pt_log(PT_LOG_WARN, "PROTEUS_XFORM_FAIL=%s is not a failure point; ignored", v);
    return PT_XFORM_FAIL_NONE;
}

static int open_relayout(serve *s, pt_err *err) {
    pt_relayout_host host = {s, relayout_sources, relayout_install, relayout_done};
    int rc = pt_relayout_init(&s->relayout, &s->loop, &host, s->tok, &s->bo, err);
    if (rc == PT_OK) s->relayout.inject = injected_failure();
    return rc;
}

static int serve_open(serve *s, const pt_server_config *cfg, pt_err *err) {
    int rc;
    s->cfg = cfg;
    pt_metrics_init(&s->metrics);
    pt_rng_seed(&s->rng, (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32));
    if ((rc = pt_model_file_open(&s->mf, cfg->model, err))) return rc;
    if ((rc = pt_tokenizer_load(&s->tok, &s->mf, err))) return rc;
    s->plan = cfg->plan;
    s->dynamic = cfg->policy == PT_POLICY_DYNAMIC;
    if ((rc = open_fabric(s, &s->plan, err))) return rc;
    /* A cost model that cannot be made is reported after the instances:
     * what they refuse (the layout) says more. */
    pt_err cerr = {{0}};
    int crc = open_cost(s, &cerr);
    if (crc == PT_OK && (rc = choose_layout(s, err))) return rc;
    if ((rc = open_instances(s, &s->plan, err))) return rc;
    if (crc) {
        *err = cerr;
        return crc;
    }
    if ((rc = open_scheduler(s, err))) return rc;
    if ((rc = open_batchers(s, cfg, err))) return rc;
    refresh_max_ctx(s);
    s->model_name = cfg->served_model_name;
    /* Chat template: the model's (or the configured one); without one, chat requests get a 400. */
    pt_err terr;
    s->have_ct = pt_chat_template_init_tok(&s->ct, s->mf.chat_template, cfg->chat_template, s->tok, &terr) == 0;
    if (!s->have_ct && cfg->chat_template) return pt_err_set(err, PT_ERR_INVALID, "chat template: %s", terr.msg);
    if (!s->have_ct) pt_log(PT_LOG_WARN, "no chat template: /v1/chat/completions will refuse requests");

    if ((rc = uv_loop_init(&s->loop)))
        return pt_err_set(err, PT_ERR_IO, "uv_loop_init: %s", uv_strerror(rc));
    pthread_mutex_init(&s->mu, NULL);
    uv_async_init(&s->loop, &s->async, on_async);
    s->async.data = s;
    uv_signal_init(&s->loop, &s->sigint);
    uv_signal_init(&s->loop, &s->sigterm);
    uv_timer_init(&s->loop, &s->grace);
    uv_timer_init(&s->loop, &s->sweep);
    uv_timer_init(&s->loop, &s->plan_timer);
    if ((rc = open_relayout(s, err))) {
        on_http_closed(s);
        uv_run(&s->loop, UV_RUN_DEFAULT);
        uv_loop_close(&s->loop);
        return rc;
    }
    s->sigint.data = s->sigterm.data = s->grace.data = s->sweep.data = s->plan_timer.data = s;
    if (cfg->request_timeout_s > 0) uv_timer_start(&s->sweep, on_sweep, 1000, 1000);
    if (s->dynamic) uv_timer_start(&s->plan_timer, on_plan_timer, PLAN_INTERVAL_MS, PLAN_INTERVAL_MS);
    uv_signal_start(&s->sigint, on_signal, SIGINT);
    uv_signal_start(&s->sigterm, on_signal, SIGTERM);
    pt_http_limits lim = pt_http_limits_default();
    lim.max_body_bytes = cfg->max_body_bytes;
    lim.max_header_bytes = cfg->max_header_bytes;
    lim.idle_timeout_ms = (uint64_t)(cfg->idle_timeout_s * 1000);
    if ((rc = pt_http_server_start(&s->http, &s->loop, cfg->host, cfg->port, &lim, handle_request, s, err))) {
        on_http_closed(s);
        uv_run(&s->loop, UV_RUN_DEFAULT);
        uv_loop_close(&s->loop);
        return rc;
    }
    return PT_OK;
}

static void serve_close(serve *s) {
    /* First the layout change a shutdown interrupted: it rolls back, and
     * the sources it held are s->inst's again. */
    pt_relayout_free(&s->relayout);
    for (int i = 0; i < s->n_inst; i++) pt_batcher_free(s->inst[i].batcher);
    /* Events the batcher sent while stopping. */
    for (event *e = s->ev_head; e;) {
        event *n = e->next;
        free(e->text);
        free(e->error);
        free(e);
        e = n;
    }
    while (s->calls) call_free(s->calls);
    if (s->have_ct) pt_chat_template_free(&s->ct);
    for (int i = 0; i < s->n_inst; i++) pt_engine_free(s->inst[i].engine);
    free(s->inst);
    pt_sched_free(s->sched);
    pt_place_free(&s->place);
    free(s->place_reqs);
    pt_fabric_free(s->fabric);
    pt_tokenizer_free(s->tok);
    pt_model_file_close(&s->mf);
}

int pt_serve_run(const pt_server_config *cfg) {
    serve *s = pt_xcalloc(1, sizeof(*s));
    pt_err err = {{0}};
    int rc = serve_open(s, cfg, &err);
    if (rc) {
        fprintf(stderr, "proteus: %s\n", err.msg);
        serve_close(s);
        free(s);
        return rc;
    }
    pt_layout_report *r = pt_xmalloc(sizeof(*r));
    layout_report(s, r);
    char layout[512];
    pt_layout_describe(r, layout, sizeof(layout));
    free(r);
    pt_log(PT_LOG_INFO, "serving %s on http://%s:%d (context %u tokens): %s", s->model_name, cfg->host,
           pt_http_server_port(s->http), s->ctx_limit, layout);
    uv_run(&s->loop, UV_RUN_DEFAULT);
    int lc = uv_loop_close(&s->loop);
    if (lc) pt_log(PT_LOG_WARN, "loop closed with handles open: %s", uv_strerror(lc));
    serve_close(s); /* batchers (and a rolled-back transformation) still report into s->mu while they stop */
    pthread_mutex_destroy(&s->mu);
    free(s);
    pt_log(PT_LOG_INFO, "stopped");
    return 0;
}
