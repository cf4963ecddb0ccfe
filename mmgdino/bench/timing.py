"""Timing: the median of one call (the one timer of every benchmark), GPU time without Python's launch overhead, and
bandwidth figures."""

import statistics
import time

import torch


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


_L2_FLUSH = {}


def _flush_l2(device):
    """Overwrite a buffer twice the size of the L2 cache, so each timed call reads its inputs from DRAM as a
    model's layer would, instead of from a cache warmed by the previous repetition."""
    buf = _L2_FLUSH.get(device)
    if buf is None:
        l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 64 << 20) or (64 << 20)
        buf = _L2_FLUSH[device] = torch.empty(2 * l2 // 4, dtype=torch.int32, device=device)
    buf.zero_()


def median_ms(fn, device, repeats, warmup=1):
    """Median time of one call. On CUDA: device events around the call, with L2 flushed before it and the GPU
    kept busy (a short spin) while Python enqueues it, so the number is the GPU's time, not Python's launch
    overhead; for a chain of many small kernels the CPU still shows where it is the bottleneck."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            _flush_l2(device)
            torch.cuda._sleep(200_000)  # ~0.1 ms at 1.8 GHz: covers the Python dispatch of one op
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def copy_bandwidth_gbs(device, nbytes=1 << 30):
    """Device-to-device copy rate, bytes read plus bytes written per second: the practical DRAM ceiling."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), device, 10)
    return 2 * nbytes / ms / 1e6


def msda_forward_bytes(value, loc, attn):
    """The fewest bytes an MSDA forward moves: every input read once, the output written once."""
    out_bytes = loc.shape[0] * loc.shape[1] * value.shape[2] * value.shape[3] * value.element_size()
    return sum(t.numel() * t.element_size() for t in (value, loc, attn)) + out_bytes
