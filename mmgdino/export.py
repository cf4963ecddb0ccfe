"""`mmgdino export onnx`: the model as an ONNX file any runtime runs, and running such a file (ONNX Runtime,
OpenVINO) behind `mmgdino.Detector`.

The graph comes from torch.onnx's dynamo exporter while the model's layers use `mmgdino.ops.portable`: multi-
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

import numpy as np
import torch

from .errors import UsageError

INPUTS = ("pixel_values", "pixel_mask", "input_ids", "attention_mask")
OUTPUTS = ("logits", "pred_boxes")
RUNTIMES = ("onnxruntime", "openvino")


def sidecar(onnx_path):
    onnx_path = Path(onnx_path)
    return onnx_path.with_name(onnx_path.stem + ".mmgdino")


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
    from .detector import Detector

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
    torch_dtype = getattr(torch, dtype)
    detector = Detector(model, device="cpu", dtype=torch_dtype, processor=processor)
    ids = detector.tokenizer("a cat. a remote control.")["input_ids"]
    log(f"exporting to {out} ({height}x{width}, batch {'dynamic' if dynamic_batch else 1}, opset {opset}, {dtype})")
    seconds, nodes = export_graph(detector.model, out, (height, width), ids, dynamic_batch, opset)
    folder = sidecar(out)
    folder.mkdir(exist_ok=True)
    detector.processor.save_pretrained(folder)
    detector.model.config.save_pretrained(folder)
    import mmgdino

    meta = {"image_size": [height, width], "dynamic_batch": dynamic_batch, "opset": opset, "dtype": dtype,
            "inputs": list(INPUTS), "outputs": list(OUTPUTS), "max_text_len": detector.model.config.max_text_len,
            "mmgdino": mmgdino.__version__, "torch": torch.__version__,
            "export_seconds": round(seconds, 1)}  # fmt: skip
    (folder / "export.json").write_text(json.dumps(meta, indent=1) + "\n")
    log(f"wrote {out} ({out.stat().st_size / 2**20:.0f} MB, {nodes} nodes) and {folder}/ in {seconds:.0f} s")
    return {"onnx": out, "sidecar": folder, "seconds": seconds, "nodes": nodes}


def export_graph(model, out, image_size, example_ids, dynamic_batch=False, opset=20, optimize=True):
    """The ONNX graph of an mmgdino model (its portable formulations) at `out`; returns (seconds, nodes)."""
    from .ops.portable import portable

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


# ------------------------------------------------------------------ running an exported file


class OnnxModel:
    """An exported file in ONNX Runtime (CPU, or the CUDA / TensorRT providers when installed) or OpenVINO;
    called with numpy inputs, returns (logits, pred_boxes) as torch tensors."""

    def __init__(self, path, runtime="onnxruntime", threads=None):
        path = Path(path)
        if not path.is_file():
            raise UsageError(f"{path}: no such ONNX file")
        folder = sidecar(path)
        if not (folder / "export.json").is_file():
            raise UsageError(f"{path}: no {folder.name}/ beside it (export with mmgdino export onnx)")
        self.meta = json.loads((folder / "export.json").read_text())
        self.folder = folder
        self.runtime = runtime
        if runtime == "onnxruntime":
            try:
                import onnxruntime as ort
            except ImportError:
                raise UsageError("--runtime onnxruntime needs onnxruntime: pip install onnxruntime") from None
            options = ort.SessionOptions()
            if threads:
                options.intra_op_num_threads = threads
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                         if p in ort.get_available_providers()]  # fmt: skip
            self._session = ort.InferenceSession(str(path), options, providers=providers)
            self._run = lambda feed: self._session.run(list(OUTPUTS), feed)
        elif runtime == "openvino":
            try:
                import openvino as ov
            except ImportError:
                raise UsageError("--runtime openvino needs openvino: pip install openvino") from None
            core = ov.Core()
            config = {"INFERENCE_PRECISION_HINT": "f32"} if self.meta["dtype"] == "float32" else {}
            if threads:
                config["INFERENCE_NUM_THREADS"] = threads
            compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
            self._run = lambda feed: [compiled(feed)[compiled.output(name)] for name in OUTPUTS]
        else:
            raise UsageError(f"--runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")

    @property
    def image_size(self):
        return tuple(self.meta["image_size"])

    def __call__(self, pixel_values, pixel_mask, input_ids, attention_mask):
        if not self.meta["dynamic_batch"] and pixel_values.shape[0] != 1:
            raise UsageError("this ONNX file was exported for batch 1 (export with --dynamic-batch)")
        feed = {"pixel_values": np.ascontiguousarray(pixel_values, dtype=np.dtype(self.meta["dtype"])),
                "pixel_mask": np.ascontiguousarray(pixel_mask, dtype=np.int64),
                "input_ids": np.ascontiguousarray(input_ids, dtype=np.int64),
                "attention_mask": np.ascontiguousarray(attention_mask, dtype=np.int64)}  # fmt: skip
        logits, boxes = self._run(feed)
        return torch.from_numpy(np.asarray(logits)), torch.from_numpy(np.asarray(boxes))


def fit_inside(images, image_size, mean, std):
    """Images resized to fit inside the export's fixed (height, width) keeping their aspect ratio (PIL bilinear),
    normalized and padded: (pixel_values (B, 3, H, W), pixel_mask (B, H, W)) as numpy arrays."""
    from PIL import Image

    height, width = image_size
    pixel_values = np.zeros((len(images), 3, height, width), dtype=np.float32)
    pixel_mask = np.zeros((len(images), height, width), dtype=np.int64)
    mean = np.asarray(mean, dtype=np.float32)[:, None, None]
    std = np.asarray(std, dtype=np.float32)[:, None, None]
    for i, image in enumerate(images):
        factor = min(height / image.height, width / image.width)
        size = (
            max(1, min(width, int(image.width * factor + 0.5))),
            max(1, min(height, int(image.height * factor + 0.5))),
        )
        resized = np.asarray(image.resize(size, Image.BILINEAR), dtype=np.float32).transpose(2, 0, 1) / 255.0
        pixel_values[i, :, : size[1], : size[0]] = (resized - mean) / std
        pixel_mask[i, : size[1], : size[0]] = 1
    return pixel_values, pixel_mask
