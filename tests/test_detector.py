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
    assert all(set(line) == {"image", "label", "labels", "score", "box"} for line in lines)
    assert sorted(p.name for p in drawn.iterdir()) == sorted(p.name for p in images)
    (folder / "zz_broken.png").unlink()
    assert main(args) == 0  # everything already done: nothing is appended
    assert len(out.read_text().splitlines()) == len(lines)


def test_cli_detects_in_bfloat16_on_the_cpu(checkpoint, images, tmp_path):
    """--dtype bfloat16 on the CPU runs and writes well-formed records (agreement with float32 is checked stage by
    stage in test_bfloat16_model.py: with random weights, end-to-end labels are not comparable)."""
    directory, _ = checkpoint
    out = tmp_path / "bf16.jsonl"
    args = ["detect", str(images[0]), "--labels", *LABELS, "--model", str(directory), "--threshold", "0.05",
            "--out", str(out), "--device", "cpu", "--dtype", "bfloat16"]  # fmt: skip
    assert main(args) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines and all(set(line) == {"image", "label", "labels", "score", "box"} for line in lines)
    assert all(0 <= line["score"] <= 1 and line["label"] in LABELS for line in lines)


def test_cli_reports_a_missing_model(tmp_path, images, capsys):
    code = main(["detect", str(images[0]), "--labels", "a cat", "--model", str(tmp_path / "missing")])
    assert code == 2
    assert "no such directory" in capsys.readouterr().err


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


# ---------------------------------------------------------------- the command line


def _detect_args(directory, *inputs, out=None, labels=LABELS, extra=()):
    args = ["detect", *map(str, inputs), "--labels", *labels, "--model", str(directory), "--threshold", "0.05",
            "--device", "cpu", *extra]  # fmt: skip
    return args + (["--out", str(out)] if out else [])


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--batch-size", "-1"], "--batch-size must be at least 1"),
        (["--threshold", "1.2"], "threshold must be a number in"),
        (["--text-threshold", "nan"], "text_threshold must be"),
        (["--device", "cuda"], "device 'cuda' is not available"),
        (["--device", "nope"], "is not a torch device"),
        (["--out", "/nonexistent-folder/out.jsonl"], "does not exist"),
        (["--format", "coco"], "--format coco needs --out"),
        (["--labels", ""], "has no text"),
        (["--labels", "."], "has no text"),
    ],
)
def test_cli_usage_errors_are_one_line_and_exit_2_before_loading(images, tmp_path, capsys, extra, words):
    # The model path does not exist: every one of these must be caught before the model loads.
    code = main(_detect_args(tmp_path / "no-model", images[0]) + extra)
    err = capsys.readouterr().err
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_cli_more_usage_errors(checkpoint, images, tmp_path, capsys):
    directory, _ = checkpoint
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(_detect_args(directory, images[0], extra=["--draw", str(blocker / "sub")])) == 2
    assert "cannot create the folder" in capsys.readouterr().err
    assert main(_detect_args(directory, tmp_path / "missing.jpg")) == 2
    assert "no such file or directory" in capsys.readouterr().err
    empty_model = tmp_path / "config-only"
    empty_model.mkdir()
    (empty_model / "config.json").write_text((directory / "config.json").read_text())
    assert main(_detect_args(empty_model, images[0])) == 2
    assert "no readable weights" in capsys.readouterr().err
    with pytest.raises(mmgdino.ModelLoadError):
        main(["--debug", *_detect_args(empty_model, images[0])])  # --debug lets the traceback through
    out = tmp_path / "dups.jsonl"
    assert main(_detect_args(directory, images[0], out=out, labels=LABELS + LABELS[:1])) == 0
    assert "duplicate labels ignored: w200 w201" in capsys.readouterr().err


def test_cli_bench_plot_without_matplotlib_fails_up_front(monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    assert main(["bench", "--plot", "--quick"]) == 2
    assert "--plot needs matplotlib" in capsys.readouterr().err


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_cli_interrupted_run_resumes_without_duplicates(checkpoint, images, tmp_path, capsys, monkeypatch):
    directory, _ = checkpoint
    out = tmp_path / "r.jsonl"
    args = _detect_args(directory, *images, out=out)
    from mmgdino import results

    real_add, calls = results.ResultStore.add, []

    def interrupt_after_one(self, *a):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return real_add(self, *a)

    monkeypatch.setattr(results.ResultStore, "add", interrupt_after_one)
    assert main(args) == 130
    assert "interrupted; rerun the same command" in capsys.readouterr().err
    assert len({r["image"] for r in _records(out)}) == 1
    monkeypatch.setattr(results.ResultStore, "add", real_add)
    # A torn tail (a write cut short) and records that never got their progress line are dropped and redone.
    with out.open("a") as f:
        f.write(json.dumps({"image": str(images[1].resolve()), "label": "x", "labels": [], "score": 1, "box": None}))
        f.write("\n" + '{"image": "cut sho')
    assert main(args) == 0
    records = _records(out)
    assert {r["image"] for r in records} == {str(p.resolve()) for p in images}
    assert all(r["label"] != "x" for r in records)
    full = tmp_path / "full.jsonl"
    assert main(_detect_args(directory, *images, out=full)) == 0
    key = lambda r: (r["image"], r["score"], r["label"])  # noqa: E731
    assert sorted(records, key=key) == sorted(_records(full), key=key)


def test_cli_resume_is_keyed_by_what_determines_the_result(checkpoint, images, tmp_path, capsys, monkeypatch):
    directory, _ = checkpoint
    folder = tmp_path / "imgs"
    folder.mkdir()
    image = folder / "one.png"
    image.write_bytes(images[0].read_bytes())
    out = tmp_path / "r.jsonl"
    assert main(_detect_args(directory, image, out=out)) == 0
    before = out.read_text()
    monkeypatch.chdir(tmp_path)  # the same image as a relative path is the same image: nothing to do
    assert main(_detect_args(directory, "imgs/one.png", out=out)) == 0
    assert out.read_text() == before and "already in" in capsys.readouterr().err
    assert main(_detect_args(directory, image, out=out, labels=["w300"])) == 2
    assert "other settings (labels differ)" in capsys.readouterr().err
    assert main(_detect_args(directory, image, out=out, extra=["--threshold", "0.5"])[:-2] + ["--out", str(out)]) == 2
    image.write_bytes(images[1].read_bytes())  # a changed file is redone, its old records replaced
    assert main(_detect_args(directory, image, out=out)) == 0
    assert out.read_text() != before and len({r["image"] for r in _records(out)}) == 1


def test_cli_draw_mirrors_folders_and_coco_format(checkpoint, images, tmp_path, capsys):
    directory, _ = checkpoint
    for name in ("a", "b"):
        (tmp_path / "in" / name).mkdir(parents=True)
        (tmp_path / "in" / name / "img.png").write_bytes(images[0].read_bytes())
    drawn, out = tmp_path / "drawn", tmp_path / "coco.json"
    assert (
        main(_detect_args(directory, tmp_path / "in", out=out, extra=["--draw", str(drawn), "--format", "coco"])) == 0
    )
    assert sorted(str(p.relative_to(drawn)) for p in drawn.rglob("*.png")) == ["a/img.png", "b/img.png"]
    coco = json.loads(out.read_text())
    ids = json.loads((tmp_path / "coco.ids.json").read_text())
    assert coco and {r["image_id"] for r in coco} == {1, 2}
    assert [c["name"] for c in ids["categories"]] == LABELS
    assert all(set(r) == {"image_id", "category_id", "bbox", "score"} and r["bbox"][2] >= 0 for r in coco)


def test_cli_manifest_gives_each_image_its_vocabulary(checkpoint, images, tmp_path):
    directory, _ = checkpoint
    manifest = tmp_path / "m.jsonl"
    vocabularies = [LABELS, ["w300"], ["w400 w401 w402", "w200 w201"]]
    manifest.write_text(
        "".join(json.dumps({"image": str(p), "labels": v}) + "\n" for p, v in zip(images, vocabularies))
    )
    out = tmp_path / "r.jsonl"
    args = ["detect", "--manifest", str(manifest), "--model", str(directory), "--threshold", "0.05", "--device",
            "cpu", "--batch-size", "3", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    records = _records(out)
    for path, vocabulary in zip(images, vocabularies):
        labels = {r["label"] for r in records if r["image"] == str(path.resolve())}
        assert labels and labels <= set(vocabulary)
    csv_manifest = tmp_path / "m.csv"
    csv_manifest.write_text("image,labels\n" + "".join(f"{p},{';'.join(v)}\n" for p, v in zip(images, vocabularies)))
    out_csv = tmp_path / "r2.jsonl"
    assert main(args[:2] + [str(csv_manifest)] + args[3:-1] + [str(out_csv)]) == 0
    assert sorted(map(json.dumps, _records(out_csv))) == sorted(map(json.dumps, records))
