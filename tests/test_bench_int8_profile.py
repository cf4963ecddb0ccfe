"""The int8 profile benchmark: both variants run and are profiled, the fused one calls the quantization kernel and
the other does not, and the report names both; bad arguments of it and of cpu_peers, and cpu_peers' row skip."""

import pytest
import torch

from mmgdino.bench import int8_profile

pytestmark = pytest.mark.skipif(not hasattr(torch.ops.onednn, "qlinear_pointwise"), reason="torch without oneDNN")


def test_profiles_before_and_after_the_fusion(tmp_path):
    record = int8_profile.run(size=(256, 320), repeats=1, log=lambda _: None)
    before, after = record["variants"]["before"], record["variants"]["after"]
    assert before["glue"] == "float32"
    assert before["s"] > 0 and after["s"] > 0 and len(before["ops"]) == int8_profile.TOP_OPS
    names = {v: {o["op"] for o in record["variants"][v]["ops"]} for v in ("before", "after")}
    assert "onednn::qlinear_pointwise" in names["before"] and "onednn::qlinear_pointwise" in names["after"]
    assert before["fused_kernel_calls"] == 0 and after["fused_kernel_calls"] > 0
    text = int8_profile.markdown(record)
    assert "## before: torch.profiler" in text and "## after: torch.profiler" in text


def test_bad_arguments_are_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        int8_profile.main(["--repeats", "0"])
    assert exit_info.value.code == 2 and "--repeats must be at least 1" in capsys.readouterr().err


@pytest.mark.parametrize("module", ["int8_profile", "cpu_peers"])
def test_a_bad_size_is_one_line(module, capsys):
    import importlib

    main = importlib.import_module(f"mmgdino.bench.{module}").main
    with pytest.raises(SystemExit) as exit_info:
        main(["--size", "800by1333"])
    assert exit_info.value.code == 2
    assert "argument --size: expected HEIGHTxWIDTH, e.g. 320x480, got '800by1333'" in capsys.readouterr().err


def test_cpu_peers_can_leave_out_only_transformers_compile():
    from mmgdino.bench import cpu_peers

    class Rows:
        def __init__(self):
            self.names = []

        def add(self, family, name, *args, **kwargs):
            self.names.append(name)

    rows = Rows()
    cpu_peers.transformers_rows(rows, hf=None, inputs={}, native_bf16=False, skip=("transformers-compile",))
    assert rows.names == ["transformers eager float32"]
