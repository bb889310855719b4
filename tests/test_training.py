"""Training loops on the tiny preset: learning signals, exact resume, Ctrl-C, NaN, config changes, EMA."""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace as dataclass_replace
from pathlib import Path

import pytest
import torch

from attngan.config import PRESETS, apply_overrides, check_preset
from attngan.errors import CheckpointError
from attngan.training import NonFiniteLossError, TrainingInterrupted, train_damsm, train_gan
from attngan.training.devices import make_grad_scaler
from attngan.training.gan import update_ema
from attngan.training.state import latest_checkpoint, load_state
from tolerance import assert_close_to_scale

# Small enough that a whole DAMSM run takes seconds; a higher lr than the preset's so it learns in 80 steps.
DAMSM_SETTINGS = ["data.num_images=32", "damsm_train.lr=0.005"]
DAMSM_STEPS = 80


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny networks run fastest on one thread (and other jobs share the cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def damsm_run(tmp_path_factory):
    """A tiny DAMSM pre-training run (model folder used by the GAN tests) and its per-step losses."""
    torch.set_num_threads(1)
    losses: list[float] = []
    result = train_damsm(
        apply_overrides(PRESETS["tiny"], DAMSM_SETTINGS),
        runs_dir=tmp_path_factory.mktemp("damsm_runs"),
        max_steps=DAMSM_STEPS,
        val_set=False,
        progress=False,
        tensorboard=False,
        callback=lambda info: losses.append(info.losses["loss/damsm"]),
    )
    return result, losses


def gan_preset(*overrides: str):
    return apply_overrides(PRESETS["tiny"], ["data.num_images=24", "gan_train.sample_every=1000", *overrides])


def run_gan(tmp_path, damsm_run, steps, *overrides, **kwargs):
    kwargs.setdefault("runs_dir", tmp_path)
    return train_gan(
        gan_preset(*overrides) if "resume" not in kwargs else kwargs.pop("preset", None),
        damsm=damsm_run[0].run_dir if "resume" not in kwargs else None,
        max_steps=steps,
        progress=False,
        tensorboard=False,
        num_samples=4,
        **kwargs,
    )


def weights(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    return load_state(path, "gan")["models"]


# ------------------------------------------------------------------------------------------------ DAMSM


def test_damsm_matching_loss_falls_below_chance(damsm_run):
    result, losses = damsm_run
    assert len(losses) == DAMSM_STEPS and result.step == DAMSM_STEPS
    chance = 4 * math.log(PRESETS["tiny"].damsm_train.batch_size)  # Eq. 14 with uniform posteriors
    end = sum(losses[-10:]) / 10
    assert end < 0.8 * chance, (end, chance)
    assert end < 0.6 * losses[0], (end, losses[0])


def test_damsm_run_folder_and_exported_encoders(damsm_run):
    result, _ = damsm_run
    run = result.run_dir
    assert run.name.startswith("00000-")
    config = json.loads((run / "config.json").read_text())
    assert config["preset"]["data"]["num_images"] == 32
    assert config["preset"]["text_encoder"]["vocab_size"] > 2  # resolved from the dataset's vocabulary
    lines = [json.loads(x) for x in (run / "stats.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == DAMSM_STEPS and "loss/damsm" in lines[-1]
    assert "damsm step" in (run / "log.txt").read_text()
    for name in ("text_encoder", "image_encoder"):
        assert (run / "model" / name / "model.safetensors").is_file()
    assert (run / "model" / "vocab.json").is_file()


def test_damsm_resume_is_exact_across_an_epoch_boundary(tmp_path):
    # 48 images / 16 = 3 steps per epoch: 4 + 3 steps crosses the lr decay of epochs 0 and 1.
    preset = apply_overrides(PRESETS["tiny"], ["data.num_images=48", "damsm_train.snapshot_every=100"])
    kw = dict(val_set=False, progress=False, tensorboard=False)
    one = train_damsm(preset, runs_dir=tmp_path / "a", max_steps=7, **kw)
    part = train_damsm(preset, runs_dir=tmp_path / "b", max_steps=4, **kw)
    two = train_damsm(None, resume=part.run_dir, max_steps=7, **kw)
    a, b = load_state(one.checkpoint, "damsm"), load_state(two.checkpoint, "damsm")
    assert two.run_dir == part.run_dir and b["step"] == 7 and b["epoch"] == 2
    for name in ("text_encoder", "image_encoder"):
        for k, v in a["models"][name].items():
            assert torch.equal(v, b["models"][name][k]), (name, k)
    # One optimizer for the whole run (the original re-created Adam every epoch): moments and step count
    # carry over, and the lr decayed once per finished epoch.
    opt = b["optimizers"]["damsm"]
    assert int(opt["state"][0]["step"]) == 7
    assert opt["param_groups"][0]["lr"] == pytest.approx(preset.damsm_train.lr * 0.98**2)


# ------------------------------------------------------------------------------------------------ GAN


def test_gan_damsm_term_of_g_falls(tmp_path, damsm_run):
    terms: list[float] = []
    run_gan(
        tmp_path,
        damsm_run,
        40,
        "data.num_images=32",
        "gan_loss.damsm_lambda=50",
        "gan_train.g_lr=0.002",
        "gan_train.snapshot_every=1000",
        callback=lambda info: terms.append(info.losses["G/damsm"]),
    )
    start, end = sum(terms[:5]) / 5, sum(terms[-5:]) / 5
    assert end < 0.7 * start, (start, end)


CPU_SCALER = pytest.mark.skipif(not hasattr(torch.amp, "GradScaler"), reason="a CPU GradScaler needs torch >= 2.3")


@pytest.mark.parametrize("mode", ["bf16", pytest.param("fp16", marks=CPU_SCALER)])
def test_mixed_precision_path_learns_under_cpu_autocast(tmp_path, damsm_run, monkeypatch, mode):
    """gan_train.mixed_precision runs on CUDA only; its code path (autocast around the networks, float32
    DAMSM scores, the GradScaler over every optimizer, FlatAdam) is run here with CPU autocast and a CPU
    GradScaler, so that a dtype mismatch or a scaler misuse shows without a GPU. The networks must really
    run in the low precision, and the DAMSM term of G must fall as in float32."""
    import attngan.training.gan as gan_module

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[mode]
    monkeypatch.setattr(gan_module, "check_mixed_precision", lambda device, m: m)
    monkeypatch.setattr(gan_module, "autocast", lambda device, m: torch.autocast("cpu", dtype=dtype))
    scalers = []

    def cpu_scaler(device, m):
        if m != "fp16":
            scalers.append(make_grad_scaler(torch.device("cpu"), "no"))
        else:
            scalers.append(torch.amp.GradScaler("cpu", init_scale=2.0**12))
        return scalers[-1]

    monkeypatch.setattr(gan_module, "make_grad_scaler", cpu_scaler)
    seen_dtypes: set[torch.dtype] = set()
    hook = torch.nn.modules.module.register_module_forward_hook(
        lambda module, args, out: seen_dtypes.add(out.dtype)
        if isinstance(module, torch.nn.Conv2d) and torch.is_tensor(out) else None
    )
    terms: list[float] = []
    try:
        result = run_gan(
            tmp_path, damsm_run, 40, "data.num_images=32", "gan_loss.damsm_lambda=50", "gan_train.g_lr=0.002",
            "gan_train.snapshot_every=1000", f"gan_train.mixed_precision={mode}", device="cpu",
            callback=lambda info: terms.append(info.losses["G/damsm"]),
        )  # fmt: skip
    finally:
        hook.remove()
    assert dtype in seen_dtypes, seen_dtypes
    assert all(math.isfinite(t) for t in terms)
    start, end = sum(terms[:5]) / 5, sum(terms[-5:]) / 5
    assert end < 0.7 * start, (start, end)
    state = load_state(result.checkpoint, "gan")
    assert all(v.dtype == torch.float32 for v in state["models"]["generator"].values() if v.is_floating_point())
    if mode == "fp16":
        assert scalers[0].is_enabled() and state["scaler"] is not None and state["scaler"]["scale"] > 0


def test_gan_run_exports_a_model_folder(tmp_path, damsm_run):
    result = run_gan(tmp_path, damsm_run, 3)
    model = result.model_dir
    for name in ("generator", "text_encoder", "image_encoder", "discriminator0", "discriminator1"):
        assert (model / name / "model.safetensors").is_file(), name
    assert (model / "vocab.json").read_text() == (damsm_run[0].model_dir / "vocab.json").read_text()
    assert (result.run_dir / "samples" / "fakes-00000003.png").is_file()
    # The exported generator holds the EMA weights, not G's.
    from safetensors.torch import load_file

    exported = load_file(str(model / "generator" / "model.safetensors"))
    state = weights(result.checkpoint)
    key = next(k for k in exported if k.endswith("weight") and exported[k].dim() > 1)
    assert torch.equal(exported[key], state["generator_ema"][key])
    assert not torch.equal(exported[key], state["generator"][key])


def test_gan_exported_model_loads_in_the_pipeline(tmp_path, damsm_run):
    pipeline = pytest.importorskip("attngan.pipeline")
    result = run_gan(tmp_path, damsm_run, 2)
    pipe = pipeline.AttnGANPipeline.from_pretrained(result.model_dir)
    out = pipe(["a red circle", "a small blue square at the top left"], seed=0)
    assert len(out.images) == 2
    assert [im.size for im in out.images[1]] == [(16, 16), (32, 32)]  # the tiny preset's two stages
    assert out.unknown_words == [[], []]


def test_gan_resume_is_exact(tmp_path, damsm_run):
    # 24 images / 8 = 3 steps per epoch; stopping after 4 resumes in the middle of epoch 1.
    one = run_gan(tmp_path / "a", damsm_run, 7, "gan_train.snapshot_every=100")
    part = run_gan(tmp_path / "b", damsm_run, 4, "gan_train.snapshot_every=100")
    assert load_state(part.checkpoint, "gan")["batch_in_epoch"] == 1
    two = run_gan(tmp_path / "b", damsm_run, 7, resume=part.run_dir)
    a, b = weights(one.checkpoint), weights(two.checkpoint)
    assert set(a) == {"generator", "generator_ema", "discriminator0", "discriminator1"} == set(b)
    for name in a:
        for k, v in a[name].items():
            assert torch.equal(v, b[name][k]), (name, k)
    first = weights(part.checkpoint)
    assert not torch.equal(first["generator"]["h_net1.fc.0.weight"], b["generator"]["h_net1.fc.0.weight"])


def test_ctrl_c_saves_a_checkpoint_that_resumes(tmp_path, damsm_run):
    def interrupt(info):
        if info.step == 3:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted) as err:
        run_gan(tmp_path, damsm_run, 10, "gan_train.snapshot_every=2", callback=interrupt)
    run_dir = err.value.run_dir
    assert "--resume" in str(err.value) and str(run_dir) in str(err.value)
    state = load_state(err.value.checkpoint, "gan")
    assert state["step"] == 3 and err.value.checkpoint == latest_checkpoint(run_dir)
    resumed = run_gan(tmp_path, damsm_run, 5, resume=run_dir)
    assert resumed.step == 5 and resumed.run_dir == run_dir


def test_sigterm_stops_after_the_step_and_saves_like_ctrl_c(tmp_path, damsm_run):
    import signal

    def terminate(info):
        if info.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # a batch scheduler's stop, or `kill`

    with pytest.raises(TrainingInterrupted) as err:
        run_gan(tmp_path, damsm_run, 10, "gan_train.snapshot_every=100", callback=terminate)
    assert load_state(err.value.checkpoint, "gan")["step"] == 3  # the step under way when it came ends first
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is removed


def test_a_full_disk_during_training_names_the_intact_checkpoint(tmp_path, damsm_run):
    import errno

    from attngan.errors import DiskFullError

    def fill_up(info):
        if info.step == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(info.run_dir / "stats.jsonl"))

    with pytest.raises(DiskFullError) as err:
        run_gan(tmp_path, damsm_run, 10, "gan_train.snapshot_every=2", callback=fill_up)
    message = str(err.value)
    assert "no space left on the device at step 3 while writing" in message and "stats.jsonl" in message
    assert "state-00000002.pt is intact" in message and "attngan train --resume" in message


def test_run_log_that_cannot_be_written_warns_once(tmp_path, capsys):
    import logging

    from attngan.training.stats import _RunLogHandler

    handler = _RunLogHandler(tmp_path / "log.txt", encoding="utf-8")
    logger = logging.getLogger("attngan.test_full_disk")
    logger.addHandler(handler)
    try:
        def no_space(text):
            raise OSError(28, "No space left on device")

        handler.stream.write = no_space
        logger.warning("one")
        logger.warning("two")
    finally:
        logger.removeHandler(handler)
    err = capsys.readouterr().err
    assert err.count("cannot write") == 1 and "No space left" in err and "Logging error" not in err


def test_interrupted_checkpoint_write_leaves_the_previous_one_intact(tmp_path, damsm_run, monkeypatch):
    saved: dict[str, bytes] = {}
    real_fsync = os.fsync

    def snoop(info):
        if info.step == 2:  # the checkpoint of step 2 was just written: remember its bytes
            path = latest_checkpoint(info.run_dir)
            saved["path"], saved["bytes"] = str(path), path.read_bytes()

            def dying_fsync(fd):  # the process is killed while the next checkpoint is on its way to disk
                raise KeyboardInterrupt

            monkeypatch.setattr(os, "fsync", dying_fsync)

    with pytest.raises(KeyboardInterrupt):
        run_gan(tmp_path, damsm_run, 10, "gan_train.snapshot_every=2", callback=snoop)
    monkeypatch.setattr(os, "fsync", real_fsync)
    path = Path(saved["path"])
    folder = path.parent
    assert path.read_bytes() == saved["bytes"]
    assert sorted(p.name for p in folder.iterdir()) == [path.name]  # no new file, no temporary left over
    assert load_state(path, "gan")["step"] == 2


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, damsm_run):
    def poison(info):
        if info.step == 2:  # after the snapshot of step 2: G's weights blow up
            with torch.no_grad():
                next(info.modules["generator"].parameters()).fill_(float("nan"))

    with pytest.raises(NonFiniteLossError) as err:
        run_gan(tmp_path, damsm_run, 10, "gan_train.snapshot_every=2", callback=poison)
    message = str(err.value)
    assert "at step 3" in message and "nan" in message and "loss/D0" in message
    good = err.value.checkpoint
    assert good is not None and str(good) in message
    assert latest_checkpoint(good.parent.parent) == good
    state = load_state(good, "gan")
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for v in state["models"]["generator"].values() if v.is_floating_point())


def test_resume_with_another_config_names_the_differences(tmp_path, damsm_run):
    part = run_gan(tmp_path, damsm_run, 2)
    changed = gan_preset("generator.gf_dim=8", "gan_train.d_lr=0.001", "gan_train.max_steps=50")
    with pytest.raises(CheckpointError) as err:
        run_gan(tmp_path, damsm_run, 3, resume=part.run_dir, preset=changed)
    message = str(err.value)
    assert "generator.gf_dim" in message and "gan_train.d_lr" in message
    assert "max_steps" not in message  # how long to train may change
    # Only run-length settings changed: the run continues.
    longer = run_gan(tmp_path, damsm_run, 3, resume=part.run_dir, preset=gan_preset("gan_train.max_steps=50"))
    assert longer.step == 3


def test_only_the_newest_checkpoints_are_kept(tmp_path, damsm_run):
    result = run_gan(tmp_path, damsm_run, 4, "gan_train.snapshot_every=1", keep_checkpoints=2)
    folder = result.run_dir / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["state-00000003.pt", "state-00000004.pt"]
    stats = [json.loads(x) for x in (result.run_dir / "stats.jsonl").read_text().splitlines()]
    assert stats[-1]["step"] == 4 and stats[-1]["lr/G"] == pytest.approx(PRESETS["tiny"].gan_train.g_lr)


def test_resuming_an_older_or_damaged_checkpoint_overwrites_nothing(tmp_path, damsm_run):
    result = run_gan(tmp_path, damsm_run, 3, "gan_train.snapshot_every=1", keep_checkpoints=0)
    folder = result.run_dir / "checkpoints"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    # An older checkpoint would branch the run and overwrite steps 2-3 and model/: refused.
    with pytest.raises(CheckpointError, match=r"not the newest.*state-00000003\.pt.*move the newer"):
        run_gan(tmp_path, damsm_run, 3, resume=folder / "state-00000001.pt")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    # A damaged newest checkpoint: the message points to the previous one.
    (folder / "state-00000003.pt").write_text("not a checkpoint\n")
    with pytest.raises(CheckpointError, match=r"is not a PyTorch checkpoint \(it does not start as a torch zip.*newest intact checkpoint is .*state-00000002\.pt"):
        run_gan(tmp_path, damsm_run, 4, resume=result.run_dir)
    (folder / "state-00000003.pt").unlink()
    assert run_gan(tmp_path, damsm_run, 3, resume=result.run_dir).step == 3


def test_resume_without_the_run_model_folder_takes_the_encoders_given(tmp_path, damsm_run):
    import shutil

    from attngan.errors import UserError

    result = run_gan(tmp_path, damsm_run, 2, "gan_train.snapshot_every=1")
    shutil.rmtree(result.run_dir / "model")
    with pytest.raises(UserError, match="has no model/ folder with the frozen DAMSM encoders.*--damsm"):
        run_gan(tmp_path, damsm_run, 3, resume=result.run_dir)
    recorded = json.loads((result.run_dir / "config.json").read_text())["encoders"]
    # Other encoders (one weight changed) would condition G on other text features: refused.
    from attngan.checkpoint import load_component, save_component
    from attngan.config import TextEncoderConfig
    from attngan.nn import TextEncoder

    other = tmp_path / "other-damsm"
    shutil.copytree(damsm_run[0].run_dir / "model", other)
    te = load_component(other / "text_encoder", TextEncoder, TextEncoderConfig)
    with torch.no_grad():
        next(te.parameters())[0, 0] += 0.01
    save_component(other / "text_encoder", te, te.config)
    with pytest.raises(UserError, match=r"not the ones this run was trained with.*config\.json"):
        train_gan(None, resume=result.run_dir, damsm=other, max_steps=3, progress=False, tensorboard=False)
    resumed = train_gan(
        None, resume=result.run_dir, damsm=damsm_run[0].run_dir, max_steps=3, progress=False, tensorboard=False
    )
    assert resumed.step == 3 and (result.run_dir / "model" / "generator").is_dir()
    assert json.loads((result.run_dir / "config.json").read_text())["encoders"] == recorded  # where they came from


def test_a_damsm_of_other_data_is_refused(tmp_path, damsm_run):
    from attngan.data.registry import build_dataset
    from attngan.errors import UserError
    from attngan.text import Vocabulary

    own = build_dataset(gan_preset().data, "train", [16, 32], vocab=Vocabulary.load(damsm_run[0].run_dir / "model" / "vocab.json"))
    assert own.unknown_word_share == 0.0
    # A DAMSM vocabulary of other captions: most words of these captions are unknown to it.
    foreign = build_dataset(gan_preset().data, "train", [16, 32], vocab=Vocabulary.build([["a", "red", "bird", "with", "wings"]]))
    assert 0.5 < foreign.unknown_word_share < 1.0
    with pytest.raises(UserError, match=r"% of the words of the training captions are not in the vocabulary.*pre-trained on other data"):
        run_gan(tmp_path, damsm_run, 1, train_set=foreign)
    assert not list(tmp_path.glob("*-attngan"))  # refused before a run folder was made


def test_an_unfinished_damsm_run_or_a_damsm_only_model_say_what_to_do(tmp_path, damsm_run):
    import shutil

    from attngan.errors import CheckpointError, UserError
    from attngan.pipeline import resolve_model_dir

    unfinished = tmp_path / "00000-shapes-damsm"
    shutil.copytree(damsm_run[0].run_dir, unfinished)
    shutil.rmtree(unfinished / "model")  # as after Ctrl-C before the end
    with pytest.raises(UserError, match=r"has not exported its encoders yet.*pretrain-damsm --resume"):
        run_gan(tmp_path, (dataclass_replace(damsm_run[0], run_dir=unfinished), []), 1)
    with pytest.raises(CheckpointError, match=r"DAMSM encoders only.*attngan train --damsm"):
        resolve_model_dir(damsm_run[0].run_dir)


def test_d_steps_updates_g_every_other_step(tmp_path, damsm_run):
    g_steps, d_moves = [], []
    last: dict[str, torch.Tensor] = {}

    def watch(info):
        if "loss/G" in info.losses:
            g_steps.append(info.step)
        d = next(info.modules["discriminator0"].parameters()).detach().clone()
        d_moves.append("d" in last and not torch.equal(d, last["d"]))
        last["d"] = d

    run_gan(tmp_path, damsm_run, 4, "gan_train.d_steps=2", callback=watch)
    assert g_steps == [2, 4]
    assert d_moves[1:] == [True, True, True]


def test_update_ema_averages_parameters_and_copies_buffers():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    ema = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    model(torch.randn(8, 3))  # moves the running statistics
    before = [p.clone() for p in ema.parameters()]
    update_ema(ema, model, 0.9)
    for p_ema, p0, p in zip(ema.parameters(), before, model.parameters()):
        assert_close_to_scale(p_ema, 0.9 * p0 + 0.1 * p)
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        assert torch.equal(b_ema, b)


def CUDA(test):  # noqa: N802 - a decorator named like the marks it applies
    """Runs on the GPU (the other tests run on the CPU, see conftest.py); skipped without one."""
    return pytest.mark.cuda(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")(test))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU")])])  # fmt: skip
@pytest.mark.parametrize("channels_last", [False, True])
def test_fast_kernels_give_the_same_losses_and_weights(tmp_path, damsm_run, channels_last, device, monkeypatch):
    """gan_train.fast_kernels (transposed-conv upsampling, im2col convs, fused attention, folded encoder
    BN) and channels-last change only float rounding: same losses at every step, same weights after them."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # float32 convolutions on a GPU too
    runs = {}
    for fast in (False, True):
        seen: list[dict[str, float]] = []
        result = run_gan(
            tmp_path / f"fast{fast}",
            damsm_run,
            3,
            "data.num_images=32",
            f"gan_train.fast_kernels={fast}",
            f"gan_train.channels_last={channels_last and fast}",
            "gan_train.snapshot_every=1000",
            "gan_train.mixed_precision=no",
            device=device,
            callback=lambda info, seen=seen: seen.append(dict(info.losses)),
        )
        runs[fast] = (seen, weights(result.checkpoint))
    (plain_losses, plain_w), (fast_losses, fast_w) = runs[False], runs[True]
    assert plain_losses[0].keys() == fast_losses[0].keys() and len(plain_losses) == 3
    for a, b in zip(plain_losses, fast_losses):
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-3, abs=1e-4), key
    for name in ("generator", "discriminator0", "discriminator1"):
        for key, value in plain_w[name].items():
            # Adam normalises each update: a rounding-level gradient change moves a weight by at most ~lr.
            torch.testing.assert_close(fast_w[name][key].contiguous(), value.contiguous(), atol=1e-3, rtol=0)


def test_damsm_fast_kernels_fold_the_frozen_inception_and_train_the_same(tmp_path):
    """damsm_train.fast_kernels folds the frozen Inception's BatchNorm (non-trivial statistics here) into a
    forward copy that shares the trained projections: same losses step after step, same saved encoder."""
    preset = apply_overrides(
        PRESETS["tiny"],
        [
            "image_encoder.backbone=inception",
            "image_encoder.input_size=299",  # as the birds preset
            "data.num_images=8",
            "damsm_train.batch_size=4",
            "damsm_train.snapshot_every=100",
        ],
    )
    from attngan.nn import ImageEncoder

    gen = torch.Generator().manual_seed(0)
    reference = ImageEncoder(preset.image_encoder, backbone_weights=None)
    with torch.no_grad():  # "pre-trained" BN statistics, so that folding changes the ops for real
        for m in reference.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    backbone = {k: v for k, v in reference.state_dict().items() if not k.startswith("emb_")}
    runs = {}
    for fast in (False, True):
        seen: list[float] = []
        result = train_damsm(
            apply_overrides(preset, [f"damsm_train.fast_kernels={fast}"]),
            runs_dir=tmp_path / f"fast{fast}",
            max_steps=3,
            backbone_weights=backbone,
            val_set=False,
            progress=False,
            tensorboard=False,
            callback=lambda info, seen=seen: seen.append(info.losses["loss/damsm"]),
        )
        runs[fast] = (seen, load_state(result.checkpoint, "damsm")["models"]["image_encoder"])
    (plain, plain_w), (fast, fast_w) = runs[False], runs[True]
    assert fast == pytest.approx(plain, rel=1e-4)
    assert fast_w.keys() == plain_w.keys()  # the saved encoder is the unfolded one, BatchNorm included
    for key in ("emb_features.weight", "emb_cnn_code.weight"):
        assert not torch.equal(fast_w[key], reference.state_dict()[key])  # the shared projections trained
        torch.testing.assert_close(fast_w[key], plain_w[key], atol=1e-4, rtol=0)


def test_damsm_validation_batches_mix_the_classes_of_a_sorted_split():
    """A real test split is sorted by class (CUB); with class masking, batches in file order would hold
    one class each and no negatives (a validation loss of exactly 0)."""
    from attngan.training.damsm import evaluate_damsm

    class SortedByClass(torch.utils.data.Dataset):
        def __len__(self):
            return 40

        def __getitem__(self, i):
            caption = torch.tensor([1, 2, 3])
            return {"images": [torch.zeros(3, 4, 4)], "caption": caption, "length": 3, "class_id": i // 10, "key": str(i)}

    seen: list[list[int]] = []

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.text_encoder = lambda captions, lengths: (None, torch.randn(len(captions), 4))
            self.image_encoder = lambda images: (None, torch.randn(len(images), 4))

        def forward(self, images, captions, lengths, class_ids):
            seen.append(class_ids.tolist())
            return (torch.tensor(1.0),) * 5

    evaluate_damsm(Recorder(), SortedByClass(), batch_size=10)
    first = list(seen)
    assert len(first) == 4 and all(len(set(ids)) > 1 for ids in first)
    seen.clear()
    evaluate_damsm(Recorder(), SortedByClass(), batch_size=10)
    assert seen == first  # the same batches at every validation


def test_gan_with_an_empty_test_split_samples_training_captions(tmp_path, damsm_run, caplog):
    from attngan.data.synthetic import ShapesDataset, write_folder

    data = tmp_path / "data"
    write_folder(ShapesDataset(num_images=8, image_sizes=[32], captions_per_image=2, seed=3), data / "train")
    (data / "test").mkdir()
    with caplog.at_level("WARNING", logger="attngan.training.gan"):
        result = run_gan(tmp_path / "runs", damsm_run, 1, "data.dataset=folder", f"data.data_dir={data}")
    assert "test split" in caplog.text and "training split" in caplog.text
    captions = (result.run_dir / "samples" / "captions.txt").read_text().splitlines()
    train_texts = {line for p in (data / "train").glob("*.txt") for line in p.read_text().splitlines()}
    assert len(captions) == 4  # each the start of a training caption (cut to data.words_num)
    assert all(any(t.lower().startswith(c) for t in train_texts) for c in captions)


def test_loader_workers_leave_ctrl_c_and_sigterm_to_the_main_process():
    import signal

    from attngan.training.data import _ignore_stop_signals

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        _ignore_stop_signals(0)  # what each DataLoader worker runs first
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN and signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def test_resuming_with_another_number_of_processes_is_refused(tmp_path, damsm_run):
    from attngan.training.state import check_resumable

    result = run_gan(tmp_path, damsm_run, 1)
    state = load_state(result.checkpoint, "gan")
    check_resumable(state, 1)
    with pytest.raises(CheckpointError, match=r"written by 1 process\(es\) and this run has 2.*attngan train --resume"):
        check_resumable(state, 2)
    state["rng"] = state["rng"] * 2  # as written by two processes
    with pytest.raises(CheckpointError, match=r"torchrun --nproc_per_node=2 -m attngan train --resume"):
        check_resumable(state, 1)


# --------------------------------------------------------------------------------------------------------
# The wiring of the losses in the training phases (training/loss.py), with non-default weights: every term
# of Eq. 3 and Eq. 5 must reach the total with its own weight.


def _gan_loss_setup(generator_config, image_config, gan_cfg, damsm_cfg):
    import contextlib

    from attngan.config import DiscriminatorConfig
    from attngan.data.base import Batch
    from attngan.nn import Discriminator, Generator, ImageEncoder
    from attngan.training.loss import DiscriminatorObjective, GANLoss, TextFeatures

    torch.manual_seed(0)
    g = Generator(generator_config)
    ds = [
        Discriminator(DiscriminatorConfig(df_dim=4, embed_dim=generator_config.embed_dim, image_size=s)).eval()
        for s in generator_config.image_sizes
    ]  # eval: the reference calls see the same BatchNorm statistics
    enc = ImageEncoder(image_config).eval().requires_grad_(False)
    b, t, d = 4, 5, generator_config.embed_dim
    lengths = torch.tensor([5, 3, 2, 4])
    mask = torch.arange(t)[None] >= lengths[:, None]
    images = [torch.rand(b, 3, s, s) * 2 - 1 for s in generator_config.image_sizes]
    batch = Batch(images, torch.ones(b, t, dtype=torch.long), lengths, mask, torch.tensor([0, 1, 0, 1]))
    text = TextFeatures(torch.randn(b, d, t), torch.randn(b, d))
    loss = GANLoss(
        generator=g, discriminators=ds, d_objectives=[DiscriminatorObjective(x, gan_cfg.uncond_weight) for x in ds],
        image_encoder=enc, gan_cfg=gan_cfg, damsm_cfg=damsm_cfg, autocast=contextlib.nullcontext,
        scaler=make_grad_scaler(torch.device("cpu"), "no"),
    )  # fmt: skip
    return ds, enc, batch, text, loss, loss.generate(batch, text, with_grad=True)


def test_g_phase_total_is_eq3_with_its_weights(tiny_generator_config, tiny_image_config):
    from attngan import losses
    from attngan.config import DAMSMLossConfig, GANLossConfig

    gan_cfg = GANLossConfig(damsm_lambda=3.0, kl_weight=2.0, uncond_weight=0.5)
    damsm_cfg = DAMSMLossConfig(eq10_inverse_gamma2=True, class_masking=True)
    ds, enc, batch, text, loss, fake = _gan_loss_setup(tiny_generator_config, tiny_image_config, gan_cfg, damsm_cfg)
    out = loss.accumulate_gradients("G", batch, text, fake)
    with torch.no_grad():
        adv = sum(losses.generator_stage_loss(d, x, text.sentence, 0.5) for d, x in zip(ds, fake.images))  # all stages
        regions, image_vec = enc(fake.images[-1])
        damsm = losses.damsm_loss(
            regions, image_vec, text.words, text.sentence, batch.lengths, gamma1=4.0, gamma2=5.0, gamma3=10.0,
            class_ids=batch.class_ids, inverse_gamma2=True,
        ).total  # fmt: skip
        kl = losses.kl_loss(fake.mu, fake.logvar)
    assert_close_to_scale(out["G/adv"], adv)
    assert_close_to_scale(out["G/damsm"], damsm)
    assert_close_to_scale(out["G/kl"], kl)
    assert_close_to_scale(out["loss/G"], adv + 3.0 * damsm + 2.0 * kl)
    assert all(p.grad is None for d in ds for p in d.parameters())  # the G step leaves D's weights alone


def test_d_phase_total_is_eq5_with_its_weight(tiny_generator_config, tiny_image_config):
    from attngan import losses
    from attngan.config import DAMSMLossConfig, GANLossConfig

    gan_cfg = GANLossConfig(uncond_weight=0.5)
    ds, _, batch, text, loss, fake = _gan_loss_setup(tiny_generator_config, tiny_image_config, gan_cfg, DAMSMLossConfig())
    out = loss.accumulate_gradients("D0", batch, text, fake)
    with torch.no_grad():
        ref = losses.discriminator_loss(ds[0], batch.images[0], fake.images[0], text.sentence, 0.5).total
    assert_close_to_scale(out["loss/D0"], ref)


def test_ema_decay_is_used(tmp_path, damsm_run):
    result = run_gan(tmp_path, damsm_run, 2, "gan_train.ema_decay=0.0", "gan_train.snapshot_every=1000")
    w = weights(result.checkpoint)
    for k, v in w["generator"].items():  # decay 0: the average is the generator itself
        assert torch.equal(v, w["generator_ema"][k]), k


def test_damsm_clips_the_text_encoder_gradients(tmp_path):
    norms = []

    def record(info):
        grads = [p.grad for p in info.modules["text_encoder"].parameters() if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))

    preset = apply_overrides(PRESETS["tiny"], ["data.num_images=32", "damsm_train.rnn_grad_clip=0.01"])
    train_damsm(preset, runs_dir=tmp_path, max_steps=3, val_set=False, progress=False, tensorboard=False, callback=record)
    assert norms and max(norms) <= 0.01 * (1 + 1e-4), norms


def test_damsm_lr_decay_stops_at_a_tenth(tmp_path):
    preset = apply_overrides(
        PRESETS["tiny"], ["data.num_images=16", "damsm_train.lr_decay=0.5", "damsm_train.snapshot_every=1000"]
    )  # one step per epoch: 7 epochs, the decay stops once lr <= lr0 / 10 (after 4 halvings)
    result = train_damsm(preset, runs_dir=tmp_path, max_steps=7, val_set=False, progress=False, tensorboard=False)
    lr = load_state(result.checkpoint, "damsm")["optimizers"]["damsm"]["param_groups"][0]["lr"]
    assert lr == pytest.approx(preset.damsm_train.lr * 0.5**4)


def test_damsm_resume_with_dropout_is_exact(tmp_path):
    """With dropout the global torch RNG matters: a resumed run must restore it."""
    preset = apply_overrides(
        PRESETS["tiny"], ["data.num_images=48", "damsm_train.snapshot_every=100", "text_encoder.dropout=0.3"]
    )
    kw = dict(val_set=False, progress=False, tensorboard=False)
    one = train_damsm(preset, runs_dir=tmp_path / "a", max_steps=5, **kw)
    part = train_damsm(preset, runs_dir=tmp_path / "b", max_steps=2, **kw)
    two = train_damsm(None, resume=part.run_dir, max_steps=5, **kw)
    a, b = load_state(one.checkpoint, "damsm"), load_state(two.checkpoint, "damsm")
    for k, v in a["models"]["text_encoder"].items():
        assert torch.equal(v, b["models"]["text_encoder"][k]), k


def test_rng_state_round_trip_covers_torch_numpy_and_python():
    import random

    import numpy as np

    from attngan.training.state import capture_rng_state, restore_rng_state

    state = capture_rng_state()
    first = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng_state(state)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]


def test_a_failed_start_leaves_no_run_folder_behind(tmp_path, damsm_run):
    from attngan.data.synthetic import ShapesDataset, write_folder
    from attngan.errors import DataError

    data = tmp_path / "data"
    paths = write_folder(ShapesDataset(num_images=8, image_sizes=[32], captions_per_image=2, seed=3), data / "train")
    write_folder(ShapesDataset(num_images=4, image_sizes=[32], captions_per_image=2, seed=4), data / "test")
    for p in paths:  # every training image truncated: the first batch fails
        p.write_bytes(p.read_bytes()[:40])
    runs = tmp_path / "runs"
    for _ in range(2):  # a retry must not leave a second empty folder either
        with pytest.raises(DataError, match="cannot decode image"):
            run_gan(runs, damsm_run, 2, "data.dataset=folder", f"data.data_dir={data}")
    assert not runs.exists() or list(runs.iterdir()) == []


def test_a_full_disk_names_the_newest_checkpoint_on_disk(tmp_path, damsm_run, monkeypatch):
    import errno

    import attngan.training.gan as gan_module
    from attngan.errors import DiskFullError

    real_export = gan_module._export

    def export_fills_the_disk(*args):
        if args[-1] == 4:  # the snapshot of step 4 wrote state-4, then its model/ export found the disk full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_export(*args)

    monkeypatch.setattr(gan_module, "_export", export_fills_the_disk)
    with pytest.raises(DiskFullError, match=r"state-00000004\.pt is intact"):
        run_gan(tmp_path, damsm_run, 10, "gan_train.snapshot_every=2")


def test_mixed_precision_auto_is_bf16_on_cuda_only(caplog, monkeypatch):
    from attngan.errors import UserError
    from attngan.training import devices
    from attngan.training.devices import check_mixed_precision

    cpu = torch.device("cpu")
    with caplog.at_level("WARNING"):
        assert check_mixed_precision(cpu, "auto") == "no" and not caplog.records  # no warning for the default
        assert check_mixed_precision(cpu, "fp16") == "no" and "needs CUDA" in caplog.text
    assert check_mixed_precision(cpu, "no") == "no"
    # bf16 on a CPU: with AMX as asked, else float32 with a warning that says why.
    monkeypatch.setattr(devices, "cpu_has_amx_bf16", lambda: True)
    assert check_mixed_precision(cpu, "bf16") == "bf16" and check_mixed_precision(cpu, "auto") == "no"
    with devices.autocast(cpu, "bf16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    assert check_mixed_precision(cpu, "fast") == "bf16"  # fast: bf16 where the CPU has AMX ...
    monkeypatch.setattr(devices, "cpu_has_amx_bf16", lambda: False)
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert check_mixed_precision(cpu, "fast") == "no" and not caplog.records  # ... else float32, quietly
        assert check_mixed_precision(cpu, "bf16") == "no" and "needs AMX" in caplog.text
    with pytest.raises(UserError, match="auto, no, bf16, fp16"):
        check_mixed_precision(cpu, "fp8")
    if torch.cuda.is_available():
        want = "bf16" if torch.version.hip or torch.cuda.get_device_capability()[0] >= 8 else "no"
        assert check_mixed_precision(torch.device("cuda"), "auto") == want
        assert check_mixed_precision(torch.device("cuda"), "fast") == want


def test_mixed_precision_auto_leaves_emulated_bf16_alone(monkeypatch):
    # torch.cuda.is_bf16_supported() is True on a T4 / V100 (emulated bf16, slower than float32)
    from attngan.training import devices as runtime

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.version, "hip", None)
    assert runtime.check_mixed_precision(torch.device("cuda", 0), "auto") == "no"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert runtime.check_mixed_precision(torch.device("cuda", 0), "auto") == "bf16"


def test_cudnn_autotuner_is_on_during_training_only_unless_determinism_was_asked():
    from attngan.training.devices import cudnn_autotuner

    cudnn = torch.backends.cudnn
    before = (cudnn.benchmark, cudnn.deterministic)
    try:
        cudnn.benchmark, cudnn.deterministic = False, False
        with cudnn_autotuner(True):
            assert cudnn.benchmark
        assert not cudnn.benchmark
        with cudnn_autotuner(False):
            assert not cudnn.benchmark
        cudnn.deterministic = True
        with cudnn_autotuner(True):
            assert not cudnn.benchmark
    finally:
        cudnn.benchmark, cudnn.deterministic = before


@CUDA
def test_cuda_training_with_the_default_mixed_precision_learns_and_resumes(tmp_path, damsm_run):
    terms: list[float] = []
    settings = ["data.num_images=32", "gan_loss.damsm_lambda=50", "gan_train.g_lr=0.002", "gan_train.snapshot_every=1000"]
    result = run_gan(
        tmp_path, damsm_run, 40, *settings, device="cuda", callback=lambda info: terms.append(info.losses["G/damsm"])
    )
    assert all(math.isfinite(t) for t in terms)
    start, end = sum(terms[:5]) / 5, sum(terms[-5:]) / 5
    assert end < 0.7 * start, (start, end)
    resumed = run_gan(tmp_path, damsm_run, 42, resume=result.run_dir, device="cuda")
    assert resumed.step == 42 and resumed.run_dir == result.run_dir


def test_a_numbered_gpu_under_torchrun_is_refused(monkeypatch):
    from attngan.errors import UserError
    from attngan.training.distributed import init_distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    # A stale WORLD_SIZE without the rest of torchrun's environment: one line, not torch's rendezvous error.
    with pytest.raises(UserError, match="RANK, MASTER_ADDR, MASTER_PORT are not: start distributed training with torchrun"):
        init_distributed("cpu")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    with pytest.raises(UserError, match="CUDA_VISIBLE_DEVICES"):
        init_distributed("cuda:0")
    with pytest.raises(UserError, match="CUDA_VISIBLE_DEVICES"):
        init_distributed(torch.device("cuda", 0))


def test_loader_workers_auto_feeds_a_gpu_and_leaves_a_cpu_step_its_cores(monkeypatch, caplog):
    from attngan.training.data import loader_workers

    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert loader_workers(-1, cpu) == 0 and loader_workers(3, cpu) == 3 and loader_workers(0, gpu) == 0
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert loader_workers(-1, gpu) == 8  # one core stays with the training process
    assert loader_workers(-1, gpu, world_size=4) == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert loader_workers(-1, gpu, world_size=2) == 0
    # Each worker keeps two batches in /dev/shm: auto takes no more than fit in half of its free space.
    from attngan.training import data as data_module

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    birds_batch = 20 * sum(3 * s * s * 4 for s in (64, 128, 256))  # 20.6 MB
    monkeypatch.setattr(data_module, "_shared_memory_free", lambda: 1 << 30)
    assert loader_workers(-1, gpu, batch_bytes=birds_batch) == 8
    monkeypatch.setattr(data_module, "_shared_memory_free", lambda: 200 << 20)
    with caplog.at_level("WARNING"):
        assert loader_workers(-1, gpu, batch_bytes=birds_batch) == 2
    assert "--shm-size" in caplog.text and "2 DataLoader workers instead of 8" in caplog.text
    monkeypatch.setattr(data_module, "_shared_memory_free", lambda: 64 << 20)  # a container's default
    assert loader_workers(-1, gpu, batch_bytes=birds_batch) == 0
    assert loader_workers(4, gpu, batch_bytes=birds_batch) == 4  # the user's number stays
    from attngan.config import check_preset

    with pytest.raises(ValueError, match="-1 for auto"):
        check_preset(apply_overrides(PRESETS["tiny"], ["data.workers=-2"]))


def test_a_run_from_before_the_auto_precision_default_resumes_with_the_preset_given(tmp_path, damsm_run):
    # Checkpoints written before gan_train.mixed_precision defaulted to "auto" hold "no"; the precision may
    # change on resume (the weights are float32 either way), unlike the settings that change the maths.
    first = run_gan(tmp_path, damsm_run, 2, "gan_train.mixed_precision=no", "gan_train.snapshot_every=100")
    again = run_gan(tmp_path, damsm_run, 3, resume=first.run_dir, preset=gan_preset("gan_train.snapshot_every=100"))
    assert again.step == 3 and again.run_dir == first.run_dir
    with pytest.raises(CheckpointError, match="gan_train.g_lr"):
        run_gan(tmp_path, damsm_run, 4, resume=first.run_dir, preset=gan_preset("gan_train.snapshot_every=100", "gan_train.g_lr=0.01"))


class _FailingDataset(torch.utils.data.Dataset):
    """A shapes dataset whose item ``bad`` cannot be read (as a missing image file)."""

    def __init__(self, inner, bad: int) -> None:
        self.inner, self.bad, self.vocab = inner, bad, inner.vocab

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int):
        from attngan.errors import DataError

        if index == self.bad:
            raise DataError(f"image {index} does not exist")
        return self.inner[index]


@pytest.mark.parametrize("kind", ["damsm", "gan"])
def test_a_data_error_in_a_loader_worker_leaves_no_worker_behind(tmp_path, damsm_run, kind):
    """The workers ignore SIGTERM (Ctrl-C is the main process's business), so a run that failed while they
    were alive used to hang at exit in multiprocessing's clean-up; they must be gone when the error arrives."""
    import multiprocessing

    from attngan.data.registry import build_dataset
    from attngan.errors import DataError
    from attngan.text import Vocabulary

    preset = gan_preset("data.workers=1")
    vocab = Vocabulary.load(damsm_run[0].run_dir / "model" / "vocab.json")
    data = _FailingDataset(build_dataset(preset.data, "train", [16, 32], vocab=vocab), bad=5)
    with pytest.raises(DataError, match="image 5 does not exist"):
        if kind == "damsm":
            train_damsm(preset, runs_dir=tmp_path, train_set=data, val_set=False, max_steps=8, progress=False, tensorboard=False)
        else:
            run_gan(tmp_path, damsm_run, 8, "data.workers=1", train_set=data)
    assert multiprocessing.active_children() == []


def test_thread_tuner_leaves_an_idle_machine_alone_and_drops_threads_under_contention():
    from attngan.training.cpu import ThreadTuner

    torch.set_num_threads(2)  # the fixture set 1; it restores its own value afterwards
    load = [0.0]  # cores busy with other work
    speed = {2: 0.15, 1: 0.2}  # seconds per step by thread count (idle: 2 threads faster)

    def run(tuner, steps):
        counts = []
        for _ in range(steps):
            tuner.step(speed[torch.get_num_threads()])
            counts.append(torch.get_num_threads())
        return counts

    idle = ThreadTuner(check_every=5, trial_steps=3, warmup=1, busy_elsewhere=lambda: load[0], cpus=2)
    assert set(run(idle, 60)) == {2}  # nothing tried: the same rounding as without the tuner
    busy = ThreadTuner(check_every=5, trial_steps=3, warmup=1, busy_elsewhere=lambda: load[0], cpus=2)
    load[0], speed[2] = 1.0, 0.55  # another process keeps a core busy: 2 spinning threads are slow
    counts = run(busy, 20)
    assert counts[-1] == 1 and counts.count(1) > 10  # tried 1 thread, found it faster, kept it
    load[0], speed[2] = 0.0, 0.15  # the other process ended: 2 threads are tried again and kept
    assert run(busy, 30)[-1] == 2
    # Under contention where 1 thread is not faster: back to 2 after the trial.
    speed[2], load[0] = 0.2, 1.0
    stay = ThreadTuner(check_every=5, trial_steps=3, warmup=1, busy_elsewhere=lambda: load[0], cpus=2)
    counts = run(stay, 12)
    assert 1 in counts and 2 in counts[counts.index(1) :]  # tried, not kept
    stay.restore()
    assert torch.get_num_threads() == 2
    assert not ThreadTuner(enabled=False).enabled


def test_damsm_words_num_sets_the_caption_length_of_pretraining(tmp_path, monkeypatch):
    """damsm_train.words_num (the original's coco DAMSM: 15 words, its GAN 12) cuts the DAMSM's captions;
    unset, data.words_num does."""
    import attngan.training.damsm as damsm_mod

    assert PRESETS["coco"].damsm_train.words_num == 15 and PRESETS["coco"].data.words_num == 12
    assert PRESETS["birds"].damsm_train.words_num is None  # cfg/DAMSM/bird.yml: 18, as the GAN
    built = []
    real = damsm_mod.build_dataset

    def recording(data_config, *args, **kwargs):
        built.append(data_config.words_num)
        return real(data_config, *args, **kwargs)

    monkeypatch.setattr(damsm_mod, "build_dataset", recording)
    for words, expected in ((None, 10), (4, 4)):
        built.clear()
        preset = apply_overrides(PRESETS["tiny"], ["data.num_images=16", f"damsm_train.words_num={words or 'null'}"])
        train_damsm(preset, runs_dir=tmp_path / str(words), max_steps=1, progress=False, tensorboard=False)
        assert built == [expected, expected]  # train and validation split
    with pytest.raises(ValueError, match="damsm_train.words_num"):
        check_preset(apply_overrides(PRESETS["tiny"], ["damsm_train.words_num=0"]))


@pytest.mark.parametrize("batch_stats", [False, True])
def test_damsm_backbone_batch_stats_lets_the_frozen_inception_statistics_drift(tmp_path, batch_stats):
    """The original pre-trained the DAMSM with the frozen Inception in train mode: its BatchNorm used batch
    statistics and moved its running statistics. damsm_train.backbone_batch_stats does the same (and so
    does not fold the BatchNorm); by default the statistics stay as loaded."""
    preset = apply_overrides(
        PRESETS["tiny"],
        [
            "image_encoder.backbone=inception",
            "image_encoder.input_size=299",
            "data.num_images=4",
            "damsm_train.batch_size=2",
            f"damsm_train.backbone_batch_stats={str(batch_stats).lower()}",
        ],
    )
    from attngan.nn import ImageEncoder

    torch.manual_seed(0)
    reference = ImageEncoder(preset.image_encoder, backbone_weights=None).state_dict()
    backbone = {k: v for k, v in reference.items() if not k.startswith("emb_")}
    result = train_damsm(
        preset, runs_dir=tmp_path, max_steps=1, backbone_weights=backbone, val_set=False, progress=False, tensorboard=False
    )
    saved = load_state(result.checkpoint, "damsm")["models"]["image_encoder"]
    key = "Mixed_6e.branch1x1.bn.running_mean"
    assert torch.equal(saved[key], reference[key]) is not batch_stats
    assert torch.equal(saved["Mixed_6e.branch1x1.conv.weight"], reference["Mixed_6e.branch1x1.conv.weight"])  # frozen


@pytest.mark.parametrize("distributed", [False, True])
def test_an_interrupt_saves_between_steps_only_when_every_process_can(tmp_path, distributed):
    """Ctrl-C between steps saves the state; in a distributed run only when all processes agreed to stop
    (StopAgreed): a second signal on one process must not start a collective that the others never join."""
    from attngan.training.outcomes import StopAgreed, interruption

    saved = []

    def snapshot():
        saved.append(1)
        return tmp_path / "state-00000007.pt"

    common = dict(step=7, distributed=distributed, snapshot=snapshot, run_dir=tmp_path, world_size=2 if distributed else 1)
    last = tmp_path / "state-00000005.pt"
    out = interruption(StopAgreed(), "AttnGAN training", "train", in_step=False, saved_step=5, last_checkpoint=last, **common)
    assert saved == [1] and out.checkpoint == tmp_path / "state-00000007.pt" and "saved the state of step 7" in out.message
    saved.clear()
    out = interruption(KeyboardInterrupt(), "AttnGAN training", "train", in_step=False, saved_step=5, last_checkpoint=last, **common)
    assert bool(saved) is not distributed
    if distributed:
        assert out.checkpoint == last and "step 7 was not saved" in out.message and "--resume" in out.message
    saved.clear()
    out = interruption(KeyboardInterrupt(), "AttnGAN training", "train", in_step=True, saved_step=5, last_checkpoint=None, **common)
    assert not saved and "unfinished step 8 was dropped" in out.message and "no checkpoint was written yet" in out.message


def test_peer_failure_is_recognised_only_for_collectives_of_a_distributed_run(tmp_path):
    from attngan.training.outcomes import PeerProcessError, peer_failure

    gloo = RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:16539: Connection reset by peer")
    failed = peer_failure(gloo, 9, tmp_path / "state-00000008.pt", "train", tmp_path, 2)
    assert isinstance(failed, PeerProcessError) and "during step 10" in str(failed)
    assert "state-00000008.pt is intact" in str(failed) and "torchrun --nproc_per_node=2" in str(failed)
    assert "(this one saw: Read error [127.0.0.1]:16539: Connection reset by peer)" in str(failed)  # no source path
    assert peer_failure(gloo, 9, None, "train", tmp_path, 1) is None  # one process: not a peer's failure
    assert peer_failure(RuntimeError("CUDA out of memory"), 9, None, "train", tmp_path, 2) is None


def test_reshard_continues_a_checkpoint_of_another_number_of_processes(tmp_path):
    """A state of 2 processes x 8 images is refused by 1 process unless reshard=True; then the weights,
    optimizer state and step count carry over, and the epoch goes on after the 16 images already used."""
    from attngan.errors import CheckpointError
    from attngan.training.state import restore_position

    preset = apply_overrides(PRESETS["tiny"], ["data.num_images=64", "damsm_train.batch_size=8"])
    first = train_damsm(preset, runs_dir=tmp_path, max_steps=2, val_set=False, progress=False, tensorboard=False)
    state = torch.load(first.checkpoint, weights_only=True)
    assert state["step"] == 2 and state["batch_in_epoch"] == 2 and len(state["rng"]) == 1
    # As if written by 2 processes with 4 images each: 2 steps of 8 images.
    state["rng"] = state["rng"] * 2
    state["config"]["damsm_train"]["batch_size"] = 4
    torch.save(state, first.checkpoint)
    weights = state["models"]["text_encoder"]

    with pytest.raises(CheckpointError, match="written by 2 process.*add --reshard"):
        train_damsm(None, resume=first.run_dir, max_steps=3, val_set=False, progress=False, tensorboard=False)
    from attngan.training.state import check_resume_config

    with pytest.raises(CheckpointError, match="damsm_train.batch_size.*may change with --reshard"):
        check_resume_config(preset, apply_overrides(preset, ["damsm_train.batch_size=4"]), "state.pt")
    seen = []  # the given batch size (8) differs from the checkpoint's (4): reshard allows that too
    result = train_damsm(
        preset, resume=first.run_dir, reshard=True, max_steps=3, val_set=False, progress=False, tensorboard=False,
        callback=lambda info: seen.append(info.step),
    )  # fmt: skip
    assert seen == [3] and result.step == 3
    after = load_state(result.checkpoint, "damsm")
    assert len(after["rng"]) == 1 and after["batch_in_epoch"] == 3  # 2 batches x 2 processes x 4 = 16 images = 2 of 8, + 1
    assert after["config"]["damsm_train"]["batch_size"] == 8
    assert any(not torch.equal(after["models"]["text_encoder"][k], v) for k, v in weights.items())  # trained on
    # The position: the images already used in the epoch, in batches of the new layout.
    assert restore_position(state | {"batch_in_epoch": 3}, 0, 1, 0, 8)[1:] == (state["epoch"], 3)  # 24 images
    assert restore_position(state | {"batch_in_epoch": 3}, 0, 4, 0, 4)[1:] == (state["epoch"], 1)  # 24 // 16


def test_a_full_disk_in_tensorboards_writer_thread_is_one_log_line(tmp_path, caplog):
    """TensorBoard writes from its own thread; ENOSPC there was printed as that thread's traceback."""
    import threading
    import types

    pytest.importorskip("tensorboard")
    from tensorboard.summary.writer.event_file_writer import _AsyncWriterThread

    from attngan.training.stats import StatsSink

    before = threading.excepthook
    sink = StatsSink(tmp_path, 10, progress=False, tensorboard=True, name="gan")
    assert threading.excepthook != before
    seen = []
    sink._previous_hook = seen.append
    full = types.SimpleNamespace(exc_value=OSError(28, "No space left on device"), thread=object.__new__(_AsyncWriterThread))
    with caplog.at_level("WARNING", logger="attngan"):
        threading.excepthook(full)
    assert seen == [] and "TensorBoard events not written: [Errno 28] No space left on device" in caplog.text
    other = types.SimpleNamespace(exc_value=ValueError("a bug"), thread=threading.current_thread())
    threading.excepthook(other)
    assert seen == [other]  # anything else goes to the previous hook
    sink._previous_hook = before
    sink.close()
    assert threading.excepthook == before


def test_a_run_folder_is_written_by_one_process_and_cleaned_of_a_killed_ones_leftovers(tmp_path):
    """A second resume of a running run is refused (it would interleave logs and delete the other's
    checkpoints); a resume removes the temporary files of a process that was killed while writing."""
    from attngan.atomic import FolderLock
    from attngan.errors import UserError

    preset = apply_overrides(PRESETS["tiny"], ["data.num_images=32"])
    first = train_damsm(preset, runs_dir=tmp_path, max_steps=2, val_set=False, progress=False, tensorboard=False)
    run = first.run_dir
    with FolderLock(run, "run folder"), pytest.raises(UserError, match="another attngan process .* run folder"):
        train_damsm(None, resume=run, max_steps=3, val_set=False, progress=False, tensorboard=False)
    assert load_state(run, "damsm")["step"] == 2  # untouched

    # What a SIGKILL leaves: an unfinished state file, an unfinished export, model/ between its two renames.
    (run / "checkpoints" / ".state-00000003.pt.x1y2.tmp").write_bytes(b"half")
    (run / ".model.tmp-999").mkdir()
    (run / "model").rename(run / ".model.old-999")
    train_damsm(None, resume=run, max_steps=3, val_set=False, progress=False, tensorboard=False)
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []
    assert not list((run / "checkpoints").glob(".*")) and (run / "model" / "vocab.json").is_file()


def test_an_interrupt_while_setting_up_leaves_no_run_folder(tmp_path, monkeypatch):
    import attngan.training.damsm as damsm_mod

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(damsm_mod, "write_run_config", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_damsm(apply_overrides(PRESETS["tiny"], ["data.num_images=32"]), runs_dir=tmp_path, max_steps=2,
                    val_set=False, progress=False, tensorboard=False)  # fmt: skip
    assert list(tmp_path.iterdir()) == []


def test_a_second_interrupt_while_saving_keeps_the_last_complete_checkpoint(tmp_path, monkeypatch):
    """Ctrl-C twice while a checkpoint is written: the write is dropped, not started over (which took as long
    again), and the message names the newest complete checkpoint."""
    import attngan.training.damsm as damsm_mod

    real, calls = damsm_mod.save_state, []

    def slow_save(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the second signal, during the write of step 4
        return real(*args, **kwargs)

    monkeypatch.setattr(damsm_mod, "save_state", slow_save)
    preset = apply_overrides(PRESETS["tiny"], ["data.num_images=32", "damsm_train.snapshot_every=2"])
    with pytest.raises(TrainingInterrupted) as exc:
        train_damsm(preset, runs_dir=tmp_path, max_steps=6, val_set=False, progress=False, tensorboard=False)
    assert len(calls) == 2  # not retried by the interrupt handler
    assert "stopped while saving step 4; the last complete checkpoint is" in str(exc.value)
    assert exc.value.checkpoint.name == "state-00000002.pt" and "--resume" in str(exc.value)
