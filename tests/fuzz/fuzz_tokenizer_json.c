/* pt_tokenizer_load_json on an arbitrary tokenizer.json (written to a temp
 * file: the loader takes a path). A tokenizer it accepts must then encode and
 * decode a fixed text, special tokens included, without failing. */
#include "fuzz_common.h"
#include "proteus/tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static bool init;
    if (!init) {
        fuzz_quiet();
        init = true;
    }
    const char *path = fuzz_write_file(data, size, "-tokenizer.json");
    pt_tokenizer *t = NULL;
    pt_err err;
    if (pt_tokenizer_load_json(&t, path, &err) != 0) {
        FUZZ_CHECK(t == NULL && err.msg[0], "an error with a result, or without a message");
        return 0;
    }
    static const char text[] = "Hello, world! <|im_start|>user\n caf\xc3\xa9 \xf0\x9f\x98\x80 \xff 123  \t\n</s><s>";
    int32_t *ids = NULL;
    size_t n = 0;
    for (int special = 0; special < 2; special++) {
        FUZZ_CHECK(pt_tokenizer_encode(t, text, sizeof text - 1, true, special, &ids, &n, &err) == 0, "encode: %s", err.msg);
        size_t vocab = pt_tokenizer_vocab_size(t);
        for (size_t i = 0; i < n; i++) FUZZ_CHECK(ids[i] >= 0 && (size_t)ids[i] < vocab, "id %d", ids[i]);
        char *out = NULL;
        size_t len = 0;
        FUZZ_CHECK(pt_tokenizer_decode(t, ids, n, false, &out, &len) == 0, "decode failed");
        free(out);
        free(ids);
    }
    pt_tokenizer_free(t);
    return 0;
}
