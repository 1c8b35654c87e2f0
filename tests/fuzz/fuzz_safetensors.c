/* pt_safetensors_parse on arbitrary bytes. An accepted file keeps the
 * parser's promise: 1..4 dims, F32/F16/BF16, and every tensor's bytes inside
 * the buffer with the size its shape and type give (touched at both ends so
 * that ASan sees a read past libFuzzer's exact-size input). */
#include "fuzz_common.h"
#include "model/safetensors.h"

static volatile uint8_t sink;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    pt_safetensors st;
    pt_err err;
    if (pt_safetensors_parse(&st, data, size, &err) != 0) {
        FUZZ_CHECK(err.msg[0], "an error without a message");
        return 0;
    }
    for (size_t i = 0; i < st.n_tensors; i++) {
        const pt_st_tensor *t = &st.tensors[i];
        FUZZ_CHECK(t->name != NULL, "tensor %zu: no name", i);
        FUZZ_CHECK(t->n_dims >= 1 && t->n_dims <= 4, "tensor %s: %u dims", t->name, t->n_dims);
        FUZZ_CHECK(t->type == PT_DTYPE_F32 || t->type == PT_DTYPE_F16 || t->type == PT_DTYPE_BF16,
                   "tensor %s: dtype %d", t->name, (int)t->type);
        uint64_t elems = 1;
        for (uint32_t d = 0; d < t->n_dims; d++) {
            FUZZ_CHECK(t->shape[d] == 0 || elems <= UINT64_MAX / t->shape[d], "tensor %s: shape overflows", t->name);
            elems *= t->shape[d];
        }
        uint64_t esize = t->type == PT_DTYPE_F32 ? 4 : 2;
        FUZZ_CHECK(elems <= UINT64_MAX / esize && elems * esize == t->nbytes, "tensor %s: %llu bytes for %llu elements",
                   t->name, (unsigned long long)t->nbytes, (unsigned long long)elems);
        if (t->nbytes) {
            FUZZ_CHECK(t->data >= data && t->nbytes <= size && (size_t)(t->data - data) <= size - t->nbytes,
                       "tensor %s outside the buffer", t->name);
            sink ^= t->data[0] ^ t->data[t->nbytes - 1];
        }
    }
    pt_safetensors_free(&st);
    return 0;
}
