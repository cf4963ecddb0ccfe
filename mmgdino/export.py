"""`mmgdino export onnx`: the model as an ONNX file any runtime runs (running it: `mmgdino.onnx_runtime`).

The graph comes from torch.onnx's dynamo exporter while the operators run on their "portable" backend: multi-
scale deformable attention as GridSample per level, the contrastive heads as MatMul + ReduceMax, the phrase masks
as comparisons (no cumulative max or isin). Inputs: `pixel_values` (B, 3, H, W) float, `pixel_mask` (B, H, W)
int64, `input_ids` and `attention_mask` (B, T) int64, T <= the model's max_text_len; outputs: `logits`
(B, num_queries, max_text_len) float32 (-inf outside the prompt) and `pred_boxes` (B, num_queries, 4) normalized
(cx, cy, w, h) of the unpadded image. The image size is fixed at export (`image_size`); images are resized to fit
inside it and padded (pixel_mask). The batch is dynamic with `dynamic_batch`, the prompt length always.

Beside `model.onnx`, a folder `model.mmgdino/` holds what running it needs: the processor (tokenizer, image
normalization), the model config and `export.json` (image size, batch, opset, dtype, versions).
"""

import json
import time
from pathlib import Path

import torch

from .errors import UsageError
from .loading import load_model_and_processor
from .onnx_runtime import INPUTS, OUTPUTS, sidecar
from .ops.portable import portable
from .version import __version__


class _Graph(torch.nn.Module):
    """The exported signature: four tensors in, (logits, pred_boxes) out."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values, pixel_mask, input_ids, attention_mask):
        out = self.model(pixel_values=pixel_values, pixel_mask=pixel_mask, input_ids=input_ids,
                         attention_mask=attention_mask, return_dict=True, output_hidden_states=False)  # fmt: skip
        return out.logits, out.pred_boxes


def parse_size(text):
    try:
        height, width = (int(v) for v in str(text).lower().split("x"))
    except ValueError:
        raise UsageError(f"--image-size must be HEIGHTxWIDTH, e.g. 800x1333, got {text!r}") from None
    if height < 64 or width < 64:
        raise UsageError(f"--image-size {text}: both sides must be at least 64 pixels")
    return height, width


def export_onnx(model, out, *, image_size=(800, 1333), dynamic_batch=False, dynamic_size=False, opset=20,
                dtype="float32", processor=None, log=None):  # fmt: skip
    """Exports `model` (hub id, folder, or an mmgdino / transformers model with `processor=`) to `out` (.onnx),
    with its sidecar folder. Returns {"onnx", "sidecar", "seconds", "nodes"}."""
    log = log or (lambda message: None)
    out = Path(out)
    if out.suffix != ".onnx":
        raise UsageError(f"--out {out}: the file name must end in .onnx")
    if not out.resolve().parent.is_dir():
        raise UsageError(f"--out {out}: folder {out.resolve().parent} does not exist")
    if dynamic_size:
        raise UsageError(
            "--dynamic-size is not supported: the Swin backbone pads odd feature sizes in branches the exporter "
            "fixes at trace time, so a graph traced at one size fails at others; export per --image-size"
        )
    if dtype not in ("float32", "float16"):
        raise UsageError(f"--dtype must be float32 or float16, got {dtype!r}")
    if not isinstance(opset, int) or not 18 <= opset <= 23:
        raise UsageError(f"--opset must be between 18 and 23 (GridSample with its current semantics), got {opset!r}")
    height, width = image_size
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise UsageError("export needs onnx and onnxscript: pip install onnx onnxscript (or mmgdino[onnx])") from None
    model, processor = load_model_and_processor(model, device="cpu", dtype=dtype, processor=processor)
    ids = processor.tokenizer("a cat. a remote control.")["input_ids"]
    log(f"exporting to {out} ({height}x{width}, batch {'dynamic' if dynamic_batch else 1}, opset {opset}, {dtype})")
    seconds, nodes = export_graph(model, out, (height, width), ids, dynamic_batch, opset)
    folder = sidecar(out)
    folder.mkdir(exist_ok=True)
    processor.save_pretrained(folder)
    model.config.save_pretrained(folder)
    meta = {"image_size": [height, width], "dynamic_batch": dynamic_batch, "opset": opset, "dtype": dtype,
            "inputs": list(INPUTS), "outputs": list(OUTPUTS), "max_text_len": model.config.max_text_len,
            "mmgdino": __version__, "torch": torch.__version__,
            "export_seconds": round(seconds, 1)}  # fmt: skip
    (folder / "export.json").write_text(json.dumps(meta, indent=1) + "\n")
    log(f"wrote {out} ({out.stat().st_size / 2**20:.0f} MB, {nodes} nodes) and {folder}/ in {seconds:.0f} s")
    return {"onnx": out, "sidecar": folder, "seconds": seconds, "nodes": nodes}


def export_graph(model, out, image_size, example_ids, dynamic_batch=False, opset=20, optimize=True):
    """The ONNX graph of an mmgdino model (its operators on the portable backend) at `out`; returns (seconds,
    nodes)."""
    height, width = image_size
    count = 2 if dynamic_batch else 1
    example = (
        torch.zeros(count, 3, height, width, dtype=model.dtype),
        torch.ones(count, height, width, dtype=torch.long),
        torch.tensor([list(example_ids)] * count),
        torch.ones(count, len(example_ids), dtype=torch.long),
    )
    dynamic = {name: {} for name in INPUTS}
    tokens = torch.export.Dim("tokens", min=3, max=model.config.max_text_len)
    for name in ("input_ids", "attention_mask"):
        dynamic[name][1] = tokens
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1, max=1024)
        for name in INPUTS:
            dynamic[name][0] = batch
    began = time.perf_counter()
    with torch.no_grad(), portable():
        program = torch.onnx.export(_Graph(model).eval(), example, None, input_names=list(INPUTS),
                                    output_names=list(OUTPUTS), dynamic_shapes=dynamic, dynamo=True,
                                    opset_version=opset, verbose=False, optimize=False)  # fmt: skip
    if optimize:
        simplify(program.model)
    program.save(str(out), external_data=False)
    return time.perf_counter() - began, len(program.model.graph)


def simplify(model, rounds=2):
    """Constant folding, dead-code removal and common subexpressions on the exported graph, in place.

    torch.onnx's own `optimize=True` adds onnxscript's pattern rewriter to these passes. On this graph the rewriter
    took 61 of the export's 115 s (it tries every rule at every one of ~12,000 nodes) and removed 59 of ~3,990
    nodes, with no measurable gain in ONNX Runtime or OpenVINO, which run their own fusions when they load a file.
    """
    from onnx_ir.passes import common
    from onnxscript.optimizer import fold_constants_ir

    common.InlinePass()(model)
    for _ in range(rounds):
        folded = fold_constants_ir(model, onnx_shape_inference=True).modified
        removed = common.RemoveUnusedNodesPass()(model).modified
        if not (folded or removed):
            break
    for cleanup in (common.RemoveUnusedFunctionsPass(), common.RemoveUnusedOpsetsPass(),
                    common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
                    common.DeduplicateInitializersPass(), common.CommonSubexpressionEliminationPass(),
                    common.RemoveUnusedNodesPass(), common.OutputFixPass(), common.NameFixPass()):  # fmt: skip
        cleanup(model)
