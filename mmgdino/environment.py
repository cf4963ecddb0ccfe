"""What a result was measured on: device, commit and versions. Shared by `mmgdino info` and the benchmarks."""

import importlib
import platform
import subprocess
from pathlib import Path

import torch

CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "avx_vnni")


def cpu_model_and_flags():
    """The CPU's model name and which of CPU_FLAGS it has (from /proc/cpuinfo: what lscpu prints)."""
    model, flags = platform.processor() or platform.machine(), []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not flags:
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1].split()
    except OSError:
        pass
    return model, [f for f in CPU_FLAGS if f in flags]


def describe_device(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cores = torch.get_num_threads()
    return f"CPU: {platform.processor() or platform.machine()} ({cores} threads)"


def _git(*args):
    return subprocess.run(
        ["git", *args], capture_output=True, text=True, timeout=10, cwd=Path(__file__).resolve().parent
    )


def git_commit():
    """The checkout's short commit, "+dirty" when tracked files changed; "unknown" outside a checkout."""
    try:
        out = _git("rev-parse", "--short", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else "unknown"


def versions():
    found = {"torch": torch.__version__, "cuda": torch.version.cuda}
    for name in ("triton", "transformers"):
        try:
            found[name] = importlib.import_module(name).__version__
        except ImportError:
            found[name] = None
    return found
