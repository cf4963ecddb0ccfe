"""Training data: a COCO detection file (the format `mmgdino eval` reads) and its images folder, checked once at
the start so that nothing in it can stop an epoch halfway.

What the check does with each kind of bad data (one table; `ISSUES`), each case reported on one line:
- an image file that is missing, not an image, or of another size than its entry says: the image is skipped;
- an annotation of an unknown image or category id, with a box that is not four finite numbers, of zero or
  negative width or height, or wholly outside its image: the annotation is dropped;
- a box partly outside its image: clipped to it;
- a crowd box (`iscrowd` 1): dropped, as mmdetection ignores crowd regions in training (transformers' loss has no
  ignore regions);
- an image with no boxes left: kept as a negative (the loss then pushes every query to "nothing"), as
  mmdetection's fine-tune configs keep them (`filter_empty_gt=False`), or skipped with `empty_images="skip"`.
An image that passes the check but fails to decode later is reported when it happens and replaced by the next
readable image (`dataset.TrainingImages`), so the epoch goes on.
"""

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UsageError
from ..evaluation import read_coco_file

# kind -> what happens to the item (the report's words)
ISSUES = {
    "missing_image": "image skipped: no such file",
    "unreadable_image": "image skipped: not a readable image",
    "size_mismatch": "image skipped: its size differs from the annotation file's",
    "unknown_image": "annotation dropped: unknown image id",
    "unknown_category": "annotation dropped: unknown category id",
    "bad_box": "annotation dropped: bbox is not four finite numbers",
    "zero_area": "annotation dropped: box of zero or negative width or height",
    "box_outside": "annotation dropped: box wholly outside its image",
    "box_clipped": "box clipped to its image",
    "crowd": "annotation dropped: crowd region (iscrowd=1)",
    "no_boxes": "image has no boxes",  # kept as a negative or skipped, per empty_images
}
EMPTY_IMAGES = ("keep", "skip")
PRINTED_PER_KIND = 20  # lines printed per kind; the full list is written to the run's data-issues.txt


@dataclass
class Issue:
    kind: str
    where: str  # "image 12 (a.jpg)" or "annotation 7"
    detail: str = ""

    def line(self):
        return f"{self.where}: {ISSUES[self.kind]}" + (f" ({self.detail})" if self.detail else "")


@dataclass
class TrainingImage:
    image_id: int
    path: Path
    width: int
    height: int
    boxes: np.ndarray  # (N, 4) x, y, w, h in pixels, inside the image
    labels: np.ndarray  # (N,) category indices (positions in TrainingSet.categories)


@dataclass
class TrainingSet:
    images: list
    categories: list  # [{"id", "name", ...}] in the file's order
    issues: list = field(default_factory=list)
    boxes: int = 0

    @property
    def names(self):
        return [c["name"] for c in self.categories]

    def counts(self):
        found = {}
        for issue in self.issues:
            found[issue.kind] = found.get(issue.kind, 0) + 1
        return found

    def description(self):
        return {"images": len(self.images), "boxes": self.boxes, "categories": len(self.categories),
                "issues": self.counts()}  # fmt: skip

    def skipped_images(self):
        """One line per image file that could not be used (missing, unreadable, another size)."""
        return [i.line() for i in self.issues if ISSUES[i.kind].startswith("image skipped")]

    def summary(self, role="train"):
        counts = self.counts()
        text = f"{role}: {len(self.images)} images, {self.boxes} boxes, {len(self.categories)} categories"
        if counts:
            text += "; " + ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in sorted(counts.items()))
        return text

    def report_lines(self, limit=PRINTED_PER_KIND):
        """One line per issue, at most `limit` per kind, then how many more of that kind."""
        shown, lines = {}, []
        for issue in self.issues:
            shown[issue.kind] = shown.get(issue.kind, 0) + 1
            if shown[issue.kind] <= limit:
                lines.append(issue.line())
        lines += [f"... and {n - limit} more: {kind}" for kind, n in shown.items() if n > limit]
        return lines


def _categories(data, flag):
    categories, seen = [], set()
    for entry in data["categories"]:
        if not isinstance(entry, dict) or "id" not in entry or not str(entry.get("name", "")).strip():
            raise UsageError(f"{flag}: a category without an id or a name: {entry!r}")
        if entry["id"] in seen:
            raise UsageError(f"{flag}: category id {entry['id']} appears twice")
        seen.add(entry["id"])
        categories.append(entry)
    if not categories:
        raise UsageError(f"{flag}: no categories")
    return categories


def upright_size(path):
    """(width, height) as load_image will give it (EXIF orientation applied), reading only the header."""
    from PIL import Image

    with Image.open(path) as image:
        width, height = image.size
        orientation = image.getexif().get(0x0112, 1)
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _clipped_box(bbox, width, height):
    """(box or None, issue kind or None): a box of four finite numbers with positive size, clipped to the image."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return None, "bad_box"
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return None, "bad_box"
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return None, "bad_box"
    if w <= 0 or h <= 0:
        return None, "zero_area"
    x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + w, width), min(y + h, height)
    if x1 <= x0 or y1 <= y0:
        return None, "box_outside"
    clipped = (x0, y0, x1 - x0, y1 - y0)
    return clipped, ("box_clipped" if clipped != (x, y, w, h) else None)


def read_training_set(annotations, images_dir, empty_images="keep", flag="--train-annotations"):
    """The checked training set (module docstring); UsageError for what makes the file unusable as a whole."""
    if empty_images not in EMPTY_IMAGES:
        raise UsageError(f"empty_images must be one of {', '.join(EMPTY_IMAGES)}, got {empty_images!r}")
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise UsageError(f"{flag.replace('annotations', 'images')} {images_dir}: no such folder")
    data = read_coco_file(annotations, flag)
    categories = _categories(data, flag)
    category_index = {c["id"]: i for i, c in enumerate(categories)}
    issues, entries = [], {}
    for entry in sorted(data["images"], key=lambda e: str(e.get("id"))):
        where = f"image {entry.get('id')} ({entry.get('file_name')})"
        path = images_dir / str(entry.get("file_name", ""))
        if not entry.get("file_name") or not path.is_file():
            issues.append(Issue("missing_image", where, str(path)))
            continue
        try:
            size = upright_size(path)
        except Exception as exc:  # PIL raises several types for files that are not images
            why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            issues.append(Issue("unreadable_image", where, why))
            continue
        expected = (entry.get("width"), entry.get("height"))
        if size != expected:
            issues.append(Issue("size_mismatch", where, f"file {size[0]}x{size[1]}, entry {expected[0]}x{expected[1]}"))
            continue
        entries[entry["id"]] = (entry, path, [], [])
    known_images = {e.get("id") for e in data["images"]}
    boxes = 0
    for ann in data["annotations"]:
        where = f"annotation {ann.get('id')} (image {ann.get('image_id')})"
        if ann.get("image_id") not in entries:
            if ann.get("image_id") not in known_images:
                issues.append(Issue("unknown_image", where))
            continue  # an annotation of a skipped image goes with it
        if ann.get("category_id") not in category_index:
            issues.append(Issue("unknown_category", where, f"category_id {ann.get('category_id')!r}"))
            continue
        if ann.get("iscrowd"):
            issues.append(Issue("crowd", where))
            continue
        entry, _, kept_boxes, labels = entries[ann["image_id"]]
        box, kind = _clipped_box(ann.get("bbox"), entry["width"], entry["height"])
        if kind is not None:
            issues.append(Issue(kind, where, f"bbox {ann.get('bbox')!r}"))
        if box is not None:
            kept_boxes.append(box)
            labels.append(category_index[ann["category_id"]])
            boxes += 1
    images = []
    for entry, path, kept_boxes, labels in entries.values():
        if not kept_boxes:
            action = "skipped" if empty_images == "skip" else "kept as a negative"
            issues.append(Issue("no_boxes", f"image {entry['id']} ({entry['file_name']})", action))
            if empty_images == "skip":
                continue
        images.append(TrainingImage(entry["id"], path, entry["width"], entry["height"],
                                    np.asarray(kept_boxes, dtype=np.float64).reshape(-1, 4),
                                    np.asarray(labels, dtype=np.int64)))  # fmt: skip
    if not images:
        raise UsageError(f"{flag} {annotations}: no usable image ({len(issues)} problems; the first: "
                         f"{issues[0].line() if issues else 'no images listed'})")  # fmt: skip
    return TrainingSet(images, categories, issues, boxes)
