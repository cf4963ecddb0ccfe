"""The exported model in ONNX Runtime and OpenVINO against transformers' own exporter (transformers.exporters.
OnnxExporter), side by side in one process: export time, run time (median after a warm-up) and agreement with
each model's PyTorch outputs on a plain and a padded input. `mmgdino bench --onnx` and
benchmarks/onnx_export.py run it.

The same report is the CPU peer table: what a CPU user would run instead of mmgdino (transformers' model in
ONNX Runtime and in OpenVINO, through transformers' OnnxExporter and its OpenVINOExporter, at f32 and at
OpenVINO's own default precision, which is bf16 on CPUs that have it) next to PyTorch eager: transformers
float32, mmgdino float32, and mmgdino bfloat16 where the CPU has native bf16, with bfloat16's agreement with
float32 (`topk_agreement`) for mmgdino and for transformers' own bf16.

The model is MM Grounding DINO tiny (Swin-T, BERT-base) with random weights and the prompt "a cat. a remote
control.".
"""

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ..environment import describe_device, git_commit, versions
from ..export import export_graph
from .cases import tiny_model_and_inputs


def rel_err(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def agreement(outputs, reference, tol=1e-3):
    """Query by query and as a set. With random weights many proposals tie exactly (padded pixels all score the
    head's bias), and which tied proposals top-k keeps is the runtime's choice, so queries are also matched as a
    set: a reference query is matched by an output query with the same box (within tol) and the same best token.
    Returns {"order": (logits, boxes rel err), "matched": fraction, "matched_err": rel err over matched pairs}."""
    logits, boxes = (np.asarray(x, dtype=np.float64) for x in outputs)
    ref_logits, ref_boxes = (np.asarray(x, dtype=np.float64) for x in reference)
    finite = np.isfinite(ref_logits)
    order = (rel_err(logits[finite], ref_logits[finite]), rel_err(boxes, ref_boxes))
    pairs_out, pairs_ref, matched, total = [], [], 0, 0
    for b in range(ref_boxes.shape[0]):
        distance = np.abs(boxes[b][:, None, :] - ref_boxes[b][None, :, :]).max(-1)  # (out, ref)
        nearest = distance.argmin(0)
        for r, o in enumerate(nearest):
            total += 1
            same_token = np.nanargmax(np.where(finite[b, r], logits[b, o], -np.inf)) == np.nanargmax(
                np.where(finite[b, r], ref_logits[b, r], -np.inf))  # fmt: skip
            if distance[o, r] < tol and same_token:
                matched += 1
                pairs_out.append(np.concatenate([logits[b, o][finite[b, r]], boxes[b, o]]))
                pairs_ref.append(np.concatenate([ref_logits[b, r][finite[b, r]], ref_boxes[b, r]]))
    matched_err = rel_err(np.concatenate(pairs_out), np.concatenate(pairs_ref)) if pairs_out else None
    return {"order": order, "matched": matched / total, "matched_err": matched_err}


def box_iou(a, b):
    """IoU of (N, 4) and (M, 4) (cx, cy, w, h) boxes, (N, M)."""

    def corners(x):
        return np.concatenate([x[:, :2] - x[:, 2:] / 2, x[:, :2] + x[:, 2:] / 2], 1)

    a, b = corners(np.asarray(a, dtype=np.float64)), corners(np.asarray(b, dtype=np.float64))
    low, high = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(high - low, 0, None).prod(-1)
    area = lambda x: (x[:, 2:] - x[:, :2]).prod(-1)  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-12)


def topk_agreement(outputs, reference, k=100, iou=0.9):
    """The fraction of the reference's k best queries (by best phrase logit) that the outputs also detect: some
    output query with IoU >= iou and the same best token (the issue's measure of bf16 against float32)."""
    logits, boxes = (np.asarray(x, dtype=np.float64) for x in outputs)
    ref_logits, ref_boxes = (np.asarray(x, dtype=np.float64) for x in reference)
    found = total = 0
    for b in range(ref_boxes.shape[0]):
        best = ref_logits[b].max(-1)
        top = np.argsort(-best)[:k]
        overlaps = box_iou(ref_boxes[b][top], boxes[b])  # (k, out)
        tokens_ref, tokens_out = ref_logits[b][top].argmax(-1), logits[b].argmax(-1)
        same = (overlaps >= iou) & (tokens_ref[:, None] == tokens_out[None, :])
        found += int(same.any(1).sum())
        total += len(top)
    return found / total


def cpu_has_native_bf16():
    return bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())


def median_seconds(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def runners(path, threads):
    """{runtime: fn(feed) -> [logits, boxes]} for ONNX Runtime and OpenVINO (f32 and its default precision)."""
    found = {}
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    found["onnxruntime"] = (session, lambda feed, s=session: s.run(None, feed), names)
    try:
        import openvino as ov
    except ImportError:
        return found
    core = ov.Core()
    model = core.read_model(str(path))
    for label, config in (("openvino f32", {"INFERENCE_PRECISION_HINT": "f32"}), ("openvino default", {})):
        compiled = core.compile_model(model, "CPU", {**config, "INFERENCE_NUM_THREADS": threads})
        found[label] = (compiled, lambda feed, c=compiled: [c(feed)[o] for o in c.outputs], None)
    return found


def feed_for(session_inputs, inputs):
    """Our inputs under the names a graph uses (transformers' exporter may prefix them, e.g. input.input_ids)."""
    feed = {}
    for name in session_inputs:
        key = name.split(".")[-1]
        feed[name] = inputs[key].numpy()
    return feed


def _one_line(exc):
    return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"


def _named(outputs, names):
    """(logits, pred_boxes) among a runtime's outputs, by name (an exporter may add the other output fields)."""
    by_name = dict(zip(names, outputs))
    logits = next(v for k, v in by_name.items() if k.split(".")[-1] == "logits")
    boxes = next(v for k, v in by_name.items() if k.split(".")[-1] == "pred_boxes")
    return [logits, boxes]


def openvino_exporter_rows(hf, feeds, reference, threads, repeats, log):
    """transformers' own OpenVINOExporter (no ONNX file in between), compiled at f32 and at OpenVINO's default
    precision: rows like compare()'s, model "transformers (OpenVINOExporter)"; [] without openvino."""
    try:
        import openvino as ov
        from transformers.exporters import OpenVINOConfig, OpenVINOExporter
    except ImportError:
        return []
    model = "transformers (OpenVINOExporter)"
    log("exporting transformers with its OpenVINOExporter ...")
    try:
        began = time.perf_counter()
        exported = OpenVINOExporter().export(hf, dict(feeds["plain"]), config=OpenVINOConfig(dynamic=False))
        seconds = time.perf_counter() - began
        program = exported.program
    except Exception as exc:  # the peer's failure is a result, recorded in one line
        return [{"model": model, "error": _one_line(exc)}]
    rows = []
    core = ov.Core()
    for label, config in (("openvino f32", {"INFERENCE_PRECISION_HINT": "f32"}), ("openvino default", {})):
        try:
            compiled = core.compile_model(program, "CPU", {**config, "INFERENCE_NUM_THREADS": threads})
            names = [i.get_any_name() for i in compiled.inputs]
            out_names = [o.get_any_name() for o in compiled.outputs]

            def run(feed, c=compiled, out_names=out_names):
                result = c(feed)
                return _named([result[o] for o in c.outputs], out_names)

            row = {"model": model, "runtime": label, "export_s": round(seconds, 1), "nodes": len(program.get_ops()),
                   "inputs": names}  # fmt: skip
            for case, feed in feeds.items():
                outputs = run(feed_for(names, feed))
                row[case] = agreement(outputs, reference[("transformers", case)])
                first = reference.setdefault(("first runtime", case), outputs)
                row[f"{case}_vs_first_runtime"] = agreement(outputs, first)
            row["run_s"] = round(median_seconds(lambda: run(feed_for(names, feeds["plain"])), repeats), 3)
        except Exception as exc:
            row = {"model": model, "error": f"{label}: {_one_line(exc)}"}
        rows.append(row)
        log(f"{model} in {label}: {row.get('run_s', row.get('error'))}")
    return rows


def compare(height=320, width=480, repeats=3, optimize=True, log=None):
    """The report: {"size", "threads", "device", "commit", "versions", "torch_eager_s", "rows"}."""
    from .. import MMGroundingDinoForObjectDetection

    log = log or (lambda message: None)
    threads = torch.get_num_threads()
    hf, inputs = tiny_model_and_inputs(torch.device("cpu"), height=height, width=width)
    padded = dict(inputs)
    padded["pixel_mask"] = inputs["pixel_mask"].clone()
    padded["pixel_mask"][:, :, width * 3 // 4 :] = 0
    padded["pixel_values"] = inputs["pixel_values"].masked_fill(padded["pixel_mask"][:, None] == 0, 0.0)
    ours_torch = MMGroundingDinoForObjectDetection.from_transformers(hf)
    reference = {}
    with torch.no_grad():
        for case, feed in (("plain", inputs), ("padded", padded)):
            theirs_out, ours_out = hf(**feed), ours_torch(**feed)
            reference[("transformers", case)] = (theirs_out.logits.numpy(), theirs_out.pred_boxes.numpy())
            reference[("mmgdino", case)] = (ours_out.logits.numpy(), ours_out.pred_boxes.numpy())

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ours_path = Path(tmp) / "mmgdino.onnx"
        log("exporting mmgdino ...")
        seconds, nodes = export_graph(ours_torch, ours_path, (height, width), inputs["input_ids"][0].tolist(),
                                      optimize=optimize)  # fmt: skip
        exports = {"mmgdino": (ours_path, seconds, nodes)}
        log("exporting transformers ...")
        try:
            from transformers.exporters import OnnxConfig, OnnxExporter

            began = time.perf_counter()
            exported = OnnxExporter().export(hf, dict(inputs), config=OnnxConfig(dynamic=False))
            theirs_seconds = time.perf_counter() - began
            exported.save_pretrained(Path(tmp) / "transformers")
            theirs_path = next((Path(tmp) / "transformers").glob("*.onnx"))
            import onnx

            theirs_nodes = len(onnx.load(str(theirs_path), load_external_data=False).graph.node)
            exports["transformers"] = (theirs_path, theirs_seconds, theirs_nodes)
        except Exception as exc:  # the peer's failure is a result, recorded in one line
            rows.append({"model": "transformers", "error": _one_line(exc)})
        for model, (path, seconds, nodes) in exports.items():
            for runtime, (handle, run, _) in runners(path, threads).items():
                names = [i.get_any_name() for i in handle.inputs] if runtime.startswith("openvino") else [
                    i.name for i in handle.get_inputs()]  # fmt: skip
                row = {"model": model, "runtime": runtime, "export_s": round(seconds, 1), "nodes": nodes,
                       "inputs": names}  # fmt: skip
                for case, feed in (("plain", inputs), ("padded", padded)):
                    outputs = run(feed_for(names, feed))[:2]
                    row[case] = agreement(outputs, reference[(model, case)])
                    # Runtimes against each other: ties in the top-k break the same way in every ONNX runtime.
                    first = reference.setdefault(("first runtime", case), outputs)
                    row[f"{case}_vs_first_runtime"] = agreement(outputs, first)
                row["run_s"] = round(median_seconds(lambda: run(feed_for(names, inputs)), repeats), 3)
                rows.append(row)
                log(f"{model} in {runtime}: {row['run_s']} s")
        feeds = {"plain": inputs, "padded": padded}
        rows += openvino_exporter_rows(hf, feeds, reference, threads, repeats, log)
    with torch.no_grad():
        torch_s = {"transformers": median_seconds(lambda: hf(**inputs), repeats),
                   "mmgdino": median_seconds(lambda: ours_torch(**inputs), repeats)}  # fmt: skip
    bf16_agreement = {}
    if cpu_has_native_bf16():
        log("PyTorch eager in bfloat16 ...")
        cast = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in inputs.items()}
        ours_torch = ours_torch.to(torch.bfloat16)
        with torch.no_grad():
            torch_s["mmgdino bfloat16"] = median_seconds(lambda: ours_torch(**cast), repeats)
            out = ours_torch(**cast)
            bf16_agreement["mmgdino"] = topk_agreement((out.logits.float(), out.pred_boxes.float()),
                                                       reference[("mmgdino", "plain")])  # fmt: skip
            out = hf.to(torch.bfloat16)(**cast)  # transformers' own bf16, for the agreement figure only
            bf16_agreement["transformers"] = topk_agreement((out.logits.float(), out.pred_boxes.float()),
                                                            reference[("transformers", "plain")])  # fmt: skip
    report = {"size": [height, width], "threads": threads, "device": describe_device(torch.device("cpu")),
              "commit": git_commit(), "versions": versions(), "torch_eager_s": torch_s, "rows": rows,
              "bf16_top100_agreement": bf16_agreement}  # fmt: skip
    try:
        import onnxruntime
        import openvino

        report["versions"].update(onnxruntime=onnxruntime.__version__, openvino=openvino.__version__)
    except ImportError:
        pass
    return report


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
