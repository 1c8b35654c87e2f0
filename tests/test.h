/* Minimal test harness: CHECK records a failure with file:line and goes on;
 * TEST_MAIN runs the listed tests and prints "N passed, N failed". A test
 * program exits 0 when all pass, 1 otherwise, 77 when it skips. */
#ifndef PROTEUS_TEST_H
#define PROTEUS_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int test_failures_;
static int test_checks_;

#define CHECK(cond)                                                                  \
    do {                                                                             \
        test_checks_++;                                                              \
        if (!(cond)) {                                                               \
            test_failures_++;                                                        \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
        }                                                                            \
    } while (0)

#define CHECK_MSG(cond, ...)                                                 \
    do {                                                                     \
        test_checks_++;                                                      \
        if (!(cond)) {                                                       \
            test_failures_++;                                                \
            fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                    \
            fputc('\n', stderr);                                             \
        }                                                                    \
    } while (0)

#define CHECK_EQ_INT(a, b) CHECK_MSG((long long)(a) == (long long)(b), "%lld != %lld", \
                                     (long long)(a), (long long)(b))
#define CHECK_NEAR(a, b, tol) CHECK_MSG(fabs((double)(a) - (double)(b)) <= (tol), \
                                        "%g vs %g (tol %g)", (double)(a), (double)(b), (double)(tol))

typedef struct {
    const char *name;
    void (*fn)(void);
} test_case;

/* Skips the whole program (exit 77 = ctest "skipped") with a reason. */
#define TEST_SKIP(...)                         \
    do {                                       \
        fprintf(stderr, "SKIP: " __VA_ARGS__); \
        fputc('\n', stderr);                   \
        exit(77);                              \
    } while (0)

static inline int test_run_all(const test_case *tests, size_t n) {
    int passed = 0, failed = 0;
    for (size_t i = 0; i < n; i++) {
        int before = test_failures_;
        tests[i].fn();
        if (test_failures_ == before) {
            passed++;
        } else {
            failed++;
            fprintf(stderr, "FAIL %s\n", tests[i].name);
        }
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}

#define TEST_MAIN(...)                                                        \
    int main(void) {                                                          \
        static const test_case tests_[] = {__VA_ARGS__};                      \
        return test_run_all(tests_, sizeof(tests_) / sizeof(tests_[0]));      \
    }
#define TEST(fn) {#fn, fn}

#endif
