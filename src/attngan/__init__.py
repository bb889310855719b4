"""AttnGAN: fine-grained text-to-image generation with attentional GANs (Xu et al., CVPR 2018)."""

__version__ = "0.1.0"
