"""What `attngan demo` learns over its GAN steps: attribute accuracy, R-precision and attention grounding of the
EMA generator against GAN step and wall seconds (benchmarks/TUNING.md).

    python benchmarks/demo_frontier.py --out frontier/s0 --seed 0                      # the demo's defaults
    python benchmarks/demo_frontier.py --out frontier/s1 --seed 1 --set data.contrast_group=1   # an ablation
    python benchmarks/demo_frontier.py --smoke --out frontier-smoke                   # seconds: tiny networks

It runs the demo itself (``attngan.training.demo.run_demo``, same budget and settings, ``--set`` overrides
on top), copies the EMA generator every ``--every`` GAN steps (a copy costs milliseconds of the budget) and,
after the demo, measures every copy as the demo measures its final model (``measure_generator``: the first
``--n`` test captions, the cached attribute classifier, the run's DAMSM for R-precision). Prints one row per
copy and writes ``frontier.json`` into ``--out`` next to the demo's own outputs.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
from pathlib import Path

import torch

from attngan.config import PRESETS, apply_overrides
from attngan.data.registry import build_dataset
from attngan.nn import Generator
from attngan.training.demo import (
    DemoPlan,
    demo_preset,
    format_summary,
    measure_generator,
    run_demo,
    summary_rows,
)
from attngan.training.gan import discriminator_configs, load_encoders

COLUMNS = ("color", "shape", "position", "size")


def _row(step: int, seconds: float, metrics: dict) -> dict:
    gen = metrics["attributes"]["generated"]
    grounding = metrics.get("attention_grounding", {})
    return {
        "step": step,
        "seconds": round(seconds, 1),
        **{name: gen.get(f"{name}_acc") for name in COLUMNS},
        "r_precision": metrics["r_precision"]["generated"]["r_precision"],
        "r_precision_real": metrics["r_precision"]["real"]["r_precision"],
        "grounding": grounding.get("attention_grounding"),
        "grounding_chance": grounding.get("chance"),
    }


def _print(rows: list[dict]) -> None:
    print(f"{'GAN step':>8} {'wall s':>7} " + " ".join(f"{c:>8}" for c in COLUMNS) + f" {'R-prec %':>9} {'(real)':>7} {'grounding':>10} {'x chance':>8}")
    for r in rows:
        ratio = r["grounding"] / r["grounding_chance"] if r["grounding"] is not None and r["grounding_chance"] else float("nan")
        grounding = f"{r['grounding']:.3f}" if r["grounding"] is not None else "-"
        print(
            f"{r['step']:>8} {r['seconds']:>7.0f} " + " ".join(f"{r[c]:>8.3f}" for c in COLUMNS)
            + f" {r['r_precision']:>9.1f} {r['r_precision_real']:>7.1f} {grounding:>10} {ratio:>8.2f}"
        )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="demo output folder (new or empty)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--minutes", type=float, default=10.0, help="the demo's training time (default 10)")
    parser.add_argument("--every", type=int, default=250, help="GAN steps between measured copies (default 250)")
    parser.add_argument("--n", type=int, default=500, help="test captions measured per copy (default 500, as the demo)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--smoke", action="store_true", help="tiny networks, a few steps, an untrained classifier")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    preset = apply_overrides(demo_preset(args.seed), args.overrides)
    classifier = None
    num_eval, every = args.n, args.every
    if args.smoke:
        from attngan.metrics.attributes import AttributeTrainConfig, train_attribute_classifier

        tiny = PRESETS["tiny"]
        preset = apply_overrides(
            preset,
            {"text_encoder": tiny.text_encoder, "image_encoder": tiny.image_encoder, "generator": tiny.generator,
             "discriminator_df_dim": 4, "data.num_images": 64, "damsm_train.max_steps": 2,
             "damsm_train.batch_size": 16, "gan_train.max_steps": 4, "gan_train.batch_size": 8},
        )  # fmt: skip
        size = discriminator_configs(preset)[-1].image_size
        classifier, _ = train_attribute_classifier(size, AttributeTrainConfig(width=4, steps=1, batch_size=8, heldout=8))
        num_eval, every = 16, 2

    copies: list[tuple[int, float, dict]] = []
    start = time.perf_counter()

    def keep_ema(info) -> None:
        if info.step % every == 0:
            ema = info.modules["generator_ema"]
            copies.append((info.step, time.perf_counter() - start, copy.deepcopy(ema.state_dict())))

    report = run_demo(
        args.out, preset, DemoPlan.from_minutes(args.minutes), seed=args.seed, progress=False, num_eval=num_eval,
        classifier=classifier, gan_callback=keep_ema,
    )  # fmt: skip
    print(format_summary(report))

    # Measure every copy as the demo measured its final model.
    from attngan.metrics.attributes import AttributeTrainConfig, load_or_train_attribute_classifier

    model = Path(report["runs"]["gan"]) / "model"
    text_encoder, image_encoder, vocab = load_encoders(model)
    sizes = [c.image_size for c in discriminator_configs(preset)]
    if classifier is None:
        scale = AttributeTrainConfig(object_scale=preset.data.object_scale)
        classifier = load_or_train_attribute_classifier(image_size=sizes[-1], config=scale)
    test = build_dataset(preset.data, "test", sizes, vocab=vocab, train=False)
    dev = torch.device("cpu")
    rows = []
    for step, seconds, state in copies:
        generator = Generator(preset.generator)
        generator.load_state_dict(state)
        measured = measure_generator(generator.eval(), text_encoder, image_encoder, vocab, test, classifier, dev,
                                     seed=args.seed, num_eval=num_eval)  # fmt: skip
        rows.append(_row(step, seconds, measured.metrics))
    final = _row(report["steps"]["gan"], report["seconds"]["training"], report["metrics"])
    if not rows or rows[-1]["step"] != final["step"]:
        rows.append(final)
    _print(rows)
    result = {
        "seed": args.seed,
        "minutes": args.minutes,
        "overrides": args.overrides,
        "damsm_steps": report["steps"]["damsm"],
        "rows": rows,
        "summary": summary_rows(report["metrics"]),
    }
    (Path(args.out) / "frontier.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
