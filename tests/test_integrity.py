"""Damaged, non-finite or unsafe files are refused when read: training states, model folders, the original
release's .pth files; plus what a stopped or refused training run leaves behind."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch

from attngan import legacy
from attngan.checkpoint import atomic_torch_save, load_component, save_component
from attngan.cli import main
from attngan.config import PRESETS, GeneratorConfig, apply_overrides
from attngan.data.synthetic import shapes_vocabulary
from attngan.errors import CheckpointError, DamagedFileError, DiskFullError
from attngan.nn import Generator, TextEncoder
from attngan.pipeline import AttnGANPipeline
from attngan.training import state as state_module
from attngan.training import train_damsm
from attngan.training.state import load_state, save_state

REFUSED = "holds Python objects other than tensors; refused because loading it could run code"


def flip_byte_in_zip_record(path: Path, suffix: str) -> None:
    """Flip one bit in the middle of the largest record whose name ends with ``suffix`` (tensor data)."""
    with zipfile.ZipFile(path) as z:
        info = max(
            (i for i in z.infolist() if i.filename.endswith(suffix) or suffix in i.filename),
            key=lambda i: i.file_size,
        )
    data = bytearray(path.read_bytes())
    name_len, extra_len = (
        int.from_bytes(data[info.header_offset + 26 : info.header_offset + 28], "little"),
        int.from_bytes(data[info.header_offset + 28 : info.header_offset + 30], "little"),
    )
    start = info.header_offset + 30 + name_len + extra_len
    data[start + info.file_size // 2] ^= 0x04
    path.write_bytes(bytes(data))


def flip_byte_near_end(path: Path, back: int = 16) -> None:
    data = bytearray(path.read_bytes())
    data[-back] ^= 0x04
    path.write_bytes(bytes(data))


def fake_state(step: int, value: float = 1.0) -> dict:
    return {
        "kind": "gan", "step": step, "epoch": 0, "batch_in_epoch": step, "config": {}, "vocab": [],
        "models": {"generator": {"w": torch.full((64, 64), value)}},
        "optimizers": {"generator": {"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": []}},
        "rng": [],
    }  # fmt: skip


# ------------------------------------------------------------------------------------------------ training states


def test_a_flipped_byte_in_a_state_file_is_named_with_the_newest_intact_one(tmp_path):
    run = tmp_path / "00000-x"
    for step in (1, 2, 3):
        save_state(run, fake_state(step), keep=0)
    newest = run / "checkpoints" / "state-00000003.pt"
    flip_byte_in_zip_record(newest, "data/0")
    with pytest.raises(DamagedFileError) as err:
        load_state(run, "gan")
    message = str(err.value)
    assert str(newest) in message and "is damaged" in message and "CRC-32" in message
    assert f"newest intact checkpoint is {run / 'checkpoints' / 'state-00000002.pt'}" in message
    # The older one is intact also when the one between is damaged too.
    flip_byte_in_zip_record(run / "checkpoints" / "state-00000002.pt", "data/0")
    with pytest.raises(DamagedFileError, match=r"newest intact checkpoint is .*state-00000001\.pt"):
        load_state(run, "gan")


def test_rotation_keeps_the_verified_checkpoints_when_a_new_one_is_damaged(tmp_path, monkeypatch):
    run = tmp_path / "00000-x"
    save_state(run, fake_state(1), keep=1)

    def damaging_save(obj, path):  # the bytes on disk are not the bytes written
        atomic_torch_save(obj, path)
        flip_byte_in_zip_record(Path(path), "data/0")

    monkeypatch.setattr(state_module, "atomic_torch_save", damaging_save)
    with pytest.raises(DamagedFileError):
        save_state(run, fake_state(2), keep=1)
    assert (run / "checkpoints" / "state-00000001.pt").is_file()  # the verified one is not rotated away


def test_non_finite_weights_in_a_state_file_are_refused_and_never_written(tmp_path):
    run = tmp_path / "00000-x"
    save_state(run, fake_state(1), keep=0)
    bad = run / "checkpoints" / "state-00000002.pt"
    atomic_torch_save({"format": state_module.STATE_FORMAT, "version": 1, **fake_state(2, float("nan"))}, bad)
    with pytest.raises(CheckpointError) as err:
        load_state(run, "gan")
    message = str(err.value)
    assert "generator weights" in message and str(bad) in message and "not finite" in message
    assert "newest intact checkpoint is" in message and "state-00000001.pt" in message
    with pytest.raises(
        CheckpointError, match="generator weights .* not finite.*state-00000003.pt is not written"
    ):
        save_state(run, fake_state(3, float("inf")), keep=1)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "state-00000001.pt",
        "state-00000002.pt",
    ]


def test_a_refused_resume_removes_what_a_killed_writer_left(tmp_path):
    run = tmp_path / "00000-x"
    (run / "checkpoints").mkdir(parents=True)
    leftover = run / "checkpoints" / ".state-00000005.pt.abc123.tmp"
    leftover.write_bytes(b"half a checkpoint")
    with pytest.raises(CheckpointError, match="holds no training checkpoint"):
        load_state(run, "gan")
    assert not leftover.exists()


# ------------------------------------------------------------------------------------------------ model folders


def _tiny_pipeline() -> AttnGANPipeline:
    torch.manual_seed(0)
    vocab = shapes_vocabulary()
    tiny = PRESETS["tiny"]
    return AttnGANPipeline(
        TextEncoder(dataclasses.replace(tiny.text_encoder, vocab_size=len(vocab))),
        Generator(tiny.generator),
        vocab,
    )


def test_a_flipped_byte_in_model_safetensors_is_refused_everywhere(tmp_path, capsys):
    model = tmp_path / "model"
    _tiny_pipeline().save_pretrained(model)
    AttnGANPipeline.from_pretrained(model)  # intact: loads
    weights = model / "generator" / "model.safetensors"
    flip_byte_near_end(weights, back=1000)
    with pytest.raises(DamagedFileError, match=rf"{weights}.*is damaged"):
        AttnGANPipeline.from_pretrained(model)
    with pytest.raises(SystemExit) as exit_info:
        main(["sample", "--checkpoint", str(model), "--out", str(tmp_path / "out"), "a red circle"])
    err = capsys.readouterr().err
    assert (
        exit_info.value.code == 2 and "is damaged" in err and str(weights) in err and "Traceback" not in err
    )
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").glob("*.png"))


@pytest.mark.parametrize("name", ["vocab.json", "generator/config.json"])
def test_a_changed_word_or_setting_in_a_model_folder_is_refused(tmp_path, name):
    model = tmp_path / "model"
    _tiny_pipeline().save_pretrained(model)
    path = model / name
    text = path.read_text(encoding="utf-8")
    # A change that keeps the file valid JSON: a word of the vocabulary, a width of the generator.
    changed = text.replace('"circle"', '"circlf"', 1) if name == "vocab.json" else text.replace('"gf_dim": 4', '"gf_dim": 5', 1)
    assert changed != text
    path.write_text(changed, encoding="utf-8")
    with pytest.raises(DamagedFileError, match=rf"{path}.*is damaged"):
        AttnGANPipeline.from_pretrained(model)
    path.write_text(text, encoding="utf-8")
    AttnGANPipeline.from_pretrained(model)  # the file as written loads again
    # Files without a checksum (older versions, written by hand) are read as before.
    unchecked = json.loads(text)
    unchecked.pop("sha256")
    path.write_text(json.dumps(unchecked), encoding="utf-8")
    AttnGANPipeline.from_pretrained(model)


def test_non_finite_weights_in_a_model_folder_name_the_component_and_the_file(tmp_path):
    generator = Generator(PRESETS["tiny"].generator)
    with torch.no_grad():
        next(generator.parameters()).fill_(float("nan"))
    save_component(tmp_path / "generator", generator, generator.config)
    with pytest.raises(CheckpointError) as err:
        load_component(tmp_path / "generator", Generator, GeneratorConfig)
    message = str(err.value)
    assert (
        "generator (Generator) weights" in message
        and str(tmp_path / "generator" / "model.safetensors") in message
    )
    assert "not finite" in message


# ------------------------------------------------------------------------------------------------ original .pth files


def test_a_flipped_byte_in_an_exported_original_pth_is_refused(tmp_path):
    torch.manual_seed(0)
    path = legacy.save_original(Generator(PRESETS["tiny"].generator), tmp_path / "netG.pth")
    assert (tmp_path / "netG.pth.sha256").is_file()
    legacy.load_original(path)  # intact: loads
    flip_byte_near_end(path, back=200)
    with pytest.raises(DamagedFileError, match=r"netG\.pth is damaged.*netG\.pth\.sha256"):
        legacy.load_original(path)


def test_original_files_without_a_checksum_must_hold_finite_weights(tmp_path):
    state = legacy.export_original(Generator(PRESETS["tiny"].generator))
    next(iter(v for v in state.values() if v.is_floating_point())).fill_(float("inf"))
    path = tmp_path / "netG_epoch_600.pth"
    torch.save(state, path, _use_new_zipfile_serialization=False)  # as the original release: no sidecar
    with pytest.raises(CheckpointError, match=rf"generator weights in {path} are not finite"):
        legacy.load_original(path)


class BuiltinPayload:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class OsPayload:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


class SystemPayload:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("payload", [BuiltinPayload, OsPayload, SystemPayload])
@pytest.mark.parametrize("how", ["zip", "legacy", "pickle"])
def test_pickles_that_would_run_code_are_refused_as_unsafe(tmp_path, capsys, payload, how):
    marker = tmp_path / "marker"
    state = {"ca_net.fc.weight": torch.zeros(4, 2), "x": payload(marker)}
    path = tmp_path / "netG.pth"
    if how == "pickle":
        path.write_bytes(pickle.dumps(state, protocol=4))
    else:
        torch.save(state, path, _use_new_zipfile_serialization=how == "zip")
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", "--generator", str(path), "--out", str(tmp_path / "native")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and REFUSED in err and "convert it there" in err, err
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------ training runs


def _damsm(tmp_path: Path, steps: int, *overrides: str, **kwargs):
    settings = ["data.num_images=16", "damsm_train.log_every=4", "damsm_train.snapshot_every=2", *overrides]
    preset = apply_overrides(PRESETS["tiny"], settings) if "resume" not in kwargs else None
    kwargs.setdefault("runs_dir", tmp_path)
    return train_damsm(preset, max_steps=steps, val_set=False, progress=False, tensorboard=False, **kwargs)


def test_a_resumed_run_logs_the_whole_interval_and_refuses_a_damaged_state(tmp_path):
    whole = _damsm(tmp_path / "a", 4)
    losses: list[float] = []

    def stop_at_3(info):
        losses.append(info.losses["loss/damsm"])
        if info.step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _damsm(tmp_path / "b", 4, callback=stop_at_3)
    (run,) = (tmp_path / "b").iterdir()
    resumed = _damsm(tmp_path / "b", 4, resume=run)
    rows = [json.loads(x) for x in (run / "stats.jsonl").read_text().splitlines()]
    expected = [json.loads(x) for x in (whole.run_dir / "stats.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [4] and resumed.step == 4
    assert rows[0]["loss/damsm"] == pytest.approx(expected[0]["loss/damsm"], rel=1e-5)

    newest = run / "checkpoints" / "state-00000004.pt"
    flip_byte_in_zip_record(newest, "data/")
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    with pytest.raises(
        DamagedFileError,
        match=r"state-00000004\.pt is damaged.*newest intact checkpoint is .*state-00000003\.pt",
    ):
        _damsm(tmp_path / "b", 6, resume=run, keep_checkpoints=1)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before


def test_a_full_disk_is_recorded_in_the_log(tmp_path, monkeypatch):
    def full(obj, path):
        raise DiskFullError(f"no space left on the device while writing {path}", path)

    monkeypatch.setattr(state_module, "atomic_torch_save", full)
    with pytest.raises(DiskFullError):
        _damsm(tmp_path, 2)
    (run,) = tmp_path.iterdir()
    log = (run / "log.txt").read_text()
    assert "ERROR" in log and "stopped: no space left on the device at step 2" in log


def test_output_cut_short_by_the_reader_is_no_failure(tmp_path):
    (tmp_path / "two_lines.py").write_text(
        textwrap.dedent("""
        import time
        import click

        @click.command("two-lines")
        def two_lines():
            click.echo("model: runs/00000-x/model")
            time.sleep(0.5)  # the reader has read its line and gone
            click.echo("next: attngan sample ...")
    """)
    )
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        import two_lines
        import attngan.cli as cli
        sys.modules["attngan.cli.two_lines"] = two_lines
        cli.COMMANDS["two-lines"] = ("two_lines:two_lines", "test")
        cli.main(["two-lines"])
    """)
    writer = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = writer.stdout.readline()
    writer.stdout.close()
    err = writer.stderr.read()
    assert first.startswith(b"model:") and writer.wait(timeout=60) == 0, err
    assert b"Traceback" not in err and b"Exception ignored" not in err


def test_checkpoints_stream_to_disk_without_a_copy_of_the_whole_state(tmp_path):
    """Model folders and training states are written one tensor at a time: the Python heap never holds a copy
    of the whole state (tracemalloc's peak stays under a quarter of the state's 16 MB; building the file in
    memory first took twice the state), and what is read back is what was saved."""
    import tracemalloc

    from safetensors.torch import load_file

    torch.manual_seed(0)
    module = torch.nn.Sequential(*[torch.nn.Linear(511, 512) for _ in range(16)])
    state = module.state_dict()
    state_bytes = sum(t.numel() * t.element_size() for t in state.values())
    saves = {
        "model folder": lambda: save_component(tmp_path / "model", module, GeneratorConfig()),
        "training state": lambda: atomic_torch_save({"weights": state}, tmp_path / "state.pt"),
    }
    for what, save in saves.items():
        tracemalloc.start()
        try:
            save()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < state_bytes / 4, f"{what}: {peak / 2**20:.1f} MB traced for a {state_bytes / 2**20:.1f} MB state"
    back = load_file(tmp_path / "model" / "model.safetensors")
    again = torch.load(tmp_path / "state.pt", weights_only=True)["weights"]
    for name, tensor in state.items():
        assert torch.equal(back[name], tensor) and torch.equal(again[name], tensor)


def test_safetensors_bytes_are_little_endian_on_any_machine(monkeypatch):
    """The tensor data of a model file is little-endian (safetensors' format) also where the machine is not:
    on a big-endian machine each tensor's bytes are swapped, one tensor at a time."""
    import numpy as np

    from attngan import checkpoint

    t = torch.tensor([1.0, -2.5, 3.25], dtype=torch.float32)
    h = torch.tensor([1.5, -0.25], dtype=torch.bfloat16)
    little = np.asarray([1.0, -2.5, 3.25], dtype="<f4").tobytes()
    assert bytes(checkpoint._raw_bytes(t)) == little
    # Told it runs big-endian, it swaps: this machine's little-endian memory then comes out big-endian, as a
    # big-endian machine's memory comes out little-endian.
    monkeypatch.setattr(checkpoint.sys, "byteorder", "big")
    assert bytes(checkpoint._raw_bytes(t)) == np.asarray([1.0, -2.5, 3.25], dtype=">f4").tobytes()
    assert bytes(checkpoint._raw_bytes(h)) == h.view(torch.int16).numpy().astype(">i2").tobytes()


@pytest.mark.parametrize("error", ["full disk", "ctrl-c"])
def test_a_state_file_cut_short_while_streaming_keeps_the_previous_one(tmp_path, monkeypatch, error):
    """Training states stream to disk through torch's zip writer, which turns a failing write into a
    RuntimeError: a full disk is still reported as one (DiskFullError) and Ctrl-C still stops, and the
    previous state file is intact with nothing left beside it."""
    import builtins
    import errno

    from attngan import atomic

    path = tmp_path / "state.pt"
    atomic_torch_save({"w": torch.zeros(3)}, path)
    before = path.read_bytes()

    class FillsUp:
        def __init__(self, f):
            self.f, self.written = f, 0

        def write(self, data):
            self.written += len(data)
            if self.written > 4096:
                if error == "full disk":
                    raise OSError(errno.ENOSPC, "No space left on device")
                raise KeyboardInterrupt
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def fake_open(file, mode="r", **kwargs):
        f = builtins.open(file, mode, **kwargs)
        return FillsUp(f) if "w" in mode else f

    monkeypatch.setattr(atomic, "open", fake_open, raising=False)
    expected = DiskFullError if error == "full disk" else KeyboardInterrupt
    with pytest.raises(expected):
        atomic_torch_save({"w": torch.randn(100_000)}, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.pt"]
