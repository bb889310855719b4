"""``attngan pretrain-damsm``, ``attngan train`` and ``attngan demo``: thin adapters over attngan.training.

They parse and validate options, build the resolved preset (``--preset``, then ``--config`` YAML, then
``--set`` overrides, then the dedicated options), print it under ``--dry-run``, and call the library.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..config import PRESETS, Preset, apply_overrides, check_preset, to_dict
from ..errors import UserError, user_message
from ..text import Vocabulary
from .options import (
    PathType,
    UserFailure,
    device_option,
    is_main_process,
    option_group,
    progress_option,
    setup_logging,
)

_PATH = PathType(path_type=Path)
_EXISTING = PathType(exists=True, path_type=Path)
_FILE = PathType(exists=True, dir_okay=False, path_type=Path)
DATASETS = ("birds", "coco", "folder", "shapes")


def _yaml_overrides(path: Path) -> dict[str, Any]:
    """``section: {key: value}`` (and top-level ``description``) from a YAML file, as dotted overrides."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise UserFailure(f"--config {path} is not a UTF-8 text file; give a YAML file") from None
    except (OSError, yaml.YAMLError) as exc:
        raise UserFailure(f"--config {path} is not readable YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(data, dict):
        raise UserFailure(f"--config {path} must map sections to settings, e.g. 'generator: {{gf_dim: 8}}'")
    out: dict[str, Any] = {}
    for section, values in data.items():
        if isinstance(values, dict):
            for key, value in values.items():
                out[f"{section}.{key}"] = tuple(value) if isinstance(value, list) else value
        else:
            out[str(section)] = values
    return out


def resolve_preset(
    base: Preset,
    config_file: Path | None,
    sets: tuple[str, ...],
    extra: dict[str, Any],
) -> Preset:
    """base -> YAML file -> ``--set`` items -> dedicated options; a bad setting is a one-line usage error."""
    try:
        preset = base
        if config_file is not None:
            preset = apply_overrides(preset, _yaml_overrides(config_file))
        if sets:
            preset = apply_overrides(preset, list(sets))
        extra = {k: v for k, v in extra.items() if v is not None}
        if extra:
            preset = apply_overrides(preset, extra)
        check_preset(preset)
    except (ValueError, TypeError) as exc:
        raise UserFailure(f"bad setting: {exc}") from exc
    return preset


def _base_preset(name: str | None, resume: Path | None, kind: str, dataset: str | None = None) -> Preset | None:
    """The named preset; when resuming without one, the checkpoint's; else the preset of ``dataset``
    (birds, coco); otherwise ``shapes``.

    With another preset than the dataset's, an original layout's caption count per image (10 for the
    birds, 5 for COCO: how many lines of each text file are read) comes from the dataset's preset;
    ``--config`` and ``--set`` still override it.
    """
    if name is not None:
        base = PRESETS[name]
    elif resume is not None:
        from ..training.state import load_state, preset_from_state

        return preset_from_state(load_state(resume, kind))
    else:
        base = PRESETS[dataset] if dataset in ("birds", "coco") else PRESETS["shapes"]
    if dataset in ("birds", "coco") and base.data.dataset != dataset:
        base = apply_overrides(base, {"data.captions_per_image": PRESETS[dataset].data.captions_per_image})
    return base


def _training_preset(
    kind: str, preset: str | None, config_file: Path | None, sets: tuple[str, ...], dataset: str | None,
    data_dir: Path | None, resume: Path | None, reshard: bool, max_steps: int | None,
) -> Preset:  # fmt: skip
    """The resolved preset of ``pretrain-damsm`` (``kind`` "damsm") or ``train`` ("gan"): the base preset
    (:func:`_base_preset`), then --config, --set and the dedicated options."""
    if reshard and resume is None:
        raise UserFailure("--reshard goes with --resume RUN (it continues a checkpoint of another number of processes)")
    try:
        base = _base_preset(preset, resume, kind, dataset)
    except UserError as exc:
        raise UserFailure(user_message(exc)) from None
    data_dir_setting = str(data_dir.resolve()) if data_dir else None
    extra = {"data.dataset": dataset, "data.data_dir": data_dir_setting, f"{kind}_train.max_steps": max_steps}
    return resolve_preset(base, config_file, sets, extra)


def _check_resume(resume: Path | None, resolved: Preset, kind: str, reshard: bool, settings: bool) -> None:
    """For --dry-run: refuse now what the run would refuse when it starts (another process count without
    --reshard; with ``settings``, a changed setting that a resumed run may not change; with an explicit
    --preset the run first fills settings in from its encoders, so that check is left to the run)."""
    if resume is None:
        return
    from ..training.encoders import resolve_vocab_size
    from ..training.state import check_resumable, check_resume_config, load_state, preset_from_state

    try:
        state = load_state(resume, kind)
        check_resumable(state, int(os.environ.get("WORLD_SIZE", "1") or 1), reshard)
        if not settings:
            return
        saved = preset_from_state(state)
        given = resolve_vocab_size(resolved, Vocabulary(state["vocab"])) if resolved.text_encoder.vocab_size == 0 else resolved
        check_resume_config(saved, given, state["path"], reshard)
    except UserError as exc:
        raise UserFailure(user_message(exc)) from None


def _example_caption(run_dir: Path) -> str:
    """A caption the model knows: the first of the run's sample grid, else one of the shapes dataset."""
    try:
        first = (Path(run_dir) / "samples" / "captions.txt").read_text(encoding="utf-8").splitlines()[0]
    except (OSError, IndexError):
        first = ""
    return first or "a small red circle at the top left"


def _next_commands(checkpoint: Path, run_dir: Path, dataset: str) -> list[str]:
    """``next: ...`` lines: draw from the model, measure it, serve it."""
    ckpt = str(checkpoint)
    metrics = ["--metrics", "r_precision,attributes"] if dataset == "shapes" else []  # no Inception weights needed
    commands = [
        ["attngan", "sample", "--checkpoint", ckpt, "--out", "samples", _example_caption(run_dir)],
        ["attngan", "evaluate", "--checkpoint", ckpt, "--n-images", "2000", *metrics],
        ["attngan", "serve", "--checkpoint", ckpt],
    ]
    return ["next: " + shlex.join(c) for c in commands]


def _demo_out_problem(out: Path) -> str | None:
    """Why the demo could not write ``out`` (None if it can): it must be a new or empty, writable folder."""
    if out.exists():
        if not out.is_dir():
            return f"--out {out} is a file; choose a new folder for the demo"
        if any(out.iterdir()):
            return f"--out {out} is not empty; choose a new folder for the demo"
        parent = out
    else:
        parent = next(p for p in out.absolute().parents if p.exists())
        if not parent.is_dir():
            return f"--out {out} cannot be created: {parent} is a file"
    try:  # a folder made and removed again: the real test of permissions, read-only mounts and the like
        os.rmdir(tempfile.mkdtemp(prefix=".attngan-check-", dir=parent))
    except OSError as exc:
        return f"--out {out} cannot be written ({exc.strerror} in {parent}); choose another folder"
    return None


def _describe_demo_plan(preset: Preset, plan: Any, out: Path, device: str, sets: tuple[str, ...]) -> str:
    """The demo's time plan and main settings in sentences (``--dry-run``)."""
    from ..training.demo import MIN_STEPS

    here = _on_this_machine(preset, device, "demo")
    training = plan.training_seconds
    damsm_s, gan_s = plan.damsm_share * training, (1 - plan.damsm_share) * training
    d, g = preset.damsm_train, preset.gan_train
    lines = [
        f"attngan demo: {training / 60:g} minutes of training, {plan.total_seconds / 60:.1f} minutes in all on {here['device']}, "
        f"writing into {out} "
        f"({'an empty folder' if out.exists() else 'created'})",
        f"  1. DAMSM pre-training: up to {damsm_s:.0f} s or {d.max_steps} steps (batch {d.batch_size})",
        f"  2. AttnGAN training: up to {gan_s:.0f} s (what DAMSM leaves) or {g.max_steps} steps (batch {g.batch_size}, "
        f"{len(preset.generator.image_sizes)} stages up to {preset.generator.image_sizes[-1]} px, "
        f"{'bf16 autocast' if here.get('mixed_precision') == 'bf16' else 'float32'})",
        f"  3. samples, figures and metrics: {plan.eval_seconds:.0f} s reserved; {plan.overhead_seconds:.0f} s per "
        "training phase for data and export",
        f"learning needs about {MIN_STEPS['damsm']} DAMSM and {MIN_STEPS['gan']} AttnGAN steps; fewer are warned about",
        f"settings: the shapes preset, seed {preset.data.seed}" + (f", with {', '.join(sets)}" if sets else ""),
        "every setting as JSON: add --json",
    ]
    return "\n".join(lines)


def _print_config(preset: Preset, **run: Any) -> None:
    if not is_main_process():  # under torchrun: printed once
        return
    here = _on_this_machine(preset, run["device"], run["command"])
    run = {k: str(v) if isinstance(v, Path) else v for k, v in run.items()}
    click.echo(json.dumps({"preset": to_dict(preset), **run, "on_this_machine": here}, indent=2))


def _on_this_machine(preset: Preset, device: str, command: str) -> dict[str, Any]:
    """What the ``auto`` settings become here: the device, the DataLoader workers, the precision."""
    from ..training.data import image_batch_bytes, loader_workers
    from ..training.devices import check_mixed_precision, resolve_device

    try:
        dev = resolve_device(device)
    except UserError as exc:  # a config prepared for another machine: say so, print it all the same
        return {"device": f"{device}: not available here ({user_message(exc)})"}
    if command in ("train", "demo"):  # the demo's GAN part is the longer one
        batch_size, sizes = preset.gan_train.batch_size, preset.generator.image_sizes
    else:
        batch_size, sizes = preset.damsm_train.batch_size, [preset.image_encoder.input_size]
    batch_bytes = image_batch_bytes(batch_size, sizes)
    here: dict[str, Any] = {"device": str(dev), "loader_workers": loader_workers(preset.data.workers, dev, 1, batch_bytes)}
    if command in ("train", "demo"):
        here["mixed_precision"] = check_mixed_precision(dev, preset.gan_train.mixed_precision)
    here["batch_size_per_process"] = batch_size
    return here


_TUNE_MALLOC = click.option(
    "--tune-malloc/--no-tune-malloc", default=True, show_default=True,
    help="Linux/glibc: keep freed memory for reuse instead of returning large blocks to the system at every "
         "free. CPU training steps run 7-30 % faster; the process keeps its peak memory (about 10 % more).",
)  # fmt: skip


_DEVICE = device_option("auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:N or mps.")


_common_options = option_group(
    click.option("--preset", type=click.Choice(sorted(PRESETS)), default=None,
                 help="Settings to start from (birds/coco: the original release; shapes: the built-in CPU dataset; "
                      "tiny: tests). Default: the checkpoint's with --resume, else that of --dataset birds|coco, "
                      "else shapes."),
    click.option("--config", "config_file", type=_FILE, default=None,
                 help="YAML file of 'section: {key: value}' overrides, applied after --preset."),
    click.option("--set", "sets", multiple=True, metavar="SECTION.KEY=VALUE",
                 help="Override one setting, e.g. --set generator.gf_dim=16 (repeatable; after --config)."),
    click.option("--dataset", type=click.Choice(DATASETS), default=None, help="Dataset kind (sets data.dataset)."),
    click.option("--data-dir", type=_PATH, default=None, help="Dataset root folder (sets data.data_dir)."),
    click.option("--runs-dir", type=_PATH, default=Path("runs"), show_default=True,
                 help="Parent folder of the numbered run folders (runs/00000-<desc>/)."),
    click.option("--resume", type=_EXISTING, default=None,
                 help="Continue a run: its folder or one of its checkpoints/state-*.pt files."),
    click.option("--reshard", is_flag=True,
                 help="With --resume: continue a checkpoint written by another number of processes (torchrun), "
                      "optionally with another per-process batch size (--set ...batch_size). Weights, optimizer "
                      "states and the step count carry over; the epoch goes on after the images already used, "
                      "with new random streams (not an exact continuation)."),
    _DEVICE,
    click.option("--max-steps", type=click.IntRange(min=1), default=None,
                 help="Stop after this many steps in total (sets *_train.max_steps)."),
    click.option("--max-minutes", type=click.FloatRange(min=0, min_open=True), default=None,
                 help="Stop after this many minutes of wall-clock time (a checkpoint is saved)."),
    click.option("--keep", type=click.IntRange(min=0), default=3, show_default=True,
                 help="Newest checkpoints kept in the run folder (0: keep all)."),
    progress_option("Show a progress bar (on a terminal)."),
    _TUNE_MALLOC,
    click.option("-n", "--dry-run", is_flag=True, help="Print the resolved configuration and exit."),
)  # fmt: skip


def _loop_options(
    runs_dir: Path, resume: Path | None, reshard: bool, device: str, max_minutes: float | None, keep: int, progress: bool
) -> dict[str, Any]:
    """The keyword arguments that both training loops take from the common options."""
    return {
        "runs_dir": runs_dir,
        "resume": resume,
        "reshard": reshard,
        "device": device,
        "max_seconds": max_minutes * 60 if max_minutes else None,
        "keep_checkpoints": keep,
        "progress": progress,
    }


def _run(call: Callable[[], Any], tune_malloc: bool) -> Any:
    """Run a training call; Ctrl-C and user mistakes end with a message instead of a traceback."""
    from ..training import TrainingInterrupted, tune_cpu_allocator

    if tune_malloc:
        tune_cpu_allocator()
    try:
        return call()
    except TrainingInterrupted as exc:  # the loop has logged where the state is and how to continue
        raise SystemExit(128 + (exc.signum or signal.SIGINT)) from None
    except UserError as exc:
        raise UserFailure(user_message(exc)) from None


@click.command("pretrain-damsm", context_settings={"show_default": True})
@_common_options
@click.option("--inception-weights", default="imagenet", show_default=True,
              help="Inception-v3 weights for image_encoder.backbone=inception: 'imagenet' (torchvision) or a file.")
def pretrain_damsm(
    preset: str | None, config_file: Path | None, sets: tuple[str, ...], dataset: str | None, data_dir: Path | None,
    runs_dir: Path, resume: Path | None, reshard: bool, device: str, max_steps: int | None, max_minutes: float | None, keep: int,
    progress: bool, tune_malloc: bool, dry_run: bool, inception_weights: str,
) -> None:  # fmt: skip
    """Pre-train the DAMSM text and image encoders (Eq. 7-14), the first stage of AttnGAN.

    Writes a run folder runs/NNNNN-<dataset>-damsm/ whose model/ (text_encoder/, image_encoder/,
    vocab.json) is what `attngan train --damsm` takes.

    \b
    Examples:
      attngan pretrain-damsm --preset shapes
      attngan pretrain-damsm --preset birds --data-dir data/birds --set damsm_train.batch_size=32
      attngan pretrain-damsm --resume runs/00000-shapes-damsm
    """
    setup_logging()
    resolved = _training_preset("damsm", preset, config_file, sets, dataset, data_dir, resume, reshard, max_steps)
    if dry_run:
        _check_resume(resume, resolved, "damsm", reshard, settings=preset is None)
        _print_config(resolved, command="pretrain-damsm", resume=resume, reshard=reshard, device=device,
                      runs_dir=runs_dir)  # fmt: skip
        return
    from ..training import train_damsm

    loop = _loop_options(runs_dir, resume, reshard, device, max_minutes, keep, progress)
    result = _run(lambda: train_damsm(resolved, backbone_weights=inception_weights, **loop), tune_malloc)
    if is_main_process():
        click.echo(f"DAMSM encoders: {result.model_dir}")
        # A resumed run names no --preset: the one its settings came from (their description says which).
        name = preset or next((n for n, p in PRESETS.items() if p.description == resolved.description), None)
        args = ["attngan", "train", "--damsm", str(result.run_dir)] + (["--preset", name] if name else [])
        if resolved.data.dataset != "shapes":  # the GAN trains on the same data
            args += ["--dataset", resolved.data.dataset] + (["--data-dir", resolved.data.data_dir] if resolved.data.data_dir else [])
        click.echo("next: " + shlex.join(args))
        _warn_if_stopped_early(result, "pretrain-damsm")


def _warn_if_stopped_early(result: Any, command: str) -> None:
    warning = result.stopped_early(command)
    if warning:
        click.echo(f"Warning: {warning}", err=True)


@click.command("train", context_settings={"show_default": True})
@_common_options
@click.option("--damsm", type=_PATH, default=None,
              help="Pre-trained DAMSM encoders: a run folder of `attngan pretrain-damsm` or its model/ folder "
                   "(with --dry-run it need not exist yet).")
@click.option("--original-text-encoder", type=_FILE, default=None,
              help="Or the original release's text_encoder*.pth (with --original-image-encoder).")
@click.option("--original-image-encoder", type=_FILE, default=None,
              help="Or the original release's image_encoder*.pth (with --original-text-encoder).")
def train(
    preset: str | None, config_file: Path | None, sets: tuple[str, ...], dataset: str | None, data_dir: Path | None,
    runs_dir: Path, resume: Path | None, reshard: bool, device: str, max_steps: int | None, max_minutes: float | None, keep: int,
    progress: bool, tune_malloc: bool, dry_run: bool, damsm: Path | None, original_text_encoder: Path | None,
    original_image_encoder: Path | None,
) -> None:  # fmt: skip
    """Train the AttnGAN generator and discriminators (Eq. 1-5) with frozen DAMSM encoders.

    Writes a run folder runs/NNNNN-<dataset>-attngan/ with samples/, checkpoints/ and model/ (EMA
    generator, encoders, discriminators, vocab.json), which `attngan sample --checkpoint` takes.
    For several GPUs or CPU processes start it with torchrun (one process per device).

    \b
    Examples:
      attngan train --preset shapes --damsm runs/00000-shapes-damsm
      attngan train --preset birds --data-dir data/birds \\
          --original-text-encoder DAMSMencoders/bird/text_encoder200.pth \\
          --original-image-encoder DAMSMencoders/bird/image_encoder200.pth
      torchrun --nproc_per_node=4 -m attngan train --preset coco --data-dir data/coco --damsm runs/00001-coco-damsm
      attngan train --resume runs/00002-shapes-attngan --max-steps 3000
    """
    setup_logging()
    if damsm is not None and not damsm.exists() and not dry_run:
        raise click.BadParameter(f"{damsm} does not exist", param_hint="'--damsm'")
    if resume is None and damsm is None and not (original_text_encoder and original_image_encoder) and not dry_run:
        raise click.UsageError(
            "give the DAMSM encoders: --damsm RUN_OR_MODEL_DIR, or both --original-text-encoder and "
            "--original-image-encoder (or --resume a run)"
        )
    if bool(original_text_encoder) != bool(original_image_encoder):
        raise click.UsageError("--original-text-encoder and --original-image-encoder go together")
    resolved = _training_preset("gan", preset, config_file, sets, dataset, data_dir, resume, reshard, max_steps)
    if dry_run:
        _check_resume(resume, resolved, "gan", reshard, settings=preset is None)
        _print_config(resolved, command="train", resume=resume, reshard=reshard, device=device, runs_dir=runs_dir,
                      damsm=damsm, original_text_encoder=original_text_encoder,
                      original_image_encoder=original_image_encoder)  # fmt: skip
        return
    from ..training import train_gan

    loop = _loop_options(runs_dir, resume, reshard, device, max_minutes, keep, progress)
    result = _run(
        lambda: train_gan(
            resolved,
            damsm=damsm,
            original_text_encoder=original_text_encoder,
            original_image_encoder=original_image_encoder,
            **loop,
        ),
        tune_malloc,
    )
    if is_main_process():
        click.echo(f"model: {result.model_dir}")
        click.echo("\n".join(_next_commands(result.model_dir, result.run_dir, resolved.data.dataset)))
        _warn_if_stopped_early(result, "train")


@click.command("demo", context_settings={"show_default": True})
@click.option("--out", "out", type=_PATH, required=True, help="Output folder (created; must be empty if it exists).")
@click.option("--minutes", type=click.FloatRange(min=0.5), default=10.0, show_default=True,
              help="Wall-clock budget of training (DAMSM pre-training and GAN). Sampling, metrics and figures "
                   "come after it, with a reserve of 2 % (at least 8 s) and 1 % per training phase for data "
                   "and export (at most 4 s): 10 minutes end within 620 s at an idle machine's speed. A busy "
                   "machine trains fewer steps (worse figures) and may end some seconds late.")
@click.option("--seed", type=click.IntRange(0, 2**31 - 1), default=0, show_default=True, help="Seed of the data, the networks and the samples.")
@click.option("--set", "sets", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override a setting of the shapes preset, e.g. --set gan_loss.damsm_lambda=10 (repeatable).")
@_DEVICE
@click.option("--damsm-share", type=click.FloatRange(0.05, 0.9), default=0.3, show_default=True,
              help="Largest share of the training time given to DAMSM pre-training (it stops earlier at "
                   "damsm_train.max_steps); the GAN gets the rest.")
@progress_option("Show progress bars (on a terminal).")
@_TUNE_MALLOC
@click.option("-n", "--dry-run", is_flag=True,
              help="Print the time plan and the main settings, check that --out can be written, and exit.")
@click.option("--json", "as_json", is_flag=True, help="With --dry-run: print every resolved setting as JSON instead.")
def demo(
    out: Path, minutes: float, seed: int, sets: tuple[str, ...], device: str, damsm_share: float,
    progress: bool, tune_malloc: bool, dry_run: bool, as_json: bool,
) -> None:  # fmt: skip
    """Run the whole pipeline on the built-in shapes dataset within a time budget (CPU, minutes).

    Trains the attribute classifier of the metrics once (cached for later runs), generates the shapes
    dataset, pre-trains a small DAMSM, trains a small AttnGAN, then writes
    OUT/samples.png (captions + images), OUT/attention.png (word attention maps), OUT/metrics.json
    (attribute accuracy and R-precision with their chance levels) and prints a summary table.

    \b
    Example:
      attngan demo --out demo --minutes 10
    """
    setup_logging()
    from ..training import demo as demo_lib

    preset = resolve_preset(demo_lib.demo_preset(seed), None, sets, {})
    plan = demo_lib.DemoPlan.from_minutes(minutes, damsm_share)
    if dry_run and as_json:
        _print_config(preset, command="demo", out=out, minutes=minutes, seed=seed, device=device, plan=plan.as_dict())
        return
    if dry_run:
        problem = _demo_out_problem(out)
        if problem:
            raise UserFailure(problem)
        click.echo(_describe_demo_plan(preset, plan, out, device, sets))
        return
    report = _run(lambda: demo_lib.run_demo(out, preset, plan, seed=seed, device=device, progress=progress), tune_malloc)
    click.echo(demo_lib.format_summary(report))
    gan_run = Path(report["runs"]["gan"])
    click.echo("\n".join(_next_commands(gan_run, gan_run, "shapes")))
