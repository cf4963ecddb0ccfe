// float32 fast path of the CPU deformable attention, compiled twice (baseline ISA and AVX2+FMA) from
// msda_cpu_float_kernels.inc. Plain pointers only: nothing here may pull in ATen's inline functions.
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

#define MMGDINO_DECLARE_FLOAT_MSDA(ns)                                                                        \
  namespace ns {                                                                                              \
  bool forward_rows_any(int chunks, const FloatMsdaArgs& a, float* out, int64_t begin, int64_t end);          \
  bool backward_heads_any(int chunks, const FloatMsdaArgs& a, const float* grad_out, float* grad_value,       \
                          float* grad_loc, float* grad_attn, int64_t begin, int64_t end);                     \
  }

MMGDINO_DECLARE_FLOAT_MSDA(cpu_baseline)
MMGDINO_DECLARE_FLOAT_MSDA(cpu_avx2)

#undef MMGDINO_DECLARE_FLOAT_MSDA

}  // namespace mmgdino
