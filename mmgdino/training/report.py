"""What a run records and reports: per epoch the training loss (and its terms) and the validation metrics, taken
from the Trainer's log history (which checkpoints carry, so a resumed run reports every epoch); seconds per
optimizer step, peak memory (resident set size on CPUs, the CUDA caching allocator's peak on GPUs), and what the
run cost in device-hours (and money, given a price). Written to `metrics.json`, `summary.md` and `report.png`
(a loss / AP per epoch chart; needs matplotlib)."""

import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

from ..environment import git_commit, versions

EPOCH_PREFIX = "train_epoch_"


def _all_reduce(value, op):
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(value, op=op)
    return value


class RunRecord:
    """Collects during training; every process holds one (their numbers are combined at the epoch's end)."""

    def __init__(self, config, out, val_protocol="coco"):
        self.config, self.out, self.val_protocol = config, Path(out), val_protocol
        self.trainer = None
        self.step_losses, self.step_terms, self.step_seconds = [], {}, []
        self.evaluations = []
        self.began = time.time()

    def record_step(self, loss, terms):
        self.step_losses.append(loss.float())
        for key, value in terms.items():
            self.step_terms.setdefault(key, []).append(value.float())

    def end_epoch(self, state):
        """Logs the epoch's mean loss and terms over every process (into the Trainer's log history)."""
        if not self.step_losses:
            return
        names = ["loss", *sorted(self.step_terms)]
        series = [self.step_losses] + [self.step_terms[k] for k in names[1:]]
        sums = torch.stack([torch.stack(s).sum() for s in series] + [torch.tensor(float(len(self.step_losses)))
                                                                        .to(self.step_losses[0].device)])  # fmt: skip
        sums = _all_reduce(sums, torch.distributed.ReduceOp.SUM).tolist()
        logs = {f"{EPOCH_PREFIX}{name}": round(total / sums[-1], 6) for name, total in zip(names, sums)}
        self.step_losses, self.step_terms = [], {}
        if self.trainer is not None:
            self.trainer.log(logs)

    def record_evaluation(self, epoch, metrics, folder):
        self.evaluations.append({"epoch": epoch, "AP": metrics.get("AP"), "folder": str(folder)})


def epochs_from_history(log_history):
    """[{"epoch", "loss", "loss_ce", ..., "AP", "AP50", ...}] from the Trainer's log history."""
    by_epoch = {}
    for entry in log_history:
        epoch = entry.get("epoch")
        if epoch is None:
            continue
        row = by_epoch.setdefault(round(epoch, 3), {"epoch": round(epoch, 3)})
        for key, value in entry.items():
            if key.startswith(EPOCH_PREFIX):
                row[key[len(EPOCH_PREFIX) :]] = value
            elif key.startswith("eval_") and key != "eval_seconds_per_image":
                row[key[len("eval_") :]] = value
    return [row for _, row in sorted(by_epoch.items()) if len(row) > 1]


def peak_memory(device):
    """(bytes, what was measured) for this process; the largest over all processes when distributed."""
    if device.type == "cuda":
        value, kind = torch.cuda.max_memory_allocated(device), "torch.cuda.max_memory_allocated"
    else:
        scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is in KiB on Linux, bytes on macOS
        value, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale, "peak resident set size"
    peak = _all_reduce(torch.tensor([float(value)], device=device), torch.distributed.ReduceOp.MAX)
    return int(peak.item()), kind


def cost(wall_seconds, processes, device, price_per_hour=None):
    hours = wall_seconds / 3600 * processes
    kind = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    found = {"wall_seconds": round(wall_seconds, 1), "processes": processes, "device": kind,
             "device_hours": round(hours, 4)}  # fmt: skip
    if price_per_hour is not None:
        found["price_per_device_hour"] = price_per_hour
        found["cost"] = round(hours * price_per_hour, 4)
    return found


def timing(step_seconds, steps, wall_seconds):
    measured = step_seconds[1:] or step_seconds  # the first step pays one-time costs (allocation, autotuning)
    return {
        "steps": steps,
        "steps_timed": len(measured),
        "median_seconds_per_step": round(statistics.median(measured), 4) if measured else None,
        "mean_seconds_per_step": round(statistics.fmean(measured), 4) if measured else None,
        "wall_seconds_per_step": round(wall_seconds / steps, 4) if steps else None,
        "what": "median over optimizer steps of forward, backward, clipping and update (data loading excluded); "
        "wall: the run's time (data, evaluation and checkpoints included) over its steps",
    }


def draw_chart(epochs, path, title):
    """Loss and validation AP per epoch; returns the path, or None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, loss_axis = plt.subplots(figsize=(7, 4))
    xs = [e["epoch"] for e in epochs if "loss" in e]
    loss_axis.plot(xs, [e["loss"] for e in epochs if "loss" in e], "o-", color="tab:red", label="training loss")
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("training loss (mean over the epoch)", color="tab:red")
    ap = [(e["epoch"], e["AP"]) for e in epochs if e.get("AP") is not None]
    if ap:
        ap_axis = loss_axis.twinx()
        ap_axis.plot(*zip(*ap), "s-", color="tab:blue", label="validation AP")
        ap_axis.set_ylabel("validation AP", color="tab:blue")
        ap_axis.set_ylim(0, max(1e-3, max(a for _, a in ap)) * 1.1)
    loss_axis.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def summary_markdown(report):
    lines = [f"# mmgdino train: {report['model']}", "", "| epoch | loss | AP | AP50 |", "|---:|---:|---:|---:|"]
    for e in report["epochs"]:
        cells = [f"{e[k]:.4f}" if isinstance(e.get(k), float) else "-" for k in ("loss", "AP", "AP50")]
        lines.append(f"| {e['epoch']:g} | " + " | ".join(cells) + " |")
    t = report["timing"]
    lines += ["", f"Steps: {t['steps']}; median {t['median_seconds_per_step']} s per step, "
              f"wall {t['wall_seconds_per_step']} s per step; peak memory {report['peak_memory_bytes'] / 2**20:.0f} "
              f"MiB ({report['peak_memory_kind']}); {report['cost']['device_hours']} device-hours on "
              f"{report['cost']['device']}" + (f", cost {report['cost']['cost']}" if "cost" in report["cost"] else "")
              + "."]  # fmt: skip
    if report.get("holdout"):
        h = report["holdout"]
        lines += ["", f"Held-out set (zero-shot ability): AP {h['before']['AP']:.4f} before, {h['after']['AP']:.4f} "
                  f"after ({h['change']:+.4f})."]  # fmt: skip
    lines += ["", f"Model: `{report['model_dir']}` ({report['model_is']})."]
    return "\n".join(lines) + "\n"


def environment(device):
    from ..environment import describe_device

    return {"device": describe_device(device), "commit": git_commit(), "versions": versions()}


def write(out, report):
    out = Path(out)
    (out / "metrics.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (out / "summary.md").write_text(summary_markdown(report))
