/* `proteus simulate --plot`: one self-contained SVG of a simulated run.
 *
 * Panel 1: the layout over time, instances as bars over the devices they
 *          span (colour by TP degree, hatched while transforming).
 * Panel 2: waiting requests (held + queued on every instance) and running
 *          ones over time.
 * Panel 3: output tokens per second (pt_bench_output_per_second, the series
 *          behind `proteus bench`'s peak output throughput).
 * Time is seconds from the first measured request's schedule; long series
 * are drawn through at most MAX_POINTS buckets (the maximum of each). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sim/sim.h"

enum { SVG_W = 1000, SVG_H = 980, MAX_POINTS = 1500 };

typedef struct {
    double x0, x1, y0, y1; /* plot rectangle (y0 top) */
    double t0, t1;         /* time range */
    double ylo, yhi;
} panel;

static double px(const panel *p, double t) {
    double u = (t - p->t0) / (p->t1 - p->t0);
    if (u < 0) u = 0;
    if (u > 1) u = 1;
    return p->x0 + u * (p->x1 - p->x0);
}

static double py(const panel *p, double v) {
    double u = (v - p->ylo) / (p->yhi - p->ylo);
    if (u < 0) u = 0;
    if (u > 1) u = 1;
    return p->y1 - u * (p->y1 - p->y0);
}

static double nice_step(double range, int want) {
    if (!(range > 0)) return 1;
    double raw = range / want, mag = pow(10, floor(log10(raw))), f = raw / mag;
    return (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * mag;
}

static void frame(FILE *f, const panel *p, const char *title, const char *ylabel) {
    fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" stroke=\"#333\"/>\n", p->x0,
            p->y0, p->x1 - p->x0, p->y1 - p->y0);
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"15\" font-weight=\"bold\">%s</text>\n",
            (p->x0 + p->x1) / 2, p->y0 - 10, title);
    fprintf(f, "<text transform=\"translate(%.1f,%.1f) rotate(-90)\" text-anchor=\"middle\">%s</text>\n", p->x0 - 55,
            (p->y0 + p->y1) / 2, ylabel);
    double step = nice_step(p->t1 - p->t0, 8);
    for (double t = ceil(p->t0 / step) * step; t <= p->t1 + 1e-9; t += step) {
        double x = px(p, t);
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#333\"/>\n", x, p->y1, x, p->y1 + 5);
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%g</text>\n", x, p->y1 + 19, t);
    }
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">time (s)</text>\n", (p->x0 + p->x1) / 2,
            p->y1 + 36);
}

static void yticks(FILE *f, const panel *p) {
    double step = nice_step(p->yhi - p->ylo, 5);
    for (double v = p->ylo; v <= p->yhi + 1e-9; v += step) {
        double y = py(p, v);
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", p->x0, y, p->x1, y);
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%g</text>\n", p->x0 - 8, y + 4, v);
    }
}

static const char *tp_colour(int tp) {
    switch (tp) {
    case 1: return "#4e79a7";
    case 2: return "#59a14f";
    case 4: return "#f28e2b";
    case 8: return "#e15759";
    case 16: return "#b07aa1";
    default: return "#9c755f";
    }
}

static void panel_layout(FILE *f, const pt_sim_result *r, int n_devices, const panel *p) {
    fputs("<defs><pattern id=\"hatch\" width=\"6\" height=\"6\" patternUnits=\"userSpaceOnUse\" "
          "patternTransform=\"rotate(45)\"><rect width=\"6\" height=\"6\" fill=\"#fff\" fill-opacity=\"0.0\"/>"
          "<line x1=\"0\" y1=\"0\" x2=\"0\" y2=\"6\" stroke=\"#000\" stroke-width=\"2\" stroke-opacity=\"0.45\"/>"
          "</pattern></defs>\n",
          f);
    double row = (p->y1 - p->y0) / n_devices;
    for (size_t k = 0; k < r->n_layouts; k++) {
        const pt_sim_layout *l = &r->layouts[k];
        double a = l->t, b = k + 1 < r->n_layouts ? r->layouts[k + 1].t : p->t1;
        if (b <= p->t0 || a >= p->t1 || b <= a) continue;
        double xa = px(p, a), xb = px(p, b);
        for (int i = 0, dev = 0; i < l->n_inst; dev += l->tp[i], i++) {
            double ya = p->y0 + dev * row + 1, h = l->tp[i] * row - 2;
            fprintf(f, "<rect x=\"%.2f\" y=\"%.1f\" width=\"%.2f\" height=\"%.1f\" fill=\"%s\"/>\n", xa, ya, xb - xa, h,
                    tp_colour(l->tp[i]));
            if (l->transforming[i])
                fprintf(f, "<rect x=\"%.2f\" y=\"%.1f\" width=\"%.2f\" height=\"%.1f\" fill=\"url(#hatch)\"/>\n", xa, ya,
                        xb - xa, h);
            if (xb - xa > 40 && h > 12)
                fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" fill=\"#fff\" font-size=\"11\">TP%d</text>\n", xa + 3,
                        ya + h / 2 + 4, l->tp[i]);
        }
    }
    for (int d = 0; d < n_devices; d++)
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\" font-size=\"11\">dev %d</text>\n", p->x0 - 6,
                p->y0 + (d + 0.5) * row + 4, d);
    /* legend */
    static const int DEG[] = {1, 2, 4, 8, 16};
    for (int k = 0; k < 5; k++)
        fprintf(f,
                "<rect x=\"%.1f\" y=\"%.1f\" width=\"12\" height=\"12\" fill=\"%s\"/><text x=\"%.1f\" y=\"%.1f\" "
                "font-size=\"12\">TP%d</text>\n",
                p->x0 + k * 60.0, p->y1 + 46, tp_colour(DEG[k]), p->x0 + 16 + k * 60.0, p->y1 + 56, DEG[k]);
    fprintf(f,
            "<rect x=\"%.1f\" y=\"%.1f\" width=\"12\" height=\"12\" fill=\"#999\"/><rect x=\"%.1f\" y=\"%.1f\" "
            "width=\"12\" height=\"12\" fill=\"url(#hatch)\"/><text x=\"%.1f\" y=\"%.1f\" font-size=\"12\">transforming</text>\n",
            p->x0 + 300, p->y1 + 46, p->x0 + 300, p->y1 + 46, p->x0 + 316, p->y1 + 56);
}

/* A step polyline of (t, v) samples, at most MAX_POINTS buckets (max of each). */
static void step_series(FILE *f, const panel *p, const double *t, const double *v, size_t n, const char *colour) {
    if (n == 0) return;
    fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.5\" points=\"", colour);
    double width = (p->t1 - p->t0) / MAX_POINTS;
    size_t i = 0;
    double prev = 0;
    bool first = true;
    while (i < n) {
        double b0 = p->t0 + floor((t[i] - p->t0) / width) * width, m = v[i];
        size_t j = i;
        while (j < n && t[j] < b0 + width) {
            if (v[j] > m) m = v[j];
            j++;
        }
        double last = v[j - 1];
        if (!first) fprintf(f, " %.1f,%.1f", px(p, t[i]), py(p, prev));
        fprintf(f, "%s%.1f,%.1f %.1f,%.1f", first ? "" : " ", px(p, t[i]), py(p, m), px(p, t[j - 1]), py(p, m));
        prev = j - i > 1 ? last : m;
        first = false;
        i = j;
    }
    fprintf(f, " %.1f,%.1f\"/>\n", px(p, p->t1), py(p, prev));
}

int pt_sim_write_svg(const char *path, const pt_sim_result *r, int n_devices, const char *title, pt_err *err) {
    double origin = 0, *counts = NULL;
    size_t nb = 0;
    int rc = pt_bench_output_per_second(r->recs, r->n, &origin, &counts, &nb, err);
    if (rc) return rc;
    FILE *f = fopen(path, "w");
    if (!f) {
        free(counts);
        return pt_err_set(err, PT_ERR_IO, "%s: cannot write", path);
    }
    double t1 = r->t_end > 0 ? r->t_end : 1;
    fprintf(f,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" "
            "font-family=\"sans-serif\" font-size=\"13\">\n<rect width=\"100%%\" height=\"100%%\" fill=\"#fff\"/>\n",
            SVG_W, SVG_H, SVG_W, SVG_H);
    fprintf(f, "<text x=\"%d\" y=\"24\" text-anchor=\"middle\" font-size=\"16\" font-weight=\"bold\">", SVG_W / 2);
    for (const char *c = title ? title : ""; *c; c++) {
        if (*c == '<') fputs("&lt;", f);
        else if (*c == '>') fputs("&gt;", f);
        else if (*c == '&') fputs("&amp;", f);
        else fputc(*c, f);
    }
    fputs("</text>\n", f);

    panel lay = {90, SVG_W - 30, 80, 330, 0, t1, 0, 1};
    frame(f, &lay, "Layout (instances over devices)", "device");
    panel_layout(f, r, n_devices, &lay);

    /* Waiting and running requests. */
    panel q = {90, SVG_W - 30, 430, 640, 0, t1, 0, 1};
    double *ts = malloc((r->n_queue + 1) * sizeof(double)), *wv = malloc((r->n_queue + 1) * sizeof(double)),
           *rv = malloc((r->n_queue + 1) * sizeof(double));
    if (!ts || !wv || !rv) {
        free(ts);
        free(wv);
        free(rv);
        free(counts);
        fclose(f);
        return pt_err_set(err, PT_ERR_NOMEM, "out of memory for the plot");
    }
    double qmax = 1;
    for (size_t i = 0; i < r->n_queue; i++) {
        ts[i] = r->queue[i].t;
        wv[i] = r->queue[i].waiting;
        rv[i] = r->queue[i].running;
        if (wv[i] > qmax) qmax = wv[i];
        if (rv[i] > qmax) qmax = rv[i];
    }
    q.yhi = nice_step(qmax, 5) * ceil(qmax / nice_step(qmax, 5));
    frame(f, &q, "Requests waiting (held + queued) and running", "requests");
    yticks(f, &q);
    step_series(f, &q, ts, rv, r->n_queue, "#59a14f");
    step_series(f, &q, ts, wv, r->n_queue, "#e15759");
    fprintf(f,
            "<text x=\"%.1f\" y=\"%.1f\" fill=\"#e15759\">waiting</text><text x=\"%.1f\" y=\"%.1f\" "
            "fill=\"#59a14f\">running</text>\n",
            q.x1 - 140, q.y0 - 10, q.x1 - 70, q.y0 - 10);
    free(ts);
    free(wv);
    free(rv);

    /* Output tokens per second. */
    panel o = {90, SVG_W - 30, 710, 920, 0, t1, 0, 1};
    double omax = 1;
    for (size_t k = 0; k < nb; k++)
        if (counts[k] > omax) omax = counts[k];
    o.yhi = nice_step(omax, 5) * ceil(omax / nice_step(omax, 5));
    frame(f, &o, "Output tokens per second", "tokens/s");
    yticks(f, &o);
    if (nb) {
        double *bt = malloc(nb * sizeof(double));
        if (bt) {
            for (size_t k = 0; k < nb; k++) bt[k] = origin + (double)k;
            step_series(f, &o, bt, counts, nb, "#4e79a7");
            free(bt);
        }
    }
    free(counts);
    fputs("</svg>\n", f);
    if (fclose(f) != 0) return pt_err_set(err, PT_ERR_IO, "%s: write failed", path);
    return 0;
}
