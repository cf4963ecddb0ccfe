"""Which backend runs an operator: what is available on which device, and why not.

Availability is worked out once, at import, into plain data, so that choosing a backend inside a
torch.compile'd function is a dictionary lookup that traces without graph breaks.
"""

import os

import torch

from .. import _extension

BACKENDS = ("cuda", "triton", "cpu", "torch")
OPS = ("ms_deform_attn", "contrastive_logits", "contrastive_max")

# Preference order per device type when the caller names no backend. The Triton interpreter runs on the CPU
# but is a testing tool, far slower than the C++ kernels, so it is used on the CPU only when asked for.
_PREFERENCE = {"cuda": ("cuda", "triton", "torch"), "cpu": ("cpu", "torch")}
_DEVICE_OF_BACKEND = {"cuda": ("cuda",), "cpu": ("cpu",), "triton": ("cuda", "cpu"), "torch": None}


def _triton_status():
    try:
        from . import _triton
    except ImportError as exc:
        return False, f"Triton kernels not importable ({exc})"
    return _triton.status()


def _probe():
    cuda_ok = torch.cuda.is_available()
    triton_ok, triton_reason = _triton_status()
    interpret = os.environ.get("TRITON_INTERPRET", "") == "1"
    why_not = {}
    usable = {}
    if _extension.has_cpu_kernels:
        usable["cpu"] = ("cpu",)
    else:
        why_not["cpu"] = f"mmgdino._C is not built ({_extension.load_error})"
    if _extension.has_cuda_kernels and cuda_ok:
        usable["cuda"] = ("cuda",)
    elif not _extension.has_cpu_kernels:
        why_not["cuda"] = why_not["cpu"]
    elif not _extension.has_cuda_kernels:
        why_not["cuda"] = "mmgdino._C was built without CUDA (CPU-only torch or no nvcc at build time)"
    else:
        why_not["cuda"] = "no CUDA device is visible"
    if triton_ok and (cuda_ok or interpret):
        usable["triton"] = (("cuda",) if cuda_ok else ()) + (("cpu",) if interpret else ())
    else:
        why_not["triton"] = triton_reason if not triton_ok else "no CUDA device (set TRITON_INTERPRET=1 to run on CPU)"
    return usable, why_not


_USABLE, _WHY_NOT = _probe()


def _device_type(device):
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device).type


def _runs(backend, kind):
    return backend == "torch" or kind in _USABLE.get(backend, ())


def available_backends(op_name, device=None):
    """Backends that can run `op_name` on `device` (default: the CUDA device if any, else the CPU), best first."""
    if op_name not in OPS:
        raise ValueError(f"unknown mmgdino operator {op_name!r}; operators: {', '.join(OPS)}")
    kind = _device_type(device)
    ordered = _PREFERENCE.get(kind, ("torch",)) + tuple(b for b in BACKENDS if b not in _PREFERENCE.get(kind, ()))
    return [b for b in ordered if _runs(b, kind)]


def unavailable_reasons():
    """{backend: why it is unavailable here} for `mmgdino info`."""
    return dict(_WHY_NOT)


def select_backend(op_name, backend, device):
    """The backend to run; raises ValueError naming the available ones when `backend` cannot run here."""
    kind = device.type
    if backend is None:
        for candidate in _PREFERENCE.get(kind, ("torch",)):
            if _runs(candidate, kind):
                return candidate
        return "torch"
    if backend not in BACKENDS:
        raise ValueError(
            f"unknown backend {backend!r} for mmgdino.{op_name}; backends: {', '.join(BACKENDS)}; "
            f"available on {kind}: {', '.join(available_backends(op_name, kind))}"
        )
    if _runs(backend, kind):
        return backend
    devices = _DEVICE_OF_BACKEND[backend]
    reason = _WHY_NOT.get(backend) or f"it runs on {' or '.join(devices)} tensors, these are on {kind}"
    raise ValueError(
        f"backend {backend!r} is not available for mmgdino.{op_name} on {kind}: {reason}; "
        f"available: {', '.join(available_backends(op_name, kind))}"
    )
