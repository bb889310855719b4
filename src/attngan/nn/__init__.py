"""Networks of AttnGAN (pure PyTorch: no I/O, no devices, no training logic)."""

from .attention import WordAttention, set_legacy_mask_bug, word_attention
from .discriminator import Discriminator
from .encoders import ImageEncoder, TextEncoder
from .fast import fold_batchnorm, set_fast_upsample, set_matmul_conv
from .generator import Generator, GeneratorOutput

__all__ = [
    "TextEncoder",
    "ImageEncoder",
    "Generator",
    "GeneratorOutput",
    "Discriminator",
    "WordAttention",
    "word_attention",
    "set_legacy_mask_bug",
    "set_fast_upsample",
    "set_matmul_conv",
    "fold_batchnorm",
]
