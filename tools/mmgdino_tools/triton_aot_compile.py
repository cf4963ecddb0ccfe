"""Compiles every Triton kernel for sm_80 and sm_90 without a GPU (Triton ships ptxas). Run it in a process without
TRITON_INTERPRET (under the interpreter @triton.jit builds no compilable kernel):

    PYTHONPATH=tools python -P -m mmgdino_tools.triton_aot_compile

Prints OK, or "SKIP: no NVIDIA compiler for Triton here: ..." where this Triton cannot compile for NVIDIA GPUs at
all (no NVIDIA backend, no ptxas); any other failure (a kernel that does not import or compile) exits non-zero.

`instantiations()` is also what cuda_resources budgets: the configurations the dispatcher launches.
"""

import sys

import torch
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

import mmgdino  # noqa: F401  (attaches mmgdino.kernels in a source checkout)

POINTER = {"float32": "*fp32", "float16": "*fp16", "bfloat16": "*bf16"}
# The model's shapes: 8 heads x 32 channels, 4 levels x 4 points, prompts of up to 256 tokens.
HEAD_DIM, NUM_QUERIES, NUM_TOKENS = 32, 22223, 256


def compile_one(fn, signature, constexprs, capability, num_warps=4):
    src = ASTSource(fn, {**signature, **{k: "constexpr" for k in constexprs}}, constexprs=constexprs)
    kernel = triton.compile(src, target=GPUTarget("cuda", capability, 32), options={"num_warps": num_warps})
    assert kernel.asm["cubin"], "no binary"
    return kernel


def instantiations():
    """(name, dtype, fn, signature, constexprs, num_warps) of every kernel configuration the Triton backend
    launches for the model's shapes, taken from the launchers' own configuration functions."""
    from mmgdino.kernels import contrastive_logits as cl
    from mmgdino.kernels import ms_deform_attn as msda

    msda_scalars = {"num_queries": "i32", "num_values": "i32", "num_heads": "i32", "head_dim": "i32"}
    block_q, block_d, msda_warps = msda.launch_config(NUM_QUERIES, HEAD_DIM, interpret=False)
    for dtype, p in POINTER.items():
        constexprs = {"NUM_LEVELS": 4, "NUM_POINTS": 4, "BLOCK_Q": block_q, "BLOCK_D": block_d, "ACC": tl.float32}
        fwd = {
            "value_ptr": p,
            "shapes_ptr": "*i64",
            "starts_ptr": "*i64",
            "loc_ptr": p,
            "attn_ptr": p,
            "out_ptr": p,
        }
        yield "msda_forward", dtype, msda.forward_kernel, {**fwd, **msda_scalars}, constexprs, msda_warps
        bwd = {
            "grad_out_ptr": p,
            "value_ptr": p,
            "shapes_ptr": "*i64",
            "starts_ptr": "*i64",
            "loc_ptr": p,
            "attn_ptr": p,
            "grad_value_ptr": "*fp32",
            "grad_loc_ptr": p,
            "grad_attn_ptr": p,
        }
        yield "msda_backward", dtype, msda.backward_kernel, {**bwd, **msda_scalars}, constexprs, msda_warps
        common = cl.launch_config(torch.empty(0, dtype=getattr(torch, dtype)), NUM_TOKENS, tl.float32)
        ptrs = {
            "vision_ptr": p,
            "text_ptr": p,
            "mask_ptr": "*i1",
            "bias_ptr": "*fp32",
            "out_ptr": "*fp32",
            "scale": "fp32",
            "num_rows": "i32",
            "num_tokens": "i32",
            "dim": "i32",
        }
        logits = {**ptrs, "max_text_len": "i32"}
        yield "contrastive_logits", dtype, cl.logits_kernel, logits, {**common, "BLOCK_PAD": 64}, cl.NUM_WARPS
        yield "contrastive_max", dtype, cl.max_kernel, ptrs, common, cl.NUM_WARPS


SKIP = "SKIP: no NVIDIA compiler for Triton here"


def missing_compiler():
    """Why this Triton cannot compile for NVIDIA GPUs at all, or None."""
    from triton.backends import backends

    if "nvidia" not in backends:
        return "this Triton has no NVIDIA backend"
    try:
        from triton import knobs

        knobs.nvidia.ptxas  # noqa: B018  (Triton's own search: TRITON_PTXAS_PATH, then the ptxas it ships)
    except Exception as exc:  # a Triton without ptxas fails its search in its own way
        return f"Triton finds no ptxas ({type(exc).__name__}: {exc})"
    return None


def main():
    reason = missing_compiler()
    if reason is not None:
        print(f"{SKIP}: {reason}")
        return 0
    for capability in (80, 90):
        for _name, _dtype, fn, signature, constexprs, num_warps in instantiations():
            compile_one(fn, signature, constexprs, capability, num_warps)
        print(f"compiled sm_{capability}", flush=True)
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
