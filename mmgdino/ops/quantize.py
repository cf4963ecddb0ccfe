"""mmgdino.ops.quantize_uint8: an activation as uint8 for oneDNN's int8 matrix products (mmgdino.quantization)."""

import torch

from . import _checks


def quantize_uint8(x, scale, zero_point):
    """clamp(round(x / scale) + zero_point, 0, 255) as uint8, rounding half to even: the formula of PyTorch's
    `quantized_decomposed.quantize_per_tensor` (asymmetric, per tensor), in one pass on the CPU (float32, bfloat16,
    float16 in). Not differentiable (an integer output).

    Args:
        x: any shape, floating point.
        scale: positive float.
        zero_point: int in [0, 255].
    """
    scale, zero_point = float(scale), int(zero_point)
    _checks.check_quantize_uint8(x, scale, zero_point)
    return torch.ops.mmgdino.quantize_uint8(x, scale, zero_point)
