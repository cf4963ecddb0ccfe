"""Compiled inference: the two stages a detection runs per batch (the image backbone, `encode_image`; the fusion
encoder, proposals, decoder and heads, `predict`) compiled by Inductor's CPU backend as one graph each, with the
weights frozen (constants folded, oneDNN's prepacked matrix products), mmgdino's operators inside the graphs and no
graph breaks (`fullgraph=True`).

What a compile costs and how it is paid once:
- **The cache.** Inductor's own on-disk caches (the FX graph cache: generated code and its compiled library),
  kept per user in `cache_dir()` (`MMGDINO_CACHE_DIR`, default `~/.cache/mmgdino/inductor`): a second process
  finds the compiled graphs there and skips Inductor's code generation and the C++ compiler, which are most of a
  compile. Chosen over an AOTInductor package beside the model because AOTInductor needs `torch.export`, which
  fixes the image size (the Swin backbone pads odd sizes in branches the exporter decides once), so it would be
  one package with its own copy of the weights per size; the caches key on the graph and keep no weights.
  Frozen weights are part of what a cached graph holds only as metadata: the live model's weights are bound
  again when the graph is loaded.
- **Sizes.** Images of different sizes must not each compile a graph. The stages are compiled with dynamic
  shapes (image height and width, pixel count, prompt length symbolic), and the runner pads each image batch to
  a multiple of `SIZE_MULTIPLE` pixels per side (`padded_size`), so every feature level divides evenly and the
  backbone's padding branches take one path; prompts are padded to a multiple of `PROMPT_MULTIPLE` tokens
  (padded tokens are masked out: the real tokens' results do not change). `compiles()` counts the graphs.
"""

import os
from pathlib import Path

import torch
import torch.nn.functional as F

from .errors import UsageError

SHORT_SIDE_STEP = 32  # the backbone's coarsest stride: every level's size is a whole number, no odd-size branches
LONG_SIDE_STEP = 128  # the longer side in coarser steps: a few buckets per orientation
PROMPT_STEP = 16  # tokens
AUTO_MIN_IMAGES = 50  # "auto" compiles a CPU run of at least this many images (see `worth_compiling`)
RECOMPILE_LIMIT = 64  # graphs per stage: one per (size bucket, prompt bucket, batch) in use
COMPILE_MODES = ("auto", "on", "off")


def cache_dir():
    """Where the compiled graphs are kept: MMGDINO_CACHE_DIR, else ~/.cache/mmgdino/inductor."""
    return Path(os.environ.get("MMGDINO_CACHE_DIR") or Path.home() / ".cache" / "mmgdino" / "inductor")


def use_cache(path=None):
    """Point Inductor's on-disk caches at `path` (default `cache_dir()`) unless the user already chose a folder
    (TORCHINDUCTOR_CACHE_DIR)."""
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        path = Path(path or cache_dir())
        path.mkdir(parents=True, exist_ok=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])


def compiles():
    """Graphs compiled in this process so far (each new graph or recompile counts one)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def cache_hits():
    """Graphs this process loaded from the FX graph cache instead of compiling them."""
    from torch._dynamo.utils import counters

    return int(counters["inductor"]["fxgraph_cache_hit"])


def padded_size(height, width, longest=None):
    """The canvas an image batch of (height, width) is padded to: the shorter side up to a multiple of 32 pixels,
    the longer up to a multiple of 128 (not past `longest`, the processor's longest side, rounded up to 32).
    A square stays square. Each canvas is one compiled graph (a size bucket)."""

    def up(value, step):
        return -(-value // step) * step

    if height == width:
        return up(height, SHORT_SIDE_STEP), up(width, SHORT_SIDE_STEP)
    cap = up(longest, SHORT_SIDE_STEP) if longest else None
    long_side = up(max(height, width), LONG_SIDE_STEP)
    if cap is not None and max(height, width) <= cap:
        long_side = min(long_side, cap)
    short_side = up(min(height, width), SHORT_SIDE_STEP)
    return (long_side, short_side) if height > width else (short_side, long_side)


def pad_pixels(pixel_values, pixel_mask, longest=None):
    """The batch padded (zeros, masked out) to its size bucket, as the processor pads a batch."""
    height, width = pixel_values.shape[-2:]
    target_height, target_width = padded_size(height, width, longest)
    pad = (0, target_width - width, 0, target_height - height)
    return F.pad(pixel_values, pad), F.pad(pixel_mask, pad)


def prompt_bucket(length, max_text_len):
    """Prompts are padded to a multiple of 16 tokens (at most max_text_len): one graph per bucket."""
    return min(-(-length // PROMPT_STEP) * PROMPT_STEP, max_text_len)


def check_compile(compile):
    """True, False or "auto" (on where it pays: a CPU run) -> (mode name); UsageError otherwise."""
    names = {True: "on", False: "off", None: "off", "auto": "auto", "on": "on", "off": "off"}
    if isinstance(compile, str) and compile not in COMPILE_MODES or not isinstance(compile, (bool, str, type(None))):
        raise UsageError(f"compile must be one of {', '.join(COMPILE_MODES)} (or True/False), got {compile!r}")
    return names[compile]


def worth_compiling(mode, device, images):
    """Whether a run compiles: "on"/"off" as given; "auto" on a CPU run of at least AUTO_MIN_IMAGES images, where
    the first compile of a size bucket (minutes, once per machine; README "Compiled inference") is paid back."""
    mode = check_compile(mode)
    if mode != "auto":
        return mode == "on"
    return torch.device(device or "cpu").type == "cpu" and images >= AUTO_MIN_IMAGES


def inductor_options(freeze=True):
    """Inductor's settings for a stage. Freezing folds the weights into the graph as constants (oneDNN's prepacked
    matrix products and their fused bias and activation); the layout optimization is off because its rewrite of
    convolution outputs fails on these graphs and gains nothing on the CPU."""
    return {"freezing": freeze, "layout_optimization": False}


def compile_runner(runner, freeze=True, backend="inductor"):
    """Swaps the runner's two stages for compiled ones (see the module docstring). `backend` other than
    "inductor" is for tests (the same graphs and guards, without Inductor's code generation)."""

    use_cache()
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    torch._dynamo.config.accumulated_recompile_limit = max(
        torch._dynamo.config.accumulated_recompile_limit, 4 * RECOMPILE_LIMIT
    )
    model = runner.model
    longest = (getattr(runner.image_processor, "size", None) or {}).get("longest_edge")
    options = inductor_options(freeze) if backend == "inductor" else None
    encode = torch.compile(model.encode_image, fullgraph=True, dynamic=False, backend=backend, options=options)

    def predict(image_features, prompt_features):
        out = model(prompt_features=prompt_features, image_features=image_features, return_dict=True,
                    output_hidden_states=False)  # fmt: skip
        return out.logits, out.pred_boxes

    predict = torch.compile(predict, fullgraph=True, dynamic=False, backend=backend, options=options)
    runner.encode_image_stage = lambda pixel_values, pixel_mask: encode(*pad_pixels(pixel_values, pixel_mask, longest))
    runner.predict_stage = lambda images, prompt: predict(
        images, prompt.padded(prompt_bucket(prompt.length, runner.max_text_len))
    )
    runner.compiled = "inductor, frozen weights" if freeze and backend == "inductor" else backend
    return runner
