"""The annotations of an evaluation run: a COCO-format file (COCO, LVIS, yours) and the folder of its images."""

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError


@dataclass
class Dataset:
    annotations: dict
    images: list  # [{"id", "file_name", "width", "height", "path"}]
    categories: list  # [{"id", "name", ...}] in annotation order

    @property
    def names(self):
        return [c["name"] for c in self.categories]


def read_coco_file(path, flag="--annotations"):
    """The parsed COCO-format file at `path`: a JSON object with "images", "annotations" and "categories" lists.
    UsageError naming `flag` and what is wrong otherwise."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{flag} {path}: no such file")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"{flag} {path}: not a JSON file ({exc})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{flag} {path}: not a COCO-format file (no top-level object)")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise UsageError(f"{flag} {path}: no {key!r} list (not a COCO-format file)")
    return data


def load_dataset(annotations_path, images_dir, protocol, limit=None):
    """A COCO/LVIS annotation file and its images folder; UsageError naming what is wrong."""
    annotations_path, images_dir = Path(annotations_path), Path(images_dir)
    if not annotations_path.is_file():
        raise UsageError(f"--annotations {annotations_path}: no such file")
    if not images_dir.is_dir():
        raise UsageError(f"--images {images_dir}: no such folder")
    data = read_coco_file(annotations_path)
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
