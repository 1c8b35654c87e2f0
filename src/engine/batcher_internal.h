/* What a live transformation (src/xform/live.c) needs of batchers beyond
 * proteus/batcher.h: work at a step boundary, parking, and handing the
 * requests of one batcher to others. */
#ifndef PROTEUS_BATCHER_INTERNAL_H
#define PROTEUS_BATCHER_INTERNAL_H

#include "proteus/batcher.h"

/* Runs fn(arg) on the batcher's thread between two steps (or while it is
 * parked) and returns its result; the caller waits. */
int pt_batcher_at_boundary(pt_batcher *b, int (*fn)(void *arg, pt_err *err), void *arg, pt_err *err);

/* Pauses the batcher and waits until its thread stands at a step boundary;
 * returns pt_now() at the moment it stopped there (its requests stopped
 * advancing). Pause several with pt_batcher_pause first so that they stop
 * together. */
double pt_batcher_park(pt_batcher *b);
void pt_batcher_unpark(pt_batcher *b);

/* The functions below are for parked batchers only. */

uint32_t pt_batcher_n_running(const pt_batcher *b);
/* Requests it holds: running, waiting and just submitted. */
uint32_t pt_batcher_n_requests(pt_batcher *b);
/* Sequence ids of the running requests (at most cap) into seqs. */
uint32_t pt_batcher_running_seqs(const pt_batcher *b, int *seqs, uint32_t cap);
/* Preempts the n most recently admitted running requests (their pages are
 * freed; they are recomputed when admitted again). */
void pt_batcher_preempt(pt_batcher *b, uint32_t n);
/* Requests a batcher can run at once. */
uint32_t pt_batcher_capacity(const pt_batcher *b);

/* Where a running request's sequence went: target index and sequence id. */
typedef void (*pt_batcher_route_fn)(void *arg, int seq, int *dst, int *dst_seq);
/* Told each request handed over and the target that now holds it. */
typedef void (*pt_batcher_moved_fn)(void *arg, uint64_t id, int dst);

/* Hands every request of `src` to the targets: running ones to where
 * their sequence went (route); waiting and newly submitted ones, in order,
 * to the target with the fewest requests; pending cancellations to every
 * target. src is left empty. All of them parked. */
void pt_batcher_hand_over(pt_batcher *src, pt_batcher *const *dst, int n_dst, pt_batcher_route_fn route,
                          pt_batcher_moved_fn moved, void *arg);

/* Re-reads the engine's KV capacity (after a transformation grew its pools). */
void pt_batcher_refresh_capacity(pt_batcher *b);

#endif
