"""Detections in the types other tools use."""

import numpy as np

from .errors import UsageError


def to_supervision(detections, labels=None):
    """One image's detections (a `Detector.detect` result) as `supervision.Detections`: xyxy boxes, `confidence`,
    `class_id` (index of the label in `labels`, default: the labels in order of first appearance) and the label
    names in `data["class_name"]`. Needs the optional `supervision` package (pip install mmgdino[supervision])."""
    try:
        import supervision as sv
    except ImportError:
        raise UsageError("to_supervision needs the supervision package: pip install supervision") from None
    if detections and isinstance(detections[0], list):
        raise UsageError("to_supervision takes one image's detections; call it per image")
    names = list(labels) if labels is not None else list(dict.fromkeys(d["label"] for d in detections))
    index = {name: i for i, name in enumerate(names)}
    missing = sorted({d["label"] for d in detections} - set(index))
    if missing:
        raise UsageError(f"to_supervision: labels {missing} are not in the labels given")
    return sv.Detections(
        xyxy=np.array([d["box"] for d in detections], dtype=np.float32).reshape(-1, 4),
        confidence=np.array([d["score"] for d in detections], dtype=np.float32),
        class_id=np.array([index[d["label"]] for d in detections], dtype=int),
        data={"class_name": np.array([d["label"] for d in detections], dtype=object)},
    )
