"""mmgdino.drawing: drawings mirror the inputs' folders and show each box."""

from pathlib import Path

from PIL import Image

from mmgdino.drawing import draw, drawing_paths


def test_drawings_mirror_the_folders_below_the_common_one(tmp_path):
    keys = ["/data/a/img.png", "/data/b/img.png", "/data/b/c/x.jpg"]
    paths = drawing_paths(keys, tmp_path)
    assert [paths[k].relative_to(tmp_path).as_posix() for k in keys] == ["a/img.png", "b/img.png", "b/c/x.jpg"]
    assert drawing_paths([], tmp_path) == {}
    assert drawing_paths(["/data/a/one.png"], tmp_path)["/data/a/one.png"] == Path(tmp_path) / "one.png"


def test_a_drawing_shows_the_boxes_and_leaves_the_image_alone(tmp_path):
    image = Image.new("RGB", (60, 40), (255, 255, 255))
    target = tmp_path / "deep" / "out.png"
    draw(image, [{"label": "a cat", "score": 0.5, "box": [10, 10, 30, 30]}], target)
    drawn = Image.open(target).convert("RGB")
    assert drawn.getpixel((10, 20)) != (255, 255, 255) and drawn.getpixel((50, 35)) == (255, 255, 255)
    assert image.getpixel((10, 20)) == (255, 255, 255)
