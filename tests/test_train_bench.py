"""`python -m mmgdino.bench.train`: its arguments, its table and what it measures on a small batch (no timing is
asserted: speed claims live in benchmarks/results)."""

import pytest
import torch

from mmgdino.bench import train as bench


def test_bad_arguments_stop_with_exit_2(capsys):
    with pytest.raises(SystemExit) as stopped:
        bench.main(["--size", "100x100"])
    assert stopped.value.code == 2 and "--size HxW (each >= 320" in capsys.readouterr().err


def test_the_table_shows_every_row_and_why_one_is_missing():
    report = {
        "size": [480, 640], "batch": 1, "steps": 3, "device": "CPU: x86_64 (2 threads)", "threads": 2,
        "load_average": [1.0, 1.0, 1.0], "cpu": {"cpu": "AMD", "isa": ["avx2"], "torch_cpu_capability": "AVX512"},
        "commit": "abc", "versions": {"torch": "2.13"}, "peak_memory_kind": "rss", "what": "the loop",
        "results": [
            {"implementation": "transformers", "available": True, "why_not": None, "seconds_per_step": 2.0,
             "all_seconds": [2.0, 2.1, 1.9], "speedup": 1.0, "peak_memory_mib": 900.0},
            {"implementation": "mmgdino", "available": False, "why_not": "labels: inference only"},
        ],
    }  # fmt: skip
    table = bench.markdown(report)
    assert "| transformers | 2.000 | 1.00x | 900 | 2.00, 2.10, 1.90 |" in table
    assert "| mmgdino | - | - | - | not available: labels: inference only |" in table


def test_rows_start_from_the_same_weights_with_the_language_model_frozen(monkeypatch):
    """build() on the small test architecture (the tiny one takes minutes on this CPU): the probe that asks
    whether a row computes losses does not change its weights."""
    import model_builders as mb

    def small(size, seed=0):
        model = mb.mm_grounding_dino(seed=seed)
        model.config.auxiliary_loss = True
        return model

    monkeypatch.setattr(bench, "reference_model", small)
    monkeypatch.setattr(bench, "PROMPT_IDS", mb.prompt_ids((1, 2)))  # words of the small model's vocabulary
    reference = small((320, 320))
    for row in bench.ROWS:
        model, why = bench.build(row, (320, 320), torch.device("cpu"))
        if model is None:
            assert row == "mmgdino" and why
            continue
        weights, start = model.state_dict(), reference.state_dict()
        assert all(torch.equal(weights[k], start[k]) for k in start if k in weights), row
        assert not any(p.requires_grad for n, p in model.named_parameters() if n.startswith("model.text_backbone"))
