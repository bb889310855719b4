"""Networks of AttnGAN (pure PyTorch: no I/O, no devices, no training logic)."""

from .attention import WordAttention, word_attention
from .discriminator import Discriminator
from .encoders import ImageEncoder, TextEncoder
from .generator import Generator, GeneratorOutput

__all__ = [
    "TextEncoder",
    "ImageEncoder",
    "Generator",
    "GeneratorOutput",
    "Discriminator",
    "WordAttention",
    "word_attention",
]
