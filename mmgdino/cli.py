"""The `mmgdino` command: `detect` (images -> JSON Lines or COCO),
`eval` (COCO / LVIS accuracy with mmdetection's protocol), `export onnx` (a file ONNX Runtime and OpenVINO run),
`bench` (speed and agreement against transformers) and
`info` (versions, backends)."""

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from .errors import MmgdinoError, UsageError
from .images import IMAGE_SUFFIXES


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
        f"{'' if not _extension.build_record else ' against torch ' + _extension.build_record['torch']}"
    )
    if _extension.has_cpu_kernels:
        isa = getattr(_extension._C, "cpu_isa", "baseline")
        print(
            f"  CPU build    {isa} (the best of avx512_bf16, avx512, avx2, baseline this CPU runs; "
            "MMGDINO_CPU_ISA caps it)"
        )
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


# ------------------------------------------------------------------ detect


def _image_paths(inputs):
    """(path, root) for every image: files as given, folders searched recursively; a missing input is an error."""
    paths = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths += [(p, path) for p in sorted(path.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
        elif path.exists():
            paths.append((path, path.parent))
        else:
            raise UsageError(f"{item}: no such file or directory")
    return paths


def _read_manifest(path):
    """[(image path, [labels])] from a JSON Lines file ({"image": ..., "labels": [...]}) or a CSV file with an
    `image` and a `labels` column (labels separated by ";"). Relative image paths are relative to the manifest."""
    import csv

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--manifest {path}: no such file")
    rows = []
    try:
        if path.suffix.lower() == ".parquet":
            try:
                import pyarrow.parquet as pq
            except ImportError:
                raise UsageError("a Parquet --manifest needs pyarrow: pip install pyarrow") from None
            table = pq.read_table(path, columns=["image", "labels"]).to_pylist()
            rows = [(row["image"], list(row["labels"])) for row in table]
        elif path.suffix.lower() == ".csv":
            with path.open(newline="") as f:
                for row in csv.DictReader(f):
                    rows.append((row["image"], [x for x in row["labels"].split(";") if x.strip()]))
        else:
            for line in path.read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    rows.append((row["image"], row["labels"]))
    except (KeyError, ValueError, TypeError) as exc:
        raise UsageError(f"--manifest {path}: each entry needs an image and its labels ({exc})") from None
    if not rows:
        raise UsageError(f"--manifest {path}: no entries")
    # URIs (s3://..., with --ray) stay as they are; relative paths are relative to the manifest.
    return [(image if "://" in image else path.parent / image, labels) for image, labels in rows]


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


def _draw(image, detections, target):
    from PIL import ImageDraw

    canvas = image.copy()
    draw = ImageDraw.Draw(canvas)
    for det in detections:
        draw.rectangle(det["box"], outline=(255, 64, 0), width=max(2, round(min(image.size) / 300)))
        draw.text((det["box"][0] + 3, det["box"][1] + 2), f"{det['label']} {det['score']:.2f}", fill=(255, 64, 0))
    target.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(target)


def _drawing_paths(keys, draw_dir):
    """Each image's drawing mirrors its path below the common folder of all inputs: no two collide."""
    if not keys:
        return {}
    root = Path(os.path.commonpath([str(Path(k).parent) for k in keys]))
    return {k: Path(draw_dir) / Path(k).relative_to(root) for k in keys}


def _check_detect_args(args):
    """Every usage mistake, before the model loads: one line each."""
    from .detector import check_device_and_dtype, check_thresholds, clean_labels

    if (args.labels is None) == (args.manifest is None):
        raise UsageError("give --labels (one vocabulary for every image) or --manifest (one per image), not both")
    if args.manifest is None and not args.images:
        raise UsageError("no images given")
    if args.manifest is not None and args.images:
        raise UsageError("with --manifest the images come from the manifest; give no image arguments")
    check_thresholds(args.threshold, args.text_threshold, args.chunk_merge_iou)
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    check_device_and_dtype(args.device, getattr(torch, args.dtype) if args.dtype else None)
    if args.out:
        _check_writable_file("--out", args.out)
    elif args.format == "coco":
        raise UsageError("--format coco needs --out FILE.json")
    if args.draw:
        if args.ray:
            raise UsageError("--draw is not supported with --ray (draw from the records afterwards)")
        _check_draw_folder(args.draw)
    if args.runtime and not str(args.model or "").endswith(".onnx"):
        raise UsageError(f"--runtime {args.runtime} runs an exported --model FILE.onnx (mmgdino export onnx)")
    if str(args.model or "").endswith(".onnx") and args.ray:
        raise UsageError("--ray runs checkpoints, not exported .onnx files")
    if args.ray:
        from .distributed import RayOptions, check_options

        check_options(RayOptions(args.ray, args.workers, args.gpus_per_worker, args.cpus_per_worker, args.batch_size))
    elif args.workers is not None or args.gpus_per_worker is not None or args.cpus_per_worker is not None:
        raise UsageError("--workers, --gpus-per-worker and --cpus-per-worker need --ray")
    if args.manifest is not None:
        entries = [(path, clean_labels(labels, where=f"labels of {path}")[0]) for path, labels in
                   _read_manifest(args.manifest)]  # fmt: skip
        for path, _ in entries:
            if isinstance(path, str) and not args.ray:
                raise UsageError(f"--manifest: {path}: URIs need --ray")
            if not isinstance(path, str) and not path.is_file():
                raise UsageError(f"--manifest: {path}: no such file")
        return [(p, None if isinstance(p, str) else p.parent) for p, _ in entries], [labels for _, labels in entries]
    labels, dropped = clean_labels(args.labels, where="--labels")
    if dropped:
        print(f"mmgdino detect: note: duplicate labels ignored: {', '.join(dropped)}", file=sys.stderr)
    if args.ray:
        from .distributed import list_images

        found = list_images(args.images, IMAGE_SUFFIXES)
        if not found:
            raise UsageError("no images found (looked for " + ", ".join(sorted(IMAGE_SUFFIXES)) + ")")
        return [(key, None) for key, _ in found], [labels] * len(found)
    images = _image_paths(args.images)
    if not images:
        raise UsageError("no images found (looked for " + ", ".join(sorted(IMAGE_SUFFIXES)) + ")")
    return images, [labels] * len(images)


def _progress_bar(total):
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc="detect", unit="img", disable=total < 2, file=sys.stderr)


class _StdoutRecords:
    """Records as JSON Lines on stdout (detect without --out), one image at a time."""

    def add(self, key, version, records):
        sys.stdout.write("".join(json.dumps(r) + "\n" for r in records))
        sys.stdout.flush()


_STDOUT = _StdoutRecords()


def _finish_detect(args, store, vocabularies, failures, total):
    from .results import write_coco

    if store is not None and args.format == "coco":
        categories = list(dict.fromkeys(label for v in vocabularies for label in v))
        out, ids = write_coco(store.all_records(), args.out, categories)
        print(f"mmgdino detect: wrote {out} and {ids}", file=sys.stderr)
    if failures:
        print(f"mmgdino detect: {failures} of {total} images failed (named above)", file=sys.stderr)
    return 1 if failures else 0


def _detect_on_ray(args, model, todo, vocabulary_of, versions, store, vocabularies):
    from .distributed import DetectJob, RayOptions, run

    job = DetectJob(model, device=args.device, dtype=args.dtype, threshold=args.threshold, batch_size=args.batch_size,
                    text_threshold=args.text_threshold, chunk_merge_iou=args.chunk_merge_iou)  # fmt: skip
    options = RayOptions(args.ray, args.workers, args.gpus_per_worker, args.cpus_per_worker, args.batch_size)
    try:
        summary = run(job, [(key, vocabulary_of[key]) for key in todo], store or _STDOUT, versions, options,
                      log=lambda m: print(f"mmgdino detect: {m}", file=sys.stderr, flush=True))  # fmt: skip
    finally:
        if store is not None:
            store.close()
    for _key, error in summary["failures"]:
        print(f"mmgdino detect: {error}", file=sys.stderr)
    rates = ", ".join(f"{name} {rate} img/s" for name, rate in summary["workers"].items())
    counts = f"{summary['images']} images, {summary['records']} records, {len(summary['failures'])} failed"
    print(f"mmgdino detect: ray: {counts}, {summary['seconds']} s; per worker: {rates}", file=sys.stderr)
    return _finish_detect(args, store, vocabularies, len(summary["failures"]), len(todo))


def _detect(args):
    from .detector import DEFAULT_CHUNK_MERGE_IOU, DEFAULT_MODEL, Detector
    from .distributed import detection_records
    from .images import load_image
    from .results import ResultStore, image_version

    if args.chunk_merge_iou is None and not args.no_chunk_merge:
        args.chunk_merge_iou = DEFAULT_CHUNK_MERGE_IOU
    images, vocabularies = _check_detect_args(args)
    keys = [path if isinstance(path, str) else str(path.resolve()) for path, _ in images]
    vocabulary_of = dict(zip(keys, vocabularies))  # the same image given twice (relative and absolute) is one
    if args.ray:
        from .distributed import version_of

        versions = {key: version_of(key) for key in vocabulary_of}
    else:
        versions = {key: image_version(key) for key in vocabulary_of}
    model = args.model or DEFAULT_MODEL
    model_key = str(Path(model).resolve()) if Path(model).exists() else model
    settings = {"model": model_key, "runtime": args.runtime, "dtype": args.dtype or "float32",
                "threshold": args.threshold, "text_threshold": args.text_threshold,
                "chunk_merge_iou": args.chunk_merge_iou,
                "labels": list(vocabularies[0]) if args.manifest is None
                else f"manifest {Path(args.manifest).resolve()}"}  # fmt: skip
    store = None
    if args.out:
        records_path = Path(args.out) if args.format == "jsonl" else Path(str(args.out) + ".records.jsonl")
        store = ResultStore(records_path, settings)
        todo = store.open(versions)
    else:
        todo = list(versions)
    drawings = _drawing_paths(list(versions), args.draw) if args.draw else {}
    if not todo:
        print(f"mmgdino detect: all {len(versions)} images are already in {args.out}", file=sys.stderr)
    elif args.ray:
        return _detect_on_ray(args, model, todo, vocabulary_of, versions, store, vocabularies)
    else:
        detector = Detector(model, device=args.device, dtype=getattr(torch, args.dtype) if args.dtype else None,
                            runtime=args.runtime)  # fmt: skip
    failures = 0
    progress = _progress_bar(len(todo)) if todo else None
    try:
        for start in range(0, len(todo), args.batch_size):
            batch, pil = [], []
            for key in todo[start : start + args.batch_size]:
                try:
                    pil.append(load_image(key))
                    batch.append(key)
                except MmgdinoError as exc:
                    failures += 1
                    print(f"mmgdino detect: {exc}", file=sys.stderr)
            if batch:
                results = detector.detect(pil, [vocabulary_of[k] for k in batch], threshold=args.threshold,
                                          text_threshold=args.text_threshold, batch_size=args.batch_size,
                                          chunk_merge_iou=args.chunk_merge_iou)  # fmt: skip
                for key, image, detections in zip(batch, pil, results):
                    if args.draw:  # the drawing first: a record never lacks its drawing
                        _draw(image, detections, drawings[key])
                    (store or _STDOUT).add(key, versions[key], detection_records(key, detections))
            if progress is not None:
                progress.update(len(todo[start : start + args.batch_size]))
    finally:
        if progress is not None:
            progress.close()
        if store is not None:
            store.close()
    return _finish_detect(args, store, vocabularies, failures, len(todo))


EXIT_CODES = """exit codes:
  0    done
  1    some images failed (each is named on its own line); the others were written
  2    usage or setup error (bad option, missing file, model not found), reported before any work
  130  interrupted (Ctrl-C); what was written is consistent: rerun the same command to finish

Set MMGDINO_DEBUG=1 (or pass --debug) to see the traceback behind an error."""


def _export(args):
    from .detector import DEFAULT_MODEL
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
    from mmgdino import evaluation

    ray = None
    if args.ray:
        from .distributed import RayOptions

        ray = RayOptions(args.ray, args.workers, args.gpus_per_worker, args.cpus_per_worker, args.batch_size)
    elif args.workers is not None or args.gpus_per_worker is not None or args.cpus_per_worker is not None:
        raise UsageError("--workers, --gpus-per-worker and --cpus-per-worker need --ray")

    report = evaluation.evaluate(
        args.annotations,
        args.images,
        args.out,
        model=args.model,
        protocol=args.protocol,
        chunk_size="protocol" if args.chunk_size is None else args.chunk_size,
        max_dets=args.max_dets,
        batch_size=args.batch_size,
        device=args.device,
        dtype=getattr(torch, args.dtype) if args.dtype else None,
        limit=args.limit,
        compare=args.compare,
        log=lambda m: print(m, file=sys.stderr, flush=True),
        ray=ray,
    )
    print(Path(args.out, "summary.md").read_text().split("## Per category")[0].rstrip())
    for failure in report["failed_images"]:
        print(f"mmgdino eval: {failure['image']}: {failure['error']}", file=sys.stderr)
    return 1 if report["failed_images"] else 0


def _add_ray_options(parser):
    parser.add_argument("--ray", nargs="?", const="local", default=None, metavar="auto|local|ADDRESS",
                        help="run on Ray Data: 'local' (the default when given alone) starts a private "
                        "one-machine cluster on 127.0.0.1; 'auto' or host:port joins one (ray[data])")  # fmt: skip
    parser.add_argument("--workers", type=int, default=None, help="model actors (default: one per GPU, or CPUs - 1)")
    parser.add_argument("--gpus-per-worker", type=float, default=None, help="GPUs per actor (default 1 on GPUs)")
    parser.add_argument("--cpus-per-worker", type=float, default=None, help="CPUs per actor (default 1 on CPUs)")


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
    detect.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None)
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
    evaluate = sub.add_parser("eval", help="COCO / LVIS accuracy with mmdetection's MM Grounding DINO protocol",
                              epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    evaluate.add_argument("--annotations", required=True, help="COCO-format annotation file (COCO, LVIS, yours)")
    evaluate.add_argument("--images", required=True, help="the folder its file_name entries are relative to")
    evaluate.add_argument("--out", required=True, help="folder for predictions (resumable), detections.json, "
                          "metrics.json, per_category.json and summary.md")  # fmt: skip
    evaluate.add_argument("--model", default=None, help="hub id or local directory (default: as detect)")
    evaluate.add_argument(
        "--protocol",
        choices=["coco", "lvis"],
        default="coco",
        help="coco: all classes in one prompt, COCO AP; lvis: 40 classes per prompt, Fixed AP",
    )
    evaluate.add_argument("--chunk-size", type=int, default=None,
                          help="classes per prompt (default: the protocol's: coco all, lvis 40)")  # fmt: skip
    evaluate.add_argument("--max-dets", type=int, default=None, help="detections kept per image and prompt (300)")
    evaluate.add_argument(
        "--batch-size",
        type=int,
        default=1,
        help="images per forward (default 1, the protocol; >1 pads images, recorded as such)",
    )
    evaluate.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    evaluate.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None)
    evaluate.add_argument("--limit", type=int, default=None, help="only the first N images (recorded as a subset)")
    evaluate.add_argument(
        "--compare",
        choices=["transformers"],
        default=None,
        help="also run transformers' model and post-processing; AP and time side by side",
    )
    _add_ray_options(evaluate)
    evaluate.set_defaults(fn=_eval)
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
        choices=["float32", "float16", "bfloat16"],
        help="repeatable; default float32 and, on a CPU with native bf16 (AVX512_BF16), bfloat16; all three on CUDA",
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
        if debug:
            raise
        print(f"mmgdino {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
