/* The fabric's state, for the engine (which takes its comm groups). */
#ifndef PROTEUS_FABRIC_INTERNAL_H
#define PROTEUS_FABRIC_INTERNAL_H

#include "comm/comm.h"
#include "proteus/fabric.h"

struct pt_fabric {
    int n;
    pt_device *devices[PT_FABRIC_MAX_DEVICES];
    int allowed[17];      /* allowed TP degrees, 1 first */
    int n_allowed;
    uint32_t tp_chunks;
    pt_comm_world *world; /* NULL for one CUDA device */
};

/* The comm group of devices [first, first + tp), or NULL when the fabric
 * does not allow that instance (a TP1 instance on a world-less fabric too). */
pt_comm_group *pt_fabric_group(pt_fabric *f, int first, int tp);

#endif
