"""The portable backend (mmgdino.ops.portable): the operators in standard PyTorch ops for exporters. Checked for
what it is for: float32/float64 agreement with the float64 reference, float64 gradients, the dispatch rule (every
call inside `portable()` runs on it), and a traced graph that holds only standard ops."""

import pytest
import torch
from helpers import MSDA_CASES, TOLERANCE, contrastive_inputs, msda_inputs, msda_reference, rel_err

from mmgdino import ops
from mmgdino.ops import _torch_impl
from mmgdino.ops.portable import portable

DTYPES = [torch.float32, torch.float64]


def _level_shapes(spatial_shapes):
    return [tuple(shape) for shape in spatial_shapes.tolist()]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", list(MSDA_CASES))
def test_ms_deform_attn_matches_float64_reference(dtype, case):
    inputs = msda_inputs(dtype=dtype, **MSDA_CASES[case])
    want = msda_reference(*inputs)
    for level_shapes in (None, _level_shapes(inputs[1])):  # read from the tensor, or given
        out = ops.ms_deform_attn(*inputs, level_shapes=level_shapes, backend="portable")
        assert out.dtype == dtype
        assert rel_err(out, want) <= TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_contrastive_matches_float64_reference(dtype):
    vision, text, mask = contrastive_inputs(batch=2, rows=9, tokens=6, dim=16, dtype=dtype)
    bias = torch.tensor(-0.7, dtype=dtype)
    wide = vision.double(), text.double(), mask, bias.double(), 0.25
    want = _torch_impl.contrastive_logits(*wide, 12)
    got = ops.contrastive_logits(vision, text, mask, bias=bias, scale=0.25, max_text_len=12, backend="portable")
    assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    finite = torch.isfinite(want)
    assert torch.equal(finite, torch.isfinite(got))
    assert rel_err(got[finite], want[finite]) <= TOLERANCE[dtype]
    got_max = ops.contrastive_max(vision, text, mask, bias=bias, scale=0.25, backend="portable")
    assert rel_err(got_max, _torch_impl.contrastive_max(*wide)) <= TOLERANCE[dtype]


def test_gradcheck_float64():
    value, shapes, starts, loc, attn = msda_inputs(dtype=torch.float64, queries=3, border_fraction=0.0)
    leaves = [t.detach().requires_grad_(True) for t in (value, loc, attn)]
    level_shapes = _level_shapes(shapes)
    assert torch.autograd.gradcheck(
        lambda v, l, a: ops.ms_deform_attn(v, shapes, starts, l, a, level_shapes=level_shapes, backend="portable"),
        leaves,
    )
    vision, text, mask = contrastive_inputs(rows=3, tokens=4, dim=5, dtype=torch.float64)
    bias = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda v, t, b: ops.contrastive_max(v, t, mask, bias=b, backend="portable"),
        (vision.requires_grad_(True), text.requires_grad_(True), bias),
    )


def test_every_call_inside_portable_runs_on_it(monkeypatch):
    from mmgdino.ops import portable as backend

    calls = []
    for name in ("ms_deform_attn", "contrastive_logits", "contrastive_max"):
        original = getattr(backend, name)
        monkeypatch.setattr(backend, name, lambda *a, _f=original, _n=name, **k: calls.append(_n) or _f(*a, **k))
    inputs = msda_inputs()
    vision, text, mask = contrastive_inputs()
    ops.ms_deform_attn(*inputs)
    ops.contrastive_logits(vision, text, mask)
    assert calls == []  # outside: the automatic backend
    with portable():
        ops.ms_deform_attn(*inputs)
        ops.contrastive_logits(vision, text, mask)
        ops.contrastive_max(vision, text, mask)
        ops.ms_deform_attn(*inputs, backend="torch")  # a named backend is still that backend
    assert calls == ["ms_deform_attn", "contrastive_logits", "contrastive_max"]


class _Attention(torch.nn.Module):
    def __init__(self, level_shapes):
        super().__init__()
        self.level_shapes = level_shapes

    def forward(self, value, loc, attn):
        shapes = torch.tensor(self.level_shapes, dtype=torch.long)
        sizes = shapes.prod(1)
        starts = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
        return ops.ms_deform_attn(value, shapes, starts, loc, attn, level_shapes=self.level_shapes)


def test_traced_graph_holds_only_standard_ops():
    value, shapes, _, loc, attn = msda_inputs()
    module = _Attention(_level_shapes(shapes))
    with portable():
        program = torch.export.export(module, (value, loc, attn))
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert any("grid_sampler" in t for t in targets), targets
    assert not any("mmgdino" in t for t in targets), targets
    assert rel_err(program.module()(value, loc, attn), module(value, loc, attn)) <= 1e-6


def test_tracing_without_level_shapes_is_one_clear_error():
    value, shapes, starts, loc, attn = msda_inputs()

    class Bare(torch.nn.Module):
        def forward(self, value, loc, attn):
            return ops.ms_deform_attn(value, shapes, starts, loc, attn, backend="portable")

    with pytest.raises(Exception, match="portable backend needs level_shapes while tracing"):
        torch.export.export(Bare(), (value, loc, attn))
