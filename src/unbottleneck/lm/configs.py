"""Training configurations of the word-level language models.

:class:`LMConfig` holds every knob of a run; :data:`PRESETS` names the
recipes (field overrides on top of the defaults, which are the aLSTM PTB
recipe).  ``get_preset(name)`` returns a validated config.

========================  =============================================================
preset                    what
========================  =============================================================
``ptb-alstm``             the paper's aLSTM recipe: 2 layers 400 -> 1150 -> 400,
                          K = 100, tied 400-d embedding (17,197,800 parameters), dropouts
                          e/i/h/a/o = 0.16/0.6/0.25/0.1/0.6, Adam lr 3e-3 betas (0, 0.999)
                          eps 1e-9, weight decay 1e-6, clip 5, batch 20, BPTT ~70,
                          lr / 10 after epochs 100 and 160, 190 epochs
``wt2-alstm``             the same on WikiText-2 with hidden 1500 (32,133,678 parameters),
                          lr cuts after 80 and 160, 187 epochs
``ptb-lstm``              the paper's LSTM baseline ("20M, 2 layers, hidden 1650"): we read
                          it as the aLSTM layout with plain LSTM layers,
                          400 -> 1650 -> 400 with a tied 400-d embedding = 20,836,400
                          parameters; same dropouts (no dropouta) and Adam recipe
``wt2-lstm``              the same on WikiText-2 (30,170,878 parameters), WT2 schedule
``ptb-awd-lstm``          AWD-LSTM's published PTB recipe (Merity et al. 2017): 3 layers
                          400 -> 1150 -> 1150 -> 400, tied, dropouts e/i/h/o =
                          0.1/0.4/0.25/0.4, wdrop 0.5, AR 2 / TAR 1, SGD lr 30 switching
                          to averaged SGD (NT-ASGD, nonmono 5), clip 0.25, weight decay
                          1.2e-6, batch 20, BPTT ~70, 500 epochs (24,221,600 parameters;
                          the published fine-tuning stage is not part of the recipe)
``wt2-awd-lstm``          AWD-LSTM on WikiText-2: dropouti 0.65, dropouth 0.2, batch 80,
                          750 epochs (33,556,078 parameters)
``ptb-small-alstm``       CPU-sized aLSTM: 2 layers 128 -> 256 -> 128, K = 32, tied
                          128-d embedding (2,168,592 parameters)
``ptb-small-lstm``        CPU-sized LSTM at equal parameter count: 128 -> 340 -> 128, tied
                          (2,169,840 parameters, +0.06 %)
``ptb-small-awd-lstm``    the same LSTM with AWD-LSTM's regularisers (weight drop 0.3 on the
                          hidden-to-hidden weights, AR 2 / TAR 1), trained with the small
                          presets' Adam recipe so that one tuning grid serves all three
========================  =============================================================

The small presets use lighter, untuned dropouts (e/i/h/a/o = 0.1/0.4/0.2/0.1/0.4)
because a 2M-parameter model trained for a few epochs overfits far less than
the 17M reference; both use the aLSTM's Adam recipe and 10 epochs without lr cuts.

``quick=True`` (``unbottleneck run lm --quick``) shrinks any preset to a run of
a few seconds (:data:`QUICK`): tiny widths, a few batches, a prefix of the
evaluation data.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields

from .. import _validate
from .._validate import probability
from ..data.corpus import canonical_corpus

__all__ = ["OPTIMIZERS", "PRESETS", "QUICK", "RESUME_MUTABLE", "LMConfig", "get_preset"]

OPTIMIZERS = ("adam", "sgd", "nt-asgd")

#: Fields a resumed run may change (everything else must match the checkpoint).
RESUME_MUTABLE = frozenset({"epochs", "checkpoint_every", "log_interval", "device"})


@dataclass
class LMConfig:
    """Everything that defines a language-model training run (defaults: aLSTM on PTB).

    Model: ``core`` (``alstm``/``lstm``/``awd-lstm``), widths, dropouts (see
    :class:`~unbottleneck.lm.model.RNNLanguageModel`).  ``output_size = 0``
    means "the embedding size when tied, else the hidden size".
    ``alstm_implementation`` / ``alstm_policy_init`` / ``alstm_policy_layout`` are
    passed to ``ALSTM`` (``implementation`` / ``policy_init`` / ``policy_layout``;
    ``alstm`` core only; ``alstm_policy_layout="original"`` is the published code's
    as-run policy split).

    Optimisation: ``optimizer`` ``"adam"`` (Adam with L2 ``weight_decay``),
    ``"sgd"`` or ``"nt-asgd"`` (SGD that switches to iterate averaging once the
    validation loss has not improved on the best of all but the last
    ``nonmono`` epochs; evaluation then uses the averaged weights).  ``clip``
    is the gradient-norm limit (0 disables clipping).  The learning rate is
    divided by ``lr_cut_factor`` after each epoch listed in ``lr_cuts`` and,
    per batch, scaled by ``seq_len / bptt``.  ``alpha``/``beta``: AR/TAR.

    Data: ``batch_size`` columns for training, ``eval_batch_size`` for
    validation, ``test_batch_size`` for the final test.  Training segments
    have AWD-LSTM variable lengths around ``bptt`` (``variable_bptt``;
    :class:`~unbottleneck.data.BPTTSchedule`), evaluation uses fixed ``bptt``.
    ``max_batches > 0`` caps the batches per epoch and ``eval_tokens > 0``
    evaluates on that prefix of valid/test only (for short CPU runs).
    ``carry_position=True`` makes a capped epoch start where the previous one
    stopped (with its recurrent state), wrapping at the end of the corpus, so
    that short epochs walk through the whole training stream instead of
    repeating its first ``max_batches`` batches.

    Bookkeeping: ``checkpoint_every > 0`` also checkpoints every that many
    batches inside an epoch (checkpoints are always written at epoch ends).
    """

    dataset: str = "ptb"
    core: str = "alstm"
    embedding_size: int = 400
    hidden_size: int = 1150
    num_layers: int = 2
    adapt_size: int = 100
    output_size: int = 0
    tie_weights: bool = True
    dropoute: float = 0.16
    dropouti: float = 0.6
    dropouth: float = 0.25
    dropouta: float = 0.1
    dropouto: float = 0.6
    wdrop: float = 0.0
    alstm_implementation: str = "auto"
    alstm_policy_init: str = "lstm"
    alstm_policy_layout: str = "contiguous"
    optimizer: str = "adam"
    lr: float = 3e-3
    betas: tuple[float, ...] = (0.0, 0.999)
    eps: float = 1e-9
    momentum: float = 0.0
    weight_decay: float = 1e-6
    clip: float = 5.0
    nonmono: int = 5
    alpha: float = 0.0
    beta: float = 0.0
    lr_cuts: tuple[int, ...] = (100, 160)
    lr_cut_factor: float = 10.0
    epochs: int = 190
    batch_size: int = 20
    eval_batch_size: int = 10
    test_batch_size: int = 1
    bptt: int = 70
    variable_bptt: bool = True
    bptt_std: float = 5.0
    bptt_p_full: float = 0.95
    min_seq_len: int = 5
    max_seq_len_delta: int = 40
    max_batches: int = 0
    carry_position: bool = False
    eval_tokens: int = 0
    checkpoint_every: int = 0
    log_interval: int = 50
    seed: int = 1
    device: str = "auto"

    def validate(self) -> None:
        """Raise ValueError with a clear message for any bad value."""
        from .model import CORES

        canonical_corpus(self.dataset)
        if self.core not in CORES:
            raise ValueError(f"unknown core {self.core!r}; valid cores: {', '.join(CORES)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"unknown optimizer {self.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
        for key in ("embedding_size", "hidden_size", "num_layers", "adapt_size", "epochs",
                    "batch_size", "eval_batch_size", "test_batch_size", "bptt", "min_seq_len",
                    "nonmono", "log_interval"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be an int >= 1, got {value!r}")
        for key in ("output_size", "max_batches", "eval_tokens", "checkpoint_every",
                    "max_seq_len_delta"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0 (0 = off/default), got {getattr(self, key)}")
        for key in ("dropoute", "dropouti", "dropouth", "dropouta", "dropouto", "wdrop"):
            probability(key, getattr(self, key))
        if self.core != "alstm" and self.dropouta > 0:
            raise ValueError(f"dropouta applies only to core=alstm (got core={self.core!r}); "
                             "set dropouta=0")
        if self.core != "awd-lstm" and self.wdrop > 0:
            raise ValueError(f"wdrop applies only to core=awd-lstm (got core={self.core!r}); "
                             "set wdrop=0")
        try:
            from ..adaptive.alstm import IMPLEMENTATIONS, POLICY_INITS
        except ImportError:  # validated by ALSTM itself when it is built
            IMPLEMENTATIONS, POLICY_INITS = (self.alstm_implementation,), (self.alstm_policy_init,)
        if self.alstm_implementation not in IMPLEMENTATIONS:
            raise ValueError(f"unknown alstm_implementation {self.alstm_implementation!r}; "
                             f"valid: {', '.join(IMPLEMENTATIONS)}")
        if self.alstm_policy_layout not in ("contiguous", "original"):
            raise ValueError(f"unknown alstm_policy_layout {self.alstm_policy_layout!r}; "
                             "valid: contiguous, original")
        if self.alstm_policy_init not in POLICY_INITS:
            raise ValueError(f"unknown alstm_policy_init {self.alstm_policy_init!r}; "
                             f"valid: {', '.join(POLICY_INITS)}")
        out = self.last_layer_size
        if self.tie_weights and out != self.embedding_size:
            raise ValueError(f"tie_weights needs output_size ({out}) == embedding_size "
                             f"({self.embedding_size})")
        for key in ("lr", "eps", "lr_cut_factor"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{key} must be a finite number > 0, got {value}")
        for key in ("weight_decay", "clip", "alpha", "beta", "momentum", "bptt_std"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{key} must be a finite number >= 0, got {value}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if not 0.0 <= self.bptt_p_full <= 1.0:
            raise ValueError(f"bptt_p_full must be in [0, 1], got {self.bptt_p_full}")
        if any(c < 1 for c in self.lr_cuts):
            raise ValueError(f"lr_cuts must be epoch numbers >= 1, got {self.lr_cuts}")
        _validate.device("device", self.device)

    @property
    def last_layer_size(self) -> int:
        return self.output_size or (self.embedding_size if self.tie_weights else self.hidden_size)

    def lr_at(self, epoch: int) -> float:
        """Base learning rate of (1-based) ``epoch``: cut after every listed epoch before it."""
        cuts = sum(1 for c in self.lr_cuts if c < epoch)
        return self.lr / self.lr_cut_factor ** cuts

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_SMALL_DROPOUTS = {"dropoute": 0.1, "dropouti": 0.4, "dropouth": 0.2, "dropouto": 0.4}
_AWD = {
    "core": "awd-lstm", "num_layers": 3, "hidden_size": 1150, "embedding_size": 400,
    "dropoute": 0.1, "dropouti": 0.4, "dropouth": 0.25, "dropouta": 0.0, "dropouto": 0.4,
    "wdrop": 0.5, "optimizer": "nt-asgd", "lr": 30.0, "clip": 0.25, "weight_decay": 1.2e-6,
    "alpha": 2.0, "beta": 1.0, "lr_cuts": (), "epochs": 500, "nonmono": 5, "batch_size": 20,
}
_WT2 = {"dataset": "wikitext-2", "lr_cuts": (80, 160), "epochs": 187}

#: preset name -> field overrides of :class:`LMConfig` (see the module doc).
PRESETS: dict[str, dict] = {
    "ptb-alstm": {},
    "wt2-alstm": {**_WT2, "hidden_size": 1500},
    "ptb-lstm": {"core": "lstm", "hidden_size": 1650, "dropouta": 0.0},
    "wt2-lstm": {**_WT2, "core": "lstm", "hidden_size": 1650, "dropouta": 0.0},
    "ptb-awd-lstm": dict(_AWD),
    "wt2-awd-lstm": {**_AWD, "dataset": "wikitext-2", "dropouti": 0.65, "dropouth": 0.2,
                     "batch_size": 80, "epochs": 750},
    "ptb-small-alstm": {"embedding_size": 128, "hidden_size": 256, "adapt_size": 32,
                        **_SMALL_DROPOUTS, "dropouta": 0.1, "epochs": 10, "lr_cuts": ()},
    "ptb-small-lstm": {"core": "lstm", "embedding_size": 128, "hidden_size": 340,
                       **_SMALL_DROPOUTS, "dropouta": 0.0, "epochs": 10, "lr_cuts": ()},
    "ptb-small-awd-lstm": {"core": "awd-lstm", "embedding_size": 128, "hidden_size": 340,
                           **_SMALL_DROPOUTS, "dropouta": 0.0, "wdrop": 0.3, "alpha": 2.0, "beta": 1.0,
                           "epochs": 10, "lr_cuts": ()},
}

#: What ``quick`` changes on top of any preset: a run of a few seconds.
QUICK: dict = {
    "embedding_size": 16, "hidden_size": 24, "adapt_size": 8, "output_size": 0, "epochs": 2,
    "max_batches": 6, "bptt": 20, "min_seq_len": 2, "eval_tokens": 1500, "test_batch_size": 10,
    "log_interval": 2, "lr_cuts": (1,),
}


def get_preset(name: str, quick: bool = False, **overrides: object) -> LMConfig:
    """The validated config of preset ``name`` (optionally quick-sized) with ``overrides``."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
    known = {f.name for f in fields(LMConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown config keys {unknown}; valid keys: {', '.join(sorted(known))}")
    cfg = dataclasses.replace(LMConfig(), **PRESETS[name])
    if quick:
        cfg = dataclasses.replace(cfg, **QUICK)
    cfg = dataclasses.replace(cfg, **overrides)
    cfg.validate()
    return cfg
