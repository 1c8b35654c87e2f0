/* The comm interface's generic half: queries, the aborted state, argument
 * validation, injected failures (tests), and dispatch to the world's
 * implementation (comm_impl.h). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm/comm_impl.h"

int pt_comm_config_check(const pt_comm_config *cfg, pt_err *err) {
    if (!cfg) return pt_err_set(err, PT_ERR_INVALID, "comm: no configuration");
    int n = cfg->n_devices;
    if (n < 1 || n > PT_COMM_MAX_RANKS)
        return pt_err_set(err, PT_ERR_INVALID, "comm: %d devices (need 1 to %d)", n, PT_COMM_MAX_RANKS);
    if (!cfg->devices) return pt_err_set(err, PT_ERR_INVALID, "comm: no device list");
    for (int r = 0; r < n; r++) {
        if (cfg->devices[r] < 0)
            return pt_err_set(err, PT_ERR_INVALID, "comm: device id %d of rank %d is negative", cfg->devices[r], r);
        for (int q = 0; q < r; q++)
            if (cfg->devices[q] == cfg->devices[r])
                /* NCCL does not support two ranks of one communicator on one device (it may hang). */
                return pt_err_set(err, PT_ERR_INVALID, "comm: device %d is listed for ranks %d and %d",
                                  cfg->devices[r], q, r);
    }
    if (!(cfg->timeout_s >= 0.0 && cfg->timeout_s <= 1e6))
        return pt_err_set(err, PT_ERR_INVALID, "comm: timeout %g s is not in [0, 1e6]", cfg->timeout_s);
    return pt_comm_layout(n, cfg->tp_degrees, cfg->n_tp_degrees, NULL, 0, err);
}

/* Whether a world was armed by PROTEUS_COMM_FAIL=N,once already. */
static atomic_bool env_once_used;

/* PROTEUS_COMM_FAIL (tests, comm.h): the operation of a new world that is
 * to fail, N >= 1; 0 when unset or empty, when the value is not "N" or
 * "N,once" (with a warning), or when ",once" armed a world already. */
static int64_t fail_env(bool *once) {
    *once = false;
    const char *v = getenv("PROTEUS_COMM_FAIL");
    if (!v || !*v) return 0;
    /* Digits only: strtoll would take a sign, spaces and a trailing word. */
    size_t digits = strspn(v, "0123456789");
    bool ok = digits > 0 && (v[digits] == 0 || strcmp(v + digits, ",once") == 0);
    errno = 0;
    long long n = ok ? strtoll(v, NULL, 10) : 0;
    if (!ok || errno || n < 1) {
        pt_log(PT_LOG_WARN, "PROTEUS_COMM_FAIL=%s is not an operation number (N or N,once with N >= 1); ignored", v);
        return 0;
    }
    *once = v[digits] != 0;
    if (*once && atomic_exchange(&env_once_used, true)) return 0;
    return n;
}

int pt_comm_world_init(pt_comm_world *w, const pt_comm_iface *iface, const pt_comm_config *cfg, int *devices,
                       pt_comm_group *groups, int n_groups, pt_err *err) {
    w->iface = iface;
    w->n = cfg->n_devices;
    w->devices = devices;
    memcpy(devices, cfg->devices, (size_t)w->n * sizeof(int));
    w->groups = groups;
    w->timeout_s = cfg->timeout_s > 0 ? cfg->timeout_s : PT_COMM_DEFAULT_TIMEOUT_S;
    atomic_init(&w->aborting, false);
    atomic_init(&w->aborted, false);
    atomic_init(&w->fail_after, -1);
    pt_comm_group_desc desc[PT_COMM_MAX_RANKS * 8];
    int n_desc = pt_comm_layout(w->n, cfg->tp_degrees, cfg->n_tp_degrees, desc,
                                (int)(sizeof(desc) / sizeof(desc[0])), err);
    if (n_desc < 0) return n_desc;
    if (n_desc > n_groups) return pt_err_set(err, PT_ERR_INVALID, "comm: %d groups exceed the %d planned", n_desc, n_groups);
    w->n_groups = n_desc;
    for (int gi = 0; gi < n_desc; gi++) groups[gi] = (pt_comm_group){w, desc[gi].first, desc[gi].size, NULL};
    bool once;
    int64_t nth = fail_env(&once);
    if (nth > 0) {
        atomic_store(&w->fail_after, nth - 1);
        pt_log(PT_LOG_WARN, "PROTEUS_COMM_FAIL=%s: operation %lld of this %s world of %d devices will fail (testing%s)",
               getenv("PROTEUS_COMM_FAIL"), (long long)nth, iface->name, w->n,
               once ? "; worlds created later are not armed" : "; so will every world created later");
    }
    return PT_OK;
}

/* ---- injected failures ---- */

void pt_comm_world_fail_after(pt_comm_world *w, int64_t n) {
    if (w) atomic_store(&w->fail_after, n < 0 ? -1 : n);
}

/* Counts one operation that is about to reach the implementation; the one
 * that finds the count at 0 fails as a broken link would: nothing is
 * issued, the world is aborted, PT_ERR_COMM. Atomic because groups of
 * disjoint ranks may be driven from different threads at once. */
static int injected(pt_comm_group *g, const char *what, pt_err *err) {
    pt_comm_world *w = g->world;
    int64_t left = atomic_load(&w->fail_after);
    while (left >= 0 && !atomic_compare_exchange_weak(&w->fail_after, &left, left - 1)) {}
    if (left != 0) return 0;
    pt_err_set(err, PT_ERR_COMM, "comm: %s on group [%d, %d) of the %s world failed (injected fault)", what, g->first,
               g->first + g->size, w->iface->name);
    return pt_comm_fail(w, PT_ERR_COMM, err);
}

/* ---- queries ---- */

const char *pt_comm_world_kind(const pt_comm_world *w) { return w ? w->iface->name : "none"; }
int pt_comm_world_size(const pt_comm_world *w) { return w ? w->n : 0; }
int pt_comm_world_device(const pt_comm_world *w, int rank) {
    return w && rank >= 0 && rank < w->n ? w->devices[rank] : -1;
}
int pt_comm_group_count(const pt_comm_world *w) { return w ? w->n_groups : 0; }
pt_comm_group *pt_comm_group_at(pt_comm_world *w, int index) {
    return w && index >= 0 && index < w->n_groups ? &w->groups[index] : NULL;
}
pt_comm_group *pt_comm_group_find(pt_comm_world *w, int first, int size) {
    if (!w) return NULL;
    for (int gi = 0; gi < w->n_groups; gi++)
        if (w->groups[gi].first == first && w->groups[gi].size == size) return &w->groups[gi];
    return NULL;
}
int pt_comm_group_first(const pt_comm_group *g) { return g ? g->first : -1; }
int pt_comm_group_size(const pt_comm_group *g) { return g ? g->size : 0; }
pt_comm_world *pt_comm_group_world(const pt_comm_group *g) { return g ? g->world : NULL; }

/* ---- abort ---- */

void pt_comm_abort(pt_comm_world *w, const char *reason) {
    if (!w) return;
    bool expected = false;
    if (!atomic_compare_exchange_strong(&w->aborting, &expected, true)) return;
    snprintf(w->abort_reason, sizeof(w->abort_reason), "%s", reason && reason[0] ? reason : "aborted by the caller");
    /* Readers that see the flag see the reason. */
    atomic_store_explicit(&w->aborted, true, memory_order_release);
    pt_log(PT_LOG_ERROR, "comm: aborting the %s world of %d devices: %s", w->iface->name, w->n, w->abort_reason);
    w->iface->abort_comms(w);
}

bool pt_comm_is_aborted(const pt_comm_world *w) {
    return w && atomic_load_explicit(&((pt_comm_world *)w)->aborted, memory_order_acquire);
}

int pt_comm_fail(pt_comm_world *w, int rc, pt_err *err) {
    pt_comm_abort(w, err->msg);
    return rc;
}

void pt_comm_world_destroy(pt_comm_world *w) {
    if (w) w->iface->destroy(w);
}

/* ---- operations ---- */

static int aborted_error(const pt_comm_world *w, pt_err *err) {
    return pt_err_set(err, PT_ERR_COMM_ABORTED, "comm: the world was aborted earlier: %s", w->abort_reason);
}

/* Common entry checks of an operation on a group. Local worlds take NULL streams. */
static int op_check(const pt_comm_group *g, void *const *streams, const char *what, pt_err *err) {
    if (!g) return pt_err_set(err, PT_ERR_INVALID, "comm: %s without a group", what);
    if (pt_comm_is_aborted(g->world)) return aborted_error(g->world, err);
    if (!streams && strcmp(g->world->iface->name, "local") != 0)
        return pt_err_set(err, PT_ERR_INVALID, "comm: %s without streams", what);
    return 0;
}

static int buffers_check(const pt_comm_group *g, void *const *a, void *const *b, size_t count, pt_comm_dtype dtype,
                         uint64_t per_rank_factor, const char *what, pt_err *err) {
    if (pt_comm_dtype_size(dtype) == 0) return pt_err_set(err, PT_ERR_INVALID, "comm: %s of dtype %d", what, (int)dtype);
    if (!a || !b) return pt_err_set(err, PT_ERR_INVALID, "comm: %s without buffers", what);
    uint64_t bytes;
    if (!pt_mul_size(count, pt_comm_dtype_size(dtype), &bytes) || !pt_mul_size(bytes, per_rank_factor, &bytes) ||
        bytes > SIZE_MAX)
        return pt_err_set(err, PT_ERR_INVALID, "comm: %s of %zu elements overflows", what, count);
    if (count == 0) return 0;
    for (int i = 0; i < g->size; i++)
        if (!a[i] || !b[i]) return pt_err_set(err, PT_ERR_INVALID, "comm: %s: NULL buffer for rank %d", what, i);
    return 0;
}

int pt_comm_all_reduce(pt_comm_group *g, void *const *send, void *const *recv, size_t count, pt_comm_dtype dtype,
                       pt_comm_op op, void *const *streams, pt_err *err) {
    pt_err local;
    if (!err) err = &local;
    int rc = op_check(g, streams, "all-reduce", err);
    if (!rc && (op < 0 || op >= PT_COMM_OP_COUNT))
        rc = pt_err_set(err, PT_ERR_INVALID, "comm: all-reduce with op %d", (int)op);
    if (!rc) rc = buffers_check(g, send, recv, count, dtype, 1, "all-reduce", err);
    if (rc || count == 0 || (rc = injected(g, "all-reduce", err))) return rc;
    return g->world->iface->all_reduce(g, send, recv, count, dtype, op, streams, err);
}

int pt_comm_all_gather(pt_comm_group *g, void *const *send, void *const *recv, size_t count, pt_comm_dtype dtype,
                       void *const *streams, pt_err *err) {
    pt_err local;
    if (!err) err = &local;
    int rc = op_check(g, streams, "all-gather", err);
    if (!rc) rc = buffers_check(g, send, recv, count, dtype, (uint64_t)g->size, "all-gather", err);
    if (rc || count == 0 || (rc = injected(g, "all-gather", err))) return rc;
    return g->world->iface->all_gather(g, send, recv, count, dtype, streams, err);
}

int pt_comm_all_gather_v(pt_comm_group *g, void *const *bufs, const size_t *offsets, const size_t *counts,
                         pt_comm_dtype dtype, void *const *streams, pt_err *err) {
    pt_err local;
    if (!err) err = &local;
    int rc = op_check(g, streams, "all-gather-v", err);
    if (rc) return rc;
    if (!offsets || !counts) return pt_err_set(err, PT_ERR_INVALID, "comm: all-gather-v without segments");
    if ((rc = buffers_check(g, bufs, bufs, 1, dtype, 1, "all-gather-v", err))) return rc;
    for (int i = 0; i < g->size; i++) {
        uint64_t end;
        if (!pt_add_size(offsets[i], counts[i], &end) || end > SIZE_MAX / 8)
            return pt_err_set(err, PT_ERR_INVALID, "comm: all-gather-v segment of rank %d overflows", i);
        for (int j = 0; j < i; j++)
            if (counts[i] && counts[j] && offsets[i] < offsets[j] + counts[j] && offsets[j] < end)
                return pt_err_set(err, PT_ERR_INVALID, "comm: all-gather-v segments of ranks %d and %d overlap", j, i);
    }
    if ((rc = injected(g, "all-gather-v", err))) return rc;
    return g->world->iface->all_gather_v(g, bufs, offsets, counts, dtype, streams, err);
}

int pt_comm_broadcast(pt_comm_group *g, void *const *bufs, size_t count, pt_comm_dtype dtype, int root,
                      void *const *streams, pt_err *err) {
    pt_err local;
    if (!err) err = &local;
    int rc = op_check(g, streams, "broadcast", err);
    if (!rc && (root < 0 || root >= g->size))
        rc = pt_err_set(err, PT_ERR_INVALID, "comm: broadcast from rank %d in a group of %d", root, g->size);
    if (!rc) rc = buffers_check(g, bufs, bufs, count, dtype, 1, "broadcast", err);
    if (rc || count == 0 || (rc = injected(g, "broadcast", err))) return rc;
    return g->world->iface->broadcast(g, bufs, count, dtype, root, streams, err);
}

static bool ranges_overlap(const void *a, const void *b, size_t n) {
    uintptr_t x = (uintptr_t)a, y = (uintptr_t)b;
    return x < y ? y - x < n : x - y < n;
}

int pt_comm_send_recv(pt_comm_group *g, const pt_comm_transfer *t, size_t n, void *const *streams, pt_err *err) {
    pt_err local;
    if (!err) err = &local;
    int rc = op_check(g, streams, "send/recv", err);
    if (rc) return rc;
    if (n && !t) return pt_err_set(err, PT_ERR_INVALID, "comm: send/recv of %zu transfers without a list", n);
    for (size_t k = 0; k < n; k++) {
        if (t[k].src_rank < 0 || t[k].src_rank >= g->size || t[k].dst_rank < 0 || t[k].dst_rank >= g->size)
            return pt_err_set(err, PT_ERR_INVALID, "comm: transfer %zu from rank %d to rank %d in a group of %d", k,
                              t[k].src_rank, t[k].dst_rank, g->size);
        if (t[k].bytes == 0) continue;
        if (!t[k].src || !t[k].dst)
            return pt_err_set(err, PT_ERR_INVALID, "comm: transfer %zu of %zu bytes has a NULL buffer", k, t[k].bytes);
        if (t[k].src_rank == t[k].dst_rank && t[k].src != t[k].dst && ranges_overlap(t[k].src, t[k].dst, t[k].bytes))
            return pt_err_set(err, PT_ERR_INVALID, "comm: transfer %zu copies between overlapping ranges", k);
    }
    if ((rc = injected(g, "send/recv", err))) return rc;
    return g->world->iface->send_recv(g, t, n, streams, err);
}

int pt_comm_check(pt_comm_world *w, pt_err *err) {
    pt_err local;
    if (!err) err = &local;
    if (!w) return pt_err_set(err, PT_ERR_INVALID, "comm: health check without a world");
    if (pt_comm_is_aborted(w)) return aborted_error(w, err);
    return w->iface->check(w, err);
}

static int wait_op(pt_comm_group *g, void *const *streams, double timeout_s, const char *what, pt_err *err) {
    pt_err local;
    if (!err) err = &local;
    int rc = op_check(g, streams, what, err);
    if (rc || (rc = injected(g, what, err))) return rc;
    return g->world->iface->wait(g, streams, timeout_s, err);
}

int pt_comm_wait(pt_comm_group *g, void *const *streams, double timeout_s, pt_err *err) {
    return wait_op(g, streams, timeout_s, "wait", err);
}

int pt_comm_barrier(pt_comm_group *g, void *const *streams, pt_err *err) {
    return wait_op(g, streams, 0, "barrier", err);
}
