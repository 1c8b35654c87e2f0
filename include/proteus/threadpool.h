/* A fork-join pool for data-parallel kernels. pt_pool_run calls fn on every
 * thread of the pool (the caller is thread 0) and returns when all are done;
 * fn splits its work by (tid, nth). Workers spin briefly between jobs, then
 * sleep, because a decode step issues hundreds of short jobs and waking a
 * sleeping thread costs more than most of them. */
#ifndef PROTEUS_THREADPOOL_H
#define PROTEUS_THREADPOOL_H

typedef struct pt_pool pt_pool;
typedef void (*pt_pool_fn)(void *ctx, int tid, int nth);

/* n_threads >= 1 including the caller. Returns NULL when the pool itself
 * cannot be made; when the system refuses some worker threads the pool runs
 * with those it got (check pt_pool_size where the count matters). */
pt_pool *pt_pool_create(int n_threads);
void pt_pool_free(pt_pool *p);
int pt_pool_size(const pt_pool *p);
void pt_pool_run(pt_pool *p, pt_pool_fn fn, void *ctx);

/* The contiguous share [*lo, *hi) of n items that thread tid of nth takes. */
static inline void pt_pool_split(long n, int tid, int nth, long *lo, long *hi) {
    *lo = n * tid / nth;
    *hi = n * (tid + 1) / nth;
}

#endif
