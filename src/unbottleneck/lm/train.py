"""Training loop of the word-level language models: BPTT, NT-ASGD, checkpoints, exact resume.

:class:`LMTrainer` owns the model, the optimiser, the data order and all
bookkeeping of one run.  One epoch walks the batchified training stream with
AWD-LSTM variable BPTT lengths (:class:`~unbottleneck.data.BPTTSchedule`, own
generator), scales the learning rate by ``seq_len / bptt`` for each batch,
adds AR/TAR, clips the gradient norm and steps.  After every epoch it
evaluates the validation perplexity, applies lr cuts and the NT-ASGD switch,
keeps the best weights and writes a checkpoint.

Checkpoints (``checkpoint.pt``, plus ``best.pt`` with the best weights) are
written atomically: to a temporary file in the same folder, flushed, fsynced
and moved into place with :func:`os.replace`, so a crash never leaves a
partial file under the real name and the previous checkpoint stays intact.
They hold the model, the optimiser (and the iterate average of NT-ASGD), the
Python / NumPy / torch (and CUDA) RNG states, the data-order generator, the
epoch and position inside it (with the recurrent state and the epoch's
running sums when written mid-epoch), the best validation loss and the
metrics history.  Resuming restores all of it, so an interrupted run that is
resumed ends with bit-identical weights and metrics to an uninterrupted one
(on CPU; CUDA kernels are not all deterministic).

A non-finite training loss (or gradient norm) raises :class:`TrainingDiverged`
before the optimiser step; the last checkpoint on disk is left untouched.

NT-ASGD: SGD whose iterates are averaged from the switch point on (this is
what ``torch.optim.ASGD(t0=0, lambd=0)`` does; the average is kept here, by
:class:`IterateAverage`, so that per-batch lr scaling acts on the current step
and the average is exact).  The switch happens when the epoch's validation
loss is worse than the best of all but the last ``nonmono`` epochs.
Evaluation, best-model selection and ``best.pt`` then use the averaged weights.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.corpus import BPTTSchedule, Corpus, batchify, get_batch
from ..training import distributed
from ..training.checkpoint import (
    CheckpointError,
    atomic_torch_save,
    rng_state,
    seed_everything,
    set_rng_state,
)
from ..training.checkpoint import load_checkpoint as _load_checkpoint
from ..training.interrupt import TrainingDiverged as _TrainingDiverged
from .configs import RESUME_MUTABLE, LMConfig
from .model import RNNLanguageModel, ar_tar_penalty, detach_state, map_state

__all__ = [
    "CHECKPOINT_FORMAT",
    "IterateAverage",
    "LMTrainer",
    "TrainingDiverged",
    "atomic_torch_save",
    "build_model",
    "load_checkpoint",
]

CHECKPOINT_FORMAT = 1
CHECKPOINT_NAME = "checkpoint.pt"
BEST_NAME = "best.pt"


class TrainingDiverged(_TrainingDiverged):
    """The training loss (or gradient norm) became NaN/inf; training stopped."""

    def __init__(self, message: str, *, epoch: int, batch: int,
                 checkpoint: Path | None) -> None:
        super().__init__(message)  # the message already names the checkpoint
        self.checkpoint = checkpoint
        self.epoch = epoch
        self.batch = batch


def load_checkpoint(path: str | os.PathLike[str]) -> dict:
    """Read a checkpoint written by :class:`LMTrainer` (safe ``weights_only`` loading)."""
    try:
        return _load_checkpoint(path, version=CHECKPOINT_FORMAT)
    except CheckpointError as exc:
        raise ValueError(f"{exc} (not an unbottleneck LM checkpoint?)") from None


def build_model(cfg: LMConfig, vocab_size: int, device: torch.device | str | None = None
                ) -> RNNLanguageModel:
    """The :class:`RNNLanguageModel` described by ``cfg``."""
    return RNNLanguageModel(
        vocab_size, embedding_size=cfg.embedding_size, hidden_size=cfg.hidden_size,
        num_layers=cfg.num_layers, core=cfg.core, adapt_size=cfg.adapt_size,
        output_size=cfg.output_size or None, tie_weights=cfg.tie_weights,
        dropoute=cfg.dropoute, dropouti=cfg.dropouti, dropouth=cfg.dropouth,
        dropouta=cfg.dropouta, dropouto=cfg.dropouto, wdrop=cfg.wdrop, device=device,
        alstm_options={"implementation": cfg.alstm_implementation,
                       "policy_init": cfg.alstm_policy_init,
                       "policy_layout": cfg.alstm_policy_layout} if cfg.core == "alstm" else None,
    )


class IterateAverage:
    """Running mean of parameter values since :meth:`start` (Polyak averaging).

    ``update()`` after every optimiser step adds the current values:
    ``avg += (p - avg) / n``.  :meth:`swapped_in` temporarily loads the mean
    into the parameters (for evaluation / saving).
    """

    def __init__(self, params: list[nn.Parameter]) -> None:
        self.params = params
        self.count = 0
        self.avg: list[torch.Tensor] = []

    @property
    def active(self) -> bool:
        return self.count > 0 or bool(self.avg)

    def start(self) -> None:
        self.avg = [p.detach().clone() for p in self.params]
        self.count = 0

    @torch.no_grad()
    def update(self) -> None:
        if not self.avg:
            return
        self.count += 1
        for a, p in zip(self.avg, self.params, strict=True):
            a.add_(p.detach() - a, alpha=1.0 / self.count)

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        if not self.avg or self.count == 0:
            yield
            return
        saved = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, a in zip(self.params, self.avg, strict=True):
                p.copy_(a)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, s in zip(self.params, saved, strict=True):
                    p.copy_(s)

    def state_dict(self) -> dict:
        return {"count": self.count, "avg": [a.clone() for a in self.avg]}

    def load_state_dict(self, state: dict) -> None:
        self.count = int(state["count"])
        self.avg = [a.to(p.device, p.dtype).clone()
                    for a, p in zip(state["avg"], self.params, strict=True)] if state["avg"] else []


def _params_finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


Hook = Callable[["LMTrainer"], None]


class LMTrainer:
    """Train an :class:`RNNLanguageModel` on a :class:`~unbottleneck.data.Corpus`.

    Args:
        cfg: the run's :class:`LMConfig` (validated here).
        corpus: tokenised corpus (its vocabulary size sizes the model).
        out_dir: folder for ``checkpoint.pt`` and ``best.pt``; None keeps
            everything in memory (no checkpoints, no resume).
        bar: ``bar(total, desc)`` returning a tqdm-like context manager (e.g.
            :meth:`RunContext.bar`); None shows no progress.
        log: called with one-line messages (epoch summaries, NT-ASGD switch).
        dist: the torchrun process group (:func:`unbottleneck.training.distributed.setup`);
            None or a single process trains alone.

    Under torchrun (data parallel, DDP) every rank trains on its own share of the
    ``batch_size`` columns of the training stream (``batch_size`` must divide by the
    world size), so the averaged gradient is the one of the whole batch; every rank
    evaluates the full validation/test data with the same weights.  Rank 0 writes
    ``checkpoint.pt`` and ``best.pt``; ranks r > 0 write their own recurrent state and
    RNG states to ``checkpoint.rank<r>.pt`` next to it, so a mid-epoch checkpoint can
    be resumed by the same number of processes.

    Building a trainer seeds Python, NumPy and torch from ``cfg.seed`` (then
    builds the model), so a run is reproducible from its config.  Use
    :meth:`fit`; :meth:`resume` builds a trainer from ``out_dir``'s checkpoint.
    After :meth:`fit` the model holds the best (validation) weights.
    """

    def __init__(self, cfg: LMConfig, corpus: Corpus, out_dir: str | os.PathLike[str] | None = None,
                 bar: Callable[[int, str], Any] | None = None,
                 log: Callable[[str], None] | None = None,
                 dist: distributed.DistInfo | None = None) -> None:
        cfg.validate()
        self.dist = dist or distributed.DistInfo()
        if cfg.batch_size % self.dist.world_size:
            raise ValueError(f"batch_size {cfg.batch_size} does not divide among "
                             f"{self.dist.world_size} processes")
        self.cfg = cfg
        self.corpus = corpus
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.bar = bar
        self.log = log or (lambda msg: None)
        self.device = distributed.device_for(cfg.device, self.dist)

        seed_everything(cfg.seed)
        self.model = build_model(cfg, corpus.vocab_size, device=self.device)
        self.model.check_tokens = False  # the corpus's ids are in range by construction
        if self.dist.distributed:
            # The same initial weights on every rank (DDP also broadcasts rank 0's), then a
            # rank-specific stream, so the ranks draw different dropout masks.
            torch.manual_seed(distributed.rank_seed(cfg.seed, self.dist))
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.num_parameters = sum(p.numel() for p in self.params)
        self.net = distributed.wrap(self.model, self.dist)
        train = batchify(corpus.train, cfg.batch_size)
        share = cfg.batch_size // self.dist.world_size
        self.train_data = train[:, self.dist.rank * share:(self.dist.rank + 1) * share].to(self.device)
        self.valid_data = batchify(self._eval_prefix(corpus.valid), cfg.eval_batch_size).to(self.device)
        self.test_data = batchify(self._eval_prefix(corpus.test), cfg.test_batch_size).to(self.device)
        self.schedule = BPTTSchedule(cfg.bptt, variable=cfg.variable_bptt, std=cfg.bptt_std,
                                     p_full=cfg.bptt_p_full, min_len=cfg.min_seq_len,
                                     max_delta=cfg.max_seq_len_delta, seed=cfg.seed)
        self.optimizer = self._make_optimizer()
        self.average = IterateAverage(self.params)

        self.epoch = 0  # completed epochs
        self.batch = 0  # batches done in the current epoch
        self.pos = 0  # next row of the training stream
        self.hidden: Any = None
        self.running = _fresh_running()
        self.best_val = math.inf
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.history: list[dict] = []
        self.curve: list[dict] = []
        self.val_losses: list[float] = []  # raw-weight validation losses (NT-ASGD trigger)
        self.asgd_epoch: int | None = None
        self.global_step = 0

    # ---------------------------------------------------------------- setup

    def _eval_prefix(self, data: torch.Tensor) -> torch.Tensor:
        return data[: self.cfg.eval_tokens] if self.cfg.eval_tokens else data

    def _make_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.cfg
        if cfg.optimizer == "adam":
            return torch.optim.Adam(self.params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                                    weight_decay=cfg.weight_decay)
        return torch.optim.SGD(self.params, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)

    @property
    def checkpoint_path(self) -> Path | None:
        return self.out_dir / CHECKPOINT_NAME if self.out_dir is not None else None

    def _rank_path(self, rank: int) -> Path | None:
        return self.out_dir / f"checkpoint.rank{rank}.pt" if self.out_dir is not None else None

    @property
    def best_path(self) -> Path | None:
        return self.out_dir / BEST_NAME if self.out_dir is not None else None

    # ---------------------------------------------------------------- evaluation

    @torch.no_grad()
    def evaluate(self, data: torch.Tensor) -> float:
        """Mean negative log-likelihood per token (nats) of a (T, B) stream, fixed ``bptt``."""
        was_training = self.model.training
        self.model.eval()
        total = 0.0
        count = 0
        state = None
        vocab = self.corpus.vocab_size
        starts = range(0, data.shape[0] - 1, self.cfg.bptt)
        # a bar only for long evaluations (the batch-1 test pass takes minutes at full size)
        show = self.bar is not None and len(starts) >= 200
        bar = self.bar(len(starts), "evaluating") if show else contextlib.nullcontext()
        with bar as pbar:
            for i in starts:
                x, y = get_batch(data, i, self.cfg.bptt)
                out = self.model(x, state)
                # summed on the device: one host sync for the whole evaluation
                total = total + F.cross_entropy(out.logits.reshape(-1, vocab), y.reshape(-1),
                                                reduction="sum").double()
                count += y.numel()
                state = out.state
                if pbar is not None:
                    pbar.update(1)
        self.model.train(was_training)
        return float(total) / count

    def evaluate_current(self, data: torch.Tensor) -> float:
        """Like :meth:`evaluate`, with the averaged weights once NT-ASGD is active."""
        with self.average.swapped_in():
            return self.evaluate(data)

    # ---------------------------------------------------------------- training

    def _train_step(self, x: torch.Tensor, y: torch.Tensor, seq_len: int, base_lr: float) -> float:
        cfg = self.cfg
        lr = base_lr * self.schedule.lr_scale(seq_len)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.hidden = detach_state(self.hidden)
        out = self.net(x, self.hidden)
        raw_loss = F.cross_entropy(out.logits.reshape(-1, self.corpus.vocab_size), y.reshape(-1))
        loss = raw_loss + ar_tar_penalty(out.raw_output, out.output, cfg.alpha, cfg.beta)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # every rank runs it, finite or not, so none waits in DDP's all-reduce
        norm = (torch.nn.utils.clip_grad_norm_(self.params, cfg.clip) if cfg.clip > 0
                else loss.new_zeros(()))
        # One host sync per step: the summed loss (every rank takes the same decision), the
        # gradient norm (already reduced by DDP) and this rank's raw loss, read together.
        total = distributed.all_reduce_sum(loss.detach(), self.dist)  # on loss's device
        total, norm, raw = torch.stack([total, norm.double(), raw_loss.detach().double()]).tolist()
        if not math.isfinite(total):
            self._diverged(f"training loss became {total / self.dist.world_size}")
        if not math.isfinite(norm):
            self._diverged(f"gradient norm became {norm}")
        self.optimizer.step()
        self.average.update()
        self.hidden = out.state
        self.global_step += 1
        return raw

    def _diverged(self, what: str) -> None:
        ckpt = self.checkpoint_path
        where = (f"The last good checkpoint is kept at {ckpt}." if ckpt is not None and ckpt.exists()
                 else "No checkpoint was written before this point.")
        raise TrainingDiverged(
            f"{what} at epoch {self.epoch + 1}, batch {self.batch + 1}; training stopped. {where} "
            "Try a lower learning rate or gradient clipping (clip > 0).",
            epoch=self.epoch + 1, batch=self.batch + 1,
            checkpoint=ckpt if ckpt is not None and ckpt.exists() else None,
        )

    def train_epoch(self, on_batch_end: Hook | None = None) -> dict:
        """Train (the rest of) the current epoch; returns its history row (without validation)."""
        cfg = self.cfg
        epoch = self.epoch + 1
        base_lr = cfg.lr_at(epoch)
        rows = self.train_data.shape[0]
        total = math.ceil((rows - 1) / cfg.bptt)
        if cfg.max_batches:
            total = min(total, cfg.max_batches)
        self.model.train()
        bar = self.bar(total, f"epoch {epoch}/{cfg.epochs}") if self.bar else contextlib.nullcontext()
        with bar as pbar:
            if pbar is not None and self.batch:
                pbar.update(self.batch)
            # islice stops at the cap before the schedule draws another length, so the
            # data-order generator advances exactly once per trained batch.
            cap = max(cfg.max_batches - self.batch, 0) if cfg.max_batches else None
            for i, seq_len in itertools.islice(self.schedule.epoch(rows, self.pos), cap):
                start = time.perf_counter()
                x, y = get_batch(self.train_data, i, seq_len)
                loss = self._train_step(x, y, seq_len, base_lr)
                self.running["time"] += time.perf_counter() - start
                self.running["loss_sum"] += loss * y.numel()
                self.running["tokens"] += y.numel()
                self.running["win_loss_sum"] += loss * y.numel()
                self.running["win_tokens"] += y.numel()
                self.batch += 1
                self.pos = i + x.shape[0]
                if self.batch % cfg.log_interval == 0:
                    # mean over the last log_interval batches (dropout on)
                    self.curve.append({
                        "epoch": epoch, "batch": self.batch, "step": self.global_step,
                        "train_loss": self.running["win_loss_sum"] / self.running["win_tokens"],
                    })
                    self.running["win_loss_sum"], self.running["win_tokens"] = 0.0, 0
                if pbar is not None:
                    pbar.update(1)
                    pbar.set_postfix_str(
                        f"ppl {math.exp(min(self.running['loss_sum'] / self.running['tokens'], 50)):.1f}")
                if cfg.checkpoint_every and self.batch % cfg.checkpoint_every == 0:
                    self.save_checkpoint()
                if on_batch_end is not None:
                    on_batch_end(self)
        train_loss = self.running["loss_sum"] / max(self.running["tokens"], 1)
        row = {
            "epoch": epoch,
            "train_loss": train_loss,
            "train_ppl": math.exp(min(train_loss, 700.0)),
            "lr": base_lr,
            "batches": self.batch,
            "train_time_s": self.running["time"],
            "tokens_per_s": self.running["tokens"] / max(self.running["time"], 1e-9),
        }
        self.epoch = epoch
        self.batch = 0
        if not (cfg.carry_position and self.pos < rows - 2):
            # The next epoch starts at the top with a fresh state (a carried one goes on).
            self.pos = 0
            self.hidden = None
        self.running = _fresh_running()
        return row

    def _end_of_epoch(self, row: dict) -> dict:
        cfg = self.cfg
        start = time.perf_counter()
        if self.average.active:
            val_loss = self.evaluate_current(self.valid_data)
        else:
            val_loss = self.evaluate(self.valid_data)
            if (cfg.optimizer == "nt-asgd" and len(self.val_losses) > cfg.nonmono
                    and val_loss > min(self.val_losses[: -cfg.nonmono])):
                self.average.start()
                self.asgd_epoch = self.epoch
                self.log(f"epoch {self.epoch}: validation stopped improving; switching to "
                         "averaged SGD (NT-ASGD)")
            self.val_losses.append(val_loss)
        row.update({
            "val_loss": val_loss,
            "val_ppl": math.exp(min(val_loss, 700.0)) if math.isfinite(val_loss) else float("nan"),
            "asgd": self.asgd_epoch is not None and self.epoch > self.asgd_epoch,
            "eval_time_s": time.perf_counter() - start,
        })
        self.history.append(row)
        if math.isfinite(val_loss) and val_loss < self.best_val:
            self.best_val = val_loss
            self.best_epoch = self.epoch
            with self.average.swapped_in():
                self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            if self.best_path is not None and self.dist.is_main:
                atomic_torch_save({"format": CHECKPOINT_FORMAT, "kind": "best",
                                   "config": cfg.to_dict(), "epoch": self.epoch,
                                   "val_loss": val_loss, "model": self.best_state},
                                  self.best_path)
        self.log(f"epoch {self.epoch}: train ppl {row['train_ppl']:.2f}, val ppl "
                 f"{row['val_ppl']:.2f}, lr {row['lr']:.3g}, {row['tokens_per_s']:.0f} tok/s")
        return row

    def fit(self, on_batch_end: Hook | None = None, on_epoch_end: Hook | None = None) -> dict:
        """Train until ``cfg.epochs``, then test the best weights; returns a summary dict.

        Raises :class:`TrainingDiverged` on a non-finite loss.  The hooks are
        called after every batch / epoch (after that epoch's checkpoint).
        """
        while self.epoch < self.cfg.epochs:
            row = self.train_epoch(on_batch_end)
            self._end_of_epoch(row)
            self.save_checkpoint()
            if on_epoch_end is not None:
                on_epoch_end(self)
        return self.finish()

    def finish(self) -> dict:
        """Test perplexity of the best weights (or the current ones if none) and a summary."""
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
            test_loss = self.evaluate(self.test_data)
        else:
            test_loss = self.evaluate_current(self.test_data)
        tps = [r["tokens_per_s"] for r in self.history if r["train_time_s"] > 0]
        return {
            "epochs": self.epoch,
            "best_epoch": self.best_epoch,
            "best_val_loss": self.best_val,
            "best_val_ppl": math.exp(self.best_val) if math.isfinite(self.best_val) else float("nan"),
            "final_val_ppl": self.history[-1]["val_ppl"] if self.history else float("nan"),
            "test_loss": test_loss,
            "test_ppl": math.exp(min(test_loss, 700.0)),
            "params": self.num_parameters,
            "tokens_per_s": sum(tps) / len(tps) if tps else float("nan"),
            "asgd_epoch": self.asgd_epoch,
            "history": self.history,
            "curve": self.curve,
            "checkpoint": str(self.checkpoint_path) if self.checkpoint_path else None,
            "best_checkpoint": str(self.best_path) if self.best_path and self.best_path.exists()
            else None,
        }

    # ---------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict:
        """Everything needed to continue this run exactly."""
        return {
            "format": CHECKPOINT_FORMAT,
            "kind": "state",
            "config": self.cfg.to_dict(),
            "world_size": self.dist.world_size,
            "epoch": self.epoch,
            "batch": self.batch,
            "pos": self.pos,
            "global_step": self.global_step,
            "hidden": _plain(detach_state(self.hidden)),
            "running": dict(self.running),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "average": self.average.state_dict(),
            "asgd_epoch": self.asgd_epoch,
            "rng": rng_state(),
            "schedule": self.schedule.state_dict(),
            "best_val": self.best_val,
            "best_epoch": self.best_epoch,
            "best_state": self.best_state,
            "val_losses": list(self.val_losses),
            "history": list(self.history),
            "curve": list(self.curve),
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.average.load_state_dict(state["average"])
        self.epoch = int(state["epoch"])
        self.batch = int(state["batch"])
        self.pos = int(state["pos"])
        self.global_step = int(state["global_step"])
        self.hidden = map_state(lambda t: t.to(self.device), state["hidden"], "move")
        self.running = dict(state["running"])
        self.asgd_epoch = state["asgd_epoch"]
        self.schedule.load_state_dict(state["schedule"])
        self.best_val = float(state["best_val"])
        self.best_epoch = int(state["best_epoch"])
        self.best_state = ({k: v.to(self.device) for k, v in state["best_state"].items()}
                           if state["best_state"] is not None else None)
        self.val_losses = list(state["val_losses"])
        self.history = list(state["history"])
        self.curve = list(state["curve"])
        set_rng_state(state["rng"])  # last: nothing above may consume random numbers after it

    def save_checkpoint(self) -> Path | None:
        """Write ``checkpoint.pt`` atomically (no-op without ``out_dir``).

        Ranks r > 0 of a torchrun group write only what differs between ranks (their
        recurrent state and RNG states) to ``checkpoint.rank<r>.pt``.
        """
        path = self.checkpoint_path
        if path is None:
            return None
        if not _params_finite(self.model):
            self._diverged("a parameter became non-finite")
        if not self.dist.is_main:
            atomic_torch_save({"format": CHECKPOINT_FORMAT, "kind": "rank-state",
                               "epoch": self.epoch, "batch": self.batch,
                               "hidden": _plain(detach_state(self.hidden)), "rng": rng_state()},
                              self._rank_path(self.dist.rank))
            return path
        return atomic_torch_save(self.state_dict(), path)

    @classmethod
    def resume(cls, cfg: LMConfig, corpus: Corpus, out_dir: str | os.PathLike[str],
               bar: Callable[[int, str], Any] | None = None,
               log: Callable[[str], None] | None = None,
               dist: distributed.DistInfo | None = None) -> LMTrainer:
        """A trainer continuing from ``out_dir/checkpoint.pt``.

        ``cfg`` must equal the checkpoint's config except for the fields in
        :data:`~unbottleneck.lm.configs.RESUME_MUTABLE` (e.g. more ``epochs``).
        """
        path = Path(out_dir) / CHECKPOINT_NAME
        state = load_checkpoint(path)
        dist = dist or distributed.DistInfo()
        saved_world = int(state.get("world_size", 1))
        if saved_world != dist.world_size and (state["batch"] or saved_world > 1):
            raise ValueError(f"cannot resume from {path}: it was written by {saved_world} "
                             f"process(es), this run has {dist.world_size}")
        if dist.rank > 0:
            extra = load_checkpoint(Path(out_dir) / f"checkpoint.rank{dist.rank}.pt")
            if (extra["epoch"], extra["batch"]) != (state["epoch"], state["batch"]):
                raise ValueError(f"cannot resume: the checkpoints of rank 0 and rank {dist.rank} "
                                 "are from different steps")
            state = {**state, "hidden": extra["hidden"], "rng": extra["rng"]}
        saved = state["config"]
        current = cfg.to_dict()
        diff = sorted(k for k in current if k not in RESUME_MUTABLE
                      and _normalise(saved.get(k)) != _normalise(current[k]))
        if diff:
            details = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs now {current[k]!r}"
                                for k in diff)
            raise ValueError(f"cannot resume from {path}: the config differs ({details})")
        trainer = cls(cfg, corpus, out_dir, bar=bar, log=log, dist=dist)
        trainer.load_state_dict(state)
        return trainer


def _fresh_running() -> dict:
    """Sums of the current epoch (and of the current logging window)."""
    return {"loss_sum": 0.0, "tokens": 0, "time": 0.0, "win_loss_sum": 0.0, "win_tokens": 0}


def _plain(state: Any) -> Any:
    """NamedTuples -> plain tuples, so a checkpoint loads with ``weights_only=True``."""
    if isinstance(state, (tuple, list)):
        return tuple(_plain(s) for s in state) if isinstance(state, tuple) else [
            _plain(s) for s in state]
    return state


def _normalise(value: Any) -> Any:
    return list(value) if isinstance(value, (tuple, list)) else value
