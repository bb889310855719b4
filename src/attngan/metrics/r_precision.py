"""R-precision of AttnGAN (Xu et al., CVPR 2018, Sec. 4 "Evaluation").

Generated images query their captions: for each image, the DAMSM global image vector (Eq. 6, v-bar) is
compared by cosine similarity with the DAMSM sentence vectors (e-bar) of its ground-truth caption and of
99 randomly drawn mismatching captions; with R = 1 the image scores 1 if its true caption ranks first.
The scores are averaged in 10 splits; the result is the mean and standard deviation over the splits.

The AttnGAN release has no R-precision code (reference/original-attngan.md 6.5). This follows the
community implementation in ``MinfengZhu/DM-GAN`` (``code/trainer.py``, ``sampling``; mismatching
captions from ``datasets.py`` ``get_mis_caption``): mismatching captions are drawn with replacement,
never from the same test image when ``image_ids`` are given (another caption of the same picture is no
mismatch; the evaluation passes them: with more generated images than test images, or several captions
per image, it would otherwise be drawn), optionally only from images of other classes
(``exclude_same_class``, DM-GAN's behaviour on CUB);
the standard deviation is the population one (``np.std``). The candidates are the N captions given
(the captions of the generated set, one per image); DM-GAN draws from every caption of the test set.
Differences, stated in the result's protocol:
the splits are consecutive parts of the samples in their given order (DM-GAN shuffles first and drops
the last sample of each part), and a tie between the true caption and k mismatching ones counts
1/(k+1) (the expectation under random tie-breaking; ``argmax`` in DM-GAN counts it as a hit, which
would give a collapsed encoder a perfect score).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..nn.modes import eval_mode
from .registry import register_metric

__all__ = ["r_precision", "encode_for_r_precision", "r_precision_metric", "draw_mismatches"]

logger = logging.getLogger(__name__)

TIE_TOLERANCE = 1e-6  # cosines closer than this count as equal (float32 encoders: rounding is ~1e-8)

PROTOCOL = (
    "R-precision, paper Sec. 4: 1 true + {m} random mismatching captions (drawn with replacement{cls}), "
    "cosine of DAMSM global image and sentence vectors, R=1, {splits} consecutive splits, mean and "
    "population std; ties count 1/(k+1)"
)


def draw_mismatches(
    n: int,
    n_mismatch: int,
    generator: torch.Generator | None = None,
    class_ids: torch.Tensor | None = None,  # (N,) long; when given with exclude_same_class
    exclude_same_class: bool = False,
    image_ids: torch.Tensor | None = None,  # (N,) test image of each sample: its other captions are not drawn
) -> torch.Tensor:
    """(N, n_mismatch) indices of mismatching captions, drawn uniformly with replacement: never the sample
    itself, nor a sample of the same test image (``image_ids``: another caption of the same picture is not a
    mismatch), nor, with ``exclude_same_class``, a sample of its class."""
    if n < 2:
        raise UserError(f"R-precision needs at least 2 samples, got {n}")
    # Uniform over the other N - 1 samples: draw from N - 1 and skip over the sample's own index.
    own = torch.arange(n).unsqueeze(1)  # (N, 1)
    idx = torch.randint(0, n - 1, (n, n_mismatch), generator=generator)  # (N, M)
    idx = idx + (idx >= own).long()
    if exclude_same_class:
        if class_ids is None:
            raise UserError("exclude_same_class needs class_ids")
        groups, what = class_ids, "class"
    elif image_ids is not None:
        groups, what = image_ids, "test image"
    else:
        return idx
    groups = torch.as_tensor(groups).to("cpu", torch.long).view(-1)
    if groups.numel() != n:
        raise UserError(f"the {what} ids have {groups.numel()} entries for {n} samples")
    counts = torch.bincount(groups - groups.min())
    if int(counts.max()) == n:
        raise UserError(f"every sample has the same {what}: there is no caption of another {what} to draw")
    # Rejection sampling, redrawing only the entries that hit the same group.
    bad = groups[idx] == groups.unsqueeze(1)  # (N, M)
    for _ in range(10_000):
        if not bool(bad.any()):
            return idx
        redraw = torch.randint(0, n, (int(bad.sum()),), generator=generator)
        idx[bad] = redraw
        bad = groups[idx] == groups.unsqueeze(1)
    raise RuntimeError(f"could not draw mismatching captions of another {what}")  # pragma: no cover


def r_precision(
    image_vecs: torch.Tensor,  # (N, D) global image vectors v-bar of the generated images
    text_vecs: torch.Tensor,  # (N, D) sentence vectors e-bar of their ground-truth captions
    n_mismatch: int = 99,
    splits: int = 10,
    generator: torch.Generator | None = None,  # draws the mismatching captions (None: torch's global RNG)
    class_ids: torch.Tensor | None = None,  # (N,) class of each sample (for exclude_same_class)
    exclude_same_class: bool = False,  # draw mismatching captions from other classes only (DM-GAN)
    image_ids: torch.Tensor | None = None,  # (N,) test image of each sample: never its other captions
    chunk: int = 1024,  # samples scored at once (bounds memory to chunk * n_mismatch * D)
) -> dict[str, Any]:
    """R-precision (R = 1) with 1 true + ``n_mismatch`` random captions per image: ``{"r_precision",
    "r_precision_std", "n", "hits"}`` (``hits`` (N,) float tensor: 1, 0 or 1/(k+1) on ties)."""
    if image_vecs.dim() != 2 or image_vecs.shape != text_vecs.shape:
        raise UserError(
            f"image and text vectors must both be (N, D), got {tuple(image_vecs.shape)} and {tuple(text_vecs.shape)}"
        )
    n = image_vecs.size(0)
    if not 1 <= splits <= n:
        raise UserError(f"splits must be in 1..N={n}, got {splits}")
    if n_mismatch < 1:
        raise UserError(f"n_mismatch must be >= 1, got {n_mismatch}")
    img = F.normalize(image_vecs.detach().double().cpu(), dim=1, eps=1e-8)  # (N, D)
    txt = F.normalize(text_vecs.detach().double().cpu(), dim=1, eps=1e-8)  # (N, D)
    mis = draw_mismatches(n, n_mismatch, generator, class_ids, exclude_same_class, image_ids)  # (N, M)
    hits = torch.empty(n, dtype=torch.float64)
    for start in range(0, n, chunk):
        sl = slice(start, start + chunk)
        own = torch.arange(n)[sl].unsqueeze(1)  # (b, 1)
        # One product for the true and the mismatching captions: a mismatch whose vector equals the true
        # one (the same caption text) then gets the same score to the bit, and counts as a tie.
        scores = torch.einsum("bd,bmd->bm", img[sl], txt[torch.cat([own, mis[sl]], dim=1)])  # (b, 1 + M)
        true, wrong = scores[:, :1], scores[:, 1:]
        # Scores within TIE_TOLERANCE are ties: the same caption text encoded in two batches can differ by
        # float32 rounding (about 1e-8).
        beaten = (wrong > true + TIE_TOLERANCE).any(dim=1)  # a mismatching caption ranks higher
        ties = ((wrong - true).abs() <= TIE_TOLERANCE).sum(dim=1).double()
        hits[sl] = torch.where(beaten, torch.zeros_like(ties), 1.0 / (1.0 + ties))
    parts = [float(hits[i * n // splits : (i + 1) * n // splits].mean()) for i in range(splits)]
    return {
        "r_precision": float(np.mean(parts)),
        "r_precision_std": float(np.std(parts)),
        "n": n,
        "hits": hits,
    }


@torch.no_grad()
def encode_for_r_precision(
    image_encoder: nn.Module,  # image_encoder(images (B, 3, H, W) in [-1, 1]) -> (regions, global (B, D))
    text_encoder: nn.Module,  # text_encoder(captions (B, T), lengths (B,)) -> (words, sentence (B, D))
    batches: Iterable[tuple],  # (images, captions, lengths) or (images, captions, lengths, class_ids)
    device: str | torch.device = "cpu",
    max_items: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Global image vectors (N, D), sentence vectors (N, D) and class ids (N,) or None, in eval mode."""
    imgs, sents, classes = [], [], []
    seen = 0
    with eval_mode(image_encoder, text_encoder):
        for batch in batches:
            if len(batch) not in (3, 4):
                raise UserError(
                    "each batch must be (images, captions, lengths) or (images, captions, lengths, class_ids)"
                )
            images, captions, lengths = batch[0], batch[1], batch[2]
            if max_items is not None:
                keep = max_items - seen
                if keep <= 0:
                    break
                images, captions, lengths = images[:keep], captions[:keep], lengths[:keep]
            _, glob = image_encoder(images.to(device))  # (B, D)
            _, sentence = text_encoder(captions.to(device), lengths.to(device))  # (B, D)
            imgs.append(glob.float().cpu())
            sents.append(sentence.float().cpu())
            if len(batch) == 4:
                classes.append(torch.as_tensor(batch[3])[: images.size(0)].cpu())
            seen += images.size(0)
    if not imgs:
        raise UserError("no batches to compute R-precision on")
    class_ids = torch.cat(classes) if len(classes) == len(imgs) else None
    return torch.cat(imgs), torch.cat(sents), class_ids


@register_metric("r_precision")
def r_precision_metric(
    *,
    image_encoder: nn.Module | None = None,  # DAMSM image encoder (with text_encoder and batches)
    text_encoder: nn.Module | None = None,  # DAMSM text encoder
    batches: Iterable[tuple] | None = None,  # (generated images, captions, lengths[, class_ids]) batches
    image_vecs: torch.Tensor | None = None,  # or precomputed vectors (N, D) ...
    text_vecs: torch.Tensor | None = None,  # ... with their sentence vectors (N, D)
    class_ids: torch.Tensor | None = None,  # (N,) for precomputed vectors
    n_mismatch: int = 99,
    splits: int = 10,
    seed: int = 0,  # seeds the draw of the mismatching captions
    exclude_same_class: bool = False,
    image_ids: torch.Tensor | None = None,  # (N,) test image of each sample: never its other captions
    device: str | torch.device = "cpu",
    max_items: int | None = None,
    encoder_name: str = "DAMSM",  # names the encoders in the result
) -> dict[str, Any]:
    """R-precision (paper Sec. 4) of generated images against their captions, in percent."""
    if image_vecs is None:
        if image_encoder is None or text_encoder is None or batches is None:
            raise UserError(
                "R-precision needs image_encoder, text_encoder and batches, or image_vecs and text_vecs"
            )
        image_vecs, text_vecs, class_ids = encode_for_r_precision(
            image_encoder, text_encoder, batches, device, max_items
        )
    elif text_vecs is None:
        raise UserError("image_vecs needs text_vecs")
    res = r_precision(
        image_vecs,
        text_vecs,
        n_mismatch=n_mismatch,
        splits=splits,
        generator=torch.Generator().manual_seed(seed),
        class_ids=class_ids,
        exclude_same_class=exclude_same_class,
        image_ids=image_ids,
    )
    cls = ", other classes only" if exclude_same_class else ", other test images only" if image_ids is not None else ""
    return {
        "r_precision": 100.0 * res["r_precision"],
        "r_precision_std": 100.0 * res["r_precision_std"],
        "n": res["n"],
        "n_mismatch": n_mismatch,
        "splits": splits,
        "seed": seed,
        "exclude_same_class": exclude_same_class,
        "exclude_same_image": exclude_same_class or image_ids is not None,
        "feature_extractor": f"{encoder_name} image/text encoders (global image vector, sentence vector)",
        "protocol": PROTOCOL.format(m=n_mismatch, cls=cls, splits=splits),
    }
