"""The sample grids of GAN training: fixed captions and noise, drawn with the EMA generator into ``samples/``."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import atomic_write_bytes, atomic_write_text
from ..config import GeneratorConfig, Preset
from ..data.base import Batch, collate_batch
from ..data.registry import build_dataset
from ..errors import EmptySplitError
from ..nn import Generator, TextEncoder
from ..nn.modes import eval_mode
from ..text import Vocabulary
from ..viz import png_bytes
from .figures import attention_png
from .stats import StatsSink

__all__ = ["SampleGrids", "sample_split", "start_sample_grids"]

log = logging.getLogger(__name__)


def _grid_png(grid: torch.Tensor) -> bytes:
    """(3, H, W) in [0, 1] -> PNG bytes (values truncated to uint8, as the original's astype)."""
    from PIL import Image

    arr = (grid.clamp(0, 1) * 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return png_bytes(Image.fromarray(arr))


class SampleGrids:
    """Fixed captions, noise and CA noise; draws sample grids with the EMA generator (eval mode)."""

    def __init__(
        self, batch: Batch, text_encoder: TextEncoder, generator_cfg: GeneratorConfig, seed: int, device: torch.device
    ) -> None:
        self.batch = batch.to(device)
        rng = torch.Generator().manual_seed(seed + 7919)
        n = len(batch)
        self.z = torch.randn(n, generator_cfg.z_dim, generator=rng).to(device)
        self.ca_noise = torch.randn(n, generator_cfg.condition_dim, generator=rng).to(device)
        with torch.no_grad():
            self.words, self.sentence = text_encoder(self.batch.captions, self.batch.lengths)

    @torch.no_grad()
    def draw(self, generator: Generator):
        with eval_mode(generator):
            return generator(self.z, self.sentence, self.words, self.batch.mask, ca_noise=self.ca_noise)

    def write(self, generator: Generator, samples_dir: Path, step: int, stats: StatsSink, vocab: Vocabulary) -> None:
        from torchvision.utils import make_grid

        out = self.draw(generator)
        n = len(self.batch)
        nrow = max(1, int(n**0.5))
        grid = make_grid((out.images[-1].float().cpu() + 1) / 2, nrow=nrow, padding=2, pad_value=1.0)
        atomic_write_bytes(samples_dir / f"fakes-{step:08d}.png", _grid_png(grid))
        stats.add_image("samples/fakes", grid, step)
        if out.attention:
            k = min(4, n)
            tokens = [vocab.decode(self.batch.captions[j, : int(self.batch.lengths[j])].tolist()) for j in range(k)]
            try:
                data = attention_png([im[:k] for im in out.images], [a[:k] for a in out.attention], tokens)
            except (ImportError, AttributeError, TypeError, ValueError) as exc:  # a figure is not worth a crash
                log.debug("no attention figure at step %d: %s", step, exc)
                return
            atomic_write_bytes(samples_dir / f"attention-{step:08d}.png", data)
            from PIL import Image

            arr = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).copy()
            stats.add_image("samples/attention", torch.from_numpy(arr).permute(2, 0, 1).float() / 255, step)


def sample_split(preset: Preset, image_sizes: list[int], vocab: Vocabulary | None, progress: bool):
    """The captions of the sample grids: the "test" split in eval mode, else the training split's."""
    try:
        return build_dataset(preset.data, "test", image_sizes, vocab=vocab, train=False, progress=progress)
    except EmptySplitError as exc:
        log.warning("%s: the sample grids show captions and images of the training split instead", exc)
        return build_dataset(preset.data, "train", image_sizes, vocab=vocab, train=False, progress=progress)


def start_sample_grids(
    samples_dir: Path,
    sample_set,
    num_samples: int,
    text_encoder: TextEncoder,
    preset: Preset,
    device: torch.device,
    resumed: bool,
) -> SampleGrids:
    """Rank 0: fix the first ``num_samples`` captions of ``sample_set`` (written to ``captions.txt``), and
    draw the real images of a new run's grid (``reals.png``)."""
    n = min(num_samples, len(sample_set))
    fixed = collate_batch([sample_set[i] for i in range(n)])
    grids = SampleGrids(fixed, text_encoder, preset.generator, preset.gan_train.seed, device)
    atomic_write_text(samples_dir / "captions.txt", "".join(t + "\n" for t in (fixed.texts or [])))
    if not resumed:
        from torchvision.utils import make_grid

        reals = make_grid((fixed.images[-1] + 1) / 2, nrow=max(1, int(n**0.5)), padding=2, pad_value=1.0)
        atomic_write_bytes(samples_dir / "reals.png", _grid_png(reals))
    return grids
