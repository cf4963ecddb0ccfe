"""mmgdino: fast MM Grounding DINO (also LLMDet and Grounding DINO) on top of transformers."""

from . import ops  # noqa: E402
from .detector import Detector  # noqa: E402
from .errors import ImageReadError, MmgdinoError, UsageError  # noqa: E402
from .interop import to_supervision  # noqa: E402
from .modeling import (  # noqa: E402
    GroundingDinoForObjectDetection,
    MMGroundingDinoForObjectDetection,
    ModelLoadError,
    register_auto_classes,
)
from .ops import available_backends, contrastive_logits, contrastive_max, ms_deform_attn  # noqa: E402
from .patching import is_patched, patch, unpatch  # noqa: E402
from .version import __version__  # noqa: E402

__all__ = [
    "ops",
    "available_backends",
    "contrastive_logits",
    "contrastive_max",
    "ms_deform_attn",
    "Detector",
    "MmgdinoError",
    "UsageError",
    "ImageReadError",
    "to_supervision",
    "MMGroundingDinoForObjectDetection",
    "GroundingDinoForObjectDetection",
    "register_auto_classes",
    "ModelLoadError",
    "patch",
    "unpatch",
    "is_patched",
    "__version__",
]
