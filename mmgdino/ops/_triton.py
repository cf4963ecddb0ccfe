"""The "triton" backend: registers the Triton kernels of mmgdino.kernels as torch.library triton_ops."""

import importlib.util


def status():
    if importlib.util.find_spec("triton") is None:
        return False, "triton is not installed (pip install triton)"
    return False, "the Triton kernels are not written yet"
