"""The real test images of an evaluation: their identity (the key of the cached FID statistics), the images
themselves, and, on the shapes data, the attributes a caption states and the attribute classifier's accuracy
on the real images (what a perfect generator would reach)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.base import TextImageDataset, make_loader
from ..data.cache import source_fingerprint
from ..data.synthetic import SHAPES, attributes_from_caption
from ..metrics.attributes import ATTRIBUTES, attribute_accuracy
from .captions import EvalCaptions

__all__ = ["dataset_identity", "real_images", "attribute_targets", "real_attribute_reference"]


def dataset_identity(dataset: TextImageDataset) -> dict[str, Any]:
    """What determines the real test images (the key of the cached FID statistics)."""
    h = hashlib.sha256()
    for index, key in enumerate(dataset.keys):
        h.update(key.encode("utf-8") + b"\0")
        h.update(np.asarray(dataset.caption_ids(index, 0), dtype=np.int64).tobytes())
    root = getattr(dataset, "root", "")
    paths = getattr(dataset, "image_paths", None)
    extra = dataset.cache_extra() if hasattr(dataset, "cache_extra") else ""
    return {
        "type": type(dataset).__name__,
        "root": os.path.abspath(root) if root else "",
        # Every image file's path, size and modification time (and e.g. the crop boxes): replaced or edited
        # images, or another folder with the same names, make a new entry.
        "files": source_fingerprint(paths, extra)[:32] if paths is not None else None,
        "data_seed": getattr(dataset, "data_seed", None),
        "n": len(dataset),
        "image_size": dataset.image_sizes[-1],
        "train_transform": bool(dataset.train),
        "content": h.hexdigest()[:32],
    }


def real_images(dataset: TextImageDataset, batch_size: int) -> Iterator[torch.Tensor]:
    """Every test image once, at the dataset's largest scale, (B, 3, S, S) in [-1, 1]."""
    for batch in make_loader(dataset, batch_size, shuffle=False, drop_last=False):
        yield batch.images[-1]


def attribute_targets(dataset: TextImageDataset, draws: EvalCaptions) -> list[dict[str, Any]] | str:
    """Per image: the ground truth of its test image, restricted to what its caption states; or the
    reason why attribute accuracy does not apply."""
    if len(dataset) == 0 or "attributes" not in dataset.extra(0):
        return "attribute accuracy needs ground-truth attributes: only the built-in shapes dataset has them"
    targets = []
    for index, text in zip(draws.indices.tolist(), draws.texts):
        objects = dataset.extra(index)["attributes"]
        if len(objects) != 1:
            return "attribute accuracy is defined for single-object scenes (shapes with max_objects=1)"
        truth = objects[0]
        # A caption cut by words_num may end before its shape word; appending the true shape lets the parser
        # still read the colour, size and position it states. The shape counts only if the caption names one.
        parsed = attributes_from_caption(f"{text} {truth['shape']}")
        said = dict(parsed[0]) if len(parsed) == 1 else {}
        said["shape"] = truth["shape"] if set(text.split()) & set(SHAPES) else None
        targets.append({name: truth[name] if said.get(name) is not None else None for name in ATTRIBUTES})
    return targets


def real_attribute_reference(
    classifier: nn.Module, dataset: TextImageDataset, draws: EvalCaptions, limit: int = 2000
) -> dict[str, Any]:
    """Accuracy of the classifier on the real test images behind the first ``limit`` distinct draws (full
    ground truth): what a perfect generator would reach under this classifier."""
    unique = list(dict.fromkeys(draws.indices.tolist()))[:limit]
    images = torch.stack([dataset[i]["images"][-1] for i in unique])  # (M, 3, S, S) in [-1, 1]
    targets = [dataset.extra(i)["attributes"][0] for i in unique]
    res = attribute_accuracy(classifier, images, targets)
    return {k: res[k] for k in ("all_acc", *(f"{a}_acc" for a in ATTRIBUTES), "n")}
