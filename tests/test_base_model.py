"""mmgdino.MMGroundingDinoModel / GroundingDinoModel against transformers' base models: the same outputs (the
all-pixel proposal outputs when asked), checkpoints both ways, the base-model prefix, Auto classes."""

import model_builders as mb
import pytest
import torch
import transformers
from test_dropin import restore_auto_classes

import mmgdino

FAMILIES = {
    "mm_grounding_dino": (mb.mm_grounding_dino, mmgdino.MMGroundingDinoModel, transformers.MMGroundingDinoModel),
    "grounding_dino": (mb.grounding_dino, mmgdino.GroundingDinoModel, transformers.GroundingDinoModel),
}


@pytest.fixture(params=list(FAMILIES), scope="module")
def family(request):
    build, ours_class, theirs_class = FAMILIES[request.param]
    detector = build()
    theirs = theirs_class(detector.config)  # a bare base model: no box heads, so the decoder does not refine
    theirs.load_state_dict(detector.model.state_dict(), strict=False)
    return theirs.eval(), ours_class.from_transformers(theirs), ours_class


def assert_same(ours, theirs, names):
    for name in names:
        want, got = theirs[name], ours[name]
        finite = torch.isfinite(want)
        assert torch.equal(torch.isfinite(got), finite), name
        torch.testing.assert_close(got[finite], want[finite], atol=1e-4, rtol=1e-4, msg=name)


def test_same_outputs_as_transformers_base_model(family):
    theirs_model, ours_model, ours_class = family
    inputs = mb.grounding_inputs()
    with torch.no_grad():
        theirs = theirs_model(**inputs, output_hidden_states=True)
        ours = ours_model(**inputs, output_hidden_states=True)
        with_proposals = ours_model(**inputs, output_proposal_logits=True)
    assert type(ours) is type(theirs)
    skipped = {"enc_outputs_class", "enc_outputs_coord_logits"}  # all-pixel outputs: only when asked
    assert set(ours.keys()) == set(theirs.keys()) - skipped
    tensors = [k for k in ours.keys() if isinstance(ours[k], torch.Tensor)]
    assert_same(ours, theirs, tensors)
    for name in ("encoder_vision_hidden_states", "encoder_text_hidden_states", "decoder_hidden_states"):
        assert len(ours[name]) == len(theirs[name])
        for got, want in zip(ours[name], theirs[name]):
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4, msg=name)
    assert_same(with_proposals, theirs, sorted(skipped))
    # No box heads: the reference boxes stay the proposals' in every layer, as in transformers.
    torch.testing.assert_close(ours.intermediate_reference_points[:, -1], ours.init_reference_points)
    assert isinstance(ours_model, transformers.PreTrainedModel) and ours_class.base_model_prefix == "model"


def test_checkpoints_go_both_ways_and_the_base_prefix_is_understood(family, tmp_path):
    theirs_model, ours_model, ours_class = family
    inputs = mb.grounding_inputs()
    theirs_class = type(theirs_model)
    ours_model.save_pretrained(tmp_path / "ours")
    with torch.no_grad():
        want = ours_model(**inputs).last_hidden_state
        loaded = theirs_class.from_pretrained(tmp_path / "ours").eval()(**inputs).last_hidden_state
        again = ours_class.from_pretrained(tmp_path / "ours")(**inputs).last_hidden_state
    torch.testing.assert_close(loaded, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(again, want)
    # A detection checkpoint's `model.` weights load into the base model (and the detection class from a base
    # checkpoint leaves only its heads missing), as transformers' prefix rules say.
    detector = mmgdino.MMGroundingDinoForObjectDetection.from_config(theirs_model.config)
    detector.model.load_state_dict(ours_model.state_dict(), strict=False)  # the heads stay as initialized
    detector.save_pretrained(tmp_path / "detector")
    with torch.no_grad():
        from_detector = ours_class.from_pretrained(tmp_path / "detector")(**inputs)
    # the detection checkpoint's decoder refines boxes with its heads; the base model alone does not
    torch.testing.assert_close(
        from_detector.encoder_last_hidden_state_vision, ours_model(**inputs).encoder_last_hidden_state_vision
    )
    _, info = mmgdino.MMGroundingDinoForObjectDetection.from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert info["missing_keys"] and all(
        k.startswith(("bbox_embed", "class_embed", "model.decoder")) for k in info["missing_keys"]
    )


def test_auto_model_resolves_to_mmgdino_when_asked(family, tmp_path):
    theirs_model, ours_model, ours_class = family
    ours_model.save_pretrained(tmp_path)
    assert type(transformers.AutoModel.from_pretrained(tmp_path)) is type(theirs_model)
    try:
        mmgdino.register_auto_classes()
        assert type(transformers.AutoModel.from_pretrained(tmp_path)) is ours_class
    finally:
        restore_auto_classes()
