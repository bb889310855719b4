"""Training loops: DAMSM pre-training (Sec. 3.2) and AttnGAN training (Sec. 3.1), resumable, 1..N processes.

``train_damsm`` and ``train_gan`` are one function each, read top to bottom; the maths of each phase lives in
:mod:`attngan.training.loss`; checkpoints and run folders in :mod:`attngan.training.state`.
"""

from .common import NonFiniteLossError, StepInfo, TrainingInterrupted, TrainResult
from .damsm import evaluate_damsm, train_damsm
from .gan import load_encoders, train_gan
from .runtime import tune_cpu_allocator

__all__ = [
    "train_damsm",
    "train_gan",
    "evaluate_damsm",
    "load_encoders",
    "TrainResult",
    "StepInfo",
    "NonFiniteLossError",
    "TrainingInterrupted",
    "tune_cpu_allocator",
]
