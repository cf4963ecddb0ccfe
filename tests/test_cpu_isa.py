"""The CPU kernels' builds (baseline, avx2, avx512, avx512_bf16): each one this CPU can run gives the same results
as the portable build, for every operator (the activation quantization byte for byte) and input dtype. Each build
runs in its own process (MMGDINO_CPU_ISA is read once, when the extension loads)."""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from helpers import GRAD_TOLERANCE, TOLERANCE, contrastive_inputs, msda_inputs, rel_err

from mmgdino import ops

pytestmark = pytest.mark.skipif(
    "cpu" not in ops.available_backends("ms_deform_attn", "cpu"), reason="extension not built"
)

DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# Runs in the child: every CPU fast path (MSDA forward and backward, contrastive logits and max) in each dtype, on
# the inputs the parent made once (the `inputs` fixture), so every build sees the same ones. dim 256 takes the
# AVX-512 BF16 dot products, dim 24 the 8-wide loop.
_CHILD = """
import sys, torch
from mmgdino import _extension, ops
outs = {}
for dt, case in torch.load(sys.argv[1]).items():
    value, shapes, starts, loc, attn = case["msda"]
    leaves = [t.detach().requires_grad_(True) for t in (value, loc, attn)]
    out = ops.ms_deform_attn(leaves[0], shapes, starts, leaves[1], leaves[2], backend="cpu")
    grads = torch.autograd.grad(out, leaves, case["grad"])
    outs[(dt, "forward")] = out.detach().float()
    for name, g in zip(("grad_value", "grad_loc", "grad_attn"), grads):
        outs[(dt, name)] = g.float()
    for dim, (vision, text, mask) in case["contrastive"].items():
        outs[(dt, f"logits_{dim}")] = ops.contrastive_logits(vision, text, mask, bias=0.5, backend="cpu")
        outs[(dt, f"max_{dim}")] = ops.contrastive_max(vision, text, mask, bias=0.5, backend="cpu")
    outs[(dt, "quantize")] = ops.quantize_uint8(value * 40, 0.05, 100).float()
torch.save({"isa": _extension.cpu_isa, "outs": outs}, sys.argv[2])
"""


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The children's inputs, in a file: per dtype the MSDA inputs and output gradient, and contrastive inputs."""
    cases = {}
    for dt in DTYPES:
        torch.manual_seed(3)
        value, shapes, starts, loc, attn = msda_inputs(dtype=dt, head_dim=32)
        grad = torch.randn(loc.shape[0], loc.shape[1], value.shape[2] * value.shape[3]).to(dt)
        contrastive = {dim: contrastive_inputs(batch=2, rows=19, tokens=11, dim=dim, dtype=dt) for dim in (256, 24)}
        cases[str(dt)] = {"msda": (value, shapes, starts, loc, attn), "grad": grad, "contrastive": contrastive}
    path = tmp_path_factory.mktemp("isa") / "inputs.pt"
    torch.save(cases, path)
    return path


def _outputs(isa, inputs):
    out = Path(tempfile.gettempdir()) / f"mmgdino-isa-{isa or 'best'}-{os.getpid()}.pt"
    env = {**os.environ, "MMGDINO_CPU_ISA": isa}
    # cwd elsewhere: `python -c` puts the working directory on sys.path, and the child must import the mmgdino
    # under test (an installed wheel in CI's second run), not the checkout's.
    subprocess.run([sys.executable, "-c", _CHILD, str(inputs), str(out)], env=env, check=True, timeout=300,
                   cwd=tempfile.gettempdir())  # fmt: skip
    result = torch.load(out)
    out.unlink()
    return result


@pytest.fixture(scope="module")
def baseline(inputs):
    result = _outputs("baseline", inputs)
    assert result["isa"] == "baseline"
    return result["outs"]


@pytest.mark.parametrize("isa", ["avx2", "avx512", "avx512_bf16", ""], ids=["avx2", "avx512", "avx512_bf16", "chosen"])
def test_every_build_agrees_with_the_portable_one_in_every_dtype(isa, baseline, inputs):
    from mmgdino import _extension

    result = _outputs(isa, inputs)
    if isa and result["isa"] != isa:
        pytest.skip(f"this CPU cannot run the {isa} build (it picked {result['isa']})")
    if not isa:
        assert result["isa"] == _extension.cpu_isa
    for (dtype, what), out in result["outs"].items():
        want = baseline[(dtype, what)]
        if what == "quantize":  # rounding to integers: every build gives the same bytes
            assert torch.equal(out, want), dtype
            continue
        dt = getattr(torch, dtype.removeprefix("torch."))
        tol = (GRAD_TOLERANCE if what.startswith("grad") else TOLERANCE)[dt]
        finite = torch.isfinite(want)
        assert torch.equal(torch.isfinite(out), finite), (dtype, what)
        assert rel_err(out[finite], want[finite]) <= tol, (dtype, what, rel_err(out[finite], want[finite]))


def test_the_build_is_the_best_this_cpu_has_and_the_variable_caps_it():
    """cpu_isa names the build; MMGDINO_CPU_ISA caps it (avx2 on an AVX-512 CPU gives avx2), and an unknown value
    is ignored."""
    from mmgdino import _extension

    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    if "avx512_bf16" in flags and "avx512vl" in flags:
        assert _extension.cpu_isa == "avx512_bf16"
    code = "from mmgdino import _extension; print(_extension.cpu_isa)"
    for asked in ("avx2", "avx512", "nonsense"):
        env = {**os.environ, "MMGDINO_CPU_ISA": asked}
        got = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                             cwd=tempfile.gettempdir())  # fmt: skip
        avx2 = "avx2" if " avx2" in flags else "baseline"
        avx512 = "avx512" if " avx512vl" in flags and " avx512dq" in flags else avx2
        want = {"avx2": avx2, "avx512": avx512, "nonsense": _extension.cpu_isa}[asked]
        assert got.stdout.strip() == want, asked
