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
        # bfloat16 around the product: bfloat16 in and out, the float32 scales and bias kept through .to().
        layer.to(torch.bfloat16)
        assert layer.weight_scale.dtype == torch.float32 and layer.bias.dtype == torch.float32
        low = layer(x.bfloat16())
        assert low.dtype == torch.bfloat16
        assert ((low.float() - expected).norm() / expected.norm()).item() < 2e-2


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
        for calibration, glue in ((_images(3), torch.float32), (None, torch.float32), (_images(3), torch.bfloat16)):
            runner = runner_for(small_checkpoint.directory, "cpu")
            quantization.quantize_runner(runner, calibration, glue=glue)
            assert runner.precision == "int8" and runner.dtype == glue
            assert runner.model.model.text_backbone.embeddings.word_embeddings.weight.dtype == glue
            assert any(isinstance(m, quantization.Int8Linear) for m in runner.model.modules())
            assert not any(isinstance(m, quantization.Int8Linear) for m in runner.model.model.text_backbone.modules())
            assert all(layer.static is not None for layer in runner.model.modules()
                       if isinstance(layer, quantization.Int8Linear)) == (calibration is not None)  # fmt: skip
            features = runner.encode_images(*runner.pixels(image))
            # The backbone's features (no top-k in between): int8's rounding only.
            error = (features.vision.float() - expected_features.vision).norm() / expected_features.vision.norm()
            assert error.item() < 5e-2
            # End to end, the small random model's 20 proposals nearly tie, so any rounding reselects some of them:
            # a floor only (the benchmark reports the real model's agreement).
            logits, boxes = runner.predict(features, [0], [prompt])
            assert topk_agreement((logits.float(), boxes.float()), expected, k=10) >= 0.3


def test_int8_default_glue_is_the_automatic_precision(small_checkpoint):
    from mmgdino.precision import CpuFeatures

    assert quantization.glue_dtype(CpuFeatures("avx512_bf16", "avx512_bf16", (), True)) == torch.bfloat16
    assert quantization.glue_dtype(CpuFeatures("avx2", "avx2", (), True)) == torch.float32
    runner = runner_for(small_checkpoint.directory, "cpu", "int8")
    assert runner.dtype == quantization.glue_dtype() and runner.precision == "int8"


def test_int8_bad_inputs(small_checkpoint):
    with pytest.raises(UsageError, match="calibration is empty"):
        runner_for(small_checkpoint.directory, "cpu", "int8", calibration=[])
    with pytest.raises(UsageError, match="compiled int8 needs calibration images"):
        runner_for(small_checkpoint.directory, "cpu", "int8", compile=True)
    with pytest.raises(UsageError, match="int8 quantizes a float32 model"):
        quantization.quantize_runner(runner_for(small_checkpoint.directory, "cpu", "bfloat16"))
    with pytest.raises(UsageError, match="float32 or bfloat16, not torch.float16"):
        quantization.quantize_runner(runner_for(small_checkpoint.directory, "cpu"), glue=torch.float16)


@pytest.mark.parametrize("glue", [torch.float32, torch.bfloat16])
def test_compiled_int8_runs_onednn_int8_products(tmp_path, glue):
    """The exported reference form must fold into oneDNN's int8 product under Inductor: a graph that does not match
    its patterns still runs (a float product of dequantized weights) and agrees, only at float speed, so the
    matches are counted."""
    from torch._dynamo.utils import counters

    from mmgdino import compiled

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.GELU(), torch.nn.Linear(128, 32)).eval()
    x = torch.randn(2, 50, 64)
    model[0], model[2] = quantization.Int8Linear(model[0], -4.0, 4.0), quantization.Int8Linear(model[2], -1.0, 3.0)
    model.to(glue)
    counters.clear()
    with torch.no_grad():
        package = compiled.aoti_package(model, (x.to(glue),), tmp_path / "int8.pt2")
        out, expected = package(x.to(glue)), model(x.to(glue))
    assert counters["inductor"]["qlinear_weight_prepack_matcher_count"] == 2  # torch >= 2.14: through torchao
    assert out.dtype == glue
    assert ((out.float() - expected.float()).norm() / expected.float().norm()).item() < 2e-2


def test_compiled_int8_without_torchao_is_one_clear_error(monkeypatch):
    """From torch 2.14 the patterns are torchao's: without it compiling int8 says so instead of running slowly."""
    import builtins

    real_import = builtins.__import__

    def no_torchao(name, *args, **kwargs):
        if name.startswith("torchao"):
            raise ImportError("No module named 'torchao'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torchao)
    monkeypatch.setattr(torch, "__version__", "2.14.1")
    with pytest.raises(UsageError, match=r"compiled int8 on torch 2.14.1 needs torchao.*mmgdino\[int8\]"):
        quantization.enable_compiled_int8()
    monkeypatch.setattr(torch, "__version__", "2.13.0")
    quantization.enable_compiled_int8()  # Inductor's own patterns: nothing to import
