"""Compiled inference: the two stages a detection runs per batch (the image backbone, `encode_image`; the fusion
encoder, proposals, decoder and heads, `predict`) compiled ahead of time by Inductor's CPU backend, one graph each,
with the weights frozen (constants folded, oneDNN's prepacked matrix products with their bias and activation
fused), mmgdino's operators inside the graphs, no graph breaks (`torch.export` traces one graph or fails).

How a compile is paid once per machine and model, not per process:
- **An AOTInductor package per stage and size bucket**, kept in `cache_dir()` (`MMGDINO_CACHE_DIR`, default
  `~/.cache/mmgdino/compiled`), keyed by the model (its config and a fingerprint of its weights), the precision,
  the bucket, the CPU's ISA level and the torch and mmgdino versions. A later process loads the compiled library
  and its packed weights (seconds) without tracing anything. Chosen over Inductor's own caches (FX graph cache,
  AOTAutogradCache) by what freezing does to them: a frozen graph's packed oneDNN weights cannot be pickled, so
  the FX graph cache bypasses every frozen graph and AOTAutogradCache refuses freezing outright (torch 2.13):
  with the caches a second process would trace, freeze and generate code again (only the C++ compile is
  reused); without freezing, oneDNN repacks every weight on every call.
- **Sizes.** An exported graph has fixed sizes (the Swin backbone's padding branches are decided at trace time),
  so images are padded to size buckets (`padded_size`: the shorter side to a multiple of 32 pixels, the longer
  to a multiple of 128, at most the processor's longest side), one graph per bucket in use;
  prompts are padded to a multiple of 16 tokens (masked out: the real tokens' results do not change).
  `builds()` and `loads()` count packages made and reused.
"""

import hashlib
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UsageError
from .version import __version__

SHORT_SIDE_STEP = 32  # the backbone's coarsest stride: every level's size is a whole number
LONG_SIDE_STEP = 128  # the longer side in coarser steps: a few buckets per orientation
PROMPT_STEP = 16  # tokens
AUTO_MIN_IMAGES = 50  # "auto" compiles a CPU run of at least this many images (see `worth_compiling`)
COMPILE_MODES = ("auto", "on", "off")
# Where "auto" compiles: the precisions at which the compiled graphs beat eager at 800x1333. Zen 4 (native bf16,
# benchmarks/results/cpu-peers.md): float32 1.20x (1.25x in a second run; 0.92x before the int8 and MSDA changes
# of 2026-12-04), bfloat16 1.15x, int8 1.24x. The same CPU capped to AVX2: float32 1.15x, bfloat16 (computed in
# float32) 1.26x, int8 1.42x. float16 is not a CPU precision here.
COMPILE_PAYS = ("float32", "bfloat16", "int8")
_COUNTS = {"builds": 0, "loads": 0}


def cache_dir():
    """Where the compiled packages are kept: MMGDINO_CACHE_DIR, else ~/.cache/mmgdino/compiled."""
    return Path(os.environ.get("MMGDINO_CACHE_DIR") or Path.home() / ".cache" / "mmgdino" / "compiled")


def builds():
    """Packages compiled in this process so far (one per stage and bucket never seen on this machine)."""
    return _COUNTS["builds"]


def loads():
    """Packages this process loaded from the cache instead of compiling them."""
    return _COUNTS["loads"]


def padded_size(height, width, longest=None):
    """The canvas an image batch of (height, width) is padded to: the shorter side up to a multiple of 32 pixels,
    the longer up to a multiple of 128 but not past `longest` (the processor's longest side, so an image resized to
    it is not padded). A square stays square. Each canvas is one compiled graph (a size bucket)."""

    def up(value, step):
        return -(-value // step) * step

    if height == width:
        return up(height, SHORT_SIDE_STEP), up(width, SHORT_SIDE_STEP)
    long_side = up(max(height, width), LONG_SIDE_STEP)
    if longest and max(height, width) <= longest:
        long_side = min(long_side, longest)
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


def worth_compiling(mode, device, images, precision="float32"):
    """Whether a run compiles: "on"/"off" as given; "auto" on a CPU run of at least AUTO_MIN_IMAGES images, where
    the first compile of a size bucket (minutes, once per machine; README "Compiled inference") is paid back, at a
    precision where compiling pays (COMPILE_PAYS; `precision` a name, a torch dtype, or "auto")."""
    mode = check_compile(mode)
    if mode != "auto":
        return mode == "on"
    device = torch.device(device or "cpu")
    if device.type != "cpu" or images < AUTO_MIN_IMAGES:
        return False
    if precision == "auto":
        from .precision import automatic_dtype

        precision = automatic_dtype(device)[0]
    return str(precision or "float32").removeprefix("torch.") in COMPILE_PAYS


def inductor_options(freeze=True):
    """Inductor's settings for a stage: frozen weights; the layout optimization off (its rewrite of convolution
    outputs fails on these graphs and gains nothing on the CPU)."""
    return {"freezing": freeze, "layout_optimization": False}


def aoti_package(module, args, path):
    """Exports `module` at `args`, compiles it with AOTInductor into the package `path`, and loads it."""
    from torch._inductor import aoti_compile_and_package

    from .quantization import Int8Linear, enable_compiled_int8

    if any(isinstance(m, Int8Linear) for m in module.modules()):
        enable_compiled_int8()
    program = export_stage(module, args)
    with torch.no_grad():
        aoti_compile_and_package(program, package_path=str(path), inductor_configs=inductor_options())
    return load_package(path)


def export_stage(module, args):
    """The stage as one exported graph (outside inference mode, which export cannot trace in)."""
    with torch.inference_mode(False), torch.no_grad():
        return torch.export.export(module, tuple(a.clone() for a in args))


def load_package(path):
    # torch 2.10's loader reads torch._inductor.codecache without importing it: a process that only loads fails.
    import torch._inductor.codecache  # noqa: F401
    from torch._inductor import aoti_load_package

    return aoti_load_package(str(path))


def model_fingerprint(model):
    """A digest of the model's config and weights (a few values of every tensor: cheap, and any fine-tuning or
    other checkpoint changes it), and of int8 layers' calibrated ranges (constants of a compiled graph)."""
    from .quantization import Int8Linear

    digest = hashlib.sha256(model.config.to_json_string().encode())
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            flat = tensor.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // 64)][:64].double()
            digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}{sample.sum().item():.10e}".encode())
    for name, module in model.named_modules():
        if isinstance(module, Int8Linear):
            digest.update(f"{name}{module.static}{module.weight_scale.double().sum().item():.10e}".encode())
    return digest.hexdigest()[:20]


class ImageStage(nn.Module):
    """encode_image as plain tensors out (the level shapes, fixed by the bucket, are kept aside)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.shapes = model, None

    def forward(self, pixel_values, pixel_mask):
        features = self.model.encode_image(pixel_values, pixel_mask)
        self.shapes = [list(shape) for shape in features.levels.shapes]  # Python ints while exporting
        return features.vision, features.keep, features.position, features.valid_ratios


class PredictStage(nn.Module):
    """The model from image and prompt features to (logits, pred_boxes), plain tensors in."""

    def __init__(self, model, shapes):
        super().__init__()
        self.model, self.shapes = model, [tuple(shape) for shape in shapes]

    def forward(self, vision, keep, position, valid_ratios, text, text_keep, text_pos, phrase_keep, input_ids):
        from .modeling.features import ImageFeatures, LevelTable, PromptFeatures

        levels = LevelTable.build(self.shapes, vision.device, vision.dtype)
        image = ImageFeatures(vision, keep, position, levels, valid_ratios)
        prompt = PromptFeatures(text, text_keep, text_pos, phrase_keep, input_ids)
        out = self.model(prompt_features=prompt, image_features=image, return_dict=True, output_hidden_states=False)
        return out.logits, out.pred_boxes


class CompiledStages:
    """A runner's compiled stages: packages per (stage, bucket), built once per machine (`cache_dir()`), loaded
    by every later process. `packager(module, args, path)` makes one (AOTInductor; tests pass a cheaper one)."""

    def __init__(self, runner, packager=aoti_package):
        from .precision import cpu_features

        self.runner, self.packager = runner, packager
        self.load = getattr(packager, "load", load_package)
        self.longest = (getattr(runner.image_processor, "size", None) or {}).get("longest_edge")
        key = json.dumps([model_fingerprint(runner.model), runner.precision, str(runner.dtype), cpu_features().level,
                          torch.__version__, __version__, packager.__name__])  # fmt: skip
        self.folder = cache_dir() / hashlib.sha256(key.encode()).hexdigest()[:24]
        self.packages = {}  # (stage, shapes) -> (callable, meta)

    def _package(self, stage, module, args):
        # The arguments' sizes, and for the predict stage the level shapes (portrait and landscape buckets have as
        # many pixels, in other levels).
        sizes = [a.shape for a in args] + ([] if module.shapes is None else [s for s in module.shapes])
        name = f"{stage}-" + "-".join("x".join(map(str, size)) for size in sizes)
        if name in self.packages:
            return self.packages[name]
        path, meta_path = self.folder / f"{name}.pt2", self.folder / f"{name}.json"
        if path.is_file() and meta_path.is_file():
            compiled, meta = self.load(path), json.loads(meta_path.read_text())
            _COUNTS["loads"] += 1
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f"{path.stem}.{os.getpid()}.partial.pt2")  # renamed once whole: never half-read
            if isinstance(module, ImageStage):  # its level shapes, from one eager call (export may copy it)
                module(*args)
            compiled = self.packager(module, args, partial)
            meta = {"shapes": getattr(module, "shapes", None)}
            os.replace(partial, path)
            meta_path.write_text(json.dumps(meta))
            _COUNTS["builds"] += 1
        self.packages[name] = (compiled, meta)
        return self.packages[name]

    def encode_image(self, pixel_values, pixel_mask):
        from .modeling.features import ImageFeatures, LevelTable

        pixel_values, pixel_mask = pad_pixels(pixel_values, pixel_mask, self.longest)
        compiled, meta = self._package("image", ImageStage(self.runner.model), (pixel_values, pixel_mask))
        vision, keep, position, valid_ratios = compiled(pixel_values, pixel_mask)
        levels = LevelTable.build([tuple(s) for s in meta["shapes"]], vision.device, vision.dtype)
        return ImageFeatures(vision, keep, position, levels, valid_ratios)

    def predict(self, image_features, prompt_features):
        prompt = prompt_features.padded(prompt_bucket(prompt_features.length, self.runner.max_text_len))
        prompt = prompt.expand(image_features.batch)
        args = (image_features.vision, image_features.keep, image_features.position, image_features.valid_ratios,
                prompt.text, prompt.keep, prompt.position, prompt.phrase_keep, prompt.input_ids)  # fmt: skip
        args = tuple(a.contiguous() for a in args)
        compiled, _ = self._package("predict", PredictStage(self.runner.model, image_features.levels.shapes), args)
        logits, boxes = compiled(*args)
        return logits, boxes


def compile_runner(runner, packager=aoti_package):
    """Swaps the runner's two stages for compiled ones (see the module docstring)."""
    if runner.precision == "int8":
        if not getattr(runner, "calibrated", False):
            raise UsageError("compiled int8 needs calibration images (its ranges become constants of the graph)")
        from .quantization import enable_compiled_int8

        enable_compiled_int8()  # its error, if any, before anything is traced
    stages = CompiledStages(runner, packager)
    runner.encode_image_stage, runner.predict_stage = stages.encode_image, stages.predict
    runner.compiled = stages
    return runner
