"""mmgdino.compiled: size buckets (one graph per bucket, never one per image), prompt buckets, the on-disk cache
reused by a second process, and the compiled stages' agreement with eager."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from mmgdino import Detector, compiled
from mmgdino.errors import UsageError


@pytest.mark.parametrize(
    "size, longest, bucket",
    [
        ((800, 1066), 1333, (800, 1152)),  # 4:3 landscape: 8% padding
        ((1066, 800), 1333, (1152, 800)),  # portrait
        ((750, 1333), 1333, (768, 1333)),  # 16:9: the long side stops at the processor's longest side
        ((800, 800), 1333, (800, 800)),  # a square stays square
        ((800, 1200), None, (800, 1280)),
        ((128, 150), 160, (128, 160)),
    ],  # fmt: skip
)
def test_size_buckets(size, longest, bucket):
    assert compiled.padded_size(*size, longest) == bucket
    pixels, mask = compiled.pad_pixels(torch.ones(1, 3, *size), torch.ones(1, *size, dtype=torch.long), longest)
    assert pixels.shape[-2:] == bucket and mask.shape[-2:] == bucket and int(mask.sum()) == size[0] * size[1]


def test_prompt_buckets():
    assert [compiled.prompt_bucket(n, 256) for n in (3, 16, 17, 250)] == [16, 16, 32, 256]
    assert compiled.prompt_bucket(20, 24) == 24


@pytest.mark.parametrize("value", ["yes", 2, 1.5])
def test_bad_compile_option_is_one_line(value):
    with pytest.raises(UsageError, match="compile must be one of auto, on, off"):
        compiled.check_compile(value)


def _mixed_images(directory, count=20, seed=0):
    """Images of mixed sizes and aspect ratios, portrait and landscape (3:4 to 16:9, as cameras make them)."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        height = int(rng.integers(60, 300))
        width = int(height * float(rng.choice([3 / 4, 9 / 16, 1.0, 4 / 3, 16 / 9]) * rng.uniform(0.97, 1.03)))
        path = directory / f"img{i:02d}.png"
        Image.fromarray(rng.integers(0, 255, (height, max(width, 8), 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def exported_only(module, args, path):
    """A package without Inductor: the exported program itself (the same graphs and sizes, no code generation)."""
    program = compiled.export_stage(module, args)
    torch.export.save(program, str(path))
    return program.module()


exported_only.load = lambda path: torch.export.load(str(path)).module()


def test_twenty_images_of_mixed_aspect_ratios_compile_once_per_bucket(small_checkpoint, tmp_path, monkeypatch):
    """One package per stage and size bucket, whatever the packager: counted with exported programs (no
    Inductor), over a folder of 20 images of mixed aspect ratios."""
    monkeypatch.setenv("MMGDINO_CACHE_DIR", str(tmp_path / "cache"))
    detector = Detector(small_checkpoint.directory, device="cpu")
    compiled.compile_runner(detector.runner, packager=exported_only)
    images = _mixed_images(tmp_path)
    longest = detector.runner.image_processor.size["longest_edge"]
    buckets = set()
    for path in images:
        values, _ = detector.runner.pixels([Image.open(path).convert("RGB")])
        buckets.add(compiled.padded_size(*values.shape[-2:], longest))
    before = compiled.builds()
    results = detector.detect(images, ["w200 w201", "w202"], threshold=0.0, batch_size=1)
    assert len(results) == 20 and all(r for r in results)
    # one graph per bucket for each stage (one prompt, so one prompt bucket); 20 images, a few buckets
    assert compiled.builds() - before == 2 * len(buckets) and 2 <= len(buckets) <= 5
    detector.detect(images[:3], ["w203"], threshold=0.0, batch_size=1)  # another prompt, same prompt bucket
    assert compiled.builds() - before == 2 * len(buckets)


@pytest.mark.parametrize(
    "options, words",
    [
        (["--compile", "yes"], "invalid choice: 'yes'"),
        (["--calibration", "3"], "--calibration sets int8's ranges: it needs --dtype int8"),
        (["--dtype", "int8", "--calibration", "0"], "--calibration must be at least 1 image"),
        (["--dtype", "int4"], "invalid choice: 'int4'"),
    ],  # fmt: skip
)
def test_bad_new_options_are_one_line_and_exit_2(small_checkpoint, images, capsys, options, words):
    from mmgdino.cli import main

    try:
        code = main(["detect", str(images[0]), "--labels", "w200", "--model", str(small_checkpoint.directory),
                     "--device", "cpu", *options])  # fmt: skip
    except SystemExit as exc:  # argparse's own checks
        code = exc.code
    assert code == 2 and words in capsys.readouterr().err


def test_detector_refuses_a_bad_compile_value(small_checkpoint):
    with pytest.raises(UsageError, match="compile must be one of"):
        Detector(small_checkpoint.directory, device="cpu", compile="yes")


SECOND_PROCESS = """
import json, sys
from mmgdino import Detector, compiled
detector = Detector(sys.argv[1], device="cpu", compile=True)
found = detector.detect(sys.argv[2], ["w200 w201", "w202"], threshold=0.0)
print(json.dumps({"builds": compiled.builds(), "loads": compiled.loads(), "found": found}))
"""


def test_compiled_packages_are_built_once_and_reused_by_a_second_process(small_checkpoint, images, tmp_path,
                                                                         monkeypatch):  # fmt: skip
    """The real compile (AOTInductor, frozen weights): the first process builds the two packages, a second process
    loads them without compiling and detects the same; the compiled stages agree with eager on the same input."""
    monkeypatch.setenv("MMGDINO_CACHE_DIR", str(tmp_path / "cache"))
    command = [sys.executable, "-c", SECOND_PROCESS, str(small_checkpoint.directory), str(images[0])]
    runs = []
    for _ in range(2):
        done = subprocess.run(command, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-4000:]
        runs.append(json.loads(done.stdout))
    assert (runs[0]["builds"], runs[0]["loads"]) == (2, 0)
    assert (runs[1]["builds"], runs[1]["loads"]) == (0, 2)
    assert runs[1]["found"] == runs[0]["found"]

    # In this process, loaded from the cache too; against eager on the same padded pixels and prompt. (The counts
    # are per process: earlier tests here may have built packages of their own.)
    builds, loads = compiled.builds(), compiled.loads()
    detector = Detector(small_checkpoint.directory, device="cpu")
    eager = Detector(small_checkpoint.directory, device="cpu").runner
    compiled.compile_runner(detector.runner)
    runner = detector.runner
    prompt = [101, 200, 201, 1012, 202, 1012, 102]
    with torch.inference_mode():
        pixels = runner.pixels([Image.open(images[0]).convert("RGB")])
        logits, boxes = runner.predict(runner.encode_images(*pixels), [0], [prompt])
        padded = compiled.pad_pixels(*pixels, runner.image_processor.size["longest_edge"])
        expected_logits, expected_boxes = eager.predict(eager.encode_images(*padded), [0], [prompt])
    assert (compiled.builds() - builds, compiled.loads() - loads) == (0, 2)
    finite = torch.isfinite(expected_logits)
    assert torch.equal(torch.isfinite(logits), finite)
    torch.testing.assert_close(logits[finite], expected_logits[finite], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(boxes, expected_boxes, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("mode", "device", "images", "precision", "compiles"),
    [("auto", "cpu", 50, "bfloat16", True), ("auto", "cpu", 50, "int8", True),
     ("auto", "cpu", 50, "float32", True), ("auto", "cpu", 49, "bfloat16", False),
     ("auto", "cpu", 50, "float16", False), ("auto", "cuda", 500, "bfloat16", False),
     ("on", "cpu", 1, "float32", True), ("off", "cpu", 500, "int8", False), ("auto", "cpu", 50, torch.bfloat16, True)],
)  # fmt: skip
def test_auto_compiles_long_cpu_runs_where_it_pays(mode, device, images, precision, compiles):
    assert compiled.worth_compiling(mode, device, images, precision) is compiles


def test_auto_compile_follows_the_automatic_precision():
    from mmgdino.precision import automatic_dtype

    expected = automatic_dtype("cpu")[0] in compiled.COMPILE_PAYS
    assert compiled.worth_compiling("auto", "cpu", 100, "auto") is expected
