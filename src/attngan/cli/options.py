"""Option types and the options shared by the commands (each defined once; a command gives its own help)."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

__all__ = [
    "CHECKPOINT_HELP",
    "DEVICE",
    "PathType",
    "UserFailure",
    "option_group",
    "checkpoint_option",
    "file_option",
    "seed_option",
    "device_option",
    "batch_size_option",
    "overwrite_option",
    "progress_option",
    "ca_mean_option",
]

CHECKPOINT_HELP = (
    "Trained model: a demo's --out folder or a runs/ folder (its newest AttnGAN run), a run folder "
    "(runs/00001-shapes-attngan; its model/ is used), a model folder (generator/, text_encoder/, vocab.json; "
    "e.g. written by `attngan convert`) or a training checkpoint (RUN/checkpoints/state-*.pt)."
)


class DeviceType(click.ParamType):
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``."""

    name = "auto|cpu|cuda[:N]|mps"
    _pattern = re.compile(r"auto|cpu|mps|cuda(:\d+)?")

    def convert(self, value, param, ctx):  # noqa: ANN001 - click's signature
        text = str(value).strip().lower()
        if not self._pattern.fullmatch(text):
            self.fail(f"{value!r} is not a device; use auto, cpu, cuda, cuda:N or mps", param, ctx)
        return text


DEVICE = DeviceType()


class PathType(click.Path):
    """``click.Path`` that refuses an empty name (which would otherwise mean the current folder)."""

    def convert(self, value, param, ctx):  # noqa: ANN001 - click's signature
        if isinstance(value, str) and not value.strip():
            self.fail("is empty; give a file or folder name", param, ctx)
        return super().convert(value, param, ctx)


FILE = PathType(dir_okay=False, path_type=Path)  # a file name (whether it exists is checked where it is used)
Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def option_group(*decorators: Decorator) -> Decorator:
    """The click options ``decorators`` as one decorator, in the order given (as they appear in --help)."""

    def apply(func: Callable[..., Any]) -> Callable[..., Any]:
        for decorator in reversed(decorators):
            func = decorator(func)
        return func

    return apply


def checkpoint_option(help: str = CHECKPOINT_HELP) -> Decorator:
    """``--checkpoint``: a trained model, run or model folder, or training checkpoint."""
    return click.option("--checkpoint", type=PathType(path_type=Path), default=None, help=help)


def file_option(name: str, help: str) -> Decorator:
    """An optional file, e.g. ``--original-generator`` or ``--captions-pickle``."""
    return click.option(name, type=FILE, default=None, help=help)


def seed_option(help: str) -> Decorator:
    """``--seed``: 0 .. 2**62, default 0."""
    return click.option("--seed", type=click.IntRange(0, 2**62), default=0, help=help)


def device_option(help: str) -> Decorator:
    """``--device``: auto, cpu, cuda, cuda:N or mps; default auto."""
    return click.option("--device", type=DEVICE, default="auto", help=help)


def batch_size_option(largest: int, default: int, help: str) -> Decorator:
    """``--batch-size``: images per forward pass, 1 .. ``largest``."""
    return click.option("--batch-size", type=click.IntRange(1, largest), default=default, help=help)


def overwrite_option(help: str) -> Decorator:
    """``--overwrite``: a flag to replace what an earlier run wrote."""
    return click.option("--overwrite", is_flag=True, help=help)


def progress_option(help: str) -> Decorator:
    """``--progress/--no-progress``, on by default."""
    return click.option("--progress/--no-progress", default=True, help=help)


def ca_mean_option(help: str) -> Decorator:
    """``--ca-mean``: condition on the mean of the conditioning augmentation (no CA noise)."""
    return click.option("--ca-mean", is_flag=True, help=help)


class UserFailure(click.ClickException):
    """A user mistake found by a command: one 'Error:' line, exit status 2 (as the errors of every command)."""

    exit_code = 2


def torchrun_world() -> tuple[int, int]:
    """(rank, world size) that torchrun put in the environment; (0, 1) outside torchrun."""
    try:
        return int(os.environ.get("RANK", "0") or 0), int(os.environ.get("WORLD_SIZE", "1") or 1)
    except ValueError:
        return 0, 1


def is_main_process() -> bool:
    """Rank 0 of a torchrun job, or the only process."""
    return torchrun_world()[0] == 0


def setup_logging() -> None:
    """INFO lines with the time for the package; torch's own INFO output (e.g. the FakeTensor cache
    statistics printed at exit after an interrupted import) stays off; under torchrun, the processes other
    than rank 0 log errors only (they run the same checks, rank 0 reports them)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch_logger = logging.getLogger("torch")
    if torch_logger.level == logging.NOTSET:
        torch_logger.setLevel(logging.WARNING)
    if not is_main_process():
        logging.getLogger("attngan").setLevel(logging.ERROR)
