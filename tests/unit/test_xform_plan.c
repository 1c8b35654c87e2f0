/* Layout change -> transformation operations (src/xform/plan.h), from
 * hand-made layouts: which regions change and into what, which stay, the
 * kind of each operation, and every refusal with the entry it names. */
#include <stdlib.h>

#include "test.h"
#include "xform/plan.h"

static const int ALLOWED_124[] = {1, 2, 4};

/* A plan for cur -> want on the devices they cover, allowed {1,2,4}. */
static int plan_of(pt_xform_plan *p, const int *cur, int n_cur, const int *want, int n_want, pt_err *err) {
    int n_dev = 0;
    for (int i = 0; i < n_cur; i++) n_dev += cur[i];
    pt_xform_plan_input in = {cur, n_cur, want, n_want, n_dev, ALLOWED_124, 3, 0};
    return pt_xform_plan_make(p, &in, err);
}

static void check_group(const pt_xform_group *g, int first, int tp) {
    CHECK_MSG(g->first == first && g->tp == tp, "group {%d,%d}, want {%d,%d}", g->first, g->tp, first, tp);
}

static void test_merge_two(void) {
    pt_xform_plan *p = malloc(sizeof(*p));
    pt_err err;
    CHECK_EQ_INT(plan_of(p, (int[]){1, 1}, 2, (int[]){2}, 1, &err), PT_OK);
    CHECK_EQ_INT(p->n_ops, 1);
    const pt_xform_op *op = &p->ops[0];
    CHECK_EQ_INT(op->kind, PT_XFORM_MERGE);
    CHECK_EQ_INT(op->first_device, 0);
    CHECK_EQ_INT(op->n_devices, 2);
    CHECK_EQ_INT(op->src_first, 0);
    CHECK_EQ_INT(op->n_src, 2);
    CHECK_EQ_INT(op->src_tp[0], 1);
    CHECK_EQ_INT(op->src_tp[1], 1);
    CHECK_EQ_INT(op->n_dst, 1);
    check_group(&op->dst[0], 0, 2);
    char buf[256];
    pt_xform_plan_describe(p, buf, sizeof(buf));
    CHECK_MSG(!strcmp(buf, "merge [1,1] -> [2] on devices 0-1"), "%s", buf);
    free(p);
}

static void test_split_four(void) {
    pt_xform_plan *p = malloc(sizeof(*p));
    pt_err err;
    CHECK_EQ_INT(plan_of(p, (int[]){4}, 1, (int[]){1, 1, 2}, 3, &err), PT_OK);
    CHECK_EQ_INT(p->n_ops, 1);
    const pt_xform_op *op = &p->ops[0];
    CHECK_EQ_INT(op->kind, PT_XFORM_SPLIT);
    CHECK_EQ_INT(op->n_src, 1);
    CHECK_EQ_INT(op->n_dst, 3);
    check_group(&op->dst[0], 0, 1);
    check_group(&op->dst[1], 1, 1);
    check_group(&op->dst[2], 2, 2);
    free(p);
}

/* Regions whose instance is the same on both sides are left alone; each
 * changing region is its own operation, with the indices of its current
 * instances. */
static void test_untouched_regions(void) {
    pt_xform_plan *p = malloc(sizeof(*p));
    pt_err err;
    /* [1,1,2] -> [2,1,1]: merge on 0-1, split on 2-3. */
    CHECK_EQ_INT(plan_of(p, (int[]){1, 1, 2}, 3, (int[]){2, 1, 1}, 3, &err), PT_OK);
    CHECK_EQ_INT(p->n_ops, 2);
    CHECK_EQ_INT(p->ops[0].kind, PT_XFORM_MERGE);
    CHECK_EQ_INT(p->ops[0].src_first, 0);
    CHECK_EQ_INT(p->ops[0].n_src, 2);
    check_group(&p->ops[0].dst[0], 0, 2);
    CHECK_EQ_INT(p->ops[1].kind, PT_XFORM_SPLIT);
    CHECK_EQ_INT(p->ops[1].src_first, 2);
    CHECK_EQ_INT(p->ops[1].first_device, 2);
    CHECK_EQ_INT(p->ops[1].n_dst, 2);
    check_group(&p->ops[1].dst[0], 2, 1);
    check_group(&p->ops[1].dst[1], 3, 1);
    char buf[256];
    pt_xform_plan_describe(p, buf, sizeof(buf));
    CHECK_MSG(!strcmp(buf, "merge [1,1] -> [2] on devices 0-1; split [2] -> [1,1] on devices 2-3"), "%s", buf);

    /* [1,1,2] -> [2,2]: only devices 0-1 change; the TP2 instance (index 2) stays. */
    CHECK_EQ_INT(plan_of(p, (int[]){1, 1, 2}, 3, (int[]){2, 2}, 2, &err), PT_OK);
    CHECK_EQ_INT(p->n_ops, 1);
    CHECK_EQ_INT(p->ops[0].n_devices, 2);

    /* [2,1,1,4] -> [2,2,2,2] on 8 devices: 0-1 stays, 2-3 merge, 4-7 split. */
    CHECK_EQ_INT(plan_of(p, (int[]){2, 1, 1, 4}, 4, (int[]){2, 2, 2, 2}, 4, &err), PT_OK);
    CHECK_EQ_INT(p->n_ops, 2);
    CHECK_EQ_INT(p->ops[0].kind, PT_XFORM_MERGE);
    CHECK_EQ_INT(p->ops[0].src_first, 1);
    CHECK_EQ_INT(p->ops[0].n_src, 2);
    check_group(&p->ops[0].dst[0], 2, 2);
    CHECK_EQ_INT(p->ops[1].kind, PT_XFORM_SPLIT);
    CHECK_EQ_INT(p->ops[1].src_first, 3);
    check_group(&p->ops[1].dst[0], 4, 2);
    check_group(&p->ops[1].dst[1], 6, 2);

    /* [1,1,1,1] -> [4]: one merge of four; [4] -> [2,2] one split. */
    CHECK_EQ_INT(plan_of(p, (int[]){1, 1, 1, 1}, 4, (int[]){4}, 1, &err), PT_OK);
    CHECK_EQ_INT(p->n_ops, 1);
    CHECK_EQ_INT(p->ops[0].n_src, 4);
    CHECK_EQ_INT(plan_of(p, (int[]){2, 1, 1}, 3, (int[]){1, 1, 2}, 3, &err), PT_OK);
    CHECK_EQ_INT(p->n_ops, 2);
    CHECK_EQ_INT(p->ops[0].kind, PT_XFORM_SPLIT);
    CHECK_EQ_INT(p->ops[1].kind, PT_XFORM_MERGE);
    CHECK_EQ_INT(p->ops[1].src_first, 1);
    free(p);
}

/* Degrees that do not nest (2 and 3 on six devices) give regions with
 * several instances on both sides. */
static void test_reshape(void) {
    pt_xform_plan *p = malloc(sizeof(*p));
    pt_err err;
    static const int allowed[] = {2, 3};
    pt_xform_plan_input in = {(int[]){2, 2, 2}, 3, (int[]){3, 3}, 2, 6, allowed, 2, 0};
    CHECK_EQ_INT(pt_xform_plan_make(p, &in, &err), PT_OK);
    CHECK_EQ_INT(p->n_ops, 1);
    CHECK_EQ_INT(p->ops[0].kind, PT_XFORM_RESHAPE);
    CHECK_EQ_INT(p->ops[0].n_src, 3);
    CHECK_EQ_INT(p->ops[0].n_dst, 2);
    check_group(&p->ops[0].dst[1], 3, 3);
    CHECK_MSG(!strcmp(pt_xform_kind_name(p->ops[0].kind), "reshape"), "%s", pt_xform_kind_name(p->ops[0].kind));
    CHECK(!strcmp(pt_xform_kind_name(PT_XFORM_MERGE), "merge"));
    CHECK(!strcmp(pt_xform_kind_name(PT_XFORM_SPLIT), "split"));
    free(p);
}

/* A refusal: PT_ERR_INVALID, no operation, and the reason holds `want`. */
static void refused(const pt_xform_plan_input *in, const char *want) {
    pt_xform_plan *p = malloc(sizeof(*p));
    pt_err err = {{0}};
    int rc = pt_xform_plan_make(p, in, &err);
    CHECK_EQ_INT(rc, PT_ERR_INVALID);
    CHECK_EQ_INT(p->n_ops, 0);
    CHECK_MSG(strstr(err.msg, want) != NULL, "reason '%s' lacks '%s'", err.msg, want);
    free(p);
}

static void test_refusals(void) {
    int cur11[] = {1, 1}, cur1111[] = {1, 1, 1, 1};
    /* Coverage. */
    refused(&(pt_xform_plan_input){cur11, 2, NULL, 0, 2, ALLOWED_124, 3, 0}, "the layout is empty");
    refused(&(pt_xform_plan_input){cur11, 2, (int[]){1}, 1, 2, ALLOWED_124, 3, 0},
            "the layout covers 1 device but the server has 2");
    refused(&(pt_xform_plan_input){cur11, 2, (int[]){2, 1}, 2, 2, ALLOWED_124, 3, 0},
            "the layout covers 3 devices but the server has 2");
    refused(&(pt_xform_plan_input){cur11, 2, (int[]){1, 1, 1}, 3, 2, ALLOWED_124, 3, 0},
            "the layout has 3 instances but the server has 2 devices");
    refused(&(pt_xform_plan_input){cur11, 2, (int[]){4}, 1, 2, ALLOWED_124, 3, 0},
            "layout[0] = 4 is more than the server's 2 devices");
    refused(&(pt_xform_plan_input){cur11, 2, (int[]){0, 2}, 2, 2, ALLOWED_124, 3, 0},
            "layout[0] = 0 is not a TP degree");
    refused(&(pt_xform_plan_input){cur11, 2, (int[]){2, -1}, 2, 2, ALLOWED_124, 3, 0},
            "layout[1] = -1 is not a TP degree");
    /* Allowed degrees: 1 always, the others from the list. */
    refused(&(pt_xform_plan_input){cur11, 2, (int[]){2}, 1, 2, (int[]){1}, 1, 0},
            "layout[0] = 2: TP 2 is not allowed (engine.allowed_tp: [1])");
    refused(&(pt_xform_plan_input){cur1111, 4, (int[]){4}, 1, 4, (int[]){1, 2}, 2, 0},
            "TP 4 is not allowed (engine.allowed_tp: [1,2])");
    /* The model's limit. */
    refused(&(pt_xform_plan_input){cur1111, 4, (int[]){4}, 1, 4, ALLOWED_124, 3, 3},
            "layout[0] = 4: TP 4 exceeds the model's 3 KV heads");
    /* Alignment: TP2 at device 1. */
    refused(&(pt_xform_plan_input){cur1111, 4, (int[]){1, 2, 1}, 3, 4, ALLOWED_124, 3, 0},
            "layout[1] = 2 would start at device 1, which is not a multiple of 2");
    /* Nothing to do. */
    refused(&(pt_xform_plan_input){cur11, 2, (int[]){1, 1}, 2, 2, ALLOWED_124, 3, 0}, "the layout is already [1,1]");
    /* A broken current layout is refused, not walked. */
    refused(&(pt_xform_plan_input){cur11, 2, (int[]){2}, 1, 3, ALLOWED_124, 3, 0},
            "the current layout covers 2 devices, not 3");
    refused(&(pt_xform_plan_input){(int[]){0, 2}, 2, (int[]){2}, 1, 2, ALLOWED_124, 3, 0},
            "the current layout's instance 0 has TP 0");
}

/* Every aligned layout of the devices [pos, n) over degrees 1, 2, 4, 8 after
 * the instances in cur[0..depth). */
static void layouts_of(int pos, int n, int *cur, int depth, int (*out)[8], int *lens, int *count) {
    if (pos == n) {
        memcpy(out[*count], cur, (size_t)depth * sizeof(int));
        lens[(*count)++] = depth;
        return;
    }
    for (int d = 1; d <= 8; d *= 2) {
        if (pos % d || pos + d > n) continue;
        cur[depth] = d;
        layouts_of(pos + d, n, cur, depth + 1, out, lens, count);
    }
}

/* Between any two different layouts of eight devices over degrees
 * {1,2,4,8}, a plan is found; its targets are aligned (as
 * pt_fabric_group_ok requires) and tile each operation's region; the
 * instances outside the operations with the targets inside them are the
 * requested layout. */
static void test_every_pair_tiles(void) {
    static int ls[256][8];
    static int lens[256];
    int n = 0, scratch[8];
    layouts_of(0, 8, scratch, 0, ls, lens, &n);
    CHECK_EQ_INT(n, 26); /* aligned layouts of 8 devices over {1,2,4,8} */
    static const int allowed[] = {1, 2, 4, 8};
    pt_xform_plan *p = malloc(sizeof(*p));
    for (int a = 0; a < n; a++) {
        for (int b = 0; b < n; b++) {
            pt_err err;
            pt_xform_plan_input in = {ls[a], lens[a], ls[b], lens[b], 8, allowed, 4, 0};
            int rc = pt_xform_plan_make(p, &in, &err);
            if (a == b) {
                CHECK_EQ_INT(rc, PT_ERR_INVALID);
                continue;
            }
            CHECK_MSG(rc == PT_OK, "%d -> %d: %s", a, b, err.msg);
            CHECK(p->n_ops >= 1);
            /* Applying the ops to cur gives want: count devices covered and compare the groups. */
            int applied[8], n_applied = 0, ci = 0, dev = 0;
            for (int k = 0; k <= p->n_ops; k++) {
                int stop = k < p->n_ops ? p->ops[k].first_device : 8;
                while (dev < stop) {
                    applied[n_applied++] = ls[a][ci];
                    dev += ls[a][ci++];
                }
                if (k == p->n_ops) break;
                const pt_xform_op *op = &p->ops[k];
                CHECK_EQ_INT(op->src_first, ci);
                CHECK(op->kind != PT_XFORM_RESHAPE); /* powers of two nest */
                for (int t = 0; t < op->n_dst; t++) {
                    CHECK_EQ_INT(op->dst[t].first, dev);
                    CHECK_EQ_INT(op->dst[t].first % op->dst[t].tp, 0);
                    applied[n_applied++] = op->dst[t].tp;
                    dev += op->dst[t].tp;
                }
                ci += op->n_src;
                CHECK_EQ_INT(dev, op->first_device + op->n_devices);
            }
            CHECK_EQ_INT(n_applied, lens[b]);
            CHECK(n_applied == lens[b] && !memcmp(applied, ls[b], (size_t)n_applied * sizeof(int)));
        }
    }
    free(p);
}

static void test_describe_cut(void) {
    pt_xform_plan *p = malloc(sizeof(*p));
    pt_err err;
    CHECK_EQ_INT(plan_of(p, (int[]){1, 1, 2}, 3, (int[]){2, 1, 1}, 3, &err), PT_OK);
    char buf[12];
    memset(buf, 'x', sizeof(buf));
    pt_xform_plan_describe(p, buf, sizeof(buf));
    CHECK_EQ_INT(strlen(buf), sizeof(buf) - 1);
    CHECK(!strncmp(buf, "merge [1,1]", 11));
    free(p);
}

TEST_MAIN(TEST(test_merge_two), TEST(test_split_four), TEST(test_untouched_regions), TEST(test_reshape),
          TEST(test_refusals), TEST(test_every_pair_tiles), TEST(test_describe_cut))
