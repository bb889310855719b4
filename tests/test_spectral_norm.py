"""The ``discriminator_spectral_norm`` setting (not in the paper; Miyato et al., ICLR 2018).

Every conv weight of each discriminator is divided by its largest singular value, estimated by one power
iteration per training-mode forward pass; the BatchNorm layers are removed.
"""

from __future__ import annotations

import torch
from torch import nn

from attngan.config import PRESETS, DiscriminatorConfig, apply_overrides
from attngan.nn import Discriminator
from attngan.training.damsm import train_damsm
from attngan.training.gan import discriminator_configs, train_gan
from attngan.training.state import load_state


def _largest_singular_values(d: nn.Module) -> list[float]:
    """Largest singular value of every conv weight as the forward pass uses it (exact SVD, not power iteration)."""
    return [
        float(torch.linalg.matrix_norm(m.weight.detach().reshape(m.weight.shape[0], -1), ord=2))
        for m in d.modules()
        if isinstance(m, nn.Conv2d)
    ]


def _scale_raw_weights(d: nn.Module, factor: float) -> None:
    """Multiply every conv's stored weight (the one before normalisation) by ``factor``."""
    with torch.no_grad():
        for m in d.modules():
            if isinstance(m, nn.Conv2d):
                raw = m.parametrizations.weight.original if hasattr(m, "parametrizations") else m.weight
                raw.mul_(factor)


def test_every_conv_weight_has_spectral_norm_one_and_no_batchnorm_is_left():
    torch.manual_seed(0)
    d = Discriminator(DiscriminatorConfig(df_dim=4, embed_dim=8, image_size=64, spectral_norm=True)).train()
    # The original's initialisation is orthogonal (every singular value 1): scale it so that it is not.
    _scale_raw_weights(d, 3.0)
    for _ in range(40):  # one power iteration per training-mode forward pass
        d(torch.randn(2, 3, 64, 64))
    sigmas = _largest_singular_values(d.eval())
    assert len(sigmas) == 7  # 4 downsampling convs, the unconditional logit, the conditional joint conv and logit
    assert not any(isinstance(m, nn.BatchNorm2d) for m in d.modules())
    assert all(abs(s - 1) < 0.02 for s in sigmas), sigmas

    # Negative control: the same discriminator without the setting keeps BatchNorm and the scaled weights.
    torch.manual_seed(0)
    plain = Discriminator(DiscriminatorConfig(df_dim=4, embed_dim=8, image_size=64))
    _scale_raw_weights(plain, 3.0)
    assert any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert all(abs(s - 3) < 0.01 for s in _largest_singular_values(plain)), _largest_singular_values(plain)


def test_the_preset_setting_reaches_every_scale():
    preset = apply_overrides(PRESETS["tiny"], ["discriminator_spectral_norm=true"])
    assert [c.spectral_norm for c in discriminator_configs(preset)] == [True, True]
    assert not any(c.spectral_norm for c in discriminator_configs(PRESETS["birds"]))


def test_gan_training_with_spectral_norm_resumes_exactly(tmp_path):
    torch.set_num_threads(1)
    tiny = ["data.num_images=24", "gan_train.sample_every=1000", "gan_train.snapshot_every=100"]
    damsm = train_damsm(
        apply_overrides(PRESETS["tiny"], ["data.num_images=32"]), runs_dir=tmp_path / "damsm", max_steps=2,
        val_set=False, progress=False, tensorboard=False,
    )  # fmt: skip
    preset = apply_overrides(PRESETS["tiny"], [*tiny, "discriminator_spectral_norm=true"])
    common = dict(progress=False, tensorboard=False, num_samples=2)
    whole = train_gan(preset, damsm=damsm.run_dir, max_steps=4, runs_dir=tmp_path / "a", **common)
    part = train_gan(preset, damsm=damsm.run_dir, max_steps=2, runs_dir=tmp_path / "b", **common)
    resumed = train_gan(None, resume=part.run_dir, max_steps=4, runs_dir=tmp_path / "b", **common)
    a = load_state(whole.checkpoint, "gan")["models"]
    b = load_state(resumed.checkpoint, "gan")["models"]
    u_keys = [k for k in a["discriminator0"] if k.endswith("._u")]
    assert u_keys, "the power-iteration vectors are part of the state"
    for name in a:
        for key, value in a[name].items():
            assert torch.equal(value, b[name][key]), (name, key)
    before = load_state(part.checkpoint, "gan")["models"]["discriminator0"]
    assert not torch.equal(before[u_keys[0]], b["discriminator0"][u_keys[0]])  # the vectors are updated
