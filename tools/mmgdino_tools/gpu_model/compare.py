"""Measured beside modeled: an `mmgdino bench --device cuda` report's MSDA rows next to the model of the same
kernel, pass, case and dtype on the bench's GPU, flagged where they differ by more than 30%."""

from .roofline import modeled
from .targets import DEVICE_TARGETS, TARGETS

# mmgdino bench's backend -> the traced implementation
BENCH_IMPLS = {"cuda": "mmgdino", "triton": "triton"}


def compare(model_report, bench):
    """Rows of measured (an `mmgdino bench --device cuda` report) beside modeled (a gpu_model report) for the bench's
    GPU: every MSDA case, pass, dtype and backend both have. The bench times the operator as a user calls it (the
    backward through autograd, with its buffer zeroing and casts), the model one kernel launch."""
    name = bench["device"].lower()
    target = next((t for key, t in DEVICE_TARGETS.items() if key in name), None)
    if target is None:
        raise ValueError(f"no model target for the device {bench['device']!r} (known: {', '.join(DEVICE_TARGETS)})")
    traced = {(r["impl"], r["pass"], r["case"], r["dtype"]): r for r in model_report["rows"] if "error" not in r}
    out = []
    for m in bench["results"]:
        row = traced.get((BENCH_IMPLS.get(m["backend"]), m["pass"], m["case"], m["dtype"]))
        if m["op"] != "ms_deform_attn" or m.get("batch", 1) != 1 or row is None:
            continue
        modeled_ms = modeled(row, [target])[target]["modeled_us"] / 1e3
        ratio = m["median_ms"] / modeled_ms
        out.append({"backend": m["backend"], "pass": m["pass"], "case": m["case"], "dtype": m["dtype"],
                    "measured_ms": m["median_ms"], "modeled_ms": modeled_ms, "measured_over_modeled": ratio,
                    "within_30_percent": abs(ratio - 1) <= 0.3})  # fmt: skip
    return target, out


def compare_markdown(target, rows, bench):
    lines = [f"# Modeled vs measured on {bench['device']} (target {TARGETS[target]['name']})", "",
             f"Measured: `mmgdino bench` at commit {bench.get('commit')}; modeled: mmgdino_tools.gpu_model. A model "
             "that misses by more than 30% gets fixed or says so.", "",
             "| backend | pass | case | dtype | measured ms | modeled ms | measured / modeled |",
             "|---|---|---|---|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        flag = "" if r["within_30_percent"] else " (off by more than 30%)"
        lines.append(f"| {r['backend']} | {r['pass']} | {r['case']} | {r['dtype']} | {r['measured_ms']:.4f} | "
                     f"{r['modeled_ms']:.4f} | {r['measured_over_modeled']:.2f}{flag} |")  # fmt: skip
    return "\n".join(lines) + "\n"
