"""How a training call ends: its result, and the errors that stop it, each saying where and how to go on."""

from __future__ import annotations

import errno
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import DiskFullError, UserError
from .state import latest_checkpoint, resume_command

__all__ = [
    "TrainResult",
    "NonFiniteLossError",
    "TrainingInterrupted",
    "StopAgreed",
    "PeerProcessError",
    "interruption",
    "peer_failure",
    "disk_full",
    "failure_of_environment",
    "check_finite",
    "resume_hint",
]


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    epoch: int
    stopped_by: str  # "max_steps" | "epochs" | "time"
    checkpoint: Path | None  # the last state file written (None on processes other than rank 0)
    model_dir: Path | None  # the exported model folder
    stats: dict[str, Any] = field(default_factory=dict)  # the last logged scalars (and validation)
    total_steps: int | None = None  # the step the run was set to end at (max_steps, or epochs x steps per epoch)

    def stopped_early(self, command: str) -> str | None:
        """A warning when the time limit ended the run before its last step (None otherwise): what was trained
        may not have learned yet, and ``attngan <command> --resume`` goes on."""
        if self.stopped_by != "time" or self.total_steps is None or self.step >= self.total_steps:
            return None
        return (
            f"the time limit stopped training at step {self.step} of {self.total_steps}: the model may not have "
            f"learned yet; go on with `attngan {command} --resume {self.run_dir}` (--max-minutes for more time)"
        )


class NonFiniteLossError(UserError):
    """A loss became NaN or infinite; training stopped and the last verified checkpoint was kept."""

    def __init__(self, message: str, step: int, name: str, value: float, checkpoint: Path | None) -> None:
        super().__init__(message)
        self.step, self.name, self.value, self.checkpoint = step, name, value, checkpoint


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped training; ``checkpoint`` is where it can continue from (``str(exc)`` says how)."""

    def __init__(
        self, message: str, checkpoint: Path | None, run_dir: Path | None, step: int, signum: int | None = None
    ) -> None:
        super().__init__(message)
        self.message, self.checkpoint, self.run_dir, self.step = message, checkpoint, run_dir, step
        self.signum = signum  # the signal that stopped training (SIGINT, SIGTERM), where known

    def __str__(self) -> str:
        return self.message


class StopAgreed(KeyboardInterrupt):
    """Every process of the run saw the stop request (the all-reduced flags), so they can save together."""


class PeerProcessError(UserError):
    """Another process of a distributed run ended (killed, out of memory, its own error)."""


def _checkpoint_text(checkpoint: Path | None) -> str:
    return str(checkpoint) if checkpoint is not None else "none (no checkpoint was written yet)"


def interruption(
    exc: KeyboardInterrupt,
    what_run: str,  # "AttnGAN training", "DAMSM pre-training"
    command: str,  # the CLI command that continues it
    *,
    in_step: bool,
    saving: bool = False,  # interrupted while writing a snapshot (a second signal): keep the last complete one
    step: int,  # completed steps
    saved_step: int,  # the step of the last checkpoint (-1: none)
    distributed: bool,
    snapshot: Callable[[], Path | None],  # saves the state (a collective when distributed)
    last_checkpoint: Path | None,
    run_dir: Path | None,
    world_size: int = 1,
) -> TrainingInterrupted:
    """What Ctrl-C (or SIGTERM) leaves: the state saved between steps, or the unfinished step dropped.

    A distributed run saves only when every process agreed to stop (:class:`StopAgreed`): a second signal
    reaching one process between steps while the others are inside the next one must not start the
    collective of a snapshot that they never join.
    """
    together = not distributed or isinstance(exc, StopAgreed)
    if saving:
        last_checkpoint = (latest_checkpoint(run_dir) if run_dir is not None else None) or last_checkpoint
        what = f"stopped while saving step {step}; the last complete checkpoint is {_checkpoint_text(last_checkpoint)}"
    elif not in_step and saved_step != step and together:
        last_checkpoint = snapshot() or last_checkpoint
        what = f"saved the state of step {step} to {last_checkpoint}"
    elif not in_step and saved_step == step:
        what = f"the state of step {step} is in {last_checkpoint}"
    elif in_step:
        what = f"the unfinished step {step + 1} was dropped; the last checkpoint is {_checkpoint_text(last_checkpoint)}"
    else:
        what = (
            f"step {step} was not saved (the processes did not stop together); the last checkpoint is "
            f"{_checkpoint_text(last_checkpoint)}"
        )
    message = f"{what_run} interrupted: {what}; {resume_hint(command, run_dir, world_size)}"
    return TrainingInterrupted(message, last_checkpoint, run_dir, step)


def peer_failure(
    exc: RuntimeError,
    step: int,
    checkpoint: Path | None,
    command: str,
    run_dir: Path | None,
    world_size: int,
) -> PeerProcessError | None:
    """A PeerProcessError for a collective that failed because another process ended (else None)."""
    dist_error = getattr(torch.distributed, "DistError", ())
    text = str(exc)
    markers = ("gloo", "NCCL", "Connection reset", "Connection closed", "Broken pipe", "collective")
    if world_size <= 1 or not (isinstance(exc, dist_error) or any(m in text for m in markers)):
        return None
    checkpoint = (latest_checkpoint(run_dir) if run_dir is not None else None) or checkpoint
    first_line = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    first_line = re.sub(r"^\[[^\]]*\]\s*", "", first_line)  # gloo's "[.../pair.cc:561] " source position
    if len(first_line) > 120:
        first_line = first_line[:120].rsplit(" ", 1)[0] + " ..."
    kept = f"the last checkpoint {checkpoint} is intact; " if checkpoint else "no checkpoint was written yet; "
    return PeerProcessError(
        f"another process of this run ended during step {step + 1} (this one saw: {first_line}); {kept}"
        "look for its own error above, then "
        + (resume_hint(command, run_dir, world_size) if checkpoint else "start again")
    )


def failure_of_environment(
    exc: BaseException,
    step: int,
    checkpoint: Path | None,
    command: str,
    run_dir: Path | None,
    world_size: int,
) -> UserError | None:
    """A full disk or a lost process of the run, as an error saying where training stopped and how to go on;
    None for anything else."""
    if isinstance(exc, (OSError, DiskFullError)):
        return disk_full(exc, step, checkpoint, command, run_dir, world_size)
    if isinstance(exc, RuntimeError):
        return peer_failure(exc, step, checkpoint, command, run_dir, world_size)
    return None


def disk_full(
    exc: OSError | DiskFullError,
    step: int,
    checkpoint: Path | None,
    command: str,
    run_dir: Path | None,
    world_size: int = 1,
) -> DiskFullError | None:
    """A DiskFullError saying where training stopped and how to go on, for a full disk (else None)."""
    if isinstance(exc, OSError) and exc.errno not in (errno.ENOSPC, errno.EDQUOT):
        return None
    checkpoint = (latest_checkpoint(run_dir) if run_dir is not None else None) or checkpoint  # the newest on disk
    path = exc.path if isinstance(exc, DiskFullError) else exc.filename
    where = f" while writing {path}" if path else ""
    kept = f"the last checkpoint {checkpoint} is intact" if checkpoint else "no checkpoint was written yet"
    return DiskFullError(
        f"no space left on the device at step {step}{where}; {kept}. Free some disk space, then "
        + (resume_hint(command, run_dir, world_size) if checkpoint else "start again"),
        path,
    )


def check_finite(values: dict[str, float], step: int, last_checkpoint: Path | None, hint: str) -> None:
    """Raise NonFiniteLossError naming the step and the loss if any value is NaN or infinite."""
    for name, value in values.items():
        if not math.isfinite(value):
            where = (
                f"the last checkpoint {last_checkpoint}, verified when it was written or read, is kept"
                if last_checkpoint is not None
                else "no checkpoint had been written yet"
            )
            raise NonFiniteLossError(
                f"loss {name} became {value} at step {step}; training stopped and {where}. {hint}",
                step,
                name,
                value,
                last_checkpoint,
            )


def resume_hint(command: str, run_dir: Path | None, world_size: int = 1) -> str:
    return f"continue with: {resume_command(command, run_dir, world_size)}" if run_dir else ""
