"""Character-level views of the language-modelling corpora (for small transformers on a CPU).

The text is that of the word-level files (PTB: already lower-cased, rare words as
``<unk>``, numbers as ``N``): every line's words joined by single spaces, followed by
``"\\n"`` (the character counterpart of ``<eos>``).  The vocabulary is the training
split's characters, sorted, so ids do not depend on file order; a valid/test character
not seen in training is an error (neither corpus has one).  PTB: 50 characters,
5,017,482 / 393,042 / 442,423 train / valid / test characters.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .corpus import CORPORA, SPLITS, Corpus, Dictionary, canonical_corpus
from .download import fetch_file


def _text(path: Path) -> str:
    with open(path, encoding="utf-8") as fh:
        return "".join(" ".join(line.split()) + "\n" for line in fh)


def _encode(text: str, d: Dictionary, what: str) -> torch.Tensor:
    unknown = sorted(set(text) - set(d.word2idx))
    if unknown:
        raise ValueError(f"{what}: characters not in the training vocabulary: {unknown[:10]}")
    table = torch.zeros(max(map(ord, d.word2idx)) + 1, dtype=torch.int64)
    for ch, i in d.word2idx.items():
        table[ord(ch)] = i
    return table[torch.tensor([ord(c) for c in text], dtype=torch.int64)]


def load_char_corpus(name: str = "ptb", data_dir: str | os.PathLike[str] | None = None,
                     download: bool = True) -> Corpus:
    """``"ptb"`` or ``"wikitext-2"`` as character id streams (a :class:`Corpus` whose
    dictionary holds characters).  Files are found and verified as by
    :func:`~unbottleneck.data.load_corpus` (``--data-dir`` / ``$UNBOTTLENECK_DATA``)."""
    key = canonical_corpus(name)
    dataset, files = CORPORA[key]
    paths = {s: fetch_file(dataset, files[s], data_dir=data_dir, download=download) for s in SPLITS}
    texts = {s: _text(p) for s, p in paths.items()}
    d = Dictionary(sorted(set(texts["train"])))
    ids = {s: _encode(t, d, f"{key} {s}") for s, t in texts.items()}
    return Corpus(f"{key}-chars", d, ids["train"], ids["valid"], ids["test"], {s: str(p) for s, p in paths.items()})
