/* Live TP transformation on CPU virtual devices (DESIGN.md section 6): what
 * a merge (TP1 + TP1 -> TP2) and a split (TP2 -> TP1 + TP1) of two devices
 * cost, with pre-copy of the KV pages while the sources keep decoding,
 * against a stop-the-world move of the same pages. Not a test: it prints
 * measurements (one JSON object per transformation and one per summary on
 * stdout, a table on stderr).
 *
 *   build/bench_transform [-m MODEL] [--sizes 1024,4096,16384] [--seqs 8] [--reps 5]
 *                         [--warmup 1] [-t THREADS] [--kv f32|f16] [--fill prefill|fast]
 *                         [--budget-mb N] [--target-steps 3]
 *
 * For each size (tokens of KV in flight, summed over --seqs sequences of
 * equal length) and each repetition, after --warmup repetitions that are
 * not recorded (the first touch of the pools' memory would otherwise land
 * in the first stop-the-world pause), the sequences are filled afresh on
 * two TP1 instances (devices 0 and 1, sequences alternating), then:
 *   1. stop-the-world merge: pt_xform_create, then pt_xform_commit at once
 *      (every moving page is copied in the pause);
 *   2. decode steps of the merged TP2 instance, every sequence one token:
 *      the first step after the commit and the median of --target-steps;
 *   3. stop-the-world split back to TP1 + TP1;
 *   4. live merge: stages of pt_xform_snapshot (on this thread, at a step
 *      boundary of each source) then pt_xform_copy on a second thread while
 *      this thread runs decode steps of both sources (one token per
 *      sequence, at least one step per stage), until pt_xform_precopy_done;
 *      then the commit with the sources stopped;
 *   5. live split, the same way.
 * The pause is the wall time of pt_xform_commit (the sources are stopped
 * from the end of their last step until the targets exist); the process's
 * minor page faults during it are counted too (destination memory touched
 * for the first time is a large part of a pause on a VM). The live runs
 * come last in each repetition, so they move slightly more KV than the
 * stop-the-world runs (the decode steps of 2 and 4 add tokens).
 *
 * Devices have a memory budget (default: what a TP1 rank and a TP2 rank
 * need for weights and scratch, plus the KV pages of the largest size with a
 * quarter to spare), and each KV pool takes what its device has left, so
 * the targets' weights must come out of free KV pages (reserved) and the
 * memory the sources leave comes back as pages (gained).
 *
 * --fill fast (the default for synthetic: models) writes K and V into the
 * pages directly instead of running the prefill -- the pages are what a
 * transformation moves, their values do not matter to it, and a prefill of
 * llama3-8b runs at ~11 tokens/s on two cores. It reaches into the engine's
 * block tables (engine/engine_internal.h), which only a bench may do. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "engine/engine_internal.h"
#include "proteus/engine.h"
#include "proteus/fabric.h"
#include "xform/xform.h"

#define MAX_SEQS 64
#define MAX_SIZES 8
#define MAX_STEPS 4096

typedef enum { FILL_PREFILL, FILL_FAST } fill_mode;

typedef struct {
    const char *model;
    uint32_t sizes[MAX_SIZES];
    int n_sizes;
    int n_seqs, reps, warmup, threads, target_steps;
    pt_dtype kv;
    fill_mode fill;
    uint64_t budget; /* bytes per device; 0 = derived */
    pt_xform_weights weights; /* where the targets' chunks come from */
} args;

/* Where the bench's sequences are: two TP1 instances or one TP2. */
typedef struct {
    int n_inst;
    pt_engine *inst[2];
    int where[MAX_SEQS]; /* instance holding sequence i */
    int id[MAX_SEQS];    /* its id there */
} layout;

typedef struct {
    const args *a;
    pt_model_file mf;
    pt_fabric *f;
    pt_engine_opts o;
    uint32_t V;
    float *logits; /* (n_seqs, V) */
    layout L;
} bench;

/* One transformation. */
typedef struct {
    const char *op; /* "merge" / "split" */
    bool live;
    int rep;
    uint32_t size, kv_tokens;
    pt_xform_stats st;
    double build_s, precopy_s, pause_s, free_s;
    long pause_faults;              /* minor page faults of the process during the commit */
    int precopy_steps;
    double src_step_s;              /* median lock-step of both sources during pre-copy */
    uint64_t pages_before, pages_after; /* KV pages of both devices' pools */
    uint64_t used_peak[2];          /* device bytes accounted at the commit */
    double target_first_step_s, target_step_s; /* merges, stop-the-world: decode on the target */
} run;

static void die(const char *what, const pt_err *err) {
    fprintf(stderr, "bench_transform: %s: %s\n", what, err ? err->msg : "");
    exit(1);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
    if (n == 0) return 0;
    qsort(v, (size_t)n, sizeof(double), cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static long minor_faults(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_minflt;
}

static double maxd(const double *v, int n) {
    double m = 0;
    for (int i = 0; i < n; i++) m = v[i] > m ? v[i] : m;
    return m;
}

/* ---- filling the KV ---- */

static int32_t token_at(const bench *b, int seq, uint32_t pos) {
    return (int32_t)(((uint32_t)seq * 7919u + pos * 40503u + 11u) % b->V);
}

/* Writes tokens [len, len + n) of sequence `seq` straight into its pages:
 * pages taken from the pool of the rank holding each head, K and V rows
 * from a small table of random vectors, the key bounds kept as an append
 * would keep them. */
static void fill_fast(bench *b, pt_engine *e, int seq, uint32_t n) {
    pt_instance *in = &e->in;
    pt_seq *s = &in->seqs[seq];
    const pt_model_config *c = &in->w.cfg;
    uint32_t P = in->opts.page_size, hd = c->head_dim, len1 = s->len + n;
    if (len1 > in->opts.max_ctx) die("fill_fast: beyond max_ctx", NULL);
    enum { NV = 61 };
    static float *vec = NULL; /* (NV, hd) */
    if (!vec) {
        vec = malloc((size_t)NV * hd * sizeof(float));
        uint64_t r = 0x9e3779b97f4a7c15ull;
        for (size_t i = 0; i < (size_t)NV * hd; i++) {
            r ^= r << 13, r ^= r >> 7, r ^= r << 17;
            vec[i] = ((float)(r >> 40) / (float)(1u << 24) - 0.5f) * 2.0f;
        }
    }
    uint32_t need = (len1 + P - 1) / P;
    if (need > in->pages_per_seq) die("fill_fast: block table too small", NULL);
    for (uint32_t p = s->n_pages; p < need; p++) {
        for (uint32_t g = 0; g < in->w.n_groups; g++) {
            int64_t slot = pt_kv_page_alloc(in->ranks[pt_rank_of_group(in, g)].kv);
            if (slot < 0) die("fill_fast: KV pool exhausted", NULL);
            s->pages[g][p] = (uint32_t)slot;
        }
        s->n_pages = p + 1;
    }
    for (uint32_t pos = s->len; pos < len1; pos++)
        for (uint32_t g = 0; g < in->w.n_groups; g++) {
            pt_kv_pool *kv = in->ranks[pt_rank_of_group(in, g)].kv;
            uint32_t slot = s->pages[g][pos / P];
            for (uint32_t l = 0; l < c->n_layers; l++) {
                uint32_t i = (pos * 7 + g * 3 + l) % NV, j = (pos * 5 + g + l * 11 + 1) % NV;
                pt_kv_append(kv, l, slot, pos % P, vec + (size_t)i * hd, vec + (size_t)j * hd);
            }
        }
    s->len = len1;
}

typedef struct {
    bench *b;
    int inst;
    uint32_t len;
    pt_err err;
    int rc;
} prefill_job;

/* Prefills every sequence of one instance to `len` tokens, in chunks of the
 * step budget. */
static void *prefill_main(void *arg) {
    prefill_job *j = arg;
    bench *b = j->b;
    pt_engine *e = b->L.inst[j->inst];
    uint32_t chunk = b->o.max_batch_tokens;
    int32_t *tok = malloc(chunk * sizeof(int32_t));
    j->rc = 0;
    for (int i = 0; i < b->a->n_seqs && !j->rc; i++) {
        if (b->L.where[i] != j->inst) continue;
        int s = b->L.id[i];
        for (uint32_t at = pt_engine_seq_len(e, s); at < j->len && !j->rc;) {
            uint32_t m = j->len - at < chunk ? j->len - at : chunk;
            for (uint32_t k = 0; k < m; k++) tok[k] = token_at(b, i, at + k);
            pt_batch_entry be = {s, tok, m, NULL, false, false};
            j->rc = pt_engine_step(e, &be, 1, &j->err);
            at += m;
        }
    }
    free(tok);
    return NULL;
}

/* Fresh sequences of `len` tokens each, alternating over the two TP1
 * instances; the prefill of each instance on its own thread. */
static void fill(bench *b, uint32_t len, fill_mode mode) {
    layout *L = &b->L;
    if (L->n_inst != 2) die("fill: expects TP1 + TP1", NULL);
    for (int i = 0; i < b->a->n_seqs; i++) {
        if (L->id[i] >= 0) pt_engine_seq_free(L->inst[L->where[i]], L->id[i]);
        L->where[i] = i % 2;
        L->id[i] = pt_engine_seq_new(L->inst[i % 2]);
        if (L->id[i] < 0) die("fill: no free sequence slot", NULL);
    }
    if (mode == FILL_FAST) {
        for (int i = 0; i < b->a->n_seqs; i++) fill_fast(b, L->inst[L->where[i]], L->id[i], len);
        return;
    }
    pthread_t th[2];
    prefill_job j[2];
    for (int k = 0; k < 2; k++) {
        j[k] = (prefill_job){b, k, len, {{0}}, 0};
        pthread_create(&th[k], NULL, prefill_main, &j[k]);
    }
    for (int k = 0; k < 2; k++) {
        pthread_join(th[k], NULL);
        if (j[k].rc) die("prefill", &j[k].err);
    }
}

/* ---- decoding ---- */

/* One decode step of instance k: every sequence on it one token, with logits. */
static double decode_step(bench *b, int k) {
    pt_batch_entry be[MAX_SEQS];
    int32_t tok[MAX_SEQS];
    size_t n = 0;
    pt_engine *e = b->L.inst[k];
    for (int i = 0; i < b->a->n_seqs; i++) {
        if (b->L.where[i] != k) continue;
        tok[n] = token_at(b, i, pt_engine_seq_len(e, b->L.id[i]));
        be[n] = (pt_batch_entry){b->L.id[i], &tok[n], 1, b->logits + (size_t)i * b->V, false, false};
        n++;
    }
    pt_err err = {{0}};
    double t0 = pt_now();
    if (n && pt_engine_step(e, be, n, &err) != 0) die("decode step", &err);
    return pt_now() - t0;
}

/* One decode step of every instance, one after the other on this thread. */
static double lockstep(bench *b) {
    double t = 0;
    for (int k = 0; k < b->L.n_inst; k++) t += decode_step(b, k);
    return t;
}

static uint32_t kv_tokens(const bench *b) {
    uint32_t t = 0;
    for (int i = 0; i < b->a->n_seqs; i++) t += pt_engine_seq_len(b->L.inst[b->L.where[i]], b->L.id[i]);
    return t;
}

static uint64_t kv_pages_total(bench *b) {
    uint64_t sum = 0;
    for (int k = 0; k < b->L.n_inst; k++)
        for (int r = 0; r < pt_engine_tp(b->L.inst[k]); r++) {
            uint64_t total, free_pages;
            pt_engine_kv_pages(b->L.inst[k], r, &total, &free_pages);
            sum += total;
        }
    return sum;
}

/* ---- the transformation ---- */

typedef struct {
    pt_xform *x;
    atomic_bool done;
    int rc;
    pt_err err;
} copy_job;

static void *copy_main(void *arg) {
    copy_job *j = arg;
    j->rc = pt_xform_copy(j->x, &j->err);
    atomic_store(&j->done, true);
    return NULL;
}

static void transform(bench *b, bool merge, bool live, run *r) {
    layout *L = &b->L;
    if ((merge && L->n_inst != 2) || (!merge && L->n_inst != 1)) die("transform: wrong layout", NULL);
    pt_xform_group dst[2] = {{0, 2}, {0, 0}};
    int n_dst = 1;
    if (!merge) {
        dst[0] = (pt_xform_group){0, 1};
        dst[1] = (pt_xform_group){1, 1};
        n_dst = 2;
    }
    r->op = merge ? "merge" : "split";
    r->live = live;
    r->kv_tokens = kv_tokens(b);
    r->pages_before = kv_pages_total(b);
    pt_err err = {{0}};
    pt_xform *x = NULL;
    double t0 = pt_now();
    if (pt_xform_create_from(&x, L->inst, L->n_inst, dst, n_dst, b->a->weights, &err) != 0)
        die("pt_xform_create", &err);
    r->build_s = pt_now() - t0;

    static double steps[MAX_STEPS];
    int n_steps = 0;
    if (live) {
        t0 = pt_now();
        for (;;) {
            for (int s = 0; s < L->n_inst; s++) {
                uint32_t np = 0;
                if (pt_xform_snapshot(x, s, &np, &err) != 0) die("pt_xform_snapshot", &err);
            }
            copy_job j = {x, false, 0, {{0}}};
            pthread_t th;
            pthread_create(&th, NULL, copy_main, &j);
            do {
                double t = lockstep(b);
                if (n_steps < MAX_STEPS) steps[n_steps++] = t;
            } while (!atomic_load(&j.done));
            pthread_join(th, NULL);
            if (j.rc) die("pt_xform_copy", &j.err);
            if (pt_xform_precopy_done(x)) break;
        }
        r->precopy_s = pt_now() - t0;
    }
    r->precopy_steps = n_steps;
    r->src_step_s = median(steps, n_steps);

    pt_xform_move moves[MAX_SEQS];
    for (int i = 0; i < b->a->n_seqs; i++) moves[i] = (pt_xform_move){L->where[i], L->id[i], -1, -1};
    long f0 = minor_faults();
    t0 = pt_now();
    if (pt_xform_commit(x, moves, (size_t)b->a->n_seqs, &err) != 0) die("pt_xform_commit", &err);
    r->pause_s = pt_now() - t0;
    r->pause_faults = minor_faults() - f0;
    r->st = *pt_xform_get_stats(x);
    for (int d = 0; d < 2; d++) r->used_peak[d] = pt_device_used_total(pt_fabric_device(b->f, d));

    L->n_inst = n_dst;
    for (int k = 0; k < n_dst; k++) L->inst[k] = pt_xform_target(x, k);
    for (int i = 0; i < b->a->n_seqs; i++) {
        L->where[i] = moves[i].dst;
        L->id[i] = moves[i].dst_seq;
        if (L->where[i] < 0 || L->where[i] >= n_dst || L->id[i] < 0) die("pt_xform_commit: a move left unset", NULL);
    }
    t0 = pt_now();
    pt_xform_free(x, &r->st); /* the final statistics: pages gained, weights freed */
    r->free_s = pt_now() - t0;
    r->pages_after = kv_pages_total(b);
    /* The commit must not have changed a sequence's length. */
    if (kv_tokens(b) != r->kv_tokens + (uint32_t)(n_steps * b->a->n_seqs)) die("tokens changed by the commit", NULL);
    r->target_first_step_s = r->target_step_s = -1;
}

/* ---- set-up ---- */

/* Weights and scratch a TP1 rank and a TP2 rank hold, from probe instances
 * on an unbudgeted fabric with one page per head. */
static void probe_ranks(bench *b, uint64_t *u1, uint64_t *u2) {
    pt_device_spec specs[2] = {{PT_DEVICE_CPU, 1, 0, 0}, {PT_DEVICE_CPU, 1, 0, 0}};
    int allowed[] = {1, 2};
    pt_fabric *f = NULL;
    pt_err err = {{0}};
    if (pt_fabric_create(&f, specs, 2, allowed, 2, &err) != 0) die("probe fabric", &err);
    pt_engine_opts o = b->o;
    o.kv_pages = b->mf.config.n_kv_heads;
    for (int tp = 1; tp <= 2; tp++) {
        pt_engine *e = NULL;
        if (pt_engine_create_on(&e, &b->mf, f, 0, tp, &o, &err) != 0) die("probe instance", &err);
        uint64_t m = 0;
        for (int d = 0; d < tp; d++) {
            pt_device *dev = pt_fabric_device(f, d);
            uint64_t u = pt_device_used(dev, PT_MEM_WEIGHTS) + pt_device_used(dev, PT_MEM_SCRATCH);
            m = u > m ? u : m;
        }
        *(tp == 1 ? u1 : u2) = m;
        pt_engine_free(e);
    }
    pt_fabric_free(f);
}

static void parse_sizes(args *a, const char *s) {
    a->n_sizes = 0;
    for (const char *p = s; *p && a->n_sizes < MAX_SIZES;) {
        char *end;
        unsigned long v = strtoul(p, &end, 10);
        if (end == p || v == 0) {
            fprintf(stderr, "bench_transform: bad --sizes '%s'\n", s);
            exit(2);
        }
        a->sizes[a->n_sizes++] = (uint32_t)v;
        p = *end == ',' ? end + 1 : end;
    }
}

static void usage(void) {
    fprintf(stderr, "usage: bench_transform [-m MODEL] [--sizes 1024,4096,16384] [--seqs 8] [--reps 5] [--warmup 1]\n"
                    "                       [-t THREADS] [--kv f32|f16] [--fill prefill|fast] [--budget-mb N]\n"
                    "                       [--target-steps 3] [--weights peers|file]\n");
    exit(2);
}

static void print_run(const bench *b, const run *r) {
    const pt_xform_stats *s = &r->st;
    printf("{\"model\":\"%s\",\"kv_dtype\":\"%s\",\"fill\":\"%s\",\"threads_per_device\":%d,\"budget_bytes\":%llu,"
           "\"size\":%u,\"seqs\":%d,\"rep\":%d,\"op\":\"%s\",\"mode\":\"%s\",\"kv_tokens\":%u,"
           "\"kv_bytes_moved\":%llu,\"pages_precopied\":%llu,\"pages_at_commit\":%llu,\"pages_in_place\":%llu,"
           "\"pages_wasted\":%llu,\"stages\":%d,\"precopy_steps\":%d,\"precopy_s\":%.6f,\"copy_s\":%.6f,"
           "\"src_step_s\":%.6f,"
           "\"pause_s\":%.6f,\"pause_minor_faults\":%ld,\"commit_s\":%.6f,\"build_s\":%.6f,\"free_s\":%.6f,"
           "\"weights_from\":\"%s\",\"weight_bytes_from_peers\":%llu,"
           "\"weight_bytes_new\":%llu,\"weight_bytes_freed\":%llu,\"kv_pages_reserved\":%llu,\"kv_pages_gained\":%llu,"
           "\"kv_pages_before\":%llu,\"kv_pages_after\":%llu,\"device_used_at_commit\":[%llu,%llu],"
           "\"target_first_step_s\":%.6f,\"target_step_s\":%.6f}\n",
           b->a->model, b->a->kv == PT_DTYPE_F16 ? "f16" : "f32", b->a->fill == FILL_FAST ? "fast" : "prefill",
           b->a->threads, (unsigned long long)b->a->budget, r->size, b->a->n_seqs, r->rep, r->op,
           r->live ? "precopy" : "stop_the_world", r->kv_tokens, (unsigned long long)s->kv_bytes_moved,
           (unsigned long long)s->pages_precopied, (unsigned long long)s->pages_at_commit,
           (unsigned long long)s->pages_in_place, (unsigned long long)s->pages_wasted, s->stages, r->precopy_steps,
           r->precopy_s, s->precopy_s, r->src_step_s, r->pause_s, r->pause_faults, s->commit_s, r->build_s, r->free_s,
           b->a->weights == PT_XFORM_WEIGHTS_FROM_FILE ? "file" : "peers",
           (unsigned long long)s->weight_bytes_from_peers, (unsigned long long)s->weight_bytes_new,
           (unsigned long long)s->weight_bytes_freed,
           (unsigned long long)s->kv_pages_reserved,
           (unsigned long long)s->kv_pages_gained, (unsigned long long)r->pages_before,
           (unsigned long long)r->pages_after, (unsigned long long)r->used_peak[0],
           (unsigned long long)r->used_peak[1], r->target_first_step_s, r->target_step_s);
    fflush(stdout);
}

/* Medians over the repetitions of one size, printed as a JSON summary and a
 * table row. */
static void summarize(const bench *b, uint32_t size, const run *runs, int n) {
    for (int op = 0; op < 2; op++) {
        const char *name = op ? "split" : "merge";
        double live_p[64], stw_p[64], pre[64], step[64], moved[64], stages[64], psteps[64], tok[64];
        double gained[64], reserved[64], at_commit[64], srcstep[64], copy[64], faults[64], stw_faults[64];
        int nl = 0, ns = 0, nt = 0;
        for (int i = 0; i < n; i++) {
            const run *r = &runs[i];
            if (strcmp(r->op, name)) continue;
            if (r->live) {
                live_p[nl] = r->pause_s;
                pre[nl] = r->precopy_s;
                copy[nl] = r->st.precopy_s;
                faults[nl] = (double)r->pause_faults;
                moved[nl] = (double)r->st.kv_bytes_moved;
                stages[nl] = r->st.stages;
                psteps[nl] = r->precopy_steps;
                tok[nl] = r->kv_tokens;
                at_commit[nl] = (double)r->st.pages_at_commit;
                srcstep[nl] = r->src_step_s;
                gained[nl] = (double)r->st.kv_pages_gained;
                reserved[nl] = (double)r->st.kv_pages_reserved;
                nl++;
            } else {
                stw_faults[ns] = (double)r->pause_faults;
                stw_p[ns++] = r->pause_s;
            }
        }
        /* The reference for both: a decode step of the merged instance. */
        for (int i = 0; i < n; i++)
            if (runs[i].target_step_s >= 0) step[nt++] = runs[i].target_step_s;
        double lmax = maxd(live_p, nl), smax = maxd(stw_p, ns);
        double lmed = median(live_p, nl), smed = median(stw_p, ns), tstep = median(step, nt);
        double mb = median(moved, nl) / 1048576.0;
        printf("{\"summary\":true,\"model\":\"%s\",\"kv_dtype\":\"%s\",\"size\":%u,\"seqs\":%d,\"op\":\"%s\","
               "\"reps\":%d,"
               "\"kv_tokens_median\":%.0f,\"kv_mib_moved_median\":%.2f,\"stages_median\":%.1f,"
               "\"precopy_steps_median\":%.1f,\"precopy_s_median\":%.6f,\"copy_s_median\":%.6f,"
               "\"src_step_s_median\":%.6f,"
               "\"pages_at_commit_median\":%.0f,\"pause_s_median\":%.6f,"
               "\"pause_s_max\":%.6f,\"pause_minor_faults_median\":%.0f,\"stw_pause_s_median\":%.6f,"
               "\"stw_pause_s_max\":%.6f,\"stw_pause_minor_faults_median\":%.0f,"
               "\"merged_step_s_median\":%.6f,\"kv_pages_reserved_median\":%.0f,\"kv_pages_gained_median\":%.0f}\n",
               b->a->model, b->a->kv == PT_DTYPE_F16 ? "f16" : "f32", size, b->a->n_seqs, name, nl, median(tok, nl),
               mb, median(stages, nl), median(psteps, nl), median(pre, nl), median(copy, nl), median(srcstep, nl),
               median(at_commit, nl), lmed, lmax, median(faults, nl), smed, smax, median(stw_faults, ns), tstep,
               median(reserved, nl), median(gained, nl));
        fflush(stdout);
        fprintf(stderr,
                "%-6u %-5s %7.0f %9.1f %6.1f %6.1f %8.1f %9.1f %9.2f %9.2f %9.2f %9.2f %8.1fx %9.1f %8.0f %8.0f\n",
                size, name, median(tok, nl), mb, median(stages, nl), median(psteps, nl), 1e3 * median(copy, nl),
                1e3 * median(pre, nl),
                1e3 * lmed, 1e3 * lmax, 1e3 * smed, 1e3 * smax, lmed > 0 ? smed / lmed : 0, 1e3 * tstep,
                median(reserved, nl), median(gained, nl));
    }
}

int main(int argc, char **argv) {
    static char default_model[4096];
    const char *env = getenv("PROTEUS_DEFAULT_MODEL");
    if (env && *env) {
        snprintf(default_model, sizeof default_model, "%s", env);
    } else {
        const char *dir = getenv("PROTEUS_MODEL_DIR");
        const char *home = getenv("HOME");
        if (dir && *dir)
            snprintf(default_model, sizeof default_model, "%s/SmolLM2-135M-Instruct.Q4_1.gguf", dir);
        else
            snprintf(default_model, sizeof default_model, "%s/.cache/proteus/models/SmolLM2-135M-Instruct.Q4_1.gguf",
                     home ? home : ".");
    }
    args a = {default_model, {1024, 4096, 16384}, 3, 8, 5, 1, 1, 3, PT_DTYPE_F32, FILL_PREFILL, 0,
              PT_XFORM_WEIGHTS_DEFAULT};
    int fill_set = 0;
    for (int i = 1; i < argc; i++) {
        const char *k = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(k, "-h") || !strcmp(k, "--help")) usage();
        if (!v) usage();
        i++;
        if (!strcmp(k, "-m")) a.model = v;
        else if (!strcmp(k, "--sizes")) parse_sizes(&a, v);
        else if (!strcmp(k, "--seqs")) a.n_seqs = atoi(v);
        else if (!strcmp(k, "--reps")) a.reps = atoi(v);
        else if (!strcmp(k, "--warmup")) a.warmup = atoi(v);
        else if (!strcmp(k, "-t")) a.threads = atoi(v);
        else if (!strcmp(k, "--target-steps")) a.target_steps = atoi(v);
        else if (!strcmp(k, "--budget-mb")) a.budget = strtoull(v, NULL, 10) << 20;
        else if (!strcmp(k, "--weights")) {
            if (!strcmp(v, "peers")) a.weights = PT_XFORM_WEIGHTS_FROM_PEERS;
            else if (!strcmp(v, "file")) a.weights = PT_XFORM_WEIGHTS_FROM_FILE;
            else usage();
        }
        else if (!strcmp(k, "--kv")) {
            if (!strcmp(v, "f16")) a.kv = PT_DTYPE_F16;
            else if (!strcmp(v, "f32")) a.kv = PT_DTYPE_F32;
            else usage();
        } else if (!strcmp(k, "--fill")) {
            fill_set = 1;
            if (!strcmp(v, "fast")) a.fill = FILL_FAST;
            else if (!strcmp(v, "prefill")) a.fill = FILL_PREFILL;
            else usage();
        } else usage();
    }
    if (a.n_seqs < 2 || a.n_seqs > MAX_SEQS || a.reps < 1 || a.reps > 32 || a.warmup < 0 || a.threads < 1 ||
        a.target_steps < 1 || a.target_steps > 64)
        usage();
    if (!fill_set && !strncmp(a.model, "synthetic:", 10)) a.fill = FILL_FAST;

    bench b;
    memset(&b, 0, sizeof b);
    b.a = &a;
    pt_err err = {{0}};
    double t0 = pt_now();
    if (pt_model_file_open(&b.mf, a.model, &err) != 0) die(a.model, &err);
    const pt_model_config *c = &b.mf.config;
    b.V = c->vocab_size;
    uint32_t max_size = 0;
    for (int i = 0; i < a.n_sizes; i++) max_size = a.sizes[i] > max_size ? a.sizes[i] : max_size;
    pt_engine_opts_default(&b.o);
    b.o.n_threads = a.threads;
    b.o.kv_dtype = a.kv;
    /* Room for the decode steps a repetition adds (a few per transformation). */
    b.o.max_ctx = max_size / a.n_seqs + 512;
    b.o.max_batch_tokens = 512;
    /* Default max_seqs (64): the cap "max_seqs full contexts" stays above
     * the budget, so the budget sizes the pools. */

    uint64_t u1 = 0, u2 = 0;
    probe_ranks(&b, &u1, &u2);
    uint32_t P = b.o.page_size;
    uint64_t page = pt_kv_page_bytes(c->n_layers, c->head_dim, P, a.kv);
    /* Every page of the largest size, with 64 tokens per sequence for the decode steps of a repetition. */
    uint64_t kv_room = (uint64_t)a.n_seqs * ((max_size / a.n_seqs + 64 + P - 1) / P) * c->n_kv_heads * page;
    if (!a.budget) a.budget = (u1 + u2 + kv_room + kv_room / 4 + (1u << 20) - 1) & ~(uint64_t)((1u << 20) - 1);
    fprintf(stderr,
            "bench_transform: %s, %u layers, %u KV heads x %u, KV %s (%llu bytes per head page of %u, %.1f KiB per "
            "token), TP1 rank %.1f MiB, TP2 rank %.1f MiB (weights + scratch), budget %.1f MiB per device, fill %s, "
            "%d thread(s) per device\n",
            a.model, c->n_layers, c->n_kv_heads, c->head_dim, a.kv == PT_DTYPE_F16 ? "f16" : "f32",
            (unsigned long long)page, P, (double)page * c->n_kv_heads / P / 1024, u1 / 1048576.0, u2 / 1048576.0,
            a.budget / 1048576.0, a.fill == FILL_FAST ? "fast" : "prefill", a.threads);

    pt_device_spec specs[2] = {{PT_DEVICE_CPU, a.threads, 0, a.budget}, {PT_DEVICE_CPU, a.threads, 0, a.budget}};
    int allowed[] = {1, 2};
    if (pt_fabric_create(&b.f, specs, 2, allowed, 2, &err) != 0) die("fabric", &err);
    b.L.n_inst = 2;
    for (int k = 0; k < 2; k++)
        if (pt_engine_create_on(&b.L.inst[k], &b.mf, b.f, k, 1, &b.o, &err) != 0) die("source instance", &err);
    for (int i = 0; i < MAX_SEQS; i++) b.L.id[i] = -1;
    b.logits = malloc((size_t)a.n_seqs * b.V * sizeof(float));
    fprintf(stderr, "bench_transform: set-up %.1f s\n", pt_now() - t0);

    static run runs[MAX_SIZES][5 * 32];
    int n_runs[MAX_SIZES] = {0};
    for (int si = 0; si < a.n_sizes; si++) {
        uint32_t size = a.sizes[si], len = size / a.n_seqs;
        for (int rep = -a.warmup; rep < a.reps; rep++) {
            /* Warm-up repetitions (rep < 0, pages filled directly): the
             * pools' memory is touched once before anything is recorded. */
            double tf = pt_now();
            fill(&b, len, rep < 0 ? FILL_FAST : a.fill);
            fprintf(stderr, "bench_transform: size %u %s %d: filled %u tokens in %.1f s\n", size,
                    rep < 0 ? "warm-up" : "rep", rep < 0 ? rep + a.warmup : rep, kv_tokens(&b), pt_now() - tf);
            for (int step = 0; step < 4; step++) {
                bool merge = step % 2 == 0, live = step >= 2;
                run scratch, *r = rep < 0 ? &scratch : &runs[si][n_runs[si]++];
                memset(r, 0, sizeof *r);
                r->size = size;
                r->rep = rep;
                transform(&b, merge, live, r);
                if (merge && !live) {
                    double ts[64];
                    r->target_first_step_s = decode_step(&b, 0);
                    for (int k = 0; k < a.target_steps; k++) ts[k] = decode_step(&b, 0);
                    r->target_step_s = median(ts, a.target_steps);
                }
                if (rep >= 0) print_run(&b, r);
            }
        }
    }
    fprintf(stderr, "\n%s, KV %s, %d sequences, %d rep(s), budget %.0f MiB per device (times in ms)\n", a.model,
            a.kv == PT_DTYPE_F16 ? "f16" : "f32", a.n_seqs, a.reps, a.budget / 1048576.0);
    fprintf(stderr, "%-6s %-5s %7s %9s %6s %6s %8s %9s %9s %9s %9s %9s %9s %9s %8s %8s\n", "size", "op", "tokens",
            "MiB moved", "stages", "steps", "copy", "precopy", "pause", "pause max", "stw", "stw max", "stw/pause",
            "TP2 step", "reserved", "gained");
    for (int si = 0; si < a.n_sizes; si++) summarize(&b, a.sizes[si], runs[si], n_runs[si]);

    for (int k = 0; k < b.L.n_inst; k++) {
        for (int i = 0; i < a.n_seqs; i++)
            if (b.L.where[i] == k) pt_engine_seq_free(b.L.inst[k], b.L.id[i]);
        pt_engine_free(b.L.inst[k]);
    }
    free(b.logits);
    pt_fabric_free(b.f);
    pt_model_file_close(&b.mf);
    return 0;
}
