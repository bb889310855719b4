"""One network of the original release: load a ``.pth`` (or its state dict) into ours, write ours back."""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import re
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import (
    atomic_write_with_digest,
    check_finite_weights,
    inception_weights_state,
    load_state_dict_strict,
)
from ..errors import CheckpointError
from ..nn.encoders import INCEPTION_BLOCKS
from .keys import KINDS, NUM_BATCHES_TRACKED, infer_config, read_state_dict

__all__ = ["load_original", "build_module", "export_original", "save_original", "describe", "kind_of"]

logger = logging.getLogger(__name__)


def build_module(kind: str, config: Any, backbone_weights: Any = None) -> nn.Module:
    """A freshly initialised network of ``kind`` (what :func:`load_original` loads into); an image encoder's
    ``backbone_weights`` as :func:`attngan.checkpoint.inception_weights_state` takes them, or a state dict."""
    cls, _ = KINDS[kind]
    if kind == "image_encoder":
        if backbone_weights is not None and not isinstance(backbone_weights, Mapping):
            backbone_weights = inception_weights_state(backbone_weights)  # errors that say what to do
        return cls(config, backbone_weights=backbone_weights)
    return cls(config)


def _build_empty(kind: str, config: Any) -> nn.Module:
    """The network with uninitialised CPU storage: skips the (slow) orthogonal init of big layers.

    Every entry is then overwritten by the strict load, which the caller guarantees.
    """
    cls, _ = KINDS[kind]
    with torch.device("meta"):
        module = cls(config)
    module = module.to_empty(device="cpu")
    persistent = set(module.state_dict())
    transient = [n for n, _ in module.named_buffers() if n not in persistent]
    if transient:  # not filled by load_state_dict: would stay uninitialised
        raise RuntimeError(f"{cls.__name__} has non-persistent buffers {transient}; cannot build it empty")
    return module


def _fill_num_batches_tracked(module: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Add the BatchNorm counters the pre-0.4.1 files lack (as 0, like PyTorch does); return their names."""
    filled = []
    for name, mod in module.named_modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.track_running_stats:
            prefix = f"{name}." if name else ""
            key = prefix + NUM_BATCHES_TRACKED
            if key not in state and prefix + "running_mean" in state:
                state[key] = torch.tensor(0, dtype=torch.long)
                filled.append(key)
    return filled


def load_original(
    path_or_state_dict: str | os.PathLike | Mapping[str, torch.Tensor],
    *,
    kind: str | None = None,
    backbone_weights: Any = None,
) -> nn.Module:
    """Load a network of the original release (a ``.pth`` path or its state dict), in eval mode.

    Args:
        path_or_state_dict: an original ``.pth`` file (legacy or zip serialisation, read with
            ``weights_only=True``) or the state dict itself; a ``module.`` prefix is stripped.
        kind: ``"text_encoder" | "image_encoder" | "generator" | "discriminator"`` to insist on one;
            None detects it from the keys.
        backbone_weights: image encoder only, and only for files holding just ``emb_features`` /
            ``emb_cnn_code`` without the Inception backbone: ``"imagenet"``, a path, a torchvision weights
            enum or a state dict (see :func:`build_module`). The released ``image_encoder*.pth`` contain the backbone.
    Returns:
        A ``TextEncoder``, ``ImageEncoder``, ``Generator`` or ``Discriminator`` with ``.config`` set.
    Raises:
        CheckpointError: unreadable or unsafe file, unknown layout, or keys/shapes that do not fit
            the inferred configuration (the message lists them).
    """
    state, name = read_state_dict(path_or_state_dict)
    try:
        kind, config = infer_config(state, kind=kind)
    except CheckpointError as exc:
        raise CheckpointError(f"{name}: {exc}") from exc
    check_finite_weights(state, kind.replace("_", " "), name)
    if kind == "image_encoder" and not any(k.split(".")[0] in INCEPTION_BLOCKS for k in state):
        if backbone_weights is None:
            raise CheckpointError(
                f"{name} holds only the image encoder's embedding layers, without the Inception-v3 backbone; "
                "pass backbone_weights='imagenet' (or an Inception-v3 weights file)"
            )
        try:
            module = build_module(kind, config, backbone_weights=backbone_weights)
        except (OSError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(
                f"backbone_weights could not be used for the Inception-v3 backbone: {exc}"
            ) from exc
        backbone = {k: v for k, v in module.state_dict().items() if k.split(".")[0] in INCEPTION_BLOCKS}
        state = {**backbone, **state}
    else:
        if backbone_weights is not None:
            logger.warning("%s contains its own backbone weights; backbone_weights is ignored", name)
        module = _build_empty(kind, config)
    filled = _fill_num_batches_tracked(module, state)
    try:
        load_state_dict_strict(module, state, name)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc} [settings inferred from the shapes: {describe(kind, config)}]") from exc
    logger.info(
        "loaded %s as %s %s (%d tensors, %d num_batches_tracked filled)",
        name,
        kind,
        config,
        len(state) - len(filled),
        len(filled),
    )
    return module.eval()


# ------------------------------------------------------------------------------------------------
# Writing


def kind_of(module: nn.Module) -> str:
    for kind, (cls, _) in KINDS.items():
        if isinstance(module, cls):
            return kind
    raise CheckpointError(
        f"{type(module).__name__} has no original layout; expected one of {[c.__name__ for c, _ in KINDS.values()]}"
    )


def export_original(module: nn.Module) -> OrderedDict[str, torch.Tensor]:
    """The module's state dict in the original layout: same keys minus ``num_batches_tracked``, CPU copies."""
    kind = kind_of(module)
    if kind == "image_encoder" and module.config.backbone != "inception":
        raise CheckpointError(
            f"an image encoder with the {module.config.backbone!r} backbone has no original layout; "
            "the original code only has the Inception-v3 encoder"
        )
    items = [(k, v) for k, v in module.state_dict().items() if not k.endswith("." + NUM_BATCHES_TRACKED)]
    if kind == "generator":
        items.sort(key=lambda kv: _generator_rank(kv[0]))  # stable: keeps the order inside each block
    return OrderedDict((k, v.detach().to("cpu", copy=True).contiguous()) for k, v in items)


def _generator_rank(key: str) -> int:
    """Position of a key's block in G_NET's attribute order: ca_net, h_net1, img_net1, h_net2, img_net2, ..."""
    m = re.match(r"(h_net|img_net)(\d*)\.", key)
    if m is None:
        return 0
    if not m.group(2):  # the AttnDCGAN's single img_net comes last
        return 1 << 30
    return 2 * int(m.group(2)) - (m.group(1) == "h_net")


def save_original(module: nn.Module, path: str | os.PathLike) -> Path:
    """Write :func:`export_original` atomically as a plain dict in torch's legacy (non-zip) format, with
    its SHA-256 in ``<path>.sha256`` (the format has no room for a checksum; loading checks it).

    The legacy format is what the original release used; every PyTorch version reads it.
    """
    state = export_original(module)
    buf = io.BytesIO()
    torch.save(state, buf, _use_new_zipfile_serialization=False)
    return atomic_write_with_digest(path, buf.getvalue())


def describe(kind: str, config: Any) -> str:
    """One line naming the kind and its settings, e.g. ``generator: gf_dim=32 z_dim=100 ...``."""
    if kind == "vocabulary":
        return f"vocabulary: {config} words"
    fields = " ".join(f"{k}={v}" for k, v in dataclasses.asdict(config).items())
    return f"{kind}: {fields}"
