"""`attngan pretrain-damsm`, `attngan train`, `attngan demo`: help, dry runs, errors, a tiny end-to-end run."""

from __future__ import annotations

import importlib.util
import json
import shlex

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from attngan.cli import cli

COMMANDS = ("pretrain-damsm", "train", "demo")


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def invoke(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def dry_run_config(*args: str) -> dict:
    result = invoke(*args, "--dry-run")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_documents_every_option(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0
    cmd = cli.get_command(None, command)
    for param in cmd.params:
        if isinstance(param, __import__("click").Option):
            assert param.help, f"{command} {param.opts} has no help text"
            assert any(opt in result.output for opt in param.opts)
    assert "Example" in result.output


def test_dry_run_prints_the_resolved_config_with_overrides(tmp_path):
    yaml_file = tmp_path / "cfg.yaml"
    yaml_file.write_text("generator:\n  gf_dim: 6\n  res_blocks: 2\ndamsm_train:\n  betas: [0.4, 0.9]\n")
    config = dry_run_config(
        "pretrain-damsm", "--preset", "tiny", "--config", yaml_file,
        "--set", "generator.gf_dim=8", "--set", "data.num_images=64", "--max-steps", "7",
    )  # fmt: skip
    preset = config["preset"]
    assert preset["generator"]["gf_dim"] == 8  # --set wins over --config
    assert preset["generator"]["res_blocks"] == 2  # from --config
    assert preset["damsm_train"]["betas"] == [0.4, 0.9]
    assert preset["data"]["num_images"] == 64
    assert preset["damsm_train"]["max_steps"] == 7
    assert preset["text_encoder"]["word_dim"] == 16  # the rest is the tiny preset


def test_train_dry_run_sets_dataset_options(tmp_path):
    config = dry_run_config("train", "--damsm", tmp_path, "--dataset", "folder", "--data-dir", tmp_path / "imgs")
    assert config["preset"]["data"]["dataset"] == "folder"
    assert config["preset"]["data"]["data_dir"] == str(tmp_path / "imgs")
    assert config["preset"]["generator"]["base_size"] == 16  # the default preset is shapes
    # What the auto settings become here (no GPU in the tests' world unless there is one).
    here = config["on_this_machine"]
    if not torch.cuda.is_available():
        from attngan.training.devices import cpu_has_amx_bf16

        precision = "bf16" if cpu_has_amx_bf16() else "no"  # the shapes preset's mixed_precision=fast
        assert here == {"device": "cpu", "loader_workers": 0, "mixed_precision": precision, "batch_size_per_process": 32}
    elsewhere = dry_run_config("train", "--damsm", tmp_path, "--device", "cuda")  # prepared for a GPU machine
    assert elsewhere["device"] == "cuda" and "not available here" in elsewhere["on_this_machine"]["device"]
    pinned = dry_run_config("train", "--damsm", tmp_path, "--set", "data.workers=3", "--set", "gan_train.batch_size=4")
    assert pinned["on_this_machine"]["loader_workers"] == 3 and pinned["on_this_machine"]["batch_size_per_process"] == 4


def test_dataset_birds_or_coco_brings_its_preset_or_its_caption_count(tmp_path):
    # No --preset: the dataset's own (the original release's settings).
    preset = dry_run_config("pretrain-damsm", "--dataset", "birds", "--data-dir", tmp_path)["preset"]
    assert (preset["data"]["captions_per_image"], preset["data"]["words_num"]) == (10, 18)
    # Another preset: its model settings, but the layout's caption count (10 lines per birds text file).
    preset = dry_run_config("train", "--damsm", tmp_path, "--preset", "tiny", "--dataset", "birds")["preset"]
    assert (preset["data"]["captions_per_image"], preset["data"]["words_num"]) == (10, 10)
    preset = dry_run_config("train", "--damsm", tmp_path, "--preset", "birds", "--dataset", "coco")["preset"]
    assert (preset["data"]["captions_per_image"], preset["data"]["words_num"]) == (5, 18)
    # --set still wins.
    preset = dry_run_config(
        "pretrain-damsm", "--preset", "tiny", "--dataset", "coco", "--set", "data.captions_per_image=7"
    )["preset"]
    assert preset["data"]["captions_per_image"] == 7


@pytest.mark.parametrize(
    "bad, words",
    [
        ("generator.nope=1", ["generator.nope", "gf_dim"]),
        ("generator.gf_dim=abc", ["generator.gf_dim", "abc"]),
        ("nonsense", ["nonsense"]),
        ("gan_train.batch_size=0", ["gan_train.batch_size must be >= 2"]),
        ("gan_train.g_lr=-1", ["gan_train.g_lr must be > 0"]),
        ("gan_train.betas=0.5", ["gan_train.betas must be 2 numbers"]),
        ("generator.base_size=17", ["base_size must be 4 * 2**k"]),
        ("data.truncate=middle", ["data.truncate must be 'first' or 'random'"]),
    ],
)
def test_bad_set_is_a_one_line_error(bad, words):
    result = CliRunner().invoke(cli, ["pretrain-damsm", "--preset", "tiny", "--set", bad, "-n"])
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.output
    assert all(w in lines[0] for w in words)


@pytest.mark.parametrize(
    "yaml_text, words",
    [
        ("generator: 5\n", ["generator must map settings"]),
        ("generator: {gf_dim: 8.5}\n", ["generator.gf_dim must be an int, got 8.5"]),
        ("gan_train: {batch_size: null}\n", ["gan_train.batch_size needs a value"]),
        ("gan_train: {betas: [0.5]}\n", ["gan_train.betas must be 2 numbers"]),
    ],
)
def test_bad_yaml_values_are_one_line_errors(tmp_path, yaml_text, words):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    result = CliRunner().invoke(cli, ["train", "--preset", "tiny", "--damsm", str(tmp_path), "--config", str(path), "-n"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code != 0 and len(lines) == 1 and lines[0].startswith("Error: bad setting"), result.output
    assert all(w in lines[0] for w in words)


def test_yaml_numbers_take_the_setting_type(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("gan_train: {g_lr: 1, betas: [0, 0.9], max_steps: null}\n")
    preset = dry_run_config("train", "--preset", "tiny", "--damsm", tmp_path, "--config", path)["preset"]
    assert preset["gan_train"]["g_lr"] == 1.0 and preset["gan_train"]["betas"] == [0.0, 0.9]
    assert preset["gan_train"]["max_steps"] is None


def test_train_without_encoders_says_what_to_pass():
    result = CliRunner().invoke(cli, ["train", "--preset", "tiny"])
    assert result.exit_code == 2 and "--damsm" in result.output


def test_tiny_end_to_end_pretrain_then_train_then_resume(tmp_path, caplog):
    runs = tmp_path / "runs"
    common = ["--preset", "tiny", "--runs-dir", runs, "--no-progress", "--set", "data.num_images=32"]
    result = invoke("pretrain-damsm", *common, "--max-steps", "4")
    assert result.exit_code == 0, result.output
    damsm_run = runs / "00000-shapes-damsm"
    assert (damsm_run / "model" / "text_encoder" / "model.safetensors").is_file()
    assert f"next: attngan train --damsm {damsm_run} --preset tiny" in result.output
    result = invoke("pretrain-damsm", "--resume", damsm_run, "--max-steps", "5", "--no-progress")
    assert result.exit_code == 0, result.output
    assert f"next: attngan train --damsm {damsm_run} --preset tiny" in result.output  # the run's own preset

    result = invoke("train", *common, "--damsm", damsm_run, "--max-steps", "3")
    assert result.exit_code == 0, result.output
    gan_run = runs / "00001-shapes-attngan"
    assert (gan_run / "model" / "generator" / "model.safetensors").is_file()
    assert json.loads((gan_run / "config.json").read_text())["preset"]["gan_train"]["max_steps"] == 3
    first_caption = (gan_run / "samples" / "captions.txt").read_text().splitlines()[0]
    hint = next(line for line in result.output.splitlines() if line.startswith("next: "))
    assert shlex.split(hint[6:]) == ["attngan", "sample", "--checkpoint", str(gan_run / "model"), "--out", "samples", first_caption]

    # Resuming takes the checkpoint's settings; a longer run is the only change.
    config = dry_run_config("train", "--resume", gan_run, "--max-steps", "5")
    assert config["preset"]["data"]["num_images"] == 32 and config["preset"]["gan_train"]["max_steps"] == 5
    result = invoke("train", "--resume", gan_run, "--max-steps", "5", "--no-progress")
    assert result.exit_code == 0, result.output
    last = json.loads((gan_run / "stats.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 5
    # Resuming a run that is done says so (not "steps 6 to 5") and changes nothing.
    state = gan_run / "checkpoints" / "state-00000005.pt"
    before = state.read_bytes()
    caplog.clear()
    with caplog.at_level("INFO", logger="attngan"):
        result = invoke("train", "--resume", gan_run, "--no-progress")
    assert result.exit_code == 0, result.output
    assert "already at step 5 of 5, nothing to train; to go on, give a larger --max-steps" in caplog.text
    assert "steps 6 to 5" not in caplog.text and state.read_bytes() == before

    # Another generator width cannot continue this run: the message names the setting.
    result = CliRunner().invoke(cli, ["train", "--resume", gan_run, "--set", "generator.gf_dim=8", "--no-progress"])
    assert result.exit_code == 2 and "generator.gf_dim" in result.output


def test_demo_dry_run_shows_the_shapes_preset_and_the_time_plan():
    config = dry_run_config("demo", "--out", "nowhere", "--minutes", "10", "--seed", "3", "--set", "gan_loss.damsm_lambda=7", "--json")
    assert config["preset"]["data"]["dataset"] == "shapes"
    assert config["preset"]["data"]["seed"] == 3 and config["preset"]["gan_train"]["seed"] == 3
    assert config["preset"]["gan_loss"]["damsm_lambda"] == 7
    plan = config["plan"]
    # --minutes is the training time; the reserves for evaluation and set-up come on top, within 11 minutes.
    training = plan["total_seconds"] - plan["eval_seconds"] - 2 * plan["overhead_seconds"]
    assert training == 600 and 600 < plan["total_seconds"] <= 660 and 0 < plan["damsm_share"] < 1


def test_demo_plan_leaves_the_budget_to_training():
    """The 10-minute demo measured 2.5 s of evaluation and 1-2 s per phase of set-up and export; its reserves
    are a few times that, not a tenth of the budget (36 s + 2 x 10 s before), and still enough for it."""
    from attngan.training.demo import DemoPlan

    plan = DemoPlan.from_minutes(10)
    reserved = plan.eval_seconds + 2 * plan.overhead_seconds
    assert 5.0 <= plan.eval_seconds and 1.5 <= plan.overhead_seconds
    assert reserved <= 0.05 * plan.total_seconds and plan.training_seconds == pytest.approx(600)
    short = DemoPlan.from_minutes(0.5)  # the shortest --minutes: its half minute of training, within a minute
    assert short.training_seconds == pytest.approx(30) and short.total_seconds < 60


def test_demo_writes_figures_and_metrics_with_chance_levels(tmp_path):
    from attngan.config import PRESETS, apply_overrides
    from attngan.metrics.attributes import AttributeTrainConfig, train_attribute_classifier
    from attngan.training.demo import DemoPlan, demo_preset, format_summary, run_demo

    tiny = PRESETS["tiny"]
    preset = apply_overrides(
        demo_preset(0),
        {"text_encoder": tiny.text_encoder, "image_encoder": tiny.image_encoder, "generator": tiny.generator,
         "discriminator_df_dim": 4, "data.num_images": 64, "damsm_train.max_steps": 3, "damsm_train.batch_size": 16,
         "gan_train.max_steps": 3, "gan_train.batch_size": 8},
    )  # fmt: skip
    classifier, _ = train_attribute_classifier(32, AttributeTrainConfig(width=4, steps=2, batch_size=8, heldout=8))
    report = run_demo(
        tmp_path / "demo", preset, DemoPlan(total_seconds=120), num_eval=24, progress=False, classifier=classifier
    )
    out = tmp_path / "demo"
    assert (out / "samples.png").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    if importlib.util.find_spec("attngan.viz") is not None:
        assert "attention.png" in metrics["figures"] and (out / "attention.png").is_file()
    assert metrics["steps"] == {"damsm": 3, "gan": 3}
    assert len(metrics["warnings"]) == 2 and "ran 3 steps, fewer than" in metrics["warnings"][0]
    assert "real_vs_generated.png" in metrics["figures"] and (out / "real_vs_generated.png").is_file()
    assert Image.open(out / "samples.png").width >= 4 * 256  # 4 columns of images enlarged to 256 px
    rows = {r["metric"]: r for r in metrics["summary"]}
    assert rows["color accuracy"]["chance"] == pytest.approx(1 / 8)
    assert rows["position accuracy"]["chance"] == pytest.approx(1 / 9)
    assert rows["R-precision (%)"]["chance"] == pytest.approx(100 / 24)
    grounding = rows.pop("attention grounding")  # the generator's own maps: no real-image figure
    assert 0 <= grounding["generated"] <= 1 and 0 < grounding["chance"] < 0.5 and grounding["real"] is None
    assert metrics["metrics"]["attention_grounding"]["n_words"] > 0
    for row in rows.values():
        assert row["generated"] is not None and row["real"] is not None
    table = format_summary(report)
    assert "color accuracy" in table and "R-precision" in table
    assert table.splitlines()[-1].startswith("Warning: AttnGAN training ran 3 steps")
    # The precision the GAN loop recorded in its run folder (the preset's "fast": bf16 only on a CPU with AMX).
    from attngan.training.devices import cpu_has_amx_bf16

    assert metrics["gan_precision"] == ("bf16 autocast" if cpu_has_amx_bf16() else "float32")
    assert f"AttnGAN 3 steps ({metrics['gan_precision']})" in table


def test_a_path_the_file_system_refuses_is_one_line(tmp_path, capsys):
    from attngan.cli import main

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(SystemExit) as info:
        main(["pretrain-damsm", "--preset", "tiny", "--runs-dir", str(blocker / "runs"), "--max-steps", "1", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 1 and "Traceback" not in "\n".join(err)
    assert err[-1].startswith("Error: Not a directory") and str(blocker) in err[-1] and "choose another path" in err[-1]


def test_command_list_shows_whole_summaries():
    result = invoke("--help")
    assert "(Eq. 7-14)" in result.output and "(Eq. 1-5)" in result.output


def test_a_worker_killed_by_a_full_shared_memory_gets_one_line_with_what_to_do(monkeypatch, capsys):
    import attngan.cli as cli_module

    def killed(**kwargs):
        raise RuntimeError(
            "DataLoader worker (pid 4242) is killed by signal: Bus error. It is possible that dataloader's "
            "workers are out of shared memory. Please try to raise your shared memory limit."
        )

    monkeypatch.setattr(cli_module.cli, "main", killed)
    with pytest.raises(SystemExit) as exit_info:
        cli_module.main(["train"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and "Traceback" not in err
    assert "pid 4242" in err and "--shm-size" in err and "data.workers=0" in err and "--resume" in err

    def other(**kwargs):
        raise RuntimeError("shape mismatch in something else")

    monkeypatch.setattr(cli_module.cli, "main", other)
    with pytest.raises(RuntimeError, match="shape mismatch"):  # a bug keeps its traceback
        cli_module.main(["train"])


@pytest.mark.parametrize("command", ["sample", "evaluate", "demo", "convert", "data", "serve"])
def test_commands_of_one_process_refuse_torchrun(command, monkeypatch, capsys):
    """Under torchrun every process would run the whole command on the same outputs."""
    from attngan.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(SystemExit) as exc:
        main([command, "--out", "x"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("Error:") == 1
    assert f"'attngan {command}' runs in one process; start it without torchrun" in err


def test_under_torchrun_only_rank_0_reports_a_user_error_at_once(monkeypatch, capsys, request):
    """Every rank runs the same checks: rank 0 prints; another rank waits (torchrun stops it meanwhile) and
    prints only an error of its own, with its rank."""
    import logging

    import attngan.cli as cli_mod
    from attngan.cli import main

    waited = []
    monkeypatch.setattr(cli_mod.time, "sleep", waited.append)
    logger = logging.getLogger("attngan")  # rank 1 quiets it: restored after the test
    request.addfinalizer(lambda level=logger.level: logger.setLevel(level))
    monkeypatch.setenv("WORLD_SIZE", "2")
    args = ["train", "--preset", "tiny", "--device", "cpu", "--set", "gan_train.batch_size=1", "--dry-run"]
    for rank, prefix in (("0", "Error: "), ("1", "[rank 1] Error: ")):
        monkeypatch.setenv("RANK", rank)
        with pytest.raises(SystemExit) as exc:
            main(args)
        err = capsys.readouterr().err
        assert exc.value.code == 2 and err.startswith(prefix) and "gan_train.batch_size" in err
    assert waited == [3.0]
    # --dry-run prints the settings once, from rank 0.
    monkeypatch.setenv("RANK", "1")
    main(args[:-3] + ["--dry-run"])
    assert capsys.readouterr().out == ""
    monkeypatch.setenv("RANK", "0")
    main(args[:-3] + ["--dry-run"])
    assert json.loads(capsys.readouterr().out)["preset"]["gan_train"]["batch_size"] == 8


@pytest.mark.parametrize("command", ["train", "pretrain-damsm"])
def test_reshard_goes_with_resume(command, capsys):
    from attngan.cli import main

    with pytest.raises(SystemExit) as exc:
        main([command, "--preset", "tiny", "--device", "cpu", "--reshard"] + (["--damsm", "."] if command == "train" else []))
    assert exc.value.code == 2 and "--reshard goes with --resume RUN" in capsys.readouterr().err


def test_an_interrupted_demo_says_it_is_not_continued_and_where_its_runs_are(tmp_path, monkeypatch):
    import attngan.training.demo as demo_mod
    from attngan.training import TrainingInterrupted
    from attngan.training.demo import DemoPlan, demo_preset, run_demo

    def interrupted(*args, **kwargs):
        raise TrainingInterrupted("DAMSM pre-training interrupted: ...; continue with: attngan pretrain-damsm --resume X",
                                  None, None, 3)  # fmt: skip

    monkeypatch.setattr(demo_mod, "train_damsm", interrupted)
    with pytest.raises(TrainingInterrupted) as exc:
        run_demo(tmp_path / "demo", demo_preset(0), DemoPlan(total_seconds=120), progress=False, classifier=object())
    message = str(exc.value)
    assert "demo interrupted during DAMSM pre-training: a demo is not continued" in message
    assert "new --out folder" in message and str(tmp_path / "demo" / "runs") in message


def test_cli_logging_keeps_torchs_info_output_off(monkeypatch, request):
    """The CLI logs INFO; torch's own INFO lines (the FakeTensor cache statistics that torch prints at exit
    after an interrupted import) must not come with it."""
    import logging

    from attngan.cli.options import setup_logging

    torch_logger = logging.getLogger("torch")
    request.addfinalizer(lambda level=torch_logger.level: torch_logger.setLevel(level))
    torch_logger.setLevel(logging.NOTSET)
    setup_logging()
    assert torch_logger.level == logging.WARNING
    assert not logging.getLogger("torch._subclasses.fake_tensor").isEnabledFor(logging.INFO)


def test_a_second_demo_into_the_same_folder_is_refused(tmp_path):
    from attngan.atomic import FolderLock
    from attngan.errors import UserError
    from attngan.training.demo import run_demo

    with FolderLock(tmp_path / "demo", "demo folder"), pytest.raises(UserError, match="another attngan process"):
        run_demo(tmp_path / "demo", classifier=object(), progress=False)


def test_a_signal_while_an_error_is_reported_keeps_the_error(capsys, monkeypatch):
    """torchrun stops the other processes with SIGTERM when one fails; landing while a process reports
    that another one ended, the signal must not replace that message with 'Aborted.'."""
    import attngan.cli as cli_mod
    from attngan.cli import main
    from attngan.training.outcomes import PeerProcessError

    def failing(*args, **kwargs):
        try:
            raise PeerProcessError("another process of this run ended during step 11; continue with: torchrun ...")
        finally:
            raise KeyboardInterrupt  # the SIGTERM, during clean-up

    monkeypatch.setattr(cli_mod.cli, "main", failing)
    with pytest.raises(SystemExit) as exc:
        main(["train"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("Error: another process of this run ended during step 11")


def test_a_second_signal_while_training_reports_its_stop_keeps_that_message(capsys, monkeypatch):
    import signal

    import attngan.cli as cli_mod
    from attngan.cli import main
    from attngan.training import TrainingInterrupted

    def stopping(*args, **kwargs):
        try:
            raise TrainingInterrupted("AttnGAN training interrupted: saved the state of step 157 to X; continue with: "
                                      "attngan train --resume R", None, None, 157, signum=signal.SIGTERM)  # fmt: skip
        finally:
            raise KeyboardInterrupt  # the second signal, while the first one's message is on its way

    monkeypatch.setattr(cli_mod.cli, "main", stopping)
    with pytest.raises(SystemExit) as exc:
        main(["train"])
    assert exc.value.code == 143 and "saved the state of step 157" in capsys.readouterr().err


def test_training_stopped_by_sigterm_exits_143():
    import signal

    from attngan.cli.train import _run
    from attngan.training import TrainingInterrupted

    def stopped():
        raise TrainingInterrupted("interrupted", None, None, 3, signum=signal.SIGTERM)

    with pytest.raises(SystemExit) as exc:
        _run(stopped, tune_malloc=False)
    assert exc.value.code == 143


def test_dry_run_of_a_resume_refuses_what_the_run_would(tmp_path, capsys):
    from attngan.cli import main
    from attngan.config import PRESETS, apply_overrides
    from attngan.training import train_damsm

    run = train_damsm(apply_overrides(PRESETS["tiny"], ["data.num_images=32"]), runs_dir=tmp_path, max_steps=2,
                      val_set=False, progress=False, tensorboard=False).run_dir  # fmt: skip
    with pytest.raises(SystemExit) as exc:
        main(["pretrain-damsm", "--resume", str(run), "--set", "damsm_train.words_num=7", "--dry-run"])
    assert exc.value.code == 2 and "differs in: damsm_train.words_num" in capsys.readouterr().err
    main(["pretrain-damsm", "--resume", str(run), "--set", "damsm_train.max_steps=9", "--dry-run"])
    shown = json.loads(capsys.readouterr().out)
    assert shown["reshard"] is False and shown["preset"]["damsm_train"]["max_steps"] == 9
