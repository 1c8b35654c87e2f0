/* Prefix caching on head pages: see prefix_cache.h.
 *
 * Entries live in one array (indices, not pointers, so that it can grow),
 * with their tokens (cap, P) and slots (cap, G) in two more. A chained hash
 * table finds an entry by its key; a doubly linked list holds the idle
 * entries, most recently idle first. A sequence's entries form a chain from
 * its first page, and an entry is used whenever one of its descendants is,
 * so a parent never becomes idle before its children: the list's tail is a
 * leaf, and eviction takes it. */
#include "kv/prefix_cache.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    uint64_t key;        /* hash of (parent's key or salt, tokens): finds the bucket */
    uint64_t salt;
    int32_t parent;      /* entry of the page before; -1 for a sequence's first page */
    int32_t hnext;       /* next in the bucket's chain */
    int32_t prev, next;  /* idle list while idle; next = free list while free */
    uint32_t users;      /* sequences that use it */
    uint32_t n_children; /* entries whose parent it is */
    bool live;
} entry;

typedef struct {
    bool on;       /* attached: looks up and publishes */
    uint64_t salt;
    uint32_t n;    /* entries in its chain: its pages [0, n) */
} seq_state;

struct pt_prefix_cache {
    pthread_mutex_t mu;
    uint32_t P, G, max_seqs, pages_per_seq;
    entry *e;          /* (cap) */
    int32_t *tok;      /* (cap, P) each entry's tokens */
    uint32_t *slot;    /* (cap, G) each entry's head page per group */
    uint32_t cap;
    int32_t free_head; /* free entries, linked by next */
    int32_t *bucket;   /* (n_buckets) first entry of each chain, -1 when empty */
    uint32_t n_buckets; /* a power of two, >= 2 * cap */
    int32_t idle_head, idle_tail;
    seq_state *seqs;   /* (max_seqs) */
    int32_t *chain;    /* (max_seqs, pages_per_seq) each sequence's entries */
    pt_prefix_cache_stats st;
};

static uint64_t page_key(const pt_prefix_cache *c, int32_t parent, uint64_t salt, const int32_t *tokens) {
    uint64_t h = parent >= 0 ? c->e[parent].key : pt_mix64(salt ^ 0x70726566697821ull); /* "prefix!" */
    for (uint32_t i = 0; i < c->P; i++) h = pt_mix64(h ^ (uint32_t)tokens[i]);
    return h;
}

static int32_t *chain_of(pt_prefix_cache *c, int seq) { return c->chain + (size_t)seq * c->pages_per_seq; }

/* ---- storage ---- */

static void rehash(pt_prefix_cache *c) {
    for (uint32_t b = 0; b < c->n_buckets; b++) c->bucket[b] = -1;
    for (uint32_t i = 0; i < c->cap; i++) {
        if (!c->e[i].live) continue;
        uint32_t b = (uint32_t)(c->e[i].key & (c->n_buckets - 1));
        c->e[i].hnext = c->bucket[b];
        c->bucket[b] = (int32_t)i;
    }
}

/* Doubles the entry arrays (and the table with them); false when out of memory. */
static bool grow(pt_prefix_cache *c) {
    uint32_t cap = c->cap ? c->cap * 2 : 64;
    if (cap > INT32_MAX / 2) return false;
    entry *e = realloc(c->e, (size_t)cap * sizeof(*e));
    if (!e) return false;
    c->e = e;
    int32_t *tok = realloc(c->tok, (size_t)cap * c->P * sizeof(*tok));
    if (!tok) return false;
    c->tok = tok;
    uint32_t *slot = realloc(c->slot, (size_t)cap * c->G * sizeof(*slot));
    if (!slot) return false;
    c->slot = slot;
    if (c->n_buckets < 2 * cap) {
        int32_t *bucket = realloc(c->bucket, (size_t)2 * cap * sizeof(*bucket));
        if (!bucket) return false;
        c->bucket = bucket;
        c->n_buckets = 2 * cap;
        rehash(c);
    }
    /* The new entries go on the free list, lowest index first. */
    for (uint32_t i = cap; i-- > c->cap;) {
        c->e[i] = (entry){.live = false, .next = c->free_head};
        c->free_head = (int32_t)i;
    }
    c->cap = cap;
    return true;
}

static int32_t find(const pt_prefix_cache *c, int32_t parent, uint64_t salt, const int32_t *tokens) {
    if (!c->n_buckets) return -1;
    uint64_t key = page_key(c, parent, salt, tokens);
    for (int32_t i = c->bucket[key & (c->n_buckets - 1)]; i >= 0; i = c->e[i].hnext) {
        const entry *x = &c->e[i];
        if (x->key == key && x->parent == parent && x->salt == salt &&
            memcmp(c->tok + (size_t)i * c->P, tokens, c->P * sizeof(*tokens)) == 0)
            return i;
    }
    return -1;
}

/* ---- the idle list ---- */

static void idle_push(pt_prefix_cache *c, int32_t i) {
    c->e[i].prev = -1;
    c->e[i].next = c->idle_head;
    if (c->idle_head >= 0) c->e[c->idle_head].prev = i;
    else c->idle_tail = i;
    c->idle_head = i;
    c->st.idle++;
}

/* At the tail (the next evicted): adopted entries, parents first, so that
 * each child is evicted before its parent. */
static void idle_push_tail(pt_prefix_cache *c, int32_t i) {
    c->e[i].next = -1;
    c->e[i].prev = c->idle_tail;
    if (c->idle_tail >= 0) c->e[c->idle_tail].next = i;
    else c->idle_head = i;
    c->idle_tail = i;
    c->st.idle++;
}

static void idle_remove(pt_prefix_cache *c, int32_t i) {
    entry *x = &c->e[i];
    if (x->prev >= 0) c->e[x->prev].next = x->next;
    else c->idle_head = x->next;
    if (x->next >= 0) c->e[x->next].prev = x->prev;
    else c->idle_tail = x->prev;
    c->st.idle--;
}

static void use(pt_prefix_cache *c, int32_t i) {
    if (c->e[i].users++ == 0) idle_remove(c, i);
}

/* ---- entries ---- */

static void release_slots(pt_prefix_cache *c, pt_kv_pool *const *pools, int32_t i) {
    for (uint32_t g = 0; g < c->G; g++)
        if (pools[g]) pt_kv_page_release(pools[g], c->slot[(size_t)i * c->G + g]);
}

/* A new entry used by one sequence, holding a reference on each of its
 * slots; -1 when out of memory. */
static int32_t insert(pt_prefix_cache *c, pt_kv_pool *const *pools, int32_t parent, uint64_t salt,
                      const int32_t *tokens, const uint32_t *slots) {
    if (c->free_head < 0 && !grow(c)) return -1;
    int32_t i = c->free_head;
    entry *x = &c->e[i];
    c->free_head = x->next;
    uint64_t key = page_key(c, parent, salt, tokens);
    uint32_t b = (uint32_t)(key & (c->n_buckets - 1));
    *x = (entry){.key = key, .salt = salt, .parent = parent, .hnext = c->bucket[b], .prev = -1, .next = -1,
                 .users = 1, .live = true};
    c->bucket[b] = i;
    memcpy(c->tok + (size_t)i * c->P, tokens, c->P * sizeof(*tokens));
    for (uint32_t g = 0; g < c->G; g++) {
        c->slot[(size_t)i * c->G + g] = slots[g];
        if (pools[g]) pt_kv_page_ref(pools[g], slots[g]);
    }
    if (parent >= 0) c->e[parent].n_children++;
    c->st.entries++;
    return i;
}

/* Removes an idle entry with no children. */
static void evict_entry(pt_prefix_cache *c, pt_kv_pool *const *pools, int32_t i) {
    entry *x = &c->e[i];
    idle_remove(c, i);
    int32_t *pp = &c->bucket[x->key & (c->n_buckets - 1)];
    while (*pp != i) pp = &c->e[*pp].hnext;
    *pp = x->hnext;
    if (x->parent >= 0) c->e[x->parent].n_children--;
    release_slots(c, pools, i);
    x->live = false;
    x->next = c->free_head;
    c->free_head = i;
    c->st.entries--;
    c->st.evictions++;
}

static void detach_locked(pt_prefix_cache *c, int seq) {
    seq_state *s = &c->seqs[seq];
    const int32_t *ch = chain_of(c, seq);
    /* Leaf first, so that each parent goes idle after its children and the
     * idle list's tail stays a leaf. */
    for (uint32_t p = s->n; p-- > 0;)
        if (--c->e[ch[p]].users == 0) idle_push(c, ch[p]);
    *s = (seq_state){0};
}

/* ---- API ---- */

int pt_prefix_cache_create(pt_prefix_cache **out, uint32_t page_size, uint32_t n_groups, uint32_t max_seqs,
                           uint32_t pages_per_seq, pt_err *err) {
    *out = NULL;
    if (page_size == 0 || n_groups == 0 || max_seqs == 0)
        return pt_err_set(err, PT_ERR_INVALID, "prefix cache: page size, KV heads and sequences must be positive");
    pt_prefix_cache *c = calloc(1, sizeof(*c));
    if (!c) return pt_err_set(err, PT_ERR_NOMEM, "prefix cache: out of memory");
    c->P = page_size;
    c->G = n_groups;
    c->max_seqs = max_seqs;
    c->pages_per_seq = pages_per_seq;
    c->free_head = c->idle_head = c->idle_tail = -1;
    c->seqs = calloc(max_seqs, sizeof(*c->seqs));
    c->chain = malloc(((size_t)max_seqs * pages_per_seq + 1) * sizeof(*c->chain));
    if (!c->seqs || !c->chain || pthread_mutex_init(&c->mu, NULL) != 0) {
        free(c->seqs);
        free(c->chain);
        free(c);
        return pt_err_set(err, PT_ERR_NOMEM, "prefix cache: out of memory");
    }
    *out = c;
    return PT_OK;
}

void pt_prefix_cache_free(pt_prefix_cache *c, pt_kv_pool *const *pools) {
    if (!c) return;
    pt_prefix_cache_clear(c, pools);
    pthread_mutex_destroy(&c->mu);
    free(c->e);
    free(c->tok);
    free(c->slot);
    free(c->bucket);
    free(c->seqs);
    free(c->chain);
    free(c);
}

uint32_t pt_prefix_cache_attach(pt_prefix_cache *c, pt_kv_pool *const *pools, int seq, uint64_t salt,
                                const int32_t *tokens, uint32_t n, uint32_t *const *block_tables) {
    if (seq < 0 || (uint32_t)seq >= c->max_seqs) return 0;
    pthread_mutex_lock(&c->mu);
    if (c->seqs[seq].on) detach_locked(c, seq);
    seq_state *s = &c->seqs[seq];
    *s = (seq_state){.on = true, .salt = salt};
    int32_t *ch = chain_of(c, seq);
    uint32_t most = n ? (n - 1) / c->P : 0;
    if (most > c->pages_per_seq) most = c->pages_per_seq;
    for (uint32_t p = 0; p < most; p++) {
        int32_t i = find(c, p ? ch[p - 1] : -1, salt, tokens + (size_t)p * c->P);
        if (i < 0) break;
        use(c, i);
        for (uint32_t g = 0; g < c->G; g++) {
            uint32_t slot = c->slot[(size_t)i * c->G + g];
            block_tables[g][p] = slot;
            pt_kv_page_ref(pools[g], slot);
        }
        ch[s->n++] = i;
    }
    c->st.queries += n;
    c->st.hits += (uint64_t)s->n * c->P;
    uint32_t k = s->n;
    pthread_mutex_unlock(&c->mu);
    return k;
}

uint32_t pt_prefix_cache_match(pt_prefix_cache *c, uint64_t salt, const int32_t *tokens, uint32_t n) {
    pthread_mutex_lock(&c->mu);
    uint32_t most = n ? (n - 1) / c->P : 0, k = 0;
    for (int32_t parent = -1; k < most; k++)
        if ((parent = find(c, parent, salt, tokens + (size_t)k * c->P)) < 0) break;
    pthread_mutex_unlock(&c->mu);
    return k;
}

void pt_prefix_cache_publish(pt_prefix_cache *c, pt_kv_pool *const *pools, int seq, const int32_t *tokens,
                             uint32_t n, uint32_t *const *block_tables) {
    if (seq < 0 || (uint32_t)seq >= c->max_seqs) return;
    pthread_mutex_lock(&c->mu);
    seq_state *s = &c->seqs[seq];
    int32_t *ch = chain_of(c, seq);
    while (s->on && s->n < c->pages_per_seq && (uint64_t)(s->n + 1) * c->P <= n) {
        uint32_t p = s->n;
        const int32_t *t = tokens + (size_t)p * c->P;
        int32_t parent = p ? ch[p - 1] : -1;
        int32_t i = find(c, parent, s->salt, t);
        if (i >= 0) {
            use(c, i); /* computed twice: its own copy stays its own */
        } else {
            uint32_t slots[c->G];
            for (uint32_t g = 0; g < c->G; g++) slots[g] = block_tables[g][p];
            if ((i = insert(c, pools, parent, s->salt, t, slots)) < 0) {
                detach_locked(c, seq); /* out of memory: it stops caching, its entries go idle */
                break;
            }
        }
        ch[s->n++] = i;
    }
    pthread_mutex_unlock(&c->mu);
}

void pt_prefix_cache_detach(pt_prefix_cache *c, int seq) {
    if (seq < 0 || (uint32_t)seq >= c->max_seqs) return;
    pthread_mutex_lock(&c->mu);
    if (c->seqs[seq].on) detach_locked(c, seq);
    pthread_mutex_unlock(&c->mu);
}

static bool evict_locked(pt_prefix_cache *c, pt_kv_pool *const *pools) {
    int32_t i = c->idle_tail;
    while (i >= 0 && c->e[i].n_children > 0) i = c->e[i].prev; /* the tail is a leaf; this only guards it */
    if (i < 0) return false;
    evict_entry(c, pools, i);
    return true;
}

bool pt_prefix_cache_evict(pt_prefix_cache *c, pt_kv_pool *const *pools) {
    pthread_mutex_lock(&c->mu);
    bool ok = evict_locked(c, pools);
    pthread_mutex_unlock(&c->mu);
    return ok;
}

uint64_t pt_prefix_cache_drop_idle(pt_prefix_cache *c, pt_kv_pool *const *pools) {
    pthread_mutex_lock(&c->mu);
    uint64_t n = 0;
    while (evict_locked(c, pools)) n++;
    pthread_mutex_unlock(&c->mu);
    return n;
}

void pt_prefix_cache_clear(pt_prefix_cache *c, pt_kv_pool *const *pools) {
    pthread_mutex_lock(&c->mu);
    for (uint32_t i = 0; i < c->cap; i++)
        if (c->e[i].live) release_slots(c, pools, (int32_t)i);
    for (uint32_t i = 0; i < c->cap; i++) c->e[i] = (entry){.live = false, .next = i + 1 < c->cap ? (int32_t)i + 1 : -1};
    c->free_head = c->cap ? 0 : -1;
    for (uint32_t b = 0; b < c->n_buckets; b++) c->bucket[b] = -1;
    c->idle_head = c->idle_tail = -1;
    c->st.entries = c->st.idle = 0;
    memset(c->seqs, 0, c->max_seqs * sizeof(*c->seqs));
    pthread_mutex_unlock(&c->mu);
}

void pt_prefix_cache_get_stats(pt_prefix_cache *c, pt_prefix_cache_stats *s) {
    pthread_mutex_lock(&c->mu);
    *s = c->st;
    pthread_mutex_unlock(&c->mu);
}

size_t pt_prefix_cache_export(pt_prefix_cache *c, pt_prefix_entry *out, size_t cap) {
    pthread_mutex_lock(&c->mu);
    size_t n = c->st.entries;
    uint32_t *depth = n && cap >= n ? malloc((size_t)c->cap * sizeof(*depth)) : NULL;
    uint32_t *start = depth ? calloc((size_t)c->pages_per_seq + 2, sizeof(*start)) : NULL;
    if (n && cap >= n && (!depth || !start)) n = 0; /* out of memory: nothing to move */
    if (n && cap >= n) {
        /* Each entry's depth (pages before it in its chain), a pass per
         * level; then the entries by depth, so that each follows its parent. */
        const uint32_t unknown = UINT32_MAX;
        for (uint32_t i = 0; i < c->cap; i++) depth[i] = c->e[i].live && c->e[i].parent < 0 ? 0 : unknown;
        for (bool more = true; more;) {
            more = false;
            for (uint32_t i = 0; i < c->cap; i++)
                if (c->e[i].live && depth[i] == unknown && depth[c->e[i].parent] != unknown) {
                    depth[i] = depth[c->e[i].parent] + 1;
                    more = true;
                }
        }
        for (uint32_t i = 0; i < c->cap; i++)
            if (c->e[i].live) start[depth[i] + 1]++;
        for (uint32_t d = 1; d <= c->pages_per_seq + 1; d++) start[d] += start[d - 1];
        /* depth[] becomes each entry's position, and parents are named by theirs. */
        for (uint32_t i = 0; i < c->cap; i++)
            if (c->e[i].live) {
                uint32_t at = start[depth[i]]++;
                depth[i] = at;
                out[at] = (pt_prefix_entry){c->e[i].parent, c->e[i].salt, c->tok + (size_t)i * c->P,
                                            c->slot + (size_t)i * c->G};
            }
        for (size_t k = 0; k < n; k++)
            if (out[k].parent >= 0) out[k].parent = (int32_t)depth[out[k].parent];
    }
    free(depth);
    free(start);
    pthread_mutex_unlock(&c->mu);
    return n;
}

int32_t pt_prefix_cache_adopt(pt_prefix_cache *c, pt_kv_pool *const *pools, int32_t parent, uint64_t salt,
                              const int32_t *tokens, const uint32_t *slots) {
    pthread_mutex_lock(&c->mu);
    int32_t i = -1;
    bool parent_ok = parent == -1 || (parent >= 0 && (uint32_t)parent < c->cap && c->e[parent].live);
    if (parent_ok && (i = find(c, parent, salt, tokens)) < 0 && (i = insert(c, pools, parent, salt, tokens, slots)) >= 0) {
        c->e[i].users = 0;
        idle_push_tail(c, i);
    }
    pthread_mutex_unlock(&c->mu);
    return i;
}

uint64_t pt_prefix_cache_salt(const char *s) {
    if (!s || !*s) return 0;
    uint64_t h = 0x63616368655f73ull; /* "cache_s" */
    for (; *s; s++) h = pt_mix64(h ^ (unsigned char)*s);
    return h ? h : 1;
}
