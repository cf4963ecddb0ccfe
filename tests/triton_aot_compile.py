"""Compiles every Triton kernel for sm_80 and sm_90 without a GPU (Triton ships ptxas). Run as a script, in a
process without TRITON_INTERPRET (under the interpreter @triton.jit builds no compilable kernel)."""

import sys

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

import mmgdino  # noqa: F401  (attaches mmgdino.kernels in a source checkout)
from mmgdino.ops import _triton

POINTER = {"float32": "*fp32", "float16": "*fp16", "bfloat16": "*bf16"}


def compile_one(fn, signature, constexprs, capability):
    src = ASTSource(fn, {**signature, **{k: "constexpr" for k in constexprs}}, constexprs=constexprs)
    kernel = triton.compile(src, target=GPUTarget("cuda", capability, 32), options={"num_warps": 4})
    assert kernel.asm["cubin"], "no binary"


def main():
    if _triton._error is not None:
        print(f"SKIP: {_triton._error}")
        return 0
    from mmgdino.kernels import contrastive_logits as cl
    from mmgdino.kernels import ms_deform_attn as msda

    msda_scalars = {"num_queries": "i32", "num_values": "i32", "num_heads": "i32", "head_dim": "i32"}
    for capability in (80, 90):
        for dtype, p in POINTER.items():
            constexprs = {"NUM_LEVELS": 4, "NUM_POINTS": 4, "BLOCK_Q": 64, "BLOCK_D": 32, "ACC": tl.float32}
            fwd = {
                "value_ptr": p,
                "shapes_ptr": "*i64",
                "starts_ptr": "*i64",
                "loc_ptr": p,
                "attn_ptr": p,
                "out_ptr": p,
            }
            compile_one(msda._fwd_kernel, {**fwd, **msda_scalars}, constexprs, capability)
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
            compile_one(msda._bwd_kernel, {**bwd, **msda_scalars}, constexprs, capability)
            common = {
                "BLOCK_N": 64,
                "BLOCK_T": 16,
                "BLOCK_K": 32,
                "ACC": tl.float32,
                "PRECISION": "ieee" if dtype == "float32" else None,
                "UPCAST": False,
            }
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
            compile_one(cl._fwd_kernel, {**ptrs, "max_text_len": "i32"}, {**common, "BLOCK_PAD": 64}, capability)
            compile_one(cl._max_kernel, ptrs, common, capability)
            print(f"compiled sm_{capability} {dtype}", flush=True)
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
