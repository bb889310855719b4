"""One training iteration of this package is the original AttnGAN's (taoxugit/AttnGAN ``trainer.py``).

Fixture ``data/original_training_step.safetensors``: the original code (commit 0d000e6, ``model.py``,
``miscc/losses.py``, ``weights_init``) run under torch 2.14 on a CPU with 2 stages, GF_DIM 2, DF_DIM 2,
Z_DIM 4, CONDITION_DIM 2, R_NUM 2, EMBEDDING_DIM 8, 12 words, batch 3, GAMMA1-3 4/5/10, LAMBDA 5, and
``CNN_ENCODER`` weights from :func:`image_encoder_test_weights`. One pass of the ``condGANTrainer.train``
loop body per caption set (equal lengths; lengths 5, 4, 2): ``manual_seed(NOISE_SEED)``, ``noise.normal_``,
``netG`` (CA_NET draws eps next), ``discriminator_loss`` + ``Adam(2e-4, (0.5, 0.999))`` per D,
``generator_loss`` + ``KL_loss`` + ``Adam`` for G. It holds the initial weights, 8-bit real images, z, eps,
the losses, G's gradients and (lengths 5, 4, 2) G and both Ds after the step. The networks ran in float64:
through Inception's max-pools and ReLUs, float32 rounding alone moved G's gradient by up to 2% of its
scale. Concessions to today's PyTorch, none changing the maths: ``class_ids=None`` (here distinct class
ids), ``loss.data[0]`` answered with the 0-dim loss, bilinear ``nn.Upsample`` with ``align_corners=True``
(its PyTorch 0.3 meaning).

Here: ``attngan.legacy.load_original`` and one step of ``GANLoss`` (phases D0, D1, G, each followed by its
optimizer, as ``train_gan`` runs them) in float64, plain and fast (joint D batches, ``FlatAdam``, the fast
kernels, channels-last), with ``set_legacy_mask_bug`` for the unequal lengths (docs/guide.md, "Differences from
the original code"); compared at float32 rounding.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from tolerance import assert_close_to_scale

FIXTURE = Path(__file__).parent / "data" / "original_training_step.safetensors"


def image_encoder_test_weights(embed_dim: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Original-layout ``CNN_ENCODER`` weights drawn from one seeded generator, in sorted key order:
    He-scaled conv weights, BatchNorm near identity, embeddings uniform in +-0.1 (the original's init).
    Regenerated here instead of stored: 22 million numbers."""
    from torchvision.models import inception_v3

    from attngan.nn.encoders import INCEPTION_BLOCKS

    with torch.device("meta"):
        net = inception_v3(weights=None, aux_logits=False, init_weights=False)
    shapes = {k: v.shape for k, v in net.state_dict().items() if k.split(".")[0] in INCEPTION_BLOCKS}
    shapes |= {
        "emb_features.weight": torch.Size([embed_dim, 768, 1, 1]),
        "emb_cnn_code.weight": torch.Size([embed_dim, 2048]),
        "emb_cnn_code.bias": torch.Size([embed_dim]),
    }
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for key in sorted(shapes):
        shape = shapes[key]
        if key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(0, dtype=torch.long)
        elif key.endswith("conv.weight"):
            out[key] = torch.randn(shape, generator=g) * math.sqrt(2.0 / math.prod(shape[1:]))
        elif key.startswith("emb_"):
            out[key] = torch.rand(shape, generator=g) * 0.2 - 0.1
        elif key.endswith("bn.weight"):
            out[key] = 1 + 0.1 * torch.randn(shape, generator=g)
        elif key.endswith("running_var"):
            out[key] = 1 + 0.1 * torch.rand(shape, generator=g)
        else:  # bn.bias, bn.running_mean
            out[key] = 0.1 * torch.randn(shape, generator=g)
    return out


def _nested(flat: dict[str, torch.Tensor]) -> dict:
    """``{"a/b/c": t}`` -> ``{"a": {"b": {"c": t}}}`` (state-dict keys keep their dots)."""
    out: dict = {}
    for key, value in flat.items():
        *path, last = key.split("/")
        node = out
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return out


@pytest.fixture(scope="module")
def original() -> dict:
    if not FIXTURE.is_file():
        pytest.skip(
            f"{FIXTURE} is missing (made by running the original AttnGAN code, see this module's docstring)"
        )
    from safetensors import safe_open

    with safe_open(FIXTURE, framework="pt") as f:
        fx = _nested({k: f.get_tensor(k) for k in f.keys()})
        fx["settings"] = json.loads(f.metadata()["settings"])
    fx["image_encoder"] = image_encoder_test_weights(fx["settings"]["EMBEDDING_DIM"])
    return fx


def real_images(fx: dict) -> list[torch.Tensor]:
    """The fixture's 8-bit 32-px pixels, enlarged by repetition to 64 and 128 px, as x / 127.5 - 1."""
    pixels = fx["pixels"]
    return [
        pixels.repeat_interleave(k, dim=2).repeat_interleave(k, dim=3).float() / 127.5 - 1 for k in (2, 4)
    ]


class _OriginalNoise(nn.Module):
    """G with the original's z and CA noise (and, for unequal lengths, its attention-mask tiling)."""

    def __init__(
        self, generator: nn.Module, z: torch.Tensor, ca_noise: torch.Tensor, legacy_mask_bug: bool
    ) -> None:
        from attngan.nn import set_legacy_mask_bug

        super().__init__()
        self.generator, self.z, self.ca_noise = set_legacy_mask_bug(generator, legacy_mask_bug), z, ca_noise

    def forward(self, z, sentence, words, mask, **kwargs):
        assert z is None  # GANLoss.generate leaves the draws to G
        return self.generator(self.z, sentence, words, mask, ca_noise=self.ca_noise, **kwargs)


def library_step(fx: dict, case: str, fast: bool):
    """One iteration of ``train_gan`` from the fixture's initial weights: G forward, then the phases D0,
    D1, G, each followed by its optimizer step. Returns the losses, G and the Ds."""
    from attngan.config import DAMSMLossConfig, GANLossConfig
    from attngan.data.base import Batch
    from attngan.legacy import load_original
    from attngan.training.devices import make_grad_scaler
    from attngan.training.gan import _fast_modules
    from attngan.training.loss import DiscriminatorObjective, GANLoss, TextFeatures
    from attngan.training.optim import FlatAdam

    s, c, cpu, dtype = fx["settings"], fx[case], torch.device("cpu"), torch.float64
    initial = fx["initial"]
    text_encoder = load_original(initial["text_encoder"], kind="text_encoder").to(dtype)
    image_encoder = load_original(fx["image_encoder"], kind="image_encoder").requires_grad_(False).to(dtype)
    memory_format = torch.channels_last if fast else torch.contiguous_format
    generator = (
        load_original(initial["netG"], kind="generator").train().to(dtype, memory_format=memory_format)
    )
    discriminators = [
        load_original(initial[f"netD{i}"], kind="discriminator")
        .train()
        .to(dtype, memory_format=memory_format)
        for i in range(s["BRANCH_NUM"])
    ]
    judge = (
        _fast_modules(generator, discriminators, image_encoder, cpu, memory_format) if fast else image_encoder
    )
    adam = FlatAdam if fast else torch.optim.Adam
    opt_g = adam(generator.parameters(), lr=s["LR"], betas=(0.5, 0.999))
    opt_d = [adam(d.parameters(), lr=s["LR"], betas=(0.5, 0.999)) for d in discriminators]
    scaler = make_grad_scaler(cpu, "no")
    noise = (c["z"].to(dtype), c["ca_noise"].to(dtype))
    loss = GANLoss(
        generator=_OriginalNoise(generator, *noise, legacy_mask_bug=case == "unequal"),
        discriminators=discriminators,
        d_objectives=[DiscriminatorObjective(d, 1.0, joint_batches=fast) for d in discriminators],
        image_encoder=judge,
        gan_cfg=GANLossConfig(damsm_lambda=s["LAMBDA"], kl_weight=1.0, uncond_weight=1.0),
        damsm_cfg=DAMSMLossConfig(
            gamma1=s["GAMMA1"], gamma2=s["GAMMA2"], gamma3=s["GAMMA3"], class_masking=True
        ),
        autocast=contextlib.nullcontext,
        scaler=scaler,
        need_attention=not fast,
    )
    captions, lengths = c["captions"], c["lengths"]
    images = [x.to(dtype) for x in real_images(fx)]
    class_ids = torch.arange(captions.size(0))  # distinct: no negatives masked, as the original's None
    batch = Batch(images, captions, lengths, captions == 0, class_ids)
    with torch.no_grad():
        words, sentence = text_encoder(captions, lengths)
    text = TextFeatures(words, sentence)
    fake = loss.generate(batch, text, with_grad=True)
    values: dict[str, torch.Tensor] = {}
    for name, opt in zip(loss.phases, [*opt_d, opt_g]):
        opt.zero_grad(set_to_none=True)
        values |= loss.accumulate_gradients(name, batch, text, fake)
        scaler.step(opt)
    scaler.update()
    return values, generator, discriminators


def test_the_fixture_noise_is_the_global_generators_draws(original):
    """z then eps, as ``noise.normal_`` and CA_NET drew them: what ``Generator(z=None)`` draws in train_gan."""
    from attngan.legacy import load_original

    s, c = original["settings"], original["unequal"]
    torch.manual_seed(s["NOISE_SEED"])
    assert torch.equal(torch.randn(s["BATCH"], s["Z_DIM"]), c["z"])
    assert torch.equal(torch.randn(s["BATCH"], s["CONDITION_DIM"]), c["ca_noise"])
    g = load_original(original["initial"]["netG"], kind="generator")
    sentence, words = (
        torch.randn(s["BATCH"], s["EMBEDDING_DIM"]),
        torch.randn(s["BATCH"], s["EMBEDDING_DIM"], 5),
    )
    torch.manual_seed(s["NOISE_SEED"])
    drawn = g(None, sentence, words, None).images[-1]
    assert torch.equal(drawn, g(c["z"], sentence, words, None, ca_noise=c["ca_noise"]).images[-1])


@pytest.mark.parametrize(
    ("case", "fast"),
    [("unequal", False), ("unequal", True), ("equal", True)],
    ids=["plain", "fast", "fast-equal-lengths"],
)
def test_one_training_step_is_the_originals(original, case, fast):
    s, expected = original["settings"], original[case]
    values, generator, discriminators = library_step(original, case, fast)

    # Losses: Eq. 5 per D (the original's errD), Eq. 3 (errG_total: Eq. 4 per stage + lambda L_DAMSM + KL).
    for i in range(len(discriminators)):
        assert_close_to_scale(values[f"loss/D{i}"].float(), expected["loss"][f"errD{i}"], msg=f"loss of D{i}")
    assert_close_to_scale(values["G/kl"].float(), expected["loss"]["kl_loss"], msg="KL")
    assert_close_to_scale(values["loss/G"].float(), expected["loss"]["errG_total"], msg="loss of G")

    # G's gradient (before its Adam step): every term of Eq. 3 back-propagated as the original did. Its
    # DAMSM term runs through Inception-v3, whose ReLUs and max-pools turn a kernel difference into a large
    # gradient change: even in float64, CPU builds without SIMD kernels (ATEN_CPU_CAPABILITY=default, as on
    # some ARM CPUs) compute Inception's forward 3e-6 (relative) away from the vectorized kernels, which moves
    # single gradient elements by up to 4 % of the scale. Hence 10 % of the scale here: a missing or doubled
    # term, a wrong sign or axis moves them by the whole scale; lambda and the gammas are pinned by the losses.
    grads = {n: p.grad.float() for n, p in generator.named_parameters()}
    assert_close_to_scale(grads, expected["grad"]["netG"], rel=0.1, msg="gradient of G")

    # Weights and BatchNorm statistics after the step (G's Adam step follows its gradient: a gradient element
    # near zero whose sign the kernels above flip moves its weight by up to 2 lr).
    nets = {"netG": generator} | {f"netD{i}": d for i, d in enumerate(discriminators)}
    for net, after in expected.get("after", {}).items():
        state = nets[net].state_dict()
        actual = {k: state[k].float().contiguous() for k in after}
        lr = s["LR"] * (200 if net == "netG" else 1)
        assert_close_to_scale(actual, after, adam_lr=lr, msg=f"{net} after the step")
