"""The generated images of an evaluation: drawn batch by batch, kept as 8-bit pixels in memory or, when
large (30,000 images of 256 px are 5.9 GB), in a temporary memory-mapped file."""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserError
from ..pipeline import AttnGANPipeline
from .captions import EvalCaptions

__all__ = ["IN_MEMORY_LIMIT", "ImageStore", "check_image_space", "generate_images"]

log = logging.getLogger(__name__)

IN_MEMORY_LIMIT = 2 * 1024**3  # bytes of uint8 images kept in RAM; more go to a temporary memmap file


class ImageStore:
    """Generated images as uint8 (N, 3, S, S): in memory, or in a temporary memory-mapped file when large."""

    def __init__(self, n: int, size: int) -> None:
        shape = (n, 3, size, size)
        self._tmp: tempfile.TemporaryDirectory | None = None
        if n * 3 * size * size > IN_MEMORY_LIMIT:  # the space was checked up front (check_image_space)
            self._tmp = tempfile.TemporaryDirectory(prefix="attngan-eval-")
            path = Path(self._tmp.name) / "images.npy"
            log.info("keeping the generated images in the temporary file %s", path)
            self.array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
        else:
            self.array = np.empty(shape, dtype=np.uint8)

    def __len__(self) -> int:
        return self.array.shape[0]

    def write(self, start: int, images: torch.Tensor) -> None:
        """images (B, 3, S, S) float in [-1, 1], rounded to 8 bits as when saved as PNG."""
        x = torch.round((images.detach().float().clamp(-1, 1) + 1) * 127.5).to(torch.uint8)  # (B, 3, S, S)
        self.array[start : start + x.size(0)] = x.cpu().numpy()

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """(B, 3, S, S) uint8 batches in order."""
        for start in range(0, len(self), batch_size):
            yield torch.from_numpy(np.ascontiguousarray(self.array[start : start + batch_size]))

    def close(self) -> None:
        self.array = np.empty((0, 3, 1, 1), dtype=np.uint8)  # drops the memmap before its file is removed
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def check_image_space(n: int, size: int) -> None:
    """Refuse before generating when ``n`` images of ``size`` px do not fit where they will be kept."""
    need = n * 3 * size * size
    if need <= IN_MEMORY_LIMIT:
        return
    folder = tempfile.gettempdir()
    free = shutil.disk_usage(folder).free
    if need > free:
        raise UserError(
            f"{n} generated images of {size} px need {need / 1e9:.1f} GB in the temporary folder {folder}, which "
            f"has {free / 1e9:.1f} GB free: free space there, point TMPDIR to a larger disk, or lower --n-images"
        )


@torch.no_grad()
def generate_images(
    pipeline: AttnGANPipeline,
    draws: EvalCaptions,
    store: ImageStore,
    batch_size: int,
    ca_mean: bool,
    progress: bool,
    maps: list | None = None,
) -> None:
    """Last-stage images of the drawn captions into ``store``, ``batch_size`` at a time; with ``maps``, the
    last attention stage's maps and the words of each image are appended to it."""
    starts: Any = range(0, len(draws.texts), batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="generating", unit="batch")
    for start in starts:
        stop = start + batch_size
        out = pipeline(
            draws.texts[start:stop],
            seed=draws.seeds[start:stop],
            batch_size=batch_size,
            ca_mean=ca_mean,
            return_attention=maps is not None,
        )
        store.write(start, torch.stack([stages[-1] for stages in out.stage_tensors]))  # (B, 3, S, S)
        if maps is not None:
            maps += [(per_stage[-1], words) for per_stage, words in zip(out.attention_maps, out.tokens)]
