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


TRANSFORMERS_CLASSES = {
    "mm-grounding-dino": "MMGroundingDinoForObjectDetection",
    "grounding-dino": "GroundingDinoForObjectDetection",
}


def transformers_class_of(family):
    import transformers

    if family not in TRANSFORMERS_CLASSES:
        raise ModelLoadError(f"model_type {family!r} is not MM Grounding DINO, LLMDet or Grounding DINO")
    return getattr(transformers, TRANSFORMERS_CLASSES[family])


def transformers_class(config):
    return transformers_class_of(config.model_type)


def load_pretrained(cls, name_or_path, *model_args, dtype=None, device=None, config=None, state_dict=None,
                    output_loading_info=False, **kwargs):  # fmt: skip
    """Read the checkpoint through transformers (its hub client, key conversions and tying), then move the weights
    into our model; transformers' copy is dropped. Every other from_pretrained argument (config=, state_dict=,
    revision=, local_files_only=, subfolder=, ...) means what it means to transformers' own class, which gets it.
    Returns the model, or (model, loading info) with output_loading_info=True."""
    from transformers import AutoConfig

    where = None if name_or_path is None else str(name_or_path)
    if where is not None:
        path = Path(where).expanduser()
        if not path.is_dir() and (path.exists() or where.startswith((".", "/", "~")) or where.count("/") > 1):
            raise ModelLoadError(f"model {where!r}: no such directory")
        where = str(path) if path.is_dir() else where
    hub = {k: kwargs[k] for k in ("revision", "local_files_only", "subfolder", "token", "cache_dir") if k in kwargs}
    if config is None:
        if where is None:
            raise ModelLoadError("from_pretrained needs a model id or folder, or config= (with state_dict=)")
        try:
            config = cache_first(AutoConfig.from_pretrained, where, **hub)
        except ModelLoadError:
            raise
        except Exception as exc:
            text = str(exc).strip()
            raise ModelLoadError(f"{where}: no readable config.json ({text.splitlines()[0] if text else exc})") from exc
    dtype = dtype if dtype not in (None, "auto") else None

    def read(location, **more):
        return transformers_class(config).from_pretrained(
            location, *model_args, config=config, state_dict=state_dict, dtype=dtype or torch.float32,
            output_loading_info=output_loading_info, **more,
        )  # fmt: skip

    try:
        loaded = read(None, **kwargs) if where is None else cache_first(read, where, **kwargs)
    except ModelLoadError:
        raise
    except Exception as exc:  # a directory with a config but no (or unreadable) weights
        text = str(exc).strip()
        raise ModelLoadError(f"{where}: no readable weights ({text.splitlines()[0] if text else exc})") from exc
    reference, info = loaded if output_loading_info else (loaded, None)
    model = cls(reference.config)
    load_state_dict(model, reference.state_dict())
    model.name_or_path = where
    del reference
    model = model.to(device=device, dtype=dtype or torch.float32).eval()
    return (model, info) if output_loading_info else model


def save_pretrained(model, directory, **kwargs):
    """A checkpoint transformers (and we) can read: written by transformers' own model holding our weights, so the
    keys and files are exactly what transformers writes (kwargs: its save_pretrained's)."""
    reference = transformers_class(model.config)(model.config)
    reference.load_state_dict(model.state_dict())
    reference.to(model.dtype).save_pretrained(str(directory), **kwargs)
