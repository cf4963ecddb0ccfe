"""`mmgdino train` end to end on generated scenes with the tiny random-weight model: it learns, its step is
transformers' step, it resumes exactly, its checkpoints load in both classes, LoRA and freezing do what they say,
and it reports. One intra-op thread throughout: tiny operators on two shared cores run several times faster on
one thread, and runs that are compared bit for bit must use the same count."""

import json
import time

import pytest
import torch
from datasets import make_scenes
from safetensors.torch import load_file
from train_support import (
    SMALL_SIZE,
    no_hf_datasets,
    one_thread,  # noqa: F401  (a fixture)
    small_checkpoint,
)

pytest.importorskip("accelerate")
pytest.importorskip("faster_coco_eval")

from mmgdino.training import train  # noqa: E402
from mmgdino.training import trainer as trainer_module  # noqa: E402

FIXED = dict(scales=(48,), image_size=SMALL_SIZE, crop=0.0)  # one scale, no crop: 48-pixel scenes as they are


pytestmark = pytest.mark.usefixtures("one_thread")


def _weights(folder):
    return load_file(str(folder / "model.safetensors"))


def _parameters(folder):
    """The parameters as transformers' class names them once loaded (it renames some keys when saving)."""
    from transformers import AutoModelForZeroShotObjectDetection

    model = AutoModelForZeroShotObjectDetection.from_pretrained(folder)
    return {name: p.detach() for name, p in model.named_parameters()}


# ------------------------------------------------------------------ it learns


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    """400 steps on 8 scenes of one object each (all in each batch), evaluated on the same scenes every 100
    steps: the proof that training learns. mmdetection's recipe but for the learning rate (3e-3, the backbone at
    full rate: random weights, not a pretrained model) and one fixed scale; flips on, so a wrong box flip would
    show. A model this small is chaotic (float-level differences change which query matches which box after a
    dozen steps); with one object per image the final AP stayed between 0.74 and 0.79 over seeds and both model
    classes here, where two objects per image gave 0.43 to 0.90."""
    root = tmp_path_factory.mktemp("learn")
    with pytest.MonkeyPatch.context() as patch:
        no_hf_datasets(patch)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        checkpoint = small_checkpoint(root / "checkpoint")
        annotations, images = make_scenes(root / "data", num_images=8, max_objects=1)
        began = time.time()
        report = train(train_annotations=annotations, train_images=images, val_annotations=annotations,
                       val_images=images, holdout_annotations=annotations, holdout_images=images,
                       out=root / "out", model=str(checkpoint), lr=3e-3, backbone_lr_mult=1.0, batch_size=8,
                       max_steps=400, save_steps=100, logging_steps=50, progress=False, **FIXED)  # fmt: skip
        torch.set_num_threads(threads)
    return report, root, time.time() - began


def test_training_learns_the_scenes(learned):
    report, _, seconds = learned
    losses = [e["loss"] for e in report["epochs"] if "loss" in e]
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    before, after = report["holdout"]["before"]["AP"], report["holdout"]["after"]["AP"]
    print(f"\nloss {first:.2f} -> {last:.2f}, AP {before:.3f} -> {after:.3f} in {seconds / 60:.1f} min")
    assert last < 0.6 * first
    assert before < 0.05 and after >= 0.5
    evaluated = [e["AP"] for e in report["epochs"] if "AP" in e]
    assert len(evaluated) == 4 and report["best"]["AP"] == max(evaluated) == after


def test_checkpoints_load_in_transformers_and_mmgdino_alike(learned):
    from transformers import AutoModelForZeroShotObjectDetection

    from mmgdino import MMGroundingDinoForObjectDetection

    report, root, _ = learned
    folder = root / "out" / "model"
    assert report["model_dir"] == str(folder) and "best checkpoint" in report["model_is"]
    theirs = AutoModelForZeroShotObjectDetection.from_pretrained(folder).eval()
    ours = MMGroundingDinoForObjectDetection.from_pretrained(folder)
    inputs = dict(pixel_values=torch.randn(1, 3, 48, 48), input_ids=torch.tensor([[101, 210, 1012, 211, 1012, 102]]))
    with torch.no_grad():
        a, b = theirs(**inputs), ours(**inputs)
    assert torch.allclose(a.pred_boxes, b.pred_boxes, atol=1e-5)
    assert torch.allclose(a.logits[..., :6], b.logits[..., :6], atol=1e-4)
    for checkpoint in sorted((root / "out").glob("checkpoint-*")):  # every checkpoint is such a folder
        assert (checkpoint / "config.json").is_file() and (checkpoint / "model.safetensors").is_file()


def test_the_report_has_its_files_and_numbers(learned):
    report, root, _ = learned
    out = root / "out"
    written = json.loads((out / "metrics.json").read_text())
    assert written["epochs"] == report["epochs"] and written["timing"]["steps"] == 400
    assert written["timing"]["median_seconds_per_step"] > 0 and written["peak_memory_bytes"] > 2**20
    assert written["cost"]["device_hours"] > 0 and written["processes"] == 1
    assert written["frozen"] == ["text"] and written["data"]["train"]["images"] == 8
    assert "| epoch | loss | AP | AP50 |" in (out / "summary.md").read_text()
    assert (out / "report.png").stat().st_size > 1000 and (out / "data-issues.txt").is_file()
    assert sorted(p.name for p in (out / "eval").iterdir()) == ["epoch-100", "epoch-200", "epoch-300", "epoch-400"]
    assert (out / "holdout-before" / "metrics.json").is_file() and (out / "holdout-after" / "metrics.json").is_file()


# ------------------------------------------------------------------ a step is transformers' step


def test_one_step_equals_transformers_model_trained_the_same_way(tmp_path, monkeypatch):
    """One optimizer step through `mmgdino train` (its model class, Trainer, parameter groups, clipping) against
    a hand-written step of transformers' model on the batch the Trainer drew: the loss and the updated weights
    agree (with transformers' own class in the loop they are identical). Where a clipped gradient is below 1e-7,
    ten times Adam's epsilon, the first step lr * g / (|g| + 1e-8) turns float differences between two
    implementations into different steps (sign flips where g is at noise level), so those weights are counted,
    not compared."""
    from transformers import AutoModelForZeroShotObjectDetection

    from mmgdino.training import prompts

    batches = []
    collate = prompts.Collator.__call__
    monkeypatch.setattr(prompts.Collator, "__call__", lambda self, samples: batches.append(collate(self, samples))
                        or batches[-1])  # fmt: skip
    checkpoint = small_checkpoint(tmp_path / "checkpoint")
    annotations, images = make_scenes(tmp_path / "data", num_images=4)
    settings = dict(lr=1e-3, backbone_lr_mult=0.5, weight_decay=1e-2, max_grad_norm=0.1)
    report = train(train_annotations=annotations, train_images=images, out=tmp_path / "out", model=str(checkpoint),
                   batch_size=4, max_steps=1, logging_steps=1, progress=False, **FIXED, **settings)  # fmt: skip
    state = json.loads((tmp_path / "out" / "checkpoint-1" / "trainer_state.json").read_text())
    trained_loss = next(entry["loss"] for entry in state["log_history"] if "loss" in entry)
    trained = dict(AutoModelForZeroShotObjectDetection.from_pretrained(tmp_path / "out" / "model").named_parameters())

    reference = AutoModelForZeroShotObjectDetection.from_pretrained(checkpoint)
    reference.config.auxiliary_loss = True
    reference.train()
    groups = {"backbone": [], "rest": []}
    for name, parameter in reference.named_parameters():
        if name.startswith("model.text_backbone."):  # frozen: a small training set
            parameter.requires_grad_(False)
        else:
            groups["backbone" if name.startswith("model.backbone.") else "rest"].append(parameter)
    optimizer = torch.optim.AdamW([{"params": groups["backbone"], "lr": 5e-4}, {"params": groups["rest"]}],
                                  lr=1e-3, weight_decay=1e-2)  # fmt: skip
    before = {name: p.detach().clone() for name, p in reference.named_parameters()}
    loss = reference(**batches[-1]).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in reference.parameters() if p.requires_grad], 0.1)
    optimizer.step()
    print(f"\ntrained {report['trained_class']}: loss {trained_loss} vs transformers' {loss.item()}")
    assert trained_loss == pytest.approx(loss.item(), rel=1e-5)
    compared = uncompared = 0
    largest = 0.0
    for name, parameter in reference.named_parameters():
        if not parameter.requires_grad:
            assert torch.equal(trained[name], before[name]), name
            continue
        lr = 5e-4 if name.startswith("model.backbone.") else 1e-3
        gradient = parameter.grad if parameter.grad is not None else torch.zeros_like(parameter)
        steady = gradient.abs() >= 1e-7
        difference = ((trained[name] - before[name]) - (parameter - before[name])).detach().abs()[steady]
        largest = max(largest, float(difference.max() / lr) if difference.numel() else 0.0)
        compared, uncompared = compared + int(steady.sum()), uncompared + int((~steady).sum())
    print(f"updates: largest difference {largest:.2e} x lr over {compared} weights; {uncompared} not compared")
    assert largest <= 1e-2 and uncompared < 0.25 * (compared + uncompared)


# ------------------------------------------------------------------ resuming


class Interrupted(Exception):
    pass


def _run(root, out, **changes):
    settings = dict(train_annotations=root / "data" / "scenes.json", train_images=root / "data" / "images",
                    val_annotations=root / "data" / "scenes.json", val_images=root / "data" / "images",
                    out=out, model=str(root / "checkpoint"), epochs=2, batch_size=2, save_steps=3, lr=1e-3,
                    image_size=SMALL_SIZE, logging_steps=1, progress=False, seed=3)  # fmt: skip
    settings.update(changes)
    return train(**settings)


def test_interrupted_training_resumes_exactly(tmp_path, monkeypatch):
    """Augmentations on (flips, crops, several scales: padded batches), dropout on, a checkpoint mid-epoch: the
    interrupted run, resumed, ends with the uninterrupted run's weights and losses, bit for bit."""
    small_checkpoint(tmp_path / "checkpoint", dropout=0.1)
    make_scenes(tmp_path / "data", num_images=8)
    whole = _run(tmp_path, tmp_path / "whole")

    def stop_after_the_first_checkpoint(self, args, state, control, **kwargs):
        if state.global_step == 3:
            raise Interrupted

    monkeypatch.setattr(trainer_module.StepTiming, "on_save", stop_after_the_first_checkpoint, raising=False)
    with pytest.raises(Interrupted):
        _run(tmp_path, tmp_path / "split")
    monkeypatch.undo()
    no_hf_datasets(monkeypatch)
    assert sorted(p.name for p in (tmp_path / "split").glob("checkpoint-*")) == ["checkpoint-3"]
    resumed = _run(tmp_path, tmp_path / "split", resume="auto")
    assert resumed["resumed_from"].endswith("checkpoint-3") and resumed["timing"]["steps"] == 8
    for name in ("checkpoint-6", "checkpoint-8"):
        a, b = _weights(tmp_path / "whole" / name), _weights(tmp_path / "split" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert resumed["epochs"] == whole["epochs"]  # losses and APs of every epoch, the first one from the checkpoint


# ------------------------------------------------------------------ what is trained


def test_frozen_parts_keep_their_weights_and_groups_get_their_rates(tmp_path):
    checkpoint = small_checkpoint(tmp_path / "checkpoint")
    annotations, images = make_scenes(tmp_path / "data", num_images=4)
    start = _weights(checkpoint)
    report = train(train_annotations=annotations, train_images=images, out=tmp_path / "out", model=str(checkpoint),
                   batch_size=4, max_steps=2, freeze="text+backbone", progress=False, **FIXED)  # fmt: skip
    end = _weights(tmp_path / "out" / "model")
    assert report["frozen"] == ["text", "backbone"]
    frozen = [k for k in start if k.startswith(("model.backbone.", "model.text_backbone."))]
    trained = [k for k in start if k not in frozen]
    assert all(torch.equal(start[k], end[k]) for k in frozen)
    # transformers' encoder loss scores detached proposals: no gradient reaches the proposal heads.
    proposal_heads = ("model.enc_output.", "model.enc_output_norm.", "model.encoder_output_bbox_embed.")
    assert all(not torch.equal(start[k], end[k]) for k in trained if not k.startswith(proposal_heads))

    model = torch.nn.Module()
    model.model = torch.nn.Module()
    model.model.backbone = torch.nn.Linear(2, 2)
    model.model.text_backbone = torch.nn.Linear(2, 2)
    model.head = torch.nn.Linear(2, 2)
    groups = trainer_module.param_groups(model, 1e-4, 0.1, 0.0, 1e-4)  # text at 0: left out
    assert sorted((g["part"], g["lr"]) for g in groups) == [("backbone", pytest.approx(1e-5)), ("rest", 1e-4)]


def test_the_step_schedule_cuts_the_rate_for_the_last_twelfth():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = trainer_module.step_schedule(optimizer, warmup_steps=2, total_steps=24)
    rates = []
    for _ in range(24):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates[:3] == [0.5, 1.0, 1.0] and rates[21] == 1.0 and rates[22:] == pytest.approx([0.1, 0.1])


def test_lora_trains_adapters_only_and_checkpoints_hold_the_merged_weights(tmp_path):
    pytest.importorskip("peft")
    checkpoint = small_checkpoint(tmp_path / "checkpoint")
    annotations, images = make_scenes(tmp_path / "data", num_images=4)
    start = _parameters(checkpoint)
    common = dict(train_annotations=annotations, train_images=images, model=str(checkpoint), batch_size=4, lr=1e-2,
                  lora_rank=4, schedule="constant", progress=False, **FIXED)  # fmt: skip
    report = train(out=tmp_path / "out", max_steps=4, **common)
    targets = report["lora"]["targets"]
    assert report["lora"]["rank"] == 4 and report["lora"]["alpha"] == 8 and len(targets) > 10
    assert not any(t.startswith("model.text_backbone.") for t in targets)  # frozen parts get no adapters
    end = _parameters(tmp_path / "out" / "model")  # a plain checkpoint: transformers' class reads it
    adapted = {t + ".weight" for t in targets}
    assert adapted <= end.keys()
    assert all(torch.equal(start[k], end[k]) for k in start if k not in adapted)
    assert sum(not torch.equal(start[k], end[k]) for k in adapted) > len(adapted) // 2
    # Two steps, then two more from that checkpoint: the adapters come back, and it ends where four steps end.
    train(out=tmp_path / "split", max_steps=2, save_steps=2, **common)
    train(out=tmp_path / "split", max_steps=4, save_steps=2, resume="auto", **common)
    split = _parameters(tmp_path / "split" / "model")
    assert all(torch.allclose(split[k], end[k], atol=1e-6) for k in end)


def test_mixed_precision_workers_and_a_vocabulary_longer_than_the_prompt(tmp_path):
    """bfloat16 autocast on the CPU, two data-loader processes, and twelve classes in a 16-token prompt (each
    image's own prompt: its classes and sampled negatives) train without a hitch."""
    checkpoint = small_checkpoint(tmp_path / "checkpoint")
    annotations, images = make_scenes(tmp_path / "data", num_images=4)
    data = json.loads(annotations.read_text())
    data["categories"] += [{"id": 10 + k, "name": f"w{300 + k}"} for k in range(9)]
    annotations.write_text(json.dumps(data))
    report = train(train_annotations=annotations, train_images=images, out=tmp_path / "out", model=str(checkpoint),
                   batch_size=2, max_steps=2, dtype="bfloat16", workers=2, negatives=3, progress=False,
                   **FIXED)  # fmt: skip
    assert "its classes and up to 3 others, within 16 tokens" in report["data"]["prompt"]
    assert report["timing"]["steps"] == 2 and all(e["loss"] > 0 for e in report["epochs"])


def test_gradient_checkpointing_runs_or_is_refused_in_one_line(tmp_path):
    from mmgdino.errors import UsageError
    from mmgdino.training import model as model_parts

    checkpoint = small_checkpoint(tmp_path / "checkpoint")
    annotations, images = make_scenes(tmp_path / "data", num_images=2)
    settings = dict(train_annotations=annotations, train_images=images, out=tmp_path / "out", model=str(checkpoint),
                    gradient_checkpointing=True, max_steps=1, batch_size=2, progress=False, **FIXED)  # fmt: skip
    if getattr(model_parts.build_model(checkpoint), "supports_gradient_checkpointing", False):
        assert train(**settings)["timing"]["steps"] == 1
    else:  # transformers' MM Grounding DINO has none
        with pytest.raises(UsageError, match="--gradient-checkpointing: .* does not support it"):
            train(**settings)
