"""The DAMSM encoders' side of a run: the text encoder's vocabulary size from the data, and the frozen
encoders that GAN training conditions on, loaded, checked against the captions and fingerprinted."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import load_component
from ..config import ImageEncoderConfig, Preset, TextEncoderConfig
from ..errors import UserError
from ..nn import ImageEncoder, TextEncoder
from ..text import Vocabulary
from .state import replace_section

__all__ = [
    "resolve_vocab_size",
    "check_caption_vocabulary",
    "load_encoders",
    "encoders_record",
    "encoder_fingerprint",
    "unwrap",
]

log = logging.getLogger(__name__)


def load_encoders(
    damsm: str | Path | None = None,  # a DAMSM run folder (its model/) or a model folder
    *,
    original_text_encoder: str | Path | None = None,  # text_encoder*.pth of the original release
    original_image_encoder: str | Path | None = None,  # image_encoder*.pth of the original release
    vocab: Vocabulary | None = None,  # required with the original files (the dataset's captions.pickle)
) -> tuple[TextEncoder, ImageEncoder, Vocabulary | None]:
    """Frozen, eval-mode DAMSM encoders (and their vocabulary) for GAN training."""
    if damsm is not None and (original_text_encoder or original_image_encoder):
        raise UserError("give either --damsm or the --original-* encoder files, not both")
    if damsm is not None:
        folder = Path(damsm)
        if (folder / "model" / "text_encoder").is_dir():
            folder = folder / "model"
        if not (folder / "text_encoder").is_dir() or not (folder / "image_encoder").is_dir():
            states = sorted((Path(damsm) / "checkpoints").glob("state-*.pt"))
            if states:
                raise UserError(
                    f"{damsm} is a DAMSM run that has not exported its encoders yet (it stopped at "
                    f"{states[-1].name}); finish it with `attngan pretrain-damsm --resume {damsm}` (add "
                    "--max-steps N to end it sooner)"
                )
            raise UserError(
                f"{damsm} is not a DAMSM run or model folder (no text_encoder/ and image_encoder/ inside); "
                "pass the folder written by attngan pretrain-damsm (runs/NNNNN-.../ or its model/)"
            )
        te = load_component(folder / "text_encoder", TextEncoder, TextEncoderConfig)
        ie = load_component(folder / "image_encoder", ImageEncoder, ImageEncoderConfig)
        found = Vocabulary.load(folder / "vocab.json") if (folder / "vocab.json").is_file() else None
        if found is not None and vocab is not None and found != vocab:
            raise UserError(f"the vocabulary of {folder} differs from the one given")
        vocab = found or vocab
    elif original_text_encoder and original_image_encoder:
        from ..legacy import load_original

        te = load_original(original_text_encoder, kind="text_encoder")
        ie = load_original(original_image_encoder, kind="image_encoder")
    else:
        raise UserError(
            "GAN training needs pre-trained DAMSM encoders: --damsm RUN_OR_MODEL_DIR (from attngan pretrain-damsm), "
            "or both --original-text-encoder and --original-image-encoder (.pth files of the original release)"
        )
    if vocab is not None and len(vocab) != te.config.vocab_size:
        raise UserError(
            f"the text encoder has {te.config.vocab_size} words but the vocabulary {len(vocab)}; "
            "use the encoders and captions of the same dataset"
        )
    if te.config.embed_dim != ie.config.embed_dim:
        raise UserError(f"the text and image encoders do not belong together (D = {te.config.embed_dim} vs {ie.config.embed_dim})")
    for m in (te, ie):
        m.eval().requires_grad_(False)
    return te, ie, vocab


def encoders_record(run_dir: Path, state: dict | None, source: str) -> str:
    """Where the run's encoders came from: as recorded when it started (a resumed run reads its own model/)."""
    if state is not None:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            recorded = json.loads((run_dir / "config.json").read_text()).get("encoders")
            if recorded:
                return str(recorded)
    return source


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
