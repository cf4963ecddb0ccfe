"""The exported model in ONNX Runtime and OpenVINO against transformers' own exporter (transformers.exporters.
OnnxExporter), side by side in one process: export time, run time (median after a warm-up) and agreement with
each model's PyTorch outputs on a plain and a padded input. `mmgdino bench --onnx` runs it, and so does

    python -m mmgdino.bench.onnx --size 320x480 --out benchmarks/results/onnx-cpu [--no-optimize] [--plot]

which writes <out>.json and <out>.md (device, commit, versions, export and run times, agreement).

The same report is the CPU peer table: what a CPU user would run instead of mmgdino (transformers' model in
ONNX Runtime and in OpenVINO, through transformers' OnnxExporter and its OpenVINOExporter, at f32 and at
OpenVINO's own default precision, which is bf16 on CPUs that have it) next to PyTorch eager: transformers
float32, mmgdino float32, and mmgdino bfloat16 where the CPU has native bf16, with bfloat16's agreement with
float32 (`topk_agreement`) for mmgdino and for transformers' own bf16.

The model is MM Grounding DINO tiny (Swin-T, BERT-base) with random weights and the prompt "a cat. a remote
control.".
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from ..environment import describe_device, git_commit, versions
from ..export import export_graph
from .agreement import agreement, topk_agreement
from .cases import has_native_bf16, tiny_model_and_inputs
from .onnx_report import markdown, plot_peers, write
from .report import image_size
from .timing import median_ms

CPU = torch.device("cpu")


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


def logits_and_boxes(outputs, names):
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
                return logits_and_boxes([result[o] for o in c.outputs], out_names)

            row = {"model": model, "runtime": label, "export_s": round(seconds, 1), "nodes": len(program.get_ops()),
                   "inputs": names}  # fmt: skip
            for case, feed in feeds.items():
                outputs = run(feed_for(names, feed))
                row[case] = agreement(outputs, reference[("transformers", case)])
                first = reference.setdefault(("first runtime", case), outputs)
                row[f"{case}_vs_first_runtime"] = agreement(outputs, first)
            row["run_s"] = round(median_ms(lambda: run(feed_for(names, feeds["plain"])), CPU, repeats) / 1e3, 3)
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
    hf, inputs = tiny_model_and_inputs(CPU, height=height, width=width)
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
                row["run_s"] = round(median_ms(lambda: run(feed_for(names, inputs)), CPU, repeats) / 1e3, 3)
                rows.append(row)
                log(f"{model} in {runtime}: {row['run_s']} s")
        feeds = {"plain": inputs, "padded": padded}
        rows += openvino_exporter_rows(hf, feeds, reference, threads, repeats, log)
    with torch.no_grad():
        torch_s = {"transformers": median_ms(lambda: hf(**inputs), CPU, repeats) / 1e3,
                   "mmgdino": median_ms(lambda: ours_torch(**inputs), CPU, repeats) / 1e3}  # fmt: skip
    bf16_agreement = {}
    if has_native_bf16(CPU):
        log("PyTorch eager in bfloat16 ...")
        cast = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in inputs.items()}
        ours_torch = ours_torch.to(torch.bfloat16)
        with torch.no_grad():
            torch_s["mmgdino bfloat16"] = median_ms(lambda: ours_torch(**cast), CPU, repeats) / 1e3
            out = ours_torch(**cast)
            bf16_agreement["mmgdino"] = topk_agreement((out.logits.float(), out.pred_boxes.float()),
                                                       reference[("mmgdino", "plain")])  # fmt: skip
            out = hf.to(torch.bfloat16)(**cast)  # transformers' own bf16, for the agreement figure only
            bf16_agreement["transformers"] = topk_agreement((out.logits.float(), out.pred_boxes.float()),
                                                            reference[("transformers", "plain")])  # fmt: skip
    report = {"size": [height, width], "threads": threads, "device": describe_device(CPU),
              "commit": git_commit(), "versions": versions(), "torch_eager_s": torch_s, "rows": rows,
              "bf16_top100_agreement": bf16_agreement}  # fmt: skip
    try:
        import onnxruntime
        import openvino

        report["versions"].update(onnxruntime=onnxruntime.__version__, openvino=openvino.__version__)
    except ImportError:
        pass
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m mmgdino.bench.onnx", description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=image_size, default=(320, 480), help="HEIGHTxWIDTH")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="onnx-export")
    parser.add_argument("--no-optimize", action="store_true", help="skip torch.onnx's graph optimization for ours")
    parser.add_argument("--plot", action="store_true", help="also the peer chart, <out>.png (needs matplotlib)")
    args = parser.parse_args(argv)
    report = compare(*args.size, args.repeats, optimize=not args.no_optimize,
                     log=lambda m: print(m, file=sys.stderr, flush=True))  # fmt: skip
    print(markdown(report))
    print("wrote {} and {}".format(*write(report, args.out)))
    if args.plot:
        print(f"wrote {plot_peers([report], Path(args.out).with_suffix('.png'))}")


if __name__ == "__main__":
    main()
