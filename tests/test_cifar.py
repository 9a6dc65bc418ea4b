"""CIFAR-10 in the data layer: the binary-archive reader on a tiny generated archive (no copy of
the real one exists on these machines) and the loader's errors when the archive is missing."""

from __future__ import annotations

import io
import tarfile
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

from unbottleneck.data import DATASETS, DatasetNotFoundError, load_cifar10, read_cifar_archive
from unbottleneck.data.cifar import CIFAR10_ARCHIVE, CIFAR10_MEMBERS

RECORD = 1 + 3 * 32 * 32


def _records(n: int, seed: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    pixels = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    body = b"".join(bytes([lab]) + img.tobytes() for lab, img in zip(labels, pixels, strict=True))
    return body, labels, pixels


def _archive(path, sizes: dict[str, int], drop: str | None = None, truncate: str | None = None) -> dict:
    """Write a CIFAR-10-binary-format archive; return the arrays it holds per member."""
    content = {}
    with tarfile.open(path, "w:gz") as tar:
        for i, name in enumerate(m for members in CIFAR10_MEMBERS.values() for m in members):
            body, labels, pixels = _records(sizes.get(name, 3), seed=i)
            content[name] = (labels, pixels)
            if name == drop:
                continue
            if name == truncate:
                body = body[:-5]
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return content


def test_reader_decodes_records_in_member_order(tmp_path):
    path = tmp_path / CIFAR10_ARCHIVE
    content = _archive(path, {CIFAR10_MEMBERS["train"][1]: 4})
    for split, members in CIFAR10_MEMBERS.items():
        images, labels = read_cifar_archive(path, split)
        want_labels = np.concatenate([content[m][0] for m in members])
        want_images = np.concatenate([content[m][1] for m in members])
        assert images.shape == (len(want_labels), 3, 32, 32) and images.dtype == np.uint8
        np.testing.assert_array_equal(labels, want_labels)
        np.testing.assert_array_equal(images, want_images)  # channel-major: R plane, G plane, B plane
    assert read_cifar_archive(path, "train")[0].shape[0] == 4 * 3 + 4


@pytest.mark.parametrize("kind,match", [("drop", "missing"), ("truncate", "whole number")])
def test_reader_refuses_damaged_archives(tmp_path, kind, match):
    path = tmp_path / CIFAR10_ARCHIVE
    _archive(path, {}, **{kind: CIFAR10_MEMBERS["test"][0]})
    with pytest.raises(ValueError, match=match):
        read_cifar_archive(path, "test")


def test_reader_refuses_other_files_and_splits(tmp_path):
    bad = tmp_path / "x.tar.gz"
    bad.write_bytes(b"<html>not found</html>")
    with pytest.raises(ValueError, match="not a readable CIFAR-10 archive"):
        read_cifar_archive(bad, "train")
    with pytest.raises(ValueError, match="unknown CIFAR-10 split 'valid'"):
        read_cifar_archive(bad, "valid")


def test_registry_pins_the_binary_archive():
    (spec,) = DATASETS["cifar10"].files
    assert spec.name == CIFAR10_ARCHIVE and spec.size == 170_052_171 and len(spec.sha256) == 64
    assert all(u.startswith("https://") for u in spec.urls)


def test_missing_archive_names_the_option(tmp_path, monkeypatch):
    def offline(req, timeout=None):
        raise urllib.error.URLError("network is unreachable (test)")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DatasetNotFoundError) as info:
        load_cifar10("test", data_dir=tmp_path)
    assert "--data-dir" in str(info.value) and "UNBOTTLENECK_DATA" in str(info.value)


def test_loader_scales_to_unit_range_through_the_verified_path(tmp_path, monkeypatch):
    """load_cifar10 reads whatever fetch_file verified: with the check pointed at the tiny
    archive (the real one is 170 MB), it returns float images in [0, 1] and int64 labels."""
    folder = tmp_path / "cifar10"
    folder.mkdir()
    content = _archive(folder / CIFAR10_ARCHIVE, {})
    import unbottleneck.data.cifar as cifar

    monkeypatch.setattr(cifar, "fetch_file", lambda *a, **k: folder / CIFAR10_ARCHIVE)
    x, y = load_cifar10("test", data_dir=tmp_path)
    labels, pixels = content[CIFAR10_MEMBERS["test"][0]]
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape == (3, 3, 32, 32)
    torch.testing.assert_close(x, torch.from_numpy(pixels.astype(np.float32) / 255))
    assert y.tolist() == labels.tolist()
