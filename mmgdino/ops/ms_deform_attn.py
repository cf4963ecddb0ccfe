"""mmgdino.ops.ms_deform_attn: multi-scale deformable attention, as transformers' MultiScaleDeformableAttention."""

import torch

from . import _backends, _checks


def ms_deform_attn(
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights, *, level_shapes=None, backend=None
):
    """Multi-scale deformable attention (bilinear sampling, zero padding, align_corners=False).

    Args:
        value: (batch, num_values, num_heads, head_dim), the flattened feature levels.
        spatial_shapes: (num_levels, 2) int64, (height, width) of each level.
        level_start_index: (num_levels,) int64, first row of each level in value.
        sampling_locations: (batch, num_queries, num_heads, num_levels, num_points, 2), normalized (x, y).
        attention_weights: (batch, num_queries, num_heads, num_levels, num_points).
        level_shapes: optional, spatial_shapes as Python ints [(height, width)], for the "portable" backend
            while tracing (export), where a tensor's values are unknown.
        backend: "cuda", "triton", "cpu", "torch", "portable", or None for the best one available for value's
            device (the portable one inside `mmgdino.ops.portable.portable()`).

    Returns:
        (batch, num_queries, num_heads * head_dim) in value's dtype. Differentiable in value,
        sampling_locations and attention_weights on every backend.
    """
    dims = _checks.check_ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    if spatial_shapes.device.type == "cpu" and not torch.compiler.is_compiling():
        # Reading a host tensor costs nothing; device kernels bounds-guard instead of syncing to check.
        _checks.check_level_extents(spatial_shapes, level_start_index, dims[1])
    kernel = _backends.kernel_for("ms_deform_attn", backend, value.device)
    return kernel(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                  level_shapes=level_shapes)  # fmt: skip
