"""DAMSM encoders (Sec. 3.2): bi-LSTM text encoder and Inception-v3 (or small CNN) image encoder.

Attribute names follow the original release (``encoder``, ``rnn``; Inception submodules by their
torchvision names, ``emb_features``, ``emb_cnn_code``) so that its state dicts load by identity.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..config import ImageEncoderConfig, TextEncoderConfig
from .layers import conv1x1

INCEPTION_BLOCKS = (
    "Conv2d_1a_3x3",
    "Conv2d_2a_3x3",
    "Conv2d_2b_3x3",
    "Conv2d_3b_1x1",
    "Conv2d_4a_3x3",
    "Mixed_5b",
    "Mixed_5c",
    "Mixed_5d",
    "Mixed_6a",
    "Mixed_6b",
    "Mixed_6c",
    "Mixed_6d",
    "Mixed_6e",
    "Mixed_7a",
    "Mixed_7b",
    "Mixed_7c",
)


class TextEncoder(nn.Module):
    """Word embedding -> dropout -> bi-LSTM (Sec. 3.2).

    ``forward(captions (B, T), lengths (B,))`` returns word features e (B, D, T) (forward and backward
    states concatenated, exactly zero at padded steps) and the sentence vector e-bar (B, D) (the last
    hidden states of both directions). Captions may come in any order of length.
    """

    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__()
        if config.vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2, got {config.vocab_size}")
        if config.embed_dim % 2:
            raise ValueError("embed_dim must be even (two LSTM directions)")
        self.config = config
        self.encoder = nn.Embedding(config.vocab_size, config.word_dim)
        self.drop = nn.Dropout(config.dropout)
        self.rnn = nn.LSTM(config.word_dim, config.embed_dim // 2, num_layers=1, batch_first=True, bidirectional=True)
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)

    def forward(self, captions: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if captions.dim() != 2 or lengths.shape != captions.shape[:1]:
            raise ValueError(f"captions must be (B, T) and lengths (B,), got {tuple(captions.shape)}, {tuple(lengths.shape)}")
        b, t = captions.shape
        lengths_cpu = lengths.detach().to("cpu", torch.int64)
        if bool((lengths_cpu < 1).any()) or bool((lengths_cpu > t).any()):
            raise ValueError(f"every caption length must be in 1..{t}, got {lengths_cpu.tolist()}")
        emb = self.drop(self.encoder(captions))  # (B, T, 300)
        packed = pack_padded_sequence(emb, lengths_cpu, batch_first=True, enforce_sorted=False)
        out, (h_n, _) = self.rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=t)  # (B, T, D), zeros at padding
        words = out.transpose(1, 2).contiguous()  # (B, D, T)
        sentence = h_n.transpose(0, 1).reshape(b, -1)  # (B, D): [last fwd || last bwd]
        return words, sentence


class SmallBackbone(nn.Module):
    """A small strided CNN for small images: local grid (input/2**blocks) and a global vector.

    Each block is a stride-2 4x4 conv followed by ``depth - 1`` stride-1 3x3 convs (BatchNorm, LeakyReLU).
    """

    def __init__(self, width: int, blocks: int, depth: int = 1) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"small backbone depth must be >= 1, got {depth}")
        layers: list[nn.Module] = []
        ch_in = 3
        for i in range(blocks):
            ch = width * 2**i
            layers += [nn.Conv2d(ch_in, ch, 4, 2, 1, bias=False), nn.BatchNorm2d(ch), nn.LeakyReLU(0.2, inplace=True)]
            for _ in range(depth - 1):
                layers += [nn.Conv2d(ch, ch, 3, 1, 1, bias=False), nn.BatchNorm2d(ch), nn.LeakyReLU(0.2, inplace=True)]
            ch_in = ch
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Conv2d(ch_in, ch_in * 2, 3, 1, 1, bias=False), nn.BatchNorm2d(ch_in * 2), nn.LeakyReLU(0.2, inplace=True)
        )
        self.local_dim = ch_in
        self.global_dim = ch_in * 2

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        local = self.features(x)
        glob = self.head(local).mean(dim=(2, 3))
        return local, glob


class ImageEncoder(nn.Module):
    """Image encoder of the DAMSM (Sec. 3.2, Eq. 6): v = W f (regions), v-bar = W-bar f-bar (global).

    Inception-v3 backbone: local features from Mixed_6e (768 x 17 x 17), global 2048-d average-pooled
    Mixed_7c; inputs in [-1, 1] are resized to 299 x 299 (bilinear, align_corners=True as the original,
    no ``transform_input``). ``backbone_weights``: None (random init) or a state dict of torchvision's
    Inception-v3 (keys outside the blocks used here, such as ``fc.*``, are ignored); the caller resolves
    names and files (``attngan.checkpoint.inception_weights_state``: ``"imagenet"``, a local file, a
    torchvision weights enum). The backbone is frozen and kept in eval mode (unless
    ``backbone_batch_stats`` is set: then its BatchNorm follows the module's train/eval mode).
    """

    def __init__(
        self, config: ImageEncoderConfig, backbone_weights: Mapping[str, torch.Tensor] | None = None
    ) -> None:
        super().__init__()
        self.config = config
        if config.backbone == "inception":
            from torchvision.models import inception_v3

            net = inception_v3(weights=None, aux_logits=False, init_weights=False)
            if backbone_weights is not None:
                if not isinstance(backbone_weights, Mapping):
                    raise TypeError(
                        f"backbone_weights must be a state dict, got {type(backbone_weights).__name__}; resolve "
                        "names, files and weights enums with attngan.checkpoint.inception_weights_state"
                    )
                state = {k: v for k, v in backbone_weights.items() if k.split(".")[0] in INCEPTION_BLOCKS}
                missing, unexpected = net.load_state_dict(state, strict=False)
                missing = [k for k in missing if k.split(".")[0] in INCEPTION_BLOCKS]
                if missing or unexpected:
                    raise ValueError(f"Inception weights do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")
            for name in INCEPTION_BLOCKS:
                self.add_module(name, getattr(net, name))
            local_dim, global_dim = 768, 2048
            self.small = None
        elif config.backbone == "small":
            self.small = SmallBackbone(config.small_width, config.small_blocks, config.small_depth)
            local_dim, global_dim = self.small.local_dim, self.small.global_dim
        else:
            raise ValueError(f"unknown backbone {config.backbone!r}: use 'inception' or 'small'")
        self.emb_features = conv1x1(local_dim, config.embed_dim)  # W of Eq. 6
        self.emb_cnn_code = nn.Linear(global_dim, config.embed_dim)  # W-bar of Eq. 6
        nn.init.uniform_(self.emb_features.weight, -0.1, 0.1)
        nn.init.uniform_(self.emb_cnn_code.weight, -0.1, 0.1)
        if self.frozen_backbone:
            for p in self.backbone_parameters():
                p.requires_grad_(False)
        # True: in train mode a frozen Inception's BatchNorm uses batch statistics and updates its running
        # statistics, as the original's DAMSM pre-training did (cnn_model.train()); set by the trainer.
        self.backbone_batch_stats = False

    @property
    def frozen_backbone(self) -> bool:
        # The small backbone is trained from scratch; only Inception is frozen (Sec. 3.2).
        return self.config.backbone == "inception" and self.config.freeze_backbone

    def backbone_parameters(self):
        if self.small is not None:
            return self.small.parameters()
        return (p for name in INCEPTION_BLOCKS for p in getattr(self, name).parameters())

    def train(self, mode: bool = True) -> ImageEncoder:
        # A frozen backbone keeps its BatchNorm statistics (the original let them drift during DAMSM
        # pre-training, original-attngan.md 8.1 #11), unless backbone_batch_stats asks for the original's way.
        super().train(mode)
        if self.frozen_backbone and not self.backbone_batch_stats:
            for name in INCEPTION_BLOCKS:
                getattr(self, name).eval()
        return self

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if images.dim() != 4 or images.size(1) != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        size = self.config.input_size
        if tuple(images.shape[-2:]) != (size, size):  # at equal size either resize is the identity
            if self.config.resize_antialias:
                images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
            else:
                images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=True)
        if self.small is not None:
            local, glob = self.small(images)
        else:
            x = images
            x = self.Conv2d_1a_3x3(x)  # 149
            x = self.Conv2d_2a_3x3(x)  # 147
            x = self.Conv2d_2b_3x3(x)
            x = F.max_pool2d(x, kernel_size=3, stride=2)  # 73
            x = self.Conv2d_3b_1x1(x)
            x = self.Conv2d_4a_3x3(x)  # 71
            x = F.max_pool2d(x, kernel_size=3, stride=2)  # 35
            x = self.Mixed_5b(x)
            x = self.Mixed_5c(x)
            x = self.Mixed_5d(x)
            x = self.Mixed_6a(x)  # 17
            x = self.Mixed_6b(x)
            x = self.Mixed_6c(x)
            x = self.Mixed_6d(x)
            x = self.Mixed_6e(x)
            local = x  # (B, 768, 17, 17)
            x = self.Mixed_7a(x)  # 8
            x = self.Mixed_7b(x)
            x = self.Mixed_7c(x)
            glob = F.avg_pool2d(x, kernel_size=8).flatten(1)  # (B, 2048)
        regions = self.emb_features(local)  # (B, D, h, w): v
        global_vec = self.emb_cnn_code(glob)  # (B, D): v-bar
        return regions, global_vec
