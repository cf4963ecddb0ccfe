"""`python -m mmgdino.bench.int8_profile`: where int8 inference's time goes, before and after the hand fusion of its
glue (`mmgdino.quantization`), in one process: torch.profiler's operator table for one detection at 800x1333.

- **before**: the activation quantized by PyTorch's own ops (widen, scale, round, shift, clamp, narrow: each a
  full pass writing a float32 or uint8 copy), the rest of the model in float32, as int8 ran until this benchmark;
- **after**: one pass per activation (`mmgdino.ops.quantize_uint8`) and the rest of the model at the CPU's
  automatic precision (bfloat16 where the CPU has it natively).

Both calibrated on the benchmark's input; eager (a compiled graph's kernels do not show in the profiler one by
one). Seconds per image are medians of `repeats` after a warm-up, the two alternating.
"""

import argparse
import copy
import statistics
import sys
import time
from types import SimpleNamespace
from unittest import mock

import torch

from ..environment import git_commit, versions
from .cases import tiny_model_and_inputs
from .cpu_peers import cpu_record
from .report import image_size, write_record

TOP_OPS = 12


def torch_ops_quantize(x, scale, zero_point):
    """The formula in PyTorch's ops, as int8 quantized before the fused kernel."""
    return (x.float() * (1.0 / scale)).round_().add_(zero_point).clamp_(0, 255).to(torch.uint8)


def _variant(base, inputs, fused):
    from .. import quantization
    from ..runners import TorchRunner

    processor = SimpleNamespace(tokenizer=None, image_processor=SimpleNamespace(size={"longest_edge": 1333}))
    runner = TorchRunner(copy.deepcopy(base), processor)
    ids = inputs["input_ids"][0].tolist()

    def detect():
        pixels = inputs["pixel_values"].to(runner.dtype)
        return runner.predict(runner.encode_images(pixels, inputs["pixel_mask"]), [0], [ids])

    glue = quantization.glue_dtype() if fused else torch.float32
    quantization.quantize_runner(runner, passes=[detect], glue=glue)
    if fused:
        return detect, glue

    def unfused():
        with mock.patch.object(quantization, "quantize_uint8", torch_ops_quantize):
            return detect()

    return unfused, glue


def _table(averages):
    events = sorted(averages, key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    rows = [{"op": e.key, "self_ms": round(e.self_cpu_time_total / 1e3, 1),
             "share": round(e.self_cpu_time_total / total, 3), "calls": e.count} for e in events[:TOP_OPS]]  # fmt: skip
    return rows, round(total / 1e3, 1)


def run(size=(800, 1333), repeats=3, log=print):
    from .. import MMGroundingDinoForObjectDetection

    hf, inputs = tiny_model_and_inputs(torch.device("cpu"), height=size[0], width=size[1])
    base = MMGroundingDinoForObjectDetection.from_transformers(hf)
    del hf
    variants = {"before": _variant(base, inputs, fused=False), "after": _variant(base, inputs, fused=True)}
    record = {"cpu": cpu_record(), "size": list(size), "repeats": repeats, "commit": git_commit(),
              "versions": versions(), "variants": {}}  # fmt: skip
    times = {name: [] for name in variants}
    with torch.inference_mode():
        for fn, _ in variants.values():
            fn()
        for _ in range(repeats):
            for name, (fn, _) in variants.items():
                began = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - began)
        for name, (fn, glue) in variants.items():
            with torch.profiler.profile() as profile:
                fn()
            averages = profile.key_averages()
            ops, total_ms = _table(averages)
            record["variants"][name] = {
                "glue": str(glue).removeprefix("torch."),
                "s": round(statistics.median(times[name]), 3),
                "times": [round(t, 3) for t in times[name]],
                "profiled_ms": total_ms,
                "ops": ops,
                "fused_kernel_calls": sum(e.count for e in averages if e.key == "mmgdino::quantize_uint8"),
            }
            log(f"{name}: {record['variants'][name]['s']} s per image")
    return record


def markdown(record):
    cpu = record["cpu"]
    height, width = record["size"]
    before, after = record["variants"]["before"], record["variants"]["after"]
    lines = [
        f"# int8 inference, before and after fusing its glue: {cpu['model']} (measured)",
        "",
        f"CPU: {cpu['model']}; as the layers see it: {cpu['described']}; {cpu['threads']} threads; load average "
        f"{cpu['load_average']}. Commit {record['commit']}. torch {record['versions'].get('torch')}.",
        f"MM Grounding DINO tiny, random weights, {height}x{width}, batch 1, eager, calibrated int8; median of "
        f"{record['repeats']} after a warm-up, alternating.",
        "",
        f"- before (activations quantized by PyTorch's ops, the rest in {before['glue']}): **{before['s']:.3f} s** "
        "per image",
        f"- after (one fused pass per activation, the rest in {after['glue']}): **{after['s']:.3f} s** per image, "
        f"{before['s'] / after['s']:.2f}x",
        "",
    ]
    for name, variant in (("before", before), ("after", after)):
        lines += [f"## {name}: torch.profiler, one detection ({variant['profiled_ms']:.0f} ms of operator self time)",
                  "", "| operator | self ms | share | calls |", "|---|---:|---:|---:|"]  # fmt: skip
        lines += [f"| `{o['op']}` | {o['self_ms']:.1f} | {o['share']:.0%} | {o['calls']} |" for o in variant["ops"]]
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m mmgdino.bench.int8_profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=image_size, default=(800, 1333), metavar="HxW")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="int8-profile", help="JSON and markdown at this path (suffixes replaced)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    record = run(args.size, args.repeats, log=lambda m: print(m, file=sys.stderr, flush=True))
    print(write_record(record, args.out, markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
