"""Small COCO- and LVIS-format datasets drawn on the spot: rectangles of known boxes on noise, a few categories
(named in the offline test vocabulary, with LVIS-style parentheses and underscores), crowd boxes and images with
nothing in them. Also detections near the truth, for metric tests."""

import json
from pathlib import Path

import numpy as np
from PIL import Image

# Names in the offline processor's vocabulary (tests/model_builders.py): "w200".."w999" are words.
CATEGORY_NAMES = ["w200", "w201_(thing)", "w202_w203", "w204"]
FREQUENCIES = ["f", "c", "r", "f"]


def make_dataset(directory, num_images=6, seed=0, lvis=False, nested=False):
    """Writes images and an annotation file under `directory`; returns (annotation path, images folder)."""
    directory = Path(directory)
    images_dir = directory / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    categories = []
    for i, name in enumerate(CATEGORY_NAMES):
        category = {"id": 10 + i, "name": name}
        if lvis:
            category.update(frequency=FREQUENCIES[i], synset=f"s{i}.n.01", image_count=1, instance_count=1)
        categories.append(category)
    images, annotations = [], []
    for index in range(num_images):
        height, width = [(48, 64), (64, 48), (56, 56), (40, 72)][index % 4]
        pixels = rng.integers(0, 80, (height, width, 3), dtype=np.uint8)
        present = set()
        # The last image has no objects; every other image one to three.
        for _ in range(0 if index == num_images - 1 else int(rng.integers(1, 4))):
            w, h = int(rng.integers(8, width // 2)), int(rng.integers(8, height // 2))
            x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
            category = categories[int(rng.integers(0, len(categories)))]
            pixels[y : y + h, x : x + w] = rng.integers(120, 255, 3, dtype=np.uint8)
            crowd = int(rng.random() < 0.15) if not lvis else 0
            annotations.append({"id": len(annotations) + 1, "image_id": 100 + index, "category_id": category["id"],
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": crowd})  # fmt: skip
            present.add(category["id"])
        name = f"{'sub/' if nested and index % 2 else ''}img{index}.png"
        (images_dir / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(images_dir / name)
        entry = {"id": 100 + index, "file_name": name, "width": width, "height": height}
        if lvis:
            absent = [c["id"] for c in categories if c["id"] not in present]
            entry.update(neg_category_ids=absent[:1], not_exhaustive_category_ids=absent[1:2])
        images.append(entry)
    path = directory / ("lvis.json" if lvis else "coco.json")
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path, images_dir


def detections_near_truth(annotation_path, seed=0, false_positives=3):
    """COCO results: each true box jittered with a random score, plus random boxes of random categories."""
    data = json.loads(Path(annotation_path).read_text())
    rng = np.random.default_rng(seed)
    results = []
    categories = [c["id"] for c in data["categories"]]
    for ann in data["annotations"]:
        x, y, w, h = ann["bbox"]
        for _ in range(2):
            jitter = rng.normal(0, 2.0, 4)
            box = [
                float(x + jitter[0]),
                float(y + jitter[1]),
                float(max(w + jitter[2], 1)),
                float(max(h + jitter[3], 1)),
            ]
            results.append({"image_id": ann["image_id"], "category_id": ann["category_id"], "bbox": box,
                            "score": float(rng.random())})  # fmt: skip
    for image in data["images"]:
        for _ in range(false_positives):
            w, h = float(rng.uniform(4, 30)), float(rng.uniform(4, 30))
            box = [float(rng.uniform(0, image["width"] - w)), float(rng.uniform(0, image["height"] - h)), w, h]
            results.append({"image_id": image["id"], "category_id": int(rng.choice(categories)), "bbox": box,
                            "score": float(rng.random())})  # fmt: skip
    return results
