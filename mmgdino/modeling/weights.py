"""Weights: the transformers classes that describe each model family, where a checkpoint's config comes from (one
`ModelLoadError` line when it cannot be read), and the random initialization transformers gives every module of
our tree (what `_init_weights` runs, module by module)."""

import math
from pathlib import Path

import torch
from torch import nn
from transformers import initialization as init

from .hub import ModelLoadError, cache_first
from .layers import BiAttention, ContrastiveHead, FusionLayer, MLPHead, MultiscaleDeformableAttention

SPECIAL_TOKENS = (101, 102, 1012, 1029)  # [CLS], [SEP], ".", "?" in BERT's vocabulary: phrase boundaries

# model_type -> (transformers' detection class, its base model class); both families share our module tree.
FAMILIES = {
    "mm-grounding-dino": ("MMGroundingDinoForObjectDetection", "MMGroundingDinoModel"),
    "grounding-dino": ("GroundingDinoForObjectDetection", "GroundingDinoModel"),
}
HUB_ARGUMENTS = ("revision", "local_files_only", "subfolder", "token", "cache_dir")


def check_family(config):
    family = getattr(config, "model_type", None)
    if family not in FAMILIES:
        raise ValueError(f"expected an MM Grounding DINO or Grounding DINO config, got model_type={family!r}")
    return family


def transformers_class_of(family, base=False):
    import transformers

    if family not in FAMILIES:
        raise ModelLoadError(f"model_type {family!r} is not MM Grounding DINO, LLMDet or Grounding DINO")
    return getattr(transformers, FAMILIES[family][1 if base else 0])


def tied_weights_keys(config):
    """transformers' tying rules for this config: its class's `_tied_weights_keys`, less the heads the config
    leaves untied (as transformers' __init__ removes them). A one-layer decoder has nothing to tie its heads to."""
    keys = dict(transformers_class_of(config.model_type)._tied_weights_keys)
    if not config.decoder_bbox_embed_share or config.decoder_layers == 1:
        keys.pop(r"bbox_embed.(?![0])\d+", None)
    if not getattr(config, "decoder_cls_embed_share", False) or config.decoder_layers == 1:
        keys.pop(r"class_embed.(?![0])\d+", None)
    return keys


def checkpoint_location(name_or_path):
    """A local folder as a path string, a hub id as it is, None as None; a path that is not a folder is a
    ModelLoadError (the hub client would otherwise take it for an id)."""
    if name_or_path is None:
        return None
    where = str(name_or_path)
    path = Path(where).expanduser()
    if not path.is_dir() and (path.exists() or where.startswith((".", "/", "~")) or where.count("/") > 1):
        raise ModelLoadError(f"model {where!r}: no such directory")
    return str(path) if path.is_dir() else where


def read_config(where, **hub):
    from transformers import AutoConfig

    if where is None:
        raise ModelLoadError("from_pretrained needs a model id or folder, or config= (with state_dict=)")
    try:
        config = cache_first(AutoConfig.from_pretrained, where, **hub)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"{where}: no readable config.json ({first_line(exc)})") from exc
    if config.model_type not in FAMILIES:
        raise ModelLoadError(f"{where}: model_type {config.model_type!r} is not MM Grounding DINO or Grounding DINO")
    return config


def first_line(exc):
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def initialize_module(module, config):
    """transformers' initialization of one module of our tree beyond PreTrainedModel's generic rules (which run
    first): the same distributions as `MMGroundingDinoPreTrainedModel._init_weights`, through transformers'
    `initialization` functions, which leave loaded tensors alone. Buffers are set here too, so a model built on
    the meta device and materialized (`to_empty`, or `from_pretrained`'s non-persistent buffers) gets real
    values, never the memory it was handed."""
    name = type(module).__name__
    if isinstance(module, MultiscaleDeformableAttention):
        heads, levels, points = module.num_heads, module.num_levels, module.num_points
        init.constant_(module.sampling_offsets.weight, 0.0)
        thetas = torch.arange(heads, dtype=torch.int64).to(torch.get_default_dtype()) * (2.0 * math.pi / heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(heads, 1, 1, 2).repeat(1, levels, points, 1)
        grid *= torch.arange(1, points + 1, dtype=grid.dtype).view(1, 1, points, 1)
        init.copy_(module.sampling_offsets.bias, grid.view(-1))
        init.constant_(module.attention_weights.weight, 0.0)
        init.constant_(module.attention_weights.bias, 0.0)
        for linear in (module.value_proj, module.output_proj):
            init.xavier_uniform_(linear.weight)
            init.constant_(linear.bias, 0.0)
    elif isinstance(module, BiAttention):
        for linear in module.children():
            init.xavier_uniform_(linear.weight)
            init.zeros_(linear.bias)
    elif isinstance(module, FusionLayer):
        init.constant_(module.vision_param, 1e-4)
        init.constant_(module.text_param, 1e-4)
    elif isinstance(module, MLPHead):
        init.constant_(module.layers[-1].weight, 0)
        init.constant_(module.layers[-1].bias, 0)
    elif isinstance(module, ContrastiveHead) and module.bias is not None:
        init.constant_(module.bias, -math.log((1 - 0.01) / 0.01))
    elif name.endswith("LearnedPositionEmbedding"):
        init.uniform_(module.row_embeddings.weight)
        init.uniform_(module.column_embeddings.weight)
    elif name.endswith("FrozenBatchNorm2d"):  # ResNet backbones; transformers leaves these buffers to the checkpoint
        for buffer, value in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
            init.constant_(getattr(module, buffer), value)
    if isinstance(getattr(module, "level_embed", None), nn.Parameter):
        init.normal_(module.level_embed)
    if isinstance(getattr(module, "special_tokens", None), torch.Tensor):
        init.copy_(module.special_tokens, torch.tensor(SPECIAL_TOKENS))
