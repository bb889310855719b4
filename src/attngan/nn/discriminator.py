"""One discriminator per scale with an unconditional and a sentence-conditional logit (Eq. 4-5).

Names follow the original release (``img_code_s16``, ``img_code_s32``, ``UNCOND_DNET``, ``COND_DNET``,
``jointConv``, ``outlogits``) so its ``netD*.pth`` load by identity. The logits are returned raw: the
original applied a sigmoid and ``BCELoss``; ``losses`` uses BCE-with-logits, the same maths.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..config import DiscriminatorConfig
from .layers import (
    Conv2d,
    batch_groups,
    conv_bn_lrelu,
    down_block,
    encode_image_downsample,
    init_weights_original,
)


def _spectral_norm_instead_of_batchnorm(module: nn.Module) -> None:
    """Spectral normalisation (Miyato et al., ICLR 2018) of every conv weight; BatchNorm layers removed."""
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.BatchNorm2d):
                setattr(parent, name, nn.Identity())
            elif isinstance(child, nn.Conv2d):
                nn.utils.parametrizations.spectral_norm(child)


class LogitHead(nn.Module):
    """Original D_GET_LOGITS: [features || tiled sentence] -> conv-BN-LReLU -> 4x4 conv -> logit."""

    def __init__(self, df_dim: int, embed_dim: int, conditional: bool) -> None:
        super().__init__()
        self.conditional = conditional
        self.embed_dim = embed_dim
        if conditional:
            self.jointConv = conv_bn_lrelu(df_dim * 8 + embed_dim, df_dim * 8)
        self.outlogits = nn.Sequential(Conv2d(df_dim * 8, 1, kernel_size=4, stride=4))

    def forward(self, features: torch.Tensor, sentence: torch.Tensor | None = None) -> torch.Tensor:
        x = features
        if self.conditional:
            if sentence is None:
                raise ValueError("the conditional head needs the sentence vector")
            s = sentence.view(-1, self.embed_dim, 1, 1).expand(-1, -1, x.size(2), x.size(3))
            x = self.jointConv(torch.cat((x, s), dim=1))
        return self.outlogits(x).view(-1)  # (B,) raw logits


class Discriminator(nn.Module):
    """D_i for images of ``image_size`` (any 4 * 2**k >= 16; 64/128/256 match the original D_NET64/128/256)."""

    def __init__(self, config: DiscriminatorConfig) -> None:
        super().__init__()
        self.config = config
        size, df = config.image_size, config.df_dim
        k = (size // 4).bit_length() - 1  # total stride-2 steps to reach 4 x 4
        if size < 16 or 4 * 2**k != size:
            raise ValueError(f"discriminator image_size must be 4 * 2**k >= 16, got {size}")
        self.img_code_s16 = encode_image_downsample(df, num_down=min(k, 4))
        extra = max(k - 4, 0)  # down-blocks beyond 16x, each doubling the width
        self.extra_names: list[str] = []
        for j in range(extra):
            name = f"img_code_s{32 * 2**j}"
            self.add_module(name, down_block(df * 8 * 2**j, df * 8 * 2 ** (j + 1)))
            self.extra_names.append(name)
        last = f"img_code_s{32 * 2 ** (extra - 1)}" if extra else ""
        for j in range(extra):  # conv-BN-LReLU blocks that halve the width back to 8*df
            name = f"{last}_{j + 1}"
            ch = df * 8 * 2 ** (extra - j)
            self.add_module(name, conv_bn_lrelu(ch, ch // 2))
            self.extra_names.append(name)
        self.UNCOND_DNET = LogitHead(df, config.embed_dim, conditional=False) if config.unconditional else None
        self.COND_DNET = LogitHead(df, config.embed_dim, conditional=True)
        init_weights_original(self)
        if config.spectral_norm:
            _spectral_norm_instead_of_batchnorm(self)

    def forward(self, images: torch.Tensor, groups: Sequence[int] | None = None) -> torch.Tensor:
        """Image features (B, 8*df, 4, 4). ``groups``: ``images`` is a concatenation of batches of these
        sizes, each normalised by its own BatchNorm statistics (as separate calls would be)."""
        s = self.config.image_size
        if images.shape[1:] != (3, s, s):
            raise ValueError(f"discriminator expects (B, 3, {s}, {s}), got {tuple(images.shape)}")
        with batch_groups(self, groups):
            x = self.img_code_s16(images)
            for name in self.extra_names:
                x = getattr(self, name)(x)
        return x

    def logits(
        self, features: torch.Tensor, sentence: torch.Tensor | None, groups: Sequence[int] | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(unconditional logits (B,) or None, conditional logits (B,) or None if no sentence);
        ``groups`` as in :meth:`forward` (the conditional head has a BatchNorm)."""
        uncond = self.UNCOND_DNET(features) if self.UNCOND_DNET is not None else None
        cond = None
        if sentence is not None:
            expected = (features.shape[0], self.COND_DNET.embed_dim)
            if tuple(sentence.shape) != expected:
                raise ValueError(f"sentence must be (B, D) = {expected} for these images, got {tuple(sentence.shape)}")
            with batch_groups(self.COND_DNET, groups):
                cond = self.COND_DNET(features, sentence)
        return uncond, cond
