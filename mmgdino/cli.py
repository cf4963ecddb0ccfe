"""The `mmgdino` command: `detect` (images -> JSON Lines), `bench` (speed and agreement against transformers) and
`info` (versions, backends)."""

import argparse
import json
import sys
from pathlib import Path

import torch


def _info(args):
    import mmgdino
    from mmgdino import _extension, environment, ops

    print(f"mmgdino {mmgdino.__version__}")
    for name, version in environment.versions().items():
        print(f"  {name:<13}{version}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"  device       {environment.describe_device(torch.device(device))}")
    print(
        f"  extension    {'built' if _extension.has_cpu_kernels else 'not built'}"
        f"{' with CUDA' if _extension.has_cuda_kernels else ''}"
    )
    if _extension.has_cuda_kernels:
        from mmgdino import _cuda_arch

        fits = ""
        if torch.cuda.is_available():
            capability = torch.cuda.get_device_capability()
            runs = _cuda_arch.runs_on(_extension.cuda_arch_list, capability)
            fits = {
                True: f" (runs on this GPU, {capability[0]}.{capability[1]})",
                None: "",
                False: f" (NOT this GPU, {capability[0]}.{capability[1]}: rebuild with "
                f"TORCH_CUDA_ARCH_LIST={capability[0]}.{capability[1]})",
            }[runs]
        print(f"  CUDA archs   {_extension.cuda_arch_list}{fits}")
    for op in ops.OPS:
        for kind in ("cpu", "cuda"):
            print(f"  {op:<20}{kind:<5} backends: {', '.join(ops.available_backends(op, kind))}")
    for backend, why in ops.unavailable_reasons().items():
        print(f"  {backend} unavailable: {why}")
    return 0


def _bench(args):
    from mmgdino import bench

    dtypes = [getattr(torch, d) for d in args.dtype] if args.dtype else None
    report = bench.run_ops(
        device=args.device,
        dtypes=dtypes,
        quick=args.quick,
        repeats=args.repeats,
        peers=args.peer or (),
        log=lambda m: print(m, file=sys.stderr, flush=True),
        end_to_end=not args.ops_only,
        ops_cases=not args.model_only,
    )
    print(bench.markdown_table(report))
    json_path, md_path = bench.write_report(report, args.out)
    print(f"wrote {json_path} and {md_path}")
    if args.plot:
        print(f"wrote {bench.plot_report(report, args.out)}")
    return 0


def _image_paths(inputs):
    from .detector import IMAGE_SUFFIXES

    paths = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            paths.append(path)
    return paths


def _already_done(out):
    done = set()
    if out and Path(out).exists():
        for line in Path(out).read_text().splitlines():
            try:
                done.add(json.loads(line)["image"])
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by an interrupted run: that image runs again
    return done


def _draw(path, image, detections, out_dir):
    from PIL import ImageDraw

    canvas = image.copy()
    draw = ImageDraw.Draw(canvas)
    for det in detections:
        draw.rectangle(det["box"], outline=(255, 64, 0), width=max(2, round(min(image.size) / 300)))
        draw.text((det["box"][0] + 3, det["box"][1] + 2), f"{det['label']} {det['score']:.2f}", fill=(255, 64, 0))
    out_dir.mkdir(parents=True, exist_ok=True)
    canvas.save(out_dir / path.name)


def _detect(args):
    from .detector import DEFAULT_MODEL, Detector, ImageReadError, load_image
    from .modeling import ModelLoadError

    paths = _image_paths(args.images)
    done = _already_done(args.out)
    todo = [p for p in paths if str(p) not in done]
    if not paths:
        print("mmgdino detect: no images found", file=sys.stderr)
        return 2
    if not todo:
        print(f"mmgdino detect: all {len(paths)} images are already in {args.out}", file=sys.stderr)
        return 0
    dtype = getattr(torch, args.dtype) if args.dtype else None
    try:
        detector = Detector(args.model or DEFAULT_MODEL, device=args.device, dtype=dtype)
    except (ModelLoadError, ValueError) as exc:
        print(f"mmgdino detect: {exc}", file=sys.stderr)
        return 2
    sink = open(args.out, "a") if args.out else sys.stdout
    failures = 0
    try:
        from tqdm import tqdm
    except ImportError:

        def tqdm(x, **_):
            return x

    progress = tqdm(
        range(0, len(todo), args.batch_size), desc="detect", unit="batch", disable=len(todo) < 2, file=sys.stderr
    )
    try:
        for start in progress:
            batch, images = [], []
            for path in todo[start : start + args.batch_size]:
                try:
                    images.append(load_image(path))
                    batch.append(path)
                except ImageReadError as exc:
                    failures += 1
                    print(f"mmgdino detect: {exc}", file=sys.stderr)
            if not images:
                continue
            results = detector.detect(
                images,
                args.labels,
                threshold=args.threshold,
                text_threshold=args.text_threshold,
                batch_size=args.batch_size,
            )
            for path, image, detections in zip(batch, images, results):
                # One line per detection; an image with none still gets a line, so a rerun skips it.
                for det in detections or [{"label": None, "score": None, "box": None}]:
                    sink.write(json.dumps({"image": str(path), **det}) + "\n")
                sink.flush()
                if args.draw:
                    _draw(path, image, detections, Path(args.draw))
    finally:
        if sink is not sys.stdout:
            sink.close()
    return 1 if failures else 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="mmgdino", description="Fast MM Grounding DINO")
    sub = parser.add_subparsers(dest="command", required=True)
    detect = sub.add_parser("detect", help="detect labelled objects in images; JSON Lines out")
    detect.add_argument("images", nargs="+", help="image files or directories (searched recursively)")
    detect.add_argument(
        "--labels", nargs="+", required=True, help='what to find, e.g. --labels "a cat" "a remote control"'
    )
    detect.add_argument("--model", default=None, help="hub id or local directory (default: MM Grounding DINO tiny)")
    detect.add_argument("--threshold", type=float, default=0.3, help="box score threshold (default 0.3)")
    detect.add_argument("--text-threshold", type=float, default=0.25, help="label score threshold (default 0.25)")
    detect.add_argument("--device", default=None)
    detect.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None)
    detect.add_argument("--batch-size", type=int, default=1)
    detect.add_argument("--out", default=None, help="append JSON Lines here; images already in it are skipped")
    detect.add_argument("--draw", default=None, metavar="OUT_DIR", help="write annotated images here")
    detect.set_defaults(fn=_detect)
    info = sub.add_parser("info", help="versions, device, and which backends are built and available (and why not)")
    info.set_defaults(fn=_info)
    bench = sub.add_parser("bench", help="benchmark every available backend against transformers' PyTorch code")
    bench.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    bench.add_argument(
        "--dtype",
        action="append",
        choices=["float32", "float16", "bfloat16"],
        help="repeatable; default float32 on CPU, all three on CUDA",
    )
    bench.add_argument("--quick", action="store_true", help="batch 1 only, 2 repeats")
    bench.add_argument("--repeats", type=int, default=None)
    bench.add_argument(
        "--peer",
        action="append",
        metavar="MODULE:FUNCTION",
        help="add an importable peer MSDA implementation (value, spatial_shapes, level_start_index, "
        "sampling_locations, attention_weights) to the comparison",
    )
    bench.add_argument("--ops-only", action="store_true", help="skip the end-to-end model comparison")
    bench.add_argument("--plot", action="store_true", help="also draw a PNG chart of the speedups (needs matplotlib)")
    bench.add_argument("--model-only", action="store_true", help="only the end-to-end model comparison")
    bench.add_argument(
        "--out",
        default="mmgdino-bench-results",
        help="write JSON and a markdown table (and the --plot PNG) at this path, suffixes replaced "
        "(default: ./mmgdino-bench-results.*)",
    )
    bench.set_defaults(fn=_bench)
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
