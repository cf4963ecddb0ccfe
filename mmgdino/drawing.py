"""`mmgdino detect --draw`: each image with its boxes and labels, mirroring the inputs' folders."""

import os
from pathlib import Path

BOX_COLOR = (255, 64, 0)


def draw(image, detections, target):
    """`image` with each detection's box and "label score" written to `target` (its folders made)."""
    from PIL import ImageDraw

    canvas = image.copy()
    pen = ImageDraw.Draw(canvas)
    for det in detections:
        pen.rectangle(det["box"], outline=BOX_COLOR, width=max(2, round(min(image.size) / 300)))
        pen.text((det["box"][0] + 3, det["box"][1] + 2), f"{det['label']} {det['score']:.2f}", fill=BOX_COLOR)
    target.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(target)


def drawing_paths(keys, draw_dir):
    """Each image's drawing mirrors its path below the common folder of all inputs: no two collide."""
    if not keys:
        return {}
    root = Path(os.path.commonpath([str(Path(k).parent) for k in keys]))
    return {k: Path(draw_dir) / Path(k).relative_to(root) for k in keys}
