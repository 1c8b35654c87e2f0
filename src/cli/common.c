#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
