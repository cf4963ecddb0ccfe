"""The `mmgdino` command line, as a user runs it: detect (records, drawings, resume, manifests, dtypes), export
and running the exported file, eval, bench's up-front checks; every usage mistake one line and exit code 2.

The checks behind these commands are tested with their modules (test_detector.py, test_export.py,
test_evaluation.py, test_ray.py); the bench report writers and chart in test_bench.py."""

import json
import math

import numpy as np
import pytest
from datasets import make_dataset
from PIL import Image

from mmgdino import bench, evaluation
from mmgdino.cli import main
from mmgdino.errors import UsageError

DETECT_LABELS = ["w200 w201", "w300", "w400 w401 w402"]
EXPORT_LABELS = ["w200", "w201 w202", "w203"]
EXPORT_SIZE = (128, 160)
EVAL_SCALE = (128, 160)  # the protocol's 800x1333 costs seconds per image with this model on 2 CPUs


@pytest.fixture(scope="module")
def checkpoint(small_checkpoint):
    return tuple(small_checkpoint)


@pytest.fixture(scope="module")
def checkpoint_dir(small_checkpoint):
    return small_checkpoint.directory


# ------------------------------------------------------------------ detect


def test_cli_detect_writes_jsonl_draws_and_resumes(checkpoint, images, tmp_path, capsys):
    directory, _ = checkpoint
    folder = images[0].parent
    (folder / "zz_broken.png").write_text("not an image")
    out, drawn = tmp_path / "results.jsonl", tmp_path / "drawn"
    args = [
        "detect",
        str(folder),
        "--labels",
        *DETECT_LABELS,
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
    args = ["detect", str(images[0]), "--labels", *DETECT_LABELS, "--model", str(directory), "--threshold", "0.05",
            "--out", str(out), "--device", "cpu", "--dtype", "bfloat16"]  # fmt: skip
    assert main(args) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines and all(set(line) == {"image", "label", "labels", "score", "box"} for line in lines)
    assert all(0 <= line["score"] <= 1 and line["label"] in DETECT_LABELS for line in lines)


def test_cli_reports_a_missing_model(tmp_path, images, capsys):
    code = main(["detect", str(images[0]), "--labels", "a cat", "--model", str(tmp_path / "missing")])
    assert code == 2
    assert "no such directory" in capsys.readouterr().err


def _detect_args(directory, *inputs, out=None, labels=DETECT_LABELS, extra=()):
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
    assert main(["--debug", *_detect_args(empty_model, images[0])]) == 2  # the traceback, and the same code
    err = capsys.readouterr().err
    assert "Traceback" in err and "ModelLoadError" in err and "no readable weights" in err
    out = tmp_path / "dups.jsonl"
    assert main(_detect_args(directory, images[0], out=out, labels=DETECT_LABELS + DETECT_LABELS[:1])) == 0
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
    assert [c["name"] for c in ids["categories"]] == DETECT_LABELS
    assert all(set(r) == {"image_id", "category_id", "bbox", "score"} and r["bbox"][2] >= 0 for r in coco)


def test_cli_manifest_gives_each_image_its_vocabulary(checkpoint, images, tmp_path):
    directory, _ = checkpoint
    manifest = tmp_path / "m.jsonl"
    vocabularies = [DETECT_LABELS, ["w300"], ["w400 w401 w402", "w200 w201"]]
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


# ------------------------------------------------------------------ export and the exported file


def test_cli_export_then_detect(checkpoint_dir, tmp_path, capsys):
    out = tmp_path / "fixed.onnx"
    assert main(["export", "onnx", "--model", str(checkpoint_dir), "--out", str(out), "--image-size", "128x160"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["onnx"] == str(out) and out.is_file()
    image = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(image)
    records = tmp_path / "r.jsonl"
    argv = [
        "detect",
        str(image),
        "--labels",
        *EXPORT_LABELS,
        "--model",
        str(out),
        "--threshold",
        "0.0",
        "--out",
        str(records),
    ]
    assert main(argv) == 0
    rows = [json.loads(line) for line in records.read_text().splitlines()]
    assert len(rows) == 20 and all(r["label"] in EXPORT_LABELS for r in rows)  # 20 queries, threshold 0
    from mmgdino.onnx_runtime import OnnxModel

    with pytest.raises(UsageError, match="batch 1"):
        OnnxModel(out)(
            np.zeros((2, 3, *EXPORT_SIZE), np.float32), np.ones((2, *EXPORT_SIZE)), np.ones((2, 5)), np.ones((2, 5))
        )


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--dynamic-size"], "not supported"),
        (["--image-size", "10x10"], "at least 64"),
        (["--image-size", "big"], "HEIGHTxWIDTH"),
        (["--opset", "12"], "--opset"),
    ],
)
def test_cli_export_errors_are_one_line(checkpoint_dir, tmp_path, capsys, extra, words):
    assert main(["export", "onnx", "--model", str(checkpoint_dir), "--out", str(tmp_path / "m.onnx"), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err


def test_cli_export_and_runtime_misuse(checkpoint_dir, tmp_path, capsys):
    assert main(["export", "onnx", "--model", str(checkpoint_dir), "--out", str(tmp_path / "m.txt")]) == 2
    assert ".onnx" in capsys.readouterr().err
    image = tmp_path / "a.png"
    Image.new("RGB", (32, 32)).save(image)
    argv = ["detect", str(image), "--labels", "w200", "--model", str(checkpoint_dir), "--runtime", "openvino"]
    assert main(argv) == 2
    assert "exported --model FILE.onnx" in capsys.readouterr().err
    assert main(["detect", str(image), "--labels", "w200", "--model", str(tmp_path / "none.onnx")]) == 2
    assert "no such ONNX file" in capsys.readouterr().err


def test_cli_bench_onnx_checks_its_size_first(capsys):
    assert main(["bench", "--onnx", "tiny"]) == 2
    assert "HEIGHTxWIDTH" in capsys.readouterr().err


# ------------------------------------------------------------------ eval


def test_cli_eval_prints_the_summary(checkpoint_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(evaluation.run, "TEST_SCALE", EVAL_SCALE)  # where evaluate() reads it
    path, images = make_dataset(tmp_path / "data", num_images=2)
    argv = ["eval", "--annotations", str(path), "--images", str(images), "--out", str(tmp_path / "o"),
            "--model", str(checkpoint_dir)]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| mmgdino |" in out and "AP50" in out
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert not math.isnan(metrics["metrics"]["AP"])


# ------------------------------------------------------------------ bench


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


def test_info_lists_backends(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "ms_deform_attn" in out and "backends:" in out


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

    from mmgdino.bench import onnx

    rng = np.random.default_rng(0)
    logits, boxes = rng.normal(size=(1, 300, 16)), rng.uniform(0.2, 0.6, size=(1, 300, 4))
    order = rng.permutation(300)
    assert onnx.topk_agreement((logits[:, order], boxes[:, order]), (logits, boxes)) == 1.0  # a set, not a list
    moved = boxes.copy()
    moved[..., 0] += 0.3  # every box shifted: IoU < 0.9
    assert onnx.topk_agreement((logits, moved), (logits, boxes)) == 0.0
    assert onnx._named(["b", "l", "x"], ["pred_boxes", "output.logits", "enc_outputs_class"]) == ["l", "b"]
    report = {
        "torch_eager_s": {"transformers": 12.0, "mmgdino": 6.0, "mmgdino bfloat16": 3.0},
        "rows": [
            {"model": "mmgdino", "runtime": "onnxruntime", "run_s": 8.0},
            {"model": "transformers", "runtime": "onnxruntime", "run_s": 9.0},
            {"model": "transformers (OpenVINOExporter)", "error": "RuntimeError: no"},
        ],
        "bf16_top100_agreement": {"mmgdino": 0.5},
    }
    text = "\n".join(onnx.peers_summary(report))
    assert "| transformers eager float32 | 12.000 | 4.00x |" in text
    assert "| transformers' OnnxExporter in onnxruntime | 9.000 | 3.00x |" in text
    assert "transformers' OpenVINOExporter | failed: RuntimeError: no" in text and "mmgdino 50%" in text


def test_peer_chart_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    from mmgdino.bench import onnx

    report = {"size": [8, 8], "torch_eager_s": {"transformers": 12.0, "mmgdino": 6.0, "mmgdino bfloat16": 3.0},
              "rows": [{"model": "transformers", "runtime": "onnxruntime", "run_s": 9.0},
                       {"model": "transformers (OpenVINOExporter)", "error": "RuntimeError: no"}]}  # fmt: skip
    path = onnx.plot_peers([report, report], tmp_path / "peers.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
