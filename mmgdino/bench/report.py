"""Reports: a markdown table, JSON beside it, and a PNG chart of the speedups."""

import argparse
import json
from pathlib import Path


def markdown_table(report):
    lines = [
        f"Device: {report['device']}  ",
        f"Commit: {report['commit']}  ",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()) + "  ",
    ]
    if "copy_gbs" in report:
        lines.append(
            f"Device-to-device copy: {report['copy_gbs']:.0f} GB/s (read + write); GB/s below counts each "
            "MSDA forward input read once and the output written once  "
        )
    lines += [
        "",
        "| op | pass | case | batch | dtype | backend | ms | baseline | baseline ms | speedup | rel err | GB/s "
        "| peak MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        gbs = "" if r.get("gbs") is None else f"{r['gbs']:.0f}"
        peak = "" if r.get("peak_mb") is None else f"{r['peak_mb']:.0f}"
        lines.append(
            f"| {r['op']} | {r['pass']} | {r['case']} | {r['batch']} | {r['dtype']} | {r['backend']} | "
            f"{r['median_ms']:.4f} | {r['baseline']} | {r['baseline_ms']:.3f} | {r['speedup']:.1f}x | "
            f"{r['rel_err']:.1e} | {gbs} | {peak} |"
        )
    return "\n".join(lines) + "\n"


def write_record(record, path, markdown):
    """A benchmark's record as JSON and its `markdown(record)` beside it at `path` (suffixes replaced); returns
    the markdown."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    text = markdown(record)
    path.with_suffix(".md").write_text(text)
    return text


def image_size(text):
    """The benchmarks' --size type: "HEIGHTxWIDTH" -> (height, width); argparse's one-line usage error (exit 2)
    otherwise."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH, e.g. 320x480, got {text!r}") from None
    return height, width


def write_report(report, path):
    path = Path(path)
    write_record(report, path, markdown_table)
    return path.with_suffix(".json"), path.with_suffix(".md")


def plot_report(report, path):
    """A PNG bar chart of every row's speedup over its baseline (log scale), next to the JSON and markdown."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise RuntimeError("--plot needs matplotlib: pip install matplotlib (or mmgdino[plot])") from exc
    rows = report["results"]
    names = [f"{r['op']} {r['pass']} {r['case']} b{r['batch']} {r['dtype']} [{r['backend']}]" for r in rows]
    speedups = [r["speedup"] for r in rows]
    fig, ax = plt.subplots(figsize=(10, 0.28 * len(rows) + 1.4))
    colors = ["#2a7ab0" if s >= 1 else "#c0392b" for s in speedups]
    ax.barh(range(len(rows)), speedups, color=colors)
    ax.set_yticks(range(len(rows)), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlim(min(0.5, min(speedups) / 1.5), max(speedups) * 2.5)
    ax.axvline(1.0, color="black", linewidth=0.8)
    for i, s in enumerate(speedups):
        ax.text(s, i, f" {s:.1f}x", va="center", fontsize=7)
    ax.set_xlabel("speedup over the baseline (transformers' PyTorch code), log scale")
    ax.set_title(f"mmgdino on {report['device']} (commit {report['commit']})", fontsize=9)
    fig.tight_layout()
    path = Path(path).with_suffix(".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
