/* Continuous batching: many requests at once give each the same tokens as it
 * gets alone (also across preemption and recompute), cancellation frees every
 * page, and the queue and context limits refuse cleanly. */
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include "proteus/batcher.h"
#include "test.h"

#define N_REQ 6
#define GEN 40

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int32_t tokens[GEN + 1];
    int n;
    pt_finish_reason fin;
    bool done;
} sink;

static void on_event(void *user, const pt_gen_event *ev) {
    sink *s = user;
    pthread_mutex_lock(&s->mu);
    if (ev->token >= 0 && s->n <= GEN) s->tokens[s->n++] = ev->token;
    if (ev->finish != PT_FINISH_NONE) {
        s->fin = ev->finish;
        s->done = true;
        pthread_cond_signal(&s->cv);
    }
    pthread_mutex_unlock(&s->mu);
}

static void sink_wait(sink *s) {
    pthread_mutex_lock(&s->mu);
    while (!s->done) pthread_cond_wait(&s->cv, &s->mu);
    pthread_mutex_unlock(&s->mu);
}

static void sink_init(sink *s) {
    memset(s, 0, sizeof(*s));
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
}

static void make_prompt(int32_t *p, int n, int seed) {
    for (int i = 0; i < n; i++) p[i] = (int32_t)((seed * 131 + i * 17) % 256);
}

/* Greedy tokens of one prompt run alone on the engine, no batcher. */
static void reference(pt_engine *e, const int32_t *prompt, int n, int32_t *out) {
    uint32_t V = pt_engine_config(e)->vocab_size;
    float *l = malloc(V * sizeof(float));
    pt_err err;
    int s = pt_engine_seq_new(e);
    pt_batch_entry b = {s, prompt, (uint32_t)n, l, false, false};
    CHECK(pt_engine_step(e, &b, 1, &err) == 0);
    for (int g = 0; g < GEN; g++) {
        int32_t best = 0;
        for (uint32_t v = 1; v < V; v++)
            if (l[v] > l[best]) best = (int32_t)v;
        out[g] = best;
        pt_batch_entry d = {s, &out[g], 1, l, false, false};
        if (g + 1 < GEN) CHECK(pt_engine_step(e, &d, 1, &err) == 0);
    }
    pt_engine_seq_free(e, s);
    free(l);
}

typedef struct {
    pt_model_file mf;
    pt_tokenizer *tok;
    pt_engine *e;
    pt_batcher *b;
} fixture;

static bool fixture_open(fixture *f, uint64_t kv_pages, uint32_t max_waiting) {
    pt_err err;
    memset(f, 0, sizeof(*f));
    if (pt_model_file_open(&f->mf, "synthetic:tiny-llama", &err) || pt_tokenizer_load(&f->tok, &f->mf, &err)) {
        CHECK_MSG(0, "%s", err.msg);
        return false;
    }
    pt_engine_opts o;
    pt_engine_opts_default(&o);
    o.max_seqs = 8;
    o.max_ctx = 128;
    o.max_batch_tokens = 64;
    o.kv_pages = kv_pages;
    o.page_size = 4;
    if (pt_engine_create(&f->e, &f->mf, &o, &err)) {
        CHECK_MSG(0, "%s", err.msg);
        return false;
    }
    pt_batcher_opts bo = {.max_running = 8, .max_waiting = max_waiting, .max_batch_tokens = 64, .prefill_chunk = 7};
    if (pt_batcher_create(&f->b, f->e, f->tok, &bo, &err)) {
        CHECK_MSG(0, "%s", err.msg);
        return false;
    }
    return true;
}

static void fixture_close(fixture *f) {
    pt_batcher_free(f->b);
    pt_engine_free(f->e);
    pt_tokenizer_free(f->tok);
    pt_model_file_close(&f->mf);
}

static void all_pages_free(pt_engine *e) {
    uint64_t total, free_pages;
    pt_engine_kv_pages(e, 0, &total, &free_pages);
    CHECK_MSG(total == free_pages, "%llu of %llu pages free", (unsigned long long)free_pages,
              (unsigned long long)total);
}

static void run_concurrent(uint64_t kv_pages, bool expect_preemption) {
    fixture f;
    if (!fixture_open(&f, kv_pages, 64)) return;
    int32_t prompts[N_REQ][40], ref[N_REQ][GEN];
    int lens[N_REQ];
    for (int i = 0; i < N_REQ; i++) {
        lens[i] = 5 + i * 6;
        make_prompt(prompts[i], lens[i], i + 1);
    }
    /* References on a second, unconstrained engine. */
    fixture r;
    if (!fixture_open(&r, 0, 64)) return;
    for (int i = 0; i < N_REQ; i++) reference(r.e, prompts[i], lens[i], ref[i]);
    fixture_close(&r);

    /* All requests are queued before the batcher looks, so that they overlap
     * however the threads are scheduled. */
    pt_batcher_pause(f.b, true);
    sink sinks[N_REQ];
    for (int i = 0; i < N_REQ; i++) {
        sink_init(&sinks[i]);
        pt_gen_params p = {.prompt = prompts[i], .n_prompt = (size_t)lens[i], .max_tokens = GEN,
                           .ignore_eos = true, .top_logprobs = -1, .cb = on_event, .user = &sinks[i]};
        pt_sampler_params_default(&p.sampling);
        uint64_t id;
        pt_err err;
        CHECK(pt_batcher_submit(f.b, &p, &id, &err) == 0);
    }
    pt_batcher_pause(f.b, false);
    for (int i = 0; i < N_REQ; i++) {
        sink_wait(&sinks[i]);
        CHECK_EQ_INT(sinks[i].fin, PT_FINISH_LENGTH);
        CHECK_EQ_INT(sinks[i].n, GEN);
        CHECK_MSG(memcmp(sinks[i].tokens, ref[i], sizeof(ref[i])) == 0, "request %d differs from its solo run", i);
    }
    pt_batcher_stats st;
    pt_batcher_get_stats(f.b, &st);
    if (expect_preemption) CHECK_MSG(st.preemptions > 0, "no preemption with %llu pages", (unsigned long long)kv_pages);
    usleep(1000);
    all_pages_free(f.e);
    fixture_close(&f);
}

static void test_concurrent_matches_solo(void) { run_concurrent(0, false); }

/* 2 KV heads x pages of 4 tokens: 40 pages hold 80 tokens per head. The
 * longest request alone needs 75 (35 prompt + 40 generated), so it fits, but
 * no two of the six fit together near their ends: queued together (the
 * batcher paused), the requests overlap for 40 steps and the batcher must
 * preempt and recompute. */
static void test_preemption_recomputes_exactly(void) { run_concurrent(40, true); }

/* The preemption victim: a short request (6 + 40 tokens) admitted first and
 * a long one (30 + 40) admitted after it do not fit 40 pages (80 tokens)
 * together. By default the newest (the long one) gives way; with the
 * merged-instance rule of at most 48 tokens, the short one does, being the
 * one a smaller instance could serve. Either way both finish with their
 * solo tokens. */
static void run_victim(uint32_t movable, bool expect_movable) {
    fixture f, r;
    if (!fixture_open(&f, 40, 8) || !fixture_open(&r, 0, 8)) return;
    pt_batcher_set_preempt_movable(f.b, movable);
    int32_t prompts[2][30], ref[2][GEN];
    int lens[2] = {6, 30};
    sink sinks[2];
    pt_batcher_pause(f.b, true);
    for (int i = 0; i < 2; i++) {
        make_prompt(prompts[i], lens[i], 20 + i);
        reference(r.e, prompts[i], lens[i], ref[i]);
        sink_init(&sinks[i]);
        pt_gen_params p = {.prompt = prompts[i], .n_prompt = (size_t)lens[i], .max_tokens = GEN,
                           .ignore_eos = true, .top_logprobs = -1, .cb = on_event, .user = &sinks[i]};
        pt_sampler_params_default(&p.sampling);
        uint64_t id;
        pt_err err;
        CHECK(pt_batcher_submit(f.b, &p, &id, &err) == 0);
    }
    pt_batcher_pause(f.b, false);
    for (int i = 0; i < 2; i++) {
        sink_wait(&sinks[i]);
        CHECK_MSG(memcmp(sinks[i].tokens, ref[i], sizeof(ref[i])) == 0, "request %d differs from its solo run", i);
    }
    pt_batcher_stats st;
    pt_batcher_get_stats(f.b, &st);
    CHECK(st.preemptions > 0);
    if (expect_movable) CHECK_EQ_INT(st.preemptions_movable, st.preemptions);
    else CHECK_EQ_INT(st.preemptions_movable, 0);
    fixture_close(&r);
    fixture_close(&f);
}

static void test_victim_newest(void) { run_victim(0, false); }
static void test_victim_movable(void) { run_victim(48, true); }

static void test_cancel_and_limits(void) {
    fixture f;
    if (!fixture_open(&f, 0, 2)) return;
    int32_t prompt[20];
    make_prompt(prompt, 20, 9);
    sink s[4];
    uint64_t ids[4];
    pt_err err;
    int accepted = 0, busy = 0;
    for (int i = 0; i < 4; i++) {
        sink_init(&s[i]);
        pt_gen_params p = {.prompt = prompt, .n_prompt = 20, .max_tokens = 100, .ignore_eos = true,
                           .top_logprobs = 2, .cb = on_event, .user = &s[i]};
        pt_sampler_params_default(&p.sampling);
        int rc = pt_batcher_submit(f.b, &p, &ids[i], &err);
        if (rc == 0) accepted++;
        else if (rc == PT_ERR_BUSY) busy++, s[i].done = true;
    }
    /* The queue holds 2; the batcher may already have taken some in. */
    CHECK(accepted >= 2);
    CHECK_EQ_INT(accepted + busy, 4);
    for (int i = 0; i < 4; i++)
        if (!s[i].done) pt_batcher_cancel(f.b, ids[i]);
    for (int i = 0; i < 4; i++) sink_wait(&s[i]);
    for (int i = 0; i < 4; i++)
        if (s[i].fin) CHECK(s[i].fin == PT_FINISH_CANCELLED || s[i].fin == PT_FINISH_LENGTH);
    pt_batcher_cancel(f.b, 12345); /* unknown: ignored */
    usleep(1000);
    all_pages_free(f.e);

    /* Context: 128 tokens. */
    pt_gen_params p = {.prompt = prompt, .n_prompt = 20, .max_tokens = 109, .top_logprobs = -1, .cb = on_event,
                       .user = &s[0]};
    pt_sampler_params_default(&p.sampling);
    uint64_t id;
    CHECK_EQ_INT(pt_batcher_submit(f.b, &p, &id, &err), PT_ERR_INVALID);
    CHECK(strstr(err.msg, "maximum context length is 128") != NULL);
    int32_t bad = 999;
    p.prompt = &bad, p.n_prompt = 1, p.max_tokens = 1;
    CHECK_EQ_INT(pt_batcher_submit(f.b, &p, &id, &err), PT_ERR_INVALID);
    fixture_close(&f);
}

/* 40 pages of 4 tokens over 2 heads hold 80 tokens of one sequence: a
 * request of 81 is refused at submit (it could never run), 80 is taken. */
static void test_request_longer_than_kv_refused(void) {
    fixture f;
    if (!fixture_open(&f, 40, 4)) return;
    CHECK_EQ_INT(pt_batcher_max_ctx(f.b), 80);
    int32_t prompt[40];
    make_prompt(prompt, 40, 3);
    sink s;
    sink_init(&s);
    pt_gen_params p = {.prompt = prompt, .n_prompt = 40, .max_tokens = 41, .ignore_eos = true, .top_logprobs = -1,
                       .cb = on_event, .user = &s};
    pt_sampler_params_default(&p.sampling);
    uint64_t id;
    pt_err err;
    CHECK_EQ_INT(pt_batcher_submit(f.b, &p, &id, &err), PT_ERR_INVALID);
    CHECK_MSG(strstr(err.msg, "KV cache holds at most 80 tokens") != NULL, "%s", err.msg);
    p.max_tokens = 40;
    CHECK_EQ_INT(pt_batcher_submit(f.b, &p, &id, &err), PT_OK);
    sink_wait(&s);
    CHECK_EQ_INT(s.fin, PT_FINISH_LENGTH);
    CHECK_EQ_INT(s.n, 40);
    fixture_close(&f);
}

TEST_MAIN(TEST(test_concurrent_matches_solo), TEST(test_preemption_recomputes_exactly), TEST(test_victim_newest),
          TEST(test_victim_movable), TEST(test_cancel_and_limits),
          TEST(test_request_longer_than_kv_refused))
