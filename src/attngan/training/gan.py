"""AttnGAN training (Sec. 3.1; the original ``trainer.py: condGANTrainer.train``): one loop, top to bottom.

Per iteration, as the original: encode the captions with the frozen DAMSM text encoder (detached), run the
generator once (noise z and the CA noise from the global RNG, G in train mode), then the phases of
:class:`~attngan.training.loss.GANLoss`: one step per discriminator ``D0 .. Dk`` (Eq. 5 on the real images
of its scale, the fakes detached, the sentence vectors) and one generator step ``G`` (the stage losses of
Eq. 4 summed, plus lambda times L_DAMSM (Eq. 14) of the last stage's images through the frozen image
encoder against the detached text features, plus the KL term). Adam(2e-4, betas (0.5, 0.999)) for G and
for each D, no schedule. An exponential moving average of G's parameters (0.999; BatchNorm buffers copied,
not averaged, original-attngan.md 8.1 #7) draws the samples and is the exported generator.

Differences from the original: ``gan_train.d_steps`` > 1 updates the discriminators on every batch but the
generator only on every ``d_steps``-th (1 = the original); samples are drawn with the EMA generator in
eval mode (the original used train mode, perturbing BatchNorm statistics); everything needed to continue
exactly is checkpointed (the original saved bare EMA weights only).

Speed (same mathematics, ``gan_train.fast_kernels`` and ``gan_train.channels_last``, both on by default):
the kernels of :mod:`attngan.nn.fast` in G and the Ds, the fused attention kernel in G's training forward,
a BN-folded copy of the frozen image encoder to judge G's images, each D step's real and fake (and
mismatched) batches in one pass with per-part BatchNorm (``discriminator_loss(joint_batches=True)``), NHWC
tensors and :class:`FlatAdam`.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ..config import DiscriminatorConfig, Preset, check_preset
from ..data.base import Batch
from ..data.registry import build_dataset
from ..errors import UserError
from ..nn import Discriminator, Generator, ImageEncoder, TextEncoder
from ..text import Vocabulary
from .data import batches_per_epoch
from .devices import autocast, check_mixed_precision, cudnn_autotuner, make_grad_scaler, seed_everything
from .distributed import DistInfo, init_distributed
from .encoders import (
    check_caption_vocabulary,
    encoder_fingerprint,
    encoders_record,
    load_encoders,
    resolve_vocab_size,
)
from .export import export_model
from .harness import LoopNames, StepInfo, TrainingRun, planned_steps, state_to_resume
from .loss import DiscriminatorObjective, GANLoss, TextFeatures
from .optim import FlatAdam
from .outcomes import TrainResult
from .samples import SampleGrids, sample_split, start_sample_grids
from .state import (
    check_resume_config,
    preset_from_state,
    replace_section,
    restore_position,
    run_dir_of,
    save_state,
    write_run_config,
)

__all__ = ["train_gan", "load_encoders", "update_ema", "discriminator_configs"]

log = logging.getLogger(__name__)

LOOP = LoopNames(kind="gan", title="AttnGAN training", resuming="GAN training", command="train", label="attngan")


# ------------------------------------------------------------------------------------------------ helpers


def discriminator_configs(preset: Preset) -> list[DiscriminatorConfig]:
    """One D per generator output (the AttnDCGAN variant: one conditional-only D at the last scale)."""
    g = preset.generator
    sizes = g.image_sizes[-1:] if g.dcgan else g.image_sizes
    return [
        DiscriminatorConfig(
            df_dim=preset.discriminator_df_dim, embed_dim=g.embed_dim, image_size=s, unconditional=not g.dcgan,
            spectral_norm=preset.discriminator_spectral_norm,
        )
        for s in sizes
    ]


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """avg_p = decay * avg_p + (1 - decay) * p for parameters; buffers (BN statistics) copied, not averaged."""
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.mul_(decay).add_(p.detach(), alpha=1 - decay)
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)


MATMUL_CONV_MIN_WEIGHT = 1 << 20  # im2col convs only for layers with >= 1M weights (benchmarks/README.md)


def _fast_modules(
    generator: Generator,
    discriminators: list[Discriminator],
    image_encoder: ImageEncoder,
    dev: torch.device,
    memory_format: torch.memory_format,
) -> ImageEncoder:
    """Switch G and the Ds to the faster kernels of ``attngan.nn.fast`` (same parameters, same maths) and
    return the frozen image encoder with its BatchNorm folded (a copy used only to judge G's images; the
    exported encoder is the original)."""
    from ..nn.fast import fold_batchnorm, set_fast_upsample, set_matmul_conv

    set_fast_upsample(generator)
    if dev.type == "cpu":
        for m in (generator, *discriminators):
            set_matmul_conv(m, min_weight=MATMUL_CONV_MIN_WEIGHT)
    folded = fold_batchnorm(image_encoder).requires_grad_(False)
    return folded.to(memory_format=memory_format)


def pad_words(batch: Batch, text: TextFeatures, t: int) -> tuple[Batch, TextFeatures]:
    """The batch's word features and mask padded from its longest caption to ``t`` words: zero word
    vectors, masked (Eq. 2's softmax and the DAMSM word loss leave them out), so the same values. Compiled
    networks then see one shape; with the word count varying per batch, inductor's CPU attention backward
    failed with a stride mismatch (torch 2.14)."""
    extra = t - text.words.size(2)
    if extra <= 0:
        return batch, text
    words = torch.nn.functional.pad(text.words, (0, extra))
    mask = torch.nn.functional.pad(batch.mask, (0, extra), value=True)
    return dataclasses.replace(batch, mask=mask), TextFeatures(words, text.sentence)


def _resolve_gan_preset(preset: Preset, te: TextEncoder, ie: ImageEncoder) -> Preset:
    """The encoders define their own settings; G and D condition on their width D."""
    if preset.generator.embed_dim != te.config.embed_dim:
        log.info("generator.embed_dim set to %d, the width of the DAMSM encoders", te.config.embed_dim)
    preset = replace_section(preset, "generator", embed_dim=te.config.embed_dim)
    return dataclasses.replace(preset, text_encoder=te.config, image_encoder=ie.config)


# ------------------------------------------------------------------------------------------------ the loop


def train_gan(
    preset: Preset | None,  # resolved settings; None: the checkpoint's (resume=); encoder sections come from the encoders
    *,
    damsm: str | Path | None = None,  # DAMSM run or model folder with text_encoder/, image_encoder/, vocab.json
    original_text_encoder: str | Path | None = None,  # or the original release's text_encoder*.pth ...
    original_image_encoder: str | Path | None = None,  # ... and image_encoder*.pth (vocabulary from the dataset)
    train_set: Dataset | None = None,  # None: build_dataset(preset.data, "train") with the encoders' vocabulary
    sample_set: Dataset | None = None,  # captions of the sample grids; None: the "test" split in eval mode
    num_samples: int = 16,  # images per sample grid
    run_dir: str | Path | None = None,  # write here (created if missing); None: a new numbered folder in runs_dir
    runs_dir: str | Path = "runs",  # parent of numbered run folders
    resume: str | Path | None = None,  # a run folder or state file to continue; its config must match
    reshard: bool = False,  # resume a state of another number of processes (not exact: state.restore_position)
    keep_checkpoints: int = 3,  # newest state files kept in checkpoints/ (0: all)
    device: str | torch.device | None = None,  # None/"auto": CUDA, else MPS, else CPU
    max_steps: int | None = None,  # stop after this many steps in total (None: the preset's max_steps/epochs)
    max_seconds: float | None = None,  # stop after this many seconds of this call (None: no time limit)
    progress: bool = True,  # tqdm bar (on a terminal)
    tensorboard: bool = True,  # TensorBoard events when tensorboard is installed
    adapt_threads: bool = False,  # on one CPU process: fewer threads while other work competes (ThreadTuner)
    callback: Callable[[StepInfo], None] | None = None,  # called after every step (tests, fault injection)
) -> TrainResult:
    """Train the AttnGAN generator and discriminators (Eq. 1-5, 14). Returns where the run and its model are.

    The exported model folder (``run_dir/model``: ``generator/`` with EMA weights, ``text_encoder/``,
    ``image_encoder/``, ``discriminator{i}/``, ``vocab.json``) loads with
    ``AttnGANPipeline.from_pretrained``. Raises NonFiniteLossError (a UserError) when a loss becomes
    NaN/inf, keeping the last verified checkpoint, and TrainingInterrupted (a KeyboardInterrupt) after
    saving a checkpoint on Ctrl-C.
    """
    # Set up processes, device, and the state to continue from.
    dist_info, dev = init_distributed(device)
    state = state_to_resume(resume, "gan", dist_info.world_size, reshard)
    if state is None and preset is None:
        raise ValueError("train_gan needs a preset, or resume= to take the one of a checkpoint")
    if state is not None:
        run_dir = Path(run_dir) if run_dir is not None else run_dir_of(Path(state["path"]))
        damsm, original_text_encoder, original_image_encoder = _resumed_encoders(
            run_dir, damsm, original_text_encoder, original_image_encoder
        )

    # Load the frozen DAMSM encoders and the training data (captions encoded with their vocabulary).
    encoders_source = str(damsm or original_text_encoder)
    text_encoder, image_encoder, vocab, train_set, fingerprint = _frozen_encoders(
        preset, state, damsm, original_text_encoder, original_image_encoder, train_set, progress
    )
    preset = _gan_preset(preset, state, text_encoder, image_encoder, reshard)
    check_preset(preset)  # every setting in range, before any work
    cfg = preset.gan_train
    seed_everything(cfg.seed + dist_info.rank)
    d_cfgs = discriminator_configs(preset)
    image_sizes = [c.image_size for c in d_cfgs]
    train_set, vocab = _training_split(preset, train_set, vocab, image_sizes, encoders_source, progress)
    preset = resolve_vocab_size(preset, vocab)
    steps_per_epoch = batches_per_epoch(train_set, cfg.batch_size, dist_info.world_size)
    total_steps = planned_steps(max_steps, cfg, steps_per_epoch)
    text_encoder.to(dev)
    image_encoder.to(dev)

    # Build G, its EMA copy, the Ds, the optimizers and the phases' objectives; restore them when resuming.
    nets = _build_networks(preset, d_cfgs, image_encoder, dev, dist_info)
    position = (0, 0, 0)  # step, epoch, batch in the epoch
    if state is not None:
        nets.load(state)
        position = restore_position(state, dist_info.rank, dist_info.world_size, cfg.seed, cfg.batch_size)
    loss = _gan_loss(nets, preset, dev, dist_info)
    phases = list(zip(loss.phases, nets.opt_d + [nets.opt_g]))

    # The run: its folder (rank 0 writes the config, the encoders and the fixed sample captions), position,
    # snapshots and how it ends.
    if dist_info.is_main and num_samples > 0 and sample_set is None:  # before the run folder: a data error leaves none
        sample_set = sample_split(preset, image_sizes, vocab, progress)
    run = TrainingRun(
        LOOP, dist_info, dev, state, position, total_steps=total_steps,
        stopped_by="max_steps" if max_steps is not None or cfg.max_steps is not None else "epochs",
        max_seconds=max_seconds, snapshot_every=cfg.snapshot_every, keep_checkpoints=keep_checkpoints,
        nonfinite_hint="Lower gan_train.g_lr/d_lr, try gan_loss.damsm_lambda or another seed, or check the data.",
        callback=callback, adapt_threads=adapt_threads,
    )  # fmt: skip
    encoders = (text_encoder, image_encoder)
    run.save = lambda rngs: _save_gan_state(run, nets, preset, vocab, encoders, fingerprint, keep_checkpoints, rngs)
    sampler: SampleGrids | None = None
    with run.folder_setup(
        run_dir, runs_dir, preset.data.dataset, subdirs=("checkpoints", "samples"), images_per_step=cfg.batch_size * dist_info.world_size,
        steps_per_epoch=steps_per_epoch, setting=f", stages {image_sizes}, on {dev}" + (f" ({nets.mixed_precision})" if nets.mixed_precision != "no" else ""),
        progress=progress, tensorboard=tensorboard,
    ) as folder:  # fmt: skip
        if folder is not None:
            _write_run_start(folder, run, preset, vocab, encoders, encoders_source, nets.mixed_precision)
            if num_samples > 0:
                sampler = start_sample_grids(folder / "samples", sample_set, num_samples, text_encoder, preset, dev, state is not None)

    # Train.
    last: dict[str, Any] = {}
    modules = nets.modules()
    with run:
        with run.interruptible(), cudnn_autotuner(dev.type == "cuda" and cfg.fast_kernels):
            for m in (nets.generator, *nets.discriminators):
                m.train()
            for batch in run.batches(train_set, cfg.batch_size, cfg.seed, workers=preset.data.workers, image_sizes=image_sizes):
                # Fetch training data; encode the captions with the frozen text encoder.
                batch, text = _text_features(batch, text_encoder, dev, preset.data.words_num if cfg.compile else None)
                g_step = (run.step + 1) % cfg.d_steps == 0

                # Generate: G runs once; the D phases see its images detached.
                fake = loss.generate(batch, text, with_grad=g_step)

                # Execute training phases: D0 .. Dk, then G. The losses stay on the device until the step is
                # queued: one host-device synchronisation (and one collective) per step.
                values: dict[str, torch.Tensor] = {}
                for name, opt in phases:
                    if name == "G" and not g_step:
                        continue
                    opt.zero_grad(set_to_none=True)
                    values |= loss.accumulate_gradients(name, batch, text, fake)
                    nets.scaler.step(opt)
                nets.scaler.update()
                scalars = run.reduce_losses(values)

                # Update the EMA of G's parameters.
                if g_step:
                    update_ema(nets.generator_ema, nets.generator, cfg.ema_decay)
                run.step_done()
                del fake

                # Report progress; save samples, and a snapshot when one is due.
                run.stats.update(run.step, scalars)
                if run.step % cfg.log_every == 0 or run.step == run.total_steps:
                    last = run.stats.tick(run.step, run.epoch, nets.learning_rates())
                if sampler is not None and (run.step % cfg.sample_every == 0 or run.step == run.total_steps):
                    sampler.write(nets.generator_ema, run.run_dir / "samples", run.step, run.stats, vocab)
                run.end_step(scalars, modules)

        # Save the final state and export the model folder.
        run.save_last_step()
        if run.main:
            if sampler is not None and run.step % cfg.sample_every != 0 and run.step != run.total_steps:
                sampler.write(nets.generator_ema, run.run_dir / "samples", run.step, run.stats, vocab)
            log.info("AttnGAN training done at step %d (%s); model in %s", run.step, run.stopped_by, run.run_dir / "model")
        return run.result(run.run_dir / "model" if run.main else None, last)


# ------------------------------------------------------------------------------------------------ its parts


def _resumed_encoders(
    run_dir: Path, damsm: str | Path | None, original_text_encoder: str | Path | None, original_image_encoder: str | Path | None
) -> tuple[str | Path | None, str | Path | None, str | Path | None]:
    """The encoders a resumed run conditions on: its own model/ (exported when it started), else the ones given."""
    own = Path(run_dir) / "model"  # the frozen encoders, exported when the run started
    given = damsm is not None or bool(original_text_encoder and original_image_encoder)
    if (own / "text_encoder").is_dir():
        if given:
            log.warning("resuming: the run's own DAMSM encoders in %s are used, not the ones given", own)
        return own, None, None
    if not given:
        raise UserError(
            f"{run_dir} has no model/ folder with the frozen DAMSM encoders this run was trained with; "
            "restore it, or give those encoders again (--damsm, or the --original-* files)"
        )
    return damsm, original_text_encoder, original_image_encoder


def _frozen_encoders(
    preset: Preset | None,
    state: dict[str, Any] | None,
    damsm: str | Path | None,
    original_text_encoder: str | Path | None,
    original_image_encoder: str | Path | None,
    train_set: Dataset | None,
    progress: bool,
) -> tuple[TextEncoder, ImageEncoder, Vocabulary | None, Dataset | None, str]:
    """The frozen DAMSM encoders, their vocabulary, the training split where it had to be read first (the
    original release's encoders come without a vocabulary: the dataset's captions.pickle is theirs), and the
    encoders' fingerprint, checked against the one of the state resumed from."""
    vocab_hint = Vocabulary(state["vocab"]) if state is not None else None
    if damsm is None and preset is not None:
        if train_set is None:
            sizes = [c.image_size for c in discriminator_configs(preset)]
            train_set = build_dataset(preset.data, "train", sizes, vocab=None, train=True, progress=progress)
        vocab_hint = train_set.vocab
    text_encoder, image_encoder, vocab = load_encoders(
        damsm, original_text_encoder=original_text_encoder, original_image_encoder=original_image_encoder, vocab=vocab_hint
    )
    fingerprint = encoder_fingerprint(text_encoder, image_encoder)
    if state is not None and state.get("encoders_sha256") not in (None, fingerprint):
        raise UserError(
            f"the DAMSM encoders given ({damsm or original_text_encoder}) are not the ones this run was trained with "
            "(their weights differ), so the generator would be conditioned on other text features; give the encoders "
            f"the run started with (\"encoders\" in {run_dir_of(Path(state['path'])) / 'config.json'})"
        )
    return text_encoder, image_encoder, vocab, train_set, fingerprint


def _gan_preset(
    preset: Preset | None, state: dict[str, Any] | None, te: TextEncoder, ie: ImageEncoder, reshard: bool
) -> Preset:
    """The settings: the given ones (which must match those of the state resumed from) or the state's, with
    the sections the encoders define."""
    if state is not None:
        saved = preset_from_state(state)
        preset = saved if preset is None else check_resume_config(saved, _resolve_gan_preset(preset, te, ie), state["path"], reshard)
    return _resolve_gan_preset(preset, te, ie)


def _text_features(
    batch: Batch, text_encoder: TextEncoder, dev: torch.device, words_num: int | None
) -> tuple[Batch, TextFeatures]:
    """The batch on the device and its captions encoded by the frozen text encoder (detached); padded to
    ``words_num`` words where given (compiled code: one word count for every batch, no dynamic shapes)."""
    lengths_cpu = batch.lengths  # pack_padded_sequence wants them on the CPU: no copy back
    batch = batch.to(dev, non_blocking=True)
    with torch.no_grad():
        words, sentence = text_encoder(batch.captions, lengths_cpu)  # (B, D, T), (B, D)
    text = TextFeatures(words.detach(), sentence.detach())
    if words_num is not None:
        batch, text = pad_words(batch, text, words_num)
    return batch, text


def _training_split(
    preset: Preset,
    train_set: Dataset | None,
    vocab: Vocabulary | None,
    image_sizes: list[int],
    encoders_source: str,
    progress: bool,
) -> tuple[Dataset, Vocabulary]:
    """The training split with the encoders' vocabulary (else its own), refused when most of its caption
    words are unknown to the encoders."""
    if train_set is None:
        train_set = build_dataset(preset.data, "train", image_sizes, vocab=vocab, train=True, progress=progress)
    if vocab is None:
        vocab = train_set.vocab
    check_caption_vocabulary(train_set, encoders_source)
    return train_set, vocab


@dataclasses.dataclass
class _GanNetworks:
    """What GAN training trains: G, its EMA copy, the Ds, their optimizers and the loss scaler."""

    generator: Generator
    generator_ema: Generator
    discriminators: list[Discriminator]
    judge_encoder: ImageEncoder  # the frozen image encoder that judges G's images (BatchNorm folded when fast)
    opt_g: torch.optim.Optimizer
    opt_d: list[torch.optim.Optimizer]
    scaler: torch.amp.GradScaler
    mixed_precision: str  # "no" | "bf16" | "fp16": the mode used

    def modules(self) -> dict[str, nn.Module]:
        named = {"generator": self.generator, "generator_ema": self.generator_ema}
        return named | {f"discriminator{i}": d for i, d in enumerate(self.discriminators)}

    def learning_rates(self) -> dict[str, float]:
        return {"lr/G": self.opt_g.param_groups[0]["lr"], "lr/D": self.opt_d[0].param_groups[0]["lr"]}

    def state_dicts(self) -> dict[str, Any]:
        """The ``models``, ``optimizers`` and ``scaler`` entries of a state file."""
        optimizers = {"generator": self.opt_g.state_dict()} | {f"discriminator{i}": o.state_dict() for i, o in enumerate(self.opt_d)}
        return {
            "models": {name: m.state_dict() for name, m in self.modules().items()},
            "optimizers": optimizers,
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
        }

    def load(self, state: dict[str, Any]) -> None:
        for name, module in self.modules().items():
            module.load_state_dict(state["models"][name])
        self.opt_g.load_state_dict(state["optimizers"]["generator"])
        for i, o in enumerate(self.opt_d):
            o.load_state_dict(state["optimizers"][f"discriminator{i}"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


def _build_networks(
    preset: Preset, d_cfgs: list[DiscriminatorConfig], image_encoder: ImageEncoder, dev: torch.device, dist_info: DistInfo
) -> _GanNetworks:
    """G, its EMA copy, the Ds and the optimizers, with the same initial weights on every process."""
    cfg = preset.gan_train
    mp = check_mixed_precision(dev, cfg.mixed_precision)
    memory_format = torch.channels_last if cfg.channels_last and dev.type != "mps" else torch.contiguous_format
    torch.manual_seed(cfg.seed)
    generator = Generator(preset.generator).to(dev, memory_format=memory_format)
    discriminators = [Discriminator(c).to(dev, memory_format=memory_format) for c in d_cfgs]
    judge_encoder = _fast_modules(generator, discriminators, image_encoder, dev, memory_format) if cfg.fast_kernels else image_encoder
    generator_ema = copy.deepcopy(generator).eval().requires_grad_(False)
    if dist_info.distributed:  # same weights everywhere, but each process its own noise z / CA noise
        torch.manual_seed(cfg.seed + dist_info.rank)
    # FlatAdam: Adam's update and state dict, by the fused kernel without copies or temporaries (optim.py).
    adam = FlatAdam if cfg.fast_kernels else torch.optim.Adam
    opt_g = adam(generator.parameters(), lr=cfg.g_lr, betas=tuple(cfg.betas))
    opt_d = [adam(d.parameters(), lr=cfg.d_lr, betas=tuple(cfg.betas)) for d in discriminators]
    return _GanNetworks(
        generator, generator_ema, discriminators, judge_encoder, opt_g, opt_d, make_grad_scaler(dev, mp), mp
    )


def _gan_loss(nets: _GanNetworks, preset: Preset, dev: torch.device, dist_info: DistInfo) -> GANLoss:
    """The phases' objectives, wrapped for distributed training (one forward per backward: G itself, and the
    Eq. 5 objective per D) and compiled where asked."""
    cfg = preset.gan_train
    g_forward: nn.Module = nets.generator
    d_objectives: list[nn.Module] = [
        DiscriminatorObjective(d, preset.gan_loss.uncond_weight, joint_batches=cfg.fast_kernels) for d in nets.discriminators
    ]
    if dist_info.distributed:
        ids = [dev] if dev.type == "cuda" else None
        g_forward = nn.parallel.DistributedDataParallel(nets.generator, device_ids=ids)
        d_objectives = [nn.parallel.DistributedDataParallel(o, device_ids=ids) for o in d_objectives]
    if cfg.compile:
        g_forward = torch.compile(g_forward)
        d_objectives = [torch.compile(o) for o in d_objectives]
    return GANLoss(
        generator=g_forward, discriminators=nets.discriminators, d_objectives=d_objectives,
        image_encoder=nets.judge_encoder, gan_cfg=preset.gan_loss, damsm_cfg=preset.damsm_loss,
        autocast=lambda: autocast(dev, nets.mixed_precision), scaler=nets.scaler, need_attention=not cfg.fast_kernels,
    )  # fmt: skip


def _write_run_start(
    folder: Path,
    run: TrainingRun,
    preset: Preset,
    vocab: Vocabulary,
    encoders: tuple[TextEncoder, ImageEncoder],
    encoders_source: str,
    mixed_precision: str,
) -> None:
    """Rank 0, in the run folder: the frozen encoders of a new run (model/) and config.json, which records
    where the encoders came from (a resumed run keeps its first record)."""
    if run.state is None:
        _export(folder, vocab, *encoders, preset, None, [], run.step)
    write_run_config(
        folder, preset, kind="gan", device=str(run.device), world_size=run.dist.world_size, max_steps=run.total_steps,
        mixed_precision=mixed_precision, encoders=encoders_record(folder, run.state, encoders_source),
    )  # fmt: skip


def _save_gan_state(
    run: TrainingRun,
    nets: _GanNetworks,
    preset: Preset,
    vocab: Vocabulary,
    encoders: tuple[TextEncoder, ImageEncoder],
    fingerprint: str,
    keep_checkpoints: int,
    rngs: list[dict],
) -> Path:
    """Rank 0: the state file of this step, then the model folder with the EMA generator."""
    record = run.state_record(
        preset, vocab, rngs, **nets.state_dicts(),
        encoders_sha256=fingerprint,  # a resumed run must condition on the same text features
    )  # fmt: skip
    path = save_state(run.run_dir, record, keep_checkpoints)
    _export(run.run_dir, vocab, *encoders, preset, nets.generator_ema, nets.discriminators, run.step)
    return path


def _export(
    run_dir: Path,
    vocab: Vocabulary,
    text_encoder: TextEncoder,
    image_encoder: ImageEncoder,
    preset: Preset,
    generator: Generator | None,
    discriminators: list[Discriminator],
    step: int,
) -> Path:
    components: list[tuple[str, nn.Module, Any]] = [
        ("text_encoder", text_encoder, text_encoder.config),
        ("image_encoder", image_encoder, image_encoder.config),
    ]
    if generator is not None:
        components.append(("generator", generator, preset.generator))
    components += [(f"discriminator{i}", d, d.config) for i, d in enumerate(discriminators)]
    return export_model(run_dir / "model", vocab, components, step=step)
