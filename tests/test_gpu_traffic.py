"""The memory-traffic tracer of the CUDA emulator (tests/cuda_emulator/trace.cpp), which benchmarks/gpu_model.py
builds its GPU model on: counts checked on kernels whose traffic is known by hand, then on the real MSDA kernels
against counts derived from their inputs."""

import pytest
import torch
from helpers import msda_inputs, msda_reference, rel_err

emu = pytest.importorskip("cuda_emulation")

pytestmark = pytest.mark.skipif(emu.compiler() is None, reason="needs a C++ compiler")


@pytest.fixture(scope="module")
def trace():
    return emu.build_trace()


def _global(counters, kind):
    return counters["global"][kind]


def test_coalesced_copy_is_4_sectors_per_request(trace):
    c = emu.trace_selftest(trace, "coalesced_copy")
    load, store = _global(c, "load"), _global(c, "store")
    assert (load["requests"], load["lane_accesses"], load["sectors"], load["lines"]) == (1, 32, 4, 1)
    assert (store["requests"], store["sectors"], store["lines"]) == (1, 4, 1)
    assert c["distinct_sectors"] == 8 and c["written_sectors"] == 4


def test_stride_32_gather_is_32_sectors_per_request(trace):
    load = _global(emu.trace_selftest(trace, "stride_32_gather"), "load")
    assert (load["requests"], load["sectors"], load["lines"]) == (1, 32, 32)


def test_16_byte_vector_loads_are_one_request_of_16_sectors(trace):
    load = _global(emu.trace_selftest(trace, "vector_copy"), "load")
    assert (load["requests"], load["bytes"], load["sectors"], load["lines"]) == (1, 512, 16, 4)


def test_same_address_atomics_are_a_full_conflict(trace):
    same = _global(emu.trace_selftest(trace, "same_address_atomic"), "atomic")
    assert (same["requests"], same["lane_accesses"], same["distinct_addresses"]) == (1, 32, 1)
    assert same["max_lanes_per_address"] == 32
    apart = _global(emu.trace_selftest(trace, "distinct_address_atomic"), "atomic")
    assert (apart["distinct_addresses"], apart["max_lanes_per_address"], apart["sectors"]) == (32, 1, 4)


def test_shared_memory_bank_conflicts(trace):
    """32 conflict-free stores of the fill loop, one conflict-free load, one load with all lanes in bank 0."""
    c = emu.trace_selftest(trace, "shared_banks")
    assert c["shared"] == {"requests": 34, "wavefronts": 32 + 1 + 32}
    assert _global(c, "load")["requests"] == 0  # the tile is shared memory, not global


def test_msda_forward_counts_match_its_inputs(trace):
    """float32, head_dim 32 (8 lanes of 4 channels per (query, head)): each valid corner is one 16-byte load
    per lane, so the value loads are the valid corners times 8 lanes; the outputs are written once, 16 bytes a
    lane, 4 sectors per 128-byte row; and the traced run still computes the right answer."""
    torch.manual_seed(0)
    inputs = msda_inputs(dtype=torch.float32, head_dim=32, queries=40, heads=2, border_fraction=0.0)
    counters = {}
    out = emu.ms_deform_attn(trace, *inputs, counters=counters)
    assert rel_err(out, msda_reference(*inputs)) <= 1e-5
    value, shapes, _, loc, _ = inputs
    batch, queries, heads = loc.shape[0], loc.shape[1], loc.shape[2]
    size = shapes.flip(-1).to(loc.dtype).view(1, 1, 1, -1, 1, 2)
    pixel = loc * size - 0.5
    x0, y0 = pixel[..., 0].floor(), pixel[..., 1].floor()
    hw = shapes.view(1, 1, 1, -1, 1, 2)
    valid = 0
    for dx in (0, 1):
        for dy in (0, 1):
            x, y = x0 + dx, y0 + dy
            valid += int(((x >= 0) & (x < hw[..., 1]) & (y >= 0) & (y < hw[..., 0])).sum())
    by_buffer = counters["by_buffer"]
    assert by_buffer["value load"]["lane_accesses"] == valid * 8  # one 16-byte packet per lane, as LDG.128
    assert by_buffer["value load"]["bytes"] == valid * 8 * 16
    stored = by_buffer["output store"]
    assert stored["bytes"] == batch * queries * heads * 32 * 4 == out.numel() * 4
    assert stored["sectors"] == out.numel() * 4 // 32  # every output sector written exactly once
    assert "grad_value atomic" not in by_buffer


def test_msda_backward_scatters_grad_value_with_16_byte_atomics(trace):
    """sm_90's vector atomics: one 16-byte atomic per lane and valid corner, never a scalar one."""
    torch.manual_seed(1)
    inputs = msda_inputs(dtype=torch.float32, head_dim=32, queries=24, heads=2, border_fraction=0.0)
    counters = {}
    grad_out = torch.randn(inputs[3].shape[0], inputs[3].shape[1], 2 * 32)
    emu.ms_deform_attn_backward(trace, grad_out, *inputs, counters=counters)
    atomics = counters["by_buffer"]["grad_value atomic"]
    loads = counters["by_buffer"]["value load"]
    assert atomics["lane_accesses"] == loads["lane_accesses"]  # one atomic per loaded corner packet
    assert atomics["bytes"] == 16 * atomics["lane_accesses"]


def test_the_model_puts_a_streaming_copy_at_the_dram_floor(trace):
    """benchmarks/gpu_model.py's roofline on a traced copy: every sector moved once, so DRAM-bound at the floor."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_model.py"
    spec = importlib.util.spec_from_file_location("gpu_model", path)
    gpu_model = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_model)
    counters = emu.trace_selftest(trace, "vector_copy")
    assert counters["l1_miss_load_sectors"] == 16
    for target in gpu_model.TARGETS:
        m = gpu_model.model(counters, target)
        assert m["dram_bytes"] == m["floor_bytes"] == 2 * 512
        assert m["modeled_us"] >= m["floor_us"] and m["bound"] in ("dram", "l1", "l2")
