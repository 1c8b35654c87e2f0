/* A fabric: the devices of one process and the communicator world that
 * connects them (DESIGN.md section 2). Instances (engines) are built over a
 * contiguous, aligned range of its devices -- a group of its world -- so
 * that a later transformation regroups devices that already exist.
 *
 *   pt_device_spec specs[4] = {{PT_DEVICE_CPU, 1}, ...};
 *   int allowed[] = {1, 2, 4};
 *   pt_fabric *f;
 *   pt_fabric_create(&f, specs, 4, allowed, 3, &err);
 *   pt_engine_create_on(&e, mf, f, 2, 2, &opts, &err); // TP2 over devices 2, 3
 *
 * All devices are of one kind. CPU devices are connected by a local world
 * (shared memory); CUDA devices by NCCL when a TP degree above 1 is allowed.
 * A world that a failed operation aborted is replaced by a new one when an
 * instance next asks for a group (src/device/fabric_internal.h). */
#ifndef PROTEUS_FABRIC_H
#define PROTEUS_FABRIC_H

#include "proteus/device.h"
#include "proteus/util.h"

#define PT_FABRIC_MAX_DEVICES 64

typedef struct pt_fabric pt_fabric;

/* allowed_tp: the TP degrees instances may have; each must divide the
 * number of devices (degrees above it are dropped); 1 is always allowed.
 * Fails naming the device or the degree that is wrong. */
int pt_fabric_create(pt_fabric **out, const pt_device_spec *specs, int n_devices, const int *allowed_tp,
                     int n_allowed, pt_err *err);
/* The instances built on it must have been freed. NULL is a no-op. */
void pt_fabric_free(pt_fabric *f);

int pt_fabric_size(const pt_fabric *f);
pt_device *pt_fabric_device(pt_fabric *f, int i);
/* Whether an instance may span devices [first, first + tp): tp is allowed
 * and the range is one group of the world (aligned to tp). */
bool pt_fabric_group_ok(const pt_fabric *f, int first, int tp);
/* Comm worlds created to replace one that a failed operation aborted (an
 * instance that held a group of it takes one of the new world at its next
 * step: see pt_engine_step). */
uint64_t pt_fabric_comm_renewals(pt_fabric *f);
/* MLP chunks per weight tensor that serve every allowed degree: their least
 * common multiple, at least 4 (so TP 1, 2 and 4 give the same bits). */
uint32_t pt_fabric_tp_chunks(const pt_fabric *f);

#endif
