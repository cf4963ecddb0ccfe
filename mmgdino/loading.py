"""One way in for every command: the device and dtype a run asks for, checked before anything loads, and the
model with its processor (tokenizer + image processor) from a hub id, a folder, or an already built model."""

import torch

from .errors import UsageError
from .modeling import MMGroundingDinoForObjectDetection, ModelLoadError

DEFAULT_MODEL = "openmmlab-community/mm_grounding_dino_tiny_o365v1_goldg_v3det"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Precisions a run may ask for beyond the dtypes: "int8" (matrix products in int8, the rest at auto's precision;
# mmgdino.quantization) and "auto" (this CPU's best, mmgdino.precision).
PRECISIONS = (*DTYPES, "int8", "auto")


def parse_dtype(dtype):
    """A torch dtype from a torch dtype, its name ("bfloat16") or None (float32)."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise UsageError(f"dtype {dtype!r} is not supported; use {', '.join(DTYPES)}")
    return DTYPES[dtype]


def dtype_name(dtype):
    if dtype == "int8":
        return dtype
    return str(parse_dtype(dtype)).replace("torch.", "")


def check_precision(device, dtype):
    """(torch.device, precision name) a run uses: "auto" becomes this device's best (mmgdino.precision), "int8" is
    checked to run here; the weights' dtype is `weights_dtype(name)`. UsageError when it cannot run here."""
    from . import precision

    if dtype == "auto":
        device, _ = check_device_and_dtype(device, None)
        dtype = precision.automatic_dtype(device)[0]
    if dtype == "int8":
        device, _ = check_device_and_dtype(device, None)
        if device.type != "cpu":
            raise UsageError(f"dtype int8 runs on the CPU (oneDNN's int8 matrix products); got device {device}")
        return device, "int8"
    if isinstance(dtype, str) and dtype not in DTYPES:
        raise UsageError(f"dtype {dtype!r} is not supported; use {', '.join(PRECISIONS)}")
    device, dtype = check_device_and_dtype(device, dtype)
    return device, dtype_name(dtype)


def weights_dtype(name):
    """The dtype a precision loads the model's weights in (int8 quantizes a float32 model, then converts the rest)."""
    return torch.float32 if name == "int8" else parse_dtype(name)


def check_device_and_dtype(device, dtype):
    """(torch.device, torch.dtype) to run on: default CUDA when there is one, float32; UsageError when either
    cannot run here (checked before any load)."""
    try:
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except (RuntimeError, TypeError) as exc:
        raise UsageError(f"device {device!r} is not a torch device ({exc})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        why = "this torch is a CPU build" if torch.version.cuda is None else "no CUDA device is visible"
        raise UsageError(f"device {str(device)!r} is not available: {why}")
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"device {str(device)!r}: mmgdino runs on cpu or cuda")
    dtype = parse_dtype(dtype)
    if dtype not in DTYPES.values():
        raise UsageError(f"dtype {dtype} is not supported; use {', '.join(DTYPES)}")
    try:  # the operations a forward needs most: a matrix product and a convolution
        x = torch.ones(1, 1, 4, 4, dtype=dtype, device=device)
        torch.nn.functional.conv2d(x, x[:, :, :2, :2]) @ torch.ones(3, 2, dtype=dtype, device=device)
    except RuntimeError as exc:
        raise UsageError(f"dtype {dtype_name(dtype)} does not run on {device}: {exc}") from None
    return device, dtype


def load_processor(model_id):
    """The checkpoint's processor (tokenizer + image processor); ModelLoadError with one line otherwise."""
    from transformers import AutoProcessor

    from .modeling.hub import cache_first

    try:
        return cache_first(AutoProcessor.from_pretrained, str(model_id))
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(
            f"no processor (tokenizer + image processor) for {str(model_id)!r}: "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from exc


def load_model_and_processor(model=DEFAULT_MODEL, device=None, dtype=None, processor=None):
    """(mmgdino model in eval mode on device and dtype, processor). `model`: a hub id or folder, an mmgdino model,
    or a transformers model (its weights moved into ours); a built model needs `processor=`."""
    device, dtype = check_device_and_dtype(device, dtype)
    if isinstance(model, MMGroundingDinoForObjectDetection):
        built = model.to(device=device, dtype=dtype).eval()
    elif isinstance(model, torch.nn.Module):
        built = MMGroundingDinoForObjectDetection.from_transformers(model).to(device=device, dtype=dtype)
    else:
        built = MMGroundingDinoForObjectDetection.from_pretrained(model, dtype=dtype, device=device)
    if processor is None:
        if isinstance(model, torch.nn.Module):
            raise UsageError("pass processor= when model is an already built model")
        processor = load_processor(model)
    return built, processor
