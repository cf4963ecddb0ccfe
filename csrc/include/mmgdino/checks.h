// Argument validation shared by every compiled backend of the mmgdino operators. Messages name the tensor
// and the shape expected, in the words of the Python API (mmgdino/ops/_checks.py, which raises ValueError /
// TypeError before a kernel is reached; a direct torch.ops caller gets the same words as a RuntimeError).
#pragma once

#include <stdint.h>

#include "mmgdino/stable.h"

namespace mmgdino {

struct MsdaDims {
  int64_t batch;
  int64_t num_values;
  int64_t num_heads;
  int64_t head_dim;
  int64_t num_queries;
  int64_t num_levels;
  int64_t num_points;
};

// Ranks, sizes, dtypes and devices of the ms_deform_attn arguments (reads no tensor data, so no host sync).
MsdaDims check_ms_deform_attn_args(const Tensor& value, const Tensor& spatial_shapes, const Tensor& level_start_index,
                                   const Tensor& sampling_locations, const Tensor& attention_weights);

// grad_output must be (batch, num_queries, num_heads * head_dim) in value's dtype and device.
void check_ms_deform_attn_grad(const Tensor& grad_output, const Tensor& value, const MsdaDims& dims);

// Reads spatial_shapes / level_start_index (host tensors only) and rejects levels that are empty or
// reach past value's num_values rows. Device kernels bounds-guard instead, to avoid a host sync.
void check_level_extents_on_host(const Tensor& spatial_shapes, const Tensor& level_start_index, int64_t num_values);

struct ContrastiveDims {
  int64_t batch;
  int64_t num_rows;
  int64_t num_tokens;
  int64_t dim;
};

ContrastiveDims check_contrastive_args(const Tensor& vision, const Tensor& text, const Tensor& text_token_mask,
                                       const Tensor& bias);

// x floating, scale positive and finite, zero_point in [0, 255].
void check_quantize_uint8_args(const Tensor& x, double scale, int64_t zero_point);

}  // namespace mmgdino
