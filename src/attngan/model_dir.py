"""The model folder behind a path a user has in hand: a model folder, a run folder, a ``runs/`` folder, a
training state file (:func:`find_model`). File names and folders only; nothing is loaded here.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from .errors import CheckpointError

__all__ = ["find_model", "resolve_model_dir"]

log = logging.getLogger(__name__)

_RUN_NAME = re.compile(r"^(\d{5})-")  # numbered run folders (runs/00001-shapes-attngan)
_SEARCH_DEPTH = 3  # folders below a given path searched for models


def _is_model_dir(d: Path) -> bool:
    return (d / "generator").is_dir()


def _gan_runs(folder: Path) -> list[Path]:
    """Numbered run folders directly in ``folder`` whose ``model/`` holds a generator, oldest first."""
    if not folder.is_dir():
        return []
    runs = [d for d in folder.iterdir() if _RUN_NAME.match(d.name) and _is_model_dir(d / "model")]
    return sorted(runs, key=lambda d: (int(_RUN_NAME.match(d.name).group(1)), d.name))


def _usable_below(folder: Path) -> list[Path]:
    """Model folders and run folders with ``model/`` found up to ``_SEARCH_DEPTH`` levels below ``folder``."""
    found: list[Path] = []
    level = [folder]
    for _ in range(_SEARCH_DEPTH):
        below = []
        for d in level:
            try:
                children = sorted(c for c in d.iterdir() if c.is_dir() and not c.name.startswith("."))
            except OSError:
                continue
            for c in children:
                if _is_model_dir(c / "model"):
                    found.append(c)
                elif _is_model_dir(c):
                    found.append(c)
                else:
                    below.append(c)
        level = below
    return found


def _training_state_model(path: Path) -> Path:
    """The model folder of the run a ``checkpoints/state-*.pt`` file belongs to."""
    run = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    if _is_model_dir(run / "model"):
        return run / "model"
    if (run / "model" / "text_encoder").is_dir():
        raise CheckpointError(
            f"{path} is a checkpoint of a DAMSM pre-training run, which has no generator: train one with "
            f"`attngan train --damsm {run}`, then pass that run"
        )
    raise CheckpointError(
        f"{path} is a training checkpoint, but its run folder {run} has no model/ with the text encoder and "
        "vocabulary it needs; pass the run folder of an `attngan train` run"
    )


def find_model(path: str | os.PathLike) -> tuple[Path, Path | None]:
    """``(model folder, training state file or None)`` for what a user has in hand.

    Accepted: a model folder (``generator/``, ``text_encoder/``, ``vocab.json``); a run folder (its
    ``model/``) or its ``checkpoints/`` folder; a ``checkpoints/state-*.pt`` file of a GAN run (its EMA
    generator, with the run's text encoder and vocabulary); a folder of numbered runs such as ``runs/`` or
    the ``--out`` folder of ``attngan demo`` (the newest GAN run in it, named in a log line). Anything else
    is a CheckpointError that lists the usable folders found under the path.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p} does not exist; pass a model folder or a run folder (runs/NNNNN-...)")
    if p.is_file():
        if p.suffix == ".pt":
            return _training_state_model(p), p
        hint = " (an original-release file: use --original-generator, or `attngan convert`)" if p.suffix == ".pth" else ""
        raise CheckpointError(f"{p} is a file, not a model folder, run folder or checkpoints/state-*.pt{hint}")
    for model in (p, p / "model", p.parent / "model" if p.name == "checkpoints" else None):
        if model is not None and _is_model_dir(model):
            return model, None
    for runs in (p, p / "runs"):
        found = _gan_runs(runs)
        if found:
            log.info("using %s, the newest AttnGAN run in %s", found[-1], p)
            return found[-1] / "model", None
    if (p / "text_encoder").is_dir() or (p / "model" / "text_encoder").is_dir():
        raise CheckpointError(
            f"{p} holds DAMSM encoders only (an `attngan pretrain-damsm` run), no generator: train one with "
            f"`attngan train --damsm {p}`, then pass that run"
        )
    usable = _usable_below(p)
    if usable:
        shown = ", ".join(str(d) for d in usable[:5]) + (f" and {len(usable) - 5} more" if len(usable) > 5 else "")
        raise CheckpointError(f"{p} is not a model or run folder; usable folders under it: {shown}")
    raise CheckpointError(
        f"{p} is neither a model folder (generator/, text_encoder/, vocab.json) nor a run folder with model/, "
        "and holds none; train one with `attngan train` (or `attngan demo`) or convert the original release "
        "with `attngan convert`"
    )


def resolve_model_dir(path: str | os.PathLike) -> Path:
    """The model folder behind ``path`` (see :func:`find_model`; for a state file, its run's ``model/``)."""
    return find_model(path)[0]
