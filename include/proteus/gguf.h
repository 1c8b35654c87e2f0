/* GGUF v2/v3 reader: header, metadata key/values and tensor infos, read from a
 * byte range (normally an mmap of the whole file). Validation is complete
 * before anything is returned: every string, array and tensor lies inside the
 * buffer, every count is sane, every tensor's byte size fits. */
#ifndef PROTEUS_GGUF_H
#define PROTEUS_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proteus/dtype.h"
#include "proteus/util.h"

typedef enum {
    PT_GGUF_UINT8 = 0, PT_GGUF_INT8 = 1, PT_GGUF_UINT16 = 2, PT_GGUF_INT16 = 3,
    PT_GGUF_UINT32 = 4, PT_GGUF_INT32 = 5, PT_GGUF_FLOAT32 = 6, PT_GGUF_BOOL = 7,
    PT_GGUF_STRING = 8, PT_GGUF_ARRAY = 9, PT_GGUF_UINT64 = 10, PT_GGUF_INT64 = 11,
    PT_GGUF_FLOAT64 = 12,
} pt_gguf_type;

typedef struct {
    const char *ptr; /* not NUL-terminated: points into the file */
    uint64_t len;
} pt_gguf_str;

typedef struct {
    pt_gguf_str key;
    pt_gguf_type type;
    pt_gguf_type elem_type;  /* for arrays */
    uint64_t n;              /* array length (1 for scalars) */
    const uint8_t *data;     /* scalar value, or first array element (strings: see below) */
    pt_gguf_str *strs;       /* string or string-array values, decoded at parse time */
} pt_gguf_kv;

typedef struct {
    pt_gguf_str name;
    uint32_t n_dims;
    uint64_t ne[4];
    pt_dtype type;
    uint64_t offset;   /* relative to the data section */
    uint64_t nbytes;
} pt_gguf_tensor;

struct pt_gguf {
    uint32_t version;
    uint64_t alignment;
    pt_gguf_kv *kvs;
    uint64_t n_kvs;
    pt_gguf_tensor *tensors;
    uint64_t n_tensors;
    uint64_t data_offset;   /* start of the tensor data section in the buffer */
    const uint8_t *base;    /* the buffer parsed */
    uint64_t size;
};
typedef struct pt_gguf pt_gguf;

/* Parse a whole GGUF file held in buf[0, size). The result borrows buf. */
int pt_gguf_parse(pt_gguf **out, const uint8_t *buf, uint64_t size, pt_err *err);
void pt_gguf_free(pt_gguf *g);

const pt_gguf_kv *pt_gguf_find(const pt_gguf *g, const char *key);
/* Typed getters: return false when the key is absent or of another type.
 * Integer getters accept any integer type whose value fits. */
bool pt_gguf_get_u32(const pt_gguf *g, const char *key, uint32_t *out);
bool pt_gguf_get_f32(const pt_gguf *g, const char *key, float *out);
bool pt_gguf_get_bool(const pt_gguf *g, const char *key, bool *out);
/* Returns a malloc'd NUL-terminated copy, or NULL. */
char *pt_gguf_get_str(const pt_gguf *g, const char *key);
/* Array of strings / floats / int32s: pointer to the kv, or NULL if absent or
 * of another element type. */
const pt_gguf_kv *pt_gguf_get_arr(const pt_gguf *g, const char *key, pt_gguf_type elem_type);
/* Tensor info by name, or NULL. Its data is at base + data_offset + offset. */
const pt_gguf_tensor *pt_gguf_find_tensor(const pt_gguf *g, const char *name);

#endif
