"""Loading and writing the original release's .pth files (attngan.legacy, attngan convert).

The key lists come from reference/original-state-dicts.txt (the original modules as taoxugit/AttnGAN
builds them); the parity test re-implements the original G_NET forward pass (reference/original-attngan.md
2.4-2.9, GlobalAttention.py) in plain torch, from the state-dict tensors.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import re
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from attngan import legacy
from attngan.checkpoint import load_component, save_component
from attngan.config import DiscriminatorConfig, GeneratorConfig, ImageEncoderConfig, TextEncoderConfig
from attngan.errors import CheckpointError, UserError
from attngan.nn import Discriminator, Generator, ImageEncoder, TextEncoder, set_legacy_mask_bug

REFERENCE_CANDIDATES = [
    os.environ.get("ATTNGAN_REFERENCE_DIR", ""),
    str(Path(__file__).parent / "data"),
    "/work/shared/reference",
]

# name -> (class, config, section of original-state-dicts.txt, keys without num_batches_tracked,
#          parameter scalars (original-state-dicts.txt / original-attngan.md 2.9-2.10))
MODELS = {
    "birds_G": (
        Generator,
        GeneratorConfig(gf_dim=32, res_blocks=2, num_stages=3),
        "G_NET birds",
        82,
        7_084_592,
    ),
    "coco_G": (
        Generator,
        GeneratorConfig(gf_dim=48, res_blocks=3, num_stages=3),
        "G_NET coco",
        102,
        13_811_456,
    ),
    "dcgan_G": (
        Generator,
        GeneratorConfig(gf_dim=32, res_blocks=0, dcgan=True),
        "G_DCGAN birds",
        40,
        6_638_960,
    ),
    "text": (TextEncoder, TextEncoderConfig(vocab_size=5450), "RNN_ENCODER", 9, 2_075_320),
    "image": (ImageEncoder, ImageEncoderConfig(backbone="inception"), "CNN_ENCODER", 473, 22_506_720),
    "D64": (Discriminator, DiscriminatorConfig(df_dim=64, image_size=64), "D_NET64 birds", 25, 6_313_730),
    "D128": (Discriminator, DiscriminatorConfig(df_dim=64, image_size=128), "D_NET128 birds", 35, 19_424_002),
    "D256": (Discriminator, DiscriminatorConfig(df_dim=64, image_size=256), "D_NET256 birds", 45, 71_858_946),
}
KIND = {
    Generator: "generator",
    TextEncoder: "text_encoder",
    ImageEncoder: "image_encoder",
    Discriminator: "discriminator",
}

TINY_G = GeneratorConfig(
    gf_dim=4, z_dim=8, condition_dim=6, embed_dim=16, num_stages=3, res_blocks=2, base_size=16
)


def _reference_sections() -> dict[str, list[tuple[str, tuple[int, ...], str]]] | None:
    """original-state-dicts.txt -> {section title: [(key, shape, kind)]}, or None if absent."""
    for d in REFERENCE_CANDIDATES:
        path = Path(d) / "original-state-dicts.txt" if d else None
        if path is not None and path.is_file():
            break
    else:
        return None
    sections: dict[str, list] = {}
    current = None
    for line in path.read_text().splitlines():
        if line.startswith("## "):
            current = sections.setdefault(re.split(r"\s+\(|\s+file:", line[3:])[0].strip(), [])
            continue
        m = re.fullmatch(r"(\S+)\s+\(([\d, ]*)\)\s+(param|buffer\*?)", line.strip())
        if m and current is not None:
            shape = tuple(int(x) for x in m.group(2).replace(" ", "").split(",") if x)
            current.append((m.group(1), shape, m.group(3)))
    return sections


def _random_state(cls, config, seed: int) -> OrderedDict[str, torch.Tensor]:
    """A random state dict of the network, without num_batches_tracked (as the 2018 files).

    Built on the meta device and filled with seeded noise: the orthogonal init of the big
    discriminators takes seconds and is irrelevant here.
    """
    with torch.device("meta"):
        shapes = cls(config).state_dict()
    g = torch.Generator().manual_seed(seed)
    out = OrderedDict()
    for k, v in shapes.items():
        if k.endswith("num_batches_tracked"):
            continue
        t = torch.randn(v.shape, generator=g)
        out[k] = t.abs() + 0.5 if k.endswith("running_var") else t
    return out


def _save_legacy(state, path: Path) -> Path:
    torch.save(state, path, _use_new_zipfile_serialization=False)  # PyTorch 0.3-era, non-zip
    return path


@pytest.fixture(scope="module")
def legacy_files(tmp_path_factory) -> dict[str, tuple[Path, OrderedDict]]:
    root = tmp_path_factory.mktemp("legacy")
    files = {}
    for i, (name, (cls, cfg, *_)) in enumerate(MODELS.items()):
        state = _random_state(cls, cfg, seed=i)
        files[name] = (_save_legacy(state, root / f"{name}.pth"), state)
    return files


@pytest.fixture(scope="module")
def reference():
    return _reference_sections()


# ------------------------------------------------------------------------------------------------
# Released layouts: inference, strict load, export


@pytest.mark.parametrize("name", list(MODELS))
def test_load_original_infers_config_and_round_trips(name, legacy_files, reference):
    cls, cfg, section, n_keys, n_params = MODELS[name]
    path, state = legacy_files[name]
    assert not zipfile_format(path)

    module = legacy.load_original(path)
    assert type(module) is cls
    assert module.config == cfg
    assert not module.training
    assert legacy.infer_config(state) == (KIND[cls], cfg)
    assert sum(p.numel() for p in module.parameters()) == n_params

    exported = legacy.export_original(module)
    assert isinstance(exported, OrderedDict)
    assert len(exported) == n_keys
    assert sorted(exported) == sorted(state)  # nothing filled in is exported
    for k, v in exported.items():
        assert v.device.type == "cpu"
        assert torch.equal(v, state[k]), k
    # The filled-in counters exist in the module (modern BatchNorm) and are zero.
    nbt = {k: v for k, v in module.state_dict().items() if k.endswith("num_batches_tracked")}
    assert len(nbt) == len(module.state_dict()) - n_keys
    assert all(int(v) == 0 for v in nbt.values())

    if reference is None:
        pytest.skip("original-state-dicts.txt not found (set ATTNGAN_REFERENCE_DIR)")
    ref = reference[section]
    expected = [(k, shape) for k, shape, kind in ref if kind != "buffer*"]
    assert [(k, tuple(v.shape)) for k, v in exported.items()] == expected
    assert sorted(nbt) == sorted(k for k, _, kind in ref if kind == "buffer*")


def zipfile_format(path: Path) -> bool:
    import zipfile

    return zipfile.is_zipfile(path)


def test_reference_dcgan_discriminator_has_no_unconditional_head(legacy_files, reference):
    """The AttnDCGAN's D256 is D_NET256 minus UNCOND_DNET.* (original-state-dicts.txt line 997)."""
    _, state = legacy_files["D256"]
    state = OrderedDict((k, v) for k, v in state.items() if not k.startswith("UNCOND_DNET."))
    kind, cfg = legacy.infer_config(state)
    assert (kind, cfg) == (
        "discriminator",
        DiscriminatorConfig(df_dim=64, image_size=256, unconditional=False),
    )


def test_save_original_writes_a_plain_legacy_dict(legacy_files, tmp_path):
    for name in ("birds_G", "text"):
        path, state = legacy_files[name]
        module = legacy.load_original(path)
        out = legacy.save_original(module, tmp_path / f"{name}.pth")
        assert not zipfile_format(out)
        again = torch.load(out, weights_only=True)
        assert type(again) is OrderedDict
        assert list(again) == list(legacy.export_original(module))  # the original's key order
        assert sorted(again) == sorted(state)
        assert all(torch.equal(again[k], state[k]) for k in state)
        assert legacy.load_original(out).config == module.config
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write leaves no temporary file


def test_text_encoder_loaded_computes_like_the_source():
    torch.manual_seed(0)
    src = TextEncoder(TextEncoderConfig(vocab_size=50, word_dim=12, embed_dim=10)).eval()
    loaded = legacy.load_original(legacy.export_original(src))
    captions = torch.tensor([[3, 7, 9, 4], [5, 2, 0, 0]])
    lengths = torch.tensor([4, 2])
    with torch.no_grad():
        a, b = src(captions, lengths), loaded(captions, lengths)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize(
    "config",
    [
        GeneratorConfig(
            gf_dim=4, z_dim=8, condition_dim=6, embed_dim=16, num_stages=2, res_blocks=1, base_size=32
        ),
        GeneratorConfig(
            gf_dim=6, z_dim=5, condition_dim=3, embed_dim=8, num_stages=1, res_blocks=0, base_size=8
        ),
        GeneratorConfig(
            gf_dim=4,
            z_dim=8,
            condition_dim=6,
            embed_dim=16,
            num_stages=3,
            res_blocks=0,
            dcgan=True,
            base_size=16,
        ),
        DiscriminatorConfig(df_dim=4, embed_dim=16, image_size=32, unconditional=False),
        DiscriminatorConfig(df_dim=2, embed_dim=6, image_size=16),
        TextEncoderConfig(vocab_size=30, word_dim=7, embed_dim=12),
        ImageEncoderConfig(embed_dim=24),
    ],
)
def test_infer_config_of_other_settings(config):
    cls = {GeneratorConfig: Generator, DiscriminatorConfig: Discriminator}.get(type(config))
    cls = cls or {TextEncoderConfig: TextEncoder, ImageEncoderConfig: ImageEncoder}[type(config)]
    state = _random_state(cls, config, seed=1)
    assert legacy.infer_config(state) == (KIND[cls], config)


# ------------------------------------------------------------------------------------------------
# What is refused


@pytest.fixture(scope="module")
def tiny_state() -> OrderedDict:
    torch.manual_seed(0)
    return OrderedDict(
        (k, v) for k, v in Generator(TINY_G).state_dict().items() if not k.endswith("num_batches_tracked")
    )


def test_extra_or_missing_key_is_named(tiny_state):
    extra = OrderedDict(tiny_state, **{"h_net2.att.bias": torch.zeros(4)})
    with pytest.raises(CheckpointError, match=r"unexpected keys: \['h_net2.att.bias'\]"):
        legacy.load_original(extra)
    missing = OrderedDict((k, v) for k, v in tiny_state.items() if k != "h_net1.upsample2.2.running_var")
    with pytest.raises(CheckpointError, match=r"missing keys: \['h_net1.upsample2.2.running_var'\]"):
        legacy.load_original(missing)
    wrong = OrderedDict(tiny_state, **{"h_net2.upsample.1.weight": torch.zeros(8, 8, 1, 1)})
    with pytest.raises(CheckpointError, match=r"h_net2.upsample.1.weight: file \(8, 8, 1, 1\)"):
        legacy.load_original(wrong)


def test_data_parallel_prefix_and_modern_counters_are_accepted(tiny_state):
    prefixed = OrderedDict((f"module.{k}", v) for k, v in tiny_state.items())
    g = legacy.load_original(prefixed, kind="generator")
    assert g.config == TINY_G
    assert torch.equal(g.state_dict()["h_net1.fc.0.weight"], tiny_state["h_net1.fc.0.weight"])
    modern = Generator(TINY_G).state_dict()  # with num_batches_tracked
    modern["h_net1.fc.1.num_batches_tracked"] = torch.tensor(7)
    assert int(legacy.load_original(modern).state_dict()["h_net1.fc.1.num_batches_tracked"]) == 7


def test_unknown_layout_and_wrong_kind(tiny_state):
    with pytest.raises(CheckpointError, match=r"unknown state dict layout \(2 keys.*'fc.bias', 'fc.weight'"):
        legacy.load_original({"fc.weight": torch.zeros(2, 2), "fc.bias": torch.zeros(2)})
    with pytest.raises(CheckpointError, match="is a generator, not a text_encoder"):
        legacy.load_original(tiny_state, kind="text_encoder")
    with pytest.raises(CheckpointError, match="not tensors.*'step' \\(int\\)"):
        legacy.load_original(OrderedDict(tiny_state, step=3))


def test_file_saved_from_cuda_tensors_loads_on_cpu(tmp_path):
    """The 2018 files hold CUDA storages (saved from the GPU); they must load on a CPU-only machine."""
    state = legacy.export_original(TextEncoder(TextEncoderConfig(vocab_size=4, word_dim=3, embed_dim=4)))
    buf = io.BytesIO()
    torch.save(state, buf, _use_new_zipfile_serialization=False)
    cpu_tag = b"X\x03\x00\x00\x00cpu"  # the storage location string in the legacy pickle (memoised once)
    assert buf.getvalue().count(cpu_tag) == 1
    path = tmp_path / "text_encoder200.pth"
    path.write_bytes(buf.getvalue().replace(cpu_tag, b"X\x06\x00\x00\x00cuda:0"))
    module = legacy.load_original(path)
    assert all(torch.equal(module.state_dict()[k], v) for k, v in state.items())


def test_native_small_image_encoder_has_no_original_layout():
    small = ImageEncoder(ImageEncoderConfig(backbone="small", input_size=32, embed_dim=8))
    with pytest.raises(CheckpointError, match="'small' backbone"):
        legacy.load_original(small.state_dict())
    with pytest.raises(CheckpointError, match="'small' backbone has no original layout"):
        legacy.export_original(small)


class Payload:
    """A custom class: unpickling it would import and run project code."""

    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.parametrize("zip_format", [False, True])
def test_pickle_with_objects_is_refused(tmp_path, capsys, zip_format):
    path = tmp_path / "evil.pth"
    torch.save(
        {"encoder.weight": torch.zeros(3, 2), "x": Payload()}, path, _use_new_zipfile_serialization=zip_format
    )
    with pytest.raises(CheckpointError, match="refused"):
        legacy.load_original(path)
    assert "must never run" not in capsys.readouterr().out


def test_image_encoder_without_backbone_needs_backbone_weights():
    torch.manual_seed(0)
    full = ImageEncoder(ImageEncoderConfig(embed_dim=8))
    heads = {k: v for k, v in full.state_dict().items() if k.startswith("emb_")}
    with pytest.raises(CheckpointError, match="backbone_weights='imagenet'"):
        legacy.load_original(heads)
    backbone = {k: v for k, v in full.state_dict().items() if not k.startswith("emb_")}
    loaded = legacy.load_original(heads, backbone_weights=backbone)
    assert all(torch.equal(v, full.state_dict()[k]) for k, v in loaded.state_dict().items())


# ------------------------------------------------------------------------------------------------
# Parity with the original G_NET forward pass


def _bn(x, sd, p):  # eval-mode BatchNorm from the stored statistics
    return F.batch_norm(
        x,
        sd[f"{p}.running_mean"],
        sd[f"{p}.running_var"],
        sd[f"{p}.weight"],
        sd[f"{p}.bias"],
        False,
        0.0,
        1e-5,
    )


def _glu(x):
    n = x.size(1) // 2
    return x[:, :n] * torch.sigmoid(x[:, n:])


def _up_block(x, sd, p):  # Upsample(2, nearest) -> conv3x3 -> BN -> GLU
    x = F.interpolate(x, scale_factor=2, mode="nearest")
    return _glu(_bn(F.conv2d(x, sd[f"{p}.1.weight"], padding=1), sd, f"{p}.2"))


def _res_block(x, sd, p):
    y = _glu(_bn(F.conv2d(x, sd[f"{p}.block.0.weight"], padding=1), sd, f"{p}.block.1"))
    return _bn(F.conv2d(y, sd[f"{p}.block.3.weight"], padding=1), sd, f"{p}.block.4") + x


def _global_attention_general(h, words, mask, weight):
    """GlobalAttentionGeneral.forward of the original, including ``mask.repeat(queryL, 1)``."""
    batch_size, _, ih, iw = h.shape
    query_l, source_l = ih * iw, words.size(2)
    target_t = h.view(batch_size, -1, query_l).transpose(1, 2).contiguous()
    source_t = F.conv2d(words.unsqueeze(3), weight).squeeze(3)
    attn = torch.bmm(target_t, source_t).view(batch_size * query_l, source_l)
    attn = attn.masked_fill(mask.repeat(query_l, 1), -float("inf"))
    attn = torch.softmax(attn, dim=1)  # nn.Softmax() on 2-D input
    attn = attn.view(batch_size, query_l, source_l).transpose(1, 2).contiguous()
    context = torch.bmm(source_t, attn).view(batch_size, -1, ih, iw)
    return context, attn.view(batch_size, -1, ih, iw)


def original_g_net(sd, z, sent_emb, word_embs, mask, eps, num_stages, num_up, res_blocks, dcgan=False):
    """G_NET / G_DCGAN forward (eval mode) with CA noise ``eps``, from the state dict alone."""
    x = _glu(F.linear(sent_emb, sd["ca_net.fc.weight"], sd["ca_net.fc.bias"]))
    ncf = x.size(1) // 2
    mu, logvar = x[:, :ncf], x[:, ncf:]
    c_code = eps * torch.exp(0.5 * logvar) + mu
    h = _glu(_bn(F.linear(torch.cat((c_code, z), 1), sd["h_net1.fc.0.weight"]), sd, "h_net1.fc.1"))
    h = h.view(z.size(0), -1, 4, 4)
    for k in range(1, num_up + 1):
        h = _up_block(h, sd, f"h_net1.upsample{k}")
    imgs, atts = [], []
    if not dcgan:
        imgs.append(torch.tanh(F.conv2d(h, sd["img_net1.img.0.weight"], padding=1)))
    for i in range(2, num_stages + 1):
        context, att = _global_attention_general(h, word_embs, mask, sd[f"h_net{i}.att.conv_context.weight"])
        x = torch.cat((h, context), 1)
        for r in range(res_blocks):
            x = _res_block(x, sd, f"h_net{i}.residual.{r}")
        h = _up_block(x, sd, f"h_net{i}.upsample")
        atts.append(att)
        if not dcgan:
            imgs.append(torch.tanh(F.conv2d(h, sd[f"img_net{i}.img.0.weight"], padding=1)))
    if dcgan:
        imgs.append(torch.tanh(F.conv2d(h, sd["img_net.img.0.weight"], padding=1)))
    return imgs, atts, mu, logvar


def _max_diff(ours, ref) -> float:
    imgs, atts, mu, logvar = ref
    pairs = [*zip(ours.images, imgs), *zip(ours.attention, atts), (ours.mu, mu), (ours.logvar, logvar)]
    assert len(ours.images) == len(imgs) and len(ours.attention) == len(atts)
    return max((a - b).abs().max().item() for a, b in pairs)


@pytest.mark.parametrize("dcgan", [False, True])
def test_generator_reproduces_the_original_forward(tmp_path, dcgan):
    cfg = dataclasses.replace(TINY_G, dcgan=dcgan)
    torch.manual_seed(0)
    state = OrderedDict(
        (k, v) for k, v in Generator(cfg).state_dict().items() if not k.endswith("num_batches_tracked")
    )
    g = torch.Generator().manual_seed(1)
    for k in state:  # trained-looking BatchNorm statistics, so that eval-mode BN matters
        if k.endswith("running_mean"):
            state[k] = 0.3 * torch.randn(state[k].shape, generator=g)
        elif k.endswith("running_var"):
            state[k] = 0.5 + torch.rand(state[k].shape, generator=g)
        elif re.search(r"\.(fc\.1|2|block\.[14])\.(weight|bias)$", k):
            state[k] = state[k] + 0.2 * torch.randn(state[k].shape, generator=g)
    G = legacy.load_original(_save_legacy(state, tmp_path / "netG.pth"))
    assert G.config == cfg and not G.training

    b, t = 2, 7
    lengths = torch.tensor([7, 3])  # unequal lengths, sorted as the original sorts them
    mask = torch.arange(t)[None, :] >= lengths[:, None]  # captions == 0
    words = torch.randn(b, cfg.embed_dim, t, generator=g).masked_fill(
        mask[:, None, :], 0.0
    )  # zero at padding
    sentence = torch.randn(b, cfg.embed_dim, generator=g)
    z = torch.randn(b, cfg.z_dim, generator=g)
    eps = torch.randn(b, cfg.condition_dim, generator=g)
    args = dict(num_stages=3, num_up=2, res_blocks=2, dcgan=dcgan)

    with torch.no_grad():
        ref = original_g_net(state, z, sentence, words, mask, eps, **args)
        bug = set_legacy_mask_bug(G)(z, sentence, words, mask, ca_noise=eps)
        fixed = set_legacy_mask_bug(G, False)(z, sentence, words, mask, ca_noise=eps)
        assert _max_diff(bug, ref) < 1e-4
        # Correct masking differs from the original for unequal lengths in one batch...
        assert (fixed.images[-1] - ref[0][-1]).abs().max().item() > 1e-3
        # ... and agrees with it one caption at a time and for equal lengths.
        for i in range(b):
            sl = slice(i, i + 1)
            ref_i = original_g_net(state, z[sl], sentence[sl], words[sl], mask[sl], eps[sl], **args)
            assert _max_diff(G(z[sl], sentence[sl], words[sl], mask[sl], ca_noise=eps[sl]), ref_i) < 1e-4
        same = mask[:1].expand(b, t)
        ref_same = original_g_net(state, z, sentence, words, same, eps, **args)
        assert _max_diff(G(z, sentence, words, same, ca_noise=eps), ref_same) < 1e-4


# ------------------------------------------------------------------------------------------------
# attngan convert


def _write_captions_pickle(path: Path, words: list[str]) -> None:
    """The original captions.pickle: [train_captions, test_captions, ixtoword, wordtoix] (protocol 2)."""
    ixtoword = dict(enumerate(words))
    with open(path, "wb") as f:
        pickle.dump([[[1, 2]], [[2, 1]], ixtoword, {w: i for i, w in ixtoword.items()}], f, protocol=2)


def test_convert_cli_round_trip(tmp_path, capsys, monkeypatch):
    from attngan.cli import main
    from attngan.cli.convert import convert

    torch.manual_seed(0)
    te_cfg = TextEncoderConfig(vocab_size=6, word_dim=5, embed_dim=16)
    g_state = legacy.export_original(Generator(TINY_G))
    te_state = legacy.export_original(TextEncoder(te_cfg))
    d_state = legacy.export_original(
        Discriminator(DiscriminatorConfig(df_dim=2, embed_dim=16, image_size=16))
    )
    _save_legacy(g_state, tmp_path / "G.pth")
    _save_legacy(te_state, tmp_path / "T.pth")
    _save_legacy(d_state, tmp_path / "D.pth")
    runner = CliRunner()
    native = tmp_path / "native"
    args = [
        "--generator",
        "G.pth",
        "--text-encoder",
        "T.pth",
        "--discriminator",
        "D.pth",
        "--out",
        str(native),
    ]
    cwd = tmp_path / "cwd"  # relative file names, read from the working directory
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    for name in ("G.pth", "T.pth", "D.pth"):
        os.replace(tmp_path / name, cwd / name)
    res = runner.invoke(convert, args)
    assert res.exit_code == 0, res.output
    assert "gf_dim=4" in res.output and "vocab_size=6" in res.output and "image_size=16" in res.output
    assert "needs: vocab.json" in res.output

    g = load_component(native / "generator", Generator, GeneratorConfig)
    assert g.config == TINY_G
    assert all(torch.equal(g.state_dict()[k], v) for k, v in g_state.items())
    assert load_component(native / "text_encoder", TextEncoder, TextEncoderConfig).config == te_cfg
    assert (native / "discriminator0" / "model.safetensors").is_file()
    small = ImageEncoder(ImageEncoderConfig(backbone="small", input_size=32, embed_dim=16))
    save_component(native / "image_encoder", small, small.config)

    again = runner.invoke(convert, args)  # existing output: a user error, nothing overwritten
    assert isinstance(again.exception, UserError) and "already exists" in str(again.exception)
    with pytest.raises(SystemExit) as exit_info:  # the console entry point prints it as one line
        main(["convert", *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "already exists" in err and "Traceback" not in err

    back = tmp_path / "back"
    res = runner.invoke(convert, ["--from-native", str(native), "--to-original", "--out", str(back)])
    assert res.exit_code == 0, res.output
    assert "skipped image_encoder" in res.output
    written = ["netD0.pth", "netG.pth", "text_encoder.pth"]
    assert sorted(p.name for p in back.iterdir()) == sorted(written + [f"{n}.sha256" for n in written])
    for file, expected in (("netG.pth", g_state), ("text_encoder.pth", te_state), ("netD0.pth", d_state)):
        loaded = torch.load(back / file, weights_only=True)
        assert list(loaded) == list(expected)
        assert all(torch.equal(loaded[k], v) for k, v in expected.items())

    bad = runner.invoke(convert, ["--from-native", str(native), "--generator", "G.pth", "--out", "x"])
    assert bad.exit_code == 2 and "cannot be combined" in bad.output


def test_convert_writes_vocabulary_of_captions_pickle(tmp_path):
    from attngan.cli.convert import convert
    from attngan.text import Vocabulary

    torch.manual_seed(0)
    words = ["<end>", "a", "bird", "red", "wing", "small"]
    _save_legacy(
        legacy.export_original(TextEncoder(TextEncoderConfig(vocab_size=6, word_dim=5, embed_dim=8))),
        tmp_path / "T.pth",
    )
    _write_captions_pickle(tmp_path / "captions.pickle", words)
    args = ["--text-encoder", str(tmp_path / "T.pth"), "--captions-pickle", str(tmp_path / "captions.pickle")]
    res = CliRunner().invoke(convert, [*args, "--out", str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    assert Vocabulary.load(tmp_path / "m" / "vocab.json").itos == words
    _write_captions_pickle(tmp_path / "captions.pickle", words[:5])  # another dataset's vocabulary
    res = CliRunner().invoke(convert, [*args, "--out", str(tmp_path / "m2")])
    assert isinstance(res.exception, UserError) and "5 words but the text encoder has 6" in str(res.exception)


def test_convert_help_explains_every_option():
    from attngan.cli.convert import convert

    res = CliRunner().invoke(convert, ["--help"])
    assert res.exit_code == 0
    for param in convert.params:
        assert param.help, f"--{param.name} has no help text"
        assert param.opts[0] in res.output
    assert "Examples:" in res.output


def test_the_vocabulary_survives_native_to_original_and_back(tmp_path):
    import dataclasses

    from attngan.config import PRESETS
    from attngan.data.pickles import load_captions_pickle
    from attngan.data.synthetic import shapes_vocabulary
    from attngan.pipeline import AttnGANPipeline

    vocab = shapes_vocabulary()
    tiny = PRESETS["tiny"]
    pipe = AttnGANPipeline(
        TextEncoder(dataclasses.replace(tiny.text_encoder, vocab_size=len(vocab))), Generator(tiny.generator), vocab
    )
    pipe.save_pretrained(tmp_path / "run" / "model")
    with pytest.raises(UserError, match="holds no model components.*run folder whose training has exported model/"):
        legacy.native_to_original(tmp_path, tmp_path / "orig")
    done, _ = legacy.native_to_original(tmp_path / "run", tmp_path / "orig")  # a run folder means its model/
    assert sorted(c.kind for c in done) == ["generator", "text_encoder", "vocabulary"]
    (tmp_path / "run").rename(tmp_path / "native")
    assert "vocabulary" in [c.kind for c in done]
    assert load_captions_pickle(tmp_path / "orig" / "captions.pickle").vocab == vocab  # what the original reads
    with pytest.raises(UserError, match="already exists"):
        legacy.native_to_original(tmp_path / "native", tmp_path / "orig")
    legacy.original_to_native(
        tmp_path / "back",
        generator=tmp_path / "orig" / "netG.pth",
        text_encoder=tmp_path / "orig" / "text_encoder.pth",
        vocab=load_captions_pickle(tmp_path / "orig" / "captions.pickle").vocab,
    )
    again = AttnGANPipeline.from_pretrained(tmp_path / "back")
    assert torch.equal(again("a red circle", seed=1).stage_tensors[0][-1], pipe("a red circle", seed=1).stage_tensors[0][-1])


def test_a_file_of_the_wrong_kind_is_named_as_such(tmp_path):
    """A pickle where a checkpoint belongs, a checkpoint or a vocab.json where captions.pickle belongs: the
    message says which kind of file it is, not "corrupt, download it again"."""
    import json
    import pickle

    from attngan.checkpoint import safe_torch_load
    from attngan.data.pickles import load_captions_pickle
    from attngan.errors import CheckpointError, DataError

    captions = tmp_path / "captions.pickle"
    captions.write_bytes(pickle.dumps([[], [], {0: "<end>"}, {"<end>": 0}], protocol=2))
    legacy_pth = tmp_path / "netG.pth"
    torch.save({"w": torch.zeros(2)}, legacy_pth, _use_new_zipfile_serialization=False)
    zip_pth = tmp_path / "netG_zip.pth"
    torch.save({"w": torch.zeros(2)}, zip_pth)
    vocab_json = tmp_path / "vocab.json"
    vocab_json.write_text(json.dumps({"itos": ["<end>", "a"]}))
    with pytest.raises(CheckpointError, match="plain Python pickle, not a PyTorch checkpoint"):
        safe_torch_load(captions)
    for path, msg in [
        (legacy_pth, r"PyTorch checkpoint \(\.pth\) in the legacy format, not a pickle"),
        (zip_pth, r"zip file \(a PyTorch \.pth checkpoint\?\), not a pickle"),
        (vocab_json, r"JSON text \(a vocab\.json\?\), not a pickle"),
    ]:
        with pytest.raises(DataError, match=msg):
            load_captions_pickle(path)
    yml = tmp_path / "eval_bird.yml"  # another file of the release given by mistake
    yml.write_text("CONFIG_NAME: 'attn2'\nDATASET_NAME: 'birds'\n")
    with pytest.raises(DataError, match=r"eval_bird.yml is not a pickle \(it starts with b'CONFIG_NAME"):
        load_captions_pickle(yml)
    truncated = tmp_path / "truncated.pickle"
    truncated.write_bytes(captions.read_bytes()[:-3])
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_captions_pickle(truncated)
    assert len(load_captions_pickle(captions).vocab) == 1
