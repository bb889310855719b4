"""Training loops: DAMSM pre-training (Sec. 3.2) and AttnGAN training (Sec. 3.1), resumable, 1..N processes.

``train_damsm`` and ``train_gan`` are one function each, read top to bottom; the maths of each phase lives in
:mod:`attngan.training.loss`; the frame around them (run folder, resume, snapshots, stopping) in
:mod:`attngan.training.harness`; checkpoints in :mod:`attngan.training.state`.
"""

from .cpu import tune_cpu_allocator
from .damsm import evaluate_damsm, train_damsm
from .gan import load_encoders, train_gan
from .harness import StepInfo
from .outcomes import NonFiniteLossError, TrainingInterrupted, TrainResult

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
