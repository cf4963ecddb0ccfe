"""`mmgdino.training.train`: one fine-tuning run, from the checked settings to the report.

Order: settings and files checked (UsageError, before anything loads) -> training data read and checked (its
problems reported, one line each) -> model and processor -> parts frozen / LoRA -> the held-out set evaluated
(zero-shot guard, before) -> transformers' Trainer (trainer.py) -> the final model (the best checkpoint by
validation AP, else the last) copied to OUT/model -> the held-out set evaluated again (after) -> the report.

Files in OUT: train-settings.json (what a rerun must share to continue), checkpoint-N/ (the Trainer's: a
save_pretrained folder plus optimizer, scheduler and random states), model/ (the model to use), eval/epoch-E/
(`mmgdino eval`'s output per evaluation), holdout-before/ and holdout-after/, data-issues.txt, metrics.json,
summary.md, report.png.
"""

import json
import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from .. import evaluation
from ..errors import UsageError
from ..loading import DEFAULT_MODEL, check_device_and_dtype, load_processor
from . import model as model_parts
from . import report as reporting
from .augment import Augmentation
from .config import TrainConfig
from .data import read_training_set
from .dataset import TrainingImages
from .evaluation_hook import run_protocol
from .prompts import Collator, PromptSampler

# What a checkpoint holds beyond the model: left out of OUT/model.
TRAINING_STATE = ("optimizer.pt", "scheduler.pt", "trainer_state.json", "training_args.bin", "scaler.pt")
TRAIN_EXTRA = "pip install 'mmgdino[train]'"
RUN_SETTINGS = "train-settings.json"


def _is_main_process():
    return int(os.environ.get("RANK", "0")) == 0


def _requirements(config):
    for module, why in (("accelerate", "transformers' Trainer"), ("peft", "--lora-rank")):
        if module == "peft" and not config.lora_rank:
            continue
        try:
            __import__(module)
        except ImportError:
            raise UsageError(f"{why} needs {module}: {TRAIN_EXTRA}") from None
    try:
        __import__("faster_coco_eval")
    except ImportError:
        if config.val_annotations or config.holdout_annotations:
            raise UsageError(f"evaluation needs faster-coco-eval: {TRAIN_EXTRA}") from None


def _resume_from(config, out, main):
    """The checkpoint to continue from (None: start over). A rerun into an --out holding checkpoints continues
    them, after checking that it is the same run (RUN_SETTINGS)."""
    if config.resume == "no":
        checkpoint = None
    elif config.resume != "auto":
        checkpoint = str(config.resume)
    else:
        from transformers.trainer_utils import get_last_checkpoint

        checkpoint = get_last_checkpoint(str(out))
    saved, settings = out / RUN_SETTINGS, config.run_settings()
    if checkpoint and config.resume == "auto" and saved.is_file():
        before = json.loads(saved.read_text())
        changed = [k for k in settings if before.get(k) != settings[k]]
        if changed:
            k = changed[0]
            raise UsageError(f"--out {out} holds a run with other settings (--{k.replace('_', '-')} "
                             f"{before.get(k)!r} there, {settings[k]!r} now); use another --out, or --resume no to "
                             "start over")  # fmt: skip
    if main:
        saved.write_text(json.dumps(settings, indent=1) + "\n")
    return checkpoint


def _setup(config):
    """The device, after the packages and the dtype are checked (UsageError)."""
    _requirements(config)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[config.dtype]
    device, _ = check_device_and_dtype(config.device, dtype)
    if config.dtype == "float16" and device.type != "cuda":
        raise UsageError("--dtype float16 (mixed precision) needs CUDA; use bfloat16 on CPUs")
    return device


def _evaluation_sets(config):
    for kind in ("val", "holdout"):
        if getattr(config, f"{kind}_annotations"):
            evaluation.load_dataset(getattr(config, f"{kind}_annotations"), getattr(config, f"{kind}_images"), "coco")


def check_before_launch(config):
    """What `train` checks before it trains, for a launcher to run once before it starts the processes, so that
    a usage error is one line from one process: settings, packages, device, data files, the model's processor."""
    config.check()
    _setup(config)
    _evaluation_sets(config)
    read_training_set(config.train_annotations, config.train_images, config.empty_images)
    load_processor(config.model or DEFAULT_MODEL)


def _copy_model(checkpoint, destination):
    destination = Path(destination)
    if destination.exists():
        shutil.rmtree(destination)
    destination.mkdir(parents=True)
    for item in Path(checkpoint).iterdir():
        if item.is_file() and item.name not in TRAINING_STATE and not item.name.startswith("rng_state"):
            shutil.copy2(item, destination / item.name)
    return destination


def train(config=None, log=None, **settings):
    """Fine-tunes as `mmgdino train` does. `config` is a TrainConfig, or give its fields as keyword arguments
    (train_annotations=, train_images=, out=, model=, val_annotations=, ...). Returns the report (metrics.json's
    content) in the main process, None in the others of a multi-process run."""
    config = (config or TrainConfig(**settings)).check()
    main = _is_main_process()
    say = (log or (lambda m: print(f"mmgdino train: {m}", file=sys.stderr, flush=True))) if main else (lambda m: None)
    device = _setup(config)
    out = Path(config.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot create the folder ({exc.strerror or exc})") from None
    checkpoint = _resume_from(config, out, main)
    val_protocol = "coco"
    _evaluation_sets(config)

    training_set = read_training_set(config.train_annotations, config.train_images, config.empty_images)
    say(training_set.summary())
    for line in training_set.report_lines():
        say(line)
    if main:
        (out / "data-issues.txt").write_text("".join(i.line() + "\n" for i in training_set.issues))

    where = config.model or DEFAULT_MODEL
    processor = load_processor(where)
    # A resumed run reads its weights from the checkpoint, through the class's own loader (transformers renames
    # keys when it saves: a plain state-dict load, the Trainer's, would miss them). With LoRA the base weights
    # are the starting model's and only the adapters come from the checkpoint.
    model = model_parts.build_model(checkpoint if checkpoint and not config.lora_rank else where)
    model.config.auxiliary_loss = config.aux_loss
    if config.gradient_checkpointing and not getattr(model, "supports_gradient_checkpointing", False):
        raise UsageError(f"--gradient-checkpointing: {type(model).__name__} of {type(model).__module__} does not "
                         "support it")  # fmt: skip
    prompts = PromptSampler(training_set.names, processor.tokenizer, model.config.max_text_len, config.negatives)
    say(prompts.describe())
    augmentation = Augmentation.scaled(*config.image_size, flip=config.flip, crop=config.crop)
    if config.scales:
        augmentation = replace(augmentation, scales=tuple(config.scales))
    image_processor = processor.image_processor
    dataset = TrainingImages(training_set, augmentation, image_processor.image_mean, image_processor.image_std,
                             seed=config.seed)  # fmt: skip
    collator = Collator(prompts)
    frozen = config.frozen_parts(len(training_set.images))
    trainable = model_parts.freeze(model, frozen)
    if config.lora_rank:
        torch.manual_seed(config.seed)
        alpha = config.lora_alpha or 2 * config.lora_rank
        targets = model_parts.add_lora(model, config.lora_rank, alpha, collator([dataset[0]]), frozen)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        say(f"LoRA rank {config.lora_rank} on {len(targets)} linear layers")
        if checkpoint:
            model_parts.load_lora(model, checkpoint)
    say(f"frozen: {', '.join(frozen) or 'nothing'}; {trainable:,} trainable parameters; "
        f"{'resuming from ' + checkpoint if checkpoint else 'starting from ' + str(where)}")  # fmt: skip

    holdout = {}
    if config.holdout_annotations and main:
        # the starting model as the checkpoint holds it: a resumed run has other weights in memory
        holdout["before"] = _holdout(config, str(where), processor, out / "holdout-before", device, reuse=True)
        say(f"held-out set before training: AP {holdout['before']['AP']:.4f}")

    record = reporting.RunRecord(config, out, val_protocol)
    trainer = _trainer(config, model, processor, dataset, collator, record, device, checkpoint)
    began = time.time()
    trainer.train(resume_from_checkpoint=checkpoint)
    wall = time.time() - began
    peak, peak_kind = reporting.peak_memory(trainer.args.device)
    if not main:
        return None

    state = trainer.state
    best = state.best_model_checkpoint if config.val_annotations else None
    if best:
        final = _copy_model(best, out / "model")
        model_is = f"the best checkpoint by validation AP, {Path(best).name}"
    else:
        if (out / "model").exists():
            shutil.rmtree(out / "model")
        model_parts.save_checkpoint(trainer.accelerator.unwrap_model(trainer.model), processor, out / "model")
        final, model_is = out / "model", f"the last weights, step {state.global_step}"
    if config.holdout_annotations:
        holdout["after"] = _holdout(config, str(final), processor, out / "holdout-after", device)
        holdout["change"] = round(holdout["after"]["AP"] - holdout["before"]["AP"], 6)
        say(f"held-out set after training: AP {holdout['after']['AP']:.4f} ({holdout['change']:+.4f})")

    epochs = reporting.epochs_from_history(state.log_history)
    result = {
        "model": str(where),
        "trained_class": f"{type(trainer.accelerator.unwrap_model(trainer.model)).__module__}."
        f"{type(trainer.accelerator.unwrap_model(trainer.model)).__name__}",
        "model_dir": str(final),
        "model_is": model_is,
        "best": {"checkpoint": best, "AP": state.best_metric} if best else None,
        "evaluations": record.evaluations,
        "epochs": epochs,
        "timing": reporting.timing(record.step_seconds, state.global_step, wall),
        "peak_memory_bytes": peak,
        "peak_memory_kind": peak_kind,
        "cost": reporting.cost(wall, trainer.args.world_size, trainer.args.device, config.cost_per_hour),
        "holdout": holdout or None,
        "data": {"train": training_set.description(), "prompt": prompts.describe()},
        "skipped_images": training_set.skipped_images(),
        "frozen": list(frozen),
        "trainable_parameters": trainable,
        "lora": getattr(model, "lora_settings", None),
        "resumed_from": checkpoint,
        "processes": trainer.args.world_size,
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(config).items()},
        "environment": reporting.environment(trainer.args.device),
    }
    title = f"{Path(config.train_annotations).name}: {len(training_set.images)} images, {state.global_step} steps"
    chart = reporting.draw_chart(epochs, out / "report.png", title)
    result["chart"] = str(chart) if chart else "not drawn: pip install matplotlib"
    reporting.write(out, result)
    say(f"done: {state.global_step} steps in {wall:.0f} s; model in {final}; report in {out / 'metrics.json'}")
    return result


def _holdout(config, model, processor, folder, device, reuse=False):
    if reuse and (folder / "metrics.json").is_file():  # a resumed run measured the starting model already
        return json.loads((folder / "metrics.json").read_text())["metrics"]
    return run_protocol(model, processor, config.holdout_annotations, config.holdout_images, folder,
                        config.eval_scale, "coco", device)["metrics"]  # fmt: skip


def _trainer(config, model, processor, dataset, collator, record, device, checkpoint):
    from .trainer import DetectionTrainer, StepTiming, training_arguments

    has_validation = config.val_annotations is not None
    args = training_arguments(config, config.out, has_validation, device.type)
    trainer = DetectionTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        eval_dataset=[config.val_annotations] if has_validation else None,  # evaluate() reads the files itself
        data_collator=collator,
        processing_class=processor,
        callbacks=[StepTiming(record), record.losses],
        run=record,
    )
    record.losses.trainer = trainer
    if checkpoint:
        record.losses.restore(checkpoint)
    return trainer
