"""The model folder a training run exports: its components and ``vocab.json``, replaced as a whole."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from torch import nn

from ..checkpoint import save_component
from ..text import Vocabulary
from .state import copy_tree_atomic

__all__ = ["export_model"]


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
