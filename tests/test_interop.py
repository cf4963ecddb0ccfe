"""mmgdino.to_supervision: one image's detections as supervision.Detections."""

import numpy as np
import pytest

import mmgdino

LABELS = ["w200 w201", "w300", "w400 w401 w402"]


@pytest.fixture(scope="module")
def checkpoint(small_checkpoint):
    return tuple(small_checkpoint)


def test_to_supervision(checkpoint, images):
    pytest.importorskip("supervision")
    directory, _ = checkpoint
    found = mmgdino.Detector(directory, device="cpu").detect(str(images[0]), LABELS, threshold=0.05)
    detections = mmgdino.to_supervision(found, LABELS)
    assert len(detections) == len(found)
    np.testing.assert_allclose(detections.xyxy, np.array([d["box"] for d in found]).reshape(-1, 4), rtol=1e-6)
    assert [LABELS[i] for i in detections.class_id] == [d["label"] for d in found]
    with pytest.raises(mmgdino.UsageError, match="per image"):
        mmgdino.to_supervision([found])


def test_labels_missing_from_the_given_list_are_named():
    pytest.importorskip("supervision")
    found = [{"label": "a cat", "labels": ["a cat"], "score": 0.5, "box": [0, 0, 1, 1]}]
    with pytest.raises(mmgdino.UsageError, match="'a cat'"):
        mmgdino.to_supervision(found, ["a dog"])
    empty = mmgdino.to_supervision([], ["a dog"])
    assert len(empty) == 0 and empty.xyxy.shape == (0, 4)
