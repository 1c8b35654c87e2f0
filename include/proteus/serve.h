/* `proteus serve`: the OpenAI-compatible server. Wires the HTTP layer
 * (http.h), the request/response formats (openai_api.h), the continuous
 * batcher (batcher.h) over one engine instance, and metrics. The loop thread
 * only does I/O, parsing and formatting; model work runs on the batcher's
 * thread and comes back through a uv_async. */
#ifndef PROTEUS_SERVE_H
#define PROTEUS_SERVE_H

#include "proteus/config.h"

/* Runs until SIGINT/SIGTERM (graceful: stop accepting, let running requests
 * finish within shutdown_grace_s, cancel the rest). Returns 0, or a negative
 * error after printing a one-line reason. */
int pt_serve_run(const pt_server_config *cfg);

#endif
