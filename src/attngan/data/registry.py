"""One entry point from a :class:`~attngan.config.DataConfig` to a dataset of any supported kind."""

from __future__ import annotations

import os
from collections.abc import Sequence

from ..config import DataConfig
from ..errors import DataError
from ..text import Vocabulary
from .base import TextImageDataset
from .files import missing_dataset

__all__ = ["DATASETS", "build_dataset"]

DATASETS = ("birds", "coco", "folder", "shapes")


def build_dataset(
    data_config: DataConfig,
    split: str,  # "train" or "test"
    image_sizes: Sequence[int],  # scales returned, smallest first, e.g. [64, 128, 256]
    vocab: Vocabulary | None = None,  # None: the dataset's own (captions.pickle, or built from its captions)
    train: bool = True,  # random caption choice, random crop and flip; False: fixed caption, center crop
    cache_dir: str | os.PathLike | None = None,  # image cache folder when data_config.cache (None: default)
    progress: bool = True,  # progress bar while building an image cache
) -> TextImageDataset:
    """The dataset named by ``data_config.dataset`` (birds | coco | folder | shapes)."""
    name = data_config.dataset
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if name == "shapes":
        from .synthetic import ShapesDataset

        return ShapesDataset.from_config(data_config, image_sizes, split=split, vocab=vocab, train=train)
    if not data_config.data_dir:
        raise DataError(missing_dataset(name, None))
    common = dict(
        split=split,
        image_sizes=image_sizes,
        words_num=data_config.words_num,
        vocab=vocab,
        train=train,
        truncate=data_config.truncate,
        seed=data_config.seed,
        cache_dir=(cache_dir if cache_dir is not None else True) if data_config.cache else None,
        progress=progress,
    )
    if name == "birds":
        from .cub import CUBDataset

        return CUBDataset(data_config.data_dir, captions_per_image=data_config.captions_per_image, **common)
    if name == "coco":
        from .coco import COCODataset

        return COCODataset(data_config.data_dir, captions_per_image=data_config.captions_per_image, **common)
    from .folder import FolderDataset

    return FolderDataset(data_config.data_dir, **common)
