"""Training augmentations of mmdetection's Grounding DINO fine-tune configs, on PIL images and pixel boxes:

1. RandomFlip(prob=0.5): horizontal;
2. RandomChoice between (a) RandomChoiceResize to one of `scales` (shorter side 480, 512, ..., 800, longer side
   at most 1333, keeping the aspect ratio) and (b) RandomChoiceResize to (400|500|600, 4200), RandomCrop of an
   absolute size drawn from `crop_size` (384..600 pixels per side; crops without boxes allowed), then (a);
3. FilterAnnotations: boxes narrower or lower than `min_box` pixels after all that are dropped.

The resize rule is mmdetection's keep-ratio rescale (`mmgdino.evaluation.test_size`, rounded sides), resampled
bilinearly as `mmgdino eval` resamples. Every random draw comes from the generator the caller passes, so an
image's augmentation is a function of (seed, epoch, index): a resumed run draws what an uninterrupted one drew.
PIL does the pixel work (torchvision is not in this project's environment; albumentations would add OpenCV for
four operations whose box arithmetic is a few lines each).
"""

from dataclasses import dataclass

import numpy as np

from ..evaluation import test_size

MMDET_SCALES = tuple(range(480, 801, 32))  # shorter sides
MMDET_MAX_SIZE = 1333
MMDET_CROP_SCALES = (400, 500, 600)
MMDET_CROP_MAX_SIZE = 4200
MMDET_CROP_SIZE = (384, 600)


@dataclass(frozen=True)
class Augmentation:
    scales: tuple = MMDET_SCALES
    max_size: int = MMDET_MAX_SIZE
    flip: float = 0.5
    crop: float = 0.5  # probability of branch (b); 0 turns cropping off
    crop_scales: tuple = MMDET_CROP_SCALES
    crop_max_size: int = MMDET_CROP_MAX_SIZE
    crop_size: tuple = MMDET_CROP_SIZE  # (smallest, largest) side of the crop, in pixels
    min_box: float = 0.01

    @classmethod
    def scaled(cls, shorter, longer, **changes):
        """The fine-tune recipe for smaller inputs: mmdetection's sizes scaled so that its largest scale (800,
        1333) becomes (shorter, longer); e.g. scaled(128, 213) for quick runs on a CPU."""
        factor = shorter / max(MMDET_SCALES)
        scales = tuple(sorted({max(8, round(s * factor)) for s in MMDET_SCALES}))
        fields = dict(scales=scales, max_size=longer,
                      crop_scales=tuple(max(8, round(s * factor)) for s in MMDET_CROP_SCALES),
                      crop_max_size=max(longer, round(MMDET_CROP_MAX_SIZE * factor)),
                      crop_size=tuple(max(8, round(s * factor)) for s in MMDET_CROP_SIZE))  # fmt: skip
        fields.update(changes)
        return cls(**fields)


def flip(image, boxes):
    from PIL import Image

    flipped = boxes.copy()
    flipped[:, 0] = image.width - boxes[:, 0] - boxes[:, 2]
    return image.transpose(Image.FLIP_LEFT_RIGHT), flipped


def resize(image, boxes, shorter, longer):
    """Keep-ratio resize to fit (shorter, longer); boxes scaled with the image."""
    from PIL import Image

    width, height = test_size(image.width, image.height, scale=(shorter, longer))
    if (width, height) == image.size:
        return image, boxes
    scale = np.array([width / image.width, height / image.height] * 2)
    return image.resize((width, height), Image.BILINEAR), boxes * scale


def crop(image, boxes, labels, size_range, rng):
    """mmdetection's RandomCrop(crop_type="absolute_range", allow_negative_crop=True): a crop of height and width
    drawn from size_range (at most the image's), at a random place; boxes clipped to it, emptied ones dropped."""
    low, high = size_range
    crop_h = int(rng.integers(min(low, image.height), min(high, image.height) + 1))
    crop_w = int(rng.integers(min(low, image.width), min(high, image.width) + 1))
    top = int(rng.integers(0, image.height - crop_h + 1))
    left = int(rng.integers(0, image.width - crop_w + 1))
    x0 = np.clip(boxes[:, 0] - left, 0, crop_w)
    y0 = np.clip(boxes[:, 1] - top, 0, crop_h)
    x1 = np.clip(boxes[:, 0] + boxes[:, 2] - left, 0, crop_w)
    y1 = np.clip(boxes[:, 1] + boxes[:, 3] - top, 0, crop_h)
    keep = (x1 > x0) & (y1 > y0)
    cropped = np.stack([x0, y0, x1 - x0, y1 - y0], -1)[keep]
    return image.crop((left, top, left + crop_w, top + crop_h)), cropped, labels[keep]


def augment(image, boxes, labels, settings, rng):
    """(image, boxes (N, 4) x, y, w, h pixels, labels (N,)) -> the same after the recipe (module docstring)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if rng.random() < settings.flip:
        image, boxes = flip(image, boxes)
    if rng.random() < settings.crop:
        shorter = settings.crop_scales[int(rng.integers(len(settings.crop_scales)))]
        image, boxes = resize(image, boxes, shorter, settings.crop_max_size)
        image, boxes, labels = crop(image, boxes, labels, settings.crop_size, rng)
    shorter = settings.scales[int(rng.integers(len(settings.scales)))]
    image, boxes = resize(image, boxes, shorter, settings.max_size)
    keep = (boxes[:, 2] >= settings.min_box) & (boxes[:, 3] >= settings.min_box)
    return image, boxes[keep], labels[keep]
