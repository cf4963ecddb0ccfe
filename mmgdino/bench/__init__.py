"""`mmgdino bench`: every backend available here against transformers' PyTorch code, side by side in one process,
medians, with the relative error against a float64 reference; JSON, a markdown table and a chart.

Every benchmark's code lives in this package (benchmarks/ holds only recorded results and the GPU round script):
cases: the inputs and suites; timing: how one call is timed (the one timer); agreement: how close two outputs are
(the one rel_err); report: what `mmgdino bench` writes; onnx and onnx_report: the ONNX exports and CPU peers
(`mmgdino bench --onnx`, or `python -m mmgdino.bench.onnx`); cpu_isa: the CPU kernel builds side by side
(`python -m mmgdino.bench.cpu_isa`); cpu_peers and cold_start: the CPU inference paths and their peers; training:
one training step against transformers' class (`python -m mmgdino.bench.training`). The GPU time model is
modeled, not measured, and needs the checkout's CUDA emulator: a developer tool (tools/mmgdino_tools/gpu_model),
not a benchmark here.
"""

from ..environment import versions
from .cases import Row, run_end_to_end, run_ops, tiny_model_and_inputs
from .report import markdown_table, plot_report, write_report

__all__ = [
    "Row",
    "markdown_table",
    "plot_report",
    "run_end_to_end",
    "run_ops",
    "tiny_model_and_inputs",
    "versions",
    "write_report",
]
