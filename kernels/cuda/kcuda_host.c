/* Host-side parts of the CUDA kernels' API: device discovery and the RoPE
 * frequency table. Plain C; no device code. */
#include <math.h>

#include "kcuda.h"

int kcuda_device_count(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        /* Without a driver or device the runtime records an error; clear it
         * so the caller's next cudaGetLastError does not see it. */
        (void)cudaGetLastError();
        return 0;
    }
    return n;
}

int kcuda_rope_inv_freq(float *inv_freq, size_t n_rot, float theta,
                        const kcuda_rope_llama3 *llama3)
{
    if (!inv_freq || n_rot == 0 || n_rot % 2 != 0 || !(theta > 0.0f))
        return -1;
    if (llama3 && !(llama3->factor > 0.0f && llama3->orig_ctx > 0.0f &&
                    llama3->low_freq_factor > 0.0f &&
                    llama3->high_freq_factor > llama3->low_freq_factor))
        return -1;

    const double two_pi = 6.283185307179586476925286766559;
    for (size_t i = 0; i < n_rot / 2; i++) {
        double f = pow((double)theta, -(double)(2 * i) / (double)n_rot);
        if (llama3) {
            const double ctx = llama3->orig_ctx, lo = llama3->low_freq_factor,
                         hi = llama3->high_freq_factor, factor = llama3->factor;
            const double wavelen = two_pi / f;
            if (wavelen > ctx / lo) {
                f = f / factor;
            } else if (wavelen >= ctx / hi) {
                /* Medium band, ends included as in the Llama 3.1 reference. */
                const double smooth = (ctx / wavelen - lo) / (hi - lo);
                f = (1.0 - smooth) * f / factor + smooth * f;
            }
        }
        inv_freq[i] = (float)f;
    }
    return 0;
}
