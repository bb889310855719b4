"""The test captions of an evaluation: one per generated image, drawn as the original evaluation loop did."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ..data.base import TextImageDataset
from ..errors import UserError
from ..text import truncate_ids

__all__ = ["EVAL_WORDS_NUM", "EvalCaptions", "draw_test_captions"]

log = logging.getLogger(__name__)

# Longest test caption of the original's evaluation (cfg/eval_bird.yml, cfg/eval_coco.yml: TEXT.WORDS_NUM);
# training cut captions to 18 (birds) and 12 (coco) words.
EVAL_WORDS_NUM: dict[str, int] = {"birds": 25, "coco": 20}


@dataclass(frozen=True)
class EvalCaptions:
    """The test captions of an evaluation, one per generated image."""

    indices: np.ndarray  # (N,) index of the test image each caption belongs to
    caption_ids: list[list[int]]  # word ids (the dataset's vocabulary), truncated to words_num
    texts: list[str]  # the same words as text (what the pipeline is given)
    class_ids: np.ndarray  # (N,) class of the test image (for mismatching captions of other classes)
    seeds: list[int]  # noise seed of each image


def draw_test_captions(dataset: TextImageDataset, n: int, seed: int = 0) -> EvalCaptions:
    """``n`` captions of ``dataset``: the test images in a seeded random order (a new permutation per pass),
    one random caption of each, truncated to ``dataset.words_num``; image k gets noise seed ``seed + k``.
    A function of ``(dataset, n, seed)`` only."""
    if n < 1:
        raise UserError(f"the number of images must be >= 1, got {n}")
    if len(dataset) == 0:
        raise UserError("the test set is empty; check --dataset / --data-dir")
    rng = np.random.default_rng([seed, 0xE7A1])
    passes = -(-n // len(dataset))
    if passes > 1:
        log.info("%d images from %d test images: each image is drawn up to %d times", n, len(dataset), passes)
    indices = np.concatenate([rng.permutation(len(dataset)) for _ in range(passes)])[:n]  # (N,)
    caption_ids, texts = [], []
    itos = dataset.vocab.itos
    for index in indices.tolist():
        k = int(rng.integers(dataset.num_captions(index)))
        ids = truncate_ids(dataset.caption_ids(index, k), dataset.words_num, dataset.truncate, rng)
        caption_ids.append(ids)
        texts.append(" ".join(itos[i] for i in ids))
    return EvalCaptions(
        indices=indices,
        caption_ids=caption_ids,
        texts=texts,
        class_ids=np.asarray(dataset.class_ids)[indices],
        seeds=[seed + k for k in range(n)],
    )
