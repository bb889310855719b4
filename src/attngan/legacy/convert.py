"""Whole model folders: original ``.pth`` files -> a native model folder and back (``attngan convert``)."""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
from pathlib import Path
from typing import Any

from torch import nn

from ..checkpoint import atomic_write_bytes, load_component, read_component_config, save_component
from ..errors import CheckpointError, UserError
from ..text import Vocabulary
from .keys import KINDS
from .networks import kind_of, load_original, save_original

__all__ = ["Converted", "original_to_native", "native_to_original"]


@dataclasses.dataclass(frozen=True)
class Converted:
    """One converted network: its component name, kind, settings, and where it came from and went."""

    name: str  # component folder / role, e.g. "generator", "discriminator0"
    kind: str
    config: Any
    source: str
    target: str


def _check_free(target: Path, overwrite: bool) -> None:
    if target.exists() and not overwrite:
        raise UserError(
            f"{target} already exists; choose another output folder or pass overwrite (--overwrite)"
        )


def original_to_native(
    out_dir: str | os.PathLike,
    *,
    generator: str | os.PathLike | None = None,  # G_NET / G_DCGAN .pth
    text_encoder: str | os.PathLike | None = None,  # RNN_ENCODER .pth
    image_encoder: str | os.PathLike | None = None,  # CNN_ENCODER .pth (with its Inception backbone)
    discriminators: tuple[str | os.PathLike, ...] = (),  # netD{i}.pth, any order
    vocab: Vocabulary | None = None,  # from the matching captions.pickle
    overwrite: bool = False,  # replace existing components in out_dir
) -> list[Converted]:
    """Write a native model folder (``out_dir/{generator,text_encoder,image_encoder,discriminator{i}}/``
    and ``vocab.json``) from original ``.pth`` files. Everything is loaded and cross-checked before
    anything is written. Discriminators are numbered by increasing image size, as ``netD{i}``.
    """
    sources = [
        (k, p)
        for k, p in (
            ("text_encoder", text_encoder),
            ("image_encoder", image_encoder),
            ("generator", generator),
        )
        if p
    ]
    if not sources and not discriminators:
        raise UserError("nothing to convert: give at least one original .pth file")
    loaded: list[tuple[str, nn.Module, str]] = [(k, load_original(p, kind=k), str(p)) for k, p in sources]
    ds = sorted(
        ((load_original(p, kind="discriminator"), str(p)) for p in discriminators),
        key=lambda t: t[0].config.image_size,
    )
    sizes = [d.config.image_size for d, _ in ds]
    if len(set(sizes)) != len(sizes):
        raise UserError(f"two discriminators for the same image size: {sizes}; give one netD file per scale")
    loaded += [(f"discriminator{i}", d, p) for i, (d, p) in enumerate(ds)]
    # The pieces must fit together: one embedding width D, one vocabulary.
    dims = {name: m.config.embed_dim for name, m, _ in loaded}
    if len(set(dims.values())) > 1:
        raise UserError(f"the files do not belong together: their embedding widths differ {dims}")
    te = next((m for name, m, _ in loaded if name == "text_encoder"), None)
    if vocab is not None and te is not None and len(vocab) != te.config.vocab_size:
        raise UserError(
            f"the vocabulary has {len(vocab)} words but the text encoder has {te.config.vocab_size} rows; "
            "use the captions.pickle of the same dataset (birds: 5450 words, coco: 27297)"
        )
    out = Path(out_dir)
    for name, _, _ in loaded:
        _check_free(out / name, overwrite)
    if vocab is not None:
        _check_free(out / "vocab.json", overwrite)
    done = []
    for name, module, src in loaded:
        save_component(out / name, module, module.config, converted_from=src)
        done.append(Converted(name, kind_of(module), module.config, src, str(out / name)))
    if vocab is not None:
        vocab.save(out / "vocab.json")
    return done


_NATIVE_FILES = {
    "generator": "netG.pth",
    "text_encoder": "text_encoder.pth",
    "image_encoder": "image_encoder.pth",
}


def native_to_original(
    native_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    overwrite: bool = False,  # replace existing .pth files in out_dir
) -> tuple[list[Converted], list[str]]:
    """Write the components of a native model folder as original ``.pth`` files.

    ``generator/`` -> ``netG.pth``, ``text_encoder/`` -> ``text_encoder.pth``, ``image_encoder/`` ->
    ``image_encoder.pth``, ``discriminator{i}/`` -> ``netD{i}.pth``, ``vocab.json`` -> ``captions.pickle``
    (the vocabulary only, no captions). Returns what was written and the
    notes on what was skipped (an image encoder with the small backbone has no original layout).
    """
    src = Path(native_dir)
    if not src.is_dir():
        raise UserError(f"{src} is not a folder; pass a native model folder (e.g. runs/00000-x/model)")
    if (src / "model").is_dir() and not any((src / n).is_dir() for n in _NATIVE_FILES):
        src = src / "model"  # a run folder (GAN or DAMSM): its exported model, as every other command reads it
    names = [n for n in _NATIVE_FILES if (src / n).is_dir()]
    names += sorted(
        (p.name for p in src.iterdir() if p.is_dir() and re.fullmatch(r"discriminator\d+", p.name)),
        key=lambda n: int(n[len("discriminator") :]),
    )
    if not names:
        raise UserError(
            f"{src} holds no model components (generator/, text_encoder/, image_encoder/, discriminator*/); "
            "pass a model folder or a run folder whose training has exported model/"
        )
    by_class = {cls.__name__: (kind, cls, cfg) for kind, (cls, cfg) in KINDS.items()}
    plan: list[tuple[str, str, type, type, Path]] = []
    skipped: list[str] = []
    out = Path(out_dir)
    for name in names:  # check everything before writing anything
        meta = read_component_config(src / name)
        if meta.get("class") not in by_class:
            raise CheckpointError(f"{src / name} holds a {meta.get('class')!r}, which has no original layout")
        kind, cls, cfg = by_class[meta["class"]]
        backbone = (meta.get("config") or {}).get("backbone", "inception")
        if kind == "image_encoder" and backbone != "inception":
            skipped.append(f"{name}: the {backbone!r} image-encoder backbone has no original layout")
            continue
        target = out / (_NATIVE_FILES.get(name) or f"netD{name[len('discriminator') :]}.pth")
        _check_free(target, overwrite)
        plan.append((name, kind, cls, cfg, target))
    vocab_target = out / "captions.pickle"
    has_vocab = (src / "vocab.json").is_file()
    if has_vocab:
        _check_free(vocab_target, overwrite)
    done = []
    for name, kind, cls, cfg, target in plan:  # one network in memory at a time
        module = load_component(src / name, cls, cfg)
        save_original(module, target)
        done.append(Converted(name, kind, module.config, str(src / name), str(target)))
    if has_vocab:
        # The vocabulary as the original code reads it: [train_captions, test_captions, ixtoword, wordtoix]
        # (no captions: enough to encode sentences, and for `attngan convert --captions-pickle` back).
        vocab = Vocabulary.load(src / "vocab.json")
        table = [[], [], dict(enumerate(vocab.itos)), {w: i for i, w in enumerate(vocab.itos)}]
        atomic_write_bytes(vocab_target, pickle.dumps(table, protocol=2))
        done.append(Converted("vocab.json", "vocabulary", len(vocab), str(src / "vocab.json"), str(vocab_target)))
    return done, skipped
