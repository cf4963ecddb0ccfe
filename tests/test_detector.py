"""mmgdino.Detector and `mmgdino detect`, offline: a small random-weight checkpoint and a made-up vocabulary saved
to a temporary directory, loaded back the way a user's checkpoint is."""

import json

import model_builders as mb
import numpy as np
import pytest
import torch
from PIL import Image

import mmgdino
from mmgdino.cli import main

LABELS = ["w200 w201", "w300", "w400 w401 w402"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("checkpoint")
    hf = mb.mm_grounding_dino(num_queries=20)
    hf.save_pretrained(directory)
    mb.offline_processor(directory).save_pretrained(directory)
    return directory, hf


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    directory = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for i, size in enumerate([(70, 90), (90, 60), (64, 64)]):
        path = directory / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


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
    merged = detector.detect(str(images[0]), labels, threshold=0.05)
    assert len(calls) == 1  # the image is encoded once for all chunks
    # Each chunk's detections are what that chunk alone gives.
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
    with pytest.raises(ValueError, match="labels is empty"):
        detector.detect(np.zeros((8, 8, 3), np.uint8), [])
    with pytest.raises(mmgdino.ModelLoadError, match="no such directory"):
        mmgdino.Detector(tmp_path / "nothing-here")


def test_cli_detect_writes_jsonl_draws_and_resumes(checkpoint, images, tmp_path, capsys):
    directory, _ = checkpoint
    folder = images[0].parent
    (folder / "zz_broken.png").write_text("not an image")
    out, drawn = tmp_path / "results.jsonl", tmp_path / "drawn"
    args = [
        "detect",
        str(folder),
        "--labels",
        *LABELS,
        "--model",
        str(directory),
        "--threshold",
        "0.05",
        "--out",
        str(out),
        "--draw",
        str(drawn),
        "--device",
        "cpu",
        "--batch-size",
        "2",
    ]
    assert main(args) == 1  # the unreadable image is reported, the rest still run
    assert "zz_broken.png: not a readable image" in capsys.readouterr().err
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert {line["image"] for line in lines} == {str(p) for p in images}
    assert all(set(line) == {"image", "label", "score", "box"} for line in lines)
    assert sorted(p.name for p in drawn.iterdir()) == sorted(p.name for p in images)
    (folder / "zz_broken.png").unlink()
    assert main(args) == 0  # everything already done: nothing is appended
    assert len(out.read_text().splitlines()) == len(lines)


def test_cli_reports_a_missing_model(tmp_path, images, capsys):
    code = main(["detect", str(images[0]), "--labels", "a cat", "--model", str(tmp_path / "missing")])
    assert code == 2
    assert "no such directory" in capsys.readouterr().err
