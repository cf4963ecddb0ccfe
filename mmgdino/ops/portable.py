"""The "portable" backend: the operators written in standard PyTorch ops that exporters translate (ONNX
GridSample, MatMul, ReduceMax), for a model that must run outside PyTorch. Dispatch picks it for every operator
call made while `portable()` is active (mmgdino.export uses it), or when asked by name. Same results as the
kernels; slower in PyTorch.

Multi-scale deformable attention samples each level with grid_sample (one call per level, as transformers does):
the level's (height, width) must be Python ints (or symbolic sizes) at trace time, which the model has and passes
as `level_shapes` (a tensor's values are unknown while tracing); a gather
formulation would materialize every corner of every point ((B*H*Q) x (L*P*4) x D values, 1.4 GB for the
encoder at 800x1333), where grid_sample keeps one level's samples.
"""

from contextlib import contextmanager

import torch
import torch.nn.functional as F

from ._checks import accumulate_dtype

_depth = 0


@contextmanager
def portable():
    """Within this block every operator call runs on this backend (e.g. to export an ONNX graph)."""
    global _depth
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1


def active():
    return _depth > 0


def ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, level_shapes=None):
    """The operator's arguments, plus level_shapes: [(height, width)] per level as Python ints, needed while
    tracing (read from spatial_shapes otherwise). Levels are taken in order (level_start_index is their running
    sum, checked by the operator). -> (B, Q, H * D), accumulated as the kernels accumulate."""
    if level_shapes is None:
        if torch.compiler.is_compiling() or torch.compiler.is_exporting():
            raise ValueError("mmgdino.ms_deform_attn: the portable backend needs level_shapes while tracing")
        level_shapes = [tuple(shape) for shape in spatial_shapes.tolist()]
    batch, _, heads, head_dim = value.shape
    queries, points = sampling_locations.shape[1], sampling_locations.shape[4]
    acc = accumulate_dtype(value.dtype)
    grids = (2 * sampling_locations - 1).to(value.dtype)
    out = None
    start = 0
    for level, (height, width) in enumerate(level_shapes):
        level_value = value[:, start : start + height * width].permute(0, 2, 3, 1)
        level_value = level_value.reshape(batch * heads, head_dim, height, width)
        start = start + height * width
        grid = grids[:, :, :, level].transpose(1, 2).reshape(batch * heads, queries, points, 2)
        sampled = F.grid_sample(level_value, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        weights = attention_weights[:, :, :, level].transpose(1, 2).reshape(batch * heads, 1, queries, points)
        part = (sampled.to(acc) * weights.to(acc)).sum(-1)  # (B * H, D, Q)
        out = part if out is None else out + part
    out = out.view(batch, heads, head_dim, queries).permute(0, 3, 1, 2).reshape(batch, queries, heads * head_dim)
    return out.to(value.dtype)


def _logits(vision, text, text_keep, bias, scale):
    acc = accumulate_dtype(vision.dtype)
    logits = torch.matmul(vision.to(acc), text.to(acc).transpose(-1, -2)) * scale + bias.to(acc)
    return logits.masked_fill(~text_keep[:, None, :], float("-inf"))


def contrastive_logits(vision, text, text_keep, bias, scale, max_text_len):
    """(B, N, max_text_len) in the accumulation dtype: (vision @ text^T) * scale + bias, -inf where masked and in
    the padding."""
    logits = _logits(vision, text, text_keep, bias, scale)
    return F.pad(logits, (0, max_text_len - text.shape[1]), value=float("-inf"))


def contrastive_max(vision, text, text_keep, bias, scale):
    """(B, N): the maximum over the prompt's tokens of contrastive_logits."""
    return _logits(vision, text, text_keep, bias, scale).amax(-1)
