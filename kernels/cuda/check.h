/* Error checks for CUDA runtime calls and kernel launches.
 *
 * Every check reports the failing call with file:line on stderr. Library code
 * never exits: CUDA_CHECK and CUDA_CHECK_LAUNCH return the error from the
 * enclosing function, which must therefore return cudaError_t. Tests and tools
 * that cannot go on after a failure use CUDA_CHECK_FATAL, which aborts.
 *
 * A launch check (cudaGetLastError right after <<<...>>>) catches errors of the
 * launch itself: bad grid or block sizes, no kernel image for this device.
 * Faults while the kernel runs are asynchronous and surface at a later
 * synchronizing call, which is why callers check cudaStreamSynchronize too.
 * Usable from C and CUDA sources alike. */
#ifndef PROTEUS_KCUDA_CHECK_H
#define PROTEUS_KCUDA_CHECK_H

#include <stdio.h>
#include <stdlib.h>
#include <cuda_runtime_api.h>

#define KCUDA_REPORT(err, what)                                                  \
    fprintf(stderr, "%s:%d: %s failed: %s (%s)\n", __FILE__, __LINE__, (what),  \
            cudaGetErrorName(err), cudaGetErrorString(err))

#define CUDA_CHECK(call)                                                         \
    do {                                                                         \
        cudaError_t kcuda_err_ = (call);                                         \
        if (kcuda_err_ != cudaSuccess) {                                         \
            KCUDA_REPORT(kcuda_err_, #call);                                     \
            return kcuda_err_;                                                   \
        }                                                                        \
    } while (0)

/* Place directly after a kernel launch; name is the kernel, for the message. */
#define CUDA_CHECK_LAUNCH(name)                                                  \
    do {                                                                         \
        cudaError_t kcuda_err_ = cudaGetLastError();                             \
        if (kcuda_err_ != cudaSuccess) {                                         \
            KCUDA_REPORT(kcuda_err_, "launch of " name);                         \
            return kcuda_err_;                                                   \
        }                                                                        \
    } while (0)

#define CUDA_CHECK_FATAL(call)                                                   \
    do {                                                                         \
        cudaError_t kcuda_err_ = (call);                                         \
        if (kcuda_err_ != cudaSuccess) {                                         \
            KCUDA_REPORT(kcuda_err_, #call);                                     \
            abort();                                                             \
        }                                                                        \
    } while (0)

#endif
