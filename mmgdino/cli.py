"""The `mmgdino` command: `mmgdino bench` (operator benchmarks) and `mmgdino info` (versions, backends)."""

import argparse
import sys

import torch


def _info(args):
    import mmgdino
    from mmgdino import _extension, bench, ops

    print(f"mmgdino {mmgdino.__version__}")
    for name, version in bench.versions().items():
        print(f"  {name:<13}{version}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"  device       {bench.describe_device(torch.device(device))}")
    print(f"  extension    {'built' if _extension.has_cpu_kernels else 'not built'}"
          f"{' with CUDA' if _extension.has_cuda_kernels else ''}")
    for op in ops._backends.OPS:
        for kind in ("cpu", "cuda"):
            print(f"  {op:<20}{kind:<5} backends: {', '.join(ops.available_backends(op, kind))}")
    for backend, why in ops.unavailable_reasons().items():
        print(f"  {backend} unavailable: {why}")
    return 0


def _bench(args):
    from mmgdino import bench

    dtypes = [getattr(torch, d) for d in args.dtype] if args.dtype else None
    report = bench.run_ops(device=args.device, dtypes=dtypes, quick=args.quick, repeats=args.repeats,
                           peers=args.peer or (), log=lambda m: print(m, file=sys.stderr, flush=True),
                           end_to_end=not args.ops_only)
    print(bench.markdown_table(report))
    if args.out:
        json_path, md_path = bench.write_report(report, args.out)
        print(f"wrote {json_path} and {md_path}")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="mmgdino", description="Fast MM Grounding DINO")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="versions, device, and which backends are built and available (and why not)")
    info.set_defaults(fn=_info)
    bench = sub.add_parser("bench", help="benchmark every available backend against transformers' PyTorch code")
    bench.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    bench.add_argument("--dtype", action="append", choices=["float32", "float16", "bfloat16"],
                       help="repeatable; default float32 on CPU, all three on CUDA")
    bench.add_argument("--quick", action="store_true", help="batch 1 only, 2 repeats")
    bench.add_argument("--repeats", type=int, default=None)
    bench.add_argument("--peer", action="append", metavar="MODULE:FUNCTION",
                       help="add an importable peer MSDA implementation (value, spatial_shapes, level_start_index, "
                            "sampling_locations, attention_weights) to the comparison")
    bench.add_argument("--ops-only", action="store_true", help="skip the end-to-end model comparison")
    bench.add_argument("--out", default=None, help="write JSON and a markdown table at this path (suffixes replaced)")
    bench.set_defaults(fn=_bench)
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
