"""``attngan sample`` on a tiny saved model: files written, prompts.json, refusals without tracebacks."""

from __future__ import annotations

import dataclasses
import json
import os
import time

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from attngan.cli import cli, main
from attngan.config import PRESETS
from attngan.data.synthetic import shapes_vocabulary
from attngan.nn import Generator, TextEncoder
from attngan.pipeline import AttnGANPipeline

SENTENCES = ["a small red circle at the top left", "a large blue zorblax square"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    vocab = shapes_vocabulary()
    tiny = PRESETS["tiny"]
    te = TextEncoder(dataclasses.replace(tiny.text_encoder, vocab_size=len(vocab)))
    pipe = AttnGANPipeline(te, Generator(tiny.generator), vocab)
    return pipe.save_pretrained(tmp_path_factory.mktemp("model"))


@pytest.fixture
def viz():
    from attngan import viz

    return viz


def run_main(args, capsys):
    """Run the console entry point as a user would; returns (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exc:
        main(args)
    captured = capsys.readouterr()
    return exc.value.code, captured.out, captured.err


def test_help_explains_every_option():
    result = CliRunner().invoke(cli, ["sample", "--help"])
    assert result.exit_code == 0
    for option in (
        "--checkpoint",
        "--original-generator",
        "--original-text-encoder",
        "--captions-pickle",
        "--captions-file",
        "--out",
        "--seed",
        "--n",
        "--device",
        "--attention / --no-attention",
        "--word-swap",
        "--overwrite",
        "--batch-size",
        "--ca-mean",
        "--legacy-mask-bug",
        "Examples:",
    ):
        assert option in result.output, option


def test_sample_writes_images_attention_grid_and_prompts(model_dir, tmp_path, viz):
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli,
        [
            "sample",
            "--checkpoint",
            str(model_dir),
            "--out",
            str(out),
            "--n",
            "2",
            "--seed",
            "5",
            "--device",
            "cpu",
            "--word-swap",
            "red=green",
            *SENTENCES,
        ],
    )
    assert result.exit_code == 0, result.output
    assert "zorblax" in result.output and "wrote 4 image(s) of 2 sentence(s)" in result.output
    names = {p.name for p in out.iterdir()}
    expected = {
        f"{i:03d}_{j}_{kind}.png"
        for i in range(2)
        for j in range(2)
        for kind in ("stage0", "stage1", "attention")
    }
    assert names == expected | {"grid.png", "word_swap.png", "prompts.json"}
    assert Image.open(out / "001_1_stage1.png").size == (32, 32)
    assert Image.open(out / "000_0_stage0.png").size == (16, 16)
    meta = json.loads((out / "prompts.json").read_text())
    assert meta["sentences"] == SENTENCES
    assert [r["seed"] for r in meta["images"]] == [5, 6, 7, 8]
    assert meta["images"][2]["tokens"] == ["a", "large", "blue", "square"]
    assert meta["images"][2]["unknown_words"] == ["zorblax"] and meta["images"][0]["unknown_words"] == []
    assert meta["images"][3]["files"] == ["001_1_stage0.png", "001_1_stage1.png", "001_1_attention.png"]
    assert meta["word_swap"]["sentences"] == [[SENTENCES[0], "a small green circle at the top left"]]
    swap_fig = Image.open(out / "word_swap.png")
    # caption column (2 cells) + two seeds at 256 px with 4 px padding; two rows (original, swapped)
    assert swap_fig.width == 2 * 256 + 2 * (256 + 4) + 4
    assert 2 * 256 <= swap_fig.height < 3 * 256
    attention_fig = Image.open(out / "000_1_attention.png")
    # default 256 px cells: the caption, stages row + 1 attention stage, 5 columns (stage images, then top words)
    assert attention_fig.width == 5 * 256
    assert 2 * (viz.LABEL_HEIGHT + 256) < attention_fig.height < 2 * (viz.LABEL_HEIGHT + 256) + 60

    # The same seed draws the same pixels through the library.
    pipe = AttnGANPipeline.from_pretrained(model_dir)
    again = pipe(SENTENCES[1], seed=8).images[0][-1]
    assert np.array_equal(np.asarray(Image.open(out / "001_1_stage1.png").convert("RGB")), np.asarray(again))


def test_refuses_to_overwrite_and_no_attention(model_dir, tmp_path, viz, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    args = ["sample", "--checkpoint", str(model_dir), "--out", str(out), "--device", "cpu", SENTENCES[0]]
    code, _, err = run_main(args, capsys)
    assert code == 2 and "not empty" in err and "--overwrite" in err and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    result = CliRunner().invoke(cli, [*args, "--overwrite", "--no-attention"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "000_0_stage0.png",
        "000_0_stage1.png",
        "grid.png",
        "keep.txt",
        "prompts.json",
    ]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--checkpoint", "{tmp}/missing", "a red circle"], "missing does not exist"),
        (["--checkpoint", "{model}"], "no sentence given"),
        (["--checkpoint", "{model}", "  "], "sentence 1 is empty"),
        (["--checkpoint", "{model}", "zorblax quux"], "no word in the vocabulary"),
        (["--checkpoint", "{model}", "--word-swap", "red", "a red circle"], "OLD=NEW"),
        (
            ["--checkpoint", "{model}", "--word-swap", "red=zorblax", "a red circle"],
            "not in the model's vocabulary",
        ),
        (["--checkpoint", "{model}", "--word-swap", "green=blue", "a red circle"], "no sentence contains"),
        (["a red circle"], "no model given"),
        (["--original-generator", "{tmp}/G.pth", "a red circle"], "also needs --original-text-encoder"),
        (["--captions-file", "{tmp}/none.txt", "--checkpoint", "{model}"], "none.txt does not exist"),
    ],
)
def test_user_mistakes_are_one_line_errors(model_dir, tmp_path, capsys, extra, message):
    args = [a.replace("{tmp}", str(tmp_path)).replace("{model}", str(model_dir)) for a in extra]
    code, out, err = run_main(["sample", "--out", str(tmp_path / "out"), "--device", "cpu", *args], capsys)
    assert code == 2
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_captions_file_and_seed_per_image_independent_of_batch_size(model_dir, tmp_path, viz):
    captions = tmp_path / "captions.txt"
    captions.write_text("a red circle\n\na blue square\na green triangle\n", encoding="utf-8")
    outs = []
    for batch in ("1", "16"):
        out = tmp_path / f"out{batch}"
        result = CliRunner().invoke(
            cli,
            [
                "sample",
                "--checkpoint",
                str(model_dir),
                "--captions-file",
                str(captions),
                "--out",
                str(out),
                "--batch-size",
                batch,
                "--no-attention",
                "--device",
                "cpu",
            ],
        )
        assert result.exit_code == 0, result.output
        outs.append(out)
    meta = json.loads((outs[0] / "prompts.json").read_text())
    assert meta["sentences"] == ["a red circle", "a blue square", "a green triangle"]
    for name in ("000_0_stage1.png", "002_0_stage1.png"):
        a, b = (np.asarray(Image.open(o / name), dtype=np.int16) for o in outs)
        assert np.abs(a - b).max() <= 1  # same image up to float rounding in the last bit


def test_original_release_files(model_dir, tmp_path, viz):
    import pickle

    from attngan.legacy import save_original

    pipe = AttnGANPipeline.from_pretrained(model_dir)
    save_original(pipe.generator, tmp_path / "G.pth")
    save_original(pipe.text_encoder, tmp_path / "T.pth")
    itos = pipe.vocab.itos
    with open(tmp_path / "captions.pickle", "wb") as f:
        pickle.dump([[], [], dict(enumerate(itos)), {w: i for i, w in enumerate(itos)}], f, protocol=2)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli,
        [
            "sample",
            "--original-generator",
            str(tmp_path / "G.pth"),
            "--original-text-encoder",
            str(tmp_path / "T.pth"),
            "--captions-pickle",
            str(tmp_path / "captions.pickle"),
            "--out",
            str(out),
            "--seed",
            "3",
            "--device",
            "cpu",
            SENTENCES[0],
        ],
    )
    assert result.exit_code == 0, result.output
    expected = pipe(SENTENCES[0], seed=3).images[0][-1]
    assert np.array_equal(
        np.asarray(Image.open(out / "000_0_stage1.png").convert("RGB")), np.asarray(expected)
    )


def _ctrl_c_at_file(n: int, monkeypatch) -> None:
    """Ctrl-C while sample encodes its n-th PNG file."""
    import attngan.viz as viz

    real, calls = viz.png_bytes, []

    def interrupted_png(image, *args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(image, *args, **kwargs)

    monkeypatch.setattr(viz, "png_bytes", interrupted_png)


def test_ctrl_c_while_writing_says_what_is_there(model_dir, tmp_path, viz, capsys, monkeypatch):
    _ctrl_c_at_file(3, monkeypatch)
    out = tmp_path / "out"
    code, _, err = run_main(["sample", "--checkpoint", str(model_dir), "--out", str(out), *SENTENCES[:2]], capsys)
    assert code == 130 and "Interrupted: 2 file(s) written" in err and "--overwrite" in err
    assert len(list(out.iterdir())) == 2 and not (out / "prompts.json").exists()


def test_an_interrupted_overwrite_leaves_no_prompts_json_of_the_earlier_images(model_dir, tmp_path, viz, capsys, monkeypatch):
    """prompts.json describes the files of one run: an interrupted --overwrite must not leave the earlier
    run's prompts.json beside the new images."""
    out = tmp_path / "out"
    main(["sample", "--checkpoint", str(model_dir), "--out", str(out), "--no-attention", SENTENCES[0]])
    assert (out / "prompts.json").is_file()
    capsys.readouterr()
    _ctrl_c_at_file(2, monkeypatch)
    code, _, err = run_main(
        ["sample", "--checkpoint", str(model_dir), "--out", str(out), "--overwrite", "--seed", "7", SENTENCES[1]], capsys
    )
    assert code == 130 and "no prompts.json" in err and not (out / "prompts.json").exists()


def test_a_second_sample_into_a_folder_being_written_is_refused(model_dir, tmp_path, capsys):
    from attngan.atomic import FolderLock

    out = tmp_path / "out"
    with FolderLock(out, "--out folder"):
        code, _, err = run_main(["sample", "--checkpoint", str(model_dir), "--out", str(out), SENTENCES[0]], capsys)
    assert code == 2 and "another attngan process" in err and "--out folder" in err
    assert not out.exists()  # nothing was written; the lock's folder is gone again


def test_an_exception_after_ctrl_c_is_reported_as_the_interruption(capsys, monkeypatch):
    """Ctrl-C inside an import (scipy's, say) can surface as an AttributeError or RecursionError; after a
    signal, whatever is raised is the interruption, not a traceback."""
    import signal

    import attngan.cli as cli_mod

    def interrupted_import(*args, **kwargs):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        except KeyboardInterrupt:
            raise AttributeError("module 'numpy._core' has no attribute '_multiarray_umath'") from None

    monkeypatch.setattr(cli_mod.cli, "main", interrupted_import)
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN where the suite runs in a background job
    code, _, err = run_main(["evaluate"], capsys)
    assert code == 130 and err.strip() == "Interrupted."
    assert signal.getsignal(signal.SIGINT) is before  # restored


def test_exact_and_truncated_pixels_give_the_original_codes_png_values(model_dir, tmp_path, viz):
    """--exact draws with the generator as trained (not the inference copy), --truncate-pixels makes 8-bit
    pixels as the original's ((x + 1) * 127.5).astype(uint8): the PNGs are exactly those values."""
    out = tmp_path / "out"
    main(["sample", "--checkpoint", str(model_dir), "--out", str(out), "--no-attention", "--seed", "3", "--exact",
          "--truncate-pixels", SENTENCES[0]])  # fmt: skip
    plain = AttnGANPipeline.from_pretrained(model_dir, fast=False)(SENTENCES[0], seed=3, return_attention=False)
    for s, x in enumerate(plain.stage_tensors[0]):
        expected = ((x.permute(1, 2, 0).numpy() + 1.0) * 127.5).astype(np.uint8)
        assert np.array_equal(np.asarray(Image.open(out / f"000_0_stage{s}.png")), expected)
    rounded = np.asarray(plain.images[0][-1])  # the default rounds: never darker, at most one level brighter
    diff = rounded.astype(int) - expected.astype(int)
    assert diff.min() >= 0 and diff.max() == 1
