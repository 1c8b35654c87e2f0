/* The cost model from timed steps on the live server (calibrate.h). */
#include "server/calibrate.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the fit (pure) ----
 *
 * Coefficients, in this order: fixed_s, token_s, mem_s, mem_kv_s,
 * flop_token_s, flop_pair_s, seq_s (cost_model.h). A point's row says how
 * much of each its step has: every step the fixed cost, token_s per token
 * and seq_s per sequence; on
 * the memory side of the max mem_s once and mem_kv_s per cached token
 * read; on the compute side flop_token_s per token and flop_pair_s per
 * pair. */

#define N_COEF 7
enum { C_FIXED, C_TOKEN, C_MEM, C_MEM_KV, C_FLOP_TOKEN, C_FLOP_PAIR, C_SEQ };

static void row_of(const pt_calib_point *p, bool mem_side, double *row) {
    double t = (double)p->tokens;
    row[C_FIXED] = 1;
    row[C_TOKEN] = t;
    row[C_MEM] = mem_side ? 1 : 0;
    row[C_MEM_KV] = mem_side ? (double)p->kv_tokens : 0;
    row[C_FLOP_TOKEN] = mem_side ? 0 : t;
    row[C_FLOP_PAIR] = mem_side ? 0 : (double)p->pairs;
    row[C_SEQ] = (double)p->n_seqs;
}

/* Least squares of the relative error over the coefficients in `use` (the
 * others 0): rows a_i / y_i against 1, columns scaled to unit maximum so
 * that the normal equations stay well conditioned. False when the points
 * do not determine them. */
static bool solve_subset(const pt_calib_point *p, size_t n, const bool *side, unsigned use, double *x) {
    double scale[N_COEF] = {0}, row[N_COEF];
    int idx[N_COEF], k = 0;
    for (size_t i = 0; i < n; i++) {
        row_of(&p[i], side[i], row);
        for (int c = 0; c < N_COEF; c++)
            if (row[c] > scale[c]) scale[c] = row[c];
    }
    for (int c = 0; c < N_COEF; c++) {
        x[c] = 0;
        if (use >> c & 1) {
            if (scale[c] == 0) return false; /* no point has this term */
            idx[k++] = c;
        }
    }
    double ata[N_COEF][N_COEF + 1] = {{0}};
    for (size_t i = 0; i < n; i++) {
        row_of(&p[i], side[i], row);
        double a[N_COEF];
        for (int j = 0; j < k; j++) a[j] = row[idx[j]] / scale[idx[j]] / p[i].seconds;
        for (int r = 0; r < k; r++) {
            for (int c = 0; c < k; c++) ata[r][c] += a[r] * a[c];
            ata[r][k] += a[r]; /* against b = 1 */
        }
    }
    /* Gaussian elimination with partial pivoting on the k x k system. */
    for (int c = 0; c < k; c++) {
        int piv = c;
        for (int r = c + 1; r < k; r++)
            if (fabs(ata[r][c]) > fabs(ata[piv][c])) piv = r;
        if (fabs(ata[piv][c]) < 1e-12) return false;
        if (piv != c)
            for (int j = 0; j <= k; j++) {
                double t = ata[c][j];
                ata[c][j] = ata[piv][j];
                ata[piv][j] = t;
            }
        for (int r = 0; r < k; r++) {
            if (r == c) continue;
            double f = ata[r][c] / ata[c][c];
            for (int j = c; j <= k; j++) ata[r][j] -= f * ata[c][j];
        }
    }
    for (int j = 0; j < k; j++) x[idx[j]] = ata[j][k] / ata[j][j] / scale[idx[j]];
    return true;
}

static double predict(const double *x, const pt_calib_point *p) {
    double mem = x[C_MEM] + x[C_MEM_KV] * (double)p->kv_tokens;
    double flop = x[C_FLOP_TOKEN] * (double)p->tokens + x[C_FLOP_PAIR] * (double)p->pairs;
    return x[C_FIXED] + x[C_TOKEN] * (double)p->tokens + x[C_SEQ] * (double)p->n_seqs + (mem > flop ? mem : flop);
}

static double sq_rel_err(const double *x, const pt_calib_point *p, size_t n) {
    double sum = 0;
    for (size_t i = 0; i < n; i++) {
        double r = (predict(x, &p[i]) - p[i].seconds) / p[i].seconds;
        sum += r * r;
    }
    return sum;
}

/* Non-negative least squares over the coefficients in `allowed` with each
 * point's side fixed: the best of the subsets whose unconstrained solution
 * is non-negative (the optimum is one of them; seven coefficients make 127
 * small solves). False when no subset is determined. */
static bool nnls(const pt_calib_point *p, size_t n, const bool *side, unsigned allowed, double *best) {
    double best_err = INFINITY, x[N_COEF] = {0};
    for (unsigned use = 1; use < 1u << N_COEF; use++) {
        if ((use & ~allowed) || !solve_subset(p, n, side, use, x)) continue;
        bool neg = false;
        for (int c = 0; c < N_COEF; c++) neg |= x[c] < 0;
        if (neg) continue;
        /* The error of this subset with the sides as given (not re-chosen
         * by the max): what its least squares minimised. */
        double err = 0, row[N_COEF];
        for (size_t i = 0; i < n; i++) {
            row_of(&p[i], side[i], row);
            double pred = 0;
            for (int c = 0; c < N_COEF; c++) pred += row[c] * x[c];
            double r = (pred - p[i].seconds) / p[i].seconds;
            err += r * r;
        }
        if (err < best_err) {
            best_err = err;
            memcpy(best, x, sizeof(x));
        }
    }
    return best_err < INFINITY;
}

#define LINEAR ((1u << C_FIXED) | (1u << C_TOKEN) | (1u << C_FLOP_PAIR) | (1u << C_SEQ))

/* The roofline form: a side for each point (a decode of few sequences
 * starts on the memory side), fitted, each point moved to the side the
 * max picks, until no point moves. Several starts; the best kept. */
static bool fit_roofline(const pt_calib_point *p, size_t n, double *best) {
    bool side[PT_CALIB_MAX_POINTS * 4];
    double best_err = INFINITY, x[N_COEF] = {0};
    static const uint64_t starts[] = {0, 1, 2, 4, 8};
    for (size_t s = 0; s < sizeof(starts) / sizeof(starts[0]); s++) {
        for (size_t i = 0; i < n; i++) side[i] = p[i].tokens == p[i].n_seqs && p[i].tokens <= starts[s];
        bool ok = false;
        for (int round = 0; round < 32; round++) {
            if (!(ok = nnls(p, n, side, (1u << N_COEF) - 1, x))) break;
            bool moved = false;
            for (size_t i = 0; i < n; i++) {
                bool mem = x[C_MEM] + x[C_MEM_KV] * (double)p[i].kv_tokens >
                           x[C_FLOP_TOKEN] * (double)p[i].tokens + x[C_FLOP_PAIR] * (double)p[i].pairs;
                moved |= mem != side[i];
                side[i] = mem;
            }
            if (!moved) break;
        }
        double err = ok ? sq_rel_err(x, p, n) : INFINITY;
        if (err < best_err) {
            best_err = err;
            memcpy(best, x, sizeof(x));
        }
    }
    return best_err < INFINITY;
}

int pt_calib_fit(const pt_calib_point *p, size_t n, pt_cost_tp *out, double *mean_rel_err, pt_err *err) {
    if (n < 3) return pt_err_set(err, PT_ERR_INVALID, "calibration: %zu timed steps, at least 3 needed", n);
    if (n > PT_CALIB_MAX_POINTS * 4) n = PT_CALIB_MAX_POINTS * 4;
    for (size_t i = 0; i < n; i++)
        if (!(p[i].seconds > 0) || !isfinite(p[i].seconds))
            return pt_err_set(err, PT_ERR_INVALID, "calibration: step %zu took %g s", i, p[i].seconds);
    /* The linear form first: every point on the compute side, with its
     * per-token cost in token_s (a coefficient the points do not need is
     * 0: a fixed cost below the timer's resolution, a pair cost hidden by
     * the token cost at short contexts). */
    bool side[PT_CALIB_MAX_POINTS * 4] = {false};
    double x[N_COEF] = {0}, r[N_COEF] = {0};
    if (!nnls(p, n, side, LINEAR, x))
        return pt_err_set(err, PT_ERR_INVALID, "calibration: the timed steps do not determine the model");
    /* With enough shapes, the roofline form when it fits them better. */
    if (n >= PT_CALIB_ROOFLINE_MIN && fit_roofline(p, n, r) && sq_rel_err(r, p, n) < sq_rel_err(x, p, n))
        memcpy(x, r, sizeof(x));
    *out = (pt_cost_tp){.valid = true,
                        .fixed_s = x[C_FIXED],
                        .token_s = x[C_TOKEN],
                        .mem_s = x[C_MEM],
                        .mem_kv_s = x[C_MEM_KV],
                        .flop_token_s = x[C_FLOP_TOKEN],
                        .flop_pair_s = x[C_FLOP_PAIR],
                        .seq_s = x[C_SEQ]};
    double sum = 0;
    for (size_t i = 0; i < n; i++) sum += fabs(predict(x, &p[i]) - p[i].seconds) / p[i].seconds;
    if (mean_rel_err) *mean_rel_err = sum / (double)n;
    return PT_OK;
}

/* ---- timed steps ---- */

#define MAX_BATCH 32 /* sequences in one timed step */

typedef struct {
    pt_engine *e;
    int32_t *tokens;          /* (cap) token ids fed to every sequence */
    uint32_t cap, vocab;
    float *logits;            /* (MAX_BATCH, vocab) */
    pt_calib_point pts[PT_CALIB_MAX_POINTS];
    size_t n;
    pt_err err;
    bool failed;
} bench;

/* One step of `n` entries (sequences seqs, each computing lens[k] tokens,
 * every one with logits as a decode or a prompt's last chunk has them);
 * its seconds, or a negative number when it failed (b->err says why). */
static double step(bench *b, const int *seqs, const uint32_t *lens, int n, float *logits, pt_step_shape *shape) {
    if (b->failed) return -1;
    pt_batch_entry en[MAX_BATCH];
    *shape = (pt_step_shape){0};
    for (int k = 0; k < n && k < MAX_BATCH; k++) {
        uint32_t ctx = pt_engine_seq_len(b->e, seqs[k]);
        en[k] = (pt_batch_entry){seqs[k], b->tokens + (ctx % 64), lens[k], logits + (size_t)k * b->vocab, false, false};
        pt_cost_shape_add(shape, ctx, lens[k]);
    }
    double t0 = pt_now();
    if (pt_engine_step(b->e, en, (size_t)(n < MAX_BATCH ? n : MAX_BATCH), &b->err) != PT_OK) {
        b->failed = true;
        return -1;
    }
    return pt_now() - t0;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Appends a point: its shape and the median of the runs' times (what the
 * server's steps of that shape take: a live step pays the same occasional
 * stall of a thread at a barrier that one run of several does, which the
 * fastest run hides; measured on two CPU devices, the fastest run of a
 * TP2 step was up to a third below its median), and the fastest, for the
 * log. */
static void record(bench *b, const pt_step_shape *sh, double *times, int n, const char *what) {
    if (b->failed || n < 1 || b->n >= PT_CALIB_MAX_POINTS) return;
    qsort(times, (size_t)n, sizeof(double), cmp_double);
    double median = n % 2 ? times[n / 2] : (times[n / 2 - 1] + times[n / 2]) / 2;
    pt_calib_point *p = &b->pts[b->n++];
    *p = (pt_calib_point){sh->tokens, sh->pairs, median, sh->kv_tokens, sh->n_seqs, times[0], {0}};
    snprintf(p->what, sizeof(p->what), "%s", what);
}

/* One point: `reps` runs of the same step, on the sequence sets
 * sets[0..reps) in turn. The first run's shape. */
static void point(bench *b, const int (*sets)[4], int reps, const uint32_t *lens, int n, float *logits,
                  const char *what) {
    double t[4];
    int got = 0;
    pt_step_shape first = {0}, sh;
    for (int r = 0; r < reps && r < 4 && !b->failed; r++) {
        double dt = step(b, sets[r], lens, n, logits, &sh);
        if (r == 0) first = sh;
        if (dt >= 0) t[got++] = dt;
    }
    record(b, &first, t, got, what);
}

/* The timed steps of one degree (calibrate.h); false with b->err on failure.
 * First the four shapes the fit needs (a short prefill, decodes of one and
 * of four sequences, a chunk after a context); then, while the budget
 * lasts, a long prefill, a decode after it and a chunk after that, which
 * pin the per-pair cost at longer contexts. A slow build (the sanitizers)
 * stops after the first four. Sequences: a and a2 a short prompt, l and l2
 * a long one, c and d four tokens, w the warm-up. */
static bool run_steps(bench *b, uint32_t max_tokens, double budget_s, uint32_t *long_len) {
    float *logits = b->logits;
    enum { A, A2, L, L2, C, D, W, N_SEQ };
    int s[N_SEQ];
    for (int k = 0; k < N_SEQ; k++) s[k] = pt_engine_seq_new(b->e);
    if (s[N_SEQ - 1] < 0) {
        pt_err_set(&b->err, PT_ERR_NOMEM, "calibration: no free sequence slots");
        return false;
    }
    double t0 = pt_now();
    uint32_t l8 = 8, l16 = 16, l4 = 4, l32 = 32, one[4] = {1, 1, 1, 1};
    pt_step_shape sh;
    step(b, &s[W], &l8, 1, logits, &sh); /* warm-up: first touches of buffers and pages */
    int short_p[2][4] = {{s[A]}, {s[A2]}};
    /* A fast step is timed again, on a second sequence; a slow build's
     * (the sanitizers) is not. */
    double t16[2] = {step(b, &s[A], &l16, 1, logits, &sh), -1};
    pt_step_shape sh16 = sh;
    bool fast = !b->failed && t16[0] < budget_s / 16;
    if (fast) t16[1] = step(b, &s[A2], &l16, 1, logits, &sh);
    record(b, &sh16, t16, fast && t16[1] >= 0 ? 2 : 1, "prefill 16");
    int reps = fast ? 3 : 2;
    step(b, &s[C], &l4, 1, logits, &sh);
    step(b, &s[D], &l4, 1, logits, &sh);
    int a3[3][4] = {{s[A]}, {s[A]}, {s[A]}};
    int four[3][4] = {{s[A], s[W], s[C], s[D]}, {s[A], s[W], s[C], s[D]}, {s[A], s[W], s[C], s[D]}};
    point(b, a3, reps, one, 1, logits, "decode 1 x ctx 16");   /* decode, short context */
    point(b, four, reps, one, 4, logits, "decode 4 x ctx 4-16"); /* decode, four sequences */
    point(b, short_p, 1, &l16, 1, logits, "chunk 16 after 16"); /* a chunk after a few tokens */
    *long_len = 0;
    /* The long prefill: both runs in about half the budget at the speed
     * seen, and only when the rest of the budget allows. */
    double per_token = b->pts[0].seconds / 16.0;
    uint32_t len = 32;
    while (len * 2 <= 512 && len * 2 + 48 <= max_tokens && 2 * (len * 2) * per_token <= budget_s / 2) len *= 2;
    if (!b->failed && len + 48 <= max_tokens && pt_now() - t0 + 2.5 * len * per_token <= budget_s) {
        *long_len = len;
        int long_p[2][4] = {{s[L]}, {s[L2]}}, l3[3][4] = {{s[L]}, {s[L]}, {s[L]}};
        char what[3][40];
        snprintf(what[0], sizeof(what[0]), "prefill %u", len);
        snprintf(what[1], sizeof(what[1]), "decode 1 x ctx %u", len);
        snprintf(what[2], sizeof(what[2]), "chunk 32 after %u", len);
        point(b, long_p, 2, &len, 1, logits, what[0]);
        point(b, l3, 3, one, 1, logits, what[1]);      /* decode, long context */
        point(b, long_p, 2, &l32, 1, logits, what[2]); /* a prefill chunk after a long context */
    }
    for (int k = 0; k < N_SEQ; k++) pt_engine_seq_free(b->e, s[k]);
    return !b->failed;
}

/* ---- the longer calibration (scheduler.calibration_s) ---- */

/* What the shapes of run_more need of the calibration instance. */
#define MORE_SHORT 32   /* short sequences decoded together */
#define MORE_CTX 2048   /* the longest context timed */
#define MORE_SEQS (MORE_SHORT + 8)

typedef struct {
    bench *b;
    double t0, budget_s;
    pt_cost_tp guess; /* fitted to the points so far: what a shape will cost */
    size_t skipped;
} more;

static double guess_s(const more *m, const pt_step_shape *sh) {
    return m->guess.fixed_s + m->guess.token_s * (double)sh->tokens + m->guess.flop_pair_s * (double)sh->pairs;
}

/* Whether `reps` runs of a step of this shape fit in what is left of the
 * budget; a shape that does not is skipped (and counted), a cheaper one
 * after it may still run. */
static bool affordable(more *m, const int *seqs, const uint32_t *lens, int n, int reps) {
    if (m->b->failed) return false;
    pt_step_shape sh = {0};
    for (int k = 0; k < n; k++) pt_cost_shape_add(&sh, pt_engine_seq_len(m->b->e, seqs[k]), lens[k]);
    if (pt_now() - m->t0 + reps * guess_s(m, &sh) <= m->budget_s) return true;
    m->skipped++;
    return false;
}

/* `reps` runs of one step over seqs[0..n) (decodes: each run adds a token
 * to every sequence, the context barely moves). */
static void timed(more *m, const int *seqs, const uint32_t *lens, int n, int reps, const char *what) {
    if (!affordable(m, seqs, lens, n, reps)) return;
    double t[8];
    int got = 0;
    pt_step_shape first = {0}, sh;
    for (int r = 0; r < reps && r < 8 && !m->b->failed; r++) {
        double dt = step(m->b, seqs, lens, n, m->b->logits, &sh);
        if (r == 0) first = sh;
        if (dt >= 0) t[got++] = dt;
    }
    record(m->b, &first, t, got, what);
}

/* A prompt of `len` tokens on `reps` fresh sequences, one step each; the
 * last sequence is kept (returned) for the steps after it, the others
 * freed. -1 when the budget or the slots do not allow it. */
static int timed_prefill(more *m, uint32_t len, int reps) {
    int s[4];
    int n = 0;
    for (; n < reps && n < 4; n++)
        if ((s[n] = pt_engine_seq_new(m->b->e)) < 0) break;
    int kept = -1;
    if (n == reps && affordable(m, s, &len, 1, reps)) {
        double t[4];
        int got = 0;
        pt_step_shape first = {0}, sh;
        for (int r = 0; r < reps && !m->b->failed; r++) {
            double dt = step(m->b, &s[r], &len, 1, m->b->logits, &sh);
            if (r == 0) first = sh;
            if (dt >= 0) t[got++] = dt;
        }
        char what[40];
        snprintf(what, sizeof(what), "prefill %u", len);
        record(m->b, &first, t, got, what);
        if (!m->b->failed) kept = s[--n];
    }
    for (int k = 0; k < n; k++) pt_engine_seq_free(m->b->e, s[k]);
    return kept;
}

/* The shapes a loaded server runs, while the budget lasts (calibrate.h):
 * prompts of 128-512 tokens, decodes of 2 to 32 short sequences, decodes
 * and chunks at contexts of 512 to 2048 tokens, a batch of decodes with a
 * prompt chunk, decodes at mixed long contexts. Each is the median of 2-3
 * runs. max_tokens: the step size; max_ctx: the instance's context. */
static void run_more(bench *b, uint32_t max_tokens, uint32_t max_ctx, double budget_s, double t0, size_t *skipped) {
    more m = {.b = b, .t0 = t0, .budget_s = budget_s};
    double err_unused;
    pt_err e2;
    if (pt_calib_fit(b->pts, b->n, &m.guess, &err_unused, &e2) != PT_OK) return;
    char what[64];
    /* Prompts: 128, 256, 512 tokens (what fits a step); one of each kept. */
    int kept[3] = {-1, -1, -1};
    uint32_t plen[3] = {128, 256, 512};
    for (int i = 0; i < 3; i++)
        if (plen[i] <= max_tokens && plen[i] + 64 <= max_ctx) kept[i] = timed_prefill(&m, plen[i], 2);
    /* Short sequences: their prompts of 16 tokens in one batched step (as
     * many as a step holds), then decodes of 2, 8, 16 and 32 of them. */
    int sh[MORE_SHORT], n_short = 0;
    while (n_short < MORE_SHORT && (sh[n_short] = pt_engine_seq_new(b->e)) >= 0) n_short++;
    uint32_t l16[MAX_BATCH], one[MAX_BATCH];
    for (int k = 0; k < MAX_BATCH; k++) l16[k] = 16, one[k] = 1;
    int per_step = (int)(max_tokens / 16) < n_short ? (int)(max_tokens / 16) : n_short;
    if (per_step >= 1 && affordable(&m, sh, l16, per_step, (n_short + per_step - 1) / per_step)) {
        snprintf(what, sizeof(what), "prefill %d x 16", per_step);
        timed(&m, sh, l16, per_step, 1, what);
        for (int done = per_step; done < n_short && !b->failed; done += per_step) {
            pt_step_shape s_;
            step(b, sh + done, l16, n_short - done < per_step ? n_short - done : per_step, b->logits, &s_);
        }
    }
    int n_ready = 0;
    for (int k = 0; k < n_short; k++) n_ready += pt_engine_seq_len(b->e, sh[k]) >= 16;
    static const int batch[] = {2, 8, 16, 32};
    for (size_t i = 0; i < sizeof(batch) / sizeof(batch[0]); i++)
        if (batch[i] <= n_ready) {
            snprintf(what, sizeof(what), "decode %d x ctx 16", batch[i]);
            timed(&m, sh, one, batch[i], 3, what);
        }
    /* A batch of decodes with a prompt chunk, as a server admitting a
     * request while others decode. */
    if (n_ready >= 16 && 16 + 256 <= max_tokens) {
        int s2 = pt_engine_seq_new(b->e);
        if (s2 >= 0) {
            int seqs[17];
            uint32_t lens[17];
            for (int k = 0; k < 16; k++) seqs[k] = sh[k], lens[k] = 1;
            seqs[16] = s2, lens[16] = 256;
            timed(&m, seqs, lens, 17, 1, "decode 16 x ctx 16 + prefill 256");
            pt_engine_seq_free(b->e, s2);
        }
    }
    /* Long contexts: the 512-token prompt grows by chunks of a step; a
     * decode and a short chunk at each context. */
    int x = kept[2]; /* kept[2] itself, growing */
    uint32_t chunk = max_tokens < 512 ? max_tokens : 512;
    while (x >= 0 && !b->failed) {
        uint32_t ctx = pt_engine_seq_len(b->e, x);
        snprintf(what, sizeof(what), "decode 1 x ctx %u", ctx);
        timed(&m, &x, one, 1, 3, what);
        uint32_t l64 = 64;
        ctx = pt_engine_seq_len(b->e, x);
        if (ctx + 64 + chunk + 64 > max_ctx || ctx + chunk > MORE_CTX + 64) break;
        snprintf(what, sizeof(what), "chunk 64 after %u", ctx);
        timed(&m, &x, &l64, 1, 1, what);
        ctx = pt_engine_seq_len(b->e, x);
        snprintf(what, sizeof(what), "chunk %u after %u", chunk, ctx);
        size_t before = m.skipped;
        timed(&m, &x, &chunk, 1, 1, what);
        if (m.skipped > before) break;
    }
    /* Decodes at mixed long contexts: the kept prompts and the grown one. */
    int mixed[4], n_mixed = 0;
    for (int i = 0; i < 3; i++)
        if (kept[i] >= 0) mixed[n_mixed++] = kept[i];
    if (n_mixed >= 2) {
        uint64_t sum = 0;
        for (int k = 0; k < n_mixed; k++) sum += pt_engine_seq_len(b->e, mixed[k]);
        snprintf(what, sizeof(what), "decode %d x ctx %llu (mean)", n_mixed, (unsigned long long)(sum / n_mixed));
        timed(&m, mixed, one, n_mixed, 3, what);
    }
    for (int i = 0; i < 3; i++)
        if (kept[i] >= 0) pt_engine_seq_free(b->e, kept[i]);
    for (int k = 0; k < n_short; k++) pt_engine_seq_free(b->e, sh[k]);
    *skipped = m.skipped;
}

/* Seconds per byte of a large copy: what moving KV pages and weight chunks
 * between CPU devices costs (they share the host's memory). */
static double measure_copy(double *bytes_per_s) {
    const size_t n = 64u << 20;
    char *a = malloc(n), *c = malloc(n);
    if (!a || !c) {
        free(a);
        free(c);
        *bytes_per_s = 5e9;
        return 1.0 / 5e9;
    }
    memset(a, 1, n);
    memset(c, 2, n); /* both touched: the copy times bandwidth, not page faults */
    double best = INFINITY;
    for (int r = 0; r < 3; r++) {
        double t0 = pt_now();
        memcpy(c, a, n);
        double dt = pt_now() - t0;
        a[r] = c[n - 1 - r]; /* keep the copies observable */
        if (dt < best) best = dt;
    }
    free(a);
    free(c);
    if (!(best > 0)) best = 1e-3;
    *bytes_per_s = (double)n / best;
    return best / (double)n;
}

/* The calibration instance's options: room for the sequences of run_steps
 * (two of the longest prefill and its chunk, five short ones), and with
 * `more` for those of run_more (the short batch, three prompts, one
 * context of MORE_CTX). */
static pt_engine_opts calib_opts(const pt_engine_opts *eo, const pt_model_file *mf, bool more) {
    pt_engine_opts o = *eo;
    uint32_t ps = o.page_size ? o.page_size : 16;
    uint64_t heads = mf->config.n_kv_heads ? mf->config.n_kv_heads : 1;
    o.max_seqs = 8;
    o.kv_pages = (uint64_t)(2 * (512 + 64) / ps + 16) * heads;
    if (more) {
        o.max_seqs = 8 + MORE_SEQS;
        o.kv_pages += ((uint64_t)MORE_SHORT * (48 / ps + 2) + 3 * ((512 + 64) / ps + 1) + (MORE_CTX + 3 * 64 + 512) / ps +
                       (256 + 64) / ps + 8) *
                      heads;
    }
    o.kv_bytes = 0;
    o.select_budget = 0;
    return o;
}

static void calibrate_degree(pt_cost_model *m, const pt_model_file *mf, pt_fabric *f, const pt_engine_opts *eo,
                             double budget_s, pt_calib_degree *d) {
    int tp = d->degree;
    if (tp < 1 || tp > PT_COST_MAX_TP || tp > pt_fabric_size(f)) {
        snprintf(d->why, sizeof(d->why), "needs %d devices, the server has %d", tp, pt_fabric_size(f));
        return;
    }
    /* The longer shapes only when a longer budget was asked for; an
     * instance too large for the devices falls back to the short set. */
    bool want_more = budget_s > PT_CALIB_DEFAULT_S;
    pt_engine_opts o = calib_opts(eo, mf, want_more);
    uint32_t max_tokens = o.max_batch_tokens ? o.max_batch_tokens : 512;
    pt_engine *e = NULL;
    pt_err err = {{0}};
    double t0 = pt_now();
    int rc = pt_engine_create_on(&e, mf, f, 0, tp, &o, &err);
    if (rc != PT_OK && want_more) {
        pt_log(PT_LOG_INFO, "cost model: TP %d: no room for the longer calibration's instance (%s): the short one", tp,
               err.msg);
        want_more = false;
        o = calib_opts(eo, mf, false);
        t0 = pt_now();
        rc = pt_engine_create_on(&e, mf, f, 0, tp, &o, &err);
    }
    if (rc != PT_OK) {
        snprintf(d->why, sizeof(d->why), "%s", err.msg);
        return;
    }
    d->build_s = pt_now() - t0;
    uint32_t ctx = pt_engine_get_opts(e)->max_ctx;
    if (ctx < 128) {
        pt_engine_free(e);
        snprintf(d->why, sizeof(d->why), "a context of %u tokens is too short to time steps", ctx);
        return;
    }
    if (max_tokens + 48 > ctx) max_tokens = ctx - 48;
    bench b = {.e = e, .vocab = pt_engine_config(e)->vocab_size, .cap = 64 + 512};
    b.tokens = malloc(b.cap * sizeof(int32_t));
    b.logits = malloc((size_t)MAX_BATCH * b.vocab * sizeof(float));
    for (uint32_t i = 0; b.tokens && i < b.cap; i++) b.tokens[i] = (int32_t)((i * 7919u + 13u) % b.vocab);
    t0 = pt_now();
    bool ok = b.tokens && b.logits && run_steps(&b, max_tokens, want_more ? PT_CALIB_DEFAULT_S : budget_s,
                                                  &d->long_prefill);
    if (ok && want_more) {
        run_more(&b, max_tokens, ctx, budget_s, t0, &d->skipped);
        ok = !b.failed;
    }
    d->steps_s = pt_now() - t0;
    pt_engine_free(e);
    bool oom = !b.tokens || !b.logits;
    free(b.tokens);
    free(b.logits);
    d->n_points = b.n;
    memcpy(d->pts, b.pts, b.n * sizeof(b.pts[0]));
    if (!ok) {
        snprintf(d->why, sizeof(d->why), "a timed step failed: %s", oom ? "out of memory" : b.err.msg);
        return;
    }
    if (pt_calib_fit(b.pts, b.n, &m->tp[tp], &d->mean_rel_err, &err) != PT_OK) {
        m->tp[tp] = (pt_cost_tp){0};
        snprintf(d->why, sizeof(d->why), "%s", err.msg);
        return;
    }
    d->ok = true;
}

int pt_calibrate(pt_cost_model *m, const pt_model_file *mf, pt_fabric *f, const pt_engine_opts *eo,
                 const int *degrees, int n, const pt_calib_opts *co, pt_calib_report *rep, pt_err *err) {
    double t0 = pt_now();
    memset(rep, 0, sizeof(*rep));
    *m = (pt_cost_model){0};
    double budget = co && co->budget_s > 0 ? co->budget_s : PT_CALIB_DEFAULT_S;
    rep->budget_s = budget;
    int ok = 0;
    double build_max = 0;
    for (int i = 0; i < n && rep->n_deg < (int)(sizeof(rep->deg) / sizeof(rep->deg[0])); i++) {
        pt_calib_degree *d = &rep->deg[rep->n_deg++];
        *d = (pt_calib_degree){.degree = degrees[i]};
        calibrate_degree(m, mf, f, eo, budget, d);
        ok += d->ok;
        if (d->ok && d->degree > 1 && d->build_s > build_max) build_max = d->build_s;
    }
    m->xform_byte_s = measure_copy(&rep->copy_bytes_per_s);
    /* Building a transformation's targets is building an instance of their
     * degree (weights copied from the sources): what it took here. The
     * commit's fixed part is bench_transform's (bench/README.md: 0.7-1.1 ms
     * for SmolLM2, 3.4-4.7 ms for llama3-8b on two CPU devices). */
    m->xform_fixed_s = build_max > 0 ? build_max : 0.05;
    m->pause_fixed_s = 0.002;
    /* Provisional memory: every modelled degree holds pages (the server's
     * instances do not exist yet; pt_calibrate_memory sets the real ones). */
    m->page_size = eo->page_size ? eo->page_size : 16;
    m->n_kv_heads = mf->config.n_kv_heads;
    m->head_page_bytes = 1;
    m->device_bytes = 1024;
    rep->total_s = pt_now() - t0;
    if (ok == 0) {
        const char *why = rep->n_deg ? rep->deg[0].why : "no TP degree to calibrate";
        return pt_err_set(err, PT_ERR_INVALID, "scheduler cost model: no TP degree could be calibrated (TP %d: %s)",
                          rep->n_deg ? rep->deg[0].degree : 0, why);
    }
    return PT_OK;
}

void pt_calibrate_memory(pt_cost_model *m, pt_engine *const *inst, int n_inst) {
    uint64_t best_pages = UINT64_MAX, best_other = 0, best_kv = 0;
    for (int i = 0; i < n_inst; i++) {
        for (int r = 0; r < pt_engine_tp(inst[i]); r++) {
            uint64_t total, free_pages;
            pt_engine_kv_pages(inst[i], r, &total, &free_pages);
            if (total == 0 || total >= best_pages) continue;
            pt_device *d = pt_engine_device(inst[i], r);
            best_pages = total;
            best_kv = pt_device_used(d, PT_MEM_KV);
            best_other = pt_device_used(d, PT_MEM_WEIGHTS) + pt_device_used(d, PT_MEM_SCRATCH);
        }
    }
    if (n_inst == 0 || best_pages == UINT64_MAX) return;
    const pt_engine_opts *o = pt_engine_get_opts(inst[0]);
    m->page_size = o->page_size;
    m->n_kv_heads = pt_engine_config(inst[0])->n_kv_heads;
    m->max_ctx = o->max_ctx;
    m->head_page_bytes = best_kv / best_pages ? best_kv / best_pages : 1;
    m->weight_bytes = 0;
    m->reserve_bytes = best_other;
    m->device_bytes = best_other + best_pages * m->head_page_bytes;
}

/* The model's time for a point, and its error relative to the point. */
static double model_s(const pt_cost_tp *c, const pt_calib_point *p) {
    pt_cost_model m = {0};
    m.tp[1] = *c;
    pt_step_shape sh = {.tokens = p->tokens, .pairs = p->pairs, .kv_tokens = p->kv_tokens, .n_seqs = p->n_seqs};
    return pt_cost_step(&m, 1, &sh);
}

void pt_calibrate_log(const pt_calib_report *rep, const pt_cost_model *m) {
    /* Every shape on its own line when a longer calibration was asked for
     * (its point is to be read); at debug level otherwise. */
    pt_log_level shapes = rep->budget_s > PT_CALIB_DEFAULT_S ? PT_LOG_INFO : PT_LOG_DEBUG;
    for (int i = 0; i < rep->n_deg; i++) {
        const pt_calib_degree *d = &rep->deg[i];
        if (!d->ok) {
            pt_log(PT_LOG_INFO, "cost model: TP %d not modelled (the scheduler will not form it): %s", d->degree,
                   d->why);
            continue;
        }
        const pt_cost_tp *c = &m->tp[d->degree];
        double max_err = 0;
        for (size_t k = 0; k < d->n_points; k++) {
            const pt_calib_point *p = &d->pts[k];
            double pred = model_s(c, p), rel = (pred - p->seconds) / p->seconds;
            if (fabs(rel) > fabs(max_err)) max_err = rel;
            pt_log(shapes,
                   "cost model: TP %d %-34s %5llu tokens %8llu pairs: %9.2f ms (fastest %9.2f), model %9.2f ms "
                   "(%+.1f%%)",
                   d->degree, p->what, (unsigned long long)p->tokens, (unsigned long long)p->pairs, p->seconds * 1e3,
                   p->fastest_s * 1e3, pred * 1e3, rel * 100);
        }
        char skipped[64] = "", form[240];
        if (d->skipped) snprintf(skipped, sizeof(skipped), ", %zu more left out for the budget", d->skipped);
        if (c->mem_s > 0 || c->mem_kv_s > 0 || c->flop_token_s > 0)
            snprintf(form, sizeof(form),
                     "%.2f ms + %.3f ms/token + %.3f ms/sequence + max(%.2f ms + %.2f us/cached token, %.3f ms/token + "
                     "%.2f ns/pair)",
                     c->fixed_s * 1e3, c->token_s * 1e3, c->seq_s * 1e3, c->mem_s * 1e3, c->mem_kv_s * 1e6,
                     c->flop_token_s * 1e3, c->flop_pair_s * 1e9);
        else
            snprintf(form, sizeof(form), "%.2f ms + %.3f ms/token + %.3f ms/sequence + %.2f ns/pair", c->fixed_s * 1e3,
                     c->token_s * 1e3, c->seq_s * 1e3, c->flop_pair_s * 1e9);
        pt_log(PT_LOG_INFO,
               "cost model: TP %d calibrated from %zu step shapes (prefill 16%s%.0u tokens, decode 1 and 4 sequences%s%s, "
               "each the median of 1-3 runs) in %.2f s: step = %s, mean error %.1f%%, largest %+.1f%%; an instance "
               "built in %.2f s",
               d->degree, d->n_points, d->long_prefill ? " and " : "", d->long_prefill,
               d->n_points > 7 ? ", the longer set" : "", skipped, d->build_s + d->steps_s, form,
               d->mean_rel_err * 100, max_err * 100, d->build_s);
    }
    pt_log(PT_LOG_INFO, "cost model: copy %.2f GB/s, transformation fixed %.0f ms, pause fixed %.1f ms; calibrated in %.2f s",
           rep->copy_bytes_per_s / 1e9, m->xform_fixed_s * 1e3, m->pause_fixed_s * 1e3, rep->total_s);
}
