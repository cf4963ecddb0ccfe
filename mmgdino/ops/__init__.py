"""mmgdino operators: torch.library ops in the `mmgdino` namespace behind a backend-choosing Python API."""

# isort: off
from . import _library  # noqa: F401  (defines the schemas before the compiled kernels register)
from .. import _extension  # noqa: F401  (loads mmgdino._C: CPU / CUDA kernels)

# isort: on
from ._backends import BACKENDS, CPU_HELPERS, OPS, TABLE, available_backends, unavailable_reasons
from ._checks import accumulate_dtype
from ._library import register_contrastive_logits_autograd, register_ms_deform_attn_autograd
from .contrastive import contrastive_logits, contrastive_max
from .ms_deform_attn import ms_deform_attn
from .quantize import quantize_uint8

__all__ = [
    "BACKENDS",
    "CPU_HELPERS",
    "OPS",
    "TABLE",
    "accumulate_dtype",
    "available_backends",
    "contrastive_logits",
    "contrastive_max",
    "ms_deform_attn",
    "quantize_uint8",
    "register_contrastive_logits_autograd",
    "register_ms_deform_attn_autograd",
    "unavailable_reasons",
]
