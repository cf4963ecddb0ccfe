"""`mmgdino train` on the command line: bad input is one line and exit code 2 before any training, a run on
bad data finishes with exit code 1 naming the images it could not use, Ctrl-C is 130, a rerun continues."""

import argparse
import json

import pytest
from datasets import add_bad_entries, make_scenes
from train_support import (
    no_hf_datasets,
    one_thread,  # noqa: F401  (a fixture)
    small_checkpoint,
)

pytest.importorskip("accelerate")

from mmgdino.cli import main  # noqa: E402
from mmgdino.training import TrainConfig  # noqa: E402
from mmgdino.training import command as train_command  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return small_checkpoint(tmp_path_factory.mktemp("checkpoint"))


def _argv(data, out, checkpoint, *more):
    return ["train", "--train-annotations", str(data / "scenes.json"), "--train-images", str(data / "images"),
            "--out", str(out), "--model", str(checkpoint), "--image-size", "48,64", "--batch-size", "2",
            "--max-steps", "2", "--logging-steps", "1", *more]  # fmt: skip


def _one_line(capsys):
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    assert err[0].startswith("mmgdino train: ")
    return err[0]


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda a, d: a.__setitem__(2, str(d / "nothing.json")), "no such file"),
        (lambda a, d: a.__setitem__(4, str(d / "no-folder")), "no such folder"),
        (lambda a, d: a.extend(["--val-annotations", a[2]]), "--val-annotations and --val-images together"),
        (lambda a, d: a.extend(["--batch-size", "0"]), "--batch-size must be a whole number >= 1"),
        (lambda a, d: a.extend(["--lr", "-1"]), "--lr must be a number > 0"),
        (lambda a, d: a.extend(["--flip", "1.5"]), "--flip must be a number >= 0 and <= 1"),
        (lambda a, d: a.extend(["--image-size", "16,20"]), "--image-size must be SHORTER,LONGER"),
        (lambda a, d: a.extend(["--scales", "900"]), "--scales must be whole numbers from 8"),
        (lambda a, d: a.extend(["--resume", str(d / "no-checkpoint")]), "no such checkpoint folder"),
        (lambda a, d: a.extend(["--dtype", "float16"]), "needs CUDA"),
        (lambda a, d: a.extend(["--device", "cuda"]), "not available"),
        (lambda a, d: a.__setitem__(8, str(d / "no-model")), "no such directory"),
        (lambda a, d: (d / "scenes.json").write_text("[1, 2]"), "not a COCO-format file"),
        (lambda a, d: a.extend(["--nproc-per-node", "0"]), "--nproc-per-node must be a whole number >= 1"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, checkpoint, capsys, change, words):
    make_scenes(tmp_path / "data", num_images=2)
    argv = _argv(tmp_path / "data", tmp_path / "out", checkpoint)
    change(argv, tmp_path / "data")
    assert main(argv) == 2
    line = _one_line(capsys)
    assert words in line, line
    assert not list((tmp_path / "out").glob("checkpoint-*"))


def test_a_run_on_bad_data_finishes_and_names_the_images_it_skipped(tmp_path, checkpoint, capsys):
    annotations, images = make_scenes(tmp_path / "data", num_images=4)
    add_bad_entries(annotations, images)
    assert main(_argv(tmp_path / "data", tmp_path / "out", checkpoint)) == 1
    captured = capsys.readouterr()
    printed = json.loads(captured.out.strip().splitlines()[-1])
    assert printed["model"] == str(tmp_path / "out" / "model")
    skipped = [line for line in captured.err.splitlines() if "image skipped" in line]
    assert len(skipped) == 2 * 3  # the three bad image files: named at the start and again at the end
    assert any("corrupt.png" in line for line in skipped) and any("missing.png" in line for line in skipped)
    report = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert report["timing"]["steps"] == 2 and report["data"]["train"]["issues"]["box_clipped"] == 1
    assert len(report["skipped_images"]) == 3  # not the annotation of an unknown image id: no file is missing


def test_ctrl_c_is_130_and_a_rerun_continues_but_not_with_other_settings(tmp_path, checkpoint, capsys, monkeypatch):
    from mmgdino.training import trainer

    make_scenes(tmp_path / "data", num_images=4)
    argv = _argv(tmp_path / "data", tmp_path / "out", checkpoint, "--save-steps", "1")

    def interrupt(self, args, state, control, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer.StepTiming, "on_save", interrupt, raising=False)
    assert main(argv) == 130
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == "mmgdino train: interrupted; rerun the same command to finish"
    monkeypatch.undo()
    no_hf_datasets(monkeypatch)
    assert main(argv[:-6] + ["--lr", "0.5", *argv[-6:]]) == 2
    assert "other settings (--lr 0.0001 there, 0.5 now)" in _one_line(capsys)
    assert main(argv) == 0
    report = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert report["resumed_from"].endswith("checkpoint-1") and report["timing"]["steps"] == 2


def test_the_command_line_is_the_config():
    config = TrainConfig(train_annotations="a.json", train_images="imgs", out="o", lr=3e-3, image_size=(64, 96),
                         scales=(48, 64), aux_loss=False, freeze="none", resume="no")  # fmt: skip
    argv = train_command.to_argv(config)
    assert "--no-aux-loss" in argv and "--image-size" in argv
    parser = argparse.ArgumentParser()
    train_command.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    assert train_command.config_from(args) == config
