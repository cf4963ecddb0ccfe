// Multi-scale deformable attention on the CPU. Forward parallelizes over (batch, query) pairs; backward over
// (batch, head) pairs, whose grad_value slices are disjoint, so it needs no atomics and is deterministic.
#include <atomic>
#include <vector>

#include "mmgdino/checks.h"
#include "mmgdino/msda_buffers.h"
#include "cpu_float.h"
#include "mmgdino/sampling.h"
#include "mmgdino/stable.h"

namespace mmgdino {
namespace {

struct MsdaPointers {
  const int64_t* shapes;  // (num_levels, 2): height, width
  const int64_t* starts;  // (num_levels,)
};

// Gathers the valid bilinear corners of one (query, head) over all levels and points: their rows in value and
// their weights (bilinear weight times attention weight). Prefetches each row, so the loads of the channel
// loop that follows overlap instead of missing cache one after another.
template <typename scalar_t, typename acc_t>
inline int gather_taps(const scalar_t* loc, const scalar_t* attn, const MsdaPointers& lv, const MsdaDims& d,
                       const scalar_t* value_bh, int64_t row_stride, int64_t* tap_rows, acc_t* tap_weights) {
  int count = 0;
  for (int64_t l = 0; l < d.num_levels; ++l) {
    const auto [height, width, start] = level_extent(lv.shapes, lv.starts, l);
    for (int64_t p = 0; p < d.num_points; ++p) {
      const int64_t point = l * d.num_points + p;
      BilinearTaps<acc_t> taps;
      if (!resolve_taps<acc_t>(static_cast<acc_t>(loc[2 * point]), static_cast<acc_t>(loc[2 * point + 1]), height,
                               width, start, d.num_values, taps)) {
        continue;
      }
      const acc_t a = static_cast<acc_t>(attn[point]);
      for (int k = 0; k < 4; ++k) {
        if (!taps.valid[k]) continue;
        __builtin_prefetch(value_bh + taps.row[k] * row_stride);
        tap_rows[count] = taps.row[k];
        tap_weights[count] = a * taps.weight[k];
        ++count;
      }
    }
  }
  return count;
}

// out[c] = sum_i weight[i] * value_bh[row[i]][c]
template <typename scalar_t, typename acc_t>
inline void weighted_rows_sum(const scalar_t* value_bh, int64_t row_stride, const int64_t* rows, const acc_t* weights,
                              int count, int64_t dim, scalar_t* out) {
  for (int64_t c = 0; c < dim; ++c) {
    acc_t acc = 0;
    for (int i = 0; i < count; ++i) acc += weights[i] * static_cast<acc_t>(value_bh[rows[i] * row_stride + c]);
    out[c] = static_cast<scalar_t>(acc);
  }
}

template <typename scalar_t>
void forward_cpu_impl(const Tensor& value, const MsdaPointers& lv, const Tensor& locations, const Tensor& weights,
                      Tensor& output, const MsdaDims& d) {
  using acc_t = typename OpMath<scalar_t>::type;
  const scalar_t* value_ptr = value.const_data_ptr<scalar_t>();
  const scalar_t* loc_ptr = locations.const_data_ptr<scalar_t>();
  const scalar_t* attn_ptr = weights.const_data_ptr<scalar_t>();
  scalar_t* out_ptr = output.mutable_data_ptr<scalar_t>();
  const int64_t row_stride = d.num_heads * d.head_dim;
  const int64_t points_per_head = d.num_levels * d.num_points;

  torch::stable::parallel_for(0, d.batch * d.num_queries, 16, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> tap_rows(points_per_head * 4);
    std::vector<acc_t> tap_weights(points_per_head * 4);
    for (int64_t bq = begin; bq < end; ++bq) {
      const int64_t b = bq / d.num_queries;
      for (int64_t h = 0; h < d.num_heads; ++h) {
        const scalar_t* value_bh = value_ptr + (b * d.num_values * d.num_heads + h) * d.head_dim;
        const int64_t point_base = (bq * d.num_heads + h) * points_per_head;
        const int count = gather_taps<scalar_t, acc_t>(loc_ptr + 2 * point_base, attn_ptr + point_base, lv, d, value_bh,
                                                       row_stride, tap_rows.data(), tap_weights.data());
        weighted_rows_sum(value_bh, row_stride, tap_rows.data(), tap_weights.data(), count, d.head_dim,
                          out_ptr + (bq * d.num_heads + h) * d.head_dim);
      }
    }
  });
}

// The fast paths handle head sizes 8, 16, 32, 64 and 128 (returns 0 otherwise): the forward for float32,
// bfloat16 and float16 inputs, the backward for float32.
int fast_path_chunks(const MsdaDims& d) {
  if (d.num_levels * d.num_points * 4 > kMaxTapsPerHead) return 0;
  switch (d.head_dim) {
    case 8:
    case 16:
    case 32:
    case 64:
    case 128: return static_cast<int>(d.head_dim / 8);
    default: return 0;
  }
}

template <typename T>
MsdaArgsT<T> fast_args(const Tensor& value, const MsdaPointers& lv, const Tensor& locations, const Tensor& weights,
                       const MsdaDims& d) {
  return MsdaArgsT<T>{static_cast<const T*>(value.const_data_ptr()),
                      lv.shapes,
                      lv.starts,
                      static_cast<const T*>(locations.const_data_ptr()),
                      static_cast<const T*>(weights.const_data_ptr()),
                      d.num_values,
                      d.num_heads,
                      d.num_queries,
                      d.num_levels,
                      d.num_points};
}

// An exception must not leave a parallel_for body (it would cross LibTorch's C boundary and lose its message), so
// a missing fast path is recorded there and reported after.
template <typename T>
void forward_fast(int chunks, const MsdaArgsT<T>& args, Tensor& output, const MsdaDims& d) {
  T* out = static_cast<T*>(output.mutable_data_ptr());
  std::atomic<bool> all_ran{true};
  torch::stable::parallel_for(0, d.batch * d.num_queries, 16, [&](int64_t begin, int64_t end) {
    if (!MMGDINO_CPU_CALL(forward_rows_any, chunks, args, out, begin, end)) all_ran = false;
  });
  MMGDINO_CHECK(all_ran, "mmgdino.ms_deform_attn: no CPU fast path for head_dim ", d.head_dim);
}

template <typename T>
void backward_fast(int chunks, const MsdaArgsT<T>& args, const Tensor& grad_output, float* grad_value, MsdaGrads& grads,
                   const MsdaDims& d) {
  const T* grad = static_cast<const T*>(grad_output.const_data_ptr());
  T* grad_loc = static_cast<T*>(grads.sampling_locations.mutable_data_ptr());
  T* grad_attn = static_cast<T*>(grads.attention_weights.mutable_data_ptr());
  std::atomic<bool> all_ran{true};
  torch::stable::parallel_for(0, d.batch * d.num_heads, 1, [&](int64_t begin, int64_t end) {
    if (!MMGDINO_CPU_CALL(backward_heads_any, chunks, args, grad, grad_value, grad_loc, grad_attn, begin, end)) {
      all_ran = false;
    }
  });
  MMGDINO_CHECK(all_ran, "mmgdino.ms_deform_attn_backward: no CPU fast path for head_dim ", d.head_dim);
}

template <typename scalar_t>
void backward_cpu_impl(const Tensor& grad_output, const Tensor& value, const MsdaPointers& lv, const Tensor& locations,
                       const Tensor& weights, Tensor& grad_value_acc, Tensor& grad_locations, Tensor& grad_weights,
                       const MsdaDims& d) {
  using acc_t = typename OpMath<scalar_t>::type;
  const scalar_t* grad_ptr = grad_output.const_data_ptr<scalar_t>();
  const scalar_t* value_ptr = value.const_data_ptr<scalar_t>();
  const scalar_t* loc_ptr = locations.const_data_ptr<scalar_t>();
  const scalar_t* attn_ptr = weights.const_data_ptr<scalar_t>();
  acc_t* grad_value_ptr = grad_value_acc.mutable_data_ptr<acc_t>();
  scalar_t* grad_loc_ptr = grad_locations.mutable_data_ptr<scalar_t>();
  scalar_t* grad_attn_ptr = grad_weights.mutable_data_ptr<scalar_t>();
  const int64_t row_stride = d.num_heads * d.head_dim;
  const int64_t points_per_head = d.num_levels * d.num_points;

  torch::stable::parallel_for(0, d.batch * d.num_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> grad(d.head_dim);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / d.num_heads;
      const int64_t h = bh % d.num_heads;
      const int64_t slice = (b * d.num_values * d.num_heads + h) * d.head_dim;
      const scalar_t* value_bh = value_ptr + slice;
      acc_t* grad_value_bh = grad_value_ptr + slice;
      for (int64_t q = 0; q < d.num_queries; ++q) {
        const int64_t bq = b * d.num_queries + q;
        const scalar_t* grad_row = grad_ptr + (bq * d.num_heads + h) * d.head_dim;
        for (int64_t c = 0; c < d.head_dim; ++c) grad[c] = static_cast<acc_t>(grad_row[c]);
        const int64_t point_base = (bq * d.num_heads + h) * points_per_head;
        for (int64_t l = 0; l < d.num_levels; ++l) {
          const auto [height, width, start] = level_extent(lv.shapes, lv.starts, l);
          for (int64_t p = 0; p < d.num_points; ++p) {
            const int64_t point = point_base + l * d.num_points + p;
            BilinearTaps<acc_t> taps;
            if (!resolve_taps<acc_t>(static_cast<acc_t>(loc_ptr[2 * point]), static_cast<acc_t>(loc_ptr[2 * point + 1]),
                                     height, width, start, d.num_values, taps)) {
              grad_loc_ptr[2 * point] = scalar_t(0);
              grad_loc_ptr[2 * point + 1] = scalar_t(0);
              grad_attn_ptr[point] = scalar_t(0);
              continue;
            }
            const acc_t attn = static_cast<acc_t>(attn_ptr[point]);
            acc_t corner_dot[4] = {0, 0, 0, 0};
            for (int k = 0; k < 4; ++k) {
              if (!taps.valid[k]) continue;
              const scalar_t* row = value_bh + taps.row[k] * row_stride;
              acc_t* grad_value_row = grad_value_bh + taps.row[k] * row_stride;
              const acc_t w = attn * taps.weight[k];
              acc_t dot = 0;
              for (int64_t c = 0; c < d.head_dim; ++c) {
                dot += static_cast<acc_t>(row[c]) * grad[c];
                grad_value_row[c] += w * grad[c];
              }
              corner_dot[k] = dot;
            }
            const PointGrad<acc_t> g = point_gradient<acc_t>(taps, corner_dot, attn, height, width);
            grad_loc_ptr[2 * point] = static_cast<scalar_t>(g.loc_x);
            grad_loc_ptr[2 * point + 1] = static_cast<scalar_t>(g.loc_y);
            grad_attn_ptr[point] = static_cast<scalar_t>(g.attn);
          }
        }
      }
    }
  });
}

Tensor ms_deform_attn_cpu(const Tensor& value, const Tensor& spatial_shapes, const Tensor& level_start_index,
                          const Tensor& sampling_locations, const Tensor& attention_weights) {
  const MsdaDims d =
      check_ms_deform_attn_args(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  check_level_extents_on_host(spatial_shapes, level_start_index, d.num_values);
  const MsdaInputs in =
      contiguous_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  auto output = torch::stable::new_empty(value, {d.batch, d.num_queries, d.num_heads * d.head_dim});
  if (output.numel() == 0) return output;
  const MsdaPointers lv{in.spatial_shapes.const_data_ptr<int64_t>(), in.level_start_index.const_data_ptr<int64_t>()};
  if (const int chunks = fast_path_chunks(d)) {
    const auto& v = in.value;
    const auto& loc = in.sampling_locations;
    const auto& attn = in.attention_weights;
    switch (value.scalar_type()) {
      case ScalarType::Float: forward_fast(chunks, fast_args<float>(v, lv, loc, attn, d), output, d); return output;
      case ScalarType::BFloat16: forward_fast(chunks, fast_args<Bf16>(v, lv, loc, attn, d), output, d); return output;
      case ScalarType::Half:
        if (!cpu_vectorizes_float16()) break;
        forward_fast(chunks, fast_args<_Float16>(v, lv, loc, attn, d), output, d);
        return output;
      default: break;  // float64: the generic kernel below
    }
  }
  dispatch_floating(value.scalar_type(), "mmgdino.ms_deform_attn", [&](auto type_tag) {
    using scalar_t = decltype(type_tag);
    forward_cpu_impl<scalar_t>(in.value, lv, in.sampling_locations, in.attention_weights, output, d);
  });
  return output;
}

std::tuple<Tensor, Tensor, Tensor> ms_deform_attn_backward_cpu(const Tensor& grad_output, const Tensor& value,
                                                               const Tensor& spatial_shapes,
                                                               const Tensor& level_start_index,
                                                               const Tensor& sampling_locations,
                                                               const Tensor& attention_weights) {
  const MsdaDims d =
      check_ms_deform_attn_args(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  check_ms_deform_attn_grad(grad_output, value, d);
  check_level_extents_on_host(spatial_shapes, level_start_index, d.num_values);
  const auto grad_c = torch::stable::contiguous(grad_output);
  const MsdaInputs in =
      contiguous_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  MsdaGrads grads = allocate_grads(value, sampling_locations, attention_weights);
  if (grads.sampling_locations.numel() > 0 && value.numel() > 0) {
    const MsdaPointers lv{in.spatial_shapes.const_data_ptr<int64_t>(), in.level_start_index.const_data_ptr<int64_t>()};
    const ScalarType dtype = value.scalar_type();
    const bool fast_dtype = dtype == ScalarType::Float || dtype == ScalarType::BFloat16 ||
                            (dtype == ScalarType::Half && cpu_vectorizes_float16());
    if (const int chunks = fast_dtype ? fast_path_chunks(d) : 0) {
      float* grad_value = grads.value_acc.mutable_data_ptr<float>();
      switch (dtype) {
        case ScalarType::Float:
          backward_fast(chunks, fast_args<float>(in.value, lv, in.sampling_locations, in.attention_weights, d), grad_c,
                        grad_value, grads, d);
          break;
        case ScalarType::BFloat16:
          backward_fast(chunks, fast_args<Bf16>(in.value, lv, in.sampling_locations, in.attention_weights, d), grad_c,
                        grad_value, grads, d);
          break;
        default:
          backward_fast(chunks, fast_args<_Float16>(in.value, lv, in.sampling_locations, in.attention_weights, d),
                        grad_c, grad_value, grads, d);
          break;
      }
    } else {
      dispatch_floating(value.scalar_type(), "mmgdino.ms_deform_attn_backward", [&](auto type_tag) {
        using scalar_t = decltype(type_tag);
        backward_cpu_impl<scalar_t>(grad_c, in.value, lv, in.sampling_locations, in.attention_weights, grads.value_acc,
                                    grads.sampling_locations, grads.attention_weights, d);
      });
    }
  } else {
    grads.zero_point_grads();
  }
  return grads.finish(value.scalar_type());
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(mmgdino, CPU, m) {
  m.impl("ms_deform_attn", TORCH_BOX(&ms_deform_attn_cpu));
  m.impl("ms_deform_attn_backward", TORCH_BOX(&ms_deform_attn_backward_cpu));
}

}  // namespace mmgdino
