"""The kernels' resource budget: registers, spills, stack and static shared memory of every CUDA kernel
instantiation and Triton kernel configuration, and the occupancy that follows on each architecture.

    python benchmarks/cuda_resources.py --write           # regenerate benchmarks/results/cuda-resources.{json,md}
    python benchmarks/cuda_resources.py --check           # CI: fail when a hot kernel spills or loses occupancy
    python benchmarks/cuda_resources.py --binary _C.so    # CI: every budgeted CUDA kernel is in the binary, per arch

No GPU is needed. CUDA: ptxas's report (-Xptxas -v) while nvcc compiles csrc/cuda/*.cu with the extension's own
flags (mmgdino/_cuda_build.py), with every warning an error, so this is also CI's CUDA compile check. Triton: the
log of Triton's own ptxas run for the configurations tests/triton_aot_compile.py compiles. Occupancy is the
static limit (registers, shared memory, threads and blocks per SM) of each architecture's published limits, for
the block size each kernel launches with; achieved occupancy on a GPU can only be lower.
"""

import argparse
import contextlib
import io
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
ARCHS = (80, 90)

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


def _cuda_build():
    sys.path.insert(0, str(ROOT / "mmgdino"))
    try:
        import _cuda_build  # standard library only; importing mmgdino itself would need the extension
    finally:
        sys.path.pop(0)
    return _cuda_build


def find_nvcc():
    """The nvcc of the toolkit setup.py would build with (the same search), or None."""
    root, _ = _cuda_build().find_cuda_toolkit()
    return os.path.join(root, "bin", "nvcc") if root else None


def cuda_rows(nvcc, archs):
    flags = _cuda_build().NVCC_FLAGS
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for source in sorted((ROOT / "csrc" / "cuda").glob("*.cu")):
            command = [nvcc, *flags, "-I", str(ROOT / "csrc" / "include"), "-Werror", "all-warnings"]
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
    sys.path.insert(0, str(ROOT / "tests"))
    import triton_aot_compile as aot
    from triton import knobs

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


def key(row):
    return f"{row['backend']}:{row['kernel']}:sm_{row['arch']}"


def markdown(rows, meta):
    lines = [
        "# Kernel resource budget (from the compiler, not measured on a GPU)",
        "",
        f"{meta['nvcc']}; Triton {meta['triton']}. Regenerate with `python benchmarks/cuda_resources.py --write`;",
        "CI (`--check`) fails when a hot kernel (fp32/fp16/bf16) spills or its occupancy falls below this table.",
        "Occupancy is the static limit per SM from registers, shared memory and block size; stack is local memory",
        "per thread (a stack with no spills is an array or call frame ptxas kept in local memory).",
        "",
        "| backend | kernel | arch | threads | registers | spill st/ld (B) | stack (B) | shared (B) | blocks/SM |"
        " occupancy | hot |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['backend']} | `{r['kernel']}` | sm_{r['arch']} | {r['threads']} | {r['registers']} | "
            f"{r['spill_stores']}/{r['spill_loads']} | {r['stack']} | {r['shared']} | {r['blocks_per_sm']} | "
            f"{r['occupancy']:.0%} | {'yes' if r['hot'] else 'no'} |"
        )
    stacked = [r for r in rows if r["stack"]]
    lines += ["", f"Kernels with a stack: {len(stacked)}"]
    lines += [f"- `{r['kernel']}` sm_{r['arch']}: {r['stack']} bytes" for r in stacked]
    return "\n".join(lines) + "\n"


def check(rows, budget_rows):
    """One line per problem: a hot kernel that spills or lost occupancy, or a kernel added or removed."""
    budget = {key(r): r for r in budget_rows}
    now = {key(r): r for r in rows}
    problems = []
    for name in sorted(set(budget) - set(now)):
        problems.append(f"{name}: in the budget but no longer compiled (regenerate with --write)")
    for name in sorted(set(now) - set(budget)):
        problems.append(f"{name}: not in the budget (regenerate with --write and review the table)")
    for name in sorted(set(now) & set(budget)):
        r, b = now[name], budget[name]
        if not r["hot"]:
            continue
        if r["spill_stores"] + r["spill_loads"] > b["spill_stores"] + b["spill_loads"]:
            problems.append(
                f"{name}: spills {r['spill_stores']}/{r['spill_loads']} bytes (budget {b['spill_stores']}/"
                f"{b['spill_loads']})"
            )
        if r["occupancy"] < b["occupancy"]:
            problems.append(
                f"{name}: occupancy {r['occupancy']:.0%} < budget {b['occupancy']:.0%} "
                f"({r['registers']} registers, {r['shared']} B shared; budget {b['registers']}, {b['shared']})"
            )
    return problems


def check_binary(library, budget_rows, cuobjdump):
    """Every CUDA kernel of the budget is in the library's cubin for its architecture, and nothing else. Compared
    by demangled name: the mangled one carries a hash of the source path (anonymous namespace)."""
    out = subprocess.run([cuobjdump, "-res-usage", str(library)], capture_output=True, text=True)
    if out.returncode != 0:
        return [f"cuobjdump failed on {library}: {out.stderr.strip()}"]
    mangled, arch = [], None
    for line in out.stdout.splitlines():
        if match := re.match(r"arch = sm_(\d+)", line.strip()):
            arch = int(match.group(1))
        elif match := re.match(r"\s*Function (\S+):", line):
            mangled.append((match.group(1), arch))
    names = demangle(sorted({m for m, _ in mangled}))
    present = {(short_name(names[m]), a) for m, a in mangled}
    expected = {(r["kernel"], r["arch"]) for r in budget_rows if r["backend"] == "cuda"}
    problems = [f"missing from {library.name}: {k} for sm_{a}" for k, a in sorted(expected - present)]
    problems += [f"in {library.name} but not budgeted: {k} for sm_{a}" for k, a in sorted(present - expected)]
    return problems


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="regenerate the checked-in table and budget")
    mode.add_argument("--check", action="store_true", help="compile and compare with the checked-in budget")
    mode.add_argument("--binary", type=Path, help="check a built mmgdino/_C*.so against the budget (cuobjdump)")
    parser.add_argument("--cuobjdump", default="cuobjdump", help="cuobjdump executable (for --binary)")
    parser.add_argument("--no-triton", action="store_true", help="CUDA kernels only")
    args = parser.parse_args(argv)
    budget_path = RESULTS / "cuda-resources.json"

    if args.binary:
        budget = json.loads(budget_path.read_text())["kernels"]
        archs = sorted({r["arch"] for r in budget if r["backend"] == "cuda"})
        problems = check_binary(args.binary, budget, args.cuobjdump)
        for p in problems[:20]:
            print(f"FAIL {p}")
        if len(problems) > 20:
            print(f"FAIL ... and {len(problems) - 20} more")
        if not problems:
            print(
                f"OK: {args.binary.name} holds the {sum(r['backend'] == 'cuda' for r in budget)} budgeted CUDA "
                f"kernels for {', '.join(f'sm_{a}' for a in archs)}"
            )
        return 1 if problems else 0

    nvcc = find_nvcc()
    if nvcc is None:
        print("nvcc not found (set CUDA_HOME): the CUDA kernels cannot be compiled or budgeted", file=sys.stderr)
        return 2
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
    rows = cuda_rows(nvcc, ARCHS)
    if not args.no_triton:
        rows += triton_rows(ARCHS)
    rows = with_occupancy(rows)
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    meta = {"nvcc": f"nvcc {version}", "triton": triton_version, "archs": list(ARCHS), "sm_limits": SM_LIMITS}

    if args.write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        budget_path.write_text(json.dumps({"meta": meta, "kernels": rows}, indent=1) + "\n")
        (RESULTS / "cuda-resources.md").write_text(markdown(rows, meta))
        print(f"wrote {budget_path.relative_to(ROOT)} and cuda-resources.md: {len(rows)} kernels")
        return 0

    budget_rows = json.loads(budget_path.read_text())["kernels"]
    if args.no_triton:
        budget_rows = [r for r in budget_rows if r["backend"] == "cuda"]
    problems = check(rows, budget_rows)
    for p in problems:
        print(f"FAIL {p}")
    hot = [r for r in rows if r["hot"]]
    if not problems:
        print(f"OK: {len(rows)} kernels compiled ({len(hot)} hot), none spills or lost occupancy against the budget")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
