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

import contextlib
import copy
import dataclasses
import io
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from ..checkpoint import atomic_write_bytes, atomic_write_text, load_component
from ..config import DiscriminatorConfig, ImageEncoderConfig, Preset, TextEncoderConfig, check_preset, to_dict
from ..data.base import Batch
from ..data.registry import build_dataset
from ..errors import DiskFullError, EmptySplitError, UserError
from ..nn import Discriminator, Generator, ImageEncoder, TextEncoder
from ..text import Vocabulary
from .common import (
    NonFiniteLossError,
    RunFolder,
    StepInfo,
    StopAgreed,
    TrainingInterrupted,
    TrainResult,
    call_hook,
    check_caption_vocabulary,
    check_finite,
    encoder_fingerprint,
    export_model,
    failure_of_environment,
    interruption,
    resolve_vocab_size,
)
from .data import batches_per_epoch, epoch_loader, image_batch_bytes, iterate_batches, loader_workers
from .figures import attention_png
from .loss import DiscriminatorObjective, GANLoss, TextFeatures
from .optim import FlatAdam
from .runtime import (
    InterruptGuard,
    ThreadTuner,
    all_reduce_mean,
    autocast,
    broadcast_object,
    check_mixed_precision,
    cudnn_autotuner,
    gather_rng_states,
    init_distributed,
    make_grad_scaler,
    seed_everything,
    shutdown_distributed,
)
from .state import (
    check_resumable,
    check_resume_config,
    load_state,
    make_run_dir,
    preset_from_state,
    replace_section,
    restore_position,
    run_dir_of,
    save_state,
    truncate_stats,
    write_run_config,
)
from .stats import StatsSink

__all__ = ["train_gan", "load_encoders", "update_ema", "discriminator_configs"]

log = logging.getLogger(__name__)

_STOP, _TIME_UP = 1, 2


# ------------------------------------------------------------------------------------------------ helpers


def _encoders_record(run_dir: Path, state: dict | None, source: str) -> str:
    """Where the run's encoders came from: as recorded when it started (a resumed run reads its own model/)."""
    if state is not None:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            recorded = json.loads((run_dir / "config.json").read_text()).get("encoders")
            if recorded:
                return str(recorded)
    return source


def load_encoders(
    damsm: str | Path | None = None,  # a DAMSM run folder (its model/) or a model folder
    *,
    original_text_encoder: str | Path | None = None,  # text_encoder*.pth of the original release
    original_image_encoder: str | Path | None = None,  # image_encoder*.pth of the original release
    vocab: Vocabulary | None = None,  # required with the original files (the dataset's captions.pickle)
) -> tuple[TextEncoder, ImageEncoder, Vocabulary | None]:
    """Frozen, eval-mode DAMSM encoders (and their vocabulary) for GAN training."""
    if damsm is not None and (original_text_encoder or original_image_encoder):
        raise UserError("give either --damsm or the --original-* encoder files, not both")
    if damsm is not None:
        folder = Path(damsm)
        if (folder / "model" / "text_encoder").is_dir():
            folder = folder / "model"
        if not (folder / "text_encoder").is_dir() or not (folder / "image_encoder").is_dir():
            states = sorted((Path(damsm) / "checkpoints").glob("state-*.pt"))
            if states:
                raise UserError(
                    f"{damsm} is a DAMSM run that has not exported its encoders yet (it stopped at "
                    f"{states[-1].name}); finish it with `attngan pretrain-damsm --resume {damsm}` (add "
                    "--max-steps N to end it sooner)"
                )
            raise UserError(
                f"{damsm} is not a DAMSM run or model folder (no text_encoder/ and image_encoder/ inside); "
                "pass the folder written by attngan pretrain-damsm (runs/NNNNN-.../ or its model/)"
            )
        te = load_component(folder / "text_encoder", TextEncoder, TextEncoderConfig)
        ie = load_component(folder / "image_encoder", ImageEncoder, ImageEncoderConfig)
        found = Vocabulary.load(folder / "vocab.json") if (folder / "vocab.json").is_file() else None
        if found is not None and vocab is not None and found != vocab:
            raise UserError(f"the vocabulary of {folder} differs from the one given")
        vocab = found or vocab
    elif original_text_encoder and original_image_encoder:
        from ..legacy import load_original

        te = load_original(original_text_encoder, kind="text_encoder")
        ie = load_original(original_image_encoder, kind="image_encoder")
    else:
        raise UserError(
            "GAN training needs pre-trained DAMSM encoders: --damsm RUN_OR_MODEL_DIR (from attngan pretrain-damsm), "
            "or both --original-text-encoder and --original-image-encoder (.pth files of the original release)"
        )
    if vocab is not None and len(vocab) != te.config.vocab_size:
        raise UserError(
            f"the text encoder has {te.config.vocab_size} words but the vocabulary {len(vocab)}; "
            "use the encoders and captions of the same dataset"
        )
    if te.config.embed_dim != ie.config.embed_dim:
        raise UserError(f"the text and image encoders do not belong together (D = {te.config.embed_dim} vs {ie.config.embed_dim})")
    for m in (te, ie):
        m.eval().requires_grad_(False)
    return te, ie, vocab


def discriminator_configs(preset: Preset) -> list[DiscriminatorConfig]:
    """One D per generator output (the AttnDCGAN variant: one conditional-only D at the last scale)."""
    g = preset.generator
    sizes = g.image_sizes[-1:] if g.dcgan else g.image_sizes
    return [
        DiscriminatorConfig(df_dim=preset.discriminator_df_dim, embed_dim=g.embed_dim, image_size=s, unconditional=not g.dcgan)
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


def _png(grid: torch.Tensor) -> bytes:
    """(3, H, W) in [0, 1] -> PNG bytes (values truncated to uint8, as the original's astype)."""
    from PIL import Image

    arr = (grid.clamp(0, 1) * 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


class _Sampler:
    """Fixed captions, noise and CA noise; draws sample grids with the EMA generator (eval mode)."""

    def __init__(self, batch: Batch, text_encoder: TextEncoder, generator_cfg, seed: int, device: torch.device) -> None:
        self.batch = batch.to(device)
        rng = torch.Generator().manual_seed(seed + 7919)
        n = len(batch)
        self.z = torch.randn(n, generator_cfg.z_dim, generator=rng).to(device)
        self.ca_noise = torch.randn(n, generator_cfg.condition_dim, generator=rng).to(device)
        with torch.no_grad():
            self.words, self.sentence = text_encoder(self.batch.captions, self.batch.lengths)

    @torch.no_grad()
    def draw(self, generator: Generator):
        mode = generator.training
        generator.eval()
        try:
            return generator(self.z, self.sentence, self.words, self.batch.mask, ca_noise=self.ca_noise)
        finally:
            generator.train(mode)

    def write(self, generator: Generator, samples_dir: Path, step: int, stats: StatsSink, vocab: Vocabulary) -> None:
        from torchvision.utils import make_grid

        out = self.draw(generator)
        n = len(self.batch)
        nrow = max(1, int(n**0.5))
        grid = make_grid((out.images[-1].float().cpu() + 1) / 2, nrow=nrow, padding=2, pad_value=1.0)
        atomic_write_bytes(samples_dir / f"fakes-{step:08d}.png", _png(grid))
        stats.add_image("samples/fakes", grid, step)
        if out.attention:
            k = min(4, n)
            tokens = [vocab.decode(self.batch.captions[j, : int(self.batch.lengths[j])].tolist()) for j in range(k)]
            try:
                data = attention_png([im[:k] for im in out.images], [a[:k] for a in out.attention], tokens)
            except (ImportError, AttributeError, TypeError, ValueError) as exc:  # a figure is not worth a crash
                log.debug("no attention figure at step %d: %s", step, exc)
                return
            atomic_write_bytes(samples_dir / f"attention-{step:08d}.png", data)
            from PIL import Image

            arr = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).copy()
            stats.add_image("samples/attention", torch.from_numpy(arr).permute(2, 0, 1).float() / 255, step)


# ------------------------------------------------------------------------------------------------ the loop


def train_gan(
    preset: Preset | None,  # resolved settings; None: the checkpoint's (resume=); encoder sections come from the encoders
    *,
    damsm: str | Path | None = None,  # DAMSM run or model folder with text_encoder/, image_encoder/, vocab.json
    original_text_encoder: str | Path | None = None,  # or the original release's text_encoder*.pth ...
    original_image_encoder: str | Path | None = None,  # ... and image_encoder*.pth (vocabulary from the dataset)
    run_dir: str | Path | None = None,  # write here (created if missing); None: a new numbered folder in runs_dir
    runs_dir: str | Path = "runs",  # parent of numbered run folders
    resume: str | Path | None = None,  # a run folder or state file to continue; its config must match
    reshard: bool = False,  # resume a state of another number of processes (not exact: state.restore_position)
    device: str | torch.device | None = None,  # None/"auto": CUDA, else MPS, else CPU
    max_steps: int | None = None,  # stop after this many steps in total (None: the preset's max_steps/epochs)
    max_seconds: float | None = None,  # stop after this many seconds of this call (None: no time limit)
    train_set: Dataset | None = None,  # None: build_dataset(preset.data, "train") with the encoders' vocabulary
    sample_set: Dataset | None = None,  # captions of the sample grids; None: the "test" split in eval mode
    num_samples: int = 16,  # images per sample grid
    keep_checkpoints: int = 3,  # newest state files kept in checkpoints/ (0: all)
    progress: bool = True,  # tqdm bar (on a terminal)
    tensorboard: bool = True,  # TensorBoard events when tensorboard is installed
    callback: Callable[[StepInfo], None] | None = None,  # called after every step (tests, fault injection)
    adapt_threads: bool = False,  # on one CPU process: fewer threads while other work competes (ThreadTuner)
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
    state = load_state(resume, "gan") if resume is not None else None
    if state is not None:
        check_resumable(state, dist_info.world_size, reshard)
    if state is None and preset is None:
        raise ValueError("train_gan needs a preset, or resume= to take the one of a checkpoint")
    if state is not None:
        run_dir = Path(run_dir) if run_dir is not None else run_dir_of(Path(state["path"]))
        own = Path(run_dir) / "model"  # the frozen encoders, exported when the run started
        given = damsm is not None or bool(original_text_encoder and original_image_encoder)
        if (own / "text_encoder").is_dir():
            if given:
                log.warning("resuming: the run's own DAMSM encoders in %s are used, not the ones given", own)
            damsm, original_text_encoder, original_image_encoder = own, None, None
        elif not given:
            raise UserError(
                f"{run_dir} has no model/ folder with the frozen DAMSM encoders this run was trained with; "
                "restore it, or give those encoders again (--damsm, or the --original-* files)"
            )

    # Load the frozen DAMSM encoders and the training data (captions encoded with their vocabulary).
    vocab_hint = Vocabulary(state["vocab"]) if state is not None else None
    if damsm is None and preset is not None:
        # The original release's encoders come without a vocabulary: the dataset's (captions.pickle) is theirs.
        if train_set is None:
            sizes = [c.image_size for c in discriminator_configs(preset)]
            train_set = build_dataset(preset.data, "train", sizes, vocab=None, train=True, progress=progress)
        vocab_hint = train_set.vocab
    text_encoder, image_encoder, vocab = load_encoders(
        damsm, original_text_encoder=original_text_encoder, original_image_encoder=original_image_encoder, vocab=vocab_hint
    )
    encoders_source = str(damsm or original_text_encoder)
    fingerprint = encoder_fingerprint(text_encoder, image_encoder)
    if state is not None and state.get("encoders_sha256") not in (None, fingerprint):
        raise UserError(
            f"the DAMSM encoders given ({encoders_source}) are not the ones this run was trained with (their "
            "weights differ), so the generator would be conditioned on other text features; give the encoders "
            f"the run started with (\"encoders\" in {run_dir_of(Path(state['path'])) / 'config.json'})"
        )
    if state is not None:
        saved = preset_from_state(state)
        preset = saved if preset is None else check_resume_config(saved, _resolve_gan_preset(preset, text_encoder, image_encoder), state["path"], reshard)
    preset = _resolve_gan_preset(preset, text_encoder, image_encoder)
    check_preset(preset)  # every setting in range, before any work
    cfg = preset.gan_train
    seed_everything(cfg.seed + dist_info.rank)
    d_cfgs = discriminator_configs(preset)
    image_sizes = [c.image_size for c in d_cfgs]
    if train_set is None:
        train_set = build_dataset(preset.data, "train", image_sizes, vocab=vocab, train=True, progress=progress)
    if vocab is None:
        vocab = train_set.vocab
    check_caption_vocabulary(train_set, encoders_source)
    preset = resolve_vocab_size(preset, vocab)
    steps_per_epoch = batches_per_epoch(train_set, cfg.batch_size, dist_info.world_size)
    total_steps = max_steps if max_steps is not None else cfg.max_steps
    if total_steps is None:
        total_steps = cfg.epochs * steps_per_epoch
    text_encoder.to(dev)
    image_encoder.to(dev)

    # Build G, its EMA copy, the Ds and the optimizers. Same initial weights on every process.
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
    scaler = make_grad_scaler(dev, mp)
    step = epoch = batch_in_epoch = 0
    if state is not None:
        generator.load_state_dict(state["models"]["generator"])
        generator_ema.load_state_dict(state["models"]["generator_ema"])
        for i, d in enumerate(discriminators):
            d.load_state_dict(state["models"][f"discriminator{i}"])
        opt_g.load_state_dict(state["optimizers"]["generator"])
        for i, o in enumerate(opt_d):
            o.load_state_dict(state["optimizers"][f"discriminator{i}"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        step, epoch, batch_in_epoch = restore_position(state, dist_info.rank, dist_info.world_size, cfg.seed, cfg.batch_size)

    # Wrap for distributed training (one forward per backward: G itself, and the Eq. 5 objective per D).
    g_forward: nn.Module = generator
    d_objectives: list[nn.Module] = [
        DiscriminatorObjective(d, preset.gan_loss.uncond_weight, joint_batches=cfg.fast_kernels) for d in discriminators
    ]
    if dist_info.distributed:
        ids = [dev] if dev.type == "cuda" else None
        g_forward = nn.parallel.DistributedDataParallel(generator, device_ids=ids)
        d_objectives = [nn.parallel.DistributedDataParallel(o, device_ids=ids) for o in d_objectives]
    if cfg.compile:
        g_forward = torch.compile(g_forward)
        d_objectives = [torch.compile(o) for o in d_objectives]
    loss = GANLoss(
        generator=g_forward,
        discriminators=discriminators,
        d_objectives=d_objectives,
        image_encoder=judge_encoder,
        gan_cfg=preset.gan_loss,
        damsm_cfg=preset.damsm_loss,
        autocast=lambda: autocast(dev, mp),
        scaler=scaler,
        need_attention=not cfg.fast_kernels,
    )
    phases = [(name, opt) for name, opt in zip(loss.phases, opt_d + [opt_g])]

    # Create the run folder (rank 0), write the config, the encoders and the fixed sample captions.
    main = dist_info.is_main
    sampler = None
    if main and num_samples > 0 and sample_set is None:  # before the run folder: a data error leaves none
        try:
            sample_set = build_dataset(preset.data, "test", image_sizes, vocab=vocab, train=False, progress=progress)
        except EmptySplitError as exc:
            log.warning("%s: the sample grids show captions and images of the training split instead", exc)
            sample_set = build_dataset(preset.data, "train", image_sizes, vocab=vocab, train=False, progress=progress)
    folder = RunFolder(created=main and run_dir is None)  # a failed start removes a folder it made
    try:
        if main:
            if run_dir is None:
                run_dir = make_run_dir(runs_dir, f"{preset.data.dataset}-attngan")
            run_dir = folder.take(run_dir, resumed=state is not None)  # locked: one process per run folder
            if state is not None:
                log.info("resuming GAN training from %s (step %d, epoch %d)", state["path"], step, epoch)
            for sub in ("checkpoints", "samples"):
                (run_dir / sub).mkdir(parents=True, exist_ok=True)
            if state is not None:
                truncate_stats(run_dir, step)
            else:
                _export(run_dir, vocab, text_encoder, image_encoder, preset, None, [], step)
            write_run_config(
                run_dir, preset, kind="gan", device=str(dev), world_size=dist_info.world_size, max_steps=total_steps,
                mixed_precision=mp, encoders=_encoders_record(run_dir, state, encoders_source),
            )  # fmt: skip
            if num_samples > 0:
                from ..data.base import collate_batch

                n = min(num_samples, len(sample_set))
                fixed = collate_batch([sample_set[i] for i in range(n)])
                sampler = _Sampler(fixed, text_encoder, preset.generator, cfg.seed, dev)
                atomic_write_text(run_dir / "samples" / "captions.txt", "".join(t + "\n" for t in (fixed.texts or [])))
                if state is None:
                    from torchvision.utils import make_grid

                    reals = make_grid((fixed.images[-1] + 1) / 2, nrow=max(1, int(n**0.5)), padding=2, pad_value=1.0)
                    atomic_write_bytes(run_dir / "samples" / "reals.png", _png(reals))
        run_dir = Path(broadcast_object(str(run_dir) if run_dir is not None else None, dist_info))
        stats = StatsSink(
            run_dir if main else None,
            total_steps,
            start_step=step,
            images_per_step=cfg.batch_size * dist_info.world_size,
            progress=progress,
            tensorboard=tensorboard,
            name="attngan",
        )
        stats.restore(state.get("stats") if state is not None else None)
    except BaseException:  # Ctrl-C or an error while setting up: no empty run folder is left behind
        folder.release(failed_before_training=True)
        raise
    if main and step >= total_steps:
        log.info(
            "AttnGAN training in %s: already at step %d of %d, nothing to train; to go on, give a "
            "larger --max-steps",
            run_dir, step, total_steps,
        )  # fmt: skip
    elif main:
        log.info(
            "AttnGAN training in %s: steps %d to %d of %d images (%d steps per epoch), stages %s, on %s%s",
            run_dir, step + 1, total_steps, cfg.batch_size * dist_info.world_size, steps_per_epoch, image_sizes, dev,
            f" ({mp})" if mp != "no" else "",
        )  # fmt: skip

    saving = False  # True while a snapshot is written: an interrupt then keeps the last complete one

    def snapshot() -> Path | None:
        nonlocal saving
        saving = True
        rngs = gather_rng_states(dist_info)
        if not main:
            saving = False
            return None
        models = {"generator": generator.state_dict(), "generator_ema": generator_ema.state_dict()}
        models |= {f"discriminator{i}": d.state_dict() for i, d in enumerate(discriminators)}
        optimizers = {"generator": opt_g.state_dict()} | {f"discriminator{i}": o.state_dict() for i, o in enumerate(opt_d)}
        path = save_state(
            run_dir,
            {
                "kind": "gan",
                "config": to_dict(preset),
                "vocab": list(vocab.itos),
                "step": step,
                "epoch": epoch,
                "batch_in_epoch": batch_in_epoch,
                "models": models,
                "optimizers": optimizers,
                "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                "rng": rngs,
                "world_size": dist_info.world_size,
                "encoders_sha256": fingerprint,  # a resumed run must condition on the same text features
                "stats": stats.pending(),  # the scalars of the log interval under way
            },
            keep_checkpoints,
        )
        _export(run_dir, vocab, text_encoder, image_encoder, preset, generator_ema, discriminators, step)
        saving = False
        return path

    # Train.
    start_time = time.perf_counter()
    last_checkpoint: Path | None = Path(state["path"]) if state is not None else None
    saved_step = step if state is not None else -1
    stopped_by = "max_steps" if max_steps is not None or cfg.max_steps is not None else "epochs"
    in_step = False
    last: dict[str, Any] = {}
    modules = {"generator": generator, "generator_ema": generator_ema} | {f"discriminator{i}": d for i, d in enumerate(discriminators)}
    hint = "Lower gan_train.g_lr/d_lr, try gan_loss.damsm_lambda or another seed, or check the data."
    batch_bytes = image_batch_bytes(cfg.batch_size, image_sizes)
    workers = loader_workers(preset.data.workers, dev, dist_info.world_size, batch_bytes)
    batches = None  # the current epoch's batches: closed (its workers shut down) however training ends
    tuner = ThreadTuner(enabled=adapt_threads and dev.type == "cpu" and dist_info.world_size == 1)
    guard: InterruptGuard | None = None  # bound by the with below; read when an interrupt ends training
    try:
        with InterruptGuard() as guard, cudnn_autotuner(dev.type == "cuda" and cfg.fast_kernels):
            generator.train()
            for d in discriminators:
                d.train()
            done = step >= total_steps
            while not done:
                batches = iterate_batches(epoch_loader(
                    train_set, cfg.batch_size, epoch, batch_in_epoch, seed=cfg.seed,
                    rank=dist_info.rank, world_size=dist_info.world_size, workers=workers, pin_memory=dev.type == "cuda",
                ))  # fmt: skip
                for batch in batches:
                    # Fetch training data; encode the captions with the frozen text encoder.
                    in_step = True
                    step_started = time.perf_counter()
                    lengths_cpu = batch.lengths  # pack_padded_sequence wants them on the CPU: no copy back
                    batch = batch.to(dev, non_blocking=True)
                    with torch.no_grad():
                        words, sentence = text_encoder(batch.captions, lengths_cpu)  # (B, D, T), (B, D)
                    text = TextFeatures(words.detach(), sentence.detach())
                    if cfg.compile:  # one word count for every batch: compiled code without dynamic shapes
                        batch, text = pad_words(batch, text, preset.data.words_num)
                    g_step = (step + 1) % cfg.d_steps == 0

                    # Generate: G runs once; the D phases see its images detached.
                    fake = loss.generate(batch, text, with_grad=g_step)

                    # Execute training phases: D0 .. Dk, then G. The losses stay on the device until the
                    # step is queued: one host-device synchronisation (and one collective) per step.
                    values: dict[str, torch.Tensor] = {}
                    for name, opt in phases:
                        if name == "G" and not g_step:
                            continue
                        opt.zero_grad(set_to_none=True)
                        values |= loss.accumulate_gradients(name, batch, text, fake)
                        scaler.step(opt)
                    scaler.update()
                    time_up = max_seconds is not None and time.perf_counter() - start_time >= max_seconds
                    flags = (_STOP if guard.requested else 0) | (_TIME_UP if time_up else 0)
                    scalars, flags = all_reduce_mean(values, dist_info, flags)
                    # A non-finite loss stops training before anything is saved: the weights in memory may
                    # have taken the step, the checkpoints on disk have not.
                    check_finite(scalars, step + 1, last_checkpoint, hint)

                    # Update the EMA of G's parameters.
                    if g_step:
                        update_ema(generator_ema, generator, cfg.ema_decay)
                    step += 1
                    batch_in_epoch += 1
                    in_step = False
                    tuner.step(time.perf_counter() - step_started)
                    del fake

                    # Report progress.
                    stats.update(step, scalars)
                    if step % cfg.log_every == 0 or step == total_steps:
                        last = stats.tick(step, epoch, {"lr/G": opt_g.param_groups[0]["lr"], "lr/D": opt_d[0].param_groups[0]["lr"]})

                    # Save samples and a snapshot.
                    if main and sampler is not None and (step % cfg.sample_every == 0 or step == total_steps):
                        sampler.write(generator_ema, run_dir / "samples", step, stats, vocab)
                    if step % cfg.snapshot_every == 0:
                        last_checkpoint = snapshot() or last_checkpoint
                        saved_step = step
                    call_hook(callback, StepInfo(step, epoch, scalars, modules, run_dir, dist_info.rank))
                    if flags & _STOP:
                        raise StopAgreed
                    if step >= total_steps or flags & _TIME_UP:
                        stopped_by = "time" if flags & _TIME_UP and step < total_steps else stopped_by
                        done = True
                        break
                else:
                    epoch += 1
                    batch_in_epoch = 0

        # Save the final state and export the model folder.
        if saved_step != step:
            last_checkpoint = snapshot() or last_checkpoint
        if main:
            if sampler is not None and step % cfg.sample_every != 0 and step != total_steps:
                sampler.write(generator_ema, run_dir / "samples", step, stats, vocab)
            log.info("AttnGAN training done at step %d (%s); model in %s", step, stopped_by, run_dir / "model")
        return TrainResult(run_dir, step, epoch, stopped_by, last_checkpoint if main else None, run_dir / "model" if main else None, last, total_steps)
    except KeyboardInterrupt as exc:
        if isinstance(exc, TrainingInterrupted):
            raise
        stopped = interruption(
            exc, "AttnGAN training", "train", in_step=in_step, saving=saving, step=step, saved_step=saved_step,
            distributed=dist_info.distributed, snapshot=snapshot, last_checkpoint=last_checkpoint, run_dir=run_dir,
            world_size=dist_info.world_size,
        )  # fmt: skip
        stopped.signum = guard.signum if guard is not None else None
        if main:
            log.warning(stopped.message)
        raise stopped from None
    except NonFiniteLossError:
        if main:
            log.error("stopped: a loss is not finite (see the error message)")
        raise
    except (OSError, DiskFullError, RuntimeError) as exc:  # a full disk, a lost process: where it stopped, how to go on
        failed = failure_of_environment(exc, step, last_checkpoint, "train", run_dir, dist_info.world_size)
        if failed is None:
            raise
        stats.log_to_file(f"stopped: {failed}")
        raise failed from exc
    finally:
        if batches is not None:
            batches.close()
        tuner.restore()
        stats.close()
        folder.release(failed_before_training=step == 0 and sys.exc_info()[0] is not None)
        shutdown_distributed(dist_info)


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
