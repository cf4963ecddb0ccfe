"""The models: `MMGroundingDinoForObjectDetection` (also LLMDet and Grounding DINO checkpoints) and the base model
`MMGroundingDinoModel`, transformers `PreTrainedModel`s over mmgdino's layers and operators."""

from .base import GroundingDinoModel, MMGroundingDinoModel
from .hub import ModelLoadError
from .model import GroundingDinoForObjectDetection, MMGroundingDinoForObjectDetection, register_auto_classes

__all__ = [
    "GroundingDinoForObjectDetection",
    "GroundingDinoModel",
    "MMGroundingDinoForObjectDetection",
    "MMGroundingDinoModel",
    "ModelLoadError",
    "register_auto_classes",
]
