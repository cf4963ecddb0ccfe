"""The training loop is transformers' `Trainer` (on accelerate): mixed precision, gradient accumulation and
clipping, checkpoints with optimizer, scheduler and random states, exact resumption, logging (console,
TensorBoard, W&B, ...), progress bars, and the same code on one process or many under `torchrun` /
`accelerate launch` (DDP; NCCL on GPUs, gloo on CPUs). It is the loop transformers users already know and the
one the model's loss (transformers' Grounding DINO loss) is written for; nothing here re-implements a loop.

What this module adds, each through a documented extension point of `Trainer`:
- `create_optimizer`: AdamW with mmdetection's parameter groups (`param_groups`);
- `create_scheduler`: mmdetection's step schedule (10x lower for the last twelfth) besides transformers' own;
- `compute_loss`: each process's loss made its share of the one-process loss (`ddp_loss_scale`), and the loss
  terms (classification, L1, GIoU) kept for the report;
- `evaluate`: `mmgdino eval`'s protocol on the validation set (`evaluation_hook`), AP as `eval_AP`, so the best
  checkpoint is the best AP (`metric_for_best_model`);
- `save_model`: checkpoints through `model.save_checkpoint` (save_pretrained folders both classes load);
- `get_train_dataloader`: the data in `dataset.EpochOrder`, the same for any number of processes;
- callbacks: seconds per step, the epochs' losses (`report`).
"""

import math
import time

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from . import model as model_parts
from .dataset import EpochOrder
from .evaluation_hook import evaluate_during_training

LOSS_TERMS = ("loss_ce", "loss_bbox", "loss_giou")  # the last decoder layer's; the total includes every layer


def param_groups(model, lr, backbone_lr_mult, text_lr_mult, weight_decay):
    """AdamW groups as mmdetection's paramwise_cfg: the backbone and the language model at their multiples of
    lr, no weight decay on the backbone's absolute position embeddings; frozen parameters left out."""
    multipliers = {"backbone": backbone_lr_mult, "text": text_lr_mult, None: 1.0}
    groups = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        part = model_parts.part_of(name)
        decay = 0.0 if part == "backbone" and "position_embeddings" in name else weight_decay
        key = (part, decay)
        if key not in groups:
            groups[key] = {"params": [], "lr": lr * multipliers[part], "weight_decay": decay, "part": part or "rest"}
        groups[key]["params"].append(parameter)
    return [g for g in groups.values() if g["lr"] > 0]


def step_schedule(optimizer, warmup_steps, total_steps, drop_at=11 / 12, factor=0.1):
    """mmdetection's MultiStepLR of the 12-epoch recipe (x0.1 from epoch 11), by steps, after a linear warm-up."""
    milestone = max(1, math.floor(total_steps * drop_at))

    def scale(step):
        warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
        return warm * (factor if step >= milestone else 1.0)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, scale)


def ddp_loss_scale(labels, world_size, device):
    """What makes each process's loss its share of the one-process loss, so that DDP's gradient average equals
    the one-process gradient. transformers' detection loss (`loss_for_object_detection.ImageLoss`) normalizes by
    max(N / world_size**2, 1) for N boxes over all processes (it averages the box count over the processes, then
    divides by their number again); the share is world_size / max(N, 1)."""
    boxes = torch.tensor([float(sum(len(t["class_labels"]) for t in labels))], device=device)
    total = float(_all_reduce_sum(boxes).item())
    return max(total / world_size**2, 1.0) * world_size / max(total, 1.0)


def _all_reduce_sum(value):
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(value)
    return value


def training_arguments(config, out, has_validation, device_type):
    schedules = {"step": "constant", "cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}
    checkpointing = {}
    if config.gradient_checkpointing:  # transformers 5 renamed it; only the name this version knows
        known = TrainingArguments.__dataclass_fields__
        name = "activation_checkpointing" if "activation_checkpointing" in known else "gradient_checkpointing"
        checkpointing = {name: True}
    workers = config.workers if config.workers is not None else (4 if device_type == "cuda" else 0)
    return TrainingArguments(
        output_dir=str(out),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps or -1,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.lr,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,  # 0: no clipping
        lr_scheduler_type=schedules[config.schedule],
        warmup_steps=config.warmup_steps,
        bf16=config.dtype == "bfloat16",
        fp16=config.dtype == "float16",
        use_cpu=device_type == "cpu",
        seed=config.seed,
        data_seed=config.seed,
        eval_strategy=("steps" if config.save_steps else "epoch") if has_validation else "no",
        eval_steps=config.save_steps,
        save_strategy="steps" if config.save_steps else "epoch",
        save_steps=config.save_steps or 500,
        save_total_limit=config.save_total_limit,
        **checkpointing,
        metric_for_best_model="eval_AP" if has_validation else None,
        greater_is_better=True,
        logging_strategy="steps",
        logging_steps=config.logging_steps,
        report_to=config.report_to,
        dataloader_num_workers=workers,
        dataloader_persistent_workers=False,  # a new pickle of the data set each epoch carries its epoch
        remove_unused_columns=False,
        disable_tqdm=not config.progress,
        ddp_find_unused_parameters=True,  # transformers' loss leaves the proposal heads without gradients
    )


class DetectionTrainer(Trainer):
    """transformers' Trainer with the extension points listed in the module docstring."""

    def __init__(self, *args, run, **kwargs):
        super().__init__(*args, **kwargs)
        self.run = run  # the run's settings and what it records (run.Run)
        self.model_accepts_loss_kwargs = False  # labels are a list of boxes per image, not a token tensor

    def get_train_dataloader(self):
        """The data set in EpochOrder (the same for any number of processes), batched, prepared by accelerate."""
        args = self.args
        loader = torch.utils.data.DataLoader(
            self.train_dataset,
            batch_size=args.per_device_train_batch_size,
            sampler=EpochOrder(self.train_dataset, args.data_seed if args.data_seed is not None else args.seed),
            collate_fn=self.data_collator,
            num_workers=args.dataloader_num_workers,
            pin_memory=args.dataloader_pin_memory,
            drop_last=args.dataloader_drop_last,
        )
        return self.accelerator.prepare(loader)

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            c = self.run.config
            groups = param_groups(model or self.model, c.lr, c.backbone_lr_mult, c.text_lr_mult, c.weight_decay)
            self.optimizer = torch.optim.AdamW(groups, lr=c.lr, weight_decay=c.weight_decay)
        return self.optimizer

    def create_scheduler(self, num_training_steps, optimizer=None):
        if self.lr_scheduler is None and self.run.config.schedule == "step":
            self.lr_scheduler = step_schedule(optimizer or self.optimizer, self.args.warmup_steps, num_training_steps)
        return super().create_scheduler(num_training_steps, optimizer)

    def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, **kwargs)
        terms = getattr(outputs, "loss_dict", None) or {}
        terms = {k: terms[k] for k in LOSS_TERMS if k in terms}
        if self.args.world_size > 1:
            scale = ddp_loss_scale(inputs["labels"], self.args.world_size, loss.device)
            loss, terms = loss * scale, {k: v * scale for k, v in terms.items()}
        self.run.losses.add(loss, terms)
        return (loss, outputs) if return_outputs else loss

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        metrics = evaluate_during_training(self, metric_key_prefix)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def save_model(self, output_dir=None, _internal_call=False):
        if self.args.should_save:
            model = self.accelerator.unwrap_model(self.model)
            model_parts.save_checkpoint(model, self.processing_class, output_dir or self.args.output_dir)


class StepTiming(TrainerCallback):
    """Times the optimizer steps: forward, backward, clipping, update (data loading happens before
    `on_step_begin`)."""

    def __init__(self, run):
        self.run = run
        self.began = None

    def on_step_begin(self, args, state, control, **kwargs):
        if torch.cuda.is_available() and args.device.type == "cuda":
            torch.cuda.synchronize(args.device)
        self.began = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available() and args.device.type == "cuda":
            torch.cuda.synchronize(args.device)
        if self.began is not None:
            self.run.step_seconds.append(time.perf_counter() - self.began)
