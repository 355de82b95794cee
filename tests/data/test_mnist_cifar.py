"""mnist / fashion-mnist (IDX files) and cifar10 (python batches, image folders)."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeopt.data import get_dataset
from edgeopt.data.cifar import CLASSES, MEAN, STD, read_batch
from edgeopt.data.mnist import read_idx
from edgeopt.errors import DataError

FASHION = Path("/usr/share/datasets/fashion-mnist")
_REAL_CACHE = os.environ.get("EDGEOPT_CACHE")  # read at import, before fixtures patch it


def _idx_bytes(arr: np.ndarray) -> bytes:
    head = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return head + arr.astype(np.uint8).tobytes()


def _write_mnist(folder: Path, n_train=30, n_test=10) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = np.arange(n) % 10
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(x)))
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(
            _idx_bytes(y)
        )  # uncompressed works too


def test_idx_reader_and_its_errors(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a.idx").write_bytes(_idx_bytes(arr))
    (tmp_path / "a.idx.gz").write_bytes(gzip.compress(_idx_bytes(arr)))
    assert (read_idx(tmp_path / "a.idx") == arr).all()
    assert (read_idx(tmp_path / "a.idx.gz") == arr).all()
    (tmp_path / "bad.idx").write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(DataError, match="bad magic"):
        read_idx(tmp_path / "bad.idx")
    (tmp_path / "short.idx").write_bytes(_idx_bytes(arr)[:-3])
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "short.idx")
    (tmp_path / "notgz.idx.gz").write_bytes(b"plain")
    with pytest.raises(DataError, match="cannot read"):
        read_idx(tmp_path / "notgz.idx.gz")


@pytest.mark.parametrize("layout", ["", "MNIST/raw", "mnist"])
def test_mnist_from_root_in_plain_and_torchvision_layouts(tmp_path, layout):
    _write_mnist(tmp_path / layout if layout else tmp_path)
    dm = get_dataset("mnist", root=tmp_path, val_fraction=0.34)
    assert (len(dm.train), len(dm.val), len(dm.test)) == (20, 10, 10)  # 1 of 3 per class held out
    assert dm.spec.input_shape == (1, 28, 28) and dm.spec.mean == (0.1307,)
    assert dm.augment.pad == 2 and not dm.augment.flip


def test_mnist_found_through_edgeopt_data(tmp_path, monkeypatch):
    _write_mnist(tmp_path / "mnist")
    monkeypatch.setenv("EDGEOPT_DATA", str(tmp_path))
    assert len(get_dataset("mnist").test) == 10


def test_missing_mnist_says_what_to_do(tmp_path):
    with pytest.raises(DataError, match="--data-root DIR, or --download") as exc:
        get_dataset("mnist", root=tmp_path)
    assert "\n" not in str(exc.value) and "apt-get" not in str(exc.value)


@pytest.mark.skipif(
    not FASHION.is_dir(), reason="Debian package dataset-fashion-mnist not installed"
)
def test_fashion_mnist_from_the_debian_package():
    dm = get_dataset("fashion-mnist")
    assert (len(dm.train) + len(dm.val), len(dm.test)) == (60000, 10000)
    assert len(dm.val) == 6000  # 10% of each class's 6,000
    assert tuple(dm.train.images.shape[1:]) == (1, 28, 28)
    assert torch.bincount(dm.test.labels).tolist() == [1000] * 10
    assert dm.spec.class_names[0] == "T-shirt/top" and dm.augment.flip
    assert dm.source == str(FASHION)


def _write_cifar_batches(folder: Path, per_batch=10) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {
            b"batch_label": name.encode(),
            b"labels": [int(v) for v in np.arange(per_batch) % 10],
            b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            b"filenames": [b"x.png"] * per_batch,
        }
        (folder / name).write_bytes(pickle.dumps(d, protocol=2))


def test_cifar10_python_batches(tmp_path):
    _write_cifar_batches(tmp_path / "cifar-10-batches-py")
    dm = get_dataset("cifar10", root=tmp_path, val_fraction=0.2)
    assert (len(dm.train), len(dm.val), len(dm.test)) == (40, 10, 10)
    assert dm.spec.input_shape == (3, 32, 32) and dm.spec.class_names == CLASSES
    assert dm.spec.mean == MEAN and dm.spec.std == STD
    # Rows are R plane, G plane, B plane of 32x32: pixel (0, 0) of image 0 is data[0, 0].
    x, _ = read_batch(tmp_path / "cifar-10-batches-py" / "test_batch")
    raw = pickle.loads((tmp_path / "cifar-10-batches-py" / "test_batch").read_bytes())[b"data"]
    assert x[0, 1, 0, 0] == raw[0, 1024] and torch.equal(dm.test.images, torch.from_numpy(x))


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/edgeopt-pwned",))


def test_cifar_batch_that_runs_code_is_refused(tmp_path):
    bad = tmp_path / "data_batch_1"
    bad.write_bytes(pickle.dumps({b"data": _Evil(), b"labels": []}, protocol=2))
    with pytest.raises(DataError, match="not allowed"):
        read_batch(bad)
    assert not Path("/tmp/edgeopt-pwned").exists()


def test_cifar10_from_an_image_tree(tmp_path, make_tree):
    make_tree(tmp_path / "cifar10", {"train": 2, "test": 1}, classes=CLASSES, size=(32, 32))
    dm = get_dataset("cifar10", root=tmp_path / "cifar10", val_fraction=0)
    assert (len(dm.train), len(dm.test)) == (20, 10) and dm.spec.class_names == CLASSES
    assert dm.augment.pad == 4 and dm.augment.flip
    assert dm.spec.mean != MEAN  # computed from the images, not the official constants
    wrong = make_tree(tmp_path / "other", {"train": 1, "test": 1})
    with pytest.raises(DataError, match="not CIFAR-10's"):
        get_dataset("cifar10", root=wrong)


@pytest.mark.slow
@pytest.mark.skipif(
    not Path("/work/shared/data/cifar10-jpeg/test.tar.gz").is_file(), reason="no CIFAR-10 JPEG copy"
)
def test_real_cifar10_jpeg(monkeypatch):
    """Decodes 60,000 JPEGs on a first run (about a minute), then reads the cache."""
    # The real cache (not the test's tmp one), so the decode happens once per machine.
    monkeypatch.setenv("EDGEOPT_CACHE", _REAL_CACHE or str(Path.home() / ".cache" / "edgeopt"))
    dm = get_dataset("imagefolder:/work/shared/data/cifar10-jpeg")
    assert (len(dm.train), len(dm.val), len(dm.test)) == (45000, 5000, 10000)
    assert dm.spec.class_names == CLASSES and dm.spec.input_shape == (3, 32, 32)
    assert torch.bincount(dm.test.labels).tolist() == [1000] * 10
    # JPEG keeps the colour statistics of the original within a hundredth.
    assert np.allclose(dm.spec.mean, MEAN, atol=0.01) and np.allclose(dm.spec.std, STD, atol=0.01)
