// The fast paths of the CPU kernels (float32, bfloat16 and float16 inputs, float32 arithmetic), compiled four
// times from cpu_float_kernels.inc (the portable baseline, AVX2+FMA+F16C, AVX-512, AVX-512 with BF16) and picked
// once at run time. Plain pointers only: nothing here may pull in ATen's inline functions.
#pragma once

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mmgdino/sampling.h"

namespace mmgdino {

constexpr int kMaxTapsPerHead = 256;  // num_levels * num_points * 4 corners the fast path handles

// bfloat16 as its bits: the kernels widen it to float32 in registers (and round back on the way out).
struct Bf16 {
  uint16_t bits;
};

// T: float, Bf16 or _Float16; every kernel takes all three and accumulates in float32.
template <typename T>
struct MsdaArgsT {
  const T* value;
  const int64_t* shapes;
  const int64_t* starts;
  const T* loc;
  const T* attn;
  int64_t num_values, num_heads, num_queries, num_levels, num_points;
};

template <typename T>
struct ContrastiveArgsT {
  const T* vision;   // (batch, num_rows, dim), dim a multiple of 8
  const T* text;     // (batch, num_tokens, dim)
  const bool* mask;  // (batch, num_tokens)
  float scale, bias;
  int64_t num_rows, num_tokens, dim, max_text_len;
};

// Per build: the forward over (batch * query) rows [begin, end); the backward over (batch * head) [begin, end)
// into a float32 grad_value; contrastive rows [begin, end) of the flattened (batch * num_rows), out
// (.., max_text_len) or, reduced, (..,); elements [begin, end) of a flat activation quantized to uint8. The MSDA
// entry points return false for a head size they lack.
#define MMGDINO_DECLARE_CPU_KERNELS(ns, T)                                                                           \
  namespace ns {                                                                                                     \
  bool forward_rows_any(int chunks, const MsdaArgsT<T>& a, T* out, int64_t begin, int64_t end);                      \
  bool backward_heads_any(int chunks, const MsdaArgsT<T>& a, const T* grad_out, float* grad_value, T* grad_loc,      \
                          T* grad_attn, int64_t begin, int64_t end);                                                 \
  void contrastive_rows(const ContrastiveArgsT<T>& a, bool reduce_max, float* out, int64_t begin, int64_t end);      \
  void quantize_uint8_span(const T* x, uint8_t* out, int64_t begin, int64_t end, float inv_scale, float zero_point); \
  }

#define MMGDINO_DECLARE_CPU_BUILD(ns)    \
  MMGDINO_DECLARE_CPU_KERNELS(ns, float) \
  MMGDINO_DECLARE_CPU_KERNELS(ns, Bf16)  \
  MMGDINO_DECLARE_CPU_KERNELS(ns, _Float16)

MMGDINO_DECLARE_CPU_BUILD(cpu_baseline)
MMGDINO_DECLARE_CPU_BUILD(cpu_avx2)
MMGDINO_DECLARE_CPU_BUILD(cpu_avx512)
MMGDINO_DECLARE_CPU_BUILD(cpu_avx512_bf16)

#undef MMGDINO_DECLARE_CPU_BUILD
#undef MMGDINO_DECLARE_CPU_KERNELS

// The builds, best last. avx2: AVX2 + FMA + F16C (every AVX2 CPU has F16C). avx512: AVX-512 F/BW/VL/DQ
// (Skylake-SP, Ice Lake). avx512_bf16: that and AVX512_BF16 (Cooper Lake, Sapphire Rapids, Zen 4 and later).
enum class CpuIsa { baseline, avx2, avx512, avx512_bf16 };

inline bool cpu_supports(CpuIsa isa) {
#if defined(__x86_64__) || defined(__i386__)
  switch (isa) {
    case CpuIsa::baseline: return true;
    case CpuIsa::avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    case CpuIsa::avx512:
      return cpu_supports(CpuIsa::avx2) && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    case CpuIsa::avx512_bf16: return cpu_supports(CpuIsa::avx512) && __builtin_cpu_supports("avx512bf16");
  }
  return false;
#else
  return isa == CpuIsa::baseline;
#endif
}

// One name per build, in CpuIsa's order: what cpu_isa() reports and what MMGDINO_CPU_ISA takes.
constexpr const char* kCpuIsaNames[] = {"baseline", "avx2", "avx512", "avx512_bf16"};

// The build the CPU kernels run: the best this CPU supports, chosen once, at the first call (the extension's
// import). MMGDINO_CPU_ISA=<name> caps it (tests/test_cpu_isa.py runs each build against the portable one); a
// cap above what the CPU has gives the best it has; another value is ignored.
inline CpuIsa cpu_isa_level() {
  static const CpuIsa chosen = [] {
    int cap = static_cast<int>(CpuIsa::avx512_bf16);
    if (const char* asked = getenv("MMGDINO_CPU_ISA"); asked != nullptr) {
      for (int i = 0; i <= static_cast<int>(CpuIsa::avx512_bf16); ++i) {
        if (strcmp(asked, kCpuIsaNames[i]) == 0) cap = i;
      }
    }
    for (int i = cap; i > 0; --i) {
      if (cpu_supports(static_cast<CpuIsa>(i))) return static_cast<CpuIsa>(i);
    }
    return CpuIsa::baseline;
  }();
  return chosen;
}

inline const char* cpu_isa() { return kCpuIsaNames[static_cast<int>(cpu_isa_level())]; }

// float32 and bfloat16 always take the vectorized kernels; float16 only where the build has F16C: in the portable
// build each float16 conversion is a library call, and the generic kernels are as fast.
inline bool cpu_vectorizes_float16() { return cpu_isa_level() != CpuIsa::baseline; }

// fn(args...) from the chosen build's namespace.
#define MMGDINO_CPU_CALL(fn, ...)                                                                  \
  (::mmgdino::cpu_isa_level() == ::mmgdino::CpuIsa::avx512_bf16 ? cpu_avx512_bf16::fn(__VA_ARGS__) \
   : ::mmgdino::cpu_isa_level() == ::mmgdino::CpuIsa::avx512    ? cpu_avx512::fn(__VA_ARGS__)      \
   : ::mmgdino::cpu_isa_level() == ::mmgdino::CpuIsa::avx2      ? cpu_avx2::fn(__VA_ARGS__)        \
                                                                : cpu_baseline::fn(__VA_ARGS__))

}  // namespace mmgdino
