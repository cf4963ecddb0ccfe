"""Where checkpoints come from: a local directory, the local Hugging Face cache, or the Hub, with one clear line
(ModelLoadError) instead of the hub client's retries and tracebacks."""

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from ..errors import MmgdinoError


class ModelLoadError(MmgdinoError, RuntimeError):
    """A model could not be found or read (bad path, unknown hub id, no network); the message says which."""


def hub_reachable():
    """Whether the Hub's host resolves: without a network the hub client retries for half a minute before it
    gives up, so we ask DNS once instead."""
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False


def cache_first(load, where, *, local_files_only=None, **kwargs):
    """load(where, local_files_only=..., **kwargs): a local directory as is; a hub id from the local cache when it
    is there (no network needed), else from the Hub. Raises ModelLoadError with one clear line."""
    if local_files_only is None:
        local_files_only = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    if Path(where).is_dir():
        return load(where, **kwargs)
    try:
        return load(where, local_files_only=True, **kwargs)
    except Exception as cached_exc:
        if local_files_only:
            raise ModelLoadError(
                f"model {where!r} is not in the local Hugging Face Hub cache "
                "(offline mode: HF_HUB_OFFLINE or local_files_only)"
            ) from cached_exc
    if not hub_reachable():
        raise ModelLoadError(
            f"model {where!r} could not be fetched from the Hugging Face Hub: no network, and it is "
            "not in the local cache"
        )
    try:
        return load(where, **kwargs)
    except Exception as exc:  # the hub client raises many types; the user needs one clear line
        text = str(exc).strip()
        raise ModelLoadError(
            f"model {where!r} could not be fetched from the Hugging Face Hub: "
            f"{text.splitlines()[0] if text else type(exc).__name__}"
        ) from exc
