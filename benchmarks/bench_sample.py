"""Sampling speed: text encoder + all generator stages, with the attention maps (plain vs fast path).

    python benchmarks/bench_sample.py                        # birds and coco: 1 sentence and a batch of 16
    python benchmarks/bench_sample.py --presets birds --batch-sizes 1 --configs plain fast fast+compile

``B = 1`` is the latency of one sentence (``s/call``); larger ``B`` the throughput (``img/s``). Plain: the
generator as trained (float32, eager, channels-first, upsample then conv, BatchNorm as a separate op).
Fast: an inference copy with BatchNorm folded into the convs, the upsample+conv as one transposed conv,
channels-last, im2col matmuls for the 8x8 and 4x4 layers (see common.Sampler). Both return the images of
every stage and the attention maps (explicit attention). Random weights and captions.

``--configs pipeline pipeline-plain`` measure what a user calls, ``attngan.AttnGANPipeline`` (tokenising,
the per-image noise generators and the PIL images included), with its default inference copy of G
(``pipeline``, the library's fast path) or with the generator as trained (``pipeline-plain``).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import bench_main  # noqa: E402

if __name__ == "__main__":
    bench_main(__file__, "sample", __doc__, configs=["plain", "fast"], batch_sizes=[1, 16], unit="img/s", reps=10)
