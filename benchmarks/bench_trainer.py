"""The library's own training loop (``attngan.training.train_gan``), plain against its fast settings.

    python benchmarks/bench_trainer.py                          # birds settings, batch 4, 8 steps, 2 rounds
    python benchmarks/bench_trainer.py --preset shapes --batch-size 32 --steps 60

``bench_train.py`` times a bare training step built from ``attngan.nn`` and ``attngan.losses`` (every
fast-path switch separately). This script times what ``attngan train`` runs: data loading from the
built-in shapes dataset rendered at the preset's resolutions (64/128/256 for birds), the frozen DAMSM
encoders, the D and G phases, the EMA, statistics and logging; no sample grids or snapshots inside the
timed steps. The encoders come from a one-step DAMSM run with a randomly initialised Inception (speed
does not depend on the weights). Rows, each run twice in interleaved rounds in this process:

* ``plain``: ``gan_train.fast_kernels=false gan_train.channels_last=false`` (float32, eager, upsample then
  conv, explicit attention with maps, BatchNorm as separate ops, channels-first);
* ``fast_kernels``: ``gan_train.fast_kernels=true gan_train.channels_last=false``;
* ``fast`` (the default settings): ``fast_kernels`` and channels-last, and on a GPU bf16 autocast
  (``gan_train.mixed_precision=auto``; the other rows are float32);
* ``fast-bf16``: ``fast`` with ``gan_train.mixed_precision=bf16``. On a CPU ``train_gan`` runs that setting
  in float32 (mixed precision is for CUDA); this row lets it reach the CPU's bf16 autocast instead (as
  ``tests/test_training.py`` does), so the same loop runs its networks in bf16 (weights, optimizer states
  and DAMSM scores stay float32). It pays on CPUs with AMX (``benchmarks/README.md``).

The median seconds per step of each run (after 2 warm-up steps) are printed, and images/s from their
median. ``--profile`` runs each config once under ``torch.profiler`` (the steps after the 2 warm-up ones)
and prints its top operators by self CPU time. ``--accuracy`` times nothing: it runs one step of each of
``--configs`` from the same weights and batch and prints each loss and each optimizer's gradients (the
first step's, captured before the update) against the first config: relative difference of the loss,
``|g - g_ref| / |g_ref|`` over all of an optimizer's parameters, and their cosine. ``--smoke`` (seconds;
the test suite runs it): the tiny preset, batch 2, one timed step per row.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from attngan.config import PRESETS, apply_overrides
from attngan.training.cpu import tune_cpu_allocator
from attngan.training.damsm import train_damsm
from attngan.training.gan import train_gan

CONFIGS = {
    "plain": ["gan_train.fast_kernels=false", "gan_train.channels_last=false", "gan_train.mixed_precision=no"],
    "fast_kernels": ["gan_train.fast_kernels=true", "gan_train.channels_last=false", "gan_train.mixed_precision=no"],
    "fast": ["gan_train.fast_kernels=true", "gan_train.channels_last=true", "gan_train.mixed_precision=auto"],
    "fast-bf16": ["gan_train.fast_kernels=true", "gan_train.channels_last=true", "gan_train.mixed_precision=bf16"],
}


def library_preset(preset: str, batch_size: int, sets: list[str], steps: int = 0):
    """The preset's settings on the built-in shapes data rendered at its resolutions, no samples/snapshots;
    images enough for ``steps`` in one epoch (a new epoch starts new loader workers, which a GPU step would
    notice)."""
    return apply_overrides(
        PRESETS[preset],
        [
            "data.dataset=shapes",
            "data.data_dir=",
            "text_encoder.vocab_size=0",
            f"data.num_images={max(64, 4 * batch_size, (steps + 1) * batch_size)}",
            f"damsm_train.batch_size={batch_size}",
            f"gan_train.batch_size={batch_size}",
            "gan_train.sample_every=1000000",
            "gan_train.snapshot_every=1000000",
            "damsm_train.snapshot_every=1000000",
            *sets,
        ],
    )


def make_encoders(base, tmp: str) -> Path:
    """DAMSM encoders from a one-step run with a randomly initialised Inception (speed does not depend on
    the weights): the run folder ``train_gan(damsm=...)`` takes."""
    damsm = train_damsm(
        base, runs_dir=tmp, device="cpu", max_steps=1, backbone_weights=None, val_set=False, progress=False,
        tensorboard=False,
    )  # fmt: skip
    return damsm.run_dir


def run_loop(base, config: str, damsm_dir: Path, tmp: str, steps: int, device: str, callback) -> None:
    """``train_gan`` for ``steps`` steps with the settings of ``CONFIGS[config]``, ``callback`` after each."""
    train_gan(
        apply_overrides(base, CONFIGS[config]), damsm=damsm_dir, runs_dir=tmp, device=device, max_steps=steps,
        progress=False, tensorboard=False, num_samples=0, keep_checkpoints=1, callback=callback,
    )  # fmt: skip


def loop_step_times(
    base, config: str, damsm_dir: Path, tmp: str, steps: int, device: str, after_first_step=None
) -> list[float]:
    """Seconds per step of ``train_gan`` with the settings of ``CONFIGS[config]``, warm-up steps dropped.
    ``after_first_step``: called once when the first step has ended (the loop is built, the optimizers hold
    their states), e.g. to start a memory window there."""
    stamps: list[float] = []

    def callback(info) -> None:
        stamps.append(time.perf_counter())
        if len(stamps) == 1 and after_first_step is not None:
            after_first_step()

    run_loop(base, config, damsm_dir, tmp, steps, device, callback)
    return [b - c for b, c in zip(stamps[1:], stamps[:-1])][2:]


def print_profile(base, config: str, damsm_dir: Path, tmp: str, steps: int, rows: int = 15) -> None:
    """``torch.profiler`` over the steps of a ``train_gan`` run after its first 3 (start and 2 warm-up), up
    to its last (``steps`` > 3); the run's end (checkpoint, export) is left out."""
    steps = max(steps, 4)
    profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
    seen: list[float] = []

    def callback(info) -> None:
        seen.append(time.perf_counter())
        if len(seen) == 3:
            profiler.start()
        elif len(seen) == steps:
            profiler.stop()

    run_loop(base, config, damsm_dir, tmp, steps, "cpu", callback)
    print(f"# {config}: {len(seen) - 3} steps profiled, {(seen[-1] - seen[2]) / max(len(seen) - 3, 1):.3f} s/step")
    print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def first_step(base, config: str, damsm_dir: Path, tmp: str) -> tuple[dict[str, float], list[torch.Tensor]]:
    """One ``train_gan`` step with ``CONFIGS[config]``: its losses, and each optimizer's gradients (flattened,
    float32, in the order the loop steps the optimizers) as they are when that optimizer first steps."""
    losses: dict[str, float] = {}
    grads: dict[int, torch.Tensor] = {}
    steps = {cls: cls.step for cls in {torch.optim.Adam, *torch.optim.Adam.__subclasses__()}}

    def capture(step_fn):
        def step(self, *args, **kwargs):
            if id(self) not in grads:
                grads[id(self)] = torch.cat(
                    [q.grad.detach().float().reshape(-1) for g in self.param_groups for q in g["params"] if q.grad is not None]
                )
            return step_fn(self, *args, **kwargs)

        return step

    for cls, step_fn in steps.items():
        cls.step = capture(step_fn)
    try:
        run_loop(
            base, config, damsm_dir, tmp, 1, "cpu", lambda info: losses.update({k: float(v) for k, v in info.losses.items()})
        )
    finally:
        for cls, step_fn in steps.items():
            cls.step = step_fn
    return losses, list(grads.values())


def print_accuracy(base, configs: list[str], damsm_dir: Path, tmp: str) -> None:
    """Losses and gradients of one step of each config against the first (see the module docstring)."""
    ref_losses, ref_grads = first_step(base, configs[0], damsm_dir, tmp)
    for name in configs[1:]:
        losses, grads = first_step(base, name, damsm_dir, tmp)
        print(f"# {name} against {configs[0]}, one step, same weights and batch")
        print(f"{'loss':<16}{configs[0]:>14}{name:>14}{'rel. diff':>12}")
        for key, ref in ref_losses.items():
            if key in losses:
                rel = abs(losses[key] - ref) / max(abs(ref), 1e-12)
                print(f"{key:<16}{ref:>14.6f}{losses[key]:>14.6f}{rel:>12.2e}")
        print(f"{'gradients':<16}{'parameters':>14}{'|g-g_ref|/|g_ref|':>20}{'cosine':>10}")
        labels = [f"D{i}" for i in range(len(grads) - 1)] + ["G"]  # the loop's phase order
        for label, g_ref, g in zip(labels, ref_grads, grads):
            g_ref, g = g_ref.double(), g.double()
            rel = float((g - g_ref).norm() / g_ref.norm().clamp_min(1e-30))
            cos = float(torch.nn.functional.cosine_similarity(g, g_ref, dim=0))
            print(f"{label:<16}{g.numel():>14}{rel:>20.3e}{cos:>10.5f}")


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="birds", choices=sorted(PRESETS))
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--steps", type=int, default=8, help="steps per run (the first 2 are not timed)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (the DAMSM encoders are made on the CPU)")
    p.add_argument("--set", action="append", default=[], help="preset override section.key=value")
    p.add_argument(
        "--tune-malloc", action="store_true",
        help="keep freed memory for reuse in this process, for every row (as `attngan train` does by default)",
    )  # fmt: skip
    p.add_argument("--profile", action="store_true", help="one run per config under torch.profiler: top operators")
    p.add_argument("--accuracy", action="store_true", help="one step per config: losses and gradients against the first")
    p.add_argument("--smoke", action="store_true", help="seconds: tiny preset, batch 2, one timed step per row")
    a = p.parse_args(argv)
    if a.smoke:
        a.preset, a.batch_size, a.steps, a.rounds = "tiny", 2, 4, 1
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.tune_malloc and not tune_cpu_allocator():
        p.error("--tune-malloc needs Linux with glibc")
    base = library_preset(a.preset, a.batch_size, a.set, a.steps)
    with tempfile.TemporaryDirectory() as tmp:
        damsm_dir = make_encoders(base, tmp)
        if a.accuracy:
            print_accuracy(base, a.configs, damsm_dir, tmp)
            return 0
        if a.profile:
            for name in a.configs:
                print_profile(base, name, damsm_dir, tmp, a.steps)
            return 0
        per_step: dict[str, list[float]] = {}
        for rnd in range(a.rounds):
            for name in a.configs:
                per_step.setdefault(name, []).append(statistics.median(loop_step_times(base, name, damsm_dir, tmp, a.steps, a.device)))
                print(f"  {name} round {rnd + 1}: {per_step[name][-1]:.3f} s/step", flush=True)
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M')}  {device_name(a.device)}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, load {os.getloadavg()[0]:.1f}, "
        f"malloc {'tuned' if a.tune_malloc else 'default'}"
    )
    print(f"# preset {a.preset}, batch {a.batch_size}, {a.steps} steps per run, {a.rounds} rounds")
    print(f"{'config':<14}{'s/step (runs)':>24}{'img/s':>8}{'x plain':>9}")
    ref = statistics.median(per_step["plain"]) if "plain" in per_step else None
    for name, values in per_step.items():
        med = statistics.median(values)
        runs = ", ".join(f"{v:.3f}" for v in values)
        ratio = f"{ref / med:.2f}" if ref else "-"
        print(f"{name:<14}{runs:>24}{a.batch_size / med:>8.2f}{ratio:>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
