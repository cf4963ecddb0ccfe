"""The benchmark cases and suites: operators against transformers' PyTorch code, and the model end to end.

Cases follow MM Grounding DINO tiny at an 800x1333 input: four levels (100,167), (50,84), (25,42), (13,21),
8 heads x 32 channels, 4 points; the encoder samples from every pixel (22,223 queries), the decoder from 900
queries. Sampling locations are realistic: each query's reference point plus offsets of a few pixels, as the
trained model produces, not uniform noise over the whole map.
"""

import dataclasses
import importlib
import math

import torch

from .. import ops
from ..environment import describe_device, git_commit, versions
from ..ops import _torch_impl
from .agreement import rel_err
from .timing import copy_bandwidth_gbs, median_ms, msda_forward_bytes

LEVELS = ((100, 167), (50, 84), (25, 42), (13, 21))
HEADS, HEAD_DIM, POINTS, D_MODEL = 8, 32, 4, 256
TOKENS = 16  # "a cat. a remote control." and its special tokens, rounded up


@dataclasses.dataclass
class Row:
    op: str
    pass_: str
    case: str
    batch: int
    dtype: str
    backend: str
    median_ms: float
    baseline: str
    baseline_ms: float
    speedup: float
    rel_err: float
    gbs: float | None = None  # achieved bandwidth (fewest bytes / time), MSDA forward only
    peak_mb: float | None = None  # peak device memory, end-to-end rows on a GPU

    def to_json(self):
        d = dataclasses.asdict(self)
        d["pass"] = d.pop("pass_")
        return d


# ------------------------------------------------------------------ inputs


def level_table(device):
    shapes = torch.tensor(LEVELS, dtype=torch.int64, device=device)
    sizes = shapes[:, 0] * shapes[:, 1]
    starts = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    return shapes, starts, int(sizes.sum())


def msda_inputs(case, batch, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes, starts, num_values = level_table("cpu")
    if case == "encoder":
        refs = []
        for h, w in LEVELS:
            ys, xs = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij")
            refs.append(torch.stack([xs.flatten(), ys.flatten()], -1))
        ref = torch.cat(refs).expand(batch, -1, -1)
    else:
        ref = torch.rand(batch, 900, 2, generator=gen)
    queries = ref.shape[1]
    size_xy = shapes.flip(-1).float().view(1, 1, 1, len(LEVELS), 1, 2)
    offsets = torch.randn(batch, queries, HEADS, len(LEVELS), POINTS, 2, generator=gen) * 2.0 / size_xy
    loc = ref[:, :, None, None, None, :] + offsets
    attn = torch.randn(batch, queries, HEADS, len(LEVELS) * POINTS, generator=gen).softmax(-1)
    attn = attn.view(batch, queries, HEADS, len(LEVELS), POINTS)
    value = torch.randn(batch, num_values, HEADS, HEAD_DIM, generator=gen)
    value, loc, attn = (t.to(device=device, dtype=dtype) for t in (value, loc, attn))
    return value, shapes.to(device), starts.to(device), loc, attn


def contrastive_inputs(case, batch, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    rows = level_table("cpu")[2] if case == "encoder" else 900
    vision = torch.randn(batch, rows, D_MODEL, generator=gen).to(device=device, dtype=dtype)
    text = torch.randn(batch, TOKENS, D_MODEL, generator=gen).to(device=device, dtype=dtype)
    mask = torch.ones(batch, TOKENS, dtype=torch.bool)
    mask[:, 12:] = False
    return vision, text, mask.to(device)


# ------------------------------------------------------------------ transformers baselines


def transformers_msda():
    from transformers.models.mm_grounding_dino.modeling_mm_grounding_dino import MultiScaleDeformableAttention

    module = MultiScaleDeformableAttention()

    def run(value, shapes, starts, loc, attn):
        return module(value, shapes, LEVELS, starts, loc, attn, 64)

    return run


def transformers_contrastive(dtype, device):
    from transformers import MMGroundingDinoConfig
    from transformers.models.mm_grounding_dino.modeling_mm_grounding_dino import MMGroundingDinoContrastiveEmbedding

    module = MMGroundingDinoContrastiveEmbedding(MMGroundingDinoConfig()).to(device=device, dtype=dtype)
    with torch.no_grad():
        module.bias.fill_(-math.log(99))
    return module


def load_peer(spec):
    """'module:function' -> callable(value, spatial_shapes, level_start_index, sampling_locations,
    attention_weights)."""
    module_name, _, attr = spec.partition(":")
    if not attr:
        raise ValueError(f"--peer wants module:function, got {spec!r}")
    return getattr(importlib.import_module(module_name), attr)


# ------------------------------------------------------------------ suites


def _skip_failed_peer(name, what, exc):
    """A peer that lacks a dtype or shape is reported and skipped; our own backends' failures propagate."""
    if not name.startswith("peer:"):
        raise exc
    print(f"{name} skipped ({what}): {type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}")


def _msda_rows(case, batch, dtype, device, repeats, backends, peers, with_backward):
    inputs = msda_inputs(case, batch, dtype, device)
    value, shapes, starts, loc, attn = inputs
    baseline = transformers_msda()
    with torch.no_grad():
        reference = _torch_impl.ms_deform_attn(value.double(), shapes, starts, loc.double(), attn.double())
        base_ms = median_ms(lambda: baseline(*inputs), device, repeats)
    dname = str(dtype).replace("torch.", "")
    rows = []
    runners = {b: (lambda *a, b=b: ops.ms_deform_attn(*a, backend=b)) for b in backends}
    runners.update({f"peer:{name}": fn for name, fn in peers.items()})
    nbytes = msda_forward_bytes(value, loc, attn)
    for name, fn in list(runners.items()):
        try:
            with torch.no_grad():
                out = fn(*inputs)
                ms = median_ms(lambda: fn(*inputs), device, repeats)
        except Exception as exc:
            _skip_failed_peer(name, f"forward {case} {dname}", exc)
            runners.pop(name)
            continue
        rows.append(
            Row(
                "ms_deform_attn",
                "forward",
                case,
                batch,
                dname,
                name,
                ms,
                "transformers",
                base_ms,
                base_ms / ms,
                rel_err(out, reference),
                nbytes / ms / 1e6,
            )
        )
    del reference
    if not with_backward:
        return rows
    grad = torch.randn(batch, loc.shape[1], HEADS * HEAD_DIM, device=device, dtype=dtype)

    def backward_timer(fn):
        leaves = [t.detach().requires_grad_(True) for t in (value, loc, attn)]
        out = fn(leaves[0], shapes, starts, leaves[1], leaves[2])
        grads = torch.autograd.grad(out, leaves, grad, retain_graph=True)
        ms = median_ms(lambda: torch.autograd.grad(out, leaves, grad, retain_graph=True), device, repeats)
        return grads, ms

    # The float64 reference gradient: autograd through the float64 torch implementation.
    leaves64 = [t.detach().double().requires_grad_(True) for t in (value, loc, attn)]
    out64 = _torch_impl.ms_deform_attn(leaves64[0], shapes, starts, leaves64[1], leaves64[2])
    ref_grads = torch.autograd.grad(out64, leaves64, grad.double())
    del out64, leaves64
    _, base_ms = backward_timer(baseline)
    for name, fn in runners.items():
        try:
            grads, ms = backward_timer(fn)
        except Exception as exc:
            _skip_failed_peer(name, f"backward {case} {dname}", exc)
            continue
        err = max(rel_err(g, r) for g, r in zip(grads, ref_grads))
        rows.append(
            Row(
                "ms_deform_attn",
                "backward",
                case,
                batch,
                dname,
                name,
                ms,
                "transformers autograd",
                base_ms,
                base_ms / ms,
                err,
            )
        )
    return rows


def _contrastive_rows(case, batch, dtype, device, repeats, backends):
    vision, text, mask = contrastive_inputs(case, batch, dtype, device)
    module = transformers_contrastive(dtype, device)
    bias = module.bias
    dname = str(dtype).replace("torch.", "")
    scale = 1 / math.sqrt(D_MODEL)
    with torch.no_grad():
        ref = _torch_impl.contrastive_logits(vision.double(), text.double(), mask, bias.double(), scale, 256)
        ref_max = ref.amax(-1)
        base_full = median_ms(lambda: module(vision, text, mask), device, repeats)
        base_max = median_ms(lambda: module(vision, text, mask).max(-1).values, device, repeats)
        rows = []
        suites = (
            ("contrastive_logits", ops.contrastive_logits, "transformers", base_full, ref),
            ("contrastive_max", ops.contrastive_max, "transformers + max(-1)", base_max, ref_max),
        )
        for b in backends:
            for op_name, op, baseline, base_ms, reference in suites:
                out = op(vision, text, mask, bias=bias, backend=b)
                ms = median_ms(lambda: op(vision, text, mask, bias=bias, backend=b), device, repeats)
                # Masked tokens are -inf in both.
                rows.append(Row(op_name, "forward", case, batch, dname, b, ms, baseline, base_ms, base_ms / ms,
                                rel_err(out, reference, finite_only=True)))  # fmt: skip
    return rows


def tiny_model_and_inputs(device, dtype=torch.float32, height=800, width=1333, seed=0, batch=1):
    """MM Grounding DINO tiny (Swin-T, BERT-base) with random weights, a synthetic image and the token ids of the
    prompt "a cat. a remote control." ([CLS] a cat . a remote control . [SEP]); no downloads."""
    from transformers import MMGroundingDinoConfig, MMGroundingDinoForObjectDetection

    torch.manual_seed(seed)
    config = MMGroundingDinoConfig()
    config.backbone_config.image_size = max(height, width)
    model = MMGroundingDinoForObjectDetection(config).eval().to(device=device, dtype=dtype)
    gen = torch.Generator().manual_seed(seed)
    inputs = {
        "pixel_values": torch.randn(batch, 3, height, width, generator=gen).to(device=device, dtype=dtype),
        "pixel_mask": torch.ones(batch, height, width, dtype=torch.long, device=device),
        "input_ids": torch.tensor([[101, 1037, 4937, 1012, 1037, 6556, 2491, 1012, 102]] * batch, device=device),
        "attention_mask": torch.ones(batch, 9, dtype=torch.long, device=device),
    }
    return model, inputs


def _compare(ours, reference):
    """Relative error over the queries that selected the same proposal (near-tied proposals at the top-k boundary
    may swap under float noise; random weights tie often), and how many swapped; inf if -inf positions differ."""
    tol = 1e-5 if ours.init_reference_points.dtype in (torch.float32, torch.float64) else 2e-2
    same = (ours.init_reference_points.float() - reference.init_reference_points.float()).abs().amax(-1) < tol
    finite = torch.isfinite(reference.logits[same])
    if not torch.equal(torch.isfinite(ours.logits[same]), finite):
        return float("inf"), int((~same).sum())
    err = max(
        rel_err(ours.logits[same][finite], reference.logits[same][finite]),
        rel_err(ours.pred_boxes[same], reference.pred_boxes[same]),
    )
    return err, int((~same).sum())


def _peak_mb(device, fn):
    """Peak device memory (MiB) allocated while fn runs; None on the CPU."""
    if device.type != "cuda":
        return fn(), None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    out = fn()
    torch.cuda.synchronize(device)
    return out, torch.cuda.max_memory_allocated(device) / 2**20


def _end_to_end_batch(device, case, batch, dtypes, repeats, log, height, width):
    """One batch size: transformers eager, patched, then mmgdino's model (transformers' copy freed first)."""
    from ..modeling import MMGroundingDinoForObjectDetection
    from ..patching import patch, unpatch

    rows = []

    def add(dtype, backend, ms, baseline, base_ms, err, peak):
        rows.append(Row("model", "forward", case, batch, dtype, backend, ms, baseline, base_ms, base_ms / ms, err,
                        peak_mb=peak))  # fmt: skip

    model, inputs = tiny_model_and_inputs(device, height=height, width=width, batch=batch)
    with torch.no_grad():
        reference, base_peak = _peak_mb(device, lambda: model(**inputs))
        base_ms = median_ms(lambda: model(**inputs), device, repeats, warmup=0)  # the call above warmed up
        add("float32", "transformers eager", base_ms, "transformers eager", base_ms, 0.0, base_peak)
        patch(model)
        try:
            patched, peak = _peak_mb(device, lambda: model(**inputs))
            ms = median_ms(lambda: model(**inputs), device, repeats, warmup=0)
        finally:
            unpatch(model)
        err, swapped = _compare(patched, reference)
        log(f"  mmgdino.patch: {swapped} of {patched.logits.shape[1] * batch} proposals swapped at the top-k boundary")
        add("float32", "mmgdino.patch", ms, "transformers eager", base_ms, err, peak)
        ours = MMGroundingDinoForObjectDetection.from_transformers(model)
        model = None  # transformers' copy freed before ours is timed
        for dtype in dtypes:
            ours = ours.to(dtype)
            cast = {k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()}
            out, peak = _peak_mb(device, lambda: ours(**cast))
            ms = median_ms(lambda: ours(**cast), device, repeats, warmup=0)
            err, swapped = _compare(out, reference)
            log(f"  mmgdino model {dtype}: {swapped} proposals swapped at the top-k boundary")
            add(str(dtype).replace("torch.", ""), "mmgdino model", ms, "transformers eager float32", base_ms, err, peak)
    return rows


def has_native_bf16(device):
    """Whether the device computes bfloat16 natively: a GPU, or a CPU with AVX512_BF16 (oneDNN's bf16 matrix
    products; elsewhere bf16 is emulated and slower than float32)."""
    return device.type == "cuda" or bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())


def default_dtypes(device):
    """float32, and bfloat16 where the device computes it natively."""
    return [torch.float32, torch.bfloat16] if has_native_bf16(device) else [torch.float32]


def run_end_to_end(device=None, repeats=3, log=print, batches=None, dtypes=None, height=800, width=1333):
    """End-to-end latency of the tiny model: transformers eager (float32, the baseline), the same model after
    mmgdino.patch, and mmgdino's own model holding the same weights (in each of `dtypes`). Default: batch 1 on the
    CPU, batches 1 and 8 on a GPU (with peak memory); float32, and bfloat16 where the device has it natively."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    batches = batches or ((1,) if device.type == "cpu" else (1, 8))
    dtypes = dtypes or default_dtypes(device)
    rows = []
    case = f"mm_grounding_dino_tiny {height}x{width}"
    for batch in batches:
        log(f"end to end: MM Grounding DINO tiny, {height}x{width}, batch {batch}")
        rows += _end_to_end_batch(device, case, batch, dtypes, repeats, log, height, width)
    return rows


def run_ops(
    device=None,
    dtypes=None,
    quick=False,
    repeats=None,
    peers=(),
    backends=None,
    log=print,
    end_to_end=True,
    ops_cases=True,
):
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model_dtypes = dtypes  # None: the model's own default (default_dtypes)
    if dtypes is None:
        dtypes = [torch.float32, torch.float16, torch.bfloat16] if device.type == "cuda" else default_dtypes(device)
    repeats = repeats or (2 if quick else (5 if device.type == "cpu" else 20))
    batches = (1,) if quick else (1, 4)
    peer_fns = {spec: load_peer(spec) for spec in peers}

    def usable(op):
        names = backends or ops.available_backends(op, device.type)
        # The Triton interpreter is a correctness tool: far too slow for the full-size cases on the CPU.
        return [b for b in names if not (b == "triton" and device.type == "cpu")]

    rows = []
    for dtype in dtypes if ops_cases else ():
        for case in ("encoder", "decoder"):
            for batch in batches:
                log(f"ms_deform_attn {case} batch={batch} {dtype}")
                rows += _msda_rows(
                    case, batch, dtype, device, repeats, usable("ms_deform_attn"), peer_fns, with_backward=True
                )
                log(f"contrastive {case} batch={batch} {dtype}")
                rows += _contrastive_rows(case, batch, dtype, device, repeats, usable("contrastive_logits"))
    if end_to_end:
        rows += run_end_to_end(device, repeats=2 if quick else 3, log=log, batches=(1,) if quick else None,
                               dtypes=model_dtypes)  # fmt: skip
    report = {
        "device": describe_device(device),
        "commit": git_commit(),
        "versions": versions(),
        "results": [r.to_json() for r in rows],
    }
    if device.type == "cuda":
        report["copy_gbs"] = copy_bandwidth_gbs(device)
    return report
