// Launch interface between the ATen glue (csrc/cuda/*_cuda.cpp) and the pure-CUDA kernels (csrc/cuda/*.cu).
// Raw pointers, sizes and a stream only: the .cu files build with nvcc alone, without ATen's CUDA headers.
#pragma once

#include <cuda_runtime_api.h>
#include <stdint.h>

namespace mmgdino {
namespace cuda {

enum class DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

struct MsdaForwardArgs {
  DType dtype;
  const void* value;              // (batch, num_values, num_heads, head_dim), contiguous
  const int64_t* spatial_shapes;  // (num_levels, 2) on the device
  const int64_t* level_start_index;
  const void* sampling_locations;  // (batch, num_queries, num_heads, num_levels, num_points, 2)
  const void* attention_weights;   // (batch, num_queries, num_heads, num_levels, num_points)
  void* output;                    // (batch, num_queries, num_heads * head_dim)
  int64_t batch, num_values, num_heads, head_dim, num_queries, num_levels, num_points;
};

struct MsdaBackwardArgs {
  MsdaForwardArgs fwd;            // `output` unused
  const void* grad_output;        // (batch, num_queries, num_heads * head_dim), value's dtype
  void* grad_value_acc;           // float32 (float64 for float64 inputs), zero-initialized, value's shape
  void* grad_sampling_locations;  // value's dtype, fully written
  void* grad_attention_weights;   // value's dtype, fully written
};

// Both return the launch's cudaError_t (cudaSuccess when there was nothing to do); neither synchronizes.
cudaError_t ms_deform_attn_forward(const MsdaForwardArgs& args, cudaStream_t stream);
cudaError_t ms_deform_attn_backward(const MsdaBackwardArgs& args, cudaStream_t stream);

struct ContrastiveArgs {
  DType dtype;
  const void* vision;           // (batch, num_rows, dim), contiguous
  const void* text;             // (batch, num_tokens, dim), contiguous
  const bool* text_token_mask;  // (batch, num_tokens)
  const void* bias;             // 0-dim, float32 (float64 for float64 inputs): read on the device, no host sync
  double scale;
  void* output;  // float32 (float64 for float64 inputs): (batch, num_rows, max_text_len) or (batch, num_rows)
  int64_t batch, num_rows, num_tokens, dim, max_text_len;
};

cudaError_t contrastive_logits(const ContrastiveArgs& args, cudaStream_t stream);
cudaError_t contrastive_max(const ContrastiveArgs& args, cudaStream_t stream);

}  // namespace cuda
}  // namespace mmgdino
