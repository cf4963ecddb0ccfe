"""Compiles csrc/cuda/*.cu for the CPU SIMT emulator in cuda_emulator/: the kernels' launchers and the
emulator's self-tests (AddressSanitizer and UBSan), the trace build that counts their memory traffic, and the
reuse-distance counter as a command. Every build is cached under the temp directory by a digest of its sources.

The kernels compile unchanged except for the `kernel<<<grid, block, shared, stream>>>(args)` launches, which are
rewritten into calls of the emulator's launch(). MMGDINO_CUDA_MAX_BLOCKS is lowered so that small test shapes
already go around the grid-stride loops. __CUDA_ARCH__ is 900: architecture-specific code takes its Hopper (H100)
branch, e.g. the 16-byte vector atomics of the MSDA backward.
"""

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from .checkout import CSRC, EMULATOR, build_rules

KERNELS = sorted((CSRC / "cuda").glob("*.cu"))
# The ATen side of the CUDA backend: checks, allocation, argument packing, error mapping, registration.
GLUE = [
    CSRC / "checks.cpp",
    *sorted((CSRC / "cuda").glob("*.cpp")),
    *sorted((CSRC / "cuda").glob("*.h")),
]
MAX_BLOCKS = 5
# The include path every emulated build shares: the emulator's CUDA headers first, so that <cuda_runtime.h> is
# the emulator's. The C++ standard is the extension's (mmgdino/_cuda_build.py).
INCLUDE_DIRS = [EMULATOR, CSRC / "include", CSRC / "cuda"]
CXX_STANDARD = build_rules().CXX_STANDARD

_LAUNCH = re.compile(r"([A-Za-z_][\w:]*(?:<[^;<>]*>)?)\s*<<<(.*?)>>>\s*\((.*?)\);", re.S)


def rewrite_launches(source):
    return _LAUNCH.sub(r"::simt::launch(\1, \2, \3);", source)


def sources_digest(*extra):
    """Digest of every source an emulated build reads, plus `extra` (the glue adds torch's version and build)."""
    h = hashlib.sha256()
    for item in extra:
        h.update(str(item).encode())
    files = [
        *KERNELS,
        *GLUE,
        *sorted(p for p in EMULATOR.rglob("*") if p.is_file()),
        *sorted((CSRC / "include" / "mmgdino").glob("*")),
    ]
    for path in files:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def compiler():
    return shutil.which(os.environ.get("CXX", "g++"))


def kernel_units(work):
    """{name: path} of csrc/cuda/*.cu rewritten for the emulator, as emulated sm_90 with a small grid cap."""
    units = {}
    for cu in KERNELS:
        source = cu.read_text()
        rewritten = rewrite_launches(source)
        if source.count("<<<") != rewritten.count("::simt::launch("):
            raise RuntimeError(f"{cu.name}: could not rewrite every kernel launch")
        prelude = f'#define __CUDA_ARCH__ 900\n#define MMGDINO_CUDA_MAX_BLOCKS {MAX_BLOCKS}\n#line 1 "{cu}"\n'
        units[cu.stem] = work / (cu.stem + ".cpp")
        units[cu.stem].write_text(prelude + rewritten)
    return units


def build(cache_dir=None):
    """Directory holding the emulator executables (simt_kernels: the launchers of csrc/cuda; simt_selftest: the
    emulator's own checks), built once per source digest under cache_dir (default: the temp directory)."""
    out = Path(cache_dir or tempfile.gettempdir()) / f"mmgdino-simt-{sources_digest()}"
    if (out / "simt_kernels").exists() and (out / "simt_selftest").exists():
        return out
    work = out / f"build.{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    units = kernel_units(work)
    for name in ("simt", "driver", "selftest"):
        units[name] = EMULATOR / f"{name}.cpp"
    flags = [
        CXX_STANDARD,
        "-O1",
        "-g",
        "-fno-omit-frame-pointer",
        "-fsanitize=address,undefined",
        "-fno-sanitize-recover=undefined",
        "-Wall",
        "-Wno-unknown-pragmas",
        *(f"-I{d}" for d in INCLUDE_DIRS),
    ]
    cxx = compiler()
    jobs = {
        name: subprocess.Popen(
            [cxx, *flags, "-c", str(src), "-o", str(work / f"{name}.o")],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name, src in units.items()
    }
    for name, job in jobs.items():
        log = job.communicate()[0]
        if job.returncode != 0:
            raise RuntimeError(f"emulator build of {name} failed:\n{log[-8000:]}")
    links = {"simt_kernels": ["simt", "driver", *(cu.stem for cu in KERNELS)], "simt_selftest": ["simt", "selftest"]}
    for exe, parts in links.items():
        subprocess.run([cxx, *flags, *(str(work / f"{p}.o") for p in parts), "-o", str(work / exe)], check=True)
    for exe in links:
        (work / exe).replace(out / exe)
    shutil.rmtree(work, ignore_errors=True)
    return out


# The trace build (memory-traffic counters, cuda_emulator/trace.cpp): the kernel units get GCC's
# kernel-address instrumentation in outlined mode (a call per load and store, which trace.cpp implements) and no
# sanitizer runtime, on the real grid size (no block cap). -O1 and no scalar replacement of aggregates for them:
# otherwise GCC splits the kernels' 16-byte packet loads and stores into four scalar ones before instrumenting
# (nvcc emits one LDG.128 / STG.128), which would count four requests where the GPU issues one (a test checks).
TRACE_KERNEL_FLAGS = [
    "-O1",
    "-fno-tree-sra",
    "-fsanitize=kernel-address",
    "--param=asan-instrumentation-with-call-threshold=0",
    "--param=asan-stack=0",
    "--param=asan-globals=0",
]


PEER_SOURCES = (".cu", ".cuh", ".h", ".hpp", ".cpp")
# CUDA code often reads a register array through another type, which nvcc keeps working and GCC's strict aliasing
# would not: a peer's units are built without it.
PEER_KERNEL_FLAGS = [*TRACE_KERNEL_FLAGS, "-fno-strict-aliasing"]


def _peer_files(peer):
    return sorted(p for p in Path(peer).rglob("*") if p.is_file() and p.suffix in PEER_SOURCES)


def build_trace(cache_dir=None, peer=None, arch=900):
    """Directory holding simt_trace (the launchers of csrc/cuda, counting their memory traffic into the JSON file
    named by SIMT_TRACE_OUT) and simt_trace_selftest (kernels with hand-computed counts).

    arch: the __CUDA_ARCH__ the kernels are built for (900: Hopper's 16-byte vector atomics; 800 and below: the
    scalar ones), so that the traffic counted is that target's.

    peer: a folder with another implementation's kernels and an adapter that defines
    mmgdino_peer_ms_deform_attn_forward/backward (cuda_emulator/driver.cpp) with our launchers' contract; its
    .cu and .cpp files are compiled and instrumented like ours (launches rewritten in every file, headers included),
    with the folder and its include/ (stand-ins for headers the emulator lacks) on the include path. Peers are never
    part of this repository (.peers/ is ignored): the folder is the caller's."""
    peer_files = _peer_files(peer) if peer else []
    peer_digest = [*PEER_KERNEL_FLAGS, *(p.name.encode() + p.read_bytes() for p in peer_files)] if peer else []
    digest = sources_digest("trace", arch, *TRACE_KERNEL_FLAGS, *peer_digest)
    out = Path(cache_dir or tempfile.gettempdir()) / f"mmgdino-simt-trace-{digest}"
    if (out / "simt_trace").exists() and (out / "simt_trace_selftest").exists():
        return out
    work = out / f"build.{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    units = {}
    for cu in KERNELS:
        source = rewrite_launches(cu.read_text())
        units[cu.stem] = work / (cu.stem + ".cpp")
        units[cu.stem].write_text(f'#define __CUDA_ARCH__ {arch}\n#line 1 "{cu}"\n' + source)
    units["trace_selftest"] = EMULATOR / "trace_selftest.cpp"
    peer_units = {}
    for path in peer_files:
        copy = work / "peer" / path.relative_to(peer)
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_text(f'#line 1 "{path}"\n' + rewrite_launches(path.read_text()))
        if path.suffix in (".cu", ".cpp"):
            name = "peer_" + "_".join(path.relative_to(peer).with_suffix("").parts)
            peer_units[name] = copy.with_name(copy.name + ".cpp")
            peer_units[name].write_text(f'#define __CUDA_ARCH__ {arch}\n#include "{copy.name}"\n')
    peer_dirs = [work / "peer", work / "peer" / "include"] if peer else []
    flags = [CXX_STANDARD, "-O2", "-g", "-DSIMT_TRACE", "-Wall", "-Wno-unknown-pragmas",
             *(f"-I{d}" for d in [*INCLUDE_DIRS, *peer_dirs])]  # fmt: skip
    plain = {name: EMULATOR / f"{name}.cpp" for name in ("simt", "driver", "trace")}
    cxx = compiler()
    jobs = [
        (
            name,
            subprocess.Popen(
                [cxx, *flags, *extra, "-c", str(src), "-o", str(work / f"{name}.o")],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            ),
        )  # fmt: skip
        for group, extra in ((units, TRACE_KERNEL_FLAGS), (peer_units, PEER_KERNEL_FLAGS), (plain, []))
        for name, src in group.items()
    ]
    for name, job in jobs:
        log = job.communicate()[0]
        if job.returncode != 0:
            raise RuntimeError(f"trace build of {name} failed:\n{log[-8000:]}")
    links = {"simt_trace": ["simt", "driver", "trace", *(cu.stem for cu in KERNELS), *peer_units],
             "simt_trace_selftest": ["simt", "trace", "trace_selftest"]}  # fmt: skip
    for exe, parts in links.items():
        subprocess.run([cxx, *flags, *(str(work / f"{p}.o") for p in parts), "-o", str(work / exe)], check=True)
    for exe in links:  # renamed into place: concurrent builds of the same sources never see a half-written file
        (work / exe).replace(out / exe)
    shutil.rmtree(work, ignore_errors=True)
    return out


def build_reuse(cache_dir=None):
    """The reuse-distance counter of trace.cpp as a command (cuda_emulator/reuse_main.cpp: sector numbers on
    stdin, the histogram's JSON on stdout), for traces counted outside the emulator (triton_trace)."""
    sources = [EMULATOR / "reuse.h", EMULATOR / "reuse_main.cpp"]
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest()[:16]
    exe = Path(cache_dir or tempfile.gettempdir()) / f"mmgdino-simt-reuse-{digest}"
    if not exe.exists():
        partial = exe.with_name(f"{exe.name}.{os.getpid()}")
        subprocess.run([compiler(), CXX_STANDARD, "-O2", str(sources[1]), "-o", str(partial)], check=True)
        partial.replace(exe)  # renamed into place, as build_trace does
    return exe
