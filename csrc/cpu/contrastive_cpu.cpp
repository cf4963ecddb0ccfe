// Contrastive logits on the CPU: one BLAS batched matmul for the (rows x tokens) dot products, then a single
// fused pass that applies scale, bias and the token mask while writing the -inf padded output (full form) or
// the per-row maximum (reduced form). The padded (B, N, max_text_len) tensor is written exactly once.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <limits>

#include "mmgdino/checks.h"

namespace mmgdino {
namespace {

// float32 logits for float32/16/bf16 inputs (as transformers returns them); float64 stays float64 so the
// operator can be gradchecked.
at::ScalarType logits_dtype(at::ScalarType input) { return input == at::kDouble ? at::kDouble : at::kFloat; }

at::Tensor raw_dots(const at::Tensor& vision, const at::Tensor& text, at::ScalarType dtype) {
  return at::bmm(vision.to(dtype), text.to(dtype).transpose(1, 2));
}

template <typename acc_t>
void fill_logits(const acc_t* dots, const bool* mask, acc_t scale, acc_t bias, acc_t* out, const ContrastiveDims& d,
                 int64_t max_text_len) {
  const acc_t neg_inf = -std::numeric_limits<acc_t>::infinity();
  at::parallel_for(0, d.batch * d.num_rows, 256, [&](int64_t begin, int64_t end) {
    for (int64_t bn = begin; bn < end; ++bn) {
      const int64_t b = bn / d.num_rows;
      const acc_t* dot_row = dots + bn * d.num_tokens;
      const bool* mask_row = mask + b * d.num_tokens;
      acc_t* out_row = out + bn * max_text_len;
      for (int64_t t = 0; t < d.num_tokens; ++t) out_row[t] = mask_row[t] ? dot_row[t] * scale + bias : neg_inf;
      for (int64_t t = d.num_tokens; t < max_text_len; ++t) out_row[t] = neg_inf;
    }
  });
}

template <typename acc_t>
void reduce_max(const acc_t* dots, const bool* mask, acc_t scale, acc_t bias, acc_t* out, const ContrastiveDims& d) {
  const acc_t neg_inf = -std::numeric_limits<acc_t>::infinity();
  at::parallel_for(0, d.batch * d.num_rows, 256, [&](int64_t begin, int64_t end) {
    for (int64_t bn = begin; bn < end; ++bn) {
      const int64_t b = bn / d.num_rows;
      const acc_t* dot_row = dots + bn * d.num_tokens;
      const bool* mask_row = mask + b * d.num_tokens;
      acc_t best = neg_inf;
      for (int64_t t = 0; t < d.num_tokens; ++t) {
        if (mask_row[t] && dot_row[t] > best) best = dot_row[t];
      }
      // scale > 0 keeps the order, so scaling the maximum equals maximizing the scaled logits.
      out[bn] = best == neg_inf ? neg_inf : best * scale + bias;
    }
  });
}

at::Tensor contrastive_logits_cpu(const at::Tensor& vision, const at::Tensor& text, const at::Tensor& text_token_mask,
                                  const at::Tensor& bias, double scale, int64_t max_text_len) {
  const ContrastiveDims d = check_contrastive_args(vision, text, text_token_mask, bias);
  TORCH_CHECK_VALUE(max_text_len >= d.num_tokens, "mmgdino.contrastive_logits: max_text_len (", max_text_len,
                    ") must be at least num_tokens (", d.num_tokens, ")");
  const auto dtype = logits_dtype(vision.scalar_type());
  auto out = at::empty({d.batch, d.num_rows, max_text_len}, vision.options().dtype(dtype));
  if (out.numel() == 0) return out;
  const auto dots = raw_dots(vision, text, dtype);
  const auto mask = text_token_mask.contiguous();
  AT_DISPATCH_FLOATING_TYPES(dtype, "contrastive_logits_cpu", [&] {
    fill_logits<scalar_t>(dots.const_data_ptr<scalar_t>(), mask.const_data_ptr<bool>(), static_cast<scalar_t>(scale),
                          bias.item<scalar_t>(), out.mutable_data_ptr<scalar_t>(), d, max_text_len);
  });
  return out;
}

at::Tensor contrastive_max_cpu(const at::Tensor& vision, const at::Tensor& text, const at::Tensor& text_token_mask,
                               const at::Tensor& bias, double scale) {
  const ContrastiveDims d = check_contrastive_args(vision, text, text_token_mask, bias);
  TORCH_CHECK_VALUE(scale > 0, "mmgdino.contrastive_max: scale must be positive, got ", scale);
  const auto dtype = logits_dtype(vision.scalar_type());
  auto out = at::empty({d.batch, d.num_rows}, vision.options().dtype(dtype));
  if (out.numel() == 0) return out;
  const auto dots = raw_dots(vision, text, dtype);
  const auto mask = text_token_mask.contiguous();
  AT_DISPATCH_FLOATING_TYPES(dtype, "contrastive_max_cpu", [&] {
    reduce_max<scalar_t>(dots.const_data_ptr<scalar_t>(), mask.const_data_ptr<bool>(), static_cast<scalar_t>(scale),
                         bias.item<scalar_t>(), out.mutable_data_ptr<scalar_t>(), d);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(mmgdino, CPU, m) {
  m.impl("contrastive_logits", &contrastive_logits_cpu);
  m.impl("contrastive_max", &contrastive_max_cpu);
}

}  // namespace mmgdino
