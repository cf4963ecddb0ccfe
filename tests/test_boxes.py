"""mmgdino.boxes: normalized (cx, cy, w, h) in pixels, clipped; IoU."""

import numpy as np
import torch

from mmgdino.boxes import corners_in_pixels, iou


def test_boxes_in_pixels_are_clipped_to_the_image():
    boxes = torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.0, 1.0, 0.5, 0.5]])
    got = corners_in_pixels(boxes, 200, 100)
    assert got.tolist() == [[50.0, 25.0, 150.0, 75.0], [0.0, 75.0, 50.0, 100.0]]


def test_iou_of_one_box_with_many():
    boxes = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], dtype=float)
    np.testing.assert_allclose(iou(np.array([0, 0, 10, 10.0]), boxes), [1.0, 50 / 150, 0.0])
