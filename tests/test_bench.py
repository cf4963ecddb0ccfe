"""mmgdino.bench (`mmgdino bench`): the report writers and chart, the end-to-end suite, the dtypes it times, and the
ONNX peers' agreement measures, summary and chart."""

import json

import pytest

from mmgdino import bench


def _report():
    rows = [
        bench.Row(
            "ms_deform_attn", "forward", "encoder", 1, "float32", "cpu", 2.0, "transformers", 40.0, 20.0, 3e-6, 12.5
        ),
        bench.Row(
            "model", "forward", "tiny", 1, "float32", "mmgdino model", 7.0, "transformers eager", 19.0, 19.0 / 7.0, 1e-7
        ),
    ]
    return {
        "device": "test device",
        "commit": "abc",
        "versions": bench.versions(),
        "results": [r.to_json() for r in rows],
    }


def test_report_writers(tmp_path):
    json_path, md_path = bench.write_report(_report(), tmp_path / "r")
    assert json.loads(json_path.read_text())["results"][0]["speedup"] == 20.0
    table = md_path.read_text()
    assert "| ms_deform_attn | forward | encoder | 1 | float32 | cpu | 2.0000 |" in table
    assert "20.0x" in table and "2.7x" in table


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = bench.plot_report(_report(), tmp_path / "r")
    assert path.suffix == ".png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_end_to_end_rows_at_a_small_size():
    import torch

    rows = bench.run_end_to_end(
        "cpu", repeats=1, log=lambda m: None, height=256, width=320, dtypes=[torch.float32, torch.bfloat16]
    )
    assert [(r.backend, r.dtype) for r in rows] == [
        ("transformers eager", "float32"),
        ("mmgdino.patch", "float32"),
        ("mmgdino model", "float32"),
        ("mmgdino model", "bfloat16"),
    ]
    assert rows[1].rel_err < 1e-4 and rows[2].rel_err < 1e-4
    assert rows[3].rel_err < 0.1
    assert all(r.median_ms > 0 and r.peak_mb is None for r in rows)


def test_bench_times_bfloat16_on_cpus_with_native_bf16_only(monkeypatch):
    import torch

    from mmgdino.bench.cases import default_dtypes

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert default_dtypes(torch.device("cpu")) == [torch.float32, torch.bfloat16]
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    assert default_dtypes(torch.device("cpu")) == [torch.float32]
    assert default_dtypes(torch.device("cuda")) == [torch.float32, torch.bfloat16]


def test_peer_summary_and_bf16_agreement_measure():
    import numpy as np

    from mmgdino.bench import onnx, onnx_report
    from mmgdino.bench.agreement import topk_agreement

    rng = np.random.default_rng(0)
    logits, boxes = rng.normal(size=(1, 300, 16)), rng.uniform(0.2, 0.6, size=(1, 300, 4))
    order = rng.permutation(300)
    assert topk_agreement((logits[:, order], boxes[:, order]), (logits, boxes)) == 1.0  # a set, not a list
    moved = boxes.copy()
    moved[..., 0] += 0.3  # every box shifted: IoU < 0.9
    assert topk_agreement((logits, moved), (logits, boxes)) == 0.0
    assert onnx.logits_and_boxes(["b", "l", "x"], ["pred_boxes", "output.logits", "enc_outputs_class"]) == ["l", "b"]
    report = {
        "torch_eager_s": {"transformers": 12.0, "mmgdino": 6.0, "mmgdino bfloat16": 3.0},
        "rows": [
            {"model": "mmgdino", "runtime": "onnxruntime", "run_s": 8.0},
            {"model": "transformers", "runtime": "onnxruntime", "run_s": 9.0},
            {"model": "transformers (OpenVINOExporter)", "error": "RuntimeError: no"},
        ],
        "bf16_top100_agreement": {"mmgdino": 0.5},
    }
    text = "\n".join(onnx_report.peers_summary(report))
    assert "| transformers eager float32 | 12.000 | 4.00x |" in text
    assert "| transformers' OnnxExporter in onnxruntime | 9.000 | 3.00x |" in text
    assert "transformers' OpenVINOExporter | failed: RuntimeError: no" in text and "mmgdino 50%" in text


def test_peer_chart_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    from mmgdino.bench import onnx_report

    report = {"size": [8, 8], "torch_eager_s": {"transformers": 12.0, "mmgdino": 6.0, "mmgdino bfloat16": 3.0},
              "rows": [{"model": "transformers", "runtime": "onnxruntime", "run_s": 9.0},
                       {"model": "transformers (OpenVINOExporter)", "error": "RuntimeError: no"}]}  # fmt: skip
    path = onnx_report.plot_peers([report, report], tmp_path / "peers.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
