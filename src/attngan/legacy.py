"""Read and write the ``.pth`` files of the original AttnGAN release (taoxugit/AttnGAN).

The released files (reference/original-attngan.md section 7) are bare state dicts written by
``torch.save`` under PyTorch 0.3: ``text_encoder*.pth`` (RNN_ENCODER), ``image_encoder*.pth``
(CNN_ENCODER, Inception-v3 included), ``bird_AttnGAN2.pth`` / ``coco_AttnGAN2.pth`` (G_NET),
``bird_AttnDCGAN2.pth`` (G_DCGAN) and, from training runs, ``netD{0,1,2}.pth`` (D_NET64/128/256).

Our networks keep the original attribute names, so the parameter map is the identity. The one known
difference is ``num_batches_tracked``: BatchNorm gained that buffer in PyTorch 0.4.1, so the old files
lack it; it is filled with 0 (what PyTorch itself does for old files). Any other missing, unexpected or
mis-shaped key is an error that names the keys. Settings are inferred from keys and shapes
(:func:`infer_config`), in the manner of diffusers' ``infer_diffusers_model_type``:

================  ======================================================================
kind              inferred from
================  ======================================================================
text_encoder      ``encoder.weight`` (vocab_size, word_dim); ``rnn.weight_hh_l0`` (embed_dim / 2)
image_encoder     ``emb_cnn_code.weight`` (embed_dim); Inception-v3 keys (backbone)
generator         ``img_net1.img.0.weight`` or ``img_net.img.0.weight`` (gf_dim, dcgan);
                  ``ca_net.fc.weight`` (embed_dim, condition_dim = rows / 4);
                  ``h_net1.fc.0.weight`` (z_dim = columns - condition_dim);
                  highest ``h_net{i}`` (num_stages); ``h_net2.residual.{k}`` (res_blocks);
                  number of ``h_net1.upsample{k}`` (base_size = 4 * 2**k)
discriminator     ``COND_DNET.outlogits.0.weight`` (df_dim = columns / 8);
                  ``COND_DNET.jointConv.0.weight`` (embed_dim); ``img_code_s*`` (image_size);
                  ``UNCOND_DNET.*`` present (unconditional)
================  ======================================================================

Reproducing the original's samples exactly
-------------------------------------------
With weights loaded by :func:`load_original`, ``Generator`` computes the same function as the
original ``G_NET`` / ``G_DCGAN`` (``tests/test_legacy.py`` checks it against an independent
re-implementation of the original forward pass). To get the original's numbers:

1. **Eval mode.** ``load_original`` returns modules in ``eval()``: BatchNorm uses the running
   statistics and the text encoder's dropout is off, as in the original ``gen_example`` (section 6.1).
   (During training the original drew its sample grids with G in *train* mode: batch statistics.)
2. **Same inputs to G.** Encode the captions as the original did: sort the batch by length, longest
   first, pad with 0 to the longest caption (T = max length, not WORDS_NUM), ``mask = captions == 0``.
   Word ids must come from the same ``captions.pickle`` (``Vocabulary.from_original``).
3. **Same noise.** The original draws ``z ~ N(0, 1)`` (``noise.normal_``) and then, inside ``CA_NET``,
   ``eps ~ N(0, 1)`` of shape (B, condition_dim), *even in eval mode* (issue #29). Pass both
   explicitly: ``G(z, sentence, words, mask, ca_noise=eps)``. ``AttnGANPipeline(...,
   legacy_mask_bug=True, seed=S)`` (``attngan sample --legacy-mask-bug --seed S``) draws them in the
   original's order: per batch, z of all its captions, then their eps, from one stream seeded once with
   S on the pipeline's device. The original ran ``gen_example`` on a GPU (``torch.manual_seed`` and the
   CUDA generator), so its noise is met on a CUDA device; on a CPU it is that of the original run on a
   CPU. ``ca_mean=True`` (c = mu) is *not* what the original did.
4. **The attention-mask bug.** The original tiled the (B, T) mask with ``mask.repeat(Q, 1)`` over
   rows ordered ``b*Q + q``, so pixel q of sample b used the mask of sample ``(b*Q + q) % B``
   (section 2.6, issue #93). Pass ``legacy_mask_bug=True`` to reproduce it; it only matters when a
   batch holds captions of unequal lengths (batch 1 or equal lengths are unaffected). Its effect
   depends on the whole batch and its order, so use the original's batch: ``gen_example`` put every
   sentence of one example file into one batch in the order ``np.argsort(cap_lens)[::-1]`` (longest
   first; with the numpy of its time, which sorted up to 16 items stably, captions of equal length in
   reverse file order; larger files or today's SIMD sorts may order ties otherwise), and ``AttnGANPipeline(...,
   legacy_mask_bug=True)`` forms exactly these batches.
5. **DAMSM image encoder.** The original resized 256 -> 299 with ``nn.Upsample(mode='bilinear')``,
   which under PyTorch 0.3 meant ``align_corners=True``; ``ImageEncoder`` does exactly that (R-precision
   and the DAMSM loss depend on it). Use the released ``image_encoder*.pth``: its Inception BatchNorm
   statistics were changed by DAMSM training and differ from torchvision's ImageNet weights.
6. **Discriminators** return raw logits; the original returned ``sigmoid(logits)``.
7. **Float and 8-bit output.** The pipeline draws with an inference copy of G (folded BatchNorm, fused
   upsampling) that differs by float rounding (about 1e-6); ``fast=False`` (``attngan sample --exact``)
   runs the same operations as the original. The original made 8-bit pixels by truncation,
   ``((x + 1) * 127.5).astype(uint8)``; the package rounds unless ``viz.to_pil(x,
   original_truncation=True)`` (``attngan sample --truncate-pixels``).
7. **PNG files.** The original wrote ``((x + 1) * 127.5).astype(uint8)``: truncation, no rounding, no
   clamp.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import pickle
import re
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import (
    atomic_write_bytes,
    atomic_write_with_digest,
    check_finite_weights,
    inception_weights_state,
    load_component,
    load_state_dict_strict,
    read_component_config,
    safe_torch_load,
    save_component,
)
from .config import DiscriminatorConfig, GeneratorConfig, ImageEncoderConfig, TextEncoderConfig
from .errors import CheckpointError, UserError
from .nn import Discriminator, Generator, ImageEncoder, TextEncoder
from .nn.encoders import INCEPTION_BLOCKS
from .text import Vocabulary

__all__ = [
    "KINDS",
    "load_original",
    "infer_config",
    "export_original",
    "save_original",
    "build_module",
    "describe",
    "Converted",
    "original_to_native",
    "native_to_original",
]

logger = logging.getLogger(__name__)

# kind -> (network class, config class); the order is the order of detection.
KINDS: dict[str, tuple[type[nn.Module], type]] = {
    "text_encoder": (TextEncoder, TextEncoderConfig),
    "image_encoder": (ImageEncoder, ImageEncoderConfig),
    "generator": (Generator, GeneratorConfig),
    "discriminator": (Discriminator, DiscriminatorConfig),
}

_NBT = "num_batches_tracked"


# ------------------------------------------------------------------------------------------------
# Reading


def _read_state_dict(source: str | os.PathLike | Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], str]:
    """A plain ``{name: tensor}`` dict from a file or a mapping, with a name for messages."""
    if isinstance(source, Mapping):
        state, name = source, "the given state dict"
    else:
        path = Path(source)
        if path.is_dir():
            hint = (
                " It looks like a native attngan component; load it with attngan.checkpoint.load_component."
                if (path / "config.json").is_file()
                else ""
            )
            raise CheckpointError(f"{path} is a folder; pass the original .pth file itself.{hint}")
        state, name = safe_torch_load(path, map_location="cpu"), str(path)
    if not isinstance(state, Mapping):
        raise CheckpointError(
            f"{name} holds a {type(state).__name__}, not a state dict; the original release's .pth files "
            "are plain dicts of tensors"
        )
    # Some training scripts wrap the state dict; the original release does not.
    if set(state) == {"state_dict"} and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    bad = [
        f"{k!r} ({type(v).__name__})"
        for k, v in state.items()
        if not isinstance(k, str) or not torch.is_tensor(v)
    ]
    if bad:
        raise CheckpointError(
            f"{name} is not a plain state dict: entries that are not tensors: {bad[:5]}"
            f"{' ...' if len(bad) > 5 else ''}"
        )
    out = dict(state)
    # nn.DataParallel prefixes every key with 'module.'.
    if out and all(k.startswith("module.") for k in out):
        out = {k[len("module.") :]: v for k, v in out.items()}
    return out, name


def _indices(keys: set[str], pattern: str) -> list[int]:
    """Sorted distinct integers captured by ``pattern`` (a regex with one group) over ``keys``."""
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := rx.match(k))})


def _require(state: Mapping[str, torch.Tensor], key: str, kind: str, ndim: int) -> torch.Tensor:
    if key not in state:
        raise CheckpointError(f"this looks like a {kind} state dict but it has no {key!r}")
    t = state[key]
    if t.dim() != ndim:
        raise CheckpointError(
            f"{key!r} of this {kind} has shape {tuple(t.shape)}; expected {ndim} dimensions"
        )
    return t


def _check_contiguous(found: list[int], start: int, what: str) -> None:
    if found != list(range(start, start + len(found))):
        raise CheckpointError(f"the state dict has {what} {found}; expected consecutive numbers from {start}")


def _detect_kind(keys: set[str]) -> str | None:
    if "encoder.weight" in keys and any(k.startswith("rnn.") for k in keys):
        return "text_encoder"
    if "emb_cnn_code.weight" in keys or "emb_features.weight" in keys:
        return "image_encoder"
    if "ca_net.fc.weight" in keys or any(k.startswith("h_net1.") for k in keys):
        return "generator"
    if any(k.startswith(("COND_DNET.", "img_code_s16.")) for k in keys):
        return "discriminator"
    return None


def _infer_text_encoder(state: Mapping[str, torch.Tensor]) -> TextEncoderConfig:
    emb = _require(state, "encoder.weight", "text encoder", 2)  # (vocab, word_dim)
    w_hh = _require(state, "rnn.weight_hh_l0", "text encoder", 2)  # (4H, H) for an LSTM
    hidden = w_hh.size(1)
    if w_hh.size(0) != 4 * hidden:
        gate = "a GRU" if w_hh.size(0) == 3 * hidden else "an unknown RNN"
        raise CheckpointError(
            f"rnn.weight_hh_l0 has shape {tuple(w_hh.shape)}: {gate} text encoder; only the bi-LSTM "
            "(RNN_TYPE 'LSTM', the original default) is supported"
        )
    if "rnn.weight_hh_l0_reverse" not in state:
        raise CheckpointError(
            "the text encoder has no rnn.*_reverse weights; only the bidirectional LSTM is supported"
        )
    return TextEncoderConfig(vocab_size=emb.size(0), word_dim=emb.size(1), embed_dim=2 * hidden)


def _infer_image_encoder(state: Mapping[str, torch.Tensor]) -> ImageEncoderConfig:
    code = _require(state, "emb_cnn_code.weight", "image encoder", 2)  # (D, 2048)
    if any(k.startswith("small.") for k in state):
        raise CheckpointError(
            "this image encoder has the native 'small' backbone, which the original code does not have; "
            "load it with attngan.checkpoint.load_component from its model folder"
        )
    if code.size(1) != 2048:
        raise CheckpointError(
            f"emb_cnn_code.weight has shape {tuple(code.shape)}; the original Inception-v3 image encoder has "
            "2048 input features"
        )
    return ImageEncoderConfig(embed_dim=code.size(0), backbone="inception")


def _infer_generator(state: Mapping[str, torch.Tensor]) -> GeneratorConfig:
    keys = set(state)
    fc = _require(state, "ca_net.fc.weight", "generator", 2)  # (4c, D)
    if fc.size(0) % 4:
        raise CheckpointError(f"ca_net.fc.weight has {fc.size(0)} rows; expected 4 * condition_dim")
    condition_dim, embed_dim = fc.size(0) // 4, fc.size(1)
    h1 = _require(state, "h_net1.fc.0.weight", "generator", 2)  # (gf * 2**k * 32, c + z)
    z_dim = h1.size(1) - condition_dim
    if z_dim < 1:
        raise CheckpointError(
            f"h_net1.fc.0.weight has {h1.size(1)} columns, not more than condition_dim {condition_dim}"
        )
    dcgan = "img_net.img.0.weight" in keys
    heads = _indices(keys, r"img_net(\d+)\.")
    if dcgan and heads:
        raise CheckpointError(
            f"the generator has both img_net (AttnDCGAN) and img_net{heads} (AttnGAN) heads"
        )
    head_key = "img_net.img.0.weight" if dcgan else "img_net1.img.0.weight"
    gf_dim = _require(state, head_key, "generator", 4).size(1)  # (3, gf, 3, 3)
    stages = _indices(keys, r"h_net(\d+)\.")
    _check_contiguous(stages, 1, "generator stages h_net")
    num_stages = len(stages)
    if not dcgan:
        _check_contiguous(heads, 1, "image heads img_net")
    ups = _indices(keys, r"h_net1\.upsample(\d+)\.")
    _check_contiguous(ups, 1, "first-stage up-blocks h_net1.upsample")
    if not ups:
        raise CheckpointError("the generator has no h_net1.upsample* blocks")
    res_blocks = len(_indices(keys, r"h_net2\.residual\.(\d+)\.")) if num_stages > 1 else 0
    try:
        return GeneratorConfig(
            gf_dim=gf_dim,
            z_dim=z_dim,
            condition_dim=condition_dim,
            embed_dim=embed_dim,
            num_stages=num_stages,
            res_blocks=res_blocks,
            base_size=4 * 2 ** len(ups),
            dcgan=dcgan,
        )
    except ValueError as exc:
        raise CheckpointError(f"the generator's keys give an impossible configuration: {exc}") from exc


def _infer_discriminator(state: Mapping[str, torch.Tensor]) -> DiscriminatorConfig:
    keys = set(state)
    out = _require(state, "COND_DNET.outlogits.0.weight", "discriminator", 4)  # (1, 8 df, 4, 4)
    if out.size(1) % 8:
        raise CheckpointError(
            f"COND_DNET.outlogits.0.weight has {out.size(1)} input channels; expected 8 * df_dim"
        )
    df_dim = out.size(1) // 8
    joint = _require(state, "COND_DNET.jointConv.0.weight", "discriminator", 4)  # (8 df, 8 df + D, 3, 3)
    embed_dim = joint.size(1) - 8 * df_dim
    # Stride-2 4x4 convs in img_code_s16 (4 for 64 px and more), then one down-block per img_code_s{32,64,..}.
    num_down = sum(1 for k in keys if re.fullmatch(r"img_code_s16\.\d+\.weight", k) and state[k].dim() == 4)
    extra = len([k for k in keys if re.fullmatch(r"img_code_s\d+\.0\.weight", k)]) - 1
    if num_down < 1:
        raise CheckpointError("the discriminator has no img_code_s16 convolutions")
    return DiscriminatorConfig(
        df_dim=df_dim,
        embed_dim=embed_dim,
        image_size=4 * 2 ** (num_down + extra),
        unconditional=any(k.startswith("UNCOND_DNET.") for k in keys),
    )


_INFER = {
    "text_encoder": _infer_text_encoder,
    "image_encoder": _infer_image_encoder,
    "generator": _infer_generator,
    "discriminator": _infer_discriminator,
}


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def infer_config(state_dict: Mapping[str, torch.Tensor], kind: str | None = None) -> tuple[str, Any]:
    """``(kind, config)`` of an original-layout state dict, from its keys and tensor shapes.

    ``kind`` (one of :data:`KINDS`) may be given to check the detection. A ``module.`` prefix
    (DataParallel) is ignored.
    """
    state, _ = _read_state_dict(state_dict)
    keys = set(state)
    detected = _detect_kind(keys)
    if detected is None:
        sample = sorted(keys)[:6]
        raise CheckpointError(
            f"unknown state dict layout ({len(keys)} keys, e.g. {sample}); expected an original AttnGAN "
            "text encoder (encoder.weight, rnn.*), image encoder (Mixed_*, emb_cnn_code.*), generator "
            "(ca_net.*, h_net1.*, img_net*) or discriminator (img_code_s16.*, COND_DNET.*)"
        )
    if kind is not None:
        if kind not in KINDS:
            raise CheckpointError(f"unknown kind {kind!r}; use one of {list(KINDS)}")
        if kind != detected:
            raise CheckpointError(
                f"the state dict is {_article(detected)} {detected}, not {_article(kind)} {kind} "
                f"(keys such as {sorted(keys)[:3]}); check which file goes to which option"
            )
    return detected, _INFER[detected](state)


# ------------------------------------------------------------------------------------------------
# Building and loading


def build_module(kind: str, config: Any, backbone_weights: Any = None) -> nn.Module:
    """A freshly initialised network of ``kind`` (what :func:`load_original` loads into)."""
    cls, _ = KINDS[kind]
    if kind == "image_encoder":
        if backbone_weights is not None and not isinstance(backbone_weights, dict):
            backbone_weights = inception_weights_state(backbone_weights)  # errors that say what to do
        return cls(config, backbone_weights=backbone_weights)
    return cls(config)


def _build_empty(kind: str, config: Any) -> nn.Module:
    """The network with uninitialised CPU storage: skips the (slow) orthogonal init of big layers.

    Every entry is then overwritten by the strict load, which the caller guarantees.
    """
    cls, _ = KINDS[kind]
    with torch.device("meta"):
        module = cls(config)
    module = module.to_empty(device="cpu")
    persistent = set(module.state_dict())
    transient = [n for n, _ in module.named_buffers() if n not in persistent]
    if transient:  # not filled by load_state_dict: would stay uninitialised
        raise RuntimeError(f"{cls.__name__} has non-persistent buffers {transient}; cannot build it empty")
    return module


def _fill_num_batches_tracked(module: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Add the BatchNorm counters the pre-0.4.1 files lack (as 0, like PyTorch does); return their names."""
    filled = []
    for name, mod in module.named_modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.track_running_stats:
            prefix = f"{name}." if name else ""
            key = prefix + _NBT
            if key not in state and prefix + "running_mean" in state:
                state[key] = torch.tensor(0, dtype=torch.long)
                filled.append(key)
    return filled


def load_original(
    path_or_state_dict: str | os.PathLike | Mapping[str, torch.Tensor],
    *,
    kind: str | None = None,
    backbone_weights: Any = None,
) -> nn.Module:
    """Load a network of the original release (a ``.pth`` path or its state dict), in eval mode.

    Args:
        path_or_state_dict: an original ``.pth`` file (legacy or zip serialisation, read with
            ``weights_only=True``) or the state dict itself; a ``module.`` prefix is stripped.
        kind: ``"text_encoder" | "image_encoder" | "generator" | "discriminator"`` to insist on one;
            None detects it from the keys.
        backbone_weights: image encoder only, and only for files holding just ``emb_features`` /
            ``emb_cnn_code`` without the Inception backbone: ``"imagenet"``, a path or a state dict
            (see ``ImageEncoder``). The released ``image_encoder*.pth`` contain the backbone.
    Returns:
        A ``TextEncoder``, ``ImageEncoder``, ``Generator`` or ``Discriminator`` with ``.config`` set.
    Raises:
        CheckpointError: unreadable or unsafe file, unknown layout, or keys/shapes that do not fit
            the inferred configuration (the message lists them).
    """
    state, name = _read_state_dict(path_or_state_dict)
    try:
        kind, config = infer_config(state, kind=kind)
    except CheckpointError as exc:
        raise CheckpointError(f"{name}: {exc}") from exc
    check_finite_weights(state, kind.replace("_", " "), name)
    if kind == "image_encoder" and not any(k.split(".")[0] in INCEPTION_BLOCKS for k in state):
        if backbone_weights is None:
            raise CheckpointError(
                f"{name} holds only the image encoder's embedding layers, without the Inception-v3 backbone; "
                "pass backbone_weights='imagenet' (or an Inception-v3 weights file)"
            )
        try:
            module = build_module(kind, config, backbone_weights=backbone_weights)
        except (OSError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(
                f"backbone_weights could not be used for the Inception-v3 backbone: {exc}"
            ) from exc
        backbone = {k: v for k, v in module.state_dict().items() if k.split(".")[0] in INCEPTION_BLOCKS}
        state = {**backbone, **state}
    else:
        if backbone_weights is not None:
            logger.warning("%s contains its own backbone weights; backbone_weights is ignored", name)
        module = _build_empty(kind, config)
    filled = _fill_num_batches_tracked(module, state)
    try:
        load_state_dict_strict(module, state, name)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc} [settings inferred from the shapes: {describe(kind, config)}]") from exc
    logger.info(
        "loaded %s as %s %s (%d tensors, %d num_batches_tracked filled)",
        name,
        kind,
        config,
        len(state) - len(filled),
        len(filled),
    )
    return module.eval()


# ------------------------------------------------------------------------------------------------
# Writing


def _kind_of(module: nn.Module) -> str:
    for kind, (cls, _) in KINDS.items():
        if isinstance(module, cls):
            return kind
    raise CheckpointError(
        f"{type(module).__name__} has no original layout; expected one of {[c.__name__ for c, _ in KINDS.values()]}"
    )


def export_original(module: nn.Module) -> OrderedDict[str, torch.Tensor]:
    """The module's state dict in the original layout: same keys minus ``num_batches_tracked``, CPU copies."""
    kind = _kind_of(module)
    if kind == "image_encoder" and module.config.backbone != "inception":
        raise CheckpointError(
            f"an image encoder with the {module.config.backbone!r} backbone has no original layout; "
            "the original code only has the Inception-v3 encoder"
        )
    items = [(k, v) for k, v in module.state_dict().items() if not k.endswith("." + _NBT)]
    if kind == "generator":
        items.sort(key=lambda kv: _generator_rank(kv[0]))  # stable: keeps the order inside each block
    return OrderedDict((k, v.detach().to("cpu", copy=True).contiguous()) for k, v in items)


def _generator_rank(key: str) -> int:
    """Position of a key's block in G_NET's attribute order: ca_net, h_net1, img_net1, h_net2, img_net2, ..."""
    m = re.match(r"(h_net|img_net)(\d*)\.", key)
    if m is None:
        return 0
    if not m.group(2):  # the AttnDCGAN's single img_net comes last
        return 1 << 30
    return 2 * int(m.group(2)) - (m.group(1) == "h_net")


def save_original(module: nn.Module, path: str | os.PathLike) -> Path:
    """Write :func:`export_original` atomically as a plain dict in torch's legacy (non-zip) format, with
    its SHA-256 in ``<path>.sha256`` (the format has no room for a checksum; loading checks it).

    The legacy format is what the original release used; every PyTorch version reads it.
    """
    state = export_original(module)
    buf = io.BytesIO()
    torch.save(state, buf, _use_new_zipfile_serialization=False)
    return atomic_write_with_digest(path, buf.getvalue())


def describe(kind: str, config: Any) -> str:
    """One line naming the kind and its settings, e.g. ``generator: gf_dim=32 z_dim=100 ...``."""
    if kind == "vocabulary":
        return f"vocabulary: {config} words"
    fields = " ".join(f"{k}={v}" for k, v in dataclasses.asdict(config).items())
    return f"{kind}: {fields}"


# ------------------------------------------------------------------------------------------------
# Whole model folders (behind ``attngan convert``)


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
        done.append(Converted(name, _kind_of(module), module.config, src, str(out / name)))
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
