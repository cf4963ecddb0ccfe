"""The inference model: `MMGroundingDinoForObjectDetection` (also LLMDet and Grounding DINO checkpoints)."""

from .model import MMGroundingDinoForObjectDetection
from .weights import ModelLoadError

__all__ = ["MMGroundingDinoForObjectDetection", "ModelLoadError"]
