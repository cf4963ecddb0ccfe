"""The CUDA backend of csrc/cuda/, run on the CPU: the kernels (*.cu) unchanged by the SIMT emulator in
tools/mmgdino_tools/cuda_emulator/, and the ATen glue (*_cuda.cpp) around them as a torch extension.

CI has no GPU; this runs the kernels' own code (index math, group mapping, 16-byte vector and scalar paths,
shuffles, shared-memory tiles, grid-stride loops) against the float64 reference, under AddressSanitizer, so a
read or write outside any buffer fails. What it cannot show: speed, the memory model, real atomics contention.
"""

import math

import pytest
import torch
from helpers import (
    CONTRASTIVE_SHAPES,
    GRAD_TOLERANCE,
    MSDA_BAD_INPUTS,
    MSDA_CASES,
    TOLERANCE,
    contrastive_inputs,
    grid_sample_grads,
    msda_bad_args,
    msda_edge_inputs,
    msda_inputs,
    msda_reference,
    rel_err,
)

from mmgdino.ops import _torch_impl
from mmgdino_tools import cuda_emulation as emu
from mmgdino_tools.emulated_glue import load_glue_extension
from mmgdino_tools.emulator_build import MAX_BLOCKS, build, compiler

pytestmark = pytest.mark.skipif(compiler() is None, reason="needs a C++ compiler (g++ or $CXX)")
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


@pytest.fixture(scope="session")
def simt():
    return build()


# ---------------------------------------------------------------- the emulator itself


def test_emulator_computes_warp_shuffles_and_shared_memory(simt):
    rc, out, err = emu.selftest(simt, "group_sums")
    assert rc == 0, err
    widths, values = [int(w) for w in out.split()[::2]], [float(v) for v in out.split()[1::2]]
    data = [i % 7 for i in range(3 * 64)]
    want = []
    for width in (32, 8, 2):
        want += [(width, float(sum(data[g * width : (g + 1) * width]))) for g in range(len(data) // width)]
    assert list(zip(widths, values)) == want

    rc, out, err = emu.selftest(simt, "reverse_in_block")
    assert rc == 0, err
    assert [int(v) for v in out.split()] == [b * 128 + 127 - i for b in range(2) for i in range(128)]


@pytest.mark.parametrize(
    "case,words",
    [
        ("shuffle_after_exit", "exited while the rest of its warp waits at a shuffle"),
        ("divergent_sync", "waits at __syncthreads"),
        ("read_one_past", "heap-buffer-overflow"),
    ],
)
def test_emulator_rejects_what_the_hardware_leaves_undefined(simt, case, words):
    rc, out, err = emu.selftest(simt, case)
    assert rc != 0 and words in out + err


# ---------------------------------------------------------------- ms_deform_attn


def _grads_reference(grad_out, value, shapes, starts, loc, attn):
    """float64 gradients of the torch backend (same zero padding and row guard as the kernels)."""
    leaves = [t.double().requires_grad_(True) for t in (value, loc, attn)]
    out = _torch_impl.ms_deform_attn(leaves[0], shapes, starts, leaves[1], leaves[2])
    return torch.autograd.grad(out, leaves, grad_out.double())


def _check_backward(simt, inputs, dtype, misalign=False):
    value, shapes, starts, loc, attn = inputs
    grad_out = torch.randn(value.shape[0], loc.shape[1], value.shape[2] * value.shape[3]).to(dtype)
    got = emu.ms_deform_attn_backward(simt, grad_out, *inputs, misalign=misalign)
    want = _grads_reference(grad_out, *inputs)
    assert got[0].dtype == (torch.float64 if dtype == torch.float64 else torch.float32)  # the accumulation buffer
    for name, g, r in zip(("value", "sampling_locations", "attention_weights"), got, want):
        assert rel_err(g, r) <= GRAD_TOLERANCE[dtype], name
    return got


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", list(MSDA_CASES))
def test_forward_matches_float64_reference(simt, dtype, case):
    inputs = msda_inputs(dtype=dtype, **MSDA_CASES[case])
    out = emu.ms_deform_attn(simt, *inputs)
    assert rel_err(out, msda_reference(*inputs)) <= TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", ["default", "five_levels", "odd_head_dim", "head_dim_32", "batch_3", "one_point"])
def test_backward_matches_float64_reference(simt, dtype, case):
    inputs = msda_inputs(dtype=dtype, border_fraction=0.0, **MSDA_CASES[case])
    _check_backward(simt, inputs, dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("head_dim", [16, 24, 40, 64])
def test_16_bit_backward_with_paired_and_unpaired_lanes(simt, dtype, head_dim):
    """16-bit gradients pair lanes for their atomics when the 8-channel chunks pair up (16: 2 chunks, 64: 8) and
    not otherwise (24: 3, 40: 5, where the last lanes of a group have no chunk)."""
    _check_backward(simt, msda_inputs(dtype=dtype, head_dim=head_dim, heads=3, border_fraction=0.0), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_unaligned_pointers_take_the_scalar_path_with_the_same_result(simt, dtype):
    inputs = msda_inputs(dtype=dtype, head_dim=16, heads=4, border_fraction=0.0)
    aligned = emu.ms_deform_attn(simt, *inputs)
    # One element off 16-byte alignment: lane = channel, one element per load; the arithmetic per channel is the
    # same, so the bits are too.
    assert torch.equal(emu.ms_deform_attn(simt, *inputs, misalign=True), aligned)
    _check_backward(simt, inputs, dtype, misalign=True)


@pytest.mark.parametrize("dtype,head_dim", [(torch.float32, 256), (torch.bfloat16, 512), (torch.float64, 96)], ids=str)
def test_wide_heads_loop_over_channel_chunks(simt, dtype, head_dim):
    # float32 256: 64 chunks of 4 over a 32-lane group, 2 per lane; bfloat16 512: 64 chunks of 8.
    inputs = msda_inputs(dtype=dtype, head_dim=head_dim, heads=1, queries=5, batch=1, border_fraction=0.0)
    assert rel_err(emu.ms_deform_attn(simt, *inputs), msda_reference(*inputs)) <= TOLERANCE[dtype]
    _check_backward(simt, inputs, dtype)


def test_backward_refuses_heads_wider_than_its_registers(simt):
    # 129 chunks of 4 floats > 32 lanes * 4 chunks: the launcher answers cudaErrorInvalidValue (the glue turns it
    # into a ValueError naming head_dim); the forward has no such limit.
    inputs = msda_inputs(head_dim=516, heads=1, queries=2, batch=1)
    assert rel_err(emu.ms_deform_attn(simt, *inputs), msda_reference(*inputs)) <= TOLERANCE[torch.float32]
    with pytest.raises(emu.KernelError, match="error 1:"):
        emu.ms_deform_attn_backward(simt, torch.randn(1, 2, 516), *inputs)


@pytest.mark.parametrize("head_dim,heads,queries", [(32, 8, 61), (4, 8, 101), (6, 3, 93)])
def test_grid_stride_loops_cover_every_item(simt, head_dim, heads, queries):
    # The emulator caps grids at MAX_BLOCKS blocks, so these go around the grid-stride loop several times,
    # with a last partial warp of items (groups of 8, 1 and 8 lanes).
    inputs = msda_inputs(head_dim=head_dim, heads=heads, queries=queries, border_fraction=0.0)
    chunks = head_dim // 4 if head_dim % 4 == 0 else head_dim  # float32: 16-byte chunks when they fit
    group = min(32, 1 << (chunks - 1).bit_length())
    assert 2 * queries * heads > MAX_BLOCKS * (256 // group)
    assert rel_err(emu.ms_deform_attn(simt, *inputs), msda_reference(*inputs)) <= TOLERANCE[torch.float32]
    _check_backward(simt, inputs, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_offsets_past_2_31_elements(simt, dtype):
    """A 3000 x 3000 level with one 256-channel head: value has 2.3e9 elements, so row * row_stride passes 2**31
    in the bottom rows (the original op's int32 overflow). value is lazily mapped zero pages except the bottom 16
    image rows, where every point samples; the reference sees just those rows (level start shifted, so rows
    outside the window are zero padding, as the zero pages are)."""
    size, head_dim, window_lines = 3000, 256, 16
    start = (size - window_lines) * size
    assert (size * size - 1) * head_dim > 2**31
    value = torch.randn(1, window_lines * size, 1, head_dim).to(dtype)
    shapes = torch.tensor([[size, size]])
    queries, points = 6, 4
    loc = torch.rand(1, queries, 1, 1, points, 2)
    loc[..., 1] = 1 - loc[..., 1] * (window_lines - 2) / size  # rows within the window (and a few past the edge)
    # Multiples of 1/2048 (then rounded to dtype): loc * 3000 is exact in float32, so the float64 reference sees
    # the pixel coordinates the kernel computes (a float32 product would be off by ~1e-4 pixels at this size).
    loc = ((loc * 2048).round() / 2048).to(dtype)
    attn = torch.rand(1, queries, 1, 1, points).to(dtype)
    window = (start, size * size)
    local = (value, shapes, torch.tensor([-start]), loc, attn)
    out = emu.ms_deform_attn(simt, value, shapes, torch.tensor([0]), loc, attn, window=window)
    ref = msda_reference(*local)
    assert ref.abs().sum() > 0
    assert rel_err(out, ref) <= TOLERANCE[dtype]
    grad_out = torch.randn_like(out)
    got = emu.ms_deform_attn_backward(simt, grad_out, value, shapes, torch.tensor([0]), loc, attn, window=window)
    want = _grads_reference(grad_out, *local)
    for name, g, r in zip(("value", "sampling_locations", "attention_weights"), got, want):
        assert rel_err(g, r) <= GRAD_TOLERANCE[dtype], name


def test_nan_and_inf_locations_sample_nothing(simt):
    value, shapes, starts, loc, attn = msda_inputs(border_fraction=0.0)
    loc[0, 0, 0, 0, 0, 0] = float("nan")
    loc[1, 2, 1, 1, 0, 1] = float("inf")
    loc[0, 3, 1, 0, 1] = float("-inf")
    inputs = (value, shapes, starts, loc, attn)
    out = emu.ms_deform_attn(simt, *inputs)
    assert torch.isfinite(out).all()
    assert rel_err(out, msda_reference(*inputs)) <= TOLERANCE[torch.float32]
    grads = emu.ms_deform_attn_backward(simt, torch.randn_like(out), *inputs)
    assert all(torch.isfinite(g).all() for g in grads)
    assert grads[1][0, 0, 0, 0, 0].eq(0).all() and grads[2][0, 0, 0, 0, 0] == 0


@pytest.mark.parametrize("table", ["level_taller_than_value", "start_past_the_end", "negative_start"])
def test_bad_level_tables_never_leave_the_buffers(simt, table):
    """The CUDA glue does not read device level tables (a host sync); the kernels guard every row instead.
    AddressSanitizer fails the run on any access outside value or grad_value; the result equals the torch
    backend's, which applies the same guard (corners on rows outside [0, num_values) are zero)."""
    value, shapes, starts, loc, attn = msda_inputs(border_fraction=0.0)
    if table == "level_taller_than_value":
        shapes = shapes * torch.tensor([[3, 1], [1, 1], [2, 2]])
    elif table == "start_past_the_end":
        starts = starts + torch.tensor([0, 0, 500])
    else:
        starts = starts - torch.tensor([30, 0, 0])
    inputs = (value, shapes, starts, loc, attn)
    out = emu.ms_deform_attn(simt, *inputs)
    assert rel_err(out, msda_reference(*inputs)) <= TOLERANCE[torch.float32]
    _check_backward(simt, inputs, torch.float32)


def test_no_items_launch_nothing(simt):
    inputs = msda_inputs(queries=0)
    assert emu.ms_deform_attn(simt, *inputs).shape == (2, 0, 16)
    grad_value, grad_loc, grad_attn = emu.ms_deform_attn_backward(simt, torch.zeros(2, 0, 16), *inputs)
    assert grad_value.eq(0).all() and grad_loc.numel() == 0 and grad_attn.numel() == 0


# ---------------------------------------------------------------- contrastive logits


def _contrastive_reference(vision, text, mask, bias, scale, max_text_len):
    logits = (vision.double() @ text.double().transpose(1, 2)) * scale + bias
    logits = logits.masked_fill(~mask[:, None, :], float("-inf"))
    padded = logits.new_full((*logits.shape[:2], max_text_len), float("-inf"))
    padded[..., : logits.shape[-1]] = logits
    return padded


SHAPES = dict(
    CONTRASTIVE_SHAPES,
    rows_70_three_row_blocks=dict(batch=1, rows=70, tokens=40, dim=40),
    dim_0=dict(rows=5, tokens=3, dim=0),
)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("max_extra", [0, 7, 40])
def test_contrastive_logits_and_max_match_float64_reference(simt, dtype, shape, max_extra):
    vision, text, mask = contrastive_inputs(dtype=dtype, **SHAPES[shape])
    if shape == "default":
        mask[1] = False  # a prompt with no valid token: every logit -inf, and so is the maximum
    max_text_len = text.shape[1] + max_extra
    bias, scale = -1.5, 1 / math.sqrt(max(vision.shape[-1], 1))
    ref = _contrastive_reference(vision, text, mask, bias, scale, max_text_len)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    for reduce_max, want in ((False, ref), (True, ref.amax(-1) if ref.shape[-1] else ref.sum(-1))):
        out = emu.contrastive(simt, vision, text, mask, bias, scale, max_text_len, reduce_max=reduce_max)
        assert out.dtype == acc and out.shape == want.shape
        finite = torch.isfinite(want)
        assert torch.equal(torch.isfinite(out), finite), "-inf positions differ"
        assert (out[~finite] == float("-inf")).all()
        if finite.any():
            assert rel_err(out[finite], want[finite]) <= TOLERANCE[dtype]


# ---------------------------------------------------------------- through the stable-ABI glue
# csrc/cuda/*_cuda.cpp and csrc/checks.cpp around the emulated kernels, as torch.ops.mmgdino_simt.* on the CPU key:
# the checks, contiguity, allocation, argument packing and error mapping a GPU build runs, with mmgdino's own
# schemas, fake kernels and autograd. Its errors cross LibTorch's stable boundary, where they become RuntimeError
# (the Python wrappers raise ValueError / TypeError before a kernel is reached).


@pytest.fixture(scope="session")
def glue():
    return load_glue_extension()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", ["default", "non_contiguous", "odd_head_dim"])
def test_glue_forward_and_autograd_match_float64_reference(glue, dtype, case):
    value, shapes, starts, loc, attn = msda_inputs(dtype=dtype, border_fraction=0.0, **MSDA_CASES[case])
    leaves = [t.detach().requires_grad_(True) for t in (value, loc, attn)]
    out = glue.ms_deform_attn(leaves[0], shapes, starts, leaves[1], leaves[2])
    assert out.dtype == dtype
    assert rel_err(out, msda_reference(value, shapes, starts, loc, attn)) <= TOLERANCE[dtype]
    grad_out = torch.randn_like(out)
    got = torch.autograd.grad(out, leaves, grad_out)
    want = _grads_reference(grad_out, value, shapes, starts, loc, attn)
    for name, g, r in zip(("value", "sampling_locations", "attention_weights"), got, want):
        assert g.dtype == dtype, name  # grad_value accumulated in float32 and converted back
        assert rel_err(g, r) <= GRAD_TOLERANCE[dtype], name


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_edge_points_match_grid_sample(simt, glue, dtype):
    """Pixel coordinates -1 ... size at both edges: the CUDA kernels (and through the glue, autograd) give
    grid_sample's values and gradients, including the one-sided location gradient at -1."""
    inputs = msda_edge_inputs(dtype)
    value, shapes, starts, loc, attn = inputs
    grad_out = torch.linspace(-1, 1, loc.shape[1] * 6, dtype=torch.float64).view(1, -1, 6)
    want_out, want = grid_sample_grads(*inputs, grad_out)
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(emu.ms_deform_attn(simt, *inputs).double(), want_out, rtol=tol, atol=tol)
    kernel_grads = emu.ms_deform_attn_backward(simt, grad_out.to(dtype), *inputs)
    leaves = [t.detach().requires_grad_(True) for t in (value, loc, attn)]
    glue_grads = torch.autograd.grad(glue.ms_deform_attn(leaves[0], shapes, starts, leaves[1], leaves[2]), leaves,
                                     grad_out.to(dtype))  # fmt: skip
    for got in (kernel_grads, glue_grads):
        for name, g, w in zip(("value", "sampling_locations", "attention_weights"), got, want):
            torch.testing.assert_close(g.double(), w, rtol=tol, atol=tol, msg=name)


def test_glue_gradcheck_float64(glue):
    value, shapes, starts, loc, attn = msda_inputs(
        shapes=((4, 5), (2, 3), (1, 1)),
        queries=3,
        heads=2,
        head_dim=3,
        points=2,
        dtype=torch.float64,
        border_fraction=0.0,
    )
    inputs = tuple(t.requires_grad_(True) for t in (value, loc, attn))
    assert torch.autograd.gradcheck(
        lambda v, l, a: glue.ms_deform_attn(v, shapes, starts, l, a), inputs, eps=1e-6, atol=1e-6
    )


def test_glue_opcheck(glue):
    value, shapes, starts, loc, attn = msda_inputs(dtype=torch.float64, queries=4, border_fraction=0.0)
    args = (value.requires_grad_(True), shapes, starts, loc.requires_grad_(True), attn.requires_grad_(True))
    torch.library.opcheck(glue.ms_deform_attn.default, args)
    grad = torch.randn(2, 4, 16, dtype=torch.float64)
    torch.library.opcheck(glue.ms_deform_attn_backward.default, (grad, *(a.detach() for a in args)))
    vision, text, mask = contrastive_inputs(rows=40, tokens=7, dim=24)
    bias = torch.tensor(-1.5)
    torch.library.opcheck(glue.contrastive_logits.default, (vision.requires_grad_(True), text, mask, bias, 0.2, 16))
    torch.library.opcheck(glue.contrastive_max.default, (vision.detach(), text, mask, bias, 0.2))


@pytest.mark.parametrize("case", list(MSDA_BAD_INPUTS))
def test_glue_bad_input_raises_clear_error(glue, case):
    change, error, words = MSDA_BAD_INPUTS[case]
    args = msda_bad_args()
    args.update(change(args))
    if case.startswith("level_"):
        # On a GPU the level table lives on the device; the glue does not read it (a host sync) and the kernels
        # guard every row instead, so these run and sample zeros where the table points outside value.
        assert torch.isfinite(glue.ms_deform_attn(**args)).all()
        return
    with pytest.raises((error, RuntimeError), match=words):
        glue.ms_deform_attn(**args)


def test_glue_backward_names_a_head_too_wide(glue):
    value, shapes, starts, loc, attn = msda_inputs(head_dim=516, heads=1, queries=2, batch=1)
    with pytest.raises(RuntimeError, match="head_dim 516 is wider than the CUDA backward supports"):
        glue.ms_deform_attn_backward(torch.randn(1, 2, 516), value, shapes, starts, loc, attn)


def test_glue_backward_is_flagged_nondeterministic(glue):
    value, shapes, starts, loc, attn = msda_inputs(queries=4, border_fraction=0.0)
    grad = torch.randn(2, 4, 16)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with pytest.raises(RuntimeError, match=r"ms_deform_attn_backward \(CUDA\)"):
            glue.ms_deform_attn_backward(grad, value, shapes, starts, loc, attn)
        # Autograd switches the atomic backends to the deterministic gather formulation instead.
        leaves = [t.requires_grad_(True) for t in (value, loc, attn)]
        out = glue.ms_deform_attn(leaves[0], shapes, starts, leaves[1], leaves[2])
        first = torch.autograd.grad(out, leaves, grad, retain_graph=True)
        second = torch.autograd.grad(out, leaves, grad)
    finally:
        torch.use_deterministic_algorithms(previous)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_glue_contrastive_matches_reference_and_checks_arguments(glue, dtype):
    vision, text, mask = contrastive_inputs(dtype=dtype, rows=37, tokens=9, dim=40)
    bias = torch.tensor(-2.0, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    ref = _contrastive_reference(vision, text, mask, -2.0, 0.125, 20)
    logits = glue.contrastive_logits(vision, text, mask, bias, 0.125, 20)
    best = glue.contrastive_max(vision, text, mask, bias, 0.125)
    finite = torch.isfinite(ref)
    assert torch.equal(torch.isfinite(logits), finite)
    assert rel_err(logits[finite], ref[finite]) <= TOLERANCE[dtype]
    assert rel_err(best, ref.amax(-1)) <= TOLERANCE[dtype]
    with pytest.raises(RuntimeError, match=r"max_text_len \(5\) must be at least num_tokens \(9\)"):
        glue.contrastive_logits(vision, text, mask, bias, 0.125, 5)
    with pytest.raises(RuntimeError, match="scale must be positive"):
        glue.contrastive_max(vision, text, mask, bias, -1.0)
