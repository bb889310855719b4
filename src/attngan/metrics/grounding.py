"""Attention grounding on the built-in shapes dataset: does a word attend to the object it names?

Not in the AttnGAN paper (its datasets have no object masks). For each generated image, the last word
attention map of the generator (Eq. 2: beta_{j,i}, normalised over the words at each sub-region j) is read
for the caption's colour word and its shape word. The share of that word's attention mass that falls inside
the object's ground-truth region (:func:`attngan.data.synthetic.object_mask`, at the attention map's
resolution, where the scene puts the object the caption describes) is averaged over words and images.
Chance is the same average of the region's share of the image area: what a map spread evenly would score.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..data.synthetic import COLORS, SHAPES, object_mask
from .registry import register_metric

__all__ = ["PROTOCOL", "grounding_shares", "attention_grounding_metric"]

PROTOCOL = (
    "attention grounding: share of the attention mass of each caption's colour and shape word (last attention "
    "stage, Eq. 2) inside the object's ground-truth region, mean over {n_words} words of {n} images; chance: the "
    "region's share of the image area"
)


def grounding_shares(
    attention: torch.Tensor,  # (T, h, w): one image's attention maps, one per word (padded words ignored)
    tokens: Sequence[str],  # the caption's words as the model read them (T' <= T)
    objects: Sequence[dict[str, Any]],  # the scene's objects (attngan.data.synthetic.sample_scene)
) -> list[tuple[str, float, float]]:
    """("color" or "shape", share of the word's attention inside its object's region, the region's area
    share) for each colour and shape word of ``tokens`` that names exactly one object of the scene."""
    h, w = attention.shape[-2:]
    if h != w:
        raise ValueError(f"attention maps must be square, got {h} x {w}")
    out = []
    for t, word in enumerate(tokens[: attention.shape[0]]):
        key = "color" if word in COLORS else "shape" if word in SHAPES else None
        if key is None:
            continue
        named = [o for o in objects if o[key] == word]
        if len(named) != 1:
            continue  # not in the scene, or ambiguous (two objects of this shape)
        region = torch.from_numpy(object_mask(named[0], h))
        mass = attention[t].double()
        total = float(mass.sum())
        if total <= 0:
            continue
        out.append((key, float(mass[region].sum()) / total, float(region.double().mean())))
    return out


@register_metric("attention_grounding")
def attention_grounding_metric(
    *,
    attention: Sequence[torch.Tensor],  # per image (T, h, w): the last attention stage
    tokens: Sequence[Sequence[str]],  # per image: the words the model read
    scenes: Sequence[Sequence[dict[str, Any]]],  # per image: the ground-truth objects
) -> dict[str, Any]:
    """Mean attention share inside the named object's region for the colour and shape words, and chance."""
    if not (len(attention) == len(tokens) == len(scenes)):
        raise ValueError(f"{len(attention)} attention maps, {len(tokens)} captions and {len(scenes)} scenes")
    shares: dict[str, list[tuple[float, float]]] = {"color": [], "shape": []}
    for att, words, objects in zip(attention, tokens, scenes):
        for key, share, area in grounding_shares(att, words, objects):
            shares[key].append((share, area))
    both = shares["color"] + shares["shape"]
    mean = (lambda xs, k: float(np.mean([x[k] for x in xs])) if xs else float("nan"))  # noqa: E731
    grounding, chance = mean(both, 0), mean(both, 1)
    return {
        "attention_grounding": grounding,
        "chance": chance,
        "ratio_to_chance": grounding / chance if both and chance > 0 else float("nan"),
        "color": mean(shares["color"], 0),
        "shape": mean(shares["shape"], 0),
        "n_words": len(both),
        "n": len(attention),
        "protocol": PROTOCOL.format(n_words=len(both), n=len(attention)),
        "feature_extractor": "none (the generator's own attention maps)",
    }
