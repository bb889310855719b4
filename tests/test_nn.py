"""Networks: shapes, masks, variable lengths, any stage count, gradients, and the original state dicts.

References: the paper's Sec. 3 (Eq. 1-2, 6) and reference/original-attngan.md section 2; the key names and
shapes of the original release are read from reference/original-state-dicts.txt.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from attngan import losses
from attngan.config import DiscriminatorConfig, GeneratorConfig, ImageEncoderConfig, TextEncoderConfig
from attngan.nn import Discriminator, Generator, ImageEncoder, TextEncoder, set_legacy_mask_bug
from tolerance import assert_close_to_scale

STATE_DICTS = Path("/work/shared/reference/original-state-dicts.txt")


def _mask(lengths: list[int], t: int) -> torch.Tensor:
    return torch.arange(t)[None, :] >= torch.tensor(lengths)[:, None]  # (B, T) True at padding


def _captions(lengths: list[int], t: int, vocab: int) -> torch.Tensor:
    caps = torch.randint(1, vocab, (len(lengths), t))
    return caps.masked_fill(_mask(lengths, t), 0)  # zero-padded word ids


# ---------------------------------------------------------------------------------------------------
# TextEncoder


@pytest.fixture
def text_encoder(seed, tiny_text_config) -> TextEncoder:
    return TextEncoder(tiny_text_config).eval()


def test_text_encoder_padding_is_zero_and_t_is_kept(text_encoder, tiny_text_config):
    lengths, t = [3, 7, 5, 1], 9  # unsorted; T larger than the longest caption
    words, sentence = text_encoder(_captions(lengths, t, tiny_text_config.vocab_size), torch.tensor(lengths))
    assert words.shape == (4, tiny_text_config.embed_dim, t)
    assert sentence.shape == (4, tiny_text_config.embed_dim)
    for b, n in enumerate(lengths):
        assert torch.all(words[b, :, n:] == 0), "word features must be exactly zero at padded steps"
        assert torch.all(words[b, :, :n].abs().sum(0) > 0)


def test_text_encoder_is_independent_of_the_batch(text_encoder, tiny_text_config):
    lengths, t = [3, 7, 5, 1, 7], 8
    caps = _captions(lengths, t, tiny_text_config.vocab_size)
    words, sentence = text_encoder(caps, torch.tensor(lengths))
    for b, n in enumerate(lengths):  # each caption alone, at its own length
        w1, s1 = text_encoder(caps[b : b + 1, :n], torch.tensor([n]))
        assert_close_to_scale(words[b : b + 1, :, :n], w1)
        assert_close_to_scale(sentence[b : b + 1], s1)
    perm = torch.tensor([4, 2, 0, 3, 1])
    w_p, s_p = text_encoder(caps[perm], torch.tensor(lengths)[perm])
    assert_close_to_scale(w_p, words[perm])
    assert_close_to_scale(s_p, sentence[perm])


def _manual_lstm(x: torch.Tensor, rnn: torch.nn.LSTM, suffix: str) -> torch.Tensor:
    """One LSTM direction with the textbook cell equations; x (L, in) -> hidden states (L, H)."""
    w_ih, w_hh = getattr(rnn, f"weight_ih_l0{suffix}"), getattr(rnn, f"weight_hh_l0{suffix}")
    b_ih, b_hh = getattr(rnn, f"bias_ih_l0{suffix}"), getattr(rnn, f"bias_hh_l0{suffix}")
    hidden = w_hh.shape[1]
    h = torch.zeros(hidden, dtype=x.dtype)
    c = torch.zeros(hidden, dtype=x.dtype)
    out = torch.zeros(x.shape[0], hidden, dtype=x.dtype)
    steps = range(x.shape[0] - 1, -1, -1) if suffix else range(x.shape[0])
    for s in steps:
        gates = w_ih @ x[s] + b_ih + w_hh @ h + b_hh
        i, f, g, o = gates.chunk(4)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        out[s] = h
    return out


@torch.no_grad()
def test_text_encoder_matches_a_manual_bilstm(text_encoder, tiny_text_config):
    """e_t = [fwd_t || bwd_t]; e-bar = [fwd at the last true word || bwd at position 0] (Sec. 3.2)."""
    enc = text_encoder.double()
    lengths, t = [4, 6, 2], 6
    caps = _captions(lengths, t, tiny_text_config.vocab_size)
    words, sentence = enc(caps, torch.tensor(lengths))
    half = tiny_text_config.embed_dim // 2
    for b, n in enumerate(lengths):
        x = enc.encoder.weight[caps[b, :n]]  # (n, word_dim), no dropout in eval mode
        fwd = _manual_lstm(x, enc.rnn, "")
        bwd = _manual_lstm(x, enc.rnn, "_reverse")
        torch.testing.assert_close(words[b, :half, :n].t(), fwd, rtol=0, atol=1e-12)
        torch.testing.assert_close(words[b, half:, :n].t(), bwd, rtol=0, atol=1e-12)
        torch.testing.assert_close(sentence[b], torch.cat([fwd[n - 1], bwd[0]]), rtol=0, atol=1e-12)


def test_text_encoder_rejects_bad_lengths(text_encoder):
    with pytest.raises(ValueError):
        text_encoder(torch.ones(2, 4, dtype=torch.long), torch.tensor([0, 3]))
    with pytest.raises(ValueError):
        text_encoder(torch.ones(2, 4, dtype=torch.long), torch.tensor([5, 3]))


# ---------------------------------------------------------------------------------------------------
# ImageEncoder


def test_small_image_encoder_shapes_and_resize(seed, tiny_image_config):
    cfg = tiny_image_config
    enc = ImageEncoder(cfg).eval()
    grid = cfg.input_size // 2**cfg.small_blocks
    regions, glob = enc(torch.rand(2, 3, cfg.input_size, cfg.input_size) * 2 - 1)
    assert regions.shape == (2, cfg.embed_dim, grid, grid) and glob.shape == (2, cfg.embed_dim)
    x = torch.rand(2, 3, 24, 24) * 2 - 1
    r24, g24 = enc(x)
    r_ref, g_ref = enc(F.interpolate(x, size=(cfg.input_size,) * 2, mode="bilinear", align_corners=True))
    assert_close_to_scale(r24, r_ref)
    assert_close_to_scale(g24, g_ref)
    assert all(p.requires_grad for p in enc.parameters()), "the small backbone is trained"


def test_small_image_encoder_depth_adds_stride_one_convs_and_keeps_the_grid(seed, tiny_image_config):
    """small_depth: each stride-2 block is followed by depth - 1 stride-1 3x3 convs; the region grid, the
    output widths and (at depth 1) the state dict's keys stay those of the plain backbone."""
    import dataclasses

    from attngan.nn.encoders import SmallBackbone

    cfg = tiny_image_config
    plain, deep = ImageEncoder(dataclasses.replace(cfg, small_depth=1)), ImageEncoder(dataclasses.replace(cfg, small_depth=3))
    conv_keys = [k for k, v in plain.state_dict().items() if k.startswith("small.features.") and v.dim() == 4]
    assert conv_keys == [f"small.features.{3 * i}.weight" for i in range(cfg.small_blocks)]  # the keys of saved encoders
    convs = [m for m in deep.small.features if isinstance(m, torch.nn.Conv2d)]
    assert [(c.kernel_size, c.stride) for c in convs] == [((4, 4), (2, 2)), ((3, 3), (1, 1)), ((3, 3), (1, 1))] * cfg.small_blocks
    grid = cfg.input_size // 2**cfg.small_blocks
    regions, glob = deep.eval()(torch.rand(2, 3, cfg.input_size, cfg.input_size) * 2 - 1)
    assert regions.shape == (2, cfg.embed_dim, grid, grid) and glob.shape == (2, cfg.embed_dim)
    with pytest.raises(ValueError, match="depth"):
        SmallBackbone(8, 2, depth=0)


def test_small_image_encoder_resize_antialias_reads_images_as_pil_shrinks_them(seed, tiny_image_config):
    """resize_antialias: an image twice input_size is shrunk as PIL's bilinear resize (the dataset's own) does,
    averaging every pixel; without it, the original's align_corners=True bilinear sampling."""
    import numpy as np
    from PIL import Image

    cfg = tiny_image_config
    size = cfg.input_size
    aa = ImageEncoder(dataclasses.replace(cfg, resize_antialias=True)).eval()
    plain = ImageEncoder(dataclasses.replace(cfg, resize_antialias=False)).eval()
    plain.load_state_dict(aa.state_dict())
    x = torch.rand(2, 3, 2 * size, 2 * size) * 2 - 1
    # Independent reference: PIL's bilinear resize (float 'F' images, one channel at a time).
    shrunk = torch.tensor(
        np.stack([
            np.stack([np.asarray(Image.fromarray(c.numpy(), mode="F").resize((size, size), Image.BILINEAR)) for c in img])
            for img in x
        ])
    )  # fmt: skip
    with torch.no_grad():
        assert_close_to_scale(aa(x), aa(shrunk))
        # The original's resize is another image: its features differ by far more than rounding.
        assert (plain(x)[0] - aa(x)[0]).abs().max() > 100 * (aa(x)[0].abs().max() * 1.2e-4)

@pytest.fixture(scope="module")
def inception_encoder() -> ImageEncoder:
    torch.manual_seed(0)
    return ImageEncoder(ImageEncoderConfig(embed_dim=8)).eval()  # random init, no download


def test_inception_image_encoder(inception_encoder):
    """64 px input: bilinear resize to 299 with align_corners=True, 17 x 17 regions, frozen backbone."""
    enc = inception_encoder
    backbone = [p for n, p in enc.named_parameters() if not n.startswith("emb_")]
    assert backbone and not any(p.requires_grad for p in backbone)
    torch.manual_seed(1)
    x = (torch.rand(1, 3, 64, 64) * 2 - 1).requires_grad_(True)
    regions, glob = enc(x)
    assert regions.shape == (1, 8, 17, 17) and glob.shape == (1, 8)
    with torch.no_grad():
        resized = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=True)
        r_ref, g_ref = enc(resized)  # a 299 input is used as it is
        r_other, _ = enc(F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False))
    # Random-init Inception gives tiny activations: compare relative to their scale.
    r_scale, g_scale = float(r_ref.abs().max()), float(g_ref.abs().max())
    assert_close_to_scale(regions / r_scale, r_ref / r_scale)
    assert_close_to_scale(glob / g_scale, g_ref / g_scale)
    other = float((r_other - r_ref).abs().max()) / r_scale
    assert other > 1e-2, "align_corners must matter for this check to mean anything"
    (regions.sum() + glob.sum()).backward()
    assert all(p.grad is None for p in backbone), "no gradient may reach the frozen Inception"
    assert enc.emb_features.weight.grad is not None and enc.emb_cnn_code.weight.grad is not None
    assert x.grad is not None and x.grad.abs().sum() > 0, "the DAMSM loss must reach G through the encoder"
    enc.emb_features.weight.grad = enc.emb_cnn_code.weight.grad = enc.emb_cnn_code.bias.grad = None


def test_inception_backbone_stays_in_eval_mode(inception_encoder):
    enc = inception_encoder
    try:
        enc.train()
        assert not enc.Mixed_6e.training and not enc.Conv2d_1a_3x3.bn.training
        assert enc.emb_features.training
    finally:
        enc.eval()


def test_inception_backbone_weights_are_a_state_dict(inception_encoder):
    """nn/ does no I/O: the backbone comes as a state dict; names and files are resolved by the caller."""
    state = {k: v + 1 for k, v in inception_encoder.state_dict().items() if not k.startswith("emb_")}
    enc = ImageEncoder(ImageEncoderConfig(embed_dim=8), backbone_weights={**state, "fc.weight": torch.ones(1)})
    assert torch.equal(enc.Mixed_6e.branch1x1.conv.weight, state["Mixed_6e.branch1x1.conv.weight"])
    with pytest.raises(TypeError, match="inception_weights_state"):
        ImageEncoder(ImageEncoderConfig(embed_dim=8), backbone_weights="imagenet")


# ---------------------------------------------------------------------------------------------------
# Generator


def _text_inputs(lengths: list[int], t: int, d: int):
    words = torch.randn(len(lengths), d, t).masked_fill(_mask(lengths, t)[:, None, :], 0.0)  # (B, D, T)
    return torch.randn(len(lengths), d), words, _mask(lengths, t)


@pytest.mark.parametrize(("num_stages", "base_size"), [(1, 16), (2, 16), (3, 16), (2, 32)])
def test_generator_shapes_and_attention(seed, tiny_generator_config, num_stages, base_size):
    cfg = dataclasses.replace(tiny_generator_config, num_stages=num_stages, base_size=base_size)
    g = Generator(cfg)
    lengths, t = [6, 2, 4], 6
    sentence, words, mask = _text_inputs(lengths, t, cfg.embed_dim)
    out = g(None, sentence, words, mask, generator=torch.Generator().manual_seed(0))
    sizes = [base_size * 2**i for i in range(num_stages)]
    assert [tuple(x.shape) for x in out.images] == [(3, 3, s, s) for s in sizes]
    assert all(x.abs().max() <= 1 for x in out.images)
    # The attention of stage i+1 is computed on h_i, at the size of image i (original att_maps).
    assert [tuple(a.shape) for a in out.attention] == [(3, t, s, s) for s in sizes[:-1]]
    for a in out.attention:
        for b, n in enumerate(lengths):
            torch.testing.assert_close(a[b, :n].sum(0), torch.ones(a.shape[2:]))
            assert torch.all(a[b, n:] == 0)
    assert out.mu.shape == out.logvar.shape == (3, cfg.condition_dim)


def test_generator_attention_sentinel_setting(seed, tiny_generator_config):
    """generator.attention_sentinel: one learned vector per attention stage; the words' maps then sum to less
    than 1 at every region (the rest went to the sentinel); padded words still get 0."""
    cfg = dataclasses.replace(tiny_generator_config, num_stages=3, attention_sentinel=True)
    g = Generator(cfg)
    assert sorted(k for k in g.state_dict() if "sentinel" in k) == [
        "h_net2.att.sentinel", "h_net2.att.sentinel_logit", "h_net3.att.sentinel", "h_net3.att.sentinel_logit"
    ]
    assert not [k for k in Generator(tiny_generator_config).state_dict() if "sentinel" in k]
    with torch.no_grad():
        for name, p in g.named_parameters():
            if name.endswith("sentinel"):
                p.normal_()
    lengths, t = [5, 2], 5
    sentence, words, mask = _text_inputs(lengths, t, cfg.embed_dim)
    out = g(None, sentence, words, mask, generator=torch.Generator().manual_seed(0))
    for a in out.attention:
        for b, n in enumerate(lengths):
            assert torch.all(a[b, :n].sum(0) < 1) and torch.all(a[b, :n].sum(0) > 0)
            assert torch.all(a[b, n:] == 0)
    fused = g(None, sentence, words, mask, generator=torch.Generator().manual_seed(0), need_attention=False)
    assert_close_to_scale(fused.images[-1], out.images[-1])


def test_generator_init_dim_sets_the_width_of_the_first_stage(seed, tiny_generator_config):
    """generator.init_dim: F_0's 4 x 4 map has that many channels, each up-block halves them and the last one
    maps to gf_dim; 0 keeps the original's gf_dim * 2**k (ngf * 16 for birds)."""
    assert Generator(GeneratorConfig(gf_dim=32, base_size=64)).h_net1.in_dim == 512
    cfg = dataclasses.replace(tiny_generator_config, base_size=32, init_dim=96)  # 3 up-blocks: 96 -> 48 -> 24 -> gf
    g = Generator(cfg)
    widths = [(m[1].in_channels, m[1].out_channels // 2) for m in (g.h_net1.upsample1, g.h_net1.upsample2, g.h_net1.upsample3)]
    assert widths == [(96, 48), (48, 24), (24, cfg.gf_dim)]
    sentence, words, mask = _text_inputs([3, 2], 3, cfg.embed_dim)
    out = g(None, sentence, words, mask, generator=torch.Generator().manual_seed(0))
    assert [tuple(x.shape[-2:]) for x in out.images] == [(32, 32), (64, 64)]
    with pytest.raises(ValueError, match="init_dim"):
        dataclasses.replace(tiny_generator_config, init_dim=-1)


def test_generator_reproducibility(seed, tiny_generator_config):
    cfg = tiny_generator_config
    g = Generator(cfg).eval()
    sentence, words, mask = _text_inputs([5, 3], 5, cfg.embed_dim)

    def run(**kw):
        return g(kw.pop("z", None), sentence, words, mask, **kw).images[-1]

    a = run(generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, run(generator=torch.Generator().manual_seed(7)))
    assert not torch.allclose(a, run(generator=torch.Generator().manual_seed(8)))
    # z is drawn first, then the CA noise, both from the given generator.
    gen = torch.Generator().manual_seed(7)
    z = torch.randn(2, cfg.z_dim, generator=gen)
    eps = torch.randn(2, cfg.condition_dim, generator=gen)
    torch.manual_seed(123)
    b = run(z=z, ca_noise=eps)
    torch.manual_seed(456)
    assert torch.equal(b, run(z=z, ca_noise=eps)), "given z and noise, the global RNG must not matter"
    assert_close_to_scale(a, b)
    # ca_mean: c = mu, deterministic, the same as zero CA noise.
    torch.manual_seed(1)
    m1 = run(z=z, ca_mean=True)
    torch.manual_seed(2)
    assert torch.equal(m1, run(z=z, ca_mean=True))
    assert_close_to_scale(m1, run(z=z, ca_noise=torch.zeros(2, cfg.condition_dim)))
    assert not torch.allclose(m1, b)


def test_generator_without_ca_sampling_conditions_on_mu(seed, tiny_generator_config):
    """``ca_sample=False`` (not in the paper): c = mu whatever the CA noise, the same as ``ca_mean=True``."""
    g = Generator(tiny_generator_config).eval()
    plain = Generator(dataclasses.replace(tiny_generator_config, ca_sample=False)).eval()
    plain.load_state_dict(g.state_dict())  # same parameters: the setting adds none
    sentence, words, mask = _text_inputs([5, 3], 5, tiny_generator_config.embed_dim)
    z = torch.randn(2, tiny_generator_config.z_dim)
    eps1, eps2 = torch.randn(2, tiny_generator_config.condition_dim), torch.randn(2, tiny_generator_config.condition_dim)
    a = plain(z, sentence, words, mask, ca_noise=eps1).images[-1]
    assert torch.equal(a, plain(z, sentence, words, mask, ca_noise=eps2).images[-1])
    assert torch.equal(a, g(z, sentence, words, mask, ca_mean=True).images[-1])
    assert not torch.allclose(a, g(z, sentence, words, mask, ca_noise=eps1).images[-1])  # sampling differs


def test_generator_conditioning_augmentation_and_input_order(seed, tiny_generator_config):
    """h_0 = F_0(z, F^ca(e-bar)): c = mu + eps * exp(logvar / 2), fed as cat(c, z) (the original's order)."""
    cfg = tiny_generator_config
    g = Generator(cfg)
    sentence, words, mask = _text_inputs([3, 2], 3, cfg.embed_dim)
    z, eps = torch.randn(2, cfg.z_dim), torch.randn(2, cfg.condition_dim)
    seen = []
    hook = g.h_net1.fc[0].register_forward_hook(lambda mod, args, out: seen.append(args[0].detach()))
    try:
        out = g(z, sentence, words, mask, ca_noise=eps)
    finally:
        hook.remove()
    mu_logvar = g.ca_net.fc(sentence)  # GLU: first half * sigmoid(second half) -> (mu, logvar)
    glu = mu_logvar[:, : 2 * cfg.condition_dim] * torch.sigmoid(mu_logvar[:, 2 * cfg.condition_dim :])
    torch.testing.assert_close(out.mu, glu[:, : cfg.condition_dim])
    torch.testing.assert_close(out.logvar, glu[:, cfg.condition_dim :])
    c = out.mu + eps * torch.exp(0.5 * out.logvar)
    assert_close_to_scale(seen[0], torch.cat([c, z], dim=1))


def test_generator_fused_attention_and_legacy_mask(seed, tiny_generator_config):
    g = Generator(dataclasses.replace(tiny_generator_config, num_stages=3)).eval()
    sentence, words, mask = _text_inputs([5, 2, 3], 5, tiny_generator_config.embed_dim)
    z = torch.randn(3, tiny_generator_config.z_dim)
    explicit = g(z, sentence, words, mask, ca_mean=True)
    fused = g(z, sentence, words, mask, ca_mean=True, need_attention=False)
    assert fused.attention == []
    for a, b in zip(fused.images, explicit.images, strict=True):
        assert_close_to_scale(a, b)
    legacy = set_legacy_mask_bug(g)(z, sentence, words, mask, ca_mean=True)
    assert g.h_net2.att.legacy_mask_bug and g.h_net3.att.legacy_mask_bug
    fixed = set_legacy_mask_bug(g, False)(z, sentence, words, mask, ca_mean=True)
    assert torch.equal(fixed.images[-1], explicit.images[-1])  # switched back
    assert not torch.allclose(legacy.images[-1], explicit.images[-1], atol=1e-6)
    torch.testing.assert_close(
        legacy.images[0], explicit.images[0], rtol=0, atol=0
    )  # no attention in stage 0


def test_generator_dcgan_variant(seed, tiny_generator_config):
    cfg = dataclasses.replace(tiny_generator_config, num_stages=3, res_blocks=0, dcgan=True)
    g = Generator(cfg)
    assert hasattr(g, "img_net") and not hasattr(g, "img_net1")
    sentence, words, mask = _text_inputs([4, 2], 4, cfg.embed_dim)
    out = g(None, sentence, words, mask)
    assert len(out.images) == 1 and out.images[0].shape == (2, 3, 64, 64)
    assert [tuple(a.shape) for a in out.attention] == [(2, 4, 16, 16), (2, 4, 32, 32)]


def test_generator_rejects_bad_shapes(tiny_generator_config):
    g = Generator(tiny_generator_config)
    d = tiny_generator_config.embed_dim
    with pytest.raises(ValueError):
        g(None, torch.randn(2, d), torch.randn(2, d + 1, 4), None)
    with pytest.raises(ValueError):
        g(None, torch.randn(2, d), torch.randn(2, d, 4), torch.zeros(2, 5, dtype=torch.bool))


# ---------------------------------------------------------------------------------------------------
# Discriminator


@pytest.mark.parametrize("size", [16, 32, 64, 128])
@pytest.mark.parametrize("unconditional", [True, False])
def test_discriminator_shapes(seed, size, unconditional):
    d = Discriminator(
        DiscriminatorConfig(df_dim=4, embed_dim=16, image_size=size, unconditional=unconditional)
    )
    feats = d(torch.randn(2, 3, size, size))
    assert feats.shape == (2, 32, 4, 4)
    uncond, cond = d.logits(feats, torch.randn(2, 16))
    assert cond.shape == (2,)
    assert (uncond is None) if not unconditional else uncond.shape == (2,)
    with pytest.raises(ValueError):
        d(torch.randn(2, 3, size * 2, size * 2))


# ---------------------------------------------------------------------------------------------------
# Gradients of the full generator objective (Eq. 3 + KL)


def test_generator_objective_gradients(
    seed, tiny_text_config, tiny_image_config, tiny_generator_config, tiny_discriminator_configs
):
    text_enc = TextEncoder(tiny_text_config).eval().requires_grad_(False)
    image_enc = ImageEncoder(tiny_image_config).eval().requires_grad_(False)
    g = Generator(tiny_generator_config)
    discs = [Discriminator(c) for c in tiny_discriminator_configs]
    lengths, t = [5, 2, 4, 3], 5
    caps = _captions(lengths, t, tiny_text_config.vocab_size)
    words, sentence = text_enc(caps, torch.tensor(lengths))
    out = g(None, sentence, words, _mask(lengths, t))
    loss = sum(losses.generator_stage_loss(d, x, sentence) for d, x in zip(discs, out.images, strict=True))
    regions, img_vec = image_enc(out.images[-1])
    damsm = losses.damsm_loss(
        regions, img_vec, words, sentence, torch.tensor(lengths), gamma1=4.0, gamma2=5.0, gamma3=10.0
    )
    loss = loss + 5.0 * damsm.total + losses.kl_loss(out.mu, out.logvar)
    loss.backward()
    no_grad = [n for n, p in g.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not no_grad, f"parameters of G without gradient: {no_grad}"
    assert all(p.grad is None for p in text_enc.parameters())
    assert all(p.grad is None for p in image_enc.parameters())


# ---------------------------------------------------------------------------------------------------
# State dicts of the original release (reference/original-state-dicts.txt)

_KEY_LINE = re.compile(r"^(\S+)\s+\(([\d,\s]*)\)\s+(param|buffer\*?)\s*$")


def _parse_state_dicts(path: Path) -> dict[str, dict]:
    """{section title: {"keys": {name: (shape, kind)}, "comments": [lines starting with '#']}}."""
    sections: dict[str, dict] = {}
    current = None
    for line in path.read_text().splitlines():
        if line.startswith("## "):
            current = sections.setdefault(line[3:].strip(), {"keys": {}, "comments": []})
        elif current is not None and line.startswith("#"):
            current["comments"].append(line)
        elif current is not None and (m := _KEY_LINE.match(line.strip())):
            shape = tuple(int(s) for s in m.group(2).replace(" ", "").split(",") if s)
            current["keys"][m.group(1)] = (shape, m.group(3))
    return sections


@pytest.fixture(scope="module")
def original() -> dict[str, dict]:
    if not STATE_DICTS.exists():
        pytest.skip(f"{STATE_DICTS} not available")
    return _parse_state_dicts(STATE_DICTS)


def _section(original: dict[str, dict], prefix: str) -> dict:
    (title,) = [t for t in original if t.startswith(prefix)]
    return original[title]


def _param_count(section: dict) -> int:
    m = re.search(r"parameters: \d+ tensors, (\d+) scalars", " ".join(section["comments"]))
    assert m, section["comments"]
    return int(m.group(1))


@pytest.fixture(scope="module")
def big_models() -> dict[str, torch.nn.Module]:
    """The original-sized networks, built on the meta device (same names and shapes, no memory, fast)."""
    with torch.device("meta"):
        models = {
            "RNN_ENCODER": TextEncoder(TextEncoderConfig(vocab_size=5450)),
            "CNN_ENCODER": ImageEncoder(ImageEncoderConfig()),
            "G_NET birds": Generator(GeneratorConfig()),
            "G_NET coco": Generator(GeneratorConfig(gf_dim=48, res_blocks=3)),
            "G_DCGAN birds": Generator(GeneratorConfig(res_blocks=0, dcgan=True)),
        }
        for i, size in enumerate((64, 128, 256)):
            models[f"D_NET{size} birds"] = Discriminator(DiscriminatorConfig(df_dim=64, image_size=size))
            models[f"coco D{i}"] = Discriminator(DiscriminatorConfig(df_dim=96, image_size=size))
        models["dcgan D"] = Discriminator(DiscriminatorConfig(df_dim=64, image_size=256, unconditional=False))
    return models


def _n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    "name",
    ["RNN_ENCODER", "CNN_ENCODER", "G_NET birds", "G_NET coco", "G_DCGAN birds"]
    + [f"D_NET{s} birds" for s in (64, 128, 256)],
)
def test_state_dict_matches_original(original, big_models, name):
    expected = _section(original, name)
    model = big_models[name]
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: shape for k, (shape, _) in expected["keys"].items()}
    assert not set(theirs) - set(ours), f"missing keys: {sorted(set(theirs) - set(ours))}"
    assert not set(ours) - set(theirs), f"extra keys: {sorted(set(ours) - set(theirs))}"
    bad = {k: (ours[k], theirs[k]) for k in theirs if ours[k] != theirs[k]}
    assert not bad, f"shape differences (ours, original): {bad}"
    params = {k for k, (_, kind) in expected["keys"].items() if kind == "param"}
    assert {n for n, _ in model.named_parameters()} == params
    assert _n_params(model) == _param_count(expected)


def test_original_parameter_counts_of_other_discriminators(original, big_models):
    comments = " ".join(c for s in original.values() for c in s["comments"])
    for i, size in enumerate((64, 128, 256)):
        m = re.search(rf"coco D_NET{size} \(DF_DIM=96\): (\d+) parameters", comments)
        assert m and _n_params(big_models[f"coco D{i}"]) == int(m.group(1))
    m = re.search(r"DCGAN variant uses a single D_NET256.*?: (\d+) parameters", comments)
    assert m and _n_params(big_models["dcgan D"]) == int(m.group(1))
    d256 = {k for k in _section(original, "D_NET256 birds")["keys"] if not k.startswith("UNCOND_DNET.")}
    assert set(big_models["dcgan D"].state_dict()) == d256


def test_inception_weights_that_cannot_be_had_say_what_to_do(tmp_path):
    import urllib.error

    from attngan.checkpoint import inception_weights_state
    from attngan.errors import CheckpointError

    with pytest.raises(CheckpointError, match="nope.pth does not exist"):
        inception_weights_state(tmp_path / "nope.pth")

    class Offline:  # a torchvision WeightsEnum member without internet
        url = "https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth"

        def get_state_dict(self, progress=True):
            raise urllib.error.URLError("Name or service not known")

    with pytest.raises(CheckpointError, match=r"URLError.*hub.*checkpoints/inception_v3_google-0cc3c7bd\.pth.*FILE"):
        inception_weights_state(Offline())
    state = {"Conv2d_1a_3x3.conv.weight": torch.ones(2)}
    torch.save(state, tmp_path / "w.pth")
    assert torch.equal(inception_weights_state(str(tmp_path / "w.pth"))["Conv2d_1a_3x3.conv.weight"], torch.ones(2))
