"""`mmgdino eval`: the metrics against the reference evaluators, the protocol's post-processing against
hand-computed cases, and the whole run with the small random checkpoint."""

import json

import model_builders as mb
import numpy as np
import pytest
import torch
from datasets import CATEGORY_NAMES, detections_near_truth, make_dataset
from PIL import Image

from mmgdino import evaluation
from mmgdino.cli import main
from mmgdino.errors import UsageError

pytest.importorskip("faster_coco_eval")


# ------------------------------------------------------------------ metrics against the reference evaluators


def test_coco_metrics_equal_pycocotools(tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    path, images = make_dataset(tmp_path, num_images=12)
    detections = detections_near_truth(path)
    ours = evaluation.compute_metrics(evaluation.load_dataset(path, images, "coco"), detections, "coco")["metrics"]
    gt = COCO(str(path))
    reference = {}
    for max_dets, keys in (([1, 10, 100], evaluation.COCO_KEYS), ([100, 300, 1000], evaluation.MMDET_KEYS)):
        ev = COCOeval(gt, gt.loadRes([dict(d) for d in detections]), "bbox")
        ev.params.maxDets = max_dets
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        reference.update(zip(keys, ev.stats[[0, 1, 2, 3, 4, 5, 6, 7, 8]]))
    assert ours.keys() == reference.keys()
    for key in ours:
        assert ours[key] == pytest.approx(float(reference[key]), abs=1e-12), key
    assert 0 < ours["AP"] < 1


def _lvis_reference(path, detections):
    if not hasattr(np, "float"):  # lvis-api 0.5.3 predates NumPy 1.24
        np.float = float
    lvis = pytest.importorskip("lvis")
    gt = lvis.LVIS(str(path))
    results = lvis.LVISResults(gt, [dict(d) for d in detections], max_dets=-1)
    ev = lvis.LVISEval(gt, results, "bbox")
    ev.params.max_dets = -1
    ev.run()
    return ev.get_results()


def test_lvis_fixed_ap_equals_lvis_api(tmp_path):
    path, images = make_dataset(tmp_path, num_images=12, lvis=True)
    detections = detections_near_truth(path, false_positives=6)
    ours = evaluation.compute_metrics(evaluation.load_dataset(path, images, "lvis"), detections, "lvis")["metrics"]
    reference = _lvis_reference(path, evaluation.fixed_ap_selection(detections))
    for key in evaluation.LVIS_KEYS:
        expected = float(reference[key])
        if expected == -1:  # no category of that frequency / size: both evaluators say "undefined"
            assert ours[key] == -1, key
        else:
            assert ours[key] == pytest.approx(expected, abs=1e-12), key


def test_fixed_ap_keeps_the_top_detections_of_each_category_over_the_set():
    detections = [{"image_id": i % 3, "category_id": c, "score": s, "bbox": [0, 0, 1, 1]}
                  for i, (c, s) in enumerate([(1, 0.9), (1, 0.2), (1, 0.5), (2, 0.1), (2, 0.3)])]  # fmt: skip
    kept = evaluation.fixed_ap_selection(detections, per_category=2)
    assert [(d["category_id"], d["score"]) for d in kept] == [(1, 0.9), (1, 0.5), (2, 0.3), (2, 0.1)]


# ------------------------------------------------------------------ the protocol's post-processing


def test_class_names_are_cleaned_as_mmdetection_does():
    assert evaluation.clean_class_name("bow_(weapon)") == "bow "
    assert evaluation.clean_class_name("baseball_bat") == "baseball bat"
    assert evaluation.clean_class_name("person") == "person"


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    return mb.offline_processor(tmp_path_factory.mktemp("processor"))


def test_prompts_tokenize_as_mmdetections_caption(processor):
    """Our per-name concatenation equals the tokenization of mmdetection's caption "a. b. c. ", and each span
    equals the tokens its positive map gives (char_to_token of the name's first and last character)."""
    tokenizer = processor.tokenizer
    assert tokenizer.is_fast  # char_to_token, as mmdetection's create_positive_map uses
    names = ["w200", "w201_(thing)", "w202_w203", "W204"]
    (prompt,) = evaluation.class_prompts(names, tokenizer, None, 256)
    cleaned = [evaluation.clean_class_name(n) for n in names]
    caption, char_spans = "", []
    for name in cleaned:
        char_spans.append((len(caption), len(caption) + len(name)))
        caption += name + ". "
    tokenized = tokenizer(caption)
    assert prompt.input_ids == tokenized["input_ids"]
    for (begin, end), (a, b) in zip(char_spans, prompt.spans):
        first = tokenized.char_to_token(begin)
        last = next(t for t in (tokenized.char_to_token(end - k) for k in (1, 2, 3)) if t is not None)
        assert (a, b) == (first, last + 1)
    assert prompt.classes == [0, 1, 2, 3]


def test_chunks_split_classes_and_refuse_an_overlong_prompt(processor):
    names = [f"w{200 + i}" for i in range(7)]
    prompts = evaluation.class_prompts(names, processor.tokenizer, 3, 256)
    assert [p.classes for p in prompts] == [[0, 1, 2], [3, 4, 5], [6]]
    assert prompts[1].spans == [(1, 2), (3, 4), (5, 6)]  # [CLS] w203 . w204 . w205 . [SEP]
    with pytest.raises(UsageError, match="smaller --chunk-size"):
        evaluation.class_prompts(names, processor.tokenizer, None, 10)


def test_class_score_is_the_mean_over_the_name_tokens():
    probs = torch.tensor([[0.1, 0.9, 0.3, 0.0, 0.6], [0.2, 0.2, 0.2, 0.0, 0.8]])
    scores = evaluation.class_scores(probs, [(1, 3), (4, 5)])
    assert torch.allclose(scores, torch.tensor([[0.6, 0.6], [0.2, 0.8]]))


def test_top_detections_rank_query_class_pairs_and_rescale():
    scores = torch.tensor([[0.9, 0.1], [0.2, 0.95], [0.5, 0.4]])  # 3 queries x 2 classes
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.1, 0.1, 0.4, 0.4], [0.5, 0.5, 1.0, 1.0]])
    classes, values, xywh = evaluation.top_detections(scores, boxes, 3, width=200, height=100)
    assert classes == [1, 0, 0]
    assert values == pytest.approx([0.95, 0.9, 0.5])
    # query 1: cx 0.1, w 0.4 -> x from -0.1 (clipped to 0) to 0.3; same for y
    assert xywh[0] == pytest.approx([0, 0, 60, 30])
    assert xywh[1] == pytest.approx([80, 30, 40, 40])
    assert xywh[2] == pytest.approx([0, 0, 200, 100])
    # the same query may be kept for two classes; top-k never exceeds queries x classes
    assert len(evaluation.top_detections(scores, boxes, 100, 10, 10)[0]) == 6


def test_test_size_rounds_like_mmdetection_where_transformers_truncates(processor):
    assert evaluation.test_size(640, 480) == (1067, 800)
    assert evaluation.test_size(480, 640) == (800, 1067)
    assert evaluation.test_size(2000, 500) == (1333, 333)  # the longer side limit binds
    image = Image.new("RGB", (640, 480))
    processor.image_processor.size = {"shortest_edge": 800, "longest_edge": 1333}
    transformers_shape = processor.image_processor(images=[image], return_tensors="pt")["pixel_values"].shape
    assert tuple(transformers_shape[-2:]) == (800, 1066)  # the difference the protocol avoids
    pixels, mask = evaluation.preprocess([image], [0.5] * 3, [0.25] * 3)
    assert pixels.shape == (1, 3, 800, 1067) and bool(mask.all())


# ------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def checkpoint(small_checkpoint):
    return small_checkpoint.directory


# The protocol's 800x1333 on a random model costs seconds per image here; the rule is tested above.
SMALL = (128, 160)


def test_eval_writes_its_files_and_matches_the_protocol_by_hand(checkpoint, tmp_path, monkeypatch):
    path, images = make_dataset(tmp_path / "data", num_images=4)
    out = tmp_path / "out"
    report = evaluation.evaluate(path, images, scale=SMALL, out=out, model=checkpoint, protocol="coco", progress=False)
    for name in ("predictions.jsonl", "detections.json", "metrics.json", "per_category.json", "summary.md"):
        assert (out / name).is_file(), name
    assert set(report["metrics"]) == set(evaluation.COCO_KEYS + evaluation.MMDET_KEYS)
    assert report["images"] == 4 and not report["subset"] and report["failed_images"] == []
    detections = json.loads((out / "detections.json").read_text())
    per_image = {}
    for d in detections:
        per_image.setdefault(d["image_id"], []).append(d)
    assert set(per_image) == {100, 101, 102, 103}
    # 20 queries x 4 classes = 80 pairs < 300: every pair is kept
    assert all(len(v) == 80 for v in per_image.values())

    # One image by hand: the model, our preprocessing, mean over spans, top-k, boxes in original pixels.
    from mmgdino import MMGroundingDinoForObjectDetection

    model = MMGroundingDinoForObjectDetection.from_pretrained(checkpoint)
    processor = mb.offline_processor(tmp_path)
    (prompt,) = evaluation.class_prompts(CATEGORY_NAMES, processor.tokenizer, None, 256)
    image = Image.open(images / "img0.png").convert("RGB")
    pixels, mask = evaluation.preprocess([image], processor.image_processor.image_mean,
                                         processor.image_processor.image_std, SMALL)  # fmt: skip
    ids = torch.tensor([prompt.input_ids])
    with torch.inference_mode():
        out_hf = model(pixel_values=pixels, pixel_mask=mask, input_ids=ids, attention_mask=torch.ones_like(ids))
    scores = evaluation.class_scores(out_hf.logits[0].sigmoid(), prompt.spans)
    classes, values, boxes = evaluation.top_detections(scores, out_hf.pred_boxes[0], 300, image.width, image.height)
    got = sorted(per_image[100], key=lambda d: -d["score"])
    assert [10 + c for c in classes] == [d["category_id"] for d in got]
    assert values == pytest.approx([d["score"] for d in got], abs=1e-5)
    assert np.allclose(boxes, [d["bbox"] for d in got], atol=1e-2)


def test_eval_chunks_concatenate_each_chunks_top_k(checkpoint, tmp_path, monkeypatch):
    path, images = make_dataset(tmp_path / "data", num_images=2, lvis=True)
    report = evaluation.evaluate(path, images, tmp_path / "out", model=checkpoint, protocol="lvis", chunk_size=3,
                                 max_dets=5, progress=False, scale=SMALL)  # fmt: skip
    assert report["prompts"] == 2 and report["ap_kind"].startswith("Fixed AP")
    assert set(report["metrics"]) == set(evaluation.LVIS_KEYS)
    detections = json.loads((tmp_path / "out" / "detections.json").read_text())
    for image_id in (100, 101):
        mine = [d for d in detections if d["image_id"] == image_id]
        assert len(mine) == 10  # 5 from the chunk of 3 classes, 5 from the chunk of 1
        assert sum(d["category_id"] == 13 for d in mine) == 5  # the second chunk is class 13 alone


def test_eval_resumes_after_an_interruption_without_duplicates(checkpoint, tmp_path, monkeypatch):
    path, images = make_dataset(tmp_path / "data", num_images=4)
    out = tmp_path / "out"
    full = evaluation.evaluate(path, images, scale=SMALL, out=tmp_path / "reference", model=checkpoint, progress=False)

    from mmgdino import results

    real_add = results.ResultStore.add
    calls = []

    def interrupt_after_two(self, *args):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(args[0])
        real_add(self, *args)

    monkeypatch.setattr(results.ResultStore, "add", interrupt_after_two)
    with pytest.raises(KeyboardInterrupt):
        evaluation.evaluate(path, images, scale=SMALL, out=out, model=checkpoint, progress=False)
    monkeypatch.setattr(results.ResultStore, "add", real_add)
    done_before = len(calls)
    resumed = evaluation.evaluate(path, images, scale=SMALL, out=out, model=checkpoint, progress=False)
    assert done_before == 2 and resumed["images_timed"] == 2  # only the missing images ran
    assert resumed["metrics"] == pytest.approx(full["metrics"])
    ours = json.loads((out / "detections.json").read_text())
    assert len(ours) == len({(d["image_id"], d["category_id"], tuple(d["bbox"]), d["score"]) for d in ours}) == 320


def test_eval_on_a_subset_says_so_and_other_settings_are_refused(checkpoint, tmp_path, monkeypatch):
    path, images = make_dataset(tmp_path / "data", num_images=4)
    report = evaluation.evaluate(
        path, images, scale=SMALL, out=tmp_path / "out", model=checkpoint, limit=2, progress=False
    )
    assert report["subset"] and report["images"] == 2
    assert "SUBSET" in (tmp_path / "out" / "summary.md").read_text()
    with pytest.raises(UsageError, match="max_dets"):
        evaluation.evaluate(
            path, images, scale=SMALL, out=tmp_path / "out", model=checkpoint, max_dets=7, progress=False
        )


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda a: a.update(annotations="missing.json"), "no such file"),
        (lambda a: a.update(images="missing-folder"), "no such folder"),
        (lambda a: a.update(protocol="lvis"), "frequency"),
        (lambda a: a.update(limit=0), "--limit"),
    ],
)
def test_eval_usage_errors_are_one_line_and_exit_2(tmp_path, capsys, change, words):
    path, images = make_dataset(tmp_path / "data", num_images=1)
    args = {"annotations": str(path), "images": str(images), "protocol": "coco", "limit": None}
    change(args)
    argv = ["eval", "--annotations", args["annotations"], "--images", args["images"], "--out", str(tmp_path / "o"),
            "--protocol", args["protocol"], "--model", str(tmp_path / "no-model")]  # fmt: skip
    if args["limit"] is not None:
        argv += ["--limit", str(args["limit"])]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0] and err[0].startswith("mmgdino eval:")


def test_compare_runs_transformers_on_the_same_images(checkpoint, tmp_path, monkeypatch):
    path, images = make_dataset(tmp_path / "data", num_images=2)
    report = evaluation.evaluate(path, images, tmp_path / "out", model=checkpoint, compare="transformers",
                                 progress=False, scale=SMALL)  # fmt: skip
    theirs = report["transformers"]
    assert set(theirs["metrics"]) == set(report["metrics"])
    assert theirs["seconds_per_image"] > 0 and "post_process_grounded_object_detection" in theirs["how"]
    saved = json.loads((tmp_path / "out" / "transformers" / "detections.json").read_text())
    assert len(saved) == theirs["detections"]
    assert all(d["category_id"] in (10, 11, 12, 13) for d in saved)
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "| transformers |" in summary and "| mmgdino |" in summary


def test_protocol_score_differs_from_transformers_best_token():
    # A two-token class name ("w202 w203"): mmdetection averages its tokens, transformers' grounded
    # post-processing scores a query by its single best token.
    probs = torch.tensor([[0.0, 0.9, 0.1, 0.0]])
    assert evaluation.class_scores(probs, [(1, 3)]).item() == pytest.approx(0.5)
    assert probs.max().item() == pytest.approx(0.9)
