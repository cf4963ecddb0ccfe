// Contiguous inputs and gradient buffers of ms_deform_attn, shared by the CPU and CUDA entry points.
#pragma once

#include <tuple>

#include "mmgdino/stable.h"

namespace mmgdino {

struct MsdaInputs {
  Tensor value, spatial_shapes, level_start_index, sampling_locations, attention_weights;
};

inline MsdaInputs contiguous_inputs(const Tensor& value, const Tensor& spatial_shapes, const Tensor& level_start_index,
                                    const Tensor& sampling_locations, const Tensor& attention_weights) {
  using torch::stable::contiguous;
  return {contiguous(value), contiguous(spatial_shapes), contiguous(level_start_index), contiguous(sampling_locations),
          contiguous(attention_weights)};
}

// grad_value accumulates in float32 for half inputs (float64 for float64) and is converted at the end; the
// location and weight gradients are written whole by the kernels, in the inputs' dtype.
struct MsdaGrads {
  Tensor value_acc, sampling_locations, attention_weights;

  // Nothing to sample (no queries, points or channels): the kernels do not run, the gradients are zero.
  void zero_point_grads() {
    torch::stable::zero_(sampling_locations);
    torch::stable::zero_(attention_weights);
  }

  std::tuple<Tensor, Tensor, Tensor> finish(ScalarType value_dtype) const {
    auto grad_value = value_acc.scalar_type() == value_dtype ? value_acc : torch::stable::to(value_acc, value_dtype);
    return {grad_value, sampling_locations, attention_weights};
  }
};

inline MsdaGrads allocate_grads(const Tensor& value, const Tensor& sampling_locations,
                                const Tensor& attention_weights) {
  return {torch::stable::new_zeros(value, value.sizes(), op_math_dtype(value.scalar_type())),
          torch::stable::new_empty(sampling_locations, sampling_locations.sizes()),
          torch::stable::new_empty(attention_weights, attention_weights.sizes())};
}

}  // namespace mmgdino
