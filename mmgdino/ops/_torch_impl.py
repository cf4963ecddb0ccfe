"""Pure-PyTorch implementations: the "torch" backend, the default kernel of every operator on devices without
a compiled one, and (in float64) the reference the tests check the kernels against.

Any device, differentiable, no host syncs. The deformable attention is written as a weighted embedding bag:
each (batch, head, query) sums num_levels * num_points * 4 bilinear corners of value, with the corner weight
times the attention weight as the per-sample weight. That never materializes a (B*H, D, Q, L*P) tensor as the
grid_sample formulation does, and autograd gives the gradients of value, locations and weights.
"""

import torch
import torch.nn.functional as F

from ._checks import accumulate_dtype


def _bilinear_bags(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """The embedding-bag view of the op: (table (B*H*S, D), rows (B*H*Q, L*P*4), weights (B*H*Q, L*P*4))."""
    batch, num_values, num_heads, head_dim = value.shape
    num_levels = sampling_locations.shape[3]
    dtype = accumulate_dtype(value.dtype)
    # (B, S, H, D) -> (B * H * S, D): one embedding table, rows of head h of batch b at offset (b * H + h) * S.
    table = value.to(dtype).permute(0, 2, 1, 3).reshape(batch * num_heads * num_values, head_dim)
    loc = sampling_locations.to(dtype).permute(0, 2, 1, 3, 4, 5)  # (B, H, Q, L, P, 2)
    attn = attention_weights.to(dtype).permute(0, 2, 1, 3, 4)  # (B, H, Q, L, P)

    level_shape = (1, 1, 1, num_levels, 1)
    height_i = spatial_shapes[:, 0].view(level_shape)
    width_i = spatial_shapes[:, 1].view(level_shape)
    start = level_start_index.view(level_shape)
    # align_corners=False: pixel coordinate = normalized * size - 0.5
    x = loc[..., 0] * width_i.to(dtype) - 0.5
    y = loc[..., 1] * height_i.to(dtype) - 0.5
    # -1 included: grid_sample's one-sided gradient there (csrc/include/mmgdino/sampling.h); False for NaN, inf
    touches_map = (x >= -1) & (y >= -1) & (x < width_i) & (y < height_i)
    x = torch.where(touches_map, x, torch.zeros_like(x))
    y = torch.where(touches_map, y, torch.zeros_like(y))
    x0, y0 = x.floor(), y.floor()
    frac_x, frac_y = x - x0, y - y0
    x0, y0 = x0.long(), y0.long()

    head_offset = (torch.arange(batch * num_heads, device=value.device) * num_values).view(batch, num_heads, 1, 1, 1)
    rows, weights = [], []
    for dy, dx, corner_weight in (
        (0, 0, (1 - frac_y) * (1 - frac_x)),
        (0, 1, (1 - frac_y) * frac_x),
        (1, 0, frac_y * (1 - frac_x)),
        (1, 1, frac_y * frac_x),
    ):
        yi, xi = y0 + dy, x0 + dx
        row = start + yi * width_i + xi
        inside = (
            touches_map & (yi >= 0) & (yi < height_i) & (xi >= 0) & (xi < width_i) & (row >= 0) & (row < num_values)
        )
        rows.append(torch.where(inside, row, torch.zeros_like(row)) + head_offset)
        weights.append(torch.where(inside, corner_weight * attn, torch.zeros_like(attn)))
    bag_size = num_levels * sampling_locations.shape[4] * 4
    bags = batch * num_heads * sampling_locations.shape[1]  # explicit: with zero points -1 would be ambiguous
    rows = torch.stack(rows, dim=-1).reshape(bags, bag_size)
    weights = torch.stack(weights, dim=-1).reshape(bags, bag_size)
    return table, rows, weights


def _unflatten_heads(out, batch, num_heads, num_queries):
    head_dim = out.shape[-1]
    out = out.view(batch, num_heads, num_queries, head_dim).permute(0, 2, 1, 3)
    return out.reshape(batch, num_queries, num_heads * head_dim)


def ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    table, rows, weights = _bilinear_bags(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights
    )
    if rows.shape[1] == 0:  # no sampling points: nothing to sum (embedding_bag rejects empty bags of width 0)
        out = table[:1].mul(0).expand(rows.shape[0], -1)  # zeros that keep value in the autograd graph
    else:
        out = F.embedding_bag(rows, table, per_sample_weights=weights, mode="sum")  # (B * H * Q, D)
    batch, num_queries, num_heads = sampling_locations.shape[:3]
    return _unflatten_heads(out, batch, num_heads, num_queries).to(value.dtype)


def ms_deform_attn_backward_deterministic(grad_output, value, spatial_shapes, level_start_index, sampling_locations,
                                          attention_weights, max_gather_bytes=256 << 20):  # fmt: skip
    """Gradients that are the same bits on every run, for torch.use_deterministic_algorithms on GPUs, where the
    compiled kernels scatter grad_value with atomics. The forward is written with gathers (index_select), whose
    gradient PyTorch accumulates deterministically in that mode (a sorted index_add); queries go in chunks that
    bound the gathered (rows, bag, D) tensor, and the chunks' value gradients are summed in a fixed order."""
    batch, num_values, num_heads, head_dim = value.shape
    num_queries, bag = sampling_locations.shape[1], sampling_locations.shape[3] * sampling_locations.shape[4] * 4
    dtype = accumulate_dtype(value.dtype)
    itemsize = torch.finfo(dtype).bits // 8
    chunk = max(1, max_gather_bytes // max(1, batch * num_heads * bag * head_dim * itemsize))
    grad_value = torch.zeros(value.shape, dtype=dtype, device=value.device)
    grad_locations, grad_weights = [], []
    for q0 in range(0, num_queries, chunk):
        with torch.enable_grad():
            v = value.detach().to(dtype).requires_grad_(True)
            loc = sampling_locations[:, q0 : q0 + chunk].detach().to(dtype).requires_grad_(True)
            attn = attention_weights[:, q0 : q0 + chunk].detach().to(dtype).requires_grad_(True)
            table, rows, weights = _bilinear_bags(v, spatial_shapes, level_start_index, loc, attn)
            gathered = table.index_select(0, rows.reshape(-1)).view(*rows.shape, head_dim)
            out = _unflatten_heads((gathered * weights.unsqueeze(-1)).sum(-2), batch, num_heads, loc.shape[1])
            g_value, g_loc, g_attn = torch.autograd.grad(out, (v, loc, attn), grad_output[:, q0 : q0 + chunk].to(dtype))
        grad_value += g_value
        grad_locations.append(g_loc)
        grad_weights.append(g_attn)
    if not grad_locations:  # no queries
        return (grad_value.to(value.dtype), torch.zeros_like(sampling_locations), torch.zeros_like(attention_weights))
    return (
        grad_value.to(value.dtype),
        torch.cat(grad_locations, 1).to(sampling_locations.dtype),
        torch.cat(grad_weights, 1).to(attention_weights.dtype),
    )


def ms_deform_attn_backward(
    grad_output, value, spatial_shapes, level_start_index, sampling_locations, attention_weights
):
    with torch.enable_grad():
        inputs = [t.detach().requires_grad_(True) for t in (value, sampling_locations, attention_weights)]
        out = ms_deform_attn(inputs[0], spatial_shapes, level_start_index, inputs[1], inputs[2])
        grads = torch.autograd.grad(out, inputs, grad_output, allow_unused=True)
    return tuple(torch.zeros_like(t) if g is None else g for g, t in zip(grads, inputs))


def _masked_logits(vision, text, text_token_mask, bias, scale):
    dtype = accumulate_dtype(vision.dtype)
    logits = torch.matmul(vision.to(dtype), text.to(dtype).transpose(-1, -2)) * scale + bias.to(dtype)
    return logits.masked_fill(~text_token_mask[:, None, :], float("-inf"))


def contrastive_logits(vision, text, text_token_mask, bias, scale, max_text_len):
    logits = _masked_logits(vision, text, text_token_mask, bias, scale)
    return F.pad(logits, (0, max_text_len - text.shape[1]), value=float("-inf"))


def contrastive_max(vision, text, text_token_mask, bias, scale):
    logits = _masked_logits(vision, text, text_token_mask, bias, scale)
    if text.shape[1] == 0:
        return logits.new_full(logits.shape[:2], float("-inf"))
    return logits.amax(dim=-1)


def quantize_uint8(x, scale, zero_point):
    """quantized_decomposed.quantize_per_tensor's formula (uint8, [0, 255]); NaN becomes 0 as in the kernels."""
    scaled = torch.nan_to_num(x.float() * (1.0 / scale), nan=0.0).clamp(-512.0, 512.0)
    return (torch.round(scaled) + zero_point).clamp(0, 255).to(torch.uint8)
