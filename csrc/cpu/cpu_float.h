// float32 fast path of the CPU deformable attention, compiled twice (baseline ISA and AVX2+FMA) from
// cpu_float_kernels.inc. Plain pointers only: nothing here may pull in ATen's inline functions.
#pragma once

#include <stdint.h>

#include "mmgdino/sampling.h"

namespace mmgdino {

constexpr int kMaxTapsPerHead = 256;  // num_levels * num_points * 4 corners the fast path handles

struct FloatMsdaArgs {
  const float* value;
  const int64_t* shapes;
  const int64_t* starts;
  const float* loc;
  const float* attn;
  int64_t num_values, num_heads, num_queries, num_levels, num_points;
};

struct FloatContrastiveArgs {
  const float* vision;  // (batch, num_rows, dim), dim a multiple of 8
  const float* text;    // (batch, num_tokens, dim)
  const bool* mask;     // (batch, num_tokens)
  float scale, bias;
  int64_t num_rows, num_tokens, dim, max_text_len;
};

#define MMGDINO_DECLARE_FLOAT_MSDA(ns)                                                                           \
  namespace ns {                                                                                                 \
  bool forward_rows_any(int chunks, const FloatMsdaArgs& a, float* out, int64_t begin, int64_t end);             \
  bool backward_heads_any(int chunks, const FloatMsdaArgs& a, const float* grad_out, float* grad_value,          \
                          float* grad_loc, float* grad_attn, int64_t begin, int64_t end);                        \
  /* rows [begin, end) of the flattened (batch * num_rows); out is (.., max_text_len) or, reduced, (..,) */      \
  void contrastive_rows(const FloatContrastiveArgs& a, bool reduce_max, float* out, int64_t begin, int64_t end); \
  }

MMGDINO_DECLARE_FLOAT_MSDA(cpu_baseline)
MMGDINO_DECLARE_FLOAT_MSDA(cpu_avx2)

#undef MMGDINO_DECLARE_FLOAT_MSDA

// Whether the AVX2 + FMA builds may run on this CPU.
inline bool cpu_has_avx2() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
#else
  return false;
#endif
}

}  // namespace mmgdino
