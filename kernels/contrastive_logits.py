"""Triton contrastive logits: (vision @ text^T) * scale + bias, masked and -inf padded, fused in one kernel;
and the reduced form, max over valid tokens, that never writes the (batch, rows, max_text_len) tensor.

One program per (block of BLOCK_N rows, batch). The dot products run through tl.dot with float32 accumulation
(IEEE float32 for float32 inputs, so results match a float64 reference to ~1e-6, not TF32's ~1e-3).
"""

import triton
import triton.language as tl


@triton.jit
def _dot_tile(vision_ptr, text_ptr, b, n_offs, n_mask, t_offs, t_mask, num_rows, num_tokens, dim,
              BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr, ACC: tl.constexpr,
              PRECISION: tl.constexpr, UPCAST: tl.constexpr):  # fmt: skip
    acc = tl.zeros((BLOCK_N, BLOCK_T), dtype=ACC)
    vision_rows = (b.to(tl.int64) * num_rows + n_offs) * dim
    text_rows = (b.to(tl.int64) * num_tokens + t_offs) * dim
    for k0 in range(0, dim, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_mask = k < dim
        v = tl.load(vision_ptr + vision_rows[:, None] + k[None, :], mask=n_mask[:, None] & k_mask[None, :], other=0.0)
        t = tl.load(text_ptr + text_rows[None, :] + k[:, None], mask=k_mask[:, None] & t_mask[None, :], other=0.0)
        if UPCAST:
            v = v.to(tl.float32)
            t = t.to(tl.float32)
        acc += tl.dot(v, t, input_precision=PRECISION, out_dtype=ACC)
    return acc


@triton.jit
def _token_tile(vision_ptr, text_ptr, mask_ptr, b, n_offs, n_mask, t0, num_rows, num_tokens, dim,
                BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr, ACC: tl.constexpr,
                PRECISION: tl.constexpr, UPCAST: tl.constexpr):  # fmt: skip
    """The tokens [t0, t0 + BLOCK_T) against this program's rows: (token offsets, the dot products, which tokens
    are real)."""
    t_offs = t0 + tl.arange(0, BLOCK_T)
    t_mask = t_offs < num_tokens
    acc = _dot_tile(vision_ptr, text_ptr, b, n_offs, n_mask, t_offs, t_mask, num_rows, num_tokens, dim, BLOCK_N,
                    BLOCK_T, BLOCK_K, ACC, PRECISION, UPCAST)  # fmt: skip
    valid = tl.load(mask_ptr + b * num_tokens + t_offs, mask=t_mask, other=0) != 0
    return t_offs, acc, valid


@triton.jit
def logits_kernel(vision_ptr, text_ptr, mask_ptr, bias_ptr, out_ptr, scale, num_rows, num_tokens, dim, max_text_len,
                  BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_PAD: tl.constexpr,
                  ACC: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):  # fmt: skip
    pid_n = tl.program_id(0)
    b = tl.program_id(1)
    n_offs = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = n_offs < num_rows
    bias = tl.load(bias_ptr).to(ACC)
    out_rows = (b.to(tl.int64) * num_rows + n_offs) * max_text_len
    for t0 in range(0, num_tokens, BLOCK_T):
        t_offs, acc, valid = _token_tile(vision_ptr, text_ptr, mask_ptr, b, n_offs, n_mask, t0, num_rows, num_tokens,
                                         dim, BLOCK_N, BLOCK_T, BLOCK_K, ACC, PRECISION, UPCAST)  # fmt: skip
        logits = tl.where(valid[None, :], acc * scale + bias, float("-inf"))
        tl.store(
            out_ptr + out_rows[:, None] + t_offs[None, :],
            logits.to(out_ptr.dtype.element_ty),
            mask=n_mask[:, None] & (t_offs < max_text_len)[None, :],
        )
    # Padding past the last token block: constant -inf.
    pad_start = tl.cdiv(num_tokens, BLOCK_T) * BLOCK_T
    for c0 in range(pad_start, max_text_len, BLOCK_PAD):
        c = c0 + tl.arange(0, BLOCK_PAD)
        fill = tl.full((BLOCK_N, BLOCK_PAD), float("-inf"), dtype=out_ptr.dtype.element_ty)
        tl.store(out_ptr + out_rows[:, None] + c[None, :], fill, mask=n_mask[:, None] & (c < max_text_len)[None, :])


@triton.jit
def max_kernel(vision_ptr, text_ptr, mask_ptr, bias_ptr, out_ptr, scale, num_rows, num_tokens, dim,
               BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr, ACC: tl.constexpr,
               PRECISION: tl.constexpr, UPCAST: tl.constexpr):  # fmt: skip
    pid_n = tl.program_id(0)
    b = tl.program_id(1)
    n_offs = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = n_offs < num_rows
    best = tl.full((BLOCK_N,), float("-inf"), dtype=ACC)
    for t0 in range(0, num_tokens, BLOCK_T):
        t_offs, acc, valid = _token_tile(vision_ptr, text_ptr, mask_ptr, b, n_offs, n_mask, t0, num_rows, num_tokens,
                                         dim, BLOCK_N, BLOCK_T, BLOCK_K, ACC, PRECISION, UPCAST)  # fmt: skip
        best = tl.maximum(best, tl.max(tl.where(valid[None, :], acc, float("-inf")), axis=1))
    bias = tl.load(bias_ptr).to(ACC)
    # scale > 0 keeps the order, so scaling the maximum equals maximizing the scaled logits.
    result = tl.where(best == float("-inf"), best, best * scale + bias)
    tl.store(out_ptr + b.to(tl.int64) * num_rows + n_offs, result.to(out_ptr.dtype.element_ty), mask=n_mask)


# 8 warps with 16-wide reduction tiles: the 64x64 float32 tile on 4 warps, or with 32-wide tiles, spills 40-500
# bytes per thread on sm_80/sm_90; this one spills nowhere (benchmarks/results/cuda-resources.md).
NUM_WARPS = 8


def launch_config(vision, num_tokens, accumulate):
    """Block sizes and compile-time switches; `accumulate` is the Triton dtype the caller accumulates in."""
    import os

    import torch

    block_t = min(64, max(16, triton.next_power_of_2(max(num_tokens, 1))))
    precision = "ieee" if vision.dtype in (torch.float32, torch.float64) else None
    # Triton's interpreter (CPU CI) has no bfloat16 matmul; upcast there. GPUs take bfloat16 tiles natively.
    upcast = vision.dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET", "") == "1"
    return dict(BLOCK_N=64, BLOCK_T=block_t, BLOCK_K=16, ACC=accumulate, PRECISION=precision, UPCAST=upcast)


def contrastive_logits_fwd(wrap, vision, text, mask, bias, scale, out, accumulate):
    batch, num_rows, dim = vision.shape
    num_tokens = text.shape[1]
    cfg = launch_config(vision, num_tokens, accumulate)
    grid = (triton.cdiv(num_rows, cfg["BLOCK_N"]), batch)
    wrap(logits_kernel)[grid](
        vision,
        text,
        mask,
        bias,
        out,
        scale,
        num_rows,
        num_tokens,
        dim,
        out.shape[-1],
        BLOCK_PAD=64,
        num_warps=NUM_WARPS,
        **cfg,
    )


def contrastive_max_fwd(wrap, vision, text, mask, bias, scale, out, accumulate):
    batch, num_rows, dim = vision.shape
    num_tokens = text.shape[1]
    cfg = launch_config(vision, num_tokens, accumulate)
    grid = (triton.cdiv(num_rows, cfg["BLOCK_N"]), batch)
    wrap(max_kernel)[grid](vision, text, mask, bias, out, scale, num_rows, num_tokens, dim, num_warps=NUM_WARPS, **cfg)
