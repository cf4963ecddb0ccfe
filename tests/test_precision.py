"""mmgdino.precision: the CPU's features as the layers see them (capped by the ISA switches), the automatic
precision per kind of CPU, and float32 matrix products for 16-bit runs on CPUs without native bf16."""

import pytest
import torch

from mmgdino import precision


def _hardware(monkeypatch, level):
    flags = {
        "_is_amx_tile_supported": level == "amx",
        "_is_avx512_bf16_supported": level in ("amx", "avx512_bf16"),
        "_is_avx512_supported": level in ("amx", "avx512_bf16", "avx512"),
        "_is_avx2_supported": level != "baseline",
        "_is_vnni_supported": level != "baseline",
    }
    for name, value in flags.items():
        monkeypatch.setattr(torch.cpu, name, lambda value=value: value, raising=False)


@pytest.mark.parametrize(
    "hardware, environ, level, dtype",
    [
        ("amx", {}, "amx", "bfloat16"),
        ("avx512_bf16", {}, "avx512_bf16", "bfloat16"),
        ("avx512", {}, "avx512", "float32"),
        ("avx2", {}, "avx2", "float32"),
        ("baseline", {}, "baseline", "float32"),
        ("avx512_bf16", {"ONEDNN_MAX_CPU_ISA": "AVX2"}, "avx2", "float32"),
        ("avx512_bf16", {"ATEN_CPU_CAPABILITY": "avx2"}, "avx2", "float32"),
        ("avx512_bf16", {"MMGDINO_CPU_ISA": "avx512"}, "avx512", "float32"),
        ("avx512_bf16", {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}, "avx512_bf16", "bfloat16"),
        ("avx2", {"ONEDNN_MAX_CPU_ISA": "ALL"}, "avx2", "float32"),  # a cap above the hardware caps nothing
    ],  # fmt: skip
)
def test_auto_follows_the_capped_cpu(monkeypatch, hardware, environ, level, dtype):
    _hardware(monkeypatch, hardware)
    features = precision.cpu_features(environ)
    assert features.hardware == hardware and features.level == level
    assert bool(features.capped_by) == (level != hardware)
    assert features.native_bf16 == (dtype == "bfloat16")
    name, why = precision.automatic_dtype("cpu", features)
    assert name == dtype and why
    assert precision.needs_float32_matmuls(torch.bfloat16, "cpu", features) == (dtype != "bfloat16")
    assert not precision.needs_float32_matmuls(torch.float32, "cpu", features)


def test_info_line_names_the_choice_and_why(monkeypatch):
    _hardware(monkeypatch, "avx512_bf16")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    line = precision.info_line()
    assert "capped to avx2 by ONEDNN_MAX_CPU_ISA=AVX2" in line and "dtype auto -> float32" in line
    assert line.endswith("dtype int8 -> int8 products, float32 elsewhere")


def test_float32_matmuls_compute_16_bit_products_in_float32():
    gen = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(*s, generator=gen).bfloat16() for s in ((5, 64), (7, 64), (7,)))
    expected = torch.nn.functional.linear(x.float(), w.float(), b.float()).bfloat16()
    with precision.float32_matmuls():
        out = torch.nn.functional.linear(x, w, b)
        product = x @ w.T
        kept = (x + 1).dtype  # everything else keeps its dtype
    assert out.dtype == torch.bfloat16 and torch.equal(out, expected)
    assert torch.equal(product, (x.float() @ w.float().T).bfloat16()) and kept == torch.bfloat16
