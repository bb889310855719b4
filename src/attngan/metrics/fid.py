"""Fréchet Inception Distance (Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a
Local Nash Equilibrium", NeurIPS 2017).

FID = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrtm(S1 S2)), computed as ``mseitzer/pytorch-fid``'s
``calculate_frechet_distance`` (v0.3.0): ``scipy.linalg.sqrtm``; if the product is singular (non-finite
root), ``eps`` is added to both diagonals; an imaginary part is dropped when the diagonal's is below
1e-3, and an error is raised otherwise.

Feature extractors (injectable: any callable images (B, 3, H, W) in [-1, 1] -> (B, D)):

* ``"fid-inception"`` (the standard): the TensorFlow ``inception-2015-12-05`` graph of the original TTUR
  FID code as ported by pytorch-fid (:func:`~attngan.metrics.inception.fid_inception_v3`, with the
  weights ``pt_inception-2015-12-05-6726825d.pth``: a local path, or the torch hub cache where pytorch-fid
  puts it; it is never downloaded here). 2048-d pool3 features; inputs are resized to 299 x 299
  (bilinear, align_corners=False) as pytorch-fid's ``InceptionV3``.
* ``"torchvision-imagenet"``: pool features of torchvision's ImageNet Inception-v3
  (``IMAGENET1K_V1``), the variant of the DM-GAN / DF-GAN evaluation code (an early pytorch-fid copy that
  loaded torchvision's weights). Its numbers are *not* comparable with standard FID; results say which.

Images are quantized to 8 bits first (see :func:`~attngan.metrics.features.prepare_images`), so that FID
on tensors equals FID on the saved PNGs that pytorch-fid reads.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import scipy.linalg
import torch
from torch import nn

from ..errors import UserError
from .features import (
    FeatureStats,
    ImageInput,
    cached_feature_stats,
    compute_feature_stats,
    default_cache_dir,
    load_stats,
)
from .inception import InceptionPoolFeatures, fid_inception_v3, fid_weights_path, torchvision_inception
from .registry import register_metric

__all__ = ["frechet_distance", "load_fid_extractor", "fid_metric"]

logger = logging.getLogger(__name__)

PROTOCOL = (
    "FID, Heusel et al. 2017 as pytorch-fid calculate_frechet_distance: 2048-d pool3 features, "
    "images quantized to 8 bits and resized to 299 bilinear, covariance with n-1, scipy sqrtm"
)


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (pytorch-fid's computation)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = (
        np.atleast_2d(np.asarray(sigma1, np.float64)),
        np.atleast_2d(np.asarray(sigma2, np.float64)),
    )
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise UserError(
            f"the two statistics do not fit: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape} "
            "(were they computed with different feature extractors?)"
        )
    diff = mu1 - mu2
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)  # ill-conditioned: handled below
        covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            logger.warning("FID: singular product; adding %g to the diagonal of the covariances", eps)
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FID: sqrtm has an imaginary component of {np.max(np.abs(covmean.imag)):g}")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def _file_digest(path: Path) -> str:
    """SHA-256 of a weights file (part of the statistics cache key: two files of one name and size differ)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:32]


def load_fid_extractor(
    extractor: str = "fid-inception",  # "fid-inception" | "torchvision-imagenet"
    weights: str | os.PathLike | None = None,  # local weights file (None: the torch hub cache)
    device: str | torch.device = "cpu",
) -> tuple[Callable[[torch.Tensor], torch.Tensor], str, dict[str, Any]]:
    """``(extractor, description, identity)``; ``identity`` keys the statistics cache."""
    ident: dict[str, Any] = {"extractor": extractor}
    if extractor == "fid-inception":
        path = fid_weights_path(weights)
        net = fid_inception_v3(path)
        ident["weights"] = [path.name, _file_digest(path)]
        desc = "fid-inception (pytorch-fid pt_inception-2015-12-05, pool3 2048-d)"
    elif extractor == "torchvision-imagenet":
        net = torchvision_inception(weights)
        net.fc = nn.Identity()
        if weights is not None:
            ident["weights"] = [Path(weights).name, _file_digest(Path(weights))]
        desc = "torchvision-imagenet (Inception-v3 IMAGENET1K_V1 pool 2048-d; DM-GAN/DF-GAN variant, not standard FID)"
    else:
        raise UserError(
            f"unknown FID feature extractor {extractor!r}; use 'fid-inception' or 'torchvision-imagenet'"
        )
    return InceptionPoolFeatures(net).to(device).eval(), desc, ident


def _as_stats(value: Any) -> FeatureStats:
    if isinstance(value, FeatureStats):
        return value
    if isinstance(value, (str, os.PathLike)):
        return load_stats(value)
    raise UserError("real_stats must be FeatureStats or the path of an .npz with mu and sigma")


@register_metric("fid")
def fid_metric(
    *,
    images: ImageInput,  # generated images: tensor (N, 3, H, W) or iterable of batches, uint8 or [-1, 1]
    real_images: ImageInput | None = None,  # real images (ignored when real_stats is given)
    real_stats: FeatureStats | str | os.PathLike | None = None,  # precomputed statistics or an .npz
    extractor: Any = "fid-inception",  # "fid-inception" | "torchvision-imagenet" | images -> (B, D)
    extractor_id: str | None = None,  # name of a callable extractor (needed to cache its real statistics)
    weights: str | os.PathLike | None = None,  # weights of a named extractor (None: torch hub cache)
    dataset_id: dict[str, Any] | str | None = None,  # identity of real_images (dataset, split, size, count)
    cache_dir: str | os.PathLike | None = None,  # statistics cache (None: default_cache_dir()/fid)
    batch_size: int = 50,
    device: str | torch.device = "cpu",
    quantize: bool = True,
    max_real: int | None = None,  # use at most this many real images
) -> dict[str, Any]:
    """FID between ``images`` and real images/statistics: ``{"fid", "n", "n_real", "protocol", ...}``.

    Real statistics are cached when ``dataset_id`` is given (and, for a callable extractor,
    ``extractor_id``): the cache key is the sha256 of the dataset identity, the extractor and its weights,
    the preprocessing and ``max_real``.
    """
    if isinstance(extractor, str):
        fn, desc, ident = load_fid_extractor(extractor, weights, device)
    elif callable(extractor):
        fn, desc = extractor, extractor_id or type(extractor).__name__
        ident = {"extractor": extractor_id} if extractor_id else None
    else:
        raise UserError("extractor must be 'fid-inception', 'torchvision-imagenet' or a callable")
    fake = compute_feature_stats(fn, images, batch_size, device, quantize)
    if real_stats is not None:
        real = _as_stats(real_stats)
    elif real_images is not None:

        def compute() -> FeatureStats:
            return compute_feature_stats(fn, real_images, batch_size, device, quantize, max_real)

        if dataset_id is not None and ident is not None:
            identity = {"dataset": dataset_id, **ident, "quantize": quantize, "max_real": max_real, "v": 1}
            real = cached_feature_stats(
                cache_dir or default_cache_dir() / "fid", identity, compute, "fid-real"
            )
        else:
            real = compute()
    else:
        raise UserError("FID needs real_images or real_stats")
    dim = int(np.atleast_1d(fake.mu).shape[0])
    if min(fake.n, real.n) <= dim:
        logger.warning(
            "FID from %d generated and %d real images with %d-d features: the covariances are singular and the "
            "value is strongly biased upwards; compare only values of equal counts (the paper used 30000)",
            fake.n, real.n, dim,
        )  # fmt: skip
    return {
        "fid": frechet_distance(fake.mu, fake.sigma, real.mu, real.sigma),
        "n": fake.n,
        "n_real": real.n,
        "feature_extractor": desc,
        "protocol": PROTOCOL if isinstance(extractor, str) else PROTOCOL.replace("2048-d pool3", "user"),
    }
