// CUDA dispatch-key kernels of mmgdino::contrastive_logits and contrastive_max.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "mmgdino/checks.h"
#include "mmgdino/cuda_launch.h"
#include "launch_error.h"

namespace mmgdino {

cuda::DType cuda_dtype(at::ScalarType t);  // ms_deform_attn_cuda.cpp

namespace {

at::Tensor run(const at::Tensor& vision, const at::Tensor& text, const at::Tensor& text_token_mask,
               const at::Tensor& bias, double scale, int64_t max_text_len, bool reduce_max) {
  const ContrastiveDims d = check_contrastive_args(vision, text, text_token_mask, bias);
  const char* op = reduce_max ? "mmgdino.contrastive_max" : "mmgdino.contrastive_logits";
  TORCH_CHECK_VALUE(reduce_max || max_text_len >= d.num_tokens, op, ": max_text_len (", max_text_len,
                    ") must be at least num_tokens (", d.num_tokens, ")");
  TORCH_CHECK_VALUE(!reduce_max || scale > 0, op, ": scale must be positive, got ", scale);
  const c10::cuda::CUDAGuard guard(vision.device());
  const auto out_dtype = vision.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto vision_c = vision.contiguous();
  const auto text_c = text.contiguous();
  const auto mask_c = text_token_mask.contiguous();
  const auto bias_c = bias.to(out_dtype);  // a device-side cast, never a host read
  auto out = reduce_max ? at::empty({d.batch, d.num_rows}, vision.options().dtype(out_dtype))
                        : at::empty({d.batch, d.num_rows, max_text_len}, vision.options().dtype(out_dtype));
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
  const auto stream = c10::cuda::getCurrentCUDAStream().stream();
  const cudaError_t err = reduce_max ? cuda::contrastive_max(a, stream) : cuda::contrastive_logits(a, stream);
  check_launch(err, op);
  return out;
}

at::Tensor contrastive_logits_cuda(const at::Tensor& vision, const at::Tensor& text, const at::Tensor& mask,
                                   const at::Tensor& bias, double scale, int64_t max_text_len) {
  return run(vision, text, mask, bias, scale, max_text_len, false);
}

at::Tensor contrastive_max_cuda(const at::Tensor& vision, const at::Tensor& text, const at::Tensor& mask,
                                const at::Tensor& bias, double scale) {
  return run(vision, text, mask, bias, scale, 0, true);
}

}  // namespace

TORCH_LIBRARY_IMPL(mmgdino, MMGDINO_CUDA_DISPATCH_KEY, m) {
  m.impl("contrastive_logits", &contrastive_logits_cuda);
  m.impl("contrastive_max", &contrastive_max_cuda);
}

}  // namespace mmgdino
