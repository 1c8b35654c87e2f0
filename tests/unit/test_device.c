/* Devices (include/proteus/device.h): creation and naming of CPU and CUDA
 * devices, budget accounting by memory class through pt_device_alloc and
 * pt_device_reserve, refusals that name the device, the class and what was
 * asked for and leave the accounting as it was, the unlimited budget, the
 * one-shot injected failure, refused specs, the mapped path of large
 * allocations, and accounting from several threads at once. No GPU is
 * touched: a CUDA device here only accounts. */
#include <pthread.h>
#include <stdint.h>

#include "proteus/device.h"
#include "test.h"

#define MiB ((uint64_t)1 << 20)

static pt_device *cpu_device(int id, int threads, uint64_t budget) {
    pt_device_spec spec = {.kind = PT_DEVICE_CPU, .threads = threads, .ordinal = 0, .budget_bytes = budget};
    pt_device *d = NULL;
    pt_err err = {{0}};
    int rc = pt_device_create(&d, id, &spec, &err);
    CHECK_MSG(rc == PT_OK && d, "create cpu%d: rc %d: %s", id, rc, err.msg);
    return d;
}

static void test_create_cpu(void) {
    pt_device *d = cpu_device(3, 2, MiB);
    if (!d) return;
    CHECK(strcmp(pt_device_name(d), "cpu3") == 0);
    CHECK_EQ_INT(pt_device_kind_of(d), PT_DEVICE_CPU);
    CHECK_EQ_INT(pt_device_threads(d), 2);
    CHECK_EQ_INT(pt_device_ordinal(d), -1);
    CHECK(pt_device_pool(d) != NULL);
    if (pt_device_pool(d)) CHECK_EQ_INT(pt_pool_size(pt_device_pool(d)), 2);
    CHECK(pt_device_budget(d) == MiB);
    CHECK(pt_device_used_total(d) == 0);
    CHECK(pt_device_available(d) == MiB);
    CHECK(strcmp(pt_mem_class_name(PT_MEM_WEIGHTS), "weights") == 0);
    CHECK(strcmp(pt_mem_class_name(PT_MEM_KV), "kv") == 0);
    CHECK(strcmp(pt_mem_class_name(PT_MEM_SCRATCH), "scratch") == 0);
    pt_device_free(d);
    pt_device_free(NULL); /* no-op */
}

static void test_alloc_accounting(void) {
    pt_device *d = cpu_device(0, 2, MiB);
    if (!d) return;
    pt_err err = {{0}};
    void *w = NULL, *kv = NULL, *s = NULL;
    CHECK_EQ_INT(pt_device_alloc(d, PT_MEM_WEIGHTS, 100000, &w, "weights of layer 0", &err), PT_OK);
    CHECK_EQ_INT(pt_device_alloc(d, PT_MEM_KV, 200000, &kv, "kv pages", &err), PT_OK);
    CHECK_EQ_INT(pt_device_alloc(d, PT_MEM_SCRATCH, 3000, &s, "activations", &err), PT_OK);
    CHECK(w && kv && s);
    /* 64-byte aligned and zeroed. */
    CHECK(((uintptr_t)w & 63) == 0 && ((uintptr_t)kv & 63) == 0 && ((uintptr_t)s & 63) == 0);
    if (w) CHECK(((uint8_t *)w)[0] == 0 && ((uint8_t *)w)[99999] == 0);
    if (s) CHECK(((uint8_t *)s)[2999] == 0);
    if (w) memset(w, 0xab, 100000); /* the whole block is usable */
    CHECK(pt_device_used(d, PT_MEM_WEIGHTS) == 100000);
    CHECK(pt_device_used(d, PT_MEM_KV) == 200000);
    CHECK(pt_device_used(d, PT_MEM_SCRATCH) == 3000);
    CHECK(pt_device_used(d, PT_MEM_CLASS_COUNT) == 0); /* out of range */
    CHECK(pt_device_used_total(d) == 303000);
    CHECK(pt_device_available(d) == MiB - 303000);

    /* Over the budget: refused, named, accounting unchanged, *out NULL. */
    void *big = (void *)&err;
    memset(&err, 0, sizeof(err));
    int rc = pt_device_alloc(d, PT_MEM_KV, MiB - 303000 + 1, &big, "page table of seq 7", &err);
    CHECK_EQ_INT(rc, PT_ERR_NOMEM);
    CHECK(big == NULL);
    CHECK_MSG(strstr(err.msg, "cpu0") != NULL, "%s", err.msg);
    CHECK_MSG(strstr(err.msg, "kv") != NULL, "%s", err.msg);
    CHECK_MSG(strstr(err.msg, "page table of seq 7") != NULL, "%s", err.msg);
    CHECK(pt_device_used(d, PT_MEM_WEIGHTS) == 100000);
    CHECK(pt_device_used(d, PT_MEM_KV) == 200000);
    CHECK(pt_device_used(d, PT_MEM_SCRATCH) == 3000);
    CHECK(pt_device_used_total(d) == 303000);
    CHECK(pt_device_available(d) == MiB - 303000);

    /* Exactly what is left fits; then nothing is left. */
    void *rest = NULL;
    CHECK_EQ_INT(pt_device_alloc(d, PT_MEM_SCRATCH, MiB - 303000, &rest, "rest", &err), PT_OK);
    CHECK(pt_device_available(d) == 0);
    CHECK(pt_device_used_total(d) == MiB);
    CHECK_EQ_INT(pt_device_reserve(d, PT_MEM_WEIGHTS, 1, "one byte", &err), PT_ERR_NOMEM);
    CHECK_MSG(strstr(err.msg, "weights") != NULL && strstr(err.msg, "one byte") != NULL, "%s", err.msg);
    pt_device_release(d, PT_MEM_SCRATCH, rest, MiB - 303000);
    CHECK(pt_device_used(d, PT_MEM_SCRATCH) == 3000);

    /* A bad class is an argument error. */
    CHECK_EQ_INT(pt_device_reserve(d, PT_MEM_CLASS_COUNT, 1, "bad", &err), PT_ERR_INVALID);
    CHECK(pt_device_used_total(d) == 303000);

    /* Release gives the bytes back, class by class. */
    pt_device_release(d, PT_MEM_KV, kv, 200000);
    CHECK(pt_device_used(d, PT_MEM_KV) == 0);
    CHECK(pt_device_used_total(d) == 103000);
    CHECK(pt_device_available(d) == MiB - 103000);
    pt_device_release(d, PT_MEM_WEIGHTS, w, 100000);
    pt_device_release(d, PT_MEM_SCRATCH, s, 3000);
    pt_device_release(d, PT_MEM_SCRATCH, NULL, 3000); /* NULL: nothing released, nothing unaccounted */
    CHECK(pt_device_used_total(d) == 0);
    CHECK(pt_device_available(d) == MiB);
    pt_device_free(d);
}

static void test_unlimited(void) {
    pt_device *d = cpu_device(1, 1, 0);
    if (!d) return;
    pt_err err;
    CHECK(pt_device_budget(d) == 0);
    CHECK(pt_device_available(d) == UINT64_MAX);
    CHECK_EQ_INT(pt_device_reserve(d, PT_MEM_KV, (uint64_t)1 << 40, "a terabyte of kv", &err), PT_OK);
    CHECK(pt_device_used(d, PT_MEM_KV) == (uint64_t)1 << 40);
    CHECK(pt_device_available(d) == UINT64_MAX);
    pt_device_unreserve(d, PT_MEM_KV, (uint64_t)1 << 40);
    CHECK(pt_device_used_total(d) == 0);
    pt_device_free(d);
}

/* fail_after(n): the (n + 1)-th reservation fails, once; later ones succeed. */
static void test_fail_after(void) {
    pt_device *d = cpu_device(2, 1, MiB);
    if (!d) return;
    pt_err err;
    void *a = NULL, *b = NULL, *c = NULL, *e = NULL;
    pt_device_fail_after(d, 2);
    CHECK_EQ_INT(pt_device_alloc(d, PT_MEM_WEIGHTS, 1000, &a, "first", &err), PT_OK);
    CHECK_EQ_INT(pt_device_reserve(d, PT_MEM_KV, 2000, "second", &err), PT_OK);
    memset(&err, 0, sizeof(err));
    c = (void *)&err;
    CHECK_EQ_INT(pt_device_alloc(d, PT_MEM_SCRATCH, 3000, &c, "third", &err), PT_ERR_NOMEM);
    CHECK(c == NULL);
    CHECK_MSG(strstr(err.msg, "injected") != NULL, "%s", err.msg);
    CHECK_MSG(strstr(err.msg, "cpu2") != NULL && strstr(err.msg, "third") != NULL &&
                  strstr(err.msg, "scratch") != NULL,
              "%s", err.msg);
    CHECK(pt_device_used(d, PT_MEM_SCRATCH) == 0);
    CHECK(pt_device_used_total(d) == 3000);
    /* One-shot: the fourth and later succeed. */
    CHECK_EQ_INT(pt_device_alloc(d, PT_MEM_SCRATCH, 4000, &b, "fourth", &err), PT_OK);
    CHECK_EQ_INT(pt_device_alloc(d, PT_MEM_SCRATCH, 5000, &e, "fifth", &err), PT_OK);
    CHECK(pt_device_used_total(d) == 12000);

    /* n = 0 fails the very next one; n < 0 turns injection off. */
    pt_device_fail_after(d, 0);
    CHECK_EQ_INT(pt_device_reserve(d, PT_MEM_KV, 1, "next", &err), PT_ERR_NOMEM);
    CHECK_EQ_INT(pt_device_reserve(d, PT_MEM_KV, 1, "after", &err), PT_OK);
    pt_device_unreserve(d, PT_MEM_KV, 1);
    pt_device_fail_after(d, 1);
    pt_device_fail_after(d, -1);
    for (int i = 0; i < 4; i++) {
        CHECK_EQ_INT(pt_device_reserve(d, PT_MEM_KV, 1, "off", &err), PT_OK);
        pt_device_unreserve(d, PT_MEM_KV, 1);
    }

    pt_device_release(d, PT_MEM_WEIGHTS, a, 1000);
    pt_device_unreserve(d, PT_MEM_KV, 2000);
    pt_device_release(d, PT_MEM_SCRATCH, b, 4000);
    pt_device_release(d, PT_MEM_SCRATCH, e, 5000);
    CHECK(pt_device_used_total(d) == 0);
    pt_device_free(d);
}

/* A CUDA device only accounts here: no GPU call, no pool. */
static void test_cuda_reserve(void) {
    pt_device_spec spec = {.kind = PT_DEVICE_CUDA, .threads = 0, .ordinal = 1, .budget_bytes = 8 * MiB};
    pt_device *d = NULL;
    pt_err err = {{0}};
    CHECK_MSG(pt_device_create(&d, 0, &spec, &err) == PT_OK && d, "%s", err.msg);
    if (!d) return;
    CHECK(strcmp(pt_device_name(d), "cuda1") == 0);
    CHECK_EQ_INT(pt_device_kind_of(d), PT_DEVICE_CUDA);
    CHECK_EQ_INT(pt_device_ordinal(d), 1);
    CHECK(pt_device_pool(d) == NULL);
    CHECK(pt_device_budget(d) == 8 * MiB);
    CHECK_EQ_INT(pt_device_reserve(d, PT_MEM_WEIGHTS, 5 * MiB, "weight shard", &err), PT_OK);
    CHECK_EQ_INT(pt_device_reserve(d, PT_MEM_KV, 2 * MiB, "kv pool", &err), PT_OK);
    CHECK(pt_device_used(d, PT_MEM_WEIGHTS) == 5 * MiB);
    CHECK(pt_device_used(d, PT_MEM_KV) == 2 * MiB);
    CHECK(pt_device_available(d) == MiB);
    CHECK_EQ_INT(pt_device_reserve(d, PT_MEM_SCRATCH, MiB + 1, "logits", &err), PT_ERR_NOMEM);
    CHECK_MSG(strstr(err.msg, "cuda1") && strstr(err.msg, "scratch") && strstr(err.msg, "logits"), "%s", err.msg);
    CHECK(pt_device_used(d, PT_MEM_SCRATCH) == 0);
    CHECK(pt_device_used_total(d) == 7 * MiB);
    pt_device_unreserve(d, PT_MEM_KV, 2 * MiB);
    pt_device_unreserve(d, PT_MEM_WEIGHTS, 5 * MiB);
    CHECK(pt_device_used_total(d) == 0);
    CHECK(pt_device_available(d) == 8 * MiB);
    pt_device_free(d);
}

static void test_bad_specs(void) {
    pt_err err;
    pt_device *d = (pt_device *)&err;
    pt_device_spec spec = {.kind = PT_DEVICE_CPU, .threads = 0, .ordinal = 0, .budget_bytes = 0};
    CHECK_EQ_INT(pt_device_create(&d, 0, &spec, &err), PT_ERR_INVALID);
    CHECK(d == NULL);
    spec.threads = -1;
    CHECK_EQ_INT(pt_device_create(&d, 0, &spec, &err), PT_ERR_INVALID);
    CHECK(d == NULL);
    spec = (pt_device_spec){.kind = PT_DEVICE_CUDA, .threads = 1, .ordinal = -1, .budget_bytes = 0};
    d = (pt_device *)&err;
    CHECK_EQ_INT(pt_device_create(&d, 0, &spec, &err), PT_ERR_INVALID);
    CHECK(d == NULL);
    spec = (pt_device_spec){.kind = (pt_device_kind)7, .threads = 1, .ordinal = 0, .budget_bytes = 0};
    CHECK_EQ_INT(pt_device_create(&d, 0, &spec, &err), PT_ERR_INVALID);
    CHECK(d == NULL);
}

/* At least 64 MiB: the mapped path. Zeroed, writable, released. */
static void test_mapped(void) {
    pt_device *d = cpu_device(4, 1, 0);
    if (!d) return;
    pt_err err;
    size_t n = (size_t)(64 * MiB) + 4096 + 100;
    uint8_t *p = NULL;
    CHECK_MSG(pt_device_alloc(d, PT_MEM_KV, n, (void **)&p, "big kv pool", &err) == PT_OK && p, "%s", err.msg);
    if (p) {
        CHECK(((uintptr_t)p & 63) == 0);
        size_t at[] = {0, 1, 63, n / 2 - 1, n / 2, n / 2 + 1, n - 64, n - 2, n - 1};
        for (size_t i = 0; i < sizeof(at) / sizeof(at[0]); i++) CHECK_MSG(p[at[i]] == 0, "byte %zu", at[i]);
        p[0] = 1;
        p[n / 2] = 2;
        p[n - 1] = 3;
        CHECK(p[0] == 1 && p[n / 2] == 2 && p[n - 1] == 3);
        CHECK(pt_device_used(d, PT_MEM_KV) == n);
        pt_device_release(d, PT_MEM_KV, p, n);
    }
    CHECK(pt_device_used_total(d) == 0);
    /* Exactly the threshold takes the same path. */
    p = NULL;
    CHECK_EQ_INT(pt_device_alloc(d, PT_MEM_WEIGHTS, (size_t)(64 * MiB), (void **)&p, "64 MiB", &err), PT_OK);
    if (p) {
        CHECK(p[0] == 0 && p[32 * MiB] == 0 && p[64 * MiB - 1] == 0);
        pt_device_release(d, PT_MEM_WEIGHTS, p, (size_t)(64 * MiB));
    }
    CHECK(pt_device_used_total(d) == 0);
    pt_device_free(d);
}

typedef struct {
    pt_device *d;
    pt_mem_class c;
    int failures;
} thread_arg;

static void *reserve_loop(void *p) {
    thread_arg *a = p;
    pt_err err;
    for (int i = 0; i < 1000; i++) {
        if (pt_device_reserve(a->d, a->c, 1000, "thread", &err) != PT_OK) {
            a->failures++;
            continue;
        }
        pt_device_unreserve(a->d, a->c, 1000);
    }
    return NULL;
}

static void test_threads(void) {
    pt_device *d = cpu_device(5, 1, 10 * 1000 * 1000);
    if (!d) return;
    pthread_t th[4];
    thread_arg args[4];
    int started = 0;
    for (int t = 0; t < 4; t++) {
        /* Two threads share a class; the others use other classes. */
        args[t] = (thread_arg){d, (pt_mem_class)(t % PT_MEM_CLASS_COUNT), 0};
        if (pthread_create(&th[t], NULL, reserve_loop, &args[t]) != 0) break;
        started++;
    }
    CHECK_EQ_INT(started, 4);
    for (int t = 0; t < started; t++) {
        pthread_join(th[t], NULL);
        /* At most 4000 bytes are ever held against 10 MB: nothing is refused. */
        CHECK_EQ_INT(args[t].failures, 0);
    }
    for (int c = 0; c < PT_MEM_CLASS_COUNT; c++) CHECK(pt_device_used(d, (pt_mem_class)c) == 0);
    CHECK(pt_device_used_total(d) == 0);
    CHECK(pt_device_available(d) == 10 * 1000 * 1000);
    pt_device_free(d);
}

TEST_MAIN(TEST(test_create_cpu), TEST(test_alloc_accounting), TEST(test_unlimited), TEST(test_fail_after),
          TEST(test_cuda_reserve), TEST(test_bad_specs), TEST(test_mapped), TEST(test_threads))
