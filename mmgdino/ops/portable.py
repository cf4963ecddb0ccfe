"""The operators written in standard PyTorch ops that exporters translate (ONNX GridSample, MatMul, ReduceMax),
for a model that must run outside PyTorch: the model's layers call these instead of the kernels while
`portable()` is active (mmgdino.export uses it). Same results as the kernels; slower in PyTorch.

Multi-scale deformable attention samples each level with grid_sample (one call per level, as transformers does):
the level's (height, width) must be Python ints (or symbolic sizes) at trace time, which the model has; a gather
formulation would materialize every corner of every point ((B*H*Q) x (L*P*4) x D values, 1.4 GB for the
encoder at 800x1333), where grid_sample keeps one level's samples.
"""

from contextlib import contextmanager

import torch
import torch.nn.functional as F

_depth = 0


@contextmanager
def portable():
    """Within this block the model's layers use the portable formulations (e.g. to export an ONNX graph)."""
    global _depth
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1


def active():
    return _depth > 0


def _accumulate(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def ms_deform_attn(value, shapes, sampling_locations, attention_weights):
    """value (B, S, H, D); shapes [(height, width)] per level; sampling_locations (B, Q, H, L, P, 2) normalized
    (x, y); attention_weights (B, Q, H, L, P) -> (B, Q, H * D), accumulated in float32 (float64 kept)."""
    batch, _, heads, head_dim = value.shape
    queries, points = sampling_locations.shape[1], sampling_locations.shape[4]
    acc = _accumulate(value.dtype)
    grids = (2 * sampling_locations - 1).to(value.dtype)
    out = None
    start = 0
    for level, (height, width) in enumerate(shapes):
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
    acc = _accumulate(vision.dtype)
    logits = torch.matmul(vision.to(acc), text.to(acc).transpose(-1, -2)) * scale
    if isinstance(bias, torch.Tensor):
        logits = logits + bias.to(acc)
    elif bias:
        logits = logits + bias
    return logits.masked_fill(~text_keep[:, None, :], float("-inf"))


def contrastive_logits(vision, text, text_keep, bias, scale, max_text_len):
    """float32 (B, N, max_text_len): (vision @ text^T) * scale + bias, -inf where masked and in the padding."""
    logits = _logits(vision, text, text_keep, bias, scale)
    return F.pad(logits, (0, max_text_len - text.shape[1]), value=float("-inf")).float()


def contrastive_max(vision, text, text_keep, bias, scale):
    """float32 (B, N): the maximum over the prompt's tokens of contrastive_logits."""
    return _logits(vision, text, text_keep, bias, scale).amax(-1).float()
