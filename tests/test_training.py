"""Training mode: dropout where transformers applies it, gradient checkpointing, bfloat16 autocast, and HF Trainer
taking the model as it is; what it saves loads in transformers' class and ours."""

import copy

import model_builders as mb
import pytest
import torch
import transformers
from test_losses import labels_for

from mmgdino import MMGroundingDinoForObjectDetection as Ours

DROPOUTS = ("dropout", "attention_dropout", "activation_dropout", "fusion_dropout", "fusion_droppath",
            "text_enhancer_dropout")  # fmt: skip


def no_dropout(**overrides):
    """The model with every dropout off but `overrides`, also BERT's and Swin's own."""
    model = Ours.from_transformers(mb.mm_grounding_dino(4, **(dict.fromkeys(DROPOUTS, 0.0) | overrides)))
    for module in (*model.model.text_backbone.modules(), *model.model.backbone.modules()):
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        elif hasattr(module, "drop_prob"):
            module.drop_prob = 0.0
    return model


def _loss(model, inputs, labels, seed=0):
    torch.manual_seed(seed)
    return model(**inputs, labels=labels).loss


def test_training_mode_gives_transformers_loss_for_the_same_seed():
    """With the configs' default dropouts (0.1 after every attention and feed-forward, fusion drop-path 0.1),
    a training-mode forward draws the same dropout masks in the same order as transformers'."""
    hf = mb.mm_grounding_dino(4)
    ours = Ours.from_transformers(hf)
    inputs = mb.grounding_inputs()
    labels = labels_for(inputs, torch.float32)
    hf.train(), ours.train()
    for seed in (0, 1):
        torch.testing.assert_close(_loss(ours, inputs, labels, seed), _loss(hf, inputs, labels, seed))
    assert _loss(ours, inputs, labels, 0) != _loss(ours, inputs, labels, 1)
    ours.eval()
    assert _loss(ours, inputs, labels, 0) == _loss(ours, inputs, labels, 1)


@pytest.mark.parametrize("name", DROPOUTS)
def test_every_dropout_of_the_config_acts_in_training_only(name):
    model = no_dropout(**{name: 0.5})
    inputs = mb.grounding_inputs()
    with torch.no_grad():
        model.eval()
        assert torch.equal(model(**inputs).last_hidden_state, model(**inputs).last_hidden_state)
        model.train()
        torch.manual_seed(0)
        first = model(**inputs).last_hidden_state
        torch.manual_seed(1)
        assert not torch.allclose(first, model(**inputs).last_hidden_state)


@pytest.mark.parametrize("reentrant", [False, True], ids=["non_reentrant", "reentrant"])
def test_gradient_checkpointing_recomputes_the_layers_with_the_same_gradients(reentrant, monkeypatch):
    model = no_dropout().train()
    inputs = mb.grounding_inputs()
    labels = labels_for(inputs, torch.float32)
    _loss(model, inputs, labels).backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    assert model.is_activation_checkpointing
    layers = [*model.model.encoder.layers, *model.model.decoder.layers]
    assert all(layer.gradient_checkpointing for layer in layers)
    calls = []
    for layer in layers:
        function = layer._gradient_checkpointing_func
        monkeypatch.setattr(
            layer, "_gradient_checkpointing_func", lambda *a, _f=function, **k: calls.append(1) or _f(*a, **k)
        )
    _loss(model, inputs, labels).backward()
    assert len(calls) == len(layers)
    got = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert got.keys() == want.keys()
    # The recomputed graph sums in another order (reentrant: per layer): float32 rounding, 2e-5 measured.
    flat_want = torch.cat([g.flatten() for g in want.values()])
    flat_got = torch.cat([got[name].flatten() for name in want])
    assert (flat_got - flat_want).norm() <= 1e-4 * flat_want.norm()
    model.gradient_checkpointing_disable()
    assert not model.is_activation_checkpointing


def test_bfloat16_autocast_trains_with_float32_weights():
    model = no_dropout().train()
    inputs = mb.grounding_inputs()
    labels = labels_for(inputs, torch.float32)
    reference = _loss(model, inputs, labels).item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = _loss(model, inputs, labels)
    loss.backward()
    assert loss.dtype == torch.float32 and abs(loss.item() - reference) <= 0.05 * reference
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


def _rows(inputs, labels, repeat):
    return [{k: v[i] for k, v in inputs.items()} | {"labels": labels[i]} for i in range(len(labels))] * repeat


def _collate(rows):
    batch = {
        k: torch.stack([r[k] for r in rows]) for k in ("pixel_values", "pixel_mask", "input_ids", "attention_mask")
    }
    return batch | {"labels": [r["labels"] for r in rows]}


def test_hf_trainer_takes_the_model_as_it_is(tmp_path, monkeypatch):
    """Two optimizer steps of transformers' Trainer (AdamW, gradient checkpointing on); the checkpoint it leaves is
    a save_pretrained folder that transformers' class and ours both load to the trained weights."""
    # tests/datasets.py shadows Hugging Face `datasets` on this folder's import path; the Trainer only asks
    # whether datasets is installed to treat a datasets.Dataset specially.
    monkeypatch.setattr(transformers.trainer, "is_datasets_available", lambda: False)
    model = Ours.from_transformers(mb.mm_grounding_dino(4))
    inputs = mb.grounding_inputs()
    before = copy.deepcopy(model.state_dict())
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=2, learning_rate=1e-4,
        use_cpu=True, report_to=[], save_strategy="steps", save_steps=2, logging_steps=1,
        remove_unused_columns=False, dataloader_num_workers=0, gradient_checkpointing=True, disable_tqdm=True,
    )  # fmt: skip
    rows = _rows(inputs, labels_for(inputs, torch.float32), 2)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=rows, data_collator=_collate)
    result = trainer.train()
    assert result.global_step == 2
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    changed = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert len(changed) > 100
    checkpoint = tmp_path / "run" / "checkpoint-2"
    model.eval()
    with torch.no_grad():
        want = model(**inputs)
        theirs = transformers.MMGroundingDinoForObjectDetection.from_pretrained(checkpoint).eval()(**inputs)
        mine = Ours.from_pretrained(checkpoint)(**inputs)
    for got in (theirs, mine):
        torch.testing.assert_close(got.pred_boxes, want.pred_boxes, atol=1e-4, rtol=1e-4)
