/* Instances over a fabric of devices (DESIGN.md sections 2, 3, 11): the
 * same tokens whatever the layout; each rank holds and is charged only its
 * shard; budgets and allocation failures give errors, not crashes; a comm
 * failure fails the step and changes no sequence, and the instances go on
 * over a new comm world with unchanged bits. */
#include <stdlib.h>
#include <string.h>

#include "device/fabric_internal.h"
#include "proteus/engine.h"
#include "test.h"

enum { N_PROMPT = 29, GEN = 4 };

static pt_engine_opts small_opts(void) {
    pt_engine_opts o;
    pt_engine_opts_default(&o);
    o.max_ctx = 128;
    o.max_seqs = 4;
    o.max_batch_tokens = 64;
    return o;
}

static pt_fabric *fabric_of(int n, int threads, uint64_t budget, const int *allowed, int n_allowed) {
    pt_device_spec specs[8];
    for (int i = 0; i < n; i++) specs[i] = (pt_device_spec){PT_DEVICE_CPU, threads, 0, budget};
    pt_fabric *f = NULL;
    pt_err err = {{0}};
    CHECK_MSG(pt_fabric_create(&f, specs, n, allowed, n_allowed, &err) == 0, "%s", err.msg);
    return f;
}

/* Greedy decode of sequence s: step i in [from, to) feeds the argmax of the
 * logits at l + i * V and writes the next logits at l + (i + 1) * V. */
static void decode_steps(pt_engine *e, int s, float *l, int from, int to) {
    uint32_t V = pt_engine_config(e)->vocab_size;
    pt_err err = {{0}};
    for (int g = from; g < to; g++) {
        const float *x = l + (size_t)g * V;
        int32_t best = 0;
        for (uint32_t v = 1; v < V; v++)
            if (x[v] > x[best]) best = (int32_t)v;
        pt_batch_entry b = {s, &best, 1, l + (size_t)(g + 1) * V, false, false};
        CHECK_MSG(pt_engine_step(e, &b, 1, &err) == 0, "%s", err.msg);
    }
}

/* Greedy run of a fixed prompt (prefill in chunks of 7): logits after the
 * prompt and after each generated token, into out ((GEN + 1) * V). */
static void run_greedy(pt_engine *e, float *out) {
    uint32_t V = pt_engine_config(e)->vocab_size;
    int32_t prompt[N_PROMPT];
    for (uint32_t i = 0; i < N_PROMPT; i++) prompt[i] = (int32_t)((i * 40503u + 7) % V);
    pt_err err = {{0}};
    int s = pt_engine_seq_new(e);
    for (uint32_t i = 0; i < N_PROMPT; i += 7) {
        uint32_t m = N_PROMPT - i < 7 ? N_PROMPT - i : 7;
        pt_batch_entry b = {s, prompt + i, m, i + m == N_PROMPT ? out : NULL, false, false};
        CHECK_MSG(pt_engine_step(e, &b, 1, &err) == 0, "%s", err.msg);
    }
    decode_steps(e, s, out, 0, GEN);
    pt_engine_seq_free(e, s);
}

/* Layouts [1], [2], [4] and [1, 1, 2] on one fabric of 4 devices: every
 * instance gives the bits of the first. */
static void check_layouts(const char *model) {
    pt_model_file mf;
    pt_err err = {{0}};
    if (pt_model_file_open(&mf, model, &err) != 0) {
        CHECK_MSG(0, "%s", err.msg);
        return;
    }
    int allowed[] = {1, 2, 4};
    pt_fabric *f = fabric_of(4, 1, 0, allowed, 3);
    size_t sz = (size_t)(GEN + 1) * mf.config.vocab_size;
    float *ref = calloc(sz, sizeof(float)), *got = calloc(sz, sizeof(float));
    pt_engine_opts o = small_opts();
    pt_engine *e = NULL;
    CHECK_MSG(pt_engine_create_on(&e, &mf, f, 0, 1, &o, &err) == 0, "%s", err.msg);
    if (e) run_greedy(e, ref);
    pt_engine_free(e);

    /* One instance at a time over the whole fabric, then [1, 1, 2] side by side. */
    int whole[][2] = {{0, 2}, {2, 2}, {0, 4}};
    for (int i = 0; i < 3; i++) {
        e = NULL;
        CHECK_MSG(pt_engine_create_on(&e, &mf, f, whole[i][0], whole[i][1], &o, &err) == 0, "%s", err.msg);
        if (!e) continue;
        run_greedy(e, got);
        CHECK_MSG(memcmp(ref, got, sz * sizeof(float)) == 0, "%s: TP %d on [%d, ...) differs", model, whole[i][1],
                  whole[i][0]);
        pt_engine_free(e);
    }
    pt_engine *inst[3] = {NULL, NULL, NULL};
    int first[3] = {0, 1, 2}, tp[3] = {1, 1, 2};
    for (int i = 0; i < 3; i++)
        CHECK_MSG(pt_engine_create_on(&inst[i], &mf, f, first[i], tp[i], &o, &err) == 0, "%s", err.msg);
    for (int i = 0; i < 3; i++) {
        if (!inst[i]) continue;
        memset(got, 0, sz * sizeof(float));
        run_greedy(inst[i], got);
        CHECK_MSG(memcmp(ref, got, sz * sizeof(float)) == 0, "%s: instance %d of [1, 1, 2] differs", model, i);
    }
    for (int i = 0; i < 3; i++) pt_engine_free(inst[i]);
    for (int d = 0; d < 4; d++)
        CHECK_MSG(pt_device_used_total(pt_fabric_device(f, d)) == 0, "device %d still holds %llu bytes", d,
                  (unsigned long long)pt_device_used_total(pt_fabric_device(f, d)));
    free(ref);
    free(got);
    pt_fabric_free(f);
    pt_model_file_close(&mf);
}

static void test_layouts_same_bits(void) {
    check_layouts("synthetic:tiny-gqa");
    check_layouts("synthetic:tiny-gqa:q8_0");
}

/* Misaligned or disallowed groups are refused with their numbers. */
static void test_groups_refused(void) {
    pt_model_file mf;
    pt_err err = {{0}};
    CHECK(pt_model_file_open(&mf, "synthetic:tiny-llama", &err) == 0);
    int allowed[] = {1, 2};
    pt_fabric *f = fabric_of(4, 1, 0, allowed, 2);
    pt_engine_opts o = small_opts();
    pt_engine *e = NULL;
    CHECK_EQ_INT(pt_engine_create_on(&e, &mf, f, 1, 2, &o, &err), PT_ERR_INVALID); /* not aligned */
    CHECK_MSG(strstr(err.msg, "TP 2 on devices [1, 3)") != NULL, "%s", err.msg);
    CHECK_EQ_INT(pt_engine_create_on(&e, &mf, f, 0, 4, &o, &err), PT_ERR_INVALID); /* 4 not allowed */
    CHECK(e == NULL);
    pt_fabric_free(f);
    /* TP 4 over a model of 2 KV heads. */
    int four[] = {1, 4};
    f = fabric_of(4, 1, 0, four, 2);
    CHECK_EQ_INT(pt_engine_create_on(&e, &mf, f, 0, 4, &o, &err), PT_ERR_INVALID);
    CHECK_MSG(strstr(err.msg, "2 KV heads") != NULL, "%s", err.msg);
    pt_fabric_free(f);
    /* A degree that does not divide the devices. */
    int two[] = {2};
    pt_device_spec specs[3] = {{PT_DEVICE_CPU, 1, 0, 0}, {PT_DEVICE_CPU, 1, 0, 0}, {PT_DEVICE_CPU, 1, 0, 0}};
    CHECK(pt_fabric_create(&f, specs, 3, two, 1, &err) != 0);
    CHECK_MSG(strstr(err.msg, "does not divide the 3 devices") != NULL, "%s", err.msg);
    pt_model_file_close(&mf);
}

/* TP 2 holds about half the shard bytes per device, and a budgeted device
 * gives what its shard leaves to KV pages. */
static void test_memory_accounting(void) {
    pt_model_file mf;
    pt_err err = {{0}};
    CHECK(pt_model_file_open(&mf, "synthetic:tiny-gqa:q8_0", &err) == 0);
    int allowed[] = {1, 2};
    uint64_t budget = 8ull << 20;
    pt_fabric *f = fabric_of(2, 1, budget, allowed, 2);
    pt_engine_opts o = small_opts();
    o.max_seqs = 256; /* room for every page the budget holds: memory, not the block tables, binds */
    pt_engine *e1 = NULL, *e2 = NULL;
    CHECK_MSG(pt_engine_create_on(&e1, &mf, f, 0, 1, &o, &err) == 0, "%s", err.msg);
    uint64_t shard1, rep1, total1, free1;
    pt_engine_weight_bytes(e1, 0, &shard1, &rep1);
    pt_engine_kv_pages(e1, 0, &total1, &free1);
    pt_device *d0 = pt_fabric_device(f, 0);
    CHECK_EQ_INT(pt_device_used(d0, PT_MEM_WEIGHTS), shard1 + rep1);
    CHECK(pt_device_used_total(d0) <= budget);
    CHECK(pt_device_used(d0, PT_MEM_KV) > 0);
    pt_engine_free(e1);
    CHECK_EQ_INT(pt_device_used_total(d0), 0);

    CHECK_MSG(pt_engine_create_on(&e2, &mf, f, 0, 2, &o, &err) == 0, "%s", err.msg);
    uint64_t sa, ra, sb, rb, ta, tb, fr;
    pt_engine_weight_bytes(e2, 0, &sa, &ra);
    pt_engine_weight_bytes(e2, 1, &sb, &rb);
    pt_engine_kv_pages(e2, 0, &ta, &fr);
    pt_engine_kv_pages(e2, 1, &tb, &fr);
    CHECK_EQ_INT(sa, sb); /* 4 heads and 4 chunks split evenly */
    CHECK_EQ_INT(sa + sb, shard1);
    CHECK_EQ_INT(ra, rep1);
    CHECK_EQ_INT(pt_device_used(pt_fabric_device(f, 1), PT_MEM_WEIGHTS), sb + rb);
    /* Each rank holds half the heads, in the memory its half shard leaves: more pages per head. */
    CHECK_MSG(ta + tb > total1, "TP2 pages %llu + %llu vs TP1 %llu", (unsigned long long)ta, (unsigned long long)tb,
              (unsigned long long)total1);
    pt_engine_free(e2);
    pt_fabric_free(f);

    /* A budget below the shard: refused, naming the device and the numbers. */
    f = fabric_of(1, 1, 64 << 10, NULL, 0);
    CHECK_EQ_INT(pt_engine_create_on(&e1, &mf, f, 0, 1, &o, &err), PT_ERR_NOMEM);
    CHECK_MSG(strstr(err.msg, "cpu0") && strstr(err.msg, "budget of 65536"), "%s", err.msg);
    CHECK_EQ_INT(pt_device_used_total(pt_fabric_device(f, 0)), 0);
    pt_fabric_free(f);
    pt_model_file_close(&mf);
}

/* An allocation that fails anywhere in building an instance (shard,
 * replicated weights, logits, step buffers, KV pages) is an error and
 * leaves nothing accounted. */
static void test_allocation_failures(void) {
    pt_model_file mf;
    pt_err err = {{0}};
    CHECK(pt_model_file_open(&mf, "synthetic:tiny-llama", &err) == 0);
    int allowed[] = {1, 2};
    pt_fabric *f = fabric_of(2, 1, 0, allowed, 2);
    pt_engine_opts o = small_opts();
    int failures = 0;
    for (int64_t n = 0; n < 64; n++) {
        for (int d = 0; d < 2; d++) pt_device_fail_after(pt_fabric_device(f, d), d == n % 2 ? n / 2 : -1);
        pt_engine *e = NULL;
        int rc = pt_engine_create_on(&e, &mf, f, 0, 2, &o, &err);
        for (int d = 0; d < 2; d++) pt_device_fail_after(pt_fabric_device(f, d), -1);
        if (rc == 0) {
            pt_engine_free(e);
            continue;
        }
        failures++;
        CHECK_EQ_INT(rc, PT_ERR_NOMEM);
        CHECK_MSG(strstr(err.msg, "injected") != NULL, "%s", err.msg);
        for (int d = 0; d < 2; d++) CHECK_EQ_INT(pt_device_used_total(pt_fabric_device(f, d)), 0);
    }
    /* Replicated weights, shard, step buffers and KV (data and bounds) on
     * each device, and the logits on rank 0: at least 5 + 4 points. */
    CHECK_MSG(failures >= 9, "only %d allocation points failed", failures);
    pt_fabric_free(f);
    pt_model_file_close(&mf);
}

/* A failed exchange between ranks fails the step without changing the
 * sequence, and aborts the fabric's world (NCCL's rule); the next step of
 * each instance on it runs on a new world, and the run goes on to the bits
 * of a run that never failed. */
static void test_comm_failure(void) {
    pt_model_file mf;
    pt_err err = {{0}};
    CHECK(pt_model_file_open(&mf, "synthetic:tiny-llama", &err) == 0);
    int allowed[] = {1, 2};
    pt_fabric *f = fabric_of(4, 1, 0, allowed, 2);
    pt_engine_opts o = small_opts();
    pt_engine *e = NULL, *other = NULL;
    CHECK_MSG(pt_engine_create_on(&e, &mf, f, 0, 2, &o, &err) == 0, "%s", err.msg);
    CHECK_MSG(pt_engine_create_on(&other, &mf, f, 2, 2, &o, &err) == 0, "%s", err.msg);
    if (!e || !other) {
        pt_engine_free(e);
        pt_engine_free(other);
        pt_fabric_free(f);
        pt_model_file_close(&mf);
        return;
    }
    uint32_t V = mf.config.vocab_size;
    size_t sz = (size_t)(GEN + 1) * V;
    float *ref = calloc(sz, sizeof(float)), *got = calloc(sz, sizeof(float)), *scratch = calloc(V, sizeof(float));
    run_greedy(e, ref);

    int32_t prompt[N_PROMPT];
    for (uint32_t i = 0; i < N_PROMPT; i++) prompt[i] = (int32_t)((i * 40503u + 7) % V);
    int s = pt_engine_seq_new(e);
    for (uint32_t i = 0; i < N_PROMPT; i += 7) {
        uint32_t m = N_PROMPT - i < 7 ? N_PROMPT - i : 7;
        pt_batch_entry b = {s, prompt + i, m, i + m == N_PROMPT ? got : NULL, false, false};
        CHECK_MSG(pt_engine_step(e, &b, 1, &err) == 0, "%s", err.msg);
    }
    decode_steps(e, s, got, 0, 1);
    pt_comm_world *broken = f->world;
    uint64_t total, free_before, free_after;
    pt_engine_kv_pages(e, 0, &total, &free_before);

    /* The second exchange of the next step fails. */
    pt_comm_world_fail_after(broken, 1);
    int32_t best = 0;
    for (uint32_t v = 1; v < V; v++)
        if (got[V + v] > got[V + best]) best = (int32_t)v;
    pt_batch_entry b = {s, &best, 1, got + 2 * (size_t)V, false, false};
    CHECK_EQ_INT(pt_engine_step(e, &b, 1, &err), PT_ERR_COMM);
    CHECK_MSG(strstr(err.msg, "injected") != NULL, "%s", err.msg);
    CHECK(pt_comm_is_aborted(broken));
    CHECK_EQ_INT(pt_engine_seq_len(e, s), N_PROMPT + 1);
    pt_engine_kv_pages(e, 0, &total, &free_after);
    CHECK_EQ_INT(free_after, free_before);
    pt_engine_comm_stats cs;
    pt_engine_comm_get_stats(e, &cs);
    CHECK_EQ_INT(cs.failures, 1);
    CHECK_EQ_INT(cs.renewals, 0);
    CHECK_MSG(strstr(cs.last_error, "injected") != NULL, "%s", cs.last_error);
    CHECK_EQ_INT(pt_fabric_comm_renewals(f), 0); /* nothing asked for a group yet */

    /* The same step again: on a new world, and the run ends with the reference's bits. */
    CHECK_MSG(pt_engine_step(e, &b, 1, &err) == 0, "%s", err.msg);
    CHECK(f->world != broken && !pt_comm_is_aborted(f->world));
    CHECK_EQ_INT(pt_fabric_comm_renewals(f), 1);
    decode_steps(e, s, got, 2, GEN);
    CHECK(memcmp(got, ref, sz * sizeof(float)) == 0);
    pt_engine_comm_get_stats(e, &cs);
    CHECK_EQ_INT(cs.failures, 1);
    CHECK_EQ_INT(cs.renewals, 1);

    /* The other instance held a group of the broken world too: it moves to
     * the same new world at its next step, which fails nothing. */
    int s2 = pt_engine_seq_new(other);
    pt_batch_entry b2 = {s2, prompt, 5, scratch, false, false};
    CHECK_MSG(pt_engine_step(other, &b2, 1, &err) == 0, "%s", err.msg);
    pt_engine_comm_get_stats(other, &cs);
    CHECK_EQ_INT(cs.failures, 0);
    CHECK_EQ_INT(cs.renewals, 1);
    CHECK_EQ_INT(pt_fabric_comm_renewals(f), 1);
    /* A TP1 instance has nothing to renew. */
    pt_engine_free(other);
    CHECK_MSG(pt_engine_create_on(&other, &mf, f, 2, 1, &o, &err) == 0, "%s", err.msg);
    pt_engine_comm_get_stats(other, &cs);
    CHECK(cs.failures == 0 && cs.renewals == 0 && cs.last_error[0] == 0);

    free(ref);
    free(got);
    free(scratch);
    pt_engine_free(other);
    pt_engine_free(e);
    pt_fabric_free(f);
    pt_model_file_close(&mf);
}

/* A sequence decoded for two tokens on a TP1 instance, detached, attached
 * to a TP2 instance on other devices and decoded on: the same bits as the
 * uninterrupted run. Then back to TP1; and a failed attach changes nothing. */
static void test_detach_attach(void) {
    pt_model_file mf;
    pt_err err = {{0}};
    CHECK(pt_model_file_open(&mf, "synthetic:tiny-gqa", &err) == 0);
    int allowed[] = {1, 2};
    pt_fabric *f = fabric_of(4, 1, 0, allowed, 2);
    pt_engine_opts o = small_opts();
    pt_engine *a = NULL, *b = NULL, *c = NULL;
    CHECK_MSG(pt_engine_create_on(&a, &mf, f, 0, 1, &o, &err) == 0, "%s", err.msg);
    CHECK_MSG(pt_engine_create_on(&b, &mf, f, 2, 2, &o, &err) == 0, "%s", err.msg);
    o.kv_pages = 4; /* room for one page per head: too small for the sequence */
    CHECK_MSG(pt_engine_create_on(&c, &mf, f, 1, 1, &o, &err) == 0, "%s", err.msg);
    uint32_t V = mf.config.vocab_size;
    size_t sz = (size_t)(GEN + 1) * V;
    float *ref = calloc(sz, sizeof(float)), *got = calloc(sz, sizeof(float));
    run_greedy(a, ref);

    int32_t prompt[N_PROMPT];
    for (uint32_t i = 0; i < N_PROMPT; i++) prompt[i] = (int32_t)((i * 40503u + 7) % V);
    int s = pt_engine_seq_new(a);
    pt_batch_entry pre = {s, prompt, N_PROMPT, got, false, false};
    CHECK(pt_engine_step(a, &pre, 1, &err) == 0);
    decode_steps(a, s, got, 0, 2);
    uint64_t total, free_a0, free_a1, free_b0, free_b1;
    pt_engine_kv_pages(a, 0, &total, &free_a0);
    pt_engine_kv_pages(b, 0, &total, &free_b0);

    pt_seq_state *st = NULL;
    CHECK(pt_engine_seq_detach(a, s, &st, &err) == 0);
    CHECK_EQ_INT(pt_seq_state_len(st), N_PROMPT + 2);
    CHECK_EQ_INT(pt_engine_seq_len(a, s), 0);
    int sc = -1;
    CHECK_EQ_INT(pt_engine_seq_attach(c, st, &sc, &err), PT_ERR_NOMEM); /* no room: nothing changes */
    pt_engine_kv_pages(c, 0, &total, &free_a1);
    CHECK_EQ_INT(free_a1, 4);
    int sb = -1;
    CHECK_MSG(pt_engine_seq_attach(b, st, &sb, &err) == 0, "%s", err.msg);
    CHECK_EQ_INT(pt_engine_seq_len(b, sb), N_PROMPT + 2);
    pt_engine_kv_pages(a, 0, &total, &free_a1);
    CHECK_EQ_INT(free_a1, free_a0 + 4 * ((N_PROMPT + 2 + 15) / 16)); /* the source pages came back */
    pt_engine_kv_pages(b, 0, &total, &free_b1);
    CHECK_EQ_INT(free_b0 - free_b1, 2 * ((N_PROMPT + 2 + 15) / 16)); /* rank 0 of TP2 holds 2 of 4 heads */
    decode_steps(b, sb, got, 2, 3);

    /* And back to a TP1 instance for the last token. */
    CHECK(pt_engine_seq_detach(b, sb, &st, &err) == 0);
    int sa = -1;
    CHECK_MSG(pt_engine_seq_attach(a, st, &sa, &err) == 0, "%s", err.msg);
    decode_steps(a, sa, got, 3, GEN);
    CHECK_MSG(memcmp(ref, got, sz * sizeof(float)) == 0, "the moved sequence's logits differ");

    /* Released instead of attached: the pages go back to the source. */
    pt_engine_kv_pages(a, 0, &total, &free_a0);
    CHECK(pt_engine_seq_detach(a, sa, &st, &err) == 0);
    pt_seq_state_release(st);
    pt_engine_kv_pages(a, 0, &total, &free_a1);
    CHECK_EQ_INT(free_a1, total);
    CHECK_EQ_INT(pt_engine_seq_detach(a, sa, &st, &err), PT_ERR_INVALID);
    free(ref);
    free(got);
    pt_engine_free(a);
    pt_engine_free(b);
    pt_engine_free(c);
    pt_fabric_free(f);
    pt_model_file_close(&mf);
}

TEST_MAIN(TEST(test_layouts_same_bits), TEST(test_detach_attach), TEST(test_groups_refused), TEST(test_memory_accounting),
          TEST(test_allocation_failures), TEST(test_comm_failure))
