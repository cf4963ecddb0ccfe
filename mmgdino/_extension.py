"""Loads the compiled extension mmgdino._C, remembering why it is missing instead of failing the import.

The library uses LibTorch's stable ABI, so it runs with any torch from the release it targets on; what it cannot
survive (a torch older than that, CUDA kernels under a CPU torch or a torch of another CUDA major version) would
fail with an undefined-symbol or missing-library traceback, so the build record setup.py writes beside it
(_C.build.json) is checked first, and a mismatch is one line.
"""

import json
import re
from pathlib import Path

import torch

_C = None
load_error = None
# What setup.py recorded: the torch it was built against and the oldest it runs with, whether CUDA kernels were
# built and why not, arch list, toolkit.
build_record = {}

_record_path = Path(__file__).with_name("_C.build.json")
if _record_path.is_file():
    try:
        build_record = json.loads(_record_path.read_text())
    except (OSError, ValueError):
        build_record = {}

_REBUILD = "or rebuild mmgdino for it: pip install --no-build-isolation --force-reinstall --no-deps mmgdino"


def _release(version):
    """(major, minor) of "2.14.1+cu130", "2.10.0a0+git1234", "13.0"."""
    match = re.match(r"(\d+)\.(\d+)", version or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


def _torch_mismatch(record):
    """None when the recorded build runs with the installed torch, else the one-line reason."""
    built = record.get("torch")
    if not built:
        return None
    installed = torch.__version__
    oldest = record.get("torch_min")
    if oldest is None:  # built before the stable ABI (an older checkout's build): its own torch release only
        if _release(built) != _release(installed):
            return (
                f"mmgdino's compiled kernels were built against torch {built} but torch {installed} is installed; "
                f"install torch=={built.split('+')[0]} {_REBUILD}"
            )
    elif _release(installed) < _release(oldest):
        return (
            f"mmgdino's compiled kernels need torch >= {oldest} (LibTorch's stable ABI as of {oldest}) but torch "
            f"{installed} is installed; upgrade torch {_REBUILD}"
        )
    if not record.get("cuda_kernels"):
        return None
    built_cuda = _release(record.get("torch_cuda"))
    runtime = f"CUDA {built_cuda[0]}" if built_cuda else "CUDA"
    if torch.version.cuda is None:
        return (
            f"mmgdino's CUDA kernels (built against torch {built}) need a {runtime} build of torch but torch "
            f"{installed} is a CPU build; install torch's {runtime} build {_REBUILD}"
        )
    if built_cuda and built_cuda[0] != _release(torch.version.cuda)[0]:
        return (
            f"mmgdino's CUDA kernels were built for {runtime} but torch {installed} uses CUDA {torch.version.cuda} "
            f"(another CUDA runtime); install torch's {runtime} build {_REBUILD}"
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
# Which CPU build of the kernels runs here (avx512_bf16, avx512, avx2, baseline; None without the extension).
cpu_isa = getattr(_C, "cpu_isa", "baseline") if has_cpu_kernels else None
# Where the library was loaded from (None without it).
library_path = getattr(_C, "__file__", None)
