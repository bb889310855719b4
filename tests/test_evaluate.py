"""``attngan.evaluation`` and ``attngan evaluate`` on a tiny seeded model and the shapes test set."""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from attngan.cli import cli, main
from attngan.config import PRESETS, to_dict
from attngan.data.base import image_to_tensor
from attngan.data.synthetic import COLORS, SHAPES, ShapesDataset, shapes_vocabulary
from attngan.errors import UserError
from attngan.evaluation import (
    ClipModel,
    draw_test_captions,
    evaluate_model,
    format_table,
    parse_metrics,
    weights_problem,
)
from attngan.metrics.attributes import AttributeClassifier
from attngan.metrics.r_precision import r_precision
from attngan.nn import Generator, ImageEncoder, TextEncoder
from attngan.pipeline import AttnGANPipeline

N = 64
SEED = 3
ALL = ["r_precision", "is", "fid", "attributes", "attention_grounding", "clip"]


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    vocab = shapes_vocabulary()
    tiny = PRESETS["tiny"]
    te = TextEncoder(dataclasses.replace(tiny.text_encoder, vocab_size=len(vocab)))
    return AttnGANPipeline(te, Generator(tiny.generator), vocab, ImageEncoder(tiny.image_encoder))


@pytest.fixture(scope="module")
def test_set():
    return ShapesDataset(
        "test", num_images=40, image_sizes=[32], words_num=10, captions_per_image=3, train=False
    )


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(1)
    return AttributeClassifier(32, width=8).eval()


def _is_classifier(images: torch.Tensor) -> torch.Tensor:
    """A fixed toy classifier: images (B, 3, H, W) -> probabilities (B, 4) from the mean colour."""
    w = torch.tensor([[3.0, -1.0, 0.5, 0.0], [0.0, 2.0, -2.0, 1.0], [-1.0, 0.0, 1.0, 2.0]])
    return torch.softmax(images.mean((2, 3)) @ w * 5, dim=1)


def _fid_features(images: torch.Tensor) -> torch.Tensor:
    """A fixed toy feature extractor: 2 x 2 average pooling, (B, 12)."""
    return torch.nn.functional.adaptive_avg_pool2d(images, 2).flatten(1)


class _ToyClip:
    """encode_image: mean colour; encode_text: (1, number of words, number of colour words)."""

    def encode_image(self, pixels):
        return pixels.mean((2, 3))

    def encode_text(self, tokens):
        return tokens


def _toy_clip() -> ClipModel:
    def tokenizer(texts):
        return torch.tensor([[1.0, len(t.split()), sum(w in COLORS for w in t.split())] for t in texts])

    return ClipModel(_ToyClip(), tokenizer, image_to_tensor, "toy clip")


@pytest.fixture(scope="module")
def result(pipe, test_set, classifier, tmp_path_factory):
    return evaluate_model(
        pipe,
        test_set,
        ALL,
        n_images=N,
        batch_size=16,
        seed=SEED,
        is_classifier=_is_classifier,
        fid_extractor=_fid_features,
        fid_extractor_id="toy-pool2",
        cache_dir=tmp_path_factory.mktemp("cache"),
        attribute_classifier=classifier,
        clip=_toy_clip(),
        progress=False,
    )


def test_every_requested_metric_names_its_protocol_and_sample_count(result):
    assert list(result["metrics"]) == ALL
    for name, res in result["metrics"].items():
        assert "skipped" not in res, name
        assert isinstance(res["protocol"], str) and len(res["protocol"]) > 20, name
        assert res["n"] == N, name
    assert result["n_images"] == N and result["seed"] == SEED and result["image_size"] == 32
    assert f"{N} images" in result["protocol"]
    json.dumps(result, allow_nan=False)  # plain JSON
    table = format_table(result)
    labels = (
        "R-precision (%)",
        "Inception score",
        "FID",
        "attributes: color",
        "real test images",
        "attention grounding (chance",
        "CLIP score",
    )
    for label in labels:
        assert label in table
    assert table.count(f"{N:>8}  [") >= 5  # every row shows its sample count and refers to a protocol
    for i in range(1, 7):
        assert f"\n[{i}] " in table


def test_attention_grounding_equals_the_metric_on_the_pipeline_maps(result, pipe, test_set):
    from attngan.evaluation import draw_test_captions
    from attngan.metrics.grounding import grounding_shares

    res = result["metrics"]["attention_grounding"]
    assert 0 < res["chance"] < 0.5 and 0 <= res["attention_grounding"] <= 1 and res["n_words"] > N
    draws = draw_test_captions(test_set, N, seed=SEED)
    shares = []
    for k in range(N):  # the images one by one, each with its own noise seed
        out = pipe(draws.texts[k], seed=draws.seeds[k])
        scene = test_set.extra(int(draws.indices[k]))["attributes"]
        shares += grounding_shares(out.attention_maps[0][-1], out.tokens[0], scene)
    assert len(shares) == res["n_words"]
    assert res["attention_grounding"] == pytest.approx(np.mean([s for _, s, _ in shares]), rel=1e-4)
    assert res["chance"] == pytest.approx(np.mean([a for _, _, a in shares]), rel=1e-9)


def test_r_precision_equals_a_direct_computation(result, pipe, test_set):
    res = result["metrics"]["r_precision"]
    assert 0.0 <= res["r_precision"] / 100 <= 1.0
    draws = draw_test_captions(test_set, N, SEED)
    out = pipe(draws.texts, seed=draws.seeds, return_attention=False)
    images = torch.stack([stages[-1] for stages in out.stage_tensors])  # (N, 3, 32, 32)
    images = torch.round((images.clamp(-1, 1) + 1) * 127.5) / 127.5 - 1  # 8-bit, as saved images
    enc = pipe.encode_prompts(draws.texts)
    lengths = torch.tensor([e.length for e in enc])
    captions = torch.zeros(N, int(lengths.max()), dtype=torch.long)
    for j, e in enumerate(enc):
        captions[j, : e.length] = torch.tensor(e.ids)
    with torch.no_grad():
        _, image_vecs = pipe.image_encoder.eval()(images)
        _, text_vecs = pipe.text_encoder.eval()(captions, lengths)
    ref = r_precision(
        image_vecs, text_vecs, n_mismatch=N - 1, generator=torch.Generator().manual_seed(SEED),
        image_ids=torch.as_tensor(draws.indices),  # another caption of the same test image is no mismatch
    )  # fmt: skip
    assert res["r_precision"] == pytest.approx(100 * ref["r_precision"], abs=1e-9)
    assert res["r_precision_std"] == pytest.approx(100 * ref["r_precision_std"], abs=1e-9)
    assert res["n_mismatch"] == N - 1 and res["splits"] == 10


def test_attribute_accuracy_in_range_and_counts_only_stated_attributes(result, test_set):
    res = result["metrics"]["attributes"]
    draws = draw_test_captions(test_set, N, SEED)
    for attr in ("color", "shape", "size", "position"):
        assert 0.0 <= res[f"{attr}_acc"] <= 1.0
    assert 0.0 <= res["all_acc"] <= min(res[f"{a}_acc"] for a in ("color", "shape", "size", "position"))
    assert res["chance"] == {"color": 1 / 8, "shape": 1 / 5, "size": 1 / 2, "position": 1 / 9}
    # size is counted only for captions that name one
    assert res["n_per_attribute"]["size"] == sum(
        ("small" in t.split()) or ("large" in t.split()) for t in draws.texts
    )
    assert res["n_per_attribute"]["size"] < N
    # a caption cut before its shape word still counts its colour, but not its shape
    assert res["n_per_attribute"]["shape"] == sum(bool(set(t.split()) & set(SHAPES)) for t in draws.texts)
    assert res["n_per_attribute"]["color"] == sum(bool(set(t.split()) & set(COLORS)) for t in draws.texts)
    assert 0.0 <= res["real_reference"]["all_acc"] <= 1.0


def test_is_fid_clip_values(result):
    m = result["metrics"]
    assert 1.0 <= m["is"]["is_mean"] <= 4.0 and m["is"]["num_classes"] == 4  # 1 <= IS <= number of classes
    assert m["fid"]["fid"] > 0 and m["fid"]["n_real"] == 40
    assert 0 <= m["clip"]["clip_score"] <= 100


def test_numbers_do_not_depend_on_batch_size(result, pipe, test_set, classifier):
    other = evaluate_model(
        pipe,
        test_set,
        ["r_precision", "attributes"],
        n_images=N,
        batch_size=64,
        seed=SEED,
        attribute_classifier=classifier,
        progress=False,
    )
    for key in ("r_precision", "r_precision_std"):
        assert other["metrics"]["r_precision"][key] == pytest.approx(result["metrics"]["r_precision"][key])
    for key in ("all_acc", "color_acc", "position_acc"):
        assert other["metrics"]["attributes"][key] == result["metrics"]["attributes"][key]


def test_caption_draws_are_seeded_and_cover_the_test_set(test_set):
    a, b = draw_test_captions(test_set, 100, 0), draw_test_captions(test_set, 100, 0)
    assert a.texts == b.texts and np.array_equal(a.indices, b.indices)
    assert a.seeds == list(range(100))
    assert sorted(a.indices[:40].tolist()) == list(range(40))  # the first pass is a permutation
    assert draw_test_captions(test_set, 100, 1).texts != a.texts
    for index, ids, text in zip(a.indices, a.caption_ids, a.texts):
        assert len(ids) <= test_set.words_num
        full = [test_set.caption_ids(int(index), k) for k in range(test_set.num_captions(int(index)))]
        assert any(f[: len(ids)] == ids for f in full)  # a (truncated) caption of that very image
        assert text.split() == [test_set.vocab.itos[i] for i in ids]


def test_missing_weights_are_skipped_with_a_message(pipe, test_set, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty hub cache
    res = evaluate_model(
        pipe,
        test_set,
        "r_precision,is,fid,clip",
        n_images=16,
        batch_size=16,
        progress=False,
        cache_dir=tmp_path,
    )
    m = res["metrics"]
    assert m["r_precision"]["n"] == 16 and "skipped" not in m["r_precision"]
    assert "inception_v3_google" in m["is"]["skipped"] and "--is-classifier" in m["is"]["skipped"]
    assert "--fid-weights" in m["fid"]["skipped"] and "pt_inception-2015-12-05" in m["fid"]["skipped"]
    assert "CLIP" in m["clip"]["skipped"]
    for name in ("is", "fid", "clip"):
        assert m[name]["n"] == 0 and m[name]["protocol"]
    assert "skipped" in format_table(res)
    with pytest.raises(UserError, match="nothing to evaluate: fid: .*--fid-weights"):
        evaluate_model(pipe, test_set, ["fid"], n_images=16, progress=False)
    with pytest.raises(UserError, match="does not exist"):  # a file named explicitly must exist
        weights_problem(str(tmp_path / "cub_inception.pth"))
    assert weights_problem("torchvision-imagenet", allow_download=True) is None


def test_fid_real_statistics_are_cached(pipe, test_set, tmp_path):
    kwargs = dict(n_images=16, batch_size=16, fid_extractor=_fid_features, cache_dir=tmp_path, progress=False)
    first = evaluate_model(pipe, test_set, ["fid"], fid_extractor_id="toy-pool2", **kwargs)
    files = sorted(p.name for p in (tmp_path / "fid").glob("*.npz"))
    assert len(files) == 1
    second = evaluate_model(pipe, test_set, ["fid"], fid_extractor_id="toy-pool2", **kwargs)
    assert second["metrics"]["fid"]["fid"] == first["metrics"]["fid"]["fid"]
    assert sorted(p.name for p in (tmp_path / "fid").glob("*.npz")) == files


def test_attributes_on_a_dataset_without_ground_truth_are_skipped(pipe, test_set, classifier, monkeypatch):
    monkeypatch.setattr(type(test_set), "extra", lambda self, index: {})
    res = evaluate_model(
        pipe,
        test_set,
        ["r_precision", "attributes"],
        n_images=16,
        progress=False,
        attribute_classifier=classifier,
    )
    assert "shapes" in res["metrics"]["attributes"]["skipped"]


def test_r_precision_options_and_mismatched_encoders(pipe, test_set):
    res = evaluate_model(
        pipe,
        test_set,
        ["r_precision"],
        n_images=16,
        seed=SEED,
        r_precision_other_classes=True,
        progress=False,
    )
    rp = res["metrics"]["r_precision"]
    assert rp["exclude_same_class"] is True and "other classes only" in rp["protocol"]
    assert "R-precision (%), other classes" in format_table(res)
    narrow = ImageEncoder(dataclasses.replace(PRESETS["tiny"].image_encoder, embed_dim=8))
    with pytest.raises(UserError, match="image encoder's width 8"):
        evaluate_model(pipe, test_set, ["r_precision"], n_images=16, image_encoder=narrow, progress=False)


def test_parse_metrics():
    assert parse_metrics("fid, is,r_precision") == ["r_precision", "is", "fid"]
    assert parse_metrics("grounding,attributes") == ["attributes", "attention_grounding"]
    assert parse_metrics(["inception_score", "attribute_accuracy", "clip_score"]) == [
        "is",
        "attributes",
        "clip",
    ]
    with pytest.raises(UserError, match="unknown metric 'bleu'"):
        parse_metrics("r_precision,bleu")


# ------------------------------------------------------------------------------------------------ CLI


def run_main(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    captured = capsys.readouterr()
    return exc.value.code, captured.out, captured.err


def test_help_lists_the_options():
    result = CliRunner().invoke(cli, ["evaluate", "--help"])
    assert result.exit_code == 0
    for option in (
        "--checkpoint",
        "--dataset",
        "--data-dir",
        "--metrics",
        "--n-images",
        "--batch-size",
        "--seed",
        "--device",
        "--out",
        "--original-image-encoder",
        "--r-precision-other-classes",
        "--is-classifier",
        "--fid-extractor",
        "--fid-weights",
        "--words-num",
    ):
        assert option in result.output
    assert "30000" in result.output  # the paper's sample count is the default


def test_missing_checkpoint_is_a_one_line_error(tmp_path, capsys):
    code, out, err = run_main(
        ["evaluate", "--checkpoint", str(tmp_path / "nope"), "--dataset", "shapes"], capsys
    )
    assert code == 2
    assert err.startswith("Error: ") and "does not exist" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_cli_on_a_run_folder(pipe, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    run = tmp_path / "00000-tiny"
    pipe.save_pretrained(run / "model")
    (run / "config.json").write_text(json.dumps({"preset": to_dict(PRESETS["tiny"])}))
    out = tmp_path / "eval.json"
    args = ["evaluate", "--checkpoint", str(run), "--n-images", "24", "--batch-size", "16", "--device", "cpu"]
    main(args + ["--metrics", "r_precision,is", "--out", str(out), "--cache-dir", str(tmp_path / "cache")])
    stdout = capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["data"]["dataset"] == "shapes" and data["data"]["num_images"] == 128  # the run's own data
    assert data["data"]["words_num"] == 10 and "truncated to 10 words" in data["protocol"]
    assert data["metrics"]["r_precision"]["n"] == 24 and "protocol" in data["metrics"]["r_precision"]
    assert "torch hub cache" in data["metrics"]["is"]["skipped"]
    assert "R-precision (%)" in stdout and "skipped" in stdout
    lines = (run / "metric-r_precision.jsonl").read_text().splitlines()
    assert (
        len(lines) == 1
        and json.loads(lines[0])["r_precision"] == data["metrics"]["r_precision"]["r_precision"]
    )
    assert not (run / "metric-inception_score.jsonl").exists()  # skipped metrics are not reported
    record = json.loads(lines[0])  # the line names what made its figure
    assert record["seed"] == 0 and record["n_images"] == 24 and record["ca_mean"] is False
    assert record["data"]["dataset"] == "shapes" and Path(record["snapshot"]).is_absolute()
    # An existing --out is never replaced without --overwrite (it could be any file, e.g. the model's own).
    vocab = run / "model" / "vocab.json"
    before = vocab.read_bytes()
    code, _, err = run_main(args + ["--metrics", "r_precision", "--out", str(vocab)], capsys)
    assert code == 2 and "already exists; pass --overwrite" in err and vocab.read_bytes() == before
    main(args + ["--metrics", "r_precision", "--out", str(out), "--overwrite", "--cache-dir", str(tmp_path / "cache")])
    capsys.readouterr()
    main(args + ["--metrics", "r_precision", "--out", str(out), "--overwrite", "--words-num", "4"])
    capsys.readouterr()
    data = json.loads(out.read_text())
    assert data["data"]["words_num"] == 4 and "truncated to 4 words" in data["protocol"]
    code, _, err = run_main(args + ["--metrics", ""], capsys)  # not "the default metrics"
    assert code == 2 and "no metric given" in err
    # Only a metric whose weights are missing: a one-line error, exit code 2.
    code, _, err = run_main(args + ["--metrics", "fid"], capsys)
    assert code == 2 and "nothing to evaluate" in err and "Traceback" not in err


def test_real_statistics_key_follows_the_image_files(tmp_path, monkeypatch):
    """The FID cache key of a folder dataset: same names and captions elsewhere, or an image replaced in
    place, must not reuse the statistics of other pixels."""
    import os
    import shutil

    from PIL import Image

    from attngan.data.folder import FolderDataset
    from attngan.evaluation.reference import dataset_identity

    root = tmp_path / "photos"
    root.mkdir()
    for i in range(3):
        Image.fromarray(np.full((12, 12, 3), 40 * i, np.uint8)).save(root / f"p{i}.png")
        (root / f"p{i}.txt").write_text("a red circle\n")
    ident = dataset_identity(FolderDataset(root, "train", image_sizes=[8], test_fraction=0.0))
    other = tmp_path / "alt" / "photos"
    shutil.copytree(root, other)
    monkeypatch.chdir(tmp_path / "alt")  # the same relative path names another folder
    assert dataset_identity(FolderDataset("photos", "train", image_sizes=[8], test_fraction=0.0)) != ident
    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.full((12, 12, 3), 255, np.uint8)).save(root / "p1.png")  # replaced in place
    os.utime(root / "p1.png", ns=(1, 1))
    assert dataset_identity(FolderDataset("photos", "train", image_sizes=[8], test_fraction=0.0)) != ident


def test_a_wrong_metric_network_fails_before_generation_and_a_failing_metric_keeps_the_others(
    pipe, test_set, tmp_path, monkeypatch
):
    import attngan.evaluation.images as images_mod
    import attngan.evaluation.model as model_mod

    generated = []
    real_generate = model_mod.generate_images
    monkeypatch.setattr(model_mod, "generate_images", lambda *a, **k: (generated.append(1), real_generate(*a, **k))[1])
    # A TorchScript "classifier" that returns (B,) instead of (B, C): refused before any image is drawn.
    scripted = tmp_path / "flat.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated in torch 2.x, still read
        torch.jit.save(torch.jit.script(torch.nn.Flatten(0)), scripted)
        with pytest.raises(UserError, match=r"--is-classifier .*flat\.pt (returns|failed)"):
            evaluate_model(pipe, test_set, "r_precision,is", n_images=16, batch_size=16, progress=False,
                           is_classifier=str(scripted), cache_dir=tmp_path)  # fmt: skip
    assert generated == []
    # A metric that fails after generation is reported as failed; the metrics before it are kept.
    def broken_features(images):
        raise RuntimeError("out of memory in the feature extractor")

    res = evaluate_model(pipe, test_set, "r_precision,fid", n_images=16, batch_size=16, progress=False,
                         fid_extractor=broken_features, fid_extractor_id="broken", cache_dir=tmp_path)  # fmt: skip
    assert res["metrics"]["r_precision"]["n"] == 16 and "failed" not in res["metrics"]["r_precision"]
    assert res["metrics"]["fid"]["failed"] and "out of memory" in res["metrics"]["fid"]["skipped"]
    assert "failed" in format_table(res)
    with pytest.raises(UserError, match="n_images must be at most"):
        evaluate_model(pipe, test_set, "r_precision", n_images=10**10, progress=False)
    monkeypatch.setattr(images_mod, "IN_MEMORY_LIMIT", 1000)  # 16 images of 32 px: kept on "disk"
    monkeypatch.setattr(images_mod.shutil, "disk_usage", lambda path: type("U", (), {"free": 10})())
    with pytest.raises(UserError, match=r"need .* GB in the temporary folder .*TMPDIR"):
        evaluate_model(pipe, test_set, "r_precision", n_images=16, progress=False)


def test_sigterm_during_evaluate_removes_the_temporary_images(pipe, tmp_path, capsys, monkeypatch):
    import signal
    import tempfile

    import attngan.evaluation.images as images_mod
    import attngan.evaluation.model as model_mod

    run = tmp_path / "00000-tiny"
    pipe.save_pretrained(run / "model")
    (run / "config.json").write_text(json.dumps({"preset": to_dict(PRESETS["tiny"])}))
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.setattr(images_mod, "IN_MEMORY_LIMIT", 0)  # the images go to a temporary file, as 30,000 would

    def killed(*args, **kwargs):
        assert list(scratch.iterdir())  # the temporary folder exists while generating
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(model_mod, "generate_images", killed)
    before = signal.getsignal(signal.SIGTERM)
    code, _, err = run_main(["evaluate", "--checkpoint", str(run), "--n-images", "8", "--metrics", "r_precision",
                             "--device", "cpu", "--no-progress"], capsys)  # fmt: skip
    assert code == 143 and ("Aborted" in err or "Interrupted" in err)  # 128 + SIGTERM
    assert list(scratch.iterdir()) == []  # removed, not left behind
    assert signal.getsignal(signal.SIGTERM) == before  # the command's handler is gone again


def test_birds_and_coco_captions_are_cut_at_the_original_evaluation_length(tmp_path):
    """The original trained with 18 (birds) / 12 (coco) words but evaluated with cfg/eval_bird.yml's 25 and
    cfg/eval_coco.yml's 20; --words-num overrides it."""
    from attngan.cli.evaluate import resolve_data_config
    from attngan.config import DataConfig

    assert PRESETS["birds"].data.words_num == 18 and PRESETS["coco"].data.words_num == 12
    assert resolve_data_config(None, "birds", tmp_path).words_num == 25
    assert resolve_data_config(None, "coco", tmp_path).words_num == 20
    assert resolve_data_config(None, "coco", tmp_path, words_num=12).words_num == 12
    assert resolve_data_config(None, "folder", tmp_path).words_num == DataConfig().words_num  # training's


def _saved_run(pipe, tmp_path):
    run = tmp_path / "00000-tiny"
    pipe.save_pretrained(run / "model")
    (run / "config.json").write_text(json.dumps({"preset": to_dict(PRESETS["tiny"])}))
    return run


@pytest.mark.parametrize("failing", ["out", "run folder"])
def test_one_output_that_cannot_be_written_loses_no_figure(pipe, tmp_path, capsys, monkeypatch, failing):
    """The table is printed first; --out (a full disk) and the run's metric file (a read-only run folder)
    are each written even when the other cannot be, and the error comes after."""
    import errno

    import attngan.checkpoint as checkpoint_mod
    import attngan.metrics as metrics_mod

    run, out = _saved_run(pipe, tmp_path), tmp_path / "ev.json"
    problem = {"out": (errno.ENOSPC, "No space left on device"), "run folder": (errno.EROFS, "Read-only file system")}

    def cannot_write(*args, **kwargs):
        raise OSError(*problem[failing], "somewhere")

    if failing == "out":
        monkeypatch.setattr(checkpoint_mod, "atomic_write_json", cannot_write)  # evaluate imports it when it runs
    else:
        monkeypatch.setattr(metrics_mod, "report_metric", cannot_write)
    code, stdout, err = run_main(["evaluate", "--checkpoint", str(run), "--n-images", "8", "--metrics", "r_precision",
                                  "--device", "cpu", "--no-progress", "--out", str(out)], capsys)  # fmt: skip
    assert code == 1 and problem[failing][1] in err and "R-precision (%)" in stdout
    if failing == "out":
        assert len((run / "metric-r_precision.jsonl").read_text().splitlines()) == 1
    else:
        assert json.loads(out.read_text())["metrics"]["r_precision"]["n"] == 8
