// The AVX2 + FMA + F16C build of the fast paths; used only where the CPU reports all three.
#include "cpu_float.h"

#if defined(__x86_64__) || defined(__i386__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#define MMGDINO_HAVE_AVX2_BUILD 1
#include <immintrin.h>  // AVX2 and F16C intrinsics, under this file's target
// The target pragma enables these instructions but does not define their macros for the preprocessor.
#define MMGDINO_AVX2 1  // AVX2, FMA and F16C
#endif

namespace mmgdino {
namespace cpu_avx2 {
#include "cpu_float_kernels.inc"
}  // namespace cpu_avx2
}  // namespace mmgdino

#ifdef MMGDINO_HAVE_AVX2_BUILD
#pragma GCC pop_options
#endif
