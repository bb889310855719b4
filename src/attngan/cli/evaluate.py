"""``attngan evaluate``: R-precision, Inception score, FID, attribute accuracy (and CLIP score) of a trained
model, measured as in the paper (a thin layer over :func:`attngan.evaluation.evaluate_model`)."""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from ..errors import UserError
from . import options as opt
from .options import CHECKPOINT_HELP, PathType, setup_logging

DATASETS = ("shapes", "birds", "coco", "folder")

log = logging.getLogger(__name__)


def _run_folder(checkpoint: Path | None) -> Path | None:
    """The run folder (with ``config.json`` holding ``preset``) behind ``checkpoint``, if it is one."""
    if checkpoint is None:
        return None
    for d in (checkpoint, checkpoint.parent):
        cfg = d / "config.json"
        if cfg.is_file() and (d / "model").is_dir():
            try:
                if "preset" in json.loads(cfg.read_text(encoding="utf-8")):
                    return d
            except (OSError, ValueError):
                log.warning("ignoring unreadable %s", cfg)
    return None


def resolve_data_config(
    run_dir: Path | None, dataset: str | None, data_dir: Path | None, words_num: int | None = None
) -> Any:
    """The test data: the run's own data settings, or the preset of ``--dataset``; ``--data-dir`` wins.

    Captions are cut to ``words_num``; None: the original's evaluation length for birds and coco
    (``EVAL_WORDS_NUM``), else the training setting.
    """
    from ..config import PRESETS, DataConfig, from_dict
    from ..evaluation import EVAL_WORDS_NUM

    run_cfg = None
    if run_dir is not None:
        try:
            preset = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))["preset"]
            run_cfg = from_dict(DataConfig, preset["data"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("could not read the data settings of %s: %s", run_dir / "config.json", exc)
    if dataset is None:
        if run_cfg is None:
            raise UserError(
                "which test set? pass --dataset shapes|birds|coco|folder (with --data-dir DIR for a dataset on "
                "disk); a run folder's own data settings are used when --checkpoint is a run folder"
            )
        cfg = run_cfg
    elif run_cfg is not None and run_cfg.dataset == dataset:
        cfg = run_cfg
    else:
        cfg = PRESETS[dataset].data if dataset in PRESETS else DataConfig(dataset=dataset)
    if data_dir is not None:
        cfg = dataclasses.replace(cfg, data_dir=str(data_dir))
    words_num = words_num or EVAL_WORDS_NUM.get(cfg.dataset, cfg.words_num)
    return dataclasses.replace(cfg, words_num=words_num)


def load_clip(arch: str | None, pretrained: str | None) -> Any:
    """A :class:`~attngan.evaluation.ClipModel` from open_clip (``--clip-model``), or None."""
    from ..evaluation import ClipModel

    if arch is None:
        if pretrained is not None:
            raise UserError("--clip-pretrained needs --clip-model ARCH (e.g. ViT-B-32)")
        return None
    try:
        import open_clip
    except ImportError:
        raise UserError("--clip-model needs open_clip: pip install open_clip_torch") from None
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=pretrained)
    except (RuntimeError, ValueError, OSError) as exc:
        raise UserError(f"could not load the CLIP model {arch!r} ({pretrained}): {exc}") from None
    name = f"open_clip {arch}" + (f" ({pretrained})" if pretrained else " (random weights)")
    return ClipModel(model.eval(), open_clip.get_tokenizer(arch), preprocess, name)


@click.command(name="evaluate", context_settings={"show_default": True})
@opt.checkpoint_option(CHECKPOINT_HELP + " A run's own data settings are used.")
@opt.file_option("--original-generator", "Instead of --checkpoint: the original G (bird_AttnGAN2.pth).")
@opt.file_option("--original-text-encoder", "The original DAMSM text encoder (text_encoder200.pth).")
@opt.file_option(
    "--original-image-encoder",
    "The original DAMSM image encoder (image_encoder200.pth), for R-precision; with --checkpoint it "
    "replaces the model folder's image_encoder/.",
)
@opt.file_option("--captions-pickle", "The dataset's captions.pickle (the original vocabulary).")
@click.option(
    "--dataset",
    type=click.Choice(DATASETS),
    default=None,
    help="Test set; default: the run folder's own. birds/coco/folder need --data-dir.",
)
@click.option("--data-dir", type=PathType(path_type=Path), default=None, help="Folder of the dataset.")
@click.option(
    "--metrics",
    default=None,
    help="Comma-separated: r_precision, is, fid, attributes, attention_grounding (or grounding), clip. Default: "
    "r_precision,is,fid (+ attributes and attention_grounding on shapes).",
)
@click.option(
    "--n-images",
    type=click.IntRange(2, 10_000_000),
    default=30_000,
    help="Images generated from random test captions (the paper: 30,000).",
)
@opt.batch_size_option(4096, 50, "Images per forward pass; does not change the numbers.")
@opt.seed_option("Draws the captions, the noise (image k: seed + k) and the mismatching captions.")
@opt.device_option("Where to run; auto picks cuda (or cuda:N), then mps, then cpu.")
@opt.file_option(
    "--out", "Write every figure with its protocol to this JSON file (an existing file needs --overwrite)."
)
@opt.overwrite_option("Replace an existing --out file.")
@opt.progress_option("Show a progress bar while generating (on a terminal).")
@click.option(
    "--r-precision-other-classes",
    is_flag=True,
    help="Draw the 99 mismatching captions from other classes only (DM-GAN's evaluation on CUB).",
)
@click.option(
    "--is-classifier",
    default="torchvision-imagenet",
    help="Inception-score classifier: torchvision-imagenet, fid-inception (improved-gan's graph) or a file "
    "(TorchScript, .pt2, or an Inception-v3 state dict, e.g. the CUB-fine-tuned one of the paper's figures).",
)
@click.option(
    "--fid-extractor",
    type=click.Choice(["fid-inception", "torchvision-imagenet"]),
    default="fid-inception",
    help="fid-inception: the standard FID weights; torchvision-imagenet: the DM-GAN/DF-GAN variant, "
    "labelled as not standard.",
)
@opt.file_option(
    "--fid-weights",
    "pt_inception-2015-12-05-6726825d.pth (default: the torch hub cache, where pytorch-fid puts it); "
    "also the weights of --is-classifier fid-inception.",
)
@click.option(
    "--allow-download",
    is_flag=True,
    help="Let torchvision download its ImageNet Inception-v3 weights into the torch hub cache.",
)
@click.option(
    "--cache-dir",
    type=PathType(file_okay=False, path_type=Path),
    default=None,
    help="Cache of real-image FID statistics and of the attribute classifier "
    "(default: $ATTNGAN_CACHE or ~/.cache/attngan).",
)
@click.option(
    "--clip-model",
    default=None,
    metavar="ARCH",
    help="open_clip architecture for the CLIP score (e.g. ViT-B-32).",
)
@click.option("--clip-pretrained", default=None, help="open_clip weights: a local file or a tag it knows.")
@click.option(
    "--words-num",
    type=click.IntRange(1, 1000),
    default=None,
    help="Longest test caption in words; longer ones are cut as in training (birds, coco: random words "
    "dropped, as the original; other data: the first words kept). "
    "Default: 25 for birds and 20 for coco (the original's evaluation settings), else the training setting.",
)
@opt.ca_mean_option("Condition on the CA mean (no CA noise); the paper samples it.")
def evaluate(
    checkpoint: Path | None,
    original_generator: Path | None,
    original_text_encoder: Path | None,
    original_image_encoder: Path | None,
    captions_pickle: Path | None,
    dataset: str | None,
    data_dir: Path | None,
    metrics: str | None,
    n_images: int,
    batch_size: int,
    seed: int,
    device: str,
    out: Path | None,
    overwrite: bool,
    progress: bool,
    r_precision_other_classes: bool,
    is_classifier: str,
    fid_extractor: str,
    fid_weights: Path | None,
    allow_download: bool,
    cache_dir: Path | None,
    clip_model: str | None,
    clip_pretrained: str | None,
    words_num: int | None,
    ca_mean: bool,
) -> None:
    """Measure a trained model as the paper did (Sec. 4).

    Generates --n-images images (last stage) from randomly drawn test captions, then computes
    R-precision with the model's DAMSM (1 true + 99 random captions, R = 1, 10 splits), the Inception
    score (10 splits), FID against the real test images (cached statistics), attribute accuracy on the
    built-in shapes data and, with --clip-model, the CLIP score. The table and the --out JSON name the
    protocol and the sample count of every figure. A metric whose weights are missing is skipped with a
    message saying how to provide them. With a run folder, each result is also appended to
    RUN/metric-<name>.jsonl. The first attribute evaluation trains the attribute classifier once and caches
    it (a few minutes on a CPU).

    \b
    Examples:
      attngan evaluate --checkpoint runs/00001-shapes-attngan --n-images 2000 --metrics r_precision,attributes
      attngan evaluate --checkpoint models/birds --dataset birds --data-dir data/birds --out birds.json \\
          --fid-weights pt_inception-2015-12-05-6726825d.pth --is-classifier cub_inception.pth
      attngan evaluate --original-generator bird_AttnGAN2.pth --original-text-encoder text_encoder200.pth \\
          --original-image-encoder image_encoder200.pth --captions-pickle data/birds/captions.pickle \\
          --dataset birds --data-dir data/birds --r-precision-other-classes
    """
    from ..atomic import check_writable
    from ..checkpoint import atomic_write_json
    from ..data.registry import build_dataset
    from ..evaluation import evaluate_model, format_table, parse_metrics
    from ..pipeline import resolve_model_dir
    from .sample import load_pipeline, no_model_message, resolve_device

    setup_logging()
    # SIGTERM unwinds like Ctrl-C (attngan.cli.main), so that the temporary file of the generated images
    # (5.9 GB for 30,000 at 256 px) is removed instead of left behind.
    if out is not None:
        if out.exists() and not overwrite:
            raise UserError(f"--out {out} already exists; pass --overwrite to replace it, or choose another file")
        check_writable(out)  # not after an hour of metrics
    model_dir = None
    if checkpoint is not None:
        model_dir = resolve_model_dir(checkpoint)  # a missing or wrong folder is reported before anything else
    elif not (original_generator or original_text_encoder or original_image_encoder):
        raise UserError(no_model_message(image_encoder=True))
    run_dir = _run_folder(model_dir)
    data_config = resolve_data_config(run_dir, dataset, data_dir, words_num)
    names = parse_metrics(metrics) if metrics is not None else ["r_precision", "is", "fid"]
    if metrics is None and data_config.dataset == "shapes":
        names += ["attributes", "attention_grounding"]
    clip = load_clip(clip_model, clip_pretrained)
    dev = resolve_device(device)
    pipe = load_pipeline(
        checkpoint, original_generator, original_text_encoder, captions_pickle, dev, original_image_encoder,
        no_model=no_model_message(image_encoder=True),
    )  # fmt: skip
    size = pipe.generator.config.image_sizes[-1]
    test_set = build_dataset(data_config, "test", [size], vocab=pipe.vocab, train=False)
    result = evaluate_model(
        pipe,
        test_set,
        names,
        n_images=n_images,
        batch_size=batch_size,
        seed=seed,
        device=dev,
        r_precision_other_classes=r_precision_other_classes,
        is_classifier=is_classifier,
        fid_extractor=fid_extractor,
        fid_weights=fid_weights,
        cache_dir=cache_dir,
        clip=clip,
        allow_download=allow_download,
        ca_mean=ca_mean,
        progress=progress and sys.stderr.isatty(),
    )
    model = str(checkpoint) if checkpoint is not None else str(original_generator)
    result = {"model": model, "data": dataclasses.asdict(data_config), **result}
    # The figures are shown first; then --out and the run's metric files are written, each even when the
    # other cannot be (a full disk, a read-only run folder), and the first such error is reported after.
    click.echo(format_table(result))
    not_written: list[BaseException] = []
    if out is not None:
        try:
            atomic_write_json(out, result)
            click.echo(f"wrote {out}")
        except (OSError, UserError) as exc:
            not_written.append(exc)
    if run_dir is not None:
        from ..metrics import report_metric

        # Each line names everything that made its figure: images, seed, CA noise, test data.
        context = {"images": result["protocol"], "n_images": n_images, "seed": seed, "ca_mean": ca_mean,
                   "data": result["data"]}  # fmt: skip
        try:
            for res in result["metrics"].values():
                if "skipped" not in res:
                    report_metric(res | context, run_dir, snapshot=str(model_dir.resolve()))
        except (OSError, UserError) as exc:
            not_written.append(exc)
    if not_written:
        raise not_written[0]
    failed = [f"{name}: {res['skipped']}" for name, res in result["metrics"].items() if res.get("failed")]
    if failed:
        raise UserError("; ".join(failed) + " (the other figures are above" + (f" and in {out})" if out else ")"))
