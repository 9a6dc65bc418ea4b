"""Shared data layer: locating, verifying, downloading and loading datasets.

Files live under ``<root>/<dataset>/`` where the root is an explicit
``data_dir`` argument, else ``$UNBOTTLENECK_DATA``, else
``~/.cache/unbottleneck/data`` (see :func:`resolve_data_dir`). Every file is
pinned by size and sha256 in :data:`DATASETS`.
"""

from .chars import load_char_corpus
from .cifar import load_cifar10, read_cifar_archive
from .corpus import (
    CORPORA,
    BPTTSchedule,
    Corpus,
    Dictionary,
    batchify,
    get_batch,
    load_corpus,
    unigram_perplexity,
)
from .download import (
    DATA_ENV_VAR,
    DATASETS,
    ChecksumError,
    DatasetNotFoundError,
    DatasetSpec,
    FileSpec,
    dataset_dir,
    fetch_dataset,
    fetch_file,
    resolve_data_dir,
    sha256_file,
)
from .mnist import MNIST, load_mnist, read_idx

__all__ = [
    "load_char_corpus",
    "CORPORA",
    "BPTTSchedule",
    "Corpus",
    "Dictionary",
    "batchify",
    "get_batch",
    "load_corpus",
    "unigram_perplexity",
    "DATASETS",
    "DATA_ENV_VAR",
    "MNIST",
    "ChecksumError",
    "DatasetNotFoundError",
    "DatasetSpec",
    "FileSpec",
    "dataset_dir",
    "fetch_dataset",
    "fetch_file",
    "load_cifar10",
    "load_mnist",
    "read_cifar_archive",
    "read_idx",
    "resolve_data_dir",
    "sha256_file",
]
