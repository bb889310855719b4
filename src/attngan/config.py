"""Typed, frozen configuration for every component of AttnGAN.

Each network owns a small dataclass; the config is saved as ``config.json`` beside the weights and the
network is rebuilt with ``Network(Config(**saved))``. ``PRESETS`` holds the settings of the original
release (``birds``, ``coco`` from ``cfg/*.yml`` of taoxugit/AttnGAN) and of the built-in dataset
(``shapes``, ``tiny``). Nothing here is mutable or global.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

__all__ = [
    "TextEncoderConfig",
    "ImageEncoderConfig",
    "GeneratorConfig",
    "DiscriminatorConfig",
    "DAMSMLossConfig",
    "GANLossConfig",
    "DataConfig",
    "DAMSMTrainConfig",
    "GANTrainConfig",
    "Preset",
    "PRESETS",
    "to_dict",
    "from_dict",
    "apply_overrides",
    "check_preset",
]


@dataclass(frozen=True)
class TextEncoderConfig:
    """DAMSM text encoder (Sec. 3.2): embedding -> dropout -> bi-LSTM."""

    vocab_size: int = 5450  # rows of the word embedding, index 0 = '<end>' / padding
    word_dim: int = 300  # word-embedding width (the original's ninput)
    embed_dim: int = 256  # D: width of word and sentence features (both directions together)
    dropout: float = 0.5  # dropout on the word embeddings, active in train mode only


@dataclass(frozen=True)
class ImageEncoderConfig:
    """DAMSM image encoder (Sec. 3.2, Eq. 6).

    ``backbone="inception"``: torchvision Inception-v3 up to Mixed_7c, local features from Mixed_6e
    (768 x 17 x 17), input resized to 299 x 299 (bilinear, align_corners=True as the original).
    ``backbone="small"``: a small strided CNN for small images / CPU, same outputs (grid + vector).
    """

    embed_dim: int = 256  # D
    backbone: str = "inception"  # "inception" | "small"
    input_size: int = 299  # images are resized to this square size before the backbone
    small_width: int = 32  # width of the first conv of the small backbone (doubles per block)
    small_blocks: int = 3  # stride-2 blocks of the small backbone; grid = input_size / 2**blocks
    small_depth: int = 1  # convs per block of the small backbone: one stride-2 4x4, then depth-1 stride-1 3x3
    freeze_backbone: bool = True  # Sec. 3.2: Inception parameters are fixed
    # How images of another size are resized to input_size. False: bilinear with align_corners=True (the
    # original's). True: bilinear with antialiasing (align_corners=False), as PIL resizes the dataset's images
    # (not in the paper): a 64 px generated image shrunk to 32 px then averages every pixel instead of
    # sampling some of them, so the DAMSM term of Eq. 3 cannot be met by pixel patterns it never saw in training.
    resize_antialias: bool = False


@dataclass(frozen=True)
class GeneratorConfig:
    """Attentional generative network (Eq. 1-2)."""

    gf_dim: int = 32  # ngf: channels of the hidden features h_i of stages >= 1
    z_dim: int = 100  # noise z
    condition_dim: int = 100  # conditioning-augmentation code c
    embed_dim: int = 256  # D of the text encoder (word and sentence features)
    num_stages: int = 3  # m: generators G_0..G_{m-1}
    res_blocks: int = 2  # residual blocks per attention stage (R_NUM)
    base_size: int = 64  # resolution of the first stage (4 * 2**k); stage i is base_size * 2**i
    dcgan: bool = False  # AttnDCGAN: one image head at the last stage only
    # Conditioning augmentation samples c = mu + sigma * eps (Sec. 3.1, after StackGAN). False (not in the
    # paper): c = mu in training and sampling, so that the first stage hears the sentence without noise.
    ca_sample: bool = True
    # Not in the paper: each word attention (Eq. 2) also offers a learned "no word" key and value with a learned
    # bias of its logit (a sentinel, after Lu et al., CVPR 2017), so that a region that needs no word need not
    # attend to one. The maps of the words then sum to 1 minus the sentinel's share at each region.
    attention_sentinel: bool = False
    # Channels of F_0's 4 x 4 map (halved by each up-block, the last one mapping to gf_dim). 0: gf_dim * 2**k for
    # k up-blocks, as the original (ngf * 16 with its 4). With a small base_size F_0 has few up-blocks, so it
    # starts narrow: 64 channels for gf_dim 16 and base_size 16.
    init_dim: int = 0

    def __post_init__(self) -> None:
        n = self.base_size // 4
        if self.base_size < 8 or self.base_size % 4 or n & (n - 1):
            raise ValueError(f"base_size must be 4 * 2**k with k >= 1, got {self.base_size}")
        if self.num_stages < 1:
            raise ValueError("num_stages must be >= 1")
        if self.init_dim < 0 or (self.init_dim and self.init_dim < 2 ** (self.init_upsamples - 1)):
            raise ValueError(f"init_dim must be 0 (the original's width) or at least {2 ** (self.init_upsamples - 1)}, got {self.init_dim}")

    @property
    def image_sizes(self) -> list[int]:
        return [self.base_size * 2**i for i in range(self.num_stages)]

    @property
    def init_upsamples(self) -> int:
        """Number of 2x up-blocks of F_0 (4 x 4 -> base_size); 4 in the original."""
        return (self.base_size // 4).bit_length() - 1


@dataclass(frozen=True)
class DiscriminatorConfig:
    """One discriminator per scale (Eq. 4-5)."""

    df_dim: int = 64  # ndf
    embed_dim: int = 256  # condition = sentence vector of the text encoder
    image_size: int = 64  # input resolution of this discriminator
    unconditional: bool = True  # has an unconditional logit (False for the AttnDCGAN variant)
    # Not in the paper: spectral normalisation of every conv weight (Miyato et al., ICLR 2018) in place of
    # the discriminator's BatchNorm layers, which are removed. The weights' keys then differ from the
    # original release's.
    spectral_norm: bool = False


@dataclass(frozen=True)
class DAMSMLossConfig:
    """Hyper-parameters of Eq. 9-11."""

    gamma1: float = 4.0  # Eq. 9 (paper text: 5; original yml: 4.0)
    gamma2: float = 5.0  # Eq. 10
    gamma3: float = 10.0  # Eq. 11
    # The paper prints Eq. 10 with an outer 1/gamma2 exponent; the released code omits it. The default
    # (False) is what the released models were trained with.
    eq10_inverse_gamma2: bool = False
    class_masking: bool = True  # exclude same-class captions from the negatives (CUB)


@dataclass(frozen=True)
class GANLossConfig:
    """Eq. 3-5 and the KL term of conditioning augmentation."""

    damsm_lambda: float = 5.0  # lambda of Eq. 3
    kl_weight: float = 1.0
    uncond_weight: float = 1.0  # weight of the unconditional term in L_G and L_D


@dataclass(frozen=True)
class DataConfig:
    """Which data to read and how to turn it into batches."""

    dataset: str = "shapes"  # birds | coco | folder | shapes
    data_dir: str = ""  # root of the dataset on disk ('' for shapes)
    words_num: int = 18  # maximum caption length (T); longer captions are truncated
    captions_per_image: int = 10  # used by the original layouts
    truncate: str = "first"  # "first" keeps the first words; "random" drops random words (original)
    num_images: int = 2000  # shapes only: images per split generated
    max_objects: int = 1  # shapes only: 1..3 objects per image
    # shapes only: training scenes come in groups of this many, each differing from the last in one attribute
    # of its first object, kept together in the training order (1: independent scenes). A matching loss then
    # sees captions that differ in one word within a batch (hard negatives; not in the paper).
    contrast_group: int = 1
    texture: bool = True  # shapes only: backgrounds with a gradient and pixel noise (False: one flat tone each)
    # shapes only: shapes are this many times their default sizes (1: each inside its grid cell; above 1 a
    # shape may reach into the neighbouring cells, centred in its own and kept inside the image), at most 2.
    object_scale: float = 1.0
    seed: int = 0  # shapes only
    workers: int = -1  # DataLoader workers; -1: auto (on CUDA min(8, CPU cores per process - 1), else 0)
    cache: bool = False  # build/use a decoded uint8 cache of resized images


@dataclass(frozen=True)
class DAMSMTrainConfig:
    """DAMSM pre-training (Sec. 3.2; original pretrain_DAMSM.py)."""

    batch_size: int = 48  # M of Eq. 11 (paper 50, original yml 48)
    epochs: int = 600
    max_steps: int | None = None  # stop after this many steps (None: epochs decide)
    lr: float = 2e-3
    lr_decay: float = 0.98  # per epoch, while lr > lr/10 (original)
    betas: tuple[float, float] = (0.5, 0.999)
    rnn_grad_clip: float = 0.25
    snapshot_every: int = 1000  # steps between checkpoints
    log_every: int = 50
    seed: int = 0
    fast_kernels: bool = True  # a frozen Inception runs with its BatchNorm folded into its convs (same maths)
    # Caption length T in pre-training; None: data.words_num. The original's coco DAMSM used 15 words
    # (cfg/DAMSM/coco.yml), its coco GAN 12.
    words_num: int | None = None
    # True: the frozen Inception's BatchNorm normalises with batch statistics and updates its running
    # statistics during pre-training, as the original (cnn_model.train()), to reproduce its encoders;
    # False: the backbone stays in eval mode (its ImageNet statistics are kept).
    backbone_batch_stats: bool = False


@dataclass(frozen=True)
class GANTrainConfig:
    """AttnGAN training (Sec. 3.1; original trainer.py)."""

    batch_size: int = 20
    epochs: int = 600
    max_steps: int | None = None
    g_lr: float = 2e-4
    d_lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    ema_decay: float = 0.999  # EMA of G's parameters, used for samples and checkpoints
    d_steps: int = 1  # discriminator steps per generator step
    snapshot_every: int = 2000
    sample_every: int = 1000
    log_every: int = 50
    seed: int = 0
    # auto (bf16 on a CUDA GPU with bf16, else float32) | no | bf16 (CUDA, or a CPU with AMX) | fp16 (CUDA) |
    # fast (bf16 wherever it is native: a CUDA GPU with bf16 or a CPU with AMX; else float32, quietly)
    mixed_precision: str = "auto"
    # torch.compile G and the D objectives (word features padded to data.words_num). On a 2-core CPU it was
    # slower than the eager fast path (birds, batch 4: 2.7-2.8 against 2.1 s per step); untested on GPUs.
    compile: bool = False
    channels_last: bool = True  # NHWC activations and weights (CUDA and CPU; ignored on MPS)
    # Same mathematics, faster kernels (attngan.nn.fast): upsample + conv3x3 as one transposed conv, im2col
    # convs for tiny maps on CPU, the fused attention kernel in training (no maps kept), the frozen image
    # encoder with its BatchNorm folded into its convs, real and fake images through each D in one pass
    # (per-part BatchNorm) and FlatAdam. Results differ from False by float rounding only.
    fast_kernels: bool = True


@dataclass(frozen=True)
class Preset:
    text_encoder: TextEncoderConfig
    image_encoder: ImageEncoderConfig
    generator: GeneratorConfig
    discriminator_df_dim: int
    damsm_loss: DAMSMLossConfig
    gan_loss: GANLossConfig
    data: DataConfig
    damsm_train: DAMSMTrainConfig
    gan_train: GANTrainConfig
    description: str = ""
    discriminator_spectral_norm: bool = False  # DiscriminatorConfig.spectral_norm of every scale (not in the paper)


# Settings of the original release (reference/original-attngan.md section 1.2) and of the built-in data.
PRESETS: dict[str, Preset] = {
    "birds": Preset(
        description="CUB-200-2011, cfg/bird_attn2.yml + cfg/DAMSM/bird.yml: 3 stages 64-256, GF 32, DF 64, R 2, lambda 5",
        text_encoder=TextEncoderConfig(vocab_size=5450),
        image_encoder=ImageEncoderConfig(backbone="inception"),
        generator=GeneratorConfig(gf_dim=32, res_blocks=2, num_stages=3, base_size=64),
        discriminator_df_dim=64,
        damsm_loss=DAMSMLossConfig(gamma1=4.0, gamma2=5.0, gamma3=10.0, class_masking=True),
        gan_loss=GANLossConfig(damsm_lambda=5.0),
        data=DataConfig(dataset="birds", words_num=18, captions_per_image=10, truncate="random"),
        damsm_train=DAMSMTrainConfig(batch_size=48, epochs=600, lr=2e-3),
        gan_train=GANTrainConfig(batch_size=20, epochs=600),
    ),
    "coco": Preset(
        description="COCO 2014, cfg/coco_attn2.yml + cfg/DAMSM/coco.yml: 3 stages 64-256, GF 48, DF 96, R 3, lambda 50",
        text_encoder=TextEncoderConfig(vocab_size=27297),
        image_encoder=ImageEncoderConfig(backbone="inception"),
        generator=GeneratorConfig(gf_dim=48, res_blocks=3, num_stages=3, base_size=64),
        discriminator_df_dim=96,
        damsm_loss=DAMSMLossConfig(gamma1=4.0, gamma2=5.0, gamma3=10.0, class_masking=False),
        gan_loss=GANLossConfig(damsm_lambda=50.0),
        data=DataConfig(dataset="coco", words_num=12, captions_per_image=5, truncate="random"),
        damsm_train=DAMSMTrainConfig(batch_size=48, epochs=600, lr=2e-3, words_num=15),
        gan_train=GANTrainConfig(batch_size=14, epochs=120),
    ),
    "shapes": Preset(
        # For the 10-minute CPU demo (benchmarks/TUNING.md): the paper's structure at a small size, 3 stages
        # 16 -> 32 -> 64 px (word attention at 16 and 32), the image encoder on 32 px images with an 8 x 8 region
        # grid, training scenes in contrast groups (one attribute changed at a time), lambda 5 (with 10 or 20 the
        # generator writes more of the caption into the background, where the DAMSM term rewards it, and its
        # background regions attend to the colour and shape words: grounding 2.46 against 3.00 x at 1500 steps,
        # X3 against X7), a learned "no word" slot beside the words of each attention (generator.
        # attention_sentinel, not in the paper; its logit starts high, so that a region attends to a word only
        # where it learns to: grounding 4.51 x and shape 0.62 at 1500 steps against 2.17 x and 0.53 without it,
        # Y1 against M2; shape 0.75 / 0.63 against 0.62 / 0.60 in the 10-minute demo, F7 against F5), a short
        # EMA (0.999 lags far behind the generator over a few thousand steps), the condition c = mu without
        # the CA noise (generator.ca_sample=false, not in the paper: with the noise the first stage, which lays
        # out position and size, heard the caption faintly; position 0.53 against 0.32 at 1500 steps), and
        # learning rates G 3.2e-3, D 8e-4 instead of the release's 2e-4 for both (with both at 2e-4 the
        # discriminators won outright and the generator followed slowly; with D at 1e-4 they were too weak to
        # ask for shapes: blobs), and shapes 1.5 x their default size (data.object_scale=1.5: the DAMSM then
        # tells shapes apart within its 1500 steps, probe 0.84-0.86 against 0.52; in the 10-minute demo shape
        # 0.62 against 0.29 and size 0.92 against 0.69, run F5 against F3). Discriminators of width 24
        # (discriminator_df_dim; 16 before) and bf16 autocast where the device computes it natively (gan_train.
        # mixed_precision=fast: this 2-core Xeon's AMX runs a GAN step 1.5 x as fast; float32 elsewhere), and
        # a DAMSM of 3000 steps instead of 1500 (its sentence vectors then tell shapes apart: probe 0.99
        # against 0.83): shape 0.89 / 0.82 against 0.75 / 0.63 in the 10-minute demo (P4 against F7).
        description="built-in procedural shapes, CPU-sized: 3 stages 16-64, small image encoder",
        text_encoder=TextEncoderConfig(vocab_size=0, word_dim=64, embed_dim=64, dropout=0.1),
        image_encoder=ImageEncoderConfig(embed_dim=64, backbone="small", input_size=32, small_width=32, small_blocks=2),
        generator=GeneratorConfig(
            gf_dim=16, z_dim=32, condition_dim=32, embed_dim=64, num_stages=3, res_blocks=1, base_size=16, ca_sample=False,
            attention_sentinel=True,
        ),
        discriminator_df_dim=24,
        damsm_loss=DAMSMLossConfig(gamma1=4.0, gamma2=5.0, gamma3=10.0, class_masking=False),
        gan_loss=GANLossConfig(damsm_lambda=5.0),
        data=DataConfig(
            dataset="shapes", words_num=12, captions_per_image=5, num_images=4000, max_objects=1, contrast_group=4,
            object_scale=1.5,
        ),
        damsm_train=DAMSMTrainConfig(batch_size=32, epochs=1000, max_steps=3000, lr=2e-3, snapshot_every=500),
        gan_train=GANTrainConfig(
            batch_size=32, epochs=1000, max_steps=6000, snapshot_every=1000, sample_every=1000, ema_decay=0.99,
            g_lr=3.2e-3, d_lr=8e-4, mixed_precision="fast",
        ),  # fmt: skip
    ),
    "tiny": Preset(
        description="for tests: widths 4-8, 2 stages 16-32",
        text_encoder=TextEncoderConfig(vocab_size=0, word_dim=16, embed_dim=16, dropout=0.0),
        image_encoder=ImageEncoderConfig(embed_dim=16, backbone="small", input_size=32, small_width=8, small_blocks=2),
        generator=GeneratorConfig(gf_dim=4, z_dim=8, condition_dim=8, embed_dim=16, num_stages=2, res_blocks=1, base_size=16),
        discriminator_df_dim=4,
        damsm_loss=DAMSMLossConfig(class_masking=False),
        gan_loss=GANLossConfig(damsm_lambda=1.0),
        data=DataConfig(dataset="shapes", words_num=10, captions_per_image=3, num_images=128, max_objects=1),
        damsm_train=DAMSMTrainConfig(batch_size=16, epochs=100, max_steps=20, snapshot_every=10, log_every=5),
        gan_train=GANTrainConfig(batch_size=8, epochs=100, max_steps=10, snapshot_every=5, sample_every=5, log_every=5),
    ),
}


def to_dict(obj: Any) -> Any:
    """Dataclass (nested) -> JSON-able dict; tuples become lists."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a (nested) config dataclass from :func:`to_dict` output; unknown keys are an error."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls} is not a dataclass")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} settings: {sorted(unknown)}; known: {sorted(names)}")
    kwargs = {}
    hints = _resolved_types(cls)
    for key, value in data.items():
        tp = hints.get(key)
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            value = from_dict(tp, value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


def _resolved_types(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # pragma: no cover - only on exotic annotations
        return {}


def _parse_value(text: str, current: Any) -> Any:
    """Parse a command-line override value into the type of the current setting."""
    if isinstance(current, bool):
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected a boolean, got {text!r}")
    if current is None:
        if text.lower() in ("none", "null", ""):
            return None
        try:
            return int(text)
        except ValueError:
            return float(text)
    if isinstance(current, int):
        return int(text)
    if isinstance(current, float):
        return float(text)
    if isinstance(current, tuple):
        parts = [p for p in text.strip("()[] ").split(",") if p.strip()]
        return tuple(_parse_value(p.strip(), current[0] if current else 0.0) for p in parts)
    return text


def apply_overrides(preset: Preset, overrides: dict[str, Any] | list[str]) -> Preset:
    """Return a new preset with ``section.key=value`` overrides applied (e.g. ``generator.gf_dim=8``).

    Values given as strings are parsed to the type of the setting they replace. Unknown sections or keys
    raise ``ValueError`` naming the valid ones.
    """
    if isinstance(overrides, list):
        parsed: dict[str, Any] = {}
        for item in overrides:
            if "=" not in item:
                raise ValueError(f"override {item!r} is not of the form section.key=value")
            k, v = item.split("=", 1)
            parsed[k.strip()] = v.strip()
        overrides = parsed
    changes: dict[str, dict[str, Any]] = {}
    top: dict[str, Any] = {}
    for dotted, value in overrides.items():
        if "." not in dotted:
            if dotted not in {f.name for f in dataclasses.fields(Preset)}:
                raise ValueError(f"unknown setting {dotted!r}")
            top[dotted] = value
            continue
        section, key = dotted.split(".", 1)
        if section not in {f.name for f in dataclasses.fields(Preset)}:
            raise ValueError(
                f"unknown section {section!r}; sections: {[f.name for f in dataclasses.fields(Preset)]}"
            )
        changes.setdefault(section, {})[key] = value
    new_sections: dict[str, Any] = {}
    for section, kv in changes.items():
        obj = getattr(preset, section)
        if not dataclasses.is_dataclass(obj):
            raise ValueError(f"{section!r} is not a section")
        valid = {f.name for f in dataclasses.fields(obj)}
        typed = {}
        for key, value in kv.items():
            if key not in valid:
                raise ValueError(f"unknown setting {section}.{key}; valid: {sorted(valid)}")
            typed[key] = _typed_value(f"{section}.{key}", value, _resolved_types(type(obj)).get(key), getattr(obj, key))
        new_sections[section] = dataclasses.replace(obj, **typed)
    for key, value in top.items():
        cur = getattr(preset, key)
        if dataclasses.is_dataclass(cur):
            if not isinstance(value, type(cur)):
                raise ValueError(f"{key} must map settings to values (e.g. '{key}: {{...}}' in YAML), got {value!r}")
            new_sections[key] = value
        else:
            new_sections[key] = _typed_value(key, value, _resolved_types(Preset).get(key), cur)
    return dataclasses.replace(preset, **new_sections)


def _typed_value(name: str, value: Any, hint: Any, current: Any) -> Any:
    """``value`` for the setting ``name``: parsed from text, or checked against the setting's type."""
    if isinstance(value, str) and not isinstance(current, str):
        try:
            value = _parse_value(value, current)
        except ValueError:
            kind = "a number or none" if current is None else f"{type(current).__name__} ({current!r} now)"
            raise ValueError(f"{name} must be {kind}, got {value!r}") from None
    args = typing.get_args(hint)
    if type(None) in args:  # X | None
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
    elif value is None:
        raise ValueError(f"{name} needs a value (it cannot be null)")
    if typing.get_origin(hint) is tuple:
        n = len(typing.get_args(hint))
        if not isinstance(value, (list, tuple)) or len(value) != n or not all(_is_number(v) for v in value):
            raise ValueError(f"{name} must be {n} numbers, e.g. {list(current)}, got {value!r}")
        return tuple(float(v) for v in value)
    if hint is float and _is_number(value):
        return float(value)
    if hint in (int, bool, str) and not (isinstance(value, hint) and (hint is bool or not isinstance(value, bool))):
        raise ValueError(f"{name} must be {'an' if hint is int else 'a'} {hint.__name__}, got {value!r}")
    if hint is float:
        raise ValueError(f"{name} must be a number, got {value!r}")
    return value


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# (section.key, test, what it must be): the ranges every setting must respect.
_RULES: list[tuple[str, Any, str]] = [
    *[(k, lambda v: v >= 1, ">= 1") for k in (
        "text_encoder.word_dim", "text_encoder.embed_dim", "image_encoder.embed_dim", "image_encoder.input_size",
        "image_encoder.small_width", "image_encoder.small_blocks", "generator.gf_dim", "generator.z_dim",
        "generator.condition_dim", "generator.embed_dim", "discriminator_df_dim", "data.words_num",
        "data.captions_per_image", "data.num_images", "damsm_train.epochs", "damsm_train.snapshot_every",
        "damsm_train.log_every", "gan_train.epochs", "gan_train.d_steps", "gan_train.snapshot_every",
        "gan_train.sample_every", "gan_train.log_every",
    )],  # fmt: skip
    *[(k, lambda v: v is None or v >= 1, ">= 1 (or null: the epochs decide)") for k in ("damsm_train.max_steps", "gan_train.max_steps")],
    ("damsm_train.words_num", lambda v: v is None or v >= 1, ">= 1 (or null: data.words_num)"),
    *[(k, lambda v: v >= 2, ">= 2 (BatchNorm and the matching loss need two samples)") for k in ("damsm_train.batch_size", "gan_train.batch_size")],
    *[(k, lambda v: v > 0, "> 0") for k in (
        "damsm_loss.gamma1", "damsm_loss.gamma2", "damsm_loss.gamma3", "damsm_train.lr", "damsm_train.rnn_grad_clip",
        "gan_train.g_lr", "gan_train.d_lr",
    )],  # fmt: skip
    *[(k, lambda v: v >= 0, ">= 0") for k in (
        "text_encoder.vocab_size", "generator.res_blocks", "gan_loss.damsm_lambda", "gan_loss.kl_weight",
        "gan_loss.uncond_weight",
    )],  # fmt: skip
    ("data.workers", lambda v: v >= -1, ">= 0, or -1 for auto"),
    ("text_encoder.dropout", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("damsm_train.lr_decay", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("gan_train.ema_decay", lambda v: 0 <= v <= 1, "in [0, 1]"),
    *[(k, lambda v: all(0 <= b < 1 for b in v), "two numbers in [0, 1)") for k in ("damsm_train.betas", "gan_train.betas")],
    ("data.max_objects", lambda v: 1 <= v <= 3, "1, 2 or 3"),
    ("data.object_scale", lambda v: 0 < v <= 2, "in (0, 2]"),
    ("image_encoder.backbone", lambda v: v in ("inception", "small"), "'inception' or 'small'"),
    ("data.dataset", lambda v: v in ("birds", "coco", "folder", "shapes"), "birds, coco, folder or shapes"),
    ("data.truncate", lambda v: v in ("first", "random"), "'first' or 'random'"),
    ("gan_train.mixed_precision", lambda v: v in ("auto", "no", "bf16", "fp16", "fast"), "auto, no, bf16, fp16 or fast"),
]


def check_preset(preset: Preset) -> Preset:
    """Raise ``ValueError`` listing every setting outside its range (checked before any work); else return it."""
    problems = []
    for name, ok, what in _RULES:
        value: Any = preset
        for part in name.split("."):
            value = getattr(value, part)
        try:
            good = bool(ok(value))
        except TypeError:
            good = False
        if not good:
            problems.append(f"{name} must be {what}, got {value!r}")
    if problems:
        raise ValueError("; ".join(problems))
    return preset

