"""The attentional generative network (Sec. 3.1, Eq. 1-2).

    h_0 = F_0(z, F^ca(e-bar));  h_i = F_i(h_{i-1}, F_i^attn(e, h_{i-1}));  x-hat_i = G_i(h_i)

Submodule names follow the original release (``ca_net``, ``h_net1``, ``img_net1``, ``h_net2``, ...)
so that its state dicts load by identity. Any number of stages, widths and residual depths.
The original's attention-mask bug is a switch of the modules (``attngan.nn.set_legacy_mask_bug``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import GeneratorConfig
from .attention import WordAttention
from .layers import GLU, ResBlock, conv3x3, init_weights_original, up_block


@dataclass
class GeneratorOutput:
    images: list[torch.Tensor]  # one (B, 3, s_i, s_i) image in [-1, 1] per stage (DCGAN: last only)
    attention: list[torch.Tensor]  # one (B, T, s_i, s_i) beta map per attention stage (Eq. 2)
    mu: torch.Tensor  # (B, c) conditioning-augmentation mean
    logvar: torch.Tensor  # (B, c) conditioning-augmentation log-variance


class ConditioningAugmentation(nn.Module):
    """F^ca: e-bar -> (mu, logvar) -> c = mu + eps * exp(logvar / 2) (StackGAN's CA).

    The original named the GLU ``relu``; it has no parameters, so the keys are ``fc.weight``/``fc.bias``.
    """

    def __init__(self, embed_dim: int, condition_dim: int) -> None:
        super().__init__()
        self.condition_dim = condition_dim
        self.fc = nn.Linear(embed_dim, condition_dim * 4, bias=True)
        self.glu = GLU()

    def encode(self, sentence: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.glu(self.fc(sentence))  # (B, 2c)
        return x[:, : self.condition_dim], x[:, self.condition_dim :]

    def forward(
        self,
        sentence: torch.Tensor,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        use_mean: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(sentence)
        if use_mean:
            return mu, mu, logvar
        if noise is None:
            # sentence's dtype, as z: under autocast mu is bf16/fp16, and eps would be drawn at that precision
            noise = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=sentence.dtype)
        return mu + noise * torch.exp(0.5 * logvar), mu, logvar


class InitStage(nn.Module):
    """F_0: (c, z) -> fc -> 4 x 4 -> k up-blocks -> h_0 with ``gf_dim`` channels (original INIT_STAGE_G)."""

    def __init__(self, gf_dim: int, z_dim: int, condition_dim: int, num_upsamples: int, in_dim: int = 0) -> None:
        super().__init__()
        # Channels of the 4 x 4 map: ngf*16 in the original (4 up-blocks), i.e. gf_dim * 2**num_upsamples, each
        # up-block halving them down to gf_dim. ``in_dim`` > 0 (GeneratorConfig.init_dim) sets them; the
        # up-blocks still halve them, and the last one maps to gf_dim.
        self.in_dim = in_dim or gf_dim * 2**num_upsamples
        self.fc = nn.Sequential(
            nn.Linear(condition_dim + z_dim, self.in_dim * 4 * 4 * 2, bias=False),
            nn.BatchNorm1d(self.in_dim * 4 * 4 * 2),
            GLU(),
        )
        self.num_upsamples = num_upsamples
        widths = [self.in_dim // 2**i for i in range(num_upsamples)] + [gf_dim]
        for i in range(num_upsamples):
            self.add_module(f"upsample{i + 1}", up_block(widths[i], widths[i + 1]))

    def forward(self, c: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        x = self.fc(torch.cat((c, z), dim=1))  # c first, then z (original order)
        x = x.view(-1, self.in_dim, 4, 4)
        for i in range(self.num_upsamples):
            x = getattr(self, f"upsample{i + 1}")(x)
        return x  # (B, gf_dim, base, base)


class NextStage(nn.Module):
    """F_i: [h, F^attn(e, h)] -> residual blocks -> 2x up-block (original NEXT_STAGE_G).

    As in the original, stages i >= 1 see the caption only through the word attention.
    """

    def __init__(self, gf_dim: int, embed_dim: int, res_blocks: int, sentinel: bool = False) -> None:
        super().__init__()
        self.att = WordAttention(gf_dim, embed_dim, sentinel=sentinel)
        self.residual = nn.Sequential(*[ResBlock(gf_dim * 2) for _ in range(res_blocks)])
        self.upsample = up_block(gf_dim * 2, gf_dim)

    def forward(
        self, h: torch.Tensor, words: torch.Tensor, mask: torch.Tensor | None, need_weights: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        context, attn = self.att(h, words, mask, need_weights)  # (B, C, H, W), (B, T, H, W) or None
        x = torch.cat((h, context), dim=1)  # (B, 2C, H, W)
        return self.upsample(self.residual(x)), attn


class ImageHead(nn.Module):
    """G_i: conv3x3 -> tanh (original GET_IMAGE_G)."""

    def __init__(self, gf_dim: int) -> None:
        super().__init__()
        self.img = nn.Sequential(conv3x3(gf_dim, 3), nn.Tanh())

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.img(h)


class Generator(nn.Module):
    """The attentional generative network of Eq. 1 with ``num_stages`` generators."""

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.ca_net = ConditioningAugmentation(c.embed_dim, c.condition_dim)
        self.h_net1 = InitStage(c.gf_dim, c.z_dim, c.condition_dim, c.init_upsamples, c.init_dim)
        for i in range(2, c.num_stages + 1):
            self.add_module(f"h_net{i}", NextStage(c.gf_dim, c.embed_dim, c.res_blocks, c.attention_sentinel))
        if c.dcgan:
            self.img_net = ImageHead(c.gf_dim)
        else:
            for i in range(1, c.num_stages + 1):
                self.add_module(f"img_net{i}", ImageHead(c.gf_dim))
        init_weights_original(self)

    def forward(
        self,
        z: torch.Tensor | None,
        sentence: torch.Tensor,
        words: torch.Tensor,
        mask: torch.Tensor | None,
        *,
        ca_noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        ca_mean: bool = False,
        need_attention: bool = True,
    ) -> GeneratorOutput:
        """Args:
        z: (B, z_dim) noise, or None to draw it from ``generator`` (before the CA noise, as the original).
        sentence: (B, D) e-bar; words: (B, D, T) e; mask: (B, T) bool, True at padding words.
        ca_noise: (B, c) eps of the conditioning augmentation, or None to draw it from ``generator``.
        ca_mean: use c = mu (deterministic conditioning; the original always sampled, even in eval); always
            so with ``config.ca_sample=False``.
        need_attention: return the attention maps (False allows the fused attention kernel).
        """
        cfg = self.config
        b = sentence.size(0)
        if words.dim() != 3 or words.size(0) != b or words.size(1) != cfg.embed_dim:
            raise ValueError(f"words must be (B, {cfg.embed_dim}, T), got {tuple(words.shape)}")
        if mask is not None and mask.shape != (b, words.size(2)):
            raise ValueError(f"mask must be (B, T) = {(b, words.size(2))}, got {tuple(mask.shape)}")
        if z is None:
            z = torch.randn(b, cfg.z_dim, generator=generator, device=sentence.device, dtype=sentence.dtype)
        use_mean = ca_mean or not cfg.ca_sample
        c_code, mu, logvar = self.ca_net(sentence, noise=ca_noise, generator=generator, use_mean=use_mean)
        h = self.h_net1(c_code, z)
        images: list[torch.Tensor] = []
        attention: list[torch.Tensor] = []
        if not cfg.dcgan:
            images.append(self.img_net1(h))
        for i in range(2, cfg.num_stages + 1):
            h, attn = getattr(self, f"h_net{i}")(h, words, mask, need_attention)
            if attn is not None:
                attention.append(attn)
            if not cfg.dcgan:
                images.append(getattr(self, f"img_net{i}")(h))
        if cfg.dcgan:
            images.append(self.img_net(h))
        return GeneratorOutput(images=images, attention=attention, mu=mu, logvar=logvar)
