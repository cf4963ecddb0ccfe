"""Memory traffic of the Triton kernels, counted in Triton's interpreter (TRITON_INTERPRET=1), in the counters'
format of the CUDA trace build (cuda_emulator/trace.cpp) so that gpu_model models both alike.

The interpreter hands every tl.load / tl.store / tl.atomic_* its whole block of pointers and mask, so a program's
addresses are known exactly. What it does not know is how the compiled kernel splits a block into warp
instructions: that is the layout Triton picks. Counted here with Triton's default blocked layout for these tiles:
the block flattened with its last dimension fastest, 16-byte vectors per lane where the last dimension is
contiguous in memory (else one element), 32 lanes per warp instruction; masked-off lanes issue nothing. A program
is a thread block: its repeated reads of a sector count once towards L2 (the L1 model of trace.cpp). For the L2,
each program's loaded and atomically updated sectors are replayed in the GPU's launch order (program id 0
fastest; the interpreter runs them in another order) through the reuse-distance histogram of trace.cpp
(cuda_emulator/reuse.h). Shared memory (layout conversions) is not counted.

    TRITON_INTERPRET=1 PYTHONPATH=tools python -P -m mmgdino_tools.triton_trace forward|backward INPUTS.pt [--peer DIR]

prints the counters as JSON.

INPUTS.pt: torch.save of {value, spatial_shapes, level_start_index, sampling_locations, attention_weights} (CPU
tensors, our layout). --peer DIR: another implementation's Triton kernels behind DIR/adapter.py, which defines
forward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights) and
backward(grad_output, <the same five>); DIR is put first on the import path. Peers are never part of this
repository (see gpu_model --peer).
"""

import argparse
import contextlib
import importlib.util
import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from .emulator_build import build_reuse

SECTOR, LINE, LANES, VECTOR_BYTES = 32, 128, 32, 16
KINDS = ("load", "store", "atomic")


class Counter:
    def __init__(self, buffers):
        # name -> (start, end) byte range of each tensor the kernel reads or writes
        self.buffers = sorted(buffers.items(), key=lambda item: item[1][0])
        self.totals = {k: defaultdict(int) for k in KINDS}
        self.by_buffer = defaultdict(lambda: defaultdict(int))
        self.distinct = {k: set() for k in KINDS}
        self.program_loads = defaultdict(set)
        # program (x, y, z) -> the distinct sectors of its loads and atomics, request by request: the L2 stream
        self.program_touches = defaultdict(list)

    def _buffer(self, address):
        for name, (start, end) in self.buffers:
            if start <= address < end:
                return name
        return "other"

    def record(self, kind, program, pointers, mask, elem_bytes):
        pointers = np.asarray(pointers, dtype=np.uint64)
        mask = np.broadcast_to(np.asarray(mask, dtype=bool), pointers.shape)
        vec = 1
        if pointers.ndim >= 1 and pointers.shape[-1] > 1:
            steps = np.diff(pointers.astype(np.int64), axis=-1)
            if np.all(steps == elem_bytes):
                vec = max(1, min(VECTOR_BYTES // elem_bytes, pointers.shape[-1]))
        flat, active = pointers.reshape(-1), mask.reshape(-1)
        per_request = LANES * vec
        for begin in range(0, flat.size, per_request):
            lanes = flat[begin : begin + per_request][active[begin : begin + per_request]]
            if lanes.size == 0:
                continue
            sectors = np.unique(lanes // SECTOR)
            lines = np.unique(lanes // LINE)
            t = self.totals[kind]
            t["requests"] += 1
            t["lane_accesses"] += int(lanes.size)
            t["bytes"] += int(lanes.size) * elem_bytes
            t["sectors"] += int(sectors.size)
            t["lines"] += int(lines.size)
            # Per warp instruction, summed, as trace.cpp counts them: how many lanes share an address.
            _, per_address = np.unique(lanes, return_counts=True)
            t["distinct_addresses"] += int(per_address.size)
            t["max_lanes_per_address"] = max(t["max_lanes_per_address"], int(per_address.max()))
            b = self.by_buffer[f"{self._buffer(int(lanes[0]))} {kind}"]
            b["requests"] += 1
            b["sectors"] += int(sectors.size)
            self.distinct[kind].update(sectors.tolist())
            if kind == "load":
                self.program_loads[program].update(sectors.tolist())
            if kind != "store":  # stores fill whole sectors in L2 without reading them (as in trace.cpp)
                self.program_touches[program].append(sectors)

    def l2_stream(self):
        """Every program's touches, programs in launch order: x fastest, then y, then z."""
        order = sorted(self.program_touches, key=lambda xyz: (xyz[2], xyz[1], xyz[0]))
        parts = [a for xyz in order for a in self.program_touches[xyz]]
        return np.concatenate(parts).astype("<u8") if parts else np.zeros(0, dtype="<u8")

    def counters(self):
        out = {"global": {}}
        for kind in KINDS:
            t = dict(self.totals[kind])
            for key in ("requests", "lane_accesses", "bytes", "sectors", "lines", "distinct_addresses",
                        "max_lanes_per_address"):  # fmt: skip
                t.setdefault(key, 0)
            out["global"][kind] = t
        loaded = self.distinct["load"] | self.distinct["atomic"]
        written = self.distinct["store"] | self.distinct["atomic"]
        out["distinct_sectors"] = len(loaded | written)
        out["written_sectors"] = len(written)
        out["l1_miss_load_sectors"] = sum(len(s) for s in self.program_loads.values())
        out["reuse"] = reuse_distances(self.l2_stream())
        out["shared"] = {"wavefronts": 0}
        out["by_buffer"] = {name: dict(v) for name, v in self.by_buffer.items()}
        out["programs"] = len(self.program_loads)
        return out


def reuse_distances(sectors):
    """The reuse-distance histogram of a sector stream, by the emulator's own counter (reuse.h), in C++: a stream
    has tens of millions of touches."""
    proc = subprocess.run([str(build_reuse())], input=sectors.tobytes(), capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"simt_reuse failed ({proc.returncode}): {proc.stderr.decode()[-2000:]}")
    return json.loads(proc.stdout)


@contextlib.contextmanager
def counting(buffers):
    """Counts every memory operation the Triton interpreter runs inside the block; yields the Counter."""
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    counter = Counter(buffers)
    originals = {name: getattr(builder, name) for name in ("create_masked_load", "create_masked_store",
                                                            "create_atomic_rmw")}  # fmt: skip

    def elem_bytes(ptrs):
        return ptrs.get_element_ty().primitive_bitwidth // 8

    # Triton releases differ in the trailing arguments of these methods: passed through as they come.
    def load(self, ptrs, mask, *rest, **kwargs):
        counter.record("load", self.grid_idx, ptrs.data, mask.data, elem_bytes(ptrs))
        return originals["create_masked_load"](self, ptrs, mask, *rest, **kwargs)

    def store(self, ptrs, value, mask, *rest, **kwargs):
        counter.record("store", self.grid_idx, ptrs.data, mask.data, elem_bytes(ptrs))
        return originals["create_masked_store"](self, ptrs, value, mask, *rest, **kwargs)

    def atomic(self, rmw_op, ptr, val, mask, *rest, **kwargs):
        counter.record("atomic", self.grid_idx, ptr.data, mask.data, elem_bytes(ptr))
        return originals["create_atomic_rmw"](self, rmw_op, ptr, val, mask, *rest, **kwargs)

    builder.create_masked_load, builder.create_masked_store, builder.create_atomic_rmw = load, store, atomic
    try:
        yield counter
    finally:
        for name, fn in originals.items():
            setattr(builder, name, fn)


def _span(t):
    return (t.data_ptr(), t.data_ptr() + t.numel() * t.element_size())


def _peer(folder):
    """The adapter module of a Triton peer (see the module's docstring), loaded from its file: another peer's
    adapter may have been imported before."""
    folder = Path(folder).resolve()
    sys.path.insert(0, str(folder))  # for the adapter's own imports of the peer's modules
    spec = importlib.util.spec_from_file_location(f"triton_peer_adapter_{abs(hash(folder))}", folder / "adapter.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def trace_msda(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, grad_output=None,
               peer=None):  # fmt: skip
    """Counters of one Triton MSDA launch (forward, or backward with grad_output) on CPU tensors: ours, or with
    `peer` (a folder) the peer's."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("set TRITON_INTERPRET=1 before importing triton (run this module with python -m)")
    if peer is None:
        import torch

        import mmgdino

        forward = lambda *args: mmgdino.ops.ms_deform_attn(*args, backend="triton")  # noqa: E731
        backward = torch.ops.mmgdino.ms_deform_attn_backward_triton
    else:
        adapter = _peer(peer)
        forward, backward = adapter.forward, adapter.backward
    buffers = {"value": _span(value), "sampling_locations": _span(sampling_locations),
               "attention_weights": _span(attention_weights)}  # fmt: skip
    args = (value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    if grad_output is None:
        with counting(buffers) as counter:
            forward(*args)
        return counter.counters()
    buffers["grad_output"] = _span(grad_output)
    with counting(buffers) as counter:
        backward(grad_output, *args)
    return counter.counters()


INPUT_NAMES = ("value", "spatial_shapes", "level_start_index", "sampling_locations", "attention_weights")


def grad_output_for(value, sampling_locations):
    """A random gradient of the output, [batch, queries, heads * head_dim] in value's dtype: what a traced backward
    takes (here and in gpu_model's CUDA traces)."""
    import torch

    batch, _, heads, head_dim = value.shape
    return torch.randn(batch, sampling_locations.shape[1], heads * head_dim).to(value.dtype)


def main(argv):
    import time

    import torch

    parser = argparse.ArgumentParser(prog="python -m mmgdino_tools.triton_trace", description=__doc__.splitlines()[0])
    parser.add_argument("direction", choices=("forward", "backward"))
    parser.add_argument("inputs", help="torch.save of the five input tensors by name")
    parser.add_argument("--peer", metavar="DIR", help="a Triton peer's folder (DIR/adapter.py)")
    args = parser.parse_args(argv)
    if not Path(args.inputs).is_file():
        parser.error(f"{args.inputs}: no such file")
    if args.peer and not (Path(args.peer) / "adapter.py").is_file():
        parser.error(f"--peer {args.peer}: no adapter.py there")
    saved = torch.load(args.inputs)
    value, shapes, starts, loc, attn = (saved[name] for name in INPUT_NAMES)
    grad = grad_output_for(value, loc) if args.direction == "backward" else None
    began = time.perf_counter()
    counters = trace_msda(value, shapes, starts, loc, attn, grad, peer=args.peer)
    counters["emulated_seconds"] = round(time.perf_counter() - began, 1)
    print(json.dumps(counters))


if __name__ == "__main__":
    main(sys.argv[1:])
