// uint8 activations for oneDNN's int8 matrix products (mmgdino.quantization): one vectorized pass from float32,
// bfloat16 or float16 (float16 where the build has F16C); float64 and float16 elsewhere widen to float32 first.
#include "cpu_float.h"
#include "mmgdino/checks.h"
#include "mmgdino/stable.h"

namespace mmgdino {
namespace {

constexpr int64_t kGrain = 1 << 15;  // elements per task: 32 KB of uint8 out, well above the pool's overhead

template <typename T>
void quantize_all(const Tensor& x, Tensor& out, float inv_scale, float zero_point) {
  const T* in = static_cast<const T*>(x.const_data_ptr());
  uint8_t* dst = static_cast<uint8_t*>(out.mutable_data_ptr());
  torch::stable::parallel_for(0, x.numel(), kGrain, [&](int64_t begin, int64_t end) {
    MMGDINO_CPU_CALL(quantize_uint8_span, in, dst, begin, end, inv_scale, zero_point);
  });
}

Tensor quantize_uint8_cpu(const Tensor& x, double scale, int64_t zero_point) {
  check_quantize_uint8_args(x, scale, zero_point);
  const ScalarType dtype = x.scalar_type();
  const bool fast = dtype == ScalarType::Float || dtype == ScalarType::BFloat16 ||
                    (dtype == ScalarType::Half && cpu_vectorizes_float16());
  const Tensor input = torch::stable::contiguous(fast ? x : torch::stable::to(x, ScalarType::Float));
  Tensor out = torch::stable::new_empty(x, x.sizes(), ScalarType::Byte);
  if (out.numel() == 0) return out;
  // The reciprocal in double, then float32, as quantize_per_tensor's Python scalar reaches a float32 product.
  const float inv_scale = static_cast<float>(1.0 / scale);
  const float zp = static_cast<float>(zero_point);
  switch (input.scalar_type()) {
    case ScalarType::BFloat16: quantize_all<Bf16>(input, out, inv_scale, zp); break;
    case ScalarType::Half: quantize_all<_Float16>(input, out, inv_scale, zp); break;
    default: quantize_all<float>(input, out, inv_scale, zp); break;
  }
  return out;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(mmgdino, CPU, m) { m.impl("quantize_uint8", TORCH_BOX(&quantize_uint8_cpu)); }

}  // namespace mmgdino
