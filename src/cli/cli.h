/* Sub-commands of the `proteus` binary and what they share. Exit codes:
 * 0 success, 1 runtime failure (model could not be loaded, generation
 * failed), 2 usage error (bad flag or value). */
#ifndef PROTEUS_CLI_H
#define PROTEUS_CLI_H

#include <stdbool.h>
#include <stdint.h>

#include "bench/replay.h"

enum { CLI_OK = 0, CLI_FAIL = 1, CLI_USAGE = 2 };

int cmd_generate(int argc, char **argv);
int cmd_perf(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_simulate(int argc, char **argv);

/* Resolves -m: NULL or "default" -> the cached default model. The result is
 * static storage or `arg` itself. */
const char *cli_model_path(const char *arg);

/* Strict number parsing for flags: the whole string must be a number in
 * [lo, hi]; on failure prints "proteus: FLAG: ..." and returns false. */
bool cli_parse_long(const char *flag, const char *s, long lo, long hi, long *out);
bool cli_parse_float(const char *flag, const char *s, double lo, double hi, double *out);
bool cli_parse_u64(const char *flag, const char *s, uint64_t *out);

/* --device: "cpu", "cuda" or "cuda:N" (device ordinal N) into the engine
 * options; prints "proteus: FLAG: ..." and returns false otherwise. */
bool cli_parse_device(const char *flag, const char *s, int *device, int *index);

/* The trace, window, time and length flags `proteus bench` and `proteus
 * simulate` share (--format, --speedup, --rate, --burstiness, --start,
 * --duration, --num-requests, --warmup, --input-scale, --output-scale,
 * --max-input, --max-output, --seed): true when f is one of them (*ok says
 * whether its value was good; the message names `proteus CMD` and f). */
bool cli_parse_trace_flag(const char *cmd, const char *f, const char *v, pt_replay_opts *ro, pt_trace_format *format,
                          bool *ok);

/* Default thread count: the cores this process may run on. */
int cli_default_threads(void);

#endif
