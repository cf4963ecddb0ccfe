"""Evaluation while training, and the zero-shot guard: `mmgdino eval`'s protocol (`mmgdino.evaluation.
evaluate`: class prompts, mean-over-tokens scores, top-k, mmdetection's resize, COCO AP or LVIS Fixed AP) on the
model as it stands.

It runs in the main process only (the protocol is one image per forward), and every process gets its metrics, so
that each one agrees on the best checkpoint. Each evaluation writes into a fresh folder under the run's `eval/`
(`eval`'s per-image cache must never carry predictions of other weights into it). With LoRA adapters the
evaluated model is a merged copy; otherwise the training model itself, put back into training mode after.
"""

import shutil
from pathlib import Path

import torch

from .. import evaluation
from ..modeling import MMGroundingDinoForObjectDetection
from . import model as model_parts


def evaluated_model(model):
    """The model `evaluation.evaluate` runs: the training model, or with adapters a plain copy of the merged
    weights (the protocol's Detector takes plain models)."""
    if getattr(model, "lora_settings", None) is None:
        return model
    plain = MMGroundingDinoForObjectDetection(model.config)
    plain.load_state_dict(model_parts.merged_state_dict(model))
    return plain.to(next(model.parameters()).device)


def run_protocol(model, processor, annotations, images, out, scale, protocol, device, log=None):
    """`mmgdino eval` on (annotations, images) into the fresh folder `out`; returns its report."""
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    was_training = getattr(model, "training", False)
    try:
        return evaluation.evaluate(annotations, images, out, model=model, processor=processor, protocol=protocol,
                                   device=device, scale=scale, progress=False, log=log)  # fmt: skip
    finally:
        if isinstance(model, torch.nn.Module):
            model.train(was_training)


def evaluate_during_training(trainer, prefix="eval"):
    """The validation set's metrics as {f"{prefix}_AP": ..., ...}, the same in every process."""
    run = trainer.run
    metrics = None
    if trainer.is_world_process_zero():
        model = trainer.accelerator.unwrap_model(trainer.model)
        epoch = round(trainer.state.epoch or 0, 3)
        folder = run.out / "eval" / f"epoch-{epoch:g}"
        report = run_protocol(evaluated_model(model), trainer.processing_class, run.config.val_annotations,
                              run.config.val_images, folder, run.config.eval_scale, run.val_protocol,
                              trainer.args.device)  # fmt: skip
        metrics = {f"{prefix}_{k}": v for k, v in report["metrics"].items()}
        metrics[f"{prefix}_seconds_per_image"] = report["seconds_per_image"] or 0.0
        run.record_evaluation(epoch, report["metrics"], folder)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        shared = [metrics]
        torch.distributed.broadcast_object_list(shared, src=0)
        metrics = shared[0]
    return metrics
