"""The `mmgdino` command: `detect` (images -> JSON Lines or COCO),
`eval` (COCO / LVIS accuracy with mmdetection's protocol), `export onnx` (a file ONNX Runtime and OpenVINO run),
`bench` (speed and agreement against transformers) and
`info` (versions, backends)."""

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

import torch

from .compiled import COMPILE_MODES, worth_compiling
from .detection import DetectJob, DetectRun, detect_images
from .detector import DEFAULT_CHUNK_MERGE_IOU, check_thresholds, clean_labels
from .distributed import RayOptions, check_options
from .errors import EXIT_CODES, MmgdinoError, UsageError
from .evaluation import evaluate
from .images import IMAGE_SUFFIXES
from .loading import DEFAULT_MODEL, PRECISIONS, check_precision, parse_dtype
from .quantization import CALIBRATION_IMAGES
from .sources import is_uri, list_images, read_manifest, version_of


def _info(args):
    import mmgdino
    from mmgdino import _extension, environment, ops, precision

    print(f"mmgdino {mmgdino.__version__}")
    for name, version in environment.versions().items():
        print(f"  {name:<13}{version}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"  device       {environment.describe_device(torch.device(device))}")
    print(
        f"  extension    {'built' if _extension.has_cpu_kernels else 'not built'}"
        f"{' with CUDA' if _extension.has_cuda_kernels else ''}"
        f"{'' if not _extension.build_record else ' against torch ' + _extension.build_record['torch']}"
    )
    if _extension.has_cpu_kernels:
        isa = _extension.cpu_isa
        print(
            f"  CPU build    {isa} (the best of avx512_bf16, avx512, avx2, baseline this CPU runs; "
            "MMGDINO_CPU_ISA caps it)"
        )
    print(f"  precision    {precision.info_line()}")
    if _extension.has_cpu_kernels and not _extension.has_cuda_kernels and _extension.why_no_cuda_kernels:
        print(f"  no CUDA      {_extension.why_no_cuda_kernels}")
    if _extension.has_cuda_kernels:
        from mmgdino import _cuda_build

        fits = ""
        if torch.cuda.is_available():
            capability = torch.cuda.get_device_capability()
            runs = _cuda_build.runs_on(_extension.cuda_arch_list, capability)
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


def _bench_onnx(args):
    from .export import parse_size

    height, width = parse_size(args.onnx)
    for package in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(package)
        except ImportError:
            raise UsageError(
                f"--onnx needs {package}: pip install onnx onnxscript onnxruntime (and openvino)"
            ) from None
    from .bench import onnx

    report = onnx.compare(height, width, args.repeats or 3, log=lambda m: print(m, file=sys.stderr, flush=True))
    out = Path(str(args.out) + "-onnx")
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    out.with_suffix(".md").write_text(onnx.markdown(report))
    print(onnx.markdown(report))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    if args.plot:
        print(f"wrote {onnx.plot_peers([report], out.with_suffix('.png'))}")
    return 0


def _bench(args):
    from mmgdino import bench

    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UsageError("--plot needs matplotlib: pip install matplotlib (or mmgdino[plot])") from None
    if args.repeats is not None and args.repeats < 1:
        raise UsageError(f"--repeats must be at least 1, got {args.repeats}")
    if args.onnx:
        return _bench_onnx(args)
    if "int8" in (args.dtype or ()):
        raise UsageError("--dtype int8: the int8 model is timed by --cpu-peers (against float32, bf16 and the peers)")
    names = [check_precision(args.device, d)[1] for d in args.dtype or ()]
    dtypes = [parse_dtype(d) for d in dict.fromkeys(names)] or None
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


# ------------------------------------------------------------------ detect


def _check_writable_file(option, value):
    folder = Path(value).resolve().parent
    if not folder.is_dir():
        raise UsageError(f"{option} {value}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"{option} {value}: folder {folder} is not writable")


def _check_draw_folder(value):
    try:
        Path(value).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--draw {value}: cannot create the folder ({exc.strerror or exc})") from None
    if not os.access(value, os.W_OK):
        raise UsageError(f"--draw {value}: folder is not writable")


def _ray_options(args):
    """RayOptions from --ray and its companions, or None; the companions alone are a usage error."""
    if args.ray:
        options = RayOptions(args.ray, args.workers, args.gpus_per_worker, args.cpus_per_worker, args.batch_size)
        check_options(options)
        return options
    if args.workers is not None or args.gpus_per_worker is not None or args.cpus_per_worker is not None:
        raise UsageError("--workers, --gpus-per-worker and --cpus-per-worker need --ray")
    return None


def _images_and_vocabularies(args):
    """({key: version}, {key: labels}, what the settings record of the labels) from --manifest or from image
    arguments with --labels."""
    if args.manifest is not None:
        entries = [(key, clean_labels(labels, where=f"labels of {key}")[0]) for key, labels in
                   read_manifest(args.manifest)]  # fmt: skip
        for key, _ in entries:
            if is_uri(key) and not args.ray:
                raise UsageError(f"--manifest: {key}: URIs need --ray")
            if not is_uri(key) and not Path(key).is_file():
                raise UsageError(f"--manifest: {key}: no such file")
        images = {key: version_of(key) for key, _ in entries}
        return images, dict(entries), f"manifest {Path(args.manifest).resolve()}"
    labels, dropped = clean_labels(args.labels, where="--labels")
    if dropped:
        print(f"mmgdino detect: note: duplicate labels ignored: {', '.join(dropped)}", file=sys.stderr)
    images = dict(list_images(args.images, uris=bool(args.ray)))
    if not images:
        raise UsageError("no images found (looked for " + ", ".join(sorted(IMAGE_SUFFIXES)) + ")")
    return images, dict.fromkeys(images, labels), list(labels)


def _checked_detect(args):
    """Every usage mistake, before the model loads: one line each. Returns the DetectRun."""
    if (args.labels is None) == (args.manifest is None):
        raise UsageError("give --labels (one vocabulary for every image) or --manifest (one per image), not both")
    if args.manifest is None and not args.images:
        raise UsageError("no images given")
    if args.manifest is not None and args.images:
        raise UsageError("with --manifest the images come from the manifest; give no image arguments")
    if args.chunk_merge_iou is None and not args.no_chunk_merge:
        args.chunk_merge_iou = DEFAULT_CHUNK_MERGE_IOU
    check_thresholds(args.threshold, args.text_threshold, args.chunk_merge_iou)
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    _, args.dtype = check_precision(args.device, args.dtype)
    if args.calibration is not None and args.dtype != "int8":
        raise UsageError("--calibration sets int8's ranges: it needs --dtype int8")
    if args.calibration is not None and args.calibration < 1:
        raise UsageError(f"--calibration must be at least 1 image, got {args.calibration}")
    if args.out:
        _check_writable_file("--out", args.out)
    elif args.format == "coco":
        raise UsageError("--format coco needs --out FILE.json")
    if args.draw:
        if args.ray:
            raise UsageError("--draw is not supported with --ray (draw from the records afterwards)")
        _check_draw_folder(args.draw)
    model = args.model or DEFAULT_MODEL
    if args.runtime and not str(model).endswith(".onnx"):
        raise UsageError(f"--runtime {args.runtime} runs an exported --model FILE.onnx (mmgdino export onnx)")
    if str(model).endswith(".onnx") and args.ray:
        raise UsageError("--ray runs checkpoints, not exported .onnx files")
    ray = _ray_options(args)
    images, vocabularies, labels_setting = _images_and_vocabularies(args)
    compile = not str(model).endswith(".onnx") and worth_compiling(args.compile, args.device, len(images), args.dtype)
    calibration = None
    if args.dtype == "int8":
        local = [key for key in images if not is_uri(key)]
        calibration = local[: args.calibration or CALIBRATION_IMAGES] or None
    job = DetectJob(model, device=args.device, dtype=args.dtype, threshold=args.threshold,
                    text_threshold=args.text_threshold, chunk_merge_iou=args.chunk_merge_iou,
                    batch_size=args.batch_size, runtime=args.runtime, compile=compile,
                    calibration=calibration)  # fmt: skip
    return DetectRun(images, vocabularies, labels_setting, job, out=args.out, format=args.format, draw=args.draw,
                     ray=ray, threads=args.threads_per_worker)  # fmt: skip


def _detect(args):
    run = _checked_detect(args)
    summary = detect_images(run, log=lambda m: print(f"mmgdino detect: {m}", file=sys.stderr, flush=True))
    return 1 if summary.failures else 0


def _export(args):
    from .export import export_onnx, parse_size

    if args.dynamic_size and args.image_size:
        raise UsageError("give --image-size or --dynamic-size, not both")
    size = parse_size(args.image_size or "800x1333")
    result = export_onnx(args.model or DEFAULT_MODEL, args.out, image_size=size, dynamic_batch=args.dynamic_batch,
                         dynamic_size=args.dynamic_size, opset=args.opset, dtype=args.dtype,
                         log=lambda m: print(f"mmgdino export: {m}", file=sys.stderr, flush=True))  # fmt: skip
    print(json.dumps({"onnx": str(result["onnx"]), "sidecar": str(result["sidecar"]),
                      "seconds": round(result["seconds"], 1), "nodes": result["nodes"]}))  # fmt: skip
    return 0


def _eval(args):
    report = evaluate(
        args.annotations,
        args.images,
        args.out,
        model=args.model,
        protocol=args.protocol,
        chunk_size="protocol" if args.chunk_size is None else args.chunk_size,
        max_dets=args.max_dets,
        batch_size=args.batch_size,
        device=args.device,
        dtype=args.dtype,
        limit=args.limit,
        compare=args.compare,
        compile=args.compile,
        calibration=args.calibration,
        log=lambda m: print(f"mmgdino eval: {m}", file=sys.stderr, flush=True),
        ray=_ray_options(args),
        threads=args.threads_per_worker,
    )
    print(Path(args.out, "summary.md").read_text().split("## Per category")[0].rstrip())
    return 1 if report["failed_images"] else 0


def _add_ray_options(parser):
    parser.add_argument("--ray", nargs="?", const="local", default=None, metavar="auto|local|ADDRESS",
                        help="run on Ray Data: 'local' (the default when given alone) starts a private "
                        "one-machine cluster on 127.0.0.1; 'auto' or host:port joins one (ray[data])")  # fmt: skip
    parser.add_argument("--workers", type=int, default=None, help="model actors (default: one per GPU, or CPUs - 1)")
    parser.add_argument("--gpus-per-worker", type=float, default=None, help="GPUs per actor (default 1 on GPUs)")
    parser.add_argument("--cpus-per-worker", type=float, default=None, help="CPUs per actor (default 1 on CPUs)")
    parser.add_argument("--threads-per-worker", type=int, default=None,
                        help="intra-op threads of every process that runs the model (default: this process's, so a "
                        "--ray run gives exactly the single-process run's numbers; on a CPU cluster with several "
                        "workers per machine, set it to --cpus-per-worker)")  # fmt: skip


def _add_precision_options(parser):
    parser.add_argument("--dtype", choices=PRECISIONS, default=None,
                        help="float32 (default), float16, bfloat16, int8 (CPU: int8 matrix products, calibrated on "
                        "the first --calibration images, auto's precision elsewhere) or auto (this CPU's fastest "
                        "that keeps agreement; see mmgdino info)")  # fmt: skip
    parser.add_argument("--compile", choices=COMPILE_MODES, default="auto",
                        help="run the model compiled by Inductor with frozen weights, padded to size buckets; "
                        "the compile is cached on disk (MMGDINO_CACHE_DIR); auto: on for a CPU run of "
                        "50 images or more in float32, bfloat16 or int8, where it pays")  # fmt: skip
    parser.add_argument(
        "--calibration",
        type=int,
        default=None,
        metavar="N",
        help=f"--dtype int8: calibrate on the first N images (default {CALIBRATION_IMAGES})",
    )


def _parser():
    parser = argparse.ArgumentParser(prog="mmgdino", description="Fast MM Grounding DINO", epilog=EXIT_CODES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--debug", action="store_true", help="show tracebacks (also MMGDINO_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True)
    detect = sub.add_parser("detect", help="detect labelled objects in images; JSON Lines or COCO out",
                            epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    detect.add_argument("images", nargs="*", help="image files or directories (searched recursively)")
    detect.add_argument("--labels", nargs="+", help='what to find in every image, e.g. --labels "a cat" "a remote"')
    detect.add_argument("--manifest", help="JSONL ({image, labels}) or CSV (image, labels separated by ';'): "
                        "a vocabulary per image, instead of --labels and image arguments")  # fmt: skip
    detect.add_argument("--model", default=None, help="hub id or local directory (default: MM Grounding DINO tiny "
                        "from the Hugging Face Hub, or from its local cache)")  # fmt: skip
    detect.add_argument(
        "--threshold",
        type=float,
        default=0.3,
        help="keep a box when its best token probability is >= this (default 0.3)",
    )
    detect.add_argument(
        "--text-threshold",
        type=float,
        default=0.25,
        help="a label joins a box's `labels` when one of its tokens is >= this (default 0.25)",
    )
    detect.add_argument("--chunk-merge-iou", type=float, default=None,
                        help="vocabularies split over several prompts: a box overlapping a better one of another "
                        "prompt by this IoU is the same object, dropped (default 0.8)")  # fmt: skip
    detect.add_argument("--no-chunk-merge", action="store_true", help="keep every prompt chunk's boxes")
    detect.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    _add_precision_options(detect)
    detect.add_argument("--batch-size", type=int, default=1)
    detect.add_argument("--out", default=None, help="write here (default: JSON Lines on stdout); a rerun with "
                        "the same settings skips finished images")  # fmt: skip
    detect.add_argument(
        "--format",
        choices=["jsonl", "coco"],
        default="jsonl",
        help="jsonl: one line per detection; coco: a COCO results array plus <out>.ids.json",
    )
    detect.add_argument(
        "--draw", default=None, metavar="OUT_DIR", help="write annotated images here, mirroring the inputs' folders"
    )
    detect.add_argument("--runtime", choices=["onnxruntime", "openvino"], default=None,
                        help="runtime for an exported --model FILE.onnx (default: onnxruntime)")  # fmt: skip
    _add_ray_options(detect)
    detect.set_defaults(fn=_detect)
    eval_parser = sub.add_parser("eval", help="COCO / LVIS accuracy with mmdetection's MM Grounding DINO protocol",
                              epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    eval_parser.add_argument("--annotations", required=True, help="COCO-format annotation file (COCO, LVIS, yours)")
    eval_parser.add_argument("--images", required=True, help="the folder its file_name entries are relative to")
    eval_parser.add_argument("--out", required=True, help="folder for predictions (resumable), detections.json, "
                          "metrics.json, per_category.json and summary.md")  # fmt: skip
    eval_parser.add_argument("--model", default=None, help="hub id or local directory (default: as detect)")
    eval_parser.add_argument(
        "--protocol",
        choices=["coco", "lvis"],
        default="coco",
        help="coco: all classes in one prompt, COCO AP; lvis: 40 classes per prompt, Fixed AP",
    )
    eval_parser.add_argument("--chunk-size", type=int, default=None,
                          help="classes per prompt (default: the protocol's: coco all, lvis 40)")  # fmt: skip
    eval_parser.add_argument("--max-dets", type=int, default=None, help="detections kept per image and prompt (300)")
    eval_parser.add_argument(
        "--batch-size",
        type=int,
        default=1,
        help="images per forward (default 1, the protocol; >1 pads images, recorded as such)",
    )
    eval_parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    _add_precision_options(eval_parser)
    eval_parser.add_argument("--limit", type=int, default=None, help="only the first N images (recorded as a subset)")
    eval_parser.add_argument(
        "--compare",
        choices=["transformers"],
        default=None,
        help="also run transformers' model and post-processing; AP and time side by side",
    )
    _add_ray_options(eval_parser)
    eval_parser.set_defaults(fn=_eval)
    export = sub.add_parser("export", help="export the model to a file other runtimes run",
                            epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    export.add_argument("format", choices=["onnx"])
    export.add_argument("--model", default=None, help="hub id or local directory (default: as detect)")
    export.add_argument("--out", required=True, help="the .onnx file (its sidecar folder <name>.mmgdino/ beside it)")
    export.add_argument("--opset", type=int, default=20)
    export.add_argument("--image-size", default=None, metavar="HxW", help="fixed input size (default 800x1333)")
    export.add_argument("--dynamic-size", action="store_true", help="not supported (says why)")
    export.add_argument("--dynamic-batch", action="store_true", help="any batch size (default: 1)")
    export.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    export.set_defaults(fn=_export)
    info = sub.add_parser("info", help="versions, device, and which backends are built and available (and why not)")
    info.set_defaults(fn=_info)
    bench = sub.add_parser("bench", help="benchmark every available backend against transformers' PyTorch code")
    bench.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    bench.add_argument(
        "--dtype",
        action="append",
        choices=PRECISIONS,
        help="repeatable; default float32 and, on a CPU with native bf16 (AVX512_BF16), bfloat16; all three on CUDA; "
        "auto: this CPU's best (mmgdino info)",
    )
    bench.add_argument("--quick", action="store_true", help="batch 1 only, 2 repeats")
    bench.add_argument("--repeats", type=int, default=None)
    bench.add_argument("--peer", action="append", metavar="MODULE:FUNCTION",
                       help="add an importable peer MSDA implementation (value, spatial_shapes, level_start_index, "
                       "sampling_locations, attention_weights) to the comparison")  # fmt: skip
    bench.add_argument("--ops-only", action="store_true", help="skip the end-to-end model comparison")
    bench.add_argument("--plot", action="store_true", help="also draw a PNG chart of the speedups (needs matplotlib)")
    bench.add_argument("--model-only", action="store_true", help="only the end-to-end model comparison")
    bench.add_argument("--out", default="mmgdino-bench-results",
                       help="write JSON and a markdown table (and the --plot PNG) at this path, suffixes replaced "
                       "(default: ./mmgdino-bench-results.*)")  # fmt: skip
    bench.add_argument("--onnx", nargs="?", const="320x480", default=None, metavar="HxW",
                       help="instead: mmgdino's ONNX export vs transformers' exporter in ONNX Runtime and OpenVINO "
                       "(export and run times, agreement), at HxW (default 320x480)")  # fmt: skip
    bench.set_defaults(fn=_bench)
    __import__("mmgdino.training.command", fromlist=["register"]).register(sub)
    return parser


def main(argv=None):
    args = _parser().parse_args(argv)
    debug = args.debug or os.environ.get("MMGDINO_DEBUG", "") not in ("", "0")
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        print(f"mmgdino {args.command}: interrupted; rerun the same command to finish", file=sys.stderr)
        return 130
    except MmgdinoError as exc:
        if debug:  # the traceback too, and still the documented exit code
            traceback.print_exc()
        print(f"mmgdino {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
