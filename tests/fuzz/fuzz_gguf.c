/* pt_gguf_parse on arbitrary bytes: the header, metadata and tensor table of
 * a GGUF file. A file it accepts must keep its promise that everything lies
 * inside the buffer: every string and tensor is touched at both ends (ASan
 * sees a read past libFuzzer's exact-size copy of the input), and the
 * tokenizer is loaded from its metadata as pt_tokenizer_load does. */
#include "fuzz_common.h"
#include "proteus/gguf.h"
#include "proteus/tokenizer.h"

static volatile uint8_t sink;

static void touch(const pt_gguf *g, const void *p, uint64_t len) {
    const uint8_t *b = p;
    if (!len) return;
    FUZZ_CHECK(b >= g->base && len <= g->size && b - g->base <= (ptrdiff_t)(g->size - len), "range outside the buffer");
    sink ^= b[0] ^ b[len - 1];
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static bool init;
    if (!init) {
        fuzz_quiet();
        init = true;
    }
    pt_gguf *g = NULL;
    pt_err err;
    if (pt_gguf_parse(&g, data, size, &err) != 0) {
        FUZZ_CHECK(g == NULL, "an error with a result");
        FUZZ_CHECK(err.msg[0], "an error without a message");
        return 0;
    }
    for (uint64_t i = 0; i < g->n_kvs; i++) {
        const pt_gguf_kv *kv = &g->kvs[i];
        touch(g, kv->key.ptr, kv->key.len);
        if (kv->strs)
            for (uint64_t k = 0; k < kv->n; k++) touch(g, kv->strs[k].ptr, kv->strs[k].len);
    }
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const pt_gguf_tensor *t = &g->tensors[i];
        touch(g, t->name.ptr, t->name.len);
        FUZZ_CHECK(t->n_dims >= 1 && t->n_dims <= 4, "tensor %llu: %u dims", (unsigned long long)i, t->n_dims);
        FUZZ_CHECK(t->offset <= UINT64_MAX - g->data_offset, "tensor offset overflows");
        touch(g, g->base + g->data_offset + t->offset, t->nbytes);
    }
    pt_tokenizer *tok = NULL;
    if (pt_tokenizer_load_gguf(&tok, g, &err) == 0) pt_tokenizer_free(tok);
    pt_gguf_free(g);
    return 0;
}
