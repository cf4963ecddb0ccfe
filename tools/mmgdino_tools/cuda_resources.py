"""The kernels' resource budget: benchmarks/results/cuda-resources.{json,md}, what each CUDA kernel instantiation
and Triton kernel configuration may use (kernel_resources measures it), made and checked here. No GPU is needed.

    PYTHONPATH=tools python -P -m mmgdino_tools.cuda_resources --write   # regenerate the budget and its table
    PYTHONPATH=tools python -P -m mmgdino_tools.cuda_resources --check   # CI: fail when a hot kernel spills or
        # loses occupancy; also CI's CUDA compile check (nvcc with the extension's flags, warnings as errors)
    PYTHONPATH=tools python -P -m mmgdino_tools.cuda_resources --binary _C.so   # CI: every budgeted CUDA kernel
        # is in the binary, for each architecture (cuobjdump)
"""

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

from .checkout import RESULTS, ROOT
from .kernel_resources import ARCHS, SM_LIMITS, cuda_rows, demangle, find_nvcc, short_name, triton_rows, with_occupancy

BUDGET = RESULTS / "cuda-resources.json"
COMMAND = "PYTHONPATH=tools python -P -m mmgdino_tools.cuda_resources"


def key(row):
    return f"{row['backend']}:{row['kernel']}:sm_{row['arch']}"


def markdown(rows, meta):
    lines = [
        "# Kernel resource budget (from the compiler, not measured on a GPU)",
        "",
        f"{meta['nvcc']}; Triton {meta['triton']}. Regenerate with `{COMMAND} --write`;",
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
    try:
        out = subprocess.run([cuobjdump, "-res-usage", str(library)], capture_output=True, text=True)
    except FileNotFoundError:
        return [f"no cuobjdump at {cuobjdump!r} (give one with --cuobjdump)"]
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
    parser = argparse.ArgumentParser(prog="python -m mmgdino_tools.cuda_resources", description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="regenerate the checked-in table and budget")
    mode.add_argument("--check", action="store_true", help="compile and compare with the checked-in budget")
    mode.add_argument("--binary", type=Path, help="check a built mmgdino/_C*.so against the budget (cuobjdump)")
    parser.add_argument("--cuobjdump", default="cuobjdump", help="cuobjdump executable (for --binary)")
    parser.add_argument("--no-triton", action="store_true", help="CUDA kernels only")
    args = parser.parse_args(argv)

    if args.binary:
        budget = json.loads(BUDGET.read_text())["kernels"]
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
        BUDGET.write_text(json.dumps({"meta": meta, "kernels": rows}, indent=1) + "\n")
        (RESULTS / "cuda-resources.md").write_text(markdown(rows, meta))
        print(f"wrote {BUDGET.relative_to(ROOT)} and cuda-resources.md: {len(rows)} kernels")
        return 0

    budget_rows = json.loads(BUDGET.read_text())["kernels"]
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
