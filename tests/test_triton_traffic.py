"""The Triton kernels' memory-traffic counter (tests/triton_trace.py), which benchmarks/gpu_model.py --triton builds
on: counts checked on kernels whose traffic is known by hand, then on the MSDA forward against counts derived from
its launch."""

import os

import pytest
import torch

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")
trace = pytest.importorskip("triton_trace")

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="counts in Triton's interpreter")


@triton.jit
def _copy(src, dst, stride, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(dst + offs, tl.load(src + offs * stride))


@triton.jit
def _same_address_atomic(dst, BLOCK: tl.constexpr):
    tl.atomic_add(dst + tl.zeros((BLOCK,), dtype=tl.int32), tl.full((BLOCK,), 1.0, dtype=tl.float32))


def _aligned(n, fill=0.0):
    """n float32 starting on a 128-byte line, so that the hand counts of lines hold whatever the allocator gives."""
    storage = torch.full((n + 32,), fill)
    skip = (-storage.data_ptr() % 128) // 4
    return storage[skip : skip + n]


def _count(kernel, *tensors, **meta):
    tensors_only = [t for t in tensors if isinstance(t, torch.Tensor)]
    spans = {f"t{i}": (t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()) for i, t in enumerate(tensors_only)}
    with trace.counting(spans) as counter:
        kernel[(1,)](*tensors, **meta)
    return counter.counters()


def test_contiguous_float32_copy_is_16_byte_vectors():
    """1024 contiguous floats: 16-byte vectors, 32 lanes -> 8 requests of 512 bytes = 16 sectors, 4 lines."""
    src, dst = _aligned(1024), _aligned(1024)
    src.copy_(torch.arange(1024, dtype=torch.float32))
    c = _count(_copy, src, dst, 1, BLOCK=1024)
    load, store = c["global"]["load"], c["global"]["store"]
    assert (load["requests"], load["sectors"], load["lines"], load["lane_accesses"]) == (8, 128, 32, 1024)
    assert (store["requests"], store["sectors"]) == (8, 128)
    assert c["distinct_sectors"] == 256 and c["written_sectors"] == 128 and c["l1_miss_load_sectors"] == 128
    assert torch.equal(dst, src)


def test_stride_32_gather_is_32_sectors_per_request():
    src, dst = _aligned(32 * 64), _aligned(64)
    load = _count(_copy, src, dst, 32, BLOCK=64)["global"]["load"]
    assert (load["requests"], load["sectors"], load["lines"]) == (2, 64, 64)


def test_same_address_atomics_touch_one_sector():
    dst = _aligned(1)
    atomic = _count(_same_address_atomic, dst, BLOCK=64)["global"]["atomic"]
    assert (atomic["requests"], atomic["lane_accesses"], atomic["sectors"]) == (2, 64, 2)
    assert atomic["distinct_addresses"] == 2 and atomic["max_lanes_per_address"] == 32  # full-warp conflicts
    assert dst.item() == 64.0


def test_msda_forward_counts_follow_from_its_launch():
    """Every value load is a [queries, head_dim] tile of 16-byte rows: at most 16 sectors per request; the output is
    written once; each program (a block of queries of one head) is counted as one thread block."""
    from helpers import msda_inputs

    value, shapes, starts, loc, attn = msda_inputs(((6, 8), (3, 4)), batch=1, queries=70, head_dim=32, points=2)
    c = trace.trace_msda(value, shapes, starts, loc, attn)
    value_loads = c["by_buffer"]["value load"]
    assert 0 < value_loads["sectors"] <= 16 * value_loads["requests"]
    assert c["written_sectors"] * 32 == 70 * 2 * 32 * 4  # the output, every sector once
    assert c["programs"] == 2 * 2  # ceil(70 / 64) query blocks x 2 heads
    assert c["l1_miss_load_sectors"] <= c["global"]["load"]["sectors"]
