"""CI: the installed mmgdino is a real CUDA build, checked without a GPU.

    python -P .ci/check_cuda_build.py --arch-list "8.0;9.0" --cuobjdump PATH

Every mmgdino operator has CUDA, CPU and Meta kernels registered (CPU and Meta for `ops.CPU_HELPERS`); the build
recorded the requested architectures; the library holds every budgeted CUDA kernel for each of them
(mmgdino_tools.cuda_resources --binary). Run it with `python -P` from the checkout: -P keeps the checkout's own
mmgdino/ (which may hold a CPU build) off sys.path, so the installed wheel is what gets checked.
"""

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DISPATCH_KEYS = ("CUDA", "CPU", "Meta")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch-list", required=True, help="the TORCH_CUDA_ARCH_LIST the wheel was built with")
    parser.add_argument("--cuobjdump", required=True)
    args = parser.parse_args()

    import torch

    import mmgdino
    from mmgdino import _extension

    failures = []
    installed = Path(mmgdino.__file__).resolve().parent
    if installed.parent == ROOT:
        failures.append(f"imported the checkout's mmgdino ({installed}), not the installed wheel")
    if not _extension.has_cuda_kernels:
        failures.append(f"mmgdino._C has no CUDA kernels ({_extension.load_error or _extension.why_no_cuda_kernels})")
    if _extension.cuda_arch_list != args.arch_list:
        failures.append(f"_C.cuda_arch_list is {_extension.cuda_arch_list!r}, asked for {args.arch_list!r}")

    # The *_triton operators are torch.library.triton_op wrappers (one kernel for every device, in Python); the
    # compiled kernels register for the others.
    ops = sorted(
        name
        for name in torch._C._dispatch_get_all_op_names()
        if name.startswith("mmgdino::") and not name.endswith("_triton")
    )
    if not ops:
        failures.append("no mmgdino operators are registered")
    from mmgdino.ops import CPU_HELPERS

    for op in ops:
        for key in DISPATCH_KEYS:
            if key == "CUDA" and op.removeprefix("mmgdino::") in CPU_HELPERS:  # CPU-only by design
                continue
            if not torch._C._dispatch_has_kernel_for_dispatch_key(op, key):
                failures.append(f"{op} has no {key} kernel")

    library = Path(_extension.library_path) if _extension.library_path else None
    if library is not None:
        # The developer tools are not installed: their folder on the path, the working directory outside the
        # checkout (-m would put it on sys.path, where the checkout's mmgdino/ would shadow the wheel).
        binary = subprocess.run(
            [
                sys.executable,
                "-m",
                "mmgdino_tools.cuda_resources",
                "--binary",
                str(library),
                "--cuobjdump",
                str(Path(args.cuobjdump).resolve()),  # it runs in another working directory
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT / "tools")},
            cwd=tempfile.gettempdir(),
        )
        print(binary.stdout.strip())
        if binary.returncode != 0:
            failures.append(f"the library does not hold the budgeted kernels:\n{binary.stdout}{binary.stderr}")

    for failure in failures:
        print(f"FAIL {failure}")
    if failures:
        return 1
    print(
        f"OK: {installed} (torch {torch.__version__}, no GPU visible: {not torch.cuda.is_available()}): "
        f"{len(ops)} operators with {', '.join(DISPATCH_KEYS)} kernels, architectures {_extension.cuda_arch_list}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
