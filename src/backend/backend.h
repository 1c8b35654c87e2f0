/* Device backends: what runs an engine's forward pass (DESIGN.md section 2).
 *
 * The engine (src/engine/engine.c) owns what is the same on every device:
 * sequences, their block tables, the accounting of KV head pages (which slot
 * ids are free), validation and staging of a step. A backend owns the device
 * side: the weights in the layout its kernels want, the storage of the KV
 * pages, scratch, and the computation of a step. Slot ids mean the same on
 * both sides, so the engine's block tables address the backend's pages.
 * Backends see the instance (backend/instance.h), never the engine. */
#ifndef PROTEUS_BACKEND_H
#define PROTEUS_BACKEND_H

#include <stdint.h>

#include "proteus/util.h"

typedef struct pt_instance pt_instance;
typedef struct pt_backend pt_backend;

struct pt_backend {
    const char *name;
    /* Runs the step staged in the engine (e->T tokens at e->tok_pos, rows
     * e->out_row wanting logits): writes every token's K and V into its
     * pages and leaves the logits of the n_out rows in e->out_scratch. The
     * pages are reserved before the call. */
    int (*step)(pt_backend *b, pt_instance *e, pt_err *err);
    void (*destroy)(pt_backend *b);
    /* CUDA graphs captured and steps replayed from them (0 on the CPU). */
    uint64_t graphs_captured, graphs_replayed;
};

/* Each create sets up the KV pool accounting of every rank of `e`
 * (e->ranks[i].kv) with as many pages as its device holds for the options,
 * and fails with a message naming the device when it cannot. */
int pt_backend_cpu_create(pt_backend **out, pt_instance *e, pt_err *err);
/* PT_ERR_UNSUPPORTED when built without CUDA or when no CUDA device exists.
 * One GPU per rank (the ordinal of the rank's device); at TP > 1 the ranks
 * exchange partial sums through the instance's comm group, which must be
 * an NCCL one. */
int pt_backend_cuda_create(pt_backend **out, pt_instance *e, pt_err *err);
/* Whether CUDA devices with ordinals [first, first + n) exist, before a
 * fabric is built over them: PT_OK, or an error naming the first ordinal
 * that is missing (PT_ERR_UNSUPPORTED without CUDA in the build or without
 * any device, PT_ERR_INVALID when some devices exist but not that one). */
int pt_backend_cuda_probe(int first, int n, pt_err *err);

/* For moving pages between GPUs outside any step (src/xform): one
 * non-blocking stream per ordinal (streams[i] on ordinals[i]), and a wait
 * until every device has finished what was queued on it. */
int pt_backend_cuda_streams_create(const int *ordinals, int n, void **streams, pt_err *err);
void pt_backend_cuda_streams_free(const int *ordinals, int n, void **streams);
int pt_backend_cuda_sync(const int *ordinals, int n, pt_err *err);

#endif
