/* The comm interface (comm.h) for CPU virtual devices of one process.
 *
 * Buffers are host memory; one caller passes every rank's buffer, so each
 * operation is a set of copies done by the calling thread and complete when
 * it returns (streams are ignored). Reductions fold the ranks left to
 * right, in rank order, so that a sum has the same bits on every rank and
 * at every call. Nothing here fails once the arguments are checked, short
 * of memory (and a 16-bit all-reduce, which is not supported); an injected
 * fault (comm.c, tests) fails an operation before it gets here. The
 * failure rules are NCCL's: a failure aborts the world, and every later
 * operation returns PT_ERR_COMM_ABORTED. */
#include <stdlib.h>
#include <string.h>

#include "comm/comm_impl.h"

#define FOLD(T, op)                                                                                                   \
    do {                                                                                                             \
        T *o = out;                                                                                                   \
        const T *x = in;                                                                                              \
        for (size_t k = 0; k < count; k++) o[k] = op;                                                                \
    } while (0)

/* out[k] = out[k] op in[k] over count elements of dtype. */
static void fold(void *out, const void *in, size_t count, pt_comm_dtype dt, pt_comm_op op) {
#define CASE(DT, T)                                                                                                   \
    case DT:                                                                                                          \
        if (op == PT_COMM_SUM) FOLD(T, o[k] + x[k]);                                                                  \
        else if (op == PT_COMM_MAX) FOLD(T, o[k] > x[k] ? o[k] : x[k]);                                               \
        else FOLD(T, o[k] < x[k] ? o[k] : x[k]);                                                                      \
        break;
    switch (dt) {
        CASE(PT_COMM_I8, int8_t)
        CASE(PT_COMM_U8, uint8_t)
        CASE(PT_COMM_I32, int32_t)
        CASE(PT_COMM_U32, uint32_t)
        CASE(PT_COMM_I64, int64_t)
        CASE(PT_COMM_U64, uint64_t)
        CASE(PT_COMM_F32, float)
        CASE(PT_COMM_F64, double)
    default: break;
    }
#undef CASE
}

static int local_all_reduce(pt_comm_group *g, void *const *send, void *const *recv, size_t count, pt_comm_dtype dtype,
                            pt_comm_op op, void *const *streams, pt_err *err) {
    if (dtype == PT_COMM_F16 || dtype == PT_COMM_BF16)
        return pt_err_set(err, PT_ERR_UNSUPPORTED, "comm: local all-reduce of 16-bit floats is not supported");
    size_t bytes = count * pt_comm_dtype_size(dtype);
    /* The fold goes into a scratch buffer: recv may alias any rank's send. */
    void *acc = malloc(bytes);
    if (!acc) {
        pt_err_set(err, PT_ERR_COMM, "comm: out of memory for a local all-reduce of %zu bytes", bytes);
        return pt_comm_fail(g->world, PT_ERR_COMM, err);
    }
    memcpy(acc, send[0], bytes);
    for (int i = 1; i < g->size; i++) fold(acc, send[i], count, dtype, op);
    for (int i = 0; i < g->size; i++) memcpy(recv[i], acc, bytes);
    free(acc);
    return 0;
}

static int local_all_gather(pt_comm_group *g, void *const *send, void *const *recv, size_t count, pt_comm_dtype dtype,
                            void *const *streams, pt_err *err) {
    size_t bytes = count * pt_comm_dtype_size(dtype);
    for (int i = 0; i < g->size; i++)
        for (int j = 0; j < g->size; j++) {
            uint8_t *dst = (uint8_t *)recv[i] + (size_t)j * bytes;
            if (dst != send[j]) memmove(dst, send[j], bytes);
        }
    return 0;
}

static int local_all_gather_v(pt_comm_group *g, void *const *bufs, const size_t *offsets, const size_t *counts,
                              pt_comm_dtype dtype, void *const *streams, pt_err *err) {
    size_t es = pt_comm_dtype_size(dtype);
    for (int i = 0; i < g->size; i++)
        for (int j = 0; j < g->size; j++)
            if (i != j && counts[j])
                memcpy((uint8_t *)bufs[i] + offsets[j] * es, (const uint8_t *)bufs[j] + offsets[j] * es,
                       counts[j] * es);
    return 0;
}

static int local_broadcast(pt_comm_group *g, void *const *bufs, size_t count, pt_comm_dtype dtype, int root,
                           void *const *streams, pt_err *err) {
    for (int i = 0; i < g->size; i++)
        if (i != root && bufs[i] != bufs[root]) memcpy(bufs[i], bufs[root], count * pt_comm_dtype_size(dtype));
    return 0;
}

static int local_send_recv(pt_comm_group *g, const pt_comm_transfer *t, size_t n, void *const *streams, pt_err *err) {
    for (size_t k = 0; k < n; k++)
        if (t[k].bytes && t[k].src != t[k].dst) memcpy(t[k].dst, t[k].src, t[k].bytes);
    return 0;
}

static int local_check(pt_comm_world *w, pt_err *err) { return 0; }
static int local_wait(pt_comm_group *g, void *const *streams, double timeout_s, pt_err *err) { return 0; }
static void local_abort(pt_comm_world *w) {}
static void local_destroy(pt_comm_world *w) { free(w); }

static const pt_comm_iface local_iface = {
    "local", local_all_reduce, local_all_gather, local_all_gather_v, local_broadcast, local_send_recv,
    local_check, local_wait, local_abort, local_destroy,
};

int pt_comm_world_create_local(pt_comm_world **out, const pt_comm_config *cfg, pt_err *err) {
    pt_err local;
    if (!err) err = &local;
    if (!out) return pt_err_set(err, PT_ERR_INVALID, "comm: no place for the world");
    *out = NULL;
    int n_groups = pt_comm_config_check(cfg, err);
    if (n_groups < 0) return n_groups;
    /* One block: the world, its groups, the device list. */
    size_t bytes =
        sizeof(pt_comm_world) + (size_t)n_groups * sizeof(pt_comm_group) + (size_t)cfg->n_devices * sizeof(int);
    pt_comm_world *w = calloc(1, bytes);
    if (!w) return pt_err_set(err, PT_ERR_NOMEM, "comm: out of memory for the world");
    pt_comm_group *groups = (pt_comm_group *)(w + 1);
    int rc = pt_comm_world_init(w, &local_iface, cfg, (int *)(groups + n_groups), groups, n_groups, err);
    if (rc) {
        free(w);
        return rc;
    }
    *out = w;
    return 0;
}
