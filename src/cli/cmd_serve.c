/* proteus serve: configuration (file, then flags, then checks), then the
 * server until SIGINT/SIGTERM. */
#include <stdio.h>
#include <stdlib.h>

#include "cli/cli.h"
#include "proteus/config.h"
#include "proteus/serve.h"

int cmd_serve(int argc, char **argv) {
    pt_server_config cfg;
    pt_server_config_default(&cfg);
    pt_err err = {{0}};
    int rc = pt_config_apply_flags(&cfg, argc, argv, &err);
    if (rc == PT_CONFIG_HELP) {
        pt_config_usage(stdout);
        pt_server_config_free(&cfg);
        return CLI_OK;
    }
    if (rc == PT_OK) rc = pt_config_finalize(&cfg, &err);
    if (rc != PT_OK) {
        fprintf(stderr, "proteus serve: %s\n", err.msg);
        pt_server_config_free(&cfg);
        return CLI_USAGE;
    }
    /* "default" names the cached default model, as in the other commands. */
    const char *path = cli_model_path(cfg.model);
    if (path != cfg.model) {
        free(cfg.model);
        cfg.model = pt_xstrdup(path);
    }
    pt_log_set_level(cfg.log_level);
    rc = pt_serve_run(&cfg);
    pt_server_config_free(&cfg);
    /* A layout the model or the devices refuse is a configuration error too. */
    return rc == 0 ? CLI_OK : rc == PT_SERVE_ERR_LAYOUT ? CLI_USAGE : CLI_FAIL;
}
