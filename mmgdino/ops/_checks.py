"""Argument validation for the mmgdino operators, in the words of the Python API.

Runs in every backend's entry point and in the fake kernels, so shape errors surface before tracing or
launching anything. It reads shapes, dtypes and devices only (never tensor data), so it costs no host sync.
The compiled kernels repeat these checks in C++ (csrc/checks.cpp) for callers of torch.ops.mmgdino.* directly.
"""

import torch

_FLOATING = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


def _shape(t):
    return tuple(t.shape)


def _require(cond, message):
    if not cond:
        raise ValueError(message)


def _require_dtype(cond, message):
    if not cond:
        raise TypeError(message)


def _same_device(t, ref, op, name, ref_name):
    _require(
        t.device == ref.device,
        f"{op}: {name} is on {t.device} but {ref_name} is on {ref.device}; all arguments must be on one device",
    )


def check_ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """Returns (batch, num_values, num_heads, head_dim, num_queries, num_levels, num_points)."""
    op = "mmgdino.ms_deform_attn"
    _require(
        value.dim() == 4,
        f"{op}: value must have shape (batch, num_values, num_heads, head_dim), got {_shape(value)}",
    )
    batch, num_values, num_heads, head_dim = value.shape
    _require(
        spatial_shapes.dim() == 2 and spatial_shapes.shape[1] == 2,
        f"{op}: spatial_shapes must have shape (num_levels, 2) holding (height, width), got {_shape(spatial_shapes)}",
    )
    num_levels = spatial_shapes.shape[0]
    _require(num_levels >= 1, f"{op}: spatial_shapes must describe at least one level")
    _require_dtype(
        spatial_shapes.dtype == torch.int64, f"{op}: spatial_shapes must be int64, got {spatial_shapes.dtype}"
    )
    _require(
        level_start_index.dim() == 1 and level_start_index.shape[0] == num_levels,
        f"{op}: level_start_index must have shape (num_levels,) = ({num_levels},), got {_shape(level_start_index)}",
    )
    _require_dtype(
        level_start_index.dtype == torch.int64, f"{op}: level_start_index must be int64, got {level_start_index.dtype}"
    )
    expected_loc = (
        "(batch, num_queries, num_heads, num_levels, num_points, 2) = "
        f"({batch}, num_queries, {num_heads}, {num_levels}, num_points, 2)"
    )
    _require(
        sampling_locations.dim() == 6,
        f"{op}: sampling_locations must have shape {expected_loc}, got {_shape(sampling_locations)}",
    )
    num_queries, num_points = sampling_locations.shape[1], sampling_locations.shape[4]
    _require(
        sampling_locations.shape[0] == batch
        and sampling_locations.shape[2] == num_heads
        and sampling_locations.shape[3] == num_levels
        and sampling_locations.shape[5] == 2,
        f"{op}: sampling_locations must have shape {expected_loc}, got {_shape(sampling_locations)}",
    )
    expected_attn = (batch, num_queries, num_heads, num_levels, num_points)
    _require(
        _shape(attention_weights) == expected_attn,
        f"{op}: attention_weights must have shape (batch, num_queries, num_heads, num_levels, num_points) = "
        f"{expected_attn}, got {_shape(attention_weights)}",
    )
    _require_dtype(
        value.dtype in _FLOATING, f"{op}: value must be float64, float32, float16 or bfloat16, got {value.dtype}"
    )
    _require_dtype(
        sampling_locations.dtype == value.dtype and attention_weights.dtype == value.dtype,
        f"{op}: value, sampling_locations and attention_weights must share one dtype, got "
        f"{value.dtype}, {sampling_locations.dtype}, {attention_weights.dtype}",
    )
    for name, t in (
        ("spatial_shapes", spatial_shapes),
        ("level_start_index", level_start_index),
        ("sampling_locations", sampling_locations),
        ("attention_weights", attention_weights),
    ):
        _same_device(t, value, op, name, "value")
    return batch, num_values, num_heads, head_dim, num_queries, num_levels, num_points


def check_ms_deform_attn_grad(grad_output, value, num_queries):
    op = "mmgdino.ms_deform_attn_backward"
    batch, _, num_heads, head_dim = value.shape
    expected = (batch, num_queries, num_heads * head_dim)
    _require(
        _shape(grad_output) == expected,
        f"{op}: grad_output must have shape (batch, num_queries, num_heads * head_dim) = {expected}, "
        f"got {_shape(grad_output)}",
    )
    _require_dtype(
        grad_output.dtype == value.dtype, f"{op}: grad_output must be {value.dtype} like value, got {grad_output.dtype}"
    )
    _same_device(grad_output, value, op, "grad_output", "value")


def check_level_extents(spatial_shapes, level_start_index, num_values):
    """Reads the level table; only for host tensors (device kernels bounds-guard instead of syncing). Every level
    must fit inside value, and the table must be the one flattening produces: each start the running sum of the
    levels' areas before it, value exactly as long as all of them."""
    op = "mmgdino.ms_deform_attn"
    shapes, starts = spatial_shapes.tolist(), level_start_index.tolist()
    for level, ((height, width), start) in enumerate(zip(shapes, starts)):
        _require(
            height >= 1 and width >= 1,
            f"{op}: spatial_shapes[{level}] = ({height}, {width}) must hold a positive (height, width)",
        )
        _require(
            0 <= start and start + height * width <= num_values,
            f"{op}: level {level} spans rows [{start}, {start + height * width}) of value, which has "
            f"num_values = {num_values} rows; spatial_shapes and level_start_index must fit inside value",
        )
    total = 0
    for level, ((height, width), start) in enumerate(zip(shapes, starts)):
        _require(
            start == total,
            f"{op}: level_start_index[{level}] = {start}, but the levels before it hold {total} rows; it must be the "
            "running sum of height * width over spatial_shapes",
        )
        total += height * width
    _require(
        num_values == total,
        f"{op}: value has num_values = {num_values} rows but spatial_shapes cover {total}; they must be equal",
    )


def check_contrastive(vision, text, text_token_mask, bias):
    """Returns (batch, num_rows, num_tokens, dim)."""
    op = "mmgdino.contrastive_logits"
    _require(vision.dim() == 3, f"{op}: vision must have shape (batch, num_rows, dim), got {_shape(vision)}")
    batch, num_rows, dim = vision.shape
    _require(
        text.dim() == 3 and text.shape[0] == batch and text.shape[2] == dim,
        f"{op}: text must have shape (batch, num_tokens, dim) = ({batch}, num_tokens, {dim}), got {_shape(text)}",
    )
    num_tokens = text.shape[1]
    _require(
        _shape(text_token_mask) == (batch, num_tokens),
        f"{op}: text_token_mask must have shape (batch, num_tokens) = ({batch}, {num_tokens}), "
        f"got {_shape(text_token_mask)}",
    )
    _require_dtype(
        text_token_mask.dtype == torch.bool, f"{op}: text_token_mask must be bool, got {text_token_mask.dtype}"
    )
    _require(bias.dim() == 0, f"{op}: bias must be a float or a 0-dim tensor, got shape {_shape(bias)}")
    _require_dtype(
        vision.dtype in _FLOATING, f"{op}: vision must be float64, float32, float16 or bfloat16, got {vision.dtype}"
    )
    _require_dtype(text.dtype == vision.dtype, f"{op}: text must be {vision.dtype} like vision, got {text.dtype}")
    _require_dtype(bias.dtype in _FLOATING, f"{op}: bias must be floating point, got {bias.dtype}")
    _same_device(text, vision, op, "text", "vision")
    _same_device(text_token_mask, vision, op, "text_token_mask", "vision")
    _same_device(bias, vision, op, "bias", "vision")
    return batch, num_rows, num_tokens, dim


def check_quantize_uint8(x, scale, zero_point):
    op = "mmgdino.quantize_uint8"
    _require_dtype(x.dtype in _FLOATING, f"{op}: x must be float64, float32, float16 or bfloat16, got {x.dtype}")
    _require(0 < scale < 1e38, f"{op}: scale must be positive and finite, got {scale}")
    _require(0 <= zero_point <= 255, f"{op}: zero_point must be in [0, 255], got {zero_point}")


def accumulate_dtype(input_dtype):
    """What every kernel accumulates in, and the dtype of the contrastive logits: float32 (as transformers returns
    logits), float64 kept so that the operators can be gradchecked."""
    return torch.float64 if input_dtype == torch.float64 else torch.float32
