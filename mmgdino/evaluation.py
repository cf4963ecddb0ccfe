"""`mmgdino eval`: a COCO-format dataset through the model with mmdetection's MM Grounding DINO test protocol, so
that the model card's COCO and LVIS numbers can be checked like for like.

The protocol, each rule stated once (mmdetection 3.x: `GroundingDINO.predict`, `GroundingDINOHead.
_predict_by_feat_single`, `convert_grounding_to_cls_scores`, the `mm_grounding_dino` COCO/LVIS configs):
- class names are cleaned (text in parentheses dropped, "_" -> " ") and joined into prompts "a. b. c. ";
  COCO: all classes in one prompt; LVIS: chunks of `chunk_size` (40) classes, each chunk run through the encoder
  and decoder with the image features computed once;
- a class's score for a query is the mean of the sigmoid token probabilities over that class name's tokens;
- per prompt chunk, the top `max_dets` (300) (query, class) pairs are kept, and the chunks' detections are
  concatenated (so LVIS keeps up to 300 x 31 per image);
- images are resized as mmdetection's `FixScaleResize((800, 1333), keep_ratio=True)` does (rounding, where
  transformers' processor truncates: 640x480 -> 1067x800, not 1066x800), with PIL bilinear resampling, and
  normalized with the checkpoint processor's mean and std; one image per forward (a padded batch changes the
  backbone's features; `batch_size` > 1 is allowed and recorded as such);
- boxes are the predicted normalized boxes scaled to the original image, clipped to it;
- COCO metrics: pycocotools' keys (`AP` at 100 detections per image, ...) and mmdetection's variants
  (`mmdet_AP50` ... at 1,000, `mmdet_AR300`, ...); LVIS: Fixed AP (no per-image cap, at most 10,000 detections
  per category over the set), with `APr`, `APc`, `APf`. Computed by faster-coco-eval.
"""

import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import UsageError

TEST_SCALE = (800, 1333)  # shorter side, longer side limit
FIXED_AP_PER_CATEGORY = 10_000
PROTOCOLS = {
    # chunk_size None: every class in one prompt
    "coco": {"chunk_size": None, "max_dets": 300},
    "lvis": {"chunk_size": 40, "max_dets": 300},
}
COCO_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100")
MMDET_KEYS = ("mmdet_AP", "mmdet_AP50", "mmdet_AP75", "mmdet_APs", "mmdet_APm", "mmdet_APl", "mmdet_AR100",
              "mmdet_AR300", "mmdet_AR1000")  # fmt: skip
LVIS_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")


# ------------------------------------------------------------------ prompts


def clean_class_name(name):
    """mmdetection's clean_label_name: "bow_(weapon)" -> "bow " (its trailing space is harmless: no token)."""
    name = re.sub(r"\(.*\)", "", name)
    name = re.sub(r"_", " ", name)
    return re.sub(r"  ", " ", name)


@dataclass
class ClassPrompt:
    """One prompt: its classes (indices into the dataset's category list), token ids ([CLS] ... [SEP]) and each
    class's token span [start, end)."""

    classes: list
    input_ids: list
    spans: list = field(default_factory=list)


def class_prompts(names, tokenizer, chunk_size, max_text_len):
    """Prompts "name1. name2. ... " of `chunk_size` classes each (None: all), tokenized as mmdetection tokenizes
    the caption: word pieces do not cross the ". " separators, so each name's tokens are its own tokenization."""
    if chunk_size is not None and chunk_size < 1:
        raise UsageError(f"--chunk-size must be at least 1, got {chunk_size}")
    cleaned = [clean_class_name(n) for n in names]
    size = chunk_size or max(len(cleaned), 1)
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    dot_id = tokenizer.convert_tokens_to_ids(".")
    prompts = []
    for start in range(0, len(cleaned), size):
        ids, spans = [cls_id], []
        for name in cleaned[start : start + size]:
            tokens = tokenizer(name, add_special_tokens=False)["input_ids"]
            if not tokens:
                raise UsageError(f"class name {name!r} has no tokens")
            spans.append((len(ids), len(ids) + len(tokens)))
            ids += tokens + [dot_id]
        ids.append(sep_id)
        if max_text_len is not None and len(ids) > max_text_len:
            raise UsageError(
                f"classes {start + 1}-{start + len(spans)} make a {len(ids)}-token prompt, longer than the model's "
                f"{max_text_len}; use a smaller --chunk-size"
            )
        prompts.append(ClassPrompt(list(range(start, start + len(spans))), ids, spans))
    return prompts


# ------------------------------------------------------------------ images


def test_size(width, height, scale=TEST_SCALE):
    """mmcv's rescale_size with keep_ratio: the largest factor that keeps the shorter side <= 800 and the longer
    <= 1333, each side rounded to nearest (transformers' processor truncates instead)."""
    short, long = scale
    factor = min(long / max(width, height), short / min(width, height))
    return int(width * factor + 0.5), int(height * factor + 0.5)


def preprocess(images, mean, std, scale=TEST_SCALE):
    """PIL images -> (pixel_values (B, 3, H, W) float32, pixel_mask (B, H, W) int64), each resized by test_size
    with PIL bilinear resampling, normalized, and padded with zeros to the batch's largest size."""
    from PIL import Image

    resized = [im.resize(test_size(*im.size, scale=scale), Image.BILINEAR) for im in images]
    height = max(im.height for im in resized)
    width = max(im.width for im in resized)
    pixel_values = torch.zeros(len(images), 3, height, width)
    pixel_mask = torch.zeros(len(images), height, width, dtype=torch.long)
    mean = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    std = torch.tensor(std, dtype=torch.float32)[:, None, None]
    for i, im in enumerate(resized):
        x = torch.from_numpy(np.asarray(im, dtype=np.float32).copy()).permute(2, 0, 1) / 255.0
        pixel_values[i, :, : im.height, : im.width] = (x - mean) / std
        pixel_mask[i, : im.height, : im.width] = 1
    return pixel_values, pixel_mask


# ------------------------------------------------------------------ scores -> detections


def class_scores(token_probs, spans):
    """(Q, T) token probabilities -> (Q, C) class scores: the mean over each class's token span."""
    return torch.stack([token_probs[:, a:b].mean(-1) for a, b in spans], -1)


def top_detections(scores, boxes, max_dets, width, height):
    """The top `max_dets` (query, class) pairs of (Q, C) scores. boxes: (Q, 4) normalized (cx, cy, w, h).
    Returns (class indices, scores, boxes as [x, y, w, h] in pixels of a width x height image, clipped)."""
    flat = scores.float().reshape(-1)
    values, index = flat.topk(min(max_dets, flat.numel()))
    classes = index % scores.shape[1]
    chosen = boxes.float()[index // scores.shape[1]]
    cx, cy, w, h = chosen.unbind(-1)
    size = torch.tensor([width, height, width, height], dtype=torch.float32, device=chosen.device)
    corners = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1) * size
    corners = torch.minimum(corners.clamp_min(0), size)
    xywh = torch.cat([corners[:, :2], corners[:, 2:] - corners[:, :2]], -1)
    return classes.tolist(), values.tolist(), xywh.tolist()


# ------------------------------------------------------------------ dataset


@dataclass
class Dataset:
    annotations: dict
    images: list  # [{"id", "file_name", "width", "height", "path"}]
    categories: list  # [{"id", "name", ...}] in annotation order

    @property
    def names(self):
        return [c["name"] for c in self.categories]


def load_dataset(annotations_path, images_dir, protocol, limit=None):
    """A COCO/LVIS annotation file and its images folder; UsageError naming what is wrong."""
    annotations_path, images_dir = Path(annotations_path), Path(images_dir)
    if not annotations_path.is_file():
        raise UsageError(f"--annotations {annotations_path}: no such file")
    if not images_dir.is_dir():
        raise UsageError(f"--images {images_dir}: no such folder")
    try:
        data = json.loads(annotations_path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"--annotations {annotations_path}: not a JSON file ({exc})") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise UsageError(f"--annotations {annotations_path}: no {key!r} list (not a COCO-format file)")
    if not data["categories"]:
        raise UsageError(f"--annotations {annotations_path}: no categories")
    if protocol == "lvis":
        missing = [c.get("name") for c in data["categories"] if c.get("frequency") not in ("r", "c", "f")]
        if missing:
            raise UsageError(
                f"--protocol lvis needs each category's frequency ('r', 'c' or 'f'); {len(missing)} lack it "
                f"(e.g. {missing[0]!r}); use --protocol coco for this file"
            )
    images = []
    for entry in sorted(data["images"], key=lambda e: e["id"]):
        # LVIS files name images by coco_url; COCO files by file_name.
        name = entry.get("file_name") or "/".join(str(entry.get("coco_url", "")).split("/")[-2:])
        path = images_dir / name
        if not path.is_file() and "coco_url" in entry:
            path = images_dir / str(entry["coco_url"]).split("/")[-1]
        images.append({**entry, "path": path})
    if limit is not None:
        if limit < 1:
            raise UsageError(f"--limit must be at least 1, got {limit}")
        images = images[:limit]
    missing = [str(im["path"]) for im in images if not im["path"].is_file()]
    if missing:
        raise UsageError(f"{len(missing)} of {len(images)} images are not in {images_dir} (first: {missing[0]})")
    return Dataset(data, images, list(data["categories"]))


# ------------------------------------------------------------------ metrics


def fixed_ap_selection(detections, per_category=FIXED_AP_PER_CATEGORY):
    """Fixed AP's cap: the top `per_category` detections of each category over the whole set, no per-image
    cap (Dave et al. 2021, as mmdetection's LVISFixedAPMetric)."""
    by_category = {}
    for d in detections:
        by_category.setdefault(d["category_id"], []).append(d)
    kept = []
    for category in sorted(by_category):
        kept += sorted(by_category[category], key=lambda d: -d["score"])[:per_category]
    return kept


def _quiet(*args, **kwargs):
    pass


def compute_metrics(dataset, detections, protocol):
    """{"metrics": {...}, "per_category": [{"id", "name", "AP"}]} from faster-coco-eval."""
    try:
        from faster_coco_eval import COCO, COCOeval_faster
    except ImportError:
        raise UsageError("metrics need faster-coco-eval: pip install faster-coco-eval (or mmgdino[eval])") from None
    gt = COCO(dataset.annotations)
    gt.print_function = _quiet
    image_ids = [im["id"] for im in dataset.images]
    if protocol == "lvis":
        detections = fixed_ap_selection(detections)
    if not detections:
        metrics = {k: 0.0 for k in (LVIS_KEYS if protocol == "lvis" else COCO_KEYS + MMDET_KEYS)}
        return {"metrics": metrics, "per_category": []}
    dt = gt.loadRes([dict(d) for d in detections])
    if protocol == "lvis":
        ev = COCOeval_faster(gt, dt, "bbox", lvis_style=True, print_function=_quiet)
        # Fixed AP: no per-image cap, i.e. a cap no image reaches (the evaluator sizes its buffers by it).
        per_image = {}
        for d in detections:
            per_image[d["image_id"]] = per_image.get(d["image_id"], 0) + 1
        ev.params.maxDets = [max(per_image.values())]
    else:
        ev = COCOeval_faster(gt, dt, "bbox", print_function=_quiet)
        ev.params.maxDets = [1, 10, 100, 300, 1000]
    ev.params.imgIds = image_ids
    ev.evaluate()
    ev.accumulate()
    s = ev._summarize
    if protocol == "lvis":
        top = ev.params.maxDets[-1]
        metrics = {
            "AP": s(1, maxDets=top),
            "AP50": s(1, iouThr=0.5, maxDets=top),
            "AP75": s(1, iouThr=0.75, maxDets=top),
            "APs": s(1, areaRng="small", maxDets=top),
            "APm": s(1, areaRng="medium", maxDets=top),
            "APl": s(1, areaRng="large", maxDets=top),
            "APr": s(1, maxDets=top, freq_group_idx=0),
            "APc": s(1, maxDets=top, freq_group_idx=1),
            "APf": s(1, maxDets=top, freq_group_idx=2),
        }
    else:
        metrics = {
            "AP": s(1, maxDets=100),
            "AP50": s(1, iouThr=0.5, maxDets=100),
            "AP75": s(1, iouThr=0.75, maxDets=100),
            "APs": s(1, areaRng="small", maxDets=100),
            "APm": s(1, areaRng="medium", maxDets=100),
            "APl": s(1, areaRng="large", maxDets=100),
            "AR1": s(0, maxDets=1),
            "AR10": s(0, maxDets=10),
            "AR100": s(0, maxDets=100),
            # mmdetection's CocoMetric sets maxDets (100, 300, 1000): AP at 100, the rest at 1000.
            "mmdet_AP": s(1, maxDets=100),
            "mmdet_AP50": s(1, iouThr=0.5, maxDets=1000),
            "mmdet_AP75": s(1, iouThr=0.75, maxDets=1000),
            "mmdet_APs": s(1, areaRng="small", maxDets=1000),
            "mmdet_APm": s(1, areaRng="medium", maxDets=1000),
            "mmdet_APl": s(1, areaRng="large", maxDets=1000),
            "mmdet_AR100": s(0, maxDets=100),
            "mmdet_AR300": s(0, maxDets=300),
            "mmdet_AR1000": s(0, maxDets=1000),
        }
    metrics = {k: float(v) for k, v in metrics.items()}
    precision = ev.eval["precision"]  # (iou thresholds, recall points, categories, areas, max dets)
    at = ev.params.maxDets.index(100) if protocol == "coco" else -1  # per-category AP at AP's own cap
    per_category = []
    for k, category_id in enumerate(ev.params.catIds):
        p = precision[:, :, k, 0, at]
        p = p[p > -1]
        name = gt.cats[category_id]["name"]
        per_category.append({"id": int(category_id), "name": name, "AP": float(np.mean(p)) if p.size else None})
    return {"metrics": metrics, "per_category": per_category}


# ------------------------------------------------------------------ the run


def _settings(model, protocol, chunk_size, max_dets, batch_size, device, dtype, annotations, scale):
    """What determines the predictions; a rerun into the same folder must agree on all of it."""
    return {
        "model": str(model),
        "protocol": protocol,
        "chunk_size": chunk_size,
        "max_dets": max_dets,
        "batch_size": batch_size,
        "device": torch.device(device).type,
        "dtype": str(dtype).replace("torch.", ""),
        "annotations": str(Path(annotations).resolve()),
        "scale": list(scale),
    }


def _progress(total, desc, enabled):
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    import sys

    return tqdm(total=total, desc=desc, unit="img", disable=not enabled or total < 2, file=sys.stderr)


def detect_batch(detector, prompts, category_ids, max_dets, images, scale=TEST_SCALE):
    """The protocol on a batch of PIL images: per image, [(category id, score, [x, y, w, h])], each prompt
    chunk's top `max_dets` concatenated. The image features are computed once for all chunks."""
    mean = detector.processor.image_processor.image_mean
    std = detector.processor.image_processor.image_std
    model, device, dtype = detector.model, detector.device, detector.dtype
    pixel_values, pixel_mask = preprocess(images, mean, std, scale)
    per_image = [[] for _ in images]
    with torch.inference_mode():
        features = model.encode_image(pixel_values.to(device, dtype), pixel_mask.to(device))
        for prompt in prompts:
            out = model(prompt_features=detector._encoded_prompt(prompt.input_ids), image_features=features)
            probs = out.logits.float().sigmoid()
            for row, image in enumerate(images):
                scores = class_scores(probs[row], prompt.spans)
                classes, values, boxes = top_detections(
                    scores, out.pred_boxes[row], max_dets, image.width, image.height
                )
                per_image[row] += [(category_ids[prompt.classes[c]], v, b) for c, v, b in zip(classes, values, boxes)]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return per_image


def image_records(key, image_id, detections):
    """One image's records in the predictions cache (COCO results fields plus the image's key)."""
    return [{"image": key, "image_id": image_id, "category_id": c, "score": round(v, 6),
             "bbox": [round(x, 3) for x in b]} for c, v, b in detections]  # fmt: skip


@dataclass
class EvalJob:
    """The protocol on a batch, in this process or in a Ray actor: per image, its COCO-style records."""

    model: str
    names: list
    category_ids: list
    chunk_size: int
    max_dets: int
    device: str = None
    dtype: str = None
    scale: tuple = (800, 1333)
    fault_injection: dict = field(default=None, repr=False)

    def setup(self):
        import torch

        from . import evaluation
        from .detector import Detector

        self.detector = Detector(
            self.model, device=self.device, dtype=getattr(torch, self.dtype) if self.dtype else None
        )
        self.prompts = evaluation.class_prompts(self.names, self.detector.tokenizer, self.chunk_size,
                                                self.detector.model.config.max_text_len)  # fmt: skip
        self.batches = 0

    def __call__(self, keys, images, payloads):
        from .distributed import _maybe_die

        _maybe_die(self)
        found = detect_batch(self.detector, self.prompts, self.category_ids, self.max_dets, images, self.scale)
        return [image_records(key, payload["image_id"], detections)
                for key, payload, detections in zip(keys, payloads, found)]  # fmt: skip


def predict(detector, dataset, prompts, max_dets, batch_size, store, todo, progress=True, log=None,
            scale=TEST_SCALE):  # fmt: skip
    """Runs mmgdino's model over the images `todo` (keys of store), writing each image's detections as it
    finishes. Returns (images done, failures [(path, reason)], seconds in the model)."""
    from .errors import ImageReadError
    from .images import load_image
    from .results import image_version

    by_key = {str(im["path"]): im for im in dataset.images}
    category_ids = [c["id"] for c in dataset.categories]
    failures, seconds, done = [], 0.0, 0
    bar = _progress(len(todo), "eval", progress)
    for start in range(0, len(todo), batch_size):
        batch, loaded = [], []
        for key in todo[start : start + batch_size]:
            try:
                loaded.append(load_image(Path(key)))
                batch.append(by_key[key])
            except ImageReadError as exc:
                failures.append((key, str(exc)))
                if log:
                    log(f"skipped: {exc}")
        if batch:
            began = time.perf_counter()
            found = detect_batch(detector, prompts, category_ids, max_dets, loaded, scale)
            seconds += time.perf_counter() - began
            for entry, detections in zip(batch, found):
                key = str(entry["path"])
                store.add(key, image_version(key), image_records(key, entry["id"], detections))
                done += 1
        if bar is not None:
            bar.update(len(todo[start : start + batch_size]))
    if bar is not None:
        bar.close()
    return done, failures, seconds


def evaluate(annotations, images, out, model=None, protocol="coco", chunk_size="protocol", max_dets=None,
             batch_size=1, device=None, dtype=None, limit=None, compare=None, processor=None, progress=True,
             log=None, ray=None, scale=None):  # fmt: skip
    """Runs the protocol (module docstring) and writes into the folder `out`:
    predictions.jsonl (+ .progress: the per-image cache a rerun resumes from), detections.json (COCO results),
    metrics.json, per_category.json, summary.md. Returns the metrics.json content.

    chunk_size: classes per prompt ("protocol": the protocol's, None: all in one prompt); max_dets: detections
    kept per image and prompt chunk (default 300); limit: only the first N images (by id), recorded as a subset;
    compare: "transformers" also runs transformers' model and post-processing on the same images; ray: a
    mmgdino.distributed.RayOptions to run the images on a Ray cluster; scale: the test resize's (shorter side,
    longer side limit), mmdetection's (800, 1333) unless changed (recorded in the settings)."""
    from .detector import DEFAULT_MODEL, Detector, check_device_and_dtype
    from .results import ResultStore, _write_atomically, image_version

    if protocol not in PROTOCOLS:
        raise UsageError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    if compare not in (None, "transformers"):
        raise UsageError(f"--compare must be 'transformers', got {compare!r}")
    chunk_size = PROTOCOLS[protocol]["chunk_size"] if chunk_size == "protocol" else chunk_size
    scale = TEST_SCALE if scale is None else tuple(scale)
    max_dets = PROTOCOLS[protocol]["max_dets"] if max_dets is None else max_dets
    for name, value in (("--max-dets", max_dets), ("--batch-size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f"{name} must be a whole number >= 1, got {value!r}")
    dataset = load_dataset(annotations, images, protocol, limit)
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot create the folder ({exc.strerror or exc})") from None
    device, dtype = check_device_and_dtype(device, dtype)
    model = DEFAULT_MODEL if model is None else model
    settings = _settings(model, protocol, chunk_size, max_dets, batch_size, device, dtype, annotations, scale)
    store = ResultStore(out / "predictions.jsonl", settings)
    versions = {str(im["path"]): image_version(im["path"]) for im in dataset.images}
    todo = store.open(versions)
    log = log or (lambda message: None)
    log(f"{len(dataset.images)} images ({len(dataset.images) - len(todo)} already done), "
        f"{len(dataset.categories)} categories, protocol {protocol}")  # fmt: skip

    if ray is not None:
        from . import distributed

        if not isinstance(model, (str, Path)) or processor is not None:
            raise UsageError("with ray, give the model as a hub id or folder (each worker loads it)")
        ray.batch_size = batch_size
        job = EvalJob(str(model), dataset.names, [c["id"] for c in dataset.categories], chunk_size,
                                  max_dets, device=str(device), dtype=str(dtype).replace("torch.", ""),
                                  scale=tuple(scale))  # fmt: skip
        by_key = {str(im["path"]): im for im in dataset.images}
        try:
            summary = distributed.run(job, [(k, {"image_id": by_key[k]["id"]}) for k in todo], store, versions, ray,
                                      progress, log)  # fmt: skip
        finally:
            store.close()
        failures = summary["failures"]
        done = summary["images"] - len(failures)
        rates = [r for r in summary["workers"].values() if r]
        seconds = done / sum(rates) * len(rates) if rates else 0.0  # per-image model time, as one worker sees it
        prompt_count = math.ceil(len(dataset.names) / (chunk_size or len(dataset.names)))  # the actors build them
    else:
        detector = Detector(model, device=device, dtype=dtype, processor=processor)
        prompts = class_prompts(dataset.names, detector.tokenizer, chunk_size, detector.model.config.max_text_len)
        prompt_count = len(prompts)
        try:
            done, failures, seconds = predict(detector, dataset, prompts, max_dets, batch_size, store, todo, progress,
                                              log, scale)  # fmt: skip
        finally:
            store.close()

    wanted = set(versions)
    records = [r for r in store.all_records() if r.get("image") in wanted]
    detections = [{k: r[k] for k in ("image_id", "category_id", "bbox", "score")} for r in records]
    _write_atomically(out / "detections.json", json.dumps(detections) + "\n")
    result = compute_metrics(dataset, detections, protocol)
    report = {
        "protocol": protocol,
        "ap_kind": "Fixed AP (no per-image cap, top 10,000 per category)" if protocol == "lvis" else "COCO AP",
        "metrics": result["metrics"],
        "images": len(dataset.images),
        "subset": limit is not None,
        "limit": limit,
        "failed_images": [{"image": k, "error": e} for k, e in failures],
        "detections": len(detections),
        "prompts": prompt_count,
        "settings": settings,
        "batched": batch_size > 1,
        "seconds_per_image": round(seconds / done, 4) if done else None,
        "images_timed": done,
        "ray": None if ray is None else {"workers": summary["workers"], "seconds": summary["seconds"]},
    }
    if compare == "transformers":
        report["transformers"] = compare_transformers(dataset, model, chunk_size, device, dtype, out, progress, log)
    _write_atomically(out / "metrics.json", json.dumps(report, indent=1) + "\n")
    _write_atomically(out / "per_category.json", json.dumps(result["per_category"], indent=1) + "\n")
    _write_atomically(out / "summary.md", summary_markdown(report, result["per_category"]))
    return report


def _format(value):
    return "-" if value is None else f"{100 * value:.1f}"


def summary_markdown(report, per_category):
    keys = list(report["metrics"])
    lines = [
        f"# mmgdino eval: {report['protocol']} ({report['ap_kind']})",
        "",
        f"{report['images']} images{' (a SUBSET: --limit ' + str(report['limit']) + ')' if report['subset'] else ''}"
        f", {report['detections']} detections, {report['prompts']} prompt(s), model `{report['settings']['model']}`,"
        f" {report['settings']['device']} {report['settings']['dtype']}, batch size {report['settings']['batch_size']}"
        f"{' (images padded to shared sizes: not the reference protocol)' if report['batched'] else ''}.",
        "",
        "| | " + " | ".join(keys) + " | s/image |",
        "|---|" + "---:|" * (len(keys) + 1),
        "| mmgdino | "
        + " | ".join(_format(report["metrics"][k]) for k in keys)
        + f" | {report['seconds_per_image'] if report['seconds_per_image'] is not None else '-'} |",
    ]
    if "transformers" in report:
        t = report["transformers"]
        lines.append(
            "| transformers | "
            + " | ".join(_format(t["metrics"].get(k)) for k in keys)
            + f" | {t['seconds_per_image']} |"
        )
        lines += ["", t["how"]]
    if report["failed_images"]:
        lines += ["", f"{len(report['failed_images'])} images could not be read (no detections counted for them)."]
    lines += ["", "## Per category (AP)", "", "| id | category | AP |", "|---:|---|---:|"]
    lines += [f"| {c['id']} | {c['name']} | {_format(c['AP'])} |" for c in per_category]
    return "\n".join(lines) + "\n"


TRANSFORMERS_HOW = (
    "transformers: its AutoModelForZeroShotObjectDetection and processor (its own resize), each prompt chunk's "
    "class names as `text`, `post_process_grounded_object_detection(threshold=0.0, text_threshold=0.25)`: every "
    "query kept with its best token probability as score, its label the decoded phrase; a detection counts for "
    "the class whose cleaned name equals that phrase (others, e.g. phrases spanning two names, are dropped), "
    "as a user of that API would score it."
)


def compare_transformers(dataset, model, chunk_size, device, dtype, out, progress=True, log=None):
    """The same images through transformers' own model and grounded post-processing; its metrics and time."""
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

    from .images import load_image
    from .modeling.hub import cache_first
    from .results import _write_atomically

    if isinstance(model, torch.nn.Module):
        raise UsageError("--compare transformers needs a model id or folder, not a built model")
    processor = cache_first(AutoProcessor.from_pretrained, str(model))
    hf = cache_first(AutoModelForZeroShotObjectDetection.from_pretrained, str(model), dtype=dtype)
    hf = hf.to(device).eval()
    cleaned = [clean_class_name(n).strip().lower() for n in dataset.names]
    size = chunk_size or len(cleaned)
    chunks = [list(range(s, min(s + size, len(cleaned)))) for s in range(0, len(cleaned), size)]
    category_of = {}
    for index, name in enumerate(cleaned):
        category_of.setdefault(name, dataset.categories[index]["id"])
    detections, seconds = [], 0.0
    bar = _progress(len(dataset.images), "transformers", progress)
    for entry in dataset.images:
        image = load_image(entry["path"])
        began = time.perf_counter()
        with torch.inference_mode():
            for chunk in chunks:
                inputs = processor(images=image, text=[[cleaned[i] for i in chunk]], return_tensors="pt").to(device)
                if "pixel_values" in inputs:
                    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
                outputs = hf(**inputs)
                result = processor.post_process_grounded_object_detection(
                    outputs, inputs["input_ids"], threshold=0.0, text_threshold=0.25,
                    target_sizes=[(image.height, image.width)],
                )[0]  # fmt: skip
                for score, box, label in zip(result["scores"].tolist(), result["boxes"].tolist(),
                                             result["text_labels"]):  # fmt: skip
                    category = category_of.get(label.strip().lower())
                    if category is None:
                        continue
                    x0, y0, x1, y1 = box
                    xywh = [round(x0, 3), round(y0, 3), round(x1 - x0, 3), round(y1 - y0, 3)]
                    detections.append(
                        {"image_id": entry["id"], "category_id": category, "score": round(score, 6), "bbox": xywh}
                    )
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds += time.perf_counter() - began
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    folder = Path(out) / "transformers"
    folder.mkdir(exist_ok=True)
    _write_atomically(folder / "detections.json", json.dumps(detections) + "\n")
    protocol = "lvis" if "frequency" in dataset.categories[0] else "coco"
    metrics = compute_metrics(dataset, detections, protocol)["metrics"]
    if log:
        log(f"transformers: AP {metrics['AP']:.3f}, {seconds / max(len(dataset.images), 1):.3f} s/image")
    return {
        "metrics": metrics,
        "seconds_per_image": round(seconds / max(len(dataset.images), 1), 4),
        "detections": len(detections),
        "how": TRANSFORMERS_HOW,
    }
