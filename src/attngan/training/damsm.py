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
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ..checkpoint import inception_weights_state
from ..config import Preset, check_preset, to_dict
from ..data.registry import build_dataset
from ..errors import CheckpointError, DataError, DiskFullError
from ..nn import ImageEncoder, TextEncoder
from ..text import Vocabulary
from .common import (
    NonFiniteLossError,
    RunFolder,
    StepInfo,
    StopAgreed,
    TrainingInterrupted,
    TrainResult,
    call_hook,
    check_finite,
    export_model,
    failure_of_environment,
    interruption,
    resolve_vocab_size,
)
from .data import batches_per_epoch, epoch_loader, image_batch_bytes, iterate_batches, loader_workers
from .loss import DAMSMLoss, DAMSMObjective
from .runtime import (
    InterruptGuard,
    ThreadTuner,
    all_reduce_mean,
    broadcast_object,
    eval_mode,
    gather_rng_states,
    init_distributed,
    seed_everything,
    shutdown_distributed,
)
from .state import (
    check_resumable,
    check_resume_config,
    load_state,
    make_run_dir,
    preset_from_state,
    restore_position,
    run_dir_of,
    save_state,
    truncate_stats,
    write_run_config,
)
from .stats import StatsSink

__all__ = ["train_damsm", "evaluate_damsm"]

log = logging.getLogger(__name__)

_STOP, _TIME_UP = 1, 2  # bits of the stop flags shared between processes


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
    state = load_state(resume, "damsm") if resume is not None else None
    if state is not None:
        check_resumable(state, dist_info.world_size, reshard)
    if state is None and preset is None:
        raise ValueError("train_damsm needs a preset, or resume= to take the one of a checkpoint")
    if state is not None:
        saved = preset_from_state(state)
        vocab = Vocabulary(state["vocab"])
        preset = saved if preset is None else check_resume_config(saved, resolve_vocab_size(preset, vocab), state["path"], reshard)
        run_dir = Path(run_dir) if run_dir is not None else run_dir_of(Path(state["path"]))
    check_preset(preset)  # every setting in range, before any work
    cfg = preset.damsm_train
    total_steps = max_steps if max_steps is not None else cfg.max_steps
    seed_everything(cfg.seed)

    # Load training data. DAMSM sees real images at the image encoder's input size (the original: 299).
    # Captions are cut to damsm_train.words_num where it is set (the original's coco DAMSM: 15 words).
    image_sizes = [preset.image_encoder.input_size]
    data_config = preset.data if cfg.words_num is None else dataclasses.replace(preset.data, words_num=cfg.words_num)
    if train_set is None:
        vocab_arg = Vocabulary(state["vocab"]) if state is not None else None
        train_set = build_dataset(data_config, "train", image_sizes, vocab=vocab_arg, train=True, progress=progress)
    vocab = train_set.vocab
    preset = resolve_vocab_size(preset, vocab)
    if val_set is None:
        try:
            val_set = build_dataset(data_config, "test", image_sizes, vocab=vocab, train=False, progress=progress)
        except DataError as exc:
            log.warning("no validation: the test split is not usable (%s)", exc)
            val_set = False
    steps_per_epoch = batches_per_epoch(train_set, cfg.batch_size, dist_info.world_size)
    if total_steps is None:
        total_steps = cfg.epochs * steps_per_epoch

    # Build networks and the optimizer (created once: the original re-created it every epoch).
    torch.manual_seed(cfg.seed)
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
    objective = DAMSMObjective(text_encoder, image_encoder, preset.damsm_loss)
    params = [p for p in objective.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas))
    if dist_info.distributed:  # same weights everywhere, but each process its own dropout masks
        torch.manual_seed(cfg.seed + dist_info.rank)

    # Restore the state when resuming; otherwise create the run folder.
    step = epoch = batch_in_epoch = 0
    if state is not None:
        text_encoder.load_state_dict(state["models"]["text_encoder"])
        image_encoder.load_state_dict(state["models"]["image_encoder"])
        optimizer.load_state_dict(state["optimizers"]["damsm"])
        step, epoch, batch_in_epoch = restore_position(state, dist_info.rank, dist_info.world_size, cfg.seed, cfg.batch_size)
    if cfg.fast_kernels and image_encoder.frozen_backbone and not cfg.backbone_batch_stats:
        objective.image_encoder = _folded_encoder(image_encoder)  # eval-mode BatchNorm only
    trained: nn.Module = objective
    if dist_info.distributed:
        trained = nn.parallel.DistributedDataParallel(objective, device_ids=[dev] if dev.type == "cuda" else None)
    loss = DAMSMLoss(trained)
    folder = RunFolder(created=dist_info.is_main and run_dir is None)  # a failed start removes a folder it made
    try:
        if dist_info.is_main:
            if run_dir is None:
                run_dir = make_run_dir(runs_dir, f"{preset.data.dataset}-damsm")
            run_dir = folder.take(run_dir, resumed=state is not None)  # locked: one process per run folder
            if state is not None:
                log.info("resuming DAMSM training from %s (step %d, epoch %d)", state["path"], step, epoch)
            (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
            if state is not None:
                truncate_stats(run_dir, step)
            write_run_config(run_dir, preset, kind="damsm", device=str(dev), world_size=dist_info.world_size, max_steps=total_steps)
        run_dir = Path(broadcast_object(str(run_dir) if run_dir is not None else None, dist_info))
        main = dist_info.is_main
        stats = StatsSink(
            run_dir if main else None,
            total_steps,
            start_step=step,
            images_per_step=cfg.batch_size * dist_info.world_size,
            progress=progress,
            tensorboard=tensorboard,
            name="damsm",
        )
        stats.restore(state.get("stats") if state is not None else None)
    except BaseException:  # Ctrl-C or an error while setting up: no empty run folder is left behind
        folder.release(failed_before_training=True)
        raise
    if main and step >= total_steps:
        log.info(
            "DAMSM pre-training in %s: already at step %d of %d, nothing to train; to go on, give a "
            "larger --max-steps",
            run_dir, step, total_steps,
        )  # fmt: skip
    elif main:
        log.info(
            "DAMSM pre-training in %s: steps %d to %d of %d images (%d steps per epoch) on %s",
            run_dir, step + 1, total_steps, cfg.batch_size * dist_info.world_size, steps_per_epoch, dev,
        )  # fmt: skip

    saving = False  # True while a snapshot is written: an interrupt then keeps the last complete one

    def snapshot() -> Path | None:
        nonlocal saving
        saving = True
        rngs = gather_rng_states(dist_info)
        if not main:
            saving = False
            return None
        path = save_state(
            run_dir,
            {
                "kind": "damsm",
                "config": to_dict(preset),
                "vocab": list(vocab.itos),
                "step": step,
                "epoch": epoch,
                "batch_in_epoch": batch_in_epoch,
                "models": {"text_encoder": text_encoder.state_dict(), "image_encoder": image_encoder.state_dict()},
                "optimizers": {"damsm": optimizer.state_dict()},
                "rng": rngs,
                "world_size": dist_info.world_size,
                "stats": stats.pending(),  # the scalars of the log interval under way
            },
            keep_checkpoints,
        )
        saving = False
        return path

    # Train.
    start_time = time.perf_counter()
    last_checkpoint: Path | None = Path(state["path"]) if state is not None else None
    saved_step = step if state is not None else -1
    val: dict[str, float] = {}
    stopped_by = "max_steps" if max_steps is not None or cfg.max_steps is not None else "epochs"
    in_step = False
    batch_bytes = image_batch_bytes(cfg.batch_size, image_sizes)
    workers = loader_workers(preset.data.workers, dev, dist_info.world_size, batch_bytes)
    batches = None  # the current epoch's batches: closed (its workers shut down) however training ends
    tuner = ThreadTuner(enabled=adapt_threads and dev.type == "cpu" and dist_info.world_size == 1)
    guard: InterruptGuard | None = None  # bound by the with below; read when an interrupt ends training
    try:
        with InterruptGuard() as guard:
            objective.train()
            done = step >= total_steps
            while not done:
                batches = iterate_batches(epoch_loader(
                    train_set, cfg.batch_size, epoch, batch_in_epoch, seed=cfg.seed,
                    rank=dist_info.rank, world_size=dist_info.world_size, workers=workers, pin_memory=dev.type == "cuda",
                ))  # fmt: skip
                for batch in batches:
                    # Fetch training data.
                    in_step = True
                    step_started = time.perf_counter()
                    batch = batch.to(dev)

                    # Execute the training phase: L_DAMSM, clip the text encoder's gradients, step.
                    optimizer.zero_grad(set_to_none=True)
                    values = loss.accumulate_gradients("DAMSM", batch)
                    time_up = max_seconds is not None and time.perf_counter() - start_time >= max_seconds
                    flags = (_STOP if guard.requested else 0) | (_TIME_UP if time_up else 0)
                    scalars, flags = all_reduce_mean(values, dist_info, flags)
                    check_finite(scalars, step + 1, last_checkpoint, "Lower damsm_train.lr, or check the data.")
                    torch.nn.utils.clip_grad_norm_(text_encoder.parameters(), cfg.rnn_grad_clip)
                    optimizer.step()
                    step += 1
                    batch_in_epoch += 1
                    in_step = False
                    tuner.step(time.perf_counter() - step_started)

                    # Report progress.
                    scalars["lr"] = optimizer.param_groups[0]["lr"]
                    stats.update(step, scalars)
                    if step % cfg.log_every == 0 or step == total_steps:
                        stats.tick(step, epoch)

                    # Save a snapshot.
                    if step % cfg.snapshot_every == 0:
                        last_checkpoint = snapshot() or last_checkpoint
                        saved_step = step
                    call_hook(
                        callback,
                        StepInfo(step, epoch, scalars, {"text_encoder": text_encoder, "image_encoder": image_encoder}, run_dir, dist_info.rank),
                    )
                    if flags & _STOP:
                        raise StopAgreed
                    if step >= total_steps or flags & _TIME_UP:
                        stopped_by = "time" if flags & _TIME_UP and step < total_steps else stopped_by
                        done = True
                        break
                else:
                    # End of the epoch: validation, then the original's decay (x0.98 while lr > lr0 / 10).
                    if main and val_set is not False:
                        val = evaluate_damsm(objective, val_set, cfg.batch_size, val_batches, dev)
                        if val:
                            log.info("epoch %d validation: %s", epoch, " ".join(f"{k} {v:.4g}" for k, v in val.items()))
                            stats.record(step, epoch, val)
                    for group in optimizer.param_groups:
                        if group["lr"] > cfg.lr / 10:
                            group["lr"] *= cfg.lr_decay
                    epoch += 1
                    batch_in_epoch = 0
                    if epoch >= cfg.epochs and max_steps is None and cfg.max_steps is None:
                        stopped_by = "epochs"
                        done = True

        # Save the final state, validate and export the model folder.
        if saved_step != step:
            last_checkpoint = snapshot() or last_checkpoint
        model_dir = None
        if main:
            if val_set is not False:
                val = evaluate_damsm(objective, val_set, cfg.batch_size, val_batches, dev)
                if val:
                    log.info("final validation: %s", " ".join(f"{k} {v:.4g}" for k, v in val.items()))
                    stats.record(step, epoch, val)
            model_dir = export_model(
                run_dir / "model",
                vocab,
                [("text_encoder", text_encoder, preset.text_encoder), ("image_encoder", image_encoder, preset.image_encoder)],
                step=step,
            )
            log.info("DAMSM pre-training done at step %d (%s); encoders in %s", step, stopped_by, model_dir)
        return TrainResult(run_dir, step, epoch, stopped_by, last_checkpoint if main else None, model_dir, val, total_steps)
    except KeyboardInterrupt as exc:
        if isinstance(exc, TrainingInterrupted):
            raise
        stopped = interruption(
            exc, "DAMSM pre-training", "pretrain-damsm", in_step=in_step, saving=saving, step=step, saved_step=saved_step,
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
        failed = failure_of_environment(exc, step, last_checkpoint, "pretrain-damsm", run_dir, dist_info.world_size)
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
