"""MS-COCO in two layouts.

(a) The original AttnGAN release (reference section 3.1)::

    data_dir/captions.pickle, train/filenames.pickle, test/filenames.pickle, text/<key>.txt,
    images/<key>.jpg

(b) The official annotations::

    data_dir/annotations/captions_train2014.json, captions_val2014.json, train2014/*.jpg, val2014/*.jpg

    (2017 names work too). The train split is train2014, the test split val2014; the key is the file name
    without extension; every caption of an image is kept (5 to 7 in COCO); the vocabulary is built
    deterministically from train + val.

There is no class masking on COCO: the class id is the image index.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from ..errors import DataError
from ..text import Vocabulary
from .files import ImageFileDataset, Listing, build_vocabulary, check_split, scan_original_layout
from .pickles import load_captions_pickle

__all__ = ["COCODataset", "scan_coco", "detect_coco_layout", "coco_vocabulary"]

log = logging.getLogger(__name__)

_YEARS = ("2014", "2017")
_OFFICIAL_SPLIT = {"train": "train", "test": "val"}


def _official_year(root: Path) -> str | None:
    """The release both splits come from: the first year with both caption files, else one with either.

    One year for both splits: 2017's train set holds most of 2014's val images, so mixing the years (train
    2017 with val 2014) would test on training images.
    """
    have = {y: [(root / "annotations" / f"captions_{s}{y}.json").is_file() for s in ("train", "val")] for y in _YEARS}
    return next((y for y in _YEARS if all(have[y])), next((y for y in _YEARS if any(have[y])), None))


def _official_files(root: Path, split: str) -> tuple[Path, Path] | None:
    """(annotation json, image folder) of a split in the official layout, or None."""
    year = _official_year(root)
    if year is None:
        return None
    ann = root / "annotations" / f"captions_{_OFFICIAL_SPLIT[split]}{year}.json"
    return (ann, root / f"{_OFFICIAL_SPLIT[split]}{year}") if ann.is_file() else None


def detect_coco_layout(data_dir: str | os.PathLike) -> str:
    """``"original"`` (filenames.pickle / captions.pickle) or ``"official"`` (annotations/*.json)."""
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"dataset folder {root} does not exist; pass the COCO folder")
    if any(
        (root / p).is_file() for p in ("captions.pickle", "train/filenames.pickle", "test/filenames.pickle")
    ):
        return "original"
    if any(_official_files(root, s) for s in ("train", "test")):
        return "official"
    raise DataError(
        f"{root} holds neither the original AttnGAN COCO layout (train/filenames.pickle, text/, images/) nor "
        "the official one (annotations/captions_train2014.json with train2014/); "
        "see the docstring of attngan.data.coco for both"
    )


def _scan_official(root: Path, split: str) -> Listing:
    listing = Listing(root=root, split=split)
    files = _official_files(root, split)
    if files is None:
        name = f"captions_{_OFFICIAL_SPLIT[split]}{_official_year(root) or '2014'}.json"
        listing.problems.append(
            f"{root / 'annotations' / name} does not exist; download the COCO annotations"
        )
        return listing
    ann_path, image_dir = files
    try:
        data = json.loads(ann_path.read_text(encoding="utf-8"))
        images = {int(im["id"]): str(im["file_name"]) for im in data["images"]}
        annotations = sorted(
            (int(a["image_id"]), int(a.get("id", 0)), str(a["caption"])) for a in data["annotations"]
        )
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        listing.problems.append(f"cannot read {ann_path} ({exc}); download the COCO annotations again")
        return listing
    except (KeyError, TypeError, ValueError) as exc:
        listing.problems.append(f"{ann_path} is not a COCO captions file (missing or bad field {exc})")
        return listing
    listing.sources.append(ann_path)
    if not image_dir.is_dir():
        listing.problems.append(f"image folder {image_dir} does not exist; unzip {image_dir.name}.zip there")
        return listing

    captions: dict[int, list[str]] = {}
    orphans = 0
    for image_id, _, caption in annotations:
        if image_id not in images:
            orphans += 1
        elif caption.strip():
            captions.setdefault(image_id, []).append(caption.strip())
    if orphans:
        log.warning("%s: %d captions name images that are not listed; ignored", ann_path, orphans)
    uncaptioned = [i for i in images if i not in captions]
    if uncaptioned:
        log.warning("%s: %d images have no caption and are left out", ann_path, len(uncaptioned))
    for image_id, file_name in sorted(images.items(), key=lambda kv: kv[1]):
        if image_id not in captions:
            continue
        path = image_dir / file_name
        listing.keys.append(os.path.splitext(file_name)[0])
        listing.images.append(path)
        listing.captions.append(captions[image_id])
        if not path.is_file():
            listing.problems.append(f"image {path} listed in {ann_path} does not exist")
    if len(set(listing.keys)) != len(listing.keys):
        listing.problems.append(f"{ann_path} lists the same file name under several image ids")
    return listing


def scan_coco(
    data_dir: str | os.PathLike,
    split: str,
    captions_per_image: int = 5,  # original layout only: captions per text file / per image in the pickle
    layout: str = "auto",  # "auto" | "original" | "official"
) -> Listing:
    """Find everything of one split without raising (problems collected in the listing)."""
    root = Path(data_dir)
    check_split(split)
    if layout == "auto":
        try:
            layout = detect_coco_layout(root)
        except DataError as exc:
            return Listing(root=root, split=split, problems=[str(exc)])
    if layout == "original":
        return scan_original_layout(root, split, captions_per_image, root / "images")
    if layout == "official":
        return _scan_official(root, split)
    raise DataError(f"layout must be 'auto', 'original' or 'official', got {layout!r}")


def coco_vocabulary(
    data_dir: str | os.PathLike,
    captions_per_image: int = 5,
    layout: str = "auto",
    scanned: Listing | None = None,  # a split already scanned (not read again)
) -> Vocabulary:
    """captions.pickle's vocabulary if present, else one built from the train + test captions."""
    root = Path(data_dir)
    if layout in ("auto", "original") and (root / "captions.pickle").is_file():
        return load_captions_pickle(root / "captions.pickle").vocab
    caption_lists: list[list[str]] = []
    for split in ("train", "test"):
        if scanned is not None and scanned.split == split:
            caption_lists += scanned.captions
        else:
            caption_lists += scan_coco(root, split, captions_per_image, layout).captions
    return build_vocabulary(caption_lists)


class COCODataset(ImageFileDataset):
    """COCO in the original AttnGAN layout or the official one (see the module docstring)."""

    def __init__(
        self,
        data_dir: str | os.PathLike,  # the original layout or the official annotations (module docstring)
        split: str = "train",  # "train" or "test" (official layout: train2014 or val2014)
        image_sizes: Sequence[int] = (64, 128, 256),
        words_num: int = 12,
        captions_per_image: int = 5,  # original layout: captions per text file / per image in the pickle
        vocab: Vocabulary | None = None,  # None: captions.pickle's, else built from train + test
        train: bool | None = None,  # random caption/crop/flip; None: True for the train split
        truncate: str = "first",
        seed: int = 0,
        cache_dir: str | os.PathLike | bool | None = None,
        layout: str = "auto",  # "auto" | "original" | "official"
        progress: bool = True,
    ):
        if layout == "auto":
            layout = detect_coco_layout(data_dir)
        self.layout = layout
        listing = scan_coco(data_dir, split, captions_per_image, layout)
        listing.raise_problems("coco")
        listing.class_ids = None  # no class masking on COCO
        if vocab is None:
            vocab = listing.vocab or coco_vocabulary(data_dir, captions_per_image, layout, listing)
        super().__init__(
            listing, "coco", vocab, image_sizes, words_num, train, truncate, seed, cache_dir, progress
        )
