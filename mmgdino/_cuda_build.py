"""How the compiled kernels are built: the torch and Python releases they target, the compiler flags, where the CUDA
toolkit is, CUDA architecture lists (TORCH_CUDA_ARCH_LIST syntax) and whether a build's kernels run on a GPU.

Standard library only: setup.py loads this file directly, before mmgdino or its extension exist. The flags are
stated once here for the extension, CI's resource budget (mmgdino_tools.cuda_resources) and the emulated builds of
the tests.
"""

import glob
import os
import re
import shutil
import subprocess
import sysconfig

CXX_STANDARD = "-std=c++20"
NVCC_FLAGS = ["-O3", CXX_STANDARD, "--use_fast_math", "-lineinfo", "--expt-relaxed-constexpr"]
# Where toolkits are installed when nothing else says (tried after CUDA_HOME, CUDA_PATH and nvcc on PATH).
STANDARD_LOCATIONS = ("/usr/local/cuda",)
# The oldest torch the compiled kernels run with. They use LibTorch's stable ABI only, as of this release
# (TORCH_TARGET_VERSION): 2.10 is the first whose stable surface has all they need (parallel_for, empty and to with
# a dtype and device, contiguous, typed data pointers). One build then runs with this and every later torch.
TORCH_TARGET = (2, 10)
# The oldest CPython the module init serves: it uses the limited API only (Py_LIMITED_API), so one cp310-abi3
# build serves 3.10 and later.
PYTHON_TARGET = (3, 10)


def torch_target_macro():
    """The TORCH_TARGET_VERSION define: major and minor in the top two bytes, as torch/csrc/stable/version.h
    spells its TORCH_VERSION_X_Y_0."""
    major, minor = TORCH_TARGET
    return ("TORCH_TARGET_VERSION", f"0x{major:02x}{minor:02x}000000000000")


def usable_toolkit(root):
    headers = ("include/cuda_runtime.h", "targets/x86_64-linux/include/cuda_runtime.h")
    return os.path.isfile(os.path.join(root, "bin", "nvcc")) and any(
        os.path.isfile(os.path.join(root, h)) for h in headers
    )


def _nvcc_reported_root(nvcc):
    """The toolkit root that nvcc itself reports (its TOP), which also holds when nvcc is a wrapper script."""
    try:
        out = subprocess.run(
            [nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"^#\$ TOP=(.+)$", out.stdout + out.stderr, re.MULTILINE)
    return os.path.realpath(match.group(1).strip()) if match else None


def find_cuda_toolkit():
    """(toolkit root or None, ["candidate: why not", ...]) trying CUDA_HOME, CUDA_PATH, the root that nvcc on PATH
    reports (torch guesses from nvcc's own path, wrong when nvcc is a wrapper script), /usr/local/cuda, then pip's
    nvidia packages (nvidia-cuda-nvcc and friends)."""
    candidates = [(f"${name}", os.environ.get(name)) for name in ("CUDA_HOME", "CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    candidates.append(("nvcc on PATH", _nvcc_reported_root(nvcc) if nvcc else None))
    candidates += [(location, location) for location in STANDARD_LOCATIONS]
    site = sysconfig.get_paths()["purelib"]
    for root in sorted(glob.glob(os.path.join(site, "nvidia", "cu1*"))) + [os.path.join(site, "nvidia", "cuda_nvcc")]:
        candidates.append(("pip nvidia package", root))
    tried = []
    for label, root in candidates:
        if not root:
            tried.append(f"{label}: not set" if label.startswith("$") else f"{label}: none")
        elif usable_toolkit(root):
            return root, tried
        else:
            tried.append(f"{label}: {root} has no bin/nvcc + include/cuda_runtime.h")
    return None, tried


DEFAULT_ARCH_LIST = "8.0;8.6;8.9;9.0+PTX"


def parse(arch_list):
    """[(major, minor, with_ptx)] of "8.0;8.6 9.0+PTX"-style lists; None when an entry is not numeric (torch
    also accepts names such as "Ampere")."""
    entries = []
    for item in arch_list.replace(" ", ";").split(";"):
        item = item.strip()
        if not item:
            continue
        ptx = item.endswith("+PTX")
        number = item[: -len("+PTX")] if ptx else item
        number = number.rstrip("af")  # 9.0a, 10.0f: architecture-specific cubins of the same version
        major, _, minor = number.partition(".")
        if not (major.isdigit() and minor.isdigit()):
            return None
        entries.append((int(major), int(minor), ptx))
    return entries


def runs_on(arch_list, capability):
    """True when kernels built for arch_list run on a GPU of this (major, minor) compute capability: a cubin
    runs on its own major version at the same or a higher minor, PTX is compiled for any newer GPU on load.
    None when the list cannot be read."""
    entries = parse(arch_list)
    if entries is None:
        return None
    major, minor = capability
    return any((m == major and n <= minor) or (ptx and (m, n) <= (major, minor)) for m, n, ptx in entries)


def with_local_gpus(arch_list, capabilities):
    """arch_list plus the architecture of every visible GPU it would not run on (say, a T4: 7.5), so that a
    default build works on the machine that built it."""
    missing = []
    for capability in capabilities:
        arch = f"{capability[0]}.{capability[1]}"
        if runs_on(arch_list, capability) is False and arch not in missing:
            missing.append(arch)
    return ";".join(missing + [arch_list]) if missing else arch_list
