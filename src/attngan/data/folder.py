"""Your own images and captions, in one of three forms:

1. A folder of images (``.jpg .jpeg .png .bmp .webp``, searched recursively, hidden entries skipped), each
   with a same-named ``.txt`` beside it holding its captions, one per non-empty line::

       photos/cat.jpg  photos/cat.txt  photos/more/dog.png  photos/more/dog.txt

2. A CSV manifest with an ``image,caption`` header (optional ``split`` column); an image may have several
   rows, one per caption.
3. A JSONL manifest, one object per line: ``{"image": "a.jpg", "caption": "..."}`` or
   ``{"image": "a.jpg", "captions": ["...", "..."]}`` (optional ``"split"``).

Manifest paths are relative to the manifest's folder. ``data_dir`` is the folder, the manifest file, or a
folder holding exactly one manifest named ``captions``, ``metadata`` or ``manifest`` (``.csv`` or ``.jsonl``).

Split: given by the ``split`` column/field (``train``; ``test`` or ``val``) or by ``train/`` and ``test/``
subfolders; otherwise each image goes to test with probability 0.1 by a SHA-1 hash of its key, the same on
every run and machine. The key is the image path relative to the folder, without extension. The vocabulary
is built deterministically from every caption (train + test), like the original's. Class id = image index.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ..errors import DataError
from ..text import Vocabulary
from .files import (
    IMAGE_EXTENSIONS,
    ImageFileDataset,
    Listing,
    build_vocabulary,
    check_split,
    open_image,
    read_caption_file,
)

__all__ = ["FolderDataset", "scan_folder", "hash_split", "find_manifest", "folder_vocabulary"]

log = logging.getLogger(__name__)

MANIFEST_NAMES = (
    "captions.csv",
    "captions.jsonl",
    "metadata.csv",
    "metadata.jsonl",
    "manifest.csv",
    "manifest.jsonl",
)
_SPLIT_NAMES = {"train": "train", "test": "test", "val": "test", "valid": "test", "validation": "test"}


def hash_split(key: str, test_fraction: float = 0.1) -> str:
    """``"test"`` for a fixed ``test_fraction`` of keys, by SHA-1 of the key (stable, unlike ``hash()``)."""
    u = int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big") / 2.0**64
    return "test" if u < test_fraction else "train"


def find_manifest(data_dir: str | os.PathLike) -> Path | None:
    """The manifest file ``data_dir`` is or holds, or None for a plain image folder."""
    path = Path(data_dir)
    if path.is_file():
        if path.suffix.lower() not in (".csv", ".jsonl"):
            raise DataError(f"{path} is not a .csv or .jsonl manifest; pass a folder or a manifest file")
        return path
    found = [path / n for n in MANIFEST_NAMES if (path / n).is_file()]
    if len(found) > 1:
        raise DataError(
            f"{path} holds several manifests ({', '.join(p.name for p in found)}); pass the one to use"
        )
    return found[0] if found else None


@dataclass
class _Entry:
    key: str
    image: Path
    captions: list[str] = field(default_factory=list)
    split: str | None = None
    where: str = ""  # for messages: the manifest line or the caption file


@dataclass
class _Scan:
    root: Path
    entries: list[_Entry] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    sources: list[Path] = field(default_factory=list)
    orphans: list[Path] = field(default_factory=list)  # caption files without an image beside them


def _key_of(image: Path, base: Path) -> str:
    try:
        rel = image.relative_to(base)
    except ValueError:
        rel = image
    return rel.with_suffix("").as_posix()


def _split_folders(root: Path) -> dict[str, str]:
    """Top-level folder name -> split, when ``root`` has a ``train/`` folder and a test folder (``test/``, or
    else ``val/``, ``valid/`` or ``validation/``; any case). Empty: no split given by folders."""
    tops = {d.name.lower(): d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")}
    test = next((tops[n] for n in ("test", "val", "valid", "validation") if n in tops), None)
    if "train" not in tops or test is None:
        return {}
    return {tops["train"]: "train", test: "test"}


def _scan_image_folder(root: Path) -> _Scan:
    scan = _Scan(root=root)
    images: list[Path] = []
    texts: dict[Path, Path] = {}  # image path without suffix -> its caption file (.txt in any case)
    visited: set[str] = set()  # real paths of the folders walked (links are followed, loops are not)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in visited:
            dirnames[:] = []
            continue
        visited.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            ext = os.path.splitext(name)[1].lower()
            if not name.startswith(".") and ext in IMAGE_EXTENSIONS:
                images.append(Path(dirpath) / name)
            elif not name.startswith(".") and ext == ".txt":
                texts.setdefault((Path(dirpath) / name).with_suffix(""), Path(dirpath) / name)
    scan.orphans = sorted(set(texts.values()) - {texts.get(image.with_suffix("")) for image in images})
    splits = _split_folders(root)
    seen: dict[str, Path] = {}
    for image in images:
        key = _key_of(image, root)
        text = texts.get(image.with_suffix(""), image.with_suffix(".txt"))
        if key in seen:
            scan.problems.append(f"images {seen[key]} and {image} share the caption file {text}; rename one of them")
            continue
        seen[key] = image
        if not image.exists():  # os.walk lists a link to nothing as a file
            scan.problems.append(f"image {image} is a link to {os.readlink(image)}, which does not exist")
            continue
        split = None
        if splits:
            top = key.split("/", 1)[0]
            if top not in splits:
                folders = " and ".join(str(root / name) for name in splits)
                scan.problems.append(f"image {image} is outside {folders}; move it")
                continue
            split = splits[top]
        entry = _Entry(key=key, image=image, split=split, where=str(text))
        try:
            entry.captions = read_caption_file(text)
            scan.sources.append(text)
        except DataError as exc:
            scan.problems.append(str(exc))
        scan.entries.append(entry)
    return scan


def _manifest_rows(path: Path, scan: _Scan) -> list[tuple[str, str, list[str], str | None]]:
    """(where, image, captions, split) per manifest row; problems go to ``scan``."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        scan.problems.append(f"cannot read manifest {path} ({exc})")
        return []
    except UnicodeDecodeError as exc:
        scan.problems.append(
            f"manifest {path} is not UTF-8 (byte {exc.start}); re-save it with UTF-8 encoding"
        )
        return []
    rows: list[tuple[str, str, list[str], str | None]] = []
    if path.suffix.lower() == ".csv":
        return _csv_rows(path, text, scan)
    for n, line in enumerate(text.split("\n"), 1):  # JSON strings may hold U+2028 etc. (str.splitlines splits there)
        if not line.strip():
            continue
        where = f"{path} line {n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            scan.problems.append(f"{where} is not valid JSON ({exc.msg})")
            continue
        if not isinstance(obj, dict):
            scan.problems.append(f"{where} should be a JSON object with 'image' and 'caption'")
            continue
        image = obj.get("image", obj.get("file_name"))
        caps: object = []
        for name in ("caption", "text", "captions"):  # every caption the row gives, in this order
            value = obj.get(name)
            if value is None:
                continue
            if not isinstance(value, (str, list)) or not isinstance(caps, list):
                caps = None
                break
            caps = caps + ([value] if isinstance(value, str) else value)
        if (
            not isinstance(image, str)
            or not isinstance(caps, list)
            or not all(isinstance(c, str) for c in caps)
        ):
            scan.problems.append(
                f'{where} needs "image": "path" and "caption": "text" (or "captions": [...])'
            )
            continue
        split = obj.get("split")
        rows.append((where, image.strip(), [c.strip() for c in caps if c.strip()], split))
    return rows


def _csv_rows(path: Path, text: str, scan: _Scan) -> list[tuple[str, str, list[str], str | None]]:
    """Rows of a CSV manifest, strictly: a row with more fields than the header (an unquoted comma in a
    caption) or an unbalanced quote (which would swallow the following rows) is a problem naming its line."""
    csv.field_size_limit(max(csv.field_size_limit(), 2**24))  # long captions (the default limit is 128 KiB)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows: list[tuple[str, str, list[str], str | None]] = []
    start = 1  # the physical line the current row starts after
    try:
        header = next(reader, None)
        fields = [f.strip().lower() for f in header or []]
        if "image" not in fields or "caption" not in fields:
            scan.problems.append(f"manifest {path} needs a header with 'image' and 'caption' columns, got {fields}")
            return []
        for values in reader:
            where = f"{path} line {start + 1}" if reader.line_num == start + 1 else f"{path} lines {start + 1}-{reader.line_num}"
            start = reader.line_num
            if not any(v.strip() for v in values):
                continue
            if len(values) != len(fields):
                scan.problems.append(
                    f"{where} has {len(values)} fields for the {len(fields)} columns of the header; put captions "
                    'that contain commas in double quotes ("a bird, red and small")'
                )
                continue
            row = dict(zip(fields, values))
            caption = row["caption"].strip()
            rows.append((where, row["image"].strip(), [caption] if caption else [], row.get("split")))
    except csv.Error as exc:
        line = _odd_quote_line(text, start + 1) or reader.line_num  # the parser fails later, where the data ends
        scan.problems.append(
            f"{path} line {line}: an unbalanced double quote ({exc}); quote a caption as "
            '"text", writing a quote inside it as ""'
        )
        return []
    for where, _, captions, _ in rows:
        if any("\n" in c for c in captions):  # a quote left open earlier swallowed line ends
            scan.problems.append(f"{where}: the caption spans several lines; check the quotes of that row")
    return rows


def _odd_quote_line(text: str, first: int) -> int | None:
    """The first physical line from ``first`` on with an odd number of double quotes: where a quoted field
    is opened and not closed (a field may span lines only between such lines)."""
    for n, line in enumerate(text.split("\n"), 1):  # as csv counts lines (not at U+2028 and the like)
        if n >= first and line.count('"') % 2:
            return n
    return None


def _scan_manifest(path: Path) -> _Scan:
    base = path.parent
    scan = _Scan(root=path, sources=[path])
    by_key: dict[str, _Entry] = {}
    for where, image, captions, split in _manifest_rows(path, scan):
        if not image:
            scan.problems.append(f"{where} has no image path")
            continue
        if not captions:
            scan.problems.append(f"{where} has an empty caption; write a caption or remove the row")
            continue
        if split is not None and str(split).strip():
            split = _SPLIT_NAMES.get(str(split).strip().lower())
            if split is None:
                scan.problems.append(f"{where}: split must be 'train' or 'test' (or 'val')")
                continue
        else:
            split = None
        image_path = Path(os.path.normpath((base / image) if not os.path.isabs(image) else Path(image)))
        key = _key_of(image_path, base)
        entry = by_key.get(key)
        if entry is None:
            entry = by_key[key] = _Entry(key=key, image=image_path, where=where)
            scan.entries.append(entry)
            if not image_path.is_file():
                hint = "; write paths with / (not \\)" if "\\" in image and os.sep == "/" else ""
                scan.problems.append(f"image {image_path} named on {where} does not exist{hint}")
        elif entry.image != image_path:
            scan.problems.append(
                f"{where}: {image_path} and {entry.image} have the same key {key!r}; rename one"
            )
            continue
        if split is not None:
            if entry.split is not None and entry.split != split:
                scan.problems.append(f"{where} puts {image} in {split} but an earlier row in {entry.split}")
                continue
            entry.split = split
        entry.captions.extend(captions)
    return scan


def _scan(data_dir: str | os.PathLike) -> _Scan:
    root = Path(data_dir)
    if not root.exists():
        return _Scan(
            root=root, problems=[f"dataset folder {root} does not exist; pass your image folder or manifest"]
        )
    try:
        manifest = find_manifest(root)
    except DataError as exc:
        return _Scan(root=root, problems=[str(exc)])
    scan = _scan_manifest(manifest) if manifest is not None else _scan_image_folder(root)
    if not scan.entries and not scan.problems:
        scan.problems.append(
            f"{root} holds no images with captions; put image files ({', '.join(IMAGE_EXTENSIONS)}) with "
            "same-named .txt caption files there, or a captions.csv / captions.jsonl manifest"
        )
    return scan


def scan_folder(data_dir: str | os.PathLike, split: str, test_fraction: float = 0.1) -> Listing:
    """Find everything of one split without raising (problems collected in the listing)."""
    return _split_listing(_scan(data_dir), split, test_fraction)


def _split_listing(scan: _Scan, split: str, test_fraction: float) -> Listing:
    if scan.orphans and split == "train":  # said once per dataset, not once per split or vocabulary scan
        log.warning(
            "%d caption files in %s have no image beside them (image types: %s) and are ignored, e.g. %s",
            len(scan.orphans), scan.root, " ".join(IMAGE_EXTENSIONS), ", ".join(str(p) for p in scan.orphans[:3]),
        )  # fmt: skip
    listing = Listing(root=scan.root, split=check_split(split), problems=scan.problems, sources=scan.sources)
    for e in scan.entries:
        if (e.split or hash_split(e.key, test_fraction)) == split:
            listing.hashed += e.split is None
            listing.keys.append(e.key)
            listing.images.append(e.image)
            listing.captions.append(e.captions)
    return listing


def folder_vocabulary(data_dir: str | os.PathLike) -> Vocabulary:
    """Deterministic vocabulary of every caption (both splits)."""
    return build_vocabulary(e.captions for e in _scan(data_dir).entries)


class FolderDataset(ImageFileDataset):
    """Your own images with captions (see the module docstring for the accepted forms)."""

    def __init__(
        self,
        data_dir: str | os.PathLike,  # a folder of images with captions, or a CSV/JSONL manifest
        split: str = "train",  # "train" or "test" (a given split, else a hash of the image name)
        image_sizes: Sequence[int] = (64, 128, 256),
        words_num: int = 18,
        vocab: Vocabulary | None = None,  # None: built from every caption of both splits
        train: bool | None = None,  # random caption/crop/flip; None: True for the train split
        truncate: str = "first",
        seed: int = 0,
        cache_dir: str | os.PathLike | bool | None = None,
        test_fraction: float = 0.1,  # share of images hashed to test when no split is given
        progress: bool = True,
    ):
        if not 0.0 <= test_fraction < 1.0:
            raise DataError(f"test_fraction must be in [0, 1), got {test_fraction}")
        scan = _scan(data_dir)
        listing = _split_listing(scan, split, test_fraction)
        listing.raise_problems("folder")
        if vocab is None:
            vocab = build_vocabulary(e.captions for e in scan.entries)
        super().__init__(
            listing, "folder", vocab, image_sizes, words_num, train, truncate, seed, cache_dir, progress
        )

    def load_image(self, index: int) -> Image.Image:
        # Photos are turned as their EXIF orientation says (as viewers show them); CUB and COCO are read as stored.
        return self.crop(open_image(self.image_paths[index], exif_orientation=True), index)

    def cache_extra(self) -> str:
        return "exif-orientation"
