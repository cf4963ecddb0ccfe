// The AVX-512 + BF16 build of the fast paths (F, BW, VL, DQ and BF16: Cooper Lake, Sapphire Rapids, Zen 4 and
// later); used only where the CPU reports all of them.
#include "cpu_float.h"

#if defined(__x86_64__) || defined(__i386__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")
#define MMGDINO_HAVE_AVX512_BF16_BUILD 1
#include <immintrin.h>  // F16C, AVX-512 and BF16 intrinsics, under this file's target
// The target pragma enables these instructions but does not define their macros for the preprocessor.
#define MMGDINO_AVX2 1  // AVX2, FMA and F16C
#define MMGDINO_AVX512BF16 1
#endif

namespace mmgdino {
namespace cpu_avx512_bf16 {
#include "cpu_float_kernels.inc"
}  // namespace cpu_avx512_bf16
}  // namespace mmgdino

#ifdef MMGDINO_HAVE_AVX512_BF16_BUILD
#pragma GCC pop_options
#endif
