"""output_attentions=True: transformers' attention maps (same structure, same values) and outputs, from
transformers' layers running over mmgdino's own tensors; gradients flow through them; the fast path never
builds that twin."""

import model_builders as mb
import pytest
import torch
import transformers
from test_dropin import flatten_tensors
from test_losses import labels_for
from test_training import no_dropout

import mmgdino
from mmgdino.modeling import attentions

FAMILIES = {
    "mm_grounding_dino": (mb.mm_grounding_dino, mmgdino.MMGroundingDinoForObjectDetection),
    "grounding_dino": (mb.grounding_dino, mmgdino.GroundingDinoForObjectDetection),
}


def _structure(value):
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    return [_structure(v) for v in value]


@pytest.mark.parametrize("family", FAMILIES)
def test_attention_maps_are_transformers(family):
    build, ours_class = FAMILIES[family]
    hf = build()
    ours = ours_class.from_transformers(hf)
    inputs = mb.grounding_inputs()
    with torch.no_grad():
        theirs = hf(**inputs, output_attentions=True, output_hidden_states=True)
        mine = ours(**inputs, output_attentions=True, output_hidden_states=True)
    assert list(mine.keys()) == list(theirs.keys())
    for name in ("encoder_attentions", "decoder_attentions"):
        assert _structure(mine[name]) == _structure(theirs[name]), name
        for got, want in zip(flatten_tensors(mine[name]), flatten_tensors(theirs[name])):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4, msg=name)
    finite = torch.isfinite(theirs.logits)
    torch.testing.assert_close(mine.logits[finite], theirs.logits[finite], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(mine.pred_boxes, theirs.pred_boxes, atol=1e-5, rtol=1e-4)
    ours.config.output_attentions = True  # the config flag asks too, as in transformers
    with torch.no_grad():
        assert len(ours(**inputs).encoder_attentions) == 4
    ours.config.output_attentions = False


def test_base_model_attentions_and_the_fast_path_never_builds_the_twin():
    hf = mb.mm_grounding_dino()
    theirs = transformers.MMGroundingDinoModel(hf.config)
    theirs.load_state_dict(hf.model.state_dict(), strict=False)
    ours = mmgdino.MMGroundingDinoModel.from_transformers(theirs.eval())
    inputs = mb.grounding_inputs()
    with torch.no_grad():
        ours(**inputs)
        assert ours not in attentions._references
        want, got = theirs(**inputs, output_attentions=True), ours(**inputs, output_attentions=True)
    assert ours in attentions._references
    for got_map, want_map in zip(flatten_tensors(got.encoder_attentions), flatten_tensors(want.encoder_attentions)):
        torch.testing.assert_close(got_map, want_map, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="pass those instead of prompt_features"):
        ours(output_attentions=True, prompt_features=ours.encode_prompt(inputs["input_ids"]),
             pixel_values=inputs["pixel_values"])  # fmt: skip


def test_the_twin_shares_our_tensors_and_follows_replaced_ones():
    model = mmgdino.MMGroundingDinoForObjectDetection.from_transformers(mb.mm_grounding_dino())
    inputs = mb.grounding_inputs()
    with torch.no_grad():
        model(**inputs, output_attentions=True)
        twin = attentions._references[model.model]
        twin_tensors = {id(t) for t in (*twin.parameters(), *twin.buffers())}
        assert {id(p) for p in model.parameters()} <= twin_tensors  # ours, not copies
        # A replaced parameter object (load_state_dict(assign=True), to_empty, ...) is picked up on the next call.
        layer = model.model.encoder.layers[0].fusion_layer
        layer.vision_param = torch.nn.Parameter(layer.vision_param * 50)
        fast = model(**inputs)
        slow = model(**inputs, output_attentions=True)
    torch.testing.assert_close(slow.encoder_last_hidden_state_vision, fast.encoder_last_hidden_state_vision,
                               atol=1e-4, rtol=1e-4)  # fmt: skip


def test_gradients_through_the_attention_path_match_the_fast_path():
    model = no_dropout().train()
    inputs = mb.grounding_inputs()
    labels = labels_for(inputs, torch.float32)
    grads = []
    for output_attentions in (False, True):
        model.zero_grad(set_to_none=True)
        out = model(**inputs, labels=labels, output_attentions=output_attentions)
        if output_attentions:
            assert out.encoder_attentions[0][0].requires_grad
        out.loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    fast, slow = grads
    assert fast.keys() == slow.keys()
    want = torch.cat([g.flatten() for g in fast.values()])
    got = torch.cat([slow[n].flatten() for n in fast])
    assert (got - want).norm() <= 1e-4 * want.norm()
