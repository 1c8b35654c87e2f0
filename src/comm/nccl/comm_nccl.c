/* The comm interface (comm.h) on NCCL: one process, one thread, n GPUs.
 *
 * Conventions: r is a world rank, i a rank within a group (world rank
 * first + i), d a group size. Every NCCL communicator of the world lives in
 * one array, world ranks first, then the groups' own communicators; the
 * world group [0, n) uses the world communicator itself rather than a split
 * copy of it.
 *
 * Choices, and why:
 *   - Non-blocking communicators (ncclConfig_t.blocking = 0). A blocking
 *     communicator can block the driver thread inside ncclGroupEnd or an
 *     init forever; a non-blocking one returns ncclInProgress and lets this
 *     layer poll ncclCommGetAsyncError against a deadline, and abort when it
 *     passes. Every call that returns ncclInProgress is followed by that poll
 *     before anything else touches the communicator or its streams (NCCL
 *     requires it: the kernels are enqueued by a background thread until the
 *     state leaves ncclInProgress). So every operation has been enqueued on
 *     the caller's streams when it returns, like a blocking call would.
 *   - The world comes from ncclCommInitRankConfig per device inside one
 *     group (ncclCommInitAll takes no config, so it cannot be non-blocking).
 *   - Groups come from ncclCommSplit of the world, one group call per
 *     degree, color = index of the group within its degree, key = world
 *     rank (so group rank i is world rank first + i; checked after the
 *     split). With a non-blocking parent, NCCL fills the new handle only
 *     when the split has completed (NVIDIA/nccl#1472), so the layer first
 *     waits for the parents to leave ncclInProgress, then for the handles to
 *     appear, then for the children to be ready.
 *   - splitShare stays 0: every group has its own resources, so aborting or
 *     destroying one cannot disturb another, and a group's buffers are only
 *     allocated when it is first used (NCCL connects lazily by default).
 *   - Teardown finalizes all communicators inside one group call, so that
 *     their intra-node barriers run concurrently rather than waiting on
 *     each other from this one thread, polls them against the timeout, then
 *     destroys them; anything that fails or hangs there falls back to abort.
 *   - Abort goes children first, world last, and clears every handle: an
 *     aborted communicator is freed by NCCL.
 *   - Sends and receives are issued as ncclUint8 counts of bytes; transfers
 *     within one rank are cudaMemcpyAsync. Lists go out in batches of
 *     PT_COMM_P2P_BATCH (two NCCL calls each): older NCCL releases refuse
 *     more than 2048 operations between ncclGroupStart and ncclGroupEnd.
 *   - The calling thread's current device is restored by every function
 *     that changes it (NCCL also switches devices inside its own calls).
 *   - Failures follow comm.h: any NCCL or CUDA failure, asynchronous error
 *     or timeout aborts the world before returning. One exception to "free
 *     everything": a split whose handles never appear leaves the world's
 *     block allocated, since NCCL may still write a handle into it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cuda_runtime_api.h>
#include <nccl.h>

#include "comm/comm_impl.h"

/* The implementation's state behind pt_comm_world.impl; a group's impl is
 * its ncclComm_t[size]. */
typedef struct {
    ncclComm_t *comms; /* (n_comms) world ranks 0..n-1, then the groups' own */
    int n_comms;
    bool leak;         /* NCCL may still write into this block: never free it */
} nccl_world;

#define NW(w) ((nccl_world *)(w)->impl)
#define GCOMMS(g) ((ncclComm_t *)(g)->impl)

/* ---- errors ---- */

static int nccl_fail(pt_err *err, ncclResult_t r, const char *call, const char *where) {
    /* ncclGetLastError is process-wide and may describe an earlier failure;
     * it is given as context, after the result of this call. */
    const char *last = ncclGetLastError(NULL);
    if (last && last[0])
        return pt_err_set(err, PT_ERR_COMM, "comm: %s failed (%s): %s; last NCCL message: %s", call, where,
                          ncclGetErrorString(r), last);
    return pt_err_set(err, PT_ERR_COMM, "comm: %s failed (%s): %s", call, where, ncclGetErrorString(r));
}

static int cuda_fail(pt_err *err, cudaError_t e, const char *call, const char *where) {
    /* Clear a non-sticky error so that it does not surface later in someone
     * else's launch check; a sticky one stays whatever we do. */
    (void)cudaGetLastError();
    return pt_err_set(err, PT_ERR_COMM, "comm: %s failed (%s): %s: %s", call, where, cudaGetErrorName(e),
                      cudaGetErrorString(e));
}

/* "world rank 3 (device 3)" or "group [4, 8) rank 1 (device 5)" for the
 * communicator in slot k of NW(w)->comms. */
static void describe_slot(const pt_comm_world *w, int k, char *buf, size_t cap) {
    if (k < w->n) {
        snprintf(buf, cap, "world rank %d (device %d)", k, w->devices[k]);
        return;
    }
    for (int gi = 0; gi < w->n_groups; gi++) {
        const pt_comm_group *g = &w->groups[gi];
        if (GCOMMS(g) != NW(w)->comms && k >= GCOMMS(g) - NW(w)->comms && k < GCOMMS(g) - NW(w)->comms + g->size) {
            int i = k - (int)(GCOMMS(g) - NW(w)->comms);
            snprintf(buf, cap, "group [%d, %d) rank %d (device %d)", g->first, g->first + g->size, i,
                     w->devices[g->first + i]);
            return;
        }
    }
    snprintf(buf, cap, "communicator %d", k);
}

static void describe_rank(const pt_comm_group *g, int i, char *buf, size_t cap) {
    if (i < 0) {
        snprintf(buf, cap, "group [%d, %d)", g->first, g->first + g->size);
        return;
    }
    snprintf(buf, cap, "group [%d, %d) rank %d (device %d)", g->first, g->first + g->size, i,
             g->world->devices[g->first + i]);
}

/* ---- polling ---- */

/* Spins for the first polls (an enqueue usually completes within
 * microseconds), then sleeps, doubling up to 1 ms, so that a long wait
 * costs no CPU to speak of. */
static void poll_pause(int *polls) {
    int k = (*polls)++;
    if (k < 32) return;
    long ns = 1000L << (k - 32 < 10 ? k - 32 : 10);
    if (ns > 1000000L) ns = 1000000L;
    struct timespec ts = {0, ns};
    nanosleep(&ts, NULL);
}

/* Waits until no communicator in comms[0, count) is in progress: their
 * grouped call (init, split, finalize, or an operation) has finished
 * enqueueing. Slots that are NULL are skipped. comms must be slots of
 * NW(w)->comms (for the messages). Does not abort. */
static int wait_ready(pt_comm_world *w, ncclComm_t *comms, int count, const char *what, pt_err *err) {
    double deadline = pt_now() + w->timeout_s;
    char where[96];
    for (int polls = 0;;) {
        bool busy = false;
        for (int k = 0; k < count; k++) {
            if (!comms[k]) continue;
            ncclResult_t state = ncclSuccess;
            ncclResult_t r = ncclCommGetAsyncError(comms[k], &state);
            if (r != ncclSuccess) {
                describe_slot(w, (int)(comms + k - NW(w)->comms), where, sizeof(where));
                return nccl_fail(err, r, "ncclCommGetAsyncError", where);
            }
            if (state == ncclInProgress) {
                busy = true;
            } else if (state != ncclSuccess) {
                describe_slot(w, (int)(comms + k - NW(w)->comms), where, sizeof(where));
                return nccl_fail(err, state, what, where);
            }
        }
        if (!busy) return 0;
        if (pt_now() > deadline)
            return pt_err_set(err, PT_ERR_COMM_TIMEOUT, "comm: %s still in progress after %.1f s", what,
                              w->timeout_s);
        poll_pause(&polls);
    }
}

/* Asynchronous errors of every communicator of the world; ncclInProgress
 * (an operation still being enqueued) is not an error. Does not abort. */
static int poll_async_errors(pt_comm_world *w, pt_err *err) {
    char where[96];
    for (int k = 0; k < NW(w)->n_comms; k++) {
        if (!NW(w)->comms[k]) continue;
        ncclResult_t state = ncclSuccess;
        ncclResult_t r = ncclCommGetAsyncError(NW(w)->comms[k], &state);
        if (r != ncclSuccess) {
            describe_slot(w, k, where, sizeof(where));
            return nccl_fail(err, r, "ncclCommGetAsyncError", where);
        }
        if (state != ncclSuccess && state != ncclInProgress) {
            describe_slot(w, k, where, sizeof(where));
            const char *last = ncclGetLastError(NULL);
            return pt_err_set(err, PT_ERR_COMM, "comm: asynchronous error on %s: %s%s%s", where,
                              ncclGetErrorString(state), last && last[0] ? "; last NCCL message: " : "",
                              last && last[0] ? last : "");
        }
    }
    return 0;
}

/* ---- abort and teardown ---- */

/* Called once by pt_comm_abort, after the world is marked aborted. */
static void nccl_abort(pt_comm_world *w) {
    int dev = -1;
    if (cudaGetDevice(&dev) != cudaSuccess) dev = -1;
    /* Children (the tail of the array) before the world they were split from. */
    for (int k = NW(w)->n_comms - 1; k >= 0; k--) {
        if (!NW(w)->comms[k]) continue;
        ncclResult_t r = ncclCommAbort(NW(w)->comms[k]);
        if (r != ncclSuccess && r != ncclInProgress) {
            char where[96];
            describe_slot(w, k, where, sizeof(where));
            pt_log(PT_LOG_WARN, "comm: ncclCommAbort (%s): %s", where, ncclGetErrorString(r));
        }
        NW(w)->comms[k] = NULL;
    }
    if (dev >= 0) (void)cudaSetDevice(dev);
}


/* Finalizes every communicator (flushing what is still queued) and waits
 * for them against the timeout. One group call, so that the finalizations
 * of all ranks run at the same time: each one ends in a barrier with the
 * other ranks of its communicator. */
static int finalize_all(pt_comm_world *w, pt_err *err) {
    int rc = 0;
    ncclResult_t r = ncclGroupStart();
    if (r != ncclSuccess) return nccl_fail(err, r, "ncclGroupStart", "finalize");
    for (int k = 0; k < NW(w)->n_comms && rc == 0; k++) {
        if (!NW(w)->comms[k]) continue;
        r = ncclCommFinalize(NW(w)->comms[k]);
        if (r != ncclSuccess && r != ncclInProgress) {
            char where[96];
            describe_slot(w, k, where, sizeof(where));
            rc = nccl_fail(err, r, "ncclCommFinalize", where);
        }
    }
    r = ncclGroupEnd();
    if (rc) return rc;
    if (r != ncclSuccess && r != ncclInProgress) return nccl_fail(err, r, "ncclGroupEnd", "finalize");
    return wait_ready(w, NW(w)->comms, NW(w)->n_comms, "ncclCommFinalize", err);
}

static void nccl_destroy(pt_comm_world *w) {
    int dev = -1;
    if (cudaGetDevice(&dev) != cudaSuccess) dev = -1;
    if (!pt_comm_is_aborted(w)) {
        pt_err e;
        if (finalize_all(w, &e) != 0) {
            pt_comm_abort(w, e.msg); /* clears every handle */
        } else {
            for (int k = NW(w)->n_comms - 1; k >= 0; k--) {
                if (!NW(w)->comms[k]) continue;
                ncclResult_t r = ncclCommDestroy(NW(w)->comms[k]);
                if (r != ncclSuccess && r != ncclInProgress) {
                    char where[96];
                    describe_slot(w, k, where, sizeof(where));
                    pt_log(PT_LOG_WARN, "comm: ncclCommDestroy (%s): %s", where, ncclGetErrorString(r));
                }
                NW(w)->comms[k] = NULL;
            }
        }
    }
    if (dev >= 0) (void)cudaSetDevice(dev);
    if (NW(w)->leak) {
        pt_log(PT_LOG_WARN, "comm: keeping %d communicator slots allocated: a failed split may still fill them",
               NW(w)->n_comms);
        return;
    }
    free(w);
}

/* ---- creation ---- */

static int init_world(pt_comm_world *w, ncclConfig_t *config, pt_err *err) {
    ncclUniqueId id;
    ncclResult_t r = ncclGetUniqueId(&id);
    if (r != ncclSuccess) return nccl_fail(err, r, "ncclGetUniqueId", "world");
    r = ncclGroupStart();
    if (r != ncclSuccess) return nccl_fail(err, r, "ncclGroupStart", "world init");
    int rc = 0;
    char where[96];
    for (int rank = 0; rank < w->n && rc == 0; rank++) {
        describe_slot(w, rank, where, sizeof(where));
        /* Inside a group, NCCL takes the rank's device from the current one. */
        cudaError_t ce = cudaSetDevice(w->devices[rank]);
        if (ce != cudaSuccess) {
            rc = cuda_fail(err, ce, "cudaSetDevice", where);
            break;
        }
        r = ncclCommInitRankConfig(&NW(w)->comms[rank], w->n, id, rank, config);
        if (r != ncclSuccess && r != ncclInProgress) rc = nccl_fail(err, r, "ncclCommInitRankConfig", where);
    }
    /* Always close the group, also after a failure inside it. */
    r = ncclGroupEnd();
    if (rc) return rc;
    if (r != ncclSuccess && r != ncclInProgress) return nccl_fail(err, r, "ncclGroupEnd", "world init");
    return wait_ready(w, NW(w)->comms, w->n, "ncclCommInitRankConfig", err);
}

/* Splits the world into the groups gi0 .. gi0 + n/d - 1, all of size d. */
static int split_degree(pt_comm_world *w, int gi0, int d, ncclConfig_t *config, pt_err *err) {
    char where[96];
    ncclResult_t r = ncclGroupStart();
    if (r != ncclSuccess) return nccl_fail(err, r, "ncclGroupStart", "split");
    int rc = 0;
    for (int rank = 0; rank < w->n && rc == 0; rank++) {
        pt_comm_group *g = &w->groups[gi0 + rank / d];
        r = ncclCommSplit(NW(w)->comms[rank], rank / d, rank, &GCOMMS(g)[rank % d], config);
        if (r != ncclSuccess && r != ncclInProgress) {
            describe_slot(w, rank, where, sizeof(where));
            rc = nccl_fail(err, r, "ncclCommSplit", where);
        }
    }
    r = ncclGroupEnd();
    if (rc) return rc;
    if (r != ncclSuccess && r != ncclInProgress) return nccl_fail(err, r, "ncclGroupEnd", "split");
    /* Parents first: until they leave ncclInProgress the split is running
     * and the new handles may still be NULL. */
    rc = wait_ready(w, NW(w)->comms, w->n, "ncclCommSplit", err);
    if (rc) return rc;
    double deadline = pt_now() + w->timeout_s;
    for (int polls = 0;;) {
        int missing = -1;
        for (int rank = 0; rank < w->n && missing < 0; rank++) {
            pt_comm_group *g = &w->groups[gi0 + rank / d];
            if (!__atomic_load_n(&GCOMMS(g)[rank % d], __ATOMIC_ACQUIRE)) missing = rank;
        }
        if (missing < 0) break;
        if (pt_now() > deadline) {
            /* NCCL may still write the handle into this block later. */
            NW(w)->leak = true;
            return pt_err_set(err, PT_ERR_COMM_TIMEOUT,
                              "comm: split into groups of %d: no communicator for world rank %d after %.1f s", d,
                              missing, w->timeout_s);
        }
        poll_pause(&polls);
    }
    for (int k = 0; k < w->n / d; k++) {
        pt_comm_group *g = &w->groups[gi0 + k];
        rc = wait_ready(w, GCOMMS(g), d, "ncclCommSplit", err);
        if (rc) return rc;
        /* The split must have produced exactly the group asked for. */
        for (int i = 0; i < d; i++) {
            int count = -1, user_rank = -1, dev = -1;
            describe_rank(g, i, where, sizeof(where));
            if ((r = ncclCommCount(GCOMMS(g)[i], &count)) != ncclSuccess ||
                (r = ncclCommUserRank(GCOMMS(g)[i], &user_rank)) != ncclSuccess ||
                (r = ncclCommCuDevice(GCOMMS(g)[i], &dev)) != ncclSuccess)
                return nccl_fail(err, r, "ncclCommCount/UserRank/CuDevice", where);
            if (count != d || user_rank != i || dev != w->devices[g->first + i])
                return pt_err_set(err, PT_ERR_COMM,
                                  "comm: split gave %s a communicator of %d ranks, rank %d, device %d", where,
                                  count, user_rank, dev);
        }
    }
    return 0;
}

static int nccl_all_reduce(pt_comm_group *g, void *const *send, void *const *recv, size_t count, pt_comm_dtype dtype,
                           pt_comm_op op, void *const *streams, pt_err *err);
static int nccl_all_gather(pt_comm_group *g, void *const *send, void *const *recv, size_t count, pt_comm_dtype dtype,
                           void *const *streams, pt_err *err);
static int nccl_all_gather_v(pt_comm_group *g, void *const *bufs, const size_t *offsets, const size_t *counts,
                             pt_comm_dtype dtype, void *const *streams, pt_err *err);
static int nccl_broadcast(pt_comm_group *g, void *const *bufs, size_t count, pt_comm_dtype dtype, int root,
                          void *const *streams, pt_err *err);
static int nccl_send_recv(pt_comm_group *g, const pt_comm_transfer *t, size_t n, void *const *streams, pt_err *err);
static int nccl_check(pt_comm_world *w, pt_err *err);
static int nccl_wait(pt_comm_group *g, void *const *streams, double timeout_s, pt_err *err);

static const pt_comm_iface nccl_iface = {
    "nccl", nccl_all_reduce, nccl_all_gather, nccl_all_gather_v, nccl_broadcast, nccl_send_recv,
    nccl_check, nccl_wait, nccl_abort, nccl_destroy,
};

int pt_comm_world_create_nccl(pt_comm_world **out, const pt_comm_config *cfg, pt_err *err) {
    pt_err local;
    if (!err) err = &local;
    if (!out) return pt_err_set(err, PT_ERR_INVALID, "comm: no place for the world");
    *out = NULL;

    /* Everything that needs no device, first. */
    int n_groups = pt_comm_config_check(cfg, err);
    if (n_groups < 0) return n_groups;
    int n = cfg->n_devices;

    /* Then the devices present. */
    int n_present = 0;
    cudaError_t ce = cudaGetDeviceCount(&n_present);
    if (ce != cudaSuccess) {
        (void)cudaGetLastError();
        return pt_err_set(err, PT_ERR_UNSUPPORTED, "comm: no CUDA device can be used: %s: %s", cudaGetErrorName(ce),
                          cudaGetErrorString(ce));
    }
    if (n_present == 0) return pt_err_set(err, PT_ERR_UNSUPPORTED, "comm: no CUDA device");
    for (int r = 0; r < n; r++)
        if (cfg->devices[r] >= n_present)
            return pt_err_set(err, PT_ERR_INVALID, "comm: device %d of rank %d does not exist (%d devices)",
                              cfg->devices[r], r, n_present);

    /* One block: the world, its NCCL state, its groups, every communicator
     * slot, the device list (ints last, so that every part stays aligned). */
    pt_comm_group_desc *desc = pt_xcalloc((size_t)n_groups, sizeof(*desc));
    int n_desc = pt_comm_layout(n, cfg->tp_degrees, cfg->n_tp_degrees, desc, n_groups, err);
    if (n_desc < 0) {
        free(desc);
        return n_desc;
    }
    int n_comms = n;
    for (int gi = 0; gi < n_desc; gi++)
        if (desc[gi].size != n) n_comms += desc[gi].size;
    free(desc);
    size_t bytes = sizeof(pt_comm_world) + sizeof(nccl_world) + (size_t)n_desc * sizeof(pt_comm_group) +
                   (size_t)n_comms * sizeof(ncclComm_t) + (size_t)n * sizeof(int);
    pt_comm_world *w = calloc(1, bytes);
    if (!w) return pt_err_set(err, PT_ERR_NOMEM, "comm: out of memory for the world");
    nccl_world *nw = (nccl_world *)(w + 1);
    w->impl = nw;
    pt_comm_group *groups = (pt_comm_group *)(nw + 1);
    nw->comms = (ncclComm_t *)(groups + n_desc);
    nw->n_comms = n_comms;
    int rc = pt_comm_world_init(w, &nccl_iface, cfg, (int *)(nw->comms + n_comms), groups, n_desc, err);
    if (rc) {
        free(w);
        return rc;
    }
    ncclComm_t *next = nw->comms + n;
    for (int gi = 0; gi < n_desc; gi++) {
        pt_comm_group *g = &w->groups[gi];
        if (g->size == n) {
            g->impl = nw->comms;
        } else {
            g->impl = next;
            next += g->size;
        }
    }

    int dev = -1;
    if (cudaGetDevice(&dev) != cudaSuccess) dev = -1;
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    config.splitShare = 0;
    rc = init_world(w, &config, err);
    /* Groups of one size are consecutive in layout order. */
    for (int gi = 0; gi < n_desc && rc == 0;) {
        int d = w->groups[gi].size;
        if (d != n) rc = split_degree(w, gi, d, &config, err);
        gi += n / d;
    }
    if (dev >= 0) (void)cudaSetDevice(dev);
    if (rc) {
        /* Whatever exists is aborted: a half-made world has nothing worth
         * flushing, and abort cannot wait on a peer that never arrived. */
        char reason[sizeof(err->msg)];
        snprintf(reason, sizeof(reason), "%s", err->msg);
        pt_comm_abort(w, reason);
        pt_comm_world_destroy(w);
        return rc;
    }
    int version = 0;
    (void)ncclGetVersion(&version);
    pt_log(PT_LOG_INFO, "comm: NCCL %d world of %d devices, %d groups", version, n, n_desc);
    *out = w;
    return 0;
}


/* ---- operations ---- */

static bool nccl_dtype(pt_comm_dtype dt, ncclDataType_t *out) {
    switch (dt) {
    case PT_COMM_I8: *out = ncclInt8; return true;
    case PT_COMM_U8: *out = ncclUint8; return true;
    case PT_COMM_I32: *out = ncclInt32; return true;
    case PT_COMM_U32: *out = ncclUint32; return true;
    case PT_COMM_I64: *out = ncclInt64; return true;
    case PT_COMM_U64: *out = ncclUint64; return true;
    case PT_COMM_F16: *out = ncclFloat16; return true;
    case PT_COMM_BF16: *out = ncclBfloat16; return true;
    case PT_COMM_F32: *out = ncclFloat32; return true;
    case PT_COMM_F64: *out = ncclFloat64; return true;
    default: return false;
    }
}

static bool nccl_op(pt_comm_op op, ncclRedOp_t *out) {
    switch (op) {
    case PT_COMM_SUM: *out = ncclSum; return true;
    case PT_COMM_MAX: *out = ncclMax; return true;
    case PT_COMM_MIN: *out = ncclMin; return true;
    default: return false;
    }
}

/* Closes a group call that began with ncclGroupStart, whatever happened
 * inside it (rc), then waits until the work is enqueued on every rank's
 * stream. Any failure aborts the world: some ranks may have issued their
 * part and others not. */
static int group_finish(pt_comm_group *g, int rc, const char *what, pt_err *err) {
    ncclResult_t r = ncclGroupEnd();
    if (rc == 0 && r != ncclSuccess && r != ncclInProgress) {
        char where[96];
        describe_rank(g, -1, where, sizeof(where));
        rc = nccl_fail(err, r, "ncclGroupEnd", where);
    }
    if (rc == 0) rc = wait_ready(g->world, GCOMMS(g), g->size, what, err);
    return rc ? pt_comm_fail(g->world, rc, err) : 0;
}

static int group_start(pt_comm_group *g, pt_err *err) {
    ncclResult_t r = ncclGroupStart();
    if (r == ncclSuccess) return 0;
    char where[96];
    describe_rank(g, -1, where, sizeof(where));
    return pt_comm_fail(g->world, nccl_fail(err, r, "ncclGroupStart", where), err);
}

static int nccl_all_reduce(pt_comm_group *g, void *const *send, void *const *recv, size_t count, pt_comm_dtype dtype,
                           pt_comm_op op, void *const *streams, pt_err *err) {
    ncclDataType_t nt;
    ncclRedOp_t no;
    if (!nccl_dtype(dtype, &nt)) return pt_err_set(err, PT_ERR_INVALID, "comm: all-reduce of dtype %d", (int)dtype);
    if (!nccl_op(op, &no)) return pt_err_set(err, PT_ERR_INVALID, "comm: all-reduce with op %d", (int)op);
    int rc = group_start(g, err);
    if (rc) return rc;
    for (int i = 0; i < g->size && rc == 0; i++) {
        ncclResult_t r = ncclAllReduce(send[i], recv[i], count, nt, no, GCOMMS(g)[i], (cudaStream_t)streams[i]);
        if (r != ncclSuccess && r != ncclInProgress) {
            char where[96];
            describe_rank(g, i, where, sizeof(where));
            rc = nccl_fail(err, r, "ncclAllReduce", where);
        }
    }
    return group_finish(g, rc, "ncclAllReduce", err);
}

static int nccl_all_gather(pt_comm_group *g, void *const *send, void *const *recv, size_t count, pt_comm_dtype dtype,
                           void *const *streams, pt_err *err) {
    ncclDataType_t nt;
    if (!nccl_dtype(dtype, &nt)) return pt_err_set(err, PT_ERR_INVALID, "comm: all-gather of dtype %d", (int)dtype);
    int rc = group_start(g, err);
    if (rc) return rc;
    for (int i = 0; i < g->size && rc == 0; i++) {
        ncclResult_t r = ncclAllGather(send[i], recv[i], count, nt, GCOMMS(g)[i], (cudaStream_t)streams[i]);
        if (r != ncclSuccess && r != ncclInProgress) {
            char where[96];
            describe_rank(g, i, where, sizeof(where));
            rc = nccl_fail(err, r, "ncclAllGather", where);
        }
    }
    return group_finish(g, rc, "ncclAllGather", err);
}

/* Unequal segments in place: one broadcast per root, all in one group call
 * (NCCL has no all-gather-v; grouped broadcasts are its documented substitute). */
static int nccl_all_gather_v(pt_comm_group *g, void *const *bufs, const size_t *offsets, const size_t *counts,
                             pt_comm_dtype dtype, void *const *streams, pt_err *err) {
    ncclDataType_t nt;
    if (!nccl_dtype(dtype, &nt)) return pt_err_set(err, PT_ERR_INVALID, "comm: all-gather-v of dtype %d", (int)dtype);
    size_t es = pt_comm_dtype_size(dtype);
    int rc = group_start(g, err);
    if (rc) return rc;
    for (int root = 0; root < g->size && rc == 0; root++) {
        if (!counts[root]) continue;
        for (int i = 0; i < g->size && rc == 0; i++) {
            void *p = (uint8_t *)bufs[i] + offsets[root] * es;
            ncclResult_t r = ncclBroadcast(p, p, counts[root], nt, root, GCOMMS(g)[i], (cudaStream_t)streams[i]);
            if (r != ncclSuccess && r != ncclInProgress) {
                char where[96];
                describe_rank(g, i, where, sizeof(where));
                rc = nccl_fail(err, r, "ncclBroadcast", where);
            }
        }
    }
    return group_finish(g, rc, "ncclBroadcast", err);
}

static int nccl_broadcast(pt_comm_group *g, void *const *bufs, size_t count, pt_comm_dtype dtype, int root,
                          void *const *streams, pt_err *err) {
    ncclDataType_t nt;
    if (!nccl_dtype(dtype, &nt)) return pt_err_set(err, PT_ERR_INVALID, "comm: broadcast of dtype %d", (int)dtype);
    int rc = group_start(g, err);
    if (rc) return rc;
    for (int i = 0; i < g->size && rc == 0; i++) {
        ncclResult_t r = ncclBroadcast(bufs[i], bufs[i], count, nt, root, GCOMMS(g)[i], (cudaStream_t)streams[i]);
        if (r != ncclSuccess && r != ncclInProgress) {
            char where[96];
            describe_rank(g, i, where, sizeof(where));
            rc = nccl_fail(err, r, "ncclBroadcast", where);
        }
    }
    return group_finish(g, rc, "ncclBroadcast", err);
}

static int nccl_send_recv(pt_comm_group *g, const pt_comm_transfer *t, size_t n, void *const *streams, pt_err *err) {
    int rc = 0;
    size_t n_cross = 0;
    for (size_t k = 0; k < n; k++)
        if (t[k].bytes && t[k].src_rank != t[k].dst_rank) n_cross++;

    /* Within one rank: a copy on that rank's stream, issued before the
     * transfers between ranks. */
    int dev = -1;
    if (cudaGetDevice(&dev) != cudaSuccess) dev = -1;
    for (size_t k = 0; k < n && rc == 0; k++) {
        if (t[k].bytes == 0 || t[k].src_rank != t[k].dst_rank || t[k].src == t[k].dst) continue;
        char where[96];
        describe_rank(g, t[k].src_rank, where, sizeof(where));
        cudaError_t ce = cudaSetDevice(g->world->devices[g->first + t[k].src_rank]);
        if (ce == cudaSuccess)
            ce = cudaMemcpyAsync(t[k].dst, t[k].src, t[k].bytes, cudaMemcpyDeviceToDevice,
                                 (cudaStream_t)streams[t[k].src_rank]);
        if (ce != cudaSuccess) rc = cuda_fail(err, ce, "cudaMemcpyAsync", where);
    }
    if (dev >= 0) (void)cudaSetDevice(dev);
    if (rc) return pt_comm_fail(g->world, rc, err);

    /* Between ranks: batches of grouped send/receive pairs. */
    size_t k = 0;
    while (n_cross > 0) {
        rc = group_start(g, err);
        if (rc) return rc;
        size_t in_batch = 0;
        for (; k < n && in_batch < PT_COMM_P2P_BATCH && rc == 0; k++) {
            if (t[k].bytes == 0 || t[k].src_rank == t[k].dst_rank) continue;
            int s = t[k].src_rank, d = t[k].dst_rank;
            char where[96];
            ncclResult_t r = ncclSend(t[k].src, t[k].bytes, ncclUint8, d, GCOMMS(g)[s], (cudaStream_t)streams[s]);
            if (r != ncclSuccess && r != ncclInProgress) {
                describe_rank(g, s, where, sizeof(where));
                rc = nccl_fail(err, r, "ncclSend", where);
                break;
            }
            r = ncclRecv(t[k].dst, t[k].bytes, ncclUint8, s, GCOMMS(g)[d], (cudaStream_t)streams[d]);
            if (r != ncclSuccess && r != ncclInProgress) {
                describe_rank(g, d, where, sizeof(where));
                rc = nccl_fail(err, r, "ncclRecv", where);
                break;
            }
            in_batch++;
        }
        rc = group_finish(g, rc, "ncclSend/ncclRecv", err);
        if (rc) return rc;
        n_cross -= in_batch;
    }
    return 0;
}

static int nccl_check(pt_comm_world *w, pt_err *err) {
    int rc = poll_async_errors(w, err);
    return rc ? pt_comm_fail(w, rc, err) : 0;
}

static int nccl_wait(pt_comm_group *g, void *const *streams, double timeout_s, pt_err *err) {
    int rc = 0;
    pt_comm_world *w = g->world;
    double limit = timeout_s > 0 ? timeout_s : w->timeout_s;
    double deadline = pt_now() + limit;
    int dev = -1;
    if (cudaGetDevice(&dev) != cudaSuccess) dev = -1;
    bool abort_world = false;
    for (int polls = 0;;) {
        bool busy = false;
        for (int i = 0; i < g->size && rc == 0; i++) {
            /* The legacy default stream (NULL) is the current device's. */
            cudaError_t ce = streams[i] ? cudaSuccess : cudaSetDevice(w->devices[g->first + i]);
            if (ce == cudaSuccess) ce = cudaStreamQuery((cudaStream_t)streams[i]);
            if (ce == cudaSuccess) continue;
            if (ce == cudaErrorNotReady) {
                busy = true;
                continue;
            }
            char where[96];
            describe_rank(g, i, where, sizeof(where));
            if (ce == cudaErrorInvalidResourceHandle || ce == cudaErrorInvalidValue) {
                (void)cudaGetLastError();
                rc = pt_err_set(err, PT_ERR_INVALID, "comm: wait: the stream of %s is not valid: %s", where,
                                cudaGetErrorString(ce));
            } else {
                /* A fault in any work of the stream: the device is unusable. */
                rc = cuda_fail(err, ce, "cudaStreamQuery", where);
                abort_world = true;
            }
        }
        if (rc || !busy) break;
        rc = poll_async_errors(w, err);
        if (rc) {
            abort_world = true;
            break;
        }
        if (pt_now() > deadline) {
            char where[96];
            describe_rank(g, -1, where, sizeof(where));
            rc = pt_err_set(err, PT_ERR_COMM_TIMEOUT, "comm: the streams of %s are not done after %.3f s", where,
                            limit);
            abort_world = true;
            break;
        }
        poll_pause(&polls);
    }
    if (dev >= 0) (void)cudaSetDevice(dev);
    return abort_world ? pt_comm_fail(w, rc, err) : rc;
}
