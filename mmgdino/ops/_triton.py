"""The "triton" backend: the kernels of mmgdino.kernels registered as torch.library triton_ops, so that
torch.compile sees through them, with autograd. Imported by _backends; a missing triton leaves it unavailable.
"""

import importlib
import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path

import torch

from . import _library
from ._checks import accumulate_dtype

_INTERPRET = os.environ.get("TRITON_INTERPRET", "") == "1"


def _load_kernels():
    """mmgdino.kernels as installed from the repo's kernels/ folder. An editable install (and a checkout on
    sys.path) cannot map a subpackage to a folder elsewhere, so there the folder is attached by hand."""
    try:
        return importlib.import_module("mmgdino.kernels")
    except ModuleNotFoundError:
        folder = Path(__file__).resolve().parents[2] / "kernels"
        if not (folder / "ms_deform_attn.py").is_file():
            raise
        spec = importlib.machinery.ModuleSpec("mmgdino.kernels", None, is_package=True)
        spec.submodule_search_locations = [str(folder)]
        package = importlib.util.module_from_spec(spec)
        sys.modules["mmgdino.kernels"] = package
        sys.modules["mmgdino"].kernels = package
        return package


_error = None
try:
    import triton  # noqa: F401
    from torch.library import triton_op, wrap_triton

    _load_kernels()
    from mmgdino.kernels import contrastive_logits as _contrastive_kernels
    from mmgdino.kernels import ms_deform_attn as _msda_kernels
except ImportError as exc:
    _error = f"{type(exc).__name__}: {exc}"


def _triton_accumulate(dtype):
    """The Triton dtype of accumulate_dtype(dtype): the launchers accumulate in what they are told."""
    import triton.language as tl

    return getattr(tl, str(accumulate_dtype(dtype)).removeprefix("torch."))


def status():
    if _error is not None:
        return False, f"Triton kernels unavailable ({_error})"
    return True, ""


if _error is None:

    @triton_op("mmgdino::ms_deform_attn_triton", mutates_args=())
    def ms_deform_attn_triton(value: torch.Tensor, spatial_shapes: torch.Tensor, level_start_index: torch.Tensor,
                              sampling_locations: torch.Tensor,
                              attention_weights: torch.Tensor) -> torch.Tensor:  # fmt: skip
        batch, _, num_heads, head_dim = value.shape
        out = value.new_empty((batch, sampling_locations.shape[1], num_heads * head_dim))
        if out.numel() > 0:
            _msda_kernels.ms_deform_attn_fwd(
                wrap_triton,
                value.contiguous(),
                spatial_shapes.contiguous(),
                level_start_index.contiguous(),
                sampling_locations.contiguous(),
                attention_weights.contiguous(),
                out,
                _triton_accumulate(value.dtype),
                interpret=_INTERPRET,
            )
        return out

    @triton_op("mmgdino::ms_deform_attn_backward_triton", mutates_args=())
    def ms_deform_attn_backward_triton(grad_output: torch.Tensor, value: torch.Tensor, spatial_shapes: torch.Tensor,
                                       level_start_index: torch.Tensor, sampling_locations: torch.Tensor,
                                       attention_weights: torch.Tensor,
                                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
        if torch.are_deterministic_algorithms_enabled() and not torch.is_deterministic_algorithms_warn_only_enabled():
            raise RuntimeError(
                "mmgdino.ms_deform_attn_backward (Triton) scatters grad_value with atomics and is not deterministic; "
                "use backend='cpu' or 'torch', or torch.use_deterministic_algorithms(True, warn_only=True)"
            )
        grad_value = torch.zeros(value.shape, dtype=accumulate_dtype(value.dtype), device=value.device)
        # Fresh contiguous buffers (zeros_like would copy an input's strides; the kernels index densely).
        grad_loc = sampling_locations.new_zeros(sampling_locations.shape)
        grad_attn = attention_weights.new_zeros(attention_weights.shape)
        if grad_loc.numel() > 0 and value.numel() > 0:
            _msda_kernels.ms_deform_attn_bwd(
                wrap_triton,
                grad_output.contiguous(),
                value.contiguous(),
                spatial_shapes.contiguous(),
                level_start_index.contiguous(),
                sampling_locations.contiguous(),
                attention_weights.contiguous(),
                grad_value,
                grad_loc,
                grad_attn,
                _triton_accumulate(value.dtype),
                interpret=_INTERPRET,
            )
        return grad_value.to(value.dtype), grad_loc, grad_attn

    _library.register_ms_deform_attn_autograd(
        "mmgdino::ms_deform_attn_triton", torch.ops.mmgdino.ms_deform_attn_backward_triton
    )

    def _run_contrastive(kernel, vision, text, text_token_mask, bias, scale, out):
        if out.numel() > 0:
            kernel(wrap_triton, vision.contiguous(), text.contiguous(), text_token_mask.contiguous(), bias, scale, out,
                   _triton_accumulate(vision.dtype))  # fmt: skip
        return out

    @triton_op("mmgdino::contrastive_logits_triton", mutates_args=())
    def contrastive_logits_triton(vision: torch.Tensor, text: torch.Tensor, text_token_mask: torch.Tensor,
                                  bias: torch.Tensor, scale: float, max_text_len: int) -> torch.Tensor:  # fmt: skip
        out = vision.new_empty((vision.shape[0], vision.shape[1], max_text_len), dtype=accumulate_dtype(vision.dtype))
        return _run_contrastive(_contrastive_kernels.contrastive_logits_fwd, vision, text, text_token_mask, bias, scale,
                                out)  # fmt: skip

    _library.register_contrastive_logits_autograd("mmgdino::contrastive_logits_triton")

    @triton_op("mmgdino::contrastive_max_triton", mutates_args=())
    def contrastive_max_triton(vision: torch.Tensor, text: torch.Tensor, text_token_mask: torch.Tensor,
                               bias: torch.Tensor, scale: float) -> torch.Tensor:  # fmt: skip
        out = vision.new_empty(vision.shape[:2], dtype=accumulate_dtype(vision.dtype))
        return _run_contrastive(_contrastive_kernels.contrastive_max_fwd, vision, text, text_token_mask, bias, scale,
                                out)  # fmt: skip

    # The Triton ops share the fake kernels of the compiled ones: the interpreter would otherwise run the kernel
    # body on fake tensors.
    ms_deform_attn_triton.register_fake(_library.ms_deform_attn_fake)
    ms_deform_attn_backward_triton.register_fake(_library.ms_deform_attn_backward_fake)
    contrastive_logits_triton.register_fake(_library.contrastive_logits_fake)
    contrastive_max_triton.register_fake(_library.contrastive_max_fake)
