"""The metrics of an evaluation run, computed by faster-coco-eval: COCO's (pycocotools' keys: `AP` at 100
detections per image, ...; and mmdetection's variants: `mmdet_AP50` ... at 1,000, `mmdet_AR300`, ...) and LVIS's
Fixed AP (no per-image cap, at most 10,000 detections per category over the set), with `APr`, `APc`, `APf`."""

import numpy as np

from ..errors import UsageError

FIXED_AP_PER_CATEGORY = 10_000
COCO_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100")
MMDET_KEYS = ("mmdet_AP", "mmdet_AP50", "mmdet_AP75", "mmdet_APs", "mmdet_APm", "mmdet_APl", "mmdet_AR100",
              "mmdet_AR300", "mmdet_AR1000")  # fmt: skip
LVIS_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")


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


def _precision(summarize, cap):
    """AP over IoU 0.5:0.95, at 0.5, at 0.75, and per object size, each at `cap` detections."""
    sizes = {f"AP{size[0]}": summarize(1, areaRng=size, maxDets=cap) for size in ("small", "medium", "large")}
    return {"AP": summarize(1, maxDets=cap), "AP50": summarize(1, iouThr=0.5, maxDets=cap),
            "AP75": summarize(1, iouThr=0.75, maxDets=cap), **sizes}  # fmt: skip


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
        metrics = {**_precision(s, top), **{f"AP{g}": s(1, maxDets=top, freq_group_idx=i) for i, g in enumerate("rcf")}}
    else:
        # mmdetection's CocoMetric sets maxDets (100, 300, 1000): AP at 100, the rest at 1000.
        mmdet = {f"mmdet_{key}": value for key, value in _precision(s, 1000).items()}
        mmdet["mmdet_AP"] = s(1, maxDets=100)
        metrics = {**_precision(s, 100), **{f"AR{n}": s(0, maxDets=n) for n in (1, 10, 100)}, **mmdet,
                   **{f"mmdet_AR{n}": s(0, maxDets=n) for n in (100, 300, 1000)}}  # fmt: skip
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
