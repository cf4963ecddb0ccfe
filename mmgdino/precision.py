"""The precision this model runs fastest at on this CPU without losing agreement, read from the CPU's features: what
`dtype="auto"` (`Detector`, `--dtype auto`) picks, and the line `mmgdino info` prints about it.

The rule, one row per kind of CPU (`AUTO` below); the bf16 row measured on a Zen 4 (benchmarks/results/cpu-peers.md),
the AVX2 row on a Zen 3 in an earlier session (the capped-AVX2 run, `cpu_peers --isa avx2`, is not recorded yet):

- native bf16 (AVX512_BF16 or AMX): bfloat16. oneDNN's bf16 matrix products run at twice float32's rate and
  everything else moves half the bytes; bf16 keeps most of float32's detections (README "The best precision").
- anything else (AVX2, AVX-512 without BF16): float32. bf16 there is emulated: oneDNN and ATen convert every
  operand, so bf16 ran several times slower than float32 (Zen 3: 38 s against 5.6 s). A bf16 run asked for
  anyway computes its matrix products in float32 (`float32_matmuls`), so it is never slower than that.
- on a GPU: float32 (bf16 is the user's choice there; this table is about CPUs).

The CPU's features are what every layer would actually use: the hardware's flags, capped by the switches the
layers obey (`ONEDNN_MAX_CPU_ISA` for oneDNN's matrix products, `ATEN_CPU_CAPABILITY` for ATen and Inductor's
generated code, `MMGDINO_CPU_ISA` for mmgdino's kernels), so a capped process decides as the capped CPU would.
"""

import contextlib
import dataclasses
import os

import torch

# ISA levels from least to most capable; each implies the ones before it.
LEVELS = ("baseline", "avx2", "avx512", "avx512_bf16", "amx")

# The level each switch's values cap the process at (values not listed cap nothing).
_ONEDNN_CAPS = {
    "sse41": "baseline",
    "avx": "baseline",
    "avx2": "avx2",
    "avx2_vnni": "avx2",
    "avx2_vnni_2": "avx2",
    "avx512_core": "avx512",
    "avx512_core_vnni": "avx512",
    "avx512_core_bf16": "avx512_bf16",
    "avx10_1_512": "avx512_bf16",
    "avx512_core_fp16": "avx512_bf16",
}
_ATEN_CAPS = {"default": "baseline", "avx2": "avx2"}
_MMGDINO_CAPS = {"baseline": "baseline", "avx2": "avx2", "avx512": "avx512"}

# The automatic precision per level: (dtype name, why). One row per kind of CPU.
AUTO = {
    "amx": ("bfloat16", "AMX tiles compute bf16 matrix products natively"),
    "avx512_bf16": ("bfloat16", "AVX512_BF16 computes bf16 dot products natively (oneDNN: twice float32's rate)"),
    "avx512": ("float32", "no native bf16 (AVX-512 without BF16): bf16 would be emulated, slower than float32"),
    "avx2": ("float32", "no native bf16 (AVX2): bf16 would be emulated, several times slower than float32"),
    "baseline": ("float32", "no AVX2: only float32 runs at speed"),
}


@dataclasses.dataclass(frozen=True)
class CpuFeatures:
    hardware: str  # the highest level the CPU has
    level: str  # after the switches' caps: what the layers use
    capped_by: tuple  # the switches that lowered it, as "NAME=value"
    vnni: bool  # int8 dot products (AVX512_VNNI / AVX-VNNI)

    @property
    def native_bf16(self):
        return LEVELS.index(self.level) >= LEVELS.index("avx512_bf16")

    def describe(self):
        capped = f", capped to {self.level} by {', '.join(self.capped_by)}" if self.capped_by else ""
        return f"{self.hardware}{' + VNNI' if self.vnni else ''}{capped}"


def _hardware_level():
    cpu = torch.cpu
    if getattr(cpu, "_is_amx_tile_supported", lambda: False)():
        return "amx"
    if getattr(cpu, "_is_avx512_bf16_supported", lambda: False)():
        return "avx512_bf16"
    if getattr(cpu, "_is_avx512_supported", lambda: False)():
        return "avx512"
    if getattr(cpu, "_is_avx2_supported", lambda: False)():
        return "avx2"
    return "baseline"


def cpu_features(environ=None):
    """This CPU's features as the layers see them (the hardware, capped by the ISA switches in `environ`)."""
    environ = os.environ if environ is None else environ
    hardware = _hardware_level()
    level, capped_by = hardware, []
    for name, table in (("ONEDNN_MAX_CPU_ISA", _ONEDNN_CAPS), ("ATEN_CPU_CAPABILITY", _ATEN_CAPS),
                        ("MMGDINO_CPU_ISA", _MMGDINO_CAPS)):  # fmt: skip
        value = environ.get(name, "").strip().lower()
        cap = table.get(value)
        if cap is not None and LEVELS.index(cap) < LEVELS.index(level):
            level = cap
            capped_by.append(f"{name}={environ[name]}")
    vnni = bool(getattr(torch.cpu, "_is_vnni_supported", lambda: False)()) and level != "baseline"
    return CpuFeatures(hardware, level, tuple(capped_by), vnni)


def automatic_dtype(device="cpu", features=None):
    """(dtype name, why) that `dtype="auto"` picks on `device`."""
    if torch.device(device).type != "cpu":
        return "float32", "on a GPU auto keeps float32 (pass bfloat16 for speed; agreement as on the CPU)"
    features = features or cpu_features()
    return AUTO[features.level]


def needs_float32_matmuls(dtype, device="cpu", features=None):
    """Whether a bf16 / fp16 run here should compute its matrix products in float32: a CPU without native bf16."""
    if torch.device(device).type != "cpu" or dtype not in (torch.bfloat16, torch.float16):
        return False
    return not (features or cpu_features()).native_bf16


_MATMULS = {
    torch.nn.functional.linear,
    torch.nn.functional.conv2d,
    torch.matmul,
    torch.Tensor.matmul,
    torch.Tensor.__matmul__,
    torch.bmm,
    torch.baddbmm,
    torch.addmm,
    torch.mm,
    torch.einsum,
    torch.nn.functional.scaled_dot_product_attention,
}


class float32_matmuls(torch.overrides.TorchFunctionMode):
    """Matrix products (linear, conv2d, matmul, bmm, einsum, SDPA) of 16-bit CPU tensors computed in float32 and
    rounded back: on a CPU without native bf16 the 16-bit products are emulated and slower than float32's, while the
    rest of the model keeps its 16-bit storage. Under `torch.compile` the weights' conversion is folded (freezing)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in _MATMULS:
            return func(*args, **kwargs)
        low = next((t.dtype for t in _tensors(args, kwargs) if t.dtype in (torch.bfloat16, torch.float16)), None)
        if low is None:
            return func(*args, **kwargs)
        args, kwargs = torch.utils._pytree.tree_map_only(torch.Tensor, _widen, (args, kwargs))
        return torch.utils._pytree.tree_map_only(torch.Tensor, lambda t: t.to(low), func(*args, **kwargs))


def _tensors(args, kwargs):
    return [t for t in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]


def _widen(t):
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


def matmul_context(dtype, device="cpu"):
    """A factory of contexts for a run's forward passes: `float32_matmuls` where `needs_float32_matmuls`, else
    nothing."""
    return float32_matmuls if needs_float32_matmuls(dtype, device) else contextlib.nullcontext


def info_line():
    """`mmgdino info`'s line: the CPU's features, the automatic precision and why, and what int8 runs around its
    products (the same precision: mmgdino.quantization)."""
    features = cpu_features()
    dtype, why = automatic_dtype("cpu", features)
    return f"CPU {features.describe()}: dtype auto -> {dtype} ({why}); dtype int8 -> int8 products, {dtype} elsewhere"
