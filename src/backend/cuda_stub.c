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
#endif
