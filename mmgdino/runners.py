"""What runs the model for `Detector` and the evaluation protocol, one runner per kind of model: mmgdino's PyTorch
model (`TorchRunner`) or an exported ONNX file (`OnnxRunner`). Both answer the same three questions:

- `pixels(pil_images)`: the batch as the model takes it, (pixel_values, pixel_mask);
- `encode_images(pixel_values, pixel_mask)`: whatever the runner keeps of the images across prompt rounds;
- `predict(images, members, prompts)`: (logits, pred_boxes) of the batch rows `members`, row i prompted with the
  token ids `prompts[i]`.
"""

import numpy as np
import torch

from . import precision
from .errors import UsageError
from .loading import check_precision, load_model_and_processor, load_processor, weights_dtype
from .modeling.features import PromptFeatures
from .onnx_runtime import OnnxModel, fit_inside, sidecar

PROMPT_CACHE_SIZE = 64  # encoded prompts kept per runner (per-image vocabularies make many)


def runner_for(model, device=None, dtype=None, processor=None, runtime=None, compile=False, calibration=None):
    """The runner of `model`: an exported .onnx file (or any model with `runtime` given) runs in ONNX Runtime or
    OpenVINO; anything else is loaded as mmgdino's PyTorch model, at `dtype` (a dtype, "int8" or "auto"), its
    stages compiled with Inductor when `compile` (mmgdino.compiled). int8 calibrates on `calibration` images
    (mmgdino.quantization)."""
    from .compiled import worth_compiling

    device, name = check_precision(device, dtype)
    compile = worth_compiling(compile, device, images=0)  # checked here; "auto" compiles long runs (the CLI's)
    if str(model).endswith(".onnx") or runtime is not None:
        return OnnxRunner(model, runtime or "onnxruntime", processor)
    built, processor = load_model_and_processor(model, device, weights_dtype(name), processor)
    runner = TorchRunner(built, processor)
    if name == "int8":
        from .quantization import quantize_runner

        quantize_runner(runner, calibration)
    if compile:
        from .compiled import compile_runner

        compile_runner(runner)
    return runner


class TorchRunner:
    """mmgdino's model: the images of a batch are encoded once for every prompt round, and each distinct prompt
    once for every batch (cached)."""

    def __init__(self, model, processor):
        self.model, self.processor = model, processor
        self.tokenizer = processor.tokenizer
        self.image_processor = processor.image_processor
        self.device, self.dtype = model.device, model.dtype
        self.precision = str(self.dtype).replace("torch.", "")  # "int8" once quantized
        self.max_text_len = model.config.max_text_len
        self._prompt_cache = {}  # token ids -> PromptFeatures
        # The two stages a detection runs per batch; mmgdino.compiled swaps in compiled ones.
        self.encode_image_stage = self._encode_image_eager
        self.predict_stage = self._predict_eager
        # Without native bf16 the 16-bit matrix products run in float32 (mmgdino.precision).
        self.matmuls = precision.matmul_context(self.dtype, self.device)

    def convert(self, dtype):
        """The model in `dtype` from now on (int8 converts what is left around its products); cached prompts are
        dropped, as they were encoded in the old one."""
        self.model.to(dtype)
        self.dtype = dtype
        self.precision = str(dtype).replace("torch.", "")
        self.matmuls = precision.matmul_context(dtype, self.device)
        self._prompt_cache.clear()

    def pixels(self, pil_images):
        """The checkpoint processor's resize and padding."""
        pixels = self.image_processor(images=pil_images, return_tensors="pt")
        return pixels["pixel_values"], pixels["pixel_mask"]

    def encode_images(self, pixel_values, pixel_mask):
        with self.matmuls():
            return self.encode_image_stage(pixel_values.to(self.device, self.dtype), pixel_mask.to(self.device))

    def encode_prompt(self, input_ids):
        """One prompt's features (cached by its token ids)."""
        key = tuple(input_ids)
        if key not in self._prompt_cache:
            ids = torch.tensor([input_ids], device=self.device)
            with torch.inference_mode(), self.matmuls():
                self._prompt_cache[key] = self.model.encode_prompt(ids, attention_mask=torch.ones_like(ids))
            if len(self._prompt_cache) > PROMPT_CACHE_SIZE:
                self._prompt_cache.pop(next(iter(self._prompt_cache)))
        return self._prompt_cache[key]

    def prompt_batch(self, prompts):
        """One prompt for every row, or distinct prompts padded to the longest."""
        if all(p == prompts[0] for p in prompts):
            return self.encode_prompt(prompts[0])
        return PromptFeatures.stack([self.encode_prompt(p) for p in prompts])

    def predict(self, images, members, prompts):
        features = images if len(members) == images.batch else images.select(members)
        with self.matmuls():
            return self.predict_stage(features, self.prompt_batch(prompts))

    def _encode_image_eager(self, pixel_values, pixel_mask):
        return self.model.encode_image(pixel_values, pixel_mask)

    def _predict_eager(self, image_features, prompt_features):
        out = self.model(prompt_features=prompt_features, image_features=image_features)
        return out.logits, out.pred_boxes


class OnnxRunner:
    """An exported file: each image resized to fit the file's fixed size and padded; prompts padded to the
    longest of a round; a batch-1 file runs the rows one at a time."""

    def __init__(self, path, runtime, processor=None):
        from transformers import AutoConfig

        if not str(path).endswith(".onnx"):
            raise UsageError(f"--runtime {runtime} runs an exported .onnx file; got model {str(path)!r}")
        self.onnx = OnnxModel(path, runtime)
        self.processor = processor or load_processor(sidecar(path))
        self.tokenizer = self.processor.tokenizer
        self.image_processor = self.processor.image_processor
        self.device, self.dtype = torch.device("cpu"), torch.float32
        self.max_text_len = AutoConfig.from_pretrained(sidecar(path)).max_text_len

    def pixels(self, pil_images):
        values, mask = fit_inside(pil_images, self.onnx.image_size, self.image_processor.image_mean,
                                  self.image_processor.image_std)  # fmt: skip
        return torch.from_numpy(values), torch.from_numpy(mask)

    def encode_images(self, pixel_values, pixel_mask):
        return pixel_values, pixel_mask

    def predict(self, images, members, prompts):
        pixel_values, pixel_mask = images
        length = max(len(p) for p in prompts)
        ids = np.zeros((len(members), length), dtype=np.int64)
        mask = np.zeros((len(members), length), dtype=np.int64)
        for row, prompt in enumerate(prompts):
            ids[row, : len(prompt)] = prompt
            mask[row, : len(prompt)] = 1
        groups = [members] if self.onnx.meta["dynamic_batch"] else [[m] for m in members]
        parts = []
        for group in groups:
            rows = [members.index(m) for m in group]
            parts.append(self.onnx(pixel_values[group].numpy(), pixel_mask[group].numpy(), ids[rows], mask[rows]))
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
