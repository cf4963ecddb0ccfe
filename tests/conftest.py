import os

# The Triton backend runs on the CPU through Triton's interpreter; it must be chosen before triton is imported.
try:
    import torch as _torch

    if not _torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:
    pass

from collections import namedtuple

import model_builders as mb
import numpy as np
import pytest
import torch
from helpers import TOLERANCE  # noqa: F401  (re-exported for tests)
from PIL import Image

Checkpoint = namedtuple("Checkpoint", "directory hf")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory):
    """The small random-weight MM Grounding DINO saved with an offline processor, loaded back the way a user's
    checkpoint is (directory), and the transformers model it was saved from (hf); shared: never written to."""
    directory = tmp_path_factory.mktemp("checkpoint")
    hf = mb.mm_grounding_dino(num_queries=20)
    hf.save_pretrained(directory)
    mb.offline_processor(directory).save_pretrained(directory)
    return Checkpoint(directory, hf)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Three small random images of different sizes (a folder of their own per test module)."""
    directory = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for i, size in enumerate([(70, 90), (90, 60), (64, 64)]):
        path = directory / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths
