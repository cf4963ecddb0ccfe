"""GPU memory traffic of the CUDA MSDA kernels, counted exactly by running them unchanged in the emulator's trace
build (tests/cuda_emulator/trace.cpp), and a memory-bound time model for H100 and A100 built on those counts.

    python benchmarks/gpu_model.py --out benchmarks/results/gpu-model-msda [--quick]

Cases: the seed's encoder (batch 1, 22,223 queries, 8 heads x 32 channels, 4 levels x 4 points, MM Grounding
DINO tiny at 800x1333) and decoder (900 queries), float32 and bfloat16, forward and backward. --quick: the
decoder only. Writes <out>.json and <out>.md.

The counts are exact for the emulated kernels (what Nsight Compute's l1tex/lts sector and request metrics
would report, up to the approximations listed in trace.cpp). The times are MODELED, NOT MEASURED, and NOT
CALIBRATED: no published pair of implementations has been run through this model yet, so its times may not be
used to claim speed. The model is a memory roofline and only that: instruction issue, latency and occupancy are
not modeled, so for a kernel that is not bound by memory it is a lower bound.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

# Published figures (vendor datasheets and whitepapers) where they exist; the L2 and atomic rates are
# assumptions from public microbenchmarks, to be replaced by calibration.
TARGETS = {
    "h100": dict(
        name="H100 SXM5",
        sms=132,
        clock_ghz=1.98,
        dram_tbs=3.35,  # HBM3, datasheet
        l2_tbs=5.5,  # not published by NVIDIA; public microbenchmarks measure 5.5-7 TB/s
        l1_bytes_per_clock=128,  # one 128-byte wavefront per SM per clock
        atomic_sectors_per_clock=2 * 48,  # assumed: one 32-byte atomic per L2 slice (2 x 48 slices) per clock
        launch_us=3.0,
    ),
    "a100": dict(
        name="A100 SXM4 40GB",
        sms=108,
        clock_ghz=1.41,
        dram_tbs=1.555,  # HBM2, datasheet
        l2_tbs=5120 * 1.41e9 / 1e12,  # 5120 bytes/clock, A100 whitepaper
        l1_bytes_per_clock=128,
        atomic_sectors_per_clock=2 * 40,  # assumed, as above (80 L2 slices)
        launch_us=3.0,
    ),
}
SECTOR = 32
LINE = 128


def model(counters, target):
    """Modeled time (µs) of one launch from its counters on `target`, with the bound that limits it and every
    term. DRAM: the L2 misses (read) plus every written sector once (write-back). L2: the sectors that miss L1
    (a block's repeated reads of a sector hit its SM's L1) plus stores and atomics (write-through). L1: one
    wavefront per 128-byte line per request. Atomics: one L2 atomic-unit operation per sector of each request."""
    t = TARGETS[target]
    g = counters["global"]
    dram_bytes = (counters["l2"][target]["misses"] + counters["written_sectors"]) * SECTOR
    l2_bytes = (counters["l1_miss_load_sectors"] + g["store"]["sectors"] + g["atomic"]["sectors"]) * SECTOR
    wavefronts = g["load"]["lines"] + g["store"]["lines"] + g["atomic"]["lines"] + counters["shared"]["wavefronts"]
    terms = {
        "dram": dram_bytes / (t["dram_tbs"] * 1e6),
        "l2": l2_bytes / (t["l2_tbs"] * 1e6),
        "l1": wavefronts / (t["sms"] * t["clock_ghz"] * 1e3),
        "atomics": g["atomic"]["sectors"] / (t["atomic_sectors_per_clock"] * t["clock_ghz"] * 1e3),
    }
    bound = max(terms, key=terms.get)
    floor_bytes = counters["distinct_sectors"] * SECTOR
    return {
        "modeled_us": terms[bound] + t["launch_us"],
        "bound": bound,
        "terms_us": terms,
        "dram_bytes": dram_bytes,
        "floor_bytes": floor_bytes,
        "floor_us": floor_bytes / (t["dram_tbs"] * 1e6) + t["launch_us"],
    }


def traced(case, dtype, backward):
    import cuda_emulation as emu

    from mmgdino.bench.cases import HEAD_DIM, HEADS, msda_inputs

    value, shapes, starts, loc, attn = msda_inputs(case, 1, dtype, "cpu")
    counters = {}
    began = time.perf_counter()
    if backward:
        grad = torch.randn(1, loc.shape[1], HEADS * HEAD_DIM).to(dtype)
        emu.ms_deform_attn_backward(emu.build_trace(), grad, value, shapes, starts, loc, attn, counters=counters)
    else:
        emu.ms_deform_attn(emu.build_trace(), value, shapes, starts, loc, attn, counters=counters)
    counters["emulated_seconds"] = round(time.perf_counter() - began, 1)
    return counters


def summary(counters):
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


def markdown(report):
    lines = [
        "# CUDA MSDA kernels: memory traffic counted in the emulator, and a memory-bound model",
        "",
        "**Counts are exact for the emulated kernels; every time below is MODELED, NOT MEASURED, and the model is "
        "NOT CALIBRATED** (no published pair of implementations has been run through it yet). It is a memory "
        "roofline: instruction issue and latency are not modeled, so it is a lower bound for a kernel that is "
        "not memory-bound. Commit " + report["commit"] + ".",
        "",
        "| pass | case | dtype | requests | sectors/request (value loads) | L1 hit | distinct MB | atomic lanes "
        "per address | emulated s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["rows"]:
        s = row["summary"]
        lines.append(
            f"| {row['pass']} | {row['case']} | {row['dtype']} | {s['requests']:,} | {s['sectors_per_request']:.1f} "
            f"({s['value_sectors_per_request']:.1f}) | {s['l1_hit_fraction']:.0%} | {s['distinct_mb']:.1f} | "
            f"{s['atomic_lanes_per_address']:.2f} | {row['counters']['emulated_seconds']} |"
        )
    lines += [
        "",
        "Modeled time per launch (µs) and its bound; floor: each distinct sector moved once at DRAM bandwidth.",
        "",
        "| pass | case | dtype | "
        + " | ".join(f"{TARGETS[t]['name']} modeled (bound) | floor | x floor" for t in TARGETS)
        + " |",
        "|---|---|---|" + "---:|---:|---:|" * len(TARGETS),
    ]
    for row in report["rows"]:
        cells = []
        for target in TARGETS:
            m = row["model"][target]
            cells.append(
                f"{m['modeled_us']:.1f} ({m['bound']}) | {m['floor_us']:.1f} | {m['modeled_us'] / m['floor_us']:.2f}"
            )
        lines.append(f"| {row['pass']} | {row['case']} | {row['dtype']} | " + " | ".join(cells) + " |")
    lines += ["", "Targets (assumptions marked in benchmarks/gpu_model.py): " + "; ".join(
        f"{t['name']}: {t['sms']} SMs at {t['clock_ghz']} GHz, DRAM {t['dram_tbs']} TB/s, L2 {t['l2_tbs']:.1f} TB/s"
        for t in TARGETS.values())]  # fmt: skip
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu-model-msda")
    parser.add_argument("--quick", action="store_true", help="the decoder case only")
    args = parser.parse_args()
    from mmgdino.environment import git_commit

    rows = []
    for backward in (False, True):
        for case in ("decoder",) if args.quick else ("encoder", "decoder"):
            for dtype in (torch.float32, torch.bfloat16):
                name = str(dtype).removeprefix("torch.")
                print(f"tracing {'backward' if backward else 'forward'} {case} {name} ...", file=sys.stderr, flush=True)
                counters = traced(case, dtype, backward)
                rows.append({"pass": "backward" if backward else "forward", "case": case, "dtype": name,
                             "counters": counters, "summary": summary(counters),
                             "model": {t: model(counters, t) for t in TARGETS}})  # fmt: skip
    report = {"commit": git_commit(), "targets": TARGETS, "rows": rows,
              "label": "counts exact (emulated); times modeled, not measured, not calibrated"}  # fmt: skip
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
