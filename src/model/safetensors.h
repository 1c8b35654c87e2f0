/* safetensors reader: u64 header length N, N bytes of JSON
 * {"name": {"dtype": "BF16", "shape": [out, in], "data_offsets": [b, e]}, ...},
 * then the data section (offsets relative to byte 8 + N). Only F32, F16 and
 * BF16 tensors are accepted. Validation is complete before anything is
 * returned; messages name the tensor and carry no file name (the caller adds it). */
#ifndef PROTEUS_MODEL_SAFETENSORS_H
#define PROTEUS_MODEL_SAFETENSORS_H

#include <stdint.h>

#include "proteus/dtype.h"
#include "proteus/util.h"

#define PT_ST_MAX_HEADER (100u << 20) /* the format's own limit for the JSON header */

typedef struct {
    char *name;         /* as in the file (Hugging Face naming) */
    pt_dtype type;      /* F32, F16 or BF16 */
    uint32_t n_dims;    /* 1..4 */
    uint64_t shape[4];  /* safetensors order: shape[n_dims - 1] is contiguous */
    const uint8_t *data; /* points into the buffer parsed */
    uint64_t nbytes;
} pt_st_tensor;

typedef struct {
    pt_st_tensor *tensors;
    size_t n_tensors;
} pt_safetensors;

/* Parse buf[0, size). The result borrows buf; free with pt_safetensors_free. */
int pt_safetensors_parse(pt_safetensors *st, const uint8_t *buf, uint64_t size, pt_err *err);
void pt_safetensors_free(pt_safetensors *st);

#endif
