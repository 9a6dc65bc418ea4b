"""Word-level language modelling: AWD-LSTM style wrapper, LSTM / AWD-LSTM / aLSTM cores,
training with exact resume (the aLSTM paper's recipes).

>>> from unbottleneck.lm import RNNLanguageModel, get_preset
>>> cfg = get_preset("ptb-small-lstm")
"""

from .awd import LSTMStack
from .configs import OPTIMIZERS, PRESETS, QUICK, LMConfig, get_preset
from .dropout import LockedDropout, WeightDropLSTM, embedding_dropout
from .model import (
    CORES,
    LMOutput,
    RNNLanguageModel,
    alstm_available,
    alstm_parameter_count,
    ar_tar_penalty,
    detach_state,
    lstm_parameter_count,
)
from .train import IterateAverage, LMTrainer, TrainingDiverged, build_model, load_checkpoint

__all__ = [
    "CORES", "OPTIMIZERS", "PRESETS", "QUICK", "IterateAverage", "LMConfig", "LMOutput",
    "LMTrainer", "LSTMStack", "LockedDropout", "RNNLanguageModel", "TrainingDiverged",
    "WeightDropLSTM", "alstm_available", "alstm_parameter_count", "ar_tar_penalty", "build_model",
    "detach_state", "embedding_dropout", "get_preset", "load_checkpoint", "lstm_parameter_count",
]
