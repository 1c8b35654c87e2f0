/* The comm interface in builds without NCCL: no world can be created, so
 * every other function only ever sees NULL handles. Engine code can call the
 * interface unconditionally and learn at run time that multi-GPU
 * communication is unavailable. Compiled without any CUDA header. */
#ifndef PROTEUS_HAVE_NCCL

#include "comm/comm.h"

int pt_comm_world_create_nccl(pt_comm_world **out, const pt_comm_config *cfg, pt_err *err) {
    if (out) *out = NULL;
    return pt_err_set(err, PT_ERR_UNSUPPORTED, "comm: built without NCCL");
}

void pt_comm_world_destroy(pt_comm_world *w) {}

int pt_comm_world_size(const pt_comm_world *w) { return 0; }
int pt_comm_world_device(const pt_comm_world *w, int rank) { return -1; }
int pt_comm_group_count(const pt_comm_world *w) { return 0; }
pt_comm_group *pt_comm_group_at(pt_comm_world *w, int index) { return NULL; }
pt_comm_group *pt_comm_group_find(pt_comm_world *w, int first, int size) { return NULL; }
int pt_comm_group_first(const pt_comm_group *g) { return -1; }
int pt_comm_group_size(const pt_comm_group *g) { return 0; }

static int unsupported(pt_err *err) {
    return pt_err_set(err, PT_ERR_UNSUPPORTED, "comm: built without NCCL");
}

int pt_comm_all_reduce(pt_comm_group *g, void *const *send, void *const *recv, size_t count,
                       pt_comm_dtype dtype, pt_comm_op op, void *const *streams, pt_err *err) {
    return unsupported(err);
}

int pt_comm_all_gather(pt_comm_group *g, void *const *send, void *const *recv, size_t count,
                       pt_comm_dtype dtype, void *const *streams, pt_err *err) {
    return unsupported(err);
}

int pt_comm_send_recv(pt_comm_group *g, const pt_comm_transfer *transfers, size_t n_transfers,
                      void *const *streams, pt_err *err) {
    return unsupported(err);
}

int pt_comm_check(pt_comm_world *w, pt_err *err) { return unsupported(err); }

int pt_comm_wait(pt_comm_group *g, void *const *streams, double timeout_s, pt_err *err) {
    return unsupported(err);
}

void pt_comm_abort(pt_comm_world *w, const char *reason) {}
bool pt_comm_is_aborted(const pt_comm_world *w) { return false; }

#else
/* ISO C forbids an empty translation unit. */
typedef int pt_comm_stub_unused;
#endif
