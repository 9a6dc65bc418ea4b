"""Word-level language-modelling corpora (PTB, WikiText-2) and BPTT batching.

Tokenisation follows pytorch/examples ``word_language_model``: every line is
split on whitespace and gets one ``<eos>`` token appended (an empty line is
just ``<eos>``, which matters for WikiText-2).  The vocabulary is built from the
training split in first-seen order, so ids are stable across runs and
machines; ``<eos>`` is whatever id it first gets (id 24 on PTB).  Valid/test
words missing from the training vocabulary map to ``<unk>`` if the vocabulary
has one, and raise otherwise (neither standard corpus has such words).

Token counts (tested): PTB train/valid/test 929,589 / 73,760 / 82,430 with a
10,000-word vocabulary; WikiText-2 2,088,628 / 217,646 / 245,569 with 33,278.

Files are located and checksum-verified through
:func:`~unbottleneck.data.fetch_file` (``--data-dir`` / ``$UNBOTTLENECK_DATA``).
Tokenising is fast enough (about 0.3 s for PTB train, 1 s for WikiText-2
train) that there is no on-disk cache; an in-process cache keyed by file path,
inode, mtime and size makes repeated loads free.

Batching uses the usual "T x B" stream layout: :func:`batchify` cuts the token
stream into ``B`` contiguous columns, and :func:`get_batch` takes rows
``[i, i + L)`` as input and ``[i + 1, i + L + 1)`` as target.
:class:`BPTTSchedule` draws AWD-LSTM style variable sequence lengths from its
own generator, so the order of a run is reproducible and resumable.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .._validate import positive_int
from .download import _stat_key, fetch_file

__all__ = [
    "CORPORA",
    "EOS",
    "UNK",
    "BPTTSchedule",
    "Corpus",
    "Dictionary",
    "batchify",
    "clear_corpus_cache",
    "get_batch",
    "load_corpus",
    "tokenize_lines",
    "unigram_perplexity",
]

EOS = "<eos>"
UNK = "<unk>"

#: corpus name -> (registry dataset name, {split: file name}).
CORPORA: dict[str, tuple[str, dict[str, str]]] = {
    "ptb": ("ptb", {"train": "ptb.train.txt", "valid": "ptb.valid.txt", "test": "ptb.test.txt"}),
    "wikitext-2": ("wikitext-2", {"train": "train.txt", "valid": "valid.txt", "test": "test.txt"}),
}
_ALIASES = {"wt2": "wikitext-2", "wikitext2": "wikitext-2", "penn": "ptb"}
SPLITS = ("train", "valid", "test")


def canonical_corpus(name: str) -> str:
    """``"ptb"``, ``"wikitext-2"`` (aliases ``wt2``, ``wikitext2``, ``penn``); ValueError otherwise."""
    key = _ALIASES.get(str(name).lower(), str(name).lower())
    if key not in CORPORA:
        raise ValueError(
            f"unknown corpus {name!r}; valid names: {', '.join(CORPORA)} "
            f"(aliases: {', '.join(sorted(_ALIASES))})"
        )
    return key


class Dictionary:
    """Word <-> id map; ids are assigned in first-seen order."""

    def __init__(self, words: Iterable[str] = ()) -> None:
        self.word2idx: dict[str, int] = {}
        self.idx2word: list[str] = []
        for w in words:
            self.add_word(w)

    def add_word(self, word: str) -> int:
        idx = self.word2idx.get(word)
        if idx is None:
            idx = self.word2idx[word] = len(self.idx2word)
            self.idx2word.append(word)
        return idx

    def __len__(self) -> int:
        return len(self.idx2word)

    def __contains__(self, word: object) -> bool:
        return word in self.word2idx

    def encode(self, words: Iterable[str]) -> torch.Tensor:
        """Ids of known words (unknown ones map to ``<unk>`` if present), int64 (N,)."""
        return _encode_fixed(list(words), self, "<input>")

    def decode(self, ids: Iterable[int] | torch.Tensor) -> list[str]:
        return [self.idx2word[int(i)] for i in ids]

    def __repr__(self) -> str:
        return f"Dictionary(size={len(self)})"


def _words(lines: Iterable[str]) -> list[str]:
    out: list[str] = []
    for line in lines:
        out.extend(line.split())
        out.append(EOS)
    return out


def _encode_fixed(words: list[str], dictionary: Dictionary, what: str) -> torch.Tensor:
    w2i = dictionary.word2idx
    unk = w2i.get(UNK)
    try:
        ids = [w2i[w] for w in words]
    except KeyError:
        if unk is None:
            missing = sorted({w for w in words if w not in w2i})
            raise ValueError(
                f"{what}: {len(missing)} word types are not in the training vocabulary and it "
                f"has no {UNK} token (first: {missing[:5]})"
            ) from None
        ids = [w2i.get(w, unk) for w in words]
    return torch.tensor(ids, dtype=torch.int64)


def tokenize_lines(lines: Iterable[str], dictionary: Dictionary, grow: bool,
                   what: str = "<text>") -> torch.Tensor:
    """Token ids of ``lines`` (words + ``<eos>`` per line), int64 (N,).

    With ``grow`` new words are added to ``dictionary`` (first-seen order);
    without it unknown words map to ``<unk>`` or raise ValueError naming ``what``.
    """
    words = _words(lines)
    if grow:
        add = dictionary.add_word
        return torch.tensor([add(w) for w in words], dtype=torch.int64)
    return _encode_fixed(words, dictionary, what)


@dataclass
class Corpus:
    """A tokenised corpus: ``train``/``valid``/``test`` int64 id streams and the vocabulary."""

    name: str
    dictionary: Dictionary
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    files: dict[str, str] = field(default_factory=dict)

    @property
    def vocab_size(self) -> int:
        return len(self.dictionary)

    def split(self, name: str) -> torch.Tensor:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; valid splits: {', '.join(SPLITS)}")
        return getattr(self, name)

    @classmethod
    def from_texts(cls, train: str, valid: str, test: str, name: str = "custom") -> Corpus:
        """Build a corpus from in-memory texts (tests, toy data); same tokenisation."""
        d = Dictionary()
        tr = tokenize_lines(train.splitlines(), d, grow=True, what=f"{name} train")
        va = tokenize_lines(valid.splitlines(), d, grow=False, what=f"{name} valid")
        te = tokenize_lines(test.splitlines(), d, grow=False, what=f"{name} test")
        return cls(name, d, tr, va, te)

    def __repr__(self) -> str:
        return (f"Corpus({self.name!r}, vocab={self.vocab_size}, train={self.train.numel()}, "
                f"valid={self.valid.numel()}, test={self.test.numel()})")


# (corpus, ((path, inode, mtime_ns, size) per split)) -> Corpus. One entry per
# corpus is enough; the tensors are handed out as clones so callers may edit them.
_cache: dict[str, tuple[tuple, Corpus]] = {}
_cache_lock = threading.Lock()


def clear_corpus_cache() -> None:
    """Drop the in-process cache of tokenised corpora."""
    with _cache_lock:
        _cache.clear()


def _read_lines(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as fh:
        return fh.read().splitlines()


def load_corpus(
    name: str = "ptb",
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
) -> Corpus:
    """Load and tokenise ``"ptb"`` or ``"wikitext-2"`` (alias ``"wt2"``).

    Files are verified against their pinned sha256 (a missing file raises
    :class:`~unbottleneck.data.DatasetNotFoundError` naming ``--data-dir`` and
    ``UNBOTTLENECK_DATA``).  Results are cached in-process; every call returns
    fresh tensors and a fresh :class:`Dictionary`.
    """
    key = canonical_corpus(name)
    dataset, files = CORPORA[key]
    paths = {s: fetch_file(dataset, files[s], data_dir=data_dir, download=download) for s in SPLITS}
    stamp = tuple(_stat_key(p) for p in paths.values())  # a changed file invalidates the cache
    with _cache_lock:
        hit = _cache.get(key)
    if hit is None or hit[0] != stamp:
        d = Dictionary()
        tensors = {
            s: tokenize_lines(_read_lines(paths[s]), d, grow=(s == "train"), what=str(paths[s]))
            for s in SPLITS
        }
        corpus = Corpus(key, d, tensors["train"], tensors["valid"], tensors["test"],
                        {s: str(p) for s, p in paths.items()})
        with _cache_lock:
            _cache[key] = (stamp, corpus)
    else:
        corpus = hit[1]
    return Corpus(corpus.name, Dictionary(corpus.dictionary.idx2word), corpus.train.clone(),
                  corpus.valid.clone(), corpus.test.clone(), dict(corpus.files))


def unigram_perplexity(train: torch.Tensor, target: torch.Tensor, vocab_size: int) -> float:
    """Perplexity of ``target`` under the (add-one smoothed) unigram model of ``train``.

    A useful "has it learned anything" yardstick: a language model whose
    perplexity is above this has not beaten word frequencies.
    """
    counts = torch.bincount(train, minlength=vocab_size).double() + 1.0
    logp = counts.log() - counts.sum().log()
    return math.exp(-float(logp[target].mean()))


# ---------------------------------------------------------------------------------------
# Batching
# ---------------------------------------------------------------------------------------


def batchify(data: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Cut a 1-D id stream into ``batch_size`` contiguous columns: (N // B, B).

    Column ``b`` holds tokens ``[b * T, (b + 1) * T)`` with ``T = N // B``; the
    ``N % B`` trailing tokens are dropped (as everyone does for PTB/WT2).
    """
    if data.dim() != 1:
        raise ValueError(f"batchify expects a 1-D token stream, got shape {tuple(data.shape)}")
    positive_int("batch_size", batch_size)
    steps = data.numel() // batch_size
    if steps < 2:
        raise ValueError(
            f"{data.numel()} tokens are too few for batch size {batch_size} (need >= 2 per column)"
        )
    return data[: steps * batch_size].view(batch_size, steps).t().contiguous()


def get_batch(source: torch.Tensor, i: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Input rows ``[i, i + L)`` and target rows ``[i + 1, i + L + 1)`` of a (T, B) stream.

    ``L = min(seq_len, T - 1 - i)``; both outputs are (L, B).
    """
    if source.dim() != 2:
        raise ValueError(f"get_batch expects a (T, B) tensor, got shape {tuple(source.shape)}")
    if not 0 <= i < source.shape[0] - 1:
        raise ValueError(f"position {i} is outside [0, {source.shape[0] - 1})")
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    n = min(seq_len, source.shape[0] - 1 - i)
    return source[i : i + n], source[i + 1 : i + 1 + n]


class BPTTSchedule:
    """AWD-LSTM style variable truncation lengths, drawn from a private generator.

    For every batch: with probability ``p_full`` the base length is ``bptt``,
    otherwise ``bptt / 2``; the length is ``max(min_len, int(base + std * n))``
    with ``n ~ N(0, 1)``, capped at ``bptt + max_delta``.  Varying the length
    moves the segment boundaries from epoch to epoch, so every token gets
    trained with varied amounts of left context.  The caller should scale the
    learning rate by ``seq_len / bptt`` (:meth:`lr_scale`) so that short
    segments, which carry less data, move the weights less.

    With ``variable=False`` every length is ``bptt``.  Draws use only
    ``generator`` (float64 on CPU), so a schedule is reproducible given its
    seed and can be resumed from :meth:`state_dict`.
    """

    def __init__(self, bptt: int, variable: bool = True, std: float = 5.0, p_full: float = 0.95,
                 min_len: int = 5, max_delta: int = 40, seed: int = 0) -> None:
        if bptt < 1:
            raise ValueError(f"bptt must be >= 1, got {bptt}")
        if std < 0 or not 0.0 <= p_full <= 1.0 or min_len < 1 or max_delta < 0:
            raise ValueError("need std >= 0, 0 <= p_full <= 1, min_len >= 1, max_delta >= 0")
        self.bptt = bptt
        self.variable = variable
        self.std = std
        self.p_full = p_full
        self.min_len = min_len
        self.max_delta = max_delta
        self.generator = torch.Generator().manual_seed(seed)

    def next_len(self) -> int:
        if not self.variable:
            return self.bptt
        u = torch.rand((), generator=self.generator, dtype=torch.float64).item()
        z = torch.randn((), generator=self.generator, dtype=torch.float64).item()
        base = self.bptt if u < self.p_full else self.bptt / 2.0
        length = max(self.min_len, int(base + self.std * z))
        return min(length, self.bptt + self.max_delta)

    def lr_scale(self, seq_len: int) -> float:
        return seq_len / self.bptt

    def epoch(self, total: int, start: int = 0) -> Iterator[tuple[int, int]]:
        """Yield ``(i, seq_len)`` covering rows ``[start, total - 1)`` of a (total, B) stream."""
        i = start
        while i < total - 1:
            n = min(self.next_len(), total - 1 - i)
            yield i, n
            i += n

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
