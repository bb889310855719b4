"""CUB-200-2011 birds in the original AttnGAN layout (reference section 3.1-3.4)::

    data_dir/
      captions.pickle                  optional: [train, test, ixtoword, wordtoix] (Python 2, protocol 2)
      train/filenames.pickle           keys, e.g. '001.Black_footed_Albatross/Black_Footed_Albatross_0046_18'
      train/class_info.pickle          optional: one class id per key (1-based in the release)
      test/filenames.pickle, test/class_info.pickle
      text/<key>.txt                   one caption per line (read when captions.pickle is absent)
      CUB_200_2011/images/<key>.jpg
      CUB_200_2011/images.txt          '<id> <key>.jpg'
      CUB_200_2011/bounding_boxes.txt  '<id> <x> <y> <w> <h>'

Each image is cropped to its enlarged bounding box exactly as the original ``get_imgs``. With
``captions.pickle`` its vocabulary is used unchanged (the released models index it) and so are its
pre-tokenised captions; without it, the captions are read from ``text/`` and a deterministic vocabulary is
built from train + test (which will not match the released models; see reference section 3.2).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from ..errors import DataError
from ..text import Vocabulary
from .files import ImageFileDataset, Listing, build_vocabulary, scan_original_layout
from .pickles import load_captions_pickle, load_class_info

__all__ = ["CUBDataset", "scan_cub", "read_bounding_boxes", "cub_crop_box"]

log = logging.getLogger(__name__)

_CLASS_PREFIX = re.compile(r"^(\d+)\.")


def cub_crop_box(bbox: Sequence[int], width: int, height: int) -> tuple[int, int, int, int]:
    """The original's crop around bbox ``[x, y, w, h]``: a square of side ``2 * int(max(w, h) * 0.75)`` on
    the box center, clipped to the image (so it can be non-square at the borders). -> (x1, y1, x2, y2)."""
    x, y, w, h = (int(v) for v in bbox)
    r = int(max(w, h) * 0.75)
    cx, cy = int((2 * x + w) / 2), int((2 * y + h) / 2)
    return max(0, cx - r), max(0, cy - r), min(width, cx + r), min(height, cy + r)


def read_bounding_boxes(cub_dir: str | os.PathLike) -> tuple[dict[str, tuple[int, int, int, int]], list[str]]:
    """``images.txt`` + ``bounding_boxes.txt`` -> ({key: (x, y, w, h)}, problems).

    Values are cast to int by truncation, as the original's ``astype(int)``; rows are paired by image id.
    """
    cub_dir = Path(cub_dir)
    images_txt, boxes_txt = cub_dir / "images.txt", cub_dir / "bounding_boxes.txt"
    problems: list[str] = []

    def rows(path: Path, n_fields: int) -> dict[str, list[str]]:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            problems.append(
                f"{path} does not exist; it comes with CUB_200_2011.tgz: extract the whole archive into {cub_dir}"
            )
            return {}
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"cannot read {path} ({exc})")
            return {}
        out: dict[str, list[str]] = {}
        for n, line in enumerate(text.splitlines(), 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != n_fields:
                problems.append(f"{path} line {n}: expected {n_fields} fields, got {line!r}")
                continue
            out[fields[0]] = fields[1:]
        return out

    paths = rows(images_txt, 2)
    boxes = rows(boxes_txt, 5)
    result: dict[str, tuple[int, int, int, int]] = {}
    for image_id, (rel,) in paths.items():
        box = boxes.get(image_id)
        if box is None:
            if boxes:
                problems.append(f"{boxes_txt} has no box for image id {image_id} ({rel})")
            continue
        try:
            x, y, w, h = (int(float(v)) for v in box)
        except ValueError:
            problems.append(f"{boxes_txt}: the box of image id {image_id} is not numeric: {box}")
            continue
        if int(max(w, h) * 0.75) == 0:  # the original's crop would be empty (and fail)
            problems.append(
                f"{boxes_txt}: the box of image id {image_id} ({rel}) is {w} x {h} pixels once truncated to "
                "integers, too small to crop around; correct that line"
            )
        result[os.path.splitext(rel)[0]] = (x, y, w, h)
    return result, problems


def _class_ids_from_keys(keys: Sequence[str]) -> list[int] | None:
    """CUB keys start with the class folder '001.Name/': its number is the class id (1-based)."""
    ids = []
    for key in keys:
        m = _CLASS_PREFIX.match(key)
        if m is None:
            return None
        ids.append(int(m.group(1)))
    return ids


def scan_cub(
    data_dir: str | os.PathLike,
    split: str,
    captions_per_image: int = 10,  # the original's CAPTIONS_PER_IMAGE
    bbox: bool = True,
) -> tuple[Listing, list[tuple[int, int, int, int]] | None]:
    """Find everything of one split without raising: (listing, one bbox per image or None)."""
    root = Path(data_dir)
    listing = scan_original_layout(root, split, captions_per_image, root / "CUB_200_2011" / "images")
    if not listing.keys:
        return listing, None
    keys, n = listing.keys, len(listing.keys)

    # Class ids: class_info.pickle as given, else the class folder number of each key, else the index.
    class_path = root / split / "class_info.pickle"
    if class_path.is_file():
        try:
            class_ids = load_class_info(class_path)
            if len(class_ids) != n:
                listing.problems.append(
                    f"{class_path} has {len(class_ids)} class ids for {n} images in {root / split / 'filenames.pickle'}"
                )
            else:
                listing.class_ids = class_ids
                listing.sources.append(class_path)
        except DataError as exc:
            listing.problems.append(str(exc))
    else:
        listing.class_ids = _class_ids_from_keys(keys)
        log.info(
            "%s is absent; class ids %s",
            class_path,
            "from the class folders" if listing.class_ids else "= image index",
        )

    boxes = None
    if bbox:
        table, problems = read_bounding_boxes(root / "CUB_200_2011")
        listing.problems.extend(problems)
        listing.sources += [
            root / "CUB_200_2011" / "images.txt",
            root / "CUB_200_2011" / "bounding_boxes.txt",
        ]
        if table:
            absent = [k for k in keys if k not in table]
            for k in absent:
                listing.problems.append(
                    f"{root / 'CUB_200_2011' / 'images.txt'} does not list the image {k}.jpg"
                )
            if not absent:
                boxes = [table[k] for k in keys]
    return listing, boxes


def cub_vocabulary(
    data_dir: str | os.PathLike,
    captions_per_image: int = 10,
    scanned: Listing | None = None,  # a split already scanned (not read again)
) -> Vocabulary:
    """The vocabulary of the dataset: captions.pickle's if present, else built from train + test text."""
    root = Path(data_dir)
    if (root / "captions.pickle").is_file():
        return load_captions_pickle(root / "captions.pickle").vocab
    caption_lists = []
    for split in ("train", "test"):
        if scanned is not None and scanned.split == split:
            caption_lists += scanned.captions
            continue
        listing = scan_original_layout(root, split, captions_per_image, root / "CUB_200_2011" / "images")
        caption_lists += listing.captions
    return build_vocabulary(caption_lists)


class CUBDataset(ImageFileDataset):
    """CUB-200-2011 in the original layout; images cropped to the enlarged bounding box.

    ``vocab``: None uses captions.pickle's vocabulary (or builds one from text/, train + test); a given
    vocabulary (e.g. a trained model's) re-encodes the captions by their words.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike,  # the layout of the module docstring (CUB_200_2011/, train/, test/, ...)
        split: str = "train",  # "train" or "test"
        image_sizes: Sequence[int] = (64, 128, 256),
        words_num: int = 18,
        captions_per_image: int = 10,  # captions read per text file; the count stored per image in captions.pickle
        vocab: Vocabulary | None = None,
        train: bool | None = None,  # random caption/crop/flip; None: True for the train split
        truncate: str = "first",
        seed: int = 0,
        cache_dir: str | os.PathLike | bool | None = None,  # decoded-image cache (see data.cache)
        bbox: bool = True,  # crop to the enlarged bounding box (the original always does for birds)
        progress: bool = True,
    ):
        listing, boxes = scan_cub(data_dir, split, captions_per_image, bbox)
        listing.raise_problems("birds")
        self.boxes = boxes
        if vocab is None:
            vocab = listing.vocab or cub_vocabulary(data_dir, captions_per_image, listing)
        super().__init__(
            listing, "birds", vocab, image_sizes, words_num, train, truncate, seed, cache_dir, progress
        )

    def cache_extra(self) -> str:
        if self.boxes is None:
            return "no-bbox"
        return hashlib.sha256(repr(self.boxes).encode()).hexdigest()

    def crop(self, img: Image.Image, index: int) -> Image.Image:
        if self.boxes is None:
            return img
        x1, y1, x2, y2 = cub_crop_box(self.boxes[index], *img.size)
        if x2 <= x1 or y2 <= y1:
            raise DataError(
                f"the bounding box {self.boxes[index]} of {self.keys[index]} lies outside its {img.size[0]} x "
                f"{img.size[1]} image; correct its line in CUB_200_2011/bounding_boxes.txt"
            )
        return img.crop((x1, y1, x2, y2))
