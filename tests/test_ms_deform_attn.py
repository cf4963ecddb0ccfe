import pytest
import torch
from helpers import (
    EDGE_PIXELS,
    GRAD_TOLERANCE,
    MSDA_BAD_INPUTS,
    MSDA_CASES,
    TOLERANCE,
    backend_params,
    grid_sample_grads,
    level_table,
    msda_bad_args,
    msda_edge_inputs,
    msda_inputs,
    msda_reference,
    opcheck_kwargs,
    rel_err,
)

from mmgdino import ops

BACKENDS = backend_params("ms_deform_attn")
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def _run(backend, inputs):
    return ops.ms_deform_attn(*inputs, backend=backend)


CASES = MSDA_CASES


@pytest.mark.parametrize("backend_device", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", list(CASES))
def test_forward_matches_float64_reference(backend_device, dtype, case):
    backend, device = backend_device
    inputs = msda_inputs(dtype=dtype, device=device, **CASES[case])
    out = _run(backend, inputs)
    ref = msda_reference(*inputs)
    assert out.dtype == dtype and out.shape == ref.shape
    assert rel_err(out, ref) <= TOLERANCE[dtype]


@pytest.mark.parametrize("backend_device", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", ["default", "five_levels", "odd_head_dim", "head_dim_32", "non_contiguous"])
def test_backward_matches_float64_reference(backend_device, dtype, case):
    backend, device = backend_device
    # Keep points off pixel boundaries: the location gradient jumps there, so rounding could pick either side.
    value, shapes, starts, loc, attn = msda_inputs(dtype=dtype, device=device, border_fraction=0.0, **CASES[case])
    grad_out = torch.randn(value.shape[0], loc.shape[1], value.shape[2] * value.shape[3], device=device).to(dtype)

    def grads(v, l, a, backend):
        v, l, a = (t.detach().requires_grad_(True) for t in (v, l, a))
        out = ops.ms_deform_attn(v, shapes, starts, l, a, backend=backend)
        return torch.autograd.grad(out, (v, l, a), grad_out.to(out.dtype))

    got = grads(value, loc, attn, backend)
    want = grads(value.double(), loc.double(), attn.double(), "torch")
    for name, g, r in zip(("value", "sampling_locations", "attention_weights"), got, want):
        assert g.dtype == dtype, name
        assert rel_err(g, r) <= GRAD_TOLERANCE[dtype], name


@pytest.mark.parametrize("backend_device", BACKENDS)
def test_gradcheck_float64(backend_device):
    backend, device = backend_device
    value, shapes, starts, loc, attn = msda_inputs(
        shapes=((4, 5), (2, 3), (1, 1)),
        batch=2,
        queries=3,
        heads=2,
        head_dim=3,
        points=2,
        dtype=torch.float64,
        border_fraction=0.0,
        device=device,
    )
    inputs = tuple(t.requires_grad_(True) for t in (value, loc, attn))
    # Each Triton-interpreter call costs ~0.1 s; fast mode checks a random projection instead of every column.
    assert torch.autograd.gradcheck(
        lambda v, l, a: ops.ms_deform_attn(v, shapes, starts, l, a, backend=backend),
        inputs,
        eps=1e-6,
        atol=1e-6,
        fast_mode=backend == "triton",
    )


def test_cpu_kernel_equals_torch_backend_bitwise_in_float64():
    inputs = msda_inputs(dtype=torch.float64)
    if "cpu" not in ops.available_backends("ms_deform_attn", "cpu"):
        pytest.skip("mmgdino._C is not built")
    torch.testing.assert_close(_run("cpu", inputs), _run("torch", inputs), rtol=1e-13, atol=1e-13)


def _transformers_msda():
    from transformers.models.mm_grounding_dino.modeling_mm_grounding_dino import MultiScaleDeformableAttention

    return MultiScaleDeformableAttention()


@pytest.mark.parametrize("backend_device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_matches_transformers_module(backend_device, dtype):
    backend, device = backend_device
    value, shapes, starts, loc, attn = msda_inputs(
        shapes=((10, 12), (5, 6), (3, 3), (2, 1)),
        queries=20,
        heads=4,
        head_dim=8,
        points=4,
        dtype=dtype,
        device=device,
    )
    theirs = _transformers_msda()(value, shapes, [tuple(s) for s in shapes.tolist()], starts, loc, attn, 64)
    ours = ops.ms_deform_attn(value, shapes, starts, loc, attn, backend=backend)
    assert rel_err(ours, theirs) <= TOLERANCE[dtype] * 10


@pytest.mark.parametrize(
    "backend", [b for b in ("cpu", "triton") if b in ops.available_backends("ms_deform_attn", "cpu")]
)
def test_offsets_past_2_31_elements_on_the_cpu(backend):
    """A 3000 x 3000 level of one 256-channel head: value has 2.3e9 elements, past int32 offsets in the bottom
    rows. torch.empty leaves the pages untouched until written, so only the bottom 16 image rows, where every
    point samples, cost memory. (The GPU version is in test_cuda.py; the CUDA kernels' in test_cuda_emulated.py.)"""
    size, head_dim, lines = 3000, 256, 16
    shapes, starts, num_values = level_table(((size, size),))
    value = torch.empty(1, num_values, 1, head_dim, dtype=torch.bfloat16)
    assert value.numel() > 2**31
    start = (size - lines) * size
    window = torch.randn(1, lines * size, 1, head_dim).to(torch.bfloat16)
    value[:, start:] = window
    loc = torch.rand(1, 6, 1, 1, 4, 2)
    loc[..., 1] = 1 - loc[..., 1] * (lines - 2) / size  # every corner inside the window or off the map
    loc = loc.to(torch.bfloat16)
    attn = torch.rand(1, 6, 1, 1, 4).to(torch.bfloat16)
    out = ops.ms_deform_attn(value, shapes, starts, loc, attn, backend=backend)
    # The reference sees the window alone, its level start shifted so that rows before it are zero padding.
    ref = msda_reference(window, shapes, starts - start, loc, attn)
    assert rel_err(out, ref) <= TOLERANCE[torch.bfloat16]


@pytest.mark.parametrize("backend_device", BACKENDS)
def test_nan_and_inf_locations_sample_nothing(backend_device):
    backend, device = backend_device
    value, shapes, starts, loc, attn = msda_inputs(border_fraction=0.0, device=device)
    bad = loc.clone()
    bad[0, 0, 0, 0, 0, 0] = float("nan")
    bad[1, 2, 1, 1, 0, 1] = float("inf")
    bad[0, 3, 1, 0, 1] = float("-inf")
    out = ops.ms_deform_attn(value, shapes, starts, bad, attn, backend=backend)
    assert torch.isfinite(out).all()
    # Same as moving those points far off the map.
    off_map = torch.where(torch.isfinite(bad), bad, torch.full_like(bad, 5.0))
    torch.testing.assert_close(out, ops.ms_deform_attn(value, shapes, starts, off_map, attn, backend="torch"))


@pytest.mark.parametrize("backend_device", BACKENDS)
def test_opcheck(backend_device):
    backend, device = backend_device
    if backend == "triton":
        op = torch.ops.mmgdino.ms_deform_attn_triton.default
    else:
        op = torch.ops.mmgdino.ms_deform_attn.default
    value, shapes, starts, loc, attn = msda_inputs(dtype=torch.float64, queries=4, border_fraction=0.0, device=device)
    args = (value.requires_grad_(True), shapes, starts, loc.requires_grad_(True), attn.requires_grad_(True))
    torch.library.opcheck(op, args, **opcheck_kwargs(backend, device))


def test_opcheck_backward_operator():
    value, shapes, starts, loc, attn = msda_inputs(dtype=torch.float32, queries=4)
    grad = torch.randn(value.shape[0], 4, value.shape[2] * value.shape[3])
    torch.library.opcheck(torch.ops.mmgdino.ms_deform_attn_backward.default, (grad, value, shapes, starts, loc, attn))


# ---------------------------------------------------------------- bad input


BAD_INPUTS = MSDA_BAD_INPUTS
_bad = msda_bad_args


@pytest.mark.parametrize("backend_device", BACKENDS)
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_raises_clear_error(backend_device, case):
    backend, device = backend_device
    change, error, words = BAD_INPUTS[case]
    args = _bad()
    args.update(change(args))
    args = {k: v.to(device) for k, v in args.items()}
    if device == "cuda" and case.startswith("level_"):
        # Device level tables are not read on the host (that would sync); the kernels bounds-guard instead.
        out = ops.ms_deform_attn(**args, backend=backend)
        assert torch.isfinite(out).all()
        return
    with pytest.raises(error, match=words):
        ops.ms_deform_attn(**args, backend=backend)


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_raises_from_the_raw_operator(case):
    """Direct torch.ops callers get the C++ checks (or the default kernel's) with the same words."""
    change, error, words = BAD_INPUTS[case]
    args = _bad()
    args.update(change(args))
    with pytest.raises((error, RuntimeError), match=words):
        torch.ops.mmgdino.ms_deform_attn(*args.values())


@pytest.mark.parametrize("backend_device", BACKENDS)
def test_deterministic_mode(backend_device):
    """Under torch.use_deterministic_algorithms every backend's backward gives the same bits twice: the CPU kernel
    by construction, the atomic GPU/Triton kernels by switching to the gather formulation; the gradients still
    match the normal backward."""
    backend, device = backend_device
    if backend == "torch" and device == "cuda":
        pytest.skip("PyTorch's own CUDA embedding_bag backward decides this")
    value, shapes, starts, loc, attn = msda_inputs(device=device, queries=4, border_fraction=0.0)
    leaves = [t.requires_grad_(True) for t in (value, loc, attn)]
    normal = torch.autograd.grad(
        ops.ms_deform_attn(leaves[0], shapes, starts, leaves[1], leaves[2], backend=backend).sum(), leaves
    )
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        out = ops.ms_deform_attn(leaves[0], shapes, starts, leaves[1], leaves[2], backend=backend)
        first = torch.autograd.grad(out.sum(), leaves, retain_graph=True)
        second = torch.autograd.grad(out.sum(), leaves)
    finally:
        torch.use_deterministic_algorithms(previous)
    for a, b, n in zip(first, second, normal):
        assert torch.equal(a, b)
        torch.testing.assert_close(a, n, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_deterministic_backward_matches_reference(dtype):
    """The gather formulation used in deterministic mode, in several query chunks, against autograd through the
    float64 reference."""
    from mmgdino.ops import _torch_impl

    value, shapes, starts, loc, attn = msda_inputs(dtype=dtype, queries=23, head_dim=8, spread=1.6)
    grad = torch.randn(value.shape[0], 23, value.shape[2] * value.shape[3]).to(dtype)
    got = _torch_impl.ms_deform_attn_backward_deterministic(
        grad, value, shapes, starts, loc, attn, max_gather_bytes=4096
    )
    leaves = [t.double().requires_grad_(True) for t in (value, loc, attn)]
    ref = torch.autograd.grad(msda_reference(leaves[0], shapes, starts, leaves[1], leaves[2]), leaves, grad.double())
    tol = {torch.float64: 1e-10, torch.float32: 1e-4, torch.bfloat16: 2e-2}[dtype]
    for g, r, t in zip(got, ref, (value, loc, attn)):
        assert g.dtype == t.dtype and g.shape == t.shape
        assert rel_err(g, r) <= tol


@pytest.mark.parametrize("backend_device", BACKENDS)
@pytest.mark.parametrize("queries, points", [(0, 2), (3, 0)], ids=["zero_queries", "zero_points"])
def test_zero_queries_and_zero_points_give_zeros_and_zero_gradients(backend_device, queries, points):
    backend, device = backend_device
    value, shapes, starts, loc, attn = msda_inputs(queries=max(queries, 1), points=max(points, 1), device=device)
    loc, attn = loc[:, :queries, :, :, :points].contiguous(), attn[:, :queries, :, :, :points].contiguous()
    leaves = [t.requires_grad_(True) for t in (value, loc, attn)]
    out = ops.ms_deform_attn(leaves[0], shapes, starts, leaves[1], leaves[2], backend=backend)
    assert out.shape == (value.shape[0], queries, value.shape[2] * value.shape[3]) and not out.any()
    grads = torch.autograd.grad(out.sum(), leaves, allow_unused=True)
    assert all(g is None or not g.any() for g in grads)


@pytest.mark.parametrize("backend_device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_edge_points_match_grid_sample_values_and_gradients(backend_device, dtype):
    """Points at pixel coordinates -1, -0.5, 0, w - 1, w - 0.5 and w on a 4x4 map of 1..16: the output and every
    gradient equal transformers' grid_sample path, including the one-sided location gradient at -1 (where the
    original Deformable-DETR kernel returns 0)."""
    backend, device = backend_device
    value, shapes, starts, loc, attn = msda_edge_inputs(dtype, device)
    grad_out = torch.linspace(-1, 1, loc.shape[1] * 6, dtype=torch.float64, device=device).view(1, -1, 6)
    want_out, want = grid_sample_grads(value, shapes, starts, loc, attn, grad_out)
    leaves = [t.detach().requires_grad_(True) for t in (value, loc, attn)]
    out = ops.ms_deform_attn(leaves[0], shapes, starts, leaves[1], leaves[2], backend=backend)
    got = torch.autograd.grad(out, leaves, grad_out.to(dtype))
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(out.double(), want_out, rtol=tol, atol=tol)
    for name, g, w in zip(("value", "sampling_locations", "attention_weights"), got, want):
        torch.testing.assert_close(g.double(), w, rtol=tol, atol=tol, msg=name)
    # The case the issue names: x = -1 (first column of EDGE_PIXELS), y = 0 (third row): 4 * value[0, 0] ... > 0
    x_minus_1 = got[1][0, 2 * len(EDGE_PIXELS), 0, 0, 0, 0].item()
    assert x_minus_1 != 0 and x_minus_1 == pytest.approx(want[1][0, 2 * len(EDGE_PIXELS), 0, 0, 0, 0].item())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_16_bit_cpu_kernel_keeps_nan_and_rounds_to_nearest(dtype):
    if "cpu" not in ops.available_backends("ms_deform_attn", "cpu"):
        pytest.skip("extension not built")
    value, shapes, starts, loc, attn = msda_inputs(dtype=dtype, head_dim=8, border_fraction=0.0)
    value[0, :, 0, 0] = float("nan")  # every row of head 0, channel 0, batch 0
    out = ops.ms_deform_attn(value, shapes, starts, loc, attn, backend="cpu")
    reference = ops.ms_deform_attn(value, shapes, starts, loc, attn, backend="torch")
    assert torch.equal(torch.isnan(out), torch.isnan(reference)) and torch.isnan(out[0, :, 0]).all()
    finite = ~torch.isnan(reference)
    assert rel_err(out[finite], reference[finite]) <= TOLERANCE[dtype]
