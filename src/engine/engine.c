/* Engine lifetime, sequences, page accounting and the step driver. The
 * forward pass runs in a device backend (src/backend: the CPU's is
 * backend/cpu/forward.c); weight arrangement in weights.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "device/fabric_internal.h"
#include "engine/engine_internal.h"

void pt_engine_opts_default(pt_engine_opts *o) {
    memset(o, 0, sizeof(*o));
    o->n_threads = 1;
    o->tp = 1;
    o->page_size = 16;
    /* F16 KV: prompt speed equals F32's, decode at long context is faster
     * (half the bytes read), and logits stay within 0.02 of transformers'
     * (bench/README.md, "Long-context speed"; test_golden_logits). */
    o->kv_dtype = PT_DTYPE_F16;
    o->max_seqs = 64;
    o->max_batch_tokens = 512;
    o->cuda_graphs = true;
    o->select_dense_layers = 2;
}

const pt_model_config *pt_engine_config(const pt_engine *e) { return &e->in.w.cfg; }
const pt_engine_opts *pt_engine_get_opts(const pt_engine *e) { return &e->in.opts; }

void pt_engine_graph_stats(const pt_engine *e, uint64_t *captured, uint64_t *replayed) {
    *captured = e->backend->graphs_captured;
    *replayed = e->backend->graphs_replayed;
}

void pt_engine_device_name(const pt_engine *e, int rank, char *buf, size_t n) {
    snprintf(buf, n, "%s", rank >= 0 && rank < e->in.tp ? pt_device_name(e->in.ranks[rank].dev) : "?");
}

uint32_t pt_engine_seq_capacity(const pt_engine *e) {
    uint64_t cap = e->in.opts.max_ctx;
    for (int i = 0; i < e->in.tp; i++) {
        const pt_rank *r = &e->in.ranks[i];
        uint64_t tokens = (uint64_t)(pt_kv_pool_enabled_pages(r->kv) / (r->g1 - r->g0)) * e->in.opts.page_size;
        if (tokens < cap) cap = tokens;
    }
    return (uint32_t)cap;
}

int pt_engine_tp(const pt_engine *e) { return e->in.tp; }
pt_device *pt_engine_device(pt_engine *e, int rank) { return rank >= 0 && rank < e->in.tp ? e->in.ranks[rank].dev : NULL; }

void pt_engine_weight_bytes(const pt_engine *e, int rank, uint64_t *shard, uint64_t *replicated) {
    *shard = *replicated = 0;
    if (rank < 0 || rank >= e->in.tp) return;
    *shard = e->in.ranks[rank].shard.bytes;
    *replicated = e->in.ranks[rank].shard.replicated_bytes;
}

void pt_engine_kv_pages(const pt_engine *e, int rank, uint64_t *total, uint64_t *free_pages) {
    *total = *free_pages = 0;
    if (rank < 0 || rank >= e->in.tp) return;
    pt_kv_pool *kv = e->in.ranks[rank].kv;
    if (!kv) return;
    *total = pt_kv_pool_enabled_pages(kv);
    *free_pages = pt_kv_pool_free_pages(kv);
    if (e->prefix) {
        pt_prefix_cache_stats st;
        pt_prefix_cache_get_stats(e->prefix, &st);
        const pt_rank *r = &e->in.ranks[rank];
        *free_pages += st.idle * (r->g1 - r->g0);
    }
}

uint32_t pt_engine_seq_prefix_reuse(pt_engine *e, int seq, const int32_t *tokens, uint32_t n, uint64_t salt) {
    if (!e->prefix || seq < 0 || (uint32_t)seq >= e->in.opts.max_seqs) return 0;
    pt_seq *s = &e->in.seqs[seq];
    if (!s->used || s->len != 0) return 0;
    pt_kv_pool *pools[PT_MAX_GROUPS];
    pt_engine_group_pools(e, pools);
    uint32_t k = pt_prefix_cache_attach(e->prefix, pools, seq, salt, tokens, n, s->pages);
    s->n_pages = k;
    s->len = k * e->in.opts.page_size;
    s->dirty_from = 0;
    return s->len;
}

uint32_t pt_engine_seq_prefix_cached(const pt_engine *e, const int32_t *tokens, uint32_t n, uint64_t salt) {
    return e->prefix ? pt_prefix_cache_match(e->prefix, salt, tokens, n) * e->in.opts.page_size : 0;
}

uint64_t pt_engine_prefix_salt(const char *cache_salt) { return pt_prefix_cache_salt(cache_salt); }

void pt_engine_seq_prefix_publish(pt_engine *e, int seq, const int32_t *tokens, uint32_t n) {
    if (!e->prefix || seq < 0 || (uint32_t)seq >= e->in.opts.max_seqs || !e->in.seqs[seq].used) return;
    if (n > e->in.seqs[seq].len) n = e->in.seqs[seq].len;
    pt_kv_pool *pools[PT_MAX_GROUPS];
    pt_engine_group_pools(e, pools);
    pt_prefix_cache_publish(e->prefix, pools, seq, tokens, n, e->in.seqs[seq].pages);
}

void pt_engine_prefix_get_stats(const pt_engine *e, pt_engine_prefix_stats *s) {
    *s = (pt_engine_prefix_stats){0};
    if (!e->prefix) return;
    pt_prefix_cache_stats st;
    pt_prefix_cache_get_stats(e->prefix, &st);
    *s = (pt_engine_prefix_stats){st.queries, st.hits, st.entries, st.idle, st.evictions};
}

uint64_t pt_engine_prefix_drop_idle(pt_engine *e) {
    if (!e->prefix) return 0;
    pt_kv_pool *pools[PT_MAX_GROUPS];
    pt_engine_group_pools(e, pools);
    return pt_prefix_cache_drop_idle(e->prefix, pools);
}

void pt_engine_prefix_clear(pt_engine *e) {
    if (!e->prefix) return;
    pt_kv_pool *pools[PT_MAX_GROUPS];
    pt_engine_group_pools(e, pools);
    pt_prefix_cache_clear(e->prefix, pools);
}

void pt_engine_free(pt_engine *e) {
    if (!e) return;
    if (e->prefix) {
        /* Its references go back to the pools before the pools go. */
        pt_kv_pool *pools[PT_MAX_GROUPS];
        pt_engine_group_pools(e, pools);
        pt_prefix_cache_free(e->prefix, pools);
    }
    if (e->backend) e->backend->destroy(e->backend);
    if (e->in.ranks)
        for (int i = 0; i < e->in.tp; i++)
            if (e->in.ranks[i].kv) {
                pt_kv_pool_free(e->in.ranks[i].kv);
                free(e->in.ranks[i].kv);
            }
    free(e->in.ranks);
    if (e->in.out_scratch) pt_device_release(pt_fabric_device(e->fabric, e->first), PT_MEM_SCRATCH, e->in.out_scratch, e->in.out_bytes);
    if (e->in.seqs)
        for (uint32_t s = 0; s < e->in.opts.max_seqs; s++)
            for (uint32_t g = 0; g < PT_MAX_GROUPS; g++) free(e->in.seqs[s].pages[g]);
    free(e->in.seqs);
    free(e->stage_tok);
    free(e->stage_seq);
    free(e->stage_pos);
    free(e->stage_prompt);
    free(e->stage_out);
    free(e->stage_pages);
    pt_weights_free(&e->in.w);
    pt_fabric_group_put(e->fabric, e->in.group);
    pthread_mutex_destroy(&e->comm_mu);
    pt_fabric_free(e->own_fabric);
    free(e);
}

int pt_engine_create_on(pt_engine **out, const pt_model_file *mf, pt_fabric *f, int first, int tp,
                        const pt_engine_opts *opts, pt_err *err) {
    return pt_engine_create_ranks(out, mf, f, first, tp, opts, true, NULL, err);
}

int pt_engine_create_ranks(pt_engine **out, const pt_model_file *mf, pt_fabric *f, int first, int tp,
                           const pt_engine_opts *opts, bool own_kv, const pt_layer_weights *const *shard_from,
                           pt_err *err) {
    *out = NULL;
    int rc = pt_model_file_validate(mf, err);
    if (rc) return rc;
    if (!pt_fabric_group_ok(f, first, tp))
        return pt_err_set(err, PT_ERR_INVALID,
                          "an instance of TP %d on devices [%d, %d) is not allowed by the layout (%d devices; the TP "
                          "degree must be allowed and the instance aligned to it)",
                          tp, first, first + tp, pt_fabric_size(f));
    pt_engine *e = calloc(1, sizeof(*e));
    if (!e) return pt_err_set(err, PT_ERR_NOMEM, "out of memory creating an engine");
    pthread_mutex_init(&e->comm_mu, NULL);
    e->mf = mf;
    e->in.opts = *opts;
    e->fabric = f;
    e->first = first;
    e->in.tp = tp;
    pt_engine_opts *o = &e->in.opts;
    o->tp = tp;
    o->device = pt_device_kind_of(pt_fabric_device(f, first));
    if (o->device == PT_DEVICE_CUDA) o->device_index = pt_device_ordinal(pt_fabric_device(f, first));
    if (!o->tp_chunks) o->tp_chunks = pt_fabric_tp_chunks(f);
    if ((rc = pt_weights_build(&e->in.w, mf, o->tp_chunks, err))) {
        pt_engine_free(e);
        return rc;
    }
    const pt_model_config *c = &e->in.w.cfg;
    if (o->n_threads < 1) o->n_threads = 1;
    if (o->page_size == 0) o->page_size = 16;
    if (o->max_seqs == 0) o->max_seqs = 64;
    if (o->max_batch_tokens == 0) o->max_batch_tokens = 512;
    if (o->max_ctx == 0 || (o->max_ctx > c->max_ctx && !o->ctx_beyond_model)) o->max_ctx = c->max_ctx ? c->max_ctx : 4096;
    if ((uint32_t)tp > e->in.w.n_groups || (uint32_t)tp > e->in.w.n_mlp_chunks) {
        rc = pt_err_set(err, PT_ERR_INVALID,
                        "TP %d exceeds the model's %u KV heads or %u MLP chunks (every rank needs at least one of "
                        "each)",
                        tp, e->in.w.n_groups, e->in.w.n_mlp_chunks);
        pt_engine_free(e);
        return rc;
    }
    if (o->select_budget && o->select_budget < 2 * o->page_size) {
        rc = pt_err_set(err, PT_ERR_INVALID, "page_select_budget %u is below two pages (%u tokens)", o->select_budget,
                        2 * o->page_size);
        pt_engine_free(e);
        return rc;
    }
    if (tp > 1 && (rc = pt_fabric_group_get(f, first, tp, &e->in.group, err))) {
        pt_engine_free(e);
        return rc;
    }
    size_t Tm = o->max_batch_tokens, V = c->vocab_size;
    e->in.max_out = o->max_seqs > 64 ? o->max_seqs : 64;
    e->in.pages_per_seq = (o->max_ctx + o->page_size - 1) / o->page_size;

    e->in.ranks = calloc((size_t)tp, sizeof(pt_rank));
    e->stage_tok = malloc(Tm * sizeof(int32_t));
    e->stage_seq = malloc(Tm * sizeof(int));
    e->stage_pos = malloc(Tm * sizeof(uint32_t));
    e->stage_prompt = malloc(Tm);
    e->stage_out = malloc(e->in.max_out * sizeof(uint32_t));
    e->stage_pages = malloc((size_t)o->max_seqs * sizeof(uint32_t));
    e->in.seqs = calloc(o->max_seqs, sizeof(pt_seq));
    bool ok = e->in.ranks && e->stage_tok && e->stage_seq && e->stage_pos && e->stage_prompt && e->stage_out &&
              e->stage_pages && e->in.seqs;
    for (int i = 0; ok && i < tp; i++) {
        pt_rank *r = &e->in.ranks[i];
        r->rank = i;
        r->dev = pt_fabric_device(f, first + i);
        r->pool = pt_device_pool(r->dev);
        r->g0 = e->in.w.n_groups * i / tp;
        r->g1 = e->in.w.n_groups * (i + 1) / tp;
        r->c0 = e->in.w.n_mlp_chunks * i / tp;
        r->c1 = e->in.w.n_mlp_chunks * (i + 1) / tp;
        if (shard_from) r->shard_from = shard_from[i];
        if (own_kv) ok = (r->kv = calloc(1, sizeof(pt_kv_pool))) != NULL;
    }
    for (uint32_t s = 0; s < o->max_seqs && ok; s++) {
        e->in.seqs[s].cap_pages = e->in.pages_per_seq;
        for (uint32_t g = 0; g < e->in.w.n_groups && ok; g++)
            ok = (e->in.seqs[s].pages[g] = malloc((size_t)e->in.pages_per_seq * sizeof(uint32_t))) != NULL;
    }
    if (!ok) {
        pt_engine_free(e);
        return pt_err_set(err, PT_ERR_NOMEM, "out of memory allocating engine buffers");
    }
    if (o->prefix_cache &&
        (rc = pt_prefix_cache_create(&e->prefix, o->page_size, e->in.w.n_groups, o->max_seqs, e->in.pages_per_seq, err))) {
        pt_engine_free(e);
        return rc;
    }
    e->in.out_bytes = (size_t)e->in.max_out * V * sizeof(float);
    if ((rc = pt_device_alloc(e->in.ranks[0].dev, PT_MEM_SCRATCH, e->in.out_bytes, (void **)&e->in.out_scratch, "logits",
                              err))) {
        pt_engine_free(e);
        return rc;
    }
    rc = o->device == PT_DEVICE_CUDA ? pt_backend_cuda_create(&e->backend, &e->in, err)
                                     : pt_backend_cpu_create(&e->backend, &e->in, err);
    for (int i = 0; i < tp; i++) e->in.ranks[i].shard_from = NULL; /* the caller's tables: creation only */
    if (rc) {
        pt_engine_free(e);
        return rc;
    }
    *out = e;
    return PT_OK;
}

int pt_engine_create(pt_engine **out, const pt_model_file *mf, const pt_engine_opts *opts, pt_err *err) {
    *out = NULL;
    int tp = opts->tp < 1 ? 1 : opts->tp;
    if (tp > PT_FABRIC_MAX_DEVICES) return pt_err_set(err, PT_ERR_INVALID, "TP %d is above %d", tp, PT_FABRIC_MAX_DEVICES);
    /* TP N on CUDA: GPUs device_index .. device_index + N - 1, connected by
     * NCCL; refused up front, naming the GPU that is missing. */
    if (opts->device == PT_DEVICE_CUDA && tp > 1) {
        int rc = pt_backend_cuda_probe(opts->device_index, tp, err);
        if (rc) return rc;
    }
    pt_device_spec specs[PT_FABRIC_MAX_DEVICES];
    for (int i = 0; i < tp; i++)
        specs[i] = (pt_device_spec){opts->device, opts->n_threads < 1 ? 1 : opts->n_threads,
                                    opts->device == PT_DEVICE_CUDA ? opts->device_index + i : opts->device_index, 0};
    pt_fabric *f;
    int rc = pt_fabric_create(&f, specs, tp, &tp, 1, err);
    if (rc) return rc;
    pt_engine_opts o = *opts;
    /* The chunking TP 1 to 4 share (uneven at TP 3), so that they give the same bits. */
    if (!o.tp_chunks) o.tp_chunks = tp <= 4 ? 4 : pt_fabric_tp_chunks(f);
    rc = pt_engine_create_on(out, mf, f, 0, tp, &o, err);
    if (rc) {
        pt_fabric_free(f);
        return rc;
    }
    (*out)->own_fabric = f;
    return PT_OK;
}

int pt_engine_seq_new(pt_engine *e) {
    for (uint32_t s = 0; s < e->in.opts.max_seqs; s++) {
        if (!e->in.seqs[s].used) {
            e->in.seqs[s].used = true;
            e->in.seqs[s].len = 0;
            e->in.seqs[s].n_pages = 0;
            e->in.seqs[s].dirty_from = 0;
            return (int)s;
        }
    }
    return -1;
}

static void seq_trim_pages(pt_engine *e, pt_seq *s, uint32_t keep) {
    for (uint32_t g = 0; g < e->in.w.n_groups; g++) {
        pt_kv_pool *kv = e->in.ranks[pt_rank_of_group(&e->in, g)].kv;
        for (uint32_t p = keep; p < s->n_pages; p++) pt_kv_page_release(kv, s->pages[g][p]);
    }
    s->n_pages = keep;
    if (s->dirty_from > keep) s->dirty_from = keep;
}

void pt_engine_seq_free(pt_engine *e, int seq) {
    if (seq < 0 || (uint32_t)seq >= e->in.opts.max_seqs || !e->in.seqs[seq].used) return;
    pt_seq *s = &e->in.seqs[seq];
    if (e->prefix) pt_prefix_cache_detach(e->prefix, seq); /* before the pages go: its entries become idle */
    seq_trim_pages(e, s, 0);
    s->used = false;
    s->len = 0;
}

uint32_t pt_engine_seq_len(const pt_engine *e, int seq) {
    if (seq < 0 || (uint32_t)seq >= e->in.opts.max_seqs || !e->in.seqs[seq].used) return 0;
    return e->in.seqs[seq].len;
}

/* A free page of group g's pool, evicting idle cached prefixes while the
 * pool is empty; -1 when it stays empty. */
static int64_t page_alloc(pt_engine *e, uint32_t g) {
    pt_kv_pool *kv = e->in.ranks[pt_rank_of_group(&e->in, g)].kv;
    int64_t slot;
    while ((slot = pt_kv_page_alloc(kv)) < 0 && e->prefix) {
        pt_kv_pool *pools[PT_MAX_GROUPS];
        pt_engine_group_pools(e, pools);
        if (!pt_prefix_cache_evict(e->prefix, pools)) break;
    }
    return slot;
}

/* Makes sequence s hold pages for `len` tokens on every KV head; all or nothing. */
static bool seq_reserve(pt_engine *e, pt_seq *s, uint32_t len) {
    uint32_t need = (len + e->in.opts.page_size - 1) / e->in.opts.page_size;
    uint32_t have = s->n_pages;
    for (uint32_t p = have; p < need; p++) {
        for (uint32_t g = 0; g < e->in.w.n_groups; g++) {
            int64_t slot = page_alloc(e, g);
            if (slot < 0) {
                /* Undo this page index's partial allocation, then the earlier ones. */
                for (uint32_t h = 0; h < g; h++)
                    pt_kv_page_release(e->in.ranks[pt_rank_of_group(&e->in, h)].kv, s->pages[h][p]);
                seq_trim_pages(e, s, have);
                return false;
            }
            s->pages[g][p] = (uint32_t)slot;
        }
        s->n_pages = p + 1;
    }
    return true;
}

static void comm_failed(pt_engine *e, const char *msg) {
    pthread_mutex_lock(&e->comm_mu);
    e->comm.failures++;
    snprintf(e->comm.last_error, sizeof(e->comm.last_error), "%s", msg);
    pthread_mutex_unlock(&e->comm_mu);
}

void pt_engine_comm_get_stats(const pt_engine *e, pt_engine_comm_stats *s) {
    pthread_mutex_lock((pthread_mutex_t *)&e->comm_mu);
    *s = e->comm;
    pthread_mutex_unlock((pthread_mutex_t *)&e->comm_mu);
}

/* A TP instance whose comm world was aborted (a step of its own failed, or
 * one of another instance on the same world) takes a group of a new world
 * before it steps again. What the ranks hold -- weights, KV pages, the
 * sequences -- never depended on the broken world: a failed step appended
 * nothing (pt_engine_step gives its pages back). */
static int renew_group(pt_engine *e, pt_err *err) {
    if (!e->in.group || !pt_comm_is_aborted(pt_comm_group_world(e->in.group))) return PT_OK;
    pt_comm_group *g;
    pt_err why = {{0}};
    if (pt_fabric_group_get(e->fabric, e->first, e->in.tp, &g, &why)) {
        comm_failed(e, why.msg);
        return pt_err_set(err, PT_ERR_COMM_ABORTED,
                          "the comm world of the instance on devices [%d, %d) was aborted and no new one could be "
                          "made: %s", e->first, e->first + e->in.tp, why.msg);
    }
    pt_fabric_group_put(e->fabric, e->in.group);
    e->in.group = g;
    pthread_mutex_lock(&e->comm_mu);
    uint64_t n = ++e->comm.renewals;
    pthread_mutex_unlock(&e->comm_mu);
    pt_log(PT_LOG_WARN, "instance on devices [%d, %d): continues on a new comm world (renewal %llu)", e->first,
           e->first + e->in.tp, (unsigned long long)n);
    return PT_OK;
}

int pt_engine_step(pt_engine *e, const pt_batch_entry *entries, size_t n_entries, pt_err *err) {
    const pt_model_config *c = &e->in.w.cfg;
    int rc;
    uint32_t T = 0, n_out = 0;
    for (size_t i = 0; i < n_entries; i++) {
        const pt_batch_entry *b = &entries[i];
        if (b->seq < 0 || (uint32_t)b->seq >= e->in.opts.max_seqs || !e->in.seqs[b->seq].used)
            return pt_err_set(err, PT_ERR_INVALID, "entry %zu: no such sequence %d", i, b->seq);
        for (size_t j = 0; j < i; j++)
            if (entries[j].seq == b->seq)
                return pt_err_set(err, PT_ERR_INVALID, "sequence %d appears twice in one step", b->seq);
        if (b->n_tokens == 0) return pt_err_set(err, PT_ERR_INVALID, "entry %zu has no tokens", i);
        if ((uint64_t)e->in.seqs[b->seq].len + b->n_tokens > e->in.opts.max_ctx)
            return pt_err_set(err, PT_ERR_INVALID, "sequence %d would exceed the context of %u tokens", b->seq,
                              e->in.opts.max_ctx);
        for (uint32_t j = 0; j < b->n_tokens; j++)
            if (b->tokens[j] < 0 || (uint32_t)b->tokens[j] >= c->vocab_size)
                return pt_err_set(err, PT_ERR_INVALID, "token id %d out of range [0, %u)", b->tokens[j],
                                  c->vocab_size);
        T += b->n_tokens;
        if (b->logits) n_out += b->all_logits ? b->n_tokens : 1;
    }
    if (T == 0) return PT_OK;
    if (T > e->in.opts.max_batch_tokens)
        return pt_err_set(err, PT_ERR_INVALID, "%u tokens exceed the step budget of %u", T,
                          e->in.opts.max_batch_tokens);
    if (n_out > e->in.max_out)
        return pt_err_set(err, PT_ERR_INVALID, "%u logit rows exceed the step limit of %u", n_out, e->in.max_out);

    if ((rc = renew_group(e, err))) return rc;

    /* Reserve pages for every entry first, so that a failure changes nothing.
     * The entries are distinct sequences: at most max_seqs of them. No
     * allocation here, so that PT_ERR_NOMEM means KV pages (the batcher
     * preempts on it). */
    uint32_t *old_pages = e->stage_pages;
    for (size_t i = 0; i < n_entries; i++) {
        pt_seq *s = &e->in.seqs[entries[i].seq];
        old_pages[i] = s->n_pages;
        if (!seq_reserve(e, s, s->len + entries[i].n_tokens)) {
            for (size_t j = 0; j < i; j++) seq_trim_pages(e, &e->in.seqs[entries[j].seq], old_pages[j]);
            return pt_err_set(err, PT_ERR_NOMEM, "out of KV pages for sequence %d", entries[i].seq);
        }
    }

    uint32_t t = 0, o = 0;
    for (size_t i = 0; i < n_entries; i++) {
        const pt_batch_entry *b = &entries[i];
        uint32_t len = e->in.seqs[b->seq].len;
        for (uint32_t j = 0; j < b->n_tokens; j++, t++) {
            e->stage_tok[t] = b->tokens[j];
            e->stage_seq[t] = b->seq;
            e->stage_pos[t] = len + j;
            e->stage_prompt[t] = b->prompt;
            if (b->logits && (b->all_logits || j + 1 == b->n_tokens)) e->stage_out[o++] = t;
        }
    }
    e->in.T = T;
    e->in.tok = e->stage_tok;
    e->in.tok_seq = e->stage_seq;
    e->in.tok_pos = e->stage_pos;
    e->in.tok_prompt = e->stage_prompt;
    e->in.n_out = n_out;
    e->in.out_row = e->stage_out;

    rc = e->backend->step(e->backend, &e->in, err);
    if (rc) {
        if (rc == PT_ERR_COMM || rc == PT_ERR_COMM_TIMEOUT || rc == PT_ERR_COMM_ABORTED)
            comm_failed(e, err ? err->msg : "comm error");
        /* The step's tokens were not appended: give back the pages reserved for them. */
        for (size_t i = 0; i < n_entries; i++) {
            pt_seq *s = &e->in.seqs[entries[i].seq];
            seq_trim_pages(e, s, (s->len + e->in.opts.page_size - 1) / e->in.opts.page_size);
        }
        return rc;
    }

    o = 0;
    for (size_t i = 0; i < n_entries; i++) {
        const pt_batch_entry *b = &entries[i];
        e->in.seqs[b->seq].len += b->n_tokens;
        if (!b->logits) continue;
        uint32_t rows = b->all_logits ? b->n_tokens : 1;
        memcpy(b->logits, e->in.out_scratch + (size_t)o * c->vocab_size, (size_t)rows * c->vocab_size * sizeof(float));
        o += rows;
    }
    return PT_OK;
}

int pt_engine_eval_logits(pt_engine *e, const int32_t *tokens, uint32_t n, float *logits, pt_err *err) {
    int seq = pt_engine_seq_new(e);
    if (seq < 0) return pt_err_set(err, PT_ERR_NOMEM, "no free sequence slot");
    uint32_t chunk = e->in.opts.max_batch_tokens < e->in.max_out ? e->in.opts.max_batch_tokens : e->in.max_out;
    int rc = PT_OK;
    for (uint32_t i = 0; i < n && rc == PT_OK; i += chunk) {
        uint32_t m = n - i < chunk ? n - i : chunk;
        pt_batch_entry b = {seq, tokens + i, m, logits + (size_t)i * e->in.w.cfg.vocab_size, true, false};
        rc = pt_engine_step(e, &b, 1, err);
    }
    pt_engine_seq_free(e, seq);
    return rc;
}
