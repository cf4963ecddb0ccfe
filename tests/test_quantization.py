"""mmgdino.quantization: int8 layers against float32 (one layer exactly measured, the model by agreement),
calibration from images, and the bad inputs."""

import numpy as np
import pytest
import torch
from PIL import Image

from mmgdino import quantization
from mmgdino.bench.onnx import topk_agreement
from mmgdino.errors import UsageError
from mmgdino.runners import runner_for

pytestmark = pytest.mark.skipif(not hasattr(torch.ops.onednn, "qlinear_pointwise"), reason="torch without oneDNN")


def test_int8_linear_is_close_to_float32():
    gen = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(64, 48)
    x = torch.randn(3, 50, 64, generator=gen)
    expected = linear(x).detach()
    for layer in (quantization.Int8Linear(linear), quantization.Int8Linear(linear, x.min(), x.max())):
        out = layer(x)
        assert out.shape == expected.shape and out.dtype == torch.float32
        assert ((out - expected).norm() / expected.norm()).item() < 2e-2  # 8-bit: about 1% per product


def _images(count, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (120, 150, 3), dtype=np.uint8)) for _ in range(count)]


def test_int8_runner_agrees_with_float32(small_checkpoint):
    reference = runner_for(small_checkpoint.directory, "cpu")
    prompt = [101, 200, 201, 1012, 202, 1012, 102]
    image = _images(1, seed=5)
    with torch.inference_mode():
        expected_features = reference.encode_images(*reference.pixels(image))
        expected = reference.predict(expected_features, [0], [prompt])
        for calibration in (_images(3), None):
            runner = runner_for(small_checkpoint.directory, "cpu", "int8", calibration=calibration)
            assert runner.precision == "int8"
            assert any(isinstance(m, quantization.Int8Linear) for m in runner.model.modules())
            assert not any(isinstance(m, quantization.Int8Linear) for m in runner.model.model.text_backbone.modules())
            assert all(layer.static is not None for layer in runner.model.modules()
                       if isinstance(layer, quantization.Int8Linear)) == (calibration is not None)  # fmt: skip
            features = runner.encode_images(*runner.pixels(image))
            # The backbone's features (no top-k in between): int8's rounding only.
            error = (features.vision - expected_features.vision).norm() / expected_features.vision.norm()
            assert error.item() < 5e-2
            # End to end, the small random model's 20 proposals nearly tie, so any rounding reselects some of them:
            # a floor only (the benchmark reports the real model's agreement).
            assert topk_agreement(runner.predict(features, [0], [prompt]), expected, k=10) >= 0.3


def test_int8_bad_inputs(small_checkpoint):
    with pytest.raises(UsageError, match="calibration is empty"):
        runner_for(small_checkpoint.directory, "cpu", "int8", calibration=[])
    with pytest.raises(UsageError, match="compiled int8 needs calibration images"):
        runner_for(small_checkpoint.directory, "cpu", "int8", compile=True)
    with pytest.raises(UsageError, match="int8 quantizes a float32 model"):
        quantization.quantize_runner(runner_for(small_checkpoint.directory, "cpu", "bfloat16"))
