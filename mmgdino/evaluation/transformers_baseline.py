"""`mmgdino eval --compare transformers`: the same images through transformers' own model and grounded
post-processing, scored by the same metrics, as a user of transformers' API would score it."""

import json
import time
from pathlib import Path

import torch

from ..errors import UsageError
from ..images import load_image
from ..loop import progress_bar
from ..modeling.hub import cache_first
from ..results import write_atomically
from .metrics import compute_metrics
from .protocol import clean_class_name

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
    bar = progress_bar(len(dataset.images), "transformers", progress)
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
    write_atomically(folder / "detections.json", json.dumps(detections) + "\n")
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
