"""Every setting of a training run, its default, its command-line flag and its check, in one table (`TrainConfig`'s
fields; `mmgdino train --help` is generated from them). Defaults are mmdetection's MM Grounding DINO fine-tune
recipe (AdamW 1e-4, weight decay 1e-4, backbone and language model at 0.1x, gradient norm clipped at 0.1, 12
epochs with the learning rate cut 10x for the last, flip and multi-scale resize with random crops)."""

import math
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..errors import UsageError

SCHEDULES = ("step", "cosine", "linear", "constant")
FREEZE = ("auto", "none", "text", "backbone", "text+backbone")
DTYPES = ("float32", "bfloat16", "float16")
AUTO_FREEZE_TEXT_BELOW = 10_000  # training images: mmdetection freezes the language model on small sets


def option(default, help, **cli):
    return field(default=default, metadata={"help": help, **cli})


@dataclass
class TrainConfig:
    train_annotations: str = option(None, "COCO detection file of the training set", required=True)
    train_images: str = option(None, "folder its file_name entries are relative to", required=True)
    out: str = option(None, "folder for checkpoints, the final model and the report", required=True)
    model: str = option(None, "hub id or save_pretrained folder to start from (default: MM Grounding DINO tiny)")
    val_annotations: str = option(None, "COCO file evaluated with `mmgdino eval`'s protocol after every epoch")
    val_images: str = option(None, "its images folder")
    holdout_annotations: str = option(None, "COCO file of other classes, evaluated before and after training "
                                      "(how much zero-shot ability the run kept)")  # fmt: skip
    holdout_images: str = option(None, "its images folder")
    epochs: float = option(12.0, "passes over the training set")
    max_steps: int = option(None, "stop after this many optimizer steps (overrides --epochs)")
    batch_size: int = option(4, "images per process and step")
    grad_accum: int = option(1, "micro-batches per optimizer step")
    lr: float = option(1e-4, "AdamW learning rate")
    backbone_lr_mult: float = option(0.1, "the image backbone's learning rate, times --lr")
    text_lr_mult: float = option(0.1, "the language model's learning rate, times --lr (when not frozen)")
    weight_decay: float = option(1e-4, "AdamW weight decay (none on the backbone's position embeddings)")
    max_grad_norm: float = option(0.1, "clip the gradient's norm to this (0: no clipping)")
    schedule: str = option("step", "step: 10x lower for the last twelfth of training; or cosine, linear, "
                           "constant", choices=SCHEDULES)  # fmt: skip
    warmup_steps: int = option(0, "linear warm-up steps")
    freeze: str = option("auto", f"parts not trained; auto: the language model when the training set has fewer "
                         f"than {AUTO_FREEZE_TEXT_BELOW} images", choices=FREEZE)  # fmt: skip
    lora_rank: int = option(0, "train LoRA adapters of this rank instead of the weights (needs peft)")
    lora_alpha: float = option(None, "LoRA scale numerator (default: twice the rank)")
    aux_loss: bool = option(True, "losses on every decoder layer, as mmdetection trains (--no-aux-loss: last only)")
    dtype: str = option("float32", "float32, or mixed precision bfloat16 / float16 (CUDA)", choices=DTYPES)
    device: str = option(None, "cpu or cuda (default: cuda if available)")
    gradient_checkpointing: bool = option(False, "recompute activations in the backward pass (less memory)")
    seed: int = option(42, "seed of the weights' adapters, the sample order and every augmentation")
    resume: str = option("auto", "auto: continue from the newest checkpoint in --out (a rerun of an interrupted "
                         "command finishes it); no: start over; or a checkpoint folder to continue from")  # fmt: skip
    image_size: tuple = option((800, 1333), "largest training scale, shorter,longer side: mmdetection's scales "
                               "(480..800, 1333) scaled to it; also the evaluation's resize")  # fmt: skip
    scales: tuple = option(None, "shorter sides to draw each image's from, e.g. 480,512,800 (default: "
                           "mmdetection's 480..800 by 32, scaled to --image-size)")  # fmt: skip
    flip: float = option(0.5, "probability of a horizontal flip")
    crop: float = option(0.5, "probability of the resize-crop-resize branch")
    negatives: int = option(85, "absent classes sampled into a prompt when the vocabulary exceeds it")
    empty_images: str = option("keep", "images without boxes: keep as negatives or skip", choices=("keep", "skip"))
    workers: int = option(None, "data-loader processes (default: 0 on CPU, 4 on CUDA)")
    save_steps: int = option(None, "checkpoint (and evaluate) every this many steps instead of every epoch")
    save_total_limit: int = option(None, "keep at most this many checkpoints (the best is always kept)")
    logging_steps: int = option(10, "log the loss every this many steps")
    report_to: str = option("none", "also log to: tensorboard, wandb, ... (transformers' report_to)")
    cost_per_hour: float = option(None, "price of one device-hour, for the report's cost line")
    progress: bool = option(True, "progress bars", cli=False)

    # ------------------------------------------------------------------ derived

    @property
    def eval_scale(self):
        return tuple(self.image_size)

    def run_settings(self):
        """What a resumed run must share with the run it continues (its length, evaluation sets and logging may
        change)."""
        free = {"epochs", "max_steps", "resume", "out", "progress", "logging_steps", "report_to", "cost_per_hour",
                "workers", "save_total_limit", "val_annotations", "val_images", "holdout_annotations",
                "holdout_images"}  # fmt: skip
        found = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in free:
                continue
            if f.name in ("train_annotations", "train_images") or (f.name == "model" and Path(str(value)).exists()):
                value = str(Path(value).resolve())
            found[f.name] = list(value) if isinstance(value, tuple) else value
        return found

    def frozen_parts(self, training_images):
        if self.freeze == "auto":
            return ("text",) if training_images < AUTO_FREEZE_TEXT_BELOW else ()
        return () if self.freeze == "none" else tuple(self.freeze.split("+"))

    def check(self):
        """UsageError naming the first bad setting; nothing is read but the file system's metadata."""
        for name in ("train_annotations", "train_images", "out"):
            if not getattr(self, name):
                raise UsageError(f"--{name.replace('_', '-')} is required")
        if not Path(self.train_annotations).is_file():
            raise UsageError(f"--train-annotations {self.train_annotations}: no such file")
        if not Path(self.train_images).is_dir():
            raise UsageError(f"--train-images {self.train_images}: no such folder")
        model = str(self.model or "")
        looks_like_a_path = Path(model).exists() or model.startswith((".", "/", "~")) or model.count("/") > 1
        if model and looks_like_a_path and not Path(model).expanduser().is_dir():  # else a hub id ("org/name")
            raise UsageError(f"--model {model}: no such directory")
        for kind in ("val", "holdout"):
            annotations, images = getattr(self, f"{kind}_annotations"), getattr(self, f"{kind}_images")
            if (annotations is None) != (images is None):
                raise UsageError(f"give --{kind}-annotations and --{kind}-images together")
        _whole(self, "batch_size", "grad_accum", "logging_steps", minimum=1)
        _whole(self, "warmup_steps", "negatives", "lora_rank", "seed", minimum=0)
        _whole(self, "max_steps", "save_steps", "save_total_limit", minimum=1, optional=True)
        _whole(self, "workers", minimum=0, optional=True)
        _number(self, "lr", "epochs", low=0, open_low=True)
        _number(self, "backbone_lr_mult", "text_lr_mult", "weight_decay", "max_grad_norm", low=0)
        _number(self, "flip", "crop", low=0, high=1)
        _number(self, "lora_alpha", "cost_per_hour", low=0, open_low=True, optional=True)
        for name, choices in (("schedule", SCHEDULES), ("freeze", FREEZE), ("dtype", DTYPES)):
            if getattr(self, name) not in choices:
                raise UsageError(f"--{name.replace('_', '-')} must be one of {', '.join(choices)}, "
                                 f"got {getattr(self, name)!r}")  # fmt: skip
        size = tuple(self.image_size) if isinstance(self.image_size, (tuple, list)) else ()
        if len(size) != 2 or not all(isinstance(s, int) and s >= 32 for s in size) or size[0] > size[1]:
            raise UsageError(f"--image-size must be SHORTER,LONGER whole numbers >= 32 (shorter first), "
                             f"got {self.image_size!r}")  # fmt: skip
        if self.scales is not None:
            scales = tuple(self.scales) if isinstance(self.scales, (tuple, list)) else ()
            if not scales or not all(isinstance(s, int) and 8 <= s <= size[1] for s in scales):
                raise UsageError(f"--scales must be whole numbers from 8 to the longer --image-size side "
                                 f"({size[1]}), got {self.scales!r}")  # fmt: skip
        if self.resume not in ("auto", "no") and not Path(str(self.resume)).is_dir():
            raise UsageError(f"--resume {self.resume}: no such checkpoint folder (or give auto or no)")
        return self


def _whole(config, *names, minimum, optional=False):
    for name in names:
        value = getattr(config, name)
        if optional and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise UsageError(f"--{name.replace('_', '-')} must be a whole number >= {minimum}, got {value!r}")


def _number(config, *names, low=None, high=None, open_low=False, optional=False):
    for name in names:
        value = getattr(config, name)
        if optional and value is None:
            continue
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and (low is None or (value > low if open_low else value >= low)) and (high is None or value <= high)
        if not ok:
            bounds = f"{'>' if open_low else '>='} {low}" + (f" and <= {high}" if high is not None else "")
            raise UsageError(f"--{name.replace('_', '-')} must be a number {bounds}, got {value!r}")


def config_fields():
    """(name, type, default, metadata) of every setting, for the command line."""
    return [(f.name, f.type, f.default, f.metadata) for f in fields(TrainConfig)]
