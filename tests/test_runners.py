"""mmgdino.runners: what runs the model for Detector and eval. The PyTorch runner: rows picked out of an encoded
batch give what the whole batch gives for them; prompts are encoded once and the cache is bounded. (The ONNX
runner is checked against it in test_export.py.)"""

import numpy as np
import pytest
import torch
from PIL import Image

from mmgdino import runners
from mmgdino.runners import TorchRunner, runner_for


@pytest.fixture(scope="module")
def runner(small_checkpoint):
    return runner_for(small_checkpoint.directory, device="cpu")


def _prompt(runner, text):
    return runner.tokenizer(text)["input_ids"]


def test_rows_of_a_batch_give_what_the_whole_batch_gives(runner):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)) for _ in range(3)]
    prompts = [_prompt(runner, "w200. w300."), _prompt(runner, "w400 w401."), _prompt(runner, "w200. w300.")]
    with torch.inference_mode():
        encoded = runner.encode_images(*runner.pixels(images))
        logits, boxes = runner.predict(encoded, [0, 1, 2], prompts)
        some_logits, some_boxes = runner.predict(encoded, [2, 0], [prompts[2], prompts[0]])
    assert isinstance(runner, TorchRunner) and logits.shape[0] == 3
    torch.testing.assert_close(some_logits, logits[[2, 0]])
    torch.testing.assert_close(some_boxes, boxes[[2, 0]])


def test_each_prompt_is_encoded_once_and_the_cache_is_bounded(runner, monkeypatch):
    calls = []
    original = runner.model.encode_prompt
    monkeypatch.setattr(runner.model, "encode_prompt", lambda *a, **k: calls.append(1) or original(*a, **k))
    monkeypatch.setattr(runners, "PROMPT_CACHE_SIZE", 2)
    first = runner.encode_prompt(_prompt(runner, "w500."))
    assert runner.encode_prompt(_prompt(runner, "w500.")) is first and len(calls) == 1
    for word in ("w501.", "w502.", "w503."):
        runner.encode_prompt(_prompt(runner, word))
    assert len(calls) == 4
    runner.encode_prompt(_prompt(runner, "w500."))  # pushed out by newer prompts: encoded again
    assert len(calls) == 5
