/* Replay: window, lengths, schedule, prompts, and the run (see replay.h).
 *
 * The run is one libuv loop: a timer wakes at the next scheduled send, every
 * due request is started while a concurrency slot is free, and each finished
 * call frees a slot and sends whatever is due and waiting. A request held
 * back by --max-concurrency keeps its t_scheduled; its t_sent shows the wait. */
#include "bench/replay.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "bench/client.h"

/* ---- plan ---- */

void pt_replay_opts_default(pt_replay_opts *o) {
    memset(o, 0, sizeof(*o));
    o->speedup = 1.0;
    o->burstiness = 1.0;
    o->input_scale = o->output_scale = 1.0;
}

static uint32_t scale_len(uint32_t n, double f, uint32_t cap) {
    double v = round((double)n * f);
    uint32_t r = v < 1 ? 1 : v > (double)UINT32_MAX ? UINT32_MAX : (uint32_t)v;
    return cap && r > cap ? cap : r;
}

void pt_replay_lengths(const pt_replay_opts *o, uint32_t in, uint32_t out, uint32_t *in_out, uint32_t *out_out) {
    in = scale_len(in, o->input_scale, o->max_input);
    out = scale_len(out, o->output_scale, o->max_output);
    uint32_t ctx = o->context_len;
    if (ctx >= 2 && (uint64_t)in + out > ctx) {
        in = out < ctx ? ctx - out : 1;
        if (in + out > ctx) out = ctx - in;
    }
    *in_out = in;
    *out_out = out;
}

/* One splitmix64 step from x: a well-mixed 64-bit hash of it. */
static uint64_t mix64(uint64_t x) { return pt_mix64(x + 0x9e3779b97f4a7c15ull); }

/* Uniform in (0, 1): 53 random bits, never 0, so log() is finite. */
static double uniform_open(pt_rng *r) { return ((double)(pt_rng_next(r) >> 11) + 0.5) * (1.0 / 9007199254740992.0); }

static double std_normal(pt_rng *r) {
    double u1 = uniform_open(r), u2 = uniform_open(r);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

/* Gamma(shape, 1) by Marsaglia and Tsang (2000); shape < 1 through the
 * boost Gamma(shape + 1) * U^(1/shape). */
static double gamma_sample(pt_rng *r, double shape) {
    if (shape < 1.0) return gamma_sample(r, shape + 1.0) * pow(uniform_open(r), 1.0 / shape);
    double d = shape - 1.0 / 3.0, c = 1.0 / sqrt(9.0 * d);
    for (;;) {
        double x = std_normal(r), v = 1.0 + c * x;
        if (v <= 0) continue;
        v = v * v * v;
        double u = uniform_open(r);
        if (log(u) < 0.5 * x * x + d - d * v + d * log(v)) return d * v;
    }
}

void pt_replay_gamma_times(double *t, size_t n, double rate, double burstiness, uint64_t seed) {
    pt_rng r;
    pt_rng_seed(&r, mix64(seed ^ 0x7261746573ull)); /* "rates": apart from the prompt streams */
    double scale = 1.0 / (rate * burstiness), now = 0;
    for (size_t i = 0; i < n; i++) {
        t[i] = now;
        now += gamma_sample(&r, burstiness) * scale;
    }
}

void pt_prompt_build(int32_t *out, uint32_t len, const int32_t *pool, size_t n_pool, uint64_t seed, uint32_t req_id,
                     const uint32_t *hash_ids, uint32_t n_hash) {
    for (uint32_t b = 0; (uint64_t)b * PT_PROMPT_BLOCK < len; b++) {
        uint64_t s = b < n_hash ? mix64(mix64(seed ^ 0x68617368ull) ^ hash_ids[b])
                                : mix64(mix64(mix64(seed ^ 0x72657173ull) ^ req_id) ^ b);
        pt_rng r;
        pt_rng_seed(&r, s);
        uint32_t lo = b * PT_PROMPT_BLOCK, hi = lo + PT_PROMPT_BLOCK < len ? lo + PT_PROMPT_BLOCK : len;
        for (uint32_t i = lo; i < hi; i++) out[i] = pool[pt_rng_next(&r) % n_pool];
    }
}

int pt_replay_plan_build(pt_replay_plan *p, const pt_trace *t, const pt_replay_opts *o, pt_err *err) {
    memset(p, 0, sizeof(*p));
    if (o->speedup <= 0 || (o->rate > 0 && o->burstiness <= 0))
        return pt_err_set(err, PT_ERR_INVALID, "speedup and burstiness must be positive");
    size_t first = 0;
    while (first < t->n && t->reqs[first].t < o->start) first++;
    size_t last = first; /* one past the window */
    while (last < t->n && (o->duration <= 0 || t->reqs[last].t < o->start + o->duration)) last++;
    size_t avail = last - first;
    if (avail <= o->warmup)
        return pt_err_set(err, PT_ERR_INVALID, "the window (start %g s, duration %g s) holds %zu requests, %s", o->start,
                          o->duration, avail, o->warmup ? "not more than --warmup" : "none to send");
    size_t n_meas = avail - o->warmup;
    if (o->num_requests && o->num_requests < n_meas) n_meas = o->num_requests;
    size_t n = o->warmup + n_meas;
    p->reqs = calloc(n, sizeof(*p->reqs));
    if (!p->reqs) return pt_err_set(err, PT_ERR_NOMEM, "out of memory for %zu requests", n);
    p->n = n;
    p->n_warmup = o->warmup;
    for (size_t i = 0; i < n; i++) {
        const pt_trace_req *q = &t->reqs[first + i];
        pt_replay_req *r = &p->reqs[i];
        pt_replay_lengths(o, q->input_len, q->output_len, &r->input_len, &r->output_len);
        r->hash_ids = q->hash_ids;
        r->n_hash = q->n_hash;
        r->line = q->line;
        r->warmup = i < o->warmup;
    }
    pt_replay_req *m = p->reqs + o->warmup;
    if (o->rate > 0) {
        double *ts = malloc(n_meas * sizeof(double));
        if (!ts) {
            pt_replay_plan_free(p);
            return pt_err_set(err, PT_ERR_NOMEM, "out of memory for %zu requests", n);
        }
        pt_replay_gamma_times(ts, n_meas, o->rate, o->burstiness, o->seed);
        for (size_t i = 0; i < n_meas; i++) m[i].t = ts[i];
        free(ts);
    } else {
        double t0 = t->reqs[first + o->warmup].t;
        for (size_t i = 0; i < n_meas; i++) m[i].t = (t->reqs[first + o->warmup + i].t - t0) / o->speedup;
    }
    return 0;
}

void pt_replay_plan_free(pt_replay_plan *p) {
    free(p->reqs);
    memset(p, 0, sizeof(*p));
}

/* ---- the run ---- */

typedef struct {
    const pt_replay_plan *plan;
    const pt_replay_run_opts *o;
    uv_loop_t loop;
    pt_client *cl;
    uv_timer_t sched, progress;
    uv_signal_t sigint;
    bool have_sigint, is_tty;
    pt_bench_record *recs;
    pt_client_call *calls;    /* (plan->n) */
    char **bodies;            /* (plan->n) request bodies, freed when the call ends */
    char *model_json;         /* the model name as a JSON string */
    int32_t *scratch;         /* one prompt's ids */
    size_t next;              /* next request to send */
    size_t n_started, n_done, n_failed, in_flight;
    double t_start;           /* pt_now() when the measured schedule began */
    bool measuring, interrupted, finished;
} replay;

/* {"model": M, "prompt": [ids], "max_tokens": N, ...}: the output length is
 * forced with ignore_eos, and usage comes in the stream's last chunk. */
static char *request_body(replay *rp, size_t i, size_t *len) {
    const pt_replay_req *q = &rp->plan->reqs[i];
    pt_prompt_build(rp->scratch, q->input_len, rp->o->pool, rp->o->n_pool, rp->o->seed, (uint32_t)i, q->hash_ids,
                    q->n_hash);
    const char *const *words = rp->o->words;
    size_t longest = 12;
    if (words)
        for (size_t k = 0; k < rp->o->n_pool; k++) longest = strlen(words[k]) + 2 > longest ? strlen(words[k]) + 2 : longest;
    size_t cap = strlen(rp->model_json) + (size_t)q->input_len * longest + 256;
    char *b = malloc(cap);
    if (!b) return NULL;
    size_t n = (size_t)snprintf(b, cap, "{\"model\":%s,\"prompt\":%s", rp->model_json, words ? "\"" : "[");
    for (uint32_t k = 0; k < q->input_len; k++) {
        if (words) n += (size_t)snprintf(b + n, cap - n, " %s", words[rp->scratch[k]]); /* plain ASCII words */
        else n += (size_t)snprintf(b + n, cap - n, k ? ",%d" : "%d", rp->scratch[k]);
    }
    n += (size_t)snprintf(b + n, cap - n,
                          "%s,\"max_tokens\":%u,\"ignore_eos\":true,\"stream\":true,"
                          "\"stream_options\":{\"include_usage\":true},\"temperature\":0}",
                          words ? "\"" : "]", q->output_len);
    *len = n;
    return b;
}

static void progress_print(replay *rp, bool final) {
    if (!rp->o->progress) return;
    const pt_replay_plan *p = rp->plan;
    double el = rp->measuring ? pt_now() - rp->t_start : 0;
    size_t done_meas = rp->n_done > p->n_warmup ? rp->n_done - p->n_warmup : 0;
    if (!rp->measuring)
        fprintf(stderr, "%swarmup %zu/%zu%s", rp->is_tty ? "\r" : "", rp->n_done, p->n_warmup, rp->is_tty ? "\033[K" : "\n");
    else
        fprintf(stderr, "%srequests %zu/%zu done, %zu in flight, %zu failed, %.1f s%s", rp->is_tty ? "\r" : "",
                done_meas, p->n - p->n_warmup, rp->in_flight, rp->n_failed, el,
                rp->is_tty ? (final ? "\033[K\n" : "\033[K") : "\n");
}

static void on_progress(uv_timer_t *t) { progress_print(t->data, false); }

static void handle_closed(uv_handle_t *h) {}

static void run_finish(replay *rp) {
    if (rp->finished) return;
    rp->finished = true;
    progress_print(rp, true);
    uv_close((uv_handle_t *)&rp->sched, handle_closed);
    uv_close((uv_handle_t *)&rp->progress, handle_closed);
    if (rp->have_sigint) uv_close((uv_handle_t *)&rp->sigint, handle_closed);
    pt_client_close(rp->cl);
}

static void call_done(pt_client_call *call);
static void pump(replay *rp);

static void send_one(replay *rp, size_t i) {
    const pt_replay_req *q = &rp->plan->reqs[i];
    pt_bench_record *rec = &rp->recs[i];
    rec->index = (uint32_t)i;
    rec->warmup = q->warmup;
    rec->t_scheduled = q->t;
    rec->input_tokens = q->input_len;
    rec->expected_output = q->output_len;
    rp->n_started++;
    rp->in_flight++;
    size_t len = 0;
    char *body = request_body(rp, i, &len);
    pt_client_call *c = &rp->calls[i];
    *c = (pt_client_call){.method = "POST", .path = rp->o->endpoint, .body = body, .body_len = len,
                          .timeout_s = rp->o->timeout_s, .rec = rec, .done = call_done, .data = rp};
    rp->bodies[i] = body;
    int rc = body ? pt_client_start(rp->cl, c) : PT_ERR_NOMEM;
    if (rc != 0) {
        if (!body) {
            rec->error = pt_xstrdup("out of memory for the request body");
            rec->t_sent = rec->t_end = pt_now() - rp->t_start;
            rec->t_first = -1;
        }
        call_done(c);
    }
}

static void on_sched(uv_timer_t *t) { pump(t->data); }

static void start_measuring(replay *rp) {
    rp->measuring = true;
    rp->t_start = pt_now();
    pt_client_set_epoch(rp->cl, rp->t_start);
    pump(rp);
}

/* Sends what is due while slots are free; else sleeps until the next is due. */
static void pump(replay *rp) {
    const pt_replay_plan *p = rp->plan;
    if (rp->interrupted || rp->finished) return;
    if (!rp->measuring) {
        if (rp->in_flight == 0 && rp->next < p->n_warmup) send_one(rp, rp->next++);
        return;
    }
    size_t maxc = rp->o->max_concurrency;
    while (rp->next < p->n && (!maxc || rp->in_flight < maxc)) {
        double wait = p->reqs[rp->next].t - (pt_now() - rp->t_start);
        if (wait > 0.0005) {
            uv_timer_start(&rp->sched, on_sched, (uint64_t)(wait * 1000.0 + 0.5), 0);
            return;
        }
        send_one(rp, rp->next++);
    }
}

static void call_done(pt_client_call *call) {
    replay *rp = call->data;
    size_t i = (size_t)(call - rp->calls);
    /* The server's own count of the prompt, where it reports one: a text
     * prompt that did not tokenize as built shows up in the totals. */
    if (call->rec->ok && call->usage_prompt) call->rec->input_tokens = call->usage_prompt;
    free(rp->bodies[i]);
    rp->bodies[i] = NULL;
    free(call->resp_body);
    call->resp_body = NULL;
    rp->in_flight--;
    rp->n_done++;
    if (!call->rec->ok && !call->rec->warmup) rp->n_failed++;
    if (rp->interrupted) {
        if (rp->in_flight == 0) run_finish(rp);
        return;
    }
    if (rp->n_done == rp->plan->n) {
        run_finish(rp);
        return;
    }
    /* Starting the next request from inside a done callback is safe: the
     * client has already detached this call from its connection. */
    if (!rp->measuring && rp->n_done == rp->plan->n_warmup) start_measuring(rp);
    else pump(rp);
}

static void on_sigint(uv_signal_t *s, int signum) {
    replay *rp = s->data;
    if (rp->interrupted) return;
    rp->interrupted = true;
    if (rp->is_tty && rp->o->progress) fputc('\n', stderr);
    fprintf(stderr, "proteus bench: interrupted: %zu requests in flight cancelled, %zu never sent\n", rp->in_flight,
            rp->plan->n - rp->next);
    uv_timer_stop(&rp->sched);
    if (rp->in_flight == 0) run_finish(rp);
    else pt_client_cancel_all(rp->cl, "interrupted");
}

int pt_replay_run(const pt_replay_plan *plan, const pt_replay_run_opts *o, pt_bench_record *recs, size_t *n_recorded,
                  bool *interrupted, pt_err *err) {
    *n_recorded = 0;
    if (interrupted) *interrupted = false;
    if (!plan->n) return pt_err_set(err, PT_ERR_INVALID, "nothing to send");
    if (!o->pool || !o->n_pool) return pt_err_set(err, PT_ERR_INVALID, "no token pool for prompts");
    replay rp = {.plan = plan, .o = o, .recs = recs};
    uint32_t max_in = 0;
    for (size_t i = 0; i < plan->n; i++)
        if (plan->reqs[i].input_len > max_in) max_in = plan->reqs[i].input_len;
    cJSON *mj = cJSON_CreateString(o->model ? o->model : "");
    rp.model_json = mj ? cJSON_PrintUnformatted(mj) : NULL;
    cJSON_Delete(mj);
    rp.calls = calloc(plan->n, sizeof(*rp.calls));
    rp.bodies = calloc(plan->n, sizeof(*rp.bodies));
    rp.scratch = malloc((size_t)(max_in ? max_in : 1) * sizeof(int32_t));
    int rc = 0;
    if (!rp.model_json || !rp.calls || !rp.bodies || !rp.scratch) {
        rc = pt_err_set(err, PT_ERR_NOMEM, "out of memory for %zu requests", plan->n);
        goto out;
    }
    if (uv_loop_init(&rp.loop) != 0) {
        rc = pt_err_set(err, PT_ERR_IO, "cannot create an event loop");
        goto out;
    }
    if ((rc = pt_client_init(&rp.cl, &rp.loop, o->base_url, o->api_key, err)) != 0) {
        uv_loop_close(&rp.loop);
        goto out;
    }
    uv_timer_init(&rp.loop, &rp.sched);
    uv_timer_init(&rp.loop, &rp.progress);
    rp.sched.data = rp.progress.data = &rp;
    rp.is_tty = isatty(2);
    if (o->progress) uv_timer_start(&rp.progress, on_progress, 250, rp.is_tty ? 250 : 5000);
    if (o->handle_sigint && uv_signal_init(&rp.loop, &rp.sigint) == 0) {
        rp.sigint.data = &rp;
        rp.have_sigint = uv_signal_start(&rp.sigint, on_sigint, SIGINT) == 0;
        if (!rp.have_sigint) uv_close((uv_handle_t *)&rp.sigint, handle_closed);
    }
    /* The progress timer and signal handle must not keep the loop alive once
     * every request is done; run_finish closes them explicitly anyway. */
    if (plan->n_warmup) pump(&rp);
    else start_measuring(&rp);
    uv_run(&rp.loop, UV_RUN_DEFAULT);
    rc = uv_loop_close(&rp.loop);
    if (rc != 0) pt_log(PT_LOG_WARN, "bench: event loop closed with handles open (%s)", uv_strerror(rc));
    rc = 0;
    *n_recorded = rp.n_started;
    if (interrupted) *interrupted = rp.interrupted;
out:
    if (rp.bodies)
        for (size_t i = 0; i < plan->n; i++) free(rp.bodies[i]);
    free(rp.bodies);
    free(rp.calls);
    free(rp.scratch);
    free(rp.model_json);
    return rc;
}
