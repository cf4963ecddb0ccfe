// float32-accumulating fast paths of the CPU deformable attention (float32, bfloat16 and float16 inputs for the
// forward), compiled twice (baseline ISA and AVX2+FMA) from
// cpu_float_kernels.inc. Plain pointers only: nothing here may pull in ATen's inline functions.
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

// T: float, Bf16 or _Float16 (the forward takes all three, accumulating in float32; the backward float32).
template <typename T>
struct MsdaArgsT {
  const T* value;
  const int64_t* shapes;
  const int64_t* starts;
  const T* loc;
  const T* attn;
  int64_t num_values, num_heads, num_queries, num_levels, num_points;
};
using FloatMsdaArgs = MsdaArgsT<float>;

struct FloatContrastiveArgs {
  const float* vision;  // (batch, num_rows, dim), dim a multiple of 8
  const float* text;    // (batch, num_tokens, dim)
  const bool* mask;     // (batch, num_tokens)
  float scale, bias;
  int64_t num_rows, num_tokens, dim, max_text_len;
};

#define MMGDINO_DECLARE_FLOAT_MSDA(ns)                                                                           \
  namespace ns {                                                                                                 \
  bool forward_rows_any(int chunks, const MsdaArgsT<float>& a, float* out, int64_t begin, int64_t end);          \
  bool forward_rows_any(int chunks, const MsdaArgsT<Bf16>& a, Bf16* out, int64_t begin, int64_t end);            \
  bool forward_rows_any(int chunks, const MsdaArgsT<_Float16>& a, _Float16* out, int64_t begin, int64_t end);    \
  bool backward_heads_any(int chunks, const FloatMsdaArgs& a, const float* grad_out, float* grad_value,          \
                          float* grad_loc, float* grad_attn, int64_t begin, int64_t end);                        \
  /* rows [begin, end) of the flattened (batch * num_rows); out is (.., max_text_len) or, reduced, (..,) */      \
  void contrastive_rows(const FloatContrastiveArgs& a, bool reduce_max, float* out, int64_t begin, int64_t end); \
  }

MMGDINO_DECLARE_FLOAT_MSDA(cpu_baseline)
MMGDINO_DECLARE_FLOAT_MSDA(cpu_avx2)

#undef MMGDINO_DECLARE_FLOAT_MSDA

// Whether the AVX2 + FMA (+ F16C, which every AVX2 CPU has) builds may run on this CPU.
inline bool cpu_has_avx2() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool has =
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  return has;
#else
  return false;
#endif
}

// The build the CPU kernels run: "avx2" where the CPU has it, else "baseline"; chosen once, at the first call.
// MMGDINO_CPU_ISA=baseline forces the portable build (CI runs the tests both ways); asking for "avx2" on a CPU
// without it gives the baseline build.
inline const char* cpu_isa() {
  static const char* isa = [] {
    const char* asked = getenv("MMGDINO_CPU_ISA");
    if (asked != nullptr && strcmp(asked, "baseline") == 0) return "baseline";
    return cpu_has_avx2() ? "avx2" : "baseline";
  }();
  return isa;
}

inline bool use_avx2() { return cpu_isa()[0] == 'a'; }

}  // namespace mmgdino
