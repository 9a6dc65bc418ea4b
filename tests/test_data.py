"""Tests for the shared data layer (unbottleneck.data); offline and fast."""

import gzip
import io
import os
import shutil
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

from unbottleneck.data import (
    DATASETS,
    MNIST,
    ChecksumError,
    DatasetNotFoundError,
    fetch_dataset,
    fetch_file,
    load_mnist,
    read_idx,
    resolve_data_dir,
    sha256_file,
)
from unbottleneck.data import download as dl

TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
SMALL = "t10k-labels-idx1-ubyte.gz"  # 4.5 kB: cheap to copy, corrupt and "download"


@pytest.fixture(autouse=True)
def _fresh_hash_cache():
    # Tests build files in tmp_path whose stat data could in principle repeat.
    dl.clear_verification_cache()
    yield
    dl.clear_verification_cache()


def _serve(monkeypatch, payload: bytes) -> list:
    """Make urlopen answer every request with ``payload``; return the list of URLs asked."""
    calls = []

    def fake_urlopen(req, timeout=None):
        calls.append(req.full_url if hasattr(req, "full_url") else req)
        return io.BytesIO(payload)

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    return calls


def _no_network(monkeypatch) -> list:
    calls = []

    def fake_urlopen(req, timeout=None):
        calls.append(req)
        raise urllib.error.URLError("network is unreachable (test)")

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    return calls


# ----------------------------------------------------------------- MNIST


def test_mnist_train_shapes_range_and_counts(shared_data):
    x, y = load_mnist("train")
    assert x.shape == (60000, 784) and x.dtype == torch.float32
    assert y.shape == (60000,) and y.dtype == torch.int64
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert torch.bincount(y, minlength=10).tolist() == TRAIN_COUNTS


def test_mnist_test_split_unflattened(shared_data):
    x, y = load_mnist("test", flatten=False)
    assert x.shape == (10000, 1, 28, 28) and x.dtype == torch.float32
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert torch.bincount(y, minlength=10).tolist() == TEST_COUNTS


def test_mnist_cached_results_are_independent(shared_data):
    x1, y1 = load_mnist("test")
    x1.zero_()
    y1.fill_(3)
    x2, y2 = load_mnist("test")
    assert float(x2.max()) == 1.0
    assert torch.bincount(y2, minlength=10).tolist() == TEST_COUNTS


def test_mnist_dataset_wrapper(shared_data):
    ds = MNIST("test")
    assert len(ds) == 10000
    img, label = ds[0]
    assert img.shape == (784,) and label.dtype == torch.int64


def test_mnist_bad_split():
    with pytest.raises(ValueError, match="train"):
        load_mnist("validation")


# ----------------------------------------------------------------- paths


def test_resolve_data_dir_precedence(monkeypatch, tmp_path):
    env_dir = tmp_path / "env"
    arg_dir = tmp_path / "arg"
    monkeypatch.setenv("UNBOTTLENECK_DATA", str(env_dir))
    assert resolve_data_dir(arg_dir) == arg_dir
    assert resolve_data_dir(str(arg_dir)) == arg_dir
    assert resolve_data_dir() == env_dir
    monkeypatch.delenv("UNBOTTLENECK_DATA")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_data_dir() == tmp_path / "home" / ".cache" / "unbottleneck" / "data"


# ----------------------------------------------------------------- verification


#: The datasets ../shared/data holds (no CIFAR-10 copy exists on these machines).
SHARED_DATASETS = ("mnist", "ptb", "wikitext-2")


def test_registry_matches_shared_copy(shared_data):
    assert set(SHARED_DATASETS) < set(DATASETS)
    for name, spec in ((n, DATASETS[n]) for n in SHARED_DATASETS):
        for f in spec.files:
            path = shared_data / name / f.name
            assert path.stat().st_size == f.size, path
    # Full hash check on MNIST (the other datasets are checked by size above
    # and by fetch_dataset below).
    for f in DATASETS["mnist"].files:
        assert sha256_file(shared_data / "mnist" / f.name) == f.sha256


def test_fetch_verifies_shared_copy(shared_data):
    for name in SHARED_DATASETS:
        assert fetch_dataset(name, download=False) == shared_data / name
    assert fetch_file("mnist", SMALL, download=False) == shared_data / "mnist" / SMALL


def test_verification_is_cached(shared_data, monkeypatch):
    calls = []
    real = dl.sha256_file
    monkeypatch.setattr(dl, "sha256_file", lambda p: calls.append(p) or real(p))
    fetch_file("mnist", SMALL)
    fetch_file("mnist", SMALL)
    assert len(calls) == 1


def test_corrupted_copy_raises_checksum_error(shared_data, tmp_path):
    (tmp_path / "mnist").mkdir()
    bad = tmp_path / "mnist" / SMALL
    shutil.copyfile(shared_data / "mnist" / SMALL, bad)
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    expected = DATASETS["mnist"].file(SMALL).sha256
    with pytest.raises(ChecksumError) as info:
        fetch_file("mnist", SMALL, data_dir=tmp_path)
    msg = str(info.value)
    assert SMALL in msg and expected in msg and sha256_file(bad) in msg
    assert "delete" in msg
    assert isinstance(info.value, ValueError)
    assert bad.exists()  # never removed or overwritten behind the user's back


def test_read_idx_rejects_truncated_file(shared_data, tmp_path):
    raw = gzip.decompress((shared_data / "mnist" / SMALL).read_bytes())
    good = tmp_path / "labels.idx"
    good.write_bytes(raw)
    labels = read_idx(good)
    assert labels.shape == (10000,) and labels.dtype == np.uint8

    for name, payload in [
        ("short.idx", raw[:-100]),
        ("short.idx.gz", gzip.compress(raw[:-100])),
        ("header.idx", raw[:6]),
        ("cut.gz", gzip.compress(raw)[:-50]),
    ]:
        path = tmp_path / name
        path.write_bytes(payload)
        with pytest.raises(ValueError, match="IDX"):
            read_idx(path)


def test_read_idx_rejects_bad_magic(tmp_path):
    path = tmp_path / "junk.idx"
    path.write_bytes(b"<html>not found</html>")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(path)


# ----------------------------------------------------------------- missing data


def test_missing_without_download(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        fetch_file("mnist", SMALL, data_dir=tmp_path, download=False)
    msg = str(info.value)
    assert str(tmp_path / "mnist" / SMALL) in msg
    assert "--data-dir" in msg and "UNBOTTLENECK_DATA" in msg
    assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(DatasetNotFoundError):
        load_mnist("test", data_dir=tmp_path, download=False)


def test_missing_with_network_blocked(tmp_path, monkeypatch):
    calls = _no_network(monkeypatch)
    with pytest.raises(DatasetNotFoundError) as info:
        fetch_file("mnist", SMALL, data_dir=tmp_path, download=True)
    msg = str(info.value)
    assert "--data-dir" in msg and "UNBOTTLENECK_DATA" in msg and "network" in msg
    assert len(calls) == len(DATASETS["mnist"].file(SMALL).urls)  # every mirror tried
    assert os.listdir(tmp_path / "mnist") == []  # no temp files left behind


# ----------------------------------------------------------------- downloads


def test_download_success_is_verified_and_atomic(shared_data, tmp_path, monkeypatch):
    payload = (shared_data / "mnist" / SMALL).read_bytes()
    calls = _serve(monkeypatch, payload)
    path = fetch_file("mnist", SMALL, data_dir=tmp_path, progress=True)
    assert path == tmp_path / "mnist" / SMALL
    assert path.read_bytes() == payload
    assert os.listdir(tmp_path / "mnist") == [SMALL]
    assert calls == [DATASETS["mnist"].file(SMALL).urls[0]]
    # A second call finds the verified file and does not download again.
    assert fetch_file("mnist", SMALL, data_dir=tmp_path) == path
    assert len(calls) == 1


def test_download_falls_back_to_next_mirror(shared_data, tmp_path, monkeypatch):
    payload = (shared_data / "mnist" / SMALL).read_bytes()
    calls = []

    def flaky(req, timeout=None):
        calls.append(req.full_url)
        if len(calls) == 1:
            raise urllib.error.URLError("first mirror down")
        return io.BytesIO(payload)

    monkeypatch.setattr(urllib.request, "urlopen", flaky)
    path = fetch_file("mnist", SMALL, data_dir=tmp_path)
    assert path.read_bytes() == payload
    assert calls == list(DATASETS["mnist"].file(SMALL).urls)


def test_download_with_wrong_hash_leaves_nothing(shared_data, tmp_path, monkeypatch):
    payload = bytearray((shared_data / "mnist" / SMALL).read_bytes())
    payload[100] ^= 0x01
    _serve(monkeypatch, bytes(payload))
    with pytest.raises(ChecksumError) as info:
        fetch_file("mnist", SMALL, data_dir=tmp_path)
    assert DATASETS["mnist"].file(SMALL).sha256 in str(info.value)
    assert os.listdir(tmp_path / "mnist") == []


def test_download_oversized_answer_is_rejected(tmp_path, monkeypatch):
    _serve(monkeypatch, b"x" * (DATASETS["mnist"].file(SMALL).size + 10))
    with pytest.raises(ChecksumError):
        fetch_file("mnist", SMALL, data_dir=tmp_path)
    assert os.listdir(tmp_path / "mnist") == []


# ----------------------------------------------------------------- names


def test_unknown_names(tmp_path):
    with pytest.raises(ValueError, match="mnist"):
        fetch_file("cifar100", "data_batch_1", data_dir=tmp_path)
    with pytest.raises(ValueError, match="cifar-10-binary.tar.gz"):
        fetch_file("cifar10", "data_batch_1", data_dir=tmp_path)
    with pytest.raises(ValueError, match="wikitext-2"):
        fetch_dataset("imagenet", data_dir=tmp_path)
    with pytest.raises(ValueError, match=SMALL):
        fetch_file("mnist", "nope.gz", data_dir=tmp_path)
    assert not (tmp_path / "cifar10").exists() and not (tmp_path / "cifar100").exists()
