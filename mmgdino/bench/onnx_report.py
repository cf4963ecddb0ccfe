"""The ONNX report's writers: the markdown table (with the CPU peer summary), the peer chart, and the files."""

import json
from pathlib import Path


def markdown(report):
    height, width = report["size"]
    threads = report["threads"]
    rows = report["rows"]
    lines = [
        f"# ONNX export at {height}x{width}: mmgdino vs transformers' OnnxExporter (measured)",
        "",
        f"Device: {report['device']}, {threads} threads. Commit {report['commit']}. Versions: "
        + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
        "PyTorch eager for reference: " + ", ".join(f"{k} {v:.3f} s" for k, v in report["torch_eager_s"].items()) + ".",
        "Agreement with the same model in PyTorch: the fraction of its queries the runtime's output matches (same box "
        "within 1e-3, same best token) and the rel err of logits and boxes over those; padded: pixel_mask zeros on "
        "the right quarter. With random weights every padded pixel's proposal scores exactly the same (its feature "
        "is a constant), so they tie into the top-k and PyTorch's topk and ONNX's TopK keep different ones; the "
        "decoder's query self-attention then moves every query a little. The last column compares each runtime "
        "with the first one (mmgdino in ONNX Runtime) on the padded input instead. (The test suite checks padded "
        "batches against PyTorch exactly on a model where no ties reach the top-k.)",
        "",
    ]
    lines += peers_summary(report)
    lines += [
        "| model | runtime | export s | nodes | run s (median) | plain: matched, rel err | padded: matched, rel err "
        "| padded vs mmgdino in ONNX Runtime | input names |",
        "|---|---|---:|---:|---:|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | - | failed: {r['error']} | | | | | | |")
            continue
        cells = [f"{r[c]['matched']:.0%}, {r[c]['matched_err']:.1e}" if r[c]["matched_err"] is not None
                 else f"{r[c]['matched']:.0%}" for c in ("plain", "padded", "padded_vs_first_runtime")]  # fmt: skip
        lines.append(
            f"| {r['model']} | {r['runtime']} | {r['export_s']} | {r['nodes']} | {r['run_s']} | {cells[0]} | "
            f"{cells[1]} | {cells[2]} | {', '.join(r['inputs'])} |"
        )
    return "\n".join(lines) + "\n"


def peer_times(report):
    """(mmgdino's best PyTorch run as (name, s), {peer: s or "failed: <one line>"}) from a report."""
    eager = report["torch_eager_s"]
    ours_key = "mmgdino bfloat16" if "mmgdino bfloat16" in eager else "mmgdino"
    contenders = {"transformers eager float32": eager["transformers"]}
    for r in report["rows"]:
        if not r.get("model", "").startswith("transformers"):
            continue
        exporter = "OpenVINOExporter" if "OpenVINOExporter" in r["model"] else "OnnxExporter"
        if "run_s" in r:
            contenders[f"transformers' {exporter} in {r['runtime']}"] = r["run_s"]
        else:
            contenders[f"transformers' {exporter}"] = f"failed: {r['error']}"
    return (ours_key, eager[ours_key]), contenders


def peers_summary(report):
    """What a CPU user could run instead, each at its best, against mmgdino's best PyTorch run: lines for
    markdown()."""
    (ours_key, ours), contenders = peer_times(report)
    lines = [f"{ours_key} (PyTorch eager) {ours:.3f} s against each peer:", "",
             "| peer | s | mmgdino's speedup |", "|---|---:|---:|"]  # fmt: skip
    for name, seconds in contenders.items():
        if isinstance(seconds, str):
            lines.append(f"| {name} | {seconds} | |")
        else:
            lines.append(f"| {name} | {seconds:.3f} | {seconds / ours:.2f}x |")
    agreement = report.get("bf16_top100_agreement") or {}
    if agreement:
        lines += ["", "bfloat16 against float32 on the same weights and input: the fraction of float32's 100 best "
                  "queries that bfloat16 also finds (IoU >= 0.9, same best token): "
                  + ", ".join(f"{k} {v:.0%}" for k, v in agreement.items()) + "."]  # fmt: skip
    return lines + [""]


def plot_peers(reports, path):
    """A PNG bar chart (log scale) of mmgdino's PyTorch runs and every peer that ran, one group per report (each
    report is one process: compare bars within a group)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    labels, seconds, colors = [], [], []
    for index, report in enumerate(reports):
        tag = f" [run {index + 1}]" if len(reports) > 1 else ""
        (_, _), contenders = peer_times(report)
        mine = {f"mmgdino {k.removeprefix('mmgdino').strip() or 'float32'}": v
                for k, v in report["torch_eager_s"].items() if k.startswith("mmgdino")}  # fmt: skip
        for name, value in [*mine.items(), *contenders.items()]:
            if isinstance(value, str):
                continue
            labels.append(name + tag)
            seconds.append(value)
            colors.append("tab:green" if name.startswith("mmgdino") else "tab:gray")
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(labels) + 1.4))
    ax.barh(range(len(labels)), seconds, color=colors)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    for y, value in enumerate(seconds):
        ax.text(value, y, f" {value:.2f} s", va="center", fontsize=7)
    size = "x".join(map(str, reports[0].get("size", [])))
    ax.set_xlabel("seconds per image (log scale; lower is better), measured")
    ax.set_title(f"MM Grounding DINO tiny {size} on this CPU: mmgdino (green) and what a CPU user would run instead",
                 fontsize=8)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def write(report, out):
    """<out>.json and <out>.md of a compare() report; returns their paths."""
    out = Path(out)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    return out.with_suffix(".json"), out.with_suffix(".md")
