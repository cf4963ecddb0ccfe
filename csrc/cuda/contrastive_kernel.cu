// Contrastive logits on CUDA: (vision @ text^T) * scale + bias, -inf where the token mask is False and in the
// padding to max_text_len, written in one pass; and the reduced form, the maximum over valid tokens per row,
// which never writes the padded (batch, rows, max_text_len) tensor.
//
// A block owns kRows = 32 rows of one batch element. Warp w computes rows 4w..4w+3 against 32 tokens at a time
// (lane = token) from shared-memory tiles of vision and text, accumulating in float32 (float64 for float64).
// The bias is read on the device: no host sync for transformers' bias parameter.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <math_constants.h>

#include "mmgdino/cuda_launch.h"
#include "numeric.cuh"

namespace mmgdino {
namespace cuda {
namespace {

constexpr int kRows = 32;    // rows per block
constexpr int kTokens = 32;  // tokens per tile (one per lane)
constexpr int kK = 32;       // reduction tile
constexpr int kWarps = 8;    // 256 threads
constexpr int kRowsPerWarp = kRows / kWarps;

template <typename A>
__device__ __forceinline__ A neg_inf();
template <>
__device__ __forceinline__ float neg_inf<float>() {
  return -CUDART_INF_F;
}
template <>
__device__ __forceinline__ double neg_inf<double>() {
  return -CUDART_INF;
}

// acc[r] = <vision[row0 + 4w + r], text[t0 + lane]> for the warp's four rows.
template <typename T, typename A>
__device__ void dot_tile(const T* vision_b, const T* text_b, int64_t row0, int64_t t0, const ContrastiveArgs& a,
                         A (*vision_tile)[kK + 1], A (*text_tile)[kK + 1], A acc[kRowsPerWarp]) {
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) acc[r] = A(0);
  for (int64_t k0 = 0; k0 < a.dim; k0 += kK) {
    // 256 threads stage a 32 x 32 tile of each operand, 4 elements per thread, coalesced along dim.
    for (int i = threadIdx.x; i < kRows * kK; i += kWarps * 32) {
      const int r = i / kK;
      const int k = i % kK;
      const int64_t row = row0 + r;
      const int64_t tok = t0 + r;
      const int64_t kk = k0 + k;
      vision_tile[r][k] = (row < a.num_rows && kk < a.dim) ? to_acc(vision_b[row * a.dim + kk]) : A(0);
      text_tile[r][k] = (tok < a.num_tokens && kk < a.dim) ? to_acc(text_b[tok * a.dim + kk]) : A(0);
    }
    __syncthreads();
#pragma unroll 8
    for (int k = 0; k < kK; ++k) {
      const A t = text_tile[lane][k];
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) acc[r] += vision_tile[warp * kRowsPerWarp + r][k] * t;
    }
    __syncthreads();
  }
}

template <typename T, bool kReduceMax>
__global__ void __launch_bounds__(kWarps * 32) contrastive_kernel(ContrastiveArgs a) {
  using A = typename Acc<T>::type;
  __shared__ A vision_tile[kRows][kK + 1];
  __shared__ A text_tile[kTokens][kK + 1];
  const int64_t b = blockIdx.y;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kRows;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const T* vision_b = static_cast<const T*>(a.vision) + b * a.num_rows * a.dim;
  const T* text_b = static_cast<const T*>(a.text) + b * a.num_tokens * a.dim;
  const bool* mask_b = a.text_token_mask + b * a.num_tokens;
  const A bias = *static_cast<const A*>(a.bias);
  const A scale = static_cast<A>(a.scale);
  A* out = static_cast<A*>(a.output);

  A best[kRowsPerWarp];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) best[r] = neg_inf<A>();

  for (int64_t t0 = 0; t0 < a.num_tokens; t0 += kTokens) {
    A acc[kRowsPerWarp];
    dot_tile<T, A>(vision_b, text_b, row0, t0, a, vision_tile, text_tile, acc);
    const int64_t tok = t0 + lane;
    const bool valid = tok < a.num_tokens && mask_b[tok];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int64_t row = row0 + warp * kRowsPerWarp + r;
      if constexpr (kReduceMax) {
        best[r] = fmax(best[r], valid ? acc[r] : neg_inf<A>());
      } else if (row < a.num_rows && tok < a.max_text_len) {
        out[(b * a.num_rows + row) * a.max_text_len + tok] = valid ? acc[r] * scale + bias : neg_inf<A>();
      }
    }
  }

  if constexpr (kReduceMax) {
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      A m = best[r];
#pragma unroll
      for (int offset = 16; offset > 0; offset /= 2) m = fmax(m, __shfl_xor_sync(0xffffffffu, m, offset));
      const int64_t row = row0 + warp * kRowsPerWarp + r;
      // scale > 0 keeps the order, so scaling the maximum equals maximizing the scaled logits.
      if (lane == 0 && row < a.num_rows) out[b * a.num_rows + row] = m == neg_inf<A>() ? m : m * scale + bias;
    }
  } else {
    // -inf padding after the last token tile, coalesced along the row.
    const int64_t pad_start = (a.num_tokens + kTokens - 1) / kTokens * kTokens;
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int64_t row = row0 + warp * kRowsPerWarp + r;
      if (row >= a.num_rows) continue;
      A* out_row = out + (b * a.num_rows + row) * a.max_text_len;
      for (int64_t c = pad_start + lane; c < a.max_text_len; c += 32) out_row[c] = neg_inf<A>();
    }
  }
}

template <bool kReduceMax>
cudaError_t launch(const ContrastiveArgs& a, cudaStream_t stream) {
  if (a.batch == 0 || a.num_rows == 0) return cudaSuccess;
  if (a.batch > 65535) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>((a.num_rows + kRows - 1) / kRows), static_cast<unsigned>(a.batch));
  switch (a.dtype) {
    case DType::kFloat32: contrastive_kernel<float, kReduceMax><<<grid, kWarps * 32, 0, stream>>>(a); break;
    case DType::kFloat64: contrastive_kernel<double, kReduceMax><<<grid, kWarps * 32, 0, stream>>>(a); break;
    case DType::kFloat16: contrastive_kernel<__half, kReduceMax><<<grid, kWarps * 32, 0, stream>>>(a); break;
    case DType::kBFloat16: contrastive_kernel<__nv_bfloat16, kReduceMax><<<grid, kWarps * 32, 0, stream>>>(a); break;
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t contrastive_logits(const ContrastiveArgs& a, cudaStream_t stream) { return launch<false>(a, stream); }

cudaError_t contrastive_max(const ContrastiveArgs& a, cudaStream_t stream) { return launch<true>(a, stream); }

}  // namespace cuda
}  // namespace mmgdino
