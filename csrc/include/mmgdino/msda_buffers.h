// Contiguous inputs and gradient buffers of ms_deform_attn, shared by the CPU and CUDA entry points.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <tuple>

namespace mmgdino {

struct MsdaInputs {
  at::Tensor value, spatial_shapes, level_start_index, sampling_locations, attention_weights;
};

inline MsdaInputs contiguous_inputs(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                    const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                                    const at::Tensor& attention_weights) {
  return {value.contiguous(), spatial_shapes.contiguous(), level_start_index.contiguous(),
          sampling_locations.contiguous(), attention_weights.contiguous()};
}

// grad_value accumulates in float32 for half inputs (float64 for float64) and is converted at the end; the
// location and weight gradients are written whole by the kernels, in the inputs' dtype.
struct MsdaGrads {
  at::Tensor value_acc, sampling_locations, attention_weights;

  // Nothing to sample (no queries, points or channels): the kernels do not run, the gradients are zero.
  void zero_point_grads() {
    sampling_locations.zero_();
    attention_weights.zero_();
  }

  std::tuple<at::Tensor, at::Tensor, at::Tensor> finish(at::ScalarType value_dtype) const {
    auto grad_value = value_acc.scalar_type() == value_dtype ? value_acc : value_acc.to(value_dtype);
    return {grad_value, sampling_locations, attention_weights};
  }
};

inline MsdaGrads allocate_grads(const at::Tensor& value, const at::Tensor& sampling_locations,
                                const at::Tensor& attention_weights) {
  return {at::zeros(value.sizes(), value.options().dtype(at::toOpMathType(value.scalar_type()))),
          at::empty(sampling_locations.sizes(), sampling_locations.options()),
          at::empty(attention_weights.sizes(), attention_weights.options())};
}

}  // namespace mmgdino
