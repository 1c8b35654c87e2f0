/* The scheduler's cost model on the live server (DESIGN.md section 7: "the
 * cost model ... measured at start-up"), from timed steps.
 *
 * For each TP degree asked for, a short-lived instance is built over the
 * first devices of the fabric (before the server's own instances exist, so
 * that it fits where they will), and steps are timed on it, each shape's
 * time the median of its 2-3 runs. The default budget (about 1 s a degree)
 * times a handful: prefills of two lengths, decodes of one and four
 * sequences at short and long contexts, a prefill chunk after a long
 * context. A longer budget (scheduler.calibration_s) adds the shapes a
 * loaded server runs while it lasts: prompts of 128-512 tokens, a batch of
 * short prompts, decodes of 2 to 32 sequences, decodes and chunks at
 * contexts up to 2048 tokens, decodes beside a prompt chunk, decodes at
 * mixed long contexts.
 *
 * The fit (pt_calib_fit) minimises the squared relative error with every
 * coefficient >= 0. First the linear form
 *
 *   step = fixed_s + token_s * tokens + flop_pair_s * pairs
 *
 * which is all the short set determines. With the longer set, also the
 * roofline form of cost_model.h with its memory side,
 *
 *   step = fixed_s + token_s * tokens
 *          + max(mem_s + mem_kv_s * kv_tokens, flop_token_s * tokens + flop_pair_s * pairs)
 *
 * kept when it fits the shapes better. On a CPU it does (SmolLM2, two
 * devices: mean error 3-4.5% against 9-10% for the linear form, worst
 * shape 9-16% against 23-28%): a decode of a few sequences is bound by
 * reading the weights (mem_s) and each decoding sequence's cached keys and
 * values (mem_kv_s, about twice a prefill's cost per pair), a prompt by
 * its arithmetic (flop_token_s, flop_pair_s). A degree whose instance
 * cannot be built (its shard does not fit a device, it exceeds the model's
 * KV heads) is left invalid: the scheduler never forms it.
 *
 * The memory side comes from the server's instances once they are built
 * (pt_calibrate_memory); transformation costs from a timed copy and the
 * time the calibration instances took to build. */
#ifndef PROTEUS_SERVER_CALIBRATE_H
#define PROTEUS_SERVER_CALIBRATE_H

#include <stddef.h>
#include <stdint.h>

#include "proteus/engine.h"
#include "proteus/fabric.h"
#include "proteus/model_file.h"
#include "proteus/util.h"
#include "scheduler/cost_model.h"

/* One timed step: its shape and seconds. */
typedef struct {
    uint64_t tokens, pairs;
    double seconds;       /* the median of its runs: what the fit uses */
    uint64_t kv_tokens;   /* cached tokens read (cost_model.h) */
    uint32_t n_seqs;      /* sequences in the step */
    double fastest_s;     /* the fastest run, for the log */
    char what[48];        /* "decode 16 x ctx 16", for the log */
} pt_calib_point;

#define PT_CALIB_MAX_POINTS 40
#define PT_CALIB_ROOFLINE_MIN 12 /* points before the roofline form is tried */
#define PT_CALIB_DEFAULT_S 1.0 /* scheduler.calibration_s's default */

/* Fits fixed_s, token_s and flop_pair_s of *out (the other coefficients
 * zero, valid set) to n points, minimising the squared relative error, with
 * every coefficient >= 0. Also returns the fit's mean relative error.
 * PT_ERR_INVALID when there are fewer than 3 points or a time is not > 0. */
int pt_calib_fit(const pt_calib_point *p, size_t n, pt_cost_tp *out, double *mean_rel_err, pt_err *err);

typedef struct {
    double budget_s;      /* about how long the timed steps of one degree take (0 = PT_CALIB_DEFAULT_S);
                             above the default, the longer set of shapes (above) is timed too */
} pt_calib_opts;

/* What the calibration did, for the log. */
typedef struct {
    int degree;
    bool ok;
    char why[600];        /* !ok: why the degree is not modelled */
    size_t n_points;
    pt_calib_point pts[PT_CALIB_MAX_POINTS]; /* the timed steps */
    size_t skipped;        /* shapes of the longer set left out for the budget */
    uint32_t long_prefill; /* tokens of the longer prefill */
    double build_s, steps_s, mean_rel_err;
} pt_calib_degree;

typedef struct {
    pt_calib_degree deg[16];
    int n_deg;
    double copy_bytes_per_s;
    double total_s;
    double budget_s;      /* the budget per degree it ran with */
} pt_calib_report;

/* Calibrates *m for degrees[0..n) over fabric f (instances of degree d on
 * devices [0, d)) with the server's engine options eo (its page size, KV
 * type, step size). Fills the per-degree coefficients, xform_byte_s,
 * xform_fixed_s and pause_fixed_s; the memory fields are provisional until
 * pt_calibrate_memory. Fails only when no degree could be calibrated. */
int pt_calibrate(pt_cost_model *m, const pt_model_file *mf, pt_fabric *f, const pt_engine_opts *eo,
                 const int *degrees, int n, const pt_calib_opts *co, pt_calib_report *rep, pt_err *err);

/* The memory fields of *m from the server's instances: page size, KV heads,
 * bytes of a head page, the context limit, and what a device holds. The
 * server's KV pools keep the pages they were built with whatever the layout
 * (a transformation moves pages between them, it does not grow them), so
 * an instance of degree d holds d times a device's pages: the model says so
 * with weight_bytes 0 and a device's weights, step buffers and pages in
 * reserve_bytes and device_bytes (README "Choosing a layout and tuning the
 * scheduler"). The device with the fewest pages sets the numbers; the
 * model counts what each degree holds of them by its fullest rank
 * (pt_cost_instance_pages). */
void pt_calibrate_memory(pt_cost_model *m, pt_engine *const *inst, int n_inst);

/* One line per degree and a summary, at info level. */
void pt_calibrate_log(const pt_calib_report *rep, const pt_cost_model *m);

#endif
