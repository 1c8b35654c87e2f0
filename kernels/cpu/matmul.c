/* CPU matmul front end: ISA detection, activation quantization, dispatch to
 * the fast paths, and the reference matmul (one kcpu_ref_dot per element). */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cpu/kcpu_internal.h"
#include "cpu/kcpu_matmul.h"

static kcpu_isa hw_isa(void);

static kcpu_isa detect_isa(void) {
    kcpu_isa best = hw_isa();
    const char *cap = getenv("PROTEUS_ISA");
    if (cap) {
        kcpu_isa want = best;
        if (!strcasecmp(cap, "ref")) want = KCPU_ISA_REF;
        else if (!strcasecmp(cap, "avx2")) want = KCPU_ISA_AVX2;
        else if (!strcasecmp(cap, "avx512")) want = KCPU_ISA_AVX512;
        if (want < best) best = want;
    }
    return best;
}

/* Detection is idempotent, so a race between threads computing it at the
 * same time only repeats work; the relaxed atomics keep the read tear-free. */
static int isa_cached = -1;

kcpu_isa kcpu_isa_active(void) {
    int v = __atomic_load_n(&isa_cached, __ATOMIC_RELAXED);
    if (v < 0) {
        v = (int)detect_isa();
        __atomic_store_n(&isa_cached, v, __ATOMIC_RELAXED);
    }
    return (kcpu_isa)v;
}

/* What the hardware has, ignoring PROTEUS_ISA: kcpu_matmul_isa may be asked
 * for a path above the cap, never for one the CPU lacks. */
static kcpu_isa hw_isa(void) {
    static int hw = -1;
    int v = __atomic_load_n(&hw, __ATOMIC_RELAXED);
    if (v < 0) {
        kcpu_isa best = KCPU_ISA_REF;
#if defined(__x86_64__) || defined(__i386__)
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
            __builtin_cpu_supports("f16c"))
            best = KCPU_ISA_AVX2;
        /* The AVX-512 file is compiled with VNNI and DQ as well, so all of
         * them must be present before its code may run. */
        if (best == KCPU_ISA_AVX2 && __builtin_cpu_supports("avx512f") &&
            __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
            __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vnni"))
            best = KCPU_ISA_AVX512;
#endif
        v = (int)best;
        __atomic_store_n(&hw, v, __ATOMIC_RELAXED);
    }
    return (kcpu_isa)v;
}

const char *kcpu_isa_name(kcpu_isa isa) {
    switch (isa) {
    case KCPU_ISA_REF: return "ref";
    case KCPU_ISA_AVX2: return "avx2";
    case KCPU_ISA_AVX512: return "avx512";
    }
    return "?";
}

pt_dtype kcpu_act_type(pt_dtype wtype) {
    switch (wtype) {
    case PT_DTYPE_Q4_0:
    case PT_DTYPE_Q8_0: return PT_DTYPE_Q8_0;
    case PT_DTYPE_Q4_1: return PT_DTYPE_Q8_1;
    case PT_DTYPE_Q4_K:
    case PT_DTYPE_Q6_K: return PT_DTYPE_Q8_K;
    default: return PT_DTYPE_F32;
    }
}

bool kcpu_weight_type_supported(pt_dtype wtype) {
    switch (wtype) {
    case PT_DTYPE_F32:
    case PT_DTYPE_F16:
    case PT_DTYPE_BF16:
    case PT_DTYPE_Q4_0:
    case PT_DTYPE_Q4_1:
    case PT_DTYPE_Q8_0:
    case PT_DTYPE_Q4_K:
    case PT_DTYPE_Q6_K: return true;
    default: return false;
    }
}

void kcpu_quantize_act(pt_dtype wtype, void *dst, const float *x, size_t K) {
    pt_dtype at = kcpu_act_type(wtype);
    if ((at == PT_DTYPE_Q8_0 || at == PT_DTYPE_Q8_1) && kcpu_isa_active() >= KCPU_ISA_AVX512) {
        kcpu_quantize_act_avx512(at, dst, x, K); /* same bytes as the reference */
        return;
    }
    switch (at) {
    case PT_DTYPE_Q8_0: kcpu_ref_quantize_q8_0(dst, x, K); break;
    case PT_DTYPE_Q8_1: kcpu_ref_quantize_q8_1(dst, x, K); break;
    case PT_DTYPE_Q8_K: kcpu_ref_quantize_q8_k(dst, x, K); break;
    default: memcpy(dst, x, K * sizeof(float)); break;
    }
}

static void matmul_ref(pt_dtype wtype, const void *W, size_t w_stride, size_t n0, size_t n1,
                       const void *X, size_t x_stride, size_t T, size_t K, float *Y, size_t ldy) {
    for (size_t t = 0; t < T; t++)
        for (size_t n = n0; n < n1; n++)
            Y[t * ldy + n] = kcpu_ref_dot(wtype, (const uint8_t *)W + n * w_stride,
                                          (const uint8_t *)X + t * x_stride, K);
}

void kcpu_matmul_isa(kcpu_isa isa, pt_dtype wtype, const void *W, size_t w_stride, size_t n0,
                     size_t n1, const void *X, size_t x_stride, size_t T, size_t K, float *Y,
                     size_t ldy) {
    if (n1 <= n0 || T == 0) return;
    if (isa > hw_isa()) isa = hw_isa();
    if (isa >= KCPU_ISA_AVX512 &&
        kcpu_matmul_avx512(wtype, W, w_stride, n0, n1, X, x_stride, T, K, Y, ldy))
        return;
    if (isa >= KCPU_ISA_AVX2 &&
        kcpu_matmul_avx2(wtype, W, w_stride, n0, n1, X, x_stride, T, K, Y, ldy))
        return;
    matmul_ref(wtype, W, w_stride, n0, n1, X, x_stride, T, K, Y, ldy);
}

void kcpu_matmul(pt_dtype wtype, const void *W, size_t w_stride, size_t n0, size_t n1,
                 const void *X, size_t x_stride, size_t T, size_t K, float *Y, size_t ldy) {
    kcpu_matmul_isa(kcpu_isa_active(), wtype, W, w_stride, n0, n1, X, x_stride, T, K, Y, ldy);
}
