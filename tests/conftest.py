"""Shared fixtures: a fixed seed and the tiny configs of ``PRESETS["tiny"]`` (test-only sizes)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from attngan.config import (
    PRESETS,
    DiscriminatorConfig,
    GeneratorConfig,
    ImageEncoderConfig,
    TextEncoderConfig,
)

TINY_VOCAB = 20  # the tiny preset leaves vocab_size to the dataset (0); tests use a fixed small vocabulary

_CUDA_AVAILABLE = torch.cuda.is_available  # the real one, for the tests marked cuda


@pytest.fixture(scope="session", autouse=True)
def cpu_unless_marked_cuda():
    """On a machine with a GPU the suite still runs on the CPU, as in CI (the same numbers, no GPU
    nondeterminism in the exact-resume tests): ``auto`` devices resolve to the CPU. Tests marked ``cuda``
    get the GPU back (``_gpu_for_cuda_tests``)."""
    patch = pytest.MonkeyPatch()
    patch.setattr(torch.cuda, "is_available", lambda: False)
    yield
    patch.undo()


@pytest.fixture(autouse=True)
def _gpu_for_cuda_tests(request, monkeypatch):
    if request.node.get_closest_marker("cuda") is not None:
        monkeypatch.setattr(torch.cuda, "is_available", _CUDA_AVAILABLE)


@pytest.fixture
def seed() -> int:
    """Seed torch's global RNG (and return the seed) so that a test is reproducible on its own."""
    torch.manual_seed(0)
    return 0


@pytest.fixture(scope="session")
def tiny_text_config() -> TextEncoderConfig:
    return dataclasses.replace(PRESETS["tiny"].text_encoder, vocab_size=TINY_VOCAB)


@pytest.fixture(scope="session")
def tiny_image_config() -> ImageEncoderConfig:
    return PRESETS["tiny"].image_encoder


@pytest.fixture(scope="session")
def tiny_generator_config() -> GeneratorConfig:
    return PRESETS["tiny"].generator


@pytest.fixture(scope="session")
def tiny_discriminator_configs(tiny_generator_config) -> list[DiscriminatorConfig]:
    """One discriminator config per generator stage (image sizes of the tiny generator)."""
    g = tiny_generator_config
    return [
        DiscriminatorConfig(df_dim=PRESETS["tiny"].discriminator_df_dim, embed_dim=g.embed_dim, image_size=s)
        for s in g.image_sizes
    ]
