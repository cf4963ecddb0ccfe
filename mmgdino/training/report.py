"""What a run records and reports: per epoch the training loss (and its terms) and the validation metrics, taken
from the Trainer's log history (which checkpoints carry, so a resumed run reports every epoch); seconds per
optimizer step, peak memory (resident set size on CPUs, the CUDA caching allocator's peak on GPUs), and what the
run cost in device-hours (and money, given a price). Written to `metrics.json`, `summary.md` and `report.png`
(a loss / AP per epoch chart; needs matplotlib)."""

import json
import resource
import statistics
import sys
from pathlib import Path

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from ..environment import git_commit, versions

EPOCH_PREFIX = "train_epoch_"


def _all_reduce(value, op):
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(value, op=op)
    return value


class EpochLosses(TrainerCallback, ExportableState):
    """The mean loss and loss terms of each epoch over every process, logged into the Trainer's history at the
    epoch's last step (so every checkpoint's history has every finished epoch). The running sums are combined
    across processes whenever a checkpoint is about to be written and saved with it (`state`), so that a run
    resumed mid-epoch logs the epoch an uninterrupted run logs (`restore`)."""

    def __init__(self):
        self.trainer = None
        self.sums = {}  # combined over processes, Python floats
        self.pending = {}  # this process's since the last combination, float64 tensors

    def add(self, loss, terms):
        for name, value in {"loss": loss, **terms, "count": torch.ones_like(loss)}.items():
            value = value.detach().double()
            self.pending[name] = self.pending[name] + value if name in self.pending else value

    def combine(self):
        if not self.pending:
            return
        names = sorted(self.pending)
        totals = _all_reduce(torch.stack([self.pending[n] for n in names]), torch.distributed.ReduceOp.SUM)
        for name, total in zip(names, totals.tolist()):
            self.sums[name] = self.sums.get(name, 0.0) + total
        self.pending = {}

    def on_step_end(self, args, state, control, **kwargs):
        epoch_ends = abs(state.epoch - round(state.epoch)) < 1e-6
        if epoch_ends or control.should_save or control.should_training_stop:
            self.combine()  # the same steps in every process: the flow's decisions are the same everywhere
        if (epoch_ends or control.should_training_stop) and self.sums.get("count"):
            count = self.sums.pop("count")
            logs = {f"{EPOCH_PREFIX}{name}": round(total / count, 6) for name, total in sorted(self.sums.items())}
            self.sums = {}
            if self.trainer is not None:
                pending_log = control.should_log  # Trainer.log clears it: the Trainer's own loss log comes next
                self.trainer.log(logs)
                control.should_log = pending_log

    def state(self):
        return {"args": {}, "attributes": {"sums": dict(self.sums)}}

    def restore(self, checkpoint):
        """The running sums a checkpoint saved (transformers restores callback states only by re-creating them)."""
        saved = json.loads((Path(checkpoint) / "trainer_state.json").read_text()).get("stateful_callbacks", {})
        entry = saved.get(type(self).__name__)
        entry = entry[0] if isinstance(entry, list) else entry
        self.sums = dict((entry or {}).get("attributes", {}).get("sums", {}))


class RunRecord:
    """What a run holds besides the Trainer's own state: its settings, step times and evaluation folders."""

    def __init__(self, config, out, val_protocol="coco"):
        self.config, self.out, self.val_protocol = config, Path(out), val_protocol
        self.losses = EpochLosses()
        self.step_seconds, self.evaluations = [], []

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
        "wall_seconds_per_step": round(wall_seconds / len(step_seconds), 4) if step_seconds else None,
        "what": "median over this run's optimizer steps of forward, backward, clipping and update (data loading "
        "excluded); wall: this run's time (data, evaluation and checkpoints included) over its steps",
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
