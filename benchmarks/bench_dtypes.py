"""The rate of the kernels that dominate AttnGAN in each floating-point type: does lower precision pay here?

Prints GFLOP/s of a 2048 x 2048 matmul and of the two kinds of convolution that carry most of a training
step (forward + backward, channels-last): a 3x3 stride-1 conv as in the generator's residual and
upsampling blocks, and a 4x4 stride-2 conv as in the discriminators' down-sampling, in float32, bfloat16
and float16 (and TF32 on CUDA), with the ratio to float32. On a CPU with AMX-BF16 the bf16 kernels run
several times faster than float32; on CPUs without AMX they ran slower, and fp16 convolutions have no CPU
kernel (benchmarks/README.md). ``gan_train.mixed_precision=auto`` is bf16 on CUDA only.

    python benchmarks/bench_dtypes.py                 # CPU
    python benchmarks/bench_dtypes.py --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import start_run  # noqa: E402
from machine import synchronize, time_calls  # noqa: E402


def workloads(device: torch.device, dtype: torch.dtype, batch: int, n: int = 2048, hw: int = 128):
    """(name, GFLOP per call, fn) of each kernel in ``dtype``: an n x n matmul, convs on hw x hw inputs."""
    gen = torch.Generator().manual_seed(0)

    def make(*shape, grad=False, cl=False):
        t = torch.randn(*shape, generator=gen).to(device, dtype)
        if cl:
            t = t.contiguous(memory_format=torch.channels_last)
        return t.requires_grad_(grad)

    a, b = make(n, n), make(n, n)
    x3, w3 = make(batch, 64, hw, hw, grad=True, cl=True), make(64, 64, 3, 3, grad=True, cl=True)
    x4, w4 = make(batch, 128, hw // 2, hw // 2, grad=True, cl=True), make(256, 128, 4, 4, grad=True, cl=True)

    def conv(x, w, **kw):
        def fn():
            y = F.conv2d(x, w, **kw)
            y.backward(torch.ones_like(y))
            x.grad = w.grad = None

        return fn

    conv3_flops = 3 * 2 * batch * hw * hw * 64 * 64 * 9  # forward, input gradient, weight gradient
    conv4_flops = 3 * 2 * batch * (hw // 4) ** 2 * 256 * 128 * 16
    return [
        (f"matmul {n}^2", 2 * n**3 / 1e9, lambda: a @ b),
        (f"conv 3x3 s1 64->64 {batch}x{hw}^2 f+b", conv3_flops / 1e9, conv(x3, w3, padding=1)),
        (f"conv 4x4 s2 128->256 {batch}x{hw // 2}^2 f+b", conv4_flops / 1e9, conv(x4, w4, stride=2, padding=1)),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--batch-size", type=int, default=4, help="batch of the convolutions (default: 4)")
    parser.add_argument("--reps", type=int, default=5, help="timed calls per row (median; default: 5)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--max-seconds", type=float, default=3.0,
        help="a kernel whose first call takes longer is timed from that call alone (default: 3)",
    )  # fmt: skip
    parser.add_argument("--smoke", action="store_true", help="seconds: a 256^2 matmul, convs on 16^2 inputs, one call")
    args = parser.parse_args(argv)
    sizes = {"n": 256, "hw": 16} if args.smoke else {}
    if args.smoke:
        args.batch_size, args.reps = 1, 1
    device = start_run(args.device, args.threads, argv)
    types = [("float32", torch.float32, False), ("bfloat16", torch.bfloat16, False), ("float16", torch.float16, False)]
    if device.type == "cuda":
        types.insert(1, ("tf32", torch.float32, True))
    rates: dict[tuple[str, str], float] = {}
    print(f"{'kernel':38} {'dtype':9} {'ms/call':>9} {'GFLOP/s':>9} {'x float32':>9}")
    for label, dtype, tf32 in types:
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
        for name, gflop, fn in workloads(device, dtype, args.batch_size, **sizes):
            start = time.perf_counter()
            fn()
            synchronize(device)
            first = time.perf_counter() - start
            if first > args.max_seconds:
                seconds = first
            else:
                seconds = statistics.median(time_calls(fn, device, warmup=1, reps=args.reps))
            rates[name, label] = gflop / seconds
            ratio = rates[name, label] / rates[name, "float32"]
            print(f"{name:38} {label:9} {1000 * seconds:>9.1f} {rates[name, label]:>9.0f} {ratio:>9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
