/* pt_comm_world_create_nccl in builds without NCCL: it refuses, so that
 * callers learn at run time that multi-GPU communication is unavailable.
 * Local worlds (src/comm/local) work in every build. */
#ifndef PROTEUS_HAVE_NCCL

#include "comm/comm.h"

int pt_comm_world_create_nccl(pt_comm_world **out, const pt_comm_config *cfg, pt_err *err) {
    if (out) *out = NULL;
    return pt_err_set(err, PT_ERR_UNSUPPORTED, "comm: built without NCCL");
}

#else
/* ISO C forbids an empty translation unit. */
typedef int pt_comm_stub_unused;
#endif
