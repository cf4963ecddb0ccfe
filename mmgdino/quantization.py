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
- **Everything else** (norms, attention, the deformable sampling, the activations between the products) runs at
  the CPU's automatic float precision (`glue_dtype`): bfloat16 where the CPU computes it natively, float32 elsewhere,
  as OpenVINO runs its int8 models. The products then read bfloat16 activations and write bfloat16 outputs, half
  the bytes of the float32 ones (a 22k x 2048 product output is 180 MB in float32). The activations are quantized
  in one pass (`mmgdino.ops.quantize_uint8`) instead of PyTorch's six.
"""

import torch
from torch import nn

from . import precision
from .errors import UsageError
from .images import load_image
from .ops import quantize_uint8

CALIBRATION_IMAGES = 8  # the CLI's default --calibration
# From this torch on, Inductor's x86 int8 patterns (dequantize + linear -> oneDNN's int8 product, its post-op
# fusions) live in torchao, which registers them when its X86InductorQuantizer module is imported.
INT8_PATTERNS_IN_TORCHAO = (2, 14)


class Int8Linear(nn.Module):
    """A linear layer on oneDNN's int8 product; float32 or bfloat16 in, the same out. Its scales and bias stay
    float32 when the model is converted (what the product takes), and it stays on the CPU."""

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

    def _apply(self, fn, recurse=True):
        # model.to(bfloat16) must not round the scales and bias (the product takes float32 ones); a move off the
        # CPU is refused by the product itself at the first call.
        return self

    def forward(self, x):
        shape, dtype = x.shape, x.dtype if x.dtype in (torch.float32, torch.bfloat16) else torch.float32
        x = x.reshape(-1, self.in_features)
        scale, zero_point = self.static or _affine(*torch.aminmax(x))
        if torch.compiler.is_exporting():
            return self._reference(x, scale, zero_point, dtype).view(*shape[:-1], self.out_features)
        out = torch.ops.onednn.qlinear_pointwise(quantize_uint8(x, scale, zero_point), scale, zero_point, self.packed,
                                                 self.weight_scale, self.weight_zero_point, self.bias, 1.0, 0, dtype,
                                                 "none", [], "")  # fmt: skip
        return out.view(*shape[:-1], self.out_features)

    def _reference(self, x, scale, zero_point, dtype):
        """The same product in PyTorch's quantized reference form (quantize, dequantize, linear; for bfloat16 the
        casts around it): what PT2E exports and Inductor's x86 patterns fold, under freezing, into this very
        oneDNN int8 product with its packed weight (the packing op has no tracing kernel, so the exported graph
        cannot call it). The patterns match exactly that graph: a cast where none is needed, or one written as
        `.to()` (export adds a metadata assertion that becomes a second user of the dequantized tensor), leaves a
        plain float product in the compiled graph, so the casts are `prims.convert_element_type`, and only for
        bfloat16."""
        from torch.ao.quantization.fx import _decomposed  # noqa: F401  (registers quantized_decomposed)

        ops, cast = torch.ops.quantized_decomposed, torch.ops.prims.convert_element_type.default
        if x.dtype != torch.float32:
            x = cast(x, torch.float32)
        q = ops.quantize_per_tensor.default(x, scale, zero_point, 0, 255, torch.uint8)
        x = ops.dequantize_per_tensor.default(q, scale, zero_point, 0, 255, torch.uint8)
        weight = ops.dequantize_per_channel.default(self.weight_int8, self.weight_scale, self.weight_zero_point, 0,
                                                    -128, 127, torch.int8)  # fmt: skip
        bias = self.bias
        if dtype != torch.float32:
            x, weight = cast(x, dtype), cast(weight, dtype)
            bias = None if bias is None else cast(bias, dtype)
        return torch.nn.functional.linear(x, weight, bias)


def enable_compiled_int8():
    """Makes Inductor fold the exported int8 layers (`Int8Linear._reference`) into oneDNN's int8 products: its own
    patterns up to torch 2.13, torchao's from 2.14 on. Without them a compiled int8 graph still runs and agrees, on
    float products, so a missing torchao is an error, not a silent slowdown."""
    if torch.torch_version.TorchVersion(torch.__version__) < INT8_PATTERNS_IN_TORCHAO:
        return
    try:
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer  # noqa: F401  (registers the patterns)
    except ImportError as exc:
        raise UsageError(f"compiled int8 on torch {torch.__version__} needs torchao, where its Inductor patterns "
                         f"live since torch 2.14: pip install 'mmgdino[int8]' ({exc})") from exc  # fmt: skip


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


def glue_dtype(features=None):
    """The dtype of everything around the int8 products: the CPU's automatic precision (mmgdino.precision)."""
    return getattr(torch, precision.automatic_dtype("cpu", features)[0])


def quantize_runner(runner, calibration=None, passes=None, glue=None):
    """The runner's model with its quantizable layers on int8: static ranges from `calibration` images (or from
    `passes`, callables that run the model), else dynamic; the rest of the model converted to `glue` (default
    `glue_dtype()`). Returns the runner; `runner.precision` becomes "int8"."""
    if runner.device.type != "cpu" or runner.dtype != torch.float32:
        raise UsageError("int8 quantizes a float32 model on the CPU")
    glue = glue or glue_dtype()
    if glue not in (torch.float32, torch.bfloat16):
        raise UsageError(f"int8 runs the rest of the model in float32 or bfloat16, not {glue}")
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
    runner.convert(glue)
    runner.precision = "int8"
    runner.calibrated = bool(ranges)
    return runner
