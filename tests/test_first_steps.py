"""From ``attngan demo`` to one's own sentences: what a new user types after the demo works as written.

``--checkpoint`` takes every path a user has in hand, the vocabulary can be found, short runs warn,
figures are large enough to look at, evaluation names its changes of protocol, /docs works offline,
and the messages of the smaller commands say what to do.
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from attngan.cli import cli
from attngan.config import PRESETS, apply_overrides
from attngan.errors import CheckpointError, DataError, UserError
from attngan.pipeline import AttnGANPipeline, find_model
from attngan.training import train_damsm, train_gan

README = Path(__file__).resolve().parents[1] / "README.md"


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    """A folder laid out as `attngan demo --out` leaves it: OUT/runs/00000-...-damsm, OUT/runs/00001-...-attngan
    (with a training checkpoint after each of its 2 steps), inside a home folder."""
    torch.set_num_threads(1)
    home = tmp_path_factory.mktemp("home")
    runs = home / "demo-out" / "runs"
    preset = apply_overrides(
        PRESETS["tiny"], ["data.num_images=24", "gan_train.sample_every=1000", "gan_train.snapshot_every=1"]
    )
    damsm = train_damsm(preset, runs_dir=runs, max_steps=2, val_set=False, progress=False, tensorboard=False)
    gan = train_gan(
        preset, damsm=damsm.run_dir, runs_dir=runs, max_steps=2, keep_checkpoints=0, progress=False, tensorboard=False
    )
    return home, damsm, gan


# ------------------------------------------------------------------------------------------------ 1. --checkpoint


def _image(path, prompt="a small red circle at the top left"):
    return AttnGANPipeline.from_pretrained(path)(prompt, seed=3).stage_tensors[0][-1]


def test_checkpoint_takes_every_path_a_user_has(demo_out, caplog):
    home, damsm, gan = demo_out
    out = home / "demo-out"
    model = gan.run_dir / "model"
    reference = _image(model)
    newest = gan.run_dir / "checkpoints" / "state-00000002.pt"
    for path in (out, out / "runs", gan.run_dir, model, gan.run_dir / "checkpoints", newest):
        assert find_model(path)[0] == model, path
        assert torch.equal(_image(path), reference), path
    with caplog.at_level("INFO", logger="attngan"):
        AttnGANPipeline.from_pretrained(out / "runs")
    assert f"using {gan.run_dir}, the newest AttnGAN run in {out / 'runs'}" in caplog.text

    # An older training checkpoint: its own EMA generator, with the run's text encoder and vocabulary.
    older = gan.run_dir / "checkpoints" / "state-00000001.pt"
    assert find_model(older) == (model, older)
    assert not torch.equal(_image(older), reference)
    state = torch.load(older, weights_only=True)
    pipe = AttnGANPipeline.from_pretrained(older)
    assert all(torch.equal(v, state["models"]["generator_ema"][k]) for k, v in pipe.generator.state_dict().items())


def test_an_unusable_path_is_answered_with_the_usable_folders_under_it(demo_out, tmp_path):
    home, damsm, gan = demo_out
    with pytest.raises(CheckpointError, match=r"not a model or run folder; usable folders under it: ") as info:
        AttnGANPipeline.from_pretrained(home)
    assert str(gan.run_dir) in str(info.value) and str(damsm.run_dir) not in str(info.value)
    with pytest.raises(CheckpointError, match="DAMSM pre-training run, which has no generator"):
        find_model(damsm.run_dir / "checkpoints" / "state-00000002.pt")
    with pytest.raises(CheckpointError, match="neither a model folder .* and holds none"):
        find_model(tmp_path)
    (tmp_path / "bird_AttnGAN2.pth").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="--original-generator"):
        find_model(tmp_path / "bird_AttnGAN2.pth")


def test_sample_and_evaluate_take_a_demo_folder_and_a_state_file(demo_out, tmp_path):
    home, _, gan = demo_out
    result = invoke("sample", "--checkpoint", home / "demo-out", "--out", tmp_path / "s", "a red circle")
    assert result.exit_code == 0, result.output
    state = gan.run_dir / "checkpoints" / "state-00000001.pt"
    result = invoke(
        "evaluate", "--checkpoint", state, "--n-images", "6", "--metrics", "r_precision", "--device", "cpu", "--no-progress"
    )
    assert result.exit_code == 0, result.output
    assert "R-precision (%)" in result.output  # the run's own test data, found through the state file's run
    for command in ("sample", "evaluate", "serve"):
        help_text = " ".join(invoke(command, "--help").output.split())
        assert "demo's --out folder" in help_text and "state-*.pt" in help_text


# ------------------------------------------------------------------------------------------------ 1./2. what comes next


def _fake_report(out: Path, gan_run: Path, steps: dict) -> dict:
    from attngan.training.demo import too_few_steps

    return {
        "out": str(out), "summary": [], "figures": ["samples.png"], "runs": {"damsm": "d", "gan": str(gan_run)},
        "steps": steps, "seconds": {"total": 60.0, "budget": 60.0}, "warnings": too_few_steps(steps),
    }  # fmt: skip


def test_demo_ends_with_the_next_commands_and_warns_when_it_trained_too_little(monkeypatch, tmp_path):
    import attngan.training.demo as demo_lib
    from attngan.training.demo import MIN_STEPS

    gan_run = tmp_path / "out" / "runs" / "00001-shapes-attngan"
    steps = {"damsm": 9, "gan": 27}
    monkeypatch.setattr(demo_lib, "run_demo", lambda out, *a, **k: _fake_report(out, gan_run, steps))
    result = invoke("demo", "--out", tmp_path / "out", "--minutes", "1", "--no-progress", "--no-tune-malloc")
    assert result.exit_code == 0, result.output
    nexts = [shlex.split(line[6:]) for line in result.output.splitlines() if line.startswith("next: ")]
    assert [c[1] for c in nexts] == ["sample", "evaluate", "serve"]
    assert all(c[c.index("--checkpoint") + 1] == str(gan_run) for c in nexts)
    warnings = [line for line in result.output.splitlines() if line.startswith("Warning: ")]
    assert len(warnings) == 2
    assert f"ran 9 steps, fewer than the ~{MIN_STEPS['damsm']}" in warnings[0]
    assert f"ran 27 steps, fewer than the ~{MIN_STEPS['gan']}" in warnings[1]
    assert demo_lib.too_few_steps(dict(MIN_STEPS)) == []


def test_a_run_stopped_by_its_time_limit_before_max_steps_warns(tmp_path):
    result = invoke(
        "pretrain-damsm", "--preset", "tiny", "--runs-dir", tmp_path, "--max-minutes", "0.00001", "--no-progress",
        "--set", "data.num_images=24",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    run = tmp_path / "00000-shapes-damsm"
    assert "Warning: the time limit stopped training at step 1 of " in result.output
    assert f"attngan pretrain-damsm --resume {run}" in result.output
    result = invoke("pretrain-damsm", "--preset", "tiny", "--runs-dir", tmp_path, "--max-steps", "1", "--no-progress")
    assert result.exit_code == 0 and "Warning" not in result.output


# ------------------------------------------------------------------------------------------------ 3. vocabulary


def test_the_vocabulary_can_be_listed_and_unknown_words_get_suggestions(demo_out):
    from attngan.data.synthetic import caption_words

    home, _, gan = demo_out
    result = invoke("sample", "--checkpoint", home / "demo-out", "--list-words")
    assert result.exit_code == 0, result.output
    assert f"{len(caption_words())} words the model knows" in result.output
    assert set(caption_words()) <= set(result.output.split())
    assert "--list-words" in invoke("sample", "--help").output

    result = invoke("sample", "--checkpoint", gan.run_dir, "--out", home / "x", "purpel sqare")
    assert isinstance(result.exception, UserError)  # attngan.cli.main prints it as one line
    message = str(result.exception)
    assert "'purpel' -> purple" in message and "'sqare' -> square" in message and "--list-words" in message


def test_a_caption_with_more_objects_than_the_training_images_gets_a_warning(demo_out, tmp_path):
    home, _, gan = demo_out
    result = invoke(
        "sample", "--checkpoint", home / "demo-out", "--out", tmp_path / "s",
        "two shapes: a red square and a blue circle", "a red square",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("Warning: ")]
    assert len(warnings) == 1 and "sentence 1 names 2 objects" in warnings[0] and "data.max_objects=1" in warnings[0]


def test_readme_names_the_built_in_words_and_where_the_data_comes_from():
    from attngan.data.synthetic import caption_words

    text = README.read_text(encoding="utf-8")
    listed = re.search(r"Its \d+ words: (.*?)\.\n", text, re.S)
    assert listed and sorted(listed.group(1).replace("`", "").split()) == caption_words()
    for link in ("vision.caltech.edu/datasets/cub_200_2011", "cocodataset.org", "github.com/taoxugit/AttnGAN"):
        assert link in text


# ------------------------------------------------------------------------------------------------ 4. figures


def test_sample_figures_are_large_and_keep_their_caption(demo_out, tmp_path):
    home, _, _ = demo_out
    long = "a small red circle at the top left " * 3
    result = invoke("sample", "--checkpoint", home / "demo-out", "--out", tmp_path / "s", long.strip())
    assert result.exit_code == 0, result.output
    stage = Image.open(tmp_path / "s" / "000_0_stage1.png")
    assert stage.size == (32, 32)  # the model's own size stays as it is
    grid = Image.open(tmp_path / "s" / "grid.png")
    assert grid.width >= 256
    attention = Image.open(tmp_path / "s" / "000_0_attention.png")
    assert attention.width >= 256


def test_attention_figure_carries_its_caption_and_enlarges_with_sharp_pixels():
    from attngan.viz import FIGURE_CELL, attention_figure, captioned_grid

    img = torch.rand(3, 8, 8) * 2 - 1
    attention = [torch.softmax(torch.randn(3, 4, 4), 0)]
    bare = attention_figure(img, attention, ["a", "b", "c"], 3, size=64)
    titled = attention_figure(img, attention, ["a", "b", "c"], 3, size=64, caption="a b c " * 20)
    assert titled.width == bare.width and titled.height > bare.height + 2 * 18  # wrapped over several lines
    assert np.array_equal(np.asarray(titled)[titled.height - bare.height :], np.asarray(bare))
    grid = captioned_grid(img[None], ["a red circle"])
    assert grid.width >= FIGURE_CELL
    block = np.asarray(grid)[4 : 4 + FIGURE_CELL // 8, 4 : 4 + FIGURE_CELL // 8]  # one model pixel
    assert (block == block[0, 0]).all()


def test_captions_are_wrapped_never_cut():
    from attngan.data.base import collate_batch
    from attngan.data.registry import build_dataset
    from attngan.training.demo import _whole_captions
    from attngan.training.figures import captioned_grid_png

    test = build_dataset(PRESETS["shapes"].data, "test", [32], train=False)
    texts = collate_batch([test[i] for i in range(100)]).texts  # what the model reads: the first 12 words
    whole = _whole_captions(test, texts)
    cut = [i for i, t in enumerate(texts) if len(t.split()) == 12 and whole[i] != t]
    assert cut, "some test captions are longer than data.words_num"
    for i in cut:
        assert whole[i].startswith(texts[i] + " [not read: ") and whole[i].endswith("]")
        assert whole[i].replace(" [not read:", "").rstrip("]") in test.texts[i]
    words = "a small red circle at the top left and a large blue square at the bottom right".split()
    short = Image.open(io.BytesIO(captioned_grid_png(torch.zeros(1, 3, 16, 16), ["a"])))
    long = Image.open(io.BytesIO(captioned_grid_png(torch.zeros(1, 3, 16, 16), [" ".join(words * 3)])))
    assert long.width == short.width and long.height > short.height + 3 * 16


def test_real_vs_generated_figure():
    from attngan.training.figures import real_vs_generated_png

    reals, fakes = -torch.ones(2, 3, 32, 32), torch.ones(2, 3, 32, 32)
    fig = np.asarray(Image.open(io.BytesIO(real_vs_generated_png(reals, fakes, ["a red circle", "a blue square"]))))
    assert fig.shape[1] >= 2 * 2 * 256  # caption column + 2 images of at least 256 px
    row = fig[26 + 4 + 128]  # the middle of the first row of images
    assert (row == 0).all(-1).sum() >= 250 and (row == 255).all(-1).sum() >= 250  # black real, white generated


# ------------------------------------------------------------------------------------------------ 5. evaluate


def test_evaluate_names_a_change_of_protocol_next_to_the_figure_and_logs_lines():
    from attngan.evaluation import format_table
    from attngan.metrics.registry import describe_result

    res = {"r_precision": 88.0, "r_precision_std": 3.0, "n": 50, "n_mismatch": 49, "splits": 10,
           "protocol": "R-precision ...", "metric": "r_precision", "time_s": 0.1}  # fmt: skip
    table = format_table({"protocol": "images ...", "metrics": {"r_precision": res}})
    row = next(line for line in table.splitlines() if line.startswith("R-precision"))
    assert "88.00" in row and "49 mismatches: not comparable with the paper's 99" in row
    paper = format_table({"protocol": "images ...", "metrics": {"r_precision": res | {"n_mismatch": 99}}})
    assert "not comparable" not in paper
    line = describe_result(res)
    assert "{" not in line and "r precision 88" in line and "50 samples" in line


# ------------------------------------------------------------------------------------------------ 6. /docs offline


def test_docs_page_is_self_contained():
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from attngan.data.synthetic import shapes_vocabulary
    from attngan.nn import Generator, TextEncoder
    from attngan.serve import create_app

    vocab, tiny = shapes_vocabulary(), PRESETS["tiny"]
    te = TextEncoder(dataclasses.replace(tiny.text_encoder, vocab_size=len(vocab)))
    with TestClient(create_app(AttnGANPipeline(te, Generator(tiny.generator), vocab))) as client:
        page = client.get("/docs")
    assert page.status_code == 200 and "/api/v1/generate" in page.text and "caption" in page.text
    assert not re.search(r"<(script|link)\b", page.text)  # nothing to fetch: no script, no style sheet
    assert "cdn" not in page.text.lower()


# ------------------------------------------------------------------------------------------------ 7. smaller stumbles


def test_demo_dry_run_is_sentences_and_checks_the_out_folder(tmp_path):
    result = invoke("demo", "--out", tmp_path / "new", "--minutes", "3", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "3 minutes of training, 3.2 minutes in all" in result.output and "DAMSM pre-training: up to" in result.output
    assert len(result.output.splitlines()) < 15 and "{" not in result.output
    assert not (tmp_path / "new").exists()  # nothing created
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    result = invoke("demo", "--out", tmp_path / "full", "--dry-run")
    assert result.exit_code == 2 and "is not empty" in result.output
    (tmp_path / "f").write_text("x")
    result = invoke("demo", "--out", tmp_path / "f" / "out", "--dry-run")
    assert result.exit_code == 2 and "is a file" in result.output
    assert json.loads(invoke("demo", "--out", tmp_path / "new", "--dry-run", "--json").output)["plan"]


def test_data_check_describes_the_built_in_dataset():
    from attngan.data.synthetic import caption_words

    result = invoke("data", "check", "--dataset", "shapes")
    assert result.exit_code == 0, result.output
    assert re.search(r"train: \d+ images, \d+ captions", result.output)
    assert set(caption_words()) <= set(result.output.split())
    assert result.output.count("example: ") >= 3 and "nothing on disk to check" not in result.output


def test_a_missing_dataset_folder_says_where_the_data_comes_from(tmp_path):
    from attngan.data.registry import build_dataset

    config = apply_overrides(PRESETS["birds"], {"data.data_dir": str(tmp_path / "nope")}).data
    with pytest.raises(DataError) as info:
        build_dataset(config, "train", [64])
    message = str(info.value)
    assert "folder" in message and "does not exist" in message and "vision.caltech.edu" in message
    assert "Fix or remove these files" not in message
    with pytest.raises(DataError, match="cocodataset.org"):
        build_dataset(apply_overrides(PRESETS["coco"], {"data.data_dir": ""}).data, "train", [64])
    result = invoke("data", "check", "--dataset", "birds", "--data-dir", tmp_path / "nope")
    assert result.exit_code == 1 and "vision.caltech.edu" in result.output


def test_convert_explains_the_dropout_of_an_original_text_encoder(tmp_path):
    from attngan.legacy import save_original
    from attngan.nn import TextEncoder

    te = TextEncoder(dataclasses.replace(PRESETS["tiny"].text_encoder, vocab_size=10, dropout=0.1))
    save_original(te, tmp_path / "text_encoder.pth")
    result = invoke("convert", "--text-encoder", tmp_path / "text_encoder.pth", "--out", tmp_path / "native")
    assert result.exit_code == 0, result.output
    assert "dropout=0.5" in result.output and "holds weights only" in result.output
    assert "never use dropout" in result.output

