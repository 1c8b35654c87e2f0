/* pt_oai_parse on arbitrary completions request bodies (what POST /v1/completions hands it),
 * with the outcome checked by fuzz_oai_check. */
#include "fuzz_oai.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* The server's bodies are NUL-terminated (pt_http_body); so is this copy. */
    char *body = malloc(size + 1);
    memcpy(body, data, size);
    body[size] = 0;
    fuzz_oai_check(PT_OAI_COMPLETION, body, size);
    free(body);
    return 0;
}
