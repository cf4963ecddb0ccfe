"""`mmgdino export onnx`: the small random checkpoint exported and run in ONNX Runtime and OpenVINO, against
PyTorch on the same inputs (a padded batch), detection from the file, and the errors."""

import json

import model_builders as mb
import numpy as np
import pytest
import torch
from PIL import Image

from mmgdino import Detector, MMGroundingDinoForObjectDetection

pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")
SIZE = (128, 160)
LABELS = ["w200", "w201 w202", "w203"]


@pytest.fixture(scope="module")
def checkpoint(small_checkpoint):
    return small_checkpoint.directory


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory):
    """One dynamic-batch export shared by the tests (the export itself costs tens of seconds here)."""
    from mmgdino.export import export_onnx

    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    result = export_onnx(checkpoint, out, image_size=SIZE, dynamic_batch=True)
    return out, result


def _padded_batch(processor):
    """Two images in the fixed canvas, the second narrower (pixel_mask zeros), prompts of different lengths."""
    from mmgdino.onnx_runtime import fit_inside

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, size, dtype=np.uint8)) for size in ((90, 140, 3), (120, 50, 3))]
    values, mask = fit_inside(images, SIZE, processor.image_processor.image_mean, processor.image_processor.image_std)
    ids = np.array([mb.prompt_ids((2, 1, 3)), mb.prompt_ids((1, 2)) + [0] * 4])  # 11 and 7 tokens
    attention = (np.arange(ids.shape[1])[None] < np.array([[11], [7]])).astype(np.int64)
    assert not mask[1].all()
    return values, mask, ids, attention


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_exported_file_gives_pytorchs_outputs_on_a_padded_batch(checkpoint, exported, runtime):
    if runtime == "openvino":
        pytest.importorskip("openvino")
    from mmgdino.onnx_runtime import OnnxModel

    onnx_path, result = exported
    processor = mb.offline_processor(onnx_path.parent)
    values, mask, ids, attention = _padded_batch(processor)
    model = MMGroundingDinoForObjectDetection.from_pretrained(checkpoint)
    with torch.no_grad():
        reference = model(pixel_values=torch.from_numpy(values), pixel_mask=torch.from_numpy(mask),
                          input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(attention))  # fmt: skip
    logits, boxes = OnnxModel(onnx_path, runtime)(values, mask, ids, attention)
    finite = torch.isfinite(reference.logits)
    assert torch.equal(torch.isfinite(logits), finite)
    torch.testing.assert_close(logits[finite], reference.logits[finite], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(boxes, reference.pred_boxes, atol=1e-4, rtol=1e-4)
    # one image alone (the batch is dynamic) gives its row of the batch
    alone = OnnxModel(onnx_path, runtime)(values[:1], mask[:1], ids[:1], attention[:1])
    torch.testing.assert_close(alone[1], boxes[:1], atol=1e-4, rtol=1e-4)


def test_export_names_its_inputs_and_outputs_and_writes_its_sidecar(exported):
    import onnx

    onnx_path, result = exported
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    assert [i.name for i in graph.input] == ["pixel_values", "pixel_mask", "input_ids", "attention_mask"]
    assert [o.name for o in graph.output] == ["logits", "pred_boxes"]
    ops = {node.op_type for node in graph.node}
    assert "GridSample" in ops and not any(op.startswith("mmgdino") for op in ops)
    meta = json.loads((result["sidecar"] / "export.json").read_text())
    assert meta["image_size"] == list(SIZE) and meta["dynamic_batch"] is True
    assert (result["sidecar"] / "config.json").is_file()


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_detect_from_the_file_equals_pytorch_on_the_same_canvas(checkpoint, exported, runtime):
    if runtime == "openvino":
        pytest.importorskip("openvino")
    rng = np.random.default_rng(3)
    images = [Image.fromarray(rng.integers(0, 255, size, dtype=np.uint8)) for size in ((70, 90, 3), (100, 60, 3))]
    from_file = Detector(str(exported[0]), runtime=runtime).detect(images, LABELS, threshold=0.05, batch_size=2)
    in_torch = Detector(checkpoint)
    onnx_detector = Detector(str(exported[0]), runtime=runtime)
    in_torch.runner.pixels = onnx_detector.runner.pixels  # the same fixed-canvas preprocessing
    expected = in_torch.detect(images, LABELS, threshold=0.05, batch_size=2)
    assert [len(d) for d in from_file] == [len(d) for d in expected] and sum(map(len, expected)) > 0
    for got, want in zip(from_file, expected):
        for a, b in zip(got, want):
            assert a["label"] == b["label"] and a["labels"] == b["labels"]
            assert a["score"] == pytest.approx(b["score"], abs=2e-4)
            assert np.allclose(a["box"], b["box"], atol=0.05)


def test_bench_agreement_matches_queries_as_a_set():
    from mmgdino.bench.onnx import agreement

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(1, 6, 4))
    logits[..., 3] = -np.inf  # padding
    boxes = rng.random((1, 6, 4))
    order = rng.permutation(6)
    same = agreement((logits[:, order], boxes[:, order]), (logits, boxes))
    assert same["matched"] == 1.0 and same["matched_err"] == 0.0 and same["order"][1] > 0
    moved = boxes.copy()
    moved[0, 2] += 0.1
    assert agreement((logits, moved), (logits, boxes))["matched"] == pytest.approx(5 / 6)
