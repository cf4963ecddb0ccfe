// The AVX-512 build of the fast paths without BF16 (F, BW, VL, DQ: Skylake-SP, Ice Lake); used where the CPU reports
// all of them but not AVX512_BF16.
#include "cpu_float.h"

#if defined(__x86_64__) || defined(__i386__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq")
#define MMGDINO_HAVE_AVX512_BUILD 1
#include <immintrin.h>  // F16C and AVX-512 intrinsics, under this file's target
// The target pragma enables these instructions but does not define their macros for the preprocessor.
#define MMGDINO_AVX2 1  // AVX2, FMA and F16C
#endif

namespace mmgdino {
namespace cpu_avx512 {
#include "cpu_float_kernels.inc"
}  // namespace cpu_avx512
}  // namespace mmgdino

#ifdef MMGDINO_HAVE_AVX512_BUILD
#pragma GCC pop_options
#endif
