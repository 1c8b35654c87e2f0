/* The fabric's state, for the engine (which takes its comm groups). */
#ifndef PROTEUS_FABRIC_INTERNAL_H
#define PROTEUS_FABRIC_INTERNAL_H

#include <pthread.h>

#include "comm/comm.h"
#include "proteus/fabric.h"

/* A world the fabric created, and how many groups of it instances hold. */
typedef struct fabric_world {
    pt_comm_world *world;
    int refs;                  /* groups taken with pt_fabric_group_get and not yet put back */
    struct fabric_world *next; /* older worlds, aborted and still held */
} fabric_world;

struct pt_fabric {
    int n;
    pt_device *devices[PT_FABRIC_MAX_DEVICES];
    int allowed[17];      /* allowed TP degrees, 1 first */
    int n_allowed;
    uint32_t tp_chunks;
    bool has_world;       /* false for one CUDA device: no group above TP 1 */
    pt_device_kind kind;  /* of every device */
    int ids[PT_FABRIC_MAX_DEVICES]; /* comm device id of each device (a CUDA ordinal, or the index) */
    /* The world new groups come from, then the aborted ones that instances
     * still hold (comm.h: an aborted world is never used again; recovery
     * is a new world). mu guards the list, the counts and `world`. */
    pthread_mutex_t mu;
    fabric_world *worlds;
    pt_comm_world *world; /* worlds->world, or NULL without a world; read it under mu, or with no instance running */
    uint64_t renewals;    /* worlds created to replace an aborted one */
};

/* The comm group of devices [first, first + tp) for an instance to hold,
 * from the fabric's current world. When that world was aborted (a failed
 * operation of any instance on it), a new one is created first and the old
 * one is kept until the last group of it is put back. Fails when the
 * fabric does not allow that group (PT_ERR_INVALID) or a new world cannot
 * be created (its error). Every group got is put back (NULL is a no-op)
 * before the fabric is freed. Thread-safe. */
int pt_fabric_group_get(pt_fabric *f, int first, int tp, pt_comm_group **out, pt_err *err);
void pt_fabric_group_put(pt_fabric *f, pt_comm_group *g);

#endif
