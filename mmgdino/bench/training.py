"""Training-step benchmark: forward + backward + AdamW step of MM Grounding DINO tiny, mmgdino's class against
transformers' class, in one process, on the same weights and batch.

    python -m mmgdino.bench.training [--height 800 --width 1333 --batch 2 --repeats 3 --out PATH]

Each step is timed in three parts (forward with the loss, backward, optimizer step), medians over `--repeats`
steps after one warm-up; both models start from the same weights and see the same seed, so their first losses
are comparable (rel err). float32, and bfloat16 autocast (float32 weights) where the CPU or GPU has native
bf16. One more step of each model runs under torch.profiler for where the time goes (top operators by self
time). Writes PATH.json, PATH.md and PATH.png with the device (CPU model and ISA from lscpu), threads, load
average, commit and versions.
"""

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch

from . import tiny_model_and_inputs, versions

PARTS = ("forward", "backward", "optimizer")
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_description():
    """CPU model, the ISA extensions that matter here and the threads torch uses (lscpu when there is one)."""
    fields = {}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = set(fields.get("Flags", "").split())
    return {
        "model": fields.get("Model name", platform.processor() or platform.machine()).strip(),
        "isa": [f for f in ISA_FLAGS if f in flags],
        "threads": torch.get_num_threads(),
    }


def commit():
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=here)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=here).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else "unknown"


def labels_for(inputs):
    """Three boxes per image for the prompt's two phrases ("a cat", "a remote control")."""
    gen = torch.Generator().manual_seed(0)
    batch, device = inputs["input_ids"].shape[0], inputs["input_ids"].device
    centers = torch.rand(batch, 3, 2, generator=gen) * 0.6 + 0.2
    boxes = torch.cat([centers, torch.rand(batch, 3, 2, generator=gen) * 0.3 + 0.05], -1)
    return [{"class_labels": torch.tensor([0, 1, 0], device=device), "boxes": b.to(device)} for b in boxes]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step(model, optimizer, inputs, labels, autocast, device, seed=0):
    """One step; returns the loss and the seconds of each part."""
    torch.manual_seed(seed)
    optimizer.zero_grad(set_to_none=True)
    seconds = []
    start = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        loss = model(**inputs, labels=labels).loss
    _sync(device)
    seconds.append(time.perf_counter() - start)
    start = time.perf_counter()
    loss.backward()
    _sync(device)
    seconds.append(time.perf_counter() - start)
    start = time.perf_counter()
    optimizer.step()
    _sync(device)
    seconds.append(time.perf_counter() - start)
    return loss.item(), seconds


# The deformable attention and the phrase heads, ours and transformers' formulation of them.
KEY_OPS = ("ms_deform_attn", "grid_sampler", "contrastive")


def profile_step(model, optimizer, inputs, labels, autocast, device, count=12):
    """One step under torch.profiler: the operators with the most self time, and every deformable-attention and
    phrase-head operator (KEY_OPS), each with its milliseconds, share of the step and calls."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        train_step(model, optimizer, inputs, labels, autocast, device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)
    total = sum(getattr(e, key) for e in events) or 1

    def row(e):
        return {"op": e.key, "ms": getattr(e, key) / 1e3, "share": getattr(e, key) / total, "calls": e.count}

    return {"top": [row(e) for e in events[:count]],
            "key": [row(e) for e in events if any(name in e.key for name in KEY_OPS)]}  # fmt: skip


def measure(name, model, inputs, labels, autocast, device, repeats, log):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    first_loss, _ = train_step(model, optimizer, inputs, labels, autocast, device)  # warm-up (and optimizer state)
    steps = []
    for _ in range(repeats):
        steps.append(train_step(model, optimizer, inputs, labels, autocast, device)[1])
        log(f"  {name}: {sum(steps[-1]):.2f} s ({', '.join(f'{p} {s:.2f}' for p, s in zip(PARTS, steps[-1]))})")
    parts = {part: statistics.median(step[i] for step in steps) * 1e3 for i, part in enumerate(PARTS)}
    profile = profile_step(model, optimizer, inputs, labels, autocast, device)
    model.zero_grad(set_to_none=True)  # the gradients and (with the optimizer) its state go before the next model
    return {"implementation": name, "autocast_bf16": autocast, "step_ms": statistics.median(map(sum, steps)) * 1e3,
            "parts_ms": parts, "first_loss": first_loss, "profile": profile}  # fmt: skip


def run(height=800, width=1333, batch=2, repeats=3, device=None, autocast_modes=None, log=print):
    from ..modeling import MMGroundingDinoForObjectDetection

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if autocast_modes is None:
        native_bf16 = device.type == "cuda" or bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())
        autocast_modes = (False, True) if native_bf16 else (False,)
    theirs, inputs = tiny_model_and_inputs(device, height=height, width=width, batch=batch)
    ours = MMGroundingDinoForObjectDetection.from_transformers(theirs)
    start = {k: v.detach().clone() for k, v in ours.state_dict().items()}  # every run starts from these weights
    labels = labels_for(inputs)
    started = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    rows = []
    for autocast in autocast_modes:
        log(f"training step, {height}x{width}, batch {batch}, {'bf16 autocast' if autocast else 'float32'}")
        pair = []
        for name, model in (("transformers", theirs), ("mmgdino", ours)):
            model.load_state_dict(start)
            pair.append(measure(name, model.train(), inputs, labels, autocast, device, repeats, log))
        base, mine = pair
        mine["speedup"] = base["step_ms"] / mine["step_ms"]
        mine["loss_rel_err"] = abs(mine["first_loss"] - base["first_loss"]) / abs(base["first_loss"])
        rows += pair
    return {
        "case": f"mm_grounding_dino_tiny {height}x{width}, batch {batch}, AdamW",
        "device": device.type if device.type != "cpu" else "cpu",
        "cpu": cpu_description(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "load_average": {"start": started, "end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None},
        "commit": commit(),
        "versions": versions(),
        "repeats": repeats,
        "results": rows,
    }


def markdown(report):
    cpu = report["cpu"]
    lines = [
        f"Case: {report['case']}  ",
        f"Device: {report['gpu'] or cpu['model']}, {cpu['threads']} threads, "
        f"ISA {' '.join(cpu['isa']) or 'baseline'}  ",
        f"Load average (1 min) at start / end: {report['load_average']['start']} / {report['load_average']['end']}  ",
        f"Commit: {report['commit']}  ",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()) + "  ",
        f"Medians of {report['repeats']} steps after one warm-up step; rel err: the first step's loss against "
        "transformers' (same weights, batch and seed)",
        "",
        "| implementation | precision | step ms | forward ms | backward ms | optimizer ms | speedup | loss rel err |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        parts = " | ".join(f"{r['parts_ms'][p]:.0f}" for p in PARTS)
        speedup = f"**{r['speedup']:.2f}x**" if "speedup" in r else "1.00x"
        err = f"{r['loss_rel_err']:.1e}" if "loss_rel_err" in r else ""
        precision = "bf16 autocast" if r["autocast_bf16"] else "float32"
        lines.append(f"| {r['implementation']} | {precision} | {r['step_ms']:.0f} | {parts} | {speedup} | {err} |")
    for r in report["results"]:
        precision = "bf16 autocast" if r["autocast_bf16"] else "float32"
        lines += ["", f"Where the time goes, {r['implementation']} {precision} (one profiled step, self time; the "
                  "deformable-attention and phrase-head operators after the top ones):", "",
                  "| operator | ms | share | calls |", "|---|---:|---:|---:|"]  # fmt: skip
        for op in r["profile"]["top"] + [{"op": "...", "ms": None}] + r["profile"]["key"]:
            lines.append("| ... | | | |" if op["ms"] is None else
                         f"| `{op['op']}` | {op['ms']:.0f} | {op['share']:.1%} | {op['calls']} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(report, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["results"]
    names = [f"{r['implementation']}\n{'bf16 autocast' if r['autocast_bf16'] else 'float32'}" for r in rows]
    fig, ax = plt.subplots(figsize=(8, 0.7 * len(rows) + 1.5))
    left = [0.0] * len(rows)
    for part, color in zip(PARTS, ("#2a7ab0", "#e67e22", "#7f8c8d")):
        widths = [r["parts_ms"][part] / 1e3 for r in rows]
        ax.barh(range(len(rows)), widths, left=left, color=color, label=part)
        left = [a + b for a, b in zip(left, widths)]
    for i, r in enumerate(rows):
        ax.text(left[i], i, f" {left[i]:.1f} s" + (f"  ({r['speedup']:.2f}x)" if "speedup" in r else ""),
                va="center", fontsize=8)  # fmt: skip
    ax.set_yticks(range(len(rows)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, max(left) * 1.3)
    ax.set_xlabel("seconds per training step (median)")
    ax.set_title(f"{report['case']} on {report['gpu'] or report['cpu']['model']} (commit {report['commit']})",
                 fontsize=8)  # fmt: skip
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m mmgdino.bench.training", description=__doc__.splitlines()[0])
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1333)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when there is one)")
    parser.add_argument("--precision", choices=("both", "float32", "bf16"), default="both",
                        help="float32, bf16 autocast, or both (default; bf16 only where it is native)")  # fmt: skip
    parser.add_argument("--out", default="mmgdino-bench-results.training", help="PATH for PATH.json/.md/.png")
    args = parser.parse_args(argv)
    if min(args.height, args.width, args.batch, args.repeats) < 1:
        parser.error("--height, --width, --batch and --repeats must be positive")
    modes = {"both": None, "float32": (False,), "bf16": (True,)}[args.precision]
    report = run(args.height, args.width, args.batch, args.repeats, args.device, modes)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.json").write_text(json.dumps(report, indent=1) + "\n")
    Path(f"{out}.md").write_text(markdown(report))
    try:
        plot(report, f"{out}.png")
    except ImportError:
        print("matplotlib is not installed: no chart (pip install matplotlib)")
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
