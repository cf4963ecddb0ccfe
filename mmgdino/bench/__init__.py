"""`mmgdino bench`: every backend available here against transformers' PyTorch code, side by side in one process,
medians, with the relative error against a float64 reference; JSON, a markdown table and a chart.

cases: the inputs and suites; timing: how one call is timed; report: what is written.
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
