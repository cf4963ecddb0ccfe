"""The report writers: the traced rows' counters and modeled times (markdown beside the JSON), with the
calibration's tables when the report holds calibration cases."""

import json

from .calibration import CALIBRATION
from .targets import TARGETS


def markdown(report):
    lines = [
        "# CUDA MSDA kernels: memory traffic counted in the emulator, and a memory-bound model",
        "",
        "**Counts are exact for the emulated kernels; every time below is MODELED, NOT MEASURED.** How far the "
        "model can be trusted is its calibration against published pairs (benchmarks/results/"
        "gpu-model-calibration.md). It is a memory roofline: instruction issue and latency are not modeled, so it "
        "is a lower bound for a kernel that is not memory-bound. Commit "
        + report["commit"]
        + "."
        + (" " + report["note"] + "." if report.get("note") else ""),
        "",
        "| kernel | pass | case | dtype | requests | sectors/request (value loads) | L1 hit | distinct MB | atomic "
        "lanes per address | emulated s |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    rows = [row for row in report["rows"] if "error" not in row]
    for row in rows:
        s = row["summary"]
        lines.append(
            f"| {row['impl']} | {row['pass']} | {row['case']} | {row['dtype']} | {s['requests']:,} | "
            f"{s['sectors_per_request']:.1f} ({s['value_sectors_per_request']:.1f}) | {s['l1_hit_fraction']:.0%} | "
            f"{s['distinct_mb']:.1f} | {s['atomic_lanes_per_address']:.2f} | {row['counters']['emulated_seconds']} |"
        )
    targets = [t for t in TARGETS if any(t in row["model"] for row in rows)]
    lines += [
        "",
        "Modeled time per launch (µs) and its bound; floor: each distinct sector moved once at DRAM bandwidth.",
        "",
        "| kernel | pass | case | dtype | "
        + " | ".join(f"{TARGETS[t]['name']} modeled (bound) | floor | x floor" for t in targets)
        + " |",
        "|---|---|---|---|" + "---:|---:|---:|" * len(targets),
    ]
    for row in rows:
        cells = []
        for target in targets:
            m = row["model"].get(target)
            cells.append(
                f"{m['modeled_us']:.1f} ({m['bound']}) | {m['floor_us']:.1f} | {m['modeled_us'] / m['floor_us']:.2f}"
                if m
                else "- | - | -"
            )
        lines.append(f"| {row['impl']} | {row['pass']} | {row['case']} | {row['dtype']} | " + " | ".join(cells) + " |")
    single = [f"{r['impl']} {r['pass']} {r['case']} {r['dtype']}" for r in rows if r["impl"] != "triton"
              and "counters_by_arch" not in r and len({TARGETS[t]["arch"] for t in r["model"]}) > 1]  # fmt: skip
    lines += ["", "Each target is modeled on the CUDA build of its own architecture (__CUDA_ARCH__ 900 for H100, 800 "
              "for A100, where float atomics are scalar: four requests where sm_90 issues one 16-byte atomic)"
              + (f"; traced at sm_90 only, for every target: {', '.join(single)}." if single else ".")
              + (" Triton rows are counted once for every target, atomics included (as 16-byte vectors where "
                 "contiguous, an approximation: optimistic for A100)." if any(r["impl"] == "triton" for r in rows)
                 else "")]  # fmt: skip
    lines += [f"\n{row['impl']} {row['pass']} {row['case']} {row['dtype']}: {row['error']}" for row in report["rows"]
              if "error" in row]  # fmt: skip
    if any(row["case"] in CALIBRATION for row in report["rows"]):
        lines += calibration_markdown(report)
    lines += ["", "Targets (assumptions marked in mmgdino_tools/gpu_model/targets.py): " + "; ".join(
        f"{t['name']}: {t['sms']} SMs at {t['clock_ghz']} GHz, DRAM {t['dram_tbs']} TB/s, L2 {t['l2_tbs']:.1f} TB/s"
        for t in TARGETS.values())]  # fmt: skip
    return "\n".join(lines) + "\n"


def calibration_markdown(report):
    lines = ["", "## Calibration against published measurements", ""]
    for result in report.get("calibration", []):
        lines += [f"Case `{result['case']}` on {TARGETS[result['target']]['name']} ({result['source']}):", "",
                  "| implementation | dtype | published ms | modeled ms (bound) | modeled / published |",
                  "|---|---|---:|---:|---:|"]  # fmt: skip
        for e in result["entries"]:
            modeled = f"{e['modeled_ms']:.3f} ({e['bound']})" if e["modeled_ms"] else "not run (no peer given)"
            ratio = f"{e['modeled_ms'] / e['published_ms']:.2f}" if e["modeled_ms"] else "-"
            lines.append(f"| {e['impl']} | {e['dtype']} | {e['published_ms']} | {modeled} | {ratio} |")
        note = CALIBRATION[result["case"]].get("note")
        lines += ["", note] if note else []
        r = result.get("ratio")
        order = " (but in the other order: the model ranks the two the wrong way round)" if r and (
            (r["published"] - 1) * (r["modeled"] - 1) < 0) else ""  # fmt: skip
        lines += ["", f"Ratio of the two: published {r['published']:.2f}, modeled {r['modeled']:.2f}: "
                  + ("within" if r["within_30_percent"] else "NOT within") + f" 30%{order}." if r else
                  "Ratio of the two: not checked (both implementations must be modeled); the calibration rule is "
                  "not met yet.", ""]  # fmt: skip
    return lines


def write(report, out):
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
