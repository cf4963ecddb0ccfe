"""mmgdino.Detector and `mmgdino detect`, offline: a small random-weight checkpoint and a made-up vocabulary saved
to a temporary directory, loaded back the way a user's checkpoint is."""

import numpy as np
import pytest
import torch
from PIL import Image

import mmgdino

LABELS = ["w200 w201", "w300", "w400 w401 w402"]


@pytest.fixture(scope="module")
def checkpoint(small_checkpoint):
    return tuple(small_checkpoint)


def expected_detections(hf, processor, images, labels, threshold):
    """The same rule computed from transformers' own model on the same (padded) batch: a query's score is its
    best token probability over the label tokens; its label is the label holding that token."""
    prompt = ". ".join(labels) + "."
    enc = processor(images=images, text=[prompt] * len(images), return_tensors="pt")
    with torch.no_grad():
        probs = hf(**enc).logits.sigmoid()
    ids = enc["input_ids"][0].tolist()
    spans, pos = [], 1
    for label in labels:
        n = len(processor.tokenizer(label, add_special_tokens=False)["input_ids"])
        spans.append((pos, pos + n))
        pos += n + 1
    assert ids[pos] == 102
    per_label = torch.stack([probs[..., a:b].amax(-1) for a, b in spans], -1)
    scores, best = per_label.max(-1)
    results = []
    for i in range(len(images)):
        keep = scores[i] >= threshold
        results.append(
            sorted(
                ((labels[b], s) for s, b in zip(scores[i, keep].tolist(), best[i, keep].tolist())), key=lambda x: -x[1]
            )
        )
    return results


@pytest.mark.parametrize("batch_size", [1, 2])
def test_detect_matches_transformers_model(checkpoint, images, batch_size):
    directory, hf = checkpoint
    detector = mmgdino.Detector(directory, device="cpu")
    results = detector.detect(
        [str(p) for p in images], LABELS, threshold=0.05, text_threshold=0.05, batch_size=batch_size
    )
    assert len(results) == len(images)
    pil = [Image.open(p).convert("RGB") for p in images]
    expected = []
    for start in range(0, len(pil), batch_size):  # batches padded as the detector pads them
        expected += expected_detections(hf, detector.processor, pil[start : start + batch_size], LABELS, 0.05)
    for found, wanted in zip(results, expected):
        assert len(found) == len(wanted) > 0
        assert [d["label"] for d in found] == [e[0] for e in wanted]
        assert [d["score"] for d in found] == pytest.approx([e[1] for e in wanted], abs=2e-4)
        for d in found:
            x0, y0, x1, y1 = d["box"]
            assert x0 <= x1 and y0 <= y1 and d["label"] in LABELS


def test_image_kinds_agree(checkpoint, images):
    directory, _ = checkpoint
    detector = mmgdino.Detector(directory, device="cpu")
    pil = Image.open(images[0]).convert("RGB")
    array = np.array(pil)
    tensor = torch.from_numpy(array).permute(2, 0, 1).float() / 255
    runs = [detector.detect(x, LABELS, threshold=0.05) for x in (str(images[0]), pil, array, tensor)]
    for other in runs[1:]:
        assert other == runs[0]


def test_long_vocabulary_is_split_and_merged(checkpoint, images, monkeypatch):
    directory, _ = checkpoint
    detector = mmgdino.Detector(directory, device="cpu")
    labels = [f"w{200 + 2 * i} w{201 + 2 * i}" for i in range(9)]  # 27 tokens: more than max_text_len = 16
    chunks = detector.prompt_chunks(labels)
    assert len(chunks) > 1 and all(len(ids) <= 16 for _, ids, _ in chunks)
    assert sorted(i for indices, _, _ in chunks for i in indices) == list(range(len(labels)))
    calls = []
    original = detector.model.encode_image
    monkeypatch.setattr(detector.model, "encode_image", lambda *a, **k: calls.append(1) or original(*a, **k))
    merged = detector.detect(str(images[0]), labels, threshold=0.05, chunk_merge_iou=None)
    assert len(calls) == 1  # the image is encoded once for all chunks
    # Without the cross-chunk merge, each chunk's detections are what that chunk alone gives.
    expected = []
    for indices, _, _ in chunks:
        expected += detector.detect(str(images[0]), [labels[i] for i in indices], threshold=0.05)
    assert sorted(merged, key=lambda d: (-d["score"], d["label"])) == sorted(
        expected, key=lambda d: (-d["score"], d["label"])
    )


def test_prompt_features_are_cached(checkpoint, images, monkeypatch):
    directory, _ = checkpoint
    detector = mmgdino.Detector(directory, device="cpu")
    calls = []
    original = detector.model.encode_prompt
    monkeypatch.setattr(detector.model, "encode_prompt", lambda *a, **k: calls.append(1) or original(*a, **k))
    detector.detect([str(p) for p in images], LABELS, batch_size=1)
    assert len(calls) == 1


def test_bad_inputs_raise_clear_errors(checkpoint, tmp_path):
    directory, _ = checkpoint
    detector = mmgdino.Detector(directory, device="cpu")
    broken = tmp_path / "broken.jpg"
    broken.write_text("not an image")
    with pytest.raises(ValueError, match="broken.jpg"):
        detector.detect(str(broken), LABELS)
    with pytest.raises(mmgdino.UsageError, match="labels is empty"):
        detector.detect(np.zeros((8, 8, 3), np.uint8), [])
    with pytest.raises(mmgdino.ModelLoadError, match="no such directory"):
        mmgdino.Detector(tmp_path / "nothing-here")


# ---------------------------------------------------------------- thresholds, labels, boxes


def test_each_threshold_has_its_own_effect(checkpoint, images):
    directory, _ = checkpoint
    detector = mmgdino.Detector(directory, device="cpu")
    path = str(images[0])
    at = {t: detector.detect(path, LABELS, threshold=t, text_threshold=0.25) for t in (0.05, 0.2, 0.3)}
    # Lowering threshold below text_threshold returns more boxes (it alone decides which boxes are kept).
    assert len(at[0.05]) > len(at[0.2]) >= len(at[0.3])
    assert all(d["score"] >= 0.05 for d in at[0.05])
    # text_threshold decides which labels form a box's phrase, not which boxes are kept.
    loose = detector.detect(path, LABELS, threshold=0.05, text_threshold=0.0)
    strict = detector.detect(path, LABELS, threshold=0.05, text_threshold=1.0)
    assert [d["box"] for d in loose] == [d["box"] for d in strict] == [d["box"] for d in at[0.05]]
    assert all(d["labels"] == LABELS for d in loose) and all(d["labels"] == [] for d in strict)
    for d in at[0.05]:
        assert d["label"] in LABELS and set(d["labels"]) <= set(LABELS)


def test_boxes_are_clipped_to_the_image(checkpoint, images):
    directory, _ = checkpoint
    detector = mmgdino.Detector(directory, device="cpu")
    for path in images:
        width, height = Image.open(path).size
        for d in detector.detect(str(path), LABELS, threshold=0.0):
            x0, y0, x1, y1 = d["box"]
            assert 0 <= x0 <= x1 <= width and 0 <= y0 <= y1 <= height


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(threshold=1.5), "threshold must be a number in"),
        (dict(threshold=float("nan")), "threshold must be a number in"),
        (dict(text_threshold=-0.1), "text_threshold must be"),
        (dict(batch_size=0), "batch_size"),
        (dict(chunk_merge_iou=2.0), "chunk_merge_iou"),
        (dict(labels=["  "]), "has no text"),
        (dict(labels=[". ."]), "has no text"),
        (dict(labels=[["a"], ["b"]]), "2 vocabularies for 1 images"),
    ],
)
def test_detect_rejects_bad_arguments_with_one_error_type(checkpoint, kwargs, words):
    directory, _ = checkpoint
    detector = mmgdino.Detector(directory, device="cpu")
    labels = kwargs.pop("labels", LABELS)
    with pytest.raises(mmgdino.MmgdinoError, match=words):
        detector.detect(np.zeros((16, 16, 3), np.uint8), labels, **kwargs)


def test_detect_takes_iterables_and_removes_duplicate_labels(checkpoint, images):
    directory, _ = checkpoint
    detector = mmgdino.Detector(directory, device="cpu")
    expected = detector.detect([str(p) for p in images[:2]], LABELS, threshold=0.05)
    with pytest.warns(UserWarning, match="duplicate labels ignored"):
        from_generators = detector.detect((str(p) for p in images[:2]), (x for x in LABELS + LABELS[:1]),
                                          threshold=0.05)  # fmt: skip
    assert from_generators == expected


def test_one_vocabulary_per_image_equals_one_image_at_a_time(checkpoint, images):
    directory, _ = checkpoint
    detector = mmgdino.Detector(directory, device="cpu")
    vocabularies = [LABELS, ["w300", "w200 w201"], ["w400 w401 w402"]]
    # Same-size images: padding images of different sizes into one batch changes the backbone's features (as in
    # transformers), so only the prompts differ here.
    rng = np.random.default_rng(5)
    paths = [rng.integers(0, 255, (64, 80, 3), dtype=np.uint8) for _ in vocabularies]
    batched = detector.detect(paths, vocabularies, threshold=0.05, batch_size=3)
    for path, vocabulary, found in zip(paths, vocabularies, batched):
        alone = detector.detect(path, vocabulary, threshold=0.05)
        assert [d["label"] for d in found] == [d["label"] for d in alone]
        assert [d["score"] for d in found] == pytest.approx([d["score"] for d in alone], abs=2e-4)


def test_chunks_are_merged_into_one_box_per_object(checkpoint, images):
    from mmgdino.detector import merge_chunks

    first = {"label": "a", "score": 0.9, "box": [0, 0, 10, 10]}
    again = {"label": "b", "score": 0.8, "box": [0, 0, 10, 10.5]}
    other = {"label": "c", "score": 0.7, "box": [20, 20, 30, 30]}
    same_chunk = {"label": "d", "score": 0.6, "box": [0, 0, 10, 10]}
    assert merge_chunks([again, first, other, same_chunk], [1, 0, 1, 0], 0.8) == [first, other, same_chunk]
    directory, _ = checkpoint
    detector = mmgdino.Detector(directory, device="cpu")
    labels = [f"w{200 + 2 * i} w{201 + 2 * i}" for i in range(9)]
    separate = detector.detect(str(images[0]), labels, threshold=0.05, chunk_merge_iou=None)
    merged = detector.detect(str(images[0]), labels, threshold=0.05, chunk_merge_iou=0.5)
    assert 0 < len(merged) < len(separate)
    assert all(d in separate for d in merged)


# ---------------------------------------------------------------- the command line
