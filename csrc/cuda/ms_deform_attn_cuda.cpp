// CUDA dispatch-key kernels of mmgdino::ms_deform_attn and its backward: checks, allocation, the current
// stream, then the pure-CUDA launchers of ms_deform_attn_kernel.cu. No host syncs: the level table stays on the
// device and the kernels bounds-guard every read instead of validating it here.
#include "mmgdino/determinism.h"
#include "mmgdino/checks.h"
#include "mmgdino/msda_buffers.h"
#include "mmgdino/cuda_context.h"
#include "mmgdino/cuda_launch.h"
#include "mmgdino/stable.h"
#include "launch_error.h"

namespace mmgdino {

cuda::DType cuda_dtype(ScalarType t) {
  switch (t) {
    case ScalarType::Float: return cuda::DType::kFloat32;
    case ScalarType::Double: return cuda::DType::kFloat64;
    case ScalarType::Half: return cuda::DType::kFloat16;
    case ScalarType::BFloat16: return cuda::DType::kBFloat16;
    default: throw std::runtime_error(message("mmgdino: unsupported dtype ", dtype_name(t)));
  }
}

namespace {

cuda::MsdaForwardArgs forward_args(const MsdaInputs& in, const MsdaDims& d) {
  cuda::MsdaForwardArgs a;
  a.dtype = cuda_dtype(in.value.scalar_type());
  a.value = in.value.const_data_ptr();
  a.spatial_shapes = in.spatial_shapes.const_data_ptr<int64_t>();
  a.level_start_index = in.level_start_index.const_data_ptr<int64_t>();
  a.sampling_locations = in.sampling_locations.const_data_ptr();
  a.attention_weights = in.attention_weights.const_data_ptr();
  a.output = nullptr;
  a.batch = d.batch;
  a.num_values = d.num_values;
  a.num_heads = d.num_heads;
  a.head_dim = d.head_dim;
  a.num_queries = d.num_queries;
  a.num_levels = d.num_levels;
  a.num_points = d.num_points;
  return a;
}

Tensor ms_deform_attn_cuda(const Tensor& value, const Tensor& spatial_shapes, const Tensor& level_start_index,
                           const Tensor& sampling_locations, const Tensor& attention_weights) {
  const MsdaDims d =
      check_ms_deform_attn_args(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  const CudaDeviceGuard guard(value.get_device_index());
  const MsdaInputs in =
      contiguous_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  auto output = torch::stable::new_empty(value, {d.batch, d.num_queries, d.num_heads * d.head_dim});
  auto args = forward_args(in, d);
  args.output = output.mutable_data_ptr();
  const cudaError_t err = cuda::ms_deform_attn_forward(args, current_cuda_stream(value.get_device_index()));
  check_launch(err, "mmgdino.ms_deform_attn");
  return output;
}

std::tuple<Tensor, Tensor, Tensor> ms_deform_attn_backward_cuda(const Tensor& grad_output, const Tensor& value,
                                                                const Tensor& spatial_shapes,
                                                                const Tensor& level_start_index,
                                                                const Tensor& sampling_locations,
                                                                const Tensor& attention_weights) {
  const MsdaDims d =
      check_ms_deform_attn_args(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  check_ms_deform_attn_grad(grad_output, value, d);
  // grad_value is scattered with float atomics, so its summation order varies from run to run.
  alert_not_deterministic("mmgdino.ms_deform_attn_backward (CUDA)");
  const CudaDeviceGuard guard(value.get_device_index());
  const auto grad_c = torch::stable::contiguous(grad_output);
  const MsdaInputs in =
      contiguous_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  MsdaGrads grads = allocate_grads(value, sampling_locations, attention_weights);
  cuda::MsdaBackwardArgs args;
  args.fwd = forward_args(in, d);
  args.grad_output = grad_c.const_data_ptr();
  args.grad_value_acc = grads.value_acc.mutable_data_ptr();
  args.grad_sampling_locations = grads.sampling_locations.mutable_data_ptr();
  args.grad_attention_weights = grads.attention_weights.mutable_data_ptr();
  if (d.head_dim == 0 || d.batch * d.num_queries * d.num_heads == 0) {
    grads.zero_point_grads();
  } else {
    const cudaError_t err = cuda::ms_deform_attn_backward(args, current_cuda_stream(value.get_device_index()));
    MMGDINO_CHECK(err != cudaErrorInvalidValue, "mmgdino.ms_deform_attn_backward: head_dim ", d.head_dim,
                  " is wider than the CUDA backward supports");
    check_launch(err, "mmgdino.ms_deform_attn_backward");
  }
  return grads.finish(value.scalar_type());
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(mmgdino, MMGDINO_CUDA_DISPATCH_KEY, m) {
  m.impl("ms_deform_attn", TORCH_BOX(&ms_deform_attn_cuda));
  m.impl("ms_deform_attn_backward", TORCH_BOX(&ms_deform_attn_backward_cuda));
}

}  // namespace mmgdino
