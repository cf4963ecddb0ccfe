"""mmgdino's ONNX export against transformers' own exporter, side by side (mmgdino.bench.onnx does the work;
`mmgdino bench --onnx` is the same):

    python benchmarks/onnx_export.py --size 320x480 --out benchmarks/results/onnx-cpu

Writes <out>.json and <out>.md (device, commit, versions, export and run times, agreement).
"""

import argparse
import json
import sys
from pathlib import Path

from mmgdino.bench import onnx


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="320x480", help="HEIGHTxWIDTH")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="onnx-export")
    parser.add_argument("--no-optimize", action="store_true", help="skip torch.onnx's graph optimization for ours")
    args = parser.parse_args()
    height, width = (int(v) for v in args.size.split("x"))
    report = onnx.compare(height, width, args.repeats, optimize=not args.no_optimize,
                          log=lambda m: print(m, file=sys.stderr, flush=True))  # fmt: skip
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    out.with_suffix(".md").write_text(onnx.markdown(report))
    print(onnx.markdown(report))


if __name__ == "__main__":
    main()
