"""Datasets yielding sample dicts, and :func:`collate_batch` turning them into a :class:`Batch`.

The data layer knows nothing of models (it never imports ``attngan.nn``).
"""

from .base import (
    Batch,
    TextImageDataset,
    collate_batch,
    image_to_tensor,
    make_loader,
    multiscale_transform,
    set_epoch,
    to_rgb,
)
from .check import CheckReport, check_dataset
from .coco import COCODataset
from .cub import CUBDataset
from .folder import FolderDataset
from .registry import build_dataset
from .synthetic import (
    COLORS,
    POSITIONS,
    SHAPES,
    SIZES,
    ShapesDataset,
    attributes_from_caption,
    make_captions,
    render_scene,
    sample_scene,
    shapes_vocabulary,
    write_folder,
)

__all__ = [
    "CheckReport",
    "check_dataset",
    "COCODataset",
    "CUBDataset",
    "FolderDataset",
    "build_dataset",
    "Batch",
    "TextImageDataset",
    "collate_batch",
    "image_to_tensor",
    "make_loader",
    "multiscale_transform",
    "set_epoch",
    "to_rgb",
    "COLORS",
    "POSITIONS",
    "SHAPES",
    "SIZES",
    "ShapesDataset",
    "attributes_from_caption",
    "make_captions",
    "render_scene",
    "sample_scene",
    "shapes_vocabulary",
    "write_folder",
]
