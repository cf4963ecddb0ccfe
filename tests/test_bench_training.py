"""`python -m mmgdino.bench.training`: its arguments, its table and chart, and what it measures on the small test
model (no timing is asserted: speed claims live in benchmarks/results)."""

import model_builders as mb
import pytest
import torch

from mmgdino.bench import training


@pytest.mark.parametrize(
    ("argv", "words"),
    [(["--batch", "0"], "must be positive"), (["--height", "100"], "at least 320")],
)
def test_bad_arguments_stop_with_exit_2(argv, words, capsys):
    with pytest.raises(SystemExit) as stopped:
        training.main(argv)
    assert stopped.value.code == 2 and words in capsys.readouterr().err


def _report(memory):
    profile = {"top": [{"op": "aten::mm", "ms": 900.0, "share": 0.3, "calls": 10}],
               "key": [{"op": "mmgdino::ms_deform_attn_backward", "ms": 50.0, "share": 0.02, "calls": 12}]}  # fmt: skip
    rows = [{"implementation": name, "autocast_bf16": False, "step_ms": ms, "first_loss": 10.0, "profile": profile,
             "parts_ms": {"forward": ms / 3, "backward": ms / 2, "optimizer": ms / 6}, "peak_memory_mib": mib}
            for name, ms, mib in (("transformers", 9000.0, 900.0), ("transformers + mmgdino.patch", 6000.0, None),
                                  ("mmgdino", 3000.0, 600.0))]  # fmt: skip
    rows[1] |= {"speedup": 1.5, "loss_rel_err": 0.0}
    rows[2] |= {"speedup": 3.0, "loss_rel_err": 1e-7}
    return {"case": "c", "device": "cpu", "cpu": {"model": "m", "isa": ["avx2"], "threads": 2}, "gpu": None,
            "load_average": {"start": 1.0, "end": 1.5}, "commit": "abc", "versions": {"torch": "x"}, "repeats": 3,
            "peak_memory_kind": "rss growth" if memory else None, "results": rows}  # fmt: skip


def test_the_table_shows_every_row_its_parts_and_memory_when_measured(tmp_path):
    table = training.markdown(_report(memory=True))
    assert "| mmgdino | float32 | 3000 | 1000 | 1500 | 500 | **3.00x** | 1.0e-07 | 600 |" in table
    assert "| transformers + mmgdino.patch | float32 | 6000 | 2000 | 3000 | 1000 | **1.50x** | 0.0e+00 | - |" in table
    assert "| transformers | float32 | 9000 | 3000 | 4500 | 1500 | 1.00x |  | 900 |" in table
    assert "`mmgdino::ms_deform_attn_backward` | 50 | 2.0% | 12" in table and "ISA avx2" in table
    assert "peak MiB" not in training.markdown(_report(memory=False))
    training.plot(_report(memory=True), tmp_path / "chart.png")
    assert (tmp_path / "chart.png").stat().st_size > 0


def test_rows_start_from_the_same_weights_with_the_language_model_frozen():
    """build() on the small test architecture (the tiny one takes minutes on this CPU): every row has the
    reference's weights, trains all but the language model, and the reference itself is not patched."""
    reference = mb.mm_grounding_dino(seed=0)
    start = {k: v.clone() for k, v in reference.state_dict().items()}
    for row in training.ROWS:
        model = training.build(row, reference)
        weights = model.state_dict()
        assert model.training and model.config.auxiliary_loss, row
        assert all(torch.equal(weights[k], start[k]) for k in start if k in weights), row
        frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
        assert frozen and all(n.startswith("model.text_backbone.") for n in frozen), row
        assert (row == "transformers") == (model is reference)
    assert not any("_mmgdino" in str(vars(m)) for m in reference.modules())


def test_one_round_measures_every_row_with_the_same_first_loss(monkeypatch):
    """measure() on the small model at 128x128: three rows, parts timed, a profile each, and the first losses equal
    (same weights, batch and dropout seed) within float32 rounding."""
    reference = mb.mm_grounding_dino(seed=0)
    inputs = {"pixel_values": torch.randn(1, 3, 128, 128), "pixel_mask": torch.ones(1, 128, 128, dtype=torch.long),
              "input_ids": torch.tensor([mb.prompt_ids((1, 2))]),
              "attention_mask": torch.ones(1, len(mb.prompt_ids((1, 2))), dtype=torch.long)}  # fmt: skip
    rows = training.measure(False, reference, inputs, training.labels_for(inputs), repeats=1, memory=False,
                            log=lambda line: None)  # fmt: skip
    assert [r["implementation"] for r in rows] == list(training.ROWS)
    for row in rows:
        assert row["step_ms"] > 0 and set(row["parts_ms"]) == set(training.PARTS) and row["profile"]["top"]
    assert all(r["loss_rel_err"] < 1e-5 for r in rows[1:]), [r["first_loss"] for r in rows]
