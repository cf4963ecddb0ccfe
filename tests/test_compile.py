import pytest
import torch
from helpers import contrastive_inputs, msda_inputs

from mmgdino import ops


def _layer(value, shapes, starts, loc, attn, vision, text, mask):
    sampled = ops.ms_deform_attn(value, shapes, starts, loc, attn)
    logits = ops.contrastive_logits(sampled.view(vision.shape) + vision, text, mask, bias=-1.0, max_text_len=16)
    best = ops.contrastive_max(vision, text, mask)
    return logits, best


def test_compile_fullgraph_uses_both_ops():
    value, shapes, starts, loc, attn = msda_inputs(batch=2, queries=6, heads=2, head_dim=4, border_fraction=0.0)
    vision, text, mask = contrastive_inputs(batch=2, rows=6, tokens=5, dim=8)
    args = (value, shapes, starts, loc, attn, vision, text, mask)
    eager = _layer(*args)
    torch._dynamo.reset()
    compiled = torch.compile(_layer, fullgraph=True, backend="aot_eager")(*args)
    for e, c in zip(eager, compiled):
        torch.testing.assert_close(c, e)


def test_compile_fullgraph_backward():
    value, shapes, starts, loc, attn = msda_inputs(queries=5, border_fraction=0.0)
    leaves = [t.clone().requires_grad_(True) for t in (value, loc, attn)]

    def loss(v, l, a):
        return ops.ms_deform_attn(v, shapes, starts, l, a).square().sum()

    torch._dynamo.reset()
    compiled_grads = torch.autograd.grad(torch.compile(loss, fullgraph=True, backend="aot_eager")(*leaves), leaves)
    eager_grads = torch.autograd.grad(loss(*leaves), leaves)
    for c, e in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(c, e)


@pytest.mark.slow
def test_compile_inductor_cpu():
    value, shapes, starts, loc, attn = msda_inputs(queries=5, border_fraction=0.0)
    vision, text, mask = contrastive_inputs(batch=2, rows=5, tokens=5, dim=16)
    args = (value, shapes, starts, loc, attn, vision, text, mask)
    torch._dynamo.reset()
    compiled = torch.compile(_layer, fullgraph=True)(*args)
    for e, c in zip(_layer(*args), compiled):
        torch.testing.assert_close(c, e)
