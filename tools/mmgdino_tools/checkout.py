"""Where the tools find the checkout they work on, the build rules they compile it with, and how one tool starts
another in a process of its own.

The tools read the checkout's sources (csrc/, kernels/) and write its recorded results (benchmarks/results/), so
their paths are the checkout's, whichever mmgdino is imported. The build rules are mmgdino/_cuda_build.py, loaded
from its file as setup.py loads it: the compiler flags the extension is built with, without importing mmgdino.
"""

import functools
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

TOOLS = Path(__file__).resolve().parents[1]  # the folder that goes on sys.path (pyproject's pytest pythonpath)
ROOT = TOOLS.parent
CSRC = ROOT / "csrc"
RESULTS = ROOT / "benchmarks" / "results"
EMULATOR = Path(__file__).resolve().parent / "cuda_emulator"


@functools.cache
def build_rules():
    """mmgdino/_cuda_build.py of this checkout (standard library only): CXX_STANDARD, NVCC_FLAGS,
    find_cuda_toolkit()."""
    path = ROOT / "mmgdino" / "_cuda_build.py"
    spec = importlib.util.spec_from_file_location("mmgdino_checkout_build_rules", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tool_command(module, *args, python=None):
    """(argv, keyword arguments for subprocess.run) that run `python -m mmgdino_tools.<module> args` with the
    tools importable and the working directory outside the checkout: `-m` puts the working directory on sys.path,
    and the checkout's root there would shadow the installed mmgdino with its source folder."""
    path = os.pathsep.join(p for p in (str(TOOLS), os.environ.get("PYTHONPATH", "")) if p)
    argv = [python or sys.executable, "-m", f"mmgdino_tools.{module}", *map(str, args)]
    return argv, {"env": dict(os.environ, PYTHONPATH=path), "cwd": tempfile.gettempdir()}
