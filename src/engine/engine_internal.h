/* The engine's own state: an instance (backend/instance.h) plus what only
 * the engine uses -- the model file, the backend, the fabric, the staging
 * of a step. Shared by engine.c and seq_move.c. */
#ifndef PROTEUS_ENGINE_INTERNAL_H
#define PROTEUS_ENGINE_INTERNAL_H

#include <pthread.h>

#include "backend/backend.h"
#include "backend/instance.h"
#include "kv/prefix_cache.h"
#include "proteus/engine.h"

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
    uint8_t *stage_prompt;
    uint32_t *stage_out;
    uint32_t *stage_pages; /* (max_seqs) each entry's page count before a step reserves more */
    pt_prefix_cache *prefix; /* NULL when opts.prefix_cache is off */
    /* Comm failures (pt_engine_comm_get_stats); comm_mu guards them, so
     * that other threads may read them while steps run. */
    pthread_mutex_t comm_mu;
    pt_engine_comm_stats comm;
};

/* The KV pool of each group (KV head): what the prefix cache references. */
static inline void pt_engine_group_pools(const pt_engine *e, pt_kv_pool **pools) {
    for (uint32_t g = 0; g < e->in.w.n_groups; g++) pools[g] = e->in.ranks[pt_rank_of_group(&e->in, g)].kv;
}

/* Drops the prefix cache's idle entries (their pages go back to the
 * pools); returns how many. For a transformation that needs free pages. */
uint64_t pt_engine_prefix_drop_idle(pt_engine *e);
/* Drops every entry and stops every sequence's caching: a transformation
 * does this to its sources before their pools serve the targets. */
void pt_engine_prefix_clear(pt_engine *e);

/* The transfers that copy one head page (every layer's K+V block and key
 * bounds) from a slot of src on fabric device sd to a slot of dst on dd;
 * returns how many (2 * n_layers). */
static inline size_t pt_page_transfers(pt_comm_transfer *t, pt_kv_pool *src, int sd, uint32_t src_slot,
                                       pt_kv_pool *dst, int dd, uint32_t dst_slot) {
    size_t kv_bytes = pt_kv_slot_stride(src) * src->elem, mm_bytes = 2 * (size_t)src->head_dim * sizeof(float);
    size_t n = 0;
    for (uint32_t l = 0; l < src->n_layers; l++) {
        t[n++] = (pt_comm_transfer){sd, dd, pt_kv_k(src, l, src_slot), pt_kv_k(dst, l, dst_slot), kv_bytes};
        t[n++] = (pt_comm_transfer){sd, dd, pt_kv_kmin(src, l, src_slot), pt_kv_kmin(dst, l, dst_slot), mm_bytes};
    }
    return n;
}

/* pt_engine_create_on, for a transformation's target (src/xform): with
 * own_kv false its ranks have no KV pool until the transformation hands
 * them their devices' pools; shard_from (NULL, or one per rank, each NULL
 * or n_layers tables) names where each rank copies its weight chunks from
 * instead of the model view: the sources' shards. */
int pt_engine_create_ranks(pt_engine **out, const pt_model_file *mf, pt_fabric *f, int first, int tp,
                           const pt_engine_opts *opts, bool own_kv, const pt_layer_weights *const *shard_from,
                           pt_err *err);

#endif
