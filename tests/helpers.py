"""Input builders and the float64 reference shared by the tests."""

import torch

from mmgdino.bench.agreement import rel_err  # noqa: F401  (the one definition; the tests' measure too)
from mmgdino.ops import _torch_impl

TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
# Gradients of half inputs: the location gradient differences nearby corners, so rounding weighs more.
GRAD_TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 2e-2}


def level_table(shapes, device="cpu"):
    spatial_shapes = torch.tensor(shapes, dtype=torch.int64, device=device).view(-1, 2)
    sizes = spatial_shapes[:, 0] * spatial_shapes[:, 1]
    level_start_index = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    return spatial_shapes, level_start_index, int(sizes.sum())


def msda_inputs(
    shapes=((6, 8), (3, 4), (1, 1)),
    batch=2,
    queries=9,
    heads=2,
    head_dim=8,
    points=3,
    dtype=torch.float32,
    device="cpu",
    spread=1.4,
    border_fraction=0.25,
    contiguous=True,
):
    """Random inputs; locations fall inside and outside the maps, some exactly on borders and pixel centers."""
    spatial_shapes, level_start_index, num_values = level_table(shapes, device)
    levels = spatial_shapes.shape[0]
    if contiguous:
        value = torch.randn(batch, num_values, heads, head_dim, device=device)
    else:
        value = torch.randn(batch, heads, num_values, head_dim, device=device).transpose(1, 2)
    loc = torch.rand(batch, queries, heads, levels, points, 2, device=device) * spread - (spread - 1) / 2
    if border_fraction > 0:
        # Snap some coordinates onto the map's edges (0 and 1) and onto pixel boundaries k / size.
        snap = torch.rand_like(loc) < border_fraction
        size = spatial_shapes.flip(-1).to(loc.dtype).view(1, 1, 1, levels, 1, 2)
        on_grid = (loc * size).round() / size
        edges = torch.where(loc < 0.5, torch.zeros_like(loc), torch.ones_like(loc))
        loc = torch.where(snap, torch.where(torch.rand_like(loc) < 0.5, on_grid, edges), loc)
    attn = torch.rand(batch, queries, heads, levels, points, device=device)
    attn = attn / attn.sum(dim=(-1, -2), keepdim=True).clamp_min(1e-6)
    if not contiguous:
        loc = loc.transpose(0, 1).contiguous().transpose(0, 1)
        attn = attn.transpose(0, 1).contiguous().transpose(0, 1)
    value, loc, attn = (t.to(dtype) for t in (value, loc, attn))
    return value, spatial_shapes, level_start_index, loc, attn


# Shapes every ms_deform_attn backend is checked on (msda_inputs keywords).
MSDA_CASES = {
    "default": {},
    "one_level_1x1": dict(shapes=((1, 1),), points=2),
    "five_levels": dict(shapes=((9, 7), (5, 4), (3, 2), (2, 2), (1, 1)), points=4),
    "eight_points": dict(points=8, heads=3),
    "one_point": dict(points=1),
    "odd_head_dim": dict(head_dim=5, heads=3),
    "head_dim_33": dict(head_dim=33),
    "head_dim_32": dict(head_dim=32, heads=4),
    "batch_3": dict(batch=3, queries=4),
    "zero_queries": dict(queries=0),
    "non_contiguous": dict(contiguous=False, head_dim=16),
    "far_outside": dict(spread=4.0),
}


def msda_bad_args(**changes):
    """Valid ms_deform_attn keyword arguments with `changes` applied."""
    value, shapes, starts, loc, attn = msda_inputs()
    args = dict(
        value=value, spatial_shapes=shapes, level_start_index=starts, sampling_locations=loc, attention_weights=attn
    )
    args.update(changes)
    return args


# (change of msda_bad_args(), exception, words in its message)
MSDA_BAD_INPUTS = {
    "value_rank": (lambda a: dict(value=a["value"].flatten(2)), ValueError, "value must have shape"),
    "shapes_rank": (
        lambda a: dict(spatial_shapes=a["spatial_shapes"].flatten()),
        ValueError,
        "spatial_shapes must have shape",
    ),
    "shapes_dtype": (
        lambda a: dict(spatial_shapes=a["spatial_shapes"].int()),
        TypeError,
        "spatial_shapes must be int64",
    ),
    "starts_len": (
        lambda a: dict(level_start_index=a["level_start_index"][:2]),
        ValueError,
        "level_start_index must have shape",
    ),
    "loc_heads": (
        lambda a: dict(sampling_locations=a["sampling_locations"][:, :, :1]),
        ValueError,
        "sampling_locations must have shape",
    ),
    "loc_last_dim": (
        lambda a: dict(sampling_locations=a["sampling_locations"][..., :1]),
        ValueError,
        "sampling_locations must have shape",
    ),
    "attn_points": (
        lambda a: dict(attention_weights=a["attention_weights"][..., :1]),
        ValueError,
        "attention_weights must have shape",
    ),
    "attn_dtype": (lambda a: dict(attention_weights=a["attention_weights"].double()), TypeError, "share one dtype"),
    "value_int": (lambda a: dict(value=a["value"].long()), TypeError, "value must be float64"),
    "level_too_big": (
        lambda a: dict(spatial_shapes=a["spatial_shapes"] * torch.tensor([[2, 1], [1, 1], [1, 1]])),
        ValueError,
        "num_values",
    ),
    "level_start_past_end": (lambda a: dict(level_start_index=a["level_start_index"] + 50), ValueError, "num_values"),
    "level_value_longer": (
        lambda a: dict(value=torch.cat([a["value"], a["value"][:, :3]], 1)),
        ValueError,
        "spatial_shapes cover",
    ),
    "level_starts_inconsistent": (
        lambda a: dict(level_start_index=a["level_start_index"] - torch.tensor([0, 1, 1])),
        ValueError,
        "running sum",
    ),
    "level_empty": (
        lambda a: dict(spatial_shapes=a["spatial_shapes"] * torch.tensor([[1, 1], [0, 1], [1, 1]])),
        ValueError,
        "positive",
    ),
}


def msda_reference(value, spatial_shapes, level_start_index, loc, attn):
    """float64 output on the inputs exactly as given (already rounded to their dtype)."""
    return _torch_impl.ms_deform_attn(value.double(), spatial_shapes, level_start_index, loc.double(), attn.double())


def contrastive_inputs(batch=2, rows=7, tokens=5, dim=16, dtype=torch.float32, device="cpu"):
    vision = torch.randn(batch, rows, dim, device=device).to(dtype)
    text = torch.randn(batch, tokens, dim, device=device).to(dtype)
    mask = torch.rand(batch, tokens, device=device) < 0.7
    if tokens > 0:
        mask[:, 0] = True
    return vision, text, mask


# Shapes every contrastive backend is checked on (contrastive_inputs keywords).
CONTRASTIVE_SHAPES = {
    "default": dict(),
    "batch_3_odd_dim": dict(batch=3, dim=33, rows=11),
    "one_token": dict(tokens=1),
    "zero_rows": dict(rows=0),
    "dim_256_tokens_16": dict(batch=1, rows=40, tokens=16, dim=256),
    "tokens_100": dict(batch=2, rows=9, tokens=100, dim=24),  # several token tiles on every backend
}


def backend_params(op_name):
    """pytest params (backend, device): the CPU backends available here, and every backend on CUDA (marked gpu,
    so they are skipped without a GPU and run, in the same tests, on one). Not the portable formulation: it is
    for exporters, not for running (16-bit inputs stay 16-bit through grid_sample, NaN locations propagate as
    grid_sample propagates them); tests/test_portable.py checks it for what it is."""
    import pytest

    from mmgdino import ops

    cpu = [b for b in ops.available_backends(op_name, "cpu") if b != "portable"]
    params = [pytest.param((b, "cpu"), id=f"{b}-cpu") for b in cpu]
    for backend in ("cuda", "triton", "torch"):
        params.append(pytest.param((backend, "cuda"), id=f"{backend}-cuda", marks=pytest.mark.gpu))
    return params


def opcheck_kwargs(backend, device):
    """Under Triton's CPU interpreter the AOT-dispatch traces hand the kernel storage-less tensors, so those
    opcheck stages run for Triton on GPUs only."""
    if backend == "triton" and device == "cpu":
        return {"test_utils": ("test_schema", "test_autograd_registration", "test_faketensor")}
    return {}


# Pixel coordinates (align_corners=False) at and around the map's edges, as fractions of the size: -1 (one pixel
# before the map: value 0, but grid_sample's one-sided gradient), -0.5, 0, size - 1, size - 0.5, size (touches
# nothing). Every normalized location below is exact in bfloat16 for a 4-pixel side.
EDGE_PIXELS = (-1.0, -0.5, 0.0, 3.0, 3.5, 4.0)


def msda_edge_inputs(dtype=torch.float64, device="cpu"):
    """One 4x4 level holding 1..16 (two heads: the second negated), one query per (x, y) pair of EDGE_PIXELS."""
    size = 4
    shapes, starts, _ = level_table(((size, size),), device=device)
    plane = torch.arange(1, size * size + 1, dtype=torch.float64, device=device)
    value = torch.stack([plane, -plane], -1)[None, :, :, None].repeat(1, 1, 1, 3)  # (1, 16, 2 heads, 3 channels)
    coords = torch.tensor([(x, y) for y in EDGE_PIXELS for x in EDGE_PIXELS], dtype=torch.float64, device=device)
    loc = ((coords + 0.5) / size)[None, :, None, None, None, :].expand(1, -1, 2, 1, 1, 2).contiguous()
    attn = torch.full(loc.shape[:-1], 0.75, dtype=torch.float64, device=device)
    return value.to(dtype), shapes, starts, loc.to(dtype), attn.to(dtype)


def grid_sample_grads(value, shapes, starts, loc, attn, grad_out):
    """float64 output and gradients of transformers' grid_sample implementation (MultiScaleDeformableAttention)."""
    from transformers.models.mm_grounding_dino.modeling_mm_grounding_dino import MultiScaleDeformableAttention

    leaves = [t.detach().double().requires_grad_(True) for t in (value, loc, attn)]
    out = MultiScaleDeformableAttention()(
        leaves[0], shapes, [tuple(s) for s in shapes.tolist()], starts, leaves[1], leaves[2], 64
    )
    return out.detach(), torch.autograd.grad(out, leaves, grad_out.double())
