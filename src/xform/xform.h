/* A live TP transformation of engine instances (DESIGN.md section 6): merge
 * instances into one of a higher TP degree, or split one into several,
 * over the same devices, while their sequences keep their KV cache.
 *
 *   plan     pt_xform_create: which instances become which, the target
 *            instances built beside the sources (their weight shards read
 *            from the mmapped model file into memory reserved up front; a
 *            device short of room gives up free KV pages first, or the
 *            transformation is refused with the reason).
 *   pre-copy pt_xform_snapshot at a step boundary of a source, then
 *            pt_xform_copy on any thread while the sources keep decoding:
 *            full head pages (never written again) whose head changes
 *            device are copied to it; each stage copies what was filled
 *            since the last.
 *   commit   pt_xform_commit with every source stopped at a step boundary:
 *            the pages written since the last stage are copied, block
 *            tables are rebuilt on the targets (a head that stays on its
 *            device keeps its pages: only its block-table entries move),
 *            and every device's KV pool is handed to the target rank on it.
 *   finish   pt_xform_free: after a commit, frees the sources' weights and
 *            scratch and grows each pool into the memory they leave; before
 *            one (or after a failed one), a rollback: the targets and every
 *            partial copy are freed and the sources go on as they were.
 *
 * The caller (src/xform/live.c for batchers, bench/bench_transform.c for
 * bare engines) owns the step boundaries: it calls snapshot and commit
 * where no source step is running. CPU devices move pages by memcpy; GPUs
 * by NCCL send/recv on streams of the transformation's own (compile-checked
 * only: tests/unit/test_cuda_xform.c needs two GPUs). */
#ifndef PROTEUS_XFORM_H
#define PROTEUS_XFORM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proteus/engine.h"
#include "proteus/fabric.h"

/* The devices of an instance: [first, first + tp) of the fabric. */
typedef struct {
    int first, tp;
} pt_xform_group;

/* Where pt_xform_fail_at injects a failure (tests, bench). */
typedef enum {
    PT_XFORM_FAIL_NONE = 0,
    PT_XFORM_FAIL_PRECOPY_COMM, /* a pre-copy transfer fails */
    PT_XFORM_FAIL_PRECOPY_ALLOC, /* no KV page for a pre-copied page */
    PT_XFORM_FAIL_COMMIT_ALLOC, /* no KV page for a page copied at commit */
    PT_XFORM_FAIL_COMMIT_COMM,  /* a transfer at commit fails */
} pt_xform_fail;

typedef struct {
    int n_src, n_dst;
    /* Plan. */
    uint64_t weight_bytes_new;   /* shards built for the targets */
    uint64_t weight_bytes_from_peers; /* of them, chunks copied from a source rank on another device */
    uint64_t weight_bytes_freed; /* source shards freed after the commit */
    uint64_t kv_pages_reserved;  /* free KV pages given up to make room for the targets */
    uint64_t kv_pages_gained;    /* KV pages enabled in the memory the sources left */
    /* Progress. */
    int stages;                  /* pre-copy stages (snapshot + copy rounds) */
    uint64_t pages_precopied;    /* head pages copied while the sources ran */
    uint64_t pages_at_commit;    /* head pages copied in the pause */
    uint64_t pages_in_place;     /* head pages that stayed on their device */
    uint64_t pages_wasted;       /* pre-copied pages dropped (their request ended or changed) */
    uint64_t cached_kept;        /* cached prefix pages the targets' caches took over (each a page of every head) */
    uint64_t cached_dropped;     /* cached prefix pages left behind: no room on a target device */
    uint64_t kv_bytes_moved;
    uint32_t seqs_moved;
    double build_s, precopy_s, commit_s;
} pt_xform_stats;

typedef struct pt_xform pt_xform;

/* The protocol's states; every call checks it, every change is logged
 * (debug level). A failed stage leaves only the rollback (pt_xform_free):
 * as with NCCL, a failed transfer is never retried on a half-done move. */
typedef enum {
    PT_XFORM_PLANNED,   /* targets built beside the sources; nothing moved */
    PT_XFORM_PRECOPY,   /* snapshots taken: pages pinned, copied while the sources run */
    PT_XFORM_COMMITTED, /* the targets hold every sequence and the pools */
    PT_XFORM_FAILED,    /* a stage failed; the sources are as they were */
} pt_xform_state;

pt_xform_state pt_xform_get_state(const pt_xform *x);
const char *pt_xform_state_name(pt_xform_state s);

/* Plans the transformation of src[0..n_src) (instances over one contiguous
 * range of devices of one fabric, in device order) into instances over
 * dst[0..n_dst) (the same range, each allowed by the fabric), and builds the
 * targets. The sources keep running. Fails, with nothing changed, when the
 * layout is not reachable, a target is not allowed, the backend cannot
 * move pages, or the targets do not fit. */
int pt_xform_create(pt_xform **out, pt_engine *const *src, int n_src, const pt_xform_group *dst, int n_dst,
                    pt_err *err);

/* Where the targets' weight chunks come from: the sources' shards (a chunk
 * the target's device holds already is a local copy; the rest come from
 * peer devices), or the mmapped model file. pt_xform_create uses
 * PT_XFORM_WEIGHTS_DEFAULT, the faster on the measurements of
 * bench/README.md; GPUs always read the file (their shards are uploaded in
 * the kernels' layout). */
typedef enum { PT_XFORM_WEIGHTS_FROM_PEERS = 0, PT_XFORM_WEIGHTS_FROM_FILE } pt_xform_weights;
#define PT_XFORM_WEIGHTS_DEFAULT PT_XFORM_WEIGHTS_FROM_PEERS
int pt_xform_create_from(pt_xform **out, pt_engine *const *src, int n_src, const pt_xform_group *dst, int n_dst,
                         pt_xform_weights from, pt_err *err);

/* Pre-copy, stage part 1 -- at a step boundary of source `src` (its step
 * thread, or with it stopped): records the full pages of its live
 * sequences that must change device and were not recorded yet, pins them
 * and takes their destination pages. *new_pages: how many. */
int pt_xform_snapshot(pt_xform *x, int src, uint32_t *new_pages, pt_err *err);
/* Pre-copy, stage part 2 -- any one thread, the sources running: copies
 * what the snapshots recorded. */
int pt_xform_copy(pt_xform *x, pt_err *err);
/* Pages recorded but not copied yet, and whether pre-copy should stop:
 * the last stage found fewer than PT_XFORM_STOP_PAGES new pages (a copy
 * that short fits in a fraction of a decode step), or PT_XFORM_MAX_STAGES
 * stages ran (the sources fill pages faster than they are copied). */
bool pt_xform_precopy_done(const pt_xform *x);
#define PT_XFORM_STOP_PAGES 64
#define PT_XFORM_MAX_STAGES 4

/* A live sequence of a source, and where the commit put it. */
typedef struct {
    int src, seq; /* in: source index and its sequence id */
    int dst;      /* out: target index */
    int dst_seq;  /* out: its sequence id there */
} pt_xform_move;

/* Commit -- every source stopped at a step boundary, `moves` naming every
 * live sequence of every source: copies what remains, rebuilds the block
 * tables on the targets and hands the pools over. A merge puts every
 * sequence on its one target; a split keeps the target each sequence was
 * given at its first snapshot and gives the others, longest first, to the
 * target holding the fewest pages. On failure nothing changed: the sources
 * still hold every sequence and can go on (then call pt_xform_free). */
int pt_xform_commit(pt_xform *x, pt_xform_move *moves, size_t n, pt_err *err);

/* Target i. It belongs to the transformation until a commit and to the
 * caller after it; before the commit the caller may read it (build a
 * batcher on it) but must not step it. */
pt_engine *pt_xform_target(const pt_xform *x, int i);
/* After a commit: frees the sources (a successful commit hands them to the
 * transformation; the caller must have stopped using them) and grows the
 * pools. Otherwise: rollback. The final statistics (weights freed, pages
 * gained) into *final when not NULL. NULL is a no-op. */
void pt_xform_free(pt_xform *x, pt_xform_stats *final);

const pt_xform_stats *pt_xform_get_stats(const pt_xform *x);
/* Tests: the next operation of that stage fails as the real failure would
 * (a target that does not fit: pt_device_fail_after before create). */
void pt_xform_fail_at(pt_xform *x, pt_xform_fail where);

#endif
