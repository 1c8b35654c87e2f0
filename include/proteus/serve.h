/* `proteus serve`: the OpenAI-compatible server. Wires the HTTP layer
 * (http.h), the request/response formats (openai_api.h), one continuous
 * batcher (batcher.h) per engine instance of the layout over a fabric of
 * devices (fabric.h), the scheduler (scheduler/scheduler.h: placement, and
 * under the dynamic policy merges and splits) with its cost model
 * calibrated at start-up, and metrics. The loop thread only does I/O,
 * parsing, scheduling and formatting; model work runs on the batchers'
 * threads and comes back through a uv_async. */
#ifndef PROTEUS_SERVE_H
#define PROTEUS_SERVE_H

#include "proteus/config.h"

/* pt_serve_run's error when the devices or the model refuse the configured
 * layout at start-up (a TP degree above the model's KV heads, a budget too
 * small for a shard), or the scheduler's configuration (a cost file that
 * does not load, no allowed degree that fits): a configuration error, for
 * which the CLI exits 2. */
enum { PT_SERVE_ERR_LAYOUT = -30 };

/* Runs until SIGINT/SIGTERM (graceful: stop accepting, let running requests
 * finish within shutdown_grace_s, cancel the rest). cfg must have been
 * finalized (pt_config_finalize: its plan). Returns 0, or a negative error
 * (PT_SERVE_ERR_LAYOUT, or another) after printing a one-line reason. */
int pt_serve_run(const pt_server_config *cfg);

#endif
