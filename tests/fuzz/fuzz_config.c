/* pt_config_load_file on an arbitrary `proteus serve --config` file (written
 * to a temp file: the loader takes a path), then, for a file it accepts,
 * pt_config_finalize and pt_config_to_json as `proteus serve` runs them. A
 * refusal must carry a message. */
#include "fuzz_common.h"
#include "proteus/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static bool init;
    if (!init) {
        fuzz_quiet();
        unsetenv("PROTEUS_API_KEY"); /* finalize reads it: the outcome must depend on the input only */
        init = true;
    }
    const char *path = fuzz_write_file(data, size, "-serve.json");
    pt_server_config c;
    pt_server_config_default(&c);
    pt_err err;
    err.msg[0] = 0;
    int rc = pt_config_load_file(&c, path, &err);
    if (rc == 0) rc = pt_config_finalize(&c, &err);
    if (rc == 0) {
        char *json = pt_config_to_json(&c, true);
        FUZZ_CHECK(json && json[0] == '{', "pt_config_to_json");
        free(json);
    } else {
        FUZZ_CHECK(err.msg[0], "error %d without a message", rc);
    }
    pt_server_config_free(&c);
    return 0;
}
