// Contrastive logits on the CPU. float32, bfloat16 or float16 with dim a multiple of 8 (every real model): one
// fused pass per row, dot products, scale, bias, mask and the -inf padding (or the running maximum) from
// registers, vectorized in the build this CPU picks (AVX-512 BF16 dot products for bfloat16 where it has them). Other
// cases: one BLAS batched matmul (torch's matmul of the two 3-D tensors, which is its bmm), then the same fused
// epilogue. Either way the padded (B, N, max_text_len) tensor is
// written exactly once, and the reduced form never builds it.
#include <limits>

#include "cpu_float.h"
#include "mmgdino/checks.h"
#include "mmgdino/stable.h"

namespace mmgdino {
namespace {

// float32 logits for float32/16/bf16 inputs (as transformers returns them); float64 stays float64 so the
// operator can be gradchecked.
ScalarType logits_dtype(ScalarType input) {
  return input == ScalarType::Double ? ScalarType::Double : ScalarType::Float;
}

Tensor raw_dots(const Tensor& vision, const Tensor& text, ScalarType dtype) {
  using torch::stable::to;
  return torch::stable::matmul(to(vision, dtype), torch::stable::transpose(to(text, dtype), 1, 2));
}

// fn(row index, its dot products, its batch's token mask) for every (batch, row), in parallel.
// fn(acc_t{}) for the logits' type: double for float64 inputs, float otherwise.
template <typename Fn>
void with_logits_type(ScalarType dtype, Fn&& fn) {
  if (dtype == ScalarType::Double) {
    fn(double{});
  } else {
    fn(float{});
  }
}

template <typename acc_t, typename RowFn>
void for_each_row(const acc_t* dots, const bool* mask, const ContrastiveDims& d, RowFn fn) {
  torch::stable::parallel_for(0, d.batch * d.num_rows, 256, [&](int64_t begin, int64_t end) {
    for (int64_t bn = begin; bn < end; ++bn) fn(bn, dots + bn * d.num_tokens, mask + (bn / d.num_rows) * d.num_tokens);
  });
}

template <typename acc_t>
void fill_logits(const acc_t* dots, const bool* mask, acc_t scale, acc_t bias, acc_t* out, const ContrastiveDims& d,
                 int64_t max_text_len) {
  const acc_t neg_inf = -std::numeric_limits<acc_t>::infinity();
  for_each_row(dots, mask, d, [&](int64_t bn, const acc_t* dot_row, const bool* mask_row) {
    acc_t* out_row = out + bn * max_text_len;
    for (int64_t t = 0; t < d.num_tokens; ++t) out_row[t] = mask_row[t] ? dot_row[t] * scale + bias : neg_inf;
    for (int64_t t = d.num_tokens; t < max_text_len; ++t) out_row[t] = neg_inf;
  });
}

template <typename acc_t>
void reduce_max(const acc_t* dots, const bool* mask, acc_t scale, acc_t bias, acc_t* out, const ContrastiveDims& d) {
  const acc_t neg_inf = -std::numeric_limits<acc_t>::infinity();
  for_each_row(dots, mask, d, [&](int64_t bn, const acc_t* dot_row, const bool* mask_row) {
    acc_t best = neg_inf;
    for (int64_t t = 0; t < d.num_tokens; ++t) {
      if (mask_row[t] && dot_row[t] > best) best = dot_row[t];
    }
    // scale > 0 keeps the order, so scaling the maximum equals maximizing the scaled logits.
    out[bn] = best == neg_inf ? neg_inf : best * scale + bias;
  });
}

template <typename T>
void fused_rows(const Tensor& vision, const Tensor& text, const Tensor& mask, float bias, double scale,
                int64_t max_text_len, const ContrastiveDims& d, bool reduce_max, Tensor& out) {
  const ContrastiveArgsT<T> args{static_cast<const T*>(vision.const_data_ptr()),
                                 static_cast<const T*>(text.const_data_ptr()),
                                 mask.const_data_ptr<bool>(),
                                 static_cast<float>(scale),
                                 bias,
                                 d.num_rows,
                                 d.num_tokens,
                                 d.dim,
                                 max_text_len};
  float* out_ptr = out.mutable_data_ptr<float>();
  torch::stable::parallel_for(0, d.batch * d.num_rows, 64, [&](int64_t begin, int64_t end) {
    MMGDINO_CPU_CALL(contrastive_rows, args, reduce_max, out_ptr, begin, end);
  });
}

// The fused path (float32, bfloat16 and, with F16C, float16 inputs; dim a multiple of 8); returns false when it
// does not apply.
bool fused(const Tensor& vision, const Tensor& text, const Tensor& mask, const Tensor& bias, double scale,
           int64_t max_text_len, const ContrastiveDims& d, bool reduce_max, Tensor& out) {
  const ScalarType dtype = vision.scalar_type();
  const bool fast_dtype = dtype == ScalarType::Float || dtype == ScalarType::BFloat16 ||
                          (dtype == ScalarType::Half && cpu_vectorizes_float16());
  if (!fast_dtype || text.scalar_type() != dtype || d.dim % 8 != 0) return false;
  const auto vision_c = torch::stable::contiguous(vision);
  const auto text_c = torch::stable::contiguous(text);
  const auto mask_c = torch::stable::contiguous(mask);
  const float bias_value = host_scalar<float>(bias);
  switch (dtype) {
    case ScalarType::Float:
      fused_rows<float>(vision_c, text_c, mask_c, bias_value, scale, max_text_len, d, reduce_max, out);
      break;
    case ScalarType::BFloat16:
      fused_rows<Bf16>(vision_c, text_c, mask_c, bias_value, scale, max_text_len, d, reduce_max, out);
      break;
    default: fused_rows<_Float16>(vision_c, text_c, mask_c, bias_value, scale, max_text_len, d, reduce_max, out); break;
  }
  return true;
}

Tensor contrastive_logits_cpu(const Tensor& vision, const Tensor& text, const Tensor& text_token_mask,
                              const Tensor& bias, double scale, int64_t max_text_len) {
  const ContrastiveDims d = check_contrastive_args(vision, text, text_token_mask, bias);
  MMGDINO_CHECK(max_text_len >= d.num_tokens, "mmgdino.contrastive_logits: max_text_len (", max_text_len,
                ") must be at least num_tokens (", d.num_tokens, ")");
  const auto dtype = logits_dtype(vision.scalar_type());
  auto out = torch::stable::new_empty(vision, {d.batch, d.num_rows, max_text_len}, dtype);
  if (out.numel() == 0) return out;
  if (fused(vision, text, text_token_mask, bias, scale, max_text_len, d, false, out)) return out;
  const auto dots = raw_dots(vision, text, dtype);
  const auto mask = torch::stable::contiguous(text_token_mask);
  with_logits_type(dtype, [&](auto type_tag) {
    using acc_t = decltype(type_tag);
    fill_logits<acc_t>(dots.const_data_ptr<acc_t>(), mask.const_data_ptr<bool>(), static_cast<acc_t>(scale),
                       host_scalar<acc_t>(bias), out.mutable_data_ptr<acc_t>(), d, max_text_len);
  });
  return out;
}

Tensor contrastive_max_cpu(const Tensor& vision, const Tensor& text, const Tensor& text_token_mask, const Tensor& bias,
                           double scale) {
  const ContrastiveDims d = check_contrastive_args(vision, text, text_token_mask, bias);
  MMGDINO_CHECK(scale > 0, "mmgdino.contrastive_max: scale must be positive, got ", scale);
  const auto dtype = logits_dtype(vision.scalar_type());
  auto out = torch::stable::new_empty(vision, {d.batch, d.num_rows}, dtype);
  if (out.numel() == 0) return out;
  if (fused(vision, text, text_token_mask, bias, scale, 0, d, true, out)) return out;
  const auto dots = raw_dots(vision, text, dtype);
  const auto mask = torch::stable::contiguous(text_token_mask);
  with_logits_type(dtype, [&](auto type_tag) {
    using acc_t = decltype(type_tag);
    reduce_max<acc_t>(dots.const_data_ptr<acc_t>(), mask.const_data_ptr<bool>(), static_cast<acc_t>(scale),
                      host_scalar<acc_t>(bias), out.mutable_data_ptr<acc_t>(), d);
  });
  return out;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(mmgdino, CPU, m) {
  m.impl("contrastive_logits", TORCH_BOX(&contrastive_logits_cpu));
  m.impl("contrastive_max", TORCH_BOX(&contrastive_max_cpu));
}

}  // namespace mmgdino
