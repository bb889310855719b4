"""Optional cache of decoded, cropped and resized images: one memory-mapped uint8 file per split and size.

Decoding a JPEG and cropping it costs more than the rest of a training step on small models; the cache
does it once. ``<cache_dir>/<name>-<split>-<size>.u8`` holds the uint8 pixels (H, W, 3) of every image one
after the other (image ``i`` = key ``i``) and ``<name>-<split>-<size>.json`` the keys, each image's
(H, W) and a hash of the source files' paths, sizes and modification times. A cache whose index does not
match (other keys, changed files, other crop) is rebuilt; both files are written to temporary names first
and renamed (the index last), so an interrupted build never leaves a cache that looks valid. The cache
only ever touches its own two files.

What is stored: the whole image (after any dataset crop, e.g. the CUB bounding box) with its shorter side
resized to ``size = int(final * 76 / 64)``, exactly as :func:`~attngan.data.base.multiscale_transform`
resizes it, so the random crops (and so the batches) are the same with and without the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..atomic import atomic_write_text, temporary_file
from ..errors import DataError
from .base import resize_shorter_side, to_rgb

__all__ = [
    "CACHE_VERSION",
    "cache_size",
    "resized_image",
    "source_fingerprint",
    "ImageCache",
    "default_cache_dir",
]

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # 1: centre squares


def default_cache_dir() -> Path:
    """``$ATTNGAN_CACHE/images``, else ``$XDG_CACHE_HOME/attngan/images``, else ``~/.cache/attngan/images``.

    ``$ATTNGAN_CACHE`` is the one cache root of the package (the metrics keep their statistics and the
    attribute classifier beside ``images/``).
    """
    if os.environ.get("ATTNGAN_CACHE"):
        return Path(os.environ["ATTNGAN_CACHE"]).expanduser() / "images"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "attngan" / "images"


def cache_size(final_size: int) -> int:
    """Shorter side of the cached images for a largest scale ``final_size``: the original's ``int(s * 76 / 64)``."""
    return int(final_size * 76 / 64)


def resized_image(img: Image.Image, size: int) -> np.ndarray:
    """Shorter side to ``size`` (as multiscale_transform), the aspect ratio kept -> uint8 (H, W, 3)."""
    return np.asarray(resize_shorter_side(to_rgb(img), size), dtype=np.uint8)


def source_fingerprint(paths: Sequence[str | os.PathLike], extra: str = "") -> str:
    """SHA-256 over (path, byte size, mtime) of every source file, plus ``extra`` (e.g. crop boxes)."""
    h = hashlib.sha256(f"v{CACHE_VERSION}\0{extra}\0".encode())
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{os.path.abspath(p)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{os.path.abspath(p)}\0missing\n".encode())
    return h.hexdigest()


class ImageCache:
    """Read-only view of a built cache: ``cache[i]`` -> uint8 (H, W, 3) of key ``i``.

    The memory map is opened lazily in each process (DataLoader workers re-open it rather than receiving a
    pickled copy of the pixels).
    """

    def __init__(self, data_path: str | os.PathLike, keys: Sequence[str], size: int, shapes: Sequence[Sequence[int]]):
        self.data_path = Path(data_path)
        self.keys = list(keys)
        self.size = int(size)
        self.shapes = np.asarray(shapes, dtype=np.int64).reshape(len(self.keys), 2)  # (N, 2): H, W
        self.offsets = np.concatenate([[0], np.cumsum(self.shapes.prod(axis=1) * 3)])  # (N + 1,) bytes
        self._array: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def _open(self) -> np.ndarray:
        if self._array is None:
            self._array = np.memmap(self.data_path, dtype=np.uint8, mode="r", shape=(int(self.offsets[-1]),))
        return self._array

    def __getitem__(self, index: int) -> np.ndarray:
        h, w = (int(v) for v in self.shapes[index])
        start = int(self.offsets[index])
        # A copy: tensors must not alias the map.
        return np.array(self._open()[start : start + h * w * 3]).reshape(h, w, 3)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_array"] = None
        return state

    @classmethod
    def open_or_build(
        cls,
        cache_dir: str | os.PathLike,
        name: str,  # dataset name, unique per source folder (e.g. "birds-1a2b3c4d")
        split: str,
        size: int,  # shorter side of the cached images, see cache_size
        keys: Sequence[str],
        sources: Sequence[str | os.PathLike],  # files whose change invalidates the cache
        load: Callable[[int], np.ndarray],  # index -> uint8 (H, W, 3), min(H, W) == size
        extra: str = "",  # anything else the pixels depend on (crop boxes), hashed into the index
        progress: bool = True,
    ) -> ImageCache:
        """The cache of these keys, built (with a progress bar) unless a matching one exists."""
        if not keys:
            raise DataError(f"cannot cache an empty split {split!r} of {name}")
        cache_dir = Path(cache_dir).expanduser()
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataError(
                f"cannot create the image cache folder {cache_dir} ({exc}); set ATTNGAN_CACHE to a folder you may write "
                "to (or pass cache_dir= in Python)"
            ) from exc
        stem = f"{name}-{split}-{int(size)}"
        data_path, index_path = cache_dir / f"{stem}.u8", cache_dir / f"{stem}.json"
        fingerprint = source_fingerprint(sources, extra)
        index = {
            "version": CACHE_VERSION,
            "name": name,
            "split": split,
            "size": int(size),
            "count": len(keys),
            "source_hash": fingerprint,
            "keys": list(keys),
        }
        with contextlib.suppress(OSError, ValueError, TypeError):
            stored = json.loads(index_path.read_text(encoding="utf-8"))
            shapes = stored.pop("shapes")
            cache = cls(data_path, keys, size, shapes)
            if stored == index and data_path.stat().st_size == int(cache.offsets[-1]):
                log.info("using the image cache %s", data_path)
                return cache

        log.info("building the image cache %s (%d images, shorter side %d px)", data_path, len(keys), size)
        tmp = temporary_file(data_path, suffix=".u8.tmp")
        shapes = []
        try:
            with open(tmp, "wb") as f:
                for i in tqdm(range(len(keys)), desc=f"caching {name} {split}", unit="img", disable=None if progress else True):
                    pixels = load(i)
                    if pixels.ndim != 3 or pixels.shape[2] != 3 or min(pixels.shape[:2]) != size or pixels.dtype != np.uint8:
                        raise ValueError(f"cache loader gave {pixels.dtype} {pixels.shape} for {keys[i]!r}")
                    f.write(np.ascontiguousarray(pixels).tobytes())
                    shapes.append([int(pixels.shape[0]), int(pixels.shape[1])])
                f.flush()
                os.fsync(f.fileno())
            with contextlib.suppress(OSError):
                index_path.unlink()  # a stale index must never describe the new pixels
            os.replace(tmp, data_path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        atomic_write_text(index_path, json.dumps(index | {"shapes": shapes}) + "\n")
        return cls(data_path, keys, size, shapes)
