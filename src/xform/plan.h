/* What a layout change does (DESIGN.md section 6, "the scheduler decides
 * and publishes a plan"): from the layout the server runs and the one an
 * operator (or, later, the scheduler) asks for, the transformations that
 * take one to the other. A pure function of small integers: no devices,
 * engines or threads, so that every refusal and every split of a layout
 * into operations is tested from hand-made layouts.
 *
 * A layout is the TP degree of each instance in device order: [1, 1, 2] on
 * four devices is TP1 on device 0, TP1 on device 1, TP2 on devices 2-3.
 * Two layouts cut the devices at their instances' boundaries; where both
 * cut, the devices on either side can change independently. Between two
 * consecutive common cuts lies a region: the same instance in both layouts
 * (untouched: its requests never notice), or one operation that turns the
 * current instances of the region into the requested ones. [1,1,2] ->
 * [2,1,1] is two operations: merge [1,1] -> [2] on devices 0-1 and split
 * [2] -> [1,1] on devices 2-3. */
#ifndef PROTEUS_XFORM_PLAN_H
#define PROTEUS_XFORM_PLAN_H

#include <stddef.h>

#include "proteus/fabric.h"
#include "proteus/util.h"
#include "xform/xform.h"

typedef enum {
    PT_XFORM_MERGE,   /* several instances become one */
    PT_XFORM_SPLIT,   /* one instance becomes several */
    PT_XFORM_RESHAPE, /* several become several (degrees that do not nest, e.g. [2,2,2] -> [3,3]) */
} pt_xform_kind;

/* One operation: the devices [first_device, first_device + n_devices), the
 * current instances src_first .. src_first + n_src - 1 on them (indices into
 * the current layout; consecutive, as instances are in device order), and
 * the instances they become. */
typedef struct {
    pt_xform_kind kind;
    int first_device, n_devices;
    int src_first, n_src;
    int src_tp[PT_FABRIC_MAX_DEVICES]; /* (n_src) their degrees */
    pt_xform_group dst[PT_FABRIC_MAX_DEVICES];
    int n_dst;
} pt_xform_op;

typedef struct {
    pt_xform_op ops[PT_FABRIC_MAX_DEVICES]; /* (n_ops) in device order */
    int n_ops;
} pt_xform_plan;

/* What the plan is made from. cur is the running layout (trusted: the
 * server built it); want comes from outside and is checked. */
typedef struct {
    const int *cur;
    int n_cur;
    const int *want;
    int n_want;
    int n_devices;
    const int *allowed; /* the fabric's TP degrees (engine.allowed_tp); 1 is always allowed */
    int n_allowed;
    int max_tp;         /* the highest degree the model shards to (its KV heads); 0 = no limit */
} pt_xform_plan_input;

/* Fills *plan, or fails with PT_ERR_INVALID and a reason naming the entry
 * and the numbers when: the requested layout is empty or does not cover
 * exactly the devices, a degree is not positive, not allowed or above
 * max_tp, an instance does not start at a multiple of its degree (as
 * pt_fabric_group_ok requires), or it is the current layout. */
int pt_xform_plan_make(pt_xform_plan *plan, const pt_xform_plan_input *in, pt_err *err);

const char *pt_xform_kind_name(pt_xform_kind k); /* "merge", "split", "reshape" */

/* "merge [1,1] -> [2] on devices 0-1"; the plan: its operations joined by
 * "; ". Always NUL-terminated, cut to n. */
void pt_xform_op_describe(const pt_xform_op *op, char *buf, size_t n);
void pt_xform_plan_describe(const pt_xform_plan *p, char *buf, size_t n);

#endif
