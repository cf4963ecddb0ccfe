"""mmgdino.ops.contrastive_logits / contrastive_max: the MM Grounding DINO / Grounding DINO class head."""

import math

import torch

from . import _backends, _checks


def _prepare(vision, text, text_token_mask, bias, scale):
    if not isinstance(bias, torch.Tensor):
        # A device-side fill, not a host-to-device copy, so a Python float costs no transfer.
        bias = vision.new_full((), float(bias), dtype=_checks.accumulate_dtype(vision.dtype))
    _checks.check_contrastive(vision, text, text_token_mask, bias)
    # MM Grounding DINO's scale; Grounding DINO passes scale=1.
    scale = 1.0 / math.sqrt(vision.shape[-1]) if scale is None else float(scale)
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
    kernel = _backends.kernel_for("contrastive_logits", backend, vision.device)
    return kernel(vision, text, text_token_mask, bias, scale, max_text_len)


def contrastive_max(vision, text, text_token_mask, *, bias=0.0, scale=None, backend=None):
    """max over valid tokens of contrastive_logits, (batch, num_rows), without building the padded logits.

    This is what two-stage query selection ranks pixels by; rows with no valid token get -inf.
    """
    bias, scale = _prepare(vision, text, text_token_mask, bias, scale)
    if scale <= 0:
        raise ValueError(f"mmgdino.contrastive_max: scale must be positive, got {scale}")
    kernel = _backends.kernel_for("contrastive_max", backend, vision.device)
    return kernel(vision, text, text_token_mask, bias, scale)
