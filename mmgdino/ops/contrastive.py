"""mmgdino.ops.contrastive_logits / contrastive_max: the MM Grounding DINO / Grounding DINO class head."""

import torch

from . import _backends, _checks, _torch_impl
from ._library import default_scale


def _bias_tensor(bias, like):
    if isinstance(bias, torch.Tensor):
        return bias
    # A device-side fill, not a host-to-device copy, so a Python float costs no transfer.
    return like.new_full((), float(bias), dtype=_checks.logits_dtype(like.dtype))


def _prepare(vision, text, text_token_mask, bias, scale):
    bias = _bias_tensor(bias, vision)
    _checks.check_contrastive(vision, text, text_token_mask, bias)
    scale = default_scale(vision.shape[-1]) if scale is None else float(scale)
    return bias, scale


def contrastive_logits(vision, text, text_token_mask, *, bias=0.0, scale=None, max_text_len=256, backend=None):
    """(vision @ text^T) * scale + bias, -inf where text_token_mask is False and in the padding to max_text_len.

    Args:
        vision: (batch, num_rows, dim) query or pixel features.
        text: (batch, num_tokens, dim) text features.
        text_token_mask: (batch, num_tokens) bool, True for real tokens.
        bias: float or 0-dim tensor (e.g. transformers' per-layer contrastive bias parameter).
        scale: default 1/sqrt(dim) (MM Grounding DINO, LLMDet); scale=1, bias=0 is Grounding DINO.
        max_text_len: width of the padded output (transformers' config.max_text_len, 256).

    Returns:
        (batch, num_rows, max_text_len) float32 (float64 for float64 inputs).
    """
    bias, scale = _prepare(vision, text, text_token_mask, bias, scale)
    if max_text_len < text.shape[1]:
        raise ValueError(
            f"mmgdino.contrastive_logits: max_text_len ({max_text_len}) must be at least num_tokens ({text.shape[1]})"
        )
    chosen = _backends.select_backend("contrastive_logits", backend, vision.device)
    if chosen == "torch":
        return _torch_impl.contrastive_logits(vision, text, text_token_mask, bias, scale, max_text_len)
    if chosen == "triton":
        return torch.ops.mmgdino.contrastive_logits_triton(vision, text, text_token_mask, bias, scale, max_text_len)
    return torch.ops.mmgdino.contrastive_logits(vision, text, text_token_mask, bias, scale, max_text_len)


def contrastive_max(vision, text, text_token_mask, *, bias=0.0, scale=None, backend=None):
    """max over valid tokens of contrastive_logits, (batch, num_rows), without building the padded logits.

    This is what two-stage query selection ranks pixels by; rows with no valid token get -inf.
    """
    bias, scale = _prepare(vision, text, text_token_mask, bias, scale)
    if scale <= 0:
        raise ValueError(f"mmgdino.contrastive_max: scale must be positive, got {scale}")
    chosen = _backends.select_backend("contrastive_max", backend, vision.device)
    if chosen == "torch":
        return _torch_impl.contrastive_max(vision, text, text_token_mask, bias, scale)
    if chosen == "triton":
        return torch.ops.mmgdino.contrastive_max_triton(vision, text, text_token_mask, bias, scale)
    return torch.ops.mmgdino.contrastive_max(vision, text, text_token_mask, bias, scale)
