"""Loss objects of the two training loops, in the manner of stylegan2-ada's ``training/loss.py``.

The loop only iterates named phases; :meth:`accumulate_gradients` owns the maths of each phase and calls
``backward``. AttnGAN's phases are ``D0 .. Dk`` (one per discriminator, Eq. 5) then ``G`` (Eq. 3 with the
stage losses of Eq. 4, the DAMSM term of Eq. 14 and the KL term of conditioning augmentation); DAMSM
pre-training has one phase, ``DAMSM`` (Eq. 14).

What runs through a DistributedDataParallel wrapper is a module whose ``forward`` is the whole objective
of a phase (:class:`DAMSMObjective`, :class:`DiscriminatorObjective`) or the generator itself, so that
DDP sees exactly one forward per backward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..config import DAMSMLossConfig, GANLossConfig
from ..data.base import Batch
from ..losses import (
    DAMSMLossOutput,
    damsm_loss,
    discriminator_loss,
    generator_objective,
    generator_stage_loss,
    kl_loss,
)
from ..nn import Discriminator, GeneratorOutput, ImageEncoder, TextEncoder

__all__ = ["DAMSMObjective", "DAMSMLoss", "DiscriminatorObjective", "GANLoss", "TextFeatures"]


def _damsm_terms(
    regions: torch.Tensor,
    image_vectors: torch.Tensor,
    words: torch.Tensor,
    sentence: torch.Tensor,
    lengths: torch.Tensor,
    class_ids: torch.Tensor | None,
    cfg: DAMSMLossConfig,
    damsm_fn: Callable[..., DAMSMLossOutput] = damsm_loss,
) -> DAMSMLossOutput:
    # The matching scores are computed in float32 even under autocast: they go through exp/logsumexp.
    with torch.autocast(device_type=regions.device.type, enabled=False):
        return damsm_fn(
            regions.float(),
            image_vectors.float(),
            words.float(),
            sentence.float(),
            lengths,
            gamma1=cfg.gamma1,
            gamma2=cfg.gamma2,
            gamma3=cfg.gamma3,
            class_ids=class_ids if cfg.class_masking else None,
            inverse_gamma2=cfg.eq10_inverse_gamma2,
        )


# ------------------------------------------------------------------------------------------------ DAMSM


class DAMSMObjective(nn.Module):
    """Text encoder + image encoder -> L_DAMSM (Eq. 14) of a batch of matching pairs.

    ``damsm_fn`` computes Eq. 14: :func:`attngan.losses.damsm_loss`, or another computation with its
    signature (the benchmarks' reference loop of the original code).
    """

    def __init__(
        self,
        text_encoder: TextEncoder,
        image_encoder: ImageEncoder,
        cfg: DAMSMLossConfig,
        damsm_fn: Callable[..., DAMSMLossOutput] = damsm_loss,
    ) -> None:
        super().__init__()
        self.text_encoder = text_encoder
        self.image_encoder = image_encoder
        self.cfg = cfg
        self.damsm_fn = damsm_fn

    def forward(
        self, images: torch.Tensor, captions: torch.Tensor, lengths: torch.Tensor, class_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        words, sentence = self.text_encoder(captions, lengths)  # (B, D, T), (B, D)
        regions, image_vectors = self.image_encoder(images)  # (B, D, h, w), (B, D)
        out = _damsm_terms(regions, image_vectors, words, sentence, lengths, class_ids, self.cfg, self.damsm_fn)
        return out.total, out.word_1, out.word_2, out.sent_1, out.sent_2


class DAMSMLoss:
    """DAMSM pre-training: one phase, ``DAMSM`` (w_loss0 + w_loss1 + s_loss0 + s_loss1 of the original)."""

    phases = ("DAMSM",)

    def __init__(self, objective: nn.Module) -> None:
        self.objective = objective  # a DAMSMObjective, possibly wrapped in DistributedDataParallel

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        total, w1, w2, s1, s2 = self.objective(batch.images[-1], batch.captions, batch.lengths, batch.class_ids)
        return {"loss/damsm": total, "loss/w1": w1, "loss/w2": w2, "loss/s1": s1, "loss/s2": s2}

    def accumulate_gradients(self, phase: str, batch: Batch) -> dict[str, torch.Tensor]:
        if phase != "DAMSM":
            raise ValueError(f"unknown phase {phase!r}")
        values = self.losses(batch)
        values["loss/damsm"].backward()
        return {k: v.detach() for k, v in values.items()}


# ------------------------------------------------------------------------------------------------ GAN


@dataclass
class TextFeatures:
    """Frozen text-encoder outputs of a batch (detached, as the original)."""

    words: torch.Tensor  # (B, D, T)
    sentence: torch.Tensor  # (B, D)


class DiscriminatorObjective(nn.Module):
    """D_i -> L_{D_i} (Eq. 5) on real images of its scale, detached fakes, and the sentence vectors."""

    def __init__(self, disc: Discriminator, uncond_weight: float, joint_batches: bool = False) -> None:
        super().__init__()
        self.disc = disc
        self.uncond_weight = uncond_weight
        self.joint_batches = joint_batches  # real and fake in one pass, per-part BatchNorm (same values)

    def forward(self, real: torch.Tensor, fake: torch.Tensor, sentence: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = discriminator_loss(self.disc, real, fake, sentence, self.uncond_weight, self.joint_batches)
        zero = out.total.new_zeros(())
        wrong = out.wrong_cond if out.wrong_cond is not None else zero
        return out.total, out.real_cond, out.fake_cond, wrong


class GANLoss:
    """AttnGAN's objective; phases ``D0 .. Dk`` then ``G``.

    ``generate`` runs G once per iteration (as the original): the D phases see its images detached and
    the G phase back-propagates through them (:meth:`generator_backward`).
    """

    def __init__(
        self,
        *,
        generator: nn.Module,  # Generator, possibly DDP/compiled: called as generator(z, sentence, words, mask)
        discriminators: Sequence[Discriminator],  # plain modules, used in the G phase with frozen parameters
        d_objectives: Sequence[nn.Module],  # DiscriminatorObjective per scale, possibly DDP/compiled
        image_encoder: ImageEncoder,  # frozen, eval mode
        gan_cfg: GANLossConfig,
        damsm_cfg: DAMSMLossConfig,
        autocast,  # () -> context manager for mixed precision (nullcontext on CPU)
        scaler: torch.amp.GradScaler,
        need_attention: bool = True,  # False: G's word attention may use the fused kernel (no maps kept)
        damsm_fn: Callable[..., DAMSMLossOutput] = damsm_loss,  # Eq. 14, or another computation with its signature
    ) -> None:
        self.generator = generator
        self.discriminators = list(discriminators)
        self.d_objectives = list(d_objectives)
        self.image_encoder = image_encoder
        self.gan_cfg = gan_cfg
        self.damsm_cfg = damsm_cfg
        self.autocast = autocast
        self.scaler = scaler
        self.need_attention = need_attention
        self.damsm_fn = damsm_fn
        self.phases = tuple(f"D{i}" for i in range(len(self.discriminators))) + ("G",)

    def generate(self, batch: Batch, text: TextFeatures, with_grad: bool) -> GeneratorOutput:
        """Fake images of every stage for the batch, noise z and CA noise drawn from the global RNG."""
        with torch.set_grad_enabled(with_grad), self.autocast():
            return self.generator(None, text.sentence, text.words, batch.mask, need_attention=self.need_attention)

    def accumulate_gradients(
        self, phase: str, batch: Batch, text: TextFeatures, fake: GeneratorOutput
    ) -> dict[str, torch.Tensor]:
        if phase.startswith("D") and phase[1:].isdigit():
            return self._discriminator_phase(int(phase[1:]), batch, text, fake)
        if phase == "G":
            return self._generator_phase(batch, text, fake)
        raise ValueError(f"unknown phase {phase!r}; phases are {', '.join(self.phases)}")

    def _discriminator_phase(
        self, i: int, batch: Batch, text: TextFeatures, fake: GeneratorOutput
    ) -> dict[str, torch.Tensor]:
        # Eq. 5 on scale i: real images, fakes detached, sentence vectors (mismatched pairs inside).
        with self.autocast():
            total, real, fake_c, wrong = self.d_objectives[i](batch.images[i], fake.images[i].detach(), text.sentence)
        self.scaler.scale(total).backward()
        return {f"loss/D{i}": total.detach(), f"D{i}/real": real.detach(), f"D{i}/fake": fake_c.detach(), f"D{i}/wrong": wrong.detach()}

    def _generator_phase(self, batch: Batch, text: TextFeatures, fake: GeneratorOutput) -> dict[str, torch.Tensor]:
        # The discriminators judge but are not trained here: no gradients into their parameters.
        for d in self.discriminators:
            d.requires_grad_(False)
        try:
            total, adv, damsm, kl = self.generator_backward(batch, text, fake)
        finally:
            for d in self.discriminators:
                d.requires_grad_(True)
        return {
            "loss/G": total.detach(),
            "G/adv": adv.detach(),
            "G/damsm": damsm.detach(),
            "G/kl": kl.detach(),
        }

    def generator_backward(
        self, batch: Batch, text: TextFeatures, fake: GeneratorOutput
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Eq. 3 of G's images and its (scaled) backward, the discriminators frozen; returns L, L_G, L_DAMSM
        and the KL term."""
        with self.autocast():
            # Eq. 4 per stage, summed (the original's generator_loss).
            adv = sum(
                generator_stage_loss(d, img, text.sentence, self.gan_cfg.uncond_weight)
                for d, img in zip(self.discriminators, fake.images)
            )
            # Eq. 3's DAMSM term on the last stage, frozen image encoder, detached text features.
            regions, image_vectors = self.image_encoder(fake.images[-1])  # (B, D, h, w), (B, D)
        damsm = self.damsm_terms(regions, image_vectors, text, batch).total
        kl = kl_loss(fake.mu.float(), fake.logvar.float())
        total = generator_objective(
            adv, damsm, kl, damsm_lambda=self.gan_cfg.damsm_lambda, kl_weight=self.gan_cfg.kl_weight
        )
        self.scaler.scale(total).backward()
        return total, adv, damsm, kl

    def damsm_terms(
        self, regions: torch.Tensor, image_vectors: torch.Tensor, text: TextFeatures, batch: Batch
    ) -> DAMSMLossOutput:
        """L_DAMSM (Eq. 14) of the image features of G's last stage against the batch's captions."""
        words, sentence, cfg = text.words, text.sentence, self.damsm_cfg
        return _damsm_terms(regions, image_vectors, words, sentence, batch.lengths, batch.class_ids, cfg, self.damsm_fn)
