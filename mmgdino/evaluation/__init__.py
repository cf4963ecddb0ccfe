"""`mmgdino eval`: a COCO-format dataset through the model with mmdetection's MM Grounding DINO test protocol, so
that the model card's COCO and LVIS numbers can be checked like for like.

protocol: prompts, resize, class scores, top-k (the rules, each stated once); dataset: the annotation file and its
images; metrics: COCO AP and LVIS Fixed AP; run: `evaluate` (resumable, local or Ray); report: summary.md;
transformers_baseline: `--compare transformers`.
"""

from .dataset import Dataset, load_dataset, read_coco_file
from .metrics import COCO_KEYS, FIXED_AP_PER_CATEGORY, LVIS_KEYS, MMDET_KEYS, compute_metrics, fixed_ap_selection
from .protocol import (
    PROTOCOLS,
    TEST_SCALE,
    ClassPrompt,
    class_prompts,
    class_scores,
    clean_class_name,
    detect_batch,
    preprocess,
    test_size,
    top_detections,
)
from .report import summary_markdown
from .run import EvalJob, evaluate
from .transformers_baseline import TRANSFORMERS_HOW, compare_transformers

__all__ = [
    "COCO_KEYS",
    "FIXED_AP_PER_CATEGORY",
    "LVIS_KEYS",
    "MMDET_KEYS",
    "PROTOCOLS",
    "TEST_SCALE",
    "TRANSFORMERS_HOW",
    "ClassPrompt",
    "Dataset",
    "EvalJob",
    "class_prompts",
    "class_scores",
    "clean_class_name",
    "compare_transformers",
    "compute_metrics",
    "detect_batch",
    "evaluate",
    "fixed_ap_selection",
    "load_dataset",
    "preprocess",
    "read_coco_file",
    "summary_markdown",
    "test_size",
    "top_detections",
]
