"""Image batches, feature statistics (mean and covariance) and their on-disk cache.

Statistics of real images are cached like ``NVlabs/stylegan2-ada-pytorch:metrics/metric_utils.py``
(lines 180-230): the file name carries a sha256 of the arguments that determine the result (dataset
identity, feature extractor and its weights, preprocessing), and the ``.npz`` (``mu``, ``sigma``, ``n``)
is written to a temporary file and renamed, so a crash never leaves a truncated cache behind.

The covariance uses ``n - 1`` in the denominator, as ``np.cov`` in pytorch-fid's
``calculate_activation_statistics``. Features are accumulated in float64 around a shift (the mean of
the first batch), which keeps the streaming sum of outer products accurate.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoint import atomic_write_bytes
from ..errors import UserError

__all__ = [
    "FeatureStats",
    "FeatureAccumulator",
    "as_image_batches",
    "prepare_images",
    "resize_images",
    "compute_features",
    "compute_feature_stats",
    "stats_key",
    "cached_feature_stats",
    "save_stats",
    "load_stats",
    "default_cache_dir",
]

logger = logging.getLogger(__name__)

ImageInput = torch.Tensor | Iterable[torch.Tensor]


def default_cache_dir() -> Path:
    """``$ATTNGAN_CACHE`` or ``$XDG_CACHE_HOME/attngan`` (``~/.cache/attngan``)."""
    if os.environ.get("ATTNGAN_CACHE"):
        return Path(os.environ["ATTNGAN_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "attngan"


# --------------------------------------------------------------------------------------------- images


def as_image_batches(images: ImageInput, batch_size: int = 50) -> Iterator[torch.Tensor]:
    """Yield (B, 3, H, W) batches from a tensor (split into ``batch_size``) or an iterable of batches."""
    if isinstance(images, torch.Tensor):
        if images.dim() != 4:
            raise UserError(f"images must be (N, 3, H, W), got shape {tuple(images.shape)}")
        yield from images.split(batch_size)
        return
    for batch in images:
        if isinstance(batch, (list, tuple)):  # (images, ...) tuples from a loader: take the images
            batch = batch[0]
        if not isinstance(batch, torch.Tensor) or batch.dim() != 4:
            raise UserError("each image batch must be a (B, 3, H, W) tensor")
        yield batch


def prepare_images(images: torch.Tensor, quantize: bool = True) -> torch.Tensor:
    """uint8 [0, 255] or float [-1, 1] (B, 3, H, W) -> float32 in [-1, 1].

    ``quantize`` rounds float images to the 256 levels of an 8-bit PNG, so that a metric computed on
    tensors equals the same metric computed on saved images (the reference tools read PNG files).
    """
    if images.dim() != 4 or images.size(1) != 3:
        raise UserError(f"images must be (B, 3, H, W) RGB, got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images.float().div(127.5).sub(1.0)
    if not images.is_floating_point():
        raise UserError(f"images must be uint8 or float in [-1, 1], got {images.dtype}")
    x = images.float().clamp(-1.0, 1.0)
    if quantize:
        x = torch.round((x + 1.0) * 127.5).div(127.5).sub(1.0)
    return x


def resize_images(images: torch.Tensor, size: int, antialias: bool = False) -> torch.Tensor:
    """Bilinear resize to ``size`` x ``size`` (align_corners=False, as pytorch-fid's InceptionV3)."""
    if tuple(images.shape[-2:]) == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=antialias)


# ----------------------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class FeatureStats:
    """Mean (D,), covariance (D, D) (denominator n - 1) and count of a set of feature vectors."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int


class FeatureAccumulator:
    """Streaming mean and covariance of feature vectors, float64, shifted by the first batch's mean."""

    def __init__(self) -> None:
        self.n = 0
        self._shift: np.ndarray | None = None
        self._sum: np.ndarray | None = None
        self._outer: np.ndarray | None = None

    def add(self, features: np.ndarray | torch.Tensor) -> None:
        if isinstance(features, torch.Tensor):
            features = features.detach().to("cpu", torch.float64).numpy()
        x = np.asarray(features, dtype=np.float64)  # (B, D)
        if x.ndim != 2:
            raise ValueError(f"features must be (B, D), got {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError("features contain NaN or inf")
        if self._shift is None:
            self._shift = x.mean(axis=0)
            self._sum = np.zeros_like(self._shift)
            self._outer = np.zeros((x.shape[1], x.shape[1]))
        elif x.shape[1] != self._shift.shape[0]:
            raise ValueError(f"feature width changed from {self._shift.shape[0]} to {x.shape[1]}")
        y = x - self._shift  # (B, D)
        self._sum += y.sum(axis=0)
        self._outer += y.T @ y
        self.n += x.shape[0]

    def stats(self) -> FeatureStats:
        if self.n < 2:
            raise UserError(f"feature statistics need at least 2 images, got {self.n}")
        mean_y = self._sum / self.n  # (D,)
        sigma = (self._outer - self.n * np.outer(mean_y, mean_y)) / (self.n - 1)
        return FeatureStats(mu=self._shift + mean_y, sigma=(sigma + sigma.T) / 2, n=self.n)


@torch.no_grad()
def compute_features(
    extractor: Callable[[torch.Tensor], torch.Tensor],  # images (B, 3, H, W) in [-1, 1] -> (B, D)
    images: ImageInput,  # a (N, 3, H, W) tensor or an iterable of batches; uint8 or float in [-1, 1]
    batch_size: int = 50,
    device: str | torch.device = "cpu",
    quantize: bool = True,  # round float images to 8-bit levels first (see prepare_images)
    max_items: int | None = None,  # stop after this many images (None: all)
) -> Iterator[np.ndarray]:
    """Yield float64 feature batches (B, D) of ``extractor`` over ``images``."""
    seen = 0
    for batch in as_image_batches(images, batch_size):
        if max_items is not None and seen >= max_items:
            break
        if max_items is not None:
            batch = batch[: max_items - seen]
        x = prepare_images(batch.to(device), quantize)
        feats = extractor(x)
        if feats.dim() != 2 or feats.size(0) != x.size(0):
            raise ValueError(f"the feature extractor must return (B, D), got {tuple(feats.shape)}")
        seen += x.size(0)
        yield feats.detach().to("cpu", torch.float64).numpy()


def compute_feature_stats(
    extractor: Callable[[torch.Tensor], torch.Tensor],
    images: ImageInput,
    batch_size: int = 50,
    device: str | torch.device = "cpu",
    quantize: bool = True,
    max_items: int | None = None,
) -> FeatureStats:
    """Mean and covariance of ``extractor``'s features over ``images`` (see :func:`compute_features`)."""
    acc = FeatureAccumulator()
    for feats in compute_features(extractor, images, batch_size, device, quantize, max_items):
        acc.add(feats)
    return acc.stats()


# ------------------------------------------------------------------------------------------------ cache


def stats_key(identity: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of ``identity`` (what determines the statistics)."""
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def save_stats(path: str | os.PathLike, stats: FeatureStats) -> Path:
    buf = io.BytesIO()
    np.savez(buf, mu=stats.mu, sigma=stats.sigma, n=np.int64(stats.n))
    return atomic_write_bytes(path, buf.getvalue())


def load_stats(path: str | os.PathLike) -> FeatureStats:
    """Read ``mu``, ``sigma`` (and ``n`` if present) from an ``.npz``, e.g. pytorch-fid's saved stats."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"statistics file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as f:
            mu, sigma = np.asarray(f["mu"], np.float64), np.asarray(f["sigma"], np.float64)
            n = int(f["n"]) if "n" in f.files else 0
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"{path} is not a statistics .npz with 'mu' and 'sigma': {exc}") from exc
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise UserError(f"{path}: mu {mu.shape} and sigma {sigma.shape} do not fit together")
    return FeatureStats(mu=mu, sigma=sigma, n=n)


def cached_feature_stats(
    cache_dir: str | os.PathLike,  # folder of the cache files (created if missing)
    identity: dict[str, Any],  # everything that determines the statistics (dataset, extractor, ...)
    compute: Callable[[], FeatureStats],  # called only when the cache has no entry for ``identity``
    prefix: str = "stats",  # file-name prefix, for people looking into the folder
) -> FeatureStats:
    """Statistics from ``<cache_dir>/<prefix>-<sha256(identity)>.npz``, computed and written on a miss."""
    path = Path(cache_dir) / f"{prefix}-{stats_key(identity)[:32]}.npz"
    if path.is_file():
        try:
            stats = load_stats(path)
            logger.info("feature statistics from cache %s", path)
            return stats
        except UserError as exc:  # unreadable entry (e.g. disk trouble): recompute and overwrite
            logger.warning("ignoring unreadable cache entry: %s", exc)
    stats = compute()
    save_stats(path, stats)
    atomic_write_bytes(
        path.with_suffix(".json"), (json.dumps(identity, sort_keys=True, default=str) + "\n").encode()
    )
    logger.info("feature statistics cached in %s", path)
    return stats
