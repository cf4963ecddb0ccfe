"""Runs the emulated CUDA launchers (emulator_build.build, or build_trace to count memory traffic) on torch tensors:
the inputs written as raw files, the launcher run in a process of its own, the outputs read back.

An out-of-bounds access or undefined arithmetic fails the run (the build's AddressSanitizer and UBSan).
"""

import json
import os
import subprocess
import tempfile
from pathlib import Path

import torch

from mmgdino.ops import accumulate_dtype

_DTYPE_NAMES = {
    torch.float32: "float32",
    torch.float64: "float64",
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
}


class KernelError(RuntimeError):
    """The emulated launch returned a CUDA error (bad configuration, or a rule of the SIMT model broken)."""


def trace_selftest(exe, case):
    """The counters of one hand-computable kernel (cuda_emulator/trace_selftest.cpp)."""
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "counters.json"
        proc = subprocess.run([str(exe / "simt_trace_selftest"), case], capture_output=True, text=True,
                              env=dict(os.environ, SIMT_TRACE_OUT=str(out)))  # fmt: skip
        if proc.returncode != 0:
            raise AssertionError(f"trace self-test {case} failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
        return json.loads(out.read_text())


def _write(path, tensor):
    t = tensor.detach().contiguous().cpu()
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.view(torch.int16)
    t.numpy().tofile(path)


def _read(path, dtype, shape):
    import numpy as np

    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0:
        return torch.empty(shape, dtype=dtype)
    return torch.from_numpy(raw).view(dtype).reshape(shape).clone()


_SANITIZER_ENV = dict(ASAN_OPTIONS="detect_leaks=0", UBSAN_OPTIONS="print_stacktrace=1")


def selftest(exe, case):
    """(return code, stdout, stderr) of one emulator self-test case."""
    proc = subprocess.run(
        [str(exe / "simt_selftest"), case], capture_output=True, text=True, env=dict(os.environ, **_SANITIZER_ENV)
    )
    return proc.returncode, proc.stdout, proc.stderr


def _run(exe, op, args, inputs, outputs, counters=None):
    """The launcher's outputs; with `counters` (a dict), the trace build (build_trace) runs it instead and the
    memory-traffic counters of its launch are put into `counters`."""
    with tempfile.TemporaryDirectory() as d:
        lines = [f"op {op}"] + [f"{k} {v}" for k, v in args.items()]
        Path(d, "args.txt").write_text("\n".join(lines) + "\n")
        for name, t in inputs.items():
            _write(Path(d, name + ".bin"), t)
        env = dict(os.environ, **_SANITIZER_ENV)
        program = "simt_kernels"
        if counters is not None:
            program, env["SIMT_TRACE_OUT"] = "simt_trace", str(Path(d, "counters.json"))
        proc = subprocess.run([str(exe / program), d], capture_output=True, text=True, env=env)
        if proc.returncode == 3:
            raise KernelError(proc.stdout.strip())
        if proc.returncode != 0:
            raise AssertionError(f"emulated kernel failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-6000:]}")
        if counters is not None:
            counters.update(json.loads(Path(d, "counters.json").read_text()))
        return {name: _read(Path(d, name + ".bin"), dtype, shape) for name, (dtype, shape) in outputs.items()}


def _msda_args(value, sampling_locations, misalign, window, peer=False):
    batch, num_values, heads, head_dim = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    args = dict(dtype=_DTYPE_NAMES[value.dtype], batch=batch, num_values=num_values, num_heads=heads,
                head_dim=head_dim, num_queries=queries, num_levels=levels, num_points=points, misalign=int(misalign),
                peer=int(peer))  # fmt: skip
    if window is not None:
        # value holds rows [start, start + len) of a batch-1 value with num_values rows, the rest zeros.
        start, args["num_values"] = window
        assert batch == 1 and 0 <= start and start + num_values <= args["num_values"]
        args.update(window_start=start, window_rows=num_values)
    return args


def _msda_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """The launcher's input files by name (driver.cpp reads them so)."""
    return dict(value=value, spatial_shapes=spatial_shapes, level_start_index=level_start_index,
                sampling_locations=sampling_locations, attention_weights=attention_weights)  # fmt: skip


def ms_deform_attn(exe, value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                   misalign=False, window=None, counters=None, peer=False):  # fmt: skip
    """window=(start, num_values): value is rows [start, start + value.shape[1]) of a mostly-zero value;
    counters: see _run; peer: the peer kernel linked by build_trace(peer=...) instead of ours."""
    args = _msda_args(value, sampling_locations, misalign, window, peer)
    batch, _, heads, head_dim = value.shape
    queries = sampling_locations.shape[1]
    inputs = _msda_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    outputs = {"output": (value.dtype, (batch, queries, heads * head_dim))}
    return _run(exe, "ms_deform_attn_forward", args, inputs, outputs, counters)["output"]


def ms_deform_attn_backward(exe, grad_output, value, spatial_shapes, level_start_index, sampling_locations,
                            attention_weights, misalign=False, window=None, counters=None, peer=False):  # fmt: skip
    """(grad_value in the accumulation dtype, grad_sampling_locations, grad_attention_weights); with a window,
    grad_value covers the window's rows only; counters, peer: see ms_deform_attn."""
    args = _msda_args(value, sampling_locations, misalign, window, peer)
    inputs = _msda_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    inputs["grad_output"] = grad_output
    outputs = {
        "grad_value": (accumulate_dtype(value.dtype), value.shape),
        "grad_sampling_locations": (value.dtype, sampling_locations.shape),
        "grad_attention_weights": (value.dtype, attention_weights.shape),
    }
    out = _run(exe, "ms_deform_attn_backward", args, inputs, outputs, counters)
    return out["grad_value"], out["grad_sampling_locations"], out["grad_attention_weights"]


def contrastive(exe, vision, text, text_token_mask, bias, scale, max_text_len, reduce_max=False, counters=None):
    batch, rows, dim = vision.shape
    tokens = text.shape[1]
    acc = accumulate_dtype(vision.dtype)
    args = dict(dtype=_DTYPE_NAMES[vision.dtype], batch=batch, num_rows=rows, num_tokens=tokens, dim=dim,
                max_text_len=max_text_len, scale=repr(float(scale)))  # fmt: skip
    inputs = dict(
        vision=vision, text=text, text_token_mask=text_token_mask.to(torch.bool), bias=torch.tensor(bias, dtype=acc)
    )
    shape = (batch, rows) if reduce_max else (batch, rows, max_text_len)
    op = "contrastive_max" if reduce_max else "contrastive_logits"
    return _run(exe, op, args, inputs, {"output": (acc, shape)}, counters)["output"]
