"""CLIP score (Hessel et al., "CLIPScore: A Reference-free Evaluation Metric for Image Captioning", EMNLP
2021), in the text-to-image form of ``torchmetrics.multimodal.CLIPScore``: 100 * max(cos(E_I, E_T), 0),
averaged over image-caption pairs (w = 100 as torchmetrics; Hessel et al. use w = 2.5).

Not part of the AttnGAN paper; optional. The CLIP model is supplied by the user (nothing is downloaded):
an open_clip-like object with ``encode_image(pixels)`` and ``encode_text(tokens)``, a ``tokenizer``
(list of strings -> token tensor) and a ``preprocess`` (PIL image -> tensor), e.g. the three objects of
``open_clip.create_model_and_transforms`` + ``open_clip.get_tokenizer``. Without a model the metric is
skipped and says so in its result.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import UserError
from .features import ImageInput, as_image_batches, prepare_images
from .registry import register_metric

__all__ = ["clip_score", "clip_score_metric"]

logger = logging.getLogger(__name__)

PROTOCOL = "CLIP score as torchmetrics CLIPScore: 100 * max(cosine(image, caption), 0), mean over pairs"


def _to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] -> PIL RGB images (8-bit, rounded)."""
    arr = torch.round((images.clamp(-1, 1) + 1) * 127.5).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]


@torch.no_grad()
def clip_score(
    model: Any,  # has encode_image(pixels) and encode_text(tokens)
    tokenizer: Callable[[list[str]], torch.Tensor],
    preprocess: Callable[[Image.Image], torch.Tensor],
    images: ImageInput,  # (N, 3, H, W) tensor or iterable of batches, uint8 or float in [-1, 1]
    captions: Sequence[str],  # one caption per image, in the same order
    batch_size: int = 50,
    device: str | torch.device = "cpu",
) -> tuple[float, float, int]:
    """(mean, std, n) of 100 * max(cos, 0) over the image-caption pairs."""
    scores = []
    start = 0
    for batch in as_image_batches(images, batch_size):
        texts = list(captions[start : start + batch.size(0)])
        if len(texts) != batch.size(0):
            raise UserError(f"{len(captions)} captions for more images; give one caption per image")
        pixels = torch.stack([preprocess(im) for im in _to_pil(prepare_images(batch))]).to(device)
        img = F.normalize(model.encode_image(pixels).float(), dim=-1)  # (B, E)
        txt = F.normalize(model.encode_text(tokenizer(texts).to(device)).float(), dim=-1)  # (B, E)
        scores.append((100.0 * (img * txt).sum(-1).clamp(min=0)).cpu().double().numpy())
        start += batch.size(0)
    if start != len(captions):
        raise UserError(f"{len(captions)} captions for {start} images; give one caption per image")
    if not scores:
        raise UserError("no images to score")
    s = np.concatenate(scores)
    return float(s.mean()), float(s.std()), int(s.size)


@register_metric("clip_score")
def clip_score_metric(
    *,
    images: ImageInput | None = None,
    captions: Sequence[str] | None = None,
    model: Any = None,  # None: the metric is skipped (result with "skipped")
    tokenizer: Callable[[list[str]], torch.Tensor] | None = None,
    preprocess: Callable[[Image.Image], torch.Tensor] | None = None,
    model_name: str = "user CLIP model",
    batch_size: int = 50,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """CLIP score of generated images against their captions, or a skipped result without a model."""
    if model is None:
        logger.info("clip_score skipped: no CLIP model given")
        return {
            "clip_score": None,
            "skipped": "no CLIP model given (pass model, tokenizer and preprocess, e.g. from open_clip)",
            "n": 0,
            "feature_extractor": None,
            "protocol": PROTOCOL,
        }
    if tokenizer is None or preprocess is None or images is None or captions is None:
        raise UserError("clip_score needs images, captions, and the model's tokenizer and preprocess")
    mean, std, n = clip_score(model, tokenizer, preprocess, images, captions, batch_size, device)
    return {
        "clip_score": mean,
        "clip_score_std": std,
        "n": n,
        "feature_extractor": model_name,
        "protocol": PROTOCOL,
    }
