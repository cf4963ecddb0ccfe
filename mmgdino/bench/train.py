"""`python -m mmgdino.bench.train`: seconds per training step and peak memory of the model `mmgdino train`
trains against transformers' own class, in the same loop, in one process.

The loop is `mmgdino train`'s step without the data pipeline: forward with labels (transformers' loss, auxiliary
losses on), backward, gradient clipping at 0.1, AdamW; the language model frozen as the small-set recipe has it.
Every model starts from the same random weights (MM Grounding DINO tiny: Swin-T, BERT-base) and takes the same
synthetic batch (random pixels, the prompt "a cat. a remote control.", two boxes per image). Rows:
- transformers' MMGroundingDinoForObjectDetection, as is (the baseline);
- the same model after `mmgdino.patch` (mmgdino's operators inside transformers' layers);
- `mmgdino.MMGroundingDinoForObjectDetection`, when it computes losses (until then the row says why not).
Steps are timed round-robin over the rows (one step of each, then the next), median of `--steps` after one
warm-up step each. Run it outside the repository's root folder (or with `python -P`): the root's `kernels/`
must not be importable. Peak memory: on CUDA the caching allocator's peak during the timed steps; on CPUs the growth
of the resident set over a fresh process's two steps (a process's RSS peak cannot be reset, so each row's is
measured in its own child process).
"""

import argparse
import json
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

PROMPT_IDS = [101, 1037, 4937, 1012, 1037, 6556, 2491, 1012, 102]  # [CLS] a cat . a remote control . [SEP]
ROWS = ("transformers", "transformers + mmgdino.patch", "mmgdino")


def batch_for(size, batch, seed=0):
    height, width = size
    gen = torch.Generator().manual_seed(seed)
    boxes = torch.tensor([[0.3, 0.4, 0.2, 0.3], [0.7, 0.6, 0.3, 0.4]])  # normalized cx, cy, w, h
    labels = [{"class_labels": torch.tensor([0, 1]), "boxes": boxes.clone()} for _ in range(batch)]
    return {
        "pixel_values": torch.randn(batch, 3, height, width, generator=gen),
        "pixel_mask": torch.ones(batch, height, width, dtype=torch.long),
        "input_ids": torch.tensor([PROMPT_IDS] * batch),
        "attention_mask": torch.ones(batch, len(PROMPT_IDS), dtype=torch.long),
        "labels": labels,
    }


def reference_model(size, seed=0):
    from transformers import MMGroundingDinoConfig, MMGroundingDinoForObjectDetection

    torch.manual_seed(seed)
    config = MMGroundingDinoConfig(auxiliary_loss=True)
    config.backbone_config.image_size = max(size)
    return MMGroundingDinoForObjectDetection(config)


def build(row, size, device):
    """(model ready to train, None) or (None, why it cannot run)."""
    model = reference_model(size)
    if row == "transformers + mmgdino.patch":
        import mmgdino

        mmgdino.patch(model)
    elif row == "mmgdino":
        from mmgdino import MMGroundingDinoForObjectDetection

        model = MMGroundingDinoForObjectDetection.from_transformers(model)
        model.config.auxiliary_loss = True
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(not name.startswith("model.text_backbone."))
    model = model.to(device).train()
    try:  # a small probe, no update: does this model compute a loss at all?
        Step(model, device).loss(batch_for((320, 320), 1)).backward()  # 900 queries need ~2000 pixels
    except (NotImplementedError, TypeError, AttributeError) as exc:
        return None, str(exc).splitlines()[0]
    finally:
        model.zero_grad(set_to_none=True)
    return model, None


class Step:
    def __init__(self, model, device):
        self.model, self.device = model, device
        self.optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4,
                                           weight_decay=1e-4)  # fmt: skip

    def loss(self, batch):
        batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        batch["labels"] = [{k: v.to(self.device) for k, v in t.items()} for t in batch["labels"]]
        return self.model(**batch).loss

    def __call__(self, batch):
        loss = self.loss(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], 0.1)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return float(loss.detach())


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _child_peak(row, size, batch, device, threads, connection):
    torch.set_num_threads(threads)
    model, why = build(row, size, torch.device(device))
    if model is None:
        connection.send(None)
        return
    step, inputs = Step(model, torch.device(device)), batch_for(size, batch)
    before = _rss_bytes()
    for _ in range(2):
        step(inputs)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    connection.send(max(0, peak - before))


def cpu_peak_growth(row, size, batch, threads):
    """RSS growth (bytes) of two training steps in a fresh process, or None when the row cannot run."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_child_peak, args=(row, size, batch, "cpu", threads, sender))
    child.start()
    try:
        return receiver.recv() if receiver.poll(3600) else None
    finally:
        child.join()
        receiver.close()


def cpu_description():
    name = platform.processor() or platform.machine()
    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and name in ("", platform.machine()):
                name = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return {"cpu": name, "isa": isa, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}


def run(size=(480, 640), batch=1, steps=3, device="cpu", threads=None, log=print):
    from ..environment import describe_device, git_commit, versions

    device = torch.device(device)
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    models, why, timers = {}, {}, {}
    for row in ROWS:
        models[row], why[row] = build(row, size, device)
        if models[row] is not None:
            timers[row] = Step(models[row], device)
            log(f"{row}: built")
        else:
            log(f"{row}: not available ({why[row]})")
    inputs = batch_for(size, batch)
    seconds = {row: [] for row in timers}
    losses = {row: [] for row in timers}
    for round_ in range(steps + 1):  # round 0 warms up
        for row, step in timers.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            began = time.perf_counter()
            loss = step(inputs)
            took = time.perf_counter() - began
            if round_:
                seconds[row].append(took)
                losses[row].append(loss)
            log(f"round {round_} {row}: {took:.2f} s, loss {loss:.4f}")
    peaks = {}
    for row in ROWS:
        if row not in timers:
            peaks[row] = None
        elif device.type == "cuda":
            peaks[row] = torch.cuda.max_memory_allocated(device)
        else:
            del models[row], timers[row]
            peaks[row] = cpu_peak_growth(row, size, batch, threads)
    base = statistics.median(seconds["transformers"])
    results = []
    for row in ROWS:
        entry = {"implementation": row, "available": row in seconds, "why_not": why[row]}
        if row in seconds:
            median = statistics.median(seconds[row])
            entry.update(seconds_per_step=round(median, 4), all_seconds=[round(s, 4) for s in seconds[row]],
                         speedup=round(base / median, 3), losses=losses[row],
                         peak_memory_mib=round(peaks[row] / 2**20, 1) if peaks[row] is not None else None)  # fmt: skip
        results.append(entry)
    return {
        "what": __doc__.split("\n\n")[1].replace("\n", " "),
        "size": list(size),
        "batch": batch,
        "steps": steps,
        "device": describe_device(device),
        "threads": threads,
        "load_average": list(os.getloadavg()),
        "cpu": cpu_description(),
        "commit": git_commit(),
        "versions": versions(),
        "peak_memory_kind": "torch.cuda.max_memory_allocated" if device.type == "cuda" else
        "resident set growth over two steps in a fresh process",
        "results": results,
    }  # fmt: skip


def markdown(report):
    lines = [
        f"# Training step: {report['size'][0]}x{report['size'][1]}, batch {report['batch']}, "
        f"median of {report['steps']} steps",
        "",
        f"Device: {report['device']}; {report['cpu']['cpu']} ({', '.join(report['cpu']['isa']) or 'baseline'}; "
        f"torch {report['cpu']['torch_cpu_capability']}), {report['threads']} threads, load average "
        f"{', '.join(f'{v:.1f}' for v in report['load_average'])}  ",
        f"Commit: {report['commit']}  " + (f"\nNote: {report['note']}  " if report.get("note") else ""),
        "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
        "",
        "| implementation | s / step | speedup | peak memory MiB | steps (s) |",
        "|---|---:|---:|---:|---|",
    ]
    for r in report["results"]:
        if not r["available"]:
            lines.append(f"| {r['implementation']} | - | - | - | not available: {r['why_not']} |")
            continue
        peak = "-" if r["peak_memory_mib"] is None else f"{r['peak_memory_mib']:.0f}"
        steps = ", ".join(f"{s:.2f}" for s in r["all_seconds"])
        speed = f"{r['seconds_per_step']:.3f} | {r['speedup']:.2f}x"
        lines.append(f"| {r['implementation']} | {speed} | {peak} | {steps} |")
    lines += ["", f"Peak memory: {report['peak_memory_kind']}.", "", report["what"]]
    return "\n".join(lines) + "\n"


def chart(report, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [r for r in report["results"] if r["available"]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    names = [r["implementation"] for r in rows]
    left.barh(names, [r["seconds_per_step"] for r in rows], color="tab:blue")
    left.set_xlabel("seconds per training step (lower is better)")
    right.barh(names, [r["peak_memory_mib"] or 0 for r in rows], color="tab:orange")
    right.set_xlabel(f"peak memory, MiB ({'CUDA' if 'cuda' in report['peak_memory_kind'] else 'RSS growth'})")
    right.set_yticks([])
    fig.suptitle(f"MM Grounding DINO tiny, {report['size'][0]}x{report['size'][1]}, batch {report['batch']}, "
                 f"{report['device']}", fontsize=9)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m mmgdino.bench.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="480x640", help="HxW of the synthetic images (default 480x640)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per implementation (default 3)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: torch's)")
    parser.add_argument("--out", default="train-bench", help="writes OUT.json, OUT.md and OUT.png")
    parser.add_argument("--note", default=None, help="a line recorded with the results (where the code came from)")
    args = parser.parse_args(argv)
    try:
        size = tuple(int(v) for v in args.size.lower().split("x"))
        assert len(size) == 2 and min(size) >= 320 and args.batch >= 1 and args.steps >= 1
    except (ValueError, AssertionError):
        parser.error(f"--size HxW (each >= 320, for 900 queries), --batch and --steps >= 1; "
                     f"got {args.size}, {args.batch}, {args.steps}")  # fmt: skip
    report = run(size, args.batch, args.steps, args.device, args.threads,
                 log=lambda m: print(m, file=sys.stderr, flush=True))  # fmt: skip
    report["note"] = args.note
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    chart(report, out.with_suffix(".png"))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
