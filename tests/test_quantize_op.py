"""mmgdino.ops.quantize_uint8: byte for byte PyTorch's quantized_decomposed.quantize_per_tensor (the formula the
int8 graphs use) in every input dtype, at the clamps, ties and non-finite values; opcheck; bad arguments."""

import pytest
import torch
from torch.ao.quantization.fx import _decomposed  # noqa: F401  (registers quantized_decomposed)

from mmgdino import ops
from mmgdino.ops import _torch_impl

DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def _reference(x, scale, zero_point):
    return torch.ops.quantized_decomposed.quantize_per_tensor(x.float(), scale, zero_point, 0, 255, torch.uint8)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale, zero_point", [(0.05, 128), (0.25, 0), (0.1, 255), (3e-4, 7)])
def test_matches_quantize_per_tensor(dtype, scale, zero_point):
    gen = torch.Generator().manual_seed(0)
    # 4099 elements: the 8-wide loop, its tail, and every task boundary of the parallel loop at least once.
    x = (torch.randn(4099, generator=gen) * 200 * scale).to(dtype)
    ties = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, 127.5, -128.5, 1e6, -1e6]) * scale
    x = torch.cat([x, ties.to(dtype)])
    want = _reference(x, scale, zero_point)
    assert torch.equal(ops.quantize_uint8(x, scale, zero_point), want)
    assert torch.equal(_torch_impl.quantize_uint8(x, scale, zero_point), want)
    # Shapes are kept; strided inputs are read correctly.
    grid = x[:4096].view(64, 64).t()
    assert torch.equal(ops.quantize_uint8(grid, scale, zero_point), _reference(grid, scale, zero_point))


def test_non_finite_values_are_clamped_or_zeroed():
    x = torch.tensor([float("inf"), float("-inf"), float("nan")] * 3)
    out = ops.quantize_uint8(x, 0.1, 10)
    assert out.tolist() == [255, 0, 10] * 3
    assert torch.equal(_torch_impl.quantize_uint8(x, 0.1, 10), out)


def test_empty_and_opcheck():
    assert ops.quantize_uint8(torch.empty(0, 5), 0.1, 3).shape == (0, 5)
    x = torch.randn(33, 17)
    torch.library.opcheck(torch.ops.mmgdino.quantize_uint8.default, (x, 0.02, 128))
    torch.library.opcheck(torch.ops.mmgdino.quantize_uint8.default, (x.bfloat16(), 0.02, 128))


def test_compiles_without_graph_breaks():
    x = torch.randn(40, 24)
    compiled = torch.compile(lambda t: ops.quantize_uint8(t * 2, 0.05, 128), fullgraph=True, backend="eager")
    assert torch.equal(compiled(x), _reference(x * 2, 0.05, 128))


@pytest.mark.parametrize(
    "args, error, match",
    [
        ((torch.ones(3, dtype=torch.int32), 0.1, 0), TypeError, "x must be float64, float32, float16 or bfloat16"),
        ((torch.ones(3), 0.0, 0), ValueError, "scale must be positive and finite, got 0"),
        ((torch.ones(3), float("inf"), 0), ValueError, "scale must be positive and finite"),
        ((torch.ones(3), 0.1, 256), ValueError, r"zero_point must be in \[0, 255\], got 256"),
        ((torch.ones(3), 0.1, -1), ValueError, r"zero_point must be in \[0, 255\], got -1"),
    ],
)
def test_bad_arguments(args, error, match):
    with pytest.raises(error, match=match):
        ops.quantize_uint8(*args)
    if "cpu" in ops.available_backends("ms_deform_attn", "cpu"):  # the compiled kernel says the same
        with pytest.raises(RuntimeError, match=match):
            torch.ops.mmgdino.quantize_uint8(*args)
