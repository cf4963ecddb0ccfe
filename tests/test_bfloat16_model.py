"""The model in bfloat16 against the same weights in float32, stage by stage.

End to end, bfloat16 rounding reselects proposals in the two-stage top-k (with random weights thousands of pixels
score nearly the same), after which the decoders attend to different queries and nothing is comparable. So each
stage is fed the float32 model's own input (rounded to bfloat16) and its output compared with float32's: the
backbone and prompt features, every encoder layer, the proposal scores, every decoder layer, and the decoder and
heads run on float32's selected proposals. Tolerances (relative error): 1e-2 for one layer (measured 1e-3 to
8e-3); 2e-2 for the backbone (Swin and the projections) and BERT, several layers deep (measured 4e-3 to 7e-3)."""

import dataclasses

import model_builders as mb
import pytest
import torch
from helpers import rel_err

from mmgdino import MMGroundingDinoForObjectDetection as Ours
from mmgdino.modeling.features import Context
from mmgdino.modeling.layers import sine_embedding

LAYER_TOL = 1e-2
DEEP_TOL = 2e-2


def _bf16(x):
    if isinstance(x, torch.Tensor):
        return x.to(torch.bfloat16) if x.is_floating_point() else x
    if isinstance(x, (tuple, list)):
        return type(x)(_bf16(v) for v in x)
    if dataclasses.is_dataclass(x):
        return dataclasses.replace(x, **{f.name: _bf16(getattr(x, f.name)) for f in dataclasses.fields(x)})
    return x


@pytest.fixture(scope="module")
def models():
    hf = mb.mm_grounding_dino(4, encoder_layers=3, decoder_layers=3, num_queries=20)
    full = Ours.from_transformers(hf).eval()
    half = Ours.from_transformers(hf).eval().to(torch.bfloat16)
    return full, half, mb.grounding_inputs(batch=2, height=96, width=128)


def _stage_inputs(model, inputs):
    """Every stage's float32 input and output, from the float32 model."""
    with torch.no_grad():
        prompt = model.encode_prompt(inputs["input_ids"], None, inputs["attention_mask"])
        image = model.encode_image(inputs["pixel_values"], inputs["pixel_mask"])
        ctx = Context.of(image, prompt.expand(image.batch))
        vision, text = image.vision, prompt.expand(image.batch).text
        layers = []
        for layer in model.model.encoder.layers:
            out = layer(vision, text, ctx.vision_pos, ctx)
            layers.append(((vision, text), out))
            vision, text = out
        queries, reference_points, _, _ = model.model.propose(vision, text, prompt.expand(image.batch).text, ctx)
    return dict(prompt=prompt, image=image, ctx=ctx, encoder=layers, memory=(vision, text),
                proposals=(queries, reference_points))  # fmt: skip


def test_features_agree(models):
    full, half, inputs = models
    with torch.no_grad():
        want_prompt = full.encode_prompt(inputs["input_ids"], None, inputs["attention_mask"])
        got_prompt = half.encode_prompt(inputs["input_ids"], None, inputs["attention_mask"])
        want_image = full.encode_image(inputs["pixel_values"], inputs["pixel_mask"])
        got_image = half.encode_image(_bf16(inputs["pixel_values"]), inputs["pixel_mask"])
    assert got_image.vision.dtype == torch.bfloat16
    assert rel_err(got_prompt.text, want_prompt.text) <= DEEP_TOL  # text features
    assert rel_err(got_image.vision, want_image.vision) <= DEEP_TOL  # every level's projected backbone features
    assert rel_err(got_image.position, want_image.position) <= LAYER_TOL  # position + level embeddings
    assert torch.equal(got_image.keep, want_image.keep)  # the pixel mask


def test_every_encoder_layer_agrees(models):
    full, half, inputs = models
    stages = _stage_inputs(full, inputs)
    ctx = _bf16(stages["ctx"])
    with torch.no_grad():
        for index, (layer, ((vision, text), (want_vision, want_text))) in enumerate(
            zip(half.model.encoder.layers, stages["encoder"])
        ):
            got_vision, got_text = layer(_bf16(vision), _bf16(text), ctx.vision_pos, ctx)
            assert got_vision.dtype == torch.bfloat16
            assert rel_err(got_vision, want_vision) <= LAYER_TOL, f"encoder layer {index} vision"
            assert rel_err(got_text, want_text) <= LAYER_TOL, f"encoder layer {index} text"


def test_proposal_scores_agree(models):
    full, half, inputs = models
    stages = _stage_inputs(full, inputs)
    memory, text = stages["memory"]
    ctx = stages["ctx"]
    with torch.no_grad():
        want_query, _ = full.model.pixel_proposals(memory, ctx)
        want = full.model.encoder_output_class_embed.best(want_query, text, ctx.text_keep)
        got_query, _ = half.model.pixel_proposals(_bf16(memory), _bf16(ctx))
        got = half.model.encoder_output_class_embed.best(got_query, _bf16(text), ctx.text_keep)
    assert got.dtype == torch.float32  # the scores the top-k ranks stay float32
    assert rel_err(got_query, want_query) <= LAYER_TOL
    assert rel_err(got, want) <= LAYER_TOL


def test_decoder_on_float32_proposals_agrees(models):
    """Each decoder layer, then the whole decoder and heads from float32's selected proposals: the same boxes
    within 1e-2 and the same best token for at least 99% of the queries."""
    full, half, inputs = models
    stages = _stage_inputs(full, inputs)
    memory, text = stages["memory"]
    queries, reference_points = stages["proposals"]
    ctx = stages["ctx"]
    decoder_full, decoder_half = full.model.decoder, half.model.decoder
    with torch.no_grad():
        want = full.decode(queries, reference_points, memory, text, ctx)
        # The proposal boxes are float32 in both models (bf16 keeps boxes in float32).
        assert reference_points.dtype == torch.float32
        got = half.decode(_bf16(queries), reference_points, _bf16(memory), _bf16(text), _bf16(ctx))
        # Layer by layer: float32's input to layer i (its hidden state and reference boxes) into bf16's layer i.
        box_scale = torch.cat([ctx.valid_ratios, ctx.valid_ratios], -1)[:, None]
        references = [reference_points] + list(want[3].unbind(1))
        layer_in = queries
        for index, (layer_full, layer_half) in enumerate(zip(decoder_full.layers, decoder_half.layers)):
            per_level = references[index][:, :, None] * box_scale
            query_pos = decoder_full.reference_points_head(
                sine_embedding(per_level[:, :, 0], decoder_full.d_model // 2)
            )
            want_layer_out = layer_full(layer_in, query_pos, per_level, memory, text, ctx)
            got_layer_out = layer_half(_bf16(layer_in), _bf16(query_pos), _bf16(per_level), _bf16(memory),
                                       _bf16(text), _bf16(ctx))  # fmt: skip
            assert rel_err(got_layer_out, want_layer_out) <= LAYER_TOL, f"decoder layer {index}"
            layer_in = want_layer_out
    logits, boxes = got[0], got[1]
    assert logits.dtype == torch.float32
    finite = torch.isfinite(want[0])
    assert torch.equal(torch.isfinite(logits), finite)
    assert boxes.dtype == torch.bfloat16  # returned in the model's dtype, as transformers does
    assert (boxes.float() - want[1]).abs().max() <= 1e-2  # measured 2e-3: the final rounding to bfloat16
    same_token = (logits.argmax(-1) == want[0].argmax(-1)).float().mean().item()
    assert same_token >= 0.99, same_token
