"""AttnGANPipeline on a tiny seeded model: reproducibility, batch independence, round trips, errors."""

from __future__ import annotations

import dataclasses
import logging
import os
from copy import deepcopy
from pathlib import Path

import numpy as np
import pytest
import torch

from attngan.config import PRESETS
from attngan.data.synthetic import shapes_vocabulary
from attngan.errors import CheckpointError, UserError
from attngan.legacy import sample_like_original
from attngan.nn import Generator, TextEncoder, set_legacy_mask_bug
from attngan.pipeline import AttnGANPipeline
from tolerance import assert_close_to_scale

PROMPTS = ["a small red circle at the top left", "there is a large blue square in the center"]


def _tiny_parts() -> tuple[TextEncoder, Generator, object]:
    """A random tiny text encoder and generator (seed 0) with the shapes vocabulary."""
    torch.manual_seed(0)
    vocab = shapes_vocabulary()
    tiny = PRESETS["tiny"]
    return TextEncoder(dataclasses.replace(tiny.text_encoder, vocab_size=len(vocab))), Generator(tiny.generator), vocab


@pytest.fixture(scope="module")
def pipe():
    return AttnGANPipeline(*_tiny_parts())


def test_same_seed_same_images_and_shapes(pipe):
    a = pipe(PROMPTS, seed=3)
    b = pipe(PROMPTS, seed=3)
    assert len(a.images) == 2 and len(a.images[0]) == 2  # two stages
    assert a.images[0][-1].size == (32, 32) and a.images[0][0].size == (16, 16)
    for x, y in zip(a.stage_tensors, b.stage_tensors):
        assert torch.equal(x[-1], y[-1])
    c = pipe(PROMPTS, seed=4)
    assert not torch.equal(a.stage_tensors[0][-1], c.stage_tensors[0][-1])
    assert a.seeds == [3, 4]


def test_images_do_not_depend_on_batch_size_or_neighbours(pipe):
    prompts = PROMPTS + ["a yellow triangle"]
    big = pipe(prompts, seed=[10, 11, 12], batch_size=16)
    small = pipe(prompts, seed=[10, 11, 12], batch_size=1)
    alone = pipe(prompts[2], seed=12)
    for x, y in zip(big.stage_tensors, small.stage_tensors):
        assert_close_to_scale(x[-1], y[-1])
    assert_close_to_scale(big.stage_tensors[2][-1], alone.stage_tensors[0][-1])


def test_legacy_mask_bug_draws_the_original_batches(pipe):
    """With the bug, an image depends on its batch: the pipeline must form the original's (gen_example)
    batch, every sentence in main.py's order np.argsort(cap_lens)[::-1] (equal lengths reversed), whatever
    the prompt order, and draw the noise as gen_example does: per batch, z of the batch, then
    its CA noise, from one stream seeded once (torch.manual_seed(seed) in main.py)."""
    prompts = ["a yellow triangle", PROMPTS[1], "red", PROMPTS[0], "a blue circle"]  # 3, 9, 1, 8, 3 words
    m = 2
    out = sample_like_original(pipe, prompts, num_images_per_prompt=m, seed=20, return_attention=False)
    assert out.seeds == [20] * len(prompts) * m
    assert not any(getattr(x, "legacy_mask_bug", False) for x in pipe.generator.modules())  # switched back
    same = sample_like_original(pipe, prompts, num_images_per_prompt=m, seed=np.int64(20), return_attention=False)
    assert same.seeds == out.seeds  # a numpy integer is one seed too (the original's noise order)
    assert all(torch.equal(a[-1], b[-1]) for a, b in zip(same.stage_tensors, out.stage_tensors))
    order = [1, 3, 4, 0, 2]  # the two 3-word captions in reverse order, as numpy's argsort reversed gives
    assert [int(i) for i in np.argsort(np.array([3, 9, 1, 8, 3]), kind="stable")[::-1]] == order  # numpy of 2018
    encoded = pipe.encode_prompts([prompts[i] for i in order])
    captions, lengths, mask = pipe._batch(encoded)
    cfg = pipe.generator.config
    torch.manual_seed(20)  # as main.py
    legacy_g = set_legacy_mask_bug(deepcopy(pipe.generator))
    with torch.no_grad():
        pipe.generator.eval()
        pipe.text_encoder.eval()
        words, sentence = pipe.text_encoder(captions, lengths)
        for j in range(m):
            z = torch.empty(len(order), cfg.z_dim).normal_(0, 1)  # gen_example: noise.data.normal_(0, 1)
            eps = torch.empty(len(order), cfg.condition_dim).normal_()  # CA_NET.reparametrize, inside netG
            expected = legacy_g(z, sentence, words, mask, ca_noise=eps)
            for row, i in enumerate(order):
                k = i * m + j
                assert_close_to_scale(out.stage_tensors[k][-1], expected.images[-1][row])
    # Under the bug the place of a caption matters, equal lengths included: with the same noise per caption,
    # input order for the two 3-word captions (a stable sort) gives other images.
    stable = [1, 3, 0, 4, 2]
    encoded = pipe.encode_prompts([prompts[i] for i in stable])
    captions, lengths, mask = pipe._batch(encoded)
    torch.manual_seed(20)
    with torch.no_grad():
        words, sentence = pipe.text_encoder(captions, lengths)
        z, eps = torch.empty(5, cfg.z_dim).normal_(0, 1), torch.empty(5, cfg.condition_dim).normal_()
        same = [order.index(i) for i in stable]  # each caption's noise row in the original order
        other = legacy_g(z[same], sentence, words, mask, ca_noise=eps[same])
    assert (other.images[-1][2] - out.stage_tensors[0 * m][-1]).abs().max() > 1e-3  # "a yellow triangle"


def test_expected_slice(pipe):
    out = pipe("a small red circle at the top left", seed=0)
    got = out.stage_tensors[0][-1][0, :3, :3]
    expected = torch.tensor(
        [
            [0.0019516, 0.0043166, -0.0317219],
            [-0.0050496, -0.0184568, -0.0406352],
            [0.0016991, -0.0072206, -0.0414370],
        ]
    )
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    # Attention maps: one per attention stage, (T, h, w), sum to 1 over words.
    att = out.attention_maps[0][0]
    assert att.shape[0] == len(out.tokens[0]) == 8
    torch.testing.assert_close(att.sum(0), torch.ones(att.shape[1:]), atol=1e-5, rtol=0)


def test_unknown_words_reported_and_empty_prompt_refused(pipe, caplog):
    with caplog.at_level(logging.WARNING, logger="attngan.pipeline"):
        out = pipe("a red zorblax circle", seed=0, num_images_per_prompt=2)
    assert out.unknown_words == [["zorblax"], ["zorblax"]]
    assert out.tokens == [["a", "red", "circle"]] * 2
    assert [r.getMessage().endswith(": zorblax") for r in caplog.records] == [True]  # once per prompt
    # Non-ASCII characters are dropped inside a token, as the original tokenizer: "réd" -> "rd" (unknown),
    # reported as written; a word with no ASCII letter at all is reported too, not silently dropped.
    assert pipe("a réd CIRCLE", seed=0).unknown_words == [["réd"]]
    assert pipe("a red circle \u4e2d\u5fc3 \U0001f426", seed=0).unknown_words == [["\u4e2d\u5fc3"]]
    assert pipe("a red\u00a0circle", seed=0).tokens == [["a", "red", "circle"]]
    with pytest.raises(UserError, match="empty"):
        pipe("   ", seed=0)
    with pytest.raises(UserError, match="no word in the vocabulary"):
        pipe("zorblax quux", seed=0)


def test_save_and_load_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "model")
    loaded = AttnGANPipeline.from_pretrained(tmp_path / "model")
    a = pipe(PROMPTS, seed=1).stage_tensors
    b = loaded(PROMPTS, seed=1).stage_tensors
    for x, y in zip(a, b):
        assert torch.equal(x[-1], y[-1])
    with pytest.raises(CheckpointError, match="does not exist"):
        AttnGANPipeline.from_pretrained(tmp_path / "nope")


def test_run_folder_and_save_over_an_existing_model(pipe, tmp_path):
    run = tmp_path / "runs" / "00000-x"
    (run / "model" / "discriminator0").mkdir(parents=True)  # the parts of another model ...
    (run / "model" / "image_encoder").mkdir()
    (run / "model" / "notes.txt").write_text("mine")  # ... and a file of the user's
    with pytest.raises(UserError, match=r"already holds a model \(discriminator0, image_encoder\).*overwrite=True"):
        pipe.save_pretrained(run / "model")
    assert sorted(p.name for p in (run / "model").iterdir()) == ["discriminator0", "image_encoder", "notes.txt"]
    pipe.save_pretrained(run / "model", overwrite=True)  # one consistent model: the old parts are gone
    pipe.save_pretrained(run / "model", overwrite=True)
    assert sorted(p.name for p in (run / "model").iterdir()) == ["generator", "notes.txt", "text_encoder", "vocab.json"]
    assert (run / "model" / "notes.txt").read_text() == "mine"
    loaded = AttnGANPipeline.from_pretrained(run)  # a run folder means its model/
    assert loaded.image_encoder is None
    assert torch.equal(
        loaded(PROMPTS[0], seed=5).stage_tensors[0][-1], pipe(PROMPTS[0], seed=5).stage_tensors[0][-1]
    )
    assert AttnGANPipeline.from_pretrained(tmp_path / "runs").vocab == pipe.vocab  # the newest run in runs/
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="neither a model folder"):
        AttnGANPipeline.from_pretrained(tmp_path / "empty")


def test_save_pretrained_refuses_empty_names_files_and_puts_the_old_model_back(pipe, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="empty"):
        pipe.save_pretrained("")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        pipe.save_pretrained(tmp_path / "afile")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "generator").write_text("keep me")  # a file with a component's name
    with pytest.raises(UserError, match="already holds a model"):
        pipe.save_pretrained(tmp_path / "d")
    assert (tmp_path / "d" / "generator").read_text() == "keep me"
    # A rename that fails half-way (the vocabulary's, the last one) puts the old model back.
    model = tmp_path / "m"
    pipe.save_pretrained(model)
    before = {f.relative_to(model): f.read_bytes() for f in model.rglob("*") if f.is_file()}
    real_replace = os.replace
    calls = []

    def failing(src, dst):
        if Path(dst) == model / "vocab.json" and not calls:  # the new vocabulary's rename, not the restore
            calls.append(dst)
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError):
        pipe.save_pretrained(model, overwrite=True)
    monkeypatch.undo()
    assert {f.relative_to(model): f.read_bytes() for f in model.rglob("*") if f.is_file()} == before
    assert sorted(p.name for p in model.iterdir()) == ["generator", "text_encoder", "vocab.json"]  # no staging left


def test_parts_of_different_models_are_refused(pipe):
    from attngan.nn import ImageEncoder

    te, g, vocab = pipe.text_encoder, pipe.generator, pipe.vocab
    other = ImageEncoder(dataclasses.replace(PRESETS["tiny"].image_encoder, embed_dim=te.config.embed_dim * 2))
    with pytest.raises(CheckpointError, match="image encoder's width"):
        AttnGANPipeline(te, g, vocab, image_encoder=other)
    with pytest.raises(TypeError, match="text_encoder must be a TextEncoder, got Generator"):
        AttnGANPipeline(g, te, vocab)
    with pytest.raises(TypeError, match="vocab must be a Vocabulary, got list"):
        AttnGANPipeline(te, g, vocab.itos)
    with pytest.raises(UserError, match="max_words must be an integer >= 1, got 0"):
        AttnGANPipeline(te, g, vocab, max_words=0)


def test_unavailable_devices_are_user_errors(pipe, tmp_path):
    for device, msg in [("cuda", "CUDA is not available"), ("cuda:5", "CUDA is not available"), (5, "CUDA"),
                        ("tpu", "unknown device"), ("banana", "unknown device")]:
        with pytest.raises(UserError, match=msg):
            pipe.to(device)
        with pytest.raises(UserError, match=msg):
            AttnGANPipeline.from_pretrained(tmp_path / "does-not-matter", device=device)  # before any loading
    assert pipe.to("cpu") is pipe


def test_generators_eval_mode_and_argument_errors(pipe):
    gens = [torch.Generator().manual_seed(s) for s in (7, 8)]
    by_gen = pipe(PROMPTS, generator=gens)
    by_seed = pipe(PROMPTS, seed=7)
    assert by_gen.seeds == [None, None]
    for x, y in zip(by_gen.stage_tensors, by_seed.stage_tensors):
        assert torch.equal(x[-1], y[-1])
    # Dropout of the text encoder must be off during the call, and the caller's mode restored after it.
    pipe.text_encoder.train()
    try:
        again = pipe(PROMPTS, seed=7)
        assert pipe.text_encoder.training
    finally:
        pipe.text_encoder.eval()
    assert torch.equal(again.stage_tensors[1][-1], by_seed.stage_tensors[1][-1])
    assert pipe(PROMPTS[1], seed=7, max_words=3).tokens == [["there", "is", "a"]]
    assert pipe(PROMPTS[0], seed=7, return_attention=False).attention_maps == [[]]
    mean = pipe(PROMPTS, seed=7, ca_mean=True).stage_tensors
    assert not torch.equal(mean[0][-1], by_seed.stage_tensors[0][-1])  # c = mu, not mu + sigma * eps
    for kwargs, msg in [
        (dict(seed=[1]), "1 seeds given for 2 images"),
        (dict(seed=1, generator=gens[0]), "not both"),
        (dict(num_images_per_prompt=0), "num_images_per_prompt"),
        (dict(num_images_per_prompt="2"), "num_images_per_prompt must be an integer >= 1, got '2'"),
        (dict(batch_size=None), "batch_size must be an integer >= 1, got None"),
        (dict(max_words=0), "max_words must be an integer >= 1, got 0"),
        (dict(seed=1.7), "a seed must be an integer, got 1.7"),
        (dict(seed=[1, 2.5]), "a seed must be an integer, got 2.5"),
    ]:
        with pytest.raises(UserError, match=msg):
            pipe(PROMPTS, **kwargs)
    with pytest.raises(UserError, match="no sentence"):
        pipe([])
    for bad in (None, b"a red circle", 3):
        with pytest.raises(UserError, match="prompts must be a string or a list of strings"):
            pipe(bad)
    # Seeds as arrays or tensors (one per image) are the same as lists; a str is one prompt everywhere.
    by_array = pipe(PROMPTS, seed=np.array([7, 8]))
    assert by_array.seeds == [7, 8] and pipe(PROMPTS, seed=torch.tensor([7, 8])).seeds == [7, 8]
    assert torch.equal(by_array.stage_tensors[1][-1], by_seed.stage_tensors[1][-1])
    assert [e.tokens for e in pipe.encode_prompts(PROMPTS[0])] == [e.tokens for e in pipe.encode_prompts([PROMPTS[0]])]
    with pytest.raises(UserError, match="max_words must be"):
        pipe.encode_prompts(PROMPTS, max_words=0)


def test_seeds_outside_the_generator_range_are_refused(pipe):
    with pytest.raises(UserError, match=r"seeds must be in \[0, 2\*\*63\)"):
        pipe(PROMPTS, seed=2**63 - 1)  # the second image would need 2**63
    with pytest.raises(UserError, match="seeds must be"):
        pipe(PROMPTS, seed=[0, -1])
    assert len(pipe(PROMPTS, seed=2**63 - 2).images) == 2


def test_from_original_round_trip(pipe, tmp_path):
    import pickle

    from attngan.legacy import save_original

    save_original(pipe.generator, tmp_path / "netG.pth")
    save_original(pipe.text_encoder, tmp_path / "text_encoder.pth")
    itos = pipe.vocab.itos
    with open(tmp_path / "captions.pickle", "wb") as f:
        pickle.dump([[], [], dict(enumerate(itos)), {w: i for i, w in enumerate(itos)}], f, protocol=2)
    orig = AttnGANPipeline.from_original(
        tmp_path / "netG.pth", tmp_path / "text_encoder.pth", tmp_path / "captions.pickle"
    )
    assert_close_to_scale(orig(PROMPTS, seed=2).stage_tensors[1][-1], pipe(PROMPTS, seed=2).stage_tensors[1][-1])


def _randomise_batchnorm(module: torch.nn.Module, seed: int) -> None:
    """Non-trivial running statistics and affine parameters, so that folding them is really tested."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


def test_fast_sampling_copy_equals_plain_and_follows_weight_changes():
    torch.manual_seed(1)
    vocab = shapes_vocabulary()
    tiny = PRESETS["tiny"]
    te = TextEncoder(dataclasses.replace(tiny.text_encoder, vocab_size=len(vocab)))
    g = Generator(dataclasses.replace(tiny.generator, num_stages=3))  # 16 -> 32 -> 64: upsampling in every stage
    _randomise_batchnorm(g, 0)
    fast = AttnGANPipeline(te, g, vocab, fast=True)
    plain = AttnGANPipeline(te, g, vocab, fast=False)
    a, b = fast(PROMPTS, seed=5), plain(PROMPTS, seed=5)
    for k in range(len(PROMPTS)):
        for x, y in zip(a.stage_tensors[k], b.stage_tensors[k]):
            torch.testing.assert_close(x, y, atol=2e-4, rtol=0)
        for x, y in zip(a.attention_maps[k], b.attention_maps[k]):
            torch.testing.assert_close(x, y, atol=2e-4, rtol=0)
    # The copy is really different code: folded BN (no BatchNorm left) and the transposed-conv upsampling.
    copy = fast._sampling_generator()
    assert copy is not g and not any(isinstance(m, torch.nn.BatchNorm2d) for m in copy.modules())
    assert copy is fast._sampling_generator()  # cached while the weights do not change
    # New weights in the original generator reach the next call (the copy is rebuilt).
    _randomise_batchnorm(g, 1)
    c, d = fast(PROMPTS, seed=5), plain(PROMPTS, seed=5)
    assert not torch.allclose(c.stage_tensors[0][-1], a.stage_tensors[0][-1], atol=1e-3)
    torch.testing.assert_close(c.stage_tensors[0][-1], d.stage_tensors[0][-1], atol=2e-4, rtol=0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_sampling_draws_the_cpu_images_and_maps():
    """The noise is drawn on the CPU from the seeds, so a GPU draws the same images up to rounding."""
    te, g, vocab = _tiny_parts()
    _randomise_batchnorm(g, 1)
    cpu = AttnGANPipeline(te, g, vocab)(PROMPTS, seed=[5, 6])
    gpu_pipe = AttnGANPipeline(te, g, vocab).to("cuda")
    for fast in (True, False):
        gpu_pipe.fast = fast
        gpu = gpu_pipe(PROMPTS, seed=[5, 6])
        for a, b in zip(cpu.stage_tensors, gpu.stage_tensors):
            for x, y in zip(a, b):
                assert y.device.type == "cpu"
                torch.testing.assert_close(y, x, atol=2e-3, rtol=0)
        for a, b in zip(cpu.attention_maps, gpu.attention_maps):
            for x, y in zip(a, b):
                torch.testing.assert_close(y.cpu(), x, atol=2e-3, rtol=0)
