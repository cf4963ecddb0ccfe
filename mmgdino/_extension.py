"""Loads the compiled extension mmgdino._C, remembering why it is missing instead of failing the import.

A library built against another torch would fail with an undefined-symbol traceback (or worse, load and crash),
so the build record setup.py writes beside it (_C.build.json) is checked first, and a mismatch is one line.
"""

import json
from pathlib import Path

import torch

_C = None
load_error = None
# What setup.py recorded: torch version, whether CUDA kernels were built and why not, arch list, toolkit.
build_record = {}

_record_path = Path(__file__).with_name("_C.build.json")
if _record_path.is_file():
    try:
        build_record = json.loads(_record_path.read_text())
    except (OSError, ValueError):
        build_record = {}


def _release(version):
    return version.split("+")[0]


def _torch_mismatch(record):
    """None when the recorded build runs with the installed torch, else the one-line reason."""
    built = record.get("torch")
    if not built:
        return None
    if _release(built) != _release(torch.__version__) or (record.get("cuda_kernels") and torch.version.cuda is None):
        return (
            f"mmgdino's compiled kernels were built against torch {built} but torch {torch.__version__} is installed; "
            f"install torch=={_release(built)} (the CUDA build: {'yes' if record.get('cuda_kernels') else 'either'}) "
            "or rebuild mmgdino for this torch: pip install --no-build-isolation --force-reinstall --no-deps mmgdino"
        )
    return None


_mismatch = _torch_mismatch(build_record)
if _mismatch is not None:
    raise ImportError(_mismatch)

try:  # registers the CPU (and, in a GPU build, CUDA) kernels of the mmgdino operators
    from . import _C  # noqa: F811
except ImportError as exc:  # an unbuilt checkout or a Python-only install: torch backends only
    load_error = f"{type(exc).__name__}: {exc}"

has_cpu_kernels = _C is not None
has_cuda_kernels = _C is not None and bool(getattr(_C, "with_cuda", 0))
# The CUDA architectures the kernels were built for, in TORCH_CUDA_ARCH_LIST syntax ("" without CUDA kernels).
cuda_arch_list = getattr(_C, "cuda_arch_list", "") if has_cuda_kernels else ""
# Why the build has no CUDA kernels (CPU torch, no toolkit found, forced), as setup.py decided it.
why_no_cuda_kernels = None if has_cuda_kernels else build_record.get("why")
