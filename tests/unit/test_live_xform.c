/* Live transformations of running batchers (src/xform/live.h): requests
 * of mixed prompt and output lengths (32 in flight at every
 * transformation), greedy and seeded, some cancelled
 * while their instance is being transformed, served while a seeded
 * schedule merges and splits instances over four CPU devices (at least 20
 * transformations that move running requests). Every request's tokens are
 * those of the same request served by one instance with no transformation;
 * none fails; at the end every page is free and every device holds what it
 * held at the start. A failure injected at each stage rolls back with the
 * requests going on. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/batcher_internal.h"
#include "proteus/batcher.h"
#include "test.h"
#include "xform/live.h"

#define MODEL "synthetic:tiny-gqa"
enum { MAX_REQ = 200, MAX_GEN = 120, N_DEV = 4, MIN_XFORMS = 20, IN_FLIGHT = 32 };

typedef struct {
    pthread_mutex_t mu;
    int32_t tokens[MAX_GEN];
    int n;
    pt_finish_reason fin;
    bool done;
} sink;

static void on_event(void *user, const pt_gen_event *ev) {
    sink *s = user;
    pthread_mutex_lock(&s->mu);
    if (ev->token >= 0 && s->n < MAX_GEN) s->tokens[s->n++] = ev->token;
    if (ev->finish != PT_FINISH_NONE) {
        s->fin = ev->finish;
        s->done = true;
    }
    pthread_mutex_unlock(&s->mu);
}

static bool sink_done(sink *s) {
    pthread_mutex_lock(&s->mu);
    bool d = s->done;
    pthread_mutex_unlock(&s->mu);
    return d;
}

/* Request i: its prompt, its length, its sampling. */
typedef struct {
    int32_t prompt[64];
    uint32_t n_prompt, max_tokens;
    bool seeded;
} request;

static void request_of(request *r, int i) {
    r->n_prompt = 5 + (uint32_t)(i * 13) % 56;
    r->max_tokens = 30 + (uint32_t)(i * 37) % (MAX_GEN - 30);
    r->seeded = i % 2 == 1;
    for (uint32_t k = 0; k < r->n_prompt; k++) r->prompt[k] = (int32_t)((i * 131 + k * 17 + 3) % 256);
}

static int submit(pt_batcher *b, const request *r, int i, sink *s, uint64_t *id) {
    pt_gen_params p = {.prompt = r->prompt, .n_prompt = r->n_prompt, .max_tokens = r->max_tokens,
                       .ignore_eos = true, .top_logprobs = -1, .cb = on_event, .user = s};
    pt_sampler_params_default(&p.sampling);
    if (r->seeded) {
        p.sampling.temperature = 0.9f;
        p.sampling.top_p = 0.95f;
        p.sampling.seed = 1000u + (uint64_t)i;
    }
    pt_err err = {{0}};
    int rc = pt_batcher_submit(b, &p, id, &err);
    CHECK_MSG(rc == 0, "%s", err.msg);
    return rc;
}

static pt_engine_opts opts(void) {
    pt_engine_opts o;
    pt_engine_opts_default(&o);
    o.max_ctx = 192;
    o.max_seqs = 16;
    o.max_batch_tokens = 96;
    o.page_size = 4;
    return o;
}

static const pt_batcher_opts batcher_opts = {.max_running = 16, .max_waiting = 128, .max_batch_tokens = 96,
                                             .prefill_chunk = 11};

static pt_fabric *fabric_of(int n) {
    pt_device_spec specs[N_DEV];
    for (int i = 0; i < n; i++) specs[i] = (pt_device_spec){PT_DEVICE_CPU, 1, 0, 0};
    int allowed[] = {1, 2, 4};
    pt_fabric *f = NULL;
    pt_err err = {{0}};
    CHECK_MSG(pt_fabric_create(&f, specs, n, allowed, 3, &err) == 0, "%s", err.msg);
    return f;
}

/* The layout being served: instances in device order. */
typedef struct {
    pt_live_instance inst[N_DEV];
    int first[N_DEV], tp[N_DEV];
    int n;
} layout;

static void open_instance(layout *l, int at, const pt_model_file *mf, pt_fabric *f, const pt_tokenizer *tok,
                          int first, int tp, const pt_batcher_opts *bo) {
    pt_engine_opts o = opts();
    pt_err err = {{0}};
    CHECK_MSG(pt_engine_create_on(&l->inst[at].engine, mf, f, first, tp, &o, &err) == 0, "%s", err.msg);
    CHECK_MSG(pt_batcher_create(&l->inst[at].batcher, l->inst[at].engine, tok, bo, &err) == 0, "%s", err.msg);
    l->first[at] = first;
    l->tp[at] = tp;
}

static void close_layout(layout *l) {
    for (int i = 0; i < l->n; i++) {
        pt_batcher_free(l->inst[i].batcher);
        pt_engine_free(l->inst[i].engine);
    }
    l->n = 0;
}

/* Tokens of requests [0, n) served by one instance, untransformed. */
static void reference(const pt_model_file *mf, const pt_tokenizer *tok, sink *ref, int n) {
    pt_fabric *f = fabric_of(1);
    layout l = {.n = 1};
    pt_batcher_opts bo = batcher_opts;
    bo.max_waiting = MAX_REQ; /* every request queued at once */
    open_instance(&l, 0, mf, f, tok, 0, 1, &bo);
    pt_batcher_pause(l.inst[0].batcher, true);
    for (int i = 0; i < n; i++) {
        request r;
        request_of(&r, i);
        pthread_mutex_init(&ref[i].mu, NULL);
        uint64_t id;
        if (submit(l.inst[0].batcher, &r, i, &ref[i], &id)) ref[i].done = true; /* reported by submit */
    }
    pt_batcher_pause(l.inst[0].batcher, false);
    for (int i = 0; i < n; i++)
        while (!sink_done(&ref[i])) usleep(1000);
    close_layout(&l);
    pt_fabric_free(f);
}

/* xorshift64*: the schedule's dice. */
static uint64_t roll(uint64_t *s) {
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ull;
}

/* A random transformation of the layout: merge two adjacent aligned
 * instances of equal TP, or split one in halves. Sources [*a, *b). */
static void pick_op(const layout *l, uint64_t *rng, int *a, int *b, pt_xform_group *dst, int *n_dst) {
    int cand[2 * N_DEV][2], n = 0;
    for (int i = 0; i < l->n; i++) {
        if (i + 1 < l->n && l->tp[i] == l->tp[i + 1] && l->first[i] % (2 * l->tp[i]) == 0 && 2 * l->tp[i] <= N_DEV)
            cand[n][0] = i, cand[n++][1] = 2;
        if (l->tp[i] > 1) cand[n][0] = i, cand[n++][1] = 1;
    }
    int k = (int)(roll(rng) % (uint64_t)n);
    *a = cand[k][0];
    if (cand[k][1] == 2) {
        *b = *a + 2;
        dst[0] = (pt_xform_group){l->first[*a], 2 * l->tp[*a]};
        *n_dst = 1;
    } else {
        *b = *a + 1;
        int h = l->tp[*a] / 2;
        dst[0] = (pt_xform_group){l->first[*a], h};
        dst[1] = (pt_xform_group){l->first[*a] + h, h};
        *n_dst = 2;
    }
}

typedef struct {
    sink sinks[MAX_REQ];
    uint64_t ids[MAX_REQ];
    pt_batcher *at[MAX_REQ]; /* the batcher holding request i (NULL once it cannot matter) */
    bool cancelled[MAX_REQ];
    int n;
} requests;

/* Replaces sources [a, b) of the layout by the targets of x, and points
 * every request to its new batcher. */
static void adopt(layout *l, requests *rq, pt_live_xform *x, int a, int b, const pt_xform_group *dst, int n_dst) {
    pt_live_instance old[N_DEV];
    for (int i = a; i < b; i++) old[i - a] = l->inst[i];
    for (int i = 0; i < rq->n; i++)
        for (int s = 0; s < b - a; s++)
            if (rq->at[i] == old[s].batcher) {
                int d = pt_live_xform_where(x, rq->ids[i]);
                rq->at[i] = d >= 0 ? pt_live_xform_target(x, d).batcher : NULL;
                break;
            }
    layout nl = {.n = 0};
    for (int i = 0; i < a; i++) nl.inst[nl.n] = l->inst[i], nl.first[nl.n] = l->first[i], nl.tp[nl.n++] = l->tp[i];
    for (int k = 0; k < n_dst; k++)
        nl.inst[nl.n] = pt_live_xform_target(x, k), nl.first[nl.n] = dst[k].first, nl.tp[nl.n++] = dst[k].tp;
    for (int i = b; i < l->n; i++) nl.inst[nl.n] = l->inst[i], nl.first[nl.n] = l->first[i], nl.tp[nl.n++] = l->tp[i];
    *l = nl;
}

/* One transformation: start, (a cancellation while it runs), pre-copy,
 * commit, adopt. Returns the requests it moved, or -1 when it failed (the
 * layout unchanged). */
static int transform(layout *l, requests *rq, const pt_tokenizer *tok, int a, int b, const pt_xform_group *dst,
                     int n_dst, int cancel, pt_xform_fail fail) {
    pt_live_xform *x = NULL;
    pt_err err = {{0}};
    if (pt_live_xform_start(&x, &l->inst[a], b - a, dst, n_dst, tok, &batcher_opts, &err)) {
        CHECK_MSG(0, "start: %s", err.msg);
        for (int i = 0; i < l->n; i++) pt_batcher_pause(l->inst[i].batcher, false);
        return -1;
    }
    pt_live_xform_fail_at(x, fail);
    /* The requests just queued start now, with the transformation under way. */
    for (int i = 0; i < l->n; i++) pt_batcher_pause(l->inst[i].batcher, false);
    if (cancel >= 0 && rq->at[cancel]) {
        pt_batcher_cancel(rq->at[cancel], rq->ids[cancel]);
        rq->cancelled[cancel] = true;
    }
    int rc = pt_live_xform_precopy(x, &err);
    if (!rc) rc = pt_live_xform_commit(x, &err);
    if (rc) {
        CHECK_MSG(fail != PT_XFORM_FAIL_NONE, "%s", err.msg);
        pt_live_xform_free(x, NULL);
        return -1;
    }
    CHECK_MSG(fail == PT_XFORM_FAIL_NONE, "failure %d was not reported", (int)fail);
    adopt(l, rq, x, a, b, dst, n_dst);
    pt_live_xform_stats st;
    pt_live_xform_free(x, &st);
    CHECK(st.pause_s >= 0 && st.xf.seqs_moved <= st.requests_moved);
    return (int)st.requests_moved;
}

static int in_flight(requests *rq) {
    int n = 0;
    for (int i = 0; i < rq->n; i++) n += !sink_done(&rq->sinks[i]);
    return n;
}

/* Submits request i to the least loaded instance. */
static void submit_next(layout *l, requests *rq) {
    int i = rq->n++, best = 0;
    pthread_mutex_init(&rq->sinks[i].mu, NULL);
    for (int k = 1; k < l->n; k++) {
        pt_batcher_stats a, b;
        pt_batcher_get_stats(l->inst[k].batcher, &a);
        pt_batcher_get_stats(l->inst[best].batcher, &b);
        if (a.running + a.waiting < b.running + b.waiting) best = k;
    }
    request r;
    request_of(&r, i);
    rq->at[i] = l->inst[best].batcher;
    submit(rq->at[i], &r, i, &rq->sinks[i], &rq->ids[i]);
}

static void check_pages_free(const layout *l) {
    for (int i = 0; i < l->n; i++)
        for (int r = 0; r < pt_engine_tp(l->inst[i].engine); r++) {
            uint64_t total, free_pages;
            pt_engine_kv_pages(l->inst[i].engine, r, &total, &free_pages);
            CHECK_MSG(total == free_pages, "instance %d rank %d: %llu of %llu pages free", i, r,
                      (unsigned long long)free_pages, (unsigned long long)total);
        }
}

static void test_transformations_lose_nothing(void) {
    pt_model_file mf;
    pt_tokenizer *tok = NULL;
    pt_err err = {{0}};
    if (pt_model_file_open(&mf, MODEL, &err) || pt_tokenizer_load(&tok, &mf, &err)) {
        CHECK_MSG(0, "%s", err.msg);
        return;
    }
    pt_fabric *f = fabric_of(N_DEV);
    layout l = {.n = N_DEV};
    for (int i = 0; i < N_DEV; i++) open_instance(&l, i, &mf, f, tok, i, 1, &batcher_opts);
    uint64_t start_used[N_DEV][PT_MEM_CLASS_COUNT];
    for (int d = 0; d < N_DEV; d++)
        for (int c = 0; c < PT_MEM_CLASS_COUNT; c++) start_used[d][c] = pt_device_used(pt_fabric_device(f, d), c);

    static requests rq;
    memset(&rq, 0, sizeof rq);
    uint64_t rng = 0x9e3779b97f4a7c15ull;
    int moving = 0, total = 0, n_cancel_asked = 0;
    const pt_xform_fail fails[] = {PT_XFORM_FAIL_PRECOPY_ALLOC, PT_XFORM_FAIL_PRECOPY_COMM,
                                   PT_XFORM_FAIL_COMMIT_ALLOC, PT_XFORM_FAIL_COMMIT_COMM};
    while (moving < MIN_XFORMS && rq.n < MAX_REQ) {
        /* Queued with every instance held, so that the transformation
         * finds them in flight however fast the model is. */
        for (int i = 0; i < l.n; i++) pt_batcher_pause(l.inst[i].batcher, true);
        while (in_flight(&rq) < IN_FLIGHT && rq.n < MAX_REQ) submit_next(&l, &rq);
        int a, b, n_dst;
        pt_xform_group dst[2];
        pick_op(&l, &rng, &a, &b, dst, &n_dst);
        /* Every fifth transformation fails at a stage and rolls back; every
         * third cancels a request of a random number while it runs. */
        pt_xform_fail fail = total % 5 == 4 ? fails[(total / 5) % 4] : PT_XFORM_FAIL_NONE;
        int cancel = -1;
        if (total % 3 == 2) /* a request still in flight, the one the dice name */
            for (int k = 0, skip = (int)(roll(&rng) % IN_FLIGHT); k < rq.n && cancel < 0; k++)
                if (!sink_done(&rq.sinks[k]) && skip-- == 0) cancel = k;
        n_cancel_asked += cancel >= 0;
        int moved = transform(&l, &rq, tok, a, b, dst, n_dst, cancel, fail);
        total++;
        if (moved > 0) moving++;
    }
    CHECK_MSG(moving >= MIN_XFORMS, "only %d transformations moved requests (%d requests)", moving, rq.n);
    CHECK_MSG(n_cancel_asked > 0, "no cancellation was asked mid-move");
    for (int i = 0; i < rq.n; i++) {
        /* Bounded: a request lost in a move would hang here. */
        for (int ms = 0; !sink_done(&rq.sinks[i]) && ms < 120000; ms++) usleep(1000);
        if (!sink_done(&rq.sinks[i])) {
            pt_batcher_stats s;
            pt_batcher_get_stats(rq.at[i], &s);
            CHECK_MSG(0, "request %d never finished (%d tokens; its batcher: %u running, %u waiting)", i,
                      rq.sinks[i].n, s.running, s.waiting);
            return; /* the batchers still hold it: nothing can be freed */
        }
    }
    /* Back to [1, 1, 1, 1] for the accounting. */
    while (l.n < N_DEV) {
        int a = 0;
        while (l.tp[a] == 1) a++;
        int h = l.tp[a] / 2;
        pt_xform_group dst[2] = {{l.first[a], h}, {l.first[a] + h, h}};
        CHECK(transform(&l, &rq, tok, a, a + 1, dst, 2, -1, PT_XFORM_FAIL_NONE) >= 0);
    }

    static sink ref[MAX_REQ];
    memset(ref, 0, sizeof ref);
    reference(&mf, tok, ref, rq.n);
    int n_cancelled = 0;
    for (int i = 0; i < rq.n; i++) {
        sink *s = &rq.sinks[i];
        CHECK_MSG(s->fin != PT_FINISH_ERROR, "request %d failed", i);
        if (s->fin == PT_FINISH_CANCELLED) {
            CHECK_MSG(rq.cancelled[i], "request %d was cancelled by nobody", i);
            n_cancelled++;
        } else {
            CHECK_MSG(s->n == ref[i].n, "request %d: %d tokens, reference %d", i, s->n, ref[i].n);
        }
        CHECK_MSG(s->n <= ref[i].n && memcmp(s->tokens, ref[i].tokens, (size_t)s->n * sizeof(int32_t)) == 0,
                  "request %d: tokens differ from the untransformed run", i);
    }
    pt_log(PT_LOG_INFO, "%d transformations (%d moving requests), %d requests, %d cancelled mid-move", total, moving,
           rq.n, n_cancelled);
    usleep(2000);
    check_pages_free(&l);
    for (int d = 0; d < N_DEV; d++)
        for (int c = 0; c < PT_MEM_CLASS_COUNT; c++)
            if (c != PT_MEM_KV) /* pools grow into unbudgeted memory: their pages are checked free above */
                CHECK_MSG(pt_device_used(pt_fabric_device(f, d), c) == start_used[d][c], "device %d %s: %llu, was %llu",
                          d, pt_mem_class_name(c), (unsigned long long)pt_device_used(pt_fabric_device(f, d), c),
                          (unsigned long long)start_used[d][c]);
    close_layout(&l);
    for (int d = 0; d < N_DEV; d++)
        for (int c = 0; c < PT_MEM_CLASS_COUNT; c++) CHECK_EQ_INT(pt_device_used(pt_fabric_device(f, d), c), 0);
    pt_fabric_free(f);
    pt_tokenizer_free(tok);
    pt_model_file_close(&mf);
}

TEST_MAIN(TEST(test_transformations_lose_nothing))
