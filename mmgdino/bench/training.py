"""`python -m mmgdino.bench.training`: one training step of MM Grounding DINO tiny (Swin-T, BERT-base, random
weights), mmgdino's class against transformers' class, in one process, on the same weights and batch.

    python -m mmgdino.bench.training [--height 800 --width 1333 --batch 2 --repeats 3 --precision both
                                      --memory --out PATH]

The step is `mmgdino train`'s without the data pipeline: forward with labels (transformers' loss, auxiliary losses
on), backward, gradient clipping at 0.1, AdamW; the language model frozen as the fine-tuning recipe has it. Rows:
transformers' MMGroundingDinoForObjectDetection as is (the baseline); the same model after `mmgdino.patch`
(mmgdino's operators inside transformers' layers); `mmgdino.MMGroundingDinoForObjectDetection`. Every row starts
from the same weights and takes the same synthetic batch (the prompt "a cat. a remote control.", three boxes per
image) with the same seed, so their first losses are comparable (rel err). Each step is timed in three parts
(forward with the loss, backward, clipping with the optimizer step), medians over `--repeats` steps after one
warm-up, rows round-robin (one step of each, then the next); float32, and bfloat16 autocast (float32 weights)
where the CPU or GPU has native bf16. One more step of each row runs under torch.profiler for where the time
goes. `--memory`: peak memory of each row, on CUDA what one step allocates on top of what was allocated before it,
on CPUs the peak resident set over two steps in a fresh process less what was resident before them (the weights,
the batch). Run it outside the repository's root folder (or with `python -P`): the root's `kernels/` must not be
importable.
Writes PATH.json, PATH.md and PATH.png with the CPU model and ISA, threads, load average, commit and versions.
"""

import argparse
import copy
import json
import multiprocessing
import os
import statistics
import time
from pathlib import Path

import torch

from ..environment import cpu_model_and_flags, git_commit, versions
from .cases import tiny_model_and_inputs

PARTS = ("forward", "backward", "optimizer")
ROWS = ("transformers", "transformers + mmgdino.patch", "mmgdino")
CLIP_NORM = 0.1  # mmgdino train's --max-grad-norm default, as mmdetection's recipes
# The deformable attention and the phrase heads, ours and transformers' formulation of them.
KEY_OPS = ("ms_deform_attn", "grid_sampler", "contrastive")


def labels_for(inputs):
    """Three boxes per image for the prompt's two phrases ("a cat", "a remote control")."""
    gen = torch.Generator().manual_seed(0)
    batch, device = inputs["input_ids"].shape[0], inputs["input_ids"].device
    centers = torch.rand(batch, 3, 2, generator=gen) * 0.6 + 0.2
    boxes = torch.cat([centers, torch.rand(batch, 3, 2, generator=gen) * 0.3 + 0.05], -1)
    return [{"class_labels": torch.tensor([0, 1, 0], device=device), "boxes": b.to(device)} for b in boxes]


def build(row, reference):
    """The row's model, training, with the reference's weights and the language model frozen. The reference
    (transformers' class) is left as it is: the patched row patches a copy."""
    if row == "transformers":
        model = reference
    elif row == "transformers + mmgdino.patch":
        import mmgdino

        model = mmgdino.patch(copy.deepcopy(reference))
    else:
        from ..modeling import MMGroundingDinoForObjectDetection

        model = MMGroundingDinoForObjectDetection.from_transformers(reference)
    model.config.auxiliary_loss = True
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(not name.startswith("model.text_backbone."))
    return model.train()


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Step:
    """`mmgdino train`'s optimizer step on one batch: its loss and the seconds of each of PARTS."""

    def __init__(self, model, inputs, labels, autocast):
        self.model, self.inputs, self.labels, self.autocast = model, inputs, labels, autocast
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.trainable, lr=1e-5, weight_decay=1e-4)
        self.device = inputs["pixel_values"].device

    def __call__(self, seed=0):
        torch.manual_seed(seed)  # the same dropout masks in every row
        self.optimizer.zero_grad(set_to_none=True)
        seconds = []
        start = time.perf_counter()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            loss = self.model(**self.inputs, labels=self.labels).loss
        _sync(self.device)
        seconds.append(time.perf_counter() - start)
        start = time.perf_counter()
        loss.backward()
        _sync(self.device)
        seconds.append(time.perf_counter() - start)
        start = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(self.trainable, CLIP_NORM)
        self.optimizer.step()
        _sync(self.device)
        seconds.append(time.perf_counter() - start)
        return loss.item(), seconds


def profile_step(step, count=12):
    """One step under torch.profiler: the operators with the most self time, and every deformable-attention and
    phrase-head operator (KEY_OPS), each with its milliseconds, share of the step and calls."""
    from torch.profiler import ProfilerActivity, profile

    cuda = step.device.type == "cuda"
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        step()
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)
    total = sum(getattr(e, key) for e in events) or 1

    def row(e):
        return {"op": e.key, "ms": getattr(e, key) / 1e3, "share": getattr(e, key) / total, "calls": e.count}

    return {"top": [row(e) for e in events[:count]],
            "key": [row(e) for e in events if any(name in e.key for name in KEY_OPS)]}  # fmt: skip


def _memory_status(*fields):
    """Fields of /proc/self/status in bytes (VmRSS: resident now; VmHWM: the peak since the last reset)."""
    found = {}
    with open("/proc/self/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in fields:
                found[name] = int(value.split()[0]) * 1024
    return [found[name] for name in fields]


def _child_peak(row, height, width, batch, autocast, threads, connection):
    torch.set_num_threads(threads)
    reference, inputs = tiny_model_and_inputs(torch.device("cpu"), height=height, width=width, batch=batch)
    step = Step(build(row, reference), inputs, labels_for(inputs), autocast)
    (before,) = _memory_status("VmRSS")
    # The peak so far (building the models) is not the step's: reset it to what is resident now. (getrusage's
    # ru_maxrss cannot be reset and, in a spawned child, starts from the parent's resident set.)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    for _ in range(2):
        step()
    (peak,) = _memory_status("VmHWM")
    connection.send(max(0, peak - before))


def cpu_peak_growth(row, height, width, batch, autocast):
    """RSS growth (bytes) of two training steps of the row in a fresh process (None if it did not answer)."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_child_peak,
                            args=(row, height, width, batch, autocast, torch.get_num_threads(), sender))  # fmt: skip
    child.start()
    try:
        while not receiver.poll(1):
            if not child.is_alive():  # it failed (its traceback is on stderr) or was killed
                return None
        return receiver.recv()
    finally:
        child.join()
        receiver.close()


def measure(autocast, reference, inputs, labels, repeats, memory, log):
    """The rows' results at one precision: steps round-robin, then a profiled step and the peak memory of each."""
    start = {k: v.detach().clone() for k, v in reference.state_dict().items()}
    height, width, batch = *inputs["pixel_values"].shape[-2:], inputs["pixel_values"].shape[0]
    device = inputs["pixel_values"].device
    # CPU peak memory first, each row in a child, while this process holds only the reference: beside the timed
    # rows' three models (and the heap they leave), a child training at 800x1333 ran a 24 GB machine out of memory.
    peaks = {}
    if memory and device.type == "cpu":
        for name in ROWS:
            peak = cpu_peak_growth(name, height, width, batch, autocast)
            peaks[name] = None if peak is None else peak / 2**20
            log(f"  {name}: peak memory {peaks[name] or 0:.0f} MiB over two steps")
    rows = []
    for name in ROWS:
        reference.load_state_dict(start)  # every row from the same weights (the baseline row trains the reference)
        rows.append({"implementation": name, "autocast_bf16": autocast,
                     "step": Step(build(name, reference), inputs, labels, autocast), "steps": []})  # fmt: skip
        if name in peaks:
            rows[-1]["peak_memory_mib"] = peaks[name]
    for round_ in range(repeats + 1):  # round 0 warms up (and creates the optimizers' state)
        for row in rows:
            loss, seconds = row["step"]()
            if round_ == 0:
                row["first_loss"] = loss
            else:
                row["steps"].append(seconds)
            log(f"  {row['implementation']}: {sum(seconds):.2f} s "
                f"({', '.join(f'{p} {s:.2f}' for p, s in zip(PARTS, seconds))})")  # fmt: skip
    for row in rows:
        step, steps = row.pop("step"), row.pop("steps")
        if memory and device.type == "cuda":  # every row's model is resident: what one step adds to them
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            step()
            row["peak_memory_mib"] = (torch.cuda.max_memory_allocated(device) - before) / 2**20
        row["profile"] = profile_step(step)
        row["parts_ms"] = {part: statistics.median(s[i] for s in steps) * 1e3 for i, part in enumerate(PARTS)}
        row["step_ms"] = statistics.median(map(sum, steps)) * 1e3
        step.optimizer.zero_grad(set_to_none=True)  # the baseline's model is the reference, which stays
        del step
    base = rows[0]
    for row in rows[1:]:
        row["speedup"] = base["step_ms"] / row["step_ms"]
        row["loss_rel_err"] = abs(row["first_loss"] - base["first_loss"]) / abs(base["first_loss"])
    return rows


def peak_memory_kind(device):
    if device.type == "cuda":
        return "torch.cuda.max_memory_allocated over one step, less what was allocated before it"
    return "peak resident set over two steps in a fresh process, less what was resident before them"


def run(height=800, width=1333, batch=2, repeats=3, device=None, autocast_modes=None, memory=False, log=print):
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if autocast_modes is None:
        native_bf16 = device.type == "cuda" or bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())
        autocast_modes = (False, True) if native_bf16 else (False,)
    reference, inputs = tiny_model_and_inputs(device, height=height, width=width, batch=batch)
    labels = labels_for(inputs)
    started = os.getloadavg()[0]
    rows = []
    for autocast in autocast_modes:
        log(f"training step, {height}x{width}, batch {batch}, {'bf16 autocast' if autocast else 'float32'}")
        rows += measure(autocast, reference, inputs, labels, repeats, memory, log)
    model, flags = cpu_model_and_flags()
    return {
        "case": f"mm_grounding_dino_tiny {height}x{width}, batch {batch}, AdamW, language model frozen",
        "device": device.type,
        "cpu": {"model": model, "isa": flags, "threads": torch.get_num_threads()},
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "load_average": {"start": started, "end": os.getloadavg()[0]},
        "commit": git_commit(),
        "versions": versions(),
        "repeats": repeats,
        "peak_memory_kind": peak_memory_kind(device) if memory else None,
        "results": rows,
    }


def _precision(row):
    return "bf16 autocast" if row["autocast_bf16"] else "float32"


def markdown(report):
    cpu = report["cpu"]
    memory = report.get("peak_memory_kind") is not None
    lines = [
        f"Case: {report['case']}  ",
        f"Device: {report['gpu'] or cpu['model']}, {cpu['threads']} threads, "
        f"ISA {' '.join(cpu['isa']) or 'baseline'}  ",
        f"Load average (1 min) at start / end: {report['load_average']['start']} / {report['load_average']['end']}  ",
        f"Commit: {report['commit']}  ",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()) + "  ",
        f"Medians of {report['repeats']} steps after one warm-up step, rows round-robin; rel err: the first step's "
        "loss against transformers' (same weights, batch and seed)" + ("; peak memory: " if memory else "")
        + (report.get("peak_memory_kind") or ""),
        "",
        "| implementation | precision | step ms | forward ms | backward ms | optimizer ms | speedup | loss rel err |"
        + (" peak MiB |" if memory else ""),
        "|---|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if memory else ""),
    ]  # fmt: skip
    for r in report["results"]:
        parts = " | ".join(f"{r['parts_ms'][p]:.0f}" for p in PARTS)
        speedup = f"**{r['speedup']:.2f}x**" if "speedup" in r else "1.00x"
        err = f"{r['loss_rel_err']:.1e}" if "loss_rel_err" in r else ""
        peak = r.get("peak_memory_mib")
        tail = (" - |" if peak is None else f" {peak:.0f} |") if memory else ""
        lines.append(f"| {r['implementation']} | {_precision(r)} | {r['step_ms']:.0f} | {parts} | {speedup} | {err} |"
                     + tail)  # fmt: skip
    for r in report["results"]:
        lines += ["", f"Where the time goes, {r['implementation']} {_precision(r)} (one profiled step, self time; "
                  "the deformable-attention and phrase-head operators after the top ones):", "",
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
    names = [f"{r['implementation']}\n{_precision(r)}" for r in rows]
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
    parser.add_argument("--memory", action="store_true", help="also each row's peak memory (CPU: a process each)")
    parser.add_argument("--out", default="mmgdino-bench-results.training", help="PATH for PATH.json/.md/.png")
    args = parser.parse_args(argv)
    if min(args.height, args.width, args.batch, args.repeats) < 1:
        parser.error("--height, --width, --batch and --repeats must be positive")
    if min(args.height, args.width) < 320:
        parser.error("--height and --width must be at least 320 (the 900 two-stage queries need ~2000 pixels)")
    modes = {"both": None, "float32": (False,), "bf16": (True,)}[args.precision]
    report = run(args.height, args.width, args.batch, args.repeats, args.device, modes, args.memory)
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
