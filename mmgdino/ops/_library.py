"""The mmgdino operator library: schemas (the one place they are written), fake kernels, autograd, and the
pure-PyTorch default kernels. Compiled kernels from mmgdino._C register for the CPU / CUDA dispatch keys
and take precedence over the defaults; without them every operator still runs, on its torch backend.
"""

import torch

from . import _checks, _torch_impl

_lib = torch.library.Library("mmgdino", "DEF")
_lib.define(
    "ms_deform_attn(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
    "Tensor sampling_locations, Tensor attention_weights) -> Tensor"
)
_lib.define(
    "ms_deform_attn_backward(Tensor grad_output, Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
    "Tensor sampling_locations, Tensor attention_weights) -> (Tensor, Tensor, Tensor)"
)
_lib.define(
    "contrastive_logits(Tensor vision, Tensor text, Tensor text_token_mask, Tensor bias, float scale, "
    "SymInt max_text_len) -> Tensor"
)
_lib.define("contrastive_max(Tensor vision, Tensor text, Tensor text_token_mask, Tensor bias, float scale) -> Tensor")
_lib.define("quantize_uint8(Tensor x, float scale, int zero_point) -> Tensor")

# Default kernels for any device without a compiled one (and for every device in an unbuilt checkout).
_lib.impl("ms_deform_attn", _torch_impl.ms_deform_attn, "CompositeExplicitAutograd")
_lib.impl("ms_deform_attn_backward", _torch_impl.ms_deform_attn_backward, "CompositeExplicitAutograd")
_lib.impl("contrastive_logits", _torch_impl.contrastive_logits, "CompositeExplicitAutograd")
_lib.impl("contrastive_max", _torch_impl.contrastive_max, "CompositeExplicitAutograd")
_lib.impl("quantize_uint8", _torch_impl.quantize_uint8, "CompositeExplicitAutograd")


@torch.library.register_fake("mmgdino::ms_deform_attn")
def ms_deform_attn_fake(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    batch, _, num_heads, head_dim, num_queries, _, _ = _checks.check_ms_deform_attn(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights
    )
    return value.new_empty((batch, num_queries, num_heads * head_dim))


@torch.library.register_fake("mmgdino::ms_deform_attn_backward")
def ms_deform_attn_backward_fake(
    grad_output, value, spatial_shapes, level_start_index, sampling_locations, attention_weights
):
    dims = _checks.check_ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    _checks.check_ms_deform_attn_grad(grad_output, value, dims[4])
    return (
        value.new_empty(value.shape),
        sampling_locations.new_empty(sampling_locations.shape),
        attention_weights.new_empty(attention_weights.shape),
    )


@torch.library.register_fake("mmgdino::contrastive_logits")
def contrastive_logits_fake(vision, text, text_token_mask, bias, scale, max_text_len):
    batch, num_rows, num_tokens, _ = _checks.check_contrastive(vision, text, text_token_mask, bias)
    torch._check(
        max_text_len >= num_tokens,
        lambda: f"mmgdino.contrastive_logits: max_text_len ({max_text_len}) must be at least num_tokens ({num_tokens})",
    )
    return vision.new_empty((batch, num_rows, max_text_len), dtype=_checks.accumulate_dtype(vision.dtype))


@torch.library.register_fake("mmgdino::contrastive_max")
def contrastive_max_fake(vision, text, text_token_mask, bias, scale):
    batch, num_rows, _, _ = _checks.check_contrastive(vision, text, text_token_mask, bias)
    return vision.new_empty((batch, num_rows), dtype=_checks.accumulate_dtype(vision.dtype))


@torch.library.register_fake("mmgdino::quantize_uint8")
def quantize_uint8_fake(x, scale, zero_point):
    _checks.check_quantize_uint8(x, scale, zero_point)
    return x.new_empty(x.shape, dtype=torch.uint8)


def _ms_deform_attn_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def register_ms_deform_attn_autograd(op_name, backward_op):
    """Autograd for a forward operator whose gradients come from `backward_op` (same argument order)."""

    def backward(ctx, grad_output):
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights = ctx.saved_tensors
        # The GPU and Triton kernels scatter grad_value with atomics (the CPU kernel writes disjoint slices); under
        # torch.use_deterministic_algorithms (not warn-only) their gradients come from the deterministic gather
        # formulation instead: slower, the same bits every run.
        atomic = value.device.type != "cpu" or backward_op is not torch.ops.mmgdino.ms_deform_attn_backward
        deterministic = (
            atomic
            and torch.are_deterministic_algorithms_enabled()
            and not torch.is_deterministic_algorithms_warn_only_enabled()
        )
        grads_of = _torch_impl.ms_deform_attn_backward_deterministic if deterministic else backward_op
        grad_value, grad_locations, grad_weights = grads_of(
            grad_output.contiguous(), value, spatial_shapes, level_start_index, sampling_locations, attention_weights
        )
        return grad_value, None, None, grad_locations, grad_weights

    torch.library.register_autograd(op_name, backward, setup_context=_ms_deform_attn_setup_context)


register_ms_deform_attn_autograd("mmgdino::ms_deform_attn", torch.ops.mmgdino.ms_deform_attn_backward)


def _contrastive_logits_setup_context(ctx, inputs, output):
    vision, text, text_token_mask, bias, scale, _ = inputs
    ctx.save_for_backward(vision, text, text_token_mask, bias)
    ctx.scale = scale


def _contrastive_logits_backward(ctx, grad_logits):
    vision, text, text_token_mask, bias = ctx.saved_tensors
    num_tokens = text.shape[1]
    # Masked and padded positions are constant -inf: no gradient flows through them.
    grad = grad_logits[..., :num_tokens].masked_fill(~text_token_mask[:, None, :], 0)
    grad_vision = grad_text = grad_bias = None
    if ctx.needs_input_grad[0]:
        grad_vision = (torch.matmul(grad, text.to(grad.dtype)) * ctx.scale).to(vision.dtype)
    if ctx.needs_input_grad[1]:
        grad_text = (torch.matmul(grad.transpose(1, 2), vision.to(grad.dtype)) * ctx.scale).to(text.dtype)
    if ctx.needs_input_grad[3]:
        grad_bias = grad.sum().to(bias.dtype)
    return grad_vision, grad_text, None, grad_bias, None, None


def register_contrastive_logits_autograd(op_name):
    torch.library.register_autograd(
        op_name, _contrastive_logits_backward, setup_context=_contrastive_logits_setup_context
    )


register_contrastive_logits_autograd("mmgdino::contrastive_logits")
