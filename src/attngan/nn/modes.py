"""Train/eval mode of modules for the length of a block (sampling, validation, metrics)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

__all__ = ["eval_mode"]


@contextlib.contextmanager
def eval_mode(*modules: nn.Module | None) -> Iterator[None]:
    """Eval mode for the block (dropout off, BatchNorm running statistics), each module's mode restored after.

    ``None`` entries are skipped. A module whose submodules are all in eval mode already is left alone
    (``train()`` walks every submodule twice per call, a millisecond for the birds generator)."""
    modes = [(m, m.training) for m in modules if m is not None and any(x.training for x in m.modules())]
    for m, _ in modes:
        m.eval()
    try:
        yield
    finally:
        for m, was_training in modes:
            m.train(was_training)
