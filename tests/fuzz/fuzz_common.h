/* Helpers shared by the harnesses (tests/fuzz/README.md).
 *
 * A harness that finds a bug must stop there, so the checks here end the
 * process (libFuzzer then saves the input); library code never does this. */
#ifndef PROTEUS_FUZZ_COMMON_H
#define PROTEUS_FUZZ_COMMON_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "proteus/util.h"

/* A wrong result (not a crash): report it and abort, which libFuzzer treats as a crash. */
#define FUZZ_CHECK(cond, ...)                                                  \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                      \
            fputc('\n', stderr);                                               \
            abort();                                                           \
        }                                                                      \
    } while (0)

/* The parsers that take a path get the input through this file, rewritten
 * for every input. A per-process name under /dev/shm (or TMPDIR) keeps a
 * fuzzer off the disk and away from another fuzzer's file. */
static char fuzz_paths[4][256];
static int fuzz_n_paths;

static inline void fuzz_remove_files(void) {
    for (int i = 0; i < fuzz_n_paths; i++) unlink(fuzz_paths[i]);
}

static inline const char *fuzz_write_file(const uint8_t *data, size_t size, const char *suffix) {
    char (*path)[256] = fuzz_paths;
    const char *dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    char want[256];
    snprintf(want, sizeof want, "%s/proteus-fuzz-%d%s", dir, (int)getpid(), suffix);
    int slot = -1;
    for (int i = 0; i < fuzz_n_paths; i++)
        if (!strcmp(path[i], want)) slot = i;
    if (slot < 0 && fuzz_n_paths < 4) {
        if (fuzz_n_paths == 0) atexit(fuzz_remove_files);
        slot = fuzz_n_paths++;
        snprintf(path[slot], sizeof path[slot], "%s", want);
    }
    if (slot < 0) abort(); /* a harness uses at most four names */
    FILE *f = fopen(path[slot], "wb");
    if (!f) abort();
    if (size && fwrite(data, 1, size, f) != size) abort();
    fclose(f);
    return path[slot];
}

/* Log lines (access log, warnings) would drown libFuzzer's own output and slow it down. */
static inline void fuzz_quiet(void) { pt_log_set_level(PT_LOG_ERROR + 1); }

#endif
