// The AVX2 + FMA build of the float32 fast path; used only where the CPU reports AVX2 and FMA.
#include "cpu_float.h"

#if defined(__x86_64__) || defined(__i386__)
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define MMGDINO_HAVE_AVX2_BUILD 1
#endif

namespace mmgdino {
namespace cpu_avx2 {
#include "cpu_float_kernels.inc"
}  // namespace cpu_avx2
}  // namespace mmgdino

#ifdef MMGDINO_HAVE_AVX2_BUILD
#pragma GCC pop_options
#endif
