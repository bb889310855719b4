"""The fast path computes the same mathematics as the plain path (benchmarks/reference.py, attngan.nn.fast).

Plain references: the original's per-caption ``words_loss`` / ``func_attention`` loop (Eq. 7-13), explicit
word attention (Eq. 2), upsample-then-conv, BatchNorm as a separate op, channels-first tensors, one
backward through the whole G objective (Eq. 3).
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from attngan import losses
from attngan.config import PRESETS, DiscriminatorConfig, ImageEncoderConfig
from attngan.nn import (
    Discriminator,
    Generator,
    ImageEncoder,
    fold_batchnorm,
    set_fast_upsample,
    set_matmul_conv,
    word_attention,
)
from attngan.nn.layers import GLU, BatchNorm2d, Conv2d, batch_groups, conv2d_matmul, upsample_conv3x3
from tolerance import assert_close_to_scale

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    """benchmarks/reference.py: the plain path, the fast-path switches and the steps the benchmarks time."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))  # as the benchmark scripts import it (and its sibling machine.py)
    return importlib.import_module("reference")


def _mask(lengths: list[int], t: int) -> torch.Tensor:
    return torch.arange(t)[None, :] >= torch.tensor(lengths)[:, None]


def _randomize_bn(module: torch.nn.Module) -> None:
    """Non-trivial running statistics so that folding BatchNorm is really tested."""
    gen = torch.Generator().manual_seed(1)
    for m in module.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.2)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)


def _tiny_preset(**damsm):
    p = PRESETS["tiny"]
    return dataclasses.replace(
        p,
        text_encoder=dataclasses.replace(p.text_encoder, vocab_size=20),
        damsm_loss=dataclasses.replace(p.damsm_loss, **damsm),
    )


# ------------------------------------------------------------------------------------------ DAMSM loss


@pytest.mark.parametrize("class_masking", [False, True])
def test_damsm_loop_equals_vectorised(seed, bench, class_masking):
    b, d, t = 5, 16, 7
    regions = torch.randn(b, d, 4, 4, dtype=torch.float64)
    image_vectors = torch.randn(b, d, dtype=torch.float64)
    lengths = torch.tensor([7, 3, 5, 1, 6])
    words = torch.randn(b, d, t, dtype=torch.float64).masked_fill(_mask(lengths.tolist(), t)[:, None], 0.0)
    sentence = torch.randn(b, d, dtype=torch.float64)
    class_ids = torch.tensor([0, 1, 0, 2, 1])
    cfg = _tiny_preset().damsm_loss
    args = (regions, image_vectors, words, sentence, lengths)
    kw = dict(gamma1=cfg.gamma1, gamma2=cfg.gamma2, gamma3=cfg.gamma3, class_ids=class_ids if class_masking else None)
    loop = bench.loop_damsm_loss(*args, **kw)
    fast = losses.damsm_loss(*args, **kw)
    assert_close_to_scale(fast.total, loop.total)
    assert_close_to_scale(dataclasses.asdict(fast), dataclasses.asdict(loop))
    w1, w2 = bench.words_loss_plain(
        regions, words, lengths, cfg.gamma1, cfg.gamma2, cfg.gamma3, class_ids if class_masking else None
    )
    scores = losses.word_scores(regions, words, lengths, cfg.gamma1, cfg.gamma2)
    v1, v2 = losses.matching_losses(scores, cfg.gamma3, class_ids if class_masking else None)
    assert_close_to_scale((v1, v2), (w1, w2))


def test_damsm_loop_gradients_equal(seed, bench):
    b, d, t = 4, 8, 5
    lengths = torch.tensor([5, 2, 4, 3])
    regions = torch.randn(b, d, 3, 3, dtype=torch.float64, requires_grad=True)
    words = torch.randn(b, d, t, dtype=torch.float64).masked_fill(_mask(lengths.tolist(), t)[:, None], 0.0)
    cfg = _tiny_preset().damsm_loss
    grads = []
    for damsm_fn in (bench.loop_damsm_loss, losses.damsm_loss):
        regions.grad = None
        vec = torch.ones(b, d, dtype=torch.float64)
        damsm_fn(regions, vec, words, vec, lengths, gamma1=cfg.gamma1, gamma2=cfg.gamma2, gamma3=cfg.gamma3).total.backward()
        grads.append(regions.grad.clone())
    assert_close_to_scale(grads[1], grads[0])


# --------------------------------------------------------------------------------------------- attention


def test_sdpa_equals_explicit_attention(seed):
    h = torch.randn(3, 8, 5, 6)
    words = torch.randn(3, 8, 7)
    mask = _mask([7, 2, 4], 7)
    explicit, beta = word_attention(h, words, mask, need_weights=True)
    fused, none = word_attention(h, words, mask, need_weights=False)
    assert none is None and beta.shape == (3, 7, 5, 6)
    assert_close_to_scale(fused, explicit)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_sdpa_runs_a_fused_cuda_kernel(seed):
    """On a GPU the word attention without maps must reach a fused kernel (3-D inputs fell back to the math
    kernel, which keeps the whole (B, Q, T) score tensor)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    h, words = torch.randn(3, 32, 16, 16, device="cuda"), torch.randn(3, 32, 7, device="cuda")
    mask = _mask([7, 2, 4], 7).cuda()
    explicit, _ = word_attention(h, words, mask, need_weights=True)
    with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION]):  # raises when no fused kernel takes the inputs
        fused, _ = word_attention(h, words, mask, need_weights=False)
    assert_close_to_scale(fused, explicit)


def test_generator_without_maps_equals_with_maps(seed, tiny_generator_config):
    g = Generator(tiny_generator_config).eval()
    d, t = tiny_generator_config.embed_dim, 6
    args = (
        torch.randn(2, tiny_generator_config.z_dim),
        torch.randn(2, d),
        torch.randn(2, d, t),
        _mask([6, 3], t),
    )
    noise = torch.randn(2, tiny_generator_config.condition_dim)
    with torch.no_grad():
        a = g(*args, ca_noise=noise, need_attention=True)
        b = g(*args, ca_noise=noise, need_attention=False)
    assert len(a.attention) == tiny_generator_config.num_stages - 1 and b.attention == []
    assert_close_to_scale(b.images, a.images)


# ------------------------------------------------------------------------------------- kernels, layout


@pytest.mark.parametrize("bias", [False, True])
def test_upsample_conv3x3_equals_upsample_then_conv(seed, bias):
    x = torch.randn(2, 5, 6, 7, dtype=torch.float64)
    w = torch.randn(4, 5, 3, 3, dtype=torch.float64)
    bvec = torch.randn(4, dtype=torch.float64) if bias else None
    plain = F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), w, bvec, padding=1)
    assert_close_to_scale(upsample_conv3x3(x, w, bvec), plain)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "bias"), [(4, 2, 1, False), (3, 1, 1, True), (4, 4, 0, True)]
)
def test_conv2d_matmul_equals_conv2d(seed, channels_last, kernel, stride, padding, bias):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(3, 6, 8, 8, dtype=torch.float64).contiguous(memory_format=fmt).requires_grad_()
    w = torch.randn(5, 6, kernel, kernel, dtype=torch.float64).contiguous(memory_format=fmt).requires_grad_()
    b = torch.randn(5, dtype=torch.float64, requires_grad=True) if bias else None
    ref = F.conv2d(x, w, b, stride=stride, padding=padding)
    out = conv2d_matmul(x, w, b, stride, padding)
    assert out.is_contiguous(memory_format=fmt)
    assert_close_to_scale(out, ref)
    g = torch.randn_like(ref)
    grads_ref = torch.autograd.grad(ref, [x, w], g)
    grads = torch.autograd.grad(out, [x, w], g)
    assert_close_to_scale(grads, grads_ref)


def test_conv2d_uses_matmul_only_for_small_outputs(seed, monkeypatch):
    import attngan.nn.layers as layers

    calls = []
    monkeypatch.setattr(
        layers, "conv2d_matmul", lambda *a: calls.append(a) or F.conv2d(a[0], a[1], a[2], a[3], a[4])
    )
    conv = Conv2d(4, 4, 4, 2, 1, bias=False)
    conv(torch.randn(1, 4, 16, 16))  # 8 x 8 = 64 output pixels, but the default is off
    assert calls == []
    conv.matmul_max_pixels = 64
    conv(torch.randn(1, 4, 16, 16))
    assert len(calls) == 1
    conv(torch.randn(1, 4, 32, 32))  # 256 output pixels: the direct kernel
    assert len(calls) == 1


def test_glu_keeps_channels_last_gradient(seed):
    x = torch.randn(2, 8, 5, 5).contiguous(memory_format=torch.channels_last).requires_grad_()
    y = x * 2  # a non-leaf, as inside a network (leaf gradients follow the leaf's layout anyway)
    grads = []
    y.register_hook(grads.append)
    out = GLU()(y)
    torch.testing.assert_close(out, y[:, :4] * torch.sigmoid(y[:, 4:]))
    out.backward(torch.ones_like(out))
    assert grads[0].is_contiguous(memory_format=torch.channels_last)


def _gen_inputs(cfg, b=3, t=6):
    gen = torch.Generator().manual_seed(3)
    return dict(
        z=torch.randn(b, cfg.z_dim, generator=gen),
        sentence=torch.randn(b, cfg.embed_dim, generator=gen),
        words=torch.randn(b, cfg.embed_dim, t, generator=gen),
        mask=_mask([6, 2, 4][:b], t),
        ca_noise=torch.randn(b, cfg.condition_dim, generator=gen),
    )


@pytest.mark.parametrize(("train", "sentinel"), [(False, False), (True, False), (True, True)])
def test_generator_fast_layout_equals_plain(seed, tiny_generator_config, train, sentinel):
    """channels_last + transposed-conv upsampling: same images, and in train mode the same gradients (also
    with the attention sentinel, generator.attention_sentinel)."""
    g = Generator(dataclasses.replace(tiny_generator_config, attention_sentinel=sentinel)).train(train)
    _randomize_bn(g)
    with torch.no_grad():
        for name, p in g.named_parameters():
            if "sentinel" in name:
                p.normal_()
    fast = set_fast_upsample(copy.deepcopy(g)).to(memory_format=torch.channels_last)
    kw = _gen_inputs(tiny_generator_config)
    a = g(kw["z"], kw["sentence"], kw["words"], kw["mask"], ca_noise=kw["ca_noise"])
    b = fast(kw["z"], kw["sentence"], kw["words"], kw["mask"], ca_noise=kw["ca_noise"])
    assert b.images[-1].is_contiguous(memory_format=torch.channels_last)
    assert_close_to_scale(b.images, a.images)
    assert_close_to_scale(b.attention, a.attention)
    if train:
        sum(i.square().sum() for i in a.images).backward()
        sum(i.square().sum() for i in b.images).backward()
        for (name, p), q in zip(g.named_parameters(), fast.parameters()):
            assert_close_to_scale(q.grad, p.grad, msg=name)


def test_fast_upsample_kernel_cache_follows_weight_updates(seed, tiny_generator_config):
    g = Generator(tiny_generator_config).eval()
    fast = set_fast_upsample(copy.deepcopy(g))
    kw = _gen_inputs(tiny_generator_config)
    args = (kw["z"], kw["sentence"], kw["words"], kw["mask"])
    for _ in range(2):  # the second time the weights have changed in place (as by an optimizer step)
        with torch.no_grad():
            a = g(*args, ca_noise=kw["ca_noise"]).images
            b = fast(*args, ca_noise=kw["ca_noise"]).images
            assert_close_to_scale(b, a)
            for m in (g, fast):
                m.h_net2.upsample[1].weight.mul_(-1.5)


@pytest.mark.parametrize("sentinel", [False, True])
def test_generator_folded_bn_equals_plain_in_eval(seed, tiny_generator_config, sentinel):
    g = Generator(dataclasses.replace(tiny_generator_config, attention_sentinel=sentinel)).eval()
    _randomize_bn(g)
    with torch.no_grad():
        for name, p in g.named_parameters():
            if "sentinel" in name:
                p.normal_()
    folded = set_fast_upsample(fold_batchnorm(g))
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    assert any(
        isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in g.modules()
    )  # original untouched
    kw = _gen_inputs(tiny_generator_config)
    with torch.no_grad():
        a = g(kw["z"], kw["sentence"], kw["words"], kw["mask"], ca_noise=kw["ca_noise"])
        b = folded(kw["z"], kw["sentence"], kw["words"], kw["mask"], ca_noise=kw["ca_noise"])
    assert_close_to_scale(b.images, a.images)
    assert_close_to_scale(b.attention, a.attention)


def test_discriminator_channels_last_equals_contiguous(seed, tiny_discriminator_configs):
    cfg = tiny_discriminator_configs[-1]
    d = Discriminator(cfg).train()
    dc = copy.deepcopy(d).to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, cfg.image_size, cfg.image_size)
    s = torch.randn(4, cfg.embed_dim)
    out = [
        losses.discriminator_loss(m, xi, xi.flip(0), s)
        for m, xi in ((d, x), (dc, x.contiguous(memory_format=torch.channels_last)))
    ]
    assert_close_to_scale(out[1].total, out[0].total)
    out[0].total.backward()
    out[1].total.backward()
    for p, q in zip(d.parameters(), dc.parameters()):
        assert_close_to_scale(q.grad, p.grad)


def test_inception_folded_bn_equals_plain(seed):
    enc = ImageEncoder(ImageEncoderConfig(backbone="inception", input_size=299)).eval()
    _randomize_bn(enc)
    folded = fold_batchnorm(enc).to(memory_format=torch.channels_last)
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        r0, g0 = enc(x)
        r1, g1 = folded(x.contiguous(memory_format=torch.channels_last))
    scale = r0.abs().max()
    torch.testing.assert_close(r1 / scale, r0 / scale, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(g1 / g0.abs().max(), g0 / g0.abs().max(), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------- whole steps


def _tiny_inception_preset():
    p = _tiny_preset()
    return dataclasses.replace(
        p, image_encoder=dataclasses.replace(p.image_encoder, backbone="inception", input_size=299)
    )


def test_gan_step_fast_equals_plain(bench):
    """One full AttnGAN iteration (D steps then the G step): same losses and same updated weights.

    (The small image encoder keeps this fast; folding the Inception BN is tested above.)
    """
    preset = _tiny_preset()
    device = torch.device("cpu")
    batch = bench.synthetic_batch(preset, 4, device, seed=0)
    fast_opts = dataclasses.replace(bench.fast_options(device), autocast=None)
    results = []
    for opts in (bench.PLAIN, fast_opts):
        step = bench.GANTrainStep(preset, opts, device, seed=0)
        torch.manual_seed(5)  # z and the CA noise
        out = step(batch)
        results.append((out, step))
    (out0, s0), (out1, s1) = results
    for k in out0:
        assert_close_to_scale(out1[k], out0[k], msg=k)
    tc = preset.gan_train
    for (name, p), q in zip(s0.generator.named_parameters(), s1.generator.parameters()):
        assert_close_to_scale(q, p, adam_lr=tc.g_lr, msg=name)
    for d0, d1 in zip(s0.discriminators, s1.discriminators):
        for p, q in zip(d0.parameters(), d1.parameters()):
            assert_close_to_scale(q, p, adam_lr=tc.d_lr)
    changed = any(not torch.equal(p, a) for p, a in zip(s0.generator.parameters(), s0.ema))
    assert changed  # the step really updated G (the EMA lags behind)


def test_damsm_step_fast_equals_plain(bench):
    preset = _tiny_inception_preset()
    device = torch.device("cpu")
    batch = bench.synthetic_batch(preset, 4, device, seed=0)
    fast_opts = dataclasses.replace(bench.fast_options(device), autocast=None)
    steps = []
    for opts in (bench.PLAIN, fast_opts):
        step = bench.DAMSMTrainStep(preset, opts, device, seed=0)
        torch.manual_seed(7)  # dropout of the text encoder
        steps.append((step(batch), step))
    (o0, s0), (o1, s1) = steps
    assert_close_to_scale(o1, o0)  # L_DAMSM and its four terms
    lr = preset.damsm_train.lr
    for p, q in zip(s0.image_encoder.emb_features.parameters(), s1.image_encoder.emb_features.parameters()):
        assert_close_to_scale(q, p, adam_lr=lr)
    for p, q in zip(s0.text_encoder.parameters(), s1.text_encoder.parameters()):
        assert_close_to_scale(q, p, adam_lr=lr)


def test_sampler_fast_equals_plain(bench):
    preset = _tiny_preset()
    device = torch.device("cpu")
    batch = bench.synthetic_batch(preset, 2, device, seed=0)
    outs = []
    for opts in (bench.PLAIN, bench.fast_options(device)):
        sampler = bench.Sampler(preset, dataclasses.replace(opts, autocast=None), device, seed=0)
        torch.manual_seed(9)
        outs.append(sampler(batch))
    assert len(outs[0][1]) == preset.generator.num_stages - 1
    assert_close_to_scale(outs[1][0], outs[0][0])
    assert_close_to_scale(outs[1][1], outs[0][1])


def test_parse_options(bench):
    device = torch.device("cpu")
    assert bench.parse_options("plain", device) == bench.PLAIN
    opts = bench.parse_options("channels_last,autocast=bf16", device)
    assert opts.channels_last and opts.autocast == "bf16" and not opts.fused_attention
    with pytest.raises(ValueError, match="unknown option"):
        bench.parse_options("warp_speed", device)


@pytest.mark.parametrize("batch", [3, 1])
@pytest.mark.parametrize("unconditional", [True, False])
@pytest.mark.parametrize("fast_layout", [False, True])
def test_discriminator_joint_batches_equal_separate_calls(seed, batch, unconditional, fast_layout):
    """Eq. 5 with real, fake (and mismatched) images in one pass and per-part BatchNorm: the same loss
    terms, weight gradients, running statistics and BatchNorm counters as the separate calls."""
    cfg = DiscriminatorConfig(df_dim=4, embed_dim=6, image_size=128, unconditional=unconditional)
    d = Discriminator(cfg).double().train()
    with torch.no_grad():  # non-trivial running statistics, so that their update is checked
        for m in d.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    memory_format = torch.channels_last if fast_layout else torch.contiguous_format
    joint = copy.deepcopy(d).to(memory_format=memory_format)
    if fast_layout:
        set_matmul_conv(joint)
    real = torch.randn(batch, 3, 128, 128, dtype=torch.float64)
    fake = torch.randn(batch, 3, 128, 128, dtype=torch.float64).requires_grad_(True)
    s = torch.randn(batch, 6, dtype=torch.float64)
    a = losses.discriminator_loss(d, real, fake, s)
    b = losses.discriminator_loss(
        joint, real.contiguous(memory_format=memory_format), fake.contiguous(memory_format=memory_format), s,
        joint_batches=True,
    )  # fmt: skip
    for name in ("total", "real_cond", "fake_cond", "wrong_cond", "real_uncond", "fake_uncond"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert_close_to_scale(y, x, msg=name)
    a.total.backward()
    b.total.backward()
    assert fake.grad is None
    for (name, p), q in zip(d.named_parameters(), joint.parameters()):
        assert_close_to_scale(q.grad, p.grad, msg=name)
    for (name, x), y in zip(d.named_buffers(), joint.buffers()):
        assert_close_to_scale(y, x, msg=name)
    counts = {int(t) for n, t in d.named_buffers() if n.endswith("num_batches_tracked")}
    assert counts == ({2, 3} if batch > 1 else {2})  # D trunk: real + fake; conditional head: + mismatched


def test_batchnorm_groups_must_cover_the_batch(seed):
    bn = BatchNorm2d(3).train()
    with batch_groups(bn, (2, 2)), pytest.raises(ValueError, match="do not add up"):
        bn(torch.randn(5, 3, 2, 2))
    with batch_groups(bn, (2, 3)):
        y = bn(torch.randn(5, 3, 2, 2))
    assert bn.group_sizes is None and y.shape == (5, 3, 2, 2)


@pytest.mark.parametrize("need_attention", [True, False])
def test_padding_the_words_to_a_fixed_count_changes_nothing(seed, tiny_generator_config, need_attention):
    """gan.pad_words (used with gan_train.compile): extra zero, masked words leave G's images, its
    gradients and the DAMSM word and sentence losses unchanged."""
    from attngan.config import DAMSMLossConfig
    from attngan.data.base import Batch
    from attngan.training.gan import pad_words
    from attngan.training.loss import TextFeatures, _damsm_terms

    cfg = tiny_generator_config
    g = Generator(cfg).train()
    kw = _gen_inputs(cfg, b=3, t=6)
    lengths = (~kw["mask"]).sum(1)
    batch = Batch(
        images=[torch.zeros(3, 3, s, s) for s in cfg.image_sizes], captions=torch.ones(3, 6, dtype=torch.long),
        lengths=lengths, mask=kw["mask"], class_ids=torch.arange(3),
    )  # fmt: skip
    padded_batch, padded = pad_words(batch, TextFeatures(kw["words"], kw["sentence"]), 10)
    assert padded.words.shape[2] == 10 and padded_batch.mask.shape == (3, 10) and padded_batch.mask[:, 6:].all()

    def run(words, mask):
        g.zero_grad()
        torch.manual_seed(1)
        out = g(kw["z"], kw["sentence"], words, mask, ca_noise=kw["ca_noise"], need_attention=need_attention)
        regions = out.images[-1].mean(1, keepdim=True).expand(-1, cfg.embed_dim, -1, -1)[:, :, :4, :4]
        term = _damsm_terms(regions, out.images[-1].flatten(1)[:, : cfg.embed_dim], words, kw["sentence"], lengths,
                            None, DAMSMLossConfig())  # fmt: skip
        (term.total + sum(i.square().sum() for i in out.images)).backward()
        return [i.detach() for i in out.images], term.total.detach(), [p.grad.clone() for p in g.parameters()]

    def check(got, ref):  # 6 words against 10 with 4 masked: other reduction shapes, so float rounding differs
        assert_close_to_scale(got[0], ref[0], msg="images")
        assert_close_to_scale(got[1], ref[1], msg="DAMSM terms")
        assert_close_to_scale(got[2], ref[2], msg="gradients")

    ref = run(kw["words"], kw["mask"])
    check(run(padded.words, padded_batch.mask), ref)
    leaked = padded_batch.mask.clone()
    leaked[:, 6:] = False  # the padded words are attended: the comparison must see it
    with pytest.raises(AssertionError):
        check(run(padded.words, leaked), ref)


def test_fast_upsample_kernel_cache_survives_leaving_autocast(seed, tiny_generator_config):
    # The cached kernel was once composed in bf16 under autocast and then failed against float32 inputs.
    from attngan.nn import Generator
    from attngan.nn.fast import set_fast_upsample

    g = set_fast_upsample(Generator(tiny_generator_config).eval())
    b, t = 2, 5
    words, sentence = torch.randn(b, tiny_generator_config.embed_dim, t), torch.randn(b, tiny_generator_config.embed_dim)
    mask = torch.zeros(b, t, dtype=torch.bool)
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            g(None, sentence, words, mask)
        out = g(None, sentence, words, mask)
    assert out.images[-1].dtype == torch.float32
