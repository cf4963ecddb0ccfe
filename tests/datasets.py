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


# ------------------------------------------------------------------ scenes a small model can learn (training tests)

# Each category is a rectangle of its own colour, so what to detect is in the pixels (make_dataset's colours are
# random, which a detector cannot learn to classify). Names are words of the offline processor's vocabulary.
SCENE_CATEGORIES = {"w210": (235, 45, 45), "w211": (45, 225, 45), "w212": (60, 90, 245)}


def make_scenes(directory, num_images=8, size=48, seed=0, max_objects=2, name="scenes.json", empty=0):
    """Writes `num_images` square PNGs of `size` pixels: dark noise with one to `max_objects` rectangles whose
    colour is their category's (SCENE_CATEGORIES), plus `empty` images with nothing in them. Returns (annotation
    path, images folder)."""
    directory = Path(directory)
    images_dir = directory / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    categories = [{"id": 1 + i, "name": n} for i, n in enumerate(SCENE_CATEGORIES)]
    colours = list(SCENE_CATEGORIES.values())
    images, annotations = [], []
    for index in range(num_images + empty):
        pixels = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
        for _ in range(0 if index >= num_images else int(rng.integers(1, max_objects + 1))):
            w, h = int(rng.integers(size // 5, size // 2)), int(rng.integers(size // 5, size // 2))
            x, y = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
            category = int(rng.integers(0, len(categories)))
            pixels[y : y + h, x : x + w] = colours[category]
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1, "bbox": [x, y, w, h],
                                "category_id": categories[category]["id"], "area": w * h, "iscrowd": 0})  # fmt: skip
        file_name = f"scene{index}.png"
        Image.fromarray(pixels).save(images_dir / file_name)
        images.append({"id": index + 1, "file_name": file_name, "width": size, "height": size})
    path = directory / name
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path, images_dir


def add_bad_entries(annotation_path, images_dir):
    """Adds one of each kind of bad training data to a make_scenes file: a box partly outside its image, one
    wholly outside, an unknown category id, an unknown image id, a zero-area box, a box that is not four numbers,
    a crowd box, an image file that is not an image, a missing image file, an image whose size differs from the
    file's entry, and an image with no boxes. Returns {kind: how many} as the training data check names them."""
    path, images_dir = Path(annotation_path), Path(images_dir)
    data = json.loads(path.read_text())
    first = data["images"][0]
    size = first["width"]
    next_id = max(a["id"] for a in data["annotations"]) + 1

    def box(image_id, bbox, category_id=data["categories"][0]["id"], **extra):
        nonlocal next_id
        data["annotations"].append({"id": next_id, "image_id": image_id, "category_id": category_id,
                                    "bbox": bbox, "area": 1, "iscrowd": 0, **extra})  # fmt: skip
        next_id += 1

    box(first["id"], [size - 6, 2, 12, 8])  # partly outside: clipped
    box(first["id"], [size + 5, 2, 6, 6])  # wholly outside: dropped
    box(first["id"], [2, 2, 6, 6], category_id=999)
    box(12345, [2, 2, 6, 6])
    box(first["id"], [3, 3, 0, 5])
    box(first["id"], [3, "x", 4, 5])
    box(first["id"], [1, 1, 9, 9], iscrowd=1)
    (images_dir / "corrupt.png").write_bytes(b"not an image at all")
    Image.fromarray(np.zeros((size, size + 8, 3), dtype=np.uint8)).save(images_dir / "wrong-size.png")
    Image.fromarray(np.zeros((size, size, 3), dtype=np.uint8)).save(images_dir / "nothing.png")
    base = max(im["id"] for im in data["images"])
    for offset, file_name in enumerate(["corrupt.png", "missing.png", "wrong-size.png", "nothing.png"], start=1):
        data["images"].append({"id": base + offset, "file_name": file_name, "width": size, "height": size})
    path.write_text(json.dumps(data))
    return {"box_clipped": 1, "box_outside": 1, "unknown_category": 1, "unknown_image": 1, "zero_area": 1,
            "bad_box": 1, "crowd": 1, "unreadable_image": 1, "missing_image": 1, "size_mismatch": 1,
            "no_boxes": 1}  # fmt: skip
