"""The inference model: `MMGroundingDinoForObjectDetection` (also LLMDet and Grounding DINO checkpoints)."""

from .hub import ModelLoadError
from .model import GroundingDinoForObjectDetection, MMGroundingDinoForObjectDetection, register_auto_classes

__all__ = [
    "GroundingDinoForObjectDetection",
    "MMGroundingDinoForObjectDetection",
    "ModelLoadError",
    "register_auto_classes",
]
