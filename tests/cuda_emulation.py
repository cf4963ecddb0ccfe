"""Builds csrc/cuda/*.cu for the CPU SIMT emulator in tests/cuda_emulator/ and runs its launchers on torch tensors.

The kernels compile unchanged except for the `kernel<<<grid, block, shared, stream>>>(args)` launches, which are
rewritten into calls of the emulator's launch(). The build uses AddressSanitizer and UBSan, so an out-of-bounds
access or undefined arithmetic fails the run. MMGDINO_CUDA_MAX_BLOCKS is lowered so that small test shapes
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

import torch

from mmgdino._cuda_build import CXX_STANDARD

ROOT = Path(__file__).resolve().parents[1]
EMULATOR = Path(__file__).resolve().parent / "cuda_emulator"
KERNELS = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))
# The ATen side of the CUDA backend: checks, allocation, argument packing, error mapping, registration.
GLUE = [
    ROOT / "csrc" / "checks.cpp",
    *sorted((ROOT / "csrc" / "cuda").glob("*.cpp")),
    *sorted((ROOT / "csrc" / "cuda").glob("*.h")),
]
MAX_BLOCKS = 5
# The include path every emulated build shares: the emulator's CUDA headers first, so that <cuda_runtime.h> is
# the emulator's. The C++ standard is the extension's (CXX_STANDARD, from mmgdino._cuda_build).
INCLUDE_DIRS = [EMULATOR, ROOT / "csrc" / "include", ROOT / "csrc" / "cuda"]

_LAUNCH = re.compile(r"([A-Za-z_][\w:]*(?:<[^;<>]*>)?)\s*<<<(.*?)>>>\s*\((.*?)\);", re.S)
_DTYPE_NAMES = {
    torch.float32: "float32",
    torch.float64: "float64",
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
}


class KernelError(RuntimeError):
    """The emulated launch returned a CUDA error (bad configuration, or a rule of the SIMT model broken)."""


def rewrite_launches(source):
    return _LAUNCH.sub(r"::simt::launch(\1, \2, \3);", source)


def _sources_digest(*extra):
    """Digest of every source an emulated build reads, plus `extra` (the glue adds torch's version and build)."""
    h = hashlib.sha256()
    for item in extra:
        h.update(str(item).encode())
    files = [
        *KERNELS,
        *GLUE,
        *sorted(p for p in EMULATOR.rglob("*") if p.is_file()),
        *sorted((ROOT / "csrc" / "include" / "mmgdino").glob("*")),
    ]
    for path in files:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def compiler():
    return shutil.which(os.environ.get("CXX", "g++"))


def _kernel_units(work):
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
    out = Path(cache_dir or tempfile.gettempdir()) / f"mmgdino-simt-{_sources_digest()}"
    if (out / "simt_kernels").exists() and (out / "simt_selftest").exists():
        return out
    work = out / f"build.{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    units = _kernel_units(work)
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


# The trace build (memory-traffic counters, tests/cuda_emulator/trace.cpp): the kernel units get GCC's
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
    mmgdino_peer_ms_deform_attn_forward/backward (tests/cuda_emulator/driver.cpp) with our launchers' contract; its
    .cu and .cpp files are compiled and instrumented like ours (launches rewritten in every file, headers included),
    with the folder and its include/ (stand-ins for headers the emulator lacks) on the include path. Peers are never
    part of this repository (.peers/ is ignored): the folder is the caller's."""
    peer_files = _peer_files(peer) if peer else []
    peer_digest = [*PEER_KERNEL_FLAGS, *(p.name.encode() + p.read_bytes() for p in peer_files)] if peer else []
    digest = _sources_digest("trace", arch, *TRACE_KERNEL_FLAGS, *peer_digest)
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
    """The reuse-distance counter of trace.cpp as a command (tests/cuda_emulator/reuse_main.cpp: sector numbers on
    stdin, the histogram's JSON on stdout), for traces counted outside the emulator (tests/triton_trace.py)."""
    sources = [EMULATOR / "reuse.h", EMULATOR / "reuse_main.cpp"]
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest()[:16]
    exe = Path(cache_dir or tempfile.gettempdir()) / f"mmgdino-simt-reuse-{digest}"
    if not exe.exists():
        partial = exe.with_name(f"{exe.name}.{os.getpid()}")
        subprocess.run([compiler(), CXX_STANDARD, "-O2", str(sources[1]), "-o", str(partial)], check=True)
        partial.replace(exe)  # renamed into place, as build_trace does
    return exe


def trace_selftest(exe, case):
    """The counters of one hand-computable kernel (tests/cuda_emulator/trace_selftest.cpp)."""
    import json

    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "counters.json"
        proc = subprocess.run([str(exe / "simt_trace_selftest"), case], capture_output=True, text=True,
                              env=dict(os.environ, SIMT_TRACE_OUT=str(out)))  # fmt: skip
        if proc.returncode != 0:
            raise AssertionError(f"trace self-test {case} failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
        return json.loads(out.read_text())


def load_glue_extension(cache_dir=None):
    """The CUDA glue (csrc/cuda/*_cuda.cpp, csrc/checks.cpp) built into a torch extension around the emulated
    kernels, its C++ namespace renamed to mmgdino_simt and registered for the CPU dispatch key: the operators
    torch.ops.mmgdino_simt.* take CPU tensors down the exact code path CUDA tensors take in a GPU build. The
    schemas, fake kernels and autograd are mmgdino's own, registered here for the renamed operators."""
    from torch.utils import cpp_extension

    from mmgdino.ops import _library

    if hasattr(torch.ops, "mmgdino_simt") and hasattr(torch.ops.mmgdino_simt, "ms_deform_attn"):
        return torch.ops.mmgdino_simt
    # Keyed by torch's version and build too: the extension links against it, and a CPU and a CUDA torch
    # environment on one machine must not share a build.
    digest = _sources_digest(torch.__version__, torch.version.cuda, torch.compiled_with_cxx11_abi())
    out = Path(cache_dir or tempfile.gettempdir()) / f"mmgdino-simt-glue-{digest}"
    out.mkdir(parents=True, exist_ok=True)
    units = _kernel_units(out)
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
    for name in ("ms_deform_attn", "ms_deform_attn_backward", "contrastive_logits", "contrastive_max"):
        schema = str(getattr(torch.ops.mmgdino, name).default._schema)
        _GLUE_LIBRARY.define(schema.split("::", 1)[1])
    fakes = {
        "ms_deform_attn": _library._ms_deform_attn_fake,
        "ms_deform_attn_backward": _library._ms_deform_attn_backward_fake,
        "contrastive_logits": _library._contrastive_logits_fake,
        "contrastive_max": _library._contrastive_max_fake,
    }
    for name, fake in fakes.items():
        torch.library.register_fake(f"mmgdino_simt::{name}", fake, lib=_GLUE_LIBRARY)
    _library.register_ms_deform_attn_autograd(
        "mmgdino_simt::ms_deform_attn", torch.ops.mmgdino_simt.ms_deform_attn_backward
    )
    _library.register_contrastive_logits_autograd("mmgdino_simt::contrastive_logits")
    return torch.ops.mmgdino_simt


_GLUE_LIBRARY = None


def _write(path, tensor):
    t = tensor.detach().contiguous().cpu()
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.view(torch.int16)
    t.numpy().tofile(path)


def _read(path, dtype, shape):
    import numpy as np

    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0:
        return torch.empty(shape, dtype=dtype)
    return torch.from_numpy(raw).view(dtype).reshape(shape).clone()


_SANITIZER_ENV = dict(ASAN_OPTIONS="detect_leaks=0", UBSAN_OPTIONS="print_stacktrace=1")


def selftest(exe, case):
    """(return code, stdout, stderr) of one emulator self-test case."""
    proc = subprocess.run(
        [str(exe / "simt_selftest"), case], capture_output=True, text=True, env=dict(os.environ, **_SANITIZER_ENV)
    )
    return proc.returncode, proc.stdout, proc.stderr


def _run(exe, op, args, inputs, outputs, counters=None):
    """The launcher's outputs; with `counters` (a dict), the trace build (build_trace) runs it instead and the
    memory-traffic counters of its launch are put into `counters`."""
    import json

    with tempfile.TemporaryDirectory() as d:
        lines = [f"op {op}"] + [f"{k} {v}" for k, v in args.items()]
        Path(d, "args.txt").write_text("\n".join(lines) + "\n")
        for name, t in inputs.items():
            _write(Path(d, name + ".bin"), t)
        env = dict(os.environ, **_SANITIZER_ENV)
        program = "simt_kernels"
        if counters is not None:
            program, env["SIMT_TRACE_OUT"] = "simt_trace", str(Path(d, "counters.json"))
        proc = subprocess.run([str(exe / program), d], capture_output=True, text=True, env=env)
        if proc.returncode == 3:
            raise KernelError(proc.stdout.strip())
        if proc.returncode != 0:
            raise AssertionError(f"emulated kernel failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-6000:]}")
        if counters is not None:
            counters.update(json.loads(Path(d, "counters.json").read_text()))
        return {name: _read(Path(d, name + ".bin"), dtype, shape) for name, (dtype, shape) in outputs.items()}


def _acc_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _msda_args(value, sampling_locations, misalign, window, peer=False):
    batch, num_values, heads, head_dim = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    args = dict(
        dtype=_DTYPE_NAMES[value.dtype],
        batch=batch,
        num_values=num_values,
        num_heads=heads,
        head_dim=head_dim,
        num_queries=queries,
        num_levels=levels,
        num_points=points,
        misalign=int(misalign),
        peer=int(peer),
    )
    if window is not None:
        # value holds rows [start, start + len) of a batch-1 value with num_values rows, the rest zeros.
        start, args["num_values"] = window
        assert batch == 1 and 0 <= start and start + num_values <= args["num_values"]
        args.update(window_start=start, window_rows=num_values)
    return args


def ms_deform_attn(
    exe,
    value,
    spatial_shapes,
    level_start_index,
    sampling_locations,
    attention_weights,
    misalign=False,
    window=None,
    counters=None,
    peer=False,
):
    """window=(start, num_values): value is rows [start, start + value.shape[1]) of a mostly-zero value;
    counters: see _run; peer: the peer kernel linked by build_trace(peer=...) instead of ours."""
    args = _msda_args(value, sampling_locations, misalign, window, peer)
    batch, _, heads, head_dim = value.shape
    queries = sampling_locations.shape[1]
    inputs = dict(
        value=value,
        spatial_shapes=spatial_shapes,
        level_start_index=level_start_index,
        sampling_locations=sampling_locations,
        attention_weights=attention_weights,
    )
    outputs = {"output": (value.dtype, (batch, queries, heads * head_dim))}
    return _run(exe, "ms_deform_attn_forward", args, inputs, outputs, counters)["output"]


def ms_deform_attn_backward(
    exe,
    grad_output,
    value,
    spatial_shapes,
    level_start_index,
    sampling_locations,
    attention_weights,
    misalign=False,
    window=None,
    counters=None,
    peer=False,
):
    """(grad_value in the accumulation dtype, grad_sampling_locations, grad_attention_weights); with a window,
    grad_value covers the window's rows only; counters, peer: see ms_deform_attn."""
    args = _msda_args(value, sampling_locations, misalign, window, peer)
    inputs = dict(
        value=value,
        spatial_shapes=spatial_shapes,
        level_start_index=level_start_index,
        sampling_locations=sampling_locations,
        attention_weights=attention_weights,
        grad_output=grad_output,
    )
    outputs = {
        "grad_value": (_acc_dtype(value.dtype), value.shape),
        "grad_sampling_locations": (value.dtype, sampling_locations.shape),
        "grad_attention_weights": (value.dtype, attention_weights.shape),
    }
    out = _run(exe, "ms_deform_attn_backward", args, inputs, outputs, counters)
    return out["grad_value"], out["grad_sampling_locations"], out["grad_attention_weights"]


def contrastive(exe, vision, text, text_token_mask, bias, scale, max_text_len, reduce_max=False, counters=None):
    batch, rows, dim = vision.shape
    tokens = text.shape[1]
    acc = _acc_dtype(vision.dtype)
    args = dict(
        dtype=_DTYPE_NAMES[vision.dtype],
        batch=batch,
        num_rows=rows,
        num_tokens=tokens,
        dim=dim,
        max_text_len=max_text_len,
        scale=repr(float(scale)),
    )
    inputs = dict(
        vision=vision, text=text, text_token_mask=text_token_mask.to(torch.bool), bias=torch.tensor(bias, dtype=acc)
    )
    shape = (batch, rows) if reduce_max else (batch, rows, max_text_len)
    op = "contrastive_max" if reduce_max else "contrastive_logits"
    return _run(exe, op, args, inputs, {"output": (acc, shape)}, counters)["output"]
