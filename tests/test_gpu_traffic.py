"""The memory-traffic tracer of the CUDA emulator (tools/mmgdino_tools/cuda_emulator/trace.cpp) and the GPU model
built on it (mmgdino_tools.gpu_model): counts checked on kernels whose traffic is known by hand, then on the real
MSDA kernels against counts derived from their inputs; the model's roofline, L2, scaling, calibration rule,
comparison with a measured bench and command line."""

import pytest
import torch
from helpers import msda_inputs, msda_reference, rel_err

from mmgdino_tools import cuda_emulation as emu
from mmgdino_tools.emulator_build import build_reuse, build_trace, compiler
from mmgdino_tools.gpu_model import calibration, compare, roofline, targets, tracing

pytestmark = pytest.mark.skipif(compiler() is None, reason="needs a C++ compiler")


@pytest.fixture(scope="module")
def trace():
    return build_trace()


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


def test_an_sm_80_build_scatters_grad_value_with_scalar_atomics():
    """build_trace(arch=800): the A100's build, without Hopper's vector atomics: four 4-byte atomics per lane and
    corner where sm_90 issues one 16-byte atomic, over the same sectors."""
    torch.manual_seed(1)
    inputs = msda_inputs(dtype=torch.float32, head_dim=32, queries=24, heads=2, border_fraction=0.0)
    grad_out = torch.randn(inputs[3].shape[0], inputs[3].shape[1], 2 * 32)
    by_arch = {}
    for arch in (900, 800):
        counters = {}
        emu.ms_deform_attn_backward(build_trace(arch=arch), grad_out, *inputs, counters=counters)
        by_arch[arch] = counters["by_buffer"]["grad_value atomic"]
    assert by_arch[800]["lane_accesses"] == 4 * by_arch[900]["lane_accesses"]
    assert by_arch[800]["requests"] == 4 * by_arch[900]["requests"]
    assert by_arch[800]["bytes"] == by_arch[900]["bytes"] == 16 * by_arch[900]["lane_accesses"]


@pytest.mark.parametrize("head_dim", [32, 24])
def test_16_bit_backward_pairs_lanes_into_whole_sector_atomics(trace, head_dim):
    """bfloat16 accumulates 8 float32 channels (one sector) per lane in two 16-byte atomics. With an even chunk
    count, lane pairs swap halves so that every atomic instruction covers whole sectors (2 lanes per sector); with
    an odd one (head_dim 24: 3 chunks) they cannot pair, and each instruction covers half of every lane's sector.
    One query of 8 heads: a warp's groups are the 8 heads, so no two lanes share a sector unless paired."""
    torch.manual_seed(2)
    inputs = msda_inputs(dtype=torch.bfloat16, head_dim=head_dim, queries=1, heads=8, batch=1, border_fraction=0.0)
    counters = {}
    grad_out = torch.randn(1, 1, 8 * head_dim).to(torch.bfloat16)
    emu.ms_deform_attn_backward(trace, grad_out, *inputs, counters=counters)
    atomics = counters["by_buffer"]["grad_value atomic"]
    loads = counters["by_buffer"]["value load"]
    assert atomics["lane_accesses"] == 2 * loads["lane_accesses"]  # two 16-byte atomics per 16-byte bf16 packet
    assert atomics["bytes"] == 16 * atomics["lane_accesses"]
    sectors_per_lane_access = atomics["sectors"] / atomics["lane_accesses"]
    assert sectors_per_lane_access == (0.5 if head_dim == 32 else 1.0)


def test_the_model_puts_a_streaming_copy_at_the_dram_floor(trace):
    """gpu_model's roofline on a traced copy: every sector moved once, so DRAM-bound at the floor."""
    counters = emu.trace_selftest(trace, "vector_copy")
    assert counters["l1_miss_load_sectors"] == 16
    for target in targets.TARGETS:
        m = roofline.model(counters, target)
        assert m["dram_bytes"] == m["floor_bytes"] == 2 * 512
        assert m["modeled_us"] >= m["floor_us"] and m["bound"] in ("dram", "l1", "l2")


# A stand-in for a peer implementation (gpu_model --peer): the textbook mapping of one thread per
# (query, head, channel) with 4-byte loads, a launch written across lines, a header of its own beside it, and host
# code in the adapter that touches the buffers (which must not count as device traffic).
_PEER_HEADER = r"""
#pragma once
#include <cuda_runtime.h>
#include <math.h>
template <typename T>
__global__ void naive_msda(const T* value, const int64_t* shapes, const int64_t* starts, const T* loc, const T* attn,
                           T* out, int queries, int heads, int channels, int levels, int points, int rows) {
  const int n = queries * heads * channels;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
    const int c = i % channels, h = (i / channels) % heads, q = i / (channels * heads);
    T acc = 0;
    for (int l = 0; l < levels; ++l) {
      const int height = shapes[2 * l], width = shapes[2 * l + 1];
      const T* base = value + (starts[l] * heads + h) * channels + c;
      for (int p = 0; p < points; ++p) {
        const int k = ((q * heads + h) * levels + l) * points + p;
        const T x = loc[2 * k] * width - T(0.5), y = loc[2 * k + 1] * height - T(0.5);
        const int x0 = floorf(x), y0 = floorf(y);
        const T fx = x - x0, fy = y - y0;
        for (int dy = 0; dy < 2; ++dy)
          for (int dx = 0; dx < 2; ++dx) {
            const int xx = x0 + dx, yy = y0 + dy;
            if (xx < 0 || yy < 0 || xx >= width || yy >= height) continue;
            const T w = (dx ? fx : 1 - fx) * (dy ? fy : 1 - fy);
            acc += attn[k] * w * base[(yy * width + xx) * heads * channels];
          }
      }
    }
    out[i] = acc;
  }
}
"""
_PEER_ADAPTER = r"""
#include "mmgdino/cuda_launch.h"
#include "naive.cuh"
cudaError_t mmgdino_peer_ms_deform_attn_forward(const mmgdino::cuda::MsdaForwardArgs& a, cudaStream_t stream) {
  if (a.dtype != mmgdino::cuda::DType::kFloat32 || a.batch != 1) return cudaErrorInvalidValue;
  volatile float first = static_cast<const float*>(a.value)[0];  // host code reading a device buffer
  (void)first;
  const int n = a.num_queries * a.num_heads * a.head_dim;
  naive_msda<float>
      <<<(n + 255) / 256, 256, 0, stream>>>(
          static_cast<const float*>(a.value), a.spatial_shapes, a.level_start_index,
          static_cast<const float*>(a.sampling_locations), static_cast<const float*>(a.attention_weights),
          static_cast<float*>(a.output), a.num_queries, a.num_heads, a.head_dim, a.num_levels, a.num_points,
          a.num_values);
  return cudaGetLastError();
}
cudaError_t mmgdino_peer_ms_deform_attn_backward(const mmgdino::cuda::MsdaBackwardArgs&, cudaStream_t) {
  return cudaErrorInvalidValue;
}
"""


def test_a_peer_kernel_is_traced_beside_ours(tmp_path, trace):
    """build_trace(peer=...) links another implementation behind the driver's peer hook: same outputs as ours, its
    own counts (one 4-byte value load per lane and corner: 4 sectors per request for 32 channels), and a clear error
    for what the peer refuses."""
    (tmp_path / "naive.cuh").write_text(_PEER_HEADER)
    (tmp_path / "adapter.cu").write_text(_PEER_ADAPTER)
    exe = build_trace(peer=tmp_path)
    value, shapes, starts, loc, attn = msda_inputs(((6, 8), (3, 4)), batch=1, queries=40, head_dim=32, points=2)
    ours_counters, peer_counters = {}, {}
    ours = emu.ms_deform_attn(exe, value, shapes, starts, loc, attn, counters=ours_counters)
    theirs = emu.ms_deform_attn(exe, value, shapes, starts, loc, attn, counters=peer_counters, peer=True)
    assert rel_err(theirs, ours) < 1e-6
    value_loads = peer_counters["by_buffer"]["value load"]
    assert value_loads["sectors"] == 4 * value_loads["requests"]
    assert peer_counters["by_buffer"]["value load"] != ours_counters["by_buffer"]["value load"]
    with pytest.raises(emu.KernelError):
        emu.ms_deform_attn(exe, value.double(), shapes, starts, loc.double(), attn.double(), counters={}, peer=True)
    with pytest.raises(AssertionError, match="no peer kernel"):
        emu.ms_deform_attn(trace, value, shapes, starts, loc, attn, counters={}, peer=True)


def _lru_misses(stream, capacity):
    from collections import OrderedDict

    cache, misses = OrderedDict(), 0
    for sector in stream:
        if sector in cache:
            cache.move_to_end(sector)
        else:
            misses += 1
            cache[sector] = None
            if len(cache) > capacity:
                cache.popitem(last=False)
    return misses


def test_reuse_distances_give_an_lru_cache_of_any_size():
    """The histogram (cuda_emulator/reuse.h) against a plain LRU cache, over more touches than the counter's
    first slot table holds (so its renumbering runs), and the model's misses read from it."""
    import json
    import subprocess

    import numpy as np

    rng = np.random.default_rng(0)
    # A hot set reused at short distances and a cold one at long distances: hits differ at every size below.
    stream = np.where(rng.random(1_200_000) < 0.5, rng.integers(0, 3000, 1_200_000),
                      rng.integers(10_000, 40_000, 1_200_000)).astype("<u8")  # fmt: skip
    proc = subprocess.run([str(build_reuse())], input=stream.tobytes(), capture_output=True, check=True)
    reuse = json.loads(proc.stdout)
    assert reuse["cold"] == len(np.unique(stream))
    assert reuse["cold"] + reuse["beyond"] + sum(reuse["counts"]) == stream.size
    for buckets in (1, 2, 5, 8):
        misses = reuse["cold"] + reuse["beyond"] + sum(reuse["counts"][buckets:])
        assert misses == _lru_misses(stream.tolist(), buckets * reuse["bucket_sectors"])
    targets.TARGETS["test-target"] = dict(l2_mb=5 * reuse["bucket_sectors"] * 32 / 2**20)
    try:
        assert roofline.l2_misses({"reuse": reuse}, "test-target") == _lru_misses(stream.tolist(), 5 * 4096)
    finally:
        del targets.TARGETS["test-target"]


def test_scaled_counters_multiply_sums_only():
    counters = {"global": {"load": {"requests": 3, "max_lanes_per_address": 2}}, "reuse": {"bucket_sectors": 4096,
                "counts": [1, 2], "cold": 5}, "emulated_seconds": 1.5, "active_lanes_per_request": 31.0}  # fmt: skip
    assert tracing.scaled(counters, 4) == {"global": {"load": {"requests": 12, "max_lanes_per_address": 2}},
                                             "reuse": {"bucket_sectors": 4096, "counts": [4, 8], "cold": 20},
                                             "emulated_seconds": 1.5, "active_lanes_per_request": 31.0}  # fmt: skip


def test_the_calibration_rule_compares_the_published_ratio():
    case = next(iter(calibration.CALIBRATION))
    target = calibration.CALIBRATION[case]["target"]
    (first, (dtype1, ms1)), (second, (dtype2, ms2)) = list(calibration.CALIBRATION[case]["published"].items())[:2]

    def row(impl, dtype, ms):
        return {"impl": impl, "pass": "forward", "case": case, "dtype": dtype,
                "model": {target: {"modeled_us": ms * 1e3, "bound": "l2"}}}  # fmt: skip

    exact = calibration.calibration([row(first, dtype1, ms1 / 2), row(second, dtype2, ms2 / 2)])[0]
    assert exact["ratio"]["within_30_percent"] and abs(exact["ratio"]["modeled"] - ms2 / ms1) < 1e-9
    off = calibration.calibration([row(first, dtype1, ms1), row(second, dtype2, ms2 * 1.5)])[0]
    assert not off["ratio"]["within_30_percent"]
    assert "ratio" not in calibration.calibration([row(first, dtype1, ms1)])[0]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--peer", "original"], "expected NAME=DIR"),
        (["--peer", "original=/no/such/folder"], "is not a folder"),
        (["--calibrate", "no-such-case"], "invalid choice"),
        (["--render", "/no/such/report.json"], "no such report"),
        (["--compare", "/no/such/bench.json"], "no such report"),
        (["--triton-python", "/no/such/python"], "no such executable"),
    ],
)
def test_gpu_model_refuses_bad_arguments_in_one_line(argv, message):
    """python -m mmgdino_tools.gpu_model: a bad argument stops it before any tracing, with argparse's exit code 2."""
    import subprocess

    from mmgdino_tools.checkout import tool_command

    command, where = tool_command("gpu_model", *argv)
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120, **where)
    assert proc.returncode == 2
    assert message in proc.stderr.strip().splitlines()[-1] and "Traceback" not in proc.stderr


def _bench_report(device, rows):
    return {"device": device, "commit": "abc1234", "results": [
        {"op": "ms_deform_attn", "case": case, "batch": 1, "dtype": "float32", "backend": backend, "pass": direction,
         "median_ms": ms} for backend, direction, case, ms in rows]}  # fmt: skip


def test_compare_puts_the_measured_beside_the_modeled():
    """gpu_model --compare: each measured MSDA row of a GPU bench beside the model of the same kernel, pass, case and
    dtype on that GPU's target (the device tool's H200 here), flagged when it misses by more than 30%."""
    import json

    from mmgdino_tools.checkout import RESULTS

    report = json.loads((RESULTS / "gpu-model-msda.json").read_text())
    row = next(r for r in report["rows"] if (r["impl"], r["pass"], r["case"], r["dtype"]) ==
               ("mmgdino", "forward", "encoder", "float32"))  # fmt: skip
    modeled_ms = roofline.modeled(row, ["h200"])["h200"]["modeled_us"] / 1e3
    bench = _bench_report("NVIDIA H200", [("cuda", "forward", "encoder", 2 * modeled_ms),
                                          ("torch", "forward", "encoder", 9.0)])  # fmt: skip
    target, rows = compare.compare(report, bench)
    assert target == "h200" and len(rows) == 1  # the torch backend is not a traced kernel
    assert abs(rows[0]["modeled_ms"] - modeled_ms) < 1e-12 and abs(rows[0]["measured_over_modeled"] - 2) < 1e-9
    assert not rows[0]["within_30_percent"]
    assert "off by more than 30%" in compare.compare_markdown(target, rows, bench)


def test_compare_refuses_a_gpu_it_has_no_target_for(tmp_path):
    import json
    import subprocess

    from mmgdino_tools.checkout import tool_command

    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps(_bench_report("NVIDIA GeForce GTX 1080", [])))
    command, where = tool_command("gpu_model", "--compare", bench, "--out", tmp_path / "x")
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120, **where)
    assert proc.returncode == 2 and "no model target for the device" in proc.stderr.strip().splitlines()[-1]
