"""The networks behind the metrics: whether their weights can be loaded, a trial run before any image is
generated, and the user's CLIP model."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from ..errors import UserError
from ..metrics.inception import FID_WEIGHTS_NAME, FID_WEIGHTS_URL

__all__ = ["ClipModel", "weights_problem", "probe_network"]


@dataclass(frozen=True)
class ClipModel:
    """A user CLIP model (e.g. from open_clip): ``encode_image``, ``encode_text``, tokenizer, preprocess."""

    model: Any
    tokenizer: Callable[[list[str]], torch.Tensor]
    preprocess: Callable[[Any], torch.Tensor]
    name: str = "user CLIP model"

    def metric_options(self) -> dict[str, Any]:
        """The options of the ``clip_score`` metric that give it this model."""
        return {"model": self.model, "tokenizer": self.tokenizer, "preprocess": self.preprocess, "model_name": self.name}


def _hub_file(url_or_name: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url_or_name).path).name


def weights_problem(
    network: Any,  # "torchvision-imagenet" | "fid-inception" | a file path | an nn.Module / callable
    weights: str | os.PathLike | None = None,  # weights file of a named network (None: the hub cache)
    allow_download: bool = False,  # torchvision may download its ImageNet weights into the hub cache
    option: str = "--is-classifier",  # the option that names another network (for the message)
) -> str | None:
    """Why the weights of a metric's network cannot be loaded (a message saying how to provide them), or
    None when they can. A missing file named explicitly is an error, not a skip."""
    if not isinstance(network, (str, os.PathLike)):
        return None  # a network object given by the caller
    name = os.fspath(network)
    if name not in ("torchvision-imagenet", "fid-inception"):
        if not Path(name).is_file():
            raise UserError(f"{option} {name} does not exist")
        return None
    if weights is not None:
        if not Path(weights).is_file():
            raise UserError(f"weights file {weights} does not exist")
        return None
    if name == "fid-inception":
        path = _hub_file(FID_WEIGHTS_NAME)
        if path.is_file():
            return None
        return (
            f"the FID Inception weights are not in the torch hub cache ({path}); download {FID_WEIGHTS_URL} "
            "to that path (pytorch-fid does so on first use) or pass the file with --fid-weights PATH"
        )
    from torchvision.models import Inception_V3_Weights

    url = Inception_V3_Weights.IMAGENET1K_V1.url
    path = _hub_file(url)
    if path.is_file() or allow_download:
        return None
    return (
        f"the ImageNet Inception-v3 weights are not in the torch hub cache ({path}); download {url} to that "
        f"path, or pass --allow-download, or give another network with {option} PATH"
    )


def probe_network(
    network: Callable[[torch.Tensor], torch.Tensor], size: int, device: torch.device, option: str
) -> None:
    """Run a metric network on two blank images now, so that a wrong file fails before any generation."""
    try:
        with torch.no_grad():
            out = network(torch.zeros(2, 3, size, size, device=device))
    except Exception as exc:  # noqa: BLE001 - any failure of a user network is reported as its mistake
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise UserError(
            f"{option} failed on two test images of {size} px ({type(exc).__name__}: {first}); it must take "
            "(B, 3, H, W) images in [-1, 1]"
        ) from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.size(0) != 2:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(f"{option} returns {got} for two images; it must return (B, C) scores or features")
