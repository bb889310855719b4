"""DAMSM pre-training (Sec. 3.2; the original ``pretrain_DAMSM.py``): one loop, read top to bottom.

The text encoder (bi-LSTM) and the image encoder (its projections W, W-bar of Eq. 6, plus the small
backbone when used; a pretrained Inception-v3 stays frozen) are trained together on L_DAMSM (Eq. 14):
Adam(lr, betas (0.5, 0.999)), gradient-norm clipping of the text encoder at 0.25, the learning rate
multiplied by 0.98 after every epoch while it is above a tenth of its start value, a validation loss on
the test split after every epoch, and resumable checkpoints. The run exports a model folder
(``text_encoder/``, ``image_encoder/``, ``vocab.json``) that ``attngan train --damsm`` takes.

Difference from the original, on purpose: the original re-created the Adam optimizer every epoch
(to set the decayed learning rate), which threw away Adam's moment estimates each epoch. That was a
defect; here the optimizer is created once and the learning rate is changed in its parameter groups.
The original also ran the frozen Inception's BatchNorm in train mode (batch statistics, drifting running
statistics); here it stays in eval mode unless ``damsm_train.backbone_batch_stats`` asks for the original's way.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ..checkpoint import inception_weights_state
from ..config import DAMSMTrainConfig, Preset, check_preset
from ..data.registry import build_dataset
from ..errors import CheckpointError, DataError
from ..nn import ImageEncoder, TextEncoder
from ..nn.modes import eval_mode
from ..text import Vocabulary
from .data import batches_per_epoch, epoch_loader
from .devices import seed_everything
from .distributed import init_distributed
from .encoders import resolve_vocab_size
from .export import export_model
from .harness import LoopNames, StepInfo, TrainingRun, planned_steps, state_to_resume
from .loss import DAMSMLoss, DAMSMObjective
from .outcomes import TrainResult
from .state import (
    check_resume_config,
    preset_from_state,
    restore_position,
    run_dir_of,
    save_state,
    write_run_config,
)

__all__ = ["train_damsm", "evaluate_damsm"]

log = logging.getLogger(__name__)

LOOP = LoopNames(
    kind="damsm", title="DAMSM pre-training", resuming="DAMSM training", command="pretrain-damsm", label="damsm"
)


@torch.no_grad()
def evaluate_damsm(
    objective: DAMSMObjective,
    dataset: Dataset,
    batch_size: int,
    max_batches: int = 50,  # the original evaluated at most 51 test batches
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Mean L_DAMSM terms (eval mode) over the first ``max_batches`` batches of ``dataset``.

    The batches are drawn in one fixed shuffled order (the same at every call, so values are comparable
    across a run), as the original's shuffled test loader: real test splits are sorted by class, and with
    class masking (captions of the same class are not negatives) a batch of one class would have no
    negative caption and a loss of 0.

    Also reports ``val/top1``: how often an image's best-scoring caption (sentence cosine) in its batch is
    its own, a quick retrieval accuracy (chance = 1 / batch size).
    """
    batch_size = min(batch_size, len(dataset))
    if batch_size < 2:
        return {}
    loader = epoch_loader(dataset, batch_size, epoch=0, seed=0, shuffle=True)
    sums: dict[str, float] = {}
    n = 0
    with eval_mode(objective):
        for i, batch in enumerate(loader):
            if i >= max_batches:
                break
            batch = batch.to(device)
            total, w1, w2, s1, s2 = objective(batch.images[-1], batch.captions, batch.lengths, batch.class_ids)
            _, sentence = objective.text_encoder(batch.captions, batch.lengths)
            _, image_vectors = objective.image_encoder(batch.images[-1])
            sim = torch.nn.functional.normalize(image_vectors, dim=1) @ torch.nn.functional.normalize(sentence, dim=1).t()
            top1 = (sim.argmax(dim=1) == torch.arange(len(batch), device=sim.device)).float().mean()
            for k, v in {"val/damsm": total, "val/w1": w1, "val/w2": w2, "val/s1": s1, "val/s2": s2, "val/top1": top1}.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            n += 1
    return {k: v / max(n, 1) for k, v in sums.items()}


def _folded_encoder(image_encoder: ImageEncoder) -> ImageEncoder:
    """The image encoder with its frozen Inception's (eval-mode) BatchNorm folded into the convs: the same
    outputs up to float rounding, fewer ops. The trained projections W and W-bar of Eq. 6 are shared with
    ``image_encoder`` (same parameter objects), which stays the one that is saved and exported."""
    from ..nn.fast import fold_batchnorm

    folded = fold_batchnorm(image_encoder).requires_grad_(False)
    folded.emb_features = image_encoder.emb_features
    folded.emb_cnn_code = image_encoder.emb_cnn_code
    return folded.train(image_encoder.training)


def train_damsm(
    preset: Preset | None,  # resolved settings (text_encoder, image_encoder, damsm_loss, data, damsm_train); None: from --resume
    *,
    run_dir: str | Path | None = None,  # write here (created if missing); None: a new numbered folder in runs_dir
    runs_dir: str | Path = "runs",  # parent of numbered run folders
    resume: str | Path | None = None,  # a run folder or state file to continue; its config must match
    reshard: bool = False,  # resume a state of another number of processes (not exact: state.restore_position)
    device: str | torch.device | None = None,  # None/"auto": CUDA, else MPS, else CPU
    max_steps: int | None = None,  # stop after this many steps in total (None: the preset's max_steps/epochs)
    max_seconds: float | None = None,  # stop after this many seconds of this call (None: no time limit)
    train_set: Dataset | None = None,  # None: build_dataset(preset.data, "train")
    val_set: Dataset | None | bool = None,  # None: the "test" split; False: no validation
    val_batches: int = 50,  # validation batches per evaluation
    backbone_weights: Any = "imagenet",  # Inception-v3 weights when image_encoder.backbone == "inception"
    keep_checkpoints: int = 3,  # newest state files kept in checkpoints/ (0: all)
    progress: bool = True,  # tqdm bar (on a terminal)
    tensorboard: bool = True,  # TensorBoard events when tensorboard is installed
    callback: Callable[[StepInfo], None] | None = None,  # called after every step (tests, fault injection)
    adapt_threads: bool = False,  # on one CPU process: fewer threads while other work competes (ThreadTuner)
) -> TrainResult:
    """Pre-train the DAMSM text and image encoders (Eq. 7-14). Returns where the run and its model are.

    Raises NonFiniteLossError (a UserError) when a loss becomes NaN/inf, keeping the last verified checkpoint,
    and TrainingInterrupted (a KeyboardInterrupt) after saving a checkpoint on Ctrl-C.
    """
    # Set up processes, device and the state to continue from.
    dist_info, dev = init_distributed(device)
    state = state_to_resume(resume, "damsm", dist_info.world_size, reshard)
    if state is None and preset is None:
        raise ValueError("train_damsm needs a preset, or resume= to take the one of a checkpoint")
    if state is not None:
        preset = _resumed_preset(preset, state, reshard)
        run_dir = Path(run_dir) if run_dir is not None else run_dir_of(Path(state["path"]))
    check_preset(preset)  # every setting in range, before any work
    cfg = preset.damsm_train
    seed_everything(cfg.seed)

    # Load training data. DAMSM sees real images at the image encoder's input size (the original: 299).
    image_sizes = [preset.image_encoder.input_size]
    train_set, val_set = _damsm_data(preset, state, train_set, val_set, image_sizes, progress)
    vocab = train_set.vocab
    preset = resolve_vocab_size(preset, vocab)
    steps_per_epoch = batches_per_epoch(train_set, cfg.batch_size, dist_info.world_size)
    total_steps = planned_steps(max_steps, cfg, steps_per_epoch)

    # Build networks and the optimizer (created once: the original re-created it every epoch).
    torch.manual_seed(cfg.seed)
    text_encoder, image_encoder = _damsm_encoders(preset, backbone_weights, dev)
    objective = DAMSMObjective(text_encoder, image_encoder, preset.damsm_loss)
    optimizer = torch.optim.Adam([p for p in objective.parameters() if p.requires_grad], lr=cfg.lr, betas=tuple(cfg.betas))
    if dist_info.distributed:  # same weights everywhere, but each process its own dropout masks
        torch.manual_seed(cfg.seed + dist_info.rank)
    position = (0, 0, 0)  # step, epoch, batch in the epoch
    if state is not None:
        text_encoder.load_state_dict(state["models"]["text_encoder"])
        image_encoder.load_state_dict(state["models"]["image_encoder"])
        optimizer.load_state_dict(state["optimizers"]["damsm"])
        position = restore_position(state, dist_info.rank, dist_info.world_size, cfg.seed, cfg.batch_size)
    if cfg.fast_kernels and image_encoder.frozen_backbone and not cfg.backbone_batch_stats:
        objective.image_encoder = _folded_encoder(image_encoder)  # eval-mode BatchNorm only
    trained: nn.Module = objective
    if dist_info.distributed:
        trained = nn.parallel.DistributedDataParallel(objective, device_ids=[dev] if dev.type == "cuda" else None)
    loss = DAMSMLoss(trained)

    # The run: its folder (rank 0 writes config.json), position, snapshots and how it ends.
    until_epochs = max_steps is None and cfg.max_steps is None
    run = TrainingRun(
        LOOP, dist_info, dev, state, position, total_steps=total_steps, stopped_by="epochs" if until_epochs else "max_steps",
        max_seconds=max_seconds, snapshot_every=cfg.snapshot_every, keep_checkpoints=keep_checkpoints,
        nonfinite_hint="Lower damsm_train.lr, or check the data.", callback=callback, adapt_threads=adapt_threads,
    )  # fmt: skip
    run.save = lambda rngs: save_state(
        run.run_dir,
        run.state_record(
            preset, vocab, rngs, models={"text_encoder": text_encoder.state_dict(), "image_encoder": image_encoder.state_dict()},
            optimizers={"damsm": optimizer.state_dict()},
        ),
        keep_checkpoints,
    )  # fmt: skip
    with run.folder_setup(
        run_dir, runs_dir, preset.data.dataset, subdirs=("checkpoints",), images_per_step=cfg.batch_size * dist_info.world_size,
        steps_per_epoch=steps_per_epoch, setting=f" on {dev}", progress=progress, tensorboard=tensorboard,
    ) as folder:  # fmt: skip
        if folder is not None:
            write_run_config(folder, preset, kind="damsm", device=str(dev), world_size=dist_info.world_size, max_steps=total_steps)

    # Train.
    modules = {"text_encoder": text_encoder, "image_encoder": image_encoder}
    validate = functools.partial(_validate, run, objective, val_set, cfg.batch_size, val_batches)
    with run:
        with run.interruptible():
            objective.train()
            for batch in run.batches(
                train_set, cfg.batch_size, cfg.seed, workers=preset.data.workers, image_sizes=image_sizes,
                epochs=cfg.epochs if until_epochs else None, on_epoch_end=lambda epoch: _end_epoch(validate, optimizer, cfg, epoch),
            ):  # fmt: skip
                # Execute the training phase: L_DAMSM, clip the text encoder's gradients, step.
                batch = batch.to(dev)
                optimizer.zero_grad(set_to_none=True)
                scalars = run.reduce_losses(loss.accumulate_gradients("DAMSM", batch))
                torch.nn.utils.clip_grad_norm_(text_encoder.parameters(), cfg.rnn_grad_clip)
                optimizer.step()
                run.step_done()

                # Report progress; save a snapshot when one is due.
                scalars["lr"] = optimizer.param_groups[0]["lr"]
                run.stats.update(run.step, scalars)
                if run.step % cfg.log_every == 0 or run.step == run.total_steps:
                    run.stats.tick(run.step, run.epoch)
                run.end_step(scalars, modules)

        # Save the final state, validate and export the model folder.
        run.save_last_step()
        val, model_dir = {}, None
        if run.main:
            val = validate("final validation")
            model_dir = export_model(
                run.run_dir / "model",
                vocab,
                [("text_encoder", text_encoder, preset.text_encoder), ("image_encoder", image_encoder, preset.image_encoder)],
                step=run.step,
            )
            log.info("DAMSM pre-training done at step %d (%s); encoders in %s", run.step, run.stopped_by, model_dir)
        return run.result(model_dir, val)


def _resumed_preset(preset: Preset | None, state: dict[str, Any], reshard: bool) -> Preset:
    """The settings of the state resumed from; given ones must match them (check_resume_config)."""
    saved = preset_from_state(state)
    if preset is None:
        return saved
    return check_resume_config(saved, resolve_vocab_size(preset, Vocabulary(state["vocab"])), state["path"], reshard)


def _damsm_data(
    preset: Preset,
    state: dict[str, Any] | None,
    train_set: Dataset | None,
    val_set: Dataset | None | bool,
    image_sizes: list[int],
    progress: bool,
) -> tuple[Dataset, Dataset | bool]:
    """The training split (with the vocabulary of the state resumed from) and the validation split (False:
    none). Captions are cut to damsm_train.words_num where it is set (the original's coco DAMSM: 15 words)."""
    cfg = preset.damsm_train
    data_config = preset.data if cfg.words_num is None else dataclasses.replace(preset.data, words_num=cfg.words_num)
    if train_set is None:
        vocab = Vocabulary(state["vocab"]) if state is not None else None
        train_set = build_dataset(data_config, "train", image_sizes, vocab=vocab, train=True, progress=progress)
    if val_set is None:
        try:
            val_set = build_dataset(data_config, "test", image_sizes, vocab=train_set.vocab, train=False, progress=progress)
        except DataError as exc:
            log.warning("no validation: the test split is not usable (%s)", exc)
            val_set = False
    return train_set, val_set


def _damsm_encoders(preset: Preset, backbone_weights: Any, dev: torch.device) -> tuple[TextEncoder, ImageEncoder]:
    """The text encoder and the image encoder to train (with Inception-v3 weights for its frozen backbone)."""
    cfg = preset.damsm_train
    text_encoder = TextEncoder(preset.text_encoder).to(dev)
    weights = None
    if preset.image_encoder.backbone == "inception" and backbone_weights is not None:
        weights = backbone_weights if isinstance(backbone_weights, dict) else inception_weights_state(backbone_weights)
    try:
        image_encoder = ImageEncoder(preset.image_encoder, backbone_weights=weights).to(dev)
    except ValueError as exc:  # weights of another network
        source = backbone_weights if isinstance(backbone_weights, (str, os.PathLike)) else "the given state dict"
        raise CheckpointError(f"{source}: {exc}") from exc
    image_encoder.backbone_batch_stats = cfg.backbone_batch_stats
    if cfg.backbone_batch_stats and not image_encoder.frozen_backbone:
        log.warning(
            "damsm_train.backbone_batch_stats changes nothing here: it is for a frozen Inception backbone, and "
            "this image encoder's backbone trains (with batch statistics) anyway"
        )
    return text_encoder, image_encoder


def _validate(
    run: TrainingRun, objective: DAMSMObjective, val_set: Dataset | bool, batch_size: int, val_batches: int, what: str
) -> dict[str, float]:
    """Rank 0: the validation losses, logged and recorded in stats.jsonl ({} without validation or elsewhere)."""
    if val_set is False or not run.main:
        return {}
    val = evaluate_damsm(objective, val_set, batch_size, val_batches, run.device)
    if val:
        log.info("%s: %s", what, " ".join(f"{k} {v:.4g}" for k, v in val.items()))
        run.stats.record(run.step, run.epoch, val)
    return val


def _end_epoch(validate: Callable[[str], dict[str, float]], optimizer: torch.optim.Optimizer, cfg: DAMSMTrainConfig, epoch: int) -> None:
    """End of an epoch: validation (rank 0), then the original's decay (x0.98 while lr > lr0 / 10)."""
    validate(f"epoch {epoch} validation")
    for group in optimizer.param_groups:
        if group["lr"] > cfg.lr / 10:
            group["lr"] *= cfg.lr_decay
