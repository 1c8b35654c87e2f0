/* Plot: one self-contained SVG of a bench run, written by hand (no library).
 *
 * Panel 1: empirical CDFs of TTFT, TPOT and E2EL in ms on a log x axis.
 * Panel 2: output token chunks per 1-second bucket over the run, the series
 * behind "Peak output token throughput", with the mean output throughput.
 * Coordinates: (px, py) are SVG user units, y grows downwards; a panel maps
 * data to its plot rectangle [x0, x1] x [y0, y1]. */
#include "proteus/bench.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { SVG_W = 960, SVG_H = 860, CDF_MAX_POINTS = 2000 };

typedef struct {
    double x0, x1, y0, y1; /* plot rectangle in SVG units (y0 top) */
    double lo, hi;         /* data range on x (log10 of it for a log axis) */
    double ylo, yhi;       /* data range on y */
    bool logx;
} panel;

static double px(const panel *p, double v) {
    double u = p->logx ? log10(v) : v;
    double t = (u - p->lo) / (p->hi - p->lo);
    if (t < 0) t = 0;
    if (t > 1) t = 1;
    return p->x0 + t * (p->x1 - p->x0);
}

static double py(const panel *p, double v) {
    double t = (v - p->ylo) / (p->yhi - p->ylo);
    if (t < 0) t = 0;
    if (t > 1) t = 1;
    return p->y1 - t * (p->y1 - p->y0);
}

/* A round step (1, 2 or 5 times a power of ten) giving about `want` ticks. */
static double nice_step(double range, int want) {
    if (!(range > 0)) return 1;
    double raw = range / want, mag = pow(10, floor(log10(raw))), f = raw / mag;
    return (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * mag;
}

static void frame(FILE *f, const panel *p, const char *title, const char *xlabel, const char *ylabel) {
    fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" stroke=\"#333\"/>\n", p->x0,
            p->y0, p->x1 - p->x0, p->y1 - p->y0);
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"15\" font-weight=\"bold\">%s</text>\n",
            (p->x0 + p->x1) / 2, p->y0 - 10, title);
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%s</text>\n", (p->x0 + p->x1) / 2, p->y1 + 40,
            xlabel);
    fprintf(f, "<text transform=\"translate(%.1f,%.1f) rotate(-90)\" text-anchor=\"middle\">%s</text>\n", p->x0 - 55,
            (p->y0 + p->y1) / 2, ylabel);
}

static void xtick(FILE *f, const panel *p, double v, const char *label, bool grid) {
    double x = px(p, v);
    if (grid)
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", x, p->y0, x, p->y1);
    fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#333\"/>\n", x, p->y1, x,
            p->y1 + (label ? 6 : 3));
    if (label) fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%s</text>\n", x, p->y1 + 20, label);
}

static void ytick(FILE *f, const panel *p, double v, const char *label) {
    double y = py(p, v);
    fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", p->x0, y, p->x1, y);
    fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#333\"/>\n", p->x0 - 6, y, p->x0, y);
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%s</text>\n", p->x0 - 9, y + 4, label);
}

typedef struct {
    const char *name;
    const char *color;
    pt_bench_metric metric;
    double *ms; /* (n) sorted samples in ms */
    size_t n;
} cdf_series;

/* A step CDF: at the i-th smallest value the curve rises from i/n to (i+1)/n.
 * Long series are drawn through CDF_MAX_POINTS evenly spaced ranks instead,
 * which keeps the file small and is indistinguishable at this size. */
static void cdf_path(FILE *f, const panel *p, const cdf_series *s) {
    if (s->n == 0) return;
    fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\" points=\"", s->color);
    size_t n = s->n;
    if (n <= CDF_MAX_POINTS) {
        fprintf(f, "%.1f,%.1f", px(p, s->ms[0]), py(p, 0));
        for (size_t i = 0; i < n; i++)
            fprintf(f, " %.1f,%.1f %.1f,%.1f", px(p, s->ms[i]), py(p, (double)i / n), px(p, s->ms[i]),
                    py(p, (double)(i + 1) / n));
    } else {
        for (size_t k = 0; k < CDF_MAX_POINTS; k++) {
            size_t i = (size_t)((double)k * (double)(n - 1) / (CDF_MAX_POINTS - 1));
            fprintf(f, "%s%.1f,%.1f", k ? " " : "", px(p, s->ms[i]), py(p, (double)(i + 1) / n));
        }
    }
    fputs("\"/>\n", f);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void panel_cdf(FILE *f, const pt_bench_record *r, size_t n) {
    cdf_series s[3] = {
        {"TTFT", "#1f77b4", PT_BENCH_TTFT, NULL, 0},
        {"TPOT", "#ff7f0e", PT_BENCH_TPOT, NULL, 0},
        {"E2EL", "#2ca02c", PT_BENCH_E2EL, NULL, 0},
    };
    double lo = INFINITY, hi = -INFINITY;
    for (int k = 0; k < 3; k++) {
        s[k].n = pt_bench_samples(r, n, s[k].metric, NULL);
        s[k].ms = pt_xmalloc(s[k].n * sizeof(double));
        pt_bench_samples(r, n, s[k].metric, s[k].ms);
        for (size_t i = 0; i < s[k].n; i++) {
            s[k].ms[i] *= 1000.0;
            /* A log axis has no place for 0; such samples sit on its left edge. */
            if (s[k].ms[i] > 0 && s[k].ms[i] < lo) lo = s[k].ms[i];
            if (s[k].ms[i] > hi) hi = s[k].ms[i];
        }
        qsort(s[k].ms, s[k].n, sizeof(double), cmp_double);
    }
    panel p = {80, SVG_W - 40, 110, 430, 0, 1, 0, 1, true};
    if (!(lo <= hi)) lo = 1, hi = 1000; /* no positive sample: an empty axis */
    /* The data's range plus 5% each side (at least one decade), in log10. */
    double a = log10(lo), b = log10(hi), pad = (b - a) * 0.05;
    if (b - a < 1) pad = (1 - (b - a)) / 2;
    p.lo = a - pad;
    p.hi = b + pad;
    frame(f, &p, "Latency CDFs (completed requests)", "latency (ms, log scale)", "fraction of requests \u2264 x");
    /* Ticks at 1..9 times each power of ten; 1s are labelled with a grid line,
     * 2s and 5s too when the axis spans few decades. */
    bool label_25 = p.hi - p.lo <= 2.5;
    for (int d = (int)floor(p.lo); d <= (int)ceil(p.hi); d++) {
        for (int m = 1; m <= 9; m++) {
            double v = m * pow(10, d), u = log10(v);
            if (u < p.lo || u > p.hi) continue;
            bool lab = m == 1 || (label_25 && (m == 2 || m == 5));
            char label[32];
            snprintf(label, sizeof(label), "%g", v);
            xtick(f, &p, v, lab ? label : NULL, lab);
        }
    }
    for (int k = 0; k <= 5; k++) {
        char label[16];
        snprintf(label, sizeof(label), "%.1f", k / 5.0);
        ytick(f, &p, k / 5.0, label);
    }
    for (int k = 0; k < 3; k++) cdf_path(f, &p, &s[k]);
    /* Legend in the lower right, where a CDF is empty. */
    double lx = p.x1 - 170, ly = p.y1 - 95;
    fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"160\" height=\"85\" fill=\"white\" stroke=\"#999\"/>\n", lx, ly);
    for (int k = 0; k < 3; k++) {
        double y = ly + 20 + 24 * k;
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" stroke-width=\"3\"/>\n",
                lx + 10, y, lx + 40, y, s[k].color);
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\">%s (n=%zu)</text>\n", lx + 48, y + 4, s[k].name, s[k].n);
    }
    if (s[0].n + s[1].n + s[2].n == 0)
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" fill=\"#999\">no completed requests</text>\n",
                (p.x0 + p.x1) / 2, (p.y0 + p.y1) / 2);
    for (int k = 0; k < 3; k++) free(s[k].ms);
}

static int panel_throughput(FILE *f, const pt_bench_record *r, size_t n, const pt_bench_report *rep, pt_err *err) {
    double origin, *c;
    size_t nb;
    int rc = pt_bench_output_per_second(r, n, &origin, &c, &nb, err);
    if (rc != PT_OK) return rc;
    double peak = 0;
    for (size_t k = 0; k < nb; k++)
        if (c[k] > peak) peak = c[k];
    double ymax = peak > rep->output_throughput ? peak : rep->output_throughput;
    panel p = {80, SVG_W - 40, 520, SVG_H - 70, 0, nb ? (double)nb : 1, 0, 1, false};
    double ystep = nice_step(ymax > 0 ? ymax : 1, 5);
    p.yhi = ceil((ymax > 0 ? ymax * 1.05 : 1) / ystep) * ystep;
    char title[96];
    snprintf(title, sizeof(title), "Output throughput (1-s buckets from the first send at t=%.2f s)", origin);
    frame(f, &p, title, "time since first send (s)", "output tokens/s (token chunks)");
    double xstep = nice_step(p.hi, 8);
    for (double v = 0; v <= p.hi + 1e-9; v += xstep) {
        char label[32];
        snprintf(label, sizeof(label), "%g", v);
        xtick(f, &p, v, label, false);
    }
    for (double v = 0; v <= p.yhi + 1e-9; v += ystep) {
        char label[32];
        snprintf(label, sizeof(label), "%g", v);
        ytick(f, &p, v, label);
    }
    if (nb) {
        /* Each bucket is a flat step over its second, filled down to 0. */
        fprintf(f, "<path fill=\"#1f77b4\" fill-opacity=\"0.25\" stroke=\"#1f77b4\" stroke-width=\"1.5\" d=\"M%.1f,%.1f",
                px(&p, 0), py(&p, 0));
        for (size_t k = 0; k < nb; k++)
            fprintf(f, " L%.1f,%.1f L%.1f,%.1f", px(&p, (double)k), py(&p, c[k]), px(&p, (double)k + 1), py(&p, c[k]));
        fprintf(f, " L%.1f,%.1f Z\"/>\n", px(&p, (double)nb), py(&p, 0));
        double ym = py(&p, rep->output_throughput);
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#d62728\" stroke-dasharray=\"6,4\"/>\n",
                p.x0, ym, p.x1, ym);
        /* A white halo keeps the label readable over the series. */
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\" fill=\"#d62728\" stroke=\"white\" "
                   "stroke-width=\"4\" paint-order=\"stroke\">mean %.1f tok/s, peak %.0f</text>\n",
                p.x1 - 6, ym - 6, rep->output_throughput, peak);
    } else {
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" fill=\"#999\">no completed requests</text>\n",
                (p.x0 + p.x1) / 2, (p.y0 + p.y1) / 2);
    }
    free(c);
    return PT_OK;
}

int pt_bench_write_svg(const char *path, const pt_bench_record *r, size_t n, const pt_bench_report *rep, pt_err *err) {
    if (!path || (n && !r)) return pt_err_set(err, PT_ERR_INVALID, "pt_bench_write_svg: NULL argument");
    pt_bench_report own;
    if (!rep) {
        pt_bench_report_compute(&own, r, n, NULL);
        rep = &own;
    }
    FILE *f = fopen(path, "w");
    if (!f) return pt_err_set(err, PT_ERR_IO, "%s: %s", path, strerror(errno));
    fprintf(f,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" "
            "font-family=\"sans-serif\" font-size=\"12\">\n",
            SVG_W, SVG_H, SVG_W, SVG_H);
    fprintf(f, "<rect width=\"%d\" height=\"%d\" fill=\"white\"/>\n", SVG_W, SVG_H);
    fprintf(f, "<text x=\"%d\" y=\"32\" text-anchor=\"middle\" font-size=\"20\" font-weight=\"bold\">"
               "Proteus bench: %zu completed, %zu failed, %.2f s</text>\n",
            SVG_W / 2, rep->completed, rep->failed, rep->duration_s);
    fprintf(f, "<text x=\"%d\" y=\"56\" text-anchor=\"middle\" font-size=\"13\" fill=\"#444\">"
               "TTFT p50 %.1f / p99 %.1f ms, TPOT p50 %.2f / p99 %.2f ms, E2EL p50 %.0f / p99 %.0f ms, "
               "%.1f req/s, %.1f output tok/s</text>\n",
            SVG_W / 2, rep->ttft_ms.median, rep->ttft_ms.p99, rep->tpot_ms.median, rep->tpot_ms.p99,
            rep->e2el_ms.median, rep->e2el_ms.p99, rep->request_throughput, rep->output_throughput);
    panel_cdf(f, r, n);
    int rc = panel_throughput(f, r, n, rep, err);
    fputs("</svg>\n", f);
    bool bad = ferror(f) != 0;
    if (fclose(f) != 0) bad = true;
    if (rc != PT_OK) return rc;
    if (bad) return pt_err_set(err, PT_ERR_IO, "%s: write failed: %s", path, strerror(errno));
    return PT_OK;
}
