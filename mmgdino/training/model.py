"""The model a run trains: built in one place (`build_model`), its parts frozen or given LoRA adapters, and
written as checkpoints that transformers' class and mmgdino's both load (`save_checkpoint`).

Parts (one table, `PARTS`): "backbone" is the Swin image backbone, "text" the BERT language model; both keep
their transformers names in either class. Freezing follows mmdetection's fine-tune recipes: the language model
frozen on small sets (its lr_mult 0 there), trained with the backbone at a tenth of the learning rate otherwise.

LoRA (peft's `inject_adapter_in_model`): adapters on the linear layers whose forward actually runs outside the
frozen parts, found by running one batch with hooks (a fused layer may read a weight directly, and an adapter
there would silently do nothing); everything else is frozen. A checkpoint then holds the merged weights (base +
adapter: a plain checkpoint for any loader) and the adapters themselves (`lora.safetensors`, for resuming).
"""

import json
from pathlib import Path

import torch

from ..modeling import MMGroundingDinoForObjectDetection, ModelLoadError
from ..modeling.hub import cache_first

PARTS = {"backbone": "model.backbone.", "text": "model.text_backbone."}
LORA_FILE = "lora.safetensors"
LORA_SETTINGS = "lora.json"


def _loaded(loader, where, what):
    try:
        return cache_first(loader, str(where))
    except ModelLoadError:
        raise
    except Exception as exc:
        text = str(exc).strip()
        raise ModelLoadError(f"--model {where}: no readable {what} ({text.splitlines()[0] if text else exc})") from exc


def build_model(where):
    """The model to train, read from a hub id or a save_pretrained folder: mmgdino's class (transformers' loss,
    our kernels forward and backward), in float32 (mixed precision comes from the Trainer)."""
    return _loaded(lambda w, **kw: MMGroundingDinoForObjectDetection.from_pretrained(w, dtype=torch.float32, **kw),
                   where, "model")  # fmt: skip


def part_of(name):
    return next((part for part, prefix in PARTS.items() if name.startswith(prefix)), None)


def freeze(model, parts):
    """Stops gradients to the named parts; returns the number of parameters left trainable."""
    for name, parameter in model.named_parameters():
        if part_of(name) in parts:
            parameter.requires_grad_(False)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def shared_modules(model):
    """Modules reachable under several names, or holding a parameter another module holds too (tied heads)."""
    names, holders = {}, {}
    for name, module in model.named_modules(remove_duplicate=False):
        names.setdefault(id(module), []).append(name)
    for name, parameter in model.named_parameters(remove_duplicate=False):
        holders.setdefault(id(parameter), set()).add(name.rsplit(".", 1)[0])
    shared = {i for i, n in names.items() if len(n) > 1}
    by_name = {name: module for name, module in model.named_modules(remove_duplicate=False)}
    for owners in holders.values():
        if len(owners) > 1:
            shared |= {id(by_name[o]) for o in owners if o in by_name}
    return shared


def linear_layers_that_run(model, batch, skip_parts):
    """Names of the nn.Linear modules whose forward runs on `batch` (train mode, no labels), outside skip_parts
    and not shared with another place (an adapter there would break the tie)."""
    ran, hooks, shared = set(), [], shared_modules(model)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and part_of(name + ".") not in skip_parts and id(module) not in shared:
            hooks.append(module.register_forward_hook(lambda m, i, o, name=name: ran.add(name)))
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    try:
        with torch.no_grad():
            model.train()
            model(**inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return sorted(ran)


def add_lora(model, rank, alpha, batch, skip_parts):
    """LoRA adapters of `rank` on every linear layer that runs outside skip_parts and is not shared; the rest
    frozen. Returns the adapted layer names."""
    from peft import LoraConfig, inject_adapter_in_model

    targets = linear_layers_that_run(model, batch, skip_parts)
    if not targets:
        raise ModelLoadError("no linear layer runs outside the frozen parts: nothing to put LoRA adapters on")
    # Injected through a plain holder: peft inspects a transformers model's tied-weight table, which these models
    # declare without the input-embedding accessor it then asks for. The adapters land in `model` itself.
    holder = torch.nn.Module()
    holder.detector = model
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=[f"detector.{t}" for t in targets])
    inject_adapter_in_model(config, holder)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_("lora_" in name)
    model.lora_settings = {"rank": rank, "alpha": alpha, "targets": targets}
    return targets


def lora_layers(model):
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def merged_state_dict(model):
    """The plain model's state dict: adapters folded into their base weights, adapter tensors left out."""
    layers = lora_layers(model) if getattr(model, "lora_settings", None) else {}
    merged = {}
    for key, value in model.state_dict().items():
        if "lora_" in key:
            continue
        plain = key.replace(".base_layer.", ".")
        layer = plain.rsplit(".", 1)[0]
        if layer in layers and plain.endswith(".weight"):
            value = value + layers[layer].get_delta_weight("default").to(value.dtype)
        merged[plain] = value.detach()
    return merged


def save_checkpoint(model, processor, directory):
    """A save_pretrained folder (config, weights, processor) that transformers' class and mmgdino's both load;
    with LoRA, the merged weights plus the adapters (LORA_FILE, LORA_SETTINGS) for resuming."""
    directory = Path(directory)
    settings = getattr(model, "lora_settings", None)
    if settings is None:
        model.save_pretrained(str(directory))
    else:
        from safetensors.torch import save_file

        plain = MMGroundingDinoForObjectDetection(model.config)
        plain.load_state_dict(merged_state_dict(model))
        plain.save_pretrained(str(directory))
        adapters = {k: v.detach().contiguous() for k, v in model.state_dict().items() if "lora_" in k}
        save_file(adapters, str(directory / LORA_FILE))
        (directory / LORA_SETTINGS).write_text(json.dumps(settings, indent=1) + "\n")
    if processor is not None:
        processor.save_pretrained(str(directory))


def load_lora(model, directory):
    """The adapters a checkpoint saved, into a model with the same adapters (resuming)."""
    from safetensors.torch import load_file

    adapters = load_file(str(Path(directory) / LORA_FILE))
    missing = [k for k in model.state_dict() if "lora_" in k and k not in adapters]
    if missing:
        raise ModelLoadError(f"{directory}: its adapters do not match this run's (missing {missing[0]})")
    model.load_state_dict(adapters, strict=False)
