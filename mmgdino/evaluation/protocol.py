"""The evaluation protocol of mmdetection's MM Grounding DINO tests, each rule stated once (mmdetection 3.x:
`GroundingDINO.predict`, `GroundingDINOHead._predict_by_feat_single`, `convert_grounding_to_cls_scores`, the
`mm_grounding_dino` COCO/LVIS configs):
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
- boxes are the predicted normalized boxes scaled to the original image, clipped to it.
The metrics (`metrics.py`) are COCO's and LVIS's Fixed AP.
"""

import re
from dataclasses import dataclass, field

import numpy as np
import torch

from ..boxes import corners_in_pixels
from ..errors import UsageError

TEST_SCALE = (800, 1333)  # shorter side, longer side limit
PROTOCOLS = {
    # chunk_size None: every class in one prompt
    "coco": {"chunk_size": None, "max_dets": 300},
    "lvis": {"chunk_size": 40, "max_dets": 300},
}


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
    corners = corners_in_pixels(boxes.float()[index // scores.shape[1]], width, height)
    xywh = torch.cat([corners[:, :2], corners[:, 2:] - corners[:, :2]], -1)
    return classes.tolist(), values.tolist(), xywh.tolist()


def detect_batch(runner, prompts, category_ids, max_dets, images, scale=TEST_SCALE):
    """The protocol on a batch of PIL images through a `runners.TorchRunner`: per image, [(category id, score,
    [x, y, w, h])], each prompt chunk's top `max_dets` concatenated. The image features are computed once for all
    chunks."""
    image_processor = runner.image_processor
    pixel_values, pixel_mask = preprocess(images, image_processor.image_mean, image_processor.image_std, scale)
    rows = list(range(len(images)))
    per_image = [[] for _ in images]
    with torch.inference_mode():
        features = runner.encode_images(pixel_values, pixel_mask)
        for prompt in prompts:
            logits, pred_boxes = runner.predict(features, rows, [prompt.input_ids] * len(rows))
            probs = logits.float().sigmoid()
            for row, image in enumerate(images):
                scores = class_scores(probs[row], prompt.spans)
                classes, values, boxes = top_detections(scores, pred_boxes[row], max_dets, image.width, image.height)
                per_image[row] += [(category_ids[prompt.classes[c]], v, b) for c, v, b in zip(classes, values, boxes)]
    if runner.device.type == "cuda":
        torch.cuda.synchronize(runner.device)
    return per_image


def image_records(key, image_id, detections):
    """One image's records in the predictions cache (COCO results fields plus the image's key)."""
    return [{"image": key, "image_id": image_id, "category_id": c, "score": round(v, 6),
             "bbox": [round(x, 3) for x in b]} for c, v, b in detections]  # fmt: skip
