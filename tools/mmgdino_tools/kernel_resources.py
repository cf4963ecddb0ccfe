"""What the compilers report about each kernel: registers, spills, stack and static shared memory of every CUDA
kernel instantiation (ptxas -v while nvcc compiles csrc/cuda/*.cu with the extension's own flags, every warning an
error) and Triton kernel configuration (the log of Triton's own ptxas run for the configurations
triton_aot_compile compiles), and the occupancy that follows on each architecture: the static limit from
registers, shared memory, threads and blocks per SM, for the block size each kernel launches with. No GPU needed.
"""

import contextlib
import io
import math
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from .checkout import CSRC, ROOT, build_rules

ARCHS = (80, 90)  # the architectures budgeted: CI's CUDA build (sm_80, sm_90)
# Per-SM limits: registers, max resident warps, max resident blocks, shared memory (bytes) usable by blocks, and
# the shared memory the runtime reserves per block. NVIDIA's CUDA C++ Programming Guide, "Features and Technical
# Specifications" (compute capability 8.0 and 9.0).
SM_LIMITS = {
    80: {"registers": 65536, "warps": 64, "blocks": 32, "shared": 164 * 1024, "reserved": 1024},
    86: {"registers": 65536, "warps": 48, "blocks": 16, "shared": 100 * 1024, "reserved": 1024},
    89: {"registers": 65536, "warps": 48, "blocks": 24, "shared": 100 * 1024, "reserved": 1024},
    90: {"registers": 65536, "warps": 64, "blocks": 32, "shared": 228 * 1024, "reserved": 1024},
}
REGISTER_UNIT = 256  # registers are allocated per warp in units of 256

# Threads per block of each CUDA kernel: its __launch_bounds__, which is also what the launcher uses. A kernel
# missing here fails the script, so a new kernel cannot go unbudgeted.
CUDA_BLOCK_THREADS = {"msda_forward_kernel": 256, "msda_backward_kernel": 256, "contrastive_kernel": 256}
HOT_CUDA_TYPES = ("float", "__half", "__nv_bfloat16")  # float64 instantiations are for checks, not speed

_ENTRY = re.compile(r"Compiling entry function '(\S+)' for '(sm_\d+)a?'")
_PROPERTIES = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")


def occupancy(registers, shared_bytes, threads, arch):
    """(resident blocks per SM, fraction of the SM's warps) from the static limits."""
    limits = SM_LIMITS[arch]
    warps = math.ceil(threads / 32)
    per_warp = math.ceil(max(registers, 1) * 32 / REGISTER_UNIT) * REGISTER_UNIT
    by_registers = (limits["registers"] // per_warp) // warps
    by_warps = limits["warps"] // warps
    by_shared = limits["shared"] // (shared_bytes + limits["reserved"]) if shared_bytes else limits["blocks"]
    blocks = min(by_registers, by_warps, by_shared, limits["blocks"])
    return blocks, blocks * warps / limits["warps"]


def parse_ptxas_log(text):
    """{(mangled name, arch): {registers, stack, spill_stores, spill_loads, shared}} from ptxas -v output."""
    found, current = {}, None
    for line in text.splitlines():
        if match := _ENTRY.search(line):
            current = (match.group(1), int(match.group(2)[3:]))
            found[current] = {"registers": 0, "stack": 0, "spill_stores": 0, "spill_loads": 0, "shared": 0}
        elif current and (match := _PROPERTIES.search(line)):
            stack, stores, loads = map(int, match.groups())
            found[current].update(stack=stack, spill_stores=stores, spill_loads=loads)
        elif current and (match := _USED.search(line)):
            found[current]["registers"] = int(match.group(1))
            found[current]["shared"] = int(match.group(2) or 0)
    return found


def demangle(names):
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True).stdout
    return dict(zip(names, out.splitlines()))


def short_name(demangled):
    """ "void mmgdino::cuda::(anonymous namespace)::msda_forward_kernel<float, 4, 8>(Args)" -> the kernel<...>."""
    head = demangled.split("(mmgdino")[0] if "(mmgdino" in demangled else demangled
    head = re.sub(r"^void ", "", head)
    return re.sub(r"^(?:[\w]+::|\(anonymous namespace\)::)*", "", head).strip()


def find_nvcc():
    """The nvcc of the toolkit setup.py would build with (the same search), or None."""
    root, _ = build_rules().find_cuda_toolkit()
    return os.path.join(root, "bin", "nvcc") if root else None


def cuda_rows(nvcc, archs):
    flags = build_rules().NVCC_FLAGS
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for source in sorted((CSRC / "cuda").glob("*.cu")):
            command = [nvcc, *flags, "-I", str(CSRC / "include"), "-Werror", "all-warnings"]
            command += ["-Xptxas", "-v", *gencode, "-c", str(source), "-o", os.path.join(tmp, source.stem + ".o")]
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                sys.exit(f"nvcc failed on {source.relative_to(ROOT)}:\n{result.stderr[-4000:]}")
            found = parse_ptxas_log(result.stderr + result.stdout)
            names = demangle(sorted({name for name, _ in found}))
            for (mangled, arch), resources in sorted(found.items()):
                kernel = short_name(names[mangled])
                base = kernel.split("<")[0]
                if base not in CUDA_BLOCK_THREADS:
                    sys.exit(f"{kernel}: no block size in CUDA_BLOCK_THREADS of {Path(__file__).name}; add it")
                template_type = kernel.split("<")[1].split(",")[0].rstrip(">").strip() if "<" in kernel else ""
                rows.append(
                    {
                        "backend": "cuda",
                        "kernel": kernel,
                        "source": str(source.relative_to(ROOT)),
                        "arch": arch,
                        "threads": CUDA_BLOCK_THREADS[base],
                        "hot": template_type in HOT_CUDA_TYPES,
                        **resources,
                    }
                )
    return rows


def triton_rows(archs):
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        print(f"Triton not installed ({exc}): Triton kernels not budgeted", file=sys.stderr)
        return []
    os.environ.pop("TRITON_INTERPRET", None)
    from triton import knobs

    from . import triton_aot_compile as aot

    rows = []
    with tempfile.TemporaryDirectory() as cache:
        # A cache hit would skip ptxas and its report; a private cache also leaves the user's untouched.
        knobs.cache.dir = cache
        knobs.nvidia.dump_ptxas_log = True
        for arch in archs:
            for name, dtype, fn, signature, constexprs, num_warps in aot.instantiations():
                log = io.StringIO()
                with contextlib.redirect_stdout(log):
                    kernel = aot.compile_one(fn, signature, constexprs, arch, num_warps)
                found = parse_ptxas_log(log.getvalue())
                if len(found) != 1:
                    sys.exit(f"triton {name} {dtype} sm_{arch}: expected one ptxas report, got {len(found)}")
                (resources,) = found.values()
                # Triton's shared memory is dynamic (its metadata), not in ptxas's static smem.
                resources["shared"] = max(resources["shared"], int(kernel.metadata.shared))
                rows.append(
                    {
                        "backend": "triton",
                        "kernel": f"{name}[{dtype}]",
                        "source": f"kernels/{fn.fn.__module__.split('.')[-1]}.py",
                        "arch": arch,
                        "threads": num_warps * 32,
                        "hot": True,
                        **resources,
                    }
                )
    return rows


def with_occupancy(rows):
    for row in rows:
        row["blocks_per_sm"], row["occupancy"] = occupancy(row["registers"], row["shared"], row["threads"], row["arch"])
        row["occupancy"] = round(row["occupancy"], 4)
    return rows
