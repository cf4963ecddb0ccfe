"""Running an exported file (`mmgdino export onnx`) in ONNX Runtime or OpenVINO: the file, its sidecar folder
(processor, config, `export.json`), and the fixed-canvas preprocessing its fixed image size needs."""

import json
from pathlib import Path

import numpy as np
import torch

from .errors import UsageError

INPUTS = ("pixel_values", "pixel_mask", "input_ids", "attention_mask")
OUTPUTS = ("logits", "pred_boxes")
RUNTIMES = ("onnxruntime", "openvino")


def sidecar(onnx_path):
    """The folder beside `model.onnx` that running it needs: `model.mmgdino/`."""
    onnx_path = Path(onnx_path)
    return onnx_path.with_name(onnx_path.stem + ".mmgdino")


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
            self._run = self._onnxruntime(path, threads)
        elif runtime == "openvino":
            self._run = self._openvino(path, threads)
        else:
            raise UsageError(f"--runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")

    @staticmethod
    def _onnxruntime(path, threads):
        try:
            import onnxruntime as ort
        except ImportError:
            raise UsageError("--runtime onnxruntime needs onnxruntime: pip install onnxruntime") from None
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        session = ort.InferenceSession(str(path), options, providers=providers)
        return lambda feed: session.run(list(OUTPUTS), feed)

    def _openvino(self, path, threads):
        try:
            import openvino as ov
        except ImportError:
            raise UsageError("--runtime openvino needs openvino: pip install openvino") from None
        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": "f32"} if self.meta["dtype"] == "float32" else {}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        return lambda feed: [compiled(feed)[compiled.output(name)] for name in OUTPUTS]

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
