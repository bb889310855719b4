"""Generation rate of the built-in shapes dataset on this machine (one core, no DataLoader workers).

    python benchmarks/bench_shapes.py                 # sizes 32 64 128 256, ~1 s each
    python benchmarks/bench_shapes.py --sizes 64 --seconds 3 --max-objects 3

Columns: ``render`` is :func:`render_scene` alone (uint8 array at one size); ``dataset`` is a full
``ShapesDataset.__getitem__`` (render at the size, downsample to size/2, tensors, caption). ``--smoke``: one
size (32) for 0.05 s per column (the test suite runs it).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from attngan.data.synthetic import ShapesDataset, render_scene, sample_scene


def rate(fn, seconds: float) -> float:
    """Calls of ``fn`` per second, measured for about ``seconds``."""
    fn(0)  # warm-up
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        fn(n)
        n += 1
    return n / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--seconds", type=float, default=1.0, help="measuring time per size and column")
    parser.add_argument("--max-objects", type=int, default=1, choices=[1, 2, 3])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="seconds: size 32, 0.05 s per column")
    args = parser.parse_args(argv)
    if args.smoke:
        args.sizes, args.seconds = [32], 0.05
    torch.set_num_threads(1)  # as in a DataLoader worker; avoids thread contention on busy machines

    rng = np.random.default_rng(args.seed)
    scenes = [sample_scene(rng, args.max_objects) for _ in range(256)]
    t0 = time.perf_counter()
    ds_build = ShapesDataset(num_images=1000, image_sizes=[32], max_objects=args.max_objects, seed=args.seed)
    build = len(ds_build) / (time.perf_counter() - t0)
    print(f"scene + caption sampling (dataset construction): {build:,.0f} images/s")
    print(f"{'size':>6} {'render img/s':>14} {'dataset img/s':>15}")
    for size in args.sizes:
        render = rate(lambda i, s=size: render_scene(scenes[i % len(scenes)], s, rng), args.seconds)
        ds = ShapesDataset(
            num_images=256,
            image_sizes=[max(8, size // 2), size],
            max_objects=args.max_objects,
            seed=args.seed,
        )
        items = rate(lambda i, d=ds: d[i % len(d)], args.seconds)
        print(f"{size:>6} {render:>14,.0f} {items:>15,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
