/* The CUDA backend: one GPU per rank of the instance. Weights in BF16
 * (cuda_weights.c), KV head pages in f16 with the layout of src/kv/kv_pool.h,
 * activations in f32 with bf16 copies as GEMM inputs, GEMMs through
 * cuBLASLt, everything else through the kernels of kernels/cuda. The step
 * is in cuda_step.c.
 *
 * This file: lifetime, device memory and its accounting, KV pages.
 *
 * Every rank gets, on its own GPU (pt_device_ordinal of its device): a
 * stream, a cuBLASLt handle, the chunks of its shard (KV-head groups
 * [g0, g1), MLP chunks [c0, c1)) and the replicated tensors, f16 KV pages
 * for the heads it holds with a mirror of their block-table entries, and
 * its step buffers. Every cudaMalloc is reserved first on the rank's
 * pt_device by class (weights, kv, scratch; the cuBLASLt workspace counts as
 * scratch), so /v1/layout shows GPU memory, and a device budget bounds what
 * the rank may take. One thread drives all ranks: each function that
 * switches devices restores the caller's current device before it returns. */
#include <stdlib.h>
#include <string.h>

#include "backend/cuda/cuda_internal.h"

int cu_check(const cu_rank *rk, cudaError_t rc, const char *what, pt_err *err) {
    if (rc == cudaSuccess) return PT_OK;
    (void)cudaGetLastError(); /* clear a sticky launch error for the next call */
    int code = rc == cudaErrorMemoryAllocation ? PT_ERR_NOMEM : PT_ERR_IO;
    if (!rk) return pt_err_set(err, code, "CUDA: %s: %s (%s)", what, cudaGetErrorString(rc), cudaGetErrorName(rc));
    return pt_err_set(err, code, "CUDA %s: %s: %s (%s)", pt_device_name(rk->r->dev), what, cudaGetErrorString(rc),
                      cudaGetErrorName(rc));
}

int cu_alloc(cu_rank *rk, pt_mem_class cls, void **p, size_t bytes, const char *what, pt_err *err) {
    *p = NULL;
    if (bytes == 0) bytes = 1;
    if (rk->n_allocs == rk->cap_allocs) {
        size_t cap = rk->cap_allocs ? 2 * rk->cap_allocs : 64;
        cu_block *a = realloc(rk->allocs, cap * sizeof(*a));
        if (!a) return pt_err_set(err, PT_ERR_NOMEM, "out of host memory recording allocations of %s",
                                  pt_device_name(rk->r->dev));
        rk->allocs = a;
        rk->cap_allocs = cap;
    }
    int rc = pt_device_reserve(rk->r->dev, cls, bytes, what, err);
    if (rc) return rc;
    rc = cu_check(rk, cudaSetDevice(rk->ordinal), "set device", err);
    if (rc == PT_OK) rc = cu_check(rk, cudaMalloc(p, bytes), what, err);
    if (rc) {
        *p = NULL;
        pt_device_unreserve(rk->r->dev, cls, bytes);
        return rc;
    }
    rk->allocs[rk->n_allocs++] = (cu_block){*p, bytes, cls};
    return PT_OK;
}

void cu_free_one(cu_rank *rk, void *p) {
    for (size_t i = 0; i < rk->n_allocs; i++)
        if (rk->allocs[i].p == p) {
            (void)cudaFree(p);
            pt_device_unreserve(rk->r->dev, rk->allocs[i].cls, rk->allocs[i].bytes);
            rk->allocs[i] = rk->allocs[--rk->n_allocs];
            return;
        }
}

void cu_graphs_clear(cuda_backend *cb) {
    for (size_t i = 0; i < cb->n_graphs; i++)
        if (cb->graphs[i].exec) cudaGraphExecDestroy(cb->graphs[i].exec);
    cb->n_graphs = 0;
}

static void rank_free(cuda_backend *cb, cu_rank *rk) {
    if (cudaSetDevice(rk->ordinal) != cudaSuccess) (void)cudaGetLastError();
    if (rk->stream) (void)cudaStreamSynchronize(rk->stream);
    if (rk == &cb->ranks[0]) cu_graphs_clear(cb); /* graphs run on rank 0's stream */
    if (rk->blas) kcuda_blas_destroy(rk->blas);
    if (rk->blas_accounted) pt_device_unreserve(rk->r->dev, PT_MEM_SCRATCH, kcuda_blas_workspace_bytes());
    for (size_t i = 0; i < rk->n_allocs; i++) {
        (void)cudaFree(rk->allocs[i].p);
        pt_device_unreserve(rk->r->dev, rk->allocs[i].cls, rk->allocs[i].bytes);
    }
    free(rk->allocs);
    if (rk->stream) (void)cudaStreamDestroy(rk->stream);
    free(rk->layers);
    rk->r->shard.bytes = 0;
    rk->r->shard.replicated_bytes = 0;
    (void)cudaGetLastError();
}

static void cuda_destroy(pt_backend *b) {
    cuda_backend *cb = (cuda_backend *)b;
    int caller = -1;
    if (cudaGetDevice(&caller) != cudaSuccess) {
        (void)cudaGetLastError();
        caller = -1;
    }
    for (int i = 0; i < cb->tp; i++) rank_free(cb, &cb->ranks[i]);
    /* After rank 0's stream is idle: nothing copies into it any more. */
    if (cb->out_registered) (void)cudaHostUnregister(cb->e->out_scratch);
    free(cb->runs_tmp);
    if (cb->stage_host) (void)cudaFreeHost(cb->stage_host);
    free(cb->ranks);
    (void)cudaGetLastError();
    if (caller >= 0) (void)cudaSetDevice(caller);
    free(cb);
}

/* ---- sizes ---- */

static size_t align_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

/* The split-KV workspace of a rank for the largest need of any decode batch
 * size at any context, so that serving never reallocates it (which would
 * drop the captured graphs). The split count depends on the device, which
 * must be current. */
static int preallocate_workspace(cu_rank *rk, pt_instance *e, pt_err *err) {
    size_t need = 0;
    for (uint32_t n = 1; n <= e->opts.max_seqs; n++) {
        for (uint32_t ctx = 256;; ctx *= 2) {
            kcuda_attn_args a = cu_attn_args(rk, e, 0, NULL, n, cu_ctx_bucket(e, ctx));
            size_t w = kcuda_attn_decode_workspace(&a, kcuda_attn_decode_splits(&a));
            if (w > need) need = w;
            if (ctx >= e->opts.max_ctx) break;
        }
    }
    if (!need) return PT_OK;
    int rc = cu_alloc(rk, PT_MEM_SCRATCH, &rk->attn_ws, need, "attention workspace", err);
    if (rc == PT_OK) rk->attn_ws_bytes = need;
    return rc;
}

/* A rank's step buffers. Partial sums exist only at TP > 1 (at TP 1 the O
 * and down GEMMs add straight into the residual stream); the final norm and
 * the logits only on rank 0. */
static int alloc_buffers(cuda_backend *cb, cu_rank *rk, pt_instance *e, pt_err *err) {
    const pt_model_config *c = &e->w.cfg;
    const pt_engine_opts *o = &e->opts;
    size_t d = c->d_model, hd = c->head_dim, V = c->vocab_size, mc = e->w.mlp_chunk;
    size_t qw = (size_t)e->w.q_per_kv * hd, gs = (size_t)(e->w.q_per_kv + 2) * hd;
    size_t Tm = o->max_batch_tokens, S = o->max_seqs, P = e->pages_per_seq, ng = rk->ng, nc = rk->nc;
    bool tp = cb->tp > 1, lead = rk == &cb->ranks[0];
    struct {
        void **p;
        size_t bytes;
        const char *what;
        bool want;
    } bufs[] = {
        {(void **)&rk->x, Tm * d * 4, "residual stream", true},
        {(void **)&rk->xn, Tm * d * 2, "normed activations", true},
        {(void **)&rk->qkv, Tm * ng * gs * 4, "QKV activations", true},
        {(void **)&rk->att, Tm * ng * qw * 2, "attention output", true},
        {(void **)&rk->gu, Tm * 2 * nc * mc * 4, "gate/up activations", true},
        {(void **)&rk->h, Tm * nc * mc * 2, "SwiGLU output", true},
        {(void **)&rk->part_attn, (size_t)e->w.n_groups * Tm * d * 4, "attention partial sums", tp},
        {(void **)&rk->part_mlp, (size_t)e->w.n_mlp_chunks * Tm * d * 4, "MLP partial sums", tp},
        {(void **)&rk->fin, (size_t)e->max_out * d * 2, "final norm", lead},
        {(void **)&rk->logits, (size_t)e->max_out * V * 4, "logits", lead},
        {(void **)&rk->block_tables, S * ng * P * 4, "block tables", true},
        {(void **)&rk->page_scores, S * ng * P * 4, "page scores", true},
        {(void **)&rk->sel, S * ng * P * 4, "selected pages", true},
        {(void **)&rk->n_sel, S * ng * 4, "selected page counts", true},
        {(void **)&rk->stage_dev, cb->stage_bytes, "staging", true},
    };
    for (size_t i = 0; i < sizeof(bufs) / sizeof(bufs[0]); i++) {
        if (!bufs[i].want) continue;
        int rc = cu_alloc(rk, PT_MEM_SCRATCH, bufs[i].p, bufs[i].bytes, bufs[i].what, err);
        if (rc) return rc;
    }
    return preallocate_workspace(rk, e, err);
}

/* The host side of a step: the pinned staging block every rank copies its
 * inputs from, the engine's logits buffer page-locked for rank 0's copy,
 * and scratch for sorting runs. Rank 0's device is current. */
static int alloc_host(cuda_backend *cb, pt_instance *e, pt_err *err) {
    const pt_engine_opts *o = &e->opts;
    size_t Tm = o->max_batch_tokens;
    cu_rank *r0 = &cb->ranks[0];
    cb->off_tok = 0;
    cb->off_pos = align_up(cb->off_tok + Tm * 4, 16);
    cb->off_out = align_up(cb->off_pos + Tm * 4, 16);
    cb->off_runs = align_up(cb->off_out + (size_t)e->max_out * 4, 16);
    cb->stage_bytes = align_up(cb->off_runs + Tm * sizeof(kcuda_run), 16); /* at most one run per token */
    int rc = cu_check(r0, cudaHostAlloc((void **)&cb->stage_host, cb->stage_bytes, cudaHostAllocPortable),
                      "pinned staging", err);
    if (rc) {
        cb->stage_host = NULL;
        return rc;
    }
    memset(cb->stage_host, 0, cb->stage_bytes);
    /* Logits go straight into the engine's buffer, page-locked so that the
     * copy is asynchronous (and capturable). */
    rc = cu_check(r0, cudaHostRegister(e->out_scratch, (size_t)e->max_out * e->w.cfg.vocab_size * 4,
                                       cudaHostRegisterDefault),
                  "pinning the logits", err);
    if (rc) return rc;
    cb->out_registered = true;
    if (!(cb->runs_tmp = malloc(Tm * sizeof(kcuda_run))))
        return pt_err_set(err, PT_ERR_NOMEM, "out of host memory for the CUDA step staging");
    return PT_OK;
}

/* KV pages of the heads the rank holds: the configured count, or what
 * kv_bytes allows, or by default 90% of the memory left on the GPU after
 * weights and buffers (less 1 GiB for cuBLAS, NCCL, graphs and the CUDA
 * context) and within the device's budget when it has one (as the CPU
 * backend's rank_init), capped at max_seqs full contexts. */
/* What frees a rank's GPU pages with its pool (kv_pool.h release_data):
 * the pool, not the backend, owns them, because a TP transformation hands
 * the pool of a device to the next instance there (src/xform). */
typedef struct {
    int ordinal;
    pt_device *dev;
} kv_owner;

static void release_kv(pt_kv_pool *kv) {
    kv_owner *o = kv->release_ctx;
    int caller = -1;
    if (cudaGetDevice(&caller) != cudaSuccess) caller = -1;
    if (cudaSetDevice(o->ordinal) == cudaSuccess) {
        (void)cudaDeviceSynchronize(); /* no step or transfer still reads them */
        (void)cudaFree(kv->data);
        (void)cudaFree(kv->minmax);
    }
    (void)cudaGetLastError();
    if (caller >= 0) (void)cudaSetDevice(caller);
    pt_device_unreserve(o->dev, PT_MEM_KV, kv->data_bytes + kv->minmax_bytes);
    free(o);
}

static int alloc_kv(cu_rank *rk, pt_instance *e, pt_err *err) {
    if (!rk->r->kv) return PT_OK; /* a transformation's target: it takes the device's pool over */
    const pt_model_config *c = &e->w.cfg;
    const pt_engine_opts *o = &e->opts;
    pt_device *dev = rk->r->dev;
    uint64_t pages = o->kv_pages;
    if (!pages) {
        uint64_t budget = o->kv_bytes;
        if (!budget) {
            size_t free_b = 0, total_b = 0;
            int rc = cu_check(rk, cudaSetDevice(rk->ordinal), "set device", err);
            if (rc == PT_OK) rc = cu_check(rk, cudaMemGetInfo(&free_b, &total_b), "memory info", err);
            if (rc) return rc;
            uint64_t reserve = 1ull << 30;
            budget = free_b > reserve ? (uint64_t)((double)(free_b - reserve) * 0.9) : 0;
            if (pt_device_budget(dev) && pt_device_available(dev) < budget) budget = pt_device_available(dev);
        }
        pages = pt_instance_kv_pages_for(e, rk->ng, budget);
    }
    if (pages > UINT32_MAX - 1) pages = UINT32_MAX - 1;
    uint64_t page_bytes = pt_kv_page_bytes(c->n_layers, c->head_dim, o->page_size, PT_DTYPE_F16);
    if (pages < rk->ng)
        return pt_err_set(err, PT_ERR_NOMEM,
                          "device %s: no room for KV pages after %llu bytes of weights and %llu of step buffers "
                          "(budget %llu bytes, 0 = the GPU's memory; one page of %u heads needs %llu)",
                          pt_device_name(dev), (unsigned long long)pt_device_used(dev, PT_MEM_WEIGHTS),
                          (unsigned long long)pt_device_used(dev, PT_MEM_SCRATCH),
                          (unsigned long long)pt_device_budget(dev), rk->ng,
                          (unsigned long long)(rk->ng * page_bytes));
    /* (layer, slot, {K, V}, page_size, head_dim) f16 and (layer, slot, {min, max}, head_dim) f32 */
    uint64_t data_bytes, mm_bytes;
    if (!pt_mul_size((uint64_t)c->n_layers * pages, (uint64_t)2 * o->page_size * c->head_dim * 2, &data_bytes) ||
        !pt_mul_size((uint64_t)c->n_layers * pages, (uint64_t)2 * c->head_dim * sizeof(float), &mm_bytes) ||
        data_bytes > SIZE_MAX / 2 || mm_bytes > SIZE_MAX / 2)
        return pt_err_set(err, PT_ERR_INVALID, "device %s: a KV pool of %llu pages is too large", pt_device_name(dev),
                          (unsigned long long)pages);
    int rc = pt_kv_pool_init_accounting(rk->r->kv, c->n_layers, c->head_dim, o->page_size, (uint32_t)pages,
                                        PT_DTYPE_F16, err);
    if (rc) return rc;
    kv_owner *own = malloc(sizeof(*own));
    if (!own) return pt_err_set(err, PT_ERR_NOMEM, "out of memory for a KV pool");
    *own = (kv_owner){rk->ordinal, dev};
    void *data = NULL, *minmax = NULL;
    if ((rc = pt_device_reserve(dev, PT_MEM_KV, data_bytes + mm_bytes, "KV pages", err))) {
        free(own);
        return rc;
    }
    if ((rc = cu_check(rk, cudaSetDevice(rk->ordinal), "set device", err)) ||
        (rc = cu_check(rk, cudaMalloc(&data, data_bytes), "KV pages", err)) ||
        (rc = cu_check(rk, cudaMalloc(&minmax, mm_bytes), "KV key bounds", err))) {
        if (data) (void)cudaFree(data);
        pt_device_unreserve(dev, PT_MEM_KV, data_bytes + mm_bytes);
        free(own);
        return rc;
    }
    pt_kv_pool *kv = rk->r->kv;
    kv->data = data;
    kv->minmax = minmax;
    kv->data_bytes = data_bytes;
    kv->minmax_bytes = mm_bytes;
    kv->release_data = release_kv;
    kv->release_ctx = own;
    return PT_OK;
}

/* Everything of every rank, in the order that leaves the KV pages what the
 * devices have left: streams and handles, weights, buffers, then pages. */
static int setup(cuda_backend *cb, pt_instance *e, pt_err *err) {
    const pt_engine_opts *o = &e->opts;
    int rc;
    for (int i = 0; i < cb->tp; i++) {
        cu_rank *rk = &cb->ranks[i];
        if ((rc = cu_check(rk, cudaSetDevice(rk->ordinal), "set device", err))) return rc;
        if ((rc = cu_check(rk, cudaStreamCreateWithFlags(&rk->stream, cudaStreamNonBlocking), "stream", err))) {
            rk->stream = NULL;
            return rc;
        }
        if ((rc = pt_device_reserve(rk->r->dev, PT_MEM_SCRATCH, kcuda_blas_workspace_bytes(), "cuBLASLt workspace",
                                    err)))
            return rc;
        rk->blas_accounted = true;
        if (!(rk->blas = kcuda_blas_create()))
            return pt_err_set(err, PT_ERR_IO, "CUDA %s: cannot create the cuBLASLt handle", pt_device_name(rk->r->dev));
    }
    if ((rc = cu_weights_upload(cb, &e->w, o->n_threads > 1 ? o->n_threads : 1, err))) return rc;
    for (int i = 0; i < cb->tp; i++) {
        cb->ranks[i].r->shard.bytes = cb->ranks[i].shard_bytes;
        cb->ranks[i].r->shard.replicated_bytes = cb->ranks[i].replicated_bytes;
    }
    if ((rc = cu_check(&cb->ranks[0], cudaSetDevice(cb->ranks[0].ordinal), "set device", err))) return rc;
    if ((rc = alloc_host(cb, e, err))) return rc;
    for (int i = 0; i < cb->tp; i++) {
        cu_rank *rk = &cb->ranks[i];
        /* The split-KV sizing asks the current device for its SM count. */
        if ((rc = cu_check(rk, cudaSetDevice(rk->ordinal), "set device", err))) return rc;
        if ((rc = alloc_buffers(cb, rk, e, err))) return rc;
    }
    for (int i = 0; i < cb->tp; i++)
        if ((rc = alloc_kv(&cb->ranks[i], e, err))) return rc;
    /* The weight uploads copied from pageable memory, whose DMA may still be
     * landing when cudaMemcpy returns; the steps' streams do not wait for
     * the legacy stream. */
    for (int i = 0; i < cb->tp; i++) {
        cu_rank *rk = &cb->ranks[i];
        if ((rc = cu_check(rk, cudaSetDevice(rk->ordinal), "set device", err)) ||
            (rc = cu_check(rk, cudaDeviceSynchronize(), "weight upload", err)))
            return rc;
        struct cudaDeviceProp prop;
        int n_sm = 0;
        if (cudaGetDeviceProperties(&prop, rk->ordinal) == cudaSuccess) n_sm = prop.multiProcessorCount;
        else (void)cudaGetLastError();
        pt_log(PT_LOG_INFO,
               "CUDA device %d (rank %d of %d): %s, %d SMs; KV heads [%u, %u), MLP chunks [%u, %u); %u KV pages of %u "
               "tokens",
               rk->ordinal, i, cb->tp, n_sm ? prop.name : "?", n_sm, rk->r->g0, rk->r->g1, rk->r->c0, rk->r->c1,
               rk->r->kv ? rk->r->kv->n_slots : 0, o->page_size);
    }
    return PT_OK;
}

int pt_backend_cuda_probe(int first, int n, pt_err *err) {
    int n_dev = kcuda_device_count();
    if (first < 0 || n < 1) return pt_err_set(err, PT_ERR_INVALID, "CUDA devices cuda%d..cuda%d: bad range", first,
                                              first + n - 1);
    if (n_dev == 0)
        return pt_err_set(err, PT_ERR_UNSUPPORTED, "CUDA devices cuda%d..cuda%d: no CUDA device is available (cuda%d "
                          "does not exist)", first, first + n - 1, first);
    if (first + n > n_dev)
        return pt_err_set(err, PT_ERR_INVALID, "CUDA devices cuda%d..cuda%d: cuda%d does not exist (%d CUDA device%s "
                          "present)", first, first + n - 1, first > n_dev ? first : n_dev, n_dev, n_dev == 1 ? "" : "s");
    return PT_OK;
}

int pt_backend_cuda_create(pt_backend **out, pt_instance *e, pt_err *err) {
    *out = NULL;
    pt_engine_opts *o = &e->opts;
    int n_dev = kcuda_device_count();
    if (n_dev == 0) return pt_err_set(err, PT_ERR_UNSUPPORTED, "no CUDA device is available (devices: cuda)");
    if (e->tp < 1 || e->tp > PT_COMM_MAX_RANKS)
        return pt_err_set(err, PT_ERR_INVALID, "TP %d on CUDA: need 1 to %d ranks", e->tp, PT_COMM_MAX_RANKS);
    for (int i = 0; i < e->tp; i++) {
        int ord = pt_device_ordinal(e->ranks[i].dev);
        if (ord < 0)
            return pt_err_set(err, PT_ERR_INVALID, "rank %d: device %s is not a CUDA device", i,
                              pt_device_name(e->ranks[i].dev));
        if (ord >= n_dev)
            return pt_err_set(err, PT_ERR_INVALID, "CUDA device %d does not exist (%d present)", ord, n_dev);
        for (int j = 0; j < i; j++)
            if (pt_device_ordinal(e->ranks[j].dev) == ord)
                return pt_err_set(err, PT_ERR_INVALID, "ranks %d and %d are both on CUDA device %d", j, i, ord);
    }
    /* Row-parallel partial sums go through the instance's comm group (NCCL
     * for CUDA devices: pt_fabric_create builds it for more than one GPU). */
    if (e->tp > 1 && (!e->group || pt_comm_group_size(e->group) != e->tp))
        return pt_err_set(err, PT_ERR_INVALID, "TP %d on CUDA needs the comm group of its %d devices", e->tp, e->tp);
    if (e->w.cfg.rope_dim > e->w.cfg.head_dim || e->w.cfg.rope_dim % 2)
        return pt_err_set(err, PT_ERR_UNSUPPORTED, "RoPE over %u of %u channels is not supported on CUDA",
                          e->w.cfg.rope_dim, e->w.cfg.head_dim);
    /* What the attention kernels take (kcuda_attn.h): checked here so that a
     * model they cannot run fails at load with its reason, not at its first step. */
    if (e->w.cfg.head_dim % 8 || e->w.cfg.head_dim > 256)
        return pt_err_set(err, PT_ERR_UNSUPPORTED, "head_dim %u is not supported on CUDA (a multiple of 8, at most 256)",
                          e->w.cfg.head_dim);
    /* KV pages on the GPU are f16 whatever kv_dtype says: the pool's
     * accounting (page bytes, /metrics) follows. */
    o->kv_dtype = PT_DTYPE_F16;

    cuda_backend *cb = calloc(1, sizeof(*cb));
    if (!cb) return pt_err_set(err, PT_ERR_NOMEM, "out of memory creating the CUDA backend");
    cb->base.name = "cuda";
    cb->base.step = cu_step;
    cb->base.destroy = cuda_destroy;
    cb->e = e;
    *out = &cb->base;
    if (!(cb->ranks = calloc((size_t)e->tp, sizeof(cu_rank))))
        return pt_err_set(err, PT_ERR_NOMEM, "out of memory creating the CUDA backend");
    cb->tp = e->tp;
    for (int i = 0; i < e->tp; i++) {
        cu_rank *rk = &cb->ranks[i];
        rk->r = &e->ranks[i];
        rk->ordinal = pt_device_ordinal(rk->r->dev);
        rk->ng = rk->r->g1 - rk->r->g0;
        rk->nc = rk->r->c1 - rk->r->c0;
    }

    int caller = 0;
    int rc = cu_check(NULL, cudaGetDevice(&caller), "current device", err);
    if (rc) return rc;
    rc = setup(cb, e, err);
    (void)cudaSetDevice(caller); /* steps set the devices they use, and restore the caller's */
    return rc;
}

/* ---- streams for transfers outside a step (backend.h) ---- */

int pt_backend_cuda_streams_create(const int *ordinals, int n, void **streams, pt_err *err) {
    for (int i = 0; i < n; i++) streams[i] = NULL;
    for (int i = 0; i < n; i++) {
        cudaStream_t st = NULL;
        cudaError_t ce = cudaSetDevice(ordinals[i]);
        if (ce == cudaSuccess) ce = cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking);
        if (ce != cudaSuccess) {
            pt_backend_cuda_streams_free(ordinals, i, streams);
            return cu_check(NULL, ce, "transfer stream", err);
        }
        streams[i] = st;
    }
    return PT_OK;
}

void pt_backend_cuda_streams_free(const int *ordinals, int n, void **streams) {
    for (int i = 0; i < n; i++)
        if (streams[i] && cudaSetDevice(ordinals[i]) == cudaSuccess) {
            (void)cudaStreamSynchronize((cudaStream_t)streams[i]);
            (void)cudaStreamDestroy((cudaStream_t)streams[i]);
            streams[i] = NULL;
        }
    (void)cudaGetLastError();
}

int pt_backend_cuda_sync(const int *ordinals, int n, pt_err *err) {
    for (int i = 0; i < n; i++) {
        cudaError_t ce = cudaSetDevice(ordinals[i]);
        if (ce == cudaSuccess) ce = cudaDeviceSynchronize();
        if (ce != cudaSuccess) return cu_check(NULL, ce, "synchronize", err);
    }
    return PT_OK;
}
