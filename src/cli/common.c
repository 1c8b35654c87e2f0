#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/replay.h"
#include "cli/cli.h"
#include "proteus/engine.h"

#define DEFAULT_MODEL_FILE "SmolLM2-135M-Instruct.Q4_1.gguf"

const char *cli_model_path(const char *arg) {
    static char buf[4096];
    if (arg && strcmp(arg, "default") != 0) return arg;
    const char *dir = getenv("PROTEUS_MODEL_DIR");
    if (dir) {
        snprintf(buf, sizeof(buf), "%s/%s", dir, DEFAULT_MODEL_FILE);
    } else {
        const char *home = getenv("HOME");
        snprintf(buf, sizeof(buf), "%s/.cache/proteus/models/%s", home ? home : ".", DEFAULT_MODEL_FILE);
    }
    return buf;
}

bool cli_parse_long(const char *flag, const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = s ? strtol(s, &end, 10) : 0;
    if (!s || !*s || *end || errno || v < lo || v > hi) {
        fprintf(stderr, "proteus: %s: expected an integer in [%ld, %ld], got '%s'\n", flag, lo, hi, s ? s : "");
        return false;
    }
    *out = v;
    return true;
}

bool cli_parse_float(const char *flag, const char *s, double lo, double hi, double *out) {
    char *end;
    errno = 0;
    double v = s ? strtod(s, &end) : 0;
    if (!s || !*s || *end || errno || !isfinite(v) || v < lo || v > hi) {
        fprintf(stderr, "proteus: %s: expected a number in [%g, %g], got '%s'\n", flag, lo, hi, s ? s : "");
        return false;
    }
    *out = v;
    return true;
}

bool cli_parse_u64(const char *flag, const char *s, uint64_t *out) {
    char *end;
    errno = 0;
    unsigned long long v = s ? strtoull(s, &end, 10) : 0;
    if (!s || !*s || *end || errno || s[0] == '-') {
        fprintf(stderr, "proteus: %s: expected a non-negative integer, got '%s'\n", flag, s ? s : "");
        return false;
    }
    *out = v;
    return true;
}

int cli_default_threads(void) {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0) return n;
    }
    return 1;
}

bool cli_parse_device(const char *flag, const char *s, int *device, int *index) {
    long n = 0;
    if (!strcmp(s, "cpu")) {
        *device = PT_DEVICE_CPU;
        *index = 0;
        return true;
    }
    if (!strncmp(s, "cuda", 4) && (s[4] == '\0' || (s[4] == ':' && cli_parse_long(flag, s + 5, 0, 1023, &n)))) {
        *device = PT_DEVICE_CUDA;
        *index = (int)n;
        return true;
    }
    if (strncmp(s, "cuda:", 5) != 0) fprintf(stderr, "proteus: %s: expected cpu, cuda or cuda:N, got \"%s\"\n", flag, s);
    return false;
}

bool cli_parse_trace_flag(const char *cmd, const char *f, const char *v, pt_replay_opts *ro, pt_trace_format *format,
                          bool *ok) {
    static const struct {
        const char *name;
        pt_trace_format f;
    } fmts[] = {{"auto", PT_TRACE_AUTO}, {"azure", PT_TRACE_AZURE}, {"mooncake", PT_TRACE_MOONCAKE},
                {"burstgpt", PT_TRACE_BURSTGPT}, {"proteus", PT_TRACE_PROTEUS}};
    long l = 0;
    *ok = true;
    if (!strcmp(f, "--format")) {
        for (size_t i = 0; i < sizeof(fmts) / sizeof(fmts[0]); i++)
            if (!strcmp(v, fmts[i].name)) {
                *format = fmts[i].f;
                return true;
            }
        fprintf(stderr, "proteus %s: --format: expected auto, azure, mooncake, burstgpt or proteus, got '%s'\n", cmd, v);
        *ok = false;
    } else if (!strcmp(f, "--speedup")) *ok = cli_parse_float(f, v, 1e-6, 1e9, &ro->speedup);
    else if (!strcmp(f, "--rate")) *ok = cli_parse_float(f, v, 1e-6, 1e9, &ro->rate);
    else if (!strcmp(f, "--burstiness")) *ok = cli_parse_float(f, v, 1e-3, 1e6, &ro->burstiness);
    else if (!strcmp(f, "--start")) *ok = cli_parse_float(f, v, 0, 1e12, &ro->start);
    else if (!strcmp(f, "--duration")) *ok = cli_parse_float(f, v, 1e-9, 1e12, &ro->duration);
    else if (!strcmp(f, "--num-requests")) *ok = cli_parse_long(f, v, 1, 1L << 40, &l), ro->num_requests = (size_t)l;
    else if (!strcmp(f, "--warmup")) *ok = cli_parse_long(f, v, 0, 1L << 30, &l), ro->warmup = (size_t)l;
    else if (!strcmp(f, "--input-scale")) *ok = cli_parse_float(f, v, 1e-9, 1e6, &ro->input_scale);
    else if (!strcmp(f, "--output-scale")) *ok = cli_parse_float(f, v, 1e-9, 1e6, &ro->output_scale);
    else if (!strcmp(f, "--max-input")) *ok = cli_parse_long(f, v, 1, UINT32_MAX, &l), ro->max_input = (uint32_t)l;
    else if (!strcmp(f, "--max-output")) *ok = cli_parse_long(f, v, 1, UINT32_MAX, &l), ro->max_output = (uint32_t)l;
    else if (!strcmp(f, "--seed")) *ok = cli_parse_u64(f, v, &ro->seed);
    else return false;
    return true;
}
