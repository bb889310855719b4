"""Shared pieces of the benchmarks: plain reference computations, training steps and a sampler with
fast-path flags, synthetic batches, timing, FLOP counting, peak memory and the machine's matmul rate.

The *plain path* is what a direct transcription of the paper / original code does: float32, eager,
channels-first, the DAMSM word loss as a per-caption Python loop (original ``words_loss`` and
``func_attention``, Eq. 7-13), explicit word attention in the generator (Eq. 2), one backward through
everything. The *fast path* computes the same mathematics; every option is a field of
:class:`StepOptions`, so that each can be switched on alone. ``tests/test_fast_path.py`` checks that
both paths agree.

This module is for the scripts in ``benchmarks/`` and the tests; the library does not import it. The
GAN step is built here from ``attngan.nn`` and ``attngan.losses`` (one D step per stage, then a G step,
then the EMA of G, as ``trainer.py`` of the original release).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from attngan import losses
from attngan.config import PRESETS, DiscriminatorConfig, Preset, apply_overrides
from attngan.nn import (
    Discriminator,
    Generator,
    ImageEncoder,
    TextEncoder,
    fold_batchnorm,
    set_fast_upsample,
    set_matmul_conv,
)
from attngan.nn.encoders import INCEPTION_BLOCKS
from attngan.training import tune_cpu_allocator
from attngan.training.optim import FlatAdam

# ----------------------------------------------------------------------------------------------- machine


def cpu_flags() -> set[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


@functools.cache
def native_bf16(device: torch.device) -> bool:
    """Whether bf16 pays: CUDA with bf16, or a CPU with AMX, or with AVX512-BF16 where a bf16 matmul is
    measured faster than a float32 one (one host with AVX512-BF16 but no AMX ran bf16 at 190 against
    343 GFLOP/s for float32, 2026-11-27)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    flags = cpu_flags()
    if "amx_bf16" in flags:
        return True
    if "avx512_bf16" not in flags:
        return False
    rates = {}
    for dtype in (torch.float32, torch.bfloat16):
        a = torch.randn(1024, 1024, dtype=dtype)
        a @ a
        start = time.perf_counter()
        for _ in range(5):
            a @ a
        rates[dtype] = 1 / (time.perf_counter() - start)
    return rates[torch.bfloat16] > 1.2 * rates[torch.float32]


def machine_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    model = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = cpu_flags()
    isa = "AVX-512" if "avx512f" in flags else ("AVX2" if "avx2" in flags else "")
    bf16 = (
        "native bf16"
        if native_bf16(device)
        else ("bf16 slower than fp32" if "avx512_bf16" in flags else "no native bf16")
    )
    return f"{model}, {torch.get_num_threads()} threads, {isa}, {bf16}, torch {torch.__version__}"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(
    device: torch.device, n: int = 2048, reps: int = 5, dtype: torch.dtype = torch.float32
) -> float:
    """Median rate of an (n x n) @ (n x n) matmul in GFLOP/s: the machine's practical peak."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device, dtype)
    b = torch.randn(n, n, generator=gen).to(device, dtype)
    times = time_calls(lambda: a @ b, device, warmup=2, reps=reps)
    return 2 * n**3 / statistics.median(times) / 1e9


def reference_matmul_dtype(device: torch.device) -> torch.dtype:
    """The dtype whose matmul rate the tables compare against: bf16 on a GPU that has it, else float32."""
    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8:  # native, not emulated bf16
        return torch.bfloat16
    return torch.float32


def time_calls(
    fn: Callable[[], object],
    device: torch.device,
    warmup: int,
    reps: int,
    cpu_times: list[float] | None = None,
) -> list[float]:
    """Wall-clock seconds of ``reps`` calls of ``fn`` after ``warmup`` calls (device synchronised).

    ``cpu_times`` (optional) receives the process CPU seconds of each timed call: with one thread a
    measure of the work that other processes on a shared machine barely disturb.
    """
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(reps):
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
        if cpu_times is not None:
            cpu_times.append(time.process_time() - cpu)
    return times


def _proc_status_mb(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def release_freed_memory() -> None:
    """Return memory freed by Python/torch to the OS (glibc ``malloc_trim``), so that RSS is live memory."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak_memory(device: torch.device) -> bool:
    """Start a new peak: CUDA's peak stats, or the process's RSS high-water mark (Linux clear_refs)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def current_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    rss = _proc_status_mb("VmRSS")
    return rss if rss is not None else peak_memory_mb(device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory since the last reset: ``max_memory_allocated`` on CUDA, the RSS high-water mark on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    hwm = _proc_status_mb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn`` (matmuls, convolutions, attention; forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def run_worker(script: str | Path, args: list[str], timeout: float = 1800, in_process: bool = False) -> dict:
    """Run ``python script --worker ...`` in a fresh process (its own peak memory); returns its JSON.

    ``in_process`` (smoke runs): ``worker_main(args)`` in this process instead, the thread count restored
    after it; the peak memory is then the process's.
    """
    if in_process:
        import io

        threads, buf = torch.get_num_threads(), io.StringIO()
        try:
            with contextlib.redirect_stdout(buf):
                worker_main(["--worker", *args])
        finally:
            torch.set_num_threads(threads)
        return json.loads([ln for ln in buf.getvalue().splitlines() if ln.startswith("{")][-1])
    env = dict(os.environ)
    proc = subprocess.run(
        [sys.executable, str(script), "--worker", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"worker {args} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


# ------------------------------------------------------------------------------ plain reference losses


def func_attention_plain(
    query: torch.Tensor, context: torch.Tensor, gamma1: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The original ``func_attention`` (Eq. 7-9), step by step.

    Args:
        query: (B, D, T) words of one caption repeated per image; context: (B, D, h, w) regions.
    Returns:
        weighted context (B, D, T) and attention (B, T, h, w).
    """
    b, d, t = query.shape
    ih, iw = context.shape[2:]
    n = ih * iw
    context = context.reshape(b, d, n)  # (B, D, N)
    attn = torch.bmm(context.transpose(1, 2), query)  # (B, N, T)  Eq. 7
    attn = torch.softmax(attn.reshape(b * n, t), dim=1).reshape(b, n, t)  # Eq. 8: over words
    attn = attn.transpose(1, 2).reshape(b * t, n) * gamma1
    attn = torch.softmax(attn, dim=1).reshape(b, t, n)  # Eq. 9: over regions
    weighted = torch.bmm(context, attn.transpose(1, 2))  # (B, D, T)
    return weighted, attn.reshape(b, t, ih, iw)


def words_loss_plain(
    regions: torch.Tensor,
    words: torch.Tensor,
    lengths: torch.Tensor,
    gamma1: float,
    gamma2: float,
    gamma3: float,
    class_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The original ``words_loss``: one caption at a time against all images (Eq. 10-13)."""
    b = words.size(0)
    columns = []
    for i in range(b):
        n_words = int(lengths[i])
        word = words[i : i + 1, :, :n_words].repeat(b, 1, 1)  # (B, D, T_i)
        weighted, _ = func_attention_plain(word, regions, gamma1)  # (B, D, T_i)
        word = word.transpose(1, 2).reshape(b * n_words, -1)
        weighted = weighted.transpose(1, 2).reshape(b * n_words, -1)
        num = (word * weighted).sum(1)
        den = (word.norm(dim=1) * weighted.norm(dim=1)).clamp(min=losses.EPS)
        sim = (num / den).reshape(b, n_words)  # R(c_i, e_i) per image
        columns.append(torch.log(torch.exp(sim * gamma2).sum(dim=1, keepdim=True)))  # Eq. 10
    scores = torch.cat(columns, dim=1) * gamma3  # (B_img, B_cap)  Eq. 11
    if class_ids is not None:
        same = (class_ids[:, None] == class_ids[None, :]) & ~torch.eye(
            b, dtype=torch.bool, device=scores.device
        )
        scores = scores.masked_fill(same, float("-inf"))
    target = torch.arange(b, device=scores.device)
    return F.cross_entropy(scores, target), F.cross_entropy(scores.t(), target)  # Eq. 12, 13


def sent_loss_plain(
    image_vectors: torch.Tensor, sentence: torch.Tensor, gamma3: float, class_ids: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The original ``sent_loss`` (cosine of v-bar and e-bar, Eq. 11-13 at sentence level)."""
    b = image_vectors.size(0)
    num = image_vectors @ sentence.t()
    den = (image_vectors.norm(dim=1)[:, None] * sentence.norm(dim=1)[None, :]).clamp(min=losses.EPS)
    scores = num / den * gamma3
    if class_ids is not None:
        same = (class_ids[:, None] == class_ids[None, :]) & ~torch.eye(
            b, dtype=torch.bool, device=scores.device
        )
        scores = scores.masked_fill(same, float("-inf"))
    target = torch.arange(b, device=scores.device)
    return F.cross_entropy(scores, target), F.cross_entropy(scores.t(), target)


def damsm_total(
    regions: torch.Tensor,
    image_vectors: torch.Tensor,
    words: torch.Tensor,
    sentence: torch.Tensor,
    lengths: torch.Tensor,
    class_ids: torch.Tensor | None,
    preset: Preset,
    vectorized: bool,
) -> torch.Tensor:
    """L_DAMSM (Eq. 14) in float32, by the plain loop or by ``attngan.losses.damsm_loss``."""
    cfg = preset.damsm_loss
    class_ids = class_ids if cfg.class_masking else None
    regions, image_vectors = regions.to(words.dtype), image_vectors.to(words.dtype)  # fp32 under autocast
    with torch.autocast(device_type=regions.device.type, enabled=False):
        if vectorized:
            return losses.damsm_loss(
                regions, image_vectors, words, sentence, lengths,
                gamma1=cfg.gamma1, gamma2=cfg.gamma2, gamma3=cfg.gamma3, class_ids=class_ids,
            ).total  # fmt: skip
        w1, w2 = words_loss_plain(regions, words, lengths, cfg.gamma1, cfg.gamma2, cfg.gamma3, class_ids)
        s1, s2 = sent_loss_plain(image_vectors, sentence, cfg.gamma3, class_ids)
        return w1 + w2 + s1 + s2


# ----------------------------------------------------------------------------------------------- options


@dataclass(frozen=True)
class StepOptions:
    """Fast-path switches. ``StepOptions()`` is the plain path."""

    channels_last: bool = False  # NHWC activations and weights (oneDNN/cuDNN prefer it)
    autocast: str | None = None  # None | "bf16" | "fp16": mixed precision of the networks (losses stay fp32)
    compile: bool = False  # torch.compile the networks
    vectorized_damsm: bool = False  # losses.damsm_loss instead of the per-caption loop
    fused_attention: bool = False  # Generator(need_attention=False): SDPA, no attention maps
    fast_upsample: bool = False  # upsample + conv3x3 as one transposed conv (nn.set_fast_upsample)
    matmul_conv: bool = False  # CPU: convs with <= 64 output pixels as im2col + matmul (nn.set_matmul_conv)
    fold_frozen_bn: bool = False  # fold the frozen Inception's eval BatchNorm into its convs
    split_backward: bool = False  # G step: backward each D / the encoder to the images first (memory)
    fused_optimizer: bool = False  # attngan.training.optim.FlatAdam and a foreach EMA
    joint_d_batches: bool = False  # D step: real and fake in one pass, per-part BatchNorm

    def describe(self) -> str:
        on = [f.name for f in dataclasses.fields(self) if getattr(self, f.name) not in (False, None)]
        if self.autocast:
            on[on.index("autocast")] = f"autocast={self.autocast}"
        return ",".join(on) or "plain"


PLAIN = StepOptions()


def fast_options(device: torch.device, compile: bool = False) -> StepOptions:
    """Every switch that helps on ``device``: bf16 only where it is native (emulated bf16 is slower)."""
    return StepOptions(
        channels_last=True,
        autocast="bf16" if native_bf16(device) else None,
        compile=compile,
        vectorized_damsm=True,
        fused_attention=True,
        fast_upsample=True,
        matmul_conv=device.type == "cpu" and not compile,  # inductor lowers unfold poorly
        fold_frozen_bn=True,
        split_backward=True,
        fused_optimizer=True,
        joint_d_batches=True,
    )


def parse_options(spec: str, device: torch.device) -> StepOptions:
    """``"plain"``, ``"fast"``, ``"fast+compile"``, or ``"a,b,autocast=bf16"`` (field names)."""
    if spec == "plain":
        return PLAIN
    if spec in ("fast", "fast+compile"):
        return fast_options(device, compile=spec.endswith("compile"))
    values: dict[str, object] = {}
    names = {f.name for f in dataclasses.fields(StepOptions)}
    for part in spec.split(","):
        key, _, value = part.partition("=")
        if key not in names:
            raise ValueError(f"unknown option {key!r}; options: {sorted(names)}")
        values[key] = value if key == "autocast" else True
    return StepOptions(**values)


def autocast_context(options: StepOptions, device: torch.device):
    if options.autocast is None:
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[options.autocast]
    return torch.autocast(device_type=device.type, dtype=dtype)


def _format(x: torch.Tensor, options: StepOptions) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if options.channels_last and x.dim() == 4 else x


def _phase(name: str):
    """A labelled range in torch.profiler traces (free when no profiler runs)."""
    return torch.profiler.record_function(name)


def _maybe_compile(module: nn.Module, options: StepOptions):
    return torch.compile(module) if options.compile else module


def make_adam(params, lr: float, betas: tuple[float, float], options: StepOptions):
    """The plain path's ``torch.optim.Adam`` (for-loop), or the library's ``FlatAdam`` (the fused kernel on
    flat views of the parameters; what ``attngan train`` uses with ``gan_train.fast_kernels``)."""
    if options.fused_optimizer:
        return FlatAdam(params, lr=lr, betas=betas)
    return torch.optim.Adam(params, lr=lr, betas=betas, foreach=False)


# ----------------------------------------------------------------------------------------------- batches


@dataclass
class SyntheticBatch:
    images: list[torch.Tensor]  # one (B, 3, s, s) per stage, in [-1, 1]
    captions: torch.Tensor  # (B, T) long, zero-padded
    lengths: torch.Tensor  # (B,) long, on the CPU (pack_padded_sequence wants them there)
    mask: torch.Tensor  # (B, T) bool, True at padding
    class_ids: torch.Tensor  # (B,) long


def preset_by_name(name: str, overrides: list[str] | None = None) -> Preset:
    preset = PRESETS[name]
    return apply_overrides(preset, overrides) if overrides else preset


def synthetic_batch(preset: Preset, batch_size: int, device: torch.device, seed: int = 0) -> SyntheticBatch:
    """Random images, captions of random lengths (T/2..T) and classes; the same for every option."""
    gen = torch.Generator().manual_seed(seed)
    t = preset.data.words_num
    lengths = torch.randint(max(1, t // 2), t + 1, (batch_size,), generator=gen)
    lengths[0] = t  # the longest caption sets T, as in a padded batch
    mask = torch.arange(t)[None, :] >= lengths[:, None]
    captions = torch.randint(1, preset.text_encoder.vocab_size, (batch_size, t), generator=gen).masked_fill(
        mask, 0
    )
    images = [torch.rand(batch_size, 3, s, s, generator=gen) * 2 - 1 for s in preset.generator.image_sizes]
    class_ids = torch.randint(0, max(2, batch_size // 2), (batch_size,), generator=gen)
    return SyntheticBatch(
        images=[im.to(device) for im in images],
        captions=captions.to(device),
        lengths=lengths,
        mask=mask.to(device),
        class_ids=class_ids.to(device),
    )


def discriminator_configs(preset: Preset) -> list[DiscriminatorConfig]:
    g = preset.generator
    sizes = g.image_sizes[-1:] if g.dcgan else g.image_sizes
    return [
        DiscriminatorConfig(
            df_dim=preset.discriminator_df_dim, embed_dim=g.embed_dim, image_size=s, unconditional=not g.dcgan
        )
        for s in sizes
    ]


def frozen_image_encoder(encoder: ImageEncoder, options: StepOptions) -> nn.Module:
    """The image encoder as a frozen feature extractor (BN folded if asked), channels-last if asked."""
    encoder = fold_batchnorm(encoder) if options.fold_frozen_bn else encoder.eval()
    encoder.requires_grad_(False)
    return encoder.to(memory_format=torch.channels_last) if options.channels_last else encoder


# ------------------------------------------------------------------------------------------- GAN step


class GANTrainStep:
    """One AttnGAN iteration (original trainer.py): G forward, a D step per stage (Eq. 5), a G step
    (Eq. 3: Eq. 4 per stage + lambda * L_DAMSM (Eq. 14) + KL), the EMA of G. Call with a batch; returns
    the losses as detached tensors (no host-device sync inside the step).
    """

    def __init__(self, preset: Preset, options: StepOptions, device: torch.device, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.preset, self.options, self.device = preset, options, device
        self.text_encoder = TextEncoder(preset.text_encoder).to(device).eval().requires_grad_(False)
        image_encoder = ImageEncoder(preset.image_encoder).to(device)
        self.generator = Generator(preset.generator).to(device).train()
        self.discriminators = [Discriminator(c).to(device).train() for c in discriminator_configs(preset)]
        if options.fast_upsample:
            set_fast_upsample(self.generator)
        if options.matmul_conv:
            set_matmul_conv(self.generator)
            for d in self.discriminators:
                set_matmul_conv(d)
        if options.channels_last:
            self.generator.to(memory_format=torch.channels_last)
            for d in self.discriminators:
                d.to(memory_format=torch.channels_last)
        self.image_encoder = _maybe_compile(frozen_image_encoder(image_encoder, options), options)
        self.g_forward = _maybe_compile(self.generator, options)
        self.d_forward = [_maybe_compile(d, options) for d in self.discriminators]
        tc = preset.gan_train
        self.opt_g = make_adam(self.generator.parameters(), tc.g_lr, tc.betas, options)
        self.opt_d = [make_adam(d.parameters(), tc.d_lr, tc.betas, options) for d in self.discriminators]
        self.ema = [p.detach().clone() for p in self.generator.parameters()]

    def _text(self, batch: SyntheticBatch) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            return self.text_encoder(batch.captions, batch.lengths)  # (B, D, T), (B, D)

    def __call__(self, batch: SyntheticBatch) -> dict[str, torch.Tensor]:
        opt, gan = self.options, self.preset.gan_loss
        words, sentence = self._text(batch)
        reals = [_format(im, opt) for im in batch.images]
        with _phase("G forward"), autocast_context(opt, self.device):
            fake = self.g_forward(None, sentence, words, batch.mask, need_attention=not opt.fused_attention)
        fakes = fake.images if not self.preset.generator.dcgan else fake.images[-1:]
        reals = reals if not self.preset.generator.dcgan else reals[-1:]
        out: dict[str, torch.Tensor] = {}
        # D steps (Eq. 5), one per stage, on detached fakes.
        for i, (d, d_fwd, od) in enumerate(zip(self.discriminators, self.d_forward, self.opt_d)):
            with _phase(f"D{i} step"):
                od.zero_grad(set_to_none=True)
                with autocast_context(opt, self.device):
                    loss = losses.discriminator_loss(
                        _Judge(d, d_fwd), reals[i], fakes[i], sentence, gan.uncond_weight, opt.joint_d_batches
                    ).total
                loss.backward()
                od.step()
            out[f"D{i}"] = loss.detach()
        # G step (Eq. 3): the Ds judge with frozen parameters.
        self.opt_g.zero_grad(set_to_none=True)
        for d in self.discriminators:
            d.requires_grad_(False)
        try:
            out.update(self._generator_step(fake, fakes, words, sentence, batch))
        finally:
            for d in self.discriminators:
                d.requires_grad_(True)
        with _phase("G optimizer + EMA"):
            self.opt_g.step()
            self._update_ema()
        return out

    def _generator_step(self, fake, fakes, words, sentence, batch) -> dict[str, torch.Tensor]:
        opt, gan = self.options, self.preset.gan_loss
        kl = losses.kl_loss(fake.mu.float(), fake.logvar.float())
        if not opt.split_backward:
            with autocast_context(opt, self.device):
                adv = sum(
                    losses.generator_stage_loss(_Judge(d, f), img, sentence, gan.uncond_weight)
                    for d, f, img in zip(self.discriminators, self.d_forward, fakes)
                )
                regions, image_vectors = self.image_encoder(fakes[-1])
            damsm = damsm_total(
                regions,
                image_vectors,
                words,
                sentence,
                batch.lengths,
                batch.class_ids,
                self.preset,
                opt.vectorized_damsm,
            )
            total = adv + gan.damsm_lambda * damsm + gan.kl_weight * kl
            with _phase("G backward"):
                total.backward()
            return {"G": total.detach()}
        # Same gradients, less memory: each discriminator's (and the encoder's) graph is back-propagated
        # to the images and freed before the next is built; then one backward through G.
        leaves = [img.detach().requires_grad_() for img in fakes]
        total = gan.kl_weight * kl.detach()
        for i, (d, f, leaf) in enumerate(zip(self.discriminators, self.d_forward, leaves)):
            with _phase(f"G step: D{i} forward + backward"):
                with autocast_context(opt, self.device):
                    adv = losses.generator_stage_loss(_Judge(d, f), leaf, sentence, gan.uncond_weight)
                adv.backward()
            total = total + adv.detach()
        with _phase("G step: encoder forward"), autocast_context(opt, self.device):
            regions, image_vectors = self.image_encoder(leaves[-1])
        damsm = damsm_total(
            regions,
            image_vectors,
            words,
            sentence,
            batch.lengths,
            batch.class_ids,
            self.preset,
            opt.vectorized_damsm,
        )
        with _phase("G step: DAMSM + encoder backward"):
            (gan.damsm_lambda * damsm).backward()
        total = total + gan.damsm_lambda * damsm.detach()
        with _phase("G backward"):
            kl_grad = torch.tensor(gan.kl_weight, device=kl.device)
            torch.autograd.backward([*fakes, kl], [leaf.grad for leaf in leaves] + [kl_grad])
        return {"G": total}

    @torch.no_grad()
    def _update_ema(self) -> None:
        params = [p.detach() for p in self.generator.parameters()]
        decay = self.preset.gan_train.ema_decay
        if self.options.fused_optimizer:
            torch._foreach_lerp_(self.ema, params, 1 - decay)
        else:
            for avg, p in zip(self.ema, params):
                avg.mul_(decay).add_(p, alpha=1 - decay)


class _Judge:
    """A discriminator whose ``forward`` may be compiled; ``logits`` stays the module's own."""

    def __init__(self, disc: Discriminator, forward) -> None:
        self.disc, self.forward = disc, forward

    def __call__(self, images: torch.Tensor, groups=None) -> torch.Tensor:
        return self.forward(images) if groups is None else self.forward(images, groups)

    def logits(self, features: torch.Tensor, sentence: torch.Tensor | None, groups=None):
        return self.disc.logits(features, sentence, groups)


# ----------------------------------------------------------------------------------------- DAMSM step


class DAMSMTrainStep:
    """One DAMSM pre-training step (original pretrain_DAMSM.py): L_DAMSM (Eq. 14), backward, clip the
    RNN's gradient norm at ``rnn_grad_clip``, Adam. The Inception backbone is frozen; the text encoder,
    ``emb_features`` and ``emb_cnn_code`` are trained.
    """

    def __init__(self, preset: Preset, options: StepOptions, device: torch.device, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.preset, self.options, self.device = preset, options, device
        self.text_encoder = TextEncoder(preset.text_encoder).to(device).train()
        self.image_encoder = ImageEncoder(preset.image_encoder).to(device).train()
        encoder = self.image_encoder
        if options.fold_frozen_bn and encoder.frozen_backbone:
            # The frozen backbone's blocks are swapped for BN-folded ones (no second copy of the weights is
            # kept; the encoder's state dict then lacks the BN entries, which this benchmark never saves).
            # The trained projections W and W-bar stay as they are.
            folded = fold_batchnorm(self.image_encoder).requires_grad_(False)
            for name in INCEPTION_BLOCKS:
                setattr(self.image_encoder, name, getattr(folded, name))
            del folded
        if options.channels_last:
            encoder.to(memory_format=torch.channels_last)
        self.image_forward = _maybe_compile(encoder, options)
        tc = preset.damsm_train
        params = [
            p for m in (self.text_encoder, self.image_encoder) for p in m.parameters() if p.requires_grad
        ]
        self.optimizer = make_adam(params, tc.lr, tc.betas, options)

    def __call__(self, batch: SyntheticBatch) -> dict[str, torch.Tensor]:
        opt = self.options
        self.optimizer.zero_grad(set_to_none=True)
        words, sentence = self.text_encoder(batch.captions, batch.lengths)  # (B, D, T), (B, D)
        with autocast_context(opt, self.device):
            regions, image_vectors = self.image_forward(_format(batch.images[-1], opt))
        loss = damsm_total(
            regions,
            image_vectors,
            words,
            sentence,
            batch.lengths,
            batch.class_ids,
            self.preset,
            opt.vectorized_damsm,
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(
            self.text_encoder.rnn.parameters(), self.preset.damsm_train.rnn_grad_clip
        )
        self.optimizer.step()
        return {"DAMSM": loss.detach()}


# ------------------------------------------------------------------------------------------- sampling


class Sampler:
    """Text encoder + generator in eval mode: images of every stage and the attention maps (Eq. 2).

    Plain: the generator as trained. Fast: an inference copy with BatchNorm folded, the transposed-conv
    upsampling and channels-last (``fold_batchnorm`` / ``set_fast_upsample``), optionally compiled.
    """

    def __init__(self, preset: Preset, options: StepOptions, device: torch.device, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.preset, self.options, self.device = preset, options, device
        self.text_encoder = TextEncoder(preset.text_encoder).to(device).eval()
        generator = Generator(preset.generator).to(device).eval()
        if options.fold_frozen_bn:
            generator = fold_batchnorm(generator)
        if options.fast_upsample:
            set_fast_upsample(generator)
        if options.matmul_conv:
            set_matmul_conv(generator)
        if options.channels_last:
            generator.to(memory_format=torch.channels_last)
        self.generator = generator
        self.forward = _maybe_compile(generator, options)

    @torch.inference_mode()
    def __call__(
        self, batch: SyntheticBatch, need_attention: bool = True
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        words, sentence = self.text_encoder(batch.captions, batch.lengths)
        with autocast_context(self.options, self.device):
            out = self.forward(None, sentence, words, batch.mask, need_attention=need_attention)
        return out.images, out.attention


# ------------------------------------------------------------------------------------- measurement


PIPELINE_CONFIGS = ("pipeline", "pipeline-plain")  # sampling through attngan.AttnGANPipeline itself


def _pipeline_and_sentences(preset: Preset, batch_size: int, device: torch.device, fast: bool):
    """An ``AttnGANPipeline`` with random weights and a vocabulary of made-up words, and ``batch_size``
    sentences of ``words_num`` of its words."""
    from attngan.pipeline import AttnGANPipeline
    from attngan.text import Vocabulary

    torch.manual_seed(0)
    words = [f"w{i}" for i in range(1, preset.text_encoder.vocab_size)]
    vocab = Vocabulary(["<end>", *words])
    pipe = AttnGANPipeline(
        TextEncoder(preset.text_encoder), Generator(preset.generator), vocab, fast=fast
    ).to(device)
    t = preset.data.words_num
    sentences = [" ".join(words[(k * t + j) % len(words)] for j in range(t)) for k in range(batch_size)]
    return pipe, sentences


def pipeline_workload(preset: Preset, batch_size: int, device: torch.device, fast: bool):
    """What a user calls: ``AttnGANPipeline(...)(sentences)`` with attention maps, PIL images included.

    ``fast=True`` is the library's default (its BN-folded, channels-last inference copy of G);
    ``fast=False`` draws with the generator as trained. Random weights; a vocabulary of made-up words.
    """
    pipe, sentences = _pipeline_and_sentences(preset, batch_size, device, fast)
    return lambda: pipe(sentences, seed=0, batch_size=batch_size, return_attention=True)


def networks_workload(pipe, sentences: list[str]):
    """The networks a pipeline call runs, alone: its text encoder and its sampling generator (the
    inference copy when ``fast``) on the same words and noise, tokenised and drawn once beforehand, images
    of every stage and attention maps left on the device."""
    device, dtype = pipe.device, pipe.dtype
    captions, lengths, mask = pipe._batch(pipe.encode_prompts(sentences))
    captions, mask = captions.to(device), mask.to(device)
    _, z, eps = pipe._noise(len(sentences), 0, None)
    z, eps = z.to(device=device, dtype=dtype), eps.to(device=device, dtype=dtype)
    generator = pipe._sampling_generator()
    pipe.text_encoder.eval()
    generator.eval()

    @torch.inference_mode()
    def run():
        words, sentence = pipe.text_encoder(captions, lengths)
        return generator(z, sentence, words, mask, ca_noise=eps, need_attention=True)

    return run


def measure_overhead(
    preset_name: str, overrides: list[str], batch_size: int, warmup: int, reps: int, device: torch.device
) -> dict:
    """The pipeline (``AttnGANPipeline`` with its defaults, PIL images and maps) against the networks it runs
    alone (``networks_workload``), call by call in alternation, so that both see the same load."""
    preset = preset_by_name(preset_name, overrides)
    pipe, sentences = _pipeline_and_sentences(preset, batch_size, device, fast=True)
    calls = {
        "networks": networks_workload(pipe, sentences),
        "pipeline": lambda: pipe(sentences, seed=0, batch_size=batch_size, return_attention=True),
    }
    load_before = os.getloadavg()[0]
    for _ in range(warmup):
        for fn in calls.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(reps):
        for name, fn in calls.items():
            times[name] += time_calls(fn, device, warmup=0, reps=1)
    return {
        "kind": "overhead",
        "preset": preset_name,
        "batch_size": batch_size,
        "times": times,
        "ratios": [p / n for p, n in zip(times["pipeline"], times["networks"])],
        "load": [load_before, os.getloadavg()[0]],
        "threads": torch.get_num_threads(),
        "device": machine_description(device),
    }


def print_overhead(rows: list[dict]) -> None:
    """Median ms per call of the networks alone and of the pipeline, and their ratio (median of the ratios
    of neighbouring calls, and the ratio of the medians)."""
    head = (
        f"{'preset':7} {'B':>3} {'networks ms':>12} {'pipeline ms':>12} {'outside ms':>11} "
        f"{'ratio':>6} {'p10-p90 ratio':>14} {'calls':>6} {'load':>9}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        nets, pipe = statistics.median(r["times"]["networks"]), statistics.median(r["times"]["pipeline"])
        ratios = sorted(r["ratios"])
        p10, p90 = ratios[len(ratios) // 10], ratios[(9 * len(ratios)) // 10]
        load = f"{min(r['load']):.1f}-{max(r['load']):.1f}"
        print(
            f"{r['preset']:7} {r['batch_size']:>3} {1e3 * nets:>12.1f} {1e3 * pipe:>12.1f} {1e3 * (pipe - nets):>11.1f} "
            f"{statistics.median(ratios):>6.3f} {f'{p10:.3f}-{p90:.3f}':>14} {len(ratios):>6} {load:>9}"
        )
    print("# ratio: median over the pairs of neighbouring calls of pipeline / networks; outside: difference of the medians")


def build_workload(kind: str, preset: Preset, batch_size: int, options: StepOptions, device: torch.device):
    """(callable, batch) for ``kind`` in ``gan`` | ``damsm`` | ``sample``."""
    batch = synthetic_batch(preset, batch_size, device, seed=0)
    if kind == "gan":
        step = GANTrainStep(preset, options, device)
        return (lambda: step(batch)), batch
    if kind == "damsm":
        step = DAMSMTrainStep(preset, options, device)
        return (lambda: step(batch)), batch
    if kind == "sample":
        sampler = Sampler(preset, options, device)
        return (lambda: sampler(batch, need_attention=True)), batch
    raise ValueError(f"unknown workload {kind!r}")


def measure(
    kind: str,
    preset_name: str,
    overrides: list[str],
    batch_size: int,
    config: str,
    warmup: int,
    reps: int,
    device: torch.device,
    count: bool,
    matmul_size: int = 2048,
) -> dict:
    """Times (s per call), peak memory and (optionally) FLOPs per image of one configuration.

    Meant to run in a fresh process. On CPU the peak is the RSS high-water mark of the process during the
    timed calls (warm-up included: the first step allocates the optimizer states), reset after building
    the models; ``delta_mb`` is its increase over the RSS after building (freed memory trimmed first).
    """
    preset = preset_by_name(preset_name, overrides)
    load_before = os.getloadavg()[0]
    # The reference rate: float32 on CPU; on a GPU its bf16 rate (the target is a fraction of it).
    mm_dtype = reference_matmul_dtype(device)
    rate = matmul_gflops(device, n=matmul_size, dtype=mm_dtype)
    if kind == "sample" and config in PIPELINE_CONFIGS:
        options = PLAIN  # the library decides (AttnGANPipeline(fast=...))
        fn = pipeline_workload(preset, batch_size, device, fast=config == "pipeline")
    else:
        options = parse_options(config, device)
        fn, _ = build_workload(kind, preset, batch_size, options, device)
    # The peak of the steps alone: building the models may have a higher transient peak (copies).
    release_freed_memory()
    base = current_memory_mb(device)
    reset_ok = reset_peak_memory(device)
    start = time.perf_counter()
    cpu_times: list[float] = []
    times = time_calls(fn, device, warmup=warmup, reps=reps, cpu_times=cpu_times)
    wall = time.perf_counter() - start
    peak = peak_memory_mb(device)
    result = {
        "kind": kind,
        "preset": preset_name,
        "batch_size": batch_size,
        "config": config,
        "options": options.describe(),
        "times": times,
        "median_s": statistics.median(times),
        "cpu_times": cpu_times,
        "median_cpu_s": statistics.median(cpu_times),
        "first_calls_s": wall - sum(times),
        "peak_mb": peak,
        "base_mb": base,
        "delta_mb": peak - base,
        "peak_since_build": reset_ok,
        "matmul_gflops": rate,
        "matmul_dtype": str(mm_dtype).removeprefix("torch."),
        "load": [load_before, os.getloadavg()[0]],
        "threads": torch.get_num_threads(),
        "device": machine_description(device),
    }
    if count and not options.compile:
        result["flops_per_image"] = count_flops(fn) / batch_size
    return result


def worker_main(argv: list[str]) -> None:
    """``--worker`` mode of the scripts: one configuration, one JSON line on stdout."""
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("--worker", action="store_true")
    p.add_argument("--kind", required=True)
    p.add_argument("--preset", required=True)
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--config", required=True)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--count-flops", action="store_true")
    p.add_argument("--tune-malloc", action="store_true")
    p.add_argument("--smoke", action="store_true", help="a 256 x 256 reference matmul instead of 2048 x 2048")
    a = p.parse_args(argv)
    if a.tune_malloc:
        tune_cpu_allocator()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    if a.kind == "overhead":
        res = measure_overhead(a.preset, a.set, a.batch_size, a.warmup, a.reps, device)
    else:
        res = measure(
            a.kind, a.preset, a.set, a.batch_size, a.config, a.warmup, a.reps, device, a.count_flops,
            matmul_size=256 if a.smoke else 2048,
        )  # fmt: skip
    print(json.dumps(res))


def add_common_arguments(parser, configs: list[str], batch_sizes: list[int], reps: int) -> None:
    parser.add_argument("--presets", nargs="+", default=["birds", "coco"], choices=sorted(PRESETS))
    parser.add_argument("--set", action="append", default=[], help="preset override section.key=value")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=batch_sizes)
    parser.add_argument("--configs", nargs="+", default=configs, help="plain | fast | fast+compile | opt,opt,...")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per worker")
    parser.add_argument("--reps", type=int, default=reps, help="timed calls per worker")
    parser.add_argument("--rounds", type=int, default=1, help="workers per configuration, interleaved")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-flops", action="store_true", help="skip counting FLOPs")
    parser.add_argument(
        "--tune-malloc", action="store_true",
        help="every worker (all rows) keeps freed memory for reuse: attngan.training.tune_cpu_allocator",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    parser.add_argument(
        "--smoke", action="store_true",
        help="a check that the script runs, in seconds: the tiny preset, batch 2, one call per configuration, "
        "workers in this process",
    )  # fmt: skip


def apply_smoke(args) -> None:
    """``--smoke``: the settings of a run that only checks that everything still fits together."""
    if args.smoke:
        args.presets, args.batch_sizes, args.warmup, args.reps, args.rounds = ["tiny"], [2], 0, 1, 1
        args.set = ["text_encoder.vocab_size=64", *args.set]  # the tiny preset takes its vocabulary from data


def run_configs(script: Path, kind: str, args) -> list[dict]:
    """Every (preset, batch size, config) in fresh worker processes; ``rounds`` interleaved passes."""
    rows: dict[tuple, dict] = {}
    for preset in args.presets:
        for bs in args.batch_sizes:
            for r in range(args.rounds):
                for config in args.configs:
                    wargs = ["--kind", kind, "--preset", preset, "--batch-size", str(bs), "--config", config]
                    wargs += ["--warmup", str(args.warmup), "--reps", str(args.reps), "--device", args.device]
                    wargs += ["--threads", str(args.threads)] + [x for s in args.set for x in ("--set", s)]
                    if r == 0 and not args.no_flops:
                        wargs.append("--count-flops")
                    if args.tune_malloc:
                        wargs.append("--tune-malloc")
                    if args.smoke:
                        wargs.append("--smoke")
                    print(f"  {kind} {preset} B={bs} {config} (round {r + 1})", file=sys.stderr, flush=True)
                    res = run_worker(script, wargs, in_process=args.smoke)
                    key = (preset, bs, config)
                    if key in rows:
                        prev = rows[key]
                        prev["times"] += res["times"]
                        prev["median_s"] = statistics.median(prev["times"])
                        prev["cpu_times"] += res["cpu_times"]
                        prev["median_cpu_s"] = statistics.median(prev["cpu_times"])
                        prev["peak_mb"] = max(prev["peak_mb"], res["peak_mb"])
                        prev["delta_mb"] = max(prev["delta_mb"], res["delta_mb"])
                        prev["matmul_all"].append(res["matmul_gflops"])
                        prev["load"] += res["load"]
                    else:
                        res["matmul_all"] = [res["matmul_gflops"]]
                        rows[key] = res
    out = list(rows.values())
    for row in out:
        row["matmul_gflops"] = statistics.median(row["matmul_all"])
    return out


def print_table(rows: list[dict], unit: str) -> None:
    """One line per configuration with its ratio to ``plain`` of the same preset and batch size.

    ``model GFLOP/img`` is the plain path's count (the work the model defines); ``exec`` what the fast path
    executes; ``%mm`` = model GFLOP/img x img/s over the matmul rate measured in the same worker;
    ``cpu s`` the process CPU seconds per call (with ``--threads 1`` robust to other load).
    """
    plain = {(r["preset"], r["batch_size"]): r for r in rows if r["config"] == "plain"}
    head = (
        f"{'preset':7} {'B':>3} {'config':24} {unit:>9} {'s/call':>8} {'x plain':>7} {'cpu s':>7} {'x cpu':>6} {'peak MB':>8} "
        f"{'dMB':>7} {'model GF/img':>12} {'exec GF/img':>11} {'GF/s':>6} {'mm GF/s':>7} {'%mm':>5} {'load':>9}"
    )
    print(head)
    print("-" * len(head))
    dtypes = sorted({r.get("matmul_dtype", "float32") for r in rows})
    for r in rows:
        ref = plain.get((r["preset"], r["batch_size"]))
        per_s = r["batch_size"] / r["median_s"]
        ratio = f"{ref['median_s'] / r['median_s']:.2f}" if ref else "-"
        cpu_ratio = f"{ref['median_cpu_s'] / r['median_cpu_s']:.2f}" if ref else "-"
        model_flops = (ref or {}).get("flops_per_image")
        exec_flops = r.get("flops_per_image")
        achieved = model_flops * per_s / 1e9 if model_flops else None
        pct = f"{100 * achieved / r['matmul_gflops']:.0f}" if achieved else "-"
        load = f"{min(r['load']):.1f}-{max(r['load']):.1f}"
        print(
            f"{r['preset']:7} {r['batch_size']:>3} {r['config']:24} {per_s:>9.2f} {r['median_s']:>8.3f} {ratio:>7} "
            f"{r['median_cpu_s']:>7.3f} {cpu_ratio:>6} "
            f"{r['peak_mb']:>8.0f} {r['delta_mb']:>7.0f} "
            f"{model_flops / 1e9 if model_flops else float('nan'):>12.1f} "
            f"{exec_flops / 1e9 if exec_flops else float('nan'):>11.1f} "
            f"{achieved or float('nan'):>6.1f} {r['matmul_gflops']:>7.0f} {pct:>5} {load:>9}"
        )
    print(f"# mm GF/s: rate of a 2048 x 2048 {'/'.join(dtypes)} matmul in the same worker; %mm = GF/s over it")


def start_run(device_name: str, threads: int, argv: list[str] | None = None) -> torch.device:
    """The device, the thread count, and the two header lines of every table (date, machine; command)."""
    device = torch.device(device_name)
    if threads:
        torch.set_num_threads(threads)
    print(f"# {time.strftime('%Y-%m-%d %H:%M')}  {machine_description(device)}")
    print(f"# {' '.join([Path(sys.executable).name, sys.argv[0], *(sys.argv[1:] if argv is None else argv)])}")
    return device


def run_overhead(script: Path, args) -> list[dict]:
    """``measure_overhead`` of every (preset, batch size), each in a fresh worker."""
    rows = []
    for preset in args.presets:
        for bs in args.batch_sizes:
            wargs = ["--kind", "overhead", "--preset", preset, "--batch-size", str(bs), "--config", "pipeline"]
            wargs += ["--warmup", str(args.warmup), "--reps", str(args.reps), "--device", args.device]
            wargs += ["--threads", str(args.threads)] + [x for s in args.set for x in ("--set", s)]
            print(f"  overhead {preset} B={bs}", file=sys.stderr, flush=True)
            rows.append(run_worker(script, wargs, in_process=args.smoke))
    return rows


def bench_main(
    script: str,
    kind: str,
    doc: str,
    configs: list[str],
    batch_sizes: list[int],
    unit: str,
    reps: int = 3,
    argv: list[str] | None = None,
    overhead: bool = False,  # offer --overhead (sampling: the pipeline against its networks alone)
) -> int:
    """Entry point shared by bench_train / bench_damsm / bench_sample; ``argv`` defaults to the command line."""
    import argparse

    argv = sys.argv[1:] if argv is None else list(argv)
    if "--worker" in argv:
        worker_main(argv)
        return 0
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, configs, batch_sizes, reps)
    if overhead:
        parser.add_argument(
            "--overhead", action="store_true",
            help="time AttnGANPipeline against the networks it runs alone, alternating call by call (--reps pairs)",
        )  # fmt: skip
    args = parser.parse_args(argv)
    apply_smoke(args)
    start_run(args.device, args.threads, argv)
    if getattr(args, "overhead", False):
        rows = run_overhead(Path(script), args)
        print_overhead(rows)
    else:
        rows = run_configs(Path(script), kind, args)
        print_table(rows, unit)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0
