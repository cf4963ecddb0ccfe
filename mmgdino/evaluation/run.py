"""`mmgdino eval`: a COCO-format dataset through the model with the protocol (`protocol.py`), resumable, in this
process or on Ray, then the metrics (`metrics.py`) and the files people read (`report.py`)."""

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import distributed, loop
from ..compiled import worth_compiling
from ..errors import UsageError
from ..loading import DEFAULT_MODEL, check_precision, dtype_name, weights_dtype
from ..quantization import CALIBRATION_IMAGES
from ..results import ResultStore, write_atomically
from ..runners import runner_for
from ..sources import version_of
from .dataset import load_dataset
from .metrics import compute_metrics
from .protocol import PROTOCOLS, TEST_SCALE, class_prompts, detect_batch, image_records
from .report import summary_markdown
from .transformers_baseline import compare_transformers


def settings_of(model, protocol, chunk_size, max_dets, batch_size, device, dtype, annotations, scale):
    """What determines the predictions; a rerun into the same folder must agree on all of it."""
    return {
        "model": str(model),
        "protocol": protocol,
        "chunk_size": chunk_size,
        "max_dets": max_dets,
        "batch_size": batch_size,
        "device": torch.device(device).type,
        "dtype": dtype_name(dtype),
        "annotations": str(Path(annotations).resolve()),
        "scale": list(scale),
    }


@dataclass
class EvalJob:
    """The protocol on a batch, in this process or in a Ray actor: per image, its COCO-style records (a `loop`
    job). `model` is a hub id or folder (or, in this process only, a built model with `processor`)."""

    model: object
    names: list
    category_ids: list
    chunk_size: int
    max_dets: int
    device: str = None
    dtype: str = None
    compile: bool = False
    calibration: list = None  # int8: images whose activations set its ranges
    scale: tuple = TEST_SCALE
    processor: object = field(default=None, repr=False)
    fault_injection: dict = field(default=None, repr=False)  # tests only: see loop.inject_fault

    def setup(self):
        self.runner = runner_for(self.model, self.device, self.dtype, self.processor, compile=self.compile,
                                 calibration=self.calibration)  # fmt: skip
        self.prompts = class_prompts(self.names, self.runner.tokenizer, self.chunk_size, self.runner.max_text_len)

    def __call__(self, keys, images, payloads):
        loop.inject_fault(self)
        found = detect_batch(self.runner, self.prompts, self.category_ids, self.max_dets, images, self.scale)
        return [image_records(key, payload["image_id"], detections)
                for key, payload, detections in zip(keys, payloads, found)]  # fmt: skip


def _checked(protocol, compare, chunk_size, max_dets, batch_size, model, processor, ray):
    """(chunk_size, max_dets) after the protocol's defaults; UsageError for anything else out of range."""
    if protocol not in PROTOCOLS:
        raise UsageError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    if compare not in (None, "transformers"):
        raise UsageError(f"--compare must be 'transformers', got {compare!r}")
    chunk_size = PROTOCOLS[protocol]["chunk_size"] if chunk_size == "protocol" else chunk_size
    max_dets = PROTOCOLS[protocol]["max_dets"] if max_dets is None else max_dets
    for name, value in (("--max-dets", max_dets), ("--batch-size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f"{name} must be a whole number >= 1, got {value!r}")
    if str(model).endswith(".onnx"):
        raise UsageError("eval runs checkpoints (a hub id or folder), not exported .onnx files")
    if ray is not None and (not isinstance(model, (str, Path)) or processor is not None):
        raise UsageError("with ray, give the model as a hub id or folder (each worker loads it)")
    return chunk_size, max_dets


def evaluate(annotations, images, out, model=None, protocol="coco", chunk_size="protocol", max_dets=None,
             batch_size=1, device=None, dtype=None, limit=None, compare=None, processor=None, progress=True,
             log=None, ray=None, scale=None, threads=None, compile=False, calibration=None):  # fmt: skip
    """Runs the protocol and writes into the folder `out`: predictions.jsonl (+ .progress: the per-image cache a
    rerun resumes from), detections.json (COCO results), metrics.json, per_category.json, summary.md. Returns the
    metrics.json content.

    chunk_size: classes per prompt ("protocol": the protocol's, None: all in one prompt); max_dets: detections
    kept per image and prompt chunk (default 300); limit: only the first N images (by id), recorded as a subset;
    compare: "transformers" also runs transformers' model and post-processing on the same images; ray: a
    mmgdino.distributed.RayOptions to run the images on a Ray cluster; scale: the test resize's (shorter side,
    longer side limit), mmdetection's (800, 1333) unless changed (recorded in the settings); threads: intra-op
    threads of every process that runs the model (default: this process's)."""
    model = DEFAULT_MODEL if model is None else model
    chunk_size, max_dets = _checked(protocol, compare, chunk_size, max_dets, batch_size, model, processor, ray)
    scale = TEST_SCALE if scale is None else tuple(scale)
    dataset = load_dataset(annotations, images, protocol, limit)
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot create the folder ({exc.strerror or exc})") from None
    device, dtype = check_precision(device, dtype)
    if calibration is not None and dtype != "int8":
        raise UsageError("--calibration sets int8's ranges: it needs --dtype int8")
    settings = settings_of(model, protocol, chunk_size, max_dets, batch_size, device, dtype, annotations, scale)
    store = ResultStore(out / "predictions.jsonl", settings)
    versions = {str(im["path"]): version_of(im["path"]) for im in dataset.images}
    todo = store.open(versions)
    log = log or (lambda message: None)
    log(f"{len(dataset.images)} images ({len(dataset.images) - len(todo)} already done), "
        f"{len(dataset.categories)} categories, protocol {protocol}")  # fmt: skip

    job = EvalJob(model, dataset.names, [c["id"] for c in dataset.categories], chunk_size, max_dets,
                  device=str(device), dtype=dtype, scale=scale, processor=processor,
                  compile=worth_compiling(compile, device, len(dataset.images), dtype),
                  calibration=[str(im["path"]) for im in dataset.images[: calibration or CALIBRATION_IMAGES]]
                  if dtype == "int8" else None)  # fmt: skip
    image_ids = {str(im["path"]): im["id"] for im in dataset.images}
    items = [(key, {"image_id": image_ids[key]}) for key in todo]
    threads = threads or loop.default_threads()
    try:
        if ray is not None:
            ray.batch_size = batch_size
            summary = distributed.run(job, items, store, versions, ray, threads=threads, progress=progress, log=log)
            rates = [r for r in summary.workers.values() if r]
            done = summary.images - len(summary.failures)
            seconds = done / sum(rates) * len(rates) if rates else 0.0  # per-image model time, as one worker sees it
        else:
            summary = loop.run_images(job, items, store, versions, batch_size=batch_size, threads=threads,
                                      progress=progress, desc="eval", log=log)  # fmt: skip
            done, seconds = summary.images - len(summary.failures), summary.model_seconds
    finally:
        store.close()

    records = [r for r in store.all_records() if r.get("image") in versions]
    detections = [{k: r[k] for k in ("image_id", "category_id", "bbox", "score")} for r in records]
    write_atomically(out / "detections.json", json.dumps(detections) + "\n")
    result = compute_metrics(dataset, detections, protocol)
    report = {
        "protocol": protocol,
        "ap_kind": "Fixed AP (no per-image cap, top 10,000 per category)" if protocol == "lvis" else "COCO AP",
        "metrics": result["metrics"],
        "images": len(dataset.images),
        "subset": limit is not None,
        "limit": limit,
        "failed_images": [{"image": k, "error": e} for k, e in summary.failures],
        "detections": len(detections),
        "prompts": math.ceil(len(dataset.names) / (chunk_size or len(dataset.names))),
        "settings": settings,
        "batched": batch_size > 1,
        "seconds_per_image": round(seconds / done, 4) if done else None,
        "images_timed": done,
        "ray": None if ray is None else {"workers": summary.workers, "seconds": summary.seconds},
    }
    if compare == "transformers":
        report["transformers"] = compare_transformers(
            dataset, model, chunk_size, device, weights_dtype(dtype), out, progress, log
        )
    write_atomically(out / "metrics.json", json.dumps(report, indent=1) + "\n")
    write_atomically(out / "per_category.json", json.dumps(result["per_category"], indent=1) + "\n")
    write_atomically(out / "summary.md", summary_markdown(report, result["per_category"]))
    return report
