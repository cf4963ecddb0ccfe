"""mmgdino.patch / mmgdino.unpatch: accelerate a live transformers model in place.

Routes every transformers `MultiScaleDeformableAttention` kernel module (MM Grounding DINO, Grounding DINO,
Deformable DETR, RT-DETR, OmDet-Turbo, ...) and every Grounding DINO / MM Grounding DINO contrastive class head to
mmgdino.ops, by giving those module instances their own `forward`. unpatch removes it again; weights, state dict
keys and everything else stay untouched.
"""

import types

from . import ops

_MARK = "_mmgdino_original_forward"


def _msda_forward(
    self,
    value,
    value_spatial_shapes,
    value_spatial_shapes_list,
    level_start_index,
    sampling_locations,
    attention_weights,
    im2col_step=64,
):
    # transformers passes one dtype everywhere; under autocast the offsets may come back float32.
    dtype = value.dtype
    return ops.ms_deform_attn(
        value,
        value_spatial_shapes,
        level_start_index,
        sampling_locations.to(dtype),
        attention_weights.to(dtype),
        backend=self._mmgdino_backend,
    )


def _contrastive_forward(self, vision_hidden_state, text_hidden_state, text_token_mask):
    """MM Grounding DINO / LLMDet head: (q . t) / sqrt(d) + per-layer bias; Grounding DINO's: q . t (no bias
    parameter: no scale, no bias)."""
    mm = getattr(self, "bias", None) is not None
    # Under autocast the two sides may arrive in different dtypes (the text's LayerNorm float32, a Linear's bf16).
    text_hidden_state = text_hidden_state.to(vision_hidden_state.dtype)
    return ops.contrastive_logits(vision_hidden_state, text_hidden_state, text_token_mask.bool(),
                                  bias=self.bias if mm else 0.0, scale=None if mm else 1.0,
                                  max_text_len=self.max_text_len, backend=self._mmgdino_backend)  # fmt: skip


_REPLACEMENTS = {
    "MultiScaleDeformableAttention": _msda_forward,
    "MMGroundingDinoContrastiveEmbedding": _contrastive_forward,
    "GroundingDinoContrastiveEmbedding": _contrastive_forward,
}


def _replacement(module):
    name = type(module).__name__
    if name not in _REPLACEMENTS or not type(module).__module__.startswith("transformers."):
        return None
    return _REPLACEMENTS[name]


def patch(model, backend=None):
    """Routes `model`'s deformable attention and contrastive heads to mmgdino.ops; returns `model`.

    backend: "cuda", "triton", "cpu", "torch", or None for the best one available for each call's device.
    Raises ValueError if the model has none of the modules mmgdino accelerates.
    """
    if backend is not None and backend not in ops.BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; backends: {', '.join(ops.BACKENDS)}")
    patched = 0
    for module in model.modules():
        forward = _replacement(module)
        if forward is None:
            continue
        if _MARK not in module.__dict__:
            module.__dict__[_MARK] = module.__dict__.get("forward")
        module._mmgdino_backend = backend
        module.forward = types.MethodType(forward, module)
        patched += 1
    if patched == 0:
        raise ValueError(
            f"{type(model).__name__} has no MultiScaleDeformableAttention or contrastive head for mmgdino to patch"
        )
    return model


def unpatch(model):
    """Undoes patch(model); returns `model`."""
    for module in model.modules():
        if _MARK not in module.__dict__:
            continue
        original = module.__dict__.pop(_MARK)
        if original is None:
            module.__dict__.pop("forward", None)
        else:
            module.forward = original
        module.__dict__.pop("_mmgdino_backend", None)
    return model


def is_patched(model):
    return any(_MARK in m.__dict__ for m in model.modules())


__all__ = ["patch", "unpatch", "is_patched"]
