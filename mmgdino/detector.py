"""`mmgdino.Detector`: images + labels -> per image, a list of {label, labels, score, box} in pixels.

Prompts are built from the labels ("a cat. a remote control."); a vocabulary too long for one prompt
(max_text_len tokens, 256 in released checkpoints) is split into chunks, each image batch is encoded once and
reused across the chunks, and each distinct prompt is encoded once and reused across images and calls. Each image
may have its own vocabulary; images with different prompts still share a batch (the prompts padded).

The rules, each stated once:
- a box is kept when its best token probability (over every label token of its prompt) is >= `threshold`;
- its `score` is that probability, its `label` the label holding that token;
- its `labels` are the labels with a token probability >= `text_threshold` (prompt order): the phrase
  transformers' grounded post-processing would report, in label form (may be empty);
- `box` is [x0, y0, x1, y1] in pixels of the upright image, clipped to it;
- across prompt chunks of one image, a box overlapping a better-scored box of another chunk by IoU >=
  `chunk_merge_iou` is the same object found again and is dropped (None keeps every chunk's boxes); within one
  prompt nothing is merged, as in transformers.
"""

import math
import warnings

import numpy as np
import torch

from .boxes import corners_in_pixels
from .boxes import iou as box_iou
from .errors import UsageError
from .images import load_image
from .loading import DEFAULT_MODEL
from .runners import runner_for

__all__ = ["DEFAULT_CHUNK_MERGE_IOU", "DEFAULT_MODEL", "Detector", "check_thresholds", "clean_labels"]

DEFAULT_CHUNK_MERGE_IOU = 0.8
PROMPT_CHUNK_CACHE_SIZE = 4096  # vocabularies whose prompt chunks are kept (per-image vocabularies: bounded)


def clean_labels(labels, where="labels"):
    """Stripped labels without duplicates (first kept), as a tuple, and the duplicates dropped. UsageError for an
    empty list or a label with no text (blank, or only dots)."""
    if isinstance(labels, str):
        labels = [labels]
    try:
        labels = list(labels)
    except TypeError:
        raise UsageError(f"{where} must be a list of strings, got {type(labels).__name__}") from None
    if not labels:
        raise UsageError(f"{where} is empty: name at least one thing to detect")
    cleaned, dropped = [], []
    for label in labels:
        if not isinstance(label, str):
            raise UsageError(f"{where}: {label!r} is not a string")
        text = label.strip()
        if not text.strip(". ").strip():
            raise UsageError(f"{where}: label {label!r} has no text")
        (dropped if text in cleaned else cleaned).append(text)
    return tuple(cleaned), dropped


def check_thresholds(threshold, text_threshold, chunk_merge_iou=None):
    """Each a finite number in [0, 1]; chunk_merge_iou may also be None (no merge)."""
    checked = {"threshold": threshold, "text_threshold": text_threshold}
    if chunk_merge_iou is not None:
        checked["chunk_merge_iou"] = chunk_merge_iou
    for name, value in checked.items():
        if not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 <= value <= 1:
            raise UsageError(f"{name} must be a number in [0, 1], got {value!r}")


def merge_chunks(detections, chunk_of, iou):
    """Greedy, best first: drop a detection that overlaps a kept one of another prompt chunk by IoU >= iou."""
    order = sorted(range(len(detections)), key=lambda k: -detections[k]["score"])
    kept, kept_boxes, kept_chunks = [], np.zeros((0, 4)), np.zeros((0,), dtype=int)
    for k in order:
        box = np.asarray(detections[k]["box"], dtype=np.float64)
        if len(kept):
            other = kept_chunks != chunk_of[k]
            if other.any() and (box_iou(box, kept_boxes[other]) >= iou).any():
                continue
        kept.append(detections[k])
        kept_boxes = np.vstack([kept_boxes, box[None]])
        kept_chunks = np.append(kept_chunks, chunk_of[k])
    return kept


class Detector:
    """Open-vocabulary detection with mmgdino's model.

    Args:
        model: hub id or local directory of an MM Grounding DINO / LLMDet / Grounding DINO checkpoint, or an
            already built `mmgdino.MMGroundingDinoForObjectDetection` or transformers model.
        device, dtype: default CUDA if available, else CPU; float32. dtype may be a torch dtype or its name,
            "auto" (this CPU's fastest precision that keeps agreement: bfloat16 with native bf16, else float32;
            `mmgdino.precision`) or "int8" (CPU: int8 matrix products, calibrated on `calibration`; the rest of
            the model at auto's precision, `mmgdino.quantization`).
        processor: a transformers processor; default `AutoProcessor.from_pretrained(model)`.
        compile: run the model's stages compiled by Inductor with frozen weights (`mmgdino.compiled`; the compile
            is cached on disk, so it is paid once per machine and model).
        calibration: int8 only: images (paths, PIL images, arrays) whose activations set the int8 ranges; default
            the first images detected.

    Errors are `mmgdino.MmgdinoError` subclasses with one-line messages: `UsageError` (arguments),
    `ImageReadError` (one image), `ModelLoadError` (the model or processor).
    """

    def __init__(self, model=DEFAULT_MODEL, device=None, dtype=None, processor=None, runtime=None, compile=False,
                 calibration=None):  # fmt: skip
        self.runner = runner_for(model, device, dtype, processor, runtime, compile, calibration)
        self.model = getattr(self.runner, "model", None)  # mmgdino's model; None for an exported file
        self.processor, self.tokenizer = self.runner.processor, self.runner.tokenizer
        self.device, self.dtype = self.runner.device, self.runner.dtype
        self.max_text_len = self.runner.max_text_len
        self._chunk_cache = {}  # labels -> prompt_chunks(labels)

    # ------------------------------------------------------------------ prompts

    def _label_tokens(self, label):
        ids = self.tokenizer(label.strip().rstrip("."), add_special_tokens=False)["input_ids"]
        if not ids:
            raise UsageError(f"label {label!r} has no tokens")
        return ids

    def prompt_chunks(self, labels):
        """Split labels into prompts "l1. l2. ..." of at most max_text_len tokens. Returns a list of
        (label indices, input_ids list, [(start, end) token span of each label])."""
        limit = self.max_text_len
        cls_id, sep_id = self.tokenizer.cls_token_id, self.tokenizer.sep_token_id
        dot_id = self.tokenizer.convert_tokens_to_ids(".")
        chunks, current = [], None
        for index, label in enumerate(labels):
            tokens = self._label_tokens(label)
            if len(tokens) + 3 > limit:
                raise UsageError(f"label {label!r} alone is longer than the model's {limit}-token prompt")
            if current is None or len(current[1]) + len(tokens) + 2 > limit:
                current = ([], [cls_id], [])
                chunks.append(current)
            start = len(current[1])
            current[0].append(index)
            current[1].extend(tokens + [dot_id])
            current[2].append((start, start + len(tokens)))
        for _, ids, _ in chunks:
            ids.append(sep_id)
        return chunks

    def _chunks_of(self, labels):
        if labels not in self._chunk_cache:
            if len(self._chunk_cache) > PROMPT_CHUNK_CACHE_SIZE:
                self._chunk_cache.pop(next(iter(self._chunk_cache)))
            self._chunk_cache[labels] = self.prompt_chunks(list(labels))
        return self._chunk_cache[labels]

    # ------------------------------------------------------------------ detection

    def detect(self, images, labels, threshold=0.3, text_threshold=0.25, batch_size=4,
               chunk_merge_iou=DEFAULT_CHUNK_MERGE_IOU):  # fmt: skip
        """images: one image or any iterable of them (paths, PIL images, arrays, tensors; any sizes).
        labels: one list of strings for every image, or one list per image (same length as images).
        Returns, per image, detections [{"label", "labels", "score", "box"}] best first (see the module's rules).
        """
        check_thresholds(threshold, text_threshold, chunk_merge_iou)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise UsageError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
        from PIL import Image

        single = isinstance(images, (str, Image.Image, np.ndarray, torch.Tensor)) or hasattr(images, "__fspath__")
        images = [images] if single else list(images)
        vocabularies = self._vocabularies(labels, len(images))
        results = []
        for start in range(0, len(images), batch_size):
            pil = [load_image(im) for im in images[start : start + batch_size]]
            results += self._detect_batch(pil, vocabularies[start : start + batch_size], threshold, text_threshold,
                                          chunk_merge_iou)  # fmt: skip
        return results[0] if single else results

    def _vocabularies(self, labels, count):
        if isinstance(labels, str):
            labels = [labels]
        labels = list(labels) if labels is not None else []
        per_image = bool(labels) and all(not isinstance(x, str) for x in labels)
        if not per_image:
            cleaned, dropped = clean_labels(labels)
            if dropped:
                warnings.warn(f"duplicate labels ignored: {', '.join(dropped)}", stacklevel=3)
            return [cleaned] * count
        if len(labels) != count:
            raise UsageError(f"labels: {len(labels)} vocabularies for {count} images; give one list per image")
        return [clean_labels(v, where=f"labels of image {i}")[0] for i, v in enumerate(labels)]

    def _detect_batch(self, pil_images, vocabularies, threshold, text_threshold, chunk_merge_iou):
        chunks = [self._chunks_of(v) for v in vocabularies]
        found = [[] for _ in pil_images]
        chunk_of = [[] for _ in pil_images]
        with torch.inference_mode():
            images = self.runner.encode_images(*self.runner.pixels(pil_images))
            for round_ in range(max(len(c) for c in chunks)):
                members = [i for i, c in enumerate(chunks) if round_ < len(c)]
                prompts = [chunks[i][round_][1] for i in members]
                logits, pred_boxes = self.runner.predict(images, members, prompts)
                probs = logits.float().sigmoid()  # (B, Q, max_text_len), 0 outside the prompt's tokens
                for row, i in enumerate(members):
                    label_indices, _, spans = chunks[i][round_]
                    per_label = torch.stack([probs[row, :, a:b].amax(-1) for a, b in spans], -1)  # (Q, labels)
                    detections = self._detections(per_label, pred_boxes[row].float(), pil_images[i],
                                                  [vocabularies[i][k] for k in label_indices], threshold,
                                                  text_threshold)  # fmt: skip
                    found[i] += detections
                    chunk_of[i] += [round_] * len(detections)
        results = []
        for i, detections in enumerate(found):
            if len(chunks[i]) > 1 and chunk_merge_iou is not None:
                detections = merge_chunks(detections, chunk_of[i], chunk_merge_iou)
            results.append(sorted(detections, key=lambda d: -d["score"]))
        return results

    @staticmethod
    def _detections(per_label, boxes, image, names, threshold, text_threshold):
        scores, best = per_label.max(-1)
        keep = scores >= threshold
        corners = corners_in_pixels(boxes[keep], image.width, image.height)
        phrase = per_label[keep] >= text_threshold
        return [
            {
                "label": names[b],
                "labels": [names[k] for k in np.flatnonzero(p)],
                "score": round(score, 4),
                "box": [round(v, 2) for v in box],
            }  # fmt: skip
            for score, b, p, box in zip(
                scores[keep].tolist(), best[keep].tolist(), phrase.cpu().numpy(), corners.tolist()
            )
        ]
