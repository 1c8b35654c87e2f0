/* The cost model from timed steps on the live server (calibrate.h). */
#include "server/calibrate.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the fit (pure) ---- */

#define N_COEF 3 /* fixed_s, token_s, flop_pair_s */

/* Least squares over the coefficients marked free (the others 0): rows
 * a_i = (1, tokens_i, pairs_i) / y_i against 1, columns scaled to unit
 * maximum so that the normal equations stay well conditioned. */
static bool solve_free(const pt_calib_point *p, size_t n, const bool *free_c, double *x) {
    double scale[N_COEF] = {1, 0, 0};
    for (size_t i = 0; i < n; i++) {
        if ((double)p[i].tokens > scale[1]) scale[1] = (double)p[i].tokens;
        if ((double)p[i].pairs > scale[2]) scale[2] = (double)p[i].pairs;
    }
    int idx[N_COEF], k = 0;
    for (int c = 0; c < N_COEF; c++) {
        x[c] = 0;
        if (scale[c] == 0) scale[c] = 1;
        if (free_c[c]) idx[k++] = c;
    }
    if (k == 0) return true;
    double ata[N_COEF][N_COEF + 1] = {{0}};
    for (size_t i = 0; i < n; i++) {
        double row[N_COEF] = {1.0, (double)p[i].tokens, (double)p[i].pairs};
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

int pt_calib_fit(const pt_calib_point *p, size_t n, pt_cost_tp *out, double *mean_rel_err, pt_err *err) {
    if (n < N_COEF) return pt_err_set(err, PT_ERR_INVALID, "calibration: %zu timed steps, at least 3 needed", n);
    for (size_t i = 0; i < n; i++)
        if (!(p[i].seconds > 0) || !isfinite(p[i].seconds))
            return pt_err_set(err, PT_ERR_INVALID, "calibration: step %zu took %g s", i, p[i].seconds);
    /* Active set: a coefficient that comes out negative is pinned to 0 and
     * the others refitted (a fixed cost below the timer's resolution, a
     * pair cost hidden by the token cost at short contexts). */
    bool free_c[N_COEF] = {true, true, true};
    double x[N_COEF];
    for (int round = 0; round <= N_COEF; round++) {
        if (!solve_free(p, n, free_c, x))
            return pt_err_set(err, PT_ERR_INVALID, "calibration: the timed steps do not determine the model");
        int worst = -1;
        for (int c = 0; c < N_COEF; c++)
            if (x[c] < 0 && (worst < 0 || x[c] < x[worst])) worst = c;
        if (worst < 0) break;
        free_c[worst] = false;
    }
    for (int c = 0; c < N_COEF; c++)
        if (x[c] < 0) x[c] = 0;
    *out = (pt_cost_tp){.valid = true, .fixed_s = x[0], .token_s = x[1], .flop_pair_s = x[2]};
    double sum = 0;
    for (size_t i = 0; i < n; i++) {
        double pred = x[0] + x[1] * (double)p[i].tokens + x[2] * (double)p[i].pairs;
        sum += fabs(pred - p[i].seconds) / p[i].seconds;
    }
    if (mean_rel_err) *mean_rel_err = sum / (double)n;
    return PT_OK;
}

/* ---- timed steps ---- */

typedef struct {
    pt_engine *e;
    int32_t *tokens;          /* (cap) token ids fed to every sequence */
    uint32_t cap, vocab;
    pt_calib_point pts[32];
    size_t n;
    pt_err err;
    bool failed;
} bench;

static uint64_t pairs_of(uint64_t ctx, uint64_t n) { return n * ctx + n * (n + 1) / 2; }

/* One step of `n` entries (sequences seqs, each computing lens[k] tokens);
 * its seconds, or a negative number when it failed (b->err says why). */
static double step(bench *b, const int *seqs, const uint32_t *lens, int n, float *logits, pt_step_shape *shape) {
    if (b->failed) return -1;
    pt_batch_entry en[8];
    *shape = (pt_step_shape){0};
    for (int k = 0; k < n; k++) {
        uint32_t ctx = pt_engine_seq_len(b->e, seqs[k]);
        en[k] = (pt_batch_entry){seqs[k], b->tokens + (ctx % 64), lens[k], logits + (size_t)k * b->vocab, false};
        shape->tokens += lens[k];
        shape->pairs += pairs_of(ctx, lens[k]);
    }
    double t0 = pt_now();
    if (pt_engine_step(b->e, en, (size_t)n, &b->err) != PT_OK) {
        b->failed = true;
        return -1;
    }
    return pt_now() - t0;
}

/* One point: the fastest of `reps` runs of the same step, on the sequence
 * sets sets[0..reps) in turn (a step on a busy machine is only ever slowed
 * down, so the minimum is the step's own time). The first run's shape. */
static void point(bench *b, const int (*sets)[4], int reps, const uint32_t *lens, int n, float *logits) {
    double best = INFINITY;
    pt_step_shape first = {0}, sh;
    for (int r = 0; r < reps && !b->failed; r++) {
        double t = step(b, sets[r], lens, n, logits, &sh);
        if (r == 0) first = sh;
        if (t >= 0 && t < best) best = t;
    }
    if (!b->failed && b->n < sizeof(b->pts) / sizeof(b->pts[0]))
        b->pts[b->n++] = (pt_calib_point){first.tokens, first.pairs, best};
}

/* The timed steps of one degree (calibrate.h); false with b->err on failure.
 * First the four shapes the fit needs (a short prefill, decodes of one and
 * of four sequences, a chunk after a context); then, while the budget
 * lasts, a long prefill, a decode after it and a chunk after that, which
 * pin the per-pair cost at longer contexts. A slow build (the sanitizers)
 * stops after the first four. Sequences: a and a2 a short prompt, l and l2
 * a long one, c and d four tokens, w the warm-up. */
static bool run_steps(bench *b, uint32_t max_tokens, double budget_s, uint32_t *long_len) {
    float *logits = malloc((size_t)4 * b->vocab * sizeof(float));
    if (!logits) {
        pt_err_set(&b->err, PT_ERR_NOMEM, "calibration: out of memory");
        return false;
    }
    enum { A, A2, L, L2, C, D, W, N_SEQ };
    int s[N_SEQ];
    for (int k = 0; k < N_SEQ; k++) s[k] = pt_engine_seq_new(b->e);
    if (s[N_SEQ - 1] < 0) {
        free(logits);
        pt_err_set(&b->err, PT_ERR_NOMEM, "calibration: no free sequence slots");
        return false;
    }
    double t0 = pt_now();
    uint32_t l8 = 8, l16 = 16, l4 = 4, l32 = 32, one[4] = {1, 1, 1, 1};
    pt_step_shape sh;
    step(b, &s[W], &l8, 1, logits, &sh); /* warm-up: first touches of buffers and pages */
    int short_p[2][4] = {{s[A]}, {s[A2]}};
    point(b, short_p, 1, &l16, 1, logits);
    /* A fast step is timed again (the fastest counts); a slow build's is not. */
    bool fast = !b->failed && b->pts[0].seconds < budget_s / 16;
    double again = fast ? step(b, &s[A2], &l16, 1, logits, &sh) : -1;
    if (again >= 0 && again < b->pts[0].seconds) b->pts[0].seconds = again;
    int reps = fast ? 3 : 2;
    step(b, &s[C], &l4, 1, logits, &sh);
    step(b, &s[D], &l4, 1, logits, &sh);
    int a3[3][4] = {{s[A]}, {s[A]}, {s[A]}};
    int four[3][4] = {{s[A], s[W], s[C], s[D]}, {s[A], s[W], s[C], s[D]}, {s[A], s[W], s[C], s[D]}};
    point(b, a3, reps, one, 1, logits);   /* decode, short context */
    point(b, four, reps, one, 4, logits); /* decode, four sequences */
    point(b, short_p, 1, &l16, 1, logits); /* a chunk after a few tokens */
    *long_len = 0;
    /* The long prefill: both runs in about half the budget at the speed
     * seen, and only when the rest of the budget allows. */
    double per_token = b->pts[0].seconds / 16.0;
    uint32_t len = 32;
    while (len * 2 <= 512 && len * 2 + 48 <= max_tokens && 2 * (len * 2) * per_token <= budget_s / 2) len *= 2;
    if (!b->failed && len + 48 <= max_tokens && pt_now() - t0 + 2.5 * len * per_token <= budget_s) {
        *long_len = len;
        int long_p[2][4] = {{s[L]}, {s[L2]}}, l3[3][4] = {{s[L]}, {s[L]}, {s[L]}};
        point(b, long_p, 2, &len, 1, logits);
        point(b, l3, 3, one, 1, logits);      /* decode, long context */
        point(b, long_p, 2, &l32, 1, logits); /* a prefill chunk after a long context */
    }
    for (int k = 0; k < N_SEQ; k++) pt_engine_seq_free(b->e, s[k]);
    free(logits);
    return !b->failed;
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

static void calibrate_degree(pt_cost_model *m, const pt_model_file *mf, pt_fabric *f, const pt_engine_opts *eo,
                             double budget_s, pt_calib_degree *d) {
    int tp = d->degree;
    if (tp < 1 || tp > PT_COST_MAX_TP || tp > pt_fabric_size(f)) {
        snprintf(d->why, sizeof(d->why), "needs %d devices, the server has %d", tp, pt_fabric_size(f));
        return;
    }
    /* Room for the sequences of run_steps: two of the longest prefill and
     * its chunk, five short ones. */
    pt_engine_opts o = *eo;
    o.max_seqs = 8;
    uint32_t max_tokens = o.max_batch_tokens ? o.max_batch_tokens : 512;
    uint32_t ps = o.page_size ? o.page_size : 16;
    o.kv_pages = (uint64_t)(2 * (512 + 64) / ps + 16) * (mf->config.n_kv_heads ? mf->config.n_kv_heads : 1);
    o.kv_bytes = 0;
    o.select_budget = 0;
    pt_engine *e = NULL;
    pt_err err = {{0}};
    double t0 = pt_now();
    if (pt_engine_create_on(&e, mf, f, 0, tp, &o, &err) != PT_OK) {
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
    for (uint32_t i = 0; b.tokens && i < b.cap; i++) b.tokens[i] = (int32_t)((i * 7919u + 13u) % b.vocab);
    t0 = pt_now();
    bool ok = b.tokens && run_steps(&b, max_tokens, budget_s, &d->long_prefill);
    d->steps_s = pt_now() - t0;
    pt_engine_free(e);
    free(b.tokens);
    d->n_points = b.n;
    if (!ok) {
        snprintf(d->why, sizeof(d->why), "a timed step failed: %s", b.tokens ? b.err.msg : "out of memory");
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
    double budget = co && co->budget_s > 0 ? co->budget_s : 1.0;
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

uint64_t pt_calib_model_pages(const pt_cost_model *m, uint64_t pages, uint32_t n_kv_heads) {
    if (n_kv_heads == 0) return pages;
    uint64_t best = pages;
    for (uint32_t d = 1; d <= PT_COST_MAX_TP && d <= n_kv_heads; d++) {
        if (!m->tp[d].valid) continue;
        uint64_t most = (n_kv_heads + d - 1) / d; /* heads on the fullest rank */
        uint64_t per_device = (uint64_t)n_kv_heads * (pages / most) / d;
        if (per_device < best) best = per_device;
    }
    return best;
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
    m->device_bytes = best_other + pt_calib_model_pages(m, best_pages, m->n_kv_heads) * m->head_page_bytes;
}

void pt_calibrate_log(const pt_calib_report *rep, const pt_cost_model *m) {
    for (int i = 0; i < rep->n_deg; i++) {
        const pt_calib_degree *d = &rep->deg[i];
        if (!d->ok) {
            pt_log(PT_LOG_INFO, "cost model: TP %d not modelled (the scheduler will not form it): %s", d->degree,
                   d->why);
            continue;
        }
        const pt_cost_tp *c = &m->tp[d->degree];
        pt_log(PT_LOG_INFO,
               "cost model: TP %d calibrated from %zu step shapes (prefill 16%s%.0u tokens, decode 1 and 4 sequences, "
               "each the fastest of 1-3 runs) in %.2f s: step = %.2f ms + %.3f ms/token + %.2f ns/pair, mean error "
               "%.1f%%; an instance built in %.2f s",
               d->degree, d->n_points, d->long_prefill ? " and " : "", d->long_prefill, d->build_s + d->steps_s, c->fixed_s * 1e3, c->token_s * 1e3,
               c->flop_pair_s * 1e9, d->mean_rel_err * 100, d->build_s);
    }
    pt_log(PT_LOG_INFO, "cost model: copy %.2f GB/s, transformation fixed %.0f ms, pause fixed %.1f ms; calibrated in %.2f s",
           rep->copy_bytes_per_s / 1e9, m->xform_fixed_s * 1e3, m->pause_fixed_s * 1e3, rep->total_s);
}
