"""mmgdino.loading: device and dtype checked before anything loads, and the model with its processor."""

import pytest
import torch

from mmgdino import MMGroundingDinoForObjectDetection
from mmgdino.errors import UsageError
from mmgdino.loading import check_device_and_dtype, dtype_name, load_model_and_processor, parse_dtype
from mmgdino.modeling import ModelLoadError


def test_dtypes_by_name_or_torch_dtype():
    assert parse_dtype(None) is torch.float32
    assert parse_dtype("bfloat16") is torch.bfloat16 and parse_dtype(torch.float16) is torch.float16
    assert dtype_name(torch.bfloat16) == "bfloat16" and dtype_name(None) == "float32"
    with pytest.raises(UsageError, match="dtype 'int8' is not supported"):
        parse_dtype("int8")


@pytest.mark.parametrize(
    "device, dtype, words",
    [
        ("cuda", None, "is not available"),
        ("nope", None, "is not a torch device"),
        ("meta", None, "runs on cpu or"),
        ("cpu", torch.float64, "not supported"),
    ],  # fmt: skip
)
def test_what_cannot_run_here_is_one_line(device, dtype, words):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("a GPU is here")
    with pytest.raises(UsageError, match=words):
        check_device_and_dtype(device, dtype)


def test_a_built_model_needs_its_processor_and_a_folder_brings_its_own(small_checkpoint, tmp_path):
    with pytest.raises(UsageError, match="pass processor="):
        load_model_and_processor(small_checkpoint.hf, device="cpu")
    model, processor = load_model_and_processor(small_checkpoint.directory, device="cpu", dtype="bfloat16")
    assert isinstance(model, MMGroundingDinoForObjectDetection) and model.dtype == torch.bfloat16
    assert not model.training and processor.tokenizer is not None
    with pytest.raises(ModelLoadError, match="no such directory"):
        load_model_and_processor(tmp_path / "none", device="cpu")
