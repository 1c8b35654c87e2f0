/* Plain C references for the CUDA kernels. See kcuda_ref.h. */
#include "ref/kcuda_ref.h"

#include <math.h>
#include <string.h>

void kcuda_ref_rmsnorm(float *out, const float *x, const float *w, size_t T, size_t D, float eps)
{
    for (size_t t = 0; t < T; t++) {
        const float *xr = x + t * D;
        float *yr = out + t * D;
        double ss = 0.0;
        for (size_t i = 0; i < D; i++)
            ss += (double)xr[i] * xr[i];
        const float scale = 1.0f / sqrtf((float)(ss / (double)D) + eps);
        for (size_t i = 0; i < D; i++)
            yr[i] = xr[i] * scale * w[i];
    }
}

void kcuda_ref_rope(float *x, const int32_t *pos, const float *inv_freq, size_t T, size_t H,
                    size_t head_dim, size_t token_stride, size_t n_rot, int neox)
{
    const size_t half = n_rot / 2;
    for (size_t t = 0; t < T; t++) {
        for (size_t h = 0; h < H; h++) {
            float *xh = x + t * token_stride + h * head_dim;
            for (size_t p = 0; p < half; p++) {
                const float angle = (float)pos[t] * inv_freq[p];
                const float c = cosf(angle), s = sinf(angle);
                const size_t i0 = neox ? p : 2 * p, i1 = neox ? p + half : 2 * p + 1;
                const float a = xh[i0], b = xh[i1];
                xh[i0] = a * c - b * s;
                xh[i1] = a * s + b * c;
            }
        }
    }
}

void kcuda_ref_swiglu(float *out, const float *gate, const float *up, size_t T, size_t D,
                      size_t ld_out, size_t ld_gate, size_t ld_up)
{
    for (size_t t = 0; t < T; t++) {
        for (size_t i = 0; i < D; i++) {
            const float g = gate[t * ld_gate + i];
            const float silu = g / (1.0f + expf(-g));
            out[t * ld_out + i] = silu * up[t * ld_up + i];
        }
    }
}

void kcuda_ref_add(float *out, const float *a, const float *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        out[i] = a[i] + b[i];
}

void kcuda_ref_embed_f32(float *out, const float *table, const int32_t *ids, size_t T, size_t D,
                         size_t n_vocab)
{
    for (size_t t = 0; t < T; t++) {
        if (ids[t] < 0 || (size_t)ids[t] >= n_vocab)
            memset(out + t * D, 0, D * sizeof(float));
        else
            memcpy(out + t * D, table + (size_t)ids[t] * D, D * sizeof(float));
    }
}

void kcuda_ref_embed_bf16(float *out, const uint16_t *table, const int32_t *ids, size_t T,
                          size_t D, size_t n_vocab)
{
    for (size_t t = 0; t < T; t++) {
        for (size_t i = 0; i < D; i++) {
            float v = 0.0f;
            if (ids[t] >= 0 && (size_t)ids[t] < n_vocab) {
                /* bf16 is the upper 16 bits of an fp32. */
                uint32_t bits = (uint32_t)table[(size_t)ids[t] * D + i] << 16;
                memcpy(&v, &bits, sizeof v);
            }
            out[t * D + i] = v;
        }
    }
}
