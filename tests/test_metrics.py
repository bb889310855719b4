"""Metrics: R-precision, Inception score, FID, feature cache, CLIP score, attribute accuracy, registry.

Feature extractors and classifiers are tiny injected networks: no weights are downloaded.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from attngan.data.synthetic import COLORS, ShapesDataset
from attngan.errors import UserError
from attngan.metrics import calc_metric, list_metrics, register_metric, report_metric
from attngan.metrics.attributes import (
    ATTRIBUTES,
    AttributeTrainConfig,
    attribute_accuracy,
    load_or_train_attribute_classifier,
)
from attngan.metrics.clip_score import clip_score
from attngan.metrics.features import (
    FeatureAccumulator,
    cached_feature_stats,
    compute_feature_stats,
    prepare_images,
)
from attngan.metrics.fid import frechet_distance
from attngan.metrics.inception import InceptionPoolFeatures, fid_inception_v3
from attngan.metrics.inception_score import inception_score, load_classifier
from attngan.metrics.r_precision import draw_mismatches, encode_for_r_precision, r_precision
from tolerance import assert_close_to_scale

# ------------------------------------------------------------------------------------------ R-precision


def test_r_precision_perfect_matcher_is_one():
    g = torch.Generator().manual_seed(0)
    vecs = torch.randn(500, 32, generator=g)
    res = r_precision(vecs, vecs.clone(), generator=torch.Generator().manual_seed(1))
    assert res["r_precision"] == 1.0
    assert res["r_precision_std"] == 0.0
    assert res["n"] == 500


def test_r_precision_random_matcher_is_near_one_percent():
    g = torch.Generator().manual_seed(0)
    img, txt = torch.randn(2000, 16, generator=g), torch.randn(2000, 16, generator=g)
    res = r_precision(img, txt, generator=torch.Generator().manual_seed(1))
    assert 0.0 < res["r_precision"] < 0.03


def test_r_precision_ties_count_one_over_k_plus_one():
    # A collapsed encoder (every vector equal) must score chance, not 100 %.
    ones = torch.ones(300, 8)
    res = r_precision(ones, ones, n_mismatch=99, splits=3, generator=torch.Generator().manual_seed(0))
    assert res["r_precision"] == pytest.approx(0.01)


def test_r_precision_duplicate_captions_tie_exactly():
    # Two images whose captions are the same text (equal sentence vectors, random values: the products are
    # not exact in floating point, so the true and the mismatch score must come from the same computation).
    for seed in range(10):
        g = torch.Generator().manual_seed(seed)
        img, t = torch.randn(2, 256, generator=g), torch.randn(1, 256, generator=g)
        res = r_precision(img, torch.cat([t, t]), n_mismatch=1, splits=1, generator=torch.Generator().manual_seed(0))
        assert res["hits"].tolist() == [0.5, 0.5]


def test_mismatches_never_come_from_the_same_test_image():
    image_ids = torch.arange(40) % 7  # 40 generated images of 7 test images
    mis = draw_mismatches(40, 99, torch.Generator().manual_seed(1), image_ids=image_ids)
    assert not bool((image_ids[mis] == image_ids.unsqueeze(1)).any())
    assert len(set(image_ids[mis[0]].tolist())) == 6  # every other test image can be drawn
    with pytest.raises(UserError, match="same test image"):
        draw_mismatches(5, 3, image_ids=torch.zeros(5, dtype=torch.long))


def test_r_precision_near_ties_from_float_rounding_are_ties():
    g = torch.Generator().manual_seed(0)
    img, t = torch.randn(2, 64, generator=g), torch.randn(1, 64, generator=g)
    txt = torch.cat([t, t + 1e-8 * torch.randn(1, 64, generator=g)])  # one caption encoded in two batches
    res = r_precision(img, txt, n_mismatch=1, splits=1, generator=torch.Generator().manual_seed(0))
    assert res["hits"].tolist() == [0.5, 0.5]


def test_r_precision_matches_plain_loop():
    g = torch.Generator().manual_seed(3)
    img, txt = torch.randn(60, 5, generator=g), torch.randn(60, 5, generator=g)
    txt = txt + 1.5 * img  # partly matching
    res = r_precision(img, txt, n_mismatch=9, splits=4, generator=torch.Generator().manual_seed(7))
    mis = draw_mismatches(60, 9, torch.Generator().manual_seed(7))
    hits = []
    for i in range(60):
        cos = [float(torch.cosine_similarity(img[i], txt[j], dim=0)) for j in [i, *mis[i].tolist()]]
        hits.append(1.0 if all(c < cos[0] for c in cos[1:]) else 0.0)
    parts = [np.mean(hits[k * 15 : (k + 1) * 15]) for k in range(4)]
    assert res["r_precision"] == pytest.approx(np.mean(parts))
    assert res["r_precision_std"] == pytest.approx(np.std(parts))
    assert 0.2 < res["r_precision"] < 1.0  # neither trivial case


def test_draw_mismatches_excludes_self_and_same_class():
    class_ids = torch.arange(200) % 7
    mis = draw_mismatches(200, 99, torch.Generator().manual_seed(0), class_ids, exclude_same_class=True)
    assert mis.shape == (200, 99)
    assert not (class_ids[mis] == class_ids[:, None]).any()
    plain = draw_mismatches(200, 99, torch.Generator().manual_seed(0))
    assert not (plain == torch.arange(200)[:, None]).any()
    assert (class_ids[plain] == class_ids[:, None]).any()  # without the option, same-class captions occur
    with pytest.raises(UserError, match="same class"):
        draw_mismatches(10, 5, None, torch.zeros(10, dtype=torch.long), exclude_same_class=True)


class _ToyImageEncoder(nn.Module):
    def forward(self, images):
        glob = images.mean(dim=(2, 3))  # (B, 3)
        return None, glob


class _ToyTextEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.table = nn.Embedding(10, 3)
        self.drop = nn.Dropout(0.9)

    def forward(self, captions, lengths):
        return None, self.drop(self.table(captions[:, 0]))


def test_r_precision_from_encoders_uses_eval_mode_and_restores_it():
    torch.manual_seed(0)
    img_enc, txt_enc = _ToyImageEncoder(), _ToyTextEncoder()
    txt_enc.train()
    table = txt_enc.table.weight.detach()
    batches = []
    for b in range(4):
        ids = torch.arange(10).roll(b)
        # The image of caption k has the colour table[k].
        images = table[ids][:, :, None, None].expand(10, 3, 4, 4)
        batches.append((images, ids[:, None], torch.ones(10, dtype=torch.long), ids))
    iv, tv, cls = encode_for_r_precision(img_enc, txt_enc, batches)
    assert txt_enc.training  # restored
    assert_close_to_scale(iv, tv)  # dropout was off
    assert torch.equal(cls, torch.cat([b[3] for b in batches]))
    res = calc_metric(
        "r_precision", image_encoder=img_enc, text_encoder=txt_enc, batches=batches, n_mismatch=20
    )
    # Mismatches are captions of other images, some with the same text (class): those tie.
    assert 50.0 < res["r_precision"] < 100.0
    res_cls = calc_metric(
        "r_precision", image_encoder=img_enc, text_encoder=txt_enc, batches=batches, n_mismatch=20,
        exclude_same_class=True,
    )  # fmt: skip
    assert res_cls["r_precision"] == 100.0
    assert "99" not in res_cls["protocol"] and "20 random mismatching" in res_cls["protocol"]


# ------------------------------------------------------------------------------------- Inception score


def test_inception_score_uniform_is_one_and_confident_balanced_is_num_classes():
    mean, std = inception_score(np.full((100, 7), 1 / 7), splits=10)
    assert mean == pytest.approx(1.0) and std == pytest.approx(0.0, abs=1e-12)
    onehot = np.eye(10)[np.arange(200) % 10]  # every split holds each class twice
    mean, std = inception_score(onehot, splits=10)
    assert mean == pytest.approx(10.0) and std == pytest.approx(0.0, abs=1e-9)


def test_inception_score_matches_improved_gan_formula():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(103, 6)) * 2
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    scores = []
    for i in range(5):  # openai/improved-gan inception_score.py, verbatim maths
        part = p[(i * p.shape[0] // 5) : ((i + 1) * p.shape[0] // 5), :]
        kl = part * (np.log(part) - np.log(np.expand_dims(np.mean(part, 0), 0)))
        scores.append(np.exp(np.mean(np.sum(kl, 1))))
    mean, std = inception_score(p, splits=5)
    assert mean == pytest.approx(np.mean(scores), rel=1e-12)
    assert std == pytest.approx(np.std(scores), rel=1e-9)  # population std
    assert std != pytest.approx(np.std(scores, ddof=1), rel=1e-6)


def test_inception_score_metric_with_injected_classifier():
    # A "classifier" reading the class from the red channel: 4 classes, balanced -> IS = 4.
    def classifier(images):
        k = ((images[:, 0].mean(dim=(1, 2)) + 1) * 1.999).long().clamp(0, 3)
        return torch.nn.functional.one_hot(k, 4).float()

    levels = torch.tensor([-0.75, -0.25, 0.25, 0.75]).repeat(10)
    images = levels[:, None, None, None].expand(40, 3, 8, 8).contiguous()
    res = calc_metric("inception_score", images=images, classifier=classifier, splits=2, batch_size=7)
    assert res["is_mean"] == pytest.approx(4.0) and res["n"] == 40 and res["num_classes"] == 4
    assert "Salimans" in res["protocol"]


class _ToyLogits(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(3, 5)

    def forward(self, x):
        return self.fc(x.mean(dim=(2, 3)))  # (B, 5)


@pytest.mark.skipif(not hasattr(torch.export, "Dim"), reason="torch.export.Dim needs torch >= 2.2")
def test_load_classifier_exported_program(tmp_path):
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    net = _ToyLogits()
    pooled = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear").mean(dim=(2, 3))
    big = torch.rand(2, 3, 299, 299)
    exported = torch.export.export(net, (big,), dynamic_shapes=({0: torch.export.Dim("b")},))
    torch.export.save(exported, str(tmp_path / "clf.pt2"))
    fn_ep, desc_ep = load_classifier(tmp_path / "clf.pt2")
    assert_close_to_scale(fn_ep(x), torch.softmax(net.fc(pooled), 1))
    assert "exported" in desc_ep


def test_load_classifier_module_torchscript_and_unbiased_logits(tmp_path):
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    net = _ToyLogits()
    pooled = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear").mean(dim=(2, 3))  # (4, 3)
    fn, desc = load_classifier(net)
    assert_close_to_scale(fn(x), torch.softmax(net(x), 1))
    assert "_ToyLogits" in desc
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated in torch 2.x, still read
        torch.jit.script(_ToyLogits()).save(str(tmp_path / "clf.ts"))
        fn_ts, desc_ts = load_classifier(tmp_path / "clf.ts")
        assert_close_to_scale(fn_ts(x), torch.softmax(net.fc(pooled), 1))
        assert "TorchScript" in desc_ts
    # improved-gan's logits omit the softmax bias: pool3 @ W.
    from attngan.metrics.inception_score import _SoftmaxClassifier

    unbiased = _SoftmaxClassifier(_ToyLogits(), unbiased_fc=True)
    assert_close_to_scale(unbiased(x), torch.softmax(pooled @ net.fc.weight.T, 1))
    with pytest.raises(UserError, match="neither"):
        load_classifier(tmp_path / "missing.pt")


# ------------------------------------------------------------------------------------------------- FID


def _fid_eigen(mu1, s1, mu2, s2):
    """Independent reference: Tr sqrt(S1 S2) = sum sqrt(eig(A S2 A)) with A = S1^(1/2) (eigh)."""
    w, v = np.linalg.eigh(s1)
    a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = np.linalg.eigvalsh(a @ s2 @ a)
    return float(
        ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(m, 0, None)).sum()
    )


def test_fid_against_itself_is_zero_and_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 12))
    y = rng.normal(size=(250, 12)) @ rng.normal(size=(12, 12)) * 0.5 + 0.3
    mx, sx = x.mean(0), np.cov(x, rowvar=False)
    my, sy = y.mean(0), np.cov(y, rowvar=False)
    assert abs(frechet_distance(mx, sx, mx, sx)) < 1e-8
    fid = frechet_distance(mx, sx, my, sy)
    assert fid > 1.0
    assert fid == pytest.approx(_fid_eigen(mx, sx, my, sy), rel=1e-8)


def test_fid_singular_covariances_use_eps_offset():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(5, 20)), rng.normal(size=(5, 20))  # rank 4 covariances in 20 dimensions
    fid = frechet_distance(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
    assert np.isfinite(fid) and fid > 0


def test_feature_accumulator_matches_np_cov():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(101, 6)) * 3 + 100.0  # large offset: the shifted accumulation stays accurate
    acc = FeatureAccumulator()
    for chunk in np.array_split(x, 7):
        acc.add(chunk)
    stats = acc.stats()
    assert stats.n == 101
    np.testing.assert_allclose(stats.mu, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.sigma, np.cov(x, rowvar=False), rtol=1e-9, atol=1e-9)


def test_prepare_images_quantizes_floats_to_png_levels():
    u8 = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    f = u8.float() / 127.5 - 1 + 0.001  # slightly off the 8-bit levels
    assert torch.allclose(prepare_images(f), prepare_images(u8), atol=1e-6)
    assert not torch.allclose(prepare_images(f, quantize=False), prepare_images(u8), atol=1e-4)


class _CountingExtractor(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 6, 3, 2)
        self.calls = 0

    def forward(self, images):
        self.calls += 1
        return torch.relu(self.conv(images)).mean(dim=(2, 3))  # (B, 6)


def test_fid_real_statistics_are_cached(tmp_path):
    g = torch.Generator().manual_seed(0)
    real = torch.rand(40, 3, 16, 16, generator=g) * 2 - 1
    fake = torch.rand(30, 3, 16, 16, generator=g) * 1.5 - 1
    ext = _CountingExtractor()
    opts = dict(extractor=ext, extractor_id="toy", dataset_id={"name": "toy", "n": 40}, cache_dir=tmp_path)
    first = calc_metric("fid", images=fake, real_images=real, batch_size=10, **opts)
    calls = ext.calls
    assert calls == 3 + 4  # fake and real batches
    second = calc_metric("fid", images=fake, real_images=real, batch_size=10, **opts)
    assert ext.calls == calls + 3  # only the fake images again: the real statistics came from the cache
    assert second["fid"] == pytest.approx(first["fid"], rel=1e-12)
    assert first["fid"] > 0 and first["n"] == 30 and first["n_real"] == 40
    assert len(list(tmp_path.glob("fid-real-*.npz"))) == 1
    # Another dataset identity misses the cache.
    calc_metric("fid", images=fake, real_images=real, batch_size=10, **{**opts, "dataset_id": "other"})
    assert ext.calls == calls + 3 + 7
    # Precomputed statistics from an .npz as pytorch-fid saves them (mu, sigma; no n).
    stats = compute_feature_stats(ext, real)
    np.savez(tmp_path / "real.npz", mu=stats.mu, sigma=stats.sigma)
    from_file = calc_metric("fid", images=fake, real_stats=tmp_path / "real.npz", extractor=ext)
    assert from_file["fid"] == pytest.approx(first["fid"], rel=1e-9)
    # Against itself: ~0.
    self_fid = calc_metric("fid", images=real, real_images=real, extractor=ext)
    assert abs(self_fid["fid"]) < 1e-6


def test_cached_feature_stats_computes_once(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        acc = FeatureAccumulator()
        acc.add(np.arange(12.0).reshape(4, 3) ** 1.5)
        return acc.stats()

    a = cached_feature_stats(tmp_path, {"d": 1}, compute)
    b = cached_feature_stats(tmp_path, {"d": 1}, compute)
    assert len(calls) == 1
    np.testing.assert_array_equal(a.sigma, b.sigma)
    assert b.n == 4
    assert not list(tmp_path.glob("*.tmp"))  # atomic write left no temporary file


def test_fid_inception_architecture_and_weights_file():
    net = fid_inception_v3(load=False, with_fc=True)
    keys = set(net.state_dict())
    assert "Mixed_7c.branch_pool.conv.weight" in keys and not any(k.startswith("AuxLogits") for k in keys)
    assert type(net.Mixed_7c).__name__ == "FIDInceptionE_2" and net.fc.weight.shape == (1008, 2048)
    net.fc = nn.Identity()
    feats = InceptionPoolFeatures(net.eval())(torch.rand(2, 3, 32, 32) * 2 - 1)  # resized to 299 inside
    assert feats.shape == (2, 2048) and bool((feats >= 0).all())  # pool3 after ReLU
    with pytest.raises(UserError, match="do not exist"):
        fid_inception_v3("/nonexistent/pt_inception.pth")


def test_fid_inception_matches_pytorch_fid_blocks():
    pf = pytest.importorskip("pytorch_fid.inception")
    torch.manual_seed(0)
    ours = fid_inception_v3(load=False, with_fc=True)
    for m in ours.modules():  # non-trivial BN statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    ref = pf._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    for name, cls, args in [
        ("Mixed_5b", pf.FIDInceptionA, (192, 32)), ("Mixed_5c", pf.FIDInceptionA, (256, 64)),
        ("Mixed_5d", pf.FIDInceptionA, (288, 64)), ("Mixed_6b", pf.FIDInceptionC, (768, 128)),
        ("Mixed_6c", pf.FIDInceptionC, (768, 160)), ("Mixed_6d", pf.FIDInceptionC, (768, 160)),
        ("Mixed_6e", pf.FIDInceptionC, (768, 192)), ("Mixed_7b", pf.FIDInceptionE_1, (1280,)),
        ("Mixed_7c", pf.FIDInceptionE_2, (2048,)),
    ]:  # fmt: skip
        setattr(ref, name, cls(*args))
    ref.load_state_dict(ours.state_dict())
    ref.eval()
    x = torch.rand(2, 3, 80, 80) * 2 - 1
    assert torch.allclose(ours(x), ref(x), atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------------------ CLIP score


class _ToyClip(nn.Module):
    def encode_image(self, pixels):
        return pixels.mean(dim=(2, 3))  # (B, 3): mean colour

    def encode_text(self, tokens):
        return tokens.float()  # (B, 3)


def test_clip_score_is_100_times_clamped_cosine():
    colors = {"red": [1.0, -1.0, -1.0], "green": [-1.0, 1.0, -1.0]}
    images = torch.tensor([colors["red"], colors["green"], colors["red"]])[:, :, None, None].expand(
        3, 3, 5, 5
    )
    captions = ["red", "red", "green"]

    def tokenizer(texts):
        return torch.tensor([colors[t] for t in texts])

    def preprocess(pil):
        return torch.from_numpy(np.asarray(pil, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)

    mean, std, n = clip_score(_ToyClip(), tokenizer, preprocess, images, captions, batch_size=2)
    # cos(red, red) = 1; cos(red, green) = -1/3 -> clamped to 0.
    assert n == 3 and mean == pytest.approx(100 / 3, rel=1e-3)
    skipped = calc_metric("clip_score")
    assert skipped["clip_score"] is None and "no CLIP model" in skipped["skipped"]


# ------------------------------------------------------------------------------------ registry + report


def test_registry_and_report(tmp_path):
    assert {"inception_score", "fid", "r_precision", "clip_score", "attribute_accuracy"} <= set(
        list_metrics()
    )
    with pytest.raises(UserError, match="unknown metric"):
        calc_metric("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_metric("fid")(lambda **kw: {})
    vecs = torch.randn(50, 4)
    res = calc_metric("r_precision", image_vecs=vecs, text_vecs=vecs, splits=5, n_mismatch=9)
    assert res["metric"] == "r_precision" and res["n"] == 50 and res["r_precision"] == 100.0
    assert "R-precision" in res["protocol"] and "DAMSM" in res["feature_extractor"]
    report_metric(res, tmp_path, snapshot="model/")
    report_metric(res, tmp_path)
    lines = (tmp_path / "metric-r_precision.jsonl").read_text().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert first["r_precision"] == 100.0 and first["snapshot"] == "model/" and "timestamp" in first
    with pytest.raises(UserError, match="does not exist"):
        report_metric(res, tmp_path / "missing")


# ------------------------------------------------------------------------------------ attribute accuracy


@pytest.fixture(scope="module")
def attribute_classifier(tmp_path_factory):
    # One intra-op thread: on 2 shared cores, 2 threads wait on each other when the other core is busy.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cache = tmp_path_factory.mktemp("attr-cache")
        model = load_or_train_attribute_classifier(cache, image_size=32, config=AttributeTrainConfig())
        yield model, cache
    finally:
        torch.set_num_threads(threads)


def _shapes_test_set(n: int, size: int):
    """Images (N, 3, size, size) in [-1, 1], ground-truth scenes and full first captions of the built-in
    test split."""
    ds = ShapesDataset(split="test", num_images=n, image_sizes=(size,), seed=3, train=False)
    samples = [ds[i] for i in range(n)]
    images = torch.stack([smp["images"][-1] for smp in samples])
    texts = [ds.texts[i][0] for i in range(n)]  # untruncated (the encoded caption may lose words)
    return images, [smp["attributes"] for smp in samples], texts


def test_attribute_classifier_is_accurate_on_heldout_real_images(attribute_classifier):
    model, cache = attribute_classifier
    assert min(model.heldout_accuracy.values()) > 0.95, model.heldout_accuracy
    # Cached: the second call loads the same weights.
    again = load_or_train_attribute_classifier(cache, image_size=32, config=AttributeTrainConfig())
    assert again.heldout_accuracy == model.heldout_accuracy
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k


def test_attribute_accuracy_on_real_and_wrong_targets(attribute_classifier):
    model, _ = attribute_classifier
    images, scenes, texts = _shapes_test_set(300, 64)  # demo resolution, resized by the classifier
    res = attribute_accuracy(model, images, scenes)
    for name in ATTRIBUTES:
        assert res[f"{name}_acc"] > 0.93, res
    assert res["n"] == 300 and res["chance"]["color"] == pytest.approx(1 / len(COLORS))
    # Targets with another colour: colour accuracy collapses, the others stay.
    names = list(COLORS)
    wrong = [[{**s[0], "color": names[(names.index(s[0]["color"]) + 1) % len(names)]}] for s in scenes]
    res_wrong = attribute_accuracy(model, images, wrong)
    assert res_wrong["color_acc"] < 0.05 and res_wrong["shape_acc"] == res["shape_acc"]
    # Targets parsed from the captions (through the metric's captions option).
    res_cap = calc_metric("attribute_accuracy", images=images, captions=texts, classifier=model)
    assert res_cap["color_acc"] > 0.93 and res_cap["shape_acc"] > 0.93
    assert res_cap["n_per_attribute"]["color"] == 300
    # Unstated attributes (parsed captions without size) are not counted.
    partial = [
        {"color": s[0]["color"], "shape": s[0]["shape"], "size": None, "position": None} for s in scenes
    ]
    res_partial = calc_metric(
        "attribute_accuracy", images=images, target_attributes=partial, classifier=model
    )
    assert res_partial["size_acc"] is None and res_partial["n_per_attribute"]["size"] == 0
    assert res_partial["color_acc"] == res["color_acc"] and "attribute accuracy" in res_partial["protocol"]
    with pytest.raises(UserError, match="single-object"):
        attribute_accuracy(model, images[:1], [scenes[0] * 2])


# ------------------------------------------------------------------------------------ attention grounding


def test_attention_grounding_reads_the_named_words_inside_their_objects():
    from attngan.data.synthetic import object_mask, sample_scene

    rng = np.random.default_rng(0)
    scene = sample_scene(rng, 1)
    obj = scene[0]
    tokens = ["a", obj["size"], obj["color"], obj["shape"], "at", "the", "top"]
    h = 16
    region = torch.from_numpy(object_mask(obj, h)).double()
    # Plain reference of the mask: cell centres inside the object's bounding box and outline.
    assert 0 < region.sum() < h * h and region.mean().item() < 0.2
    x0, y0, x1, y1 = obj["bbox"]
    ys, xs = torch.nonzero(region, as_tuple=True)
    assert ((xs + 0.5) / h >= x0 - 1e-6).all() and ((xs + 0.5) / h <= x1 + 1e-6).all()
    assert ((ys + 0.5) / h >= y0 - 1e-6).all() and ((ys + 0.5) / h <= y1 + 1e-6).all()
    uniform = torch.full((len(tokens), h, h), 1.0 / len(tokens))
    on_object = uniform.clone()
    on_object[2] = region / region.sum() * 0.5 + 0.5 / (h * h)  # colour word: half its mass on the object
    on_object[3] = region / region.sum()  # shape word: all of it
    res = calc_metric("attention_grounding", attention=[uniform, on_object], tokens=[tokens, tokens], scenes=[scene, scene])
    area = region.mean().item()
    expected = np.mean([area, area, 0.5 + 0.5 * area, 1.0])  # a plain average over the four words
    assert res["n_words"] == 4 and res["n"] == 2
    assert res["attention_grounding"] == pytest.approx(expected, rel=1e-6)  # float32 maps
    assert res["chance"] == pytest.approx(area, rel=1e-9)
    assert res["shape"] == pytest.approx((area + 1.0) / 2, rel=1e-6)
    # Words the scene does not hold, or that name two objects, are not counted.
    other = [w for w in ("circle", "square") if w != obj["shape"]][0]
    res = calc_metric("attention_grounding", attention=[on_object], tokens=[["a", "red", other]], scenes=[scene])
    assert res["n_words"] == (1 if obj["color"] == "red" else 0)
