"""Load a local state dict into a model safely (no pickled code) and refuse any mismatch by name."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import torch
from torch import nn

from gnr650.errors import UserError
from gnr650.files import refusing_pickled_code


class WeightsError(RuntimeError, UserError):
    """A weights file is unreadable, unsafe, or does not fit the model; the message says which keys."""


def first_line(error: BaseException, limit: int = 160) -> str:
    """``Type: first line of the message`` (at most ``limit`` characters): enough to say what failed."""
    line = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {line[:limit]}" + ("..." if len(line) > limit else "")


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the Hugging Face hub (or the HTTPS proxy that reaches it) accepts a connection within ``timeout_s``,
    and offline mode (``HF_HUB_OFFLINE``) is off. Offline, the hub client retries for about a minute instead."""
    from huggingface_hub import constants

    if constants.is_offline_mode():
        return False
    hub = urlsplit(constants.ENDPOINT)
    proxy = urllib.request.getproxies().get("https")
    target = urlsplit(proxy) if proxy and not urllib.request.proxy_bypass(hub.hostname or "") else hub
    try:
        port = target.port or (443 if target.scheme == "https" else 80)
        socket.create_connection((target.hostname, port), timeout=timeout_s).close()
    except OSError:
        return False
    return True


@contextmanager
def hub_offline() -> Iterator[None]:
    """The hub client in offline mode (as with ``HF_HUB_OFFLINE=1``) for this block: files come from its local
    cache, or the call fails at once."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read safetensors, or a torch file with ``weights_only=True``; unwrap Lightning/``model`` checkpoints."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"Weights file '{path}' does not exist. Check model.weights (or GNR650_WEIGHTS_DIR).")
    try:
        with refusing_pickled_code(
            path,
            WeightsError,
            "weights file",
            "Save a plain state dict (safetensors or torch.save(model.state_dict())) instead.",
        ):
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                sd = load_file(str(path))
            else:
                sd = torch.load(path, map_location="cpu", weights_only=True)
    except WeightsError:
        raise
    except Exception as e:
        raise WeightsError(f"Cannot read weights file '{path}': {e}. Is it a safetensors or PyTorch state dict?") from e
    lightning = isinstance(sd, dict) and "pytorch-lightning_version" in sd
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict) or not sd or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in sd.items()):
        raise WeightsError(f"'{path}' is not a state dict (a mapping of parameter names to tensors).")
    if lightning and any(k.startswith("net.") for k in sd):
        # A gnr650 checkpoint: the network is the module's ``net``; the rest is the module's own state (e.g. the
        # head grid's candidate heads, whose chosen one is already in the network's head).
        sd = {k: v for k, v in sd.items() if k.startswith("net.")}
    for prefix in ("net.", "module.", "model."):
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def _names(keys: Sequence[str], limit: int = 8) -> str:
    keys = list(keys)
    return ", ".join(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def load_weights(
    net: nn.Module, path: str | Path, head: Sequence[str], adapt: Callable[[dict, nn.Module], dict] | None = None
) -> None:
    """Load ``path`` into ``net`` except its classifier ``head`` modules, which stay freshly initialised.

    ``adapt`` converts the state dict for this model (e.g. timm's pos-embed resampling). Any other
    missing, unexpected or wrongly shaped key is an error naming the keys.
    """
    sd = read_state_dict(path)
    sd = {k: v for k, v in sd.items() if not any(k == h or k.startswith(h + ".") for h in head)}
    if adapt is not None:
        try:
            sd = adapt(sd, net)
        except Exception as e:
            raise WeightsError(f"Weights '{path}' do not fit {type(net).__name__}: {e}") from e
    own = net.state_dict()
    shapes = [
        f"{k} {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in sd.items()
        if k in own and v.shape != own[k].shape
    ]
    missing = [k for k in own if k not in sd and not any(k.startswith(h + ".") for h in head)]
    unexpected = [k for k in sd if k not in own]
    if shapes or missing or unexpected:
        parts = [
            f"{label}: {_names(keys)}"
            for label, keys in (("wrong shapes", shapes), ("missing", missing), ("unexpected", unexpected))
            if keys
        ]
        raise WeightsError(
            f"Weights '{path}' do not match this model (is it for another architecture?). " + "; ".join(parts) + "."
        )
    net.load_state_dict(sd, strict=False)
