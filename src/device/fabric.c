/* Devices plus the comm world over them. */
#include "proteus/fabric.h"

#include <stdlib.h>
#include <string.h>

#include "comm/comm.h"
#include "device/fabric_internal.h"

static uint32_t gcd(uint32_t a, uint32_t b) { return b ? gcd(b, a % b) : a; }

int pt_fabric_create(pt_fabric **out, const pt_device_spec *specs, int n, const int *allowed_tp, int n_allowed,
                     pt_err *err) {
    *out = NULL;
    if (n < 1 || n > PT_FABRIC_MAX_DEVICES)
        return pt_err_set(err, PT_ERR_INVALID, "%d devices (need 1 to %d)", n, PT_FABRIC_MAX_DEVICES);
    if (n_allowed < 0 || n_allowed > 16 || (n_allowed && !allowed_tp))
        return pt_err_set(err, PT_ERR_INVALID, "bad list of %d allowed TP degrees", n_allowed);
    for (int i = 1; i < n; i++)
        if (specs[i].kind != specs[0].kind)
            return pt_err_set(err, PT_ERR_UNSUPPORTED, "device %d is %s but device 0 is %s: one kind per server", i,
                              specs[i].kind == PT_DEVICE_CUDA ? "cuda" : "cpu",
                              specs[0].kind == PT_DEVICE_CUDA ? "cuda" : "cpu");
    pt_fabric *f = calloc(1, sizeof(*f));
    if (!f) return pt_err_set(err, PT_ERR_NOMEM, "out of memory creating the fabric");
    f->n = n;
    f->allowed[f->n_allowed++] = 1;
    f->tp_chunks = 4;
    for (int i = 0; i < n_allowed; i++) {
        int d = allowed_tp[i];
        bool dup = false;
        for (int j = 0; j < f->n_allowed; j++) dup |= f->allowed[j] == d;
        if (d < 1) {
            pt_fabric_free(f);
            return pt_err_set(err, PT_ERR_INVALID, "TP degree %d is not positive", d);
        }
        if (!dup) f->allowed[f->n_allowed++] = d;
        if (d <= 64) f->tp_chunks = f->tp_chunks / gcd(f->tp_chunks, (uint32_t)d) * (uint32_t)d;
    }
    int ids[PT_FABRIC_MAX_DEVICES];
    for (int i = 0; i < n; i++) {
        int rc = pt_device_create(&f->devices[i], i, &specs[i], err);
        if (rc) {
            pt_fabric_free(f);
            return rc;
        }
        ids[i] = specs[i].kind == PT_DEVICE_CUDA ? specs[i].ordinal : i;
    }
    pt_comm_config cc = {ids, n, f->allowed, f->n_allowed, 0};
    int rc = specs[0].kind == PT_DEVICE_CPU ? pt_comm_world_create_local(&f->world, &cc, err)
                                            : (n > 1 ? pt_comm_world_create_nccl(&f->world, &cc, err) : PT_OK);
    if (rc) {
        pt_fabric_free(f);
        return rc;
    }
    *out = f;
    return PT_OK;
}

void pt_fabric_free(pt_fabric *f) {
    if (!f) return;
    pt_comm_world_destroy(f->world);
    for (int i = 0; i < f->n; i++) pt_device_free(f->devices[i]);
    free(f);
}

int pt_fabric_size(const pt_fabric *f) { return f->n; }
pt_device *pt_fabric_device(pt_fabric *f, int i) { return i >= 0 && i < f->n ? f->devices[i] : NULL; }
uint32_t pt_fabric_tp_chunks(const pt_fabric *f) { return f->tp_chunks; }

bool pt_fabric_group_ok(const pt_fabric *f, int first, int tp) {
    if (tp < 1 || first < 0 || first + tp > f->n || first % tp) return false;
    for (int i = 0; i < f->n_allowed; i++)
        if (f->allowed[i] == tp) return tp == 1 || f->world != NULL;
    return false;
}

pt_comm_group *pt_fabric_group(pt_fabric *f, int first, int tp) {
    return pt_fabric_group_ok(f, first, tp) ? pt_comm_group_find(f->world, first, tp) : NULL;
}
