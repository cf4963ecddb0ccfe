"""Box conversions shared by detection and evaluation: the model's normalized (cx, cy, w, h) boxes in pixels, and
overlap."""

import numpy as np
import torch


def corners_in_pixels(boxes, width, height):
    """(N, 4) normalized (cx, cy, w, h) -> (N, 4) float [x0, y0, x1, y1] in pixels of a width x height image,
    clipped to it."""
    size = torch.tensor([width, height, width, height], device=boxes.device, dtype=boxes.dtype)
    cx, cy, w, h = boxes.unbind(-1)
    corners = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1) * size
    return torch.minimum(corners.clamp_min(0), size)


def iou(box, boxes):
    """IoU of one [x0, y0, x1, y1] box with each row of (N, 4) boxes (numpy)."""
    x0 = np.maximum(box[0], boxes[:, 0])
    y0 = np.maximum(box[1], boxes[:, 1])
    x1 = np.minimum(box[2], boxes[:, 2])
    y1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-12)
