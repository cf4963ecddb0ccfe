"""The CPU kernels' builds side by side: every build this CPU runs (baseline, avx2, avx512, avx512_bf16), each in
its own process (MMGDINO_CPU_ISA), timing the fast paths in float32, bfloat16 and float16 on the tiny model's cases at
800x1333 (encoder: 22,223 queries; decoder: 900; 8 heads x 32 channels, 4 levels x 4 points; 16 tokens).

    python -m mmgdino.bench.cpu_isa --out benchmarks/results/cpu-isa

Writes <out>.json, <out>.md and <out>.png (device, commit, versions; ms per call, median).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from .. import _extension, ops
from ..environment import describe_device, git_commit, versions
from .cases import HEAD_DIM, HEADS, contrastive_inputs, msda_inputs
from .timing import median_ms as timed

ISAS = ("baseline", "avx2", "avx512", "avx512_bf16")
DTYPES = ("float32", "bfloat16", "float16")


def measure(repeats):
    """In the child: {"isa", "ms": {"<op> <dtype>": median ms}}."""
    cpu = torch.device("cpu")

    def median_ms(fn, n):
        return timed(fn, cpu, n)

    ms = {}
    for name in DTYPES:
        dtype = getattr(torch, name)
        for case in ("encoder", "decoder"):
            value, shapes, starts, loc, attn = msda_inputs(case, 1, dtype, "cpu")
            ms[f"msda forward {case} {name}"] = median_ms(
                lambda: ops.ms_deform_attn(value, shapes, starts, loc, attn, backend="cpu"), repeats
            )
            grad = torch.randn(1, loc.shape[1], HEADS * HEAD_DIM).to(dtype)
            ms[f"msda backward {case} {name}"] = median_ms(
                lambda: torch.ops.mmgdino.ms_deform_attn_backward(grad, value, shapes, starts, loc, attn),
                max(3, repeats // 2),
            )
        vision, text, mask = contrastive_inputs("encoder", 1, dtype, "cpu")
        ms[f"contrastive_max encoder {name}"] = median_ms(
            lambda: ops.contrastive_max(vision, text, mask, backend="cpu"), repeats
        )
        vision, text, mask = contrastive_inputs("decoder", 1, dtype, "cpu")
        ms[f"contrastive_logits decoder {name}"] = median_ms(
            lambda: ops.contrastive_logits(vision, text, mask, backend="cpu"), repeats
        )
    return {"isa": _extension.cpu_isa, "ms": ms}


def markdown(report):
    isas = [r["isa"] for r in report["builds"]]
    lines = [
        "# CPU kernel builds side by side (measured)",
        "",
        f"Device: {report['device']}, {report['threads']} threads. Commit {report['commit']}. Versions: "
        + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
        f"ms per call: in each of {report['rounds']} rounds that interleave the builds, the median of "
        f"{report['repeats']} calls (backward: {max(3, report['repeats'] // 2)}) after a warm-up; then the median "
        "over rounds. Each build in its own process (MMGDINO_CPU_ISA), batch 1. The last column: the chosen build "
        "against the portable one. This machine is shared: single runs vary by 10-50%.",
        "",
        "| kernel | " + " | ".join(isas) + " | speedup |",
        "|---|" + "---:|" * (len(isas) + 1),
    ]
    for key in report["builds"][0]["ms"]:
        times = [r["ms"][key] for r in report["builds"]]
        lines.append(f"| {key} | " + " | ".join(f"{t:.2f}" for t in times) + f" | {times[0] / times[-1]:.1f}x |")
    return "\n".join(lines) + "\n"


def plot(report, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(report["builds"][0]["ms"])
    fig, ax = plt.subplots(figsize=(10, 0.32 * len(keys) * len(report["builds"]) / 2 + 1.5))
    height = 0.8 / len(report["builds"])
    for i, build in enumerate(report["builds"]):
        ax.barh([k + i * height for k in range(len(keys))], [build["ms"][k] for k in keys], height, label=build["isa"])
    ax.set_yticks([k + height for k in range(len(keys))], keys, fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("ms per call (log scale; lower is better), measured")
    ax.set_title(f"CPU kernel builds, {report['threads']} threads, commit {report['commit']}", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(prog="python -m mmgdino.bench.cpu_isa", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="cpu-isa")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds over the builds")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.repeats)))
        return
    # Rounds interleave the builds (baseline, avx2, avx512, baseline, ...) so that a shared machine's drifting
    # load falls on all of them alike; each kernel's time is the median over rounds of its per-round median.
    runs = {}
    for round_ in range(args.rounds):
        for isa in ISAS:
            env = {**os.environ, "MMGDINO_CPU_ISA": isa}
            # cwd elsewhere: `-m` puts the working directory on sys.path, where a checkout's mmgdino/ would shadow
            # the installed package.
            child = [sys.executable, "-m", "mmgdino.bench.cpu_isa", "--child", "--repeats", str(args.repeats)]
            done = subprocess.run(child, env=env, capture_output=True, text=True, check=True,
                                  cwd=tempfile.gettempdir())  # fmt: skip
            result = json.loads(done.stdout.strip().splitlines()[-1])
            if result["isa"] != isa:
                print(f"{isa}: this CPU cannot run it (it gave {result['isa']}); skipped", file=sys.stderr)
                continue
            runs.setdefault(isa, []).append(result["ms"])
            print(f"round {round_ + 1}: {isa} done", file=sys.stderr)
    builds = [{"isa": isa, "ms": {k: statistics.median(r[k] for r in rounds) for k in rounds[0]},
               "rounds": rounds} for isa, rounds in runs.items()]  # fmt: skip
    report = {"device": describe_device(torch.device("cpu")), "threads": torch.get_num_threads(),
              "commit": git_commit(), "versions": versions(), "repeats": args.repeats, "rounds": args.rounds,
              "builds": builds}  # fmt: skip
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    plot(report, out.with_suffix(".png"))
    print(markdown(report))


if __name__ == "__main__":
    main()
