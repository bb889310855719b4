"""Run folders and training-state checkpoints: everything needed to continue a run exactly.

A training state file (``checkpoints/state-<step>.pt``) is a plain dict of tensors and builtin
containers, written atomically (:func:`attngan.checkpoint.atomic_torch_save`) and read with
``weights_only=True``. It holds the weights (and EMA weights), optimizer and GradScaler states, the step,
epoch and position in the epoch, the RNG states of every process (torch, CUDA, numpy, python ``random``;
numpy and python states stored as tensors and ints so that ``weights_only`` loading accepts them), the
full resolved config and the vocabulary. Nothing is derived from file names: the step lives in the file;
names only order the files (newest last).

A state file is read back after it is written (the CRC-32 of every zip record, finite weights) before
older ones are rotated away, and checked the same way when a run is resumed: a damaged or non-finite file
is an error that names the newest intact checkpoint of the run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import FolderLock, remove_temporary_files
from ..checkpoint import (
    atomic_torch_save,
    atomic_write_json,
    check_finite_weights,
    config_diff,
    safe_torch_load,
    verify_file,
)
from ..config import Preset, from_dict, to_dict
from ..errors import CheckpointError, UserError

__all__ = [
    "STATE_FORMAT",
    "make_run_dir",
    "write_run_config",
    "capture_rng_state",
    "restore_rng_state",
    "save_state",
    "load_state",
    "find_checkpoint",
    "latest_checkpoint",
    "run_dir_of",
    "preset_from_state",
    "check_resume_config",
    "RESUMABLE_CHANGES",
    "restore_position",
    "remove_stale_temporaries",
    "saved_world_size",
    "truncate_stats",
]

log = logging.getLogger(__name__)

STATE_FORMAT = "attngan-training-state"
STATE_VERSION = 1
_RUN_RE = re.compile(r"^(\d{5})-")
_STATE_GLOB = "state-*.pt"

# Settings that may change when a run is continued: how long it runs, how often it logs/saves, where the
# data lives and how it is loaded, the precision of the computation (a run may move to another machine).
# Anything else changes the maths and makes "continue" meaningless.
RESUMABLE_CHANGES = (
    "damsm_train.epochs",
    "damsm_train.max_steps",
    "damsm_train.snapshot_every",
    "damsm_train.log_every",
    "gan_train.epochs",
    "gan_train.max_steps",
    "gan_train.snapshot_every",
    "gan_train.sample_every",
    "gan_train.log_every",
    "gan_train.compile",
    "gan_train.mixed_precision",  # how the same maths is computed (the weights stay float32); its default changed
    "data.data_dir",
    "data.workers",
    "data.cache",
    "description",
)


# ------------------------------------------------------------------------------------------------
# Run folders


def make_run_dir(runs_dir: str | os.PathLike, desc: str) -> Path:
    """Create ``runs_dir/<NNNNN>-<desc>/`` with the next free number (stylegan's numbered run folders)."""
    root = Path(runs_dir)
    root.mkdir(parents=True, exist_ok=True)
    desc = re.sub(r"[^A-Za-z0-9_.-]+", "-", desc).strip("-") or "run"
    while True:
        taken = [int(m.group(1)) for p in root.iterdir() if (m := _RUN_RE.match(p.name))]
        path = root / f"{max(taken, default=-1) + 1:05d}-{desc}"
        try:
            path.mkdir()
        except FileExistsError:  # another process took the number first
            continue
        for sub in ("samples", "checkpoints"):
            (path / sub).mkdir()
        return path


def write_run_config(run_dir: Path, preset: Preset, **extra: Any) -> Path:
    """``run_dir/config.json``: the full resolved preset plus run settings (device, steps, ...)."""
    return atomic_write_json(run_dir / "config.json", {"preset": to_dict(preset), **extra})


def truncate_stats(run_dir: Path, step: int) -> None:
    """Drop ``stats.jsonl`` lines after ``step`` (they belong to steps a resumed run will redo)."""
    path = run_dir / "stats.jsonl"
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if int(json.loads(line).get("step", 0)) <= step:
                kept.append(line)
        except (ValueError, AttributeError):
            continue
    from ..checkpoint import atomic_write_text

    atomic_write_text(path, "".join(k + "\n" for k in kept))


# ------------------------------------------------------------------------------------------------
# RNG states


def capture_rng_state() -> dict[str, Any]:
    """Every global RNG of this process, as tensors/ints/floats (``weights_only``-loadable)."""
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(np_kind),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "python": {
            "version": int(py_version),
            "state": torch.tensor(list(py_state), dtype=torch.int64),
            "gauss_next": py_gauss,
        },
        "cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_position(
    state: dict[str, Any], rank: int, world_size: int, seed: int, batch_size: int
) -> tuple[int, int, int]:
    """``(step, epoch, batch_in_epoch)`` to continue a training state from, with this process's random
    streams (torch, numpy, Python) restored: the exact continuation.

    A state written by another number of processes (``reshard``) cannot be continued exactly: the data of an
    epoch is shared out differently. Training then goes on in the same epoch after as many images as the
    old processes had used (``batch_size``: the new per-process batch size), each process with fresh random
    streams seeded from ``(seed, step, rank)``.
    """
    step, epoch, batch_in_epoch = int(state["step"]), int(state["epoch"]), int(state["batch_in_epoch"])
    saved = saved_world_size(state)
    if saved == world_size and batch_size == _saved_batch_size(state, batch_size):
        restore_rng_state(state["rng"][rank])
        return step, epoch, batch_in_epoch
    mixed = int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])
    torch.manual_seed(mixed)
    np.random.seed(mixed)
    random.seed(mixed)
    used = batch_in_epoch * saved * _saved_batch_size(state, batch_size)  # images of this epoch already seen
    return step, epoch, used // (world_size * batch_size)


def _saved_batch_size(state: dict[str, Any], default: int) -> int:
    section = "gan_train" if state.get("kind") == "gan" else "damsm_train"
    try:
        return int(state["config"][section]["batch_size"])
    except (KeyError, TypeError, ValueError):
        return default


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    npst = state["numpy"]
    np.random.set_state(
        (npst["kind"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"], npst["cached_gaussian"])
    )
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss_next"]))
    if state.get("cuda") and torch.cuda.is_available():
        if len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        else:
            log.warning("the checkpoint holds CUDA RNG states of %d devices; not restored", len(state["cuda"]))


# ------------------------------------------------------------------------------------------------
# State files


def save_state(run_dir: Path, state: dict[str, Any], keep: int) -> Path:
    """Write ``run_dir/checkpoints/state-<step>.pt`` atomically, then delete all but the newest ``keep``.

    Older files are removed only after the new one is complete and verified (read back against its CRC-32s,
    its weights finite), so an interrupted or damaged write leaves the previous checkpoints untouched.
    """
    folder = run_dir / "checkpoints"
    path = folder / f"state-{int(state['step']):08d}.pt"
    check_state_weights(
        state, f"the state of step {int(state['step'])}",
        consequence=f"{path.name} is not written and the checkpoints in {folder} are kept",
    )  # fmt: skip
    atomic_torch_save({"format": STATE_FORMAT, "version": STATE_VERSION, **state}, path)
    verify_file(path)
    if keep > 0:
        for old in sorted(folder.glob(_STATE_GLOB))[:-keep]:
            if old != path:
                old.unlink(missing_ok=True)
    return path


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest state file of a run folder, or None."""
    files = sorted((Path(run_dir) / "checkpoints").glob(_STATE_GLOB))
    return files[-1] if files else None


def find_checkpoint(path: str | os.PathLike) -> Path:
    """A state file given itself, its run folder, or the run's ``checkpoints/`` folder."""
    p = Path(path)
    if p.is_file():
        return p
    if not p.exists():
        raise CheckpointError(f"{p} does not exist; pass a run folder (runs/00000-...) or a state-*.pt file")
    for folder in (p, p.parent):
        found = latest_checkpoint(folder)
        if found is not None:
            return found
    removed = _remove_unfinished_writes(p.parent if p.name == "checkpoints" else p)
    raise CheckpointError(
        f"{p} holds no training checkpoint (checkpoints/state-*.pt); nothing to resume"
        + (f" (removed the temporary files of an unfinished write: {', '.join(removed)})" if removed else "")
    )


def _remove_unfinished_writes(run_dir: Path) -> list[str]:
    """What a killed process left in a run folder without a checkpoint, removed unless another process is
    writing there (a run before its first checkpoint)."""
    if not (run_dir / "checkpoints").is_dir():
        return []
    try:
        with FolderLock(run_dir, "run folder"):
            return remove_stale_temporaries(run_dir)
    except UserError:
        return []


def run_dir_of(checkpoint: Path) -> Path:
    """The run folder a state file belongs to (``<run>/checkpoints/state-*.pt``)."""
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent


def check_state_weights(state: dict[str, Any], source: str | Path, **kwargs: Any) -> None:
    """Every weight and optimizer tensor of a training state is finite (CheckpointError naming which)."""
    for group in ("models", "optimizers"):
        for name, part in (state.get(group) or {}).items():
            tensors = dict(_tensors(part))
            check_finite_weights(tensors, name if group == "models" else f"{name} optimizer", source, **kwargs)


def _tensors(obj: Any, prefix: str = "") -> Any:
    """(dotted key, tensor) of every tensor in nested dicts and lists."""
    if torch.is_tensor(obj):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}.{i}" if prefix else str(i))


def _read_state_file(path: Path) -> Any:
    """A state file read with ``weights_only=True`` after its checksums, its weights checked finite."""
    state = safe_torch_load(path)
    if isinstance(state, dict):
        check_state_weights(state, path)
    return state


def newest_intact_checkpoint(folder: Path, before: str | None = None) -> Path | None:
    """The newest state file in ``folder`` (older than the name ``before``) that reads back intact."""
    for candidate in reversed(sorted(folder.glob(_STATE_GLOB))):
        if before is not None and candidate.name >= before:
            continue
        try:
            _read_state_file(candidate)
        except CheckpointError:
            continue
        return candidate
    return None


def load_state(path: str | os.PathLike, kind: str) -> dict[str, Any]:
    """Read a state file (``weights_only=True``, checked against its CRC-32s, finite weights) and check that
    it is a ``kind`` ("damsm"/"gan") state."""
    path = find_checkpoint(path)
    try:
        state = _read_state_file(path)
    except CheckpointError as exc:
        if path.parent.name != "checkpoints" or not any(p.name < path.name for p in path.parent.glob(_STATE_GLOB)):
            raise
        intact = newest_intact_checkpoint(path.parent, before=path.name)
        if intact is None:
            raise type(exc)(f"{exc}. No older checkpoint of this run is intact either") from exc
        raise type(exc)(
            f"{exc}. The newest intact checkpoint is {intact}: move {path.name} (and any newer state file) out of "
            f"{path.parent}, then resume the run from it (--resume {run_dir_of(path)})"
        ) from exc
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(
            f"{path} is not an attngan training checkpoint; to start from trained weights use --damsm "
            "(encoders) or the original-release options instead of --resume"
        )
    if state.get("version", 0) > STATE_VERSION:
        raise CheckpointError(f"{path} was written by a newer attngan (format {state['version']}); upgrade attngan")
    if state.get("kind") != kind:
        command = {"damsm": "attngan pretrain-damsm", "gan": "attngan train"}.get(state.get("kind"), "?")
        raise CheckpointError(f"{path} is a {state.get('kind')} checkpoint; continue it with {command} --resume")
    state["path"] = str(path)
    return state


def resume_command(command: str, run_dir: Path | str, world_size: int = 1) -> str:
    """The shell command that continues a run with ``world_size`` processes."""
    launcher = f"torchrun --nproc_per_node={world_size} -m attngan" if world_size > 1 else "attngan"
    return f"{launcher} {command} --resume {run_dir}"


def saved_world_size(state: dict[str, Any]) -> int:
    """How many processes wrote a training state (one RNG state each)."""
    return len(state.get("rng") or [None])


def check_resumable(state: dict[str, Any], world_size: int = 1, reshard: bool = False) -> None:
    """Refuse to resume from a checkpoint older than the newest of its run (the resumed run would overwrite
    the newer checkpoints and the exported model/, and mix two histories in one folder), or with another
    number of processes than wrote it (the images per step and the data order would change) unless
    ``reshard`` asks for that (see :func:`restore_position`)."""
    path = Path(state["path"])
    saved = saved_world_size(state)
    if saved != world_size and reshard:
        log.warning(
            "%s was written by %d process(es) and this run has %d: weights, optimizer states and the step count "
            "carry over; the epoch goes on after the images already used, with new random streams", path, saved, world_size,
        )  # fmt: skip
    elif saved != world_size:
        command = {"damsm": "pretrain-damsm", "gan": "train"}.get(state.get("kind"), "train")
        raise CheckpointError(
            f"{path} was written by {saved} process(es) and this run has {world_size}: the images per step "
            "(the batch size is per process) and the order of the data would change. Resume with the same "
            f"number: {resume_command(command, run_dir_of(path), saved)}; or add --reshard to go on with "
            f"{world_size} (weights, optimizer states and step count carry over; not an exact continuation)"
        )
    if path.parent.name != "checkpoints":
        return
    newer = [p for p in sorted(path.parent.glob(_STATE_GLOB)) if p.name > path.name]
    if newer:
        raise CheckpointError(
            f"{path} is not the newest checkpoint of its run ({newer[-1].name} is): resuming from it would "
            f"overwrite the newer checkpoints and the exported model/. Resume the run itself "
            f"(--resume {run_dir_of(path)}), or to go on from {path.name} move the newer state files out of "
            f"{path.parent} first"
        )


def preset_from_state(state: dict[str, Any]) -> Preset:
    try:
        return from_dict(Preset, state["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"the config stored in {state.get('path')} is not readable: {exc}") from exc


def check_resume_config(saved: Preset, given: Preset, source: str, reshard: bool = False) -> Preset:
    """The preset a resumed run continues with.

    Settings in :data:`RESUMABLE_CHANGES` may change (the given value wins), and with ``reshard`` the
    per-process batch sizes too; any other difference is a CheckpointError that lists what differs
    (:func:`attngan.checkpoint.config_diff`).
    """
    diffs = config_diff(saved, given)
    batch_sizes = ("damsm_train.batch_size", "gan_train.batch_size") if reshard else ()
    allowed = tuple(f"{k}:" for k in (*RESUMABLE_CHANGES, *batch_sizes))
    fatal = [d for d in diffs if not d.startswith(allowed)]
    if fatal:
        raise CheckpointError(
            f"{source} was trained with another configuration; it differs in: "
            + "; ".join(f"{d.split(': ', 1)[0]} (checkpoint {_values(d)})" for d in fatal)
            + ". Resume without changing these settings (drop --preset/--set/--config), or start a new run"
            + (
                "; a per-process batch size may change with --reshard (not an exact continuation)."
                if any(d.startswith(("damsm_train.batch_size:", "gan_train.batch_size:")) for d in fatal)
                else "."
            )
        )
    for d in diffs:
        log.info("resuming with a changed setting: %s (checkpoint -> now)", d)
    return given


def _values(diff: str) -> str:
    key, rest = diff.split(": ", 1)
    old, _, new = rest.partition(" != ")
    return f"{old}, now {new}"


def replace_section(preset: Preset, section: str, **changes: Any) -> Preset:
    """``dataclasses.replace`` of one section of a preset."""
    return dataclasses.replace(preset, **{section: dataclasses.replace(getattr(preset, section), **changes)})


def copy_tree_atomic(src_builder, target: Path) -> None:
    """Build a folder with ``src_builder(tmp_dir)`` next to ``target``, then swap it in place of ``target``.

    Readers never see a half-written folder: the old one is renamed away before the new one is renamed in,
    and removed last.
    """
    target = Path(target)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        src_builder(tmp)
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not target.exists():
            os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def remove_stale_temporaries(run_dir: Path) -> list[str]:
    """Remove what a killed process left in its run folder (call it with the folder locked): the temporary
    files of unfinished writes (``.*.tmp``) and folders of unfinished exports (``.model.tmp-PID``); a
    ``.model.old-PID`` is put back as ``model/`` when the kill came between the two renames of
    :func:`copy_tree_atomic`, else removed. Returns the names removed or restored."""
    run_dir = Path(run_dir)
    done = []
    for old in sorted(run_dir.glob(".*.old-*")):
        target = run_dir / old.name[1:].rsplit(".old-", 1)[0]
        if old.is_dir() and not target.exists():
            os.replace(old, target)
        else:
            shutil.rmtree(old, ignore_errors=True)
        done.append(old.name)
    for tmp in sorted(run_dir.glob(".*.tmp-*")):
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
            done.append(tmp.name)
    for sub in (".", "checkpoints", "samples"):
        done += [str(Path(sub) / name) for name in remove_temporary_files(run_dir / sub)]
    if done:
        log.info("removed what an interrupted process left in %s: %s", run_dir, ", ".join(done))
    return done


def require_empty_or_missing(path: Path, what: str) -> None:
    if path.exists() and any(path.iterdir()):
        raise UserError(f"{what} {path} is not empty; choose another folder")
