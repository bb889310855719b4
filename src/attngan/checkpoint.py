"""Native checkpoint format and safe, atomic file writing.

A *component* (text encoder, image encoder, generator, a discriminator) is stored as a folder
``<dir>/<name>/`` holding ``config.json`` (its config dataclass, plus ``"class"`` and ``"format"``) and
``model.safetensors`` (its state dict). Training state files are written with ``torch.save`` and read
with ``torch.load(weights_only=True)``. Every write goes to a temporary file in the same folder, is
flushed and fsynced, then renamed over the target, so a crash, a full disk or Ctrl-C never leaves a
half-written file in place of the last good one.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_write_bytes, atomic_write_text
from .config import from_dict, to_dict
from .errors import CheckpointError

FORMAT_VERSION = 1


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file, then rename (the object must be weights_only-loadable)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


def safe_torch_load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(weights_only=True)`` with errors that say what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with a message for the user
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        text = str(exc)
        with open(path, "rb") as f:
            head = f.read(4)
        pickled = head.startswith((b"PK\x03\x04", b"\x80"))  # a torch zip file, or a legacy pickle
        markers = ("Unsupported global", "Unsupported operand", "not an allowed global", "Unsupported class")
        if pickled and any(m in text for m in markers):  # the wording of torch 2.1-2.5 and of 2.6+
            raise CheckpointError(
                f"{path} contains Python objects other than tensors and plain containers; it is refused "
                "because loading it could run arbitrary code. Re-save it as a plain state dict."
            ) from exc
        if not pickled:
            raise CheckpointError(
                f"{path} is not a PyTorch checkpoint (it does not start as a torch zip file or pickle): the file "
                "is damaged, or it is something else"
            ) from exc
        if head.startswith(b"\x80") and "magic number" in text:  # a pickle, but not torch's legacy format
            raise CheckpointError(
                f"{path} is a plain Python pickle, not a PyTorch checkpoint (a captions.pickle or "
                "filenames.pickle?); pass the .pth file of the model here"
            ) from exc
        msg = msg.split(". ")[0][:200]  # torch's first sentence, without its advice to unpickle unsafely
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint (corrupt or truncated?): {type(exc).__name__}: {msg}"
        ) from exc


def save_component(directory: str | os.PathLike, module: torch.nn.Module, config: Any, **extra: Any) -> Path:
    """Write ``config.json`` and ``model.safetensors`` of one network into ``directory``."""
    from safetensors.torch import save as st_save

    directory = Path(directory)
    state = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    atomic_write_bytes(directory / "model.safetensors", st_save(state))
    meta = {
        "format": FORMAT_VERSION,
        "class": type(module).__name__,
        "config_class": type(config).__name__,
        "config": to_dict(config),
        **extra,
    }
    atomic_write_json(directory / "config.json", meta)
    return directory


def read_component_config(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: {directory} is not a saved attngan component")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` file, or a plain state dict saved with torch (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # noqa: BLE001
            raise CheckpointError(f"{path} is not a readable safetensors file (corrupt or truncated?): {exc}") from exc
    state = safe_torch_load(path)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a state dict")
    return state


def inception_weights_state(weights: Any) -> dict[str, torch.Tensor]:
    """Inception-v3 weights as a state dict: ``"imagenet"`` (torchvision's ``IMAGENET1K_V1``, downloaded
    into the torch hub cache on first use), a file (a state dict), or a torchvision ``WeightsEnum`` member.
    Raises :class:`CheckpointError` saying what to do when they cannot be had."""
    if isinstance(weights, (str, os.PathLike)) and str(weights).lower() != "imagenet":
        path = Path(weights)
        if not path.is_file():
            raise CheckpointError(
                f"Inception-v3 weights file {path} does not exist; pass an existing file, or 'imagenet' "
                "for torchvision's (downloaded on first use)"
            )
        return load_state_dict_file(path)
    if isinstance(weights, (str, os.PathLike)):
        from torchvision.models import Inception_V3_Weights

        weights = Inception_V3_Weights.IMAGENET1K_V1
    if not hasattr(weights, "get_state_dict"):
        raise CheckpointError(f"unsupported Inception-v3 weights: {type(weights).__name__}")
    try:
        return weights.get_state_dict(progress=True)
    except Exception as exc:  # noqa: BLE001 - URLError, HTTPError, OSError, hash mismatch, ...
        cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
        raise CheckpointError(
            f"could not get torchvision's Inception-v3 weights ({type(exc).__name__}: {exc}). They are downloaded "
            f"on first use from {weights.url} to {cached}: put that file there from a machine with internet, "
            "or pass a local weights file (--inception-weights FILE)"
        ) from exc


def load_state_dict_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with a readable error listing what differs."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if tuple(own[k].shape) != tuple(state[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append("shape mismatches: " + "; ".join(shapes[:5]))
        if missing:
            parts.append(f"missing keys: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected keys: {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        raise CheckpointError(
            f"{source} does not fit this {type(module).__name__} (it was saved with another configuration): "
            + " | ".join(parts)
        )
    module.load_state_dict(state, strict=True)


def load_component(directory: str | os.PathLike, cls: type, config_cls: type, **kwargs: Any) -> torch.nn.Module:
    """Rebuild ``cls(config_cls(**config.json))`` and load ``model.safetensors`` into it (eval mode)."""
    directory = Path(directory)
    meta = read_component_config(directory)
    if meta.get("class") != cls.__name__:
        raise CheckpointError(f"{directory} holds a {meta.get('class')}, not a {cls.__name__}")
    try:
        config = from_dict(config_cls, meta["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{directory}/config.json does not describe a {config_cls.__name__}: {exc}") from exc
    module = cls(config, **kwargs)
    load_state_dict_strict(module, load_state_dict_file(directory / "model.safetensors"), str(directory))
    return module.eval()


def config_diff(a: Any, b: Any) -> list[str]:
    """Human-readable list of fields that differ between two (nested) config dataclasses."""
    da = to_dict(a) if dataclasses.is_dataclass(a) else a
    db = to_dict(b) if dataclasses.is_dataclass(b) else b
    out: list[str] = []

    def walk(x: Any, y: Any, prefix: str) -> None:
        if isinstance(x, dict) and isinstance(y, dict):
            for k in sorted(set(x) | set(y)):
                walk(x.get(k), y.get(k), f"{prefix}.{k}" if prefix else k)
        elif x != y:
            out.append(f"{prefix}: {x!r} != {y!r}")

    walk(da, db, "")
    return out


__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_torch_save",
    "safe_torch_load",
    "save_component",
    "load_component",
    "read_component_config",
    "load_state_dict_file",
    "load_state_dict_strict",
    "config_diff",
    "from_dict",
]
