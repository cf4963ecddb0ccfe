"""CUDA architecture lists (TORCH_CUDA_ARCH_LIST syntax) and whether a build's kernels run on a GPU.

Plain Python without imports: setup.py loads this file directly, before mmgdino or its extension exist.
"""

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
