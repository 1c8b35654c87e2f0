/* comm: the local implementation (src/comm/local/comm_local.c) behind the
 * generic layer (src/comm/comm.c). Ranks are CPU virtual devices of this
 * process, buffers host memory, streams NULL; every operation is complete
 * when it returns.
 *
 * Covered: the group pool of a world of 4 for TP degrees {1, 2, 4}; an f32
 * all-reduce sum bit-exact against a left fold in rank order (out of place
 * and in place), i32 max and min; all-gather in rank order (out of place and
 * in place); all-gather-v of unequal segments in place, and overlapping
 * segments refused with nothing changed; broadcast; send/recv lists and their
 * argument checks; barrier; the failure rules (an injected fault fails one
 * operation with PT_ERR_COMM and aborts the world, after which everything
 * returns PT_ERR_COMM_ABORTED naming the fault); argument errors that leave
 * the world healthy; two threads on disjoint groups at once.
 * R = world rank, i = group rank, k = element. */
#include <pthread.h>
#include <stdint.h>

#include "comm/comm.h"
#include "test.h"

static pt_comm_world *make_world(int n, const int *degrees, int n_degrees) {
    int devices[PT_COMM_MAX_RANKS];
    for (int r = 0; r < n; r++) devices[r] = r;
    pt_comm_config cfg = {devices, n, degrees, n_degrees, 0};
    pt_comm_world *w = NULL;
    pt_err err = {{0}};
    int rc = pt_comm_world_create_local(&w, &cfg, &err);
    CHECK_MSG(rc == 0 && w, "create a local world of %d: rc %d: %s", n, rc, err.msg);
    return w;
}

static const int DEG124[] = {1, 2, 4};

static void test_world(void) {
    pt_comm_world *w = make_world(4, DEG124, 3);
    if (!w) return;
    CHECK(strcmp(pt_comm_world_kind(w), "local") == 0);
    CHECK_EQ_INT(pt_comm_world_size(w), 4);
    CHECK_EQ_INT(pt_comm_world_device(w, 3), 3);
    CHECK_EQ_INT(pt_comm_world_device(w, 4), -1);
    CHECK_EQ_INT(pt_comm_group_count(w), 7);
    /* Layout order: by size, then first rank. */
    static const int want[7][2] = {{0, 1}, {1, 1}, {2, 1}, {3, 1}, {0, 2}, {2, 2}, {0, 4}};
    for (int gi = 0; gi < 7; gi++) {
        pt_comm_group *g = pt_comm_group_at(w, gi);
        CHECK(g != NULL);
        CHECK_EQ_INT(pt_comm_group_first(g), want[gi][0]);
        CHECK_EQ_INT(pt_comm_group_size(g), want[gi][1]);
        CHECK(pt_comm_group_find(w, want[gi][0], want[gi][1]) == g);
    }
    CHECK(pt_comm_group_at(w, 7) == NULL);
    CHECK(pt_comm_group_find(w, 2, 2) != NULL);
    CHECK(pt_comm_group_find(w, 1, 2) == NULL); /* not aligned */
    CHECK(pt_comm_group_find(w, 0, 3) == NULL); /* degree not allowed */
    CHECK(pt_comm_group_find(w, 4, 1) == NULL); /* out of range */
    CHECK(pt_comm_group_find(NULL, 0, 1) == NULL);
    CHECK(!pt_comm_is_aborted(w));
    pt_err err;
    CHECK_EQ_INT(pt_comm_check(w, &err), 0);
    pt_comm_world_destroy(w);
    pt_comm_world_destroy(NULL);

    /* A degree that does not divide the world is refused; one above it is dropped. */
    int devices[4] = {0, 1, 2, 3};
    int bad[] = {3};
    pt_comm_config cfg = {devices, 4, bad, 1, 0};
    w = (pt_comm_world *)&err;
    CHECK_EQ_INT(pt_comm_world_create_local(&w, &cfg, &err), PT_ERR_INVALID);
    CHECK(w == NULL);
    int big[] = {2, 8};
    cfg.tp_degrees = big;
    cfg.n_tp_degrees = 2;
    CHECK_EQ_INT(pt_comm_world_create_local(&w, &cfg, &err), 0);
    CHECK_EQ_INT(pt_comm_group_count(w), 3); /* [0,2), [2,4), [0,4) */
    pt_comm_world_destroy(w);
}

/* Values with many mantissa bits, so that the order of the fold shows. */
static float value(int r, size_t k) {
    uint64_t x = (uint64_t)(r + 1) * 0x9e3779b97f4a7c15ull + k * 0xbf58476d1ce4e5b9ull;
    x ^= x >> 31;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 29;
    float f = (float)(x >> 40) / (float)(1 << 24); /* [0, 1) */
    return (f - 0.5f) * (float)(1 << (k % 17));
}

#define N_AR 257

static void test_all_reduce_f32(void) {
    pt_comm_world *w = make_world(4, DEG124, 3);
    if (!w) return;
    pt_comm_group *g = pt_comm_group_find(w, 0, 4);
    static float send[4][N_AR], recv[4][N_AR], expect[N_AR];
    for (int r = 0; r < 4; r++)
        for (size_t k = 0; k < N_AR; k++) send[r][k] = value(r, k);
    for (size_t k = 0; k < N_AR; k++) {
        float a = send[0][k];
        a = a + send[1][k];
        a = a + send[2][k];
        a = a + send[3][k];
        expect[k] = a;
    }
    /* The check is meaningful: some element depends on the fold order. */
    bool order_matters = false;
    for (size_t k = 0; k < N_AR && !order_matters; k++)
        order_matters = ((send[3][k] + send[2][k]) + (send[1][k] + send[0][k])) != expect[k];
    CHECK(order_matters);

    void *sp[4], *rp[4];
    for (int i = 0; i < 4; i++) {
        sp[i] = send[i];
        rp[i] = recv[i];
        memset(recv[i], 0xff, sizeof(recv[i]));
    }
    pt_err err = {{0}};
    CHECK_MSG(pt_comm_all_reduce(g, sp, rp, N_AR, PT_COMM_F32, PT_COMM_SUM, NULL, &err) == 0, "%s", err.msg);
    for (int i = 0; i < 4; i++) CHECK_MSG(memcmp(recv[i], expect, sizeof(expect)) == 0, "rank %d", i);
    for (int r = 0; r < 4; r++) CHECK(send[r][5] == value(r, 5)); /* sends untouched */

    /* In place: send[i] == recv[i]. */
    for (int i = 0; i < 4; i++) rp[i] = sp[i];
    CHECK_MSG(pt_comm_all_reduce(g, sp, rp, N_AR, PT_COMM_F32, PT_COMM_SUM, NULL, &err) == 0, "%s", err.msg);
    for (int i = 0; i < 4; i++) CHECK_MSG(memcmp(send[i], expect, sizeof(expect)) == 0, "rank %d in place", i);

    /* A subgroup reduces its own ranks only: group [2, 4) with buffers of world ranks 2, 3. */
    pt_comm_group *g2 = pt_comm_group_find(w, 2, 2);
    float a[3] = {1.5f, -2, 7}, b[3] = {0.25f, 4, -9}, ra[3], rb[3];
    void *s2[2] = {a, b}, *r2[2] = {ra, rb};
    CHECK_EQ_INT(pt_comm_all_reduce(g2, s2, r2, 3, PT_COMM_F32, PT_COMM_SUM, NULL, &err), 0);
    float e2[3] = {1.75f, 2, -2};
    CHECK(memcmp(ra, e2, sizeof(e2)) == 0 && memcmp(rb, e2, sizeof(e2)) == 0);
    /* A group of one copies. */
    pt_comm_group *g1 = pt_comm_group_find(w, 3, 1);
    float one[3];
    void *s1[1] = {a}, *r1[1] = {one};
    CHECK_EQ_INT(pt_comm_all_reduce(g1, s1, r1, 3, PT_COMM_F32, PT_COMM_MAX, NULL, &err), 0);
    CHECK(memcmp(one, a, sizeof(a)) == 0);
    /* count 0 is a no-op. */
    CHECK_EQ_INT(pt_comm_all_reduce(g, sp, rp, 0, PT_COMM_F32, PT_COMM_SUM, NULL, &err), 0);
    CHECK(!pt_comm_is_aborted(w));
    pt_comm_world_destroy(w);
}

static void test_all_reduce_i32(void) {
    pt_comm_world *w = make_world(4, DEG124, 3);
    if (!w) return;
    pt_comm_group *g = pt_comm_group_find(w, 0, 4);
    int32_t send[4][6] = {
        {1, -5, INT32_MIN, 7, 0, 3},
        {2, -6, 0, 7, -1, 100},
        {-3, 10, 5, 7, 1, -100},
        {0, -7, INT32_MAX, 6, 0, 2},
    };
    int32_t emax[6] = {2, 10, INT32_MAX, 7, 1, 100}, emin[6] = {-3, -7, INT32_MIN, 6, -1, -100};
    int32_t recv[4][6];
    void *sp[4], *rp[4];
    for (int i = 0; i < 4; i++) sp[i] = send[i], rp[i] = recv[i];
    pt_err err = {{0}};
    CHECK_MSG(pt_comm_all_reduce(g, sp, rp, 6, PT_COMM_I32, PT_COMM_MAX, NULL, &err) == 0, "%s", err.msg);
    for (int i = 0; i < 4; i++) CHECK_MSG(memcmp(recv[i], emax, sizeof(emax)) == 0, "max rank %d", i);
    CHECK_MSG(pt_comm_all_reduce(g, sp, rp, 6, PT_COMM_I32, PT_COMM_MIN, NULL, &err) == 0, "%s", err.msg);
    for (int i = 0; i < 4; i++) CHECK_MSG(memcmp(recv[i], emin, sizeof(emin)) == 0, "min rank %d", i);
    /* In place min. */
    CHECK_EQ_INT(pt_comm_all_reduce(g, sp, sp, 6, PT_COMM_I32, PT_COMM_MIN, NULL, &err), 0);
    for (int i = 0; i < 4; i++) CHECK_MSG(memcmp(send[i], emin, sizeof(emin)) == 0, "min in place rank %d", i);
    /* 16-bit floats are not reduced locally: refused, world healthy. */
    CHECK_EQ_INT(pt_comm_all_reduce(g, sp, rp, 2, PT_COMM_BF16, PT_COMM_SUM, NULL, &err), PT_ERR_UNSUPPORTED);
    CHECK(!pt_comm_is_aborted(w));
    pt_comm_world_destroy(w);
}

static void test_all_gather(void) {
    pt_comm_world *w = make_world(4, DEG124, 3);
    if (!w) return;
    pt_comm_group *g = pt_comm_group_find(w, 0, 4);
    int32_t send[4][5], recv[4][20], expect[20];
    void *sp[4], *rp[4];
    for (int r = 0; r < 4; r++) {
        for (int k = 0; k < 5; k++) send[r][k] = expect[r * 5 + k] = 100 * r + k;
        sp[r] = send[r];
        rp[r] = recv[r];
        memset(recv[r], 0xee, sizeof(recv[r]));
    }
    pt_err err = {{0}};
    CHECK_MSG(pt_comm_all_gather(g, sp, rp, 5, PT_COMM_I32, NULL, &err) == 0, "%s", err.msg);
    for (int i = 0; i < 4; i++) CHECK_MSG(memcmp(recv[i], expect, sizeof(expect)) == 0, "rank %d", i);

    /* In place: send[i] == recv[i] + i * count, only rank i's own segment filled. */
    for (int i = 0; i < 4; i++) {
        memset(recv[i], 0xee, sizeof(recv[i]));
        memcpy(recv[i] + i * 5, send[i], sizeof(send[i]));
        sp[i] = recv[i] + i * 5;
    }
    CHECK_MSG(pt_comm_all_gather(g, sp, rp, 5, PT_COMM_I32, NULL, &err) == 0, "%s", err.msg);
    for (int i = 0; i < 4; i++) CHECK_MSG(memcmp(recv[i], expect, sizeof(expect)) == 0, "in place rank %d", i);
    pt_comm_world_destroy(w);
}

static void test_all_gather_v(void) {
    int deg[] = {3};
    pt_comm_world *w = make_world(3, deg, 1);
    if (!w) return;
    pt_comm_group *g = pt_comm_group_find(w, 0, 3);
    CHECK(g != NULL);
    size_t offsets[3] = {0, 2, 3}, counts[3] = {2, 1, 4};
    float full[7], buf[3][7];
    void *bp[3];
    for (int k = 0; k < 7; k++) full[k] = 1.0f + (float)k * 0.5f;
    for (int i = 0; i < 3; i++) {
        for (int k = 0; k < 7; k++) buf[i][k] = -1.0f;
        memcpy(buf[i] + offsets[i], full + offsets[i], counts[i] * sizeof(float));
        bp[i] = buf[i];
    }
    pt_err err = {{0}};
    CHECK_MSG(pt_comm_all_gather_v(g, bp, offsets, counts, PT_COMM_F32, NULL, &err) == 0, "%s", err.msg);
    for (int i = 0; i < 3; i++) CHECK_MSG(memcmp(buf[i], full, sizeof(full)) == 0, "rank %d", i);

    /* A count of 0 is allowed (its offset is ignored). */
    size_t off0[3] = {0, 100, 2}, cnt0[3] = {2, 0, 5};
    for (int i = 0; i < 3; i++) {
        for (int k = 0; k < 7; k++) buf[i][k] = -1.0f;
        if (cnt0[i]) memcpy(buf[i] + off0[i], full + off0[i], cnt0[i] * sizeof(float));
    }
    CHECK_MSG(pt_comm_all_gather_v(g, bp, off0, cnt0, PT_COMM_F32, NULL, &err) == 0, "%s", err.msg);
    for (int i = 0; i < 3; i++) CHECK_MSG(memcmp(buf[i], full, sizeof(full)) == 0, "rank %d with a 0 count", i);

    /* Overlapping segments: refused, nothing written, world healthy. */
    size_t off_bad[3] = {0, 1, 4}, cnt_bad[3] = {2, 2, 3};
    float before[3][7];
    for (int i = 0; i < 3; i++) {
        for (int k = 0; k < 7; k++) buf[i][k] = (float)(10 * i + k);
    }
    memcpy(before, buf, sizeof(buf));
    CHECK_EQ_INT(pt_comm_all_gather_v(g, bp, off_bad, cnt_bad, PT_COMM_F32, NULL, &err), PT_ERR_INVALID);
    CHECK_MSG(strstr(err.msg, "overlap") != NULL, "%s", err.msg);
    CHECK(memcmp(before, buf, sizeof(buf)) == 0);
    size_t off_bad2[3] = {0, 5, 3}, cnt_bad2[3] = {2, 1, 4}; /* rank 1 inside rank 2's segment */
    CHECK_EQ_INT(pt_comm_all_gather_v(g, bp, off_bad2, cnt_bad2, PT_COMM_F32, NULL, &err), PT_ERR_INVALID);
    CHECK(memcmp(before, buf, sizeof(buf)) == 0);
    CHECK_EQ_INT(pt_comm_all_gather_v(g, bp, NULL, counts, PT_COMM_F32, NULL, &err), PT_ERR_INVALID);
    CHECK(!pt_comm_is_aborted(w));
    pt_comm_world_destroy(w);
}

static void test_broadcast(void) {
    pt_comm_world *w = make_world(4, DEG124, 3);
    if (!w) return;
    pt_comm_group *g = pt_comm_group_find(w, 0, 4);
    double buf[4][9];
    void *bp[4];
    for (int i = 0; i < 4; i++) {
        for (int k = 0; k < 9; k++) buf[i][k] = i * 1000.0 + k + 0.125;
        bp[i] = buf[i];
    }
    double root[9];
    memcpy(root, buf[2], sizeof(root));
    pt_err err = {{0}};
    CHECK_MSG(pt_comm_broadcast(g, bp, 9, PT_COMM_F64, 2, NULL, &err) == 0, "%s", err.msg);
    for (int i = 0; i < 4; i++) CHECK_MSG(memcmp(buf[i], root, sizeof(root)) == 0, "rank %d", i);
    CHECK_EQ_INT(pt_comm_broadcast(g, bp, 9, PT_COMM_F64, 4, NULL, &err), PT_ERR_INVALID);
    CHECK_EQ_INT(pt_comm_broadcast(g, bp, 9, PT_COMM_F64, -1, NULL, &err), PT_ERR_INVALID);
    CHECK(!pt_comm_is_aborted(w));
    pt_comm_world_destroy(w);
}

static void test_send_recv(void) {
    pt_comm_world *w = make_world(4, DEG124, 3);
    if (!w) return;
    pt_comm_group *g = pt_comm_group_find(w, 0, 4);
    /* mem[R] is world rank R's memory: 4 pages of 16 bytes. */
    uint8_t mem[4][64];
    for (int r = 0; r < 4; r++)
        for (int k = 0; k < 64; k++) mem[r][k] = (uint8_t)(r * 64 + k);
    uint8_t orig[4][64];
    memcpy(orig, mem, sizeof(mem));
    pt_comm_transfer t[3] = {
        {0, 3, mem[0] + 0, mem[3] + 16, 16},  /* rank 0 page 0 -> rank 3 page 1 */
        {2, 1, mem[2] + 32, mem[1] + 48, 16}, /* rank 2 page 2 -> rank 1 page 3 */
        {1, 1, mem[1] + 0, mem[1] + 32, 16},  /* within rank 1: page 0 -> page 2 */
    };
    pt_err err = {{0}};
    CHECK_MSG(pt_comm_send_recv(g, t, 3, NULL, &err) == 0, "%s", err.msg);
    uint8_t expect[4][64];
    memcpy(expect, orig, sizeof(orig));
    memcpy(expect[3] + 16, orig[0] + 0, 16);
    memcpy(expect[1] + 48, orig[2] + 32, 16);
    memcpy(expect[1] + 32, orig[1] + 0, 16);
    CHECK(memcmp(mem, expect, sizeof(mem)) == 0);

    /* An empty list, a zero-byte transfer with NULL buffers, and an identical
     * in-rank copy are fine. */
    CHECK_EQ_INT(pt_comm_send_recv(g, NULL, 0, NULL, &err), 0);
    pt_comm_transfer z[2] = {{0, 1, NULL, NULL, 0}, {2, 2, mem[2], mem[2], 64}};
    CHECK_EQ_INT(pt_comm_send_recv(g, z, 2, NULL, &err), 0);
    CHECK(memcmp(mem, expect, sizeof(mem)) == 0);

    /* Argument errors: nothing moved, world healthy. */
    pt_comm_transfer bad[2] = {{0, 1, mem[0], mem[1], 16}, {0, 4, mem[0], mem[3], 16}};
    CHECK_EQ_INT(pt_comm_send_recv(g, bad, 2, NULL, &err), PT_ERR_INVALID);
    bad[1] = (pt_comm_transfer){-1, 0, mem[0], mem[3], 16};
    CHECK_EQ_INT(pt_comm_send_recv(g, bad, 2, NULL, &err), PT_ERR_INVALID);
    bad[1] = (pt_comm_transfer){1, 2, NULL, mem[2], 16};
    CHECK_EQ_INT(pt_comm_send_recv(g, bad, 2, NULL, &err), PT_ERR_INVALID);
    bad[1] = (pt_comm_transfer){3, 3, mem[3], mem[3] + 8, 16}; /* overlapping within a rank */
    CHECK_EQ_INT(pt_comm_send_recv(g, bad, 2, NULL, &err), PT_ERR_INVALID);
    CHECK_EQ_INT(pt_comm_send_recv(g, NULL, 1, NULL, &err), PT_ERR_INVALID);
    CHECK(memcmp(mem, expect, sizeof(mem)) == 0);
    /* In a group of 2, rank 2 is out of range. */
    pt_comm_group *g2 = pt_comm_group_find(w, 2, 2);
    pt_comm_transfer out2 = {0, 2, mem[2], mem[3], 16};
    CHECK_EQ_INT(pt_comm_send_recv(g2, &out2, 1, NULL, &err), PT_ERR_INVALID);
    CHECK(!pt_comm_is_aborted(w));
    CHECK_EQ_INT(pt_comm_barrier(g, NULL, &err), 0);
    CHECK_EQ_INT(pt_comm_barrier(g2, NULL, &err), 0);
    CHECK_EQ_INT(pt_comm_wait(g, NULL, 0, &err), 0);
    pt_comm_world_destroy(w);
}

/* NULL group, bad dtype or op, NULL buffers: PT_ERR_INVALID, world healthy. */
static void test_argument_errors(void) {
    pt_comm_world *w = make_world(4, DEG124, 3);
    if (!w) return;
    pt_comm_group *g = pt_comm_group_find(w, 0, 4);
    float a[4][2] = {{1, 2}, {3, 4}, {5, 6}, {7, 8}};
    void *p[4] = {a[0], a[1], a[2], a[3]};
    void *p_null[4] = {a[0], NULL, a[2], a[3]};
    size_t off[4] = {0, 1, 2, 3}, cnt[4] = {1, 1, 1, 1};
    pt_err err;
    pt_comm_world_fail_after(w, 0); /* an argument error must not consume the injected fault */
    CHECK_EQ_INT(pt_comm_all_reduce(NULL, p, p, 2, PT_COMM_F32, PT_COMM_SUM, NULL, &err), PT_ERR_INVALID);
    CHECK_EQ_INT(pt_comm_all_reduce(g, p, p, 2, PT_COMM_DTYPE_COUNT, PT_COMM_SUM, NULL, &err), PT_ERR_INVALID);
    CHECK_EQ_INT(pt_comm_all_reduce(g, p, p, 2, (pt_comm_dtype)-1, PT_COMM_SUM, NULL, &err), PT_ERR_INVALID);
    CHECK_EQ_INT(pt_comm_all_reduce(g, p, p, 2, PT_COMM_F32, PT_COMM_OP_COUNT, NULL, &err), PT_ERR_INVALID);
    CHECK_EQ_INT(pt_comm_all_reduce(g, NULL, p, 2, PT_COMM_F32, PT_COMM_SUM, NULL, &err), PT_ERR_INVALID);
    CHECK_EQ_INT(pt_comm_all_reduce(g, p, NULL, 2, PT_COMM_F32, PT_COMM_SUM, NULL, &err), PT_ERR_INVALID);
    CHECK_EQ_INT(pt_comm_all_reduce(g, p_null, p, 2, PT_COMM_F32, PT_COMM_SUM, NULL, &err), PT_ERR_INVALID);
    CHECK_EQ_INT(pt_comm_all_reduce(g, p, p, SIZE_MAX / 2, PT_COMM_F32, PT_COMM_SUM, NULL, &err), PT_ERR_INVALID);
    CHECK_EQ_INT(pt_comm_all_gather(NULL, p, p, 1, PT_COMM_F32, NULL, &err), PT_ERR_INVALID);
    CHECK_EQ_INT(pt_comm_all_gather(g, p, p_null, 1, PT_COMM_F32, NULL, &err), PT_ERR_INVALID);
    CHECK_EQ_INT(pt_comm_all_gather(g, p, p, 1, PT_COMM_DTYPE_COUNT, NULL, &err), PT_ERR_INVALID);
    CHECK_EQ_INT(pt_comm_all_gather_v(NULL, p, off, cnt, PT_COMM_F32, NULL, &err), PT_ERR_INVALID);
    CHECK_EQ_INT(pt_comm_all_gather_v(g, p_null, off, cnt, PT_COMM_F32, NULL, &err), PT_ERR_INVALID);
    CHECK_EQ_INT(pt_comm_all_gather_v(g, p, off, cnt, (pt_comm_dtype)99, NULL, &err), PT_ERR_INVALID);
    CHECK_EQ_INT(pt_comm_broadcast(NULL, p, 2, PT_COMM_F32, 0, NULL, &err), PT_ERR_INVALID);
    CHECK_EQ_INT(pt_comm_broadcast(g, NULL, 2, PT_COMM_F32, 0, NULL, &err), PT_ERR_INVALID);
    CHECK_EQ_INT(pt_comm_broadcast(g, p_null, 2, PT_COMM_F32, 0, NULL, &err), PT_ERR_INVALID);
    CHECK_EQ_INT(pt_comm_broadcast(g, p, 2, PT_COMM_DTYPE_COUNT, 0, NULL, &err), PT_ERR_INVALID);
    CHECK_EQ_INT(pt_comm_send_recv(NULL, NULL, 0, NULL, &err), PT_ERR_INVALID);
    CHECK_EQ_INT(pt_comm_barrier(NULL, NULL, &err), PT_ERR_INVALID);
    CHECK_EQ_INT(pt_comm_wait(NULL, NULL, 1.0, &err), PT_ERR_INVALID);
    CHECK_EQ_INT(pt_comm_check(NULL, &err), PT_ERR_INVALID);
    /* A NULL err is allowed. */
    CHECK_EQ_INT(pt_comm_all_reduce(NULL, p, p, 2, PT_COMM_F32, PT_COMM_SUM, NULL, NULL), PT_ERR_INVALID);
    CHECK(!pt_comm_is_aborted(w));
    CHECK_EQ_INT(pt_comm_check(w, &err), 0);
    /* The armed fault is still there for the first real operation. */
    CHECK_EQ_INT(pt_comm_all_reduce(g, p, p, 2, PT_COMM_F32, PT_COMM_SUM, NULL, &err), PT_ERR_COMM);
    CHECK(pt_comm_is_aborted(w));
    float untouched[4][2] = {{1, 2}, {3, 4}, {5, 6}, {7, 8}};
    CHECK(memcmp(a, untouched, sizeof(a)) == 0);
    pt_comm_world_destroy(w);
}

static void test_failure_rules(void) {
    pt_comm_world *w = make_world(4, DEG124, 3);
    if (!w) return;
    pt_comm_group *g4 = pt_comm_group_find(w, 0, 4), *g2 = pt_comm_group_find(w, 2, 2),
                  *g1 = pt_comm_group_find(w, 1, 1);
    float a[4][2] = {{1, 2}, {3, 4}, {5, 6}, {7, 8}};
    void *p[4] = {a[0], a[1], a[2], a[3]};
    pt_err err = {{0}};
    pt_comm_world_fail_after(w, 1);
    CHECK_MSG(pt_comm_all_reduce(g4, p, p, 2, PT_COMM_F32, PT_COMM_SUM, NULL, &err) == 0, "%s", err.msg);
    float sum[2] = {16, 20};
    CHECK(memcmp(a[3], sum, sizeof(sum)) == 0);
    CHECK(!pt_comm_is_aborted(w));
    memset(&err, 0, sizeof(err));
    CHECK_EQ_INT(pt_comm_broadcast(g2, p, 2, PT_COMM_F32, 0, NULL, &err), PT_ERR_COMM);
    CHECK_MSG(strstr(err.msg, "injected") != NULL, "%s", err.msg);
    CHECK(pt_comm_is_aborted(w));

    /* Every later operation, of any kind, on any group: aborted, naming the fault. */
    size_t off[2] = {0, 1}, cnt[2] = {1, 1};
    pt_comm_transfer t = {0, 1, a[0], a[1], 8};
    int rcs[8];
    pt_err errs[8];
    memset(errs, 0, sizeof(errs));
    rcs[0] = pt_comm_all_reduce(g4, p, p, 2, PT_COMM_F32, PT_COMM_SUM, NULL, &errs[0]);
    rcs[1] = pt_comm_all_gather(g1, p, p, 1, PT_COMM_F32, NULL, &errs[1]);
    rcs[2] = pt_comm_all_gather_v(g2, p, off, cnt, PT_COMM_F32, NULL, &errs[2]);
    rcs[3] = pt_comm_broadcast(g4, p, 2, PT_COMM_F32, 1, NULL, &errs[3]);
    rcs[4] = pt_comm_send_recv(g2, &t, 1, NULL, &errs[4]);
    rcs[5] = pt_comm_barrier(g1, NULL, &errs[5]);
    rcs[6] = pt_comm_wait(g4, NULL, 1.0, &errs[6]);
    rcs[7] = pt_comm_check(w, &errs[7]);
    for (int k = 0; k < 8; k++) {
        CHECK_MSG(rcs[k] == PT_ERR_COMM_ABORTED, "op %d: rc %d", k, rcs[k]);
        CHECK_MSG(strstr(errs[k].msg, "injected") != NULL, "op %d: %s", k, errs[k].msg);
    }
    /* Even the argument checks come after the aborted state... except a NULL group. */
    CHECK_EQ_INT(pt_comm_all_reduce(g4, NULL, NULL, 2, PT_COMM_F32, PT_COMM_SUM, NULL, &err), PT_ERR_COMM_ABORTED);
    /* Nothing moved after the abort. */
    float after[4][2] = {{16, 20}, {16, 20}, {16, 20}, {16, 20}};
    CHECK(memcmp(a, after, sizeof(a)) == 0);
    /* Turning injection off or aborting again does not revive it. */
    pt_comm_world_fail_after(w, -1);
    pt_comm_abort(w, "again");
    CHECK(pt_comm_is_aborted(w));
    CHECK_EQ_INT(pt_comm_all_reduce(g4, p, p, 2, PT_COMM_F32, PT_COMM_SUM, NULL, &err), PT_ERR_COMM_ABORTED);
    CHECK_MSG(strstr(err.msg, "injected") != NULL, "first reason kept: %s", err.msg);
    pt_comm_world_destroy(w);

    /* An explicit abort on a healthy world. */
    w = make_world(2, NULL, 0);
    if (!w) return;
    pt_comm_abort(w, "peer instance died");
    CHECK(pt_comm_is_aborted(w));
    CHECK_EQ_INT(pt_comm_check(w, &err), PT_ERR_COMM_ABORTED);
    CHECK_MSG(strstr(err.msg, "peer instance died") != NULL, "%s", err.msg);
    pt_comm_world_destroy(w);
}

typedef struct {
    pt_comm_group *g;
    int bad;
    int rc;
} thread_arg;

static void *reduce_loop(void *p) {
    thread_arg *a = p;
    int first = pt_comm_group_first(a->g);
    pt_err err;
    for (int it = 0; it < 1000; it++) {
        float x[2][16], y[2][16];
        for (int i = 0; i < 2; i++)
            for (int k = 0; k < 16; k++) x[i][k] = (float)((first + i) * 1000 + it + k);
        void *s[2] = {x[0], x[1]}, *r[2] = {y[0], y[1]};
        int rc = pt_comm_all_reduce(a->g, s, r, 16, PT_COMM_F32, PT_COMM_SUM, NULL, &err);
        if (rc) {
            a->rc = rc;
            return NULL;
        }
        for (int i = 0; i < 2; i++)
            for (int k = 0; k < 16; k++)
                if (y[i][k] != x[0][k] + x[1][k]) a->bad++;
    }
    return NULL;
}

static void test_threads_disjoint_groups(void) {
    pt_comm_world *w = make_world(4, DEG124, 3);
    if (!w) return;
    thread_arg args[2] = {{pt_comm_group_find(w, 0, 2), 0, 0}, {pt_comm_group_find(w, 2, 2), 0, 0}};
    CHECK(args[0].g && args[1].g);
    pthread_t th[2];
    int started = 0;
    for (int t = 0; t < 2; t++) {
        if (pthread_create(&th[t], NULL, reduce_loop, &args[t]) != 0) break;
        started++;
    }
    CHECK_EQ_INT(started, 2);
    for (int t = 0; t < started; t++) {
        pthread_join(th[t], NULL);
        CHECK_EQ_INT(args[t].rc, 0);
        CHECK_EQ_INT(args[t].bad, 0);
    }
    CHECK(!pt_comm_is_aborted(w));
    pt_comm_world_destroy(w);
}

TEST_MAIN(TEST(test_world), TEST(test_all_reduce_f32), TEST(test_all_reduce_i32), TEST(test_all_gather),
          TEST(test_all_gather_v), TEST(test_broadcast), TEST(test_send_recv), TEST(test_argument_errors),
          TEST(test_failure_rules), TEST(test_threads_disjoint_groups))
