"""The frame around a training loop's phases, the same for DAMSM pre-training and GAN training.

A :class:`TrainingRun` holds the position (step, epoch, batch in the epoch), the run folder, the stats sink,
the snapshots, the stop flags agreed between processes, and the ways a call ends. A loop reads::

    run = TrainingRun(LOOP, dist_info, device, state, position, ...)
    with run.folder_setup(run_dir, runs_dir, dataset, ...) as folder:  # rank 0 writes config.json etc.
        ...
    with run:  # Ctrl-C, a non-finite loss, a full disk or a lost process: where it stopped, how to go on
        with run.interruptible():
            for batch in run.batches(train_set, ...):
                ... the phases ...
                scalars = run.reduce_losses(values)  # averaged over processes; NaN/inf stops here
                run.step_done()
                ... report ...
                run.end_step(scalars, modules)  # snapshot, callback, stop
        run.save_last_step()
        return run.result(model_dir, stats)

What is saved and how the folder is prepared stay with the loop (its ``save`` callback and the body of
``folder_setup``): the harness decides when.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ..config import Preset, to_dict
from ..errors import DiskFullError
from ..text import Vocabulary
from .cpu import ThreadTuner
from .data import epoch_loader, image_batch_bytes, iterate_batches, loader_workers
from .distributed import DistInfo, all_reduce_mean, broadcast_object, gather_rng_states, shutdown_distributed
from .outcomes import (
    NonFiniteLossError,
    StopAgreed,
    TrainingInterrupted,
    TrainResult,
    check_finite,
    failure_of_environment,
    interruption,
)
from .run_folder import RunFolder
from .signals import InterruptGuard
from .state import check_resumable, load_state, make_run_dir, truncate_stats
from .stats import StatsSink

__all__ = ["LoopNames", "StepInfo", "TrainingRun", "state_to_resume", "planned_steps"]

log = logging.getLogger(__name__)

_STOP, _TIME_UP = 1, 2  # bits of the stop flags shared between processes


@dataclass(frozen=True)
class LoopNames:
    """How one loop is named in its files and messages."""

    kind: str  # "damsm" | "gan": the kind of its state files and config.json
    title: str  # "DAMSM pre-training": messages
    resuming: str  # "DAMSM training": the message of a resume
    command: str  # "pretrain-damsm": the CLI command that continues a run
    label: str  # "damsm": the run folder's suffix and the stats sink's name


@dataclass
class StepInfo:
    """What a ``callback`` sees after every completed step (for tests, custom logging, fault injection)."""

    step: int  # completed steps
    epoch: int
    losses: dict[str, float]  # this step's scalars, averaged over processes
    modules: dict[str, nn.Module]  # the networks being trained (unwrapped), by name
    run_dir: Path
    rank: int


def state_to_resume(resume: str | Path | None, kind: str, world_size: int, reshard: bool) -> dict[str, Any] | None:
    """The training state to continue from (None for a new run), checked against this number of processes."""
    state = load_state(resume, kind) if resume is not None else None
    if state is not None:
        check_resumable(state, world_size, reshard)
    return state


def planned_steps(max_steps: int | None, cfg: Any, steps_per_epoch: int) -> int:
    """The step a run ends at: ``max_steps`` if given, else the config's ``max_steps``, else its epochs."""
    total = max_steps if max_steps is not None else cfg.max_steps
    return cfg.epochs * steps_per_epoch if total is None else total


class TrainingRun:
    """Position, run folder, stats, snapshots, stop flags and the ways a training call ends (see the module)."""

    def __init__(
        self,
        names: LoopNames,
        dist_info: DistInfo,
        device: torch.device,
        state: dict[str, Any] | None,  # the state resumed from (None: a new run)
        position: tuple[int, int, int],  # (step, epoch, batch_in_epoch) to start at
        *,
        total_steps: int,
        stopped_by: str,  # what ends the run if nothing else does: "max_steps" | "epochs"
        max_seconds: float | None,
        snapshot_every: int,
        keep_checkpoints: int,
        nonfinite_hint: str,  # what to try when a loss becomes NaN/inf
        callback: Callable[[StepInfo], None] | None,
        adapt_threads: bool,
    ) -> None:
        self.names, self.dist, self.device, self.state = names, dist_info, device, state
        self.main = dist_info.is_main
        self.step, self.epoch, self.batch_in_epoch = position
        self.total_steps, self.stopped_by, self.max_seconds = total_steps, stopped_by, max_seconds
        self.snapshot_every, self.keep_checkpoints = snapshot_every, keep_checkpoints
        self.nonfinite_hint, self.callback = nonfinite_hint, callback
        self.tuner = ThreadTuner(enabled=adapt_threads and device.type == "cpu" and dist_info.world_size == 1)
        self.last_checkpoint: Path | None = Path(state["path"]) if state is not None else None
        self.saved_step = self.step if state is not None else -1
        self.run_dir: Path | None = None
        self.stats: StatsSink | None = None
        self.save: Callable[[list[dict]], Path] | None = None  # writes the state (rank 0), set by the loop
        self.in_step = False  # between fetching a batch and completing its step: an interrupt drops the step
        self.saving = False  # while a snapshot is written: an interrupt then keeps the last complete one
        self.done = self.step >= total_steps
        self.guard: InterruptGuard | None = None  # bound by interruptible(); read when an interrupt ends training
        self._folder: RunFolder | None = None
        self._batches: Any = None  # the current epoch's batches: closed (its workers shut down) however it ends
        self._flags = 0
        self._start_time = self._step_started = time.perf_counter()

    # ------------------------------------------------------------------------------------ before training

    @contextlib.contextmanager
    def folder_setup(
        self,
        run_dir: str | Path | None,  # None: a new numbered folder in runs_dir
        runs_dir: str | Path,
        dataset: str,  # names the new folder
        *,
        subdirs: tuple[str, ...],
        images_per_step: int,
        steps_per_epoch: int,
        setting: str,  # how the start message ends, after "(N steps per epoch)"
        progress: bool,
        tensorboard: bool,
    ) -> Iterator[Path | None]:
        """Rank 0 takes the run folder (created, or resumed and cleaned) and yields it for the loop to write
        its files (None on other processes); then every process learns it and opens the stats sink.

        Ctrl-C or an error before training leaves no empty run folder behind."""
        self._folder = folder = RunFolder(created=self.main and run_dir is None)
        try:
            if self.main:
                if run_dir is None:
                    run_dir = make_run_dir(runs_dir, f"{dataset}-{self.names.label}")
                run_dir = folder.take(run_dir, resumed=self.state is not None)  # locked: one process per run folder
                if self.state is not None:
                    log.info(
                        "resuming %s from %s (step %d, epoch %d)", self.names.resuming, self.state["path"], self.step,
                        self.epoch,
                    )  # fmt: skip
                for sub in subdirs:
                    (run_dir / sub).mkdir(parents=True, exist_ok=True)
                if self.state is not None:
                    truncate_stats(run_dir, self.step)
            yield run_dir if self.main else None
            self.run_dir = Path(broadcast_object(str(run_dir) if run_dir is not None else None, self.dist))
            self.stats = StatsSink(
                self.run_dir if self.main else None,
                self.total_steps,
                start_step=self.step,
                images_per_step=images_per_step,
                progress=progress,
                tensorboard=tensorboard,
                name=self.names.label,
            )
            self.stats.restore(self.state.get("stats") if self.state is not None else None)
        except BaseException:
            folder.release(failed_before_training=True)
            raise
        self._announce(images_per_step, steps_per_epoch, setting)

    def _announce(self, images_per_step: int, steps_per_epoch: int, setting: str) -> None:
        if not self.main:
            return
        if self.step >= self.total_steps:
            log.info(
                "%s in %s: already at step %d of %d, nothing to train; to go on, give a larger --max-steps",
                self.names.title, self.run_dir, self.step, self.total_steps,
            )  # fmt: skip
        else:
            log.info(
                "%s in %s: steps %d to %d of %d images (%d steps per epoch)%s",
                self.names.title, self.run_dir, self.step + 1, self.total_steps, images_per_step, steps_per_epoch,
                setting,
            )  # fmt: skip

    # ------------------------------------------------------------------------------------ the loop

    def __enter__(self) -> TrainingRun:
        self._start_time = time.perf_counter()
        return self

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        """The first Ctrl-C or SIGTERM asks to stop after the step under way (see :class:`InterruptGuard`)."""
        with InterruptGuard() as self.guard:
            yield

    def batches(
        self,
        dataset: Dataset,
        batch_size: int,
        seed: int,
        *,
        workers: int,  # data.workers of the preset (loader_workers decides how many are used)
        image_sizes: list[int],
        epochs: int | None = None,  # stop at the end of this epoch (None: the step count alone ends the run)
        on_epoch_end: Callable[[int], None] | None = None,  # called with the epoch that ended
    ) -> Iterator[Any]:
        """This process's batches from the current position on, epoch after epoch, until the run is done."""
        workers = loader_workers(workers, self.device, self.dist.world_size, image_batch_bytes(batch_size, image_sizes))
        while not self.done:
            self._batches = iterate_batches(epoch_loader(
                dataset, batch_size, self.epoch, self.batch_in_epoch, seed=seed, rank=self.dist.rank,
                world_size=self.dist.world_size, workers=workers, pin_memory=self.device.type == "cuda",
            ))  # fmt: skip
            for batch in self._batches:
                self.in_step = True
                self._step_started = time.perf_counter()
                yield batch
                if self.done:
                    return
            if on_epoch_end is not None:
                on_epoch_end(self.epoch)
            self.epoch += 1
            self.batch_in_epoch = 0
            if epochs is not None and self.epoch >= epochs:
                self.stopped_by = "epochs"
                self.done = True

    def reduce_losses(self, values: dict[str, torch.Tensor]) -> dict[str, float]:
        """The step's losses averaged over the processes, with the stop flags (a stop request, the time limit)
        agreed between them. Raises NonFiniteLossError for a NaN/inf loss, before anything is saved: the
        weights in memory may have taken the step, the checkpoints on disk have not."""
        time_up = self.max_seconds is not None and time.perf_counter() - self._start_time >= self.max_seconds
        flags = (_STOP if self.guard is not None and self.guard.requested else 0) | (_TIME_UP if time_up else 0)
        scalars, self._flags = all_reduce_mean(values, self.dist, flags)
        check_finite(scalars, self.step + 1, self.last_checkpoint, self.nonfinite_hint)
        return scalars

    def step_done(self) -> None:
        """The optimizers have stepped: count the step."""
        self.step += 1
        self.batch_in_epoch += 1
        self.in_step = False
        self.tuner.step(time.perf_counter() - self._step_started)

    def end_step(self, scalars: dict[str, float], modules: dict[str, nn.Module]) -> None:
        """After a step's report: a snapshot when one is due, the callback, then stop if asked or done."""
        if self.step % self.snapshot_every == 0:
            self.last_checkpoint = self.snapshot() or self.last_checkpoint
            self.saved_step = self.step
        if self.callback is not None:
            self.callback(StepInfo(self.step, self.epoch, scalars, modules, self.run_dir, self.dist.rank))
        if self._flags & _STOP:
            raise StopAgreed
        if self.step >= self.total_steps or self._flags & _TIME_UP:
            self.stopped_by = "time" if self._flags & _TIME_UP and self.step < self.total_steps else self.stopped_by
            self.done = True

    # ------------------------------------------------------------------------------------ snapshots

    def state_record(self, preset: Preset, vocab: Vocabulary, rngs: list[dict], **parts: Any) -> dict[str, Any]:
        """The state file's content: the position and settings of the run, the loop's ``parts`` (models,
        optimizers, ...), every process's RNG states and the scalars of the log interval under way."""
        return {
            "kind": self.names.kind,
            "config": to_dict(preset),
            "vocab": list(vocab.itos),
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            **parts,
            "rng": rngs,
            "world_size": self.dist.world_size,
            "stats": self.stats.pending(),
        }

    def snapshot(self) -> Path | None:
        """Save the state (a collective: every process calls it; rank 0 writes and returns the file)."""
        self.saving = True
        rngs = gather_rng_states(self.dist)
        if not self.main:
            self.saving = False
            return None
        path = self.save(rngs)
        self.saving = False
        return path

    def save_last_step(self) -> None:
        """The final state, unless the last step was just saved."""
        if self.saved_step != self.step:
            self.last_checkpoint = self.snapshot() or self.last_checkpoint

    def result(self, model_dir: Path | None, stats: dict[str, Any]) -> TrainResult:
        return TrainResult(
            self.run_dir, self.step, self.epoch, self.stopped_by, self.last_checkpoint if self.main else None,
            model_dir, stats, self.total_steps,
        )  # fmt: skip

    # ------------------------------------------------------------------------------------ how it ends

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        try:
            if exc is not None:
                self._raise_ending(exc)
        finally:
            self._release(failed=exc is not None)
        return False

    def _raise_ending(self, exc: BaseException) -> None:
        """Raise what ``exc`` means for the user (an interrupt, a full disk, a lost process), or return to
        let it go on as it is."""
        names, dist_info = self.names, self.dist
        if isinstance(exc, KeyboardInterrupt) and not isinstance(exc, TrainingInterrupted):
            stopped = interruption(
                exc, names.title, names.command, in_step=self.in_step, saving=self.saving, step=self.step,
                saved_step=self.saved_step, distributed=dist_info.distributed, snapshot=self.snapshot,
                last_checkpoint=self.last_checkpoint, run_dir=self.run_dir, world_size=dist_info.world_size,
            )  # fmt: skip
            stopped.signum = self.guard.signum if self.guard is not None else None
            if self.main:
                log.warning(stopped.message)
            raise stopped from None
        if isinstance(exc, NonFiniteLossError):
            if self.main:
                log.error("stopped: a loss is not finite (see the error message)")
        elif isinstance(exc, (OSError, DiskFullError, RuntimeError)):  # a full disk, a lost process
            failed = failure_of_environment(
                exc, self.step, self.last_checkpoint, names.command, self.run_dir, dist_info.world_size
            )
            if failed is not None:
                self.stats.log_to_file(f"stopped: {failed}")
                raise failed from exc

    def _release(self, failed: bool) -> None:
        if self._batches is not None:
            self._batches.close()
        self.tuner.restore()
        self.stats.close()
        self._folder.release(failed_before_training=self.step == 0 and failed)
        shutdown_distributed(self.dist)
