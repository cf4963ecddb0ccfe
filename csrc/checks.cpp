#include "mmgdino/checks.h"

namespace mmgdino {
namespace {

void check_floating(const Tensor& t, const char* op, const char* name) {
  MMGDINO_CHECK(is_supported_float(t.scalar_type()), op, ": ", name,
                " must be float64, float32, float16 or bfloat16, got ", dtype_name(t.scalar_type()));
}

void check_same_device(const Tensor& t, const Tensor& ref, const char* op, const char* name, const char* ref_name) {
  MMGDINO_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", device_str(t), " but ", ref_name, " is on ",
                device_str(ref), "; all arguments must be on one device");
}

}  // namespace

MsdaDims check_ms_deform_attn_args(const Tensor& value, const Tensor& spatial_shapes, const Tensor& level_start_index,
                                   const Tensor& sampling_locations, const Tensor& attention_weights) {
  constexpr const char* op = "mmgdino.ms_deform_attn";
  MMGDINO_CHECK(value.dim() == 4, op, ": value must have shape (batch, num_values, num_heads, head_dim), got ",
                shape_str(value));
  MsdaDims d;
  d.batch = value.size(0);
  d.num_values = value.size(1);
  d.num_heads = value.size(2);
  d.head_dim = value.size(3);
  MMGDINO_CHECK(spatial_shapes.dim() == 2 && spatial_shapes.size(1) == 2, op,
                ": spatial_shapes must have shape (num_levels, 2) holding (height, width), got ",
                shape_str(spatial_shapes));
  d.num_levels = spatial_shapes.size(0);
  MMGDINO_CHECK(d.num_levels >= 1, op, ": spatial_shapes must describe at least one level");
  MMGDINO_CHECK(spatial_shapes.scalar_type() == ScalarType::Long, op, ": spatial_shapes must be int64, got ",
                dtype_name(spatial_shapes.scalar_type()));
  MMGDINO_CHECK(level_start_index.dim() == 1 && level_start_index.size(0) == d.num_levels, op,
                ": level_start_index must have shape (num_levels,) = (", d.num_levels, ",), got ",
                shape_str(level_start_index));
  MMGDINO_CHECK(level_start_index.scalar_type() == ScalarType::Long, op, ": level_start_index must be int64, got ",
                dtype_name(level_start_index.scalar_type()));
  MMGDINO_CHECK(sampling_locations.dim() == 6, op,
                ": sampling_locations must have shape (batch, num_queries, num_heads, num_levels, "
                "num_points, 2), got ",
                shape_str(sampling_locations));
  d.num_queries = sampling_locations.size(1);
  d.num_points = sampling_locations.size(4);
  MMGDINO_CHECK(sampling_locations.size(0) == d.batch && sampling_locations.size(2) == d.num_heads &&
                    sampling_locations.size(3) == d.num_levels && sampling_locations.size(5) == 2,
                op,
                ": sampling_locations must have shape (batch, num_queries, num_heads, num_levels, "
                "num_points, 2) = (",
                d.batch, ", num_queries, ", d.num_heads, ", ", d.num_levels, ", num_points, 2), got ",
                shape_str(sampling_locations));
  MMGDINO_CHECK(attention_weights.dim() == 5 && attention_weights.size(0) == d.batch &&
                    attention_weights.size(1) == d.num_queries && attention_weights.size(2) == d.num_heads &&
                    attention_weights.size(3) == d.num_levels && attention_weights.size(4) == d.num_points,
                op,
                ": attention_weights must have shape (batch, num_queries, num_heads, num_levels, "
                "num_points) = (",
                d.batch, ", ", d.num_queries, ", ", d.num_heads, ", ", d.num_levels, ", ", d.num_points, "), got ",
                shape_str(attention_weights));
  check_floating(value, op, "value");
  MMGDINO_CHECK(
      sampling_locations.scalar_type() == value.scalar_type() && attention_weights.scalar_type() == value.scalar_type(),
      op, ": value, sampling_locations and attention_weights must share one dtype, got ",
      dtype_name(value.scalar_type()), ", ", dtype_name(sampling_locations.scalar_type()), ", ",
      dtype_name(attention_weights.scalar_type()));
  check_same_device(spatial_shapes, value, op, "spatial_shapes", "value");
  check_same_device(level_start_index, value, op, "level_start_index", "value");
  check_same_device(sampling_locations, value, op, "sampling_locations", "value");
  check_same_device(attention_weights, value, op, "attention_weights", "value");
  return d;
}

void check_ms_deform_attn_grad(const Tensor& grad_output, const Tensor& value, const MsdaDims& d) {
  constexpr const char* op = "mmgdino.ms_deform_attn_backward";
  MMGDINO_CHECK(grad_output.dim() == 3 && grad_output.size(0) == d.batch && grad_output.size(1) == d.num_queries &&
                    grad_output.size(2) == d.num_heads * d.head_dim,
                op, ": grad_output must have shape (batch, num_queries, num_heads * head_dim) = (", d.batch, ", ",
                d.num_queries, ", ", d.num_heads * d.head_dim, "), got ", shape_str(grad_output));
  MMGDINO_CHECK(grad_output.scalar_type() == value.scalar_type(), op, ": grad_output must be ",
                dtype_name(value.scalar_type()), " like value, got ", dtype_name(grad_output.scalar_type()));
  check_same_device(grad_output, value, op, "grad_output", "value");
}

void check_level_extents_on_host(const Tensor& spatial_shapes, const Tensor& level_start_index, int64_t num_values) {
  constexpr const char* op = "mmgdino.ms_deform_attn";
  const auto shapes = torch::stable::contiguous(spatial_shapes);
  const auto starts = torch::stable::contiguous(level_start_index);
  const int64_t* hw = shapes.const_data_ptr<int64_t>();
  const int64_t* start = starts.const_data_ptr<int64_t>();
  for (int64_t l = 0; l < shapes.size(0); ++l) {
    const int64_t h = hw[2 * l];
    const int64_t w = hw[2 * l + 1];
    MMGDINO_CHECK(h >= 1 && w >= 1, op, ": spatial_shapes[", l, "] = (", h, ", ", w,
                  ") must hold a positive (height, width)");
    MMGDINO_CHECK(start[l] >= 0 && start[l] + h * w <= num_values, op, ": level ", l, " spans rows [", start[l], ", ",
                  start[l] + h * w, ") of value, which has num_values = ", num_values,
                  " rows; spatial_shapes and level_start_index must fit inside value");
  }
  // The table flattening produces: each start the running sum of the areas before it, value exactly that long.
  int64_t total = 0;
  for (int64_t l = 0; l < shapes.size(0); ++l) {
    MMGDINO_CHECK(start[l] == total, op, ": level_start_index[", l, "] = ", start[l],
                  ", but the levels before it hold ", total,
                  " rows; it must be the running sum of height * width over spatial_shapes");
    total += hw[2 * l] * hw[2 * l + 1];
  }
  MMGDINO_CHECK(num_values == total, op, ": value has num_values = ", num_values, " rows but spatial_shapes cover ",
                total, "; they must be equal");
}

ContrastiveDims check_contrastive_args(const Tensor& vision, const Tensor& text, const Tensor& text_token_mask,
                                       const Tensor& bias) {
  constexpr const char* op = "mmgdino.contrastive_logits";
  MMGDINO_CHECK(vision.dim() == 3, op, ": vision must have shape (batch, num_rows, dim), got ", shape_str(vision));
  ContrastiveDims d;
  d.batch = vision.size(0);
  d.num_rows = vision.size(1);
  d.dim = vision.size(2);
  MMGDINO_CHECK(text.dim() == 3 && text.size(0) == d.batch && text.size(2) == d.dim, op,
                ": text must have shape (batch, num_tokens, dim) = (", d.batch, ", num_tokens, ", d.dim, "), got ",
                shape_str(text));
  d.num_tokens = text.size(1);
  MMGDINO_CHECK(
      text_token_mask.dim() == 2 && text_token_mask.size(0) == d.batch && text_token_mask.size(1) == d.num_tokens, op,
      ": text_token_mask must have shape (batch, num_tokens) = (", d.batch, ", ", d.num_tokens, "), got ",
      shape_str(text_token_mask));
  MMGDINO_CHECK(text_token_mask.scalar_type() == ScalarType::Bool, op, ": text_token_mask must be bool, got ",
                dtype_name(text_token_mask.scalar_type()));
  MMGDINO_CHECK(bias.dim() == 0, op, ": bias must be a 0-dim tensor, got shape ", shape_str(bias));
  check_floating(vision, op, "vision");
  MMGDINO_CHECK(text.scalar_type() == vision.scalar_type(), op, ": text must be ", dtype_name(vision.scalar_type()),
                " like vision, got ", dtype_name(text.scalar_type()));
  check_floating(bias, op, "bias");
  check_same_device(text, vision, op, "text", "vision");
  check_same_device(text_token_mask, vision, op, "text_token_mask", "vision");
  check_same_device(bias, vision, op, "bias", "vision");
  return d;
}

void check_quantize_uint8_args(const Tensor& x, double scale, int64_t zero_point) {
  constexpr const char* op = "mmgdino.quantize_uint8";
  check_floating(x, op, "x");
  MMGDINO_CHECK(scale > 0 && scale < 1e38, op, ": scale must be positive and finite, got ", scale);
  MMGDINO_CHECK(zero_point >= 0 && zero_point <= 255, op, ": zero_point must be in [0, 255], got ", zero_point);
}

}  // namespace mmgdino
