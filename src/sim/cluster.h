/* What `proteus simulate` simulates: a cluster of identical devices and the
 * shape of the model it serves, from a preset name or a file.
 *
 * Devices: "NxH100", "NxH200", "NxA100" (e.g. "8xH200") or a JSON device
 * spec (README "Simulating a cluster"). Models: "qwen2.5-32b",
 * "llama3-70b", "llama3-8b", "smollm2-135m" (the published configs), or a
 * model file (GGUF, Hugging Face directory, config.json) whose config gives
 * the shape. Weights and KV are bf16 on the simulated devices, whatever the
 * file holds. */
#ifndef PROTEUS_SIM_CLUSTER_H
#define PROTEUS_SIM_CLUSTER_H

#include <stdint.h>

#include "proteus/util.h"
#include "scheduler/cost_model.h"

typedef struct {
    int n_devices;
    pt_device_roofline dev;  /* dev.name points into name: do not copy the struct */
    char name[64];           /* "H200" or the spec's "name" */
} pt_sim_cluster;

/* The roofline of one device of a preset ("H100", "H200", "A100"; case
 * insensitive), with the simulator's default efficiencies. */
int pt_sim_device_preset(pt_device_roofline *d, const char *name);

/* "8xH200", "NxA100", or a JSON spec file. Messages name the spec or the
 * file and the key. */
int pt_sim_cluster_parse(pt_sim_cluster *c, const char *spec, pt_err *err);

typedef struct {
    pt_model_shape shape;    /* shape.name points into name: do not copy the struct */
    char name[128];
} pt_sim_model;

/* A preset name ("qwen2.5-32b", ...; "synthetic:<preset>" too) or a model
 * file. */
int pt_sim_model_resolve(pt_sim_model *m, const char *spec, pt_err *err);

/* Every weight of a model of this shape (embeddings, LM head unless tied,
 * attention with or without QKV bias, SwiGLU MLP, norms). */
uint64_t pt_sim_shape_params(uint32_t n_layers, uint32_t hidden, uint32_t n_heads, uint32_t n_kv_heads,
                             uint32_t head_dim, uint32_t ffn, uint32_t vocab, int tied, int qkv_bias);

/* Names of the presets, for --help. */
extern const char *const PT_SIM_MODEL_PRESETS;
extern const char *const PT_SIM_DEVICE_PRESETS;

#endif
