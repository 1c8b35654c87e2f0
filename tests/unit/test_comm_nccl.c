/* comm: the NCCL communicator layer (src/comm/comm.h).
 *
 * Three stages, so that the part that needs no device runs everywhere:
 *   1. the group layout and the argument checks of world creation and of
 *      the operations, none of which reaches a device;
 *   2. exit 77 in builds without NCCL (after checking that the stub refuses
 *      to create a world) and on machines without a CUDA device;
 *   3. with one GPU or more: worlds over all GPUs and over device 0 alone;
 *      their group pools; all-reduce (f32 and bf16 sums, f32 max) against a
 *      host reference on every group, exact because every partial sum is
 *      representable; all-gather order; grouped send/recv in a ring, between
 *      pairs, within one rank, and in lists longer than one batch; health
 *      checks; a wait that times out and an explicit abort, after which every
 *      operation fails at once; an injected fault (the same rules);
 *      repeated create/destroy that leaves device memory where it was.
 * R = world rank, i = group rank, k = element. */
#include "comm/comm.h"
#include "test.h"

#ifdef PROTEUS_HAVE_NCCL
#include <cuda_runtime_api.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
/* The CUDA driver maps memory in the range ASan reserves as its shadow gap,
 * and the driver, runtime and NCCL keep some allocations until exit on
 * purpose. Without these an ASan build of this test cannot run on a GPU
 * machine. The suppressions name only those libraries: a leak whose stack
 * does not pass through them is still reported. */
const char *__asan_default_options(void) { return "protect_shadow_gap=0"; }
const char *__lsan_default_suppressions(void) { return "leak:libcuda.so\nleak:libcudart.so\nleak:libnccl.so\n"; }
#endif
#endif

/* ---- stage 1: no device ---- */

static void test_layout_eight_ranks(void) {
    pt_comm_group_desc g[32];
    const int degrees[] = {1, 2, 4, 8};
    pt_err err = {{0}};
    int n = pt_comm_layout(8, degrees, 4, g, 32, &err);
    CHECK_EQ_INT(n, 8 + 4 + 2 + 1);
    if (n != 15) return;
    int k = 0;
    for (int d = 1; d <= 8; d *= 2)
        for (int first = 0; first < 8; first += d, k++) {
            CHECK_EQ_INT(g[k].size, d);
            CHECK_EQ_INT(g[k].first, first);
        }
    /* Counting only gives the same number. */
    CHECK_EQ_INT(pt_comm_layout(8, degrees, 4, NULL, 0, &err), 15);
}

static void test_layout_caps_sorts_and_adds_world(void) {
    pt_comm_group_desc g[32];
    pt_err err = {{0}};
    /* Degrees above the world are dropped; the order of the list does not matter. */
    const int unordered[] = {8, 4, 1, 2};
    int n = pt_comm_layout(4, unordered, 4, g, 32, &err);
    CHECK_EQ_INT(n, 4 + 2 + 1);
    if (n == 7) {
        CHECK(g[0].first == 0 && g[0].size == 1);
        CHECK(g[3].first == 3 && g[3].size == 1);
        CHECK(g[4].first == 0 && g[4].size == 2);
        CHECK(g[5].first == 2 && g[5].size == 2);
        CHECK(g[6].first == 0 && g[6].size == 4);
    }
    /* One device: only the world, which is also the one TP1 group. */
    const int all[] = {1, 2, 4, 8};
    n = pt_comm_layout(1, all, 4, g, 32, &err);
    CHECK_EQ_INT(n, 1);
    CHECK(g[0].first == 0 && g[0].size == 1);
    /* The world is added when its degree is not allowed. */
    const int one[] = {1};
    n = pt_comm_layout(2, one, 1, g, 32, &err);
    CHECK_EQ_INT(n, 3);
    CHECK(g[2].first == 0 && g[2].size == 2);
    const int odd[] = {1, 2, 3};
    n = pt_comm_layout(6, odd, 3, g, 32, &err);
    CHECK_EQ_INT(n, 6 + 3 + 2 + 1);
    if (n == 12) {
        CHECK(g[9].first == 0 && g[9].size == 3);
        CHECK(g[10].first == 3 && g[10].size == 3);
        CHECK(g[11].first == 0 && g[11].size == 6);
    }
    /* No degrees at all: the world only. */
    n = pt_comm_layout(4, NULL, 0, g, 32, &err);
    CHECK_EQ_INT(n, 1);
    CHECK(g[0].first == 0 && g[0].size == 4);
}

static void test_layout_rejects(void) {
    pt_comm_group_desc g[4];
    pt_err err = {{0}};
    const int not_dividing[] = {1, 2, 4};
    CHECK_EQ_INT(pt_comm_layout(6, not_dividing, 3, g, 4, &err), PT_ERR_INVALID);
    CHECK_MSG(strstr(err.msg, "TP degree 4 does not divide the 6 devices") != NULL, "%s", err.msg);
    const int twice[] = {2, 1, 2};
    CHECK_EQ_INT(pt_comm_layout(4, twice, 3, g, 4, &err), PT_ERR_INVALID);
    CHECK_MSG(strstr(err.msg, "listed twice") != NULL, "%s", err.msg);
    const int zero[] = {0};
    CHECK_EQ_INT(pt_comm_layout(4, zero, 1, g, 4, &err), PT_ERR_INVALID);
    const int negative[] = {-2};
    CHECK_EQ_INT(pt_comm_layout(4, negative, 1, g, 4, &err), PT_ERR_INVALID);
    CHECK_EQ_INT(pt_comm_layout(0, NULL, 0, g, 4, &err), PT_ERR_INVALID);
    CHECK_EQ_INT(pt_comm_layout(PT_COMM_MAX_RANKS + 1, NULL, 0, g, 4, &err), PT_ERR_INVALID);
    CHECK_EQ_INT(pt_comm_layout(4, NULL, 2, g, 4, &err), PT_ERR_INVALID);
    /* More groups than the caller has room for. */
    const int one[] = {1};
    CHECK_EQ_INT(pt_comm_layout(8, one, 1, g, 4, &err), PT_ERR_INVALID);
    /* err may be NULL. */
    CHECK_EQ_INT(pt_comm_layout(6, not_dividing, 3, g, 4, NULL), PT_ERR_INVALID);
}

static void test_dtype_sizes(void) {
    CHECK_EQ_INT(pt_comm_dtype_size(PT_COMM_U8), 1);
    CHECK_EQ_INT(pt_comm_dtype_size(PT_COMM_BF16), 2);
    CHECK_EQ_INT(pt_comm_dtype_size(PT_COMM_F16), 2);
    CHECK_EQ_INT(pt_comm_dtype_size(PT_COMM_F32), 4);
    CHECK_EQ_INT(pt_comm_dtype_size(PT_COMM_I64), 8);
    CHECK_EQ_INT(pt_comm_dtype_size(PT_COMM_DTYPE_COUNT), 0);
}

/* In NCCL builds every one of these is rejected before any device call
 * (this machine may have none); the stub refuses them all as unsupported. */
#ifdef PROTEUS_HAVE_NCCL
#define EXPECT_BAD_CONFIG PT_ERR_INVALID
#else
#define EXPECT_BAD_CONFIG PT_ERR_UNSUPPORTED
#endif

static void expect_create_fails(const pt_comm_config *cfg, const char *needle) {
    pt_comm_world *w = (pt_comm_world *)&w; /* must be overwritten with NULL */
    pt_err err = {{0}};
    CHECK_EQ_INT(pt_comm_world_create_nccl(&w, cfg, &err), EXPECT_BAD_CONFIG);
    CHECK(w == NULL);
#ifdef PROTEUS_HAVE_NCCL
    CHECK_MSG(strstr(err.msg, needle) != NULL, "'%s' not in '%s'", needle, err.msg);
#else
    (void)needle;
    CHECK_MSG(strstr(err.msg, "built without NCCL") != NULL, "%s", err.msg);
#endif
}

static void test_create_rejects_bad_config(void) {
    const int four[] = {0, 1, 2, 3};
    const int degrees[] = {1, 2, 4, 8};
    pt_comm_config cfg = {four, 4, degrees, 4, 0.0};
    pt_err err = {{0}};
    CHECK_EQ_INT(pt_comm_world_create_nccl(NULL, &cfg, &err), EXPECT_BAD_CONFIG);
    expect_create_fails(NULL, "no configuration");

    pt_comm_config c = cfg;
    c.n_devices = 0;
    expect_create_fails(&c, "0 devices");
    c = cfg;
    c.n_devices = PT_COMM_MAX_RANKS + 1;
    expect_create_fails(&c, "devices (need 1 to");
    c = cfg;
    c.devices = NULL;
    expect_create_fails(&c, "no device list");
    const int dup[] = {0, 1, 1, 3};
    c = cfg;
    c.devices = dup;
    expect_create_fails(&c, "device 1 is listed for ranks 1 and 2");
    const int neg[] = {0, -1, 2, 3};
    c = cfg;
    c.devices = neg;
    expect_create_fails(&c, "negative");
    const int three[] = {1, 3};
    c = cfg;
    c.tp_degrees = three;
    c.n_tp_degrees = 2;
    expect_create_fails(&c, "TP degree 3 does not divide the 4 devices");
    c = cfg;
    c.timeout_s = -1.0;
    expect_create_fails(&c, "timeout");
    c = cfg;
    c.timeout_s = NAN;
    expect_create_fails(&c, "timeout");
}

/* Handles that do not exist: lookups give NULL, operations an error. */
static void test_null_handles(void) {
    pt_err err = {{0}};
    void *streams[1] = {NULL};
    void *bufs[1] = {NULL};
    CHECK(pt_comm_group_find(NULL, 0, 1) == NULL);
    CHECK(pt_comm_group_at(NULL, 0) == NULL);
    CHECK_EQ_INT(pt_comm_group_count(NULL), 0);
    CHECK_EQ_INT(pt_comm_world_size(NULL), 0);
    CHECK_EQ_INT(pt_comm_world_device(NULL, 0), -1);
    CHECK_EQ_INT(pt_comm_group_size(NULL), 0);
    CHECK(!pt_comm_is_aborted(NULL));
    pt_comm_world_destroy(NULL);
    pt_comm_abort(NULL, "nothing");
    CHECK(pt_comm_all_reduce(NULL, bufs, bufs, 1, PT_COMM_F32, PT_COMM_SUM, streams, &err) < 0);
    CHECK(pt_comm_all_gather(NULL, bufs, bufs, 1, PT_COMM_F32, streams, &err) < 0);
    CHECK(pt_comm_send_recv(NULL, NULL, 0, streams, &err) < 0);
    CHECK(pt_comm_wait(NULL, streams, 1.0, &err) < 0);
    CHECK(pt_comm_check(NULL, &err) < 0);
#ifdef PROTEUS_HAVE_NCCL
    CHECK_EQ_INT(pt_comm_all_reduce(NULL, bufs, bufs, 1, PT_COMM_F32, PT_COMM_SUM, streams, &err), PT_ERR_INVALID);
    CHECK_EQ_INT(pt_comm_wait(NULL, streams, 1.0, NULL), PT_ERR_INVALID);
    CHECK_EQ_INT(pt_comm_check(NULL, &err), PT_ERR_INVALID);
#endif
}

#ifndef PROTEUS_HAVE_NCCL

int main(void) {
    static const test_case tests[] = {
        TEST(test_layout_eight_ranks), TEST(test_layout_caps_sorts_and_adds_world), TEST(test_layout_rejects),
        TEST(test_dtype_sizes), TEST(test_create_rejects_bad_config), TEST(test_null_handles),
    };
    int rc = test_run_all(tests, sizeof(tests) / sizeof(tests[0]));
    if (rc) return rc;
    TEST_SKIP("built without NCCL: the communicator tests need PROTEUS_HAVE_NCCL and a GPU");
}

#else

/* ---- stage 3: GPUs ---- */

#define CUDA_REQUIRE(call)                                                                         \
    do {                                                                                           \
        cudaError_t e_ = (call);                                                                   \
        if (e_ != cudaSuccess) {                                                                   \
            fprintf(stderr, "%s:%d: %s failed: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

static int n_gpus;

/* A world and one stream per world rank. */
typedef struct {
    pt_comm_world *w;
    int n;
    cudaStream_t streams[PT_COMM_MAX_RANKS]; /* (n) on each rank's device */
} fixture;

/* The TP degrees {1, 2, 4, 8} that divide n, like a real configuration
 * for a machine of n GPUs. */
static int allowed_degrees(int n, int *out) {
    int k = 0;
    for (int d = 1; d <= 8; d *= 2)
        if (d <= n && n % d == 0) out[k++] = d;
    return k;
}

static bool fixture_open(fixture *f, const int *devices, int n) {
    memset(f, 0, sizeof(*f));
    int degrees[4];
    int nd = allowed_degrees(n, degrees);
    pt_comm_config cfg = {devices, n, degrees, nd, 60.0};
    pt_err err = {{0}};
    int rc = pt_comm_world_create_nccl(&f->w, &cfg, &err);
    CHECK_MSG(rc == 0, "create over %d devices: %s", n, err.msg);
    if (rc) return false;
    f->n = n;
    for (int r = 0; r < n; r++) {
        CUDA_REQUIRE(cudaSetDevice(devices[r]));
        CUDA_REQUIRE(cudaStreamCreateWithFlags(&f->streams[r], cudaStreamNonBlocking));
    }
    return true;
}

static void fixture_close(fixture *f) {
    for (int r = 0; r < f->n; r++) {
        CUDA_REQUIRE(cudaStreamSynchronize(f->streams[r]));
        CUDA_REQUIRE(cudaStreamDestroy(f->streams[r]));
    }
    pt_comm_world_destroy(f->w);
    f->w = NULL;
}

static void group_streams(const fixture *f, const pt_comm_group *g, void **out) {
    for (int i = 0; i < pt_comm_group_size(g); i++) out[i] = f->streams[pt_comm_group_first(g) + i];
}

static void *dev_alloc(const fixture *f, int rank, size_t bytes) {
    void *p = NULL;
    CUDA_REQUIRE(cudaSetDevice(pt_comm_world_device(f->w, rank)));
    CUDA_REQUIRE(cudaMalloc(&p, bytes));
    CUDA_REQUIRE(cudaMemset(p, 0, bytes));
    return p;
}

static void dev_free(void *p) { CUDA_REQUIRE(cudaFree(p)); }

/* Uploads and memsets run on the legacy default stream, which the
 * fixture's non-blocking streams do not wait for: finish them first. */
static void settle(const fixture *f) {
    for (int r = 0; r < f->n; r++) {
        CUDA_REQUIRE(cudaSetDevice(pt_comm_world_device(f->w, r)));
        CUDA_REQUIRE(cudaDeviceSynchronize());
    }
}

static void to_dev(void *dst, const void *src, size_t bytes) {
    CUDA_REQUIRE(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
}

static void to_host(void *dst, const void *src, size_t bytes) {
    CUDA_REQUIRE(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
}

/* Per-rank data whose sums over any ranks are exact in the type: f32
 * multiples of 0.5 below 2^12, bf16 integers 0..3 (64 ranks sum to at
 * most 192, and bf16 holds every integer up to 256). */
static float value_f32(int r, size_t k) { return (float)((k * 7 + (size_t)r * 3) % 61) * 0.5f + (float)r; }
static float value_bf16(int r, size_t k) { return (float)((k + 2 * (size_t)r) % 4); }

static uint16_t f32_to_bf16(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    return (uint16_t)(u >> 16); /* exact for the small integers used here */
}

static float bf16_to_f32(uint16_t b) {
    uint32_t u = (uint32_t)b << 16;
    float x;
    memcpy(&x, &u, 4);
    return x;
}

#define COUNT 1027 /* elements per rank: not a multiple of anything convenient */

static void check_all_reduce_on(fixture *f, pt_comm_group *g) {
    int d = pt_comm_group_size(g), first = pt_comm_group_first(g);
    void *streams[PT_COMM_MAX_RANKS], *in[PT_COMM_MAX_RANKS], *out[PT_COMM_MAX_RANKS], *half[PT_COMM_MAX_RANKS];
    group_streams(f, g, streams);
    float *host = malloc(COUNT * sizeof(float));
    uint16_t *hb = malloc(COUNT * sizeof(uint16_t));
    for (int i = 0; i < d; i++) {
        in[i] = dev_alloc(f, first + i, COUNT * sizeof(float));
        out[i] = dev_alloc(f, first + i, COUNT * sizeof(float));
        half[i] = dev_alloc(f, first + i, COUNT * sizeof(uint16_t));
        for (size_t k = 0; k < COUNT; k++) {
            host[k] = value_f32(first + i, k);
            hb[k] = f32_to_bf16(value_bf16(first + i, k));
        }
        to_dev(in[i], host, COUNT * sizeof(float));
        to_dev(half[i], hb, COUNT * sizeof(uint16_t));
    }
    settle(f);
    pt_err err = {{0}};

    /* f32 sum, out of place, then max in place over the inputs (the sum left them unchanged). */
    int rc = pt_comm_all_reduce(g, in, out, COUNT, PT_COMM_F32, PT_COMM_SUM, streams, &err);
    CHECK_MSG(rc == 0, "all-reduce f32 on [%d, %d): %s", first, first + d, err.msg);
    rc = pt_comm_all_reduce(g, in, in, COUNT, PT_COMM_F32, PT_COMM_MAX, streams, &err);
    CHECK_MSG(rc == 0, "all-reduce max: %s", err.msg);
    /* bf16 sum in place. */
    rc = pt_comm_all_reduce(g, half, half, COUNT, PT_COMM_BF16, PT_COMM_SUM, streams, &err);
    CHECK_MSG(rc == 0, "all-reduce bf16: %s", err.msg);
    rc = pt_comm_wait(g, streams, 0, &err);
    CHECK_MSG(rc == 0, "wait: %s", err.msg);

    for (int i = 0; i < d; i++) {
        int bad_sum = 0, bad_max = 0, bad_bf16 = 0;
        to_host(host, out[i], COUNT * sizeof(float));
        for (size_t k = 0; k < COUNT; k++) {
            double sum = 0;
            for (int j = 0; j < d; j++) sum += value_f32(first + j, k);
            bad_sum += host[k] != (float)sum;
        }
        to_host(host, in[i], COUNT * sizeof(float));
        for (size_t k = 0; k < COUNT; k++) {
            float mx = value_f32(first, k);
            for (int j = 1; j < d; j++) mx = fmaxf(mx, value_f32(first + j, k));
            bad_max += host[k] != mx;
        }
        to_host(hb, half[i], COUNT * sizeof(uint16_t));
        for (size_t k = 0; k < COUNT; k++) {
            float sum = 0;
            for (int j = 0; j < d; j++) sum += value_bf16(first + j, k);
            bad_bf16 += bf16_to_f32(hb[k]) != sum;
        }
        CHECK_MSG(bad_sum == 0, "group [%d, %d) rank %d: %d f32 sums wrong", first, first + d, i, bad_sum);
        CHECK_MSG(bad_max == 0, "group [%d, %d) rank %d: %d f32 maxima wrong", first, first + d, i, bad_max);
        CHECK_MSG(bad_bf16 == 0, "group [%d, %d) rank %d: %d bf16 sums wrong", first, first + d, i, bad_bf16);
        dev_free(in[i]);
        dev_free(out[i]);
        dev_free(half[i]);
    }
    free(host);
    free(hb);
}

static void check_all_gather_on(fixture *f, pt_comm_group *g) {
    int d = pt_comm_group_size(g), first = pt_comm_group_first(g);
    const size_t count = 517;
    void *streams[PT_COMM_MAX_RANKS], *in[PT_COMM_MAX_RANKS], *out[PT_COMM_MAX_RANKS], *inplace[PT_COMM_MAX_RANKS];
    void *inplace_send[PT_COMM_MAX_RANKS];
    group_streams(f, g, streams);
    float *host = malloc((size_t)d * count * sizeof(float));
    for (int i = 0; i < d; i++) {
        in[i] = dev_alloc(f, first + i, count * sizeof(float));
        out[i] = dev_alloc(f, first + i, (size_t)d * count * sizeof(float));
        inplace[i] = dev_alloc(f, first + i, (size_t)d * count * sizeof(float));
        for (size_t k = 0; k < count; k++) host[k] = (float)((first + i) * 1000 + (int)k);
        to_dev(in[i], host, count * sizeof(float));
        inplace_send[i] = (float *)inplace[i] + (size_t)i * count;
        to_dev(inplace_send[i], host, count * sizeof(float));
    }
    settle(f);
    pt_err err = {{0}};
    int rc = pt_comm_all_gather(g, in, out, count, PT_COMM_F32, streams, &err);
    CHECK_MSG(rc == 0, "all-gather on [%d, %d): %s", first, first + d, err.msg);
    rc = pt_comm_all_gather(g, inplace_send, inplace, count, PT_COMM_F32, streams, &err);
    CHECK_MSG(rc == 0, "all-gather in place: %s", err.msg);
    rc = pt_comm_wait(g, streams, 0, &err);
    CHECK_MSG(rc == 0, "wait: %s", err.msg);
    for (int i = 0; i < d; i++) {
        for (int pass = 0; pass < 2; pass++) {
            to_host(host, pass ? inplace[i] : out[i], (size_t)d * count * sizeof(float));
            int bad = 0;
            for (int j = 0; j < d; j++)
                for (size_t k = 0; k < count; k++) bad += host[(size_t)j * count + k] != (float)((first + j) * 1000 + (int)k);
            CHECK_MSG(bad == 0, "group [%d, %d) rank %d%s: %d elements out of place", first, first + d, i,
                      pass ? " (in place)" : "", bad);
        }
        dev_free(in[i]);
        dev_free(out[i]);
        dev_free(inplace[i]);
    }
    free(host);
}

/* Every group of the pool holds exactly the expected (first, size) pairs,
 * and lookups of groups that were not made give NULL. */
static void check_pool(fixture *f) {
    int n = f->n, degrees[4];
    int nd = allowed_degrees(n, degrees);
    int expected = 0;
    bool world_listed = false;
    for (int j = 0; j < nd; j++) {
        expected += n / degrees[j];
        world_listed |= degrees[j] == n;
    }
    if (!world_listed) expected++;
    CHECK_EQ_INT(pt_comm_world_size(f->w), n);
    CHECK_EQ_INT(pt_comm_group_count(f->w), expected);
    for (int j = 0; j < nd; j++)
        for (int first = 0; first < n; first += degrees[j]) {
            pt_comm_group *g = pt_comm_group_find(f->w, first, degrees[j]);
            CHECK_MSG(g != NULL, "group [%d, %d) missing", first, first + degrees[j]);
            CHECK_EQ_INT(pt_comm_group_first(g), first);
            CHECK_EQ_INT(pt_comm_group_size(g), degrees[j]);
        }
    CHECK(pt_comm_group_find(f->w, 0, n) != NULL);
    CHECK(pt_comm_group_find(f->w, 1, 2) == NULL); /* not aligned */
    if (n != 3) CHECK(pt_comm_group_find(f->w, 0, 3) == NULL); /* degree not allowed */
    CHECK(pt_comm_group_find(f->w, 0, n + 1) == NULL);
    CHECK(pt_comm_group_find(f->w, -1, 1) == NULL);
    CHECK(pt_comm_group_find(f->w, n, 1) == NULL);
    CHECK(pt_comm_group_at(f->w, expected) == NULL);
    pt_err err = {{0}};
    CHECK_MSG(pt_comm_check(f->w, &err) == 0, "%s", err.msg);
}

static int all_devices[PT_COMM_MAX_RANKS];

/* Runs fn on a world over all GPUs, then on a world over device 0 alone
 * (the one-rank communicator of a single-GPU machine). */
static void on_both_worlds(void (*fn)(fixture *)) {
    const int zero[1] = {0};
    fixture f;
    if (fixture_open(&f, all_devices, n_gpus)) {
        fn(&f);
        fixture_close(&f);
    }
    if (fixture_open(&f, zero, 1)) {
        fn(&f);
        fixture_close(&f);
    }
}

static void pool_body(fixture *f) { check_pool(f); }
static void test_pool(void) { on_both_worlds(pool_body); }

static void test_create_rejects_missing_device(void) {
    const int missing[1] = {n_gpus};
    pt_comm_config cfg = {missing, 1, NULL, 0, 0.0};
    pt_comm_world *w = NULL;
    pt_err err = {{0}};
    CHECK_EQ_INT(pt_comm_world_create_nccl(&w, &cfg, &err), PT_ERR_INVALID);
    CHECK(w == NULL);
    CHECK_MSG(strstr(err.msg, "does not exist") != NULL, "%s", err.msg);
}

static void all_reduce_body(fixture *f) {
    for (int gi = 0; gi < pt_comm_group_count(f->w); gi++) check_all_reduce_on(f, pt_comm_group_at(f->w, gi));
}
static void test_all_reduce(void) { on_both_worlds(all_reduce_body); }

static void all_gather_body(fixture *f) {
    for (int gi = 0; gi < pt_comm_group_count(f->w); gi++) check_all_gather_on(f, pt_comm_group_at(f->w, gi));
}
static void test_all_gather(void) { on_both_worlds(all_gather_body); }

static uint8_t pattern(int r, int which, size_t k) { return (uint8_t)(r * 31 + which * 7 + (int)(k % 251)); }

/* On the world group: a ring (R -> R+1) of a page-sized buffer and a
 * second, small buffer to the same peer (matched in list order), plus a copy
 * within each rank. On one GPU the ring is a copy within rank 0. */
static void send_recv_ring_body(fixture *f) {
    int n = f->n;
    pt_comm_group *g = pt_comm_group_find(f->w, 0, n);
    CHECK(g != NULL);
    if (!g) return;
    const size_t big = 3 * 4096 + 5, small = 100;
    void *streams[PT_COMM_MAX_RANKS], *src[PT_COMM_MAX_RANKS][3], *dst[PT_COMM_MAX_RANKS][3];
    group_streams(f, g, streams);
    uint8_t *host = malloc(big);
    for (int r = 0; r < n; r++)
        for (int which = 0; which < 3; which++) {
            size_t bytes = which == 1 ? small : big;
            src[r][which] = dev_alloc(f, r, bytes);
            dst[r][which] = dev_alloc(f, r, bytes);
            for (size_t k = 0; k < bytes; k++) host[k] = pattern(r, which, k);
            to_dev(src[r][which], host, bytes);
        }
    pt_comm_transfer t[3 * PT_COMM_MAX_RANKS];
    size_t nt = 0;
    for (int r = 0; r < n; r++) {
        int next = (r + 1) % n;
        t[nt++] = (pt_comm_transfer){r, next, src[r][0], dst[next][0], big};
        t[nt++] = (pt_comm_transfer){r, next, src[r][1], dst[next][1], small};
        t[nt++] = (pt_comm_transfer){r, r, src[r][2], dst[r][2], big};
    }
    settle(f);
    pt_err err = {{0}};
    int rc = pt_comm_send_recv(g, t, nt, streams, &err);
    CHECK_MSG(rc == 0, "send/recv ring: %s", err.msg);
    rc = pt_comm_wait(g, streams, 0, &err);
    CHECK_MSG(rc == 0, "wait: %s", err.msg);
    for (int r = 0; r < n; r++) {
        int prev = (r + n - 1) % n;
        for (int which = 0; which < 3; which++) {
            size_t bytes = which == 1 ? small : big;
            int from = which == 2 ? r : prev;
            to_host(host, dst[r][which], bytes);
            int bad = 0;
            for (size_t k = 0; k < bytes; k++) bad += host[k] != pattern(from, which, k);
            CHECK_MSG(bad == 0, "rank %d buffer %d: %d bytes differ from rank %d's", r, which, bad, from);
            dev_free(src[r][which]);
            dev_free(dst[r][which]);
        }
    }
    free(host);

    /* A transfer naming a rank outside the group is refused before anything
     * is issued, and the world stays healthy. */
    pt_comm_transfer bad = {0, n, (void *)1, (void *)1, 1};
    CHECK_EQ_INT(pt_comm_send_recv(g, &bad, 1, streams, &err), PT_ERR_INVALID);
    pt_comm_transfer overlap = {0, 0, (void *)4096, (void *)4100, 64};
    CHECK_EQ_INT(pt_comm_send_recv(g, &overlap, 1, streams, &err), PT_ERR_INVALID);
    CHECK_EQ_INT(pt_comm_all_reduce(g, streams, streams, 1, PT_COMM_DTYPE_COUNT, PT_COMM_SUM, streams, &err),
                 PT_ERR_INVALID);
    CHECK(!pt_comm_is_aborted(f->w));
    CHECK_MSG(pt_comm_check(f->w, &err) == 0, "%s", err.msg);
}
static void test_send_recv_ring(void) { on_both_worlds(send_recv_ring_body); }

/* A list longer than one batch: many 64-byte chunks of one buffer per
 * rank, each to the next rank (within rank 0 on one GPU), chunk c landing
 * at chunk c of the receiver. Then, on every group of two, a swap. */
static void send_recv_many_body(fixture *f) {
    int n = f->n;
    pt_comm_group *g = pt_comm_group_find(f->w, 0, n);
    if (!g) return;
    const size_t chunks = PT_COMM_P2P_BATCH * 2 + 77, chunk = 64, bytes = chunks * chunk;
    void *streams[PT_COMM_MAX_RANKS], *src[PT_COMM_MAX_RANKS], *dst[PT_COMM_MAX_RANKS];
    group_streams(f, g, streams);
    uint8_t *host = malloc(bytes);
    for (int r = 0; r < n; r++) {
        src[r] = dev_alloc(f, r, bytes);
        dst[r] = dev_alloc(f, r, bytes);
        for (size_t k = 0; k < bytes; k++) host[k] = pattern(r, 5, k);
        to_dev(src[r], host, bytes);
    }
    settle(f);
    pt_comm_transfer *t = malloc((size_t)n * chunks * sizeof(*t));
    size_t nt = 0;
    /* Interleaved by chunk, as a page mover would emit them. */
    for (size_t c = 0; c < chunks; c++)
        for (int r = 0; r < n; r++) {
            int next = (r + 1) % n;
            t[nt++] = (pt_comm_transfer){r, next, (uint8_t *)src[r] + c * chunk, (uint8_t *)dst[next] + c * chunk, chunk};
        }
    pt_err err = {{0}};
    int rc = pt_comm_send_recv(g, t, nt, streams, &err);
    CHECK_MSG(rc == 0, "send/recv of %zu transfers: %s", nt, err.msg);
    rc = pt_comm_wait(g, streams, 0, &err);
    CHECK_MSG(rc == 0, "wait: %s", err.msg);
    for (int r = 0; r < n; r++) {
        int prev = (r + n - 1) % n;
        to_host(host, dst[r], bytes);
        int bad = 0;
        for (size_t k = 0; k < bytes; k++) bad += host[k] != pattern(prev, 5, k);
        CHECK_MSG(bad == 0, "rank %d: %d bytes differ after %zu transfers", r, bad, nt);
    }
    free(t);

    /* Swap within every group of two (there are some when 2 divides n):
     * the group's rank numbers, not the world's. */
    for (int first = 0; n % 2 == 0 && first + 2 <= n; first += 2) {
        pt_comm_group *pair = pt_comm_group_find(f->w, first, 2);
        CHECK(pair != NULL);
        if (!pair) continue;
        void *ps[2];
        group_streams(f, pair, ps);
        pt_comm_transfer swap[2] = {
            {0, 1, src[first], dst[first + 1], bytes},
            {1, 0, src[first + 1], dst[first], bytes},
        };
        rc = pt_comm_send_recv(pair, swap, 2, ps, &err);
        CHECK_MSG(rc == 0, "swap in [%d, %d): %s", first, first + 2, err.msg);
        rc = pt_comm_wait(pair, ps, 0, &err);
        CHECK_MSG(rc == 0, "wait: %s", err.msg);
        for (int i = 0; i < 2; i++) {
            to_host(host, dst[first + i], bytes);
            int bad = 0;
            for (size_t k = 0; k < bytes; k++) bad += host[k] != pattern(first + 1 - i, 5, k);
            CHECK_MSG(bad == 0, "swap: rank %d has %d wrong bytes", first + i, bad);
        }
    }
    for (int r = 0; r < n; r++) {
        dev_free(src[r]);
        dev_free(dst[r]);
    }
    free(host);
}
static void test_send_recv_many(void) { on_both_worlds(send_recv_many_body); }

static void CUDART_CB sleep_on_stream(void *us) { usleep(*(useconds_t *)us); }

/* Every operation on an aborted world fails at once with the reason. */
static void check_everything_fails(fixture *f, const char *reason) {
    pt_comm_group *g = pt_comm_group_find(f->w, 0, f->n);
    void *streams[PT_COMM_MAX_RANKS], *bufs[PT_COMM_MAX_RANKS];
    group_streams(f, g, streams);
    for (int r = 0; r < f->n; r++) bufs[r] = (void *)64; /* never touched */
    pt_err err = {{0}};
    double t0 = pt_now();
    CHECK(pt_comm_is_aborted(f->w));
    CHECK_EQ_INT(pt_comm_all_reduce(g, bufs, bufs, 16, PT_COMM_F32, PT_COMM_SUM, streams, &err), PT_ERR_COMM_ABORTED);
    CHECK_MSG(strstr(err.msg, reason) != NULL, "'%s' not in '%s'", reason, err.msg);
    CHECK_EQ_INT(pt_comm_all_gather(g, bufs, bufs, 16, PT_COMM_F32, streams, &err), PT_ERR_COMM_ABORTED);
    pt_comm_transfer t = {0, 0, bufs[0], bufs[0], 16};
    CHECK_EQ_INT(pt_comm_send_recv(g, &t, 1, streams, &err), PT_ERR_COMM_ABORTED);
    CHECK_EQ_INT(pt_comm_wait(g, streams, 5.0, &err), PT_ERR_COMM_ABORTED);
    CHECK_EQ_INT(pt_comm_check(f->w, &err), PT_ERR_COMM_ABORTED);
    /* "At once" means without waiting on any device; the bound only
     * catches a hang, it measures nothing. */
    CHECK_MSG(pt_now() - t0 < 5.0, "operations on an aborted world took %.3f s", pt_now() - t0);
    pt_comm_abort(f->w, "second abort is a no-op");
    CHECK_EQ_INT(pt_comm_check(f->w, &err), PT_ERR_COMM_ABORTED);
    CHECK_MSG(strstr(err.msg, reason) != NULL, "first reason kept: %s", err.msg);
}

/* Rank 0's stream sleeps in a host function for 3 s; a wait of 50 ms gives
 * up while it still sleeps (the stream is still busy when the wait returns),
 * aborts the world, and everything after fails. */
static void wait_timeout_body(fixture *f) {
    static useconds_t three_seconds = 3000000;
    pt_comm_group *g = pt_comm_group_find(f->w, 0, f->n);
    void *streams[PT_COMM_MAX_RANKS];
    group_streams(f, g, streams);
    pt_err err = {{0}};
    CHECK_MSG(pt_comm_wait(g, streams, 0, &err) == 0, "idle streams: %s", err.msg);
    CUDA_REQUIRE(cudaLaunchHostFunc(f->streams[0], sleep_on_stream, &three_seconds));
    int rc = pt_comm_wait(g, streams, 0.05, &err);
    cudaError_t still = cudaStreamQuery(f->streams[0]);
    CHECK_EQ_INT(rc, PT_ERR_COMM_TIMEOUT);
    CHECK_MSG(strstr(err.msg, "not done after") != NULL, "%s", err.msg);
    CHECK_MSG(still == cudaErrorNotReady, "the wait returned only after the stream finished (%s)",
              cudaGetErrorName(still));
    check_everything_fails(f, "not done after");
}
static void test_wait_timeout_aborts(void) { on_both_worlds(wait_timeout_body); }

static void abort_body(fixture *f) {
    /* Some work first, so that the communicators are connected when aborted. */
    check_all_reduce_on(f, pt_comm_group_find(f->w, 0, f->n));
    pt_comm_abort(f->w, "peer instance died");
    check_everything_fails(f, "peer instance died");
}
static void test_abort(void) { on_both_worlds(abort_body); }

/* An injected fault (pt_comm_world_fail_after, the generic layer's) on an
 * NCCL world: the operation fails with PT_ERR_COMM before anything is
 * enqueued (the buffers are never touched), the communicators are aborted,
 * and everything after fails at once -- the rules a real failure follows. */
static void inject_body(fixture *f) {
    pt_comm_group *g = pt_comm_group_find(f->w, 0, f->n);
    check_all_reduce_on(f, g); /* connected first, as in test_abort */
    void *streams[PT_COMM_MAX_RANKS], *bufs[PT_COMM_MAX_RANKS];
    group_streams(f, g, streams);
    for (int r = 0; r < f->n; r++) bufs[r] = (void *)64; /* never touched */
    pt_comm_world_fail_after(f->w, 0);
    pt_err err = {{0}};
    CHECK_EQ_INT(pt_comm_all_gather(g, bufs, bufs, 16, PT_COMM_F32, streams, &err), PT_ERR_COMM);
    CHECK_MSG(strstr(err.msg, "all-gather") && strstr(err.msg, "nccl world") && strstr(err.msg, "injected"), "%s",
              err.msg);
    check_everything_fails(f, "injected");
}
static void test_injected_fault(void) { on_both_worlds(inject_body); }

/* Create, use, destroy, three times: device memory after the third round
 * equals what it was after the first (NCCL and CUDA keep a little
 * process-wide state on first use, hence not before the first). */
static void test_destroy_releases(void) {
    size_t free_after[3] = {0};
    for (int round = 0; round < 3; round++) {
        fixture f;
        if (!fixture_open(&f, all_devices, n_gpus)) return;
        check_all_reduce_on(&f, pt_comm_group_find(f.w, 0, n_gpus));
        check_all_gather_on(&f, pt_comm_group_at(f.w, 0));
        fixture_close(&f);
        size_t total = 0;
        CUDA_REQUIRE(cudaSetDevice(0));
        CUDA_REQUIRE(cudaMemGetInfo(&free_after[round], &total));
    }
    const size_t slack = 32u << 20;
    CHECK_MSG(free_after[2] + slack >= free_after[0], "device 0 free memory fell from %zu to %zu bytes",
              free_after[0], free_after[2]);
}

int main(void) {
    static const test_case host_tests[] = {
        TEST(test_layout_eight_ranks), TEST(test_layout_caps_sorts_and_adds_world), TEST(test_layout_rejects),
        TEST(test_dtype_sizes), TEST(test_create_rejects_bad_config), TEST(test_null_handles),
    };
    int rc = test_run_all(host_tests, sizeof(host_tests) / sizeof(host_tests[0]));
    if (rc) return rc;

    cudaError_t e = cudaGetDeviceCount(&n_gpus);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        TEST_SKIP("no CUDA device (%s)", cudaGetErrorName(e));
    }
    if (n_gpus == 0) TEST_SKIP("no CUDA device");
    if (n_gpus > PT_COMM_MAX_RANKS) n_gpus = PT_COMM_MAX_RANKS;
    for (int r = 0; r < n_gpus; r++) all_devices[r] = r;
    printf("%d GPU(s)\n", n_gpus);

    static const test_case gpu_tests[] = {
        TEST(test_pool), TEST(test_create_rejects_missing_device), TEST(test_all_reduce), TEST(test_all_gather),
        TEST(test_send_recv_ring), TEST(test_send_recv_many), TEST(test_wait_timeout_aborts), TEST(test_abort),
        TEST(test_injected_fault), TEST(test_destroy_releases),
    };
    return test_run_all(gpu_tests, sizeof(gpu_tests) / sizeof(gpu_tests[0]));
}

#endif
