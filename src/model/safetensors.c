/* safetensors reader; see safetensors.h for the layout. */
#include "model/safetensors.h"

#include "model/loader.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static bool json_u64(const cJSON *j, uint64_t *out) {
    if (!cJSON_IsNumber(j)) return false;
    double d = j->valuedouble;
    /* Integers above 2^53 cannot come through a double exactly. */
    if (!(d >= 0 && d <= 9007199254740992.0) || floor(d) != d) return false;
    *out = (uint64_t)d;
    return true;
}

static bool dtype_from_name(const char *s, pt_dtype *t) {
    if (!strcmp(s, "F32")) *t = PT_DTYPE_F32;
    else if (!strcmp(s, "F16")) *t = PT_DTYPE_F16;
    else if (!strcmp(s, "BF16")) *t = PT_DTYPE_BF16;
    else return false;
    return true;
}

static int cmp_name(const void *a, const void *b) {
    return strcmp(((const pt_st_tensor *)a)->name, ((const pt_st_tensor *)b)->name);
}

static int parse_entry(pt_st_tensor *t, const cJSON *e, const uint8_t *data, uint64_t data_size,
                       pt_err *err) {
    const char *name = t->name;
    if (!cJSON_IsObject(e))
        return pt_err_set(err, PT_ERR_FORMAT, "tensor '%.200s': entry is not an object", name);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *offs = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!cJSON_IsString(dt))
        return pt_err_set(err, PT_ERR_FORMAT, "tensor '%.200s': missing \"dtype\"", name);
    if (!dtype_from_name(dt->valuestring, &t->type))
        return pt_err_set(err, PT_ERR_UNSUPPORTED,
                          "tensor '%.200s': dtype %.32s not supported (F32, F16, BF16 only)", name,
                          dt->valuestring);
    if (!cJSON_IsArray(shape))
        return pt_err_set(err, PT_ERR_FORMAT, "tensor '%.200s': missing \"shape\"", name);
    int nd = cJSON_GetArraySize(shape);
    if (nd < 1 || nd > 4)
        return pt_err_set(err, PT_ERR_FORMAT, "tensor '%.200s': %d dimensions, expected 1 to 4", name,
                          nd);
    t->n_dims = (uint32_t)nd;
    uint64_t n_el = 1;
    for (int i = 0; i < 4; i++) {
        t->shape[i] = 1;
        if (i >= nd) continue;
        if (!json_u64(cJSON_GetArrayItem(shape, i), &t->shape[i]) || t->shape[i] == 0)
            return pt_err_set(err, PT_ERR_FORMAT,
                              "tensor '%.200s': shape[%d] is not a positive integer", name, i);
        if (!pt_mul_size(n_el, t->shape[i], &n_el))
            return pt_err_set(err, PT_ERR_FORMAT, "tensor '%.200s': element count overflows", name);
    }
    uint64_t b, e_off, want;
    if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2 ||
        !json_u64(cJSON_GetArrayItem(offs, 0), &b) || !json_u64(cJSON_GetArrayItem(offs, 1), &e_off))
        return pt_err_set(err, PT_ERR_FORMAT, "tensor '%.200s': \"data_offsets\" is not [begin, end]",
                          name);
    if (b > e_off || e_off > data_size)
        return pt_err_set(err, PT_ERR_FORMAT,
                          "tensor '%.200s': data_offsets [%llu, %llu) outside the data section (size %llu)",
                          name, (unsigned long long)b, (unsigned long long)e_off,
                          (unsigned long long)data_size);
    if (!pt_mul_size(n_el, pt_dtype_block_bytes(t->type), &want) || want != e_off - b)
        return pt_err_set(err, PT_ERR_FORMAT,
                          "tensor '%.200s': data_offsets span %llu bytes, shape and dtype %s need %llu",
                          name, (unsigned long long)(e_off - b), pt_dtype_name(t->type),
                          (unsigned long long)want);
    t->data = data + b;
    t->nbytes = want;
    return PT_OK;
}

static int parse(pt_safetensors *st, const uint8_t *buf, uint64_t size, cJSON **root, pt_err *err) {
    uint64_t hlen;
    if (size < 8)
        return pt_err_set(err, PT_ERR_FORMAT, "truncated: %llu bytes, the header length needs 8",
                          (unsigned long long)size);
    memcpy(&hlen, buf, 8);
    if (hlen > size - 8 || hlen > PT_ST_MAX_HEADER)
        return pt_err_set(err, PT_ERR_FORMAT, "byte offset 0: header length %llu exceeds file (size %llu)",
                          (unsigned long long)hlen, (unsigned long long)size);
    if (hlen < 2 || buf[8] != '{')
        return pt_err_set(err, PT_ERR_FORMAT, "byte offset 8: header is not a JSON object");
    *root = cJSON_ParseWithLength((const char *)buf + 8, (size_t)hlen);
    if (!cJSON_IsObject(*root))
        return pt_err_set(err, PT_ERR_FORMAT, "byte offset 8: header is not valid JSON");
    const uint8_t *data = buf + 8 + hlen;
    uint64_t data_size = size - 8 - hlen;

    size_t n = 0;
    for (const cJSON *e = (*root)->child; e; e = e->next)
        if (strcmp(e->string, "__metadata__") != 0) n++;
    st->tensors = calloc(n ? n : 1, sizeof(pt_st_tensor));
    if (!st->tensors) return pt_err_set(err, PT_ERR_NOMEM, "out of memory");
    for (const cJSON *e = (*root)->child; e; e = e->next) {
        if (!strcmp(e->string, "__metadata__")) continue;
        pt_st_tensor *t = &st->tensors[st->n_tensors];
        t->name = strdup(e->string);
        if (!t->name) return pt_err_set(err, PT_ERR_NOMEM, "out of memory");
        st->n_tensors++;
        if (t->name[0] == 0) return pt_err_set(err, PT_ERR_FORMAT, "empty tensor name");
        int rc = parse_entry(t, e, data, data_size, err);
        if (rc) return rc;
    }
    qsort(st->tensors, st->n_tensors, sizeof(pt_st_tensor), cmp_name);
    for (size_t i = 1; i < st->n_tensors; i++)
        if (!strcmp(st->tensors[i - 1].name, st->tensors[i].name))
            return pt_err_set(err, PT_ERR_FORMAT, "duplicate tensor name '%.200s'", st->tensors[i].name);
    return PT_OK;
}

int pt_safetensors_parse(pt_safetensors *st, const uint8_t *buf, uint64_t size, pt_err *err) {
    memset(st, 0, sizeof *st);
    cJSON *root = NULL;
    int rc = parse(st, buf, size, &root, err);
    cJSON_Delete(root);
    if (rc) {
        pt_safetensors_free(st);
        pt_model_err_sanitize(err);
    }
    return rc;
}

void pt_safetensors_free(pt_safetensors *st) {
    if (!st) return;
    for (size_t i = 0; i < st->n_tensors; i++) free(st->tensors[i].name);
    free(st->tensors);
    memset(st, 0, sizeof *st);
}
