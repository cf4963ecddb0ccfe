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

from .errors import UsageError
from .images import IMAGE_SUFFIXES, load_image
from .modeling import MMGroundingDinoForObjectDetection, ModelLoadError
from .modeling.features import PromptFeatures

__all__ = ["DEFAULT_MODEL", "IMAGE_SUFFIXES", "Detector", "check_thresholds", "clean_labels", "load_image"]

DEFAULT_MODEL = "openmmlab-community/mm_grounding_dino_tiny_o365v1_goldg_v3det"
DEFAULT_CHUNK_MERGE_IOU = 0.8


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


def _iou(box, boxes):
    x0 = np.maximum(box[0], boxes[:, 0])
    y0 = np.maximum(box[1], boxes[:, 1])
    x1 = np.minimum(box[2], boxes[:, 2])
    y1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-12)


def merge_chunks(detections, chunk_of, iou):
    """Greedy, best first: drop a detection that overlaps a kept one of another prompt chunk by IoU >= iou."""
    order = sorted(range(len(detections)), key=lambda k: -detections[k]["score"])
    kept, kept_boxes, kept_chunks = [], np.zeros((0, 4)), np.zeros((0,), dtype=int)
    for k in order:
        box = np.asarray(detections[k]["box"], dtype=np.float64)
        if len(kept):
            other = kept_chunks != chunk_of[k]
            if other.any() and (_iou(box, kept_boxes[other]) >= iou).any():
                continue
        kept.append(detections[k])
        kept_boxes = np.vstack([kept_boxes, box[None]])
        kept_chunks = np.append(kept_chunks, chunk_of[k])
    return kept


def check_device_and_dtype(device, dtype):
    """The torch.device to run on; UsageError when it or the dtype cannot run here (checked before any load)."""
    try:
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except (RuntimeError, TypeError) as exc:
        raise UsageError(f"device {device!r} is not a torch device ({exc})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        why = "this torch is a CPU build" if torch.version.cuda is None else "no CUDA device is visible"
        raise UsageError(f"device {str(device)!r} is not available: {why}")
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"device {str(device)!r}: mmgdino runs on cpu or cuda")
    dtype = dtype or torch.float32
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise UsageError(f"dtype {dtype} is not supported; use float32, float16 or bfloat16")
    try:  # the operations a forward needs most: a matrix product and a convolution
        x = torch.ones(1, 1, 4, 4, dtype=dtype, device=device)
        torch.nn.functional.conv2d(x, x[:, :, :2, :2]) @ torch.ones(3, 2, dtype=dtype, device=device)
    except RuntimeError as exc:
        raise UsageError(f"dtype {str(dtype).replace('torch.', '')} does not run on {device}: {exc}") from None
    return device, dtype


class Detector:
    """Open-vocabulary detection with mmgdino's model.

    Args:
        model: hub id or local directory of an MM Grounding DINO / LLMDet / Grounding DINO checkpoint, or an
            already built `mmgdino.MMGroundingDinoForObjectDetection` or transformers model.
        device, dtype: default CUDA if available, else CPU; float32 (bfloat16 is a good choice on GPUs).
        processor: a transformers processor; default `AutoProcessor.from_pretrained(model)`.

    Errors are `mmgdino.MmgdinoError` subclasses with one-line messages: `UsageError` (arguments),
    `ImageReadError` (one image), `ModelLoadError` (the model or processor).
    """

    def __init__(self, model=DEFAULT_MODEL, device=None, dtype=None, processor=None, runtime=None):
        device, dtype = check_device_and_dtype(device, dtype)
        self.onnx = None
        if str(model).endswith(".onnx") or runtime is not None:
            self._init_onnx(model, runtime or "onnxruntime", processor)
            self.device, self.dtype = torch.device("cpu"), torch.float32
            return
        if isinstance(model, MMGroundingDinoForObjectDetection):
            self.model = model.to(device=device, dtype=dtype).eval()
        elif isinstance(model, torch.nn.Module):
            self.model = MMGroundingDinoForObjectDetection.from_transformers(model).to(device=device, dtype=dtype)
        else:
            self.model = MMGroundingDinoForObjectDetection.from_pretrained(model, dtype=dtype, device=device)
        if processor is None:
            if isinstance(model, torch.nn.Module):
                raise UsageError("pass processor= when model is an already built model")
            processor = _load_processor(model)
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.device, self.dtype = device, dtype
        self.max_text_len = self.model.config.max_text_len
        self._prompt_cache = {}  # token ids -> encoded prompt
        self._chunk_cache = {}  # labels -> prompt_chunks(labels)

    def _init_onnx(self, path, runtime, processor):
        """An exported file (mmgdino export onnx) run by ONNX Runtime or OpenVINO; same prompts, same rules."""
        from transformers import AutoConfig

        from .export import OnnxModel, sidecar

        if not str(path).endswith(".onnx"):
            raise UsageError(f"--runtime {runtime} runs an exported .onnx file; got model {str(path)!r}")
        self.onnx = OnnxModel(path, runtime)
        self.model = None
        self.processor = processor or _load_processor(sidecar(path))
        self.tokenizer = self.processor.tokenizer
        self.max_text_len = AutoConfig.from_pretrained(sidecar(path)).max_text_len
        self._prompt_cache, self._chunk_cache = {}, {}

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
            if len(self._chunk_cache) > 4096:  # per-image vocabularies: bounded
                self._chunk_cache.pop(next(iter(self._chunk_cache)))
            self._chunk_cache[labels] = self.prompt_chunks(list(labels))
        return self._chunk_cache[labels]

    def _encoded_prompt(self, input_ids):
        key = tuple(input_ids)
        if key not in self._prompt_cache:
            ids = torch.tensor([input_ids], device=self.device)
            with torch.inference_mode():
                self._prompt_cache[key] = self.model.encode_prompt(ids, attention_mask=torch.ones_like(ids))
            if len(self._prompt_cache) > 64:
                self._prompt_cache.pop(next(iter(self._prompt_cache)))
        return self._prompt_cache[key]

    def _prompt_batch(self, prompts):
        """Encoded prompts (each cached) for a batch: one prompt for all images, or distinct ones padded to the
        longest. A padded token is masked out (text_keep False) and attends only to itself."""
        if all(p == prompts[0] for p in prompts):
            return self._encoded_prompt(prompts[0])
        return PromptFeatures.stack([self._encoded_prompt(p) for p in prompts])

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

    def _pixels(self, pil_images):
        """(pixel_values, pixel_mask) of a batch: the checkpoint processor's resize and padding, or for an exported
        file, resized to fit its fixed size and padded."""
        if self.onnx is not None:
            from .export import fit_inside

            image_processor = self.processor.image_processor
            values, mask = fit_inside(pil_images, self.onnx.image_size, image_processor.image_mean,
                                      image_processor.image_std)  # fmt: skip
            return torch.from_numpy(values), torch.from_numpy(mask)
        pixels = self.processor.image_processor(images=pil_images, return_tensors="pt")
        return pixels["pixel_values"], pixels["pixel_mask"]

    def _onnx_round(self, pixel_values, pixel_mask, members, prompts):
        """(logits, pred_boxes) of one prompt round from the exported file: prompts padded to the longest."""
        length = max(len(p) for p in prompts)
        ids = np.zeros((len(members), length), dtype=np.int64)
        mask = np.zeros((len(members), length), dtype=np.int64)
        for row, prompt in enumerate(prompts):
            ids[row, : len(prompt)] = prompt
            mask[row, : len(prompt)] = 1
        rows = [members] if self.onnx.meta["dynamic_batch"] else [[m] for m in members]
        parts = []
        for group in rows:
            index = [members.index(m) for m in group]
            parts.append(self.onnx(pixel_values[group].numpy(), pixel_mask[group].numpy(), ids[index], mask[index]))
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def _detect_batch(self, pil_images, vocabularies, threshold, text_threshold, chunk_merge_iou):
        pixel_values, pixel_mask = self._pixels(pil_images)
        chunks = [self._chunks_of(v) for v in vocabularies]
        found = [[] for _ in pil_images]
        chunk_of = [[] for _ in pil_images]
        with torch.inference_mode():
            if self.onnx is None:
                pixel_values = pixel_values.to(self.device, self.dtype)
                image_features = self.model.encode_image(pixel_values, pixel_mask.to(self.device))
            for round_ in range(max(len(c) for c in chunks)):
                members = [i for i, c in enumerate(chunks) if round_ < len(c)]
                prompts = [chunks[i][round_][1] for i in members]
                if self.onnx is not None:
                    logits, pred_boxes = self._onnx_round(pixel_values, pixel_mask, members, prompts)
                else:
                    features = image_features
                    if len(members) < len(pil_images):
                        features = image_features.select(members)
                    out = self.model(prompt_features=self._prompt_batch(prompts), image_features=features)
                    logits, pred_boxes = out.logits, out.pred_boxes
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
        size = torch.tensor([image.width, image.height] * 2, device=boxes.device, dtype=boxes.dtype)
        cx, cy, w, h = boxes[keep].unbind(-1)
        corners = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1) * size
        corners = torch.minimum(corners.clamp_min(0), size)
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


def _load_processor(model_id):
    from transformers import AutoProcessor

    from .modeling.hub import cache_first

    try:
        return cache_first(AutoProcessor.from_pretrained, str(model_id))
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(
            f"no processor (tokenizer + image processor) for {str(model_id)!r}: "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from exc
