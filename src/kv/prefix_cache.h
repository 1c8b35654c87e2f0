/* Prefix caching on head pages (one instance's cache): the full pages a
 * sequence computed stay in the KV pools, findable by their content, so that
 * a later sequence whose tokens start the same way takes them instead of
 * recomputing them (vLLM's automatic prefix caching, llama.cpp's
 * cache_prompt).
 *
 * An entry is one full page of a sequence -- page_size tokens, one head
 * page per KV head (group) -- named by its content chained from its parent:
 * the entry of the page before (none for the first page), the page's tokens
 * and a salt (a per-request cache_salt; 0 for none). The model is implicit:
 * one cache per instance. Lookups compare the parent, the salt and the
 * tokens themselves, so a hash collision can never hand out wrong pages.
 * Only full pages are cached, so a shared page is never written again and
 * copy-on-write is never needed; its key bounding boxes stay valid.
 *
 * References: the cache holds one pool reference on every head page of an
 * entry; a sequence that uses an entry's pages holds its own (the block
 * table's). Beside the pool's counts, an entry counts the sequences that
 * use it ("users"): an entry no sequence uses is idle, and idle entries are
 * evicted least recently used first, leaves before their parents (a page is
 * worth nothing once its parent is gone). Idle entries are reclaimable: the
 * engine counts them as free pages and evicts them when an allocation finds
 * its pool empty.
 *
 * Per sequence the cache keeps the entries of its leading full pages, in
 * order: those it found (pt_prefix_cache_attach) and those it published
 * when they filled (pt_prefix_cache_publish). A sequence that computed a
 * page some other sequence published first keeps its own copy and counts
 * as a user of the published entry, so that the chain it continues stays
 * alive while it runs.
 *
 * Threads: every call takes the cache's lock (the batcher's thread uses it
 * while a transformation may trim it from another). Block tables are the
 * caller's, touched only for the sequence named. */
#ifndef PROTEUS_KV_PREFIX_CACHE_H
#define PROTEUS_KV_PREFIX_CACHE_H

#include <stdbool.h>
#include <stdint.h>

#include "kv/kv_pool.h"
#include "proteus/util.h"

typedef struct pt_prefix_cache pt_prefix_cache;

typedef struct {
    uint64_t queries;   /* prompt tokens looked up (vLLM's prefix_cache_queries) */
    uint64_t hits;      /* of them, found cached (vLLM's prefix_cache_hits) */
    uint64_t entries;   /* cached pages (each one head page per KV head) */
    uint64_t idle;      /* of them, used by no sequence: reclaimable */
    uint64_t evictions; /* entries evicted to make room */
} pt_prefix_cache_stats;

/* A cache for sequences [0, max_seqs) of up to pages_per_seq pages of
 * page_size tokens, over n_groups KV heads. */
int pt_prefix_cache_create(pt_prefix_cache **out, uint32_t page_size, uint32_t n_groups, uint32_t max_seqs,
                           uint32_t pages_per_seq, pt_err *err);
/* Drops every entry (pool references released through pools, the pool of
 * each group) and frees the cache. */
void pt_prefix_cache_free(pt_prefix_cache *c, pt_kv_pool *const *pools);

/* Starts caching for sequence `seq`, empty, whose tokens will begin with
 * tokens[0, n): finds the longest chain of cached pages that they begin
 * with, leaving at least one token to compute (so that the step that
 * computes it gives logits), writes those pages' slots into block_tables
 * (one table per group, pages [0, k)), takes a pool reference on each and
 * returns k. Counts n queried tokens and k * page_size hits. */
uint32_t pt_prefix_cache_attach(pt_prefix_cache *c, pt_kv_pool *const *pools, int seq, uint64_t salt,
                                const int32_t *tokens, uint32_t n, uint32_t *const *block_tables);
/* How many pages attach would find for tokens[0, n) now (nothing taken,
 * nothing counted): what placement compares instances by. */
uint32_t pt_prefix_cache_match(pt_prefix_cache *c, uint64_t salt, const int32_t *tokens, uint32_t n);
/* Publishes the pages of `seq` that tokens[0, n) fill and that are not yet
 * in its chain, their slots read from block_tables. Nothing for a sequence
 * that was not attached. When the cache cannot grow (out of memory) the
 * sequence stops publishing; nothing else changes. */
void pt_prefix_cache_publish(pt_prefix_cache *c, pt_kv_pool *const *pools, int seq, const int32_t *tokens,
                             uint32_t n, uint32_t *const *block_tables);
/* The sequence ends (or leaves the instance): it no longer uses its entries. */
void pt_prefix_cache_detach(pt_prefix_cache *c, int seq);

/* Evicts the least recently used idle leaf; false when none is idle. */
bool pt_prefix_cache_evict(pt_prefix_cache *c, pt_kv_pool *const *pools);
/* Evicts every idle entry; returns how many. */
uint64_t pt_prefix_cache_drop_idle(pt_prefix_cache *c, pt_kv_pool *const *pools);
/* Drops every entry, used or not, and stops every sequence's caching (the
 * sequences keep their pages): what a transformation does before the pools
 * change hands. */
void pt_prefix_cache_clear(pt_prefix_cache *c, pt_kv_pool *const *pools);

void pt_prefix_cache_get_stats(pt_prefix_cache *c, pt_prefix_cache_stats *s);

/* Moving a cache to another instance (a TP transformation): export lists
 * the entries, adopt recreates one in the other cache. */
typedef struct {
    int32_t parent;         /* its parent's position in the list; -1 for a first page */
    uint64_t salt;
    const int32_t *tokens;  /* (page_size) valid until the cache changes */
    const uint32_t *slots;  /* (n_groups) */
} pt_prefix_entry;
/* Every entry, each after its parent, into out[0, cap); returns how many
 * there are (call with cap 0 to size out; 0 when out of memory). */
size_t pt_prefix_cache_export(pt_prefix_cache *c, pt_prefix_entry *out, size_t cap);
/* An idle entry for a page that another cache held: its parent (an index
 * adopt returned, or -1), salt, tokens and slots, on which it takes a
 * reference each. Returns its index, or the index of an equal entry there
 * already (then nothing is added); -1 when out of memory. */
int32_t pt_prefix_cache_adopt(pt_prefix_cache *c, pt_kv_pool *const *pools, int32_t parent, uint64_t salt,
                              const int32_t *tokens, const uint32_t *slots);

/* A 64-bit salt from a request's cache_salt string (0 for NULL or ""). */
uint64_t pt_prefix_cache_salt(const char *s);

#endif
