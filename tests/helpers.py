"""Input builders and the float64 reference shared by the tests."""

import torch

from mmgdino.ops import _torch_impl

TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def rel_err(out, ref):
    out, ref = out.double(), ref.double()
    denom = ref.norm()
    return ((out - ref).norm() / denom).item() if denom > 0 else (out - ref).norm().item()


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


def backend_params(op_name):
    """pytest params (backend, device): the CPU backends available here, and every backend on CUDA (marked gpu,
    so they are skipped without a GPU and run, in the same tests, on one)."""
    import pytest

    from mmgdino import ops

    params = [pytest.param((b, "cpu"), id=f"{b}-cpu") for b in ops.available_backends(op_name, "cpu")]
    for backend in ("cuda", "triton", "torch"):
        params.append(pytest.param((backend, "cuda"), id=f"{backend}-cuda", marks=pytest.mark.gpu))
    return params


def opcheck_kwargs(backend, device):
    """Under Triton's CPU interpreter the AOT-dispatch traces hand the kernel storage-less tensors, so those
    opcheck stages run for Triton on GPUs only."""
    if backend == "triton" and device == "cpu":
        return {"test_utils": ("test_schema", "test_autograd_registration", "test_faketensor")}
    return {}
