"""Checkpoints: read and written through transformers' own model classes (hub client, key conversions, weight
tying), the weights moved to and from ours by their identical state-dict keys; plus random initialization."""

import math
from pathlib import Path

import torch

from .hub import ModelLoadError, cache_first
from .layers import BiAttention, ContrastiveHead, MLPHead, MultiscaleDeformableAttention


def load_state_dict(model, state):
    """Load the state dict of a live transformers model: the same keys, its weight tying already applied (the
    shared heads arrive with equal values, and our shared heads are one module)."""
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelLoadError(f"weights do not fit this architecture: {str(exc).splitlines()[0]}") from exc
    return model


def initialize(model):
    """Random weights as transformers initializes them, so `from_config` gives a sensible untrained model."""
    torch.nn.init.normal_(model.model.level_embed)
    for module in model.modules():
        if isinstance(module, MultiscaleDeformableAttention):
            heads, levels, points = module.num_heads, module.num_levels, module.num_points
            torch.nn.init.zeros_(module.sampling_offsets.weight)
            thetas = torch.arange(heads, dtype=torch.float32) * (2.0 * math.pi / heads)
            grid = torch.stack([thetas.cos(), thetas.sin()], -1)
            grid = (grid / grid.abs().max(-1, keepdim=True).values).view(heads, 1, 1, 2).repeat(1, levels, points, 1)
            grid *= torch.arange(1, points + 1, dtype=torch.float32).view(1, 1, points, 1)
            with torch.no_grad():
                module.sampling_offsets.bias.copy_(grid.flatten())
            for linear in (module.attention_weights,):
                torch.nn.init.zeros_(linear.weight)
                torch.nn.init.zeros_(linear.bias)
            for linear in (module.value_proj, module.output_proj):
                torch.nn.init.xavier_uniform_(linear.weight)
                torch.nn.init.zeros_(linear.bias)
        elif isinstance(module, BiAttention):
            for linear in module.children():
                torch.nn.init.xavier_uniform_(linear.weight)
                torch.nn.init.zeros_(linear.bias)
        elif isinstance(module, MLPHead) and module is not model.model.decoder.reference_points_head:
            torch.nn.init.zeros_(module.layers[-1].weight)
            torch.nn.init.zeros_(module.layers[-1].bias)
        elif isinstance(module, ContrastiveHead) and module.bias is not None:
            torch.nn.init.constant_(module.bias, -math.log(99.0))
    return model


def transformers_class(config):
    import transformers

    names = {
        "mm-grounding-dino": "MMGroundingDinoForObjectDetection",
        "grounding-dino": "GroundingDinoForObjectDetection",
    }
    if config.model_type not in names:
        raise ModelLoadError(f"model_type {config.model_type!r} is not MM Grounding DINO, LLMDet or Grounding DINO")
    return getattr(transformers, names[config.model_type])


def load_pretrained(cls, name_or_path, *, dtype=None, device=None, revision=None, local_files_only=None):
    """Read the checkpoint through transformers (its hub client, key conversions and tying), then move the weights
    into our model; transformers' copy is dropped."""
    from transformers import AutoConfig

    path = Path(str(name_or_path)).expanduser()
    if not path.is_dir() and (
        path.exists() or str(name_or_path).startswith((".", "/", "~")) or str(name_or_path).count("/") > 1
    ):
        raise ModelLoadError(f"model {str(name_or_path)!r}: no such directory")
    where = str(path) if path.is_dir() else str(name_or_path)
    try:
        config = cache_first(AutoConfig.from_pretrained, where, local_files_only=local_files_only, revision=revision)
    except ModelLoadError:
        raise
    except Exception as exc:
        text = str(exc).strip()
        raise ModelLoadError(f"{where}: no readable config.json ({text.splitlines()[0] if text else exc})") from exc
    try:
        reference = cache_first(transformers_class(config).from_pretrained, where, local_files_only=local_files_only,
                                revision=revision, dtype=dtype or torch.float32)  # fmt: skip
    except ModelLoadError:
        raise
    except Exception as exc:  # a directory with a config but no (or unreadable) weights
        text = str(exc).strip()
        raise ModelLoadError(f"{where}: no readable weights ({text.splitlines()[0] if text else exc})") from exc
    model = cls(reference.config)
    load_state_dict(model, reference.state_dict())
    del reference
    return model.to(device=device, dtype=dtype or torch.float32).eval()


def save_pretrained(model, directory):
    """A checkpoint transformers (and we) can read: written by transformers' own model holding our weights, so the
    keys and files are exactly what transformers writes."""
    reference = transformers_class(model.config)(model.config)
    reference.load_state_dict(model.state_dict())
    reference.save_pretrained(str(directory))
