"""Which backend runs an operator: one table, op x device type -> backends best first, each available or not
(with the reason). Dispatch, `available_backends` and `mmgdino info` all read it.

The table is worked out once, at import, into plain data, so that choosing a backend inside a
torch.compile'd function is a dictionary lookup that traces without graph breaks.
"""

import os

import torch

from .. import _extension
from . import _torch_impl, portable

BACKENDS = ("cuda", "triton", "cpu", "torch", "portable")
OPS = ("ms_deform_attn", "contrastive_logits", "contrastive_max")
# Operators outside the table: helpers of a CPU-only path, with a compiled CPU kernel and the PyTorch default
# elsewhere, never a CUDA or Triton one (int8's activation quantization: oneDNN's int8 products are CPU-only).
CPU_HELPERS = ("quantize_uint8",)
DEVICE_TYPES = ("cuda", "cpu")

# Preference when the caller names no backend. The Triton interpreter runs on the CPU but is a testing tool, far
# slower than the C++ kernels, so on the CPU it is listed last, after the torch fallback, and used only when asked.
# "portable" (standard ops an exporter translates) is never chosen by preference: only inside `portable()`.
_PREFERENCE = {
    "cuda": ("cuda", "triton", "torch", "cpu", "portable"),
    "cpu": ("cpu", "torch", "triton", "cuda", "portable"),
}
_AUTOMATIC = {"cuda": ("cuda", "triton", "torch"), "cpu": ("cpu", "torch")}


def _triton_status():
    try:
        from . import _triton
    except ImportError as exc:
        return False, f"Triton kernels not importable ({exc})"
    return _triton.status()


def _why_not(backend, device_type):
    """None when `backend` runs `device_type` tensors here, else the reason it does not."""
    if backend in ("torch", "portable"):
        return None
    if backend in ("cpu", "cuda"):
        if not _extension.has_cpu_kernels:
            return f"mmgdino._C is not built ({_extension.load_error})"
        if backend != device_type:
            return f"it runs on {backend} tensors, these are on {device_type}"
        if backend == "cuda" and not _extension.has_cuda_kernels:
            why = _extension.why_no_cuda_kernels or "CPU-only torch or no CUDA toolkit at build time"
            return f"mmgdino._C was built without CUDA kernels ({why})"
        if backend == "cuda" and not torch.cuda.is_available():
            return "no CUDA device is visible"
        return None
    triton_ok, triton_reason = _triton_status()
    if not triton_ok:
        return triton_reason
    if device_type == "cuda" and not torch.cuda.is_available():
        return "no CUDA device is visible"
    if device_type == "cpu" and os.environ.get("TRITON_INTERPRET", "") != "1":
        return "Triton runs on CPU tensors only in its interpreter (set TRITON_INTERPRET=1)"
    return None


# {(op, device type): ((backend, None or why it is unavailable), ...)}, best first. Today every operator has the
# same backends; the table is per operator so that one that lacks a kernel somewhere says so here.
TABLE = {
    (op, device_type): tuple((backend, _why_not(backend, device_type)) for backend in _PREFERENCE[device_type])
    for op in OPS
    for device_type in DEVICE_TYPES
}


def _automatic(rows, device_type):
    allowed = _AUTOMATIC.get(device_type, ("torch",))
    return next(backend for backend, why in rows if why is None and backend in allowed)


# The backend used when the caller names none: {(op, device type): backend}.
AUTOMATIC = {key: _automatic(rows, key[1]) for key, rows in TABLE.items()}


def _kernel(op_name, backend):
    """The callable of one backend: the torch reference, the portable formulation, the Triton op, or the op the
    compiled kernels serve. Every ms_deform_attn kernel takes the levels' Python shapes (`level_shapes`) after the
    tensors; only the portable formulation reads them."""
    if backend == "portable":
        return getattr(portable, op_name)
    if backend == "torch":
        kernel = getattr(_torch_impl, op_name)
    elif backend == "triton":
        kernel = getattr(torch.ops.mmgdino, f"{op_name}_triton")
    else:
        kernel = getattr(torch.ops.mmgdino, op_name)
    if op_name == "ms_deform_attn":
        return lambda *tensors, level_shapes=None: kernel(*tensors)
    return kernel


def _device_type(device):
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device).type


def _rows(op_name, device_type):
    return TABLE.get((op_name, device_type), (("torch", None),))


def available_backends(op_name, device=None):
    """Backends that can run `op_name` on `device` (default: the CUDA device if any, else the CPU), best first."""
    if op_name not in OPS:
        raise ValueError(f"unknown mmgdino operator {op_name!r}; operators: {', '.join(OPS)}")
    return [backend for backend, why in _rows(op_name, _device_type(device)) if why is None]


def unavailable_reasons():
    """{backend: why it is unavailable on its own device type} for `mmgdino info`."""
    own_device = {"cuda": "cuda", "cpu": "cpu", "triton": "cuda" if torch.cuda.is_available() else "cpu"}
    reasons = {}
    for backend, device_type in own_device.items():
        why = dict(_rows(OPS[0], device_type))[backend]
        if why is not None:
            reasons[backend] = why
    return reasons


def kernel_for(op_name, backend, device):
    """The kernel to call for `op_name` on `device`'s tensors: the named backend; else the portable one inside
    `portable()`; else the best automatic one. Raises ValueError naming the available backends when the named one
    cannot run here."""
    if backend is None:
        if portable.active():
            return _kernel(op_name, "portable")
        return _kernel(op_name, AUTOMATIC.get((op_name, device.type), "torch"))
    rows = _rows(op_name, device.type)
    available = ", ".join(b for b, why in rows if why is None)
    if backend not in BACKENDS:
        raise ValueError(
            f"unknown backend {backend!r} for mmgdino.{op_name}; backends: {', '.join(BACKENDS)}; "
            f"available on {device.type}: {available}"
        )
    why = dict(rows).get(backend, f"it does not run on {device.type} tensors")
    if why is not None:
        raise ValueError(
            f"backend {backend!r} is not available for mmgdino.{op_name} on {device.type}: {why}; "
            f"available: {available}"
        )
    return _kernel(op_name, backend)
