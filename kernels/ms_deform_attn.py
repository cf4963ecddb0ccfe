"""Triton multi-scale deformable attention, forward and backward.

One program per (block of BLOCK_Q queries, batch * head): a [BLOCK_Q, BLOCK_D] tile of channels, looping over levels
and points (run-time loops: unrolling all 16 points x 4 corners made ptxas take minutes), with the bilinear corners
and weights computed once per point for the whole channel tile, accumulated in the dtype the caller names (ACC).
The backward recomputes the corners, reduces grad_attention / grad_location in registers and scatters grad_value
with float32 atomics.
"""

import triton
import triton.language as tl


@triton.jit
def _corner(value_ptr, row, valid, head_base, row_stride, d_offs, d_mask, ACC: tl.constexpr):
    offs = head_base + row.to(tl.int64)[:, None] * row_stride + d_offs[None, :]
    vals = tl.load(value_ptr + offs, mask=valid[:, None] & d_mask[None, :], other=0.0)
    return vals.to(ACC), offs


@triton.jit
def _point_setup(loc_ptr, attn_ptr, point_index, q_mask, height, width, ACC: tl.constexpr):
    """Corner rows, validity and weights of one sampling point for a block of queries."""
    x = tl.load(loc_ptr + 2 * point_index, mask=q_mask, other=0.0).to(ACC)
    y = tl.load(loc_ptr + 2 * point_index + 1, mask=q_mask, other=0.0).to(ACC)
    attn = tl.load(attn_ptr + point_index, mask=q_mask, other=0.0).to(ACC)
    h_f = height.to(ACC)
    w_f = width.to(ACC)
    h_im = y * h_f - 0.5
    w_im = x * w_f - 0.5
    # -1 included: grid_sample's one-sided gradient there (csrc/include/mmgdino/sampling.h); False for NaN / inf
    touches = q_mask & (h_im >= -1.0) & (w_im >= -1.0) & (h_im < h_f) & (w_im < w_f)
    h_im = tl.where(touches, h_im, 0.0)
    w_im = tl.where(touches, w_im, 0.0)
    h0f = tl.floor(h_im)
    w0f = tl.floor(w_im)
    lh = h_im - h0f
    lw = w_im - w0f
    h0 = h0f.to(tl.int64)
    w0 = w0f.to(tl.int64)
    return touches, h0, w0, lh, lw, attn


@triton.jit
def _corner_valid(touches, h, w, height, width, start, num_values):
    row = start + h * width + w
    ok = touches & (h >= 0) & (h < height) & (w >= 0) & (w < width) & (row >= 0) & (row < num_values)
    return ok, tl.where(ok, row, 0)


@triton.jit
def _corner_tap(corner: tl.constexpr, touches, h0, w0, lh, lw, height, width, start, num_values, value_ptr, head_base,
                row_stride, d_offs, d_mask, ACC: tl.constexpr):  # fmt: skip
    """One of a point's four bilinear corners (corner // 2 rows down, corner % 2 columns right): whether it is
    inside the level, its two bilinear weights, its channel values and their offsets in value."""
    dh = corner // 2
    dw = corner % 2
    ok, row = _corner_valid(touches, h0 + dh, w0 + dw, height, width, start, num_values)
    wy = lh * dh + (1.0 - lh) * (1 - dh)
    wx = lw * dw + (1.0 - lw) * (1 - dw)
    vals, offs = _corner(value_ptr, row, ok, head_base, row_stride, d_offs, d_mask, ACC)
    return ok, wy, wx, vals, offs


@triton.jit
def _level(shapes_ptr, starts_ptr, level):
    """(height, width, first value row) of one feature level."""
    return tl.load(shapes_ptr + 2 * level), tl.load(shapes_ptr + 2 * level + 1), tl.load(starts_ptr + level)


@triton.jit
def _program_tile(num_queries, num_values, num_heads, head_dim, BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr):
    """This program's block of queries of one (batch, head) and its channel tile: masks, the head's first value
    element, and the (b, q, h) rows of the point tables ((batch, queries, heads, levels, points), int64)."""
    b = tl.program_id(1) // num_heads
    h = tl.program_id(1) % num_heads
    q = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    d_offs = tl.arange(0, BLOCK_D)
    head_base = (b.to(tl.int64) * num_values * num_heads + h) * head_dim
    bqh = (b.to(tl.int64) * num_queries + q) * num_heads + h
    return q < num_queries, d_offs, d_offs < head_dim, num_heads * head_dim, head_base, bqh


@triton.jit
def forward_kernel(value_ptr, shapes_ptr, starts_ptr, loc_ptr, attn_ptr, out_ptr, num_queries, num_values, num_heads,
                   head_dim, NUM_LEVELS: tl.constexpr, NUM_POINTS: tl.constexpr, BLOCK_Q: tl.constexpr,
                   BLOCK_D: tl.constexpr, ACC: tl.constexpr):  # fmt: skip
    q_mask, d_offs, d_mask, row_stride, head_base, bqh = _program_tile(num_queries, num_values, num_heads, head_dim,
                                                                        BLOCK_Q, BLOCK_D)  # fmt: skip
    acc = tl.zeros((BLOCK_Q, BLOCK_D), dtype=ACC)
    for level in range(NUM_LEVELS):
        height, width, start = _level(shapes_ptr, starts_ptr, level)
        for point in range(NUM_POINTS):
            point_index = bqh * (NUM_LEVELS * NUM_POINTS) + level * NUM_POINTS + point
            touches, h0, w0, lh, lw, attn = _point_setup(loc_ptr, attn_ptr, point_index, q_mask, height, width, ACC)
            for corner in tl.static_range(4):
                ok, wy, wx, vals, _ = _corner_tap(corner, touches, h0, w0, lh, lw, height, width, start, num_values,
                                                  value_ptr, head_base, row_stride, d_offs, d_mask, ACC)  # fmt: skip
                acc += (tl.where(ok, wy * wx * attn, 0.0))[:, None] * vals
    out_offs = bqh[:, None] * head_dim + d_offs[None, :]
    tl.store(out_ptr + out_offs, acc.to(out_ptr.dtype.element_ty), mask=q_mask[:, None] & d_mask[None, :])


@triton.jit
def backward_kernel(grad_out_ptr, value_ptr, shapes_ptr, starts_ptr, loc_ptr, attn_ptr, grad_value_ptr, grad_loc_ptr,
                    grad_attn_ptr, num_queries, num_values, num_heads, head_dim, NUM_LEVELS: tl.constexpr,
                    NUM_POINTS: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr,
                    ACC: tl.constexpr):  # fmt: skip
    q_mask, d_offs, d_mask, row_stride, head_base, bqh = _program_tile(num_queries, num_values, num_heads, head_dim,
                                                                        BLOCK_Q, BLOCK_D)  # fmt: skip
    grad = tl.load(
        grad_out_ptr + bqh[:, None] * head_dim + d_offs[None, :], mask=q_mask[:, None] & d_mask[None, :], other=0.0
    ).to(ACC)
    for level in range(NUM_LEVELS):
        height, width, start = _level(shapes_ptr, starts_ptr, level)
        for point in range(NUM_POINTS):
            point_index = bqh * (NUM_LEVELS * NUM_POINTS) + level * NUM_POINTS + point
            touches, h0, w0, lh, lw, attn = _point_setup(loc_ptr, attn_ptr, point_index, q_mask, height, width, ACC)
            grad_attn = tl.zeros((BLOCK_Q,), dtype=ACC)
            grad_w = tl.zeros((BLOCK_Q,), dtype=ACC)  # d sample / d w_im, before the attention weight
            grad_h = tl.zeros((BLOCK_Q,), dtype=ACC)
            for corner in tl.static_range(4):
                ok, wy, wx, vals, offs = _corner_tap(corner, touches, h0, w0, lh, lw, height, width, start,
                                                     num_values, value_ptr, head_base, row_stride, d_offs, d_mask,
                                                     ACC)  # fmt: skip
                dot = tl.sum(vals * grad, axis=1)
                dot = tl.where(ok, dot, 0.0)
                grad_attn += wy * wx * dot
                # d(wy * wx) / d w_im = +-wy and d(wy * wx) / d h_im = +-wx, + for the far corner
                grad_w += (2 * (corner % 2) - 1) * wy * dot
                grad_h += (2 * (corner // 2) - 1) * wx * dot
                contribution = tl.where(ok, wy * wx * attn, 0.0)[:, None] * grad
                tl.atomic_add(
                    grad_value_ptr + offs,
                    contribution.to(grad_value_ptr.dtype.element_ty),
                    mask=ok[:, None] & d_mask[None, :],
                )
            grad_attn = tl.where(touches, grad_attn, 0.0)
            grad_x = tl.where(touches, attn * width.to(ACC) * grad_w, 0.0)
            grad_y = tl.where(touches, attn * height.to(ACC) * grad_h, 0.0)
            tl.store(grad_attn_ptr + point_index, grad_attn.to(grad_attn_ptr.dtype.element_ty), mask=q_mask)
            tl.store(grad_loc_ptr + 2 * point_index, grad_x.to(grad_loc_ptr.dtype.element_ty), mask=q_mask)
            tl.store(grad_loc_ptr + 2 * point_index + 1, grad_y.to(grad_loc_ptr.dtype.element_ty), mask=q_mask)


def launch_config(num_queries, head_dim, interpret):
    block_d = triton.next_power_of_2(max(head_dim, 1))
    # Enough queries per program to fill the channel tile to ~2K elements; the interpreter prefers big tiles.
    block_q = max(16, min(128, 2048 // block_d)) if not interpret else 64
    # At most 8 tile elements per thread: at 16 (a 64x32 tile on 4 warps) ptxas caps both kernels at 255
    # registers and spills 100-600 bytes per thread on sm_80 and sm_90 (benchmarks/results/cuda-resources.md).
    return block_q, block_d, max(2, min(8, block_q * block_d // 256))


def _launch(value, sampling_locations, accumulate, interpret):
    """(grid, the kernels' size arguments, their compile-time constants and warps) of one call."""
    batch, num_values, num_heads, head_dim = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    block_q, block_d, warps = launch_config(num_queries, head_dim, interpret)
    grid = (triton.cdiv(num_queries, block_q), batch * num_heads)
    constants = dict(NUM_LEVELS=num_levels, NUM_POINTS=num_points, BLOCK_Q=block_q, BLOCK_D=block_d, ACC=accumulate,
                     num_warps=warps)  # fmt: skip
    return grid, (num_queries, num_values, num_heads, head_dim), constants


def ms_deform_attn_fwd(wrap, value, spatial_shapes, level_start_index, sampling_locations, attention_weights, out,
                       accumulate, interpret=False):  # fmt: skip
    grid, sizes, constants = _launch(value, sampling_locations, accumulate, interpret)
    wrap(forward_kernel)[grid](value, spatial_shapes, level_start_index, sampling_locations, attention_weights, out,
                               *sizes, **constants)  # fmt: skip


def ms_deform_attn_bwd(wrap, grad_out, value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                       grad_value_acc, grad_loc, grad_attn, accumulate, interpret=False):  # fmt: skip
    grid, sizes, constants = _launch(value, sampling_locations, accumulate, interpret)
    wrap(backward_kernel)[grid](grad_out, value, spatial_shapes, level_start_index, sampling_locations,
                                attention_weights, grad_value_acc, grad_loc, grad_attn,
                                *sizes, **constants)  # fmt: skip
