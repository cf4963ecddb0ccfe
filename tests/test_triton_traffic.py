"""The Triton kernels' memory-traffic counter (mmgdino_tools.triton_trace), which gpu_model --triton builds on: counts
checked on kernels whose traffic is known by hand, then on the MSDA forward against counts derived from its launch."""

import os

import pytest
import torch

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")
trace = pytest.importorskip("mmgdino_tools.triton_trace")

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="counts in Triton's interpreter")


@triton.jit
def _copy(src, dst, stride, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(dst + offs, tl.load(src + offs * stride))


@triton.jit
def _same_address_atomic(dst, BLOCK: tl.constexpr):
    tl.atomic_add(dst + tl.zeros((BLOCK,), dtype=tl.int32), tl.full((BLOCK,), 1.0, dtype=tl.float32))


@triton.jit
def _one_sector_per_program(src, dst):
    pid = tl.program_id(0) + tl.num_programs(0) * tl.program_id(1)
    tl.store(dst + pid, tl.load(src + pid * 8))  # float 8 * pid: sector pid of a line-aligned buffer


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


def test_the_l2_stream_follows_the_gpu_launch_order():
    """The interpreter runs a (3, 2) grid as (0,0), (0,1), (1,0), ...; a GPU launches program id 0 fastest, and the
    L2 replay must see the sectors in that order."""
    src, dst = _aligned(8 * 6), _aligned(6)
    spans = {"src": (src.data_ptr(), src.data_ptr() + 4 * src.numel()), "dst": (dst.data_ptr(), dst.data_ptr() + 24)}
    with trace.counting(spans) as counter:
        _one_sector_per_program[(3, 2)](src, dst)
    assert (counter.l2_stream() - src.data_ptr() // 32).tolist() == [0, 1, 2, 3, 4, 5]
    reuse = counter.counters()["reuse"]
    assert reuse["cold"] == 6 and sum(reuse["counts"]) == 0


def test_a_triton_peer_is_traced_like_ours(tmp_path):
    """The peer contract of triton_trace (DIR/adapter.py with forward/backward in our argument order), checked with
    an adapter that hands the work to our own Triton kernels: the counts must be ours exactly."""
    from helpers import msda_inputs

    (tmp_path / "adapter.py").write_text(
        "import torch\n\nimport mmgdino\n\n\n"
        "def forward(*args):\n    return mmgdino.ops.ms_deform_attn(*args, backend='triton')\n\n\n"
        "def backward(grad_output, *args):\n"
        "    return torch.ops.mmgdino.ms_deform_attn_backward_triton(grad_output, *args)\n"
    )
    value, shapes, starts, loc, attn = msda_inputs(((6, 8), (3, 4)), batch=1, queries=20, head_dim=32, points=2)
    grad = torch.randn(1, 20, value.shape[2] * value.shape[3])
    for grad_output in (None, grad):
        ours = trace.trace_msda(value, shapes, starts, loc, attn, grad_output)
        theirs = trace.trace_msda(value, shapes, starts, loc, attn, grad_output, peer=tmp_path)
        # The inputs are the same tensors; outputs are allocated anew, and their alignment may move sectors and lines.
        assert theirs["global"]["load"] == ours["global"]["load"] and ours["global"]["load"]["requests"] > 0
        for kind in ("store", "atomic"):
            for key in ("requests", "lane_accesses", "bytes"):
                assert theirs["global"][kind][key] == ours["global"][kind][key]


def test_the_trace_script_refuses_missing_inputs_and_peers_in_one_line(tmp_path):
    import subprocess

    from mmgdino_tools.checkout import tool_command

    inputs = tmp_path / "inputs.pt"
    torch.save({}, inputs)
    for argv, message in ((["forward", str(tmp_path / "none.pt")], "no such file"),
                          (["forward", str(inputs), "--peer", str(tmp_path)], "no adapter.py there")):  # fmt: skip
        command, where = tool_command("triton_trace", *argv)
        proc = subprocess.run(command, capture_output=True, text=True, timeout=120, **where)
        assert proc.returncode == 2 and message in proc.stderr.strip().splitlines()[-1]
