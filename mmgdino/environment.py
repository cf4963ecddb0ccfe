"""What a result was measured on: device, commit and versions. Shared by `mmgdino info` and the benchmarks."""

import importlib
import platform
import subprocess
from pathlib import Path

import torch


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
