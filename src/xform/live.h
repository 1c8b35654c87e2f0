/* A live transformation of running instances (batchers): the protocol of
 * xform.h driven at the batchers' step boundaries, and their requests
 * handed to the targets without a token lost or changed (DESIGN.md
 * section 6).
 *
 *   start    pt_live_xform_start: plan and build the target engines, and a
 *            batcher on each, paused (sources keep serving).
 *   precopy  pt_live_xform_precopy: pre-copy stages, each a snapshot at a
 *            step boundary of every source then a copy while they decode;
 *            then every source is parked at a step boundary (the pause
 *            starts). Blocking: run it on a worker thread.
 *   commit   pt_live_xform_commit, on the thread that routes requests to
 *            the batchers (no submit or cancel to a source may race with
 *            it): the engine commit, then every request -- running,
 *            waiting, just submitted, with pending cancellations -- moves
 *            to a target with its sampler, stop strings and ids, and the
 *            targets start (the pause ends). A merge gives the target the
 *            union of the batches; a split gives each running sequence to
 *            the target with the most free pages for it, longest first.
 *   free     pt_live_xform_free: after a commit, stops the (empty) source
 *            batchers and frees them and their engines; otherwise rolls
 *            back: targets freed, sources resumed, every request still
 *            where it was.
 *
 * A failure at any stage (allocation, comm, a request ending mid-move)
 * leaves the sources serving; the error says which stage failed. */
#ifndef PROTEUS_XFORM_LIVE_H
#define PROTEUS_XFORM_LIVE_H

#include <stdint.h>

#include "proteus/batcher.h"
#include "xform/xform.h"

typedef struct pt_live_xform pt_live_xform;

typedef struct {
    pt_xform_stats xf;
    double pause_s;      /* first source parked -> targets started (or, rolled back, sources resumed) */
    double precopy_s;    /* start of pre-copy -> every source parked */
    uint32_t requests_moved;
} pt_live_xform_stats;

typedef struct {
    pt_engine *engine;
    pt_batcher *batcher;
} pt_live_instance;

/* src[i].engine must be the engine of src[i].batcher. The targets' batchers
 * get the options `bo` and the tokenizer `tok`. */
int pt_live_xform_start(pt_live_xform **out, const pt_live_instance *src, int n_src, const pt_xform_group *dst,
                        int n_dst, const pt_tokenizer *tok, const pt_batcher_opts *bo, pt_err *err);
int pt_live_xform_precopy(pt_live_xform *x, pt_err *err);
int pt_live_xform_commit(pt_live_xform *x, pt_err *err);
/* After a commit: target i (the caller owns it once pt_live_xform_free has
 * run), and the target now holding request `id` of a source (-1: none, it
 * had finished). */
pt_live_instance pt_live_xform_target(const pt_live_xform *x, int i);
int pt_live_xform_where(const pt_live_xform *x, uint64_t id);
/* The final statistics (weights freed, pages gained) into *final when not
 * NULL. NULL is a no-op. */
void pt_live_xform_free(pt_live_xform *x, pt_live_xform_stats *final);

/* Tests: see pt_xform_fail_at. */
void pt_live_xform_fail_at(pt_live_xform *x, pt_xform_fail where);

#endif
