"""int8 inference on the CPU: the model's linear layers run oneDNN's int8 matrix products (u8 activations x s8
weights, int32 accumulation, VNNI where the CPU has it), the rest of the model in float32.

The kernels are the ones PyTorch's own int8 stack lowers to (`torch.ops.onednn.qlinear_pointwise`, what PT2E with
torchao's `X86InductorQuantizer` produces under Inductor), called per layer instead of through an exported graph:
`torch.export` fixes the image size of this model (the Swin backbone's padding branches), while a layer swap keeps
every size, eager and compiled alike (`mmgdino.compiled`).

- **Weights**: symmetric per output channel, quantized once.
- **Activations**: asymmetric per tensor (uint8 with a zero point). With calibration images (the user's own:
  `Detector(dtype="int8", calibration=[...])`, `--calibration N`), each layer's range is the widest seen over
  them (static, no extra pass per call); without, each call measures its input's range first (dynamic).
- **Which layers**: every linear layer of the image backbone, the encoder, the decoder and the heads whose
  forward is a plain product (`quantizable`); not the text backbone (each prompt is encoded once and cached), and
  not the fusion layer's projections, whose weights are folded with the prompt (`BiAttention`).
"""

import torch
from torch import nn

from .errors import UsageError
from .images import load_image

CALIBRATION_IMAGES = 8  # the CLI's default --calibration


class Int8Linear(nn.Module):
    """A linear layer on oneDNN's int8 product; float32 in and out."""

    def __init__(self, linear, low=None, high=None):
        super().__init__()
        weight = linear.weight.detach().float()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        scale = weight.abs().amax(1).clamp_min(1e-12) / 127.0
        quantized = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
        self.register_buffer("weight_scale", scale, persistent=False)
        self.register_buffer("weight_zero_point", torch.zeros_like(scale, dtype=torch.long), persistent=False)
        self.register_buffer("weight_int8", quantized, persistent=False)
        self.packed = torch.ops.onednn.qlinear_prepack(quantized, None)  # oneDNN's blocked layout (opaque)
        bias = linear.bias.detach().float() if linear.bias is not None else None
        self.register_buffer("bias", bias, persistent=False)
        self.static = None if low is None else _affine(low, high)

    def forward(self, x):
        shape = x.shape
        x = x.reshape(-1, self.in_features).float()
        scale, zero_point = self.static or _affine(*torch.aminmax(x))
        if torch.compiler.is_exporting():
            return self._reference(x, scale, zero_point).view(*shape[:-1], self.out_features)
        q = (x * (1.0 / scale)).round_().add_(zero_point).clamp_(0, 255).to(torch.uint8)
        out = torch.ops.onednn.qlinear_pointwise(q, scale, zero_point, self.packed, self.weight_scale,
                                                 self.weight_zero_point, self.bias, 1.0, 0, torch.float32, "none",
                                                 [], "")  # fmt: skip
        return out.view(*shape[:-1], self.out_features)

    def _reference(self, x, scale, zero_point):
        """The same product in PyTorch's quantized reference form (quantize, dequantize, linear): what PT2E
        exports and Inductor's x86 patterns fold, under freezing, into this very oneDNN int8 product with its
        packed weight (the packing op has no tracing kernel, so the exported graph cannot call it)."""
        from torch.ao.quantization.fx import _decomposed  # noqa: F401  (registers quantized_decomposed)

        ops = torch.ops.quantized_decomposed
        q = ops.quantize_per_tensor.default(x, scale, zero_point, 0, 255, torch.uint8)
        x = ops.dequantize_per_tensor.default(q, scale, zero_point, 0, 255, torch.uint8)
        weight = ops.dequantize_per_channel.default(self.weight_int8, self.weight_scale, self.weight_zero_point, 0,
                                                    -128, 127, torch.int8)  # fmt: skip
        return torch.nn.functional.linear(x, weight, self.bias)


def _affine(low, high):
    """uint8 (scale, zero point) covering [low, high] and zero."""
    low, high = min(float(low), 0.0), max(float(high), 0.0)
    scale = max((high - low) / 255.0, 1e-8)
    return scale, int(min(max(round(-low / scale), 0), 255))


def quantizable(model):
    """{name: nn.Linear} of the layers int8 runs (see the module docstring)."""
    from .modeling.layers import BiAttention

    skipped = set()
    for name, module in model.named_modules():
        if isinstance(module, BiAttention) or name.endswith("text_backbone"):
            skipped.add(name + ".")
    return {name: module for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and not any(name.startswith(s) for s in skipped)}  # fmt: skip


def _replace(model, name, new):
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if isinstance(parent, nn.ModuleList) or isinstance(parent, nn.Sequential):
        parent[int(child)] = new
    else:
        setattr(parent, child, new)


def activation_ranges(layers, passes):
    """{name: (low, high)}: each layer's input range over the forward passes `passes` (callables) run in float32."""
    ranges = {}

    def recorder(name):
        def hook(module, args):
            low, high = torch.aminmax(args[0].detach().float())
            old = ranges.get(name, (float(low), float(high)))
            ranges[name] = (min(old[0], float(low)), max(old[1], float(high)))

        return hook

    handles = [layer.register_forward_pre_hook(recorder(name)) for name, layer in layers.items()]
    try:
        with torch.inference_mode():
            for forward in passes:
                forward()
    finally:
        for handle in handles:
            handle.remove()
    return ranges


def image_passes(runner, images):
    """A forward pass per calibration image through the runner, with an empty prompt (the ranges the backbone,
    encoder and decoder see hardly depend on the words)."""
    prompt = [runner.tokenizer.cls_token_id, runner.tokenizer.sep_token_id]
    for image in images:
        yield lambda image=image: runner.predict(runner.encode_images(*runner.pixels([load_image(image)])), [0],
                                                 [prompt])  # fmt: skip


def quantize_runner(runner, calibration=None, passes=None):
    """The runner's model with its quantizable layers on int8: static ranges from `calibration` images (or from
    `passes`, callables that run the model), else dynamic. Returns the runner; `runner.precision` becomes "int8"."""
    if runner.device.type != "cpu" or runner.dtype != torch.float32:
        raise UsageError("int8 quantizes a float32 model on the CPU")
    if not hasattr(torch.ops.onednn, "qlinear_pointwise"):
        raise UsageError("int8 needs a torch built with oneDNN (torch.ops.onednn.qlinear_pointwise)")
    layers = quantizable(runner.model)
    ranges = {}
    if calibration is not None:
        calibration = list(calibration)
        if not calibration:
            raise UsageError("calibration is empty: give at least one image, or None for dynamic ranges")
        passes = image_passes(runner, calibration)
    if passes is not None:
        ranges = activation_ranges(layers, passes)
    for name, layer in layers.items():
        _replace(runner.model, name, Int8Linear(layer, *ranges.get(name, (None, None))))
    runner.precision = "int8"
    runner.calibrated = bool(ranges)
    return runner
