"""Training infrastructure shared by the experiments: checkpoints, clean stops, torchrun/DDP."""

from .checkpoint import (
    CheckpointError,
    atomic_torch_save,
    atomic_write,
    load_checkpoint,
    rng_state,
    seed_everything,
    set_rng_state,
)
from .distributed import DistInfo
from .interrupt import GracefulInterrupt, TrainingDiverged, TrainingInterrupted

__all__ = [
    "CheckpointError",
    "DistInfo",
    "GracefulInterrupt",
    "TrainingDiverged",
    "TrainingInterrupted",
    "atomic_torch_save",
    "atomic_write",
    "load_checkpoint",
    "rng_state",
    "seed_everything",
    "set_rng_state",
]
