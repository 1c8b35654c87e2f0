/* Communication between the devices of one process (DESIGN.md sections 2, 3, 6).
 *
 * A world is n devices driven by this one process (the engine drives all its
 * GPUs from one thread). World rank r is devices[r]. At creation the world
 * builds a pool of groups, one sub-communicator for every group that an
 * allowed TP layout can need: for each allowed TP degree d (those above n are
 * dropped, see pt_comm_layout), every aligned contiguous range of ranks
 * [k*d, (k+1)*d). The whole world [0, n) is always in the pool too: it is the
 * parent of the others and the group for moving pages between any two ranks.
 * Groups are looked up by (first rank, size) and never created later, so a
 * TP transformation never waits for communicator set-up.
 *
 * Operations are single-process style: the caller passes one buffer and one
 * stream per rank of the group (index i = group rank i = world rank first+i),
 * and the layer issues the per-rank calls as one grouped operation. Every
 * operation is asynchronous on the given streams: it returns once the work is
 * enqueued on them (not done); the caller orders later work on the same
 * streams, or waits with pt_comm_wait. Because one thread issues all ranks'
 * parts of an operation before the next, operations on different groups are
 * issued in the same order on every rank; to keep them from overtaking each
 * other on a device, give each rank one stream for all its communication
 * (NCCL warns that concurrent operations of different communicators on
 * unordered streams can deadlock). CUDA graph capture is not supported.
 *
 * Buffers and streams are void * so that this header needs no device
 * headers: in the nccl implementation they are device pointers on that
 * rank's device and cudaStream_t (NULL is that device's legacy default
 * stream; prefer explicit streams).
 *
 * Failures. Every function returns 0 or a negative code and writes a reason
 * into err. Argument errors (PT_ERR_INVALID) are found before anything is
 * issued and leave the world as it was. Any failure of the communication
 * itself -- an NCCL or CUDA error, an asynchronous error reported by a
 * communicator, a wait that runs past its timeout -- aborts the whole world
 * before the call returns: a collective that some ranks issued and others
 * did not leaves the ranks out of step, and NCCL documents that a
 * communicator that reported an error can only be aborted. After an abort
 * every operation returns PT_ERR_COMM_ABORTED at once (it never hangs); the
 * world can only be destroyed, and recovery is a new world.
 *
 * Threads: a world and its groups are used from one thread at a time (NCCL's
 * group state is per thread, and abort frees the communicators that another
 * thread could be using). Nothing blocks without a bound, so a driver thread
 * needs no watchdog: every wait inside the layer has the world's timeout and
 * pt_comm_wait has its own.
 *
 * Implementations, behind one vtable (src/comm/comm_impl.h) chosen when a
 * world is created: `local` (src/comm/local/: ranks are CPU virtual devices
 * of this process; buffers are host memory, streams are ignored and may be
 * NULL, every operation is complete when it returns, so nothing ever waits
 * on a peer and timeouts cannot trigger; groups of disjoint ranks may be
 * used from different threads at once) and `nccl` (src/comm/nccl/, built
 * when NCCL is found; without it pt_comm_world_create_nccl refuses). */
#ifndef PROTEUS_COMM_H
#define PROTEUS_COMM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proteus/util.h"

/* Error codes of this layer, beside the generic ones of util.h; kept far
 * from them so that new generic codes cannot collide. */
enum {
    PT_ERR_COMM = -100,         /* an NCCL or CUDA call failed; the world is now aborted */
    PT_ERR_COMM_TIMEOUT = -101, /* a wait ran past its timeout; the world is now aborted */
    PT_ERR_COMM_ABORTED = -102, /* the world was aborted earlier; nothing was done */
};

/* A single process drives the GPUs of one node; 64 is far above any node
 * built today and keeps per-rank bookkeeping small. */
#define PT_COMM_MAX_RANKS 64
/* Bound on set-up (init, split), on enqueueing a grouped operation (the
 * first operation on a group also connects its ranks) and on teardown, when
 * the config gives 0. */
#define PT_COMM_DEFAULT_TIMEOUT_S 60.0

typedef enum {
    PT_COMM_I8,
    PT_COMM_U8,
    PT_COMM_I32,
    PT_COMM_U32,
    PT_COMM_I64,
    PT_COMM_U64,
    PT_COMM_F16,
    PT_COMM_BF16,
    PT_COMM_F32,
    PT_COMM_F64,
    PT_COMM_DTYPE_COUNT,
} pt_comm_dtype;

typedef enum {
    PT_COMM_SUM,
    PT_COMM_MAX,
    PT_COMM_MIN,
    PT_COMM_OP_COUNT,
} pt_comm_op;

/* Bytes per element; 0 for a value outside the enum. */
static inline size_t pt_comm_dtype_size(pt_comm_dtype dt) {
    switch (dt) {
    case PT_COMM_I8: case PT_COMM_U8: return 1;
    case PT_COMM_F16: case PT_COMM_BF16: return 2;
    case PT_COMM_I32: case PT_COMM_U32: case PT_COMM_F32: return 4;
    case PT_COMM_I64: case PT_COMM_U64: case PT_COMM_F64: return 8;
    default: return 0;
    }
}

typedef struct pt_comm_world pt_comm_world;
typedef struct pt_comm_group pt_comm_group;

typedef struct {
    int first; /* world rank of the group's rank 0 */
    int size;  /* ranks in the group: world ranks [first, first + size) */
} pt_comm_group_desc;

/* The group pool of a world of n_ranks for the allowed TP degrees, computed
 * without any device, so that configurations can be checked up front and
 * tested anywhere. Rules:
 *   - a degree above n_ranks is dropped (a configuration written for 8 GPUs
 *     runs on fewer);
 *   - a degree of 0 or below, a degree listed twice, or a degree that does
 *     not divide n_ranks is an error (the groups of a degree must tile the
 *     world exactly, or some rank could never serve at that degree);
 *   - the world [0, n_ranks) is always included.
 * Groups are ordered by size, then by first rank. Writes up to cap entries
 * into out (out may be NULL to count only) and returns the number of
 * groups, or a negative error code. */
static inline int pt_comm_layout(int n_ranks, const int *tp_degrees, int n_degrees,
                                 pt_comm_group_desc *out, int cap, pt_err *err) {
    if (n_ranks < 1 || n_ranks > PT_COMM_MAX_RANKS)
        return pt_err_set(err, PT_ERR_INVALID, "comm: %d ranks (need 1 to %d)", n_ranks, PT_COMM_MAX_RANKS);
    if (n_degrees < 0 || (n_degrees > 0 && !tp_degrees))
        return pt_err_set(err, PT_ERR_INVALID, "comm: bad list of %d TP degrees", n_degrees);
    for (int i = 0; i < n_degrees; i++) {
        int d = tp_degrees[i];
        if (d < 1) return pt_err_set(err, PT_ERR_INVALID, "comm: TP degree %d is not positive", d);
        for (int j = 0; j < i; j++)
            if (tp_degrees[j] == d)
                return pt_err_set(err, PT_ERR_INVALID, "comm: TP degree %d is listed twice", d);
        if (d <= n_ranks && n_ranks % d != 0)
            return pt_err_set(err, PT_ERR_INVALID,
                              "comm: TP degree %d does not divide the %d devices of the world", d, n_ranks);
    }
    int count = 0;
    for (int d = 1; d <= n_ranks; d++) {
        bool want = d == n_ranks;
        for (int i = 0; i < n_degrees && !want; i++) want = tp_degrees[i] == d;
        if (!want) continue;
        for (int first = 0; first < n_ranks; first += d) {
            if (out) {
                if (count >= cap)
                    return pt_err_set(err, PT_ERR_INVALID, "comm: more than %d groups", cap);
                out[count].first = first;
                out[count].size = d;
            }
            count++;
        }
    }
    return count;
}

typedef struct {
    const int *devices;     /* (n_devices) device id of each world rank; distinct, >= 0 */
    int n_devices;
    const int *tp_degrees;  /* (n_tp_degrees) allowed TP degrees, e.g. {1, 2, 4, 8} */
    int n_tp_degrees;
    double timeout_s;       /* set-up, enqueue and teardown bound; 0 = PT_COMM_DEFAULT_TIMEOUT_S */
} pt_comm_config;

/* Creates the world and its whole group pool on NCCL. The configuration is
 * validated before any device call; then device ids are checked against the
 * devices present. Returns PT_ERR_UNSUPPORTED in builds without NCCL and
 * where no device can be used. On failure nothing is left behind and *out
 * is NULL. */
int pt_comm_world_create_nccl(pt_comm_world **out, const pt_comm_config *cfg, pt_err *err);

/* Creates a world over CPU virtual devices of this process (devices are
 * ids only; the same validation as NCCL). Never touches a GPU. */
int pt_comm_world_create_local(pt_comm_world **out, const pt_comm_config *cfg, pt_err *err);

/* "local" or "nccl". */
const char *pt_comm_world_kind(const pt_comm_world *w);

/* Injected failures, for tests of the failure rules on any implementation:
 * the next n operations of the world succeed and the (n + 1)-th fails as a
 * broken link would -- nothing of it is issued, the world is aborted, it
 * returns PT_ERR_COMM naming the fault ("injected"), and every later
 * operation PT_ERR_COMM_ABORTED. n < 0 turns it off (an abort stays). An
 * operation is a call of all-reduce, all-gather, all-gather-v, broadcast,
 * send/recv, wait or barrier, on any group of the world, that gets past
 * the argument checks with something to do (a count of 0 is not one);
 * pt_comm_check is not. Ranks driven from several threads share the one
 * count, so which thread's operation fails is then a race.
 *
 * The environment variable PROTEUS_COMM_FAIL arms worlds when they are
 * created, with n = N - 1, and a warning says so:
 *   N        every world fails its N-th operation (N >= 1): a link that
 *            breaks again and again -- the world that replaces an aborted
 *            one, a transformation's own world, all fail the same way;
 *   N,once   only the first world created with this setting does: one
 *            failure, after which a new world works.
 * Any other value is ignored with a warning that names it. */
void pt_comm_world_fail_after(pt_comm_world *w, int64_t n);

/* Releases every communicator and all memory; NULL is a no-op. A healthy
 * world is finalized (outstanding operations flushed, bounded by the world's
 * timeout) and then destroyed; an aborted one, or one whose finalize fails
 * or runs past the timeout, is aborted instead. The caller must not have
 * operations of this world still queued that it intends to use. */
void pt_comm_world_destroy(pt_comm_world *w);

int pt_comm_world_size(const pt_comm_world *w);
/* Device id of a world rank, or -1 for a rank out of range. */
int pt_comm_world_device(const pt_comm_world *w, int rank);

/* The pool, in pt_comm_layout order. */
int pt_comm_group_count(const pt_comm_world *w);
pt_comm_group *pt_comm_group_at(pt_comm_world *w, int index);
/* The group [first, first + size), or NULL when the pool has no such group
 * (not aligned, a degree that was not allowed, out of range) or w is NULL. */
pt_comm_group *pt_comm_group_find(pt_comm_world *w, int first, int size);
int pt_comm_group_first(const pt_comm_group *g);
int pt_comm_group_size(const pt_comm_group *g);
/* The world the group belongs to; NULL for a NULL group. */
pt_comm_world *pt_comm_group_world(const pt_comm_group *g);

/* recv[i] = op over all ranks j of send[j], count elements per rank.
 * send[i] == recv[i] is in place. */
int pt_comm_all_reduce(pt_comm_group *g, void *const *send, void *const *recv, size_t count,
                       pt_comm_dtype dtype, pt_comm_op op, void *const *streams, pt_err *err);

/* recv[i] holds size * count elements: rank j's send buffer lands at
 * element j * count, on every rank. This is the building block of the
 * deterministic reduction (DESIGN.md section 3): gather the partials, then
 * fold them in rank order. In place when send[i] == recv[i] + i * count. */
int pt_comm_all_gather(pt_comm_group *g, void *const *send, void *const *recv, size_t count,
                       pt_comm_dtype dtype, void *const *streams, pt_err *err);

/* In-place all-gather of unequal segments: on entry rank i's buffer
 * bufs[i] holds its own segment, elements [offsets[i], offsets[i] + counts[i]);
 * on return every rank's buffer holds every rank's segment at its offset.
 * Segments must not overlap; a count of 0 is allowed. This is how the
 * engine gathers the per-chunk partial sums of a row-parallel product when
 * ranks own unequal numbers of chunks (3 KV heads over 2 ranks). */
int pt_comm_all_gather_v(pt_comm_group *g, void *const *bufs, const size_t *offsets, const size_t *counts,
                         pt_comm_dtype dtype, void *const *streams, pt_err *err);

/* bufs[root]'s count elements are copied into every other rank's bufs[i]. */
int pt_comm_broadcast(pt_comm_group *g, void *const *bufs, size_t count, pt_comm_dtype dtype, int root,
                      void *const *streams, pt_err *err);

/* Returns when every rank of the group has finished the work issued on its
 * stream before the call (local: at once); bounded by the world's timeout,
 * with the failure rules of pt_comm_wait. */
int pt_comm_barrier(pt_comm_group *g, void *const *streams, pt_err *err);

/* One whole contiguous buffer moved from one rank of a group to another:
 * a head page, or a weight chunk. */
typedef struct {
    int src_rank;    /* group rank that holds the bytes */
    int dst_rank;    /* group rank that receives them (may equal src_rank) */
    const void *src; /* on src_rank's device */
    void *dst;       /* on dst_rank's device */
    size_t bytes;    /* 0 is skipped */
} pt_comm_transfer;

/* Moves every transfer of the list. A transfer within one rank is a
 * device-to-device copy on that rank's stream (its ranges must not overlap
 * unless identical, which is skipped). Transfers between ranks go out as
 * grouped sends and receives: the send is queued on the source rank's
 * stream, the receive on the destination's, and transfers between the same
 * pair of ranks are matched in list order. Long lists go out in batches of
 * PT_COMM_P2P_BATCH transfers, one after the other on the streams. */
#define PT_COMM_P2P_BATCH 512
int pt_comm_send_recv(pt_comm_group *g, const pt_comm_transfer *transfers, size_t n_transfers,
                      void *const *streams, pt_err *err);

/* Polls every communicator of the world for asynchronous errors (a peer
 * that failed, a network or device error). 0 when healthy or still busy;
 * PT_ERR_COMM (and the world aborted) on an error; PT_ERR_COMM_ABORTED when
 * it was aborted before. */
int pt_comm_check(pt_comm_world *w, pt_err *err);

/* Waits until every stream of the group (one per rank, as passed to the
 * operations) has finished its work, polling the world's asynchronous errors
 * meanwhile. timeout_s <= 0 means the world's timeout. On an error reported
 * by a stream or a communicator, or when the timeout passes, the world is
 * aborted -- the only way to interrupt a hung collective -- and the error
 * returned. A stream handle the device rejects is PT_ERR_INVALID and aborts
 * nothing. */
int pt_comm_wait(pt_comm_group *g, void *const *streams, double timeout_s, pt_err *err);

/* Aborts every communicator of the world (NCCL kernels still running exit
 * early, their results undefined) and marks the world unusable; reason is
 * logged and repeated in later errors. Idempotent; NULL is a no-op. For the
 * failures the layer cannot see itself: a peer instance that died, a
 * scheduler that gives up on a transformation. */
void pt_comm_abort(pt_comm_world *w, const char *reason);
bool pt_comm_is_aborted(const pt_comm_world *w);

#endif
