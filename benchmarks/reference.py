"""The training steps and the sampler that the benchmarks time and ``tests/test_fast_path.py`` checks: the
plain path, the reference, and the fast path, every switch of which is a field of :class:`StepOptions`.

The *plain path* is a direct transcription of the paper and the original code: float32, eager,
channels-first, the DAMSM word loss as the original's per-caption Python loop (``words_loss`` and
``func_attention``, Eq. 7-13: :func:`loop_damsm_loss`), explicit word attention in the generator (Eq. 2),
upsample-then-conv, BatchNorm as separate ops, one backward through the whole G objective (Eq. 3),
``torch.optim.Adam(foreach=False)`` and a per-parameter EMA loop. The *fast path* computes the same
mathematics; each switch can be turned on alone.

Both are built from the library's own objects, as ``attngan train`` runs them: one step is
:class:`~attngan.training.loss.GANLoss`'s phases ``D0 .. Dk`` and ``G``, each followed by its Adam step, then
the EMA of G; a DAMSM step is :class:`~attngan.training.loss.DAMSMLoss`, gradient clipping and Adam. Only the
original's DAMSM loop is computed here: a second computation of Eq. 7-13 to check the library's against,
which is why this module lives beside the benchmarks and not in the library. The benchmark scripts import
it from their folder, the tests by putting ``benchmarks/`` on ``sys.path``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from machine import native_bf16
from torch import nn

from attngan import losses
from attngan.config import PRESETS, Preset, apply_overrides
from attngan.data.base import Batch
from attngan.nn import (
    Discriminator,
    Generator,
    ImageEncoder,
    TextEncoder,
    fold_batchnorm,
    set_fast_upsample,
    set_matmul_conv,
)
from attngan.nn.encoders import INCEPTION_BLOCKS
from attngan.training.gan import discriminator_configs
from attngan.training.loss import DAMSMLoss, DAMSMObjective, DiscriminatorObjective, GANLoss, TextFeatures
from attngan.training.optim import FlatAdam

# ------------------------------------------------------------------ the original DAMSM loss (reference)


def func_attention_plain(
    query: torch.Tensor, context: torch.Tensor, gamma1: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The original ``func_attention`` (Eq. 7-9), step by step.

    Args:
        query: (B, D, T) words of one caption repeated per image; context: (B, D, h, w) regions.
    Returns:
        weighted context (B, D, T) and attention (B, T, h, w).
    """
    b, d, t = query.shape
    ih, iw = context.shape[2:]
    n = ih * iw
    context = context.reshape(b, d, n)  # (B, D, N)
    attn = torch.bmm(context.transpose(1, 2), query)  # (B, N, T)  Eq. 7
    attn = torch.softmax(attn.reshape(b * n, t), dim=1).reshape(b, n, t)  # Eq. 8: over words
    attn = attn.transpose(1, 2).reshape(b * t, n) * gamma1
    attn = torch.softmax(attn, dim=1).reshape(b, t, n)  # Eq. 9: over regions
    weighted = torch.bmm(context, attn.transpose(1, 2))  # (B, D, T)
    return weighted, attn.reshape(b, t, ih, iw)


def words_loss_plain(
    regions: torch.Tensor,
    words: torch.Tensor,
    lengths: torch.Tensor,
    gamma1: float,
    gamma2: float,
    gamma3: float,
    class_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The original ``words_loss``: one caption at a time against all images (Eq. 10-13)."""
    b = words.size(0)
    columns = []
    for i in range(b):
        n_words = int(lengths[i])
        word = words[i : i + 1, :, :n_words].repeat(b, 1, 1)  # (B, D, T_i)
        weighted, _ = func_attention_plain(word, regions, gamma1)  # (B, D, T_i)
        word = word.transpose(1, 2).reshape(b * n_words, -1)
        weighted = weighted.transpose(1, 2).reshape(b * n_words, -1)
        num = (word * weighted).sum(1)
        den = (word.norm(dim=1) * weighted.norm(dim=1)).clamp(min=losses.EPS)
        sim = (num / den).reshape(b, n_words)  # R(c_i, e_i) per image
        columns.append(torch.log(torch.exp(sim * gamma2).sum(dim=1, keepdim=True)))  # Eq. 10
    scores = torch.cat(columns, dim=1) * gamma3  # (B_img, B_cap)  Eq. 11
    if class_ids is not None:
        same = (class_ids[:, None] == class_ids[None, :]) & ~torch.eye(
            b, dtype=torch.bool, device=scores.device
        )
        scores = scores.masked_fill(same, float("-inf"))
    target = torch.arange(b, device=scores.device)
    return F.cross_entropy(scores, target), F.cross_entropy(scores.t(), target)  # Eq. 12, 13


def sent_loss_plain(
    image_vectors: torch.Tensor, sentence: torch.Tensor, gamma3: float, class_ids: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The original ``sent_loss`` (cosine of v-bar and e-bar, Eq. 11-13 at sentence level)."""
    b = image_vectors.size(0)
    num = image_vectors @ sentence.t()
    den = (image_vectors.norm(dim=1)[:, None] * sentence.norm(dim=1)[None, :]).clamp(min=losses.EPS)
    scores = num / den * gamma3
    if class_ids is not None:
        same = (class_ids[:, None] == class_ids[None, :]) & ~torch.eye(
            b, dtype=torch.bool, device=scores.device
        )
        scores = scores.masked_fill(same, float("-inf"))
    target = torch.arange(b, device=scores.device)
    return F.cross_entropy(scores, target), F.cross_entropy(scores.t(), target)


def loop_damsm_loss(
    regions: torch.Tensor, image_vectors: torch.Tensor, words: torch.Tensor, sentence: torch.Tensor,
    lengths: torch.Tensor, *, gamma1: float, gamma2: float, gamma3: float,
    class_ids: torch.Tensor | None = None, inverse_gamma2: bool = False,
) -> losses.DAMSMLossOutput:
    """L_DAMSM (Eq. 14) as the original computes it, ``words_loss`` + ``sent_loss``, called as
    :func:`attngan.losses.damsm_loss`: the library's loss objects take it as their ``damsm_fn``."""
    if inverse_gamma2:
        raise ValueError("the original's word score has no outer 1/gamma2 (Eq. 10)")
    w1, w2 = words_loss_plain(regions, words, lengths, gamma1, gamma2, gamma3, class_ids)
    s1, s2 = sent_loss_plain(image_vectors, sentence, gamma3, class_ids)
    return losses.DAMSMLossOutput(total=w1 + w2 + s1 + s2, word_1=w1, word_2=w2, sent_1=s1, sent_2=s2)


# ----------------------------------------------------------------------------------------------- options


@dataclass(frozen=True)
class StepOptions:
    """Fast-path switches. ``StepOptions()`` is the plain path."""

    channels_last: bool = False  # NHWC activations and weights (oneDNN/cuDNN prefer it)
    autocast: str | None = None  # None | "bf16" | "fp16": mixed precision of the networks (losses stay fp32)
    compile: bool = False  # torch.compile the networks
    vectorized_damsm: bool = False  # losses.damsm_loss instead of the per-caption loop (loop_damsm_loss)
    fused_attention: bool = False  # GANLoss(need_attention=False): SDPA in G, no attention maps
    fast_upsample: bool = False  # upsample + conv3x3 as one transposed conv (nn.set_fast_upsample)
    matmul_conv: bool = False  # CPU: convs with <= 64 output pixels as im2col + matmul (nn.set_matmul_conv)
    fold_frozen_bn: bool = False  # fold the frozen Inception's eval BatchNorm into its convs
    split_backward: bool = False  # G step: SplitBackwardGANLoss (the same gradients, less memory)
    fused_optimizer: bool = False  # attngan.training.optim.FlatAdam and a foreach EMA
    joint_d_batches: bool = False  # D step: real and fake in one pass, per-part BatchNorm (DiscriminatorObjective)

    def describe(self) -> str:
        on = [f.name for f in dataclasses.fields(self) if getattr(self, f.name) not in (False, None)]
        if self.autocast:
            on[on.index("autocast")] = f"autocast={self.autocast}"
        return ",".join(on) or "plain"


PLAIN = StepOptions()


def fast_options(device: torch.device, compile: bool = False) -> StepOptions:
    """Every switch that helps on ``device``: bf16 only where it is native (emulated bf16 is slower)."""
    return StepOptions(
        channels_last=True,
        autocast="bf16" if native_bf16(device) else None,
        compile=compile,
        vectorized_damsm=True,
        fused_attention=True,
        fast_upsample=True,
        matmul_conv=device.type == "cpu" and not compile,  # inductor lowers unfold poorly
        fold_frozen_bn=True,
        split_backward=True,
        fused_optimizer=True,
        joint_d_batches=True,
    )


def parse_options(spec: str, device: torch.device) -> StepOptions:
    """``"plain"``, ``"fast"``, ``"fast+compile"``, or ``"a,b,autocast=bf16"`` (field names)."""
    if spec == "plain":
        return PLAIN
    if spec in ("fast", "fast+compile"):
        return fast_options(device, compile=spec.endswith("compile"))
    values: dict[str, object] = {}
    names = {f.name for f in dataclasses.fields(StepOptions)}
    for part in spec.split(","):
        key, _, value = part.partition("=")
        if key not in names:
            raise ValueError(f"unknown option {key!r}; options: {sorted(names)}")
        values[key] = value if key == "autocast" else True
    return StepOptions(**values)


def autocast_context(options: StepOptions, device: torch.device):
    if options.autocast is None:
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[options.autocast]
    return torch.autocast(device_type=device.type, dtype=dtype)


def _format(x: torch.Tensor, options: StepOptions) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if options.channels_last and x.dim() == 4 else x


def _phase(name: str):
    """A labelled range in torch.profiler traces (free when no profiler runs)."""
    return torch.profiler.record_function(name)


def _switch_kernels(module: nn.Module, options: StepOptions) -> nn.Module:
    """The kernels of ``attngan.nn.fast`` and the memory layout that ``options`` ask for (same parameters)."""
    if options.fast_upsample:
        set_fast_upsample(module)
    if options.matmul_conv:
        set_matmul_conv(module)
    return module.to(memory_format=torch.channels_last) if options.channels_last else module


def _maybe_compile(module: nn.Module, options: StepOptions):
    return torch.compile(module) if options.compile else module


def make_adam(params, lr: float, betas: tuple[float, float], options: StepOptions):
    """The plain path's ``torch.optim.Adam`` (for-loop), or the library's ``FlatAdam`` (the fused kernel on
    flat views of the parameters; what ``attngan train`` uses with ``gan_train.fast_kernels``)."""
    if options.fused_optimizer:
        return FlatAdam(params, lr=lr, betas=betas)
    return torch.optim.Adam(params, lr=lr, betas=betas, foreach=False)


# ----------------------------------------------------------------------------------------------- batches


def preset_by_name(name: str, overrides: list[str] | None = None) -> Preset:
    preset = PRESETS[name]
    return apply_overrides(preset, overrides) if overrides else preset


def synthetic_batch(preset: Preset, batch_size: int, device: torch.device, seed: int = 0) -> Batch:
    """Random images at the discriminators' scales, captions of random lengths (T/2..T) and classes; the
    same for every option."""
    gen = torch.Generator().manual_seed(seed)
    t = preset.data.words_num
    lengths = torch.randint(max(1, t // 2), t + 1, (batch_size,), generator=gen)
    lengths[0] = t  # the longest caption sets T, as in a padded batch
    mask = torch.arange(t)[None, :] >= lengths[:, None]
    captions = torch.randint(1, preset.text_encoder.vocab_size, (batch_size, t), generator=gen).masked_fill(
        mask, 0
    )
    sizes = [c.image_size for c in discriminator_configs(preset)]
    images = [torch.rand(batch_size, 3, s, s, generator=gen) * 2 - 1 for s in sizes]
    class_ids = torch.randint(0, max(2, batch_size // 2), (batch_size,), generator=gen)
    return Batch(
        images=[im.to(device) for im in images],
        captions=captions.to(device),
        lengths=lengths,  # on the CPU: pack_padded_sequence wants them there
        mask=mask.to(device),
        class_ids=class_ids.to(device),
    )


def _formatted(batch: Batch, options: StepOptions) -> Batch:
    return dataclasses.replace(batch, images=[_format(im, options) for im in batch.images])


def frozen_image_encoder(encoder: ImageEncoder, options: StepOptions) -> nn.Module:
    """The image encoder as a frozen feature extractor (BN folded if asked), channels-last if asked."""
    encoder = fold_batchnorm(encoder) if options.fold_frozen_bn else encoder.eval()
    encoder.requires_grad_(False)
    return encoder.to(memory_format=torch.channels_last) if options.channels_last else encoder


def _damsm_fn(options: StepOptions):
    return losses.damsm_loss if options.vectorized_damsm else loop_damsm_loss


# ------------------------------------------------------------------------------------------- GAN step


class GANTrainStep:
    """One AttnGAN iteration (original trainer.py, and ``train_gan``): G forward, the phases of
    :class:`GANLoss`, a D step per stage (Eq. 5) then a G step (Eq. 3: Eq. 4 per stage + lambda * L_DAMSM
    (Eq. 14) + KL), each followed by its Adam step, then the EMA of G. Call with a batch; returns the losses
    as detached tensors (no host-device sync inside the step).
    """

    def __init__(self, preset: Preset, options: StepOptions, device: torch.device, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.preset, self.options, self.device = preset, options, device
        self.text_encoder = TextEncoder(preset.text_encoder).to(device).eval().requires_grad_(False)
        image_encoder = ImageEncoder(preset.image_encoder).to(device)
        self.generator = Generator(preset.generator).to(device).train()
        self.discriminators = [Discriminator(c).to(device).train() for c in discriminator_configs(preset)]
        for module in (self.generator, *self.discriminators):
            _switch_kernels(module, options)
        tc, gan = preset.gan_train, preset.gan_loss
        self.opt_g = make_adam(self.generator.parameters(), tc.g_lr, tc.betas, options)
        self.opt_d = [make_adam(d.parameters(), tc.d_lr, tc.betas, options) for d in self.discriminators]
        self.ema = [p.detach().clone() for p in self.generator.parameters()]
        d_objectives = [DiscriminatorObjective(d, gan.uncond_weight, options.joint_d_batches) for d in self.discriminators]
        self.loss = (SplitBackwardGANLoss if options.split_backward else GANLoss)(
            generator=_maybe_compile(self.generator, options),
            discriminators=self.discriminators,
            d_objectives=[_maybe_compile(o, options) for o in d_objectives],
            image_encoder=_maybe_compile(frozen_image_encoder(image_encoder, options), options),
            gan_cfg=gan,
            damsm_cfg=preset.damsm_loss,
            autocast=lambda: autocast_context(options, device),
            scaler=torch.amp.GradScaler(device.type, enabled=False),
            need_attention=not options.fused_attention,
            damsm_fn=_damsm_fn(options),
        )

    def __call__(self, batch: Batch) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            text = TextFeatures(*self.text_encoder(batch.captions, batch.lengths))  # (B, D, T), (B, D)
        batch = _formatted(batch, self.options)
        with _phase("G forward"):
            fake = self.loss.generate(batch, text, with_grad=True)
        out: dict[str, torch.Tensor] = {}
        for name, opt in zip(self.loss.phases, [*self.opt_d, self.opt_g]):
            with _phase(f"{name} step"):
                opt.zero_grad(set_to_none=True)
                out |= self.loss.accumulate_gradients(name, batch, text, fake)
                opt.step()
        with _phase("G EMA"):
            self._update_ema()
        return out

    @torch.no_grad()
    def _update_ema(self) -> None:
        params = [p.detach() for p in self.generator.parameters()]
        decay = self.preset.gan_train.ema_decay
        if self.options.fused_optimizer:
            torch._foreach_lerp_(self.ema, params, 1 - decay)
        else:
            for avg, p in zip(self.ema, params):
                avg.mul_(decay).add_(p, alpha=1 - decay)


class SplitBackwardGANLoss(GANLoss):
    """``split_backward``: the gradients of :meth:`GANLoss.generator_backward` with a lower peak. Each
    discriminator's graph (and the image encoder's with the DAMSM term) is back-propagated to G's images and
    freed before the next is built; then one backward through G."""

    def generator_backward(self, batch, text, fake):
        cfg = self.gan_cfg
        leaves = [img.detach().requires_grad_() for img in fake.images]
        stages = []
        for i, (d, leaf) in enumerate(zip(self.discriminators, leaves)):
            with _phase(f"G step: D{i} forward + backward"):
                with self.autocast():
                    stage = losses.generator_stage_loss(d, leaf, text.sentence, cfg.uncond_weight)  # Eq. 4
                self.scaler.scale(stage).backward()
            stages.append(stage.detach())
        with _phase("G step: encoder forward"), self.autocast():
            regions, image_vectors = self.image_encoder(leaves[-1])
        damsm = self.damsm_terms(regions, image_vectors, text, batch).total
        with _phase("G step: DAMSM + encoder backward"):
            self.scaler.scale(cfg.damsm_lambda * damsm).backward()
        kl = losses.kl_loss(fake.mu.float(), fake.logvar.float())
        with _phase("G backward"):
            scaled_kl = self.scaler.scale(cfg.kl_weight * kl)
            torch.autograd.backward([*fake.images, scaled_kl], [*(leaf.grad for leaf in leaves), None])
        adv, damsm, kl = sum(stages), damsm.detach(), kl.detach()
        total = losses.generator_objective(adv, damsm, kl, damsm_lambda=cfg.damsm_lambda, kl_weight=cfg.kl_weight)
        return total, adv, damsm, kl


# ----------------------------------------------------------------------------------------- DAMSM step


class DAMSMTrainStep:
    """One DAMSM pre-training step (original pretrain_DAMSM.py, and ``train_damsm``): L_DAMSM (Eq. 14) of
    :class:`DAMSMLoss`, backward, the text encoder's gradient norm clipped at ``rnn_grad_clip``, Adam. The
    Inception backbone is frozen; the text encoder, ``emb_features`` and ``emb_cnn_code`` are trained.
    """

    def __init__(self, preset: Preset, options: StepOptions, device: torch.device, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.preset, self.options, self.device = preset, options, device
        self.text_encoder = TextEncoder(preset.text_encoder).to(device).train()
        self.image_encoder = ImageEncoder(preset.image_encoder).to(device).train()
        encoder = self.image_encoder
        if options.fold_frozen_bn and encoder.frozen_backbone:
            # The frozen backbone's blocks are swapped for BN-folded ones (no second copy of the weights is
            # kept; the encoder's state dict then lacks the BN entries, which this benchmark never saves).
            # The trained projections W and W-bar stay as they are.
            folded = fold_batchnorm(encoder).requires_grad_(False)
            for name in INCEPTION_BLOCKS:
                setattr(encoder, name, getattr(folded, name))
            del folded
        if options.channels_last:
            encoder.to(memory_format=torch.channels_last)
        image_forward = _Autocast(_maybe_compile(encoder, options), options, device)  # the text encoder: float32
        objective = DAMSMObjective(self.text_encoder, image_forward, preset.damsm_loss, damsm_fn=_damsm_fn(options))
        tc = preset.damsm_train
        params = [p for p in objective.parameters() if p.requires_grad]
        self.optimizer = make_adam(params, tc.lr, tc.betas, options)
        self.loss = DAMSMLoss(objective)

    def __call__(self, batch: Batch) -> dict[str, torch.Tensor]:
        self.optimizer.zero_grad(set_to_none=True)
        out = self.loss.accumulate_gradients("DAMSM", _formatted(batch, self.options))
        torch.nn.utils.clip_grad_norm_(self.text_encoder.parameters(), self.preset.damsm_train.rnn_grad_clip)
        self.optimizer.step()
        return out


class _Autocast(nn.Module):
    """``module`` called under the autocast of ``options``."""

    def __init__(self, module: nn.Module, options: StepOptions, device: torch.device) -> None:
        super().__init__()
        self.module, self.options, self.device = module, options, device

    def forward(self, *args):
        with autocast_context(self.options, self.device):
            return self.module(*args)


# ------------------------------------------------------------------------------------------- sampling


class Sampler:
    """Text encoder + generator in eval mode: images of every stage and the attention maps (Eq. 2).

    Plain: the generator as trained. Fast: an inference copy with BatchNorm folded, the transposed-conv
    upsampling and channels-last (``fold_batchnorm`` / ``set_fast_upsample``), optionally compiled.
    """

    def __init__(self, preset: Preset, options: StepOptions, device: torch.device, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.preset, self.options, self.device = preset, options, device
        self.text_encoder = TextEncoder(preset.text_encoder).to(device).eval()
        generator = Generator(preset.generator).to(device).eval()
        self.generator = _switch_kernels(fold_batchnorm(generator) if options.fold_frozen_bn else generator, options)
        self.forward = _maybe_compile(self.generator, options)

    @torch.inference_mode()
    def __call__(
        self, batch: Batch, need_attention: bool = True
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        words, sentence = self.text_encoder(batch.captions, batch.lengths)
        with autocast_context(self.options, self.device):
            out = self.forward(None, sentence, words, batch.mask, need_attention=need_attention)
        return out.images, out.attention
