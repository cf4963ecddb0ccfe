"""mmgdino.patch on live transformers models with random weights: same outputs, then unpatch restores."""

import model_builders as mb
import pytest
import torch

import mmgdino
from mmgdino import ops


def _mm_grounding_dino(levels=4):
    return mb.mm_grounding_dino(levels, encoder_layers=1, decoder_layers=2)


def _grounding_dino():
    return mb.grounding_dino(encoder_layers=1, decoder_layers=2)


def _assert_same_detections(ours, theirs):
    finite = torch.isfinite(theirs.logits)
    assert torch.equal(torch.isfinite(ours.logits), finite), "-inf positions differ"
    torch.testing.assert_close(ours.logits[finite], theirs.logits[finite], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours.pred_boxes, theirs.pred_boxes, atol=1e-4, rtol=1e-4)
    assert ours.logits.dtype == theirs.logits.dtype == torch.float32


@pytest.mark.parametrize("family", ["mm_grounding_dino_4", "mm_grounding_dino_5", "grounding_dino"])
def test_patch_keeps_outputs_and_unpatch_restores(family):
    model = {
        "mm_grounding_dino_4": lambda: _mm_grounding_dino(4),
        "mm_grounding_dino_5": lambda: _mm_grounding_dino(5),
        "grounding_dino": _grounding_dino,
    }[family]()
    inputs = mb.grounding_inputs()
    with torch.no_grad():
        reference = model(**inputs)
        assert mmgdino.patch(model) is model and mmgdino.is_patched(model)
        patched = model(**inputs)
        _assert_same_detections(patched, reference)
        mmgdino.unpatch(model)
        assert not mmgdino.is_patched(model)
        torch.testing.assert_close(model(**inputs).logits, reference.logits, atol=0, rtol=0)


def test_patch_routes_calls_to_mmgdino_ops(monkeypatch):
    model = mmgdino.patch(_mm_grounding_dino())
    calls = []
    original = ops.ms_deform_attn
    monkeypatch.setattr(ops, "ms_deform_attn", lambda *a, **k: calls.append("msda") or original(*a, **k))
    with torch.no_grad():
        model(**mb.grounding_inputs())
    assert calls.count("msda") == 1 + 2  # one encoder layer, two decoder layers


def test_patch_deformable_detr():
    from transformers import DeformableDetrConfig, DeformableDetrForObjectDetection, ResNetConfig

    config = DeformableDetrConfig(
        backbone_config=ResNetConfig(
            embedding_size=8,
            hidden_sizes=[8, 16, 24, 32],
            depths=[1, 1, 1, 1],
            out_features=["stage2", "stage3", "stage4"],
        ),
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        d_model=32,
        encoder_layers=1,
        decoder_layers=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        num_queries=10,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
    )
    model = DeformableDetrForObjectDetection(config).eval()
    pixel_values = torch.randn(1, 3, 128, 160)
    with torch.no_grad():
        reference = model(pixel_values=pixel_values)
        patched = mmgdino.patch(model)(pixel_values=pixel_values)
    torch.testing.assert_close(patched.logits, reference.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(patched.pred_boxes, reference.pred_boxes, atol=1e-4, rtol=1e-4)


def test_patch_rejects_models_without_targets_and_bad_backends():
    with pytest.raises(ValueError, match="nothing|no MultiScaleDeformableAttention"):
        mmgdino.patch(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="unknown backend"):
        mmgdino.patch(_mm_grounding_dino(), backend="nope")


@pytest.mark.parametrize("family", ["mm_grounding_dino_4", "grounding_dino"])
def test_patched_model_trains_under_bf16_autocast_as_transformers_does(family):
    """Under autocast the contrastive head gets a bf16 side (a Linear's output) and a float32 side (a LayerNorm's):
    transformers' matmul casts both, so the patched head must too; the loss matches unpatched transformers'."""
    from test_losses import labels_for

    model = (_mm_grounding_dino if family.startswith("mm") else _grounding_dino)().train()
    inputs = mb.grounding_inputs()
    labels = labels_for(inputs, torch.float32)
    losses = []
    for patched in (False, True):
        if patched:
            mmgdino.patch(model)
        torch.manual_seed(0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(**inputs, labels=labels).loss
        loss.backward()
        assert torch.isfinite(loss) and all(
            torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None
        )
        model.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[1] == pytest.approx(losses[0], rel=2e-2)
