/* GGUF v2/v3 reader.
 *
 * Layout (all little-endian): magic "GGUF", u32 version, u64 n_tensors,
 * u64 n_kv, then n_kv key/values, then n_tensors tensor infos, then padding to
 * general.alignment, then the tensor data section. Strings are u64 length +
 * bytes. Nothing read from the buffer is trusted: every length is checked
 * against the bytes left before it is used, and every product is checked for
 * overflow. Error messages name the byte offset or tensor where parsing
 * stopped; the caller prefixes the file name. */
#include "proteus/gguf.h"

#include <stdlib.h>
#include <string.h>

#define GGUF_MAGIC "GGUF"
#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_ALIGNMENT (1u << 20)
#define GGUF_MAX_KEY_LEN 65535
#define GGUF_MAX_NAME_LEN 256
/* Smallest possible encodings, used to reject counts the file cannot hold. */
#define GGUF_MIN_KV_BYTES 13     /* key length, type, one byte of value */
#define GGUF_MIN_TENSOR_BYTES 32 /* name length, n_dims, one ne, type, offset */

typedef struct {
    const uint8_t *buf;
    uint64_t size;
    uint64_t pos;
    pt_err *err;
} reader;

/* A printable copy of a name from the file, for messages. */
static const char *printable(pt_gguf_str s, char *out, size_t cap) {
    size_t n = s.len < cap - 4 ? (size_t)s.len : cap - 4;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s.ptr[i];
        out[i] = (c >= 32 && c < 127 && c != '\'') ? (char)c : '?';
    }
    if (n < s.len) {
        memcpy(out + n, "...", 3);
        n += 3;
    }
    out[n] = 0;
    return out;
}

static int need(reader *r, uint64_t n, const char *what) {
    if (n > r->size - r->pos)
        return pt_err_set(r->err, PT_ERR_FORMAT,
                          "byte offset %llu: truncated: %s needs %llu bytes, file size %llu",
                          (unsigned long long)r->pos, what, (unsigned long long)n,
                          (unsigned long long)r->size);
    return PT_OK;
}

static int read_u32(reader *r, uint32_t *v, const char *what) {
    int rc = need(r, 4, what);
    if (rc) return rc;
    memcpy(v, r->buf + r->pos, 4);
    r->pos += 4;
    return PT_OK;
}

static int read_u64(reader *r, uint64_t *v, const char *what) {
    int rc = need(r, 8, what);
    if (rc) return rc;
    memcpy(v, r->buf + r->pos, 8);
    r->pos += 8;
    return PT_OK;
}

static int read_str(reader *r, pt_gguf_str *s, const char *what) {
    uint64_t at = r->pos, len;
    int rc = read_u64(r, &len, what);
    if (rc) return rc;
    if (len > r->size - r->pos)
        return pt_err_set(r->err, PT_ERR_FORMAT,
                          "byte offset %llu: %s: string length %llu exceeds file (size %llu)",
                          (unsigned long long)at, what, (unsigned long long)len,
                          (unsigned long long)r->size);
    s->ptr = (const char *)r->buf + r->pos;
    s->len = len;
    r->pos += len;
    return PT_OK;
}

/* Bytes of one scalar of type t, 0 for strings/arrays, -1 for unknown ids. */
static int scalar_size(uint32_t t) {
    switch (t) {
    case PT_GGUF_UINT8: case PT_GGUF_INT8: case PT_GGUF_BOOL: return 1;
    case PT_GGUF_UINT16: case PT_GGUF_INT16: return 2;
    case PT_GGUF_UINT32: case PT_GGUF_INT32: case PT_GGUF_FLOAT32: return 4;
    case PT_GGUF_UINT64: case PT_GGUF_INT64: case PT_GGUF_FLOAT64: return 8;
    case PT_GGUF_STRING: case PT_GGUF_ARRAY: return 0;
    default: return -1;
    }
}

static int read_value(reader *r, pt_gguf_kv *kv, const char *key) {
    uint64_t at = r->pos;
    uint32_t type;
    int rc = read_u32(r, &type, "value type");
    if (rc) return rc;
    if (scalar_size(type) < 0)
        return pt_err_set(r->err, PT_ERR_FORMAT, "byte offset %llu: key '%s': unknown value type %u",
                          (unsigned long long)at, key, type);
    kv->type = (pt_gguf_type)type;
    kv->elem_type = kv->type;
    kv->n = 1;
    if (type == PT_GGUF_ARRAY) {
        uint32_t et;
        at = r->pos;
        if ((rc = read_u32(r, &et, "array element type"))) return rc;
        if (et == PT_GGUF_ARRAY)
            return pt_err_set(r->err, PT_ERR_FORMAT,
                              "byte offset %llu: key '%s': nested arrays are not supported",
                              (unsigned long long)at, key);
        if (scalar_size(et) < 0)
            return pt_err_set(r->err, PT_ERR_FORMAT,
                              "byte offset %llu: key '%s': unknown array element type %u",
                              (unsigned long long)at, key, et);
        kv->elem_type = (pt_gguf_type)et;
        at = r->pos;
        if ((rc = read_u64(r, &kv->n, "array length"))) return rc;
        uint64_t left = r->size - r->pos;
        uint64_t min_bytes;
        uint64_t esize = et == PT_GGUF_STRING ? 8 : (uint64_t)scalar_size(et);
        if (!pt_mul_size(kv->n, esize, &min_bytes) || min_bytes > left)
            return pt_err_set(r->err, PT_ERR_FORMAT,
                              "byte offset %llu: key '%s': array length %llu exceeds file (size %llu)",
                              (unsigned long long)at, key, (unsigned long long)kv->n,
                              (unsigned long long)r->size);
        kv->data = r->buf + r->pos;
        if (et != PT_GGUF_STRING) {
            r->pos += min_bytes;
            return PT_OK;
        }
        kv->strs = kv->n ? malloc((size_t)kv->n * sizeof(pt_gguf_str)) : NULL;
        if (kv->n && !kv->strs)
            return pt_err_set(r->err, PT_ERR_NOMEM, "key '%s': out of memory for %llu strings", key,
                              (unsigned long long)kv->n);
        for (uint64_t i = 0; i < kv->n; i++)
            if ((rc = read_str(r, &kv->strs[i], "array string"))) return rc;
        return PT_OK;
    }
    kv->data = r->buf + r->pos;
    if (type == PT_GGUF_STRING) {
        kv->strs = malloc(sizeof(pt_gguf_str));
        if (!kv->strs) return pt_err_set(r->err, PT_ERR_NOMEM, "out of memory");
        if ((rc = read_str(r, kv->strs, "string value"))) return rc;
        kv->data = (const uint8_t *)kv->strs->ptr;
        return PT_OK;
    }
    if ((rc = need(r, (uint64_t)scalar_size(type), "value"))) return rc;
    r->pos += (uint64_t)scalar_size(type);
    return PT_OK;
}

static bool str_eq(pt_gguf_str a, pt_gguf_str b) {
    return a.len == b.len && memcmp(a.ptr, b.ptr, (size_t)a.len) == 0;
}

static int cmp_str(pt_gguf_str a, pt_gguf_str b) {
    size_t n = (size_t)(a.len < b.len ? a.len : b.len);
    int c = n ? memcmp(a.ptr, b.ptr, n) : 0;
    if (c) return c;
    return a.len < b.len ? -1 : a.len > b.len;
}

static int cmp_tensor_ptr(const void *a, const void *b) {
    const pt_gguf_tensor *x = *(const pt_gguf_tensor *const *)a;
    const pt_gguf_tensor *y = *(const pt_gguf_tensor *const *)b;
    return cmp_str(x->name, y->name);
}

static int read_tensor_info(reader *r, pt_gguf_tensor *t) {
    char nb[80];
    uint64_t at = r->pos;
    int rc = read_str(r, &t->name, "tensor name");
    if (rc) return rc;
    if (t->name.len == 0 || t->name.len > GGUF_MAX_NAME_LEN)
        return pt_err_set(r->err, PT_ERR_FORMAT, "byte offset %llu: tensor name length %llu out of range [1, %d]",
                          (unsigned long long)at, (unsigned long long)t->name.len, GGUF_MAX_NAME_LEN);
    const char *name = printable(t->name, nb, sizeof nb);
    if (memchr(t->name.ptr, 0, (size_t)t->name.len))
        return pt_err_set(r->err, PT_ERR_FORMAT, "tensor '%s': name contains a NUL byte", name);
    if ((rc = read_u32(r, &t->n_dims, "tensor n_dims"))) return rc;
    if (t->n_dims < 1 || t->n_dims > 4)
        return pt_err_set(r->err, PT_ERR_FORMAT, "tensor '%s': n_dims %u out of range [1, 4]", name,
                          t->n_dims);
    uint64_t n_el = 1;
    for (uint32_t i = 0; i < 4; i++) {
        t->ne[i] = 1;
        if (i >= t->n_dims) continue;
        if ((rc = read_u64(r, &t->ne[i], "tensor dimension"))) return rc;
        if (t->ne[i] == 0)
            return pt_err_set(r->err, PT_ERR_FORMAT, "tensor '%s': dimension %u is 0", name, i);
        if (!pt_mul_size(n_el, t->ne[i], &n_el))
            return pt_err_set(r->err, PT_ERR_FORMAT, "tensor '%s': element count overflows", name);
    }
    uint32_t type;
    if ((rc = read_u32(r, &type, "tensor type"))) return rc;
    if (!pt_dtype_valid((int)type))
        return pt_err_set(r->err, PT_ERR_FORMAT, "tensor '%s': unknown type %u", name, type);
    t->type = (pt_dtype)type;
    uint64_t row;
    if (!pt_dtype_row_bytes(t->type, t->ne[0], &row))
        return pt_err_set(r->err, PT_ERR_FORMAT,
                          "tensor '%s': ne[0] = %llu is not a multiple of the %s block size %zu", name,
                          (unsigned long long)t->ne[0], pt_dtype_name(t->type),
                          pt_dtype_block_size(t->type));
    if (!pt_mul_size(row, n_el / t->ne[0], &t->nbytes))
        return pt_err_set(r->err, PT_ERR_FORMAT, "tensor '%s': byte size overflows", name);
    return read_u64(r, &t->offset, "tensor offset");
}

static int parse(pt_gguf *g, reader *r) {
    int rc;
    char nb[80];
    if (r->size < 4 || memcmp(r->buf, GGUF_MAGIC, 4) != 0)
        return pt_err_set(r->err, PT_ERR_FORMAT, "not a GGUF file (bad magic)");
    r->pos = 4;
    if ((rc = read_u32(r, &g->version, "version"))) return rc;
    if (g->version == 1)
        return pt_err_set(r->err, PT_ERR_UNSUPPORTED,
                          "GGUF version 1 is not supported (only versions 2 and 3); re-convert the model");
    if (g->version != 2 && g->version != 3)
        return pt_err_set(r->err, PT_ERR_FORMAT, "unknown GGUF version %u (expected 2 or 3)",
                          g->version);
    uint64_t n_tensors, n_kvs;
    if ((rc = read_u64(r, &n_tensors, "tensor count"))) return rc;
    if ((rc = read_u64(r, &n_kvs, "metadata count"))) return rc;
    uint64_t left = r->size - r->pos;
    if (n_kvs > left / GGUF_MIN_KV_BYTES)
        return pt_err_set(r->err, PT_ERR_FORMAT, "byte offset 16: metadata count %llu exceeds file (size %llu)",
                          (unsigned long long)n_kvs, (unsigned long long)r->size);
    if (n_tensors > left / GGUF_MIN_TENSOR_BYTES)
        return pt_err_set(r->err, PT_ERR_FORMAT, "byte offset 8: tensor count %llu exceeds file (size %llu)",
                          (unsigned long long)n_tensors, (unsigned long long)r->size);

    g->kvs = calloc(n_kvs ? (size_t)n_kvs : 1, sizeof(pt_gguf_kv));
    g->tensors = calloc(n_tensors ? (size_t)n_tensors : 1, sizeof(pt_gguf_tensor));
    if (!g->kvs || !g->tensors) return pt_err_set(r->err, PT_ERR_NOMEM, "out of memory for the header");

    g->alignment = GGUF_DEFAULT_ALIGNMENT;
    for (uint64_t i = 0; i < n_kvs; i++) {
        pt_gguf_kv *kv = &g->kvs[i];
        uint64_t at = r->pos;
        if ((rc = read_str(r, &kv->key, "key"))) return rc;
        g->n_kvs = i + 1; /* so that pt_gguf_free releases this entry's strings */
        if (kv->key.len == 0 || kv->key.len > GGUF_MAX_KEY_LEN)
            return pt_err_set(r->err, PT_ERR_FORMAT, "byte offset %llu: key length %llu out of range [1, %d]",
                              (unsigned long long)at, (unsigned long long)kv->key.len, GGUF_MAX_KEY_LEN);
        const char *key = printable(kv->key, nb, sizeof nb);
        for (uint64_t j = 0; j < i; j++)
            if (str_eq(g->kvs[j].key, kv->key))
                return pt_err_set(r->err, PT_ERR_FORMAT, "byte offset %llu: duplicate key '%s'",
                                  (unsigned long long)at, key);
        if ((rc = read_value(r, kv, key))) return rc;
    }

    const pt_gguf_kv *al = pt_gguf_find(g, "general.alignment");
    if (al) {
        uint32_t a;
        if (!pt_gguf_get_u32(g, "general.alignment", &a) || a == 0 || (a & (a - 1)) ||
            a > GGUF_MAX_ALIGNMENT)
            return pt_err_set(r->err, PT_ERR_FORMAT,
                              "general.alignment must be a power of two integer <= %u", GGUF_MAX_ALIGNMENT);
        g->alignment = a;
    }

    for (uint64_t i = 0; i < n_tensors; i++) {
        if ((rc = read_tensor_info(r, &g->tensors[i]))) return rc;
        g->n_tensors = i + 1;
    }

    uint64_t data_off = r->pos;
    uint64_t rem = data_off % g->alignment;
    if (rem && !pt_add_size(data_off, g->alignment - rem, &data_off)) data_off = UINT64_MAX;
    if (data_off > r->size) {
        if (n_tensors)
            return pt_err_set(r->err, PT_ERR_FORMAT,
                              "tensor data section starts at byte %llu, past end of file (size %llu)",
                              (unsigned long long)data_off, (unsigned long long)r->size);
        data_off = r->size;
    }
    g->data_offset = data_off;

    for (uint64_t i = 0; i < n_tensors; i++) {
        const pt_gguf_tensor *t = &g->tensors[i];
        const char *name = printable(t->name, nb, sizeof nb);
        if (t->offset % g->alignment)
            return pt_err_set(r->err, PT_ERR_FORMAT,
                              "tensor '%s': offset %llu is not a multiple of the alignment %llu", name,
                              (unsigned long long)t->offset, (unsigned long long)g->alignment);
        uint64_t start, end;
        if (!pt_add_size(data_off, t->offset, &start) || !pt_add_size(start, t->nbytes, &end) ||
            end > r->size)
            return pt_err_set(r->err, PT_ERR_FORMAT, "tensor '%s': data [%llu, %llu) past end of file (size %llu)",
                              name, (unsigned long long)(data_off + t->offset),
                              (unsigned long long)(data_off + t->offset + t->nbytes),
                              (unsigned long long)r->size);
    }

    if (n_tensors > 1) {
        const pt_gguf_tensor **idx = malloc((size_t)n_tensors * sizeof *idx);
        if (!idx) return pt_err_set(r->err, PT_ERR_NOMEM, "out of memory");
        for (uint64_t i = 0; i < n_tensors; i++) idx[i] = &g->tensors[i];
        qsort(idx, (size_t)n_tensors, sizeof *idx, cmp_tensor_ptr);
        for (uint64_t i = 1; i < n_tensors; i++) {
            if (str_eq(idx[i - 1]->name, idx[i]->name)) {
                rc = pt_err_set(r->err, PT_ERR_FORMAT, "duplicate tensor name '%s'",
                                printable(idx[i]->name, nb, sizeof nb));
                free(idx);
                return rc;
            }
        }
        free(idx);
    }
    return PT_OK;
}

int pt_gguf_parse(pt_gguf **out, const uint8_t *buf, uint64_t size, pt_err *err) {
    *out = NULL;
    if (!buf && size) return pt_err_set(err, PT_ERR_INVALID, "pt_gguf_parse: NULL buffer");
    pt_gguf *g = calloc(1, sizeof *g);
    if (!g) return pt_err_set(err, PT_ERR_NOMEM, "out of memory");
    g->base = buf;
    g->size = size;
    reader r = {buf, size, 0, err};
    int rc = parse(g, &r);
    if (rc) {
        pt_gguf_free(g);
        return rc;
    }
    *out = g;
    return PT_OK;
}

void pt_gguf_free(pt_gguf *g) {
    if (!g) return;
    if (g->kvs)
        for (uint64_t i = 0; i < g->n_kvs; i++) free(g->kvs[i].strs);
    free(g->kvs);
    free(g->tensors);
    free(g);
}

const pt_gguf_kv *pt_gguf_find(const pt_gguf *g, const char *key) {
    if (!g || !key) return NULL;
    pt_gguf_str k = {key, strlen(key)};
    for (uint64_t i = 0; i < g->n_kvs; i++)
        if (str_eq(g->kvs[i].key, k)) return &g->kvs[i];
    return NULL;
}

const pt_gguf_tensor *pt_gguf_find_tensor(const pt_gguf *g, const char *name) {
    if (!g || !name) return NULL;
    pt_gguf_str k = {name, strlen(name)};
    for (uint64_t i = 0; i < g->n_tensors; i++)
        if (str_eq(g->tensors[i].name, k)) return &g->tensors[i];
    return NULL;
}

/* Integer value of a scalar kv as a signed 128-bit-safe pair; false if not an integer. */
static bool kv_int(const pt_gguf_kv *kv, bool *neg, uint64_t *mag) {
    const uint8_t *p = kv->data;
    *neg = false;
    switch (kv->type) {
    case PT_GGUF_UINT8: *mag = p[0]; return true;
    case PT_GGUF_INT8: { int8_t v; memcpy(&v, p, 1); *neg = v < 0; *mag = v < 0 ? (uint64_t)(-(int64_t)v) : (uint64_t)v; return true; }
    case PT_GGUF_UINT16: { uint16_t v; memcpy(&v, p, 2); *mag = v; return true; }
    case PT_GGUF_INT16: { int16_t v; memcpy(&v, p, 2); *neg = v < 0; *mag = v < 0 ? (uint64_t)(-(int64_t)v) : (uint64_t)v; return true; }
    case PT_GGUF_UINT32: { uint32_t v; memcpy(&v, p, 4); *mag = v; return true; }
    case PT_GGUF_INT32: { int32_t v; memcpy(&v, p, 4); *neg = v < 0; *mag = v < 0 ? (uint64_t)(-(int64_t)v) : (uint64_t)v; return true; }
    case PT_GGUF_UINT64: { uint64_t v; memcpy(&v, p, 8); *mag = v; return true; }
    case PT_GGUF_INT64: {
        int64_t v;
        memcpy(&v, p, 8);
        *neg = v < 0;
        *mag = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
        return true;
    }
    default: return false;
    }
}

bool pt_gguf_get_u32(const pt_gguf *g, const char *key, uint32_t *out) {
    const pt_gguf_kv *kv = pt_gguf_find(g, key);
    bool neg;
    uint64_t mag;
    if (!kv || !kv_int(kv, &neg, &mag) || neg || mag > UINT32_MAX) return false;
    *out = (uint32_t)mag;
    return true;
}

bool pt_gguf_get_f32(const pt_gguf *g, const char *key, float *out) {
    const pt_gguf_kv *kv = pt_gguf_find(g, key);
    if (!kv) return false;
    if (kv->type == PT_GGUF_FLOAT32) {
        memcpy(out, kv->data, 4);
        return true;
    }
    if (kv->type == PT_GGUF_FLOAT64) {
        double d;
        memcpy(&d, kv->data, 8);
        *out = (float)d;
        return true;
    }
    return false;
}

bool pt_gguf_get_bool(const pt_gguf *g, const char *key, bool *out) {
    const pt_gguf_kv *kv = pt_gguf_find(g, key);
    if (!kv || kv->type != PT_GGUF_BOOL) return false;
    *out = kv->data[0] != 0;
    return true;
}

char *pt_gguf_get_str(const pt_gguf *g, const char *key) {
    const pt_gguf_kv *kv = pt_gguf_find(g, key);
    if (!kv || kv->type != PT_GGUF_STRING || kv->strs[0].len >= SIZE_MAX) return NULL;
    char *s = malloc((size_t)kv->strs[0].len + 1);
    if (!s) return NULL;
    memcpy(s, kv->strs[0].ptr, (size_t)kv->strs[0].len);
    s[kv->strs[0].len] = 0;
    return s;
}

const pt_gguf_kv *pt_gguf_get_arr(const pt_gguf *g, const char *key, pt_gguf_type elem_type) {
    const pt_gguf_kv *kv = pt_gguf_find(g, key);
    if (!kv || kv->type != PT_GGUF_ARRAY || kv->elem_type != elem_type) return NULL;
    return kv;
}
