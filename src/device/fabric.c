/* Devices plus the comm world over them. The world is replaced by a new
 * one when an instance asks for a group after it was aborted; instances
 * hold their group (pt_fabric_group_get) until they are freed, so an
 * aborted world lives on until the last of its groups is put back. */
#include "proteus/fabric.h"

#include <stdlib.h>
#include <string.h>

#include "comm/comm.h"
#include "device/fabric_internal.h"

static uint32_t gcd(uint32_t a, uint32_t b) { return b ? gcd(b, a % b) : a; }

/* A new world over every device, in front of the list (f->mu held, or
 * at creation). */
static int new_world(pt_fabric *f, pt_err *err) {
    fabric_world *fw = calloc(1, sizeof(*fw));
    if (!fw) return pt_err_set(err, PT_ERR_NOMEM, "out of memory creating a comm world");
    pt_comm_config cc = {f->ids, f->n, f->allowed, f->n_allowed, 0};
    int rc = f->kind == PT_DEVICE_CPU ? pt_comm_world_create_local(&fw->world, &cc, err)
                                      : pt_comm_world_create_nccl(&fw->world, &cc, err);
    if (rc) {
        free(fw);
        return rc;
    }
    fw->next = f->worlds;
    f->worlds = fw;
    f->world = fw->world;
    return PT_OK;
}

/* Destroys an aborted world that no instance holds any more (f->mu held). */
static void drop_unheld(pt_fabric *f) {
    for (fabric_world **p = f->worlds ? &f->worlds->next : NULL; p && *p;) {
        fabric_world *fw = *p;
        if (fw->refs) {
            p = &fw->next;
            continue;
        }
        *p = fw->next;
        pt_comm_world_destroy(fw->world);
        free(fw);
    }
}

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
    pthread_mutex_init(&f->mu, NULL);
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
    for (int i = 0; i < n; i++) {
        int rc = pt_device_create(&f->devices[i], i, &specs[i], err);
        if (rc) {
            pt_fabric_free(f);
            return rc;
        }
        f->ids[i] = specs[i].kind == PT_DEVICE_CUDA ? specs[i].ordinal : i;
    }
    f->kind = specs[0].kind;
    f->has_world = f->kind == PT_DEVICE_CPU || n > 1;
    int rc = f->has_world ? new_world(f, err) : PT_OK;
    if (rc) {
        pt_fabric_free(f);
        return rc;
    }
    *out = f;
    return PT_OK;
}

void pt_fabric_free(pt_fabric *f) {
    if (!f) return;
    for (fabric_world *fw = f->worlds, *next; fw; fw = next) {
        next = fw->next;
        if (fw->refs)
            pt_log(PT_LOG_ERROR, "fabric: freed while instances hold %d groups of a comm world", fw->refs);
        pt_comm_world_destroy(fw->world);
        free(fw);
    }
    pthread_mutex_destroy(&f->mu);
    for (int i = 0; i < f->n; i++) pt_device_free(f->devices[i]);
    free(f);
}

int pt_fabric_size(const pt_fabric *f) { return f->n; }
pt_device *pt_fabric_device(pt_fabric *f, int i) { return i >= 0 && i < f->n ? f->devices[i] : NULL; }
uint32_t pt_fabric_tp_chunks(const pt_fabric *f) { return f->tp_chunks; }

bool pt_fabric_group_ok(const pt_fabric *f, int first, int tp) {
    if (tp < 1 || first < 0 || first + tp > f->n || first % tp) return false;
    for (int i = 0; i < f->n_allowed; i++)
        if (f->allowed[i] == tp) return tp == 1 || f->has_world;
    return false;
}

int pt_fabric_group_get(pt_fabric *f, int first, int tp, pt_comm_group **out, pt_err *err) {
    *out = NULL;
    bool whole = first == 0 && tp == f->n; /* always in the pool: page moves between any two devices */
    if (!f->has_world || !(whole || pt_fabric_group_ok(f, first, tp)))
        return pt_err_set(err, PT_ERR_INVALID, "the fabric has no comm group of TP %d on devices [%d, %d)", tp, first,
                          first + tp);
    pthread_mutex_lock(&f->mu);
    if (pt_comm_is_aborted(f->world)) {
        pt_err why;
        pt_comm_check(f->world, &why);
        int rc = new_world(f, err);
        if (rc) {
            pthread_mutex_unlock(&f->mu);
            return rc;
        }
        f->renewals++;
        pt_log(PT_LOG_WARN, "fabric: a new comm world of %d devices replaces the one that was aborted (%s)", f->n,
               why.msg);
        drop_unheld(f);
    }
    pt_comm_group *g = pt_comm_group_find(f->world, first, tp);
    if (g) f->worlds->refs++;
    pthread_mutex_unlock(&f->mu);
    if (!g)
        return pt_err_set(err, PT_ERR_INVALID, "the comm world has no group of TP %d on devices [%d, %d)", tp, first,
                          first + tp);
    *out = g;
    return PT_OK;
}

void pt_fabric_group_put(pt_fabric *f, pt_comm_group *g) {
    if (!f || !g) return;
    pthread_mutex_lock(&f->mu);
    pt_comm_world *w = pt_comm_group_world(g);
    for (fabric_world *fw = f->worlds; fw; fw = fw->next)
        if (fw->world == w) {
            fw->refs--;
            break;
        }
    drop_unheld(f);
    pthread_mutex_unlock(&f->mu);
}

uint64_t pt_fabric_comm_renewals(pt_fabric *f) {
    pthread_mutex_lock(&f->mu);
    uint64_t n = f->renewals;
    pthread_mutex_unlock(&f->mu);
    return n;
}
