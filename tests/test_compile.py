import pytest
import torch
from helpers import contrastive_inputs, msda_inputs

from mmgdino import ops


def _layer(value, shapes, starts, loc, attn, vision, text, mask):
    sampled = ops.ms_deform_attn(value, shapes, starts, loc, attn)
    logits = ops.contrastive_logits(sampled.view(vision.shape) + vision, text, mask, bias=-1.0, max_text_len=16)
    best = ops.contrastive_max(vision, text, mask)
    return logits, best


def _called_ops(graph_module):
    return {str(node.target) for node in graph_module.graph.nodes if node.op == "call_function"}


@pytest.mark.skipif(
    "cpu" not in ops.available_backends("ms_deform_attn", "cpu"), reason="the operators' CPU kernels are not built"
)
def test_compile_fullgraph_uses_both_ops():
    value, shapes, starts, loc, attn = msda_inputs(batch=2, queries=6, heads=2, head_dim=4, border_fraction=0.0)
    vision, text, mask = contrastive_inputs(batch=2, rows=6, tokens=5, dim=8)
    args = (value, shapes, starts, loc, attn, vision, text, mask)
    eager = _layer(*args)
    graphs = []

    def capture(graph_module, example_inputs):  # the graph Dynamo hands a backend, then run as traced
        graphs.append(graph_module)
        return graph_module.forward

    torch._dynamo.reset()
    compiled = torch.compile(_layer, fullgraph=True, backend=capture)(*args)
    for e, c in zip(eager, compiled):
        torch.testing.assert_close(c, e)
    assert len(graphs) == 1  # fullgraph: one graph, no breaks
    called = _called_ops(graphs[0])
    for op in ("mmgdino.ms_deform_attn", "mmgdino.contrastive_logits", "mmgdino.contrastive_max"):
        assert any(op in target for target in called), (op, called)


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
