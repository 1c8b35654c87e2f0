/* The engine's own state: an instance (backend/instance.h) plus what only
 * the engine uses -- the model file, the backend, the fabric, the staging
 * of a step. Shared by engine.c and seq_move.c. */
#ifndef PROTEUS_ENGINE_INTERNAL_H
#define PROTEUS_ENGINE_INTERNAL_H

#include "backend/backend.h"
#include "backend/instance.h"

struct pt_engine {
    pt_instance in;       /* what the backend computes on */
    const pt_model_file *mf;
    pt_backend *backend;
    pt_fabric *fabric;
    pt_fabric *own_fabric; /* = fabric when pt_engine_create made it */
    int first;            /* fabric device of rank 0 */
    /* Step staging, sized max_batch_tokens. */
    int32_t *stage_tok;
    int *stage_seq;
    uint32_t *stage_pos;
    uint32_t *stage_out;
};

/* pt_engine_create_on, with own_kv false for a transformation's target:
 * its ranks have no KV pool until the transformation hands them their
 * devices' pools (src/xform). */
int pt_engine_create_ranks(pt_engine **out, const pt_model_file *mf, pt_fabric *f, int first, int tp,
                           const pt_engine_opts *opts, bool own_kv, pt_err *err);

#endif
