"""Option types shared by the commands."""

from __future__ import annotations

import logging
import os
import re

import click

__all__ = ["CHECKPOINT_HELP", "DEVICE", "PathType", "UserFailure"]

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
