import math

import pytest
import torch
from helpers import CONTRASTIVE_SHAPES, TOLERANCE, backend_params, contrastive_inputs, opcheck_kwargs, rel_err

from mmgdino import ops

BACKENDS = backend_params("contrastive_logits")
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def _reference(vision, text, mask, bias, scale, max_text_len=256):
    logits = (vision.double() @ text.double().transpose(1, 2)) * scale + bias
    logits = logits.masked_fill(~mask[:, None, :], float("-inf"))
    padded = logits.new_full((*logits.shape[:2], max_text_len), float("-inf"))
    padded[..., : logits.shape[-1]] = logits
    return padded


def _finite_rel_err(out, ref):
    finite = torch.isfinite(ref)
    assert torch.equal(torch.isfinite(out), finite), "-inf positions differ"
    assert torch.equal(out[~finite], ref[~finite].to(out.dtype)), "non-finite values differ"
    return rel_err(out[finite], ref[finite])


SHAPES = CONTRASTIVE_SHAPES


@pytest.mark.parametrize("backend_device", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("bias,scale", [(0.0, None), (-4.6, None), (0.0, 1.0), (1.5, 0.25)])
def test_logits_match_float64_reference(backend_device, dtype, shape, bias, scale):
    backend, device = backend_device
    vision, text, mask = contrastive_inputs(dtype=dtype, device=device, **SHAPES[shape])
    max_text_len = max(32, text.shape[1] + 7)
    out = ops.contrastive_logits(vision, text, mask, bias=bias, scale=scale, max_text_len=max_text_len, backend=backend)
    eff_scale = 1 / math.sqrt(vision.shape[-1]) if scale is None else scale
    ref = _reference(vision, text, mask, bias, eff_scale, max_text_len)
    assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert out.shape == ref.shape
    if ref.numel():
        assert _finite_rel_err(out, ref) <= TOLERANCE[dtype]


@pytest.mark.parametrize("backend_device", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_max_matches_reference(backend_device, dtype, shape):
    backend, device = backend_device
    vision, text, mask = contrastive_inputs(dtype=dtype, device=device, **SHAPES[shape])
    out = ops.contrastive_max(vision, text, mask, bias=-0.5, backend=backend)
    ref = _reference(vision, text, mask, -0.5, 1 / math.sqrt(vision.shape[-1]), text.shape[1]).amax(-1)
    assert out.shape == ref.shape
    if ref.numel():
        assert rel_err(out, ref) <= TOLERANCE[dtype]


@pytest.mark.parametrize("backend_device", BACKENDS)
def test_max_of_fully_masked_row_is_minus_inf(backend_device):
    backend, device = backend_device
    vision, text, mask = contrastive_inputs(device=device)
    mask[1] = False
    out = ops.contrastive_max(vision, text, mask, backend=backend)
    assert torch.isneginf(out[1]).all() and torch.isfinite(out[0]).all()


@pytest.mark.parametrize("backend_device", BACKENDS)
def test_bias_as_parameter_tensor(backend_device):
    backend, device = backend_device
    vision, text, mask = contrastive_inputs(device=device)
    bias = torch.nn.Parameter(torch.tensor(-2.0, device=device))
    a = ops.contrastive_logits(vision, text, mask, bias=bias, backend=backend)
    b = ops.contrastive_logits(vision, text, mask, bias=-2.0, backend=backend)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("backend_device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_matches_transformers_mm_grounding_dino_module(backend_device, dtype):
    backend, device = backend_device
    from transformers import MMGroundingDinoConfig
    from transformers.models.mm_grounding_dino.modeling_mm_grounding_dino import MMGroundingDinoContrastiveEmbedding

    module = MMGroundingDinoContrastiveEmbedding(MMGroundingDinoConfig()).to(device=device, dtype=dtype)
    with torch.no_grad():
        module.bias.fill_(-math.log(99))
    vision, text, mask = contrastive_inputs(rows=30, tokens=12, dim=256, dtype=dtype, device=device)
    theirs = module(vision, text, mask)
    ours = ops.contrastive_logits(vision, text, mask, bias=module.bias, backend=backend)
    assert ours.dtype == theirs.dtype == torch.float32
    # transformers rounds its logits to the input dtype before padding into float32; we accumulate in float32.
    assert _finite_rel_err(ours, theirs.double()) <= TOLERANCE[dtype]


@pytest.mark.parametrize("backend_device", BACKENDS)
def test_matches_transformers_grounding_dino_module(backend_device):
    backend, device = backend_device
    from transformers import GroundingDinoConfig
    from transformers.models.grounding_dino.modeling_grounding_dino import GroundingDinoContrastiveEmbedding

    module = GroundingDinoContrastiveEmbedding(GroundingDinoConfig())
    vision, text, mask = contrastive_inputs(rows=30, tokens=12, dim=256, device=device)
    theirs = module(vision, text, mask)
    ours = ops.contrastive_logits(vision, text, mask, bias=0.0, scale=1.0, backend=backend)
    assert _finite_rel_err(ours, theirs.double()) <= TOLERANCE[torch.float32]


@pytest.mark.parametrize("backend_device", BACKENDS)
def test_gradcheck_float64(backend_device):
    backend, device = backend_device
    vision, text, mask = contrastive_inputs(rows=4, tokens=3, dim=5, dtype=torch.float64, device=device)
    bias = torch.tensor(0.3, dtype=torch.float64, device=device, requires_grad=True)
    vision.requires_grad_(True)
    text.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda v, t, b: ops.contrastive_logits(v, t, mask, bias=b, max_text_len=6, backend=backend).nan_to_num(
            neginf=0.0
        ),
        (vision, text, bias),
        fast_mode=backend == "triton",
    )


@pytest.mark.parametrize("backend_device", BACKENDS)
def test_opcheck(backend_device):
    backend, device = backend_device
    vision, text, mask = contrastive_inputs(rows=4, tokens=3, dim=8, device=device)
    bias = torch.tensor(0.5, device=device)
    suffix = "_triton" if backend == "triton" else ""
    kwargs = opcheck_kwargs(backend, device)
    torch.library.opcheck(
        getattr(torch.ops.mmgdino, "contrastive_logits" + suffix).default, (vision, text, mask, bias, 0.25, 8), **kwargs
    )
    torch.library.opcheck(
        getattr(torch.ops.mmgdino, "contrastive_max" + suffix).default, (vision, text, mask, bias, 0.25), **kwargs
    )


BAD = {
    "vision_rank": (lambda v, t, m: (v[0], t, m), ValueError, "vision must have shape"),
    "text_dim": (lambda v, t, m: (v, t[..., :3], m), ValueError, "text must have shape"),
    "mask_shape": (lambda v, t, m: (v, t, m[:, :2]), ValueError, "text_token_mask must have shape"),
    "mask_dtype": (lambda v, t, m: (v, t, m.float()), TypeError, "text_token_mask must be bool"),
    "text_dtype": (lambda v, t, m: (v, t.double(), m), TypeError, "text must be"),
    "vision_int": (lambda v, t, m: (v.long(), t.long(), m), TypeError, "vision must be float64"),
}


@pytest.mark.parametrize("backend_device", BACKENDS)
@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_raises_clear_error(backend_device, case):
    backend, device = backend_device
    change, error, words = BAD[case]
    vision, text, mask = contrastive_inputs(device=device)
    with pytest.raises(error, match=words):
        ops.contrastive_logits(*change(vision, text, mask), backend=backend)
    with pytest.raises(error, match=words):
        ops.contrastive_max(*change(vision, text, mask), backend=backend)


def test_bad_bias_and_lengths():
    vision, text, mask = contrastive_inputs(tokens=5)
    with pytest.raises(ValueError, match="bias must be a float or a 0-dim tensor"):
        ops.contrastive_logits(vision, text, mask, bias=torch.zeros(2))
    with pytest.raises(ValueError, match="max_text_len"):
        ops.contrastive_logits(vision, text, mask, max_text_len=4)
    with pytest.raises(ValueError, match="scale must be positive"):
        ops.contrastive_max(vision, text, mask, scale=-1.0)
