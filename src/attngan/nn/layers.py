"""Building blocks shared by the generator and the discriminators (original code/model.py).

Parameter-free layers (Upsample, GLU, LeakyReLU) keep their ``nn.Sequential`` index so that state-dict
keys match the original release (e.g. ``upsample1.1.weight`` is the conv after the Upsample).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn


class GLU(nn.Module):
    """Gated linear unit over dim 1: first half * sigmoid(second half)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.size(1)
        if c % 2:
            raise ValueError(f"GLU needs an even number of channels, got {c}")
        # chunk (not slicing): its backward keeps a channels-last gradient channels-last, which BatchNorm's
        # backward needs to stay on its fast path.
        a, b = x.chunk(2, dim=1)
        return a * torch.sigmoid(b)


def conv2d_matmul(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int, padding: int
) -> torch.Tensor:
    """``F.conv2d`` as unfold (im2col) + one matmul.

    For convs with few output pixels and many channels (the 8x8 and 4x4 layers of the discriminators) this
    is several times faster on CPUs than the direct kernels, forward and backward; the output keeps the
    memory format of the weight.
    """
    b, _, h, w = x.shape
    o, i, kh, kw = weight.shape
    ho, wo = (h + 2 * padding - kh) // stride + 1, (w + 2 * padding - kw) // stride + 1
    cols = F.unfold(x, (kh, kw), padding=padding, stride=stride)  # (B, I*kh*kw, L), rows ordered (i, ky, kx)
    # One (B*L, K) @ (K, O) matmul, so that the weight gradient is one matmul too (no per-sample copies).
    if weight.is_contiguous(memory_format=torch.channels_last):
        # Reorder the (small) columns to (ky, kx, i) rather than copying the (large) weight.
        rows = cols.view(b, i, kh * kw, ho * wo).permute(0, 3, 2, 1).reshape(b * ho * wo, kh * kw * i)
        w2 = weight.permute(0, 2, 3, 1).reshape(o, kh * kw * i)  # a view
    else:
        rows = cols.transpose(1, 2).reshape(b * ho * wo, i * kh * kw)
        w2 = weight.reshape(o, i * kh * kw)
    out = F.linear(rows, w2, bias)  # (B*L, O); its weight gradient comes out in w2's (= weight's) layout
    out = out.view(b, ho, wo, o).permute(0, 3, 1, 2)  # channels-last (B, O, ho, wo)
    return out if weight.is_contiguous(memory_format=torch.channels_last) else out.contiguous()


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters and keys) that may run as :func:`conv2d_matmul`.

    ``matmul_max_pixels`` (0: off, the default): on CPU, convs with at most this many output pixels use
    the im2col matmul. Set it with ``attngan.nn.fast.set_matmul_conv``.
    """

    matmul_max_pixels = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        limit = self.matmul_max_pixels
        if limit and x.device.type == "cpu" and self.groups == 1 and self.dilation == (1, 1):
            (kh, kw), (sh, sw), pad = self.kernel_size, self.stride, self.padding
            if sh == sw and isinstance(pad, tuple) and pad[0] == pad[1] and self.padding_mode == "zeros":
                ho = (x.size(2) + 2 * pad[0] - kh) // sh + 1
                wo = (x.size(3) + 2 * pad[1] - kw) // sw + 1
                if ho * wo <= limit:
                    return conv2d_matmul(x, self.weight, self.bias, sh, pad[0])
        return super().forward(x)


class BatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` (same parameters and keys) that can normalise one batch as several.

    With ``group_sizes`` set (by :func:`batch_groups`), a training-mode call on a concatenation of
    batches normalises each part by its own statistics and updates the running statistics once per part,
    in order: the same as calling the layer on each part separately. It lets the discriminators judge
    real and fake images in one pass (one conv per layer, one weight gradient) while keeping the original's
    separate BatchNorm batches (Eq. 5).
    """

    group_sizes: tuple[int, ...] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sizes = self.group_sizes
        if sizes is None or len(sizes) == 1 or not (self.training or self.running_mean is None):
            return super().forward(x)
        if sum(sizes) != x.size(0):
            raise ValueError(f"batch groups {sizes} do not add up to the batch of {x.size(0)}")
        return torch.cat([super(BatchNorm2d, self).forward(part) for part in x.split(list(sizes))])


@contextmanager
def batch_groups(module: nn.Module, sizes: Sequence[int] | None) -> Iterator[None]:
    """Within the block, every :class:`BatchNorm2d` in ``module`` treats its input as the batches of
    ``sizes`` (``None``: one batch)."""
    norms = [m for m in module.modules() if isinstance(m, BatchNorm2d)]
    value = tuple(int(s) for s in sizes) if sizes is not None else None
    for m in norms:
        m.group_sizes = value
    try:
        yield
    finally:
        for m in norms:
            m.group_sizes = None


def conv1x1(in_ch: int, out_ch: int, bias: bool = False) -> nn.Conv2d:
    return Conv2d(in_ch, out_ch, kernel_size=1, stride=1, padding=0, bias=bias)


def conv3x3(in_ch: int, out_ch: int) -> nn.Conv2d:
    return Conv2d(in_ch, out_ch, kernel_size=3, stride=1, padding=1, bias=False)


# Nearest 2x upsampling followed by a 3x3 conv (padding 1) is a stride-2 transposed conv with a 4x4
# kernel: along each axis output 2i reads inputs (i-1, i) with taps (w0, w1+w2) and output 2i+1 reads
# (i, i+1) with taps (w0+w1, w2). Row k of this matrix gives tap k of the 4-tap kernel from the 3 taps.
_UPSAMPLE_TAPS = ((0.0, 0.0, 1.0), (0.0, 1.0, 1.0), (1.0, 1.0, 0.0), (1.0, 0.0, 0.0))


def upsample_conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``conv3x3(upsample_nearest_2x(x))`` as one transposed conv: the same maths in 16/36 of the FLOPs.

    Args:
        x: (B, I, H, W); weight: (O, I, 3, 3) of the conv that follows the upsampling; bias: (O,) or None.
    Returns:
        (B, O, 2H, 2W).
    """
    return F.conv_transpose2d(x, upsample_kernel(weight), bias, stride=2, padding=1)


def upsample_kernel(weight: torch.Tensor) -> torch.Tensor:
    """The (I, O, 4, 4) transposed-conv kernel equal to upsample-2x-then-``weight`` (O, I, 3, 3)."""
    m = weight.new_tensor(_UPSAMPLE_TAPS)  # (4, 3)
    # In the weight's dtype even under autocast: the kernel may be cached and reused outside the autocast
    # region (a bf16 kernel against float32 inputs fails); the conv that follows casts it where autocast is on.
    off = weight.device.type in ("cpu", "cuda")
    with torch.autocast(weight.device.type, enabled=False) if off else contextlib.nullcontext():
        kernel = torch.einsum("ka,oiab,lb->iokl", m, weight, m)  # (I, O, 4, 4): conv_transpose2d layout
    if weight.is_contiguous(memory_format=torch.channels_last):  # keep the network's memory format
        kernel = kernel.contiguous(memory_format=torch.channels_last)
    return kernel


class UpBlock(nn.Sequential):
    """2x nearest upsample -> conv3x3 -> BN -> GLU (original ``upBlock``).

    With ``fast_upsample = True`` the upsample and the conv run as one transposed conv
    (:func:`upsample_conv3x3`); parameters and results are the same up to float rounding. Off by default.
    """

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(
            nn.Upsample(scale_factor=2, mode="nearest"),
            conv3x3(in_ch, out_ch * 2),
            nn.BatchNorm2d(out_ch * 2),
            GLU(),
        )
        self.fast_upsample = False
        self._kernel_cache: tuple | None = None  # (weight version, inference mode, kernel) without autograd

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self[1]
        small = 4 * x.size(2) * x.size(3) <= getattr(conv, "matmul_max_pixels", 0) and x.device.type == "cpu"
        if not self.fast_upsample or small:  # tiny outputs: upsample + im2col matmul is faster
            return super().forward(x)
        if torch.is_grad_enabled():
            kernel = upsample_kernel(conv.weight)
        else:  # sampling: compose the kernel once per weight version, not once per call
            key = (conv.weight._version, torch.is_inference_mode_enabled(), conv.weight.data_ptr())
            if self._kernel_cache is None or self._kernel_cache[0] != key:
                self._kernel_cache = (key, upsample_kernel(conv.weight))
            kernel = self._kernel_cache[1]
        return self[3](self[2](F.conv_transpose2d(x, kernel, conv.bias, stride=2, padding=1)))


def up_block(in_ch: int, out_ch: int) -> UpBlock:
    """2x nearest upsample -> conv3x3 -> BN -> GLU (original ``upBlock``)."""
    return UpBlock(in_ch, out_ch)


def conv_bn_lrelu(in_ch: int, out_ch: int) -> nn.Sequential:
    """conv3x3 -> BN -> LeakyReLU(0.2) (original ``Block3x3_leakRelu``)."""
    return nn.Sequential(conv3x3(in_ch, out_ch), BatchNorm2d(out_ch), nn.LeakyReLU(0.2, inplace=True))


def down_block(in_ch: int, out_ch: int) -> nn.Sequential:
    """4x4 stride-2 conv -> BN -> LeakyReLU(0.2) (original ``downBlock``)."""
    return nn.Sequential(
        Conv2d(in_ch, out_ch, 4, 2, 1, bias=False), BatchNorm2d(out_ch), nn.LeakyReLU(0.2, inplace=True)
    )


def encode_image_downsample(df_dim: int, num_down: int = 4) -> nn.Sequential:
    """``num_down`` stride-2 4x4 convs ending at 8*df channels (original ``encode_image_by_16times`` for 4).

    The first conv has no BatchNorm. With ``num_down < 4`` (images smaller than 64 px) the widths start
    higher so that the output still has 8*df channels.
    """
    if not 1 <= num_down <= 4:
        raise ValueError(f"num_down must be in 1..4, got {num_down}")
    widths = [df_dim * 2 ** (j + 4 - num_down) for j in range(num_down)]
    layers: list[nn.Module] = [Conv2d(3, widths[0], 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True)]
    for j in range(1, num_down):
        layers += [
            Conv2d(widths[j - 1], widths[j], 4, 2, 1, bias=False),
            BatchNorm2d(widths[j]),
            nn.LeakyReLU(0.2, inplace=True),
        ]
    return nn.Sequential(*layers)


class ResBlock(nn.Module):
    """x + (conv3x3 -> BN -> GLU -> conv3x3 -> BN)(x); no activation after the sum (original)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            conv3x3(channels, channels * 2),
            nn.BatchNorm2d(channels * 2),
            GLU(),
            conv3x3(channels, channels),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x) + x


@torch.no_grad()
def init_weights_original(module: nn.Module) -> None:
    """The original ``weights_init``: orthogonal conv/linear weights, BN weight ~ N(1, 0.02), zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.orthogonal_(m.weight, gain=1.0)
            if isinstance(m, nn.Linear) and m.bias is not None:
                m.bias.zero_()
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.weight.normal_(1.0, 0.02)
            m.bias.zero_()
