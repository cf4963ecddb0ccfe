"""`mmgdino train --nproc-per-node 2`: two CPU processes on loopback (torchrun, gloo) against one process.

What the math says must be equal, and is tested: two processes with batch 1 each and one process with batch 2
take, step by step, the same images (dataset.EpochOrder), and DDP averages the two gradients of losses that are
each the process's share of the one-process loss (trainer.ddp_loss_scale), so the logged losses and the weights
after each step are those of one process with batch 2, up to float rounding: the two processes sum the batch in
another order. What would not be equal, and is avoided here: images of different sizes (one process pads them
into one batch, which changes the backbone's features; two processes do not), a data set that does not divide
into global batches (accelerate repeats images to fill the last one), a different intra-op thread count (both
runs use one thread: float sums change with it). The model has LayerNorm and GroupNorm only (per image), no
BatchNorm, so no statistic is shared across the batch.
"""

import json

import psutil
import pytest
import torch
from datasets import make_scenes
from safetensors.torch import load_file
from train_support import no_hf_datasets, small_checkpoint

pytest.importorskip("accelerate")

from mmgdino.cli import main  # noqa: E402

LR = 1e-4


def _argv(root, out, batch, *more):
    return ["train", "--train-annotations", str(root / "data" / "scenes.json"), "--model", str(root / "checkpoint"),
            "--train-images", str(root / "data" / "images"), "--out", str(out), "--image-size", "48,64",
            "--scales", "48", "--crop", "0", "--batch-size", str(batch), "--max-steps", "2", "--save-steps", "1",
            "--logging-steps", "1", "--lr", str(LR), "--seed", "5", *more]  # fmt: skip


def _losses(checkpoint):
    history = json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


def test_two_processes_train_as_one_with_their_combined_batch(tmp_path, monkeypatch, capsys):
    no_hf_datasets(monkeypatch)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    small_checkpoint(tmp_path / "checkpoint")
    make_scenes(tmp_path / "data", num_images=4)  # 4 images of 48x48: two global batches of 2
    try:
        assert main(_argv(tmp_path, tmp_path / "one", 2)) == 0
        assert main(_argv(tmp_path, tmp_path / "two", 1, "--nproc-per-node", "2")) == 0
    finally:
        torch.set_num_threads(threads)
    assert psutil.Process().children(recursive=True) == []  # torchrun and both workers are gone
    report = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert report["processes"] == 2 and report["timing"]["steps"] == 2
    for step in (1, 2):
        one, two = tmp_path / "one" / f"checkpoint-{step}", tmp_path / "two" / f"checkpoint-{step}"
        assert _losses(two) == pytest.approx(_losses(one), rel=1e-5)
        a, b = load_file(str(one / "model.safetensors")), load_file(str(two / "model.safetensors"))
        assert a.keys() == b.keys()
        differences = torch.cat([(a[k] - b[k]).abs().flatten() for k in a])
        # Adam's step is lr * g / (|g| + eps): rounding moves it a little where g is near eps
        assert differences.max() <= 0.25 * LR and (differences > 1e-2 * LR).float().mean() < 1e-3, step


@pytest.mark.parametrize(
    "more, words",
    [
        (["--batch-size", "0"], "--batch-size must be a whole number >= 1, got 0"),
        (["--train-annotations", "BAD"], "not a COCO-format file"),  # found only by reading the file
    ],
)
def test_a_usage_error_is_one_line_from_the_launcher_before_any_process_starts(tmp_path, capsys, more, words):
    small_checkpoint(tmp_path / "checkpoint")
    make_scenes(tmp_path / "data", num_images=2)
    (tmp_path / "bad.json").write_text("[]")
    more = [str(tmp_path / "bad.json") if m == "BAD" else m for m in more]
    capsys.readouterr()
    assert main(_argv(tmp_path, tmp_path / "out", 1, "--nproc-per-node", "2", *more)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mmgdino train: ") and words in err[0], err
