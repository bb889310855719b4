"""The original release's state dicts: reading them, telling their kind and inferring the settings.

Settings come from keys and shapes, in the manner of diffusers' ``infer_diffusers_model_type``; the
table in :mod:`attngan.legacy` lists what each is inferred from. Our networks keep the original attribute
names, so the parameter map is the identity; the one known difference is ``num_batches_tracked``, which
BatchNorm gained in PyTorch 0.4.1 (:data:`NUM_BATCHES_TRACKED`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import safe_torch_load
from ..config import DiscriminatorConfig, GeneratorConfig, ImageEncoderConfig, TextEncoderConfig
from ..errors import CheckpointError
from ..nn import Discriminator, Generator, ImageEncoder, TextEncoder

__all__ = ["KINDS", "NUM_BATCHES_TRACKED", "infer_config", "read_state_dict"]

# kind -> (network class, config class); the order is the order of detection.
KINDS: dict[str, tuple[type[nn.Module], type]] = {
    "text_encoder": (TextEncoder, TextEncoderConfig),
    "image_encoder": (ImageEncoder, ImageEncoderConfig),
    "generator": (Generator, GeneratorConfig),
    "discriminator": (Discriminator, DiscriminatorConfig),
}

NUM_BATCHES_TRACKED = "num_batches_tracked"


# ------------------------------------------------------------------------------------------------
# Reading


def read_state_dict(source: str | os.PathLike | Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], str]:
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
    state, _ = read_state_dict(state_dict)
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
