"""mmgdino.ops._backends: the one table of which backend runs an operator on a device, and the dispatch rule."""

import pytest
from helpers import msda_inputs

import mmgdino
from mmgdino import ops
from mmgdino.ops import _backends
from mmgdino.ops.portable import portable


def test_default_backend_on_cpu_is_the_best_available():
    assert ops.available_backends("ms_deform_attn", "cpu")[0] == (
        "cpu" if mmgdino._extension.has_cpu_kernels else "torch"
    )
    assert "torch" in ops.available_backends("ms_deform_attn", "cpu")


def test_unknown_and_unavailable_backends_name_the_available_ones():
    inputs = msda_inputs()
    with pytest.raises(ValueError, match="available on cpu: .*torch"):
        ops.ms_deform_attn(*inputs, backend="nope")
    with pytest.raises(ValueError, match="not available .*available: .*torch"):
        ops.ms_deform_attn(*inputs, backend="cuda")
    with pytest.raises(ValueError, match="unknown mmgdino operator"):
        ops.available_backends("nope")


def test_every_operator_has_a_row_per_device_and_a_reason_for_each_unavailable_backend():
    for op in ops.OPS:
        for device in ("cpu", "cuda"):
            rows = ops.TABLE[(op, device)]
            assert {backend for backend, _ in rows} == set(ops.BACKENDS)
            assert all(why is None or (isinstance(why, str) and why) for _, why in rows)
            assert _backends.AUTOMATIC[(op, device)] in ops.available_backends(op, device)
            assert _backends.AUTOMATIC[(op, device)] != "portable"  # only inside portable(), or by name


def test_inside_portable_the_automatic_choice_is_the_portable_backend():
    device = msda_inputs()[0].device
    outside = _backends.kernel_for("contrastive_max", None, device)
    with portable():
        assert _backends.kernel_for("contrastive_max", None, device) is ops.portable.contrastive_max
        assert _backends.kernel_for("contrastive_max", "torch", device) is not ops.portable.contrastive_max
    assert _backends.kernel_for("contrastive_max", None, device) is outside
