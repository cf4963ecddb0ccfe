"""Checkpoints: transformers' state-dict keys in, the same keys out, with transformers' weight tying applied on
load (the decoder's box heads are the detection heads; shared heads all read head 0)."""

import json
import math
import os
import re
from pathlib import Path

import torch

# Keys transformers itself drops on load: buffers it recomputes, and a Swin norm the backbone does not use.
_IGNORED = re.compile(r"relative_position_index|swin\.layernorm\.")


class ModelLoadError(RuntimeError):
    """A model could not be found or read (bad path, unknown hub id, no network); the message says which."""


def canonical_key(key, config):
    """The key whose value transformers copies into `key` when it ties weights (the key itself if untied)."""
    for alias, source in (("model.decoder.bbox_embed.", "bbox_embed."), ("model.decoder.class_embed.", "class_embed.")):
        if key.startswith(alias):
            key = source + key[len(alias):]
    if getattr(config, "decoder_bbox_embed_share", False):
        key = re.sub(r"^bbox_embed\.\d+\.", "bbox_embed.0.", key)
    if config.model_type == "mm-grounding-dino" and getattr(config, "decoder_cls_embed_share", False):
        key = re.sub(r"^class_embed\.\d+\.", "class_embed.0.", key)
    return key


def load_state_dict(model, state):
    """Load a transformers-keyed state dict; raise ModelLoadError naming missing keys."""
    ours = model.state_dict()
    chosen, missing = {}, []
    for key in ours:
        source = canonical_key(key, model.config)
        if source in state:
            chosen[key] = state[source]
        elif key in state:
            chosen[key] = state[key]
        elif not _IGNORED.search(key):
            missing.append(key)
    if missing:
        raise ModelLoadError(f"checkpoint lacks {len(missing)} weights of this architecture, e.g. {missing[:5]}")
    model.load_state_dict(chosen, strict=False)
    return model


def initialize(model):
    """Random weights as transformers initializes them, so `from_config` gives a sensible untrained model."""
    from .layers import BiAttention, MLPHead, MultiscaleDeformableAttention
    from .model import ContrastiveHead

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


def _resolve(name_or_path, revision, local_files_only):
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists() or str(name_or_path).startswith((".", "/", "~")) or str(name_or_path).count("/") > 1:
        raise ModelLoadError(f"model {name_or_path!r}: no such directory")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(name_or_path), revision=revision, local_files_only=bool(local_files_only),
                                      allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"]))
    except Exception as exc:  # the hub client raises many types; the user needs one clear line
        reason = type(exc).__name__
        offline = "offline" in str(exc).lower() or "connect" in str(exc).lower() or "LocalEntryNotFound" in reason
        hint = "no network, and it is not in the local cache" if offline else str(exc).splitlines()[0]
        raise ModelLoadError(f"model {name_or_path!r} could not be fetched from the Hugging Face Hub: {hint}") from exc


def _read_weights(directory):
    from safetensors.torch import load_file

    index = directory / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (directory / "model.safetensors").exists():
        files = ["model.safetensors"]
    else:
        raise ModelLoadError(f"{directory}: no model.safetensors (or sharded index) found")
    state = {}
    for name in files:
        state.update(load_file(str(directory / name)))
    return state


def load_pretrained(cls, name_or_path, *, dtype=None, device=None, revision=None, local_files_only=None):
    from transformers import AutoConfig

    if local_files_only is None:
        local_files_only = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    directory = _resolve(name_or_path, revision, local_files_only)
    try:
        config = AutoConfig.from_pretrained(str(directory))
    except Exception as exc:
        raise ModelLoadError(f"{directory}: unreadable config.json ({exc})") from exc
    model = cls(config)
    load_state_dict(model, _read_weights(directory))
    return model.to(device=device, dtype=dtype or torch.float32).eval()


def save_pretrained(model, directory):
    """config.json + model.safetensors with each tied tensor stored once, under the key transformers keeps."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(str(directory))
    state = {k: v.contiguous() for k, v in model.state_dict().items() if canonical_key(k, model.config) == k}
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
