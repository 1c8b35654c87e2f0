/* Continuous batching: see include/proteus/batcher.h.
 *
 * Threads: submit/cancel/stats take `mu` and touch only `incoming`,
 * `cancels` and the stats snapshot; everything else (waiting queue, running
 * set, the engine) belongs to the batcher thread alone. */
#include "proteus/batcher.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "engine/batcher_internal.h"
#include "proteus/stop_matcher.h"

typedef enum { RQ_WAITING, RQ_PREFILL, RQ_DECODE } rq_state;

typedef struct req {
    uint64_t id;
    struct req *next;       /* incoming / waiting lists */
    rq_state state;
    int32_t *tokens;        /* (n_prompt + max_tokens) prompt, then generated */
    uint32_t n_prompt, n_gen, max_tokens;
    uint32_t n_cached;      /* tokens whose KV the engine holds */
    uint32_t n_target;      /* tokens to prefill before the next sample or decode */
    bool resume_decode;     /* after a recompute: feed the last generated token, don't sample */
    int seq;
    uint64_t admit_order;
    double t_admitted;
    pt_sampler sampler;
    pt_detok detok;
    pt_stop_matcher stop;
    bool ignore_eos;
    int top_logprobs;
    bool cache;             /* uses the prefix cache */
    uint64_t salt;
    pt_gen_cb cb;
    void *user;
    char *out;              /* text of the event being built */
    size_t out_len, out_cap;
} req;

struct pt_batcher {
    pt_engine *e;
    const pt_tokenizer *tok;
    pt_batcher_opts o;
    uint32_t V, max_ctx, page_size;
    bool publish_decoded; /* decode tokens' pages are cached too (dense attention) */
    _Atomic uint32_t kv_ctx;     /* tokens one sequence's pages can hold (<= max_ctx); grows after a merge */
    _Atomic uint32_t movable_ctx; /* preemption prefers requests of at most this many tokens; 0 = the newest */
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop;
    bool paused;      /* pt_batcher_pause */
    bool parked;      /* the thread is waiting at a step boundary while paused */
    bool stats_stale; /* pages changed under it (a transformation rolled back): refresh the snapshot */
    double parked_at; /* pt_now() when it parked */
    bool exited;      /* the thread has left its loop */
    pthread_cond_t parked_cv; /* parked changed, or a boundary job finished */
    struct boundary_job *job; /* pt_batcher_at_boundary: run by the thread at the next boundary */
    req *incoming, *incoming_tail;
    uint32_t n_incoming;
    uint64_t *cancels;
    size_t n_cancels, cap_cancels;
    bool cancel_all;
    pt_batcher_stats stats;
    /* Batcher thread only. */
    req *waiting;
    uint32_t n_waiting;
    req **running;
    uint32_t n_running;
    uint64_t admit_counter;
    float *logits;          /* (max_running, V) */
    pt_batch_entry *entries;
    req **entry_req;
    pt_sample_work work;
    char *piece;
    size_t piece_cap;
    pt_token_logprob top[PT_LOGPROBS_MAX];
};

/* Request ids are unique in the process, so that a request keeps its id
 * when a transformation hands it to another batcher. */
static _Atomic uint64_t next_request_id;

struct boundary_job {
    int (*fn)(void *arg, pt_err *err);
    void *arg;
    int rc;
    pt_err err;
    bool done;
};

/* ---- request lifetime ---- */

static void req_free(req *r) {
    if (!r) return;
    pt_sampler_free(&r->sampler);
    pt_stop_matcher_free(&r->stop);
    free(r->tokens);
    free(r->out);
    free(r);
}

/* False (the text so far kept) when out of memory: the caller ends the request with an error. */
static bool out_append(req *r, const char *s, size_t n) {
    if (n == 0) return true; /* s may be NULL then */
    if (r->out_len + n + 1 > r->out_cap) {
        size_t cap = (r->out_len + n + 1) * 2;
        char *grown = realloc(r->out, cap);
        if (!grown) return false;
        r->out = grown;
        r->out_cap = cap;
    }
    memcpy(r->out + r->out_len, s, n);
    r->out_len += n;
    r->out[r->out_len] = 0;
    return true;
}

static void emit(pt_batcher *b, req *r, int32_t token, float lp, size_t n_top, pt_finish_reason fin,
                 const char *error) {
    pt_gen_event ev = {r->id, r->out ? r->out : "", r->out_len, token, lp, n_top ? b->top : NULL, n_top, fin,
                       r->n_prompt, r->n_gen, r->t_admitted, error};
    r->cb(r->user, &ev);
    r->out_len = 0;
}

/* Ends a request: frees its pages and reports the reason. */
static void finish(pt_batcher *b, req *r, pt_finish_reason fin, const char *error) {
    if (r->seq >= 0) pt_engine_seq_free(b->e, r->seq);
    r->seq = -1;
    emit(b, r, -1, 0, 0, fin, error);
    req_free(r);
}

/* ---- public API (any thread) ---- */

int pt_batcher_submit(pt_batcher *b, const pt_gen_params *p, uint64_t *id, pt_err *err) {
    if (!p->cb || p->n_prompt == 0 || p->max_tokens == 0)
        return pt_err_set(err, PT_ERR_INVALID, "a request needs a prompt, max_tokens >= 1 and a callback");
    if (p->top_logprobs > PT_LOGPROBS_MAX)
        return pt_err_set(err, PT_ERR_INVALID, "top_logprobs must be at most %d", PT_LOGPROBS_MAX);
    if ((uint64_t)p->n_prompt + p->max_tokens > b->max_ctx)
        return pt_err_set(err, PT_ERR_INVALID,
                          "this model's maximum context length is %u tokens; the request has %zu prompt tokens and "
                          "max_tokens %u",
                          b->max_ctx, p->n_prompt, p->max_tokens);
    /* A request that the KV pages could not hold even alone would fail
     * only after its whole prefill: refused now. */
    uint32_t kv_ctx = atomic_load(&b->kv_ctx);
    if ((uint64_t)p->n_prompt + p->max_tokens > kv_ctx)
        return pt_err_set(err, PT_ERR_INVALID,
                          "this instance's KV cache holds at most %u tokens per sequence; the request has %zu "
                          "prompt tokens and max_tokens %u",
                          kv_ctx, p->n_prompt, p->max_tokens);
    for (size_t i = 0; i < p->n_prompt; i++)
        if (p->prompt[i] < 0 || (uint32_t)p->prompt[i] >= b->V)
            return pt_err_set(err, PT_ERR_INVALID, "prompt token %d is outside the vocabulary [0, %u)", p->prompt[i],
                              b->V);
    req *r = calloc(1, sizeof(*r));
    if (!r) return pt_err_set(err, PT_ERR_NOMEM, "out of memory");
    r->seq = -1;
    r->n_prompt = (uint32_t)p->n_prompt;
    r->max_tokens = p->max_tokens;
    r->n_target = r->n_prompt;
    r->ignore_eos = p->ignore_eos;
    r->top_logprobs = p->top_logprobs;
    r->cache = !p->no_prefix_cache;
    r->salt = pt_engine_prefix_salt(p->cache_salt);
    r->cb = p->cb;
    r->user = p->user;
    r->tokens = malloc(((size_t)p->n_prompt + p->max_tokens) * sizeof(int32_t));
    if (!r->tokens) {
        free(r);
        return pt_err_set(err, PT_ERR_NOMEM, "out of memory");
    }
    memcpy(r->tokens, p->prompt, p->n_prompt * sizeof(int32_t));
    int rc;
    if ((rc = pt_sampler_init(&r->sampler, &p->sampling, b->V, err))) {
        free(r->tokens);
        free(r);
        return rc;
    }
    if ((rc = pt_stop_matcher_init(&r->stop, p->stops, p->n_stops, p->include_stop, err))) {
        pt_sampler_free(&r->sampler);
        free(r->tokens);
        free(r);
        return rc;
    }
    if ((rc = pt_sampler_record_prompt(&r->sampler, r->tokens, r->n_prompt, err))) {
        req_free(r);
        return rc;
    }
    pt_detok_init(&r->detok, b->tok, true);

    pthread_mutex_lock(&b->mu);
    if (b->stop || b->n_incoming + b->stats.waiting >= b->o.max_waiting) {
        bool stopping = b->stop;
        pthread_mutex_unlock(&b->mu);
        req_free(r);
        return pt_err_set(err, PT_ERR_BUSY, stopping ? "the server is shutting down" : "too many requests waiting");
    }
    r->id = atomic_fetch_add(&next_request_id, 1) + 1;
    *id = r->id;
    if (b->incoming_tail) b->incoming_tail->next = r;
    else b->incoming = r;
    b->incoming_tail = r;
    b->n_incoming++;
    pthread_cond_signal(&b->cv);
    pthread_mutex_unlock(&b->mu);
    return PT_OK;
}

void pt_batcher_cancel(pt_batcher *b, uint64_t id) {
    pthread_mutex_lock(&b->mu);
    if (b->n_cancels == b->cap_cancels) {
        size_t cap = b->cap_cancels ? b->cap_cancels * 2 : 16;
        uint64_t *grown = realloc(b->cancels, cap * sizeof(uint64_t));
        if (!grown) {
            /* Not fatal: the request runs to its end instead. */
            pthread_mutex_unlock(&b->mu);
            pt_log(PT_LOG_ERROR, "out of memory queueing the cancellation of request %llu", (unsigned long long)id);
            return;
        }
        b->cancels = grown;
        b->cap_cancels = cap;
    }
    b->cancels[b->n_cancels++] = id;
    pthread_cond_signal(&b->cv);
    pthread_mutex_unlock(&b->mu);
}

void pt_batcher_cancel_all(pt_batcher *b) {
    pthread_mutex_lock(&b->mu);
    b->cancel_all = true;
    pthread_cond_signal(&b->cv);
    pthread_mutex_unlock(&b->mu);
}

void pt_batcher_get_stats(pt_batcher *b, pt_batcher_stats *s) {
    pthread_mutex_lock(&b->mu);
    *s = b->stats;
    s->waiting += b->n_incoming;
    pthread_mutex_unlock(&b->mu);
}

uint32_t pt_batcher_max_ctx(const pt_batcher *b) { return atomic_load(&((pt_batcher *)b)->kv_ctx); }

void pt_batcher_set_preempt_movable(pt_batcher *b, uint32_t max_tokens) { atomic_store(&b->movable_ctx, max_tokens); }

/* ---- batcher thread ---- */

static void update_stats(pt_batcher *b) {
    pthread_mutex_lock(&b->mu);
    b->stats.running = b->n_running;
    b->stats.waiting = b->n_waiting;
    b->stats.n_ranks = pt_engine_get_opts(b->e)->tp;
    for (int i = 0; i < b->stats.n_ranks && i < PT_BATCHER_MAX_RANKS; i++) {
        pt_engine_kv_pages(b->e, i, &b->stats.kv_pages_total[i], &b->stats.kv_pages_free[i]);
        pt_engine_device_name(b->e, i, b->stats.device[i], sizeof(b->stats.device[i]));
    }
    pt_engine_prefix_get_stats(b->e, &b->stats.prefix);
    pthread_mutex_unlock(&b->mu);
}

static void remove_running(pt_batcher *b, uint32_t i) {
    b->running[i] = b->running[--b->n_running];
}

/* Takes new submissions and cancellations under the lock; applies them. */
static void take_inbox(pt_batcher *b) {
    pthread_mutex_lock(&b->mu);
    req *in = b->incoming;
    b->incoming = b->incoming_tail = NULL;
    /* They stay counted against max_waiting until update_stats refreshes the snapshot. */
    b->stats.waiting += b->n_incoming;
    b->n_incoming = 0;
    uint64_t *cancels = b->cancels;
    size_t n_cancels = b->n_cancels;
    bool all = b->cancel_all || b->stop;
    b->cancels = NULL;
    b->n_cancels = b->cap_cancels = 0;
    b->cancel_all = false;
    pthread_mutex_unlock(&b->mu);

    /* Append to the waiting queue in arrival order. */
    req **tail = &b->waiting;
    while (*tail) tail = &(*tail)->next;
    *tail = in;
    for (req *r = in; r; r = r->next) b->n_waiting++;

    if (!all && n_cancels == 0) return;
    for (req **pp = &b->waiting; *pp;) {
        req *r = *pp;
        bool hit = all;
        for (size_t i = 0; i < n_cancels && !hit; i++) hit = cancels[i] == r->id;
        if (hit) {
            *pp = r->next;
            b->n_waiting--;
            finish(b, r, PT_FINISH_CANCELLED, NULL);
        } else {
            pp = &r->next;
        }
    }
    for (uint32_t i = 0; i < b->n_running;) {
        req *r = b->running[i];
        bool hit = all;
        for (size_t k = 0; k < n_cancels && !hit; k++) hit = cancels[k] == r->id;
        if (hit) {
            remove_running(b, i);
            finish(b, r, PT_FINISH_CANCELLED, NULL);
        } else {
            i++;
        }
    }
    free(cancels);
}

static uint64_t min_free_pages(pt_batcher *b) {
    uint64_t best = UINT64_MAX;
    for (int i = 0; i < pt_engine_get_opts(b->e)->tp; i++) {
        uint64_t t, f;
        pt_engine_kv_pages(b->e, i, &t, &f);
        best = f < best ? f : best;
    }
    return best;
}

/* Admits waiting requests in order while a sequence slot is free and the KV
 * pool can hold the prompt with one spare page per running sequence (so that
 * admitting does not immediately force a preemption). */
static void admit(pt_batcher *b) {
    const pt_model_config *c = pt_engine_config(b->e);
    int tp = pt_engine_get_opts(b->e)->tp;
    uint64_t heads_per_rank = (c->n_kv_heads + (uint32_t)tp - 1) / (uint32_t)tp;
    while (b->waiting && b->n_running < b->o.max_running) {
        req *r = b->waiting;
        uint64_t need = ((uint64_t)r->n_target + b->page_size) / b->page_size * heads_per_rank;
        if (b->n_running > 0 && need + b->n_running * heads_per_rank > min_free_pages(b)) break;
        int seq = pt_engine_seq_new(b->e);
        if (seq < 0) break;
        b->waiting = r->next;
        b->n_waiting--;
        r->next = NULL;
        r->seq = seq;
        r->n_cached = r->cache ? pt_engine_seq_prefix_reuse(b->e, seq, r->tokens, r->n_target, r->salt) : 0;
        r->state = RQ_PREFILL;
        r->admit_order = ++b->admit_counter;
        if (r->t_admitted == 0) r->t_admitted = pt_now();
        b->running[b->n_running++] = r;
    }
}

/* The most recently admitted running request. */
static uint32_t newest_running(const pt_batcher *b) {
    uint32_t v = 0;
    for (uint32_t i = 1; i < b->n_running; i++)
        if (b->running[i]->admit_order > b->running[v]->admit_order) v = i;
    return v;
}

/* The preemption victim (the scheduler's rule, scheduler.h pt_sched_victim):
 * the most recently admitted running request, or on a merged instance the
 * most recently admitted of those a smaller instance could serve (at most
 * movable_ctx tokens) when there is one: they can run anywhere, the long
 * ones only here. -1 when none. */
static int victim(const pt_batcher *b, bool *movable) {
    uint32_t lim = atomic_load(&((pt_batcher *)b)->movable_ctx);
    int m = -1;
    for (uint32_t i = 0; lim && i < b->n_running; i++) {
        const req *r = b->running[i];
        if ((uint64_t)r->n_prompt + r->max_tokens <= lim && (m < 0 || r->admit_order > b->running[m]->admit_order))
            m = (int)i;
    }
    *movable = m >= 0;
    return m >= 0 ? m : b->n_running ? (int)newest_running(b) : -1;
}

/* Frees a request's pages and queues it first, to be recomputed from its
 * prompt and generated tokens. */
static void requeue(pt_batcher *b, req *r, bool movable) {
    pt_engine_seq_free(b->e, r->seq);
    r->seq = -1;
    r->n_cached = 0;
    r->state = RQ_WAITING;
    if (r->n_gen > 0) {
        r->n_target = r->n_prompt + r->n_gen - 1;
        r->resume_decode = true;
    }
    r->next = b->waiting;
    b->waiting = r;
    b->n_waiting++;
    pthread_mutex_lock(&b->mu);
    b->stats.preemptions++;
    b->stats.preemptions_movable += movable;
    pthread_mutex_unlock(&b->mu);
}

static void preempt_at(pt_batcher *b, uint32_t v, bool movable) {
    req *r = b->running[v];
    remove_running(b, v);
    requeue(b, r, movable);
}

static bool preempt_one(pt_batcher *b) {
    if (b->n_running <= 1) return false;
    bool movable = false;
    int v = victim(b, &movable);
    preempt_at(b, (uint32_t)v, movable);
    return true;
}

/* Fills the step: every decode first (one token each), then prompt chunks in
 * admission order under the token budget. Returns the number of entries. */
static size_t build_step(pt_batcher *b) {
    size_t n = 0;
    uint32_t budget = b->o.max_batch_tokens;
    for (uint32_t i = 0; i < b->n_running && budget > 0; i++) {
        req *r = b->running[i];
        if (r->state != RQ_DECODE) continue;
        b->entries[n] =
            (pt_batch_entry){r->seq, &r->tokens[r->n_prompt + r->n_gen - 1], 1, b->logits + n * b->V, false, false};
        b->entry_req[n++] = r;
        budget--;
    }
    /* Prefill in admission order so that the oldest prompt finishes first. */
    for (;;) {
        req *best = NULL;
        for (uint32_t i = 0; i < b->n_running; i++) {
            req *r = b->running[i];
            bool taken = false;
            for (size_t k = 0; k < n && !taken; k++) taken = b->entry_req[k] == r;
            if (r->state == RQ_PREFILL && !taken && (!best || r->admit_order < best->admit_order)) best = r;
        }
        if (!best || budget == 0) break;
        uint32_t m = best->n_target - best->n_cached;
        if (m > b->o.prefill_chunk) m = b->o.prefill_chunk;
        if (m > budget) m = budget;
        bool last = best->n_cached + m == best->n_target;
        b->entries[n] = (pt_batch_entry){best->seq, best->tokens + best->n_cached, m,
                                          last && !best->resume_decode ? b->logits + n * b->V : NULL, false, true};
        b->entry_req[n++] = best;
        budget -= m;
    }
    return n;
}

/* Samples the next token of r from its logits and reports it. Returns true
 * when the request finished (and was freed). */
static bool sample_and_emit(pt_batcher *b, req *r, const float *logits) {
    int32_t tok = pt_sampler_sample(&r->sampler, logits, &b->work);
    if (tok < 0) {
        finish(b, r, PT_FINISH_ERROR, "no token has a finite logit");
        return true;
    }
    float lp = 0;
    size_t n_top = 0;
    if (r->top_logprobs >= 0) {
        n_top = (size_t)r->top_logprobs;
        if (pt_logprobs_compute(logits, b->V, tok, n_top, &lp, b->top) != 0) n_top = 0;
    }
    r->tokens[r->n_prompt + r->n_gen++] = tok;
    pt_stop_result sr;
    pt_finish_reason fin = PT_FINISH_NONE;
    /* Out of memory in the sampler's penalty counts, the stop matcher or the
     * text: the request ends with an error rather than go on without them. */
    bool text_ok = true;
    if (!r->ignore_eos && pt_tokenizer_is_eog(b->tok, tok)) {
        fin = PT_FINISH_STOP;
    } else {
        text_ok = pt_sampler_accept(&r->sampler, tok, NULL) == PT_OK;
        size_t len = pt_detok_push(&r->detok, tok, b->piece, b->piece_cap);
        text_ok = text_ok && pt_stop_matcher_feed(&r->stop, b->piece, len, &sr, NULL) == PT_OK &&
                  out_append(r, sr.text, sr.len);
        if (text_ok && sr.stop >= 0) fin = PT_FINISH_STOP;
        else if (r->n_gen == r->max_tokens) fin = PT_FINISH_LENGTH;
    }
    if (text_ok && fin != PT_FINISH_NONE && r->stop.stop < 0) {
        /* Release what was held back: a partial character, a stop prefix. */
        size_t len = pt_detok_flush(&r->detok, b->piece, b->piece_cap);
        text_ok = pt_stop_matcher_feed(&r->stop, b->piece, len, &sr, NULL) == PT_OK && out_append(r, sr.text, sr.len);
        if (text_ok && sr.stop < 0) {
            pt_stop_matcher_flush(&r->stop, &sr);
            text_ok &= out_append(r, sr.text, sr.len);
        } else if (text_ok) {
            fin = PT_FINISH_STOP;
        }
    }
    if (fin == PT_FINISH_NONE && text_ok) {
        emit(b, r, tok, lp, n_top, PT_FINISH_NONE, NULL);
        return false;
    }
    if (!text_ok) fin = PT_FINISH_ERROR;
    /* The last token and the finish reason travel in one event. */
    pt_engine_seq_free(b->e, r->seq);
    r->seq = -1;
    emit(b, r, tok, lp, n_top, fin, text_ok ? NULL : "out of memory (sampler penalties, stop strings or the text)");
    req_free(r);
    return true;
}

static void run_iteration(pt_batcher *b) {
    size_t n;
    pt_err err = {{0}};
    for (;;) {
        n = build_step(b);
        if (n == 0) return;
        int rc = pt_engine_step(b->e, b->entries, n, &err);
        if (rc == PT_OK) break;
        if (rc == PT_ERR_NOMEM && preempt_one(b)) continue;
        /* Nothing left to preempt (or another failure): fail the step's requests. */
        for (size_t i = 0; i < n; i++) {
            req *r = b->entry_req[i];
            for (uint32_t k = 0; k < b->n_running; k++)
                if (b->running[k] == r) {
                    remove_running(b, k);
                    break;
                }
            finish(b, r, PT_FINISH_ERROR, rc == PT_ERR_NOMEM ? "the KV cache cannot hold this request" : err.msg);
        }
        return;
    }
    pthread_mutex_lock(&b->mu);
    b->stats.steps++;
    pthread_mutex_unlock(&b->mu);
    for (size_t i = 0; i < n; i++) {
        req *r = b->entry_req[i];
        const pt_batch_entry *en = &b->entries[i];
        r->n_cached += en->n_tokens;
        if (r->cache) {
            uint32_t publish = r->n_cached;
            if (!b->publish_decoded && publish > r->n_target) publish = r->n_target;
            pt_engine_seq_prefix_publish(b->e, r->seq, r->tokens, publish);
        }
        bool done = false;
        if (r->state == RQ_PREFILL) {
            if (r->n_cached < r->n_target) continue;
            r->state = RQ_DECODE;
            if (r->resume_decode) {
                r->resume_decode = false; /* the next step feeds the last generated token */
                continue;
            }
        }
        done = sample_and_emit(b, r, en->logits);
        if (done)
            for (uint32_t k = 0; k < b->n_running; k++)
                if (b->running[k] == r) {
                    remove_running(b, k);
                    break;
                }
    }
}

/* Waits (mu held) until there is work, a boundary job or a stop; marks the
 * thread parked while it waits paused. */
static void wait_for_work(pt_batcher *b) {
    for (;;) {
        bool idle = !b->incoming && !b->n_cancels && !b->cancel_all && b->n_running == 0 && !b->waiting;
        if (b->stop || b->job || b->stats_stale || (!b->paused && !idle)) break;
        if (b->paused && !b->parked) {
            b->parked = true;
            b->parked_at = pt_now();
            pthread_cond_broadcast(&b->parked_cv);
        }
        pthread_cond_wait(&b->cv, &b->mu);
    }
    if (!b->paused) b->parked = false;
}

static void run_job(pt_batcher *b, struct boundary_job *job) {
    job->rc = job->fn(job->arg, &job->err);
    update_stats(b); /* the job may have taken pages */
    pthread_mutex_lock(&b->mu);
    job->done = true;
    pthread_cond_broadcast(&b->parked_cv);
    pthread_mutex_unlock(&b->mu);
}

static void *batcher_main(void *arg) {
    pt_batcher *b = arg;
    for (;;) {
        pthread_mutex_lock(&b->mu);
        wait_for_work(b);
        struct boundary_job *job = b->job;
        b->job = NULL;
        bool stop = b->stop, refresh = b->stats_stale;
        b->stats_stale = false;
        pthread_mutex_unlock(&b->mu);
        if (refresh) update_stats(b);
        if (job) {
            run_job(b, job);
            continue;
        }
        take_inbox(b);
        if (stop) break;
        admit(b);
        run_iteration(b);
        update_stats(b);
    }
    update_stats(b);
    pthread_mutex_lock(&b->mu);
    b->exited = true;
    pthread_cond_broadcast(&b->parked_cv);
    pthread_mutex_unlock(&b->mu);
    return NULL;
}

int pt_batcher_create(pt_batcher **out, pt_engine *e, const pt_tokenizer *tok, const pt_batcher_opts *o, pt_err *err) {
    *out = NULL;
    const pt_engine_opts *eo = pt_engine_get_opts(e);
    pt_batcher *b = calloc(1, sizeof(*b));
    if (!b) return pt_err_set(err, PT_ERR_NOMEM, "out of memory for a batcher");
    b->e = e;
    b->tok = tok;
    b->o = *o;
    if (b->o.max_running == 0 || b->o.max_running > eo->max_seqs) b->o.max_running = eo->max_seqs;
    if (b->o.max_batch_tokens == 0 || b->o.max_batch_tokens > eo->max_batch_tokens)
        b->o.max_batch_tokens = eo->max_batch_tokens;
    if (b->o.max_batch_tokens < b->o.max_running) b->o.max_running = b->o.max_batch_tokens;
    if (b->o.prefill_chunk == 0) b->o.prefill_chunk = b->o.max_batch_tokens;
    if (b->o.max_waiting == 0) b->o.max_waiting = 256;
    b->V = pt_engine_config(e)->vocab_size;
    b->max_ctx = eo->max_ctx;
    atomic_init(&b->kv_ctx, pt_engine_seq_capacity(e));
    b->page_size = eo->page_size;
    b->publish_decoded = eo->select_budget == 0;
    b->running = calloc(b->o.max_running, sizeof(req *));
    b->entries = calloc(b->o.max_running, sizeof(pt_batch_entry));
    b->entry_req = calloc(b->o.max_running, sizeof(req *));
    b->logits = malloc((size_t)b->o.max_running * b->V * sizeof(float));
    b->piece_cap = pt_tokenizer_max_piece(tok) * 3 + 16;
    b->piece = malloc(b->piece_cap);
    int rc;
    if (!b->running || !b->entries || !b->entry_req || !b->logits || !b->piece) {
        rc = pt_err_set(err, PT_ERR_NOMEM, "out of memory for a batcher of %u sequences", b->o.max_running);
        goto fail;
    }
    if ((rc = pt_sample_work_init(&b->work, b->V, err))) goto fail;
    if (pthread_mutex_init(&b->mu, NULL) != 0) {
        pt_sample_work_free(&b->work);
        rc = pt_err_set(err, PT_ERR_NOMEM, "cannot create the batcher's mutex");
        goto fail;
    }
    if (pthread_cond_init(&b->cv, NULL) != 0 || pthread_cond_init(&b->parked_cv, NULL) != 0) {
        pt_sample_work_free(&b->work);
        pthread_mutex_destroy(&b->mu);
        pthread_cond_destroy(&b->cv);
        rc = pt_err_set(err, PT_ERR_NOMEM, "cannot create the batcher's condition variables");
        goto fail;
    }
    update_stats(b);
    if (pthread_create(&b->thread, NULL, batcher_main, b) != 0) {
        pt_sample_work_free(&b->work);
        pthread_mutex_destroy(&b->mu);
        pthread_cond_destroy(&b->cv);
        pthread_cond_destroy(&b->parked_cv);
        rc = pt_err_set(err, PT_ERR_NOMEM, "cannot start the batcher thread");
        goto fail;
    }
    *out = b;
    return PT_OK;
fail:
    free(b->running);
    free(b->entries);
    free(b->entry_req);
    free(b->logits);
    free(b->piece);
    free(b);
    return rc;
}

void pt_batcher_pause(pt_batcher *b, bool paused) {
    pthread_mutex_lock(&b->mu);
    b->paused = paused;
    pthread_cond_signal(&b->cv);
    pthread_mutex_unlock(&b->mu);
}

void pt_batcher_free(pt_batcher *b) {
    if (!b) return;
    pthread_mutex_lock(&b->mu);
    b->stop = true;
    pthread_cond_signal(&b->cv);
    pthread_mutex_unlock(&b->mu);
    pthread_join(b->thread, NULL);
    /* The thread cancelled everything it knew; requests that arrived after
     * its last look at the inbox are cancelled here. */
    take_inbox(b);
    pt_sample_work_free(&b->work);
    pthread_mutex_destroy(&b->mu);
    pthread_cond_destroy(&b->cv);
    pthread_cond_destroy(&b->parked_cv);
    free(b->cancels);
    free(b->running);
    free(b->entries);
    free(b->entry_req);
    free(b->logits);
    free(b->piece);
    free(b);
}

/* ---- a live transformation's access (engine/batcher_internal.h) ---- */

int pt_batcher_at_boundary(pt_batcher *b, int (*fn)(void *arg, pt_err *err), void *arg, pt_err *err) {
    struct boundary_job job = {fn, arg, PT_OK, {{0}}, false};
    pthread_mutex_lock(&b->mu);
    while (b->job && !b->exited) pthread_cond_wait(&b->parked_cv, &b->mu);
    if (b->exited || b->stop) {
        pthread_mutex_unlock(&b->mu);
        return pt_err_set(err, PT_ERR_INVALID, "the batcher is stopping");
    }
    b->job = &job;
    pthread_cond_signal(&b->cv);
    while (!job.done) pthread_cond_wait(&b->parked_cv, &b->mu);
    pthread_mutex_unlock(&b->mu);
    if (job.rc && err) *err = job.err;
    return job.rc;
}

double pt_batcher_park(pt_batcher *b) {
    pthread_mutex_lock(&b->mu);
    b->paused = true;
    pthread_cond_signal(&b->cv);
    while (!b->parked && !b->exited) pthread_cond_wait(&b->parked_cv, &b->mu);
    double at = b->parked ? b->parked_at : pt_now();
    pthread_mutex_unlock(&b->mu);
    return at;
}

void pt_batcher_unpark(pt_batcher *b) {
    pthread_mutex_lock(&b->mu);
    b->paused = false;
    b->stats_stale = true; /* a rolled-back transformation gave pages back while it stood */
    pthread_cond_signal(&b->cv);
    pthread_mutex_unlock(&b->mu);
}

uint32_t pt_batcher_n_requests(pt_batcher *b) {
    pthread_mutex_lock(&b->mu);
    uint32_t n = b->n_incoming;
    pthread_mutex_unlock(&b->mu);
    return n + b->n_running + b->n_waiting;
}

uint32_t pt_batcher_running_seqs(const pt_batcher *b, int *seqs, uint32_t cap) {
    uint32_t n = 0;
    for (uint32_t i = 0; i < b->n_running && n < cap; i++) seqs[n++] = b->running[i]->seq;
    return n;
}

void pt_batcher_preempt(pt_batcher *b, uint32_t n) {
    for (uint32_t i = 0; i < n && b->n_running > 0; i++) preempt_at(b, newest_running(b), false);
}

uint32_t pt_batcher_capacity(const pt_batcher *b) { return b->o.max_running; }
uint32_t pt_batcher_n_running(const pt_batcher *b) { return b->n_running; }

/* The target with the fewest requests, running and waiting. */
static int least_loaded(pt_batcher *const *dst, int n_dst) {
    int best = 0;
    for (int k = 1; k < n_dst; k++)
        if (dst[k]->n_running + dst[k]->n_waiting < dst[best]->n_running + dst[best]->n_waiting) best = k;
    return best;
}

static void append_waiting(pt_batcher *b, req *r) {
    req **tail = &b->waiting;
    while (*tail) tail = &(*tail)->next;
    r->next = NULL;
    *tail = r;
    b->n_waiting++;
}

void pt_batcher_hand_over(pt_batcher *src, pt_batcher *const *dst, int n_dst, pt_batcher_route_fn route,
                          pt_batcher_moved_fn moved, void *arg) {
    pthread_mutex_lock(&src->mu);
    req *in = src->incoming;
    src->incoming = src->incoming_tail = NULL;
    src->n_incoming = 0;
    uint64_t *cancels = src->cancels;
    size_t n_cancels = src->n_cancels;
    bool all = src->cancel_all;
    src->cancels = NULL;
    src->n_cancels = src->cap_cancels = 0;
    src->cancel_all = false;
    pthread_mutex_unlock(&src->mu);

    for (uint32_t i = 0; i < src->n_running; i++) {
        req *r = src->running[i];
        int k, seq;
        route(arg, r->seq, &k, &seq);
        r->seq = seq;
        if (r->admit_order > dst[k]->admit_counter) dst[k]->admit_counter = r->admit_order;
        moved(arg, r->id, k);
        /* A target that runs fewer requests than its engine holds
         * sequences: the rest wait there, recomputed when admitted. */
        if (dst[k]->n_running == dst[k]->o.max_running) requeue(dst[k], r, false);
        else dst[k]->running[dst[k]->n_running++] = r;
    }
    src->n_running = 0;
    req *queue[2] = {src->waiting, in};
    src->waiting = NULL;
    src->n_waiting = 0;
    for (int q = 0; q < 2; q++)
        for (req *r = queue[q], *next; r; r = next) {
            next = r->next;
            int k = least_loaded(dst, n_dst);
            append_waiting(dst[k], r);
            moved(arg, r->id, k);
        }
    for (int k = 0; k < n_dst; k++) {
        for (size_t i = 0; i < n_cancels; i++) pt_batcher_cancel(dst[k], cancels[i]);
        if (all) pt_batcher_cancel_all(dst[k]);
        update_stats(dst[k]);
    }
    free(cancels);
    update_stats(src);
}

void pt_batcher_refresh_capacity(pt_batcher *b) { atomic_store(&b->kv_ctx, pt_engine_seq_capacity(b->e)); }
