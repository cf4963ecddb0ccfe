"""Attention maps (`output_attentions=True`): transformers' own base model run over our parameters.

mmgdino's fused layers never form the maps (the fusion layer folds the prompt into the weights; SDPA and the
deformable-attention operator keep the probabilities inside). When asked, the base model's forward goes through
transformers' `MMGroundingDinoModel` / `GroundingDinoModel` instead: built once per model on the meta device,
its parameters and buffers are ours (the same tensors, shared, never copied, rebound on every call so that moved
or reloaded weights are followed), its backbone, text encoder and box heads are our modules, and its deformable
attention and contrastive heads run on mmgdino's operators (`mmgdino.patch`). So the maps, the outputs and the
gradients are transformers' own, for the price of transformers' layers; the fast path is untouched.
"""

import copy
import weakref

import torch
from torch import nn

from .. import patching
from . import weights

_SHARED_MODULES = ("backbone", "text_backbone", "decoder.bbox_embed", "decoder.class_embed")
_references = weakref.WeakKeyDictionary()  # our base model -> its transformers twin


def run_base_model(core, pixel_values, input_ids, token_type_ids, attention_mask, pixel_mask, output_hidden_states,
                   prompt_features=None, image_features=None):  # fmt: skip
    """transformers' base-model output, attentions included, for our base model `core`."""
    if prompt_features is not None or image_features is not None:
        raise ValueError(
            "output_attentions=True runs transformers' layers, which take pixel_values and input_ids: pass those "
            "instead of prompt_features= / image_features="
        )
    reference = twin_of(core)
    return reference(pixel_values=pixel_values, input_ids=input_ids, token_type_ids=token_type_ids,
                     attention_mask=attention_mask, pixel_mask=pixel_mask, output_attentions=True,
                     output_hidden_states=output_hidden_states, return_dict=True)  # fmt: skip


def twin_of(core):
    """The transformers base model that shares `core`'s modules and tensors, in `core`'s training mode."""
    reference = _references.get(core)
    if reference is None:
        with torch.device("meta"):
            reference = weights.transformers_class_of(core.family, base=True)(copy.deepcopy(core.config))
        patching.patch(reference)
        _references[core] = reference
    for name in _SHARED_MODULES:
        parent, _, attribute = name.rpartition(".")
        setattr(reference.get_submodule(parent), attribute, getattr(core.get_submodule(parent), attribute))
    own = [(n, t) for n, t in _tensors(core) if not n.startswith(tuple(f"{m}." for m in _SHARED_MODULES))]
    for name, tensor in own:
        parent, _, attribute = name.rpartition(".")
        module = reference.get_submodule(parent)
        (module._parameters if isinstance(tensor, nn.Parameter) else module._buffers)[attribute] = tensor
    left = [n for n, t in _tensors(reference) if t.device.type == "meta"]
    if left:
        raise RuntimeError(f"mmgdino: transformers' base model has tensors mmgdino's lacks: {', '.join(left[:5])}")
    return reference.train(core.training)


def _tensors(module):
    yield from module.named_parameters(remove_duplicate=False)
    yield from module.named_buffers(remove_duplicate=False)
