"""labels= against transformers: the same loss, loss_dict and gradient of every parameter for the same weights and
batch (tiny random-weight configs with the zero-initialized heads randomized, dropout off), computed through
mmgdino's operators (the deformable-attention backward and the fused contrastive head), and clear errors for
malformed labels.

Tolerances: float64 (transformers' matcher builds its label maps in the default dtype, so the default dtype is
float64 for those tests): the loss terms within 1e-12 relative; every parameter's gradient within 1e-9 of its
norm plus 1e-12 of the whole gradient's (parameters whose true gradient is zero, such as a key bias under a
softmax, carry rounding noise only). float32: loss terms within 1e-5, the whole gradient within 1e-4."""

import contextlib

import model_builders as mb
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mmgdino import MMGroundingDinoForObjectDetection as Ours

CASES = {
    "mm_grounding_dino": lambda: mb.mm_grounding_dino(4),
    "mm_grounding_dino_untied_heads_auxiliary_loss": lambda: mb.mm_grounding_dino(
        4, decoder_bbox_embed_share=False, decoder_cls_embed_share=False, auxiliary_loss=True
    ),
    "mm_grounding_dino_5_levels_auxiliary_loss": lambda: mb.mm_grounding_dino(5, auxiliary_loss=True),
    "grounding_dino_auxiliary_loss": lambda: mb.grounding_dino(auxiliary_loss=True),
}


def labels_for(inputs, dtype, seed=3):
    """Targets for mb.grounding_inputs' prompts (3 and 2 phrases): phrase indices and normalized boxes."""
    gen = torch.Generator().manual_seed(seed)
    labels = []
    for phrases, boxes in ((3, 4), (2, 3))[: inputs["input_ids"].shape[0]]:
        centers = torch.rand(boxes, 2, generator=gen) * 0.6 + 0.2
        sizes = torch.rand(boxes, 2, generator=gen) * 0.3 + 0.05
        labels.append({"class_labels": torch.randint(0, phrases, (boxes,), generator=gen),
                       "boxes": torch.cat([centers, sizes], 1).to(dtype)})  # fmt: skip
    return labels


@contextlib.contextmanager
def default_dtype(dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def loss_and_grads(model, inputs, labels, **kwargs):
    model.zero_grad(set_to_none=True)
    out = model(**inputs, labels=labels, **kwargs)
    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters(remove_duplicate=False)}
    return out, grads


def both(build, dtype):
    hf = build().eval()
    ours = Ours.from_transformers(hf).eval()
    inputs = {k: v.to(dtype) if v.is_floating_point() else v for k, v in mb.grounding_inputs().items()}
    labels = labels_for(inputs, dtype)
    return hf.to(dtype), ours.to(dtype), inputs, labels


def assert_same_losses(theirs, ours, rtol):
    assert sorted(ours.loss_dict) == sorted(theirs.loss_dict)
    for key, value in theirs.loss_dict.items():
        torch.testing.assert_close(ours.loss_dict[key], value, rtol=rtol, atol=0, msg=key)
    torch.testing.assert_close(ours.loss, theirs.loss, rtol=rtol, atol=0)


@pytest.mark.parametrize("case", CASES)
def test_loss_and_every_gradient_match_transformers_in_float64(case):
    with default_dtype(torch.float64):
        hf, ours, inputs, labels = both(CASES[case], torch.float64)
        theirs_out, theirs_grads = loss_and_grads(hf, inputs, labels)
        ours_out, ours_grads = loss_and_grads(ours, inputs, labels)
    assert_same_losses(theirs_out, ours_out, rtol=1e-12)
    if hf.config.auxiliary_loss:
        assert len(ours_out.auxiliary_outputs) == hf.config.decoder_layers - 1
        assert f"loss_ce_{hf.config.decoder_layers - 2}" in ours_out.loss_dict
    assert ours_grads.keys() == theirs_grads.keys()
    # The same parameters go without a gradient: transformers detaches the two-stage proposals (enc_output,
    # enc_output_norm, encoder_output_bbox_embed) and Swin's last layer norm is unused by its backbone.
    assert {n for n, g in ours_grads.items() if g is None} == {n for n, g in theirs_grads.items() if g is None}
    total = torch.cat([g.flatten() for g in theirs_grads.values() if g is not None]).norm()
    for name, want in theirs_grads.items():
        if want is not None:
            assert (ours_grads[name] - want).norm() <= 1e-9 * want.norm() + 1e-12 * total, name


def test_float32_loss_and_gradients_within_the_stated_tolerance():
    hf, ours, inputs, labels = both(CASES["mm_grounding_dino_untied_heads_auxiliary_loss"], torch.float32)
    theirs_out, theirs_grads = loss_and_grads(hf, inputs, labels)
    ours_out, ours_grads = loss_and_grads(ours, inputs, labels)
    assert_same_losses(theirs_out, ours_out, rtol=1e-5)
    names = [n for n, g in theirs_grads.items() if g is not None]
    want = torch.cat([theirs_grads[n].flatten() for n in names])
    got = torch.cat([ours_grads[n].flatten() for n in names])
    assert (got - want).norm() / want.norm() <= 1e-4


class _OpLog(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def _graph_nodes(tensor):
    seen, stack = set(), [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return [type(node).__name__ for node in seen]


def test_gradients_flow_through_mmgdino_kernels():
    """Every deformable attention's backward is mmgdino's ms_deform_attn_backward operator, and every phrase head
    (the decoder layers' and the proposals') is mmgdino's contrastive_logits with its own backward."""
    hf = mb.mm_grounding_dino(4, auxiliary_loss=True)
    ours = Ours.from_transformers(hf).eval()
    inputs = mb.grounding_inputs()
    config = hf.config
    out = ours(**inputs, labels=labels_for(inputs, torch.float32))
    nodes = _graph_nodes(out.loss)
    assert sum("mmgdino_contrastive_logits" in n for n in nodes) == config.decoder_layers + 1  # and the proposals
    assert sum("mmgdino_ms_deform_attn" in n for n in nodes) == config.encoder_layers + config.decoder_layers
    assert not any("GridSampler" in n for n in nodes)  # no torch formulation of the deformable attention
    with _OpLog() as log:
        out.loss.backward()
    backward_calls = sum(op.startswith("mmgdino.ms_deform_attn_backward") for op in log.ops)
    assert backward_calls == config.encoder_layers + config.decoder_layers
    assert ours.model.encoder.layers[0].deformable_layer.self_attn.sampling_offsets.weight.grad.abs().sum() > 0
    assert ours.class_embed[0].bias.grad is not None and ours.model.encoder_output_class_embed.bias.grad is not None


def test_tuple_output_spreads_the_auxiliary_outputs_as_transformers_does():
    """With the all-pixel proposal outputs (which mmgdino computes only when asked), the tuple holds what
    transformers' holds, in its order."""
    hf, ours, inputs, labels = both(CASES["mm_grounding_dino_5_levels_auxiliary_loss"], torch.float32)
    with torch.no_grad():
        theirs = hf(**inputs, labels=labels, return_dict=False)
        mine = ours(**inputs, labels=labels, return_dict=False, output_proposal_logits=True)
    assert len(mine) == len(theirs)
    for index, (a, b) in enumerate(zip(mine, theirs)):
        assert type(a) is type(b), index
    torch.testing.assert_close(mine[0], theirs[0], rtol=1e-5, atol=0)
    aux = mine[4 : 4 + hf.config.decoder_layers - 1]
    assert all(isinstance(a, dict) and set(a) >= {"logits", "pred_boxes"} for a in aux)


def test_prompt_features_with_labels_give_the_same_loss():
    hf = mb.mm_grounding_dino(4)
    ours = Ours.from_transformers(hf).eval()
    inputs = mb.grounding_inputs()
    labels = labels_for(inputs, torch.float32)
    with torch.no_grad():
        want = ours(**inputs, labels=labels).loss
        prompt = ours.encode_prompt(inputs["input_ids"], None, inputs["attention_mask"])
        image = ours.encode_image(inputs["pixel_values"], inputs["pixel_mask"])
        got = ours(prompt_features=prompt, image_features=image, labels=labels).loss
    torch.testing.assert_close(got, want)


def test_malformed_labels_are_one_clear_error(monkeypatch):
    untied = dict(decoder_bbox_embed_share=False, decoder_cls_embed_share=False)
    ours = Ours.from_transformers(mb.mm_grounding_dino(4, encoder_layers=1, decoder_layers=1, **untied))
    inputs = mb.grounding_inputs()
    good = labels_for(inputs, torch.float32)
    bad = {
        "must be a list of 2 dicts": good[:1],
        r"labels\[1\] must be a dict with 'class_labels' and 'boxes'": [good[0], {"boxes": good[1]["boxes"]}],
        r"labels\[0\]\['class_labels'\] must be a 1-D integer tensor": [
            {"class_labels": good[0]["class_labels"].float(), "boxes": good[0]["boxes"]}, good[1]],
        r"labels\[1\]\['boxes'\] must be a float tensor of shape \(3, 4\)": [
            good[0], {"class_labels": good[1]["class_labels"], "boxes": good[1]["boxes"][:, :2]}],
        r"labels\[0\]: class_labels must be >= 0 and boxes finite": [
            {"class_labels": good[0]["class_labels"], "boxes": good[0]["boxes"] * torch.tensor([1, 1, -1, 1])},
            good[1]],
        r"labels\[1\]\['class_labels'\] holds phrase index 2, but that image's prompt has 2 phrases": [
            good[0], {"class_labels": torch.tensor([0, 2, 1]), "boxes": good[1]["boxes"]}],
    }  # fmt: skip
    for message, labels in bad.items():
        with pytest.raises(ValueError, match=message) as error:
            ours(**inputs, labels=labels)
        assert "\n" not in str(error.value)
    from transformers import utils

    monkeypatch.setattr(utils, "is_scipy_available", lambda: False)
    with pytest.raises(ImportError, match="pip install scipy"):
        ours(**inputs, labels=good)
