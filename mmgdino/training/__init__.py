"""Fine-tuning MM Grounding DINO on a COCO detection dataset (`mmgdino train`), on transformers' Trainer.

    from mmgdino.training import train
    report = train(train_annotations="train.json", train_images="images/", out="run/",
                   val_annotations="val.json", val_images="images/", epochs=12)

Modules, one job each: config (settings, defaults, checks), data (reading and checking the COCO file),
augment (mmdetection's fine-tune augmentations), prompts (class prompts, negatives, batching), dataset (the
torch Dataset), model (building, freezing, LoRA, checkpoints), trainer (transformers' Trainer and its
extension points), evaluation_hook (`mmgdino eval`'s protocol while training), report (metrics.json, chart,
cost), launch (several processes through torchrun), command (`mmgdino train`'s arguments), run (the order of it
all).
"""

from .config import TrainConfig
from .run import train

__all__ = ["TrainConfig", "train"]
