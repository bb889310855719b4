"""AttnGAN: fine-grained text-to-image generation with attentional GANs (Xu et al., CVPR 2018).

Public API (imported lazily so that ``import attngan`` stays light)::

    from attngan import AttnGANPipeline
    pipe = AttnGANPipeline.from_pretrained("demo-out/runs/00001-shapes-attngan")
    out = pipe(["a small red circle at the top left"], seed=0)
    out.images[0][-1].save("red-circle.png")
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "TextEncoder": "attngan.nn",
    "ImageEncoder": "attngan.nn",
    "Generator": "attngan.nn",
    "Discriminator": "attngan.nn",
    "AttnGANPipeline": "attngan.pipeline",
    "AttnGANOutput": "attngan.pipeline",
    "load_original": "attngan.legacy",
    "Vocabulary": "attngan.text",
    "PRESETS": "attngan.config",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'attngan' has no attribute {name!r}")
