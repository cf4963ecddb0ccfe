"""`--ray`: detection and evaluation on a local Ray cluster bound to 127.0.0.1, against the single-process run;
a worker killed mid-run, an interrupted run resumed, a bad image; and the resource planning rules."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from datasets import make_dataset
from PIL import Image

from mmgdino import distributed, evaluation, sources
from mmgdino.cli import main
from mmgdino.detection import DetectJob
from mmgdino.errors import UsageError
from mmgdino.results import ResultStore

LABELS = ["w200", "w201"]


# ------------------------------------------------------------------ planning (no cluster)


@pytest.mark.parametrize(
    "resources, options, expected",
    [
        ({"CPU": 2}, {}, (1, 0, 1)),  # one CPU left to decode
        ({"CPU": 16}, {}, (15, 0, 1)),
        ({"CPU": 16}, {"cpus_per_worker": 4}, (3, 0, 4)),
        ({"CPU": 64, "GPU": 8}, {}, (8, 1, 0.5)),  # one actor per GPU
        ({"CPU": 64, "GPU": 8}, {"gpus_per_worker": 2}, (4, 2, 0.5)),
        ({"CPU": 4, "GPU": 1}, {"workers": 2, "gpus_per_worker": 0.5}, (2, 0.5, 0.5)),
    ],
)
def test_plan_leaves_a_cpu_to_decode_and_one_gpu_per_actor(resources, options, expected):
    assert distributed.plan(resources, distributed.RayOptions(**options)) == expected


@pytest.mark.parametrize(
    "resources, options, words",
    [
        ({"CPU": 2}, {"workers": 2}, "hang"),  # two actors holding both CPUs starve the decode tasks
        ({"CPU": 8}, {"cpus_per_worker": 8}, "hang"),
        ({"CPU": 8, "GPU": 1}, {"gpus_per_worker": 2}, "GPUs"),
        ({"CPU": 8, "GPU": 2}, {"workers": 3}, "GPUs"),
    ],
)
def test_plan_refuses_what_cannot_run(resources, options, words):
    with pytest.raises(UsageError, match=words):
        distributed.plan(resources, distributed.RayOptions(**options))


# ------------------------------------------------------------------ on a local cluster


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """One local cluster for the module: loopback only, Ray's files and HOME in temporary folders, every process
    it started gone at the end."""
    pytest.importorskip("ray.data")
    home = tmp_path_factory.mktemp("home")
    saved = {k: os.environ.get(k) for k in ("HOME", "RAY_AUTH_MODE", "RAY_USAGE_STATS_ENABLED")}
    os.environ["HOME"] = str(home)
    context = distributed.cluster("local")
    ray = context.__enter__()
    try:
        nodes = ray.nodes()
        assert [n["NodeManagerAddress"] for n in nodes] == ["127.0.0.1"]
        session = Path(ray.get_runtime_context().gcs_address)  # noqa: F841  (the cluster answers)
        yield ray
    finally:
        context.__exit__(None, None, None)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    assert not (home / ".ray" / "auth_token").exists()
    leftover = subprocess.run(["pgrep", "-f", "mmgdino-ray-"], capture_output=True, text=True).stdout.split()
    assert leftover == [], "Ray processes outlived the cluster"


@pytest.fixture(scope="module")
def checkpoint(small_checkpoint):
    return small_checkpoint.directory


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """Two dozen images in nested folders."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(24):
        folder = root / f"part{i % 3}" / ("deep" if i % 2 else "")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40 + i, 56, 3), dtype=np.uint8)).save(folder / f"img{i:02d}.png")
    return root


def _records(path):
    rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
    return sorted((r["image"], r["label"], round(r["score"], 3) if r["score"] is not None else None,
                   tuple(round(v, 1) for v in r["box"]) if r["box"] else None) for r in rows)  # fmt: skip


def _detect_argv(images, out, checkpoint, extra=()):
    return ["detect", str(images), "--labels", *LABELS, "--model", str(checkpoint), "--threshold", "0.0",
            "--out", str(out), *extra]  # fmt: skip


def test_ray_detect_writes_what_the_single_process_run_writes(ray_cluster, checkpoint, image_folder, tmp_path):
    # One image per forward in both: a padded batch depends on which images share it, which Ray decides.
    assert main(_detect_argv(image_folder, tmp_path / "single.jsonl", checkpoint)) == 0
    # The README's command for a 2-CPU machine: two half-CPU actors, each with this process's thread count.
    small_machine = ["--ray", "--batch-size", "1", "--workers", "2", "--cpus-per-worker", "0.5"]
    assert main(_detect_argv(image_folder, tmp_path / "ray.jsonl", checkpoint, small_machine)) == 0
    single, on_ray = _records(tmp_path / "single.jsonl"), _records(tmp_path / "ray.jsonl")
    assert on_ray == single
    assert len({r[0] for r in on_ray}) == 24
    # the progress file is the same format: the single-process run would resume from the Ray run's output
    settings = [json.loads(p.read_text().splitlines()[0]) for p in tmp_path.glob("*.progress")]
    assert settings[0] == settings[1]


def test_a_worker_killed_mid_run_still_gives_every_image_once(ray_cluster, checkpoint, image_folder, tmp_path):
    marker = tmp_path / "died"
    job = DetectJob(str(checkpoint), threshold=0.0, batch_size=1,
                    fault_injection={"marker": str(marker), "after_batches": 1})  # fmt: skip
    found = sources.list_images([image_folder], {".png"})
    store = ResultStore(tmp_path / "out.jsonl", {"test": 1})
    versions = dict(found)
    store.open(versions)
    try:
        summary = distributed.run(job, [(k, LABELS) for k, _ in found], store, versions,
                                  distributed.RayOptions(batch_size=3), progress=False)  # fmt: skip
    finally:
        store.close()
    assert marker.exists(), "the injected failure did not happen"
    images = [json.loads(line)["image"] for line in (tmp_path / "out.jsonl.progress").read_text().splitlines()[1:]]
    assert sorted(images) == sorted(versions) and summary.images == 24 and not summary.failures


def test_an_interrupted_ray_run_resumes_without_duplicates(ray_cluster, checkpoint, image_folder, tmp_path,
                                                          monkeypatch):  # fmt: skip
    out = tmp_path / "out.jsonl"
    real_add = ResultStore.add
    written = []

    def interrupt_after_five(self, key, *args):
        if len(written) == 5:
            raise KeyboardInterrupt
        written.append(key)
        real_add(self, key, *args)

    monkeypatch.setattr(ResultStore, "add", interrupt_after_five)
    assert main(_detect_argv(image_folder, out, checkpoint, ["--ray"])) == 130
    monkeypatch.setattr(ResultStore, "add", real_add)
    calls = []
    monkeypatch.setattr(distributed, "run", _counting(distributed.run, calls))
    assert main(_detect_argv(image_folder, out, checkpoint, ["--ray"])) == 0
    assert calls == [24 - 5]  # only the missing images went to the cluster
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    per_image = {}
    for row in rows:
        per_image.setdefault(row["image"], []).append(row)
    assert len(per_image) == 24
    assert _records(out) == _records_single(checkpoint, image_folder, tmp_path)


def _counting(run, calls):
    def wrapper(job, items, *args, **kwargs):
        calls.append(len(items))
        return run(job, items, *args, **kwargs)

    return wrapper


def _records_single(checkpoint, image_folder, tmp_path):
    assert main(_detect_argv(image_folder, tmp_path / "single.jsonl", checkpoint)) == 0
    return _records(tmp_path / "single.jsonl")


def test_a_bad_image_is_reported_and_the_rest_finish(ray_cluster, checkpoint, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (48, 40), (i * 40, 10, 10)).save(folder / f"ok{i}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    out = tmp_path / "out.jsonl"
    assert main(_detect_argv(folder, out, checkpoint, ["--ray"])) == 1
    err = capsys.readouterr().err
    assert "broken.png" in err and "1 failed" in err
    assert {Path(r[0]).name for r in _records(out)} == {"ok0.png", "ok1.png", "ok2.png"}


def test_ray_eval_equals_the_single_process_eval(ray_cluster, checkpoint, tmp_path):
    path, images = make_dataset(tmp_path / "data", num_images=6, nested=True)
    small = (128, 160)  # the protocol's 800x1333 costs seconds per image with this model on 2 CPUs
    single = evaluation.evaluate(path, images, tmp_path / "single", model=checkpoint, progress=False, scale=small)
    on_ray = evaluation.evaluate(path, images, tmp_path / "ray", model=checkpoint, progress=False, scale=small,
                                 ray=distributed.RayOptions())  # fmt: skip
    assert on_ray["metrics"] == pytest.approx(single["metrics"], abs=1e-9)
    ours = json.loads((tmp_path / "ray" / "detections.json").read_text())
    theirs = json.loads((tmp_path / "single" / "detections.json").read_text())
    key = lambda d: (d["image_id"], d["category_id"], round(d["score"], 4))  # noqa: E731
    assert sorted(map(key, ours)) == sorted(map(key, theirs))
    assert on_ray["ray"]["workers"]


def test_ray_usage_errors_are_one_line(tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "a.png")
    for extra, words in ((["--workers", "2"], "need --ray"), (["--ray", "--draw", str(tmp_path / "d")], "--draw"),
                         (["--ray", "--workers", "0"], "--workers")):  # fmt: skip
        argv = ["detect", str(folder), "--labels", "x", "--model", str(tmp_path), "--out", str(tmp_path / "o.jsonl")]
        assert main(argv + extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err
