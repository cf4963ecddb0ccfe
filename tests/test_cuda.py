"""GPU-only checks (marker gpu; skipped without CUDA): kernel agreement across devices, no host syncs,
CUDA-graph capture, torch.compile with inductor, and int64-sized offsets."""

import pytest
import torch
from helpers import TOLERANCE, contrastive_inputs, level_table, msda_inputs, rel_err

from mmgdino import ops

pytestmark = pytest.mark.gpu
GPU_BACKENDS = ["cuda", "triton"]


def _available(backend):
    if backend not in ops.available_backends("ms_deform_attn", "cuda"):
        pytest.skip(f"backend {backend} unavailable: {ops.unavailable_reasons().get(backend)}")


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64], ids=str)
def test_gpu_matches_cpu_kernel(backend, dtype):
    _available(backend)
    cpu_inputs = msda_inputs(
        dtype=dtype, head_dim=32, heads=8, queries=300, points=4, shapes=((20, 30), (10, 15), (5, 8), (3, 4))
    )
    gpu = ops.ms_deform_attn(*(t.cuda() for t in cpu_inputs), backend=backend)
    cpu = ops.ms_deform_attn(
        *cpu_inputs, backend="cpu" if "cpu" in ops.available_backends("ms_deform_attn", "cpu") else "torch"
    )
    assert rel_err(gpu.cpu(), cpu) <= TOLERANCE[dtype]


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_no_host_sync(backend):
    _available(backend)
    value, shapes, starts, loc, attn = msda_inputs(device="cuda", head_dim=32, queries=64)
    leaves = [t.requires_grad_(True) for t in (value, loc, attn)]
    vision, text, mask = contrastive_inputs(device="cuda", dim=64)
    bias = torch.nn.Parameter(torch.tensor(-4.6, device="cuda"))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = ops.ms_deform_attn(leaves[0], shapes, starts, leaves[1], leaves[2], backend=backend)
        torch.autograd.grad(out.sum(), leaves)
        ops.contrastive_logits(vision, text, mask, bias=bias, backend=backend)
        ops.contrastive_max(vision, text, mask, bias=bias, backend=backend)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_runs_on_the_inputs_gpu_not_the_current_one(backend):
    """The CUDA glue switches to the inputs' device and launches on that device's current stream (the stable ABI's
    device guard and stream shim): inputs on cuda:1 while cuda:0 is current."""
    _available(backend)
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    cpu_inputs = msda_inputs(head_dim=32, queries=64)
    vision, text, mask = contrastive_inputs(dim=64)
    with torch.cuda.device(0):
        out = ops.ms_deform_attn(*(t.to("cuda:1") for t in cpu_inputs), backend=backend)
        best = ops.contrastive_max(vision.to("cuda:1"), text.to("cuda:1"), mask.to("cuda:1"), backend=backend)
    assert out.device == torch.device("cuda:1") and best.device == torch.device("cuda:1")
    assert rel_err(out.cpu(), ops.ms_deform_attn(*cpu_inputs, backend="torch")) <= TOLERANCE[torch.float32]
    torch.testing.assert_close(best.cpu(), ops.contrastive_max(vision, text, mask, backend="torch"))


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_cuda_graph_capture_and_replay(backend):
    _available(backend)
    value, shapes, starts, loc, attn = msda_inputs(device="cuda", head_dim=32, queries=128)
    vision, text, mask = contrastive_inputs(device="cuda", dim=64)
    ops.ms_deform_attn(value, shapes, starts, loc, attn, backend=backend)  # warm up (Triton compiles here)
    ops.contrastive_max(vision, text, mask, backend=backend)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = ops.ms_deform_attn(value, shapes, starts, loc, attn, backend=backend)
        best = ops.contrastive_max(vision, text, mask, backend=backend)
    value.copy_(torch.randn_like(value))
    vision.copy_(torch.randn_like(vision))
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out, ops.ms_deform_attn(value, shapes, starts, loc, attn, backend="torch"))
    torch.testing.assert_close(best, ops.contrastive_max(vision, text, mask, backend="torch"))


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_compile_inductor_fullgraph(backend):
    _available(backend)
    value, shapes, starts, loc, attn = msda_inputs(device="cuda", head_dim=32, queries=64, border_fraction=0.0)
    vision, text, mask = contrastive_inputs(device="cuda", rows=64, dim=256, batch=2)

    def layer(value, loc, attn, vision):
        sampled = ops.ms_deform_attn(value, shapes, starts, loc, attn, backend=backend)
        return ops.contrastive_logits(vision + sampled.sum(), text, mask, bias=-1.0, backend=backend)

    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True)
    torch.testing.assert_close(compiled(value, loc, attn, vision), layer(value, loc, attn, vision))


@pytest.mark.slow
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_offsets_past_int32(backend):
    """value with more than 2**31 elements: the original op's int32 indexing wraps around here."""
    _available(backend)
    if torch.cuda.get_device_properties(0).total_memory < 40 * 2**30:
        pytest.skip("needs a 40 GiB GPU")
    shapes, starts, num_values = level_table(((2900, 2900),), "cuda")
    heads, head_dim, queries = 8, 32, 256
    value = torch.randn(1, num_values, heads, head_dim, device="cuda")
    assert value.numel() > 2**31
    loc = 0.97 + 0.03 * torch.rand(1, queries, heads, 1, 4, 2, device="cuda")  # the far corner of the map
    attn = torch.rand(1, queries, heads, 1, 4, device="cuda")
    out = ops.ms_deform_attn(value, shapes, starts, loc, attn, backend=backend)
    ref = ops.ms_deform_attn(value, shapes, starts, loc, attn, backend="torch")
    assert rel_err(out, ref) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_model_on_gpu_matches_transformers(dtype):
    """mmgdino's model on the GPU against transformers' model on the GPU (float32 reference)."""
    import model_builders as mb

    from mmgdino import MMGroundingDinoForObjectDetection

    hf = mb.mm_grounding_dino().cuda()
    inputs = {k: v.cuda() for k, v in mb.grounding_inputs().items()}
    model = MMGroundingDinoForObjectDetection.from_transformers(hf).to(dtype)
    cast = {k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()}
    with torch.no_grad():
        reference = hf(**inputs)
        ours = model(**cast)
    finite = torch.isfinite(reference.logits)
    assert ours.logits.dtype == torch.float32
    assert torch.equal(torch.isfinite(ours.logits), finite)
    # TF32 and bf16 move logits; compare in aggregate (fp32 tightly, bf16 loosely).
    assert rel_err(ours.logits[finite], reference.logits[finite]) < (1e-3 if dtype == torch.float32 else 0.1)
