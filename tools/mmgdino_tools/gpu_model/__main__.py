"""The command line of gpu_model (see the package's docstring): trace and model, --render, --compare."""

import argparse
import json
import shutil
import sys
from pathlib import Path

from mmgdino.environment import git_commit

from ..checkout import RESULTS
from . import __doc__ as PACKAGE_DOC
from .calibration import CALIBRATION, calibration, label
from .compare import compare, compare_markdown
from .report import write
from .roofline import modeled
from .targets import TARGETS
from .tracing import trace_row


def plan(args, peers):
    """(kernel, pass, case, dtype) to trace: ours and each peer on the seed's cases, or with --calibrate each chosen
    published case's implementations (among the peers given) in their published dtype, and ours in float32."""
    ours = [*(["mmgdino"] if not args.triton_only else []), *(["triton"] if args.triton or args.triton_only else [])]
    if args.calibrate is not None:
        return [(impl, False, name, CALIBRATION[name]["published"].get(impl, ("float32",))[0])
                for name in args.calibrate or CALIBRATION
                for impl in [*ours, *(p for p in peers if p in CALIBRATION[name]["published"])]]  # fmt: skip
    impls = [*ours, *peers]
    cases = ("decoder",) if args.quick else ("encoder", "decoder")
    passes = (False,) if args.forward_only else (False, True)
    return [(impl, backward, case, dtype) for backward in passes for case in cases for impl in impls
            for dtype in args.dtype or ("float32", "bfloat16")]  # fmt: skip


def parser():
    p = argparse.ArgumentParser(prog="python -m mmgdino_tools.gpu_model", description=PACKAGE_DOC.splitlines()[0])
    p.add_argument("--out", default="gpu-model-msda")
    p.add_argument("--quick", action="store_true", help="the decoder case only")
    p.add_argument("--forward-only", action="store_true")
    p.add_argument("--dtype", action="append", choices=("float32", "bfloat16"),
                   help="only these dtypes of the seed's cases (default: both)")  # fmt: skip
    p.add_argument("--peer", action="append", default=[], metavar="NAME=DIR",
                   help="another implementation traced beside ours: DIR holds its kernels and an adapter, "
                   "adapter.py for Triton kernels (triton_trace), else CUDA sources (emulator_build.build_trace); "
                   "NAMEs: original, dcnv4-flash, msda-triton")  # fmt: skip
    p.add_argument("--triton-python", default=sys.executable, metavar="PYTHON",
                   help="the Python that counts a Triton peer (a peer may need another Triton release: 3.9 "
                   "removed the block pointers msda-triton uses); ours run in this one")  # fmt: skip
    p.add_argument("--calibrate", nargs="*", metavar="CASE", choices=list(CALIBRATION),
                   help="only the published calibration cases (all, or those named)")  # fmt: skip
    p.add_argument("--triton", action="store_true", help="also our Triton kernels (counted in the interpreter)")
    p.add_argument("--triton-only", action="store_true", help="only our Triton kernels")
    p.add_argument("--render", nargs="+", metavar="JSON",
                   help="rewrite <out>.json/.md (and the calibration) from reports, rows merged")  # fmt: skip
    p.add_argument(
        "--compare",
        metavar="BENCH_JSON",
        help="measured (an mmgdino bench --device cuda report) beside the model of --model-report",
    )
    p.add_argument("--model-report", default=str(RESULTS / "gpu-model-msda.json"), metavar="JSON",
                   help="the traced report --compare models from")  # fmt: skip
    return p


def run_compare(args, error):
    for path in (args.compare, args.model_report):
        if not Path(path).is_file():
            error(f"{path}: no such report")
    bench = json.loads(Path(args.compare).read_text())
    try:
        target, rows = compare(json.loads(Path(args.model_report).read_text()), bench)
    except ValueError as exc:
        error(str(exc))
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps({"target": target, "device": bench["device"], "rows": rows},
                                                   indent=1) + "\n")  # fmt: skip
    text = compare_markdown(target, rows, bench)
    out.with_suffix(".md").write_text(text)
    print(text)


def render(args, error):
    missing = [path for path in args.render if not Path(path).is_file()]
    if missing:
        error(f"--render {missing[0]}: no such report")
    reports = [json.loads(Path(path).read_text()) for path in args.render]
    commits = dict.fromkeys(r["commit"] for r in reports)
    report = dict(reports[0], rows=[row for r in reports for row in r["rows"]], commit=", ".join(commits))
    for row in report["rows"]:  # the model again, with today's targets
        if "error" not in row:
            row["model"] = modeled(row, list(row["model"]))
    report["calibration"] = calibration(report["rows"])
    report["label"] = label(report["calibration"])
    write(report, Path(args.out))


def trace(args, error):
    if shutil.which(args.triton_python) is None:
        error(f"--triton-python {args.triton_python}: no such executable")
    peers = {}
    for item in args.peer:
        name, _, folder = item.partition("=")
        if not name or not folder:
            error(f"--peer {item!r}: expected NAME=DIR")
        if not Path(folder).is_dir():
            error(f"--peer {item!r}: {folder} is not a folder")
        peers[name] = folder
    rows = []
    for impl, backward, case, dtype in plan(args, peers):
        print(f"tracing {impl} {'backward' if backward else 'forward'} {case} {dtype} ...", file=sys.stderr, flush=True)
        rows.append(trace_row(impl, backward, case, dtype, peers.get(impl), args.triton_python))
    results = calibration(rows)
    report = {"commit": git_commit(), "targets": TARGETS, "rows": rows, "calibration": results,
              "label": label(results)}  # fmt: skip
    write(report, Path(args.out))


def main(argv=None):
    p = parser()
    args = p.parse_args(argv)
    mode = run_compare if args.compare else render if args.render else trace
    mode(args, p.error)


if __name__ == "__main__":
    main()
