"""Resumable data order: the batches of epoch ``e`` are a function of ``(seed, e)`` and can start mid-epoch.

The order comes from a ``DistributedSampler`` seeded by ``(seed, epoch)`` (one replica when not
distributed; over groups of items for a dataset with a ``group_size``), the per-item random draws from the dataset's ``set_epoch`` (see ``attngan.data.base``). To
continue an epoch after ``k`` batches, the first ``k * batch_size`` indices of the epoch are skipped, so a
resumed run sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..data.base import collate_batch
from ..errors import DataError

__all__ = ["batches_per_epoch", "epoch_loader", "image_batch_bytes", "iterate_batches", "loader_workers"]

log = logging.getLogger(__name__)


def _ignore_stop_signals(_worker_id: int) -> None:
    # Ctrl-C and SIGTERM reach the whole process group (torchrun signals it too); the main process handles
    # them by stopping after the current step, so the workers keep serving until then.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


class GroupedSampler:
    """A ``DistributedSampler`` over groups of ``group_size`` consecutive items: the groups are shuffled by
    ``(seed, epoch)`` and dealt to the processes, the items of a group stay together and in order (a dataset
    whose ``group_size`` is above 1, e.g. the shapes dataset's ``data.contrast_group``)."""

    def __init__(self, n: int, group_size: int, seed: int, rank: int, world_size: int, shuffle: bool):
        self.groups = DistributedSampler(
            range(-(-n // group_size)), num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=True
        )
        self.n, self.group_size = n, group_size

    def set_epoch(self, epoch: int) -> None:
        self.groups.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        k = self.group_size
        return (i for g in self.groups for i in range(g * k, min((g + 1) * k, self.n)))


def _sampler(dataset: Dataset, seed: int, rank: int, world_size: int, shuffle: bool):
    group_size = int(getattr(dataset, "group_size", 1))
    if group_size > 1:
        return GroupedSampler(len(dataset), group_size, seed, rank, world_size, shuffle)
    return DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=True)


def batches_per_epoch(dataset: Dataset, batch_size: int, world_size: int = 1) -> int:
    """Full batches per process and epoch (the last incomplete batch is dropped)."""
    group_size = int(getattr(dataset, "group_size", 1))
    per_process = (-(-len(dataset) // group_size) // world_size) * group_size if group_size > 1 else len(dataset) // world_size
    per_process = min(per_process, len(dataset))
    if per_process < batch_size:
        raise DataError(
            f"the dataset has {len(dataset)} items ({per_process} per process), fewer than one batch of "
            f"{batch_size}; use a smaller batch size (--set ...batch_size=N) or more data"
        )
    return per_process // batch_size


def _shared_memory_free(path: str = "/dev/shm") -> int | None:
    """Free bytes of the shared memory that DataLoader workers hand their batches over in (None: unknown)."""
    try:
        st = os.statvfs(path)
    except (OSError, AttributeError):
        return None
    return st.f_bavail * st.f_frsize


def image_batch_bytes(batch_size: int, sizes: list[int]) -> int:
    """Bytes of one batch of float32 RGB images at each of ``sizes`` (what a loader worker hands over)."""
    return batch_size * sum(3 * s * s * 4 for s in sizes)


def loader_workers(workers: int, device: torch.device, world_size: int = 1, batch_bytes: int = 0) -> int:
    """The DataLoader workers for ``data.workers``: itself when >= 0; for -1 (auto) min(8, CPU cores per
    process less one) on CUDA, where a GPU step is short enough for image decoding in the main process to
    starve it, and 0 elsewhere (a CPU step is long against the decoding, and workers would take its cores).
    The batches are the same for any number of workers.

    Each worker keeps two batches of ``batch_bytes`` in shared memory (``/dev/shm``); auto takes no more
    workers than fit in half of what is free there (eight workers keep 330 MB of birds batches, a
    container's default is 64 MB, and a worker that runs out of it dies with a bus error), with a warning
    that says what to change.
    """
    if workers >= 0:
        return workers
    if device.type != "cuda":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    n = max(0, min(8, cores // max(world_size, 1) - 1))
    free = _shared_memory_free()
    if n and batch_bytes > 0 and free is not None:
        fit = int(free // 2 // (2 * batch_bytes))
        if fit < n:
            log.warning(
                "%d DataLoader workers instead of %d: /dev/shm has %d MB free and each worker keeps two batches "
                "of %d MB there. Give the container more (docker run --shm-size=8g) or set data.workers",
                fit, n, free >> 20, batch_bytes >> 20,
            )  # fmt: skip
            n = fit
    return n


def epoch_loader(
    dataset: Dataset,
    batch_size: int,  # per process
    epoch: int,  # reseeds the order and the dataset's per-item draws
    start_batch: int = 0,  # batches of this epoch already consumed (resume mid-epoch)
    *,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    shuffle: bool = True,
    workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader over the remaining full batches of ``epoch`` for this process (``workers``: see
    :func:`loader_workers`; ``pin_memory`` for a CUDA device: page-locked batches copy asynchronously)."""
    n_batches = batches_per_epoch(dataset, batch_size, world_size)
    sampler = _sampler(dataset, seed, rank, world_size, shuffle)
    sampler.set_epoch(epoch)
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    indices = list(sampler)[start_batch * batch_size : n_batches * batch_size]
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=indices,
        drop_last=True,
        num_workers=workers,
        collate_fn=collate_batch,
        pin_memory=pin_memory,
        worker_init_fn=_ignore_stop_signals if workers > 0 else None,
        # Its own generator: a DataLoader iterator otherwise draws its worker base seed from the global torch
        # RNG, so starting mid-epoch (resume) would shift the noise of every later step.
        generator=torch.Generator().manual_seed(seed * 100_003 + epoch),
    )


def iterate_batches(loader: DataLoader) -> Iterator[Any]:
    """Iterate ``loader``; its worker processes are shut down as soon as the iteration ends, fails or is
    closed. (Left to garbage collection, a run stopped by an error kept them alive until the interpreter
    exited, whose ``multiprocessing`` clean-up then waited forever for workers that ignore SIGTERM.)"""
    iterator = iter(loader)
    try:
        yield from iterator
    finally:
        shutdown = getattr(iterator, "_shutdown_workers", None)  # _MultiProcessingDataLoaderIter
        if callable(shutdown):
            shutdown()
