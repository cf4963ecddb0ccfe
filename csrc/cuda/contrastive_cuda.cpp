// CUDA dispatch-key kernels of mmgdino::contrastive_logits and contrastive_max.
#include "mmgdino/checks.h"
#include "mmgdino/cuda_context.h"
#include "mmgdino/cuda_launch.h"
#include "mmgdino/stable.h"
#include "launch_error.h"

namespace mmgdino {

cuda::DType cuda_dtype(ScalarType t);  // ms_deform_attn_cuda.cpp

namespace {

Tensor run(const Tensor& vision, const Tensor& text, const Tensor& text_token_mask, const Tensor& bias, double scale,
           int64_t max_text_len, bool reduce_max) {
  const ContrastiveDims d = check_contrastive_args(vision, text, text_token_mask, bias);
  const char* op = reduce_max ? "mmgdino.contrastive_max" : "mmgdino.contrastive_logits";
  MMGDINO_CHECK(reduce_max || max_text_len >= d.num_tokens, op, ": max_text_len (", max_text_len,
                ") must be at least num_tokens (", d.num_tokens, ")");
  MMGDINO_CHECK(!reduce_max || scale > 0, op, ": scale must be positive, got ", scale);
  const CudaDeviceGuard guard(vision.get_device_index());
  const auto out_dtype = vision.scalar_type() == ScalarType::Double ? ScalarType::Double : ScalarType::Float;
  const auto vision_c = torch::stable::contiguous(vision);
  const auto text_c = torch::stable::contiguous(text);
  const auto mask_c = torch::stable::contiguous(text_token_mask);
  const auto bias_c = torch::stable::to(bias, out_dtype);  // a device-side cast, never a host read
  auto out = reduce_max ? torch::stable::new_empty(vision, {d.batch, d.num_rows}, out_dtype)
                        : torch::stable::new_empty(vision, {d.batch, d.num_rows, max_text_len}, out_dtype);
  cuda::ContrastiveArgs a;
  a.dtype = cuda_dtype(vision.scalar_type());
  a.vision = vision_c.const_data_ptr();
  a.text = text_c.const_data_ptr();
  a.text_token_mask = mask_c.const_data_ptr<bool>();
  a.bias = bias_c.const_data_ptr();
  a.scale = scale;
  a.output = out.mutable_data_ptr();
  a.batch = d.batch;
  a.num_rows = d.num_rows;
  a.num_tokens = d.num_tokens;
  a.dim = d.dim;
  a.max_text_len = reduce_max ? 0 : max_text_len;
  const cudaStream_t stream = current_cuda_stream(vision.get_device_index());
  const cudaError_t err = reduce_max ? cuda::contrastive_max(a, stream) : cuda::contrastive_logits(a, stream);
  check_launch(err, op);
  return out;
}

Tensor contrastive_logits_cuda(const Tensor& vision, const Tensor& text, const Tensor& mask, const Tensor& bias,
                               double scale, int64_t max_text_len) {
  return run(vision, text, mask, bias, scale, max_text_len, false);
}

Tensor contrastive_max_cuda(const Tensor& vision, const Tensor& text, const Tensor& mask, const Tensor& bias,
                            double scale) {
  return run(vision, text, mask, bias, scale, 0, true);
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(mmgdino, MMGDINO_CUDA_DISPATCH_KEY, m) {
  m.impl("contrastive_logits", TORCH_BOX(&contrastive_logits_cuda));
  m.impl("contrastive_max", TORCH_BOX(&contrastive_max_cuda));
}

}  // namespace mmgdino
