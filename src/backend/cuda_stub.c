/* Stand-in for the CUDA backend in builds without the CUDA toolkit. */
#ifndef PROTEUS_HAVE_CUDA
#include "backend/backend.h"

int pt_backend_cuda_create(pt_backend **out, pt_instance *e, pt_err *err) {
    *out = NULL;
    return pt_err_set(err, PT_ERR_UNSUPPORTED, "this build of proteus has no CUDA backend (nvcc was not found at build time)");
}

int pt_backend_cuda_probe(int first, int n, pt_err *err) {
    return pt_err_set(err, PT_ERR_UNSUPPORTED,
                      "CUDA devices cuda%d..cuda%d: this build of proteus has no CUDA backend (nvcc was not found at "
                      "build time)",
                      first, first + n - 1);
}

int pt_backend_cuda_streams_create(const int *ordinals, int n, void **streams, pt_err *err) {
    (void)ordinals;
    for (int i = 0; i < n; i++) streams[i] = NULL;
    return pt_err_set(err, PT_ERR_UNSUPPORTED, "this build of proteus has no CUDA backend");
}

void pt_backend_cuda_streams_free(const int *ordinals, int n, void **streams) {
    (void)ordinals;
    (void)n;
    (void)streams;
}

int pt_backend_cuda_sync(const int *ordinals, int n, pt_err *err) {
    (void)ordinals;
    (void)n;
    return pt_err_set(err, PT_ERR_UNSUPPORTED, "this build of proteus has no CUDA backend");
}
#endif
