"""mmgdino.MMGroundingDinoForObjectDetection against transformers (random weights, small configs, padded batches):
same logits at finite positions, same -inf positions, same boxes and detections; loading and saving; dtypes."""

import json

import model_builders as mb
import pytest
import torch

import mmgdino
from mmgdino import MMGroundingDinoForObjectDetection as Ours
from mmgdino import ModelLoadError

FAMILIES = {
    "mm_grounding_dino_4_levels": lambda: mb.mm_grounding_dino(4),
    "mm_grounding_dino_5_levels": lambda: mb.mm_grounding_dino(5),
    "mm_grounding_dino_untied_heads": lambda: mb.mm_grounding_dino(
        4, decoder_bbox_embed_share=False, decoder_cls_embed_share=False
    ),
    # transformers cannot tie heads of a one-layer decoder, so that case is untied.
    "mm_grounding_dino_one_decoder_layer": lambda: mb.mm_grounding_dino(
        4, decoder_layers=1, decoder_bbox_embed_share=False, decoder_cls_embed_share=False
    ),
    "grounding_dino": lambda: mb.grounding_dino(),
    # Swin-B/L differ from Swin-T by width, depth and window (12 for the 384-pixel variants); a scaled-down twin.
    "mm_grounding_dino_swin_large_like": lambda: mb.mm_grounding_dino(
        4, backbone_overrides=dict(embed_dim=24, depths=[1, 1, 2, 1], num_heads=[1, 2, 3, 6], window_size=6)
    ),
}


def assert_same_detections(ours, theirs, tol=1e-4):
    finite = torch.isfinite(theirs.logits)
    assert ours.logits.dtype == torch.float32 and ours.logits.shape == theirs.logits.shape
    assert torch.equal(torch.isfinite(ours.logits), finite), "-inf positions differ"
    torch.testing.assert_close(ours.logits[finite], theirs.logits[finite], atol=tol, rtol=tol)
    torch.testing.assert_close(ours.pred_boxes, theirs.pred_boxes, atol=tol, rtol=tol)


@pytest.mark.parametrize("family", FAMILIES)
def test_matches_transformers_on_padded_batch(family):
    hf = FAMILIES[family]()
    inputs = mb.grounding_inputs()
    model = Ours.from_transformers(hf)
    with torch.no_grad():
        theirs = hf(**inputs)
        ours = model(**inputs)
    assert_same_detections(ours, theirs)
    for field in (
        "last_hidden_state",
        "encoder_last_hidden_state_vision",
        "encoder_last_hidden_state_text",
        "init_reference_points",
        "intermediate_hidden_states",
        "intermediate_reference_points",
    ):
        torch.testing.assert_close(getattr(ours, field), getattr(theirs, field), atol=1e-4, rtol=1e-4, msg=field)
    assert torch.equal(ours.input_ids, theirs.input_ids)
    assert type(ours) is type(theirs)
    # The proposals' phrase logits and boxes (what the encoder loss scores) as transformers gives them.
    finite = torch.isfinite(theirs.encoder_logits)
    assert torch.equal(torch.isfinite(ours.encoder_logits), finite)
    torch.testing.assert_close(ours.encoder_logits[finite], theirs.encoder_logits[finite], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours.encoder_pred_boxes, theirs.encoder_pred_boxes, atol=1e-4, rtol=1e-4)
    # The all-pixel outputs are skipped unless asked for.
    assert ours.enc_outputs_class is None and ours.enc_outputs_coord_logits is None


def test_proposal_logits_on_request():
    hf = mb.mm_grounding_dino()
    inputs = mb.grounding_inputs()
    with torch.no_grad():
        theirs = hf(**inputs)
        ours = Ours.from_transformers(hf)(**inputs, output_proposal_logits=True)
    finite = torch.isfinite(theirs.enc_outputs_class)
    assert torch.equal(torch.isfinite(ours.enc_outputs_class), finite)
    torch.testing.assert_close(ours.enc_outputs_class[finite], theirs.enc_outputs_class[finite], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours.enc_outputs_coord_logits, theirs.enc_outputs_coord_logits, atol=1e-4, rtol=1e-4)


def test_hidden_states_on_request():
    hf = mb.mm_grounding_dino()
    inputs = mb.grounding_inputs()
    with torch.no_grad():
        theirs = hf(**inputs, output_hidden_states=True)
        ours = Ours.from_transformers(hf)(**inputs, output_hidden_states=True)
    for field in ("encoder_vision_hidden_states", "encoder_text_hidden_states", "decoder_hidden_states"):
        assert len(getattr(ours, field)) == len(getattr(theirs, field)), field
        for a, b in zip(getattr(ours, field), getattr(theirs, field)):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=field)


def test_post_processing_gives_identical_detections(tmp_path):
    processor = mb.offline_processor(tmp_path)
    hf = mb.mm_grounding_dino()
    images = [torch.rand(3, 70, 90), torch.rand(3, 90, 60)]
    enc = processor(
        images=images, text=["w200 w201. w300.", "w400."], return_tensors="pt", padding=True, do_rescale=False
    )
    with torch.no_grad():
        theirs = hf(**enc)
        ours = Ours.from_transformers(hf)(**enc)
    sizes = [(70, 90), (90, 60)]
    post = processor.post_process_grounded_object_detection
    for a, b in zip(
        post(ours, threshold=0.3, text_threshold=0.25, target_sizes=sizes),
        post(theirs, threshold=0.3, text_threshold=0.25, target_sizes=sizes),
    ):
        assert a["text_labels"] == b["text_labels"]
        torch.testing.assert_close(a["scores"], b["scores"], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(a["boxes"], b["boxes"], atol=1e-3, rtol=1e-4)


def test_batch_matches_running_one_by_one():
    """Different images (same size) with prompts of different lengths, padded into one batch, give each pair's
    own result. (Images of different sizes are padded too; then the backbone sees the padding, as in
    transformers, and the batch matches transformers' padded batch, tested above, not the lone runs.)"""
    model = Ours.from_transformers(mb.mm_grounding_dino())
    batch = mb.grounding_inputs()
    batch["pixel_mask"][1] = 1
    batch["pixel_values"][1] = torch.randn_like(batch["pixel_values"][1])
    with torch.no_grad():
        together = model(**batch)
        for i in range(2):
            length = int(batch["attention_mask"][i].sum())
            alone = model(
                pixel_values=batch["pixel_values"][i : i + 1],
                pixel_mask=batch["pixel_mask"][i : i + 1],
                input_ids=batch["input_ids"][i : i + 1, :length],
                attention_mask=batch["attention_mask"][i : i + 1, :length],
            )
            finite = torch.isfinite(alone.logits[0])
            assert torch.equal(torch.isfinite(together.logits[i]), finite)
            torch.testing.assert_close(together.logits[i][finite], alone.logits[0][finite], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(together.pred_boxes[i], alone.pred_boxes[0], atol=1e-4, rtol=1e-4)


def test_from_pretrained_reads_a_transformers_checkpoint_and_round_trips(tmp_path):
    from transformers import MMGroundingDinoForObjectDetection as Theirs

    hf = mb.mm_grounding_dino(decoder_bbox_embed_share=False)
    hf.save_pretrained(tmp_path / "hf")
    model = Ours.from_pretrained(tmp_path / "hf")
    inputs = mb.grounding_inputs()
    with torch.no_grad():
        reference = hf(**inputs)
        assert_same_detections(model(**inputs), reference)
        model.save_pretrained(tmp_path / "ours")
        assert_same_detections(Ours.from_pretrained(str(tmp_path / "ours"))(**inputs), reference)
        assert_same_detections(Theirs.from_pretrained(tmp_path / "ours").eval()(**inputs), reference)
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["model_type"] == "mm-grounding-dino"


def test_grounding_dino_checkpoint_loads(tmp_path):
    hf = mb.grounding_dino()
    hf.save_pretrained(tmp_path)
    with torch.no_grad():
        assert_same_detections(Ours.from_pretrained(tmp_path)(**mb.grounding_inputs()), hf(**mb.grounding_inputs()))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_precision_runs_with_float32_logits(dtype):
    hf = mb.mm_grounding_dino()
    inputs = mb.grounding_inputs()
    model = Ours.from_transformers(hf)
    with torch.no_grad():
        reference = model(**inputs)
        half = model.to(dtype)(**{k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()})
    assert half.logits.dtype == torch.float32 and half.pred_boxes.dtype == dtype
    finite = torch.isfinite(reference.logits)
    assert torch.equal(torch.isfinite(half.logits), finite)
    # Low precision may reorder near-tied proposals; compare the logits of the whole batch in aggregate.
    err = (half.logits[finite] - reference.logits[finite]).norm() / reference.logits[finite].norm()
    assert err < 0.1


def test_compiles():
    model = Ours.from_transformers(mb.mm_grounding_dino(encoder_layers=1, decoder_layers=2))
    inputs = mb.grounding_inputs()
    with torch.no_grad():
        reference = model(**inputs)
        # One graph, no breaks (the transformers backbone and text encoder included). CI uses aot_eager: inductor
        # compiles this model too, but takes minutes on a CPU.
        compiled = torch.compile(model, backend="aot_eager", fullgraph=True)(**inputs)
    assert_same_detections(compiled, reference)


def test_exports_with_a_dynamic_batch_and_reloads_in_a_fresh_process(tmp_path):
    """torch.export keeps mmgdino's operators as operators (their fake kernels give the shapes); a fresh process
    that imports mmgdino loads and runs the program. return_dict=False: transformers' output classes cannot be
    deserialized by torch.export.load."""
    import subprocess
    import sys

    model = Ours.from_transformers(mb.mm_grounding_dino(encoder_layers=1, decoder_layers=2)).eval()
    inputs = mb.grounding_inputs()
    batch = torch.export.Dim("batch", min=1, max=16)
    dynamic = {name: {0: batch} for name in inputs} | {"return_dict": None}
    with torch.no_grad():
        program = torch.export.export(model, (), dict(inputs, return_dict=False), dynamic_shapes=dynamic)
        expected = [model(**{k: v[:n] for k, v in inputs.items()}) for n in (2, 1)]
    graph = str(program.graph)
    assert "mmgdino.ms_deform_attn" in graph and "mmgdino.contrastive_max" in graph
    torch.export.save(program, tmp_path / "model.pt2")
    torch.save(inputs, tmp_path / "inputs.pt")
    script = f"""
import torch, mmgdino
program = torch.export.load({str(tmp_path / "model.pt2")!r}).module()
inputs = torch.load({str(tmp_path / "inputs.pt")!r})
with torch.no_grad():
    outs = [program(**{{k: v[:n] for k, v in inputs.items()}}, return_dict=False)[:2] for n in (2, 1)]
torch.save(outs, {str(tmp_path / "outs.pt")!r})
"""
    subprocess.run([sys.executable, "-c", script], check=True, timeout=600)
    for (logits, boxes), want in zip(torch.load(tmp_path / "outs.pt"), expected):
        torch.testing.assert_close(logits, want.logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(boxes, want.pred_boxes, atol=1e-5, rtol=1e-5)


def test_cpu_feed_forward_in_row_chunks_equals_one_product():
    from mmgdino.modeling.layers import feed_forward

    x = torch.randn(2, 1300, 16)  # 2600 rows: two full chunks of 1024 and a partial one
    fc1, fc2, norm = torch.nn.Linear(16, 64), torch.nn.Linear(64, 16), torch.nn.LayerNorm(16)
    with torch.no_grad():
        chunked = feed_forward(x, fc1, fc2, norm, torch.relu_, chunk_rows=1024)
        whole = norm(x + fc2(torch.relu(fc1(x))))
    torch.testing.assert_close(chunked, whole)


def test_routes_deformable_attention_and_logits_to_mmgdino_ops(monkeypatch):
    from mmgdino import ops

    calls = []
    for name in ("ms_deform_attn", "contrastive_logits", "contrastive_max"):
        original = getattr(ops, name)
        monkeypatch.setattr(ops, name, lambda *a, _n=name, _f=original, **k: calls.append(_n) or _f(*a, **k))
    model = Ours.from_transformers(mb.mm_grounding_dino())  # 2 encoder layers, 3 decoder layers
    with torch.no_grad():
        model(**mb.grounding_inputs())
    assert calls.count("ms_deform_attn") == 2 + 3
    assert calls.count("contrastive_max") == 1  # the two-stage top-k, never the padded (B, pixels, 256) logits
    assert calls.count("contrastive_logits") == 2  # the top-k proposals (encoder_logits), the last decoder layer


@pytest.mark.parametrize(
    "build", [mb.mm_grounding_dino, mb.grounding_dino], ids=["mm_grounding_dino", "grounding_dino"]
)
def test_from_config_builds_an_untrained_model(build):
    hf = build()
    model = Ours.from_config(hf.config)
    with torch.no_grad():
        out = model(**mb.grounding_inputs())
    assert out.logits.shape == (2, hf.config.num_queries, hf.config.max_text_len)
    assert torch.isfinite(out.pred_boxes).all()
    if hf.config.model_type == "mm-grounding-dino":
        assert model.class_embed[0].bias.item() == pytest.approx(-4.595, abs=1e-3)


def test_errors_are_clear(tmp_path, monkeypatch):
    with pytest.raises(ModelLoadError, match="no such directory"):
        Ours.from_pretrained(tmp_path / "missing")
    with pytest.raises(ModelLoadError, match="config.json"):
        Ours.from_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="not in the local Hugging Face Hub cache"):
        Ours.from_pretrained("nobody-has/this-model-id", local_files_only=True)
    from mmgdino.modeling import hub

    monkeypatch.setattr(hub, "hub_reachable", lambda: False)
    with pytest.raises(ModelLoadError, match="no network, and it is not in the local cache"):
        Ours.from_pretrained("nobody-has/this-model-id")
    from transformers import DeformableDetrConfig

    with pytest.raises(ValueError, match="model_type"):
        Ours(DeformableDetrConfig())
    assert mmgdino.MMGroundingDinoForObjectDetection is Ours
