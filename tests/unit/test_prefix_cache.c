/* Prefix caching: the cache's own bookkeeping (lookups chained by parent
 * and salt, at least one token left to compute, references, leaf-first LRU
 * eviction, duplicates, clear), then the batcher over an engine with the
 * cache on against one with it off: the same tokens and the same logprobs,
 * bit for bit, in any arrival order, for prompts that share whole and
 * partial pages, at TP 1 and 2, under eviction pressure, with preemption
 * and cancellation; and afterwards every page free or cached and idle. */
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include "kv/prefix_cache.h"
#include "proteus/batcher.h"
#include "test.h"

/* ---- the cache alone: two groups, each its own pool of 8 slots, pages of 4 tokens ---- */

enum { P = 4, G = 2, SLOTS = 8 };

typedef struct {
    pt_kv_pool kv[G];
    pt_kv_pool *pools[G];
    uint32_t bt[4][G][8]; /* block tables of 4 sequences */
    uint32_t *tables[4][G];
} pools_fixture;

static void pools_open(pools_fixture *f) {
    pt_err err;
    for (int g = 0; g < G; g++) {
        CHECK(pt_kv_pool_init(&f->kv[g], NULL, 1, 2, P, SLOTS, SLOTS, PT_DTYPE_F32, &err) == 0);
        f->pools[g] = &f->kv[g];
    }
    for (int s = 0; s < 4; s++)
        for (int g = 0; g < G; g++) f->tables[s][g] = f->bt[s][g];
}

/* What the engine does for a sequence computing pages [from, to). */
static void alloc_pages(pools_fixture *f, int seq, uint32_t from, uint32_t to) {
    for (uint32_t p = from; p < to; p++)
        for (int g = 0; g < G; g++) {
            int64_t slot = pt_kv_page_alloc(&f->kv[g]);
            CHECK(slot >= 0);
            f->bt[seq][g][p] = (uint32_t)slot;
        }
}

static void release_pages(pools_fixture *f, int seq, uint32_t n) {
    for (uint32_t p = 0; p < n; p++)
        for (int g = 0; g < G; g++) pt_kv_page_release(&f->kv[g], f->bt[seq][g][p]);
}

static uint32_t free_slots(pools_fixture *f) { return pt_kv_pool_free_pages(&f->kv[0]); }

static void test_attach_publish_reuse(void) {
    pools_fixture f;
    pools_open(&f);
    pt_prefix_cache *c;
    pt_err err;
    CHECK(pt_prefix_cache_create(&c, P, G, 4, 8, &err) == 0);
    int32_t a[12] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
    /* Sequence 0: nothing cached; computes 10 tokens (pages 0-2), publishes the 2 full ones. */
    CHECK_EQ_INT(pt_prefix_cache_attach(c, f.pools, 0, 0, a, 10, f.tables[0]), 0);
    alloc_pages(&f, 0, 0, 3);
    pt_prefix_cache_publish(c, f.pools, 0, a, 10, f.tables[0]);
    pt_prefix_cache_stats st;
    pt_prefix_cache_get_stats(c, &st);
    CHECK_EQ_INT(st.entries, 2);
    CHECK_EQ_INT(st.idle, 0);
    CHECK_EQ_INT(f.kv[1].refs[f.bt[0][1][1]], 2); /* the sequence's and the cache's */
    CHECK_EQ_INT(f.kv[1].refs[f.bt[0][1][2]], 1); /* partial page: not cached */

    /* Sequence 1 shares page 0 and half of page 1: it takes page 0 only. */
    int32_t b[9] = {1, 2, 3, 4, 5, 6, 99, 8, 9};
    CHECK_EQ_INT(pt_prefix_cache_attach(c, f.pools, 1, 0, b, 9, f.tables[1]), 1);
    CHECK_EQ_INT(f.bt[1][0][0], f.bt[0][0][0]);
    CHECK_EQ_INT(f.bt[1][1][0], f.bt[0][1][0]);
    CHECK_EQ_INT(f.kv[0].refs[f.bt[0][0][0]], 3);
    /* Sequence 2, the same 8 tokens exactly: one is left to compute, so page 1 is not taken. */
    CHECK_EQ_INT(pt_prefix_cache_attach(c, f.pools, 2, 0, a, 8, f.tables[2]), 1);
    pt_prefix_cache_detach(c, 2);
    release_pages(&f, 2, 1);
    CHECK_EQ_INT(pt_prefix_cache_attach(c, f.pools, 2, 0, a, 9, f.tables[2]), 2);
    /* Another salt sees nothing. */
    CHECK_EQ_INT(pt_prefix_cache_attach(c, f.pools, 3, pt_prefix_cache_salt("tenant-b"), a, 10, f.tables[3]), 0);
    CHECK(pt_prefix_cache_salt("tenant-b") != pt_prefix_cache_salt("tenant-c"));
    CHECK_EQ_INT(pt_prefix_cache_salt(NULL), 0);
    pt_prefix_cache_get_stats(c, &st);
    CHECK_EQ_INT(st.queries, 10 + 9 + 8 + 9 + 10);
    CHECK_EQ_INT(st.hits, (0 + 1 + 1 + 2 + 0) * P);

    /* Everyone ends: every entry idle, every page cached or free. */
    for (int s = 0; s < 4; s++) pt_prefix_cache_detach(c, s);
    release_pages(&f, 0, 3);
    release_pages(&f, 1, 1);
    release_pages(&f, 2, 2);
    pt_prefix_cache_get_stats(c, &st);
    CHECK_EQ_INT(st.idle, 2);
    CHECK_EQ_INT(free_slots(&f), SLOTS - 2);
    pt_prefix_cache_free(c, f.pools);
    CHECK_EQ_INT(free_slots(&f), SLOTS);
    CHECK_EQ_INT(pt_kv_pool_free_pages(&f.kv[1]), SLOTS);
    for (int g = 0; g < G; g++) pt_kv_pool_free(&f.kv[g]);
}

/* Idle entries go least recently used first, a leaf before its parent; an
 * entry in use is never evicted. */
static void test_evict_lru_leaf_first(void) {
    pools_fixture f;
    pools_open(&f);
    pt_prefix_cache *c;
    pt_err err;
    CHECK(pt_prefix_cache_create(&c, P, G, 4, 8, &err) == 0);
    int32_t a[9] = {1, 2, 3, 4, 5, 6, 7, 8, 0}, b[5] = {20, 21, 22, 23, 0};
    /* Chain a (2 pages) ends first, then b (1 page). */
    pt_prefix_cache_attach(c, f.pools, 0, 0, a, 9, f.tables[0]);
    alloc_pages(&f, 0, 0, 2);
    pt_prefix_cache_publish(c, f.pools, 0, a, 8, f.tables[0]);
    pt_prefix_cache_attach(c, f.pools, 1, 0, b, 5, f.tables[1]);
    alloc_pages(&f, 1, 0, 1);
    pt_prefix_cache_publish(c, f.pools, 1, b, 4, f.tables[1]);
    uint32_t a1 = f.bt[0][0][1], b0 = f.bt[1][0][0];
    pt_prefix_cache_detach(c, 0);
    release_pages(&f, 0, 2);
    pt_prefix_cache_detach(c, 1);
    release_pages(&f, 1, 1);
    CHECK_EQ_INT(free_slots(&f), SLOTS - 3);
    /* a's leaf goes first: its page is free, a's first page still found. */
    CHECK(pt_prefix_cache_evict(c, f.pools));
    CHECK_EQ_INT(f.kv[0].refs[a1], 0);
    CHECK_EQ_INT(f.kv[0].refs[b0], 1);
    CHECK_EQ_INT(pt_prefix_cache_attach(c, f.pools, 2, 0, a, 9, f.tables[2]), 1);
    /* In use by sequence 2 now: only b can go, then nothing. */
    CHECK(pt_prefix_cache_evict(c, f.pools));
    CHECK_EQ_INT(f.kv[0].refs[b0], 0);
    CHECK(!pt_prefix_cache_evict(c, f.pools));
    pt_prefix_cache_stats st;
    pt_prefix_cache_get_stats(c, &st);
    CHECK_EQ_INT(st.evictions, 2);
    CHECK_EQ_INT(st.entries, 1);
    pt_prefix_cache_detach(c, 2);
    release_pages(&f, 2, 1);
    CHECK_EQ_INT(pt_prefix_cache_drop_idle(c, f.pools), 1);
    CHECK_EQ_INT(free_slots(&f), SLOTS);
    pt_prefix_cache_free(c, f.pools);
    for (int g = 0; g < G; g++) pt_kv_pool_free(&f.kv[g]);
}

/* Two sequences compute the same page at once: the first publishes it, the
 * second keeps its own copy (freed when it ends) and continues the chain
 * from the published entry. Clear drops everything, used or not. */
static void test_duplicate_and_clear(void) {
    pools_fixture f;
    pools_open(&f);
    pt_prefix_cache *c;
    pt_err err;
    CHECK(pt_prefix_cache_create(&c, P, G, 4, 8, &err) == 0);
    int32_t a[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
    for (int s = 0; s < 2; s++) {
        CHECK_EQ_INT(pt_prefix_cache_attach(c, f.pools, s, 0, a, 9, f.tables[s]), 0);
        alloc_pages(&f, s, 0, 1);
    }
    pt_prefix_cache_publish(c, f.pools, 0, a, 4, f.tables[0]);
    pt_prefix_cache_publish(c, f.pools, 1, a, 4, f.tables[1]);
    alloc_pages(&f, 1, 1, 2);
    pt_prefix_cache_publish(c, f.pools, 1, a, 8, f.tables[1]); /* page 1's parent: sequence 0's entry */
    pt_prefix_cache_stats st;
    pt_prefix_cache_get_stats(c, &st);
    CHECK_EQ_INT(st.entries, 2);
    CHECK_EQ_INT(f.kv[0].refs[f.bt[1][0][0]], 1); /* its own copy: not cached */
    pt_prefix_cache_detach(c, 0);
    release_pages(&f, 0, 1);
    /* Sequence 0 ends; its page's entry is still used by sequence 1 (the
     * parent of its page 1): nothing is idle. */
    CHECK(!pt_prefix_cache_evict(c, f.pools));
    CHECK_EQ_INT(pt_prefix_cache_attach(c, f.pools, 2, 0, a, 9, f.tables[2]), 2);
    pt_prefix_cache_clear(c, f.pools);
    pt_prefix_cache_get_stats(c, &st);
    CHECK_EQ_INT(st.entries, 0);
    CHECK_EQ_INT(st.idle, 0);
    release_pages(&f, 1, 2);
    release_pages(&f, 2, 2);
    CHECK_EQ_INT(free_slots(&f), SLOTS);
    CHECK_EQ_INT(pt_prefix_cache_attach(c, f.pools, 3, 0, a, 9, f.tables[3]), 0);
    pt_prefix_cache_free(c, f.pools);
    for (int g = 0; g < G; g++) pt_kv_pool_free(&f.kv[g]);
}

/* ---- the batcher with the cache on against one with it off ---- */

#define N_REQ 6
#define GEN 12

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int32_t tokens[GEN + 1];
    float logprobs[GEN + 1];
    int n;
    pt_finish_reason fin;
    bool done;
} sink;

static void on_event(void *user, const pt_gen_event *ev) {
    sink *s = user;
    pthread_mutex_lock(&s->mu);
    if (ev->token >= 0 && s->n <= GEN) {
        s->logprobs[s->n] = ev->logprob;
        s->tokens[s->n++] = ev->token;
    }
    if (ev->finish != PT_FINISH_NONE) {
        s->fin = ev->finish;
        s->done = true;
        pthread_cond_signal(&s->cv);
    }
    pthread_mutex_unlock(&s->mu);
}

static void sink_init(sink *s) {
    memset(s, 0, sizeof(*s));
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
}

static void sink_wait(sink *s) {
    pthread_mutex_lock(&s->mu);
    while (!s->done) pthread_cond_wait(&s->cv, &s->mu);
    pthread_mutex_unlock(&s->mu);
}

typedef struct {
    pt_model_file mf;
    pt_tokenizer *tok;
    pt_engine *e;
    pt_batcher *b;
} fixture;

static bool fixture_open(fixture *f, bool cache, int tp, uint64_t kv_pages, uint32_t select_budget) {
    pt_err err;
    memset(f, 0, sizeof(*f));
    if (pt_model_file_open(&f->mf, "synthetic:tiny-llama", &err) || pt_tokenizer_load(&f->tok, &f->mf, &err)) {
        CHECK_MSG(0, "%s", err.msg);
        return false;
    }
    pt_engine_opts o;
    pt_engine_opts_default(&o);
    o.tp = tp;
    o.max_seqs = 8;
    o.max_ctx = 128;
    o.max_batch_tokens = 64;
    o.kv_pages = kv_pages;
    o.page_size = 4;
    o.prefix_cache = cache;
    o.select_budget = select_budget;
    o.select_dense_layers = 0;
    if (pt_engine_create(&f->e, &f->mf, &o, &err)) {
        CHECK_MSG(0, "%s", err.msg);
        return false;
    }
    pt_batcher_opts bo = {.max_running = 8, .max_waiting = 64, .max_batch_tokens = 64, .prefill_chunk = 7};
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

/* Prompts sharing a 23-token prefix (5 full pages and 3 tokens of the
 * sixth), each with its own tail; the last one is the prefix alone plus one
 * token, so that it shares part of a page and little else. */
static int make_prompts(int32_t prompts[N_REQ][48], int lens[N_REQ]) {
    for (int i = 0; i < N_REQ; i++) {
        lens[i] = i + 1 < N_REQ ? 30 + 3 * i : 24;
        for (int t = 0; t < lens[i]; t++) prompts[i][t] = (int32_t)(t < 23 ? (t * 37 + 5) % 256 : (i * 53 + t * 11) % 256);
    }
    return 23;
}

/* Runs the prompts in `order`, all queued at once (together) or one after
 * another (each waits for the last to finish); `cancel` >= 0 is cancelled
 * after its first token. */
static void run_requests(fixture *f, int32_t prompts[N_REQ][48], const int *lens, const int *order, bool together,
                         int cancel, sink *out) {
    if (together) pt_batcher_pause(f->b, true);
    uint64_t ids[N_REQ];
    for (int k = 0; k < N_REQ; k++) {
        int i = order[k];
        sink_init(&out[i]);
        pt_gen_params p = {.prompt = prompts[i], .n_prompt = (size_t)lens[i], .max_tokens = GEN, .ignore_eos = true,
                           .top_logprobs = 0, .cb = on_event, .user = &out[i]};
        pt_sampler_params_default(&p.sampling);
        p.sampling.temperature = 0;
        pt_err err;
        CHECK_EQ_INT(pt_batcher_submit(f->b, &p, &ids[i], &err), 0);
        if (i == cancel) pt_batcher_cancel(f->b, ids[i]);
        if (!together) sink_wait(&out[i]);
    }
    if (together) pt_batcher_pause(f->b, false);
    for (int i = 0; i < N_REQ; i++) sink_wait(&out[i]);
}

static void same_outputs(const sink *a, const sink *b, int cancel) {
    for (int i = 0; i < N_REQ; i++) {
        if (i == cancel) continue;
        CHECK_EQ_INT(a[i].n, GEN);
        CHECK_EQ_INT(b[i].n, GEN);
        CHECK_MSG(memcmp(a[i].tokens, b[i].tokens, GEN * sizeof(int32_t)) == 0, "request %d: tokens differ", i);
        int at = -1; /* the first token whose logprob differs */
        for (int g = GEN - 1; g >= 0; g--)
            if (a[i].logprobs[g] != b[i].logprobs[g]) at = g;
        CHECK_MSG(at < 0, "request %d: logprobs differ from token %d on (%.9g vs %.9g)", i, at,
                  at < 0 ? 0 : a[i].logprobs[at], at < 0 ? 0 : b[i].logprobs[at]);
    }
}

/* Every page free or cached and idle: no sequence holds one, nothing leaked. */
static void all_pages_reclaimable(fixture *f) {
    usleep(2000); /* the batcher thread frees a cancelled request at its next iteration */
    pt_batcher_stats st;
    pt_batcher_get_stats(f->b, &st);
    for (int r = 0; r < st.n_ranks; r++) {
        uint64_t total, free_pages;
        pt_engine_kv_pages(f->e, r, &total, &free_pages);
        CHECK_MSG(total == free_pages, "rank %d: %llu of %llu pages reclaimable", r, (unsigned long long)free_pages,
                  (unsigned long long)total);
    }
    pt_engine_prefix_stats ps;
    pt_engine_prefix_get_stats(f->e, &ps);
    CHECK_EQ_INT(ps.idle_pages, ps.pages);
}

static void run_case(int tp, uint64_t kv_pages, bool expect_evictions, uint32_t select_budget) {
    int32_t prompts[N_REQ][48];
    int lens[N_REQ];
    int shared = make_prompts(prompts, lens);
    static const int forward[N_REQ] = {0, 1, 2, 3, 4, 5}, backward[N_REQ] = {5, 4, 3, 2, 1, 0};
    fixture off, on;
    if (!fixture_open(&off, false, tp, kv_pages, select_budget) || !fixture_open(&on, true, tp, kv_pages, select_budget))
        return;
    sink ref[N_REQ], got[N_REQ];
    run_requests(&off, prompts, lens, forward, false, -1, ref);

    /* One after another: every later request finds the shared full pages. */
    run_requests(&on, prompts, lens, forward, false, -1, got);
    same_outputs(ref, got, -1);
    pt_engine_prefix_stats ps;
    pt_engine_prefix_get_stats(on.e, &ps);
    if (!expect_evictions) CHECK_EQ_INT(ps.hits, (uint64_t)(N_REQ - 1) * (shared / 4 * 4));
    CHECK(ps.hits > 0);
    all_pages_reclaimable(&on);

    /* Backwards, all at once (with preemption when pages are short), with
     * the cache warm from the first pass: the same again. */
    run_requests(&on, prompts, lens, backward, true, -1, got);
    same_outputs(ref, got, -1);
    all_pages_reclaimable(&on);
    /* A cancellation in the middle leaks nothing either. */
    run_requests(&on, prompts, lens, forward, true, 2, got);
    same_outputs(ref, got, 2);
    all_pages_reclaimable(&on);
    pt_engine_prefix_get_stats(on.e, &ps);
    if (expect_evictions) {
        pt_batcher_stats bs;
        pt_batcher_get_stats(on.b, &bs);
        CHECK_MSG(ps.evictions > 0, "no eviction under a budget of %llu pages", (unsigned long long)kv_pages);
        CHECK_MSG(bs.preemptions > 0, "no preemption under a budget of %llu pages", (unsigned long long)kv_pages);
    }
    fixture_close(&off);
    fixture_close(&on);
}

static void test_batcher_same_outputs_tp1(void) { run_case(1, 0, false, 0); }
static void test_batcher_same_outputs_tp2(void) { run_case(2, 0, false, 0); }
/* 48 head pages over 2 heads: 24 pages of 4 tokens, 96 tokens for all six. */
static void test_batcher_under_eviction(void) { run_case(1, 48, true, 0); }
/* Query-aware page selection in every layer past 16 tokens: decodes attend
 * to chosen pages, so only the prompts' pages are cached (a decoded page's
 * keys depend on that choice); the shared prompt pages are still found. */
static void test_batcher_with_page_selection(void) { run_case(1, 0, false, 16); }

TEST_MAIN(TEST(test_attach_publish_reuse), TEST(test_evict_lru_leaf_first), TEST(test_duplicate_and_clear),
          TEST(test_batcher_same_outputs_tp1), TEST(test_batcher_same_outputs_tp2), TEST(test_batcher_under_eviction),
          TEST(test_batcher_with_page_selection))
