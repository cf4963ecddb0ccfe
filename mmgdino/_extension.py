"""Loads the compiled extension mmgdino._C, remembering why it is missing instead of failing the import."""

_C = None
load_error = None

try:  # registers the CPU (and, in a GPU build, CUDA) kernels of the mmgdino operators
    from . import _C  # noqa: F811
except ImportError as exc:  # an unbuilt checkout or a Python-only install: torch backends only
    load_error = f"{type(exc).__name__}: {exc}"

has_cpu_kernels = _C is not None
has_cuda_kernels = _C is not None and bool(getattr(_C, "with_cuda", 0))
# The CUDA architectures the kernels were built for, in TORCH_CUDA_ARCH_LIST syntax ("" without CUDA kernels).
cuda_arch_list = getattr(_C, "cuda_arch_list", "") if has_cuda_kernels else ""
