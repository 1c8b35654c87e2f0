/* What a comm implementation provides (comm.h is what callers see).
 *
 * The world and group structs are shared: the generic layer (comm.c) answers
 * queries, keeps the aborted state and validates arguments, then calls the
 * implementation through the world's vtable. An implementation keeps its
 * own state behind `impl` (the world's and each group's). */
#ifndef PROTEUS_COMM_IMPL_H
#define PROTEUS_COMM_IMPL_H

#include <stdatomic.h>

#include "comm/comm.h"

typedef struct {
    const char *name; /* "local", "nccl" */
    /* Operations on a group of a healthy world, arguments validated by
     * comm.c. Any failure of the communication aborts the world (through
     * pt_comm_fail) before returning. */
    int (*all_reduce)(pt_comm_group *g, void *const *send, void *const *recv, size_t count, pt_comm_dtype dtype,
                      pt_comm_op op, void *const *streams, pt_err *err);
    int (*all_gather)(pt_comm_group *g, void *const *send, void *const *recv, size_t count, pt_comm_dtype dtype,
                      void *const *streams, pt_err *err);
    int (*all_gather_v)(pt_comm_group *g, void *const *bufs, const size_t *offsets, const size_t *counts,
                        pt_comm_dtype dtype, void *const *streams, pt_err *err);
    int (*broadcast)(pt_comm_group *g, void *const *bufs, size_t count, pt_comm_dtype dtype, int root,
                     void *const *streams, pt_err *err);
    int (*send_recv)(pt_comm_group *g, const pt_comm_transfer *t, size_t n, void *const *streams, pt_err *err);
    int (*check)(pt_comm_world *w, pt_err *err);
    int (*wait)(pt_comm_group *g, void *const *streams, double timeout_s, pt_err *err);
    /* Tears down the implementation's resources after the world was marked
     * aborted (idempotent). */
    void (*abort_comms)(pt_comm_world *w);
    /* Releases everything, the world's block included. */
    void (*destroy)(pt_comm_world *w);
} pt_comm_iface;

struct pt_comm_group {
    pt_comm_world *world;
    int first;  /* world rank of group rank 0 */
    int size;   /* ranks in the group */
    void *impl; /* nccl: ncclComm_t[size] */
};

struct pt_comm_world {
    const pt_comm_iface *iface;
    int n;                 /* world ranks */
    int *devices;          /* (n) device of each world rank */
    pt_comm_group *groups; /* (n_groups) in pt_comm_layout order */
    int n_groups;
    double timeout_s;      /* bound on set-up, enqueue and teardown waits */
    atomic_bool aborting;  /* won by the one caller that aborts */
    atomic_bool aborted;   /* set (release) once abort_reason is written */
    char abort_reason[sizeof(((pt_err *)0)->msg)];
    _Atomic int64_t fail_after; /* operations left before an injected failure; < 0 = off (pt_comm_world_fail_after) */
    void *impl;
};

/* Aborts the world with the message already in err; returns rc. */
int pt_comm_fail(pt_comm_world *w, int rc, pt_err *err);

/* The checks both implementations make before creating a world: device
 * ids, timeout, group layout. Returns the number of groups or an error. */
int pt_comm_config_check(const pt_comm_config *cfg, pt_err *err);

/* Fills the shared part of a world allocated by an implementation: n,
 * devices (copied into `devices`, room for n ints), groups (room for
 * n_groups, in pt_comm_layout order), timeout; and arms the injected
 * failure that PROTEUS_COMM_FAIL asks for. */
int pt_comm_world_init(pt_comm_world *w, const pt_comm_iface *iface, const pt_comm_config *cfg, int *devices,
                       pt_comm_group *groups, int n_groups, pt_err *err);

#endif
