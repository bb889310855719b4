"""``attngan demo``: the whole pipeline on the built-in shapes dataset within a wall-clock budget.

Steps: pre-train a small DAMSM, train a small AttnGAN (each stops by wall-clock or at the preset's
``max_steps``), then draw images for test captions with the EMA generator and write

- ``OUT/samples.png``: a grid of captions and generated images,
- ``OUT/attention.png``: the generator's word-attention maps (``attngan.viz.attention_figure``),
- ``OUT/real_vs_generated.png``: real test images beside the images generated from their captions,
- ``OUT/metrics.json``: attribute accuracy (colour, shape, position, size; ``attngan.metrics.attributes``),
  R-precision with the run's DAMSM (``attngan.metrics.r_precision``), each with its chance level and the
  same numbers on real test images as a reference, and the attention grounding of the colour and shape
  words (``attngan.metrics.grounding``),

and return a report that :func:`format_summary` prints as a table, with a warning for each training phase
that ran fewer steps than :data:`MIN_STEPS` (the figures then stay near chance). Every model setting comes from the
``shapes`` preset (plus ``--set`` overrides): tuning the demo needs no code change.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..atomic import FolderLock
from ..checkpoint import atomic_write_bytes, atomic_write_json, load_component
from ..config import PRESETS, GeneratorConfig, Preset
from ..data.base import collate_batch
from ..data.registry import build_dataset
from ..errors import UserError
from ..nn import Generator
from .damsm import train_damsm
from .figures import attention_png, captioned_grid_png, real_vs_generated_png
from .gan import discriminator_configs, load_encoders, train_gan
from .outcomes import TrainingInterrupted
from .state import replace_section

__all__ = [
    "MIN_STEPS", "DemoPlan", "Measured", "demo_preset", "run_demo", "measure_generator", "summary_rows",
    "format_summary", "too_few_steps",
]  # fmt: skip

log = logging.getLogger(__name__)

ATTRIBUTES = ("color", "shape", "position", "size")
# Steps each phase needs before the shapes preset learns anything (benchmarks/TUNING.md: the DAMSM loss leaves
# chance after ~250-400 steps; colour accuracy is about 0.7 after 500 GAN steps, R-precision about half of
# that of real images). Fewer steps are warned about.
MIN_STEPS = {"damsm": 400, "gan": 600}
NUM_COMPARED = 6  # test captions in real_vs_generated.png


@dataclass(frozen=True)
class DemoPlan:
    """How the wall-clock budget is split."""

    total_seconds: float  # everything, from start to the printed table
    damsm_share: float = 0.3  # share of the training time given to DAMSM pre-training (the rest: GAN)
    eval_seconds: float = 30.0  # reserved after training for sampling, metrics and figures
    overhead_seconds: float = 10.0  # per training phase: data, model building, export (outside its clock)

    @classmethod
    def from_minutes(cls, minutes: float, damsm_share: float | None = None, eval_share: float = 0.02) -> DemoPlan:
        """``minutes`` of training (DAMSM and GAN); the reserves for evaluation and set-up come on top.

        The reserves are a few times what the 10-minute demo used on an idle 2-core CPU (2026-12-06): about
        2.5 s to sample and measure 500 test captions and write the figures, 1-2 s per training phase to
        build its data and models and export them (the 10-minute demo: 620 s in all at most).
        """
        training = 60.0 * minutes
        eval_seconds, overhead = max(8.0, eval_share * training), min(4.0, 0.01 * training)
        return cls(
            total_seconds=training + eval_seconds + 2 * overhead,
            damsm_share=0.3 if damsm_share is None else damsm_share,
            eval_seconds=eval_seconds,
            overhead_seconds=overhead,
        )

    @property
    def training_seconds(self) -> float:
        """The time planned for DAMSM pre-training and GAN training together."""
        return self.total_seconds - self.eval_seconds - 2 * self.overhead_seconds

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def demo_preset(seed: int = 0) -> Preset:
    """The ``shapes`` preset with every seed set to ``seed``."""
    preset = PRESETS["shapes"]
    preset = replace_section(preset, "data", seed=seed)
    preset = replace_section(preset, "damsm_train", seed=seed)
    return replace_section(preset, "gan_train", seed=seed)


# ------------------------------------------------------------------------------------------------ sampling


@torch.no_grad()
def _generate(generator: Generator, text_encoder, batches, seed: int, device: torch.device):
    """Per batch: the images of every stage ([-1, 1]) and the attention maps of every attention stage."""
    images, attention = [], []
    for k, batch in enumerate(batches):
        batch = batch.to(device)
        words, sentence = text_encoder(batch.captions, batch.lengths)
        rng = torch.Generator().manual_seed(seed * 1_000_003 + k)
        z = torch.randn(len(batch), generator.config.z_dim, generator=rng).to(device)
        eps = torch.randn(len(batch), generator.config.condition_dim, generator=rng).to(device)
        out = generator(z, sentence, words, batch.mask, ca_noise=eps)
        images.append([im.float().cpu() for im in out.images])  # per stage: (B, 3, s, s)
        attention.append([a.float().cpu() for a in out.attention])  # per attention stage: (B, T, h, w)
    return images, attention


def _batches(dataset, n: int, batch_size: int):
    n = min(n, len(dataset))
    return [collate_batch([dataset[i] for i in range(s, min(s + batch_size, n))]) for s in range(0, n, batch_size)]


# ------------------------------------------------------------------------------------------------ metrics


def _attribute_accuracy(images: torch.Tensor, attributes: list, classifier, device: torch.device) -> dict[str, Any]:
    from ..metrics import calc_metric

    return calc_metric(
        "attribute_accuracy", images=images, target_attributes=attributes, classifier=classifier, device=device
    )


def _r_precision(image_encoder, text_encoder, images: list[torch.Tensor], batches, device, seed: int) -> dict[str, Any]:
    from ..metrics import calc_metric

    n = sum(len(b) for b in batches)
    return calc_metric(
        "r_precision",
        image_encoder=image_encoder,
        text_encoder=text_encoder,
        batches=[(im, b.captions, b.lengths) for im, b in zip(images, batches)],
        n_mismatch=min(99, n - 1),
        splits=min(10, n),
        seed=seed,
        device=device,
    )


# ------------------------------------------------------------------------------------------------ the demo


def run_demo(
    out: str | Path,  # output folder (created; must be empty if it exists)
    preset: Preset | None = None,  # None: demo_preset(seed)
    plan: DemoPlan | None = None,  # None: 10 minutes
    *,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
    num_eval: int = 500,  # test captions drawn for the metrics
    num_shown: int = 16,  # images in samples.png
    classifier: Any = None,  # attribute classifier to measure with; None: the cached one (trained if missing)
    gan_callback: Any = None,  # called with each GAN step's StepInfo (benchmarks/demo_frontier.py)
) -> dict[str, Any]:
    """Train a small DAMSM and AttnGAN on shapes within ``plan.total_seconds``; write figures and metrics."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file; choose a new folder for the demo")
    with FolderLock(out, "demo folder") as lock:  # a second demo into the same folder is refused
        if not lock.is_empty():
            raise UserError(f"{out} is not empty; choose a new folder for the demo")
        return _run_demo(out, preset, plan, seed=seed, device=device, progress=progress, num_eval=num_eval,
                         num_shown=num_shown, classifier=classifier, gan_callback=gan_callback)  # fmt: skip


def _run_demo(
    out: Path, preset: Preset | None, plan: DemoPlan | None, *, seed: int, device: Any, progress: bool, num_eval: int,
    num_shown: int, classifier: Any, gan_callback: Any = None,
) -> dict[str, Any]:  # fmt: skip
    start = time.perf_counter()
    preset = demo_preset(seed) if preset is None else preset
    plan = DemoPlan.from_minutes(10) if plan is None else plan
    if preset.data.dataset != "shapes":
        raise UserError("the demo runs on the built-in shapes dataset (data.dataset=shapes)")
    sizes = [c.image_size for c in discriminator_configs(preset)]

    # Prepare the attribute classifier first. It is trained once and then cached, so its training time on a
    # first run is not counted in the budget (otherwise a short --minutes could only work the second time).
    from ..metrics.attributes import AttributeTrainConfig, load_or_train_attribute_classifier
    from .devices import resolve_device

    dev = resolve_device(device)
    if classifier is None:
        before = time.perf_counter()
        classifier = load_or_train_attribute_classifier(
            image_size=sizes[-1], config=AttributeTrainConfig(object_scale=preset.data.object_scale), device=dev
        )
        if time.perf_counter() - before > 5:
            log.info("demo: the attribute classifier took %.0f s (once: it is cached now); the budget starts now", time.perf_counter() - before)
            start = time.perf_counter()
    deadline = start + plan.total_seconds - plan.eval_seconds
    training_seconds = deadline - time.perf_counter() - 2 * plan.overhead_seconds
    if training_seconds < 10:
        raise UserError(f"{plan.total_seconds / 60:.1f} minutes is too short for the demo; give it more minutes (--minutes)")
    runs = out / "runs"
    log.info("demo: %.0f s in all, about %.0f s of training (DAMSM %.0f%%)", plan.total_seconds, training_seconds, 100 * plan.damsm_share)

    where: dict[str, Any] = {"stage": "DAMSM pre-training", "gan": None}  # updated as the demo goes on
    try:
        return _train_and_measure(out, preset, plan, runs, deadline, training_seconds, start, seed=seed, device=device,
                                  dev=dev, progress=progress, num_eval=num_eval, num_shown=num_shown,
                                  classifier=classifier, sizes=sizes, where=where, gan_callback=gan_callback)  # fmt: skip
    except KeyboardInterrupt as exc:
        gan_dir = where["gan"]
        if gan_dir is not None:
            message = (
                f"demo interrupted while measuring: the trained model is in {gan_dir}; measure it with "
                f"`attngan evaluate --checkpoint {gan_dir} --n-images {num_eval}` or draw with "
                f"`attngan sample --checkpoint {gan_dir} --out samples \"a small red circle\"`"
            )
        else:
            message = (
                f"demo interrupted during {where['stage']}: a demo is not continued; run `attngan demo` again with a "
                f"new --out folder (what was trained so far is in {runs})"
            )
        log.warning(message)
        raise TrainingInterrupted(message, getattr(exc, "checkpoint", None), runs, getattr(exc, "step", 0)) from None


def _train_and_measure(
    out: Path, preset: Preset, plan: DemoPlan, runs: Path, deadline: float, training_seconds: float, start: float, *,
    seed: int, device: Any, dev: torch.device, progress: bool, num_eval: int, num_shown: int, classifier: Any,
    sizes: list[int], where: dict[str, Any], gan_callback: Any = None,
) -> dict[str, Any]:  # fmt: skip
    """The demo's work after its checks: DAMSM, GAN, images, figures, metrics (``where`` says how far it got)."""
    # Pre-train the DAMSM encoders.
    damsm = train_damsm(
        preset,
        runs_dir=runs,
        device=device,
        max_seconds=plan.damsm_share * training_seconds,
        val_batches=5,
        progress=progress,
        tensorboard=False,
        keep_checkpoints=1,
        adapt_threads=True,  # a time budget on a possibly shared CPU: fewer threads when that is faster
    )

    # Train the AttnGAN within what is left before the evaluation reserve.
    where["stage"] = "AttnGAN training"
    gan_seconds = deadline - time.perf_counter() - plan.overhead_seconds
    if gan_seconds < 5:
        raise UserError("no time left for GAN training; give the demo more minutes or a smaller damsm share")
    gan = train_gan(
        preset,
        damsm=damsm.run_dir,
        runs_dir=runs,
        device=device,
        max_seconds=gan_seconds,
        progress=progress,
        tensorboard=False,
        keep_checkpoints=1,
        adapt_threads=True,  # a time budget on a possibly shared CPU: fewer threads when that is faster
        callback=gan_callback,
    )
    trained_at = time.perf_counter()
    where.update(stage="measuring", gan=gan.run_dir)
    return _measure(out, gan, damsm, seed, dev, num_eval, num_shown, classifier, sizes, preset, start, trained_at, plan)


@dataclass
class Measured:
    """Images of the test captions and the demo's metrics (:func:`measure_generator`)."""

    metrics: dict[str, Any]
    batches: list  # the test batches (real images, captions, attributes)
    stages: list  # per batch: the images of every stage
    attention: list  # per batch: the maps of every attention stage


def measure_generator(
    generator: Generator, text_encoder: Any, image_encoder: Any, vocab: Any, test: Any, classifier: Any,
    dev: torch.device, *, seed: int = 0, num_eval: int = 500,
) -> Measured:  # fmt: skip
    """Draw the first ``num_eval`` test captions with ``generator`` (noise from ``seed``) and measure: attribute
    accuracy, R-precision with the given DAMSM encoders (each beside the same figure on the real images) and
    attention grounding. Used by the demo and by ``benchmarks/demo_frontier.py``."""
    batches = _batches(test, num_eval, 50)
    stages, attention = _generate(generator, text_encoder, batches, seed, dev)
    fakes = [per_stage[-1] for per_stage in stages]  # last stage per batch
    reals = [b.images[-1] for b in batches]
    attributes = [a for b in batches for a in (b.attributes or [])]
    metrics: dict[str, Any] = {"n": len(attributes)}
    metrics["attributes"] = {
        "generated": _attribute_accuracy(torch.cat(fakes), attributes, classifier, dev),
        "real": _attribute_accuracy(torch.cat(reals), attributes, classifier, dev),
    }
    metrics["r_precision"] = {
        "generated": _r_precision(image_encoder, text_encoder, fakes, batches, dev, seed),
        "real": _r_precision(image_encoder, text_encoder, reals, batches, dev, seed),
    }
    if attention[0]:
        metrics["attention_grounding"] = _attention_grounding(attention, batches, vocab)
    return Measured(metrics, batches, stages, attention)


def _measure(
    out: Path, gan: Any, damsm: Any, seed: int, dev: torch.device, num_eval: int, num_shown: int, classifier: Any,
    sizes: list[int], preset: Preset, start: float, trained_at: float, plan: DemoPlan,
) -> dict[str, Any]:  # fmt: skip
    """Images of the test captions from the exported (EMA) generator, the figures and metrics.json."""
    model = gan.run_dir / "model"
    generator = load_component(model / "generator", Generator, GeneratorConfig).to(dev)
    text_encoder, image_encoder, vocab = load_encoders(model)
    text_encoder.to(dev)
    image_encoder.to(dev)
    test = build_dataset(preset.data, "test", sizes, vocab=vocab, train=False)
    measured = measure_generator(generator, text_encoder, image_encoder, vocab, test, classifier, dev, seed=seed,
                                 num_eval=num_eval)  # fmt: skip
    batches, stages, attention = measured.batches, measured.stages, measured.attention
    fakes = [per_stage[-1] for per_stage in stages]
    reals = [b.images[-1] for b in batches]
    texts = [t for b in batches for t in (b.texts or [])]
    whole = _whole_captions(test, texts)  # for the figures: a caption is never shown cut

    # Figures: captions + samples; word attention maps; real test images beside generated ones.
    shown = min(num_shown, len(texts))
    atomic_write_bytes(out / "samples.png", captioned_grid_png(torch.cat(fakes)[:shown], whole[:shown]))
    figures = ["samples.png"]
    if attention[0]:
        k = min(3, len(batches[0]))
        tokens = [vocab.decode(batches[0].captions[j, : int(batches[0].lengths[j])].tolist()) for j in range(k)]
        try:
            data = attention_png([im[:k] for im in stages[0]], [a[:k] for a in attention[0]], tokens, whole[:k])
        except (ImportError, AttributeError, TypeError, ValueError) as exc:
            log.warning("no attention figure: %s", exc)
        else:
            atomic_write_bytes(out / "attention.png", data)
            figures.append("attention.png")
    k = min(NUM_COMPARED, len(texts))
    try:
        data = real_vs_generated_png(torch.cat(reals)[:k], torch.cat(fakes)[:k], whole[:k])
    except (ImportError, AttributeError, TypeError, ValueError) as exc:
        log.warning("no real-versus-generated figure: %s", exc)
    else:
        atomic_write_bytes(out / "real_vs_generated.png", data)
        figures.append("real_vs_generated.png")

    metrics = measured.metrics
    report = {
        "out": str(out),
        "metrics": metrics,
        "summary": summary_rows(metrics),
        "figures": figures,
        "runs": {"damsm": str(damsm.run_dir), "gan": str(gan.run_dir)},
        "steps": {"damsm": damsm.step, "gan": gan.step},
        "gan_precision": _precision_of(Path(gan.run_dir)),
        "warnings": too_few_steps({"damsm": damsm.step, "gan": gan.step}),
        "seconds": {
            "total": round(time.perf_counter() - start, 1),
            "training": round(trained_at - start, 1),
            "budget": plan.total_seconds,
        },
        "seed": seed,
    }
    atomic_write_json(out / "metrics.json", report)
    log.info("demo done in %.0f s: %s", time.perf_counter() - start, out)
    return report


def _precision_of(run_dir: Path) -> str:
    """The precision the GAN loop trained in, as its run folder's config.json recorded it."""
    try:
        mode = json.loads((run_dir / "config.json").read_text(encoding="utf-8")).get("mixed_precision", "no")
    except (OSError, ValueError):
        return "float32"
    return {"bf16": "bf16 autocast", "fp16": "fp16 autocast"}.get(mode, "float32")


def _attention_grounding(attention: list, batches: list, vocab: Any) -> dict[str, Any]:
    """The ``attention_grounding`` metric on the last attention stage of the generated test images."""
    from ..metrics import calc_metric

    maps, tokens, scenes = [], [], []
    for per_stage, batch in zip(attention, batches):
        for j in range(len(batch)):
            maps.append(per_stage[-1][j])
            tokens.append(vocab.decode(batch.captions[j, : int(batch.lengths[j])].tolist()))
            scenes.append(batch.attributes[j])
    return calc_metric("attention_grounding", attention=maps, tokens=tokens, scenes=scenes)


def _whole_captions(test: Any, texts: list[str]) -> list[str]:
    """The whole test caption of each of the first ``len(texts)`` test images; where the model read only its
    first ``words_num`` words (``texts``), the rest follows in brackets."""
    captions = getattr(test, "texts", None)  # per image, every caption (the shapes dataset)
    if captions is None:
        return texts
    out = []
    for i, seen in enumerate(texts):
        whole = captions[i][test.caption_index % len(captions[i])]
        rest = whole.split()[len(seen.split()) :]
        out.append(f"{seen} [not read: {' '.join(rest)}]" if rest and whole.startswith(seen) else seen)
    return out


def too_few_steps(steps: dict[str, int]) -> list[str]:
    """A warning per training phase that ran fewer steps than :data:`MIN_STEPS` says learning needs."""
    names = {"damsm": "DAMSM pre-training", "gan": "AttnGAN training"}
    return [
        f"{names[phase]} ran {steps[phase]} steps, fewer than the ~{need} it needs to learn (benchmarks/TUNING.md): "
        "the figures stay near chance. Give the demo more --minutes, or run it on an idle machine or a GPU"
        for phase, need in MIN_STEPS.items()
        if steps.get(phase, need) < need
    ]


def summary_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows (metric, generated, real, chance) for the printed table."""
    rows = []
    gen, real = metrics["attributes"]["generated"], metrics["attributes"]["real"]
    for name in ATTRIBUTES:
        rows.append(
            {
                "metric": f"{name} accuracy",
                "generated": gen.get(f"{name}_acc"),
                "real": real.get(f"{name}_acc"),
                "chance": gen.get("chance", {}).get(name),
            }
        )
    rp = metrics["r_precision"]
    n_mis = rp["generated"].get("n_mismatch", 99)
    rows.append(
        {
            "metric": "R-precision (%)",
            "generated": rp["generated"]["r_precision"],
            "real": rp["real"]["r_precision"],
            "chance": 100.0 / (1 + n_mis),
        }
    )
    grounding = metrics.get("attention_grounding")
    if grounding is not None:
        rows.append(
            {
                "metric": "attention grounding",
                "generated": grounding["attention_grounding"],
                "real": None,  # real images have no attention maps
                "chance": grounding["chance"],
            }
        )
    return rows


def format_summary(report: dict[str, Any]) -> str:
    """The demo's result as a plain-text table."""

    def fmt(v: Any) -> str:
        return "-" if v is None else f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"

    lines = [f"{'metric':<22}{'generated':>11}{'real':>9}{'chance':>9}"]
    for row in report["summary"]:
        lines.append(f"{row['metric']:<22}{fmt(row['generated']):>11}{fmt(row['real']):>9}{fmt(row['chance']):>9}")
    lines.append(
        f"trained DAMSM {report['steps']['damsm']} steps and AttnGAN {report['steps']['gan']} steps"
        f"{' (' + report['gan_precision'] + ')' if report.get('gan_precision') else ''}; "
        f"{report['seconds']['total']:.0f} s of a {report['seconds']['budget']:.0f} s budget"
    )
    lines.append(f"figures and metrics.json in {report['out']}: {', '.join(report['figures'])}")
    lines += [f"Warning: {w}" for w in report.get("warnings", [])]
    return "\n".join(lines)
