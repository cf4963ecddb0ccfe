"""`python -m mmgdino.bench.cpu_peers`: every CPU peer at its best against mmgdino's precisions and modes, in one
process, recorded with the CPU's model, ISA (as the layers see it), threads and load.

Rows: transformers eager (float32; bf16 where native), transformers under `torch.compile` (Inductor with frozen
weights, the same settings ours get), OpenVINO through transformers' `OpenVINOExporter` at f32, at its default
precision and at int8 (NNCF post-training quantization calibrated on the benchmark's input), ONNX Runtime on
mmgdino's ONNX export, and mmgdino at float32 / bfloat16 / int8, eager and compiled (`mmgdino.compiled`). Each:
seconds per image (median of `repeats` after a warm-up), its one-time cost (compile, export, quantization) and
its agreement with float32 (`topk_agreement`: the share of float32's 100 best queries found with IoU >= 0.9 and the
same best token; transformers-based rows against transformers' float32, ours against ours).

`--isa avx2` reruns the whole table in a child process with every layer capped to AVX2 (oneDNN, ATen and
Inductor's code, mmgdino's kernels, OpenVINO's CPU plugin): an emulation of an AVX2-only CPU on this one, labelled
as such.

The model is MM Grounding DINO tiny (Swin-T, BERT-base) with random weights at 800x1333 by default.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from ..environment import cpu_model_and_flags, git_commit, versions
from ..precision import cpu_features
from .cases import tiny_model_and_inputs
from .onnx import topk_agreement
from .report import image_size, write_record

AVX2_CAPS = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MMGDINO_CPU_ISA": "avx2",
             "OV_CPU_MAX_ISA": "AVX2"}  # fmt: skip


def cpu_record():
    """The CPU as lscpu names it, its ISA flags that matter here, threads, the switches in force and the load."""
    model, flags = cpu_model_and_flags()
    features = cpu_features()
    return {"model": model, "flags": flags, "level": features.level,
            "described": features.describe(), "threads": torch.get_num_threads(),
            "caps": {k: os.environ[k] for k in AVX2_CAPS if k in os.environ},
            "load_average": [round(v, 2) for v in os.getloadavg()]}  # fmt: skip


def seconds(fn, repeats):
    """(first call, median of `repeats` calls after it) in seconds."""
    began = time.perf_counter()
    fn()
    first = time.perf_counter() - began
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return first, statistics.median(times)


def _outputs(out):
    logits, boxes = out
    return logits.float().numpy(), boxes.float().numpy()


class Table:
    """Rows as they are measured, each printed on the log as it lands."""

    def __init__(self, repeats, log):
        self.rows, self.repeats, self.log, self.references = [], repeats, log, {}

    def failed(self, family, name, precision, mode, exc):
        row = {"family": family, "name": name, "precision": precision, "mode": mode,
               "error": f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"}  # fmt: skip
        self.rows.append(row)
        self.log(f"{name}: failed: {row['error']}")
        return row

    def add(self, family, name, precision, mode, run, setup_s=0.0, reference=None):
        """Times `run` (-> (logits, boxes)); agreement against `reference` (a key of self.references), or makes
        this row the reference named `family` when none is given."""
        try:
            with torch.inference_mode():
                out = _outputs(run())
                first, median = seconds(run, self.repeats)
        except Exception as exc:  # a peer's failure is a result, recorded in one line
            return self.failed(family, name, precision, mode, exc)
        if reference is None:
            self.references[family] = out
        agreement = topk_agreement(out, self.references[reference or family])
        row = {"family": family, "name": name, "precision": precision, "mode": mode, "s": round(median, 3),
               "first_s": round(first, 2), "setup_s": round(setup_s, 1), "agreement": round(agreement, 3)}  # fmt: skip
        self.rows.append(row)
        self.log(f"{name}: {median:.3f} s (setup {setup_s:.0f} s, agreement {agreement:.0%})")
        return row


def _timed_setup(make):
    began = time.perf_counter()
    made = make()
    return made, time.perf_counter() - began


def transformers_rows(table, hf, inputs, native_bf16, skip):
    def run_hf(model, feed):
        return lambda: (lambda o: (o.logits, o.pred_boxes))(model(**feed))

    table.add("transformers", "transformers eager float32", "float32", "eager", run_hf(hf, inputs))
    if "compile" not in skip and "transformers-compile" not in skip:
        from ..compiled import inductor_options

        torch._dynamo.reset()
        compiled = torch.compile(hf, options=inductor_options())
        with torch.inference_mode():
            _, setup = _timed_setup(lambda: compiled(**inputs))
        table.add("transformers", "transformers compiled float32", "float32", "compiled", run_hf(compiled, inputs),
                  setup, "transformers")  # fmt: skip
    if native_bf16:
        import copy

        hf16 = copy.deepcopy(hf).to(torch.bfloat16)
        cast = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in inputs.items()}
        table.add("transformers", "transformers eager bfloat16", "bfloat16", "eager", run_hf(hf16, cast),
                  reference="transformers")  # fmt: skip


def openvino_rows(table, hf, inputs, threads, skip):
    try:
        import openvino as ov
        from transformers.exporters import OpenVINOConfig, OpenVINOExporter
    except ImportError as exc:
        table.rows.append({"family": "openvino", "name": "OpenVINO", "error": f"not installed: {exc}"})
        return
    from .onnx import feed_for

    exported, export_s = _timed_setup(
        lambda: OpenVINOExporter().export(hf, dict(inputs), config=OpenVINOConfig(dynamic=False)).program
    )
    core = ov.Core()
    table.log(f"OpenVINO CPU capabilities: {core.get_property('CPU', 'OPTIMIZATION_CAPABILITIES')}")
    names = [i.get_any_name() for i in exported.inputs]
    out_names = [o.get_any_name() for o in exported.outputs]
    feed = feed_for(names, inputs)

    def runner(program, config):
        compiled = core.compile_model(program, "CPU", {**config, "INFERENCE_NUM_THREADS": threads})

        def call():
            result = compiled(feed)
            by_name = {n.split(".")[-1]: result[o] for n, o in zip(out_names, compiled.outputs)}
            return torch.from_numpy(by_name["logits"]), torch.from_numpy(by_name["pred_boxes"])

        return call

    precisions = {"f32": {"INFERENCE_PRECISION_HINT": "f32"}, "default": {}}
    for label, config in precisions.items():
        fn, compile_s = _timed_setup(lambda config=config: runner(exported, config))
        table.add("openvino", f"OpenVINO (OpenVINOExporter) {label}", label, "compiled", fn, export_s + compile_s,
                  "transformers")  # fmt: skip
    if "int8" in skip:
        return
    try:
        import nncf

        quantized, quantize_s = _timed_setup(
            lambda: nncf.quantize(exported, nncf.Dataset([feed]), subset_size=1, model_type=nncf.ModelType.TRANSFORMER)
        )
    except Exception as exc:
        table.failed("openvino", "OpenVINO int8 (NNCF)", "int8", "compiled", exc)
        return
    fn, compile_s = _timed_setup(lambda: runner(quantized, {}))
    table.add("openvino", "OpenVINO (OpenVINOExporter) int8 (NNCF, default precision elsewhere)", "int8",
              "compiled", fn, export_s + quantize_s + compile_s, "transformers")  # fmt: skip


def onnxruntime_row(table, ours, inputs, threads, size):
    try:
        import onnxruntime as ort
    except ImportError as exc:
        table.rows.append({"family": "onnxruntime", "name": "ONNX Runtime", "error": f"not installed: {exc}"})
        return
    from ..export import export_graph

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mmgdino.onnx"
        (_, _), export_s = _timed_setup(lambda: export_graph(ours, path, size, inputs["input_ids"][0].tolist()))
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {k: v.numpy() for k, v in inputs.items()}
    table.add("onnxruntime", "ONNX Runtime (mmgdino's ONNX export) float32", "float32", "compiled",
              lambda: tuple(torch.from_numpy(x) for x in session.run(["logits", "pred_boxes"], feed)), export_s,
              "mmgdino")  # fmt: skip


def mmgdino_rows(table, ours, inputs, native_bf16, skip):
    """Ours through the runner the detector uses: float32, bf16 and int8, eager and compiled."""
    import copy

    from ..compiled import compile_runner
    from ..quantization import quantize_runner
    from ..runners import TorchRunner

    processor = SimpleNamespace(tokenizer=None, image_processor=SimpleNamespace(size={"longest_edge": 1333}))
    ids = inputs["input_ids"][0].tolist()

    def make(dtype, compiled):
        model = copy.deepcopy(ours).to(torch.float32 if dtype == "int8" else dtype)
        runner = TorchRunner(model, processor)
        if dtype == "int8":  # calibrated on the benchmark's input, as OpenVINO's NNCF row is
            pixels = inputs["pixel_values"]
            quantize_runner(runner, passes=[lambda: runner.predict(runner.encode_images(pixels, inputs["pixel_mask"]),
                                                                   [0], [ids])])  # fmt: skip
        if compiled:
            torch._dynamo.reset()
            compile_runner(runner)
        return runner

    def detect(runner):
        pixels = inputs["pixel_values"].to(runner.dtype)
        return lambda: runner.predict(runner.encode_images(pixels, inputs["pixel_mask"]), [0], [ids])

    precisions = [torch.float32] + ([torch.bfloat16] if native_bf16 or "bf16" not in skip else []) + ["int8"]
    for dtype in precisions:
        name = str(dtype).replace("torch.", "")
        for compiled in (False, True) if "compile" not in skip else (False,):
            try:
                runner, setup = _timed_setup(lambda dtype=dtype, compiled=compiled: make(dtype, compiled))
                if name == "int8":  # and the rest of the model at the CPU's automatic precision
                    name = f"int8+{str(runner.dtype).removeprefix('torch.')}"
                fn = detect(runner)
                if compiled:
                    with torch.inference_mode():
                        _, compile_s = _timed_setup(fn)  # the compile happens at the first call
                    setup += compile_s
            except Exception as exc:  # recorded, and the other rows still run
                table.failed("mmgdino", f"mmgdino {name} compiled", name, "compiled", exc)
                continue
            reference = None if dtype is torch.float32 and not compiled else "mmgdino"
            table.add("mmgdino", f"mmgdino {name} {'compiled' if compiled else 'eager'}", name,
                      "compiled" if compiled else "eager", fn, setup, reference)  # fmt: skip
            del fn


def run(size=(800, 1333), repeats=3, skip=(), log=print):
    from .. import MMGroundingDinoForObjectDetection

    threads = torch.get_num_threads()
    native_bf16 = cpu_features().native_bf16
    record = {"cpu": cpu_record(), "size": list(size), "repeats": repeats, "commit": git_commit(),
              "versions": versions(), "skip": list(skip)}  # fmt: skip
    for package in ("openvino", "onnxruntime", "nncf"):
        try:
            record["versions"][package] = __import__(package).__version__
        except ImportError:
            pass
    log(f"CPU: {record['cpu']}")
    hf, inputs = tiny_model_and_inputs(torch.device("cpu"), height=size[0], width=size[1])
    ours = MMGroundingDinoForObjectDetection.from_transformers(hf)
    table = Table(repeats, log)
    mmgdino_rows(table, ours, inputs, native_bf16, skip)
    if "onnxruntime" not in skip:
        onnxruntime_row(table, ours, inputs, threads, size)
    del ours
    transformers_rows(table, hf, inputs, native_bf16, skip)
    if "openvino" not in skip:
        openvino_rows(table, hf, inputs, threads, skip)
    record["cpu"]["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    record["rows"] = table.rows
    return record


def capped_child(argv, caps=AVX2_CAPS):
    """This benchmark again in a child process with every layer's ISA capped (`caps`); returns its exit code."""
    env = dict(os.environ, **caps)
    return subprocess.call([sys.executable, "-m", "mmgdino.bench.cpu_peers", *argv], env=env)


def main(argv=None):
    from .cpu_peers_report import markdown, plot

    parser = argparse.ArgumentParser(prog="python -m mmgdino.bench.cpu_peers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=image_size, default=(800, 1333), metavar="HxW")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="cpu-peers", help="JSON, markdown and PNG at this path (suffixes replaced)")
    parser.add_argument("--skip", action="append", default=[],
                        choices=["compile", "transformers-compile", "openvino", "onnxruntime", "int8", "bf16"],
                        help="leave rows out (compile: every compiled row; transformers-compile: only "
                        "transformers' compile, minutes long and slower than its eager)")  # fmt: skip
    parser.add_argument(
        "--isa",
        choices=["avx2"],
        default=None,
        help="cap every layer to AVX2 in a child process (emulates an AVX2-only CPU)",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    if args.isa:
        child = [a for a in (argv if argv is not None else sys.argv[1:]) if a not in ("--isa", args.isa)]
        return capped_child(child)
    record = run(args.size, args.repeats, tuple(args.skip), log=lambda m: print(m, file=sys.stderr, flush=True))
    print(write_record(record, args.out, markdown))
    try:
        print(f"wrote {plot(record, Path(args.out).with_suffix('.png'))}")
    except ImportError:
        print("no chart: pip install matplotlib")
    return 0


if __name__ == "__main__":
    sys.exit(main())
