"""Memory traffic of the Triton kernels, counted in Triton's interpreter (TRITON_INTERPRET=1), in the counters'
format of the CUDA trace build (tests/cuda_emulator/trace.cpp) so that benchmarks/gpu_model.py models both alike.

The interpreter hands every tl.load / tl.store / tl.atomic_* its whole block of pointers and mask, so a program's
addresses are known exactly. What it does not know is how the compiled kernel splits a block into warp
instructions: that is the layout Triton picks. Counted here with Triton's default blocked layout for these tiles:
the block flattened with its last dimension fastest, 16-byte vectors per lane where the last dimension is
contiguous in memory (else one element), 32 lanes per warp instruction; masked-off lanes issue nothing. A program
is a thread block: its repeated reads of a sector count once towards L2 (the L1 model of trace.cpp). L2 misses
are the compulsory ones (every case's working set is under the targets' L2). Shared memory (layout conversions)
is not counted.

    python tests/triton_trace.py forward|backward encoder|decoder float32|bfloat16   (prints the counters as JSON)
"""

import contextlib
import json
import os
import sys
from collections import defaultdict

import numpy as np

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

    def counters(self, targets=("h100", "a100", "rtx3090")):
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
        out["l2"] = {target: {"misses": len(loaded)} for target in targets}
        out["shared"] = {"wavefronts": 0}
        out["by_buffer"] = {name: dict(v) for name, v in self.by_buffer.items()}
        out["programs"] = len(self.program_loads)
        return out


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


def trace_msda(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, grad_output=None):
    """Counters of one Triton MSDA launch (forward, or backward with grad_output) on CPU tensors."""
    import torch

    import mmgdino

    if os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("set TRITON_INTERPRET=1 before importing triton (run this module as a script)")
    buffers = {"value": _span(value), "sampling_locations": _span(sampling_locations),
               "attention_weights": _span(attention_weights)}  # fmt: skip
    args = (value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    if grad_output is None:
        with counting(buffers) as counter:
            mmgdino.ops.ms_deform_attn(*args, backend="triton")
        return counter.counters()
    buffers["grad_output"] = _span(grad_output)
    with counting(buffers) as counter:
        torch.ops.mmgdino.ms_deform_attn_backward_triton(grad_output, *args)
    return counter.counters()


def main(argv):
    import time

    import torch

    from mmgdino.bench.cases import HEAD_DIM, HEADS, msda_inputs

    direction, case, dtype = argv
    value, shapes, starts, loc, attn = msda_inputs(case, 1, getattr(torch, dtype), "cpu")
    grad = torch.randn(1, loc.shape[1], HEADS * HEAD_DIM).to(value.dtype) if direction == "backward" else None
    began = time.perf_counter()
    counters = trace_msda(value, shapes, starts, loc, attn, grad)
    counters["emulated_seconds"] = round(time.perf_counter() - began, 1)
    print(json.dumps(counters))


if __name__ == "__main__":
    main(sys.argv[1:])
