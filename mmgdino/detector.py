"""`mmgdino.Detector`: images + label list -> per image, a list of {label, score, box} in pixels.

Prompts are built from the labels ("a cat. a remote control."); a vocabulary too long for one prompt
(max_text_len tokens, 256 in released checkpoints) is split into chunks, each image batch is encoded once and
reused across the chunks, and each chunk's prompt is encoded once and reused across images.
"""

from pathlib import Path

import torch

from .modeling import MMGroundingDinoForObjectDetection, ModelLoadError

DEFAULT_MODEL = "openmmlab-community/mm_grounding_dino_tiny_o365v1_goldg_v3det"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}


class ImageReadError(ValueError):
    """An image could not be read; the message names it."""


def load_image(image):
    """A path, PIL image, HxWxC uint8 array or CxHxW tensor in [0, 1] -> an RGB PIL image."""
    from PIL import Image

    if isinstance(image, (str, Path)):
        try:
            with Image.open(image) as im:
                return im.convert("RGB")
        except (OSError, ValueError) as exc:
            raise ImageReadError(f"{image}: not a readable image ({type(exc).__name__})") from exc
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] not in (1, 3):
            raise ImageReadError(f"image tensor must be (3, H, W) or (1, H, W), got {tuple(image.shape)}")
        array = (image.detach().float().clamp(0, 1).expand(3, -1, -1) * 255).round().byte()
        return Image.fromarray(array.permute(1, 2, 0).cpu().numpy())
    try:
        import numpy as np

        array = np.asarray(image)
    except Exception as exc:
        raise ImageReadError(f"unsupported image type {type(image).__name__}") from exc
    if array.ndim == 2:
        array = array[..., None].repeat(3, -1)
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise ImageReadError(f"image array must be (H, W, 3), got {array.shape}")
    if array.dtype != np.uint8:
        array = (np.clip(array, 0, 1) * 255).round().astype(np.uint8)
    return Image.fromarray(array[..., :3])


class Detector:
    """Open-vocabulary detection with mmgdino's model.

    Args:
        model: hub id or local directory of an MM Grounding DINO / LLMDet / Grounding DINO checkpoint, or an
            already built `mmgdino.MMGroundingDinoForObjectDetection` or transformers model.
        device, dtype: default CUDA if available, else CPU; float32 (bfloat16 is a good choice on GPUs).
        processor: a transformers processor; default `AutoProcessor.from_pretrained(model)`.
    """

    def __init__(self, model=DEFAULT_MODEL, device=None, dtype=None, processor=None):
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = dtype or torch.float32
        if isinstance(model, MMGroundingDinoForObjectDetection):
            self.model = model.to(device=device, dtype=dtype).eval()
        elif isinstance(model, torch.nn.Module):
            self.model = MMGroundingDinoForObjectDetection.from_transformers(model).to(device=device, dtype=dtype)
        else:
            self.model = MMGroundingDinoForObjectDetection.from_pretrained(model, dtype=dtype, device=device)
        if processor is None:
            if isinstance(model, torch.nn.Module):
                raise ValueError("pass processor= when model is an already built model")
            processor = _load_processor(model)
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.device, self.dtype = device, dtype
        self._prompt_cache = {}  # token ids -> encoded prompt
        self._chunk_cache = {}  # labels -> prompt_chunks(labels): the CLI calls detect once per batch

    # ------------------------------------------------------------------ prompts

    def _label_tokens(self, label):
        ids = self.tokenizer(label.strip().rstrip("."), add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"label {label!r} has no tokens")
        return ids

    def prompt_chunks(self, labels):
        """Split labels into prompts "l1. l2. ..." of at most max_text_len tokens. Returns a list of
        (label indices, input_ids list, [(start, end) token span of each label])."""
        limit = self.model.config.max_text_len
        cls_id, sep_id = self.tokenizer.cls_token_id, self.tokenizer.sep_token_id
        dot_id = self.tokenizer.convert_tokens_to_ids(".")
        chunks, current = [], None
        for index, label in enumerate(labels):
            tokens = self._label_tokens(label)
            if len(tokens) + 3 > limit:
                raise ValueError(f"label {label!r} alone is longer than the model's {limit}-token prompt")
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

    def _encoded_prompt(self, input_ids):
        key = tuple(input_ids)
        if key not in self._prompt_cache:
            ids = torch.tensor([input_ids], device=self.device)
            with torch.inference_mode():
                self._prompt_cache[key] = self.model.encode_prompt(ids, attention_mask=torch.ones_like(ids))
            if len(self._prompt_cache) > 64:
                self._prompt_cache.pop(next(iter(self._prompt_cache)))
        return self._prompt_cache[key]

    # ------------------------------------------------------------------ detection

    def detect(self, images, labels, threshold=0.3, text_threshold=0.25, batch_size=4):
        """images: one image or a list (paths, PIL images, arrays, tensors; any sizes). labels: list of strings.
        Returns, per image, detections [{"label", "score", "box": [x0, y0, x1, y1] in pixels}] by score."""
        single = not isinstance(images, (list, tuple))
        images = [images] if single else list(images)
        if isinstance(labels, str):
            labels = [labels]
        if not labels:
            raise ValueError("labels is empty: name at least one thing to detect")
        key = tuple(labels)
        if key not in self._chunk_cache:
            self._chunk_cache = {key: self.prompt_chunks(list(labels))}  # one vocabulary at a time is the usual case
        chunks = self._chunk_cache[key]
        results = []
        for start in range(0, len(images), batch_size):
            pil = [load_image(im) for im in images[start : start + batch_size]]
            results += self._detect_batch(pil, labels, chunks, threshold, text_threshold)
        return results[0] if single else results

    def _detect_batch(self, pil_images, labels, chunks, threshold, text_threshold):
        pixels = self.processor.image_processor(images=pil_images, return_tensors="pt")
        pixel_values = pixels["pixel_values"].to(self.device, self.dtype)
        pixel_mask = pixels["pixel_mask"].to(self.device)
        found = [[] for _ in pil_images]
        with torch.inference_mode():
            image_features = self.model.encode_image(pixel_values, pixel_mask)
            for label_indices, input_ids, spans in chunks:
                out = self.model(prompt_features=self._encoded_prompt(input_ids), image_features=image_features)
                probs = out.logits.sigmoid()  # (B, Q, max_text_len), 0 outside the prompt's tokens
                per_label = torch.stack([probs[..., a:b].amax(-1) for a, b in spans], -1)  # (B, Q, labels)
                scores, best = per_label.max(-1)
                boxes = out.pred_boxes.float()
                for i, image in enumerate(pil_images):
                    keep = (scores[i] >= threshold) & (scores[i] >= text_threshold)
                    scale = torch.tensor([image.width, image.height] * 2, device=boxes.device)
                    cx, cy, w, h = boxes[i, keep].unbind(-1)
                    corners = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1) * scale
                    for score, label_pos, box in zip(
                        scores[i, keep].tolist(), best[i, keep].tolist(), corners.tolist()
                    ):
                        found[i].append(
                            {
                                "label": labels[label_indices[label_pos]],
                                "score": round(score, 4),
                                "box": [round(v, 2) for v in box],
                            }
                        )
        return [sorted(f, key=lambda d: -d["score"]) for f in found]


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
