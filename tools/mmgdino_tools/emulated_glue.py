"""The CUDA backend's ATen glue as a CPU torch extension around the emulated kernels (torch.ops.mmgdino_simt.*)."""

import tempfile
from pathlib import Path

import torch

from .checkout import EMULATOR
from .emulator_build import CXX_STANDARD, GLUE, INCLUDE_DIRS, kernel_units, sources_digest

OPS = ("ms_deform_attn", "ms_deform_attn_backward", "contrastive_logits", "contrastive_max")


def load_glue_extension(cache_dir=None):
    """The CUDA glue (csrc/cuda/*_cuda.cpp, csrc/checks.cpp) built into a torch extension around the emulated
    kernels, its C++ namespace renamed to mmgdino_simt and registered for the CPU dispatch key: the operators
    torch.ops.mmgdino_simt.* take CPU tensors down the exact code path CUDA tensors take in a GPU build. The
    schemas, fake kernels and autograd are mmgdino's own, registered here for the renamed operators."""
    from torch.utils import cpp_extension

    from mmgdino import ops

    if hasattr(torch.ops, "mmgdino_simt") and hasattr(torch.ops.mmgdino_simt, "ms_deform_attn"):
        return torch.ops.mmgdino_simt
    # Keyed by torch's version and build too: the extension links against it, and a CPU and a CUDA torch
    # environment on one machine must not share a build.
    digest = sources_digest(torch.__version__, torch.version.cuda, torch.compiled_with_cxx11_abi())
    out = Path(cache_dir or tempfile.gettempdir()) / f"mmgdino-simt-glue-{digest}"
    out.mkdir(parents=True, exist_ok=True)
    units = kernel_units(out)
    sources = [str(p) for p in GLUE if p.suffix == ".cpp"] + [str(p) for p in units.values()]
    sources.append(str(EMULATOR / "simt.cpp"))
    cpp_extension.load(
        name="mmgdino_simt_glue",
        sources=sources,
        build_directory=str(out),
        is_python_module=False,
        verbose=False,
        extra_include_paths=[str(d) for d in (EMULATOR / "torch_stubs", *INCLUDE_DIRS)],
        extra_cflags=[
            "-O1",
            CXX_STANDARD,
            "-Wno-unknown-pragmas",
            "-DMMGDINO_WITH_CUDA",
            "-Dmmgdino=mmgdino_simt",
            "-DMMGDINO_CUDA_DISPATCH_KEY=CPU",
        ],
    )
    global _GLUE_LIBRARY
    _GLUE_LIBRARY = torch.library.Library("mmgdino_simt", "DEF")
    for name in OPS:
        schema = str(getattr(torch.ops.mmgdino, name).default._schema)
        _GLUE_LIBRARY.define(schema.split("::", 1)[1])
        # mmgdino's own fake kernel: the mmgdino operator called on the fake tensors runs it.
        torch.library.register_fake(f"mmgdino_simt::{name}", getattr(torch.ops.mmgdino, name), lib=_GLUE_LIBRARY)
    ops.register_ms_deform_attn_autograd("mmgdino_simt::ms_deform_attn", torch.ops.mmgdino_simt.ms_deform_attn_backward)
    ops.register_contrastive_logits_autograd("mmgdino_simt::contrastive_logits")
    return torch.ops.mmgdino_simt


_GLUE_LIBRARY = None
