"""Traces one launch: the case's inputs, run in the emulator's trace build (CUDA kernels, ours or a peer's) or in
Triton's interpreter (Triton kernels), giving its memory-traffic counters; a row of a report from them."""

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from mmgdino.bench.cases import msda_inputs

from ..checkout import tool_command
from ..cuda_emulation import KernelError, ms_deform_attn, ms_deform_attn_backward
from ..emulator_build import build_trace
from ..triton_trace import INPUT_NAMES, grad_output_for
from .calibration import CALIBRATION, calibration_inputs
from .roofline import SECTOR, modeled
from .targets import REPORTED, TARGETS

# Counters that are not sums over the launch's work, so stay as they are when a trace is scaled up.
NOT_ADDITIVE = {"max_lanes_per_address", "active_lanes_per_request", "emulated_seconds", "bucket_sectors"}


def scaled(counters, factor):
    """Counters of `factor` copies of the traced work: every sum multiplied. Exact for CALIBRATION's traced_batch
    when the launch walks its work in runs that each touch sectors no other run touches, so that no reuse distance
    crosses a run: the original op walks images outermost; msda-triton walks (image, head) runs, queries fastest.
    Images drawn alike then make statistically identical runs."""
    if isinstance(counters, dict):
        return {k: v if k in NOT_ADDITIVE else scaled(v, factor) for k, v in counters.items()}
    if isinstance(counters, list):
        return [scaled(v, factor) for v in counters]
    return counters * factor if isinstance(counters, int) and not isinstance(counters, bool) else counters


def case_inputs(case, dtype):
    """(value, spatial_shapes, level_start_index, sampling_locations, attention_weights) of a seed case (batch 1) or
    a published one (at its traced batch), on the CPU."""
    return calibration_inputs(case, dtype) if case in CALIBRATION else msda_inputs(case, 1, dtype, "cpu")


def traced(case, dtype, backward, peer=None, arch=900):
    """Counters of one launch of our CUDA kernel, or with `peer` (a folder, see emulator_build.build_trace) of the
    peer's, run in the emulator's trace build for __CUDA_ARCH__ `arch`."""
    value, shapes, starts, loc, attn = case_inputs(case, dtype)
    exe = build_trace(peer=peer, arch=arch)
    counters = {}
    began = time.perf_counter()
    if backward:
        grad = grad_output_for(value, loc)
        ms_deform_attn_backward(exe, grad, value, shapes, starts, loc, attn, counters=counters, peer=bool(peer))
    else:
        ms_deform_attn(exe, value, shapes, starts, loc, attn, counters=counters, peer=bool(peer))
    counters["emulated_seconds"] = round(time.perf_counter() - began, 1)
    return counters


def traced_triton(case, dtype, backward, peer=None, python=sys.executable):
    """Counters of one launch of our Triton kernel, or with `peer` (a folder with adapter.py) of the peer's, counted
    in Triton's interpreter (triton_trace, in a process of its own: the interpreter must be chosen before triton is
    imported; `python`: the environment to run it in, for a peer that needs another Triton)."""
    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "inputs.pt"
        torch.save(dict(zip(INPUT_NAMES, case_inputs(case, dtype))), inputs)
        argv, where = tool_command("triton_trace", "backward" if backward else "forward", inputs,
                                   *(["--peer", Path(peer).resolve()] if peer else []), python=python)  # fmt: skip
        where["env"]["TRITON_INTERPRET"] = "1"
        proc = subprocess.run(argv, capture_output=True, text=True, **where)
    if proc.returncode != 0:
        raise RuntimeError(f"triton trace failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def trace_row(impl, backward, case, dtype, peer=None, triton_python=sys.executable):
    """A report's row: one launch of `impl` (mmgdino: our CUDA kernel; triton: ours in Triton; else the peer in the
    folder `peer`) traced, with its summary and its modeled time on the case's targets. CUDA code differs by
    architecture (vector atomics on sm_90), so it is traced once for each target's; a launch the kernel refuses (a
    peer that does not take this dtype) is recorded as the row's error."""
    direction = "backward" if backward else "forward"
    row = {"impl": impl, "pass": direction, "case": case, "dtype": dtype}
    targets = [CALIBRATION[case]["target"]] if case in CALIBRATION else list(REPORTED)
    dtype = getattr(torch, dtype)
    try:
        if impl == "triton":
            by_arch = {None: traced_triton(case, dtype, backward)}
        elif peer and (Path(peer) / "adapter.py").is_file():
            by_arch = {None: traced_triton(case, dtype, backward, peer, triton_python)}
        else:
            archs = dict.fromkeys(TARGETS[t]["arch"] for t in targets)
            by_arch = {arch: traced(case, dtype, backward, peer, arch) for arch in archs}
    except KernelError as exc:
        reason = str(exc).strip().splitlines()[0]
        return dict(row, error=f"{impl} does not run {row['dtype']} here (its launch returned {reason!r})")
    if case in CALIBRATION:
        c = CALIBRATION[case]
        copies = c["batch"] // c.get("traced_batch", c["batch"])
        if copies > 1:
            by_arch = {k: dict(scaled(v, copies), traced_batch=c["traced_batch"], scale=copies)
                       for k, v in by_arch.items()}  # fmt: skip
    first, *others = by_arch.items()
    row = dict(row, counters=first[1], summary=summary(first[1]))
    if others:
        row["counters_by_arch"] = {str(arch): counters for arch, counters in others}
    return dict(row, model=modeled(row, targets))


def summary(counters):
    """The report's figures of a launch's counters: requests, sectors per request, L1 hits, distinct bytes."""
    g = counters["global"]
    requests = sum(g[k]["requests"] for k in g)
    sectors = sum(g[k]["sectors"] for k in g)
    return {
        "requests": requests,
        "sectors_per_request": sectors / max(requests, 1),
        "value_sectors_per_request": counters["by_buffer"]["value load"]["sectors"]
        / max(counters["by_buffer"]["value load"]["requests"], 1),
        "atomic_lanes_per_address": g["atomic"]["lane_accesses"] / max(g["atomic"]["distinct_addresses"], 1),
        "distinct_mb": counters["distinct_sectors"] * SECTOR / 2**20,
        "l1_hit_fraction": 1 - counters["l1_miss_load_sectors"] / max(g["load"]["sectors"], 1),
    }
