/* Live TP transformation of engine instances (src/xform/xform.h): a merge
 * and a split in the middle of decoding leave every sequence's tokens
 * equal to a run with no transformation; a failure injected at each stage
 * rolls back with the sources still decoding the same tokens; memory
 * follows the weights (pages gained by a merge, reserved by a split); and
 * every page is back in its pool at the end. */
#include <stdlib.h>
#include <string.h>

#include "device/fabric_internal.h"
#include "engine/engine_internal.h"
#include "proteus/engine.h"
#include "test.h"
#include "xform/xform.h"

#define MODEL "synthetic:tiny-gqa"
enum { N_STREAMS = 6, MAX_TOK = 160 };

/* A greedy sequence: its tokens so far, and where it lives. */
typedef struct {
    pt_engine *e;
    int seq;
    int32_t tok[MAX_TOK];
    uint32_t n;
} stream;

static pt_engine_opts small_opts(void) {
    pt_engine_opts o;
    pt_engine_opts_default(&o);
    o.max_ctx = MAX_TOK;
    o.max_seqs = 8;
    o.max_batch_tokens = 128;
    o.page_size = 4; /* many pages per sequence: full, partial, pre-copied and not */
    return o;
}

static pt_fabric *fabric_of(int n, uint64_t budget) {
    pt_device_spec specs[4];
    for (int i = 0; i < n; i++) specs[i] = (pt_device_spec){PT_DEVICE_CPU, 1, 0, budget};
    int allowed[] = {1, 2};
    pt_fabric *f = NULL;
    pt_err err = {{0}};
    CHECK_MSG(pt_fabric_create(&f, specs, n, allowed, 2, &err) == 0, "%s", err.msg);
    return f;
}

static pt_engine *engine_with(const pt_model_file *mf, pt_fabric *f, int first, int tp, pt_engine_opts o) {
    pt_engine *e = NULL;
    pt_err err = {{0}};
    CHECK_MSG(pt_engine_create_on(&e, mf, f, first, tp, &o, &err) == 0, "%s", err.msg);
    return e;
}

static pt_engine *engine_on(const pt_model_file *mf, pt_fabric *f, int first, int tp) {
    return engine_with(mf, f, first, tp, small_opts());
}

static int32_t argmax(const float *x, uint32_t V) {
    int32_t best = 0;
    for (uint32_t v = 1; v < V; v++)
        if (x[v] > x[best]) best = (int32_t)v;
    return best;
}

/* Stream i's prompt: 9 + 5 i tokens, so that sequences end mid-page and
 * on a page boundary. */
static void prompt_of(stream *s, int i, uint32_t V) {
    s->n = 9 + 5 * (uint32_t)i;
    for (uint32_t k = 0; k < s->n; k++) s->tok[k] = (int32_t)((k * 2654435761u + (uint32_t)i * 97u) % V);
}

/* Prefills stream s on engine e and samples its first token. */
static void start(stream *s, pt_engine *e) {
    uint32_t V = pt_engine_config(e)->vocab_size;
    float *l = malloc(V * sizeof(float));
    pt_err err = {{0}};
    s->e = e;
    s->seq = pt_engine_seq_new(e);
    pt_batch_entry b = {s->seq, s->tok, s->n, l, false, false};
    CHECK_MSG(pt_engine_step(e, &b, 1, &err) == 0, "%s", err.msg);
    s->tok[s->n++] = argmax(l, V);
    free(l);
}

/* One decode step of every stream on engine e (one batch). */
static void decode(pt_engine *e, stream *st, int n) {
    uint32_t V = pt_engine_config(e)->vocab_size;
    pt_batch_entry b[N_STREAMS];
    int idx[N_STREAMS], m = 0;
    float *l = malloc((size_t)N_STREAMS * V * sizeof(float));
    for (int i = 0; i < n; i++)
        if (st[i].e == e && st[i].n < MAX_TOK) {
            b[m] = (pt_batch_entry){st[i].seq, &st[i].tok[st[i].n - 1], 1, l + (size_t)m * V, false, false};
            idx[m++] = i;
        }
    pt_err err = {{0}};
    if (m) CHECK_MSG(pt_engine_step(e, b, (size_t)m, &err) == 0, "%s", err.msg);
    for (int k = 0; k < m; k++) st[idx[k]].tok[st[idx[k]].n++] = argmax(l + (size_t)k * V, V);
    free(l);
}

static void decode_all(pt_engine *const *es, int n_e, stream *st, int steps) {
    for (int k = 0; k < steps; k++)
        for (int i = 0; i < n_e; i++) decode(es[i], st, N_STREAMS);
}

/* The reference: every stream on one TP1 instance, no transformation. */
static void reference(const pt_model_file *mf, stream *ref, int steps) {
    pt_fabric *f = fabric_of(1, 0);
    pt_engine *e = engine_on(mf, f, 0, 1);
    for (int i = 0; i < N_STREAMS; i++) {
        prompt_of(&ref[i], i, mf->config.vocab_size);
        start(&ref[i], e);
    }
    decode_all(&e, 1, ref, steps);
    pt_engine_free(e);
    pt_fabric_free(f);
}

/* Every stream generated at least `min_gen` tokens, each the reference's. */
static void check_same(const stream *got, const stream *ref, uint32_t min_gen) {
    for (int i = 0; i < N_STREAMS; i++) {
        uint32_t n_prompt = 9 + 5 * (uint32_t)i;
        CHECK_MSG(got[i].n >= n_prompt + min_gen && got[i].n <= ref[i].n, "stream %d: %u tokens, reference %u", i,
                  got[i].n, ref[i].n);
        CHECK_MSG(memcmp(got[i].tok, ref[i].tok, got[i].n * sizeof(int32_t)) == 0, "stream %d: tokens differ", i);
    }
}

/* Every page of every rank is free. */
static void check_pools_free(pt_engine *const *es, int n) {
    for (int i = 0; i < n; i++)
        for (int r = 0; r < pt_engine_tp(es[i]); r++) {
            uint64_t total, free_pages;
            pt_engine_kv_pages(es[i], r, &total, &free_pages);
            CHECK_MSG(total == free_pages, "instance %d rank %d: %llu of %llu pages free", i, r,
                      (unsigned long long)free_pages, (unsigned long long)total);
        }
}

/* Transforms src into dst with `stages` pre-copy stages, `between` decode
 * steps on the sources after each snapshot (while the copy would run), and
 * moves every stream; returns the targets in out. */
static int transform(pt_engine **src, int n_src, const pt_xform_group *dst, int n_dst, stream *st, int stages,
                     int between, pt_xform_fail fail, pt_engine **out, pt_xform_stats *stats, pt_err *err) {
    pt_xform *x = NULL;
    int rc = pt_xform_create(&x, src, n_src, dst, n_dst, err);
    if (rc) return rc;
    pt_xform_fail_at(x, fail);
    for (int k = 0; k < stages && !rc; k++) {
        uint32_t got;
        for (int i = 0; i < n_src && !rc; i++) rc = pt_xform_snapshot(x, i, &got, err);
        decode_all(src, n_src, st, between);
        if (!rc) rc = pt_xform_copy(x, err);
    }
    pt_xform_move moves[N_STREAMS];
    int n = 0, who[N_STREAMS];
    for (int i = 0; i < N_STREAMS; i++)
        for (int s = 0; s < n_src; s++)
            if (st[i].e == src[s]) {
                moves[n] = (pt_xform_move){s, st[i].seq, -1, -1};
                who[n++] = i;
            }
    if (!rc) rc = pt_xform_commit(x, moves, (size_t)n, err);
    if (!rc) {
        for (int k = 0; k < n; k++) {
            st[who[k]].e = pt_xform_target(x, moves[k].dst);
            st[who[k]].seq = moves[k].dst_seq;
        }
        for (int k = 0; k < n_dst; k++) out[k] = pt_xform_target(x, k);
    }
    pt_xform_free(x, stats);
    return rc;
}

static void free_streams(stream *st) {
    for (int i = 0; i < N_STREAMS; i++)
        if (st[i].e) pt_engine_seq_free(st[i].e, st[i].seq);
}

/* Two TP1 instances on two devices, and the streams: each started on them
 * in turn unless `skip` names it (-1: none). */
typedef struct {
    pt_model_file mf;
    pt_fabric *f;
    pt_engine *inst[2];
    stream st[N_STREAMS];
} fixture;

static bool fixture_open(fixture *x, int skip) {
    pt_err err = {{0}};
    memset(x, 0, sizeof(*x));
    if (pt_model_file_open(&x->mf, MODEL, &err) != 0) {
        CHECK_MSG(0, "%s", err.msg);
        return false;
    }
    x->f = fabric_of(2, 0);
    for (int i = 0; i < 2; i++) x->inst[i] = engine_on(&x->mf, x->f, i, 1);
    for (int i = 0; i < N_STREAMS; i++) {
        prompt_of(&x->st[i], i, x->mf.config.vocab_size);
        if (i != skip) start(&x->st[i], x->inst[i % 2]);
    }
    return true;
}

/* Ends the streams and frees the instances that serve at the end (every
 * page back in their pools, every byte back on the devices). */
static void fixture_close(fixture *x, pt_engine *const *live, int n_live) {
    free_streams(x->st);
    check_pools_free(live, n_live);
    for (int i = 0; i < n_live; i++) pt_engine_free(live[i]);
    for (int d = 0; d < 2; d++)
        for (int c = 0; c < PT_MEM_CLASS_COUNT; c++) CHECK_EQ_INT(pt_device_used(pt_fabric_device(x->f, d), c), 0);
    pt_fabric_free(x->f);
    pt_model_file_close(&x->mf);
}

/* [1, 1] -> [2] -> [1, 1] -> [2] mid-decode: the reference's tokens. */
static void test_merge_split_same_tokens(void) {
    fixture fx;
    if (!fixture_open(&fx, -1)) return;
    pt_err err = {{0}};
    stream ref[N_STREAMS], *st = fx.st;
    reference(&fx.mf, ref, 40);
    pt_engine **inst = fx.inst;
    decode_all(inst, 2, st, 3);
    pt_xform_group tp2 = {0, 2}, tp1s[2] = {{0, 1}, {1, 1}};
    pt_xform_stats xs;
    pt_engine *merged[1];
    CHECK_MSG(transform(inst, 2, &tp2, 1, st, 2, 4, PT_XFORM_FAIL_NONE, merged, &xs, &err) == 0, "%s", err.msg);
    CHECK(xs.pages_precopied > 0 && xs.pages_in_place > 0 && xs.stages == 2 && xs.seqs_moved == N_STREAMS);
    CHECK(xs.kv_bytes_moved > 0 && xs.weight_bytes_new > 0 && xs.weight_bytes_freed > xs.weight_bytes_new);
    decode_all(merged, 1, st, 5);
    pt_engine *split[2];
    CHECK_MSG(transform(merged, 1, tp1s, 2, st, 1, 3, PT_XFORM_FAIL_NONE, split, &xs, &err) == 0, "%s", err.msg);
    CHECK(xs.pages_precopied > 0 && xs.weight_bytes_new > xs.weight_bytes_freed);
    /* A split balances: both targets got sequences. */
    int on0 = 0;
    for (int i = 0; i < N_STREAMS; i++) on0 += st[i].e == split[0];
    CHECK(on0 > 0 && on0 < N_STREAMS);
    decode_all(split, 2, st, 4);
    /* Stop-the-world (no pre-copy stage) gives the same bits too. */
    CHECK_MSG(transform(split, 2, &tp2, 1, st, 0, 0, PT_XFORM_FAIL_NONE, merged, &xs, &err) == 0, "%s", err.msg);
    CHECK(xs.pages_precopied == 0 && xs.pages_at_commit > 0);
    decode_all(merged, 1, st, 2);
    check_same(st, ref, 3 + 8 + 5 + 3 + 4 + 2);
    fixture_close(&fx, merged, 1);
}

/* A failure at each stage: the error names it, the sources go on with the
 * reference's tokens, and the devices hold what they held before. */
static void test_rollback_each_stage(void) {
    fixture fx;
    if (!fixture_open(&fx, -1)) return;
    pt_err err = {{0}};
    stream ref[N_STREAMS], *st = fx.st;
    reference(&fx.mf, ref, 40);
    const pt_xform_fail fails[] = {PT_XFORM_FAIL_NONE, PT_XFORM_FAIL_PRECOPY_ALLOC, PT_XFORM_FAIL_PRECOPY_COMM,
                                   PT_XFORM_FAIL_COMMIT_ALLOC, PT_XFORM_FAIL_COMMIT_COMM};
    pt_fabric *f = fx.f;
    pt_engine **inst = fx.inst;
    decode_all(inst, 2, st, 3);
    uint64_t used[2][PT_MEM_CLASS_COUNT];
    for (int d = 0; d < 2; d++)
        for (int c = 0; c < PT_MEM_CLASS_COUNT; c++) used[d][c] = pt_device_used(pt_fabric_device(f, d), c);
    pt_xform_group tp2 = {0, 2};
    for (size_t k = 0; k < sizeof fails / sizeof fails[0]; k++) {
        pt_engine *merged[1];
        err.msg[0] = 0;
        if (fails[k] == PT_XFORM_FAIL_NONE) pt_device_fail_after(pt_fabric_device(f, 1), 0); /* the target's memory */
        int rc = transform(inst, 2, &tp2, 1, st, 2, 2, fails[k], merged, NULL, &err);
        pt_device_fail_after(pt_fabric_device(f, 1), -1);
        CHECK_MSG(rc != 0, "failure %d was not reported", (int)fails[k]);
        CHECK_MSG(strstr(err.msg, fails[k] == PT_XFORM_FAIL_NONE ? "out of memory"
                                  : fails[k] == PT_XFORM_FAIL_PRECOPY_ALLOC ? "pre-copy"
                                  : fails[k] == PT_XFORM_FAIL_COMMIT_ALLOC ? "commit"
                                                                           : "injected") != NULL,
                  "failure %d: %s", (int)fails[k], err.msg);
        for (int d = 0; d < 2; d++)
            for (int c = 0; c < PT_MEM_CLASS_COUNT; c++)
                CHECK_MSG(pt_device_used(pt_fabric_device(f, d), c) == used[d][c], "failure %d: device %d class %d",
                          (int)fails[k], d, c);
        decode_all(inst, 2, st, 1);
    }
    check_same(st, ref, 3 + 5);
    fixture_close(&fx, inst, 2);
}

/* A sequence that ends after its pages were pre-copied, its id reused by a
 * new request before the commit: the stale copies are dropped, the new
 * request moves whole. */
static void test_request_ends_mid_move(void) {
    fixture fx;
    if (!fixture_open(&fx, 4)) return;
    pt_err err = {{0}};
    stream ref[N_STREAMS], *st = fx.st;
    reference(&fx.mf, ref, 8);
    pt_engine **inst = fx.inst;
    /* Stream 4 will take the slot of a longer, throw-away sequence. */
    stream gone;
    prompt_of(&gone, 5, fx.mf.config.vocab_size);
    start(&gone, inst[0]);
    pt_xform *x = NULL;
    pt_xform_group tp2 = {0, 2};
    CHECK_MSG(pt_xform_create(&x, inst, 2, &tp2, 1, &err) == 0, "%s", err.msg);
    uint32_t n;
    CHECK(pt_xform_snapshot(x, 0, &n, &err) == 0 && pt_xform_snapshot(x, 1, &n, &err) == 0);
    CHECK(pt_xform_copy(x, &err) == 0);
    pt_engine_seq_free(inst[0], gone.seq);
    start(&st[4], inst[0]);
    CHECK_EQ_INT(st[4].seq, gone.seq);
    decode_all(inst, 2, st, 2);
    pt_xform_move moves[N_STREAMS];
    for (int i = 0; i < N_STREAMS; i++) moves[i] = (pt_xform_move){i % 2, st[i].seq, -1, -1};
    CHECK_MSG(pt_xform_commit(x, moves, N_STREAMS, &err) == 0, "%s", err.msg);
    for (int i = 0; i < N_STREAMS; i++) {
        st[i].e = pt_xform_target(x, 0);
        st[i].seq = moves[i].dst_seq;
    }
    pt_engine *merged = pt_xform_target(x, 0);
    pt_xform_stats xs;
    pt_xform_free(x, &xs);
    CHECK(xs.pages_wasted > 0);
    decode_all(&merged, 1, st, 3);
    check_same(st, ref, 5);
    fixture_close(&fx, &merged, 1);
}

/* Memory follows the weights: with budgets, a merge frees half of each
 * device's weights and its pool gains pages; the split back reserves them
 * again, and is refused with a reason when the pool has no free page to
 * give. */
static void test_memory_follows_weights(void) {
    pt_model_file mf;
    pt_err err = {{0}};
    CHECK_MSG(pt_model_file_open(&mf, MODEL, &err) == 0, "%s", err.msg);
    /* Pools limited by the budget, not by max_seqs full contexts. */
    pt_engine_opts o = small_opts();
    o.max_seqs = 64;
    pt_fabric *probe = fabric_of(1, 0);
    pt_engine *p = engine_with(&mf, probe, 0, 1, o);
    uint64_t weights = pt_device_used(pt_fabric_device(probe, 0), PT_MEM_WEIGHTS);
    uint64_t scratch = pt_device_used(pt_fabric_device(probe, 0), PT_MEM_SCRATCH);
    pt_engine_free(p);
    pt_fabric_free(probe);

    uint64_t budget = weights + scratch + (6u << 20);
    pt_fabric *f = fabric_of(2, budget);
    pt_engine *inst[2] = {engine_with(&mf, f, 0, 1, o), engine_with(&mf, f, 1, 1, o)};
    uint64_t total0, free0;
    pt_engine_kv_pages(inst[0], 0, &total0, &free0);
    pt_xform_group tp2 = {0, 2}, tp1s[2] = {{0, 1}, {1, 1}};
    stream st[N_STREAMS];
    memset(st, 0, sizeof st);
    pt_engine *merged[1], *split[2];
    pt_xform_stats xs;
    CHECK_MSG(transform(inst, 2, &tp2, 1, st, 0, 0, PT_XFORM_FAIL_NONE, merged, &xs, &err) == 0, "%s", err.msg);
    CHECK(xs.kv_pages_reserved > 0); /* the half shards had to fit beside the full ones */
    CHECK(xs.kv_pages_gained > xs.kv_pages_reserved);
    uint64_t total1, free1;
    pt_engine_kv_pages(merged[0], 0, &total1, &free1);
    CHECK_MSG(total1 > total0, "pages %llu -> %llu", (unsigned long long)total0, (unsigned long long)total1);
    CHECK(pt_device_used(pt_fabric_device(f, 0), PT_MEM_WEIGHTS) < weights);
    /* The split needs the full shards back: with every page in use it is
     * refused, naming the device. */
    pt_kv_pool *kv0 = merged[0]->in.ranks[0].kv;
    uint32_t n_free = pt_kv_pool_free_pages(kv0);
    int64_t *held = malloc(n_free * sizeof(int64_t));
    for (uint32_t i = 0; i < n_free; i++) held[i] = pt_kv_page_alloc(kv0);
    err.msg[0] = 0;
    CHECK(transform(merged, 1, tp1s, 2, st, 0, 0, PT_XFORM_FAIL_NONE, split, NULL, &err) == PT_ERR_NOMEM);
    CHECK_MSG(strstr(err.msg, "cpu0") && strstr(err.msg, "free pages"), "%s", err.msg);
    for (uint32_t i = 0; i < n_free; i++) pt_kv_page_release(kv0, (uint32_t)held[i]);
    free(held);
    CHECK_MSG(transform(merged, 1, tp1s, 2, st, 0, 0, PT_XFORM_FAIL_NONE, split, &xs, &err) == 0, "%s", err.msg);
    CHECK(xs.kv_pages_reserved > 0);
    pt_engine_kv_pages(split[0], 0, &total1, &free1);
    CHECK_EQ_INT(total1, total0);
    check_pools_free(split, 2);
    pt_engine_free(split[0]);
    pt_engine_free(split[1]);
    pt_fabric_free(f);
    pt_model_file_close(&mf);
}

/* The protocol's states: planned -> precopy -> committed, and a failure
 * leaves only the rollback (no retry on a half-done move). */
static void test_state_machine(void) {
    fixture fx;
    if (!fixture_open(&fx, -1)) return;
    pt_err err = {{0}};
    pt_engine **inst = fx.inst;
    pt_xform_group tp2 = {0, 2};
    pt_xform *x = NULL;
    uint32_t n;
    CHECK_MSG(pt_xform_create(&x, inst, 2, &tp2, 1, &err) == 0, "%s", err.msg);
    CHECK_EQ_INT(pt_xform_get_state(x), PT_XFORM_PLANNED);
    CHECK(pt_xform_snapshot(x, 0, &n, &err) == 0 && n > 0);
    CHECK_EQ_INT(pt_xform_get_state(x), PT_XFORM_PRECOPY);
    pt_xform_fail_at(x, PT_XFORM_FAIL_PRECOPY_COMM);
    CHECK(pt_xform_copy(x, &err) != 0);
    CHECK_EQ_INT(pt_xform_get_state(x), PT_XFORM_FAILED);
    CHECK(pt_xform_snapshot(x, 1, &n, &err) == PT_ERR_INVALID && strstr(err.msg, "only the rollback"));
    pt_xform_move none[1];
    CHECK(pt_xform_commit(x, none, 0, &err) == PT_ERR_INVALID && strstr(err.msg, "failed"));
    CHECK(pt_xform_get_state(x) != PT_XFORM_COMMITTED);
    pt_xform_free(x, NULL);
    /* A commit that names the wrong sequences fails, and rolls back too. */
    CHECK_MSG(pt_xform_create(&x, inst, 2, &tp2, 1, &err) == 0, "%s", err.msg);
    CHECK(pt_xform_commit(x, none, 0, &err) == PT_ERR_INVALID && strstr(err.msg, "live sequences"));
    CHECK_EQ_INT(pt_xform_get_state(x), PT_XFORM_FAILED);
    pt_xform_free(x, NULL);
    /* And the whole way to committed, on the same sources. */
    pt_engine *merged[1];
    CHECK_MSG(transform(inst, 2, &tp2, 1, fx.st, 1, 0, PT_XFORM_FAIL_NONE, merged, NULL, &err) == 0, "%s", err.msg);
    fixture_close(&fx, merged, 1);
}

/* Plans that cannot be: each refused with its reason, nothing changed. */
static void test_plan_refused(void) {
    fixture fx;
    if (!fixture_open(&fx, -1)) return;
    pt_err err = {{0}};
    pt_engine **inst = fx.inst;
    pt_xform *x = NULL;
    pt_xform_group same[2] = {{0, 1}, {1, 1}}, short_[1] = {{0, 1}}, gap[1] = {{1, 2}};
    CHECK(pt_xform_create(&x, inst, 2, same, 2, &err) == PT_ERR_INVALID && strstr(err.msg, "nothing"));
    CHECK(pt_xform_create(&x, inst, 2, short_, 1, &err) == PT_ERR_INVALID && strstr(err.msg, "cover"));
    CHECK(pt_xform_create(&x, inst, 2, gap, 1, &err) == PT_ERR_INVALID && strstr(err.msg, "tile"));
    pt_engine *swapped[2] = {inst[1], inst[0]};
    pt_xform_group tp2 = {0, 2};
    CHECK(pt_xform_create(&x, swapped, 2, &tp2, 1, &err) == PT_ERR_INVALID && strstr(err.msg, "follow"));
    CHECK(x == NULL);
    fixture_close(&fx, inst, 2);
}

/* Prefix caches move with the layout: the prompts' full pages cached on two
 * TP1 instances, merged into a TP2 one, then split back. Each time the
 * targets hold every cached page (the merge both caches, the split each
 * chain on one target), a prompt that starts the same way finds its pages
 * there, and its logits are those of an instance that computed everything
 * (bit for bit); at the end every page is free or cached and idle. */
enum { N_CACHED = 2 };

/* Logits of the last of tokens[0, n) on e, its cached prefix reused;
 * returns the tokens reused. */
static uint32_t cached_logits(pt_engine *e, const int32_t *tokens, uint32_t n, float *logits) {
    pt_err err = {{0}};
    int s = pt_engine_seq_new(e);
    uint32_t k = pt_engine_seq_prefix_reuse(e, s, tokens, n, 0);
    pt_batch_entry b = {s, tokens + k, n - k, logits, false, false};
    CHECK_MSG(pt_engine_step(e, &b, 1, &err) == 0, "%s", err.msg);
    pt_engine_seq_prefix_publish(e, s, tokens, n);
    pt_engine_seq_free(e, s);
    return k;
}

static uint32_t cached_on(pt_engine *const *es, int n_e, const int32_t *tokens, uint32_t n, float *logits,
                          const float *want, uint32_t V) {
    uint32_t best = 0;
    for (int i = 0; i < n_e; i++) {
        uint32_t k = cached_logits(es[i], tokens, n, logits);
        CHECK_MSG(memcmp(logits, want, V * sizeof(float)) == 0, "instance %d: logits differ with %u cached", i, k);
        if (k > best) best = k;
    }
    return best;
}

static void test_caches_move_with_the_layout(void) {
    pt_model_file mf;
    pt_err err = {{0}};
    if (pt_model_file_open(&mf, MODEL, &err) != 0) {
        CHECK_MSG(0, "%s", err.msg);
        return;
    }
    uint32_t V = mf.config.vocab_size;
    pt_fabric *f = fabric_of(2, 0);
    pt_engine_opts o = small_opts();
    o.prefix_cache = true;
    pt_engine *inst[2] = {engine_with(&mf, f, 0, 1, o), engine_with(&mf, f, 1, 1, o)};
    /* Prompt i: 37 and 29 tokens (9 and 7 full pages), cached on instance i. */
    stream p[N_CACHED];
    float *l = malloc(V * sizeof(float)), *want[N_CACHED];
    pt_fabric *rf = fabric_of(1, 0);
    pt_engine *ref = engine_on(&mf, rf, 0, 1);
    for (int i = 0; i < N_CACHED; i++) {
        prompt_of(&p[i], 6 + i, V);
        p[i].n = i ? 29 : 37;
        CHECK_EQ_INT(cached_logits(inst[i], p[i].tok, p[i].n, l), 0);
        want[i] = malloc(V * sizeof(float));
        cached_logits(ref, p[i].tok, p[i].n + 1, want[i]); /* one more token: the pages reused after */
    }
    pt_engine_free(ref);
    pt_fabric_free(rf);

    pt_xform_group tp2 = {0, 2}, tp1s[2] = {{0, 1}, {1, 1}};
    pt_xform_stats xs;
    pt_engine *merged[1], *split[2];
    stream none[N_STREAMS] = {{0}};
    CHECK_MSG(transform(inst, 2, &tp2, 1, none, 0, 0, PT_XFORM_FAIL_NONE, merged, &xs, &err) == 0, "%s", err.msg);
    CHECK_EQ_INT(xs.cached_kept, 9 + 7);
    CHECK_EQ_INT(xs.cached_dropped, 0);
    for (int i = 0; i < N_CACHED; i++)
        CHECK_EQ_INT(cached_on(merged, 1, p[i].tok, p[i].n + 1, l, want[i], V), (i ? 7 : 9) * 4);
    CHECK_MSG(transform(merged, 1, tp1s, 2, none, 0, 0, PT_XFORM_FAIL_NONE, split, &xs, &err) == 0, "%s", err.msg);
    CHECK_EQ_INT(xs.cached_kept, 9 + 7); /* the lookups above filled no new page */
    for (int i = 0; i < N_CACHED; i++)
        CHECK_EQ_INT(cached_on(split, 2, p[i].tok, p[i].n + 1, l, want[i], V), (i ? 7 : 9) * 4);
    pt_engine_prefix_stats ps[2];
    pt_engine_prefix_get_stats(split[0], &ps[0]);
    pt_engine_prefix_get_stats(split[1], &ps[1]);
    CHECK(ps[0].pages > 0 && ps[1].pages > 0); /* the chains were divided */
    check_pools_free(split, 2);
    for (int i = 0; i < N_CACHED; i++) free(want[i]);
    free(l);
    for (int i = 0; i < 2; i++) pt_engine_free(split[i]);
    for (int d = 0; d < 2; d++)
        for (int c = 0; c < PT_MEM_CLASS_COUNT; c++) CHECK_EQ_INT(pt_device_used(pt_fabric_device(f, d), c), 0);
    pt_fabric_free(f);
    pt_model_file_close(&mf);
}

TEST_MAIN(TEST(test_merge_split_same_tokens), TEST(test_caches_move_with_the_layout), TEST(test_rollback_each_stage), TEST(test_request_ends_mid_move),
          TEST(test_memory_follows_weights), TEST(test_state_machine), TEST(test_plan_refused))
