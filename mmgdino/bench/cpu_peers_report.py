"""What `python -m mmgdino.bench.cpu_peers` writes: the table, the issue's goals met or not, and a chart."""

from ..precision import AUTO

# The goals (issue 31), each a ratio against a peer's best: (name, ours, peer, at least).
GOALS = (
    ("best precision >= 6x transformers eager float32", "best", "transformers eager float32", 6.0),
    ("best precision >= 2x transformers compiled at its best", "best", "transformers compiled", 2.0),
    ("best precision >= 1.5x OpenVINO at its best precision", "best", "openvino", 1.5),
    ("float32 (exact) >= 4x transformers eager float32", "float32", "transformers eager float32", 4.0),
)


def _ok(rows):
    return [r for r in rows if "s" in r]


def best_of(record, which):
    """The fastest row of a kind: "best" (ours at this CPU's automatic precision or in int8, the two a user picks
    for speed, eager or compiled), "float32" (ours exact), "transformers eager float32", "transformers compiled"
    (its best) or "openvino" (its best)."""
    rows = _ok(record["rows"])
    if which == "best":
        auto = AUTO[record["cpu"]["level"]][0]
        rows = [r for r in rows if r["family"] == "mmgdino" and r["precision"].split("+")[0] in (auto, "int8")]
    elif which == "float32":
        rows = [r for r in rows if r["family"] == "mmgdino" and r["precision"] == "float32"]
    elif which == "openvino":
        rows = [r for r in rows if r["family"] == "openvino"]
    elif which == "transformers compiled":
        rows = [r for r in rows if r["family"] == "transformers" and r["mode"] == "compiled"]
    else:
        rows = [r for r in rows if r["name"] == which]
    return min(rows, key=lambda r: r["s"]) if rows else None


def goals(record):
    """[(goal, ours row, peer row, ratio, met)] for the goals whose rows ran."""
    found = []
    for name, ours_kind, peer_kind, target in GOALS:
        ours, peer = best_of(record, ours_kind), best_of(record, peer_kind)
        if ours is None or peer is None:
            continue
        ratio = peer["s"] / ours["s"]
        met = ratio >= target
        if peer_kind == "openvino":  # and at agreement no worse than OpenVINO's at that precision
            met = met and ours["agreement"] >= peer["agreement"]
        found.append((name, ours, peer, ratio, met))
    return found


def title(record):
    cpu = record["cpu"]
    capped = " with its ISA capped to AVX2 (emulating an AVX2-only CPU)" if cpu["caps"] else ""
    return f"{cpu['model']}{capped}"


def markdown(record):
    cpu = record["cpu"]
    baseline = best_of(record, "transformers eager float32")
    height, width = record["size"]
    lines = [
        f"# CPU peers at {height}x{width}: {title(record)} (measured)",
        "",
        f"CPU: {cpu['model']}; flags {', '.join(cpu['flags'])}; as the layers see it: {cpu['described']}; "
        f"{cpu['threads']} threads; switches {cpu['caps'] or 'none'}; load average "
        f"{cpu['load_average']} before, {cpu.get('load_average_after')} after. Commit {record['commit']}. "
        "Versions: " + ", ".join(f"{k} {v}" for k, v in record["versions"].items() if v) + ".",
        f"MM Grounding DINO tiny, random weights, batch 1, one process, median of {record['repeats']} after a "
        "warm-up. One-time: compile, export or quantization (the first call included). Agreement: share of "
        "float32's 100 best queries found with IoU >= 0.9 and the same best token (ours against mmgdino float32 "
        "eager, the others against transformers float32 eager).",
        "",
        "| implementation | precision | mode | s per image | vs transformers eager float32 | one-time s | agreement |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in record["rows"]:
        if "error" in r:
            lines.append(f"| {r['name']} | {r.get('precision', '')} | | failed: {r['error']} | | | |")
            continue
        speed = f"{baseline['s'] / r['s']:.2f}x" if baseline else ""
        lines.append(f"| {r['name']} | {r['precision']} | {r['mode']} | {r['s']:.3f} | {speed} | {r['setup_s']} | "
                     f"{r['agreement']:.0%} |")  # fmt: skip
    lines += ["", "Goals (issue 31):", ""]
    for name, ours, peer, ratio, met in goals(record):
        lines.append(f"- {name}: {'met' if met else 'NOT met'}: {ours['name']} {ours['s']:.3f} s vs "
                     f"{peer['name']} {peer['s']:.3f} s = {ratio:.2f}x (agreement {ours['agreement']:.0%} vs "
                     f"{peer['agreement']:.0%})")  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(record, path):
    """A bar chart of seconds per image (log scale), ours green."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _ok(record["rows"])
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(rows) + 1.4))
    ax.barh(range(len(rows)), [r["s"] for r in rows],
            color=["tab:green" if r["family"] == "mmgdino" else "tab:gray" for r in rows])  # fmt: skip
    ax.set_yticks(range(len(rows)), [r["name"] for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    for y, r in enumerate(rows):
        ax.text(r["s"], y, f" {r['s']:.2f} s, {r['agreement']:.0%}", va="center", fontsize=7)
    ax.set_xlabel("seconds per image (log scale, lower is better), measured; agreement with float32 after the time")
    ax.set_title(f"MM Grounding DINO tiny {'x'.join(map(str, record['size']))}: {title(record)}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
