"""What the training tests share: a small checkpoint folder (random weights, three feature levels so that the
smallest maps of 48-pixel scenes are not 1x1, no dropout so that runs can be compared bit for bit), and the fix
for one quirk of this test folder.

The quirk: tests/datasets.py is importable as `datasets`, so transformers believes Hugging Face's `datasets` is
installed and its Trainer asks our module for `datasets.Dataset`. `no_hf_datasets` tells the Trainer module the
truth for the test's duration; a run outside the tests (the console script, torchrun's children) never sees it.
"""

import model_builders as mb
import pytest
import torch

SMALL_SIZE = (48, 64)  # training and evaluation scale of the scene tests (shorter, longer side)


def no_hf_datasets(monkeypatch):
    import transformers.trainer

    module = getattr(transformers.trainer, "datasets", None)
    if module is not None and not hasattr(module, "Dataset"):
        monkeypatch.setattr(transformers.trainer, "is_datasets_available", lambda: False)


@pytest.fixture
def one_thread(monkeypatch):
    """One intra-op thread for the test: tiny operators on two shared cores run several times faster on one
    thread, and runs compared bit for bit must use the same count. Also `no_hf_datasets`."""
    no_hf_datasets(monkeypatch)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_checkpoint(directory, seed=0, **overrides):
    """A save_pretrained folder (model and offline processor) of the tiny MM Grounding DINO. With dropout 0 (the
    default) nothing in it is random in training mode: no dropout in the detector or the language model and no
    stochastic depth in the fusion layers or the backbone, so two runs can be compared step for step."""
    settings = dict(levels=3, dropout=0.0, seed=seed)
    settings.update(overrides)
    model = mb.mm_grounding_dino(**settings)
    if not settings["dropout"]:  # the loaded model's modules are built from this config
        text, backbone = model.config.text_config, model.config.backbone_config
        model.config.fusion_droppath = model.config.fusion_dropout = model.config.text_enhancer_dropout = 0.0
        text.hidden_dropout_prob = text.attention_probs_dropout_prob = 0.0
        backbone.drop_path_rate = backbone.hidden_dropout_prob = backbone.attention_probs_dropout_prob = 0.0
    model.save_pretrained(directory)
    mb.offline_processor(directory).save_pretrained(directory)
    return directory
