"""mmgdino.patch on live transformers models with random weights: same outputs, then unpatch restores."""

import pytest
import torch

import mmgdino
from mmgdino import ops


def _small_backbone_and_text():
    from transformers import BertConfig, SwinConfig

    backbone = SwinConfig(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 2, 2, 4], window_size=4,
                          out_indices=[2, 3, 4], image_size=64)
    text = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                      vocab_size=120)
    return backbone, text


def _grounding_inputs(batch=2, tokens=7):
    pixel_values = torch.randn(batch, 3, 64, 80)
    pixel_mask = torch.ones(batch, 64, 80, dtype=torch.long)
    pixel_mask[1, :, 60:] = 0  # a padded image
    input_ids = torch.randint(5, 100, (batch, tokens))
    attention_mask = torch.ones(batch, tokens, dtype=torch.long)
    attention_mask[1, 5:] = 0  # a padded prompt
    return dict(pixel_values=pixel_values, pixel_mask=pixel_mask, input_ids=input_ids, attention_mask=attention_mask)


def _mm_grounding_dino(levels=4):
    from transformers import MMGroundingDinoConfig, MMGroundingDinoForObjectDetection

    backbone, text = _small_backbone_and_text()
    if levels == 5:
        backbone.out_indices = [1, 2, 3, 4]
    config = MMGroundingDinoConfig(backbone_config=backbone, text_config=text, d_model=32, encoder_layers=1,
                                   decoder_layers=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=12,
                                   num_feature_levels=levels, encoder_attention_heads=2, decoder_attention_heads=2,
                                   max_text_len=16, fusion_dropout=0.0, dropout=0.0, attention_dropout=0.0,
                                   activation_dropout=0.0, use_timm_backbone=False, use_pretrained_backbone=False)
    model = MMGroundingDinoForObjectDetection(config).eval()
    with torch.no_grad():  # per-layer biases as in real checkpoints, not the shared init
        for i, head in enumerate(model.class_embed):
            head.bias.fill_(-4.0 + 0.3 * i)
    return model


def _grounding_dino():
    from transformers import GroundingDinoConfig, GroundingDinoForObjectDetection

    backbone, text = _small_backbone_and_text()
    config = GroundingDinoConfig(backbone_config=backbone, text_config=text, d_model=32, encoder_layers=1,
                                 decoder_layers=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=12,
                                 num_feature_levels=4, encoder_attention_heads=2, decoder_attention_heads=2,
                                 max_text_len=16, use_timm_backbone=False, use_pretrained_backbone=False)
    return GroundingDinoForObjectDetection(config).eval()


def _assert_same_detections(ours, theirs):
    finite = torch.isfinite(theirs.logits)
    assert torch.equal(torch.isfinite(ours.logits), finite), "-inf positions differ"
    torch.testing.assert_close(ours.logits[finite], theirs.logits[finite], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours.pred_boxes, theirs.pred_boxes, atol=1e-4, rtol=1e-4)
    assert ours.logits.dtype == theirs.logits.dtype == torch.float32


@pytest.mark.parametrize("family", ["mm_grounding_dino_4", "mm_grounding_dino_5", "grounding_dino"])
def test_patch_keeps_outputs_and_unpatch_restores(family):
    model = {"mm_grounding_dino_4": lambda: _mm_grounding_dino(4), "mm_grounding_dino_5": lambda: _mm_grounding_dino(5),
             "grounding_dino": _grounding_dino}[family]()
    inputs = _grounding_inputs()
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
        model(**_grounding_inputs())
    assert calls.count("msda") == 1 + 2  # one encoder layer, two decoder layers


def test_patch_deformable_detr():
    from transformers import DeformableDetrConfig, DeformableDetrForObjectDetection, ResNetConfig

    config = DeformableDetrConfig(backbone_config=ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 24, 32],
                                                               depths=[1, 1, 1, 1], out_features=["stage2", "stage3", "stage4"]),
                                  use_timm_backbone=False, use_pretrained_backbone=False, d_model=32, encoder_layers=1,
                                  decoder_layers=2, encoder_ffn_dim=32, decoder_ffn_dim=32, num_queries=10,
                                  encoder_attention_heads=2, decoder_attention_heads=2)
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
