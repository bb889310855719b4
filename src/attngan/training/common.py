"""Pieces shared by the DAMSM and GAN loops: results, errors, checks, model-folder export."""

from __future__ import annotations

import errno
import hashlib
import logging
import math
import re
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..atomic import FolderLock
from ..checkpoint import save_component
from ..config import Preset
from ..errors import DiskFullError, UserError
from ..text import Vocabulary
from .state import (
    copy_tree_atomic,
    latest_checkpoint,
    remove_stale_temporaries,
    replace_section,
    resume_command,
)

__all__ = [
    "StepInfo",
    "TrainResult",
    "NonFiniteLossError",
    "TrainingInterrupted",
    "StopAgreed",
    "PeerProcessError",
    "interruption",
    "peer_failure",
    "failure_of_environment",
    "check_finite",
    "resolve_vocab_size",
    "export_model",
    "resume_hint",
    "RunFolder",
    "unwrap",
]

log = logging.getLogger(__name__)


@dataclass
class StepInfo:
    """What a ``callback`` sees after every completed step (for tests, custom logging, fault injection)."""

    step: int  # completed steps
    epoch: int
    losses: dict[str, float]  # this step's scalars, averaged over processes
    modules: dict[str, nn.Module]  # the networks being trained (unwrapped), by name
    run_dir: Path
    rank: int


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


def resolve_vocab_size(preset: Preset, vocab: Vocabulary) -> Preset:
    """Fill ``text_encoder.vocab_size`` from the vocabulary (presets for built data leave it 0)."""
    size = preset.text_encoder.vocab_size
    if size == 0:
        return replace_section(preset, "text_encoder", vocab_size=len(vocab))
    if size != len(vocab):
        raise UserError(
            f"text_encoder.vocab_size is {size} but the dataset's vocabulary has {len(vocab)} words; "
            f"use --set text_encoder.vocab_size={len(vocab)} (or 0 to take it from the data)"
        )
    return preset


def check_caption_vocabulary(dataset: Any, source: str) -> None:
    """Refuse training data whose captions are mostly unknown to the DAMSM encoders' vocabulary (a DAMSM
    pre-trained on another dataset); warn when a notable share of their words is dropped."""
    share = float(getattr(dataset, "unknown_word_share", 0.0))
    examples = ", ".join(getattr(dataset, "unknown_word_examples", [])[:8])
    if share > 0.5:
        raise UserError(
            f"{share:.0%} of the words of the training captions are not in the vocabulary of the DAMSM encoders "
            f"({source}; e.g. {examples}): they were pre-trained on other data. Pass the dataset they were "
            "trained on (--dataset/--data-dir), or pre-train a DAMSM on this one (attngan pretrain-damsm)"
        )
    if share > 0.05:
        log.warning(
            "%.0f%% of the words of the training captions are not in the vocabulary of the DAMSM encoders (%s) "
            "and are dropped, e.g. %s", 100 * share, source, examples,
        )  # fmt: skip


def encoder_fingerprint(*modules: nn.Module) -> str:
    """SHA-256 of the modules' state dicts (names and bytes, any memory layout): which encoders a run used."""
    h = hashlib.sha256()
    for module in modules:
        for name, t in sorted(unwrap(module).state_dict().items()):
            h.update(name.encode())
            h.update(str(t.dtype).encode())
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel and/or torch.compile wrappers."""
    while True:
        if hasattr(module, "_orig_mod"):
            module = module._orig_mod
        elif isinstance(module, nn.parallel.DistributedDataParallel):
            module = module.module
        else:
            return module


def export_model(
    model_dir: Path,
    vocab: Vocabulary,
    components: Iterable[tuple[str, nn.Module, Any]],  # (folder name, module, its config)
    **extra: Any,  # written into every component's config.json (e.g. step)
) -> Path:
    """Write a model folder (components + ``vocab.json``), replacing ``model_dir`` as a whole."""
    components = list(components)

    def build(tmp: Path) -> None:
        for name, module, config in components:
            save_component(tmp / name, module, config, **extra)
        vocab.save(tmp / "vocab.json")

    copy_tree_atomic(build, model_dir)
    return model_dir


class RunFolder:
    """The run folder of one training call: written by one process (a :class:`FolderLock` from the moment
    it is known), cleaned on resume of what a killed process left (:func:`remove_stale_temporaries`), and
    removed again when the call that created it fails before its first step."""

    def __init__(self, created: bool) -> None:
        self.created = created  # this call makes the folder (not a resume, not a given run_dir)
        self.path: Path | None = None
        self._lock: FolderLock | None = None

    def take(self, path: Path, resumed: bool) -> Path:
        self.path = Path(path)
        self._lock = FolderLock(self.path, "run folder").__enter__()
        if resumed:
            remove_stale_temporaries(self.path)
        return self.path

    def release(self, failed_before_training: bool) -> None:
        if failed_before_training and self.created:
            discard_empty_run(self.path)
        if self._lock is not None:
            self._lock.__exit__(None, None, None)
            self._lock = None


def resume_hint(command: str, run_dir: Path | None, world_size: int = 1) -> str:
    return f"continue with: {resume_command(command, run_dir, world_size)}" if run_dir else ""


def discard_empty_run(run_dir: Path | None) -> None:
    """Remove a run folder that a failed start left without any training (no checkpoint, no step): retries
    would otherwise leave one such folder each. Called only for folders this call created."""
    if run_dir is None or not Path(run_dir).is_dir() or any((Path(run_dir) / "checkpoints").glob("state-*.pt")):
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    log.info("removed %s: the run stopped before its first step", run_dir)


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


def params_finite(modules: Iterable[nn.Module]) -> bool:
    return all(bool(torch.isfinite(p).all()) for m in modules for p in m.parameters())


def call_hook(callback: Callable[[StepInfo], None] | None, info: StepInfo) -> None:
    if callback is not None:
        callback(info)
