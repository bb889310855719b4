"""Shared pieces of the on-disk datasets (CUB, COCO, own folders): reading images and caption files with
clear errors, a :class:`Listing` of what a layout scan found (problems collected, not raised), and
:class:`ImageFileDataset`, the dataset base that decodes image files through an optional cache.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from ..errors import DataError, EmptySplitError
from ..text import Vocabulary, has_words, tokenize
from .base import TextImageDataset, multiscale_transform, to_rgb
from .cache import ImageCache, cache_size, default_cache_dir, resized_image

__all__ = [
    "IMAGE_EXTENSIONS",
    "Listing",
    "read_caption_file",
    "open_image",
    "verify_image",
    "build_vocabulary",
    "dir_tag",
    "ImageFileDataset",
]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
SPLITS = ("train", "test")
MAX_LISTED = 10  # problems quoted in an exception message
# Where the datasets on disk come from (also in the README's Datasets section).
DATASET_SOURCES = {
    "birds": "Get the CUB-200-2011 images from https://www.vision.caltech.edu/datasets/cub_200_2011/ and the original "
    "release's metadata (captions, filenames, class info; birds.zip) linked from https://github.com/taoxugit/AttnGAN",
    "coco": "Get the COCO 2014 images and captions from https://cocodataset.org/#download (train2014, val2014, "
    "annotations_trainval2014), or the original release's metadata (coco.zip) linked from "
    "https://github.com/taoxugit/AttnGAN",
    "folder": "It holds your own images, each with a same-named .txt of captions (or a CSV/JSONL manifest)",
}


def missing_dataset(dataset: str, root: Path | None) -> str:
    """The message for a dataset whose folder is not given or does not exist: where its data comes from."""
    where = f"the {dataset} dataset folder {root} does not exist" if root else f"the {dataset} dataset needs a folder"
    source = DATASET_SOURCES.get(dataset)
    return (
        f"{where}: pass it with --data-dir (data.data_dir)"
        + (f". {source}" if source else "")
        + "; `attngan data check` validates the folder. Or train on the built-in data: --dataset shapes"
    )


@dataclass
class Listing:
    """What a layout scan found for one split. Problems are collected so that ``check`` can list them all;
    a dataset raises them (:meth:`raise_problems`)."""

    root: Path
    split: str
    keys: list[str] = field(default_factory=list)
    images: list[Path] = field(default_factory=list)
    captions: list[list[Any]] = field(default_factory=list)  # per image: str captions or word-id lists
    class_ids: list[int] | None = None  # None: the image index (no class masking)
    problems: list[str] = field(default_factory=list)
    sources: list[Path] = field(default_factory=list)  # metadata files read (they invalidate caches)
    vocab: Vocabulary | None = None  # set when the layout carries its own vocabulary (captions.pickle)
    hashed: int = 0  # folder layouts: images of this split chosen by a hash of their names (no split given)

    def raise_problems(self, dataset: str) -> None:
        """Raise one DataError quoting the first problems (each names its file), if any."""
        if not self.problems:
            return
        if not self.root.exists():
            raise DataError(missing_dataset(dataset, self.root))
        shown = "\n  ".join(self.problems[:MAX_LISTED])
        more = len(self.problems) - MAX_LISTED
        tail = f"\n  ... and {more} more" if more > 0 else ""
        raise DataError(
            f"the {dataset} data in {self.root} ({self.split} split) has {len(self.problems)} problem(s):\n  "
            f"{shown}{tail}\nFix or remove these files; `attngan data check` on this dataset lists every problem."
        )


def read_caption_file(path: str | os.PathLike, limit: int | None = None) -> list[str]:
    """The lines of a UTF-8 caption file that hold a word (the first ``limit`` ones), as the original reads
    them: lines without any ``\\w+`` token (blank, or punctuation only) are skipped and not counted."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"caption file {path} does not exist; add it (one caption per line)") from None
    except OSError as exc:
        raise DataError(f"cannot read caption file {path} ({exc}); check its permissions") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"caption file {path} is not UTF-8 (byte {exc.start}: {raw[exc.start : exc.start + 1]!r}); "
            "re-save it with UTF-8 encoding"
        ) from exc
    lines = [line.strip() for line in re.split(r"\r\n|\r|\n", text.lstrip("\ufeff"))]  # LF, CRLF or old Mac CR
    lines = [line for line in lines if has_words(line)]
    if not lines:
        raise DataError(f"caption file {path} is empty (no line with a word); write at least one caption per line")
    return lines if limit is None else lines[:limit]


def _too_large(path: Path, exc: Exception) -> DataError:
    return DataError(
        f"image {path} is larger than PIL's limit of {Image.MAX_IMAGE_PIXELS} pixels ({exc}); resize it, or raise "
        "PIL.Image.MAX_IMAGE_PIXELS if you trust the file"
    )


def open_image(path: str | os.PathLike, exif_orientation: bool = False) -> Image.Image:
    """Decode ``path`` fully to an RGB image; a missing, truncated or corrupt file is a DataError naming it.

    ``exif_orientation``: turn the pixels as the file's EXIF orientation tag says (what image viewers show;
    for photos of users' own). The original code ignored the tag, so CUB and COCO are read as stored.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()  # decode now, so a truncated file fails here and not deep inside a transform
            if exif_orientation:
                im = ImageOps.exif_transpose(im)
            return to_rgb(im)
    except FileNotFoundError:
        if path.is_symlink():
            raise DataError(f"image {path} is a link to {os.readlink(path)}, which does not exist") from None
        raise DataError(f"image {path} does not exist; restore it or remove it from the dataset") from None
    except Image.DecompressionBombError as exc:
        raise _too_large(path, exc) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(
            f"cannot decode image {path} ({exc}); the file is truncated or corrupt: "
            "download it again or remove it from the dataset"
        ) from exc


def verify_image(path: str | os.PathLike, decode: bool = True) -> str | None:
    """A problem description for ``path``, or None if it is a readable image.

    PIL's ``verify()`` checks the structure; it does not notice a truncated JPEG, so with ``decode`` the
    image is also decoded (JPEGs in draft mode, at 1/8 scale, which still reads every byte).
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.verify()
        if decode:
            with Image.open(path) as im:
                if im.format == "JPEG":
                    im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
                im.load()
    except FileNotFoundError:
        if path.is_symlink():
            return f"image {path} is a link to {os.readlink(path)}, which does not exist"
        return f"image {path} does not exist"
    except Image.DecompressionBombError as exc:
        return str(_too_large(path, exc))
    except (OSError, SyntaxError, ValueError) as exc:
        return f"image {path} cannot be decoded ({exc}): it is truncated or corrupt"
    return None


def build_vocabulary(caption_lists: Iterable[Sequence[str]]) -> Vocabulary:
    """Deterministic vocabulary of every word of the captions (no minimum count, as the original)."""
    return Vocabulary.build(tokenize(c) for caps in caption_lists for c in caps)


def dir_tag(path: str | os.PathLike) -> str:
    """Short stable tag of a folder's absolute path: keeps caches of different folders apart."""
    return hashlib.sha1(str(Path(path).resolve()).encode()).hexdigest()[:8]


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    return split


def captions_in(listing: Listing, vocab: Vocabulary) -> list[list[Any]]:
    """The listing's captions for ``vocab``: word ids of another vocabulary (the listing's captions.pickle)
    mean nothing in it, so those captions go through their words."""
    if listing.vocab is None or listing.vocab == vocab:
        return listing.captions
    itos = listing.vocab.itos
    return [[" ".join(itos[i] for i in c) for c in caps] for caps in listing.captions]


class ImageFileDataset(TextImageDataset):
    """Images decoded from files, cropped by :meth:`crop`, through an optional uint8 cache.

    Subclasses scan their layout into a :class:`Listing` and pass it here with the arguments of their own
    constructor, in this order.
    """

    def __init__(
        self,
        listing: Listing,
        name: str,  # dataset name for messages and cache files ("birds", "coco", "folder")
        vocab: Vocabulary,  # the model's; word ids of the listing's own vocabulary are re-encoded by their words
        image_sizes: Sequence[int],
        words_num: int,
        train: bool | None,  # random caption/crop/flip; None: True for the train split
        truncate: str = "first",
        seed: int = 0,
        cache_dir: str | os.PathLike | bool | None = None,  # None/False: no cache; True: default folder
        progress: bool = True,  # progress bar while building the cache
    ):
        listing.raise_problems(name)
        if not listing.keys:
            raise EmptySplitError(
                f"the {listing.split} split of {listing.root} has no images; "
                "check the layout with `attngan data check`"
            )
        self.root = listing.root
        self.split = listing.split
        self.name = name
        self.image_paths = list(listing.images)
        super().__init__(
            captions=captions_in(listing, vocab),
            keys=listing.keys,
            vocab=vocab,
            words_num=words_num,
            image_sizes=image_sizes,
            class_ids=listing.class_ids,
            truncate=truncate,
            train=listing.split == "train" if train is None else train,
            seed=seed,
        )
        self.cache: ImageCache | None = None
        if cache_dir is not None and cache_dir is not False:
            size = cache_size(self.image_sizes[-1])
            self.cache = ImageCache.open_or_build(
                default_cache_dir() if cache_dir is True else cache_dir,
                name=f"{name}-{dir_tag(self.root)}",
                split=self.split,
                size=size,
                keys=self.keys,
                sources=[*self.image_paths, *listing.sources],
                load=lambda i: resized_image(self.load_image(i), size),
                extra=self.cache_extra(),
                progress=progress,
            )

    def cache_extra(self) -> str:
        """What else the cached pixels depend on (hashed into the cache index)."""
        return ""

    def crop(self, img: Image.Image, index: int) -> Image.Image:
        """Dataset-specific crop applied after decoding (none by default)."""
        return img

    def load_image(self, index: int) -> Image.Image:
        """The decoded, cropped RGB image ``index`` (not resized)."""
        return self.crop(open_image(self.image_paths[index]), index)

    def get_images(self, index: int, rng: np.random.Generator) -> list[torch.Tensor]:
        img = Image.fromarray(self.cache[index]) if self.cache is not None else self.load_image(index)
        return multiscale_transform(img, self.image_sizes, self.train, rng)

    def describe(self) -> dict[str, Any]:
        """Counts for logs and reports."""
        counts = [self.num_captions(i) for i in range(len(self))]
        return {
            "images": len(self),
            "captions": int(sum(counts)),
            "captions_per_image": (min(counts), max(counts)),
            "vocab_size": len(self.vocab),
        }


def scan_original_layout(
    root: Path,
    split: str,
    captions_per_image: int,  # CAPTIONS_PER_IMAGE: captions read per text file / stored per image in the pickle
    image_dir: Path,  # images are image_dir/<key>.jpg
) -> Listing:
    """The original release's metadata (reference section 3.1) for one split, without raising:
    ``<split>/filenames.pickle``, ``captions.pickle`` (image-major, exactly ``captions_per_image`` each) or
    else ``text/<key>.txt``, and the image files."""
    from .pickles import load_captions_pickle, load_filenames

    listing = Listing(root=root, split=check_split(split))
    if not root.is_dir():
        listing.problems.append(
            f"dataset folder {root} does not exist; pass the folder holding train/ and test/"
        )
        return listing
    filenames_path = root / split / "filenames.pickle"
    try:
        keys = load_filenames(filenames_path)
    except DataError as exc:
        listing.problems.append(str(exc))
        return listing
    listing.sources.append(filenames_path)
    listing.keys = keys
    n = len(keys)

    listing.images = [image_dir / f"{k}.jpg" for k in keys]
    for p in listing.images:
        if not p.is_file():
            listing.problems.append(f"image {p} listed in {filenames_path} does not exist")

    pickle_path = root / "captions.pickle"
    if pickle_path.is_file():
        try:
            loaded = load_captions_pickle(pickle_path)
        except DataError as exc:
            listing.problems.append(str(exc))
            return listing
        listing.vocab = loaded.vocab
        caps = loaded.train_captions if split == "train" else loaded.test_captions
        cpi = int(captions_per_image)
        if len(caps) != n * cpi:
            listing.problems.append(
                f"{pickle_path} holds {len(caps)} {split} captions but {filenames_path} lists {n} images x "
                f"{cpi} captions = {n * cpi}; set captions_per_image to the count it was built with, "
                "or move captions.pickle out of the folder to read the captions from text/"
            )
            return listing
        n_words = len(loaded.vocab)
        # An empty caption is legitimate: the original builder writes one for a line whose words are all
        # non-ASCII. The dataset skips it (and says so); an id outside the vocabulary is an inconsistency.
        for c, cap in enumerate(caps):
            if any(i <= 0 or i >= n_words for i in cap):
                listing.problems.append(
                    f"{pickle_path}: {split} caption {c} (image {keys[c // cpi]!r}) holds word ids "
                    f"outside 1..{n_words - 1}; the file is inconsistent: download it again"
                )
        listing.captions = [caps[i * cpi : (i + 1) * cpi] for i in range(n)]
        listing.sources.append(pickle_path)
    else:
        for k in keys:
            try:
                listing.captions.append(
                    read_caption_file(root / "text" / f"{k}.txt", limit=captions_per_image)
                )
            except DataError as exc:
                listing.problems.append(str(exc))
                listing.captions.append([])
    return listing
