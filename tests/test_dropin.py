"""Drop-in means drop-in: checks in the manner of transformers' ModelTesterMixin, run on mmgdino's classes for MM
Grounding DINO and Grounding DINO configs (outputs per config flag, tuple vs dict, save and load with
transformers' arguments, tied weights, dtypes, the PreTrainedModel API pipelines, Auto classes and Trainer use).
transformers' own suites run against the classes in CI (.ci/transformers_suite.sh); losses, training and
attention maps have their own files (test_losses.py, test_training.py, test_attentions.py)."""

import copy

import model_builders as mb
import numpy as np
import pytest
import torch
import transformers
from PIL import Image

import mmgdino
from mmgdino import GroundingDinoForObjectDetection, MMGroundingDinoForObjectDetection

FAMILIES = {
    "mm_grounding_dino": (mb.mm_grounding_dino, MMGroundingDinoForObjectDetection, "MMGroundingDino"),
    "grounding_dino": (mb.grounding_dino, GroundingDinoForObjectDetection, "GroundingDino"),
}


@pytest.fixture(params=list(FAMILIES), scope="module")
def family(request):
    build, ours_class, prefix = FAMILIES[request.param]
    hf = build()
    return hf, ours_class, ours_class.from_transformers(hf), getattr(transformers, f"{prefix}ForObjectDetection")


def _run(model, **kwargs):
    with torch.no_grad():
        return model(**mb.grounding_inputs(), **kwargs)


def flatten_tensors(output):
    """Every tensor of a (nested) output, in order."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, (tuple, list)):
        return [t for item in output for t in flatten_tensors(item)]
    return []


def test_config_flags_change_the_outputs_as_in_transformers(family):
    hf, _, ours, _ = family
    ours = copy.deepcopy(ours)
    assert _run(ours).encoder_vision_hidden_states is None
    ours.config.output_hidden_states = True
    hidden = _run(ours)
    theirs = _run(hf, output_hidden_states=True)
    for field in ("encoder_vision_hidden_states", "encoder_text_hidden_states", "decoder_hidden_states"):
        assert len(getattr(hidden, field)) == len(getattr(theirs, field)), field
    assert _run(ours, output_hidden_states=False).encoder_vision_hidden_states is None  # the argument wins
    ours.config.output_hidden_states = False
    ours.config.return_dict = False
    as_tuple = _run(ours)
    assert isinstance(as_tuple, tuple)
    assert not isinstance(_run(ours, return_dict=True), tuple)


def test_tuple_and_dict_outputs_are_the_same_tensors(family):
    _, _, ours, _ = family
    for flags in ({}, {"output_hidden_states": True}, {"output_proposal_logits": True}):
        as_dict = _run(ours, return_dict=True, **flags)
        as_tuple = _run(ours, return_dict=False, **flags)
        dict_tensors, tuple_tensors = flatten_tensors(as_dict.to_tuple()), flatten_tensors(as_tuple)
        assert len(dict_tensors) == len(tuple_tensors) > 0
        for a, b in zip(dict_tensors, tuple_tensors):
            assert torch.equal(a, b)
        assert torch.equal(as_tuple[0], as_dict.logits) and torch.equal(as_tuple[1], as_dict.pred_boxes)


def test_it_is_a_pretrained_model_with_transformers_machinery(family):
    hf, ours_class, ours, _ = family
    assert isinstance(ours, transformers.PreTrainedModel) and isinstance(ours.model, transformers.PreTrainedModel)
    assert ours.supports_gradient_checkpointing is True
    assert isinstance(ours._keep_in_fp32_modules, set) and ours._keep_in_fp32_modules == set()
    assert ours.get_memory_footprint() == hf.get_memory_footprint()
    assert ours.base_model is ours.model
    with pytest.raises(NotImplementedError, match="encoder_outputs"):
        _run(ours, encoder_outputs=(torch.zeros(1),))


def test_model_api_that_tests_pipelines_and_auto_classes_use(family):
    hf, ours_class, ours, theirs_class = family
    for name in ("main_input_name", "base_model_prefix", "config_class", "_tied_weights_keys", "input_modalities"):
        assert getattr(ours_class, name) == getattr(theirs_class, name), name
    assert ours.config_class is type(hf.config)
    assert ours_class.can_generate() is False and ours.get_output_embeddings() is None
    assert ours.get_input_embeddings() is ours.model.text_backbone.get_input_embeddings()
    assert ours.num_parameters() == hf.num_parameters()
    assert ours.num_parameters(exclude_embeddings=True) < ours.num_parameters()
    assert ours.num_parameters(only_trainable=True) == ours.num_parameters()
    built = ours_class._from_config(hf.config, torch_dtype=torch.float16)
    assert isinstance(built, ours_class) and built.dtype == torch.float16
    built.init_weights()  # transformers' name for (re)initializing
    assert torch.isfinite(next(built.parameters())).all()


def test_tied_heads_are_one_module_as_transformers_ties_them(family):
    hf, _, ours, _ = family
    # transformers shares the parameters of separate modules; mmgdino repeats one module. Same weights either way.
    theirs_tied = hf.bbox_embed[0].layers[0].weight is hf.bbox_embed[-1].layers[0].weight
    assert (ours.bbox_embed[0] is ours.bbox_embed[-1]) == theirs_tied == hf.config.decoder_bbox_embed_share
    assert ours.model.decoder.bbox_embed is ours.bbox_embed


def test_save_and_load_with_transformers_arguments(family, tmp_path):
    hf, ours_class, ours, theirs_class = family
    reference = _run(ours)
    ours.save_pretrained(tmp_path / "ours", safe_serialization=True)
    assert (tmp_path / "ours" / "model.safetensors").is_file()
    again = ours_class.from_pretrained(tmp_path / "ours")
    torch.testing.assert_close(_run(again).logits, reference.logits)
    torch.testing.assert_close(_run(theirs_class.from_pretrained(tmp_path / "ours").eval()).logits, reference.logits,
                               atol=1e-4, rtol=1e-4)  # fmt: skip
    loaded, info = ours_class.from_pretrained(pretrained_model_name_or_path=tmp_path / "ours", output_loading_info=True)
    assert info["missing_keys"] == set() or not info["missing_keys"]
    assert not info["unexpected_keys"]
    assert ours_class.from_pretrained(tmp_path / "ours", torch_dtype=torch.bfloat16).dtype == torch.bfloat16
    assert ours_class.from_pretrained(tmp_path / "ours", dtype=torch.float16).dtype == torch.float16
    from_state = ours_class.from_pretrained(None, config=hf.config, state_dict=hf.state_dict())
    torch.testing.assert_close(_run(from_state).logits, reference.logits)
    config = copy.deepcopy(hf.config)
    config.output_hidden_states = True
    with_config = ours_class.from_pretrained(tmp_path / "ours", config=config)
    assert _run(with_config).encoder_vision_hidden_states is not None


def test_zero_shot_pipeline_gives_transformers_results(family, tmp_path):
    hf, _, ours, _ = family
    processor = mb.offline_processor(tmp_path)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8))
    results = []
    for model in (hf, ours):
        pipe = transformers.pipeline("zero-shot-object-detection", model=model, tokenizer=processor.tokenizer,
                                     image_processor=processor.image_processor)  # fmt: skip
        results.append(pipe(image, candidate_labels=["w200", "w201"], threshold=0.0)[:5])
    for theirs, mine in zip(*results):
        assert theirs["label"] == mine["label"] and theirs["box"] == mine["box"]
        assert mine["score"] == pytest.approx(theirs["score"], abs=1e-4)


def restore_auto_classes():
    for cls in (transformers.MMGroundingDinoForObjectDetection, transformers.GroundingDinoForObjectDetection):
        transformers.AutoModelForZeroShotObjectDetection.register(cls.config_class, cls, exist_ok=True)
    for cls in (transformers.MMGroundingDinoModel, transformers.GroundingDinoModel):
        transformers.AutoModel.register(cls.config_class, cls, exist_ok=True)


def test_auto_classes_resolve_to_mmgdino_when_asked(family, tmp_path):
    hf, ours_class, ours, theirs_class = family
    ours.save_pretrained(tmp_path)
    auto = transformers.AutoModelForZeroShotObjectDetection
    assert type(auto.from_pretrained(tmp_path)) is theirs_class  # nothing changes unless asked
    try:
        mmgdino.register_auto_classes()
        assert type(auto.from_pretrained(tmp_path)) is ours_class
    finally:
        restore_auto_classes()
    assert type(auto.from_pretrained(tmp_path)) is theirs_class
