/* Layout change -> transformation operations (plan.h). */
#include "xform/plan.h"

#include <stdio.h>
#include <string.h>

/* "[1,1,2]" into buf. */
static void layout_str(const int *tp, int n, char *buf, size_t cap) {
    size_t len = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < n && len < cap; i++) len += (size_t)snprintf(buf + len, cap - len, "%s%d", i ? "," : "", tp[i]);
    if (len < cap) snprintf(buf + len, cap - len, "]");
}

static bool degree_allowed(const pt_xform_plan_input *in, int d) {
    if (d == 1) return true;
    for (int i = 0; i < in->n_allowed; i++)
        if (in->allowed[i] == d) return true;
    return false;
}

/* The current layout is the server's own; a bad one is a caller's bug, but
 * it is refused rather than walked out of bounds. */
static int check_current(const pt_xform_plan_input *in, pt_err *err) {
    if (in->n_cur < 1 || in->n_cur > PT_FABRIC_MAX_DEVICES)
        return pt_err_set(err, PT_ERR_INVALID, "the current layout has %d instances", in->n_cur);
    int sum = 0;
    for (int i = 0; i < in->n_cur; i++) {
        if (in->cur[i] < 1 || in->cur[i] > in->n_devices)
            return pt_err_set(err, PT_ERR_INVALID, "the current layout's instance %d has TP %d", i, in->cur[i]);
        sum += in->cur[i];
    }
    if (sum != in->n_devices)
        return pt_err_set(err, PT_ERR_INVALID, "the current layout covers %d devices, not %d", sum, in->n_devices);
    return PT_OK;
}

/* Every refusal names the entry (layout[i]) and the numbers. */
static int check_wanted(const pt_xform_plan_input *in, pt_err *err) {
    char allowed[128];
    int n_dev = in->n_devices;
    if (in->n_want < 1) return pt_err_set(err, PT_ERR_INVALID, "the layout is empty: give the TP degree of each instance");
    if (in->n_want > n_dev)
        return pt_err_set(err, PT_ERR_INVALID, "the layout has %d instances but the server has %d device%s", in->n_want,
                          n_dev, n_dev == 1 ? "" : "s");
    int sum = 0;
    for (int i = 0; i < in->n_want; i++) {
        int d = in->want[i];
        if (d < 1) return pt_err_set(err, PT_ERR_INVALID, "layout[%d] = %d is not a TP degree (1 or more)", i, d);
        if (d > n_dev)
            return pt_err_set(err, PT_ERR_INVALID, "layout[%d] = %d is more than the server's %d device%s", i, d, n_dev,
                              n_dev == 1 ? "" : "s");
        sum += d;
    }
    if (sum != n_dev)
        return pt_err_set(err, PT_ERR_INVALID, "the layout covers %d device%s but the server has %d: the degrees must add "
                          "up to the device count", sum, sum == 1 ? "" : "s", n_dev);
    int first = 0;
    for (int i = 0; i < in->n_want; first += in->want[i], i++) {
        int d = in->want[i];
        if (!degree_allowed(in, d)) {
            size_t len = (size_t)snprintf(allowed, sizeof(allowed), "1");
            for (int k = 0; k < in->n_allowed && len < sizeof(allowed); k++)
                if (in->allowed[k] != 1) len += (size_t)snprintf(allowed + len, sizeof(allowed) - len, ",%d", in->allowed[k]);
            return pt_err_set(err, PT_ERR_INVALID, "layout[%d] = %d: TP %d is not allowed (engine.allowed_tp: [%s])", i, d,
                              d, allowed);
        }
        if (in->max_tp > 0 && d > in->max_tp)
            return pt_err_set(err, PT_ERR_INVALID, "layout[%d] = %d: TP %d exceeds the model's %d KV heads", i, d, d,
                              in->max_tp);
        if (first % d)
            return pt_err_set(err, PT_ERR_INVALID, "layout[%d] = %d would start at device %d, which is not a multiple "
                              "of %d", i, d, first, d);
    }
    if (in->n_want == in->n_cur && !memcmp(in->want, in->cur, (size_t)in->n_cur * sizeof(int))) {
        layout_str(in->cur, in->n_cur, allowed, sizeof(allowed));
        return pt_err_set(err, PT_ERR_INVALID, "the layout is already %s: nothing to change", allowed);
    }
    return PT_OK;
}

static pt_xform_kind kind_of(int n_src, int n_dst) {
    if (n_dst == 1) return PT_XFORM_MERGE;
    if (n_src == 1) return PT_XFORM_SPLIT;
    return PT_XFORM_RESHAPE;
}

/* The region from device `first` whose sources start at cur[si] and
 * targets at want[sj]: both sides grow an instance at a time, the shorter
 * first, until they end on the same device. Returns its device count and
 * how many instances each side took. */
static int region(const pt_xform_plan_input *in, int si, int sj, int *n_src, int *n_dst) {
    int i = si, j = sj;
    int end_cur = in->cur[i++], end_want = in->want[j++];
    while (end_cur != end_want) {
        if (end_cur < end_want) end_cur += in->cur[i++];
        else end_want += in->want[j++];
    }
    *n_src = i - si;
    *n_dst = j - sj;
    return end_cur;
}

int pt_xform_plan_make(pt_xform_plan *plan, const pt_xform_plan_input *in, pt_err *err) {
    memset(plan, 0, sizeof(*plan));
    int rc = check_current(in, err);
    if (!rc) rc = check_wanted(in, err);
    if (rc) return rc;
    int first = 0, si = 0, sj = 0;
    while (si < in->n_cur) {
        int n_src, n_dst;
        int n = region(in, si, sj, &n_src, &n_dst);
        /* One instance on each side of the same devices: the same instance. */
        if (n_src > 1 || n_dst > 1) {
            pt_xform_op *op = &plan->ops[plan->n_ops++];
            *op = (pt_xform_op){.kind = kind_of(n_src, n_dst), .first_device = first, .n_devices = n,
                                .src_first = si, .n_src = n_src, .n_dst = n_dst};
            memcpy(op->src_tp, in->cur + si, (size_t)n_src * sizeof(int));
            for (int k = 0, dev = first; k < n_dst; dev += in->want[sj + k], k++)
                op->dst[k] = (pt_xform_group){dev, in->want[sj + k]};
        }
        first += n;
        si += n_src;
        sj += n_dst;
    }
    return PT_OK;
}

const char *pt_xform_kind_name(pt_xform_kind k) {
    switch (k) {
    case PT_XFORM_MERGE: return "merge";
    case PT_XFORM_SPLIT: return "split";
    case PT_XFORM_RESHAPE: return "reshape";
    }
    return "?";
}

void pt_xform_op_describe(const pt_xform_op *op, char *buf, size_t n) {
    if (n == 0) return;
    char from[256], to[256];
    int to_tp[PT_FABRIC_MAX_DEVICES];
    for (int k = 0; k < op->n_dst; k++) to_tp[k] = op->dst[k].tp;
    layout_str(op->src_tp, op->n_src, from, sizeof(from));
    layout_str(to_tp, op->n_dst, to, sizeof(to));
    snprintf(buf, n, "%s %s -> %s on devices %d-%d", pt_xform_kind_name(op->kind), from, to, op->first_device,
             op->first_device + op->n_devices - 1);
}

void pt_xform_plan_describe(const pt_xform_plan *p, char *buf, size_t n) {
    if (n == 0) return;
    buf[0] = 0;
    size_t len = 0;
    for (int i = 0; i < p->n_ops && len < n; i++) {
        if (i) len += (size_t)snprintf(buf + len, n - len, "; ");
        if (len >= n) break;
        pt_xform_op_describe(&p->ops[i], buf + len, n - len);
        len += strlen(buf + len);
    }
}
