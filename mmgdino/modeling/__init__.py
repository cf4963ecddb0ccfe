"""The inference model: `MMGroundingDinoForObjectDetection` (also LLMDet and Grounding DINO checkpoints)."""

from .hub import ModelLoadError
from .model import MMGroundingDinoForObjectDetection

__all__ = ["MMGroundingDinoForObjectDetection", "ModelLoadError"]
